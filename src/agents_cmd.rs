//! `orfeas agents add | list | show | set | revoke | rotate`: the agent
//! registry (`orfeas_agents`) from the command line.

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use orfeas_actors::{
    bus,
    registry::{AgentRecord, PolicyUpdate, Registry},
};
use orfeas_wire::v1::Lane;

use crate::config::Config;

/// `orfeas agents …`
#[derive(Subcommand, Debug)]
pub enum AgentsCommand {
    /// Register a public key for an agent (creates the agent if new) and
    /// optionally set its policy.
    Add {
        /// Agent name (subject token: a-z 0-9 _ -).
        name: String,
        /// Public key, 64 hex digits (weak keys are refused).
        #[arg(long)]
        pubkey: String,
        /// Policy.
        #[command(flatten)]
        policy: PolicyArgs,
        /// NATS URL.
        #[arg(long)]
        nats: Option<String>,
    },
    /// List the registered agents.
    List {
        /// One JSON object per agent.
        #[arg(long)]
        json: bool,
        /// NATS URL.
        #[arg(long)]
        nats: Option<String>,
    },
    /// Show one agent: keys (with validity and revocation) and policy.
    Show {
        /// Agent name.
        name: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
        /// NATS URL.
        #[arg(long)]
        nats: Option<String>,
    },
    /// Change an agent's policy.
    Set {
        /// Agent name.
        name: String,
        /// Policy.
        #[command(flatten)]
        policy: PolicyArgs,
        /// NATS URL.
        #[arg(long)]
        nats: Option<String>,
    },
    /// Revoke a key (or every key) of an agent: absolute, for good.
    Revoke {
        /// Agent name.
        name: String,
        /// The key id to revoke.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        kid: Option<String>,
        /// Revoke every key of the agent.
        #[arg(long)]
        all: bool,
        /// NATS URL.
        #[arg(long)]
        nats: Option<String>,
    },
    /// Add a new key valid from now; the agent's other keys stay valid for
    /// the overlap, then expire.
    Rotate {
        /// Agent name.
        name: String,
        /// The new public key, 64 hex digits.
        #[arg(long)]
        pubkey: String,
        /// How long the old keys keep verifying, seconds.
        #[arg(long, default_value_t = 3600)]
        overlap_s: u64,
        /// NATS URL.
        #[arg(long)]
        nats: Option<String>,
    },
}

/// Policy flags (absent = unchanged; on a new agent: no limit).
#[derive(Args, Debug, Clone, Default)]
pub struct PolicyArgs {
    /// Operations the agent may use, comma separated (submit, submit_batch,
    /// status, cancel, fetch).
    #[arg(long, value_delimiter = ',')]
    pub ops: Option<Vec<String>>,
    /// Signed requests per minute (0 = no limit).
    #[arg(long)]
    pub rpm: Option<u32>,
    /// Unfinished jobs at most (0 = no limit).
    #[arg(long)]
    pub max_concurrent: Option<u32>,
    /// Priority lane of its jobs: high, normal or low.
    #[arg(long, value_parser = parse_lane)]
    pub lane: Option<Lane>,
    /// Largest image, bytes (0 = the protocol's cap).
    #[arg(long)]
    pub max_image_bytes: Option<u64>,
}

fn parse_lane(text: &str) -> Result<Lane, String> {
    Lane::parse(text).ok_or_else(|| format!("{text:?} is not a lane (high, normal, low)"))
}

impl PolicyArgs {
    fn update(&self) -> PolicyUpdate {
        PolicyUpdate {
            operations: self.ops.clone(),
            requests_per_minute: self.rpm,
            max_concurrent: self.max_concurrent,
            lane: self.lane,
            max_image_bytes: self.max_image_bytes,
        }
    }
}

async fn registry(config: &Config, nats: &Option<String>) -> Result<Registry> {
    let url = crate::nats_url(config, nats)?;
    let client = bus::connect_as(&url, "orfeas-cli", config.nats_seed()?.as_deref()).await?;
    // An existing deployment's buckets as they are (whatever their
    // replicas); the first command on a fresh NATS creates them.
    let bus = match bus::Bus::attach(client.clone()).await {
        Ok(bus) => bus,
        Err(_) => bus::Bus::ensure(client, &config.node_settings(&url, config.store_root())?).await?,
    };
    Ok(Registry::new(bus.agents.clone(), bus.nodes.clone()))
}

fn limit(value: Option<impl std::fmt::Display>) -> String {
    value.map_or_else(|| "no limit".to_string(), |v| v.to_string())
}

/// Human-readable lines describing `record`.
pub fn describe(record: &AgentRecord) -> String {
    let mut out = format!("agent {}\n", record.name);
    out += &format!("  operations: {}\n", record.operations.as_ref().map_or_else(|| "all".to_string(), |o| o.join(", ")));
    out += &format!("  requests per minute: {}\n", limit(record.requests_per_minute));
    out += &format!("  max concurrent jobs: {}\n", limit(record.max_concurrent));
    out += &format!("  lane: {}\n", record.lane.as_str());
    out += &format!("  max image bytes: {}\n", limit(record.max_image_bytes));
    for k in &record.keys {
        let mut state = if k.revoked { "revoked".to_string() } else { "active".to_string() };
        if let Some(t) = k.not_before_ms {
            state += &format!(", from {t} ms");
        }
        if let Some(t) = k.not_after_ms {
            state += &format!(", until {t} ms");
        }
        if let Some(t) = k.revoked_at_ms {
            state += &format!(", revoked at {t} ms");
        }
        out += &format!("  key {} {} ({state})\n", k.kid, k.public_key);
    }
    out
}

/// Run one `orfeas agents` command.
pub async fn run(config: &Config, command: AgentsCommand) -> Result<()> {
    match command {
        AgentsCommand::Add { name, pubkey, policy, nats } => {
            let record = registry(config, &nats).await?.add_agent(&name, &pubkey, &policy.update()).await?;
            println!("agent {} has {} key(s); added kid {}", record.name, record.keys.len(), orfeas_wire::PublicKey::from_hex(&pubkey)?.id().0);
        }
        AgentsCommand::List { json, nats } => {
            for record in registry(config, &nats).await?.agents().await? {
                if json {
                    println!("{}", serde_json::to_string(&record)?);
                } else {
                    let active = record.keys.iter().filter(|k| !k.revoked).count();
                    println!("{}\t{} key(s), {active} unrevoked\tlane {}\trpm {}\tmax concurrent {}", record.name, record.keys.len(), record.lane.as_str(), limit(record.requests_per_minute), limit(record.max_concurrent));
                }
            }
        }
        AgentsCommand::Show { name, json, nats } => {
            let record = registry(config, &nats).await?.agent(&name).await?.ok_or_else(|| anyhow::anyhow!("agent {name:?} is not registered"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                print!("{}", describe(&record));
            }
        }
        AgentsCommand::Set { name, policy, nats } => {
            let record = registry(config, &nats).await?.set_policy(&name, &policy.update()).await?;
            print!("{}", describe(&record));
        }
        AgentsCommand::Revoke { name, kid, all: _, nats } => {
            let record = registry(config, &nats).await?.revoke(&name, kid.as_deref()).await?;
            let revoked = record.keys.iter().filter(|k| k.revoked).count();
            println!("agent {} has {revoked} of {} key(s) revoked", record.name, record.keys.len());
        }
        AgentsCommand::Rotate { name, pubkey, overlap_s, nats } => {
            let overlap = Duration::from_secs(overlap_s);
            let record = registry(config, &nats).await?.rotate(&name, &pubkey, overlap.as_millis() as u64).await?;
            println!("agent {}: key {} active; other keys expire in {overlap_s} s", record.name, orfeas_wire::PublicKey::from_hex(&pubkey)?.id().0);
        }
    }
    Ok(())
}
