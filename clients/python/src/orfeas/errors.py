"""One exception hierarchy for everything the client can raise.

Every exception carries a stable `code`: the protocol's own code for a
node's refusal or a failed job (md/protocol.md, "Rejections and failures:
one shape"), or one of the client's codes for what happened on this side:

| code | status | retryable | meaning |
|---|---|---|---|
| `unverified` | 502 | no | an answer's signature, envelope or content did not verify |
| `timeout` | 504 | yes | no answer in time (the job, if submitted, is durable: wait again) |
| `transport` | 503 | yes | NATS refused or lost the request (no responders, connection closed) |
| `invalid_argument` | 400 | no | a bad argument, caught before anything was signed or sent |

Branch on `code` (or on the class); `str(e)` is for people.
"""
from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .types import Failure

# The protocol's codes: status and whether the same request may succeed later.
WIRE_CODES: dict[str, tuple[int, bool]] = {
    "malformed": (422, False),
    "unknown_key": (401, False),
    "revoked_key": (401, False),
    "bad_signature": (401, False),
    "stale": (401, True),
    "replayed": (401, False),
    "forbidden": (403, False),
    "not_found": (404, False),
    "deadline_exceeded": (408, False),
    "conflict": (409, False),
    "canceled": (409, False),
    "too_large": (413, False),
    "invalid": (422, False),
    "unknown_model": (422, False),
    "invalid_image": (422, False),
    "input_mismatch": (422, False),
    "input_missing": (404, False),
    "rate_limited": (429, True),
    "concurrency_limit": (429, True),
    "inference_failed": (500, False),
    "mesh_failed": (500, False),
    "internal": (500, True),
    "dead_lettered": (500, False),
    "unavailable": (503, True),
    "storage_failed": (503, True),
    "gpu_oom": (503, True),
}


class OrfeasError(Exception):
    """Base of every error the client raises."""

    code: str = "internal"
    status: int = 500
    retryable: bool = False

    def __init__(self, message: str, *, code: Optional[str] = None, status: Optional[int] = None,
                 retryable: Optional[bool] = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidArgumentError(OrfeasError, ValueError):
    """A bad argument, refused before anything was signed or sent."""

    code, status, retryable = "invalid_argument", 400, False


class UnverifiedError(OrfeasError):
    """An answer that is not provably from the deployment: bad signature,
    unknown node, wrong key id, audience or nonce, malformed envelope, or a
    file whose bytes differ from the signed manifest's SHA-256."""

    code, status, retryable = "unverified", 502, False


class OrfeasTimeoutError(OrfeasError, builtins.TimeoutError):
    """No answer in time."""

    code, status, retryable = "timeout", 504, True


class TransportError(OrfeasError):
    """NATS could not carry the request (no responders, closed connection)."""

    code, status, retryable = "transport", 503, True


class NodeError(OrfeasError):
    """A node's answer carrying a protocol `Failure`: a refused message
    (`kind` "rejected"), a failed job ("failed") or an error reply to a
    status, cancel or fetch request ("reply")."""

    def __init__(self, failure: "Failure", kind: str) -> None:
        super().__init__(failure.error, code=failure.code, status=failure.status, retryable=failure.retryable)
        self.failure = failure
        self.kind = kind
        self.retry_after_ms = failure.retry_after_ms
        self.server_time_ms = failure.server_time_ms
        self.job_id = failure.job_id


class AuthenticationError(NodeError):
    """401: `unknown_key`, `revoked_key`, `bad_signature`, `stale`, `replayed`."""


class ForbiddenError(NodeError):
    """403: `forbidden`."""


class NotFoundError(NodeError):
    """404: `not_found`, `input_missing`."""


class DeadlineExceededError(NodeError):
    """408: `deadline_exceeded`."""


class ConflictError(NodeError):
    """409: `conflict` (a job id reused with another request)."""


class CanceledError(ConflictError):
    """409: `canceled` (the job was canceled by its agent)."""


class TooLargeError(NodeError):
    """413: `too_large`."""


class InvalidRequestError(NodeError):
    """422: `malformed`, `invalid`, `unknown_model`, `invalid_image`, `input_mismatch`."""


class RateLimitedError(NodeError):
    """429: `rate_limited`, `concurrency_limit` (see `retry_after_ms`)."""


class JobFailedError(NodeError):
    """500: the model, the mesher or the node failed (`inference_failed`,
    `mesh_failed`, `internal`, `dead_lettered`)."""


class UnavailableError(NodeError):
    """503: `unavailable`, `storage_failed`, `gpu_oom` (retryable)."""


_BY_CODE: dict[str, type[NodeError]] = {"canceled": CanceledError}
_BY_STATUS: dict[int, type[NodeError]] = {
    401: AuthenticationError,
    403: ForbiddenError,
    404: NotFoundError,
    408: DeadlineExceededError,
    409: ConflictError,
    413: TooLargeError,
    422: InvalidRequestError,
    429: RateLimitedError,
    500: JobFailedError,
    503: UnavailableError,
}


def node_error(failure: "Failure", kind: str) -> NodeError:
    """The exception for a node's `Failure` (class by code, then by status)."""
    cls = _BY_CODE.get(failure.code) or _BY_STATUS.get(failure.status, NodeError)
    return cls(failure, kind)
