//! The agent side of the CLI: build a job from an image file, follow its
//! events, fetch its files. Shared by `generate` and `submit`.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use orfeas_wire::{
    client::{AgentClient, JobEvents},
    v1::{Event, EventKind, Format, ImageInput, JobParams, ResultFile, SubmitJob},
};
use uuid::Uuid;

/// Media type of an image file, from its bytes.
pub fn media_type(bytes: &[u8], path: &Path) -> Result<&'static str> {
    match bytes {
        [0x89, b'P', b'N', b'G', ..] => Ok("image/png"),
        [0xff, 0xd8, 0xff, ..] => Ok("image/jpeg"),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Ok("image/webp"),
        _ => bail!("{} is not a PNG, JPEG or WebP image", path.display()),
    }
}

/// Parse format names.
pub fn formats(names: &[String]) -> Result<Vec<Format>> {
    names
        .iter()
        .map(|n| Format::parse(n).with_context(|| format!("unknown format {n:?} (glb, stl, obj, ply, 3mf)")))
        .collect()
}

/// A job for `image` (a fresh time-ordered job id).
pub fn job_for(image: &Path, model: &str, formats: Vec<Format>, params: JobParams) -> Result<SubmitJob> {
    let data = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let media_type = media_type(&data, image)?.to_string();
    Ok(SubmitJob { job_id: Uuid::now_v7(), model: model.to_string(), image: ImageInput::Inline { media_type, data }, formats, params })
}

/// Read events until the terminal one, calling `on_event` for each.
pub async fn follow(
    client: &mut AgentClient,
    events: &mut JobEvents,
    timeout: Duration,
    mut on_event: impl FnMut(&Event),
) -> Result<Event> {
    let deadline = Instant::now() + timeout;
    // Events can arrive out of order (a worker may report progress before
    // Ingress' `accepted` lands); `seq` orders them. A re-sent event keeps
    // its seq: show it once.
    let mut seen = std::collections::HashSet::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no final event within {timeout:?}");
        }
        let event = client.next_event(events, left).await?;
        if !seen.insert(event.seq) {
            continue;
        }
        on_event(&event);
        if event.kind.is_terminal() {
            return Ok(event);
        }
    }
}

/// Where each result file goes: `output` as a file stem (`out.glb` →
/// `out.glb`, `out.stl`) when it has an extension, else a folder holding
/// `<image stem>.<ext>`.
pub fn output_path(output: Option<&Path>, image: &Path, format: Format) -> PathBuf {
    let stem = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    match output {
        Some(out) if out.extension().is_some() => out.with_extension(format.extension()),
        Some(dir) => dir.join(format!("{stem}.{}", format.extension())),
        None => PathBuf::from(format!("{stem}.{}", format.extension())),
    }
}

/// Put a result file at `to`: copied from its `file://` URL when this
/// machine sees the node's folder, otherwise fetched over NATS (chunks
/// checked against the file's SHA-256), which works for any store.
pub async fn fetch(client: &AgentClient, job_id: &Uuid, file: &ResultFile, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    if let Some(path) = file.url.strip_prefix("file://").filter(|p| Path::new(p).is_file()) {
        std::fs::copy(path, to).with_context(|| format!("copying {path} to {}", to.display()))?;
        return Ok(());
    }
    let bytes = client
        .fetch_file(job_id, &file.location, Some(&file.sha256), Duration::from_secs(30))
        .await
        .with_context(|| format!("fetching {} over NATS", file.location))?;
    std::fs::write(to, bytes).with_context(|| format!("writing {}", to.display()))?;
    Ok(())
}

/// One line describing an event.
pub fn describe(event: &Event) -> String {
    match &event.kind {
        EventKind::Accepted { queue_position } => format!("accepted (queue position {queue_position})"),
        EventKind::Progress { stage, percent } => format!("{} {percent}%", stage.as_str()),
        EventKind::Completed { results, mesh, .. } => format!(
            "completed: {} files, {} faces, closed manifold: {}",
            results.len(),
            mesh.faces,
            mesh.closed_manifold
        ),
        EventKind::Failed(f) | EventKind::Rejected(f) => format!("{} {} ({}): {}", event.kind.name(), f.status, f.code, f.error),
    }
}
