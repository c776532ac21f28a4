//! `flash-sale`: every function in one local process (see the crate docs).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    flash_sale_local::process::run_from_env().await
}
