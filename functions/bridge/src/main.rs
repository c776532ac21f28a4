//! `flash-sale-bridge`: feeds the RabbitMQ queues to the queue functions served by
//! `cargo lambda watch`, as Amazon MQ's event source mapping does on AWS. Configuration:
//! the functions' own variables (AMQP_URL, QUEUE_PREFIX, HOLD_TTL_SECS,
//! QUEUE_DELIVERY_LIMIT) and BRIDGE_* (see `BridgeConfig`). Stops on Ctrl-C or SIGTERM.

use flash_sale_bridge::{BridgeConfig, run};
use flash_sale_runtime::{Config, init_tracing};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let config = Config::from_env()?;
    let bridge = BridgeConfig::from_env()?;
    run(config, bridge, stopped()).await
}

async fn stopped() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping; unacknowledged messages go back to their queues");
}
