//! Scheduler: turns admitted jobs into device batches and owns their acks.
//!
//! - Consumes: admitted jobs from `ORFEAS_QUEUE`, one durable pull consumer
//!   per lane and agent (see [`crate::queue`]), pulled by
//!   [`crate::fair_pull`]: each lane by its own credit (the node holds per
//!   lane at most what its devices can start soon), the agents with queued
//!   jobs in turn;
//!   `BatchLimits`, `Joined` and `DeviceIdle` from GpuWorkers (`Joined`:
//!   a pipeline model's batch joined the device's running set, so its slot
//!   is free while its jobs still sample; `DeviceIdle`: a batch's jobs left
//!   the device; both in the order the batches were sent); `Finished` from
//!   Postprocess; `WorkerLost` from the supervisor; `Drain` on shutdown.
//! - Publishes: `GpuWorkerMsg::Run` batches chosen by [`crate::lanes`]
//!   (lanes by weight 8 : 4 : 1, agents in turn inside a lane, one model,
//!   up to the batch cap: the configured maximum and what the device last
//!   reported it can take for that model). A device has two batch slots:
//!   the one it runs and the next one, prepared while it runs. A batch
//!   goes to a free slot when it is full or its oldest job has waited
//!   `max_queue_delay`, so a device is never idle longer than that while
//!   compatible work waits. Acks / naks / terms on the job messages;
//!   in-progress acks for every held job so JetStream does not redeliver
//!   work that is merely waiting here.
//! - Claiming a delivered job (its record set to `running` at this
//!   attempt, revision-fenced) runs on a task that answers with `Claimed`,
//!   so KV round trips never hold up batching.
//! - A cancel notice (`orfeas.control.cancel`, core NATS, from the node
//!   that answered the agent's cancel) for a job held here and not yet on
//!   a device ends it at once as `canceled` (through Postprocess, fenced)
//!   and terms its message; a job already on a device runs and its result
//!   is discarded — or, for a pipeline model, stops at its next sampler
//!   step (`GpuWorkerMsg::Cancel`). A lost notice changes nothing but that.
//! - Claiming also ends jobs that must not run: a `canceled` record is
//!   acked without a word (its canceller announced it); a record with
//!   `cancel_requested` ends as `canceled`; a job past its `deadline_ms`
//!   before it started ends as `deadline_exceeded` (also checked again
//!   when its batch is formed).
//! - No job is held forever: a held job that left its device (or went to
//!   Postprocess to end) and has no `Finished` after [`FINISH_PATIENCE`]
//!   is handed back (`orfeas_jobs_unaccounted_total`), since the
//!   in-progress acks would otherwise keep JetStream from delivering it
//!   again; its record fences the late attempt.
//! - State: held messages by job id (with their lane), the waiting jobs
//!   per lane and agent, free batch slots and running batches per device.
//! - Restart policy: restartable at any time. Held messages are never acked
//!   by a dead scheduler, so JetStream redelivers them after `ack_wait`; job
//!   records fence the attempts so no job is answered twice.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, AckKind};
use orfeas_wire::{
    subjects,
    v1::{AdmittedJob, Failure, Lane},
    ErrorCode,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::{sync::Semaphore, task::JoinHandle};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    bus::{self, Bus},
    events::EventSink,
    fair_pull::FairPull,
    heartbeat::NodeLoad,
    gpu_worker::GpuWorkerMsg,
    jobs::{JobRecord, JobState, JobStore, Updated},
    lanes::Waiting,
    metrics, now_ms,
    postprocess::PostprocessMsg,
    queue,
    roster::Roster,
    terminal::{self, Concluded},
    settings::NodeSettings,
    ticket::Ticket,
    trace::{self, TraceParent},
};

/// How a held job message is settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done; remove it from the queue.
    Ack,
    /// Retry later (after the delay), possibly on another node.
    Nak(Duration),
    /// Final failure already answered; never redeliver.
    Term,
    /// This attempt lost its lease; leave the message to its new owner.
    Abandon,
}

/// Messages to the Scheduler.
pub enum SchedulerMsg {
    /// A job message from JetStream.
    Delivered(jetstream::Message),
    /// A delivered job after its claim: a ticket to run, nothing (already
    /// handled), or how to settle the message at once.
    Claimed(jetstream::Message, Result<Option<Ticket>, Outcome>),
    /// A device finished its batch: the oldest batch sent to it has left
    /// the device (every job went on to Postprocess).
    DeviceIdle(String),
    /// The oldest batch sent to a device that had not yet joined has joined
    /// its running set (pipeline models: jobs sample there for many steps
    /// and join it at step boundaries): its slot is free for another batch,
    /// but its jobs are still on the device until that batch's
    /// `DeviceIdle`. Batches join in the order they were sent.
    Joined(String),
    /// How large a batch of each model a device can take now (from its
    /// free memory and out-of-memory history); sent before `DeviceIdle`.
    BatchLimits {
        /// The device.
        device: String,
        /// Largest next batch per model.
        limits: HashMap<String, usize>,
    },
    /// A job's answer is stored (or it must be retried).
    Finished {
        /// The job.
        job_id: Uuid,
        /// The attempt that finished: a stale attempt (its job was
        /// delivered again meanwhile) must not settle the newer message.
        attempt: u64,
        /// What to do with its message.
        outcome: Outcome,
    },
    /// A device's worker died with a batch; hand it back to JetStream.
    /// The device takes nothing until `WorkerReady`.
    WorkerLost(String),
    /// A device's restarted worker has its models loaded again.
    WorkerReady(String),
    /// Time to mark held jobs in progress.
    KeepAlive,
    /// The pull loop gave up.
    PullFailed(String),
    /// A batch waiting for `max_queue_delay` may be due.
    Wake,
    /// Shutdown: stop pulling, hand back what no device has started, and
    /// answer once every running job is settled (or the grace period ends:
    /// then hand those back too).
    Drain(ractor::RpcReplyPort<usize>),
    /// The grace period of a drain is over.
    DrainDeadline,
    /// Its agent canceled this running job ([`subjects::CONTROL_CANCEL`]):
    /// if it is held here and no device has it yet, it ends now.
    CancelNotice(Uuid),
    /// The record of a job named by a cancel notice has `cancel_requested`.
    CancelConfirmed(Uuid),
}

/// The job a cancel answer asks the node holding it to drop: a cancel
/// request that left its job `running` with `cancel_requested`.
pub fn cancel_notice(subject: &str, answer: &orfeas_wire::v1::StatusReply) -> Option<Uuid> {
    match answer {
        orfeas_wire::v1::StatusReply::Job(status) if status.state == "running" && status.cancel_requested && subject.starts_with("orfeas.cancel.") => Some(status.job_id),
        _ => None,
    }
}

/// Scheduler configuration.
pub struct Scheduler {
    /// Node settings.
    pub settings: Arc<NodeSettings>,
    /// NATS handles.
    pub bus: Bus,
    /// Job records.
    pub jobs: JobStore,
    /// Event publisher.
    pub events: EventSink,
    /// Sibling names.
    pub roster: Roster,
    /// Device ids, one worker each.
    pub devices: Vec<String>,
    /// Largest batch per model.
    pub model_max_batch: HashMap<String, usize>,
    /// What the node's heartbeat reports.
    pub load: NodeLoad,
    /// Jobs this node's Ingress admitted, with their records.
    pub handoff: Arc<crate::handoff::Handoff>,
}

/// Claims delivered jobs (record → `running` at this attempt) on tasks,
/// so the Scheduler's loop never waits on a KV round trip.
#[derive(Clone)]
struct Claimer {
    js: async_nats::jetstream::Context,
    jobs: JobStore,
    events: EventSink,
    node_id: String,
    handoff: Arc<crate::handoff::Handoff>,
}

/// Jobs a node with `devices` devices holds at most per lane: enough to
/// fill both batch slots of every device (one batch running, one ready)
/// plus `lookahead` batches per device waiting here, among which agents
/// take turns (see [`crate::lanes`]). Also its advertised capacity.
pub fn credits_for(devices: usize, max_batch: usize, lookahead: usize) -> usize {
    (devices * max_batch * (DEVICE_SLOTS + lookahead)).max(1)
}

impl Claimer {
    /// Turn a delivered message into a ticket, or settle it at once.
    async fn admit(&self, message: &jetstream::Message) -> Result<Option<Ticket>, Outcome> {
        let trace = TraceParent::from_headers(message.headers.as_ref());
        let job: AdmittedJob = match orfeas_wire::from_cbor(&message.payload) {
            Ok(job) => job,
            Err(e) => {
                tracing::error!(error = %e, "undecodable admitted job; terminating it");
                return Err(Outcome::Term);
            }
        };
        let attempt = message.info().map(|i| i.delivered as u64).unwrap_or(1);
        let span = trace::hop("schedule", &trace, &job.job_id, &job.agent);
        self.claim(job, attempt, trace).instrument(span).await
    }

    /// Take the job's lease: record state `running` at this attempt.
    ///
    /// A job this node admitted comes with its record from the handoff
    /// ([`crate::handoff`]): the lease is written at the revision Ingress
    /// created, and only if that write is fenced (the record changed since)
    /// is the record read, as for a job admitted elsewhere.
    async fn claim(&self, job: AdmittedJob, attempt: u64, trace: TraceParent) -> Result<Option<Ticket>, Outcome> {
        let mut job = job;
        let mut waited = false;
        if attempt == 1 {
            if let Some(mut handed) = self.handoff.take(&job.agent, &job.job_id) {
                // Nothing this claim says may overtake the job's `accepted`.
                // Ingress gave up on it (or is stuck): look in the events stream.
                if !handed.announced(ANNOUNCE_PATIENCE).await {
                    crate::events::await_announced(&self.js, &job.agent, job.job_id, ANNOUNCE_PATIENCE).await;
                }
                waited = true;
                match self.settle(job, attempt, trace, handed.record, handed.revision).await {
                    Claim::Settled(result) => return result,
                    Claim::Fenced(back) => job = back,
                }
            }
        }
        let record = match self.jobs.get(&job.agent, &job.job_id).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                tracing::error!(job_id = %job.job_id, "admitted job has no record; terminating it");
                return Err(Outcome::Term);
            }
            Err(e) => {
                tracing::warn!(error = %e, "job record unreadable; retrying later");
                return Err(Outcome::Nak(bus::retry_delay(attempt)));
            }
        };
        let (record, revision) = record;
        if attempt == 1 && record.state == JobState::Admitted && !waited {
            // Nothing this claim says may overtake the job's `accepted`.
            crate::events::await_announced(&self.js, &job.agent, job.job_id, ANNOUNCE_PATIENCE).await;
        }
        match self.settle(job, attempt, trace, record, revision).await {
            Claim::Settled(result) => result,
            Claim::Fenced(_) => Err(Outcome::Nak(Duration::from_millis(200))),
        }
    }

    /// Decide the claim on `record` at `revision`: end a canceled or overdue
    /// job, repeat a stored answer, or write the lease. Every write is fenced
    /// on `revision`; a fenced one hands the job back for a fresh read.
    async fn settle(&self, job: AdmittedJob, attempt: u64, trace: TraceParent, mut record: JobRecord, revision: u64) -> Claim {
        if record.state == JobState::Canceled {
            // Canceled while queued: its canceller published the answer.
            return Claim::Settled(Err(Outcome::Ack));
        }
        if !record.state.is_terminal() {
            let why = if record.cancel_requested {
                Some((ErrorCode::Canceled, "canceled by its agent".to_string()))
            } else {
                match job.params.deadline_ms {
                    Some(deadline) if record.state == JobState::Admitted && deadline < now_ms() => {
                        Some((ErrorCode::DeadlineExceeded, format!("not started by its deadline {deadline} (ms since the epoch)")))
                    }
                    _ => None,
                }
            };
            if let Some((code, error)) = why {
                let ending = terminal::ending(code, job.job_id, error);
                let seq = terminal::final_seq(attempt);
                return match terminal::conclude(&self.jobs, &self.events, &self.node_id, record, revision, ending, seq, Some(trace)).await {
                    Ok(Concluded::Ended) => Claim::Settled(Err(Outcome::Term)),
                    Ok(Concluded::Fenced) => Claim::Fenced(job),
                    Err(e) => {
                        tracing::warn!(error = %e, "ending not stored; retrying later");
                        Claim::Settled(Err(Outcome::Nak(bus::retry_delay(attempt))))
                    }
                };
            }
        }
        if record.state.is_terminal() {
            // Answered before but the ack was lost: say the same answer
            // again (same seq, so agents see one answer), then ack.
            if let Some(kind) = record.terminal.clone() {
                if self.events.publish_in(Some(trace), &job.agent, job.job_id, record.terminal_seq, kind).await.is_err() {
                    return Claim::Settled(Err(Outcome::Nak(bus::retry_delay(attempt))));
                }
            }
            return Claim::Settled(Err(Outcome::Ack));
        }
        record.state = JobState::Running;
        record.attempt = attempt;
        record.node = self.node_id.clone();
        record.updated_at_ms = now_ms();
        match self.jobs.update(&record, revision).await {
            Ok(Updated::Ok(revision)) => Claim::Settled(Ok(Some(Ticket::new(job, attempt, revision).traced(trace).with_record(record)))),
            Ok(Updated::Fenced) => Claim::Fenced(job),
            Err(e) => {
                tracing::warn!(error = %e, "job record not updated; retrying later");
                Claim::Settled(Err(Outcome::Nak(bus::retry_delay(attempt))))
            }
        }
    }
}

/// How a claim on one reading of the record went.
enum Claim {
    /// Decided: a ticket, or how to settle the message.
    Settled(Result<Option<Ticket>, Outcome>),
    /// The record changed since that reading: read it again.
    Fenced(AdmittedJob),
}

/// A job message the node holds.
struct Held {
    message: jetstream::Message,
    /// Delivery attempt of `message`.
    attempt: u64,
    agent: String,
    lane: Lane,
    /// When it left its device (or was handed to Postprocess to end it):
    /// from then on only `Finished` settles it.
    handed_on: Option<Instant>,
}

/// How long a job may stay with Postprocess before the Scheduler stops
/// vouching for it. In-progress acks keep a held job from being delivered
/// again, so a `Finished` that never comes (a lost message, a crash between
/// two actors) would hold the job forever; past this it is handed back to
/// JetStream, and its job record fences the late attempt, so the job is
/// still answered once. Far above any meshing and storing time.
pub const FINISH_PATIENCE: Duration = Duration::from_secs(15 * 60);

/// Held jobs handed on longer than `patience` ago that neither wait here
/// nor run on a device: nothing will settle them.
pub fn overdue(
    handed_on: impl IntoIterator<Item = (Uuid, Option<Instant>)>,
    accounted: &std::collections::HashSet<Uuid>,
    now: Instant,
    patience: Duration,
) -> Vec<Uuid> {
    handed_on
        .into_iter()
        .filter(|(job_id, at)| at.is_some_and(|at| now.duration_since(at) > patience) && !accounted.contains(job_id))
        .map(|(job_id, _)| job_id)
        .collect()
}

/// How long a claimed first attempt waits for its `accepted` event before
/// its first progress (see [`crate::events::await_announced`]).
const ANNOUNCE_PATIENCE: Duration = Duration::from_secs(3);

/// Batches a device takes at once: the one it runs and the next.
pub const DEVICE_SLOTS: usize = 2;

/// Batch slots and the batches on each device: what sending a batch,
/// `Joined`, `DeviceIdle` and a lost worker do to them. Pure bookkeeping,
/// so the Scheduler's handling of those messages is tested without NATS.
///
/// Both messages come in the order the batches were sent, so `joined[d] =
/// n` means the oldest `n` batches on `d` have joined its running set: their
/// slots are free again, but their jobs are still on the device until their
/// `DeviceIdle`, which then frees nothing more.
#[derive(Debug, Default)]
struct DeviceBatches {
    /// Free batch slots per device.
    slots: BTreeMap<String, usize>,
    /// Batches sent to each device, oldest first.
    running: HashMap<String, VecDeque<Vec<Uuid>>>,
    /// How many of the oldest batches in `running` have joined.
    joined: HashMap<String, usize>,
}

impl DeviceBatches {
    /// Every device with both slots free.
    fn new(devices: &[String]) -> Self {
        Self { slots: devices.iter().map(|d| (d.clone(), DEVICE_SLOTS)).collect(), ..Self::default() }
    }

    /// The device with the most free slots (idle devices first), if any has one.
    fn freest(&self) -> Option<String> {
        self.slots.iter().filter(|(_, free)| **free > 0).max_by_key(|(_, free)| **free).map(|(d, _)| d.clone())
    }

    /// Whether a retried job may go to `device` alone: nothing there, not
    /// even batches that joined a running set (they gave their slots back
    /// but their jobs still sample beside whatever comes next).
    fn idle(&self, device: &str) -> bool {
        self.slots.get(device).is_some_and(|free| *free >= DEVICE_SLOTS) && self.running.get(device).is_none_or(VecDeque::is_empty)
    }

    /// `jobs` went to `device` as one batch; `alone` (a retried job) takes
    /// both slots, which come back when the device is idle.
    fn sent(&mut self, device: &str, jobs: Vec<Uuid>, alone: bool) {
        self.running.entry(device.to_string()).or_default().push_back(jobs);
        let free = self.slots.entry(device.to_string()).or_default();
        *free = if alone { 0 } else { free.saturating_sub(1) };
    }

    /// `Joined`: the oldest batch on `device` that had not joined has; its
    /// slot is free. One with no such batch (a stale message from before
    /// the worker was lost) changes nothing.
    fn joined(&mut self, device: &str) {
        let sent = self.running.get(device).map_or(0, VecDeque::len);
        let joined = self.joined.entry(device.to_string()).or_default();
        if *joined < sent {
            *joined += 1;
            if let Some(free) = self.slots.get_mut(device) {
                *free = (*free + 1).min(DEVICE_SLOTS);
            }
        }
    }

    /// `DeviceIdle`: the oldest batch on `device` left it; its jobs. Its
    /// slot comes back unless it came back when the batch joined; an empty
    /// device gets both.
    fn left(&mut self, device: &str) -> Vec<Uuid> {
        let mut done = Vec::new();
        let empty = self.running.get_mut(device).is_none_or(|batches| {
            done = batches.pop_front().unwrap_or_default();
            batches.is_empty()
        });
        let had_joined = self.joined.get_mut(device).is_some_and(|n| {
            let joined = *n > 0;
            *n = n.saturating_sub(1);
            joined
        });
        if let Some(free) = self.slots.get_mut(device) {
            *free = if empty { DEVICE_SLOTS } else if had_joined { *free } else { (*free + 1).min(DEVICE_SLOTS) };
        }
        done
    }

    /// A device's worker is gone (or unreachable): the jobs of every batch
    /// on it, joined or not; no slots until it is ready again.
    fn lost(&mut self, device: &str) -> Vec<Uuid> {
        self.joined.remove(device);
        self.slots.insert(device.to_string(), 0);
        self.running.remove(device).unwrap_or_default().into_iter().flatten().collect()
    }

    /// Set `device`'s free slots (0: take nothing; [`DEVICE_SLOTS`]: ready).
    fn set_free(&mut self, device: &str, free: usize) {
        self.slots.insert(device.to_string(), free);
    }

    /// Devices with batches on them.
    fn devices(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }

    /// The device `job_id` was sent to, while its batch is there.
    fn device_of(&self, job_id: Uuid) -> Option<String> {
        self.running.iter().find(|(_, batches)| batches.iter().any(|b| b.contains(&job_id))).map(|(d, _)| d.clone())
    }

    /// Every job on a device.
    fn job_ids(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.running.values().flatten().flatten().copied()
    }

    /// How many devices have batches on them.
    fn busy(&self) -> usize {
        self.running.values().filter(|b| !b.is_empty()).count()
    }
}

/// Scheduler state.
pub struct SchedulerState {
    credits: HashMap<Lane, Arc<Semaphore>>,
    pullers: Vec<JoinHandle<()>>,
    held: HashMap<Uuid, Held>,
    waiting: Waiting,
    /// Batch slots and the batches on each device.
    devices: DeviceBatches,
    limits: HashMap<String, HashMap<String, usize>>,
    /// When a `Wake` is due, ms since the epoch.
    wake_at: Option<u64>,
    /// Shutdown: nothing more is pulled or dispatched.
    draining: bool,
    /// Who to answer once nothing is held.
    drained: Option<ractor::RpcReplyPort<usize>>,
}

impl Scheduler {
    fn claimer(&self) -> Claimer {
        Claimer { js: self.bus.js.clone(), jobs: self.jobs.clone(), events: self.events.clone(), node_id: self.settings.node_id.clone(), handoff: self.handoff.clone() }
    }

    fn credits(&self) -> usize {
        credits_for(self.devices.len(), self.settings.max_batch, self.settings.lookahead_batches)
    }

    fn dispatch(&self, myself: &ActorRef<SchedulerMsg>, state: &mut SchedulerState) {
        if state.draining {
            return;
        }
        while !state.waiting.is_empty() {
            // The device with the most free slots: idle devices first.
            let Some(device) = state.devices.freest() else { return };
            let Some(worker) = self.roster.worker(&device) else {
                state.devices.set_free(&device, 0);
                continue;
            };
            let reported = state.limits.get(&device);
            let cap = |model: &str| reported.and_then(|l| l.get(model)).or_else(|| self.model_max_batch.get(model)).copied().unwrap_or(1);
            let Some(plan) = state.waiting.plan(self.settings.max_batch, cap) else { return };
            if plan.alone && !state.devices.idle(&device) {
                // A retried job waits for an idle device: nothing may queue
                // behind a job that may bring the device down (nor sample beside it).
                return;
            }
            let now = now_ms();
            let delay = self.settings.max_queue_delay.as_millis() as u64;
            let due = plan.oldest_ms.saturating_add(delay);
            if plan.size < plan.cap && now < due {
                if state.wake_at.is_none_or(|at| at > due) {
                    state.wake_at = Some(due);
                    myself.send_after(Duration::from_millis(due - now), || SchedulerMsg::Wake);
                }
                return;
            }
            let batch = state.waiting.take(self.settings.max_batch, cap);
            // Jobs whose start-by time passed while they waited here end now.
            let (late, batch): (Vec<Ticket>, Vec<Ticket>) =
                batch.into_iter().partition(|ticket| ticket.job.params.deadline_ms.is_some_and(|deadline| deadline < now));
            for ticket in late {
                let deadline = ticket.job.params.deadline_ms.unwrap_or_default();
                let (_, failure) = terminal::ending(ErrorCode::DeadlineExceeded, ticket.job.job_id, format!("not started by its deadline {deadline} (ms since the epoch)"));
                self.fail(state, ticket, failure);
            }
            if batch.is_empty() {
                continue;
            }
            state.devices.sent(&device, batch.iter().map(|t| t.job.job_id).collect(), plan.alone);
            if worker.cast(GpuWorkerMsg::Run(batch)).is_err() {
                tracing::warn!(device, "worker unreachable; its batches return to the queue");
                self.hand_back(state, &device);
            }
        }
    }

    /// End a job through Postprocess (fenced record, event, then `Finished`).
    fn fail(&self, state: &mut SchedulerState, ticket: Ticket, failure: Failure) {
        if let Some(held) = state.held.get_mut(&ticket.job.job_id) {
            held.handed_on = Some(Instant::now());
        }
        match self.roster.postprocess() {
            Some(post) => {
                let _ = post.cast(PostprocessMsg::Fail { ticket, failure });
            }
            None => tracing::warn!(job_id = %ticket.job.job_id, "postprocess is not running; the job is handed back after FINISH_PATIENCE"),
        }
    }

    /// Nak every job a lost device was running or about to run; it takes
    /// nothing until its worker is ready again.
    fn hand_back(&self, state: &mut SchedulerState, device: &str) {
        for job_id in state.devices.lost(device) {
            settle(state, job_id, Outcome::Nak(Duration::ZERO));
        }
    }

    /// Hand back every job no device has started.
    fn hand_back_waiting(&self, state: &mut SchedulerState) {
        for job_id in state.waiting.job_ids() {
            state.waiting.remove(job_id);
            settle(state, job_id, Outcome::Nak(Duration::ZERO));
        }
    }

    fn answer_drain(&self, state: &mut SchedulerState) {
        if state.held.is_empty() {
            if let Some(reply) = state.drained.take() {
                let _ = reply.send(0);
            }
        }
    }
}

fn settle(state: &mut SchedulerState, job_id: Uuid, outcome: Outcome) {
    let Some(held) = state.held.remove(&job_id) else { return };
    metrics::ACTIVE_JOBS.with_label_values(&[&held.agent]).dec();
    if let Some(credits) = state.credits.get(&held.lane) {
        credits.add_permits(1);
    }
    tokio::spawn(ack(held.message, outcome));
}

async fn ack(message: jetstream::Message, outcome: Outcome) {
    let kind = match outcome {
        Outcome::Ack => AckKind::Ack,
        Outcome::Nak(delay) => AckKind::Nak(if delay.is_zero() { None } else { Some(delay) }),
        Outcome::Term => AckKind::Term,
        Outcome::Abandon => return,
    };
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(error = %e, ?outcome, "ack not sent; JetStream will redeliver");
    }
}

impl Actor for Scheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = ();

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, _: ()) -> Result<Self::State, ActorProcessingErr> {
        let credits = self.credits();
        crate::progress::PARALLEL.store((self.devices.len() * self.settings.max_batch).max(1), std::sync::atomic::Ordering::Relaxed);
        let lane_consumers = queue::lane_consumers(&self.bus, &self.settings, (credits * 4) as i64).await?;
        let stream = self
            .bus
            .js
            .get_stream(orfeas_wire::subjects::QUEUE_STREAM)
            .await
            .map_err(|e| bus::BusError::Setup { what: orfeas_wire::subjects::QUEUE_STREAM.into(), detail: e.to_string() })?;
        let semaphores: HashMap<Lane, Arc<Semaphore>> = Lane::ALL.iter().map(|lane| (*lane, Arc::new(Semaphore::new(credits)))).collect();
        let me = myself.clone();
        let me_err = myself.clone();
        let pull = FairPull { client: self.bus.client.clone(), stream, settings: self.settings.clone(), max_ack_pending: (credits * 4) as i64, credits: semaphores.clone(), lane_consumers };
        let mut notices = self.bus.client.subscribe(subjects::CONTROL_CANCEL).await.map_err(|e| bus::BusError::Setup { what: subjects::CONTROL_CANCEL.into(), detail: e.to_string() })?;
        let me_cancel = myself.clone();
        let listener = tokio::spawn(async move {
            while let Some(notice) = futures::StreamExt::next(&mut notices).await {
                let Some(job_id) = std::str::from_utf8(&notice.payload).ok().and_then(|s| Uuid::parse_str(s).ok()) else { continue };
                if me_cancel.cast(SchedulerMsg::CancelNotice(job_id)).is_err() {
                    return;
                }
            }
        });
        let pullers = vec![listener, pull.spawn(
            Box::new(move |m| me.cast(SchedulerMsg::Delivered(m)).is_ok()),
            Box::new(move |e| {
                let _ = me_err.cast(SchedulerMsg::PullFailed(e));
            }),
        )];
        myself.send_interval(self.settings.progress_ack_interval, || SchedulerMsg::KeepAlive);
        Ok(SchedulerState {
            credits: semaphores,
            pullers,
            held: HashMap::new(),
            waiting: Waiting::new(),
            devices: DeviceBatches::new(&self.devices),
            limits: HashMap::new(),
            wake_at: None,
            draining: false,
            drained: None,
        })
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        // Held messages are left unacked on purpose: JetStream redelivers them.
        for puller in &state.pullers {
            puller.abort();
        }
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, message: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        match message {
            SchedulerMsg::Delivered(message) => {
                let claimer = self.claimer();
                let me = myself.clone();
                tokio::spawn(async move {
                    let claimed = claimer.admit(&message).await;
                    // If the Scheduler is gone the message stays unacked and
                    // JetStream redelivers it.
                    let _ = me.cast(SchedulerMsg::Claimed(message, claimed));
                });
            }
            SchedulerMsg::Claimed(message, claimed) => {
                let lane = queue::lane_of(&message.subject).unwrap_or_default();
                match claimed {
                    Ok(Some(ticket)) if state.draining => {
                        // Pulled just before the drain: hand it straight back.
                        let _ = ticket;
                        state.credits[&lane].add_permits(1);
                        tokio::spawn(ack(message, Outcome::Nak(Duration::ZERO)));
                    }
                    Ok(Some(ticket)) => {
                        self.events.progress(&ticket, orfeas_wire::v1::Stage::Queued);
                        let job_id = ticket.job.job_id;
                        let agent = ticket.job.agent.clone();
                        metrics::ACTIVE_JOBS.with_label_values(&[&agent]).inc();
                        if let Some(previous) = state.held.insert(job_id, Held { message, attempt: ticket.attempt, agent: agent.clone(), lane, handed_on: None }) {
                            // Redelivered while we still hold it: keep the newest handle.
                            metrics::ACTIVE_JOBS.with_label_values(&[&agent]).dec();
                            state.credits[&previous.lane].add_permits(1);
                            state.waiting.remove(job_id);
                        }
                        state.waiting.push(ticket);
                        self.dispatch(&myself, state);
                    }
                    Ok(None) => {}
                    Err(outcome) => {
                        state.credits[&lane].add_permits(1);
                        tokio::spawn(ack(message, outcome));
                    }
                }
            }
            SchedulerMsg::DeviceIdle(device) => {
                // Its jobs are with Postprocess now (or already settled).
                let now = Instant::now();
                for job_id in state.devices.left(&device) {
                    if let Some(held) = state.held.get_mut(&job_id) {
                        held.handed_on.get_or_insert(now);
                    }
                }
                self.dispatch(&myself, state);
            }
            SchedulerMsg::Joined(device) => {
                state.devices.joined(&device);
                self.dispatch(&myself, state);
            }
            SchedulerMsg::BatchLimits { device, limits } => {
                state.limits.insert(device, limits);
            }
            SchedulerMsg::Finished { job_id, attempt, outcome } => {
                if state.held.get(&job_id).is_some_and(|held| held.attempt != attempt) {
                    tracing::debug!(%job_id, attempt, "a stale attempt finished; the newer delivery stays held");
                    return Ok(());
                }
                if matches!(outcome, Outcome::Ack | Outcome::Term) {
                    self.load.finished_one();
                }
                settle(state, job_id, outcome);
                self.answer_drain(state);
            }
            SchedulerMsg::WorkerLost(device) => {
                self.hand_back(state, &device);
                self.answer_drain(state);
            }
            SchedulerMsg::WorkerReady(device) => {
                if !state.draining {
                    state.devices.set_free(&device, DEVICE_SLOTS);
                }
                self.dispatch(&myself, state);
            }
            SchedulerMsg::Wake => {
                state.wake_at = None;
                self.dispatch(&myself, state);
            }
            SchedulerMsg::Drain(reply) => {
                for puller in state.pullers.drain(..) {
                    puller.abort();
                }
                for credits in state.credits.values() {
                    credits.close();
                }
                state.draining = true;
                state.drained = Some(reply);
                self.hand_back_waiting(state);
                tracing::info!(running = state.held.len(), grace_s = self.settings.shutdown_grace.as_secs_f64(), "draining: intake stopped, waiting for running jobs");
                myself.send_after(self.settings.shutdown_grace, || SchedulerMsg::DrainDeadline);
                self.answer_drain(state);
            }
            SchedulerMsg::DrainDeadline => {
                if state.drained.is_some() {
                    tracing::warn!(jobs = state.held.len(), "grace period over; handing unfinished jobs back");
                    for device in state.devices.devices() {
                        self.hand_back(state, &device);
                    }
                    let rest: Vec<Uuid> = state.held.keys().copied().collect();
                    for job_id in rest {
                        settle(state, job_id, Outcome::Nak(Duration::ZERO));
                    }
                    self.answer_drain(state);
                }
            }
            SchedulerMsg::KeepAlive => {
                let accounted: HashSet<Uuid> =
                    state.waiting.job_ids().into_iter().chain(state.devices.job_ids()).collect();
                let handed_on = state.held.iter().map(|(id, h)| (*id, h.handed_on));
                for job_id in overdue(handed_on, &accounted, Instant::now(), FINISH_PATIENCE) {
                    tracing::error!(%job_id, patience_s = FINISH_PATIENCE.as_secs(), "held job never finished; handing it back");
                    metrics::JOBS_UNACCOUNTED.inc();
                    settle(state, job_id, Outcome::Nak(Duration::ZERO));
                }
                let held: Vec<jetstream::Message> = state.held.values().map(|h| h.message.clone()).collect();
                let js = self.bus.js.clone();
                tokio::spawn(async move {
                    for message in held {
                        let _ = message.ack_with(AckKind::Progress).await;
                    }
                    if let Ok(stream) = js.get_stream(orfeas_wire::subjects::QUEUE_STREAM).await {
                        if let Ok(depths) = crate::fair_pull::lane_depths(&stream).await {
                            for (lane, depth) in depths {
                                metrics::QUEUE_DEPTH.with_label_values(&[lane.as_str()]).set(depth as i64);
                            }
                        }
                    }
                });
            }
            SchedulerMsg::CancelNotice(job_id) => {
                // Only the record decides (a notice is a hint): confirm off the loop.
                if let Some(held) = state.held.get(&job_id) {
                    let (jobs, agent, me) = (self.jobs.clone(), held.agent.clone(), myself.clone());
                    tokio::spawn(async move {
                        if let Ok(Some((record, _))) = jobs.get(&agent, &job_id).await {
                            if record.cancel_requested {
                                let _ = me.cast(SchedulerMsg::CancelConfirmed(job_id));
                            }
                        }
                    });
                }
            }
            SchedulerMsg::CancelConfirmed(job_id) => {
                // Held but on no device yet: end it through Postprocess,
                // which sees `cancel_requested` and ends it `canceled`
                // (fenced, once), then `Finished` terms its message.
                if let Some(ticket) = state.waiting.remove(job_id) {
                    tracing::info!(%job_id, "canceled while waiting for a batch; dropped");
                    let (_, failure) = terminal::ending(ErrorCode::Canceled, job_id, "canceled by its agent before it started");
                    self.fail(state, ticket, failure);
                } else if let Some(device) = state.devices.device_of(job_id) {
                    // On a device: a pipeline model stops it at its next step
                    // boundary; a single-call model runs it and the result is discarded.
                    if let Some(worker) = self.roster.worker(&device) {
                        let _ = worker.cast(GpuWorkerMsg::Cancel(job_id));
                    }
                }
            }
            SchedulerMsg::PullFailed(e) => return Err(e.into()),
        }
        let busy = state.devices.busy();
        self.load.set(state.held.len(), busy);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_jobs_handed_on_long_ago_and_nowhere_else_are_overdue() {
        let now = Instant::now();
        let long_ago = now - Duration::from_secs(120);
        let just_now = now - Duration::from_secs(1);
        let id = |n: u128| Uuid::from_u128(n);
        let accounted: HashSet<Uuid> = [id(3)].into();
        let held = [(id(1), Some(long_ago)), (id(2), Some(just_now)), (id(3), Some(long_ago)), (id(4), None)];
        // 2 is fresh, 3 runs again (a newer delivery), 4 was never handed on.
        assert_eq!(overdue(held, &accounted, now, Duration::from_secs(60)), vec![id(1)]);
        assert!(overdue(held, &accounted, now, Duration::from_secs(600)).is_empty());
    }

    fn jobs(ns: &[u128]) -> Vec<Uuid> {
        ns.iter().map(|n| Uuid::from_u128(*n)).collect()
    }

    fn free(d: &DeviceBatches) -> usize {
        d.slots["gpu0"]
    }

    #[test]
    fn joined_frees_a_slot_while_its_jobs_stay_on_the_device_until_device_idle() {
        let mut d = DeviceBatches::new(&["gpu0".to_string()]);
        d.sent("gpu0", jobs(&[1, 2]), false);
        d.sent("gpu0", jobs(&[3]), false);
        assert_eq!((free(&d), d.freest()), (0, None), "both slots taken");
        // Batch 1 joined the running set: a third batch may be sent while it samples.
        d.joined("gpu0");
        assert_eq!((free(&d), d.freest().as_deref()), (1, Some("gpu0")));
        assert_eq!(d.device_of(Uuid::from_u128(1)).as_deref(), Some("gpu0"), "its jobs are still on the device");
        d.sent("gpu0", jobs(&[4]), false);
        assert_eq!(free(&d), 0);
        // Batch 1 leaves: its slot came back when it joined, so none now.
        assert_eq!(d.left("gpu0"), jobs(&[1, 2]));
        assert_eq!(free(&d), 0);
        assert_eq!(d.device_of(Uuid::from_u128(1)), None);
        // Batch 3 joins and leaves: one slot, once.
        d.joined("gpu0");
        assert_eq!(free(&d), 1);
        assert_eq!(d.left("gpu0"), jobs(&[3]));
        assert_eq!(free(&d), 1);
        // Batch 4 never joined (a single-call model's batch): leaving frees its slot, and the device is empty.
        assert_eq!(d.left("gpu0"), jobs(&[4]));
        assert_eq!((free(&d), d.busy()), (DEVICE_SLOTS, 0));
    }

    #[test]
    fn joined_never_frees_more_slots_than_batches_sent() {
        let mut d = DeviceBatches::new(&["gpu0".to_string()]);
        // Nothing sent: a stray Joined changes nothing.
        d.joined("gpu0");
        assert_eq!((free(&d), d.joined.get("gpu0").copied()), (DEVICE_SLOTS, Some(0)));
        d.sent("gpu0", jobs(&[1]), false);
        d.joined("gpu0");
        d.joined("gpu0");
        assert_eq!((free(&d), d.joined["gpu0"]), (DEVICE_SLOTS, 1), "one batch, one join");
        // The next batch's Joined counts for it, not for the one before.
        d.sent("gpu0", jobs(&[2]), false);
        d.sent("gpu0", jobs(&[3]), false);
        assert_eq!(free(&d), 0);
        d.joined("gpu0");
        assert_eq!((free(&d), d.joined["gpu0"]), (1, 2));
        assert_eq!(d.left("gpu0"), jobs(&[1]));
        assert_eq!(d.left("gpu0"), jobs(&[2]));
        assert_eq!(free(&d), 1, "batches 1 and 2 gave their slots back when they joined");
        assert_eq!(d.left("gpu0"), jobs(&[3]));
        assert_eq!(free(&d), DEVICE_SLOTS);
    }

    #[test]
    fn a_retried_job_waits_for_batches_that_joined_and_a_lost_device_returns_them_too() {
        let mut d = DeviceBatches::new(&["gpu0".to_string(), "gpu1".to_string()]);
        d.sent("gpu0", jobs(&[1]), false);
        d.joined("gpu0");
        // Both slots are free again, but job 1 still samples there.
        assert_eq!(free(&d), DEVICE_SLOTS);
        assert!(!d.idle("gpu0") && d.idle("gpu1"));
        d.sent("gpu1", jobs(&[9]), true);
        assert_eq!((d.slots["gpu1"], d.freest().as_deref()), (0, Some("gpu0")), "alone takes both slots");
        d.sent("gpu0", jobs(&[2, 3]), false);
        // The worker is lost: every job on it goes back, joined or not, and a late Joined does nothing.
        let mut back = d.lost("gpu0");
        back.sort();
        assert_eq!(back, jobs(&[1, 2, 3]));
        d.joined("gpu0");
        assert_eq!((free(&d), d.device_of(Uuid::from_u128(1))), (0, None));
        d.set_free("gpu0", DEVICE_SLOTS);
        assert!(d.idle("gpu0"), "ready again with nothing from before");
        assert_eq!(d.left("gpu1"), jobs(&[9]));
        assert_eq!((d.slots["gpu1"], d.busy()), (DEVICE_SLOTS, 0));
    }

    #[test]
    fn credits_fill_both_slots_of_every_device() {
        assert_eq!(credits_for(1, 8, 0), DEVICE_SLOTS * 8);
        assert_eq!(credits_for(3, 4, 2), 3 * (DEVICE_SLOTS + 2) * 4);
        assert_eq!(credits_for(0, 8, 2), 1, "never zero");
    }
}
