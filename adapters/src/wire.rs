//! The JSON form of the queue messages. One shape per queue; every host (the local
//! consumers, the Lambda functions, the event-source bridge) decodes with these.

use flash_sale_core::{ExpireHold, InvalidInput, OrderRequest, PaymentRequest, UnixMillis, UserId};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct ExpireWire {
    reservation_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct PaymentWire {
    reservation_id: String,
    user_id: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct OrderWire {
    reservation_id: String,
    user_id: i64,
    paid_at_ms: u64,
}

/// A message body that can never be processed, whatever is retried.
#[derive(Debug, thiserror::Error)]
pub enum MalformedMessage {
    #[error("message body is not the expected JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("message body has an invalid value: {0}")]
    Value(#[from] InvalidInput),
}

pub fn encode_expire(m: &ExpireHold) -> Vec<u8> {
    serde_json::to_vec(&ExpireWire {
        reservation_id: m.reservation.to_string(),
    })
    .expect("plain struct serializes")
}

pub fn decode_expire(body: &[u8]) -> Result<ExpireHold, MalformedMessage> {
    let w: ExpireWire = serde_json::from_slice(body)?;
    Ok(ExpireHold {
        reservation: w.reservation_id.parse()?,
    })
}

pub fn encode_payment(m: &PaymentRequest) -> Vec<u8> {
    serde_json::to_vec(&PaymentWire {
        reservation_id: m.reservation.to_string(),
        user_id: m.user.get(),
    })
    .expect("plain struct serializes")
}

pub fn decode_payment(body: &[u8]) -> Result<PaymentRequest, MalformedMessage> {
    let w: PaymentWire = serde_json::from_slice(body)?;
    Ok(PaymentRequest {
        reservation: w.reservation_id.parse()?,
        user: UserId::new(w.user_id)?,
    })
}

pub fn encode_order(m: &OrderRequest) -> Vec<u8> {
    serde_json::to_vec(&OrderWire {
        reservation_id: m.reservation.to_string(),
        user_id: m.user.get(),
        paid_at_ms: m.paid_at.0,
    })
    .expect("plain struct serializes")
}

pub fn decode_order(body: &[u8]) -> Result<OrderRequest, MalformedMessage> {
    let w: OrderWire = serde_json::from_slice(body)?;
    Ok(OrderRequest {
        reservation: w.reservation_id.parse()?,
        user: UserId::new(w.user_id)?,
        paid_at: UnixMillis(w.paid_at_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flash_sale_core::{ReservationId, ShowtimeId};

    #[test]
    fn every_message_round_trips() {
        let id = ReservationId::new(ShowtimeId::new(3).unwrap(), 9).unwrap();
        let user = UserId::new(7).unwrap();
        let e = ExpireHold { reservation: id };
        assert_eq!(decode_expire(&encode_expire(&e)).unwrap(), e);
        let p = PaymentRequest {
            reservation: id,
            user,
        };
        assert_eq!(decode_payment(&encode_payment(&p)).unwrap(), p);
        let o = OrderRequest {
            reservation: id,
            user,
            paid_at: UnixMillis(1),
        };
        assert_eq!(decode_order(&encode_order(&o)).unwrap(), o);
    }

    #[test]
    fn junk_is_malformed() {
        assert!(decode_expire(b"not json").is_err());
        assert!(decode_expire(br#"{"reservation_id":"x"}"#).is_err());
        assert!(decode_payment(br#"{"reservation_id":"1-1","user_id":0}"#).is_err());
        assert!(decode_order(br#"{"reservation_id":"1-1","user_id":1}"#).is_err());
    }
}
