//! NATS-level isolation with the shipped generator (`orfeas nats-config`):
//! a real nats-server runs the written authorization block, a real node
//! connects as its node user, agent alice submits and follows her job with
//! her signing key as nkey; agent bob can neither subscribe to alice's
//! events or inbox nor publish on her submit or status subjects — the
//! server refuses each with a permissions violation, and nothing of alice's
//! reaches him.

mod common;

use std::{
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{eventually, NatsServer};
use futures::{FutureExt, StreamExt};
use orfeas_wire::{
    client::{isolated_options, AgentClient},
    v1::EventKind,
    SecretKey,
};

const WAIT: Duration = Duration::from_secs(60);

/// Connect as `agent` and collect the server's error messages.
async fn connect(url: &str, agent: &str, key: &SecretKey) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    let client = isolated_options(agent, key)
        .event_callback(move |event| {
            let sink = sink.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    sink.lock().unwrap().push(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .unwrap();
    (client, errors)
}

async fn refused(errors: &Arc<Mutex<Vec<String>>>, what: &str, subject: &str) {
    let want = format!("permissions violation for {what} to \"{subject}\"");
    eventually(&want, WAIT, || {
        let found = errors.lock().unwrap().iter().any(|e| e.to_lowercase().contains(&want.to_lowercase()));
        async move { found.then_some(()) }
    })
    .await;
}

async fn finish(client: &mut AgentClient, events: &mut orfeas_wire::client::JobEvents) -> EventKind {
    loop {
        let event = client.next_event(events, WAIT).await.expect("a verified event");
        if event.kind.is_terminal() {
            return event.kind;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_agent_b_cannot_read_a_events_or_publish_as_a() {
    let alice_key = SecretKey::generate();
    let bob_key = SecretKey::generate();
    let node_key = SecretKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("isolation.conf");
    let out = Command::new(common::orfeas_bin())
        .args(["nats-config", "--out"])
        .arg(&conf)
        .args(["--agent", &format!("alice={}", alice_key.public().to_hex())])
        .args(["--agent", &format!("bob={}", bob_key.public().to_hex())])
        .args(["--node", &node_key.public().nats_user()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let nats = NatsServer::start_with(&std::fs::read_to_string(&conf).unwrap());

    // Without credentials nobody gets in.
    let anonymous = tokio::time::timeout(WAIT, async_nats::connect(&nats.url)).await.expect("the server answers");
    assert!(anonymous.is_err(), "a connection without credentials was let in");

    // A real node, as the node user.
    let seed_file = dir.path().join("node.seed");
    std::fs::write(&seed_file, node_key.nats_seed()).unwrap();
    let store = tempfile::tempdir().unwrap();
    let log = dir.path().join("node.log");
    let mut node = Command::new(common::orfeas_bin())
        .args(["serve", "--nats", &nats.url])
        .env("ORFEAS_NODE_ID", "n1")
        .env("ORFEAS_STORE_ROOT", store.path())
        .env("ORFEAS_MODELS_ENABLED", "null")
        .env("ORFEAS_NATS_NKEY_SEED_FILE", &seed_file)
        .env("ORFEAS_HTTP_LISTEN", "")
        .env("ORFEAS_DEVICES_CPU_THREADS", "1")
        .env_remove("OMP_WAIT_POLICY")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let operator = async_nats::ConnectOptions::with_nkey(node_key.nats_seed()).connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(operator.clone());
    let started = Instant::now();
    loop {
        if let Some(status) = node.try_wait().unwrap() {
            panic!("node exited with {status}: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        let ready = match js.get_stream("ORFEAS_QUEUE").await {
            Ok(queue) => queue.consumer_info("scheduler").await.is_ok(),
            Err(_) => false,
        };
        if ready {
            break;
        }
        assert!(started.elapsed() < WAIT, "node did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let registry = orfeas_actors::registry::Registry::new(js.get_key_value("orfeas_agents").await.unwrap(), js.get_key_value("orfeas_nodes").await.unwrap());
    registry.add_agent_key("alice", &alice_key.public().to_hex()).await.unwrap();
    registry.add_agent_key("bob", &bob_key.public().to_hex()).await.unwrap();

    // Alice works normally: JetStream publish, node keys from KV, her events.
    let (alice_nats, alice_errors) = connect(&nats.url, "alice", &alice_key).await;
    let mut alice = AgentClient::new(alice_nats, "alice", alice_key.clone(), "orfeas");
    let mut job = common::example_job("mug.png", vec![]);
    job.model = "null".into();
    let mut events = alice.submit(&job).await.unwrap();
    assert!(matches!(finish(&mut alice, &mut events).await, EventKind::Completed { .. }));
    let status = alice.status(&job.job_id, WAIT).await.unwrap();
    assert_eq!(status.state, "completed");

    // Bob: every way into alice's traffic is refused by the server.
    let (bob_nats, bob_errors) = connect(&nats.url, "bob", &bob_key).await;
    let mut spy = bob_nats.subscribe("orfeas.events.alice.>").await.unwrap();
    refused(&bob_errors, "subscription", "orfeas.events.alice.>").await;
    let mut inbox_spy = bob_nats.subscribe("_INBOX_alice.>").await.unwrap();
    refused(&bob_errors, "subscription", "_INBOX_alice.>").await;
    let mut watcher = operator.subscribe("orfeas.jobs.submit.>").await.unwrap();
    operator.flush().await.unwrap();
    let (subject, forged) = job.seal("alice", &bob_key, "orfeas", orfeas_actors::now_ms() / 1000, 60);
    bob_nats.publish(subject.clone(), forged.into()).await.unwrap();
    refused(&bob_errors, "publish", "orfeas.jobs.submit.alice").await;
    bob_nats.publish("orfeas.status.alice", "x".into()).await.unwrap();
    refused(&bob_errors, "publish", "orfeas.status.alice").await;
    // Bob's own subject works, and it is the first thing the node side
    // sees from him: the forged message never reached the server's subject.
    let mut own = common::example_job("mug.png", vec![]);
    own.model = "null".into();
    let mut bob = AgentClient::new(bob_nats.clone(), "bob", bob_key.clone(), "orfeas");
    let mut bob_events = bob.submit(&own).await.unwrap();
    let first = tokio::time::timeout(WAIT, watcher.next()).await.unwrap().unwrap();
    assert_eq!(first.subject.as_str(), "orfeas.jobs.submit.bob");
    assert!(matches!(finish(&mut bob, &mut bob_events).await, EventKind::Completed { .. }));

    // Alice's next job: her events reach her, not bob's refused subscriptions.
    let mut second = common::example_job("mug.png", vec![]);
    second.model = "null".into();
    let mut events = alice.submit(&second).await.unwrap();
    assert!(matches!(finish(&mut alice, &mut events).await, EventKind::Completed { .. }));
    // Published to bob after all of alice's events: once it arrived, any of
    // hers would have arrived before it.
    let mut bob_again = common::example_job("mug.png", vec![]);
    bob_again.model = "null".into();
    let mut bob_events = bob.submit(&bob_again).await.unwrap();
    assert!(matches!(finish(&mut bob, &mut bob_events).await, EventKind::Completed { .. }));
    assert!(spy.next().now_or_never().flatten().is_none(), "bob received one of alice's events");
    assert!(inbox_spy.next().now_or_never().flatten().is_none(), "bob received a message from alice's inbox");
    assert!(alice_errors.lock().unwrap().is_empty(), "alice was refused something: {:?}", alice_errors.lock().unwrap());
    let _ = node.kill();
    let _ = node.wait();
}

/// The shipped example (`nats/isolation.conf`) is exactly what the
/// generator writes for its documented keys, and nats-server accepts it.
#[test]
fn isolation_shipped_example_matches_the_generator() {
    let shipped = std::fs::read_to_string(common::repo().join("nats/isolation.conf")).unwrap();
    let key = |byte: u8| SecretKey::from_seed([byte; 32]).public().to_hex();
    let out = Command::new(common::orfeas_bin())
        .arg("nats-config")
        .args(["--agent", &format!("alice={}", key(0x42))])
        .args(["--agent", &format!("bob={}", key(0x43))])
        .args(["--node", &key(0x07)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let generated = String::from_utf8(out.stdout).unwrap();
    assert!(shipped.ends_with(&generated), "nats/isolation.conf differs from `orfeas nats-config` for its keys:\n{generated}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("isolation.conf"), &shipped).unwrap();
    std::fs::write(dir.path().join("server.conf"), "listen: 127.0.0.1:-1\ninclude \"isolation.conf\"\n").unwrap();
    let check = Command::new(common::nats_server_bin()).arg("-t").arg("-c").arg(dir.path().join("server.conf")).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}
