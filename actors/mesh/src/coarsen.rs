//! Halving a volume's resolution, for extracting at the resolution a face target needs.
//!
//! Why: decimation costs time in proportion to the faces it starts from (meshoptimizer:
//! about 1.3 µs per face here), and a 256³ grid gives ~350 k faces for a typical shape
//! where jobs ask for tens of thousands. Extracting from a 2× coarser grid gives a
//! quarter of the faces and, as long as that is still a few times the target, the
//! decimated mesh barely differs (measured in md/benchmarks.md).

use crate::{Inside, Volume};

/// A volume that owns its samples (a coarsened copy of another).
#[derive(Clone, Debug)]
pub(crate) struct OwnedVolume {
    pub data: Vec<f32>,
    pub dims: [usize; 3],
    pub bounds_min: [f32; 3],
    pub bounds_max: [f32; 3],
    pub iso: f32,
    pub inside: Inside,
}

impl OwnedVolume {
    pub fn view(&self) -> Volume<'_> {
        Volume {
            data: &self.data,
            dims: self.dims,
            bounds_min: self.bounds_min,
            bounds_max: self.bounds_max,
            iso: self.iso,
            inside: self.inside,
        }
    }
}

/// `volume` at half the resolution: coarse sample i sits on fine sample 2i (so the
/// lower bounds stay and the upper bound moves to the last even sample, at most one
/// fine step inward), filtered with the tent [1, 2, 1] / 4 along each axis.
///
/// The tent filter keeps linear fields (a signed distance away from its kinks) exactly
/// and removes the frequencies the coarse grid cannot hold, so the surface neither
/// shifts nor aliases. Where a neighbour is missing (past the border) or not finite,
/// the centre sample is taken unfiltered along that axis — the tent over a linearly
/// extrapolated neighbour, so linear fields stay exact there too; a non-finite centre
/// stays as it is, so NaN still means empty.
///
/// `None` when an axis has fewer than 3 samples (nothing to halve).
pub(crate) fn halve(volume: &Volume) -> Option<OwnedVolume> {
    let [nz, ny, nx] = volume.dims;
    if volume.dims.iter().any(|&n| n < 3) {
        return None;
    }
    let half = |n: usize| (n - 1) / 2 + 1;
    let (mz, my, mx) = (half(nz), half(ny), half(nx));
    // One coarse plane at a time: z, then y (whole planes and rows, vectorised), then
    // the strided x pass on a quarter of the samples. The two scratch planes stay in
    // cache and only the output is fresh memory (page faults cost more than the
    // arithmetic here).
    let plane = ny * nx;
    let layer = |k: usize| volume.data.get(k * plane..(k + 1) * plane);
    let mut zs = vec![0.0f32; plane];
    let mut ys = vec![0.0f32; my * nx];
    let mut c = vec![0.0f32; mz * my * mx];
    for (k, out) in c.chunks_exact_mut(my * mx).enumerate() {
        let below = k.checked_sub(1).and_then(|_| layer(2 * k - 1));
        tent_rows(
            below,
            &volume.data[2 * k * plane..][..plane],
            layer(2 * k + 1),
            &mut zs,
        );
        let row = |j: usize| zs.get(j * nx..(j + 1) * nx);
        for (j, dst) in ys.chunks_exact_mut(nx).enumerate() {
            let before = j.checked_sub(1).and_then(|_| row(2 * j - 1));
            tent_rows(before, &zs[2 * j * nx..][..nx], row(2 * j + 1), dst);
        }
        for (src, dst) in ys.chunks_exact(nx).zip(out.chunks_exact_mut(mx)) {
            // Output i ≥ 1 reads the window src[2i - 1..=2i + 1]; an odd row's last
            // sample has no right neighbour and stays as it is.
            dst[0] = src[0];
            dst[mx - 1] = src[2 * (mx - 1)];
            for (d, w) in dst[1..].iter_mut().zip(src[1..].windows(3).step_by(2)) {
                *d = tent(w[0], w[1], w[2]);
            }
        }
    }
    // Coarse sample m - 1 sits on fine sample 2 (m - 1), in (x, y, z) order.
    let fine = [nx, ny, nz];
    let coarse = [mx, my, mz];
    let bounds_max = std::array::from_fn(|axis| {
        let (lo, hi) = (volume.bounds_min[axis], volume.bounds_max[axis]);
        let last = 2 * (coarse[axis] - 1);
        if last == fine[axis] - 1 {
            hi
        } else {
            lo + (last as f32 / (fine[axis] - 1) as f32) * (hi - lo)
        }
    });
    Some(OwnedVolume {
        data: c,
        dims: [mz, my, mx],
        bounds_min: volume.bounds_min,
        bounds_max,
        iso: volume.iso,
        inside: volume.inside,
    })
}

/// The [1, 2, 1] / 4 average of `l`, `c`, `r`; `c` itself when that is not finite
/// (a missing or non-finite neighbour, or a non-finite centre).
#[inline]
fn tent(l: f32, c: f32, r: f32) -> f32 {
    let v = 0.25 * (l + r) + 0.5 * c;
    if v.is_finite() {
        v
    } else {
        c
    }
}

/// [`tent`] element-wise over rows; `centre` itself where a neighbour row is missing.
fn tent_rows(left: Option<&[f32]>, centre: &[f32], right: Option<&[f32]>, out: &mut [f32]) {
    match (left, right) {
        (Some(l), Some(r)) => {
            for (((o, &l), &c), &r) in out.iter_mut().zip(l).zip(centre).zip(r) {
                *o = tent(l, c, r);
            }
        }
        _ => out.copy_from_slice(centre),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(dims: [usize; 3], f: impl Fn(f32, f32, f32) -> f32) -> Vec<f32> {
        let mut data = Vec::new();
        for k in 0..dims[0] {
            for j in 0..dims[1] {
                for i in 0..dims[2] {
                    data.push(f(i as f32, j as f32, k as f32));
                }
            }
        }
        data
    }

    #[test]
    fn halve_keeps_linear_fields_and_places_samples_on_even_fine_samples() {
        // Even and odd sample counts per axis; fine sample i at world i (bounds 0..n-1).
        let dims = [7, 6, 9];
        let linear = |x: f32, y: f32, z: f32| 0.5 * x - 2.0 * y + 3.0 * z + 1.0;
        let data = grid(dims, linear);
        let v = Volume {
            data: &data,
            dims,
            bounds_min: [0.0; 3],
            bounds_max: [8.0, 5.0, 6.0],
            iso: 0.0,
            inside: Inside::Below,
        };
        let h = halve(&v).expect("halvable");
        assert_eq!(h.dims, [4, 3, 5]);
        // x: 9 samples → 5 at 0, 2, .., 8 (same bounds); y: 6 → 3 at 0, 2, 4; z: 7 → 4.
        assert_eq!(h.bounds_max, [8.0, 4.0, 6.0]);
        for k in 0..4 {
            for j in 0..3 {
                for i in 0..5 {
                    let got = h.data[(k * 3 + j) * 5 + i];
                    let want = linear(2.0 * i as f32, 2.0 * j as f32, 2.0 * k as f32);
                    assert!((got - want).abs() < 1e-4, "{i} {j} {k}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn halve_skips_nan_neighbours_and_keeps_nan_centres() {
        let dims = [3, 3, 5];
        let mut data = vec![1.0f32; 3 * 3 * 5];
        data[1] = f32::NAN; // a neighbour of coarse x = 0 and 1 in row 0
        data[4] = f32::NAN; // the centre of coarse x = 2 in row 0
        let v = Volume {
            data: &data,
            dims,
            bounds_min: [0.0; 3],
            bounds_max: [1.0; 3],
            iso: 0.0,
            inside: Inside::Below,
        };
        let h = halve(&v).expect("halvable");
        assert_eq!(h.dims, [2, 2, 3]);
        assert_eq!(h.data[0], 1.0);
        assert_eq!(h.data[1], 1.0);
        assert!(h.data[2].is_nan());
        assert!(halve(&Volume {
            dims: [2, 3, 5],
            data: &data[..30],
            ..v
        })
        .is_none());
    }
}
