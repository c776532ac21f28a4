//! [`OtlpReceiver`]: an OTLP/HTTP trace receiver of a test's own, in the test process:
//! it accepts what the SDK's exporter sends with `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`
//! on `POST /v1/traces` and keeps every span for the test to read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use serde_json::Value;

/// One span as it was received.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// The trace ids its links point to.
    pub linked_traces: Vec<String>,
    /// String and integer attributes, as text.
    pub attributes: HashMap<String, String>,
    /// The service name of the resource that sent it.
    pub service: String,
}

type Received = Arc<Mutex<Vec<ReceivedSpan>>>;

pub struct OtlpReceiver {
    pub port: u16,
    received: Received,
    server: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        let received = Received::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(received.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            port,
            received,
            server,
        }
    }

    /// The value of `OTEL_EXPORTER_OTLP_ENDPOINT` that sends here.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.lock().unwrap().clone()
    }

    /// The spans received so far in trace `trace_id`.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(State(received): State<Received>, body: axum::body::Bytes) -> &'static str {
    let export: Value = serde_json::from_slice(&body).expect("an OTLP/JSON export request");
    let mut spans = vec![];
    for resource in export["resourceSpans"].as_array().into_iter().flatten() {
        let resource_attributes = attributes(&resource["resource"]["attributes"]);
        let service = resource_attributes
            .get("service.name")
            .cloned()
            .unwrap_or_default();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let text = |key: &str| span[key].as_str().unwrap_or_default().to_string();
                spans.push(ReceivedSpan {
                    name: text("name"),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                    linked_traces: span["links"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|l| l["traceId"].as_str().map(str::to_string))
                        .collect(),
                    attributes: attributes(&span["attributes"]),
                    service: service.clone(),
                });
            }
        }
    }
    received.lock().unwrap().extend(spans);
    "{}"
}

/// OTLP/JSON key-value attributes as text.
fn attributes(list: &Value) -> HashMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let value = &kv["value"];
            let text = value["stringValue"].as_str().map(str::to_string).or_else(
                || match &value["intValue"] {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                },
            )?;
            Some((kv["key"].as_str()?.to_string(), text))
        })
        .collect()
}
