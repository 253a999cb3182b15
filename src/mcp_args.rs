//! The MCP tools' arguments: JSON schemas shown to the model, and checks
//! that turn bad values into one clear sentence (validated at the edge,
//! before anything is signed or sent).

use std::{path::Path, sync::Arc};

use base64::Engine;
use orfeas_wire::v1::{Format, Lane, MAX_REF_IMAGE_BYTES, MAX_REF_KEY_BYTES, MAX_SIZE_MM, MAX_TARGET_FACES, MIN_TARGET_FACES};
use rmcp::model::{JsonObject, Tool};
use serde::Deserialize;
use serde_json::json;

use crate::{mcp_error::ToolError, mcp_path::PathPolicy};

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
    /// An image uploaded earlier with `upload_image` (`<agent>/<name>`).
    pub image_ref: Option<String>,
    pub model: Option<String>,
    pub formats: Option<Vec<String>>,
    pub faces: Option<u32>,
    pub size_mm: Option<f32>,
    pub previews: Option<bool>,
    pub idempotency_key: Option<String>,
    pub wait: Option<bool>,
    /// `high`, `normal` or `low`.
    pub priority: Option<String>,
}

/// Where a `generate_3d` image comes from, once checked.
#[derive(Debug)]
pub enum ImageSource {
    /// Bytes read from a path or decoded from base64, with their sniffed media type.
    Bytes { data: Vec<u8>, media_type: String },
    /// An object in the uploads bucket, by key.
    Ref(String),
}

impl GenerateArgs {
    /// The image, from exactly one of `image_path`, `image_base64` and
    /// `image_ref` (a reference must be one of `agent`'s own uploads).
    /// A path is read as `paths` allows (src/mcp_path.rs).
    pub fn image(&self, agent: &str, paths: &PathPolicy) -> Result<ImageSource, ToolError> {
        let (data, name) = match (&self.image_path, &self.image_base64, &self.image_ref) {
            (Some(path), None, None) => (paths.read(path)?, path.clone()),
            (None, Some(b64), None) => (decode_base64(b64)?, "image_base64".to_string()),
            (None, None, Some(key)) => return Ok(image_ref(agent, key).map(ImageSource::Ref)?),
            (None, None, None) => return Err(ArgError("an image is required: image_path, image_base64 or image_ref".into()).into()),
            _ => return Err(ArgError("give one of image_path, image_base64 and image_ref, not several".into()).into()),
        };
        let media_type = crate::agent::media_type(&data, Path::new(&name)).map_err(|e| ArgError(e.to_string()))?;
        Ok(ImageSource::Bytes { data, media_type: media_type.to_string() })
    }

    /// The lane asked for, if any.
    pub fn priority(&self) -> Result<Option<Lane>, ArgError> {
        self.priority.as_deref().map(|p| Lane::parse(p).ok_or_else(|| ArgError(format!("unknown priority {p:?} (high, normal, low)")))).transpose()
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

/// `upload_image`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadArgs {
    /// The image's bytes, base64.
    pub image_base64: String,
    /// Object name under the agent's prefix; default `<sha256>.<ext>`.
    pub name: Option<String>,
}

impl UploadArgs {
    /// The bytes, their media type and the object name to store them as.
    pub fn checked(&self) -> Result<(Vec<u8>, &'static str, String), ArgError> {
        let data = decode_base64(&self.image_base64)?;
        if data.len() as u64 > MAX_REF_IMAGE_BYTES {
            return Err(ArgError(format!("image of {} bytes exceeds the by-reference cap of {MAX_REF_IMAGE_BYTES} bytes", data.len())));
        }
        let media_type = crate::agent::media_type(&data, Path::new("image_base64")).map_err(|e| ArgError(e.to_string()))?;
        let extension = media_type.strip_prefix("image/").unwrap_or("img");
        let name = match &self.name {
            Some(name) => {
                if name.is_empty() || name.len() > 200 || name.starts_with('.') || name.contains(['/', '\\']) || name.chars().any(char::is_control) {
                    return Err(ArgError(format!("name {name:?} is not a plain file name (1..=200 bytes, no '/', not starting with '.')")));
                }
                name.clone()
            }
            None => {
                use sha2::Digest;
                format!("{}.{extension}", hex::encode(sha2::Sha256::digest(&data)))
            }
        };
        Ok((data, media_type, name))
    }
}

fn decode_base64(b64: &str) -> Result<Vec<u8>, ArgError> {
    if b64.trim_start().starts_with("data:") {
        return Err(ArgError("image_base64 is a data: URL; send only the base64 after the comma".into()));
    }
    let data = base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|e| ArgError(format!("image_base64 is not base64: {e}")))?;
    if data.is_empty() {
        return Err(ArgError("image_base64 is empty".into()));
    }
    Ok(data)
}

/// An `image_ref` argument: a key under `agent`'s own upload prefix.
fn image_ref(agent: &str, key: &str) -> Result<String, ArgError> {
    let prefix = format!("{agent}/");
    let rest = key.strip_prefix(&prefix).ok_or_else(|| ArgError(format!("image_ref {key:?} is not one of this agent's uploads ({prefix}<name>, as upload_image returns)")))?;
    if rest.is_empty() || key.len() > MAX_REF_KEY_BYTES || rest.split('/').any(|p| p.is_empty() || p == "." || p == "..") || key.chars().any(|c| c.is_control() || c == '\\') {
        return Err(ArgError(format!("image_ref {key:?} is not a plain upload key")));
    }
    Ok(key.to_string())
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
            "Turn one image into a printable 3D model. Give the image as image_path, image_base64 or image_ref (from upload_image). Returns the job (or, for clients with MCP tasks, a task whose id is the job id). The same idempotency_key always names the same job, so a retry never makes a second one. The result echoes every parameter applied, defaults included.",
            schema(json!({
                "type": "object",
                "properties": {
                    "image_path": {"type": "string", "description": "PNG, JPEG or WebP file on the server's machine (a regular file, up to 32 MiB; over HTTP only inside the server's --image-dir, relative to it)."},
                    "image_base64": {"type": "string", "description": "The image bytes, base64 (no data: URL). Large images are uploaded to the deployment's store and sent by reference."},
                    "image_ref": {"type": "string", "description": "An image uploaded earlier with upload_image (its image_ref, <agent>/<name>)."},
                    "model": {"type": "string", "description": "Model name (list_models); default inflate."},
                    "formats": {"type": "array", "items": {"type": "string", "enum": ["glb", "stl", "obj", "ply", "3mf"]}, "description": "Output formats; default [glb]."},
                    "faces": {"type": "integer", "minimum": MIN_TARGET_FACES, "maximum": MAX_TARGET_FACES, "description": "Decimate to about this many triangles; default none."},
                    "size_mm": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_SIZE_MM, "description": "Longest side of the printed part, millimetres; default 1 unit = 1 mm."},
                    "previews": {"type": "boolean", "description": "Render four shaded previews; default true."},
                    "idempotency_key": {"type": "string", "description": "Your key for this request; retries with it return the same job."},
                    "priority": {"type": "string", "enum": ["high", "normal", "low"], "description": "Queue lane; default the agent's own. A job can ask for its agent's lane or a lower one, never a higher one."},
                    "wait": {"type": "boolean", "description": "Wait for the job to end (default true, with progress notifications; a tasks client gets a task instead) or return the job id at once."}
                },
                "additionalProperties": false
            })),
        ),
        Tool::new(
            "upload_image",
            "Upload an image (base64) to the deployment's uploads store once; returns an image_ref to pass to generate_3d as often as needed (its SHA-256 and size are signed into each job).",
            schema(json!({
                "type": "object",
                "properties": {
                    "image_base64": {"type": "string", "description": "PNG, JPEG or WebP bytes, base64 (no data: URL), up to 32 MiB."},
                    "name": {"type": "string", "description": "Object name under this agent's prefix; default <sha256>.<ext>."}
                },
                "required": ["image_base64"],
                "additionalProperties": false
            })),
        ),
        Tool::new("get_job", "State of a job: state (admitted, running, completed, failed, canceled), lane, attempt, the latest progress (stage, percent, ETA, queue position), and the terminal event with its error code, status and retryable flag.", schema(job.clone())),
        Tool::new(
            "get_result",
            "A completed job's files (format, location, URL, bytes, sha256), mesh facts, printability report, and its preview renders as images.",
            schema(json!({"type": "object", "properties": {"job_id": {"type": "string"}, "previews": {"type": "boolean", "description": "Return the preview renders as images; default true."}}, "required": ["job_id"], "additionalProperties": false})),
        ),
        Tool::new("cancel_job", "Cancel a job; returns its state after the cancel.", schema(job)),
        Tool::new("list_models", "The models the deployment serves, with their parameters.", schema(json!({"type": "object", "properties": {}, "additionalProperties": false}))),
    ]
}
