//! orfeas mesh pipeline: pure geometry, no async.
//!
//! A scalar [`Volume`] (occupancy or signed distance) becomes a closed, consistently
//! oriented, welded triangle [`Mesh`] through [`extract`] (marching cubes);
//! [`remove_floaters`] drops small disconnected pieces; [`smooth_preserving_features`] removes grid
//! terracing and keeps creases; [`decimate`] reduces the face count with meshoptimizer and repairs what it
//! breaks ([`clean`], [`repair`]); [`check`] measures the topology and [`print_report`] says whether and why not a mesh can be
//! printed. [`process`] runs all of it with [`MeshOptions`] (extracting from a coarser
//! grid when the face target allows); [`project_colours`] and [`project_texture`] colour
//! the result from the input image; [`export`] and [`export_files`] write GLB, STL, OBJ
//! (+ MTL and PNG when textured), PLY or 3MF at a real-world size; [`render_previews`]
//! draws PNG previews; [`read_npy`] loads a volume saved by NumPy.
//!
//! World space is Y-up (glTF's convention). Print formats convert to the Z-up frame
//! printers expect, resting on z = 0.

#![warn(missing_docs)]

mod coarsen;
mod decimate;
mod error;
mod extract;
mod features;
mod floaters;
mod formats;
mod glb;
mod grid;
mod intersect;
mod mesh;
mod normals;
mod npy;
mod pipeline;
mod orient;
mod place;
mod preview;
mod printability;
mod repair;
mod report;
mod smooth;
mod stl;
mod texture;
mod topology;
mod union_find;
mod volume;

pub use decimate::{decimate, Decimated};
pub use error::MeshError;
pub use extract::extract;
pub use floaters::remove_floaters;
pub use formats::{export, export_files, ExportFile, ExportFormat};
pub use glb::{to_glb, to_glb_textured};
pub use mesh::Mesh;
pub use normals::vertex_normals;
pub use npy::read_npy;
pub use pipeline::{process, MeshOptions, Processed};
pub use orient::lay_flat;
pub use preview::render_previews;
pub use printability::{material, Checks, Issue, Severity, MIN_PRINT_SIZE_MM, MIN_WALL_MM, OVERHANG_ANGLE_DEG};
pub use repair::{clean, repair};
pub use report::{print_report, PrintReport, DEFAULT_BUILD_VOLUME_MM};
pub use smooth::{smooth, smooth_preserving_features, DEFAULT_FEATURE_ANGLE_DEG};
pub use stl::to_stl;
pub use texture::{project_colours, project_texture, Image, ImagePlane, Texture};
pub use topology::{check, used_bounds, Topology};
pub use volume::{Inside, Volume};
