//! Commands for running a cluster: `orfeas nodes` (live nodes and their
//! load), `orfeas fetch` (a job's files over NATS) and `orfeas streams`
//! (check or apply stream and bucket settings).

use std::{path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use orfeas_actors::{bus, now_ms, registry::Registry, topology};
use orfeas_wire::{v1::EventKind, v1::NodeRecord};

use crate::{
    cli::{FetchArgs, NodesArgs, StreamsArgs},
    config::Config,
};

/// `orfeas nodes`: one line per live node.
pub async fn nodes(url: &str, args: &NodesArgs) -> Result<()> {
    let client = bus::connect(url, "orfeas-cli").await?;
    let bus = bus::Bus::attach(client)
        .await
        .context("no orfeas deployment on this NATS (no node has started yet)")?;
    let nodes = Registry::new(bus.agents.clone(), bus.nodes.clone())
        .nodes()
        .await?;
    if args.json {
        for node in &nodes {
            println!("{}", serde_json::to_string(&node_json(node))?);
        }
        return Ok(());
    }
    println!("{}", table(&nodes, now_ms()));
    Ok(())
}

fn node_json(n: &NodeRecord) -> serde_json::Value {
    serde_json::json!({
        "node_id": n.node_id,
        "state": n.state,
        "version": n.version,
        "devices": n.devices.iter().map(|d| &d.id).collect::<Vec<_>>(),
        "models": n.models,
        "capacity": n.capacity,
        "held_jobs": n.held_jobs,
        "busy_devices": n.busy_devices,
        "finished_jobs": n.finished_jobs,
        "started_at_ms": n.started_at_ms,
        "heartbeat_at_ms": n.heartbeat_at_ms,
    })
}

/// The `orfeas nodes` table.
fn table(nodes: &[NodeRecord], now_ms: u64) -> String {
    let mut rows = vec![[
        "NODE".to_string(),
        "STATE".into(),
        "JOBS".into(),
        "BUSY".into(),
        "DONE".into(),
        "DEVICES".into(),
        "MODELS".into(),
        "VERSION".into(),
        "SEEN".into(),
    ]];
    for n in nodes {
        rows.push([
            n.node_id.clone(),
            if n.state.is_empty() {
                "?".into()
            } else {
                n.state.clone()
            },
            format!("{}/{}", n.held_jobs, n.capacity),
            format!("{}/{}", n.busy_devices, n.devices.len()),
            n.finished_jobs.to_string(),
            n.devices
                .iter()
                .map(|d| d.id.as_str())
                .collect::<Vec<_>>()
                .join(","),
            n.models.join(","),
            n.version.clone(),
            if n.heartbeat_at_ms == 0 {
                "-".into()
            } else {
                format!(
                    "{:.1}s ago",
                    now_ms.saturating_sub(n.heartbeat_at_ms) as f64 / 1000.0
                )
            },
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&format!("{} live node(s)", nodes.len()));
    out
}

/// `orfeas fetch JOB_ID`: the manifest, then every file in chunks, each
/// checked against the SHA-256 in the signed manifest.
pub async fn fetch(config: &Config, args: &FetchArgs) -> Result<()> {
    let mut agent = args.agent.client(config).await?;
    let timeout = Duration::from_secs(args.timeout_s);
    let manifest = agent
        .fetch_manifest(&args.job_id, timeout)
        .await
        .with_context(|| format!("fetching the results of job {}", args.job_id))?;
    let EventKind::Completed {
        results, previews, ..
    } = manifest.kind
    else {
        bail!("job {} has no results", args.job_id)
    };
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let mut wanted: Vec<(String, Option<String>)> = results
        .iter()
        .map(|r| (r.location.clone(), Some(r.sha256.clone())))
        .collect();
    if args.previews {
        wanted.extend(previews.iter().map(|p| (p.location.clone(), None)));
    }
    for (location, sha256) in wanted {
        let bytes = agent
            .fetch_file(&args.job_id, &location, sha256.as_deref(), timeout)
            .await?;
        let name = Path::new(&location)
            .file_name()
            .context("result location has no file name")?;
        let to = args.output.join(name);
        std::fs::write(&to, &bytes).with_context(|| format!("writing {}", to.display()))?;
        println!(
            "wrote {} ({} bytes{})",
            to.display(),
            bytes.len(),
            if sha256.is_some() {
                ", sha256 verified"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// `orfeas streams [--apply]`.
pub async fn streams(config: &Config, url: &str, args: &StreamsArgs) -> Result<bool> {
    let client = bus::connect(url, "orfeas-cli").await?;
    let js = async_nats::jetstream::new(client);
    let settings = config.node_settings(url, config.store_root())?;
    if args.apply {
        let changed = topology::apply(&js, &settings).await?;
        for c in &changed {
            println!("updated: {c}");
        }
        println!(
            "{} setting(s) updated; streams and buckets match this configuration",
            changed.len()
        );
        return Ok(true);
    }
    let conflicts = topology::check(&js, &settings).await?;
    for c in &conflicts {
        println!(
            "{}: {c}",
            if c.updatable {
                "differs (--apply can update)"
            } else {
                "differs (cannot change in place)"
            }
        );
    }
    if conflicts.is_empty() {
        println!(
            "streams and buckets match this configuration (replicas {})",
            settings.replicas
        );
    }
    Ok(conflicts.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_load_devices_and_heartbeat_age() {
        let node = NodeRecord {
            node_id: "gpu-a".into(),
            public_key: "00".into(),
            version: "0.1.0".into(),
            started_at_ms: 1,
            heartbeat_at_ms: 9_000,
            state: "ready".into(),
            devices: vec![
                orfeas_wire::v1::NodeDevice {
                    id: "cuda0".into(),
                    total_bytes: None,
                },
                orfeas_wire::v1::NodeDevice {
                    id: "cuda1".into(),
                    total_bytes: None,
                },
            ],
            models: vec!["inflate".into(), "null".into()],
            capacity: 32,
            held_jobs: 5,
            busy_devices: 1,
            finished_jobs: 12,
        };
        let text = table(&[node], 10_500);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NODE"), "{text}");
        for cell in [
            "gpu-a",
            "ready",
            "5/32",
            "1/2",
            "12",
            "cuda0,cuda1",
            "inflate,null",
            "1.5s ago",
        ] {
            assert!(lines[1].contains(cell), "{cell} missing: {text}");
        }
        assert_eq!(lines[2], "1 live node(s)");
    }
}
