//! Scheduler: turns admitted jobs into device batches and owns their acks.
//!
//! - Consumes: admitted jobs from the `scheduler` durable pull consumer on
//!   `ORFEAS_QUEUE` (pulled by credit: it holds at most what its devices can
//!   start soon); `BatchLimits` and `DeviceIdle` from GpuWorkers; `Finished`
//!   from Postprocess; `WorkerLost` from the supervisor.
//! - Publishes: `GpuWorkerMsg::Run` batches (same model, up to the batch
//!   cap: the configured maximum, and what the device last reported it can
//!   take for that model; oldest first, to an idle device — a device is
//!   never idle while compatible work waits); acks / naks / terms on the job messages;
//!   in-progress acks for every held job so JetStream does not redeliver
//!   work that is merely waiting here.
//! - Claiming a delivered job (its record set to `running` at this
//!   attempt, revision-fenced) runs on a task that answers with `Claimed`,
//!   so KV round trips never hold up batching.
//! - State: held messages by job id, the local FIFO of tickets, idle
//!   devices, what each device is running.
//! - Restart policy: restartable at any time. Held messages are never acked
//!   by a dead scheduler, so JetStream redelivers them after `ack_wait`; job
//!   records fence the attempts so no job is answered twice.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use async_nats::jetstream::{self, AckKind};
use orfeas_wire::v1::AdmittedJob;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::{sync::Semaphore, task::JoinHandle};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    bus::{self, Bus},
    events::EventSink,
    heartbeat::NodeLoad,
    gpu_worker::GpuWorkerMsg,
    jobs::{JobState, JobStore, Updated},
    metrics, now_ms,
    roster::Roster,
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
    /// A device finished its batch.
    DeviceIdle(String),
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
        /// What to do with its message.
        outcome: Outcome,
    },
    /// A device's worker died with a batch; hand it back to JetStream.
    WorkerLost(String),
    /// Time to mark held jobs in progress.
    KeepAlive,
    /// The pull loop gave up.
    PullFailed(String),
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
}

/// Claims delivered jobs (record → `running` at this attempt) on tasks,
/// so the Scheduler's loop never waits on a KV round trip.
#[derive(Clone)]
struct Claimer {
    jobs: JobStore,
    events: EventSink,
    node_id: String,
}

/// Jobs a node with `devices` devices holds at most: enough to fill every
/// device twice (one batch running, one ready). Also its advertised capacity.
pub fn credits_for(devices: usize, max_batch: usize) -> usize {
    (devices * max_batch * 2).max(1)
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
    async fn claim(&self, job: AdmittedJob, attempt: u64, trace: TraceParent) -> Result<Option<Ticket>, Outcome> {
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
        let (mut record, revision) = record;
        if record.state.is_terminal() {
            // Answered before but the ack was lost: say the same answer
            // again (same seq, so agents see one answer), then ack.
            if let Some(kind) = record.terminal.clone() {
                if self.events.publish_in(Some(trace), &job.agent, job.job_id, record.terminal_seq, kind).await.is_err() {
                    return Err(Outcome::Nak(bus::retry_delay(attempt)));
                }
            }
            return Err(Outcome::Ack);
        }
        record.state = JobState::Running;
        record.attempt = attempt;
        record.node = self.node_id.clone();
        record.updated_at_ms = now_ms();
        match self.jobs.update(&record, revision).await {
            Ok(Updated::Ok(revision)) => Ok(Some(Ticket::new(job, attempt, revision).traced(trace))),
            Ok(Updated::Fenced) => Err(Outcome::Nak(Duration::from_millis(200))),
            Err(e) => {
                tracing::warn!(error = %e, "job record not updated; retrying later");
                Err(Outcome::Nak(bus::retry_delay(attempt)))
            }
        }
    }
}

/// Scheduler state.
pub struct SchedulerState {
    credits: Arc<Semaphore>,
    puller: JoinHandle<()>,
    held: HashMap<Uuid, (jetstream::Message, String)>,
    waiting: VecDeque<Ticket>,
    idle: BTreeSet<String>,
    running: HashMap<String, Vec<Uuid>>,
    limits: HashMap<String, HashMap<String, usize>>,
}

impl Scheduler {
    fn claimer(&self) -> Claimer {
        Claimer { jobs: self.jobs.clone(), events: self.events.clone(), node_id: self.settings.node_id.clone() }
    }

    fn credits(&self) -> usize {
        credits_for(self.devices.len(), self.settings.max_batch)
    }

    fn dispatch(&self, state: &mut SchedulerState) {
        while !state.waiting.is_empty() {
            let Some(device) = state.idle.iter().next().cloned() else { return };
            let Some(worker) = self.roster.worker(&device) else {
                state.idle.remove(&device);
                continue;
            };
            let reported = state.limits.get(&device);
            let cap = |model: &str| reported.and_then(|l| l.get(model)).or_else(|| self.model_max_batch.get(model)).copied().unwrap_or(1);
            let batch = take_batch(&mut state.waiting, self.settings.max_batch, cap);
            state.running.insert(device.clone(), batch.iter().map(|t| t.job.job_id).collect());
            state.idle.remove(&device);
            if worker.cast(GpuWorkerMsg::Run(batch)).is_err() {
                tracing::warn!(device, "worker unreachable; its batch returns to the queue");
                self.hand_back(state, &device);
            }
        }
    }

    /// Nak every job a lost device was running.
    fn hand_back(&self, state: &mut SchedulerState, device: &str) {
        for job_id in state.running.remove(device).unwrap_or_default() {
            settle(state, job_id, Outcome::Nak(Duration::ZERO));
        }
    }
}

/// The oldest waiting ticket and every later one with the same model, up to
/// the batch cap (the smaller of the configured maximum and `model_cap`:
/// what the device reported, else the model's maximum).
pub fn take_batch(waiting: &mut VecDeque<Ticket>, max_batch: usize, model_cap: impl Fn(&str) -> usize) -> Vec<Ticket> {
    let Some(first) = waiting.front() else { return Vec::new() };
    let model = first.job.model.clone();
    let cap = max_batch.min(model_cap(&model)).max(1);
    let mut batch = Vec::with_capacity(cap);
    let mut rest = VecDeque::with_capacity(waiting.len());
    while let Some(ticket) = waiting.pop_front() {
        if batch.len() < cap && ticket.job.model == model {
            batch.push(ticket);
        } else {
            rest.push_back(ticket);
        }
    }
    *waiting = rest;
    batch
}

fn settle(state: &mut SchedulerState, job_id: Uuid, outcome: Outcome) {
    let Some((message, agent)) = state.held.remove(&job_id) else { return };
    metrics::ACTIVE_JOBS.with_label_values(&[&agent]).dec();
    state.credits.add_permits(1);
    tokio::spawn(ack(message, outcome));
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
        let consumer = self
            .bus
            .consumer(orfeas_wire::subjects::QUEUE_STREAM, orfeas_wire::subjects::SCHEDULER_CONSUMER, &self.settings, (credits * 4) as i64)
            .await?;
        let semaphore = Arc::new(Semaphore::new(credits));
        let me = myself.clone();
        let me_err = myself.clone();
        let puller = bus::spawn_puller(
            consumer,
            semaphore.clone(),
            Box::new(move |m| me.cast(SchedulerMsg::Delivered(m)).is_ok()),
            Box::new(move |e| {
                let _ = me_err.cast(SchedulerMsg::PullFailed(e));
            }),
        );
        myself.send_interval(self.settings.progress_ack_interval, || SchedulerMsg::KeepAlive);
        Ok(SchedulerState {
            credits: semaphore,
            puller,
            held: HashMap::new(),
            waiting: VecDeque::new(),
            idle: self.devices.iter().cloned().collect(),
            running: HashMap::new(),
            limits: HashMap::new(),
        })
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        // Held messages are left unacked on purpose: JetStream redelivers them.
        state.puller.abort();
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, message: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        match message {
            SchedulerMsg::Delivered(message) => {
                let claimer = self.claimer();
                tokio::spawn(async move {
                    let claimed = claimer.admit(&message).await;
                    // If the Scheduler is gone the message stays unacked and
                    // JetStream redelivers it.
                    let _ = myself.cast(SchedulerMsg::Claimed(message, claimed));
                });
            }
            SchedulerMsg::Claimed(message, claimed) => match claimed {
                Ok(Some(ticket)) => {
                    let job_id = ticket.job.job_id;
                    let agent = ticket.job.agent.clone();
                    metrics::ACTIVE_JOBS.with_label_values(&[&agent]).inc();
                    if state.held.insert(job_id, (message, agent.clone())).is_some() {
                        // Redelivered while we still hold it: keep the newest handle.
                        metrics::ACTIVE_JOBS.with_label_values(&[&agent]).dec();
                        state.credits.add_permits(1);
                        state.waiting.retain(|t| t.job.job_id != job_id);
                    }
                    state.waiting.push_back(ticket);
                    self.dispatch(state);
                }
                Ok(None) => {}
                Err(outcome) => {
                    state.credits.add_permits(1);
                    tokio::spawn(ack(message, outcome));
                }
            },
            SchedulerMsg::DeviceIdle(device) => {
                state.running.remove(&device);
                state.idle.insert(device);
                self.dispatch(state);
            }
            SchedulerMsg::BatchLimits { device, limits } => {
                state.limits.insert(device, limits);
            }
            SchedulerMsg::Finished { job_id, outcome } => {
                if matches!(outcome, Outcome::Ack | Outcome::Term) {
                    self.load.finished_one();
                }
                settle(state, job_id, outcome)
            }
            SchedulerMsg::WorkerLost(device) => {
                self.hand_back(state, &device);
                state.idle.insert(device);
                self.dispatch(state);
            }
            SchedulerMsg::KeepAlive => {
                let held: Vec<jetstream::Message> = state.held.values().map(|(m, _)| m.clone()).collect();
                let js = self.bus.js.clone();
                tokio::spawn(async move {
                    for message in held {
                        let _ = message.ack_with(AckKind::Progress).await;
                    }
                    if let Ok(stream) = js.get_stream(orfeas_wire::subjects::QUEUE_STREAM).await {
                        if let Ok(info) = stream.consumer_info(orfeas_wire::subjects::SCHEDULER_CONSUMER).await {
                            metrics::QUEUE_DEPTH.with_label_values(&["normal"]).set(info.num_pending as i64);
                        }
                    }
                });
            }
            SchedulerMsg::PullFailed(e) => return Err(e.into()),
        }
        self.load.set(state.held.len(), state.running.len());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orfeas_wire::v1::{Format, ImageInput};

    fn ticket(model: &str, n: u128) -> Ticket {
        let job = AdmittedJob {
            job_id: Uuid::from_u128(n),
            agent: "a".into(),
            model: model.into(),
            formats: vec![Format::Glb],
            params: Default::default(),
            image: ImageInput::Inline { media_type: "image/png".into(), data: vec![] },
            admitted_at_ms: 0,
            lane: Default::default(),
            batch_id: None,
        };
        Ticket::new(job, 1, 1)
    }

    #[test]
    fn batch_takes_oldest_model_in_order_up_to_the_cap() {
        let mut waiting: VecDeque<Ticket> = [("a", 1), ("b", 2), ("a", 3), ("a", 4), ("a", 5)].iter().map(|&(m, n)| ticket(m, n)).collect();
        let caps = HashMap::from([("a".to_string(), 3), ("b".to_string(), 8)]);
        let cap = |m: &str| caps[m];
        let batch = take_batch(&mut waiting, 8, cap);
        let ids: Vec<u128> = batch.iter().map(|t| t.job.job_id.as_u128()).collect();
        assert_eq!(ids, vec![1, 3, 4], "model cap 3, same model, arrival order");
        let rest: Vec<u128> = waiting.iter().map(|t| t.job.job_id.as_u128()).collect();
        assert_eq!(rest, vec![2, 5], "others keep their order");
        let batch = take_batch(&mut waiting, 1, cap);
        assert_eq!(batch.len(), 1, "configured cap applies too");
        assert_eq!(batch[0].job.model, "b");
    }

    #[test]
    fn empty_queue_gives_empty_batch() {
        assert!(take_batch(&mut VecDeque::new(), 4, |_| 4).is_empty());
    }
}
