//! W3C trace context for jobs: the `traceparent` header travels with every
//! NATS message of a job (submission → queue → events), so one job's spans
//! join into one trace even when different nodes admit and run it.
//!
//! Each hop opens one span ([`hop`]) carrying `trace_id` and `job_id` as
//! fields, so JSON logs join by trace id without any exporter. When OTLP
//! export is on (`tracing-opentelemetry` layer installed by the binary) the
//! span is also parented on the remote context and exported.

use async_nats::HeaderMap;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

/// Header name, as in the W3C Trace Context recommendation.
pub const TRACEPARENT: &str = "traceparent";

/// A parsed `traceparent`: version 00, trace id, parent span id, flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// 16-byte trace id (never all zero).
    pub trace_id: [u8; 16],
    /// 8-byte id of the span that sent the message (never all zero).
    pub parent_id: [u8; 8],
    /// Trace flags; bit 0 = sampled.
    pub flags: u8,
}

impl TraceParent {
    /// Parse `00-<32 hex>-<16 hex>-<2 hex>`; anything else is ignored (a
    /// malformed header must not fail a job — the job starts a new trace).
    pub fn parse(header: &str) -> Option<Self> {
        let parts: Vec<&str> = header.trim().split('-').collect();
        let [version, trace, parent, flags] = parts[..] else {
            return None;
        };
        // Version ff is forbidden; future versions may append fields, which
        // the four-part split above already refuses for 00.
        if version.len() != 2 || version == "ff" || !is_lower_hex(version) {
            return None;
        }
        if trace.len() != 32 || parent.len() != 16 || flags.len() != 2 {
            return None;
        }
        if !is_lower_hex(trace) || !is_lower_hex(parent) || !is_lower_hex(flags) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(parent, &mut parent_id).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// A new sampled trace (for messages that arrive without context).
    pub fn new_root() -> Self {
        Self {
            trace_id: *Uuid::new_v4().as_bytes(),
            parent_id: random_span_id(),
            flags: 1,
        }
    }

    /// The context read from a message's headers, or a new root.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Self {
        headers
            .and_then(|h| h.get(TRACEPARENT))
            .and_then(|v| Self::parse(v.as_str()))
            .unwrap_or_else(Self::new_root)
    }

    /// The same trace, sent by span `span_id`.
    pub fn with_parent(self, span_id: [u8; 8]) -> Self {
        Self {
            parent_id: span_id,
            ..self
        }
    }

    /// Trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The header value.
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.parent_id),
            self.flags
        )
    }

    /// Add the header to an outgoing message.
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT, self.header().as_str());
    }

    fn remote_context(&self) -> opentelemetry::Context {
        let context = SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.parent_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::default(),
        );
        opentelemetry::Context::new().with_remote_span_context(context)
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn random_span_id() -> [u8; 8] {
    let bytes = Uuid::new_v4().into_bytes();
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[..8]);
    id
}

/// One job hop: a span named `job.<hop>` in the job's trace.
pub fn hop(hop: &'static str, trace: &TraceParent, job_id: &Uuid, agent: &str) -> tracing::Span {
    let span = hop_unknown_job(hop, trace, agent);
    span.record("job_id", tracing::field::display(job_id));
    span
}

/// A hop before the job id is known (admission): record it with
/// `span.record("job_id", ..)` once verified.
pub fn hop_unknown_job(hop: &'static str, trace: &TraceParent, agent: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "job",
        hop,
        job_id = tracing::field::Empty,
        agent,
        trace_id = %trace.trace_id_hex(),
        otel.name = hop_name(hop)
    );
    // Without an OpenTelemetry layer this is a no-op by design.
    let _ = span.set_parent(trace.remote_context());
    span
}

/// The context to send onward from inside `span`: the span's own id when
/// it is exported (so the next hop is its child), otherwise a fresh id in
/// the same trace.
pub fn onward(span: &tracing::Span, trace: &TraceParent) -> TraceParent {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() && span_context.trace_id().to_bytes() == trace.trace_id {
        trace.with_parent(span_context.span_id().to_bytes())
    } else {
        trace.with_parent(random_span_id())
    }
}

fn hop_name(hop: &'static str) -> &'static str {
    match hop {
        "admit" => "job.admit",
        "schedule" => "job.schedule",
        "inference" => "job.inference",
        "postprocess" => "job.postprocess",
        "finish" => "job.finish",
        _ => "job.hop",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_the_recommendation_example() {
        let tp = TraceParent::parse(SAMPLE).unwrap();
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.flags, 1);
        assert_eq!(tp.header(), SAMPLE);
    }

    #[test]
    fn refuses_malformed_headers() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn headers_round_trip_and_missing_context_starts_a_trace() {
        let tp = TraceParent::parse(SAMPLE).unwrap();
        let mut headers = HeaderMap::new();
        tp.inject(&mut headers);
        assert_eq!(TraceParent::from_headers(Some(&headers)), tp);
        let fresh = TraceParent::from_headers(None);
        assert_ne!(fresh.trace_id, [0; 16]);
        assert_ne!(fresh.trace_id, tp.trace_id);
        assert!(TraceParent::parse(&fresh.header()).is_some());
    }

    #[test]
    fn onward_keeps_the_trace_and_changes_the_parent() {
        let tp = TraceParent::parse(SAMPLE).unwrap();
        let span = hop("admit", &tp, &Uuid::nil(), "a");
        let next = onward(&span, &tp);
        assert_eq!(next.trace_id, tp.trace_id);
        assert_ne!(next.parent_id, tp.parent_id);
    }
}
