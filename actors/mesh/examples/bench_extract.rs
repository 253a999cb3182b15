//! Times extraction (and the steps after it) on a synthetic SDF: a torus-knotted blob
//! plus 24 small floaters, like the baselines in the design notes.
//!
//! ```text
//! cargo run --release -p orfeas-mesh --example bench_extract [n ...] [--glb out.glb]
//! ```
//! Sizes default to 96 and 256; `--glb` writes the last size's mesh (coloured by normal,
//! to exercise COLOR_0) for the Khronos validator. Single-threaded; the best of three runs is reported
//! because the machine is shared.

use std::time::{Duration, Instant};

use orfeas_mesh::{
    check, extract, remove_floaters, to_glb, to_stl, vertex_normals, Inside, Volume,
};

fn shape(x: f32, y: f32, z: f32) -> f32 {
    let ball = (x * x + y * y + z * z).sqrt() - 0.55;
    let ring = ((x * x + z * z).sqrt() - 0.7).hypot(y) - 0.12;
    let mut d = ball.min(ring);
    // 24 floaters on a spiral around the shape.
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

fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..runs {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed());
        out = Some(r);
    }
    (best, out.expect("at least one run"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut sizes = Vec::new();
    let mut glb_path = None;
    while let Some(a) = args.next() {
        if a == "--glb" {
            glb_path = args.next();
        } else {
            sizes.push(a.parse::<usize>()?);
        }
    }
    if sizes.is_empty() {
        sizes = vec![96, 256];
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
        let (t_extract, mesh) = best(3, || extract(&volume));
        let mesh = mesh?;
        let (t_floaters, kept) = best(3, || remove_floaters(&mesh, 0.1));
        let (t_check, topo) = best(1, || check(&mesh));
        let (t_glb, glb) = best(1, || to_glb(&kept));
        let glb_bytes = glb?.len();
        let (t_stl, _) = best(1, || to_stl(&kept));
        println!(
            "{n}³: extract {:.1} ms ({} vertices, {} faces, closed {}, {} components) | \
             floaters {:.1} ms → {} faces | check {:.1} ms | glb {:.1} ms ({} bytes) | stl {:.1} ms",
            t_extract.as_secs_f64() * 1e3,
            mesh.positions.len(),
            mesh.indices.len(),
            topo.is_closed_manifold(),
            topo.components,
            t_floaters.as_secs_f64() * 1e3,
            kept.indices.len(),
            t_check.as_secs_f64() * 1e3,
            t_glb.as_secs_f64() * 1e3,
            glb_bytes,
            t_stl.as_secs_f64() * 1e3,
        );
        if let Some(path) = &glb_path {
            // Colour by normal so the written file exercises COLOR_0 too.
            let mut coloured = kept.clone();
            let colors = vertex_normals(&kept)
                .into_iter()
                .map(|n| n.map(|c| 0.5 + 0.5 * c))
                .collect();
            coloured.colors = Some(colors);
            std::fs::write(path, to_glb(&coloured)?)?;
        }
    }
    Ok(())
}
