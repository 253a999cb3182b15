//! The pip-installed Python client (`clients/python`, package `orfeas`)
//! against a real node on a real nats-server: async and sync flavours,
//! verified events and replies, idempotent retries, by-reference uploads,
//! fetch with signed digests, cancel, stable error codes
//! (`tests/python/client_check.py`). The node's own records are then
//! compared with what Python saw.

mod common;

use std::process::Command;

use common::{agent, NatsServer, NodeOptions, NodeProcess};
use orfeas_actors::{
    bus::Bus,
    jobs::{JobRecord, JobState, JobStore},
};
use uuid::Uuid;

fn queued_record(job_id: Uuid) -> JobRecord {
    JobRecord {
        agent: "alice".into(),
        job_id,
        model: "null".into(),
        digest: "00".into(),
        state: JobState::Admitted,
        attempt: 0,
        node: "elsewhere".into(),
        updated_at_ms: orfeas_actors::now_ms(),
        terminal: None,
        terminal_seq: 0,
        lane: Default::default(),
        deadline_ms: None,
        cancel_requested: false,
        batch_id: None,
        request: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_submits_follows_fetches_and_cancels_against_a_real_node() {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let _node = NodeProcess::start(&nats, NodeOptions { node_id: "n1", store: store.path(), env: vec![("ORFEAS_MODELS_ENABLED", "null".into())] }).await;
    let (_alice, key) = agent(&nats.url, "alice").await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("alice.key");
    std::fs::write(&key_file, key.to_text()).unwrap();
    let client = orfeas_actors::bus::connect(&nats.url, "orfeas-test").await.unwrap();
    let jobs = JobStore::new(Bus::attach(client).await.unwrap().jobs.clone());
    let queued = Uuid::now_v7();
    jobs.create(&queued_record(queued)).await.unwrap();

    let python = std::env::var("ORFEAS_PYTHON").expect("ORFEAS_PYTHON is not set: run the tests through `deploy/setup.sh --test`");
    let out = Command::new(python)
        .env("PYTHONPATH", common::checkout_pythonpath())
        .arg(common::repo().join("tests/python/client_check.py"))
        .args([&nats.url, "alice"])
        .arg(&key_file)
        .arg(common::repo().join("examples/mug.png"))
        .arg(dir.path().join("out"))
        .arg(queued.to_string())
        // The node's results folder, to change a preview at rest.
        .arg(store.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "python client check failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();

    // The idempotency key names the same job id as in `orfeas mcp`
    // (UUIDv5 of `agent \0 key`), and the retry ran nothing again.
    let async_job: Uuid = seen["async_job"].as_str().unwrap().parse().unwrap();
    let ns = Uuid::parse_str("6f726665-6173-4d43-5000-000000000001").unwrap();
    assert_eq!(async_job, Uuid::new_v5(&ns, b"alice\0py-mug-1"));
    let (record, _) = jobs.get("alice", &async_job).await.unwrap().unwrap();
    assert_eq!((record.state, record.attempt), (JobState::Completed, 1), "{record:?}");
    assert_eq!(serde_json::to_value(record.lane).unwrap(), seen["async_lane"], "the priority asked for is the lane it ran in");
    assert_eq!(seen["async_lane"], "low");
    let sync_job: Uuid = seen["sync_job"].as_str().unwrap().parse().unwrap();
    assert_eq!(jobs.get("alice", &sync_job).await.unwrap().unwrap().0.state, JobState::Completed);
    assert_eq!(jobs.get("alice", &queued).await.unwrap().unwrap().0.state, JobState::Canceled);
    // Files written where asked, under their stored names.
    for name in seen["fetched"].as_array().unwrap() {
        assert!(dir.path().join("out/async").join(name.as_str().unwrap()).is_file(), "{name} written");
    }
    assert!(seen["fetched"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().ends_with(".stl")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_cancels_a_job_the_node_is_running_async_and_sync() {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    // Each forward pass takes 4 s: the job is on the device when canceled.
    let env = vec![("ORFEAS_MODELS_ENABLED", "null".into()), ("ORFEAS_NODE_SIMULATED_LATENCY_MS", "4000".into())];
    let _node = NodeProcess::start(&nats, NodeOptions { node_id: "n1", store: store.path(), env }).await;
    let (_alice, key) = agent(&nats.url, "alice").await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("alice.key");
    std::fs::write(&key_file, key.to_text()).unwrap();
    let python = std::env::var("ORFEAS_PYTHON").expect("ORFEAS_PYTHON is not set: run the tests through `deploy/setup.sh --test`");
    let out = Command::new(python)
        .env("PYTHONPATH", common::checkout_pythonpath())
        .arg(common::repo().join("tests/python/cancel_check.py"))
        .args(["client", &nats.url, "alice"])
        .arg(&key_file)
        .arg(common::repo().join("examples/mug.png"))
        .output()
        .unwrap();
    assert!(out.status.success(), "python cancel check failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();

    let client = orfeas_actors::bus::connect(&nats.url, "orfeas-test").await.unwrap();
    let jobs = JobStore::new(Bus::attach(client.clone()).await.unwrap().jobs.clone());
    let js = async_nats::jetstream::new(client);
    common::eventually("the queue drains", std::time::Duration::from_secs(120), || async {
        let mut stream = js.get_stream("ORFEAS_QUEUE").await.ok()?;
        (stream.info().await.ok()?.state.messages == 0).then_some(())
    })
    .await;
    let events = common::cluster::stored_events(&js, "alice").await.expect("the events stream reads");
    for flavour in ["async", "sync"] {
        let job: Uuid = seen[flavour].as_str().unwrap().parse().unwrap();
        let (record, _) = jobs.get("alice", &job).await.unwrap().unwrap();
        assert_eq!((record.state, record.attempt), (JobState::Canceled, 1), "{flavour}: {record:?}");
        let terminal: Vec<_> = events[&job].iter().filter(|(e, _)| e.kind.is_terminal()).map(|(e, _)| &e.kind).collect();
        assert_eq!(terminal.len(), 1, "{flavour}: exactly one terminal event: {terminal:?}");
        assert!(matches!(terminal[0], orfeas_wire::v1::EventKind::Failed(f) if f.code.to_string() == "canceled"), "{flavour}: {terminal:?}");
    }
}
