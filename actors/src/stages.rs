//! Pipeline manifests: a model directory may hold `pipeline.toml` next to
//! `manifest.toml`, declaring a sequence of TorchScript stages instead of the
//! single `images → volume` call. The single-call contract is untouched: a
//! directory without `pipeline.toml` is read exactly as before.
//!
//! Stages, in order: `encode` (images → conditioning tokens), `step` (called N
//! times along a `schedule`; the unit the step batcher interleaves jobs on),
//! optionally `prepare` (latents → decoder features, once per job: the part
//! of a decoder that does not depend on the query points, such as a
//! latent-set VAE's self-attention stack, so it is not recomputed for every
//! chunk), `decode` (features — or, without `prepare`, latents — + query
//! points → field values, queried in chunks so peak memory is bounded by
//! `chunk_points`, not by the grid), and optionally `colour` (the same input
//! as decode + mesh vertices → RGB per vertex).
//!
//! This module only reads and validates the declaration; it never loads
//! TorchScript, so `orfeas models check` and a node share one validator.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// File name of a pipeline declaration inside a model directory.
pub const PIPELINE_FILE: &str = "pipeline.toml";

/// How the `step` stage's timesteps are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Flow matching: t goes linearly from 1 (noise) to 0 (data).
    FlowLinear,
    /// Flow matching with the timestep shift SD3/Hunyuan3D use:
    /// t' = s·t / (1 + (s − 1)·t).
    FlowShifted,
}

/// One TorchScript stage file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageFile {
    /// Path relative to the model directory.
    pub file: String,
    /// Peak activation memory per batch item, MiB.
    #[serde(default)]
    pub mem_per_item_mb: u64,
    /// Declared output shape per item, without the batch dimension: for
    /// `encode`, the conditioning `[T, C]` of a model with a step stage, else
    /// the latents; for `prepare`, the features decode takes. Checked at
    /// load; optional.
    #[serde(default)]
    pub output_shape: Option<Vec<i64>>,
}

/// The `step` stage: a sampler step applied `steps` times.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepStage {
    /// Path relative to the model directory.
    pub file: String,
    /// Sampler steps per job.
    pub steps: u32,
    /// Timestep spacing.
    pub schedule: Schedule,
    /// Shift for `flow_shifted`; ignored otherwise.
    #[serde(default = "one")]
    pub shift: f64,
    /// Latent shape per item, without the batch dimension.
    pub latent_shape: Vec<i64>,
    /// Peak activation memory per batch item per step, MiB.
    #[serde(default)]
    pub mem_per_item_mb: u64,
}

fn one() -> f64 {
    1.0
}

/// The `decode` stage, queried at world points in chunks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeStage {
    /// Path relative to the model directory.
    pub file: String,
    /// Query points per call; bounds decode memory.
    pub chunk_points: u32,
    /// Peak activation memory per batch item per chunk, MiB.
    #[serde(default)]
    pub mem_per_item_mb: u64,
}

/// A pipeline declaration (`pipeline.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Images → conditioning.
    pub encode: StageFile,
    /// Absent for feed-forward models (TripoSR-like): encode feeds decode.
    #[serde(default)]
    pub step: Option<StepStage>,
    /// Latents → decoder features, once per job (optional: without it,
    /// decode and colour take the latents).
    #[serde(default)]
    pub prepare: Option<StageFile>,
    /// Features (or latents) + points → field values.
    pub decode: DecodeStage,
    /// Features (or latents) + vertices → RGB.
    #[serde(default)]
    pub colour: Option<DecodeStage>,
}

/// Why a pipeline declaration was refused. Codes are stable.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PipelineError {
    /// The declaration does not parse or a value is out of range.
    #[error("pipeline {path}: {detail}")]
    Invalid {
        /// The pipeline file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A declared stage file does not exist.
    #[error("pipeline {path}: stage file {file} is missing")]
    MissingFile {
        /// The pipeline file.
        path: PathBuf,
        /// The stage file named in it.
        file: String,
    },
}

impl PipelineError {
    /// Stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "pipeline_invalid",
            Self::MissingFile { .. } => "pipeline_missing_file",
        }
    }
}

impl Pipeline {
    /// Parse and check a declaration; `dir` is the model directory, used to
    /// check that every stage file exists and stays inside it.
    pub fn parse(text: &str, dir: &Path) -> Result<Self, PipelineError> {
        let path = dir.join(PIPELINE_FILE);
        let invalid = |detail: String| PipelineError::Invalid { path: path.clone(), detail };
        let p: Pipeline = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if let Some(s) = &p.step {
            if s.steps == 0 || s.steps > 1000 {
                return Err(invalid(format!("step.steps {} not in 1..=1000", s.steps)));
            }
            if !(s.shift.is_finite() && s.shift > 0.0) {
                return Err(invalid(format!("step.shift {} must be > 0", s.shift)));
            }
            if s.latent_shape.is_empty() || s.latent_shape.iter().any(|&d| d < 1) {
                return Err(invalid(format!("step.latent_shape {:?} must be positive", s.latent_shape)));
            }
        }
        for (stage, s) in std::iter::once(("encode", &p.encode)).chain(p.prepare.as_ref().map(|s| ("prepare", s))) {
            if s.output_shape.as_ref().is_some_and(|s| s.is_empty() || s.iter().any(|&d| d < 1)) {
                return Err(invalid(format!("{stage}.output_shape {:?} must be positive", s.output_shape)));
            }
        }
        for d in std::iter::once(&p.decode).chain(p.colour.as_ref()) {
            if d.chunk_points == 0 {
                return Err(invalid(format!("{}: chunk_points must be > 0", d.file)));
            }
        }
        for file in p.files() {
            let rel = Path::new(file);
            if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return Err(invalid(format!("stage file {file} must be inside the model directory")));
            }
            if !dir.join(rel).is_file() {
                return Err(PipelineError::MissingFile { path: path.clone(), file: file.to_string() });
            }
        }
        Ok(p)
    }

    /// Read `dir/pipeline.toml`; `Ok(None)` for a single-call model.
    pub fn read(dir: &Path) -> Result<Option<Self>, PipelineError> {
        let path = dir.join(PIPELINE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, dir).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PipelineError::Invalid { path, detail: e.to_string() }),
        }
    }

    /// Stage files in pipeline order.
    pub fn files(&self) -> Vec<&str> {
        let mut v = vec![self.encode.file.as_str()];
        v.extend(self.step.as_ref().map(|s| s.file.as_str()));
        v.extend(self.prepare.as_ref().map(|s| s.file.as_str()));
        v.push(&self.decode.file);
        v.extend(self.colour.as_ref().map(|c| c.file.as_str()));
        v
    }
}

impl StepStage {
    /// The `steps + 1` timesteps from noise (first) to data (last); step `i`
    /// moves a latent from `t[i]` to `t[i + 1]`.
    pub fn timesteps(&self) -> Vec<f64> {
        let n = self.steps as f64;
        (0..=self.steps)
            .map(|i| {
                let t = 1.0 - i as f64 / n;
                match self.schedule {
                    Schedule::FlowLinear => t,
                    Schedule::FlowShifted => self.shift * t / (1.0 + (self.shift - 1.0) * t),
                }
            })
            .collect()
    }
}

/// Split `total` query points into `[start, end)` chunks of at most `chunk`.
pub fn chunks(total: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    let chunk = chunk.max(1);
    (0..total).step_by(chunk).map(move |s| (s, (s + chunk).min(total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in files {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        d
    }

    const HUNYUAN: &str = r#"
        encode = { file = "encode.pt", mem_per_item_mb = 8 }
        step = { file = "step.pt", steps = 4, schedule = "flow_shifted", shift = 3.0, latent_shape = [16, 8] }
        decode = { file = "decode.pt", chunk_points = 4096 }
        colour = { file = "colour.pt", chunk_points = 1024 }
    "#;

    #[test]
    fn parses_a_full_pipeline() {
        let d = dir_with(&["encode.pt", "step.pt", "decode.pt", "colour.pt"]);
        let p = Pipeline::parse(HUNYUAN, d.path()).unwrap();
        assert_eq!(p.files(), ["encode.pt", "step.pt", "decode.pt", "colour.pt"]);
        assert_eq!(p.step.as_ref().unwrap().steps, 4);
        assert_eq!(p.encode.mem_per_item_mb, 8);
    }

    #[test]
    fn an_optional_prepare_stage_sits_between_step_and_decode() {
        let d = dir_with(&["encode.pt", "step.pt", "prepare.pt", "decode.pt", "colour.pt"]);
        let text = HUNYUAN.replace("decode = {", "prepare = { file = \"prepare.pt\", output_shape = [16, 32] }\n        decode = {");
        let p = Pipeline::parse(&text, d.path()).unwrap();
        assert_eq!(p.files(), ["encode.pt", "step.pt", "prepare.pt", "decode.pt", "colour.pt"]);
        assert_eq!(p.prepare.unwrap().output_shape, Some(vec![16, 32]));
        let bad = HUNYUAN.replace("decode = {", "prepare = { file = \"prepare.pt\", output_shape = [0] }\n        decode = {");
        assert_eq!(Pipeline::parse(&bad, d.path()).unwrap_err().code(), "pipeline_invalid");
        let missing = dir_with(&["encode.pt", "step.pt", "decode.pt", "colour.pt"]);
        assert_eq!(Pipeline::parse(&text, missing.path()).unwrap_err().code(), "pipeline_missing_file");
    }

    #[test]
    fn single_call_dir_has_no_pipeline() {
        let d = dir_with(&["model.pt"]);
        assert_eq!(Pipeline::read(d.path()).unwrap(), None);
    }

    #[test]
    fn missing_stage_file_is_refused() {
        let d = dir_with(&["encode.pt", "step.pt", "decode.pt"]);
        let e = Pipeline::parse(HUNYUAN, d.path()).unwrap_err();
        assert_eq!(e.code(), "pipeline_missing_file");
    }

    #[test]
    fn escaping_paths_and_bad_values_are_refused() {
        let d = dir_with(&["e.pt", "d.pt"]);
        let esc = r#"
            encode = { file = "../e.pt" }
            decode = { file = "d.pt", chunk_points = 8 }
        "#;
        assert_eq!(Pipeline::parse(esc, d.path()).unwrap_err().code(), "pipeline_invalid");
        let zero = r#"
            encode = { file = "e.pt" }
            decode = { file = "d.pt", chunk_points = 0 }
        "#;
        assert_eq!(Pipeline::parse(zero, d.path()).unwrap_err().code(), "pipeline_invalid");
        let unknown = r#"
            encode = { file = "e.pt" }
            decode = { file = "d.pt", chunk_points = 8 }
            extra = 1
        "#;
        assert_eq!(Pipeline::parse(unknown, d.path()).unwrap_err().code(), "pipeline_invalid");
    }

    #[test]
    fn timesteps_run_from_noise_to_data() {
        let mut s = StepStage {
            file: "s.pt".into(),
            steps: 4,
            schedule: Schedule::FlowLinear,
            shift: 1.0,
            latent_shape: vec![2],
            mem_per_item_mb: 0,
        };
        assert_eq!(s.timesteps(), [1.0, 0.75, 0.5, 0.25, 0.0]);
        s.schedule = Schedule::FlowShifted;
        s.shift = 3.0;
        let t = s.timesteps();
        assert_eq!((t[0], t[4]), (1.0, 0.0));
        // Shift > 1 spends more steps near the noise end: t' ≥ t.
        assert!((t[2] - 0.75).abs() < 1e-12, "{t:?}");
        assert!(t.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn chunks_cover_every_point_once() {
        let c: Vec<_> = chunks(10, 4).collect();
        assert_eq!(c, [(0, 4), (4, 8), (8, 10)]);
        assert_eq!(chunks(0, 4).count(), 0);
    }
}
