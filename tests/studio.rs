//! `orfeas studio` in a real browser: headless Chromium, driven over the
//! DevTools protocol by tests/browser/drive.py, against a real node on a
//! real nats-server. Upload → live progress → a mesh drawn in the viewer
//! (screenshot pixels) → downloads equal to the stored files; bad uploads
//! shown as errors; drag and drop; cancel; the edge's refusals over raw
//! HTTP; and the embedded default.
//!
//! `ORFEAS_STUDIO_SHOTS=md/img` also writes the page's screenshots there.

mod common;

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{agent, NatsServer, NodeOptions, NodeProcess};
use serde_json::Value;
use sha2::Digest;

const WAIT: Duration = Duration::from_secs(240);
/// The face budget the happy scenario types into the page (inflate makes ~50 000 as is).
const HAPPY_FACES: u32 = 8000;

/// A running `orfeas studio`.
struct StudioProcess {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl StudioProcess {
    fn start(args: &[&str], env: &[(&str, &str)], log_dir: &Path) -> Self {
        let log = log_dir.join("studio.log");
        let mut command = Command::new(common::orfeas_bin());
        command.arg("studio");
        if !args.contains(&"--studio-bind") {
            command.args(["--studio-bind", "127.0.0.1:0"]);
        }
        command.args(args).env("RUST_LOG", "info").stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            command.env(k, v);
        }
        Self::spawn(command, log)
    }

    /// Run `command` (which logs to `log`) until its studio page listens.
    fn spawn(mut command: Command, log: PathBuf) -> Self {
        let mut child = command.spawn().expect("start orfeas studio");
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("listening on http://").nth(1) {
                let addr = rest.split('/').next().unwrap();
                let port = addr.rsplit(':').next().unwrap().parse().unwrap();
                return Self { child, port, log };
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("studio exited with {status}: {text}");
            }
            assert!(started.elapsed() < Duration::from_secs(90), "studio did not listen: {text}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGTERM, then its exit status (it must stop within 30 s).
    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "did not stop on SIGTERM: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for StudioProcess {
    /// SIGTERM first, so the studio removes its scratch folder and stops its node and
    /// nats-server as in production; SIGKILL only if it has not stopped after 20 s.
    fn drop(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw HTTP/1.1 request: (status, headers lowercased, body).
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading everything.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]).to_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, response[split + 4..].to_vec())
}

fn csrf_token(port: u16) -> String {
    let (status, _, body) = http(port, "GET", "/", &[], b"");
    assert_eq!(status, 200);
    let page = String::from_utf8(body).unwrap();
    let rest = page.split("name=\"orfeas-csrf\" content=\"").nth(1).expect("csrf meta tag");
    rest.split('"').next().unwrap().to_string()
}

fn drive(studio: &StudioProcess, scenario: &str, model: &str) -> Value {
    drive_at(studio, &studio.url(), scenario, model)
}

/// [`drive`] with the page opened at `url` (a link with `?key=`).
fn drive_at(studio: &StudioProcess, url: &str, scenario: &str, model: &str) -> Value {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(Path::new(&chromium).is_file(), "{chromium} missing: deploy/setup.sh --test installs Debian's chromium");
    let mut command = Command::new(std::env::var("ORFEAS_PYTHON").unwrap_or_else(|_| "python3".into()));
    command
        .arg(common::repo().join("tests/browser/drive.py"))
        .args(["--url", url, "--scenario", scenario, "--model", model, "--timeout", "200", "--chromium", &chromium])
        .args(["--faces", &HAPPY_FACES.to_string()])
        .arg("--image")
        .arg(common::repo().join("examples/mug.png"));
    if let Ok(shots) = std::env::var("ORFEAS_STUDIO_SHOTS") {
        command.arg("--shots").arg(common::repo().join(shots));
    }
    let output = command.output().expect("run drive.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("drive.py printed no JSON ({e}): {stdout}\n{}", String::from_utf8_lossy(&output.stderr)));
    assert_eq!(result["ok"], true, "browser scenario {scenario} failed: {result:#}\nstudio log:\n{}", studio.log_text());
    result
}

/// The stored file of `job_id` with extension `ext` in a node's local store.
fn stored(store: &Path, job_id: &str, ext: &str) -> Vec<u8> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, found);
            } else {
                found.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(store, &mut files);
    let hit = files
        .iter()
        .find(|p| p.to_string_lossy().contains(job_id) && p.extension().is_some_and(|e| e == ext))
        .unwrap_or_else(|| panic!("no stored .{ext} of job {job_id} among {files:?}"));
    std::fs::read(hit).unwrap()
}

struct Setup {
    nats: NatsServer,
    node: NodeProcess,
    store: tempfile::TempDir,
    key_file: PathBuf,
    _keys: tempfile::TempDir,
}

async fn setup(env: Vec<(&str, String)>) -> Setup {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let mut env = env;
    env.push(("ORFEAS_MODELS_ENABLED", "null,inflate".into()));
    let node = NodeProcess::start(&nats, NodeOptions { node_id: "n1", store: store.path(), env }).await;
    let (_client, key) = agent(&nats.url, "alice").await;
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("alice.key");
    std::fs::write(&key_file, key.to_text()).unwrap();
    Setup { nats, node, store, key_file, _keys: keys }
}

fn studio_for(s: &Setup, extra: &[&str]) -> StudioProcess {
    let key = s.key_file.to_str().unwrap().to_string();
    let mut args = vec!["--nats", &s.nats.url, "--agent", "alice", "--key", &key];
    args.extend_from_slice(extra);
    StudioProcess::start(&args, &[], s.store.path())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn studio_page_uploads_follows_progress_draws_the_mesh_and_downloads_the_stored_files() {
    let s = setup(vec![]).await;
    let studio = studio_for(&s, &[]);
    let (_, _, config) = http(studio.port, "GET", "/api/config", &[], b"");
    let config: Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["viewer"], true, "three.js is not installed: deploy/setup.sh --test installs it into $ORFEAS_CACHE_DIR/npm ({config})");
    assert!(config["models"].as_array().unwrap().iter().any(|m| m["name"] == "inflate"), "{config}");

    let r = drive(&studio, "happy", "inflate");
    let job_id = r["job_id"].as_str().unwrap().to_string();
    assert!(r["csp"].as_str().unwrap().contains("default-src 'self'") && !r["csp"].as_str().unwrap().contains("unsafe-inline"), "{r}");
    // Live progress: the page showed the job before it was done, at more than one percentage.
    assert_eq!(r["final"]["state"], "completed", "{r:#}");
    let states: Vec<&str> = r["states"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(states.len() >= 2 && states.last() == Some(&"completed"), "states seen: {states:?}");
    let stages: Vec<&str> = r["stages"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for want in ["accepted", "inference", "meshing", "completed"] {
        assert!(stages.contains(&want), "stage {want} never reached the page: {stages:?}");
    }
    assert!(r["percents"].as_array().unwrap().len() >= 2, "{r}");
    // The viewer drew the mesh: a real share of its pixels is not background.
    let triangles = r["triangles"].as_u64().unwrap();
    // Decimation may stop above the budget to keep the mesh closed, never near the ~50 000 made.
    assert!(triangles > 100 && triangles < 2 * u64::from(HAPPY_FACES), "the page's face budget did not reach the node: {r}");
    assert!(r["viewer_foreground"].as_f64().unwrap() > 0.02, "viewer looks empty: {r}");
    assert!(r["wireframe_foreground"].as_f64().unwrap() > 0.005, "wireframe looks empty: {r}");
    assert!(r["uncoloured_foreground"].as_f64().unwrap() > 0.02, "{r}");
    // The report in plain words, and the previews.
    let report: Vec<String> = r["report"].as_array().unwrap().iter().map(|l| l["text"].as_str().unwrap().to_string()).collect();
    assert!(report.iter().any(|t| t.starts_with("Watertight") || t.starts_with("Not watertight")), "{report:?}");
    assert!(report.iter().any(|t| t.contains("build volume")), "{report:?}");
    assert!(report.iter().any(|t| t.contains("Overhangs") || t.contains("No overhangs")), "{report:?}");
    assert!(report.iter().any(|t| t.contains("Walls") || t.contains("Thin walls")), "{report:?}");
    assert_eq!(r["previews"].as_array().unwrap().len(), 4, "{r}");
    // Every download is byte for byte the stored file.
    let downloads = r["downloads"].as_array().unwrap();
    let formats: Vec<&str> = downloads.iter().map(|d| d["format"].as_str().unwrap()).collect();
    assert_eq!(formats, ["glb", "stl", "3mf"], "{r}");
    for d in downloads {
        let format = d["format"].as_str().unwrap();
        let want = hex::encode(sha2::Sha256::digest(stored(s.store.path(), &job_id, format)));
        assert_eq!(d["status"], 200);
        assert_eq!(d["sha256"].as_str().unwrap(), want, "downloaded {format} differs from the stored file");
        assert_eq!(d["listed_sha256"].as_str().unwrap(), want);
        assert!(d["disposition"].as_str().unwrap().contains(&format!("filename=\"mug.{format}\"")), "{d}");
    }
    assert_eq!(r["history_after_reload"], serde_json::json!([job_id]));

    // The edge, over raw HTTP.
    let port = studio.port;
    let token = csrf_token(port);
    let png = common::example("mug.png");
    let (status, _, body) = http(port, "GET", "/api/config", &[("Host", "rebound.example:80")], b"");
    assert_eq!(status, 421, "DNS rebinding: {}", String::from_utf8_lossy(&body));
    let (status, _, _) = http(port, "POST", "/api/jobs?name=a.png&model=null", &[], &png);
    assert_eq!(status, 403, "a POST without the token");
    let (status, _, _) = http(port, "POST", "/api/jobs?name=a.png&model=null", &[("X-Orfeas-Csrf", &token), ("Origin", "http://evil.example")], &png);
    assert_eq!(status, 403, "a cross-origin POST with a stolen token");
    let (status, _, _) = http(port, "POST", "/api/jobs?name=a.png&model=null", &[("X-Orfeas-Csrf", &token), ("Sec-Fetch-Site", "cross-site")], &png);
    assert_eq!(status, 403);
    for path in [
        format!("/api/jobs/{job_id}/files/..%2F..%2F..%2Fetc%2Fpasswd"),
        format!("/api/jobs/{job_id}/files/model.glb"),
        "/api/jobs/00000000-0000-0000-0000-000000000000/files/glb".to_string(),
        "/vendor/three/build/..%2F..%2F..%2F..%2Fetc%2Fpasswd".to_string(),
        "/vendor/three/package.json".to_string(),
    ] {
        let (status, head, _) = http(port, "GET", &path, &[], b"");
        assert_eq!(status, 404, "{path}");
        assert!(head.contains("content-security-policy: default-src 'self'"), "{head}");
    }
    let (status, _, _) = http(port, "GET", "/vendor/three/examples/jsm/loaders/GLTFLoader.js", &[], b"");
    assert_eq!(status, 200);
    let (status, _, body) = http(port, "POST", "/api/jobs?name=a.png&faces=7", &[("X-Orfeas-Csrf", &token)], &png);
    assert_eq!((status, serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"].clone()), (400, "invalid_argument".into()));
    drop(s.node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn studio_page_shows_bad_uploads_and_takes_a_dropped_image() {
    let s = setup(vec![]).await;
    let studio = studio_for(&s, &["--max-upload-bytes", "65536", "--model", "null"]);
    let r = drive(&studio, "errors", "null");
    let codes: Vec<&str> = r["errors"].as_array().unwrap().iter().map(|e| e["code"].as_str().unwrap()).collect();
    for want in ["unsupported_type", "too_large", "invalid_argument"] {
        assert!(codes.contains(&want), "error {want} not shown: {codes:?}");
    }
    let texts: Vec<&str> = r["errors"].as_array().unwrap().iter().map(|e| e["text"].as_str().unwrap()).collect();
    assert!(texts.iter().any(|t| t.contains("notes.png") && t.contains("not a PNG, JPEG or WebP")), "{texts:?}");
    assert_eq!(r["jobs_after_bad_uploads"], 0, "a bad upload was queued: {r}");
    assert_eq!(r["dropped_job"]["name"], "dropped.png", "{r}");
    assert!(r["dropped_triangles"].as_u64().unwrap() > 100, "the dropped job's mesh is not in the viewer: {r}");
    assert_eq!(r["detail_after_two"], "first.png", "a drop of two shows its first file's job: {r}");
    assert_eq!(r["detail_after_third"], "third.png", "the next drop takes the panel: {r}");
    assert_eq!(r["detail_after_pick"], "first.png", "a picked card keeps the panel: {r}");
    assert_eq!(r["tokenless_post"]["status"], 403, "{r}");
    assert_eq!(r["tokenless_post"]["body"]["error"]["code"], "cross_site", "{r}");
    // The server's own limit, for a client that skips the page's check.
    let token = csrf_token(studio.port);
    let big = vec![0u8; 70_000];
    let (status, _, body) = http(studio.port, "POST", "/api/jobs?name=big.png", &[("X-Orfeas-Csrf", &token)], &big);
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"], "too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn studio_page_cancels_a_running_job() {
    // Every forward pass takes 20 s: the job is surely still running when canceled.
    let s = setup(vec![("ORFEAS_NODE_SIMULATED_LATENCY_MS", "20000".into())]).await;
    let studio = studio_for(&s, &["--model", "null"]);
    let r = drive(&studio, "cancel", "null");
    assert!(["queued", "running"].contains(&r["before_cancel"].as_str().unwrap()), "{r}");
    assert_eq!(r["viewer_note"], "The 3D model appears here when the job is done.", "{r}");
    // The card's words: a queue place counted when the job was accepted, or its stage and percent.
    let (stage, eta) = (r["running_card"]["stage"].as_str().unwrap(), r["running_card"]["eta"].as_str().unwrap());
    let queued = stage.starts_with("queued, next up") || (stage.starts_with("queued, ") && stage.contains(" ahead when accepted"));
    let running = stage.ends_with('%') && stage.contains(" · ");
    assert!(queued || running || stage == "submitted", "card stage text {stage:?}: {r}");
    let eta_ok = eta.is_empty() || eta == "almost done" || (eta.starts_with('~') && eta.ends_with(" s left"));
    assert!(eta_ok, "card ETA text {eta:?}: {r}");
    assert_eq!(r["after_cancel"]["state"], "canceled", "{r}");
    assert_eq!(r["after_cancel"]["button"], false, "a finished job offers no cancel: {r}");
    let job_id: uuid::Uuid = r["job_id"].as_str().unwrap().parse().unwrap();
    let key = orfeas_wire::SecretKey::from_text(&std::fs::read_to_string(&s.key_file).unwrap()).unwrap();
    let alice = orfeas_wire::client::AgentClient::new(orfeas_actors::bus::connect(&s.nats.url, "orfeas-test-alice").await.unwrap(), "alice", key, "orfeas");
    let state = common::eventually("the record canceled", WAIT, || async {
        let status = alice.status(&job_id, Duration::from_secs(10)).await.ok()?;
        (status.state == "canceled" || status.cancel_requested).then_some(status.state)
    })
    .await;
    assert!(state == "canceled" || state == "running", "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn studio_embedded_default_runs_a_job_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut studio = StudioProcess::start(&["--model", "null"], &[("ORFEAS_MODELS_ENABLED", "null")], dir.path());
    assert!(studio.log_text().contains("as agent \"studio\""), "{}", studio.log_text());
    let token = csrf_token(studio.port);
    let (status, _, body) = http(studio.port, "POST", "/api/jobs?name=mug.png&model=null&formats=glb,stl", &[("X-Orfeas-Csrf", &token)], &common::example("mug.png"));
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
    let job: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(job["job"]["size_mm"], 80.0, "STL without a size gets the default print size: {job}");
    assert_eq!(job["job"]["size_defaulted"], true);
    let port = studio.port;
    let done = common::eventually("the embedded job done", WAIT, || async move {
        let (_, _, body) = http(port, "GET", "/api/jobs", &[], b"");
        let jobs: Value = serde_json::from_slice(&body).ok()?;
        let job = jobs["jobs"][0].clone();
        (job["state"] == "completed").then_some(job)
    })
    .await;
    let glb = done["files"].as_array().unwrap().iter().find(|f| f["format"] == "glb").unwrap().clone();
    let (status, _, bytes) = http(port, "GET", glb["url"].as_str().unwrap(), &[], b"");
    assert_eq!(status, 200);
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), glb["sha256"].as_str().unwrap());
    // An open event stream must not keep the server from stopping.
    let mut sse = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(sse, "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    let mut first = [0u8; 64];
    let _ = sse.read(&mut first).unwrap();
    let status = studio.terminate();
    assert!(status.success(), "{status}: {}", studio.log_text());
    // setup.sh refuses a mode it does not know, before installing anything.
    let out = Command::new("bash").arg(common::repo().join("deploy/setup.sh")).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--studio"), "the usage names the modes");
}

/// `orfeas generate IMAGE --studio`: the run's job shows in the page's history,
/// completed, and its download is the file the run wrote; SIGTERM stops it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_with_studio_serves_the_runs_jobs_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut command = Command::new(common::orfeas_bin());
    command
        .arg("generate")
        .arg(common::repo().join("examples/mug.png"))
        .args(["--model", "null", "--format", "glb", "--no-previews", "--json", "--studio", "--studio-bind", "127.0.0.1:0", "-o"])
        .arg(&out)
        .env("ORFEAS_MODELS_ENABLED", "null")
        .env_remove("ORFEAS_NATS_URL")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("stdout.json")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("studio.log")).unwrap());
    let mut studio = StudioProcess::spawn(command, dir.path().join("studio.log"));
    // The run's summary comes before the page, not when it stops.
    let log = studio.log_text();
    let summary = log.find("generate: 1 of 1 images completed").unwrap_or_else(|| panic!("no summary before the page: {log}"));
    assert!(summary < log.find("listening on http://").unwrap(), "{log}");
    let printed: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("stdout.json")).unwrap()).unwrap();
    let job_id = printed["images"][0]["job_id"].as_str().unwrap().to_string();

    let (status, _, body) = http(studio.port, "GET", "/api/jobs", &[], b"");
    assert_eq!(status, 200);
    let jobs: Value = serde_json::from_slice(&body).unwrap();
    let listed = jobs["jobs"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{jobs:#}");
    let job = &listed[0];
    assert_eq!(job["id"], job_id.as_str());
    assert_eq!(job["name"], "mug.png");
    assert_eq!(job["state"], "completed", "{job:#}");
    assert_eq!(job["model"], "null");
    assert!(job["report"]["checks"].is_object(), "the print report is in the history: {job:#}");
    let glb = job["files"].as_array().unwrap().iter().find(|f| f["format"] == "glb").expect("a glb download").clone();
    let (status, _, bytes) = http(studio.port, "GET", glb["url"].as_str().unwrap(), &[], b"");
    assert_eq!(status, 200);
    assert_eq!(bytes, std::fs::read(out.join("mug.glb")).unwrap(), "the page serves the file the run wrote");

    // The page's node is the run's node: a new upload runs on it.
    let token = csrf_token(studio.port);
    let (status, _, body) = http(studio.port, "POST", "/api/jobs?name=star.png&model=null&formats=stl", &[("X-Orfeas-Csrf", &token)], &common::example("star.png"));
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
    let port = studio.port;
    common::eventually("the upload done", WAIT, || async move {
        let (_, _, body) = http(port, "GET", "/api/jobs", &[], b"");
        let jobs: Value = serde_json::from_slice(&body).ok()?;
        jobs["jobs"].as_array()?.iter().any(|j| j["name"] == "star.png" && j["state"] == "completed").then_some(())
    })
    .await;

    let status = studio.terminate();
    assert!(status.success(), "{status}: {}", studio.log_text());
}

/// Shared beyond loopback (`--studio-bind 0.0.0.0:0`) the page answers to any
/// name, so it takes requests only with its access key: the printed link sets
/// a cookie and drops the key from the address; a bearer header works for
/// scripts; anything else, a rebinding page included, gets 401 `unauthorized`.
/// A real browser opened on the link uses the page as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn studio_shared_on_the_network_needs_its_access_key() {
    let s = setup(vec![]).await;
    let studio = studio_for(&s, &["--studio-bind", "0.0.0.0:0", "--model", "null"]);
    let log = studio.log_text();
    let key = log.split("?key=").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap_or_else(|| panic!("no access key in the link: {log}")).to_string();
    assert!(key.len() >= 32, "{key}");
    let port = studio.port;
    for (path, headers) in [
        ("/", vec![]),
        ("/api/jobs", vec![]),
        ("/api/config", vec![("Host", "rebound.example:80".to_string())]),
        ("/?key=not-the-key-0123456789", vec![]),
        ("/api/config", vec![("Cookie", "orfeas_studio_key=not-the-key-0123456789".to_string())]),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, head, body) = http(port, "GET", path, &headers, b"");
        assert_eq!(status, 401, "{path} {headers:?}");
        assert!(head.contains("content-security-policy"), "{head}");
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"], "unauthorized");
    }
    let (status, head, _) = http(port, "GET", &format!("/?key={key}"), &[], b"");
    assert_eq!(status, 303);
    assert!(head.contains("\r\nlocation: /\r\n"), "the key leaves the address: {head}");
    let cookie = head.lines().find_map(|l| l.strip_prefix("set-cookie: ")).expect("a cookie").to_string();
    assert!(cookie.contains("httponly") && cookie.contains("samesite=strict"), "{cookie}");
    let cookie = format!("orfeas_studio_key={key}");
    let (status, _, _) = http(port, "GET", "/api/config", &[("Cookie", &cookie)], b"");
    assert_eq!(status, 200);
    let bearer = format!("Bearer {key}");
    let (status, _, _) = http(port, "GET", "/api/jobs", &[("Authorization", &bearer)], b"");
    assert_eq!(status, 200);
    // The key does not stand in for the page's CSRF token.
    let (status, _, _) = http(port, "POST", "/api/jobs?name=a.png&model=null", &[("Cookie", &cookie)], &common::example("mug.png"));
    assert_eq!(status, 403);

    let r = drive_at(&studio, &format!("http://127.0.0.1:{port}/?key={key}"), "shared", "null");
    assert_eq!(r["address"], format!("http://127.0.0.1:{port}/"), "{r}");
    assert_eq!(r["final"], "completed", "{r}");
    assert!(r["downloads"].as_array().unwrap().iter().all(|d| d["status"] == 200 && d["sha256"] == d["listed_sha256"]), "{r}");
    drop(s.node);
}
