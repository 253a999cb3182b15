//! Independent oracles: trimesh and manifold3d (Python) load every export format, plain,
//! sized and textured; the Khronos glTF validator checks the GLB, plain, coloured and
//! textured.
//!
//! They need tools outside Cargo, so they read `ORFEAS_PYTHON` (a Python with trimesh
//! and manifold3d) and `ORFEAS_GLTF_VALIDATOR` (the installed npm `gltf-validator`
//! package directory; `node` on PATH). Unset means the test FAILS: run the suite through
//! `deploy/setup.sh --test`, which installs the tools and sets both.

#[path = "support/shapes.rs"]
mod shapes;

use std::path::{Path, PathBuf};
use std::process::Command;

use orfeas_mesh::{
    export, export_files, process, project_texture, ExportFormat, Image, ImagePlane, Inside, Mesh,
    MeshOptions, Texture,
};
use shapes::*;

fn required_env(name: &str, what: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: it must point at {what}. Run the tests through \
             `deploy/setup.sh --test`, which installs the oracles and sets it."
        )
    })
}

fn out_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("orfeas-mesh-oracles-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// (name, mesh, analytic world volume, genus) for the shapes, each decimated, with
/// vertex colours.
fn shapes() -> Vec<(&'static str, Mesh, f64, i64)> {
    let n = 64;
    let cases: [(&str, Box<dyn Fn(f32, f32, f32) -> f32>, f64, i64); 3] = [
        (
            "sphere",
            Box::new(ball([0.1, 0.0, 0.0], 0.6)),
            ball_volume(0.6),
            0,
        ),
        (
            "torus",
            Box::new(torus(0.55, 0.2)),
            torus_volume(0.55, 0.2),
            1,
        ),
        ("box", Box::new(cuboid([0.5, 0.3, 0.4])), 0.48, 0),
    ];
    cases
        .into_iter()
        .map(|(name, f, v, genus)| {
            let data = sample(n, -1.0, 1.0, f);
            let options = MeshOptions {
                target_faces: Some(6_000),
                ..MeshOptions::default()
            };
            let mut mesh = process(&volume(&data, n, -1.0, 1.0, 0.0, Inside::Below), &options)
                .expect("process")
                .mesh;
            mesh.colors = Some(
                mesh.positions
                    .iter()
                    .map(|p| p.map(|c| 0.5 + 0.4 * c))
                    .collect(),
            );
            (name, mesh, v, genus)
        })
        .collect()
}

/// A 48 × 40 texture for `mesh`: a colour gradient inside an ellipse, transparent
/// outside, projected over [-1, 1]².
fn texture(mesh: &Mesh) -> Texture {
    let (w, h) = (48u32, 40u32);
    let mut rgba = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let (u, v) = (
                x as f32 / (w - 1) as f32 - 0.5,
                y as f32 / (h - 1) as f32 - 0.5,
            );
            let inside = u * u + v * v < 0.2;
            rgba.extend([
                (255.0 * (u + 0.5)) as u8,
                (255.0 * (v + 0.5)) as u8,
                90,
                255 * inside as u8,
            ]);
        }
    }
    let plane = ImagePlane {
        min: [-1.0, -1.0],
        max: [1.0, 1.0],
    };
    project_texture(mesh, &Image::new(w, h, rgba).expect("image"), &plane)
}

fn longest_side(mesh: &Mesh) -> f64 {
    (0..3)
        .map(|i| {
            let it = mesh.positions.iter().map(|p| f64::from(p[i]));
            it.clone().fold(f64::MIN, f64::max) - it.fold(f64::MAX, f64::min)
        })
        .fold(0.0, f64::max)
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
}

#[test]
fn oracles_trimesh_and_manifold3d_accept_every_format() {
    let python = required_env("ORFEAS_PYTHON", "a Python with trimesh and manifold3d");
    let dir = out_dir("py");
    let mut manifest = Vec::new();
    for (name, mesh, world_volume, genus) in shapes() {
        let size = 50.0f32;
        let k = f64::from(size) / longest_side(&mesh);
        for (format, size_mm, scale) in [
            (ExportFormat::Stl, Some(size), k),
            (ExportFormat::ThreeMf, Some(size), k),
            (ExportFormat::Glb, None, 1.0),
            (ExportFormat::Glb, Some(size), k / 1000.0),
            (ExportFormat::Obj, None, 1.0),
            (ExportFormat::Obj, Some(size), k),
            (ExportFormat::Ply, None, 1.0),
            (ExportFormat::Ply, Some(size), k),
        ] {
            let tag = if size_mm.is_some() { "sized" } else { "world" };
            let path = dir.join(format!("{name}-{tag}.{}", format.extension()));
            std::fs::write(&path, export(&mesh, format, size_mm).expect("export")).expect("write");
            manifest.push(serde_json::json!({
                "path": path,
                "faces": mesh.indices.len(),
                "volume": world_volume * scale.powi(3),
                "rel_tol": 0.03,
                "genus": genus,
            }));
        }
        // Textured: the OBJ with its MTL and PNG, and the GLB.
        let texture = texture(&mesh);
        for (format, size_mm, scale) in [
            (ExportFormat::Obj, Some(size), k),
            (ExportFormat::Glb, None, 1.0),
        ] {
            let files = export_files(
                &mesh,
                format,
                size_mm,
                Some(&texture),
                &format!("{name}-tex"),
            )
            .expect("export");
            for file in &files {
                std::fs::write(dir.join(&file.name), &file.bytes).expect("write");
            }
            manifest.push(serde_json::json!({
                "path": dir.join(&files[0].name),
                "faces": mesh.indices.len(),
                "volume": world_volume * scale.powi(3),
                "rel_tol": 0.03,
                "genus": genus,
                "texture": [48, 40],
            }));
        }
    }
    let manifest_path = dir.join("manifest.json");
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).expect("json"),
    )
    .expect("write");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracles/check_meshes.py");
    run(Command::new(python).arg(script).arg(&manifest_path));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn oracles_gltf_validator_finds_no_errors() {
    let package = required_env(
        "ORFEAS_GLTF_VALIDATOR",
        "the npm gltf-validator package directory",
    );
    let dir = out_dir("gltf");
    let mut paths = Vec::new();
    for (name, mesh, _, _) in shapes() {
        for size_mm in [None, Some(120.0)] {
            let path = dir.join(format!("{name}-{}.glb", size_mm.is_some()));
            std::fs::write(
                &path,
                export(&mesh, ExportFormat::Glb, size_mm).expect("export"),
            )
            .expect("write");
            paths.push(path);
        }
        // Textured (TEXCOORD_0, embedded PNG, sampler, material), both placements.
        let texture = texture(&mesh);
        for size_mm in [None, Some(120.0)] {
            let path = dir.join(format!("{name}-{}-textured.glb", size_mm.is_some()));
            let files = export_files(&mesh, ExportFormat::Glb, size_mm, Some(&texture), "m")
                .expect("export");
            std::fs::write(&path, &files[0].bytes).expect("write");
            paths.push(path);
        }
        // Without colours too (no COLOR_0).
        let mut plain = mesh.clone();
        plain.colors = None;
        let path = dir.join(format!("{name}-plain.glb"));
        std::fs::write(
            &path,
            export(&plain, ExportFormat::Glb, None).expect("export"),
        )
        .expect("write");
        paths.push(path);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracles/gltf_validate.js");
    run(Command::new("node").arg(script).arg(package).args(&paths));
    let _ = std::fs::remove_dir_all(&dir);
}
