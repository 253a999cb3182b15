//! Traces across hops: an agent's W3C `traceparent` travels with the job
//! through NATS (submission → queue → events), every hop opens one span in
//! that trace, and the spans reach an OTLP/HTTP collector (a minimal one in
//! this test, speaking the JSON encoding).

mod common;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{agent, eventually, NatsServer, NodeOptions, NodeProcess};
use futures::StreamExt;
use orfeas_wire::v1::Format;
use serde_json::Value;

/// Accepts OTLP/HTTP posts and keeps their JSON bodies.
struct Collector {
    port: u16,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Collector {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let kept = kept.clone();
                std::thread::spawn(move || serve(stream, kept));
            }
        });
        Self { port, bodies }
    }

    /// Spans of one trace, by name.
    fn spans(&self, trace_id: &str) -> HashMap<String, Value> {
        let mut found = HashMap::new();
        for body in self.bodies.lock().unwrap().iter() {
            for resource in body["resourceSpans"].as_array().into_iter().flatten() {
                for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                    for span in scope["spans"].as_array().into_iter().flatten() {
                        if span["traceId"].as_str() == Some(trace_id) {
                            found.insert(
                                span["name"].as_str().unwrap_or_default().to_string(),
                                span.clone(),
                            );
                        }
                    }
                }
            }
        }
        found
    }
}

/// HTTP/1.1 with keep-alive: read requests until the client hangs up.
fn serve(stream: std::net::TcpStream, kept: Arc<Mutex<Vec<Value>>>) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if request_line.starts_with("POST /v1/traces") {
            if let Ok(json) = serde_json::from_slice::<Value>(&body) {
                kept.lock().unwrap().push(json);
            }
        }
        let reply =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_one_trace_from_the_agent_through_every_hop_and_exported() {
    let collector = Collector::start();
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", collector.port),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    let _node = NodeProcess::start(
        &nats,
        NodeOptions {
            node_id: "traced",
            store: store.path(),
            env,
        },
    )
    .await;

    let watcher = async_nats::connect(&nats.url).await.unwrap();
    let mut raw_events = watcher.subscribe("orfeas.events.tia.>").await.unwrap();
    watcher.flush().await.unwrap();

    let (client, _) = agent(&nats.url, "tia").await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let agent_span = "00f067aa0ba902b7";
    let mut job = common::example_job("star.png", vec![Format::Glb]);
    job.params.previews = Some(false);
    client
        .submit_traced(&job, &format!("00-{trace_id}-{agent_span}-01"))
        .await
        .unwrap();

    // Every event of the job names the same trace.
    let mut kinds = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(120), raw_events.next())
            .await
            .expect("events")
            .unwrap();
        let headers = message.headers.expect("events carry headers");
        let kind = headers
            .get("Orfeas-Event")
            .expect("event kind header")
            .as_str()
            .to_string();
        let traceparent = headers
            .get("traceparent")
            .unwrap_or_else(|| panic!("{kind} event without traceparent"))
            .as_str()
            .to_string();
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!(
            parts[1], trace_id,
            "{kind} event left the trace: {traceparent}"
        );
        assert_ne!(parts[2], "0000000000000000");
        assert!(
            kind != "failed" && kind != "rejected",
            "job did not complete: {kind}"
        );
        kinds.push(kind.clone());
        if kind == "completed" {
            break;
        }
    }
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("accepted"),
        "{kinds:?}"
    );

    // Every hop's span reached the collector, in the agent's trace.
    let hops = [
        "job.admit",
        "job.schedule",
        "job.inference",
        "job.postprocess",
        "job.finish",
    ];
    let spans = eventually(
        "all hop spans to be exported",
        Duration::from_secs(30),
        || async {
            let spans = collector.spans(trace_id);
            hops.iter().all(|h| spans.contains_key(*h)).then_some(spans)
        },
    )
    .await;
    let admit = &spans["job.admit"];
    assert_eq!(
        admit["parentSpanId"].as_str(),
        Some(agent_span),
        "admission is a child of the agent's span: {admit}"
    );
    let admit_id = admit["spanId"].as_str().unwrap();
    // The queue message carried the admission span's id to the scheduler.
    for hop in &hops[1..] {
        assert_eq!(
            spans[*hop]["parentSpanId"].as_str(),
            Some(admit_id),
            "{hop} joins under job.admit: {}",
            spans[*hop]
        );
    }
    for hop in hops {
        let job_attr = spans[hop]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == "job_id")
            .and_then(|a| a["value"]["stringValue"].as_str().map(str::to_string));
        assert_eq!(
            job_attr.as_deref(),
            Some(job.job_id.to_string().as_str()),
            "{hop}"
        );
    }
}
