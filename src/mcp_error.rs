//! The MCP server's tool errors: one shape, `{code, status, retryable,
//! message, job_id}`, returned as an `isError` tool result (a tool never
//! crashes the server). A node's refusal keeps the protocol's own stable
//! code; failures of the server's own making use [`Code`].

use orfeas_wire::{client::ClientError, v1::Failure};
use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::{json, Value};
use uuid::Uuid;

/// The MCP server's own stable codes (md/mcp.md, *Errors*). Never rename
/// one; add new ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// A bad argument: missing, malformed, out of range, unknown name.
    InvalidArgument,
    /// An `image_ref` that is not in the uploads store.
    InputMissing,
    /// An `image_path` this server may not read: over HTTP without
    /// `--image-dir`, or resolving outside it.
    PathNotAllowed,
    /// An `image_path` that is not a regular file (directory, FIFO, device, …).
    NotAFile,
    /// An `image_path` file over the image size cap.
    TooLarge,
    /// The job has not finished yet (its result was asked for too early).
    NotReady,
    /// A waited call ran out of `--wait-timeout-s`.
    Timeout,
    /// No node answered, or NATS is down.
    Unavailable,
    /// An answer whose signature did not verify.
    Unverified,
    /// Something inside the MCP server broke.
    Internal,
}

impl Code {
    /// The stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::InputMissing => "input_missing",
            Self::PathNotAllowed => "path_not_allowed",
            Self::NotAFile => "not_a_file",
            Self::TooLarge => "too_large",
            Self::NotReady => "not_ready",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Unverified => "unverified",
            Self::Internal => "internal",
        }
    }

    /// The HTTP-like status.
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidArgument => 400,
            Self::InputMissing => 404,
            Self::PathNotAllowed => 403,
            Self::NotAFile => 400,
            Self::TooLarge => 413,
            Self::NotReady => 409,
            Self::Timeout => 504,
            Self::Unavailable => 503,
            Self::Unverified => 502,
            Self::Internal => 500,
        }
    }

    /// Whether the same call may succeed later. A bad argument or a missing
    /// upload (or a path the server may not read, or a file too large)
    /// stays so until the caller changes something.
    pub fn retryable(self) -> bool {
        !matches!(self, Self::InvalidArgument | Self::InputMissing | Self::PathNotAllowed | Self::NotAFile | Self::TooLarge)
    }
}

/// A tool's failure.
#[derive(Debug, Clone)]
pub struct ToolError {
    pub code: String,
    pub status: u16,
    pub retryable: bool,
    pub message: String,
    pub job_id: Option<Uuid>,
}

impl ToolError {
    /// An error with one of the server's own codes.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code: code.as_str().into(), status: code.status(), retryable: code.retryable(), message: message.into(), job_id: None }
    }

    /// `invalid_argument`.
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// The same error, naming the job it is about.
    pub fn with_job(mut self, job_id: Uuid) -> Self {
        self.job_id = Some(job_id);
        self
    }

    /// A node's refusal or a job's failure, with the protocol's code.
    pub fn node(f: Failure) -> Self {
        Self { code: f.code.to_string(), status: f.status, retryable: f.retryable, message: f.error, job_id: f.job_id }
    }

    /// `{"error": {...}}`
    pub fn body(&self) -> Value {
        json!({"error": {"code": self.code, "status": self.status, "retryable": self.retryable, "message": self.message, "job_id": self.job_id}})
    }

    /// The `isError` tool result carrying [`body`](Self::body) as JSON and as text.
    pub fn result(&self) -> CallToolResult {
        let body = self.body();
        let mut result = CallToolResult::error(vec![ContentBlock::text(body.to_string())]);
        result.structured_content = Some(body);
        result
    }
}

impl From<ClientError> for ToolError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Refused(f) => Self::node(f),
            ClientError::Timeout(_) | ClientError::Nats(_) => Self::new(Code::Unavailable, e.to_string()),
            ClientError::Unverified(_) => Self::new(Code::Unverified, e.to_string()),
        }
    }
}

impl From<crate::mcp_args::ArgError> for ToolError {
    fn from(e: crate::mcp_args::ArgError) -> Self {
        Self::bad(e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_only_caller_mistakes_are_final() {
        let all = [Code::InvalidArgument, Code::InputMissing, Code::PathNotAllowed, Code::NotAFile, Code::TooLarge, Code::NotReady, Code::Timeout, Code::Unavailable, Code::Unverified, Code::Internal];
        let names: Vec<_> = all.iter().map(|c| (c.as_str(), c.status(), c.retryable())).collect();
        assert_eq!(
            names,
            [
                ("invalid_argument", 400, false),
                ("input_missing", 404, false),
                ("path_not_allowed", 403, false),
                ("not_a_file", 400, false),
                ("too_large", 413, false),
                ("not_ready", 409, true),
                ("timeout", 504, true),
                ("unavailable", 503, true),
                ("unverified", 502, true),
                ("internal", 500, true)
            ]
        );
        let e = ToolError::new(Code::NotReady, "job x is running").with_job(Uuid::nil());
        assert_eq!(e.result().is_error, Some(true));
        assert_eq!(e.body()["error"]["code"], "not_ready");
        assert_eq!(e.body()["error"]["job_id"], Uuid::nil().to_string());
    }
}
