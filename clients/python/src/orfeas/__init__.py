"""orfeas: a typed client for signed image-to-3D jobs over NATS JetStream.

`Client` (asyncio, nats-py) and `SyncClient` (blocking) act as one
registered agent: they sign every request with the agent's Ed25519 key
(COSE_Sign1, md/protocol.md) and verify every event and reply against the
node keys in the deployment's `orfeas_nodes` bucket. Errors are
`OrfeasError`s with the protocol's stable `code`, `status`, `retryable`.
"""
from .client import (IDEMPOTENCY_NAMESPACE, MAX_INLINE_IMAGE_BYTES, Client, ImageRef, Job, job_id_for, load_key,
                     media_type)
from .errors import (AuthenticationError, CanceledError, ConflictError, DeadlineExceededError, ForbiddenError,
                     InvalidArgumentError, InvalidRequestError, JobFailedError, NodeError, NotFoundError, OrfeasError,
                     OrfeasTimeoutError, RateLimitedError, TooLargeError, TransportError, UnavailableError,
                     UnverifiedError)
from .sync import SyncClient
from .types import (Accepted, Completed, Event, Failed, Failure, Fetched, FetchedFile, JobParams, JobStatus, MeshStats,
                    ModelInfo, Preview, PrintReport, Progress, Rejected, ResultFile)

__version__ = "0.1.0"

__all__ = [
    "Client", "SyncClient", "Job", "ImageRef", "JobParams", "job_id_for", "load_key", "media_type",
    "IDEMPOTENCY_NAMESPACE", "MAX_INLINE_IMAGE_BYTES",
    "Event", "Accepted", "Progress", "Completed", "Failed", "Rejected", "Failure", "JobStatus", "ModelInfo",
    "MeshStats", "PrintReport", "Preview", "ResultFile", "Fetched", "FetchedFile",
    "OrfeasError", "InvalidArgumentError", "UnverifiedError", "OrfeasTimeoutError", "TransportError", "NodeError",
    "AuthenticationError", "ForbiddenError", "NotFoundError", "DeadlineExceededError", "ConflictError",
    "CanceledError", "TooLargeError", "InvalidRequestError", "RateLimitedError", "JobFailedError",
    "UnavailableError",
]
