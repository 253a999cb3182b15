//! Cleanup and topology repair: welding, degenerate and duplicate faces, pinched vertices,
//! edges with more than two faces, and hole filling.
//!
//! Extraction output is closed by construction, so these steps exist for what comes after
//! it — mainly meshoptimizer, which is not topology-safe (zeux/meshoptimizer#699). They
//! work on meshes of decimated size (tens of thousands of faces); hash maps are fine here.

use std::collections::{HashMap, HashSet};

use crate::topology::weld_by_position;
use crate::Mesh;

/// Faces with less area than this (squared world units) are degenerate; the same bound
/// as the validator's.
const MIN_AREA: f64 = 1e-12;

/// Merges vertices with identical positions, then drops faces with a repeated or
/// out-of-range index, faces with (near) zero area, duplicate faces, and vertices no
/// face uses.
///
/// Duplicates: of several faces over the same three vertices with the same orientation,
/// one is kept; a pair with opposite orientations is a zero-volume fin and both go.
/// Dropping a face can open a hole; [`repair`] closes it. Colours follow their vertices.
pub fn clean(mesh: &Mesh) -> Mesh {
    let n = mesh.positions.len();
    let weld = weld_by_position(&mesh.positions);
    let mut faces: Vec<[u32; 3]> = Vec::with_capacity(mesh.indices.len());
    for f in &mesh.indices {
        if f.iter().any(|&v| v as usize >= n) {
            continue;
        }
        let w = f.map(|v| weld[v as usize]);
        if w[0] == w[1] || w[1] == w[2] || w[0] == w[2] || area(mesh, w) < MIN_AREA {
            continue;
        }
        faces.push(w);
    }
    // Key: sorted vertex triple; value: indices of the faces with that triple.
    let mut by_set: HashMap<[u32; 3], Vec<usize>> = HashMap::with_capacity(faces.len());
    for (i, f) in faces.iter().enumerate() {
        let mut key = *f;
        key.sort_unstable();
        by_set.entry(key).or_default().push(i);
    }
    let mut keep = vec![true; faces.len()];
    for group in by_set.values().filter(|g| g.len() > 1) {
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        let reference = canonical(faces[group[0]]);
        for &i in group {
            if canonical(faces[i]) == reference {
                pos.push(i);
            } else {
                neg.push(i);
            }
        }
        // Opposite pairs cancel; of the surplus of one orientation, one face stays.
        for &i in group {
            keep[i] = false;
        }
        match pos.len().cmp(&neg.len()) {
            std::cmp::Ordering::Greater => keep[pos[0]] = true,
            std::cmp::Ordering::Less => keep[neg[0]] = true,
            std::cmp::Ordering::Equal => {}
        }
    }
    let faces: Vec<[u32; 3]> = faces
        .into_iter()
        .zip(keep)
        .filter_map(|(f, k)| k.then_some(f))
        .collect();
    compact(mesh, faces)
}

/// Closes the defects [`clean`] and decimation leave: splits pinched vertices, removes
/// the faces around edges with more than two faces, and fills every hole with ear
/// triangles (no new vertex for holes). Runs a few rounds; returns the repaired mesh.
///
/// Does not promise a closed manifold: [`check`](crate::check) the result. New vertices
/// (copies of pinched ones, nudged toward their fan) copy the original's colour.
pub fn repair(mesh: &Mesh) -> Mesh {
    let mut mesh = clean(mesh);
    for _ in 0..4 {
        let removed = drop_non_manifold_edges(&mut mesh);
        let filled = fill_holes(&mut mesh);
        mesh = clean(&mesh);
        let split = split_pinched_vertices(&mut mesh);
        if removed == 0 && filled == 0 && split == 0 {
            break;
        }
    }
    mesh
}

/// Flips the longest edge of every nearly collinear face (area below `16 · ε · |p|max ·
/// longest edge`, i.e. within f32 rounding of zero) with its neighbour across that edge,
/// which removes the sliver without moving a vertex. Skipped where the new edge already
/// exists (the flip would make it non-manifold). Returns the number of flips.
pub(crate) fn flip_slivers(mesh: &mut Mesh) -> usize {
    let mut flips = 0;
    for _ in 0..3 {
        let mut edge_faces: HashMap<u64, Vec<usize>> =
            HashMap::with_capacity(mesh.indices.len() * 2);
        for (fi, f) in mesh.indices.iter().enumerate() {
            for i in 0..3 {
                edge_faces
                    .entry(key(f[i], f[(i + 1) % 3]))
                    .or_default()
                    .push(fi);
            }
        }
        let mut touched = vec![false; mesh.indices.len()];
        let mut round = 0;
        for fi in 0..mesh.indices.len() {
            if touched[fi] || !is_sliver(mesh, mesh.indices[fi]) {
                continue;
            }
            let f = mesh.indices[fi];
            let pos = |v: u32| mesh.positions[v as usize].map(f64::from);
            let d2 = |a: u32, b: u32| (0..3).map(|i| (pos(a)[i] - pos(b)[i]).powi(2)).sum::<f64>();
            // Slot i: edge f[i] → f[i+1] opposite f[i+2].
            let i = (0..3)
                .max_by(|&i, &j| d2(f[i], f[(i + 1) % 3]).total_cmp(&d2(f[j], f[(j + 1) % 3])))
                .unwrap_or(0);
            let (a, b, c) = (f[i], f[(i + 1) % 3], f[(i + 2) % 3]);
            let Some(&gi) = edge_faces
                .get(&key(a, b))
                .and_then(|fs| fs.iter().find(|&&g| g != fi))
            else {
                continue;
            };
            if touched[gi] || edge_faces.get(&key(a, b)).map_or(0, Vec::len) != 2 {
                continue;
            }
            let g = mesh.indices[gi];
            // g traverses b → a; d is its third vertex.
            let Some(d) = g.iter().copied().find(|&v| v != a && v != b) else {
                continue;
            };
            if d == c || edge_faces.contains_key(&key(c, d)) {
                continue;
            }
            mesh.indices[fi] = [c, a, d];
            mesh.indices[gi] = [c, d, b];
            touched[fi] = true;
            touched[gi] = true;
            round += 1;
        }
        flips += round;
        if round == 0 {
            break;
        }
    }
    flips
}

/// Whether face `f` is within f32 rounding of collinear (see [`flip_slivers`]).
pub(crate) fn is_sliver(mesh: &Mesh, f: [u32; 3]) -> bool {
    let [a, b, c] = f.map(|v| mesh.positions[v as usize].map(f64::from));
    let magnitude = [a, b, c]
        .iter()
        .flatten()
        .fold(0.0f64, |m, &x| m.max(x.abs()))
        .max(f64::MIN_POSITIVE);
    let d2 = |a: [f64; 3], b: [f64; 3]| (0..3).map(|i| (a[i] - b[i]).powi(2)).sum::<f64>();
    let longest = d2(a, b).max(d2(b, c)).max(d2(c, a)).sqrt();
    !(area_of(a, b, c) >= 16.0 * f64::from(f32::EPSILON) * magnitude * longest)
}

/// Vertex-order rotation that starts at the smallest index: equal for the same oriented
/// triangle, different for the flipped one.
fn canonical(f: [u32; 3]) -> [u32; 3] {
    let i = (0..3).min_by_key(|&i| f[i]).unwrap_or(0);
    [f[i], f[(i + 1) % 3], f[(i + 2) % 3]]
}

fn area(mesh: &Mesh, f: [u32; 3]) -> f64 {
    let [a, b, c] = f.map(|v| mesh.positions[v as usize].map(f64::from));
    area_of(a, b, c)
}

/// Area of triangle (a, b, c); 0 for NaN input.
pub(crate) fn area_of(a: [f64; 3], b: [f64; 3], c: [f64; 3]) -> f64 {
    let cr = crate::mesh::face_cross(a, b, c);
    let a = 0.5 * (cr[0] * cr[0] + cr[1] * cr[1] + cr[2] * cr[2]).sqrt();
    if a.is_nan() {
        0.0
    } else {
        a
    }
}

/// Keeps only the vertices `faces` use, renumbered in first-use order; colours follow.
pub(crate) fn compact(mesh: &Mesh, faces: Vec<[u32; 3]>) -> Mesh {
    let mut remap = vec![u32::MAX; mesh.positions.len()];
    let mut out = Mesh {
        positions: Vec::new(),
        indices: Vec::with_capacity(faces.len()),
        colors: mesh.colors.as_ref().map(|_| Vec::new()),
    };
    for f in faces {
        let g = f.map(|old| {
            let slot = &mut remap[old as usize];
            if *slot == u32::MAX {
                *slot = out.positions.len() as u32;
                out.positions.push(mesh.positions[old as usize]);
                if let (Some(dst), Some(src)) = (out.colors.as_mut(), mesh.colors.as_ref()) {
                    dst.push(src.get(old as usize).copied().unwrap_or([1.0; 3]));
                }
            }
            *slot
        });
        out.indices.push(g);
    }
    out
}

fn key(a: u32, b: u32) -> u64 {
    u64::from(a.min(b)) << 32 | u64::from(a.max(b))
}

/// Removes every face that has an edge shared by more than two faces; returns how many.
fn drop_non_manifold_edges(mesh: &mut Mesh) -> usize {
    let mut count: HashMap<u64, u32> = HashMap::with_capacity(mesh.indices.len() * 2);
    for f in &mesh.indices {
        for i in 0..3 {
            *count.entry(key(f[i], f[(i + 1) % 3])).or_default() += 1;
        }
    }
    let before = mesh.indices.len();
    mesh.indices
        .retain(|f| (0..3).all(|i| count[&key(f[i], f[(i + 1) % 3])] <= 2));
    before - mesh.indices.len()
}

/// Fills every boundary loop with triangles made of its own vertices; returns the number
/// of triangles added.
///
/// A hole's loop runs along the missing twins of the boundary half-edges. Ears are cut
/// greedily, smallest new edge first, never creating an edge the mesh already has (that
/// would make it non-manifold); a loop that cannot be cut that way is left open.
fn fill_holes(mesh: &mut Mesh) -> usize {
    let mut directed: HashSet<(u32, u32)> = HashSet::with_capacity(mesh.indices.len() * 3);
    let mut edges: HashSet<u64> = HashSet::with_capacity(mesh.indices.len() * 2);
    for f in &mesh.indices {
        for i in 0..3 {
            directed.insert((f[i], f[(i + 1) % 3]));
            edges.insert(key(f[i], f[(i + 1) % 3]));
        }
    }
    // Hole half-edges b → a for every boundary half-edge a → b, keyed by start vertex.
    let mut hole: HashMap<u32, Vec<u32>> = HashMap::new();
    for &(a, b) in &directed {
        if !directed.contains(&(b, a)) {
            hole.entry(b).or_default().push(a);
        }
    }
    let mut added = 0;
    let mut starts: Vec<u32> = hole.keys().copied().collect();
    starts.sort_unstable();
    for start in starts {
        while let Some(first) = hole.get_mut(&start).and_then(Vec::pop) {
            // Walk the loop; at a vertex with several outgoing hole edges take any: the
            // loop then closes at the first revisit of `start`.
            let mut cycle = vec![start];
            let mut at = first;
            let mut guard = 0;
            while at != start && guard < 1_000_000 {
                cycle.push(at);
                match hole.get_mut(&at).and_then(Vec::pop) {
                    Some(next) => at = next,
                    None => break,
                }
                guard += 1;
            }
            if at != start {
                continue; // an open chain: not a loop, leave it
            }
            added += fill_loop(mesh, &mut edges, cycle);
        }
    }
    added
}

/// Ear-clips one loop `cycle` (hole half-edges cycle[i] → cycle[i+1]); new triangles
/// contain those half-edges, so their winding matches the surrounding faces.
fn fill_loop(mesh: &mut Mesh, edges: &mut HashSet<u64>, mut cycle: Vec<u32>) -> usize {
    let mut added = 0;
    let pos = |v: u32| mesh.positions[v as usize].map(f64::from);
    let dist = |a: [f64; 3], b: [f64; 3]| {
        (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)
    };
    let mut new_faces = Vec::new();
    while cycle.len() > 3 {
        let k = cycle.len();
        // The ear at i is (prev, i, next) and adds the edge prev–next. Flat ears (area
        // tiny against the new edge) would be degenerate faces: taken only when nothing
        // else is possible.
        let ear = |i: usize| (cycle[(i + k - 1) % k], cycle[i], cycle[(i + 1) % k]);
        let valid = |i: &usize| {
            let (p, _, q) = ear(*i);
            p != q && !edges.contains(&key(p, q))
        };
        let flatness = |i: usize| {
            let (p, v, q) = ear(i);
            let d = dist(pos(p), pos(q)).max(1e-300);
            area_of(pos(p), pos(v), pos(q)) / d
        };
        let length = |i: usize| {
            let (p, _, q) = ear(i);
            dist(pos(p), pos(q))
        };
        let best = (0..k)
            .filter(valid)
            .filter(|&i| flatness(i) > 1e-3)
            .min_by(|&i, &j| length(i).total_cmp(&length(j)))
            .or_else(|| {
                (0..k)
                    .filter(valid)
                    .max_by(|&i, &j| flatness(i).total_cmp(&flatness(j)))
            });
        let Some(i) = best else {
            return added; // no valid ear: leave the rest open
        };
        let (p, v, q) = (cycle[(i + k - 1) % k], cycle[i], cycle[(i + 1) % k]);
        new_faces.push([p, v, q]);
        edges.insert(key(p, q));
        cycle.remove(i);
        added += 1;
    }
    if cycle.len() == 3 {
        new_faces.push([cycle[0], cycle[1], cycle[2]]);
        added += 1;
    }
    mesh.indices.extend(new_faces);
    added
}

/// Gives every extra fan of a pinched vertex its own copy of the vertex, moved 1 % of the
/// way toward the fan's centroid so that welding by position does not merge it back.
/// Returns the number of copies made.
fn split_pinched_vertices(mesh: &mut Mesh) -> usize {
    let n = mesh.positions.len();
    // Corners per vertex.
    let mut corners: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
    for (fi, f) in mesh.indices.iter().enumerate() {
        for (s, &v) in f.iter().enumerate() {
            corners[v as usize].push((fi, s));
        }
    }
    let mut made = 0;
    for v in 0..n {
        let cs = std::mem::take(&mut corners[v]);
        if cs.len() < 2 {
            continue;
        }
        // Union corners of faces sharing an edge at v (the other endpoint matches).
        let mut parent: Vec<usize> = (0..cs.len()).collect();
        fn find(p: &mut [usize], mut x: usize) -> usize {
            while p[x] != x {
                p[x] = p[p[x]];
                x = p[x];
            }
            x
        }
        let mut by_neighbour: HashMap<u32, usize> = HashMap::new();
        for (ci, &(fi, s)) in cs.iter().enumerate() {
            let f = mesh.indices[fi];
            for other in [f[(s + 1) % 3], f[(s + 2) % 3]] {
                if let Some(&cj) = by_neighbour.get(&other) {
                    let (a, b) = (find(&mut parent, ci), find(&mut parent, cj));
                    parent[a] = b;
                } else {
                    by_neighbour.insert(other, ci);
                }
            }
        }
        let mut fans: HashMap<usize, Vec<usize>> = HashMap::new();
        for ci in 0..cs.len() {
            let r = find(&mut parent, ci);
            fans.entry(r).or_default().push(ci);
        }
        if fans.len() < 2 {
            continue;
        }
        let mut groups: Vec<Vec<usize>> = fans.into_values().collect();
        groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
        for group in &groups[1..] {
            let new = mesh.positions.len() as u32;
            let p = mesh.positions[v];
            let mut centroid = [0.0f64; 3];
            let mut count = 0.0;
            for &ci in group {
                let (fi, _) = cs[ci];
                for &u in &mesh.indices[fi] {
                    let q = mesh.positions[u as usize];
                    for c in 0..3 {
                        centroid[c] += f64::from(q[c]);
                    }
                    count += 1.0;
                }
            }
            let moved: [f32; 3] = std::array::from_fn(|c| {
                let t = centroid[c] / count;
                (f64::from(p[c]) + 0.01 * (t - f64::from(p[c]))) as f32
            });
            mesh.positions.push(moved);
            if let Some(colors) = mesh.colors.as_mut() {
                let c = colors.get(v).copied().unwrap_or([1.0; 3]);
                colors.push(c);
            }
            for &ci in group {
                let (fi, s) = cs[ci];
                mesh.indices[fi][s] = new;
            }
            made += 1;
        }
    }
    made
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check;

    fn cube() -> Mesh {
        let positions = (0..8)
            .map(|c| [(c & 1) as f32, (c >> 1 & 1) as f32, (c >> 2 & 1) as f32])
            .collect();
        #[rustfmt::skip]
        let indices = vec![
            [0, 2, 1], [1, 2, 3], [4, 5, 6], [5, 7, 6], [0, 1, 4], [1, 5, 4],
            [2, 6, 3], [3, 6, 7], [0, 4, 2], [2, 4, 6], [1, 3, 5], [3, 7, 5],
        ];
        Mesh {
            positions,
            indices,
            colors: Some(vec![[0.5; 3]; 8]),
        }
    }

    #[test]
    fn clean_drops_degenerate_and_duplicate_faces() {
        let mut mesh = cube();
        mesh.indices.push([0, 0, 1]);
        mesh.indices.push([1, 2, 3]); // duplicate, same orientation
        mesh.indices.push([0, 1, 77]);
        let out = clean(&mesh);
        assert_eq!(out.indices.len(), 12);
        assert!(check(&out).is_closed_manifold());
        // An opposite pair (a fin) goes entirely.
        let mut mesh = cube();
        mesh.indices.push([0, 5, 3]);
        mesh.indices.push([0, 3, 5]);
        assert_eq!(clean(&mesh).indices.len(), 12);
    }

    #[test]
    fn repair_fills_holes_with_the_right_winding() {
        let mut mesh = cube();
        mesh.indices.remove(3);
        mesh.indices.remove(2); // the whole top face: a 4-edge hole
        let out = repair(&mesh);
        let topo = check(&out);
        assert!(topo.is_closed_manifold(), "{topo:?}");
        assert!((topo.volume - 1.0).abs() < 1e-9);
        assert_eq!(out.colors.as_ref().map(Vec::len), Some(out.positions.len()));
    }

    #[test]
    fn repair_splits_a_pinched_vertex() {
        // Two tetrahedra touching at the origin.
        let a = [
            [0.0, 0.0, 0.0],
            [1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],
        ];
        let b = [
            [0.0, 0.0, 0.0],
            [0.0, -1.0, 0.0],
            [-1.0, 0.0, 0.0],
            [0.0, 0.0, -1.0],
        ];
        let faces = [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]];
        let mesh = Mesh {
            positions: a.iter().chain(&b).copied().collect(),
            indices: faces
                .iter()
                .chain(&faces.map(|f: [u32; 3]| f.map(|v| v + 4)))
                .copied()
                .collect(),
            colors: None,
        };
        assert_eq!(check(&mesh).non_manifold_vertices, 1);
        let topo = check(&repair(&mesh));
        assert!(topo.is_closed_manifold(), "{topo:?}");
        assert_eq!((topo.components, topo.euler), (2, 4));
    }

    #[test]
    fn repair_removes_a_non_manifold_edge_and_closes_it() {
        // A cube with an extra fin face on edge 0-1 makes that edge non-manifold.
        let mut mesh = cube();
        mesh.positions.push([0.5, -1.0, 0.0]);
        mesh.indices.push([0, 1, 8]);
        assert!(check(&mesh).non_manifold_edges > 0);
        let topo = check(&repair(&mesh));
        assert!(topo.is_closed_manifold(), "{topo:?}");
        assert!((topo.volume - 1.0).abs() < 1e-9, "{topo:?}");
    }
}
