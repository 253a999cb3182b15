//! `process` end to end: analytic shapes, random volumes, previews.

#[path = "support/shapes.rs"]
mod shapes;

use orfeas_mesh::{
    check, process, render_previews, Inside, Mesh, MeshOptions, PrintReport, Processed,
};
use shapes::*;

const N: usize = 64;

fn run(f: impl Fn(f32, f32, f32) -> f32, options: &MeshOptions) -> Processed {
    let data = sample(N, -1.0, 1.0, f);
    process(&volume(&data, N, -1.0, 1.0, 0.0, Inside::Below), options).expect("process succeeds")
}

fn assert_printable(r: &PrintReport, what: &str) {
    assert!(
        r.closed && r.two_manifold && r.winding_consistent,
        "{what}: {r:#?}"
    );
    assert_eq!(r.degenerate_faces, 0, "{what}: {r:#?}");
    assert!(r.is_printable(), "{what}: {:?}", r.problems);
    assert_eq!(r.self_intersections, Some(0), "{what}");
}

fn decimating(target: usize) -> MeshOptions {
    MeshOptions {
        target_faces: Some(target),
        ..MeshOptions::default()
    }
}

#[test]
fn process_analytic_shapes_with_and_without_decimation() {
    let cases: [(&str, Box<dyn Fn(f32, f32, f32) -> f32>, f64, i64); 3] = [
        ("sphere", Box::new(ball([0.0; 3], 0.6)), ball_volume(0.6), 0),
        (
            "torus",
            Box::new(torus(0.55, 0.2)),
            torus_volume(0.55, 0.2),
            1,
        ),
        (
            "box",
            Box::new(cuboid([0.5, 0.3, 0.4])),
            8.0 * 0.5 * 0.3 * 0.4,
            0,
        ),
    ];
    for (name, f, expected_volume, genus) in cases {
        for target in [None, Some(5_000), Some(1_000)] {
            let options = MeshOptions {
                target_faces: target,
                ..MeshOptions::default()
            };
            let out = run(&f, &options);
            let what = format!("{name} → {target:?}: notes {:?}", out.notes);
            assert_printable(&out.report, &what);
            assert_eq!(out.report.components, 1, "{what}");
            assert_eq!(out.report.genus, Some(genus), "{what}");
            assert_eq!(out.report.euler, 2 - 2 * genus, "{what}");
            // World units count as millimetres without a size.
            let tolerance = if target == Some(1_000) { 0.04 } else { 0.02 };
            assert_close(out.report.volume_mm3, expected_volume, tolerance, &what);
            let faces = out.mesh.indices.len();
            if let Some(t) = target {
                assert!(faces as f64 <= 1.1 * t as f64, "{what}: {faces} faces");
                assert!(faces as f64 >= 0.5 * t as f64, "{what}: {faces} faces");
            }
            // The independent validator agrees with the report.
            assert!(check(&out.mesh).is_closed_manifold(), "{what}");
        }
    }
}

#[test]
fn process_coarsens_large_volumes_for_small_targets_and_stays_accurate() {
    // 192³ halves to 96³ (the smallest grid coarsening may use), which still gives well
    // over twice the 3 000 faces asked for.
    let n = 192;
    let cases: [(&str, Box<dyn Fn(f32, f32, f32) -> f32>, f64, i64); 2] = [
        (
            "sphere",
            Box::new(ball([0.1, 0.0, -0.05], 0.6)),
            ball_volume(0.6),
            0,
        ),
        (
            "torus",
            Box::new(torus(0.55, 0.2)),
            torus_volume(0.55, 0.2),
            1,
        ),
    ];
    for (name, f, expected_volume, genus) in cases {
        let data = sample(n, -1.0, 1.0, f);
        let v = volume(&data, n, -1.0, 1.0, 0.0, Inside::Below);
        let out = process(&v, &decimating(3_000)).expect("process");
        let what = format!("{name}: {:?}", out.notes);
        assert!(
            out.notes.iter().any(|n| n.contains("96×96×96 (2× coarser")),
            "{what}"
        );
        assert_printable(&out.report, &what);
        assert_eq!(out.report.genus, Some(genus), "{what}");
        assert_close(out.report.volume_mm3, expected_volume, 0.02, &what);
        let faces = out.mesh.indices.len();
        assert!((2_700..=3_300).contains(&faces), "{what}: {faces} faces");
        // The same target from the full grid gives the same shape.
        let full = process(
            &v,
            &MeshOptions {
                coarsen: false,
                ..decimating(3_000)
            },
        )
        .expect("process");
        assert!(
            full.notes.iter().all(|n| !n.contains("coarser")),
            "{:?}",
            full.notes
        );
        assert_close(out.report.volume_mm3, full.report.volume_mm3, 0.01, &what);
        assert_close(out.report.area_mm2, full.report.area_mm2, 0.01, &what);
    }
    // A volume too small to halve above 96 samples is extracted as it is.
    let data = sample(N, -1.0, 1.0, ball([0.0; 3], 0.6));
    let out = process(
        &volume(&data, N, -1.0, 1.0, 0.0, Inside::Below),
        &decimating(300),
    )
    .unwrap();
    assert!(
        out.notes.iter().all(|n| !n.contains("coarser")),
        "{:?}",
        out.notes
    );
}

#[test]
fn process_reports_size_and_build_volume_in_millimetres() {
    // A box 1.0 × 0.6 × 0.8 world units (Y up) printed 120 mm long: 120 × 96 × 72 mm Z-up
    // (world z becomes print y, world y becomes print z).
    let options = MeshOptions {
        size_mm: Some(120.0),
        smooth: false,
        ..MeshOptions::default()
    };
    let out = run(cuboid([0.5, 0.3, 0.4]), &options);
    let r = &out.report;
    let b = r.bbox_mm;
    assert!((b[0] - 120.0).abs() < 1e-3, "{b:?}");
    assert!(
        (b[1] - 96.0).abs() < 1.0 && (b[2] - 72.0).abs() < 1.0,
        "{b:?}"
    );
    assert_close(r.volume_mm3, 120.0 * 96.0 * 72.0, 0.03, "box mm³");
    assert!(r.fits_build_volume && r.is_printable(), "{r:?}");

    let small_printer = MeshOptions {
        build_volume_mm: [100.0, 100.0, 100.0],
        ..options
    };
    let r = run(cuboid([0.5, 0.3, 0.4]), &small_printer).report;
    assert!(!r.fits_build_volume);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(r.problems[0].contains("build volume"), "{:?}", r.problems);
}

#[test]
fn process_smoothing_keeps_volume_and_reduces_terracing() {
    // Hard 0/1 occupancy terraces badly; smoothing must not shrink it noticeably.
    let sdf = ball([0.0; 3], 0.6);
    let data = sample(
        N,
        -1.0,
        1.0,
        |x, y, z| if sdf(x, y, z) < 0.0 { 1.0 } else { 0.0 },
    );
    let v = volume(&data, N, -1.0, 1.0, 0.5, Inside::Above);
    let rough = process(
        &v,
        &MeshOptions {
            smooth: false,
            ..MeshOptions::default()
        },
    )
    .unwrap();
    let smooth = process(&v, &MeshOptions::default()).unwrap();
    assert_printable(&smooth.report, "smoothed occupancy");
    assert_close(
        smooth.report.volume_mm3,
        ball_volume(0.6),
        0.04,
        "smoothed volume",
    );
    // Terracing adds area; smoothing removes most of it (a sphere has the least area).
    let ideal = 4.0 * std::f64::consts::PI * 0.36;
    assert!(
        smooth.report.area_mm2 - ideal < 0.6 * (rough.report.area_mm2 - ideal),
        "area {} (rough {}, ideal {ideal})",
        smooth.report.area_mm2,
        rough.report.area_mm2
    );
}

#[test]
fn process_random_volumes_are_always_closed_and_manifold() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in 0..200 {
        let n = 24 + (rng.next() * 17.0) as usize;
        // A few random blobs plus noise, some of it quantised to create exact-iso ties.
        let blobs: Vec<([f32; 3], f32)> = (0..1 + (rng.next() * 5.0) as usize)
            .map(|_| {
                (
                    [
                        rng.range(-0.6, 0.6),
                        rng.range(-0.6, 0.6),
                        rng.range(-0.6, 0.6),
                    ],
                    rng.range(0.1, 0.5),
                )
            })
            .collect();
        let amplitude = rng.range(0.0, 0.15);
        let quantise = rng.next() < 0.3;
        let c = |i: usize| -1.0 + 2.0 * i as f32 / (n - 1) as f32;
        let mut data = Vec::with_capacity(n * n * n);
        for k in 0..n {
            for j in 0..n {
                for i in 0..n {
                    let (x, y, z) = (c(i), c(j), c(k));
                    let d = blobs
                        .iter()
                        .map(|&(p, r)| ball(p, r)(x, y, z))
                        .fold(f32::INFINITY, f32::min);
                    let v = d + amplitude * (rng.next() - 0.5);
                    data.push(if quantise {
                        (v * 20.0).round() / 20.0
                    } else {
                        v
                    });
                }
            }
        }
        let v = volume(&data, n, -1.0, 1.0, 0.0, Inside::Below);
        for target in [None, Some(300 + (rng.next() * 3000.0) as usize)] {
            let options = MeshOptions {
                target_faces: target,
                smooth: case % 2 == 0,
                ..MeshOptions::default()
            };
            let out = match process(&v, &options) {
                Ok(out) => out,
                Err(e) if e.code() == "empty_surface" => continue,
                Err(e) => panic!("case {case}: {e}"),
            };
            let r = &out.report;
            let what = format!(
                "case {case} n {n} target {target:?}: {:?} {:?}",
                r.problems, out.notes
            );
            assert!(r.closed && r.two_manifold && r.winding_consistent, "{what}");
            assert_eq!(r.degenerate_faces, 0, "{what}");
            assert!(check(&out.mesh).is_closed_manifold(), "{what}");
            assert_eq!(r.euler % 2, 0, "{what}");
        }
    }
}

#[test]
fn process_random_large_volumes_through_coarsening_are_closed_and_manifold() {
    // Noisy blobs on grids big enough to coarsen, with and without exact-iso ties.
    let mut rng = Rng(0x2f0b_d9c5_19a3_6e01);
    let mut coarsened = 0;
    for case in 0..8 {
        let n = 192 + (rng.next() * 40.0) as usize;
        let blobs: Vec<([f32; 3], f32)> = (0..2 + case % 4)
            .map(|_| {
                let c = [0; 3].map(|_| rng.range(-0.5, 0.5));
                (c, rng.range(0.15, 0.45))
            })
            .collect();
        let amplitude = rng.range(0.0, 0.05);
        let c = |i: usize| -1.0 + 2.0 * i as f32 / (n - 1) as f32;
        let mut data = Vec::with_capacity(n * n * n);
        for k in 0..n {
            for j in 0..n {
                for i in 0..n {
                    let (x, y, z) = (c(i), c(j), c(k));
                    let d = blobs
                        .iter()
                        .map(|&(p, r)| ball(p, r)(x, y, z))
                        .fold(f32::INFINITY, f32::min);
                    let v = d + amplitude * (rng.next() - 0.5);
                    data.push(if case % 2 == 1 {
                        (v * 40.0).round() / 40.0
                    } else {
                        v
                    });
                }
            }
        }
        let target = 1_000 + (rng.next() * 8_000.0) as usize;
        let out = process(
            &volume(&data, n, -1.0, 1.0, 0.0, Inside::Below),
            &decimating(target),
        )
        .expect("process");
        let r = &out.report;
        let what = format!(
            "case {case} n {n} target {target}: {:?} {:?}",
            r.problems, out.notes
        );
        assert!(r.closed && r.two_manifold && r.winding_consistent, "{what}");
        assert_eq!(r.degenerate_faces, 0, "{what}");
        assert!(check(&out.mesh).is_closed_manifold(), "{what}");
        coarsened += out.notes.iter().any(|n| n.contains("coarser")) as usize;
    }
    assert!(coarsened >= 6, "only {coarsened} of 8 cases were coarsened");
}

fn decode(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("png frame");
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

#[test]
fn previews_decode_with_foreground_that_differs_between_views() {
    // An asymmetric coloured shape: a box with a ball on its +x, +y corner.
    let (b, s) = (cuboid([0.5, 0.3, 0.4]), ball([0.45, 0.35, 0.3], 0.25));
    let mut mesh: Mesh = run(|x, y, z| b(x, y, z).min(s(x, y, z)), &decimating(20_000)).mesh;
    mesh.colors = Some(
        mesh.positions
            .iter()
            .map(|p| [0.5 + 0.5 * p[0], 0.3, 0.5 - 0.4 * p[1]])
            .collect(),
    );
    let previews = render_previews(&mesh, 128);
    let names: Vec<&str> = previews.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["front", "back", "left", "top"]);
    let mut images = Vec::new();
    for (name, bytes) in &previews {
        let (w, h, rgb) = decode(bytes);
        assert_eq!((w, h), (128, 128), "{name}");
        let background = [rgb[0], rgb[1], rgb[2]];
        let foreground = rgb.chunks(3).filter(|p| *p != background).count();
        assert!(
            foreground > 128 * 128 / 5,
            "{name}: only {foreground} foreground pixels"
        );
        images.push(rgb);
    }
    for i in 0..images.len() {
        for j in i + 1..images.len() {
            assert_ne!(images[i], images[j], "views {i} and {j} are identical");
        }
    }
}

#[test]
fn previews_of_a_million_triangles_render_in_about_a_second() {
    // A gyroid (three periods across the box) extracted at 200³: over a million
    // triangles of a surface that covers every view.
    let n = 200;
    let k = 3.0 * std::f32::consts::TAU / 2.0;
    let data = sample(n, -1.0, 1.0, |x, y, z| {
        (k * x).sin() * (k * y).cos()
            + (k * y).sin() * (k * z).cos()
            + (k * z).sin() * (k * x).cos()
    });
    let v = volume(&data, n, -1.0, 1.0, 0.0, Inside::Below);
    let mesh = orfeas_mesh::extract(&v).unwrap();
    assert!(mesh.indices.len() > 900_000, "{}", mesh.indices.len());
    let t = std::time::Instant::now();
    let previews = render_previews(&mesh, 512);
    let elapsed = t.elapsed();
    assert_eq!(previews.len(), 4);
    // ~1 s is the budget on the 2-core build machine; allow slack for a loaded machine.
    assert!(elapsed.as_secs_f64() < 3.0, "{elapsed:?}");
    eprintln!(
        "4 previews of {} triangles at 512²: {elapsed:?}",
        mesh.indices.len()
    );
}

#[test]
fn process_decimates_less_where_decimation_makes_faces_cross() {
    // A bowl (a sphere shell 0.06 thick, under two grid steps, cut below y = −0.2):
    // decimated to 300 faces, one side of the wall goes through the other (measured: 4
    // pairs); process retries to 450 faces, which has none, and keeps that.
    let bowl = |x: f32, y: f32, z: f32| ((x * x + y * y + z * z).sqrt() - 0.7).abs().max(-y - 0.2) - 0.03;
    let p = run(bowl, &decimating(300));
    assert!(
        p.notes.iter().any(|n| n.contains("crossing faces")),
        "the crossing was found and retried: {:?}",
        p.notes
    );
    assert_printable(&p.report, "retried bowl");
    assert!(p.report.faces > 300, "{} faces", p.report.faces);
}

#[test]
fn process_reports_crossings_it_cannot_remove() {
    // A shell 0.04 thick (1.3 grid steps) decimated to 1 200 faces: every target tried
    // leaves crossing faces; the report counts them and says so.
    let shell = |x: f32, y: f32, z: f32| ((x * x + y * y + z * z).sqrt() - 0.7).abs() - 0.02;
    let p = run(shell, &decimating(1_200));
    let r = &p.report;
    let crossings = r.self_intersections.expect("counted");
    assert!(crossings > 0, "{r:?}");
    assert!(r.closed && r.two_manifold, "{r:?}");
    assert!(!r.is_printable());
    assert!(
        r.problems.contains(&format!("{crossings} pairs of faces intersect each other")),
        "{:?}",
        r.problems
    );
}
