//! Protocol v1 payloads. Additive changes only: new optional fields carry
//! `#[serde(default)]`, enums are externally tagged (ciborium decodes those
//! reliably), unknown fields are ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
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
    /// The model's own parameters by name (e.g. `relief`: `base_thickness`,
    /// `max_height` in world units, `invert`), at most [`MAX_MODEL_PARAMS`].
    /// Names and defaults are in the model's manifest (`list_models`);
    /// values are numbers, booleans may be sent as `true`/`false` or 1/0.
    /// Absent names take the manifest's default; unknown names are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "model_params")]
    pub model_params: BTreeMap<String, f64>,
    /// Also texture the mesh with the input image (UVs projected from the front): the GLB
    /// embeds it, an OBJ comes with an MTL and a PNG as [`ResultFile::parts`]; default
    /// false. Sent only when true, so jobs without it encode as before this field.
    #[serde(default, skip_serializing_if = "is_false")]
    pub texture: bool,
    /// The printer's build volume (x, y, z) in millimetres, Z up, that the printability
    /// report checks the object against (each side 0 < s ≤ [`MAX_SIZE_MM`]); default
    /// 256 × 256 × 256. Sent only when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_volume_mm: Option<[f32; 3]>,
    /// Turn the object so its largest stable face rests on the bed before export and
    /// the report; default false. Sent only when true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub lay_flat: bool,
    /// Run in this priority lane instead of the agent's own; a job may only
    /// ask for the agent's lane or a lower one. Sent only when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Lane>,
    /// Fail with `deadline_exceeded` instead of running if the job has not
    /// started by this time, milliseconds since the epoch. A pipeline model's
    /// job still sampling at this time also fails so, at its next sampler
    /// step boundary (a single-call forward pass is not interrupted). Sent
    /// only when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

/// A priority lane: `orfeas.jobs.queue.<lane>`. Pulled by weight, so a lower
/// lane is slower but never starved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// Ahead of everything else.
    High,
    /// The default.
    #[default]
    Normal,
    /// Batch work that may wait.
    Low,
}

impl Lane {
    /// Every lane, highest first.
    pub const ALL: [Lane; 3] = [Lane::High, Lane::Normal, Lane::Low];

    /// The stable name (the queue subject's last token).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }

    /// The lane named `text`.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == text)
    }

    /// `self`, or `asked` when that is lower (a job may demote itself, never promote).
    pub fn at_most(self, asked: Option<Lane>) -> Lane {
        match asked {
            Some(asked) if asked > self => asked,
            _ => self,
        }
    }
}

/// Most model parameters one job may set.
pub const MAX_MODEL_PARAMS: usize = 32;

/// A map of parameter name to number, accepting CBOR floats, integers and
/// booleans (1.0 / 0.0) as values.
fn model_params<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, f64>, D::Error> {
    struct Number(f64);
    impl<'de> Deserialize<'de> for Number {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl serde::de::Visitor<'_> for Visitor {
                type Value = Number;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a number or a boolean")
                }
                fn visit_bool<E>(self, v: bool) -> Result<Number, E> {
                    Ok(Number(if v { 1.0 } else { 0.0 }))
                }
                fn visit_i64<E>(self, v: i64) -> Result<Number, E> {
                    Ok(Number(v as f64))
                }
                fn visit_u64<E>(self, v: u64) -> Result<Number, E> {
                    Ok(Number(v as f64))
                }
                fn visit_f64<E>(self, v: f64) -> Result<Number, E> {
                    Ok(Number(v))
                }
            }
            deserializer.deserialize_any(Visitor)
        }
    }
    let raw: BTreeMap<String, Number> = BTreeMap::deserialize(deserializer)?;
    Ok(raw.into_iter().map(|(k, v)| (k, v.0)).collect())
}

fn is_false(b: &bool) -> bool {
    !*b
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
        if self.model_params.len() > MAX_MODEL_PARAMS {
            return Err(format!("{} model_params, at most {MAX_MODEL_PARAMS}", self.model_params.len()));
        }
        if let Some((name, value)) = self.model_params.iter().find(|(_, v)| !v.is_finite()) {
            return Err(format!("model_params.{name} = {value} is not a finite number"));
        }
        if let Some(sides) = self.build_volume_mm {
            if let Some(mm) = sides.into_iter().find(|mm| !(mm.is_finite() && *mm > 0.0 && *mm <= MAX_SIZE_MM)) {
                return Err(format!("build_volume_mm side {mm} is outside (0, {MAX_SIZE_MM}]"));
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
    /// Image bytes the agent uploaded beforehand, at most
    /// [`MAX_REF_IMAGE_BYTES`]; the node running the job fetches them (never
    /// more than `size` + 1 bytes) and checks `size` and `sha256` before it
    /// decodes anything. Both are inside the signed payload, so the upload
    /// cannot be swapped after signing.
    Ref {
        /// `image/png`, `image/jpeg` or `image/webp`; must match the bytes.
        media_type: String,
        /// Which store holds the bytes.
        store: RefStore,
        /// The JetStream object store bucket (`store: jetstream` only; only
        /// [`subjects::UPLOADS_BUCKET`] is read). Sent only when set; absent
        /// means that bucket.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bucket: Option<String>,
        /// Object name: `<agent>/<name>` in the JetStream bucket,
        /// `uploads/<agent>/<name>` in the node's object store.
        key: String,
        /// SHA-256 of the bytes, 32 bytes.
        #[serde(with = "serde_bytes")]
        sha256: Vec<u8>,
        /// Size of the bytes.
        size: u64,
    },
}

/// Where an image submitted by reference is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefStore {
    /// The deployment's JetStream object store [`subjects::UPLOADS_BUCKET`].
    Jetstream,
    /// The object store the nodes keep results in (a folder or an S3 bucket).
    ObjectStore,
}

/// Largest image submitted by reference, bytes (the node never decodes more).
pub const MAX_REF_IMAGE_BYTES: u64 = 32 * 1024 * 1024;
/// Longest reference key, bytes.
pub const MAX_REF_KEY_BYTES: usize = 512;

impl ImageInput {
    /// The declared media type.
    pub fn media_type(&self) -> &str {
        match self {
            Self::Inline { media_type, .. } | Self::Ref { media_type, .. } => media_type,
        }
    }

    /// Bytes of the encoded image: the inline data's length, or the declared size.
    pub fn bytes(&self) -> u64 {
        match self {
            Self::Inline { data, .. } => data.len() as u64,
            Self::Ref { size, .. } => *size,
        }
    }

    /// A reference to bytes `agent` uploaded as `name` into `store`, with
    /// their digest and size (`name` must not contain `..` or start with `/`).
    pub fn by_reference(agent: &str, store: RefStore, name: &str, media_type: &str, bytes: &[u8]) -> Self {
        use sha2::Digest;
        Self::Ref { media_type: media_type.into(), store, bucket: None, key: ref_key(agent, store, name), sha256: sha2::Sha256::digest(bytes).to_vec(), size: bytes.len() as u64 }
    }

    /// Check a reference's form for `agent`: a key under the agent's own
    /// prefix (else `forbidden`), a well-formed key, a 32-byte digest, a
    /// size of 1..=`max_bytes` (else `too_large`). `Ok` for inline images.
    pub fn check_ref(&self, agent: &str, max_bytes: u64) -> Result<(), (ErrorCode, String)> {
        let Self::Ref { store, bucket, key, sha256, size, .. } = self else { return Ok(()) };
        let invalid = |what: String| Err((ErrorCode::Invalid, what));
        if key.is_empty() || key.len() > MAX_REF_KEY_BYTES {
            return invalid(format!("image key of {} bytes is outside 1..={MAX_REF_KEY_BYTES}", key.len()));
        }
        if key.starts_with('/') || key.ends_with('/') || key.split('/').any(|part| part.is_empty() || part == "." || part == "..") || key.chars().any(|c| c.is_control() || c == '\\') {
            return invalid(format!("image key {key:?} is not a plain relative path"));
        }
        if sha256.len() != 32 {
            return invalid(format!("image sha256 is {} bytes, not 32", sha256.len()));
        }
        if *size == 0 {
            return invalid("image size is 0".into());
        }
        match (store, bucket.as_deref()) {
            (RefStore::Jetstream, None) => {}
            (RefStore::Jetstream, Some(b)) if b == subjects::UPLOADS_BUCKET => {}
            (RefStore::Jetstream, Some(b)) => return Err((ErrorCode::Forbidden, format!("bucket {b:?} is not the uploads bucket {:?}", subjects::UPLOADS_BUCKET))),
            (RefStore::ObjectStore, Some(b)) => return invalid(format!("bucket {b:?} is only for store jetstream")),
            (RefStore::ObjectStore, None) => {}
        }
        let prefix = ref_key(agent, *store, "");
        if !key.starts_with(&prefix) {
            return Err((ErrorCode::Forbidden, format!("image key {key:?} is outside agent {agent:?}'s prefix {prefix:?}")));
        }
        if *size > max_bytes {
            return Err((ErrorCode::TooLarge, format!("image of {size} bytes exceeds the by-reference cap of {max_bytes} bytes")));
        }
        Ok(())
    }
}

/// The key of `agent`'s upload `name` in `store`: `<agent>/<name>` in the
/// JetStream bucket, `uploads/<agent>/<name>` in the object store.
pub fn ref_key(agent: &str, store: RefStore, name: &str) -> String {
    match store {
        RefStore::Jetstream => format!("{agent}/{name}"),
        RefStore::ObjectStore => format!("{}/{agent}/{name}", subjects::UPLOADS_PREFIX),
    }
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
    /// Files this one refers to by name and needs beside it (a textured OBJ's `.mtl`
    /// and `.png`); usually none, and then not sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<ResultPart>,
}

/// A file that belongs to a [`ResultFile`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultPart {
    /// The name the result file refers to it by; save it under this name beside it.
    pub name: String,
    /// Key in the object store.
    pub location: String,
    /// Fetchable URL.
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
    /// SHA-256 of the PNG, hex: signed with the event, so a preview fetched
    /// in unsigned chunks (or from a URL) can be checked. Absent from nodes
    /// older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
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
    /// What a print shop measures beyond mesh health. Sent only when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<PrintChecks>,
    /// Every finding with a stable code, errors (also in `problems`) and warnings.
    /// Sent only when not empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issues: Vec<PrintIssue>,
}

/// Print-shop measures of the object at its printed size, Z up, resting on the bed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PrintChecks {
    /// Connected parts.
    #[serde(default)]
    pub parts: u64,
    /// Parts whose lowest point is above the bed (they print in mid-air).
    #[serde(default)]
    pub floating_parts: u64,
    /// First-layer area: the object's cross-section 0.1 mm above the bed, where a
    /// slicer cuts a 0.2 mm first layer, mm² (≥ 0).
    #[serde(default)]
    pub bed_contact_mm2: f64,
    /// The centre of mass lies outside the bed contact: the part falls over.
    #[serde(default)]
    pub tips_over: bool,
    /// Area overhanging more than 45° from vertical (needs supports), mm².
    #[serde(default)]
    pub overhang_mm2: f64,
    /// That area over the surface area, 0–1.
    #[serde(default)]
    pub overhang_fraction: f64,
    /// Thinnest wall found, mm; absent when none was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_wall_mm: Option<f64>,
}

/// One printability finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrintIssue {
    /// Stable snake_case code: `floating_parts`, `disconnected_parts`, `tips_over`,
    /// `small_bed_contact`, `overhangs`, `thin_walls`, `too_small`, `not_closed`,
    /// `non_manifold_edges`, `pinched_vertices`, `inconsistent_winding`, `inward_faces`,
    /// `degenerate_faces`, `self_intersections`, `exceeds_build_volume`, `no_faces`.
    pub code: String,
    /// `error` (not printable as is) or `warning` (printable with care).
    pub severity: String,
    /// One lowercase sentence with the numbers.
    pub message: String,
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
    /// More about the cause, for people (never needed to branch on). Sent only when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Wait at least this long before sending again (429, 503). Sent only when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The job the answer is about, when known. Sent only when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<Uuid>,
}

impl Failure {
    /// A failure with the code's status and retryability.
    pub fn new(code: ErrorCode, error: impl Into<String>) -> Self {
        Self { code, status: code.status(), error: error.into(), retryable: code.retryable(), server_time_ms: None, detail: None, retry_after_ms: None, job_id: None }
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
        /// Estimated ms until the job is done, once the node has seen its
        /// model finish (from moving averages of stage times).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eta_ms: Option<u64>,
    },
    /// Moved to a stage.
    Progress {
        /// The stage.
        stage: Stage,
        /// Overall progress, 0–100.
        percent: u8,
        /// Estimated ms until the job is done, from the start of this stage.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eta_ms: Option<u64>,
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

/// An agent's signed question about one of its jobs, or one of its
/// batches, on `orfeas.status.<agent>` (request/reply; any node answers from
/// the records). Operation `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRequest {
    /// The job (absent when asking about a batch).
    #[serde(default)]
    pub job_id: Option<Uuid>,
    /// The batch (`SubmitBatch.batch_id`); sent only when asking about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<Uuid>,
}

/// Most jobs in one [`SubmitBatch`].
pub const MAX_BATCH_JOBS: usize = 64;

/// Many jobs in one signed message, on `orfeas.jobs.submit.<agent>`
/// (content type `application/orfeas.submit-batch.v1+cbor`, operation
/// `submit_batch`, events subject `orfeas.events.<agent>.<batch_id>`). Each
/// job is checked and admitted on its own (its events on its own subject,
/// `rejected` with its own code when it is refused); the batch's status
/// covers them all. The whole message shares one envelope cap (8 MiB).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubmitBatch {
    /// Chosen by the agent; names the batch in `status`.
    pub batch_id: Uuid,
    /// 1 to [`MAX_BATCH_JOBS`] jobs, each with its own `job_id`.
    pub jobs: Vec<SubmitJob>,
}

impl SubmitBatch {
    /// Sign this batch as `agent` and return `(subject, envelope bytes)`.
    pub fn seal(&self, agent: &str, key: &SecretKey, audience: &str, now_s: u64, lifetime_s: u64) -> (String, Vec<u8>) {
        let subject = subjects::submit(agent);
        let events = subjects::events(agent, &self.batch_id);
        let claims = Claims::new(agent, audience, now_s, lifetime_s);
        let header = Seal { kind: ContentKind::SubmitBatch, claims: &claims, op: "submit_batch", events_subject: Some(&events) };
        let bytes = envelope::seal(&header, crate::to_cbor(self), &subject, key);
        (subject, bytes)
    }
}

impl StatusRequest {
    /// Sign this request as `agent`; returns `(subject, envelope bytes)`.
    pub fn seal(&self, agent: &str, key: &SecretKey, audience: &str, now_s: u64) -> (String, Vec<u8>) {
        seal_request(ContentKind::StatusRequest, "status", &subjects::status(agent), crate::to_cbor(self), agent, key, audience, now_s)
    }
}

/// An agent's signed request to cancel one of its jobs, on
/// `orfeas.cancel.<agent>` (request/reply). Operation `cancel`. A queued job
/// ends at once (`failed` with code `canceled`); a running one ends as
/// `canceled` when its node notices; a finished one is left as it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// The job.
    pub job_id: Uuid,
}

impl CancelRequest {
    /// Sign this request as `agent`; returns `(subject, envelope bytes)`.
    pub fn seal(&self, agent: &str, key: &SecretKey, audience: &str, now_s: u64) -> (String, Vec<u8>) {
        seal_request(ContentKind::CancelRequest, "cancel", &subjects::cancel(agent), crate::to_cbor(self), agent, key, audience, now_s)
    }
}

/// Lifetime of signed requests (status, cancel, fetch), seconds.
pub const REQUEST_LIFETIME_S: u64 = 60;

#[allow(clippy::too_many_arguments)]
fn seal_request(kind: ContentKind, op: &str, subject: &str, payload: Vec<u8>, agent: &str, key: &SecretKey, audience: &str, now_s: u64) -> (String, Vec<u8>) {
    let claims = Claims::new(agent, audience, now_s, REQUEST_LIFETIME_S);
    let header = Seal { kind, claims: &claims, op, events_subject: None };
    (subject.to_string(), envelope::seal(&header, payload, subject, key))
}

/// NATS header on a node's reply to a status or cancel request: hex of a
/// COSE_Sign1 with a detached payload (content type
/// `application/orfeas.reply.v1+cbor`, operation `status` or `cancel`)
/// signed with the node's event key over the reply body as sent, bound to
/// the request's subject, with `iss` = the node id and `cti` = the
/// request's `cti`. Verify it with [`open_reply`].
pub const REPLY_SIGNATURE_HEADER: &str = "Orfeas-Signature";

/// The [`REPLY_SIGNATURE_HEADER`] value for `reply` (the body's bytes) that
/// node `node` sends to a request with nonce `request_cti` received on
/// `request_subject`.
#[allow(clippy::too_many_arguments)]
pub fn seal_reply(reply: &[u8], node: &str, key: &SecretKey, audience: &str, op: &str, request_subject: &str, request_cti: &[u8], now_s: u64) -> String {
    let mut claims = Claims::new(node, audience, now_s, REQUEST_LIFETIME_S);
    if !request_cti.is_empty() {
        claims.cti = request_cti.to_vec();
    }
    let header = Seal { kind: ContentKind::Reply, claims: &claims, op, events_subject: None };
    hex::encode(envelope::seal_detached(&header, reply, request_subject, key))
}

/// Decode a [`REPLY_SIGNATURE_HEADER`] value over the reply body `reply`;
/// the caller checks the node's key ([`Opened::verify`] with the request
/// subject), `claims.cti` against its request's and `claims.aud`.
pub fn open_reply(signature_hex: &str, reply: &[u8]) -> Result<crate::Opened, crate::EnvelopeError> {
    let bytes = hex::decode(signature_hex.trim()).map_err(|e| crate::EnvelopeError::Malformed(format!("reply signature is not hex: {e}")))?;
    envelope::open_detached(&bytes, reply, 4096, ContentKind::Reply)
}

/// Where a job is, as a status or cancel reply tells it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job.
    pub job_id: Uuid,
    /// `admitted` (queued), `running`, `completed`, `failed` or `canceled`.
    pub state: String,
    /// The lane it waits or waited in.
    pub lane: Lane,
    /// Delivery attempt that last took it (0 = never started).
    pub attempt: u64,
    /// The node that last changed it.
    pub node: String,
    /// Last change, ms since the epoch.
    pub updated_at_ms: u64,
    /// A cancel was asked for while it was running.
    #[serde(default)]
    pub cancel_requested: bool,
    /// The terminal event's kind (`completed` or `failed`), once there is one.
    #[serde(default)]
    pub terminal: Option<EventKind>,
    /// The seq the terminal event was published with.
    #[serde(default)]
    pub terminal_seq: u64,
    /// What the job runs with, as admitted: the request after the node
    /// filled in what it decides at the door (formats default to `glb`,
    /// repeats dropped). Absent for jobs admitted before this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<AdmittedRequest>,
}

/// The parameters a job was admitted with (its image is not repeated).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdmittedRequest {
    /// The model.
    pub model: String,
    /// The files it makes, in order.
    pub formats: Vec<Format>,
    /// Its parameters as signed (absent = the documented default).
    pub params: JobParams,
}

/// A node's answer to a [`StatusRequest`] or [`CancelRequest`] (plain CBOR
/// in the body, as before; signed by the node in the
/// [`REPLY_SIGNATURE_HEADER`] header).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusReply {
    /// The job's state (after the cancel, for a cancel).
    Job(JobStatus),
    /// A batch: the state of each admitted job, and the refused ones.
    Batch {
        /// The batch.
        batch_id: Uuid,
        /// Its admitted jobs.
        jobs: Vec<JobStatus>,
        /// Its refused jobs (each `Failure` names its `job_id`).
        rejected: Vec<Failure>,
    },
    /// Refused or not available.
    Error(Failure),
}

/// Ask for the models a deployment serves (request on
/// [`subjects::MODELS_LIST`](crate::subjects::MODELS_LIST); any one node answers).
/// Plain CBOR, unsigned: the answer is public configuration, not a job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListModels {}

/// The answer to [`ListModels`]: the manifests of the models the answering
/// node has loaded (every node of a deployment is meant to serve the same set).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    /// The node that answered.
    pub node: String,
    /// Its models, sorted by name.
    pub models: Vec<ModelInfo>,
}

/// One model's manifest as agents see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Name to put in `SubmitJob.model`.
    pub name: String,
    /// Version of the model file.
    pub version: String,
    /// One line.
    #[serde(default)]
    pub description: String,
    /// Input [H, W] in pixels the image is resized to.
    pub input_size: [u32; 2],
    /// `occupancy` (value > iso is solid) or `sdf` (value < iso is solid).
    pub output_kind: String,
    /// Output grid [D, H, W] = world [z, y, x], samples.
    pub grid: [u32; 3],
    /// World bounds (x, y, z) of the first and last grid sample, model units.
    pub bounds_min: [f32; 3],
    /// See `bounds_min`.
    pub bounds_max: [f32; 3],
    /// Largest batch the model runs.
    pub max_batch: u32,
    /// `fp32`, `fp16` or `bf16` (on CUDA).
    pub precision: String,
    /// `object` (cut out and centred) or `full_frame` (the whole image).
    #[serde(default)]
    pub preprocess: String,
    /// The model's parameters (`JobParams.model_params`) in column order.
    #[serde(default)]
    pub params: Vec<ModelParamInfo>,
}

/// One parameter a model accepts per job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelParamInfo {
    /// Name in `model_params`.
    pub name: String,
    /// Value when the job does not set it.
    pub default: f64,
    /// A boolean (send `true`/`false` or 1/0).
    #[serde(default)]
    pub boolean: bool,
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
    /// The lane it waits in (the agent's, or lower if the job asked).
    #[serde(default)]
    pub lane: Lane,
    /// The `submit_batch` it came in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<Uuid>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_round_trip_through_cbor() {
        let kinds = vec![
            EventKind::Accepted { queue_position: 3, eta_ms: None },
            EventKind::Accepted { queue_position: 3, eta_ms: Some(1_500) },
            EventKind::Progress { stage: Stage::Meshing, percent: 60, eta_ms: None },
            EventKind::Progress { stage: Stage::Meshing, percent: 60, eta_ms: Some(700) },
            EventKind::Completed {
                results: vec![ResultFile { format: Format::Glb, location: "a/b.glb".into(), url: "file:///a/b.glb".into(), bytes: 10, sha256: "00".into(), parts: vec![] }],
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
    fn texture_build_volume_and_parts_are_sent_only_when_used() {
        let plain = JobParams { target_faces: Some(1_000), ..Default::default() };
        let textured = JobParams { texture: true, build_volume_mm: Some([180.0, 180.0, 180.0]), ..plain.clone() };
        // Absent when false: the encoding of older jobs is unchanged.
        assert_eq!(crate::to_cbor(&plain), crate::to_cbor(&JobParamsBefore { target_faces: Some(1_000), size_mm: None, smooth: None, colour: None, previews: None }));
        assert!(crate::to_cbor(&textured).len() > crate::to_cbor(&plain).len());
        assert_eq!(crate::from_cbor::<JobParams>(&crate::to_cbor(&textured)).unwrap(), textured);
        let part = ResultPart { name: "model.mtl".into(), location: "a/model.mtl".into(), url: "file:///a/model.mtl".into(), bytes: 3, sha256: "11".into() };
        let file = ResultFile { format: Format::Obj, location: "a/model.obj".into(), url: "file:///a/model.obj".into(), bytes: 9, sha256: "00".into(), parts: vec![part] };
        assert_eq!(crate::from_cbor::<ResultFile>(&crate::to_cbor(&file)).unwrap(), file);
        let bare = ResultFile { parts: vec![], ..file.clone() };
        assert!(crate::to_cbor(&bare).len() < crate::to_cbor(&file).len());
        assert_eq!(crate::from_cbor::<ResultFile>(&crate::to_cbor(&bare)).unwrap(), bare);

        #[derive(Serialize)]
        struct JobParamsBefore {
            target_faces: Option<u32>,
            size_mm: Option<f32>,
            smooth: Option<bool>,
            colour: Option<bool>,
            previews: Option<bool>,
        }
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
        assert!(JobParams { build_volume_mm: Some([220.0, 220.0, 250.0]), ..Default::default() }.validate().is_ok());
        assert!(JobParams { build_volume_mm: Some([220.0, 0.0, 250.0]), ..Default::default() }.validate().unwrap_err().contains("build_volume_mm"));
        assert!(JobParams { build_volume_mm: Some([f32::INFINITY, 1.0, 1.0]), ..Default::default() }.validate().is_err());
    }

    #[test]
    fn model_params_accept_numbers_and_booleans_and_old_encodings_stay_unchanged() {
        use ciborium::Value;
        let map = Value::Map(vec![(
            Value::Text("model_params".into()),
            Value::Map(vec![
                (Value::Text("invert".into()), Value::Bool(true)),
                (Value::Text("max_height".into()), Value::Float(0.5)),
                (Value::Text("steps".into()), Value::Integer(3.into())),
            ]),
        )]);
        let params: JobParams = crate::from_cbor(&crate::to_cbor(&map)).unwrap();
        assert_eq!(params.model_params, BTreeMap::from([("invert".into(), 1.0), ("max_height".into(), 0.5), ("steps".into(), 3.0)]));
        let text = Value::Map(vec![(Value::Text("model_params".into()), Value::Map(vec![(Value::Text("x".into()), Value::Text("high".into()))]))]);
        assert!(crate::from_cbor::<JobParams>(&crate::to_cbor(&text)).is_err());
        // Jobs without model parameters encode exactly as before the field existed.
        let plain = JobParams { target_faces: Some(500), ..Default::default() };
        let decoded: Value = crate::from_cbor(&crate::to_cbor(&plain)).unwrap();
        assert_eq!(decoded.as_map().unwrap().len(), 5);
        let nan = JobParams { model_params: BTreeMap::from([("h".into(), f64::NAN)]), ..Default::default() };
        assert!(nan.validate().unwrap_err().contains("model_params.h"));
    }

    #[test]
    fn model_list_round_trips() {
        let list = ModelList {
            node: "n1".into(),
            models: vec![ModelInfo {
                name: "relief".into(),
                version: "1.0.0".into(),
                description: String::new(),
                input_size: [128, 128],
                output_kind: "occupancy".into(),
                grid: [48, 96, 96],
                bounds_min: [-1.0; 3],
                bounds_max: [1.0; 3],
                max_batch: 16,
                precision: "fp32".into(),
                preprocess: "full_frame".into(),
                params: vec![ModelParamInfo { name: "invert".into(), default: 0.0, boolean: true }],
            }],
        };
        let back: ModelList = crate::from_cbor(&crate::to_cbor(&list)).unwrap();
        assert_eq!(back, list);
        let _: ListModels = crate::from_cbor(&crate::to_cbor(&ListModels {})).unwrap();
    }

    #[test]
    fn references_are_checked_for_form_prefix_and_size() {
        let image = ImageInput::by_reference("alice", RefStore::Jetstream, "a/b.png", "image/png", b"bytes");
        let ImageInput::Ref { key, sha256, size, .. } = &image else { panic!("{image:?}") };
        assert_eq!((key.as_str(), sha256.len(), *size), ("alice/a/b.png", 32, 5));
        assert_eq!((image.bytes(), image.media_type()), (5, "image/png"));
        assert!(image.check_ref("alice", 5).is_ok());
        assert_eq!(image.check_ref("alice", 4).unwrap_err().0, ErrorCode::TooLarge);
        assert_eq!(image.check_ref("bob", 5).unwrap_err().0, ErrorCode::Forbidden);
        assert_eq!(image.check_ref("alic", 5).unwrap_err().0, ErrorCode::Forbidden, "a prefix of the name is not the prefix");
        let stored = ImageInput::by_reference("alice", RefStore::ObjectStore, "b.png", "image/png", b"bytes");
        assert!(stored.check_ref("alice", 5).is_ok());
        let with = |image: &ImageInput, edit: &dyn Fn(&mut Option<String>, &mut String, &mut Vec<u8>, &mut u64)| {
            let mut image = image.clone();
            let ImageInput::Ref { bucket, key, sha256, size, .. } = &mut image else { unreachable!() };
            edit(bucket, key, sha256, size);
            image.check_ref("alice", 1 << 20).map_err(|(code, _)| code)
        };
        for key in ["", "alice/", "/alice/x", "alice//x", "alice/./x", "alice/../bob/x", "alice/x\\y", "alice/x\ny"] {
            assert_eq!(with(&image, &|_, k, _, _| *k = key.into()), Err(ErrorCode::Invalid), "{key:?}");
        }
        assert_eq!(with(&image, &|_, k, _, _| *k = format!("alice/{}", "x".repeat(MAX_REF_KEY_BYTES))), Err(ErrorCode::Invalid));
        assert_eq!(with(&image, &|_, _, sha, _| sha.push(0)), Err(ErrorCode::Invalid));
        assert_eq!(with(&image, &|_, _, _, size| *size = 0), Err(ErrorCode::Invalid));
        assert_eq!(with(&image, &|b, _, _, _| *b = Some(subjects::UPLOADS_BUCKET.into())), Ok(()));
        assert_eq!(with(&image, &|b, _, _, _| *b = Some("other".into())), Err(ErrorCode::Forbidden));
        assert_eq!(with(&stored, &|b, _, _, _| *b = Some(subjects::UPLOADS_BUCKET.into())), Err(ErrorCode::Invalid));
        assert_eq!(with(&stored, &|_, k, _, _| *k = "alice/b.png".into()), Err(ErrorCode::Forbidden), "object store keys live under uploads/");
        // Inline images have nothing to check here, and decode as before.
        assert!(ImageInput::Inline { media_type: "image/png".into(), data: vec![] }.check_ref("x", 0).is_ok());
        let back: ImageInput = crate::from_cbor(&crate::to_cbor(&image)).unwrap();
        assert_eq!(back, image);
        let value: ciborium::Value = crate::from_cbor(&crate::to_cbor(&image)).unwrap();
        let (tag, fields) = &value.as_map().unwrap()[0];
        assert_eq!(tag.as_text(), Some("ref"));
        assert_eq!(fields.as_map().unwrap().len(), 5, "bucket is left out when unset");
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = crate::to_cbor(&Stage::Queued);
        bytes.push(0);
        assert!(crate::from_cbor::<Stage>(&bytes).is_err());
    }
}
