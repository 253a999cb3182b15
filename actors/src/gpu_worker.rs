//! GpuWorker: drives one device.
//!
//! - Consumes: `GpuWorkerMsg::Run(batch)` from the Scheduler — compatible
//!   tickets (same model) to run as one forward pass.
//! - Publishes: `PostprocessMsg::Volume` per job (volumes stay in-process),
//!   `PostprocessMsg::Fail` for jobs whose image is unusable or that cannot
//!   fit on the device; `SchedulerMsg::DeviceIdle` after every batch;
//!   `preprocessing` and `inference` progress events.
//! - State: the channel to its device thread. The thread owns the loaded
//!   models (`CModule`, resident for the worker's life) so forward passes
//!   never block an actor loop.
//! - Restart policy: models are loaded in `pre_start`, so a model that fails
//!   to load or breaks its contract fails the spawn (reported at start, not
//!   at the first job). If the device thread dies the next `Run` fails the
//!   actor; the supervisor restarts it (reloading the models) and the
//!   Scheduler hands the lost batch back to JetStream.

use std::{collections::HashMap, path::PathBuf, sync::Arc, thread, time::{Duration, Instant}};

use orfeas_wire::{
    v1::{Failure, ImageInput, Stage},
    ErrorCode,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tch::{Kind, Tensor};
use tokio::sync::oneshot;

use crate::{
    device::ComputeDevice,
    events::EventSink,
    metrics,
    model::{LoadedModel, Manifest, ModelError},
    postprocess::{PostprocessMsg, VolumeJob},
    preprocess::{self, Prepared},
    roster::Roster,
    scheduler::SchedulerMsg,
    settings::NodeSettings,
    ticket::Ticket,
};

/// Messages to a GpuWorker.
pub enum GpuWorkerMsg {
    /// Run these tickets (same model) as one batch.
    Run(Vec<Ticket>),
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
}

/// Mutable state: the device thread's inbox.
pub struct GpuWorkerState {
    work: std::sync::mpsc::Sender<Vec<Ticket>>,
}

impl Actor for GpuWorker {
    type Msg = GpuWorkerMsg;
    type State = GpuWorkerState;
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, _: ()) -> Result<Self::State, ActorProcessingErr> {
        let (work, inbox) = std::sync::mpsc::channel::<Vec<Ticket>>();
        let (loaded_tx, loaded_rx) = oneshot::channel::<Result<(), ModelError>>();
        let device = self.device.clone();
        let models = self.models.clone();
        let runner = BatchRunner {
            device_id: self.device.id.clone(),
            roster: self.roster.clone(),
            events: self.events.clone(),
            max_image_side: self.settings.max_image_side,
            max_batch: self.settings.max_batch,
            simulated_latency: self.settings.simulated_latency,
        };
        if self.settings.cpu_threads > 0 {
            tch::set_num_threads(self.settings.cpu_threads as i32);
        }
        thread::Builder::new()
            .name(format!("device-{}", self.device.id))
            .spawn(move || {
                let mut loaded = HashMap::new();
                for (manifest, path) in models {
                    let started = Instant::now();
                    match LoadedModel::load(manifest, &path, device.device) {
                        Ok(model) => {
                            let seconds = started.elapsed().as_secs_f64();
                            metrics::MODEL_LOAD_SECONDS.with_label_values(&[&model.manifest.name, &device.id]).set(seconds);
                            tracing::info!(model = %model.manifest.name, device = %device.id, seconds, "model loaded");
                            loaded.insert(model.manifest.name.clone(), model);
                        }
                        Err(e) => {
                            let _ = loaded_tx.send(Err(e));
                            return;
                        }
                    }
                }
                let _ = loaded_tx.send(Ok(()));
                while let Ok(batch) = inbox.recv() {
                    runner.run(&loaded, batch);
                }
            })?;
        loaded_rx.await.map_err(|_| "device thread ended while loading models")??;
        Ok(GpuWorkerState { work })
    }

    async fn handle(&self, _myself: ActorRef<Self::Msg>, message: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        match message {
            GpuWorkerMsg::Run(batch) => {
                state.work.send(batch).map_err(|_| format!("device thread of {} is gone", self.device.id))?;
            }
        }
        Ok(())
    }
}

/// What the device thread needs besides the models.
struct BatchRunner {
    device_id: String,
    roster: Roster,
    events: EventSink,
    max_image_side: u32,
    max_batch: usize,
    simulated_latency: Duration,
}

impl BatchRunner {
    fn run(&self, models: &HashMap<String, LoadedModel>, batch: Vec<Ticket>) {
        self.run_batch(models, batch);
        if let Some(scheduler) = self.roster.scheduler() {
            let _ = scheduler.cast(SchedulerMsg::DeviceIdle(self.device_id.clone()));
        }
    }

    fn fail(&self, ticket: Ticket, failure: Failure) {
        if let Some(post) = self.roster.postprocess() {
            let _ = post.cast(PostprocessMsg::Fail { ticket, failure });
        }
    }

    fn run_batch(&self, models: &HashMap<String, LoadedModel>, batch: Vec<Ticket>) {
        let Some(model_name) = batch.first().map(|t| t.job.model.clone()) else { return };
        let Some(model) = models.get(&model_name) else {
            for ticket in batch {
                let failure = Failure::new(ErrorCode::UnknownModel, format!("model {model_name:?} is not loaded on {}", self.device_id));
                self.fail(ticket, failure);
            }
            return;
        };
        // One `job.inference` span per job, open for the whole batch.
        let _spans: Vec<tracing::Span> = batch.iter().map(|t| t.span("inference")).collect();
        let started = Instant::now();
        let mut ready: Vec<(Ticket, Prepared)> = Vec::with_capacity(batch.len());
        for ticket in batch {
            self.events.progress(&ticket, Stage::Preprocessing, 10);
            let ImageInput::Inline { media_type, data } = &ticket.job.image;
            match preprocess::prepare(data, media_type, self.max_image_side, model.manifest.input_size) {
                Ok(prepared) => ready.push((ticket, prepared)),
                Err(e) => {
                    let failure = Failure::new(e.code(), e.to_string());
                    self.fail(ticket, failure);
                }
            }
        }
        metrics::STAGE_SECONDS.with_label_values(&["preprocessing"]).observe(started.elapsed().as_secs_f64());
        if ready.is_empty() {
            return;
        }
        if !self.simulated_latency.is_zero() {
            thread::sleep(self.simulated_latency);
        }
        self.forward_split(model, ready);
    }

    /// One forward pass over `items`; on out-of-memory, halve and retry so
    /// a too-large batch becomes smaller batches instead of failed jobs.
    fn forward_split(&self, model: &LoadedModel, items: Vec<(Ticket, Prepared)>) {
        for (ticket, _) in &items {
            self.events.progress(ticket, Stage::Inference, 30);
        }
        let [h, w] = model.manifest.input_size;
        let mut flat = Vec::with_capacity(items.len() * 4 * h * w);
        for (_, prepared) in &items {
            flat.extend_from_slice(&prepared.chw);
        }
        let input = Tensor::from_slice(&flat).view([items.len() as i64, 4, h as i64, w as i64]);
        let now = crate::now_ms();
        for (ticket, _) in &items {
            let waited = now.saturating_sub(ticket.job.admitted_at_ms) as f64 / 1000.0;
            metrics::QUEUE_WAIT.with_label_values(&["normal"]).observe(waited);
        }
        let started = Instant::now();
        let result = model.forward(&input);
        metrics::STAGE_SECONDS.with_label_values(&["inference"]).observe(started.elapsed().as_secs_f64());
        match result {
            Ok(volumes) => {
                metrics::BATCH_SIZE.with_label_values(&[&model.manifest.name]).observe(items.len() as f64);
                let cap = self.max_batch.min(model.manifest.max_batch).max(1);
                metrics::BATCH_FILL.with_label_values(&[&model.manifest.name]).observe(items.len() as f64 / cap as f64);
                let manifest = Arc::new(model.manifest.clone());
                for (i, (ticket, prepared)) in items.into_iter().enumerate() {
                    let volume = volumes.get(i as i64);
                    let len = volume.numel();
                    let mut data = vec![0f32; len];
                    volume.to_kind(Kind::Float).copy_data(&mut data, len);
                    let job = VolumeJob { ticket, data, manifest: manifest.clone(), image: prepared.rgba };
                    match self.roster.postprocess() {
                        Some(post) => {
                            let _ = post.cast(PostprocessMsg::Volume(Box::new(job)));
                        }
                        None => tracing::error!("postprocess is not running; job returns to the queue after ack_wait"),
                    }
                }
            }
            Err(ModelError::Forward { out_of_memory: true, .. }) if items.len() > 1 => {
                tracing::warn!(model = %model.manifest.name, batch = items.len(), "out of memory; splitting the batch");
                let mut first = items;
                let second = first.split_off(first.len() / 2);
                self.forward_split(model, first);
                self.forward_split(model, second);
            }
            Err(e) => {
                let code = match &e {
                    ModelError::Forward { out_of_memory: true, .. } => ErrorCode::Unavailable,
                    _ => ErrorCode::InferenceFailed,
                };
                for (ticket, _) in items {
                    self.fail(ticket, Failure::new(code, e.to_string()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orfeas_wire::v1::{AdmittedJob, Format};
    use tokio::sync::mpsc;

    /// Stands in for Postprocess: forwards what it receives to the test.
    struct Collector(mpsc::UnboundedSender<PostprocessMsg>);

    impl Actor for Collector {
        type Msg = PostprocessMsg;
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
        async fn handle(&self, _: ActorRef<Self::Msg>, message: Self::Msg, _: &mut ()) -> Result<(), ActorProcessingErr> {
            let _ = self.0.send(message);
            Ok(())
        }
    }

    fn ticket(n: u128, image: Vec<u8>) -> Ticket {
        let job = AdmittedJob {
            job_id: uuid::Uuid::from_u128(n),
            agent: "t".into(),
            model: "inflate".into(),
            formats: vec![Format::Glb],
            params: Default::default(),
            image: ImageInput::Inline { media_type: "image/png".into(), data: image },
            admitted_at_ms: 0,
        };
        Ticket::new(job, 1, 1)
    }

    #[tokio::test]
    async fn out_of_memory_splits_the_batch_instead_of_failing_jobs() {
        // The `oom` test model raises CUDA's out-of-memory error for batches
        // larger than 2: the same interface a GPU presents, on the CPU.
        let roster = Roster::new("gpu-worker-oom");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (collector, _) = Actor::spawn(Some(roster.name("postprocess")), Collector(tx), ()).await.unwrap();
        let (events, _published) = EventSink::detached("gpu-worker-oom");
        let testing = crate::model::tests::models_dir().join("testing");
        let oom = crate::model::read_manifests(&testing, &["oom".to_string()]).unwrap();
        let settings = NodeSettings::local("gpu-worker-oom", "nats://unused", testing, std::env::temp_dir());
        let worker = GpuWorker { device: crate::device::discover(false).remove(0), settings: Arc::new(settings), models: oom, roster: roster.clone(), events };
        let (worker, _) = Actor::spawn(Some(roster.worker_name("cpu")), worker, ()).await.unwrap();
        let mug = std::fs::read(crate::model::tests::models_dir().join("../examples/mug.png")).unwrap();
        let tickets: Vec<Ticket> = (1..=5)
            .map(|n| {
                let mut t = ticket(n, mug.clone());
                let mut job = (*t.job).clone();
                job.model = "oom".into();
                t = Ticket::new(job, 1, 1);
                t
            })
            .collect();
        worker.cast(GpuWorkerMsg::Run(tickets)).unwrap();
        let mut done = Vec::new();
        while done.len() < 5 {
            match tokio::time::timeout(std::time::Duration::from_secs(60), rx.recv()).await.unwrap().unwrap() {
                PostprocessMsg::Volume(job) => done.push(job.ticket.job.job_id.as_u128()),
                PostprocessMsg::Fail { failure, .. } => panic!("a job failed instead of the batch splitting: {failure:?}"),
            }
        }
        done.sort_unstable();
        assert_eq!(done, vec![1, 2, 3, 4, 5], "every job of the too-large batch got its volume");
        worker.stop(None);
        collector.stop(None);
    }

    #[tokio::test]
    async fn batch_yields_volumes_and_per_job_failures() {
        let roster = Roster::new("gpu-worker-test");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (collector, _) = Actor::spawn(Some(roster.name("postprocess")), Collector(tx), ()).await.unwrap();
        let (events, mut published) = EventSink::detached("gpu-worker-test");
        let settings = NodeSettings::local("gpu-worker-test", "nats://unused", crate::model::tests::models_dir(), std::env::temp_dir());
        let worker = GpuWorker {
            device: crate::device::discover(false).remove(0),
            settings: Arc::new(settings),
            models: vec![crate::model::tests::inflate()],
            roster: roster.clone(),
            events,
        };
        let (worker, _) = Actor::spawn(Some(roster.worker_name("cpu")), worker, ()).await.unwrap();
        let mug = std::fs::read(crate::model::tests::models_dir().join("../examples/mug.png")).unwrap();
        worker.cast(GpuWorkerMsg::Run(vec![ticket(1, mug.clone()), ticket(2, b"not a png".to_vec()), ticket(3, mug)])).unwrap();
        let (mut volumes, mut failures) = (Vec::new(), Vec::new());
        while volumes.len() + failures.len() < 3 {
            match tokio::time::timeout(std::time::Duration::from_secs(60), rx.recv()).await.unwrap().unwrap() {
                PostprocessMsg::Volume(job) => volumes.push(job),
                PostprocessMsg::Fail { ticket, failure } => failures.push((ticket.job.job_id.as_u128(), failure.code)),
            }
        }
        assert_eq!(failures, vec![(2, ErrorCode::InvalidImage)]);
        let ids: Vec<u128> = volumes.iter().map(|v| v.ticket.job.job_id.as_u128()).collect();
        assert_eq!(ids, vec![1, 3]);
        let n: usize = volumes[0].manifest.grid.iter().product();
        assert_eq!(volumes[0].data.len(), n);
        assert_eq!(volumes[0].data, volumes[1].data, "same image, same volume, in one batch");
        assert!(volumes[0].data.iter().any(|&v| v > 0.0));
        // Progress was reported for the jobs that ran.
        let mut stages = Vec::new();
        while let Ok((_, event)) = published.try_recv() {
            stages.push((event.job_id.as_u128(), event.kind.name()));
        }
        assert!(stages.contains(&(1, "progress")) && stages.contains(&(3, "progress")));
        worker.stop(None);
        collector.stop(None);
    }
}
