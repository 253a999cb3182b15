//! Models as data: `models/<name>/manifest.toml` + `model.pt` (TorchScript).
//! A model is loaded once per device, checked against its manifest with
//! warm-up forward passes (B = 1, and B = 2 when the model batches), and
//! kept resident. On CUDA the warm-up also measures the memory one more
//! batch item costs.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Instant,
};

use serde::{Deserialize, Serialize};
use tch::{CModule, Device, Kind, Tensor};

use crate::device::MemoryProbe;

/// What a model's volume means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// value > iso is solid.
    Occupancy,
    /// value < iso is solid (signed distance, negative inside).
    Sdf,
}

/// Numeric precision of the forward pass on CUDA (CPU always runs fp32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// 32-bit float.
    Fp32,
    /// 16-bit float.
    Fp16,
    /// bfloat16.
    Bf16,
}

/// How an image becomes the model's input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreprocessMode {
    /// Cut the object out (alpha, or a plain background keyed from the
    /// border), crop to it, recentre with a margin.
    #[default]
    Object,
    /// The whole image, letterboxed into a square with transparent pixels;
    /// alpha kept as given, no background keying (reliefs, lithophanes).
    FullFrame,
}

/// A model's manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Name used in jobs.
    pub name: String,
    /// Version of the model file.
    pub version: String,
    /// One line.
    #[serde(default)]
    pub description: String,
    /// Input [H, W].
    pub input_size: [usize; 2],
    /// Input channels (4 = RGBA).
    pub input_channels: usize,
    /// Meaning of the output.
    pub output_kind: OutputKind,
    /// Output [D, H, W].
    pub grid: [usize; 3],
    /// Surface level.
    pub iso: f32,
    /// World bounds (x, y, z) of the grid's first sample.
    pub bounds_min: [f32; 3],
    /// World bounds (x, y, z) of the grid's last sample.
    pub bounds_max: [f32; 3],
    /// Peak memory per batch item, MiB.
    pub mem_per_item_mb: f64,
    /// Precision on CUDA.
    pub precision: Precision,
    /// Largest batch the model accepts.
    pub max_batch: usize,
    /// How images are prepared for it.
    #[serde(default)]
    pub preprocess: PreprocessMode,
    /// Defaults of the model's optional per-job parameters (second forward
    /// input, `[B, n]`, columns in the table's order).
    #[serde(default)]
    pub params: toml::Table,
}

/// One per-job parameter of a model (a column of its params input).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// Name in the manifest and in `JobParams.model_params`.
    pub name: String,
    /// Value when the job does not set it.
    pub default: f64,
    /// Booleans are 0.0 / 1.0 in the tensor.
    pub boolean: bool,
}

impl Manifest {
    /// The parameters in column order.
    pub fn param_specs(&self) -> Result<Vec<ParamSpec>, String> {
        self.params
            .iter()
            .map(|(name, value)| {
                let (default, boolean) = match value {
                    toml::Value::Float(f) => (*f, false),
                    toml::Value::Integer(i) => (*i as f64, false),
                    toml::Value::Boolean(b) => (if *b { 1.0 } else { 0.0 }, true),
                    other => {
                        return Err(format!(
                            "params.{name} is a {}, not a number or boolean",
                            other.type_str()
                        ))
                    }
                };
                Ok(ParamSpec {
                    name: name.clone(),
                    default,
                    boolean,
                })
            })
            .collect()
    }

    /// One job's params row: its `model_params` over the defaults. Unknown
    /// names and booleans other than 0 / 1 are refused (the error names them).
    pub fn param_row(&self, given: &BTreeMap<String, f64>) -> Result<Vec<f32>, String> {
        let specs = self.param_specs()?;
        if let Some(unknown) = given.keys().find(|k| !specs.iter().any(|s| &s.name == *k)) {
            let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(format!(
                "model {} has no parameter {unknown:?} (it has: {})",
                self.name,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
        }
        specs
            .iter()
            .map(|spec| {
                let value = given.get(&spec.name).copied().unwrap_or(spec.default);
                if !value.is_finite() {
                    return Err(format!(
                        "model_params.{} = {value} is not a finite number",
                        spec.name
                    ));
                }
                if spec.boolean && value != 0.0 && value != 1.0 {
                    return Err(format!(
                        "model_params.{} = {value} must be a boolean (true/false or 1/0)",
                        spec.name
                    ));
                }
                Ok(value as f32)
            })
            .collect()
    }

    /// The manifest as agents see it (`list_models`).
    pub fn info(&self) -> orfeas_wire::v1::ModelInfo {
        orfeas_wire::v1::ModelInfo {
            name: self.name.clone(),
            version: self.version.clone(),
            description: self.description.clone(),
            input_size: [self.input_size[0] as u32, self.input_size[1] as u32],
            output_kind: match self.output_kind {
                OutputKind::Occupancy => "occupancy",
                OutputKind::Sdf => "sdf",
            }
            .into(),
            grid: [
                self.grid[0] as u32,
                self.grid[1] as u32,
                self.grid[2] as u32,
            ],
            bounds_min: self.bounds_min,
            bounds_max: self.bounds_max,
            max_batch: self.max_batch as u32,
            precision: match self.precision {
                Precision::Fp32 => "fp32",
                Precision::Fp16 => "fp16",
                Precision::Bf16 => "bf16",
            }
            .into(),
            preprocess: match self.preprocess {
                PreprocessMode::Object => "object",
                PreprocessMode::FullFrame => "full_frame",
            }
            .into(),
            params: self
                .param_specs()
                .unwrap_or_default()
                .into_iter()
                .map(|p| orfeas_wire::v1::ModelParamInfo {
                    name: p.name,
                    default: p.default,
                    boolean: p.boolean,
                })
                .collect(),
        }
    }

    /// Memory one batch item needs per the manifest, bytes.
    pub fn mem_per_item_bytes(&self) -> u64 {
        (self.mem_per_item_mb.max(0.0) * 1024.0 * 1024.0) as u64
    }
}

/// A model that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Manifest missing or invalid.
    #[error("model manifest {path}: {detail}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The pipeline declaration (`pipeline.toml`) is refused.
    #[error(transparent)]
    Pipeline(#[from] crate::stages::PipelineError),
    /// TorchScript file could not be loaded.
    #[error("model {name} failed to load from {path}: {detail}")]
    Load {
        /// Model.
        name: String,
        /// The file.
        path: PathBuf,
        /// libtorch's message.
        detail: String,
    },
    /// The warm-up output did not match the manifest.
    #[error("model {name} breaks its contract: {detail}")]
    Contract {
        /// Model.
        name: String,
        /// What differed.
        detail: String,
    },
    /// The forward pass failed.
    #[error("model {name} forward failed: {detail}")]
    Forward {
        /// Model.
        name: String,
        /// libtorch's message.
        detail: String,
        /// The device ran out of memory.
        out_of_memory: bool,
        /// The device is unusable after this error (see [`device_lost`]).
        device_lost: bool,
    },
}

impl ModelError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Manifest { .. } => "model_manifest",
            Self::Pipeline(e) => e.code(),
            Self::Load { .. } => "model_load",
            Self::Contract { .. } => "model_contract",
            Self::Forward {
                out_of_memory: true,
                ..
            } => "out_of_memory",
            Self::Forward {
                device_lost: true,
                ..
            } => "device_lost",
            Self::Forward { .. } => "forward_failed",
        }
    }
}

/// Read the manifests of `names` (all models in `dir` when empty), sorted by name.
pub fn read_manifests(
    dir: &Path,
    names: &[String],
) -> Result<Vec<(Manifest, PathBuf)>, ModelError> {
    let mut wanted: Vec<String> = names.to_vec();
    if wanted.is_empty() {
        let entries = std::fs::read_dir(dir).map_err(|e| ModelError::Manifest {
            path: dir.to_path_buf(),
            detail: e.to_string(),
        })?;
        for entry in entries.flatten() {
            if entry.path().join("manifest.toml").is_file() {
                wanted.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    wanted.sort();
    wanted.dedup();
    let mut out = Vec::new();
    for name in wanted {
        let path = dir.join(&name).join("manifest.toml");
        let err = |detail: String| ModelError::Manifest {
            path: path.clone(),
            detail,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        if manifest.name != name {
            return Err(err(format!(
                "name {:?} differs from its folder {name:?}",
                manifest.name
            )));
        }
        if manifest.input_channels != 4
            || manifest.grid.iter().any(|&n| n < 2)
            || manifest.max_batch == 0
        {
            return Err(err(
                "needs input_channels = 4, every grid side >= 2, max_batch >= 1".into(),
            ));
        }
        if manifest.input_size.iter().any(|&n| n == 0) || !(manifest.mem_per_item_mb >= 0.0) {
            return Err(err(
                "needs a non-empty input_size and mem_per_item_mb >= 0".into()
            ));
        }
        manifest.param_specs().map_err(err)?;
        out.push((manifest, dir.join(&name).join("model.pt")));
    }
    if out.is_empty() {
        return Err(ModelError::Manifest {
            path: dir.to_path_buf(),
            detail: "no models found".into(),
        });
    }
    Ok(out)
}

/// The tensor kind a model computes in on `device`: the manifest's
/// precision on CUDA, fp32 on the CPU (half precision there is slow and
/// partly unsupported).
pub fn compute_kind(device: Device, precision: Precision) -> Kind {
    match (device, precision) {
        (Device::Cuda(_), Precision::Fp16) => Kind::Half,
        (Device::Cuda(_), Precision::Bf16) => Kind::BFloat16,
        _ => Kind::Float,
    }
}

/// Whether input batches are staged in pinned (page-locked) host memory:
/// only for CUDA, where it makes the host-to-device copy asynchronous and
/// faster; pinning needs a CUDA runtime.
pub fn pins_host_memory(device: Device) -> bool {
    device.is_cuda()
}

/// Per-item memory cost from free memory measured after a B = 1 and a
/// B = 2 warm-up pass; the manifest's figure when the measurement shows
/// nothing (the allocator reused its cache, or free memory is unknown).
pub fn per_item_cost(
    free_after_one: Option<u64>,
    free_after_two: Option<u64>,
    manifest_bytes: u64,
) -> u64 {
    match (free_after_one, free_after_two) {
        (Some(one), Some(two)) if one > two => one - two,
        _ => manifest_bytes,
    }
}

/// Timings of loading one model on one device.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadTimes {
    /// Reading the TorchScript file onto the device.
    pub load_seconds: f64,
    /// The warm-up forward passes (contract check included).
    pub warmup_seconds: f64,
}

/// A model resident on one device.
pub struct LoadedModel {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its parameters in column order (empty: the model takes images only).
    pub params: Vec<ParamSpec>,
    /// Memory one more batch item costs on this device, bytes: measured at
    /// warm-up on CUDA, the manifest's figure on the CPU.
    pub per_item_bytes: u64,
    /// How long loading and warming took.
    pub times: LoadTimes,
    resident: Resident,
}

/// A TorchScript module resident on one device in eval mode, computing in the kind its
/// precision gives there: what 3-D models and the learned matting stage
/// (`learned_matte.rs`) share, so both stage inputs, pin memory and pick precision alike.
pub(crate) struct Resident {
    module: CModule,
    device: Device,
    kind: Kind,
}

impl Resident {
    /// Load `path` onto `device` in eval mode, converted to `precision` there ([`compute_kind`]).
    pub(crate) fn load(path: &Path, device: Device, precision: Precision) -> Result<Self, tch::TchError> {
        let mut module = CModule::load_on_device(path, device)?;
        module.set_eval();
        let kind = compute_kind(device, precision);
        // Always: an fp16 export (how released weights ship) computes in fp32
        // on the CPU, and its inputs arrive in fp32 there. A no-op when the
        // weights already are `kind`.
        module.to(device, kind, false);
        Ok(Self { module, device, kind })
    }

    /// The device it lives on.
    pub(crate) fn device(&self) -> Device {
        self.device
    }

    /// Run `input` (a CPU tensor, computed in the module's kind) and `params` (kept
    /// fp32) and return the output as a contiguous fp32 CPU tensor. No gradients; on
    /// CUDA the inputs are staged in pinned memory and copied asynchronously.
    pub(crate) fn forward(&self, input: &Tensor, params: Option<&Tensor>) -> Result<Tensor, tch::TchError> {
        tch::no_grad(|| {
            let to_device = |t: &Tensor, kind: Kind| -> Result<Tensor, tch::TchError> {
                if !self.device.is_cuda() {
                    return Ok(if t.kind() == kind { t.shallow_clone() } else { t.to_kind(kind) });
                }
                let staged = if pins_host_memory(self.device) && !t.is_pinned(self.device) {
                    t.f_pin_memory(self.device)
                } else {
                    Ok(t.shallow_clone())
                };
                // Non-blocking from pinned memory: the copy overlaps with
                // whatever the stream is still doing; `staged` outlives it.
                staged.and_then(|s| s.f_to_device_(self.device, kind, true, false))
            };
            let input = to_device(input, self.kind)?;
            let out = match params {
                Some(p) => {
                    let p = to_device(p, Kind::Float)?;
                    self.module.forward_ts(&[input, p])
                }
                None => self.module.forward_ts(&[input]),
            }?;
            out.f_to_kind(Kind::Float).and_then(|o| o.f_to_device(Device::Cpu)).and_then(|o| o.f_contiguous())
        })
    }
}

impl LoadedModel {
    /// Load `path` onto `device` and check it against `manifest` with
    /// warm-up passes of one and (when the model batches) two items; on
    /// CUDA `memory` measures what the second item cost.
    pub fn load(
        manifest: Manifest,
        path: &Path,
        device: Device,
        memory: &MemoryProbe,
    ) -> Result<Self, ModelError> {
        let started = Instant::now();
        let load_error = |detail: String| ModelError::Load {
            name: manifest.name.clone(),
            path: path.to_path_buf(),
            detail,
        };
        let resident = Resident::load(path, device, manifest.precision)
            .map_err(|e| load_error(e.to_string()))?;
        let params = manifest.param_specs().map_err(load_error)?;
        let load_seconds = started.elapsed().as_secs_f64();
        let per_item_bytes = manifest.mem_per_item_bytes();
        let mut model = Self {
            manifest,
            params,
            per_item_bytes,
            times: LoadTimes::default(),
            resident,
        };
        let started = Instant::now();
        model.probe(1)?;
        let free_after_one = if device.is_cuda() {
            memory.free_bytes()
        } else {
            None
        };
        if model.manifest.max_batch >= 2 {
            model.probe(2)?;
        }
        if device.is_cuda() && model.manifest.max_batch >= 2 {
            model.per_item_bytes =
                per_item_cost(free_after_one, memory.free_bytes(), per_item_bytes);
        }
        model.times = LoadTimes {
            load_seconds,
            warmup_seconds: started.elapsed().as_secs_f64(),
        };
        Ok(model)
    }

    /// Run `n` blank items (with default params) and check the output shape.
    fn probe(&self, n: i64) -> Result<(), ModelError> {
        let [h, w] = self.manifest.input_size;
        let images = Tensor::zeros([n, 4, h as i64, w as i64], (Kind::Float, Device::Cpu));
        let params = self.default_params(n as usize);
        let out = self.forward(&images, params.as_ref())?;
        let want: Vec<i64> = std::iter::once(n)
            .chain(self.manifest.grid.iter().map(|&g| g as i64))
            .collect();
        if out.size() != want {
            return Err(ModelError::Contract {
                name: self.manifest.name.clone(),
                detail: format!(
                    "output shape {:?} for a batch of {n}, manifest says {:?}",
                    out.size(),
                    want
                ),
            });
        }
        Ok(())
    }

    /// `[n, P]` rows of the default parameters, or `None` for a model without.
    pub fn default_params(&self, n: usize) -> Option<Tensor> {
        if self.params.is_empty() {
            return None;
        }
        let row: Vec<f32> = self.params.iter().map(|p| p.default as f32).collect();
        let flat: Vec<f32> = row.iter().copied().cycle().take(n * row.len()).collect();
        Some(Tensor::from_slice(&flat).view([n as i64, row.len() as i64]))
    }

    /// The device it lives on.
    pub fn device(&self) -> Device {
        self.resident.device()
    }

    /// Run a [B, 4, H, W] float batch (on the CPU; `params` [B, P] for
    /// models with parameters) and return the [B, D, H, W] float volume on
    /// the CPU. No gradients; on CUDA the batch is staged in pinned memory,
    /// copied asynchronously and computed in the manifest's precision.
    pub fn forward(&self, batch: &Tensor, params: Option<&Tensor>) -> Result<Tensor, ModelError> {
        self.resident
            .forward(batch, params)
            .map_err(|e| forward_error(&self.manifest.name, e))
    }
}

/// A forward error of model `name`, classified (out of memory, device lost).
pub(crate) fn forward_error(name: &str, e: tch::TchError) -> ModelError {
    let detail = e.to_string();
    let lower = detail.to_ascii_lowercase();
    // "CUDA out of memory", "DefaultCPUAllocator: ... out of memory", cuBLAS' allocation failure.
    let out_of_memory =
        lower.contains("out of memory") || lower.contains("cublas_status_alloc_failed");
    ModelError::Forward {
        name: name.to_string(),
        device_lost: !out_of_memory && device_lost(&lower),
        detail,
        out_of_memory,
    }
}

/// CUDA errors after which the device's context is unusable for the rest
/// of the process ("sticky" errors: every later call fails the same way),
/// by the wording libtorch passes on. Anything else is an error of this
/// batch only.
pub fn device_lost(lower: &str) -> bool {
    const STICKY: [&str; 7] = [
        "illegal memory access",
        "device-side assert",
        "unspecified launch failure",
        "misaligned address",
        "illegal instruction",
        "uncorrectable ecc error",
        "cuda error: launch timed out",
    ];
    STICKY.iter().any(|s| lower.contains(s))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The repository's models folder.
    pub(crate) fn models_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
    }

    pub(crate) fn inflate() -> (Manifest, PathBuf) {
        read_manifests(&models_dir(), &["inflate".to_string()])
            .unwrap()
            .remove(0)
    }

    fn disc(h: usize, w: usize, radius: f32) -> Vec<f32> {
        let mut chw = vec![0f32; 4 * h * w];
        for y in 0..h {
            for x in 0..w {
                let (dx, dy) = (x as f32 - w as f32 / 2.0, y as f32 - h as f32 / 2.0);
                let inside = (dx * dx + dy * dy).sqrt() < radius;
                for c in 0..4 {
                    chw[c * h * w + y * w + x] = if inside { 1.0 } else { 0.0 };
                }
            }
        }
        chw
    }

    #[test]
    fn built_in_models_have_valid_manifests() {
        let all = read_manifests(&models_dir(), &[]).unwrap();
        let names: Vec<&str> = all.iter().map(|(m, _)| m.name.as_str()).collect();
        assert!(
            names.contains(&"inflate") && names.contains(&"null"),
            "{names:?}"
        );
        assert!(read_manifests(&models_dir(), &["nope".to_string()]).is_err());
    }

    #[test]
    fn sticky_cuda_errors_count_as_a_lost_device_and_others_do_not() {
        for lost in [
            "CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be asynchronously reported",
            "CUDA error: device-side assert triggered",
            "CUDA error: unspecified launch failure",
        ] {
            assert!(device_lost(&lost.to_ascii_lowercase()), "{lost}");
        }
        for batch_only in [
            "CUDA out of memory. Tried to allocate 2.00 GiB",
            "Expected 4-dimensional input for 4-dimensional weight",
            "orfeas test model: this item is refused (fault = 1)",
        ] {
            assert!(!device_lost(&batch_only.to_ascii_lowercase()), "{batch_only}");
        }
    }

    #[test]
    fn inflate_runs_batched_and_items_are_independent() {
        let (manifest, path) = inflate();
        let [h, w] = manifest.input_size;
        let model =
            LoadedModel::load(manifest.clone(), &path, Device::Cpu, &MemoryProbe::cpu()).unwrap();
        let small = disc(h, w, 20.0);
        let large = disc(h, w, 50.0);
        let batch =
            Tensor::from_slice(&[small.clone(), large].concat()).view([2, 4, h as i64, w as i64]);
        let out = model.forward(&batch, None).unwrap();
        let grid: Vec<i64> = manifest.grid.iter().map(|&n| n as i64).collect();
        assert_eq!(out.size(), [vec![2], grid].concat());
        let alone = model
            .forward(
                &Tensor::from_slice(&small).view([1, 4, h as i64, w as i64]),
                None,
            )
            .unwrap();
        let diff = (out.get(0) - alone.get(0)).abs().max().double_value(&[]);
        assert!(
            diff < 1e-5,
            "batch item differs from running it alone by {diff}"
        );
        // The larger disc has more solid samples.
        let solid = |t: &Tensor| t.gt(manifest.iso as f64).sum(Kind::Int64).int64_value(&[]);
        assert!(solid(&out.get(1)) > 2 * solid(&out.get(0)));
        assert!(solid(&out.get(0)) > 0);
    }

    #[test]
    fn contract_violation_is_reported_at_load() {
        let (mut manifest, path) = inflate();
        manifest.grid = [10, 10, 10];
        match LoadedModel::load(manifest, &path, Device::Cpu, &MemoryProbe::cpu()) {
            Err(e @ ModelError::Contract { .. }) => assert_eq!(e.code(), "model_contract"),
            other => panic!("expected a contract error, got {:?}", other.err()),
        }
        let (manifest, _) = inflate();
        let missing = LoadedModel::load(
            manifest,
            Path::new("/nonexistent/model.pt"),
            Device::Cpu,
            &MemoryProbe::cpu(),
        );
        assert_eq!(missing.err().map(|e| e.code()), Some("model_load"));
    }

    #[test]
    fn precision_applies_on_cuda_only_and_pinning_is_for_cuda() {
        for precision in [Precision::Fp32, Precision::Fp16, Precision::Bf16] {
            assert_eq!(
                compute_kind(Device::Cpu, precision),
                Kind::Float,
                "the CPU always computes in fp32"
            );
        }
        assert_eq!(compute_kind(Device::Cuda(0), Precision::Fp32), Kind::Float);
        assert_eq!(compute_kind(Device::Cuda(1), Precision::Fp16), Kind::Half);
        assert_eq!(
            compute_kind(Device::Cuda(0), Precision::Bf16),
            Kind::BFloat16
        );
        assert!(pins_host_memory(Device::Cuda(0)) && !pins_host_memory(Device::Cpu));
        let (mut manifest, _) = inflate();
        manifest.precision = Precision::Bf16;
        assert_eq!(manifest.info().precision, "bf16");
    }

    #[test]
    fn per_item_cost_is_measured_when_memory_shrank_else_the_manifest() {
        assert_eq!(per_item_cost(Some(10_000), Some(7_000), 99), 3_000);
        assert_eq!(
            per_item_cost(Some(10_000), Some(10_000), 99),
            99,
            "allocator cache reused: nothing measured"
        );
        assert_eq!(per_item_cost(None, Some(1), 99), 99);
        assert_eq!(per_item_cost(Some(5), None, 99), 99);
    }

    #[test]
    fn relief_params_keep_the_manifest_column_order_and_are_validated() {
        let (relief, _) = read_manifests(&models_dir(), &["relief".to_string()])
            .unwrap()
            .remove(0);
        assert_eq!(relief.preprocess, PreprocessMode::FullFrame);
        let names: Vec<String> = relief
            .param_specs()
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(
            names,
            ["base_thickness", "max_height", "invert"],
            "table order, not alphabetical"
        );
        assert_eq!(
            relief.param_row(&BTreeMap::new()).unwrap(),
            vec![0.1, 0.3, 0.0]
        );
        let given = BTreeMap::from([("invert".to_string(), 1.0), ("max_height".to_string(), 0.5)]);
        assert_eq!(relief.param_row(&given).unwrap(), vec![0.1, 0.5, 1.0]);
        let unknown = relief
            .param_row(&BTreeMap::from([("depth".to_string(), 1.0)]))
            .unwrap_err();
        assert!(
            unknown.contains("\"depth\"") && unknown.contains("max_height"),
            "{unknown}"
        );
        let not_bool = relief
            .param_row(&BTreeMap::from([("invert".to_string(), 0.5)]))
            .unwrap_err();
        assert!(not_bool.contains("invert"), "{not_bool}");
        let info = relief.info();
        assert_eq!(
            (
                info.preprocess.as_str(),
                info.params.len(),
                info.params[2].boolean
            ),
            ("full_frame", 3, true)
        );
        let (inflate, _) = inflate();
        assert_eq!(inflate.preprocess, PreprocessMode::Object);
        assert!(inflate
            .param_row(&BTreeMap::from([("invert".to_string(), 1.0)]))
            .unwrap_err()
            .contains("none"));
    }

    #[test]
    fn relief_forward_takes_per_item_params() {
        let (manifest, path) = read_manifests(&models_dir(), &["relief".to_string()])
            .unwrap()
            .remove(0);
        let model =
            LoadedModel::load(manifest.clone(), &path, Device::Cpu, &MemoryProbe::cpu()).unwrap();
        let [h, w] = manifest.input_size;
        // Opaque mid-grey: a full square plate, half of max_height above the base.
        let grey = Tensor::full([2, 4, h as i64, w as i64], 0.5, (Kind::Float, Device::Cpu));
        let _ = grey.narrow(1, 3, 1).fill_(1.0);
        let params = Tensor::from_slice(&[0.1f32, 0.1, 0.0, 0.1, 0.6, 0.0]).view([2, 3]);
        let out = model.forward(&grey, Some(&params)).unwrap();
        let solid = |t: &Tensor| t.gt(manifest.iso as f64).sum(Kind::Int64).int64_value(&[]);
        let (thin, thick) = (solid(&out.get(0)), solid(&out.get(1)));
        assert!(
            thick > thin + thin / 2,
            "max_height 0.6 gives a thicker plate than 0.1: {thick} vs {thin}"
        );
        let defaults = model
            .forward(&grey, model.default_params(2).as_ref())
            .unwrap();
        let images_only = model.forward(&grey, None).unwrap();
        assert!(
            defaults.equal(&images_only),
            "default params equal the model's baked-in defaults"
        );
    }
}
