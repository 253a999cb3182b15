//! NodeSupervisor: the root of a node's actor tree.
//!
//! - Children, started in this order: Postprocess, one GpuWorker per device,
//!   Scheduler, Ingress (downstream first, so nothing is admitted before it
//!   can run). A child that fails to start fails the node's start.
//! - Restart policy: one-for-one. A failed child is restarted after a capped
//!   exponential backoff (0.2 s doubling to 10 s), counted in
//!   `orfeas_actor_restarts_total`; a child that ran a minute since its
//!   last loss starts again from the shortest backoff. When a GpuWorker
//!   dies, the Scheduler is told to hand its batches back to JetStream
//!   (`WorkerLost`) and, once it is restarted, to use the device again
//!   (`WorkerReady`).
//! - Shutdown: intake stops first (Ingress), then the Scheduler drains
//!   (stops pulling, hands back jobs no device started, lets running ones
//!   finish within `shutdown_grace` and hands back the rest; nothing
//!   unfinished is acked), then the workers and Postprocess.

use std::{collections::HashMap, sync::Arc, time::Duration};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::{
    bus::Bus,
    catalog::Catalog,
    device::ComputeDevice,
    events::EventSink,
    gpu_worker::GpuWorker,
    ingress::{Ingress, Policy},
    jobs::JobStore,
    metrics,
    postprocess::Postprocess,
    registry::Registry,
    roster::Roster,
    scheduler::{Scheduler, SchedulerMsg},
    settings::NodeSettings,
    store::ResultStore,
    warmth::Warmth,
};

/// A child lost again after running this long starts over at the shortest backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Everything the children are built from.
#[derive(Clone)]
pub struct NodeContext {
    /// Settings.
    pub settings: Arc<NodeSettings>,
    /// NATS handles.
    pub bus: Bus,
    /// Event publisher.
    pub events: EventSink,
    /// Result store.
    pub store: ResultStore,
    /// Devices, one worker each.
    pub devices: Vec<ComputeDevice>,
    /// The matting stage of each device, in the order of `devices` (loaded at start, so a
    /// restarted worker reuses it).
    pub mattes: Vec<crate::learned_matte::Matting>,
    /// The served models (a restarted worker loads what it lists now).
    pub catalog: Catalog,
    /// Which devices have their models warm.
    pub warmth: Warmth,
    /// Actor names.
    pub roster: Roster,
    /// Load the Scheduler reports to the heartbeat.
    pub load: crate::heartbeat::NodeLoad,
    /// Admission limits shared by Ingress and the request server (kept
    /// across Ingress restarts).
    pub gate: Arc<crate::gate::Gate>,
    /// Jobs Ingress admitted here, for their claim by the Scheduler (kept
    /// across restarts of either).
    pub handoff: Arc<crate::handoff::Handoff>,
}

/// One child slot of the tree.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Child {
    /// The postprocessor.
    Postprocess,
    /// The worker of device `n`.
    Worker(usize),
    /// The scheduler.
    Scheduler,
    /// The ingress.
    Ingress,
}

impl Child {
    fn label(&self) -> &'static str {
        match self {
            Self::Postprocess => "postprocess",
            Self::Worker(_) => "gpu_worker",
            Self::Scheduler => "scheduler",
            Self::Ingress => "ingress",
        }
    }
}

/// Messages to the supervisor.
pub enum SupervisorMsg {
    /// Start this child again.
    Restart(Child),
    /// Stop every child in order, then reply.
    Shutdown(RpcReplyPort<()>),
}

/// The supervisor (configuration only).
pub struct NodeSupervisor {
    /// What children are built from.
    pub ctx: NodeContext,
}

/// Supervisor state.
pub struct SupervisorState {
    by_id: HashMap<ActorId, Child>,
    cells: HashMap<Child, ActorCell>,
    restarts: HashMap<Child, u32>,
    /// When each child was last lost.
    last_loss: HashMap<Child, std::time::Instant>,
    stopping: bool,
}

impl NodeSupervisor {
    async fn spawn_child(&self, child: &Child, myself: &ActorRef<SupervisorMsg>) -> Result<ActorCell, ActorProcessingErr> {
        let ctx = &self.ctx;
        let me = myself.get_cell();
        let jobs = JobStore::new(ctx.bus.jobs.clone());
        let cell = match child {
            Child::Postprocess => {
                let actor = Postprocess {
                    node_id: ctx.settings.node_id.clone(),
                    roster: ctx.roster.clone(),
                    events: ctx.events.clone(),
                    jobs,
                    store: ctx.store.clone(),
                    max_deliver: ctx.settings.max_deliver.max(1) as u64,
                    mesh_nice: ctx.settings.mesh_nice,
                };
                Actor::spawn_linked(Some(ctx.roster.name("postprocess")), actor, (), me).await?.0.get_cell()
            }
            Child::Worker(i) => {
                let device = ctx.devices[*i].clone();
                let name = ctx.roster.worker_name(&device.id);
                let actor = GpuWorker {
                    device,
                    settings: ctx.settings.clone(),
                    models: ctx.catalog.models(),
                    roster: ctx.roster.clone(),
                    events: ctx.events.clone(),
                    warmth: ctx.warmth.clone(),
                    inputs: Some(crate::inputs::Inputs { js: ctx.bus.js.clone(), store: ctx.store.clone() }),
                    matting: ctx.mattes[*i].clone(),
                };
                Actor::spawn_linked(Some(name), actor, (), me).await?.0.get_cell()
            }
            Child::Scheduler => {
                let actor = Scheduler {
                    settings: ctx.settings.clone(),
                    bus: ctx.bus.clone(),
                    jobs,
                    events: ctx.events.clone(),
                    roster: ctx.roster.clone(),
                    devices: ctx.devices.iter().map(|d| d.id.clone()).collect(),
                    model_max_batch: ctx.catalog.manifests().iter().map(|m| (m.name.clone(), m.max_batch)).collect(),
                    load: ctx.load.clone(),
                    handoff: ctx.handoff.clone(),
                };
                Actor::spawn_linked(Some(ctx.roster.name("scheduler")), actor, (), me).await?.0.get_cell()
            }
            Child::Ingress => {
                let policy = Policy {
                    audience: ctx.settings.deployment.clone(),
                    clock_skew_s: ctx.settings.clock_skew_s,
                    max_image_side: ctx.settings.max_image_side,
                    models: ctx.catalog.manifests().into_iter().map(|m| (m.name.clone(), m)).collect(),
                };
                let actor = Ingress {
                    settings: ctx.settings.clone(),
                    bus: ctx.bus.clone(),
                    registry: Registry::new(ctx.bus.agents.clone(), ctx.bus.nodes.clone()),
                    jobs,
                    events: ctx.events.clone(),
                    policy,
                    gate: ctx.gate.clone(),
                    handoff: ctx.handoff.clone(),
                };
                Actor::spawn_linked(Some(ctx.roster.name("ingress")), actor, (), me).await?.0.get_cell()
            }
        };
        Ok(cell)
    }

    fn children_in_start_order(&self) -> Vec<Child> {
        let mut order = vec![Child::Postprocess];
        order.extend((0..self.ctx.devices.len()).map(Child::Worker));
        order.extend([Child::Scheduler, Child::Ingress]);
        order
    }

    fn lost(&self, child: Child, state: &mut SupervisorState, myself: &ActorRef<SupervisorMsg>, why: String) {
        if state.stopping {
            return;
        }
        // A child that stayed up a while since its last loss is not crash-looping.
        let now = std::time::Instant::now();
        if state.last_loss.insert(child.clone(), now).is_some_and(|at| now.duration_since(at) > HEALTHY_AFTER) {
            state.restarts.insert(child.clone(), 0);
        }
        let count = state.restarts.entry(child.clone()).or_insert(0);
        *count += 1;
        let backoff = Duration::from_millis(200u64.saturating_mul(1 << (*count - 1).min(6))).min(Duration::from_secs(10));
        tracing::error!(child = ?child, restarts = *count, backoff_ms = backoff.as_millis() as u64, why, "actor lost; restarting");
        metrics::ACTOR_RESTARTS.with_label_values(&[child.label()]).inc();
        if let Child::Worker(i) = child {
            if let Some(scheduler) = self.ctx.roster.scheduler() {
                let _ = scheduler.cast(SchedulerMsg::WorkerLost(self.ctx.devices[i].id.clone()));
            }
        }
        myself.send_after(backoff, move || SupervisorMsg::Restart(child));
    }
}

impl Actor for NodeSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = ();

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, _: ()) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState { by_id: HashMap::new(), cells: HashMap::new(), restarts: HashMap::new(), last_loss: HashMap::new(), stopping: false };
        for child in self.children_in_start_order() {
            let cell = self.spawn_child(&child, &myself).await?;
            state.by_id.insert(cell.get_id(), child.clone());
            state.cells.insert(child, cell);
        }
        Ok(state)
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, message: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Restart(child) => {
                if state.stopping {
                    return Ok(());
                }
                match self.spawn_child(&child, &myself).await {
                    Ok(cell) => {
                        tracing::info!(child = ?child, "actor restarted");
                        if let Child::Worker(i) = child {
                            if let Some(scheduler) = self.ctx.roster.scheduler() {
                                let _ = scheduler.cast(SchedulerMsg::WorkerReady(self.ctx.devices[i].id.clone()));
                            }
                        }
                        state.by_id.insert(cell.get_id(), child.clone());
                        state.cells.insert(child, cell);
                    }
                    Err(e) => self.lost(child, state, &myself, format!("restart failed: {e}")),
                }
            }
            SupervisorMsg::Shutdown(reply) => {
                state.stopping = true;
                let mut order = self.children_in_start_order();
                order.reverse();
                for child in order {
                    if child == Child::Scheduler {
                        // Running jobs finish (or go back) before anything stops.
                        if let Some(scheduler) = self.ctx.roster.scheduler() {
                            let grace = self.ctx.settings.shutdown_grace.as_millis() as u64;
                            let _ = ractor::call_t!(scheduler, SchedulerMsg::Drain, grace + 10_000);
                        }
                    }
                    if let Some(cell) = state.cells.remove(&child) {
                        let _ = cell.stop_and_wait(Some("node shutting down".into()), Some(Duration::from_secs(30))).await;
                    }
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(&self, myself: ActorRef<Self::Msg>, event: SupervisionEvent, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason.unwrap_or_else(|| "stopped".into())),
            _ => return Ok(()),
        };
        if let Some(child) = state.by_id.remove(&cell.get_id()) {
            state.cells.remove(&child);
            self.lost(child, state, &myself, why);
        }
        Ok(())
    }
}
