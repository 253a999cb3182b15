//! Scheduling on a real node and a real `nats-server`: priority lanes,
//! per-agent turns inside a lane (also across a backlog far larger than a
//! node holds), a cancel of a job waiting for its batch, jobs that must not run (canceled, past
//! their deadline), a cancel while running, dead letters from JetStream's
//! max-deliveries advisory, and a graceful SIGTERM under load.
//!
//! Jobs are put straight onto `ORFEAS_QUEUE` (a job record plus an
//! `AdmittedJob`, as Ingress writes them) while no node runs, so the order
//! a node finds them in is known; the node is the `null` model with a
//! simulated device time per batch (a stand-in GPU).
//!
//! `cargo test --release --test scheduling -- --nocapture`

mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use async_nats::{jetstream, HeaderMap};
use common::{agent, cluster::stored_events, eventually, NatsServer, NodeOptions, NodeProcess};
use futures::StreamExt;
use orfeas_actors::{
    bus::Bus,
    jobs::{JobRecord, JobState, JobStore, Updated},
    now_ms,
};
use orfeas_wire::{
    subjects,
    v1::{AdmittedJob, Event, EventKind, Format, ImageInput, JobParams, Lane, Stage},
    ErrorCode,
};
use uuid::Uuid;

/// One test at a time: they share two cores with nodes and servers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A null-model node with `latency_ms` per batch of at most `max_batch`.
fn node_env(latency_ms: u64, max_batch: usize, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("ORFEAS_MODELS_ENABLED", "null".to_string()),
        ("ORFEAS_NODE_SIMULATED_LATENCY_MS", latency_ms.to_string()),
        ("ORFEAS_SCHEDULER_MAX_BATCH", max_batch.to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    env
}

async fn start(nats: &NatsServer, id: &str, store: &std::path::Path, env: Vec<(&'static str, String)>) -> NodeProcess {
    NodeProcess::start(nats, NodeOptions { node_id: id, store, env }).await
}

async fn bus(nats: &NatsServer) -> Bus {
    Bus::attach(orfeas_actors::bus::connect(&nats.url, "orfeas-test").await.unwrap()).await.unwrap()
}

fn params() -> JobParams {
    JobParams { previews: Some(false), ..Default::default() }
}

/// Queue a job the way Ingress does: record first, then the queue message,
/// then (for a job that is still to run) its `accepted` event.
async fn enqueue(bus: &Bus, agent: &str, lane: Lane, params: JobParams, record_state: JobState) -> Uuid {
    let job_id = enqueue_unannounced(bus, agent, lane, params, record_state).await;
    if record_state == JobState::Admitted {
        announce(bus, agent, job_id).await;
    }
    job_id
}

/// Ingress's `accepted` for `job_id`, stored in the events stream.
async fn announce(bus: &Bus, agent: &str, job_id: Uuid) {
    let subject = subjects::events(agent, &job_id);
    let event = Event { job_id, seq: 0, node: "ingress".into(), at_ms: now_ms(), kind: EventKind::Accepted { queue_position: 0, eta_ms: None } };
    let bytes = event.seal(&subject, &orfeas_wire::SecretKey::generate(), "orfeas", now_ms() / 1000);
    bus.js.publish(subject, bytes.into()).await.unwrap().await.unwrap();
}

/// The record and the queue message only (Ingress between its PubAck and
/// its `accepted`).
async fn enqueue_unannounced(bus: &Bus, agent: &str, lane: Lane, params: JobParams, record_state: JobState) -> Uuid {
    enqueue_on(bus, &subjects::queue(lane.as_str(), agent), agent, lane, params, record_state).await
}

/// [`enqueue_unannounced`] on queue subject `subject`.
async fn enqueue_on(bus: &Bus, subject: &str, agent: &str, lane: Lane, params: JobParams, record_state: JobState) -> Uuid {
    let job_id = Uuid::now_v7();
    let record = JobRecord {
        agent: agent.into(),
        job_id,
        model: "null".into(),
        digest: "test".into(),
        state: record_state,
        attempt: 0,
        node: "test".into(),
        updated_at_ms: now_ms(),
        terminal: (record_state == JobState::Canceled).then(|| EventKind::Failed(orfeas_wire::v1::Failure::new(ErrorCode::Canceled, "canceled"))),
        terminal_seq: 0xffff,
        lane,
        deadline_ms: params.deadline_ms,
        cancel_requested: false,
        batch_id: None,
        request: None,
    };
    JobStore::new(bus.jobs.clone()).create(&record).await.unwrap();
    let job = AdmittedJob {
        job_id,
        agent: agent.into(),
        model: "null".into(),
        formats: vec![Format::Stl],
        params,
        image: ImageInput::Inline { media_type: "image/png".into(), data: common::example("mug.png") },
        admitted_at_ms: now_ms(),
        lane,
        batch_id: None,
    };
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("{agent}:{job_id}").as_str());
    bus.publish_acked(subject.to_string(), headers, orfeas_wire::to_cbor(&job).into()).await.unwrap();
    job_id
}

/// Terminal events per job of `agent`, waiting until `jobs` all have one.
async fn terminals(js: &jetstream::Context, agent: &str, jobs: &[Uuid], timeout: Duration) -> HashMap<Uuid, Vec<Event>> {
    eventually(&format!("{} answers for {agent}", jobs.len()), timeout, || async {
        let events = stored_events(js, agent).await?;
        let out: HashMap<Uuid, Vec<Event>> = events
            .into_iter()
            .map(|(id, list)| {
                let mut t: Vec<Event> = list.into_iter().map(|(e, _)| e).filter(|e| e.kind.is_terminal()).collect();
                t.sort_by_key(|e| e.seq);
                t.dedup_by_key(|e| e.seq);
                (id, t)
            })
            .collect();
        jobs.iter().all(|j| out.get(j).is_some_and(|t| !t.is_empty())).then_some(out)
    })
    .await
}

/// Every event of `agent`'s jobs (for stage checks).
async fn all_events(js: &jetstream::Context, agent: &str) -> HashMap<Uuid, Vec<Event>> {
    stored_events(js, agent).await.unwrap_or_default().into_iter().map(|(id, l)| (id, l.into_iter().map(|(e, _)| e).collect())).collect()
}

fn one_completed(t: &HashMap<Uuid, Vec<Event>>, job: &Uuid) -> Event {
    let list = &t[job];
    assert_eq!(list.len(), 1, "exactly one answer for {job}: {list:?}");
    assert!(matches!(list[0].kind, EventKind::Completed { .. }), "{job} completed: {:?}", list[0].kind);
    list[0].clone()
}

/// A node that created the streams and consumers, stopped again, so jobs
/// can be queued in a known order before the node under test starts.
async fn prepared_nats() -> (NatsServer, tempfile::TempDir) {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let mut setup = start(&nats, "setup", store.path(), node_env(0, 2, &[])).await;
    setup.terminate(Duration::from_secs(30));
    (nats, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_high_lane_first_low_not_starved_and_agents_take_turns() {
    let _serial = SERIAL.lock().await;
    let (nats, store) = prepared_nats().await;
    let bus = bus(&nats).await;
    // Batches of two, 400 ms each; the node holds 2 × (2 + 6) = 16 jobs per
    // lane, so all of these are in view at once. In arrival order the
    // single agent's job and the high job would run last. The burst is
    // long enough that normal work still waits when low's weighted turn
    // comes (at most 5 normal batches after high), however the first
    // batches happen to form while the node starts pulling.
    let mut burst = Vec::new();
    for _ in 0..15 {
        burst.push(enqueue(&bus, "burst", Lane::Normal, params(), JobState::Admitted).await);
    }
    let single = enqueue(&bus, "single", Lane::Normal, params(), JobState::Admitted).await;
    let low = enqueue(&bus, "batch", Lane::Low, params(), JobState::Admitted).await;
    let high = enqueue(&bus, "urgent", Lane::High, params(), JobState::Admitted).await;
    let _node = start(&nats, "lanes", store.path(), node_env(400, 2, &[("ORFEAS_SCHEDULER_LOOKAHEAD_BATCHES", "6")])).await;

    let js = bus.js.clone();
    let everyone = [("burst", &burst[..]), ("single", &[single][..]), ("batch", &[low][..]), ("urgent", &[high][..])];
    for (agent, jobs) in everyone {
        for answers in terminals(&js, agent, jobs, Duration::from_secs(60)).await.values() {
            assert!(matches!(answers[..], [Event { kind: EventKind::Completed { .. }, .. }]), "one completed answer: {answers:?}");
        }
    }
    // When each job's batch started on the device (its `inference` event):
    // batches run one after another, 400 ms apart.
    let mut started = HashMap::new();
    for agent in ["burst", "single", "batch", "urgent"] {
        for (job, events) in all_events(&js, agent).await {
            let at = events.iter().find(|e| matches!(e.kind, EventKind::Progress { stage: Stage::Inference, .. })).expect("an inference event").at_ms;
            started.insert(job, at);
        }
    }
    let later = |a: u64, b: u64| a > b + 200;
    let burst_at: Vec<u64> = burst.iter().map(|j| started[j]).collect();
    let burst_after = |t: u64| burst_at.iter().filter(|&&a| later(a, t)).count();
    let (high_start, single_start, low_start) = (started[&high], started[&single], started[&low]);
    println!("batch starts: burst {burst_at:?} single {} high {} low {}", single_start, high_start, low_start);
    assert!(burst_after(high_start) >= 3, "the high job ran in one of the first batches: {} burst jobs after it", burst_after(high_start));
    // In arrival order the single job would run after the whole burst; in
    // turns it shares a batch with the burst's first held jobs.
    assert!(burst_after(single_start) >= 3, "the single agent's job waited for the burst: {} burst jobs after it", burst_after(single_start));
    // Low gets its one batch in thirteen while normal work still waits.
    assert!(burst_after(low_start) >= 1 || later(single_start, low_start), "the low job was starved until the normal lane was empty");
}

/// When each job of `agent` started on the device (its `inference` event).
async fn inference_at(js: &jetstream::Context, agent: &str) -> HashMap<Uuid, u64> {
    all_events(js, agent)
        .await
        .into_iter()
        .filter_map(|(job, events)| Some((job, events.iter().find(|e| matches!(e.kind, EventKind::Progress { stage: Stage::Inference, .. }))?.at_ms)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_a_burst_far_beyond_what_a_node_holds_delays_another_agent_by_about_one_batch() {
    let _serial = SERIAL.lock().await;
    let (nats, store) = prepared_nats().await;
    let bus = bus(&nats).await;
    // 200 jobs of one agent queued before another agent's single job. A
    // node with batches of two and one batch of lookahead holds 2 × (2 + 1)
    // = 6 jobs per lane, so in queue order the single job would wait for
    // about 100 batches; pulled per agent it is among the first held.
    let mut burst = Vec::new();
    for _ in 0..200 {
        burst.push(enqueue(&bus, "flood", Lane::Normal, params(), JobState::Admitted).await);
    }
    let single = enqueue(&bus, "solo", Lane::Normal, params(), JobState::Admitted).await;
    let latency = 300;
    let node = start(&nats, "fair", store.path(), node_env(latency, 2, &[("ORFEAS_SCHEDULER_LOOKAHEAD_BATCHES", "1")])).await;
    let js = bus.js.clone();
    one_completed(&terminals(&js, "solo", &[single], Duration::from_secs(60)).await, &single);
    let solo_at = inference_at(&js, "solo").await[&single];
    let flood_at = inference_at(&js, "flood").await;
    drop(node);
    // Batches run one after another, `latency` apart: a flood job in an
    // earlier batch has its inference event at least that much earlier.
    let before = flood_at.values().filter(|&&at| at + latency / 2 < solo_at).count();
    let after_or_with = burst.len() - before;
    println!("flood jobs started before the single job: {before} (of {})", burst.len());
    assert!(before <= 2 * 2, "at most two batches of the burst (max_batch 2) ran before the other agent's job: {before}");
    assert!(after_or_with >= 190, "the burst was still queued when the single job ran: {after_or_with} not before it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_cancel_of_a_job_waiting_for_its_batch_drops_it_before_it_runs() {
    let _serial = SERIAL.lock().await;
    let (nats, store) = prepared_nats().await;
    let bus = bus(&nats).await;
    let jobs = JobStore::new(bus.jobs.clone());
    // One job per batch, 3 s each: the node holds 1 × (2 + 2) = 4 jobs,
    // two on the device's slots and two waiting here for a batch.
    let (client, _) = agent(&nats.url, "kate").await;
    let node = start(&nats, "holder", store.path(), node_env(3_000, 1, &[])).await;
    let js = bus.js.clone();
    let mut ids = Vec::new();
    for _ in 0..4 {
        let job = null_submit();
        client.submit(&job).await.unwrap();
        ids.push(job.job_id);
    }
    // Every job claimed (record `running`), two on the device's slots
    // (their `preprocessing` starts when a batch reaches the device), so
    // the other two wait here for a batch.
    let waiting = eventually("two jobs on the device and two held", Duration::from_secs(30), || async {
        let events = all_events(&js, "kate").await;
        let on_device = |job: &Uuid| events.get(job).is_some_and(|l| l.iter().any(|e| matches!(e.kind, EventKind::Progress { stage: Stage::Preprocessing, .. })));
        let mut held = Vec::new();
        for job in &ids {
            let (record, _) = jobs.get("kate", job).await.ok()??;
            if record.state != JobState::Running {
                return None;
            }
            if !on_device(job) {
                held.push(*job);
            }
        }
        (held.len() == 2).then(|| held[1])
    })
    .await;
    let status = client.cancel(&waiting, Duration::from_secs(10)).await.unwrap();
    assert_eq!((status.state.as_str(), status.cancel_requested), ("running", true), "held jobs are running to the agent");
    let done = terminals(&js, "kate", &ids, Duration::from_secs(60)).await;
    let answers = &done[&waiting];
    assert_eq!(answers.len(), 1, "one answer: {answers:?}");
    match &answers[0].kind {
        EventKind::Failed(f) => assert_eq!((f.code, f.job_id), (ErrorCode::Canceled, Some(waiting))),
        other => panic!("canceled while held: {other:?}"),
    }
    let events = all_events(&js, "kate").await;
    assert!(
        !events[&waiting].iter().any(|e| matches!(e.kind, EventKind::Progress { stage: Stage::Preprocessing | Stage::Inference, .. })),
        "the canceled job never reached a device: {:?}",
        events[&waiting]
    );
    let canceled_at = answers[0].at_ms;
    let first_done = ids.iter().filter(|j| **j != waiting).map(|j| one_completed(&done, j).at_ms).min().unwrap();
    assert!(canceled_at < first_done, "dropped at once, not when a device came free ({canceled_at} vs {first_done})");
    let (record, _) = jobs.get("kate", &waiting).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Canceled);
    eventually("an empty queue", Duration::from_secs(30), || {
        let js = js.clone();
        async move { (js.get_stream(subjects::QUEUE_STREAM).await.ok()?.info().await.ok()?.state.messages == 0).then_some(()) }
    })
    .await;
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_queue_from_before_per_agent_subjects_is_widened_and_drained() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    // The queue stream as deployments before per-agent queues made it.
    let settings = orfeas_actors::settings::NodeSettings::local("old", &nats.url, "models".into(), "store".into());
    let mut old = orfeas_actors::topology::streams(&settings).into_iter().find(|c| c.name == subjects::QUEUE_STREAM).unwrap();
    old.subjects = vec![subjects::QUEUE_WILDCARD_LANES.into()];
    let client = orfeas_actors::bus::connect(&nats.url, "orfeas-test").await.unwrap();
    jetstream::new(client).create_stream(old).await.unwrap();
    // A node starts on it (it would refuse a stream it cannot use) ...
    let mut setup = start(&nats, "setup", store.path(), node_env(0, 2, &[])).await;
    setup.terminate(Duration::from_secs(30));
    let bus = bus(&nats).await;
    let info = bus.js.get_stream(subjects::QUEUE_STREAM).await.unwrap().info().await.unwrap().clone();
    assert_eq!(info.config.subjects, vec![subjects::QUEUE_WILDCARD.to_string()], "widened in place");
    // ... and a job an older Ingress left on the lane subject still runs.
    let legacy = enqueue_on(&bus, &subjects::queue_lane("normal"), "olga", Lane::Normal, params(), JobState::Admitted).await;
    announce(&bus, "olga", legacy).await;
    let fresh = enqueue(&bus, "olga", Lane::Normal, params(), JobState::Admitted).await;
    let _node = start(&nats, "new", store.path(), node_env(0, 2, &[])).await;
    let done = terminals(&bus.js, "olga", &[legacy, fresh], Duration::from_secs(60)).await;
    one_completed(&done, &legacy);
    one_completed(&done, &fresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_first_progress_never_overtakes_accepted() {
    let _serial = SERIAL.lock().await;
    let (nats, store) = prepared_nats().await;
    let bus = bus(&nats).await;
    let js = bus.js.clone();
    // Ingress has the queue's PubAck but has not said `accepted` yet.
    let job = enqueue_unannounced(&bus, "hana", Lane::Normal, params(), JobState::Admitted).await;
    let _node = start(&nats, "order", store.path(), node_env(0, 1, &[])).await;
    eventually("the job delivered to the node", Duration::from_secs(30), || {
        let js = js.clone();
        async move {
            let stream = js.get_stream(subjects::QUEUE_STREAM).await.ok()?;
            let info = stream.consumer_info(orfeas_actors::queue::agent_consumer_name(Lane::Normal, "hana")).await.ok()?;
            (info.num_ack_pending == 1).then_some(())
        }
    })
    .await;
    assert!(all_events(&js, "hana").await.get(&job).is_none(), "the node spoke of a job not yet accepted");
    announce(&bus, "hana", job).await;
    one_completed(&terminals(&js, "hana", &[job], Duration::from_secs(60)).await, &job);
    let events = &all_events(&js, "hana").await[&job];
    assert!(matches!(events[0].kind, EventKind::Accepted { .. }), "accepted comes first: {events:?}");
    assert!(
        events.windows(2).all(|w| w[0].seq < w[1].seq),
        "stored in seq order: {:?}",
        events.iter().map(|e| (e.seq, e.kind.name())).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_canceled_and_expired_jobs_never_run_and_a_cancel_while_running_ends_once() {
    let _serial = SERIAL.lock().await;
    let (nats, store) = prepared_nats().await;
    let bus = bus(&nats).await;
    let jobs = JobStore::new(bus.jobs.clone());
    let canceled = enqueue(&bus, "dora", Lane::Normal, params(), JobState::Canceled).await;
    let expired = enqueue(&bus, "dora", Lane::Normal, JobParams { deadline_ms: Some(now_ms() - 1_000), ..params() }, JobState::Admitted).await;
    let in_time = enqueue(&bus, "dora", Lane::Normal, JobParams { deadline_ms: Some(now_ms() + 600_000), ..params() }, JobState::Admitted).await;
    let node = start(&nats, "cancels", store.path(), node_env(3_000, 1, &[])).await;
    let js = bus.js.clone();

    let done = terminals(&js, "dora", &[expired, in_time], Duration::from_secs(60)).await;
    let e = &done[&expired];
    assert_eq!(e.len(), 1);
    match &e[0].kind {
        EventKind::Failed(f) => assert_eq!((f.code, f.job_id), (ErrorCode::DeadlineExceeded, Some(expired))),
        other => panic!("expired job: {other:?}"),
    }
    one_completed(&done, &in_time);
    let events = all_events(&js, "dora").await;
    assert!(
        !events[&expired].iter().any(|e| matches!(e.kind, EventKind::Progress { stage: Stage::Preprocessing | Stage::Inference, .. })),
        "the expired job never ran: {:?}",
        events[&expired]
    );
    assert!(!events.contains_key(&canceled), "nothing is said again about a job canceled while queued: {:?}", events.get(&canceled));
    let (record, _) = jobs.get("dora", &expired).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Failed);
    let (record, _) = jobs.get("dora", &canceled).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Canceled, "a canceled record stays as it is");

    // Cancel while running: the agent side sets `cancel_requested` on the
    // running record (revision-fenced), as the cancel request does.
    let running = enqueue(&bus, "dora", Lane::Normal, params(), JobState::Admitted).await;
    eventually("the job to run", Duration::from_secs(30), || async {
        let (record, revision) = jobs.get("dora", &running).await.ok()??;
        if record.state != JobState::Running {
            return None;
        }
        let mut asked = record.clone();
        asked.cancel_requested = true;
        matches!(jobs.update(&asked, revision).await, Ok(Updated::Ok(_))).then_some(())
    })
    .await;
    let done = terminals(&js, "dora", &[running], Duration::from_secs(60)).await;
    let answers = &done[&running];
    assert_eq!(answers.len(), 1, "one answer: {answers:?}");
    match &answers[0].kind {
        EventKind::Failed(f) => assert_eq!(f.code, ErrorCode::Canceled),
        other => panic!("a job canceled while running ends as canceled, got {other:?}"),
    }
    let (record, _) = jobs.get("dora", &running).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Canceled);
    // Every queue message is gone: nothing waits for a redelivery.
    eventually("an empty queue", Duration::from_secs(30), || {
        let js = js.clone();
        async move { (js.get_stream(subjects::QUEUE_STREAM).await.ok()?.info().await.ok()?.state.messages == 0).then_some(()) }
    })
    .await;
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_job_out_of_deliveries_is_dead_lettered_exactly_once() {
    let _serial = SERIAL.lock().await;
    let (nats, _store) = prepared_nats().await;
    let bus = bus(&nats).await;
    // Two nodes' dead-letter listeners (in this process: no scheduler may
    // take the job here, this test plays the worker that crashes on it).
    let mut listeners = Vec::new();
    for id in ["dl-a", "dl-b"] {
        let events = orfeas_actors::events::EventSink::spawn(bus.clone(), id, orfeas_wire::SecretKey::generate(), "orfeas".into());
        listeners.push(orfeas_actors::dead_letter::spawn(bus.clone(), events, id.into()).await.unwrap());
    }
    bus.client.flush().await.unwrap();
    let job = enqueue(&bus, "erin", Lane::Normal, params(), JobState::Admitted).await;
    let jobs = JobStore::new(bus.jobs.clone());
    // The consumer a node would make for erin's normal-lane jobs.
    let settings = orfeas_actors::settings::NodeSettings::local("dl", &nats.url, "models".into(), "store".into());
    let stream = bus.js.get_stream(subjects::QUEUE_STREAM).await.unwrap();
    let consumer = orfeas_actors::queue::agent_consumer(&stream, Lane::Normal, "erin", &settings, 100).await.unwrap();
    let max_deliver = consumer.cached_info().config.max_deliver;
    assert_eq!(max_deliver, 5, "the default");
    for attempt in 1..=max_deliver as u64 {
        let mut batch = consumer.fetch().max_messages(1).expires(Duration::from_secs(5)).messages().await.unwrap();
        let message = batch.next().await.expect("a delivery").unwrap();
        assert_eq!(message.info().unwrap().delivered as u64, attempt);
        // The crashing worker had claimed it.
        let (mut record, revision) = jobs.get("erin", &job).await.unwrap().unwrap();
        record.state = JobState::Running;
        record.attempt = attempt;
        jobs.update(&record, revision).await.unwrap();
        message.ack_with(jetstream::AckKind::Nak(None)).await.unwrap();
    }
    // Pullers keep asking (as nodes do): the server finds the message out of
    // deliveries and says so in the advisory instead of delivering it.
    let mut batch = consumer.fetch().max_messages(1).expires(Duration::from_secs(2)).messages().await.unwrap();
    assert!(batch.next().await.is_none(), "no sixth delivery");
    let done = terminals(&bus.js, "erin", &[job], Duration::from_secs(30)).await;
    let answers = &done[&job];
    assert_eq!(answers.len(), 1, "one answer: {answers:?}");
    match &answers[0].kind {
        EventKind::Failed(f) => assert_eq!((f.code, f.retryable), (ErrorCode::DeadLettered, false)),
        other => panic!("dead letter: {other:?}"),
    }
    assert_eq!(answers[0].seq, (max_deliver as u64) << 16 | 0xffff, "after every event of the last attempt");
    let (record, _) = jobs.get("erin", &job).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Failed);
    eventually("the dead letter removed from the queue", Duration::from_secs(10), || {
        let js = bus.js.clone();
        async move { (js.get_stream(subjects::QUEUE_STREAM).await.ok()?.info().await.ok()?.state.messages == 0).then_some(()) }
    })
    .await;
    // Only one listener wrote it: the event history holds one `failed`.
    let all = all_events(&bus.js, "erin").await;
    assert_eq!(all[&job].iter().filter(|e| e.kind.is_terminal()).count(), 1, "{:?}", all[&job]);
    for l in listeners {
        l.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_dead_letter_whose_advisory_nobody_heard_is_found_by_the_sweep() {
    let _serial = SERIAL.lock().await;
    let (nats, _store) = prepared_nats().await;
    let bus = bus(&nats).await;
    // No node listens while the job runs out of deliveries.
    let job = enqueue(&bus, "fred", Lane::Normal, params(), JobState::Admitted).await;
    let answered = enqueue(&bus, "fred", Lane::Normal, params(), JobState::Admitted).await;
    let jobs = JobStore::new(bus.jobs.clone());
    let settings = orfeas_actors::settings::NodeSettings::local("dl", &nats.url, "models".into(), "store".into());
    let stream = bus.js.get_stream(subjects::QUEUE_STREAM).await.unwrap();
    let consumer = orfeas_actors::queue::agent_consumer(&stream, Lane::Normal, "fred", &settings, 100).await.unwrap();
    let max_deliver = consumer.cached_info().config.max_deliver as u64;
    // Each delivery: claimed at its attempt, then it "crashes" (nak).
    for _ in 0..2 * max_deliver {
        let mut batch = consumer.fetch().max_messages(1).expires(Duration::from_secs(5)).messages().await.unwrap();
        let message = batch.next().await.expect("a delivery").unwrap();
        let attempt = message.info().unwrap().delivered as u64;
        let sent: AdmittedJob = orfeas_wire::from_cbor(&message.payload).unwrap();
        let (mut record, revision) = jobs.get("fred", &sent.job_id).await.unwrap().unwrap();
        record.state = JobState::Running;
        record.attempt = attempt;
        if sent.job_id == answered && attempt == max_deliver {
            // This one was answered on its last attempt, but the ack was lost.
            record.state = JobState::Completed;
        }
        jobs.update(&record, revision).await.unwrap();
        message.ack_with(jetstream::AckKind::Nak(None)).await.unwrap();
    }
    let mut batch = consumer.fetch().max_messages(1).expires(Duration::from_secs(2)).messages().await.unwrap();
    assert!(batch.next().await.is_none(), "no further delivery");
    assert_eq!(stream.clone().info().await.unwrap().state.messages, 2, "both messages stay in the queue");
    // The sweep a node's dead-letter task runs when it starts finds both.
    let events = orfeas_actors::events::EventSink::spawn(bus.clone(), "sweeper", orfeas_wire::SecretKey::generate(), "orfeas".into());
    let swept = orfeas_actors::dead_letter::sweep(&bus.js, &jobs, &events, "sweeper").await.unwrap();
    assert_eq!(swept, 2, "the job out of deliveries and the answered one");
    assert_eq!(orfeas_actors::dead_letter::sweep(&bus.js, &jobs, &events, "sweeper").await.unwrap(), 0, "nothing left");
    let done = terminals(&bus.js, "fred", &[job], Duration::from_secs(30)).await;
    assert_eq!(done[&job].len(), 1, "one answer: {:?}", done[&job]);
    match &done[&job][0].kind {
        EventKind::Failed(f) => assert_eq!(f.code, ErrorCode::DeadLettered),
        other => panic!("dead letter: {other:?}"),
    }
    eventually("both messages removed from the queue", Duration::from_secs(10), || {
        let js = bus.js.clone();
        async move { (js.get_stream(subjects::QUEUE_STREAM).await.ok()?.info().await.ok()?.state.messages == 0).then_some(()) }
    })
    .await;
    assert_eq!(jobs.get("fred", &answered).await.unwrap().unwrap().0.state, JobState::Completed, "an answered job keeps its answer");
    assert!(!all_events(&bus.js, "fred").await.get(&answered).is_some_and(|l| l.iter().any(|e| e.kind.is_terminal())), "nothing new said about it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_sigterm_finishes_running_jobs_hands_back_the_rest_and_none_is_lost() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let env = |latency: u64| node_env(latency, 2, &[("ORFEAS_SCHEDULER_SHUTDOWN_GRACE_S", "30")]);
    let mut first = start(&nats, "first", store.path(), env(1_500)).await;
    let (client, _) = agent(&nats.url, "frank").await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        let job = orfeas_wire::v1::SubmitJob {
            job_id: Uuid::now_v7(),
            model: "null".into(),
            image: ImageInput::Inline { media_type: "image/png".into(), data: common::example("mug.png") },
            formats: vec![Format::Stl],
            params: params(),
        };
        client.submit(&job).await.unwrap();
        ids.push(job.job_id);
    }
    let js = bus(&nats).await.js;
    // Under load: a batch is on the device.
    eventually("a job in inference", Duration::from_secs(60), || async {
        let events = stored_events(&js, "frank").await?;
        events.values().flatten().any(|(e, _)| matches!(e.kind, EventKind::Progress { stage: Stage::Inference, .. })).then_some(())
    })
    .await;
    let sent = now_ms();
    let status = first.terminate(Duration::from_secs(60));
    assert!(status.success(), "clean exit: {status}");
    assert!(first.log_text().contains("draining"), "the node drained");
    let _second = start(&nats, "second", store.path(), env(0)).await;
    let done = terminals(&js, "frank", &ids, Duration::from_secs(90)).await;
    let mut finished_by_first_after_term = 0;
    for id in &ids {
        let answer = one_completed(&done, id);
        if answer.node == "first" && answer.at_ms >= sent {
            finished_by_first_after_term += 1;
        }
    }
    assert!(finished_by_first_after_term >= 1, "jobs running at SIGTERM were finished, not dropped");
    assert!(done.values().filter(|t| t[0].node == "second").count() >= 1, "unstarted jobs were handed back to the queue");
}

fn null_submit() -> orfeas_wire::v1::SubmitJob {
    orfeas_wire::v1::SubmitJob {
        job_id: Uuid::now_v7(),
        model: "null".into(),
        image: ImageInput::Inline { media_type: "image/png".into(), data: common::example("mug.png") },
        formats: vec![Format::Stl],
        params: params(),
    }
}

/// How many jobs the fault tests submit (`ORFEAS_FAULTS_LONG=1`: 10×).
fn scale(n: usize) -> usize {
    if std::env::var_os("ORFEAS_FAULTS_LONG").is_some() {
        n * 10
    } else {
        n
    }
}

/// Every event of `agent` by job, once the events stream is readable.
async fn events_of(js: &jetstream::Context, agent: &str) -> HashMap<Uuid, Vec<Event>> {
    eventually("the events stream", Duration::from_secs(30), || async {
        Some(stored_events(js, agent).await?.into_iter().map(|(id, l)| (id, l.into_iter().map(|(e, _)| e).collect())).collect())
    })
    .await
}

/// Wait until every accepted job of `agent` has an answer; the ledger.
async fn settled(js: &jetstream::Context, agent: &str, attempted: &std::collections::HashSet<Uuid>, timeout: Duration, nodes: &[&NodeProcess]) -> common::ledger::Ledger {
    let started = Instant::now();
    loop {
        let ledger = common::ledger::Ledger::of(attempted, &events_of(js, agent).await);
        if ledger.lost.is_empty() && ledger.accepted > 0 {
            return ledger;
        }
        if started.elapsed() >= timeout {
            // The end of each node's log says where the lost jobs stopped.
            let logs: Vec<String> = nodes.iter().map(|n| {
                let text = n.log_text();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(200)..].join("\n")
            }).collect();
            panic!("not settled after {timeout:?}: {}\nlost: {:?}\n{}", ledger.line(), ledger.lost, logs.join("\n----\n"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_same_job_submitted_five_times_concurrently_runs_once() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let node = start(&nats, "dup", store.path(), node_env(300, 4, &[])).await;
    let (client, key) = agent(&nats.url, "gina").await;
    let job = null_submit();
    // Five separately signed copies (different issue times, so five
    // distinct messages on the submit stream), published at once.
    let now_s = now_ms() / 1000;
    let sends = (0..5u64).map(|i| {
        let (subject, bytes) = job.seal("gina", &key, "orfeas", now_s - i, 300);
        client.publish_raw(&job.job_id, subject, bytes)
    });
    for r in futures::future::join_all(sends).await {
        r.unwrap();
    }
    let js = bus(&nats).await.js;
    let attempted = [job.job_id].into_iter().collect();
    let ledger = settled(&js, "gina", &attempted, Duration::from_secs(60), &[&node]).await;
    println!("five copies: {}", ledger.line());
    ledger.assert_clean();
    assert_eq!((ledger.accepted, ledger.completed), (1, 1));
    let events = events_of(&js, "gina").await;
    let runs = events[&job.job_id].iter().filter(|e| matches!(e.kind, EventKind::Progress { stage: Stage::Inference, .. })).count();
    assert_eq!(runs, 1, "one run: {:?}", events[&job.job_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_nats_server_restarted_under_load_loses_no_accepted_job() {
    let _serial = SERIAL.lock().await;
    let mut nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let env = node_env(100, 4, &[("ORFEAS_SCHEDULER_ACK_WAIT_S", "10"), ("ORFEAS_SCHEDULER_PROGRESS_ACK_S", "2")]);
    let node = start(&nats, "survivor", store.path(), env).await;
    let (client, _) = agent(&nats.url, "hank").await;
    let n = scale(30);
    let mut attempted = std::collections::HashSet::new();
    let mut jobs = Vec::new();
    for _ in 0..n {
        let job = null_submit();
        client.submit(&job).await.unwrap();
        attempted.insert(job.job_id);
        jobs.push(job);
    }
    let js = bus(&nats).await.js;
    eventually("a few answers before the restart", Duration::from_secs(60), || async {
        let events = stored_events(&js, "hank").await?;
        (events.values().filter(|l| l.iter().any(|(e, _)| e.kind.is_terminal())).count() >= 3).then_some(())
    })
    .await;
    nats.restart();
    // Agents retry what was not confirmed; a repeat of a job is the same job.
    for job in &jobs {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = client.submit(job).await {
            assert!(Instant::now() < deadline, "resubmission never confirmed: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let js = bus(&nats).await.js;
    let ledger = settled(&js, "hank", &attempted, Duration::from_secs(120), &[&node]).await;
    println!("nats restart: {}", ledger.line());
    ledger.assert_clean();
    assert_eq!(ledger.accepted, n, "every job accepted (resubmitted after the restart)");
    assert_eq!(ledger.completed, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_full_system_answers_unavailable_at_once_with_retry_after() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let env = node_env(500, 2, &[("ORFEAS_INGRESS_SUBMIT_QUEUE_MAX", "6")]);
    let node = start(&nats, "full", store.path(), env).await;
    let (mut client, _) = agent(&nats.url, "ivan").await;
    let mut accepted = std::collections::HashSet::new();
    let mut refusal = None;
    for _ in 0..60 {
        let job = null_submit();
        let mut events = client.submit(&job).await.unwrap();
        let first = client.next_event(&mut events, Duration::from_secs(30)).await.unwrap();
        match first.kind {
            EventKind::Accepted { .. } => {
                accepted.insert(job.job_id);
            }
            EventKind::Rejected(f) => {
                refusal = Some((job.job_id, f));
                break;
            }
            other => panic!("unexpected first event {other:?}"),
        }
    }
    let (job_id, f) = refusal.unwrap_or_else(|| panic!("a full system refuses; {} accepted\n{}", accepted.len(), node.log_text()));
    assert_eq!((f.code, f.status, f.retryable, f.job_id), (ErrorCode::Unavailable, 503, true, Some(job_id)));
    let retry = f.retry_after_ms.expect("retry_after_ms");
    assert!((1_000..=60_000).contains(&retry), "{retry}");
    println!("backpressure: {} admitted, then refused with retry_after_ms {retry}", accepted.len());
    assert!(accepted.len() >= 6, "the first six are admitted: {}", accepted.len());
    // Refused means not admitted: no record, so the agent may send it again.
    let b = bus(&nats).await;
    assert!(JobStore::new(b.jobs.clone()).get("ivan", &job_id).await.unwrap().is_none());
    // The accepted ones are all answered.
    let ledger = settled(&b.js, "ivan", &accepted, Duration::from_secs(120), &[&node]).await;
    assert_eq!(ledger.completed, accepted.len(), "{}", ledger.line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_node_killed_mid_batch_its_jobs_complete_once_on_the_other() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    // A dead node's held jobs come back after ack_wait (3 s).
    let env = || node_env(1_000, 2, &[("ORFEAS_SCHEDULER_ACK_WAIT_S", "3"), ("ORFEAS_SCHEDULER_PROGRESS_ACK_S", "1")]);
    let mut victim = start(&nats, "victim", store.path(), env()).await;
    let survivor = start(&nats, "survivor", store.path(), env()).await;
    let (client, _) = agent(&nats.url, "jill").await;
    let mut attempted = std::collections::HashSet::new();
    for _ in 0..scale(20) {
        let job = null_submit();
        client.submit(&job).await.unwrap();
        attempted.insert(job.job_id);
    }
    let js = bus(&nats).await.js;
    // Mid-batch: the victim ran a batch (its `inference` event comes at the
    // end of the device time) and has the next one on its device.
    eventually("a batch on the victim's device", Duration::from_secs(60), || async {
        let events = stored_events(&js, "jill").await?;
        events.values().flatten().any(|(e, _)| e.node == "victim" && matches!(e.kind, EventKind::Progress { stage: Stage::Inference, .. })).then_some(())
    })
    .await;
    victim.kill();
    let killed_at = now_ms();
    let ledger = settled(&js, "jill", &attempted, Duration::from_secs(120), &[&victim, &survivor]).await;
    println!("kill -9 mid-batch: {}", ledger.line());
    ledger.assert_clean();
    assert_eq!((ledger.accepted, ledger.completed), (attempted.len(), attempted.len()));
    let events = events_of(&js, "jill").await;
    let rerun = events
        .values()
        .filter(|l| l.iter().any(|e| e.node == "victim" && matches!(e.kind, EventKind::Progress { .. })) && l.iter().any(|e| e.node == "survivor" && matches!(e.kind, EventKind::Completed { .. }) && e.at_ms > killed_at))
        .count();
    println!("jobs the victim had started and the survivor finished: {rerun}");
    assert!(rerun >= 1, "the victim's batch was finished by the survivor");
}
