//! Per-agent policy and the admission gate against a real node: rate
//! (429 with a retry_after that matches the agent's quota), concurrency cap
//! counted from persisted job state, replay of a verified message, revoked
//! and rotated keys, allowed operations, image cap, priority lane, the
//! pre-auth limit per subject token; and the `orfeas agents` commands.
//! Every refused submission leaves no job record.

mod common;

use std::time::Duration;

use common::{NatsServer, NodeOptions, NodeProcess};
use futures::StreamExt;
use orfeas_actors::{
    bus::Bus,
    gate::ActiveJobs,
    jobs::{JobRecord, JobState, JobStore},
    registry::{PolicyUpdate, Registry},
};
use orfeas_wire::{
    client::AgentClient,
    subjects,
    v1::{EventKind, Failure, Lane, SubmitJob, MAX_LIFETIME_S},
    ErrorCode, SecretKey,
};

const WAIT: Duration = Duration::from_secs(60);
/// The node's pre-auth rate per subject token in these tests (every
/// well-behaved agent here sends fewer messages than this).
const PREAUTH_PER_MINUTE: u64 = 12;

fn now_s() -> u64 {
    orfeas_actors::now_ms() / 1000
}

fn job() -> SubmitJob {
    let mut job = common::example_job("mug.png", vec![]);
    job.model = "null".into();
    job
}

struct Deployment {
    _store: tempfile::TempDir,
    _nats: NatsServer,
    _node: NodeProcess,
    url: String,
    bus: Bus,
    registry: Registry,
    jobs: JobStore,
}

async fn deployment() -> Deployment {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let env = vec![
        ("ORFEAS_MODELS_ENABLED", "null".to_string()),
        // Admitted jobs stay unfinished for the whole test.
        ("ORFEAS_NODE_SIMULATED_LATENCY_MS", "120000".to_string()),
        ("ORFEAS_INGRESS_PREAUTH_PER_MINUTE", PREAUTH_PER_MINUTE.to_string()),
    ];
    let node = NodeProcess::start(&nats, NodeOptions { node_id: "n1", store: store.path(), env }).await;
    let client = orfeas_actors::bus::connect(&nats.url, "orfeas-test").await.unwrap();
    let bus = Bus::attach(client).await.unwrap();
    let registry = Registry::new(bus.agents.clone(), bus.nodes.clone());
    let jobs = JobStore::new(bus.jobs.clone());
    Deployment { _store: store, url: nats.url.clone(), _nats: nats, _node: node, bus, registry, jobs }
}

impl Deployment {
    async fn agent(&self, name: &str, policy: PolicyUpdate) -> (AgentClient, SecretKey) {
        let key = SecretKey::generate();
        self.registry.add_agent(name, &key.public().to_hex(), &policy).await.unwrap();
        let client = orfeas_actors::bus::connect(&self.url, name).await.unwrap();
        (AgentClient::new(client, name, key.clone(), "orfeas"), key)
    }
}

/// `Ok(())` for `accepted`, the failure for `rejected`.
async fn first_answer(client: &mut AgentClient, events: &mut orfeas_wire::client::JobEvents) -> Result<(), Failure> {
    loop {
        let event = client.next_event(events, WAIT).await.expect("a verified event");
        match event.kind {
            EventKind::Accepted { .. } => return Ok(()),
            EventKind::Rejected(f) => return Err(f),
            EventKind::Failed(f) => panic!("job failed: {f:?}"),
            _ => {}
        }
    }
}

async fn submit(client: &mut AgentClient, job: &SubmitJob) -> Result<(), Failure> {
    let mut events = client.submit(job).await.unwrap();
    first_answer(client, &mut events).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_limits_keys_operations_lanes_and_replays_against_a_node() {
    let d = deployment().await;

    // Rate: 3 per minute, burst 3 → the 4th and 5th are refused with a wait
    // of at most one emission interval (20 s), nothing recorded for them.
    let (mut rater, _) = d.agent("rater", PolicyUpdate { requests_per_minute: Some(3), ..Default::default() }).await;
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let job = job();
        outcomes.push((job.job_id, submit(&mut rater, &job).await));
    }
    assert!(outcomes[..3].iter().all(|(_, o)| o.is_ok()), "{outcomes:?}");
    for (job_id, outcome) in &outcomes[3..] {
        let f = outcome.as_ref().unwrap_err();
        assert_eq!((f.code, f.status, f.retryable), (ErrorCode::RateLimited, 429, true), "{f:?}");
        let wait = f.retry_after_ms.expect("429 carries retry_after_ms");
        assert!(wait > 0 && wait <= 20_000, "retry_after_ms {wait} within one interval of 20 s");
        assert_eq!(f.job_id, Some(*job_id));
        assert!(d.jobs.get("rater", job_id).await.unwrap().is_none(), "a refused job has no record");
    }

    // Concurrency cap 1: the first job holds the slot (the device is slow),
    // the second is refused; the slots live in KV.
    let (mut capped, _) = d.agent("capped", PolicyUpdate { max_concurrent: Some(1), ..Default::default() }).await;
    let first = job();
    submit(&mut capped, &first).await.expect("first job accepted");
    let second = job();
    let f = submit(&mut capped, &second).await.unwrap_err();
    assert_eq!((f.code, f.status), (ErrorCode::ConcurrencyLimit, 429), "{f:?}");
    assert!(f.retry_after_ms.is_some());
    assert!(d.jobs.get("capped", &second.job_id).await.unwrap().is_none());
    let active: ActiveJobs = orfeas_actors::gate::active_jobs(&d.bus.active, "capped").await.unwrap();
    assert_eq!(active.jobs.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![first.job_id]);
    // Counted from persisted state: once the record says finished, the slot
    // is free again (whoever finished it never touched the slot list).
    let (mut record, revision): (JobRecord, u64) = d.jobs.get("capped", &first.job_id).await.unwrap().unwrap();
    record.state = JobState::Completed;
    assert!(matches!(d.jobs.update(&record, revision).await.unwrap(), orfeas_actors::jobs::Updated::Ok(_)));
    let third = job();
    submit(&mut capped, &third).await.expect("a finished job frees its slot");

    // Replay: the same signed bytes published again (a new stream message,
    // not a publish retry) are refused, and there is still one job.
    let (mut replayer, key) = d.agent("replayer", PolicyUpdate::default()).await;
    let original = job();
    let (subject, bytes) = original.seal("replayer", &key, "orfeas", now_s(), MAX_LIFETIME_S / 2);
    let raw = async_nats::connect(&d.url).await.unwrap();
    let events_subject = subjects::events("replayer", &original.job_id);
    let mut events = raw.subscribe(events_subject.clone()).await.unwrap();
    let js = async_nats::jetstream::new(raw.clone());
    let mut answers = Vec::new();
    for _ in 0..2 {
        js.publish(subject.clone(), bytes.clone().into()).await.unwrap().await.unwrap();
        loop {
            let message = tokio::time::timeout(WAIT, events.next()).await.unwrap().unwrap();
            let event = replayer.verify_event(&events_subject, &message.payload).await.unwrap();
            match event.kind {
                EventKind::Accepted { .. } => break answers.push(None),
                EventKind::Rejected(f) => break answers.push(Some(f.code)),
                _ => {}
            }
        }
    }
    assert_eq!(answers, vec![None, Some(ErrorCode::Replayed)]);
    assert!(d.jobs.get("replayer", &original.job_id).await.unwrap().is_some());

    // Revocation is absolute; rotation ends the old key after the overlap.
    let (mut revoked, key) = d.agent("revoked", PolicyUpdate::default()).await;
    d.registry.revoke("revoked", Some(&key.public().id().0)).await.unwrap();
    let f = submit(&mut revoked, &job()).await.unwrap_err();
    assert_eq!((f.code, f.status), (ErrorCode::RevokedKey, 401), "{f:?}");
    let (mut rotor, _) = d.agent("rotor", PolicyUpdate::default()).await;
    let new_key = SecretKey::generate();
    d.registry.rotate("rotor", &new_key.public().to_hex(), 0).await.unwrap();
    let f = submit(&mut rotor, &job()).await.unwrap_err();
    assert_eq!(f.code, ErrorCode::UnknownKey, "the old key expired with the overlap: {f:?}");
    let mut rotated = AgentClient::new(orfeas_actors::bus::connect(&d.url, "rotor2").await.unwrap(), "rotor", new_key, "orfeas");
    submit(&mut rotated, &job()).await.expect("the new key verifies");

    // Operations, image cap, lane.
    let (mut reader, _) = d.agent("reader", PolicyUpdate { operations: Some(vec!["status".into()]), ..Default::default() }).await;
    let f = submit(&mut reader, &job()).await.unwrap_err();
    assert_eq!((f.code, f.status), (ErrorCode::Forbidden, 403), "{f:?}");
    let (mut small, _) = d.agent("small", PolicyUpdate { max_image_bytes: Some(100), ..Default::default() }).await;
    let f = submit(&mut small, &job()).await.unwrap_err();
    assert_eq!((f.code, f.status), (ErrorCode::TooLarge, 413), "{f:?}");
    let (mut slow, _) = d.agent("slow", PolicyUpdate { lane: Some(Lane::Low), ..Default::default() }).await;
    let low = job();
    submit(&mut slow, &low).await.unwrap();
    let (record, _) = d.jobs.get("slow", &low.job_id).await.unwrap().unwrap();
    assert_eq!(record.lane, Lane::Low);
    let (mut fast, _) = d.agent("fast", PolicyUpdate { lane: Some(Lane::High), ..Default::default() }).await;
    let mut demoted = job();
    demoted.params.priority = Some(Lane::Normal);
    submit(&mut fast, &demoted).await.unwrap();
    assert_eq!(d.jobs.get("fast", &demoted.job_id).await.unwrap().unwrap().0.lane, Lane::Normal, "a job may ask for a lower lane");
    let mut promoted = job();
    promoted.params.priority = Some(Lane::High);
    submit(&mut slow, &promoted).await.unwrap();
    assert_eq!(d.jobs.get("slow", &promoted.job_id).await.unwrap().unwrap().0.lane, Lane::Low, "never a higher one");

    // Pre-auth: PREAUTH_PER_MINUTE per subject token (burst the same),
    // checked before any key lookup. Past the burst, one more message gets
    // through per emission interval that passed while the flood was read.
    let mallory = SecretKey::generate();
    let client = async_nats::connect(&d.url).await.unwrap();
    let mut events = client.subscribe("orfeas.events.mallory.>").await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let flood = PREAUTH_PER_MINUTE + 8;
    let started = std::time::Instant::now();
    for _ in 0..flood {
        let (subject, bytes) = job().seal("mallory", &mallory, "orfeas", now_s(), 60);
        js.publish(subject, bytes.into()).await.unwrap().await.unwrap();
    }
    let (mut looked_up, mut limited) = (0, 0);
    let mut verifier = AgentClient::new(client.clone(), "mallory", mallory.clone(), "orfeas");
    for _ in 0..flood {
        let message = tokio::time::timeout(WAIT, events.next()).await.unwrap().unwrap();
        let event = verifier.verify_event(&message.subject, &message.payload).await.unwrap();
        let EventKind::Rejected(f) = event.kind else { panic!("{event:?}") };
        match f.code {
            ErrorCode::UnknownKey => looked_up += 1,
            ErrorCode::RateLimited => {
                limited += 1;
                assert!(f.retry_after_ms.is_some_and(|ms| ms > 0 && ms <= 60_000 / PREAUTH_PER_MINUTE), "{f:?}");
            }
            other => panic!("unexpected {other}: {f:?}"),
        }
    }
    let refills = started.elapsed().as_secs() / (60 / PREAUTH_PER_MINUTE);
    assert!(looked_up >= PREAUTH_PER_MINUTE && looked_up <= PREAUTH_PER_MINUTE + refills, "{looked_up} looked up, {limited} limited in {:?}", started.elapsed());
    assert_eq!(looked_up + limited, flood);

    // The well-behaved agent is still served.
    let (mut good, _) = d.agent("good", PolicyUpdate::default()).await;
    submit(&mut good, &job()).await.unwrap();
}

#[test]
fn policy_agents_cli_adds_shows_rotates_and_revokes() {
    let nats = NatsServer::start();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::orfeas_bin()).arg("agents").args(args).args(["--nats", &nats.url]).output().unwrap();
        assert!(out.status.success(), "orfeas agents {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let first = SecretKey::generate().public().to_hex();
    let second = SecretKey::generate().public().to_hex();
    run(&["add", "dave", "--pubkey", &first, "--rpm", "10", "--max-concurrent", "2", "--lane", "low", "--ops", "submit,status", "--max-image-bytes", "5000"]);
    let shown: serde_json::Value = serde_json::from_str(&run(&["show", "dave", "--json"])).unwrap();
    assert_eq!(shown["requests_per_minute"], 10);
    assert_eq!(shown["max_concurrent"], 2);
    assert_eq!(shown["lane"], "low");
    assert_eq!(shown["max_image_bytes"], 5000);
    assert_eq!(shown["operations"], serde_json::json!(["status", "submit"]));
    run(&["rotate", "dave", "--pubkey", &second, "--overlap-s", "60"]);
    let shown: serde_json::Value = serde_json::from_str(&run(&["show", "dave", "--json"])).unwrap();
    let keys = shown["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys[0]["not_after_ms"].as_u64().is_some(), "old key ends after the overlap");
    assert!(keys[1]["not_before_ms"].as_u64().is_some() && keys[1]["not_after_ms"].is_null());
    let old_kid = keys[0]["kid"].as_str().unwrap().to_string();
    run(&["revoke", "dave", "--kid", &old_kid]);
    let text = run(&["show", "dave"]);
    assert!(text.contains(&format!("key {old_kid} {first} (revoked")), "{text}");
    run(&["set", "dave", "--rpm", "0"]);
    let list = run(&["list"]);
    assert!(list.starts_with("dave\t2 key(s), 1 unrevoked\tlane low\trpm no limit"), "{list}");
    // A weak key and an unknown operation are refused.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    for args in [vec!["add", "eve", "--pubkey", &hex::encode(identity)], vec!["add", "eve", "--pubkey", &first, "--ops", "launch"]] {
        let out = std::process::Command::new(common::orfeas_bin()).arg("agents").args(&args).args(["--nats", &nats.url]).output().unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
    }
}
