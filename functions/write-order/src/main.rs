//! The `write-order` Lambda function, fed by an Amazon MQ for RabbitMQ event source
//! mapping on the order queue.

use flash_sale_runtime::{App, init_tracing};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let app = App::from_env().await?;
    flash_sale_runtime::lambda::serve_events(|event| {
        flash_sale_write_order::handle_event(&app, event)
    })
    .await
}
