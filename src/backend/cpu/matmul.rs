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

/// `linear_fwd` whose every output row depends on its own input row only,
/// never on how many rows are computed with it: the generation engine's
/// product, so that a sequence samples the same tokens whether it decodes
/// alone or batched beside others (a batch's make-up depends on timing).
/// The `gemm` crate does not promise that: it takes other paths and other
/// blockings of the summed dimension for other row counts, and a last-bit
/// difference in a logit changes a sampled token now and then.
///
/// Each output is one dot product in a fixed order: 8 lanes over the summed
/// dimension (the tail onto lanes 0..), then a fixed pairwise sum of the
/// lanes, then the bias. Work goes out in blocks of 4 rows × 4 outputs (a
/// block's edge repeats its last row or output and drops the copies, so
/// every output runs the same arithmetic), the outputs split over threads.
pub fn linear_fwd_row_invariant(y: &mut [f32], x: &[f32], w: &[f32], bias: Option<&[f32]>, n: usize, d_in: usize, d_out: usize) {
    use rayon::prelude::*;
    assert_eq!(y.len(), n * d_out, "linear: y has {} values, want {n}x{d_out}", y.len());
    assert_eq!(x.len(), n * d_in, "linear: x has {} values, want {n}x{d_in}", x.len());
    assert_eq!(w.len(), d_out * d_in, "linear: w has {} values, want {d_out}x{d_in}", w.len());
    if let Some(b) = bias {
        assert_eq!(b.len(), d_out, "linear: the bias has {} values, want {d_out}", b.len());
    }
    if n == 0 || d_out == 0 {
        return;
    }
    // Outputs per task: enough work per task at small n, a few tasks per thread.
    const COLS: usize = 64;
    let row = |r: usize| &x[r * d_in..(r + 1) * d_in];
    let wrow = |j: usize| &w[j * d_in..(j + 1) * d_in];
    let task = |t: usize| {
        let (j0, j1) = (t * COLS, ((t + 1) * COLS).min(d_out));
        let mut out = vec![0.0f32; n * (j1 - j0)];
        for r0 in (0..n).step_by(4) {
            let rs: [usize; 4] = std::array::from_fn(|i| (r0 + i).min(n - 1));
            for c0 in (j0..j1).step_by(4) {
                let cs: [usize; 4] = std::array::from_fn(|i| (c0 + i).min(j1 - 1));
                let d = dots_4x4(rs.map(row), cs.map(wrow), d_in);
                for (i, &r) in rs.iter().enumerate().take(n - r0) {
                    for (k, &j) in cs.iter().enumerate().take(j1 - c0) {
                        out[r * (j1 - j0) + (j - j0)] = d[i][k];
                    }
                }
            }
        }
        (j0, out)
    };
    // Small products run on this thread (the same arithmetic per output).
    let tasks = d_out.div_ceil(COLS);
    let parts: Vec<(usize, Vec<f32>)> = if n * d_in * d_out < 1 << 18 { (0..tasks).map(task).collect() } else { (0..tasks).into_par_iter().map(task).collect() };
    for (j0, out) in parts {
        let width = out.len() / n;
        for (r, part) in out.chunks(width).enumerate() {
            y[r * d_out + j0..r * d_out + j0 + width].copy_from_slice(part);
        }
    }
    if let Some(b) = bias {
        for yr in y.chunks_mut(d_out) {
            yr.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
    }
}

/// The 16 dot products of 4 rows of x with 4 rows of W, each in the fixed
/// order `linear_fwd_row_invariant` states.
#[inline(always)]
fn dots_4x4(x: [&[f32]; 4], w: [&[f32]; 4], k: usize) -> [[f32; 4]; 4] {
    const LANES: usize = 8;
    let mut acc = [[[0.0f32; LANES]; 4]; 4];
    let full = k / LANES * LANES;
    let mut i = 0;
    while i < full {
        let xs: [&[f32]; 4] = x.map(|r| &r[i..i + LANES]);
        for (c, wr) in w.iter().enumerate() {
            let wc = &wr[i..i + LANES];
            for r in 0..4 {
                for l in 0..LANES {
                    acc[r][c][l] += xs[r][l] * wc[l];
                }
            }
        }
        i += LANES;
    }
    let mut out = [[0.0f32; 4]; 4];
    for r in 0..4 {
        for c in 0..4 {
            let a = &mut acc[r][c];
            for (l, idx) in (full..k).enumerate() {
                a[l] += x[r][idx] * w[c][idx];
            }
            out[r][c] = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
        }
    }
    out
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
    fn row_invariant_linear_rows_do_not_depend_on_their_batch() {
        // d_in with a tail past the 8 lanes, d_out over two tasks and not a
        // multiple of the 4-wide blocks, every row count up to 13.
        let (din, dout) = (133, 70);
        let x = random_vec(13 * din, 5);
        let w = random_vec(dout * din, 6);
        let b = random_vec(dout, 7);
        let alone: Vec<Vec<f32>> = (0..13)
            .map(|r| {
                let mut y = vec![0.0; dout];
                linear_fwd_row_invariant(&mut y, &x[r * din..(r + 1) * din], &w, Some(&b), 1, din, dout);
                y
            })
            .collect();
        for n in 1..=13 {
            let mut y = vec![f32::NAN; n * dout];
            linear_fwd_row_invariant(&mut y, &x[..n * din], &w, Some(&b), n, din, dout);
            let mut want = vec![0.0; n * dout];
            linear_fwd(&mut want, &x[..n * din], &w, Some(&b), n, din, dout);
            for r in 0..n {
                let row = &y[r * dout..(r + 1) * dout];
                assert!(row.iter().zip(&alone[r]).all(|(a, b)| a.to_bits() == b.to_bits()), "n {n}: row {r} differs from the row computed alone");
                for (a, b) in row.iter().zip(&want[r * dout..(r + 1) * dout]) {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "n {n} row {r}: {a} vs gemm's {b}");
                }
            }
        }
        // Rows that hold the same input give the same bits wherever they sit.
        let mut twice = x[..din].to_vec();
        twice.extend_from_slice(&x[..din]);
        let mut y = vec![0.0; 2 * dout];
        linear_fwd_row_invariant(&mut y, &twice, &w, None, 2, din, dout);
        assert_eq!(y[..dout].iter().map(|v| v.to_bits()).collect::<Vec<_>>(), y[dout..].iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }

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
