//! The MCP tools' arguments: JSON schemas shown to the model, and checks
//! that turn bad values into one clear sentence (validated at the edge,
//! before anything is signed or sent).

use std::{path::Path, sync::Arc};

use base64::Engine;
use orfeas_wire::v1::{Format, MAX_SIZE_MM, MAX_TARGET_FACES, MIN_TARGET_FACES};
use rmcp::model::{JsonObject, Tool};
use serde::Deserialize;
use serde_json::json;

/// The model used when a call names none.
pub const DEFAULT_MODEL: &str = "inflate";

/// A bad argument, in one sentence.
#[derive(Debug)]
pub struct ArgError(pub String);

/// `generate_3d`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateArgs {
    /// A PNG, JPEG or WebP file on the server's machine.
    pub image_path: Option<String>,
    /// The image's bytes, base64.
    pub image_base64: Option<String>,
    pub model: Option<String>,
    pub formats: Option<Vec<String>>,
    pub faces: Option<u32>,
    pub size_mm: Option<f32>,
    pub previews: Option<bool>,
    pub idempotency_key: Option<String>,
    pub wait: Option<bool>,
}

impl GenerateArgs {
    /// The image's bytes and media type (sniffed from the bytes).
    pub fn image_bytes(&self) -> Result<(Vec<u8>, String), ArgError> {
        let (data, name) = match (&self.image_path, &self.image_base64) {
            (Some(path), None) => (std::fs::read(path).map_err(|e| ArgError(format!("image_path {path:?} cannot be read: {e}")))?, path.clone()),
            (None, Some(b64)) => (
                base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|e| ArgError(format!("image_base64 is not base64: {e}")))?,
                "image_base64".to_string(),
            ),
            (Some(_), Some(_)) => return Err(ArgError("give image_path or image_base64, not both".into())),
            (None, None) => return Err(ArgError("an image is required: image_path or image_base64".into())),
        };
        let media_type = crate::agent::media_type(&data, Path::new(&name)).map_err(|e| ArgError(e.to_string()))?;
        Ok((data, media_type.to_string()))
    }

    pub fn model(&self) -> &str {
        self.model.as_deref().unwrap_or(DEFAULT_MODEL)
    }

    /// Formats, checked here so a typo is a tool error, not a rejected job.
    pub fn formats(&self) -> Result<Vec<Format>, ArgError> {
        if let Some(faces) = self.faces {
            if !(MIN_TARGET_FACES..=MAX_TARGET_FACES).contains(&faces) {
                return Err(ArgError(format!("faces {faces} is outside {MIN_TARGET_FACES}..={MAX_TARGET_FACES}")));
            }
        }
        if let Some(size) = self.size_mm {
            if !(size > 0.0 && size <= MAX_SIZE_MM) {
                return Err(ArgError(format!("size_mm {size} is outside (0, {MAX_SIZE_MM}]")));
            }
        }
        let names = self.formats.clone().unwrap_or_else(|| vec!["glb".into()]);
        if names.is_empty() {
            return Err(ArgError("formats is empty (glb, stl, obj, ply, 3mf)".into()));
        }
        names.iter().map(|n| Format::parse(n).ok_or_else(|| ArgError(format!("unknown format {n:?} (glb, stl, obj, ply, 3mf)")))).collect()
    }
}

/// `get_job`, `cancel_job`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobArg {
    pub job_id: String,
}

/// `get_result`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultArg {
    pub job_id: String,
    pub previews: Option<bool>,
}

/// A job id argument.
pub fn job_id(text: &str) -> Result<uuid::Uuid, ArgError> {
    uuid::Uuid::parse_str(text.trim()).map_err(|_| ArgError(format!("job_id {text:?} is not a UUID")))
}

fn schema(value: serde_json::Value) -> Arc<JsonObject> {
    match value {
        serde_json::Value::Object(map) => Arc::new(map),
        _ => Arc::new(JsonObject::new()),
    }
}

/// The tools this server offers.
pub fn tools() -> Vec<Tool> {
    let job = json!({"type": "object", "properties": {"job_id": {"type": "string", "description": "The job id generate_3d returned."}}, "required": ["job_id"], "additionalProperties": false});
    vec![
        Tool::new(
            "generate_3d",
            "Turn one image into a printable 3D model. Returns the job (or, for clients with MCP tasks, a task whose id is the job id). The same idempotency_key always names the same job, so a retry never makes a second one. The result echoes every parameter applied, defaults included.",
            schema(json!({
                "type": "object",
                "properties": {
                    "image_path": {"type": "string", "description": "PNG, JPEG or WebP file readable by the server."},
                    "image_base64": {"type": "string", "description": "The image bytes, base64 (no data: URL). Large images are uploaded to the deployment's store and sent by reference."},
                    "model": {"type": "string", "description": "Model name (list_models); default inflate."},
                    "formats": {"type": "array", "items": {"type": "string", "enum": ["glb", "stl", "obj", "ply", "3mf"]}, "description": "Output formats; default [glb]."},
                    "faces": {"type": "integer", "minimum": MIN_TARGET_FACES, "maximum": MAX_TARGET_FACES, "description": "Decimate to about this many triangles; default none."},
                    "size_mm": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_SIZE_MM, "description": "Longest side of the printed part, millimetres; default 1 unit = 1 mm."},
                    "previews": {"type": "boolean", "description": "Render four shaded previews; default true."},
                    "idempotency_key": {"type": "string", "description": "Your key for this request; retries with it return the same job."},
                    "wait": {"type": "boolean", "description": "Without tasks: wait for the job to end (default true, with progress notifications) or return at once."}
                },
                "additionalProperties": false
            })),
        ),
        Tool::new("get_job", "State of a job: state (admitted, running, completed, failed, canceled), lane, attempt, and the terminal event with its error code, status and retryable flag.", schema(job.clone())),
        Tool::new(
            "get_result",
            "A completed job's files (format, location, URL, bytes, sha256), mesh facts, printability report, and its preview renders as images.",
            schema(json!({"type": "object", "properties": {"job_id": {"type": "string"}, "previews": {"type": "boolean", "description": "Return the preview renders as images; default true."}}, "required": ["job_id"], "additionalProperties": false})),
        ),
        Tool::new("cancel_job", "Cancel a job; returns its state after the cancel.", schema(job)),
        Tool::new("list_models", "The models the deployment serves, with their parameters.", schema(json!({"type": "object", "properties": {}, "additionalProperties": false}))),
    ]
}
