//! Queue handlers' outcomes, how a batch of them is settled, and the Lambda side of
//! queue delivery.
//!
//! A queue handler takes message bodies and answers, per body, with a [`QueueError`]
//! that says whether trying again can help. The host acts on it: the local consumers ack,
//! requeue (bounded by the queue's delivery limit) or dead-letter each delivery; the
//! Lambda host settles the whole event at once ([`settle`], [`handle_event`]): any
//! retryable failure fails the invocation so Amazon MQ redelivers the batch (every
//! handler is idempotent), otherwise what can never succeed is dead-lettered and the
//! rest is done. A failed invocation first pauses ([`retry_pause`]): the event source
//! redelivers a failed batch at once, so without a pause an outage of a few seconds
//! would use up the queue's delivery limit and dead-letter the batch.

use std::future::Future;
use std::time::{Duration, SystemTime};

use aws_lambda_events::event::rabbitmq::RabbitMqEvent;
use base64::Engine as _;
use flash_sale_adapters::Queue;
use flash_sale_adapters::wire::MalformedMessage;
use flash_sale_core::ports::PortError;
use lambda_runtime::LambdaEvent;

use crate::Queues;

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

/// How a batch ends once every message's result is in: either the whole batch is tried
/// again, or the messages at these positions are dead-lettered (each with its reason)
/// and everything else is done. Deciding only after every result is in means a rejected
/// message is never dead-lettered by an attempt that then fails on a later one, which a
/// redelivery would dead-letter a second time.
pub fn settle(results: &[Result<(), QueueError>]) -> Result<Vec<(usize, &str)>, &QueueError> {
    if let Some(Err(retryable)) = results
        .iter()
        .find(|r| matches!(r, Err(e) if e.is_retryable()))
    {
        return Err(retryable);
    }
    Ok(results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Err(QueueError::Rejected(why)) => Some((i, why.as_str())),
            _ => None,
        })
        .collect())
}

/// The Lambda host of a queue function: decodes every message of `event`, hands the
/// bodies to `handler` at once (one result per body, in order), then [`settle`]s the
/// batch: a retryable failure fails the invocation, rejected messages go to `queue`'s
/// dead-letter queue through `queues`.
pub async fn handle_event<H, Fut>(
    queues: &Queues,
    queue: Queue,
    event: LambdaEvent<RabbitMqEvent>,
    handler: H,
) -> Result<(), lambda_runtime::Error>
where
    H: FnOnce(Vec<Vec<u8>>) -> Fut,
    Fut: Future<Output = Vec<Result<(), QueueError>>>,
{
    // Lambda's deadline for the invocation (none in a test's default context).
    let deadline = (event.context.deadline > 0).then(|| event.context.deadline());
    let settled = async {
        let messages = event_messages(event.payload);
        let decoded: Vec<Vec<u8>> = messages
            .iter()
            .filter_map(|m| m.body.as_ref().ok().cloned())
            .collect();
        let mut handled = handler(decoded).await.into_iter();
        let results: Vec<Result<(), QueueError>> = messages
            .iter()
            .map(|m| match &m.body {
                Ok(_) => handled
                    .next()
                    .unwrap_or_else(|| Err(QueueError::Retryable("the handler gave no result".into()))),
                Err(undecodable) => Err(QueueError::Rejected(undecodable.to_string())),
            })
            .collect();
        let dead_letters = match settle(&results) {
            Ok(dead_letters) => dead_letters,
            Err(retryable) => {
                return Err(
                    redeliver_after_pause(queue, &messages, retryable, time_left(deadline)).await,
                );
            }
        };
        for (i, reason) in dead_letters {
            let message = &messages[i];
            tracing::error!(queue = %message.queue, %reason, "dead-lettering a message that can never succeed");
            let body = match &message.body {
                Ok(body) => body.clone(),
                Err(_) => message.undecoded.clone(),
            };
            if let Err(e) = queues.dead_letter(queue, body, reason).await {
                let e = QueueError::from(e);
                return Err(redeliver_after_pause(queue, &messages, &e, time_left(deadline)).await);
            }
            crate::metrics::dead_lettered(queue.key());
        }
        Ok(())
    }
    .await;
    // The environment may be frozen once the invocation returns: spans leave first.
    crate::trace::flush().await;
    settled
}

/// What a queue function answers for a batch to be delivered again: the error, after
/// the batch's [`retry_pause`], cut to end [`DEADLINE_MARGIN`] before the invocation's
/// deadline when `left` (the time left until it) is known.
pub async fn redeliver_after_pause(
    queue: Queue,
    messages: &[EventMessage],
    why: &QueueError,
    left: Option<Duration>,
) -> lambda_runtime::Error {
    let deliveries = messages.iter().map(|m| m.deliveries).max().unwrap_or(0);
    let mut pause = retry_pause(deliveries);
    if let Some(left) = left {
        pause = pause.min(left.saturating_sub(DEADLINE_MARGIN));
    }
    tracing::warn!(
        queue = queue.key(),
        deliveries,
        pause_ms = pause.as_millis() as u64,
        "the batch will be delivered again: {why}"
    );
    tokio::time::sleep(pause).await;
    why.to_string().into()
}

/// How long before an invocation's deadline its pause ends, so that the invocation fails
/// rather than times out (a timed-out environment is started again, and its start does
/// not pause).
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(1);

/// The time left until the invocation's `deadline`, when it has one.
fn time_left(deadline: Option<SystemTime>) -> Option<Duration> {
    deadline.map(|d| d.duration_since(SystemTime::now()).unwrap_or_default())
}

/// How long a queue function waits before it fails an invocation whose batch is to be
/// delivered again, after `deliveries` earlier deliveries of the batch's most delivered
/// message: [`RETRY_PAUSE_FIRST`], doubling with each delivery, at most
/// [`RETRY_PAUSE_MOST`]. With the default delivery limit (`QUEUE_DELIVERY_LIMIT`, 10) a
/// message is dead-lettered only after about half a minute of failures, not after ten
/// immediate redeliveries (less where failing invocations take long themselves: the
/// pause is cut to the invocation's deadline).
pub fn retry_pause(deliveries: u64) -> Duration {
    let doublings = deliveries.min(16) as u32;
    RETRY_PAUSE_FIRST
        .saturating_mul(1 << doublings)
        .min(RETRY_PAUSE_MOST)
}

/// The pause before the first redelivery of a failed batch ([`retry_pause`]).
pub const RETRY_PAUSE_FIRST: Duration = Duration::from_millis(250);

/// The longest pause before a redelivery ([`retry_pause`]).
pub const RETRY_PAUSE_MOST: Duration = Duration::from_secs(5);

/// The header in which a quorum queue counts a message's earlier deliveries.
pub const DELIVERY_COUNT: &str = "x-delivery-count";

/// One message of an Amazon MQ for RabbitMQ event, its body decoded from base64.
#[derive(Debug)]
pub struct EventMessage {
    /// `"<queue>::<vhost>"`, as Amazon MQ names it.
    pub queue: String,
    pub body: Result<Vec<u8>, QueueError>,
    /// The message's data as the event carried it, when it could not be decoded (what
    /// its dead letter keeps, for a person to read); empty otherwise.
    pub undecoded: Vec<u8>,
    /// Earlier deliveries of the message: the quorum queue's [`DELIVERY_COUNT`] header
    /// when the event carries it, else 1 for a message marked redelivered, else 0.
    pub deliveries: u64,
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
            let counted = m
                .basic_properties
                .headers
                .get(DELIVERY_COUNT)
                .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()));
            let undecoded = match &body {
                Err(_) => m.data.map(String::into_bytes).unwrap_or_default(),
                Ok(_) => vec![],
            };
            out.push(EventMessage {
                queue: queue.clone(),
                body,
                undecoded,
                deliveries: counted.unwrap_or(u64::from(m.redelivered)),
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

    fn rejected(why: &str) -> Result<(), QueueError> {
        Err(QueueError::Rejected(why.into()))
    }

    fn retryable(why: &str) -> Result<(), QueueError> {
        Err(QueueError::Retryable(why.into()))
    }

    #[test]
    fn a_batch_with_only_rejections_dead_letters_exactly_those() {
        let results = [Ok(()), rejected("poison"), Ok(()), rejected("refused")];
        assert_eq!(
            settle(&results).unwrap(),
            vec![(1, "poison"), (3, "refused")]
        );
        assert!(settle(&[Ok(()), Ok(())]).unwrap().is_empty());
        assert!(settle(&[]).unwrap().is_empty());
    }

    #[test]
    fn a_retryable_failure_anywhere_retries_the_batch_and_dead_letters_nothing() {
        // The rejection comes first: it must not be dead-lettered by this attempt, or
        // the redelivery would dead-letter it a second time.
        let results = [rejected("poison"), Ok(()), retryable("redis down")];
        let retry = settle(&results).unwrap_err();
        assert!(retry.is_retryable());
        assert!(retry.to_string().contains("redis down"));
    }

    #[test]
    fn a_failed_batch_waits_longer_the_more_it_was_delivered() {
        let pauses: Vec<u64> = (0..8).map(|d| retry_pause(d).as_millis() as u64).collect();
        assert_eq!(pauses, [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
        assert_eq!(retry_pause(u64::MAX), RETRY_PAUSE_MOST);
        // Ten deliveries (the default limit) span about half a minute, not a moment.
        let total: Duration = (0..10).map(retry_pause).sum();
        assert!(total >= Duration::from_secs(25), "{total:?}");
    }

    #[test]
    fn a_messages_deliveries_come_from_its_count_header_or_its_redelivered_flag() {
        let mut event = rabbit_event("q", &[b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        let messages = event.messages_by_queue.get_mut("q::/").unwrap();
        messages[0]
            .basic_properties
            .headers
            .insert(DELIVERY_COUNT.into(), serde_json::json!(3));
        messages[1].redelivered = true;
        let deliveries: Vec<u64> = event_messages(event).iter().map(|m| m.deliveries).collect();
        assert_eq!(deliveries, [3, 1, 0]);
    }

    /// The pause is taken before the invocation fails, on the most delivered message's
    /// count. (The clock is tokio's paused test clock: the test measures the pause, it
    /// does not wait for it.)
    #[tokio::test(start_paused = true)]
    async fn a_batch_to_deliver_again_pauses_on_its_most_delivered_message() {
        let mut event = rabbit_event("q", &[b"a".to_vec(), b"b".to_vec()]);
        let messages = event.messages_by_queue.get_mut("q::/").unwrap();
        messages[1]
            .basic_properties
            .headers
            .insert(DELIVERY_COUNT.into(), serde_json::json!(2));
        let messages = event_messages(event);
        let down = QueueError::Retryable("down".into());
        let started = tokio::time::Instant::now();
        let error = redeliver_after_pause(Queue::Orders, &messages, &down, None).await;
        assert_eq!(started.elapsed(), retry_pause(2));
        assert!(error.to_string().contains("down"), "{error}");
        // Never past the invocation's deadline, less a margin.
        let started = tokio::time::Instant::now();
        let left = Some(Duration::from_millis(1_300));
        redeliver_after_pause(Queue::Orders, &messages, &down, left).await;
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

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
