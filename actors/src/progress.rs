//! Progress of a job: which stage it is in, how far along, and when it
//! will be done, from moving averages of how long each stage took for the
//! same model on this node.
//!
//! - One [`Track`] per delivery attempt lives in the job's
//!   [`Ticket`]; every actor reports through [`crate::events::EventSink::progress`],
//!   which asks [`Track::enter`] what to say. Stages only move forward; a
//!   stage entered after skipping earlier ones reports the skipped ones
//!   first, in order, so no stage can be left out of a job's events and
//!   none is said twice. That bounds progress to six events per attempt,
//!   a few per second at most for any job — plus, while a pipeline model
//!   samples, one per percent point its steps move it ([`Track::within`]:
//!   at most the inference stage's share, ~30 by default).
//! - Percent: the share of the model's average total time spent before
//!   the stage (fixed shares until the model has finished a job here).
//! - ETA: the averages of the stages still ahead, in ms.
//! - `accepted`: [`accepted_eta`] estimates the wait from the queue
//!   position and how many jobs the node runs at once.
//!
//! [`Ticket`]: crate::ticket::Ticket

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        LazyLock, Mutex,
    },
    time::Instant,
};

use orfeas_wire::v1::Stage;

/// Stages in the order a job passes them.
pub const STAGES: [Stage; 6] = [Stage::Queued, Stage::Preprocessing, Stage::Inference, Stage::Meshing, Stage::Exporting, Stage::Storing];
/// Percent at the start of each stage before any job of the model finished here.
const DEFAULT_PERCENT: [u8; 6] = [0, 10, 30, 60, 75, 85];
/// Weight of the newest observation in a moving average.
const ALPHA: f64 = 0.2;

fn position(stage: Stage) -> usize {
    STAGES.iter().position(|s| *s == stage).unwrap_or(0)
}

/// Moving averages of stage times, seconds, per model (queued excluded:
/// waiting depends on load, not on the model).
#[derive(Default)]
pub struct StageTimes {
    by_model: HashMap<String, [Option<f64>; 6]>,
}

impl StageTimes {
    /// Fold in one observation of `stage` for `model`.
    pub fn observe(&mut self, model: &str, stage: Stage, seconds: f64) {
        if stage == Stage::Queued || !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        let slot = &mut self.by_model.entry(model.to_string()).or_default()[position(stage)];
        *slot = Some(match *slot {
            Some(avg) => avg + ALPHA * (seconds - avg),
            None => seconds,
        });
    }

    /// Averages of every running stage, once all have one.
    fn known(&self, model: &str) -> Option<[f64; 6]> {
        let times = self.by_model.get(model)?;
        let mut out = [0.0; 6];
        for (i, t) in times.iter().enumerate().skip(1) {
            out[i] = (*t)?;
        }
        Some(out)
    }

    /// Percent done when `stage` starts, and ms still to go from its start.
    pub fn estimate(&self, model: &str, stage: Stage) -> (u8, Option<u64>) {
        let at = position(stage);
        match self.known(model) {
            Some(times) => {
                let total: f64 = times.iter().sum();
                let before: f64 = times[..at].iter().sum();
                let percent = if total > 0.0 { (100.0 * before / total).round().min(99.0) as u8 } else { DEFAULT_PERCENT[at] };
                let ahead: f64 = times[at.max(1)..].iter().sum();
                (percent, Some((ahead * 1000.0).round() as u64))
            }
            None => (DEFAULT_PERCENT[at], None),
        }
    }

    /// Average time of a whole run of `model` (queued excluded), ms.
    pub fn total_ms(&self, model: &str) -> Option<u64> {
        self.known(model).map(|t| (t.iter().sum::<f64>() * 1000.0).round() as u64)
    }
}

/// This node's stage times.
pub static TIMES: LazyLock<Mutex<StageTimes>> = LazyLock::new(Default::default);
/// Jobs this node runs at once (devices × batch), set by the Scheduler.
pub static PARALLEL: AtomicUsize = AtomicUsize::new(1);

/// Estimated ms until a job of `model` accepted behind `queue_position`
/// others is done, when this node has seen that model finish.
pub fn accepted_eta(model: &str, queue_position: u64) -> Option<u64> {
    let total = TIMES.lock().unwrap_or_else(|e| e.into_inner()).total_ms(model)?;
    let parallel = PARALLEL.load(Ordering::Relaxed).max(1) as u64;
    Some(total + total * queue_position / parallel)
}

/// One progress event to publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// The stage.
    pub stage: Stage,
    /// Percent done.
    pub percent: u8,
    /// Estimated ms to go.
    pub eta_ms: Option<u64>,
}

/// Where one attempt of a job is.
#[derive(Debug, Default)]
pub struct Track {
    /// The last stage reported and when it began.
    at: Option<(usize, Instant)>,
    /// The highest percent reported in this attempt: the moving averages
    /// can change between two stages of one attempt (another job of the
    /// model finished meanwhile), and a client must never see it go back.
    percent: u8,
}

impl Track {
    /// Move to `stage` at `now`: the reports to publish (skipped stages
    /// first), none if the job is already there or past it. Time spent in
    /// the previous stage is folded into `times`.
    pub fn enter(&mut self, model: &str, stage: Stage, now: Instant, times: &mut StageTimes) -> Vec<Report> {
        let next = position(stage);
        let from = match self.at {
            Some((current, _)) if current >= next => return Vec::new(),
            Some((current, since)) => {
                times.observe(model, STAGES[current], now.duration_since(since).as_secs_f64());
                current + 1
            }
            None => 0,
        };
        self.at = Some((next, now));
        (from..=next)
            .map(|i| {
                let (estimate, eta_ms) = times.estimate(model, STAGES[i]);
                self.percent = self.percent.max(estimate);
                Report { stage: STAGES[i], percent: self.percent, eta_ms }
            })
            .collect()
    }

    /// Part `fraction` (0–1) of the way through `stage`, with `stage_left_ms`
    /// of it still ahead (a pipeline model's remaining sampler steps): a
    /// report when the percent moved up by at least one point since the
    /// last one, else nothing. Percent runs from the stage's start to the
    /// next stage's; the ETA adds the averages of the stages after it.
    /// Only while the job is in `stage`, so nothing is said out of order.
    pub fn within(&mut self, model: &str, stage: Stage, fraction: f64, stage_left_ms: u64, times: &StageTimes) -> Option<Report> {
        let at = position(stage);
        if !matches!(self.at, Some((current, _)) if current == at) {
            return None;
        }
        let (start, _) = times.estimate(model, stage);
        let (end, after_ms) = match STAGES.get(at + 1) {
            Some(next) => times.estimate(model, *next),
            None => (100, Some(0)),
        };
        let f = if fraction.is_finite() { fraction.clamp(0.0, 1.0) } else { 0.0 };
        let percent = ((start as f64 + f * (end as f64 - start as f64)).floor() as u8).min(99);
        if percent <= self.percent {
            return None;
        }
        self.percent = percent;
        Some(Report { stage, percent, eta_ms: Some(stage_left_ms + after_ms.unwrap_or(0)) })
    }

    /// The attempt ended at `now`: the last stage's time counts too.
    pub fn done(&mut self, model: &str, now: Instant, times: &mut StageTimes) {
        if let Some((current, since)) = self.at.take() {
            times.observe(model, STAGES[current], now.duration_since(since).as_secs_f64());
        }
        self.at = Some((STAGES.len(), now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn progress_within_a_stage_only_moves_forward_and_only_in_that_stage() {
        let mut times = StageTimes::default();
        let mut track = Track::default();
        let t0 = Instant::now();
        assert_eq!(track.within("m", Stage::Inference, 0.5, 100, &times), None, "not in inference yet");
        track.enter("m", Stage::Inference, t0, &mut times);
        // Default shares: inference starts at 30 %, meshing at 60 %.
        let half = track.within("m", Stage::Inference, 0.5, 400, &times).unwrap();
        assert_eq!((half.stage, half.percent, half.eta_ms), (Stage::Inference, 45, Some(400)));
        assert_eq!(track.within("m", Stage::Inference, 0.51, 390, &times), None, "under one point: nothing");
        assert_eq!(track.within("m", Stage::Inference, 0.2, 390, &times), None, "never backwards");
        assert_eq!(track.within("m", Stage::Inference, 1.0, 0, &times).unwrap().percent, 60);
        track.enter("m", Stage::Meshing, t0, &mut times);
        assert_eq!(track.within("m", Stage::Inference, 1.0, 0, &times), None, "past the stage");
    }

    #[test]
    fn stages_are_reported_once_each_in_order_even_when_skipped() {
        let mut times = StageTimes::default();
        let mut track = Track::default();
        let t0 = Instant::now();
        let first: Vec<Stage> = track.enter("m", Stage::Preprocessing, t0, &mut times).iter().map(|r| r.stage).collect();
        assert_eq!(first, vec![Stage::Queued, Stage::Preprocessing], "queued is never left out");
        assert!(track.enter("m", Stage::Preprocessing, t0, &mut times).is_empty(), "no stage twice");
        let skipped: Vec<Stage> = track.enter("m", Stage::Exporting, t0, &mut times).iter().map(|r| r.stage).collect();
        assert_eq!(skipped, vec![Stage::Inference, Stage::Meshing, Stage::Exporting]);
        assert!(track.enter("m", Stage::Inference, t0, &mut times).is_empty(), "never backwards");
        track.done("m", t0, &mut times);
        assert!(track.enter("m", Stage::Storing, t0, &mut times).is_empty(), "nothing after the end");
    }

    #[test]
    fn percent_and_eta_follow_the_moving_averages_per_model() {
        let mut times = StageTimes::default();
        assert_eq!(times.estimate("m", Stage::Inference), (30, None), "fixed shares before any data");
        let t0 = Instant::now();
        let mut track = Track::default();
        // preprocessing 1 s, inference 6 s, meshing 2 s, exporting 0.5 s, storing 0.5 s
        let mut at = t0;
        for (stage, secs) in [(Stage::Preprocessing, 1.0), (Stage::Inference, 6.0), (Stage::Meshing, 2.0), (Stage::Exporting, 0.5), (Stage::Storing, 0.5)] {
            track.enter("m", stage, at, &mut times);
            at += Duration::from_secs_f64(secs);
        }
        track.done("m", at, &mut times);
        assert_eq!(times.estimate("m", Stage::Preprocessing), (0, Some(10_000)));
        assert_eq!(times.estimate("m", Stage::Inference), (10, Some(9_000)));
        assert_eq!(times.estimate("m", Stage::Meshing), (70, Some(3_000)));
        assert_eq!(times.estimate("other", Stage::Meshing), (60, None), "per model");
        assert_eq!(times.total_ms("m"), Some(10_000));
        // A slower run moves the average by ALPHA of the difference.
        times.observe("m", Stage::Inference, 16.0);
        assert_eq!(times.estimate("m", Stage::Storing).1, Some(500));
        assert_eq!(times.total_ms("m"), Some(12_000));
        times.observe("m", Stage::Queued, 100.0);
        assert_eq!(times.total_ms("m"), Some(12_000), "waiting is not a stage time");
    }

    #[test]
    fn percent_never_decreases_within_an_attempt() {
        let mut times = StageTimes::default();
        let t0 = Instant::now();
        let mut track = Track::default();
        let first = track.enter("m", Stage::Inference, t0, &mut times);
        assert_eq!(first.last().map(|r| r.percent), Some(30), "fixed share of inference before any data");
        // Another job of the model finishes meanwhile with a long
        // inference: the estimate for meshing falls to 24 percent.
        for (stage, secs) in [(Stage::Preprocessing, 0.4), (Stage::Inference, 2.0), (Stage::Meshing, 5.6), (Stage::Exporting, 0.5), (Stage::Storing, 1.5)] {
            times.observe("m", stage, secs);
        }
        assert_eq!(times.estimate("m", Stage::Meshing).0, 24, "the fresh estimate is lower than what was said");
        let later = track.enter("m", Stage::Meshing, t0, &mut times);
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].percent, 30, "clamped to the highest percent already reported");
        let last = track.enter("m", Stage::Storing, t0, &mut times);
        assert!(last.windows(2).all(|w| w[0].percent <= w[1].percent));
        let storing = times.estimate("m", Stage::Storing).0;
        assert!(storing > 30, "{storing}");
        assert_eq!(last.last().map(|r| r.percent), Some(storing), "rises again once the estimate passes it");
        // A new attempt starts from its own track, at the fresh estimate.
        let meshing = times.estimate("m", Stage::Meshing).0;
        assert!(meshing < 30, "{meshing}");
        let retry = Track::default().enter("m", Stage::Meshing, t0, &mut times);
        assert_eq!(retry.last().map(|r| r.percent), Some(meshing));
    }

    #[test]
    fn accepted_eta_scales_with_the_queue_ahead() {
        {
            let mut times = TIMES.lock().unwrap();
            for stage in &STAGES[1..] {
                times.observe("eta-test", *stage, 0.2);
            }
        }
        PARALLEL.store(4, Ordering::Relaxed);
        assert_eq!(accepted_eta("eta-test", 0), Some(1_000));
        assert_eq!(accepted_eta("eta-test", 8), Some(3_000), "two more rounds of four");
        assert_eq!(accepted_eta("never-seen", 8), None);
    }
}
