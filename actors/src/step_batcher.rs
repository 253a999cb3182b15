//! Step-level continuous batching for a pipeline's `step` stage.
//!
//! Like token-level batching in LLM servers: the running set is one batch
//! that jobs join at step boundaries and leave when their own `steps` are
//! done, so a job that arrives while others sample waits at most one step,
//! not a whole request. Every item carries its own timestep pair, which is
//! what lets items at different steps share a call.
//!
//! The structure is pure (no threads, no actors): the device thread pushes
//! encoded jobs, calls [`StepBatcher::boundary`] (retire stopped jobs,
//! admit waiting ones up to the memory-bounded limit) and then
//! [`StepBatcher::step`] with a closure that runs the model. Jobs end in
//! exactly one [`Retired`] each. Cancel and deadlines act at boundaries:
//! a canceled job, or one whose deadline has passed, leaves before the
//! next step — never started if it was still waiting, with the steps it
//! did if it was sampling.
//!
//! A failing step is bisected like a failing batch in the GpuWorker: the
//! running set is split in halves until the job that fails alone is found;
//! an out-of-memory error tells the caller to lower its limit.

use std::collections::VecDeque;

use tch::Tensor;

use crate::model::ModelError;

/// One job in the batcher.
pub struct Entry<J> {
    /// The caller's job (ticket and whatever it needs to finish it).
    pub job: J,
    /// Current latent `[*L]` on the device.
    latent: Tensor,
    /// Conditioning `[T, C]` on the device.
    cond: Tensor,
    /// Steps done.
    done: usize,
}

/// Why a job stops before its steps are done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Its agent canceled it.
    Canceled,
    /// Its deadline passed, while it waited or while it sampled.
    Expired,
}

/// A job leaving the batcher.
pub enum Retired<J> {
    /// All steps done: the final latent `[*L]`, to decode.
    Done(J, Tensor),
    /// Stopped at a boundary after this many of its steps (0: it never
    /// joined the running set).
    Stopped(J, Stop, usize),
    /// Its step failed alone.
    Failed(J, ModelError),
}

/// What one batched step did.
pub struct StepReport<J> {
    /// Jobs that left: finished or failed.
    pub retired: Vec<Retired<J>>,
    /// Items in the call(s) that ran.
    pub batch: usize,
    /// A call ran out of memory (the set was split; lower the limit).
    pub out_of_memory: bool,
}

/// The running set and the jobs waiting to join it.
pub struct StepBatcher<J> {
    timesteps: Vec<f32>,
    waiting: VecDeque<Entry<J>>,
    running: Vec<Entry<J>>,
}

impl<J> StepBatcher<J> {
    /// A batcher for a schedule of `timesteps.len() - 1` steps.
    pub fn new(timesteps: &[f64]) -> Self {
        Self { timesteps: timesteps.iter().map(|&t| t as f32).collect(), waiting: VecDeque::new(), running: Vec::new() }
    }

    /// Steps per job.
    pub fn steps(&self) -> usize {
        self.timesteps.len().saturating_sub(1)
    }

    /// Queue an encoded job: its starting `latent [*L]` and `cond [T, C]`.
    pub fn push(&mut self, job: J, latent: Tensor, cond: Tensor) {
        self.waiting.push_back(Entry { job, latent, cond, done: 0 });
    }

    /// Jobs sampling now.
    pub fn running(&self) -> impl Iterator<Item = (&J, usize)> {
        self.running.iter().map(|e| (&e.job, e.done))
    }

    /// Jobs waiting to join.
    pub fn waiting(&self) -> impl Iterator<Item = &J> {
        self.waiting.iter().map(|e| &e.job)
    }

    /// Nothing running and nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    /// A step boundary: jobs `stop` says must stop leave (running and
    /// waiting ones alike), then waiting jobs join in arrival order while
    /// the running set is below `limit` (at least one job runs).
    pub fn boundary(&mut self, limit: usize, stop: impl Fn(&J) -> Option<Stop>) -> Vec<Retired<J>> {
        let mut out = Vec::new();
        let mut kept = Vec::with_capacity(self.running.len());
        for e in self.running.drain(..) {
            match stop(&e.job) {
                Some(why) => out.push(Retired::Stopped(e.job, why, e.done)),
                None => kept.push(e),
            }
        }
        self.running = kept;
        let mut waiting = VecDeque::with_capacity(self.waiting.len());
        for e in self.waiting.drain(..) {
            match stop(&e.job) {
                Some(why) => out.push(Retired::Stopped(e.job, why, 0)),
                None => waiting.push_back(e),
            }
        }
        self.waiting = waiting;
        let limit = limit.max(1);
        while self.running.len() < limit {
            let Some(e) = self.waiting.pop_front() else { break };
            self.running.push(e);
        }
        out
    }

    /// One step for every running job, as one call of `run(latents [B, *L],
    /// t [B], t_next [B], cond [B, T, C])` (split on failure). Jobs whose
    /// last step this was leave as [`Retired::Done`].
    pub fn step<F>(&mut self, mut run: F) -> Result<StepReport<J>, ModelError>
    where
        F: FnMut(&Tensor, &[f32], &[f32], &Tensor) -> Result<Tensor, ModelError>,
    {
        let entries = std::mem::take(&mut self.running);
        let batch = entries.len();
        let mut report = StepReport { retired: Vec::new(), batch, out_of_memory: false };
        let mut stepped = Vec::with_capacity(batch);
        self.step_split(entries, &mut run, &mut stepped, &mut report)?;
        let last = self.steps();
        for mut e in stepped {
            e.done += 1;
            if e.done >= last {
                report.retired.push(Retired::Done(e.job, e.latent));
            } else {
                self.running.push(e);
            }
        }
        Ok(report)
    }

    fn step_split<F>(&self, entries: Vec<Entry<J>>, run: &mut F, stepped: &mut Vec<Entry<J>>, report: &mut StepReport<J>) -> Result<(), ModelError>
    where
        F: FnMut(&Tensor, &[f32], &[f32], &Tensor) -> Result<Tensor, ModelError>,
    {
        if entries.is_empty() {
            return Ok(());
        }
        let latents = Tensor::stack(&entries.iter().map(|e| e.latent.shallow_clone()).collect::<Vec<_>>(), 0);
        let cond = Tensor::stack(&entries.iter().map(|e| e.cond.shallow_clone()).collect::<Vec<_>>(), 0);
        let t: Vec<f32> = entries.iter().map(|e| self.timesteps[e.done]).collect();
        let t_next: Vec<f32> = entries.iter().map(|e| self.timesteps[e.done + 1]).collect();
        match run(&latents, &t, &t_next, &cond) {
            Ok(out) if out.size().first() == Some(&(entries.len() as i64)) => {
                for (i, mut e) in entries.into_iter().enumerate() {
                    e.latent = out.get(i as i64);
                    stepped.push(e);
                }
                Ok(())
            }
            Ok(out) => {
                let detail = format!("step returned {:?} for a batch of {}", out.size(), entries.len());
                for e in entries {
                    report.retired.push(Retired::Failed(e.job, ModelError::Contract { name: "step".into(), detail: detail.clone() }));
                }
                Ok(())
            }
            Err(e @ ModelError::Forward { device_lost: true, .. }) => Err(e),
            Err(e) if entries.len() == 1 => {
                report.out_of_memory |= matches!(e, ModelError::Forward { out_of_memory: true, .. });
                let entry = entries.into_iter().next().expect("one entry");
                report.retired.push(Retired::Failed(entry.job, e));
                Ok(())
            }
            Err(e) => {
                report.out_of_memory |= matches!(e, ModelError::Forward { out_of_memory: true, .. });
                let mut first = entries;
                let second = first.split_off(first.len() / 2);
                self.step_split(first, run, stepped, report)?;
                self.step_split(second, run, stepped, report)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{tests::{disc, load}, LoadedPipeline};
    use std::cell::Cell;
    use uuid::Uuid;

    /// Encode job `n` (a disc of radius `r`) and queue it.
    fn push(b: &mut StepBatcher<u32>, p: &LoadedPipeline, n: u32, r: f32) {
        let [h, w] = p.manifest.input_size;
        let cond = p.encode(&disc(h, w, r)).unwrap();
        b.push(n, p.initial_latent(Uuid::from_u128(n as u128)), cond.get(0));
    }

    /// Run boundaries and steps until nothing is left; final latents by job.
    fn drain(b: &mut StepBatcher<u32>, p: &LoadedPipeline, limit: usize, mut each: impl FnMut(&mut StepBatcher<u32>, usize)) -> Vec<(u32, Tensor, usize)> {
        let mut out = Vec::new();
        let mut calls = 0;
        while !b.is_empty() {
            assert!(b.boundary(limit, |_| None).is_empty());
            let report = b.step(|x, t, tn, c| p.step(x, t, tn, c)).unwrap();
            calls += 1;
            for r in report.retired {
                match r {
                    Retired::Done(n, latent) => out.push((n, latent, calls)),
                    _ => panic!("only Done expected"),
                }
            }
            each(b, calls);
        }
        out
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn batched_jobs_equal_each_job_run_alone() {
        let p = load("hunyuan-tiny");
        let steps = p.steps();
        let mut together = StepBatcher::new(p.timesteps());
        for (n, r) in [(1, 8.0), (2, 12.0), (3, 15.0)] {
            push(&mut together, &p, n, r);
        }
        let batched = drain(&mut together, &p, 8, |_, _| {});
        assert_eq!(batched.iter().map(|(n, _, calls)| (*n, *calls)).collect::<Vec<_>>(), [(1, steps), (2, steps), (3, steps)]);
        for (n, latent, _) in &batched {
            let mut alone = StepBatcher::new(p.timesteps());
            push(&mut alone, &p, *n, [8.0, 12.0, 15.0][*n as usize - 1]);
            let (_, single, _) = drain(&mut alone, &p, 8, |_, _| {}).remove(0);
            let d = max_diff(latent, &single);
            assert!(d < 1e-4, "job {n}: batched differs from alone by {d}");
        }
        // And the jobs really differ (the test would pass for a constant model otherwise).
        assert!(max_diff(&batched[0].1, &batched[1].1) > 1e-3);
        // Decoding the final latents gives a closed volume with a solid inside.
        let vols = p.decode_volumes(&batched[0].1.unsqueeze(0)).unwrap();
        assert!(vols[0].iter().any(|&v| v > 0.0) && vols[0][0] < 0.0);
    }

    #[test]
    fn a_job_joining_mid_run_finishes_its_own_steps_correctly() {
        let p = load("hunyuan-tiny");
        let steps = p.steps();
        let mut b = StepBatcher::new(p.timesteps());
        push(&mut b, &p, 1, 10.0);
        let joined_after = 3;
        let pp = &p;
        let done = drain(&mut b, &p, 8, |b, calls| {
            if calls == joined_after {
                push(b, pp, 2, 13.0);
                // In the running set with job 1 from the next boundary: mixed timesteps in one call.
            }
        });
        let order: Vec<(u32, usize)> = done.iter().map(|(n, _, c)| (*n, *c)).collect();
        assert_eq!(order, [(1, steps), (2, joined_after + steps)], "each job ran exactly its own steps");
        let mut alone = StepBatcher::new(p.timesteps());
        push(&mut alone, &p, 2, 13.0);
        let (_, single, _) = drain(&mut alone, &p, 8, |_, _| {}).remove(0);
        let d = max_diff(&done[1].1, &single);
        assert!(d < 1e-4, "the late joiner differs from running alone by {d}");
    }

    #[test]
    fn cancel_ends_a_job_at_the_next_step_boundary_and_the_others_go_on() {
        let p = load("hunyuan-tiny");
        let mut b = StepBatcher::new(p.timesteps());
        push(&mut b, &p, 1, 10.0);
        push(&mut b, &p, 2, 12.0);
        let canceled = Cell::new(false);
        let stop = |n: &u32| (*n == 2 && canceled.get()).then_some(Stop::Canceled);
        let mut calls = 0;
        let mut sizes = Vec::new();
        let mut ended = Vec::new();
        while !b.is_empty() {
            for r in b.boundary(4, stop) {
                match r {
                    Retired::Stopped(n, why, done) => {
                        assert_eq!(done, calls, "it did every step before the boundary");
                        ended.push((n, format!("{why:?}"), calls))
                    }
                    _ => unreachable!(),
                }
            }
            if b.is_empty() {
                break;
            }
            let report = b.step(|x, t, tn, c| p.step(x, t, tn, c)).unwrap();
            sizes.push(report.batch);
            calls += 1;
            if calls == 2 {
                canceled.set(true);
            }
            for r in report.retired {
                if let Retired::Done(n, _) = r {
                    ended.push((n, "done".into(), calls));
                }
            }
        }
        assert_eq!(ended, [(2, "Canceled".to_string(), 2), (1, "done".into(), p.steps())]);
        assert_eq!(&sizes[..3], [2, 2, 1], "job 2 left before the third step");
    }

    #[test]
    fn admission_is_bounded_and_in_order_and_waiting_jobs_can_expire() {
        let p = load("hunyuan-tiny");
        let mut b = StepBatcher::new(p.timesteps());
        for n in 1..=4 {
            push(&mut b, &p, n, 10.0);
        }
        assert!(b.boundary(2, |n| (*n == 4).then_some(Stop::Expired)).iter().all(|r| matches!(r, Retired::Stopped(4, Stop::Expired, 0))));
        assert_eq!(b.running().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(b.waiting().copied().collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn a_deadline_passing_mid_sampling_stops_that_job_at_the_next_boundary() {
        let p = load("hunyuan-tiny");
        let mut b = StepBatcher::new(p.timesteps());
        for n in 1..=3 {
            push(&mut b, &p, n, 10.0 + n as f32);
        }
        b.boundary(2, |_| None);
        for _ in 0..2 {
            b.step(|x, t, tn, c| p.step(x, t, tn, c)).unwrap();
        }
        // Job 2 (running, 2 steps done) and job 3 (still waiting) are past their deadline.
        let stopped: Vec<(u32, Stop, usize)> = b
            .boundary(2, |n| (*n >= 2).then_some(Stop::Expired))
            .into_iter()
            .map(|r| match r {
                Retired::Stopped(n, why, done) => (n, why, done),
                _ => panic!("only stops at a boundary"),
            })
            .collect();
        assert_eq!(stopped, [(2, Stop::Expired, 2), (3, Stop::Expired, 0)]);
        assert_eq!(b.running().collect::<Vec<_>>(), [(&1, 2)], "job 1 goes on where it was");
        // Job 1 still ends exactly as it would have alone.
        let done = drain(&mut b, &p, 2, |_, _| {});
        assert_eq!(done.len(), 1);
        let mut alone = StepBatcher::new(p.timesteps());
        push(&mut alone, &p, 1, 11.0);
        let (_, single, _) = drain(&mut alone, &p, 2, |_, _| {}).remove(0);
        assert!(max_diff(&done[0].1, &single) < 1e-4);
    }

    #[test]
    fn a_failing_step_is_bisected_so_only_the_failing_job_fails() {
        let p = load("hunyuan-tiny");
        let mut b = StepBatcher::new(p.timesteps());
        for n in 1..=4 {
            push(&mut b, &p, n, 10.0);
        }
        b.boundary(8, |_| None);
        // Job 3's latent is poisoned: the fake model refuses any batch holding it.
        let poisoned = b.running.iter().find(|e| e.job == 3).unwrap().latent.copy();
        let report = b
            .step(|x, t, tn, c| {
                let has = (0..x.size()[0]).any(|i| max_diff(&x.get(i), &poisoned) == 0.0);
                if has {
                    Err(ModelError::Forward { name: "t".into(), detail: "CUDA out of memory".into(), out_of_memory: true, device_lost: false })
                } else {
                    p.step(x, t, tn, c)
                }
            })
            .unwrap();
        assert!(report.out_of_memory);
        let failed: Vec<u32> = report.retired.iter().filter_map(|r| if let Retired::Failed(n, _) = r { Some(*n) } else { None }).collect();
        assert_eq!(failed, [3]);
        let mut running: Vec<u32> = b.running().map(|(n, done)| { assert_eq!(done, 1); *n }).collect();
        running.sort();
        assert_eq!(running, [1, 2, 4]);
    }
}
