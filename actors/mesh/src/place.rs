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
    let rotated: Vec<[f64; 3]> = mesh
        .positions
        .iter()
        .map(|p| [f64::from(p[0]), -f64::from(p[2]), f64::from(p[1])].map(|c| c * scale))
        .collect();
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for p in rotated.iter().filter(|p| p.iter().all(|c| c.is_finite())) {
        for i in 0..3 {
            lo[i] = lo[i].min(p[i]);
            hi[i] = hi[i].max(p[i]);
        }
    }
    let shift = if lo[0].is_finite() {
        [-0.5 * (lo[0] + hi[0]), -0.5 * (lo[1] + hi[1]), -lo[2]]
    } else {
        [0.0; 3]
    };
    Mesh {
        positions: rotated
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
