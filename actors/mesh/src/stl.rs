//! Binary STL export, placed for printing.

use crate::Mesh;

/// Written into the 80-byte header. Must not start with "solid", which makes some readers
/// take the file for ASCII STL.
const HEADER: &[u8] = b"orfeas binary STL, Z-up";

/// Serialises `mesh` as binary STL in the Z-up frame printers use.
///
/// World (x, y, z) with Y up becomes (x, −z, y), a rotation, so winding and outward
/// normals are kept. The model is then moved to rest on z = 0 and centred on x = y = 0.
/// Units are unchanged (callers scale). Face normals come from the rotated triangle
/// (zero for a degenerate face; slicers recompute them anyway). Faces with an out-of-range
/// index are skipped.
pub fn to_stl(mesh: &Mesh) -> Vec<u8> {
    let n = mesh.positions.len();
    let rotate = |p: [f32; 3]| [p[0], -p[2], p[1]];
    let faces: Vec<[[f32; 3]; 3]> = mesh
        .indices
        .iter()
        .filter(|f| f.iter().all(|&v| (v as usize) < n))
        .take(u32::MAX as usize)
        .map(|f| f.map(|v| rotate(mesh.positions[v as usize])))
        .collect();

    let (lo, hi) =
        crate::topology::bbox(faces.iter().flatten().copied()).unwrap_or(([0.0; 3], [0.0; 3]));
    // Offset in f64 so the lowest vertex lands exactly on z = 0 after rounding back.
    let shift = [
        -0.5 * (f64::from(lo[0]) + f64::from(hi[0])),
        -0.5 * (f64::from(lo[1]) + f64::from(hi[1])),
        -f64::from(lo[2]),
    ];
    let place =
        |p: [f32; 3]| -> [f32; 3] { std::array::from_fn(|i| (f64::from(p[i]) + shift[i]) as f32) };

    let mut out = Vec::with_capacity(84 + 50 * faces.len());
    let mut header = [0u8; 80];
    header[..HEADER.len()].copy_from_slice(HEADER);
    out.extend_from_slice(&header);
    // `take` above keeps the count within u32.
    out.extend_from_slice(&(faces.len() as u32).to_le_bytes());
    for tri in &faces {
        let [a, b, c] = tri.map(place);
        let u = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
        let w = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
        let cr = [
            u[1] * w[2] - u[2] * w[1],
            u[2] * w[0] - u[0] * w[2],
            u[0] * w[1] - u[1] * w[0],
        ];
        let len = (cr[0] * cr[0] + cr[1] * cr[1] + cr[2] * cr[2]).sqrt();
        let normal = if len.is_finite() && len > 0.0 {
            cr.map(|c| c / len)
        } else {
            [0.0; 3]
        };
        for v in [normal, a, b, c] {
            for x in v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out.extend_from_slice(&0u16.to_le_bytes());
    }
    out
}
