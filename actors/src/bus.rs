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
        stream::{DiscardPolicy, RetentionPolicy, StorageType},
    },
    HeaderMap,
};
use futures::StreamExt;
use orfeas_wire::subjects;
use tokio::{sync::Semaphore, task::JoinHandle};

use crate::settings::NodeSettings;

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
        }
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
}

/// Connect to NATS with a client name, retrying forever once connected.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, BusError> {
    async_nats::ConnectOptions::new()
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
        .connect(url)
        .await
        .map_err(|e| BusError::Connect { url: url.to_string(), detail: e.to_string() })
}

impl Bus {
    /// Create (or reuse) every stream, consumer and bucket the node needs.
    pub async fn ensure(client: async_nats::Client, settings: &NodeSettings) -> Result<Self, BusError> {
        let js = jetstream::new(client.clone());
        let replicas = settings.replicas;
        // Both job streams are work queues on file: a message lives until a
        // node acks it. A full queue refuses new messages at once (the
        // overload signal); discarding old would silently drop accepted work.
        let work_queue = |name: &str, subject: &str, max_messages: i64| jetstream::stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            retention: RetentionPolicy::WorkQueue,
            discard: DiscardPolicy::New,
            max_messages,
            max_age: Duration::from_secs(24 * 3600),
            duplicate_window: Duration::from_secs(15 * 60),
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        for config in [
            work_queue(subjects::SUBMIT_STREAM, subjects::SUBMIT_WILDCARD, settings.submit_queue_max),
            work_queue(subjects::QUEUE_STREAM, subjects::QUEUE_WILDCARD, -1),
        ] {
            let name = config.name.clone();
            js.get_or_create_stream(config).await.map_err(|e| setup_err(&name, e))?;
        }
        js.get_or_create_stream(jetstream::stream::Config {
            name: subjects::EVENTS_STREAM.into(),
            subjects: vec![subjects::EVENTS_WILDCARD.into()],
            retention: RetentionPolicy::Limits,
            max_age: Duration::from_secs(24 * 3600),
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| setup_err(subjects::EVENTS_STREAM, e))?;
        let bucket = |name: &str, history: i64| kv::Config {
            bucket: name.to_string(),
            history,
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        let jobs = ensure_bucket(&js, bucket(subjects::JOBS_BUCKET, 1)).await?;
        let agents = ensure_bucket(&js, bucket(subjects::AGENTS_BUCKET, 5)).await?;
        let nodes = ensure_bucket(&js, bucket(subjects::NODES_BUCKET, 1)).await?;
        Ok(Self { client, js, jobs, agents, nodes })
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
        stream_handle
            .get_or_create_consumer(
                name,
                pull::Config {
                    durable_name: Some(name.to_string()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: settings.ack_wait,
                    max_deliver: settings.max_deliver,
                    max_ack_pending,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| setup_err(name, e))
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

async fn ensure_bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, BusError> {
    let name = config.bucket.clone();
    match js.get_key_value(&name).await {
        Ok(store) => Ok(store),
        Err(_) => js.create_key_value(config).await.map_err(|e| setup_err(&name, e)),
    }
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
                Ok(mut messages) => {
                    failures = 0;
                    while let Some(item) = messages.next().await {
                        match item {
                            Ok(message) => {
                                got += 1;
                                if !deliver(message) {
                                    return;
                                }
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "pull batch ended");
                                break;
                            }
                        }
                    }
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
