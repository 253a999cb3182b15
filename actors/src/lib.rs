//! orfeas engine: one node's supervised actor tree and the parts it runs on.
//!
//! ```text
//! NodeSupervisor
//! ├── Ingress        pulls orfeas.jobs.submit.*; verifies; admits to the queue
//! ├── Scheduler      pulls admitted jobs; batches; dispatches to devices; acks
//! ├── GpuWorker[d]   one per device; owns the loaded models; batched forward
//! └── Postprocess    volume → mesh → files → store → terminal event
//! ```
//! [`node::run`] starts the tree against a NATS server and runs it until the
//! shutdown future resolves.
#![warn(missing_docs)]

pub mod admin;
pub mod audit;
pub mod backpressure;
pub mod batch;
pub mod batching;
pub mod bus;
pub mod catalog;
pub mod dead_letter;
pub mod device;
pub mod events;
pub mod fair_pull;
pub mod gate;
pub mod gpu_worker;
pub mod handoff;
pub mod heartbeat;
pub mod http;
pub mod image_input;
pub mod ingress;
pub mod inputs;
pub mod jobs;
pub mod lanes;
pub mod mesh_pool;
pub mod learned_matte;
pub mod matte;
pub mod metrics;
pub mod model;
pub mod node;
pub mod postprocess;
pub mod preprocess;
pub mod progress;
pub mod queue;
pub mod registry;
pub mod requests;
pub mod results;
pub mod roster;
pub mod scheduler;
pub mod server_version;
pub mod settings;
pub mod pipeline;
pub mod stages;
pub mod step_batcher;
pub mod store;
pub mod supervisor;
pub mod terminal;
pub mod ticket;
pub mod trace;
pub mod warmth;
pub mod topology;

pub use settings::NodeSettings;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
