//! Counting self-intersections: a uniform-grid broad phase (`grid.rs`) and an orientation-predicate
//! triangle–triangle test.

use crate::grid::FaceGrid;
#[cfg(test)]
use crate::Mesh;

/// Counts pairs of faces that cross each other, or `None` when the mesh has more than
/// `max_faces` faces or the broad phase would test more than `max_pairs` candidate pairs
/// (the count is skipped rather than letting it take unbounded time).
///
/// Counted: pairs of faces sharing no vertex whose interiors cross properly (an edge of
/// one passes strictly through the other). Not counted: faces that only touch, coplanar
/// overlaps, and faces that share a vertex (neighbours folded over each other) — a
/// validator with exact arithmetic and a half-edge walk would be needed for those.
/// Predicates run in f64 on f32 input, which is exact for the products involved up to
/// rounding of the final sums; near-touching cases may go either way.
#[cfg(test)]
pub(crate) fn count_self_intersections(
    mesh: &Mesh,
    max_faces: usize,
    max_pairs: u64,
) -> Option<usize> {
    let faces = mesh.faces_in_range();
    if faces.len() > max_faces {
        return None;
    }
    if faces.len() < 2 {
        return Some(0);
    }
    let p: Vec<[f64; 3]> = mesh.positions.iter().map(|q| q.map(f64::from)).collect();
    let faces: Vec<[usize; 3]> = faces.iter().map(|f| f.map(|v| v as usize)).collect();
    // No grid without finite positions: the count is unknown.
    let grid = FaceGrid::build(&p, &faces)?;
    count_on_grid(&p, &faces, &grid, max_pairs)
}

/// [`count_self_intersections`] on a grid already built over `faces` (the print report
/// shares one with the wall probe).
pub(crate) fn count_on_grid(p: &[[f64; 3]], faces: &[[usize; 3]], grid: &FaceGrid, max_pairs: u64) -> Option<usize> {
    let pairs: u64 = (0..grid.cells())
        .map(|c| {
            let k = grid.faces_in(c).len() as u64;
            k * k.saturating_sub(1) / 2
        })
        .sum();
    if pairs > max_pairs {
        return None;
    }

    let mut count = 0usize;
    for z in 0..grid.res[2] {
        for y in 0..grid.res[1] {
            for x in 0..grid.res[0] {
                let c = grid.index(x, y, z);
                let list = grid.faces_in(c);
                for (k, &i) in list.iter().enumerate() {
                    let (fa, ba) = (faces[i as usize], &grid.boxes[i as usize]);
                    for &j in &list[k + 1..] {
                        let (fb, bb) = (faces[j as usize], &grid.boxes[j as usize]);
                        if (0..3).any(|a| ba.1[a] < bb.0[a] || bb.1[a] < ba.0[a]) {
                            continue;
                        }
                        if fa.iter().any(|v| fb.contains(v)) {
                            continue;
                        }
                        // Test each pair once: in the cell holding the low corner of the
                        // boxes' overlap.
                        let owner = grid.index(
                            grid.cell_of(ba.0[0].max(bb.0[0]), 0),
                            grid.cell_of(ba.0[1].max(bb.0[1]), 1),
                            grid.cell_of(ba.0[2].max(bb.0[2]), 2),
                        );
                        if owner != c {
                            continue;
                        }
                        let ta = fa.map(|v| p[v]);
                        let tb = fb.map(|v| p[v]);
                        if triangles_cross(&ta, &tb) {
                            count += 1;
                        }
                    }
                }
            }
        }
    }
    Some(count)
}

/// Sign of the volume of (a, b, c, d): positive when d is on the side a→b→c's
/// counter-clockwise normal points to.
fn orient(a: [f64; 3], b: [f64; 3], c: [f64; 3], d: [f64; 3]) -> f64 {
    let u = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    let v = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
    let w = [d[0] - a[0], d[1] - a[1], d[2] - a[2]];
    u[0] * (v[1] * w[2] - v[2] * w[1]) - u[1] * (v[0] * w[2] - v[2] * w[0])
        + u[2] * (v[0] * w[1] - v[1] * w[0])
}

/// Whether segment p–q passes strictly through the interior of triangle t.
fn segment_crosses(p: [f64; 3], q: [f64; 3], t: &[[f64; 3]; 3]) -> bool {
    let (s1, s2) = (orient(t[0], t[1], t[2], p), orient(t[0], t[1], t[2], q));
    if s1 * s2 >= 0.0 {
        return false;
    }
    let a = orient(p, q, t[0], t[1]);
    let b = orient(p, q, t[1], t[2]);
    let c = orient(p, q, t[2], t[0]);
    (a > 0.0 && b > 0.0 && c > 0.0) || (a < 0.0 && b < 0.0 && c < 0.0)
}

/// Two non-coplanar triangles intersect iff an edge of one crosses the other.
fn triangles_cross(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> bool {
    (0..3).any(|i| segment_crosses(a[i], a[(i + 1) % 3], b))
        || (0..3).any(|i| segment_crosses(b[i], b[(i + 1) % 3], a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossing_triangles_are_counted_touching_ones_not() {
        let mesh = Mesh {
            positions: vec![
                [0.0, 0.0, 0.0],
                [2.0, 0.0, 0.0],
                [0.0, 2.0, 0.0],
                // pierces the first triangle
                [0.5, 0.5, -1.0],
                [0.5, 0.5, 1.0],
                [0.6, 0.9, 1.0],
                // far away
                [9.0, 9.0, 9.0],
                [9.5, 9.0, 9.0],
                [9.0, 9.5, 9.0],
            ],
            indices: vec![[0, 1, 2], [3, 4, 5], [6, 7, 8]],
            colors: None,
        };
        assert_eq!(count_self_intersections(&mesh, 100, 1000), Some(1));
        assert_eq!(count_self_intersections(&mesh, 2, 1000), None);
    }
}
