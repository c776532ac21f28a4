//! Trace context across the broker: the W3C `traceparent` of the span that published a
//! message travels inside each entry of the message (a batched body carries the entries
//! of many requests, so a header per message could not say whose is whose), and the
//! consumer's span for that entry continues the same trace.
//!
//! Spans of this target ([`TARGET`]) exist only while an OpenTelemetry exporter is
//! installed (the host's `trace` module): with none, the log subscriber turns the
//! target off, every span macro of it is a disabled no-op, no `traceparent` is written,
//! and the hot path pays nothing for tracing.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The `tracing` target of every span exported as OpenTelemetry: HTTP requests, Redis
/// scripts, queue entries.
pub const TARGET: &str = "flash_sale::otel";

const TRACEPARENT: &str = "traceparent";

/// The `traceparent` of the current span, when it belongs to an exported trace.
pub fn current_traceparent() -> Option<String> {
    let span = Span::current();
    if span.is_disabled() {
        return None;
    }
    traceparent_of(&span.context())
}

/// The `traceparent` of a context, when it names a valid span.
pub fn traceparent_of(cx: &Context) -> Option<String> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::with_capacity(1);
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The remote context a `traceparent` names; an empty context when it is missing or
/// malformed (a bad `traceparent` starts a new trace, it never fails a message).
pub fn context_of(traceparent: Option<&str>) -> Context {
    let Some(value) = traceparent else {
        return Context::new();
    };
    let carrier = HashMap::from([(TRACEPARENT.to_string(), value.to_string())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// The span a `traceparent` names, for a link (a request that acts on what another
/// trace made); `None` when it is missing or malformed.
pub fn span_context_of(traceparent: Option<&str>) -> Option<SpanContext> {
    let cx = context_of(traceparent);
    let span = cx.span().span_context().clone();
    span.is_valid().then_some(span)
}

/// Makes `span` a child of the remote span `traceparent` names (when it names one), and
/// returns it. A disabled span is returned as it is, at no cost.
pub fn continuing(span: Span, traceparent: Option<&str>) -> Span {
    if !span.is_disabled() && traceparent.is_some() {
        // Fails only when the span is already closed, which a new span never is.
        let _ = span.set_parent(context_of(traceparent));
    }
    span
}

/// `span`, linked to every span the `traceparents` name (a batch that acts for many
/// traces at once). A disabled span is returned as it is, at no cost.
pub fn linking<'a>(span: Span, traceparents: impl IntoIterator<Item = Option<&'a str>>) -> Span {
    if !span.is_disabled() {
        for linked in traceparents.into_iter().filter_map(span_context_of) {
            span.add_link(linked);
        }
    }
    span
}

/// Adds a link from the current span to the span `traceparent` names (for example a
/// payment request to the trace of the hold it pays), unless both are in one trace
/// already.
pub fn link_current_to(traceparent: Option<&str>) {
    let span = Span::current();
    if span.is_disabled() {
        return;
    }
    if let Some(linked) = span_context_of(traceparent) {
        let ours = span.context().span().span_context().trace_id();
        if linked.trace_id() != ours {
            span.add_link(linked);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_through_a_context() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(traceparent_of(&context_of(Some(tp))).as_deref(), Some(tp));
    }

    #[test]
    fn junk_and_nothing_name_no_span() {
        assert!(span_context_of(None).is_none());
        assert!(span_context_of(Some("not a traceparent")).is_none());
        assert!(traceparent_of(&context_of(Some("00-zz-zz-01"))).is_none());
    }

    #[test]
    fn without_an_exporter_nothing_is_written() {
        // No subscriber here: every span is disabled.
        let span = tracing::info_span!(target: TARGET, "hold");
        let _entered = span.enter();
        assert_eq!(current_traceparent(), None);
    }
}
