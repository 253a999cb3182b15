//! Reading NumPy `.npy` volumes (what a Python model or a debugging session dumps).

use crate::MeshError;

/// Parses a `.npy` file holding a 3-D little-endian float32 array in C order (`<f4`,
/// `fortran_order: False`), format version 1, 2 or 3.
///
/// Returns the samples and the shape. The axes are `[n_z, n_y, n_x]`, exactly as
/// [`Volume`](crate::Volume) wants them: `data[(z * n_y + y) * n_x + x]`, i.e. a NumPy
/// array indexed `a[z, y, x]`.
///
/// Errors: `bad_volume` naming what is wrong (magic, version, dtype, order, rank, or a
/// data length that does not match the shape).
pub fn read_npy(bytes: &[u8]) -> Result<(Vec<f32>, [usize; 3]), MeshError> {
    let bad = |reason: String| MeshError::BadVolume {
        reason: format!("npy: {reason}"),
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing the \\x93NUMPY magic".into()));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, start) = match major {
        1 => (
            usize::from(u16::from_le_bytes([bytes[8], bytes[9]])),
            10usize,
        ),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad(format!("unsupported format version {major}.{minor}"))),
    };
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad(format!("header of {header_len} bytes runs past the file")))?;
    let header =
        std::str::from_utf8(&bytes[start..end]).map_err(|_| bad("header is not text".into()))?;

    let value_of = |key: &str| -> Result<&str, MeshError> {
        let at = header
            .find(&format!("'{key}'"))
            .ok_or_else(|| bad(format!("header has no '{key}': {header}")))?;
        let rest = &header[at + key.len() + 2..];
        let colon = rest
            .find(':')
            .ok_or_else(|| bad(format!("malformed header {header}")))?;
        Ok(rest[colon + 1..].trim_start())
    };
    let descr = value_of("descr")?;
    let dtype = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| bad(format!("malformed descr in {header}")))?;
    if dtype != "<f4" {
        return Err(bad(format!(
            "dtype '{dtype}' is not supported, need '<f4' (little-endian float32)"
        )));
    }
    if !value_of("fortran_order")?.starts_with("False") {
        return Err(bad("Fortran order is not supported, need C order".into()));
    }
    let shape_text = value_of("shape")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad(format!("malformed shape in {header}")))?;
    let dims: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad(format!("shape ({inner}) is not a list of integers")))?;
    let [nz, ny, nx] = dims[..] else {
        return Err(bad(format!(
            "array has {} dimensions {dims:?}, need 3 ([n_z, n_y, n_x])",
            dims.len()
        )));
    };
    let count = nz
        .checked_mul(ny)
        .and_then(|k| k.checked_mul(nx))
        .ok_or_else(|| bad(format!("shape {dims:?} overflows")))?;
    let body = &bytes[end..];
    if Some(body.len()) != count.checked_mul(4) {
        return Err(bad(format!(
            "shape {dims:?} needs {count} float32 values, file has {} bytes of data",
            body.len()
        )));
    }
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((data, [nz, ny, nx]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(major: u8, header: &str, data: &[u8]) -> Vec<u8> {
        let mut h = header.to_string();
        let pre = if major == 1 { 10 } else { 12 };
        while (pre + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY".to_vec();
        out.extend([major, 0]);
        if major == 1 {
            out.extend((h.len() as u16).to_le_bytes());
        } else {
            out.extend((h.len() as u32).to_le_bytes());
        }
        out.extend(h.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn read_npy_accepts_v1_and_v2_and_rejects_the_rest() {
        let values: Vec<u8> = (0..24).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }";
        for major in [1, 2] {
            let (data, dims) = read_npy(&npy(major, header, &values)).expect("parses");
            assert_eq!(dims, [2, 3, 4]);
            assert_eq!(data[(1 * 3 + 2) * 4 + 3], 23.0);
        }
        let err = |h: &str, d: &[u8]| read_npy(&npy(1, h, d)).unwrap_err().to_string();
        assert!(err(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3, 4), }",
            &values
        )
        .contains("<f8"));
        assert!(err(
            "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3, 4), }",
            &values
        )
        .contains(">f4"));
        assert!(err(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3, 4), }",
            &values
        )
        .contains("Fortran"));
        assert!(err(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (6, 4), }",
            &values
        )
        .contains("2 dimensions"));
        assert!(err(header, &values[..20]).contains("needs 24"));
        assert!(read_npy(b"not numpy")
            .unwrap_err()
            .to_string()
            .contains("magic"));
        assert_eq!(
            read_npy(b"\x93NUMPY\x09\x00\x00\x00").unwrap_err().code(),
            "bad_volume"
        );
    }
}
