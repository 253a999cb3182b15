//! Handoff from this node's Ingress to its Scheduler: the job record as
//! Ingress created it (and its revision), and whether the job's `accepted`
//! is stored yet.
//!
//! A job admitted here is usually claimed here a few milliseconds later.
//! Without the handoff the claim re-reads the record it is about to fence
//! (one KV read) and asks the events stream whether `accepted` exists (one
//! more request, polled). With it, the claim writes `running` at the
//! revision Ingress got back from its create: if nothing touched the record
//! since (no cancel, no other node), the fenced write succeeds and the read
//! would have returned exactly that record; if something did, the write is
//! fenced and the claim reads the record as before. The `accepted` wait is a
//! local signal from Ingress, sent once the event's PubAck arrived.
//!
//! Not an actor: a bounded map behind a mutex, shared by Ingress and the
//! Scheduler's claim tasks (kept across their restarts). Entries are taken by
//! the claim; the oldest are dropped beyond [`CAPACITY`] (jobs another node
//! claimed), which costs only the read this saves.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use tokio::sync::watch;
use uuid::Uuid;

use crate::jobs::JobRecord;

/// Entries kept at most.
pub const CAPACITY: usize = 8192;

/// What is known about a job's `accepted` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Announce {
    /// Ingress is publishing it.
    Pending,
    /// Stored: the server confirmed it.
    Stored,
    /// Ingress gave up on this admission (the submission is redelivered).
    Abandoned,
}

struct Entry {
    record: JobRecord,
    revision: u64,
    announce: watch::Receiver<Announce>,
    generation: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<(String, Uuid), Entry>,
    /// Insertion order with each entry's generation, for dropping the oldest.
    order: VecDeque<((String, Uuid), u64)>,
    generation: u64,
}

/// The handoff table (see the module doc).
#[derive(Default)]
pub struct Handoff {
    inner: Mutex<Inner>,
}

/// Held by Ingress while it announces a job; dropped without
/// [`Announcer::stored`], it tells a waiting claim to look for itself.
pub struct Announcer {
    tx: watch::Sender<Announce>,
}

impl Announcer {
    /// The job's `accepted` is stored.
    pub fn stored(self) {
        let _ = self.tx.send(Announce::Stored);
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        // Sent only while still pending: `stored` already moved it on.
        self.tx.send_if_modified(|a| {
            let pending = *a == Announce::Pending;
            if pending {
                *a = Announce::Abandoned;
            }
            pending
        });
    }
}

/// A job taken from the handoff by its claim.
pub struct Handed {
    /// The record as Ingress created it.
    pub record: JobRecord,
    /// Its revision.
    pub revision: u64,
    announce: watch::Receiver<Announce>,
}

impl Handed {
    /// Wait at most `patience` for Ingress to confirm `accepted`: true once
    /// it is stored, false if Ingress gave up or the wait ran out (then the
    /// claim asks the events stream, as for a job admitted elsewhere).
    pub async fn announced(&mut self, patience: Duration) -> bool {
        let wait = self.announce.wait_for(|a| *a != Announce::Pending);
        matches!(tokio::time::timeout(patience, wait).await, Ok(Ok(a)) if *a == Announce::Stored)
    }
}

impl Handoff {
    /// Ingress created `record` at `revision`; the returned announcer says
    /// when its `accepted` is stored.
    pub fn admitted(&self, record: JobRecord, revision: u64) -> Announcer {
        let (tx, announce) = watch::channel(Announce::Pending);
        let key = (record.agent.clone(), record.job_id);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.generation += 1;
        let generation = inner.generation;
        inner.order.push_back((key.clone(), generation));
        inner.entries.insert(key, Entry { record, revision, announce, generation });
        while inner.order.len() > CAPACITY {
            let Some((old, generation)) = inner.order.pop_front() else { break };
            if inner.entries.get(&old).is_some_and(|e| e.generation == generation) {
                inner.entries.remove(&old);
            }
        }
        Announcer { tx }
    }

    /// The entry of `agent`'s job `job_id`, removed: only one claim uses it.
    pub fn take(&self, agent: &str, job_id: &Uuid) -> Option<Handed> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entry = inner.entries.remove(&(agent.to_string(), *job_id))?;
        Some(Handed { record: entry.record, revision: entry.revision, announce: entry.announce })
    }

    /// Entries held (for tests and the bound).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::JobState;
    use orfeas_wire::v1::Lane;

    fn record(agent: &str, job_id: Uuid) -> JobRecord {
        JobRecord {
            agent: agent.into(),
            job_id,
            model: "null".into(),
            digest: "d".into(),
            state: JobState::Admitted,
            attempt: 0,
            node: "n".into(),
            updated_at_ms: 0,
            terminal: None,
            terminal_seq: 0,
            lane: Lane::default(),
            deadline_ms: None,
            cancel_requested: false,
            batch_id: None,
            request: None,
        }
    }

    #[tokio::test]
    async fn a_claim_takes_the_record_once_and_waits_for_the_stored_accepted() {
        let handoff = Handoff::default();
        let id = Uuid::new_v4();
        let announcer = handoff.admitted(record("a", id), 7);
        let mut handed = handoff.take("a", &id).expect("handed over");
        assert_eq!((handed.revision, handed.record.job_id), (7, id));
        assert!(handoff.take("a", &id).is_none(), "a second claim reads the record itself");
        assert!(!handed.announced(Duration::from_millis(20)).await, "not stored yet: the wait runs out");
        announcer.stored();
        assert!(handed.announced(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn an_abandoned_admission_ends_the_wait_at_once() {
        let handoff = Handoff::default();
        let id = Uuid::new_v4();
        let announcer = handoff.admitted(record("a", id), 1);
        let mut handed = handoff.take("a", &id).unwrap();
        drop(announcer);
        let started = std::time::Instant::now();
        assert!(!handed.announced(Duration::from_secs(30)).await);
        assert!(started.elapsed() < Duration::from_secs(10), "did not wait out the patience");
    }

    #[test]
    fn the_oldest_entries_go_beyond_the_capacity() {
        let handoff = Handoff::default();
        let ids: Vec<Uuid> = (0..CAPACITY + 10).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            handoff.admitted(record("a", *id), 1).stored();
        }
        assert_eq!(handoff.len(), CAPACITY);
        assert!(handoff.take("a", &ids[0]).is_none());
        assert!(handoff.take("a", &ids[CAPACITY + 9]).is_some());
        // A job admitted again after its entry was taken is not dropped by its old place in line.
        let again = ids[10];
        assert!(handoff.take("a", &again).is_some());
        handoff.admitted(record("a", again), 2).stored();
        for _ in 0..5 {
            handoff.admitted(record("a", Uuid::new_v4()), 1).stored();
        }
        assert_eq!(handoff.take("a", &again).map(|h| h.revision), Some(2));
    }
}
