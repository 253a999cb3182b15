//! Stable error codes: the same string goes on the wire, into logs and into
//! metric labels. Never rename one; add new ones.

use serde::{Deserialize, Serialize};

/// Why a message was rejected or a job failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The envelope could not be decoded (not COSE_Sign1, bad CBOR, missing headers).
    Malformed,
    /// No active key for the issuer / key id.
    UnknownKey,
    /// Signature did not verify over the received bytes.
    BadSignature,
    /// The message is outside its validity window (`iat`/`exp`).
    Stale,
    /// Issuer does not match the subject the message arrived on, or wrong audience.
    Forbidden,
    /// The message is larger than the cap.
    TooLarge,
    /// The payload decoded but a field is invalid.
    Invalid,
    /// The requested model is not served here.
    UnknownModel,
    /// The image could not be decoded or is outside the limits.
    InvalidImage,
    /// Same job_id was submitted before with a different request.
    Conflict,
    /// The system is full; retry later.
    Unavailable,
    /// The model failed while running.
    InferenceFailed,
    /// The volume could not be turned into a valid mesh.
    MeshFailed,
    /// Results could not be stored.
    StorageFailed,
    /// Something inside the node broke.
    Internal,
    /// The device ran out of memory even for this job alone (after the
    /// batch was split down to one job); another node or a later try may fit.
    GpuOom,
    /// No such job of this agent, or it has no results (fetch).
    NotFound,
    /// Over the agent's request rate (or the node's pre-auth rate); see `retry_after_ms`.
    RateLimited,
    /// The agent already has its maximum number of unfinished jobs.
    ConcurrencyLimit,
    /// The message's nonce (`cti`) was seen before inside its validity window.
    Replayed,
    /// The key is revoked: nothing signed with it is accepted, ever.
    RevokedKey,
    /// The job was canceled by its agent.
    Canceled,
    /// The job's deadline passed before it could run.
    DeadlineExceeded,
    /// The job failed on every allowed delivery attempt and was dead-lettered.
    DeadLettered,
    /// An image submitted by reference does not match its signed size or sha256.
    InputMismatch,
    /// An image submitted by reference is not in its store.
    InputMissing,
}

impl ErrorCode {
    /// The stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Stale => "stale",
            Self::Forbidden => "forbidden",
            Self::TooLarge => "too_large",
            Self::Invalid => "invalid",
            Self::UnknownModel => "unknown_model",
            Self::InvalidImage => "invalid_image",
            Self::Conflict => "conflict",
            Self::Unavailable => "unavailable",
            Self::InferenceFailed => "inference_failed",
            Self::MeshFailed => "mesh_failed",
            Self::StorageFailed => "storage_failed",
            Self::Internal => "internal",
            Self::GpuOom => "gpu_oom",
            Self::NotFound => "not_found",
            Self::RateLimited => "rate_limited",
            Self::ConcurrencyLimit => "concurrency_limit",
            Self::Replayed => "replayed",
            Self::RevokedKey => "revoked_key",
            Self::Canceled => "canceled",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::DeadLettered => "dead_lettered",
            Self::InputMismatch => "input_mismatch",
            Self::InputMissing => "input_missing",
        }
    }

    /// The HTTP-like status class agents can branch on.
    pub fn status(self) -> u16 {
        match self {
            Self::UnknownKey | Self::BadSignature | Self::Stale | Self::Replayed | Self::RevokedKey => 401,
            Self::RateLimited | Self::ConcurrencyLimit => 429,
            Self::Canceled => 409,
            Self::DeadlineExceeded => 408,
            Self::DeadLettered => 500,
            Self::Forbidden => 403,
            Self::NotFound | Self::InputMissing => 404,
            Self::Conflict => 409,
            Self::TooLarge => 413,
            Self::Malformed | Self::Invalid | Self::UnknownModel | Self::InvalidImage | Self::InputMismatch => 422,
            Self::Unavailable | Self::StorageFailed | Self::GpuOom => 503,
            Self::InferenceFailed | Self::MeshFailed | Self::Internal => 500,
        }
    }

    /// Whether the same request may succeed if sent again later.
    pub fn retryable(self) -> bool {
        matches!(self, Self::Unavailable | Self::StorageFailed | Self::Internal | Self::Stale | Self::GpuOom | Self::RateLimited | Self::ConcurrencyLimit)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_stable_names() {
        for code in [ErrorCode::BadSignature, ErrorCode::InvalidImage, ErrorCode::StorageFailed, ErrorCode::GpuOom] {
            let bytes = crate::to_cbor(&code);
            let text: String = crate::from_cbor(&bytes).unwrap();
            assert_eq!(text, code.as_str());
        }
    }

    #[test]
    fn input_codes_are_final() {
        assert_eq!((ErrorCode::InputMismatch.as_str(), ErrorCode::InputMismatch.status(), ErrorCode::InputMismatch.retryable()), ("input_mismatch", 422, false));
        assert_eq!((ErrorCode::InputMissing.as_str(), ErrorCode::InputMissing.status(), ErrorCode::InputMissing.retryable()), ("input_missing", 404, false));
        let text: String = crate::from_cbor(&crate::to_cbor(&ErrorCode::InputMissing)).unwrap();
        assert_eq!(text, "input_missing");
    }

    #[test]
    fn gpu_oom_is_a_retryable_503() {
        assert_eq!(ErrorCode::GpuOom.as_str(), "gpu_oom");
        assert_eq!(ErrorCode::GpuOom.status(), 503);
        assert!(ErrorCode::GpuOom.retryable());
    }
}
