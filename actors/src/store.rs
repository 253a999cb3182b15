//! Result files in the object store (`object_store`; a local folder by
//! default). Keys are `jobs/<agent>/<job_id>/<file>`.

use std::{path::PathBuf, sync::Arc};

use object_store::{local::LocalFileSystem, path::Path, ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

/// Storing failed (retryable: the job is redelivered).
#[derive(Debug, thiserror::Error)]
#[error("object store {op} of {key} failed: {detail}")]
pub struct StoreError {
    op: &'static str,
    key: String,
    detail: String,
}

/// Where a stored file ended up.
#[derive(Clone, Debug)]
pub struct Stored {
    /// Key in the store.
    pub key: String,
    /// URL an agent can fetch (file:// for the local folder).
    pub url: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// The result store.
#[derive(Clone)]
pub struct ResultStore {
    inner: Arc<dyn ObjectStore>,
    root: PathBuf,
}

impl ResultStore {
    /// A store in a local folder (created if missing).
    pub fn local(root: PathBuf) -> Result<Self, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError { op: "open", key: root.display().to_string(), detail: e.to_string() };
        std::fs::create_dir_all(&root).map_err(|e| err(&e))?;
        let root = root.canonicalize().map_err(|e| err(&e))?;
        let inner = LocalFileSystem::new_with_prefix(&root).map_err(|e| err(&e))?;
        Ok(Self { inner: Arc::new(inner), root })
    }

    /// The key of a job's file.
    pub fn job_key(agent: &str, job_id: &uuid::Uuid, file: &str) -> String {
        format!("jobs/{agent}/{job_id}/{file}")
    }

    /// Write `bytes` under `key` (overwrites: a retried job writes the same files).
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<Stored, StoreError> {
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let len = bytes.len() as u64;
        self.inner
            .put(&Path::from(key), PutPayload::from(bytes))
            .await
            .map_err(|e| StoreError { op: "put", key: key.to_string(), detail: e.to_string() })?;
        let url = format!("file://{}", self.root.join(key).display());
        Ok(Stored { key: key.to_string(), url, bytes: len, sha256 })
    }

    /// Read a stored file back.
    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError { op: "get", key: key.to_string(), detail: e.to_string() };
        let result = self.inner.get(&Path::from(key)).await.map_err(|e| err(&e))?;
        Ok(result.bytes().await.map_err(|e| err(&e))?.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_then_get_returns_the_bytes_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = ResultStore::local(dir.path().join("store")).unwrap();
        let key = ResultStore::job_key("alice", &uuid::Uuid::nil(), "model.stl");
        let stored = store.put(&key, b"solid".to_vec()).await.unwrap();
        assert_eq!(stored.bytes, 5);
        assert_eq!(stored.sha256, hex::encode(Sha256::digest(b"solid")));
        assert!(stored.url.starts_with("file:///"));
        assert_eq!(store.get(&key).await.unwrap(), b"solid");
        assert!(std::path::Path::new(stored.url.trim_start_matches("file://")).exists());
    }
}
