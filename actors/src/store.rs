//! Result files in the object store (`object_store`): a local folder by
//! default, or an S3-compatible bucket shared by every node of a cluster.
//! Keys are `jobs/<agent>/<job_id>/<file>` (under the bucket's prefix).
//!
//! Agents get a URL per file: `file://` for the local folder, a pre-signed
//! GET URL for S3 (valid for `store.url_expiry_s`), so they need no
//! credentials of their own; agents without any storage access fetch over
//! NATS instead (see [`crate::results`]).

use std::{ops::Range, path::PathBuf, sync::Arc, time::Duration};

use object_store::{
    aws::{AmazonS3, AmazonS3Builder},
    local::LocalFileSystem,
    path::Path,
    signer::{Method, Signer},
    ObjectStore, ObjectStoreExt, PutPayload,
};
use sha2::{Digest, Sha256};

/// Storing failed (retryable: the job is redelivered).
#[derive(Debug, thiserror::Error)]
#[error("object store {op} of {key} failed: {detail}")]
pub struct StoreError {
    op: &'static str,
    key: String,
    detail: String,
}

impl StoreError {
    /// Whether the object does not exist (as opposed to the store failing).
    pub fn is_not_found(&self) -> bool {
        self.op == "find"
    }
}

/// An S3-compatible bucket (`store.url = "s3://bucket/prefix"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`; may be empty).
    pub prefix: String,
    /// Endpoint URL for S3-compatible servers (MinIO, Ceph, …); `None` = AWS.
    pub endpoint: Option<String>,
    /// Region (`us-east-1` for most S3-compatible servers).
    pub region: String,
    /// Access key id; `None` = the `AWS_*` environment / instance credentials.
    pub access_key_id: Option<String>,
    /// Secret access key, with `access_key_id`.
    pub secret_access_key: Option<String>,
    /// How long pre-signed URLs in `completed` events stay valid.
    pub url_expiry: Duration,
}

impl S3Config {
    /// Parse `s3://bucket[/prefix]` (other fields default; fill them in).
    pub fn from_url(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("store url {url:?} does not start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("store url {url:?} names no bucket"));
        }
        Ok(Self {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            url_expiry: Duration::from_secs(7 * 24 * 3600),
        })
    }
}

/// Where stored files live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreConfig {
    /// A local folder (created if missing): one node, or a shared mount.
    Local(PathBuf),
    /// An S3-compatible bucket shared by the cluster.
    S3(S3Config),
}

/// Where a stored file ended up.
#[derive(Clone, Debug)]
pub struct Stored {
    /// Key in the store.
    pub key: String,
    /// URL an agent can fetch (file:// for the local folder, pre-signed for S3).
    pub url: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

#[derive(Clone)]
enum Backend {
    Local {
        root: PathBuf,
    },
    S3 {
        s3: Arc<AmazonS3>,
        prefix: String,
        expiry: Duration,
    },
}

/// The result store.
#[derive(Clone)]
pub struct ResultStore {
    inner: Arc<dyn ObjectStore>,
    backend: Backend,
}

impl ResultStore {
    /// Open the configured store.
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        match config {
            StoreConfig::Local(root) => Self::local(root.clone()),
            StoreConfig::S3(s3) => Self::s3(s3),
        }
    }

    /// A store in a local folder (created if missing).
    pub fn local(root: PathBuf) -> Result<Self, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError {
            op: "open",
            key: root.display().to_string(),
            detail: e.to_string(),
        };
        std::fs::create_dir_all(&root).map_err(|e| err(&e))?;
        let root = root.canonicalize().map_err(|e| err(&e))?;
        let inner = LocalFileSystem::new_with_prefix(&root).map_err(|e| err(&e))?;
        Ok(Self {
            inner: Arc::new(inner),
            backend: Backend::Local { root },
        })
    }

    /// A store in an S3-compatible bucket. Nothing is contacted yet.
    pub fn s3(config: &S3Config) -> Result<Self, StoreError> {
        install_tls_provider();
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region);
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
        }
        let s3 = builder.build().map_err(|e| StoreError {
            op: "open",
            key: format!("s3://{}/{}", config.bucket, config.prefix),
            detail: e.to_string(),
        })?;
        let s3 = Arc::new(s3);
        Ok(Self {
            inner: s3.clone(),
            backend: Backend::S3 {
                s3,
                prefix: config.prefix.clone(),
                expiry: config.url_expiry,
            },
        })
    }

    /// Whether every node sees the same files (S3), so any node can serve
    /// any job's results.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::S3 { .. })
    }

    /// The key of a job's file.
    pub fn job_key(agent: &str, job_id: &uuid::Uuid, file: &str) -> String {
        format!("jobs/{agent}/{job_id}/{file}")
    }

    fn path(&self, key: &str) -> Path {
        match &self.backend {
            Backend::S3 { prefix, .. } if !prefix.is_empty() => {
                Path::from(format!("{prefix}/{key}"))
            }
            _ => Path::from(key),
        }
    }

    /// Write `bytes` under `key` (overwrites: a retried job writes the same files).
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<Stored, StoreError> {
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let len = bytes.len() as u64;
        self.inner
            .put(&self.path(key), PutPayload::from(bytes))
            .await
            .map_err(|e| StoreError {
                op: "put",
                key: key.to_string(),
                detail: e.to_string(),
            })?;
        let url = self.url(key).await?;
        Ok(Stored {
            key: key.to_string(),
            url,
            bytes: len,
            sha256,
        })
    }

    /// A URL an agent can fetch `key` from: `file://` for a local folder,
    /// a fresh pre-signed GET URL for S3.
    pub async fn url(&self, key: &str) -> Result<String, StoreError> {
        match &self.backend {
            Backend::Local { root } => Ok(format!("file://{}", root.join(key).display())),
            Backend::S3 { s3, expiry, .. } => s3
                .signed_url(Method::GET, &self.path(key), *expiry)
                .await
                .map(|u| u.to_string())
                .map_err(|e| StoreError {
                    op: "sign",
                    key: key.to_string(),
                    detail: e.to_string(),
                }),
        }
    }

    fn read_err(key: &str, e: object_store::Error) -> StoreError {
        let op = if matches!(e, object_store::Error::NotFound { .. }) {
            "find"
        } else {
            "get"
        };
        StoreError {
            op,
            key: key.to_string(),
            detail: e.to_string(),
        }
    }

    /// Read a stored file back.
    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let result = self
            .inner
            .get(&self.path(key))
            .await
            .map_err(|e| Self::read_err(key, e))?;
        Ok(result
            .bytes()
            .await
            .map_err(|e| Self::read_err(key, e))?
            .to_vec())
    }

    /// Size of a stored file in bytes.
    pub async fn size(&self, key: &str) -> Result<u64, StoreError> {
        Ok(self
            .inner
            .head(&self.path(key))
            .await
            .map_err(|e| Self::read_err(key, e))?
            .size)
    }

    /// Bytes `range` of a stored file (clamped to its end).
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .inner
            .get_range(&self.path(key), range)
            .await
            .map_err(|e| Self::read_err(key, e))?
            .to_vec())
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
        assert_eq!(store.size(&key).await.unwrap(), 5);
        assert_eq!(store.get_range(&key, 1..3).await.unwrap(), b"ol");
        assert!(!store.is_shared());
        let missing = store.size("jobs/alice/none/model.stl").await.unwrap_err();
        assert!(missing.is_not_found(), "{missing}");
    }

    #[test]
    fn s3_urls_parse_into_bucket_and_prefix() {
        let c = S3Config::from_url("s3://results/orfeas/prod/").unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("results", "orfeas/prod")
        );
        assert_eq!(S3Config::from_url("s3://results").unwrap().prefix, "");
        assert!(S3Config::from_url("s3:///x")
            .unwrap_err()
            .contains("no bucket"));
        assert!(S3Config::from_url("gs://b").unwrap_err().contains("s3://"));
    }

    #[tokio::test]
    async fn s3_urls_are_presigned_for_the_prefixed_key() {
        let mut c = S3Config::from_url("s3://results/pre").unwrap();
        c.endpoint = Some("http://127.0.0.1:9".into());
        c.access_key_id = Some("AKID".into());
        c.secret_access_key = Some("secret".into());
        c.url_expiry = Duration::from_secs(600);
        let store = ResultStore::s3(&c).unwrap();
        assert!(store.is_shared());
        let url = store.url("jobs/a/j/model.glb").await.unwrap();
        assert!(
            url.starts_with("http://127.0.0.1:9/results/pre/jobs/a/j/model.glb?"),
            "{url}"
        );
        for part in [
            "X-Amz-Signature=",
            "X-Amz-Expires=600",
            "X-Amz-Credential=AKID",
        ] {
            assert!(url.contains(part), "{part} missing in {url}");
        }
    }
}

/// Every HTTP client in the process (S3 transport, OTLP exporter) uses
/// rustls without a built-in crypto provider (no aws-lc-rs C build), and
/// building one fails until a provider is installed: install ring's, once
/// per process, before any client is built. Failing means one is installed.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
