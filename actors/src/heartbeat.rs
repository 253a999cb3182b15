//! The node's entry in the `orfeas_nodes` registry: written at start and
//! rewritten every [`HEARTBEAT_INTERVAL`] with the node's current load. The
//! bucket's `max_age` ([`NODE_RECORD_TTL`]) removes the entry of a node that
//! stops beating, so `orfeas nodes` lists live nodes only. Agents read the
//! node's event-signing key from the same entry, so it exists for as long
//! as the node runs.
//!
//! Not an actor: one loop with nothing to supervise; a failed write is
//! logged and retried at the next beat.

use std::sync::{
    atomic::{AtomicU32, AtomicU64, Ordering},
    Arc, Mutex,
};

use orfeas_wire::v1::NodeRecord;
use tokio::task::JoinHandle;

use crate::{
    bus::BusError,
    now_ms,
    registry::Registry,
    topology::{HEARTBEAT_INTERVAL, NODE_RECORD_TTL},
};

/// What a node is doing right now, updated by its Scheduler and read by the
/// heartbeat. Cheap to clone and to update.
#[derive(Clone, Debug, Default)]
pub struct NodeLoad {
    inner: Arc<LoadInner>,
}

#[derive(Debug, Default)]
struct LoadInner {
    held: AtomicU32,
    busy_devices: AtomicU32,
    finished: AtomicU64,
}

impl NodeLoad {
    /// Jobs held (waiting here or running) and devices running a batch.
    pub fn set(&self, held: usize, busy_devices: usize) {
        self.inner.held.store(held as u32, Ordering::Relaxed);
        self.inner
            .busy_devices
            .store(busy_devices as u32, Ordering::Relaxed);
    }

    /// One more job answered.
    pub fn finished_one(&self) {
        self.inner.finished.fetch_add(1, Ordering::Relaxed);
    }

    /// `(held, busy_devices, finished)`.
    pub fn snapshot(&self) -> (u32, u32, u64) {
        (
            self.inner.held.load(Ordering::Relaxed),
            self.inner.busy_devices.load(Ordering::Relaxed),
            self.inner.finished.load(Ordering::Relaxed),
        )
    }
}

/// The running heartbeat of one node.
pub struct Heartbeat {
    record: Arc<Mutex<NodeRecord>>,
    registry: Registry,
    load: NodeLoad,
    task: JoinHandle<()>,
}

impl Heartbeat {
    /// Write `record` now (so the node's key is readable before it publishes
    /// any event), then every [`HEARTBEAT_INTERVAL`].
    pub async fn start(
        registry: Registry,
        record: NodeRecord,
        load: NodeLoad,
    ) -> Result<Self, BusError> {
        let record = Arc::new(Mutex::new(record));
        beat(&registry, &record, &load).await?;
        let task = {
            let (registry, record, load) = (registry.clone(), record.clone(), load.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                let mut failing_since: Option<u64> = None;
                loop {
                    tick.tick().await;
                    match beat(&registry, &record, &load).await {
                        Ok(()) => {
                            if failing_since.take().is_some() {
                                tracing::info!("node heartbeat written again");
                            }
                        }
                        Err(e) => {
                            let since = *failing_since.get_or_insert_with(now_ms);
                            // Past the TTL the record is gone and agents
                            // cannot verify this node's events until a beat
                            // gets through.
                            if now_ms().saturating_sub(since) > NODE_RECORD_TTL.as_millis() as u64 {
                                tracing::error!(error = %e, "node heartbeat failing longer than the record lives");
                            } else {
                                tracing::warn!(error = %e, "node heartbeat not written");
                            }
                        }
                    }
                }
            })
        };
        Ok(Self {
            record,
            registry,
            load,
            task,
        })
    }

    /// Change the advertised state (`ready`, `draining`) and write it now.
    pub async fn set_state(&self, state: &str) {
        self.record.lock().expect("record lock").state = state.to_string();
        if let Err(e) = beat(&self.registry, &self.record, &self.load).await {
            tracing::warn!(error = %e, state, "node state not written");
        }
    }

    /// Stop beating; the record expires after [`NODE_RECORD_TTL`] (agents
    /// can still verify the node's last events until then).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn beat(
    registry: &Registry,
    record: &Mutex<NodeRecord>,
    load: &NodeLoad,
) -> Result<(), BusError> {
    let current = {
        let mut r = record.lock().expect("record lock");
        let (held, busy, finished) = load.snapshot();
        r.held_jobs = held;
        r.busy_devices = busy;
        r.finished_jobs = finished;
        r.heartbeat_at_ms = now_ms();
        r.clone()
    };
    registry.put_node(&current).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_snapshot_reflects_updates() {
        let load = NodeLoad::default();
        let seen_by_heartbeat = load.clone();
        load.set(7, 1);
        load.finished_one();
        load.finished_one();
        assert_eq!(seen_by_heartbeat.snapshot(), (7, 1, 2));
    }
}
