//! nats-server discovery and the version check, run as a user would: an
//! old server (Debian's 2.9.10) is refused with the version found, the
//! minimum and the fix, before any stream exists — as the embedded
//! default's binary (`NATS_SERVER_BIN`, PATH) and as `serve`'s external
//! server (its INFO). The server setup installed wins over PATH.

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{orfeas_bin, repo};

/// A fake `nats-server` that prints an old version and, if anyone tries to
/// start it as a server, leaves a mark (it never serves).
fn fake_old_server(dir: &Path) -> (PathBuf, PathBuf) {
    let bin = dir.join("nats-server");
    let mark = dir.join("started");
    std::fs::write(
        &bin,
        format!("#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'nats-server: v2.9.10'; exit 0; fi\ntouch '{}'\nexit 1\n", mark.display()),
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    (bin, mark)
}

fn generate() -> Command {
    let mut command = Command::new(orfeas_bin());
    command.arg("generate").arg(repo().join("examples/mug.png")).env_remove("ORFEAS_NATS_URL").env_remove("ORFEAS_NATS_SERVER_BIN").stdin(Stdio::null());
    command
}

fn assert_refusal(stderr: &str) {
    for part in ["nats_server_too_old", "2.9.10", "2.10.0", "deploy/setup.sh", "NATS_SERVER_BIN"] {
        assert!(stderr.contains(part), "{part:?} missing: {stderr}");
    }
}

#[test]
fn nats_version_old_server_bin_is_refused_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, mark) = fake_old_server(dir.path());
    let out = tempfile::tempdir().unwrap();
    let result = generate().arg("-o").arg(out.path().join("mug.glb")).env("NATS_SERVER_BIN", &bin).output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(3), "a setup failure exits 3: {stderr}");
    assert_refusal(&stderr);
    assert!(stderr.contains(&bin.display().to_string()), "names the binary: {stderr}");
    assert!(!mark.exists(), "the old server was started");
    assert!(!out.path().join("mug.glb").exists());
}

#[test]
fn nats_version_setup_server_wins_over_an_old_one_on_path() {
    let dir = tempfile::tempdir().unwrap();
    let (_bin, mark) = fake_old_server(dir.path());
    let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
    let out = tempfile::tempdir().unwrap();
    let mut child = generate()
        .arg("-o")
        .arg(out.path().join("mug.glb"))
        .env("PATH", path)
        .env_remove("NATS_SERVER_BIN")
        .args(["--model", "null"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!stderr.contains("nats_server_too_old"), "the old server on PATH was used: {stderr}");
    assert!(!mark.exists(), "the old server on PATH was run");
    assert!(status.success(), "generate on setup's server failed: {stderr}");
    assert!(out.path().join("mug.glb").exists(), "{stderr}");
}

/// Just enough of the NATS protocol for a client to connect: INFO with
/// `version`, PONG for every PING; every line received is kept.
fn fake_external_server(version: &str) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let info = format!(
        "INFO {{\"server_id\":\"fake\",\"server_name\":\"fake\",\"version\":\"{version}\",\"proto\":1,\"host\":\"127.0.0.1\",\"port\":{port},\"headers\":true,\"max_payload\":1048576,\"jetstream\":true}}\r\n"
    );
    let lines = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (info, lines) = (info.clone(), lines.clone());
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                if writer.write_all(info.as_bytes()).is_err() {
                    return;
                }
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    if line.starts_with("PING") && writer.write_all(b"PONG\r\n").is_err() {
                        return;
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
    });
    (format!("nats://127.0.0.1:{port}"), seen)
}

#[test]
fn nats_version_serve_refuses_an_old_external_server_before_any_stream() {
    let (url, seen) = fake_external_server("2.9.10");
    let store = tempfile::tempdir().unwrap();
    let mut child = Command::new(orfeas_bin())
        .args(["serve", "--nats", &url])
        .env("ORFEAS_MODELS_ENABLED", "null")
        .env("ORFEAS_STORE_ROOT", store.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve kept running against a 2.9.10 server");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_refusal(&stderr);
    assert!(stderr.contains("INFO"), "says where the version came from: {stderr}");
    let lines = seen.lock().unwrap();
    assert!(lines.iter().any(|l| l.starts_with("CONNECT")), "the node connected: {lines:?}");
    assert!(!lines.iter().any(|l| l.contains("$JS.API")), "a JetStream request was sent: {lines:?}");
}
