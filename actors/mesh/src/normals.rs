//! Smooth vertex normals for viewers (glTF NORMAL).

use crate::Mesh;

/// Fallback for vertices with no usable face around them: viewers and the glTF validator
/// reject zero-length or NaN normals.
const FALLBACK: [f32; 3] = [0.0, 0.0, 1.0];

/// Area-weighted vertex normals of unit length, one per position.
///
/// Summing unnormalised face normals weights each face by its area, so slivers barely
/// count. Vertices without a non-degenerate incident face get `[0, 0, 1]`; faces with an
/// out-of-range index are skipped.
pub fn vertex_normals(mesh: &Mesh) -> Vec<[f32; 3]> {
    let n = mesh.positions.len();
    // Accumulate in f64: a vertex of a fine mesh sums many tiny cross products.
    let mut acc = vec![[0.0f64; 3]; n];
    for f in &mesh.indices {
        if f.iter().any(|&v| v as usize >= n) {
            continue;
        }
        let [a, b, c] = f.map(|v| mesh.positions[v as usize].map(f64::from));
        let cr = crate::mesh::face_cross(a, b, c);
        for &v in f {
            let s = &mut acc[v as usize];
            s[0] += cr[0];
            s[1] += cr[1];
            s[2] += cr[2];
        }
    }
    acc.into_iter()
        .map(|s| {
            let len = (s[0] * s[0] + s[1] * s[1] + s[2] * s[2]).sqrt();
            if len.is_finite() && len > 0.0 {
                // Normalised in f64, so the f32 result is unit to within f32 rounding.
                return s.map(|c| (c / len) as f32);
            }
            FALLBACK
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vertex_normals_are_unit_and_fall_back() {
        let mesh = Mesh {
            positions: vec![
                [0.0, 0.0, 0.0],
                [1.0, 0.0, 0.0],
                [0.0, 1.0, 0.0],
                [5.0, 5.0, 5.0], // unreferenced
                [1.0, 1.0, 1.0], // only in a degenerate face
            ],
            indices: vec![[0, 1, 2], [4, 4, 4], [0, 1, 9]],
            colors: None,
        };
        let n = vertex_normals(&mesh);
        assert_eq!(n.len(), 5);
        for v in &n[..3] {
            assert!((v[2] - 1.0).abs() < 1e-6 && v[0].abs() < 1e-6 && v[1].abs() < 1e-6);
        }
        assert_eq!(n[3], FALLBACK);
        assert_eq!(n[4], FALLBACK);
    }
}
