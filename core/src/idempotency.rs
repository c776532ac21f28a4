//! Idempotency keys (the IETF `Idempotency-Key` draft): a client that sends the same
//! request twice under one key gets the first answer again instead of a second effect.
//!
//! A key is one caller's, for one route, in one showtime ([`KeyScope`]): another user's
//! identical key, or the same key on another route or showtime, is another key. Keeping
//! it in the showtime keeps its record beside the showtime's own data (one Redis Cluster
//! slot), so claiming it is one atomic step. The first request under a key claims it
//! (recording a fingerprint of the request), does the work, and records its answer;
//! every later request under it finds, atomically, one of: the answer (same
//! fingerprint: replayed), another fingerprint (the key reused for another request:
//! refused), or the claim of a request still at work (refused for now).
//!
//! An operator's key on creating a showtime is the exception ([`CreationKey`]): before
//! the request there is no showtime to keep it beside, so the catalog keeps it on the row
//! it creates, and a retry finds that showtime (as it is now) rather than a recorded
//! answer.
//!
//! The rules of when an answer is recorded (a final answer is; a failure of a service
//! behind us, which changed nothing, is not, so that a retry runs again) belong to the
//! HTTP layer that knows answers; this module only names the values and the port.

use std::future::Future;
use std::time::Duration;

use crate::ports::PortResult;
use crate::{InvalidInput, Showtime, ShowtimeId, UserId};

/// The longest key accepted (the draft sets no bound; keys are usually UUIDs).
pub const MAX_KEY_LEN: usize = 255;

/// A client's idempotency key: 1 to [`MAX_KEY_LEN`] visible ASCII characters. The
/// header may carry it as a structured-field string (`"8e03978e-..."`, as the draft
/// writes it) or bare; both name the same key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses a header value's bytes.
    pub fn parse(raw: &[u8]) -> Result<Self, InvalidInput> {
        let inner = match raw {
            [b'"', inner @ .., b'"'] => inner,
            other => other,
        };
        if inner.is_empty() {
            return Err(InvalidInput(
                "Idempotency-Key must not be empty: send 1 to 255 visible ASCII characters, \
                 e.g. a UUID"
                    .into(),
            ));
        }
        if inner.len() > MAX_KEY_LEN {
            return Err(InvalidInput(format!(
                "Idempotency-Key is {} characters long; the most accepted is {MAX_KEY_LEN}",
                inner.len()
            )));
        }
        // Visible ASCII only: no spaces, no control characters, no bytes past ASCII,
        // and no quote or backslash inside a quoted key (no escapes are read).
        if let Some(bad) = inner
            .iter()
            .find(|b| !b.is_ascii_graphic() || **b == b'"' || **b == b'\\')
        {
            return Err(InvalidInput(format!(
                "Idempotency-Key may hold only visible ASCII characters (no spaces, quotes \
                 or backslashes), not byte 0x{bad:02x}"
            )));
        }
        // Checked above: every byte is ASCII.
        Ok(Self(String::from_utf8_lossy(inner).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The routes that take an idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyedRoute {
    /// `POST /reserve`.
    Reserve,
    /// `POST /reservations/{id}/pay`.
    Pay,
    /// `POST /showtimes` (an operator's): its key is kept on the row it creates
    /// ([`CreationKey`]), not in the seat store.
    CreateShowtime,
}

impl KeyedRoute {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyedRoute::Reserve => "reserve",
            KeyedRoute::Pay => "pay",
            KeyedRoute::CreateShowtime => "create_showtime",
        }
    }
}

/// Whose key it is, and where: the caller the request acts for, the route, the
/// showtime the request touches (for pay, its reservation's), and the key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyScope {
    pub showtime: ShowtimeId,
    pub user: UserId,
    pub route: KeyedRoute,
    pub key: IdempotencyKey,
}

/// What identifies a request's content under one key (a digest of its body and path),
/// as text. Two requests with one key and different fingerprints are different
/// requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(pub String);

/// An operator's key on creating a showtime. There is no showtime before the request
/// (no Redis slot, no seats), so the catalog keeps the key on the row it creates, in the
/// same `INSERT`: two requests under one key create one showtime, however they race.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreationKey {
    /// Whose key it is: the verified operator, or `None` where nobody is verified.
    pub by: Option<UserId>,
    pub key: IdempotencyKey,
    /// What the request asked ([`KeyedRoute::CreateShowtime`]'s fingerprint).
    pub fingerprint: Fingerprint,
}

/// What creating a showtime under a [`CreationKey`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Creation {
    /// The key was new: the showtime was created.
    Created(Showtime),
    /// The key created this showtime before, for the same request: nothing was created;
    /// the showtime as it is now.
    Again(Showtime),
    /// The key created a showtime before for another request: nothing was done.
    KeyReused,
}

/// An answer as recorded under a key, replayed as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Proves a claim is this request's: only its holder may record or release it (a
/// claim whose lease ran out may have been taken by another request since).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken(pub String);

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nothing was recorded under the key: it is now this request's, until `lease`
    /// runs out or the answer is recorded.
    Claimed(ClaimToken),
    /// The answer of an earlier request with the same fingerprint.
    Answered(RecordedAnswer),
    /// An earlier request with the same fingerprint holds the key and has not answered
    /// yet.
    InProgress,
    /// The key belongs to a request with another fingerprint.
    Reused,
}

/// Where idempotency keys live. Every step is atomic for one key.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `scope` for a request of `fingerprint` for `lease` (how long the claim
    /// outlives a process that dies at work), or says what holds it already.
    fn claim(
        &self,
        scope: &KeyScope,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = PortResult<Claim>> + Send;

    /// Records `answer` under the key `token` claimed, kept for `ttl`. `false`: the
    /// claim was no longer `token`'s (its lease ran out), nothing was recorded.
    fn record(
        &self,
        scope: &KeyScope,
        token: &ClaimToken,
        answer: &RecordedAnswer,
        ttl: Duration,
    ) -> impl Future<Output = PortResult<bool>> + Send;

    /// Gives up the claim `token` holds, so that the next request under the key runs
    /// again. `false`: it was no longer `token`'s.
    fn release(
        &self,
        scope: &KeyScope,
        token: &ClaimToken,
    ) -> impl Future<Output = PortResult<bool>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_visible_ascii_quoted_or_not() {
        let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert_eq!(
            IdempotencyKey::parse(uuid.as_bytes()).unwrap().as_str(),
            uuid
        );
        assert_eq!(
            IdempotencyKey::parse(format!("\"{uuid}\"").as_bytes()).unwrap(),
            IdempotencyKey::parse(uuid.as_bytes()).unwrap()
        );
        assert!(IdempotencyKey::parse(&[b'k'; MAX_KEY_LEN]).is_ok());
        for bad in [
            &b""[..],
            b"\"\"",
            b"two words",
            b"tab\there",
            b"caf\xc3\xa9",
            b"\"a\\\"b\"",
            b"nul\0",
        ] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
        assert!(IdempotencyKey::parse(&[b'k'; MAX_KEY_LEN + 1]).is_err());
    }
}
