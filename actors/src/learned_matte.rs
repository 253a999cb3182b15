//! The learned matting stage: a TorchScript matting network (MODNet- or U²-Net-shaped,
//! weights brought by the operator) that tells the object from the background of a photo
//! without alpha, in place of the flood fill of `matte.rs`, which only knows plain
//! backgrounds.
//!
//! - Contract (models/README.md, "Matting models"): `forward(images: float32 [B, 3, H, W],
//!   RGB in [0, 1]) -> float32 [B, 1, H, W]`, alpha in [0, 1], H × W the manifest's
//!   `input_size`; normalisation happens inside the model. Checked once at load with two
//!   probe images (black and white), so a node refuses a broken model at start
//!   (`matting_contract`), not at the first photo.
//! - Runs where the rest of preprocessing runs: on tokio's blocking pool, one image at a
//!   time, inside `preprocess::prepare_into` (a matting pass is one small forward per
//!   image, and batching it would make images wait for each other's decode). The module
//!   is loaded once per device (`Sync`: the pool's threads share it) through the same
//!   [`Resident`] as 3-D models, so it runs on the worker's GPU in the manifest's precision
//!   when there is one and in fp32 on the CPU otherwise.
//! - Its alpha is cleaned like the flood fill's: below 0.5 is background, and only the
//!   largest part and parts at least [`crate::matte::KEEP_FRACTION`] of it stay. Inside
//!   them the network's soft alpha is kept. Images with a real alpha channel skip matting.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use image::{imageops, ImageBuffer, Luma, RgbaImage};
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use crate::model::{forward_error, ModelError, Precision, Resident};

/// Values this far outside [0, 1] still count as inside (fp16 rounding on CUDA).
const RANGE_SLACK: f64 = 1e-3;

/// How the node separates an object from a plain background (`matting.method`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum MattingMethod {
    /// Flood fill from the border (`matte.rs`), the default: no model needed.
    #[default]
    Flood,
    /// The matting model in this folder (`manifest.toml` + `model.pt`).
    Learned(PathBuf),
}

/// A matting model's `manifest.toml`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MattingManifest {
    /// Always `"matting"`: tells a matting model from a 3-D model's manifest.
    pub kind: String,
    /// Name, for messages and logs.
    pub name: String,
    /// Version of the model file.
    pub version: String,
    /// One line.
    #[serde(default)]
    pub description: String,
    /// [H, W] the image is resized (stretched) to; alpha comes back at this size.
    pub input_size: [usize; 2],
    /// Precision on CUDA (CPU always runs fp32).
    pub precision: Precision,
}

/// A matting model that cannot be used, or a matting pass that failed.
#[derive(Debug, thiserror::Error)]
pub enum MattingError {
    /// Manifest missing, unreadable, or not a matting model's.
    #[error("matting model manifest {path}: {detail}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The TorchScript file could not be loaded.
    #[error("matting model {name} failed to load from {path}: {detail}")]
    Load {
        /// Model.
        name: String,
        /// The file.
        path: PathBuf,
        /// libtorch's message.
        detail: String,
    },
    /// Its output breaks the matting contract.
    #[error("matting model {name} breaks the matting contract ([B, 1, H, W] alpha in [0, 1]): {detail}")]
    Contract {
        /// Model.
        name: String,
        /// What differed.
        detail: String,
    },
    /// The forward pass failed (out of memory, a libtorch error).
    #[error(transparent)]
    Forward(ModelError),
}

impl MattingError {
    /// Stable code (logs, node start errors).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Manifest { .. } => "matting_manifest",
            Self::Load { .. } => "matting_load",
            Self::Contract { .. } => "matting_contract",
            Self::Forward(e) => e.code(),
        }
    }

    /// The wire code for a job whose matting pass failed: `gpu_oom` (retryable) when the
    /// device ran out of memory, `inference_failed` otherwise.
    pub fn wire_code(&self) -> orfeas_wire::ErrorCode {
        match self {
            Self::Forward(ModelError::Forward { out_of_memory: true, .. }) => orfeas_wire::ErrorCode::GpuOom,
            _ => orfeas_wire::ErrorCode::InferenceFailed,
        }
    }
}

/// The matting stage of one device, handed to preprocessing.
#[derive(Clone, Default)]
pub enum Matting {
    /// Flood fill (`matte.rs`).
    #[default]
    Flood,
    /// A loaded matting model.
    Learned(Arc<LearnedMatte>),
}

impl std::fmt::Debug for Matting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Flood => f.write_str("Flood"),
            Self::Learned(m) => write!(f, "Learned({} {})", m.manifest.name, m.manifest.version),
        }
    }
}

impl Matting {
    /// Load `method` on every device, in the devices' order: all or nothing.
    pub fn for_devices(method: &MattingMethod, devices: &[Device]) -> Result<Vec<Self>, MattingError> {
        match method {
            MattingMethod::Flood => Ok(vec![Self::Flood; devices.len()]),
            MattingMethod::Learned(dir) => devices.iter().map(|&d| Ok(Self::Learned(Arc::new(LearnedMatte::load(dir, d)?)))).collect(),
        }
    }

    /// Alpha (row-major, 0–255) of `img`'s object against its background.
    pub fn alpha(&self, img: &RgbaImage) -> Result<Vec<u8>, MattingError> {
        match self {
            Self::Flood => Ok(crate::matte::matte(img).into_iter().map(|keep| if keep { 255 } else { 0 }).collect()),
            Self::Learned(model) => model.alpha(img),
        }
    }
}

/// A matting model resident on one device.
pub struct LearnedMatte {
    /// Its manifest.
    pub manifest: MattingManifest,
    resident: Resident,
}

impl LearnedMatte {
    /// Read `dir/manifest.toml`, load `dir/model.pt` onto `device` and check the contract
    /// on two probe images.
    pub fn load(dir: &Path, device: Device) -> Result<Self, MattingError> {
        let path = dir.join("manifest.toml");
        let manifest_error = |detail: String| MattingError::Manifest { path: path.clone(), detail };
        let text = std::fs::read_to_string(&path).map_err(|e| manifest_error(e.to_string()))?;
        let manifest: MattingManifest = toml::from_str(&text).map_err(|e| manifest_error(e.to_string()))?;
        if manifest.kind != "matting" {
            return Err(manifest_error(format!("kind {:?} is not \"matting\"", manifest.kind)));
        }
        if manifest.input_size.iter().any(|&n| n < 8 || n > 4096) {
            return Err(manifest_error(format!("input_size {:?} must be 8..=4096 on each side", manifest.input_size)));
        }
        let model = dir.join("model.pt");
        let resident = Resident::load(&model, device, manifest.precision).map_err(|e| MattingError::Load {
            name: manifest.name.clone(),
            path: model.clone(),
            detail: e.to_string(),
        })?;
        let matte = Self { manifest, resident };
        let [h, w] = matte.manifest.input_size;
        for (what, value) in [("black", 0.0), ("white", 1.0)] {
            let probe = Tensor::full([1, 3, h as i64, w as i64], value, (Kind::Float, Device::Cpu));
            matte.run(&probe).map_err(|e| match e {
                MattingError::Contract { name, detail } => MattingError::Contract { name, detail: format!("{detail} (on a {what} {h}×{w} image)") },
                other => other,
            })?;
        }
        Ok(matte)
    }

    /// One forward pass on `[1, 3, H, W]`, its output checked against the contract:
    /// `[H × W]` alpha values.
    fn run(&self, input: &Tensor) -> Result<Vec<f32>, MattingError> {
        let [h, w] = self.manifest.input_size;
        let name = &self.manifest.name;
        let out = self.resident.forward(input, None).map_err(|e| MattingError::Forward(forward_error(name, e)))?;
        let want = [1, 1, h as i64, w as i64];
        if out.size() != want {
            return Err(MattingError::Contract { name: name.clone(), detail: format!("output shape {:?} for input [1, 3, {h}, {w}], expected {want:?}", out.size()) });
        }
        let values: Vec<f32> = Vec::<f32>::try_from(out.view([-1])).map_err(|e| MattingError::Forward(forward_error(name, e)))?;
        let (lo, hi) = values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        if values.iter().any(|v| !v.is_finite()) || f64::from(lo) < -RANGE_SLACK || f64::from(hi) > 1.0 + RANGE_SLACK {
            return Err(MattingError::Contract { name: name.clone(), detail: format!("alpha values span [{lo}, {hi}] (a missing final sigmoid?)") });
        }
        Ok(values)
    }

    /// Alpha of `img` at its own size: resized to the input size, matted, resized back,
    /// thresholded at 0.5 for the parts that stay (largest and not much smaller).
    pub fn alpha(&self, img: &RgbaImage) -> Result<Vec<u8>, MattingError> {
        let [h, w] = self.manifest.input_size;
        let small = imageops::resize(img, w as u32, h as u32, imageops::FilterType::Triangle);
        let plane = h * w;
        let mut chw = vec![0f32; 3 * plane];
        for (i, p) in small.pixels().enumerate() {
            for c in 0..3 {
                chw[c * plane + i] = f32::from(p[c]) / 255.0;
            }
        }
        let input = Tensor::from_slice(&chw).view([1, 3, h as i64, w as i64]);
        let values = self.run(&input)?;
        let small_alpha: ImageBuffer<Luma<u8>, Vec<u8>> =
            ImageBuffer::from_raw(w as u32, h as u32, values.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect()).expect("h × w values");
        let (iw, ih) = img.dimensions();
        let alpha = imageops::resize(&small_alpha, iw, ih, imageops::FilterType::Triangle).into_raw();
        let mask: Vec<bool> = alpha.iter().map(|&a| a >= 128).collect();
        let kept = crate::matte::keep_main_parts(&mask, iw as usize, ih as usize);
        Ok(alpha.into_iter().zip(kept).map(|(a, keep)| if keep { a } else { 0 }).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgba;

    fn matting_dir(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/matting").join(rel)
    }

    /// A dark, wide bar on white: the flood fill keeps the bar, edge to edge.
    fn bar(side: u32) -> RgbaImage {
        RgbaImage::from_fn(side, side, |x, y| {
            let (fx, fy) = (x as f32 / side as f32, y as f32 / side as f32);
            if (0.05..0.95).contains(&fx) && (0.4..0.6).contains(&fy) {
                Rgba([30, 40, 120, 255])
            } else {
                Rgba([250, 250, 250, 255])
            }
        })
    }

    #[test]
    fn learned_disc_model_replaces_the_flood_fill() {
        let img = bar(200);
        let flood = Matting::Flood.alpha(&img).unwrap();
        let disc = Matting::Learned(Arc::new(LearnedMatte::load(&matting_dir("testing/disc"), Device::Cpu).unwrap())).alpha(&img).unwrap();
        let at = |a: &[u8], x: u32, y: u32| a[(y * 200 + x) as usize];
        // The bar's ends are object for the flood fill, outside the disc for the model.
        assert_eq!((at(&flood, 15, 100), at(&disc, 15, 100)), (255, 0));
        // White above the bar inside the disc: background for the flood fill, object for the model.
        assert_eq!((at(&flood, 100, 60), at(&disc, 100, 60)), (0, 255));
        let disc_area = disc.iter().filter(|&&a| a >= 128).count() as f64;
        let expected = std::f64::consts::PI * (0.3f64 * 200.0).powi(2);
        assert!((disc_area / expected - 1.0).abs() < 0.05, "disc area {disc_area} vs {expected}");
    }

    #[test]
    fn random_weight_variant_loads_and_gives_alpha_at_the_image_size() {
        let model = LearnedMatte::load(&matting_dir("tiny-modnet"), Device::Cpu).unwrap();
        assert_eq!(model.manifest.input_size, [256, 256]);
        let img = bar(300);
        let alpha = model.alpha(&img).unwrap();
        assert_eq!(alpha.len(), 300 * 300);
        let object = alpha.iter().filter(|&&a| a >= 128).count();
        assert!(object > 0 && object < alpha.len(), "{object} object pixels");
        assert_eq!(model.alpha(&img).unwrap(), alpha, "deterministic");
    }

    #[test]
    fn models_that_break_the_contract_are_refused_with_their_code() {
        for (dir, says) in [("testing/half-size", "output shape [1, 1, 32, 32]"), ("testing/logits", "alpha values span [-4")] {
            match LearnedMatte::load(&matting_dir(dir), Device::Cpu) {
                Err(e @ MattingError::Contract { .. }) => {
                    assert_eq!(e.code(), "matting_contract");
                    assert!(e.to_string().contains(says), "{e}");
                }
                other => panic!("{dir}: expected a contract error, got {:?}", other.err()),
            }
        }
        let missing = LearnedMatte::load(&matting_dir("nope"), Device::Cpu).err().unwrap();
        assert_eq!(missing.code(), "matting_manifest");
        // A 3-D model's folder is not a matting model.
        let inflate = LearnedMatte::load(&matting_dir("../inflate"), Device::Cpu).err().unwrap();
        assert_eq!(inflate.code(), "matting_manifest", "{inflate}");
    }
}
