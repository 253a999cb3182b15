//! The fault tests' checker (after Jepsen's queue checker): per job id,
//! was it attempted (the test tried to submit it), accepted, answered, and
//! how many distinct answers does the event history hold.
//!
//! - lost: accepted without exactly one terminal answer;
//! - unexpected: a terminal answer for a job the test never submitted;
//! - duplicates: more than one distinct terminal answer (a re-sent answer
//!   keeps its seq and counts once).

use std::collections::{HashMap, HashSet};

use orfeas_wire::v1::{Event, EventKind};
use uuid::Uuid;

/// Counts over one run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    pub attempted: usize,
    pub accepted: usize,
    pub terminal: usize,
    pub completed: usize,
    pub lost: Vec<Uuid>,
    pub unexpected: Vec<Uuid>,
    pub duplicates: Vec<Uuid>,
}

impl Ledger {
    /// Tally `events` (every stored event of the agents involved) against
    /// the job ids the test `attempted`.
    pub fn of(attempted: &HashSet<Uuid>, events: &HashMap<Uuid, Vec<Event>>) -> Self {
        let mut out = Self { attempted: attempted.len(), ..Self::default() };
        for (job, list) in events {
            let accepted = list.iter().any(|e| matches!(e.kind, EventKind::Accepted { .. }));
            let mut terminal: Vec<&Event> = list.iter().filter(|e| e.kind.is_terminal()).collect();
            terminal.sort_by_key(|e| e.seq);
            terminal.dedup_by_key(|e| e.seq);
            if accepted {
                out.accepted += 1;
                if terminal.len() != 1 {
                    out.lost.push(*job);
                }
            }
            if !terminal.is_empty() {
                out.terminal += 1;
                if !attempted.contains(job) {
                    out.unexpected.push(*job);
                }
            }
            if terminal.iter().any(|e| matches!(e.kind, EventKind::Completed { .. })) {
                out.completed += 1;
            }
            if terminal.len() > 1 {
                out.duplicates.push(*job);
            }
        }
        out
    }

    /// Every accepted job has exactly one answer and nothing else answered.
    pub fn assert_clean(&self) {
        assert!(self.lost.is_empty(), "lost: {:?} ({self:?})", self.lost);
        assert!(self.unexpected.is_empty(), "unexpected: {:?}", self.unexpected);
        assert!(self.duplicates.is_empty(), "duplicates: {:?}", self.duplicates);
    }

    /// One line for the logs and md/reliability.md.
    pub fn line(&self) -> String {
        format!(
            "attempted {} accepted {} terminal {} completed {} lost {} unexpected {} duplicates {}",
            self.attempted,
            self.accepted,
            self.terminal,
            self.completed,
            self.lost.len(),
            self.unexpected.len(),
            self.duplicates.len()
        )
    }
}
