//! How many jobs one forward pass may take, and how an out-of-memory error
//! moves that number. Pure: the GpuWorker feeds in what it reads from the
//! device before every batch.
//!
//! `B = min(configured max, model max, ceiling, ⌊usable memory × safety ÷ per-item cost⌋)`,
//! never below 1. The usable memory is what the device reports free plus
//! what this process's allocator already holds for earlier batches (on CUDA
//! the caching allocator keeps it; it is free for us, not for NVML).
//! The ceiling starts at the model's maximum, halves the failed size on an
//! out-of-memory error and climbs back one step after [`RAISE_AFTER`]
//! successful batches that were at least as large as it.

/// Successful batches at the ceiling before it is raised by one.
pub const RAISE_AFTER: u32 = 8;

/// What the device's memory allows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryBudget {
    /// Free bytes on the device now; `None` when unknown (then memory does
    /// not limit the batch).
    pub free_bytes: Option<u64>,
    /// Bytes the allocator holds from earlier batches and can reuse.
    pub cached_bytes: u64,
    /// Memory one batch item costs, bytes.
    pub per_item_bytes: u64,
    /// Fraction of the usable memory a batch may plan on (0–1].
    pub safety: f64,
}

impl MemoryBudget {
    /// Items that fit, or `None` when memory is unknown or items are free.
    pub fn items(&self) -> Option<usize> {
        let free = self.free_bytes?;
        if self.per_item_bytes == 0 {
            return None;
        }
        let usable = free.saturating_add(self.cached_bytes) as f64 * self.safety.clamp(0.0, 1.0);
        Some((usable / self.per_item_bytes as f64).floor() as usize)
    }
}

/// The batch size for the next forward pass.
pub fn batch_size(
    configured_max: usize,
    model_max: usize,
    ceiling: usize,
    memory: &MemoryBudget,
) -> usize {
    let mut size = configured_max.min(model_max).min(ceiling);
    if let Some(fit) = memory.items() {
        size = size.min(fit);
    }
    size.max(1)
}

/// A device's batch ceiling for one model, lowered by out-of-memory errors
/// and raised slowly by successes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ceiling {
    value: usize,
    max: usize,
    streak: u32,
}

impl Ceiling {
    /// A ceiling at `max` (the model's largest batch).
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            value: max,
            max,
            streak: 0,
        }
    }

    /// The current ceiling.
    pub fn value(&self) -> usize {
        self.value
    }

    /// The model's largest batch it started from.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A batch of `size` ran out of memory: the ceiling drops to half of it.
    pub fn on_out_of_memory(&mut self, size: usize) {
        self.value = self.value.min((size / 2).max(1));
        self.streak = 0;
    }

    /// A batch of `size` succeeded. Only batches that pressed against the
    /// ceiling are evidence that it could be higher.
    pub fn on_success(&mut self, size: usize) {
        if self.value >= self.max || size < self.value {
            return;
        }
        self.streak += 1;
        if self.streak >= RAISE_AFTER {
            self.value += 1;
            self.streak = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1024 * 1024;

    fn memory(free_mb: Option<u64>, per_item_mb: u64) -> MemoryBudget {
        MemoryBudget {
            free_bytes: free_mb.map(|f| f * MB),
            cached_bytes: 0,
            per_item_bytes: per_item_mb * MB,
            safety: 0.8,
        }
    }

    #[test]
    fn the_smallest_limit_wins() {
        let plenty = memory(Some(100_000), 10);
        assert_eq!(batch_size(8, 16, 16, &plenty), 8, "configured max");
        assert_eq!(batch_size(32, 16, 16, &plenty), 16, "model max");
        assert_eq!(batch_size(32, 16, 3, &plenty), 3, "ceiling");
        // 100 MB free × 0.8 / 10 MB = 8 items.
        assert_eq!(batch_size(32, 16, 16, &memory(Some(100), 10)), 8, "memory");
        assert_eq!(batch_size(1, 16, 16, &plenty), 1, "batching off");
    }

    #[test]
    fn memory_counts_the_allocator_cache_and_never_goes_below_one() {
        let mut m = memory(Some(100), 10);
        m.cached_bytes = 50 * MB;
        assert_eq!(m.items(), Some(12), "(100 + 50) × 0.8 / 10");
        assert_eq!(
            batch_size(32, 16, 16, &memory(Some(1), 10)),
            1,
            "one item is always tried"
        );
        assert_eq!(
            memory(None, 10).items(),
            None,
            "unknown free memory does not limit"
        );
        assert_eq!(
            memory(Some(100), 0).items(),
            None,
            "free items do not limit"
        );
        assert_eq!(batch_size(32, 16, 16, &memory(None, 10)), 16);
    }

    #[test]
    fn out_of_memory_halves_the_ceiling_and_successes_raise_it_slowly() {
        let mut c = Ceiling::new(16);
        assert_eq!(c.value(), 16);
        c.on_out_of_memory(10);
        assert_eq!(c.value(), 5);
        c.on_out_of_memory(12);
        assert_eq!(c.value(), 5, "a larger failed batch never raises it");
        c.on_out_of_memory(1);
        assert_eq!(c.value(), 1, "never below one");
        for _ in 0..RAISE_AFTER - 1 {
            c.on_success(1);
        }
        assert_eq!(c.value(), 1, "not raised before {RAISE_AFTER} successes");
        c.on_success(1);
        assert_eq!(c.value(), 2);
        for _ in 0..RAISE_AFTER * 4 {
            c.on_success(1);
        }
        assert_eq!(c.value(), 2, "batches below the ceiling prove nothing");
        c.on_out_of_memory(2);
        for _ in 0..RAISE_AFTER * 100 {
            c.on_success(16);
        }
        assert_eq!(
            c.value(),
            16,
            "raised back up to the model's maximum and no further"
        );
    }

    #[test]
    fn an_out_of_memory_error_resets_the_streak() {
        let mut c = Ceiling::new(4);
        c.on_out_of_memory(4);
        for _ in 0..RAISE_AFTER - 1 {
            c.on_success(2);
        }
        c.on_out_of_memory(3);
        assert_eq!(c.value(), 1);
        c.on_success(2);
        assert_eq!(c.value(), 1);
    }
}
