//! Feature (crease and corner) detection for feature-preserving smoothing.
//!
//! A crease of the shape and a terrace step of the grid look alike at the scale of one
//! face: both are a line where the face normals turn by 45–90°. They differ at the scale
//! of a few faces. Beside a true crease the surface is flat on each side, so a small
//! patch of faces lying wholly on one side has one normal; on a terraced curved surface
//! every patch mixes treads and risers. Each face therefore takes as its *guide normal*
//! the mean normal of the most consistent patch among those containing it (the 1-ring
//! face patches of its neighbours; Zhang et al. 2015, "Guided mesh normal filtering").
//! An edge is a feature when the guide normals of its two faces differ by more than the
//! feature angle. Grid steps turn the normal by at most ~55° (the angle between an axis
//! and a cube diagonal) and their patch means by less, so the default angle of 65° keeps
//! creases of 90° (boxes, relief plates) and lets terraces be smoothed away.

use crate::mesh::face_cross;
use crate::Mesh;

/// What smoothing may do with a vertex.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Constraint {
    /// Not on a feature: smoothed over all its neighbours.
    Free,
    /// On a crease line between these two crease neighbours: moves along the line only.
    Crease(u32, u32),
    /// A corner (three or more feature edges), the end of a crease or a crease that
    /// turns sharply: stays put.
    Fixed,
}

/// Classifies every vertex of `mesh` by the feature edges around it (see the module
/// doc); edges whose faces' guide normals differ by more than `angle_deg` are features.
/// Faces with an out-of-range index are ignored; edges with other than two faces (open
/// or non-manifold meshes) count as features, so their vertices are not smoothed across.
pub(crate) fn constraints(mesh: &Mesh, angle_deg: f32) -> Vec<Constraint> {
    let n = mesh.positions.len();
    let faces = mesh.faces_in_range();
    let normals: Vec<([f64; 3], f64)> = faces
        .iter()
        .map(|f| {
            let [a, b, c] = f.map(|v| mesh.positions[v as usize].map(f64::from));
            let cr = face_cross(a, b, c);
            let len = dot(cr, cr).sqrt();
            if len > 0.0 && len.is_finite() {
                (cr.map(|x| x / len), len)
            } else {
                ([0.0; 3], 0.0)
            }
        })
        .collect();

    let (start, incident) = fans(n, &faces);
    // A face's 1-ring patch: the faces around each of its three corners, in corner
    // order (a face around two corners is listed twice, the face itself three times;
    // the weights below count it so). Explicit loops over the CSR rows, not a chain of
    // iterator adaptors: each face's ring is walked twice (sum, then spread) every job.
    let fan = |v: u32| &incident[start[v as usize] as usize..start[v as usize + 1] as usize];

    // Per face: the area-weighted mean normal of its 1-ring patch and how far the
    // patch's normals stray from it (0 on a flat patch).
    let mut patches: Vec<([f64; 3], f64)> = Vec::with_capacity(faces.len());
    for f in &faces {
        let mut sum = [0.0f64; 3];
        for &v in f {
            for &g in fan(v) {
                let (m, a) = normals[g as usize];
                sum = [sum[0] + m[0] * a, sum[1] + m[1] * a, sum[2] + m[2] * a];
            }
        }
        let len = dot(sum, sum).sqrt();
        if len == 0.0 || !len.is_finite() {
            patches.push(([0.0; 3], f64::INFINITY));
            continue;
        }
        let mean = sum.map(|x| x / len);
        let mut spread = 0.0f64;
        for &v in f {
            for &g in fan(v) {
                let (m, a) = normals[g as usize];
                if a > 0.0 {
                    spread = spread.max(1.0 - dot(m, mean));
                }
            }
        }
        patches.push((mean, spread));
    }
    let spreads: Vec<f64> = patches.iter().map(|p| p.1).collect();
    let guides: Vec<[f64; 3]> = guide_faces(&faces, &start, &incident, &spreads).into_iter().map(|g| patches[g].0).collect();

    // Feature edges, each seen from its faces: the faces around edge (a, b) are those of
    // a's fan that contain b. Per vertex: how many feature edges, and the first two
    // other ends.
    let cos_limit = f64::from(angle_deg).to_radians().cos();
    let mut count = vec![0u8; n];
    let mut ends = vec![[0u32; 2]; n];
    let mut mark = |v: u32, other: u32| {
        let c = &mut count[v as usize];
        if (*c as usize) < 2 {
            ends[v as usize][*c as usize] = other;
        }
        *c = c.saturating_add(1);
    };
    for (fi, f) in faces.iter().enumerate() {
        for i in 0..3 {
            let (a, b) = (f[i], f[(i + 1) % 3]);
            if a == b {
                continue;
            }
            let fan = &incident[start[a as usize] as usize..start[a as usize + 1] as usize];
            let mut across = None;
            let mut sharing = 0usize;
            for &g in fan {
                if faces[g as usize].contains(&b) {
                    sharing += 1;
                    if g as usize != fi {
                        across = Some(g as usize);
                    }
                }
            }
            // Each edge once: from its lower-numbered face (or its only face).
            let feature = match across {
                Some(g) if sharing == 2 => {
                    if g < fi {
                        continue;
                    }
                    dot(guides[fi], guides[g]) < cos_limit
                }
                // Open or non-manifold: a feature, marked from each of its faces alike.
                _ => {
                    if across.is_some_and(|g| g < fi) {
                        continue;
                    }
                    true
                }
            };
            if feature {
                mark(a, b);
                mark(b, a);
            }
        }
    }
    (0..n)
        .map(|v| match count[v] {
            0 => Constraint::Free,
            2 if straight(mesh, v, ends[v][0] as usize, ends[v][1] as usize) => {
                Constraint::Crease(ends[v][0], ends[v][1])
            }
            _ => Constraint::Fixed,
        })
        .collect()
}

/// Vertex → incident faces of `faces` over `n` vertices (CSR: the faces around `v` are
/// `incident[start[v]..start[v + 1]]`, in face order).
fn fans(n: usize, faces: &[[u32; 3]]) -> (Vec<u32>, Vec<u32>) {
    let mut start = vec![0u32; n + 1];
    for f in faces {
        for &v in f {
            start[v as usize + 1] += 1;
        }
    }
    for v in 0..n {
        start[v + 1] += start[v];
    }
    let mut fill = start.clone();
    let mut incident = vec![0u32; start[n] as usize];
    for (fi, f) in faces.iter().enumerate() {
        for &v in f {
            incident[fill[v as usize] as usize] = fi as u32;
            fill[v as usize] += 1;
        }
    }
    (start, incident)
}

/// Per face, the face whose patch is its guide: the first face of least spread in the
/// face's 1-ring (its corners' fans in corner order), the face itself on a tie.
///
/// Each vertex's first face of least spread in fan order is found once; a face's pick
/// is then the first of its corners' picks that beats it — the same face a walk over
/// the whole 1-ring finds (a unit test compares them), with a third of the visits. A
/// NaN spread never wins a comparison, so it never stands as a pick.
fn guide_faces(faces: &[[u32; 3]], start: &[u32], incident: &[u32], spreads: &[f64]) -> Vec<usize> {
    let n = start.len() - 1;
    let fan = |v: usize| &incident[start[v] as usize..start[v + 1] as usize];
    let fan_best: Vec<usize> = (0..n)
        .map(|v| {
            let mut best = usize::MAX;
            for &g in fan(v) {
                let g = g as usize;
                if best == usize::MAX || spreads[g] < spreads[best] || spreads[best].is_nan() {
                    best = g;
                }
            }
            best
        })
        .collect();
    faces
        .iter()
        .enumerate()
        .map(|(fi, f)| {
            let mut best = fi;
            for &v in f {
                let g = fan_best[v as usize];
                if spreads[g] < spreads[best] {
                    best = g;
                }
            }
            best
        })
        .collect()
}

/// Whether the crease a – v – b runs on nearly straight (turns by less than ~25°) at v.
/// A crease zigzagging over the faces of a chamfer the grid cut (marching cubes cuts a
/// box edge off by up to a grid step) is not: moving v toward the middle of a and b would
/// pull it off the flat side it lies on, so it stays fixed.
fn straight(mesh: &Mesh, v: usize, a: usize, b: usize) -> bool {
    let p = |i: usize| mesh.positions[i].map(f64::from);
    let (pv, pa, pb) = (p(v), p(a), p(b));
    let u: [f64; 3] = std::array::from_fn(|i| pa[i] - pv[i]);
    let w: [f64; 3] = std::array::from_fn(|i| pb[i] - pv[i]);
    let len = (dot(u, u) * dot(w, w)).sqrt();
    len > 0.0 && dot(u, w) / len < -STRAIGHT_COS
}

/// cos 155°, negated: a crease turning by less than 25° at a vertex counts as straight.
const STRAIGHT_COS: f64 = 0.906;

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk over every face of the 1-ring that `guide_faces` replaces.
    fn guide_faces_by_walk(faces: &[[u32; 3]], start: &[u32], incident: &[u32], spreads: &[f64]) -> Vec<usize> {
        faces
            .iter()
            .enumerate()
            .map(|(fi, f)| {
                let mut best = fi;
                for &v in f {
                    for &g in &incident[start[v as usize] as usize..start[v as usize + 1] as usize] {
                        if spreads[g as usize] < spreads[best] {
                            best = g as usize;
                        }
                    }
                }
                best
            })
            .collect()
    }

    #[test]
    fn guide_picks_equal_the_whole_ring_walk_with_ties_and_nans() {
        // A strip of a triangulated grid, 12 × 12 vertices.
        let w = 12u32;
        let mut faces = Vec::new();
        for y in 0..w - 1 {
            for x in 0..w - 1 {
                let v = y * w + x;
                faces.push([v, v + 1, v + w]);
                faces.push([v + 1, v + w + 1, v + w]);
            }
        }
        let n = (w * w) as usize;
        let (start, incident) = fans(n, &faces);
        // Spreads from a small LCG over few values (many ties), some NaN and infinite.
        let mut state = 7u64;
        for round in 0..50 {
            let spreads: Vec<f64> = faces
                .iter()
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    match (state >> 33) % 9 {
                        0 if round % 2 == 0 => f64::NAN,
                        1 => f64::INFINITY,
                        k => k as f64 * 0.25,
                    }
                })
                .collect();
            assert_eq!(
                guide_faces(&faces, &start, &incident, &spreads),
                guide_faces_by_walk(&faces, &start, &incident, &spreads),
                "round {round}"
            );
        }
    }
}
