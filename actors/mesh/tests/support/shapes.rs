//! Sampled test shapes shared by the integration tests.

#![allow(dead_code)]

use orfeas_mesh::{Inside, Volume};

/// Samples `f(x, y, z)` on an `n³` grid over `[lo, hi]³`, C order `[z][y][x]`.
pub fn sample(n: usize, lo: f32, hi: f32, f: impl Fn(f32, f32, f32) -> f32) -> Vec<f32> {
    let c = |i: usize| lo + (i as f32 / (n - 1) as f32) * (hi - lo);
    let mut data = Vec::with_capacity(n * n * n);
    for k in 0..n {
        for j in 0..n {
            for i in 0..n {
                data.push(f(c(i), c(j), c(k)));
            }
        }
    }
    data
}

/// A cubic volume over `[lo, hi]³`.
pub fn volume(data: &[f32], n: usize, lo: f32, hi: f32, iso: f32, inside: Inside) -> Volume<'_> {
    Volume {
        data,
        dims: [n, n, n],
        bounds_min: [lo; 3],
        bounds_max: [hi; 3],
        iso,
        inside,
    }
}

/// Signed distance to a ball.
pub fn ball(c: [f32; 3], r: f32) -> impl Fn(f32, f32, f32) -> f32 {
    move |x, y, z| ((x - c[0]).powi(2) + (y - c[1]).powi(2) + (z - c[2]).powi(2)).sqrt() - r
}

/// Signed distance to a torus around the y axis.
pub fn torus(major: f32, minor: f32) -> impl Fn(f32, f32, f32) -> f32 {
    move |x, y, z| ((x * x + z * z).sqrt() - major).hypot(y) - minor
}

pub fn ball_volume(r: f32) -> f64 {
    4.0 / 3.0 * std::f64::consts::PI * f64::from(r).powi(3)
}

pub fn assert_close(actual: f64, expected: f64, rel: f64, what: &str) {
    let err = (actual - expected).abs() / expected.abs();
    assert!(
        err <= rel,
        "{what}: {actual} vs {expected} (relative error {err:.4} > {rel})"
    );
}

/// Signed distance to an axis-aligned box with half sizes `h`, centred at the origin.
pub fn cuboid(h: [f32; 3]) -> impl Fn(f32, f32, f32) -> f32 {
    move |x, y, z| {
        let q = [x.abs() - h[0], y.abs() - h[1], z.abs() - h[2]];
        let outside = q.iter().map(|c| c.max(0.0).powi(2)).sum::<f32>().sqrt();
        outside + q[0].max(q[1]).max(q[2]).min(0.0)
    }
}

pub fn torus_volume(major: f32, minor: f32) -> f64 {
    2.0 * std::f64::consts::PI.powi(2) * f64::from(major) * f64::from(minor).powi(2)
}

/// A small xorshift PRNG: deterministic test inputs without a dependency.
pub struct Rng(pub u64);

impl Rng {
    /// Uniform in [0, 1).
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.next()
    }
}
