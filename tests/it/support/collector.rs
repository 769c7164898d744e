//! An OTLP/HTTP collector stand-in: a loopback hyper server (a
//! [`TestUpstream`]) that takes `POST /v1/traces` in protobuf, decodes each
//! export with OpenTelemetry's own message types and keeps every span with
//! the `service.name` of its resource.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use super::upstream::{RecordedRequest, Reply, TestUpstream};

/// A span as the collector received it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The `service.name` of the resource it came with.
    pub service: String,
    /// The span itself.
    pub span: Span,
}

impl ReceivedSpan {
    /// The span's name.
    pub fn name(&self) -> &str {
        &self.span.name
    }

    /// The trace id, in the hex of a `traceparent`.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// The span id, in hex.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// The parent's span id in hex; empty for a root span.
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// Attribute `key` as text (strings as they are, numbers written out).
    pub fn attribute(&self, key: &str) -> Option<String> {
        text(&self.span.attributes, key)
    }
}

/// The stand-in collector.
pub struct Collector {
    server: TestUpstream,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    refused: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    /// Starts it on `127.0.0.1:0`.
    pub async fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let (kept, why) = (Arc::clone(&spans), Arc::clone(&refused));
        let server = TestUpstream::start(move |request: RecordedRequest| {
            let answer = receive(&request, &kept);
            if let Err(reason) = &answer {
                why.lock().expect("lock").push(reason.clone());
            }
            async move {
                match answer {
                    // An empty ExportTraceServiceResponse: all taken.
                    Ok(()) => Reply::ok().header("content-type", "application/x-protobuf"),
                    Err(_) => Reply::status(400),
                }
            }
        })
        .await;
        Self {
            server,
            spans,
            refused,
        }
    }

    /// `http://127.0.0.1:<port>`, for `tracing.otlp_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.server.authority())
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("lock").clone()
    }

    /// Why exports were refused (wrong path, method or body); empty when
    /// every export was well formed.
    pub fn refused(&self) -> Vec<String> {
        self.refused.lock().expect("lock").clone()
    }
}

fn receive(request: &RecordedRequest, kept: &Mutex<Vec<ReceivedSpan>>) -> Result<(), String> {
    if request.method != http::Method::POST || request.uri.path() != "/v1/traces" {
        return Err(format!("{} {}", request.method, request.uri));
    }
    if request.header("content-type") != Some("application/x-protobuf") {
        return Err(format!("content-type {:?}", request.header("content-type")));
    }
    let export = ExportTraceServiceRequest::decode(request.body.clone())
        .map_err(|e| format!("not an ExportTraceServiceRequest: {e}"))?;
    let mut kept = kept.lock().expect("lock");
    for resource_spans in export.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| text(&r.attributes, "service.name"))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                kept.push(ReceivedSpan {
                    service: service.clone(),
                    span,
                });
            }
        }
    }
    Ok(())
}

fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()
        .and_then(|v: &AnyValue| v.value.as_ref())?;
    Some(match value {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(n) => n.to_string(),
        any_value::Value::BoolValue(b) => b.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
