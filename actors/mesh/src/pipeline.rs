//! The one entry point the postprocess actor and the CLI call: volume → printable mesh.

use std::time::{Duration, Instant};

use crate::coarsen::{halve, OwnedVolume};
use crate::report::{DEFAULT_BUILD_VOLUME_MM, SELF_INTERSECTION_MAX_FACES};
use crate::{
    decimate, extract, print_report, remove_floaters, repair, smooth, smooth_preserving_features,
    Mesh, MeshError, PrintReport, Volume, DEFAULT_FEATURE_ANGLE_DEG,
};

/// A coarser grid is used when its mesh, floaters removed, still has at least this many
/// times the target faces: enough for the quadric decimation to place its vertices as
/// it would on the full-resolution mesh (md/benchmarks.md measures the difference).
const COARSE_FACES_PER_TARGET: usize = 2;

/// Coarser grids are tried down to this many samples along the shortest axis.
///
/// Why this many: the face count alone would let a small target pick a very coarse
/// grid, where the thin parts of a typical model (a mug's handle, a figure's legs, a
/// few voxels thick at 96³) would break or vanish, and floater removal would then drop
/// the pieces. Volumes from models at 192³ and up are coarsened; smaller ones are not.
const MIN_COARSE_SAMPLES: usize = 96;

/// Face targets tried, as multiples of the requested one, when decimation left faces
/// crossing each other.
const SELF_INTERSECTION_RETRY_GROWTH: [f64; 2] = [1.5, 2.5];

/// What [`process`] does after extraction.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshOptions {
    /// Decimate to about this many faces (`None`: keep the extraction's resolution).
    pub target_faces: Option<usize>,
    /// Taubin smoothing against grid terracing.
    pub smooth: bool,
    /// λ/μ iteration pairs when smoothing.
    pub smooth_iterations: usize,
    /// Creases turning by more than this many degrees are kept sharp while smoothing
    /// ([`smooth_preserving_features`]); 180 or more smooths everything alike (plain
    /// Taubin, which rounds edges).
    pub feature_angle_deg: f32,
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
    /// With a face target, extract from the volume halved in resolution (once or more,
    /// tent-filtered, never below 96 samples per axis) when that still gives at least
    /// twice the target faces. Much faster; detail finer than two grid steps of the full
    /// volume is lost, which a mesh decimated to the target could not show either.
    pub coarsen: bool,
}

impl Default for MeshOptions {
    /// No decimation, 10 feature-preserving smoothing pairs (65°), 2 % floaters, no size, a 256 mm cube printer,
    /// coarsening allowed, a 5 % error bound (the face target is what callers ask for; 5 % of the extent only
    /// binds for absurdly small targets).
    fn default() -> Self {
        Self {
            target_faces: None,
            smooth: true,
            smooth_iterations: 10,
            feature_angle_deg: DEFAULT_FEATURE_ANGLE_DEG,
            floater_fraction: 0.02,
            size_mm: None,
            build_volume_mm: DEFAULT_BUILD_VOLUME_MM,
            decimate_max_error: 0.05,
            self_intersection_max_faces: SELF_INTERSECTION_MAX_FACES,
            coarsen: true,
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
    /// What the pipeline did beyond the plain steps (coarser extraction, repairs,
    /// decimation retries).
    pub notes: Vec<String>,
    /// Wall time per step, in order: `extract` (with coarsening and floater removal),
    /// `smooth`, `decimate`, `report` (with any final repair); skipped steps are absent.
    pub stages: Vec<(&'static str, Duration)>,
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
    let mut stages = Vec::new();
    let mut lap = Instant::now();
    let mut stage = |name: &'static str| {
        stages.push((name, lap.elapsed()));
        lap = Instant::now();
    };
    // Extraction output is welded, closed, outward and free of degenerate faces by
    // construction (see `extract`), so a cleanup pass here would only cost time.
    let mut mesh = match options.target_faces.filter(|_| options.coarsen) {
        Some(target) => extract_for_target(volume, target, options, &mut notes)?,
        None => remove_floaters(&extract(volume)?, options.floater_fraction),
    };
    stage("extract");
    if options.smooth {
        if options.feature_angle_deg < 180.0 {
            smooth_preserving_features(&mut mesh, options.smooth_iterations, options.feature_angle_deg);
        } else {
            smooth(&mut mesh, options.smooth_iterations);
        }
        stage("smooth");
    }
    // The undecimated mesh, kept for a less aggressive retry when decimation makes faces
    // cross (see below).
    let mut undecimated = None;
    if let Some(target) = options.target_faces {
        let decimated = decimate(&mesh, target, options.decimate_max_error);
        notes.extend(decimated.notes);
        undecimated = Some(std::mem::replace(&mut mesh, decimated.mesh));
        stage("decimate");
    }
    let mut report = print_report(&mesh, options);
    // Collapsing edges can push one sheet of a thin part through the other; the check
    // after each attempt in `decimate` sees topology only. When the report counts
    // crossing faces, decimate again to larger targets and keep the first result without
    // any; failing that the crossings stay, listed in the report's problems.
    if let (Some(target), Some(source)) = (options.target_faces, &undecimated) {
        for growth in SELF_INTERSECTION_RETRY_GROWTH {
            let Some(crossings) = report.self_intersections.filter(|&k| k > 0) else { break };
            let bigger = (target as f64 * growth) as usize;
            let retry = decimate(source, bigger, options.decimate_max_error);
            let second = print_report(&retry.mesh, options);
            notes.push(format!(
                "decimation left {crossings} pairs of crossing faces; to {bigger} faces: {:?}",
                second.self_intersections
            ));
            if second.self_intersections.is_some_and(|k| k < crossings)
                && second.problems.len() <= report.problems.len()
            {
                notes.extend(retry.notes);
                mesh = retry.mesh;
                report = second;
            }
        }
    }
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
    stage("report");
    Ok(Processed {
        mesh,
        report,
        notes,
        stages,
    })
}

/// Extracts (and drops floaters) from the coarsest halving of `volume` whose mesh has at
/// least [`COARSE_FACES_PER_TARGET`] × `target` faces, or from `volume` itself.
fn extract_for_target(
    volume: &Volume,
    target: usize,
    options: &MeshOptions,
    notes: &mut Vec<String>,
) -> Result<Mesh, MeshError> {
    volume.validate()?;
    let mut pyramid: Vec<OwnedVolume> = Vec::new();
    loop {
        let finest = pyramid.last().map_or(*volume, OwnedVolume::view);
        match halve(&finest) {
            Some(h) if h.dims.iter().all(|&n| n >= MIN_COARSE_SAMPLES) => pyramid.push(h),
            _ => break,
        }
    }
    let wanted = target.saturating_mul(COARSE_FACES_PER_TARGET);
    for (level, coarse) in pyramid.iter().enumerate().rev() {
        let mesh = match extract(&coarse.view()) {
            Ok(mesh) => remove_floaters(&mesh, options.floater_fraction),
            // Filtering can erase a surface only a few samples thick: try finer.
            Err(MeshError::EmptySurface { .. }) => continue,
            Err(e) => return Err(e),
        };
        if mesh.indices.len() >= wanted {
            let [z, y, x] = coarse.dims;
            notes.push(format!(
                "extracted from the volume at {x}×{y}×{z} ({}× coarser; {} faces for a \
                 target of {target})",
                1 << (level + 1),
                mesh.indices.len()
            ));
            return Ok(mesh);
        }
    }
    Ok(remove_floaters(&extract(volume)?, options.floater_fraction))
}
