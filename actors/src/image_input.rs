//! Untrusted image bytes → checked header → decoded pixels, under hard limits.
//!
//! The order is the point: byte cap, non-empty, digest (when the input carries one), the
//! declared media type against the sniffed magic bytes (PNG, JPEG and WebP only: the
//! only codecs compiled into `image`, see the workspace `Cargo.toml`), then width,
//! height and total pixels from the header alone, and only then a decode, with
//! `image::Limits` capping the decoder's allocations as a second line of defence. A PNG
//! that declares 60000×60000 is refused before a single pixel buffer exists.
//!
//! Self-contained on purpose (only `image`, `sha2`, `thiserror` and the wire crate's
//! error codes): the fuzz targets in `fuzz/` include this file directly, without the
//! engine's libtorch dependency.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use sha2::{Digest, Sha256};

/// Largest encoded image any path decodes, bytes. Inline images are smaller still
/// (`v1::MAX_INLINE_IMAGE_BYTES`, checked at admission).
pub const MAX_IMAGE_BYTES: usize = 32 * 1024 * 1024;

/// Largest image, in pixels (width × height), whatever the side limit: 8192² (256 MiB
/// as RGBA8) — an 8000-px photo is decoded and then scaled down (`preprocess.rs`).
pub const MAX_IMAGE_PIXELS: u64 = 8192 * 8192;

/// What reading a header may allocate (the PNG decoder's chunk buffers), bytes.
const HEADER_ALLOC_BYTES: u64 = 64 * 1024 * 1024;

/// Largest decoded pixel buffer, bytes, computed from the header (sides × the bytes per
/// pixel of its colour type) before anything is decoded: 256 MiB, an 8192² RGBA8 or an
/// 8000² RGB8 photo; a 16-bit 8000² PNG (512 MiB) is refused as `too_large`.
pub const MAX_DECODE_BYTES: u64 = 256 * 1024 * 1024;

/// What the decoders may allocate beyond the pixel buffer (row and chunk buffers), bytes.
const DECODER_SLACK_BYTES: u64 = 16 * 1024 * 1024;

/// Decoded bytes all concurrent decodes of this process may hold at once: parallel
/// preprocessing of a batch of 8000-px photos waits here rather than holding 256 MiB
/// per thread. A single decode larger than this still runs (alone).
pub const CONCURRENT_DECODE_BYTES: u64 = 2 * MAX_DECODE_BYTES;

/// Why image bytes were refused. `code()` gives the wire code: `too_large` for the
/// size limits, `invalid_image` for everything else.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No bytes at all, or an image without pixels (0 wide or high).
    #[error("image is empty ({0})")]
    Empty(String),
    /// More bytes than [`MAX_IMAGE_BYTES`] (or the caller's cap).
    #[error("image is {bytes} bytes, the limit is {max}")]
    TooManyBytes {
        /// Size of the input.
        bytes: usize,
        /// The cap.
        max: usize,
    },
    /// The bytes do not match the sha256 the input declared.
    #[error("image sha256 is {actual}, the message declared {declared}")]
    DigestMismatch {
        /// Declared digest (hex).
        declared: String,
        /// Digest of the bytes (hex).
        actual: String,
    },
    /// The declared media type is not one we read, or the bytes are another format.
    #[error("image is not a {declared} image (looks like {sniffed})")]
    Mismatch {
        /// Declared media type.
        declared: String,
        /// What the bytes look like.
        sniffed: String,
    },
    /// Wider or higher than allowed (from the header).
    #[error("image is {width}x{height}, the limit is {max}x{max}")]
    TooLarge {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Largest side allowed.
        max: u32,
    },
    /// More pixels than [`MAX_IMAGE_PIXELS`] (from the header).
    #[error("image is {width}x{height} = {} pixels, the limit is {max}", u64::from(*width) * u64::from(*height))]
    TooManyPixels {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Pixel limit.
        max: u64,
    },
    /// Decoding would need a pixel buffer over [`MAX_DECODE_BYTES`] (from the header).
    #[error("image is {width}x{height} {color}: decoding needs {} MiB, the limit is {} MiB", bytes / (1024 * 1024), max / (1024 * 1024))]
    TooMuchMemory {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// The header's colour type, e.g. `Rgba16`.
        color: String,
        /// Bytes the decoded pixels need.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// The header or the data cannot be decoded (truncated, corrupt).
    #[error("image cannot be decoded: {0}")]
    Decode(String),
}

impl ImageError {
    /// The wire code.
    pub fn code(&self) -> orfeas_wire::ErrorCode {
        match self {
            Self::TooManyBytes { .. } | Self::TooLarge { .. } | Self::TooManyPixels { .. } | Self::TooMuchMemory { .. } => {
                orfeas_wire::ErrorCode::TooLarge
            }
            _ => orfeas_wire::ErrorCode::InvalidImage,
        }
    }
}

/// The formats we read, by media type.
pub fn format_of(media_type: &str) -> Option<ImageFormat> {
    match media_type {
        "image/png" => Some(ImageFormat::Png),
        "image/jpeg" => Some(ImageFormat::Jpeg),
        "image/webp" => Some(ImageFormat::WebP),
        _ => None,
    }
}

/// Checks `bytes` against a declared sha256 (lowercase or uppercase hex) before anything
/// parses them: inputs fetched by reference carry a signed digest.
pub fn check_digest(bytes: &[u8], sha256_hex: &str) -> Result<(), ImageError> {
    let actual = hex::encode(Sha256::digest(bytes));
    if actual.eq_ignore_ascii_case(sha256_hex.trim()) {
        Ok(())
    } else {
        Err(ImageError::DigestMismatch {
            declared: sha256_hex.to_string(),
            actual,
        })
    }
}

/// Checks size, format, dimensions and the decoded size from the header only: no pixel
/// buffer is allocated. Returns (width, height).
pub fn check_header(bytes: &[u8], media_type: &str, max_side: u32) -> Result<(u32, u32), ImageError> {
    header(bytes, media_type, max_side).map(|h| (h.width, h.height))
}

/// What the header says, checked against every limit.
struct Header {
    width: u32,
    height: u32,
    /// Bytes of the decoded pixel buffer.
    decoded_bytes: u64,
}

fn header(bytes: &[u8], media_type: &str, max_side: u32) -> Result<Header, ImageError> {
    use image::ImageDecoder;
    let decoder = reader(bytes, media_type)?.into_decoder().map_err(|e| ImageError::Decode(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::Empty(format!("{width}x{height}")));
    }
    if width > max_side || height > max_side {
        return Err(ImageError::TooLarge { width, height, max: max_side });
    }
    if u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS {
        return Err(ImageError::TooManyPixels { width, height, max: MAX_IMAGE_PIXELS });
    }
    let color = decoder.color_type();
    let decoded_bytes = u64::from(width) * u64::from(height) * u64::from(color.bytes_per_pixel());
    if decoded_bytes > MAX_DECODE_BYTES {
        return Err(ImageError::TooMuchMemory { width, height, color: format!("{color:?}"), bytes: decoded_bytes, max: MAX_DECODE_BYTES });
    }
    Ok(Header { width, height, decoded_bytes })
}

/// [`check_header`], then a decode under `image::Limits` (sides, and allocations bounded
/// by the decoded size the header declared), holding its share of
/// [`CONCURRENT_DECODE_BYTES`] while it runs.
pub fn decode(bytes: &[u8], media_type: &str, max_side: u32) -> Result<DynamicImage, ImageError> {
    let Header { width, height, decoded_bytes } = header(bytes, media_type, max_side)?;
    let mut reader = reader(bytes, media_type)?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    limits.max_alloc = Some(decoded_bytes + DECODER_SLACK_BYTES);
    reader.limits(limits);
    let _share = DecodeBudget::take(decoded_bytes);
    reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => ImageError::TooLarge { width, height, max: max_side },
        other => ImageError::Decode(other.to_string()),
    })
}

/// The process-wide budget of decoded bytes in flight ([`CONCURRENT_DECODE_BYTES`]).
static IN_FLIGHT: std::sync::Mutex<u64> = std::sync::Mutex::new(0);
static RELEASED: std::sync::Condvar = std::sync::Condvar::new();

/// A share of the budget, given back on drop.
struct DecodeBudget(u64);

impl DecodeBudget {
    /// Waits until `bytes` fit in the budget (or nothing else is decoding).
    fn take(bytes: u64) -> Self {
        let mut in_flight = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
        while *in_flight > 0 && *in_flight + bytes > CONCURRENT_DECODE_BYTES {
            in_flight = RELEASED.wait(in_flight).unwrap_or_else(|e| e.into_inner());
        }
        *in_flight += bytes;
        Self(bytes)
    }
}

impl Drop for DecodeBudget {
    fn drop(&mut self) {
        let mut in_flight = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
        *in_flight -= self.0;
        RELEASED.notify_all();
    }
}

/// A reader for `bytes` as the declared format, after the byte cap and the sniff.
fn reader<'a>(bytes: &'a [u8], media_type: &str) -> Result<ImageReader<Cursor<&'a [u8]>>, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty("0 bytes".into()));
    }
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(ImageError::TooManyBytes { bytes: bytes.len(), max: MAX_IMAGE_BYTES });
    }
    let declared = format_of(media_type);
    let sniffed = image::guess_format(bytes).ok();
    let format = match (declared, sniffed) {
        (Some(d), Some(s)) if d == s => d,
        _ => {
            return Err(ImageError::Mismatch {
                declared: media_type.to_string(),
                sniffed: sniffed.map(|f| format!("{f:?}").to_lowercase()).unwrap_or_else(|| "unknown data".into()),
            })
        }
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    // Reading the header allocates nothing in proportion to the image (`into_dimensions`
    // never reserves the pixel buffer), but the PNG decoder buffers ancillary chunks
    // (text, ICC profiles) up to `max_alloc`: bound that. The sides are left unlimited
    // here so the caller learns them and can say exactly what is too large.
    let mut limits = Limits::default();
    limits.max_image_width = None;
    limits.max_image_height = None;
    limits.max_alloc = Some(HEADER_ALLOC_BYTES);
    reader.limits(limits);
    Ok(reader)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orfeas_wire::ErrorCode;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbaImage::from_pixel(width, height, image::Rgba([200, 10, 10, 255]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// A PNG signature and IHDR chunk declaring `width` × `height` RGBA8, with a correct
    /// CRC, then one tiny IDAT: a valid header for an image nobody should decode.
    fn png_declaring(width: u32, height: u32) -> Vec<u8> {
        png_declaring_depth(width, height, 8)
    }

    /// As [`png_declaring`], RGBA of `depth` bits per channel.
    fn png_declaring_depth(width: u32, height: u32, depth: u8) -> Vec<u8> {
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            out.extend((data.len() as u32).to_be_bytes());
            let start = out.len();
            out.extend(kind);
            out.extend(data);
            let crc = crc32(&out[start..]);
            out.extend(crc.to_be_bytes());
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend(width.to_be_bytes());
        ihdr.extend(height.to_be_bytes());
        ihdr.extend([depth, 6, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
        chunk(&mut out, b"IEND", &[]);
        out
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn only_png_jpeg_and_webp_decoders_are_compiled_in() {
        let readable: Vec<ImageFormat> = ImageFormat::all().filter(|f| f.reading_enabled()).collect();
        assert_eq!(readable.len(), 3, "{readable:?}");
        for f in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP] {
            assert!(readable.contains(&f), "{readable:?}");
        }
        // A GIF declared as a GIF: not a type we take, refused before any decoder.
        let e = check_header(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "image/gif", 4096).unwrap_err();
        assert!(matches!(e, ImageError::Mismatch { .. }) && e.code() == ErrorCode::InvalidImage, "{e}");
    }

    #[test]
    fn a_png_declaring_60000_squared_is_refused_from_its_header() {
        let bytes = png_declaring(60_000, 60_000);
        // The header parses (the same bytes with small sides pass the header check)...
        assert_eq!(check_header(&png_declaring(16, 16), "image/png", 4096).unwrap(), (16, 16));
        // ...and the big one is refused by size, not by a failed decode of its missing
        // pixel data: no pixel buffer was ever requested (60000² RGBA8 = 14.4 GB).
        let e = check_header(&bytes, "image/png", 4096).unwrap_err();
        assert!(matches!(e, ImageError::TooLarge { width: 60_000, height: 60_000, .. }), "{e}");
        assert_eq!(e.code(), ErrorCode::TooLarge);
        let e = decode(&bytes, "image/png", 4096).unwrap_err();
        assert_eq!(e.code(), ErrorCode::TooLarge, "{e}");
        // Within a huge side limit the pixel cap still holds.
        let e = check_header(&png_declaring(9_000, 9_000), "image/png", 100_000).unwrap_err();
        assert!(matches!(e, ImageError::TooManyPixels { .. }) && e.code() == ErrorCode::TooLarge, "{e}");
    }

    #[test]
    fn the_decoded_size_is_checked_from_the_header() {
        // 8000² RGBA8 is 244 MiB decoded: within the limit, it passes the header check.
        assert_eq!(check_header(&png_declaring(8_000, 8_000), "image/png", 16_384).unwrap(), (8_000, 8_000));
        // The same sides at 16 bits per channel would need 488 MiB: refused before any
        // decode, with the numbers, as too_large.
        let bytes = png_declaring_depth(8_000, 8_000, 16);
        let e = check_header(&bytes, "image/png", 16_384).unwrap_err();
        match &e {
            ImageError::TooMuchMemory { bytes, max, color, .. } => {
                assert_eq!(*bytes, 8_000 * 8_000 * 8);
                assert_eq!(*max, MAX_DECODE_BYTES);
                assert_eq!(color, "Rgba16");
            }
            other => panic!("{other}"),
        }
        assert_eq!(e.code(), ErrorCode::TooLarge);
        assert!(e.to_string().contains("488 MiB") && e.to_string().contains("256 MiB"), "{e}");
        let e = decode(&bytes, "image/png", 16_384).unwrap_err();
        assert!(matches!(e, ImageError::TooMuchMemory { .. }), "{e}");
        // A small 16-bit image is fine.
        assert_eq!(check_header(&png_declaring_depth(64, 64, 16), "image/png", 4096).unwrap(), (64, 64));
    }

    #[test]
    fn concurrent_decodes_wait_for_the_budget() {
        let held = DecodeBudget::take(CONCURRENT_DECODE_BYTES);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _share = DecodeBudget::take(MAX_DECODE_BYTES);
            tx.send(()).unwrap();
        });
        assert!(rx.recv_timeout(std::time::Duration::from_millis(300)).is_err(), "a decode ran past a full budget");
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the waiting decode goes on once the budget is free");
        waiter.join().unwrap();
        // A decode that alone exceeds the budget still runs when nothing else decodes.
        drop(DecodeBudget::take(3 * CONCURRENT_DECODE_BYTES));
    }

    #[test]
    fn truncated_png_is_invalid() {
        let whole = png(64, 64);
        assert!(decode(&whole, "image/png", 4096).is_ok());
        for cut in [8, 20, 33, whole.len() / 2, whole.len() - 13] {
            let e = decode(&whole[..cut], "image/png", 4096).unwrap_err();
            assert!(matches!(e, ImageError::Decode(_)), "cut at {cut}: {e}");
            assert_eq!(e.code(), ErrorCode::InvalidImage);
        }
    }

    #[test]
    fn media_type_must_match_the_bytes() {
        let bytes = png(8, 8);
        for declared in ["image/jpeg", "image/webp", "image/gif", "text/plain", ""] {
            let e = check_header(&bytes, declared, 4096).unwrap_err();
            assert!(matches!(e, ImageError::Mismatch { .. }), "{declared}: {e}");
            assert_eq!(e.code(), ErrorCode::InvalidImage);
        }
        let mut jpeg = Cursor::new(Vec::new());
        image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).write_to(&mut jpeg, ImageFormat::Jpeg).unwrap();
        assert!(check_header(jpeg.get_ref(), "image/png", 4096).is_err());
        assert_eq!(check_header(jpeg.get_ref(), "image/jpeg", 4096).unwrap(), (8, 8));
    }

    #[test]
    fn non_image_and_empty_inputs_are_invalid() {
        for (bytes, what) in [(&b"not an image at all"[..], "text"), (&[0u8; 64][..], "zeros"), (&[][..], "empty")] {
            let e = decode(bytes, "image/png", 4096).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidImage, "{what}: {e}");
        }
        assert!(matches!(decode(&[], "image/png", 4096), Err(ImageError::Empty(_))));
        // A header declaring no pixels.
        let e = check_header(&png_declaring(0, 10), "image/png", 4096).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidImage, "{e}");
    }

    #[test]
    fn byte_cap_and_digest_are_checked_before_parsing() {
        let mut big = png(4, 4);
        big.resize(MAX_IMAGE_BYTES + 1, 0);
        let e = check_header(&big, "image/png", 4096).unwrap_err();
        assert!(matches!(e, ImageError::TooManyBytes { .. }) && e.code() == ErrorCode::TooLarge, "{e}");
        let bytes = png(4, 4);
        let digest = hex::encode(Sha256::digest(&bytes));
        check_digest(&bytes, &digest).unwrap();
        check_digest(&bytes, &digest.to_uppercase()).unwrap();
        let e = check_digest(&bytes[1..], &digest).unwrap_err();
        assert!(matches!(e, ImageError::DigestMismatch { .. }) && e.code() == ErrorCode::InvalidImage);
    }
}
