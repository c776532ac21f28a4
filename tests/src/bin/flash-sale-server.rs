//! The `flash-sale` process, built inside the tests package so the crash tests can run,
//! kill -9 and restart it as a real child process (`CARGO_BIN_EXE_flash-sale-server`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    flash_sale_local::process::run_from_env().await
}
