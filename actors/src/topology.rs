//! The JetStream layout every node of a deployment shares: the streams and
//! KV buckets with their settings, and the check that an existing one
//! matches them.
//!
//! A node creates what is missing with the replica count of `nats.replicas`
//! and refuses to start when an existing stream or bucket differs in a
//! setting that decides whether jobs survive (subjects, retention, storage,
//! replicas, discard policy, limits): two nodes with different ideas of the
//! queue would each be right half the time. `orfeas streams --apply` is the
//! explicit way to move a deployment to new settings (e.g. R1 → R3); it
//! updates what JetStream can change in place and still refuses the rest.

use std::time::Duration;

use async_nats::jetstream::{
    self, kv,
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};
use orfeas_wire::subjects;

use crate::{bus::BusError, settings::NodeSettings};

/// How long a node's record lives in `orfeas_nodes` without a heartbeat:
/// the bucket's `max_age`, shared by every node of a deployment.
pub const NODE_RECORD_TTL: Duration = Duration::from_secs(15);
/// How often a node rewrites its record: five beats per TTL, so a node
/// disappears only after missing several in a row (a NATS leader election
/// takes a few seconds).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);

/// How long a job may wait in a stream before JetStream drops it.
const JOB_TTL: Duration = Duration::from_secs(24 * 3600);
/// Publishes with the same `Nats-Msg-Id` within this window are stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// What the server uses when a stream asks for no duplicate window.
const SERVER_DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The streams, in creation order.
pub fn streams(settings: &NodeSettings) -> Vec<stream::Config> {
    let replicas = settings.replicas;
    // Both job streams are work queues on file: a message lives until a
    // node acks it. A full queue refuses new messages at once (the
    // overload signal); discarding old would silently drop accepted work.
    let work_queue = |name: &str, subject: &str, max_messages: i64| stream::Config {
        name: name.into(),
        subjects: vec![subject.into()],
        retention: RetentionPolicy::WorkQueue,
        discard: DiscardPolicy::New,
        max_messages,
        max_age: JOB_TTL,
        duplicate_window: DUPLICATE_WINDOW,
        storage: StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    vec![
        work_queue(
            subjects::SUBMIT_STREAM,
            subjects::SUBMIT_WILDCARD,
            settings.submit_queue_max,
        ),
        work_queue(subjects::QUEUE_STREAM, subjects::QUEUE_WILDCARD, -1),
        stream::Config {
            name: subjects::EVENTS_STREAM.into(),
            subjects: vec![subjects::EVENTS_WILDCARD.into()],
            retention: RetentionPolicy::Limits,
            max_age: JOB_TTL,
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
        // Append-only: nothing can be deleted or purged through NATS.
        stream::Config {
            name: subjects::AUDIT_STREAM.into(),
            subjects: vec![subjects::AUDIT_WILDCARD.into()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            num_replicas: replicas,
            deny_delete: true,
            deny_purge: true,
            ..Default::default()
        },
    ]
}

/// The KV buckets.
pub fn buckets(settings: &NodeSettings) -> Vec<kv::Config> {
    let bucket = |name: &str, history: i64, max_age: Duration| kv::Config {
        bucket: name.to_string(),
        history,
        max_age,
        storage: StorageType::File,
        num_replicas: settings.replicas,
        ..Default::default()
    };
    vec![
        bucket(subjects::JOBS_BUCKET, 1, Duration::ZERO),
        bucket(subjects::AGENTS_BUCKET, 5, Duration::ZERO),
        // Heartbeats: a node that stops writing its record disappears.
        bucket(subjects::NODES_BUCKET, 1, NODE_RECORD_TTL),
        // Replay protection: a nonce outlives every window it is valid in.
        bucket(subjects::NONCES_BUCKET, 1, crate::gate::NONCE_TTL),
        bucket(subjects::ACTIVE_BUCKET, 1, Duration::ZERO),
        bucket(subjects::BATCHES_BUCKET, 1, Duration::ZERO),
    ]
}

/// How long an agent's upload stays in [`subjects::UPLOADS_BUCKET`]: as
/// long as a job may wait in the queue.
pub const UPLOAD_TTL: Duration = JOB_TTL;

/// The object store agents upload images to for submission by reference.
pub fn uploads(settings: &NodeSettings) -> jetstream::object_store::Config {
    jetstream::object_store::Config {
        bucket: subjects::UPLOADS_BUCKET.into(),
        description: Some("images agents submit by reference; object names <agent>/...".into()),
        max_age: UPLOAD_TTL,
        storage: StorageType::File,
        num_replicas: settings.replicas,
        ..Default::default()
    }
}

/// The stream behind KV bucket `bucket`.
pub fn bucket_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// One setting where an existing stream differs from what this node wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// `stream ORFEAS_QUEUE` or `bucket orfeas_nodes`.
    pub what: String,
    /// The setting, as NATS names it (`num_replicas`, `max_msgs`, …).
    pub field: &'static str,
    /// Its value on the server.
    pub existing: String,
    /// The value this node is configured for.
    pub wanted: String,
    /// Whether JetStream can change it in place (`orfeas streams --apply`).
    pub updatable: bool,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} has {} = {}, this node wants {}",
            self.what, self.field, self.existing, self.wanted
        )?;
        if let Some(key) = config_key(self.field) {
            write!(f, " ({key})")?;
        }
        Ok(())
    }
}

/// The configuration key behind a stream setting, when there is one.
fn config_key(field: &str) -> Option<&'static str> {
    match field {
        "num_replicas" => Some("nats.replicas"),
        "max_msgs" => Some("ingress.submit_queue_max"),
        _ => None,
    }
}

/// Unlimited is `-1` on the server whatever the client sent (0 or -1).
fn limit(value: i64) -> String {
    if value <= 0 {
        "unlimited".into()
    } else {
        value.to_string()
    }
}

fn age(value: Duration) -> String {
    if value.is_zero() {
        "unlimited".into()
    } else {
        format!("{}s", value.as_secs())
    }
}

/// The compared settings of a stream, normalised the way the server stores
/// them. `(name, value, updatable in place)`.
fn stream_fields(c: &stream::Config) -> Vec<(&'static str, String, bool)> {
    let mut subjects = c.subjects.clone();
    subjects.sort();
    let window = if c.duplicate_window.is_zero() {
        SERVER_DEFAULT_DUPLICATE_WINDOW
    } else {
        c.duplicate_window
    };
    vec![
        ("subjects", subjects.join(","), false),
        (
            "retention",
            format!("{:?}", c.retention).to_lowercase(),
            false,
        ),
        ("storage", format!("{:?}", c.storage).to_lowercase(), false),
        ("num_replicas", c.num_replicas.max(1).to_string(), true),
        ("discard", format!("{:?}", c.discard).to_lowercase(), true),
        ("max_msgs", limit(c.max_messages), true),
        ("max_bytes", limit(c.max_bytes), true),
        ("max_age", age(c.max_age), true),
        ("max_msg_size", limit(c.max_message_size.into()), true),
        (
            "max_msgs_per_subject",
            limit(c.max_messages_per_subject),
            true,
        ),
        ("duplicate_window", format!("{}s", window.as_secs()), true),
    ]
}

/// Where `existing` (as the server reports it) differs from `wanted`.
pub fn compare_stream(wanted: &stream::Config, existing: &stream::Config) -> Vec<Conflict> {
    let mut conflicts = diff(
        &format!("stream {}", wanted.name),
        stream_fields(wanted),
        stream_fields(existing),
    );
    // Widening the queue to per-agent subjects keeps every message.
    for c in &mut conflicts {
        if c.field == "subjects" && c.existing == subjects::QUEUE_WILDCARD_LANES && c.wanted == subjects::QUEUE_WILDCARD {
            c.updatable = true;
        }
    }
    conflicts
}

/// Where the stream of an existing bucket differs from `wanted`. Only the
/// settings orfeas chooses are compared; the rest are the client library's
/// KV conventions.
pub fn compare_bucket(wanted: &kv::Config, existing: &stream::Config) -> Vec<Conflict> {
    let fields = |replicas: usize, storage: StorageType, history: i64, max_age: Duration| {
        vec![
            ("num_replicas", replicas.max(1).to_string(), true),
            ("storage", format!("{storage:?}").to_lowercase(), false),
            ("history", limit(history), true),
            ("max_age", age(max_age), true),
        ]
    };
    diff(
        &format!("bucket {}", wanted.bucket),
        fields(
            wanted.num_replicas,
            wanted.storage,
            wanted.history.max(1),
            wanted.max_age,
        ),
        fields(
            existing.num_replicas,
            existing.storage,
            existing.max_messages_per_subject,
            existing.max_age,
        ),
    )
}

fn diff(
    what: &str,
    wanted: Vec<(&'static str, String, bool)>,
    existing: Vec<(&'static str, String, bool)>,
) -> Vec<Conflict> {
    wanted
        .into_iter()
        .zip(existing)
        .filter(|((_, w, _), (_, e, _))| w != e)
        .map(|((field, wanted, updatable), (_, existing, _))| Conflict {
            what: what.to_string(),
            field,
            existing,
            wanted,
            updatable,
        })
        .collect()
}

fn setup_err(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Setup {
        what: what.to_string(),
        detail: e.to_string(),
    }
}

/// The config of stream `name`, or `None` when it does not exist.
async fn existing(js: &jetstream::Context, name: &str) -> Result<Option<stream::Config>, BusError> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream.cached_info().config.clone())),
        Err(e) => match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(setup_err(name, e)),
        },
    }
}

fn refuse(conflicts: Vec<Conflict>) -> BusError {
    BusError::Conflict {
        what: conflicts[0].what.clone(),
        detail: conflicts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// A queue stream from before per-agent queues (`orfeas.jobs.queue.*`) is
/// widened in place to `orfeas.jobs.queue.>`: a superset, so every queued
/// message stays where it is (the lane-wide consumers drain them).
async fn widen_queue_subjects(
    js: &jetstream::Context,
    wanted: &stream::Config,
    current: stream::Config,
) -> Result<stream::Config, BusError> {
    if wanted.name != subjects::QUEUE_STREAM || current.subjects != [subjects::QUEUE_WILDCARD_LANES] {
        return Ok(current);
    }
    tracing::info!(stream = %wanted.name, "widening the queue's subjects to per-agent queues");
    let mut widened = current;
    widened.subjects = vec![subjects::QUEUE_WILDCARD.into()];
    match js.update_stream(&widened).await {
        Ok(info) => Ok(info.config),
        // Another node widened it first.
        Err(e) => existing(js, &wanted.name).await?.ok_or_else(|| setup_err(&wanted.name, e)),
    }
}

/// Create what is missing; refuse (naming the stream and setting) when an
/// existing stream or bucket differs. Returns the buckets in the order of
/// [`buckets`].
pub async fn ensure(
    js: &jetstream::Context,
    settings: &NodeSettings,
) -> Result<Vec<kv::Store>, BusError> {
    for wanted in streams(settings) {
        let name = wanted.name.clone();
        let current = match existing(js, &name).await? {
            Some(current) => current,
            // Another node may create it at the same moment: creating an
            // identical stream succeeds, a different one is reported below.
            None => match js.create_stream(wanted.clone()).await {
                Ok(_) => continue,
                Err(e) => existing(js, &name)
                    .await?
                    .ok_or_else(|| setup_err(&name, e))?,
            },
        };
        let current = widen_queue_subjects(js, &wanted, current).await?;
        let conflicts = compare_stream(&wanted, &current);
        if !conflicts.is_empty() {
            return Err(refuse(conflicts));
        }
    }
    let mut stores = Vec::new();
    for wanted in buckets(settings) {
        let name = wanted.bucket.clone();
        let stream_name = bucket_stream(&name);
        if existing(js, &stream_name).await?.is_none() {
            if let Err(e) = js.create_key_value(wanted.clone()).await {
                if existing(js, &stream_name).await?.is_none() {
                    return Err(setup_err(&name, e));
                }
            }
        }
        let current = existing(js, &stream_name)
            .await?
            .ok_or_else(|| setup_err(&name, "bucket vanished after creation"))?;
        let conflicts = compare_bucket(&wanted, &current);
        if !conflicts.is_empty() {
            return Err(refuse(conflicts));
        }
        stores.push(
            js.get_key_value(&name)
                .await
                .map_err(|e| setup_err(&name, e))?,
        );
    }
    // The uploads object store: created when missing (another node may
    // create it at the same moment; then it exists).
    let uploads = uploads(settings);
    let stream_name = format!("OBJ_{}", uploads.bucket);
    if existing(js, &stream_name).await?.is_none() {
        if let Err(e) = js.create_object_store(uploads.clone()).await {
            if existing(js, &stream_name).await?.is_none() {
                return Err(setup_err(&uploads.bucket, e));
            }
        }
    }
    Ok(stores)
}

/// Every difference between the deployment's streams and buckets and these
/// settings (missing ones are not differences).
pub async fn check(
    js: &jetstream::Context,
    settings: &NodeSettings,
) -> Result<Vec<Conflict>, BusError> {
    let mut out = Vec::new();
    for wanted in streams(settings) {
        if let Some(current) = existing(js, &wanted.name).await? {
            out.extend(compare_stream(&wanted, &current));
        }
    }
    for wanted in buckets(settings) {
        if let Some(current) = existing(js, &bucket_stream(&wanted.bucket)).await? {
            out.extend(compare_bucket(&wanted, &current));
        }
    }
    Ok(out)
}

/// Update existing streams, buckets and their consumers to these settings
/// where JetStream can change them in place; refuses (changing nothing)
/// when a difference cannot be changed (subjects, retention, storage).
/// Returns what was changed.
pub async fn apply(
    js: &jetstream::Context,
    settings: &NodeSettings,
) -> Result<Vec<Conflict>, BusError> {
    let conflicts = check(js, settings).await?;
    let fixed: Vec<Conflict> = conflicts.iter().filter(|c| !c.updatable).cloned().collect();
    if !fixed.is_empty() {
        return Err(refuse(fixed));
    }
    for wanted in streams(settings) {
        if conflicts
            .iter()
            .any(|c| c.what == format!("stream {}", wanted.name))
        {
            js.update_stream(wanted.clone())
                .await
                .map_err(|e| setup_err(&wanted.name, e))?;
            wait_scaled(js, &wanted.name, wanted.num_replicas).await?;
            // Consumers of a work queue must have the stream's replica count;
            // the server scales those that followed the stream by itself.
            let stream = js
                .get_stream(&wanted.name)
                .await
                .map_err(|e| setup_err(&wanted.name, e))?;
            let names: Vec<String> = {
                use futures::TryStreamExt;
                stream
                    .consumer_names()
                    .try_collect()
                    .await
                    .map_err(|e| setup_err(&wanted.name, e))?
            };
            for name in names {
                let info = stream
                    .consumer_info(&name)
                    .await
                    .map_err(|e| setup_err(&name, e))?;
                if info.config.num_replicas == wanted.num_replicas
                    || info.config.durable_name.is_none()
                {
                    continue;
                }
                tracing::info!(consumer = %name, stream = %wanted.name, replicas = wanted.num_replicas, "scaling consumer");
                let mut config = info.config.clone();
                config.num_replicas = wanted.num_replicas;
                // Right after the stream update the server may still count
                // the old replicas ("exceeds parent stream"): retry briefly.
                let mut attempts = 0;
                loop {
                    match stream.update_consumer(config.clone()).await {
                        Ok(_) => break,
                        Err(e) if attempts < 40 => {
                            attempts += 1;
                            tracing::debug!(error = %e, consumer = %name, "consumer update not accepted yet");
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                        Err(e) => return Err(setup_err(&name, e)),
                    }
                }
            }
        }
    }
    for wanted in buckets(settings) {
        if conflicts
            .iter()
            .any(|c| c.what == format!("bucket {}", wanted.bucket))
        {
            js.update_key_value(wanted.clone())
                .await
                .map_err(|e| setup_err(&wanted.bucket, e))?;
        }
    }
    Ok(conflicts)
}

/// Wait until stream `name` runs with `replicas` current peers: scaling a
/// stream up copies its data to new servers before it counts, and its
/// consumers cannot be scaled before that.
async fn wait_scaled(js: &jetstream::Context, name: &str, replicas: usize) -> Result<(), BusError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut stream = js.get_stream(name).await.map_err(|e| setup_err(name, e))?;
        let info = stream.info().await.map_err(|e| setup_err(name, e))?;
        let peers = info.cluster.as_ref().map_or(1, |c| {
            1 + c
                .replicas
                .iter()
                .filter(|p| p.current && !p.offline)
                .count()
        });
        if info.config.num_replicas == replicas && (replicas <= 1 || peers >= replicas) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(setup_err(
                name,
                format!("still {peers} of {replicas} replicas current after 120 s"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(replicas: usize) -> NodeSettings {
        let mut s = NodeSettings::local("n", "nats://127.0.0.1:1", "/m".into(), "/s".into());
        s.replicas = replicas;
        s
    }

    /// What the server reports back for a stream created from `c`: limits
    /// left at 0 become -1, no duplicate window becomes 2 minutes.
    fn as_server_reports(mut c: stream::Config) -> stream::Config {
        for v in [
            &mut c.max_bytes,
            &mut c.max_messages,
            &mut c.max_messages_per_subject,
        ] {
            if *v == 0 {
                *v = -1;
            }
        }
        if c.max_message_size == 0 {
            c.max_message_size = -1;
        }
        if c.duplicate_window.is_zero() {
            c.duplicate_window = SERVER_DEFAULT_DUPLICATE_WINDOW;
        }
        c
    }

    #[test]
    fn identical_streams_have_no_conflicts_after_server_normalisation() {
        for wanted in streams(&settings(3)) {
            assert_eq!(
                compare_stream(&wanted, &as_server_reports(wanted.clone())),
                vec![],
                "{}",
                wanted.name
            );
        }
    }

    #[test]
    fn each_differing_setting_is_named_with_both_values() {
        let wanted = streams(&settings(3)).remove(1);
        let mut existing = as_server_reports(wanted.clone());
        existing.num_replicas = 1;
        existing.retention = RetentionPolicy::Limits;
        existing.discard = DiscardPolicy::Old;
        existing.storage = StorageType::Memory;
        existing.subjects = vec!["orfeas.other.*".into()];
        existing.max_age = Duration::from_secs(60);
        let conflicts = compare_stream(&wanted, &existing);
        let fields: Vec<&str> = conflicts.iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            vec![
                "subjects",
                "retention",
                "storage",
                "num_replicas",
                "discard",
                "max_age"
            ]
        );
        let replicas = &conflicts[3];
        assert_eq!(
            replicas.to_string(),
            "stream ORFEAS_QUEUE has num_replicas = 1, this node wants 3 (nats.replicas)"
        );
        assert!(replicas.updatable);
        assert!(!conflicts[1].updatable, "retention cannot change in place");
        assert!(!conflicts[0].updatable, "other subjects cannot change in place");
        assert_eq!(conflicts[4].existing, "old");
    }

    #[test]
    fn the_queue_before_per_agent_subjects_is_widened_in_place() {
        let wanted = streams(&settings(1)).remove(1);
        let mut existing = as_server_reports(wanted.clone());
        existing.subjects = vec![subjects::QUEUE_WILDCARD_LANES.into()];
        let conflicts = compare_stream(&wanted, &existing);
        assert_eq!(conflicts.len(), 1);
        assert_eq!((conflicts[0].field, conflicts[0].updatable), ("subjects", true));
    }

    #[test]
    fn submit_queue_cap_is_a_limit_named_after_its_config_key() {
        let mut s = settings(1);
        let existing = as_server_reports(streams(&s).remove(0));
        s.submit_queue_max = 10;
        let conflicts = compare_stream(&streams(&s)[0], &existing);
        assert_eq!(conflicts.len(), 1);
        assert!(
            conflicts[0]
                .to_string()
                .contains("max_msgs = 100000, this node wants 10 (ingress.submit_queue_max)"),
            "{}",
            conflicts[0]
        );
    }

    #[test]
    fn buckets_compare_replicas_history_and_ttl() {
        let wanted = buckets(&settings(3)).remove(2);
        let existing = stream::Config {
            name: bucket_stream(&wanted.bucket),
            num_replicas: 3,
            storage: StorageType::File,
            max_messages_per_subject: 1,
            max_age: NODE_RECORD_TTL,
            ..Default::default()
        };
        assert_eq!(compare_bucket(&wanted, &existing), vec![]);
        // A bucket made before records expired: no TTL.
        let old = stream::Config {
            max_age: Duration::ZERO,
            num_replicas: 1,
            ..existing
        };
        let conflicts = compare_bucket(&wanted, &old);
        assert_eq!(
            conflicts.iter().map(|c| c.field).collect::<Vec<_>>(),
            vec!["num_replicas", "max_age"]
        );
        assert_eq!(
            conflicts[1].to_string(),
            "bucket orfeas_nodes has max_age = unlimited, this node wants 15s"
        );
    }

    #[test]
    fn every_stream_and_bucket_gets_the_configured_replicas() {
        let s = settings(3);
        assert!(streams(&s).iter().all(|c| c.num_replicas == 3));
        assert!(buckets(&s).iter().all(|c| c.num_replicas == 3));
        assert!(
            HEARTBEAT_INTERVAL * 4 < NODE_RECORD_TTL,
            "several beats may be missed before a node disappears"
        );
    }
}
