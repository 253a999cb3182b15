//! Protocol v1 payloads. Additive changes only: new optional fields carry
//! `#[serde(default)]`, enums are externally tagged (ciborium decodes those
//! reliably), unknown fields are ignored.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    codes::ErrorCode,
    envelope::{self, Claims, ContentKind, Seal},
    keys::SecretKey,
    subjects,
};

/// Largest envelope accepted on the submit subject, bytes. NATS' default
/// `max_payload` is 1 MiB; `nats/*.conf` raises it to 8 MiB.
pub const MAX_SUBMIT_BYTES: usize = 8 * 1024 * 1024;
/// Largest inline image, bytes (the envelope adds a few hundred bytes).
pub const MAX_INLINE_IMAGE_BYTES: usize = MAX_SUBMIT_BYTES - 64 * 1024;
/// Longest validity window of a signed message, seconds.
pub const MAX_LIFETIME_S: u64 = 600;

/// An output file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// glTF 2.0 binary: positions, normals, vertex colours; Y up, metres when `size_mm` is set.
    Glb,
    /// Binary STL, Z up, resting on z = 0, millimetres.
    Stl,
    /// Wavefront OBJ with normals and vertex colours.
    Obj,
    /// Binary PLY with normals and vertex colours.
    Ply,
    /// 3MF package, millimetres, Z up, resting on z = 0.
    #[serde(rename = "3mf")]
    ThreeMf,
}

impl Format {
    /// Every format, in a stable order.
    pub const ALL: [Format; 5] = [Format::Glb, Format::Stl, Format::Obj, Format::Ply, Format::ThreeMf];

    /// File extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Glb => "glb",
            Self::Stl => "stl",
            Self::Obj => "obj",
            Self::Ply => "ply",
            Self::ThreeMf => "3mf",
        }
    }

    /// Parse an extension or name (`glb`, `stl`, `obj`, `ply`, `3mf`).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim().to_ascii_lowercase();
        Self::ALL.into_iter().find(|f| f.extension() == text)
    }
}

/// Largest `target_faces` a job may ask for.
pub const MAX_TARGET_FACES: u32 = 2_000_000;
/// Smallest `target_faces` a job may ask for.
pub const MIN_TARGET_FACES: u32 = 100;
/// Largest `size_mm` a job may ask for.
pub const MAX_SIZE_MM: f32 = 10_000.0;

/// How the mesh is made. Every field is optional; absent = the default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobParams {
    /// Decimate to about this many triangles ([`MIN_TARGET_FACES`]..=[`MAX_TARGET_FACES`]); default: no decimation.
    #[serde(default)]
    pub target_faces: Option<u32>,
    /// Longest side of the printed object in millimetres (0 < size ≤ [`MAX_SIZE_MM`]); default: 1 model unit = 1 mm.
    #[serde(default)]
    pub size_mm: Option<f32>,
    /// Smooth away voxel terracing; default true.
    #[serde(default)]
    pub smooth: Option<bool>,
    /// Vertex colours projected from the image; default true.
    #[serde(default)]
    pub colour: Option<bool>,
    /// Store four shaded PNG previews; default true.
    #[serde(default)]
    pub previews: Option<bool>,
}

impl JobParams {
    /// Check bounds; the error names the offending value.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(n) = self.target_faces {
            if !(MIN_TARGET_FACES..=MAX_TARGET_FACES).contains(&n) {
                return Err(format!("target_faces {n} is outside {MIN_TARGET_FACES}..={MAX_TARGET_FACES}"));
            }
        }
        if let Some(mm) = self.size_mm {
            if !(mm.is_finite() && mm > 0.0 && mm <= MAX_SIZE_MM) {
                return Err(format!("size_mm {mm} is outside (0, {MAX_SIZE_MM}]"));
            }
        }
        Ok(())
    }
}

/// The input image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageInput {
    /// Image bytes inside the message, at most [`MAX_INLINE_IMAGE_BYTES`].
    Inline {
        /// `image/png`, `image/jpeg` or `image/webp`; must match the bytes.
        media_type: String,
        /// The encoded image.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

/// An agent's request to turn one image into a model. Operation `submit`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubmitJob {
    /// Chosen by the agent; the same id twice means the same job.
    pub job_id: Uuid,
    /// Model name, e.g. `inflate`.
    pub model: String,
    /// The image.
    pub image: ImageInput,
    /// Output formats; empty means `[glb]`.
    #[serde(default)]
    pub formats: Vec<Format>,
    /// How the mesh is made.
    #[serde(default)]
    pub params: JobParams,
}

impl SubmitJob {
    /// Sign this job as `agent` and return `(subject, envelope bytes)`.
    pub fn seal(&self, agent: &str, key: &SecretKey, audience: &str, now_s: u64, lifetime_s: u64) -> (String, Vec<u8>) {
        let subject = subjects::submit(agent);
        let events = subjects::events(agent, &self.job_id);
        let claims = Claims::new(agent, audience, now_s, lifetime_s);
        let header = Seal { kind: ContentKind::SubmitJob, claims: &claims, op: "submit", events_subject: Some(&events) };
        let bytes = envelope::seal(&header, crate::to_cbor(self), &subject, key);
        (subject, bytes)
    }
}

/// A pipeline stage reported in progress events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Waiting for a device.
    Queued,
    /// Decoding and preparing the image.
    Preprocessing,
    /// The model's forward pass.
    Inference,
    /// Volume to mesh, cleanup, validation.
    Meshing,
    /// Writing the requested formats.
    Exporting,
    /// Uploading files to the object store.
    Storing,
}

impl Stage {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Preprocessing => "preprocessing",
            Self::Inference => "inference",
            Self::Meshing => "meshing",
            Self::Exporting => "exporting",
            Self::Storing => "storing",
        }
    }
}

/// One stored result file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultFile {
    /// Its format.
    pub format: Format,
    /// Where to fetch it: a path in the object store (`jobs/<agent>/<job_id>/model.glb`).
    pub location: String,
    /// A URL the file can be fetched from (`file://` for a local store).
    pub url: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
}

/// Facts about the delivered mesh.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeshStats {
    /// Vertex count.
    pub vertices: u64,
    /// Triangle count.
    pub faces: u64,
    /// No boundary edges, every edge shared by exactly two faces, no pinched vertices.
    pub closed_manifold: bool,
    /// Connected components.
    pub components: u64,
    /// Enclosed volume in model units³.
    pub volume: f64,
    /// Bounding box minimum (x, y, z), model units.
    pub bbox_min: [f32; 3],
    /// Bounding box maximum (x, y, z), model units.
    pub bbox_max: [f32; 3],
}

/// A stored preview image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preview {
    /// `front`, `back`, `left` or `top`.
    pub view: String,
    /// Key in the object store.
    pub location: String,
    /// Fetchable URL.
    pub url: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// Can it be printed, and if not, why not. Millimetres, Z up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrintReport {
    /// Every edge has two faces.
    pub closed: bool,
    /// No edge with more than two faces, no pinched vertex.
    pub two_manifold: bool,
    /// Faces consistently oriented outward.
    pub winding_consistent: bool,
    /// Connected pieces.
    pub components: u64,
    /// Euler characteristic.
    pub euler: i64,
    /// Number of handles, when closed and manifold.
    pub genus: Option<i64>,
    /// Enclosed volume, mm³.
    pub volume_mm3: f64,
    /// Surface area, mm².
    pub area_mm2: f64,
    /// Bounding box size (x, y, z), mm.
    pub bbox_mm: [f32; 3],
    /// Zero-area or repeated-vertex faces.
    pub degenerate_faces: u64,
    /// Crossing face pairs; absent when skipped for size.
    pub self_intersections: Option<u64>,
    /// Build volume compared with, mm.
    pub build_volume_mm: [f32; 3],
    /// Fits that build volume.
    pub fits_build_volume: bool,
    /// Why it is not printable as is; empty when it is.
    pub problems: Vec<String>,
}

/// A refusal or failure: one shape for every error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Stable code.
    pub code: ErrorCode,
    /// HTTP-like class (401, 403, 409, 413, 422, 429, 500, 503).
    pub status: u16,
    /// One lowercase sentence naming the offending value.
    pub error: String,
    /// Whether sending the same request again may succeed.
    pub retryable: bool,
    /// Server time in milliseconds since the epoch, for clock-skew rejections.
    #[serde(default)]
    pub server_time_ms: Option<u64>,
}

impl Failure {
    /// A failure with the code's status and retryability.
    pub fn new(code: ErrorCode, error: impl Into<String>) -> Self {
        Self { code, status: code.status(), error: error.into(), retryable: code.retryable(), server_time_ms: None }
    }
}

/// What happened to a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Admitted and durably queued.
    Accepted {
        /// Jobs ahead of this one on the node that admitted it.
        queue_position: u64,
    },
    /// Moved to a stage.
    Progress {
        /// The stage.
        stage: Stage,
        /// Overall progress, 0–100.
        percent: u8,
    },
    /// Finished; files are stored.
    Completed {
        /// The stored files.
        results: Vec<ResultFile>,
        /// Facts about the mesh.
        mesh: MeshStats,
        /// Printability, when the node measured it.
        #[serde(default)]
        report: Option<PrintReport>,
        /// Preview renders (empty when not asked for).
        #[serde(default)]
        previews: Vec<Preview>,
    },
    /// The admitted job failed; final.
    Failed(Failure),
    /// The message was refused before any job was created; final for that
    /// message, and an existing job with the same id is unaffected.
    Rejected(Failure),
}

impl EventKind {
    /// `accepted`, `progress`, `completed` or `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Accepted { .. } => "accepted",
            Self::Progress { .. } => "progress",
            Self::Completed { .. } => "completed",
            Self::Failed(_) => "failed",
            Self::Rejected(_) => "rejected",
        }
    }

    /// Whether no further event follows.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Completed { .. } | Self::Failed(_) | Self::Rejected(_))
    }
}

/// An event on `orfeas.events.<agent>.<job_id>`, signed by the node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The job.
    pub job_id: Uuid,
    /// Strictly increasing per job: `(delivery attempt << 16) | step`.
    pub seq: u64,
    /// The node that published it.
    pub node: String,
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    /// What happened.
    pub kind: EventKind,
}

impl Event {
    /// Sign this event with the node's key for publication on `subject`.
    pub fn seal(&self, subject: &str, key: &SecretKey, audience: &str, now_s: u64) -> Vec<u8> {
        let claims = Claims::new(&self.node, audience, now_s, MAX_LIFETIME_S);
        let header = Seal { kind: ContentKind::Event, claims: &claims, op: "event", events_subject: None };
        envelope::seal(&header, crate::to_cbor(self), subject, key)
    }
}

/// A node's entry in the `orfeas_nodes` bucket: agents read the key that
/// signs its events from here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id (`iss` of its events).
    pub node_id: String,
    /// Event-signing key, 64 hex digits.
    pub public_key: String,
    /// orfeas version.
    pub version: String,
    /// Start time, ms since the epoch.
    pub started_at_ms: u64,
    /// Last heartbeat, ms since the epoch (0 from nodes older than heartbeats).
    #[serde(default)]
    pub heartbeat_at_ms: u64,
    /// `starting`, `ready` or `draining`.
    #[serde(default)]
    pub state: String,
    /// The node's devices.
    #[serde(default)]
    pub devices: Vec<NodeDevice>,
    /// Models it serves.
    #[serde(default)]
    pub models: Vec<String>,
    /// Jobs it takes at most at once (waiting for a device or running).
    #[serde(default)]
    pub capacity: u32,
    /// Jobs it holds right now (≤ `capacity`).
    #[serde(default)]
    pub held_jobs: u32,
    /// Devices running a batch right now.
    #[serde(default)]
    pub busy_devices: u32,
    /// Jobs it answered since it started.
    #[serde(default)]
    pub finished_jobs: u64,
}

/// One device of a node, as its record shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDevice {
    /// `cpu`, `cuda0`, `cuda1`, …
    pub id: String,
    /// Total memory in bytes, when known.
    #[serde(default)]
    pub total_bytes: Option<u64>,
}

/// Largest `max_bytes` a [`FetchRequest`] may ask for: chunks stay well under
/// NATS' default 1 MiB `max_payload`, so fetching works on any server.
pub const MAX_FETCH_CHUNK: u32 = 512 * 1024;

/// An agent's signed request for the files of one of its jobs, on
/// `orfeas.results.fetch.<agent>` (request/reply). Operation `fetch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// The job.
    pub job_id: Uuid,
    /// `None`: the job's result manifest. `Some(location)`: bytes of that
    /// file (a `location` from the manifest).
    #[serde(default)]
    pub location: Option<String>,
    /// First byte wanted.
    #[serde(default)]
    pub offset: u64,
    /// Bytes wanted, at most [`MAX_FETCH_CHUNK`].
    #[serde(default)]
    pub max_bytes: u32,
}

impl FetchRequest {
    /// Sign this request as `agent`; returns `(subject, envelope bytes)`.
    pub fn seal(&self, agent: &str, key: &SecretKey, audience: &str, now_s: u64) -> (String, Vec<u8>) {
        let subject = subjects::fetch(agent);
        let claims = Claims::new(agent, audience, now_s, 60);
        let header = Seal { kind: ContentKind::FetchRequest, claims: &claims, op: "fetch", events_subject: None };
        let bytes = envelope::seal(&header, crate::to_cbor(self), &subject, key);
        (subject, bytes)
    }
}

/// A node's answer to a [`FetchRequest`] (CBOR, not signed: the manifest is
/// a signed event and every file is checked against its SHA-256 there).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FetchReply {
    /// The job's `completed` event, signed by the answering node for the
    /// job's events subject (verify it like any event).
    Manifest {
        /// COSE_Sign1 envelope of an [`Event`].
        #[serde(with = "serde_bytes")]
        event: Vec<u8>,
    },
    /// Bytes of one file.
    Chunk {
        /// The file.
        location: String,
        /// Offset of `data` in the file.
        offset: u64,
        /// Size of the whole file.
        total_bytes: u64,
        /// The bytes (empty at or past the end).
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Refused or not available.
    Error(Failure),
}

/// An admitted job on `orfeas.jobs.queue.<lane>`: validated, owned by the
/// system, no longer signed by the agent (the node that admitted it vouches).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdmittedJob {
    /// The job.
    pub job_id: Uuid,
    /// The agent it belongs to.
    pub agent: String,
    /// Model name.
    pub model: String,
    /// Output formats (never empty).
    pub formats: Vec<Format>,
    /// The image, as submitted.
    pub image: ImageInput,
    /// How the mesh is made (validated).
    #[serde(default)]
    pub params: JobParams,
    /// When the node admitted it, milliseconds since the epoch.
    pub admitted_at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_round_trip_through_cbor() {
        let kinds = vec![
            EventKind::Accepted { queue_position: 3 },
            EventKind::Progress { stage: Stage::Meshing, percent: 60 },
            EventKind::Completed {
                results: vec![ResultFile { format: Format::Glb, location: "a/b.glb".into(), url: "file:///a/b.glb".into(), bytes: 10, sha256: "00".into() }],
                mesh: MeshStats { vertices: 1, faces: 2, closed_manifold: true, components: 1, volume: 1.5, bbox_min: [0.0; 3], bbox_max: [1.0; 3] },
                report: None,
                previews: vec![],
            },
            EventKind::Failed(Failure::new(ErrorCode::InvalidImage, "image is 0x0")),
            EventKind::Rejected(Failure::new(ErrorCode::BadSignature, "signature does not verify")),
        ];
        for kind in kinds {
            let event = Event { job_id: Uuid::nil(), seq: 7, node: "n1".into(), at_ms: 5, kind };
            let back: Event = crate::from_cbor(&crate::to_cbor(&event)).unwrap();
            assert_eq!(back, event);
        }
    }

    #[test]
    fn submit_without_formats_decodes_with_default() {
        #[derive(Serialize)]
        struct Old {
            job_id: Uuid,
            model: String,
            image: ImageInput,
        }
        let old = Old { job_id: Uuid::nil(), model: "inflate".into(), image: ImageInput::Inline { media_type: "image/png".into(), data: vec![1, 2] } };
        let job: SubmitJob = crate::from_cbor(&crate::to_cbor(&old)).unwrap();
        assert!(job.formats.is_empty());
        assert_eq!(job.params, JobParams::default());
    }

    #[test]
    fn formats_parse_and_serialize_by_extension() {
        for f in Format::ALL {
            assert_eq!(Format::parse(f.extension()), Some(f));
            let name: String = crate::from_cbor(&crate::to_cbor(&f)).unwrap();
            assert_eq!(name, f.extension());
        }
        assert_eq!(Format::parse("fbx"), None);
    }

    #[test]
    fn params_bounds_are_checked() {
        assert!(JobParams::default().validate().is_ok());
        assert!(JobParams { target_faces: Some(50), ..Default::default() }.validate().unwrap_err().contains("50"));
        assert!(JobParams { size_mm: Some(f32::NAN), ..Default::default() }.validate().is_err());
        assert!(JobParams { size_mm: Some(80.0), target_faces: Some(20_000), ..Default::default() }.validate().is_ok());
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = crate::to_cbor(&Stage::Queued);
        bytes.push(0);
        assert!(crate::from_cbor::<Stage>(&bytes).is_err());
    }
}
