//! Who is calling, and what they may do.
//!
//! - [`Authenticator`]: `AUTH_MODE=none` trusts the body's `user_id` (the Go reference's
//!   behaviour, loopback only, see [`Config`](crate::Config)); `AUTH_MODE=jwt` takes the
//!   caller from a verified bearer token (HS256 or RS256), or, on Lambda behind an API
//!   Gateway JWT authorizer, from the authorizer's claims in the request context.
//! - [`Caller`]: the extractor handlers take, authenticated by the guard in the router's
//!   state ([`HasGuard`]); [`Caller::acting_as`] reconciles it with a body `user_id`,
//!   [`Caller::may_read`] and [`Caller::require_admin`] are the object-level and
//!   function-level checks.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use flash_sale_core::UserId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use lambda_http::RequestExt as _;
use lambda_http::request::RequestContext;
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, AuthMode, ConfigError};
use crate::error::ApiError;
use crate::guard::HasGuard;

/// A caller whose identity was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub user: UserId,
    pub admin: bool,
}

/// Who is calling, as the handlers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// `AUTH_MODE=none`: nobody is verified; the body's `user_id` is believed, and every
    /// caller may do everything, as in the Go reference. Loopback demos only.
    Trusted,
    /// `AUTH_MODE=jwt`: the token's (or the authorizer's) subject.
    Verified(Identity),
}

impl Caller {
    /// The user a request acts for. Verified callers act for themselves: a body
    /// `user_id` that names someone else is a 403, an absent one means "me". Trusted
    /// callers must name the user in the body (400 otherwise).
    pub fn acting_as(&self, body_user: Option<i64>) -> Result<UserId, ApiError> {
        match (self, body_user) {
            (Caller::Verified(id), None) => Ok(id.user),
            (Caller::Verified(id), Some(claimed)) if claimed == id.user.get() => Ok(id.user),
            (Caller::Verified(_), Some(_)) => Err(ApiError::Forbidden(
                "user_id in the body does not match the bearer token's subject".into(),
            )),
            (Caller::Trusted, Some(raw)) => Ok(UserId::new(raw)?),
            (Caller::Trusted, None) => Err(ApiError::BadRequest(
                "request body is not the expected JSON: missing field `user_id`".into(),
            )),
        }
    }

    /// Whether this caller may see what belongs to `owner`: the owner and admins may.
    pub fn may_read(&self, owner: UserId) -> Result<(), ApiError> {
        match self {
            Caller::Trusted => Ok(()),
            Caller::Verified(id) if id.admin || id.user == owner => Ok(()),
            Caller::Verified(_) => Err(ApiError::Forbidden(
                "this reservation belongs to another user".into(),
            )),
        }
    }

    /// Admin-only routes (creating showtimes).
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Trusted => Ok(()),
            Caller::Verified(id) if id.admin => Ok(()),
            Caller::Verified(_) => Err(ApiError::Forbidden(
                "only an admin may do this (create showtimes, read metrics)".into(),
            )),
        }
    }
}

/// The subject of a token: a JSON string or number holding a positive user id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Subject {
    Number(i64),
    Text(String),
}

/// A token's audience: one string, or an array of them (RFC 7519, section 4.1.3).
/// With `JWT_AUDIENCE` set, the token must name it (the library checks either form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The claims this service reads. Unknown claims are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: Subject,
    /// Expiry, seconds since the epoch (required).
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// `"admin": true` makes the caller an admin...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<bool>,
    /// ...as does a `role` equal to `JWT_ADMIN_ROLE`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// ...or that role among `roles`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
}

impl Claims {
    /// Claims for `user`, valid for `ttl_secs` from now.
    pub fn for_user(user: i64, ttl_secs: u64) -> Self {
        let now = now_secs();
        Self {
            sub: Subject::Text(user.to_string()),
            exp: now + ttl_secs,
            iat: Some(now),
            nbf: None,
            iss: None,
            aud: None,
            admin: None,
            role: None,
            roles: None,
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Signs `claims` with an HS256 secret: for tests, local tools and docs/security.md.
pub fn sign_hs256(secret: &[u8], claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing cannot fail")
}

/// Parses a user id out of a token subject.
fn user_of(sub: &str) -> Result<UserId, ApiError> {
    sub.trim()
        .parse::<UserId>()
        .map_err(|_| ApiError::Unauthorized("the token's subject is not a user id".into()))
}

/// Finds the bearer token in an `Authorization` header value.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Establishes the caller of each request.
pub struct Authenticator {
    mode: AuthMode,
    /// Verifiers by algorithm: a token whose header names another algorithm is refused.
    keys: Vec<(Algorithm, DecodingKey, Validation)>,
    admin_role: String,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field(
                "algorithms",
                &self.keys.iter().map(|k| k.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Result<Self, ConfigError> {
        let validation = |alg: Algorithm| {
            let mut v = Validation::new(alg);
            v.leeway = config.leeway.as_secs();
            v.validate_nbf = true;
            // `sub` is required by `Claims` itself (it may be a number, which the
            // library's own check of string claims would not accept).
            v.set_required_spec_claims(&["exp"]);
            if let Some(iss) = &config.issuer {
                v.set_issuer(&[iss]);
            }
            match &config.audience {
                Some(aud) => v.set_audience(&[aud]),
                None => v.validate_aud = false,
            }
            v
        };
        let mut keys = vec![];
        if let Some(secret) = &config.hs256_secret {
            keys.push((
                Algorithm::HS256,
                DecodingKey::from_secret(secret),
                validation(Algorithm::HS256),
            ));
        }
        if let Some(pem) = &config.rs256_public_pem {
            let key = DecodingKey::from_rsa_pem(pem).map_err(|e| ConfigError {
                name: "JWT_RS256_PUBLIC_KEY_FILE",
                value: "<pem>".into(),
                problem: format!("not an RSA public key in PEM: {e}"),
            })?;
            keys.push((Algorithm::RS256, key, validation(Algorithm::RS256)));
        }
        if config.mode == AuthMode::Jwt {
            match (&config.issuer, &config.audience, keys.is_empty()) {
                (_, _, true) => tracing::info!(
                    "AUTH_MODE=jwt: the caller comes from the API Gateway authorizer's claims"
                ),
                (Some(iss), Some(aud), false) => tracing::info!(
                    issuer = %iss, audience = %aud,
                    "AUTH_MODE=jwt: tokens must carry this issuer and audience"
                ),
                _ => tracing::warn!(
                    "AUTH_MODE=jwt with JWT_ACCEPT_ANY_ISSUER_AND_AUDIENCE: a token of any \
                     issuer or audience signed with the key is accepted"
                ),
            }
        }
        Ok(Self {
            mode: config.mode,
            keys,
            admin_role: config.admin_role.clone(),
        })
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The caller of a request: [`Caller::Trusted`] in `none` mode; otherwise the API
    /// Gateway authorizer's claims when the request came through one, else the verified
    /// bearer token. 401 when there is no usable identity.
    pub fn authenticate(&self, parts: &Parts) -> Result<Caller, ApiError> {
        if self.mode == AuthMode::None {
            return Ok(Caller::Trusted);
        }
        if let Some(claims) = authorizer_claims(parts) {
            return self.identity_from_authorizer(claims).map(Caller::Verified);
        }
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("a bearer token is required".into()))?;
        let token = header.to_str().ok().and_then(bearer_token).ok_or_else(|| {
            ApiError::Unauthorized("the Authorization header is not `Bearer <token>`".into())
        })?;
        self.verify(token).map(Caller::Verified)
    }

    /// Verifies a compact JWT and reads the identity out of it.
    pub fn verify(&self, token: &str) -> Result<Identity, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| ApiError::Unauthorized("the bearer token is malformed".into()))?;
        let (_, key, validation) = self
            .keys
            .iter()
            .find(|(alg, _, _)| *alg == header.alg)
            .ok_or_else(|| {
                ApiError::Unauthorized(format!(
                    "tokens signed with {:?} are not accepted",
                    header.alg
                ))
            })?;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            let why = match e.kind() {
                K::ExpiredSignature => "the bearer token has expired",
                K::ImmatureSignature => "the bearer token is not valid yet",
                K::InvalidSignature => "the bearer token's signature is not valid",
                K::InvalidIssuer => "the bearer token has the wrong issuer",
                K::InvalidAudience => "the bearer token has the wrong audience",
                K::MissingRequiredClaim(_) => "the bearer token lacks a required claim",
                _ => "the bearer token is not valid",
            };
            ApiError::Unauthorized(why.into())
        })?;
        let claims = data.claims;
        let user = match &claims.sub {
            Subject::Number(n) => UserId::new(*n).map_err(|_| {
                ApiError::Unauthorized("the token's subject is not a user id".into())
            })?,
            Subject::Text(s) => user_of(s)?,
        };
        let admin = claims.admin == Some(true)
            || claims.role.as_deref() == Some(self.admin_role.as_str())
            || claims.roles.iter().flatten().any(|r| *r == self.admin_role);
        Ok(Identity { user, admin })
    }

    /// API Gateway flattens every claim to a string: `"true"`, `"admin"`, or an array
    /// as `"[admin other]"`.
    fn identity_from_authorizer(
        &self,
        claims: &HashMap<String, String>,
    ) -> Result<Identity, ApiError> {
        let user = user_of(
            claims
                .get("sub")
                .ok_or_else(|| ApiError::Unauthorized("the token has no subject".into()))?,
        )?;
        let has_role = |v: &String| {
            v.split(|c: char| c.is_whitespace() || ",[]\"".contains(c))
                .any(|r| r == self.admin_role)
        };
        let admin = claims.get("admin").is_some_and(|v| v == "true")
            || claims.get("role").is_some_and(has_role)
            || claims.get("roles").is_some_and(has_role);
        Ok(Identity { user, admin })
    }
}

/// The claims an API Gateway JWT authorizer verified, when the request came through one.
fn authorizer_claims(parts: &Parts) -> Option<&HashMap<String, String>> {
    match parts.extensions.request_context_ref()? {
        RequestContext::ApiGatewayV2(ctx) => Some(&ctx.authorizer.as_ref()?.jwt.as_ref()?.claims),
        RequestContext::ApiGatewayV1(ctx) => Some(&ctx.authorizer.jwt.as_ref()?.claims),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

impl<S: HasGuard + Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        state.guard().authenticator().authenticate(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes!!";

    fn jwt_config() -> AuthConfig {
        AuthConfig {
            mode: AuthMode::Jwt,
            hs256_secret: Some(SECRET.to_vec()),
            rs256_public_pem: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(0),
            admin_role: "admin".into(),
        }
    }

    fn auth() -> Authenticator {
        Authenticator::new(&jwt_config()).unwrap()
    }

    fn parts_with(authorization: Option<&str>) -> Parts {
        let mut req = axum::http::Request::builder();
        if let Some(v) = authorization {
            req = req.header("authorization", v);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_valid_token_names_its_user() {
        let token = sign_hs256(SECRET, &Claims::for_user(7, 60));
        let caller = auth()
            .authenticate(&parts_with(Some(&format!("Bearer {token}"))))
            .unwrap();
        assert_eq!(
            caller,
            Caller::Verified(Identity {
                user: UserId::new(7).unwrap(),
                admin: false
            })
        );
    }

    #[test]
    fn an_audience_may_be_one_string_or_an_array_naming_ours() {
        let a = Authenticator::new(&AuthConfig {
            issuer: Some("https://id.example".into()),
            audience: Some("flash-sale".into()),
            ..jwt_config()
        })
        .unwrap();
        let token = |aud: Audience| {
            let mut claims = Claims::for_user(7, 60);
            claims.iss = Some("https://id.example".into());
            claims.aud = Some(aud);
            sign_hs256(SECRET, &claims)
        };
        a.verify(&token(Audience::One("flash-sale".into())))
            .expect("one string");
        a.verify(&token(Audience::Many(vec![
            "other-app".into(),
            "flash-sale".into(),
        ])))
        .expect("an array that names us");
        let refused = a
            .verify(&token(Audience::Many(vec!["other-app".into()])))
            .unwrap_err();
        assert_eq!(refused.code(), "unauthorized");
        assert!(refused.to_string().contains("audience"), "{refused}");
    }

    #[test]
    fn missing_expired_and_badly_signed_tokens_are_401() {
        let a = auth();
        let expired = Claims {
            exp: now_secs() - 120,
            ..Claims::for_user(7, 0)
        };
        let forged = sign_hs256(
            b"another-secret-that-is-also-32-bytes!",
            &Claims::for_user(7, 60),
        );
        let mut tampered = sign_hs256(SECRET, &Claims::for_user(7, 60));
        tampered.pop();
        for header in [
            None,
            Some("Basic dXNlcjpwYXNz".to_string()),
            Some("Bearer".to_string()),
            Some("Bearer not.a.jwt".to_string()),
            Some(format!("Bearer {}", sign_hs256(SECRET, &expired))),
            Some(format!("Bearer {forged}")),
            Some(format!("Bearer {tampered}")),
        ] {
            let err = a.authenticate(&parts_with(header.as_deref())).unwrap_err();
            assert_eq!(err.code(), "unauthorized", "{header:?}: {err}");
        }
    }

    #[test]
    fn a_token_with_alg_none_or_another_algorithm_is_refused() {
        let claims = serde_json::to_vec(&Claims::for_user(7, 60)).unwrap();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for alg in ["none", "RS256", "HS512"] {
            let header = b64.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            let token = format!("{header}.{}.", b64.encode(&claims));
            assert!(auth().verify(&token).is_err(), "{alg} was accepted");
        }
    }

    #[test]
    fn subjects_must_be_user_ids_and_admins_are_named_by_claims() {
        let a = auth();
        let mut claims = Claims::for_user(7, 60);
        claims.sub = Subject::Text("alice".into());
        assert!(a.verify(&sign_hs256(SECRET, &claims)).is_err());
        claims.sub = Subject::Number(-1);
        assert!(a.verify(&sign_hs256(SECRET, &claims)).is_err());
        claims.sub = Subject::Number(9);
        claims.roles = Some(vec!["staff".into(), "admin".into()]);
        let id = a.verify(&sign_hs256(SECRET, &claims)).unwrap();
        assert!(id.admin);
        assert_eq!(id.user.get(), 9);
        let mut claims = Claims::for_user(9, 60);
        claims.admin = Some(true);
        assert!(a.verify(&sign_hs256(SECRET, &claims)).unwrap().admin);
    }

    #[test]
    fn a_body_user_that_disagrees_with_the_token_is_forbidden() {
        let me = Caller::Verified(Identity {
            user: UserId::new(7).unwrap(),
            admin: false,
        });
        assert_eq!(me.acting_as(None).unwrap().get(), 7);
        assert_eq!(me.acting_as(Some(7)).unwrap().get(), 7);
        assert_eq!(me.acting_as(Some(8)).unwrap_err().code(), "forbidden");
        assert_eq!(
            me.may_read(UserId::new(8).unwrap()).unwrap_err().code(),
            "forbidden"
        );
        assert_eq!(me.require_admin().unwrap_err().code(), "forbidden");
        assert_eq!(Caller::Trusted.acting_as(Some(8)).unwrap().get(), 8);
        assert_eq!(
            Caller::Trusted.acting_as(None).unwrap_err().code(),
            "bad_request"
        );
    }

    #[test]
    fn api_gateway_authorizer_claims_are_taken_when_present() {
        let a = auth();
        let claims: HashMap<String, String> = [
            ("sub".to_string(), "12".to_string()),
            ("roles".to_string(), "[staff admin]".to_string()),
        ]
        .into();
        let id = a.identity_from_authorizer(&claims).unwrap();
        assert_eq!((id.user.get(), id.admin), (12, true));
        let claims: HashMap<String, String> = [("sub".to_string(), "x".to_string())].into();
        assert!(a.identity_from_authorizer(&claims).is_err());
    }

    #[test]
    fn rs256_tokens_verify_against_the_public_key() {
        let config = AuthConfig {
            hs256_secret: None,
            rs256_public_pem: Some(include_bytes!("../testdata/rs256.pub.pem").to_vec()),
            ..jwt_config()
        };
        let a = Authenticator::new(&config).unwrap();
        let key = EncodingKey::from_rsa_pem(include_bytes!("../testdata/rs256.key.pem")).unwrap();
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            &Claims::for_user(5, 60),
            &key,
        )
        .unwrap();
        assert_eq!(a.verify(&token).unwrap().user.get(), 5);
        // An HS256 token signed with the public key as the secret (alg confusion).
        let pem = include_bytes!("../testdata/rs256.pub.pem");
        let confused = sign_hs256(pem, &Claims::for_user(5, 60));
        assert!(a.verify(&confused).is_err());
    }
}
