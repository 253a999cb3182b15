//! Images submitted by reference (`ImageInput::Ref`): the node that runs a
//! job fetches the bytes just before preprocessing.
//!
//! - Sources: the JetStream object store `orfeas_uploads` (object names
//!   `<agent>/…`) or the node's configured object store (keys
//!   `uploads/<agent>/…`, the store that holds results). The reference's
//!   form and prefix were checked at admission; they are checked again here
//!   (cheap) so a queue message can never make a node read another agent's
//!   upload.
//! - Bounded: the stored size is read first and must equal the signed
//!   `size`; then at most `size + 1` bytes are read, their count must be
//!   `size` and their SHA-256 the signed digest ([`image_input::check_digest`])
//!   before anything parses them.
//! - Outcomes: the bytes; `input_missing` (404, final) when the object is
//!   not there; `input_mismatch` (422, final) when size or digest differ;
//!   `unavailable` (503, retryable: the job is redelivered) when the store
//!   did not answer.
//! - Not an actor: called by the GpuWorker's preprocessing task.

use async_nats::jetstream::{self, object_store::GetErrorKind};
use orfeas_wire::{
    subjects,
    v1::{Failure, ImageInput, RefStore, MAX_REF_IMAGE_BYTES},
    ErrorCode,
};
use tokio::io::AsyncReadExt;

use crate::{image_input, store::ResultStore, ticket::Ticket};

/// Why referenced bytes could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No such object.
    #[error("image {0} is not in its store")]
    Missing(String),
    /// The object differs from what the message signed.
    #[error("image {key}: {why}")]
    Mismatch {
        /// The object.
        key: String,
        /// What differs.
        why: String,
    },
    /// The reference is not one this agent may use (admission checks it first).
    #[error("image reference refused: {0}")]
    Refused(String),
    /// The store did not answer; worth another try.
    #[error("image {key} could not be fetched: {detail}")]
    Unavailable {
        /// The object.
        key: String,
        /// The store's error.
        detail: String,
    },
}

impl FetchError {
    /// The failure the job ends with (or is retried on, for `unavailable`).
    pub fn failure(&self) -> Failure {
        let code = match self {
            Self::Missing(_) => ErrorCode::InputMissing,
            Self::Mismatch { .. } => ErrorCode::InputMismatch,
            Self::Refused(_) => ErrorCode::Forbidden,
            Self::Unavailable { .. } => ErrorCode::Unavailable,
        };
        Failure::new(code, self.to_string())
    }
}

/// Where referenced images are read from.
#[derive(Clone)]
pub struct Inputs {
    /// JetStream, for the uploads bucket.
    pub js: jetstream::Context,
    /// The configured object store.
    pub store: ResultStore,
}

impl Inputs {
    /// The bytes of `image` for `agent`'s job: `None` for an inline image
    /// (its bytes are in the job), the checked bytes for a reference.
    pub async fn fetch(&self, agent: &str, image: &ImageInput) -> Result<Option<Vec<u8>>, FetchError> {
        let ImageInput::Ref { store, key, sha256, size, .. } = image else { return Ok(None) };
        image.check_ref(agent, MAX_REF_IMAGE_BYTES).map_err(|(_, why)| FetchError::Refused(why))?;
        let unavailable = |detail: String| FetchError::Unavailable { key: key.clone(), detail };
        let mismatch = |why: String| FetchError::Mismatch { key: key.clone(), why };
        let bytes = match store {
            RefStore::Jetstream => {
                let bucket = self.js.get_object_store(subjects::UPLOADS_BUCKET).await.map_err(|e| unavailable(e.to_string()))?;
                let object = match bucket.get(key).await {
                    Ok(object) => object,
                    Err(e) if e.kind() == GetErrorKind::NotFound => return Err(FetchError::Missing(key.clone())),
                    Err(e) => return Err(unavailable(e.to_string())),
                };
                if object.info().size as u64 != *size {
                    return Err(mismatch(format!("stored size {} is not the signed size {size}", object.info().size)));
                }
                let mut bytes = Vec::with_capacity(*size as usize);
                object.take(size + 1).read_to_end(&mut bytes).await.map_err(|e| unavailable(e.to_string()))?;
                bytes
            }
            RefStore::ObjectStore => read_store(&self.store, key, *size).await?,
        };
        check(key, bytes, sha256, *size).map(Some)
    }

    /// Replace every reference in `batch` by its checked bytes (inline);
    /// jobs whose bytes cannot be had go to `fail` with their failure.
    pub async fn resolve(inputs: Option<&Self>, batch: Vec<Ticket>, fail: impl Fn(Ticket, Failure)) -> Vec<Ticket> {
        let mut ready = Vec::with_capacity(batch.len());
        for mut ticket in batch {
            if !matches!(ticket.job.image, ImageInput::Ref { .. }) {
                ready.push(ticket);
                continue;
            }
            let fetched = match inputs {
                Some(inputs) => inputs.fetch(&ticket.job.agent, &ticket.job.image).await,
                None => Err(FetchError::Unavailable { key: String::new(), detail: "this node has no input store".into() }),
            };
            match fetched {
                Ok(Some(data)) => {
                    let mut job = (*ticket.job).clone();
                    job.image = ImageInput::Inline { media_type: job.image.media_type().to_string(), data };
                    ticket.job = std::sync::Arc::new(job);
                    ready.push(ticket);
                }
                Ok(None) => ready.push(ticket),
                Err(e) => {
                    tracing::info!(job_id = %ticket.job.job_id, error = %e, "image by reference refused");
                    fail(ticket, e.failure());
                }
            }
        }
        ready
    }
}

/// At most `size` + 1 bytes of `key` in the configured store, after its
/// stored size matched `size`.
async fn read_store(store: &ResultStore, key: &str, size: u64) -> Result<Vec<u8>, FetchError> {
    let unavailable = |detail: String| FetchError::Unavailable { key: key.to_string(), detail };
    let stored = match store.size(key).await {
        Ok(stored) => stored,
        Err(e) if e.is_not_found() => return Err(FetchError::Missing(key.to_string())),
        Err(e) => return Err(unavailable(e.to_string())),
    };
    if stored != size {
        return Err(FetchError::Mismatch { key: key.to_string(), why: format!("stored size {stored} is not the signed size {size}") });
    }
    match store.get_range(key, 0..size + 1).await {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.is_not_found() => Err(FetchError::Missing(key.to_string())),
        Err(e) => Err(unavailable(e.to_string())),
    }
}

/// The bytes read must be `size` long and hash to `sha256`.
fn check(key: &str, bytes: Vec<u8>, sha256: &[u8], size: u64) -> Result<Vec<u8>, FetchError> {
    let mismatch = |why: String| FetchError::Mismatch { key: key.to_string(), why };
    if bytes.len() as u64 != size {
        return Err(mismatch(format!("read {} bytes where the signed size is {size}", bytes.len())));
    }
    image_input::check_digest(&bytes, &hex::encode(sha256)).map_err(|e| mismatch(e.to_string()))?;
    Ok(bytes)
}

/// The bytes and media type of an image that is in the job (inline, or
/// resolved by [`Inputs::resolve`]).
pub fn inline(image: &ImageInput) -> Result<(&str, &[u8]), FetchError> {
    match image {
        ImageInput::Inline { media_type, data } => Ok((media_type, data)),
        ImageInput::Ref { key, .. } => Err(FetchError::Unavailable { key: key.clone(), detail: "the reference was not resolved".into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[tokio::test]
    async fn store_reads_are_bounded_and_checked_before_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = ResultStore::local(dir.path().to_path_buf()).unwrap();
        let key = "uploads/alice/x.png";
        store.put(key, b"0123456789".to_vec()).await.unwrap();
        let digest = Sha256::digest(b"0123456789").to_vec();
        let read = read_store(&store, key, 10).await.unwrap();
        assert_eq!(check(key, read, &digest, 10).unwrap(), b"0123456789");
        // A size lie either way is refused from the stored size, before reading.
        for lie in [9, 11] {
            let e = read_store(&store, key, lie).await.unwrap_err();
            assert!(matches!(e, FetchError::Mismatch { .. }), "{e}");
            assert_eq!(e.failure().code, ErrorCode::InputMismatch);
        }
        // Read bytes of another length or digest are refused too.
        assert!(matches!(check(key, b"012345678".to_vec(), &digest, 10), Err(FetchError::Mismatch { .. })));
        let e = check(key, b"0123456780".to_vec(), &digest, 10).unwrap_err();
        assert!(e.to_string().contains("sha256"), "{e}");
        let e = read_store(&store, "uploads/alice/none.png", 10).await.unwrap_err();
        assert_eq!((e.failure().code, e.failure().status, e.failure().retryable), (ErrorCode::InputMissing, 404, false), "{e}");
        assert!(FetchError::Unavailable { key: key.into(), detail: "down".into() }.failure().retryable);
    }

    #[tokio::test]
    async fn resolve_passes_inline_jobs_and_fails_unfetchable_references_retryably() {
        let admitted = |image: ImageInput| {
            Ticket::new(
                orfeas_wire::v1::AdmittedJob {
                    job_id: uuid::Uuid::now_v7(),
                    agent: "alice".into(),
                    model: "null".into(),
                    formats: vec![],
                    image,
                    params: Default::default(),
                    admitted_at_ms: 0,
                    lane: Default::default(),
                    batch_id: None,
                },
                1,
                1,
            )
        };
        let inline_job = admitted(ImageInput::Inline { media_type: "image/png".into(), data: vec![1] });
        let ref_job = admitted(ImageInput::by_reference("alice", RefStore::Jetstream, "x.png", "image/png", b"x"));
        let failed = std::sync::Mutex::new(Vec::new());
        let ready = Inputs::resolve(None, vec![inline_job.clone(), ref_job.clone()], |t, f| failed.lock().unwrap().push((t.job.job_id, f))).await;
        assert_eq!(ready.iter().map(|t| t.job.job_id).collect::<Vec<_>>(), vec![inline_job.job.job_id]);
        let failed = failed.into_inner().unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!((failed[0].0, failed[0].1.code, failed[0].1.retryable), (ref_job.job.job_id, ErrorCode::Unavailable, true));
    }

    #[test]
    fn an_unresolved_reference_is_never_decoded() {
        let image = ImageInput::by_reference("alice", RefStore::Jetstream, "x.png", "image/png", b"x");
        assert!(inline(&image).is_err());
        let inline_image = ImageInput::Inline { media_type: "image/png".into(), data: vec![1] };
        assert_eq!(inline(&inline_image).unwrap(), ("image/png", &[1u8][..]));
    }
}
