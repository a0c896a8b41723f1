//! Causal grouped-query attention, forward and backward, over packed
//! variable-length sequences.
//!
//! Design: the same algorithm the flash-attention kernels use, written plainly.
//! The forward keeps only the output and the per-row log-sum-exp; the
//! backward recomputes the probabilities from it. Several sequences share one
//! packed buffer (`seqs` holds their ranges) with no attention across them.
//! Query rows run in parallel for the forward and dQ; dK and dV run in
//! parallel over key rows, each summing its queries in a fixed order, so
//! results are reproducible bit for bit.

use rayon::prelude::*;
use std::ops::Range;

#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
    pub fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One query row of one head against keys `keys` of `k`/`v` (`[_, kv_heads,
/// head_dim]`, kv head `g`). Writes the output row and returns the
/// log-sum-exp of the scaled scores. `scores` is scratch.
#[allow(clippy::too_many_arguments)]
pub fn attend_row(
    out: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    keys: Range<usize>,
    g: usize,
    s: AttnShape,
    scores: &mut Vec<f32>,
) -> f32 {
    let (d, kvw) = (s.head_dim, s.kv_heads * s.head_dim);
    let scale = s.scale();
    scores.clear();
    let mut m = f32::NEG_INFINITY;
    for j in keys.clone() {
        let sc = dot(q, &k[j * kvw + g * d..j * kvw + (g + 1) * d]) * scale;
        m = m.max(sc);
        scores.push(sc);
    }
    let mut sum = 0.0f32;
    for sc in scores.iter_mut() {
        *sc = (*sc - m).exp();
        sum += *sc;
    }
    out.iter_mut().for_each(|o| *o = 0.0);
    let inv = 1.0 / sum;
    for (jj, j) in keys.enumerate() {
        let p = scores[jj] * inv;
        let vr = &v[j * kvw + g * d..j * kvw + (g + 1) * d];
        out.iter_mut().zip(vr).for_each(|(o, x)| *o += p * x);
    }
    m + sum.ln()
}

/// Per-token index of the first key it may attend to (its sequence's start).
fn seq_starts(seqs: &[Range<usize>], n: usize) -> (Vec<usize>, Vec<usize>) {
    let mut begin = vec![0; n];
    let mut end = vec![0; n];
    for r in seqs {
        for t in r.clone() {
            begin[t] = r.start;
            end[t] = r.end;
        }
    }
    (begin, end)
}

/// `q`: `[n, heads, hd]`; `k`, `v`: `[n, kv_heads, hd]`; `out`: like `q`;
/// `lse`: `[n, heads]`. Token `t` of range `r` attends to `r.start..=t`.
pub fn attention_fwd(out: &mut [f32], lse: &mut [f32], q: &[f32], k: &[f32], v: &[f32], seqs: &[Range<usize>], s: AttnShape) {
    let (qw, d) = (s.heads * s.head_dim, s.head_dim);
    let n = q.len() / qw;
    let (begin, _) = seq_starts(seqs, n);
    out.par_chunks_mut(qw)
        .zip(lse.par_chunks_mut(s.heads))
        .enumerate()
        .for_each_init(Vec::new, |scores, (t, (orow, lrow))| {
            for h in 0..s.heads {
                let qr = &q[t * qw + h * d..t * qw + (h + 1) * d];
                lrow[h] = attend_row(&mut orow[h * d..(h + 1) * d], qr, k, v, begin[t]..t + 1, h / s.group(), s, scores);
            }
        });
}

/// Backward of `attention_fwd`. `dq`, `dk`, `dv` are overwritten.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    seqs: &[Range<usize>],
    s: AttnShape,
) {
    let (qw, kvw, d, grp) = (s.heads * s.head_dim, s.kv_heads * s.head_dim, s.head_dim, s.group());
    let scale = s.scale();
    let n = q.len() / qw;
    let (begin, end) = seq_starts(seqs, n);
    // D[t, h] = dO · O
    let delta: Vec<f32> = (0..n * s.heads)
        .into_par_iter()
        .map(|i| dot(&dout[i * d..(i + 1) * d], &out[i * d..(i + 1) * d]))
        .collect();
    let prob = |t: usize, h: usize, j: usize| -> f32 {
        let qr = &q[t * qw + h * d..t * qw + (h + 1) * d];
        let g = h / grp;
        (dot(qr, &k[j * kvw + g * d..j * kvw + (g + 1) * d]) * scale - lse[t * s.heads + h]).exp()
    };
    // dS[t,h,j] = P (dO_t · v_j − D[t,h])
    let ds = |t: usize, h: usize, j: usize| -> (f32, f32) {
        let p = prob(t, h, j);
        let g = h / grp;
        let dp = dot(&dout[t * qw + h * d..t * qw + (h + 1) * d], &v[j * kvw + g * d..j * kvw + (g + 1) * d]);
        (p, p * (dp - delta[t * s.heads + h]))
    };
    dq.par_chunks_mut(qw).enumerate().for_each(|(t, row)| {
        row.iter_mut().for_each(|x| *x = 0.0);
        for h in 0..s.heads {
            let g = h / grp;
            let acc = &mut row[h * d..(h + 1) * d];
            for j in begin[t]..=t {
                let (_, dsv) = ds(t, h, j);
                let c = dsv * scale;
                acc.iter_mut().zip(&k[j * kvw + g * d..j * kvw + (g + 1) * d]).for_each(|(a, x)| *a += c * x);
            }
        }
    });
    dk.par_chunks_mut(kvw).zip(dv.par_chunks_mut(kvw)).enumerate().for_each(|(j, (dkr, dvr))| {
        dkr.iter_mut().for_each(|x| *x = 0.0);
        dvr.iter_mut().for_each(|x| *x = 0.0);
        for g in 0..s.kv_heads {
            for h in g * grp..(g + 1) * grp {
                for t in j..end[j] {
                    let (p, dsv) = ds(t, h, j);
                    let c = dsv * scale;
                    let qr = &q[t * qw + h * d..t * qw + (h + 1) * d];
                    let dor = &dout[t * qw + h * d..t * qw + (h + 1) * d];
                    dkr[g * d..(g + 1) * d].iter_mut().zip(qr).for_each(|(a, x)| *a += c * x);
                    dvr[g * d..(g + 1) * d].iter_mut().zip(dor).for_each(|(a, x)| *a += p * x);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::gradcheck::*;

    fn shape() -> AttnShape {
        AttnShape { heads: 4, kv_heads: 2, head_dim: 8 }
    }

    #[test]
    fn attention_backward_matches_finite_differences() {
        let s = shape();
        let seqs = vec![0..5, 5..12];
        let n = 12;
        let mut q = random_vec(n * 32, 1);
        let mut k = random_vec(n * 16, 2);
        let mut v = random_vec(n * 16, 3);
        let r = random_vec(n * 32, 4);
        let fwd = |q: &[f32], k: &[f32], v: &[f32]| {
            let mut o = vec![0.0; n * 32];
            let mut l = vec![0.0; n * 4];
            attention_fwd(&mut o, &mut l, q, k, v, &seqs, s);
            (o, l)
        };
        let (o, l) = fwd(&q, &k, &v);
        let (mut dq, mut dk, mut dv) = (vec![0.0; n * 32], vec![0.0; n * 16], vec![0.0; n * 16]);
        attention_bwd(&mut dq, &mut dk, &mut dv, &r, &q, &k, &v, &o, &l, &seqs, s);
        let (k0, v0) = (k.clone(), v.clone());
        let rep = check_gradient(&mut q, &dq, 1e-3, 200, |q| project(&fwd(q, &k0, &v0).0, &r));
        assert!(rep.rel_err() < 2e-3, "dq {rep:?}");
        let q0 = q.clone();
        let rep = check_gradient(&mut k, &dk, 1e-3, 200, |k| project(&fwd(&q0, k, &v0).0, &r));
        assert!(rep.rel_err() < 2e-3, "dk {rep:?}");
        let k0 = k.clone();
        let rep = check_gradient(&mut v, &dv, 1e-3, 200, |v| project(&fwd(&q0, &k0, v).0, &r));
        assert!(rep.rel_err() < 2e-3, "dv {rep:?}");
    }

    #[test]
    fn sequences_do_not_see_each_other() {
        let s = shape();
        let n = 10;
        let q = random_vec(n * 32, 1);
        let k = random_vec(n * 16, 2);
        let mut v = random_vec(n * 16, 3);
        let mut o1 = vec![0.0; n * 32];
        let mut l = vec![0.0; n * 4];
        attention_fwd(&mut o1, &mut l, &q, &k, &v, &[0..4, 4..10], s);
        // Changing the first sequence's values leaves the second's output alone.
        v[..4 * 16].iter_mut().for_each(|x| *x += 1.0);
        let mut o2 = vec![0.0; n * 32];
        attention_fwd(&mut o2, &mut l, &q, &k, &v, &[0..4, 4..10], s);
        assert_eq!(o1[4 * 32..], o2[4 * 32..]);
        assert_ne!(o1[..4 * 32], o2[..4 * 32]);
    }
}
