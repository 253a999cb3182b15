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
//!   Advisories are core NATS messages: one that arrives while no node is
//!   up is not seen (the message then stays in the queue until `max_age`).

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
    Ok(tokio::spawn(async move {
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
