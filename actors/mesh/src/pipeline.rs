//! The one entry point the postprocess actor and the CLI call: volume → printable mesh.

use crate::report::{DEFAULT_BUILD_VOLUME_MM, SELF_INTERSECTION_MAX_FACES};
use crate::{
    decimate, extract, print_report, remove_floaters, repair, smooth, Mesh, MeshError, PrintReport,
    Volume,
};

/// What [`process`] does after extraction.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshOptions {
    /// Decimate to about this many faces (`None`: keep the extraction's resolution).
    pub target_faces: Option<usize>,
    /// Taubin smoothing against grid terracing.
    pub smooth: bool,
    /// λ/μ iteration pairs when smoothing.
    pub smooth_iterations: usize,
    /// Drop components with fewer faces than this fraction of the largest one.
    pub floater_fraction: f32,
    /// Longest side in millimetres for the report (and for exports); `None` takes one
    /// world unit as one millimetre.
    pub size_mm: Option<f32>,
    /// Printer build volume (x, y, z) in millimetres, Z up.
    pub build_volume_mm: [f32; 3],
    /// meshoptimizer's error bound, relative to the mesh extent: decimation stops above
    /// `target_faces` rather than exceed it.
    pub decimate_max_error: f32,
    /// Above this many faces the report skips counting self-intersections.
    pub self_intersection_max_faces: usize,
}

impl Default for MeshOptions {
    /// No decimation, 5 smoothing pairs, 2 % floaters, no size, a 256 mm cube printer,
    /// a 5 % error bound (the face target is what callers ask for; 5 % of the extent only
    /// binds for absurdly small targets).
    fn default() -> Self {
        Self {
            target_faces: None,
            smooth: true,
            smooth_iterations: 5,
            floater_fraction: 0.02,
            size_mm: None,
            build_volume_mm: DEFAULT_BUILD_VOLUME_MM,
            decimate_max_error: 0.05,
            self_intersection_max_faces: SELF_INTERSECTION_MAX_FACES,
        }
    }
}

/// The output of [`process`].
#[derive(Clone, Debug)]
pub struct Processed {
    /// The mesh in world units, Y up, without colours (the caller projects them).
    pub mesh: Mesh,
    /// Its printability at `options.size_mm`.
    pub report: PrintReport,
    /// What the pipeline had to do beyond the plan (repairs, decimation retries).
    pub notes: Vec<String>,
}

/// Extracts, removes floaters, smooths, decimates (validating and repairing after
/// meshoptimizer) and measures `volume`.
///
/// The result is closed and 2-manifold whenever the report says so, which the steps
/// guarantee in every case we know of: extraction is closed by construction, smoothing
/// only moves vertices, decimation falls back to less aggressive targets and finally to
/// no decimation. If the final check still fails, a last repair runs and the report's
/// `problems` say what remains.
///
/// Errors: those of [`extract`] (`bad_volume`, `empty_surface`, `mesh_too_large`).
pub fn process(volume: &Volume, options: &MeshOptions) -> Result<Processed, MeshError> {
    let mut notes = Vec::new();
    // Extraction output is welded, closed, outward and free of degenerate faces by
    // construction (see `extract`), so a cleanup pass here would only cost time.
    let extracted = extract(volume)?;
    let mut mesh = remove_floaters(&extracted, options.floater_fraction);
    if options.smooth {
        smooth(&mut mesh, options.smooth_iterations);
    }
    if let Some(target) = options.target_faces {
        let decimated = decimate(&mesh, target, options.decimate_max_error);
        notes.extend(decimated.notes);
        mesh = decimated.mesh;
    }
    let mut report = print_report(&mesh, options);
    if !(report.closed && report.two_manifold && report.winding_consistent)
        || report.degenerate_faces > 0
    {
        let repaired = repair(&mesh);
        let second = print_report(&repaired, options);
        notes.push(format!(
            "final check found {:?}; after repair: {:?}",
            report.problems, second.problems
        ));
        if second.problems.len() <= report.problems.len() {
            mesh = repaired;
            report = second;
        }
    }
    Ok(Processed {
        mesh,
        report,
        notes,
    })
}
