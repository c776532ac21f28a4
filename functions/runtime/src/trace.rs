//! Distributed traces, exported as OpenTelemetry over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, off
//! otherwise.
//!
//! What is traced: a span per HTTP request (continuing the caller's `traceparent`
//! header when it sends one), per Redis script, and per queue entry. Each entry of a
//! queue message carries the `traceparent` of the span that published it
//! ([`flash_sale_adapters::trace`]), so a reservation's expiry, its mock payment and its
//! order write all belong to the trace of the request that held the seat. In manual
//! payment mode the payment is a request of its own: its span links to the hold's trace.
//!
//! The exporter is the SDK's: `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the
//! default, or `http/json`), `OTEL_SERVICE_NAME` (default: the Lambda function's name,
//! or `flash-sale`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` (a crowd of 100,000 is best sampled:
//! `parentbased_traceidratio` with `0.01`), and the batch settings `OTEL_BSP_*`.
//!
//! With tracing off, every span of [`TARGET`] is disabled at its call site: the hot
//! path pays one cached check per span and writes no `traceparent`.

use std::sync::OnceLock;

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

use crate::config::Env;

pub use flash_sale_adapters::trace::TARGET;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether traces are exported (an endpoint is configured and the exporter started).
pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

/// The endpoint traces go to, when one is configured.
fn endpoint(env: &Env<impl Fn(&str) -> Option<String>>) -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .find_map(|var| env.get(var))
}

/// Starts the exporter when an endpoint is configured, and answers the layer that
/// turns this crate's spans into OpenTelemetry spans (`None`: tracing is off). An
/// exporter that cannot start leaves tracing off and says why: observability never
/// stops a sale.
pub(crate) fn layer<S>(
    env: &Env<impl Fn(&str) -> Option<String>>,
) -> (Option<impl Layer<S>>, Option<String>)
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let Some(endpoint) = endpoint(env) else {
        return (None, None);
    };
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(e) => {
            return (
                None,
                Some(format!(
                    "traces are off: the OTLP exporter for {endpoint} could not start: {e}"
                )),
            );
        }
    };
    let mut resource = Resource::builder();
    if env.get("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(
            env.get("AWS_LAMBDA_FUNCTION_NAME")
                .unwrap_or_else(|| "flash-sale".into()),
        );
    }
    let provider = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer("flash-sale");
    let _ = PROVIDER.set(provider);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(Targets::new().with_target(TARGET, tracing::Level::INFO));
    (
        Some(layer),
        Some(format!("traces are exported to {endpoint}")),
    )
}

/// Sends every finished span now (a Lambda invocation ends with this: the
/// environment may be frozen before the batch would have left on its own).
pub async fn flush() {
    if let Some(provider) = PROVIDER.get().cloned() {
        let flushed = tokio::task::spawn_blocking(move || provider.force_flush()).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!("could not export traces: {e}");
        }
    }
}

/// Sends what is left and stops the exporter (the local process, on its way out).
pub async fn shutdown() {
    if let Some(provider) = PROVIDER.get().cloned() {
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

/// The span of one HTTP request: a child of the caller's `traceparent` when it sent
/// one. Disabled (free) when tracing is off.
pub fn http_span(request: &Request) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "HTTP request",
        otel.name = Empty,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %request.method(),
        http.route = Empty,
        http.response.status_code = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let route = crate::metrics::route_of(request.uri().path());
    // The method as the metrics fold it: a made-up method is `other`, never a span name
    // of its own in the trace backend.
    let method = crate::metrics::method_of(request.method());
    span.record("otel.name", format!("{method} {route}"));
    span.record("http.route", route);
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
    let _ = span.set_parent(parent);
    span
}

/// Records the answer's status on a request's span; a 5xx marks it as an error.
pub fn answered(span: &Span, status: u16) {
    if span.is_disabled() {
        return;
    }
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// A Lambda HTTP function's router, traced: a span per request, and the spans sent
/// before the invocation returns.
pub fn per_invocation(router: axum::Router) -> axum::Router {
    router
        .layer(middleware::from_fn(traced))
        .layer(middleware::from_fn(flushed))
}

async fn traced(request: Request, next: Next) -> Response {
    use tracing::Instrument as _;
    let span = http_span(&request);
    let response = next.run(request).instrument(span.clone()).await;
    answered(&span, response.status().as_u16());
    response
}

async fn flushed(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if enabled() {
        flush().await;
    }
    response
}
