//! Image in → model input: decode under strict limits (`image_input.rs`), then per the
//! model's manifest either find the object (alpha when present, otherwise the node's
//! matting stage: a flood fill of the plain background from the border, or a learned
//! matting model, `learned_matte.rs`), crop and recentre it with a
//! margin (`object`), or keep the whole frame letterboxed into a square
//! (`full_frame`); resize to the model's input and write it straight into
//! the item's slot of the batch buffer.

use image::{imageops, RgbaImage};

use crate::image_input::{self, ImageError};
use crate::learned_matte::{Matting, MattingError};

use crate::model::PreprocessMode;

/// Margin around the object after cropping, as a fraction of its larger side.
const MARGIN: f32 = 0.08;
/// Decoded images larger than this on a side are scaled down first: matting and
/// cropping at this size see everything the model input (at most a few hundred
/// pixels) and the texture can use, at a fraction of the time for an 8000-px photo.
pub const WORK_SIDE: u32 = 2048;
/// Largest side of the colour/texture image handed to meshing: the object's crop at
/// up to this resolution rather than the model's small input.
pub const TEXTURE_SIDE: u32 = 1024;

/// Why an image cannot be used. Every variant is the agent's problem, not the node's.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The bytes were refused before or while decoding (`image_input.rs`).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// No object could be separated from the background.
    #[error("no foreground object found in the image")]
    NoObject,
    /// The learned matting pass failed.
    #[error(transparent)]
    Matting(#[from] MattingError),
}

impl PreprocessError {
    /// The wire code: `too_large` for the size limits, `invalid_image` otherwise.
    pub fn code(&self) -> orfeas_wire::ErrorCode {
        match self {
            Self::Image(e) => e.code(),
            Self::NoObject => orfeas_wire::ErrorCode::InvalidImage,
            Self::Matting(e) => e.wire_code(),
        }
    }
}

/// A model-ready image.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// [H, W] of the model input.
    pub size: [usize; 2],
    /// RGBA in [0,1], channel-major [4, H, W].
    pub chw: Vec<f32>,
    /// The same image as RGBA8 rows with colours bled into the background,
    /// used to colour the mesh.
    pub rgba: RgbaImage,
}

/// Check size, format and dimensions from the header only (cheap, allocates no
/// pixels; used at admission). See [`image_input::check_header`].
pub fn check_header(
    bytes: &[u8],
    media_type: &str,
    max_side: u32,
) -> Result<(u32, u32), PreprocessError> {
    Ok(image_input::check_header(bytes, media_type, max_side)?)
}

/// Decode and prepare an image for a model with input `size` [H, W]
/// (object mode; see [`prepare_into`]).
pub fn prepare(
    bytes: &[u8],
    media_type: &str,
    max_side: u32,
    size: [usize; 2],
) -> Result<Prepared, PreprocessError> {
    let mut chw = vec![0f32; 4 * size[0] * size[1]];
    let rgba = prepare_into(
        bytes,
        media_type,
        max_side,
        size,
        PreprocessMode::Object,
        &Matting::Flood,
        &mut chw,
    )?;
    Ok(Prepared { size, chw, rgba })
}

/// Decode and prepare an image for a model with input `size` [H, W],
/// writing RGBA in [0,1], channel-major [4, H, W], into `out` (the item's
/// slot of a batch buffer, `4 × H × W` floats); `matting` separates the
/// object of an image without alpha in object mode. Returns the prepared image
/// as RGBA8 with colours bled into the background, for the mesh colours.
pub fn prepare_into(
    bytes: &[u8],
    media_type: &str,
    max_side: u32,
    size: [usize; 2],
    mode: PreprocessMode,
    matting: &Matting,
    out: &mut [f32],
) -> Result<RgbaImage, PreprocessError> {
    assert_eq!(
        out.len(),
        4 * size[0] * size[1],
        "batch slot has the model's input size"
    );
    let mut decoded = image_input::decode(bytes, media_type, max_side)?;
    if decoded.width().max(decoded.height()) > WORK_SIDE {
        // Box-filtered integer downscale: fast on very large images, no ringing.
        decoded = decoded.thumbnail(WORK_SIDE, WORK_SIDE);
    }
    let mut rgba = decoded.to_rgba8();
    let square = match mode {
        PreprocessMode::Object => {
            separate_foreground(&mut rgba, matting)?;
            crop_square(&rgba)?
        }
        PreprocessMode::FullFrame => {
            if !rgba.pixels().any(|p| p[3] > 127) {
                return Err(PreprocessError::NoObject);
            }
            letterbox(&rgba)
        }
    };
    let resized = resize_premultiplied(&square, size[1] as u32, size[0] as u32);
    write_chw(&resized, out);
    // Colours come from the crop at up to TEXTURE_SIDE, not the model input: a
    // 2048-px photo should not be textured from 128². Bleeding reaches as far (as a
    // fraction of the image) at any resolution.
    let side = square.width().min(TEXTURE_SIDE).max(size[1] as u32);
    let mut bled = if side == size[1] as u32 && square.height() == square.width() && size[0] == size[1] {
        resized
    } else {
        resize_premultiplied(&square, side, side)
    };
    let rounds = (8 * bled.width() as usize / size[1].max(1)).clamp(8, 32);
    bleed_colours(&mut bled, rounds);
    Ok(bled)
}

/// The whole image centred in a square; the added bands are transparent.
fn letterbox(img: &RgbaImage) -> RgbaImage {
    let (w, h) = img.dimensions();
    if w == h {
        return img.clone();
    }
    let side = w.max(h);
    let mut out = RgbaImage::new(side, side);
    imageops::replace(
        &mut out,
        img,
        i64::from((side - w) / 2),
        i64::from((side - h) / 2),
    );
    out
}

/// Make alpha the foreground mask: keep a real alpha channel (the person who
/// cut the object out knows best); otherwise matte the background away with the
/// node's stage (`matte.rs`: flood fill from the border, holes filled, specks
/// dropped; or a learned matting model).
fn separate_foreground(img: &mut RgbaImage, matting: &Matting) -> Result<(), PreprocessError> {
    let has_alpha = img.pixels().any(|p| p[3] < 250);
    if has_alpha {
        return Ok(());
    }
    let alpha = matting.alpha(img)?;
    for (p, a) in img.pixels_mut().zip(alpha) {
        p[3] = a;
    }
    Ok(())
}

/// Crop to the object's bounding box, centred in a square with a margin;
/// outside the image is transparent.
fn crop_square(img: &RgbaImage) -> Result<RgbaImage, PreprocessError> {
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0u32, 0u32);
    for (x, y, p) in img.enumerate_pixels() {
        if p[3] > 127 {
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
    }
    if x0 > x1 {
        return Err(PreprocessError::NoObject);
    }
    let side_obj = (x1 - x0 + 1).max(y1 - y0 + 1) as f32;
    let side = (side_obj * (1.0 + 2.0 * MARGIN)).ceil().max(2.0) as i64;
    let cx = (i64::from(x0) + i64::from(x1) + 1) / 2;
    let cy = (i64::from(y0) + i64::from(y1) + 1) / 2;
    let (ox, oy) = (cx - side / 2, cy - side / 2);
    let mut out = RgbaImage::new(side as u32, side as u32);
    for (x, y, p) in out.enumerate_pixels_mut() {
        let (sx, sy) = (ox + i64::from(x), oy + i64::from(y));
        if sx >= 0 && sy >= 0 && sx < i64::from(img.width()) && sy < i64::from(img.height()) {
            *p = *img.get_pixel(sx as u32, sy as u32);
        }
    }
    Ok(out)
}

/// Resize with premultiplied alpha so background colour does not bleed
/// into the object's edge.
fn resize_premultiplied(img: &RgbaImage, width: u32, height: u32) -> RgbaImage {
    let mut pre = img.clone();
    for p in pre.pixels_mut() {
        let a = u16::from(p[3]);
        for c in 0..3 {
            p[c] = ((u16::from(p[c]) * a + 127) / 255) as u8;
        }
    }
    let mut out = imageops::resize(&pre, width, height, imageops::FilterType::Triangle);
    for p in out.pixels_mut() {
        let a = u16::from(p[3]);
        if a > 0 {
            for c in 0..3 {
                p[c] = ((u16::from(p[c]) * 255 + a / 2) / a).min(255) as u8;
            }
        }
    }
    out
}

fn write_chw(img: &RgbaImage, chw: &mut [f32]) {
    let (w, h) = img.dimensions();
    let plane = (w * h) as usize;
    for (i, p) in img.pixels().enumerate() {
        for c in 0..4 {
            chw[c * plane + i] = f32::from(p[c]) / 255.0;
        }
    }
}

/// Fill transparent pixels with the mean colour of their coloured
/// neighbours, `rounds` times, so colour lookups just outside the silhouette
/// find the object's colour rather than black.
fn bleed_colours(img: &mut RgbaImage, rounds: usize) {
    let (w, h) = img.dimensions();
    let mut known: Vec<bool> = img.pixels().map(|p| p[3] > 0).collect();
    for _ in 0..rounds {
        let snapshot = img.clone();
        let before = known.clone();
        for y in 0..h {
            for x in 0..w {
                let i = (y * w + x) as usize;
                if before[i] {
                    continue;
                }
                let (mut sum, mut n) = ([0u32; 3], 0u32);
                for (dx, dy) in [(-1i64, 0i64), (1, 0), (0, -1), (0, 1)] {
                    let (nx, ny) = (i64::from(x) + dx, i64::from(y) + dy);
                    if nx < 0 || ny < 0 || nx >= i64::from(w) || ny >= i64::from(h) {
                        continue;
                    }
                    if before[(ny as u32 * w + nx as u32) as usize] {
                        let q = snapshot.get_pixel(nx as u32, ny as u32);
                        for c in 0..3 {
                            sum[c] += u32::from(q[c]);
                        }
                        n += 1;
                    }
                }
                if n > 0 {
                    let p = img.get_pixel_mut(x, y);
                    for c in 0..3 {
                        p[c] = (sum[c] / n) as u8;
                    }
                    known[i] = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageFormat;

    fn png(img: &RgbaImage) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn disc_on_white(size: u32, opaque: bool) -> RgbaImage {
        RgbaImage::from_fn(size, size, |x, y| {
            let (dx, dy) = (x as f32 - size as f32 * 0.3, y as f32 - size as f32 * 0.4);
            let inside = dx * dx + dy * dy < (size as f32 * 0.2).powi(2);
            match (inside, opaque) {
                (true, _) => image::Rgba([200, 30, 30, 255]),
                (false, true) => image::Rgba([250, 250, 250, 255]),
                (false, false) => image::Rgba([0, 0, 0, 0]),
            }
        })
    }

    #[test]
    fn object_is_cut_out_centred_and_resized() {
        for opaque in [true, false] {
            let bytes = png(&disc_on_white(200, opaque));
            let p = prepare(&bytes, "image/png", 4096, [64, 64]).unwrap();
            assert_eq!(p.chw.len(), 4 * 64 * 64);
            let alpha = &p.chw[3 * 64 * 64..];
            // Centre is object, corners are background.
            assert!(alpha[32 * 64 + 32] > 0.99, "opaque={opaque}");
            assert!(alpha[0] < 0.01 && alpha[64 * 64 - 1] < 0.01);
            // The object fills the square minus the margin.
            let row: Vec<bool> = (0..64).map(|x| alpha[32 * 64 + x] > 0.5).collect();
            let width = row.iter().filter(|&&b| b).count();
            assert!((50..=62).contains(&width), "object width {width}");
            // Red survives (no white fringe blended in at the centre).
            assert!(p.chw[32 * 64 + 32] > 0.7 && p.chw[64 * 64 + 32 * 64 + 32] < 0.2);
        }
    }

    #[test]
    fn bad_inputs_get_precise_errors() {
        let bytes = png(&disc_on_white(50, false));
        assert!(matches!(
            prepare(&bytes, "image/jpeg", 4096, [8, 8]),
            Err(PreprocessError::Image(ImageError::Mismatch { .. }))
        ));
        assert!(matches!(
            prepare(&bytes, "image/png", 40, [8, 8]),
            Err(PreprocessError::Image(ImageError::TooLarge { .. }))
        ));
        assert!(matches!(
            prepare(b"\x89PNG\r\n\x1a\nbroken", "image/png", 4096, [8, 8]),
            Err(PreprocessError::Image(ImageError::Decode(_)))
        ));
        let blank = png(&RgbaImage::from_pixel(20, 20, image::Rgba([9, 9, 9, 255])));
        assert!(matches!(
            prepare(&blank, "image/png", 4096, [8, 8]),
            Err(PreprocessError::NoObject)
        ));
    }

    #[test]
    fn full_frame_keeps_the_whole_image_and_letterboxes_it() {
        // An opaque 100x50 photo-like gradient: no background keying, no crop.
        let wide = RgbaImage::from_fn(100, 50, |x, _| image::Rgba([(x * 2) as u8, 100, 100, 255]));
        let mut chw = vec![7f32; 4 * 32 * 32];
        prepare_into(
            &png(&wide),
            "image/png",
            4096,
            [32, 32],
            PreprocessMode::FullFrame,
            &Matting::Flood,
            &mut chw,
        )
        .unwrap();
        let plane = 32 * 32;
        let alpha = &chw[3 * plane..];
        // Middle rows are opaque across the full width; top and bottom bands transparent.
        assert!((0..32).all(|x| alpha[16 * 32 + x] > 0.99));
        assert!(alpha[0] < 0.01 && alpha[31 * 32 + 16] < 0.01);
        let opaque_rows = (0..32).filter(|&y| alpha[y * 32 + 16] > 0.5).count();
        assert!(
            (15..=17).contains(&opaque_rows),
            "{opaque_rows} rows: the 2:1 aspect is kept"
        );
        // Colour runs left to right over the whole frame (not cropped to an object).
        assert!(chw[16 * 32] < 0.1 && chw[16 * 32 + 31] > 0.7);
        let clear = png(&RgbaImage::from_pixel(8, 8, image::Rgba([1, 2, 3, 0])));
        assert!(matches!(
            prepare_into(
                &clear,
                "image/png",
                4096,
                [8, 8],
                PreprocessMode::FullFrame,
                &Matting::Flood,
                &mut vec![0.0; 256]
            ),
            Err(PreprocessError::NoObject)
        ));
    }

    #[test]
    fn colours_bleed_outward_for_edge_lookups() {
        let bytes = png(&disc_on_white(100, false));
        let p = prepare(&bytes, "image/png", 4096, [32, 32]).unwrap();
        // Just outside the silhouette on the left, the colour is the object's red.
        let c = p.rgba.get_pixel(1, 16);
        assert!(c[0] > 153 && c[1] < 77, "{c:?}");
    }
}
