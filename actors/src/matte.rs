//! Photo matting without a learned model: which pixels of an image with a plain
//! background are the object.
//!
//! One global threshold against the border colour keys out anything near that colour,
//! wherever it is — the light-skinned face of a figure on a light background vanished
//! with the background. Here the background is only what is *connected to the border*
//! through background-coloured pixels (a flood fill), so a face enclosed by hair, neck
//! and outline stays. Enclosed regions are filled (holes in the mask), except large
//! ones that show the background colour itself: the hole of a mug's handle, which a
//! print should keep. Specks are dropped: the largest part is kept, and other parts
//! at least [`KEEP_FRACTION`] of its size (a pair of shoes, a checkerboard's squares).

use image::RgbaImage;

/// A pixel is background-coloured when no channel differs from the background by
/// more than this.
pub const BACKGROUND_TOLERANCE: i32 = 40;
/// An enclosed background-coloured region stays a hole when it is at least this
/// fraction of the object's area and its mean distance from the background colour is
/// at most [`HOLE_MATCH`] (it shows the background itself, not a pale surface).
const HOLE_FRACTION: f64 = 0.002;
/// Mean max-channel distance from the background colour of a region that shows the
/// background through the object.
const HOLE_MATCH: f64 = 12.0;
/// Parts smaller than this fraction of the largest are specks (dust, noise, shadows).
pub const KEEP_FRACTION: f64 = 0.05;

/// The background colour: the per-channel median of the border pixels.
pub fn border_colour(img: &RgbaImage) -> [i32; 3] {
    let (w, h) = img.dimensions();
    let mut border: [Vec<u8>; 3] = Default::default();
    for (x, y, p) in img.enumerate_pixels() {
        if x == 0 || y == 0 || x == w - 1 || y == h - 1 {
            for c in 0..3 {
                border[c].push(p[c]);
            }
        }
    }
    std::array::from_fn(|c| {
        let values = &mut border[c];
        values.sort_unstable();
        i32::from(values[values.len() / 2])
    })
}

/// Foreground mask (row-major, `true` = object) of `img` against its border colour.
pub fn matte(img: &RgbaImage) -> Vec<bool> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let background = border_colour(img);
    let distance: Vec<u8> = img
        .pixels()
        .map(|p| (0..3).map(|c| (i32::from(p[c]) - background[c]).abs()).max().unwrap_or(0).min(255) as u8)
        .collect();
    let like_background: Vec<bool> = distance.iter().map(|&d| i32::from(d) <= BACKGROUND_TOLERANCE).collect();

    // 1. Background = background-coloured pixels reachable from the border.
    let mut outside = vec![false; w * h];
    let mut stack: Vec<usize> = Vec::new();
    for x in 0..w {
        stack.push(x);
        stack.push((h - 1) * w + x);
    }
    for y in 0..h {
        stack.push(y * w);
        stack.push(y * w + w - 1);
    }
    while let Some(i) = stack.pop() {
        if outside[i] || !like_background[i] {
            continue;
        }
        outside[i] = true;
        let (x, y) = (i % w, i / w);
        if x > 0 {
            stack.push(i - 1);
        }
        if x + 1 < w {
            stack.push(i + 1);
        }
        if y > 0 {
            stack.push(i - w);
        }
        if y + 1 < h {
            stack.push(i + w);
        }
    }
    let mut mask: Vec<bool> = outside.iter().map(|&o| !o).collect();

    // 2. Enclosed background-coloured regions are object (filled) unless they are
    //    large and show the background colour itself.
    let object_area = mask.iter().filter(|&&m| m).count().max(1) as f64;
    let enclosed: Vec<bool> = (0..w * h).map(|i| mask[i] && like_background[i]).collect();
    for region in components(&enclosed, w, h, false) {
        let mean = region.iter().map(|&i| f64::from(distance[i])).sum::<f64>() / region.len() as f64;
        if region.len() as f64 >= HOLE_FRACTION * object_area && mean <= HOLE_MATCH {
            for i in region {
                mask[i] = false;
            }
        }
    }

    // 3. The largest part and those not much smaller; specks go.
    keep_main_parts(&mask, w, h)
}

/// The largest part of `mask` (8-connected, row-major `w` × `h`) and the parts at least
/// [`KEEP_FRACTION`] of its size; specks go. Shared with the learned matting stage,
/// whose alpha has specks of its own.
pub fn keep_main_parts(mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    let parts = components(mask, w, h, true);
    let largest = parts.iter().map(Vec::len).max().unwrap_or(0);
    let mut kept = vec![false; w * h];
    for part in parts.into_iter().filter(|p| p.len() as f64 >= KEEP_FRACTION * largest as f64) {
        for i in part {
            kept[i] = true;
        }
    }
    kept
}

/// Connected regions of `set` pixels (4-connected, or 8 with `diagonal`).
fn components(set: &[bool], w: usize, h: usize, diagonal: bool) -> Vec<Vec<usize>> {
    let mut seen = vec![false; w * h];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !set[start] || seen[start] {
            continue;
        }
        let mut region = Vec::new();
        seen[start] = true;
        stack.push(start);
        while let Some(i) = stack.pop() {
            region.push(i);
            let (x, y) = ((i % w) as i64, (i / w) as i64);
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    if (dx == 0 && dy == 0) || (!diagonal && dx != 0 && dy != 0) {
                        continue;
                    }
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if set[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        out.push(region);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use image::Rgba;

    /// A figure on a light grey background: dark hair and clothes, a pale skin-toned
    /// face within the old global tolerance of the background, and a dark outline.
    pub(crate) fn figure(side: u32) -> RgbaImage {
        let s = side as f32;
        let mut img = RgbaImage::from_pixel(side, side, Rgba([240, 240, 240, 255]));
        for (x, y, p) in img.enumerate_pixels_mut() {
            let (fx, fy) = (x as f32 / s, y as f32 / s);
            let head = ((fx - 0.5).powi(2) + (fy - 0.28).powi(2)).sqrt();
            let body = (0.3..0.7).contains(&fx) && (0.45..0.95).contains(&fy);
            if head < 0.15 {
                // Hair ring and outline around a pale face (232, 212, 200): at most 40 from the background.
                *p = if head < 0.12 { Rgba([232, 212, 200, 255]) } else { Rgba([60, 40, 30, 255]) };
            } else if body || ((0.46..0.54).contains(&fx) && (0.4..0.45).contains(&fy)) {
                *p = Rgba([40, 60, 140, 255]);
            }
        }
        img
    }

    #[test]
    fn matte_keeps_a_pale_face_enclosed_by_the_figure() {
        let img = figure(200);
        let mask = matte(&img);
        let at = |x: u32, y: u32| mask[(y * 200 + x) as usize];
        assert!(at(100, 56), "the face centre is object");
        assert!(at(100, 140), "the body is object");
        assert!(!at(5, 5) && !at(190, 190), "the background is not");
        // The old global threshold would have keyed the face out.
        let face = img.get_pixel(100, 56);
        let bg = border_colour(&img);
        assert!((0..3).all(|c| (i32::from(face[c]) - bg[c]).abs() <= BACKGROUND_TOLERANCE));
    }

    #[test]
    fn matte_keeps_a_handle_hole_and_drops_specks() {
        // A dark ring (a handle) around background-coloured pixels, plus a 2-pixel speck.
        let mut img = RgbaImage::from_pixel(100, 100, Rgba([250, 250, 250, 255]));
        for (x, y, p) in img.enumerate_pixels_mut() {
            let r = ((x as f32 - 50.0).powi(2) + (y as f32 - 50.0).powi(2)).sqrt();
            if (20.0..35.0).contains(&r) {
                *p = Rgba([90, 50, 20, 255]);
            }
        }
        img.put_pixel(3, 90, Rgba([0, 0, 0, 255]));
        img.put_pixel(4, 90, Rgba([0, 0, 0, 255]));
        let mask = matte(&img);
        assert!(mask[50 * 100 + 25], "the ring is object");
        assert!(!mask[50 * 100 + 50], "the hole through it stays open");
        assert!(!mask[90 * 100 + 3], "the speck is dropped");
    }

    #[test]
    fn matte_keeps_every_square_of_a_checkerboard() {
        let mut img = RgbaImage::from_pixel(90, 90, Rgba([255, 255, 255, 255]));
        for (x, y, p) in img.enumerate_pixels_mut() {
            if (5..85).contains(&x) && (5..85).contains(&y) && ((x - 5) / 10 + (y - 5) / 10) % 2 == 0 {
                *p = Rgba([0, 0, 0, 255]);
            }
        }
        let mask = matte(&img);
        // Squares touching at corners are one part with 8-connectivity; all are kept.
        assert!(mask[10 * 90 + 10] && mask[80 * 90 + 80] && mask[20 * 90 + 20]);
        assert!(!mask[10 * 90 + 20], "a white square is background");
    }
}
