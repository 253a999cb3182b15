//! The device thread's side of pipeline models: encode a batch on
//! arrival, keep each model's running set stepping (one batched step per
//! loop turn, between the other work the thread takes), decode finished
//! jobs over the grid, answer colour queries, and tell the Scheduler when
//! each batch has joined (`Joined`, its slot is free) and when its last
//! job left (`DeviceIdle`), both in the order the batches arrived.
//!
//! Why the order matters: the Scheduler pairs each message with its oldest
//! batch on the device; a batch reported out of order would leave another
//! batch's jobs unaccounted for if the device were lost.

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    sync::{mpsc, Arc},
    thread,
    time::{Duration, Instant},
};

use image::RgbaImage;
use orfeas_wire::{v1::Failure, v1::Stage, ErrorCode};
use tch::{Device, Kind, Tensor};
use uuid::Uuid;

use super::{DeviceLost, DeviceThread, DeviceWork, PreparedBatch, Resident};
use crate::{
    batching::Ceiling,
    metrics,
    model::ModelError,
    pipeline::LoadedPipeline,
    postprocess::{PostprocessMsg, VolumeJob},
    scheduler::SchedulerMsg,
    step_batcher::{Retired, StepBatcher, Stop},
    terminal,
    ticket::Ticket,
};

/// How long Postprocess waits for a colour answer before using the image's colours.
const COLOUR_PATIENCE: Duration = Duration::from_secs(120);
/// Weight of the newest step time in the per-model average (for ETAs).
const STEP_ALPHA: f64 = 0.2;

/// A job in a running set.
pub(super) struct StepJob {
    ticket: Ticket,
    image: RgbaImage,
    /// The batch it came in.
    seq: u64,
}

/// One batch the device thread has taken, until its `DeviceIdle`.
struct Pending {
    seq: u64,
    /// Its jobs not yet in a running set.
    waiting: usize,
    /// Its jobs not yet answered (Volume or Fail).
    remaining: usize,
    /// `Joined` sent.
    joined: bool,
}

/// A colour query from Postprocess: one job's decoder input (its prepared features or final latent; CPU, f32) and
/// the mesh's vertices.
pub(crate) struct ColourRequest {
    model: String,
    latent: Vec<f32>,
    shape: Vec<i64>,
    points: Vec<[f32; 3]>,
    reply: mpsc::Sender<Result<Vec<[f32; 3]>, String>>,
}

/// Running sets and batch bookkeeping.
#[derive(Default)]
pub(super) struct Stepping {
    batchers: BTreeMap<String, StepBatcher<StepJob>>,
    pending: VecDeque<Pending>,
    next_seq: u64,
    canceled: HashSet<Uuid>,
    /// Moving average of one step's time per model, seconds.
    step_seconds: BTreeMap<String, f64>,
}

impl Stepping {
    /// A pipeline has jobs running or waiting to join.
    pub(super) fn is_busy(&self) -> bool {
        self.batchers.values().any(|b| !b.is_empty())
    }

    /// Stop this job at its next step boundary (if it is here).
    pub(super) fn cancel(&mut self, job_id: Uuid) {
        self.canceled.insert(job_id);
    }

    /// A batch arrived: its sequence number (no jobs yet).
    pub(super) fn open_batch(&mut self) -> u64 {
        self.next_seq += 1;
        self.pending.push_back(Pending { seq: self.next_seq, waiting: 0, remaining: 0, joined: false });
        self.next_seq
    }

    fn add_jobs(&mut self, seq: u64, n: usize) {
        if let Some(p) = self.pending.iter_mut().find(|p| p.seq == seq) {
            p.waiting += n;
            p.remaining += n;
        }
    }

    fn retire(&mut self, seq: u64) {
        if let Some(p) = self.pending.iter_mut().find(|p| p.seq == seq) {
            p.remaining = p.remaining.saturating_sub(1);
        }
    }

    /// Recount the waiting jobs of every batch (`extra`: a batcher taken
    /// out of the map while it steps).
    fn recount(&mut self, extra: Option<&StepBatcher<StepJob>>) {
        for p in &mut self.pending {
            p.waiting = 0;
        }
        for job in self.batchers.values().chain(extra).flat_map(|b| b.waiting()) {
            if let Some(p) = self.pending.iter_mut().find(|p| p.seq == job.seq) {
                p.waiting += 1;
            }
        }
    }
}

impl DeviceThread {
    /// Encode a pipeline batch; a feed-forward pipeline decodes it at once,
    /// a sampling one queues its jobs for the running set (or, with step
    /// batching off or a retried job in it, samples it to the end now).
    pub(super) fn run_pipeline(&mut self, batch: PreparedBatch, seq: u64) -> Result<(), DeviceLost> {
        let name = batch.model.clone();
        let Some(Resident::Pipeline(p)) = self.models.get(&name) else { return Ok(()) };
        let _spans: Vec<tracing::Span> = batch.items.iter().map(|(t, _)| t.span("inference")).collect();
        if p.manifest.input_size != batch.input_size {
            for (ticket, _) in batch.items {
                self.fail(ticket, Failure::new(ErrorCode::Unavailable, format!("model {name:?} was reloaded with another input size")));
            }
            return Ok(());
        }
        if !self.simulated_latency.is_zero() {
            thread::sleep(self.simulated_latency);
        }
        let limit = self.batch_limit(&self.models[&name], self.memory.free_bytes());
        let [h, w] = batch.input_size;
        let n = batch.items.len();
        let input = Tensor::from_slice(&batch.input).view([n as i64, 4, h as i64, w as i64]);
        let now = crate::now_ms();
        for (ticket, _) in &batch.items {
            self.events.progress(ticket, Stage::Inference);
            metrics::QUEUE_WAIT
                .with_label_values(&[ticket.job.lane.as_str()])
                .observe(now.saturating_sub(ticket.job.admitted_at_ms) as f64 / 1000.0);
        }
        let alone = batch.items.iter().any(|(t, _)| crate::lanes::retried(t));
        let started = Instant::now();
        let mut encoded = Vec::with_capacity(n);
        let mut items = batch.items.into_iter();
        let mut start = 0;
        while start < n {
            let len = limit.min(n - start);
            let chunk: Vec<(Ticket, RgbaImage)> = items.by_ref().take(len).collect();
            encoded.extend(self.encode_split(p, chunk, input.narrow(0, start as i64, len as i64))?);
            start += len;
        }
        metrics::STAGE_SECONDS.with_label_values(&["inference"]).observe(started.elapsed().as_secs_f64());
        if p.steps() == 0 {
            // Feed-forward (TripoSR-like): encode's output is the latent.
            let done: Vec<(StepJob, Tensor)> = encoded.into_iter().map(|(ticket, image, latent)| (StepJob { ticket, image, seq }, latent)).collect();
            return self.decode_and_send(&name, done, limit);
        }
        let mut queued = Vec::with_capacity(encoded.len());
        for (ticket, image, cond) in encoded {
            match p.start_latent(ticket.job.job_id) {
                Ok(latent) => queued.push((StepJob { ticket, image, seq }, latent, cond)),
                Err(e) => self.fail(ticket, Failure::new(ErrorCode::InferenceFailed, e.to_string())),
            }
        }
        let timesteps = p.timesteps().to_vec();
        self.stepping.add_jobs(seq, queued.len());
        let batcher = self.stepping.batchers.entry(name.clone()).or_insert_with(|| StepBatcher::new(&timesteps));
        for (job, latent, cond) in queued {
            batcher.push(job, latent, cond);
        }
        if alone || !self.step_batching {
            // A retried job may bring the device down: nothing joins it. And
            // whole-request batching (the comparison) samples each batch alone.
            while self.stepping.batchers.get(&name).is_some_and(|b| !b.is_empty()) {
                self.step_model(&name)?;
            }
        }
        Ok(())
    }

    /// Encode `items`; a failing chunk is encoded item by item so only the
    /// job that fails alone fails.
    fn encode_split(&self, p: &LoadedPipeline, items: Vec<(Ticket, RgbaImage)>, input: Tensor) -> Result<Vec<(Ticket, RgbaImage, Tensor)>, DeviceLost> {
        match p.encode(&input) {
            Ok(out) => Ok(items.into_iter().enumerate().map(|(i, (t, img))| (t, img, out.get(i as i64))).collect()),
            Err(ModelError::Forward { device_lost: true, detail, .. }) => Err(DeviceLost(detail)),
            Err(e) if items.len() == 1 => {
                let (ticket, _) = items.into_iter().next().expect("one item");
                self.fail(ticket, failure_of(&e, &self.device.id));
                Ok(Vec::new())
            }
            Err(_) => {
                let mut out = Vec::new();
                for (i, item) in items.into_iter().enumerate() {
                    out.extend(self.encode_split(p, vec![item], input.narrow(0, i as i64, 1))?);
                }
                Ok(out)
            }
        }
    }

    /// One step of every pipeline with jobs.
    pub(super) fn step_all(&mut self) -> Result<(), DeviceLost> {
        let names: Vec<String> = self.stepping.batchers.iter().filter(|(_, b)| !b.is_empty()).map(|(n, _)| n.clone()).collect();
        for name in names {
            self.step_model(&name)?;
        }
        Ok(())
    }

    /// A step boundary of `name`'s running set and one batched step.
    fn step_model(&mut self, name: &str) -> Result<(), DeviceLost> {
        let Some(mut batcher) = self.stepping.batchers.remove(name) else { return Ok(()) };
        let result = self.step_with(name, &mut batcher);
        self.stepping.batchers.insert(name.to_string(), batcher);
        self.flush(None);
        result
    }

    fn step_with(&mut self, name: &str, batcher: &mut StepBatcher<StepJob>) -> Result<(), DeviceLost> {
        let Some(model) = self.models.get(name) else {
            // Cannot happen (a reload lets running sets finish first); answer the jobs anyway.
            for r in batcher.boundary(usize::MAX, |_| Some(Stop::Canceled)) {
                let (Retired::Stopped(job, ..) | Retired::Failed(job, _) | Retired::Done(job, _)) = r;
                self.stepping.retire(job.seq);
                self.fail(job.ticket, Failure::new(ErrorCode::Unavailable, format!("model {name:?} is no longer loaded")));
            }
            return Ok(());
        };
        let limit = self.batch_limit(model, self.memory.free_bytes());
        let now = crate::now_ms();
        let canceled = &self.stepping.canceled;
        let stopped = batcher.boundary(limit, |job| {
            let id = job.ticket.job.job_id;
            if canceled.contains(&id) {
                Some(Stop::Canceled)
            } else if job.ticket.job.params.deadline_ms.is_some_and(|d| d < now) {
                Some(Stop::Expired)
            } else {
                None
            }
        });
        let steps = batcher.steps();
        for r in stopped {
            if let Retired::Stopped(job, why, done) = r {
                let id = job.ticket.job.job_id;
                let deadline = job.ticket.job.params.deadline_ms.unwrap_or_default();
                let (_, failure) = match (why, done) {
                    (Stop::Canceled, _) => terminal::ending(ErrorCode::Canceled, id, "canceled by its agent while sampling (stopped at a step boundary)"),
                    // The same code and wording as the Scheduler's check before a job starts.
                    (Stop::Expired, 0) => terminal::ending(ErrorCode::DeadlineExceeded, id, format!("not started by its deadline {deadline} (ms since the epoch)")),
                    (Stop::Expired, done) => terminal::ending(
                        ErrorCode::DeadlineExceeded,
                        id,
                        format!("deadline {deadline} (ms since the epoch) passed while sampling: stopped at a step boundary after {done} of {steps} steps"),
                    ),
                };
                tracing::info!(job_id = %id, reason = ?why, done, steps, "pipeline job stopped at a step boundary");
                self.stepping.canceled.remove(&id);
                self.stepping.retire(job.seq);
                self.fail(job.ticket, failure);
            }
        }
        // Joined before the step, so the Scheduler prepares the next batch meanwhile.
        self.flush(Some(batcher));
        let batch = batcher.running().count();
        if batch == 0 {
            return Ok(());
        }
        if !self.simulated_step_latency.is_zero() {
            thread::sleep(self.simulated_step_latency);
        }
        let started = Instant::now();
        let report = {
            let Some(Resident::Pipeline(p)) = self.models.get(name) else { return Ok(()) };
            batcher.step(|x, t, t_next, cond| p.step(x, t, t_next, cond))
        };
        let report = report.map_err(|e| {
            metrics::DEVICE_LOST.with_label_values(&[name, &self.device.id]).inc();
            DeviceLost(e.to_string())
        })?;
        let seconds = started.elapsed().as_secs_f64();
        let avg = self.stepping.step_seconds.entry(name.to_string()).or_insert(seconds);
        *avg += STEP_ALPHA * (seconds - *avg);
        let step_ms = *avg * 1000.0;
        metrics::STAGE_SECONDS.with_label_values(&["inference"]).observe(seconds);
        metrics::BATCH_SIZE.with_label_values(&[name]).observe(report.batch as f64);
        let per_item = self.models.get(name).map_or(0, Resident::per_item_bytes);
        let ceiling = self.ceilings.entry(name.to_string()).or_insert_with(|| Ceiling::new(report.batch));
        if report.out_of_memory {
            metrics::DEVICE_OOM.with_label_values(&[name, &self.device.id]).inc();
            ceiling.on_out_of_memory(report.batch);
        } else {
            ceiling.on_success(report.batch);
            self.cached_bytes = self.cached_bytes.max(report.batch as u64 * per_item);
        }
        let steps = batcher.steps().max(1);
        for (job, done) in batcher.running() {
            let left_ms = ((steps - done) as f64 * step_ms).round() as u64;
            self.events.progress_within(&job.ticket, Stage::Inference, done as f64 / steps as f64, left_ms);
        }
        let mut finished = Vec::new();
        for r in report.retired {
            match r {
                Retired::Done(job, latent) => finished.push((job, latent)),
                Retired::Failed(job, e) => {
                    self.stepping.retire(job.seq);
                    self.fail(job.ticket, failure_of(&e, &self.device.id));
                }
                Retired::Stopped(job, ..) => {
                    self.stepping.retire(job.seq);
                    self.fail(job.ticket, Failure::new(ErrorCode::Canceled, "stopped"));
                }
            }
        }
        let limit = self.models.get(name).map_or(1, |m| self.batch_limit(m, self.memory.free_bytes()));
        self.decode_and_send(name, finished, limit)
    }

    /// Decode finished jobs over the grid (chunks of `limit` jobs; a
    /// failing chunk job by job) and hand each volume to Postprocess.
    fn decode_and_send(&mut self, name: &str, mut done: Vec<(StepJob, Tensor)>, limit: usize) -> Result<(), DeviceLost> {
        while !done.is_empty() {
            let rest = done.split_off(limit.max(1).min(done.len()));
            let chunk = std::mem::replace(&mut done, rest);
            self.decode_chunk(name, chunk)?;
        }
        Ok(())
    }

    fn decode_chunk(&mut self, name: &str, chunk: Vec<(StepJob, Tensor)>) -> Result<(), DeviceLost> {
        let Some(Resident::Pipeline(p)) = self.models.get(name) else { return Ok(()) };
        let latents = Tensor::stack(&chunk.iter().map(|(_, l)| l.shallow_clone()).collect::<Vec<_>>(), 0);
        // Prepared once for all of the grid's chunks (and for colour later).
        match p.prepare(&latents).and_then(|features| Ok((p.decode_prepared(&features)?, features))) {
            Ok((volumes, features)) => {
                let manifest = Arc::new(p.manifest.clone());
                let colour = p.has_colour();
                for (i, ((job, _), data)) in chunk.into_iter().zip(volumes).enumerate() {
                    let colour = if colour { self.colour_query(name, &features.get(i as i64)) } else { None };
                    self.stepping.retire(job.seq);
                    let volume = VolumeJob { ticket: job.ticket, data, manifest: manifest.clone(), image: job.image, colour };
                    match self.roster.postprocess() {
                        Some(post) => {
                            let _ = post.cast(PostprocessMsg::Volume(Box::new(volume)));
                        }
                        None => tracing::error!("postprocess is not running; job returns to the queue after ack_wait"),
                    }
                }
                Ok(())
            }
            Err(ModelError::Forward { device_lost: true, detail, .. }) => Err(DeviceLost(detail)),
            Err(e) if chunk.len() == 1 => {
                let (job, _) = chunk.into_iter().next().expect("one job");
                self.stepping.retire(job.seq);
                self.fail(job.ticket, failure_of(&e, &self.device.id));
                Ok(())
            }
            Err(_) => {
                for one in chunk {
                    self.decode_chunk(name, vec![one])?;
                }
                Ok(())
            }
        }
    }

    /// A closure Postprocess calls with the final mesh's vertices; the
    /// question comes back to this thread (between steps) as
    /// `DeviceWork::Colour`. `latent`: the job's decoder input (prepared).
    fn colour_query(&self, name: &str, latent: &Tensor) -> Option<crate::postprocess::ColourQuery> {
        let work = self.work.upgrade()?;
        let work: mpsc::Sender<DeviceWork> = (*work).clone();
        let cpu = latent.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let shape = cpu.size();
        let mut flat = vec![0f32; cpu.numel()];
        let len = flat.len();
        cpu.copy_data(&mut flat, len);
        let (model, latent) = (name.to_string(), Arc::new(flat));
        let work = std::sync::Mutex::new(work);
        Some(Arc::new(move |points: Vec<[f32; 3]>| {
            let (reply, answer) = mpsc::channel();
            let request = ColourRequest { model: model.clone(), latent: latent.to_vec(), shape: shape.clone(), points, reply };
            work.lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(DeviceWork::Colour(request))
                .map_err(|_| "the device thread is gone".to_string())?;
            answer.recv_timeout(COLOUR_PATIENCE).map_err(|e| format!("no colour answer: {e}"))?
        }))
    }

    /// Answer a colour query.
    pub(super) fn colour(&mut self, request: ColourRequest) {
        let answer = match self.models.get(&request.model) {
            Some(Resident::Pipeline(p)) => {
                let latent = Tensor::from_slice(&request.latent).view(request.shape.as_slice());
                match p.colour_at(&latent, &request.points) {
                    Ok(Some(rgb)) => Ok(rgb),
                    Ok(None) => Err(format!("model {:?} has no colour stage", request.model)),
                    Err(e) => Err(e.to_string()),
                }
            }
            _ => Err(format!("model {:?} is no longer loaded", request.model)),
        };
        let _ = request.reply.send(answer);
    }

    /// Tell the Scheduler, in arrival order, which batches have joined
    /// (none of their jobs still waiting) and which are done (none left);
    /// each `DeviceIdle` follows fresh `BatchLimits`. `extra`: a batcher
    /// out of the map while it steps.
    pub(super) fn flush(&mut self, extra: Option<&StepBatcher<StepJob>>) {
        self.stepping.recount(extra);
        let scheduler = self.roster.scheduler();
        let mut limits_sent = false;
        while self.stepping.pending.front().is_some_and(|p| p.waiting == 0 && p.remaining == 0) {
            self.stepping.pending.pop_front();
            if !limits_sent {
                self.report_limits();
                limits_sent = true;
            }
            if let Some(s) = &scheduler {
                let _ = s.cast(SchedulerMsg::DeviceIdle(self.device.id.clone()));
            }
        }
        for p in self.stepping.pending.iter_mut() {
            if p.joined {
                continue;
            }
            if p.waiting > 0 {
                break;
            }
            p.joined = true;
            if let Some(s) = &scheduler {
                let _ = s.cast(SchedulerMsg::Joined(self.device.id.clone()));
            }
        }
        if self.stepping.pending.is_empty() {
            // Cancels for jobs that never reached a running set here.
            self.stepping.canceled.clear();
        }
    }
}

/// The failure of a job whose stage failed alone.
fn failure_of(e: &ModelError, device: &str) -> Failure {
    match e {
        ModelError::Forward { out_of_memory: true, detail, .. } => {
            Failure::new(ErrorCode::GpuOom, format!("{device} ran out of memory for this job alone: {detail}"))
        }
        other => Failure::new(ErrorCode::InferenceFailed, other.to_string()),
    }
}
