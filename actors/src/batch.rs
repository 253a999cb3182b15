//! `submit_batch`: many jobs in one signed message, admitted by Ingress
//! (this file holds the batch half of Ingress' admission; same actor).
//!
//! - The message is checked once, as a submission is: pre-auth rate, key
//!   status, issuer, `verify_strict`, audience and window, operation
//!   `submit_batch`, strict payload decode, events subject
//!   `orfeas.events.<agent>.<batch_id>`, 1–64 jobs with distinct ids, the
//!   agent allowed `submit_batch`, nonce, and the agent's rate (one request).
//!   A refusal here refuses the whole batch: one `rejected` event on the
//!   batch's subject (its `job_id` = the batch id).
//! - Then each job on its own: content checks, the agent's image cap and
//!   concurrency cap, and admission exactly like a single job (record with
//!   `batch_id`, queue, `accepted`), or a `rejected` event with its own code
//!   on its own subject. The rest are admitted.
//! - Last, the batch record (`orfeas_batches`, key `<agent>.<batch_id>`,
//!   create-only) lists the admitted jobs and the refusals; `status` with a
//!   `batch_id` answers from it. A redelivered batch (crash before the ack)
//!   goes through again: every step is idempotent per job.

use async_nats::jetstream::{
    self,
    kv::{self, CreateErrorKind},
};
use orfeas_wire::{
    envelope::Opened,
    subjects,
    v1::{self, EventKind, Failure, SubmitBatch},
    ErrorCode,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    bus::BusError,
    ingress::{check_job, Admission, Rejection, Settled, ValidJob},
    metrics, now_ms,
    registry::{AgentRecord, KeyStatus},
    trace::{self, TraceParent},
};

/// One batch: what became of each of its jobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// The batch.
    pub batch_id: Uuid,
    /// Admitted jobs, in the batch's order.
    pub jobs: Vec<Uuid>,
    /// Refused jobs (each names its `job_id`).
    pub rejected: Vec<Failure>,
    /// When it was admitted, ms since the epoch.
    pub at_ms: u64,
}

/// Bucket key of a batch.
pub fn key(agent: &str, batch_id: &Uuid) -> String {
    format!("{agent}.{batch_id}")
}

/// The record of batch `batch_id` of `agent`.
pub async fn read(batches: &kv::Store, agent: &str, batch_id: &Uuid) -> Result<Option<BatchRecord>, BusError> {
    let k = key(agent, batch_id);
    match batches.get(&k).await.map_err(|e| BusError::Kv { op: "get", key: k.clone(), detail: e.to_string() })? {
        Some(bytes) if !bytes.is_empty() => orfeas_wire::from_cbor(&bytes).map(Some).map_err(|e| BusError::Kv { op: "get", key: k, detail: e }),
        _ => Ok(None),
    }
}

impl Admission {
    /// Check and admit a `SubmitBatch` message.
    pub(crate) async fn admit_batch(&self, message: &jetstream::Message, agent: &str, opened: Opened, span: &tracing::Span, trace: TraceParent) -> Settled {
        let stream_seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        match self.check_batch(agent, &opened, &message.subject, stream_seq).await {
            Err(e) => {
                tracing::warn!(error = %e, "batch admission state unreadable; retrying");
                Settled::Retry
            }
            Ok(Err(mut rejection)) => {
                let job_id = rejection.job_id.unwrap_or(Uuid::nil());
                rejection.failure.job_id = rejection.job_id;
                // Only registered agents get their own series (bounded labels).
                let label = match self.registry.agent(agent).await {
                    Ok(Some(_)) => agent,
                    _ => "_unregistered",
                };
                metrics::REQUESTS.with_label_values(&[label, "submit_batch", rejection.failure.code.as_str()]).inc();
                tracing::info!(agent, code = %rejection.failure.code, error = %rejection.failure.error, "batch rejected");
                let onward = trace::onward(span, &trace);
                match self.events.publish_in(Some(onward), agent, job_id, 0, EventKind::Rejected(rejection.failure)).await {
                    Ok(()) => Settled::Term,
                    Err(_) => Settled::Retry,
                }
            }
            Ok(Ok((batch, record))) => match self.admit_items(agent, batch, &record, span, trace).await {
                Ok(settled) => settled,
                Err(e) => {
                    tracing::warn!(error = %e, "batch admission not confirmed; retrying");
                    Settled::Retry
                }
            },
        }
    }

    async fn check_batch(&self, agent: &str, opened: &Opened, subject: &str, stream_seq: u64) -> Result<Result<(SubmitBatch, AgentRecord), Rejection>, BusError> {
        let unverified = orfeas_wire::from_cbor::<SubmitBatch>(&opened.payload).ok().map(|b| b.batch_id);
        let reject = |code, error: String| Ok(Err(Rejection { job_id: unverified, failure: Failure::new(code, error) }));
        if let Err(failure) = self.gate.pre_auth(agent) {
            return Ok(Err(Rejection { job_id: unverified, failure }));
        }
        if opened.claims.iss != agent {
            return reject(ErrorCode::Forbidden, format!("issuer {:?} published on {agent:?}'s subject", opened.claims.iss));
        }
        let (_, status, record) = self.registry.key_status(agent, &opened.kid.0).await?;
        let key = match status {
            KeyStatus::Active(key) => key,
            KeyStatus::Revoked => return reject(ErrorCode::RevokedKey, format!("key {} of agent {agent:?} is revoked", opened.kid.0)),
            KeyStatus::Inactive(why) => return reject(ErrorCode::UnknownKey, why),
            KeyStatus::Unknown => return reject(ErrorCode::UnknownKey, format!("agent {agent:?} has no active key {:?}", opened.kid.0)),
        };
        let Some(record) = record else { return reject(ErrorCode::UnknownKey, format!("agent {agent:?} is not registered")) };
        if let Err(e) = opened.verify(&key, subject) {
            return reject(e.code(), e.to_string());
        }
        let now_s = now_ms() / 1000;
        if let Err(e) = opened.check_claims(&self.policy.audience, now_s, self.policy.clock_skew_s, v1::MAX_LIFETIME_S) {
            let mut failure = Failure::new(e.code(), e.to_string());
            if e.code() == ErrorCode::Stale {
                failure.server_time_ms = Some(now_s * 1000);
            }
            return Ok(Err(Rejection { job_id: unverified, failure }));
        }
        if opened.op != "submit_batch" {
            return reject(ErrorCode::Forbidden, format!("operation {:?} is not submit_batch", opened.op));
        }
        let batch: SubmitBatch = match orfeas_wire::from_cbor(&opened.payload) {
            Ok(b) => b,
            Err(e) => return reject(ErrorCode::Invalid, format!("submit_batch payload: {e}")),
        };
        let expected = subjects::events(agent, &batch.batch_id);
        if opened.events_subject.as_deref() != Some(expected.as_str()) {
            return reject(ErrorCode::Forbidden, format!("events subject {:?} is not {expected:?}", opened.events_subject));
        }
        // As for jobs: the nil id names nothing an agent could follow.
        if batch.batch_id.is_nil() {
            return reject(ErrorCode::Invalid, "batch_id is the nil UUID; use a fresh random (v4) or time-ordered (v7) UUID".to_string());
        }
        if batch.jobs.is_empty() || batch.jobs.len() > v1::MAX_BATCH_JOBS {
            return reject(ErrorCode::Invalid, format!("a batch has 1 to {} jobs, not {}", v1::MAX_BATCH_JOBS, batch.jobs.len()));
        }
        let mut ids: Vec<Uuid> = batch.jobs.iter().map(|j| j.job_id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return reject(ErrorCode::Invalid, format!("job {} appears twice in the batch", w[0]));
        }
        if ids.binary_search(&batch.batch_id).is_ok() {
            return reject(ErrorCode::Invalid, format!("batch id {} is also a job id", batch.batch_id));
        }
        if !record.allows("submit_batch") {
            return reject(ErrorCode::Forbidden, format!("agent {agent:?} may not use operation submit_batch"));
        }
        if let Err(failure) = self.gate.nonce(agent, &opened.claims.cti, stream_seq).await? {
            return Ok(Err(Rejection { job_id: unverified, failure }));
        }
        if let Err(failure) = self.gate.rate(agent, record.requests_per_minute) {
            return Ok(Err(Rejection { job_id: unverified, failure }));
        }
        Ok(Ok((batch, record)))
    }

    async fn admit_items(&self, agent: &str, batch: SubmitBatch, record: &AgentRecord, span: &tracing::Span, trace: TraceParent) -> Result<Settled, BusError> {
        let batch_id = batch.batch_id;
        let (mut admitted, mut rejected) = (Vec::new(), Vec::new());
        for mut job in batch.jobs {
            let job_id = job.job_id;
            let digest = hex::encode(Sha256::digest(orfeas_wire::to_cbor(&job)));
            let refusal = match check_job(&mut job, agent, &self.policy) {
                Err((code, error)) => Some(Failure::new(code, error)),
                Ok(()) => {
                    let bytes = job.image.bytes();
                    match record.max_image_bytes.filter(|&cap| bytes > cap) {
                        Some(cap) => Some(Failure::new(ErrorCode::TooLarge, format!("image of {bytes} bytes exceeds agent {agent:?}'s cap of {cap} bytes"))),
                        None => self.gate.take_slot(agent, job_id, record.max_concurrent).await?.err(),
                    }
                }
            };
            if let Some(mut failure) = refusal {
                failure.job_id = Some(job_id);
                metrics::REQUESTS.with_label_values(&[agent, "submit", failure.code.as_str()]).inc();
                metrics::ERRORS.with_label_values(&[agent, failure.code.as_str()]).inc();
                self.events.publish_in(Some(trace::onward(span, &trace)), agent, job_id, 0, EventKind::Rejected(failure.clone())).await?;
                rejected.push(failure);
                continue;
            }
            let lane = record.lane.at_most(job.params.priority);
            match self.admit(ValidJob { agent: agent.to_string(), job, digest, batch_id: Some(batch_id) }, lane, span, trace).await? {
                Settled::Ack => admitted.push(job_id),
                // A job id reused with another request: refused (and said so) by `admit`.
                Settled::Term => {
                    let mut failure = Failure::new(ErrorCode::Conflict, format!("job {job_id} exists with a different request"));
                    failure.job_id = Some(job_id);
                    rejected.push(failure);
                }
                Settled::Retry => return Ok(Settled::Retry),
            }
        }
        let entry = BatchRecord { batch_id, jobs: admitted, rejected, at_ms: now_ms() };
        let k = key(agent, &batch_id);
        match self.bus.batches.create(&k, orfeas_wire::to_cbor(&entry).into()).await {
            Ok(_) => {}
            // Redelivered: the first pass wrote it.
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(BusError::Kv { op: "create", key: k, detail: e.to_string() }),
        }
        tracing::info!(agent, %batch_id, admitted = entry.jobs.len(), rejected = entry.rejected.len(), "batch admitted");
        Ok(Settled::Ack)
    }
}
