//! `orfeas generate`: images in, model files out. With no NATS configured it starts the
//! embedded default — a child nats-server, this node's actor tree, a throwaway agent
//! key — and tears all of it down on success, on error and on Ctrl-C. With `--nats`
//! (or `nats.url`) it is a plain agent client: it submits as `--agent` with `--key`
//! and starts nothing inside the deployment.
//!
//! Everything that can be checked before work is (formats, parameters, output paths);
//! one image's failure is reported and the others go on. Exit codes: [`EXIT_OK`],
//! [`EXIT_FAILED`], [`EXIT_USAGE`], [`EXIT_SETUP`], [`EXIT_INTERRUPTED`].

mod paths;
mod summary;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use orfeas_actors::{node, registry::Registry};
use orfeas_wire::{
    client::AgentClient,
    v1::{EventKind, Format, SubmitJob},
    SecretKey,
};

use crate::{agent, cli::GenerateArgs, config::Config};
use paths::Plan;
use summary::{ImageOutcome, Material};

/// Longest side of the printed object when `--size-mm` is not given: model units read
/// as millimetres would make the README's first example 1.6 mm across.
pub const DEFAULT_PRINT_SIZE_MM: f32 = 80.0;

/// Every image completed.
pub const EXIT_OK: u8 = 0;
/// At least one image failed (the others were still made).
pub const EXIT_FAILED: u8 = 1;
/// Bad arguments: nothing was started.
pub const EXIT_USAGE: u8 = 2;
/// Configuration or setup failed (config file, nats-server, node, connection, key).
pub const EXIT_SETUP: u8 = 3;
/// Ctrl-C.
pub const EXIT_INTERRUPTED: u8 = 130;

/// The agent name of the embedded setup's throwaway key.
const LOCAL_AGENT: &str = "local";

/// A usage error: exit [`EXIT_USAGE`].
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Usage {}

/// Interrupted by Ctrl-C: exit [`EXIT_INTERRUPTED`].
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}
impl std::error::Error for Interrupted {}

/// The exit code for an error out of [`run`] (usage, interrupted, or setup).
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<Usage>().is_some() {
        EXIT_USAGE
    } else if error.downcast_ref::<Interrupted>().is_some() {
        EXIT_INTERRUPTED
    } else {
        EXIT_SETUP
    }
}

fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(message.into()))
}

/// What was checked before any work: one job (or the reason there is none) per image.
struct Prepared {
    plan: Plan,
    job: std::result::Result<SubmitJob, String>,
}

/// Apply `--matting` / `--matting-model` over `[matting]`; usage errors for
/// combinations that cannot work, checked before anything starts.
fn with_matting(mut config: Config, args: &GenerateArgs, client: bool) -> Result<Config> {
    if args.matting.is_none() && args.matting_model.is_none() {
        return Ok(config);
    }
    if client {
        // A deployment's nodes matte with what their operator configured.
        return Err(usage("--matting and --matting-model choose the embedded node's matting; with --nats (or nats.url) the deployment's nodes use their own"));
    }
    match (args.matting.as_deref(), &args.matting_model) {
        (Some("flood"), Some(dir)) => return Err(usage(format!("--matting flood takes no --matting-model ({})", dir.display()))),
        (Some("flood"), None) => {
            config.matting.method = "flood".into();
            config.matting.model.clear();
        }
        (_, Some(dir)) => {
            if !dir.join("manifest.toml").is_file() {
                return Err(usage(format!("--matting-model {}: no manifest.toml there (a matting model is a folder with manifest.toml and model.pt)", dir.display())));
            }
            config.matting.method = "learned".into();
            config.matting.model = dir.display().to_string();
        }
        (_, None) => config.matting.method = "learned".into(),
    }
    config.matting_method().map_err(|e| usage(format!("--matting: {e:#}")))?;
    Ok(config)
}

/// Run `generate`; returns the number of images that failed.
pub async fn run(config: Config, args: GenerateArgs) -> Result<usize> {
    let url = args.nats.clone().unwrap_or_else(|| config.nats.url.clone());
    let config = with_matting(config, &args, !url.is_empty())?;
    let formats = paths::formats(args.format.as_deref(), args.output.as_deref()).map_err(usage)?;
    let mut params = args.shape.params();
    if params.size_mm.is_none() {
        params.size_mm = Some(DEFAULT_PRINT_SIZE_MM);
    }
    params.validate().map_err(usage)?;
    if let Some(size) = params.size_mm.filter(|&s| s < orfeas_mesh::MIN_PRINT_SIZE_MM as f32) {
        eprintln!("warning: --size-mm {size} makes the object {size} mm across, under {} mm: most printers cannot make that", orfeas_mesh::MIN_PRINT_SIZE_MM);
    }
    if args.shape.texture && formats.contains(&Format::Obj) && args.images.len() > 1 {
        // Every textured OBJ names its parts model.mtl and model.png: side by side they would overwrite each other.
        return Err(usage("--texture with obj output takes one image per run (or use glb, which embeds the texture)"));
    }
    if !(args.density_g_cm3 > 0.0 && args.price_per_kg >= 0.0) {
        return Err(usage(format!("--density-g-cm3 {} must be > 0 and --price-per-kg {} ≥ 0", args.density_g_cm3, args.price_per_kg)));
    }
    for image in &args.images {
        if !image.is_file() {
            return Err(usage(format!("{} does not exist", image.display())));
        }
    }
    let plans = paths::plan(args.output.as_deref(), &args.images, &formats).map_err(usage)?;
    // A file that is not an image fails alone, like a job the node refuses.
    let prepared: Vec<Prepared> = plans
        .into_iter()
        .map(|plan| {
            let job = agent::job_for(&plan.image, &args.model, formats.clone(), params.clone()).map_err(|e| format!("{e:#}"));
            Prepared { plan, job }
        })
        .collect();

    // The page's port is taken before any work, so a busy port fails at once.
    let studio = match args.studio {
        true => {
            let page = studio_args(&args);
            let listener = crate::studio::bind(&page).await.map_err(|e| usage(format!("--studio: {e:#}")))?;
            Some((listener, page))
        }
        false => None,
    };
    let started = Instant::now();
    // With --studio the summary is printed before the page is served, not when it stops.
    let serves_studio = studio.map(|(listener, page)| Studio { listener, page, started });
    let printed_by_studio = serves_studio.is_some();
    let outcomes = if url.is_empty() {
        run_embedded(&config, &args, prepared, serves_studio).await?
    } else {
        run_client(&config, &args, &url, prepared, serves_studio).await?
    };
    if !printed_by_studio {
        summarize(&args, &outcomes, started)?;
    }
    Ok(outcomes.iter().filter(|o| o.status != "completed").count())
}

/// The `--json` document and the closing line of a run.
fn summarize(args: &GenerateArgs, outcomes: &[ImageOutcome], started: Instant) -> Result<()> {
    let failed = outcomes.iter().filter(|o| o.status != "completed").count();
    if args.json {
        let doc = serde_json::json!({ "images": outcomes, "completed": outcomes.len() - failed, "failed": failed });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    eprintln!(
        "generate: {} of {} images completed, {failed} failed in {:.1} s",
        outcomes.len() - failed,
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Submit to an existing deployment as a named agent: nothing is started there and no
/// key is registered (the operator registered this agent's key).
async fn run_client(config: &Config, args: &GenerateArgs, url: &str, prepared: Vec<Prepared>, studio: Option<Studio>) -> Result<Vec<ImageOutcome>> {
    let (Some(agent), Some(key)) = (&args.agent, &args.key) else {
        return Err(usage(format!(
            "NATS {url} is a deployment: submit as its registered agent with --agent NAME --key FILE (or ORFEAS_AGENT, ORFEAS_AGENT_KEY)"
        )));
    };
    let key = crate::read_key(key)?;
    let client = orfeas_actors::bus::connect(url, &format!("orfeas-agent-{agent}")).await.with_context(|| format!("connecting to {url}"))?;
    let deployment = config.node.deployment.clone();
    let outcome = tokio::select! {
        outcomes = follow_all(&client, agent, &key, &deployment, args, prepared) => Ok(outcomes),
        _ = tokio::signal::ctrl_c() => Err(anyhow::Error::new(Interrupted)),
    };
    let outcome = match (outcome, studio) {
        (Ok(outcomes), Some(page)) => {
            let backend = crate::studio::Backend { agent: agent.clone(), key, audience: deployment, nats: client.clone() };
            serve_studio(page, backend, args, &outcomes).await.map(|()| outcomes)
        }
        (outcome, _) => outcome,
    };
    let _ = client.flush().await;
    outcome
}

/// The embedded default: a child nats-server, a node, a throwaway key, all gone after.
async fn run_embedded(config: &Config, args: &GenerateArgs, prepared: Vec<Prepared>, studio: Option<Studio>) -> Result<Vec<ImageOutcome>> {
    let (embedded, url) = crate::embedded::server_or_embedded(config, None).await?;
    let scratch = tempfile::Builder::new().prefix("orfeas-generate-").tempdir()?;
    let mut settings = config.node_settings(&url, scratch.path().join("store"))?;
    // A throwaway setup keeps its files in the scratch folder.
    settings.store_s3 = None;
    // A one-off command serves no operator endpoint.
    settings.http_listen = None;
    // Its jobs live and die with it: on Ctrl-C nothing waits for them.
    settings.shutdown_grace = Duration::ZERO;
    let deployment = settings.deployment.clone();
    // The code names the cause for scripts (`matting_contract`, `model_load`, …).
    let node = node::start(settings).await.map_err(|e| anyhow::anyhow!("starting the node ({}): {e}", e.code()))?;
    let key = SecretKey::generate();
    let registered = Registry::new(node.bus.agents.clone(), node.bus.nodes.clone()).add_agent_key(LOCAL_AGENT, &key.public().to_hex()).await;
    let outcome = match registered {
        Err(e) => Err(anyhow::Error::from(e).context("registering the local agent")),
        Ok(_) => tokio::select! {
            outcomes = follow_all(&node.bus.client, LOCAL_AGENT, &key, &deployment, args, prepared) => Ok(outcomes),
            _ = tokio::signal::ctrl_c() => Err(anyhow::Error::new(Interrupted)),
        },
    };
    let outcome = match (outcome, studio) {
        (Ok(outcomes), Some(page)) => {
            let backend = crate::studio::Backend { agent: LOCAL_AGENT.into(), key, audience: deployment, nats: node.bus.client.clone() };
            serve_studio(page, backend, args, &outcomes).await.map(|()| outcomes)
        }
        (outcome, _) => outcome,
    };
    node.stop().await;
    drop(embedded);
    outcome
}

/// The studio page `--studio` serves once the images are done.
struct Studio {
    listener: tokio::net::TcpListener,
    page: crate::studio::StudioArgs,
    /// When the run began, for its closing line.
    started: Instant,
}

/// The studio's settings for `generate --studio`: its defaults, this run's model preselected.
fn studio_args(args: &GenerateArgs) -> crate::studio::StudioArgs {
    crate::studio::StudioArgs {
        nats: None,
        agent: None,
        key: None,
        studio_bind: args.studio_bind,
        // Shared beyond loopback, the page asks for this key (made up when unset).
        access_key: std::env::var("ORFEAS_STUDIO_ACCESS_KEY").ok().filter(|k| !k.is_empty()),
        max_upload_bytes: crate::studio::DEFAULT_MAX_UPLOAD_BYTES,
        model: args.model.clone(),
        job_timeout_s: args.timeout_s,
        assets: None,
    }
}

/// Serve the studio page with this run's jobs in its history until Ctrl-C / SIGTERM.
async fn serve_studio(Studio { listener, page, started }: Studio, backend: crate::studio::Backend, args: &GenerateArgs, outcomes: &[ImageOutcome]) -> Result<()> {
    summarize(args, outcomes, started)?;
    let adopted = outcomes
        .iter()
        .filter_map(|o| {
            let name = o.image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            o.job_id.map(|id| crate::studio::Adopted { id, name })
        })
        .collect();
    let assets = crate::studio::viewer_assets(&page);
    crate::studio::serve(listener, backend, &page, assets, adopted, crate::shutdown_signal()).await
}

/// Submit every image, then follow them all at once: one bar per image, each
/// advancing as its events arrive.
async fn follow_all(
    nats: &async_nats::Client,
    agent: &str,
    key: &SecretKey,
    deployment: &str,
    args: &GenerateArgs,
    prepared: Vec<Prepared>,
) -> Vec<ImageOutcome> {
    // Bars go to stderr, so stdout stays the JSON document with --json.
    let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let names: Vec<String> = prepared.iter().map(|p| p.plan.image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()).collect();
    let style = bar_style(&names);
    // Every bar lives until all images are done: a finished bar that is dropped becomes
    // a "zombie" line the next redraw of the others may erase (seen under a pty at 60
    // columns: the first image's finished bar vanished), so the final screen would
    // depend on which image finished first.
    let handles: Vec<ProgressBar> = names
        .iter()
        .map(|name| {
            let bar = bars.add(ProgressBar::new(100));
            bar.set_style(style.clone());
            bar.set_prefix(name.clone());
            bar
        })
        .collect();
    let tasks = prepared.into_iter().zip(&handles).map(|(p, bar)| {
        let client = AgentClient::new(nats.clone(), agent, key.clone(), deployment);
        one(client, p, bar, &bars, args)
    });
    let outcomes = futures::future::join_all(tasks).await;
    drop(handles);
    outcomes
}

/// Longest image name shown in full before a bar; longer ones push their bar right.
const BAR_NAME_WIDTH: usize = 24;

/// One line per image that never wraps: the names right-aligned to the longest (at most
/// [`BAR_NAME_WIDTH`]), a 20-cell bar, the percent, and the message cut to the
/// terminal's width (`wide_msg`). A line wider than the terminal wraps and every redraw
/// then leaves its second half behind.
fn bar_style(names: &[String]) -> ProgressStyle {
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0).min(BAR_NAME_WIDTH);
    ProgressStyle::with_template(&format!("{{prefix:>{width}}} [{{bar:20}}] {{pos:>3}}% {{wide_msg}}")).expect("template").progress_chars("=> ")
}

/// Print `line` above the bars, or as a plain line without a terminal.
fn say(bars: &MultiProgress, bar: &ProgressBar, line: &str) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        let _ = bars.println(line);
    }
}

async fn one(mut client: AgentClient, p: Prepared, bar: &ProgressBar, bars: &MultiProgress, args: &GenerateArgs) -> ImageOutcome {
    let name = p.plan.image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let image = p.plan.image.clone();
    let job = match p.job {
        Ok(job) => job,
        Err(e) => {
            bar.abandon_with_message("failed");
            say(bars, bar, &format!("{name}: failed (invalid_image): {e}"));
            return ImageOutcome::failed(image, None, "invalid_image", e);
        }
    };
    let job_id = job.job_id;
    let mut events = match client.submit(&job).await {
        Ok(events) => events,
        Err(e) => {
            bar.abandon_with_message("not submitted");
            say(bars, bar, &format!("{name}: failed (submit): {e}"));
            return ImageOutcome::failed(image, Some(job_id), "submit_failed", e.to_string());
        }
    };
    bar.set_message("submitted");
    let last = agent::follow(&mut client, &mut events, Duration::from_secs(args.timeout_s), |event| {
        if let EventKind::Progress { percent, .. } = &event.kind {
            bar.set_position(u64::from(*percent));
        }
        bar.set_message(agent::describe(event));
        // Without a terminal the bars are hidden: one line per event.
        if bar.is_hidden() {
            eprintln!("{name}: {}", agent::describe(event));
        }
    })
    .await;
    let outcome = match last.map(|e| e.kind) {
        Ok(EventKind::Completed { results, report, previews, .. }) => match save(&client, &p.plan, job_id, &results, &previews, report, args).await {
            Ok(outcome) => {
                bar.set_position(100);
                bar.finish_with_message("done");
                outcome
            }
            Err(e) => {
                bar.abandon_with_message("not saved");
                ImageOutcome::failed(image, Some(job_id), "write_failed", format!("{e:#}"))
            }
        },
        Ok(kind @ (EventKind::Failed(_) | EventKind::Rejected(_))) => {
            let (EventKind::Failed(f) | EventKind::Rejected(f)) = &kind else { unreachable!() };
            bar.abandon_with_message(format!("{} ({})", kind.name(), f.code));
            ImageOutcome::failed(image, Some(job_id), f.code.as_str(), f.error.clone())
        }
        Ok(other) => {
            bar.abandon_with_message(other.name().to_string());
            ImageOutcome::failed(image, Some(job_id), "unexpected_event", other.name().to_string())
        }
        Err(e) => {
            bar.abandon_with_message("no answer");
            ImageOutcome::failed(image, Some(job_id), "timeout", format!("{e:#}"))
        }
    };
    for line in summary::lines(&outcome) {
        say(bars, bar, &line);
    }
    outcome
}

/// Fetch the model files and previews to the planned paths and write the report.
async fn save(
    client: &AgentClient,
    plan: &Plan,
    job_id: uuid::Uuid,
    results: &[orfeas_wire::v1::ResultFile],
    previews: &[orfeas_wire::v1::Preview],
    report: Option<orfeas_wire::v1::PrintReport>,
    args: &GenerateArgs,
) -> Result<ImageOutcome> {
    let mut files = Vec::new();
    for file in results {
        let to = plan.models.iter().find(|(f, _)| *f == file.format).map(|(_, p)| p.clone()).unwrap_or_else(|| plan.stem.with_extension(file.format.extension()));
        files.extend(agent::fetch(client, &job_id, file, &to).await?);
    }
    let mut written_previews = Vec::new();
    for preview in previews {
        let to = plan.preview(&preview.view);
        write_fetched(client, &job_id, preview, &to).await?;
        written_previews.push(to);
    }
    let material = report.as_ref().map(|r| Material::of(r, args.density_g_cm3, args.price_per_kg));
    let advice = report.as_ref().map(|r| summary::advice(r, &args.model)).unwrap_or_default();
    let mut outcome = ImageOutcome {
        image: plan.image.clone(),
        status: "completed",
        job_id: Some(job_id),
        files,
        previews: written_previews,
        report_file: None,
        report,
        material,
        advice,
        code: None,
        error: None,
    };
    if outcome.report.is_some() {
        let doc = serde_json::json!({
            "image": outcome.image,
            "job_id": job_id,
            "model": args.model,
            "report": outcome.report,
            "material": outcome.material,
            "advice": outcome.advice,
        });
        std::fs::write(&plan.report, serde_json::to_vec_pretty(&doc)?).with_context(|| format!("writing {}", plan.report.display()))?;
        outcome.report_file = Some(plan.report.clone());
    }
    Ok(outcome)
}

/// A preview: copied from a `file://` URL this machine sees, else fetched
/// over NATS; either way checked against its signed sha256 when the node
/// sent one (nodes before previews carried it did not).
async fn write_fetched(client: &AgentClient, job_id: &uuid::Uuid, preview: &orfeas_wire::v1::Preview, to: &Path) -> Result<PathBuf> {
    if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let (location, sha256) = (&preview.location, preview.sha256.as_deref());
    if let Some(path) = preview.url.strip_prefix("file://").filter(|p| Path::new(p).is_file()) {
        agent::copy_verified(Path::new(path), to, sha256)?;
    } else {
        let bytes = client.fetch_file(job_id, location, sha256, Duration::from_secs(30)).await.with_context(|| format!("fetching {location} over NATS"))?;
        std::fs::write(to, bytes).with_context(|| format!("writing {}", to.display()))?;
    }
    Ok(to.to_path_buf())
}
