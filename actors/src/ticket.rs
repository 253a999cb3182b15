//! A job in flight on this node: the admitted job, which delivery attempt
//! this is, and the record revision that fences its completion.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex,
};

use orfeas_wire::v1::AdmittedJob;

use crate::trace::TraceParent;

/// One delivery attempt of an admitted job, handed from actor to actor.
#[derive(Clone, Debug)]
pub struct Ticket {
    /// The job.
    pub job: Arc<AdmittedJob>,
    /// JetStream delivery count of this attempt (1 for the first).
    pub attempt: u64,
    /// Revision of the job record written when this attempt started; a
    /// completion must update exactly this revision or it lost its lease.
    pub revision: u64,
    /// The job's trace (from the queue message's `traceparent`).
    pub trace: TraceParent,
    step: Arc<AtomicU64>,
    /// Stages this attempt reported (see [`crate::progress`]).
    pub track: Arc<Mutex<crate::progress::Track>>,
    /// The job record as this attempt's claim wrote it (at `revision`), so
    /// that finishing can write the answer without reading it first.
    pub record: Option<Arc<crate::jobs::JobRecord>>,
}

impl Ticket {
    /// A ticket for delivery `attempt` holding record `revision`.
    pub fn new(job: AdmittedJob, attempt: u64, revision: u64) -> Self {
        Self { job: Arc::new(job), attempt, revision, trace: TraceParent::new_root(), step: Arc::new(AtomicU64::new(1)), track: Default::default(), record: None }
    }

    /// The same ticket, knowing the record its claim wrote.
    pub fn with_record(self, record: crate::jobs::JobRecord) -> Self {
        Self { record: Some(Arc::new(record)), ..self }
    }

    /// The same ticket in the given trace.
    pub fn traced(self, trace: TraceParent) -> Self {
        Self { trace, ..self }
    }

    /// A span for one hop of this job.
    pub fn span(&self, hop: &'static str) -> tracing::Span {
        crate::trace::hop(hop, &self.trace, &self.job.job_id, &self.job.agent)
    }

    /// Next event sequence number: strictly increasing within the job, also
    /// across attempts (`attempt << 16 | step`); `accepted` is 0.
    pub fn next_seq(&self) -> u64 {
        (self.attempt << 16) | self.step.fetch_add(1, Ordering::Relaxed).min(0xffff)
    }

    /// Key of the job in the jobs bucket.
    pub fn key(&self) -> String {
        crate::jobs::key(&self.job.agent, &self.job.job_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orfeas_wire::v1::{Format, ImageInput};

    fn job() -> AdmittedJob {
        AdmittedJob {
            job_id: uuid::Uuid::nil(),
            agent: "a".into(),
            model: "m".into(),
            formats: vec![Format::Glb],
            params: Default::default(),
            image: ImageInput::Inline { media_type: "image/png".into(), data: vec![] },
            admitted_at_ms: 0,
            lane: Default::default(),
            batch_id: None,
        }
    }

    #[test]
    fn seq_increases_within_and_across_attempts() {
        let first = Ticket::new(job(), 1, 5);
        let a = first.next_seq();
        let b = first.next_seq();
        assert!(a > 0 && b > a);
        let second = Ticket::new(job(), 2, 9);
        assert!(second.next_seq() > b);
    }
}
