//! A cluster on loopback: three `nats-server` processes from the shipped
//! `nats/cluster/` files (R3 streams, fsync on every write) and real
//! `orfeas serve` processes whose device is the `null` model with a
//! simulated per-batch latency (a stand-in GPU), under real faults.
//!
//! - throughput: 2 nodes deliver ≥ 1.8× the jobs per second of 1 node;
//! - a NATS server (the queue's stream leader) killed under load: service
//!   continues, every accepted job completes, none twice;
//! - an orfeas node killed with SIGKILL under load: its jobs complete on
//!   the other node, and it disappears from the node registry;
//! - a third node started mid-run takes work at once; `orfeas nodes` lists it;
//! - a node configured for R3 refuses R1 streams, naming the setting, until
//!   `orfeas streams --apply` moves them to R3.
//!
//! Short by default (CI). `ORFEAS_CLUSTER_LONG=1` runs 4× the jobs:
//! `ORFEAS_CLUSTER_LONG=1 cargo test --release --test cluster -- --test-threads 1 --nocapture`
//! (numbers are printed; see md/reliability.md and md/benchmarks.md).

mod common;

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use common::{
    agent,
    cluster::{stored_events, Accounting, NatsCluster},
    eventually, NodeOptions, NodeProcess,
};
use orfeas_actors::registry::Registry;
use orfeas_wire::{
    client::AgentClient,
    subjects,
    v1::{Event, Format, ImageInput, JobParams, SubmitJob},
};
use uuid::Uuid;

/// The cluster tests share two cores; one at a time keeps the throughput
/// numbers meaningful.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn scale() -> usize {
    if std::env::var_os("ORFEAS_CLUSTER_LONG").is_some() {
        4
    } else {
        1
    }
}

/// A node of the cluster: R3, only the null model, a simulated device of
/// `latency_ms` per batch of at most `max_batch` jobs, and (for fault
/// tests) a short `(ack_wait, progress ack)` in seconds so held jobs of a
/// dead node come back within seconds.
fn node_env(
    latency_ms: u64,
    max_batch: usize,
    ack: Option<(u64, u64)>,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("ORFEAS_NATS_REPLICAS", "3".to_string()),
        ("ORFEAS_MODELS_ENABLED", "null".to_string()),
        ("ORFEAS_NODE_SIMULATED_LATENCY_MS", latency_ms.to_string()),
        ("ORFEAS_SCHEDULER_MAX_BATCH", max_batch.to_string()),
    ];
    if let Some((ack_wait, progress)) = ack {
        env.push(("ORFEAS_SCHEDULER_ACK_WAIT_S", ack_wait.to_string()));
        env.push(("ORFEAS_SCHEDULER_PROGRESS_ACK_S", progress.to_string()));
    }
    env
}

async fn start_node(
    cluster: &NatsCluster,
    id: &str,
    store: &std::path::Path,
    env: Vec<(&'static str, String)>,
) -> NodeProcess {
    NodeProcess::start_on(
        &cluster.url(),
        cluster.log_dir(),
        NodeOptions {
            node_id: id,
            store,
            env,
        },
    )
    .await
}

/// A dead node's jobs come back after 3 s.
const QUICK_REDELIVERY: Option<(u64, u64)> = Some((3, 1));
/// Held jobs outlive a NATS leader election (a few seconds without acks)
/// without being redelivered, as with the production 60 s / 15 s.
const SURVIVE_ELECTION: Option<(u64, u64)> = Some((10, 2));

/// A small job for the null model: STL only, no previews.
fn null_job() -> SubmitJob {
    SubmitJob {
        job_id: Uuid::now_v7(),
        model: "null".into(),
        image: ImageInput::Inline {
            media_type: "image/png".into(),
            data: common::example("mug.png"),
        },
        formats: vec![Format::Stl],
        params: JobParams {
            previews: Some(false),
            ..Default::default()
        },
    }
}

/// Submit until the submit stream confirms (an agent retries through a
/// leader election; a repeat of the same job is the same job).
async fn submit(client: &AgentClient, job: &SubmitJob) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.submit(job).await {
            Ok(_) => return,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "submission of {} never confirmed: {e}",
                    job.job_id
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn submit_many(client: &AgentClient, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let job = null_job();
        submit(client, &job).await;
        ids.push(job.job_id);
    }
    ids
}

async fn jetstream(cluster: &NatsCluster) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(
        orfeas_actors::bus::connect(&cluster.url(), "orfeas-test")
            .await
            .unwrap(),
    )
}

/// Wait until every job in `jobs` is accepted and completed; returns the
/// accounting (and fails on a failed or doubled answer).
async fn all_completed(
    cluster: &NatsCluster,
    js: &async_nats::jetstream::Context,
    agent: &str,
    jobs: &[Uuid],
    timeout: Duration,
) -> Accounting {
    let wanted: HashSet<Uuid> = jobs.iter().copied().collect();
    let started = Instant::now();
    let mut last = String::new();
    loop {
        if let Some(events) = stored_events(js, agent).await {
            let acc = Accounting::of(&events);
            assert!(acc.failed.is_empty(), "jobs failed: {:?}", acc.failed);
            assert!(
                acc.doubled.is_empty(),
                "jobs answered twice: {:?}",
                acc.doubled
            );
            let done = wanted
                .iter()
                .filter(|j| acc.completed.contains_key(j))
                .count();
            let accepted = wanted.iter().filter(|j| acc.accepted.contains(j)).count();
            if done == wanted.len() {
                return acc;
            }
            last = format!("{accepted} accepted, {done} of {} completed", wanted.len());
        }
        if started.elapsed() > timeout {
            let missing: Vec<String> = match stored_events(js, agent).await {
                Some(events) => Accounting::of(&events)
                    .missing()
                    .iter()
                    .map(|j| j.to_string())
                    .collect(),
                None => vec!["(the events stream could not be read)".into()],
            };
            panic!(
                "after {timeout:?}: {last}; missing {missing:?}\n{}",
                cluster.log_tails(60)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Completed jobs per second between the 10th and 90th percentile of
/// completion times (leaves out ramp-up and the tail).
fn throughput(events: &[&Event]) -> f64 {
    let mut at: Vec<u64> = events.iter().map(|e| e.at_ms).collect();
    at.sort_unstable();
    let (lo, hi) = (at.len() / 10, at.len() * 9 / 10);
    (hi - lo) as f64 / ((at[hi] - at[lo]) as f64 / 1000.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_two_nodes_deliver_at_least_1_8x_the_throughput_of_one() {
    let _serial = SERIAL.lock().await;
    let cluster = NatsCluster::start().await;
    let store = tempfile::tempdir().unwrap();
    // 1 s per batch of up to 4: one node tops out near 4 jobs/s.
    let env = || node_env(1000, 4, None);
    let _a = start_node(&cluster, "tp-a", store.path(), env()).await;
    let (client, _) = agent(&cluster.url(), "bench").await;
    let js = jetstream(&cluster).await;
    let n = 40 * scale();

    let one = submit_many(&client, n).await;
    let acc = all_completed(
        &cluster,
        &js,
        "bench",
        &one,
        Duration::from_secs(60 * scale() as u64),
    )
    .await;
    let one_node = throughput(&one.iter().map(|j| &acc.completed[j]).collect::<Vec<_>>());

    let _b = start_node(&cluster, "tp-b", store.path(), env()).await;
    let two = submit_many(&client, n).await;
    let acc = all_completed(
        &cluster,
        &js,
        "bench",
        &two,
        Duration::from_secs(60 * scale() as u64),
    )
    .await;
    let answered: Vec<&Event> = two.iter().map(|j| &acc.completed[j]).collect();
    let two_nodes = throughput(&answered);
    let by_b = answered.iter().filter(|e| e.node == "tp-b").count();
    eprintln!("cluster throughput ({n} jobs per run): 1 node {one_node:.2} jobs/s, 2 nodes {two_nodes:.2} jobs/s, ratio {:.2}; tp-b answered {by_b}", two_nodes / one_node);
    assert!(
        by_b >= n / 4 && by_b <= n * 3 / 4,
        "work is shared: tp-b answered {by_b} of {n}"
    );
    assert!(
        two_nodes >= 1.8 * one_node,
        "2 nodes {two_nodes:.2}/s vs 1 node {one_node:.2}/s: ratio {:.2} < 1.8",
        two_nodes / one_node
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_nats_server_killed_under_load_loses_no_accepted_job() {
    let _serial = SERIAL.lock().await;
    let mut cluster = NatsCluster::start().await;
    let store = tempfile::tempdir().unwrap();
    let _a = start_node(
        &cluster,
        "nk-a",
        store.path(),
        node_env(500, 4, SURVIVE_ELECTION),
    )
    .await;
    let _b = start_node(
        &cluster,
        "nk-b",
        store.path(),
        node_env(500, 4, SURVIVE_ELECTION),
    )
    .await;
    let js = jetstream(&cluster).await;
    let n = 24 * scale();

    // The worst server to lose: the one leading the job queue's stream.
    let victim = NatsCluster::index_of(&cluster.leader_of(subjects::QUEUE_STREAM).await);
    // The agent is connected to the two survivors (its own connection is
    // not what is under test; the nodes' are).
    let (client, _) = agent(&cluster.url_without(victim), "steady").await;
    let before = submit_many(&client, n).await;
    let answered_before = eventually(
        "some jobs to complete before the fault",
        Duration::from_secs(60),
        || {
            let js = js.clone();
            async move {
                stored_events(&js, "steady")
                    .await
                    .map(|e| Accounting::of(&e).completed.len())
                    .filter(|n| *n >= 4)
            }
        },
    )
    .await;
    let killed_at = Instant::now();
    cluster.kill(victim);
    // Service continues: new submissions are accepted and answered.
    let after = submit_many(&client, n / 2).await;
    let js = jetstream(&cluster).await;
    let jobs: Vec<Uuid> = before.iter().chain(&after).copied().collect();
    let acc = all_completed(
        &cluster,
        &js,
        "steady",
        &jobs,
        Duration::from_secs(120 * scale() as u64),
    )
    .await;
    eprintln!(
        "nats server orfeas-n{} (queue leader) killed with {} of {} jobs answered; all {} accepted jobs completed once, {:.1}s after the kill",
        victim + 1,
        answered_before,
        before.len(),
        jobs.len(),
        killed_at.elapsed().as_secs_f64()
    );
    assert_eq!(
        acc.missing(),
        Vec::<Uuid>::new(),
        "accepted but never completed"
    );
    for job in &jobs {
        assert!(
            acc.accepted.contains(job),
            "job {job} was confirmed by the submit stream but never accepted"
        );
    }
    let leader = cluster.leader_of(subjects::QUEUE_STREAM).await;
    assert_ne!(
        NatsCluster::index_of(&leader),
        victim,
        "a surviving server leads the queue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_killed_under_load_its_jobs_complete_on_the_other() {
    let _serial = SERIAL.lock().await;
    let cluster = NatsCluster::start().await;
    let store = tempfile::tempdir().unwrap();
    // 2 jobs per second per node: the run lasts long enough to see the
    // doomed node's load in its heartbeats (every 3 s) before the kill.
    let mut doomed = start_node(
        &cluster,
        "doomed",
        store.path(),
        node_env(1000, 2, QUICK_REDELIVERY),
    )
    .await;
    let _survivor = start_node(
        &cluster,
        "survivor",
        store.path(),
        node_env(1000, 2, QUICK_REDELIVERY),
    )
    .await;
    let (mut client, _) = agent(&cluster.url(), "carol").await;
    let js = jetstream(&cluster).await;
    let registry = Registry::new(
        js.get_key_value(subjects::AGENTS_BUCKET).await.unwrap(),
        js.get_key_value(subjects::NODES_BUCKET).await.unwrap(),
    );
    let n = 48 * scale();
    let jobs = submit_many(&client, n).await;

    // Kill the node while it holds jobs (its heartbeat says so) and after it
    // answered some.
    eventually(
        "the doomed node to hold jobs after answering some",
        Duration::from_secs(60),
        || {
            let registry = registry.clone();
            async move {
                let nodes = registry.nodes().await.ok()?;
                let d = nodes.iter().find(|n| n.node_id == "doomed")?;
                (d.finished_jobs >= 4 && d.held_jobs > 0).then_some(())
            }
        },
    )
    .await;
    doomed.kill();
    let killed_at = Instant::now();

    // The dead node stops heartbeating and leaves the registry; the
    // survivor stays.
    eventually(
        "the killed node to leave the registry",
        Duration::from_secs(40),
        || {
            let registry = registry.clone();
            async move {
                let ids: Vec<String> = registry
                    .nodes()
                    .await
                    .ok()?
                    .into_iter()
                    .map(|n| n.node_id)
                    .collect();
                (!ids.contains(&"doomed".to_string()) && ids.contains(&"survivor".to_string()))
                    .then_some(())
            }
        },
    )
    .await;
    eprintln!(
        "killed node left the registry {:.1}s after the kill",
        killed_at.elapsed().as_secs_f64()
    );

    let acc = all_completed(
        &cluster,
        &js,
        "carol",
        &jobs,
        Duration::from_secs(120 * scale() as u64),
    )
    .await;
    let recovered: Vec<&Event> = jobs
        .iter()
        .map(|j| &acc.completed[j])
        .filter(|e| e.node == "survivor" && e.seq >> 16 >= 2)
        .collect();
    eprintln!(
        "orfeas node killed (SIGKILL) holding jobs; {} of its jobs were redelivered to the survivor; all {n} completed {:.1}s after the kill",
        recovered.len(),
        killed_at.elapsed().as_secs_f64()
    );
    assert!(
        !recovered.is_empty(),
        "jobs the dead node held were answered by the survivor on a later delivery"
    );
    // The survivor's answers verify against its registered key.
    for e in recovered.iter().take(3) {
        let (_, bytes) = stored_events(&js, "carol").await.unwrap()[&e.job_id]
            .iter()
            .find(|(x, _)| x.seq == e.seq)
            .cloned()
            .unwrap();
        let verified = client
            .verify_event(&subjects::events("carol", &e.job_id), &bytes)
            .await
            .unwrap();
        assert_eq!(verified.node, "survivor");
    }

}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_third_node_started_mid_run_takes_work() {
    let _serial = SERIAL.lock().await;
    let cluster = NatsCluster::start().await;
    let store = tempfile::tempdir().unwrap();
    let env = || node_env(1000, 2, None);
    let _a = start_node(&cluster, "mid-a", store.path(), env()).await;
    let _b = start_node(&cluster, "mid-b", store.path(), env()).await;
    let (client, _) = agent(&cluster.url(), "dora").await;
    let js = jetstream(&cluster).await;
    let n = 40 * scale();
    let jobs = submit_many(&client, n).await;
    eventually("the first answers", Duration::from_secs(60), || {
        let js = js.clone();
        async move {
            stored_events(&js, "dora")
                .await
                .map(|e| Accounting::of(&e))
                .filter(|a| !a.completed.is_empty())
                .map(|_| ())
        }
    })
    .await;

    let started = Instant::now();
    let _c = start_node(&cluster, "mid-c", store.path(), env()).await;
    let ready = started.elapsed();
    // No configuration changed anywhere: the new node pulls by its free slots.
    let first_answer = eventually(
        "the new node to answer a job",
        Duration::from_secs(30),
        || {
            let js = js.clone();
            async move {
                let acc = Accounting::of(&stored_events(&js, "dora").await?);
                acc.completed
                    .values()
                    .any(|e| e.node == "mid-c")
                    .then(|| started.elapsed())
            }
        },
    )
    .await;
    // `orfeas nodes` lists all three with their load.
    let out = std::process::Command::new(common::orfeas_bin())
        .args(["nodes", "--nats", &cluster.url()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in ["mid-a", "mid-b", "mid-c"] {
        assert!(
            text.lines().any(|l| l.starts_with(id)
                && l.contains("ready")
                && l.contains("cpu")
                && l.contains("null")),
            "{id} missing: {text}"
        );
    }
    assert!(text.contains("3 live node(s)"), "{text}");

    let acc = all_completed(
        &cluster,
        &js,
        "dora",
        &jobs,
        Duration::from_secs(120 * scale() as u64),
    )
    .await;
    let by_c = jobs
        .iter()
        .filter(|j| acc.completed[j].node == "mid-c")
        .count();
    eprintln!(
        "third node ready {:.1}s after its start, first answer {:.1}s after its start; it answered {by_c} of {n} jobs",
        ready.as_secs_f64(),
        first_answer.as_secs_f64()
    );
    assert!(
        by_c >= 2,
        "the new node took a fair share, not one job: {by_c}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_r3_node_refuses_r1_streams_until_applied() {
    let _serial = SERIAL.lock().await;
    let cluster = NatsCluster::start().await;
    let store = tempfile::tempdir().unwrap();
    // A deployment that started on one server's worth of replicas.
    let mut r1 = node_env(0, 4, None);
    r1[0].1 = "1".into();
    let mut first = start_node(&cluster, "r1", store.path(), r1).await;
    assert!(first.terminate(Duration::from_secs(30)).success());

    // An R3 node refuses to start, naming the stream and the setting.
    let out = std::process::Command::new(common::orfeas_bin())
        .args(["serve", "--nats", &cluster.url()])
        .envs(node_env(0, 4, None))
        .env("ORFEAS_NODE_ID", "r3")
        .env("ORFEAS_STORE_ROOT", store.path())
        .env("ORFEAS_HTTP_LISTEN", "")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("stream ORFEAS_SUBMIT")
            && err.contains("num_replicas = 1, this node wants 3 (nats.replicas)"),
        "{err}"
    );

    // `orfeas streams` reports every difference; --apply fixes them.
    let streams = |apply: bool| {
        let mut cmd = std::process::Command::new(common::orfeas_bin());
        cmd.args(["streams", "--nats", &cluster.url()])
            .env("ORFEAS_NATS_REPLICAS", "3");
        if apply {
            cmd.arg("--apply");
        }
        cmd.output().unwrap()
    };
    let check = streams(false);
    let text = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(3), "{text}");
    for what in [
        "stream ORFEAS_SUBMIT",
        "stream ORFEAS_QUEUE",
        "stream ORFEAS_EVENTS",
        "bucket orfeas_jobs",
        "bucket orfeas_agents",
        "bucket orfeas_nodes",
    ] {
        assert!(
            text.contains(&format!("{what} has num_replicas = 1")),
            "{what}: {text}"
        );
    }
    let applied = streams(true);
    assert!(
        applied.status.success(),
        "{}{}",
        String::from_utf8_lossy(&applied.stdout),
        String::from_utf8_lossy(&applied.stderr)
    );
    let js = jetstream(&cluster).await;
    for stream in [
        subjects::SUBMIT_STREAM,
        subjects::QUEUE_STREAM,
        subjects::EVENTS_STREAM,
        "KV_orfeas_nodes",
    ] {
        let info = js
            .get_stream(stream)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        assert_eq!(info.config.num_replicas, 3, "{stream}");
    }
    let consumer = js
        .get_stream(subjects::QUEUE_STREAM)
        .await
        .unwrap()
        .consumer_info(subjects::SCHEDULER_CONSUMER)
        .await
        .unwrap()
        .clone();
    assert_eq!(
        consumer.config.num_replicas, 3,
        "the work queue's consumer follows its stream"
    );
    assert!(
        streams(false).status.success(),
        "nothing differs after --apply"
    );

    // Now the R3 node starts and serves.
    let _r3 = start_node(&cluster, "r3", store.path(), node_env(0, 4, None)).await;
    let (client, _) = agent(&cluster.url(), "erin").await;
    let jobs = submit_many(&client, 2).await;
    all_completed(&cluster, &js, "erin", &jobs, Duration::from_secs(60)).await;
}
