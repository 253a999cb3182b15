//! `orfeas studio`: a web page for people, acting as one registered agent.
//! A person drops images, picks a model and options, watches each job's
//! stage, percent, ETA and queue position live (Server-Sent Events), then
//! turns the GLB around in a three.js viewer, reads the printability report
//! in plain words and downloads every format. The agent's key stays in this
//! process; the page only ever holds a per-session CSRF token.
//!
//! With no NATS given (and no `nats.url`) it runs the embedded default — a
//! child nats-server, this process's node and a throwaway agent key — for
//! as long as the page is served, like `orfeas generate`.

mod jobs;
mod report;
mod routes;
mod safety;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use orfeas_actors::{node, registry::Registry};
use orfeas_wire::{client::AgentClient, SecretKey};

/// Largest upload unless `--max-upload-bytes` says otherwise.
pub const DEFAULT_MAX_UPLOAD_BYTES: usize = 16 * 1024 * 1024;

pub use jobs::Adopted;

/// The agent name of the embedded default's throwaway key.
const LOCAL_AGENT: &str = "studio";

/// `orfeas studio`
#[derive(clap::Args, Debug)]
pub struct StudioArgs {
    /// NATS URL of a deployment; without it (and without nats.url) the
    /// embedded default is started for as long as the studio runs.
    #[arg(long)]
    pub nats: Option<String>,
    /// Agent the studio acts as (with --nats; its key never leaves the server).
    #[arg(long, requires = "key")]
    pub agent: Option<String>,
    /// That agent's secret key file.
    #[arg(long, requires = "agent")]
    pub key: Option<PathBuf>,
    /// Address to serve the page on (loopback unless you mean to share it).
    #[arg(long, default_value = "127.0.0.1:8780", env = "ORFEAS_STUDIO_BIND")]
    pub studio_bind: SocketAddr,
    /// Key a browser needs to use the page (the printed link carries it; then a
    /// cookie). Required beyond loopback: generated when not given. On loopback
    /// the page is open to this machine's users without one, unless given.
    #[arg(long, env = "ORFEAS_STUDIO_ACCESS_KEY", hide_env_values = true)]
    pub access_key: Option<String>,
    /// Largest image accepted, bytes (checked before anything is queued).
    #[arg(long, default_value_t = DEFAULT_MAX_UPLOAD_BYTES)]
    pub max_upload_bytes: usize,
    /// Model preselected on the page.
    #[arg(long, default_value = "inflate")]
    pub model: String,
    /// How long the studio follows one job, seconds.
    #[arg(long, default_value_t = 600)]
    pub job_timeout_s: u64,
    /// The three.js package folder (`node_modules/three`) the viewer is
    /// served from; deploy/setup.sh --studio installs it under
    /// `$ORFEAS_CACHE_DIR/npm`. Default: `$ORFEAS_STUDIO_ASSETS`, else that folder.
    #[arg(long)]
    pub assets: Option<PathBuf>,
}

/// What every handler shares.
pub struct Studio {
    agent: String,
    /// Uploads, submits, cancels and downloads (all take `&self`, so one
    /// slow download never holds up another request).
    client: AgentClient,
    /// For per-job followers: each gets its own client (own node-key cache)
    /// so following one job never waits on another.
    nats: async_nats::Client,
    key: SecretKey,
    audience: String,
    token: String,
    hosts: Vec<String>,
    open_to_any_host: bool,
    /// Every request needs it (cookie, bearer or link) when set.
    access_key: Option<String>,
    max_upload_bytes: usize,
    default_model: String,
    job_timeout: Duration,
    assets: Option<PathBuf>,
    session: jobs::Session,
    /// Flips to true on shutdown: open event streams end so the server can stop.
    closing: tokio::sync::watch::Receiver<bool>,
}

impl Studio {
    fn follower_client(&self) -> AgentClient {
        AgentClient::new(self.nats.clone(), &self.agent, self.key.clone(), &self.audience)
    }
}

/// The three.js folder: the flag, `$ORFEAS_STUDIO_ASSETS`, then setup's cache.
fn assets_dir(flag: Option<&PathBuf>) -> Option<PathBuf> {
    let candidates = [
        flag.cloned(),
        std::env::var_os("ORFEAS_STUDIO_ASSETS").map(PathBuf::from),
        std::env::var_os("ORFEAS_CACHE_DIR").map(|c| PathBuf::from(c).join("npm/node_modules/three")),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/orfeas/npm/node_modules/three")),
    ];
    let explicit = flag.is_some();
    for candidate in candidates.into_iter().flatten() {
        if candidate.join("build/three.module.js").is_file() {
            return Some(candidate);
        }
        if explicit {
            // A folder named on the command line must be right.
            tracing::warn!(assets = %candidate.display(), "no build/three.module.js here: the 3D viewer is off");
            return None;
        }
    }
    None
}

/// Serve the studio until `shutdown`.
pub async fn run(config: crate::config::Config, args: StudioArgs, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<()> {
    let assets = viewer_assets(&args);
    let listener = bind(&args).await?;
    // The embedded server is kept by a thread of its own (see `embedded`).
    let (embedded, url) = crate::embedded::server_or_embedded(&config, args.nats.as_deref()).await?;
    let scratch = tempfile::Builder::new().prefix("orfeas-studio-").tempdir()?;
    let mut running = None;
    let (agent, key, audience, nats) = if embedded.is_none() {
        let (Some(agent), Some(key_file)) = (&args.agent, &args.key) else {
            anyhow::bail!("with --nats (or nats.url) the studio needs --agent NAME --key FILE: the registered agent it acts as");
        };
        let key = crate::read_key(key_file)?;
        let nats = orfeas_actors::bus::connect(&url, &format!("orfeas-studio-{agent}")).await?;
        (agent.clone(), key, config.node.deployment.clone(), nats)
    } else {
        let mut settings = config.node_settings(&url, scratch.path().join("store"))?;
        // A session's files live in its scratch folder, like `generate`'s.
        settings.store_s3 = None;
        settings.http_listen = None;
        settings.shutdown_grace = Duration::ZERO;
        let audience = settings.deployment.clone();
        let node = node::start(settings).await.context("starting the embedded node")?;
        let key = SecretKey::generate();
        Registry::new(node.bus.agents.clone(), node.bus.nodes.clone()).add_agent_key(LOCAL_AGENT, &key.public().to_hex()).await?;
        let nats = node.bus.client.clone();
        running = Some(node);
        (LOCAL_AGENT.to_string(), key, audience, nats)
    };
    let served = serve(listener, Backend { agent, key, audience, nats }, &args, assets, Vec::new(), shutdown).await;
    if let Some(node) = running {
        node.stop().await;
    }
    drop(embedded);
    served
}

/// The three.js folder for the page, with a warning when there is none.
pub fn viewer_assets(args: &StudioArgs) -> Option<PathBuf> {
    let assets = assets_dir(args.assets.as_ref());
    if assets.is_none() {
        eprintln!("warning: three.js not found (run deploy/setup.sh --studio or pass --assets): the page works without its 3D viewer");
    }
    assets
}

/// The page's listener (bound before anything else starts, so a taken port
/// fails the command at once).
pub async fn bind(args: &StudioArgs) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(args.studio_bind).await.with_context(|| format!("binding {}", args.studio_bind))
}

/// The access key a page on `bound` requires: the one given (checked), one
/// made up for a page shared beyond loopback, none for loopback alone.
fn access_key(given: Option<&str>, bound: SocketAddr) -> Result<Option<String>> {
    match given {
        Some(key) if !safety::valid_access_key(key) => anyhow::bail!("--access-key must be 16 or more letters, digits or - _ . ~ (it travels in a link and a cookie)"),
        Some(key) => Ok(Some(key.to_string())),
        None if bound.ip().is_loopback() => Ok(None),
        None => Ok(Some(safety::new_token())),
    }
}

/// Who the studio acts as, and over which connection.
pub struct Backend {
    /// The registered agent.
    pub agent: String,
    /// Its secret key (stays in this process).
    pub key: SecretKey,
    /// The deployment its events are signed for.
    pub audience: String,
    /// The NATS connection.
    pub nats: async_nats::Client,
}

/// Serve the page on `listener` as `backend` until `shutdown`. `adopted`:
/// jobs this agent already ran (`generate --studio`), shown in the
/// session's history from their records.
pub async fn serve(
    listener: tokio::net::TcpListener,
    backend: Backend,
    args: &StudioArgs,
    assets: Option<PathBuf>,
    adopted: Vec<jobs::Adopted>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let bound = listener.local_addr()?;
    let access_key = access_key(args.access_key.as_deref(), bound)?;
    let Backend { agent, key, audience, nats } = backend;
    let (close, closing) = tokio::sync::watch::channel(false);
    let studio = Arc::new(Studio {
        client: AgentClient::new(nats.clone(), &agent, key.clone(), &audience),
        agent,
        nats,
        key,
        audience,
        token: safety::new_token(),
        hosts: safety::allowed_hosts(bound),
        open_to_any_host: bound.ip().is_unspecified(),
        access_key: access_key.clone(),
        max_upload_bytes: args.max_upload_bytes,
        default_model: args.model.clone(),
        job_timeout: Duration::from_secs(args.job_timeout_s),
        assets,
        session: jobs::Session::new(),
        closing,
    });
    let records = studio.follower_client();
    for job in adopted {
        jobs::adopt(&studio.session, &records, job).await;
    }
    // Tests and scripts read this line for the port (the adopted jobs are in by then).
    let link = access_key.as_deref().map(|k| format!("?key={k}")).unwrap_or_default();
    eprintln!("orfeas studio listening on http://{bound}/{link} as agent {:?}", studio.agent);
    if bound.ip().is_unspecified() {
        eprintln!("  shared on every interface: open it as http://THIS-MACHINE:{}/{link}", bound.port());
    }
    let served = axum::serve(listener, routes::router(studio)).with_graceful_shutdown(async move {
            shutdown.await;
            let _ = close.send(true);
        })
        .await;
    served.context("serving the studio")
}
