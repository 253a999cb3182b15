//! Memory with a large backlog: a node holds only its credits of the jobs
//! waiting in `ORFEAS_QUEUE`, so its resident memory does not grow with the
//! number of jobs queued. Jobs are put straight onto the queue (a job record
//! plus an `AdmittedJob` with a 31 KB PNG, as Ingress writes them) before
//! the node starts; the node runs the `null` model with a simulated device
//! time, and its RSS is sampled while it works through the backlog.
//!
//! CI: 5,000 queued against 100 queued (each on a fresh server and node).
//! The long run (about 3 GB of queue on disk, several minutes):
//!
//! `ORFEAS_BACKLOG_JOBS=100000 cargo test --test backlog -- --nocapture`

mod common;

use std::time::Duration;

use async_nats::HeaderMap;
use common::{eventually, NatsServer, NodeOptions, NodeProcess};
use orfeas_actors::{
    bus::Bus,
    jobs::{JobRecord, JobState, JobStore},
    now_ms,
};
use orfeas_wire::{
    subjects,
    v1::{AdmittedJob, Format, ImageInput, JobParams, Lane},
};
use uuid::Uuid;

/// One test at a time: they share two cores with nodes and servers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Jobs enqueued at once (records and queue messages in flight).
const PIPELINE: usize = 256;

fn node_env() -> Vec<(&'static str, String)> {
    vec![
        ("ORFEAS_MODELS_ENABLED", "null".to_string()),
        ("ORFEAS_NODE_SIMULATED_LATENCY_MS", "300".to_string()),
        ("ORFEAS_SCHEDULER_MAX_BATCH", "2".to_string()),
    ]
}

async fn bus(nats: &NatsServer) -> Bus {
    Bus::attach(orfeas_actors::bus::connect(&nats.url, "orfeas-test").await.unwrap()).await.unwrap()
}

/// Queue `n` jobs of `agent` (record, then queue message), `PIPELINE` at a time.
async fn enqueue_many(bus: &Bus, agent: &str, n: usize) {
    let image = common::example("apple-512.png");
    let jobs = JobStore::new(bus.jobs.clone());
    let mut done = 0;
    while done < n {
        let chunk = PIPELINE.min(n - done);
        let puts = (0..chunk).map(|_| {
            let (image, jobs) = (image.clone(), jobs.clone());
            async move {
                let job_id = Uuid::now_v7();
                let record = JobRecord {
                    agent: agent.into(),
                    job_id,
                    model: "null".into(),
                    digest: "test".into(),
                    state: JobState::Admitted,
                    attempt: 0,
                    node: "test".into(),
                    updated_at_ms: now_ms(),
                    terminal: None,
                    terminal_seq: 0,
                    lane: Lane::Normal,
                    deadline_ms: None,
                    cancel_requested: false,
                    batch_id: None,
        request: None,
                };
                jobs.create(&record).await.unwrap();
                let job = AdmittedJob {
                    job_id,
                    agent: agent.into(),
                    model: "null".into(),
                    formats: vec![Format::Stl],
                    params: JobParams { previews: Some(false), ..Default::default() },
                    image: ImageInput::Inline { media_type: "image/png".into(), data: image },
                    admitted_at_ms: now_ms(),
                    lane: Lane::Normal,
                    batch_id: None,
                };
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("{agent}:{job_id}").as_str());
                bus.publish_acked(subjects::queue(Lane::Normal.as_str(), agent), headers, orfeas_wire::to_cbor(&job).into()).await.unwrap();
            }
        });
        futures::future::join_all(puts).await;
        done += chunk;
    }
}

/// Resident set size of process `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kb * 1024
}

async fn queued(bus: &Bus) -> u64 {
    bus.js.get_stream(subjects::QUEUE_STREAM).await.unwrap().info().await.unwrap().state.messages
}

/// Queue `n` jobs, start a node on them, let it finish `warmup` jobs, then
/// sample its RSS `samples` times; the largest sample, bytes.
async fn node_rss_with_backlog(n: usize, warmup: u64, samples: usize) -> u64 {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    // A node that made the streams, stopped again.
    let mut setup = NodeProcess::start(&nats, NodeOptions { node_id: "setup", store: store.path(), env: node_env() }).await;
    setup.terminate(Duration::from_secs(30));
    let bus = bus(&nats).await;
    let started = std::time::Instant::now();
    enqueue_many(&bus, "heavy", n).await;
    assert_eq!(queued(&bus).await, n as u64, "every job queued");
    println!("{n} jobs queued in {:.1} s", started.elapsed().as_secs_f64());
    let node = NodeProcess::start(&nats, NodeOptions { node_id: "worker", store: store.path(), env: node_env() }).await;
    eventually(&format!("{warmup} jobs done"), Duration::from_secs(120), || async { (queued(&bus).await + warmup <= n as u64).then_some(()) }).await;
    let mut peak = 0;
    for _ in 0..samples {
        peak = peak.max(rss(node.pid()));
        // Measurement spacing, not synchronisation.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left = queued(&bus).await;
    assert!(left >= n as u64 / 2 || n < 1_000, "the backlog was still there while sampling: {left} of {n}");
    println!("backlog {n}: node RSS peak {:.1} MiB over {samples} samples, {left} jobs still queued", peak as f64 / (1 << 20) as f64);
    drop(node);
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_node_memory_does_not_grow_with_the_jobs_waiting() {
    let _serial = SERIAL.lock().await;
    let large: usize = std::env::var("ORFEAS_BACKLOG_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    let small = node_rss_with_backlog(100, 10, 10).await;
    let big = node_rss_with_backlog(large, 10, 10).await;
    // Were the node to hold every waiting job (message plus decoded job,
    // 31 KB image each), 5,000 would add ~300 MB.
    let margin = 48 << 20;
    println!("RSS with 100 queued: {:.1} MiB; with {large} queued: {:.1} MiB", small as f64 / (1 << 20) as f64, big as f64 / (1 << 20) as f64);
    assert!(big <= small + margin, "RSS grew with the backlog: {} MiB with 100 queued, {} MiB with {large}", small >> 20, big >> 20);
}
