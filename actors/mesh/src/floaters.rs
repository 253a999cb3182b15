//! Dropping small disconnected pieces ("floaters") that volume networks leave around the
//! main shape.

use crate::union_find::UnionFind;
use crate::Mesh;

/// Drops connected components whose face count is below `min_fraction` times the face
/// count of the largest component, and the vertices only they used.
///
/// Components are connected through shared vertex indices, so weld first if the mesh is
/// a triangle soup ([`extract`](crate::extract) output already is welded). Faces with an
/// out-of-range index are dropped. `min_fraction <= 0` (or NaN) keeps every component
/// and only drops unreferenced vertices. Colours follow their vertices (a colour list
/// shorter than the positions is padded with white).
pub fn remove_floaters(mesh: &Mesh, min_fraction: f32) -> Mesh {
    let n = mesh.positions.len();
    let faces = mesh.faces_in_range();
    let mut sets = UnionFind::new(n);
    for f in &faces {
        sets.union(f[0], f[1]);
        sets.union(f[1], f[2]);
    }
    // Faces per component, indexed by the component's root vertex.
    let mut count = vec![0u32; n];
    let roots: Vec<u32> = faces.iter().map(|f| sets.find(f[0])).collect();
    for &r in &roots {
        count[r as usize] += 1;
    }
    let largest = count.iter().copied().max().unwrap_or(0);
    let threshold = f64::from(min_fraction) * f64::from(largest);
    let keep = |r: u32| threshold.is_nan() || f64::from(count[r as usize]) >= threshold;

    let kept: Vec<[u32; 3]> = faces
        .iter()
        .zip(&roots)
        .filter(|&(_, &r)| keep(r))
        .map(|(f, _)| *f)
        .collect();
    crate::repair::compact(mesh, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tetra(offset: f32, scale: f32) -> (Vec<[f32; 3]>, Vec<[u32; 3]>) {
        let p = vec![
            [offset, 0.0, 0.0],
            [offset + scale, 0.0, 0.0],
            [offset, scale, 0.0],
            [offset, 0.0, scale],
        ];
        (p, vec![[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    }

    #[test]
    fn remove_floaters_keeps_large_components_and_compacts() {
        let mut mesh = Mesh::default();
        for (k, offset) in [0.0f32, 5.0].into_iter().enumerate() {
            let (p, f) = tetra(offset, 1.0);
            let base = (k * 4) as u32;
            mesh.positions.extend(p);
            mesh.indices.extend(f.iter().map(|t| t.map(|v| v + base)));
        }
        // A lone triangle: 1 face against 4.
        mesh.positions
            .extend([[9.0, 0.0, 0.0], [9.1, 0.0, 0.0], [9.0, 0.1, 0.0]]);
        mesh.indices.push([8, 9, 10]);
        mesh.positions.push([100.0, 0.0, 0.0]); // unreferenced
        mesh.colors = Some(vec![[0.5; 3]; mesh.positions.len()]);

        let kept = remove_floaters(&mesh, 0.5);
        assert_eq!(kept.indices.len(), 8);
        assert_eq!(kept.positions.len(), 8);
        assert_eq!(kept.colors.as_ref().map(Vec::len), Some(8));

        let all = remove_floaters(&mesh, 0.0);
        assert_eq!(all.indices.len(), 9);
        assert_eq!(all.positions.len(), 11, "only the unreferenced vertex goes");
        assert_eq!(remove_floaters(&mesh, f32::NAN).indices.len(), 9);
    }

    #[test]
    fn remove_floaters_handles_empty_and_bad_indices() {
        assert!(remove_floaters(&Mesh::default(), 0.1).indices.is_empty());
        let mesh = Mesh {
            positions: vec![[0.0; 3]; 3],
            indices: vec![[0, 1, 7]],
            colors: None,
        };
        assert!(remove_floaters(&mesh, 0.1).indices.is_empty());
    }
}
