//! The fuzz targets' inputs (`fuzz/fuzz_targets/tokens.rs`, `rabbitmq_events.rs`) under
//! proptest, in every test run: the bounded, stable-toolchain stand-in for
//! `cargo +nightly fuzz run` (docs/security.md). Arbitrary input must be refused
//! cleanly, never panic.

use std::time::Duration;

use axum::http::{HeaderValue, Request};
use flash_sale_adapters::wire;
use flash_sale_runtime::config::{AuthConfig, AuthMode};
use flash_sale_runtime::identity::{Authenticator, Claims, Subject, bearer_token, sign_hs256};
use flash_sale_runtime::queue::{event_messages, rabbit_event};
use proptest::prelude::*;

const SECRET: &[u8] = b"fuzzing-secret-of-at-least-32-bytes!!";

fn auth() -> Authenticator {
    Authenticator::new(&AuthConfig {
        mode: AuthMode::Jwt,
        hs256_secret: Some(SECRET.to_vec()),
        rs256_public_pem: None,
        issuer: None,
        audience: None,
        leeway: Duration::from_secs(30),
        admin_role: "admin".into(),
    })
    .unwrap()
}

/// Strings that look a little like tokens: base64url segments and dots.
fn tokenish() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_=.-]{0,200}",
        "[A-Za-z0-9_-]{1,60}\\.[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,60}",
        "(Bearer|bearer|BEARER|Basic)? ?[ -~]{0,120}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_tokens_are_refused_with_a_401(token in tokenish()) {
        let a = auth();
        match a.verify(&token) {
            Ok(id) => prop_assert!(id.user.get() > 0),
            Err(e) => prop_assert_eq!(e.code(), "unauthorized"),
        }
        let _ = bearer_token(&token);
    }

    #[test]
    fn arbitrary_authorization_headers_are_refused_with_a_401(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(value) = HeaderValue::from_bytes(&raw) {
            let (parts, ()) = Request::builder()
                .header("authorization", value)
                .body(())
                .unwrap()
                .into_parts();
            if let Err(e) = auth().authenticate(&parts) {
                prop_assert_eq!(e.code(), "unauthorized");
            }
        }
    }

    #[test]
    fn a_signed_token_verifies_exactly_when_its_subject_is_a_user_id(
        sub in prop_oneof![any::<i64>().prop_map(Subject::Number), any::<String>().prop_map(Subject::Text)],
        admin in any::<Option<bool>>(),
        flip in any::<Option<prop::sample::Index>>(),
    ) {
        let mut claims = Claims::for_user(1, 600);
        claims.sub = sub.clone();
        claims.admin = admin;
        let mut token = sign_hs256(SECRET, &claims);
        if let Some(i) = flip {
            // Change one character of the signature: never accepted.
            let sig_start = token.rfind('.').unwrap() + 1;
            let at = sig_start + i.index(token.len() - sig_start);
            let c = if token.as_bytes()[at] == b'A' { "B" } else { "A" };
            token.replace_range(at..at + 1, c);
            prop_assert!(auth().verify(&token).is_err());
            return Ok(());
        }
        let expected = match &sub {
            Subject::Number(n) => (*n > 0).then_some(*n),
            Subject::Text(s) => s.trim().parse::<i64>().ok().filter(|n| *n > 0),
        };
        match auth().verify(&token) {
            Ok(id) => {
                prop_assert_eq!(Some(id.user.get()), expected);
                prop_assert_eq!(id.admin, admin == Some(true));
            }
            Err(e) => {
                prop_assert_eq!(expected, None);
                prop_assert_eq!(e.code(), "unauthorized");
            }
        }
    }

    #[test]
    fn arbitrary_rabbitmq_events_decode_or_are_refused_for_good(raw in proptest::collection::vec(any::<u8>(), 0..600)) {
        // Typed by the event the test helper builds: aws_lambda_events' RabbitMqEvent.
        let mut event = rabbit_event("q", &[]);
        if let Ok(parsed) = serde_json::from_slice(&raw) {
            event = parsed;
        }
        for m in event_messages(event) {
            match m.body {
                Ok(body) => {
                    let _ = wire::decode_expiries(&body);
                    let _ = wire::decode_orders(&body);
                    let _ = wire::decode_payments(&body);
                }
                Err(e) => prop_assert!(!e.is_retryable()),
            }
        }
    }

    #[test]
    fn arbitrary_message_bodies_decode_or_are_refused(
        bodies in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..200),
                "\\{\"reservation_id\":\"[0-9-]{0,25}\"(,\"user_id\":-?[0-9]{0,20})?(,\"paid_at_ms\":-?[0-9]{0,22})?\\}"
                    .prop_map(String::into_bytes),
            ],
            0..5,
        )
    ) {
        for m in event_messages(rabbit_event("flash-sale.orders", &bodies)) {
            let body = m.body.unwrap();
            let _ = wire::decode_expiries(&body);
            let _ = wire::decode_orders(&body);
            let _ = wire::decode_payments(&body);
        }
    }
}

#[test]
fn the_fuzz_corpus_seeds_decode() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/rabbitmq_events");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let raw = std::fs::read(entry.unwrap().path()).unwrap();
        let mut event = rabbit_event("q", &[]);
        event = serde_json::from_slice(&raw).unwrap_or(event);
        for m in event_messages(event) {
            m.body.unwrap();
            seen += 1;
        }
    }
    assert!(seen > 0);
}
