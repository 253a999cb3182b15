//! A 3-server NATS cluster from the shipped `nats/cluster/n{1,2,3}.conf`
//! (free loopback ports swapped in, stores in a temp dir), plus helpers to
//! account for jobs from the events stream.

use std::{
    collections::HashMap,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures::StreamExt;
use orfeas_wire::{
    envelope::{self, ContentKind},
    v1::{Event, EventKind},
};
use uuid::Uuid;

use super::{eventually, free_port, nats_server_bin, repo};

/// Ports of the shipped files: clients, monitoring, routes.
const SHIPPED: [[u16; 3]; 3] = [[4222, 4223, 4224], [8222, 8223, 8224], [6222, 6223, 6224]];

/// Three nats-server processes forming cluster `orfeas`.
pub struct NatsCluster {
    servers: Vec<Option<Child>>,
    configs: Vec<std::path::PathBuf>,
    /// `nats://127.0.0.1:<port>` of each server.
    pub urls: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Start all three and wait until JetStream answers (a meta leader exists).
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("orfeas-test-cluster-")
            .tempdir()
            .unwrap();
        let mut ports: HashMap<u16, u16> = HashMap::new();
        for shipped in SHIPPED.iter().flatten() {
            ports.insert(*shipped, free_port());
        }
        let mut configs = Vec::new();
        let mut urls = Vec::new();
        for i in 1..=3 {
            let mut text =
                std::fs::read_to_string(repo().join(format!("nats/cluster/n{i}.conf"))).unwrap();
            assert!(
                text.contains("sync_interval: always"),
                "n{i}.conf must fsync every write"
            );
            for (shipped, free) in &ports {
                text = text.replace(
                    &format!("127.0.0.1:{shipped}"),
                    &format!("127.0.0.1:{free}"),
                );
            }
            let store = dir.path().join(format!("n{i}"));
            text = text.replace(
                &format!("/var/lib/orfeas/nats/n{i}"),
                &store.display().to_string(),
            );
            assert!(
                !text.contains("/var/lib"),
                "store dir of n{i}.conf not replaced"
            );
            let conf = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&conf, text).unwrap();
            configs.push(conf);
            urls.push(format!("nats://127.0.0.1:{}", ports[&SHIPPED[0][i - 1]]));
        }
        let mut cluster = Self {
            servers: vec![None, None, None],
            configs,
            urls,
            dir,
        };
        for i in 0..3 {
            cluster.launch(i);
        }
        cluster.wait_jetstream().await;
        cluster
    }

    fn launch(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("n{}.log", i + 1)))
            .unwrap();
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&self.configs[i])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.servers[i] = Some(child);
        let port: u16 = self.urls[i].rsplit(':').next().unwrap().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server n{} did not start: {}",
                i + 1,
                std::fs::read_to_string(self.dir.path().join(format!("n{}.log", i + 1))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every server, comma separated (what nodes and agents are given).
    pub fn url(&self) -> String {
        self.urls.join(",")
    }

    /// The same list without server `i` (a client that never knew it).
    pub fn url_without(&self, i: usize) -> String {
        self.urls
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, u)| u.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Index of the server named `orfeas-n<k>`.
    pub fn index_of(name: &str) -> usize {
        name.strip_prefix("orfeas-n")
            .and_then(|k| k.parse::<usize>().ok())
            .expect("server name orfeas-n<k>")
            - 1
    }

    /// SIGKILL server `i` (its files stay; it can be started again).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start server `i` again on its ports and store.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.launch(i);
    }

    async fn wait_jetstream(&self) {
        let client = orfeas_actors::bus::connect(&self.url(), "orfeas-test")
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        eventually("the JetStream meta leader", Duration::from_secs(30), || {
            let js = js.clone();
            async move { js.query_account().await.ok().map(|_| ()) }
        })
        .await;
    }

    /// Name of the server leading stream `stream`.
    pub async fn leader_of(&self, stream: &str) -> String {
        let client = orfeas_actors::bus::connect(&self.url(), "orfeas-test")
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let mut s = js.get_stream(stream).await.unwrap();
        s.info()
            .await
            .unwrap()
            .cluster
            .clone()
            .and_then(|c| c.leader)
            .expect("a replicated stream has a leader")
    }

    /// Where a node's log goes.
    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `lines` lines of every server and node log (for failures).
    pub fn log_tails(&self, lines: usize) -> String {
        let mut files: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        files.sort();
        let mut out = String::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "\n==== {} (last {lines} lines)\n",
                f.file_name().unwrap().to_string_lossy()
            ));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..3 {
            self.kill(i);
        }
    }
}

/// The events of one agent's jobs as stored in `ORFEAS_EVENTS`, decoded
/// without verification (a killed node's key expires with its record; the
/// tests verify the answers of live nodes separately).
pub async fn stored_events(
    js: &async_nats::jetstream::Context,
    agent: &str,
) -> Option<HashMap<Uuid, Vec<(Event, Vec<u8>)>>> {
    let stream = js
        .get_stream(orfeas_wire::subjects::EVENTS_STREAM)
        .await
        .ok()?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: format!("orfeas.events.{agent}.>"),
            inactive_threshold: Duration::from_secs(10),
            // No acks: an acking consumer stops after max_ack_pending (1000)
            // unacked messages, fewer than a long run's events.
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .ok()?;
    let pending = consumer.cached_info().num_pending as usize;
    let mut out: HashMap<Uuid, Vec<(Event, Vec<u8>)>> = HashMap::new();
    let mut got = 0;
    while got < pending {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .ok()?;
        let before = got;
        while let Some(message) = batch.next().await {
            let message = message.ok()?;
            got += 1;
            let opened = envelope::open(&message.payload, 1 << 20, ContentKind::Event).ok()?;
            let event: Event = orfeas_wire::from_cbor(&opened.payload).ok()?;
            out.entry(event.job_id)
                .or_default()
                .push((event, message.payload.to_vec()));
        }
        if got == before {
            return None;
        }
    }
    Some(out)
}

/// What the events say about each job.
#[derive(Debug, Default)]
pub struct Accounting {
    /// Jobs with an `accepted` event.
    pub accepted: Vec<Uuid>,
    /// Completed jobs and the node that answered.
    pub completed: HashMap<Uuid, Event>,
    /// Jobs with more than one distinct terminal answer (must stay empty).
    pub doubled: Vec<Uuid>,
    /// Jobs that failed or were rejected (must stay empty).
    pub failed: Vec<(Uuid, String)>,
}

impl Accounting {
    pub fn of(events: &HashMap<Uuid, Vec<(Event, Vec<u8>)>>) -> Self {
        let mut out = Self::default();
        for (job_id, list) in events {
            if list
                .iter()
                .any(|(e, _)| matches!(e.kind, EventKind::Accepted { .. }))
            {
                out.accepted.push(*job_id);
            }
            // A terminal answer re-sent after a lost ack keeps its seq: one answer.
            let mut terminal: Vec<&Event> = list
                .iter()
                .map(|(e, _)| e)
                .filter(|e| e.kind.is_terminal())
                .collect();
            terminal.sort_by_key(|e| e.seq);
            terminal.dedup_by_key(|e| e.seq);
            if terminal.len() > 1 {
                out.doubled.push(*job_id);
            }
            for e in terminal {
                match &e.kind {
                    EventKind::Completed { .. } => {
                        out.completed.insert(*job_id, e.clone());
                    }
                    EventKind::Failed(f) | EventKind::Rejected(f) => out
                        .failed
                        .push((*job_id, format!("{}: {}", f.code, f.error))),
                    _ => {}
                }
            }
        }
        out
    }

    /// Accepted jobs without a completed answer.
    pub fn missing(&self) -> Vec<Uuid> {
        self.accepted
            .iter()
            .filter(|j| !self.completed.contains_key(j))
            .copied()
            .collect()
    }
}
