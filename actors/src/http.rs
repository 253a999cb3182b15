//! The node's HTTP endpoint for operators: `/metrics` (Prometheus text),
//! `/healthz` (the process is alive and answering), `/readyz` (NATS
//! connected, streams and consumers present, every model loaded and run
//! once on every device), plus the admin routes (`admin.rs`).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use axum::{extract::State, http::StatusCode, routing::get, Router};
use orfeas_wire::subjects;
use tokio::task::JoinHandle;

use crate::warmth::Warmth;

/// What readiness is computed from.
#[derive(Clone)]
pub struct Health {
    js: async_nats::jetstream::Context,
    client: async_nats::Client,
    warm: Arc<AtomicBool>,
    devices: Warmth,
}

impl Health {
    /// Readiness of a node on `client` whose devices report to `devices`;
    /// not warm until [`Health::set_warm`].
    pub fn new(client: async_nats::Client, devices: Warmth) -> Self {
        Self { js: async_nats::jetstream::new(client.clone()), client, warm: Arc::new(AtomicBool::new(false)), devices }
    }

    /// Mark models loaded and actors started (or stopping, with `false`).
    pub fn set_warm(&self, warm: bool) {
        self.warm.store(warm, Ordering::SeqCst);
    }

    /// Why the node is not ready, or `None` when it is.
    pub async fn not_ready(&self) -> Option<String> {
        if !self.warm.load(Ordering::SeqCst) {
            return Some("actors not started or models not warm".into());
        }
        let cold = self.devices.cold();
        if !cold.is_empty() {
            return Some(format!("models not loaded and warm on {}", cold.join(", ")));
        }
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Some("nats not connected".into());
        }
        for (stream, consumer) in [
            (subjects::SUBMIT_STREAM, subjects::INGRESS_CONSUMER),
            (subjects::QUEUE_STREAM, subjects::SCHEDULER_CONSUMER),
        ] {
            let present = match self.js.get_stream(stream).await {
                Ok(s) => s.consumer_info(consumer).await.is_ok(),
                Err(_) => false,
            };
            if !present {
                return Some(format!("stream {stream} or consumer {consumer} missing"));
            }
        }
        None
    }
}

async fn metrics() -> (StatusCode, [(&'static str, &'static str); 1], String) {
    (StatusCode::OK, [("content-type", "text/plain; version=0.0.4")], crate::metrics::render())
}

async fn healthz() -> (StatusCode, &'static str) {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(health): State<Health>) -> (StatusCode, String) {
    match health.not_ready().await {
        None => (StatusCode::OK, "ready\n".into()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

/// Bind `listen` and serve (with the `admin` routes) until the task is
/// aborted. Returns the bound address (port 0 picks a free one).
pub async fn serve(listen: SocketAddr, health: Health, admin: Router) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health)
        .merge(admin);
    let handle = tokio::spawn(async move {
        // Peer addresses let the admin routes refuse remote callers.
        if let Err(e) = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await {
            tracing::error!(error = %e, "http endpoint stopped");
        }
    });
    Ok((bound, handle))
}
