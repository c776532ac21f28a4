//! The `flash-sale` process: configuration from the environment, the services, the
//! listener, and a clean stop on Ctrl-C or SIGTERM.

use anyhow::Context as _;
use flash_sale_runtime::{App, Config, init_tracing};

/// What `main` does: read the environment, connect, serve until told to stop.
pub async fn run_from_env() -> anyhow::Result<()> {
    init_tracing();
    let config = Config::from_env().context("bad configuration")?;
    let addr = config.addr;
    let app = App::connect(config).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on ADDR={addr}"))?;
    crate::serve(app, listener, shutdown_signal()).await
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
