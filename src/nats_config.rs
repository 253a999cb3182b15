//! `orfeas nats-config`: the NATS side of agent isolation. Writes an
//! `authorization` block (include it from the server's config) with one
//! nkey user per agent — the agent's own Ed25519 signing key as a NATS user
//! key — and one or more node users:
//!
//! - an agent may publish only on its own submit, status, cancel and fetch
//!   subjects and `orfeas.models.list`, and read the node keys
//!   (`KV_orfeas_nodes`, read-only JetStream API);
//! - it may subscribe only to `orfeas.events.<itself>.>` and its own inbox
//!   prefix `_INBOX_<itself>` (clients set it: `custom_inbox_prefix`);
//! - nodes (and operator commands, with `nats.nkey_seed_file`) may use every
//!   subject.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use orfeas_wire::{subjects, PublicKey};

use crate::config::Config;

/// `orfeas nats-config`
#[derive(Args, Debug)]
pub struct NatsConfigArgs {
    /// An agent as NAME=PUBLIC_KEY_HEX (repeatable).
    #[arg(long = "agent")]
    pub agents: Vec<String>,
    /// Also every agent in the registry of this deployment (its unrevoked keys).
    #[arg(long)]
    pub from_registry: bool,
    /// NATS URL (with --from-registry).
    #[arg(long)]
    pub nats: Option<String>,
    /// A node user: an nkey (`U…`) or an Ed25519 public key (hex) (repeatable).
    #[arg(long = "node", required = true)]
    pub nodes: Vec<String>,
    /// Write here instead of stdout.
    #[arg(short, long)]
    pub out: Option<PathBuf>,
}

/// The inbox prefix an isolated agent's connection uses.
pub fn inbox_prefix(agent: &str) -> String {
    format!("_INBOX_{agent}")
}

fn quoted(items: &[String]) -> String {
    items.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
}

/// The `authorization` block for `agents` (name, public key) and node users.
pub fn render(agents: &[(String, PublicKey)], nodes: &[String]) -> String {
    let mut out = String::from(
        "# orfeas NATS isolation, written by `orfeas nats-config`; include it from the\n\
         # server configuration (`include isolation.conf`). Agents connect with their\n\
         # signing key as nkey and inbox prefix _INBOX_<agent>.\n\
         authorization {\n  users = [\n",
    );
    for node in nodes {
        out += &format!("    # node\n    {{ nkey: \"{node}\", permissions: {{ publish: \">\", subscribe: \">\" }} }}\n");
    }
    let nodes_kv = subjects::NODES_BUCKET;
    for (agent, key) in agents {
        let publish = vec![
            subjects::submit(agent),
            subjects::status(agent),
            subjects::cancel(agent),
            subjects::fetch(agent),
            subjects::MODELS_LIST.to_string(),
            "$JS.API.INFO".to_string(),
            format!("$JS.API.STREAM.INFO.KV_{nodes_kv}"),
            format!("$JS.API.STREAM.MSG.GET.KV_{nodes_kv}"),
            format!("$JS.API.DIRECT.GET.KV_{nodes_kv}.>"),
        ];
        let subscribe = vec![format!("orfeas.events.{agent}.>"), format!("{}.>", inbox_prefix(agent))];
        out += &format!(
            "    # agent {agent}\n    {{ nkey: \"{}\", permissions: {{\n        publish: {{ allow: [{}] }}\n        subscribe: {{ allow: [{}] }}\n    }} }}\n",
            key.nats_user(),
            quoted(&publish),
            quoted(&subscribe)
        );
    }
    out += "  ]\n}\n";
    out
}

fn node_user(text: &str) -> Result<String> {
    if text.starts_with('U') && text.len() == 56 {
        return Ok(text.to_string());
    }
    Ok(PublicKey::from_hex(text).with_context(|| format!("--node {text:?} is neither an nkey (U…) nor a public key"))?.nats_user())
}

/// Run `orfeas nats-config`.
pub async fn run(config: &Config, args: &NatsConfigArgs) -> Result<()> {
    let mut agents = Vec::new();
    for spec in &args.agents {
        let Some((name, hex)) = spec.split_once('=') else { bail!("--agent {spec:?} is not NAME=PUBLIC_KEY_HEX") };
        if !subjects::is_valid_agent_name(name) {
            bail!("agent name {name:?} is not 1-64 of a-z 0-9 _ -");
        }
        agents.push((name.to_string(), PublicKey::from_hex(hex)?));
    }
    if args.from_registry {
        let url = crate::nats_url(config, &args.nats)?;
        let client = orfeas_actors::bus::connect_as(&url, "orfeas-cli", config.nats_seed()?.as_deref()).await?;
        let bus = orfeas_actors::bus::Bus::attach(client).await?;
        for record in orfeas_actors::registry::Registry::new(bus.agents.clone(), bus.nodes.clone()).agents().await? {
            for key in record.keys.iter().filter(|k| !k.revoked) {
                agents.push((record.name.clone(), PublicKey::from_hex(&key.public_key)?));
            }
        }
    }
    let nodes = args.nodes.iter().map(|n| node_user(n)).collect::<Result<Vec<_>>>()?;
    let text = render(&agents, &nodes);
    match &args.out {
        Some(path) => std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use orfeas_wire::SecretKey;

    #[test]
    fn each_agent_gets_only_its_own_subjects() {
        let alice = SecretKey::from_seed([1; 32]).public();
        let node = SecretKey::from_seed([2; 32]).public().nats_user();
        let text = render(&[("alice".into(), alice)], std::slice::from_ref(&node));
        assert!(text.contains(&format!("nkey: \"{}\"", alice.nats_user())));
        assert!(text.contains("\"orfeas.jobs.submit.alice\"") && text.contains("\"orfeas.events.alice.>\"") && text.contains("\"_INBOX_alice.>\""));
        assert!(!text.contains("orfeas.jobs.submit.*") && !text.contains("orfeas.events.>"), "{text}");
        assert!(text.contains(&format!("{{ nkey: \"{node}\", permissions: {{ publish: \">\", subscribe: \">\" }} }}")));
        assert_eq!(node_user(&SecretKey::from_seed([2; 32]).public().to_hex()).unwrap(), node);
    }
}
