//! The error type of this crate, with stable codes for the wire and metric labels.

/// Everything that can go wrong turning a volume into a mesh or a mesh into bytes.
///
/// Every variant is caused by the input, so none of them is retryable as is.
#[derive(thiserror::Error, Debug)]
pub enum MeshError {
    /// The volume's shape, bounds or iso level cannot describe a grid.
    #[error("bad volume: {reason}")]
    BadVolume {
        /// What is wrong, naming the offending value.
        reason: String,
    },
    /// Nothing in the volume is solid, or everything is: there is no surface to extract.
    #[error("empty surface: {solid} of {total} samples are solid")]
    EmptySurface {
        /// Number of samples on the solid side of the iso level.
        solid: usize,
        /// Number of samples in the volume.
        total: usize,
    },
    /// The surface has more vertices or faces than 32-bit indices can address.
    #[error("mesh too large: {what} exceeds the 32-bit index range")]
    TooLarge {
        /// Which count overflowed and by how much, for the log.
        what: String,
    },
    /// A mesh handed to an exporter is unusable (no faces, index out of range, NaN position …).
    #[error("bad mesh: {reason}")]
    BadMesh {
        /// What is wrong, naming the offending value.
        reason: String,
    },
    /// An image to colour or texture a mesh with is unusable.
    #[error("bad image: {reason}")]
    BadImage {
        /// What is wrong, naming the offending value.
        reason: String,
    },
    /// Serialising a valid mesh failed.
    #[error("export failed: {reason}")]
    ExportFailed {
        /// The underlying cause.
        reason: String,
    },
}

impl MeshError {
    /// Stable snake_case code, used on the wire and as a metric label.
    pub fn code(&self) -> &'static str {
        match self {
            MeshError::BadVolume { .. } => "bad_volume",
            MeshError::EmptySurface { .. } => "empty_surface",
            MeshError::TooLarge { .. } => "mesh_too_large",
            MeshError::BadMesh { .. } => "bad_mesh",
            MeshError::BadImage { .. } => "bad_image",
            MeshError::ExportFailed { .. } => "export_failed",
        }
    }
}
