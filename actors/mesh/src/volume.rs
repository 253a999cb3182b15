//! The input of extraction: a dense scalar grid with its world placement and iso level.

use crate::MeshError;

/// A dense scalar volume in C order: value of sample (i0, i1, i2) is
/// `data[(i0 * dims[1] + i1) * dims[2] + i2]`.
///
/// Axis 0 maps to world z, axis 1 to world y, axis 2 to world x, each increasing with the
/// index: `world = bounds_min + index / (dims - 1) * (bounds_max - bounds_min)`, per axis,
/// with the bounds in (x, y, z) order. This is the layout of a `[n_z, n_y, n_x]` tensor.
#[derive(Clone, Copy)]
pub struct Volume<'a> {
    /// The samples, `dims[0] * dims[1] * dims[2]` of them.
    pub data: &'a [f32],
    /// Sample counts `[n_z, n_y, n_x]`, each at least 2.
    pub dims: [usize; 3],
    /// World position (x, y, z) of sample (0, 0, 0).
    pub bounds_min: [f32; 3],
    /// World position (x, y, z) of the last sample; strictly greater than `bounds_min`.
    pub bounds_max: [f32; 3],
    /// The level separating solid from empty.
    pub iso: f32,
    /// Which side of `iso` is solid.
    pub inside: Inside,
}

/// Which side of the iso level is solid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inside {
    /// `value > iso` is solid (occupancy, density).
    Above,
    /// `value < iso` is solid (signed distance, negative inside).
    Below,
}

// Hand-written so that logging a volume does not print millions of samples.
impl std::fmt::Debug for Volume<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("samples", &self.data.len())
            .field("dims", &self.dims)
            .field("bounds_min", &self.bounds_min)
            .field("bounds_max", &self.bounds_max)
            .field("iso", &self.iso)
            .field("inside", &self.inside)
            .finish()
    }
}

impl Volume<'_> {
    /// Checks that the fields describe a grid extraction can walk.
    pub(crate) fn validate(&self) -> Result<(), MeshError> {
        let bad = |reason: String| Err(MeshError::BadVolume { reason });
        if let Some(axis) = self.dims.iter().position(|&n| n < 2) {
            return bad(format!(
                "dims {:?}: axis {axis} has {} samples, need at least 2",
                self.dims, self.dims[axis]
            ));
        }
        let expected = self
            .dims
            .iter()
            .try_fold(1usize, |acc, &n| acc.checked_mul(n));
        match expected {
            Some(n) if n == self.data.len() => {}
            Some(n) => {
                return bad(format!(
                    "dims {:?} need {n} samples, data has {}",
                    self.dims,
                    self.data.len()
                ))
            }
            None => return bad(format!("dims {:?} overflow usize", self.dims)),
        }
        for axis in 0..3 {
            let (lo, hi) = (self.bounds_min[axis], self.bounds_max[axis]);
            // A flipped or flat axis would mirror or collapse the triangles, so the
            // orientation guarantee of extraction would no longer hold.
            if !(lo.is_finite() && hi.is_finite() && hi > lo) {
                return bad(format!(
                    "bounds on axis {} are [{lo}, {hi}], need finite min < max",
                    ["x", "y", "z"][axis]
                ));
            }
        }
        if !self.iso.is_finite() {
            return bad(format!("iso {} is not finite", self.iso));
        }
        Ok(())
    }

    /// Samples (x, y, z) along world axis `axis` (0 = x), padded with one extra position
    /// one grid step beyond each end.
    pub(crate) fn padded_coords(&self, axis: usize) -> Vec<f32> {
        // dims are [z, y, x], bounds are (x, y, z).
        let n = self.dims[2 - axis];
        let (lo, hi) = (self.bounds_min[axis], self.bounds_max[axis]);
        let last = (n - 1) as f32;
        let step = (hi - lo) / last;
        let mut coords = Vec::with_capacity(n + 2);
        coords.push(lo - step);
        // Exact at both ends: index 0 gives lo and index n-1 gives hi.
        coords.extend((0..n).map(|i| lo + (i as f32 / last) * (hi - lo)));
        coords.push(hi + step);
        coords
    }

    /// Maps a sample to a signed value: negative strictly means solid, anything else
    /// (zero, positive, NaN) is empty. Samples exactly at the iso level thereby count as
    /// empty, which is the "nudge toward outside" that keeps every crossing strictly
    /// inside a grid edge.
    #[inline]
    pub(crate) fn signed(&self, value: f32) -> f32 {
        match self.inside {
            Inside::Below => value - self.iso,
            Inside::Above => self.iso - value,
        }
    }
}
