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

/// The one raw `gemm` call: `c[m,n] (+)= a[m,k] · b[k,n]`, every operand
/// given by its (row stride, column stride).
///
/// # Safety
/// Every index the strides reach for the given shapes must be in bounds of
/// its buffer, and `c` must alias neither input.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_strided(
    (m, k, n): (usize, usize, usize),
    c: *mut f32,
    c_rs: isize,
    accumulate: bool,
    a: *const f32,
    (a_rs, a_cs): (isize, isize),
    b: *const f32,
    (b_rs, b_cs): (isize, isize),
    par: Parallelism,
) {
    // gemm computes dst = alpha·dst + beta·lhs·rhs, reading dst only when
    // asked to.
    gemm::gemm(m, n, k, c, 1, c_rs, accumulate, a, a_cs, a_rs, b, b_cs, b_rs, 1.0, 1.0, false, false, false, par);
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
    let a_strides = if trans_a { (1isize, m as isize) } else { (k as isize, 1) };
    let b_strides = if trans_b { (1isize, k as isize) } else { (n as isize, 1) };
    // SAFETY: the asserts above guarantee every index gemm touches is in
    // bounds for the given shapes and strides; c does not alias a or b
    // (guaranteed by the borrow checker).
    unsafe { gemm_strided((m, k, n), c.as_mut_ptr(), n as isize, accumulate, a.as_ptr(), a_strides, b.as_ptr(), b_strides, parallelism(m, n, k)) }
}

/// The shapes `linear_fwd` and `linear_fwd_row_invariant` require.
fn check_linear(y: &[f32], x: &[f32], w: &[f32], bias: Option<&[f32]>, n: usize, d_in: usize, d_out: usize) {
    assert_eq!(y.len(), n * d_out, "linear: y has {} values, want {n}x{d_out}", y.len());
    assert_eq!(x.len(), n * d_in, "linear: x has {} values, want {n}x{d_in}", x.len());
    assert_eq!(w.len(), d_out * d_in, "linear: w has {} values, want {d_out}x{d_in}", w.len());
    if let Some(b) = bias {
        assert_eq!(b.len(), d_out, "linear: the bias has {} values, want {d_out}", b.len());
    }
}

fn add_bias(y: &mut [f32], bias: Option<&[f32]>, d_out: usize) {
    let Some(b) = bias else { return };
    if d_out == 0 {
        return; // no columns (and chunks_mut(0) would panic)
    }
    for row in y.chunks_mut(d_out) {
        row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
    }
}

/// `y[n,out] = x[n,in] · W[out,in]^T (+ b)`, the PyTorch `nn.Linear` layout.
pub fn linear_fwd(y: &mut [f32], x: &[f32], w: &[f32], bias: Option<&[f32]>, n: usize, d_in: usize, d_out: usize) {
    check_linear(y, x, w, bias, n, d_in, d_out);
    matmul(y, x, w, n, d_in, d_out, false, true, false);
    add_bias(y, bias, d_out);
}

/// `y`'s base pointer, shared by the row-invariant product's block tasks,
/// which write disjoint blocks of it.
struct BlockTarget(*mut f32);
// SAFETY: the tasks sharing it write disjoint elements (see its use).
unsafe impl Send for BlockTarget {}
unsafe impl Sync for BlockTarget {}
impl BlockTarget {
    fn at(&self, offset: usize) -> *mut f32 {
        // SAFETY: callers pass offsets inside the buffer.
        unsafe { self.0.add(offset) }
    }
}

/// `linear_fwd` whose every output row depends on its own input row only,
/// never on how many rows are computed with it: the generation engine's
/// product, so that a sequence samples the same bits whether it decodes
/// alone or batched beside others (a batch's make-up depends on timing).
/// The `gemm` crate does not promise that across shapes: it takes other
/// paths and other blockings of the summed dimension for other row counts,
/// and a last-bit difference in a logit changes a sampled token now and then.
///
/// So every output comes from one and the same `gemm` call shape:
/// `[ROWS, d_in] · [d_in, COLS]` on one thread, over blocks of rows and
/// output columns. A full block writes straight into `y`; a block at an
/// edge is padded (zero rows, repeated weight rows, through scratch copies)
/// to the full shape and its extra outputs dropped. Within a call each
/// output is its own lane of the same instruction sequence over the summed
/// dimension, so where a row sits in its block does not matter either, nor
/// does the destination's row stride (tests check every place).
pub fn linear_fwd_row_invariant(y: &mut [f32], x: &[f32], w: &[f32], bias: Option<&[f32]>, n: usize, d_in: usize, d_out: usize) {
    use rayon::prelude::*;
    use std::borrow::Cow;
    const ROWS: usize = 8;
    const COLS: usize = 64;
    check_linear(y, x, w, bias, n, d_in, d_out);
    if n == 0 || d_out == 0 {
        return;
    }
    if d_in == 0 {
        y.iter_mut().for_each(|v| *v = 0.0);
    } else {
        let (row_blocks, col_blocks) = (n.div_ceil(ROWS), d_out.div_ceil(COLS));
        let target = BlockTarget(y.as_mut_ptr());
        // One block: y[r0.., c0..] = x[r0.., :] · w[c0.., :]^T.
        let block = |t: usize| {
            let (r0, c0) = ((t / col_blocks) * ROWS, (t % col_blocks) * COLS);
            let (rows, cols) = (ROWS.min(n - r0), COLS.min(d_out - c0));
            let x_rows = (d_in as isize, 1);
            let w_transposed = (1, d_in as isize);
            if rows == ROWS && cols == COLS {
                // SAFETY: x holds rows r0..r0+ROWS and w rows c0..c0+COLS
                // (asserted shapes); the destination, rows r0..r0+ROWS and
                // columns c0..c0+COLS of y at row stride d_out, lies in y
                // and belongs to this task alone (t is a distinct block);
                // y aliases neither input.
                unsafe {
                    gemm_strided(
                        (ROWS, d_in, COLS),
                        target.at(r0 * d_out + c0),
                        d_out as isize,
                        false,
                        x[r0 * d_in..].as_ptr(),
                        x_rows,
                        w[c0 * d_in..].as_ptr(),
                        w_transposed,
                        Parallelism::None,
                    )
                }
                return;
            }
            let xs: Cow<[f32]> = if rows == ROWS {
                Cow::Borrowed(&x[r0 * d_in..(r0 + ROWS) * d_in])
            } else {
                let mut p = vec![0.0f32; ROWS * d_in];
                p[..rows * d_in].copy_from_slice(&x[r0 * d_in..(r0 + rows) * d_in]);
                Cow::Owned(p)
            };
            let ws: Cow<[f32]> = if cols == COLS {
                Cow::Borrowed(&w[c0 * d_in..(c0 + COLS) * d_in])
            } else {
                let mut p = Vec::with_capacity(COLS * d_in);
                for j in 0..COLS {
                    let src = c0 + j.min(cols - 1);
                    p.extend_from_slice(&w[src * d_in..(src + 1) * d_in]);
                }
                Cow::Owned(p)
            };
            let mut out = [0.0f32; ROWS * COLS];
            // SAFETY: out is [ROWS, COLS], xs [ROWS, d_in], ws [COLS, d_in]
            // read as its transpose; out aliases neither input.
            unsafe { gemm_strided((ROWS, d_in, COLS), out.as_mut_ptr(), COLS as isize, false, xs.as_ptr(), x_rows, ws.as_ptr(), w_transposed, Parallelism::None) }
            for (i, part) in out.chunks(COLS).take(rows).enumerate() {
                // SAFETY: row r0+i < n and columns c0..c0+cols <= d_out lie
                // in y, inside this task's block.
                unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), target.at((r0 + i) * d_out + c0), cols) }
            }
        };
        let tasks = row_blocks * col_blocks;
        if n * d_in * d_out < 1 << 20 {
            (0..tasks).for_each(block);
        } else {
            (0..tasks).into_par_iter().for_each(block);
        }
    }
    add_bias(y, bias, d_out);
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
        // Every row count up to 13 (one and two blocks of 8 rows, every place
        // in a block), outputs in one block, in several, and with a padded
        // last block, the tiny model's shapes among them.
        for (din, dout) in [(133, 70), (128, 64), (384, 128), (64, 200)] {
            row_invariance_at(din, dout);
        }
    }

    fn row_invariance_at(din: usize, dout: usize) {
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
