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

    // Vertex → incident faces (CSR).
    let mut start = vec![0u32; n + 1];
    for f in &faces {
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
    let (incident, start) = (&incident, &start);
    let ring = move |f: &[u32; 3]| {
        let f = *f;
        f.into_iter().flat_map(move |v| {
            incident[start[v as usize] as usize..start[v as usize + 1] as usize]
                .iter()
                .map(|&g| g as usize)
        })
    };

    // Per face: the area-weighted mean normal of its 1-ring patch and how far the
    // patch's normals stray from it (0 on a flat patch).
    let patches: Vec<([f64; 3], f64)> = faces
        .iter()
        .map(|f| {
            let mut sum = [0.0f64; 3];
            for g in ring(f) {
                let (m, a) = normals[g];
                sum = std::array::from_fn(|i| sum[i] + m[i] * a);
            }
            let len = dot(sum, sum).sqrt();
            if len == 0.0 || !len.is_finite() {
                return ([0.0; 3], f64::INFINITY);
            }
            let mean = sum.map(|x| x / len);
            let spread = ring(f)
                .filter(|&g| normals[g].1 > 0.0)
                .map(|g| 1.0 - dot(normals[g].0, mean))
                .fold(0.0, f64::max);
            (mean, spread)
        })
        .collect();
    let guides: Vec<[f64; 3]> = faces
        .iter()
        .enumerate()
        .map(|(fi, f)| {
            // Ties go to the face's own patch.
            let mut best = fi;
            for g in ring(f) {
                if patches[g].1 < patches[best].1 {
                    best = g;
                }
            }
            patches[best].0
        })
        .collect();

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
