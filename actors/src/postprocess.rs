//! Postprocess: turns a model's volume into delivered files.
//!
//! - Consumes: `PostprocessMsg::Volume` (from a GpuWorker, in-process — a
//!   volume never crosses NATS) and `PostprocessMsg::Fail` (a job that could
//!   not run).
//! - Publishes: `meshing` / `exporting` / `storing` progress, result files
//!   to the object store, the fenced job record, the terminal `completed` /
//!   `failed` event (awaited until stored), then `SchedulerMsg::Finished` so
//!   the Scheduler acks the job message — in that order, nothing acked
//!   before its answer is durable.
//! - State: the meshing threads ([`crate::mesh_pool`]: one per core,
//!   optionally at a lower priority than the control plane); each job runs in its own task
//!   that waits for its mesh there, so the actor's loop never waits on one.
//! - Restart policy: nothing is held across messages; a restart loses no
//!   job (tasks in flight keep running, and any job whose answer was not
//!   stored is redelivered by JetStream).

use std::{sync::Arc, time::{Duration, Instant}};

use image::RgbaImage;
use orfeas_mesh::{ExportFile, ExportFormat, Image, ImagePlane, Inside, Mesh, MeshOptions, Volume};
use orfeas_wire::{
    v1::{EventKind, Failure, Format, MeshStats, Preview, PrintReport, ResultFile, ResultPart, Stage},
    ErrorCode,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::Instrument;

use crate::{
    events::EventSink,
    jobs::{JobRecord, JobState, JobStore, Updated},
    mesh_pool::MeshPool,
    metrics,
    model::{Manifest, OutputKind},
    now_ms,
    roster::Roster,
    scheduler::{Outcome, SchedulerMsg},
    store::ResultStore,
    ticket::Ticket,
};

/// Components smaller than this fraction of the largest are dropped.
const FLOATER_FRACTION: f32 = 0.02;
/// Side of each preview image, pixels.
const PREVIEW_SIZE: u32 = 512;

/// A job's volume, straight from the device.
pub struct VolumeJob {
    /// The job.
    pub ticket: Ticket,
    /// The [D, H, W] volume, C order.
    pub data: Vec<f32>,
    /// The model that made it.
    pub manifest: Arc<Manifest>,
    /// The prepared input image (spanning the model's x/y bounds), for vertex colours
    /// and the texture.
    pub image: RgbaImage,
    /// The model's own colours (a pipeline's `colour` stage), asked for at
    /// the final mesh's vertices; `None`: colours come from the image.
    pub colour: Option<ColourQuery>,
}

/// Linear RGB in [0, 1] at world points, from the device that ran the job
/// (blocks until the device thread answers; called on a meshing thread, [`crate::mesh_pool`]).
pub type ColourQuery = Arc<dyn Fn(Vec<[f32; 3]>) -> Result<Vec<[f32; 3]>, String> + Send + Sync>;

/// Messages to Postprocess.
pub enum PostprocessMsg {
    /// Mesh, export, store and complete this job.
    Volume(Box<VolumeJob>),
    /// This job could not run.
    Fail {
        /// The job.
        ticket: Ticket,
        /// Why.
        failure: Failure,
    },
}

/// Postprocess configuration.
pub struct Postprocess {
    /// Node id (written into job records).
    pub node_id: String,
    /// Sibling names.
    pub roster: Roster,
    /// Event publisher.
    pub events: EventSink,
    /// Job records.
    pub jobs: JobStore,
    /// Result files.
    pub store: ResultStore,
    /// Deliveries before a retryable failure becomes final.
    pub max_deliver: u64,
    /// Added to the meshing threads' nice value ([`crate::mesh_pool`]).
    pub mesh_nice: i32,
}

/// Postprocess state.
pub struct PostprocessState {
    meshing: Arc<MeshPool>,
}

impl Actor for Postprocess {
    type Msg = PostprocessMsg;
    type State = PostprocessState;
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, _: ()) -> Result<Self::State, ActorProcessingErr> {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Ok(PostprocessState { meshing: Arc::new(MeshPool::start(cores, self.mesh_nice)?) })
    }

    async fn handle(&self, _myself: ActorRef<Self::Msg>, message: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        let finisher = Finisher {
            node_id: self.node_id.clone(),
            roster: self.roster.clone(),
            events: self.events.clone(),
            jobs: self.jobs.clone(),
            max_deliver: self.max_deliver,
        };
        match message {
            PostprocessMsg::Volume(job) => {
                let meshing = state.meshing.clone();
                let store = self.store.clone();
                tokio::spawn(async move {
                    let ticket = job.ticket.clone();
                    let span = ticket.span("postprocess");
                    let kind = match deliver(*job, meshing, &store, &finisher.events).instrument(span).await {
                        Ok(kind) => kind,
                        Err(failure) => EventKind::Failed(failure),
                    };
                    finisher.finish(ticket, kind).await;
                });
            }
            PostprocessMsg::Fail { ticket, failure } => {
                tokio::spawn(async move { finisher.finish(ticket, EventKind::Failed(failure)).await });
            }
        }
        Ok(())
    }
}

/// Mesh, export and store one job; the `completed` event on success.
async fn deliver(job: VolumeJob, meshing: Arc<MeshPool>, store: &ResultStore, events: &EventSink) -> Result<EventKind, Failure> {
    let ticket = job.ticket.clone();
    events.progress(&ticket, Stage::Meshing);
    let started = Instant::now();
    let formats = ticket.job.formats.clone();
    let sink = events.clone();
    let made = meshing
        .run(move || mesh_and_export(&job, &formats, || sink.progress(&job.ticket, Stage::Exporting)))
        .await
        .map_err(|e| Failure::new(ErrorCode::Internal, e.to_string()))??;
    metrics::STAGE_SECONDS.with_label_values(&["meshing"]).observe(started.elapsed().as_secs_f64());
    events.progress(&ticket, Stage::Storing);
    let started = Instant::now();
    let put = |name: String, bytes: Vec<u8>| {
        let key = ResultStore::job_key(&ticket.job.agent, &ticket.job.job_id, &name);
        async move { store.put(&key, bytes).await.map_err(|e| Failure::new(ErrorCode::StorageFailed, e.to_string())) }
    };
    let mut results = Vec::with_capacity(made.files.len());
    for (format, files) in made.files {
        // The first file is the result; the rest are parts it names (a textured OBJ's MTL and PNG).
        let mut stored_files = Vec::with_capacity(files.len());
        for file in files {
            stored_files.push((file.name.clone(), put(file.name, file.bytes).await?));
        }
        let mut stored_files = stored_files.into_iter();
        let Some((_, stored)) = stored_files.next() else { continue };
        let parts = stored_files.map(|(name, p)| ResultPart { name, location: p.key, url: p.url, bytes: p.bytes, sha256: p.sha256 }).collect();
        results.push(ResultFile { format, location: stored.key, url: stored.url, bytes: stored.bytes, sha256: stored.sha256, parts });
    }
    let mut previews = Vec::with_capacity(made.previews.len());
    for (view, png) in made.previews {
        let stored = put(format!("preview-{view}.png"), png).await?;
        previews.push(Preview { view, location: stored.key, url: stored.url, bytes: stored.bytes, sha256: Some(stored.sha256) });
    }
    metrics::STAGE_SECONDS.with_label_values(&["storing"]).observe(started.elapsed().as_secs_f64());
    Ok(EventKind::Completed { results, mesh: made.stats, report: Some(made.report), previews })
}

/// Everything made from one volume.
pub struct Made {
    /// Requested formats, encoded: the file itself first (`model.<ext>`), then the parts it names.
    pub files: Vec<(Format, Vec<ExportFile>)>,
    /// PNG previews by view name.
    pub previews: Vec<(String, Vec<u8>)>,
    /// Mesh facts.
    pub stats: MeshStats,
    /// Printability.
    pub report: PrintReport,
}

fn export_format(format: Format) -> ExportFormat {
    match format {
        Format::Glb => ExportFormat::Glb,
        Format::Stl => ExportFormat::Stl,
        Format::Obj => ExportFormat::Obj,
        Format::Ply => ExportFormat::Ply,
        Format::ThreeMf => ExportFormat::ThreeMf,
    }
}

/// Volume → cleaned, smoothed, decimated, coloured mesh → requested formats,
/// previews and printability report, honouring the job's parameters
/// (CPU-heavy; runs on a meshing thread). `exporting` is called between
/// meshing and writing files.
pub fn mesh_and_export(job: &VolumeJob, formats: &[Format], exporting: impl FnOnce()) -> Result<Made, Failure> {
    let m = &job.manifest;
    let params = &job.ticket.job.params;
    let volume = Volume {
        data: &job.data,
        dims: m.grid,
        bounds_min: m.bounds_min,
        bounds_max: m.bounds_max,
        iso: m.iso,
        inside: match m.output_kind {
            OutputKind::Occupancy => Inside::Above,
            OutputKind::Sdf => Inside::Below,
        },
    };
    let options = MeshOptions {
        target_faces: params.target_faces.map(|n| n as usize),
        smooth: params.smooth.unwrap_or(true),
        floater_fraction: FLOATER_FRACTION,
        size_mm: params.size_mm,
        build_volume_mm: params.build_volume_mm.unwrap_or(orfeas_mesh::DEFAULT_BUILD_VOLUME_MM),
        ..MeshOptions::default()
    };
    let mesh_failure = |e: orfeas_mesh::MeshError| Failure::new(ErrorCode::MeshFailed, format!("{} ({})", e, e.code()));
    let processed = orfeas_mesh::process(&volume, &options).map_err(mesh_failure)?;
    for note in &processed.notes {
        tracing::debug!(job_id = %job.ticket.job.job_id, note, "mesh pipeline");
    }
    let mut mesh: Mesh = processed.mesh;
    // Colours and UVs follow the final vertices, so they are projected after
    // smoothing and decimation moved or dropped vertices.
    let (width, height) = job.image.dimensions();
    let image = Image::new(width, height, job.image.as_raw().clone()).map_err(mesh_failure)?;
    let plane = ImagePlane { min: [m.bounds_min[0], m.bounds_min[1]], max: [m.bounds_max[0], m.bounds_max[1]] };
    if params.colour.unwrap_or(true) {
        let from_model = job.colour.as_ref().and_then(|query| match query(mesh.positions.clone()) {
            Ok(rgb) if rgb.len() == mesh.positions.len() => Some(rgb),
            Ok(rgb) => {
                tracing::warn!(job_id = %job.ticket.job.job_id, got = rgb.len(), want = mesh.positions.len(), "colour stage answered the wrong number of vertices; colours from the image");
                None
            }
            Err(e) => {
                // The device may be gone or reloaded meanwhile; the mesh is
                // still good, and the image's colours are the old behaviour.
                tracing::warn!(job_id = %job.ticket.job.job_id, error = %e, "colour stage failed; colours from the image");
                None
            }
        });
        mesh.colors = Some(from_model.unwrap_or_else(|| orfeas_mesh::project_colours(&mesh, &image, &plane)));
    }
    let texture = params.texture.then(|| orfeas_mesh::project_texture(&mesh, &image, &plane));
    // Turned after colouring: colours and UVs were projected from the image as
    // photographed, and a rotation keeps them on their vertices.
    let mut r = processed.report;
    if params.lay_flat {
        mesh = orfeas_mesh::lay_flat(&mesh);
        r = orfeas_mesh::print_report(&mesh, &options);
    }
    exporting();
    let mut files = Vec::with_capacity(formats.len());
    for &format in formats {
        files.push((format, orfeas_mesh::export_files(&mesh, export_format(format), params.size_mm, texture.as_ref(), "model").map_err(mesh_failure)?));
    }
    let previews = if params.previews.unwrap_or(true) { orfeas_mesh::render_previews(&mesh, PREVIEW_SIZE) } else { Vec::new() };
    // The report measured this mesh in the print frame (a rotation, `r.scale`, a
    // shift): its counts are the mesh's, its volume scales back by `r.scale`³. Only
    // the box needs the model frame.
    let (bbox_min, bbox_max) = orfeas_mesh::used_bounds(&mesh).unwrap_or_default();
    let stats = MeshStats {
        vertices: r.vertices as u64,
        faces: r.faces as u64,
        closed_manifold: r.closed && r.two_manifold && r.winding_consistent,
        components: r.components as u64,
        volume: r.volume_mm3 / r.scale.powi(3),
        bbox_min,
        bbox_max,
    };
    let report = PrintReport {
        closed: r.closed,
        two_manifold: r.two_manifold,
        winding_consistent: r.winding_consistent,
        components: r.components as u64,
        euler: r.euler,
        genus: r.genus,
        volume_mm3: r.volume_mm3,
        area_mm2: r.area_mm2,
        bbox_mm: r.bbox_mm,
        degenerate_faces: r.degenerate_faces as u64,
        self_intersections: r.self_intersections.map(|n| n as u64),
        build_volume_mm: r.build_volume_mm,
        fits_build_volume: r.fits_build_volume,
        problems: r.problems,
        checks: Some(orfeas_wire::v1::PrintChecks {
            parts: r.checks.parts as u64,
            floating_parts: r.checks.floating_parts as u64,
            bed_contact_mm2: r.checks.bed_contact_mm2,
            tips_over: r.checks.tips_over,
            overhang_mm2: r.checks.overhang_mm2,
            overhang_fraction: r.checks.overhang_fraction,
            min_wall_mm: r.checks.min_wall_mm,
        }),
        issues: r
            .issues
            .iter()
            .map(|i| orfeas_wire::v1::PrintIssue {
                code: i.code.to_string(),
                severity: match i.severity {
                    orfeas_mesh::Severity::Error => "error",
                    orfeas_mesh::Severity::Warning => "warning",
                }
                .to_string(),
                message: i.message.clone(),
            })
            .collect(),
    };
    Ok(Made { files, previews, stats, report })
}

/// Writes a job's answer in the order that loses nothing and doubles nothing.
struct Finisher {
    node_id: String,
    roster: Roster,
    events: EventSink,
    jobs: JobStore,
    max_deliver: u64,
}

impl Finisher {
    async fn finish(&self, ticket: Ticket, kind: EventKind) {
        if matches!(kind, EventKind::Completed { .. }) {
            // Only whole runs teach the stage averages.
            self.events.progress_done(&ticket);
        }
        let span = ticket.span("finish");
        let outcome = match self.try_finish(&ticket, kind).instrument(span).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(job_id = %ticket.job.job_id, error = %e, "answer not stored; job goes back to the queue");
                Outcome::Nak(crate::bus::retry_delay(ticket.attempt))
            }
        };
        if let Some(scheduler) = self.roster.scheduler() {
            let _ = scheduler.cast(SchedulerMsg::Finished { job_id: ticket.job.job_id, attempt: ticket.attempt, outcome });
        }
    }

    /// End a job whose agent canceled it while it ran (exactly once: the
    /// record update is fenced); silent when another attempt owns it.
    async fn canceled(&self, ticket: &Ticket) -> Result<Outcome, crate::bus::BusError> {
        Ok(match crate::terminal::cancel_if_requested(&self.jobs, &self.events, &self.node_id, ticket).await? {
            Some(true) => {
                metrics::JOBS_FINISHED.with_label_values(&["canceled"]).inc();
                tracing::info!(job_id = %ticket.job.job_id, "canceled while running; result discarded");
                Outcome::Term
            }
            _ => Outcome::Abandon,
        })
    }

    async fn try_finish(&self, ticket: &Ticket, kind: EventKind) -> Result<Outcome, crate::bus::BusError> {
        // A retryable failure before the last delivery: hand the job back.
        if let EventKind::Failed(failure) = &kind {
            if failure.retryable && ticket.attempt < self.max_deliver {
                tracing::info!(job_id = %ticket.job.job_id, code = %failure.code, attempt = ticket.attempt, "retryable failure; redelivering");
                return Ok(Outcome::Nak(Duration::from_secs(2)));
            }
            if failure.retryable {
                // Out of deliveries: the job fails for good (dead letter).
                metrics::DEAD_LETTERS.inc();
            }
        }
        // The record as the claim wrote it, if the ticket has it: the write
        // below is fenced on the claim's revision, so it only lands if the
        // record is still exactly that (a cancel request moves the revision
        // and is then seen on the fenced path); a read would return the same.
        let claimed = match &ticket.record {
            Some(record) => Some(JobRecord::clone(record)),
            None => self.jobs.get(&ticket.job.agent, &ticket.job.job_id).await?.map(|(record, _)| record),
        };
        let Some(mut record) = claimed else {
            tracing::error!(job_id = %ticket.job.job_id, "job record vanished; dropping the job");
            return Ok(Outcome::Term);
        };
        if record.cancel_requested {
            // Canceled while it ran: the result is discarded.
            return self.canceled(ticket).await;
        }
        let seq = ticket.next_seq();
        record.state = match kind {
            EventKind::Completed { .. } => JobState::Completed,
            _ => JobState::Failed,
        };
        record.node = self.node_id.clone();
        record.updated_at_ms = now_ms();
        record.terminal = Some(kind.clone());
        record.terminal_seq = seq;
        match self.jobs.update(&record, ticket.revision).await? {
            Updated::Ok(_) => {}
            Updated::Fenced => {
                // A cancel request while it ran moves the revision too.
                if let Some((now, _)) = self.jobs.get(&ticket.job.agent, &ticket.job.job_id).await? {
                    if now.cancel_requested {
                        return self.canceled(ticket).await;
                    }
                }
                // Another attempt owns the job now; this one must stay silent.
                tracing::warn!(job_id = %ticket.job.job_id, attempt = ticket.attempt, "lost the lease; result discarded");
                return Ok(Outcome::Abandon);
            }
        }
        self.events.publish_in(Some(ticket.trace), &ticket.job.agent, ticket.job.job_id, seq, kind.clone()).await?;
        let outcome = match &kind {
            EventKind::Completed { .. } => "completed",
            EventKind::Failed(f) | EventKind::Rejected(f) => {
                metrics::ERRORS.with_label_values(&[&ticket.job.agent, f.code.as_str()]).inc();
                f.code.as_str()
            }
            _ => "other",
        };
        metrics::JOBS_FINISHED.with_label_values(&[outcome]).inc();
        let seconds = now_ms().saturating_sub(ticket.job.admitted_at_ms) as f64 / 1000.0;
        metrics::JOB_SECONDS.with_label_values(&[&ticket.job.model]).observe(seconds);
        Ok(match kind {
            EventKind::Completed { .. } => Outcome::Ack,
            _ => Outcome::Term,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orfeas_wire::v1::{AdmittedJob, ImageInput};
    use tch::{Device, Tensor};

    #[test]
    fn inflated_mug_becomes_a_closed_coloured_mesh_in_both_formats() {
        let (manifest, path) = crate::model::tests::inflate();
        let model = crate::model::LoadedModel::load(manifest.clone(), &path, Device::Cpu, &crate::device::MemoryProbe::cpu()).unwrap();
        let png = std::fs::read(crate::model::tests::models_dir().join("../examples/mug.png")).unwrap();
        let prepared = crate::preprocess::prepare(&png, "image/png", 4096, manifest.input_size).unwrap();
        let [h, w] = manifest.input_size;
        let out = model.forward(&Tensor::from_slice(&prepared.chw).view([1, 4, h as i64, w as i64]), None).unwrap();
        let mut data = vec![0f32; out.numel()];
        let len = data.len();
        out.copy_data(&mut data, len);
        let job = AdmittedJob {
            job_id: uuid::Uuid::nil(),
            agent: "t".into(),
            model: "inflate".into(),
            formats: vec![Format::Glb, Format::Stl],
            params: Default::default(),
            image: ImageInput::Inline { media_type: "image/png".into(), data: vec![] },
            admitted_at_ms: 0,
            lane: Default::default(),
            batch_id: None,
        };
        let volume_job = VolumeJob { ticket: Ticket::new(job, 1, 1), data, manifest: Arc::new(manifest), image: prepared.rgba, colour: None };
        let mut called = false;
        let made = mesh_and_export(&volume_job, &Format::ALL, || called = true).unwrap();
        assert!(called, "exporting stage reported");
        let stats = &made.stats;
        assert!(stats.closed_manifold, "{stats:?}");
        assert_eq!(stats.components, 1, "the handle is attached: one piece");
        assert!(stats.volume > 0.05);
        assert_eq!(made.files.iter().map(|(f, _)| *f).collect::<Vec<_>>(), Format::ALL.to_vec());
        assert!(made.files.iter().all(|(f, files)| files.len() == 1 && files[0].name == format!("model.{}", f.extension())));
        assert_eq!(made.files[1].1[0].bytes.len() as u64, 84 + 50 * stats.faces);
        assert_eq!(&made.files[0].1[0].bytes[..4], b"glTF");
        assert!(made.report.problems.is_empty() || !made.report.closed, "{:?}", made.report);
        assert!(made.report.closed && made.report.two_manifold && made.report.winding_consistent);
        assert_eq!(made.previews.len(), 4);
        assert!(made.previews.iter().all(|(_, png)| png.starts_with(b"\x89PNG")));

        // Parameters are honoured: decimation, size, no colour, no previews.
        let mut params_job = volume_job;
        let mut admitted = (*params_job.ticket.job).clone();
        admitted.params = orfeas_wire::v1::JobParams {
            target_faces: Some(5_000),
            size_mm: Some(50.0),
            colour: Some(false),
            previews: Some(false),
            smooth: Some(false),
            texture: false,
            build_volume_mm: Some([40.0, 40.0, 40.0]),
            ..Default::default()
        };
        params_job.ticket = Ticket::new(admitted, 1, 1);
        let made = mesh_and_export(&params_job, &[Format::Stl], || {}).unwrap();
        assert!(made.stats.faces <= 5_500, "decimated to about the target: {}", made.stats.faces);
        assert!(made.stats.closed_manifold);
        let longest = made.report.bbox_mm.iter().cloned().fold(0.0f32, f32::max);
        assert!((longest - 50.0).abs() < 0.5, "longest side {longest} mm");
        assert!(made.previews.is_empty());
        assert_eq!(made.report.build_volume_mm, [40.0; 3]);
        assert!(!made.report.fits_build_volume && made.report.problems.iter().any(|p| p.contains("build volume")), "{:?}", made.report);

        // Texture on: the GLB embeds the image, the OBJ comes with its MTL and PNG.
        let mut textured_job = params_job;
        let mut admitted = (*textured_job.ticket.job).clone();
        admitted.params = orfeas_wire::v1::JobParams { target_faces: Some(5_000), texture: true, ..Default::default() };
        textured_job.ticket = Ticket::new(admitted, 1, 1);
        let made = mesh_and_export(&textured_job, &[Format::Glb, Format::Obj], || {}).unwrap();
        let glb = &made.files[0].1;
        assert_eq!(glb.len(), 1);
        let glb_text = String::from_utf8_lossy(&glb[0].bytes);
        assert!(glb_text.contains("TEXCOORD_0") && glb_text.contains("baseColorTexture") && glb_text.contains("image/png"));
        let names: Vec<&str> = made.files[1].1.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["model.obj", "model.mtl", "model.png"]);
        assert!(made.files[1].1[2].bytes.starts_with(b"\x89PNG"));
    }
}
