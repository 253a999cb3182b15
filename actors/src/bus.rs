//! The NATS side of a node: connection, streams, consumers and buckets, and
//! the pull loop that feeds actors by credit.
//!
//! Durability boundary: every hop where a job could be lost is a JetStream
//! stream with explicit acks; this module only creates and reads them, the
//! actors decide when to ack (after the next durable step is confirmed).

use std::{sync::Arc, time::Duration};

use async_nats::{
    jetstream::{
        self,
        consumer::{pull, AckPolicy},
        kv,
    },
    HeaderMap,
};
use futures::StreamExt;
use orfeas_wire::subjects;
use tokio::{sync::Semaphore, task::JoinHandle};

use crate::{metrics, settings::NodeSettings};

/// Broken infrastructure on the NATS side. Per-job problems are not here.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Could not connect.
    #[error("cannot connect to nats at {url}: {detail}")]
    Connect {
        /// The URL tried.
        url: String,
        /// Why.
        detail: String,
    },
    /// A stream, consumer or bucket could not be created or read.
    #[error("jetstream setup of {what} failed: {detail}")]
    Setup {
        /// Which resource.
        what: String,
        /// Why.
        detail: String,
    },
    /// A publish was not confirmed by the server.
    #[error("publish to {subject} not confirmed: {detail}")]
    Publish {
        /// Where.
        subject: String,
        /// Why.
        detail: String,
    },
    /// An existing stream or bucket has other settings than this node's.
    #[error("{what} exists with other settings: {detail}; change the configuration to match, or run `orfeas streams --apply` to update it")]
    Conflict {
        /// `stream NAME` or `bucket NAME`.
        what: String,
        /// Every differing setting with both values.
        detail: String,
    },
    /// The nats-server is older than this node supports.
    #[error("nats_server_too_old: nats-server {found} (from {origin}) is older than the supported minimum {minimum}: {fix}", fix = crate::server_version::FIX)]
    ServerTooOld {
        /// The version text found.
        found: String,
        /// The oldest supported version.
        minimum: String,
        /// Where the version was read.
        origin: String,
    },
    /// A key-value operation failed.
    #[error("kv {op} of {key} failed: {detail}")]
    Kv {
        /// get / create / update.
        op: &'static str,
        /// The key.
        key: String,
        /// Why.
        detail: String,
    },
}

impl BusError {
    /// Stable code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "nats_connect",
            Self::Setup { .. } => "jetstream_setup",
            Self::Publish { .. } => "publish_unconfirmed",
            Self::Kv { .. } => "kv_failed",
            Self::Conflict { .. } => "stream_conflict",
            Self::ServerTooOld { .. } => "nats_server_too_old",
        }
    }
}

/// A durable pull consumer `name` of a work-queue stream: explicit acks,
/// the node's `ack_wait` and `max_deliver`, at most `max_ack_pending`
/// unacked messages (add a filter for consumers of part of the stream).
pub fn work_consumer(name: &str, settings: &NodeSettings, max_ack_pending: i64) -> pull::Config {
    pull::Config {
        durable_name: Some(name.to_string()),
        name: Some(name.to_string()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_deliver: settings.max_deliver,
        max_ack_pending,
        // Consumers of a work queue have the stream's replicas.
        num_replicas: settings.replicas,
        ..Default::default()
    }
}

fn setup_err(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Setup { what: what.to_string(), detail: e.to_string() }
}

/// A connected node's handles to NATS and JetStream.
#[derive(Clone)]
pub struct Bus {
    /// Core NATS client.
    pub client: async_nats::Client,
    /// JetStream context.
    pub js: jetstream::Context,
    /// Job records.
    pub jobs: kv::Store,
    /// Agent registry.
    pub agents: kv::Store,
    /// Node registry (event-signing keys).
    pub nodes: kv::Store,
    /// Nonces of verified messages (replay protection).
    pub nonces: kv::Store,
    /// Per agent, the jobs holding a concurrency slot.
    pub active: kv::Store,
    /// Batch records.
    pub batches: kv::Store,
}

/// Connect to NATS with a client name, retrying forever once connected.
/// `url` may list several servers of a cluster, comma separated; the client
/// also learns the other servers from the one it reaches.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, BusError> {
    connect_as(url, name, None).await
}

/// [`connect`] authenticating with an nkey seed (`SU…`) when given: a
/// node's user in a server running the isolation config (`nats/`).
pub async fn connect_as(url: &str, name: &str, nkey_seed: Option<&str>) -> Result<async_nats::Client, BusError> {
    let servers: Vec<&str> = url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let options = match nkey_seed {
        Some(seed) => async_nats::ConnectOptions::with_nkey(seed.trim().to_string()),
        None => async_nats::ConnectOptions::new(),
    };
    options
        .name(name)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => crate::metrics::NATS_RECONNECTS.inc(),
                async_nats::Event::Disconnected => tracing::warn!("nats connection lost; reconnecting"),
                other => tracing::debug!(event = %other, "nats event"),
            }
        })
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .connect(servers)
        .await
        .map_err(|e| BusError::Connect { url: url.to_string(), detail: e.to_string() })
}

impl Bus {
    /// Create (or reuse) every stream and bucket the node needs, refusing
    /// existing ones whose settings differ (see [`crate::topology`]).
    pub async fn ensure(client: async_nats::Client, settings: &NodeSettings) -> Result<Self, BusError> {
        // Before any stream: an older server cannot serve this node.
        crate::server_version::check_client(&client).await?;
        let js = jetstream::new(client.clone());
        let mut buckets = crate::topology::ensure(&js, settings).await?.into_iter();
        let mut next = |name: &str| buckets.next().ok_or_else(|| setup_err(name, "bucket missing"));
        let (jobs, agents, nodes) = (next(subjects::JOBS_BUCKET)?, next(subjects::AGENTS_BUCKET)?, next(subjects::NODES_BUCKET)?);
        let (nonces, active, batches) = (next(subjects::NONCES_BUCKET)?, next(subjects::ACTIVE_BUCKET)?, next(subjects::BATCHES_BUCKET)?);
        Ok(Self { client, js, jobs, agents, nodes, nonces, active, batches })
    }

    /// Connect to the buckets of an existing deployment (agents and tools).
    pub async fn attach(client: async_nats::Client) -> Result<Self, BusError> {
        let js = jetstream::new(client.clone());
        let get = |name: &'static str| {
            let js = js.clone();
            async move { js.get_key_value(name).await.map_err(|e| setup_err(name, e)) }
        };
        Ok(Self {
            jobs: get(subjects::JOBS_BUCKET).await?,
            agents: get(subjects::AGENTS_BUCKET).await?,
            nodes: get(subjects::NODES_BUCKET).await?,
            nonces: get(subjects::NONCES_BUCKET).await?,
            active: get(subjects::ACTIVE_BUCKET).await?,
            batches: get(subjects::BATCHES_BUCKET).await?,
            client,
            js,
        })
    }

    /// The durable pull consumer named `name` on `stream`.
    pub async fn consumer(
        &self,
        stream: &str,
        name: &str,
        settings: &NodeSettings,
        max_ack_pending: i64,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>, BusError> {
        let stream_handle = self.js.get_stream(stream).await.map_err(|e| setup_err(stream, e))?;
        stream_handle.get_or_create_consumer(name, work_consumer(name, settings, max_ack_pending)).await.map_err(|e| setup_err(name, e))
    }

    /// Publish to a stream and wait for the server's PubAck.
    pub async fn publish_acked(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: bytes::Bytes,
    ) -> Result<jetstream::publish::PublishAck, BusError> {
        let perr = |e: &dyn std::fmt::Display| BusError::Publish { subject: subject.clone(), detail: e.to_string() };
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|e| perr(&e))?;
        ack.await.map_err(|e| perr(&e))
    }
}

/// How long to wait before redelivering a message whose handling failed on
/// infrastructure (NATS, KV, the store) at its `delivered`-th delivery:
/// 1 s doubling to 30 s. Every redelivery counts against `max_deliver`;
/// doubling makes the default 5 deliveries span ~15 s, longer than a NATS
/// leader election, instead of 5 s.
pub fn retry_delay(delivered: u64) -> Duration {
    Duration::from_secs(1u64 << delivered.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

/// What the pull loop hands to its actor.
pub type Deliver = Box<dyn Fn(jetstream::Message) -> bool + Send + Sync>;

/// Pull from `consumer` while credits are available and hand each message
/// to `deliver`. One credit is consumed per message; the actor returns it
/// (`credits.add_permits(1)`) when it is done with the message. The loop
/// ends when `deliver` returns false (the actor is gone) or on `on_error`
/// after repeated failures, so the supervisor can rebuild the consumer.
pub fn spawn_puller(
    consumer: jetstream::consumer::Consumer<pull::Config>,
    credits: Arc<Semaphore>,
    deliver: Deliver,
    on_error: Box<dyn Fn(String) + Send + Sync>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let Ok(first) = credits.clone().acquire_owned().await else { return };
            first.forget();
            let extra = credits.available_permits().min(255);
            let mut wanted = 1 + extra;
            if extra > 0 {
                match credits.clone().try_acquire_many_owned(extra as u32) {
                    Ok(permits) => permits.forget(),
                    Err(_) => wanted = 1,
                }
            }
            let batch = consumer.batch().max_messages(wanted).expires(Duration::from_secs(1)).messages().await;
            let mut got = 0usize;
            match batch {
                Ok(messages) => {
                    failures = 0;
                    let Some(n) = deliver_all(messages, &deliver, PULL_PATIENCE).await else { return };
                    got = n;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, "pull request failed");
                    if failures >= 20 {
                        on_error(format!("pull failed {failures} times: {e}"));
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            // Credits not used by this batch go back.
            credits.add_permits(wanted.saturating_sub(got));
        }
    })
}

/// The longest wait for the next message of one pull request. A request
/// the server took and then lost (it restarted, or the connection dropped
/// between request and answer) is never answered, and a fetch without an
/// expiry would wait for it forever: the pull loop would stall while the
/// jobs stay queued. Past this the request is given up; any message the
/// server did send to it is redelivered after `ack_wait`.
pub const PULL_PATIENCE: Duration = Duration::from_secs(5);

/// Hand every message of one pull request to `deliver`: how many came, or
/// `None` once `deliver` refuses one (the Scheduler is gone). Ends when the
/// request is answered in full, ends early, or goes silent for `patience`.
pub async fn deliver_all<T, E: std::fmt::Display>(
    mut messages: impl futures::Stream<Item = Result<T, E>> + Unpin,
    deliver: impl Fn(T) -> bool,
    patience: Duration,
) -> Option<usize> {
    let mut got = 0;
    loop {
        let item = match tokio::time::timeout(patience, messages.next()).await {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(got, patience_s = patience.as_secs_f64(), "pull request unanswered; giving it up");
                metrics::PULLS_ABANDONED.inc();
                break;
            }
        };
        match item {
            Ok(message) => {
                got += 1;
                if !deliver(message) {
                    return None;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "pull batch ended");
                break;
            }
        }
    }
    Some(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pull_request_that_goes_silent_is_given_up_with_what_came() {
        let seen = std::sync::Mutex::new(Vec::new());
        let take = |n: u32| {
            seen.lock().unwrap().push(n);
            true
        };
        // Two messages, then the server is gone: no end, no error, ever.
        let silent = futures::stream::iter([Ok::<u32, String>(1), Ok(2)]).chain(futures::stream::pending());
        let got = deliver_all(silent, &take, Duration::from_millis(50)).await;
        assert_eq!(got, Some(2));
        assert_eq!(*seen.lock().unwrap(), vec![1, 2]);
        // An error ends the batch with what came before it.
        let broken = futures::stream::iter([Ok::<u32, String>(3), Err("409".to_string()), Ok(4)]);
        assert_eq!(deliver_all(broken, &take, Duration::from_secs(60)).await, Some(1));
        // A refused message (the Scheduler is gone) stops the pulling.
        let refused = futures::stream::iter([Ok::<u32, String>(5), Ok(6)]);
        assert_eq!(deliver_all(refused, |_| false, Duration::from_secs(60)).await, None);
        assert!(metrics::PULLS_ABANDONED.get() >= 1);
    }

    #[test]
    fn retry_delay_doubles_to_a_cap() {
        let delays: Vec<u64> = (1..=7).map(|d| retry_delay(d).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(retry_delay(0), Duration::from_secs(1));
    }
}
