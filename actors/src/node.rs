//! Starting and stopping one node: connect, create what JetStream needs,
//! register the node (event key, devices, load; kept alive by heartbeats),
//! serve result fetches and status/cancel requests, start the actor tree; on shutdown stop intake
//! first and flush NATS last.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

use crate::{
    admin::{self, Admin},
    bus::{self, Bus, BusError},
    catalog::{self, Catalog},
    device,
    events::EventSink,
    heartbeat::{Heartbeat, NodeLoad},
    http::{self, Health},
    metrics,
    model::{self, ModelError},
    now_ms,
    registry::{NodeRecord, Registry},
    requests::RequestServer,
    results::ResultServer,
    roster::Roster,
    settings::NodeSettings,
    store::{ResultStore, StoreConfig, StoreError},
    supervisor::{NodeContext, NodeSupervisor, SupervisorMsg},
    warmth::Warmth,
};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A model is missing or broken.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// NATS is unreachable or JetStream setup failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The object store cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTP endpoint could not bind.
    #[error("cannot serve http on {0}: {1}")]
    Http(SocketAddr, std::io::Error),
    /// An actor failed to start.
    #[error("actor tree failed to start: {0}")]
    Spawn(String),
    /// The configured matting model is missing or breaks its contract.
    #[error(transparent)]
    Matting(#[from] crate::learned_matte::MattingError),
}

impl NodeError {
    /// Stable code of the failure, for messages and logs (`model_contract`,
    /// `matting_contract`, …; `nats`, `store`, `http`, `spawn` for the rest).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Model(e) => e.code(),
            Self::Matting(e) => e.code(),
            Self::Bus(_) => "nats",
            Self::Store(_) => "store",
            Self::Http(..) => "http",
            Self::Spawn(_) => "spawn",
        }
    }
}

/// A started node.
pub struct RunningNode {
    supervisor: ActorRef<SupervisorMsg>,
    handle: JoinHandle<()>,
    client: async_nats::Client,
    /// The node's NATS handles (tests use them).
    pub bus: Bus,
    health: Health,
    http: Option<(SocketAddr, JoinHandle<()>)>,
    sampler: JoinHandle<()>,
    list_models: JoinHandle<()>,
    heartbeat: Heartbeat,
    results: JoinHandle<()>,
    requests: JoinHandle<()>,
    /// How long running jobs may take to finish on shutdown.
    grace: Duration,
    dead_letters: JoinHandle<()>,
}

/// Start a node and return once every actor is up and every model ran once
/// on every device.
pub async fn start(settings: NodeSettings) -> Result<RunningNode, NodeError> {
    let models = model::read_manifests(&settings.models_dir, &settings.models)?;
    let devices = device::discover(settings.use_cuda);
    // Before anything connects: a broken matting model stops the start at once.
    let mattes = crate::learned_matte::Matting::for_devices(&settings.matting, &devices.iter().map(|d| d.device).collect::<Vec<_>>())?;
    if let Some(crate::learned_matte::Matting::Learned(m)) = mattes.first() {
        tracing::info!(matting = %m.manifest.name, version = %m.manifest.version, "learned matting model loaded");
    }
    tracing::info!(node = %settings.node_id, devices = ?devices.iter().map(|d| &d.id).collect::<Vec<_>>(), models = ?models.iter().map(|(m, _)| &m.name).collect::<Vec<_>>(), "starting node");
    let client = bus::connect_as(&settings.nats_url, &format!("orfeas-node-{}", settings.node_id), settings.nats_nkey_seed.as_deref()).await?;
    let bus = Bus::ensure(client.clone(), &settings).await?;
    let registry = Registry::new(bus.agents.clone(), bus.nodes.clone());
    let store = ResultStore::open(&match &settings.store_s3 {
        Some(s3) => StoreConfig::S3(s3.clone()),
        None => StoreConfig::Local(settings.store_root.clone()),
    })?;
    // The record (with the event-signing key) is written before any event
    // and kept alive by heartbeats for as long as the node runs.
    let load = NodeLoad::default();
    let record = NodeRecord {
        node_id: settings.node_id.clone(),
        public_key: settings.node_key.public().to_hex(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at_ms: now_ms(),
        heartbeat_at_ms: 0,
        state: "starting".into(),
        devices: devices.iter().map(|d| orfeas_wire::v1::NodeDevice { id: d.id.clone(), total_bytes: d.total_bytes }).collect(),
        models: models.iter().map(|(m, _)| m.name.clone()).collect(),
        capacity: crate::scheduler::credits_for(devices.len(), settings.max_batch, settings.lookahead_batches) as u32,
        held_jobs: 0,
        busy_devices: 0,
        finished_jobs: 0,
    };
    let heartbeat = Heartbeat::start(registry.clone(), record, load.clone()).await?;
    let events = EventSink::spawn(bus.clone(), &settings.node_id, settings.node_key.clone(), settings.deployment.clone());
    let roster = Roster::new(&settings.node_id);
    let dead_letters = crate::dead_letter::spawn(bus.clone(), events.clone(), settings.node_id.clone()).await?;
    let catalog = Catalog::new(&settings.node_id, settings.models_dir.clone(), models.into_iter().map(|(m, _)| m).collect());
    let warmth = Warmth::new(devices.iter().map(|d| d.id.clone()));
    let admin = Admin {
        catalog: catalog.clone(),
        roster: roster.clone(),
        devices: devices.iter().map(|d| d.id.clone()).collect(),
        reloading: Default::default(),
    };
    let gate = Arc::new(crate::gate::Gate::new(settings.preauth_per_minute, bus.nonces.clone(), bus.active.clone(), crate::jobs::JobStore::new(bus.jobs.clone())));
    let requests = RequestServer {
        node_id: settings.node_id.clone(),
        node_key: settings.node_key.clone(),
        gate: gate.clone(),
        deployment: settings.deployment.clone(),
        clock_skew_s: settings.clock_skew_s,
        registry: registry.clone(),
        jobs: crate::jobs::JobStore::new(bus.jobs.clone()),
        events: events.clone(),
        batches: bus.batches.clone(),
    }
    .spawn(client.clone());
    let results = ResultServer {
        node_id: settings.node_id.clone(),
        node_key: settings.node_key.clone(),
        deployment: settings.deployment.clone(),
        clock_skew_s: settings.clock_skew_s,
        registry,
        jobs: crate::jobs::JobStore::new(bus.jobs.clone()),
        store: store.clone(),
    }
    .spawn(client.clone());
    let ctx = NodeContext {
        settings: Arc::new(settings),
        bus: bus.clone(),
        events,
        store,
        devices,
        mattes,
        catalog: catalog.clone(),
        warmth: warmth.clone(),
        roster: roster.clone(),
        load,
        gate,
        handoff: Default::default(),
    };
    let health = Health::new(client.clone(), warmth);
    let http = match ctx.settings.http_listen {
        Some(listen) => {
            let (bound, task) = http::serve(listen, health.clone(), admin::router(admin)).await.map_err(|e| NodeError::Http(listen, e))?;
            tracing::info!(%bound, "serving /metrics, /healthz, /readyz, POST /admin/models/reload");
            Some((bound, task))
        }
        None => None,
    };
    let list_models = catalog::serve_list_models(client.clone(), catalog).await?;
    let sampler = tokio::spawn(sample_devices(ctx.devices.clone()));
    let grace = ctx.settings.shutdown_grace;
    let (supervisor, handle) = Actor::spawn(Some(roster.name("supervisor")), NodeSupervisor { ctx }, ())
        .await
        .map_err(|e| NodeError::Spawn(e.to_string()))?;
    health.set_warm(true);
    heartbeat.set_state("ready").await;
    Ok(RunningNode { supervisor, handle, client, bus, health, http, sampler, list_models, heartbeat, results, requests, grace, dead_letters })
}

/// Refresh device memory and utilisation gauges every few seconds.
async fn sample_devices(devices: Vec<device::ComputeDevice>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        for d in &devices {
            let load = device::load(d);
            if let (Some(free), Some(total)) = (load.free_bytes, d.total_bytes) {
                metrics::DEVICE_MEMORY.with_label_values(&[&d.id, "free"]).set(free as f64);
                metrics::DEVICE_MEMORY.with_label_values(&[&d.id, "total"]).set(total as f64);
                metrics::DEVICE_MEMORY.with_label_values(&[&d.id, "used"]).set(total.saturating_sub(free) as f64);
            }
            if let Some(u) = load.utilization {
                metrics::DEVICE_UTILIZATION.with_label_values(&[&d.id]).set(f64::from(u) / 100.0);
            }
        }
    }
}

impl RunningNode {
    /// Where the HTTP endpoint listens, if enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(a, _)| *a)
    }

    /// Stop intake, then the rest of the tree, then flush NATS.
    pub async fn stop(self) {
        self.health.set_warm(false);
        self.heartbeat.set_state("draining").await;
        let _ = ractor::call_t!(self.supervisor, SupervisorMsg::Shutdown, self.grace.as_millis() as u64 + 60_000);
        self.sampler.abort();
        self.list_models.abort();
        self.dead_letters.abort();
        if let Some((_, task)) = &self.http {
            task.abort();
        }
        self.supervisor.stop(None);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.handle).await;
        self.results.abort();
        self.requests.abort();
        // The record expires on its own: agents can still verify this
        // node's last events for a while.
        self.heartbeat.stop();
        // Bounded: with the server gone a flush would wait for it forever.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.client.flush()).await;
    }
}

/// Run a node until `shutdown` resolves.
pub async fn run(settings: NodeSettings, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    let node = start(settings).await?;
    shutdown.await;
    tracing::info!("shutting down");
    node.stop().await;
    Ok(())
}
