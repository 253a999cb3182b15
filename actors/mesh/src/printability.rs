//! What a print shop checks beyond mesh health: parts that float above the bed, how
//! much of the object touches the bed and whether it tips over, overhangs that need
//! supports, walls too thin for the nozzle, and material.
//!
//! Everything is measured on the mesh in the print frame (Z up, resting on z = 0,
//! millimetres), the frame the slicer sees.

use crate::topology::{cross, dot, norm, sub};
use crate::grid::FaceGrid;
use crate::union_find::UnionFind;
use crate::Mesh;

/// Faces closer to the bed than this (mm) and facing down count as touching it; the
/// bed contact is the object's cross-section this high, the middle of a 0.2 mm first
/// layer, where slicers (PrusaSlicer, Cura) cut the first layer they lay down.
pub const BED_TOLERANCE_MM: f64 = 0.1;
/// Slicers' usual support threshold: a face leaning out more than this from the
/// vertical needs support.
pub const OVERHANG_ANGLE_DEG: f64 = 45.0;
/// Overhanging area, as a fraction of the surface, above which the report warns.
pub const OVERHANG_WARN_FRACTION: f64 = 0.05;
/// Two perimeters of a 0.4 mm nozzle: thinner walls are dropped or printed as gaps.
pub const MIN_WALL_MM: f64 = 0.8;
/// Bed contact below this many mm² is a warning (the part comes loose mid-print).
pub const MIN_BED_CONTACT_MM2: f64 = 20.0;
/// An object whose longest side is under this many mm is too small to print usefully.
pub const MIN_PRINT_SIZE_MM: f64 = 5.0;
/// Wall-thickness probes (rays) at most; spread evenly over the faces. Each ray walks
/// the face grid and tests only the faces near its path (a few dozen on a typical
/// mesh). When each ray tested every face, 400 probes took 58 % of a null-model job's
/// CPU (the bench guard caught it); see md/benchmarks.md for the cost now.
const WALL_SAMPLES: usize = 400;

/// How bad an issue is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The print fails as is (also listed in `problems`).
    Error,
    /// Printable, with care (supports, a brim, a bigger size).
    Warning,
}

/// One finding, with a stable snake_case code.
#[derive(Clone, Debug, PartialEq)]
pub struct Issue {
    /// Stable code (`floating_parts`, `tips_over`, …).
    pub code: &'static str,
    /// Error or warning.
    pub severity: Severity,
    /// One lowercase sentence with the numbers.
    pub message: String,
}

/// The measures behind the issues, in millimetres.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checks {
    /// Connected parts (through edges).
    pub parts: usize,
    /// Parts whose lowest point is above the bed: they print in mid-air.
    pub floating_parts: usize,
    /// Area of the first layer: the cross-section [`BED_TOLERANCE_MM`] above the bed, mm².
    pub bed_contact_mm2: f64,
    /// The centre of mass lies outside the bed contact's convex hull.
    pub tips_over: bool,
    /// Area of faces leaning out more than 45° from vertical (bed excluded), mm².
    pub overhang_mm2: f64,
    /// `overhang_mm2` over the surface area.
    pub overhang_fraction: f64,
    /// Thinnest wall found by probing inward from sampled faces, mm (`None` when no
    /// probe hit the opposite side).
    pub min_wall_mm: Option<f64>,
}

/// Measures `placed` (print frame, mm) and lists what fails. The print report calls
/// [`assess_on`] with what it has already computed; this is the tests' door.
#[cfg(test)]
pub fn assess(placed: &Mesh, volume_mm3: f64, area_mm2: f64, longest_mm: f64) -> (Checks, Vec<Issue>) {
    let (p, faces) = positions_and_faces(placed);
    let grid = FaceGrid::build(&p, &faces);
    assess_on(placed, &p, &faces, grid.as_ref(), volume_mm3, area_mm2, longest_mm)
}

/// `placed`'s positions in f64 and its faces whose indices are in range.
pub(crate) fn positions_and_faces(placed: &Mesh) -> (Vec<[f64; 3]>, Vec<[usize; 3]>) {
    let p: Vec<[f64; 3]> = placed.positions.iter().map(|v| v.map(f64::from)).collect();
    let faces: Vec<[usize; 3]> = placed
        .indices
        .iter()
        .map(|f| f.map(|i| i as usize))
        .filter(|f| f.iter().all(|&i| i < p.len()))
        .collect();
    (p, faces)
}

/// [`assess`] on positions, faces and a face grid already at hand (the print report
/// shares them with the self-intersection count).
pub(crate) fn assess_on(
    placed: &Mesh,
    p: &[[f64; 3]],
    faces: &[[usize; 3]],
    grid: Option<&FaceGrid>,
    volume_mm3: f64,
    area_mm2: f64,
    longest_mm: f64,
) -> (Checks, Vec<Issue>) {
    let mut checks = Checks::default();
    let mut issues = Vec::new();
    if faces.is_empty() {
        return (checks, issues);
    }
    let bed = p.iter().map(|v| v[2]).fold(f64::INFINITY, f64::min);

    // Parts: faces joined through shared positions (welded, as a slicer sees them); a
    // part floats when its lowest vertex is above the bed.
    // Welded as the topology check welds (`-0.0` joins `0.0`); the ids are vertex
    // indices, so plain vectors replace hash maps here (this runs for every job).
    let welded = crate::topology::weld_by_position(&placed.positions);
    let mut uf = UnionFind::new(placed.positions.len());
    for f in faces {
        uf.union(welded[f[0]], welded[f[1]]);
        uf.union(welded[f[1]], welded[f[2]]);
    }
    let mut lowest = vec![f64::INFINITY; placed.positions.len()];
    let mut is_part = vec![false; placed.positions.len()];
    for f in faces {
        for &i in f {
            let root = uf.find(welded[i]) as usize;
            is_part[root] = true;
            lowest[root] = lowest[root].min(p[i][2]);
        }
    }
    checks.parts = is_part.iter().filter(|&&b| b).count();
    checks.floating_parts = (0..lowest.len()).filter(|&r| is_part[r] && lowest[r] > bed + BED_TOLERANCE_MM).count();

    // Bed contact, overhangs and the centre of mass in one pass over the faces.
    let cos_overhang = OVERHANG_ANGLE_DEG.to_radians().cos();
    let mut contact_points: Vec<[f64; 2]> = Vec::new();
    let mut centre = [0.0f64; 3];
    let mut signed_volume = 0.0;
    for f in faces {
        let [a, b, c] = [p[f[0]], p[f[1]], p[f[2]]];
        let n = cross(sub(b, a), sub(c, a));
        let twice_area = norm(n);
        // Volume-weighted centroid of the tetrahedron (origin, a, b, c).
        let v6 = dot(a, cross(b, c));
        signed_volume += v6;
        for i in 0..3 {
            centre[i] += v6 * (a[i] + b[i] + c[i]) / 4.0;
        }
        if twice_area <= 0.0 {
            continue;
        }
        let nz = n[2] / twice_area;
        let area = 0.5 * twice_area;
        let on_bed = [a, b, c].iter().all(|v| v[2] <= bed + BED_TOLERANCE_MM);
        if on_bed && nz < -0.5 {
            contact_points.extend([a, b, c].iter().map(|v| [v[0], v[1]]));
        } else if nz < -cos_overhang {
            checks.overhang_mm2 += area;
        }
    }
    // A part resting on a point or an edge has (almost) no contact faces; its lowest
    // vertices still carry it.
    if contact_points.len() < 3 {
        contact_points.extend(p.iter().filter(|v| v[2] <= bed + BED_TOLERANCE_MM).map(|v| [v[0], v[1]]));
    }
    // Not the area of the faces on the bed: a rounded bottom has few faces within 0.1 mm
    // yet the slicer's first layer is its section at 0.1 mm, 1.4-2x larger on our
    // outputs (md/mesh.md, "Against a slicer").
    checks.bed_contact_mm2 = section_area(&p, &faces, bed + BED_TOLERANCE_MM);
    checks.overhang_fraction = if area_mm2 > 0.0 { checks.overhang_mm2 / area_mm2 } else { 0.0 };
    if signed_volume.abs() > 0.0 {
        let com = [centre[0] / signed_volume, centre[1] / signed_volume];
        let hull = convex_hull(contact_points);
        checks.tips_over = !inside_hull(&hull, com);
    }
    checks.min_wall_mm = grid.and_then(|g| min_wall(p, faces, g));

    let mut issue = |code, severity, message: String| issues.push(Issue { code, severity, message });
    if longest_mm < MIN_PRINT_SIZE_MM {
        issue(
            "too_small",
            Severity::Warning,
            format!("the longest side is {longest_mm:.2} mm, under {MIN_PRINT_SIZE_MM} mm: set a physical size (--size-mm)"),
        );
    }
    if checks.floating_parts > 0 {
        issue(
            "floating_parts",
            Severity::Error,
            format!("{} of {} parts float above the bed and would print in mid-air", checks.floating_parts, checks.parts),
        );
    } else if checks.parts > 1 {
        issue("disconnected_parts", Severity::Warning, format!("{} separate parts: each prints (and may come loose) on its own", checks.parts));
    }
    if checks.tips_over {
        issue(
            "tips_over",
            Severity::Error,
            format!("the centre of mass lies outside the {:.1} mm² bed contact: the part tips over (try --lay-flat)", checks.bed_contact_mm2),
        );
    } else if checks.bed_contact_mm2 < MIN_BED_CONTACT_MM2 {
        issue(
            "small_bed_contact",
            Severity::Warning,
            format!("only {:.1} mm² touches the bed (under {MIN_BED_CONTACT_MM2} mm²): it may come loose; use a brim or --lay-flat", checks.bed_contact_mm2),
        );
    }
    if checks.overhang_fraction > OVERHANG_WARN_FRACTION {
        issue(
            "overhangs",
            Severity::Warning,
            format!(
                "{:.0} mm² ({:.0} % of the surface) overhangs more than {OVERHANG_ANGLE_DEG}°: needs supports",
                checks.overhang_mm2,
                100.0 * checks.overhang_fraction
            ),
        );
    }
    if let Some(wall) = checks.min_wall_mm.filter(|&w| w < MIN_WALL_MM) {
        issue("thin_walls", Severity::Warning, format!("walls as thin as {wall:.2} mm (under {MIN_WALL_MM} mm) may not print"));
    }
    let _ = volume_mm3;
    (checks, issues)
}

/// Grams and cost of `volume_mm3` of a material of `density_g_cm3` at `price_per_kg`.
pub fn material(volume_mm3: f64, density_g_cm3: f64, price_per_kg: f64) -> (f64, f64) {
    let grams = volume_mm3.max(0.0) / 1000.0 * density_g_cm3;
    (grams, grams / 1000.0 * price_per_kg)
}

/// The thinnest wall: from the centres of sampled faces, a ray inward (against the
/// normal) to the nearest other face. The 5th-percentile distance, so one sliver at a
/// crease does not decide. Rays walk a uniform grid of the faces (`grid.rs`) and stop at
/// the first cell whose exit lies beyond the nearest hit, so a probe tests the faces
/// near its path instead of all of them.
fn min_wall(p: &[[f64; 3]], faces: &[[usize; 3]], grid: &FaceGrid) -> Option<f64> {
    let samples = WALL_SAMPLES.clamp(1, faces.len());
    let step = faces.len() as f64 / samples as f64;
    let mut depths = Vec::with_capacity(samples);
    // The probe that last tested each face: a face spanning several cells is tested once.
    let mut tested = vec![usize::MAX; faces.len()];
    for s in 0..samples {
        let Some((k, origin, dir)) = probe(p, faces, s, step) else { continue };
        let mut nearest = f64::INFINITY;
        tested[k] = s;
        grid.walk(origin, dir, |cell, t_exit| {
            for &j in grid.faces_in(cell) {
                let j = j as usize;
                if tested[j] == s {
                    continue;
                }
                tested[j] = s;
                let g = faces[j];
                if let Some(t) = ray_triangle(origin, dir, p[g[0]], p[g[1]], p[g[2]]) {
                    if t > 1e-6 && t < nearest {
                        nearest = t;
                    }
                }
            }
            nearest > t_exit
        });
        if nearest.is_finite() {
            depths.push(nearest);
        }
    }
    if depths.is_empty() {
        return None;
    }
    depths.sort_by(f64::total_cmp);
    Some(depths[depths.len() / 20])
}

/// Probe `s` of faces spread `step` apart: its face, the face's centre and the unit
/// inward normal; `None` for a degenerate face.
fn probe(p: &[[f64; 3]], faces: &[[usize; 3]], s: usize, step: f64) -> Option<(usize, [f64; 3], [f64; 3])> {
    let k = (((s as f64 + 0.5) * step) as usize).min(faces.len() - 1);
    let [a, b, c] = faces[k].map(|v| p[v]);
    let n = cross(sub(b, a), sub(c, a));
    let len = norm(n);
    if len <= 0.0 {
        return None;
    }
    let origin = std::array::from_fn(|i| (a[i] + b[i] + c[i]) / 3.0);
    Some((k, origin, [-n[0] / len, -n[1] / len, -n[2] / len]))
}

/// The brute-force probe the grid walk replaces: every sampled ray against every face.
/// Kept for the test that the two agree.
#[cfg(test)]
fn min_wall_scan(p: &[[f64; 3]], faces: &[[usize; 3]]) -> Option<f64> {
    let samples = WALL_SAMPLES.clamp(1, faces.len());
    let step = faces.len() as f64 / samples as f64;
    let mut depths = Vec::new();
    for s in 0..samples {
        let Some((k, origin, dir)) = probe(p, faces, s, step) else { continue };
        let nearest = faces
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != k)
            .filter_map(|(_, g)| ray_triangle(origin, dir, p[g[0]], p[g[1]], p[g[2]]))
            .filter(|&t| t > 1e-6)
            .fold(f64::INFINITY, f64::min);
        if nearest.is_finite() {
            depths.push(nearest);
        }
    }
    depths.sort_by(f64::total_cmp);
    depths.get(depths.len() / 20).copied()
}

/// Möller–Trumbore: distance along `dir` to the triangle, if it is hit.
fn ray_triangle(o: [f64; 3], dir: [f64; 3], a: [f64; 3], b: [f64; 3], c: [f64; 3]) -> Option<f64> {
    let e1 = sub(b, a);
    let e2 = sub(c, a);
    let h = cross(dir, e2);
    let det = dot(e1, h);
    if det.abs() < 1e-12 {
        return None;
    }
    let inv = 1.0 / det;
    let s = sub(o, a);
    let u = inv * dot(s, h);
    if !(0.0..=1.0).contains(&u) {
        return None;
    }
    let q = cross(s, e1);
    let v = inv * dot(dir, q);
    if v < 0.0 || u + v > 1.0 {
        return None;
    }
    Some(inv * dot(e2, q))
}

/// Andrew's monotone chain, counter-clockwise.
pub(crate) fn convex_hull(mut points: Vec<[f64; 2]>) -> Vec<[f64; 2]> {
    points.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    points.dedup();
    if points.len() < 3 {
        return points;
    }
    let turn = |o: [f64; 2], a: [f64; 2], b: [f64; 2]| (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
    let mut hull: Vec<[f64; 2]> = Vec::with_capacity(points.len() * 2);
    for pass in 0..2 {
        let start = hull.len();
        let iter: Box<dyn Iterator<Item = &[f64; 2]>> = if pass == 0 { Box::new(points.iter()) } else { Box::new(points.iter().rev()) };
        for &q in iter {
            while hull.len() >= start + 2 && turn(hull[hull.len() - 2], hull[hull.len() - 1], q) <= 0.0 {
                hull.pop();
            }
            hull.push(q);
        }
        hull.pop();
    }
    hull
}

/// `q` inside (or on) the counter-clockwise hull; a point or segment hull holds
/// nothing of positive area, so only a point within 1 µm of it counts.
pub(crate) fn inside_hull(hull: &[[f64; 2]], q: [f64; 2]) -> bool {
    match hull.len() {
        0 => false,
        1 | 2 => {
            let a = hull[0];
            let b = hull[hull.len() - 1];
            let ab = [b[0] - a[0], b[1] - a[1]];
            let aq = [q[0] - a[0], q[1] - a[1]];
            let len2 = ab[0] * ab[0] + ab[1] * ab[1];
            let t = if len2 > 0.0 { ((aq[0] * ab[0] + aq[1] * ab[1]) / len2).clamp(0.0, 1.0) } else { 0.0 };
            let d = [aq[0] - t * ab[0], aq[1] - t * ab[1]];
            (d[0] * d[0] + d[1] * d[1]).sqrt() < 1e-3
        }
        n => (0..n).all(|i| {
            let a = hull[i];
            let b = hull[(i + 1) % n];
            (b[0] - a[0]) * (q[1] - a[1]) - (b[1] - a[1]) * (q[0] - a[0]) >= -1e-9
        }),
    }
}


/// Area of the closed, outward-wound solid's cross-section at height `z`: each face
/// crossing the plane gives a segment, ordered by the winding (from where the face's
/// boundary goes down through the plane to where it comes up, counter-clockwise around
/// the solid seen from above), and the shoelace sum over all segments is the enclosed
/// area — loops need not be traced, holes subtract themselves.
fn section_area(p: &[[f64; 3]], faces: &[[usize; 3]], z: f64) -> f64 {
    let mut twice = 0.0;
    for f in faces {
        let v = [p[f[0]], p[f[1]], p[f[2]]];
        // A vertex exactly on the plane counts as above it, so a face meets it in 0 or 2 edges.
        let below = v.map(|q| q[2] < z);
        if below.iter().all(|&b| b) || below.iter().all(|&b| !b) {
            continue;
        }
        let (mut down, mut up) = ([0.0; 2], [0.0; 2]);
        for (i, j) in [(0, 1), (1, 2), (2, 0)] {
            if below[i] != below[j] {
                let t = (z - v[i][2]) / (v[j][2] - v[i][2]);
                let x = [v[i][0] + t * (v[j][0] - v[i][0]), v[i][1] + t * (v[j][1] - v[i][1])];
                if below[j] {
                    down = x;
                } else {
                    up = x;
                }
            }
        }
        twice += down[0] * up[1] - up[0] * down[1];
    }
    (0.5 * twice).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An axis-aligned box from `lo` to `hi`, outward winding.
    pub(crate) fn cuboid(lo: [f32; 3], hi: [f32; 3]) -> Mesh {
        let mut positions = Vec::new();
        for i in 0..8 {
            positions.push([if i & 1 == 0 { lo[0] } else { hi[0] }, if i & 2 == 0 { lo[1] } else { hi[1] }, if i & 4 == 0 { lo[2] } else { hi[2] }]);
        }
        let indices = vec![
            [0, 2, 1], [1, 2, 3], [4, 5, 6], [5, 7, 6], [0, 1, 4], [1, 5, 4],
            [2, 6, 3], [3, 6, 7], [0, 4, 2], [2, 4, 6], [1, 3, 5], [3, 7, 5],
        ];
        Mesh { positions, indices, colors: None }
    }

    fn joined(a: Mesh, b: Mesh) -> Mesh {
        let offset = a.positions.len() as u32;
        let mut m = a;
        m.positions.extend(b.positions);
        m.indices.extend(b.indices.into_iter().map(|f| f.map(|i| i + offset)));
        m
    }

    fn codes(issues: &[Issue]) -> Vec<&'static str> {
        issues.iter().map(|i| i.code).collect()
    }

    #[test]
    fn printability_bed_contact_is_the_first_layer_section() {
        // An octahedron standing on a vertex: at 0.1 mm its section is a diamond of
        // half-diagonal 0.1 (0.02 mm²), at mid-height one of half-diagonal 1 (2 mm²);
        // no face lies on the bed, yet the slicer's first layer is that diamond.
        let e = [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [-1.0, 0.0, 1.0], [0.0, -1.0, 1.0]];
        let mut p: Vec<[f64; 3]> = e.to_vec();
        p.extend([[0.0, 0.0, 2.0], [0.0, 0.0, 0.0]]);
        let mut faces = Vec::new();
        for i in 0..4 {
            faces.push([i, (i + 1) % 4, 4]);
            faces.push([(i + 1) % 4, i, 5]);
        }
        assert!((section_area(&p, &faces, 0.1) - 0.02).abs() < 1e-12);
        assert!((section_area(&p, &faces, 1.0 - 1e-9) - 2.0).abs() < 1e-6);
        assert_eq!(section_area(&p, &faces, 3.0), 0.0);
    }

    #[test]
    fn printability_cube_on_the_bed_passes() {
        let cube = cuboid([-10.0, -10.0, 0.0], [10.0, 10.0, 20.0]);
        let (checks, issues) = assess(&cube, 8000.0, 2400.0, 20.0);
        assert_eq!(checks.parts, 1);
        assert_eq!(checks.floating_parts, 0);
        assert!((checks.bed_contact_mm2 - 400.0).abs() < 1e-6, "{checks:?}");
        assert!(!checks.tips_over);
        assert_eq!(checks.overhang_mm2, 0.0);
        let wall = checks.min_wall_mm.unwrap();
        assert!((wall - 20.0).abs() < 1e-6, "a 20 mm cube's walls are 20 mm: {wall}");
        assert!(issues.is_empty(), "{issues:?}");
    }

    #[test]
    fn printability_floating_part_is_an_error() {
        let m = joined(cuboid([0.0, 0.0, 0.0], [10.0, 10.0, 10.0]), cuboid([20.0, 0.0, 5.0], [30.0, 10.0, 15.0]));
        let (checks, issues) = assess(&m, 2000.0, 1200.0, 30.0);
        assert_eq!((checks.parts, checks.floating_parts), (2, 1));
        assert!(codes(&issues).contains(&"floating_parts"), "{issues:?}");
        // The floating cube's underside overhangs (90°).
        assert!((checks.overhang_mm2 - 100.0).abs() < 1e-6, "{checks:?}");
    }

    #[test]
    fn printability_top_heavy_part_tips_over_and_thin_plate_warns() {
        // A post of 1 × 1 mm under a wide block off to one side: the centre of mass is
        // far outside the 1 mm² contact.
        let m = joined(cuboid([0.0, 0.0, 0.0], [1.0, 1.0, 10.0]), cuboid([0.0, 0.0, 10.0], [40.0, 10.0, 20.0]));
        let (checks, issues) = assess(&m, 4010.0, 2000.0, 40.0);
        assert!(checks.tips_over, "{checks:?}");
        assert!(codes(&issues).contains(&"tips_over"), "{issues:?}");
        let plate = cuboid([0.0, 0.0, 0.0], [30.0, 30.0, 0.5]);
        let (checks, issues) = assess(&plate, 450.0, 1860.0, 30.0);
        assert!((checks.min_wall_mm.unwrap() - 0.5).abs() < 1e-6, "{checks:?}");
        assert!(codes(&issues).contains(&"thin_walls"), "{issues:?}");
        let (_, issues) = assess(&plate, 450.0, 1860.0, 3.0);
        assert!(codes(&issues).contains(&"too_small"), "{issues:?}");
    }

    #[test]
    fn printability_material_grams_and_cost() {
        let (grams, cost) = material(10_000.0, 1.24, 25.0);
        assert!((grams - 12.4).abs() < 1e-9);
        assert!((cost - 0.31).abs() < 1e-9);
    }

    /// A shell between radii `inner` and `outer` (inner 0: a ball), meshed by the
    /// real pipeline on an `n`³ grid over [−1, 1]³.
    fn shell(n: usize, inner: f32, outer: f32) -> Mesh {
        let c = |i: usize| -1.0 + 2.0 * i as f32 / (n - 1) as f32;
        let mut data = Vec::with_capacity(n * n * n);
        for k in 0..n {
            for j in 0..n {
                for i in 0..n {
                    let r = (c(i) * c(i) + c(j) * c(j) + c(k) * c(k)).sqrt();
                    data.push((outer - r).min(r - inner));
                }
            }
        }
        let volume = crate::Volume {
            data: &data,
            dims: [n; 3],
            bounds_min: [-1.0; 3],
            bounds_max: [1.0; 3],
            iso: 0.0,
            inside: crate::Inside::Above,
        };
        crate::process(&volume, &crate::MeshOptions::default()).unwrap().mesh
    }

    #[test]
    fn printability_wall_probe_on_the_grid_finds_what_a_scan_of_every_face_finds() {
        let meshes = [
            shell(32, -1.0, 0.6),
            shell(40, 0.5, 0.62),
            joined(cuboid([0.0, 0.0, 0.0], [20.0, 20.0, 0.5]), cuboid([5.0, 5.0, 3.0], [6.0, 60.0, 9.0])),
        ];
        for (m, mesh) in meshes.iter().enumerate() {
            let p: Vec<[f64; 3]> = mesh.positions.iter().map(|v| v.map(f64::from)).collect();
            let faces: Vec<[usize; 3]> = mesh.indices.iter().map(|f| f.map(|i| i as usize)).collect();
            let walked = min_wall(&p, &faces, &FaceGrid::build(&p, &faces).unwrap());
            assert!(walked.is_some(), "mesh {m}: no probe hit");
            assert_eq!(walked, min_wall_scan(&p, &faces), "mesh {m} ({} faces)", faces.len());
        }
        // The thin shell's wall (0.12 world units) is found, not the ball's diameter.
        let thin = &meshes[1];
        let p: Vec<[f64; 3]> = thin.positions.iter().map(|v| v.map(f64::from)).collect();
        let faces: Vec<[usize; 3]> = thin.indices.iter().map(|f| f.map(|i| i as usize)).collect();
        let wall = min_wall(&p, &faces, &FaceGrid::build(&p, &faces).unwrap()).unwrap();
        assert!(wall > 0.05 && wall < 0.2, "{wall}");
    }
}
