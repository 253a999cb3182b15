//! Pulling `ORFEAS_QUEUE` fairly: per lane, the agents with queued jobs take
//! turns at the node's free credits, so one agent's 1,000-job burst never
//! fills a node ahead of another agent's single job.
//!
//! - Consumes: the stream's per-subject message counts (one stream-info
//!   request with a subjects filter: cheap, the server keeps a per-subject
//!   index) to learn which `(lane, agent)` subjects hold jobs; then the
//!   per-agent consumers of [`crate::queue`], fetched without waiting.
//! - Publishes: each fetched message to the Scheduler (`deliver`), one
//!   credit of its lane per message (the Scheduler gives it back when the
//!   message is settled).
//! - State: the [`Turns`] per lane (agents with a backlog, in name order,
//!   and who had the last turn, so a refresh does not restart the round);
//!   the consumer handles. A task, not an actor: the Scheduler aborts it
//!   on drain and on stop.
//! - Refresh: the counts are read again every [`REFRESH`] while the node
//!   has credits to spend, and after [`IDLE_REFRESH`] when every lane with
//!   credits has run dry. When credits free up and the cached backlog still
//!   has agents, they are pulled at once without a refresh. Ingress's
//!   queued hints (`orfeas.control.queued`, core NATS) put a new job's
//!   agent in the round at once, so an idle node does not wait for the
//!   next look; a lost hint costs at most that wait.
//! - Share: a turn fetches `ceil(free credits / agents with a backlog)`
//!   jobs, so every agent with a backlog gets jobs in the same round; an
//!   agent whose fetch comes back short is out of the round until the next
//!   refresh (its other jobs are held elsewhere or wait for a redelivery).

use std::{
    collections::{BTreeMap, HashMap},
    ops::Bound,
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::pull};
use futures::{FutureExt, StreamExt};
use orfeas_wire::{subjects, v1::Lane};
use tokio::{sync::Semaphore, task::JoinHandle};

use crate::{
    bus::Deliver,
    lanes::index,
    metrics,
    queue::{self, Source},
    settings::NodeSettings,
};

/// Counts are re-read at least this often while credits are free.
pub const REFRESH: Duration = Duration::from_millis(250);
/// An idle node (no backlog known for any lane with credits) looks again
/// after this long.
pub const IDLE_REFRESH: Duration = Duration::from_millis(100);
/// Consecutive failed requests before the Scheduler is told (it restarts).
const MAX_FAILURES: u32 = 20;
/// Pause after a failed request.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Who pulls next in each lane. Pure; [`FairPull`] owns one.
#[derive(Default)]
pub struct Turns {
    lanes: [LaneTurns; 3],
}

#[derive(Default)]
struct LaneTurns {
    /// Sources with queued jobs and how many (as last counted, minus what
    /// was fetched since).
    ready: BTreeMap<Source, u64>,
    /// Who had the last turn.
    last: Option<Source>,
}

impl Turns {
    /// Replace the backlog with fresh per-subject counts; who had the last
    /// turn is kept. Returns the queued jobs per lane.
    pub fn refresh(&mut self, counts: impl IntoIterator<Item = (String, usize)>) -> [u64; 3] {
        for lane in &mut self.lanes {
            lane.ready.clear();
        }
        let mut depth = [0u64; 3];
        for (subject, count) in counts {
            let Some((lane, source)) = queue::source_of(&subject) else { continue };
            if count > 0 {
                depth[index(lane)] += count as u64;
                *self.lanes[index(lane)].ready.entry(source).or_default() += count as u64;
            }
        }
        depth
    }

    /// Whether `lane` has a source with queued jobs.
    pub fn has_backlog(&self, lane: Lane) -> bool {
        !self.lanes[index(lane)].ready.is_empty()
    }

    /// The next source of `lane` in turn and how many sources have a backlog.
    pub fn next(&mut self, lane: Lane) -> Option<(Source, usize)> {
        let turns = &mut self.lanes[index(lane)];
        let after = match &turns.last {
            Some(last) => turns.ready.range((Bound::Excluded(last.clone()), Bound::Unbounded)).next(),
            None => None,
        };
        let next = after.or_else(|| turns.ready.iter().next()).map(|(s, _)| s.clone())?;
        turns.last = Some(next.clone());
        Some((next, turns.ready.len()))
    }

    /// A job was just queued on `subject` (a hint): its source is in the round.
    pub fn hint(&mut self, subject: &str) {
        if let Some((lane, source)) = queue::source_of(subject) {
            *self.lanes[index(lane)].ready.entry(source).or_default() += 1;
        }
    }

    /// `source` gave `got` of the `wanted` jobs: short means it is out of
    /// the round until the next refresh.
    pub fn fetched(&mut self, lane: Lane, source: &Source, wanted: usize, got: usize) {
        let ready = &mut self.lanes[index(lane)].ready;
        let left = ready.get(source).map_or(0, |n| n.saturating_sub(got as u64));
        if got < wanted || left == 0 {
            ready.remove(source);
        } else {
            ready.insert(source.clone(), left);
        }
    }
}

/// Jobs one turn takes: an equal share of the free credits, at least one.
pub fn share(free: usize, agents: usize) -> usize {
    free.div_ceil(agents.max(1)).max(1).min(free.max(1))
}

/// Queued jobs per subject of the queue stream.
pub async fn counts(stream: &jetstream::stream::Stream) -> Result<Vec<(String, usize)>, String> {
    let mut info = stream.info_with_subjects(subjects::QUEUE_WILDCARD).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Some(item) = info.next().await {
        out.push(item.map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// Queued jobs per lane (waiting or held by a node), for the depth gauge.
pub async fn lane_depths(stream: &jetstream::stream::Stream) -> Result<Vec<(Lane, u64)>, String> {
    let depth = Turns::default().refresh(counts(stream).await?);
    Ok(Lane::ALL.iter().map(|l| (*l, depth[index(*l)])).collect())
}

/// The pulling task's configuration.
pub struct FairPull {
    /// For the queued hints ([`subjects::CONTROL_QUEUED`]).
    pub client: async_nats::Client,
    /// The queue stream.
    pub stream: jetstream::stream::Stream,
    /// Node settings (consumer config).
    pub settings: Arc<NodeSettings>,
    /// `max_ack_pending` of each consumer.
    pub max_ack_pending: i64,
    /// Credits per lane: one per job the node may still hold.
    pub credits: HashMap<Lane, Arc<Semaphore>>,
    /// The lane-wide consumers (jobs queued before per-agent subjects).
    pub lane_consumers: Vec<(Lane, jetstream::consumer::Consumer<pull::Config>)>,
}

impl FairPull {
    /// Pull until aborted (or the Scheduler is gone, or requests keep failing:
    /// then `on_error`).
    pub fn spawn(self, deliver: Deliver, on_error: Box<dyn Fn(String) + Send + Sync>) -> JoinHandle<()> {
        tokio::spawn(self.run(deliver, on_error))
    }

    async fn counts(&self) -> Result<Vec<(String, usize)>, String> {
        counts(&self.stream).await
    }

    async fn run(self, deliver: Deliver, on_error: Box<dyn Fn(String) + Send + Sync>) {
        let mut consumers: HashMap<(Lane, Source), jetstream::consumer::Consumer<pull::Config>> =
            self.lane_consumers.iter().map(|(lane, c)| ((*lane, Source::Lane), c.clone())).collect();
        let mut turns = Turns::default();
        let mut refreshed: Option<Instant> = None;
        let mut failures = 0u32;
        let mut hints = match self.client.subscribe(subjects::CONTROL_QUEUED).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no queued hints; new jobs are found by looking at the counts");
                None
            }
        };
        let fail = |failures: &mut u32, what: String| -> bool {
            *failures += 1;
            tracing::warn!(error = %what, failures = *failures, "queue pull failed");
            if *failures >= MAX_FAILURES {
                on_error(format!("queue pull failed {} times: {what}", *failures));
                return true;
            }
            false
        };
        loop {
            // Hints that arrived while pulling.
            while let Some(Some(hint)) = hints.as_mut().map(|h| h.next().now_or_never().flatten()) {
                turns.hint(std::str::from_utf8(&hint.payload).unwrap_or_default());
            }
            let free = |lane: Lane| self.credits.get(&lane).map_or(0, |c| c.available_permits());
            let dry = Lane::ALL.iter().all(|l| free(*l) == 0 || !turns.has_backlog(*l));
            let age = refreshed.map_or(Duration::MAX, |at| at.elapsed());
            let any_free = Lane::ALL.iter().any(|l| free(*l) > 0);
            if any_free && (age >= REFRESH || (dry && age >= IDLE_REFRESH)) {
                match self.counts().await {
                    Ok(counts) => {
                        let depth = turns.refresh(counts);
                        for lane in Lane::ALL {
                            metrics::QUEUE_DEPTH.with_label_values(&[lane.as_str()]).set(depth[index(lane)] as i64);
                        }
                        refreshed = Some(Instant::now());
                    }
                    Err(e) => {
                        if fail(&mut failures, e) {
                            return;
                        }
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                }
            }
            let mut pulled = false;
            for lane in Lane::ALL {
                let Some(credits) = self.credits.get(&lane) else { continue };
                let available = credits.available_permits();
                if available == 0 {
                    continue;
                }
                let Some((source, agents)) = turns.next(lane) else { continue };
                let wanted = share(available, agents);
                match credits.clone().try_acquire_many_owned(wanted as u32) {
                    Ok(permits) => permits.forget(),
                    Err(tokio::sync::TryAcquireError::Closed) => return,
                    Err(_) => continue,
                }
                let key = (lane, source.clone());
                let consumer = match consumers.get(&key) {
                    Some(c) => c.clone(),
                    None => {
                        let Source::Agent(agent) = &source else { unreachable!("lane consumers are made at start") };
                        match queue::agent_consumer(&self.stream, lane, agent, &self.settings, self.max_ack_pending).await {
                            Ok(c) => {
                                consumers.insert(key.clone(), c.clone());
                                c
                            }
                            Err(e) => {
                                credits.add_permits(wanted);
                                turns.fetched(lane, &source, wanted, 0);
                                if fail(&mut failures, e.to_string()) {
                                    return;
                                }
                                tokio::time::sleep(RETRY_PAUSE).await;
                                continue;
                            }
                        }
                    }
                };
                let mut got = 0usize;
                match consumer.fetch().max_messages(wanted).messages().await {
                    Ok(messages) => {
                        let Some(n) = crate::bus::deliver_all(messages, &deliver, crate::bus::PULL_PATIENCE).await else { return };
                        got = n;
                        failures = 0;
                    }
                    Err(e) => {
                        // Perhaps deleted after a long idle spell: made again next time.
                        if matches!(source, Source::Agent(_)) {
                            consumers.remove(&key);
                        }
                        if fail(&mut failures, e.to_string()) {
                            return;
                        }
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
                credits.add_permits(wanted - got);
                turns.fetched(lane, &source, wanted, got);
                pulled |= got > 0;
            }
            if pulled {
                continue;
            }
            // Nothing to take now: wait for a credit in a lane with a
            // backlog, or for the next look at the counts.
            let waiting: Vec<Arc<Semaphore>> =
                Lane::ALL.iter().filter(|l| turns.has_backlog(**l)).filter_map(|l| self.credits.get(l).cloned()).collect();
            let age = refreshed.map_or(Duration::MAX, |at| at.elapsed());
            let period = if waiting.is_empty() { IDLE_REFRESH } else { REFRESH };
            let pause = period.saturating_sub(age).max(Duration::from_millis(10));
            let credit = async {
                if waiting.is_empty() {
                    return futures::future::pending::<bool>().await;
                }
                let acquires = waiting.iter().map(|s| Box::pin(s.acquire()));
                // The permit goes straight back: this only waits for one.
                futures::future::select_all(acquires).await.0.is_ok()
            };
            let hint = async {
                match hints.as_mut() {
                    Some(h) => h.next().await,
                    None => futures::future::pending().await,
                }
            };
            tokio::select! {
                open = credit => if !open { return },
                Some(hint) = hint => turns.hint(std::str::from_utf8(&hint.payload).unwrap_or_default()),
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(a: &str) -> Source {
        Source::Agent(a.into())
    }

    #[test]
    fn agents_with_a_backlog_take_turns_across_refreshes() {
        let mut t = Turns::default();
        let depth = t.refresh([
            ("orfeas.jobs.queue.normal.burst".to_string(), 1000),
            ("orfeas.jobs.queue.normal.single".to_string(), 1),
            ("orfeas.jobs.queue.low.slow".to_string(), 3),
            ("orfeas.jobs.queue.normal".to_string(), 2),
            ("orfeas.jobs.queue.normal.none".to_string(), 0),
            ("orfeas.jobs.submit.x".to_string(), 9),
        ]);
        assert_eq!(depth, [0, 1003, 3]);
        assert!(!t.has_backlog(Lane::High) && t.has_backlog(Lane::Low));
        assert_eq!(t.next(Lane::Normal), Some((Source::Lane, 3)), "jobs from before per-agent queues first");
        t.fetched(Lane::Normal, &Source::Lane, 2, 2);
        assert_eq!(t.next(Lane::Normal), Some((agent("burst"), 2)));
        t.fetched(Lane::Normal, &agent("burst"), 2, 2);
        // A refresh keeps the turn: the single agent is next, not burst again.
        t.refresh([("orfeas.jobs.queue.normal.burst".to_string(), 998), ("orfeas.jobs.queue.normal.single".to_string(), 1)]);
        assert_eq!(t.next(Lane::Normal), Some((agent("single"), 2)));
        t.fetched(Lane::Normal, &agent("single"), 1, 1);
        assert_eq!(t.next(Lane::Normal), Some((agent("burst"), 1)), "single is done");
        t.fetched(Lane::Normal, &agent("burst"), 4, 1);
        assert_eq!(t.next(Lane::Normal), None, "a short fetch leaves the round until the next refresh");
        t.hint("orfeas.jobs.queue.normal.late");
        t.hint("orfeas.jobs.queue.bogus.late");
        assert_eq!(t.next(Lane::Normal), Some((agent("late"), 1)), "a queued hint puts its agent in the round");
    }

    #[test]
    fn a_turn_takes_an_equal_share_of_the_free_credits() {
        assert_eq!(share(4, 2), 2);
        assert_eq!(share(3, 2), 2);
        assert_eq!(share(1, 5), 1);
        assert_eq!(share(16, 1), 16);
        assert_eq!(share(5, 0), 5);
    }
}
