//! GpuWorker: drives one device.
//!
//! - Consumes: `GpuWorkerMsg::Run(batch)` from the Scheduler — compatible
//!   tickets (same model) to run as one forward pass; `GpuWorkerMsg::Reload`
//!   from the operator endpoint (`POST /admin/models/reload`).
//! - Publishes: `PostprocessMsg::Volume` per job (volumes stay in-process),
//!   `PostprocessMsg::Fail` for jobs whose image is unusable or that do not
//!   fit on the device even alone (`gpu_oom`, retryable);
//!   `SchedulerMsg::BatchLimits` (the batch size each model may have next,
//!   from the memory free right now) and then `SchedulerMsg::DeviceIdle`
//!   after every batch; `preprocessing` and `inference` progress events.
//! - Images submitted by reference are fetched first (`inputs.rs`: at most
//!   `size` + 1 bytes, size and sha256 checked before any decode); a job
//!   whose bytes cannot be had fails (`input_missing`, `input_mismatch`) or
//!   is retried (`unavailable`) through Postprocess.
//! - State: the channel to its device thread and the manifests of the
//!   loaded models. Images are decoded and resized on tokio's blocking pool
//!   (all cores, straight into the batch buffer), so the device thread only
//!   runs forward passes. The thread owns the loaded models (`CModule`,
//!   resident for the worker's life), the per-model batch ceilings that
//!   out-of-memory errors lower, and the memory probe read before each batch.
//! - Pipeline models (`pipeline.toml`, [`crate::pipeline`]) are served by
//!   step-level continuous batching ([`crate::step_batcher`], driven in
//!   `gpu_worker/stepping.rs`): a batch is encoded on arrival and its jobs
//!   join the model's running set at the next step boundary, as far as
//!   the memory-bounded batch limit allows; once a batch has joined the
//!   worker says `Joined`, so the Scheduler sends more while earlier jobs
//!   still sample. Between two steps the thread takes whatever arrived
//!   (batches of any model, cancels, colour queries), so single-call
//!   models keep running beside a sampling pipeline. Each batch still gets
//!   exactly one `DeviceIdle`, in the order sent, once all its jobs left
//!   (every job one `Volume` or `Fail`). `GpuWorkerMsg::Cancel` stops a
//!   job at its next step boundary, and so does a passed `deadline_ms`
//!   (`deadline_exceeded`; a job that had not joined never starts). Per-step
//!   progress with ETA.
//! - Restart policy: models are loaded and warmed (B = 1 and 2) in
//!   `pre_start`, so a model that fails to load or breaks its contract fails
//!   the spawn (reported at start, not at the first job); the device counts
//!   as cold for readiness until then. If the device thread dies, the
//!   worker fails; the supervisor restarts it (reloading the models) and the
//!   Scheduler hands the lost batch back to JetStream. A reload loads the new
//!   models next to the old ones and swaps them only when all loaded and
//!   warmed; on failure the old ones stay. Batches sent meanwhile queue
//!   behind the reload on the device thread: no job is lost.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{mpsc, Arc, RwLock},
    thread,
    time::{Duration, Instant},
};

use image::RgbaImage;
use orfeas_wire::{
    v1::{Failure, Stage},
    ErrorCode,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tch::{Device, Kind, Tensor};
use tokio::sync::oneshot;

use crate::{
    batching::{self, Ceiling, MemoryBudget},
    device::{ComputeDevice, MemoryProbe},
    events::EventSink,
    metrics,
    model::{LoadTimes, LoadedModel, Manifest, ModelError},
    pipeline::LoadedPipeline,
    postprocess::{PostprocessMsg, VolumeJob},
    preprocess,
    roster::Roster,
    scheduler::SchedulerMsg,
    settings::NodeSettings,
    ticket::Ticket,
    warmth::Warmth,
};

/// What loading one model on one device took.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelLoadReport {
    /// The model.
    pub model: String,
    /// Its version.
    pub version: String,
    /// The device.
    pub device: String,
    /// Reading the file onto the device, seconds.
    pub load_seconds: f64,
    /// Warm-up forward passes, seconds.
    pub warmup_seconds: f64,
    /// Memory one batch item costs on this device, bytes.
    pub per_item_bytes: u64,
}

/// Messages to a GpuWorker.
pub enum GpuWorkerMsg {
    /// Run these tickets (same model) as one batch.
    Run(Vec<Ticket>),
    /// Load these models, warm them and swap them in for the current ones.
    Reload(
        Vec<(Manifest, PathBuf)>,
        RpcReplyPort<Result<Vec<ModelLoadReport>, String>>,
    ),
    /// The device thread is gone (found by a preprocessing task, or said
    /// by the thread itself after a device-fatal error).
    DeviceGone,
    /// Its agent canceled this job: a pipeline model stops it at its next
    /// step boundary (a single-call model has no boundary; nothing happens).
    Cancel(uuid::Uuid),
}

/// The worker of one device (configuration only; see [`GpuWorkerState`]).
pub struct GpuWorker {
    /// The device.
    pub device: ComputeDevice,
    /// Node settings.
    pub settings: Arc<NodeSettings>,
    /// Models to load: manifest and TorchScript path.
    pub models: Vec<(Manifest, PathBuf)>,
    /// Sibling actor names.
    pub roster: Roster,
    /// Event publisher.
    pub events: EventSink,
    /// Readiness: this device is warm once its models ran.
    pub warmth: Warmth,
    /// Where images submitted by reference are fetched from (`None` in unit tests).
    pub inputs: Option<crate::inputs::Inputs>,
    /// How preprocessing separates objects from backgrounds (`learned_matte.rs`).
    pub matting: crate::learned_matte::Matting,
}

mod stepping;

/// Mutable state: the device thread's inbox and the current manifests.
pub struct GpuWorkerState {
    /// The only long-lived sender: when the state goes, the thread's inbox
    /// closes (the thread keeps just a `Weak` for colour queries).
    work: Arc<mpsc::Sender<DeviceWork>>,
    manifests: Arc<RwLock<HashMap<String, Manifest>>>,
    thread: thread::JoinHandle<()>,
    /// Fires once the batch sent last has reached the device thread.
    last_sent: Option<oneshot::Receiver<()>>,
}

/// Work for the device thread.
enum DeviceWork {
    Forward(PreparedBatch),
    Reload(
        Vec<(Manifest, PathBuf)>,
        oneshot::Sender<Result<Vec<ModelLoadReport>, String>>,
    ),
    Cancel(uuid::Uuid),
    /// A pipeline's colour stage at mesh vertices (asked by Postprocess).
    Colour(stepping::ColourRequest),
}

/// A batch whose images are decoded and laid out as the model's input.
struct PreparedBatch {
    model: String,
    input_size: [usize; 2],
    items: Vec<(Ticket, RgbaImage)>,
    /// `[n, 4, H, W]` floats, item after item.
    input: Vec<f32>,
    /// `[n, P]` per-job model parameters, or `None` for a model without.
    params: Option<(Vec<f32>, usize)>,
}

impl Actor for GpuWorker {
    type Msg = GpuWorkerMsg;
    type State = GpuWorkerState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        self.warmth.set(&self.device.id, false);
        let (work, inbox) = mpsc::channel::<DeviceWork>();
        let work = Arc::new(work);
        let (loaded_tx, loaded_rx) = oneshot::channel();
        let manifests = Arc::new(RwLock::new(HashMap::new()));
        if self.settings.cpu_threads > 0 {
            tch::set_num_threads(self.settings.cpu_threads as i32);
        }
        let mut device = DeviceThread {
            device: self.device.clone(),
            memory: MemoryProbe::for_device(&self.device),
            roster: self.roster.clone(),
            events: self.events.clone(),
            manifests: manifests.clone(),
            warmth: self.warmth.clone(),
            max_batch: self.settings.max_batch.max(1),
            memory_safety: self.settings.memory_safety,
            simulated_latency: self.settings.simulated_latency,
            simulated_step_latency: self.settings.simulated_step_latency,
            step_batching: self.settings.step_batching,
            models: HashMap::new(),
            ceilings: HashMap::new(),
            cached_bytes: 0,
            work: Arc::downgrade(&work),
            stepping: stepping::Stepping::default(),
        };
        let models = self.models.clone();
        let worker = myself.clone();
        let thread = thread::Builder::new()
            .name(format!("device-{}", self.device.id))
            .spawn(move || {
                match device.load_all(models) {
                    Ok((loaded, reports)) => {
                        device.swap(loaded);
                        let _ = loaded_tx.send(Ok(reports));
                    }
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                        return;
                    }
                }
                device.report_limits();
                loop {
                    // While a pipeline samples, take what arrived without
                    // waiting, then run one step; otherwise wait for work.
                    let work = if device.stepping.is_busy() {
                        match inbox.try_recv() {
                            Ok(work) => Some(work),
                            Err(mpsc::TryRecvError::Empty) => None,
                            Err(mpsc::TryRecvError::Disconnected) => return,
                        }
                    } else {
                        match inbox.recv() {
                            Ok(work) => Some(work),
                            Err(_) => return,
                        }
                    };
                    let outcome = match work {
                        None => device.step_all(),
                        Some(DeviceWork::Forward(batch)) => device.run(batch),
                        Some(DeviceWork::Cancel(job_id)) => {
                            device.stepping.cancel(job_id);
                            Ok(())
                        }
                        Some(DeviceWork::Colour(request)) => {
                            device.colour(request);
                            Ok(())
                        }
                        Some(DeviceWork::Reload(models, reply)) => {
                            // Jobs sampling on the old models finish on them first.
                            let mut drained = Ok(());
                            while drained.is_ok() && device.stepping.is_busy() {
                                drained = device.step_all();
                            }
                            if drained.is_ok() {
                                device.reload(models, reply);
                            }
                            drained
                        }
                    };
                    if let Err(DeviceLost(detail)) = outcome {
                        // The context is unusable: end the thread, so the
                        // worker fails and is restarted with a fresh one; its
                        // unanswered jobs go back to JetStream (the Scheduler
                        // hands them back), where a retried job runs alone.
                        tracing::error!(device = %device.device.id, error = %detail, "device lost; restarting its worker");
                        device.warmth.set(&device.device.id, false);
                        let _ = worker.cast(GpuWorkerMsg::DeviceGone);
                        return;
                    }
                }
            })?;

        loaded_rx
            .await
            .map_err(|_| "device thread ended while loading models")??;
        self.warmth.set(&self.device.id, true);
        Ok(GpuWorkerState {
            work,
            manifests,
            thread,
            last_sent: None,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.warmth.set(&self.device.id, false);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.thread.is_finished() {
            return Err(format!("device thread of {} is gone", self.device.id).into());
        }
        match message {
            GpuWorkerMsg::Run(batch) => {
                let Some(model) = batch.first().map(|t| t.job.model.clone()) else {
                    return Ok(());
                };
                let manifest = state
                    .manifests
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&model)
                    .cloned();
                let work = Arc::clone(&state.work);
                let (roster, events, max_side) = (
                    self.roster.clone(),
                    self.events.clone(),
                    self.settings.max_image_side,
                );
                let device = self.device.id.clone();
                let inputs = self.inputs.clone();
                let matting = self.matting.clone();
                // Batches are prepared side by side but reach the device in
                // the order they came: the Scheduler pairs each `DeviceIdle`
                // with its oldest batch on this device, so a batch that
                // overtook another would leave the other's jobs unaccounted
                // for when the device is lost.
                let (sent_tx, sent_rx) = oneshot::channel();
                let turn = state.last_sent.replace(sent_rx);
                tokio::spawn(async move {
                    // Images by reference: fetched and checked before any decode.
                    let batch = crate::inputs::Inputs::resolve(inputs.as_ref(), batch, |ticket, failure| {
                        if let Some(post) = roster.postprocess() {
                            let _ = post.cast(PostprocessMsg::Fail { ticket, failure });
                        }
                    })
                    .await;
                    let prepared = tokio::task::spawn_blocking(move || {
                        prepare_batch(batch, manifest, &model, max_side, &matting, &roster, &events, &device)
                    })
                    .await;
                    if let Some(turn) = turn {
                        // Err: the batch before ended without sending; go on.
                        let _ = turn.await;
                    }
                    let sent = match prepared {
                        Ok(prepared) => work.send(DeviceWork::Forward(prepared)).is_ok(),
                        Err(e) => {
                            tracing::error!(error = %e, "preprocessing task panicked");
                            false
                        }
                    };
                    let _ = sent_tx.send(());
                    if !sent {
                        let _ = myself.cast(GpuWorkerMsg::DeviceGone);
                    }
                });
            }
            GpuWorkerMsg::Reload(models, reply) => {
                let (tx, rx) = oneshot::channel();
                state
                    .work
                    .send(DeviceWork::Reload(models, tx))
                    .map_err(|_| format!("device thread of {} is gone", self.device.id))?;
                let device = self.device.id.clone();
                tokio::spawn(async move {
                    let result = rx.await.unwrap_or_else(|_| {
                        Err(format!("device thread of {device} ended during the reload"))
                    });
                    let _ = reply.send(result);
                });
            }
            GpuWorkerMsg::DeviceGone => {
                return Err(format!("device thread of {} is gone", self.device.id).into())
            }
            GpuWorkerMsg::Cancel(job_id) => {
                // A closed inbox shows up at the next Run.
                let _ = state.work.send(DeviceWork::Cancel(job_id));
            }
        }
        Ok(())
    }
}

/// Decode every image of `batch` (in parallel, each straight into its slot
/// of the batch buffer) and fill in the per-job parameters; jobs that cannot
/// run fail here. Runs on the blocking pool.
fn prepare_batch(
    batch: Vec<Ticket>,
    manifest: Option<Manifest>,
    model: &str,
    max_side: u32,
    matting: &crate::learned_matte::Matting,
    roster: &Roster,
    events: &EventSink,
    device: &str,
) -> PreparedBatch {
    let fail = |ticket: Ticket, failure: Failure| {
        if let Some(post) = roster.postprocess() {
            let _ = post.cast(PostprocessMsg::Fail { ticket, failure });
        }
    };
    let Some(manifest) = manifest else {
        for ticket in batch {
            fail(
                ticket,
                Failure::new(
                    ErrorCode::UnknownModel,
                    format!("model {model:?} is not loaded on {device}"),
                ),
            );
        }
        return PreparedBatch {
            model: model.to_string(),
            input_size: [0, 0],
            items: vec![],
            input: vec![],
            params: None,
        };
    };
    let started = Instant::now();
    let [h, w] = manifest.input_size;
    let slot = 4 * h * w;
    let mut params = Vec::new();
    let mut tickets = Vec::with_capacity(batch.len());
    for ticket in batch {
        match manifest.param_row(&ticket.job.params.model_params) {
            Ok(row) => {
                params.extend(row);
                tickets.push(ticket);
            }
            Err(e) => fail(ticket, Failure::new(ErrorCode::Invalid, e)),
        }
    }
    let mut input = vec![0f32; tickets.len() * slot];
    let results = decode_parallel(&tickets, &mut input, slot, |ticket, out| {
        events.progress(ticket, Stage::Preprocessing);
        let (media_type, data) = crate::inputs::inline(&ticket.job.image).map_err(|e| e.failure())?;
        preprocess::prepare_into(
            data,
            media_type,
            max_side,
            manifest.input_size,
            manifest.preprocess,
            matting,
            out,
        )
        .map_err(|e| Failure::new(e.code(), e.to_string()))
    });
    // Close the gaps failed images leave, in place.
    let columns = manifest.params.len();
    let mut items = Vec::with_capacity(tickets.len());
    let mut kept_params = Vec::with_capacity(params.len());
    for (i, (ticket, result)) in tickets.into_iter().zip(results).enumerate() {
        match result {
            Ok(image) => {
                let k = items.len();
                if k != i {
                    input.copy_within(i * slot..(i + 1) * slot, k * slot);
                }
                kept_params.extend_from_slice(&params[i * columns..(i + 1) * columns]);
                items.push((ticket, image));
            }
            Err(failure) => fail(ticket, failure),
        }
    }
    input.truncate(items.len() * slot);
    metrics::STAGE_SECONDS
        .with_label_values(&["preprocessing"])
        .observe(started.elapsed().as_secs_f64());
    PreparedBatch {
        model: manifest.name.clone(),
        input_size: manifest.input_size,
        items,
        input,
        params: (columns > 0).then_some((kept_params, columns)),
    }
}

/// Run `decode` for every ticket on up to one thread per core, each writing
/// into its own `slot`-sized chunk of `buffer`; results in ticket order.
fn decode_parallel<T, E, F>(
    tickets: &[Ticket],
    buffer: &mut [f32],
    slot: usize,
    decode: F,
) -> Vec<Result<T, E>>
where
    T: Send,
    E: Send,
    F: Fn(&Ticket, &mut [f32]) -> Result<T, E> + Sync,
{
    let threads = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(tickets.len())
        .max(1);
    let mut work: Vec<(&Ticket, &mut [f32])> =
        tickets.iter().zip(buffer.chunks_mut(slot.max(1))).collect();
    if threads == 1 {
        return work.into_iter().map(|(t, out)| decode(t, out)).collect();
    }
    let per_thread = work.len().div_ceil(threads);
    let mut groups = Vec::new();
    while !work.is_empty() {
        let rest = work.split_off(per_thread.min(work.len()));
        groups.push(std::mem::replace(&mut work, rest));
    }
    let decode = &decode;
    thread::scope(|scope| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|group| {
                scope.spawn(move || {
                    group
                        .into_iter()
                        .map(|(t, out)| decode(t, out))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("preprocessing thread panicked"))
            .collect()
    })
}

/// A forward pass failed in a way that leaves the device unusable.
struct DeviceLost(String);

/// The device thread: owns the models and runs forward passes only.
struct DeviceThread {
    device: ComputeDevice,
    memory: MemoryProbe,
    roster: Roster,
    events: EventSink,
    manifests: Arc<RwLock<HashMap<String, Manifest>>>,
    warmth: Warmth,
    max_batch: usize,
    memory_safety: f64,
    simulated_latency: Duration,
    simulated_step_latency: Duration,
    step_batching: bool,
    models: HashMap<String, Resident>,
    ceilings: HashMap<String, Ceiling>,
    /// Memory the allocator holds from earlier batches (largest batch so far × its per-item cost).
    cached_bytes: u64,
    /// The worker's inbox sender, for colour queries that Postprocess
    /// sends back here (weak: the thread must not keep its own inbox open).
    work: std::sync::Weak<mpsc::Sender<DeviceWork>>,
    /// Pipeline models' running sets and the batches' Joined / DeviceIdle bookkeeping.
    stepping: stepping::Stepping,
}

/// A model resident on the device: one TorchScript call, or a pipeline.
enum Resident {
    Single(LoadedModel),
    Pipeline(LoadedPipeline),
}

impl Resident {
    fn manifest(&self) -> &Manifest {
        match self {
            Self::Single(m) => &m.manifest,
            Self::Pipeline(p) => &p.manifest,
        }
    }

    fn per_item_bytes(&self) -> u64 {
        match self {
            Self::Single(m) => m.per_item_bytes,
            Self::Pipeline(p) => p.per_item_bytes,
        }
    }

    fn times(&self) -> &LoadTimes {
        match self {
            Self::Single(m) => &m.times,
            Self::Pipeline(p) => &p.times,
        }
    }
}

impl DeviceThread {
    /// Load and warm every model; all or nothing.
    fn load_all(
        &self,
        models: Vec<(Manifest, PathBuf)>,
    ) -> Result<(HashMap<String, Resident>, Vec<ModelLoadReport>), ModelError> {
        let mut loaded = HashMap::new();
        let mut reports = Vec::new();
        for (manifest, path) in models {
            let model = if crate::pipeline::is_pipeline(&path) {
                let dir = path.parent().unwrap_or(&path).to_path_buf();
                Resident::Pipeline(LoadedPipeline::load(manifest, &dir, self.device.device, &self.memory)?)
            } else {
                Resident::Single(LoadedModel::load(manifest, &path, self.device.device, &self.memory)?)
            };
            let (name, id) = (model.manifest().name.clone(), self.device.id.clone());
            let times = model.times().clone();
            metrics::MODEL_LOAD_SECONDS
                .with_label_values(&[&name, &id])
                .set(times.load_seconds);
            metrics::MODEL_WARMUP_SECONDS
                .with_label_values(&[&name, &id])
                .set(times.warmup_seconds);
            tracing::info!(
                model = %name,
                version = %model.manifest().version,
                device = %id,
                load_seconds = times.load_seconds,
                warmup_seconds = times.warmup_seconds,
                per_item_bytes = model.per_item_bytes(),
                "model loaded and warm"
            );
            reports.push(ModelLoadReport {
                model: name.clone(),
                version: model.manifest().version.clone(),
                device: id,
                load_seconds: times.load_seconds,
                warmup_seconds: times.warmup_seconds,
                per_item_bytes: model.per_item_bytes(),
            });
            loaded.insert(name, model);
        }
        Ok((loaded, reports))
    }

    /// Make `loaded` the resident models. Ceilings survive a reload (they
    /// describe the device) unless the model's largest batch changed.
    fn swap(&mut self, loaded: HashMap<String, Resident>) {
        self.ceilings.retain(|name, c| {
            loaded
                .get(name)
                .is_some_and(|m| m.manifest().max_batch == c.max())
        });
        for (name, model) in &loaded {
            self.ceilings
                .entry(name.clone())
                .or_insert_with(|| Ceiling::new(model.manifest().max_batch));
        }
        *self.manifests.write().unwrap_or_else(|e| e.into_inner()) = loaded
            .iter()
            .map(|(n, m)| (n.clone(), m.manifest().clone()))
            .collect();
        self.models = loaded;
    }

    /// The batch size `model` may have now.
    fn batch_limit(&self, model: &Resident, free_bytes: Option<u64>) -> usize {
        let manifest = model.manifest();
        let ceiling = self
            .ceilings
            .get(&manifest.name)
            .map(Ceiling::value)
            .unwrap_or(manifest.max_batch);
        let memory = MemoryBudget {
            free_bytes,
            cached_bytes: self.cached_bytes,
            per_item_bytes: model.per_item_bytes(),
            safety: self.memory_safety,
        };
        batching::batch_size(self.max_batch, manifest.max_batch, ceiling, &memory)
    }

    /// Load `models` and swap them in, answering `reply`.
    fn reload(&mut self, models: Vec<(Manifest, PathBuf)>, reply: oneshot::Sender<Result<Vec<ModelLoadReport>, String>>) {
        self.warmth.set(&self.device.id, false);
        let result = self.load_all(models).map(|(loaded, reports)| {
            self.swap(loaded);
            reports
        });
        self.warmth.set(&self.device.id, true);
        metrics::MODEL_RELOADS
            .with_label_values(&[if result.is_ok() { "ok" } else { "failed" }])
            .inc();
        let _ = reply.send(result.map_err(|e| e.to_string()));
        self.report_limits();
    }

    /// Tell the Scheduler how large each model's next batch may be here.
    fn report_limits(&self) {
        let free = self.memory.free_bytes();
        let limits: HashMap<String, usize> = self
            .models
            .values()
            .map(|m| (m.manifest().name.clone(), self.batch_limit(m, free)))
            .collect();
        for (name, c) in &self.ceilings {
            metrics::BATCH_CEILING
                .with_label_values(&[name, &self.device.id])
                .set(c.value() as i64);
        }
        if let Some(scheduler) = self.roster.scheduler() {
            let _ = scheduler.cast(SchedulerMsg::BatchLimits {
                device: self.device.id.clone(),
                limits,
            });
        }
    }

    fn fail(&self, ticket: Ticket, failure: Failure) {
        if let Some(post) = self.roster.postprocess() {
            let _ = post.cast(PostprocessMsg::Fail { ticket, failure });
        }
    }

    /// Run a prepared batch in chunks of the batch limit. A device-fatal
    /// error ends it at once (the Scheduler sends a retried job alone, see
    /// [`crate::lanes::retried`], so such a job takes no batch mates down).
    fn run(&mut self, batch: PreparedBatch) -> Result<(), DeviceLost> {
        let seq = self.stepping.open_batch();
        let result = match self.models.get(&batch.model) {
            Some(Resident::Pipeline(_)) if !batch.items.is_empty() => self.run_pipeline(batch, seq),
            _ => self.run_single(batch),
        };
        // Every batch ends in one DeviceIdle, in order (and Joined first
        // when jobs of an earlier one still sample) — but not a batch the
        // device was lost in: a DeviceIdle would tell the Scheduler its jobs
        // went on to Postprocess, so it would not hand them back when the
        // worker is lost, and they would never be answered.
        if result.is_ok() {
            self.flush(None);
        }
        result
    }

    /// Run a batch of a single-call model.
    fn run_single(&mut self, batch: PreparedBatch) -> Result<(), DeviceLost> {
        if batch.items.is_empty() {
            return Ok(());
        }
        let Some(Resident::Single(model)) = self.models.get(&batch.model) else {
            for (ticket, _) in batch.items {
                self.fail(
                    ticket,
                    Failure::new(
                        ErrorCode::UnknownModel,
                        format!(
                            "model {:?} is not loaded on {}",
                            batch.model, self.device.id
                        ),
                    ),
                );
            }
            return Ok(());
        };
        // One `job.inference` span per job, open for the whole batch.
        let _spans: Vec<tracing::Span> = batch.items.iter().map(|(t, _)| t.span("inference")).collect();
        if model.manifest.input_size != batch.input_size {
            // Prepared for a manifest a reload replaced meanwhile: run it again later.
            for (ticket, _) in batch.items {
                self.fail(
                    ticket,
                    Failure::new(
                        ErrorCode::Unavailable,
                        format!(
                            "model {:?} was reloaded with another input size",
                            batch.model
                        ),
                    ),
                );
            }
            return Ok(());
        }
        if !self.simulated_latency.is_zero() {
            thread::sleep(self.simulated_latency);
        }
        // Re-read free memory now: the batch may be larger than what fits.
        let limit = self.batch_limit(&self.models[&batch.model], self.memory.free_bytes());
        let [h, w] = batch.input_size;
        let n = batch.items.len();
        // SAFETY: `batch.input` holds exactly n × 4 × H × W initialised f32s and
        // outlives `input` and every view of it: all of them are dropped
        // before this function returns, and forward passes copy their
        // results out (volumes are new tensors, copied into Vecs).
        let input = unsafe {
            Tensor::from_blob(
                batch.input.as_ptr().cast(),
                &[n as i64, 4, h as i64, w as i64],
                &[],
                Kind::Float,
                Device::Cpu,
            )
        };
        let params = batch
            .params
            .as_ref()
            .map(|(flat, columns)| Tensor::from_slice(flat).view([n as i64, *columns as i64]));
        let now = crate::now_ms();
        for (ticket, _) in &batch.items {
            self.events.progress(ticket, Stage::Inference);
            let waited = now.saturating_sub(ticket.job.admitted_at_ms) as f64 / 1000.0;
            metrics::QUEUE_WAIT
                .with_label_values(&[ticket.job.lane.as_str()])
                .observe(waited);
        }
        let name = batch.model.clone();
        let mut items = batch.items.into_iter();
        let mut start = 0;
        while start < n {
            let len = limit.min(n - start);
            let chunk: Vec<(Ticket, RgbaImage)> = items.by_ref().take(len).collect();
            let p = params
                .as_ref()
                .map(|p| p.narrow(0, start as i64, len as i64));
            self.forward_split(&name, chunk, input.narrow(0, start as i64, len as i64), p)?;
            start += len;
        }
        Ok(())
    }

    /// One forward pass over `items`; on out-of-memory, lower the ceiling,
    /// halve and retry, so a too-large batch becomes smaller batches instead
    /// of failed jobs. A job fails (`gpu_oom`, retryable) only alone. Any
    /// other error of a batch is bisected the same way, so only the job
    /// that causes it fails (`inference_failed`) and its batch mates get
    /// their volumes. A device-fatal error ends the pass at once.
    fn forward_split(
        &mut self,
        name: &str,
        items: Vec<(Ticket, RgbaImage)>,
        input: Tensor,
        params: Option<Tensor>,
    ) -> Result<(), DeviceLost> {
        let Some(Resident::Single(model)) = self.models.get(name) else {
            return Ok(());
        };
        let n = items.len();
        let started = Instant::now();
        let result = model.forward(&input, params.as_ref());
        metrics::STAGE_SECONDS
            .with_label_values(&["inference"])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(volumes) => {
                let manifest = Arc::new(model.manifest.clone());
                self.cached_bytes = self.cached_bytes.max(n as u64 * model.per_item_bytes);
                metrics::BATCH_SIZE
                    .with_label_values(&[name])
                    .observe(n as f64);
                let cap = self.max_batch.min(manifest.max_batch).max(1);
                metrics::BATCH_FILL
                    .with_label_values(&[name])
                    .observe(n as f64 / cap as f64);
                if let Some(c) = self.ceilings.get_mut(name) {
                    c.on_success(n);
                }
                for (i, (ticket, image)) in items.into_iter().enumerate() {
                    let volume = volumes.get(i as i64);
                    let len = volume.numel();
                    let mut data = vec![0f32; len];
                    volume.copy_data(&mut data, len);
                    let job = VolumeJob {
                        ticket,
                        data,
                        manifest: manifest.clone(),
                        image,
                        colour: None,
                    };
                    match self.roster.postprocess() {
                        Some(post) => {
                            let _ = post.cast(PostprocessMsg::Volume(Box::new(job)));
                        }
                        None => tracing::error!(
                            "postprocess is not running; job returns to the queue after ack_wait"
                        ),
                    }
                }
            }
            Err(ModelError::Forward {
                out_of_memory: true,
                detail,
                ..
            }) => {
                metrics::DEVICE_OOM
                    .with_label_values(&[name, &self.device.id])
                    .inc();
                let ceiling = self
                    .ceilings
                    .entry(name.to_string())
                    .or_insert_with(|| Ceiling::new(n));
                ceiling.on_out_of_memory(n);
                metrics::BATCH_CEILING
                    .with_label_values(&[name, &self.device.id])
                    .set(ceiling.value() as i64);
                if n > 1 {
                    tracing::warn!(model = name, device = %self.device.id, batch = n, ceiling = ceiling.value(), "out of memory; splitting the batch");
                    return self.bisect(name, items, input, params);
                } else {
                    tracing::warn!(model = name, device = %self.device.id, "out of memory for a single job");
                    for (ticket, _) in items {
                        self.fail(
                            ticket,
                            Failure::new(
                                ErrorCode::GpuOom,
                                format!(
                                    "{} ran out of memory for this job alone: {detail}",
                                    self.device.id
                                ),
                            ),
                        );
                    }
                }
            }
            Err(ModelError::Forward {
                device_lost: true,
                detail,
                ..
            }) => {
                metrics::DEVICE_LOST
                    .with_label_values(&[name, &self.device.id])
                    .inc();
                return Err(DeviceLost(detail));
            }
            Err(e) if n > 1 => {
                tracing::warn!(model = name, device = %self.device.id, batch = n, error = %e, "forward pass failed; bisecting the batch to find the job that fails");
                return self.bisect(name, items, input, params);
            }
            Err(e) => {
                for (ticket, _) in items {
                    self.fail(
                        ticket,
                        Failure::new(ErrorCode::InferenceFailed, e.to_string()),
                    );
                }
            }
        }
        Ok(())
    }

    /// Run the two halves of a batch one after the other.
    fn bisect(
        &mut self,
        name: &str,
        items: Vec<(Ticket, RgbaImage)>,
        input: Tensor,
        params: Option<Tensor>,
    ) -> Result<(), DeviceLost> {
        let n = items.len();
        let half = n / 2;
        let mut first = items;
        let second = first.split_off(half);
        let (p1, p2) = match &params {
            Some(p) => (
                Some(p.narrow(0, 0, half as i64)),
                Some(p.narrow(0, half as i64, (n - half) as i64)),
            ),
            None => (None, None),
        };
        let (i1, i2) = (
            input.narrow(0, 0, half as i64),
            input.narrow(0, half as i64, (n - half) as i64),
        );
        drop(input);
        self.forward_split(name, first, i1, p1)?;
        self.forward_split(name, second, i2, p2)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use orfeas_wire::v1::{AdmittedJob, Format, ImageInput};
    use tokio::sync::mpsc as tmpsc;

    /// Stands in for a sibling actor: forwards what it receives to the test.
    struct Collector<M>(tmpsc::UnboundedSender<M>);

    impl<M: ractor::Message> Actor for Collector<M> {
        type Msg = M;
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
        async fn handle(
            &self,
            _: ActorRef<Self::Msg>,
            message: Self::Msg,
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            let _ = self.0.send(message);
            Ok(())
        }
    }

    fn ticket(n: u128, model: &str, image: Vec<u8>, model_params: BTreeMap<String, f64>) -> Ticket {
        let job = AdmittedJob {
            job_id: uuid::Uuid::from_u128(n),
            agent: "t".into(),
            model: model.into(),
            formats: vec![Format::Glb],
            params: orfeas_wire::v1::JobParams {
                model_params,
                ..Default::default()
            },
            image: ImageInput::Inline {
                media_type: "image/png".into(),
                data: image,
            },
            admitted_at_ms: 0,
            lane: Default::default(),
            batch_id: None,
        };
        Ticket::new(job, 1, 1)
    }

    fn mug() -> Vec<u8> {
        std::fs::read(crate::model::tests::models_dir().join("../examples/mug.png")).unwrap()
    }

    /// A worker on the CPU with `models`, its postprocess and scheduler
    /// replaced by collectors.
    struct Rig {
        worker: ActorRef<GpuWorkerMsg>,
        post: tmpsc::UnboundedReceiver<PostprocessMsg>,
        scheduler: tmpsc::UnboundedReceiver<SchedulerMsg>,
        warmth: Warmth,
        others: Vec<ractor::ActorCell>,
        /// Ends when the worker stops (or fails).
        ended: tokio::task::JoinHandle<()>,
        /// Events the worker published.
        published: tokio::sync::mpsc::Receiver<(String, orfeas_wire::v1::Event)>,
    }

    impl Rig {
        async fn start(node: &str, models: Vec<(Manifest, PathBuf)>, max_batch: usize) -> Self {
            Self::start_with(node, models, max_batch, |_| {}).await
        }

        async fn start_with(node: &str, models: Vec<(Manifest, PathBuf)>, max_batch: usize, tweak: impl FnOnce(&mut NodeSettings)) -> Self {
            let roster = Roster::new(node);
            let (tx, post) = tmpsc::unbounded_channel();
            let (collector, _) = Actor::spawn(Some(roster.name("postprocess")), Collector(tx), ())
                .await
                .unwrap();
            let (tx, scheduler) = tmpsc::unbounded_channel();
            let (sched, _) = Actor::spawn(Some(roster.name("scheduler")), Collector(tx), ())
                .await
                .unwrap();
            let (events, published) = EventSink::detached(node);
            let mut settings = NodeSettings::local(
                node,
                "nats://unused",
                crate::model::tests::models_dir(),
                std::env::temp_dir(),
            );
            settings.max_batch = max_batch;
            tweak(&mut settings);
            let warmth = Warmth::new(["cpu".to_string()]);
            let worker = GpuWorker {
                device: crate::device::discover(false).remove(0),
                settings: Arc::new(settings),
                models,
                roster: roster.clone(),
                events,
                warmth: warmth.clone(),
                inputs: None,
                matting: Default::default(),
            };
            let (worker, ended) = Actor::spawn(Some(roster.worker_name("cpu")), worker, ())
                .await
                .unwrap();
            Self {
                worker,
                post,
                scheduler,
                warmth,
                others: vec![collector.get_cell(), sched.get_cell()],
                ended,
                published,
            }
        }

        async fn next_post(&mut self) -> PostprocessMsg {
            tokio::time::timeout(Duration::from_secs(60), self.post.recv())
                .await
                .expect("postprocess message in time")
                .unwrap()
        }

        /// The next BatchLimits the scheduler receives.
        async fn next_limits(&mut self) -> HashMap<String, usize> {
            loop {
                match tokio::time::timeout(Duration::from_secs(60), self.scheduler.recv())
                    .await
                    .expect("scheduler message in time")
                    .unwrap()
                {
                    SchedulerMsg::BatchLimits { limits, .. } => return limits,
                    _ => continue,
                }
            }
        }

        fn stop(self) {
            self.worker.stop(None);
            for cell in self.others {
                cell.stop(None);
            }
        }
    }

    fn testing(name: &str) -> Vec<(Manifest, PathBuf)> {
        crate::model::read_manifests(
            &crate::model::tests::models_dir().join("testing"),
            &[name.to_string()],
        )
        .unwrap()
    }

    #[tokio::test]
    async fn batches_reach_the_device_in_the_order_they_were_sent() {
        let mut rig = Rig::start("gpu-worker-order", testing("oom"), 4).await;
        // The first batch's image takes far longer to decode than the second's,
        // so prepared side by side the second would be ready first.
        let big = {
            let pixels = image::RgbaImage::from_fn(3000, 3000, |x, y| {
                image::Rgba([(x % 251) as u8, (y % 241) as u8, ((x ^ y) % 239) as u8, 255])
            });
            let mut png = std::io::Cursor::new(Vec::new());
            pixels.write_to(&mut png, image::ImageFormat::Png).unwrap();
            png.into_inner()
        };
        rig.worker
            .cast(GpuWorkerMsg::Run(vec![ticket(1, "oom", big, BTreeMap::new())]))
            .unwrap();
        rig.worker
            .cast(GpuWorkerMsg::Run(vec![ticket(2, "oom", mug(), BTreeMap::new())]))
            .unwrap();
        let mut order = Vec::new();
        while order.len() < 2 {
            match rig.next_post().await {
                PostprocessMsg::Volume(job) => order.push(job.ticket.job.job_id.as_u128()),
                PostprocessMsg::Fail { failure, .. } => panic!("{failure:?}"),
            }
        }
        assert_eq!(order, vec![1, 2], "the device ran the batches in the order sent");
        rig.stop();
    }

    #[tokio::test]
    async fn out_of_memory_splits_the_batch_lowers_the_ceiling_and_fails_only_a_lone_job() {
        // The `oom` test model raises CUDA's out-of-memory error for batches
        // larger than its `max_ok_batch` parameter (default 2): the same
        // interface a GPU presents, on the CPU.
        let mut rig = Rig::start("gpu-worker-oom", testing("oom"), 16).await;
        assert!(rig.warmth.cold().is_empty(), "warm once the models ran");
        assert_eq!(
            rig.next_limits().await["oom"],
            16,
            "no OOM yet: the model's maximum"
        );
        let mut tickets: Vec<Ticket> = (1..=5)
            .map(|n| ticket(n, "oom", mug(), BTreeMap::new()))
            .collect();
        // Job 6 does not fit even alone (max_ok_batch 0 for it).
        tickets.push(ticket(
            6,
            "oom",
            mug(),
            BTreeMap::from([("max_ok_batch".to_string(), 0.0)]),
        ));
        rig.worker.cast(GpuWorkerMsg::Run(tickets)).unwrap();
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        while done.len() + failed.len() < 6 {
            match rig.next_post().await {
                PostprocessMsg::Volume(job) => done.push(job.ticket.job.job_id.as_u128()),
                PostprocessMsg::Fail { ticket, failure } => {
                    failed.push((ticket.job.job_id.as_u128(), failure.code, failure.retryable))
                }
            }
        }
        done.sort_unstable();
        assert_eq!(
            done,
            vec![1, 2, 3, 4, 5],
            "every job that fits alone got its volume"
        );
        assert_eq!(
            failed,
            vec![(6, ErrorCode::GpuOom, true)],
            "only the job that fails alone fails, retryably"
        );
        let limits = rig.next_limits().await;
        assert!(
            limits["oom"] <= 2,
            "ceiling lowered after the OOM: {limits:?}"
        );
        rig.stop();
    }

    fn fault(n: u128, fault: f64, attempt: u64) -> Ticket {
        let t = ticket(n, "fault", mug(), BTreeMap::from([("fault".to_string(), fault)]));
        Ticket::new((*t.job).clone(), attempt, 1)
    }

    /// Volumes and failures of the next `count` postprocess messages, by job number.
    async fn outcomes(rig: &mut Rig, count: usize) -> (Vec<u128>, Vec<(u128, ErrorCode)>) {
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        while done.len() + failed.len() < count {
            match rig.next_post().await {
                PostprocessMsg::Volume(job) => done.push(job.ticket.job.job_id.as_u128()),
                PostprocessMsg::Fail { ticket, failure } => failed.push((ticket.job.job_id.as_u128(), failure.code)),
            }
        }
        done.sort_unstable();
        (done, failed)
    }

    #[tokio::test]
    async fn a_job_whose_forward_pass_fails_fails_alone_and_its_batch_mates_get_volumes() {
        // The `fault` test model raises for the whole batch when one item has fault = 1.
        let mut rig = Rig::start("gpu-worker-fault", testing("fault"), 8).await;
        let tickets = vec![fault(1, 0.0, 1), fault(2, 0.0, 1), fault(3, 1.0, 1), fault(4, 0.0, 1), fault(5, 0.0, 1)];
        rig.worker.cast(GpuWorkerMsg::Run(tickets)).unwrap();
        let (done, failed) = outcomes(&mut rig, 5).await;
        assert_eq!(done, vec![1, 2, 4, 5], "the batch mates of the failing job got their volumes");
        assert_eq!(failed, vec![(3, ErrorCode::InferenceFailed)], "only the job that fails alone fails");
        rig.stop();
    }

    #[tokio::test]
    async fn a_device_fatal_error_ends_the_worker_without_answering_the_job() {
        // Fault 2 raises what a CUDA illegal memory access says: the device
        // is unusable, so the worker must end (its supervisor restarts it).
        let mut rig = Rig::start("gpu-worker-lost", testing("fault"), 8).await;
        rig.worker.cast(GpuWorkerMsg::Run(vec![fault(2, 0.0, 1), fault(3, 0.0, 1)])).unwrap();
        let (done, failed) = outcomes(&mut rig, 2).await;
        assert_eq!((done, failed), (vec![2, 3], vec![]), "the model runs until the fatal job");
        rig.worker.cast(GpuWorkerMsg::Run(vec![fault(1, 2.0, 2)])).unwrap();
        tokio::time::timeout(Duration::from_secs(60), &mut rig.ended).await.expect("the worker ended after the device-fatal error").unwrap();
        assert!(rig.post.try_recv().is_err(), "the job that brought the device down got no answer here (JetStream redelivers it)");
        assert!(!rig.warmth.cold().is_empty(), "the device counts as cold until its worker is back");
        let lost = crate::metrics::DEVICE_LOST.with_label_values(&["fault", "cpu"]).get();
        assert!(lost >= 1, "counted: {lost}");
    }

    #[tokio::test]
    async fn batch_yields_volumes_and_per_job_failures() {
        let mut rig = Rig::start("gpu-worker-test", vec![crate::model::tests::inflate()], 8).await;
        let bad = b"not a png".to_vec();
        rig.worker
            .cast(GpuWorkerMsg::Run(vec![
                ticket(1, "inflate", mug(), BTreeMap::new()),
                ticket(2, "inflate", bad, BTreeMap::new()),
                ticket(3, "inflate", mug(), BTreeMap::new()),
            ]))
            .unwrap();
        let (mut volumes, mut failures) = (Vec::new(), Vec::new());
        while volumes.len() + failures.len() < 3 {
            match rig.next_post().await {
                PostprocessMsg::Volume(job) => volumes.push(job),
                PostprocessMsg::Fail { ticket, failure } => {
                    failures.push((ticket.job.job_id.as_u128(), failure.code))
                }
            }
        }
        assert_eq!(failures, vec![(2, ErrorCode::InvalidImage)]);
        let ids: Vec<u128> = volumes
            .iter()
            .map(|v| v.ticket.job.job_id.as_u128())
            .collect();
        assert_eq!(ids, vec![1, 3]);
        let n: usize = volumes[0].manifest.grid.iter().product();
        assert_eq!(volumes[0].data.len(), n);
        assert_eq!(
            volumes[0].data, volumes[1].data,
            "same image, same volume, in one batch (the gap was closed)"
        );
        assert!(volumes[0].data.iter().any(|&v| v > 0.0));
        rig.stop();
    }

    #[tokio::test]
    async fn relief_jobs_with_different_params_get_different_volumes_in_one_batch() {
        let relief = crate::model::read_manifests(
            &crate::model::tests::models_dir(),
            &["relief".to_string()],
        )
        .unwrap();
        let mut rig = Rig::start("gpu-worker-relief", relief, 8).await;
        // An opaque photo-like image: full frame, so the plate is the whole square.
        let photo =
            std::fs::read(crate::model::tests::models_dir().join("../examples/mug.png")).unwrap();
        let flat = BTreeMap::from([("max_height".to_string(), 0.05)]);
        let tall = BTreeMap::from([
            ("max_height".to_string(), 0.6),
            ("base_thickness".to_string(), 0.2),
        ]);
        let inverted = BTreeMap::from([("invert".to_string(), 1.0)]);
        rig.worker
            .cast(GpuWorkerMsg::Run(vec![
                ticket(1, "relief", photo.clone(), flat),
                ticket(2, "relief", photo.clone(), tall),
                ticket(3, "relief", photo.clone(), BTreeMap::new()),
                ticket(4, "relief", photo, inverted),
            ]))
            .unwrap();
        let mut volumes = HashMap::new();
        while volumes.len() < 4 {
            match rig.next_post().await {
                PostprocessMsg::Volume(job) => {
                    volumes.insert(job.ticket.job.job_id.as_u128(), job.data);
                }
                PostprocessMsg::Fail { failure, .. } => panic!("relief job failed: {failure:?}"),
            }
        }
        let solid = |id: u128| volumes[&id].iter().filter(|&&v| v > 0.0).count();
        assert!(
            solid(2) > 2 * solid(1),
            "taller params, thicker plate: {} vs {}",
            solid(2),
            solid(1)
        );
        assert_ne!(volumes[&3], volumes[&4], "invert changes the relief");
        assert!(solid(1) > 0);
        rig.stop();
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_limit_runs_in_chunks_of_the_limit() {
        // Configured max 2, the oom model fits 2: a batch of 5 sent anyway
        // runs as 2 + 2 + 1. Had it run as 5, the out-of-memory cascade
        // (5 → 2 + 3 → 1 + 2) would have lowered this worker's ceiling to 1.
        let mut rig = Rig::start("gpu-worker-chunks", testing("oom"), 2).await;
        assert_eq!(rig.next_limits().await["oom"], 2);
        let tickets: Vec<Ticket> = (1..=5)
            .map(|n| ticket(n, "oom", mug(), BTreeMap::new()))
            .collect();
        rig.worker.cast(GpuWorkerMsg::Run(tickets)).unwrap();
        for _ in 0..5 {
            assert!(matches!(rig.next_post().await, PostprocessMsg::Volume(_)));
        }
        assert_eq!(
            rig.next_limits().await["oom"],
            2,
            "no out-of-memory error lowered the ceiling"
        );
        rig.stop();
    }

    #[tokio::test]
    async fn reload_swaps_models_and_keeps_queued_batches() {
        let dir = tempfile::tempdir().unwrap();
        let src = crate::model::tests::models_dir().join("null");
        std::fs::create_dir(dir.path().join("null")).unwrap();
        for f in ["model.pt", "manifest.toml"] {
            std::fs::copy(src.join(f), dir.path().join("null").join(f)).unwrap();
        }
        let models = crate::model::read_manifests(dir.path(), &[]).unwrap();
        let mut rig = Rig::start("gpu-worker-reload", models, 8).await;
        let before = ticket(1, "null", mug(), BTreeMap::new());
        rig.worker.cast(GpuWorkerMsg::Run(vec![before])).unwrap();
        let manifest = dir.path().join("null/manifest.toml");
        let text = std::fs::read_to_string(&manifest)
            .unwrap()
            .replace("version = \"1.0.0\"", "version = \"1.0.1\"");
        std::fs::write(&manifest, text).unwrap();
        let fresh = crate::model::read_manifests(dir.path(), &[]).unwrap();
        let reply = ractor::call_t!(rig.worker, GpuWorkerMsg::Reload, 60_000, fresh)
            .unwrap()
            .unwrap();
        assert_eq!(reply.len(), 1);
        assert_eq!(
            (
                reply[0].model.as_str(),
                reply[0].version.as_str(),
                reply[0].device.as_str()
            ),
            ("null", "1.0.1", "cpu")
        );
        assert!(reply[0].warmup_seconds > 0.0);
        let after = ticket(2, "null", mug(), BTreeMap::new());
        rig.worker.cast(GpuWorkerMsg::Run(vec![after])).unwrap();
        let mut versions = HashMap::new();
        while versions.len() < 2 {
            if let PostprocessMsg::Volume(job) = rig.next_post().await {
                versions.insert(
                    job.ticket.job.job_id.as_u128(),
                    job.manifest.version.clone(),
                );
            }
        }
        assert_eq!(
            versions[&2], "1.0.1",
            "the job after the reload ran on the new model"
        );
        // A broken model is refused and the old ones stay.
        std::fs::write(dir.path().join("null/model.pt"), b"not torchscript").unwrap();
        let broken = crate::model::read_manifests(dir.path(), &[]).unwrap();
        let err = ractor::call_t!(rig.worker, GpuWorkerMsg::Reload, 60_000, broken)
            .unwrap()
            .unwrap_err();
        assert!(err.contains("failed to load"), "{err}");
        assert!(
            rig.warmth.cold().is_empty(),
            "still warm with the old models"
        );
        rig.worker
            .cast(GpuWorkerMsg::Run(vec![ticket(
                3,
                "null",
                mug(),
                BTreeMap::new(),
            )]))
            .unwrap();
        match rig.next_post().await {
            PostprocessMsg::Volume(job) => assert_eq!(job.manifest.version, "1.0.1"),
            PostprocessMsg::Fail { failure, .. } => panic!("{failure:?}"),
        }
        rig.stop();
    }

    /// Postprocess messages until `count` jobs are answered, and every
    /// scheduler message meanwhile (Joined / DeviceIdle in order).
    async fn answers(rig: &mut Rig, count: usize) -> (HashMap<u128, Result<VolumeJob, ErrorCode>>, Vec<&'static str>) {
        let mut out = HashMap::new();
        while out.len() < count {
            match rig.next_post().await {
                PostprocessMsg::Volume(job) => {
                    out.insert(job.ticket.job.job_id.as_u128(), Ok(*job));
                }
                PostprocessMsg::Fail { ticket, failure } => {
                    out.insert(ticket.job.job_id.as_u128(), Err(failure.code));
                }
            }
        }
        (out, scheduler_says(rig))
    }

    fn scheduler_says(rig: &mut Rig) -> Vec<&'static str> {
        let mut said = Vec::new();
        while let Ok(m) = rig.scheduler.try_recv() {
            match m {
                SchedulerMsg::Joined(_) => said.push("joined"),
                SchedulerMsg::DeviceIdle(_) => said.push("idle"),
                _ => {}
            }
        }
        said
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[tokio::test]
    async fn pipeline_jobs_join_the_running_set_and_each_batch_gets_one_joined_and_one_idle() {
        // 10 ms per step: batches sent one after the other join a running set.
        let mut rig = Rig::start_with("gpu-worker-steps", testing("hunyuan-tiny"), 8, |s| s.simulated_step_latency = Duration::from_millis(10)).await;
        let disc = std::fs::read(crate::model::tests::models_dir().join("../examples/mug.png")).unwrap();
        rig.worker.cast(GpuWorkerMsg::Run(vec![ticket(1, "hunyuan-tiny", mug(), BTreeMap::new()), ticket(2, "hunyuan-tiny", disc.clone(), BTreeMap::new())])).unwrap();
        rig.worker.cast(GpuWorkerMsg::Run(vec![ticket(3, "hunyuan-tiny", mug(), BTreeMap::new())])).unwrap();
        rig.worker.cast(GpuWorkerMsg::Run(vec![ticket(4, "hunyuan-tiny", mug(), BTreeMap::new())])).unwrap();
        let (together, mut said) = answers(&mut rig, 4).await;
        // The last DeviceIdle may still be on its way.
        while said.iter().filter(|s| **s == "idle").count() < 3 {
            match tokio::time::timeout(Duration::from_secs(60), rig.scheduler.recv()).await.expect("in time").unwrap() {
                SchedulerMsg::Joined(_) => said.push("joined"),
                SchedulerMsg::DeviceIdle(_) => said.push("idle"),
                _ => {}
            }
        }
        assert_eq!(said.iter().filter(|s| **s == "joined").count(), 3, "{said:?}");
        assert_eq!(said.iter().filter(|s| **s == "idle").count(), 3, "{said:?}");
        for k in 1..=said.len() {
            let idle = said[..k].iter().filter(|s| **s == "idle").count();
            let joined = said[..k].iter().filter(|s| **s == "joined").count();
            assert!(joined >= idle, "a batch reported idle before it joined: {said:?}");
        }
        // Each job's volume equals the same job run alone (same id, same noise).
        for n in [1u128, 3] {
            rig.worker.cast(GpuWorkerMsg::Run(vec![ticket(n, "hunyuan-tiny", mug(), BTreeMap::new())])).unwrap();
            let (alone, _) = answers(&mut rig, 1).await;
            let (a, b) = (&alone[&n].as_ref().unwrap().data, &together[&n].as_ref().unwrap().data);
            let d = max_abs_diff(a, b);
            assert!(d < 1e-4, "job {n}: batched differs from alone by {d}");
        }
        let v = together[&1].as_ref().unwrap();
        assert!(v.data.iter().any(|&x| x > 0.0) && v.colour.is_none(), "a solid; no colour stage in this model");
        assert_ne!(v.data, together[&2].as_ref().unwrap().data, "different images, different volumes");
        rig.stop();
    }

    #[tokio::test]
    async fn a_canceled_pipeline_job_stops_at_a_step_boundary_and_its_batch_mate_finishes() {
        let mut rig = Rig::start_with("gpu-worker-step-cancel", testing("hunyuan-tiny"), 8, |s| s.simulated_step_latency = Duration::from_millis(40)).await;
        rig.worker.cast(GpuWorkerMsg::Run(vec![ticket(1, "hunyuan-tiny", mug(), BTreeMap::new()), ticket(2, "hunyuan-tiny", mug(), BTreeMap::new())])).unwrap();
        // Wait for job 1's first per-step progress (percent past the inference stage's start).
        let mut steps_seen = 0;
        loop {
            let (_, event) = tokio::time::timeout(Duration::from_secs(60), rig.published.recv()).await.expect("progress in time").unwrap();
            if let orfeas_wire::v1::EventKind::Progress { stage: Stage::Inference, percent, eta_ms } = event.kind {
                if event.job_id.as_u128() == 1 && percent > 30 {
                    assert!(eta_ms.is_some_and(|ms| ms > 0), "an ETA while sampling");
                    steps_seen += 1;
                    break;
                }
            }
        }
        assert_eq!(steps_seen, 1);
        rig.worker.cast(GpuWorkerMsg::Cancel(uuid::Uuid::from_u128(1))).unwrap();
        let (out, _) = answers(&mut rig, 2).await;
        assert_eq!(out[&1].as_ref().err(), Some(&ErrorCode::Canceled), "stopped at a boundary, not run to the end");
        assert!(out[&2].is_ok(), "its batch mate got its volume");
        rig.stop();
    }

    #[tokio::test]
    async fn a_pipeline_job_past_its_deadline_while_sampling_stops_at_a_step_boundary() {
        // 8 steps of 60 ms; job 2 must be done 200 ms after it is sent.
        let mut rig = Rig::start_with("gpu-worker-step-deadline", testing("hunyuan-tiny"), 8, |s| s.simulated_step_latency = Duration::from_millis(60)).await;
        let mut late = ticket(2, "hunyuan-tiny", mug(), BTreeMap::new());
        Arc::make_mut(&mut late.job).params.deadline_ms = Some(crate::now_ms() + 200);
        rig.worker.cast(GpuWorkerMsg::Run(vec![ticket(1, "hunyuan-tiny", mug(), BTreeMap::new()), late])).unwrap();
        let (out, _) = answers(&mut rig, 2).await;
        assert_eq!(out[&2].as_ref().err(), Some(&ErrorCode::DeadlineExceeded), "stopped at a boundary, not run to the end");
        assert!(out[&1].is_ok(), "its batch mate got its volume");
        rig.stop();
    }

    #[tokio::test]
    async fn a_feed_forward_pipeline_answers_colours_at_vertices_from_its_colour_stage() {
        let mut rig = Rig::start("gpu-worker-colour", testing("triposr-tiny"), 8).await;
        rig.worker.cast(GpuWorkerMsg::Run(vec![ticket(1, "triposr-tiny", mug(), BTreeMap::new())])).unwrap();
        let (out, said) = answers(&mut rig, 1).await;
        assert!(!said.contains(&"joined"), "a feed-forward batch is a plain batch: {said:?}");
        let job = out.into_values().next().unwrap().unwrap();
        let query = job.colour.clone().expect("a colour query");
        // Postprocess calls it on the blocking pool; the device thread answers.
        let rgb = tokio::task::spawn_blocking(move || query(vec![[0.0, 0.0, 0.0], [0.3, -0.2, 0.1], [0.9, 0.9, 0.9]])).await.unwrap().unwrap();
        assert_eq!(rgb.len(), 3);
        assert!(rgb.iter().flatten().all(|c| (0.0..=1.0).contains(c)) && rgb[0] != rgb[1], "{rgb:?}");
        rig.stop();
    }
}
