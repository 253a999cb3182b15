//! `orfeas mesh`: the mesh pipeline on a volume from any model, without a
//! node — for using orfeas' meshing on its own and for benchmarking.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use orfeas_mesh::{ExportFormat, Inside, MeshOptions, Volume};

use crate::cli::MeshArgs;

fn format_of(path: &std::path::Path) -> Result<ExportFormat> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    Ok(match ext.as_str() {
        "glb" => ExportFormat::Glb,
        "stl" => ExportFormat::Stl,
        "obj" => ExportFormat::Obj,
        "ply" => ExportFormat::Ply,
        "3mf" => ExportFormat::ThreeMf,
        other => bail!("output extension {other:?} is not one of glb, stl, obj, ply, 3mf"),
    })
}

fn bounds(values: &[f32], name: &str) -> Result<[f32; 3]> {
    values.try_into().map_err(|_| anyhow::anyhow!("{name} needs three numbers x,y,z, got {}", values.len()))
}

/// Run the pipeline and write the file; prints the printability report.
pub fn run(args: &MeshArgs) -> Result<()> {
    let format = format_of(&args.output)?;
    let bytes = std::fs::read(&args.volume).with_context(|| format!("reading {}", args.volume.display()))?;
    let (data, dims) = orfeas_mesh::read_npy(&bytes).with_context(|| format!("{} is not a float32 C-order 3-D .npy", args.volume.display()))?;
    let volume = Volume {
        data: &data,
        dims,
        bounds_min: bounds(&args.bounds_min, "--bounds-min")?,
        bounds_max: bounds(&args.bounds_max, "--bounds-max")?,
        iso: args.iso,
        inside: if args.sdf { Inside::Below } else { Inside::Above },
    };
    let options = MeshOptions { target_faces: args.faces, smooth: !args.no_smooth, size_mm: args.size_mm, ..MeshOptions::default() };
    let started = Instant::now();
    let processed = orfeas_mesh::process(&volume, &options).map_err(|e| anyhow::anyhow!("{e} ({})", e.code()))?;
    let meshed = started.elapsed();
    let file = orfeas_mesh::export(&processed.mesh, format, args.size_mm).map_err(|e| anyhow::anyhow!("{e} ({})", e.code()))?;
    if let Some(parent) = args.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.output, file)?;
    if args.previews {
        for (view, png) in orfeas_mesh::render_previews(&processed.mesh, 512) {
            let path = args.output.with_extension(format!("{view}.png"));
            std::fs::write(&path, png)?;
            println!("wrote {}", path.display());
        }
    }
    let r = &processed.report;
    println!("wrote {} ({} faces, meshed in {:.3} s)", args.output.display(), r.faces, meshed.as_secs_f64());
    println!(
        "closed: {}  2-manifold: {}  winding consistent: {}  components: {}  genus: {}",
        r.closed,
        r.two_manifold,
        r.winding_consistent,
        r.components,
        r.genus.map(|g| g.to_string()).unwrap_or_else(|| "-".into())
    );
    println!(
        "volume: {:.1} mm³  area: {:.1} mm²  box: {:.1} × {:.1} × {:.1} mm  fits build volume: {}",
        r.volume_mm3, r.area_mm2, r.bbox_mm[0], r.bbox_mm[1], r.bbox_mm[2], r.fits_build_volume
    );
    for problem in &r.problems {
        println!("problem: {problem}");
    }
    for note in &processed.notes {
        println!("note: {note}");
    }
    Ok(())
}
