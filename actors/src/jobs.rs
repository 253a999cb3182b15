//! Job records in the `orfeas_jobs` bucket: one CBOR record per job,
//! created once at admission, updated with revision checks so a worker that
//! lost its lease cannot overwrite (or announce) a result.

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use orfeas_wire::v1::{EventKind, Lane};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::bus::BusError;

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Recorded; being put on the queue.
    Admitted,
    /// Taken by a node (see `attempt`).
    Running,
    /// Finished with files.
    Completed,
    /// Finished without files.
    Failed,
    /// Canceled by its agent before it finished (terminal event: `failed`
    /// with code `canceled`).
    Canceled,
}

impl JobState {
    /// Whether the job has its final answer.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Canceled)
    }
}

/// The persisted state of one job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Owner.
    pub agent: String,
    /// The job.
    pub job_id: Uuid,
    /// Model name.
    pub model: String,
    /// SHA-256 of the signed payload: same id + same digest = same request.
    pub digest: String,
    /// Where it is.
    pub state: JobState,
    /// Delivery attempt that last took it.
    pub attempt: u64,
    /// Node that last took it.
    #[serde(default)]
    pub node: String,
    /// Last change, ms since the epoch.
    pub updated_at_ms: u64,
    /// The terminal event, once there is one.
    #[serde(default)]
    pub terminal: Option<EventKind>,
    /// Sequence number the terminal event was published with.
    #[serde(default)]
    pub terminal_seq: u64,
    /// The lane it waits in.
    #[serde(default)]
    pub lane: Lane,
    /// Start-by time, ms since the epoch.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// The agent asked to cancel while the job was running: whoever finishes
    /// it discards the result and ends it as `canceled`.
    #[serde(default)]
    pub cancel_requested: bool,
    /// The `submit_batch` it came in, if any.
    #[serde(default)]
    pub batch_id: Option<Uuid>,
    /// Model, formats and parameters as admitted (status replies echo it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<orfeas_wire::v1::AdmittedRequest>,
}

/// Bucket key of a job.
pub fn key(agent: &str, job_id: &Uuid) -> String {
    format!("{agent}.{job_id}")
}

/// Outcome of a create-only insert.
pub enum Created {
    /// The record is new, at this revision.
    New(u64),
    /// A record already exists.
    Exists(JobRecord, u64),
}

/// Outcome of a fenced update.
pub enum Updated {
    /// Written at this revision.
    Ok(u64),
    /// Someone else changed the record since `revision`: this writer lost.
    Fenced,
}

/// Typed access to the jobs bucket.
#[derive(Clone)]
pub struct JobStore {
    kv: kv::Store,
}

impl JobStore {
    /// Wrap the bucket.
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// Insert `record` only if no record exists for the job.
    pub async fn create(&self, record: &JobRecord) -> Result<Created, BusError> {
        let k = key(&record.agent, &record.job_id);
        match self.kv.create(&k, orfeas_wire::to_cbor(record).into()).await {
            Ok(revision) => Ok(Created::New(revision)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => match self.get_key(&k).await? {
                Some((existing, revision)) => Ok(Created::Exists(existing, revision)),
                None => Err(kv_err("create", &k, "exists but cannot be read")),
            },
            Err(e) => Err(kv_err("create", &k, e)),
        }
    }

    /// The record of a job and its revision.
    pub async fn get(&self, agent: &str, job_id: &Uuid) -> Result<Option<(JobRecord, u64)>, BusError> {
        self.get_key(&key(agent, job_id)).await
    }

    async fn get_key(&self, k: &str) -> Result<Option<(JobRecord, u64)>, BusError> {
        let entry = self.kv.entry(k).await.map_err(|e| kv_err("get", k, e))?;
        let Some(entry) = entry else { return Ok(None) };
        if entry.value.is_empty() {
            return Ok(None);
        }
        let record = orfeas_wire::from_cbor(&entry.value).map_err(|e| kv_err("get", k, e))?;
        Ok(Some((record, entry.revision)))
    }

    /// Write `record` if the stored revision is still `revision`.
    pub async fn update(&self, record: &JobRecord, revision: u64) -> Result<Updated, BusError> {
        let k = key(&record.agent, &record.job_id);
        match self.kv.update(&k, orfeas_wire::to_cbor(record).into(), revision).await {
            Ok(revision) => Ok(Updated::Ok(revision)),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(Updated::Fenced),
            Err(e) => Err(kv_err("update", &k, e)),
        }
    }
}

fn kv_err(op: &'static str, key: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Kv { op, key: key.to_string(), detail: e.to_string() }
}
