//! The operator endpoint of a real node: health, readiness, and metrics
//! that move while a real job runs.

mod common;

use std::time::Duration;

use common::{agent, eventually, http_get, metric, NatsServer, NodeOptions, NodeProcess};
use orfeas_wire::v1::{EventKind, Format, SubmitJob};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observability_metrics_move_during_a_job_and_probes_answer() {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&nats, NodeOptions { node_id: "obs", store: store.path(), env: vec![] }).await;
    let port = node.http_port;

    // OpenMP reads its settings when libtorch loads; the node restarts
    // itself with passive waiting so idle OpenMP threads do not spin.
    let environ = std::fs::read(format!("/proc/{}/environ", node.pid())).unwrap();
    assert!(environ.split(|b| *b == 0).any(|v| v == b"OMP_WAIT_POLICY=PASSIVE"), "node runs without OMP_WAIT_POLICY=PASSIVE");

    assert_eq!(http_get(port, "/healthz").0, 200);
    // The process reports its consumers before it marks itself warm: poll.
    eventually("ready", Duration::from_secs(60), || async { (http_get(port, "/readyz").0 == 200).then_some(()) }).await;
    assert_eq!(http_get(port, "/nope").0, 404);

    let (_, before) = http_get(port, "/metrics");
    let accepted = r#"orfeas_requests_total{agent="eve",op="submit",outcome="accepted"}"#;
    let completed = r#"orfeas_jobs_finished_total{outcome="completed"}"#;
    let batches = r#"orfeas_batch_size_count{model="inflate"}"#;
    let meshing = r#"orfeas_stage_seconds_count{stage="meshing"}"#;
    let load = r#"orfeas_model_load_seconds{device="cpu",model="inflate"}"#;
    assert_eq!(metric(&before, accepted), 0.0);
    assert_eq!(metric(&before, completed), 0.0);
    assert!(metric(&before, load) > 0.0, "model load time is recorded at start");
    assert!(before.contains("# TYPE orfeas_dead_letters_total counter"), "every metric is exposed from the start");

    let (mut client, _) = agent(&nats.url, "eve").await;
    let job = common::example_job("mug.png", vec![Format::Stl]);
    let mut events = client.submit(&job).await.unwrap();
    loop {
        match client.next_event(&mut events, Duration::from_secs(120)).await.unwrap().kind {
            EventKind::Completed { .. } => break,
            EventKind::Failed(f) | EventKind::Rejected(f) => panic!("{f:?}"),
            _ => {}
        }
    }
    // The node counts a finished job right after the event's PubAck, so the
    // agent can see `completed` a moment before the counter moves: poll.
    let after = eventually("the completion to be counted", Duration::from_secs(10), || async {
        let (_, text) = http_get(port, "/metrics");
        (metric(&text, completed) >= 1.0).then_some(text)
    })
    .await;
    assert_eq!(metric(&after, accepted), 1.0, "{after}");
    assert_eq!(metric(&after, completed), 1.0);
    assert!(metric(&after, batches) >= 1.0);
    assert!(metric(&after, meshing) >= 1.0);
    assert!(metric(&after, r#"orfeas_job_seconds_count{model="inflate"}"#) >= 1.0);
    // A refused message counts under an unregistered label, not a new series per token.
    let (mut stranger, _) = agent(&nats.url, "mallory").await;
    let forged = SubmitJob { job_id: Uuid::now_v7(), ..job.clone() };
    let (_, bytes) = forged.seal("mallory", &orfeas_wire::SecretKey::generate(), "orfeas", now_s(), 60);
    let mut refused = stranger.publish_raw(&forged.job_id, orfeas_wire::subjects::submit("mallory"), bytes).await.unwrap();
    let event = stranger.next_event(&mut refused, Duration::from_secs(60)).await.unwrap();
    assert!(matches!(event.kind, EventKind::Rejected(_)));
    let (_, last) = http_get(port, "/metrics");
    assert_eq!(metric(&last, r#"orfeas_errors_total{agent="_unregistered",code="unknown_key"}"#), 1.0, "{last}");
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}
