//! The JSON form of the queue messages. One shape per queue; every host (the local
//! consumers, the Lambda functions, the event-source bridge) decodes with these.
//!
//! A message body is one JSON object, or a JSON array of them: the broker adapter
//! publishes the holds, payment requests and orders of concurrent requests together as
//! one array (see [`crate::rabbit`]), and the decoders accept both forms, so a single
//! object written by hand or by an earlier version is still understood. An empty array
//! is malformed.
//!
//! Each entry may carry the W3C `traceparent` of the span that published it (see
//! [`crate::trace`]); decoding hands it back beside the entry as a [`Traced`].

use flash_sale_core::{Expiry, InvalidInput, OrderRequest, PaymentRequest, UnixMillis, UserId};
use serde::{Deserialize, Serialize};
use tracing::Span;

use crate::trace;

#[derive(Debug, Serialize, Deserialize)]
struct ExpireWire {
    reservation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PaymentWire {
    reservation_id: String,
    user_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct OrderWire {
    reservation_id: String,
    user_id: i64,
    paid_at_ms: u64,
    /// The seats the reservation holds. Absent in orders published before groups
    /// existed: those were one seat each.
    #[serde(default = "one_seat")]
    quantity: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
}

fn one_seat() -> u32 {
    1
}

/// A message body that can never be processed, whatever is retried.
#[derive(Debug, thiserror::Error)]
pub enum MalformedMessage {
    #[error("message body is not the expected JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("message body has an invalid value: {0}")]
    Value(#[from] InvalidInput),
    #[error("message body is an empty array")]
    Empty,
}

/// One entry of a message and the trace it was published in, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traced<T> {
    pub message: T,
    pub traceparent: Option<String>,
}

impl<T> Traced<T> {
    /// `span`, continuing the trace this entry was published in.
    pub fn continue_in(&self, span: Span) -> Span {
        trace::continuing(span, self.traceparent.as_deref())
    }
}

/// One message or several, as a body may carry them.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

/// Decodes a body of one `W` or an array of them, converting each.
fn decode_all<W, T>(
    body: &[u8],
    convert: impl Fn(W) -> Result<Traced<T>, MalformedMessage>,
) -> Result<Vec<Traced<T>>, MalformedMessage>
where
    W: serde::de::DeserializeOwned,
{
    let wires = match serde_json::from_slice::<OneOrMany<W>>(body) {
        Ok(OneOrMany::One(w)) => vec![w],
        Ok(OneOrMany::Many(ws)) if ws.is_empty() => return Err(MalformedMessage::Empty),
        Ok(OneOrMany::Many(ws)) => ws,
        // An untagged enum's own error says only "did not match any variant": decode
        // again as the single form for an error that names the field at fault.
        Err(_) => vec![serde_json::from_slice::<W>(body)?],
    };
    wires.into_iter().map(convert).collect()
}

/// Joins encoded messages (each one JSON object) into one body: a JSON array.
pub fn encode_batch<'a>(messages: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut body = Vec::with_capacity(256);
    body.push(b'[');
    for (i, m) in messages.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(m);
    }
    body.push(b']');
    body
}

pub fn encode_expiry(m: &Expiry) -> Vec<u8> {
    serde_json::to_vec(&ExpireWire {
        reservation_id: m.reservation.to_string(),
        traceparent: trace::current_traceparent(),
    })
    .expect("plain struct serializes")
}

/// The holds named in an expiry message.
pub fn decode_expiries(body: &[u8]) -> Result<Vec<Traced<Expiry>>, MalformedMessage> {
    decode_all(body, |w: ExpireWire| {
        Ok(Traced {
            message: Expiry {
                reservation: w.reservation_id.parse()?,
            },
            traceparent: w.traceparent,
        })
    })
}

pub fn encode_payment(m: &PaymentRequest) -> Vec<u8> {
    serde_json::to_vec(&PaymentWire {
        reservation_id: m.reservation.to_string(),
        user_id: m.user.get(),
        traceparent: trace::current_traceparent(),
    })
    .expect("plain struct serializes")
}

/// The payment requests in a payment message.
pub fn decode_payments(body: &[u8]) -> Result<Vec<Traced<PaymentRequest>>, MalformedMessage> {
    decode_all(body, |w: PaymentWire| {
        Ok(Traced {
            message: PaymentRequest {
                reservation: w.reservation_id.parse()?,
                user: UserId::new(w.user_id)?,
            },
            traceparent: w.traceparent,
        })
    })
}

pub fn encode_order(m: &OrderRequest) -> Vec<u8> {
    serde_json::to_vec(&OrderWire {
        reservation_id: m.reservation.to_string(),
        user_id: m.user.get(),
        paid_at_ms: m.paid_at.0,
        quantity: m.quantity,
        traceparent: trace::current_traceparent(),
    })
    .expect("plain struct serializes")
}

/// The latest payment time an order may carry: the last millisecond of the year 9999.
/// Payment times come from Redis's clock; one past this is no time PostgreSQL can
/// store, and would fail the whole batch it arrived with at the insert.
const LATEST_PAID_AT_MS: u64 = 253_402_300_799_999;

/// The orders in an order message.
pub fn decode_orders(body: &[u8]) -> Result<Vec<Traced<OrderRequest>>, MalformedMessage> {
    decode_all(body, |w: OrderWire| {
        if w.quantity == 0 {
            return Err(InvalidInput("an order's quantity must be at least 1".into()).into());
        }
        if w.paid_at_ms > LATEST_PAID_AT_MS {
            return Err(InvalidInput(format!(
                "an order's paid_at_ms must be a time before the year 10000, not {}",
                w.paid_at_ms
            ))
            .into());
        }
        Ok(Traced {
            message: OrderRequest {
                reservation: w.reservation_id.parse()?,
                user: UserId::new(w.user_id)?,
                paid_at: UnixMillis(w.paid_at_ms),
                quantity: w.quantity,
            },
            traceparent: w.traceparent,
        })
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
        let e = Expiry { reservation: id };
        assert_eq!(
            decode_expiries(&encode_expiry(&e)).unwrap(),
            vec![untraced(e)]
        );
        let p = PaymentRequest {
            reservation: id,
            user,
        };
        assert_eq!(
            decode_payments(&encode_payment(&p)).unwrap(),
            vec![untraced(p)]
        );
        let o = OrderRequest {
            reservation: id,
            user,
            paid_at: UnixMillis(1),
            quantity: 4,
        };
        assert_eq!(decode_orders(&encode_order(&o)).unwrap(), vec![untraced(o)]);
    }

    #[test]
    fn an_order_from_before_groups_is_one_seat() {
        let old = decode_orders(br#"{"reservation_id":"1-1","user_id":1,"paid_at_ms":5}"#).unwrap();
        assert_eq!(old[0].message.quantity, 1);
        assert!(
            decode_orders(br#"{"reservation_id":"1-1","user_id":1,"paid_at_ms":5,"quantity":0}"#)
                .is_err()
        );
    }

    fn untraced<T>(message: T) -> Traced<T> {
        Traced {
            message,
            traceparent: None,
        }
    }

    #[test]
    fn each_entry_keeps_its_own_traceparent() {
        let a = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let body = format!(
            r#"[{{"reservation_id":"3-1","traceparent":"{a}"}},{{"reservation_id":"3-2"}}]"#
        );
        let entries = decode_expiries(body.as_bytes()).unwrap();
        assert_eq!(entries[0].traceparent.as_deref(), Some(a));
        assert_eq!(entries[1].traceparent, None);
    }

    #[test]
    fn a_batch_round_trips_in_order() {
        let holds: Vec<Expiry> = (1..=3)
            .map(|seq| Expiry {
                reservation: ReservationId::new(ShowtimeId::new(3).unwrap(), seq).unwrap(),
            })
            .collect();
        let encoded: Vec<Vec<u8>> = holds.iter().map(encode_expiry).collect();
        let body = encode_batch(encoded.iter().map(Vec::as_slice));
        let decoded: Vec<Expiry> = decode_expiries(&body)
            .unwrap()
            .into_iter()
            .map(|t| t.message)
            .collect();
        assert_eq!(decoded, holds);
    }

    #[test]
    fn junk_is_malformed() {
        assert!(decode_expiries(b"not json").is_err());
        assert!(decode_expiries(b"[]").is_err());
        assert!(decode_expiries(br#"{"reservation_id":"x"}"#).is_err());
        assert!(decode_expiries(br#"[{"reservation_id":"1-1"},{"reservation_id":"x"}]"#).is_err());
        assert!(decode_payments(br#"{"reservation_id":"1-1","user_id":0}"#).is_err());
        assert!(decode_orders(br#"{"reservation_id":"1-1","user_id":1}"#).is_err());
        let missing = decode_orders(br#"{"reservation_id":"1-1","user_id":1}"#).unwrap_err();
        assert!(missing.to_string().contains("paid_at_ms"), "{missing}");
        // A payment time PostgreSQL cannot store is refused with its message, alone.
        for far in [u64::MAX, LATEST_PAID_AT_MS + 1] {
            let body = format!(r#"{{"reservation_id":"1-1","user_id":1,"paid_at_ms":{far}}}"#);
            let refused = decode_orders(body.as_bytes()).unwrap_err();
            assert!(refused.to_string().contains("paid_at_ms"), "{refused}");
        }
        let last =
            format!(r#"{{"reservation_id":"1-1","user_id":1,"paid_at_ms":{LATEST_PAID_AT_MS}}}"#);
        assert!(decode_orders(last.as_bytes()).is_ok());
    }
}
