//! Ingress: the node's front door.
//!
//! - Consumes: agents' signed submissions from the `ingress` durable pull
//!   consumer on `ORFEAS_SUBMIT` (`orfeas.jobs.submit.<agent>`).
//! - Publishes: admitted jobs on `orfeas.jobs.queue.<lane>` (the agent's
//!   lane, or a lower one the job asked for; waits for the PubAck), then the
//!   `accepted` event; or a `rejected` event with a stable code. The
//!   submission is acked only after that.
//! - Checks, cheapest first: size cap, envelope decode, pre-auth rate per
//!   subject token, key status in the registry (unknown, revoked, outside
//!   its validity window), issuer = subject token, `verify_strict` over the
//!   received bytes bound to the subject, audience and time window, strict
//!   payload decode, events subject, model, formats, image header and size;
//!   then the agent's policy and the [`Gate`]: operation allowed, image
//!   bytes, nonce not seen, per-agent rate, concurrency cap. Then a
//!   create-only job record makes resubmission idempotent: same id and same
//!   request → no second job; same id, different request → `conflict`.
//! - A `SubmitBatch` on the same subject is checked once and admitted job
//!   by job ([`crate::batch`]).
//! - Submissions are checked and admitted concurrently (up to the pull
//!   credits) on tasks, so one slow KV or PubAck round trip never holds up
//!   the next agent; each runs in its own `job.admit` span, in the trace
//!   the submission's `traceparent` header names.
//! - State: the pull loop and its credits, the admission context shared by
//!   those tasks, and a queue-depth reading refreshed in the background.
//! - Restart policy: stateless between messages; a restart loses nothing
//!   (unacked submissions are redelivered; the job record makes
//!   re-admission idempotent).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use async_nats::{jetstream::{self, AckKind}, HeaderMap};
use orfeas_wire::{
    envelope::{self, ContentKind, Opened},
    subjects,
    v1::{self, AdmittedJob, AdmittedRequest, EventKind, Failure, Format, ImageInput, Lane, SubmitJob},
    ErrorCode, PublicKey,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use sha2::{Digest, Sha256};
use tokio::{sync::Semaphore, task::JoinHandle};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    bus::{self, Bus, BusError},
    events::EventSink,
    gate::Gate,
    jobs::{Created, JobRecord, JobState, JobStore},
    metrics,
    model::Manifest,
    now_ms,
    preprocess,
    registry::{AgentRecord, KeyStatus, Registry},
    settings::NodeSettings,
    trace::{self, TraceParent},
};

/// Submissions verified concurrently at most.
const CREDITS: usize = 64;
/// Metric label for messages whose agent is not registered.
const UNREGISTERED: &str = "_unregistered";

/// A refused message: the job id when it could be read, and why.
#[derive(Debug)]
pub struct Rejection {
    /// The job id, if the payload could be read at all.
    pub job_id: Option<Uuid>,
    /// Why.
    pub failure: Failure,
}

impl Rejection {
    fn new(job_id: Option<Uuid>, code: ErrorCode, error: impl Into<String>) -> Self {
        Self { job_id, failure: Failure::new(code, error) }
    }
}

/// A submission that passed every check.
#[derive(Debug, Clone)]
pub struct ValidJob {
    /// The agent (verified issuer).
    pub agent: String,
    /// The job, formats defaulted.
    pub job: SubmitJob,
    /// SHA-256 of the signed payload (of the job's own CBOR in a batch), hex.
    pub digest: String,
    /// The batch it came in.
    pub batch_id: Option<Uuid>,
}

/// What Ingress checks submissions against.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Deployment name expected in `aud`.
    pub audience: String,
    /// Tolerated clock skew, seconds.
    pub clock_skew_s: u64,
    /// Largest image side, pixels.
    pub max_image_side: u32,
    /// Models served, by name.
    pub models: HashMap<String, Manifest>,
}

/// Best-effort job id from an unverified payload, so a rejection reaches the
/// job's events subject. Never used for anything else.
fn unverified_job_id(opened: &Opened) -> Option<Uuid> {
    orfeas_wire::from_cbor::<SubmitJob>(&opened.payload).ok().map(|j| j.job_id)
}

/// Steps 1–2: cap and decode (a single job or a batch).
pub fn open_submission(bytes: &[u8]) -> Result<Opened, Rejection> {
    envelope::open_one_of(bytes, v1::MAX_SUBMIT_BYTES, &[ContentKind::SubmitJob, ContentKind::SubmitBatch])
        .map_err(|e| Rejection::new(None, e.code(), e.to_string()))
}

/// Steps after the key lookup: identity, signature, time, payload, policy.
pub fn check_submission(
    opened: &Opened,
    subject: &str,
    key: Option<PublicKey>,
    policy: &Policy,
    now_s: u64,
) -> Result<ValidJob, Rejection> {
    let job_id = unverified_job_id(opened);
    let reject = |code, error: String| Rejection::new(job_id, code, error);
    let agent = subjects::agent_of_submit(subject).ok_or_else(|| reject(ErrorCode::Forbidden, format!("{subject:?} is not a submit subject")))?;
    if opened.claims.iss != agent {
        return Err(reject(ErrorCode::Forbidden, format!("issuer {:?} published on {agent:?}'s subject", opened.claims.iss)));
    }
    let key = key.ok_or_else(|| reject(ErrorCode::UnknownKey, format!("agent {agent:?} has no active key {:?}", opened.kid.0)))?;
    opened.verify(&key, subject).map_err(|e| reject(e.code(), e.to_string()))?;
    if let Err(e) = opened.check_claims(&policy.audience, now_s, policy.clock_skew_s, v1::MAX_LIFETIME_S) {
        let mut rejection = reject(e.code(), e.to_string());
        rejection.failure.server_time_ms = Some(now_s * 1000);
        return Err(rejection);
    }
    if opened.op != "submit" {
        return Err(reject(ErrorCode::Forbidden, format!("operation {:?} is not submit", opened.op)));
    }
    let mut job: SubmitJob = orfeas_wire::from_cbor(&opened.payload).map_err(|e| reject(ErrorCode::Invalid, format!("submit payload: {e}")))?;
    let job_id = Some(job.job_id);
    let reject = |code, error: String| Rejection::new(job_id, code, error);
    let expected_events = subjects::events(agent, &job.job_id);
    if opened.events_subject.as_deref() != Some(expected_events.as_str()) {
        return Err(reject(ErrorCode::Forbidden, format!("events subject {:?} is not {expected_events:?}", opened.events_subject)));
    }
    check_job(&mut job, agent, policy).map_err(|(code, error)| reject(code, error))?;
    let digest = hex::encode(Sha256::digest(&opened.payload));
    Ok(ValidJob { agent: agent.to_string(), job, digest, batch_id: None })
}

/// The checks of one job's content: model served, parameters, formats
/// (defaulted and deduplicated), image size and header (inline), or the
/// reference's form, `agent`'s prefix, size cap and media type (by reference).
pub fn check_job(job: &mut SubmitJob, agent: &str, policy: &Policy) -> Result<(), (ErrorCode, String)> {
    let reject = |code, error: String| (code, error);
    // The nil id names no job an agent could wait for (refusals that could
    // not read an id use it), so it is refused before anything is admitted.
    if job.job_id.is_nil() {
        return Err(reject(ErrorCode::Invalid, "job_id is the nil UUID; use a fresh random (v4) or time-ordered (v7) UUID".into()));
    }
    if !policy.models.contains_key(&job.model) {
        let mut served: Vec<&str> = policy.models.keys().map(String::as_str).collect();
        served.sort_unstable();
        return Err(reject(ErrorCode::UnknownModel, format!("model {:?} is not served (models: {})", job.model, served.join(", "))));
    }
    job.params.validate().map_err(|e| reject(ErrorCode::Invalid, e))?;
    policy.models[&job.model].param_row(&job.params.model_params).map_err(|e| reject(ErrorCode::Invalid, e))?;
    if job.formats.is_empty() {
        job.formats = vec![Format::Glb];
    }
    let mut unique = Vec::with_capacity(job.formats.len());
    for f in job.formats.drain(..) {
        if !unique.contains(&f) {
            unique.push(f);
        }
    }
    job.formats = unique;
    match &job.image {
        ImageInput::Inline { media_type, data } => {
            if data.len() > v1::MAX_INLINE_IMAGE_BYTES {
                return Err(reject(ErrorCode::TooLarge, format!("inline image of {} bytes exceeds {}", data.len(), v1::MAX_INLINE_IMAGE_BYTES)));
            }
            preprocess::check_header(data, media_type, policy.max_image_side).map_err(|e| reject(e.code(), e.to_string()))?;
        }
        image @ ImageInput::Ref { media_type, .. } => {
            // The bytes are fetched and their header checked by the node that runs the job.
            if crate::image_input::format_of(media_type).is_none() {
                return Err(reject(ErrorCode::InvalidImage, format!("media type {media_type:?} is not image/png, image/jpeg or image/webp")));
            }
            image.check_ref(agent, v1::MAX_REF_IMAGE_BYTES)?;
        }
    }
    Ok(())
}

/// Ingress configuration.
pub struct Ingress {
    /// Node settings.
    pub settings: Arc<NodeSettings>,
    /// NATS handles.
    pub bus: Bus,
    /// Agent registry.
    pub registry: Registry,
    /// Job records.
    pub jobs: JobStore,
    /// Event publisher.
    pub events: EventSink,
    /// Admission policy.
    pub policy: Policy,
    /// Pre-auth rate, nonces, per-agent rate and concurrency cap (shared
    /// with the status / cancel request server).
    pub gate: Arc<Gate>,
    /// Where admitted jobs' records wait for this node's claim.
    pub handoff: Arc<crate::handoff::Handoff>,
}

/// Ingress state.
pub struct IngressState {
    credits: Arc<Semaphore>,
    puller: JoinHandle<()>,
    depth_reader: JoinHandle<()>,
    admission: Arc<Admission>,
}

/// What an admission task needs: the actor's configuration, shared.
pub(crate) struct Admission {
    pub(crate) settings: Arc<NodeSettings>,
    pub(crate) bus: Bus,
    pub(crate) registry: Registry,
    pub(crate) jobs: JobStore,
    pub(crate) events: EventSink,
    pub(crate) policy: Policy,
    /// Pre-auth rate, nonces, per-agent rate and concurrency cap.
    pub(crate) gate: Arc<Gate>,
    /// Where admitted jobs' records wait for this node's claim.
    pub(crate) handoff: Arc<crate::handoff::Handoff>,
    /// Messages in the queue stream, refreshed in the background: an
    /// `accepted` event's queue position must not cost a round trip.
    queue_depth: Arc<AtomicU64>,
}

/// How often the queue depth for `accepted` is re-read.
const DEPTH_REFRESH: Duration = Duration::from_millis(250);

/// Messages to Ingress.
pub enum IngressMsg {
    /// A submission from JetStream.
    Delivered(jetstream::Message),
    /// The pull loop gave up.
    PullFailed(String),
}

/// How a submission was settled.
pub(crate) enum Settled {
    /// Admitted (or already admitted): ack.
    Ack,
    /// Refused; the rejection event is stored: term.
    Term,
    /// A durable step failed: retry later.
    Retry,
}

impl Admission {
    /// Check and admit one submission inside its `job.admit` span.
    async fn process(&self, message: &jetstream::Message) -> Settled {
        let trace = TraceParent::from_headers(message.headers.as_ref());
        let agent = subjects::agent_of_submit(&message.subject).unwrap_or(UNREGISTERED);
        let span = trace::hop_unknown_job("admit", &trace, agent);
        self.check_and_admit(message, &span, trace).instrument(span.clone()).await
    }

    async fn check_and_admit(&self, message: &jetstream::Message, span: &tracing::Span, trace: TraceParent) -> Settled {
        let subject = message.subject.to_string();
        let Some(agent) = subjects::agent_of_submit(&subject).map(str::to_string) else {
            tracing::warn!(subject, "message on a subject that is not a submit subject; dropped");
            return Settled::Term;
        };
        // Metric label: only registered agents get their own series, so a
        // flood of made-up subject tokens cannot grow the label set.
        let mut label = UNREGISTERED;
        let stream_seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        let verdict = match open_submission(&message.payload) {
            Ok(opened) if opened.kind == ContentKind::SubmitBatch => return self.admit_batch(message, &agent, opened, span, trace).await,
            Ok(opened) => match self.gate.pre_auth(&agent) {
                Err(failure) => Err(Rejection { job_id: unverified_job_id(&opened), failure }),
                Ok(()) => match self.registry.key_status(&agent, &opened.kid.0).await {
                    Ok((key, status, record)) => {
                        if key.is_some() {
                            label = &agent;
                        }
                        match self.verify(&opened, &subject, key, status, record, stream_seq).await {
                            Ok(verdict) => verdict,
                            Err(e) => {
                                tracing::warn!(error = %e, "admission state unreadable; retrying");
                                return Settled::Retry;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "registry unreadable");
                        return Settled::Retry;
                    }
                },
            },
            Err(rejection) => Err(rejection),
        };
        match verdict {
            Ok((valid, lane)) => match self.admit(valid, lane, span, trace).await {
                Ok(settled) => settled,
                Err(e) => {
                    tracing::warn!(error = %e, "admission not confirmed; retrying");
                    Settled::Retry
                }
            },
            Err(mut rejection) => {
                rejection.failure.job_id = rejection.job_id;
                let code = rejection.failure.code.as_str();
                metrics::REQUESTS.with_label_values(&[label, "submit", code]).inc();
                metrics::ERRORS.with_label_values(&[label, code]).inc();
                tracing::info!(agent, code = %rejection.failure.code, error = %rejection.failure.error, "submission rejected");
                let job_id = rejection.job_id.unwrap_or(Uuid::nil());
                span.record("job_id", tracing::field::display(job_id));
                let onward = trace::onward(span, &trace);
                match self.events.publish_in(Some(onward), &agent, job_id, 0, EventKind::Rejected(rejection.failure)).await {
                    Ok(()) => Settled::Term,
                    Err(_) => Settled::Retry,
                }
            }
        }
    }

    /// Steps 4–10 once the envelope is open: key status, signature, claims
    /// and payload ([`check_submission`]), then the agent's policy and the
    /// gate (operation, image size, nonce, rate, concurrency). The lane the
    /// job goes to comes with it. `Err` only when NATS did not answer.
    async fn verify(
        &self,
        opened: &Opened,
        subject: &str,
        key: Option<PublicKey>,
        status: KeyStatus,
        record: Option<AgentRecord>,
        stream_seq: u64,
    ) -> Result<Result<(ValidJob, Lane), Rejection>, BusError> {
        let unverified = unverified_job_id(opened);
        let agent = subjects::agent_of_submit(subject).unwrap_or(UNREGISTERED);
        if opened.claims.iss == agent {
            match status {
                KeyStatus::Revoked => return Ok(Err(Rejection::new(unverified, ErrorCode::RevokedKey, format!("key {} of agent {agent:?} is revoked", opened.kid.0)))),
                KeyStatus::Inactive(why) => return Ok(Err(Rejection::new(unverified, ErrorCode::UnknownKey, why))),
                KeyStatus::Active(_) | KeyStatus::Unknown => {}
            }
        }
        let valid = match check_submission(opened, subject, key, &self.policy, now_ms() / 1000) {
            Ok(valid) => valid,
            Err(rejection) => return Ok(Err(rejection)),
        };
        let Some(record) = record else {
            return Ok(Err(Rejection::new(unverified, ErrorCode::UnknownKey, format!("agent {agent:?} is not registered"))));
        };
        let job_id = Some(valid.job.job_id);
        let refuse = |failure: Failure| Ok(Err(Rejection { job_id, failure }));
        if !record.allows("submit") {
            return refuse(Failure::new(ErrorCode::Forbidden, format!("agent {agent:?} may not use operation submit")));
        }
        let bytes = valid.job.image.bytes();
        if let Some(cap) = record.max_image_bytes.filter(|&cap| bytes > cap) {
            return refuse(Failure::new(ErrorCode::TooLarge, format!("image of {bytes} bytes exceeds agent {agent:?}'s cap of {cap} bytes")));
        }
        if let Err(failure) = self.gate.nonce(agent, &opened.claims.cti, stream_seq).await? {
            return refuse(failure);
        }
        if let Err(failure) = self.gate.rate(agent, record.requests_per_minute) {
            return refuse(failure);
        }
        if let Err(failure) = self.gate.take_slot(agent, valid.job.job_id, record.max_concurrent).await? {
            return refuse(failure);
        }
        let lane = record.lane.at_most(valid.job.params.priority);
        Ok(Ok((valid, lane)))
    }

    /// Record, enqueue (PubAck), announce. Idempotent on the job id.
    pub(crate) async fn admit(&self, valid: ValidJob, lane: Lane, span: &tracing::Span, trace: TraceParent) -> Result<Settled, BusError> {
        let ValidJob { agent, job, digest, batch_id } = valid;
        span.record("job_id", tracing::field::display(job.job_id));
        let onward = trace::onward(span, &trace);
        let record = JobRecord {
            agent: agent.clone(),
            job_id: job.job_id,
            model: job.model.clone(),
            digest: digest.clone(),
            state: JobState::Admitted,
            attempt: 0,
            node: self.settings.node_id.clone(),
            updated_at_ms: now_ms(),
            terminal: None,
            terminal_seq: 0,
            lane,
            deadline_ms: job.params.deadline_ms,
            cancel_requested: false,
            batch_id,
            request: Some(AdmittedRequest { model: job.model.clone(), formats: job.formats.clone(), params: job.params.clone() }),
        };
        // A full system refuses new jobs at once (a known job is answered as usual).
        if let Some(mut failure) = crate::backpressure::refusal(self.queue_depth.load(Ordering::Relaxed), self.settings.submit_queue_max, &job.model) {
            if self.jobs.get(&agent, &job.job_id).await?.is_none() {
                failure.job_id = Some(job.job_id);
                metrics::REQUESTS.with_label_values(&[&agent, "submit", ErrorCode::Unavailable.as_str()]).inc();
                self.events.publish_in(Some(onward), &agent, job.job_id, 0, EventKind::Rejected(failure)).await?;
                return Ok(Settled::Term);
            }
        }
        let mut announcer = None;
        match self.jobs.create(&record).await? {
            Created::New(revision) => announcer = Some(self.handoff.admitted(record.clone(), revision)),
            Created::Exists(existing, _) if existing.digest != digest => {
                metrics::REQUESTS.with_label_values(&[&agent, "submit", ErrorCode::Conflict.as_str()]).inc();
                metrics::ERRORS.with_label_values(&[&agent, ErrorCode::Conflict.as_str()]).inc();
                let mut failure = Failure::new(ErrorCode::Conflict, format!("job {} exists with a different request", job.job_id));
                failure.job_id = Some(job.job_id);
                self.events.publish_in(Some(onward), &agent, job.job_id, 0, EventKind::Rejected(failure)).await?;
                return Ok(Settled::Term);
            }
            Created::Exists(existing, _) if existing.state != JobState::Admitted => {
                // Same request again after it was queued: one job, no new run.
                // Say `accepted` (seq 0) again: this may be the redelivery of
                // a submission whose first `accepted` was never confirmed
                // (NATS failed over between the queue PubAck and the event).
                // Agents see seq 0 twice at most, never a second job.
                tracing::info!(agent, job_id = %job.job_id, "duplicate submission of a known job");
                self.events.publish_in(Some(onward), &agent, job.job_id, 0, EventKind::Accepted { queue_position: 0, eta_ms: None }).await?;
                return Ok(Settled::Ack);
            }
            // Admitted but maybe not queued (crash between record and
            // PubAck): queue again; the queue's dedupe window drops a copy.
            Created::Exists(..) => {}
        }
        let admitted = AdmittedJob {
            job_id: job.job_id,
            agent: agent.clone(),
            model: job.model,
            formats: job.formats,
            params: job.params,
            image: job.image,
            admitted_at_ms: now_ms(),
            lane: record.lane,
            batch_id,
        };
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{agent}:{}", job.job_id).as_str());
        onward.inject(&mut headers);
        // Jobs ahead of this one (a recent reading, not a round trip), so
        // that `accepted` follows the PubAck at once.
        let queue_position = self.queue_depth.load(Ordering::Relaxed);
        let ack = self.bus.publish_acked(subjects::queue(lane.as_str(), &agent), headers, orfeas_wire::to_cbor(&admitted).into()).await?;
        // Counted at once, so a burst meets the limit before the next reading.
        self.queue_depth.fetch_add(1, Ordering::Relaxed);
        let _ = self.bus.client.publish(subjects::CONTROL_QUEUED, subjects::queue(lane.as_str(), &agent).into()).await;
        self.events.publish_in(Some(onward), &agent, job.job_id, 0, EventKind::Accepted { queue_position, eta_ms: crate::progress::accepted_eta(&admitted.model, queue_position) }).await?;
        if let Some(announcer) = announcer {
            announcer.stored();
        }
        metrics::REQUESTS.with_label_values(&[&agent, "submit", "accepted"]).inc();
        tracing::info!(agent, job_id = %job.job_id, seq = ack.sequence, "job admitted");
        Ok(Settled::Ack)
    }

}

/// Keep `depth` close to the number of queued jobs.
fn spawn_depth_reader(bus: Bus, depth: Arc<AtomicU64>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(DEPTH_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Ok(mut stream) = bus.js.get_stream(subjects::QUEUE_STREAM).await {
                if let Ok(info) = stream.info().await {
                    depth.store(info.state.messages, Ordering::Relaxed);
                }
            }
        }
    })
}

impl Actor for Ingress {
    type Msg = IngressMsg;
    type State = IngressState;
    type Arguments = ();

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, _: ()) -> Result<Self::State, ActorProcessingErr> {
        let consumer = self
            .bus
            .consumer(subjects::SUBMIT_STREAM, subjects::INGRESS_CONSUMER, &self.settings, (CREDITS * 4) as i64)
            .await?;
        let credits = Arc::new(Semaphore::new(CREDITS));
        let me = myself.clone();
        let puller = bus::spawn_puller(
            consumer,
            credits.clone(),
            Box::new(move |m| me.cast(IngressMsg::Delivered(m)).is_ok()),
            Box::new(move |e| {
                let _ = myself.cast(IngressMsg::PullFailed(e));
            }),
        );
        let queue_depth = Arc::new(AtomicU64::new(0));
        let depth_reader = spawn_depth_reader(self.bus.clone(), queue_depth.clone());
        let admission = Arc::new(Admission {
            settings: self.settings.clone(),
            bus: self.bus.clone(),
            registry: self.registry.clone(),
            jobs: self.jobs.clone(),
            events: self.events.clone(),
            policy: self.policy.clone(),
            gate: self.gate.clone(),
            handoff: self.handoff.clone(),
            queue_depth,
        });
        Ok(IngressState { credits, puller, depth_reader, admission })
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.puller.abort();
        state.depth_reader.abort();
        Ok(())
    }

    async fn handle(&self, _myself: ActorRef<Self::Msg>, message: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        match message {
            IngressMsg::Delivered(message) => {
                // The pull credit this message holds bounds the tasks.
                let admission = state.admission.clone();
                let credits = state.credits.clone();
                tokio::spawn(async move {
                    let kind = match admission.process(&message).await {
                        Settled::Ack => AckKind::Ack,
                        Settled::Term => AckKind::Term,
                        Settled::Retry => AckKind::Nak(Some(bus::retry_delay(message.info().map(|i| i.delivered as u64).unwrap_or(1)))),
                    };
                    if let Err(e) = message.ack_with(kind).await {
                        tracing::warn!(error = %e, "submission ack not sent; it will be redelivered");
                    }
                    credits.add_permits(1);
                });
            }
            IngressMsg::PullFailed(e) => return Err(e.into()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orfeas_wire::SecretKey;

    fn png() -> Vec<u8> {
        let img = image::RgbaImage::from_fn(16, 16, |x, _| image::Rgba([255, 0, 0, if x > 4 { 255 } else { 0 }]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn policy() -> Policy {
        let manifest: Manifest = toml::from_str(
            r#"name = "inflate"
version = "1"
input_size = [8, 8]
input_channels = 4
output_kind = "occupancy"
grid = [4, 4, 4]
iso = 0.0
bounds_min = [-1.0, -1.0, -1.0]
bounds_max = [1.0, 1.0, 1.0]
mem_per_item_mb = 1.0
precision = "fp32"
max_batch = 4"#,
        )
        .unwrap();
        Policy { audience: "orfeas".into(), clock_skew_s: 60, max_image_side: 1024, models: HashMap::from([("inflate".into(), manifest)]) }
    }

    fn job(model: &str, image: Vec<u8>) -> SubmitJob {
        SubmitJob {
            job_id: Uuid::from_u128(42),
            model: model.into(),
            image: ImageInput::Inline { media_type: "image/png".into(), data: image },
            formats: vec![],
            params: Default::default(),
        }
    }

    fn check(bytes: &[u8], subject: &str, key: Option<PublicKey>, now: u64) -> Result<ValidJob, Rejection> {
        let opened = open_submission(bytes)?;
        check_submission(&opened, subject, key, &policy(), now)
    }

    #[test]
    fn valid_submission_passes_with_default_format() {
        let key = SecretKey::from_seed([9; 32]);
        let (subject, bytes) = job("inflate", png()).seal("alice", &key, "orfeas", 1_000, 300);
        let valid = check(&bytes, &subject, Some(key.public()), 1_010).unwrap();
        assert_eq!(valid.agent, "alice");
        assert_eq!(valid.job.formats, vec![Format::Glb]);
        assert_eq!(valid.digest.len(), 64);
    }

    #[test]
    fn every_check_has_its_code() {
        let key = SecretKey::from_seed([9; 32]);
        let other = SecretKey::from_seed([8; 32]);
        let (subject, bytes) = job("inflate", png()).seal("alice", &key, "orfeas", 1_000, 300);
        let code = |r: Result<ValidJob, Rejection>| r.unwrap_err().failure.code;
        assert_eq!(code(check(&bytes, &subject, None, 1_000)), ErrorCode::UnknownKey);
        assert_eq!(code(check(&bytes, &subject, Some(other.public()), 1_000)), ErrorCode::BadSignature);
        assert_eq!(code(check(&bytes, "orfeas.jobs.submit.bob", Some(key.public()), 1_000)), ErrorCode::Forbidden);
        let stale = check(&bytes, &subject, Some(key.public()), 9_000).unwrap_err();
        assert_eq!(stale.failure.code, ErrorCode::Stale);
        assert_eq!(stale.failure.server_time_ms, Some(9_000_000));
        assert_eq!(stale.job_id, Some(Uuid::from_u128(42)), "rejection names the job");
        let (s, b) = job("nope", png()).seal("alice", &key, "orfeas", 1_000, 300);
        assert_eq!(code(check(&b, &s, Some(key.public()), 1_000)), ErrorCode::UnknownModel);
        let (s, b) = job("inflate", b"not an image".to_vec()).seal("alice", &key, "orfeas", 1_000, 300);
        assert_eq!(code(check(&b, &s, Some(key.public()), 1_000)), ErrorCode::InvalidImage);
        let mut bad_params = job("inflate", png());
        bad_params.params.target_faces = Some(3);
        let (s, b) = bad_params.seal("alice", &key, "orfeas", 1_000, 300);
        let r = check(&b, &s, Some(key.public()), 1_000).unwrap_err();
        assert_eq!(r.failure.code, ErrorCode::Invalid);
        assert!(r.failure.error.contains("target_faces 3"), "{}", r.failure.error);
        let mut unknown_param = job("inflate", png());
        unknown_param.params.model_params.insert("max_height".into(), 0.5);
        let (s, b) = unknown_param.seal("alice", &key, "orfeas", 1_000, 300);
        let r = check(&b, &s, Some(key.public()), 1_000).unwrap_err();
        assert_eq!(r.failure.code, ErrorCode::Invalid);
        assert!(r.failure.error.contains("no parameter \"max_height\""), "{}", r.failure.error);
        let (s, b) = job("inflate", png()).seal("alice", &key, "elsewhere", 1_000, 300);
        assert_eq!(code(check(&b, &s, Some(key.public()), 1_000)), ErrorCode::Forbidden);
        assert_eq!(code(check(b"garbage", &subject, Some(key.public()), 1_000)), ErrorCode::Malformed);
    }

    #[test]
    fn tampered_payload_is_bad_signature() {
        let key = SecretKey::from_seed([9; 32]);
        let (subject, bytes) = job("inflate", png()).seal("alice", &key, "orfeas", 1_000, 300);
        let at = bytes.windows(7).position(|w| w == b"inflate").unwrap();
        let mut tampered = bytes.clone();
        tampered[at + 6] = b'x';
        let r = check(&tampered, &subject, Some(key.public()), 1_000).unwrap_err();
        assert_eq!(r.failure.code, ErrorCode::BadSignature);
        assert_eq!(r.failure.status, 401);
    }
}
