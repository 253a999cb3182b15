//! Shaded PNG previews rendered on the CPU: an orthographic z-buffer rasteriser with
//! Gouraud-interpolated Lambert + ambient shading.

use crate::place::linear_to_srgb;
use crate::topology::bbox;
use crate::{vertex_normals, Mesh};

/// Linear colour of meshes without vertex colours: a light neutral grey.
const DEFAULT_COLOR: [f32; 3] = [0.55, 0.55, 0.58];
/// Background, sRGB.
const BACKGROUND: [u8; 3] = [235, 236, 240];
const AMBIENT: f32 = 0.3;
/// Fraction of the image the model's projected box may fill.
const FILL: f32 = 0.9;

/// A camera: screen right, screen up and toward-the-viewer axes in world space (Y up),
/// right-handed (`right × up = toward`).
struct View {
    name: &'static str,
    right: [f32; 3],
    up: [f32; 3],
    toward: [f32; 3],
}

const VIEWS: [View; 4] = [
    View {
        name: "front",
        right: [1.0, 0.0, 0.0],
        up: [0.0, 1.0, 0.0],
        toward: [0.0, 0.0, 1.0],
    },
    View {
        name: "back",
        right: [-1.0, 0.0, 0.0],
        up: [0.0, 1.0, 0.0],
        toward: [0.0, 0.0, -1.0],
    },
    View {
        name: "left",
        right: [0.0, 0.0, 1.0],
        up: [0.0, 1.0, 0.0],
        toward: [-1.0, 0.0, 0.0],
    },
    View {
        name: "top",
        right: [1.0, 0.0, 0.0],
        up: [0.0, 0.0, -1.0],
        toward: [0.0, 1.0, 0.0],
    },
];

/// Renders `mesh` (world frame, Y up) from the front (+z), back, left (−x) and top (+y)
/// as `size × size` RGB PNGs, returned as `(view name, png bytes)` in that order.
///
/// Orthographic, each view fitted to the model's box; vertex colours (linear) when
/// present, grey otherwise; a key light from the upper left of the camera plus ambient.
/// Back faces are culled, so an open or inside-out mesh shows its holes. The views render
/// in parallel on scoped threads. An empty mesh gives background-only images.
pub fn render_previews(mesh: &Mesh, size: u32) -> Vec<(String, Vec<u8>)> {
    let size = size.clamp(1, 8192);
    let normals = vertex_normals(mesh);
    std::thread::scope(|s| {
        let handles: Vec<_> = VIEWS
            .iter()
            .map(|view| s.spawn(|| (view.name.to_string(), render(mesh, &normals, view, size))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| (String::new(), Vec::new())))
            .collect()
    })
}

fn dot(a: [f32; 3], b: [f32; 3]) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn render(mesh: &Mesh, normals: &[[f32; 3]], view: &View, size: u32) -> Vec<u8> {
    let w = size as usize;
    let mut rgb: Vec<u8> = BACKGROUND.iter().copied().cycle().take(w * w * 3).collect();
    let mut depth = vec![f32::NEG_INFINITY; w * w];
    let n = mesh.positions.len();
    if let Some((lo, hi)) = bbox(mesh.positions.iter().copied()) {
        // Fit the projected box.
        let corners = (0..8).map(|c| {
            [
                if c & 1 == 0 { lo[0] } else { hi[0] },
                if c & 2 == 0 { lo[1] } else { hi[1] },
                if c & 4 == 0 { lo[2] } else { hi[2] },
            ]
        });
        let (mut x0, mut x1, mut y0, mut y1) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
        for c in corners {
            let (x, y) = (dot(c, view.right), dot(c, view.up));
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        let extent = (x1 - x0).max(y1 - y0).max(1e-20);
        let scale = FILL * size as f32 / extent;
        let (cx, cy) = (0.5 * (x0 + x1), 0.5 * (y0 + y1));
        let half = 0.5 * size as f32;

        // Key light: from the camera, raised and from the left.
        let l: [f32; 3] =
            std::array::from_fn(|i| view.toward[i] + 0.6 * view.up[i] - 0.4 * view.right[i]);
        let len = dot(l, l).sqrt();
        let l = l.map(|c| c / len);

        // Per vertex: screen x, screen y (down), depth (toward the viewer), colour.
        let screen: Vec<[f32; 3]> = mesh
            .positions
            .iter()
            .map(|&p| {
                [
                    half + (dot(p, view.right) - cx) * scale,
                    half - (dot(p, view.up) - cy) * scale,
                    dot(p, view.toward),
                ]
            })
            .collect();
        let shade: Vec<[f32; 3]> = (0..n)
            .map(|v| {
                let base = mesh
                    .colors
                    .as_ref()
                    .and_then(|c| c.get(v))
                    .copied()
                    .unwrap_or(DEFAULT_COLOR);
                let k = AMBIENT + (1.0 - AMBIENT) * dot(normals[v], l).max(0.0);
                base.map(|c| (if c.is_nan() { 0.0 } else { c.clamp(0.0, 1.0) }) * k)
            })
            .collect();

        for f in &mesh.indices {
            if f.iter().any(|&v| v as usize >= n) {
                continue;
            }
            let [a, b, c] = f.map(|v| screen[v as usize]);
            // Signed area in y-down screen space: a face toward the viewer (counter-
            // clockwise with y up) has negative area here.
            let area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]);
            if !(area < 0.0) {
                continue; // back face, degenerate or NaN
            }
            let xmin = a[0].min(b[0]).min(c[0]).floor().max(0.0) as usize;
            let ymin = a[1].min(b[1]).min(c[1]).floor().max(0.0) as usize;
            let xmax = (a[0].max(b[0]).max(c[0]).ceil() as usize).min(w);
            let ymax = (a[1].max(b[1]).max(c[1]).ceil() as usize).min(w);
            if xmin >= xmax || ymin >= ymax {
                continue;
            }
            let inv = 1.0 / area;
            let [ca, cb, cc] = f.map(|v| shade[v as usize]);
            for py in ymin..ymax {
                let y = py as f32 + 0.5;
                for px in xmin..xmax {
                    let x = px as f32 + 0.5;
                    // Barycentric weights (all ≥ 0 inside, since area < 0 flips signs).
                    let wa = ((b[0] - x) * (c[1] - y) - (b[1] - y) * (c[0] - x)) * inv;
                    let wb = ((c[0] - x) * (a[1] - y) - (c[1] - y) * (a[0] - x)) * inv;
                    let wc = 1.0 - wa - wb;
                    if wa < 0.0 || wb < 0.0 || wc < 0.0 {
                        continue;
                    }
                    let z = wa * a[2] + wb * b[2] + wc * c[2];
                    let i = py * w + px;
                    if z <= depth[i] {
                        continue;
                    }
                    depth[i] = z;
                    for ch in 0..3 {
                        let lin = wa * ca[ch] + wb * cb[ch] + wc * cc[ch];
                        rgb[3 * i + ch] = (linear_to_srgb(lin) * 255.0 + 0.5) as u8;
                    }
                }
            }
        }
    }
    crate::texture::encode_rgb(&rgb, size, size)
}
