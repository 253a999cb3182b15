//! `--lay-flat`: turn the mesh so its largest stable face rests on the bed.
//!
//! A model standing as it was photographed often rests on a tip or an edge (a heart on
//! its point, a figure on its toes). Slicers offer "lay on face"; this does the same
//! before export so STL and 3MF arrive the right way down.

use crate::topology::{cross, dot, norm, sub};
use crate::Mesh;

/// Faces within this fraction of the extent from the resting plane touch the bed.
const CONTACT_TOLERANCE: f64 = 0.005;
/// A face leaning less than this from the resting direction lies on the bed.
const CONTACT_COS: f64 = 0.985; // cos 10°
/// Contact areas within this fraction of the largest count as equal; the lower centre
/// of mass wins among them.
const CONTACT_BAND: f64 = 0.05;
/// Evenly spread candidate directions, besides the axes and the dominant face normals.
const SPHERE_SAMPLES: usize = 128;
/// Dominant face-normal clusters tried.
const NORMAL_CANDIDATES: usize = 32;

/// `mesh` (world frame, Y up) rotated so that the best resting face points down (−Y,
/// which the print frame puts on the bed): the largest flat contact, the lowest centre
/// of mass among near-equal ones. Colours and indices are kept; winding stays outward
/// (a rotation).
pub fn lay_flat(mesh: &Mesh) -> Mesh {
    let p: Vec<[f64; 3]> = mesh.positions.iter().map(|v| v.map(f64::from)).collect();
    let faces: Vec<[usize; 3]> = mesh.indices.iter().map(|f| f.map(|i| i as usize)).filter(|f| f.iter().all(|&i| i < p.len())).collect();
    if faces.is_empty() {
        return mesh.clone();
    }
    let (normals, areas): (Vec<[f64; 3]>, Vec<f64>) = faces
        .iter()
        .map(|f| {
            let n = cross(sub(p[f[1]], p[f[0]]), sub(p[f[2]], p[f[0]]));
            let len = norm(n);
            if len > 0.0 {
                (n.map(|c| c / len), 0.5 * len)
            } else {
                ([0.0; 3], 0.0)
            }
        })
        .unzip();
    let centre = centre_of_mass(&p, &faces);
    let extent = extent(&p);
    let mut candidates: Vec<[f64; 3]> = vec![[0.0, -1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0]];
    candidates.extend(dominant_normals(&normals, &areas));
    let sphere = fibonacci_sphere(SPHERE_SAMPLES);
    // A rounded part has no flat face: it comes to rest where it rolls to. From each
    // sampled direction, roll (down = from the centre of mass towards the lowest
    // points) until it settles.
    let rolled: Vec<[f64; 3]> = candidates[..6].iter().chain(&sphere).map(|&d| roll(&p, centre, extent, d)).collect();
    candidates.extend(sphere);
    candidates.extend(rolled);
    // (direction, contact area, centre of mass height, stable)
    let scored: Vec<([f64; 3], f64, f64, bool)> = candidates
        .into_iter()
        .map(|d| {
            let plane = p.iter().map(|v| dot(*v, d)).fold(f64::NEG_INFINITY, f64::max);
            let tol = CONTACT_TOLERANCE * extent;
            let contact: f64 = faces
                .iter()
                .zip(normals.iter().zip(&areas))
                .filter(|(f, (n, _))| dot(**n, d) > CONTACT_COS && f.iter().all(|&i| dot(p[i], d) >= plane - tol))
                .map(|(_, (_, a))| *a)
                .sum();
            (d, contact, plane - dot(centre, d), stable(&p, centre, extent, d, plane))
        })
        .collect();
    // Only stable rests compete, when there are any (the centre of mass above the
    // contact: otherwise the report's tip-over check fails the result).
    let any_stable = scored.iter().any(|s| s.3);
    let scored: Vec<_> = scored.into_iter().filter(|s| s.3 || !any_stable).collect();
    let best_contact = scored.iter().map(|s| s.1).fold(0.0, f64::max);
    let band = best_contact * (1.0 - CONTACT_BAND);
    // The first candidate (the current down, when it competes) wins ties, so an
    // already flat-standing model is left as it is.
    let mut best = scored[0];
    for s in &scored {
        let in_band = s.1 >= band;
        let best_in_band = best.1 >= band;
        if (in_band && !best_in_band) || (in_band == best_in_band && s.2 < best.2 - 1e-9 * extent) {
            best = *s;
        }
    }
    let rotation = rotation_onto(best.0, [0.0, -1.0, 0.0]);
    Mesh {
        positions: p.iter().map(|v| apply(&rotation, *v).map(|c| c as f32)).collect(),
        indices: mesh.indices.clone(),
        colors: mesh.colors.clone(),
    }
}

/// Rolling iterations from one start direction.
const ROLL_STEPS: usize = 24;
/// Points within this fraction of the extent from the resting plane carry the part
/// (tighter than the report's 0.1 mm at print sizes up to 100 mm).
const STABLE_TOLERANCE: f64 = 0.001;

/// Down as the part settles from `d`: repeatedly, the direction from the centre of mass
/// to the mean of the points touching the plane below it.
fn roll(p: &[[f64; 3]], centre: [f64; 3], extent: f64, mut d: [f64; 3]) -> [f64; 3] {
    for _ in 0..ROLL_STEPS {
        let plane = p.iter().map(|v| dot(*v, d)).fold(f64::NEG_INFINITY, f64::max);
        let (mut sum, mut k) = ([0.0f64; 3], 0.0f64);
        for v in p.iter().filter(|v| dot(**v, d) >= plane - STABLE_TOLERANCE * extent) {
            for i in 0..3 {
                sum[i] += v[i];
            }
            k += 1.0;
        }
        let towards = sub(sum.map(|s| s / k.max(1.0)), centre);
        let len = norm(towards);
        if len <= 0.0 {
            break;
        }
        let next = towards.map(|c| c / len);
        if dot(next, d) > 1.0 - 1e-10 {
            break;
        }
        d = next;
    }
    d
}

/// The centre of mass lies over the contact (the convex hull of the points within
/// [`STABLE_TOLERANCE`] of the resting plane) with `d` down.
fn stable(p: &[[f64; 3]], centre: [f64; 3], extent: f64, d: [f64; 3], plane: f64) -> bool {
    let helper = if d[0].abs() < 0.9 { [1.0, 0.0, 0.0] } else { [0.0, 1.0, 0.0] };
    let u = cross(d, helper);
    let u = u.map(|c| c / norm(u));
    let v = cross(d, u);
    let points: Vec<[f64; 2]> = p.iter().filter(|q| dot(**q, d) >= plane - STABLE_TOLERANCE * extent).map(|q| [dot(*q, u), dot(*q, v)]).collect();
    let hull = crate::printability::convex_hull(points);
    hull.len() >= 3 && crate::printability::inside_hull(&hull, [dot(centre, u), dot(centre, v)])
}

fn centre_of_mass(p: &[[f64; 3]], faces: &[[usize; 3]]) -> [f64; 3] {
    let mut sum = [0.0; 3];
    let mut volume = 0.0;
    for f in faces {
        let [a, b, c] = [p[f[0]], p[f[1]], p[f[2]]];
        let v6 = dot(a, cross(b, c));
        volume += v6;
        for i in 0..3 {
            sum[i] += v6 * (a[i] + b[i] + c[i]) / 4.0;
        }
    }
    if volume.abs() > 0.0 {
        sum.map(|s| s / volume)
    } else {
        [0.0; 3]
    }
}

fn extent(p: &[[f64; 3]]) -> f64 {
    (0..3)
        .map(|i| {
            let (lo, hi) = p.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v[i]), hi.max(v[i])));
            hi - lo
        })
        .fold(0.0, f64::max)
}

/// The area-weighted mean normals of the largest clusters (a 10° latitude–longitude
/// binning): where a flat face is, its normal dominates a bin.
fn dominant_normals(normals: &[[f64; 3]], areas: &[f64]) -> Vec<[f64; 3]> {
    const BINS: usize = 18;
    let mut bins = vec![([0.0f64; 3], 0.0f64); BINS * 2 * BINS];
    for (n, &a) in normals.iter().zip(areas) {
        if a <= 0.0 {
            continue;
        }
        let theta = n[1].clamp(-1.0, 1.0).acos();
        let phi = n[2].atan2(n[0]) + std::f64::consts::PI;
        let i = ((theta / std::f64::consts::PI * BINS as f64) as usize).min(BINS - 1);
        let j = ((phi / (2.0 * std::f64::consts::PI) * (2 * BINS) as f64) as usize).min(2 * BINS - 1);
        let bin = &mut bins[i * 2 * BINS + j];
        for k in 0..3 {
            bin.0[k] += a * n[k];
        }
        bin.1 += a;
    }
    bins.sort_by(|a, b| b.1.total_cmp(&a.1));
    bins.into_iter()
        .take(NORMAL_CANDIDATES)
        .filter(|b| b.1 > 0.0 && norm(b.0) > 0.0)
        .map(|b| {
            let len = norm(b.0);
            b.0.map(|c| c / len)
        })
        .collect()
}

fn fibonacci_sphere(n: usize) -> Vec<[f64; 3]> {
    let golden = std::f64::consts::PI * (3.0 - 5f64.sqrt());
    (0..n)
        .map(|i| {
            let y = 1.0 - 2.0 * (i as f64 + 0.5) / n as f64;
            let r = (1.0 - y * y).sqrt();
            let a = golden * i as f64;
            [r * a.cos(), y, r * a.sin()]
        })
        .collect()
}

/// The rotation taking unit `from` onto unit `to` (Rodrigues), as a row-major 3 × 3.
fn rotation_onto(from: [f64; 3], to: [f64; 3]) -> [[f64; 3]; 3] {
    let v = cross(from, to);
    let c = dot(from, to);
    if c > 1.0 - 1e-12 {
        return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    }
    if c < -1.0 + 1e-12 {
        // Opposite: half a turn about any axis perpendicular to `from`.
        let axis = if from[0].abs() < 0.9 { [1.0, 0.0, 0.0] } else { [0.0, 0.0, 1.0] };
        let k = cross(from, axis);
        let k = k.map(|x| x / norm(k));
        return std::array::from_fn(|i| std::array::from_fn(|j| 2.0 * k[i] * k[j] - if i == j { 1.0 } else { 0.0 }));
    }
    let vx = [[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]];
    let f = 1.0 / (1.0 + c);
    std::array::from_fn(|i| {
        std::array::from_fn(|j| {
            let vx2: f64 = (0..3).map(|k| vx[i][k] * vx[k][j]).sum();
            (if i == j { 1.0 } else { 0.0 }) + vx[i][j] + f * vx2
        })
    })
}

fn apply(r: &[[f64; 3]; 3], v: [f64; 3]) -> [f64; 3] {
    std::array::from_fn(|i| dot(r[i], v))
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::{print_report, MeshOptions};

    /// A cone (apex up the +Y axis when `tip_down` is false) with `n` sides: standing on
    /// its tip it tips over; laid flat it rests on its base.
    fn cone(n: u32, tip_down: bool) -> Mesh {
        let mut positions = vec![[0.0f32, if tip_down { -1.0 } else { 1.0 }, 0.0], [0.0, 0.0, 0.0]];
        for k in 0..n {
            let a = k as f32 / n as f32 * std::f32::consts::TAU;
            positions.push([a.cos(), 0.0, a.sin()]);
        }
        let mut indices = Vec::new();
        for k in 0..n {
            let a = 2 + k;
            let b = 2 + (k + 1) % n;
            // Apex fan and base fan, outward for the apex-up cone.
            indices.push([0, b, a]);
            indices.push([1, a, b]);
        }
        if tip_down {
            for f in &mut indices {
                f.swap(1, 2);
            }
        }
        Mesh { positions, indices, colors: None }
    }

    #[test]
    fn lay_flat_puts_a_cone_standing_on_its_tip_on_its_base() {
        let upside_down = cone(32, true);
        let options = MeshOptions { size_mm: Some(40.0), ..MeshOptions::default() };
        let before = print_report(&upside_down, &options);
        assert!(before.checks.tips_over || before.checks.bed_contact_mm2 < 1.0, "{:?}", before.checks);
        let flat = lay_flat(&upside_down);
        let after = print_report(&flat, &options);
        assert!(after.closed && after.winding_consistent, "a rotation keeps the mesh sound: {:?}", after.problems);
        assert!(!after.checks.tips_over, "{:?}", after.checks);
        // The base, a 32-gon of radius 20 mm at this size: about π·20² mm².
        assert!(after.checks.bed_contact_mm2 > 1200.0, "{:?}", after.checks);
        // A cone already on its base stays as it is.
        let upright = cone(32, false);
        assert_eq!(lay_flat(&upright).positions, upright.positions);
    }
}
