//! Names of one node's actors in ractor's registry. Actors find their
//! siblings by name at send time, so a restarted sibling is found again.

use ractor::{registry, ActorRef};

use crate::{gpu_worker::GpuWorkerMsg, postprocess::PostprocessMsg, scheduler::SchedulerMsg};

/// The actor names of one node (prefixed by the node id so several nodes
/// can share a process in tests).
#[derive(Clone, Debug)]
pub struct Roster {
    node_id: String,
}

impl Roster {
    /// Names for node `node_id`.
    pub fn new(node_id: &str) -> Self {
        Self { node_id: node_id.to_string() }
    }

    /// Registry name of an actor of this node.
    pub fn name(&self, actor: &str) -> String {
        format!("{}/{actor}", self.node_id)
    }

    /// Registry name of the worker of `device`.
    pub fn worker_name(&self, device: &str) -> String {
        self.name(&format!("gpu-worker-{device}"))
    }

    /// The scheduler, if running.
    pub fn scheduler(&self) -> Option<ActorRef<SchedulerMsg>> {
        registry::where_is(self.name("scheduler")).map(Into::into)
    }

    /// The postprocessor, if running.
    pub fn postprocess(&self) -> Option<ActorRef<PostprocessMsg>> {
        registry::where_is(self.name("postprocess")).map(Into::into)
    }

    /// The worker of `device`, if running.
    pub fn worker(&self, device: &str) -> Option<ActorRef<GpuWorkerMsg>> {
        registry::where_is(self.worker_name(device)).map(Into::into)
    }
}
