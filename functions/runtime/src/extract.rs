//! Extractors: the JSON request body, read and checked once, answering every malformed
//! or oversized body in the shared error shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body. Like the Go reference (Gin's `ShouldBindJSON`), a body is read as JSON
/// whatever its `Content-Type`, so old clients work unchanged; anything that is not the
/// expected JSON object is a 400 in the shared error shape, and a body over the limit a
/// 413, never axum's plain-text rejections.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = match Bytes::from_request(req, state).await {
            Ok(bytes) => bytes,
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::PayloadTooLarge(rejection.body_text()));
            }
            Err(rejection) => return Err(ApiError::BadRequest(rejection.body_text())),
        };
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses a request body as `T`, which must be a JSON object (serde would also take an
/// array for a struct). An empty body reads as `{}`, so a route whose fields are
/// all optional (paying with a bearer token) needs no body; a route with a required
/// field still answers 400 naming it. Public for the fuzz targets.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => b"{}",
        Some(b'{') => bytes,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "request body is not the expected JSON: expected an object".into(),
            ));
        }
    };
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("request body is not the expected JSON: {e}")))
}

/// Largest request body accepted; anything bigger is a 413.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_body_reads_as_an_empty_object() {
        #[derive(serde::Deserialize)]
        struct Optional {
            #[allow(dead_code)]
            user_id: Option<i64>,
        }
        #[derive(Debug, serde::Deserialize)]
        struct Required {
            #[allow(dead_code)]
            user_id: i64,
        }
        assert!(parse_json::<Optional>(b"").is_ok());
        assert!(parse_json::<Optional>(b"  \n").is_ok());
        let err = parse_json::<Required>(b"").unwrap_err();
        assert!(err.to_string().contains("user_id"), "{err}");
        assert!(parse_json::<Required>(b"[1]").is_err());
    }
}
