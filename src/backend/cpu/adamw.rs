//! AdamW with fp32 moments, and the global gradient norm used for clipping.
//!
//! Decoupled weight decay (Loshchilov & Hutter), in PyTorch's order: decay,
//! then the moment update, then the bias-corrected step. The global norm is
//! summed in f64 in a fixed order so clipping is reproducible.

use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// One step for one tensor. `step` counts from 1.
pub fn adamw_step(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], step: u64, hp: AdamWParams, decay: bool) {
    let bc1 = 1.0 - (hp.beta1 as f64).powi(step as i32);
    let bc2 = 1.0 - (hp.beta2 as f64).powi(step as i32);
    let step_size = (hp.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let wd = if decay { hp.lr * hp.weight_decay } else { 0.0 };
    p.par_iter_mut()
        .zip(g.par_iter())
        .zip(m.par_iter_mut().zip(v.par_iter_mut()))
        .for_each(|((p, &g), (m, v))| {
            *p -= wd * *p;
            *m = hp.beta1 * *m + (1.0 - hp.beta1) * g;
            *v = hp.beta2 * *v + (1.0 - hp.beta2) * g * g;
            *p -= step_size * *m / (v.sqrt() / bc2_sqrt + hp.eps);
        });
}

/// Sum of squares of one tensor, in f64 (chunked for a fixed summation order).
pub fn sum_squares(g: &[f32]) -> f64 {
    let parts: Vec<f64> = g.par_chunks(4096).map(|c| c.iter().map(|&x| x as f64 * x as f64).sum()).collect();
    parts.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_scalar_reference() {
        let hp = AdamWParams { lr: 0.1, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
        let (mut p, mut m, mut v) = (vec![1.0f32], vec![0.0f32], vec![0.0f32]);
        let (mut rp, mut rm, mut rv) = (1.0f64, 0.0f64, 0.0f64);
        for step in 1..=5u64 {
            let g = 0.5 * step as f32;
            adamw_step(&mut p, &[g], &mut m, &mut v, step, hp, true);
            rp -= 0.1 * 0.1 * rp;
            rm = 0.9 * rm + 0.1 * g as f64;
            rv = 0.99 * rv + 0.01 * (g as f64).powi(2);
            let mh = rm / (1.0 - 0.9f64.powi(step as i32));
            let vh = rv / (1.0 - 0.99f64.powi(step as i32));
            rp -= 0.1 * mh / (vh.sqrt() + 1e-8);
            assert!((p[0] as f64 - rp).abs() < 1e-5, "step {step}: {} vs {rp}", p[0]);
        }
    }

    #[test]
    fn sum_squares_is_exact_enough() {
        let g: Vec<f32> = (0..10000).map(|i| (i % 7) as f32 - 3.0).collect();
        let want: f64 = g.iter().map(|&x| (x * x) as f64).sum();
        assert_eq!(sum_squares(&g), want);
    }
}

/// `x *= s` in place (the global-norm clip's rescale).
pub fn scale(x: &mut [f32], s: f32) {
    x.par_iter_mut().for_each(|v| *v *= s);
}
