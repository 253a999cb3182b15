//! An agent's client (feature `client`): sign and publish submissions, then
//! read the job's events, verifying each one against the signing key the
//! node published in the `orfeas_nodes` bucket.

use std::{collections::HashMap, time::Duration};

use async_nats::{jetstream, HeaderMap, Subscriber};
use futures::StreamExt;

use crate::{
    envelope::{self, ContentKind},
    subjects,
    v1::{
        CancelRequest, Event, EventKind, FetchReply, FetchRequest, Failure, JobStatus, NodeRecord, StatusReply, StatusRequest, SubmitBatch, SubmitJob,
        MAX_FETCH_CHUNK, MAX_LIFETIME_S,
    },
    PublicKey, SecretKey,
};

/// Errors an agent sees from its client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// NATS refused or timed out.
    #[error("nats: {0}")]
    Nats(String),
    /// An event failed verification: it is not from a known node.
    #[error("event rejected: {0}")]
    Unverified(String),
    /// No event arrived in time.
    #[error("no event within {0:?}")]
    Timeout(Duration),
    /// A node refused a request or has nothing to give.
    #[error("{} ({}): {}", .0.status, .0.code, .0.error)]
    Refused(Failure),
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn nats_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Nats(e.to_string())
}

/// One agent's connection to a deployment. Cloning is cheap (the NATS
/// connection is shared) and gives each concurrent caller its own node-key
/// cache, so callers need no lock around a shared client.
#[derive(Clone)]
pub struct AgentClient {
    client: async_nats::Client,
    js: jetstream::Context,
    agent: String,
    key: SecretKey,
    audience: String,
    node_keys: HashMap<String, PublicKey>,
}

impl JobEvents {
    /// The subject subscribed to (a job's, or `orfeas.events.<agent>.>` for a batch).
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

/// Events of one submitted job, in arrival order.
pub struct JobEvents {
    subject: String,
    subscriber: Subscriber,
    /// The W3C `traceparent` the submission carried (the job's trace).
    pub traceparent: Option<String>,
}

/// Connect options for `agent` on a server running the isolation config
/// (`orfeas nats-config`): the agent's signing key as its nkey, and its own
/// inbox prefix `_INBOX_<agent>` (the only inbox it may subscribe to).
pub fn isolated_options(agent: &str, key: &SecretKey) -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::with_nkey(key.nats_seed()).custom_inbox_prefix(format!("_INBOX_{agent}")).name(format!("orfeas-agent-{agent}"))
}

/// A new sampled W3C `traceparent` (random trace and span ids).
pub fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

impl AgentClient {
    /// A client for `agent` signing with `key`, for deployment `audience`.
    pub fn new(client: async_nats::Client, agent: &str, key: SecretKey, audience: &str) -> Self {
        let js = jetstream::new(client.clone());
        Self { client, js, agent: agent.to_string(), key, audience: audience.to_string(), node_keys: HashMap::new() }
    }

    /// Upload `bytes` as `name` into this agent's part of the JetStream
    /// object store [`subjects::UPLOADS_BUCKET`] (object `<agent>/<name>`)
    /// and return the image reference to submit: its sha256 and size go
    /// into the signed job, so the node refuses any other bytes.
    pub async fn upload(&self, name: &str, media_type: &str, bytes: &[u8]) -> Result<crate::v1::ImageInput, ClientError> {
        let image = crate::v1::ImageInput::by_reference(&self.agent, crate::v1::RefStore::Jetstream, name, media_type, bytes);
        let crate::v1::ImageInput::Ref { key, .. } = &image else { unreachable!("by_reference makes a Ref") };
        let bucket = self.js.get_object_store(subjects::UPLOADS_BUCKET).await.map_err(nats_err)?;
        bucket.put(key.as_str(), &mut std::io::Cursor::new(bytes)).await.map_err(nats_err)?;
        Ok(image)
    }

    /// Sign and publish `job`; returns the subscription to its events,
    /// opened before publishing so no event is missed. Waits for the
    /// submit stream's PubAck (a full queue refuses here, at once).
    /// The job starts a new trace (`traceparent` header).
    pub async fn submit(&self, job: &SubmitJob) -> Result<JobEvents, ClientError> {
        self.submit_traced(job, &new_traceparent()).await
    }

    /// [`submit`](Self::submit) inside the caller's trace: `traceparent` is
    /// a W3C header value; the job's spans and events join that trace.
    pub async fn submit_traced(&self, job: &SubmitJob, traceparent: &str) -> Result<JobEvents, ClientError> {
        let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let (subject, bytes) = job.seal(&self.agent, &self.key, &self.audience, now_s, MAX_LIFETIME_S / 2);
        self.publish_with(&job.job_id, subject, bytes, Some(traceparent)).await
    }

    /// Subscribe to one of this agent's jobs' events without submitting
    /// anything (to follow a job another call or client submitted).
    pub async fn job_events(&self, job_id: &uuid::Uuid) -> Result<JobEvents, ClientError> {
        let events_subject = subjects::events(&self.agent, job_id);
        let subscriber = self.client.subscribe(events_subject.clone()).await.map_err(nats_err)?;
        Ok(JobEvents { subject: events_subject, subscriber, traceparent: None })
    }

    /// Publish already-sealed bytes (tests use this to send tampered or
    /// foreign messages) and subscribe to the job's events.
    pub async fn publish_raw(&self, job_id: &uuid::Uuid, subject: String, bytes: Vec<u8>) -> Result<JobEvents, ClientError> {
        self.publish_with(job_id, subject, bytes, None).await
    }

    async fn publish_with(
        &self,
        job_id: &uuid::Uuid,
        subject: String,
        bytes: Vec<u8>,
        traceparent: Option<&str>,
    ) -> Result<JobEvents, ClientError> {
        let events_subject = subjects::events(&self.agent, job_id);
        let subscriber = self.client.subscribe(events_subject.clone()).await.map_err(nats_err)?;
        let mut headers = HeaderMap::new();
        let msg_id = format!("{}:{}:{}", self.agent, job_id, hex::encode(&bytes[bytes.len().saturating_sub(8)..]));
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        if let Some(traceparent) = traceparent {
            headers.insert("traceparent", traceparent);
        }
        self.js
            .publish_with_headers(subject, headers, bytes.into())
            .await
            .map_err(nats_err)?
            .await
            .map_err(nats_err)?;
        Ok(JobEvents { subject: events_subject, subscriber, traceparent: traceparent.map(str::to_string) })
    }

    /// The next verified event of a job.
    pub async fn next_event(&mut self, events: &mut JobEvents, timeout: Duration) -> Result<Event, ClientError> {
        let message = tokio::time::timeout(timeout, events.subscriber.next())
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .ok_or_else(|| nats_err("subscription closed"))?;
        // The subject it arrived on (a batch's subscription is a wildcard):
        // the signature binds the event to it, and the server only delivers
        // what matches the subscription.
        self.verify_event(&message.subject, &message.payload).await
    }

    /// Verify a signed event received on `subject`.
    pub async fn verify_event(&mut self, subject: &str, bytes: &[u8]) -> Result<Event, ClientError> {
        let opened = envelope::open(bytes, 1 << 20, ContentKind::Event).map_err(|e| ClientError::Unverified(e.to_string()))?;
        let node = opened.claims.iss.clone();
        let key = match self.node_keys.get(&node) {
            Some(key) if *key.id().0 == opened.kid.0 => *key,
            _ => {
                let key = self.fetch_node_key(&node).await?;
                self.node_keys.insert(node.clone(), key);
                key
            }
        };
        opened.verify(&key, subject).map_err(|e| ClientError::Unverified(e.to_string()))?;
        // Signed for another deployment (one sharing node ids and keys).
        if opened.claims.aud != self.audience {
            return Err(ClientError::Unverified(format!("event audience {:?} is not {:?}", opened.claims.aud, self.audience)));
        }
        let event: Event = crate::from_cbor(&opened.payload).map_err(ClientError::Unverified)?;
        if event.node != node {
            return Err(ClientError::Unverified(format!("event names node {:?} but was signed by {node:?}", event.node)));
        }
        // An events subject names its job: the event must be about that one.
        if subject.starts_with("orfeas.events.") && subject.rsplit('.').next() != Some(event.job_id.to_string().as_str()) {
            return Err(ClientError::Unverified(format!("event of job {} signed for {subject}", event.job_id)));
        }
        Ok(event)
    }

    /// The `completed` event of one of this agent's jobs, re-signed by a
    /// node that can serve its files (`orfeas.results.fetch.<agent>`), with
    /// fresh download URLs. For agents that only speak NATS.
    pub async fn fetch_manifest(&mut self, job_id: &uuid::Uuid, timeout: Duration) -> Result<Event, ClientError> {
        let sealed = self.fetch_manifest_sealed(job_id, timeout).await?;
        // Bound to the job's events subject, not the reply inbox it came on.
        let event = self.verify_event(&subjects::events(&self.agent, job_id), &sealed).await?;
        match (&event.kind, event.job_id == *job_id) {
            (EventKind::Completed { .. }, true) => Ok(event),
            _ => Err(ClientError::Unverified(format!("manifest for job {job_id} is a {} event of job {}", event.kind.name(), event.job_id))),
        }
    }

    /// The manifest as received, not yet verified: the COSE_Sign1 event
    /// envelope, signed by the answering node for the job's events subject
    /// `orfeas.events.<agent>.<job_id>` (for verifiers of their own).
    pub async fn fetch_manifest_sealed(&self, job_id: &uuid::Uuid, timeout: Duration) -> Result<Vec<u8>, ClientError> {
        let request = FetchRequest { job_id: *job_id, location: None, offset: 0, max_bytes: 0 };
        match self.fetch_request(&request, timeout).await? {
            FetchReply::Manifest { event } => Ok(event),
            FetchReply::Error(failure) => Err(ClientError::Refused(failure)),
            FetchReply::Chunk { .. } => Err(ClientError::Unverified("a chunk answered a manifest request".into())),
        }
    }

    /// The bytes of file `location` of job `job_id` over NATS, in chunks of
    /// at most [`MAX_FETCH_CHUNK`], checked against `sha256` (hex, from the
    /// verified manifest) when given.
    pub async fn fetch_file(&self, job_id: &uuid::Uuid, location: &str, sha256: Option<&str>, timeout: Duration) -> Result<Vec<u8>, ClientError> {
        let mut data = Vec::new();
        loop {
            let request = FetchRequest { job_id: *job_id, location: Some(location.to_string()), offset: data.len() as u64, max_bytes: MAX_FETCH_CHUNK };
            match self.fetch_request(&request, timeout).await? {
                FetchReply::Chunk { location: got, offset, total_bytes, data: chunk } => {
                    if got != location || offset != data.len() as u64 {
                        return Err(ClientError::Unverified(format!("asked for {location}@{} but got {got}@{offset}", data.len())));
                    }
                    let done = chunk.is_empty() || offset + chunk.len() as u64 >= total_bytes;
                    data.extend_from_slice(&chunk);
                    if done {
                        break;
                    }
                }
                FetchReply::Error(failure) => return Err(ClientError::Refused(failure)),
                FetchReply::Manifest { .. } => return Err(ClientError::Unverified("a manifest answered a chunk request".into())),
            }
        }
        if let Some(want) = sha256 {
            use sha2::Digest;
            let got = hex::encode(sha2::Sha256::digest(&data));
            if got != want {
                return Err(ClientError::Unverified(format!("{location}: sha256 {got} does not match the manifest's {want}")));
            }
        }
        Ok(data)
    }

    /// The state of one of this agent's jobs, from its record (any node
    /// answers on `orfeas.status.<agent>`).
    pub async fn status(&self, job_id: &uuid::Uuid, timeout: Duration) -> Result<JobStatus, ClientError> {
        let (subject, bytes) = StatusRequest { job_id: Some(*job_id), batch_id: None }.seal(&self.agent, &self.key, &self.audience, now_s());
        match self.status_request(subject, bytes, timeout).await? {
            StatusReply::Job(status) => Ok(status),
            other => Err(ClientError::Unverified(format!("a job status request was answered with {other:?}"))),
        }
    }

    /// The state of every job of one of this agent's batches: the admitted
    /// jobs' states and the refused jobs' failures.
    pub async fn batch_status(&self, batch_id: &uuid::Uuid, timeout: Duration) -> Result<(Vec<JobStatus>, Vec<Failure>), ClientError> {
        let (subject, bytes) = StatusRequest { job_id: None, batch_id: Some(*batch_id) }.seal(&self.agent, &self.key, &self.audience, now_s());
        match self.status_request(subject, bytes, timeout).await? {
            StatusReply::Batch { jobs, rejected, .. } => Ok((jobs, rejected)),
            other => Err(ClientError::Unverified(format!("a batch status request was answered with {other:?}"))),
        }
    }

    /// Sign and publish a batch; returns a subscription to every event of
    /// this agent (`orfeas.events.<agent>.>`: the batch's jobs and a refusal
    /// of the whole batch, on `…<batch_id>`), opened before publishing.
    pub async fn submit_batch(&self, batch: &SubmitBatch) -> Result<JobEvents, ClientError> {
        let (subject, bytes) = batch.seal(&self.agent, &self.key, &self.audience, now_s(), MAX_LIFETIME_S / 2);
        let events_subject = format!("orfeas.events.{}.>", self.agent);
        let subscriber = self.client.subscribe(events_subject.clone()).await.map_err(nats_err)?;
        let mut headers = HeaderMap::new();
        let msg_id = format!("{}:{}:{}", self.agent, batch.batch_id, hex::encode(&bytes[bytes.len().saturating_sub(8)..]));
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        self.js.publish_with_headers(subject, headers, bytes.into()).await.map_err(nats_err)?.await.map_err(nats_err)?;
        Ok(JobEvents { subject: events_subject, subscriber, traceparent: None })
    }

    /// Cancel one of this agent's jobs (`orfeas.cancel.<agent>`): a queued
    /// job ends at once with `failed{canceled}`, a running one when its node
    /// notices (`cancel_requested` in the answer); a finished job is left as
    /// it is. Returns the job's state after the request.
    pub async fn cancel(&self, job_id: &uuid::Uuid, timeout: Duration) -> Result<JobStatus, ClientError> {
        let (subject, bytes) = CancelRequest { job_id: *job_id }.seal(&self.agent, &self.key, &self.audience, now_s());
        match self.status_request(subject, bytes, timeout).await? {
            StatusReply::Job(status) => Ok(status),
            other => Err(ClientError::Unverified(format!("a cancel request was answered with {other:?}"))),
        }
    }

    async fn status_request(&self, subject: String, bytes: Vec<u8>, timeout: Duration) -> Result<StatusReply, ClientError> {
        let cti = envelope::open_one_of(&bytes, usize::MAX, &[ContentKind::StatusRequest, ContentKind::CancelRequest])
            .map(|o| o.claims.cti)
            .map_err(|e| ClientError::Unverified(e.to_string()))?;
        let reply = tokio::time::timeout(timeout, self.client.request(subject.clone(), bytes.into()))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(nats_err)?;
        self.verify_reply(&subject, &cti, reply.headers.as_ref(), &reply.payload).await?;
        match crate::from_cbor::<StatusReply>(&reply.payload).map_err(ClientError::Unverified)? {
            StatusReply::Error(failure) => Err(ClientError::Refused(failure)),
            answer => Ok(answer),
        }
    }

    /// Check a status or cancel reply's signature: by a registered node's
    /// key, over the body as received, bound to the request's subject and
    /// nonce, for this deployment.
    async fn verify_reply(&self, subject: &str, cti: &[u8], headers: Option<&HeaderMap>, body: &[u8]) -> Result<(), ClientError> {
        let unverified = |e: &dyn std::fmt::Display| ClientError::Unverified(format!("reply: {e}"));
        let signature = headers
            .and_then(|h| h.get(crate::v1::REPLY_SIGNATURE_HEADER))
            .ok_or_else(|| ClientError::Unverified(format!("reply has no {} header", crate::v1::REPLY_SIGNATURE_HEADER)))?;
        let opened = crate::v1::open_reply(signature.as_str(), body).map_err(|e| unverified(&e))?;
        let key = match self.node_keys.get(&opened.claims.iss) {
            Some(key) if key.id().0 == opened.kid.0 => *key,
            _ => self.fetch_node_key(&opened.claims.iss).await?,
        };
        opened.verify(&key, subject).map_err(|e| unverified(&e))?;
        if opened.claims.cti != cti {
            return Err(unverified(&"signed for another request (cti differs)"));
        }
        if opened.claims.aud != self.audience {
            return Err(unverified(&format!("audience {:?} is not {:?}", opened.claims.aud, self.audience)));
        }
        Ok(())
    }

    async fn fetch_request(&self, request: &FetchRequest, timeout: Duration) -> Result<FetchReply, ClientError> {
        let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let (subject, bytes) = request.seal(&self.agent, &self.key, &self.audience, now_s);
        let reply = tokio::time::timeout(timeout, self.client.request(subject, bytes.into()))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(nats_err)?;
        crate::from_cbor(&reply.payload).map_err(ClientError::Unverified)
    }

    async fn fetch_node_key(&self, node: &str) -> Result<PublicKey, ClientError> {
        let kv = self.js.get_key_value(subjects::NODES_BUCKET).await.map_err(nats_err)?;
        let bytes = kv
            .get(node)
            .await
            .map_err(nats_err)?
            .ok_or_else(|| ClientError::Unverified(format!("node {node:?} is not registered")))?;
        let record: NodeRecord = crate::from_cbor(&bytes).map_err(ClientError::Unverified)?;
        PublicKey::from_hex(&record.public_key).map_err(|e| ClientError::Unverified(e.to_string()))
    }
}
