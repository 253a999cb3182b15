//! ResultServer: hands agents the files of their finished jobs over NATS,
//! for agents that cannot reach the object store (`orfeas fetch JOB_ID`).
//!
//! - Consumes: signed `FetchRequest`s on `orfeas.results.fetch.<agent>`
//!   (request/reply; no stream: a lost request is simply asked again).
//! - Answers: the job's `completed` event re-signed by this node with fresh
//!   URLs (the manifest; the node that completed the job may be gone, and
//!   its key with it), or one chunk of one result file of at most
//!   [`MAX_FETCH_CHUNK`] bytes, which the agent checks against the SHA-256
//!   in the signed manifest; or a `FetchReply::Error` with a stable code.
//! - Who answers: with a shared store (S3) every node can, so nodes share
//!   the subject in queue group `orfeas-fetch` and one answers. With a
//!   local folder only the node that stored the job's files can: every node
//!   subscribes, and a node without the files stays silent (the agent takes
//!   the first answer; it times out when no node has them).
//! - Checks, as Ingress does for submissions: issuer = subject token,
//!   registered unrevoked key, `verify_strict` bound to the subject,
//!   audience and time window, operation `fetch`; then the job must be the
//!   agent's and the location one of the job's own files.
//! - Not an actor: stateless request/reply; a broken subscription is
//!   re-made by the loop.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use orfeas_wire::{
    envelope::{self, ContentKind},
    subjects,
    v1::{Event, EventKind, Failure, FetchReply, FetchRequest, MAX_FETCH_CHUNK, MAX_LIFETIME_S},
    ErrorCode, SecretKey,
};
use tokio::{sync::Semaphore, task::JoinHandle};

use crate::{
    jobs::JobStore,
    now_ms,
    registry::{KeyStatus, Registry},
    store::ResultStore,
};

/// Largest fetch request envelope, bytes.
const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Requests answered at once.
const CONCURRENCY: usize = 16;

/// What the result server needs.
#[derive(Clone)]
pub struct ResultServer {
    /// This node (issuer of re-signed manifests).
    pub node_id: String,
    /// The key it signs with.
    pub node_key: SecretKey,
    /// The deployment name (`aud`).
    pub deployment: String,
    /// Tolerated clock skew, seconds.
    pub clock_skew_s: u64,
    /// Agent keys.
    pub registry: Registry,
    /// Job records.
    pub jobs: JobStore,
    /// Result files.
    pub store: ResultStore,
}

/// What one request gets: an answer, or silence (another node has the files).
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// Send this.
    Reply(FetchReply),
    /// Say nothing.
    Silent,
}

fn refuse(code: ErrorCode, error: impl Into<String>) -> Answer {
    Answer::Reply(FetchReply::Error(Failure::new(code, error)))
}

impl ResultServer {
    /// Serve until the returned task is aborted.
    pub fn spawn(self, client: async_nats::Client) -> JoinHandle<()> {
        tokio::spawn(async move {
            let limit = Arc::new(Semaphore::new(CONCURRENCY));
            loop {
                let subscribed = if self.store.is_shared() {
                    client
                        .queue_subscribe(
                            subjects::FETCH_WILDCARD,
                            subjects::FETCH_QUEUE_GROUP.to_string(),
                        )
                        .await
                } else {
                    client.subscribe(subjects::FETCH_WILDCARD).await
                };
                let mut requests = match subscribed {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot subscribe to fetch requests; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                while let Some(message) = requests.next().await {
                    let Some(reply) = message.reply.clone() else {
                        continue;
                    };
                    let Ok(permit) = limit.clone().acquire_owned().await else {
                        return;
                    };
                    let (server, client) = (self.clone(), client.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        if let Answer::Reply(answer) =
                            server.answer(&message.subject, &message.payload).await
                        {
                            if let Err(e) = client
                                .publish(reply, orfeas_wire::to_cbor(&answer).into())
                                .await
                            {
                                tracing::warn!(error = %e, "fetch reply not sent");
                            }
                        }
                    });
                }
            }
        })
    }

    /// The answer to one request received on `subject`.
    pub async fn answer(&self, subject: &str, bytes: &[u8]) -> Answer {
        let Some(agent) = subjects::agent_of_fetch(subject) else {
            return refuse(
                ErrorCode::Forbidden,
                format!("{subject:?} is not a fetch subject"),
            );
        };
        let opened = match envelope::open(bytes, MAX_REQUEST_BYTES, ContentKind::FetchRequest) {
            Ok(o) => o,
            Err(e) => return refuse(e.code(), e.to_string()),
        };
        if opened.claims.iss != agent {
            return refuse(
                ErrorCode::Forbidden,
                format!(
                    "issuer {:?} asked on {agent:?}'s subject",
                    opened.claims.iss
                ),
            );
        }
        let (key, record) = match self.registry.key_status(agent, &opened.kid.0).await {
            Ok((Some(key), _, Some(record))) => (key, record),
            Ok((None, KeyStatus::Revoked, _)) => {
                return refuse(
                    ErrorCode::RevokedKey,
                    format!("key {} of agent {agent:?} is revoked", opened.kid.0),
                )
            }
            Ok(_) => {
                return refuse(
                    ErrorCode::UnknownKey,
                    format!("agent {agent:?} has no active key {:?}", opened.kid.0),
                )
            }
            Err(e) => {
                return refuse(
                    ErrorCode::Unavailable,
                    format!("agent registry unreadable: {e}"),
                )
            }
        };
        if let Err(e) = opened.verify(&key, subject) {
            return refuse(e.code(), e.to_string());
        }
        if let Err(e) = opened.check_claims(
            &self.deployment,
            now_ms() / 1000,
            self.clock_skew_s,
            MAX_LIFETIME_S,
        ) {
            return refuse(e.code(), e.to_string());
        }
        if opened.op != "fetch" {
            return refuse(
                ErrorCode::Forbidden,
                format!("operation {:?} is not fetch", opened.op),
            );
        }
        if !record.allows("fetch") {
            return refuse(
                ErrorCode::Forbidden,
                format!("agent {agent:?} may not use operation fetch"),
            );
        }
        let request: FetchRequest = match orfeas_wire::from_cbor(&opened.payload) {
            Ok(r) => r,
            Err(e) => return refuse(ErrorCode::Invalid, format!("fetch payload: {e}")),
        };
        self.serve(agent, request).await
    }

    async fn serve(&self, agent: &str, request: FetchRequest) -> Answer {
        let job_id = request.job_id;
        let record = match self.jobs.get(agent, &job_id).await {
            Ok(Some((record, _))) => record,
            Ok(None) => {
                return refuse(
                    ErrorCode::NotFound,
                    format!("agent {agent:?} has no job {job_id}"),
                )
            }
            Err(e) => {
                return refuse(
                    ErrorCode::Unavailable,
                    format!("job record unreadable: {e}"),
                )
            }
        };
        let Some(EventKind::Completed {
            mut results,
            mesh,
            report,
            mut previews,
        }) = record.terminal.clone()
        else {
            return match record.state.is_terminal() {
                true => refuse(
                    ErrorCode::NotFound,
                    format!("job {job_id} failed; it has no results"),
                ),
                false => refuse(
                    ErrorCode::Unavailable,
                    format!("job {job_id} is not finished yet"),
                ),
            };
        };
        let locations: Vec<String> = results
            .iter()
            .map(|r| r.location.clone())
            .chain(previews.iter().map(|p| p.location.clone()))
            .collect();
        // With a local folder, only the node holding the files answers.
        if !self.store.is_shared() {
            match self.store.size(&locations[0]).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Answer::Silent,
                Err(e) => return refuse(ErrorCode::StorageFailed, e.to_string()),
            }
        }
        let Some(location) = request.location else {
            // The manifest, with URLs signed now (S3 URLs expire).
            for r in &mut results {
                match self.store.url(&r.location).await {
                    Ok(url) => r.url = url,
                    Err(e) => return refuse(ErrorCode::StorageFailed, e.to_string()),
                }
            }
            for p in &mut previews {
                if let Ok(url) = self.store.url(&p.location).await {
                    p.url = url;
                }
            }
            let kind = EventKind::Completed {
                results,
                mesh,
                report,
                previews,
            };
            let event = Event {
                job_id,
                seq: record.terminal_seq,
                node: self.node_id.clone(),
                at_ms: now_ms(),
                kind,
            };
            let sealed = event.seal(
                &subjects::events(agent, &job_id),
                &self.node_key,
                &self.deployment,
                now_ms() / 1000,
            );
            return Answer::Reply(FetchReply::Manifest { event: sealed });
        };
        if !locations.contains(&location) {
            return refuse(
                ErrorCode::NotFound,
                format!("{location:?} is not a file of job {job_id}"),
            );
        }
        let total_bytes = match self.store.size(&location).await {
            Ok(n) => n,
            Err(e) if e.is_not_found() => {
                return refuse(
                    ErrorCode::NotFound,
                    format!("{location:?} is no longer stored"),
                )
            }
            Err(e) => return refuse(ErrorCode::StorageFailed, e.to_string()),
        };
        let want = u64::from(request.max_bytes.clamp(1, MAX_FETCH_CHUNK));
        let start = request.offset.min(total_bytes);
        let end = (start + want).min(total_bytes);
        match self.store.get_range(&location, start..end).await {
            Ok(data) => Answer::Reply(FetchReply::Chunk {
                location,
                offset: start,
                total_bytes,
                data,
            }),
            Err(e) => refuse(ErrorCode::StorageFailed, e.to_string()),
        }
    }
}
