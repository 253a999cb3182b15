//! Real-world scale and the print frame.

use crate::topology::bbox;
use crate::Mesh;

/// The factor that makes the longest side of `mesh`'s box `size_mm` (1 without a size or
/// for a mesh without extent).
pub(crate) fn scale_for(mesh: &Mesh, size_mm: Option<f32>) -> f64 {
    let Some(size) = size_mm else { return 1.0 };
    let Some((lo, hi)) = bbox(mesh.positions.iter().copied()) else {
        return 1.0;
    };
    let longest = (0..3)
        .map(|i| f64::from(hi[i]) - f64::from(lo[i]))
        .fold(0.0, f64::max);
    if longest > 0.0 && size.is_finite() && size > 0.0 {
        f64::from(size) / longest
    } else {
        1.0
    }
}

/// `mesh` in the printer's frame: world (x, y, z) Y-up becomes (x, −z, y) Z-up (a
/// rotation, so winding stays outward), scaled by `scale`, then moved so the box's bottom
/// centre is the origin: resting on z = 0, centred on x = y = 0.
pub(crate) fn to_print_frame(mesh: &Mesh, scale: f64) -> Mesh {
    let rotated = mesh
        .positions
        .iter()
        .map(|p| [f64::from(p[0]), -f64::from(p[2]), f64::from(p[1])].map(|c| c * scale));
    resting(mesh, rotated.collect(), 2)
}

/// `mesh` in glTF's frame (Y up, axes unchanged), scaled by `scale`, with the box's
/// bottom centre at the origin: standing on y = 0, centred on x = z = 0 — the placement
/// of [`to_print_frame`] in Y-up terms.
pub(crate) fn to_ground_frame(mesh: &Mesh, scale: f64) -> Mesh {
    let scaled = mesh
        .positions
        .iter()
        .map(|p| p.map(|c| f64::from(c) * scale));
    resting(mesh, scaled.collect(), 1)
}

/// `mesh` with `positions`, moved so that their box's bottom (along axis `up`) centre
/// is the origin.
fn resting(mesh: &Mesh, positions: Vec<[f64; 3]>, up: usize) -> Mesh {
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for p in positions.iter().filter(|p| p.iter().all(|c| c.is_finite())) {
        for i in 0..3 {
            lo[i] = lo[i].min(p[i]);
            hi[i] = hi[i].max(p[i]);
        }
    }
    let shift: [f64; 3] = if lo[0].is_finite() {
        std::array::from_fn(|i| {
            if i == up {
                -lo[i]
            } else {
                -0.5 * (lo[i] + hi[i])
            }
        })
    } else {
        [0.0; 3]
    };
    Mesh {
        positions: positions
            .iter()
            .map(|p| std::array::from_fn(|i| (p[i] + shift[i]) as f32))
            .collect(),
        indices: mesh.indices.clone(),
        colors: mesh.colors.clone(),
    }
}

/// `mesh` scaled about the origin, axes unchanged.
pub(crate) fn scaled(mesh: &Mesh, scale: f64) -> Mesh {
    Mesh {
        positions: mesh
            .positions
            .iter()
            .map(|p| p.map(|c| (f64::from(c) * scale) as f32))
            .collect(),
        indices: mesh.indices.clone(),
        colors: mesh.colors.clone(),
    }
}

/// Linear [0, 1] → sRGB-encoded [0, 1] (files other than glTF store display colours).
pub(crate) fn linear_to_srgb(c: f32) -> f32 {
    let c = if c.is_nan() { 0.0 } else { c.clamp(0.0, 1.0) };
    if c <= 0.003_130_8 {
        12.92 * c
    } else {
        1.055 * c.powf(1.0 / 2.4) - 0.055
    }
}

/// sRGB byte of a linear colour channel.
pub(crate) fn srgb_u8(c: f32) -> u8 {
    (linear_to_srgb(c) * 255.0 + 0.5) as u8
}
