//! The printability report in plain words. The node's report says whether
//! the mesh is closed and fits the build volume; overhangs and thin walls
//! are measured here, on the delivered GLB, because they are what a person
//! at a print shop asks next ("will it need supports? will that fin
//! print?").

use orfeas_wire::v1::PrintReport;
use serde::Serialize;

/// Faces leaning out more than this from vertical need supports.
const OVERHANG_DEG: f32 = 45.0;
/// Walls under this print badly with a 0.4 mm nozzle (two perimeters).
const THIN_WALL_MM: f32 = 0.8;
/// Faces within this of the lowest point rest on the bed, not overhangs.
const BED_MM: f32 = 0.5;
/// Faces probed for wall thickness (spread evenly over the mesh).
const THICKNESS_SAMPLES: usize = 300;

/// Geometry measured on the GLB, millimetres.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Measured {
    /// Share of the surface area that overhangs more than 45°, 0–1.
    pub overhang_fraction: f32,
    /// Thinnest wall found among the probes, mm (None when nothing was hit).
    pub min_wall_mm: Option<f32>,
    /// Probes that found a wall thinner than [`THIN_WALL_MM`].
    pub thin_probes: usize,
    /// Probes cast.
    pub probes: usize,
}

/// One sentence of the report with its verdict (`ok`, `warn` or `bad`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Line {
    /// `ok`, `warn` or `bad`.
    pub level: &'static str,
    /// The sentence.
    pub text: String,
}

fn line(level: &'static str, text: String) -> Line {
    Line { level, text }
}

/// The report as sentences, worst news included, in the order a person checks.
pub fn plain_words(report: &PrintReport, measured: Option<&Measured>) -> Vec<Line> {
    let mut lines = Vec::new();
    if report.closed && report.two_manifold {
        lines.push(line("ok", "Watertight: the surface is closed, so a slicer can fill it.".into()));
    } else {
        lines.push(line("bad", "Not watertight: the surface has holes or tangled edges, so a slicer may print it wrong.".into()));
    }
    let [x, y, z] = report.bbox_mm;
    let [bx, by, bz] = report.build_volume_mm;
    if report.fits_build_volume {
        lines.push(line("ok", format!("Size {x:.1} × {y:.1} × {z:.1} mm fits the {bx:.0} × {by:.0} × {bz:.0} mm build volume.")));
    } else {
        lines.push(line("bad", format!("Size {x:.1} × {y:.1} × {z:.1} mm is too big for the {bx:.0} × {by:.0} × {bz:.0} mm build volume: scale it down.")));
    }
    match measured {
        Some(m) => {
            match m.min_wall_mm {
                Some(t) if t < THIN_WALL_MM => lines.push(line(
                    "warn",
                    format!("Thin walls: about {t:.2} mm at the thinnest ({} of {} probes under {THIN_WALL_MM} mm); a 0.4 mm nozzle needs {THIN_WALL_MM} mm.", m.thin_probes, m.probes),
                )),
                Some(t) => lines.push(line("ok", format!("Walls are at least about {t:.1} mm thick ({} probes).", m.probes))),
                None => lines.push(line("warn", "Wall thickness could not be measured.".into())),
            }
            let percent = m.overhang_fraction * 100.0;
            if percent >= 1.0 {
                lines.push(line("warn", format!("Overhangs: about {percent:.0}% of the surface leans out more than {OVERHANG_DEG:.0}° and will need supports.")));
            } else {
                lines.push(line("ok", format!("No overhangs steeper than {OVERHANG_DEG:.0}°: it prints without supports.")));
            }
        }
        None => lines.push(line("warn", "Overhangs and wall thickness were not measured.".into())),
    }
    if report.components > 1 {
        lines.push(line("warn", format!("{} separate pieces: each prints on its own.", report.components)));
    }
    if let Some(n) = report.self_intersections.filter(|n| *n > 0) {
        lines.push(line("bad", format!("{n} places where the surface passes through itself.")));
    }
    if report.degenerate_faces > 0 {
        lines.push(line("warn", format!("{} degenerate (zero-area) faces.", report.degenerate_faces)));
    }
    for problem in &report.problems {
        if !lines.iter().any(|l| l.text.contains(problem.as_str())) {
            lines.push(line("bad", format!("The node notes: {problem}.")));
        }
    }
    lines.push(line("ok", format!("Volume {:.1} cm³, surface {:.1} cm².", report.volume_mm3 / 1000.0, report.area_mm2 / 100.0)));
    lines
}

/// Positions and triangles of the first primitive of a GLB.
pub fn glb_mesh(glb: &[u8]) -> Option<(Vec<[f32; 3]>, Vec<[u32; 3]>)> {
    let u32_at = |at: usize| glb.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
    if glb.get(0..4)? != b"glTF" || glb.get(16..20)? != b"JSON" {
        return None;
    }
    let json_len = u32_at(12)?;
    let root: serde_json::Value = serde_json::from_slice(glb.get(20..20 + json_len)?).ok()?;
    let bin_start = 20 + json_len;
    let bin_len = u32_at(bin_start)?;
    let bin = glb.get(bin_start + 8..bin_start + 8 + bin_len)?;
    let primitive = &root["meshes"][0]["primitives"][0];
    let accessor = |index: usize| -> Option<(usize, u64, &[u8])> {
        let a = &root["accessors"][index];
        let view = &root["bufferViews"][a["bufferView"].as_u64()? as usize];
        let start = view["byteOffset"].as_u64().unwrap_or(0) as usize + a["byteOffset"].as_u64().unwrap_or(0) as usize;
        let end = view["byteOffset"].as_u64().unwrap_or(0) as usize + view["byteLength"].as_u64()? as usize;
        Some((a["count"].as_u64()? as usize, a["componentType"].as_u64()?, bin.get(start..end)?))
    };
    let (count, _, bytes) = accessor(primitive["attributes"]["POSITION"].as_u64()? as usize)?;
    let f = |at: usize| bytes.get(at..at + 4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")));
    let positions: Vec<[f32; 3]> = (0..count).map(|i| Some([f(i * 12)?, f(i * 12 + 4)?, f(i * 12 + 8)?])).collect::<Option<_>>()?;
    let (count, kind, bytes) = accessor(primitive["indices"].as_u64()? as usize)?;
    let flat: Vec<u32> = match kind {
        5125 => (0..count).map(|i| bytes.get(i * 4..i * 4 + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))).collect::<Option<_>>()?,
        5123 => (0..count).map(|i| bytes.get(i * 2..i * 2 + 2).map(|b| u32::from(u16::from_le_bytes(b.try_into().expect("2 bytes"))))).collect::<Option<_>>()?,
        _ => return None,
    };
    let triangles: Vec<[u32; 3]> = flat.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
    triangles.iter().flatten().all(|&i| (i as usize) < positions.len()).then_some((positions, triangles))
}

type V = [f32; 3];
fn sub(a: V, b: V) -> V {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
fn cross(a: V, b: V) -> V {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}
fn dot(a: V, b: V) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
fn scale(a: V, s: f32) -> V {
    [a[0] * s, a[1] * s, a[2] * s]
}

/// Overhangs and wall thickness of a GLB mesh (Y up, as glTF is) whose
/// longest side prints as `longest_mm`.
pub fn measure(positions: &[V], triangles: &[[u32; 3]], longest_mm: f32) -> Measured {
    if triangles.is_empty() {
        return Measured::default();
    }
    let (mut lo, mut hi) = ([f32::MAX; 3], [f32::MIN; 3]);
    for p in positions {
        for k in 0..3 {
            lo[k] = lo[k].min(p[k]);
            hi[k] = hi[k].max(p[k]);
        }
    }
    let extent = (0..3).map(|k| hi[k] - lo[k]).fold(0.0f32, f32::max);
    let mm = if extent > 0.0 { longest_mm / extent } else { 1.0 };
    let corners = |t: &[u32; 3]| t.map(|i| scale(positions[i as usize], mm));
    let cos_limit = OVERHANG_DEG.to_radians().cos();
    let bed = lo[1] * mm + BED_MM;
    let (mut total, mut over) = (0.0f64, 0.0f64);
    for t in triangles {
        let [a, b, c] = corners(t);
        let n = cross(sub(b, a), sub(c, a));
        let area2 = dot(n, n).sqrt();
        if area2 == 0.0 {
            continue;
        }
        total += f64::from(area2);
        let up = n[1] / area2;
        if up < -cos_limit && [a, b, c].iter().any(|p| p[1] > bed) {
            over += f64::from(area2);
        }
    }
    let step = (triangles.len() / THICKNESS_SAMPLES).max(1);
    let (mut min_wall, mut thin, mut probes) = (None::<f32>, 0, 0);
    for t in triangles.iter().step_by(step) {
        let [a, b, c] = corners(t);
        let n = cross(sub(b, a), sub(c, a));
        let len = dot(n, n).sqrt();
        if len == 0.0 {
            continue;
        }
        let inward = scale(n, -1.0 / len);
        let centre = scale([a[0] + b[0] + c[0], a[1] + b[1] + c[1], a[2] + b[2] + c[2]], 1.0 / 3.0);
        probes += 1;
        if let Some(d) = nearest_hit(centre, inward, triangles, &corners, t) {
            min_wall = Some(min_wall.map_or(d, |m: f32| m.min(d)));
            if d < THIN_WALL_MM {
                thin += 1;
            }
        }
    }
    Measured { overhang_fraction: if total > 0.0 { (over / total) as f32 } else { 0.0 }, min_wall_mm: min_wall, thin_probes: thin, probes }
}

/// Distance along `dir` from `origin` to the nearest other triangle
/// (Möller–Trumbore), ignoring hits closer than a micron.
fn nearest_hit(origin: V, dir: V, triangles: &[[u32; 3]], corners: &impl Fn(&[u32; 3]) -> [V; 3], skip: &[u32; 3]) -> Option<f32> {
    let mut best: Option<f32> = None;
    for t in triangles {
        if t == skip {
            continue;
        }
        let [a, b, c] = corners(t);
        let (e1, e2) = (sub(b, a), sub(c, a));
        let p = cross(dir, e2);
        let det = dot(e1, p);
        if det.abs() < 1e-12 {
            continue;
        }
        let inv = 1.0 / det;
        let s = sub(origin, a);
        let u = dot(s, p) * inv;
        if !(0.0..=1.0).contains(&u) {
            continue;
        }
        let q = cross(s, e1);
        let v = dot(dir, q) * inv;
        if v < 0.0 || u + v > 1.0 {
            continue;
        }
        let d = dot(e2, q) * inv;
        if d > 1e-3 && best.is_none_or(|b| d < b) {
            best = Some(d);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An axis-aligned box, outward faces, Y up.
    fn cuboid(size: V) -> (Vec<V>, Vec<[u32; 3]>) {
        let [x, y, z] = size;
        let p = vec![[0., 0., 0.], [x, 0., 0.], [x, y, 0.], [0., y, 0.], [0., 0., z], [x, 0., z], [x, y, z], [0., y, z]];
        let t = vec![[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4], [3, 7, 6], [3, 6, 2], [0, 4, 7], [0, 7, 3], [1, 2, 6], [1, 6, 5]];
        (p, t)
    }

    fn report(closed: bool, fits: bool) -> PrintReport {
        PrintReport {
            closed,
            two_manifold: closed,
            winding_consistent: true,
            components: 1,
            euler: 2,
            genus: Some(0),
            volume_mm3: 8000.0,
            area_mm2: 2400.0,
            bbox_mm: [20.0, 20.0, 20.0],
            degenerate_faces: 0,
            self_intersections: Some(0),
            build_volume_mm: [256.0; 3],
            fits_build_volume: fits,
            problems: vec![],
            checks: None,
            issues: vec![],
        }
    }

    #[test]
    fn a_box_has_no_overhang_and_its_walls_are_its_size() {
        let (p, t) = cuboid([1.0, 1.0, 1.0]);
        let m = measure(&p, &t, 20.0);
        assert_eq!(m.overhang_fraction, 0.0, "the bottom rests on the bed");
        assert!((m.min_wall_mm.unwrap() - 20.0).abs() < 1e-3, "{m:?}");
        assert_eq!(m.thin_probes, 0);
    }

    #[test]
    fn a_thin_lifted_plate_is_thin_and_overhangs() {
        let (mut p, t) = cuboid([10.0, 0.05, 10.0]);
        // A second plate lower down sets the bed, so this one floats.
        let (q, u) = cuboid([1.0, 1.0, 1.0]);
        let base = p.len() as u32;
        p.extend(q.iter().map(|v| [v[0] + 20.0, v[1] - 5.0, v[2]]));
        let mut t = t;
        t.extend(u.iter().map(|f| f.map(|i| i + base)));
        let m = measure(&p, &t, 100.0);
        assert!(m.overhang_fraction > 0.2, "the plate's underside overhangs: {m:?}");
        assert!(m.min_wall_mm.unwrap() < THIN_WALL_MM, "{m:?}");
        let words = plain_words(&report(true, true), Some(&m));
        assert!(words.iter().any(|l| l.level == "warn" && l.text.starts_with("Thin walls")), "{words:?}");
        assert!(words.iter().any(|l| l.level == "warn" && l.text.starts_with("Overhangs")), "{words:?}");
    }

    #[test]
    fn open_or_oversized_meshes_say_so() {
        let words = plain_words(&report(false, false), None);
        assert_eq!(words[0].level, "bad");
        assert!(words[0].text.starts_with("Not watertight"));
        assert!(words[1].text.contains("too big for the 256 × 256 × 256 mm"), "{words:?}");
        let words = plain_words(&report(true, true), None);
        assert!(words[1].text.contains("20.0 × 20.0 × 20.0 mm fits"), "{words:?}");
    }

    #[test]
    fn glb_round_trip_from_orfeas_mesh() {
        let (p, t) = cuboid([1.0, 2.0, 3.0]);
        let mesh = orfeas_mesh::Mesh { positions: p.clone(), indices: t.clone(), colors: None };
        let glb = orfeas_mesh::to_glb(&mesh).unwrap();
        let (q, u) = glb_mesh(&glb).expect("parses");
        assert_eq!(u.len(), t.len());
        assert_eq!(q.len(), p.len());
        assert!(glb_mesh(b"not a glb").is_none());
    }
}
