//! The `queue` Lambda function (a showtime's waiting room): configuration and clients
//! once per cold start, then the shared router on every request.

use flash_sale_runtime::{App, error::no_such_route, init_tracing};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    init_tracing();
    let app = App::from_env().await?;
    let router = flash_sale_queue::router(app).fallback(no_such_route);
    flash_sale_runtime::lambda::serve_http(router).await
}
