//! Gate: the admission limits Ingress applies around the signature checks
//! (not an actor; shared by Ingress' admission tasks).
//!
//! - **Pre-auth rate** (before the registry lookup and the signature): one
//!   GCRA cell per subject token, node-wide quota
//!   (`ingress.preauth_per_minute`). Cheap and in memory; cells idle for a
//!   full period are dropped every few thousand checks, so made-up tokens
//!   cannot grow memory without bound.
//! - **Nonce** (after the signature and time window): the `cti` of every
//!   verified message is created once in KV bucket `orfeas_nonces` (key
//!   `<agent>.<cti hex>`, value = the submit stream's sequence number of the
//!   message). The bucket is shared by every node, so a copy replayed to
//!   another node of a cluster is caught too; its `max_age` ([`NONCE_TTL`])
//!   is longer than any message's acceptance window (lifetime ≤ 600 s plus
//!   twice the clock skew), so an entry never expires while its message
//!   could still be accepted, and memory is bounded by the window. A
//!   redelivery of the same stored message (same stream sequence: a crash
//!   or retry before the ack) is not a replay.
//! - **Per-agent rate**: one GCRA limiter per agent (`governor`), quota =
//!   the registry's `requests_per_minute` with a burst of the same size;
//!   rebuilt when the registry value changes. Kept in this node's memory:
//!   in a cluster of N nodes an agent gets at most N × its rate; a restart
//!   starts the agent with a full burst.
//! - **Concurrency cap**: an agent's unfinished jobs, counted from persisted
//!   state: KV bucket `orfeas_active` holds, per agent, the ids of the jobs
//!   it was admitted (revision-checked writes, so two nodes never both take
//!   the last slot). At the cap, each listed job's record in `orfeas_jobs`
//!   is read and finished (terminal) ones are dropped, so the set heals
//!   itself without anyone having to remove jobs from it, and it survives
//!   restarts of any node.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use governor::{clock::Clock, DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use orfeas_wire::{v1::Failure, ErrorCode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{bus::BusError, jobs::JobStore, now_ms};

/// `max_age` of the nonce bucket: longer than any acceptance window
/// (`MAX_LIFETIME_S` + 2 × the largest allowed clock skew).
pub const NONCE_TTL: Duration = Duration::from_secs(30 * 60);
/// Largest `ingress.clock_skew_s` the nonce TTL covers.
pub const MAX_CLOCK_SKEW_S: u64 = (NONCE_TTL.as_secs() - orfeas_wire::v1::MAX_LIFETIME_S) / 2;
/// A listed job without a record yet is counted for this long (its
/// admission may be between the slot and the record on another node).
const UNRECORDED_GRACE_MS: u64 = 60_000;
/// Pre-auth checks between two sweeps of idle cells.
const SWEEP_EVERY: u64 = 4096;
/// What a refusal for the concurrency cap suggests waiting.
const CONCURRENCY_RETRY_MS: u64 = 1_000;

/// One agent's admitted, maybe unfinished jobs (`orfeas_active`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveJobs {
    /// Job ids with the time they took their slot, ms since the epoch.
    pub jobs: Vec<(Uuid, u64)>,
}

/// A refusal with its stable code (the job id is added by the caller).
pub fn refusal(code: ErrorCode, error: impl Into<String>, retry_after: Option<Duration>) -> Failure {
    let mut failure = Failure::new(code, error);
    failure.retry_after_ms = retry_after.map(|d| (d.as_millis() as u64).max(1));
    failure
}

/// One GCRA limiter per agent, rebuilt when its quota changes.
#[derive(Default)]
pub struct AgentRates {
    agents: Mutex<HashMap<String, (u32, Arc<DefaultDirectRateLimiter>)>>,
}

impl AgentRates {
    /// One request of `agent` at `per_minute` (`None` or 0 = no limit).
    pub fn check(&self, agent: &str, per_minute: Option<u32>) -> Result<(), Failure> {
        let Some(rpm) = per_minute.and_then(NonZeroU32::new) else { return Ok(()) };
        let limiter = {
            let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
            let entry = agents.entry(agent.to_string()).or_insert_with(|| (rpm.get(), Arc::new(DefaultDirectRateLimiter::direct(Quota::per_minute(rpm)))));
            if entry.0 != rpm.get() {
                *entry = (rpm.get(), Arc::new(DefaultDirectRateLimiter::direct(Quota::per_minute(rpm))));
            }
            entry.1.clone()
        };
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(limiter.clock().now());
            refusal(ErrorCode::RateLimited, format!("agent {agent:?} is over its rate of {rpm} requests per minute"), Some(wait))
        })
    }
}

/// The limits, shared by Ingress' admission tasks.
pub struct Gate {
    preauth: DefaultKeyedRateLimiter<String>,
    preauth_checks: AtomicU64,
    agents: AgentRates,
    nonces: kv::Store,
    active: kv::Store,
    jobs: JobStore,
}

fn kv_err(op: &'static str, key: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Kv { op, key: key.to_string(), detail: e.to_string() }
}

impl Gate {
    /// A gate with `preauth_per_minute` per subject token.
    pub fn new(preauth_per_minute: u32, nonces: kv::Store, active: kv::Store, jobs: JobStore) -> Self {
        let quota = Quota::per_minute(NonZeroU32::new(preauth_per_minute.max(1)).expect("at least 1"));
        Self { preauth: DefaultKeyedRateLimiter::keyed(quota), preauth_checks: AtomicU64::new(0), agents: AgentRates::default(), nonces, active, jobs }
    }

    /// Pre-auth rate of subject token `token` (unverified).
    pub fn pre_auth(&self, token: &str) -> Result<(), Failure> {
        if self.preauth_checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.preauth.retain_recent();
            self.preauth.shrink_to_fit();
        }
        self.preauth.check_key(&token.to_string()).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.preauth.clock().now());
            refusal(ErrorCode::RateLimited, format!("subject token {token:?} is over the node's pre-authentication rate"), Some(wait))
        })
    }

    /// Cells the pre-auth limiter holds (tests: memory stays bounded).
    pub fn pre_auth_cells(&self) -> usize {
        self.preauth.len()
    }

    /// The agent's request rate; `None` = no limit.
    pub fn rate(&self, agent: &str, per_minute: Option<u32>) -> Result<(), Failure> {
        self.agents.check(agent, per_minute)
    }

    /// Record nonce `cti` of a verified message of `agent` stored at
    /// `stream_seq` in the submit stream; `Ok(Err)` when it was seen before.
    pub async fn nonce(&self, agent: &str, cti: &[u8], stream_seq: u64) -> Result<Result<(), Failure>, BusError> {
        let key = format!("{agent}.{}", hex::encode(cti));
        let seq = stream_seq.to_string();
        match self.nonces.create(&key, seq.clone().into_bytes().into()).await {
            Ok(_) => Ok(Ok(())),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                let first = self.nonces.get(&key).await.map_err(|e| kv_err("get", &key, e))?;
                if first.as_deref() == Some(seq.as_bytes()) {
                    // The same stored message again (redelivery), not a copy.
                    return Ok(Ok(()));
                }
                Ok(Err(refusal(ErrorCode::Replayed, format!("nonce {} of agent {agent:?} was already used", hex::encode(cti)), None)))
            }
            Err(e) => Err(kv_err("create", &key, e)),
        }
    }

    /// Record nonce `cti` of a verified request (status, cancel) of
    /// `agent`: requests are not stored messages, so any earlier use of the
    /// nonce (by a request or a submission) is a replay.
    pub async fn request_nonce(&self, agent: &str, cti: &[u8]) -> Result<Result<(), Failure>, BusError> {
        let key = format!("{agent}.{}", hex::encode(cti));
        match self.nonces.create(&key, b"request".to_vec().into()).await {
            Ok(_) => Ok(Ok(())),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(Err(refusal(ErrorCode::Replayed, format!("nonce {} of agent {agent:?} was already used", hex::encode(cti)), None))),
            Err(e) => Err(kv_err("create", &key, e)),
        }
    }

    /// Take a slot for `job_id` among `agent`'s unfinished jobs, at most
    /// `max`; `None` = no cap (and no bookkeeping). Idempotent per job.
    pub async fn take_slot(&self, agent: &str, job_id: Uuid, max: Option<u32>) -> Result<Result<(), Failure>, BusError> {
        let Some(max) = max.filter(|&m| m > 0) else { return Ok(Ok(())) };
        for _ in 0..16 {
            let entry = self.active.entry(agent).await.map_err(|e| kv_err("get", agent, e))?;
            let (mut active, revision) = match &entry {
                Some(e) if !e.value.is_empty() => (orfeas_wire::from_cbor::<ActiveJobs>(&e.value).map_err(|e| kv_err("get", agent, e))?, Some(e.revision)),
                Some(e) => (ActiveJobs::default(), Some(e.revision)),
                None => (ActiveJobs::default(), None),
            };
            if active.jobs.iter().any(|(id, _)| *id == job_id) {
                return Ok(Ok(()));
            }
            if active.jobs.len() >= max as usize {
                active.jobs = self.unfinished(agent, active.jobs).await?;
                if active.jobs.len() >= max as usize {
                    return Ok(Err(refusal(
                        ErrorCode::ConcurrencyLimit,
                        format!("agent {agent:?} has {} unfinished jobs, its limit is {max}", active.jobs.len()),
                        Some(Duration::from_millis(CONCURRENCY_RETRY_MS)),
                    )));
                }
            }
            active.jobs.push((job_id, now_ms()));
            let bytes = orfeas_wire::to_cbor(&active);
            let written = match revision {
                Some(revision) => match self.active.update(agent, bytes.into(), revision).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => false,
                    Err(e) => return Err(kv_err("update", agent, e)),
                },
                None => match self.active.create(agent, bytes.into()).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == CreateErrorKind::AlreadyExists => false,
                    Err(e) => return Err(kv_err("create", agent, e)),
                },
            };
            if written {
                return Ok(Ok(()));
            }
        }
        Err(kv_err("update", agent, "the active-jobs record kept changing"))
    }

    /// The listed jobs that are not finished.
    async fn unfinished(&self, agent: &str, jobs: Vec<(Uuid, u64)>) -> Result<Vec<(Uuid, u64)>, BusError> {
        let now = now_ms();
        let mut keep = Vec::with_capacity(jobs.len());
        for (job_id, since) in jobs {
            match self.jobs.get(agent, &job_id).await? {
                Some((record, _)) if record.state.is_terminal() => {}
                Some(_) => keep.push((job_id, since)),
                None if now.saturating_sub(since) < UNRECORDED_GRACE_MS => keep.push((job_id, since)),
                None => {}
            }
        }
        Ok(keep)
    }
}

/// The number of jobs agent `agent` holds a slot for (operators, tests).
pub async fn active_jobs(active: &kv::Store, agent: &str) -> Result<ActiveJobs, BusError> {
    match active.get(agent).await.map_err(|e| kv_err("get", agent, e))? {
        Some(bytes) if !bytes.is_empty() => orfeas_wire::from_cbor(&bytes).map_err(|e| kv_err("get", agent, e)),
        _ => Ok(ActiveJobs::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_a_wait_of_at_most_one_period() {
        let rates = AgentRates::default();
        for i in 0..6 {
            assert!(rates.check("alice", Some(6)).is_ok(), "request {i} of the burst");
        }
        let refused = rates.check("alice", Some(6)).unwrap_err();
        assert_eq!((refused.code, refused.status), (ErrorCode::RateLimited, 429));
        // One cell comes back every 60 s / 6 = 10 s.
        let wait = refused.retry_after_ms.unwrap();
        assert!(wait > 0 && wait <= 10_000, "{wait}");
        // Each agent has its own limiter; no limit means none.
        assert!(rates.check("bob", Some(6)).is_ok());
        assert!((0..100).all(|_| rates.check("carol", None).is_ok()));
        // A changed quota takes effect at once (a fresh burst at the new rate).
        assert!(rates.check("alice", Some(60)).is_ok());
    }

    #[test]
    fn refusals_carry_code_status_and_retry_after() {
        let f = refusal(ErrorCode::RateLimited, "slow down", Some(Duration::from_micros(10)));
        assert_eq!((f.code, f.status, f.retryable, f.retry_after_ms), (ErrorCode::RateLimited, 429, true, Some(1)));
        let f = refusal(ErrorCode::Replayed, "again", None);
        assert_eq!((f.status, f.retryable, f.retry_after_ms), (401, false, None));
    }

    #[test]
    fn nonce_ttl_covers_the_longest_acceptance_window() {
        assert!(orfeas_wire::v1::MAX_LIFETIME_S + 2 * MAX_CLOCK_SKEW_S <= NONCE_TTL.as_secs());
        assert!(MAX_CLOCK_SKEW_S >= 120, "the default skew fits");
    }
}
