//! Status and cancel against a real node, from the Rust client and from a
//! Python client written from md/protocol.md alone (cbor2 + PyNaCl +
//! nats-py): submit, follow verified events, status, cancel of a queued, a
//! running and a finished job.

mod common;

use std::{process::Command, time::Duration};

use common::{agent, NatsServer, NodeOptions, NodeProcess};
use futures::StreamExt;
use orfeas_actors::{
    bus::Bus,
    jobs::{JobRecord, JobState, JobStore},
    registry::{PolicyUpdate, Registry},
};
use orfeas_wire::{
    client::{AgentClient, ClientError},
    subjects,
    v1::EventKind,
    ErrorCode, SecretKey,
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

fn record(agent: &str, state: JobState) -> JobRecord {
    JobRecord {
        agent: agent.into(),
        job_id: Uuid::now_v7(),
        model: "null".into(),
        digest: "00".into(),
        state,
        attempt: u64::from(state == JobState::Running),
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

fn refused(result: Result<orfeas_wire::v1::JobStatus, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Refused(f)) => f.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn python(args: &[&str]) -> (bool, Vec<serde_json::Value>) {
    let python = std::env::var("ORFEAS_PYTHON").expect("ORFEAS_PYTHON is not set: run the tests through `deploy/setup.sh --test`");
    let out = Command::new(python).arg(common::repo().join("examples/python/orfeas_client.py")).args(args).output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect();
    if out.status.code() == Some(1) {
        panic!("python client crashed: {}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_status_and_cancel_from_rust_and_python() {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let _node = NodeProcess::start(&nats, NodeOptions { node_id: "n1", store: store.path(), env: vec![("ORFEAS_MODELS_ENABLED", "null".into())] }).await;
    let (mut alice, alice_key) = agent(&nats.url, "alice").await;
    let client = orfeas_actors::bus::connect(&nats.url, "orfeas-test").await.unwrap();
    let bus = Bus::attach(client.clone()).await.unwrap();
    let jobs = JobStore::new(bus.jobs.clone());

    // A finished job: status shows it; cancel leaves it as it is.
    let mut job = common::example_job("mug.png", vec![]);
    job.model = "null".into();
    let mut events = alice.submit(&job).await.unwrap();
    let completed_seq = loop {
        let event = alice.next_event(&mut events, WAIT).await.unwrap();
        if let EventKind::Completed { .. } = event.kind {
            break event.seq;
        }
        assert!(!event.kind.is_terminal(), "{event:?}");
    };
    let status = alice.status(&job.job_id, WAIT).await.unwrap();
    assert_eq!((status.state.as_str(), status.terminal_seq), ("completed", completed_seq));
    assert!(matches!(status.terminal, Some(EventKind::Completed { .. })));
    // The request as admitted: no formats asked, so the door's default.
    let request = status.request.as_ref().expect("the admitted request");
    assert_eq!((request.model.as_str(), request.formats.as_slice(), &request.params), ("null", &[orfeas_wire::v1::Format::Glb][..], &job.params));
    assert_eq!(alice.cancel(&job.job_id, WAIT).await.unwrap().state, "completed", "a finished job is not changed");

    // A queued job: canceled at once, with its terminal event.
    let queued = record("alice", JobState::Admitted);
    assert!(matches!(jobs.create(&queued).await.unwrap(), orfeas_actors::jobs::Created::New(_)));
    let mut queued_events = client.subscribe(subjects::events("alice", &queued.job_id)).await.unwrap();
    client.flush().await.unwrap();
    let status = alice.cancel(&queued.job_id, WAIT).await.unwrap();
    assert_eq!(status.state, "canceled");
    let message = tokio::time::timeout(WAIT, queued_events.next()).await.unwrap().unwrap();
    let event = alice.verify_event(&message.subject, &message.payload).await.unwrap();
    assert_eq!(event.seq, 0xFFFF);
    let EventKind::Failed(f) = &event.kind else { panic!("{event:?}") };
    assert_eq!((f.code, f.status), (ErrorCode::Canceled, 409));
    let (stored, _) = jobs.get("alice", &queued.job_id).await.unwrap().unwrap();
    assert_eq!(stored.state, JobState::Canceled);
    assert_eq!(stored.terminal, Some(event.kind.clone()));
    // Asking again re-sends the same answer.
    assert_eq!(alice.cancel(&queued.job_id, WAIT).await.unwrap().state, "canceled");
    let message = tokio::time::timeout(WAIT, queued_events.next()).await.unwrap().unwrap();
    assert_eq!(alice.verify_event(&message.subject, &message.payload).await.unwrap().seq, 0xFFFF);

    // A running job: the cancel is recorded for the node running it.
    let running = record("alice", JobState::Running);
    jobs.create(&running).await.unwrap();
    let status = alice.cancel(&running.job_id, WAIT).await.unwrap();
    assert_eq!((status.state.as_str(), status.cancel_requested), ("running", true));
    assert!(jobs.get("alice", &running.job_id).await.unwrap().unwrap().0.cancel_requested);

    // Refusals: no such job, another agent's job, an operation not allowed,
    // a revoked key.
    assert_eq!(refused(alice.status(&Uuid::now_v7(), WAIT).await), ErrorCode::NotFound);
    let (bob, _) = agent(&nats.url, "bob").await;
    assert_eq!(refused(bob.status(&job.job_id, WAIT).await), ErrorCode::NotFound);
    assert_eq!(refused(bob.cancel(&running.job_id, WAIT).await), ErrorCode::NotFound);
    let registry = Registry::new(bus.agents.clone(), bus.nodes.clone());
    let carol_key = SecretKey::generate();
    registry.add_agent("carol", &carol_key.public().to_hex(), &PolicyUpdate { operations: Some(vec!["submit".into()]), ..Default::default() }).await.unwrap();
    let carol = AgentClient::new(client.clone(), "carol", carol_key.clone(), "orfeas");
    assert_eq!(refused(carol.status(&job.job_id, WAIT).await), ErrorCode::Forbidden);
    registry.revoke("carol", None).await.unwrap();
    assert_eq!(refused(carol.status(&job.job_id, WAIT).await), ErrorCode::RevokedKey);

    // The same from Python, written from md/protocol.md alone.
    let seed = alice_key.to_text().rsplit(':').next().unwrap().to_string();
    let image = common::repo().join("examples/mug.png");
    let base = ["--nats", nats.url.as_str(), "--agent", "alice", "--seed-hex", seed.as_str()];
    let (ok, lines) = python(&[&base[..], &["submit", image.to_str().unwrap(), "--model", "null"]].concat());
    assert!(ok, "{lines:?}");
    let job_id = lines[0]["submitted"].as_str().unwrap().to_string();
    let kinds: Vec<String> = lines[1..].iter().map(|l| l["event"]["kind"].as_object().unwrap().keys().next().unwrap().clone()).collect();
    assert_eq!(kinds.last().map(String::as_str), Some("completed"), "{lines:?}");
    assert!(kinds.contains(&"accepted".to_string()), "{kinds:?}");
    assert!(lines[1..].iter().all(|l| l["event"]["job_id"] == job_id.as_str()));
    let (ok, lines) = python(&[&base[..], &["status", &job_id]].concat());
    assert!(ok, "{lines:?}");
    assert_eq!(lines[0]["job"]["state"], "completed");
    assert_eq!(lines[0]["job"]["job_id"], job_id.as_str());
    let queued = record("alice", JobState::Admitted);
    jobs.create(&queued).await.unwrap();
    let (ok, lines) = python(&[&base[..], &["cancel", &queued.job_id.to_string()]].concat());
    assert!(ok, "{lines:?}");
    assert_eq!(lines[0]["job"]["state"], "canceled");
    assert_eq!(lines[0]["job"]["terminal"]["failed"]["code"], "canceled");
    let (ok, lines) = python(&[&base[..], &["status", &Uuid::now_v7().to_string()]].concat());
    assert!(!ok);
    assert_eq!(lines[0]["error"]["code"], "not_found");
    // Python's events verified against the node key: a job the Rust side
    // sees as completed too.
    assert_eq!(alice.status(&job_id.parse().unwrap(), WAIT).await.unwrap().state, "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_submit_batch_admits_each_job_on_its_own_and_reports_the_batch() {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let _node = NodeProcess::start(&nats, NodeOptions { node_id: "n1", store: store.path(), env: vec![("ORFEAS_MODELS_ENABLED", "null".into())] }).await;
    let (mut alice, _) = agent(&nats.url, "alice").await;
    let client = orfeas_actors::bus::connect(&nats.url, "orfeas-test").await.unwrap();
    let bus = Bus::attach(client.clone()).await.unwrap();
    let jobs = JobStore::new(bus.jobs.clone());
    let null_job = || {
        let mut job = common::example_job("mug.png", vec![]);
        job.model = "null".into();
        job
    };
    let (good_a, good_b, mut bad) = (null_job(), null_job(), null_job());
    bad.model = "nope".into();
    let batch = orfeas_wire::v1::SubmitBatch { batch_id: Uuid::now_v7(), jobs: vec![good_a.clone(), bad.clone(), good_b.clone()] };
    let mut events = alice.submit_batch(&batch).await.unwrap();
    let (mut completed, mut refused_code) = (Vec::new(), None);
    while completed.len() < 2 || refused_code.is_none() {
        let event = alice.next_event(&mut events, WAIT).await.unwrap();
        match event.kind {
            EventKind::Completed { .. } => completed.push(event.job_id),
            EventKind::Rejected(f) => {
                assert_eq!(event.job_id, bad.job_id, "only the bad job is refused: {f:?}");
                assert_eq!(f.job_id, Some(bad.job_id));
                refused_code = Some(f.code);
            }
            EventKind::Failed(f) => panic!("{f:?}"),
            _ => {}
        }
    }
    completed.sort();
    let mut want = vec![good_a.job_id, good_b.job_id];
    want.sort();
    assert_eq!(completed, want);
    assert_eq!(refused_code, Some(ErrorCode::UnknownModel));
    for id in &want {
        assert_eq!(jobs.get("alice", id).await.unwrap().unwrap().0.batch_id, Some(batch.batch_id));
    }
    assert!(jobs.get("alice", &bad.job_id).await.unwrap().is_none(), "a refused job has no record");
    // The batch's status covers every job.
    let (states, rejected) = alice.batch_status(&batch.batch_id, WAIT).await.unwrap();
    let mut ids: Vec<Uuid> = states.iter().map(|s| s.job_id).collect();
    ids.sort();
    assert_eq!(ids, want);
    assert!(states.iter().all(|s| s.state == "completed"));
    assert_eq!(rejected.len(), 1);
    assert_eq!((rejected[0].code, rejected[0].job_id), (ErrorCode::UnknownModel, Some(bad.job_id)));
    match alice.batch_status(&Uuid::now_v7(), WAIT).await {
        Err(ClientError::Refused(f)) => assert_eq!(f.code, ErrorCode::NotFound),
        other => panic!("an unknown batch: {other:?}"),
    }

    // Refusals of the whole batch land on the batch's subject.
    let registry = Registry::new(bus.agents.clone(), bus.nodes.clone());
    let key = SecretKey::generate();
    registry.add_agent("single", &key.public().to_hex(), &PolicyUpdate { operations: Some(vec!["submit".into()]), ..Default::default() }).await.unwrap();
    let mut single = AgentClient::new(client.clone(), "single", key, "orfeas");
    for (batch, code) in [
        (orfeas_wire::v1::SubmitBatch { batch_id: Uuid::now_v7(), jobs: vec![null_job()] }, ErrorCode::Forbidden),
        (orfeas_wire::v1::SubmitBatch { batch_id: Uuid::now_v7(), jobs: vec![] }, ErrorCode::Invalid),
        (orfeas_wire::v1::SubmitBatch { batch_id: Uuid::nil(), jobs: vec![null_job()] }, ErrorCode::Invalid),
    ] {
        let mut events = single.submit_batch(&batch).await.unwrap();
        let event = single.next_event(&mut events, WAIT).await.unwrap();
        assert_eq!(event.job_id, batch.batch_id);
        let EventKind::Rejected(f) = event.kind else { panic!("{event:?}") };
        assert_eq!(f.code, code, "{f:?}");
    }
}

/// A raw request/reply: the reply's body and its `Orfeas-Signature` header.
async fn raw_request(client: &async_nats::Client, subject: &str, bytes: Vec<u8>) -> (orfeas_wire::v1::StatusReply, Vec<u8>, String) {
    let reply = tokio::time::timeout(WAIT, client.request(subject.to_string(), bytes.into())).await.unwrap().unwrap();
    let signature = reply.headers.as_ref().and_then(|h| h.get(orfeas_wire::v1::REPLY_SIGNATURE_HEADER)).expect("reply is signed").as_str().to_string();
    (orfeas_wire::from_cbor(&reply.payload).unwrap(), reply.payload.to_vec(), signature)
}

fn reply_code(reply: &orfeas_wire::v1::StatusReply) -> Option<&orfeas_wire::v1::Failure> {
    match reply {
        orfeas_wire::v1::StatusReply::Error(f) => Some(f),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_gated_and_replies_are_signed_by_the_node() {
    use orfeas_wire::{
        envelope::{self, ContentKind},
        v1::{open_reply, CancelRequest, StatusRequest},
        PublicKey,
    };
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let _node = NodeProcess::start(&nats, NodeOptions { node_id: "n1", store: store.path(), env: vec![("ORFEAS_MODELS_ENABLED", "null".into())] }).await;
    let (alice, alice_key) = agent(&nats.url, "alice").await;
    let client = orfeas_actors::bus::connect(&nats.url, "orfeas-test").await.unwrap();
    let bus = Bus::attach(client.clone()).await.unwrap();
    let jobs = JobStore::new(bus.jobs.clone());
    let queued = record("alice", JobState::Completed);
    jobs.create(&queued).await.unwrap();
    let now_s = orfeas_actors::now_ms() / 1000;
    let node_key = {
        let record: orfeas_wire::v1::NodeRecord = orfeas_wire::from_cbor(&bus.nodes.get("n1").await.unwrap().unwrap()).unwrap();
        PublicKey::from_hex(&record.public_key).unwrap()
    };

    // The reply is signed by the node's event key over the body as sent,
    // bound to the request's subject and nonce.
    let (subject, bytes) = StatusRequest { job_id: Some(queued.job_id), batch_id: None }.seal("alice", &alice_key, "orfeas", now_s);
    let cti = envelope::open(&bytes, 1 << 16, ContentKind::StatusRequest).unwrap().claims.cti;
    let (reply, body, signature) = raw_request(&client, &subject, bytes.clone()).await;
    assert!(matches!(&reply, orfeas_wire::v1::StatusReply::Job(s) if s.state == "completed"), "{reply:?}");
    let opened = open_reply(&signature, &body).unwrap();
    opened.verify(&node_key, &subject).unwrap();
    assert_eq!((opened.claims.iss.as_str(), opened.claims.aud.as_str(), opened.op.as_str()), ("n1", "orfeas", "status"));
    assert_eq!(opened.claims.cti, cti, "bound to the request's nonce");
    assert!(open_reply(&signature, &body).unwrap().verify(&node_key, &subjects::status("bob")).is_err(), "bound to the subject");
    let mut tampered = body.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert!(open_reply(&signature, &tampered).unwrap().verify(&node_key, &subject).is_err(), "bound to the body");
    assert!(open_reply(&signature, &body).unwrap().verify(&alice_key.public(), &subject).is_err(), "made with the node's key only");

    // The same request again: replayed (401), for status and cancel alike,
    // and the refusal is signed too.
    let (reply, body, signature) = raw_request(&client, &subject, bytes).await;
    let f = reply_code(&reply).expect("a replay is refused");
    assert_eq!((f.code, f.status), (ErrorCode::Replayed, 401), "{f:?}");
    open_reply(&signature, &body).unwrap().verify(&node_key, &subject).unwrap();
    let (cancel_subject, cancel_bytes) = CancelRequest { job_id: queued.job_id }.seal("alice", &alice_key, "orfeas", now_s);
    assert!(reply_code(&raw_request(&client, &cancel_subject, cancel_bytes.clone()).await.0).is_none());
    assert_eq!(reply_code(&raw_request(&client, &cancel_subject, cancel_bytes).await.0).unwrap().code, ErrorCode::Replayed);
    // The Rust client verifies every reply (fresh nonces are never replays).
    assert_eq!(alice.status(&queued.job_id, WAIT).await.unwrap().state, "completed");

    // Requests count toward the agent's rate, with its submissions.
    let registry = Registry::new(bus.agents.clone(), bus.nodes.clone());
    let key = SecretKey::generate();
    registry.add_agent("dave", &key.public().to_hex(), &PolicyUpdate { requests_per_minute: Some(3), ..Default::default() }).await.unwrap();
    let mut dave = AgentClient::new(client.clone(), "dave", key, "orfeas");
    for _ in 0..3 {
        assert_eq!(refused(dave.status(&Uuid::now_v7(), WAIT).await), ErrorCode::NotFound);
    }
    let limited = match dave.status(&Uuid::now_v7(), WAIT).await {
        Err(ClientError::Refused(f)) => f,
        other => panic!("expected 429, got {other:?}"),
    };
    assert_eq!((limited.code, limited.status, limited.retryable), (ErrorCode::RateLimited, 429, true), "{limited:?}");
    // 3 per minute: the next one is about 20 s away.
    let retry = limited.retry_after_ms.expect("retry_after_ms");
    assert!((1..=20_000).contains(&retry), "{retry}");
    assert_eq!(refused(dave.cancel(&Uuid::now_v7(), WAIT).await), ErrorCode::RateLimited);
    let mut job = common::example_job("mug.png", vec![]);
    job.model = "null".into();
    let mut events = dave.submit(&job).await.unwrap();
    let event = dave.next_event(&mut events, WAIT).await.unwrap();
    let EventKind::Rejected(f) = event.kind else { panic!("{event:?}") };
    assert_eq!(f.code, ErrorCode::RateLimited, "the submission shares the rate: {f:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_an_event_for_another_deployment_or_another_job_does_not_verify() {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let _node = NodeProcess::start(&nats, NodeOptions { node_id: "n1", store: store.path(), env: vec![("ORFEAS_MODELS_ENABLED", "null".into())] }).await;
    let (mut alice, _) = agent(&nats.url, "alice").await;
    // A node whose key the agent can read, as every node registers it.
    let node_key = SecretKey::generate();
    let bus = Bus::attach(orfeas_actors::bus::connect(&nats.url, "orfeas-test").await.unwrap()).await.unwrap();
    let record = orfeas_wire::v1::NodeRecord {
        node_id: "forger".into(),
        public_key: node_key.public().to_hex(),
        version: "test".into(),
        started_at_ms: 0,
        heartbeat_at_ms: 0,
        state: "ready".into(),
        devices: vec![],
        models: vec![],
        capacity: 0,
        held_jobs: 0,
        busy_devices: 0,
        finished_jobs: 0,
    };
    bus.js.get_key_value(subjects::NODES_BUCKET).await.unwrap().put("forger", orfeas_wire::to_cbor(&record).into()).await.unwrap();
    let job_id = Uuid::now_v7();
    let event = orfeas_wire::v1::Event { job_id, seq: 1, node: "forger".into(), at_ms: 0, kind: EventKind::Accepted { queue_position: 0, eta_ms: None } };
    let subject = subjects::events("alice", &job_id);
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    // Signed for this deployment and this job: it verifies.
    assert_eq!(alice.verify_event(&subject, &event.seal(&subject, &node_key, "orfeas", now_s)).await.unwrap(), event);
    // The same event signed for another deployment does not.
    let elsewhere = alice.verify_event(&subject, &event.seal(&subject, &node_key, "staging", now_s)).await;
    assert!(matches!(&elsewhere, Err(ClientError::Unverified(e)) if e.contains("audience")), "{elsewhere:?}");
    // Nor one about another job, signed for this job's subject.
    let other = orfeas_wire::v1::Event { job_id: Uuid::now_v7(), ..event.clone() };
    let misplaced = alice.verify_event(&subject, &other.seal(&subject, &node_key, "orfeas", now_s)).await;
    assert!(matches!(&misplaced, Err(ClientError::Unverified(e)) if e.contains("signed for")), "{misplaced:?}");
}
