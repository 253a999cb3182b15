//! RequestServer: answers agents' signed `status` and `cancel` requests
//! from the job records, on any node.
//!
//! - Consumes: `orfeas.status.<agent>` and `orfeas.cancel.<agent>`
//!   (request/reply, no stream; a lost request is simply asked again);
//!   every node subscribes in queue group `orfeas-requests`, so each
//!   request gets one answer, from whichever node.
//! - Checks, as Ingress does and through the same [`Gate`]: size cap,
//!   envelope of the request's kind, pre-auth rate of the subject token,
//!   issuer = subject token, key known / not revoked / in its window,
//!   `verify_strict` bound to the subject, audience and time window, nonce
//!   (`cti`) never seen before (else `replayed`), the operation matching
//!   the subject, the agent allowed that operation, the agent's request
//!   rate (shared with its submissions; else 429 `rate_limited` with
//!   `retry_after_ms`).
//! - Answers: `StatusReply::Job` (the record as the agent may see it) or
//!   `StatusReply::Error` with a stable code (`not_found` for a job of
//!   another agent or none at all), CBOR in the body, signed by this node's
//!   event key in the `Orfeas-Signature` header (detached COSE_Sign1 bound
//!   to the request's subject and nonce; `v1::seal_reply`).
//! - Cancel: a queued job (`admitted`) becomes `canceled` with the terminal
//!   event `failed{canceled}` at seq `attempt << 16 | 0xFFFF` (after any
//!   event of that attempt), written revision-checked, then published by
//!   this node; the node that later pulls its queue message sees the
//!   terminal record and drops it. A running job gets `cancel_requested`
//!   (revision-checked); the node running it ends it. A finished job is
//!   left alone (the reply shows its state); a repeated cancel of a
//!   canceled job publishes the same terminal event again (same seq).
//! - Not an actor: a stateless task like the result server; a broken
//!   subscription is made again by the loop.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use orfeas_wire::{
    envelope::{self, ContentKind, Opened},
    subjects,
    v1::{seal_reply, CancelRequest, EventKind, Failure, JobStatus, StatusReply, StatusRequest, MAX_LIFETIME_S, REPLY_SIGNATURE_HEADER},
    ErrorCode,
};
use tokio::{sync::Semaphore, task::JoinHandle};
use uuid::Uuid;

use crate::{
    gate::Gate,
    events::EventSink,
    jobs::{JobRecord, JobState, JobStore, Updated},
    metrics, now_ms,
    registry::{AgentRecord, KeyStatus, Registry},
};

/// Largest request envelope, bytes.
const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Requests answered at once.
const CONCURRENCY: usize = 32;
/// Step of the terminal event a cancel publishes (after every progress step).
pub const CANCEL_STEP: u64 = 0xFFFF;

/// What the request server needs.
#[derive(Clone)]
pub struct RequestServer {
    /// This node (`iss` of its reply signatures).
    pub node_id: String,
    /// Signs replies (the node's event key).
    pub node_key: orfeas_wire::SecretKey,
    /// Pre-auth rate, nonces and per-agent rate, shared with Ingress.
    pub gate: Arc<Gate>,
    /// The deployment name (`aud`).
    pub deployment: String,
    /// Tolerated clock skew, seconds.
    pub clock_skew_s: u64,
    /// Agent keys and policy.
    pub registry: Registry,
    /// Job records.
    pub jobs: JobStore,
    /// Publishes the terminal event of a canceled queued job.
    pub events: EventSink,
    /// Batch records.
    pub batches: async_nats::jetstream::kv::Store,
}

fn refuse(code: ErrorCode, error: impl Into<String>, job_id: Option<Uuid>) -> StatusReply {
    let mut failure = Failure::new(code, error);
    failure.job_id = job_id;
    StatusReply::Error(failure)
}

/// The name of a job state on the wire.
pub fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Admitted => "admitted",
        JobState::Running => "running",
        JobState::Completed => "completed",
        JobState::Failed => "failed",
        JobState::Canceled => "canceled",
    }
}

/// What an agent may see of a record.
pub fn job_status(record: &JobRecord) -> JobStatus {
    JobStatus {
        job_id: record.job_id,
        state: state_name(record.state).to_string(),
        lane: record.lane,
        attempt: record.attempt,
        node: record.node.clone(),
        updated_at_ms: record.updated_at_ms,
        cancel_requested: record.cancel_requested,
        terminal: record.terminal.clone(),
        terminal_seq: record.terminal_seq,
        request: record.request.clone(),
    }
}

/// Verify a signed request of `kind` / `op` received on `subject` for
/// `agent`: the checks of Ingress' order that apply to requests.
#[allow(clippy::too_many_arguments)]
pub async fn verify_request(
    gate: &Gate,
    registry: &Registry,
    deployment: &str,
    clock_skew_s: u64,
    agent: &str,
    subject: &str,
    bytes: &[u8],
    kind: ContentKind,
    op: &str,
) -> Result<(Opened, AgentRecord), Failure> {
    let opened = envelope::open(bytes, MAX_REQUEST_BYTES, kind).map_err(|e| Failure::new(e.code(), e.to_string()))?;
    gate.pre_auth(agent)?;
    if opened.claims.iss != agent {
        return Err(Failure::new(ErrorCode::Forbidden, format!("issuer {:?} asked on {agent:?}'s subject", opened.claims.iss)));
    }
    let (key, record) = match registry.key_status(agent, &opened.kid.0).await {
        Ok((Some(key), _, Some(record))) => (key, record),
        Ok((_, KeyStatus::Revoked, _)) => return Err(Failure::new(ErrorCode::RevokedKey, format!("key {} of agent {agent:?} is revoked", opened.kid.0))),
        Ok((_, KeyStatus::Inactive(why), _)) => return Err(Failure::new(ErrorCode::UnknownKey, why)),
        Ok(_) => return Err(Failure::new(ErrorCode::UnknownKey, format!("agent {agent:?} has no active key {:?}", opened.kid.0))),
        Err(e) => return Err(Failure::new(ErrorCode::Unavailable, format!("agent registry unreadable: {e}"))),
    };
    opened.verify(&key, subject).map_err(|e| Failure::new(e.code(), e.to_string()))?;
    if let Err(e) = opened.check_claims(deployment, now_ms() / 1000, clock_skew_s, MAX_LIFETIME_S) {
        let mut failure = Failure::new(e.code(), e.to_string());
        if e.code() == ErrorCode::Stale {
            failure.server_time_ms = Some(now_ms());
        }
        return Err(failure);
    }
    match gate.request_nonce(agent, &opened.claims.cti).await {
        Ok(Ok(())) => {}
        Ok(Err(failure)) => return Err(failure),
        Err(e) => return Err(Failure::new(ErrorCode::Unavailable, format!("nonce cache unreadable: {e}"))),
    }
    if opened.op != op {
        return Err(Failure::new(ErrorCode::Forbidden, format!("operation {:?} is not {op}", opened.op)));
    }
    if !record.allows(op) {
        return Err(Failure::new(ErrorCode::Forbidden, format!("agent {agent:?} may not use operation {op}")));
    }
    gate.rate(agent, record.requests_per_minute)?;
    Ok((opened, record))
}

impl RequestServer {
    /// Serve until the returned task is aborted.
    pub fn spawn(self, client: async_nats::Client) -> JoinHandle<()> {
        tokio::spawn(async move {
            let limit = Arc::new(Semaphore::new(CONCURRENCY));
            loop {
                let subscribed = async {
                    let status = client.queue_subscribe(subjects::STATUS_WILDCARD, subjects::REQUESTS_QUEUE_GROUP.to_string()).await?;
                    let cancel = client.queue_subscribe(subjects::CANCEL_WILDCARD, subjects::REQUESTS_QUEUE_GROUP.to_string()).await?;
                    Ok::<_, async_nats::SubscribeError>(futures::stream::select(status, cancel))
                }
                .await;
                let mut requests = match subscribed {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot subscribe to status/cancel requests; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                while let Some(message) = requests.next().await {
                    let Some(reply) = message.reply.clone() else { continue };
                    let Ok(permit) = limit.clone().acquire_owned().await else { return };
                    let (server, client) = (self.clone(), client.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        let answer = server.answer(&message.subject, &message.payload).await;
                        if let Some(job_id) = crate::scheduler::cancel_notice(&message.subject, &answer) {
                            let _ = client.publish(subjects::CONTROL_CANCEL, job_id.to_string().into()).await;
                        }
                        let body = orfeas_wire::to_cbor(&answer);
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert(REPLY_SIGNATURE_HEADER, server.sign_reply(&message.subject, &message.payload, &body).as_str());
                        if let Err(e) = client.publish_with_headers(reply, headers, body.into()).await {
                            tracing::warn!(error = %e, "status/cancel reply not sent");
                        }
                    });
                }
            }
        })
    }

    /// The `Orfeas-Signature` header of `body`, the reply to request
    /// `request` received on `subject`: bound to the subject and, when the
    /// request could be decoded, to its nonce.
    pub fn sign_reply(&self, subject: &str, request: &[u8], body: &[u8]) -> String {
        let op = subjects::agent_of_request(subject).map(|(op, _)| op).unwrap_or("status");
        let cti = envelope::open_one_of(request, MAX_REQUEST_BYTES, &[ContentKind::StatusRequest, ContentKind::CancelRequest]).map(|o| o.claims.cti).unwrap_or_default();
        seal_reply(body, &self.node_id, &self.node_key, &self.deployment, op, subject, &cti, now_ms() / 1000)
    }

    /// The answer to one request received on `subject`.
    pub async fn answer(&self, subject: &str, bytes: &[u8]) -> StatusReply {
        let Some((op, agent)) = subjects::agent_of_request(subject) else {
            return refuse(ErrorCode::Forbidden, format!("{subject:?} is not a status or cancel subject"), None);
        };
        let kind = if op == "status" { ContentKind::StatusRequest } else { ContentKind::CancelRequest };
        let reply = match verify_request(&self.gate, &self.registry, &self.deployment, self.clock_skew_s, agent, subject, bytes, kind, op).await {
            Err(failure) => StatusReply::Error(failure),
            Ok((opened, _)) => {
                if op == "status" {
                    match orfeas_wire::from_cbor::<StatusRequest>(&opened.payload) {
                        Ok(StatusRequest { batch_id: Some(batch_id), .. }) => self.batch_status(agent, batch_id).await,
                        Ok(StatusRequest { job_id: Some(job_id), .. }) => self.status(agent, job_id).await,
                        Ok(_) => refuse(ErrorCode::Invalid, "a status request names a job_id or a batch_id", None),
                        Err(e) => refuse(ErrorCode::Invalid, format!("status payload: {e}"), None),
                    }
                } else {
                    match orfeas_wire::from_cbor::<CancelRequest>(&opened.payload) {
                        Ok(request) => self.cancel(agent, request.job_id).await,
                        Err(e) => refuse(ErrorCode::Invalid, format!("cancel payload: {e}"), None),
                    }
                }
            }
        };
        let outcome = match &reply {
            StatusReply::Job(_) | StatusReply::Batch { .. } => "ok",
            StatusReply::Error(f) => f.code.as_str(),
        };
        // Only registered agents get their own series (bounded labels).
        let label = match self.registry.agent(agent).await {
            Ok(Some(_)) => agent,
            _ => "_unregistered",
        };
        metrics::REQUESTS.with_label_values(&[label, op, outcome]).inc();
        reply
    }

    async fn status(&self, agent: &str, job_id: Uuid) -> StatusReply {
        match self.jobs.get(agent, &job_id).await {
            Ok(Some((record, _))) => StatusReply::Job(job_status(&record)),
            Ok(None) => refuse(ErrorCode::NotFound, format!("agent {agent:?} has no job {job_id}"), Some(job_id)),
            Err(e) => refuse(ErrorCode::Unavailable, format!("job record unreadable: {e}"), Some(job_id)),
        }
    }

    async fn batch_status(&self, agent: &str, batch_id: Uuid) -> StatusReply {
        let unreadable = |e: &dyn std::fmt::Display| refuse(ErrorCode::Unavailable, format!("batch record unreadable: {e}"), Some(batch_id));
        let batch = match crate::batch::read(&self.batches, agent, &batch_id).await {
            Ok(Some(batch)) => batch,
            Ok(None) => return refuse(ErrorCode::NotFound, format!("agent {agent:?} has no batch {batch_id}"), Some(batch_id)),
            Err(e) => return unreadable(&e),
        };
        let mut jobs = Vec::with_capacity(batch.jobs.len());
        for job_id in &batch.jobs {
            match self.jobs.get(agent, job_id).await {
                Ok(Some((record, _))) => jobs.push(job_status(&record)),
                Ok(None) => {}
                Err(e) => return unreadable(&e),
            }
        }
        StatusReply::Batch { batch_id, jobs, rejected: batch.rejected }
    }

    async fn cancel(&self, agent: &str, job_id: Uuid) -> StatusReply {
        let unreadable = |e: &dyn std::fmt::Display| refuse(ErrorCode::Unavailable, format!("job record unreadable: {e}"), Some(job_id));
        for _ in 0..16 {
            let (mut record, revision) = match self.jobs.get(agent, &job_id).await {
                Ok(Some(found)) => found,
                Ok(None) => return refuse(ErrorCode::NotFound, format!("agent {agent:?} has no job {job_id}"), Some(job_id)),
                Err(e) => return unreadable(&e),
            };
            match record.state {
                JobState::Canceled => {
                    // Say it again: the first answer may not have arrived.
                    if let Some(kind) = record.terminal.clone() {
                        if let Err(e) = self.events.publish(agent, job_id, record.terminal_seq, kind).await {
                            return unreadable(&e);
                        }
                    }
                    return StatusReply::Job(job_status(&record));
                }
                state if state.is_terminal() => return StatusReply::Job(job_status(&record)),
                JobState::Running if record.cancel_requested => return StatusReply::Job(job_status(&record)),
                JobState::Running => {
                    record.cancel_requested = true;
                    record.updated_at_ms = now_ms();
                }
                _ => {
                    let mut failure = Failure::new(ErrorCode::Canceled, format!("job {job_id} was canceled by its agent"));
                    failure.job_id = Some(job_id);
                    record.state = JobState::Canceled;
                    record.terminal = Some(EventKind::Failed(failure));
                    record.terminal_seq = (record.attempt << 16) | CANCEL_STEP;
                    record.updated_at_ms = now_ms();
                }
            }
            match self.jobs.update(&record, revision).await {
                Ok(Updated::Ok(_)) => {
                    if record.state == JobState::Canceled {
                        let kind = record.terminal.clone().expect("set above");
                        if let Err(e) = self.events.publish(agent, job_id, record.terminal_seq, kind).await {
                            // The record is terminal; asking again re-sends the event.
                            return unreadable(&e);
                        }
                        tracing::info!(agent, %job_id, "queued job canceled");
                    } else {
                        tracing::info!(agent, %job_id, "cancel requested for a running job");
                    }
                    return StatusReply::Job(job_status(&record));
                }
                // Changed meanwhile (started, finished): look again.
                Ok(Updated::Fenced) => continue,
                Err(e) => return unreadable(&e),
            }
        }
        refuse(ErrorCode::Unavailable, format!("job {job_id} kept changing; ask again"), Some(job_id))
    }
}
