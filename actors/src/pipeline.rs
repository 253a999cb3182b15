//! Multi-stage models on one device: the runtime of a `pipeline.toml`
//! (see [`crate::stages`]) next to [`LoadedModel`](crate::model::LoadedModel).
//!
//! A pipeline is loaded with the same device and precision rules as a
//! single-call model, checked with B = 1 and B = 2 smoke passes through
//! every stage, and then driven stage by stage: `encode` once per job,
//! `step` once per sampler step (by [`crate::step_batcher`], which puts
//! jobs at different steps into one call — every stage takes per-item
//! timesteps), `prepare` (if declared) once per job on its final latent,
//! `decode` over the manifest's grid in chunks of `chunk_points` (so decode
//! memory does not grow with the grid) on prepare's output — the per-job
//! cache that keeps a latent-set decoder's self-attention stack from being
//! recomputed for every chunk — and `colour` at mesh vertices on the same
//! input. The decoded volume is laid out exactly as a
//! single-call model's output, so meshing does not know the difference.
//!
//! Initial noise comes from the job id (SplitMix64 + Box–Muller on the
//! CPU, independent of libtorch's global generator), so a job's result
//! does not depend on which jobs shared its batch or on the device.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use tch::{CModule, Device, Kind, Tensor};
use uuid::Uuid;

use crate::{
    device::MemoryProbe,
    model::{compute_kind, forward_error, per_item_cost, LoadTimes, Manifest, ModelError, OutputKind},
    stages::{chunks, Pipeline},
};

/// Value forced onto the outermost layer of a decoded occupancy grid (as
/// the built-in models do), so every surface closes inside the grid.
const BORDER_OUTSIDE: f32 = -0.05;

/// A pipeline model resident on one device.
pub struct LoadedPipeline {
    /// Its manifest (grid, bounds, iso, batch limits as for any model).
    pub manifest: Manifest,
    /// Its stage declaration.
    pub pipeline: Pipeline,
    /// Memory one more running job costs here, bytes.
    pub per_item_bytes: u64,
    /// How long loading and the smoke passes took.
    pub times: LoadTimes,
    encode: CModule,
    step: Option<CModule>,
    prepare: Option<CModule>,
    decode: CModule,
    colour: Option<CModule>,
    timesteps: Vec<f64>,
    device: Device,
    kind: Kind,
}

/// Whether the model directory of `model_pt` (the path `read_manifests`
/// returns) declares a pipeline.
pub fn is_pipeline(model_pt: &Path) -> bool {
    model_pt.parent().is_some_and(|d| d.join(crate::stages::PIPELINE_FILE).is_file())
}

impl LoadedPipeline {
    /// Load every stage of the pipeline in `dir` onto `device` and run the
    /// B = 1 (and, when the model batches, B = 2) smoke passes.
    pub fn load(manifest: Manifest, dir: &Path, device: Device, memory: &MemoryProbe) -> Result<Self, ModelError> {
        let started = Instant::now();
        let pipeline = Pipeline::read(dir)?.ok_or_else(|| ModelError::Manifest {
            path: dir.join(crate::stages::PIPELINE_FILE),
            detail: "no pipeline.toml".into(),
        })?;
        let kind = compute_kind(device, manifest.precision);
        let load = |file: &str| -> Result<CModule, ModelError> {
            let path: PathBuf = dir.join(file);
            let mut m = CModule::load_on_device(&path, device).map_err(|e| ModelError::Load {
                name: manifest.name.clone(),
                path: path.clone(),
                detail: e.to_string(),
            })?;
            m.set_eval();
            // Always (see LoadedModel): an fp16 export runs in fp32 on the CPU.
            m.to(device, kind, false);
            Ok(m)
        };
        let encode = load(&pipeline.encode.file)?;
        let step = pipeline.step.as_ref().map(|s| load(&s.file)).transpose()?;
        let prepare = pipeline.prepare.as_ref().map(|s| load(&s.file)).transpose()?;
        let decode = load(&pipeline.decode.file)?;
        let colour = pipeline.colour.as_ref().map(|c| load(&c.file)).transpose()?;
        let timesteps = pipeline.step.as_ref().map(|s| s.timesteps()).unwrap_or_default();
        let per_item_bytes = manifest.mem_per_item_bytes();
        let load_seconds = started.elapsed().as_secs_f64();
        let mut p = Self {
            manifest,
            pipeline,
            per_item_bytes,
            times: LoadTimes::default(),
            encode,
            step,
            prepare,
            decode,
            colour,
            timesteps,
            device,
            kind,
        };
        let started = Instant::now();
        p.smoke(1)?;
        let free_after_one = if device.is_cuda() { memory.free_bytes() } else { None };
        if p.manifest.max_batch >= 2 {
            p.smoke(2)?;
            if device.is_cuda() {
                p.per_item_bytes = per_item_cost(free_after_one, memory.free_bytes(), per_item_bytes);
            }
        }
        p.times = LoadTimes { load_seconds, warmup_seconds: started.elapsed().as_secs_f64() };
        Ok(p)
    }

    fn contract(&self, detail: String) -> ModelError {
        ModelError::Contract { name: self.manifest.name.clone(), detail }
    }

    /// Run `n` blank items through every stage (one step, one small decode
    /// chunk, a few colour points) and check each output's shape against
    /// the declaration. What `orfeas models check` and loading both run.
    pub fn smoke(&self, n: i64) -> Result<(), ModelError> {
        let [h, w] = self.manifest.input_size;
        let images = Tensor::zeros([n, 4, h as i64, w as i64], (Kind::Float, Device::Cpu));
        let cond = self.encode(&images)?;
        let got = cond.size();
        if got.first() != Some(&n) {
            return Err(self.contract(format!("encode returned {got:?} for a batch of {n}")));
        }
        if let Some(want) = &self.pipeline.encode.output_shape {
            if got[1..] != want[..] {
                return Err(self.contract(format!("encode returned {got:?}, pipeline.toml declares [B, {want:?}]")));
            }
        }
        let latents = match &self.pipeline.step {
            Some(s) => {
                let ids: Vec<Uuid> = (0..n).map(|i| Uuid::from_u128(i as u128 + 1)).collect();
                let x = Tensor::stack(&ids.iter().map(|id| self.initial_latent(*id)).collect::<Vec<_>>(), 0);
                let t = vec![self.timesteps[0] as f32; n as usize];
                let t_next = vec![self.timesteps[1] as f32; n as usize];
                let out = self.step(&self.to_device(&x)?, &t, &t_next, &cond)?;
                let want: Vec<i64> = std::iter::once(n).chain(s.latent_shape.iter().copied()).collect();
                if out.size() != want {
                    return Err(self.contract(format!("step returned {:?}, pipeline.toml declares {want:?}", out.size())));
                }
                out
            }
            None => cond,
        };
        let latents = self.prepare(&latents)?;
        if let Some(want) = self.pipeline.prepare.as_ref().and_then(|s| s.output_shape.as_ref()) {
            let got = latents.size();
            if got.first() != Some(&n) || got[1..] != want[..] {
                return Err(self.contract(format!("prepare returned {got:?}, pipeline.toml declares [{n}, {want:?}]")));
            }
        }
        let p = 64.min(self.grid_len()) as i64;
        let points = self.grid_chunk(0, p as usize);
        let field = self.query(&self.decode, "decode", &latents, &points, n)?;
        if field.size() != [n, p] {
            return Err(self.contract(format!("decode returned {:?} for {n} items of {p} points, want [{n}, {p}]", field.size())));
        }
        if let Some(colour) = &self.colour {
            let rgb = self.query(colour, "colour", &latents, &points, n)?;
            if rgb.size() != [n, p, 3] {
                return Err(self.contract(format!("colour returned {:?}, want [{n}, {p}, 3]", rgb.size())));
            }
        }
        Ok(())
    }

    /// Sampler steps per job (0 for a feed-forward pipeline).
    pub fn steps(&self) -> usize {
        self.pipeline.step.as_ref().map_or(0, |s| s.steps as usize)
    }

    /// The `steps + 1` timesteps from noise to data.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// Whether the model has a colour stage.
    pub fn has_colour(&self) -> bool {
        self.colour.is_some()
    }

    fn to_device(&self, t: &Tensor) -> Result<Tensor, ModelError> {
        t.f_to_device(self.device)
            .and_then(|t| t.f_to_kind(self.kind))
            .map_err(|e| forward_error(&self.manifest.name, e))
    }

    /// `encode(images [B, 4, H, W] on the CPU)`: conditioning (or, without
    /// a step stage, latents), kept on the device in compute precision.
    pub fn encode(&self, images: &Tensor) -> Result<Tensor, ModelError> {
        let x = self.to_device(images)?;
        tch::no_grad(|| self.encode.forward_ts(&[x])).map_err(|e| forward_error(&self.manifest.name, e))
    }

    /// A job's starting latent `[*latent_shape]` on the device: standard
    /// normal noise seeded by its id (no step stage: an empty tensor).
    pub fn initial_latent(&self, job_id: Uuid) -> Tensor {
        let Some(s) = &self.pipeline.step else { return Tensor::zeros([0], (Kind::Float, Device::Cpu)) };
        let n: i64 = s.latent_shape.iter().product();
        let v = normal_noise(job_id, n as usize);
        Tensor::from_slice(&v).view(s.latent_shape.as_slice())
    }

    /// [`initial_latent`](Self::initial_latent), on the device in compute precision.
    pub fn start_latent(&self, job_id: Uuid) -> Result<Tensor, ModelError> {
        self.to_device(&self.initial_latent(job_id))
    }

    /// One sampler step for a batch whose items may be at different steps:
    /// `latents [B, *L]` and `cond [B, T, C]` on the device, `t` and
    /// `t_next` one per item.
    pub fn step(&self, latents: &Tensor, t: &[f32], t_next: &[f32], cond: &Tensor) -> Result<Tensor, ModelError> {
        let Some(step) = &self.step else { return Ok(latents.shallow_clone()) };
        let t = self.to_device(&Tensor::from_slice(t))?;
        let t_next = self.to_device(&Tensor::from_slice(t_next))?;
        tch::no_grad(|| step.forward_ts(&[latents.shallow_clone(), t, t_next, cond.shallow_clone()]))
            .map_err(|e| forward_error(&self.manifest.name, e))
    }

    fn grid_len(&self) -> usize {
        self.manifest.grid.iter().product()
    }

    /// World points `[len, 3]` (x, y, z) of grid samples `start..start+len`
    /// in C order over (z, y, x), as the single-call contract lays them out.
    fn grid_chunk(&self, start: usize, len: usize) -> Tensor {
        let [d, h, w] = self.manifest.grid;
        let (lo, hi) = (self.manifest.bounds_min, self.manifest.bounds_max);
        let at = |i: usize, n: usize, axis: usize| lo[axis] + i as f32 / (n - 1) as f32 * (hi[axis] - lo[axis]);
        let mut v = Vec::with_capacity(len * 3);
        for k in start..start + len {
            let (z, y, x) = (k / (h * w), (k / w) % h, k % w);
            v.extend([at(x, w, 0), at(y, h, 1), at(z, d, 2)]);
        }
        Tensor::from_slice(&v).view([len as i64, 3])
    }

    /// Query `module` (decode or colour) for `n` items at the same `points [P, 3]`.
    fn query(&self, module: &CModule, stage: &str, latents: &Tensor, points: &Tensor, n: i64) -> Result<Tensor, ModelError> {
        let p = self.to_device(&points.unsqueeze(0).expand([n, -1, -1], false).contiguous())?;
        tch::no_grad(|| module.forward_ts(&[latents.shallow_clone(), p]))
            .and_then(|o| o.f_to_kind(Kind::Float))
            .and_then(|o| o.f_to_device(Device::Cpu))
            .map_err(|e| {
                let mut err = forward_error(&self.manifest.name, e);
                if let ModelError::Forward { detail, .. } = &mut err {
                    *detail = format!("{stage}: {detail}");
                }
                err
            })
    }

    /// Whether the model has a prepare stage.
    pub fn has_prepare(&self) -> bool {
        self.prepare.is_some()
    }

    /// `prepare(latents [B, *L] on the device)`: what decode and colour
    /// take, on the device in compute precision — computed once per job and
    /// reused for every chunk. Without a prepare stage, the latents.
    pub fn prepare(&self, latents: &Tensor) -> Result<Tensor, ModelError> {
        let Some(prepare) = &self.prepare else { return Ok(latents.shallow_clone()) };
        tch::no_grad(|| prepare.forward_ts(&[latents.shallow_clone()])).map_err(|e| {
            let mut err = forward_error(&self.manifest.name, e);
            if let ModelError::Forward { detail, .. } = &mut err {
                *detail = format!("prepare: {detail}");
            }
            err
        })
    }

    /// Prepare `latents [B, *L]` and decode at the same world `points [P, 3]`
    /// for every item: `[B, P]` on the CPU.
    pub fn decode_points(&self, latents: &Tensor, points: &Tensor) -> Result<Tensor, ModelError> {
        let features = self.prepare(latents)?;
        self.query(&self.decode, "decode", &features, points, latents.size()[0])
    }

    /// Decode `latents [B, *L]` over the whole grid in chunks: one volume
    /// `[D, H, W]` per item, C order, outermost layer outside. Prepares
    /// them once ([`decode_prepared`](Self::decode_prepared) for a caller
    /// that keeps the features, e.g. for colour).
    pub fn decode_volumes(&self, latents: &Tensor) -> Result<Vec<Vec<f32>>, ModelError> {
        self.decode_prepared(&self.prepare(latents)?)
    }

    /// Decode prepared `features [B, *F]` (the output of
    /// [`prepare`](Self::prepare)) over the whole grid in chunks.
    pub fn decode_prepared(&self, latents: &Tensor) -> Result<Vec<Vec<f32>>, ModelError> {
        let n = latents.size()[0];
        let total = self.grid_len();
        let mut out: Vec<Vec<f32>> = (0..n).map(|_| vec![0f32; total]).collect();
        for (s, e) in chunks(total, self.pipeline.decode.chunk_points as usize) {
            let field = self.query(&self.decode, "decode", latents, &self.grid_chunk(s, e - s), n)?;
            if field.size() != [n, (e - s) as i64] {
                return Err(self.contract(format!("decode returned {:?} for {n} items of {} points", field.size(), e - s)));
            }
            let field = field.contiguous();
            for (i, volume) in out.iter_mut().enumerate() {
                field.get(i as i64).copy_data(&mut volume[s..e], e - s);
            }
        }
        for volume in &mut out {
            close_border(volume, self.manifest.grid, self.manifest.output_kind, self.manifest.iso);
        }
        Ok(out)
    }

    /// Linear RGB in [0, 1] at world `points` of one job's decoder input
    /// `latent` (its prepared features `[*F]`, or its latent `[*L]` without
    /// a prepare stage), queried in chunks; `None` without a colour stage.
    pub fn colour_at(&self, latent: &Tensor, points: &[[f32; 3]]) -> Result<Option<Vec<[f32; 3]>>, ModelError> {
        let Some(colour) = &self.colour else { return Ok(None) };
        let latent = self.to_device(&latent.unsqueeze(0))?;
        let chunk = self.pipeline.colour.as_ref().map_or(4096, |c| c.chunk_points as usize);
        let mut rgb = Vec::with_capacity(points.len());
        for (s, e) in chunks(points.len(), chunk) {
            let flat: Vec<f32> = points[s..e].iter().flatten().copied().collect();
            let pts = Tensor::from_slice(&flat).view([(e - s) as i64, 3]);
            let out = self.query(colour, "colour", &latent, &pts, 1)?;
            if out.size() != [1, (e - s) as i64, 3] {
                return Err(self.contract(format!("colour returned {:?} for {} points", out.size(), e - s)));
            }
            let mut v = vec![0f32; 3 * (e - s)];
            let len = v.len();
            out.contiguous().copy_data(&mut v, len);
            rgb.extend(v.chunks_exact(3).map(|c| [c[0].clamp(0.0, 1.0), c[1].clamp(0.0, 1.0), c[2].clamp(0.0, 1.0)]));
        }
        Ok(Some(rgb))
    }

    /// The device it lives on.
    pub fn device(&self) -> Device {
        self.device
    }
}

/// Force the outermost layer outside and move samples off exactly `iso`,
/// the guarantees single-call models give (models/README.md).
fn close_border(volume: &mut [f32], [d, h, w]: [usize; 3], kind: OutputKind, iso: f32) {
    let outside = |v: f32| match kind {
        OutputKind::Occupancy => v.min(iso + BORDER_OUTSIDE),
        OutputKind::Sdf => v.max(iso - BORDER_OUTSIDE),
    };
    let nudge = match kind {
        OutputKind::Occupancy => -1e-6,
        OutputKind::Sdf => 1e-6,
    };
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let v = &mut volume[(z * h + y) * w + x];
                if !v.is_finite() {
                    *v = iso + 2.0 * BORDER_OUTSIDE * if kind == OutputKind::Occupancy { 1.0 } else { -1.0 };
                }
                if z == 0 || y == 0 || x == 0 || z == d - 1 || y == h - 1 || x == w - 1 {
                    *v = outside(*v);
                } else if *v == iso {
                    *v = iso + nudge;
                }
            }
        }
    }
}

/// `n` standard normal samples from a generator seeded by `job_id`.
pub fn normal_noise(job_id: Uuid, n: usize) -> Vec<f32> {
    let id = job_id.as_u128();
    let mut state = (id as u64) ^ ((id >> 64) as u64).rotate_left(17) ^ 0x6a09_e667_f3bc_c909;
    let mut next = || {
        // SplitMix64: fast, well mixed, and the same on every platform.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // Box–Muller; u1 in (0, 1] so the log is finite.
        let u1 = ((next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (next() >> 11) as f64 / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        let a = std::f64::consts::TAU * u2;
        out.push((r * a.cos()) as f32);
        out.push((r * a.sin()) as f32);
    }
    out.truncate(n);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::read_manifests;

    pub(crate) fn testing(name: &str) -> (Manifest, PathBuf) {
        read_manifests(&crate::model::tests::models_dir().join("testing"), &[name.to_string()]).unwrap().remove(0)
    }

    pub(crate) fn load(name: &str) -> LoadedPipeline {
        let (manifest, path) = testing(name);
        assert!(is_pipeline(&path));
        LoadedPipeline::load(manifest, path.parent().unwrap(), Device::Cpu, &MemoryProbe::cpu()).unwrap()
    }

    /// A deterministic RGBA disc of radius `r` pixels, `[1, 4, h, w]`.
    pub(crate) fn disc(h: usize, w: usize, r: f32) -> Tensor {
        let mut v = vec![0f32; 4 * h * w];
        for y in 0..h {
            for x in 0..w {
                let inside = ((x as f32 - w as f32 / 2.0).powi(2) + (y as f32 - h as f32 / 2.0).powi(2)).sqrt() < r;
                for c in 0..4 {
                    v[c * h * w + y * w + x] = if inside { 0.3 + 0.2 * c as f32 } else { 0.0 };
                }
            }
        }
        Tensor::from_slice(&v).view([1, 4, h as i64, w as i64])
    }

    #[test]
    fn noise_is_standard_normal_and_fixed_by_the_job_id() {
        let a = normal_noise(Uuid::from_u128(7), 20_001);
        assert_eq!(a, normal_noise(Uuid::from_u128(7), 20_001));
        assert_ne!(a[..8], normal_noise(Uuid::from_u128(8), 8)[..]);
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean}, var {var}");
    }

    #[test]
    fn feed_forward_pipeline_decodes_a_closed_volume_and_colours_points() {
        let p = load("triposr-tiny");
        assert_eq!(p.steps(), 0);
        let [h, w] = p.manifest.input_size;
        let images = Tensor::cat(&[disc(h, w, 10.0), disc(h, w, 14.0)], 0);
        let latents = p.encode(&images).unwrap();
        let vols = p.decode_volumes(&latents).unwrap();
        let [d, gh, gw] = p.manifest.grid;
        assert_eq!((vols.len(), vols[0].len()), (2, d * gh * gw));
        assert!(vols[0].iter().any(|&v| v > 0.0), "a solid inside");
        assert!(vols[0][0] < 0.0 && vols[0][d * gh * gw - 1] < 0.0, "border outside");
        // Batched == alone, within float tolerance (BLAS may block B = 1 and B = 2 differently).
        let alone = p.decode_volumes(&p.encode(&images.narrow(0, 1, 1)).unwrap()).unwrap();
        let diff = alone[0].iter().zip(&vols[1]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-4, "{diff}");
        let rgb = p.colour_at(&latents.get(0), &[[0.0, 0.0, 0.0], [0.5, -0.5, 0.2]]).unwrap().unwrap();
        assert!(rgb.iter().flatten().all(|c| (0.0..=1.0).contains(c)) && rgb[0] != rgb[1], "{rgb:?}");
    }

    #[test]
    fn a_prepare_stage_runs_once_per_job_and_any_chunking_gives_the_same_volume() {
        let p = load("hunyuan-tiny");
        assert!(p.has_prepare());
        let [h, w] = p.manifest.input_size;
        let cond = p.encode(&Tensor::cat(&[disc(h, w, 9.0), disc(h, w, 13.0)], 0)).unwrap();
        let x = Tensor::stack(&[p.initial_latent(Uuid::from_u128(1)), p.initial_latent(Uuid::from_u128(2))], 0);
        let t = p.timesteps();
        let latents = p.step(&x, &[t[0] as f32; 2], &[t[1] as f32; 2], &cond).unwrap();
        let features = p.prepare(&latents).unwrap();
        assert_eq!(features.size(), [2, 32, 32], "the declared prepared shape");
        let whole = p.decode_prepared(&features).unwrap();
        assert_eq!(whole, p.decode_volumes(&latents).unwrap());
        // The same prepared features queried in other chunk sizes: the cache does not depend on the chunking.
        let mut small = load("hunyuan-tiny");
        small.pipeline.decode.chunk_points = 1000;
        let chunked = small.decode_prepared(&features).unwrap();
        let diff = whole[1].iter().zip(&chunked[1]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-5, "{diff}");
        // decode_points prepares on its own.
        let pts = Tensor::from_slice(&[0.1f32, -0.2, 0.3, 0.5, 0.5, -0.5]).view([2, 3]);
        let a = p.decode_points(&latents, &pts).unwrap();
        let b = p.query(&p.decode, "decode", &features, &pts, 2).unwrap();
        assert!((a - b).abs().max().double_value(&[]) == 0.0);
    }

    #[test]
    fn a_broken_declaration_is_refused_with_a_stable_code() {
        let (manifest, path) = testing("hunyuan-tiny");
        let dir = tempfile::tempdir().unwrap();
        for f in ["encode.pt", "step.pt", "prepare.pt", "decode.pt"] {
            std::fs::copy(path.parent().unwrap().join(f), dir.path().join(f)).unwrap();
        }
        let text = std::fs::read_to_string(path.parent().unwrap().join("pipeline.toml")).unwrap();
        // Declared latents that the step module does not produce: a contract error.
        std::fs::write(dir.path().join("pipeline.toml"), text.replace("latent_shape = [32, 8]", "latent_shape = [32, 9]")).unwrap();
        let e = LoadedPipeline::load(manifest.clone(), dir.path(), Device::Cpu, &MemoryProbe::cpu()).err().unwrap();
        assert_eq!(e.code(), "forward_failed", "the step module refuses latents of the wrong shape: {e}");
        std::fs::write(dir.path().join("pipeline.toml"), text.replace("output_shape = [16, 32]", "output_shape = [16, 31]")).unwrap();
        let e = LoadedPipeline::load(manifest.clone(), dir.path(), Device::Cpu, &MemoryProbe::cpu()).err().unwrap();
        assert_eq!(e.code(), "model_contract", "{e}");
        // A prepare stage that does not give what it declares.
        std::fs::write(dir.path().join("pipeline.toml"), text.replace("output_shape = [32, 32]", "output_shape = [32, 33]")).unwrap();
        let e = LoadedPipeline::load(manifest.clone(), dir.path(), Device::Cpu, &MemoryProbe::cpu()).err().unwrap();
        assert!(e.code() == "model_contract" && e.to_string().contains("prepare"), "{e}");
        // Without the prepare stage, decode gets latents it was not made for: refused at load, not at the first job.
        let no_prepare: String = text.lines().filter(|l| !l.starts_with("prepare")).map(|l| format!("{l}\n")).collect();
        std::fs::write(dir.path().join("pipeline.toml"), no_prepare).unwrap();
        let e = LoadedPipeline::load(manifest.clone(), dir.path(), Device::Cpu, &MemoryProbe::cpu()).err().unwrap();
        assert_eq!(e.code(), "forward_failed", "{e}");
        std::fs::remove_file(dir.path().join("decode.pt")).unwrap();
        let e = LoadedPipeline::load(manifest, dir.path(), Device::Cpu, &MemoryProbe::cpu()).err().unwrap();
        assert_eq!(e.code(), "pipeline_missing_file", "{e}");
    }
}
