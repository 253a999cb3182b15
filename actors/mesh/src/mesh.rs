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

