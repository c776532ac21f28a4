//! Queue handlers' outcomes, and the Lambda side of queue delivery.
//!
//! A queue handler takes decoded domain messages and answers with a [`QueueError`] that
//! says whether trying again can help. The host acts on it: the local consumers ack,
//! requeue (bounded by the queue's delivery limit) or dead-letter; the Lambda host fails
//! the invocation so Amazon MQ redelivers, or dead-letters what can never succeed.

use aws_lambda_events::event::rabbitmq::RabbitMqEvent;
use base64::Engine as _;
use flash_sale_adapters::wire::MalformedMessage;
use flash_sale_core::ports::PortError;

/// Why a message was not processed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A component is down or slow: the same message may succeed later.
    #[error("retryable: {0}")]
    Retryable(String),
    /// The message can never succeed (malformed, refused by the database): dead-letter it.
    #[error("not retryable: {0}")]
    Rejected(String),
}

impl QueueError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, QueueError::Retryable(_))
    }
}

impl From<PortError> for QueueError {
    fn from(e: PortError) -> Self {
        if e.transient {
            QueueError::Retryable(e.to_string())
        } else {
            QueueError::Rejected(e.to_string())
        }
    }
}

impl From<MalformedMessage> for QueueError {
    fn from(e: MalformedMessage) -> Self {
        QueueError::Rejected(e.to_string())
    }
}

/// One message of an Amazon MQ for RabbitMQ event, its body decoded from base64.
#[derive(Debug)]
pub struct EventMessage {
    /// `"<queue>::<vhost>"`, as Amazon MQ names it.
    pub queue: String,
    pub body: Result<Vec<u8>, QueueError>,
}

/// Unpacks every message of a RabbitMQ event, in order, queue by queue.
pub fn event_messages(event: RabbitMqEvent) -> Vec<EventMessage> {
    let mut out = vec![];
    let mut queues: Vec<_> = event.messages_by_queue.into_iter().collect();
    queues.sort_by(|a, b| a.0.cmp(&b.0));
    for (queue, messages) in queues {
        for m in messages {
            let body = match m.data.as_deref() {
                None => Err(QueueError::Rejected("message has no data".into())),
                Some(data) => base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .map_err(|e| QueueError::Rejected(format!("message data is not base64: {e}"))),
            };
            out.push(EventMessage {
                queue: queue.clone(),
                body,
            });
        }
    }
    out
}

/// Builds the event Amazon MQ would deliver for these message bodies from `queue`: for
/// handler tests, example payloads and the local event-source bridge.
pub fn rabbit_event(queue: &str, bodies: &[Vec<u8>]) -> RabbitMqEvent {
    let messages: Vec<serde_json::Value> = bodies
        .iter()
        .map(|body| {
            serde_json::json!({
                "basicProperties": {
                    "contentType": "application/json",
                    "contentEncoding": null,
                    "headers": {},
                    "deliveryMode": 2,
                    "priority": 0,
                    "correlationId": null,
                    "replyTo": null,
                    "expiration": null,
                    "messageId": null,
                    "timestamp": null,
                    "type": null,
                    "userId": "guest",
                    "appId": null,
                    "clusterId": null,
                    "bodySize": body.len()
                },
                "redelivered": false,
                "data": base64::engine::general_purpose::STANDARD.encode(body)
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "eventSource": "aws:rmq",
        "eventSourceArn": "arn:aws:mq:us-east-1:000000000000:broker:flash-sale:b-00000000-0000-0000-0000-000000000000",
        "rmqMessagesByQueue": { format!("{queue}::/"): messages }
    }))
    .expect("the event shape matches aws_lambda_events")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_bodies_are_decoded_in_order() {
        let msgs = event_messages(rabbit_event(
            "flash-sale.orders",
            &[b"hello".to_vec(), b"world".to_vec()],
        ));
        assert_eq!(msgs[0].queue, "flash-sale.orders::/");
        let bodies: Vec<_> = msgs.into_iter().map(|m| m.body.unwrap()).collect();
        assert_eq!(bodies, vec![b"hello".to_vec(), b"world".to_vec()]);
    }

    #[test]
    fn bad_base64_and_missing_data_are_not_retryable() {
        let mut event = rabbit_event("q", &[b"x".to_vec(), b"y".to_vec()]);
        let messages = event.messages_by_queue.get_mut("q::/").unwrap();
        messages[0].data = Some("%%%not base64".into());
        messages[1].data = None;
        let msgs = event_messages(event);
        assert_eq!(msgs.len(), 2);
        for m in msgs {
            assert!(!m.body.unwrap_err().is_retryable());
        }
    }
}
