//! Matrix products on the `gemm` crate, plus the linear layer built on them.
//!
//! Why a wrapper: the model speaks in row-major `[rows, cols]` buffers and
//! "transpose A / transpose B" flags; `gemm` speaks in strides. This file is
//! the one place that translates, so no other file does stride arithmetic.

use gemm::Parallelism;

fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    // Tiny products are faster on one thread.
    if m * n * k < 32 * 32 * 32 {
        Parallelism::None
    } else {
        Parallelism::Rayon(rayon::current_num_threads())
    }
}

/// `c[m,n] (+)= op(a) · op(b)` where `op(a)` is `[m,k]` and `op(b)` is `[k,n]`.
/// `a` is stored `[m,k]`, or `[k,m]` when `trans_a`; `b` is `[k,n]`, or
/// `[n,k]` when `trans_b`. All buffers are row-major and contiguous.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
) {
    assert_eq!(c.len(), m * n, "matmul: c has {} values, want {m}x{n}", c.len());
    assert_eq!(a.len(), m * k, "matmul: a has {} values, want {m}x{k}", a.len());
    assert_eq!(b.len(), k * n, "matmul: b has {} values, want {k}x{n}", b.len());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.iter_mut().for_each(|v| *v = 0.0);
        }
        return;
    }
    // (row stride, column stride) of each operand as seen in its op() shape.
    let (a_rs, a_cs) = if trans_a { (1isize, m as isize) } else { (k as isize, 1) };
    let (b_rs, b_cs) = if trans_b { (1isize, k as isize) } else { (n as isize, 1) };
    // SAFETY: the asserts above guarantee every index gemm touches is in
    // bounds for the given shapes and strides; c does not alias a or b
    // (guaranteed by the borrow checker).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(m, n, k),
        );
    }
}

/// `y[n,out] = x[n,in] · W[out,in]^T (+ b)`, the PyTorch `nn.Linear` layout.
pub fn linear_fwd(y: &mut [f32], x: &[f32], w: &[f32], bias: Option<&[f32]>, n: usize, d_in: usize, d_out: usize) {
    matmul(y, x, w, n, d_in, d_out, false, true, false);
    if let Some(b) = bias {
        for row in y.chunks_mut(d_out) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
    }
}

/// Backward of `linear_fwd`: `dx (+)= dy · W`, `dW += dy^T · x`, `db += Σ dy`.
#[allow(clippy::too_many_arguments)]
pub fn linear_bwd(
    dx: &mut [f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    d_in: usize,
    d_out: usize,
    accumulate_dx: bool,
) {
    matmul(dx, dy, w, n, d_out, d_in, false, false, accumulate_dx);
    matmul(dw, dy, x, d_out, n, d_in, true, false, true);
    if let Some(db) = db {
        for row in dy.chunks(d_out) {
            db.iter_mut().zip(row).for_each(|(g, d)| *g += d);
        }
    }
}

/// The naive triple loop, kept as the reference the gemm wrapper is tested on.
#[allow(clippy::too_many_arguments)]
pub fn matmul_naive(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool, accumulate: bool) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for p in 0..k {
                let av = if trans_a { a[p * m + i] } else { a[i * k + p] };
                let bv = if trans_b { b[j * k + p] } else { b[p * n + j] };
                s += av as f64 * bv as f64;
            }
            let out = &mut c[i * n + j];
            *out = if accumulate { *out + s as f32 } else { s as f32 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::gradcheck::{check_gradient, project, random_vec};

    #[test]
    fn linear_backward_matches_finite_differences() {
        let (n, din, dout) = (5, 7, 3);
        let mut x = random_vec(n * din, 1);
        let mut w = random_vec(dout * din, 2);
        let mut b = random_vec(dout, 3);
        let r = random_vec(n * dout, 4);
        let f = |x: &[f32], w: &[f32], b: &[f32]| {
            let mut y = vec![0.0; n * dout];
            linear_fwd(&mut y, x, w, Some(b), n, din, dout);
            project(&y, &r)
        };
        let (mut dx, mut dw, mut db) = (vec![0.0; n * din], vec![0.0; dout * din], vec![0.0; dout]);
        linear_bwd(&mut dx, &mut dw, Some(&mut db), &r, &x, &w, n, din, dout, false);
        let (w0, b0) = (w.clone(), b.clone());
        let rep = check_gradient(&mut x, &dx, 1e-2, 100, |x| f(x, &w0, &b0));
        assert!(rep.rel_err() < 1e-3, "dx {rep:?}");
        let x0 = x.clone();
        let rep = check_gradient(&mut w, &dw, 1e-2, 100, |w| f(&x0, w, &b0));
        assert!(rep.rel_err() < 1e-3, "dw {rep:?}");
        let w0 = w.clone();
        let rep = check_gradient(&mut b, &db, 1e-2, 100, |b| f(&x0, &w0, b));
        assert!(rep.rel_err() < 1e-3, "db {rep:?}");
    }

    #[test]
    fn gemm_wrapper_matches_naive_for_every_transpose() {
        for &(m, k, n) in &[(3, 5, 7), (64, 33, 17), (1, 128, 9)] {
            for ta in [false, true] {
                for tb in [false, true] {
                    let a = random_vec(m * k, 1);
                    let b = random_vec(k * n, 2);
                    let mut c1 = random_vec(m * n, 3);
                    let mut c2 = c1.clone();
                    matmul(&mut c1, &a, &b, m, k, n, ta, tb, true);
                    matmul_naive(&mut c2, &a, &b, m, k, n, ta, tb, true);
                    for (x, y) in c1.iter().zip(&c2) {
                        assert!((x - y).abs() < 1e-4, "{m}x{k}x{n} ta={ta} tb={tb}: {x} vs {y}");
                    }
                }
            }
        }
    }
}
