//! The message bus on RabbitMQ.
//!
//! Topology, for queue prefix `flash-sale` and a 900 s hold (declared idempotently at
//! start, never purged):
//!
//! ```text
//!   reserve --expiries.delay.900s--> [flash-sale.expiries.delay.900s]  classic, no consumer,
//!                                      | x-message-ttl = hold time      queue-level TTL keeps
//!                                      | dead-lettered when due         expiries in order
//!                                      v
//!           --expiries-------------> [flash-sale.expiries]   --> expire
//!   reserve --payments-------------> [flash-sale.payments]   --> mock payer (mock mode)
//!   pay     --orders---------------> [flash-sale.orders]     --> write-order
//!
//!   work queues are quorum queues with x-delivery-limit: a message that keeps failing is
//!   dead-lettered through `flash-sale.dead` to `<queue>.dlq`, where a person can see it
//!   and replay it.
//! ```
//!
//! The TTL is part of the delay queue's name: a queue's arguments cannot change once it
//! exists, so a new hold time gets a new queue instead of a PRECONDITION_FAILED.
//! Every publish is persistent and mandatory and confirmed by the broker. Holds,
//! payment requests and orders of concurrent requests leave together, one message (a
//! JSON array) per batch: see [`batch`]. Pay answers after its order's confirm. Reserve
//! answers after its hold's messages are confirmed, or, in a long-lived process
//! ([`Broker::hand_over_hold_messages`]), once they are queued while the broker is
//! confirming: the sweep returns a hold whose expiry was lost.

mod batch;
pub mod metrics;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use batch::Batcher;
use flash_sale_core::ports::{MessageBus, PortError, PortResult};
use flash_sale_core::{Expiry, OrderRequest, PaymentRequest};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::Mutex;

use crate::tls::Trust;
use crate::wire;

const COMPONENT: &str = "rabbitmq";

fn port_error(context: &str, e: lapin::Error) -> PortError {
    PortError::transient(COMPONENT, format!("{context}: {e}"))
}

/// The queues a consumer can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Holds whose time is over, dead-lettered from the delay queue.
    Expiries,
    /// Payment requests for the mock payer.
    Payments,
    /// Paid reservations to record in the database.
    Orders,
}

impl Queue {
    pub const ALL: [Queue; 3] = [Queue::Expiries, Queue::Payments, Queue::Orders];

    /// Routing key, and the queue's name after the prefix.
    pub fn key(self) -> &'static str {
        match self {
            Queue::Expiries => "expiries",
            Queue::Payments => "payments",
            Queue::Orders => "orders",
        }
    }
}

/// Names and shape of every exchange and queue.
#[derive(Debug, Clone)]
pub struct Topology {
    pub prefix: String,
    pub hold: Duration,
    /// Deliveries of one message before it is dead-lettered.
    pub delivery_limit: u32,
}

impl Topology {
    pub fn exchange(&self) -> String {
        self.prefix.clone()
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    fn delay_key(&self) -> String {
        format!("expiries.delay.{}s", self.hold.as_secs())
    }

    pub fn delay_queue(&self) -> String {
        format!("{}.{}", self.prefix, self.delay_key())
    }

    pub fn queue(&self, q: Queue) -> String {
        format!("{}.{}", self.prefix, q.key())
    }

    pub fn dead_letter_queue(&self, q: Queue) -> String {
        format!("{}.{}.dlq", self.prefix, q.key())
    }

    /// Every queue of the topology by name: the delay queue, then each work queue
    /// followed by its dead-letter queue.
    pub fn queue_names(&self) -> Vec<String> {
        let mut names = vec![self.delay_queue()];
        for q in Queue::ALL {
            names.push(self.queue(q));
            names.push(self.dead_letter_queue(q));
        }
        names
    }
}

/// The [`MessageBus`] on RabbitMQ: two connections, re-opened on demand after a broker
/// restart. One publishes, on one confirm-mode channel, every wait on it bounded by
/// [`Broker::confirm_within`]; the other consumes, acknowledges and inspects. A broker
/// that blocks publishers (a memory or disk alarm) blocks the publishing connection
/// only, so consumers keep acknowledging and draining while it lasts. Holds, payment
/// requests and orders are published in batches by destination ([`batch`]). Cheap to
/// clone: clones share the connections and the batch publishers.
#[derive(Clone)]
pub struct Broker {
    topology: Topology,
    /// The publishing connection.
    link: Arc<Link>,
    /// The consuming (and inspecting) connection: it never publishes.
    reader: Arc<Link>,
    holds: Batcher,
    payments: Batcher,
    orders: Batcher,
    /// Whether a hold's messages are handed over (see [`Broker::hand_over_hold_messages`]).
    hand_over: bool,
}

/// A connection (and, on the publishing one, its confirm-mode channel), shared with the
/// batch publishers. The topology is declared on the broker's first connection and on
/// every reconnection, before the connection is used: a broker that comes back without
/// its definitions (reset, or a new node without the old one's disk) gets them again,
/// instead of every publish and consume failing until the process restarts.
struct Link {
    url: String,
    topology: Topology,
    /// Whether one of the broker's links has declared the topology (both share it): the
    /// second link's first connection need not declare it again, a reconnection does.
    declared: Arc<AtomicBool>,
    /// Whether this link has connected before.
    connected_before: AtomicBool,
    /// What the connection trusts over `amqps://`.
    trust: Trust,
    /// The connection's name in the broker's management view.
    name: &'static str,
    conn: Mutex<Option<Connection>>,
    publisher: Mutex<Option<Channel>>,
    /// The most a publish may wait for its channel, its confirm or a refusal, in ms.
    confirm_within_ms: AtomicU64,
}

/// How long a publish waits for the broker by default.
pub const DEFAULT_CONFIRM_WITHIN: Duration = Duration::from_secs(3);

impl Link {
    fn new(
        url: &str,
        topology: &Topology,
        declared: &Arc<AtomicBool>,
        trust: &Trust,
        name: &'static str,
    ) -> Arc<Self> {
        Arc::new(Link {
            url: url.to_string(),
            topology: topology.clone(),
            declared: declared.clone(),
            connected_before: AtomicBool::new(false),
            trust: trust.clone(),
            name,
            conn: Mutex::new(None),
            publisher: Mutex::new(None),
            confirm_within_ms: AtomicU64::new(DEFAULT_CONFIRM_WITHIN.as_millis() as u64),
        })
    }

    fn confirm_within(&self) -> Duration {
        Duration::from_millis(self.confirm_within_ms.load(Ordering::Relaxed))
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("topology", &self.topology)
            .finish()
    }
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

impl Broker {
    /// Connects and declares the whole topology.
    pub async fn connect(url: &str, topology: Topology) -> PortResult<Self> {
        Self::connect_trusting(url, topology, &Trust::system("AMQP_CA_FILE")).await
    }

    /// [`Broker::connect`], an `amqps://` URL trusting the system's roots and `trust`'s
    /// CA file (on every reconnection too); a certificate that does not verify is named
    /// as such.
    pub async fn connect_trusting(
        url: &str,
        topology: Topology,
        trust: &Trust,
    ) -> PortResult<Self> {
        let declared = Arc::new(AtomicBool::new(false));
        let link = Link::new(url, &topology, &declared, trust, "flash-sale publisher");
        let reader = Link::new(url, &topology, &declared, trust, "flash-sale consumer");
        let exchange = topology.exchange();
        let batcher = |key: String| Batcher::start(link.clone(), exchange.clone(), key);
        let broker = Self {
            holds: batcher(topology.delay_key()),
            payments: batcher(Queue::Payments.key().to_string()),
            orders: batcher(Queue::Orders.key().to_string()),
            topology,
            link,
            reader,
            hand_over: false,
        };
        // Connecting declares the topology.
        broker.reader.channel().await?;
        Ok(broker)
    }

    /// Bounds every wait of a publish (for the channel, the confirm, a refusal) by
    /// `within`: past it the publish fails (transient), so a broker that blocks
    /// publishers makes callers fail in time instead of hanging. Default
    /// [`DEFAULT_CONFIRM_WITHIN`].
    pub fn confirm_within(self, within: Duration) -> Self {
        self.link
            .confirm_within_ms
            .store(within.as_millis().max(1) as u64, Ordering::Relaxed);
        self
    }

    /// Bounds the hold messages handed over and not confirmed yet: past `limit`, a
    /// hold's messages are confirmed before [`MessageBus::publish_hold`] returns, as if
    /// nothing were handed over. Unbounded by default.
    pub fn hand_over_at_most(self, limit: usize) -> Self {
        self.holds.hand_over_at_most(limit);
        self.payments.hand_over_at_most(limit);
        self
    }

    /// Lets a batch of hold messages that nobody waits for (handed over, see
    /// [`Broker::hand_over_hold_messages`]) wait up to `linger` for more before it
    /// leaves, so holds that trickle in cost the broker a few large messages rather than
    /// many small ones. Zero (the default) sends each batch as soon as it can.
    pub fn linger(self, linger: Duration) -> Self {
        self.holds.linger(linger);
        self.payments.linger(linger);
        self
    }

    /// Lets [`MessageBus::publish_hold`] return once a hold's messages are queued for the
    /// next batch, while the broker is confirming, instead of after their confirm. Only
    /// for a process that lives on after answering (not a Lambda function, frozen
    /// between invocations), and that runs the sweep, or has it run, which returns a hold
    /// whose expiry was lost. Off by default.
    pub fn hand_over_hold_messages(mut self, yes: bool) -> Self {
        self.hand_over = yes;
        self
    }

    /// Waits, at most `within`, until every hold message handed over so far is confirmed
    /// (or given up on): what a process does before it stops. Returns how many are
    /// still outstanding.
    pub async fn flush(&self, within: Duration) -> usize {
        let (holds, payments) = tokio::join!(self.holds.flush(within), self.payments.flush(within));
        holds + payments
    }

    async fn follow_up(&self, batcher: &Batcher, message: Vec<u8>) -> PortResult<()> {
        let within = self.caller_waits();
        if self.hand_over {
            batcher.hand_over(message, within).await
        } else {
            batcher.publish(message, within).await
        }
    }

    /// How long a caller waits for its message's confirm: the batch in flight when it
    /// was queued, then its own, each bounded by [`Broker::confirm_within`].
    fn caller_waits(&self) -> Duration {
        self.link.confirm_within() * 2
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// A new channel on the (re)connected consuming connection (which never publishes).
    pub async fn channel(&self) -> PortResult<Channel> {
        self.reader.channel().await
    }

    /// Declares every exchange, queue and binding. Idempotent: never purges, never
    /// changes an existing queue.
    pub async fn declare_topology(&self) -> PortResult<()> {
        let ch = self.channel().await?;
        declare(&ch, &self.topology).await
    }

    /// Whether both connections are up and a channel opens on each (a readiness probe),
    /// within the publish deadline.
    pub async fn ping(&self) -> PortResult<()> {
        let both = async {
            let ch = self.reader.channel().await?;
            let _ = ch.close(200, "probe".into()).await;
            self.link.publisher().await.map(|_| ())
        };
        tokio::time::timeout(self.link.confirm_within(), both)
            .await
            .unwrap_or_else(|_| Err(PortError::transient(COMPONENT, "no answer in time")))
    }

    /// Messages ready in the queue named `queue` (not counting unacknowledged ones).
    pub async fn ready_count(&self, queue: &str) -> PortResult<u32> {
        let ch = self.channel().await?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| port_error(&format!("inspecting {queue}"), e))?;
        Ok(q.message_count())
    }

    /// Deletes every queue and exchange of this topology. For tests and tear-down only:
    /// the service itself never purges or deletes.
    pub async fn delete_topology(&self) -> PortResult<()> {
        let ch = self.channel().await?;
        let t = &self.topology;
        for q in t.queue_names() {
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(|e| port_error(&format!("deleting {q}"), e))?;
        }
        for x in [t.exchange(), t.dead_letter_exchange()] {
            ch.exchange_delete(x.as_str().into(), Default::default())
                .await
                .map_err(|e| port_error(&format!("deleting {x}"), e))?;
        }
        Ok(())
    }

    /// Moves up to `limit` messages from `queue`'s dead-letter queue back to the work
    /// exchange, for after the cause was fixed. Each is re-published (confirmed) before
    /// it is removed from the dead-letter queue, so a crash in between duplicates a
    /// message (harmless: every handler is idempotent) and never loses one.
    pub async fn replay_dead_letters(&self, queue: Queue, limit: usize) -> PortResult<usize> {
        let ch = self.channel().await?;
        let dlq = self.topology.dead_letter_queue(queue);
        let mut moved = 0;
        while moved < limit {
            let Some(message) = ch
                .basic_get(dlq.as_str().into(), BasicGetOptions::default())
                .await
                .map_err(|e| port_error(&format!("reading {dlq}"), e))?
            else {
                break;
            };
            let delivery = message.delivery;
            self.publish(&[(queue.key(), delivery.data.clone())])
                .await?;
            delivery
                .ack(BasicAckOptions::default())
                .await
                .map_err(|e| port_error(&format!("removing a replayed message from {dlq}"), e))?;
            moved += 1;
        }
        Ok(moved)
    }

    /// Opens a consumer on `queue` on its own channel, with at most `prefetch`
    /// unacknowledged deliveries.
    pub async fn consume(
        &self,
        queue: Queue,
        prefetch: u16,
    ) -> PortResult<(Channel, lapin::Consumer)> {
        let ch = self.channel().await?;
        // Declared again each time a consumer starts (it is idempotent, and consumers
        // start rarely): a queue deleted under the live connection cancels its consumer,
        // and consuming it again would fail until a new connection declared it. Only
        // here, after the broker's cancel: a queue declared again at once under a live
        // consumer (a publisher's retry) can leave that consumer attached to nothing,
        // the broker never cancelling it (RabbitMQ 3.10, quorum queues).
        declare(&ch, &self.topology).await?;
        ch.basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| port_error("setting prefetch", e))?;
        let name = self.topology.queue(queue);
        let consumer = ch
            .basic_consume(
                name.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| port_error(&format!("consuming {name}"), e))?;
        Ok((ch, consumer))
    }

    /// Publishes every message to the work exchange, then waits for all their confirms
    /// together.
    pub async fn publish(&self, messages: &[(&str, Vec<u8>)]) -> PortResult<()> {
        self.link
            .publish_to(&self.topology.exchange(), messages, FieldTable::default())
            .await
    }

    /// Sends a message that can never succeed to `queue`'s dead-letter queue, with the
    /// reason in its `x-flash-sale-reason` header. For hosts that cannot reject a single
    /// message themselves (a Lambda batch).
    pub async fn dead_letter(&self, queue: Queue, body: Vec<u8>, reason: &str) -> PortResult<()> {
        let headers = table(&[("x-flash-sale-reason", text(reason))]);
        self.link
            .publish_to(
                &self.topology.dead_letter_exchange(),
                &[(queue.key(), body)],
                headers,
            )
            .await
    }
}

/// Declares every exchange, queue and binding of `t`. Idempotent: never purges, never
/// changes an existing queue.
async fn declare(ch: &Channel, t: &Topology) -> PortResult<()> {
    declare_delay_queue(ch, t).await?;
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for q in Queue::ALL {
        let args = table(&[
            ("x-queue-type", text("quorum")),
            ("x-delivery-limit", AMQPValue::LongUInt(t.delivery_limit)),
            ("x-dead-letter-exchange", text(&t.dead_letter_exchange())),
            ("x-dead-letter-routing-key", text(q.key())),
        ]);
        declare_bound(ch, &t.queue(q), durable_queue, args, &t.exchange(), q.key()).await?;
        declare_bound(
            ch,
            &t.dead_letter_queue(q),
            durable_queue,
            FieldTable::default(),
            &t.dead_letter_exchange(),
            q.key(),
        )
        .await?;
    }
    Ok(())
}

/// Declares the exchanges and the delay queue (where expiries wait out the hold, with no
/// consumer), bound.
async fn declare_delay_queue(ch: &Channel, t: &Topology) -> PortResult<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for exchange in [t.exchange(), t.dead_letter_exchange()] {
        ch.exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(|e| port_error(&format!("declaring exchange {exchange}"), e))?;
    }
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let hold_ms = t.hold.as_millis().min(u32::MAX as u128) as u32;
    let delay_args = table(&[
        ("x-message-ttl", AMQPValue::LongUInt(hold_ms)),
        ("x-dead-letter-exchange", text(&t.exchange())),
        ("x-dead-letter-routing-key", text(Queue::Expiries.key())),
    ]);
    declare_bound(
        ch,
        &t.delay_queue(),
        durable_queue,
        delay_args,
        &t.exchange(),
        &t.delay_key(),
    )
    .await
}

async fn declare_bound(
    ch: &Channel,
    queue: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
    exchange: &str,
    key: &str,
) -> PortResult<()> {
    ch.queue_declare(queue.into(), options, args)
        .await
        .map_err(|e| port_error(&format!("declaring queue {queue}"), e))?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| port_error(&format!("binding queue {queue}"), e))
}

impl Link {
    /// A new channel on the (re)connected connection.
    async fn channel(&self) -> PortResult<Channel> {
        let mut conn = self.conn.lock().await;
        if !conn.as_ref().is_some_and(|c| c.status().connected()) {
            let props = ConnectionProperties::default().with_connection_name(self.name.into());
            let runtime = lapin::runtime::default_runtime()
                .map_err(|e| port_error("starting the AMQP runtime", e))?;
            let fresh = tokio::time::timeout(
                Duration::from_secs(5),
                Connection::connect_with_config(
                    &self.url,
                    props,
                    self.trust.lapin_config(),
                    runtime,
                ),
            )
            .await
            .map_err(|_| {
                PortError::transient(
                    COMPONENT,
                    format!("connecting to {} timed out", redact(&self.url)),
                )
            })?
            // Transient even so: on a reconnection mid-sale, a message is retried, never
            // dead-lettered, while a person fixes the trust.
            .map_err(|e| match self.trust.explain("RabbitMQ", &e) {
                Some(message) => PortError::transient(COMPONENT, message),
                None => port_error(&format!("connecting to {}", redact(&self.url)), e),
            })?;
            let ch = fresh
                .create_channel()
                .await
                .map_err(|e| port_error("opening a channel", e))?;
            let reconnection = self.connected_before.load(Ordering::Relaxed);
            if reconnection || !self.declared.load(Ordering::Relaxed) {
                declare(&ch, &self.topology).await?;
                self.declared.store(true, Ordering::Relaxed);
            }
            self.connected_before.store(true, Ordering::Relaxed);
            *conn = Some(fresh);
            return Ok(ch);
        }
        let conn = conn.as_ref().expect("connected above");
        conn.create_channel()
            .await
            .map_err(|e| port_error("opening a channel", e))
    }

    /// The delay queue deleted under the live connection (the topology is declared when
    /// a connection opens, and by a consumer starting again after the broker cancelled
    /// it, but the delay queue has no consumer): declared again, so the retry the
    /// returned publish's error invites is routed. The queues with consumers are left to
    /// them: declared again at once under a live consumer, a queue can leave that
    /// consumer attached to nothing.
    async fn declare_delay_queue_again(&self) {
        let declared = async {
            let ch = self.channel().await?;
            declare_delay_queue(&ch, &self.topology).await?;
            let _ = ch.close(200, "declared".into()).await;
            Ok::<_, PortError>(())
        };
        match declared.await {
            Ok(()) => tracing::warn!(
                "an expiry was returned unroutable: its delay queue is declared again"
            ),
            Err(e) => tracing::warn!(
                "an expiry was returned unroutable; declaring its delay queue again failed: {e}"
            ),
        }
    }

    async fn publisher(&self) -> PortResult<Channel> {
        let mut slot = self.publisher.lock().await;
        if let Some(ch) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(ch.clone());
        }
        let ch = self.channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| port_error("enabling publisher confirms", e))?;
        *slot = Some(ch.clone());
        Ok(ch)
    }

    /// Publishes `messages` and waits for all their confirms, at most
    /// [`Link::confirm_within`] in all.
    async fn publish_to(
        &self,
        exchange: &str,
        messages: &[(&str, Vec<u8>)],
        headers: FieldTable,
    ) -> PortResult<()> {
        let within = self.confirm_within();
        tokio::time::timeout(within, self.publish_confirmed(exchange, messages, headers))
            .await
            .unwrap_or_else(|_| {
                Err(PortError::transient(
                    COMPONENT,
                    format!(
                        "the broker did not confirm within {} ms (is it blocking publishers?)",
                        within.as_millis()
                    ),
                ))
            })
    }

    async fn publish_confirmed(
        &self,
        exchange: &str,
        messages: &[(&str, Vec<u8>)],
        headers: FieldTable,
    ) -> PortResult<()> {
        let ch = self.publisher().await?;
        let mut confirms = Vec::with_capacity(messages.len());
        for (key, body) in messages {
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_headers(headers.clone());
            let confirm = ch
                .basic_publish(
                    exchange.into(),
                    (*key).into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body,
                    props,
                )
                .await
                .map_err(|e| port_error("publishing", e))?;
            confirms.push(confirm);
        }
        for confirm in futures::future::join_all(confirms).await {
            match confirm.map_err(|e| port_error("waiting for a publisher confirm", e))? {
                Confirmation::Ack(None) | Confirmation::NotRequested => {}
                Confirmation::Ack(Some(returned)) => {
                    if returned.delivery.routing_key.as_str() == self.topology.delay_key() {
                        self.declare_delay_queue_again().await;
                    }
                    return Err(PortError::transient(
                        COMPONENT,
                        format!(
                            "message to {} was unroutable and returned",
                            returned.delivery.routing_key
                        ),
                    ));
                }
                Confirmation::Nack(_) => {
                    return Err(PortError::transient(
                        COMPONENT,
                        "the broker refused a message (nack)",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

impl MessageBus for Broker {
    /// The hold's expiry (and, in mock-payment mode, its payment request), each batched
    /// with those of concurrent holds; returns once both are confirmed, or, when
    /// [handing over](Broker::hand_over_hold_messages) and the broker is confirming, once
    /// both are queued for their next batch.
    async fn publish_hold(
        &self,
        expiry: Expiry,
        payment: Option<PaymentRequest>,
    ) -> PortResult<()> {
        let expiry = self.follow_up(&self.holds, wire::encode_expiry(&expiry));
        match payment {
            None => expiry.await,
            Some(p) => {
                let payment = self.follow_up(&self.payments, wire::encode_payment(&p));
                let (expiry, payment) = tokio::join!(expiry, payment);
                expiry.and(payment)
            }
        }
    }

    /// The orders, batched with those of concurrent payments; returns once all are
    /// confirmed.
    async fn publish_orders(&self, orders: &[OrderRequest]) -> PortResult<()> {
        let within = self.caller_waits();
        futures::future::try_join_all(
            orders
                .iter()
                .map(|o| self.orders.publish(wire::encode_order(o), within)),
        )
        .await
        .map(|_| ())
    }
}
