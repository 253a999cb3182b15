//! `orfeas mcp` driven by two independent MCP clients, the official Rust
//! SDK (rmcp) and the official Python SDK (PyPI `mcp`), against a real
//! node on a real nats-server, over stdio and over streamable HTTP: tools,
//! uploads, priorities, idempotent retries, cancel, bad arguments, progress
//! that never goes back, task status updates, and tasks that outlive the
//! MCP server.

mod common;

use std::{
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine;
use common::{agent, NatsServer, NodeOptions, NodeProcess};
use orfeas_actors::{
    bus::Bus,
    jobs::{JobRecord, JobState, JobStore},
};
use coset::CborSerializable;
use orfeas_wire::v1::EventKind;
use rmcp::{
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ClientCapabilities, ClientConfig, GetTaskParams, Implementation, NumberOrString,
        ProgressNotificationParam, ProgressToken, RequestParamsMeta, TaskPayload, TaskStatus, TaskStatusNotificationParams,
    },
    service::{NotificationContext, RunningService},
    transport::{streamable_http_client::StreamableHttpClientTransportConfig, StreamableHttpClientTransport, TokioChildProcess},
    RoleClient, ServiceExt,
};
use serde_json::{json, Value};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(120);

/// An MCP client that keeps the notifications it gets.
#[derive(Clone, Default)]
struct Recorder {
    config: ClientConfig,
    progress: Arc<Mutex<Vec<f64>>>,
    tasks: Arc<Mutex<Vec<TaskStatusNotificationParams>>>,
}

impl Recorder {
    /// A client that declares the tasks extension.
    fn with_tasks() -> Self {
        Self { config: ClientConfig::new(ClientCapabilities::builder().enable_tasks().build(), Implementation::new("orfeas-test", "0")), ..Default::default() }
    }
}

impl rmcp::ClientHandler for Recorder {
    async fn on_progress(&self, params: ProgressNotificationParam, _context: NotificationContext<RoleClient>) {
        self.progress.lock().unwrap().push(params.progress);
    }

    async fn on_task_status(&self, params: TaskStatusNotificationParams, _context: NotificationContext<RoleClient>) {
        self.tasks.lock().unwrap().push(params);
    }

    fn get_info(&self) -> ClientConfig {
        self.config.clone()
    }
}

type Mcp = RunningService<RoleClient, Recorder>;

fn args(value: Value) -> CallToolRequestParams {
    let Value::Object(map) = value else { panic!("arguments are an object") };
    CallToolRequestParams::new("x").with_arguments(map)
}

async fn call(client: &Mcp, tool: &'static str, arguments: Value) -> CallToolResult {
    let mut params = args(arguments);
    params.name = tool.into();
    client.call_tool(params).await.unwrap_or_else(|e| panic!("{tool}: {e}"))
}

fn body(result: &CallToolResult) -> &Value {
    result.structured_content.as_ref().expect("structured content")
}

fn mcp_command(url: &str, key: &Path, extra: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(common::orfeas_bin());
    command.args(["mcp", "--nats", url, "--agent", "alice", "--key"]).arg(key).args(extra).env("RUST_LOG", "warn").stderr(Stdio::inherit());
    command
}

/// An HTTP server on `bind` that may read images under `examples/` only
/// (over HTTP `image_path` needs `--image-dir`).
fn http_command(url: &str, key: &Path, bind: &str) -> tokio::process::Command {
    let examples = common::repo().join("examples");
    mcp_command(url, key, &["--http", bind, "--image-dir", examples.to_str().unwrap()])
}

fn queued_record(job_id: Uuid) -> JobRecord {
    JobRecord {
        agent: "alice".into(),
        job_id,
        model: "null".into(),
        digest: "00".into(),
        state: JobState::Admitted,
        attempt: 0,
        node: "elsewhere".into(),
        updated_at_ms: orfeas_actors::now_ms(),
        terminal: None,
        terminal_seq: 0,
        lane: Default::default(),
        deadline_ms: None,
        cancel_requested: false,
        batch_id: None,
        request: None,
    }
}

struct Setup {
    nats: NatsServer,
    node: NodeProcess,
    store: tempfile::TempDir,
    key_dir: tempfile::TempDir,
    jobs: JobStore,
}

async fn setup() -> Setup {
    setup_with(vec![]).await
}

/// A node with the null model and `env` on top (e.g. a simulated device
/// latency that keeps a job in flight long enough to act on it).
async fn setup_with(env: Vec<(&'static str, String)>) -> Setup {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let mut env = env;
    env.push(("ORFEAS_MODELS_ENABLED", "null".into()));
    let node = NodeProcess::start(&nats, NodeOptions { node_id: "n1", store: store.path(), env }).await;
    let (_alice, key) = agent(&nats.url, "alice").await;
    let key_dir = tempfile::tempdir().unwrap();
    std::fs::write(key_dir.path().join("alice.key"), key.to_text()).unwrap();
    let client = orfeas_actors::bus::connect(&nats.url, "orfeas-test").await.unwrap();
    let jobs = JobStore::new(Bus::attach(client).await.unwrap().jobs.clone());
    Setup { nats, node, store, key_dir, jobs }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_over_stdio_generates_retries_cancels_and_refuses_bad_arguments() {
    let s = setup().await;
    let key = s.key_dir.path().join("alice.key");
    let transport = TokioChildProcess::new(mcp_command(&s.nats.url, &key, &[])).unwrap();
    let recorder = Recorder::default();
    let client = recorder.clone().serve(transport).await.unwrap();

    let tools: Vec<String> = client.list_tools(None).await.unwrap().tools.iter().map(|t| t.name.to_string()).collect();
    for want in ["generate_3d", "upload_image", "get_job", "get_result", "cancel_job", "list_models"] {
        assert!(tools.contains(&want.to_string()), "{want} missing from {tools:?}");
    }
    let models = call(&client, "list_models", json!({})).await;
    assert!(body(&models)["models"].as_array().unwrap().iter().any(|m| m["name"] == "null"), "{models:?}");
    assert_eq!(body(&models)["signed"], false, "the model list is unsigned, and says so");

    // A waited generation, by path, echoing every applied parameter, with
    // progress notifications that only go up and end at 100.
    let image = common::repo().join("examples/mug.png");
    let mut params = args(json!({"image_path": image, "model": "null", "formats": ["glb", "stl"], "idempotency_key": "mug-1", "priority": "low"}));
    params.name = "generate_3d".into();
    params.set_progress_token(ProgressToken(NumberOrString::Number(7)));
    let first = client.call_tool(params).await.unwrap();
    assert_ne!(first.is_error, Some(true), "{first:?}");
    // rmcp's client runs each notification handler in a task of its own,
    // so the order they are recorded in here is not the order they came
    // in (a test that compared neighbours failed ~1 in 3 runs): the order
    // on the wire is checked with the Python SDK (tests/python/mcp_check.py),
    // which handles notifications in order; here every value comes once.
    let progress = common::eventually("progress up to 100", WAIT, || async {
        let progress = recorder.progress.lock().unwrap().clone();
        progress.contains(&100.0).then_some(progress)
    })
    .await;
    let mut distinct = progress.clone();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    assert_eq!(distinct.len(), progress.len(), "each progress value once (only higher ones are sent): {progress:?}");
    assert_eq!(distinct.last(), Some(&100.0), "{progress:?}");
    let b = body(&first);
    let applied = &b["applied"];
    assert_eq!(applied["model"], "null");
    assert_eq!(applied["formats"], json!(["glb", "stl"]));
    assert_eq!(applied["previews"], true, "the default is echoed");
    assert_eq!((applied["priority_asked"].as_str(), applied["priority"].as_str()), (Some("low"), Some("low")), "{applied}");
    assert_eq!(applied["image"]["source"], "image_path");
    assert!(applied.get("faces").is_some() && applied.get("size_mm").is_some());
    let job_id = b["job_id"].as_str().unwrap().to_string();
    let formats: Vec<&str> = b["files"].as_array().unwrap().iter().map(|f| f["format"].as_str().unwrap()).collect();
    assert_eq!(formats, ["glb", "stl"]);

    // The same idempotency key, now inline as base64: the same job, not a new one.
    let b64 = base64::engine::general_purpose::STANDARD.encode(common::example("mug.png"));
    let again = call(&client, "generate_3d", json!({"image_base64": b64, "model": "null", "formats": ["glb", "stl"], "idempotency_key": "mug-1", "priority": "low"})).await;
    assert_ne!(again.is_error, Some(true), "{again:?}");
    assert_eq!(body(&again)["job_id"].as_str().unwrap(), job_id);
    let record = s.jobs.get("alice", &job_id.parse().unwrap()).await.unwrap().unwrap().0;
    assert_eq!(record.state, JobState::Completed);
    assert_eq!(record.attempt, 1, "the retry ran nothing again");
    assert_eq!(serde_json::to_value(record.lane).unwrap(), "low", "the lane echoed is the record's");

    // Upload once, generate by reference without waiting: the answer comes
    // at once with the job's id and record; the node fetches the upload.
    let uploaded = call(&client, "upload_image", json!({"image_base64": b64})).await;
    let image_ref = body(&uploaded)["image_ref"].as_str().unwrap().to_string();
    assert!(image_ref.starts_with("alice/") && image_ref.ends_with(".png"), "{uploaded:?}");
    let by_ref = call(&client, "generate_3d", json!({"image_ref": image_ref, "model": "null", "wait": false})).await;
    assert_ne!(by_ref.is_error, Some(true), "{by_ref:?}");
    let by_ref_id: Uuid = body(&by_ref)["job_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(body(&by_ref)["applied"]["image"]["source"], "image_ref");
    assert_eq!(body(&by_ref)["applied"]["priority"], "normal", "the agent's own lane");
    let done = common::eventually("the by-reference job completes", WAIT, || async {
        let status = call(&client, "get_job", json!({"job_id": by_ref_id})).await;
        (body(&status)["state"] == "completed").then(|| body(&status).clone())
    })
    .await;
    assert_eq!(done["progress"]["percent"], 100, "get_job shows the latest event: {done}");
    let record = s.jobs.get("alice", &by_ref_id).await.unwrap().unwrap().0;
    assert_eq!((record.state, record.attempt), (JobState::Completed, 1));

    // Status and result, previews as MCP images (real PNG bytes).
    let status = call(&client, "get_job", json!({"job_id": job_id})).await;
    assert_eq!(body(&status)["state"], "completed");
    let result = call(&client, "get_result", json!({"job_id": job_id})).await;
    let previews = body(&result)["previews"].as_array().unwrap().len();
    let images: Vec<Vec<u8>> = result
        .content
        .iter()
        .filter_map(|c| c.as_image().map(|i| base64::engine::general_purpose::STANDARD.decode(&i.data).unwrap()))
        .collect();
    assert_eq!(images.len(), previews);
    assert!(images.iter().all(|png| png.starts_with(b"\x89PNG")));
    assert!(body(&result).get("report").is_some());

    // Cancel a queued job: it ends canceled. Before that its result is not ready.
    let queued = Uuid::now_v7();
    s.jobs.create(&queued_record(queued)).await.unwrap();
    let early = call(&client, "get_result", json!({"job_id": queued})).await;
    assert_eq!(early.is_error, Some(true));
    let error = &body(&early)["error"];
    assert_eq!((error["code"].as_str(), error["status"].as_u64(), error["retryable"].as_bool()), (Some("not_ready"), Some(409), Some(true)), "{error}");
    assert_eq!(error["job_id"], queued.to_string());
    let canceled = call(&client, "cancel_job", json!({"job_id": queued})).await;
    assert_eq!(body(&canceled)["state"], "canceled", "{canceled:?}");
    assert_eq!(s.jobs.get("alice", &queued).await.unwrap().unwrap().0.state, JobState::Canceled);

    // Bad arguments: a clear tool error with a stable code, and the server lives on.
    for (arguments, needle) in [
        (json!({"model": "null"}), "image is required"),
        (json!({"image_path": image, "image_ref": "alice/x.png"}), "not several"),
        (json!({"image_path": image, "priority": "urgent"}), "unknown priority"),
        (json!({"image_ref": "bob/mug.png"}), "not one of this agent's uploads"),
        (json!({"image_base64": "data:image/png;base64,AAAA"}), "data: URL"),
        (json!({"image_path": image, "formats": ["dwg"]}), "unknown format"),
        (json!({"image_path": image, "faces": 5}), "faces 5"),
        (json!({"image_path": "/nonexistent.png"}), "cannot be read"),
        (json!({"image_path": image, "colour": "red"}), "unknown field"),
    ] {
        let bad = call(&client, "generate_3d", arguments).await;
        assert_eq!(bad.is_error, Some(true), "{bad:?}");
        let error = &body(&bad)["error"];
        assert_eq!((error["code"].as_str(), error["status"].as_u64(), error["retryable"].as_bool()), (Some("invalid_argument"), Some(400), Some(false)));
        assert!(error["message"].as_str().unwrap().contains(needle), "{error}");
    }
    let bad = call(&client, "get_job", json!({"job_id": "nope"})).await;
    assert_eq!(bad.is_error, Some(true));
    let bad = call(&client, "upload_image", json!({"image_base64": base64::engine::general_purpose::STANDARD.encode(b"not an image")})).await;
    assert_eq!(body(&bad)["error"]["code"], "invalid_argument", "{bad:?}");
    // A reference to nothing uploaded: its own code, not retryable as it is.
    let missing = call(&client, "generate_3d", json!({"image_ref": "alice/never-uploaded.png", "model": "null"})).await;
    let error = &body(&missing)["error"];
    assert_eq!((error["code"].as_str(), error["status"].as_u64(), error["retryable"].as_bool()), (Some("input_missing"), Some(404), Some(false)), "{error}");
    // Someone else's or an unknown job: the node's own code.
    let unknown = call(&client, "get_job", json!({"job_id": Uuid::now_v7()})).await;
    assert_eq!(unknown.is_error, Some(true));
    assert_eq!(body(&unknown)["error"]["code"], "not_found", "{unknown:?}");
    assert_eq!(body(&call(&client, "get_job", json!({"job_id": job_id})).await)["state"], "completed", "the server lives on");
    client.cancel().await.unwrap();
}

/// The echo is the job's record as the node admitted it: what a call left
/// out is listed in `defaulted`, with what the node does then. The same
/// idempotency key again with other arguments follows the first job (its
/// arguments echoed, `arguments_differed`, this call's in `asked`) instead
/// of a `conflict`, and only that one job runs. A submission the node
/// refuses answers with the node's code, waited or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_echoes_defaults_from_the_record_and_follows_a_key_retried_with_other_arguments() {
    let s = setup().await;
    let key = s.key_dir.path().join("alice.key");
    let client = Recorder::default().serve(TokioChildProcess::new(mcp_command(&s.nats.url, &key, &[])).unwrap()).await.unwrap();
    let image = common::repo().join("examples/mug.png");

    let first = call(&client, "generate_3d", json!({"image_path": image, "model": "null", "idempotency_key": "defaults-1"})).await;
    assert_ne!(first.is_error, Some(true), "{first:?}");
    let job_id: Uuid = body(&first)["job_id"].as_str().unwrap().parse().unwrap();
    let applied = &body(&first)["applied"];
    assert_eq!((applied["from"].as_str(), applied["arguments_differed"].as_bool()), (Some("record"), Some(false)), "{applied}");
    let defaulted: Vec<&str> = applied["defaulted"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    for name in ["faces", "size_mm", "priority"] {
        assert!(defaulted.contains(&name), "{name} is listed as defaulted: {applied}");
    }
    assert!(!defaulted.contains(&"previews"), "the server always sends previews: {applied}");
    assert_eq!((&applied["faces"], &applied["size_mm"]), (&Value::Null, &Value::Null), "{applied}");
    assert!(applied["defaults"]["faces"].as_str().unwrap().contains("no decimation"), "{applied}");
    assert!(applied["defaults"]["size_mm"].as_str().unwrap().contains("1 model unit = 1 mm"), "{applied}");
    assert_eq!((&applied["formats"], &applied["smooth"], &applied["colour"]), (&json!(["glb"]), &json!(true), &json!(true)), "{applied}");
    assert_eq!(applied["build_volume_mm"], json!([256.0, 256.0, 256.0]), "{applied}");

    // The same key, other arguments: waited, then not waited.
    let other = json!({"image_path": image, "model": "null", "idempotency_key": "defaults-1", "faces": 500, "size_mm": 40.0, "formats": ["stl"]});
    let again = call(&client, "generate_3d", other.clone()).await;
    assert_ne!(again.is_error, Some(true), "not a conflict: {again:?}");
    assert_eq!(body(&again)["job_id"], job_id.to_string());
    let applied = &body(&again)["applied"];
    assert_eq!(applied["arguments_differed"], true, "{applied}");
    assert_eq!((&applied["formats"], &applied["faces"], &applied["size_mm"]), (&json!(["glb"]), &Value::Null, &Value::Null), "the first job's arguments: {applied}");
    assert_eq!((&applied["asked"]["formats"], &applied["asked"]["faces"], &applied["asked"]["size_mm"]), (&json!(["stl"]), &json!(500), &json!(40.0)), "{applied}");
    assert!(applied["note"].as_str().unwrap().contains("new key"), "{applied}");
    let formats: Vec<&str> = body(&again)["files"].as_array().unwrap().iter().map(|f| f["format"].as_str().unwrap()).collect();
    assert_eq!(formats, ["glb"], "the first job's files");
    let mut no_wait = other;
    no_wait["wait"] = json!(false);
    let now = call(&client, "generate_3d", no_wait).await;
    assert_eq!((body(&now)["state"].as_str(), body(&now)["applied"]["arguments_differed"].as_bool()), (Some("completed"), Some(true)), "{now:?}");
    let record = s.jobs.get("alice", &job_id).await.unwrap().unwrap().0;
    assert_eq!((record.state, record.attempt), (JobState::Completed, 1), "one job, run once");
    assert_eq!(terminal_events(&s, job_id).await.len(), 1, "one answer");

    // Refused by the node (no such model): its code, not a missing record.
    for wait in [true, false] {
        let refused = call(&client, "generate_3d", json!({"image_path": image, "model": "no-such-model", "wait": wait})).await;
        assert_eq!(refused.is_error, Some(true), "{refused:?}");
        assert_eq!(body(&refused)["error"]["code"], "unknown_model", "wait {wait}: {refused:?}");
    }
    client.cancel().await.unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn http_client(port: u16) -> Mcp {
    // reqwest is built without a crypto provider of its own (as the node's S3 client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Recorder::with_tasks();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let transport = StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(format!("http://127.0.0.1:{port}/mcp")));
        match config.clone().serve(transport).await {
            Ok(client) => return client,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("MCP HTTP server did not come up: {e}"),
        }
    }
}

async fn task_until_done(client: &Mcp, task_id: &str) -> TaskPayload {
    common::eventually("the task ends", WAIT, || async {
        let got = client.get_task(GetTaskParams::new(task_id)).await.unwrap();
        assert_eq!(got.task.task.task_id, task_id);
        got.task.status().is_terminal().then_some(got.task.payload)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_over_http_runs_tasks_that_survive_a_server_restart() {
    // Each forward pass takes 5 s: the job still runs while the server is away.
    let s = setup_with(vec![("ORFEAS_NODE_SIMULATED_LATENCY_MS", "5000".into())]).await;
    let key = s.key_dir.path().join("alice.key");
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut server = http_command(&s.nats.url, &key, &bind).kill_on_drop(true).spawn().unwrap();
    let client = http_client(port).await;

    let image = common::repo().join("examples/mug.png");
    let mut params = args(json!({"image_path": image, "model": "null", "idempotency_key": "task-1"}));
    params.name = "generate_3d".into();
    let CallToolResponse::Task(created) = client.call_tool_once(params.clone()).await.unwrap() else { panic!("a tasks client gets a task") };
    let task_id = created.task.task_id.clone();
    let job_id: Uuid = task_id.parse().expect("the task id is the job id");

    // The MCP server goes away while the job runs and comes back: the task
    // is still there, still working, because it is the durable job.
    until_running(&s, job_id).await;
    assert_eq!(client.get_task(GetTaskParams::new(task_id.clone())).await.unwrap().task.status(), TaskStatus::Working);
    drop(client);
    server.kill().await.unwrap();
    let mut server = http_command(&s.nats.url, &key, &bind).kill_on_drop(true).spawn().unwrap();
    let client = http_client(port).await;
    assert_eq!(client.get_task(GetTaskParams::new(task_id.clone())).await.unwrap().task.status(), TaskStatus::Working, "the job outlived the server");
    let TaskPayload::Completed { result } = task_until_done(&client, &task_id).await else { panic!("completed") };
    let result: CallToolResult = serde_json::from_value(Value::Object(result)).unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    assert_eq!(body(&result)["job_id"].as_str().unwrap(), task_id);
    assert!(!body(&result)["files"].as_array().unwrap().is_empty());
    // This server did not make the call: the echo comes from the job's record.
    let applied = &body(&result)["applied"];
    let formats: Vec<&str> = body(&result)["files"].as_array().unwrap().iter().map(|f| f["format"].as_str().unwrap()).collect();
    assert_eq!((applied["from"].as_str(), applied["model"].as_str(), applied["previews"].as_bool()), (Some("record"), Some("null"), Some(true)), "{applied}");
    assert_eq!(applied["formats"], json!(formats), "{applied}");
    assert_eq!((applied["priority"].as_str(), &applied["faces"]), (Some("normal"), &Value::Null), "{applied}");

    // Retrying the call with the same key: the same task.
    let CallToolResponse::Task(again) = client.call_tool_once(params).await.unwrap() else { panic!("task") };
    assert_eq!(again.task.task_id, task_id);
    assert_eq!(s.jobs.get("alice", &job_id).await.unwrap().unwrap().0.attempt, 1);

    // tasks/cancel of a queued job: the task ends cancelled.
    let queued = Uuid::now_v7();
    s.jobs.create(&queued_record(queued)).await.unwrap();
    client.cancel_task(CancelTaskParams::new(queued.to_string())).await.unwrap();
    assert!(matches!(task_until_done(&client, &queued.to_string()).await, TaskPayload::Cancelled));
    assert_eq!(client.get_task(GetTaskParams::new(queued.to_string())).await.unwrap().task.status(), TaskStatus::Cancelled);

    // A task id that is no job: an error, and the server lives on.
    assert!(client.get_task(GetTaskParams::new("not-a-job")).await.is_err());
    assert_eq!(body(&call(&client, "get_job", json!({"job_id": task_id})).await)["state"], "completed");
    client.cancel().await.unwrap();
    server.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_over_http_with_a_token_refuses_requests_without_it() {
    let s = setup().await;
    let key = s.key_dir.path().join("alice.key");
    // Beyond loopback without a token: refused before anything is served.
    let open = mcp_command(&s.nats.url, &key, &["--http", "0.0.0.0:0"]).stdout(Stdio::null()).stderr(Stdio::piped()).output().await.unwrap();
    assert!(!open.status.success());
    assert!(String::from_utf8_lossy(&open.stderr).contains("--http-token-file"), "{}", String::from_utf8_lossy(&open.stderr));

    let token = "5f0c1d2e3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d";
    let token_file = s.key_dir.path().join("mcp.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut server = mcp_command(&s.nats.url, &key, &["--http", &bind, "--http-token-file", token_file.to_str().unwrap()]).kill_on_drop(true).spawn().unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let connect = |auth: Option<&str>| {
        let mut config = StreamableHttpClientTransportConfig::with_uri(format!("http://127.0.0.1:{port}/mcp"));
        if let Some(auth) = auth {
            config = config.auth_header(auth);
        }
        Recorder::default().serve(StreamableHttpClientTransport::from_config(config))
    };
    // With the token: a working session (polled until the server listens).
    let client = common::eventually("the MCP HTTP server with a token", WAIT, || async { connect(Some(token)).await.ok() }).await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(common::example("mug.png"));
    let uploaded = call(&client, "upload_image", json!({"image_base64": b64})).await;
    assert!(body(&uploaded)["image_ref"].is_string(), "{uploaded:?}");
    // Without it, or with a wrong one: no session at all.
    assert!(connect(None).await.is_err(), "no token");
    assert!(connect(Some(&token.replace('5', "6"))).await.is_err(), "a wrong token");
    client.cancel().await.unwrap();
    server.kill().await.unwrap();
}

/// `image_path` reads a file on the server's machine for whoever reaches
/// the server: over HTTP only with `--image-dir` and only where the path
/// really leads inside it; on any transport only a regular file (no
/// directory, FIFO or device; a symlink only to a regular file) within the
/// size cap. Each refusal is a tool error with its own stable code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_reads_image_paths_only_where_and_what_the_server_allows() {
    let s = setup().await;
    let key = s.key_dir.path().join("alice.key");
    let refused = |result: &CallToolResult, code: &str, status: u64| {
        assert_eq!(result.is_error, Some(true), "{result:?}");
        let error = &body(result)["error"];
        assert_eq!((error["code"].as_str(), error["status"].as_u64(), error["retryable"].as_bool()), (Some(code), Some(status), Some(false)), "{error}");
    };
    let mug = common::repo().join("examples/mug.png");
    let root = tempfile::tempdir().unwrap();
    let images = root.path().join("images");
    std::fs::create_dir_all(images.join("sub")).unwrap();
    std::fs::copy(&mug, images.join("in.png")).unwrap();
    std::fs::copy(&mug, root.path().join("outside.png")).unwrap();
    std::os::unix::fs::symlink(images.join("in.png"), images.join("link.png")).unwrap();
    std::os::unix::fs::symlink(root.path().join("outside.png"), images.join("escape.png")).unwrap();

    // HTTP without --image-dir: no path at all, however harmless.
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut server = mcp_command(&s.nats.url, &key, &["--http", &bind]).kill_on_drop(true).spawn().unwrap();
    let client = http_client(port).await;
    refused(&call(&client, "generate_3d", json!({"image_path": mug, "model": "null", "wait": false})).await, "path_not_allowed", 403);
    client.cancel().await.unwrap();
    server.kill().await.unwrap();

    // HTTP with --image-dir: inside it (relative, or by a symlink that stays inside) yes; out of it no.
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut server = mcp_command(&s.nats.url, &key, &["--http", &bind, "--image-dir", images.to_str().unwrap()]).kill_on_drop(true).spawn().unwrap();
    let client = http_client(port).await;
    for path in [json!("in.png"), json!("link.png"), json!(images.join("sub/../in.png"))] {
        let ok = call(&client, "generate_3d", json!({"image_path": path, "model": "null", "wait": false})).await;
        assert_ne!(ok.is_error, Some(true), "{path}: {ok:?}");
        let job_id: Uuid = body(&ok)["job_id"].as_str().unwrap().parse().unwrap();
        assert_eq!(body(&ok)["applied"]["image"]["source"], "image_path");
        common::eventually("the job from an allowed path completes", WAIT, || async { (s.jobs.get("alice", &job_id).await.ok()??.0.state == JobState::Completed).then_some(()) }).await;
    }
    for path in [json!(mug), json!("../outside.png"), json!("escape.png")] {
        refused(&call(&client, "generate_3d", json!({"image_path": path, "model": "null", "wait": false})).await, "path_not_allowed", 403);
    }
    refused(&call(&client, "generate_3d", json!({"image_path": "sub", "model": "null", "wait": false})).await, "not_a_file", 400);
    client.cancel().await.unwrap();
    server.kill().await.unwrap();

    // Stdio reads what its user can, but only regular files within the cap:
    // a FIFO is refused at once instead of blocking the call.
    let fifo = root.path().join("fifo.png");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let big = root.path().join("big.png");
    std::fs::File::create(&big).unwrap().set_len(orfeas_wire::v1::MAX_REF_IMAGE_BYTES + 1).unwrap();
    let client = Recorder::default().serve(TokioChildProcess::new(mcp_command(&s.nats.url, &key, &[])).unwrap()).await.unwrap();
    for (path, code, status) in [(json!(fifo), "not_a_file", 400), (json!("/dev/zero"), "not_a_file", 400), (json!(images.join("sub")), "not_a_file", 400), (json!(big), "too_large", 413)] {
        let result = tokio::time::timeout(WAIT, call(&client, "generate_3d", json!({"image_path": path, "model": "null"}))).await.expect("answered");
        refused(&result, code, status);
    }
    let ok = call(&client, "generate_3d", json!({"image_path": images.join("link.png"), "model": "null"})).await;
    assert_ne!(ok.is_error, Some(true), "a symlink to a regular file: {ok:?}");
    client.cancel().await.unwrap();
}

/// A node that lies: it answers `alice`'s status requests truthfully,
/// signed with the real node's key (so the MCP server gets as far as the
/// fetch), and every manifest request with `manifest`.
fn lying_node(nats: async_nats::Client, node_id: &'static str, key: orfeas_wire::SecretKey, status: orfeas_wire::v1::JobStatus, manifest: Vec<u8>) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    tokio::spawn(async move {
        let mut status_requests = nats.subscribe(orfeas_wire::subjects::status("alice")).await.unwrap();
        let mut fetches = nats.subscribe(orfeas_wire::subjects::fetch("alice")).await.unwrap();
        loop {
            tokio::select! {
                Some(request) = status_requests.next() => {
                    let body = orfeas_wire::to_cbor(&orfeas_wire::v1::StatusReply::Job(status.clone()));
                    let cti = orfeas_wire::envelope::open(&request.payload, usize::MAX, orfeas_wire::ContentKind::StatusRequest).unwrap().claims.cti;
                    let now_s = orfeas_actors::now_ms() / 1000;
                    let signature = orfeas_wire::v1::seal_reply(&body, node_id, &key, "orfeas", "status", &request.subject, &cti, now_s);
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(orfeas_wire::v1::REPLY_SIGNATURE_HEADER, signature.as_str());
                    nats.publish_with_headers(request.reply.unwrap(), headers, body.into()).await.unwrap();
                }
                Some(request) = fetches.next() => {
                    let body = orfeas_wire::to_cbor(&orfeas_wire::v1::FetchReply::Manifest { event: manifest.clone() });
                    nats.publish(request.reply.unwrap(), body.into()).await.unwrap();
                }
                else => return,
            }
        }
    })
}

/// What the MCP server shows of a result is what a node signed: previews
/// are attached only when their bytes match the SHA-256 in the signed
/// manifest (chunks are unsigned), and a manifest that does not verify
/// against the node's key as an event of the job asked for (tampered, or
/// another job's) is refused. Each refusal is `unverified` (502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_refuses_tampered_previews_and_manifests() {
    let node_key = orfeas_wire::SecretKey::generate();
    let node_key_dir = tempfile::tempdir().unwrap();
    let node_key_file = node_key_dir.path().join("node.key");
    std::fs::write(&node_key_file, node_key.to_text()).unwrap();
    let mut s = setup_with(vec![("ORFEAS_NODE_KEY_FILE", node_key_file.to_str().unwrap().to_string())]).await;
    let key = s.key_dir.path().join("alice.key");
    let client = Recorder::default().serve(TokioChildProcess::new(mcp_command(&s.nats.url, &key, &[])).unwrap()).await.unwrap();
    let unverified = |result: &CallToolResult, needle: &str| {
        assert_eq!(result.is_error, Some(true), "{result:?}");
        let error = &body(result)["error"];
        assert_eq!((error["code"].as_str(), error["status"].as_u64()), (Some("unverified"), Some(502)), "{error}");
        assert!(error["message"].as_str().unwrap().contains(needle), "{needle}: {error}");
    };
    let image = common::repo().join("examples/mug.png");
    let mut jobs = Vec::new();
    for key in ["tamper-a", "tamper-b"] {
        let done = call(&client, "generate_3d", json!({"image_path": image, "model": "null", "idempotency_key": key})).await;
        assert_ne!(done.is_error, Some(true), "{done:?}");
        jobs.push(body(&done)["job_id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    let (a, b) = (jobs[0], jobs[1]);

    // Untouched: every preview is shown, and its bytes are the signed ones.
    let result = call(&client, "get_result", json!({"job_id": a})).await;
    let previews = body(&result)["previews"].as_array().unwrap().clone();
    assert!(!previews.is_empty() && previews.iter().all(|p| p["signed"] == true), "{previews:?}");
    let images: Vec<String> = result.content.iter().filter_map(|c| c.as_image()).map(|i| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(base64::engine::general_purpose::STANDARD.decode(&i.data).unwrap()))
    }).collect();
    let signed: Vec<String> = previews.iter().map(|p| p["sha256"].as_str().unwrap().to_string()).collect();
    assert_eq!(images, signed, "each image is the signed preview");

    // A preview changed at rest: the node serves it, its digest gives it away.
    let location = previews[0]["location"].as_str().unwrap();
    let at_rest = s.store.path().join(location);
    let mut png = std::fs::read(&at_rest).unwrap();
    *png.last_mut().unwrap() ^= 1;
    std::fs::write(&at_rest, &png).unwrap();
    unverified(&call(&client, "get_result", json!({"job_id": a})).await, "does not match");
    let listed = call(&client, "get_result", json!({"job_id": a, "previews": false})).await;
    assert_ne!(listed.is_error, Some(true), "without the images the signed manifest still answers: {listed:?}");

    // The node goes; a liar answers in its place with the real job status
    // but a manifest that is not what the node signed for the job asked.
    let agent = orfeas_wire::client::AgentClient::new(async_nats::connect(&s.nats.url).await.unwrap(), "alice", orfeas_wire::SecretKey::from_text(&std::fs::read_to_string(&key).unwrap()).unwrap(), "orfeas");
    let status_a = agent.status(&a, WAIT).await.unwrap();
    let manifest_a = agent.fetch_manifest_sealed(&a, WAIT).await.unwrap();
    let manifest_b = agent.fetch_manifest_sealed(&b, WAIT).await.unwrap();
    s.node.kill();
    let mut flipped = manifest_a.clone();
    *flipped.last_mut().unwrap() ^= 1;
    let mut swapped = coset::CoseSign1::from_slice(&manifest_a).unwrap();
    let mut event: orfeas_wire::v1::Event = orfeas_wire::from_cbor(swapped.payload.as_ref().unwrap()).unwrap();
    if let EventKind::Completed { results, .. } = &mut event.kind {
        results[0].sha256 = "00".repeat(32);
    }
    swapped.payload = Some(orfeas_wire::to_cbor(&event));
    let swapped = swapped.to_vec().unwrap();
    let liar = async_nats::connect(&s.nats.url).await.unwrap();
    for (what, manifest) in [("signature byte flipped", flipped), ("a file's digest swapped", swapped), ("another job's manifest", manifest_b)] {
        let node = lying_node(liar.clone(), "n1", node_key.clone(), status_a.clone(), manifest);
        // The liar is subscribed once its status answer comes back.
        common::eventually("the liar answers", WAIT, || async { agent.status(&a, Duration::from_secs(2)).await.ok() }).await;
        let result = call(&client, "get_result", json!({"job_id": a, "previews": false})).await;
        unverified(&result, "signature does not verify");
        assert_eq!(body(&result)["error"]["job_id"], a.to_string(), "{what}");
        node.abort();
        let _ = node.await;
    }
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_over_stdio_pushes_task_updates_with_report_previews_and_applied_parameters() {
    let s = setup().await;
    let key = s.key_dir.path().join("alice.key");
    let recorder = Recorder::with_tasks();
    let client = recorder.clone().serve(TokioChildProcess::new(mcp_command(&s.nats.url, &key, &[])).unwrap()).await.unwrap();

    let image = common::repo().join("examples/mug.png");
    let mut params = args(json!({"image_path": image, "model": "null", "idempotency_key": "pushed-1", "priority": "low"}));
    params.name = "generate_3d".into();
    let CallToolResponse::Task(created) = client.call_tool_once(params).await.unwrap() else { panic!("a tasks client gets a task") };
    let task_id = created.task.task_id.clone();
    let meta = created.meta.expect("the applied parameters ride along");
    assert_eq!(meta.0["orfeas/applied"]["priority_asked"], "low", "{meta:?}");

    // Without polling: the server pushes the task's end, with the result.
    let last = common::eventually("a terminal task update", WAIT, || async {
        recorder.tasks.lock().unwrap().iter().find(|t| t.task.task.task_id == task_id && t.task.status().is_terminal()).cloned()
    })
    .await;
    let TaskPayload::Completed { result } = last.task.payload else { panic!("completed: {last:?}") };
    let result: CallToolResult = serde_json::from_value(Value::Object(result)).unwrap();
    let b = body(&result);
    assert!(b["report"].is_object(), "the printability report: {b}");
    assert_eq!(b["applied"]["priority_asked"], "low");
    assert_eq!(b["applied"]["priority"], "low", "the lane from the record");
    let images = result.content.iter().filter(|c| c.as_image().is_some()).count();
    assert!(images > 0 && images == b["previews"].as_array().unwrap().len(), "previews as images: {images}");
    // Every update is about this task and the polled record agrees.
    assert!(recorder.tasks.lock().unwrap().iter().all(|t| t.task.task.task_id == task_id));
    assert_eq!(client.get_task(GetTaskParams::new(task_id.clone())).await.unwrap().task.status(), TaskStatus::Completed);

    // `wait: false` answers at once even for a tasks client.
    let mut params = args(json!({"image_path": image, "model": "null", "wait": false}));
    params.name = "generate_3d".into();
    let CallToolResponse::Complete(now) = client.call_tool_once(params).await.unwrap() else { panic!("wait: false is not a task") };
    assert!(body(&now)["job_id"].is_string() && body(&now)["applied"]["wait"] == false, "{now:?}");
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_a_waiting_call_does_not_hold_up_other_calls_of_the_same_session() {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let options = |node_id| NodeOptions { node_id, store: store.path(), env: vec![("ORFEAS_MODELS_ENABLED", "null".into())] };
    // A node sets up the streams and goes away: jobs now wait for the next one.
    let mut first = NodeProcess::start(&nats, options("n1")).await;
    let (_alice, key) = agent(&nats.url, "alice").await;
    first.kill();
    let key_dir = tempfile::tempdir().unwrap();
    std::fs::write(key_dir.path().join("alice.key"), key.to_text()).unwrap();
    let client = Recorder::default().serve(TokioChildProcess::new(mcp_command(&nats.url, &key_dir.path().join("alice.key"), &[])).unwrap()).await.unwrap();

    // A waited generation that cannot end while no node runs...
    let image = common::repo().join("examples/mug.png");
    let mut params = args(json!({"image_path": image, "model": "null", "idempotency_key": "waits-1"}));
    params.name = "generate_3d".into();
    let peer = client.peer().clone();
    let waiting = tokio::spawn(async move { peer.call_tool(params).await });
    // ...while the same session uploads twice, each answered on its own.
    let b64 = base64::engine::general_purpose::STANDARD.encode(common::example("mug.png"));
    for _ in 0..2 {
        let uploaded = call(&client, "upload_image", json!({"image_base64": b64})).await;
        assert!(body(&uploaded)["image_ref"].as_str().is_some_and(|r| r.starts_with("alice/")), "{uploaded:?}");
        assert!(!waiting.is_finished(), "the generation still waits for a node");
    }
    // A node comes: the waiting call ends with its files.
    let _second = NodeProcess::start(&nats, options("n2")).await;
    let done = tokio::time::timeout(WAIT, waiting).await.expect("the waiting call ends").unwrap().unwrap();
    assert_ne!(done.is_error, Some(true), "{done:?}");
    assert_eq!(body(&done)["job_id"].as_str().unwrap(), orfeas_wire_job_id("alice", "waits-1").to_string());
    assert!(!body(&done)["files"].as_array().unwrap().is_empty(), "{done:?}");
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_python_sdk_drives_both_transports() {
    let s = setup().await;
    let key = s.key_dir.path().join("alice.key");
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut server = http_command(&s.nats.url, &key, &bind).kill_on_drop(true).spawn().unwrap();
    // The HTTP server is up once the Rust client can talk to it.
    http_client(port).await.cancel().await.unwrap();
    let (queued_stdio, queued_http) = (Uuid::now_v7(), Uuid::now_v7());
    for queued in [queued_stdio, queued_http] {
        s.jobs.create(&queued_record(queued)).await.unwrap();
    }

    let python = std::env::var("ORFEAS_PYTHON").expect("ORFEAS_PYTHON is not set: run the tests through `deploy/setup.sh --test`");
    let out = tokio::process::Command::new(python)
        .arg(common::repo().join("tests/python/mcp_check.py"))
        .arg(common::orfeas_bin())
        .args([&s.nats.url, "alice"])
        .arg(&key)
        .arg(common::repo().join("examples/mug.png"))
        .arg(format!("http://127.0.0.1:{port}/mcp"))
        .args([queued_stdio.to_string(), queued_http.to_string()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "python MCP check failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();

    for transport in ["stdio", "http"] {
        // The key names the job as it does for every door, and its retry ran nothing again.
        let job: Uuid = seen[transport]["job"].as_str().unwrap().parse().unwrap();
        assert_eq!(job, orfeas_wire_job_id("alice", &format!("py-{transport}-1")));
        let record = s.jobs.get("alice", &job).await.unwrap().unwrap().0;
        assert_eq!((record.state, record.attempt), (JobState::Completed, 1), "{transport}: {record:?}");
        assert_eq!(serde_json::to_value(record.lane).unwrap(), "low");
        let by_ref: Uuid = seen[transport]["by_ref"].as_str().unwrap().parse().unwrap();
        common::eventually("the by-reference job completes", WAIT, || async { (s.jobs.get("alice", &by_ref).await.unwrap()?.0.state == JobState::Completed).then_some(()) }).await;
    }
    for queued in [queued_stdio, queued_http] {
        assert_eq!(s.jobs.get("alice", &queued).await.unwrap().unwrap().0.state, JobState::Canceled);
    }
    server.kill().await.unwrap();
}

/// Node settings that keep a job in flight: every forward pass takes
/// `latency_ms`, and a short ack_wait lets a restarted node take over a
/// killed node's job within the test.
fn slow_node(latency_ms: u64) -> Vec<(&'static str, String)> {
    vec![
        ("ORFEAS_SCHEDULER_ACK_WAIT_S", "3".to_string()),
        ("ORFEAS_SCHEDULER_PROGRESS_ACK_S", "1".to_string()),
        ("ORFEAS_NODE_SIMULATED_LATENCY_MS", latency_ms.to_string()),
    ]
}

/// The terminal events stored for `job_id`, read once its queue message
/// is gone (acked or terminated), so no later answer can still come.
async fn terminal_events(s: &Setup, job_id: Uuid) -> Vec<EventKind> {
    let js = async_nats::jetstream::new(async_nats::connect(&s.nats.url).await.unwrap());
    common::eventually("the queue drains", WAIT, || async {
        let mut stream = js.get_stream("ORFEAS_QUEUE").await.ok()?;
        (stream.info().await.ok()?.state.messages == 0).then_some(())
    })
    .await;
    let events = common::cluster::stored_events(&js, "alice").await.expect("the events stream reads");
    events.get(&job_id).into_iter().flatten().filter(|(e, _)| e.kind.is_terminal()).map(|(e, _)| e.kind.clone()).collect()
}

/// The record's state once the node has taken the job (it is on the device).
async fn until_running(s: &Setup, job_id: Uuid) {
    common::eventually("the node runs the job", WAIT, || async {
        let record = s.jobs.get("alice", &job_id).await.ok()??.0;
        assert!(!record.state.is_terminal(), "the job ended before the cancel: {record:?}");
        (record.state == JobState::Running).then_some(())
    })
    .await;
}

#[derive(Clone, Copy, Debug)]
enum CancelBy {
    /// The `cancel_job` tool.
    Tool,
    /// `tasks/cancel` of the task the call made.
    Task,
}

/// Submit a job to the real node, cancel it while it runs, and check it
/// ends `canceled` with exactly one terminal event.
async fn cancel_in_flight(client: &Mcp, s: &Setup, key: &str, by: CancelBy) {
    let image = common::repo().join("examples/mug.png");
    let job_id: Uuid = match by {
        CancelBy::Tool => {
            let submitted = call(client, "generate_3d", json!({"image_path": image, "model": "null", "idempotency_key": key, "wait": false})).await;
            assert_ne!(submitted.is_error, Some(true), "{submitted:?}");
            body(&submitted)["job_id"].as_str().unwrap().parse().unwrap()
        }
        CancelBy::Task => {
            let mut params = args(json!({"image_path": image, "model": "null", "idempotency_key": key}));
            params.name = "generate_3d".into();
            let CallToolResponse::Task(created) = client.call_tool_once(params).await.unwrap() else { panic!("a tasks client gets a task") };
            created.task.task_id.parse().unwrap()
        }
    };
    until_running(s, job_id).await;
    match by {
        CancelBy::Tool => {
            let canceled = call(client, "cancel_job", json!({"job_id": job_id})).await;
            assert_ne!(canceled.is_error, Some(true), "{canceled:?}");
            // A job on the device is canceled when its pass ends.
            let b = body(&canceled);
            assert!(b["state"] == "canceled" || b["cancel_requested"] == true, "{key}: {b}");
            common::eventually("the job canceled", WAIT, || async { (body(&call(client, "get_job", json!({"job_id": job_id})).await)["state"] == "canceled").then_some(()) }).await;
        }
        CancelBy::Task => {
            assert_eq!(client.get_task(GetTaskParams::new(job_id.to_string())).await.unwrap().task.status(), TaskStatus::Working, "{key}");
            client.cancel_task(CancelTaskParams::new(job_id.to_string())).await.unwrap();
            assert!(matches!(task_until_done(client, &job_id.to_string()).await, TaskPayload::Cancelled), "{key}");
        }
    }
    assert_eq!(s.jobs.get("alice", &job_id).await.unwrap().unwrap().0.state, JobState::Canceled, "{key}");
    let terminal = terminal_events(s, job_id).await;
    assert_eq!(terminal.len(), 1, "{key}: exactly one terminal event: {terminal:?}");
    assert!(matches!(&terminal[0], EventKind::Failed(f) if f.code.to_string() == "canceled"), "{key}: {terminal:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_cancels_a_running_job_by_tool_and_by_task_over_both_transports() {
    // Each forward pass takes 4 s: the job is on the device when canceled.
    let s = setup_with(slow_node(4000)).await;
    let key = s.key_dir.path().join("alice.key");
    let stdio = Recorder::with_tasks().serve(TokioChildProcess::new(mcp_command(&s.nats.url, &key, &[])).unwrap()).await.unwrap();
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut server = http_command(&s.nats.url, &key, &bind).kill_on_drop(true).spawn().unwrap();
    let http = http_client(port).await;
    for (transport, client) in [("stdio", &stdio), ("http", &http)] {
        for by in [CancelBy::Tool, CancelBy::Task] {
            cancel_in_flight(client, &s, &format!("cancel-{transport}-{by:?}"), by).await;
        }
    }
    stdio.cancel().await.unwrap();
    http.cancel().await.unwrap();
    server.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_python_sdk_cancels_a_running_job_over_http() {
    let s = setup_with(slow_node(4000)).await;
    let key = s.key_dir.path().join("alice.key");
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut server = http_command(&s.nats.url, &key, &bind).kill_on_drop(true).spawn().unwrap();
    http_client(port).await.cancel().await.unwrap();
    let python = std::env::var("ORFEAS_PYTHON").expect("ORFEAS_PYTHON is not set: run the tests through `deploy/setup.sh --test`");
    let out = tokio::process::Command::new(python)
        .env("PYTHONPATH", common::checkout_pythonpath())
        .arg(common::repo().join("tests/python/cancel_check.py"))
        .args(["mcp", &format!("http://127.0.0.1:{port}/mcp")])
        .arg(common::repo().join("examples/mug.png"))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "python MCP cancel check failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    let job: Uuid = seen["mcp"].as_str().unwrap().parse().unwrap();
    assert_eq!(job, orfeas_wire_job_id("alice", "py-mcp-cancel"));
    assert_eq!(s.jobs.get("alice", &job).await.unwrap().unwrap().0.state, JobState::Canceled);
    let terminal = terminal_events(&s, job).await;
    assert_eq!(terminal.len(), 1, "exactly one terminal event: {terminal:?}");
    assert!(matches!(&terminal[0], EventKind::Failed(f) if f.code.to_string() == "canceled"), "{terminal:?}");
    server.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_task_completes_once_after_its_node_is_killed_mid_job() {
    // The first node's pass would take a minute: it dies in the middle.
    let mut s = setup_with(slow_node(60_000)).await;
    let key = s.key_dir.path().join("alice.key");
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut server = http_command(&s.nats.url, &key, &bind).kill_on_drop(true).spawn().unwrap();
    let client = http_client(port).await;
    let image = common::repo().join("examples/mug.png");
    let mut params = args(json!({"image_path": image, "model": "null", "idempotency_key": "node-restart-1"}));
    params.name = "generate_3d".into();
    let CallToolResponse::Task(created) = client.call_tool_once(params).await.unwrap() else { panic!("a tasks client gets a task") };
    let task_id = created.task.task_id.clone();
    let job_id: Uuid = task_id.parse().unwrap();
    until_running(&s, job_id).await;
    assert_eq!(client.get_task(GetTaskParams::new(task_id.clone())).await.unwrap().task.status(), TaskStatus::Working);

    s.node.kill();
    let mut env = slow_node(0);
    env.push(("ORFEAS_MODELS_ENABLED", "null".into()));
    let _second = NodeProcess::start(&s.nats, NodeOptions { node_id: "n2", store: s.store.path(), env }).await;
    let TaskPayload::Completed { result } = task_until_done(&client, &task_id).await else { panic!("completed") };
    let result: CallToolResult = serde_json::from_value(Value::Object(result)).unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    assert!(!body(&result)["files"].as_array().unwrap().is_empty(), "{result:?}");
    let record = s.jobs.get("alice", &job_id).await.unwrap().unwrap().0;
    assert_eq!(record.state, JobState::Completed);
    assert!(record.attempt >= 2, "the second node ran it again: {record:?}");
    let terminal = terminal_events(&s, job_id).await;
    assert_eq!(terminal.len(), 1, "exactly one answer: {terminal:?}");
    assert!(matches!(terminal[0], EventKind::Completed { .. }), "{terminal:?}");
    client.cancel().await.unwrap();
    server.kill().await.unwrap();
}

/// The job id of an idempotency key (UUIDv5 of `agent \0 key`, md/mcp.md).
fn orfeas_wire_job_id(agent: &str, key: &str) -> Uuid {
    let ns = Uuid::parse_str("6f726665-6173-4d43-5000-000000000001").unwrap();
    Uuid::new_v5(&ns, format!("{agent}\0{key}").as_bytes())
}
