//! Every request body and path id the HTTP functions parse: arbitrary bytes must give a
//! value or a 4xx `ApiError`, never a panic.
#![no_main]

use flash_sale_core::{ReservationId, ShowtimeId, UserId};
use flash_sale_runtime::identity::{Caller, Identity};
use flash_sale_runtime::extract::parse_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let me = Caller::Verified(Identity {
        user: UserId::new(7).unwrap(),
        admin: false,
    });
    if let Ok(r) = parse_json::<flash_sale_reserve::ReserveRequest>(data) {
        for caller in [Caller::Trusted, me] {
            if let Err(e) = r.parse(&caller) {
                assert!(e.status().is_client_error());
            }
        }
        if let Err(e) = r.quantity() {
            assert!(e.status().is_client_error());
        }
    }
    if let Ok(p) = parse_json::<flash_sale_pay::PayRequest>(data) {
        let _ = me.acting_as(p.user_id);
        let _ = Caller::Trusted.acting_as(p.user_id);
    }
    if let Ok(c) = parse_json::<flash_sale_showtimes::CreateShowtime>(data)
        && let Err(e) = c.validate()
    {
        assert!(e.status().is_client_error());
    }
    if let Ok(c) = parse_json::<flash_sale_showtimes::ChangeShowtime>(data)
        && let Err(e) = c.validate(None)
    {
        assert!(e.status().is_client_error());
    }
    if let Ok(key) = flash_sale_core::IdempotencyKey::parse(data) {
        assert!(!key.as_str().is_empty() && key.as_str().len() <= 255);
        assert!(key.as_str().bytes().all(|b| b.is_ascii_graphic()));
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = s.parse::<ReservationId>() {
            assert_eq!(id.to_string().parse::<ReservationId>().unwrap(), id);
        }
        let _ = s.parse::<ShowtimeId>();
    }
});
