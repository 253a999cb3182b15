//! When the system is full: a submission that would queue behind
//! `limit` admitted jobs already waiting is refused at once with
//! `unavailable` (503, retryable) and a `retry_after_ms` estimated from how
//! fast this node finishes jobs, instead of being queued for a long time.
//!
//! Three bounds together keep memory flat however many jobs wait:
//! the submit stream refuses publishes beyond `ingress.submit_queue_max`
//! (JetStream, discard new: the agent's publish fails at once); admission
//! stops at the same number of waiting admitted jobs (this check); and each
//! node holds only its credits per lane (see [`crate::scheduler::credits_for`]),
//! the rest stays on disk in JetStream.

use orfeas_wire::{v1::Failure, ErrorCode};

/// Shortest wait suggested.
pub const MIN_RETRY_MS: u64 = 1_000;
/// Longest wait suggested.
pub const MAX_RETRY_MS: u64 = 60_000;
/// Time per job assumed before the node has finished one.
const UNKNOWN_JOB_MS: u64 = 5_000;

/// Refuse a submission when `waiting` admitted jobs are queued and the
/// limit is `limit` (≤ 0: no limit). `job_ms` is the average run time of
/// the job's model here, `parallel` how many jobs the node runs at once.
pub fn check(waiting: u64, limit: i64, job_ms: Option<u64>, parallel: usize) -> Option<Failure> {
    if limit <= 0 || waiting < limit as u64 {
        return None;
    }
    let over = waiting - limit as u64 + 1;
    let per_job = job_ms.unwrap_or(UNKNOWN_JOB_MS).max(1);
    let retry = (over.saturating_mul(per_job) / parallel.max(1) as u64).clamp(MIN_RETRY_MS, MAX_RETRY_MS);
    let mut failure = Failure::new(ErrorCode::Unavailable, format!("{waiting} jobs are waiting (limit {limit}); try again in {:.1} s", retry as f64 / 1000.0));
    failure.retry_after_ms = Some(retry);
    Some(failure)
}

/// [`check`] with this node's averages for `model`.
pub fn refusal(waiting: u64, limit: i64, model: &str) -> Option<Failure> {
    let job_ms = crate::progress::TIMES.lock().unwrap_or_else(|e| e.into_inner()).total_ms(model);
    check(waiting, limit, job_ms, crate::progress::PARALLEL.load(std::sync::atomic::Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_the_limit_everything_is_admitted() {
        assert!(check(0, 10, None, 1).is_none());
        assert!(check(9, 10, None, 1).is_none());
        assert!(check(1_000_000, 0, None, 1).is_none(), "no limit");
        assert!(check(1_000_000, -1, None, 1).is_none(), "no limit");
    }

    #[test]
    fn a_full_queue_answers_unavailable_with_a_bounded_retry_after() {
        let f = check(10, 10, Some(2_000), 4).unwrap();
        assert_eq!((f.code, f.status, f.retryable), (ErrorCode::Unavailable, 503, true));
        assert_eq!(f.retry_after_ms, Some(MIN_RETRY_MS), "one job over, four at a time: 0.5 s, raised to the minimum");
        assert_eq!(check(29, 10, Some(2_000), 4).unwrap().retry_after_ms, Some(10_000), "20 over × 2 s ÷ 4");
        assert_eq!(check(100_000, 10, None, 1).unwrap().retry_after_ms, Some(MAX_RETRY_MS));
        assert!(f.error.contains("limit 10"), "{}", f.error);
    }
}
