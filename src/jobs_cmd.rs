//! `orfeas status` and `orfeas cancel`: an agent asks about, or cancels,
//! one of its jobs over NATS (signed requests; any node answers).

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use orfeas_wire::v1::JobStatus;

use crate::config::Config;

/// `orfeas status` / `orfeas cancel`
#[derive(Args, Debug)]
pub struct JobArgs {
    /// The job.
    pub job_id: uuid::Uuid,
    /// Who asks.
    #[command(flatten)]
    pub agent: crate::cli::AgentArgs,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
    /// Give up after this many seconds without an answer.
    #[arg(long, default_value_t = 10)]
    pub timeout_s: u64,
}

fn print(status: &JobStatus, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(status)?);
        return Ok(());
    }
    let mut line = format!("job {} {} (lane {}, attempt {}, node {})", status.job_id, status.state, status.lane.as_str(), status.attempt, status.node);
    if status.cancel_requested {
        line += ", cancel requested";
    }
    println!("{line}");
    if let Some(terminal) = &status.terminal {
        let event = orfeas_wire::v1::Event { job_id: status.job_id, seq: status.terminal_seq, node: status.node.clone(), at_ms: status.updated_at_ms, kind: terminal.clone() };
        println!("{}", crate::agent::describe(&event));
    }
    Ok(())
}

/// Ask for the state of a job (`cancel` = false) or cancel it.
pub async fn run(config: &Config, args: &JobArgs, cancel: bool) -> Result<()> {
    let agent = args.agent.client(config).await?;
    let timeout = Duration::from_secs(args.timeout_s);
    let status = if cancel { agent.cancel(&args.job_id, timeout).await? } else { agent.status(&args.job_id, timeout).await? };
    print(&status, args.json)
}
