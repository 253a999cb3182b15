//! `orfeas mcp`: a Model Context Protocol server acting as one registered
//! agent. Tools map onto the agent's signed NATS requests; its key stays in
//! this process. A `generate_3d` call from a client that declared the tasks
//! extension becomes an MCP task whose id *is* the job id, so `tasks/get`
//! and `tasks/cancel` read and change the durable job record: a task handle
//! outlives this server and the node that ran the job.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};
use base64::Engine;
use orfeas_wire::{
    client::{AgentClient, ClientError},
    v1::{EventKind, ImageInput, JobParams, JobStatus, SubmitJob},
};
use rmcp::{
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ContentBlock, CreateTaskResult, DetailedTask,
        GetTaskParams, GetTaskResult, JsonObject, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
        ServerCapabilities, ServerConfig, Task, TaskPayload, TaskStatus, Tool,
    },
    service::{RequestContext, RoleServer},
    ErrorData, ServerHandler,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::mcp_args::{self, GenerateArgs, JobArg, ResultArg};

/// Namespace of job ids derived from idempotency keys (UUIDv5 of
/// `agent \0 key`): the same agent and key always name the same job.
const IDEMPOTENCY_NS: Uuid = Uuid::from_u128(0x6f72_6665_6173_4d43_5000_0000_0000_0001);

/// How long a signed request may wait for an answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The server: one agent's client, shared by every session.
#[derive(Clone)]
pub struct OrfeasMcp {
    agent: String,
    client: Arc<Mutex<AgentClient>>,
    nats: async_nats::Client,
    /// How long a waiting `generate_3d` (no tasks) follows the job.
    wait_timeout: Duration,
}

/// The job id an idempotency key names for `agent`.
pub fn job_id_for(agent: &str, key: &str) -> Uuid {
    Uuid::new_v5(&IDEMPOTENCY_NS, format!("{agent}\0{key}").as_bytes())
}

impl OrfeasMcp {
    /// A server speaking as `agent` through `client`.
    pub fn new(agent: &str, client: AgentClient, nats: async_nats::Client, wait_timeout: Duration) -> Self {
        Self { agent: agent.to_string(), client: Arc::new(Mutex::new(client)), nats, wait_timeout }
    }

    async fn generate(&self, args: GenerateArgs, context: &RequestContext<RoleServer>, as_task: bool) -> Result<CallToolResponse, ToolError> {
        let (data, media_type) = args.image_bytes()?;
        let formats = args.formats()?;
        let job_id = match &args.idempotency_key {
            Some(key) => job_id_for(&self.agent, key),
            None => Uuid::now_v7(),
        };
        let params = JobParams { target_faces: args.faces, size_mm: args.size_mm, previews: Some(args.previews.unwrap_or(true)), ..Default::default() };
        let mut job = SubmitJob { job_id, model: args.model().to_string(), image: ImageInput::Inline { media_type, data }, formats: formats.clone(), params };
        let applied = json!({
            "job_id": job_id,
            "model": job.model,
            "formats": formats.iter().map(|f| f.extension()).collect::<Vec<_>>(),
            "faces": args.faces,
            "size_mm": args.size_mm,
            "previews": job.params.previews,
            "idempotency_key": args.idempotency_key,
            "wait": args.wait.unwrap_or(true),
        });
        let mut client = self.client.lock().await;
        crate::agent::upload_if(&client, &mut job, false).await.map_err(|e| ToolError::internal(format!("{e:#}")))?;
        let mut events = client.submit(&job).await.map_err(ToolError::from)?;
        if as_task {
            drop(client);
            let now = now_iso();
            let task = Task::new(job_id.to_string(), TaskStatus::Working, now.clone(), now)
                .with_status_message(format!("job {job_id} submitted"));
            let mut task = task;
            task.poll_interval_ms = Some(1000);
            return Ok(CallToolResponse::Task(CreateTaskResult::new(task)));
        }
        if !args.wait.unwrap_or(true) {
            return Ok(CallToolResponse::Complete(ok_result(json!({ "job_id": job_id, "state": "submitted", "applied": applied }), vec![])));
        }
        // A retry of a job that already ended gets no new events: its record
        // answers (events were subscribed before the submission, so a job
        // ending after this check is still heard).
        if let Ok(JobStatus { terminal: Some(kind), .. }) = client.status(&job_id, REQUEST_TIMEOUT).await {
            drop(client);
            return self.finish(job_id, kind, applied).await;
        }
        let token = context.meta.get_progress_token();
        let peer = context.peer.clone();
        let mut step = 0.0;
        let last = crate::agent::follow(&mut client, &mut events, self.wait_timeout, |event| {
            let (percent, message) = match &event.kind {
                EventKind::Progress { percent, .. } => (*percent as f64, crate::agent::describe(event)),
                _ => (step, crate::agent::describe(event)),
            };
            step = percent.max(step);
            if let Some(token) = &token {
                let peer = peer.clone();
                let param = ProgressNotificationParam::new(token.clone(), step).with_total(100.0).with_message(message);
                tokio::spawn(async move { peer.notify_progress(param).await });
            }
        })
        .await
        .map_err(|e| ToolError { code: "timeout".into(), status: 504, retryable: true, message: format!("{e:#}"), job_id: Some(job_id) })?;
        drop(client);
        self.finish(job_id, last.kind, applied).await
    }

    /// The answer to a waited `generate_3d` once its job ended.
    async fn finish(&self, job_id: Uuid, kind: EventKind, applied: Value) -> Result<CallToolResponse, ToolError> {
        match kind {
            EventKind::Completed { .. } => {
                let mut result = self.result(job_id, true).await?;
                if let Some(Value::Object(s)) = result.structured_content.as_mut() {
                    s.insert("applied".into(), applied);
                }
                Ok(CallToolResponse::Complete(result))
            }
            EventKind::Failed(f) | EventKind::Rejected(f) => Err(ToolError::from(ClientError::Refused(f))),
            _ => Err(ToolError::internal("the job ended without a terminal event".into())),
        }
    }

    async fn status(&self, job_id: Uuid) -> Result<JobStatus, ToolError> {
        self.client.lock().await.status(&job_id, REQUEST_TIMEOUT).await.map_err(ToolError::from)
    }

    /// Files, printability report and (when asked) preview renders as images.
    async fn result(&self, job_id: Uuid, previews: bool) -> Result<CallToolResult, ToolError> {
        let mut client = self.client.lock().await;
        let event = client.fetch_manifest(&job_id, REQUEST_TIMEOUT).await.map_err(ToolError::from)?;
        let EventKind::Completed { results, mesh, report, previews: renders } = &event.kind else {
            return Err(ToolError::internal("manifest is not a completed event".into()));
        };
        let mut images = Vec::new();
        if previews {
            for preview in renders {
                let bytes = client.fetch_file(&job_id, &preview.location, None, REQUEST_TIMEOUT).await.map_err(ToolError::from)?;
                images.push(ContentBlock::image(base64::engine::general_purpose::STANDARD.encode(bytes), "image/png"));
            }
        }
        let body = json!({
            "job_id": job_id,
            "state": "completed",
            "files": results,
            "mesh": mesh,
            "report": report,
            "previews": renders.iter().map(|p| json!({"view": p.view, "location": p.location, "url": p.url, "bytes": p.bytes})).collect::<Vec<_>>(),
        });
        Ok(ok_result(body, images))
    }

    async fn list_models(&self) -> Result<CallToolResult, ToolError> {
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, self.nats.request(orfeas_wire::subjects::MODELS_LIST, orfeas_wire::to_cbor(&orfeas_wire::v1::ListModels {}).into()))
            .await
            .map_err(|_| ToolError { code: "unavailable".into(), status: 503, retryable: true, message: "no node answered the model list".into(), job_id: None })?
            .map_err(|e| ToolError { code: "unavailable".into(), status: 503, retryable: true, message: format!("no node answered the model list: {e}"), job_id: None })?;
        let list: orfeas_wire::v1::ModelList = orfeas_wire::from_cbor(&answer.payload).map_err(|e| ToolError::internal(format!("decoding the model list: {e}")))?;
        Ok(ok_result(serde_json::to_value(&list).unwrap_or_default(), vec![]))
    }

    async fn dispatch(&self, request: CallToolRequestParams, context: RequestContext<RoleServer>) -> Result<CallToolResponse, ToolError> {
        let args = Value::Object(request.arguments.unwrap_or_default());
        let tasks = context.client_capabilities().is_some_and(|caps| caps.supports_tasks());
        match request.name.as_ref() {
            "generate_3d" => {
                let args: GenerateArgs = parse(args)?;
                self.generate(args, &context, tasks).await
            }
            "get_job" => {
                let JobArg { job_id } = parse(args)?;
                let status = self.status(mcp_args::job_id(&job_id)?).await?;
                Ok(CallToolResponse::Complete(ok_result(status_json(&status), vec![])))
            }
            "get_result" => {
                let ResultArg { job_id, previews } = parse(args)?;
                Ok(CallToolResponse::Complete(self.result(mcp_args::job_id(&job_id)?, previews.unwrap_or(true)).await?))
            }
            "cancel_job" => {
                let JobArg { job_id } = parse(args)?;
                let status = self.client.lock().await.cancel(&mcp_args::job_id(&job_id)?, REQUEST_TIMEOUT).await.map_err(ToolError::from)?;
                Ok(CallToolResponse::Complete(ok_result(status_json(&status), vec![])))
            }
            "list_models" => Ok(CallToolResponse::Complete(self.list_models().await?)),
            other => Err(ToolError::bad(format!("unknown tool {other:?} (generate_3d, get_job, get_result, cancel_job, list_models)"))),
        }
    }
}

/// A tool's failure, returned as an `isError` result (never a crash).
#[derive(Debug)]
pub struct ToolError {
    code: String,
    status: u16,
    retryable: bool,
    message: String,
    job_id: Option<Uuid>,
}

impl ToolError {
    fn bad(message: String) -> Self {
        Self { code: "invalid_argument".into(), status: 400, retryable: false, message, job_id: None }
    }
    fn internal(message: String) -> Self {
        Self { code: "internal".into(), status: 500, retryable: true, message, job_id: None }
    }
    fn result(&self) -> CallToolResult {
        let body = json!({"error": {"code": self.code, "status": self.status, "retryable": self.retryable, "message": self.message, "job_id": self.job_id}});
        let mut result = CallToolResult::error(vec![ContentBlock::text(body.to_string())]);
        result.structured_content = Some(body);
        result
    }
}

impl From<ClientError> for ToolError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Refused(f) => Self { code: f.code.to_string(), status: f.status, retryable: f.retryable, message: f.error, job_id: f.job_id },
            ClientError::Timeout(_) | ClientError::Nats(_) => Self { code: "unavailable".into(), status: 503, retryable: true, message: e.to_string(), job_id: None },
            ClientError::Unverified(_) => Self { code: "unverified".into(), status: 502, retryable: true, message: e.to_string(), job_id: None },
        }
    }
}

impl From<mcp_args::ArgError> for ToolError {
    fn from(e: mcp_args::ArgError) -> Self {
        Self::bad(e.0)
    }
}

fn parse<T: for<'de> Deserialize<'de>>(args: Value) -> Result<T, ToolError> {
    serde_json::from_value(args).map_err(|e| ToolError::bad(format!("bad arguments: {e}")))
}

fn ok_result(body: Value, mut extra: Vec<ContentBlock>) -> CallToolResult {
    let mut content = vec![ContentBlock::text(body.to_string())];
    content.append(&mut extra);
    let mut result = CallToolResult::success(content);
    result.structured_content = Some(body);
    result
}

fn status_json(status: &JobStatus) -> Value {
    let mut body = serde_json::to_value(status).unwrap_or_default();
    if let (Value::Object(map), Some(terminal)) = (&mut body, &status.terminal) {
        if let EventKind::Failed(f) | EventKind::Rejected(f) = terminal {
            map.insert("error".into(), json!({"code": f.code.to_string(), "status": f.status, "retryable": f.retryable, "message": f.error}));
        }
    }
    body
}

fn now_iso() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    iso(ms)
}

/// RFC 3339 UTC from milliseconds since the epoch (civil-from-days).
fn iso(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

impl ServerHandler for OrfeasMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_tasks().build())
            .with_instructions("Images to printable 3D models. generate_3d submits a signed job (same idempotency_key = same job); get_job, get_result, cancel_job follow it; list_models names the models.")
    }

    async fn list_tools(&self, _request: Option<PaginatedRequestParams>, _context: RequestContext<RoleServer>) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(mcp_args::tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        mcp_args::tools().into_iter().find(|t| t.name == name)
    }

    async fn call_tool(&self, request: CallToolRequestParams, context: RequestContext<RoleServer>) -> Result<CallToolResponse, ErrorData> {
        Ok(self.dispatch(request, context).await.unwrap_or_else(|e| CallToolResponse::Complete(e.result())))
    }

    async fn get_task(&self, request: GetTaskParams, _context: RequestContext<RoleServer>) -> Result<GetTaskResult, ErrorData> {
        let job_id = Uuid::parse_str(&request.task_id).map_err(|_| ErrorData::invalid_params(format!("task id {:?} is not a job id", request.task_id), None))?;
        let status = self.status(job_id).await.map_err(|e| ErrorData::invalid_params(e.message.clone(), Some(e.result().structured_content.unwrap_or_default())))?;
        let payload = match (status.state.as_str(), &status.terminal) {
            ("completed", _) => {
                let result = self.result(job_id, true).await.unwrap_or_else(|e| e.result());
                TaskPayload::Completed { result: to_object(&result) }
            }
            ("canceled", _) => TaskPayload::Cancelled,
            ("failed", _) => TaskPayload::Completed { result: to_object(&status_error(&status)) },
            _ => TaskPayload::Working,
        };
        let created = iso(job_created_ms(&job_id).unwrap_or(status.updated_at_ms));
        let mut task = Task::new(job_id.to_string(), TaskStatus::Working, created, iso(status.updated_at_ms))
            .with_status_message(format!("job {} {}", job_id, status.state));
        task.poll_interval_ms = Some(1000);
        Ok(GetTaskResult::new(DetailedTask::new(task, payload)))
    }

    async fn cancel_task(&self, request: CancelTaskParams, _context: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        let job_id = Uuid::parse_str(&request.task_id).map_err(|_| ErrorData::invalid_params(format!("task id {:?} is not a job id", request.task_id), None))?;
        self.client.lock().await.cancel(&job_id, REQUEST_TIMEOUT).await.map_err(|e| {
            let e = ToolError::from(e);
            ErrorData::invalid_params(e.message.clone(), e.result().structured_content)
        })?;
        Ok(())
    }
}

fn status_error(status: &JobStatus) -> CallToolResult {
    match &status.terminal {
        Some(EventKind::Failed(f) | EventKind::Rejected(f)) => ToolError::from(ClientError::Refused(f.clone())).result(),
        _ => ToolError::internal(format!("job {} {}", status.job_id, status.state)).result(),
    }
}

fn to_object(result: &CallToolResult) -> JsonObject {
    match serde_json::to_value(result) {
        Ok(Value::Object(map)) => map,
        _ => JsonObject::new(),
    }
}

/// A time-ordered (v7) job id carries its creation time.
fn job_created_ms(job_id: &Uuid) -> Option<u64> {
    let (s, ns) = job_id.get_timestamp()?.to_unix();
    Some(s * 1000 + u64::from(ns) / 1_000_000)
}

/// `orfeas mcp`
#[derive(clap::Args, Debug)]
pub struct McpArgs {
    /// The agent this server acts as (its key never leaves the server).
    #[command(flatten)]
    pub agent: crate::cli::AgentArgs,
    /// Serve streamable HTTP on this address (e.g. 127.0.0.1:8790) at
    /// `/mcp` instead of stdio.
    #[arg(long)]
    pub http: Option<String>,
    /// How long a waiting generate_3d call follows its job, seconds.
    #[arg(long, default_value_t = 600)]
    pub wait_timeout_s: u64,
}

/// Run the server until stdin closes (stdio) or SIGTERM / Ctrl-C (HTTP).
pub async fn run(config: &crate::config::Config, args: &McpArgs, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<()> {
    use rmcp::ServiceExt;
    let url = crate::nats_url(config, &args.agent.nats)?;
    let nats = orfeas_actors::bus::connect(&url, &format!("orfeas-mcp-{}", args.agent.agent)).await?;
    let client = args.agent.client(config).await?;
    let server = OrfeasMcp::new(&args.agent.agent, client, nats, Duration::from_secs(args.wait_timeout_s));
    match &args.http {
        None => {
            let running = server.serve(rmcp::transport::stdio()).await.context("starting the MCP server on stdio")?;
            running.waiting().await.context("MCP stdio session")?;
        }
        Some(bind) => {
            use rmcp::transport::streamable_http_server::{session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService};
            let service: StreamableHttpService<OrfeasMcp, LocalSessionManager> =
                StreamableHttpService::new(move || Ok(server.clone()), Default::default(), StreamableHttpServerConfig::default());
            let router = axum::Router::new().nest_service("/mcp", service);
            let listener = tokio::net::TcpListener::bind(bind).await.with_context(|| format!("binding {bind}"))?;
            eprintln!("orfeas mcp listening on http://{}/mcp", listener.local_addr()?);
            axum::serve(listener, router).with_graceful_shutdown(shutdown).await?;
        }
    }
    Ok(())
}
