//! Operator actions on the node's HTTP endpoint (`http.listen`):
//! `POST /admin/models/reload` reads the served models' manifests and files
//! again and reloads them on every device, one device after the other.
//! Jobs keep queueing meanwhile (a device runs the batch it has, then
//! reloads, then takes the next); none is lost. Answers 200 with what each
//! device loaded, 409 when the change needs a restart (another set of
//! models, other parameter names), 422 when a manifest is invalid, 500 when
//! a device failed to load (it keeps its previous models). Admin routes
//! answer loopback callers only (403 otherwise): `http.listen` is often
//! opened to the monitoring network for `/metrics`, which must not be able
//! to reload models.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    extract::{ConnectInfo, State},
    http::StatusCode,
    routing::post,
    Router,
};
use serde_json::json;

use crate::{
    catalog::{Catalog, ReloadRefused},
    gpu_worker::GpuWorkerMsg,
    roster::Roster,
};

/// Longest a device may take to load and warm its models.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// What the admin routes act on.
#[derive(Clone)]
pub struct Admin {
    /// The served models.
    pub catalog: Catalog,
    /// Actor names (workers are looked up per request).
    pub roster: Roster,
    /// Device ids, one worker each.
    pub devices: Vec<String>,
    /// One reload at a time.
    pub reloading: Arc<tokio::sync::Mutex<()>>,
}

/// The admin routes.
pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/admin/models/reload", post(reload))
        .with_state(admin)
}

type Reply = (StatusCode, [(&'static str, &'static str); 1], String);

fn reply(status: StatusCode, body: serde_json::Value) -> Reply {
    (
        status,
        [("content-type", "application/json")],
        format!("{body}\n"),
    )
}

async fn reload(State(admin): State<Admin>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Reply {
    if !peer.ip().is_loopback() {
        return reply(
            StatusCode::FORBIDDEN,
            json!({ "error": format!("admin routes answer loopback callers only, not {}", peer.ip()) }),
        );
    }
    let _one_at_a_time = admin.reloading.lock().await;
    let fresh = match admin.catalog.reread() {
        Ok(fresh) => fresh,
        Err(e @ ReloadRefused::NeedsRestart(_)) => {
            return reply(StatusCode::CONFLICT, json!({ "error": e.to_string() }))
        }
        Err(e) => {
            return reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "error": e.to_string() }),
            )
        }
    };
    tracing::info!(models = ?fresh.iter().map(|(m, _)| format!("{} {}", m.name, m.version)).collect::<Vec<_>>(), "reloading models");
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for device in &admin.devices {
        let Some(worker) = admin.roster.worker(device) else {
            errors.push(json!({ "device": device, "error": "worker is not running" }));
            continue;
        };
        match ractor::call_t!(
            worker,
            GpuWorkerMsg::Reload,
            RELOAD_TIMEOUT.as_millis() as u64,
            fresh.clone()
        ) {
            Ok(Ok(reports)) => loaded.extend(reports),
            Ok(Err(e)) => errors.push(json!({ "device": device, "error": e })),
            Err(e) => errors.push(json!({ "device": device, "error": e.to_string() })),
        }
    }
    if !errors.is_empty() {
        tracing::error!(
            ?errors,
            "model reload failed on some devices; they keep their previous models"
        );
        return reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": "reload failed", "devices": errors, "loaded": loaded }),
        );
    }
    admin
        .catalog
        .replace(fresh.into_iter().map(|(m, _)| m).collect());
    tracing::info!("models reloaded on every device");
    reply(StatusCode::OK, json!({ "loaded": loaded }))
}
