//! Finite-difference gradient checking and seeded test data.
//!
//! Owns: the helpers that the per-op unit tests and the whole-model tests use
//! to prove each backward against its forward. Public (not `cfg(test)`) so the
//! integration tests in tests/ can use the same helpers.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Uniform values in [-1, 1) from a fixed seed.
pub fn random_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// Result of comparing an analytic gradient with central differences.
#[derive(Debug)]
pub struct GradReport {
    /// max |analytic - numeric| over checked coordinates.
    pub max_abs_err: f64,
    /// max |numeric| over checked coordinates (the scale errors are judged by).
    pub max_numeric: f64,
    pub checked: usize,
}

impl GradReport {
    pub fn rel_err(&self) -> f64 {
        self.max_abs_err / self.max_numeric.max(1e-12)
    }
}

/// Check `analytic` (d loss / d x) against central differences of `loss`
/// at up to `max_coords` coordinates of `x` spread evenly over it.
/// `loss` must be evaluated in f64 where it sums, so the differences are
/// dominated by the f32 forward itself.
pub fn check_gradient(
    x: &mut [f32],
    analytic: &[f32],
    eps: f32,
    max_coords: usize,
    mut loss: impl FnMut(&[f32]) -> f64,
) -> GradReport {
    assert_eq!(x.len(), analytic.len());
    let n = x.len();
    let stride = (n / max_coords.max(1)).max(1);
    let mut report = GradReport { max_abs_err: 0.0, max_numeric: 0.0, checked: 0 };
    let mut i = 0;
    while i < n {
        let orig = x[i];
        x[i] = orig + eps;
        let lp = loss(x);
        x[i] = orig - eps;
        let lm = loss(x);
        x[i] = orig;
        let numeric = (lp - lm) / (2.0 * eps as f64);
        report.max_abs_err = report.max_abs_err.max((numeric - analytic[i] as f64).abs());
        report.max_numeric = report.max_numeric.max(numeric.abs());
        report.checked += 1;
        i += stride;
    }
    report
}

/// Σ r_i · y_i in f64: turns a vector output into a scalar loss whose
/// gradient with respect to y is `r`.
pub fn project(y: &[f32], r: &[f32]) -> f64 {
    y.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum()
}
