//! The waiting room's signed passes: a **ticket** says where its holder stands in a
//! showtime's line (so a crowd polling its place is answered without Redis), an
//! **admission** lets its holder reserve until it runs out (used once: the seat store
//! drops the admission when a reservation uses it).
//!
//! Both are JWTs signed with HS256 under a secret every process shares
//! (`WAITING_ROOM_SECRET`). A rotation signs with the new secret while passes of the
//! previous one (`WAITING_ROOM_PREVIOUS_SECRET`) are still accepted; each pass names its
//! secret by a key id derived from it, never the secret itself.
//!
//! A crowd joins and polls by the tens of thousands a second, and every join is signed
//! and every poll checked, so each secret's parts that never change are prepared once:
//! its header (the same for every pass, so encoded once, and a pass under the secret
//! carries exactly it: one comparison both finds the secret and refuses any other
//! header) and its HMAC key state (cloned per pass instead of hashing the key again).
//! The passes are the same JWTs `jsonwebtoken` signs and checks (the tests hold both).
//!
//! The same secret draws the lottery: an early joiner's number is an HMAC of the room's
//! salt (random, drawn when the room is set up), the showtime and the user under it, so
//! every process draws the same number for one buyer (asking again changes nothing),
//! nobody can predict it before the room exists nor without the secret, and any process
//! can tell a buyer, from their number alone, when their turn is likely to come.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flash_sale_core::waiting_room::LOTTERY_RANGE;
use flash_sale_core::{ShowtimeId, UnixMillis, UserId};
use hmac::{Hmac, Mac as _};
use jsonwebtoken::{Algorithm, Header};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// What a pass carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PassClaims {
    /// The holder.
    sub: String,
    /// The showtime.
    st: i64,
    /// `ticket` or `admission`.
    typ: String,
    /// The holder's place in line, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    place: Option<u64>,
    /// The room the place is in (its lottery salt, drawn when it was set up): a room
    /// removed and set up again is another line, where an old place means nothing.
    /// Absent from passes signed before tickets named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    room: Option<u64>,
    /// Seconds since the epoch.
    exp: u64,
}

const TICKET: &str = "ticket";
const ADMISSION: &str = "admission";

/// Why a pass was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PassError {
    #[error("the pass is malformed or not signed by this service")]
    Forged,
    #[error("the pass has run out")]
    Expired,
    #[error("the pass belongs to another user")]
    NotYours,
    #[error("the pass is for another showtime")]
    OtherShowtime,
    #[error("the pass is not an admission")]
    NotAnAdmission,
    #[error("the pass is not a ticket")]
    NotATicket,
}

/// A secret that signs and checks passes.
struct Secret {
    kid: String,
    /// The JWT header of every pass under this secret (HS256, its `kid`), base64url.
    header: String,
    /// HMAC-SHA256 keyed with the secret.
    mac: Hmac<Sha256>,
}

impl Secret {
    fn new(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "a waiting room secret must be at least {MIN_SECRET_LEN} bytes, got {}",
                secret.len()
            ));
        }
        let digest = Sha256::digest(secret);
        let kid: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        let json = serde_json::to_vec(&header).expect("a header encodes");
        Ok(Self {
            kid,
            header: URL_SAFE_NO_PAD.encode(json),
            mac: Hmac::new_from_slice(secret).expect("HMAC takes a key of any length"),
        })
    }

    /// `claims` as a JWT under this secret.
    fn sign(&self, claims: &PassClaims) -> String {
        let payload = serde_json::to_vec(claims).expect("claims encode");
        let mut pass = String::with_capacity(self.header.len() + payload.len() * 4 / 3 + 48);
        pass.push_str(&self.header);
        pass.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut pass);
        let mut mac = self.mac.clone();
        mac.update(pass.as_bytes());
        pass.push('.');
        URL_SAFE_NO_PAD.encode_string(mac.finalize().into_bytes(), &mut pass);
        pass
    }
}

/// Signs passes with the current secret; checks them against it and the previous one.
pub struct RoomPasses {
    current: Secret,
    previous: Option<Secret>,
    lottery: Hmac<Sha256>,
}

impl std::fmt::Debug for RoomPasses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomPasses")
            .field("kid", &self.current.kid)
            .field("previous_kid", &self.previous.as_ref().map(|p| &p.kid))
            .finish()
    }
}

/// A ticket as checked: whose, for which showtime, the place it carries, until when it
/// is valid, and whether the current secret signed it (rather than the previous one,
/// during a rotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub user: UserId,
    pub showtime: ShowtimeId,
    pub place: Option<u64>,
    /// The room the place is in (its salt), when the ticket names it.
    pub room: Option<u64>,
    pub until: UnixMillis,
    pub under_current_secret: bool,
}

impl RoomPasses {
    /// Passes under `current`, accepting those of `previous` too during a rotation.
    pub fn new(current: &[u8], previous: Option<&[u8]>) -> Result<Self, String> {
        Ok(Self {
            current: Secret::new(current)?,
            previous: previous.map(Secret::new).transpose()?,
            lottery: Hmac::new_from_slice(current).expect("HMAC takes a key of any length"),
        })
    }

    /// `user`'s lottery number in `showtime`'s room of lottery `salt`, below
    /// [`LOTTERY_RANGE`]: uniform for anyone without the secret, the same in every
    /// process sharing it.
    pub fn lot(&self, user: UserId, showtime: ShowtimeId, salt: u64) -> u64 {
        let mut mac = self.lottery.clone();
        mac.update(format!("lottery {salt} {} {}", showtime.get(), user.get()).as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first) % LOTTERY_RANGE
    }

    fn sign(&self, claims: &PassClaims) -> String {
        self.current.sign(claims)
    }

    /// A ticket for `user` in `showtime`'s line, at `place` once known, in the room of
    /// salt `room`, valid until `until`.
    pub fn ticket(
        &self,
        user: UserId,
        showtime: ShowtimeId,
        place: Option<u64>,
        room: Option<u64>,
        until: UnixMillis,
    ) -> String {
        self.sign(&PassClaims {
            sub: user.to_string(),
            st: showtime.get(),
            typ: TICKET.into(),
            place,
            room,
            exp: until.0.div_ceil(1000),
        })
    }

    /// An admission for `user` to reserve in `showtime` until `until` (the seat store's
    /// deadline for it).
    pub fn admission(
        &self,
        user: UserId,
        showtime: ShowtimeId,
        place: u64,
        until: UnixMillis,
    ) -> String {
        self.sign(&PassClaims {
            sub: user.to_string(),
            st: showtime.get(),
            typ: ADMISSION.into(),
            place: Some(place),
            room: None,
            exp: until.0 / 1000,
        })
    }

    /// The claims of a pass signed by one of the secrets, unexpired at `now`, held by
    /// `user` for `showtime`, and whether the current secret signed it.
    fn check(
        &self,
        pass: &str,
        user: UserId,
        showtime: ShowtimeId,
        now: UnixMillis,
    ) -> Result<(PassClaims, bool), PassError> {
        // Header, claims and signature; the header is one of the secrets' own, byte for
        // byte (HS256 and its `kid`, nothing else), and the signature its HMAC.
        let (signed, signature) = pass.rsplit_once('.').ok_or(PassError::Forged)?;
        let (header, payload) = signed.split_once('.').ok_or(PassError::Forged)?;
        let secret = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|s| s.header == header)
            .ok_or(PassError::Forged)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| PassError::Forged)?;
        let mut mac = secret.mac.clone();
        mac.update(signed.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| PassError::Forged)?;
        let claims: PassClaims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(PassError::Forged)?;
        if claims.exp * 1000 <= now.0 {
            return Err(PassError::Expired);
        }
        if claims.sub != user.to_string() {
            return Err(PassError::NotYours);
        }
        if claims.st != showtime.get() {
            return Err(PassError::OtherShowtime);
        }
        Ok((claims, std::ptr::eq(secret, &self.current)))
    }

    /// Checks an admission: `user`'s, for `showtime`, unexpired at `now`. Its single use
    /// is the seat store's to enforce.
    pub fn check_admission(
        &self,
        pass: &str,
        user: UserId,
        showtime: ShowtimeId,
        now: UnixMillis,
    ) -> Result<u64, PassError> {
        let (claims, _) = self.check(pass, user, showtime, now)?;
        match (claims.typ.as_str(), claims.place) {
            (ADMISSION, Some(place)) => Ok(place),
            _ => Err(PassError::NotAnAdmission),
        }
    }

    /// Checks a ticket: `user`'s, for `showtime`, unexpired at `now`.
    pub fn check_ticket(
        &self,
        pass: &str,
        user: UserId,
        showtime: ShowtimeId,
        now: UnixMillis,
    ) -> Result<Ticket, PassError> {
        let (claims, under_current_secret) = self.check(pass, user, showtime, now)?;
        if claims.typ != TICKET {
            return Err(PassError::NotATicket);
        }
        Ok(Ticket {
            user,
            showtime,
            place: claims.place,
            room: claims.room,
            until: UnixMillis(claims.exp.saturating_mul(1000)),
            under_current_secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &[u8] = b"the secret before the rotation, 32+ bytes";
    const NEW: &[u8] = b"the secret after the rotation, also 32+ bytes";
    const NOW: UnixMillis = UnixMillis(1_800_000_000_000);
    const LATER: UnixMillis = UnixMillis(1_800_000_060_000);

    fn user(n: i64) -> UserId {
        UserId::new(n).unwrap()
    }

    fn showtime(n: i64) -> ShowtimeId {
        ShowtimeId::new(n).unwrap()
    }

    #[test]
    fn a_lottery_number_is_the_same_every_time_and_another_for_another_buyer_room_or_secret() {
        let passes = RoomPasses::new(NEW, None).unwrap();
        let lot = passes.lot(user(7), showtime(42), 9);
        assert!(lot < LOTTERY_RANGE);
        let same = RoomPasses::new(NEW, Some(OLD)).unwrap();
        assert_eq!(lot, same.lot(user(7), showtime(42), 9));
        assert_ne!(lot, passes.lot(user(8), showtime(42), 9));
        assert_ne!(lot, passes.lot(user(7), showtime(43), 9));
        assert_ne!(
            lot,
            passes.lot(user(7), showtime(42), 10),
            "another room's salt"
        );
        let other = RoomPasses::new(OLD, None).unwrap();
        assert_ne!(lot, other.lot(user(7), showtime(42), 9));
        // Spread over the range: of 10,000 buyers' numbers, each tenth of the range holds
        // close to a thousand (the numbers are fixed by the secret: this cannot flake).
        let mut tenths = [0u32; 10];
        for n in 1..=10_000 {
            tenths[(passes.lot(user(n), showtime(42), 9) * 10 / LOTTERY_RANGE) as usize] += 1;
        }
        assert!(
            tenths.iter().all(|&c| (850..=1150).contains(&c)),
            "{tenths:?}"
        );
    }

    #[test]
    fn an_admission_is_accepted_for_its_holder_showtime_and_time_only() {
        let passes = RoomPasses::new(NEW, None).unwrap();
        let pass = passes.admission(user(7), showtime(42), 3, LATER);
        assert_eq!(
            passes.check_admission(&pass, user(7), showtime(42), NOW),
            Ok(3)
        );
        assert_eq!(
            passes.check_admission(&pass, user(8), showtime(42), NOW),
            Err(PassError::NotYours)
        );
        assert_eq!(
            passes.check_admission(&pass, user(7), showtime(43), NOW),
            Err(PassError::OtherShowtime)
        );
        assert_eq!(
            passes.check_admission(&pass, user(7), showtime(42), LATER),
            Err(PassError::Expired)
        );
        let ticket = passes.ticket(user(7), showtime(42), Some(3), Some(9), LATER);
        assert_eq!(
            passes.check_admission(&ticket, user(7), showtime(42), NOW),
            Err(PassError::NotAnAdmission),
            "a ticket is no admission"
        );
        assert_eq!(
            passes.check_ticket(&pass, user(7), showtime(42), NOW),
            Err(PassError::NotATicket)
        );
        assert_eq!(
            passes.check_ticket(&ticket, user(7), showtime(42), NOW),
            Ok(Ticket {
                user: user(7),
                showtime: showtime(42),
                place: Some(3),
                room: Some(9),
                until: LATER,
                under_current_secret: true,
            })
        );
    }

    #[test]
    fn forged_and_foreign_passes_are_refused() {
        let passes = RoomPasses::new(NEW, None).unwrap();
        let other = RoomPasses::new(b"someone else's secret of 32 bytes!!", None).unwrap();
        let foreign = other.admission(user(7), showtime(42), 0, LATER);
        assert_eq!(
            passes.check_admission(&foreign, user(7), showtime(42), NOW),
            Err(PassError::Forged)
        );
        let pass = passes.admission(user(7), showtime(42), 0, LATER);
        // The payload changed (another place), the signature kept.
        let mut parts: Vec<&str> = pass.split('.').collect();
        let other_payload = other.admission(user(7), showtime(42), 9, LATER);
        parts[1] = other_payload.split('.').nth(1).unwrap();
        let tampered = parts.join(".");
        assert_eq!(
            passes.check_admission(&tampered, user(7), showtime(42), NOW),
            Err(PassError::Forged)
        );
        for junk in ["", "a.b.c", "not a token", &pass[..pass.len() - 2]] {
            assert_eq!(
                passes.check_admission(junk, user(7), showtime(42), NOW),
                Err(PassError::Forged),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn a_rotation_accepts_the_previous_secrets_passes_until_it_is_dropped() {
        let before = RoomPasses::new(OLD, None).unwrap();
        let pass = before.admission(user(7), showtime(42), 0, LATER);
        let during = RoomPasses::new(NEW, Some(OLD)).unwrap();
        assert_eq!(
            during.check_admission(&pass, user(7), showtime(42), NOW),
            Ok(0)
        );
        let signed_during = during.admission(user(7), showtime(42), 0, LATER);
        assert_eq!(
            before.check_admission(&signed_during, user(7), showtime(42), NOW),
            Err(PassError::Forged)
        );
        let after = RoomPasses::new(NEW, None).unwrap();
        assert_eq!(
            after.check_admission(&pass, user(7), showtime(42), NOW),
            Err(PassError::Forged)
        );
        assert_eq!(
            after.check_admission(&signed_during, user(7), showtime(42), NOW),
            Ok(0)
        );
        // A ticket of the previous secret is still good during the rotation, and says so
        // (a poll answers with one signed anew rather than sending it back).
        let old_ticket = before.ticket(user(7), showtime(42), Some(3), Some(9), LATER);
        let checked = during.check_ticket(&old_ticket, user(7), showtime(42), NOW);
        assert_eq!(checked.map(|t| t.under_current_secret), Ok(false));
        let new_ticket = during.ticket(user(7), showtime(42), Some(3), Some(9), LATER);
        let checked = during.check_ticket(&new_ticket, user(7), showtime(42), NOW);
        assert_eq!(checked.map(|t| t.under_current_secret), Ok(true));
    }

    /// The passes are the JWTs `jsonwebtoken` signs and checks: the same bytes, accepted
    /// both ways.
    #[test]
    fn passes_are_the_jwts_jsonwebtoken_signs_and_checks() {
        use jsonwebtoken::{DecodingKey, EncodingKey, Validation};
        let passes = RoomPasses::new(NEW, None).unwrap();
        let claims = PassClaims {
            sub: "7".into(),
            st: 42,
            typ: TICKET.into(),
            place: Some(3),
            room: Some(9),
            exp: LATER.0 / 1000,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(passes.current.kid.clone());
        let theirs =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(NEW)).unwrap();
        assert_eq!(passes.sign(&claims), theirs);
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        let decoded = jsonwebtoken::decode::<PassClaims>(
            &passes.ticket(user(7), showtime(42), Some(3), Some(9), LATER),
            &DecodingKey::from_secret(NEW),
            &validation,
        )
        .unwrap();
        assert_eq!(decoded.claims, claims);
        assert_eq!(decoded.header.kid, header.kid);
        assert!(
            passes
                .check_ticket(&theirs, user(7), showtime(42), NOW)
                .is_ok()
        );
        // The same claims under another header (no `kid`), however well signed, are not
        // one of ours.
        let bare = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(NEW),
        )
        .unwrap();
        assert_eq!(
            passes.check_ticket(&bare, user(7), showtime(42), NOW),
            Err(PassError::Forged)
        );
    }

    #[test]
    fn a_short_secret_is_refused() {
        assert!(RoomPasses::new(b"short", None).is_err());
        assert!(RoomPasses::new(NEW, Some(b"short")).is_err());
    }
}
