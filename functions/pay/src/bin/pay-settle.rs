//! The `pay-settle` Lambda function: the mock payment provider (PAYMENT_MODE=mock), fed by
//! an Amazon MQ for RabbitMQ event source mapping on the payment queue.

use flash_sale_runtime::{App, init_tracing};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let app = App::from_env().await?;
    flash_sale_runtime::lambda::serve_events(|event| {
        flash_sale_pay::handle_payment_event(&app, event)
    })
    .await
}
