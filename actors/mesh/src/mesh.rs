//! The indexed triangle mesh every step of the pipeline passes along.

use crate::error::MeshError;

/// An indexed triangle mesh in world space (Y-up, same units as the volume's bounds).
#[derive(Clone, Debug, Default)]
pub struct Mesh {
    /// Vertex positions.
    pub positions: Vec<[f32; 3]>,
    /// Triangles as indices into `positions`, counter-clockwise seen from outside, so the
    /// right-hand normal points from solid to empty.
    pub indices: Vec<[u32; 3]>,
    /// Optional linear RGB colour in [0, 1], one per vertex.
    pub colors: Option<Vec<[f32; 3]>>,
}

impl Mesh {
    /// The faces whose three indices all name a vertex (others are skipped
    /// by every step that cannot report them).
    pub(crate) fn faces_in_range(&self) -> Vec<[u32; 3]> {
        let n = self.positions.len();
        self.indices
            .iter()
            .copied()
            .filter(|f| f.iter().all(|&v| (v as usize) < n))
            .collect()
    }
}

/// (b − a) × (c − a): twice the area, along the face normal of a
/// counter-clockwise triangle.
pub(crate) fn face_cross(a: [f64; 3], b: [f64; 3], c: [f64; 3]) -> [f64; 3] {
    let u = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    let w = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
    [
        u[1] * w[2] - u[2] * w[1],
        u[2] * w[0] - u[0] * w[2],
        u[0] * w[1] - u[1] * w[0],
    ]
}

/// Rejects what no exporter can write: no faces, indices past the vertices,
/// non-finite positions, a colour count that differs from the vertex count.
pub(crate) fn validate(mesh: &Mesh) -> Result<(), MeshError> {
    let bad = |reason: String| Err(MeshError::BadMesh { reason });
    if mesh.indices.is_empty() {
        return bad("mesh has no faces".into());
    }
    let n = mesh.positions.len();
    if let Some((i, f)) = mesh
        .indices
        .iter()
        .enumerate()
        .find(|(_, f)| f.iter().any(|&v| v as usize >= n))
    {
        return bad(format!("face {i} {f:?} indexes past {n} vertices"));
    }
    if let Some((i, p)) = mesh
        .positions
        .iter()
        .enumerate()
        .find(|(_, p)| p.iter().any(|c| !c.is_finite()))
    {
        return bad(format!("position {i} {p:?} is not finite"));
    }
    if let Some(c) = &mesh.colors {
        if c.len() != n {
            return bad(format!("{} colours for {n} vertices", c.len()));
        }
    }
    Ok(())
}
