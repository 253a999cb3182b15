"""The protocol's messages as typed, immutable Python values.

Each `from_cbor` reads the decoded CBOR map of md/protocol.md ("Messages"):
unknown keys are ignored, optional ones may be absent or null. UUIDs arrive
as 16-byte strings and become `uuid.UUID`. Every value keeps the map it was
read from as `raw` (not compared, not shown) for fields added later.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from .errors import InvalidArgumentError, UnverifiedError

Format = Literal["glb", "stl", "obj", "ply", "3mf"]
FORMATS: tuple[str, ...] = ("glb", "stl", "obj", "ply", "3mf")
Lane = Literal["high", "normal", "low"]
LANES: tuple[str, ...] = ("high", "normal", "low")
STAGES: tuple[str, ...] = ("queued", "preprocessing", "inference", "meshing", "exporting", "storing")


def _uuid(value: Any) -> uuid.UUID:
    if isinstance(value, bytes) and len(value) == 16:
        return uuid.UUID(bytes=value)
    raise UnverifiedError(f"not a 16-byte UUID: {value!r}")


def _map(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise UnverifiedError(f"{what} is not a map")
    return value


def _tagged(value: Any, what: str) -> tuple[str, Any]:
    """An externally tagged enum: a map with exactly one key."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict) and len(value) == 1:
        ((name, body),) = value.items()
        if isinstance(name, str):
            return name, body
    raise UnverifiedError(f"{what} is not an externally tagged enum")


def _get(d: dict, key: str, default: Any = None) -> Any:
    value = d.get(key)
    return default if value is None else value


def _required(d: dict, key: str, what: str) -> Any:
    if d.get(key) is None:
        raise UnverifiedError(f"{what} has no {key}")
    return d[key]


@dataclass(frozen=True)
class Failure:
    """A refusal or failure: the one error shape of the protocol."""

    code: str
    status: int
    error: str
    retryable: bool
    server_time_ms: Optional[int] = None
    detail: Optional[str] = None
    retry_after_ms: Optional[int] = None
    job_id: Optional[uuid.UUID] = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_cbor(cls, value: Any) -> "Failure":
        d = _map(value, "failure")
        job_id = d.get("job_id")
        return cls(code=str(_required(d, "code", "failure")), status=int(_required(d, "status", "failure")),
                   error=str(_get(d, "error", "")), retryable=bool(_get(d, "retryable", False)),
                   server_time_ms=d.get("server_time_ms"), detail=d.get("detail"),
                   retry_after_ms=d.get("retry_after_ms"), job_id=_uuid(job_id) if job_id is not None else None, raw=d)


@dataclass(frozen=True)
class ResultPart:
    """A file a result file needs beside it (a textured OBJ's `.mtl` and `.png`)."""

    name: str
    location: str
    url: str
    bytes: int
    sha256: str

    @classmethod
    def from_cbor(cls, value: Any) -> "ResultPart":
        d = _map(value, "part")
        return cls(str(d["name"]), str(d["location"]), str(d["url"]), int(d["bytes"]), str(d["sha256"]))


@dataclass(frozen=True)
class ResultFile:
    """One stored result file, with its signed size and SHA-256 (hex)."""

    format: str
    location: str
    url: str
    bytes: int
    sha256: str
    parts: tuple[ResultPart, ...] = ()

    @classmethod
    def from_cbor(cls, value: Any) -> "ResultFile":
        d = _map(value, "result file")
        return cls(str(d["format"]), str(d["location"]), str(d["url"]), int(d["bytes"]), str(d["sha256"]),
                   tuple(ResultPart.from_cbor(p) for p in _get(d, "parts", [])))


@dataclass(frozen=True)
class MeshStats:
    vertices: int
    faces: int
    closed_manifold: bool
    components: int
    volume: float
    bbox_min: tuple[float, float, float]
    bbox_max: tuple[float, float, float]

    @classmethod
    def from_cbor(cls, value: Any) -> "MeshStats":
        d = _map(value, "mesh")
        return cls(int(d["vertices"]), int(d["faces"]), bool(d["closed_manifold"]), int(d["components"]),
                   float(d["volume"]), tuple(d["bbox_min"]), tuple(d["bbox_max"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class PrintReport:
    """Can it be printed, and if not, why not (millimetres, Z up)."""

    closed: bool
    two_manifold: bool
    winding_consistent: bool
    components: int
    euler: int
    genus: Optional[int]
    volume_mm3: float
    area_mm2: float
    bbox_mm: tuple[float, float, float]
    degenerate_faces: int
    self_intersections: Optional[int]
    build_volume_mm: tuple[float, float, float]
    fits_build_volume: bool
    problems: tuple[str, ...]
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def printable(self) -> bool:
        """No problem found: closed, manifold, consistently wound and fits."""
        return not self.problems

    @classmethod
    def from_cbor(cls, value: Any) -> "PrintReport":
        d = _map(value, "report")
        return cls(bool(d["closed"]), bool(d["two_manifold"]), bool(d["winding_consistent"]), int(d["components"]),
                   int(d["euler"]), d.get("genus"), float(d["volume_mm3"]), float(d["area_mm2"]),
                   tuple(d["bbox_mm"]), int(d["degenerate_faces"]), d.get("self_intersections"),  # type: ignore[arg-type]
                   tuple(d["build_volume_mm"]), bool(d["fits_build_volume"]),  # type: ignore[arg-type]
                   tuple(str(p) for p in _get(d, "problems", [])), raw=d)


@dataclass(frozen=True)
class Preview:
    """A stored preview render (PNG). `sha256` (hex) is signed with the
    event, so fetched bytes can be checked; None from nodes older than it."""

    view: str
    location: str
    url: str
    bytes: int
    sha256: Optional[str] = None

    @classmethod
    def from_cbor(cls, value: Any) -> "Preview":
        d = _map(value, "preview")
        sha256 = d.get("sha256")
        return cls(str(d["view"]), str(d["location"]), str(d["url"]), int(d["bytes"]), str(sha256) if sha256 is not None else None)


@dataclass(frozen=True)
class Accepted:
    queue_position: int
    eta_ms: Optional[int] = None
    name = "accepted"


@dataclass(frozen=True)
class Progress:
    stage: str
    percent: int
    eta_ms: Optional[int] = None
    name = "progress"


@dataclass(frozen=True)
class Completed:
    """A finished job: its files, mesh facts, printability report, previews."""

    results: tuple[ResultFile, ...]
    mesh: MeshStats
    report: Optional[PrintReport]
    previews: tuple[Preview, ...]
    name = "completed"

    def file(self, format: str) -> ResultFile:
        """The result file of `format` (KeyError when the job made none)."""
        for result in self.results:
            if result.format == format:
                return result
        raise KeyError(format)


@dataclass(frozen=True)
class Failed:
    failure: Failure
    name = "failed"


@dataclass(frozen=True)
class Rejected:
    failure: Failure
    name = "rejected"


EventKind = Union[Accepted, Progress, Completed, Failed, Rejected]


def event_kind(value: Any) -> EventKind:
    name, body = _tagged(value, "event kind")
    d = _map(body, name)
    if name == "accepted":
        return Accepted(int(_get(d, "queue_position", 0)), d.get("eta_ms"))
    if name == "progress":
        return Progress(str(d["stage"]), int(d["percent"]), d.get("eta_ms"))
    if name == "completed":
        report = d.get("report")
        return Completed(tuple(ResultFile.from_cbor(r) for r in _get(d, "results", [])), MeshStats.from_cbor(d["mesh"]),
                         PrintReport.from_cbor(report) if report is not None else None,
                         tuple(Preview.from_cbor(p) for p in _get(d, "previews", [])))
    if name == "failed":
        return Failed(Failure.from_cbor(d))
    if name == "rejected":
        return Rejected(Failure.from_cbor(d))
    raise UnverifiedError(f"unknown event kind {name!r}")


@dataclass(frozen=True)
class Event:
    """A verified event of one job (`seq` strictly increasing per job)."""

    job_id: uuid.UUID
    seq: int
    node: str
    at_ms: int
    kind: EventKind
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.kind.name

    @classmethod
    def from_cbor(cls, value: Any) -> "Event":
        d = _map(value, "event")
        try:
            return cls(_uuid(d.get("job_id")), int(d["seq"]), str(d["node"]), int(d["at_ms"]), event_kind(d.get("kind")), raw=d)
        except (KeyError, TypeError, ValueError) as e:
            raise UnverifiedError(f"event does not decode: {e!r}") from e


@dataclass(frozen=True)
class JobStatus:
    """A job's durable record, as a node read it."""

    job_id: uuid.UUID
    state: str  # admitted (queued), running, completed, failed, canceled
    lane: str
    attempt: int
    node: str
    updated_at_ms: int
    cancel_requested: bool
    terminal: Optional[EventKind]
    terminal_seq: int
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def finished(self) -> bool:
        return self.terminal is not None

    @property
    def request(self) -> Optional[dict]:
        """Model, formats and parameters the job was admitted with (``None``
        for jobs admitted by nodes from before this field)."""
        r = self.raw.get("request")
        return dict(r) if isinstance(r, dict) else None

    @classmethod
    def from_cbor(cls, value: Any) -> "JobStatus":
        d = _map(value, "job status")
        terminal = d.get("terminal")
        try:
            return cls(_uuid(d.get("job_id")), str(d["state"]), str(_get(d, "lane", "normal")), int(_get(d, "attempt", 0)),
                       str(_get(d, "node", "")), int(_get(d, "updated_at_ms", 0)), bool(_get(d, "cancel_requested", False)),
                       event_kind(terminal) if terminal is not None else None, int(_get(d, "terminal_seq", 0)), raw=d)
        except (KeyError, TypeError, ValueError) as e:
            raise UnverifiedError(f"job status does not decode: {e!r}") from e


@dataclass(frozen=True)
class ModelParam:
    name: str
    default: float
    boolean: bool


@dataclass(frozen=True)
class ModelInfo:
    """A model the deployment serves (`list_models`)."""

    name: str
    version: str
    description: str
    params: tuple[ModelParam, ...]
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_cbor(cls, value: Any) -> "ModelInfo":
        d = _map(value, "model")
        return cls(str(d["name"]), str(_get(d, "version", "")), str(_get(d, "description", "")),
                   tuple(ModelParam(str(p["name"]), float(p["default"]), bool(_get(p, "boolean", False))) for p in _get(d, "params", [])),
                   raw=d)


@dataclass
class JobParams:
    """How the mesh is made (md/protocol.md, "Job parameters"); every field optional."""

    target_faces: Optional[int] = None
    size_mm: Optional[float] = None
    smooth: Optional[bool] = None
    colour: Optional[bool] = None
    previews: Optional[bool] = None
    texture: bool = False
    build_volume_mm: Optional[tuple[float, float, float]] = None
    priority: Optional[Lane] = None
    deadline_ms: Optional[int] = None
    model_params: dict[str, float] = field(default_factory=dict)

    def check(self) -> None:
        """The ranges the node enforces, so a bad value fails before signing."""
        if self.target_faces is not None and not 100 <= self.target_faces <= 2_000_000:
            raise InvalidArgumentError(f"target_faces {self.target_faces} is outside 100..=2000000")
        if self.size_mm is not None and not 0 < self.size_mm <= 10_000:
            raise InvalidArgumentError(f"size_mm {self.size_mm} is outside (0, 10000]")
        if self.build_volume_mm is not None and (len(self.build_volume_mm) != 3 or not all(0 < s <= 10_000 for s in self.build_volume_mm)):
            raise InvalidArgumentError(f"build_volume_mm {self.build_volume_mm} is not three sides in (0, 10000]")
        if self.priority is not None and self.priority not in LANES:
            raise InvalidArgumentError(f"priority {self.priority!r} is not one of {', '.join(LANES)}")
        if len(self.model_params) > 32:
            raise InvalidArgumentError(f"{len(self.model_params)} model_params (at most 32)")

    def to_cbor(self) -> dict[str, Any]:
        """The `params` map: unset fields left out, as the Rust encoder does."""
        out: dict[str, Any] = {}
        for key in ("target_faces", "smooth", "colour", "previews", "priority", "deadline_ms"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.size_mm is not None:
            out["size_mm"] = float(self.size_mm)
        if self.texture:
            out["texture"] = True
        if self.build_volume_mm is not None:
            out["build_volume_mm"] = [float(s) for s in self.build_volume_mm]
        if self.model_params:
            out["model_params"] = {k: (v if isinstance(v, bool) else float(v)) for k, v in self.model_params.items()}
        return out


@dataclass(frozen=True)
class FetchedFile:
    """A file fetched over NATS. `verified`: its bytes match the SHA-256 the
    node signed in the manifest (False only for a preview from a node too
    old to sign its digest)."""

    location: str
    name: str
    sha256: Optional[str]
    data: bytes = field(repr=False)
    verified: bool
    path: Optional[Path] = None


@dataclass(frozen=True)
class Fetched:
    """`fetch`: the verified manifest and the files it names."""

    job_id: uuid.UUID
    manifest: Event
    files: tuple[FetchedFile, ...]

    @property
    def completed(self) -> Completed:
        assert isinstance(self.manifest.kind, Completed)
        return self.manifest.kind
