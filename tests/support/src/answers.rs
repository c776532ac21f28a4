//! Checking answers in the shared JSON error shape.

use reqwest::StatusCode;
use serde_json::Value;

/// Asserts an answer's status and `error` code, and that it has the shared shape (a
/// non-empty `message`).
pub fn assert_error(answer: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"], code, "{}", answer.1);
    assert!(
        answer.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        answer.1
    );
}
