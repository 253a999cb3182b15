//! This session's jobs: what the page shows for each, kept up to date by
//! one follower task per job reading the job's signed events, and
//! broadcast to every open page as Server-Sent Events.

use std::{collections::HashMap, sync::Arc, time::Duration};

use orfeas_wire::{
    client::{AgentClient, JobEvents},
    v1::{Event, EventKind, Format, JobParams, MeshStats, PrintReport},
};
use serde::Serialize;
use tokio::sync::{broadcast, Mutex};
use uuid::Uuid;

use super::report::{Line, Measured};

/// One result file as the page links it.
#[derive(Clone, Debug, Serialize)]
pub struct FileView {
    /// `glb`, `stl`, …
    pub format: String,
    /// Download name: `<image stem>.<ext>` (or a part's own name).
    pub name: String,
    /// Bytes.
    pub bytes: u64,
    /// SHA-256, hex.
    pub sha256: String,
    /// This studio's download URL.
    pub url: String,
    /// Object-store location (never sent to the page).
    #[serde(skip)]
    pub location: String,
}

/// A preview render as the page shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PreviewView {
    /// `front`, `back`, `left`, `top`.
    pub view: String,
    /// This studio's URL for the PNG.
    pub url: String,
    /// Object-store location (never sent to the page).
    #[serde(skip)]
    pub location: String,
    /// The PNG's signed SHA-256, checked when the studio fetches it.
    #[serde(skip)]
    pub sha256: Option<String>,
}

/// Everything the page knows about one job.
#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    /// The job id.
    pub id: Uuid,
    /// The uploaded file's name, for display.
    pub name: String,
    /// Model.
    pub model: String,
    /// Formats asked for.
    pub formats: Vec<String>,
    /// Longest side asked for (or defaulted), mm.
    pub size_mm: Option<f32>,
    /// The size is the studio's default for STL/3MF.
    pub size_defaulted: bool,
    /// Target faces asked for.
    pub faces: Option<u32>,
    /// Textured.
    pub texture: bool,
    /// When it was submitted, ms since the epoch.
    pub created_ms: u64,
    /// `submitted`, `queued`, `running`, `completed`, `failed`, `canceled`.
    pub state: String,
    /// Last stage reported.
    pub stage: Option<String>,
    /// 0–100.
    pub percent: u8,
    /// Expected ms until done, from `eta_from_ms`.
    pub eta_ms: Option<u64>,
    /// When the ETA was given, ms since the epoch.
    pub eta_from_ms: u64,
    /// Jobs ahead when it was accepted.
    pub queue_position: Option<u64>,
    /// Stages seen, in order (the page's progress trail).
    pub stages_seen: Vec<String>,
    /// A cancel was asked for while it runs (it ends at the next safe point).
    pub cancel_requested: bool,
    /// Why it failed: `{code, message}`.
    pub error: Option<serde_json::Value>,
    /// Result files.
    pub files: Vec<FileView>,
    /// Preview renders.
    pub previews: Vec<PreviewView>,
    /// Mesh facts.
    pub mesh: Option<MeshStats>,
    /// The node's printability report.
    pub report: Option<PrintReport>,
    /// Overhangs and walls measured by the studio.
    pub measured: Option<Measured>,
    /// The report in plain words.
    pub words: Vec<Line>,
}

impl JobView {
    /// A job just submitted: nothing seen of it yet.
    pub fn new(id: Uuid, name: String, model: &str, formats: &[Format], params: &JobParams, size_defaulted: bool) -> Self {
        let now = orfeas_actors::now_ms();
        Self {
            id,
            name,
            model: model.to_string(),
            formats: formats.iter().map(|f| f.extension().to_string()).collect(),
            size_mm: params.size_mm,
            size_defaulted,
            faces: params.target_faces,
            texture: params.texture,
            created_ms: now,
            state: "submitted".into(),
            stage: None,
            percent: 0,
            eta_ms: None,
            eta_from_ms: now,
            queue_position: None,
            stages_seen: vec![],
            cancel_requested: false,
            error: None,
            files: vec![],
            previews: vec![],
            mesh: None,
            report: None,
            measured: None,
            words: vec![],
        }
    }

    /// Whether nothing will change any more.
    pub fn finished(&self) -> bool {
        matches!(self.state.as_str(), "completed" | "failed" | "canceled")
    }
}

/// The session: its jobs in submission order, and the change feed.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Mutex<Inner>>,
    changes: broadcast::Sender<JobView>,
}

struct Inner {
    order: Vec<Uuid>,
    jobs: HashMap<Uuid, JobView>,
}

impl Session {
    /// An empty session.
    pub fn new() -> Self {
        Self { inner: Arc::new(Mutex::new(Inner { order: Vec::new(), jobs: HashMap::new() })), changes: broadcast::channel(1024).0 }
    }

    /// Every job, oldest first.
    pub async fn all(&self) -> Vec<JobView> {
        let inner = self.inner.lock().await;
        inner.order.iter().filter_map(|id| inner.jobs.get(id).cloned()).collect()
    }

    /// One job of this session.
    pub async fn get(&self, id: &Uuid) -> Option<JobView> {
        self.inner.lock().await.jobs.get(id).cloned()
    }

    /// A feed of changes (subscribe before reading [`all`](Self::all) so nothing falls between).
    pub fn subscribe(&self) -> broadcast::Receiver<JobView> {
        self.changes.subscribe()
    }

    /// Add a job and announce it.
    pub async fn insert(&self, view: JobView) {
        let mut inner = self.inner.lock().await;
        if !inner.jobs.contains_key(&view.id) {
            inner.order.push(view.id);
        }
        inner.jobs.insert(view.id, view.clone());
        drop(inner);
        let _ = self.changes.send(view);
    }

    /// Change a job (unless it already finished) and announce it.
    pub async fn update(&self, id: &Uuid, change: impl FnOnce(&mut JobView)) -> Option<JobView> {
        let mut inner = self.inner.lock().await;
        let view = inner.jobs.get_mut(id)?;
        if view.finished() {
            return None;
        }
        change(view);
        let view = view.clone();
        drop(inner);
        let _ = self.changes.send(view.clone());
        Some(view)
    }
}

/// Apply one event to the view.
pub fn apply(view: &mut JobView, event: &Event) {
    let seen = |stage: &str, view: &mut JobView| {
        if view.stages_seen.last().map(String::as_str) != Some(stage) {
            view.stages_seen.push(stage.to_string());
        }
    };
    match &event.kind {
        EventKind::Accepted { queue_position, eta_ms } => {
            if view.state == "submitted" {
                view.state = "queued".into();
            }
            view.queue_position = Some(*queue_position);
            view.eta_ms = *eta_ms;
            view.eta_from_ms = event.at_ms;
            seen("accepted", view);
        }
        EventKind::Progress { stage, percent, eta_ms } => {
            view.state = if matches!(stage, orfeas_wire::v1::Stage::Queued) { "queued" } else { "running" }.into();
            view.stage = Some(stage.as_str().to_string());
            view.percent = view.percent.max(*percent);
            view.eta_ms = *eta_ms;
            view.eta_from_ms = event.at_ms;
            seen(stage.as_str(), view);
        }
        EventKind::Completed { results, mesh, report, previews } => {
            view.state = "completed".into();
            view.percent = 100;
            view.eta_ms = Some(0);
            let stem = view.name.rsplit_once('.').map(|(s, _)| s).unwrap_or(&view.name).to_string();
            view.files.clear();
            for file in results {
                let name = format!("{stem}.{}", file.format.extension());
                let url = format!("/api/jobs/{}/files/{}", view.id, file.format.extension());
                view.files.push(FileView { format: file.format.extension().into(), name, bytes: file.bytes, sha256: file.sha256.clone(), url, location: file.location.clone() });
                for part in &file.parts {
                    let url = format!("/api/jobs/{}/files/{}", view.id, part.name);
                    view.files.push(FileView { format: part.name.rsplit('.').next().unwrap_or("").into(), name: part.name.clone(), bytes: part.bytes, sha256: part.sha256.clone(), url, location: part.location.clone() });
                }
            }
            view.previews = previews.iter().map(|p| PreviewView { view: p.view.clone(), url: format!("/api/jobs/{}/previews/{}", view.id, p.view), location: p.location.clone(), sha256: p.sha256.clone() }).collect();
            view.mesh = Some(mesh.clone());
            view.report = report.clone();
            seen("completed", view);
        }
        EventKind::Failed(f) | EventKind::Rejected(f) => {
            view.state = if f.code == orfeas_wire::codes::ErrorCode::Canceled { "canceled" } else { "failed" }.into();
            view.error = Some(serde_json::json!({"code": f.code.to_string(), "message": f.error}));
            seen(&view.state.clone(), view);
        }
    }
}

/// Follow one job until its last event (or `timeout`), keeping its view
/// current; on completion measure the GLB and write the report in words.
pub async fn follow(session: Session, mut client: AgentClient, mut events: JobEvents, id: Uuid, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seqs = std::collections::HashSet::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = match client.next_event(&mut events, left.max(Duration::from_millis(1))).await {
            Ok(event) => event,
            Err(e) => {
                // A timeout or a lost connection: the job may still finish;
                // the record answers what the events no longer can.
                let status = client.status(&id, Duration::from_secs(10)).await.ok();
                let terminal = status.as_ref().and_then(|s| s.terminal.clone());
                match terminal {
                    Some(kind) => {
                        let event = Event { job_id: id, seq: u64::MAX, node: String::new(), at_ms: orfeas_actors::now_ms(), kind };
                        finish(&session, &client, id, &event).await;
                    }
                    None => {
                        let canceled = status.as_ref().is_some_and(|s| s.state == "canceled");
                        session
                            .update(&id, |v| {
                                v.state = if canceled { "canceled" } else { "failed" }.into();
                                v.error = Some(serde_json::json!({"code": if canceled { "canceled" } else { "timeout" }, "message": format!("{e}")}));
                            })
                            .await;
                    }
                }
                return;
            }
        };
        if !seqs.insert(event.seq) {
            continue;
        }
        if event.kind.is_terminal() {
            finish(&session, &client, id, &event).await;
            return;
        }
        session.update(&id, |v| apply(v, &event)).await;
    }
}

async fn finish(session: &Session, client: &AgentClient, id: Uuid, event: &Event) {
    let mut measured = None;
    if let EventKind::Completed { results, report: Some(report), .. } = &event.kind {
        if let Some(glb) = results.iter().find(|f| f.format == Format::Glb) {
            if let Ok(bytes) = client.fetch_file(&id, &glb.location, Some(&glb.sha256), Duration::from_secs(30)).await {
                let longest = report.bbox_mm.iter().copied().fold(0.0f32, f32::max);
                measured = tokio::task::spawn_blocking(move || super::report::glb_mesh(&bytes).map(|(p, t)| super::report::measure(&p, &t, longest))).await.ok().flatten();
            }
        }
    }
    session
        .update(&id, |v| {
            apply(v, event);
            if let Some(report) = &v.report {
                v.words = super::report::plain_words(report, measured.as_ref());
            }
            v.measured = measured;
        })
        .await;
}

/// A job this agent ran before the page was served (`generate --studio`).
pub struct Adopted {
    /// The job.
    pub id: Uuid,
    /// The image's file name, for display and download names.
    pub name: String,
}

/// Put an earlier job into the session from its signed record: what it was
/// asked (the request as admitted) and, once it ended, its answer (the
/// report in words and the measured GLB, as for a job followed live). A
/// job whose record cannot be read is left out, with a warning.
pub async fn adopt(session: &Session, client: &AgentClient, job: Adopted) {
    let status = match client.status(&job.id, Duration::from_secs(10)).await {
        Ok(status) => status,
        Err(e) => {
            tracing::warn!(job_id = %job.id, error = %e, "not shown in the studio: its record cannot be read");
            return;
        }
    };
    let Some(request) = &status.request else {
        tracing::warn!(job_id = %job.id, "not shown in the studio: its record has no request");
        return;
    };
    let mut view = JobView::new(job.id, job.name, &request.model, &request.formats, &request.params, false);
    view.created_ms = status.updated_at_ms;
    session.insert(view).await;
    match status.terminal {
        Some(kind) => {
            let event = Event { job_id: job.id, seq: status.terminal_seq, node: status.node.clone(), at_ms: status.updated_at_ms, kind };
            finish(session, client, job.id, &event).await;
        }
        None => {
            session.update(&job.id, |v| v.state = status.state.clone()).await;
        }
    }
}
