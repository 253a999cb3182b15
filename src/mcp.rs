//! `orfeas mcp`: a Model Context Protocol server acting as one registered
//! agent. Tools map onto the agent's signed NATS requests; its key stays in
//! this process. A `generate_3d` call from a client that declared the tasks
//! extension becomes an MCP task whose id *is* the job id, so `tasks/get`
//! and `tasks/cancel` read and change the durable job record: a task handle
//! outlives this server and the node that ran the job. While the client
//! that made a task stays connected, it also gets `notifications/tasks`
//! updates (progress, then the result with report and previews).

use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use orfeas_wire::{
    client::{AgentClient, ClientError, JobEvents},
    v1::{AdmittedRequest, Event, EventKind, Format, ImageInput, JobParams, JobStatus, RefStore, SubmitJob},
};
use rmcp::{
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ContentBlock, CreateTaskResult, DetailedTask,
        GetTaskParams, GetTaskResult, JsonObject, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
        ServerCapabilities, ServerConfig, ServerNotification, Task, TaskPayload, TaskStatus, TaskStatusNotification,
        TaskStatusNotificationParams, Tool,
    },
    service::{Peer, RequestContext, RoleServer},
    ErrorData, ServerHandler,
};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    mcp_args::{self, GenerateArgs, ImageSource, JobArg, ResultArg, UploadArgs},
    mcp_error::{Code, ToolError},
    mcp_path::PathPolicy,
};

/// Namespace of job ids derived from idempotency keys (UUIDv5 of
/// `agent \0 key`): the same agent and key always name the same job.
const IDEMPOTENCY_NS: Uuid = Uuid::from_u128(0x6f72_6665_6173_4d43_5000_0000_0000_0001);

/// How long a signed request may wait for an answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one notification may take to leave; a client that stopped
/// reading must not hold a watcher forever.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// The server: one agent, shared by every session.
#[derive(Clone)]
pub struct OrfeasMcp {
    agent: String,
    /// Cloned per call: each call verifies with its own node-key cache, so
    /// concurrent calls never wait on each other.
    client: AgentClient,
    nats: async_nats::Client,
    /// How long a waiting `generate_3d` (and a task's watcher) follows the job.
    wait_timeout: Duration,
    /// Which `image_path`s may be read (none over HTTP without `--image-dir`).
    paths: PathPolicy,
}

/// The job id an idempotency key names for `agent`.
pub fn job_id_for(agent: &str, key: &str) -> Uuid {
    Uuid::new_v5(&IDEMPOTENCY_NS, format!("{agent}\0{key}").as_bytes())
}

impl OrfeasMcp {
    /// A server speaking as `agent` through `client`.
    pub fn new(agent: &str, client: AgentClient, nats: async_nats::Client, wait_timeout: Duration, paths: PathPolicy) -> Self {
        Self { agent: agent.to_string(), client, nats, wait_timeout, paths }
    }

    fn js(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.nats.clone())
    }

    async fn generate(&self, args: GenerateArgs, context: &RequestContext<RoleServer>, as_task: bool) -> Result<CallToolResponse, ToolError> {
        // Every argument is checked before anything is uploaded or signed.
        let source = args.image(&self.agent, &self.paths)?;
        let formats = args.formats()?;
        let priority = args.priority()?;
        let job_id = match &args.idempotency_key {
            Some(key) if key.is_empty() => return Err(ToolError::bad("idempotency_key is empty")),
            Some(key) => job_id_for(&self.agent, key),
            None => Uuid::now_v7(),
        };
        let client = self.client.clone();
        let (image, source_name, uploaded) = match source {
            ImageSource::Bytes { data, media_type } => {
                let mut job = SubmitJob { job_id, model: String::new(), image: ImageInput::Inline { media_type, data }, formats: vec![], params: JobParams::default() };
                let uploaded = crate::agent::upload_if(&client, &mut job, false).await.map_err(|e| ToolError::new(Code::Unavailable, format!("{e:#}")))?;
                (job.image, if args.image_path.is_some() { "image_path" } else { "image_base64" }, uploaded)
            }
            ImageSource::Ref(key) => (self.reference(&key).await?, "image_ref", Some(key)),
        };
        let wait = args.wait.unwrap_or(true);
        let params = JobParams { target_faces: args.faces, size_mm: args.size_mm, previews: Some(args.previews.unwrap_or(true)), priority, ..Default::default() };
        let job = SubmitJob { job_id, model: args.model().to_string(), image, formats, params };
        // A retry whose arguments differ from those of the job its key
        // already names: that job runs as it was first asked, and the node
        // would refuse this submission as a `conflict`. Follow the job
        // instead, and say in the echo that the arguments differed.
        let asked = AdmittedRequest { model: job.model.clone(), formats: dedup_formats(&job.formats), params: job.params.clone() };
        let existing = match &args.idempotency_key {
            Some(_) => client.status(&job_id, REQUEST_TIMEOUT).await.ok().and_then(|s| s.request),
            None => None,
        };
        let differed = existing.is_some_and(|r| r != asked);
        let mut events = if differed { client.job_events(&job_id).await } else { client.submit(&job).await }.map_err(|e| ToolError::from(e).with_job(job_id))?;
        let call = Call {
            image: json!({"source": source_name, "media_type": job.image.media_type(), "bytes": job.image.bytes(), "uploaded": uploaded}),
            idempotency_key: args.idempotency_key.clone(),
            wait,
            differed: differed.then_some(asked),
        };
        if as_task || !wait {
            // The echo is the record as admitted, so these answers wait for
            // the node's first word on the submission (a refusal is this
            // call's error); a waited call reads the record at the end.
            let status = if differed { self.status(job_id).await? } else { self.admitted(&mut client.clone(), &mut events, job_id).await? };
            let applied = call.applied(job_id, &status);
            if as_task {
                let now = now_iso();
                let task = Task::new(job_id.to_string(), TaskStatus::Working, now.clone(), now).with_status_message(format!("job {job_id} submitted")).with_poll_interval_ms(1000);
                let mut created = CreateTaskResult::new(task);
                created.meta = Some(rmcp::model::MetaObject(match json!({ "orfeas/applied": applied.clone() }) {
                    Value::Object(map) => map,
                    _ => JsonObject::new(),
                }));
                // Status updates go to this client while it is connected; the
                // task itself is the job, so `tasks/get` answers without them.
                tokio::spawn(self.clone().watch_task(client, events, job_id, applied, context.peer.clone()));
                return Ok(CallToolResponse::Task(created));
            }
            let mut body = status_json(&status);
            body["applied"] = applied;
            body["progress"] = self.latest(job_id).await.map(|e| progress_json(&e)).unwrap_or(Value::Null);
            return Ok(CallToolResponse::Complete(ok_result(body, vec![])));
        }
        // A retry of a job that already ended gets no new events: its record
        // answers (events were subscribed before the submission, so a job
        // ending after this check is still heard).
        if let Ok(JobStatus { terminal: Some(_), .. }) = client.status(&job_id, REQUEST_TIMEOUT).await {
            return self.finish(job_id, &call).await;
        }
        let last = self.follow_with_progress(client, &mut events, job_id, context).await?;
        // A submission the node refused has no record to answer from.
        if let EventKind::Rejected(f) = &last.kind {
            if !matches!(self.status(job_id).await, Ok(JobStatus { terminal: Some(_), .. })) {
                return Err(ToolError::node(f.clone()).with_job(job_id));
            }
        }
        self.finish(job_id, &call).await
    }

    /// The record of a job just submitted: the node's first event on it
    /// (`accepted`, written after the record; a refusal becomes the call's
    /// error), then the record.
    async fn admitted(&self, client: &mut AgentClient, events: &mut JobEvents, job_id: Uuid) -> Result<JobStatus, ToolError> {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = client.next_event(events, left).await.map_err(|e| match e {
                ClientError::Timeout(_) => ToolError::new(Code::Unavailable, format!("no node answered the submission of job {job_id} within {REQUEST_TIMEOUT:?} (call again with the same idempotency_key)")),
                e => ToolError::from(e),
            });
            let event = event.map_err(|e| e.with_job(job_id))?;
            if event.job_id != job_id {
                continue;
            }
            if let EventKind::Rejected(f) = &event.kind {
                return Err(ToolError::node(f.clone()).with_job(job_id));
            }
            return self.recorded(job_id).await;
        }
    }

    /// Follow a waited call's job to its end, sending
    /// `notifications/progress` (never decreasing, in order) when the
    /// request carried a progress token.
    async fn follow_with_progress(&self, mut client: AgentClient, events: &mut JobEvents, job_id: Uuid, context: &RequestContext<RoleServer>) -> Result<Event, ToolError> {
        let token = context.meta.get_progress_token();
        // One sender task keeps the notifications in the order they were made.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ProgressNotificationParam>();
        let peer = context.peer.clone();
        let sender = tokio::spawn(async move {
            while let Some(param) = rx.recv().await {
                if tokio::time::timeout(NOTIFY_TIMEOUT, peer.notify_progress(param)).await.is_err() {
                    break;
                }
            }
        });
        let mut sent: Option<f64> = None;
        let followed = crate::agent::follow(&mut client, events, self.wait_timeout, |event| {
            let percent = match &event.kind {
                EventKind::Progress { percent, .. } => f64::from(*percent),
                EventKind::Completed { .. } => 100.0,
                _ => 0.0,
            };
            // Events may arrive out of order, and the spec wants progress to
            // increase with every notification: send only a higher value.
            if sent.is_some_and(|last| percent <= last) {
                return;
            }
            sent = Some(percent);
            if let Some(token) = &token {
                let _ = tx.send(ProgressNotificationParam::new(token.clone(), percent).with_total(100.0).with_message(crate::agent::describe(event)));
            }
        })
        .await;
        drop(tx);
        // Every progress notification leaves before the result does.
        let _ = sender.await;
        followed.map_err(|e| ToolError::new(Code::Timeout, format!("{e:#} (call again with the same idempotency_key to pick the job up)")).with_job(job_id))
    }

    /// The answer to a waited `generate_3d` once its job ended.
    async fn finish(&self, job_id: Uuid, call: &Call) -> Result<CallToolResponse, ToolError> {
        let (mut result, status) = self.result(job_id, true).await?;
        if let Some(Value::Object(s)) = result.structured_content.as_mut() {
            s.insert("applied".into(), call.applied(job_id, &status));
        }
        refresh_text(&mut result);
        Ok(CallToolResponse::Complete(result))
    }

    /// The job's record, waiting (briefly) for Ingress to write it.
    async fn recorded(&self, job_id: Uuid) -> Result<JobStatus, ToolError> {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        let mut pause = Duration::from_millis(5);
        loop {
            match self.client.status(&job_id, REQUEST_TIMEOUT).await {
                Err(ClientError::Refused(f)) if f.code == orfeas_wire::ErrorCode::NotFound && tokio::time::Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                other => return other.map_err(|e| ToolError::from(e).with_job(job_id)),
            }
        }
    }

    /// An uploaded image's reference: size and SHA-256 as the object store
    /// computed them on upload, so the signed job names exactly those bytes.
    async fn reference(&self, key: &str) -> Result<ImageInput, ToolError> {
        let missing = || ToolError::new(Code::InputMissing, format!("image_ref {key:?} is not in the uploads store {:?}: upload it first (upload_image)", orfeas_wire::subjects::UPLOADS_BUCKET));
        let bucket = self.js().get_object_store(orfeas_wire::subjects::UPLOADS_BUCKET).await.map_err(|_| missing())?;
        let info = bucket.info(key).await.map_err(|e| match e.kind() {
            async_nats::jetstream::object_store::InfoErrorKind::NotFound => missing(),
            _ => ToolError::new(Code::Unavailable, format!("reading image_ref {key:?}: {e}")),
        })?;
        let sha256 = info
            .digest
            .as_deref()
            .and_then(|d| d.strip_prefix("SHA-256="))
            .and_then(|d| base64::engine::general_purpose::URL_SAFE.decode(d).or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(d)).ok())
            .filter(|d| d.len() == 32)
            .ok_or_else(|| ToolError::internal(format!("image_ref {key:?} has no SHA-256 digest in the store")))?;
        let media_type = match key.rsplit('.').next().map(str::to_ascii_lowercase).as_deref() {
            Some("png") => "image/png",
            Some("jpg" | "jpeg") => "image/jpeg",
            Some("webp") => "image/webp",
            _ => return Err(ToolError::bad(format!("image_ref {key:?} does not end in .png, .jpg, .jpeg or .webp"))),
        };
        Ok(ImageInput::Ref { media_type: media_type.into(), store: RefStore::Jetstream, bucket: None, key: key.to_string(), sha256, size: info.size as u64 })
    }

    async fn upload(&self, args: UploadArgs) -> Result<CallToolResult, ToolError> {
        let (data, media_type, name) = args.checked()?;
        let image = self.client.upload(&name, media_type, &data).await.map_err(ToolError::from)?;
        let ImageInput::Ref { key, sha256, size, .. } = &image else { return Err(ToolError::internal("upload returned no reference")) };
        Ok(ok_result(json!({"image_ref": key, "media_type": media_type, "sha256": hex::encode(sha256), "bytes": size}), vec![]))
    }

    async fn status(&self, job_id: Uuid) -> Result<JobStatus, ToolError> {
        self.client.status(&job_id, REQUEST_TIMEOUT).await.map_err(|e| ToolError::from(e).with_job(job_id))
    }

    /// The job's latest verified event from the events stream (stage,
    /// percent, ETA, queue position); `None` when there is none to read.
    async fn latest(&self, job_id: Uuid) -> Option<Event> {
        let stream = self.js().get_stream_no_info(orfeas_wire::subjects::EVENTS_STREAM).await.ok()?;
        let subject = orfeas_wire::subjects::events(&self.agent, &job_id);
        let message = stream.get_last_raw_message_by_subject(&subject).await.ok()?;
        self.client.clone().verify_event(&subject, &message.payload).await.ok()
    }

    /// Files, printability report and (when asked) preview renders as
    /// images, with the job's record; `not_ready` while it runs, the job's
    /// own error once it failed.
    async fn result(&self, job_id: Uuid, previews: bool) -> Result<(CallToolResult, JobStatus), ToolError> {
        let status = self.status(job_id).await?;
        match (status.state.as_str(), &status.terminal) {
            ("completed", _) => {}
            (_, Some(EventKind::Failed(f) | EventKind::Rejected(f))) => return Err(ToolError::node(f.clone()).with_job(job_id)),
            (state, _) => {
                let progress = self.latest(job_id).await.map(|e| format!(" ({})", crate::agent::describe(&e))).unwrap_or_default();
                return Err(ToolError::new(Code::NotReady, format!("job {job_id} is {state}{progress}: poll get_job, or call generate_3d again with the same idempotency_key to wait")).with_job(job_id));
            }
        }
        let mut client = self.client.clone();
        let event = client.fetch_manifest(&job_id, REQUEST_TIMEOUT).await.map_err(|e| ToolError::from(e).with_job(job_id))?;
        let EventKind::Completed { results, mesh, report, previews: renders } = &event.kind else {
            return Err(ToolError::internal("manifest is not a completed event"));
        };
        // The manifest is a signed event (verified like one); chunks are not
        // signed, so a preview is shown only when its bytes match the
        // SHA-256 the node signed in it. One without (a node older than
        // that field) is listed, not shown: nothing vouches for its bytes.
        let mut images = Vec::new();
        if previews {
            for preview in renders {
                let Some(sha256) = preview.sha256.as_deref() else { continue };
                let bytes = client.fetch_file(&job_id, &preview.location, Some(sha256), REQUEST_TIMEOUT).await.map_err(|e| ToolError::from(e).with_job(job_id))?;
                images.push(ContentBlock::image(base64::engine::general_purpose::STANDARD.encode(bytes), "image/png"));
            }
        }
        let body = json!({
            "job_id": job_id,
            "state": "completed",
            "lane": status.lane.as_str(),
            "files": results,
            "mesh": mesh,
            "report": report,
            "previews": renders.iter().map(|p| json!({"view": p.view, "location": p.location, "url": p.url, "bytes": p.bytes, "sha256": p.sha256, "signed": p.sha256.is_some()})).collect::<Vec<_>>(),
        });
        Ok((ok_result(body, images), status))
    }

    async fn list_models(&self) -> Result<CallToolResult, ToolError> {
        let unavailable = |e: String| ToolError::new(Code::Unavailable, format!("no node answered the model list{e}"));
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, self.nats.request(orfeas_wire::subjects::MODELS_LIST, orfeas_wire::to_cbor(&orfeas_wire::v1::ListModels {}).into()))
            .await
            .map_err(|_| unavailable(String::new()))?
            .map_err(|e| unavailable(format!(": {e}")))?;
        let list: orfeas_wire::v1::ModelList = orfeas_wire::from_cbor(&answer.payload).map_err(|e| ToolError::internal(format!("decoding the model list: {e}")))?;
        // The one unsigned reply (anyone may ask): say so rather than imply it was checked.
        let mut body = serde_json::to_value(&list).unwrap_or_default();
        body["signed"] = json!(false);
        Ok(ok_result(body, vec![]))
    }

    async fn dispatch(&self, request: CallToolRequestParams, context: RequestContext<RoleServer>) -> Result<CallToolResponse, ToolError> {
        let args = Value::Object(request.arguments.unwrap_or_default());
        let tasks = context.client_capabilities().is_some_and(|caps| caps.supports_tasks());
        match request.name.as_ref() {
            "generate_3d" => {
                let args: GenerateArgs = parse(args)?;
                // `wait: false` answers at once even for a tasks client.
                let as_task = tasks && args.wait != Some(false);
                self.generate(args, &context, as_task).await
            }
            "upload_image" => Ok(CallToolResponse::Complete(self.upload(parse(args)?).await?)),
            "get_job" => {
                let JobArg { job_id } = parse(args)?;
                let job_id = mcp_args::job_id(&job_id)?;
                let status = self.status(job_id).await?;
                let mut body = status_json(&status);
                body["progress"] = self.latest(job_id).await.map(|e| progress_json(&e)).unwrap_or(Value::Null);
                Ok(CallToolResponse::Complete(ok_result(body, vec![])))
            }
            "get_result" => {
                let ResultArg { job_id, previews } = parse(args)?;
                Ok(CallToolResponse::Complete(self.result(mcp_args::job_id(&job_id)?, previews.unwrap_or(true)).await?.0))
            }
            "cancel_job" => {
                let JobArg { job_id } = parse(args)?;
                let job_id = mcp_args::job_id(&job_id)?;
                let status = self.client.cancel(&job_id, REQUEST_TIMEOUT).await.map_err(|e| ToolError::from(e).with_job(job_id))?;
                Ok(CallToolResponse::Complete(ok_result(status_json(&status), vec![])))
            }
            "list_models" => Ok(CallToolResponse::Complete(self.list_models().await?)),
            other => Err(ToolError::bad(format!("unknown tool {other:?} (generate_3d, upload_image, get_job, get_result, cancel_job, list_models)"))),
        }
    }

    /// The task a job is, read from its durable record: `working` (with the
    /// latest progress as status message), `completed` with the
    /// `get_result` result (a failed job's is an `isError` result),
    /// `cancelled`. `applied` is the echo of the call when this server made it.
    async fn detailed_task(&self, job_id: Uuid, applied: Option<&Value>) -> Result<DetailedTask, ToolError> {
        let status = self.status(job_id).await?;
        let (payload, message) = match (status.state.as_str(), &status.terminal) {
            ("completed", _) => {
                let result = match self.result(job_id, true).await {
                    Ok((mut result, status)) => {
                        if let Some(Value::Object(s)) = result.structured_content.as_mut() {
                            let mut applied = applied.cloned().unwrap_or_else(|| applied_from_record(job_id, &status));
                            applied["priority"] = json!(status.lane.as_str());
                            s.insert("applied".into(), applied);
                        }
                        refresh_text(&mut result);
                        result
                    }
                    Err(e) => e.result(),
                };
                (TaskPayload::Completed { result: to_object(&result) }, format!("job {job_id} completed"))
            }
            ("canceled", _) => (TaskPayload::Cancelled, format!("job {job_id} canceled")),
            (_, Some(EventKind::Failed(f) | EventKind::Rejected(f))) => {
                (TaskPayload::Completed { result: to_object(&ToolError::node(f.clone()).with_job(job_id).result()) }, format!("job {job_id} failed: {}", f.code))
            }
            (state, _) => {
                let progress = self.latest(job_id).await.map(|e| crate::agent::describe(&e));
                (TaskPayload::Working, format!("job {job_id} {state}{}", progress.map(|p| format!(": {p}")).unwrap_or_default()))
            }
        };
        let created = iso(job_created_ms(&job_id).unwrap_or(status.updated_at_ms));
        let task = Task::new(job_id.to_string(), TaskStatus::Working, created, iso(status.updated_at_ms)).with_status_message(message).with_poll_interval_ms(1000);
        Ok(DetailedTask::new(task, payload))
    }

    /// Push `notifications/tasks` to the client that made the task: each
    /// progress event as a `working` update, then the final task with the
    /// result (files, printability report, preview images, applied
    /// parameters). Ends at the job's end, at the wait timeout, or as soon
    /// as the client stops taking notifications; the job does not care.
    async fn watch_task(self, mut client: AgentClient, mut events: JobEvents, job_id: Uuid, applied: Value, peer: Peer<RoleServer>) {
        let notify = |task: DetailedTask| {
            let peer = peer.clone();
            async move {
                let note = ServerNotification::TaskStatusNotification(TaskStatusNotification::new(TaskStatusNotificationParams::new(task)));
                matches!(tokio::time::timeout(NOTIFY_TIMEOUT, peer.send_notification(note)).await, Ok(Ok(())))
            }
        };
        let created = iso(job_created_ms(&job_id).unwrap_or_else(orfeas_actors::now_ms));
        let deadline = tokio::time::Instant::now() + self.wait_timeout;
        // A retry of a job that already ended hears no events.
        let mut done = matches!(client.status(&job_id, REQUEST_TIMEOUT).await, Ok(JobStatus { terminal: Some(_), .. }));
        let mut seen = std::collections::HashSet::new();
        while !done {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Ok(event) = client.next_event(&mut events, left).await else { return };
            if event.job_id != job_id || !seen.insert(event.seq) {
                continue;
            }
            done = event.kind.is_terminal();
            if !done {
                let task = Task::new(job_id.to_string(), TaskStatus::Working, created.clone(), now_iso()).with_status_message(crate::agent::describe(&event)).with_poll_interval_ms(1000);
                if !notify(DetailedTask::new(task, TaskPayload::Working)).await {
                    return;
                }
            }
        }
        // The record answers for the end (the same as `tasks/get`), so a
        // notification never says something the job does not.
        let final_task = match self.recorded(job_id).await {
            Ok(_) => self.detailed_task(job_id, Some(&applied)).await,
            Err(e) => Err(e),
        };
        if let Ok(task) = final_task {
            let _ = notify(task).await;
        }
    }
}

/// What only a `generate_3d` call knew, for its echo: where the image came
/// from, the idempotency key, `wait`, and (when the key already named a job
/// asked otherwise) what this call asked for instead.
struct Call {
    image: Value,
    idempotency_key: Option<String>,
    wait: bool,
    differed: Option<AdmittedRequest>,
}

impl Call {
    /// `applied`: the job's record as admitted (defaults filled in), plus
    /// what only this call knew.
    fn applied(&self, job_id: Uuid, status: &JobStatus) -> Value {
        let mut applied = applied_from_record(job_id, status);
        applied["image"] = self.image.clone();
        applied["idempotency_key"] = json!(self.idempotency_key);
        applied["wait"] = json!(self.wait);
        applied["arguments_differed"] = json!(self.differed.is_some());
        if let Some(asked) = &self.differed {
            applied["asked"] = request_json(asked);
            applied["note"] = json!(format!(
                "idempotency_key {:?} already names job {job_id}, which runs with the arguments it was first given (above), not these (in `asked`); use a new key for a new job",
                self.idempotency_key.as_deref().unwrap_or_default()
            ));
        }
        applied
    }
}

/// The echo of a job's parameters from its record, which keeps the request
/// as the node admitted it: what the job runs with, the node's defaults
/// filled in (`defaulted` names the parameters the call left out, and
/// `defaults` says what an absent `faces` or `size_mm` means). Where the
/// image came from and the idempotency key only the call knew; a server
/// that did not make the call (a restart, another server) leaves them out.
fn applied_from_record(job_id: Uuid, status: &JobStatus) -> Value {
    let mut applied = json!({"job_id": job_id, "priority": status.lane.as_str(), "from": "record"});
    if let Some(request) = &status.request {
        for (k, v) in request_json(request).as_object().into_iter().flatten() {
            applied[k] = v.clone();
        }
    }
    applied
}

/// A request's parameters with the documented defaults of `JobParams`
/// (actors/wire/src/v1.rs) in place of the absent ones.
fn request_json(request: &AdmittedRequest) -> Value {
    let p = &request.params;
    let mut defaulted = Vec::new();
    let mut defaults = serde_json::Map::new();
    if p.target_faces.is_none() {
        defaulted.push("faces");
        defaults.insert("faces".into(), json!("no decimation: the model's own triangles"));
    }
    if p.size_mm.is_none() {
        defaulted.push("size_mm");
        defaults.insert("size_mm".into(), json!("not scaled: 1 model unit = 1 mm"));
    }
    for (name, given) in [("smooth", p.smooth.is_some()), ("colour", p.colour.is_some()), ("previews", p.previews.is_some()), ("build_volume_mm", p.build_volume_mm.is_some()), ("priority", p.priority.is_some())] {
        if !given {
            defaulted.push(name);
        }
    }
    json!({
        "model": request.model,
        "formats": request.formats.iter().map(|f| f.extension()).collect::<Vec<_>>(),
        "faces": p.target_faces,
        "size_mm": p.size_mm,
        "smooth": p.smooth.unwrap_or(true),
        "colour": p.colour.unwrap_or(true),
        "previews": p.previews.unwrap_or(true),
        "texture": p.texture,
        "lay_flat": p.lay_flat,
        "build_volume_mm": p.build_volume_mm.unwrap_or([256.0, 256.0, 256.0]),
        "model_params": p.model_params,
        "priority_asked": p.priority.map(|l| l.as_str()),
        "deadline_ms": p.deadline_ms,
        "defaulted": defaulted,
        "defaults": defaults,
    })
}

/// Formats as the node admits them: repeats dropped, in order.
fn dedup_formats(formats: &[Format]) -> Vec<Format> {
    let mut out: Vec<Format> = Vec::new();
    for f in formats {
        if !out.contains(f) {
            out.push(*f);
        }
    }
    out
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

/// Keep the text block (the first) equal to the structured content after an edit.
fn refresh_text(result: &mut CallToolResult) {
    if let (Some(body), Some(first)) = (&result.structured_content, result.content.first_mut()) {
        if first.as_text().is_some() {
            *first = ContentBlock::text(body.to_string());
        }
    }
}

fn status_json(status: &JobStatus) -> Value {
    let mut body = serde_json::to_value(status).unwrap_or_default();
    if let (Value::Object(map), Some(EventKind::Failed(f) | EventKind::Rejected(f))) = (&mut body, &status.terminal) {
        map.insert("error".into(), json!({"code": f.code.to_string(), "status": f.status, "retryable": f.retryable, "message": f.error}));
    }
    body
}

/// The latest event as `{event, stage, percent, eta_ms, queue_position, message}`.
fn progress_json(event: &Event) -> Value {
    let mut body = json!({"event": event.kind.name(), "message": crate::agent::describe(event), "at_ms": event.at_ms});
    match &event.kind {
        EventKind::Accepted { queue_position, eta_ms } => {
            body["queue_position"] = json!(queue_position);
            body["eta_ms"] = json!(eta_ms);
            body["percent"] = json!(0);
        }
        EventKind::Progress { stage, percent, eta_ms } => {
            body["stage"] = json!(stage.as_str());
            body["percent"] = json!(percent);
            body["eta_ms"] = json!(eta_ms);
        }
        EventKind::Completed { .. } => body["percent"] = json!(100),
        _ => {}
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
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_tasks().build()).with_instructions(
            "Images to printable 3D models. generate_3d submits a signed job (same idempotency_key = same job); upload_image stores an image once for many jobs; get_job, get_result, cancel_job follow a job; list_models names the models.",
        )
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
        let job_id = task_job_id(&request.task_id)?;
        let task = self.detailed_task(job_id, None).await.map_err(protocol_error)?;
        Ok(GetTaskResult::new(task))
    }

    async fn cancel_task(&self, request: CancelTaskParams, _context: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        let job_id = task_job_id(&request.task_id)?;
        self.client.cancel(&job_id, REQUEST_TIMEOUT).await.map_err(|e| protocol_error(ToolError::from(e).with_job(job_id)))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let token = "0123456789abcdef0123456789abcdef";
        let with = |value: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert(axum::http::header::AUTHORIZATION, value.parse().unwrap());
            headers
        };
        assert!(bearer_matches(&with(&format!("Bearer {token}")), token));
        assert!(!bearer_matches(&with(&format!("Bearer {token}x")), token), "longer");
        assert!(!bearer_matches(&with("Bearer 0123456789abcdef0123456789abcdeX"), token), "one byte off");
        assert!(!bearer_matches(&with(&format!("Basic {token}")), token), "another scheme");
        assert!(!bearer_matches(&axum::http::HeaderMap::new(), token), "none");
    }

    #[test]
    fn a_short_or_multi_line_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        assert_eq!(read_token(&write("good", "0123456789abcdef0123456789abcdef\n")).unwrap(), "0123456789abcdef0123456789abcdef");
        assert!(read_token(&write("short", "secret\n")).is_err());
        assert!(read_token(&write("two", "0123456789abcdef\n0123456789abcdef0123\n")).is_err());
        assert!(read_token(&dir.path().join("missing")).is_err());
    }
}

fn task_job_id(task_id: &str) -> Result<Uuid, ErrorData> {
    Uuid::parse_str(task_id).map_err(|_| ErrorData::invalid_params(format!("task id {task_id:?} is not a job id"), None))
}

/// A task request's failure as a JSON-RPC error carrying the tool error body.
fn protocol_error(e: ToolError) -> ErrorData {
    ErrorData::invalid_params(e.message.clone(), Some(e.body()))
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
    /// HTTP: a file holding the bearer token every request must carry
    /// (`Authorization: Bearer <token>`). Required to serve on anything but
    /// a loopback address: whoever reaches the server acts as the agent.
    #[arg(long, env = "ORFEAS_MCP_HTTP_TOKEN_FILE")]
    pub http_token_file: Option<std::path::PathBuf>,
    /// HTTP: a host name clients may use in `Host` besides the loopback
    /// names (repeat for several; guards against DNS rebinding).
    #[arg(long = "allowed-host")]
    pub allowed_hosts: Vec<String>,
    /// The only directory `image_path` may lead into (after symlinks and
    /// `..`; relative paths are relative to it). Without it an HTTP server
    /// reads no local files, a stdio one any its user can.
    #[arg(long)]
    pub image_dir: Option<std::path::PathBuf>,
}

/// The bearer token of `--http-token-file`: one line, at least 32
/// characters (a guessable token is no lock).
fn read_token(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the MCP token file {}", path.display()))?;
    let token = text.trim().to_string();
    if token.len() < 32 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        anyhow::bail!("the MCP token in {} must be one line of at least 32 visible characters (e.g. `openssl rand -hex 32`)", path.display());
    }
    Ok(token)
}

/// Whether `headers` carry `Authorization: Bearer <token>` (compared in
/// constant time, so the token cannot be guessed byte by byte).
fn bearer_matches(headers: &axum::http::HeaderMap, token: &str) -> bool {
    let Some(given) = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")) else {
        return false;
    };
    given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Run the server until stdin closes (stdio) or SIGTERM / Ctrl-C (HTTP).
pub async fn run(config: &crate::config::Config, args: &McpArgs, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<()> {
    use rmcp::ServiceExt;
    let url = crate::nats_url(config, &args.agent.nats)?;
    let nats = orfeas_actors::bus::connect(&url, &format!("orfeas-mcp-{}", args.agent.agent)).await?;
    let client = args.agent.client(config).await?;
    let paths = PathPolicy::new(args.http.is_some(), args.image_dir.as_deref())?;
    let server = OrfeasMcp::new(&args.agent.agent, client, nats, Duration::from_secs(args.wait_timeout_s), paths);
    match &args.http {
        None => {
            let running = server.serve(rmcp::transport::stdio()).await.context("starting the MCP server on stdio")?;
            running.waiting().await.context("MCP stdio session")?;
        }
        Some(bind) => {
            use rmcp::transport::streamable_http_server::{session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService};
            let token = args.http_token_file.as_deref().map(read_token).transpose()?;
            let listener = tokio::net::TcpListener::bind(bind).await.with_context(|| format!("binding {bind}"))?;
            let local = listener.local_addr()?;
            if !local.ip().is_loopback() && token.is_none() {
                anyhow::bail!("serving MCP on {local} without --http-token-file would let anyone who reaches it act as agent {:?}; give a token file, or bind 127.0.0.1", args.agent.agent);
            }
            let mut hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
            hosts.extend(args.allowed_hosts.iter().cloned());
            let config = StreamableHttpServerConfig::default().with_allowed_hosts(hosts);
            let service: StreamableHttpService<OrfeasMcp, LocalSessionManager> = StreamableHttpService::new(move || Ok(server.clone()), Default::default(), config);
            let mut router = axum::Router::new().nest_service("/mcp", service);
            if let Some(token) = token {
                let token = std::sync::Arc::new(token);
                router = router.layer(axum::middleware::from_fn(move |request: axum::extract::Request, next: axum::middleware::Next| {
                    let token = token.clone();
                    async move {
                        if bearer_matches(request.headers(), &token) {
                            next.run(request).await
                        } else {
                            let mut refused = axum::response::Response::new(axum::body::Body::from("a bearer token is required (Authorization: Bearer <token>)\n"));
                            *refused.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
                            refused.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
                            refused
                        }
                    }
                }));
            }
            eprintln!("orfeas mcp listening on http://{local}/mcp");
            axum::serve(listener, router).with_graceful_shutdown(shutdown).await?;
        }
    }
    Ok(())
}
