//! `orfeas mcp` driven by the official MCP client (rmcp) against a real
//! node on a real nats-server, over stdio and over streamable HTTP: tools,
//! idempotent retries, cancel, bad arguments, and tasks that outlive the
//! MCP server.

mod common;

use std::{path::Path, process::Stdio, time::Duration};

use base64::Engine;
use common::{agent, NatsServer, NodeOptions, NodeProcess};
use orfeas_actors::{
    bus::Bus,
    jobs::{JobRecord, JobState, JobStore},
};
use rmcp::{
    model::{CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ClientCapabilities, ClientConfig, GetTaskParams, Implementation, TaskPayload, TaskStatus},
    service::RunningService,
    transport::{streamable_http_client::StreamableHttpClientTransportConfig, StreamableHttpClientTransport, TokioChildProcess},
    RoleClient, ServiceExt,
};
use serde_json::{json, Value};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(120);

fn args(value: Value) -> CallToolRequestParams {
    let Value::Object(map) = value else { panic!("arguments are an object") };
    CallToolRequestParams::new("x").with_arguments(map)
}

async fn call(client: &RunningService<RoleClient, ClientConfig>, tool: &'static str, arguments: Value) -> CallToolResult {
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
    }
}

struct Setup {
    nats: NatsServer,
    _node: NodeProcess,
    _store: tempfile::TempDir,
    key_dir: tempfile::TempDir,
    jobs: JobStore,
}

async fn setup() -> Setup {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&nats, NodeOptions { node_id: "n1", store: store.path(), env: vec![("ORFEAS_MODELS_ENABLED", "null".into())] }).await;
    let (_alice, key) = agent(&nats.url, "alice").await;
    let key_dir = tempfile::tempdir().unwrap();
    std::fs::write(key_dir.path().join("alice.key"), key.to_text()).unwrap();
    let client = orfeas_actors::bus::connect(&nats.url, "orfeas-test").await.unwrap();
    let jobs = JobStore::new(Bus::attach(client).await.unwrap().jobs.clone());
    Setup { nats, _node: node, _store: store, key_dir, jobs }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_over_stdio_generates_retries_cancels_and_refuses_bad_arguments() {
    let s = setup().await;
    let key = s.key_dir.path().join("alice.key");
    let transport = TokioChildProcess::new(mcp_command(&s.nats.url, &key, &[])).unwrap();
    let client = ClientConfig::default().serve(transport).await.unwrap();

    let tools: Vec<String> = client.list_tools(None).await.unwrap().tools.iter().map(|t| t.name.to_string()).collect();
    for want in ["generate_3d", "get_job", "get_result", "cancel_job", "list_models"] {
        assert!(tools.contains(&want.to_string()), "{want} missing from {tools:?}");
    }
    let models = call(&client, "list_models", json!({})).await;
    assert!(body(&models)["models"].as_array().unwrap().iter().any(|m| m["name"] == "null"), "{models:?}");

    // A waited generation, by path, echoing every applied parameter.
    let image = common::repo().join("examples/mug.png");
    let first = call(&client, "generate_3d", json!({"image_path": image, "model": "null", "formats": ["glb", "stl"], "idempotency_key": "mug-1"})).await;
    assert_ne!(first.is_error, Some(true), "{first:?}");
    let b = body(&first);
    let applied = &b["applied"];
    assert_eq!(applied["model"], "null");
    assert_eq!(applied["formats"], json!(["glb", "stl"]));
    assert_eq!(applied["previews"], true, "the default is echoed");
    assert!(applied.get("faces").is_some() && applied.get("size_mm").is_some());
    let job_id = b["job_id"].as_str().unwrap().to_string();
    let formats: Vec<&str> = b["files"].as_array().unwrap().iter().map(|f| f["format"].as_str().unwrap()).collect();
    assert_eq!(formats, ["glb", "stl"]);

    // The same idempotency key, now inline as base64: the same job, not a new one.
    let b64 = base64::engine::general_purpose::STANDARD.encode(common::example("mug.png"));
    let again = call(&client, "generate_3d", json!({"image_base64": b64, "model": "null", "formats": ["glb", "stl"], "idempotency_key": "mug-1"})).await;
    assert_ne!(again.is_error, Some(true), "{again:?}");
    assert_eq!(body(&again)["job_id"].as_str().unwrap(), job_id);
    let record = s.jobs.get("alice", &job_id.parse().unwrap()).await.unwrap().unwrap().0;
    assert_eq!(record.state, JobState::Completed);
    assert_eq!(record.attempt, 1, "the retry ran nothing again");

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

    // Cancel a queued job: it ends canceled.
    let queued = Uuid::now_v7();
    s.jobs.create(&queued_record(queued)).await.unwrap();
    let canceled = call(&client, "cancel_job", json!({"job_id": queued})).await;
    assert_eq!(body(&canceled)["state"], "canceled", "{canceled:?}");
    assert_eq!(s.jobs.get("alice", &queued).await.unwrap().unwrap().0.state, JobState::Canceled);

    // Bad arguments: a clear tool error with a stable code, and the server lives on.
    for (arguments, needle) in [
        (json!({"model": "null"}), "image is required"),
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
    // Someone else's or an unknown job: the node's own code.
    let unknown = call(&client, "get_job", json!({"job_id": Uuid::now_v7()})).await;
    assert_eq!(unknown.is_error, Some(true));
    assert_eq!(body(&unknown)["error"]["code"], "not_found", "{unknown:?}");
    assert_eq!(body(&call(&client, "get_job", json!({"job_id": job_id})).await)["state"], "completed", "the server lives on");
    client.cancel().await.unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn http_client(port: u16) -> RunningService<RoleClient, ClientConfig> {
    // reqwest is built without a crypto provider of its own (as the node's S3 client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = ClientConfig::new(ClientCapabilities::builder().enable_tasks().build(), Implementation::new("orfeas-test", "0"));
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

async fn task_until_done(client: &RunningService<RoleClient, ClientConfig>, task_id: &str) -> TaskPayload {
    common::eventually("the task ends", WAIT, || async {
        let got = client.get_task(GetTaskParams::new(task_id)).await.unwrap();
        assert_eq!(got.task.task.task_id, task_id);
        got.task.status().is_terminal().then_some(got.task.payload)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_over_http_runs_tasks_that_survive_a_server_restart() {
    let s = setup().await;
    let key = s.key_dir.path().join("alice.key");
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut server = mcp_command(&s.nats.url, &key, &["--http", &bind]).kill_on_drop(true).spawn().unwrap();
    let client = http_client(port).await;

    let image = common::repo().join("examples/mug.png");
    let mut params = args(json!({"image_path": image, "model": "null", "idempotency_key": "task-1"}));
    params.name = "generate_3d".into();
    let CallToolResponse::Task(created) = client.call_tool_once(params.clone()).await.unwrap() else { panic!("a tasks client gets a task") };
    let task_id = created.task.task_id.clone();
    let job_id: Uuid = task_id.parse().expect("the task id is the job id");

    // The MCP server goes away and comes back: the task is still there,
    // because it is the durable job.
    drop(client);
    server.kill().await.unwrap();
    let mut server = mcp_command(&s.nats.url, &key, &["--http", &bind]).kill_on_drop(true).spawn().unwrap();
    let client = http_client(port).await;
    let TaskPayload::Completed { result } = task_until_done(&client, &task_id).await else { panic!("completed") };
    let result: CallToolResult = serde_json::from_value(Value::Object(result)).unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    assert_eq!(body(&result)["job_id"].as_str().unwrap(), task_id);
    assert!(!body(&result)["files"].as_array().unwrap().is_empty());

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
