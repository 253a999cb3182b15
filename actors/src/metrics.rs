//! Every metric of a node, in one place. Prefix `orfeas_`, unit suffixes,
//! labels from closed sets only: error codes, stages, outcomes, lanes,
//! models and devices known at start, and registered agent names (bounded
//! by the registry) — never job ids.

use std::sync::LazyLock;

use prometheus::{
    exponential_buckets, register_gauge_vec, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge_vec, Encoder, GaugeVec, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, TextEncoder,
};

fn seconds_buckets() -> Vec<f64> {
    exponential_buckets(0.0005, 2.0, 18).expect("valid buckets")
}

/// Requests by agent, operation and outcome (`accepted` or an error code).
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("orfeas_requests_total", "Agent requests by agent, operation and outcome", &["agent", "op", "outcome"])
        .expect("metric registers once")
});

/// Errors by agent and code (rejections and failed jobs).
pub static ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("orfeas_errors_total", "Rejections and job failures by agent and code", &["agent", "code"])
        .expect("metric registers once")
});

/// Finished jobs by outcome (`completed` or an error code).
pub static JOBS_FINISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("orfeas_jobs_finished_total", "Jobs with a terminal answer, by outcome", &["outcome"])
        .expect("metric registers once")
});

/// Jobs this node holds, by agent.
pub static ACTIVE_JOBS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("orfeas_active_jobs", "Jobs held by this node (waiting or running), by agent", &["agent"])
        .expect("metric registers once")
});

/// Admitted jobs waiting in JetStream, by lane.
pub static QUEUE_DEPTH: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("orfeas_queue_depth", "Admitted jobs in the queue (waiting, or held by a node and not yet answered), by lane", &["lane"])
        .expect("metric registers once")
});

/// Time from admission to the start of the forward pass, by lane.
pub static QUEUE_WAIT: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!("orfeas_queue_wait_seconds", "Admission to forward pass", &["lane"], seconds_buckets())
        .expect("metric registers once")
});

/// Jobs per forward pass.
pub static BATCH_SIZE: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!("orfeas_batch_size", "Jobs per forward pass", &["model"], vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0])
        .expect("metric registers once")
});

/// Batch size over the largest batch allowed for the model.
pub static BATCH_FILL: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "orfeas_batch_fill_ratio",
        "Jobs per forward pass divided by the batch cap",
        &["model"],
        vec![0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
    )
    .expect("metric registers once")
});

/// Seconds per pipeline stage.
pub static STAGE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!("orfeas_stage_seconds", "Time spent per pipeline stage", &["stage"], seconds_buckets())
        .expect("metric registers once")
});

/// Admission to terminal answer.
pub static JOB_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!("orfeas_job_seconds", "Admission to terminal answer, by model", &["model"], seconds_buckets())
        .expect("metric registers once")
});

/// Device memory in bytes (`kind` = used | free | total).
pub static DEVICE_MEMORY: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!("orfeas_device_memory_bytes", "Device memory by device and kind (used, free, total)", &["device", "kind"])
        .expect("metric registers once")
});

/// Device utilisation 0–1.
pub static DEVICE_UTILIZATION: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!("orfeas_device_utilization_ratio", "Device compute utilisation (0-1)", &["device"]).expect("metric registers once")
});

/// Model load time, seconds (load + contract-check warm-up).
pub static MODEL_LOAD_SECONDS: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!("orfeas_model_load_seconds", "Seconds to load and warm a model on a device", &["model", "device"])
        .expect("metric registers once")
});

/// Actor restarts by actor.
pub static ACTOR_RESTARTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("orfeas_actor_restarts_total", "Actor restarts by the supervisor", &["actor"])
        .expect("metric registers once")
});

/// NATS reconnects.
pub static NATS_RECONNECTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("orfeas_nats_reconnects_total", "Reconnections to NATS").expect("metric registers once")
});

/// Pull requests given up unanswered (see [`crate::bus::PULL_PATIENCE`]).
pub static PULLS_ABANDONED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("orfeas_pulls_abandoned_total", "Queue pull requests given up after no answer").expect("metric registers once")
});

/// Held jobs handed back because nothing settled them in time (see
/// [`crate::scheduler::FINISH_PATIENCE`]); any count is a bug to report.
pub static JOBS_UNACCOUNTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("orfeas_jobs_unaccounted_total", "Held jobs handed back because no answer came for them in time").expect("metric registers once")
});

/// Jobs given up after their last delivery.
pub static DEAD_LETTERS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("orfeas_dead_letters_total", "Jobs failed for good after exhausting deliveries").expect("metric registers once")
});

/// Warm-up time of a model (its first forward passes, B = 1 and 2), seconds.
pub static MODEL_WARMUP_SECONDS: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!("orfeas_model_warmup_seconds", "Seconds of a model's warm-up forward passes on a device", &["model", "device"])
        .expect("metric registers once")
});

/// A device's batch ceiling per model (lowered by out-of-memory errors).
pub static BATCH_CEILING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("orfeas_batch_ceiling", "Largest batch a device tries for a model after out-of-memory errors", &["model", "device"])
        .expect("metric registers once")
});

/// Forward passes that ran out of device memory.
pub static DEVICE_OOM: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("orfeas_device_oom_total", "Forward passes that ran out of device memory", &["model", "device"])
        .expect("metric registers once")
});

/// Forward passes that failed with a device-fatal error (the worker restarts).
pub static DEVICE_LOST: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("orfeas_device_lost_total", "Forward passes that left the device unusable (its worker restarts)", &["model", "device"])
        .expect("metric registers once")
});

/// Model reloads per device by outcome (`ok`, `failed`).
pub static MODEL_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("orfeas_model_reloads_total", "Model reloads on a device, by outcome", &["outcome"]).expect("metric registers once")
});

/// Records appended to this node's audit chain.
pub static AUDIT_RECORDS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("orfeas_audit_records_total", "Records appended to this node's audit chain").expect("metric registers once")
});

/// All metrics in the Prometheus text format.
pub fn render() -> String {
    // Touch every metric so each appears (at zero) from the first scrape.
    LazyLock::force(&REQUESTS);
    LazyLock::force(&ERRORS);
    LazyLock::force(&JOBS_FINISHED);
    LazyLock::force(&ACTIVE_JOBS);
    LazyLock::force(&QUEUE_DEPTH);
    LazyLock::force(&QUEUE_WAIT);
    LazyLock::force(&BATCH_SIZE);
    LazyLock::force(&BATCH_FILL);
    LazyLock::force(&STAGE_SECONDS);
    LazyLock::force(&JOB_SECONDS);
    LazyLock::force(&DEVICE_MEMORY);
    LazyLock::force(&DEVICE_UTILIZATION);
    LazyLock::force(&MODEL_LOAD_SECONDS);
    LazyLock::force(&ACTOR_RESTARTS);
    LazyLock::force(&NATS_RECONNECTS);
    LazyLock::force(&DEAD_LETTERS);
    LazyLock::force(&MODEL_WARMUP_SECONDS);
    LazyLock::force(&BATCH_CEILING);
    LazyLock::force(&DEVICE_OOM);
    LazyLock::force(&DEVICE_LOST);
    LazyLock::force(&MODEL_RELOADS);
    LazyLock::force(&AUDIT_RECORDS);
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&prometheus::gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}
