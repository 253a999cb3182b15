//! The indexed triangle mesh every step of the pipeline passes along.

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
