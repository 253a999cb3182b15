//! Shaded PNG previews rendered on the CPU: an orthographic z-buffer rasteriser with
//! Gouraud-interpolated Lambert + ambient shading.

use std::sync::OnceLock;

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
    let mut rgb: Vec<u8> = BACKGROUND.repeat(w * w);
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
        let srgb = SrgbTable::get();
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
            let plane = Plane::new(a, b, c, area);
            let [ca, cb, cc] = f.map(|v| shade[v as usize]);
            // Depth and colour as affine functions of the two weights
            // (wc = 1 − wa − wb folded in): two multiply-adds per value.
            let z = [c[2], a[2] - c[2], b[2] - c[2]];
            let lin: [[f32; 3]; 3] = std::array::from_fn(|ch| [cc[ch], ca[ch] - cc[ch], cb[ch] - cc[ch]]);
            for py in ymin..ymax {
                let y = py as f32 + 0.5;
                let Some((start, end)) = plane.clip_row(y, xmin, xmax) else { continue };
                let depth_row = &mut depth[py * w..(py + 1) * w];
                let rgb_row = &mut rgb[3 * py * w..3 * (py + 1) * w];
                for px in start..end {
                    // Barycentric weights (all ≥ 0 inside, since area < 0 flips signs).
                    let (wa, wb) = plane.weights(px as f32 + 0.5, y);
                    if wa < 0.0 || wb < 0.0 || wa + wb > 1.0 {
                        continue;
                    }
                    let depth_here = z[0] + wa * z[1] + wb * z[2];
                    if depth_here <= depth_row[px] {
                        continue;
                    }
                    depth_row[px] = depth_here;
                    for (ch, [k, ma, mb]) in lin.iter().enumerate() {
                        rgb_row[3 * px + ch] = srgb.byte(k + wa * ma + wb * mb);
                    }
                }
            }
        }
    }
    // Previews are flat background and smooth shading: the fastest deflate
    // with the Up filter packs them as tightly as `Fast` does (68.0 kB vs
    // 67.4 kB for a 512² view) in under half the time.
    crate::texture::encode_rgb(&rgb, size, size, png::Compression::Fastest)
}

/// The barycentric weights of a screen triangle as affine functions of the
/// pixel centre, so the inner loop is two multiply-adds per weight instead
/// of the full cross products. Coordinates are taken relative to the first
/// vertex so the constant terms stay small (no cancellation at 512 px).
struct Plane {
    /// The first vertex (screen x, y).
    origin: [f32; 2],
    /// `wa = a[0] + a[1]·dx + a[2]·dy` with `dx, dy` relative to `origin`.
    a: [f32; 3],
    /// `wb = b[0] + b[1]·dx + b[2]·dy`.
    b: [f32; 3],
}

impl Plane {
    /// The weights of vertices `p` and `q` for the triangle `p q r` whose
    /// signed area (y-down) is `area`.
    fn new(p: [f32; 3], q: [f32; 3], r: [f32; 3], area: f32) -> Self {
        let inv = 1.0 / area;
        let (q, r) = ([q[0] - p[0], q[1] - p[1]], [r[0] - p[0], r[1] - p[1]]);
        // wa = ((q.x − x)(r.y − y) − (q.y − y)(r.x − x)) / area, expanded.
        let a = [(q[0] * r[1] - q[1] * r[0]) * inv, (q[1] - r[1]) * inv, (r[0] - q[0]) * inv];
        // wb = ((r.x − x)(p.y − y) − (r.y − y)(p.x − x)) / area with p at the
        // origin, expanded: its constant term is zero.
        let b = [0.0, r[1] * inv, -r[0] * inv];
        Self { origin: [p[0], p[1]], a, b }
    }

    fn weights(&self, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = (x - self.origin[0], y - self.origin[1]);
        (self.a[0] + self.a[1] * dx + self.a[2] * dy, self.b[0] + self.b[1] * dx + self.b[2] * dy)
    }

    /// The pixel columns of row `y` (centre) within `xmin..xmax` that may lie
    /// inside the triangle: each weight is linear in x along the row, so the
    /// inside is one interval. The interval is widened by a pixel or two so
    /// rounding never loses a covered pixel; the exact inside test stays in
    /// the caller's loop.
    fn clip_row(&self, y: f32, xmin: usize, xmax: usize) -> Option<(usize, usize)> {
        let (mut lo, mut hi) = (xmin as f32, xmax as f32);
        let dy = y - self.origin[1];
        let a = [self.a[0] + self.a[2] * dy, self.a[1]];
        let b = [self.b[0] + self.b[2] * dy, self.b[1]];
        // wc = 1 − wa − wb.
        let c = [1.0 - a[0] - b[0], -a[1] - b[1]];
        for [k, m] in [a, b, c] {
            // The weight k + m·dx must be ≥ 0, with dx = px + 0.5 − origin.x.
            if m == 0.0 {
                if k < 0.0 {
                    return None;
                }
                continue;
            }
            let root = self.origin[0] - k / m - 0.5;
            if m > 0.0 {
                lo = lo.max(root.floor() - 1.0);
            } else {
                hi = hi.min(root.ceil() + 2.0);
            }
        }
        if !(lo < hi) {
            return None;
        }
        let start = (lo.max(xmin as f32) as usize).max(xmin);
        let end = (hi.min(xmax as f32) as usize).min(xmax);
        (start < end).then_some((start, end))
    }
}

/// Entries in the linear → sRGB byte table.
const SRGB_STEPS: usize = 1 << 14;

/// Linear channel values to sRGB bytes through a table instead of a `powf`
/// per pixel and channel.
struct SrgbTable(&'static [u8]);

impl SrgbTable {
    fn get() -> Self {
        static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
        Self(TABLE.get_or_init(|| {
            (0..SRGB_STEPS)
                .map(|i| (linear_to_srgb(i as f32 / (SRGB_STEPS - 1) as f32) * 255.0 + 0.5) as u8)
                .collect()
        }))
    }

    /// `c` clamped to [0, 1] as an sRGB byte; NaN is black. (A float to
    /// integer cast saturates, and NaN casts to 0.)
    fn byte(&self, c: f32) -> u8 {
        self.0[((c * (SRGB_STEPS - 1) as f32 + 0.5) as usize).min(SRGB_STEPS - 1)]
    }
}

#[cfg(test)]
mod raster_tests {
    use super::*;

    #[test]
    fn the_table_is_within_one_level_of_the_exact_curve() {
        for i in 0..=10_000 {
            let c = i as f32 / 10_000.0;
            let exact = (linear_to_srgb(c) * 255.0 + 0.5) as i32;
            let fast = SrgbTable::get().byte(c) as i32;
            assert!((exact - fast).abs() <= 1, "{c}: {exact} vs {fast}");
        }
        let table = SrgbTable::get();
        assert_eq!(table.byte(f32::NAN), 0);
        assert_eq!(table.byte(-3.0), 0);
        assert_eq!(table.byte(7.0), 255);
        assert_eq!(table.byte(f32::INFINITY), 255);
    }

    #[test]
    fn row_clipping_covers_exactly_the_pixels_the_box_test_covers() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 * 70.0 - 3.0
        };
        let w = 64usize;
        let mut checked = 0;
        for _ in 0..2_000 {
            let (p, q, r) = ([next(), next(), 0.0], [next(), next(), 0.0], [next(), next(), 0.0]);
            let area = (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]);
            if !(area < 0.0) {
                continue;
            }
            let plane = Plane::new(p, q, r, area);
            let inside = |px: usize, py: usize| {
                let (x, y) = (px as f32 + 0.5, py as f32 + 0.5);
                let (wa, wb) = plane.weights(x, y);
                wa >= 0.0 && wb >= 0.0 && 1.0 - wa - wb >= 0.0
            };
            for py in 0..w {
                let span = plane.clip_row(py as f32 + 0.5, 0, w);
                for px in 0..w {
                    if inside(px, py) {
                        let (s, e) = span.unwrap_or_else(|| panic!("row {py} of {p:?} {q:?} {r:?} skipped"));
                        assert!((s..e).contains(&px), "pixel {px},{py} outside {s}..{e} for {p:?} {q:?} {r:?}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 10_000, "enough covered pixels tested: {checked}");
    }

    #[test]
    fn the_affine_weights_equal_the_cross_product_weights() {
        let (a, b, c) = ([3.0_f32, 40.0, 0.0], [50.0, 45.0, 0.0], [20.0, 5.0, 0.0]);
        let area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]);
        assert!(area < 0.0);
        let plane = Plane::new(a, b, c, area);
        for (x, y) in [(10.5_f32, 20.5_f32), (25.5, 30.5), (0.5, 0.5)] {
            let wa = ((b[0] - x) * (c[1] - y) - (b[1] - y) * (c[0] - x)) / area;
            let wb = ((c[0] - x) * (a[1] - y) - (c[1] - y) * (a[0] - x)) / area;
            let (fa, fb) = plane.weights(x, y);
            assert!((wa - fa).abs() < 1e-4 && (wb - fb).abs() < 1e-4, "{x},{y}: {wa},{wb} vs {fa},{fb}");
        }
    }
}
