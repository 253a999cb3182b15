//! `orfeas mesh`: the mesh pipeline on a volume from any model, without a
//! node — for using orfeas' meshing on its own and for benchmarking.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use orfeas_mesh::{ExportFormat, Image, ImagePlane, Inside, MeshOptions, Volume};

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

/// The image for --colour/--texture, decoded to RGBA.
fn read_image(path: &std::path::Path) -> Result<Image> {
    let decoded = image::ImageReader::open(path)
        .with_context(|| format!("reading {}", path.display()))?
        .with_guessed_format()?
        .decode()
        .with_context(|| format!("{} is not a PNG, JPEG or WebP image", path.display()))?
        .to_rgba8();
    let (width, height) = decoded.dimensions();
    Image::new(width, height, decoded.into_raw()).map_err(|e| anyhow::anyhow!("{e} ({})", e.code()))
}

/// Run the pipeline and write the file(s); prints the printability report.
pub fn run(args: &MeshArgs) -> Result<()> {
    let format = format_of(&args.output)?;
    let image = args.texture.as_deref().or(args.colour.as_deref()).map(read_image).transpose()?;
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
    let options = MeshOptions {
        target_faces: args.faces,
        smooth: !args.no_smooth,
        size_mm: args.size_mm,
        build_volume_mm: args.build_volume_mm.unwrap_or(orfeas_mesh::DEFAULT_BUILD_VOLUME_MM),
        ..MeshOptions::default()
    };
    let started = Instant::now();
    let processed = orfeas_mesh::process(&volume, &options).map_err(|e| anyhow::anyhow!("{e} ({})", e.code()))?;
    let meshed = started.elapsed();
    let mut mesh = processed.mesh;
    // The image stands in front of the volume: its pixel centres span the x/y bounds.
    let plane = ImagePlane { min: [volume.bounds_min[0], volume.bounds_min[1]], max: [volume.bounds_max[0], volume.bounds_max[1]] };
    let texture = image.as_ref().and_then(|image| {
        mesh.colors = Some(orfeas_mesh::project_colours(&mesh, image, &plane));
        args.texture.is_some().then(|| orfeas_mesh::project_texture(&mesh, image, &plane))
    });
    // Turned after colouring (colours and UVs were projected as seen from the front and
    // stay on their vertices); the report then measures the mesh as it will print.
    let report = if args.lay_flat {
        mesh = orfeas_mesh::lay_flat(&mesh);
        orfeas_mesh::print_report(&mesh, &options)
    } else {
        processed.report
    };
    let stem = args.output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let files = orfeas_mesh::export_files(&mesh, format, args.size_mm, texture.as_ref(), &stem).map_err(|e| anyhow::anyhow!("{e} ({})", e.code()))?;
    if let Some(parent) = args.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    for (i, file) in files.iter().enumerate() {
        // The first file is the output itself; the rest sit beside it under the names it uses.
        let path = if i == 0 { args.output.clone() } else { args.output.with_file_name(&file.name) };
        std::fs::write(&path, &file.bytes)?;
        if i > 0 {
            println!("wrote {}", path.display());
        }
    }
    if args.previews {
        for (view, png) in orfeas_mesh::render_previews(&mesh, 512) {
            let path = args.output.with_extension(format!("{view}.png"));
            std::fs::write(&path, png)?;
            println!("wrote {}", path.display());
        }
    }
    let r = &report;
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
    let c = &r.checks;
    println!(
        "parts: {} ({} floating)  bed contact: {:.1} mm²  tips over: {}  overhangs > {}°: {:.0} mm²  thinnest wall: {}",
        c.parts,
        c.floating_parts,
        c.bed_contact_mm2,
        c.tips_over,
        orfeas_mesh::OVERHANG_ANGLE_DEG,
        c.overhang_mm2,
        c.min_wall_mm.map(|w| format!("{w:.2} mm")).unwrap_or_else(|| "-".into())
    );
    for issue in &r.issues {
        let severity = if issue.severity == orfeas_mesh::Severity::Error { "problem" } else { "warning" };
        println!("{severity} {}: {}", issue.code, issue.message);
    }
    for note in &processed.notes {
        println!("note: {note}");
    }
    Ok(())
}
