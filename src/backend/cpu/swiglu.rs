//! SwiGLU, forward and backward: `a = silu(gate) · up`.
//!
//! Elementwise, so the forward keeps nothing beyond its inputs (gate and up
//! are the saved activations); the backward recomputes the sigmoid.

use rayon::prelude::*;

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

pub fn swiglu_fwd(out: &mut [f32], gate: &[f32], up: &[f32]) {
    out.par_iter_mut().zip(gate.par_iter().zip(up.par_iter())).for_each(|(o, (&g, &u))| {
        *o = g * sigmoid(g) * u;
    });
}

/// `dgate`, `dup` are overwritten.
pub fn swiglu_bwd(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    dgate
        .par_iter_mut()
        .zip(dup.par_iter_mut())
        .zip(dout.par_iter().zip(gate.par_iter().zip(up.par_iter())))
        .for_each(|((dg, du), (&d, (&g, &u)))| {
            let s = sigmoid(g);
            let silu = g * s;
            *du = d * silu;
            // d silu / dg = s + g·s·(1−s)
            *dg = d * u * (s + g * s * (1.0 - s));
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::gradcheck::*;

    #[test]
    fn swiglu_backward_matches_finite_differences() {
        let n = 64;
        let mut gate: Vec<f32> = random_vec(n, 1).iter().map(|v| 3.0 * v).collect();
        let mut up = random_vec(n, 2);
        let r = random_vec(n, 3);
        let mut dg = vec![0.0; n];
        let mut du = vec![0.0; n];
        swiglu_bwd(&mut dg, &mut du, &r, &gate, &up);
        let f = |g: &[f32], u: &[f32]| {
            let mut o = vec![0.0; n];
            swiglu_fwd(&mut o, g, u);
            o
        };
        let u0 = up.clone();
        let rep = check_gradient(&mut gate, &dg, 1e-3, n, |g| project(&f(g, &u0), &r));
        assert!(rep.rel_err() < 1e-3, "{rep:?}");
        let g0 = gate.clone();
        let rep = check_gradient(&mut up, &du, 1e-3, n, |u| project(&f(&g0, u), &r));
        assert!(rep.rel_err() < 1e-3, "{rep:?}");
    }
}
