//! `orfeas audit verify`: check the hash chains of the audit stream.

use anyhow::Result;
use clap::Subcommand;
use orfeas_actors::{audit, bus};

use crate::config::Config;

/// `orfeas audit …`
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Read every record of `ORFEAS_AUDIT` and check each node's chain:
    /// indexes without gaps or repeats, each record hashing its
    /// predecessor. Exits 4 when a record is modified, missing or foreign.
    Verify {
        /// NATS URL.
        #[arg(long)]
        nats: Option<String>,
    },
}

/// Run one `orfeas audit` command; `Ok(false)` when the trail is broken.
pub async fn run(config: &Config, command: AuditCommand) -> Result<bool> {
    match command {
        AuditCommand::Verify { nats } => {
            let url = crate::nats_url(config, &nats)?;
            let client = bus::connect_as(&url, "orfeas-cli", config.nats_seed()?.as_deref()).await?;
            let js = async_nats::jetstream::new(client);
            let verdict = audit::verify_stream(&js).await.map_err(anyhow::Error::msg)?;
            let records: u64 = verdict.chains.values().sum();
            for (node, n) in &verdict.chains {
                println!("chain {node}: {n} records");
            }
            for problem in &verdict.problems {
                println!("BROKEN: {problem}");
            }
            if verdict.problems.is_empty() {
                println!("audit trail intact: {records} records in {} chains", verdict.chains.len());
            }
            Ok(verdict.problems.is_empty())
        }
    }
}
