//! The printability report: everything a slicer would complain about, in millimetres.

use crate::grid::FaceGrid;
use crate::intersect::count_on_grid;
use crate::place::{scale_for, to_print_frame};
use crate::printability::{assess_on, positions_and_faces, Checks, Issue, Severity};
use crate::{check, Mesh, MeshOptions};

/// Default build volume: 256 × 256 × 256 mm (a common desktop printer).
pub const DEFAULT_BUILD_VOLUME_MM: [f32; 3] = [256.0, 256.0, 256.0];

/// Above this many faces the self-intersection count is skipped (`None`).
pub const SELF_INTERSECTION_MAX_FACES: usize = 2_000_000;

/// Candidate pairs the broad phase may produce before the count is skipped.
const SELF_INTERSECTION_MAX_PAIRS: u64 = 50_000_000;

/// Whether and why a mesh can be printed, measured in the print frame (Z up, resting on
/// z = 0) at the requested size.
#[derive(Clone, Debug, PartialEq)]
pub struct PrintReport {
    /// Faces in the mesh.
    pub faces: usize,
    /// Distinct positions used by faces.
    pub vertices: usize,
    /// No hole: every edge has two faces (and there is at least one face).
    pub closed: bool,
    /// No edge with more than two faces and no pinched vertex.
    pub two_manifold: bool,
    /// Neighbouring faces traverse their shared edge in opposite directions, and the
    /// enclosed volume is positive (faces point outward).
    pub winding_consistent: bool,
    /// Edges with one face.
    pub boundary_edges: usize,
    /// Edges with more than two faces.
    pub non_manifold_edges: usize,
    /// Vertices whose faces form more than one fan.
    pub non_manifold_vertices: usize,
    /// Connected pieces (through edges).
    pub components: usize,
    /// Euler characteristic V − E + F.
    pub euler: i64,
    /// Total genus Σ (2 − χᵢ)/2 = (2·C − χ)/2 (number of handles), when closed and
    /// 2-manifold; `None` otherwise.
    pub genus: Option<i64>,
    /// Enclosed volume in mm³ (meaningful when closed).
    pub volume_mm3: f64,
    /// Surface area in mm².
    pub area_mm2: f64,
    /// Size of the bounding box (x, y, z) in mm, Z up.
    pub bbox_mm: [f32; 3],
    /// Faces with a repeated vertex or (near) zero area.
    pub degenerate_faces: usize,
    /// Pairs of faces crossing each other; `None` when skipped for size.
    pub self_intersections: Option<usize>,
    /// The build volume the box was compared with, (x, y, z) mm.
    pub build_volume_mm: [f32; 3],
    /// The box fits the build volume (x and y may be swapped by turning the part).
    pub fits_build_volume: bool,
    /// Why the mesh is not printable as is; empty when it is (the messages of the
    /// error-severity `issues`).
    pub problems: Vec<String>,
    /// What a print shop measures beyond mesh health: parts, bed contact, overhangs,
    /// walls.
    pub checks: Checks,
    /// Every finding with a stable code: errors (also in `problems`) and warnings.
    pub issues: Vec<Issue>,
    /// Millimetres per model unit: the scale of the print frame (1 without a size).
    /// Lets a caller turn the report's measures back into model units instead of
    /// running the topology check a second time.
    pub scale: f64,
}

impl PrintReport {
    /// True when nothing in `problems` stands in the way of printing.
    pub fn is_printable(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Measures `mesh` (world units, Y up) for printing at `options.size_mm` (longest side;
/// `None` takes one world unit as one millimetre) in a printer of
/// `options.build_volume_mm`, counting self-intersections up to
/// `options.self_intersection_max_faces` faces.
pub fn print_report(mesh: &Mesh, options: &MeshOptions) -> PrintReport {
    let build_volume_mm = options.build_volume_mm;
    let scale = scale_for(mesh, options.size_mm);
    let placed = to_print_frame(mesh, scale);
    let topo = check(&placed);
    let closed = topo.faces > 0 && topo.boundary_edges == 0;
    let two_manifold = topo.non_manifold_edges == 0 && topo.non_manifold_vertices == 0;
    let winding_consistent = topo.inconsistent_edges == 0 && topo.volume > 0.0;
    let genus = (closed && two_manifold && topo.inconsistent_edges == 0)
        .then(|| (2 * topo.components as i64 - topo.euler) / 2);
    let bbox_mm: [f32; 3] = std::array::from_fn(|i| topo.bbox_max[i] - topo.bbox_min[i]);
    let fits = |a: f32, b: f32| a <= b;
    let [bx, by, bz] = build_volume_mm;
    let fits_build_volume = fits(bbox_mm[2], bz)
        && ((fits(bbox_mm[0], bx) && fits(bbox_mm[1], by))
            || (fits(bbox_mm[0], by) && fits(bbox_mm[1], bx)));
    // One face grid for the self-intersection count and the wall probe.
    let (p, faces) = positions_and_faces(&placed);
    let grid = FaceGrid::build(&p, &faces);
    let self_intersections = if faces.len() > options.self_intersection_max_faces {
        None
    } else if faces.len() < 2 {
        Some(0)
    } else {
        grid.as_ref().and_then(|g| count_on_grid(&p, &faces, g, SELF_INTERSECTION_MAX_PAIRS))
    };

    let mut issues: Vec<Issue> = Vec::new();
    let mut error = |code: &'static str, message: String| issues.push(Issue { code, severity: Severity::Error, message });
    if topo.faces == 0 {
        error("no_faces", "the mesh has no faces".to_string());
    }
    if topo.boundary_edges > 0 {
        error("not_closed", format!(
            "not closed: {} boundary edges (holes)",
            topo.boundary_edges
        ));
    }
    if topo.non_manifold_edges > 0 {
        error("non_manifold_edges", format!(
            "not 2-manifold: {} edges shared by more than two faces",
            topo.non_manifold_edges
        ));
    }
    if topo.non_manifold_vertices > 0 {
        error("pinched_vertices", format!(
            "not 2-manifold: {} pinched vertices (more than one fan of faces)",
            topo.non_manifold_vertices
        ));
    }
    if topo.inconsistent_edges > 0 {
        error("inconsistent_winding", format!(
            "inconsistent winding: {} edges traversed the same way by both faces",
            topo.inconsistent_edges
        ));
    }
    if topo.faces > 0 && topo.inconsistent_edges == 0 && topo.volume <= 0.0 {
        error("inward_faces", format!(
            "faces point inward: enclosed volume {:.3} mm³",
            topo.volume
        ));
    }
    if topo.degenerate_faces > 0 {
        error("degenerate_faces", format!(
            "{} degenerate faces (repeated vertex or zero area)",
            topo.degenerate_faces
        ));
    }
    if let Some(k) = self_intersections.filter(|&k| k > 0) {
        error("self_intersections", format!("{k} pairs of faces intersect each other"));
    }
    if !fits_build_volume {
        error("exceeds_build_volume", format!(
            "size {:.1} × {:.1} × {:.1} mm exceeds the build volume {} × {} × {} mm",
            bbox_mm[0], bbox_mm[1], bbox_mm[2], bx, by, bz
        ));
    }
    let longest = f64::from(bbox_mm.iter().copied().fold(0.0f32, f32::max));
    let (checks, more) = assess_on(&placed, &p, &faces, grid.as_ref(), topo.volume, topo.area, longest);
    issues.extend(more);
    let problems = issues.iter().filter(|i| i.severity == Severity::Error).map(|i| i.message.clone()).collect();
    PrintReport {
        faces: topo.faces,
        vertices: topo.vertices,
        closed,
        two_manifold,
        winding_consistent,
        boundary_edges: topo.boundary_edges,
        non_manifold_edges: topo.non_manifold_edges,
        non_manifold_vertices: topo.non_manifold_vertices,
        components: topo.components,
        euler: topo.euler,
        genus,
        volume_mm3: topo.volume,
        area_mm2: topo.area,
        bbox_mm,
        degenerate_faces: topo.degenerate_faces,
        self_intersections,
        build_volume_mm,
        fits_build_volume,
        problems,
        checks,
        issues,
        scale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{check, process, used_bounds, Inside, Volume};

    /// The node derives a job's model-unit statistics from the report (see `scale`);
    /// they must be what a second topology check of the mesh would say.
    #[test]
    fn report_measures_scale_back_to_what_a_check_of_the_mesh_says() {
        let n = 24;
        let c = |i: usize| -1.0 + 2.0 * i as f32 / (n - 1) as f32;
        let mut data = Vec::new();
        for k in 0..n {
            for j in 0..n {
                for i in 0..n {
                    // An ellipsoid, so the axes of the print frame's rotation differ.
                    data.push(0.7 - ((c(i) / 0.9).powi(2) + (c(j) / 0.6).powi(2) + (c(k) / 0.4).powi(2)).sqrt());
                }
            }
        }
        let volume = Volume { data: &data, dims: [n; 3], bounds_min: [-1.0; 3], bounds_max: [1.0; 3], iso: 0.0, inside: Inside::Above };
        for size_mm in [None, Some(80.0)] {
            let options = MeshOptions { size_mm, ..MeshOptions::default() };
            let mesh = process(&volume, &options).unwrap().mesh;
            let r = print_report(&mesh, &options);
            let t = check(&mesh);
            assert_eq!((r.faces, r.vertices, r.components), (t.faces, t.vertices, t.components));
            let back = r.volume_mm3 / r.scale.powi(3);
            assert!((back - t.volume).abs() <= 1e-6 * t.volume.abs(), "{size_mm:?}: {back} vs {}", t.volume);
            assert_eq!(used_bounds(&mesh), Some((t.bbox_min, t.bbox_max)));
            if size_mm.is_some() {
                assert!((f64::from(r.bbox_mm.iter().copied().fold(0.0, f32::max)) - 80.0).abs() < 1e-3, "{:?}", r.bbox_mm);
                assert!(r.scale > 1.0, "{}", r.scale);
            } else {
                assert_eq!(r.scale, 1.0);
            }
        }
    }
}
