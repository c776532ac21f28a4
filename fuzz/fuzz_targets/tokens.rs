//! Bearer tokens and Authorization headers: arbitrary input must be refused with a 401
//! (or, if it is somehow a valid token, name a positive user), never panic.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use axum::http::{HeaderValue, Request};
use flash_sale_runtime::identity::{Authenticator, bearer_token};
use flash_sale_runtime::config::{AuthConfig, AuthMode};
use libfuzzer_sys::fuzz_target;

static AUTH: LazyLock<Authenticator> = LazyLock::new(|| {
    Authenticator::new(&AuthConfig {
        mode: AuthMode::Jwt,
        hs256_secret: Some(b"fuzzing-secret-of-at-least-32-bytes!!".to_vec()),
        rs256_public_pem: None,
        issuer: None,
        audience: None,
        leeway: Duration::from_secs(30),
        admin_role: "admin".into(),
    })
    .unwrap()
});

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        match AUTH.verify(s) {
            Ok(id) => assert!(id.user.get() > 0),
            Err(e) => assert_eq!(e.code(), "unauthorized"),
        }
        let _ = bearer_token(s);
    }
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let (parts, ()) = Request::builder()
            .header("authorization", value)
            .body(())
            .unwrap()
            .into_parts();
        if let Err(e) = AUTH.authenticate(&parts) {
            assert_eq!(e.code(), "unauthorized");
        }
    }
});
