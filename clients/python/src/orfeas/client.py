"""The asynchronous client (nats-py): one registered agent, its key in this
process, every answer verified before it is returned.

    async with await Client.connect("nats://127.0.0.1:4222", "alice", key="alice.key") as client:
        job = await client.submit("mug.png", formats=["glb", "stl"], params=JobParams(size_mm=80))
        async for event in client.events(job):
            print(event.name, event.kind)
        done = await client.wait(job)               # Completed, or raises NodeError
        fetched = await client.fetch(job, "out/")   # files checked against the signed SHA-256

Events and the manifest are COSE_Sign1 envelopes signed by a node; status
and cancel replies carry the node's detached signature in the
`Orfeas-Signature` header. Both are checked against the node's key from
the `orfeas_nodes` bucket (md/protocol.md); anything that fails raises
`UnverifiedError` and is never returned.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Optional, Union

import cbor2
import nacl.signing
import nats
import nats.errors
import nats.js.errors

from . import cose
from .errors import (InvalidArgumentError, NodeError, OrfeasError, OrfeasTimeoutError, TransportError, UnverifiedError,
                     node_error)
from .types import (FORMATS, Completed, Event, Failed, Fetched, FetchedFile, Failure, JobParams, JobStatus, ModelInfo,
                    Rejected)

AUDIENCE = "orfeas"
NODES_BUCKET = "orfeas_nodes"
UPLOADS_BUCKET = "orfeas_uploads"
REPLY_SIGNATURE_HEADER = "Orfeas-Signature"
# Largest inline image (the 8 MiB envelope minus room for the rest); larger
# images go by reference through the uploads bucket.
MAX_INLINE_IMAGE_BYTES = 8 * 1024 * 1024 - 64 * 1024
MAX_REF_IMAGE_BYTES = 32 * 1024 * 1024
MAX_FETCH_CHUNK = 512 * 1024
# Lifetimes of signed messages: submissions 300 s, requests 60 s (clients' convention).
SUBMIT_LIFETIME_S = 300
REQUEST_LIFETIME_S = 60
# Job ids from idempotency keys: UUIDv5 of `agent \0 key` in this namespace,
# the same one `orfeas mcp` uses, so a key names one job whichever door it used.
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f726665-6173-4d43-5000-000000000001")

ImageSource = Union[str, os.PathLike, bytes, "ImageRef"]
JobRef = Union["Job", uuid.UUID, str]


def job_id_for(agent: str, idempotency_key: str) -> uuid.UUID:
    """The job id an idempotency key names for `agent`."""
    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{agent}\0{idempotency_key}")


def load_key(key: Union[str, os.PathLike, bytes, nacl.signing.SigningKey]) -> nacl.signing.SigningKey:
    """A signing key from an `orfeas keys new` file, its text
    (`orfeas-ed25519-secret-v1:<64 hex>`), 64 hex digits or 32 raw bytes."""
    if isinstance(key, nacl.signing.SigningKey):
        return key
    if isinstance(key, bytes):
        if len(key) != 32:
            raise InvalidArgumentError(f"a raw seed is 32 bytes, not {len(key)}")
        return nacl.signing.SigningKey(key)
    text = str(key).strip()
    if not text.startswith("orfeas-ed25519-secret-v1:") and not _is_hex64(text):
        try:
            text = Path(text).read_text().strip()
        except OSError as e:
            raise InvalidArgumentError(f"key file {str(key)!r} cannot be read: {e}") from e
    hex_part = text.split(":", 1)[1] if text.startswith("orfeas-ed25519-secret-v1:") else text
    if not _is_hex64(hex_part):
        raise InvalidArgumentError("not an orfeas secret key (orfeas-ed25519-secret-v1:<64 hex digits>)")
    return nacl.signing.SigningKey(bytes.fromhex(hex_part))


def _is_hex64(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def media_type(data: bytes) -> str:
    """The image's type from its magic bytes (the node checks the same)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise InvalidArgumentError("the image is not a PNG, JPEG or WebP file")


def _job_id(job: JobRef) -> uuid.UUID:
    if isinstance(job, Job):
        return job.job_id
    if isinstance(job, uuid.UUID):
        return job
    try:
        return uuid.UUID(str(job))
    except ValueError as e:
        raise InvalidArgumentError(f"job id {job!r} is not a UUID") from e


@dataclass(frozen=True)
class ImageRef:
    """An image uploaded to the deployment (`upload`): submit it by reference
    as often as needed; its SHA-256 and size are signed with each job."""

    key: str
    media_type: str
    sha256: bytes
    size: int
    store: str = "jetstream"

    def to_cbor(self) -> dict[str, Any]:
        return {"ref": {"media_type": self.media_type, "store": self.store, "key": self.key,
                        "sha256": self.sha256, "size": self.size}}


@dataclass
class Job:
    """A submitted job: its id, what was applied, and the live subscription
    to its events (made before the submission was published)."""

    job_id: uuid.UUID
    model: str
    formats: tuple[str, ...]
    params: JobParams
    idempotency_key: Optional[str] = None
    uploaded: Optional[str] = None
    subscription: Any = field(default=None, repr=False)

    @property
    def applied(self) -> dict[str, Any]:
        """Every parameter the job was submitted with (unset params are the node's defaults)."""
        return {"job_id": str(self.job_id), "model": self.model, "formats": list(self.formats),
                "params": self.params.to_cbor(), "idempotency_key": self.idempotency_key, "uploaded": self.uploaded}


class Client:
    """One agent's asynchronous client. Create with `await Client.connect(...)`."""

    def __init__(self, nc: Any, agent: str, key: nacl.signing.SigningKey, *, audience: str = AUDIENCE,
                 timeout: float = 30.0) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.agent = agent
        self.key = key
        self.audience = audience
        self.timeout = timeout
        self._node_keys: dict[str, nacl.signing.VerifyKey] = {}

    @classmethod
    async def connect(cls, servers: Union[str, list[str]], agent: str, key: Any, *, audience: str = AUDIENCE,
                      timeout: float = 30.0, isolated: bool = False, **nats_options: Any) -> "Client":
        """Connect to NATS as `agent`. `isolated`: the deployment runs the
        isolation config, so replies must come to `_INBOX_<agent>`."""
        signing_key = load_key(key)
        if isolated:
            nats_options.setdefault("inbox_prefix", f"_INBOX_{agent}".encode())
        try:
            nc = await nats.connect(servers, **nats_options)
        except Exception as e:  # nats-py raises several unrelated types
            raise TransportError(f"cannot connect to {servers}: {e}") from e
        return cls(nc, agent, signing_key, audience=audience, timeout=timeout)

    async def close(self) -> None:
        await self.nc.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- signing and verifying -------------------------------------------------

    def _seal(self, op: str, subject: str, payload: Any, lifetime_s: int, **extra: Any) -> bytes:
        return cose.seal(self.key, self.agent, self.audience, op, subject, cbor2.dumps(payload), lifetime_s, **extra)

    async def node_key(self, node: str, kid: Optional[bytes] = None) -> nacl.signing.VerifyKey:
        """The node's key from `orfeas_nodes` (read again when `kid` differs: a rotated key)."""
        cached = self._node_keys.get(node)
        if cached is not None and (kid is None or cose.key_id(bytes(cached)) == kid):
            return cached
        try:
            kv = await self.js.key_value(NODES_BUCKET)
            entry = await kv.get(node)
        except nats.js.errors.KeyNotFoundError as e:
            raise UnverifiedError(f"node {node!r} is not registered") from e
        except (nats.errors.Error, asyncio.TimeoutError) as e:
            raise TransportError(f"reading node {node!r}'s key: {e}") from e
        try:
            record = cbor2.loads(entry.value)
            verify_key = nacl.signing.VerifyKey(bytes.fromhex(record["public_key"]))
        except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError) as e:
            raise UnverifiedError(f"node {node!r}'s record does not decode: {e}") from e
        self._node_keys[node] = verify_key
        return verify_key

    async def verify_event(self, subject: str, data: bytes) -> Event:
        """A node's signed event received on (or signed for) `subject`."""
        opened = cose.open_envelope(data, "event")
        key = await self.node_key(opened.claims.iss, opened.kid)
        opened.verify(key, subject)
        if opened.claims.aud != self.audience:
            raise UnverifiedError(f"event audience {opened.claims.aud!r} is not {self.audience!r}")
        assert opened.payload is not None
        event = Event.from_cbor(cose.decode_strict(opened.payload))
        if event.node != opened.claims.iss:
            raise UnverifiedError(f"event names node {event.node!r} but was signed by {opened.claims.iss!r}")
        if subject != f"orfeas.events.{self.agent}.{event.job_id}" and not subject.endswith(".>"):
            raise UnverifiedError(f"event of job {event.job_id} arrived on {subject}")
        return event

    async def _verify_reply(self, subject: str, cti: bytes, headers: Optional[dict], body: bytes) -> None:
        signature_hex = (headers or {}).get(REPLY_SIGNATURE_HEADER)
        if not signature_hex:
            raise UnverifiedError(f"reply has no {REPLY_SIGNATURE_HEADER} header")
        try:
            envelope = bytes.fromhex(signature_hex)
        except ValueError as e:
            raise UnverifiedError(f"{REPLY_SIGNATURE_HEADER} is not hex") from e
        opened = cose.open_envelope(envelope, "reply", detached=True)
        key = await self.node_key(opened.claims.iss, opened.kid)
        opened.verify(key, subject, detached=body)
        if opened.claims.cti != cti:
            raise UnverifiedError("reply signed for another request (cti differs)")
        if opened.claims.aud != self.audience:
            raise UnverifiedError(f"reply audience {opened.claims.aud!r} is not {self.audience!r}")

    async def _request(self, subject: str, envelope: bytes, timeout: Optional[float]) -> Any:
        try:
            return await self.nc.request(subject, envelope, timeout=timeout or self.timeout)
        except nats.errors.NoRespondersError as e:
            raise TransportError(f"no node answers on {subject}") from e
        except (nats.errors.TimeoutError, asyncio.TimeoutError) as e:
            raise OrfeasTimeoutError(f"no answer on {subject} within {timeout or self.timeout} s") from e
        except nats.errors.Error as e:
            raise TransportError(f"{subject}: {e}") from e

    # -- the API ---------------------------------------------------------------

    async def upload(self, image: Union[str, os.PathLike, bytes], name: Optional[str] = None) -> ImageRef:
        """Put an image into `orfeas_uploads` as `<agent>/<name>` (default: its SHA-256)."""
        data = _read_image(image)
        kind = media_type(data)
        if len(data) > MAX_REF_IMAGE_BYTES:
            raise InvalidArgumentError(f"image of {len(data)} bytes is over the {MAX_REF_IMAGE_BYTES}-byte cap")
        digest = hashlib.sha256(data).digest()
        name = name or f"{digest.hex()}.{kind.split('/')[1]}"
        key = f"{self.agent}/{name}"
        try:
            store = await self.js.object_store(UPLOADS_BUCKET)
            await store.put(key, data)
        except (nats.errors.Error, asyncio.TimeoutError) as e:
            raise TransportError(f"uploading {key}: {e}") from e
        return ImageRef(key=key, media_type=kind, sha256=digest, size=len(data))

    async def submit(self, image: ImageSource, *, model: str = "inflate", formats: Iterable[str] = ("glb",),
                     params: Optional[JobParams] = None, job_id: Optional[Union[uuid.UUID, str]] = None,
                     idempotency_key: Optional[str] = None, by_reference: Optional[bool] = None) -> Job:
        """Sign and publish a job; returns once JetStream stored it.

        `idempotency_key` (or an explicit `job_id`) makes a retry the same
        job: the node answers with the existing one. Images over the inline
        cap (or with `by_reference=True`) are uploaded first."""
        formats = tuple(formats)
        for f in formats:
            if f not in FORMATS:
                raise InvalidArgumentError(f"unknown format {f!r} ({', '.join(FORMATS)})")
        if not formats:
            raise InvalidArgumentError(f"formats is empty ({', '.join(FORMATS)})")
        params = params or JobParams()
        params.check()
        if job_id is not None and idempotency_key is not None:
            raise InvalidArgumentError("give job_id or idempotency_key, not both")
        if idempotency_key is not None:
            jid = job_id_for(self.agent, idempotency_key)
        elif job_id is not None:
            jid = _job_id(job_id)
        else:
            jid = uuid.uuid7() if hasattr(uuid, "uuid7") else uuid.uuid4()
        uploaded = None
        if isinstance(image, ImageRef):
            image_input, uploaded = image.to_cbor(), image.key
        else:
            data = _read_image(image)
            kind = media_type(data)
            if by_reference or (by_reference is None and len(data) > MAX_INLINE_IMAGE_BYTES):
                ref = await self.upload(data, f"{jid}.{kind.split('/')[1]}")
                image_input, uploaded = ref.to_cbor(), ref.key
            else:
                image_input = {"inline": {"media_type": kind, "data": data}}
        payload = {"job_id": jid.bytes, "model": model, "image": image_input, "formats": list(formats),
                   "params": params.to_cbor()}
        subject = f"orfeas.jobs.submit.{self.agent}"
        events_subject = f"orfeas.events.{self.agent}.{jid}"
        envelope = self._seal("submit", subject, payload, SUBMIT_LIFETIME_S, events_subject=events_subject)
        try:
            # Subscribe before publishing, so no event is missed.
            subscription = await self.nc.subscribe(events_subject)
            await self.js.publish(subject, envelope, timeout=self.timeout,
                                  headers={"Nats-Msg-Id": f"{self.agent}:{jid}:{envelope[-8:].hex()}"})
        except nats.errors.NoRespondersError as e:
            raise TransportError(f"JetStream does not store {subject}: is a node running?") from e
        except (nats.errors.TimeoutError, asyncio.TimeoutError) as e:
            raise OrfeasTimeoutError(f"no PubAck for {subject} within {self.timeout} s") from e
        except nats.errors.Error as e:
            raise TransportError(f"publishing to {subject}: {e}") from e
        return Job(jid, model, formats, params, idempotency_key, uploaded, subscription)

    async def events(self, job: JobRef, timeout: Optional[float] = None) -> AsyncIterator[Event]:
        """The job's verified events in arrival order, each `seq` once, until
        it ends (`completed`, `failed`, or a `rejected` before `accepted`).

        A `Job` from `submit` reads the subscription made before the
        submission; a job id subscribes now (a job that already ended yields
        nothing more: ask `status` or `wait`). `timeout` bounds the whole walk."""
        jid = _job_id(job)
        subject = f"orfeas.events.{self.agent}.{jid}"
        subscription = job.subscription if isinstance(job, Job) and job.subscription is not None else await self.nc.subscribe(subject)
        deadline = time.monotonic() + (timeout if timeout is not None else 600.0)
        seen: set[int] = set()
        accepted = False
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OrfeasTimeoutError(f"job {jid} did not end in time")
                try:
                    message = await subscription.next_msg(timeout=left)
                except (nats.errors.TimeoutError, asyncio.TimeoutError) as e:
                    raise OrfeasTimeoutError(f"job {jid} did not end in time") from e
                event = await self.verify_event(message.subject, message.data)
                if event.job_id != jid or event.seq in seen:
                    continue
                seen.add(event.seq)
                yield event
                accepted = accepted or event.name == "accepted"
                # After `accepted`, a `rejected` answers another copy of the
                # message (a replay, say): the job goes on.
                if event.name in ("completed", "failed") or (event.name == "rejected" and not accepted):
                    return
        finally:
            if isinstance(job, Job):
                job.subscription = None
            try:
                await subscription.unsubscribe()
            except nats.errors.Error:
                pass

    async def wait(self, job: JobRef, timeout: Optional[float] = None) -> Completed:
        """The job's `completed` result; raises `NodeError` (with the node's
        stable code) when it failed or was refused, `OrfeasTimeoutError` when
        it did not end in time. Works for a job id from earlier too: a job
        that already ended answers from its signed record."""
        jid = _job_id(job)
        if not isinstance(job, Job) or job.subscription is None:
            job = Job(jid, "", (), JobParams(), subscription=await self.nc.subscribe(f"orfeas.events.{self.agent}.{jid}"))
        # Subscribed first, so a job ending after this status check is still heard.
        try:
            status = await self.status(jid)
        except NodeError as e:
            if e.code != "not_found":
                raise
            status = None  # not recorded yet: its answer is on the way
        if status is not None and status.terminal is not None:
            await job.subscription.unsubscribe()
            job.subscription = None
            return _outcome(status.terminal, jid)
        last: Optional[Event] = None
        async for event in self.events(job, timeout):
            last = event  # events() ends at the terminal one
        if last is None:
            raise OrfeasError(f"job {jid} ended without a terminal event")
        return _outcome(last.kind, jid)

    async def status(self, job: JobRef, timeout: Optional[float] = None) -> JobStatus:
        """The job's durable record, signed by the node that read it."""
        reply = await self._signed_request("status", _job_id(job), timeout)
        return JobStatus.from_cbor(reply)

    async def cancel(self, job: JobRef, timeout: Optional[float] = None) -> JobStatus:
        """Cancel: a queued job ends `canceled` at once; a running one gets
        `cancel_requested`; a finished one is left as it is."""
        reply = await self._signed_request("cancel", _job_id(job), timeout)
        return JobStatus.from_cbor(reply)

    async def _signed_request(self, op: str, jid: uuid.UUID, timeout: Optional[float]) -> Any:
        subject = f"orfeas.{op}.{self.agent}"
        cti = os.urandom(cose.NONCE_LEN)
        envelope = self._seal(op, subject, {"job_id": jid.bytes}, REQUEST_LIFETIME_S, cti=cti)
        message = await self._request(subject, envelope, timeout)
        await self._verify_reply(subject, cti, message.headers, message.data)
        reply = cose.decode_strict(message.data)
        if isinstance(reply, dict) and "error" in reply:
            raise node_error(Failure.from_cbor(reply["error"]), "reply")
        if not isinstance(reply, dict) or "job" not in reply:
            raise UnverifiedError(f"{op} reply is neither a job nor an error")
        return reply["job"]

    async def _fetch_request(self, request: dict[str, Any], timeout: Optional[float]) -> tuple[str, Any]:
        subject = f"orfeas.results.fetch.{self.agent}"
        message = await self._request(subject, self._seal("fetch", subject, request, REQUEST_LIFETIME_S), timeout)
        reply = cose.decode_strict(message.data)
        if not isinstance(reply, dict) or len(reply) != 1:
            raise UnverifiedError("fetch reply is not one of manifest, chunk, error")
        ((kind, body),) = reply.items()
        if kind == "error":
            raise node_error(Failure.from_cbor(body), "reply")
        return kind, body

    async def manifest(self, job: JobRef, timeout: Optional[float] = None) -> Event:
        """The job's `completed` event re-signed by a node that serves its files."""
        jid = _job_id(job)
        kind, body = await self._fetch_request({"job_id": jid.bytes, "location": None, "offset": 0, "max_bytes": 0}, timeout)
        if kind != "manifest" or not isinstance(body, dict) or not isinstance(body.get("event"), bytes):
            raise UnverifiedError(f"a {kind} answered a manifest request")
        # Signed for the job's events subject, not for the reply inbox.
        event = await self.verify_event(f"orfeas.events.{self.agent}.{jid}", body["event"])
        if event.job_id != jid or not isinstance(event.kind, Completed):
            raise UnverifiedError(f"manifest for job {jid} is a {event.name} event of job {event.job_id}")
        return event

    async def fetch_file(self, job: JobRef, location: str, sha256: Optional[str] = None,
                         timeout: Optional[float] = None) -> bytes:
        """One file's bytes over NATS in chunks; checked against `sha256` when given."""
        jid = _job_id(job)
        data = bytearray()
        while True:
            kind, body = await self._fetch_request({"job_id": jid.bytes, "location": location, "offset": len(data),
                                                    "max_bytes": MAX_FETCH_CHUNK}, timeout)
            if kind != "chunk" or not isinstance(body, dict):
                raise UnverifiedError(f"a {kind} answered a chunk request")
            chunk, offset, total = body.get("data"), body.get("offset"), body.get("total_bytes")
            if body.get("location") != location or offset != len(data) or not isinstance(chunk, bytes) or not isinstance(total, int):
                raise UnverifiedError(f"asked for {location}@{len(data)}, got {body.get('location')}@{offset}")
            data.extend(chunk)
            if not chunk or len(data) >= total:
                break
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise UnverifiedError(f"{location}: SHA-256 does not match the signed manifest")
        return bytes(data)

    async def fetch(self, job: JobRef, dest: Optional[Union[str, os.PathLike]] = None, *,
                    formats: Optional[Iterable[str]] = None, previews: bool = False,
                    timeout: Optional[float] = None) -> Fetched:
        """The verified manifest and the result files (with their parts, and
        the preview renders when `previews`), every file checked against the
        SHA-256 the node signed. With `dest`, files are also written there
        under their stored names (parts beside them, by `name`)."""
        jid = _job_id(job)
        manifest = await self.manifest(jid, timeout)
        done = manifest.kind
        assert isinstance(done, Completed)
        wanted = set(formats) if formats is not None else None
        out_dir = Path(dest) if dest is not None else None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        files: list[FetchedFile] = []

        async def get(location: str, name: str, sha256: Optional[str]) -> None:
            data = await self.fetch_file(jid, location, sha256, timeout)
            path = None
            if out_dir is not None:
                path = out_dir / name
                path.write_bytes(data)
            files.append(FetchedFile(location, name, sha256, data, sha256 is not None, path))

        for result in done.results:
            if wanted is not None and result.format not in wanted:
                continue
            await get(result.location, Path(result.location).name, result.sha256)
            for part in result.parts:
                await get(part.location, part.name, part.sha256)
        if previews:
            for preview in done.previews:
                await get(preview.location, Path(preview.location).name, preview.sha256)
        return Fetched(jid, manifest, tuple(files))

    async def list_models(self, timeout: Optional[float] = None) -> list[ModelInfo]:
        """The models the deployment serves (unsigned public configuration)."""
        message = await self._request("orfeas.models.list", cbor2.dumps({}), timeout)
        reply = cose.decode_strict(message.data)
        if not isinstance(reply, dict) or not isinstance(reply.get("models"), list):
            raise UnverifiedError("model list does not decode")
        return [ModelInfo.from_cbor(m) for m in reply["models"]]


def _read_image(image: Union[str, os.PathLike, bytes]) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    try:
        return Path(image).read_bytes()
    except OSError as e:
        raise InvalidArgumentError(f"image {str(image)!r} cannot be read: {e}") from e


def _outcome(kind: Any, jid: uuid.UUID) -> Completed:
    if isinstance(kind, Completed):
        return kind
    if isinstance(kind, (Failed, Rejected)):
        raise node_error(kind.failure, kind.name)
    raise OrfeasError(f"job {jid} ended without a terminal event")
