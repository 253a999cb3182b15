//! Models as data: `models/<name>/manifest.toml` + `model.pt` (TorchScript).
//! A model is loaded once per device, checked against its manifest with a
//! warm-up forward pass, and kept resident.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{CModule, Device, Kind, Tensor};

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
    /// Defaults of the model's optional per-job parameters (second forward
    /// input, `[B, n]` in the order the model documents).
    #[serde(default)]
    pub params: toml::Table,
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
    },
}

impl ModelError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Manifest { .. } => "model_manifest",
            Self::Load { .. } => "model_load",
            Self::Contract { .. } => "model_contract",
            Self::Forward { out_of_memory: true, .. } => "out_of_memory",
            Self::Forward { .. } => "forward_failed",
        }
    }
}

/// Read the manifests of `names` (all models in `dir` when empty), sorted by name.
pub fn read_manifests(dir: &Path, names: &[String]) -> Result<Vec<(Manifest, PathBuf)>, ModelError> {
    let mut wanted: Vec<String> = names.to_vec();
    if wanted.is_empty() {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| ModelError::Manifest { path: dir.to_path_buf(), detail: e.to_string() })?;
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
        let err = |detail: String| ModelError::Manifest { path: path.clone(), detail };
        let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        if manifest.name != name {
            return Err(err(format!("name {:?} differs from its folder {name:?}", manifest.name)));
        }
        if manifest.input_channels != 4 || manifest.grid.iter().any(|&n| n < 2) || manifest.max_batch == 0 {
            return Err(err("needs input_channels = 4, every grid side >= 2, max_batch >= 1".into()));
        }
        out.push((manifest, dir.join(&name).join("model.pt")));
    }
    if out.is_empty() {
        return Err(ModelError::Manifest { path: dir.to_path_buf(), detail: "no models found".into() });
    }
    Ok(out)
}

/// A model resident on one device.
pub struct LoadedModel {
    /// Its manifest.
    pub manifest: Manifest,
    module: CModule,
    device: Device,
}

impl LoadedModel {
    /// Load `path` onto `device` and check it against `manifest` with a
    /// batch-of-one forward pass (which also warms it up).
    pub fn load(manifest: Manifest, path: &Path, device: Device) -> Result<Self, ModelError> {
        let mut module = CModule::load_on_device(path, device).map_err(|e| ModelError::Load {
            name: manifest.name.clone(),
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        module.set_eval();
        let model = Self { manifest, module, device };
        let [h, w] = model.manifest.input_size;
        let probe = Tensor::zeros([1, 4, h as i64, w as i64], (Kind::Float, Device::Cpu));
        let out = model.forward(&probe)?;
        let want: Vec<i64> = std::iter::once(1).chain(model.manifest.grid.iter().map(|&n| n as i64)).collect();
        if out.size() != want {
            return Err(ModelError::Contract {
                name: model.manifest.name.clone(),
                detail: format!("output shape {:?}, manifest says {:?}", out.size(), want),
            });
        }
        Ok(model)
    }

    /// Run a [B, 4, H, W] float batch (on the CPU) and return the [B, D, H, W]
    /// float volume on the CPU. No gradients; half precision on CUDA when the
    /// manifest asks for it.
    pub fn forward(&self, batch: &Tensor) -> Result<Tensor, ModelError> {
        let kind = match (self.device, self.manifest.precision) {
            (Device::Cuda(_), Precision::Fp16) => Kind::Half,
            (Device::Cuda(_), Precision::Bf16) => Kind::BFloat16,
            _ => Kind::Float,
        };
        let name = &self.manifest.name;
        tch::no_grad(|| {
            // pin_memory speeds the host-to-device copy and needs CUDA.
            let input = if self.device.is_cuda() { batch.pin_memory(self.device) } else { batch.shallow_clone() };
            let input = input.to_device(self.device).to_kind(kind);
            let out = self.module.forward_ts(&[input]).map_err(|e| forward_error(name, e))?;
            out.to_kind(Kind::Float).to_device(Device::Cpu).f_contiguous().map_err(|e| forward_error(name, e))
        })
    }
}

fn forward_error(name: &str, e: tch::TchError) -> ModelError {
    let detail = e.to_string();
    let out_of_memory = detail.to_ascii_lowercase().contains("out of memory");
    ModelError::Forward { name: name.to_string(), detail, out_of_memory }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The repository's models folder.
    pub(crate) fn models_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
    }

    pub(crate) fn inflate() -> (Manifest, PathBuf) {
        read_manifests(&models_dir(), &["inflate".to_string()]).unwrap().remove(0)
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
        assert!(names.contains(&"inflate") && names.contains(&"null"), "{names:?}");
        assert!(read_manifests(&models_dir(), &["nope".to_string()]).is_err());
    }

    #[test]
    fn inflate_runs_batched_and_items_are_independent() {
        let (manifest, path) = inflate();
        let [h, w] = manifest.input_size;
        let model = LoadedModel::load(manifest.clone(), &path, Device::Cpu).unwrap();
        let small = disc(h, w, 20.0);
        let large = disc(h, w, 50.0);
        let batch = Tensor::from_slice(&[small.clone(), large].concat()).view([2, 4, h as i64, w as i64]);
        let out = model.forward(&batch).unwrap();
        let grid: Vec<i64> = manifest.grid.iter().map(|&n| n as i64).collect();
        assert_eq!(out.size(), [vec![2], grid].concat());
        let alone = model.forward(&Tensor::from_slice(&small).view([1, 4, h as i64, w as i64])).unwrap();
        let diff = (out.get(0) - alone.get(0)).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "batch item differs from running it alone by {diff}");
        // The larger disc has more solid samples.
        let solid = |t: &Tensor| t.gt(manifest.iso as f64).sum(Kind::Int64).int64_value(&[]);
        assert!(solid(&out.get(1)) > 2 * solid(&out.get(0)));
        assert!(solid(&out.get(0)) > 0);
    }

    #[test]
    fn contract_violation_is_reported_at_load() {
        let (mut manifest, path) = inflate();
        manifest.grid = [10, 10, 10];
        match LoadedModel::load(manifest, &path, Device::Cpu) {
            Err(e @ ModelError::Contract { .. }) => assert_eq!(e.code(), "model_contract"),
            other => panic!("expected a contract error, got {:?}", other.err()),
        }
        let (manifest, _) = inflate();
        let missing = LoadedModel::load(manifest, Path::new("/nonexistent/model.pt"), Device::Cpu);
        assert_eq!(missing.err().map(|e| e.code()), Some("model_load"));
    }
}
