//! No accepted job is lost when its node dies: a node killed with SIGKILL
//! in the middle of a job (after `accepted`, before any answer) leaves the
//! job unacked in JetStream; a restarted node picks it up after `ack_wait`
//! and answers it exactly once.

mod common;

use std::time::Duration;

use common::{agent, eventually, NatsServer, NodeOptions, NodeProcess};
use futures::StreamExt;
use orfeas_wire::v1::{Event, EventKind, Format, Stage};

/// Node settings for these tests: a short ack_wait so redelivery happens
/// within a test, and a simulated device that keeps a job in flight long
/// enough to stop the node mid-job.
fn slow_node(latency_ms: u64) -> Vec<(&'static str, String)> {
    vec![
        ("ORFEAS_SCHEDULER_ACK_WAIT_S", "3".to_string()),
        ("ORFEAS_SCHEDULER_PROGRESS_ACK_S", "1".to_string()),
        ("ORFEAS_NODE_SIMULATED_LATENCY_MS", latency_ms.to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_killed_node_job_completes_once_after_restart() {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let mut first = NodeProcess::start(&nats, NodeOptions { node_id: "first", store: store.path(), env: slow_node(60_000) }).await;
    let (mut client, _) = agent(&nats.url, "carol").await;
    let job = common::example_job("mug.png", vec![Format::Stl]);
    let mut events = client.submit(&job).await.unwrap();
    // Wait until the first node is working on it (preprocessing precedes the
    // simulated device time), then kill it without any shutdown.
    loop {
        let event = client.next_event(&mut events, Duration::from_secs(60)).await.unwrap();
        assert!(!event.kind.is_terminal(), "finished before the kill: {event:?}");
        if matches!(event.kind, EventKind::Progress { stage: Stage::Preprocessing, .. }) {
            break;
        }
    }
    first.kill();

    let _second = NodeProcess::start(&nats, NodeOptions { node_id: "second", store: store.path(), env: slow_node(0) }).await;
    let completed: Event = loop {
        let event = client.next_event(&mut events, Duration::from_secs(60)).await.unwrap();
        match &event.kind {
            EventKind::Completed { .. } => break event,
            EventKind::Failed(f) | EventKind::Rejected(f) => panic!("job failed after restart: {f:?}"),
            _ => {}
        }
    };
    assert_eq!(completed.node, "second", "the restarted node answered");
    assert!(completed.seq >> 16 >= 2, "answer comes from a later delivery attempt (seq {:#x})", completed.seq);

    // The queue drains (job acked) and the event history holds exactly one
    // terminal answer for the job.
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    eventually("the job to be acked", Duration::from_secs(30), || {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream("ORFEAS_QUEUE").await.ok()?;
            let info = stream.info().await.ok()?;
            (info.state.messages == 0).then_some(())
        }
    })
    .await;
    let history = js.get_stream("ORFEAS_EVENTS").await.unwrap();
    let subject = orfeas_wire::subjects::events("carol", &job.job_id);
    let consumer = history
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: subject.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.fetch().max_messages(1000).messages().await.unwrap();
    let mut terminal = 0;
    while let Some(Ok(message)) = messages.next().await {
        let event = client.verify_event(&subject, &message.payload).await.unwrap();
        if event.kind.is_terminal() {
            terminal += 1;
        }
    }
    assert_eq!(terminal, 1, "exactly one final answer");
    assert!(store.path().join("jobs/carol").join(job.job_id.to_string()).join("model.stl").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_sigterm_stops_cleanly_without_acking_unfinished_work() {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    // Running jobs get 5 s to finish before they are handed back.
    let mut env = slow_node(60_000);
    env.push(("ORFEAS_SCHEDULER_SHUTDOWN_GRACE_S", "5".to_string()));
    let mut first = NodeProcess::start(&nats, NodeOptions { node_id: "leaving", store: store.path(), env }).await;
    let (mut client, _) = agent(&nats.url, "dave").await;
    let job = common::example_job("star.png", vec![Format::Stl]);
    let mut events = client.submit(&job).await.unwrap();
    loop {
        let event = client.next_event(&mut events, Duration::from_secs(60)).await.unwrap();
        if matches!(event.kind, EventKind::Progress { stage: Stage::Preprocessing, .. }) {
            break;
        }
    }
    // A graceful stop: exits 0 well before the 60 s batch would finish.
    let status = first.terminate(Duration::from_secs(30));
    assert!(status.success(), "SIGTERM exit: {status:?}\n{}", first.log_text());
    assert!(first.log_text().contains("shutting down"));
    // The unfinished job was not acked: another node answers it.
    let _second = NodeProcess::start(&nats, NodeOptions { node_id: "staying", store: store.path(), env: slow_node(0) }).await;
    let completed = loop {
        let event = client.next_event(&mut events, Duration::from_secs(60)).await.unwrap();
        match &event.kind {
            EventKind::Completed { .. } => break event,
            EventKind::Failed(f) | EventKind::Rejected(f) => panic!("{f:?}"),
            _ => {}
        }
    };
    assert_eq!(completed.node, "staying");
}
