//! Per-token log-probability and entropy of the next token, computed over
//! vocabulary chunks without ever holding a `[tokens × vocab]` logits matrix.
//!
//! Why: at 128k tokens and a 152k vocabulary, full logits are 40–80 GB. This
//! is the algorithm the fused GPU loss kernel implements: for each tile of
//! rows and chunk of the vocabulary, one GEMM gives the chunk's logits, and an
//! online log-sum-exp folds them into three running numbers per row (max,
//! Σ e^(z−m), Σ e^(z−m)·z). The backward recomputes each chunk's logits from
//! the saved log-sum-exp. `logprob_entropy_naive` is the plain full-softmax
//! version, kept as the reference the chunked path is tested against.

use super::matmul::matmul;
use rayon::prelude::*;

/// Rows per tile: bounds the scratch logits to `ROW_TILE × chunk` floats.
const ROW_TILE: usize = 256;

/// What the forward returns, per token.
#[derive(Clone, Debug, Default)]
pub struct TokenLogprobs {
    pub logprob: Vec<f32>,
    pub entropy: Vec<f32>,
    /// Log-sum-exp of the logits, saved for the backward.
    pub lse: Vec<f32>,
}

/// `hidden`: `[n, d]`; `w` (the LM head): `[vocab, d]`; `targets`: `[n]`.
pub fn logprob_entropy_fwd(hidden: &[f32], w: &[f32], targets: &[u32], d: usize, vocab: usize, chunk: usize) -> TokenLogprobs {
    let n = targets.len();
    let chunk = chunk.clamp(1, vocab.max(1));
    let mut out = TokenLogprobs { logprob: vec![0.0; n], entropy: vec![0.0; n], lse: vec![0.0; n] };
    let mut logits = vec![0.0f32; ROW_TILE.min(n.max(1)) * chunk];
    for r0 in (0..n).step_by(ROW_TILE) {
        let rows = ROW_TILE.min(n - r0);
        let h = &hidden[r0 * d..(r0 + rows) * d];
        // Running (max, Σ e^(z−m), Σ e^(z−m)·z, target logit) per row.
        let mut state = vec![(f32::NEG_INFINITY, 0.0f32, 0.0f32, 0.0f32); rows];
        for v0 in (0..vocab).step_by(chunk) {
            let c = chunk.min(vocab - v0);
            let z = &mut logits[..rows * c];
            matmul(z, h, &w[v0 * d..(v0 + c) * d], rows, d, c, false, true, false);
            state.par_iter_mut().zip(z.par_chunks(c)).enumerate().for_each(|(i, (st, zr))| {
                let cm = zr.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let m = st.0.max(cm);
                let rescale = (st.0 - m).exp();
                let (mut s, mut t) = (st.1 * rescale, st.2 * rescale);
                for &zv in zr {
                    let e = (zv - m).exp();
                    s += e;
                    t += e * zv;
                }
                let y = targets[r0 + i] as usize;
                let tz = if (v0..v0 + c).contains(&y) { zr[y - v0] } else { st.3 };
                *st = (m, s, t, tz);
            });
        }
        for (i, &(m, s, t, tz)) in state.iter().enumerate() {
            let lse = m + s.ln();
            out.lse[r0 + i] = lse;
            out.logprob[r0 + i] = tz - lse;
            out.entropy[r0 + i] = lse - t / s;
        }
    }
    out
}

/// Backward: given d loss / d logprob and d loss / d entropy per token,
/// add to `dhidden` (`[n, d]`) and `dw` (`[vocab, d]`).
#[allow(clippy::too_many_arguments)]
pub fn logprob_entropy_bwd(
    dhidden: &mut [f32],
    dw: &mut [f32],
    g_logprob: &[f32],
    g_entropy: &[f32],
    fwd: &TokenLogprobs,
    hidden: &[f32],
    w: &[f32],
    targets: &[u32],
    d: usize,
    vocab: usize,
    chunk: usize,
) {
    let n = targets.len();
    let chunk = chunk.clamp(1, vocab.max(1));
    let mut logits = vec![0.0f32; ROW_TILE.min(n.max(1)) * chunk];
    for r0 in (0..n).step_by(ROW_TILE) {
        let rows = ROW_TILE.min(n - r0);
        let h = &hidden[r0 * d..(r0 + rows) * d];
        for v0 in (0..vocab).step_by(chunk) {
            let c = chunk.min(vocab - v0);
            let wc = &w[v0 * d..(v0 + c) * d];
            let z = &mut logits[..rows * c];
            matmul(z, h, wc, rows, d, c, false, true, false);
            // z ← dL/dz = g_lp·(1[v=y] − p) − g_ent·p·(z − E[z])
            z.par_chunks_mut(c).enumerate().for_each(|(i, zr)| {
                let t = r0 + i;
                let (gl, ge, lse) = (g_logprob[t], g_entropy[t], fwd.lse[t]);
                let ez = lse - fwd.entropy[t];
                let y = targets[t] as usize;
                for (j, zv) in zr.iter_mut().enumerate() {
                    let p = (*zv - lse).exp();
                    let onehot = if v0 + j == y { 1.0 } else { 0.0 };
                    *zv = gl * (onehot - p) - ge * p * (*zv - ez);
                }
            });
            let dz = &logits[..rows * c];
            matmul(&mut dhidden[r0 * d..(r0 + rows) * d], dz, wc, rows, c, d, false, false, true);
            matmul(&mut dw[v0 * d..(v0 + c) * d], dz, h, c, rows, d, true, false, true);
        }
    }
}

/// Full logits `[n, vocab]` (for `score` and tests; avoid on long inputs).
pub fn logits_full(hidden: &[f32], w: &[f32], n: usize, d: usize, vocab: usize) -> Vec<f32> {
    let mut z = vec![0.0; n * vocab];
    matmul(&mut z, hidden, w, n, d, vocab, false, true, false);
    z
}

/// Reference: log-softmax over full logit rows, in f64.
pub fn logprob_entropy_naive(logits: &[f32], targets: &[u32], vocab: usize) -> (Vec<f32>, Vec<f32>) {
    let mut lp = vec![];
    let mut ent = vec![];
    for (row, &y) in logits.chunks(vocab).zip(targets) {
        let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let s: f64 = row.iter().map(|&z| (z as f64 - m).exp()).sum();
        let lse = m + s.ln();
        lp.push((row[y as usize] as f64 - lse) as f32);
        let h: f64 = row.iter().map(|&z| { let l = z as f64 - lse; -l.exp() * l }).sum();
        ent.push(h as f32);
    }
    (lp, ent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::gradcheck::*;

    fn data(n: usize, d: usize, v: usize) -> (Vec<f32>, Vec<f32>, Vec<u32>) {
        let h: Vec<f32> = random_vec(n * d, 1).iter().map(|x| 2.0 * x).collect();
        let w = random_vec(v * d, 2);
        let t = (0..n).map(|i| ((i * 37 + 11) % v) as u32).collect();
        (h, w, t)
    }

    #[test]
    fn chunked_equals_naive_for_every_chunk_size() {
        let (n, d, v) = (300, 16, 97);
        let (h, w, t) = data(n, d, v);
        let (lp0, e0) = logprob_entropy_naive(&logits_full(&h, &w, n, d, v), &t, v);
        for chunk in [1, 7, 32, 97, 1000] {
            let r = logprob_entropy_fwd(&h, &w, &t, d, v, chunk);
            for i in 0..n {
                assert!((r.logprob[i] - lp0[i]).abs() < 1e-5, "chunk {chunk} row {i}: {} vs {}", r.logprob[i], lp0[i]);
                assert!((r.entropy[i] - e0[i]).abs() < 1e-5, "chunk {chunk} row {i} entropy");
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (n, d, v) = (6, 8, 23);
        let (mut h, mut w, t) = data(n, d, v);
        let gl = random_vec(n, 5);
        let ge = random_vec(n, 6);
        let loss = |h: &[f32], w: &[f32]| {
            let r = logprob_entropy_fwd(h, w, &t, d, v, 5);
            project(&r.logprob, &gl) + project(&r.entropy, &ge)
        };
        let f = logprob_entropy_fwd(&h, &w, &t, d, v, 5);
        let mut dh = vec![0.0; n * d];
        let mut dw = vec![0.0; v * d];
        logprob_entropy_bwd(&mut dh, &mut dw, &gl, &ge, &f, &h, &w, &t, d, v, 5);
        let w0 = w.clone();
        let rep = check_gradient(&mut h, &dh, 1e-3, 100, |h| loss(h, &w0));
        assert!(rep.rel_err() < 2e-3, "dh {rep:?}");
        let h0 = h.clone();
        let rep = check_gradient(&mut w, &dw, 1e-3, 200, |w| loss(&h0, w));
        assert!(rep.rel_err() < 2e-3, "dw {rep:?}");
    }
}
