//! Extraction: closedness, orientation, accuracy and the edge cases that break other
//! extractors (exact-iso samples, surfaces touching the border, NaN).

#[path = "support/shapes.rs"]
mod shapes;

use orfeas_mesh::{
    check, extract, remove_floaters, vertex_normals, Inside, Mesh, Topology, Volume,
};
use shapes::*;

/// Extracts, checks closedness and weld, and returns both.
fn closed(volume: &Volume) -> (Mesh, Topology) {
    let mesh = extract(volume).expect("extraction succeeds");
    let topo = check(&mesh);
    assert!(topo.is_closed_manifold(), "not a closed manifold: {topo:?}");
    // Welding by position found nothing to merge: one vertex per crossing edge, none
    // unused, none coinciding with another.
    assert_eq!(topo.vertices, mesh.positions.len(), "{topo:?}");
    (mesh, topo)
}

#[test]
fn extract_sphere_sdf_is_closed_and_accurate() {
    let r = 0.6;
    let data = sample(64, -1.0, 1.0, ball([0.0; 3], r));
    let (mesh, topo) = closed(&volume(&data, 64, -1.0, 1.0, 0.0, Inside::Below));
    assert_eq!(topo.euler, 2);
    assert_eq!(topo.components, 1);
    assert_close(topo.volume, ball_volume(r), 0.01, "volume");
    assert_close(topo.area, 4.0 * std::f64::consts::PI * 0.36, 0.02, "area");
    for v in &mesh.positions {
        let d = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        assert!((d - r).abs() < 0.01, "vertex {v:?} is {d} from the centre");
    }
    for (a, b) in topo.bbox_min.iter().zip(&topo.bbox_max) {
        assert!((a + r).abs() < 0.01 && (b - r).abs() < 0.01, "{topo:?}");
    }
}

#[test]
fn extract_normals_point_outward() {
    let data = sample(40, -1.0, 1.0, ball([0.1, -0.2, 0.05], 0.5));
    let (mesh, _) = closed(&volume(&data, 40, -1.0, 1.0, 0.0, Inside::Below));
    let normals = vertex_normals(&mesh);
    for (p, n) in mesh.positions.iter().zip(&normals) {
        let radial = [p[0] - 0.1, p[1] + 0.2, p[2] - 0.05];
        let dot = radial[0] * n[0] + radial[1] * n[1] + radial[2] * n[2];
        let len = radial.iter().map(|c| c * c).sum::<f32>().sqrt();
        // Loose bound: coarse marching-tetrahedra facets tilt by up to ~30°.
        assert!(dot > 0.7 * len, "normal {n:?} at {p:?} is not outward");
    }
}

#[test]
fn extract_sphere_occupancy_is_closed_and_accurate() {
    let r = 0.6;
    // A soft occupancy like a network's sigmoid output: 0.5 on the sphere.
    let h = 2.0 / 63.0;
    let sdf = ball([0.0; 3], r);
    let data = sample(64, -1.0, 1.0, |x, y, z| {
        1.0 / (1.0 + (sdf(x, y, z) / h).exp())
    });
    let (_, topo) = closed(&volume(&data, 64, -1.0, 1.0, 0.5, Inside::Above));
    assert_eq!((topo.euler, topo.components), (2, 1));
    assert_close(topo.volume, ball_volume(r), 0.01, "soft occupancy volume");

    // Hard 0/1 occupancy: crossings sit half-way between samples, coarser but closed.
    let data = sample(
        64,
        -1.0,
        1.0,
        |x, y, z| if sdf(x, y, z) < 0.0 { 1.0 } else { 0.0 },
    );
    let (_, topo) = closed(&volume(&data, 64, -1.0, 1.0, 0.5, Inside::Above));
    assert_eq!((topo.euler, topo.components), (2, 1));
    assert_close(topo.volume, ball_volume(r), 0.05, "hard occupancy volume");
}

#[test]
fn extract_torus_has_euler_zero() {
    let data = sample(64, -1.0, 1.0, torus(0.55, 0.2));
    let (_, topo) = closed(&volume(&data, 64, -1.0, 1.0, 0.0, Inside::Below));
    assert_eq!(topo.euler, 0);
    assert_eq!(topo.components, 1);
    let expected = 2.0 * std::f64::consts::PI.powi(2) * 0.55 * 0.2f64.powi(2);
    assert_close(topo.volume, expected, 0.02, "torus volume");
}

#[test]
fn extract_closes_surfaces_cut_by_the_border() {
    // A ball larger than the box: the solid touches all six faces.
    let n = 33;
    let data = sample(n, -1.0, 1.0, ball([0.0; 3], 1.3));
    let (_, topo) = closed(&volume(&data, n, -1.0, 1.0, 0.0, Inside::Below));
    assert_eq!((topo.euler, topo.components), (2, 1));
    // Caps sit half a grid step beyond the bounds.
    let half = 0.5 * 2.0 / (n - 1) as f32;
    for axis in 0..3 {
        assert!((topo.bbox_min[axis] + 1.0 + half).abs() < 1e-5, "{topo:?}");
        assert!((topo.bbox_max[axis] - 1.0 - half).abs() < 1e-5, "{topo:?}");
    }

    // A non-cubic grid with a slab spanning the whole x range.
    let (nz, ny, nx) = (5, 7, 9);
    let mut data = vec![1.0f32; nz * ny * nx];
    for k in 1..4 {
        for j in 2..5 {
            for i in 0..nx {
                data[(k * ny + j) * nx + i] = -1.0;
            }
        }
    }
    let volume = Volume {
        data: &data,
        dims: [nz, ny, nx],
        bounds_min: [0.0, 0.0, 0.0],
        bounds_max: [8.0, 6.0, 4.0],
        iso: 0.0,
        inside: Inside::Below,
    };
    let (_, topo) = closed(&volume);
    assert_eq!((topo.euler, topo.components), (2, 1));
    // Solid samples span x 0..8, y 2..4, z 1..3, and the surface lies half-way to the
    // next sample: x -0.5..8.5 (padding), y 1.5..4.5, z 0.5..3.5.
    assert_eq!(topo.bbox_min, [-0.5, 1.5, 0.5]);
    assert_eq!(topo.bbox_max, [8.5, 4.5, 3.5]);
}

#[test]
fn extract_survives_samples_exactly_at_iso() {
    // A box SDF whose faces fall exactly on grid planes: thousands of samples equal iso.
    let n = 65; // step 1/32, so ±0.5 is a sample coordinate exactly
    let data = sample(n, -1.0, 1.0, |x, y, z| {
        x.abs().max(y.abs()).max(z.abs()) - 0.5
    });
    let zeros = data.iter().filter(|&&v| v == 0.0).count();
    assert!(
        zeros > 5000,
        "the test needs exact-iso samples, has {zeros}"
    );
    let (_, topo) = closed(&volume(&data, n, -1.0, 1.0, 0.0, Inside::Below));
    assert_eq!((topo.euler, topo.components), (2, 1));
    // Exact-iso samples count as outside, so the surface lies just inside ±0.5.
    assert_close(topo.volume, 1.0, 0.01, "box volume");

    // An integer-valued field with many exact ties, on both sides.
    let data = sample(21, -10.0, 10.0, |x, y, z| {
        (x * x + y * y + z * z - 49.0).signum()
    });
    for inside in [Inside::Below, Inside::Above] {
        let (_, topo) = closed(&volume(&data, 21, -10.0, 10.0, 0.0, inside));
        assert!(topo.components >= 1);
    }

    // Occupancy with values exactly at the iso level.
    let data = sample(17, -1.0, 1.0, |x, y, z| {
        let d = x * x + y * y + z * z;
        if d < 0.25 {
            1.0
        } else if d < 0.5 {
            0.5
        } else {
            0.0
        }
    });
    let (_, topo) = closed(&volume(&data, 17, -1.0, 1.0, 0.5, Inside::Above));
    assert_eq!((topo.euler, topo.components), (2, 1));
}

#[test]
fn extract_noise_is_always_closed_manifold() {
    // Random fields produce every tetrahedron case, thin features and tiny components;
    // quantised values add many exact-iso ties.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    for quantised in [false, true] {
        let data: Vec<f32> = (0..20 * 20 * 20)
            .map(|_| {
                let v = next() - 0.5;
                if quantised {
                    (v * 4.0).round()
                } else {
                    v
                }
            })
            .collect();
        let (_, topo) = closed(&volume(&data, 20, 0.0, 1.0, 0.0, Inside::Below));
        // Every closed orientable component contributes an even Euler characteristic.
        assert_eq!(topo.euler % 2, 0, "{topo:?}");
    }
}

#[test]
fn extract_random_small_grids_are_closed_manifold() {
    // Thousands of tiny grids at every solid density: every cube pattern occurs next to
    // every other, including the ambiguous faces and both sides of each.
    let mut rng = Rng(0x51_7cc1_b727_220a);
    for case in 0..3000 {
        let n = 3 + case % 4;
        let density = rng.next();
        let data: Vec<f32> = (0..n * n * n)
            .map(|_| {
                let v = rng.next();
                if case % 3 == 0 {
                    v - density
                } else if v < density {
                    -1.0
                } else {
                    1.0
                }
            })
            .collect();
        match extract(&volume(&data, n, 0.0, 1.0, 0.0, Inside::Below)) {
            Ok(mesh) => {
                let topo = check(&mesh);
                assert!(topo.is_closed_manifold(), "case {case}: {topo:?}");
                assert_eq!(topo.vertices, mesh.positions.len(), "case {case}");
                assert_eq!(topo.euler % 2, 0, "case {case}: {topo:?}");
            }
            Err(e) => assert_eq!(e.code(), "empty_surface", "case {case}"),
        }
    }
}

#[test]
fn extract_treats_nan_as_empty() {
    let mut data = sample(24, -1.0, 1.0, ball([0.0; 3], 0.7));
    data[(12 * 24 + 12) * 24 + 12] = f32::NAN; // the centre sample: a cavity
    for v in data.iter_mut().take(24 * 24) {
        *v = f32::NAN;
    }
    let (mesh, topo) = closed(&volume(&data, 24, -1.0, 1.0, 0.0, Inside::Below));
    assert_eq!(
        topo.components, 2,
        "outer shell and the NaN cavity: {topo:?}"
    );
    assert!(mesh.positions.iter().flatten().all(|c| c.is_finite()));
}

#[test]
fn extract_two_balls_and_a_floater_filter_keeps_two() {
    let (a, b, f) = (
        ball([-0.45, 0.0, 0.0], 0.35),
        ball([0.45, 0.1, 0.0], 0.3),
        ball([0.0, 0.7, 0.5], 0.06),
    );
    let data = sample(48, -1.0, 1.0, |x, y, z| {
        a(x, y, z).min(b(x, y, z)).min(f(x, y, z))
    });
    let (mesh, topo) = closed(&volume(&data, 48, -1.0, 1.0, 0.0, Inside::Below));
    assert_eq!(topo.components, 3);
    assert_eq!(topo.euler, 6);

    let kept = remove_floaters(&mesh, 0.1);
    let topo = check(&kept);
    assert!(topo.is_closed_manifold(), "{topo:?}");
    assert_eq!((topo.components, topo.euler), (2, 4));
    assert_eq!(
        topo.vertices,
        kept.positions.len(),
        "unused vertices were kept"
    );
    assert_close(
        topo.volume,
        ball_volume(0.35) + ball_volume(0.3),
        0.02,
        "two balls",
    );
}

#[test]
fn extract_rejects_empty_full_and_malformed_volumes() {
    let n = 8;
    for (value, what) in [(1.0f32, "empty"), (-1.0, "full"), (f32::NAN, "all NaN")] {
        let data = vec![value; n * n * n];
        let err = extract(&volume(&data, n, 0.0, 1.0, 0.0, Inside::Below)).unwrap_err();
        assert_eq!(err.code(), "empty_surface", "{what}: {err}");
    }
    let data = vec![0.0f32; 10];
    let bad = |dims: [usize; 3], lo: f32, hi: f32, iso: f32| {
        let v = Volume {
            data: &data,
            dims,
            bounds_min: [lo; 3],
            bounds_max: [hi; 3],
            iso,
            inside: Inside::Above,
        };
        extract(&v).unwrap_err().code()
    };
    assert_eq!(bad([2, 5, 2], 0.0, 1.0, 0.5), "bad_volume"); // 20 != 10
    assert_eq!(bad([1, 2, 5], 0.0, 1.0, 0.5), "bad_volume"); // a dim < 2
    assert_eq!(bad([usize::MAX, 2, 5], 0.0, 1.0, 0.5), "bad_volume"); // overflow
    let data = vec![0.0f32; 8];
    let bad = |lo: f32, hi: f32, iso: f32| {
        let v = volume(&data, 2, lo, hi, iso, Inside::Above);
        extract(&v).unwrap_err().code()
    };
    assert_eq!(bad(1.0, 1.0, 0.5), "bad_volume");
    assert_eq!(bad(1.0, 0.0, 0.5), "bad_volume");
    assert_eq!(bad(0.0, f32::INFINITY, 0.5), "bad_volume");
    assert_eq!(bad(0.0, 1.0, f32::NAN), "bad_volume");
}

#[test]
fn extract_smallest_volume_gives_an_octahedron() {
    // One solid sample in a 2×2×2 grid: the padded surface around a single corner.
    let mut data = vec![0.0f32; 8];
    data[0] = 1.0;
    let (mesh, topo) = closed(&volume(&data, 2, 0.0, 1.0, 0.5, Inside::Above));
    assert_eq!((topo.euler, topo.components), (2, 1));
    // Six axis edges leave a sample, each carrying one vertex; one triangle per octant.
    assert_eq!((mesh.positions.len(), mesh.indices.len()), (6, 8));
}
