//! The agent side of the CLI: build a job from an image file, follow its
//! events, fetch its files. Shared by `generate` and `submit`.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use orfeas_wire::{
    client::{AgentClient, JobEvents},
    v1::{Event, EventKind, Format, ImageInput, JobParams, ResultFile, SubmitJob, MAX_INLINE_IMAGE_BYTES},
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

/// Upload `job`'s inline image to the agent's part of the uploads object
/// store and refer to it instead, when `force` or when it is over the inline
/// cap ([`MAX_INLINE_IMAGE_BYTES`]); returns the object's key if it did.
pub async fn upload_if(client: &AgentClient, job: &mut SubmitJob, force: bool) -> Result<Option<String>> {
    let ImageInput::Inline { media_type, data } = &job.image else { return Ok(None) };
    if !force && data.len() <= MAX_INLINE_IMAGE_BYTES {
        return Ok(None);
    }
    let extension = media_type.strip_prefix("image/").unwrap_or("img");
    let image = client.upload(&format!("{}.{extension}", job.job_id), media_type, data).await.context("uploading the image")?;
    let ImageInput::Ref { key, .. } = &image else { bail!("upload returned no reference") };
    let key = key.clone();
    job.image = image;
    Ok(Some(key))
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

/// Put a result file at `to`, and its parts beside it under their names;
/// returns the paths written. Each file is copied from its `file://` URL
/// when this machine sees the node's folder, otherwise fetched over NATS
/// (chunks checked against the file's SHA-256), which works for any store.
pub async fn fetch(client: &AgentClient, job_id: &Uuid, file: &ResultFile, to: &Path) -> Result<Vec<PathBuf>> {
    if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let get = |url: String, location: String, sha256: String, to: PathBuf| async move {
        if let Some(path) = url.strip_prefix("file://").filter(|p| Path::new(p).is_file()) {
            copy_verified(Path::new(path), &to, Some(&sha256))?;
            return anyhow::Ok(to);
        }
        let bytes = client
            .fetch_file(job_id, &location, Some(&sha256), Duration::from_secs(30))
            .await
            .with_context(|| format!("fetching {location} over NATS"))?;
        std::fs::write(&to, bytes).with_context(|| format!("writing {}", to.display()))?;
        Ok(to)
    };
    let mut written = vec![get(file.url.clone(), file.location.clone(), file.sha256.clone(), to.to_path_buf()).await?];
    for part in &file.parts {
        // The name comes from the node: a plain file name, never a path.
        if part.name.is_empty() || part.name.contains(['/', '\\']) || part.name.starts_with('.') {
            bail!("result part name {:?} is not a plain file name", part.name);
        }
        let beside = to.with_file_name(&part.name);
        written.push(get(part.url.clone(), part.location.clone(), part.sha256.clone(), beside).await?);
    }
    Ok(written)
}

/// Copy a stored file this machine sees (a `file://` URL) to `to`, checking
/// it against the signed `sha256` first when there is one: a file changed in
/// the store after the node signed its manifest is refused, as over NATS.
pub fn copy_verified(from: &Path, to: &Path, sha256: Option<&str>) -> Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    if let Some(want) = sha256 {
        use sha2::Digest;
        let got = hex::encode(sha2::Sha256::digest(&bytes));
        if got != want {
            bail!("{}: sha256 {got} does not match the signed manifest's {want}", from.display());
        }
    }
    std::fs::write(to, bytes).with_context(|| format!("writing {}", to.display()))
}

/// One line describing an event.
pub fn describe(event: &Event) -> String {
    match &event.kind {
        EventKind::Accepted { queue_position, eta_ms } => match eta_ms {
            Some(eta) => format!("accepted (queue position {queue_position}, done in ~{:.1} s)", *eta as f64 / 1000.0),
            None => format!("accepted (queue position {queue_position})"),
        },
        EventKind::Progress { stage, percent, eta_ms } => match eta_ms {
            Some(eta) => format!("{} {percent}% (~{:.1} s to go)", stage.as_str(), *eta as f64 / 1000.0),
            None => format!("{} {percent}%", stage.as_str()),
        },
        EventKind::Completed { results, mesh, .. } => format!(
            "completed: {} files, {} faces, closed manifold: {}",
            results.len(),
            mesh.faces,
            mesh.closed_manifold
        ),
        EventKind::Failed(f) | EventKind::Rejected(f) => format!("{} {} ({}): {}", event.kind.name(), f.status, f.code, f.error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_file_is_copied_only_when_it_matches_its_signed_sha256() {
        use sha2::Digest;
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("preview-front.png"), dir.path().join("out.png"));
        std::fs::write(&from, b"the png the node signed").unwrap();
        let signed = hex::encode(sha2::Sha256::digest(b"the png the node signed"));
        copy_verified(&from, &to, Some(&signed)).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"the png the node signed");

        std::fs::write(&from, b"changed in the store").unwrap();
        std::fs::remove_file(&to).unwrap();
        let err = copy_verified(&from, &to, Some(&signed)).unwrap_err();
        assert!(format!("{err:#}").contains("does not match the signed manifest"), "{err:#}");
        assert!(!to.exists(), "nothing is written from a file that fails the check");
        // Nothing signed (a node from before previews carried a sha256): copied as is.
        copy_verified(&from, &to, None).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"changed in the store");
    }
}
