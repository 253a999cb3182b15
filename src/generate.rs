//! `orfeas generate`: images in, model files out. With no NATS configured
//! it starts the embedded default — a child nats-server, this node's actor
//! tree, a throwaway agent key — and tears all of it down on success, on
//! error and on Ctrl-C.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use orfeas_actors::{node, registry::Registry};
use orfeas_wire::{
    client::AgentClient,
    v1::{EventKind, Format},
    SecretKey,
};

use crate::{agent, cli::GenerateArgs, config::Config};

/// The agent name of the throwaway key.
const LOCAL_AGENT: &str = "local";

/// Run `generate`; returns the number of images that failed.
pub async fn run(config: Config, args: GenerateArgs) -> Result<usize> {
    let formats = agent::formats(&args.format)?;
    args.shape.params().validate().map_err(anyhow::Error::msg)?;
    if args.shape.texture && formats.contains(&Format::Obj) && args.images.len() > 1 {
        // Every textured OBJ names its parts model.mtl and model.png: side by side they would overwrite each other.
        bail!("--texture with obj output takes one image per run (or use glb, which embeds the texture)");
    }
    for image in &args.images {
        if !image.is_file() {
            bail!("{} does not exist", image.display());
        }
    }
    let (embedded, url) = crate::embedded::server_or_embedded(&config, args.nats.as_deref()).await?;
    let scratch = tempfile::Builder::new().prefix("orfeas-generate-").tempdir()?;
    let store_root = if embedded.is_some() { scratch.path().join("store") } else { config.store_root() };
    let mut settings = config.node_settings(&url, store_root)?;
    if embedded.is_some() {
        // A throwaway setup keeps its files in the scratch folder.
        settings.store_s3 = None;
    }
    // A one-off command serves no operator endpoint.
    settings.http_listen = None;
    // Its jobs live and die with it: on Ctrl-C nothing waits for them.
    settings.shutdown_grace = std::time::Duration::ZERO;
    let deployment = settings.deployment.clone();
    let node = node::start(settings).await.context("starting the node")?;
    let outcome = tokio::select! {
        result = submit_all(&node, &deployment, &args, formats) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    node.stop().await;
    drop(embedded);
    outcome
}

async fn submit_all(node: &node::RunningNode, deployment: &str, args: &GenerateArgs, formats: Vec<Format>) -> Result<usize> {
    let key = SecretKey::generate();
    Registry::new(node.bus.agents.clone(), node.bus.nodes.clone()).add_agent_key(LOCAL_AGENT, &key.public().to_hex()).await?;
    let mut client = AgentClient::new(node.bus.client.clone(), LOCAL_AGENT, key, deployment);
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos:>3}% {msg}").expect("template").progress_chars("=> ");
    let mut running = Vec::new();
    for image in &args.images {
        let job = agent::job_for(image, &args.model, formats.clone(), args.shape.params())?;
        let events = client.submit(&job).await?;
        let bar = bars.add(ProgressBar::new(100));
        bar.set_style(style.clone());
        bar.set_prefix(image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        bar.set_message("submitted");
        running.push((image.clone(), events, bar));
    }
    let mut failed = 0;
    for (image, mut events, bar) in running {
        let name = image.display().to_string();
        let last = agent::follow(&mut client, &mut events, Duration::from_secs(args.timeout_s), |event| {
            if let EventKind::Progress { percent, .. } = &event.kind {
                bar.set_position(u64::from(*percent));
            }
            bar.set_message(agent::describe(event));
            // Without a terminal the bars are hidden: print one line per event.
            if bar.is_hidden() {
                eprintln!("{name}: {}", agent::describe(event));
            }
        })
        .await;
        match last.map(|e| (e.job_id, e.kind)) {
            Ok((job_id, EventKind::Completed { results, mesh, .. })) => {
                let mut written: Vec<PathBuf> = Vec::new();
                for file in &results {
                    let to = agent::output_path(args.output.as_deref(), &image, file.format);
                    written.extend(agent::fetch(&client, &job_id, file, &to).await?);
                }
                bar.set_position(100);
                let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
                let summary = format!("{} faces, closed manifold: {} → {}", mesh.faces, mesh.closed_manifold, names.join(", "));
                if bar.is_hidden() {
                    eprintln!("{name}: wrote {summary}");
                }
                bar.finish_with_message(summary);
            }
            Ok((_, kind)) => {
                failed += 1;
                bar.abandon_with_message(match &kind {
                    EventKind::Failed(f) | EventKind::Rejected(f) => format!("{} ({}): {}", kind.name(), f.code, f.error),
                    other => other.name().to_string(),
                });
            }
            Err(e) => {
                failed += 1;
                bar.abandon_with_message(format!("error: {e:#}"));
            }
        }
    }
    Ok(failed)
}
