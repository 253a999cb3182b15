//! The embedded default: a child `nats-server` with JetStream in a
//! temporary folder on a free loopback port, using `nats/embedded.conf`.
//! The child is killed when this value is dropped, and the kernel kills it
//! if orfeas itself dies (parent-death signal), so no server is left behind.
//! The parent-death signal follows the *thread* that started the child, so
//! the child is started and kept by a thread of its own that lives exactly
//! as long as this value: started from one of tokio's blocking threads
//! (which end after ten idle seconds) a long run lost its server.

use std::{
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

const CONFIG_TEMPLATE: &str = include_str!("../nats/embedded.conf");

/// A running embedded nats-server; dropping it stops the server.
pub struct EmbeddedNats {
    /// Client URL, `nats://127.0.0.1:<port>`.
    pub url: String,
    /// Dropped to tell the keeper thread to stop the server.
    stop: Option<std::sync::mpsc::Sender<()>>,
    keeper: Option<std::thread::JoinHandle<()>>,
}

/// The child process, owned by the keeper thread.
struct ServerProcess {
    child: Child,
    url: String,
    // Holds the JetStream store and the config; removed on drop.
    dir: tempfile::TempDir,
}

/// Find `nats-server`: the configured path (`nats.server_bin`,
/// `ORFEAS_NATS_SERVER_BIN`), then `NATS_SERVER_BIN`, then the binary
/// deploy/setup.sh installed (recorded at build time, or found under
/// `$ORFEAS_CACHE_DIR`), and only then PATH: a distribution's older
/// server on PATH must not shadow the supported one setup installed.
pub fn find_server(configured: &str) -> Result<PathBuf> {
    if !configured.is_empty() {
        return Ok(PathBuf::from(configured));
    }
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN").filter(|b| !b.is_empty()) {
        return Ok(PathBuf::from(bin));
    }
    if let Some(built) = option_env!("ORFEAS_BUILD_NATS_SERVER") {
        if Path::new(built).is_file() {
            return Ok(PathBuf::from(built));
        }
    }
    if let Some(installed) = setup_installed() {
        return Ok(installed);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!("nats-server not found: run deploy/setup.sh, set NATS_SERVER_BIN (or nats.server_bin / ORFEAS_NATS_SERVER_BIN), or put nats-server 2.10+ on PATH")
}

/// The nats-server of setup's venv under the cache dir, newest name first.
fn setup_installed() -> Option<PathBuf> {
    let cache = std::env::var_os("ORFEAS_CACHE_DIR").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/orfeas")))?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("venv-torch-"))
        .map(|e| e.path().join("bin/nats-server"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// Run `bin --version` and refuse a server older than the supported
/// minimum, before it is started and before any stream exists.
pub fn check_version(bin: &Path) -> Result<()> {
    let output = Command::new(bin).arg("--version").stdin(Stdio::null()).output().with_context(|| format!("running {} --version", bin.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    orfeas_actors::server_version::check(&text, &format!("{} --version", bin.display()))?;
    Ok(())
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

impl EmbeddedNats {
    /// Start the server on a keeper thread and wait until it accepts
    /// connections (blocking: at most 15 s).
    pub fn start(server_bin: &Path) -> Result<Self> {
        let bin = server_bin.to_path_buf();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let keeper = std::thread::Builder::new()
            .name("embedded-nats".into())
            .spawn(move || match ServerProcess::start(&bin) {
                Ok(server) => {
                    let _ = ready_tx.send(Ok(server.url.clone()));
                    // Until the EmbeddedNats is dropped (its sender with it).
                    let _ = stop_rx.recv();
                    drop(server);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .context("starting the embedded nats-server's thread")?;
        let url = ready_rx.recv().context("the embedded nats-server's thread ended")??;
        Ok(Self { url, stop: Some(stop_tx), keeper: Some(keeper) })
    }
}

impl Drop for EmbeddedNats {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
    }
}

impl ServerProcess {
    fn start(server_bin: &Path) -> Result<Self> {
        sweep_orphans(&std::env::temp_dir());
        let dir = tempfile::Builder::new().prefix(DIR_PREFIX).tempdir().context("creating a temp dir for nats")?;
        // Who owns the folder, for the sweep of a later run if this one is killed.
        std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())?;
        let port = free_port()?;
        let store = dir.path().join("jetstream");
        let config = CONFIG_TEMPLATE.replace("{{port}}", &port.to_string()).replace("{{store_dir}}", &store.display().to_string());
        let config_path = dir.path().join("nats.conf");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("nats.log"))?;
        let mut command = Command::new(server_bin);
        command.arg("-c").arg(&config_path).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        // SAFETY: prctl is async-signal-safe; it only sets this child's
        // parent-death signal so a killed orfeas takes its server with it.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().with_context(|| format!("starting {}", server_bin.display()))?;
        std::fs::write(dir.path().join(SERVER_FILE), child.id().to_string())?;
        let mut server = Self { child, url: format!("nats://127.0.0.1:{port}"), dir };
        server.wait_ready(port, Duration::from_secs(15))?;
        Ok(server)
    }

    fn wait_ready(&mut self, port: u16, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("nats-server exited with {status}: {}", self.log_tail());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nats-server did not listen on port {port} within {timeout:?}: {}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default();
        text.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ")
    }
}

/// Prefix of an embedded server's folder under the temp dir.
const DIR_PREFIX: &str = "orfeas-nats-";
/// The pid of the orfeas process that made the folder.
const OWNER_FILE: &str = "owner.pid";
/// The pid of its nats-server.
const SERVER_FILE: &str = "server.pid";

/// Removes the folders (JetStream data included) that embedded servers of killed
/// orfeas processes left in `root`: a SIGKILL runs no destructor, and each such run
/// would otherwise leave its store behind. A folder goes only when it names its owner
/// and neither the owner nor its server is alive; folders of live runs and folders
/// without an owner file are left alone.
fn sweep_orphans(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    let alive = |dir: &Path, file: &str| -> Option<bool> {
        let pid: u32 = std::fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()?;
        Some(Path::new(&format!("/proc/{pid}")).exists())
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) || !dir.is_dir() {
            continue;
        }
        let owner_alive = match alive(&dir, OWNER_FILE) {
            Some(a) => a,
            None => continue,
        };
        if !owner_alive && alive(&dir, SERVER_FILE) != Some(true) {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => tracing::info!(dir = %dir.display(), "removed the folder of a killed run's embedded nats-server"),
                Err(e) => tracing::debug!(dir = %dir.display(), error = %e, "could not remove a killed run's nats folder"),
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SIGTERM first so JetStream closes its files; SIGKILL if it lingers.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The NATS URL to use: `flag`, else `nats.url`, else a freshly started
/// embedded server (returned too: dropping it stops the server).
pub async fn server_or_embedded(config: &crate::config::Config, flag: Option<&str>) -> Result<(Option<EmbeddedNats>, String)> {
    let url = flag.map(str::to_string).unwrap_or_else(|| config.nats.url.clone());
    if !url.is_empty() {
        return Ok((None, url));
    }
    let bin = find_server(&config.nats.server_bin)?;
    check_version(&bin)?;
    // Starting waits for the port with short blocking sleeps.
    let server = tokio::task::spawn_blocking(move || EmbeddedNats::start(&bin)).await??;
    let url = server.url.clone();
    Ok((Some(server), url))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Started from a thread that then ends (as tokio's blocking threads do
    /// after ten idle seconds), the server keeps running until dropped.
    #[test]
    fn the_server_outlives_the_thread_that_started_it_and_stops_when_dropped() {
        let bin = find_server("").expect("nats-server (run deploy/setup.sh)");
        let server = std::thread::spawn(move || EmbeddedNats::start(&bin)).join().unwrap().unwrap();
        // The starting thread is gone: a child tied to it is killed at once.
        let port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), "the server ended with the thread that started it");
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(server);
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the server stops when dropped");
    }

    #[test]
    fn the_sweep_removes_only_folders_of_runs_that_are_gone() {
        let root = tempfile::tempdir().unwrap();
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let dead = gone.id();
        gone.wait().unwrap();
        let folder = |name: &str, owner: Option<u32>, server: Option<u32>| {
            let dir = root.path().join(format!("{DIR_PREFIX}{name}"));
            std::fs::create_dir_all(dir.join("jetstream")).unwrap();
            if let Some(pid) = owner {
                std::fs::write(dir.join(OWNER_FILE), pid.to_string()).unwrap();
            }
            if let Some(pid) = server {
                std::fs::write(dir.join(SERVER_FILE), pid.to_string()).unwrap();
            }
            dir
        };
        let killed = folder("killed", Some(dead), Some(dead));
        let live = folder("live", Some(std::process::id()), Some(dead));
        let server_lingers = folder("lingers", Some(dead), Some(std::process::id()));
        let unknown = folder("unknown", None, None);
        let other = root.path().join("someone-else");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join(OWNER_FILE), dead.to_string()).unwrap();
        sweep_orphans(root.path());
        assert!(!killed.exists(), "the killed run's folder stays");
        for kept in [&live, &server_lingers, &unknown, &other] {
            assert!(kept.exists(), "{} was removed", kept.display());
        }
    }
}
