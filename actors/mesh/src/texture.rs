//! Colour from the input image, projected from the front: per-vertex colours and a UV
//! texture.
//!
//! A single-image model sees its object from the front (from +z toward −z, y up). Every
//! surface point takes the colour of the image pixel in line with it: the front shows the
//! image, the back its mirror image (the best guess from one view, and right for the
//! many objects that look alike front and back), the sides the colour at the silhouette
//! edge, stretched. Pixels outside the silhouette (alpha below one half) are first filled
//! with the colour of the nearest pixel inside it, so points on the sides never pick up
//! the background. The projection is continuous: one UV per vertex, no seams.

use std::collections::VecDeque;

use crate::{Mesh, MeshError};

/// An RGBA8 image, sRGB, straight (not premultiplied) alpha, rows from the top.
#[derive(Clone, PartialEq, Eq)]
pub struct Image {
    width: u32,
    height: u32,
    rgba: Vec<u8>,
}

// Hand-written so that logging an image does not print its pixels.
impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("width", &self.width)
            .field("height", &self.height)
            .finish()
    }
}

impl Image {
    /// Wraps `rgba` (4 bytes per pixel, row 0 at the top).
    ///
    /// Errors: `bad_image` when a side is zero or the byte count is not
    /// `4 · width · height`.
    pub fn new(width: u32, height: u32, rgba: Vec<u8>) -> Result<Self, MeshError> {
        let expected = u64::from(width) * u64::from(height) * 4;
        if width == 0 || height == 0 || rgba.len() as u64 != expected {
            return Err(MeshError::BadImage {
                reason: format!(
                    "{width}×{height} RGBA needs {expected} bytes, got {}",
                    rgba.len()
                ),
            });
        }
        Ok(Self {
            width,
            height,
            rgba,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }
}

/// Where the image stands in the world, seen from the front: the centre of pixel column
/// 0 is at x = `min[0]` and of the last column at x = `max[0]`; the centre of row 0 (the
/// top) is at y = `max[1]` and of the last row at y = `min[1]`. For a model this is its
/// x/y bounds (the prepared input image spans them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImagePlane {
    /// World (x, y) of the bottom-left pixel centre.
    pub min: [f32; 2],
    /// World (x, y) of the top-right pixel centre.
    pub max: [f32; 2],
}

impl ImagePlane {
    /// Position of world (x, y) in the image as fractions of the pixel-centre span: (0, 0)
    /// at the top-left pixel centre, (1, 1) at the bottom-right one, clamped to that range.
    fn fraction(&self, p: [f32; 3]) -> [f32; 2] {
        let t = |v: f32, lo: f32, hi: f32| {
            let f = (v - lo) / (hi - lo);
            if f.is_finite() {
                f.clamp(0.0, 1.0)
            } else {
                0.5
            }
        };
        [
            t(p[0], self.min[0], self.max[0]),
            t(p[1], self.max[1], self.min[1]),
        ]
    }
}

/// A mesh's UV texture: one texture coordinate per vertex and the image as PNG.
#[derive(Clone, PartialEq)]
pub struct Texture {
    /// glTF convention: (0, 0) is the top-left corner of the image, v grows downward.
    pub uvs: Vec<[f32; 2]>,
    /// The image, RGB (outside the silhouette filled as described in the module docs).
    pub png: Vec<u8>,
}

// Hand-written so that logging a texture does not print its bytes.
impl std::fmt::Debug for Texture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Texture")
            .field("uvs", &self.uvs.len())
            .field("png_bytes", &self.png.len())
            .finish()
    }
}

/// Linear RGB colour per vertex of `mesh` from `image` standing at `plane`, sampled
/// bilinearly between pixel centres (sRGB decoded before blending).
pub fn project_colours(mesh: &Mesh, image: &Image, plane: &ImagePlane) -> Vec<[f32; 3]> {
    let filled = filled_rgb(image);
    let (w, h) = (image.width as usize, image.height as usize);
    let lut: Vec<f32> = (0..=255u8).map(srgb_to_linear).collect();
    let texel = |x: usize, y: usize| {
        let i = 3 * (y * w + x);
        [
            lut[filled[i] as usize],
            lut[filled[i + 1] as usize],
            lut[filled[i + 2] as usize],
        ]
    };
    mesh.positions
        .iter()
        .map(|&p| {
            let [fx, fy] = plane.fraction(p);
            let (x, y) = (fx * (w - 1) as f32, fy * (h - 1) as f32);
            let (x0, y0) = (x.floor() as usize, y.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
            let (ax, ay) = (x - x0 as f32, y - y0 as f32);
            let (a, b, c, d) = (texel(x0, y0), texel(x1, y0), texel(x0, y1), texel(x1, y1));
            std::array::from_fn(|ch| {
                let top = a[ch] + ax * (b[ch] - a[ch]);
                let bottom = c[ch] + ax * (d[ch] - c[ch]);
                top + ay * (bottom - top)
            })
        })
        .collect()
}

/// The UV texture of `mesh` from `image` standing at `plane`: each vertex's UV points at
/// the spot [`project_colours`] samples, so a viewer's bilinear filtering shows the same
/// colours between vertices as in the image.
pub fn project_texture(mesh: &Mesh, image: &Image, plane: &ImagePlane) -> Texture {
    let (w, h) = (image.width as f32, image.height as f32);
    let uvs = mesh
        .positions
        .iter()
        .map(|&p| {
            let [fx, fy] = plane.fraction(p);
            // Pixel centres: the first at half a pixel from the edge, the last at one
            // half from the other edge.
            [(0.5 + fx * (w - 1.0)) / w, (0.5 + fy * (h - 1.0)) / h]
        })
        .collect();
    Texture {
        uvs,
        png: encode_rgb(&filled_rgb(image), image.width, image.height, png::Compression::Fast),
    }
}

/// The image's RGB with every pixel of alpha < 128 replaced by the colour of the nearest
/// pixel of alpha ≥ 128 (breadth-first over 4-neighbours: city-block distance, ties
/// to whichever was reached first). Unchanged when no pixel is opaque.
fn filled_rgb(image: &Image) -> Vec<u8> {
    let (w, h) = (image.width as usize, image.height as usize);
    let mut rgb: Vec<u8> = image
        .rgba
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    let mut known: Vec<bool> = image.rgba.chunks_exact(4).map(|p| p[3] >= 128).collect();
    let mut queue: VecDeque<usize> = (0..w * h).filter(|&i| known[i]).collect();
    if queue.is_empty() {
        return rgb;
    }
    while let Some(i) = queue.pop_front() {
        let (x, y) = (i % w, i / w);
        let neighbours = [
            (x > 0).then(|| i - 1),
            (x + 1 < w).then(|| i + 1),
            (y > 0).then(|| i - w),
            (y + 1 < h).then(|| i + w),
        ];
        for j in neighbours.into_iter().flatten() {
            if !known[j] {
                known[j] = true;
                rgb.copy_within(3 * i..3 * i + 3, 3 * j);
                queue.push_back(j);
            }
        }
    }
    rgb
}

fn srgb_to_linear(c: u8) -> f32 {
    let c = f32::from(c) / 255.0;
    if c <= 0.040_45 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

/// PNG of an RGB8 buffer.
pub(crate) fn encode_rgb(rgb: &[u8], width: u32, height: u32, compression: png::Compression) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(compression);
    // Writing to a Vec cannot fail for a correctly sized buffer.
    if let Ok(mut writer) = encoder.write_header() {
        let _ = writer.write_image_data(rgb);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4 × 2: opaque red and green on the left, transparent on the right.
    fn image() -> Image {
        let mut rgba = Vec::new();
        for y in 0..2 {
            for x in 0..4 {
                let opaque = x < 2;
                let c = if y == 0 { [255, 0, 0] } else { [0, 255, 0] };
                rgba.extend(if opaque {
                    [c[0], c[1], c[2], 255]
                } else {
                    [0, 0, 255, 0]
                });
            }
        }
        Image::new(4, 2, rgba).unwrap()
    }

    #[test]
    fn image_checks_its_size() {
        assert_eq!(
            Image::new(2, 2, vec![0; 15]).unwrap_err().code(),
            "bad_image"
        );
        assert_eq!(Image::new(0, 2, vec![]).unwrap_err().code(), "bad_image");
    }

    #[test]
    fn transparent_pixels_take_the_nearest_opaque_colour() {
        let rgb = filled_rgb(&image());
        // Row 0 is red throughout, row 1 green: the blue background is gone.
        for x in 0..4 {
            assert_eq!(&rgb[3 * x..3 * x + 3], &[255, 0, 0], "row 0, x {x}");
            assert_eq!(
                &rgb[12 + 3 * x..12 + 3 * x + 3],
                &[0, 255, 0],
                "row 1, x {x}"
            );
        }
    }

    #[test]
    fn colours_and_uvs_follow_the_front_projection() {
        let plane = ImagePlane {
            min: [-1.0, -1.0],
            max: [1.0, 1.0],
        };
        let mesh = Mesh {
            // Top-left (front), the same point on the back, bottom-right, and between
            // the rows.
            positions: vec![
                [-1.0, 1.0, 0.5],
                [-1.0, 1.0, -0.5],
                [1.0, -1.0, 0.0],
                [0.0, 0.0, 0.0],
            ],
            indices: vec![[0, 1, 2]],
            colors: None,
        };
        let c = project_colours(&mesh, &image(), &plane);
        assert_eq!(c[0], [1.0, 0.0, 0.0]);
        assert_eq!(c[1], c[0], "the back mirrors the front");
        assert_eq!(c[2], [0.0, 1.0, 0.0]);
        // Half-way between red and green, blended in linear light.
        assert!(
            (c[3][0] - 0.5).abs() < 1e-6 && (c[3][1] - 0.5).abs() < 1e-6,
            "{:?}",
            c[3]
        );

        let t = project_texture(&mesh, &image(), &plane);
        assert_eq!(t.uvs[0], [0.125, 0.25], "centre of the top-left pixel");
        assert_eq!(t.uvs[2], [0.875, 0.75], "centre of the bottom-right pixel");
        assert_eq!(t.uvs[3], [0.5, 0.5]);
        assert!(t.png.starts_with(b"\x89PNG"));
    }
}
