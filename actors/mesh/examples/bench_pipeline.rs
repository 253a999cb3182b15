//! Times extraction at several sizes and the whole postprocess on the synthetic SDF of
//! `bench_extract` (a ball, a ring and 24 floaters), for md/benchmarks.md "Mesh pipeline".
//!
//! ```text
//! cargo run --release -p orfeas-mesh --example bench_pipeline [n ...]
//! ```
//! Sizes default to 128 256 512. Extraction: best of 3. Postprocess (extract → floaters
//! → Taubin smoothing → meshoptimizer to 40 k with validation/repair → print report →
//! normals + GLB): best of 3, with the stages of the last run. Single-threaded except the
//! previews (4 threads).

use std::time::{Duration, Instant};

use orfeas_mesh::{
    decimate, export, extract, print_report, remove_floaters, render_previews, smooth,
    ExportFormat, Inside, MeshOptions, Volume,
};

fn shape(x: f32, y: f32, z: f32) -> f32 {
    let ball = (x * x + y * y + z * z).sqrt() - 0.55;
    let ring = ((x * x + z * z).sqrt() - 0.7).hypot(y) - 0.12;
    let mut d = ball.min(ring);
    for k in 0..24 {
        let a = k as f32 * 0.9;
        let c = [0.88 * a.cos(), -0.8 + k as f32 * 0.07, 0.88 * a.sin()];
        let f = ((x - c[0]).powi(2) + (y - c[1]).powi(2) + (z - c[2]).powi(2)).sqrt() - 0.035;
        d = d.min(f);
    }
    d
}

fn sample(n: usize) -> Vec<f32> {
    let c = |i: usize| -1.0 + 2.0 * i as f32 / (n - 1) as f32;
    let mut data = Vec::with_capacity(n * n * n);
    for k in 0..n {
        for j in 0..n {
            for i in 0..n {
                data.push(shape(c(i), c(j), c(k)));
            }
        }
    }
    data
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    if sizes.is_empty() {
        sizes = vec![128, 256, 512];
    }
    let options = MeshOptions {
        target_faces: Some(40_000),
        ..MeshOptions::default()
    };
    for n in sizes {
        let data = sample(n);
        let volume = Volume {
            data: &data,
            dims: [n; 3],
            bounds_min: [-1.0; 3],
            bounds_max: [1.0; 3],
            iso: 0.0,
            inside: Inside::Below,
        };
        let mut best_extract = Duration::MAX;
        let mut faces = 0;
        for _ in 0..3 {
            let t = Instant::now();
            let mesh = extract(&volume)?;
            best_extract = best_extract.min(t.elapsed());
            faces = mesh.indices.len();
        }
        println!("{n}³ extract: {:.1} ms, {faces} faces", ms(best_extract));

        let mut best_total = Duration::MAX;
        let mut stages = Vec::new();
        let mut summary = String::new();
        for _ in 0..3 {
            stages.clear();
            let t0 = Instant::now();
            let mut lap = Instant::now();
            let mut stage = |name: &'static str, stages: &mut Vec<(&str, Duration)>| {
                stages.push((name, lap.elapsed()));
                lap = Instant::now();
            };
            let mesh = extract(&volume)?;
            stage("extract", &mut stages);
            let mut mesh = remove_floaters(&mesh, options.floater_fraction);
            stage("floaters", &mut stages);
            smooth(&mut mesh, options.smooth_iterations);
            stage("smooth", &mut stages);
            let decimated = decimate(&mesh, 40_000, options.decimate_max_error);
            stage("decimate+validate", &mut stages);
            let report = print_report(&decimated.mesh, &options);
            stage("report", &mut stages);
            let glb = export(&decimated.mesh, ExportFormat::Glb, None)?;
            stage("normals+glb", &mut stages);
            let total = t0.elapsed();
            best_total = best_total.min(total);
            summary = format!(
                "{} faces, printable {}, self-intersections {:?}, notes {:?}, glb {} bytes",
                decimated.mesh.indices.len(),
                report.is_printable(),
                report.self_intersections,
                decimated.notes,
                glb.len()
            );
        }
        let parts: Vec<String> = stages
            .iter()
            .map(|(s, d)| format!("{s} {:.0}", ms(*d)))
            .collect();
        println!(
            "{n}³ postprocess to 40k: {:.0} ms (last run: {} ms) — {summary}",
            ms(best_total),
            parts.join(", ")
        );
        if n == 256 {
            let mesh = extract(&volume)?;
            let t = Instant::now();
            let previews = render_previews(&mesh, 512);
            println!(
                "{n}³ previews of {} faces, 4 × 512²: {:.0} ms ({} PNG bytes)",
                mesh.indices.len(),
                ms(t.elapsed()),
                previews.iter().map(|p| p.1.len()).sum::<usize>()
            );
        }
    }
    Ok(())
}
