//! Times extraction at several sizes and the whole postprocess on the synthetic SDF of
//! `bench_extract` (a ball, a ring and 24 floaters), for md/benchmarks.md "Mesh pipeline".
//!
//! ```text
//! cargo run --release -p orfeas-mesh --example bench_pipeline [n ...]
//! ```
//! Sizes default to 128 256 512. Extraction (full resolution): best of 3. Postprocess
//! (`process` to 40 k faces: extract, with coarsening when allowed → floaters → Taubin
//! smoothing → meshoptimizer with validation/repair → print report; then normals + GLB),
//! with and without coarsening: best of 3, with that run's stages and its distance to
//! the true surface. Single-threaded except the previews (4 threads).

use std::time::{Duration, Instant};

use orfeas_mesh::{
    export, extract, process, render_previews, ExportFormat, Inside, Mesh, MeshOptions, Volume,
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

/// Mean and largest distance from the mesh (vertices and face centroids) to the true
/// surface, in world units.
fn surface_error(mesh: &Mesh) -> (f64, f64) {
    let mut points: Vec<[f32; 3]> = mesh.positions.clone();
    points.extend(mesh.indices.iter().map(|f| {
        let [a, b, c] = f.map(|v| mesh.positions[v as usize]);
        std::array::from_fn(|i| (a[i] + b[i] + c[i]) / 3.0)
    }));
    let d: Vec<f64> = points
        .iter()
        .map(|p| f64::from(shape(p[0], p[1], p[2]).abs()))
        .collect();
    let mean = d.iter().sum::<f64>() / d.len() as f64;
    (mean, d.iter().copied().fold(0.0, f64::max))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    if sizes.is_empty() {
        sizes = vec![128, 256, 512];
    }
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

        for coarsen in [true, false] {
            let options = MeshOptions {
                target_faces: Some(40_000),
                coarsen,
                ..MeshOptions::default()
            };
            let mut best = Duration::MAX;
            let mut line = String::new();
            for _ in 0..3 {
                let t0 = Instant::now();
                let processed = process(&volume, &options)?;
                let t = Instant::now();
                let glb = export(&processed.mesh, ExportFormat::Glb, None)?;
                let glb_time = t.elapsed();
                let total = t0.elapsed();
                if total >= best {
                    continue;
                }
                best = total;
                let r = &processed.report;
                let (mean, max) = surface_error(&processed.mesh);
                let step = 2.0 / 255.0;
                let stages: Vec<String> = processed
                    .stages
                    .iter()
                    .map(|(s, d)| format!("{s} {:.0}", ms(*d)))
                    .chain([format!("normals+glb {:.0}", ms(glb_time))])
                    .collect();
                line = format!(
                    "{:.0} ms ({} ms) — {} faces, closed {} manifold {} printable {}, \
                     self-intersections {:?}, volume {:.4}, surface error mean {:.3} max {:.3} \
                     (256³ steps), glb {} bytes, notes {:?}",
                    ms(total),
                    stages.join(", "),
                    r.faces,
                    r.closed,
                    r.two_manifold,
                    r.is_printable(),
                    r.self_intersections,
                    r.volume_mm3,
                    mean / step,
                    max / step,
                    glb.len(),
                    processed.notes
                );
            }
            println!("{n}³ postprocess to 40k, coarsen {coarsen}: {line}");
        }
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
