//! The `reconcile` Lambda function, on a schedule: sweep, then reconcile every showtime.
//! `RECONCILE_REPAIR=true` lets it rebuild Redis from the database (default: report only).

use flash_sale_runtime::config::Env;
use flash_sale_runtime::{App, init_tracing};
use lambda_runtime::LambdaEvent;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let app = App::from_env().await?;
    let repair = Env::process().flag("RECONCILE_REPAIR")?;
    flash_sale_runtime::lambda::serve_events(|_: LambdaEvent<serde_json::Value>| {
        let app = app.clone();
        async move {
            let report =
                flash_sale_reconcile::run(&app, None, repair, app.config.sweep_grace).await?;
            // A step that could not run is the infrastructure's failure, not the sale's:
            // the invocation fails (the functions' error alarm), after the report is logged.
            if !report.failures.is_empty() {
                tracing::error!(?report, "reconciliation steps failed");
                return Err(format!(
                    "reconciliation steps failed: {}",
                    report.failures.join("; ")
                )
                .into());
            }
            if !report.is_clean() {
                tracing::error!(?report, "reconciliation found discrepancies");
            }
            Ok::<_, lambda_runtime::Error>(serde_json::to_value(&report)?)
        }
    })
    .await
}
