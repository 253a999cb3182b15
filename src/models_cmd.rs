//! `orfeas models` (list what a deployment serves) and `orfeas
//! bench-forward` (raw forward-pass throughput of one model).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use orfeas_actors::{
    bus,
    device::{self, MemoryProbe},
    model::{self, LoadedModel},
};
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
