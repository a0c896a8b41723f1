//! RMSNorm, forward and backward: `y = x / sqrt(mean(x²) + eps) · w`.
//!
//! The forward saves the per-row reciprocal RMS so the backward needs no
//! second reduction over the input. Rows are independent, so rows run in
//! parallel. Also used with `d = head_dim` for Qwen3's q/k norm.

use rayon::prelude::*;

/// `x`, `y`: `[rows, d]`; `w`: `[d]`; `rstd`: `[rows]` (saved for backward).
pub fn rmsnorm_fwd(y: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], d: usize, eps: f32) {
    y.par_chunks_mut(d)
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(d))
        .for_each(|((y, r), x)| {
            let ms = x.iter().map(|v| v * v).sum::<f32>() / d as f32;
            *r = 1.0 / (ms + eps).sqrt();
            for i in 0..d {
                y[i] = x[i] * *r * w[i];
            }
        });
}

/// Gradients: `dx` is overwritten (or added to when `accumulate`), `dw` is
/// added to. `dw` is a reduction over rows, done serially for determinism.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_bwd(dx: &mut [f32], dw: &mut [f32], dy: &[f32], x: &[f32], w: &[f32], rstd: &[f32], d: usize, accumulate: bool) {
    dx.par_chunks_mut(d)
        .zip(dy.par_chunks(d))
        .zip(x.par_chunks(d))
        .zip(rstd.par_iter())
        .for_each(|(((dx, dy), x), &r)| {
            // xhat = x·r; dxhat = dy·w; dx = r·(dxhat − xhat·mean(dxhat·xhat))
            let mut dot = 0.0f32;
            for i in 0..d {
                dot += dy[i] * w[i] * x[i] * r;
            }
            let mean = dot / d as f32;
            for i in 0..d {
                let g = r * (dy[i] * w[i] - x[i] * r * mean);
                dx[i] = if accumulate { dx[i] + g } else { g };
            }
        });
    for ((dy, x), &r) in dy.chunks(d).zip(x.chunks(d)).zip(rstd) {
        for i in 0..d {
            dw[i] += dy[i] * x[i] * r;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::gradcheck::*;

    #[test]
    fn rmsnorm_backward_matches_finite_differences() {
        let (rows, d, eps) = (5, 16, 1e-6);
        let mut x = random_vec(rows * d, 1);
        let mut w: Vec<f32> = random_vec(d, 2).iter().map(|v| 1.0 + 0.5 * v).collect();
        let r = random_vec(rows * d, 3);
        let fwd = |x: &[f32], w: &[f32]| {
            let mut y = vec![0.0; rows * d];
            let mut s = vec![0.0; rows];
            rmsnorm_fwd(&mut y, &mut s, x, w, d, eps);
            (y, s)
        };
        let (_, rstd) = fwd(&x, &w);
        let mut dx = vec![0.0; rows * d];
        let mut dw = vec![0.0; d];
        rmsnorm_bwd(&mut dx, &mut dw, &r, &x, &w, &rstd, d, false);
        let w0 = w.clone();
        let rep = check_gradient(&mut x, &dx, 1e-3, 100, |x| project(&fwd(x, &w0).0, &r));
        assert!(rep.rel_err() < 2e-3, "dx {rep:?}");
        let x0 = x.clone();
        let rep = check_gradient(&mut w, &dw, 1e-3, 100, |w| project(&fwd(&x0, w).0, &r));
        assert!(rep.rel_err() < 2e-3, "dw {rep:?}");
    }
}
