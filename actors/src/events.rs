//! The node's outgoing events: signed with the node key, published in order
//! by one task onto `orfeas.events.<agent>.<job_id>` (stored in the events
//! stream for replay). Progress is best effort; terminal events are awaited
//! until the server confirms them, because a job is only acked after that.
//!
//! Publishing and confirming are pipelined: one task writes events in order
//! without waiting, a second awaits their PubAcks in the same order (the
//! server answers in order on one connection). Waiting for each PubAck
//! before the next publish would cap the whole node at one event per round
//! trip. Events carry the job's `traceparent`.
//!
//! Once confirmed, every decision (`accepted`, `rejected`) and terminal
//! event (`completed`, `failed`) is appended to the node's audit chain
//! ([`crate::audit`]) in the same order.

use std::sync::Arc;

use async_nats::HeaderMap;
use orfeas_wire::{
    subjects,
    v1::{Event, EventKind, Stage},
    SecretKey,
};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::{
    audit::{Auditor, Entry},
    bus::{Bus, BusError},
    now_ms,
    ticket::Ticket,
    trace::TraceParent,
};

/// Events queued beyond this are progress events and are dropped.
const QUEUE: usize = 4096;
/// Published events awaiting their PubAck at most.
const IN_FLIGHT: usize = 1024;

struct Outgoing {
    agent: String,
    event: Event,
    trace: Option<TraceParent>,
    confirmed: Option<oneshot::Sender<Result<(), BusError>>>,
}

/// A published event waiting for its PubAck.
struct Pending {
    subject: String,
    job_id: Uuid,
    ack: Result<async_nats::jetstream::context::PublishAckFuture, BusError>,
    confirmed: Option<oneshot::Sender<Result<(), BusError>>>,
    audit: Option<Entry>,
}

/// Cloneable handle to the node's event publisher.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Outgoing>,
    node_id: Arc<str>,
}

impl EventSink {
    /// Start the publisher task.
    pub fn spawn(bus: Bus, node_id: &str, key: SecretKey, deployment: String) -> Self {
        let (tx, mut rx) = mpsc::channel::<Outgoing>(QUEUE);
        let (pending_tx, mut pending_rx) = mpsc::channel::<Pending>(IN_FLIGHT);
        let auditor = Auditor::spawn(bus.js.clone(), node_id);
        tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                let subject = subjects::events(&out.agent, &out.event.job_id);
                let bytes = out.event.seal(&subject, &key, &deployment, now_ms() / 1000);
                let mut headers = HeaderMap::new();
                headers.insert("Orfeas-Event", out.event.kind.name());
                if let Some(trace) = &out.trace {
                    trace.inject(&mut headers);
                }
                let ack = bus
                    .js
                    .publish_with_headers(subject.clone(), headers, bytes.into())
                    .await
                    .map_err(|e| BusError::Publish { subject: subject.clone(), detail: e.to_string() });
                let audit = Entry::for_event(&out.agent, out.event.job_id, out.event.seq, &out.event.kind);
                let pending = Pending { subject, job_id: out.event.job_id, ack, confirmed: out.confirmed, audit };
                if pending_tx.send(pending).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(pending) = pending_rx.recv().await {
                let result = match pending.ack {
                    Ok(ack) => ack.await.map(|_| ()).map_err(|e| BusError::Publish { subject: pending.subject, detail: e.to_string() }),
                    Err(e) => Err(e),
                };
                match (&result, pending.audit) {
                    (Err(e), _) => tracing::warn!(error = %e, job_id = %pending.job_id, "event not confirmed"),
                    (Ok(()), Some(entry)) => auditor.append(entry).await,
                    (Ok(()), None) => {}
                }
                if let Some(confirmed) = pending.confirmed {
                    let _ = confirmed.send(result);
                }
            }
        });
        Self { tx, node_id: node_id.into() }
    }

    /// A sink that publishes nowhere: events land on the returned channel
    /// (unit tests of single actors).
    #[cfg(test)]
    pub(crate) fn detached(node_id: &str) -> (Self, mpsc::Receiver<(String, Event)>) {
        let (tx, mut rx) = mpsc::channel::<Outgoing>(QUEUE);
        let (out_tx, out_rx) = mpsc::channel(QUEUE);
        tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                let _ = out_tx.send((out.agent, out.event)).await;
                if let Some(confirmed) = out.confirmed {
                    let _ = confirmed.send(Ok(()));
                }
            }
        });
        (Self { tx, node_id: node_id.into() }, out_rx)
    }

    fn event(&self, job_id: Uuid, seq: u64, kind: EventKind) -> Event {
        Event { job_id, seq, node: self.node_id.to_string(), at_ms: now_ms(), kind }
    }

    /// Report that the job entered `stage` (and any stage it skipped, in
    /// order; nothing if it is already there or past it), with percent and
    /// ETA from [`crate::progress`]. Never waits; dropped if the publisher
    /// is far behind.
    pub fn progress(&self, ticket: &Ticket, stage: Stage) {
        let reports = {
            let mut times = crate::progress::TIMES.lock().unwrap_or_else(|e| e.into_inner());
            let mut track = ticket.track.lock().unwrap_or_else(|e| e.into_inner());
            track.enter(&ticket.job.model, stage, std::time::Instant::now(), &mut times)
        };
        for report in reports {
            let kind = EventKind::Progress { stage: report.stage, percent: report.percent, eta_ms: report.eta_ms };
            let event = self.event(ticket.job.job_id, ticket.next_seq(), kind);
            let _ = self.tx.try_send(Outgoing { agent: ticket.job.agent.clone(), event, trace: Some(ticket.trace), confirmed: None });
        }
    }

    /// `ticket` is `fraction` of the way through `stage` with `stage_left_ms`
    /// of it ahead (sampler steps): a progress event when the percent moved
    /// up a point (see [`crate::progress::Track::within`]).
    pub fn progress_within(&self, ticket: &Ticket, stage: Stage, fraction: f64, stage_left_ms: u64) {
        let report = {
            let times = crate::progress::TIMES.lock().unwrap_or_else(|e| e.into_inner());
            let mut track = ticket.track.lock().unwrap_or_else(|e| e.into_inner());
            track.within(&ticket.job.model, stage, fraction, stage_left_ms, &times)
        };
        if let Some(report) = report {
            let kind = EventKind::Progress { stage: report.stage, percent: report.percent, eta_ms: report.eta_ms };
            let event = self.event(ticket.job.job_id, ticket.next_seq(), kind);
            let _ = self.tx.try_send(Outgoing { agent: ticket.job.agent.clone(), event, trace: Some(ticket.trace), confirmed: None });
        }
    }

    /// The attempt of `ticket` ended: its last stage's time counts towards
    /// the averages, and no progress follows.
    pub fn progress_done(&self, ticket: &Ticket) {
        let mut times = crate::progress::TIMES.lock().unwrap_or_else(|e| e.into_inner());
        ticket.track.lock().unwrap_or_else(|e| e.into_inner()).done(&ticket.job.model, std::time::Instant::now(), &mut times);
    }

    /// Publish an event and wait until the server stored it.
    pub async fn publish(&self, agent: &str, job_id: Uuid, seq: u64, kind: EventKind) -> Result<(), BusError> {
        self.publish_in(None, agent, job_id, seq, kind).await
    }

    /// [`publish`](Self::publish), carrying the job's trace context.
    pub async fn publish_in(&self, trace: Option<TraceParent>, agent: &str, job_id: Uuid, seq: u64, kind: EventKind) -> Result<(), BusError> {
        let (confirmed, done) = oneshot::channel();
        let event = self.event(job_id, seq, kind);
        let unavailable = || BusError::Publish { subject: subjects::events(agent, &job_id), detail: "event publisher stopped".into() };
        self.tx
            .send(Outgoing { agent: agent.to_string(), event, trace, confirmed: Some(confirmed) })
            .await
            .map_err(|_| unavailable())?;
        done.await.map_err(|_| unavailable())?
    }
}

/// Wait until the job's first event (`accepted`) is stored, at most
/// `patience`; true if it is.
///
/// Ingress says `accepted` only after the queue's PubAck, so a Scheduler
/// (on any node) can claim the job before that event exists. Its `queued`
/// progress must not overtake the `accepted`: the claim waits here. Only a
/// first attempt waits; a job whose Ingress died between PubAck and event
/// proceeds after `patience`, and the redelivered submission says
/// `accepted` later (agents order by `seq`).
pub async fn await_announced(js: &async_nats::jetstream::Context, agent: &str, job_id: Uuid, patience: std::time::Duration) -> bool {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let Ok(stream) = js.get_stream_no_info(subjects::EVENTS_STREAM).await else {
        return false;
    };
    let subject = subjects::events(agent, &job_id);
    let until = tokio::time::Instant::now() + patience;
    let mut pause = std::time::Duration::from_millis(2);
    loop {
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(_) => return true,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {}
            Err(e) => {
                tracing::debug!(error = %e, %job_id, "events stream unreadable; not waiting for accepted");
                return false;
            }
        }
        if tokio::time::Instant::now() + pause > until {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(100));
    }
}
