//! Dead letters: a job whose queue message ran out of deliveries (it
//! crashed or timed out `max_deliver` times) becomes a terminal
//! `failed{dead_lettered}`, so its agent never waits forever.
//!
//! - Consumes: JetStream's `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ORFEAS_QUEUE.<consumer>`
//!   advisories, in queue group `orfeas-dead-letter` (one node handles each).
//! - Publishes: the job's fenced record (state `failed`) and its `failed`
//!   event (seq: the last step of the last attempt), then deletes the queue
//!   message (it would otherwise sit in the stream until its max age).
//!   Exactly once on any node: the record update is revision-fenced, and a
//!   job that already has its answer is only removed from the queue.
//! - State: none; a task per node (not an actor), restarted with the node.
//! - Sweep: advisories are core NATS messages, so one sent while no node
//!   listened is lost. Each node therefore also sweeps when it starts and
//!   every [`SWEEP_EVERY`]: for each `(lane, agent)` queue subject that
//!   holds messages while its consumer has nothing left to deliver and
//!   nothing in flight, the messages at or below the consumer's delivered
//!   sequence can never be delivered again; those whose job ran out of
//!   deliveries (record `attempt ≥ max_deliver`) are dead-lettered as above,
//!   those whose job already has its answer are removed. Cost: one
//!   stream-info request plus one consumer-info request per subject with
//!   messages; the same fenced update keeps it exactly once next to the
//!   advisory handlers of other nodes.

use async_nats::jetstream;
use futures::StreamExt;
use orfeas_wire::{subjects, v1::AdmittedJob, ErrorCode};
use serde::Deserialize;
use tokio::task::JoinHandle;

use crate::{
    bus::{Bus, BusError},
    events::EventSink,
    jobs::JobStore,
    metrics,
    terminal::{self, Concluded},
};

/// How often a node sweeps for dead letters whose advisory nobody heard.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Queue group the nodes share the advisories in.
pub const QUEUE_GROUP: &str = "orfeas-dead-letter";

/// The advisory subject for every consumer of the queue stream.
pub fn advisory_subject() -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*", subjects::QUEUE_STREAM)
}

/// The fields of a max-deliveries advisory this module reads.
#[derive(Debug, Deserialize)]
pub struct MaxDeliveries {
    /// Stream sequence of the message that ran out of deliveries.
    pub stream_seq: u64,
    /// How many times it was delivered.
    #[serde(default)]
    pub deliveries: u64,
}

/// Listen for advisories until the task is aborted.
pub async fn spawn(bus: Bus, events: EventSink, node_id: String) -> Result<JoinHandle<()>, BusError> {
    let subject = advisory_subject();
    let mut advisories = bus
        .client
        .queue_subscribe(subject.clone(), QUEUE_GROUP.to_string())
        .await
        .map_err(|e| BusError::Setup { what: subject, detail: e.to_string() })?;
    let jobs = JobStore::new(bus.jobs.clone());
    let (sweep_js, sweep_jobs, sweep_events, sweep_node) = (bus.js.clone(), jobs.clone(), events.clone(), node_id.clone());
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match sweep(&sweep_js, &sweep_jobs, &sweep_events, &sweep_node).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(dead_letters = n, "swept dead letters whose advisory was missed"),
                Err(e) => tracing::warn!(error = %e, "dead-letter sweep failed; trying again later"),
            }
        }
    });
    Ok(tokio::spawn(async move {
        // The sweep ends with the listener.
        struct Abort(JoinHandle<()>);
        impl Drop for Abort {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let _sweeper = Abort(sweeper);
        while let Some(message) = advisories.next().await {
            let advisory: MaxDeliveries = match serde_json::from_slice(&message.payload) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable max-deliveries advisory");
                    continue;
                }
            };
            if let Err(e) = dead_letter(&bus.js, &jobs, &events, &node_id, &advisory).await {
                tracing::error!(error = %e, stream_seq = advisory.stream_seq, "dead letter not recorded");
            }
        }
    }))
}

/// End the job behind queue message `advisory.stream_seq` as dead-lettered.
pub async fn dead_letter(js: &jetstream::Context, jobs: &JobStore, events: &EventSink, node_id: &str, advisory: &MaxDeliveries) -> Result<(), BusError> {
    let setup = |e: &dyn std::fmt::Display| BusError::Setup { what: subjects::QUEUE_STREAM.into(), detail: e.to_string() };
    let stream = js.get_stream(subjects::QUEUE_STREAM).await.map_err(|e| setup(&e))?;
    let message = match stream.get_raw_message(advisory.stream_seq).await {
        Ok(m) => m,
        // Already removed (acked late, or another node handled it).
        Err(_) => return Ok(()),
    };
    let job: AdmittedJob = match orfeas_wire::from_cbor(&message.payload) {
        Ok(job) => job,
        Err(e) => {
            tracing::error!(error = %e, "undecodable dead letter; removing it");
            let _ = stream.delete_message(advisory.stream_seq).await;
            return Ok(());
        }
    };
    for _ in 0..5 {
        let Some((record, revision)) = jobs.get(&job.agent, &job.job_id).await? else { break };
        if record.state.is_terminal() {
            break;
        }
        let seq = terminal::final_seq(record.attempt.max(1));
        let error = format!("gave up after {} deliveries (each crashed or timed out)", advisory.deliveries);
        let ending = terminal::ending(ErrorCode::DeadLettered, job.job_id, error);
        match terminal::conclude(jobs, events, node_id, record, revision, ending, seq, None).await? {
            Concluded::Ended => {
                metrics::DEAD_LETTERS.inc();
                metrics::JOBS_FINISHED.with_label_values(&[ErrorCode::DeadLettered.as_str()]).inc();
                tracing::warn!(job_id = %job.job_id, agent = %job.agent, deliveries = advisory.deliveries, "job dead-lettered");
                break;
            }
            Concluded::Fenced => continue,
        }
    }
    let _ = stream.delete_message(advisory.stream_seq).await;
    Ok(())
}

/// Dead-letter every queue message that ran out of deliveries (see the
/// module header); how many were handled.
pub async fn sweep(js: &jetstream::Context, jobs: &JobStore, events: &EventSink, node_id: &str) -> Result<usize, BusError> {
    let setup = |e: &dyn std::fmt::Display| BusError::Setup { what: subjects::QUEUE_STREAM.into(), detail: e.to_string() };
    let stream = js.get_stream(subjects::QUEUE_STREAM).await.map_err(|e| setup(&e))?;
    let mut handled = 0;
    for (subject, count) in crate::fair_pull::counts(&stream).await.map_err(|e| setup(&e))? {
        let Some((lane, source)) = crate::queue::source_of(&subject) else { continue };
        if count == 0 {
            continue;
        }
        // No consumer: nothing of this subject was ever delivered.
        let Ok(info) = stream.consumer_info(crate::queue::source_consumer_name(lane, &source)).await else { continue };
        if info.num_pending > 0 || info.num_ack_pending > 0 {
            continue;
        }
        let (delivered, max_deliver) = (info.delivered.stream_sequence, info.config.max_deliver.max(1) as u64);
        let mut next = 1;
        for _ in 0..count {
            let Ok(message) = stream.raw_message_builder().sequence(next).next_by_subject(subject.clone()).send().await else { break };
            next = message.sequence + 1;
            if message.sequence > delivered {
                break;
            }
            let Ok(job) = orfeas_wire::from_cbor::<AdmittedJob>(&message.payload) else { continue };
            let Some((record, _)) = jobs.get(&job.agent, &job.job_id).await? else { continue };
            if record.state.is_terminal() || record.attempt >= max_deliver {
                dead_letter(js, jobs, events, node_id, &MaxDeliveries { stream_seq: message.sequence, deliveries: record.attempt }).await?;
                handled += 1;
            }
        }
    }
    Ok(handled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_advisory_jetstream_sends() {
        let json = br#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"x","timestamp":"2026-11-24T01:00:00Z","stream":"ORFEAS_QUEUE","consumer":"scheduler","stream_seq":42,"deliveries":5}"#;
        let a: MaxDeliveries = serde_json::from_slice(json).unwrap();
        assert_eq!((a.stream_seq, a.deliveries), (42, 5));
        assert_eq!(advisory_subject(), "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ORFEAS_QUEUE.*");
    }
}
