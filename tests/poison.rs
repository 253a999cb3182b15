//! Fault test (e): a job that brings its device down every time it runs.
//!
//! The `fault` test model raises, for an item with `fault = 2`, what a CUDA
//! illegal memory access says: the device is unusable afterwards, so the
//! GpuWorker ends and its supervisor restarts it with a fresh context; the
//! Scheduler hands the lost batch back to JetStream. The same interface a
//! GPU presents, on the CPU. Each redelivery of the poison job brings the
//! device down again until it runs out of deliveries and is dead-lettered;
//! its batch mates, retried alone, complete. Checked with the fault tests'
//! ledger: lost 0, unexpected 0, duplicates 0.
//!
//! `cargo test --release --test poison -- --nocapture`

mod common;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use common::{agent, cluster::stored_events, http_get, metric, NatsServer, NodeOptions, NodeProcess};
use orfeas_wire::{
    v1::{Event, EventKind, Format, ImageInput, JobParams, SubmitJob},
    ErrorCode,
};
use uuid::Uuid;

fn job(fault: f64) -> SubmitJob {
    SubmitJob {
        job_id: Uuid::now_v7(),
        model: "fault".into(),
        image: ImageInput::Inline { media_type: "image/png".into(), data: common::example("mug.png") },
        formats: vec![Format::Stl],
        params: JobParams { model_params: BTreeMap::from([("fault".to_string(), fault)]), previews: Some(false), ..Default::default() },
    }
}

/// Every stored event of `agent`'s jobs once each accepted job has one answer.
async fn settled(js: &async_nats::jetstream::Context, agent: &str, attempted: &HashSet<Uuid>, timeout: Duration) -> Result<(common::ledger::Ledger, HashMap<Uuid, Vec<Event>>), String> {
    let started = Instant::now();
    loop {
        let events: HashMap<Uuid, Vec<Event>> =
            stored_events(js, agent).await.unwrap_or_default().into_iter().map(|(id, l)| (id, l.into_iter().map(|(e, _)| e).collect())).collect();
        let ledger = common::ledger::Ledger::of(attempted, &events);
        if ledger.lost.is_empty() && ledger.accepted == attempted.len() {
            return Ok((ledger, events));
        }
        if started.elapsed() > timeout {
            return Err(format!("not settled after {timeout:?}: {}", ledger.line()));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_job_that_crashes_its_worker_every_time_is_dead_lettered_and_others_complete() {
    const MAX_DELIVER: u64 = 3;
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(
        &nats,
        NodeOptions {
            node_id: "poison",
            store: store.path(),
            env: vec![
                ("ORFEAS_MODELS_DIR", common::repo().join("models/testing").display().to_string()),
                ("ORFEAS_MODELS_ENABLED", "fault".into()),
                // The first batch holds the device, so the rest gather into batches with the poison job.
                ("ORFEAS_NODE_SIMULATED_LATENCY_MS", "300".into()),
                ("ORFEAS_SCHEDULER_MAX_BATCH", "4".into()),
                ("ORFEAS_SCHEDULER_MAX_DELIVER", MAX_DELIVER.to_string()),
            ],
        },
    )
    .await;
    let (client, _) = agent(&nats.url, "ivy").await;
    let mut attempted = HashSet::new();
    let mut poison = None;
    for i in 0..8 {
        let submit = job(if i == 2 { 2.0 } else { 0.0 });
        if i == 2 {
            poison = Some(submit.job_id);
        }
        attempted.insert(submit.job_id);
        client.submit(&submit).await.unwrap();
    }
    let poison = poison.unwrap();
    let js = async_nats::jetstream::new(orfeas_actors::bus::connect(&nats.url, "orfeas-test").await.unwrap());
    let (ledger, events) = match settled(&js, "ivy", &attempted, Duration::from_secs(120)).await {
        Ok(done) => done,
        Err(line) => panic!("{line}; node log:\n{}", node.log_text()),
    };
    println!("poison job: {}", ledger.line());
    assert!(ledger.lost.is_empty() && ledger.unexpected.is_empty() && ledger.duplicates.is_empty(), "{}", ledger.line());
    assert_eq!((ledger.accepted, ledger.terminal, ledger.completed), (8, 8, 7), "{}", ledger.line());
    for (job, list) in &events {
        let answer = list.iter().find(|e| e.kind.is_terminal()).expect("an answer");
        match (&answer.kind, *job == poison) {
            (EventKind::Failed(f), true) => {
                assert_eq!((f.code, f.job_id), (ErrorCode::DeadLettered, Some(poison)), "{f:?}");
            }
            (EventKind::Completed { mesh, .. }, false) => assert!(mesh.closed_manifold, "{mesh:?}"),
            (other, is_poison) => panic!("job {job} (poison: {is_poison}) ended with {other:?}"),
        }
    }
    // Every delivery of the poison job brought the device down, and the
    // node is serving again afterwards (its worker restarted, device warm).
    let text = common::eventually("the node ready again", Duration::from_secs(60), || async {
        let (status, _) = http_get(node.http_port, "/readyz");
        (status == 200).then(|| http_get(node.http_port, "/metrics").1)
    })
    .await;
    let lost = metric(&text, "orfeas_device_lost_total{device=\"cpu\",model=\"fault\"}");
    assert_eq!(lost as u64, MAX_DELIVER, "one device loss per delivery of the poison job");
    let follow_up = job(0.0);
    let mut events = client.submit(&follow_up).await.unwrap();
    let mut client = client;
    loop {
        match client.next_event(&mut events, Duration::from_secs(60)).await.expect("verified event").kind {
            EventKind::Completed { .. } => break,
            EventKind::Failed(f) | EventKind::Rejected(f) => panic!("a job after the poison one failed: {f:?}"),
            _ => {}
        }
    }
}
