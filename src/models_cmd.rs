//! `orfeas models` (list what a deployment serves), `orfeas models check
//! DIR` (validate a model folder before a node loads it) and `orfeas
//! bench-forward` (raw forward-pass throughput of one model).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use orfeas_actors::{
    bus,
    device::{self, MemoryProbe},
    model::{self, LoadedModel, ModelError},
    pipeline::{self, LoadedPipeline},
    stages::Pipeline,
};
use serde::Serialize;
use orfeas_wire::{
    subjects,
    v1::{ListModels, ModelList},
};
use tch::{Device, Kind, Tensor};

use crate::cli::{BenchForwardArgs, ModelsArgs};

/// Ask any one node for its models and print them.
pub async fn list(url: &str, args: &ModelsArgs) -> Result<()> {
    let client = bus::connect(url, "orfeas-cli").await?;
    let request = client.request(
        subjects::MODELS_LIST,
        orfeas_wire::to_cbor(&ListModels {}).into(),
    );
    let answer = tokio::time::timeout(Duration::from_secs(args.timeout_s), request)
        .await
        .with_context(|| {
            format!(
                "no node answered on {} within {} s",
                subjects::MODELS_LIST,
                args.timeout_s
            )
        })?
        .with_context(|| {
            format!(
                "no node answered on {} (is a node running?)",
                subjects::MODELS_LIST
            )
        })?;
    let list: ModelList = orfeas_wire::from_cbor(&answer.payload)
        .map_err(anyhow::Error::msg)
        .context("decoding the model list")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!("models served (answered by node {}):", list.node);
    println!(
        "{:<12} {:<9} {:<9} {:<12} {:>9} {:<9} {:<10} params",
        "name", "version", "input", "grid", "max_batch", "precision", "preprocess"
    );
    for m in &list.models {
        let params = if m.params.is_empty() {
            "-".to_string()
        } else {
            m.params
                .iter()
                .map(|p| {
                    if p.boolean {
                        format!("{}={}", p.name, p.default != 0.0)
                    } else {
                        format!("{}={}", p.name, p.default)
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "{:<12} {:<9} {:<9} {:<12} {:>9} {:<9} {:<10} {}",
            m.name,
            m.version,
            format!("{}x{}", m.input_size[0], m.input_size[1]),
            format!("{}x{}x{}", m.grid[0], m.grid[1], m.grid[2]),
            m.max_batch,
            m.precision,
            m.preprocess,
            params
        );
    }
    Ok(())
}

/// A centred opaque disc on a transparent background, `[4, H, W]`: an
/// object every built-in model turns into a non-empty volume.
fn disc(h: usize, w: usize) -> Tensor {
    let mut chw = vec![0f32; 4 * h * w];
    let radius = 0.4 * h.min(w) as f32;
    for y in 0..h {
        for x in 0..w {
            let (dx, dy) = (
                x as f32 + 0.5 - w as f32 / 2.0,
                y as f32 + 0.5 - h as f32 / 2.0,
            );
            if dx * dx + dy * dy < radius * radius {
                let i = y * w + x;
                chw[i] = 0.2 + 0.6 * x as f32 / w as f32;
                chw[h * w + i] = 0.3 + 0.4 * y as f32 / h as f32;
                chw[2 * h * w + i] = 0.5;
                chw[3 * h * w + i] = 1.0;
            }
        }
    }
    Tensor::from_slice(&chw).view([4, h as i64, w as i64])
}

/// Load one model as a node would (warm-up included) and time forward
/// passes at each batch size: fastest and median wall time, items per
/// second, speedup over the first batch size. Times include the host↔device copies a
/// node's forward pass makes.
pub fn bench_forward(args: &BenchForwardArgs) -> Result<()> {
    let dir = args
        .model
        .parent()
        .context("--model is a model folder, e.g. models/inflate")?;
    let name = args
        .model
        .file_name()
        .and_then(|n| n.to_str())
        .context("--model names a folder")?;
    let (manifest, path) = model::read_manifests(dir, &[name.to_string()])?.remove(0);
    if args.batches.is_empty() || args.batches.contains(&0) {
        bail!("--batches needs sizes of at least 1");
    }
    if args.threads > 0 {
        tch::set_num_threads(args.threads as i32);
    }
    let device = if !args.cpu && tch::Cuda::is_available() {
        Device::Cuda(0)
    } else {
        Device::Cpu
    };
    let compute = device::discover(device.is_cuda()).remove(0);
    let probe = MemoryProbe::for_device(&compute);
    let model = LoadedModel::load(manifest.clone(), &path, device, &probe)?;
    let [h, w] = manifest.input_size;
    println!(
        "model {} {} on {} ({} threads): load {:.3} s, warm-up (B=1, B=2) {:.3} s; input {}x{}, grid {:?}, precision {:?}",
        manifest.name,
        manifest.version,
        compute.id,
        tch::get_num_threads(),
        model.times.load_seconds,
        model.times.warmup_seconds,
        h,
        w,
        manifest.grid,
        model::compute_kind(device, manifest.precision)
    );
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!(
            "load average before timing: {}",
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let item = disc(h, w);
    // On a shared machine the fastest pass is the least disturbed one; the
    // median shows what the neighbours cost.
    let first = args.batches[0];
    println!("| B | min ms / forward | median ms | items/s (min) | items/s (median) | speedup vs B={first} (min) | (median) |");
    println!("|---|---|---|---|---|---|---|");
    let mut base: Option<(f64, f64)> = None;
    for &b in &args.batches {
        let input = item
            .unsqueeze(0)
            .repeat([b as i64, 1, 1, 1])
            .to_kind(Kind::Float)
            .contiguous();
        let params = model.default_params(b);
        for _ in 0..2 {
            drop(model.forward(&input, params.as_ref())?);
        }
        let mut times = Vec::with_capacity(args.iters.max(1));
        for _ in 0..args.iters.max(1) {
            let started = Instant::now();
            let out = model.forward(&input, params.as_ref())?;
            times.push(started.elapsed().as_secs_f64());
            drop(out);
        }
        times.sort_by(f64::total_cmp);
        let (fastest, median) = (times[0], times[times.len() / 2]);
        let rates = (b as f64 / fastest, b as f64 / median);
        let (base_min, base_median) = *base.get_or_insert(rates);
        println!(
            "| {b} | {:.2} | {:.2} | {:.1} | {:.1} | {:.2}× | {:.2}× |",
            fastest * 1000.0,
            median * 1000.0,
            rates.0,
            rates.1,
            rates.0 / base_min,
            rates.1 / base_median
        );
    }
    Ok(())
}

/// Largest difference allowed between a batch item and the same item run
/// alone (BLAS may block B = 1 and B = 2 differently; a model whose items
/// really depend on each other differs by far more).
const BATCH_TOLERANCE: f64 = 1e-3;
/// Sampler steps the batch-independence check runs.
const CHECK_STEPS: usize = 3;

/// One line of a check.
#[derive(Debug, Serialize)]
pub struct CheckStep {
    /// What was checked.
    pub what: String,
    /// Passed.
    pub ok: bool,
    /// What was found (timings, shapes) or what is wrong.
    pub detail: String,
}

/// What `orfeas models check` found.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    /// The folder.
    pub dir: String,
    /// `pipeline` or `single_call`.
    pub kind: &'static str,
    /// Every check passed.
    pub ok: bool,
    /// Stable code of the first failure (`model_manifest`, `pipeline_invalid`,
    /// `pipeline_missing_file`, `model_load`, `model_contract`,
    /// `forward_failed`, `out_of_memory`, `device_lost`, `batch_dependent`).
    pub code: Option<String>,
    /// The checks, in order; the first failure is the last.
    pub steps: Vec<CheckStep>,
}

impl CheckReport {
    fn pass(&mut self, what: &str, detail: String) {
        self.steps.push(CheckStep { what: what.into(), ok: true, detail });
    }

    fn fail(mut self, what: &str, code: &str, detail: String) -> Self {
        self.steps.push(CheckStep { what: what.into(), ok: false, detail });
        self.ok = false;
        self.code = Some(code.into());
        self
    }
}

/// Check the model folder `dir` as a node would load it, and a little more.
pub fn check(dir: &std::path::Path, cpu: bool) -> Result<CheckReport> {
    let dir = dir.canonicalize().with_context(|| format!("model folder {}", dir.display()))?;
    let mut report = CheckReport { dir: dir.display().to_string(), kind: "single_call", ok: true, code: None, steps: Vec::new() };
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name().and_then(|n| n.to_str())) else {
        return Ok(report.fail("manifest", "model_manifest", "not a model folder".into()));
    };
    let (manifest, path) = match model::read_manifests(parent, &[name.to_string()]) {
        Ok(mut found) => found.remove(0),
        Err(e) => return Ok(report.fail("manifest", e.code(), e.to_string())),
    };
    report.pass("manifest", format!("{} {}: input {:?}, grid {:?}, max_batch {}", manifest.name, manifest.version, manifest.input_size, manifest.grid, manifest.max_batch));
    let device = if !cpu && tch::Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu };
    let compute = device::discover(device.is_cuda()).remove(0);
    let probe = MemoryProbe::for_device(&compute);
    if !pipeline::is_pipeline(&path) {
        return Ok(match LoadedModel::load(manifest, &path, device, &probe) {
            Ok(m) => {
                report.pass("load + B=1, B=2 forward", format!("on {}: load {:.3} s, warm-up {:.3} s", compute.id, m.times.load_seconds, m.times.warmup_seconds));
                report
            }
            Err(e) => report.fail("load + B=1, B=2 forward", e.code(), e.to_string()),
        });
    }
    report.kind = "pipeline";
    let declared = match Pipeline::read(&dir) {
        Ok(Some(p)) => p,
        Ok(None) => unreachable!("is_pipeline saw the file"),
        Err(e) => return Ok(report.fail("pipeline.toml", e.code(), e.to_string())),
    };
    report.pass("pipeline.toml", format!("stages {}", declared.files().join(" → ")));
    let p = match LoadedPipeline::load(manifest, &dir, device, &probe) {
        Ok(p) => p,
        Err(e) => return Ok(report.fail("load every stage + B=1, B=2 smoke pass", e.code(), e.to_string())),
    };
    report.pass("load every stage + B=1, B=2 smoke pass", format!("on {}: load {:.3} s, smoke {:.3} s; shapes as declared", compute.id, p.times.load_seconds, p.times.warmup_seconds));
    match batch_independence(&p) {
        Ok(diff) if diff <= BATCH_TOLERANCE => report.pass("batch items independent", format!("B=2 vs alone: max abs diff {diff:.2e} after {} step(s), at 512 decoded points", p.steps().min(CHECK_STEPS))),
        Ok(diff) => return Ok(report.fail("batch items independent", "batch_dependent", format!("item 1 of a batch of 2 differs from running it alone by {diff:.3e} (> {BATCH_TOLERANCE:e}): a stage mixes batch items"))),
        Err(e) => return Ok(report.fail("batch items independent", e.code(), e.to_string())),
    }
    Ok(report)
}

/// Two different images sampled together vs the second alone: the
/// largest difference of the decoded field at 512 grid points.
fn batch_independence(p: &LoadedPipeline) -> Result<f64, ModelError> {
    let [h, w] = p.manifest.input_size;
    let images = Tensor::stack(&[disc(h, w), disc(h, w).flip([2])], 0);
    let run = |images: &Tensor, ids: &[u128]| -> Result<Tensor, ModelError> {
        let cond = p.encode(images)?;
        let mut x = if p.steps() == 0 {
            cond.shallow_clone()
        } else {
            let latents = ids.iter().map(|&i| p.start_latent(uuid::Uuid::from_u128(i))).collect::<Result<Vec<_>, _>>()?;
            Tensor::stack(&latents, 0)
        };
        let t = p.timesteps();
        // Three steps show a stage that mixes items as well as fifty, at a
        // fraction of the time for a real-size DiT.
        for i in 0..p.steps().min(CHECK_STEPS) {
            let n = ids.len();
            x = p.step(&x, &vec![t[i] as f32; n], &vec![t[i + 1] as f32; n], &cond)?;
        }
        p.decode_points(&x, &fixed_points())
    };
    let together = run(&images, &[1, 2])?;
    let alone = run(&images.narrow(0, 1, 1), &[2])?;
    Ok((together.get(1) - alone.get(0)).abs().max().double_value(&[]))
}

/// 512 fixed points spread through [-0.9, 0.9]^3.
fn fixed_points() -> Tensor {
    let v: Vec<f32> = (0..512 * 3).map(|i| ((i as f32 * 0.618_034).fract() * 1.8) - 0.9).collect();
    Tensor::from_slice(&v).view([512, 3])
}

/// Print a check report (text or JSON).
pub fn print_check(report: &CheckReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!("checking {} ({})", report.dir, report.kind);
    for s in &report.steps {
        println!("  {} {:<40} {}", if s.ok { "ok  " } else { "FAIL" }, s.what, s.detail);
    }
    match &report.code {
        None => println!("ok: a node can load this model"),
        Some(code) => println!("error[{code}]: a node would refuse this model"),
    }
    Ok(())
}
