//! The CPU cost of one `null`-model job after its forward pass, stage by
//! stage, for md/benchmarks.md "Control plane": the node's postprocess runs
//! exactly these steps for the null model's sphere (32³ occupancy, floater
//! fraction 0.02, colours from a 128² image, GLB + STL, four 512² previews,
//! the model-unit box of the job's statistics; the rest of them come from the
//! print report).
//!
//! ```text
//! cargo run --release -p orfeas-mesh --example bench_null [jobs]
//! ```
//! Prints, per stage over `jobs` runs (default 100), the median and 90th
//! percentile of wall time and the median of process CPU time (all threads:
//! the previews render on four), which a busy machine inflates far less.

use std::time::{Duration, Instant};

use orfeas_mesh::{
    export_files, process, project_colours, render_previews, used_bounds, ExportFormat, Image, ImagePlane, Inside, MeshOptions,
    Volume,
};

/// The null model's output: occupancy 0.6 − |p| on a 32³ grid over [−1, 1]³.
fn null_volume() -> Vec<f32> {
    let n = 32;
    let c = |i: usize| -1.0 + 2.0 * i as f32 / (n - 1) as f32;
    let mut data = Vec::with_capacity(n * n * n);
    for k in 0..n {
        for j in 0..n {
            for i in 0..n {
                data.push(0.6 - (c(i) * c(i) + c(j) * c(j) + c(k) * c(k)).sqrt());
            }
        }
    }
    data
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// CPU time of this process so far, all threads, in ms.
fn cpu_ms() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6
}

/// Median of `s`, sorted in place.
fn median(s: &mut [f64]) -> f64 {
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let jobs: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(100);
    let data = null_volume();
    let volume = Volume {
        data: &data,
        dims: [32; 3],
        bounds_min: [-1.0; 3],
        bounds_max: [1.0; 3],
        iso: 0.0,
        inside: Inside::Above,
    };
    let options = MeshOptions { floater_fraction: 0.02, ..MeshOptions::default() };
    let rgba: Vec<u8> = (0..128 * 128).flat_map(|i| [(i % 251) as u8, (i / 128) as u8 * 2, 90, 255]).collect();
    let image = Image::new(128, 128, rgba)?;
    let plane = ImagePlane { min: [-1.0, -1.0], max: [1.0, 1.0] };
    // The pipeline's own stages (timed inside `process`), then ours.
    let names = [
        "extract", "smooth", "report", "process (all)", "colours", "export glb+stl", "previews 4×512²", "stats box", "total",
    ];
    let mut wall: Vec<Vec<f64>> = vec![Vec::with_capacity(jobs); names.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::with_capacity(jobs); names.len()];
    let mut faces = 0;
    for _ in 0..jobs {
        let (t0, c0) = (Instant::now(), cpu_ms());
        let processed = process(&volume, &options)?;
        for (stage, d) in &processed.stages {
            if let Some(i) = names.iter().position(|n| n == stage) {
                wall[i].push(ms(*d));
            }
        }
        wall[3].push(ms(t0.elapsed()));
        cpu[3].push(cpu_ms() - c0);
        let mut mesh = processed.mesh;
        let mut timed = |i: usize, f: &mut dyn FnMut()| {
            let (t, c) = (Instant::now(), cpu_ms());
            f();
            wall[i].push(ms(t.elapsed()));
            cpu[i].push(cpu_ms() - c);
        };
        timed(4, &mut || mesh.colors = Some(project_colours(&mesh, &image, &plane)));
        timed(5, &mut || {
            for format in [ExportFormat::Glb, ExportFormat::Stl] {
                export_files(&mesh, format, None, None, "model").expect("export");
            }
        });
        timed(6, &mut || assert_eq!(render_previews(&mesh, 512).len(), 4));
        timed(7, &mut || assert!(used_bounds(&mesh).is_some()));
        faces = mesh.indices.len();
        wall[8].push(ms(t0.elapsed()));
        cpu[8].push(cpu_ms() - c0);
    }
    println!("null-model job, {faces} faces, {jobs} runs: wall median / p90, CPU median (ms)");
    for ((name, mut w), mut c) in names.iter().zip(wall).zip(cpu) {
        if w.is_empty() {
            continue;
        }
        let p90 = {
            w.sort_by(f64::total_cmp);
            w[((w.len() - 1) as f64 * 0.9).round() as usize]
        };
        let c = if c.is_empty() { "      -".to_string() } else { format!("{:7.2}", median(&mut c)) };
        println!("{name:>18}: {:7.2} / {p90:7.2}   cpu {c}", median(&mut w));
    }
    Ok(())
}
