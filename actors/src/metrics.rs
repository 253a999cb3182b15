//! Every metric of a node, in one place. Prefix `orfeas_`, unit suffixes,
//! labels from closed sets only (codes, stages, outcomes — never job ids).

use std::sync::LazyLock;

use prometheus::{register_histogram_vec, register_int_counter_vec, HistogramVec, IntCounterVec};

/// Submissions by outcome (`accepted` or an error code).
pub static SUBMISSIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("orfeas_ingress_submissions_total", "Submissions by outcome", &["outcome"])
        .expect("metric registers once")
});

/// Finished jobs by outcome (`completed` or an error code).
pub static JOBS_FINISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("orfeas_jobs_finished_total", "Jobs with a terminal answer, by outcome", &["outcome"])
        .expect("metric registers once")
});

/// Jobs per forward pass.
pub static BATCH_SIZE: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "orfeas_batch_size",
        "Jobs per forward pass",
        &["model"],
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    )
    .expect("metric registers once")
});

/// Seconds per pipeline stage.
pub static STAGE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!("orfeas_stage_seconds", "Time spent per stage", &["stage"], prometheus::exponential_buckets(0.001, 2.0, 16).expect("buckets"))
        .expect("metric registers once")
});

/// Actor restarts by actor.
pub static ACTOR_RESTARTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("orfeas_actor_restarts_total", "Actor restarts by the supervisor", &["actor"])
        .expect("metric registers once")
});
