//! The `orfeas` binary: CLI, configuration, the embedded default and
//! telemetry around the engine in `orfeas-actors`.

mod agent;
mod agents_cmd;
mod audit_cmd;
mod bench;
mod cli;
mod cluster_cmd;
mod config;
mod embedded;
mod generate;
mod jobs_cmd;
mod mcp;
mod mcp_args;
mod mcp_error;
mod mcp_path;
mod mesh_cmd;
mod models_cmd;
mod nats_config;
mod studio;
mod telemetry;

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;
use orfeas_actors::node;
use orfeas_wire::{v1::EventKind, SecretKey};

use cli::{Cli, Command, KeysCommand};
use config::Config;

fn main() -> ExitCode {
    // libtorch's OpenMP threads spin while idle by default, stealing the
    // cores from meshing and NATS on small machines (measured: half the
    // node's CPU time under load). libgomp reads its environment when the
    // library is loaded, before `main`, so setting the variable here would
    // be too late: start this program again with it set (same pid, same
    // arguments). An operator's own setting is left alone.
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        reexec_with_passive_openmp();
    }
    let cli = Cli::parse();
    let _telemetry = telemetry::init(cli.log_json, if matches!(cli.command, Command::Generate(_) | Command::Bench(_)) { "warn" } else { "info" });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let generating = matches!(cli.command, Command::Generate(_));
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            // `generate` tells usage, setup and Ctrl-C apart (README, "Exit codes").
            ExitCode::from(if generating { generate::exit_code(&e) } else { 1 })
        }
    }
}

#[cfg(unix)]
fn reexec_with_passive_openmp() {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else { return };
    let error = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .exec();
    // Only reached when exec failed: run on, with spinning OpenMP threads.
    eprintln!("warning: could not restart with OMP_WAIT_POLICY=PASSIVE: {error}");
}

#[cfg(not(unix))]
fn reexec_with_passive_openmp() {}

fn load_config(cli: &Cli, overrides: &[(&str, String)]) -> Result<Config> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    Config::load(cli.config.as_deref(), &env, overrides)
}

fn nats_url(config: &Config, flag: &Option<String>) -> Result<String> {
    let url = flag.clone().unwrap_or_else(|| config.nats.url.clone());
    anyhow::ensure!(!url.is_empty(), "no NATS URL: pass --nats or set nats.url / ORFEAS_NATS_URL");
    Ok(url)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let config = load_config(&cli, &[])?;
    match cli.command {
        Command::Generate(args) => {
            let failed = generate::run(config, args).await?;
            Ok(ExitCode::from(if failed == 0 { generate::EXIT_OK } else { generate::EXIT_FAILED }))
        }
        Command::Serve(args) => {
            let url = nats_url(&config, &args.nats)?;
            let settings = config.node_settings(&url, config.store_root())?;
            node::run(settings, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { command: KeysCommand::New { out } } => {
            let key = SecretKey::generate();
            match out {
                Some(path) => {
                    write_secret(&path, &key.to_text())?;
                    println!("{}", key.public().to_hex());
                }
                None => println!("{}\n{}", key.to_text(), key.public().to_hex()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { command: KeysCommand::Public { key } } => {
            println!("{}", read_key(&key)?.public().to_hex());
            Ok(ExitCode::SUCCESS)
        }
        Command::Agents { command } => {
            agents_cmd::run(&config, command).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit(args) => {
            let mut agent_client = args.agent.client(&config).await?;
            let mut job = agent::job_for(&args.image, &args.model, agent::formats(&args.format)?, args.shape.params())?;
            if let Some(key) = agent::upload_if(&agent_client, &mut job, args.by_reference).await? {
                println!("uploaded {key}");
            }
            let mut events = agent_client.submit(&job).await?;
            println!("submitted job {}", job.job_id);
            if !args.wait {
                return Ok(ExitCode::SUCCESS);
            }
            let last = agent::follow(&mut agent_client, &mut events, Duration::from_secs(args.timeout_s), |e| {
                println!("{}", agent::describe(e));
            })
            .await?;
            match last.kind {
                EventKind::Completed { results, .. } => {
                    for file in &results {
                        let to = agent::output_path(args.output.as_deref(), &args.image, file.format);
                        if args.output.is_some() {
                            for path in agent::fetch(&agent_client, &job.job_id, file, &to).await? {
                                println!("wrote {}", path.display());
                            }
                        } else {
                            println!("{} {}", file.format.extension(), file.url);
                            for part in &file.parts {
                                println!("  {} {}", part.name, part.url);
                            }
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
                _ => Ok(ExitCode::from(2)),
            }
        }
        Command::Mesh(args) => {
            mesh_cmd::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            let json = args.json;
            let report = bench::run(config, args).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                bench::print(&report);
            }
            let s = &report.system;
            Ok(if s.unanswered == 0 && s.duplicate_terminals == 0 { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        Command::Config => {
            print!("{}", config.redacted());
            Ok(ExitCode::SUCCESS)
        }
        Command::Models(args) => match args.command {
            Some(cli::ModelsCommand::Check(check)) => {
                let report = tokio::task::spawn_blocking(move || models_cmd::check(&check.dir, check.cpu).map(|r| (r, check.json))).await??;
                let (report, json) = report;
                models_cmd::print_check(&report, json)?;
                Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
            }
            None => {
                let url = nats_url(&config, &args.nats)?;
                models_cmd::list(&url, &args).await?;
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::BenchForward(args) => {
            tokio::task::spawn_blocking(move || models_cmd::bench_forward(&args)).await??;
            Ok(ExitCode::SUCCESS)
        }
        Command::Nodes(args) => {
            cluster_cmd::nodes(&nats_url(&config, &args.nats)?, &args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fetch(args) => {
            cluster_cmd::fetch(&config, &args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::NatsConfig(args) => {
            nats_config::run(&config, &args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => {
            jobs_cmd::run(&config, &args, false).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel(args) => {
            jobs_cmd::run(&config, &args, true).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Mcp(args) => {
            mcp::run(&config, &args, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Studio(args) => {
            studio::run(config, args, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command } => Ok(if audit_cmd::run(&config, command).await? { ExitCode::SUCCESS } else { ExitCode::from(4) }),
        Command::Streams(args) => {
            let matching = cluster_cmd::streams(&config, &nats_url(&config, &args.nats)?, &args).await?;
            Ok(if matching { ExitCode::SUCCESS } else { ExitCode::from(3) })
        }
    }
}

fn read_key(path: &std::path::Path) -> Result<SecretKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading key {}", path.display()))?;
    Ok(SecretKey::from_text(&text)?)
}

fn write_secret(path: &std::path::Path, text: &str) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (refusing to overwrite a key)", path.display()))?;
    writeln!(file, "{text}")?;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is
/// called, not when it is first polled: a signal that arrives while the node
/// is still starting stops it cleanly once started, instead of killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("signal handler");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    }
}
