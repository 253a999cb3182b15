//! What a node needs to know to run; built and validated by the binary's
//! config loader before any actor starts.

use std::{path::PathBuf, time::Duration};

use orfeas_wire::SecretKey;

/// Everything one node is configured with.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// This node's name (unique in the cluster); `iss` of its events.
    pub node_id: String,
    /// The deployment name agents put in `aud`.
    pub deployment: String,
    /// NATS server URL(s), comma separated.
    pub nats_url: String,
    /// The nkey seed (`SU…`) the node authenticates with, when the server
    /// runs the isolation config.
    pub nats_nkey_seed: Option<String>,
    /// Replicas of streams and buckets (1 on a single server, 3 on a cluster).
    pub replicas: usize,
    /// The key this node signs its events with.
    pub node_key: SecretKey,
    /// Folder holding `<model>/manifest.toml` + `model.pt`.
    pub models_dir: PathBuf,
    /// Models to load; empty = every model in `models_dir`.
    pub models: Vec<String>,
    /// How objects are cut out of images without alpha: flood fill, or a learned
    /// matting model (`learned_matte.rs`).
    pub matting: crate::learned_matte::MattingMethod,
    /// Local folder of the object store (when `store_s3` is `None`).
    pub store_root: PathBuf,
    /// The S3-compatible bucket results go to instead, on a cluster.
    pub store_s3: Option<crate::store::S3Config>,
    /// CPU threads for inference on the CPU device (0 = libtorch's default).
    pub cpu_threads: usize,
    /// Use CUDA devices when present.
    pub use_cuda: bool,
    /// Largest batch the scheduler forms (also capped by each model and by
    /// what fits in the device's free memory); 1 turns batching off.
    pub max_batch: usize,
    /// Fraction of a device's free memory a batch may plan on (0–1].
    pub memory_safety: f64,
    /// How long JetStream waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// How often held jobs are marked in progress; well under `ack_wait`.
    pub progress_ack_interval: Duration,
    /// Deliveries before a job is given up.
    pub max_deliver: i64,
    /// Submissions the submit stream holds before refusing new ones.
    pub submit_queue_max: i64,
    /// Tolerated clock difference to agents, seconds.
    pub clock_skew_s: u64,
    /// Messages per minute per subject token, checked before the signature.
    pub preauth_per_minute: u32,
    /// Largest image side in pixels.
    pub max_image_side: u32,
    /// Where to serve `/metrics`, `/healthz`, `/readyz`; `None` = no endpoint.
    pub http_listen: Option<std::net::SocketAddr>,
    /// Extra time added to every batch on a device (simulated slow device for
    /// scale and fault tests; zero in production).
    pub simulated_latency: Duration,
    /// Extra time added to every sampler step of a pipeline model.
    pub simulated_step_latency: Duration,
    /// Step-level batching for pipeline models (false: whole-request).
    pub step_batching: bool,
    /// Added to the nice value of the meshing threads ([`crate::mesh_pool`]).
    pub mesh_nice: i32,
    /// How long a batch that is not full may wait for more compatible jobs
    /// (from its oldest job's admission); zero dispatches at once.
    pub max_queue_delay: Duration,
    /// Batches per device a node holds beyond the two it has on each
    /// device, per lane: the jobs agents take turns among.
    pub lookahead_batches: usize,
    /// On SIGTERM, how long in-flight jobs may take to finish before the
    /// rest are handed back to the queue.
    pub shutdown_grace: Duration,
}

impl NodeSettings {
    /// Defaults suitable for a single local node; the binary overrides them.
    pub fn local(node_id: &str, nats_url: &str, models_dir: PathBuf, store_root: PathBuf) -> Self {
        Self {
            node_id: node_id.to_string(),
            deployment: "orfeas".to_string(),
            nats_url: nats_url.to_string(),
            nats_nkey_seed: None,
            replicas: 1,
            node_key: SecretKey::generate(),
            models_dir,
            models: Vec::new(),
            matting: Default::default(),
            store_root,
            store_s3: None,
            cpu_threads: 0,
            use_cuda: true,
            max_batch: 8,
            memory_safety: 0.8,
            ack_wait: Duration::from_secs(60),
            progress_ack_interval: Duration::from_secs(15),
            max_deliver: 5,
            submit_queue_max: 100_000,
            clock_skew_s: 120,
            preauth_per_minute: 6_000,
            max_image_side: 4096,
            http_listen: None,
            simulated_latency: Duration::ZERO,
            simulated_step_latency: Duration::ZERO,
            step_batching: true,
            mesh_nice: crate::mesh_pool::MESH_NICE,
            max_queue_delay: Duration::ZERO,
            lookahead_batches: 2,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}
