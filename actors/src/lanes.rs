//! Which held jobs go into the next batch: priority lanes by weight, and
//! per-agent round robin inside a lane. Pure; the Scheduler owns one.
//!
//! - Lanes: smooth weighted round robin over the lanes that have work
//!   ([`WEIGHTS`], high : normal : low = 8 : 4 : 1), so high goes first and
//!   low still gets one batch in thirteen while anything waits — never
//!   starved.
//! - Agents: inside a lane every agent with waiting jobs has its own FIFO.
//!   A batch is filled in rounds, one job per agent per round (the oldest of
//!   that agent with the batch's model), starting with the agent after the
//!   one the previous batch started with. An agent's burst therefore delays
//!   another agent's job by at most the batch being formed.
//! - Batch model: the first agent's oldest job decides it; only jobs of the
//!   same model join (they share a forward pass).

use std::collections::{HashMap, VecDeque};

use orfeas_wire::v1::Lane;
use uuid::Uuid;

use crate::ticket::Ticket;

/// Batches each lane gets per round of the weighted round robin.
pub const WEIGHTS: [(Lane, i64); 3] = [(Lane::High, 8), (Lane::Normal, 4), (Lane::Low, 1)];

/// Position of `lane` in per-lane arrays (high, normal, low).
pub(crate) fn index(lane: Lane) -> usize {
    match lane {
        Lane::High => 0,
        Lane::Normal => 1,
        Lane::Low => 2,
    }
}

/// The jobs of one lane, per agent.
#[derive(Default)]
struct LaneQueue {
    agents: HashMap<String, VecDeque<Ticket>>,
    /// Agents with waiting jobs, in turn order.
    order: VecDeque<String>,
    len: usize,
}

impl LaneQueue {
    fn push(&mut self, ticket: Ticket) {
        let agent = ticket.job.agent.clone();
        let queue = self.agents.entry(agent.clone()).or_default();
        if queue.is_empty() {
            self.order.push_back(agent);
        }
        queue.push_back(ticket);
        self.len += 1;
    }

    fn remove(&mut self, job_id: Uuid) -> Option<Ticket> {
        for (agent, queue) in self.agents.iter_mut() {
            if let Some(at) = queue.iter().position(|t| t.job.job_id == job_id) {
                let ticket = queue.remove(at);
                self.len -= 1;
                if queue.is_empty() {
                    let agent = agent.clone();
                    self.order.retain(|a| *a != agent);
                    self.agents.remove(&agent);
                }
                return ticket;
            }
        }
        None
    }

    /// The model and the batch that would be taken now, without taking it:
    /// (model, size, oldest admission time). A retried job at the head
    /// makes a batch of its own.
    fn peek(&self, max_batch: usize, cap: &dyn Fn(&str) -> usize) -> Option<(String, usize, u64)> {
        let first = self.order.front()?;
        let head = self.agents[first].front()?;
        let model = head.job.model.clone();
        if retried(head) {
            return Some((model, 1, head.job.admitted_at_ms));
        }
        let cap = max_batch.min(cap(&model)).max(1);
        let mut size = 0;
        let mut oldest = u64::MAX;
        for agent in &self.order {
            for t in self.agents[agent].iter().filter(|t| t.job.model == model && !retried(t)) {
                if size == cap {
                    break;
                }
                size += 1;
                oldest = oldest.min(t.job.admitted_at_ms);
            }
        }
        Some((model, size, oldest))
    }

    fn take(&mut self, max_batch: usize, cap: &dyn Fn(&str) -> usize) -> Vec<Ticket> {
        let Some((model, _, _)) = self.peek(max_batch, cap) else { return Vec::new() };
        let alone = self.order.front().and_then(|a| self.agents[a].front()).is_some_and(retried);
        let cap = if alone { 1 } else { max_batch.min(cap(&model)).max(1) };
        let mut batch = Vec::with_capacity(cap);
        'rounds: loop {
            let before = batch.len();
            for agent in &self.order {
                if batch.len() == cap {
                    break 'rounds;
                }
                let queue = self.agents.get_mut(agent).expect("ordered agents have queues");
                let fits = |t: &Ticket| t.job.model == model && (alone || !retried(t));
                if let Some(at) = queue.iter().position(fits) {
                    batch.extend(queue.remove(at));
                }
            }
            if batch.len() == before {
                break;
            }
        }
        self.len -= batch.len();
        // The next batch starts with the next agent.
        self.order.rotate_left(1.min(self.order.len()));
        let agents = &mut self.agents;
        self.order.retain(|a| {
            let keep = agents.get(a).is_some_and(|q| !q.is_empty());
            if !keep {
                agents.remove(a);
            }
            keep
        });
        batch
    }
}

/// A job delivered again: its earlier attempt ended without an answer (a
/// node or a device died under it, perhaps because of this very job). It
/// runs in a batch of its own, so a job that brings devices down takes no
/// batch mates with it and alone runs out of deliveries.
pub fn retried(ticket: &Ticket) -> bool {
    ticket.attempt > 1
}

/// What the next batch would be, before it is taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Its lane.
    pub lane: Lane,
    /// Its model.
    pub model: String,
    /// How many jobs it would hold now.
    pub size: usize,
    /// How many it may hold.
    pub cap: usize,
    /// Admission time of its oldest job, ms since the epoch.
    pub oldest_ms: u64,
    /// A retried job alone ([`retried`]): it goes to an idle device and
    /// nothing is queued behind it there.
    pub alone: bool,
}

/// Every job a node holds and has not yet sent to a device.
#[derive(Default)]
pub struct Waiting {
    lanes: [LaneQueue; 3],
    /// Smooth weighted round robin credit per lane.
    current: [i64; 3],
}

impl Waiting {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Jobs waiting.
    pub fn len(&self) -> usize {
        self.lanes.iter().map(|l| l.len).sum()
    }

    /// Jobs waiting in `lane`.
    pub fn lane_len(&self, lane: Lane) -> usize {
        self.lanes[index(lane)].len
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Add a job at the end of its agent's queue in its lane.
    pub fn push(&mut self, ticket: Ticket) {
        self.lanes[index(ticket.job.lane)].push(ticket);
    }

    /// Take a job out (it was redelivered, canceled, or expired).
    pub fn remove(&mut self, job_id: Uuid) -> Option<Ticket> {
        self.lanes.iter_mut().find_map(|l| l.remove(job_id))
    }

    /// Every waiting job id.
    pub fn job_ids(&self) -> Vec<Uuid> {
        self.lanes.iter().flat_map(|l| l.agents.values().flatten().map(|t| t.job.job_id)).collect()
    }

    /// The lane the weighted round robin picks next, and the credits after it.
    fn pick(&self) -> Option<(Lane, [i64; 3])> {
        let mut current = self.current;
        let mut total = 0;
        let mut best: Option<usize> = None;
        for (lane, weight) in WEIGHTS {
            let i = index(lane);
            if self.lanes[i].len == 0 {
                continue;
            }
            current[i] += weight;
            total += weight;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        current[best] -= total;
        Some((WEIGHTS[best].0, current))
    }

    /// The batch [`take`](Self::take) would return now.
    pub fn plan(&self, max_batch: usize, cap: impl Fn(&str) -> usize) -> Option<Plan> {
        let (lane, _) = self.pick()?;
        let queue = &self.lanes[index(lane)];
        let (model, size, oldest_ms) = queue.peek(max_batch, &cap)?;
        let alone = queue.order.front().and_then(|a| queue.agents[a].front()).is_some_and(retried);
        let cap = if alone { 1 } else { max_batch.min(cap(&model)).max(1) };
        Some(Plan { lane, model, size, cap, oldest_ms, alone })
    }

    /// The next batch: lane by weight, agents in turn, one model, at most
    /// `min(max_batch, cap(model))` jobs.
    pub fn take(&mut self, max_batch: usize, cap: impl Fn(&str) -> usize) -> Vec<Ticket> {
        let Some((lane, current)) = self.pick() else { return Vec::new() };
        self.current = current;
        self.lanes[index(lane)].take(max_batch, &cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orfeas_wire::v1::{AdmittedJob, Format, ImageInput};

    fn ticket(n: u128, agent: &str, lane: Lane, model: &str) -> Ticket {
        let job = AdmittedJob {
            job_id: Uuid::from_u128(n),
            agent: agent.into(),
            model: model.into(),
            formats: vec![Format::Glb],
            params: Default::default(),
            image: ImageInput::Inline { media_type: "image/png".into(), data: vec![] },
            admitted_at_ms: n as u64,
            lane,
            batch_id: None,
        };
        Ticket::new(job, 1, 1)
    }

    fn ids(batch: &[Ticket]) -> Vec<u128> {
        batch.iter().map(|t| t.job.job_id.as_u128()).collect()
    }

    #[test]
    fn a_burst_delays_another_agent_by_at_most_the_batch_being_formed() {
        let mut w = Waiting::new();
        for n in 0..1000 {
            w.push(ticket(n, "burst", Lane::Normal, "m"));
        }
        w.push(ticket(5000, "single", Lane::Normal, "m"));
        let first = w.take(4, |_| 8);
        assert_eq!(ids(&first), vec![0, 5000, 1, 2], "one per agent per round, oldest first");
        assert_eq!(w.len(), 997);
        let second = w.take(4, |_| 8);
        assert_eq!(ids(&second), vec![3, 4, 5, 6], "the burst continues in order");
    }

    #[test]
    fn a_retried_job_runs_alone_and_is_never_a_batch_mate() {
        let mut w = Waiting::new();
        let again = |n: u128, agent: &str| {
            let t = ticket(n, agent, Lane::Normal, "m");
            Ticket::new((*t.job).clone(), 2, 1)
        };
        w.push(ticket(1, "a", Lane::Normal, "m"));
        w.push(again(2, "b"));
        w.push(ticket(3, "c", Lane::Normal, "m"));
        w.push(again(4, "a"));
        let plan = w.plan(8, |_| 8).unwrap();
        assert!(!plan.alone && plan.size == 2, "fresh jobs batch without the retried ones: {plan:?}");
        assert_eq!(ids(&w.take(8, |_| 8)), vec![1, 3]);
        let plan = w.plan(8, |_| 8).unwrap();
        assert!(plan.alone && (plan.size, plan.cap) == (1, 1), "{plan:?}");
        assert_eq!(ids(&w.take(8, |_| 8)), vec![2], "a retried job heading the turn goes alone");
        assert_eq!(ids(&w.take(8, |_| 8)), vec![4]);
        assert!(w.is_empty());
    }

    #[test]
    fn agents_take_turns_starting_the_batch() {
        let mut w = Waiting::new();
        for n in 0..4 {
            w.push(ticket(n, "a", Lane::Normal, "m"));
            w.push(ticket(10 + n, "b", Lane::Normal, "m"));
            w.push(ticket(20 + n, "c", Lane::Normal, "m"));
        }
        assert_eq!(ids(&w.take(2, |_| 8)), vec![0, 10]);
        assert_eq!(ids(&w.take(2, |_| 8)), vec![11, 20], "b starts the next batch");
        assert_eq!(ids(&w.take(2, |_| 8)), vec![21, 1], "then c");
    }

    #[test]
    fn batches_hold_one_model_and_respect_the_model_cap() {
        let mut w = Waiting::new();
        w.push(ticket(1, "a", Lane::Normal, "x"));
        w.push(ticket(2, "a", Lane::Normal, "y"));
        w.push(ticket(3, "b", Lane::Normal, "y"));
        w.push(ticket(4, "b", Lane::Normal, "x"));
        w.push(ticket(5, "a", Lane::Normal, "x"));
        let plan = w.plan(8, |m| if m == "x" { 2 } else { 8 }).unwrap();
        assert_eq!((plan.model.as_str(), plan.size, plan.cap, plan.oldest_ms), ("x", 2, 2, 1));
        let batch = w.take(8, |m| if m == "x" { 2 } else { 8 });
        assert_eq!(ids(&batch), vec![1, 4], "model x, capped at 2, one per agent");
        let batch = w.take(8, |_| 8);
        assert_eq!(ids(&batch), vec![3, 2], "b starts: its y job, then a's y job");
        assert_eq!(ids(&w.take(8, |_| 8)), vec![5]);
        assert!(w.is_empty() && w.take(8, |_| 8).is_empty() && w.plan(8, |_| 8).is_none());
    }

    #[test]
    fn lanes_share_batches_eight_four_one_and_low_is_never_starved() {
        let mut w = Waiting::new();
        for n in 0..100 {
            w.push(ticket(n, "h", Lane::High, "m"));
            w.push(ticket(1000 + n, "n", Lane::Normal, "m"));
            w.push(ticket(2000 + n, "l", Lane::Low, "m"));
        }
        let lanes: Vec<Lane> = (0..26).map(|_| w.take(1, |_| 8)[0].job.lane).collect();
        let count = |lane| lanes.iter().filter(|l| **l == lane).count();
        assert_eq!((count(Lane::High), count(Lane::Normal), count(Lane::Low)), (16, 8, 2));
        assert_eq!(lanes[0], Lane::High, "high goes first");
        let low_at = lanes.iter().position(|l| *l == Lane::Low).unwrap();
        assert!(low_at < 13, "low gets a batch within one round, at {low_at}");
    }

    #[test]
    fn an_idle_lane_gives_its_share_away() {
        let mut w = Waiting::new();
        for n in 0..10 {
            w.push(ticket(n, "l", Lane::Low, "m"));
        }
        assert_eq!(w.take(4, |_| 8).len(), 4, "low alone runs at full speed");
        w.push(ticket(100, "h", Lane::High, "m"));
        assert_eq!(ids(&w.take(4, |_| 8)), vec![100], "a new high job goes first");
    }

    #[test]
    fn removed_jobs_leave_no_trace() {
        let mut w = Waiting::new();
        w.push(ticket(1, "a", Lane::High, "m"));
        w.push(ticket(2, "b", Lane::High, "m"));
        assert_eq!(w.remove(Uuid::from_u128(1)).map(|t| t.job.job_id.as_u128()), Some(1));
        assert!(w.remove(Uuid::from_u128(1)).is_none());
        assert_eq!(w.lane_len(Lane::High), 1);
        assert_eq!(w.job_ids(), vec![Uuid::from_u128(2)]);
        assert_eq!(ids(&w.take(4, |_| 8)), vec![2]);
    }
}
