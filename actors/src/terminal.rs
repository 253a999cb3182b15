//! Ending a job without running it (or without keeping its result):
//! canceled, past its deadline, dead-lettered. One fenced record update
//! decides who ends the job, so however many nodes try, exactly one
//! terminal event is published.
//!
//! Sequence numbers: a job's events use `attempt << 16 | step`; an ending
//! written here uses the last step of its attempt ([`final_seq`]), above
//! every progress event of that attempt and below any later attempt.

use orfeas_wire::{
    v1::{EventKind, Failure},
    ErrorCode,
};
use uuid::Uuid;

use crate::{
    bus::BusError,
    events::EventSink,
    jobs::{JobRecord, JobState, JobStore, Updated},
    now_ms,
    trace::TraceParent,
};

/// The sequence number of an ending written for `attempt`.
pub fn final_seq(attempt: u64) -> u64 {
    (attempt << 16) | 0xffff
}

/// How an attempt to end a job went.
#[derive(Debug, PartialEq, Eq)]
pub enum Concluded {
    /// This writer ended it and the event is stored.
    Ended,
    /// The record changed meanwhile: re-read and decide again.
    Fenced,
}

/// The state and failure a job ends with for `code`.
pub fn ending(code: ErrorCode, job_id: Uuid, error: impl Into<String>) -> (JobState, Failure) {
    let mut failure = Failure::new(code, error);
    failure.job_id = Some(job_id);
    let state = if code == ErrorCode::Canceled { JobState::Canceled } else { JobState::Failed };
    (state, failure)
}

/// Write `record` (at `revision`) as ended with `failure` and publish the
/// `failed` event with `seq` once the record is stored.
pub async fn conclude(
    jobs: &JobStore,
    events: &EventSink,
    node_id: &str,
    mut record: JobRecord,
    revision: u64,
    (state, failure): (JobState, Failure),
    seq: u64,
    trace: Option<TraceParent>,
) -> Result<Concluded, BusError> {
    let kind = EventKind::Failed(failure);
    record.state = state;
    record.node = node_id.to_string();
    record.updated_at_ms = now_ms();
    record.terminal = Some(kind.clone());
    record.terminal_seq = seq;
    match jobs.update(&record, revision).await? {
        Updated::Fenced => Ok(Concluded::Fenced),
        Updated::Ok(_) => {
            events.publish_in(trace, &record.agent, record.job_id, seq, kind).await?;
            Ok(Concluded::Ended)
        }
    }
}

/// Whether attempt `attempt` on `node_id` still holds the job: the record
/// says it is running there at that attempt (a cancel request only sets
/// `cancel_requested`, so the lease survives it).
pub fn holds_lease(record: &JobRecord, node_id: &str, attempt: u64) -> bool {
    record.state == JobState::Running && record.attempt == attempt && record.node == node_id
}

/// End the job of `ticket` as `canceled` if its agent asked for that while
/// this attempt holds it: re-read the record (a cancel request moves its
/// revision) and write the ending at the revision read. `Some(true)` when
/// this attempt ended it, `Some(false)` when no cancel applies (the caller
/// goes on), `None` when the job is not this attempt's any more.
pub async fn cancel_if_requested(
    jobs: &JobStore,
    events: &EventSink,
    node_id: &str,
    ticket: &crate::ticket::Ticket,
) -> Result<Option<bool>, BusError> {
    for _ in 0..5 {
        let Some((record, revision)) = jobs.get(&ticket.job.agent, &ticket.job.job_id).await? else { return Ok(None) };
        if !holds_lease(&record, node_id, ticket.attempt) {
            return Ok(None);
        }
        if !record.cancel_requested {
            return Ok(Some(false));
        }
        let ending = ending(ErrorCode::Canceled, ticket.job.job_id, "canceled by its agent; the result was discarded");
        match conclude(jobs, events, node_id, record, revision, ending, ticket.next_seq(), Some(ticket.trace)).await? {
            Concluded::Ended => return Ok(Some(true)),
            Concluded::Fenced => continue,
        }
    }
    Ok(None)
}
