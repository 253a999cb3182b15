//! The agent and operator commands, black-box: make a key, register it,
//! submit an image and wait for the files — all through the real binary
//! against a real nats-server and node.

mod common;

use std::process::Command;

use common::{orfeas_bin, repo, NatsServer, NodeOptions, NodeProcess};

fn orfeas(args: &[&str]) -> std::process::Output {
    Command::new(orfeas_bin()).args(args).env_remove("ORFEAS_NATS_URL").output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_keys_agents_submit_round_trip() {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let _node = NodeProcess::start(&nats, NodeOptions { node_id: "cli", store: store.path(), env: vec![] }).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("dora.key");
    let key_arg = key.to_str().unwrap();

    let made = orfeas(&["keys", "new", "--out", key_arg]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let pubkey = text(&made.stdout).trim().to_string();
    assert_eq!(pubkey.len(), 64);
    assert!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o077 == 0, "secret key readable by others");
    let shown = orfeas(&["keys", "public", key_arg]);
    assert_eq!(text(&shown.stdout).trim(), pubkey);
    // A second `keys new` never overwrites a key.
    assert!(!orfeas(&["keys", "new", "--out", key_arg]).status.success());

    // Submitting before registration: refused with unknown_key.
    let star = repo().join("examples/star.png");
    let star_arg = star.to_str().unwrap();
    let refused = orfeas(&["submit", "--nats", &nats.url, "--agent", "dora", "--key", key_arg, star_arg, "--wait", "--timeout-s", "60"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(text(&refused.stdout).contains("unknown_key"), "{}", text(&refused.stdout));

    let added = orfeas(&["agents", "add", "dora", "--pubkey", &pubkey, "--nats", &nats.url]);
    assert!(added.status.success(), "{}", text(&added.stderr));
    assert!(!orfeas(&["agents", "add", "Dora!", "--pubkey", &pubkey, "--nats", &nats.url]).status.success(), "bad agent name accepted");

    let out = dir.path().join("out");
    let submitted = orfeas(&[
        "submit", "--nats", &nats.url, "--agent", "dora", "--key", key_arg, star_arg, "--format", "glb,stl", "--wait", "-o",
        out.to_str().unwrap(), "--timeout-s", "120",
    ]);
    let stdout = text(&submitted.stdout);
    assert!(submitted.status.success(), "{stdout}\n{}", text(&submitted.stderr));
    for line in ["accepted", "inference", "completed"] {
        assert!(stdout.contains(line), "missing {line:?} in {stdout}");
    }
    assert!(out.join("star.glb").is_file() && out.join("star.stl").is_file(), "{stdout}");
}

use std::os::unix::fs::PermissionsExt;
