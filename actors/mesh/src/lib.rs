//! orfeas mesh pipeline: pure geometry, no async.
//!
//! A scalar [`Volume`] (occupancy or signed distance) becomes a closed, consistently
//! oriented, welded triangle [`Mesh`] through [`extract`]; [`remove_floaters`] drops small
//! disconnected pieces; [`check`] measures the topology a slicer or viewer cares about;
//! [`to_glb`] and [`to_stl`] serialise the result.
//!
//! World space is Y-up (glTF's convention). Only the STL export converts to the Z-up frame
//! printers expect.

#![warn(missing_docs)]

mod error;
mod extract;
mod floaters;
mod glb;
mod mesh;
mod normals;
mod stl;
mod topology;
mod union_find;
mod volume;

pub use error::MeshError;
pub use extract::extract;
pub use floaters::remove_floaters;
pub use glb::to_glb;
pub use mesh::Mesh;
pub use normals::vertex_normals;
pub use stl::to_stl;
pub use topology::{check, Topology};
pub use volume::{Inside, Volume};
