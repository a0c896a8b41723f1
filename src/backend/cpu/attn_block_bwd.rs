//! Backward of the ring-attention building block: one query block against one
//! key/value block, given the FINAL (global) log-sum-exp and D = rowsum(dO∘O)
//! of the query rows. It is the reference for the GPU `attn_block_bwd`.
//!
//! Design: with the global LSE, P = exp(scale·q·k − LSE) of a block is exactly
//! the slice of the full softmax that falls in it, so the block's dQ, dK, dV
//! are partial sums that add up over blocks to the full-sequence gradients
//! (dQ over key blocks, dK/dV over query blocks); no rescaling is needed.
//! Visibility follows the issue-8 ring convention: with `causal`, key j is
//! visible to query i iff k_pos0 + j <= q_pos0 + i. Rows whose LSE is −inf
//! (no visible key anywhere) contribute nothing. Written plainly, parallel
//! over query rows (dQ) and key rows (dK, dV), each summing in a fixed order.

use super::attention::{dot, AttnShape};
use rayon::prelude::*;

/// `q`, `dout`: `[lq, heads, hd]`; `k`, `v`: `[lk, kv_heads, hd]`; `lse`,
/// `delta`: `[lq, heads]`. `dq` (like `q`), `dk`, `dv` (like `k`) are overwritten.
#[allow(clippy::too_many_arguments)]
pub fn attn_block_bwd(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lse: &[f32],
    delta: &[f32],
    q_pos0: usize,
    k_pos0: usize,
    causal: bool,
    s: AttnShape,
) {
    let (qw, kvw, d, grp) = (s.heads * s.head_dim, s.kv_heads * s.head_dim, s.head_dim, s.group());
    let scale = s.scale();
    let (lq, lk) = (q.len() / qw, k.len() / kvw);
    let visible = |i: usize, j: usize| !causal || k_pos0 + j <= q_pos0 + i;
    // (P, dS) of query i, head h, key j.
    let pds = |i: usize, h: usize, j: usize| -> (f32, f32) {
        let l = lse[i * s.heads + h];
        if !visible(i, j) || l == f32::NEG_INFINITY {
            return (0.0, 0.0);
        }
        let g = h / grp;
        let (qr, dor) = (&q[i * qw + h * d..i * qw + (h + 1) * d], &dout[i * qw + h * d..i * qw + (h + 1) * d]);
        let (kr, vr) = (&k[j * kvw + g * d..j * kvw + (g + 1) * d], &v[j * kvw + g * d..j * kvw + (g + 1) * d]);
        let p = (dot(qr, kr) * scale - l).exp();
        (p, p * (dot(dor, vr) - delta[i * s.heads + h]))
    };
    dq.par_chunks_mut(qw).enumerate().for_each(|(i, row)| {
        row.iter_mut().for_each(|x| *x = 0.0);
        for h in 0..s.heads {
            let g = h / grp;
            for j in 0..lk {
                let c = pds(i, h, j).1 * scale;
                if c != 0.0 {
                    row[h * d..(h + 1) * d].iter_mut().zip(&k[j * kvw + g * d..j * kvw + (g + 1) * d]).for_each(|(a, x)| *a += c * x);
                }
            }
        }
    });
    dk.par_chunks_mut(kvw).zip(dv.par_chunks_mut(kvw)).enumerate().for_each(|(j, (dkr, dvr))| {
        dkr.iter_mut().for_each(|x| *x = 0.0);
        dvr.iter_mut().for_each(|x| *x = 0.0);
        for g in 0..s.kv_heads {
            for h in g * grp..(g + 1) * grp {
                for i in 0..lq {
                    let (p, ds) = pds(i, h, j);
                    if p == 0.0 {
                        continue;
                    }
                    let c = ds * scale;
                    let (qr, dor) = (&q[i * qw + h * d..i * qw + (h + 1) * d], &dout[i * qw + h * d..i * qw + (h + 1) * d]);
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
    use crate::backend::cpu::attention::{attention_bwd, attention_fwd};
    use crate::backend::cpu::gradcheck::random_vec;

    #[test]
    fn block_partials_add_up_to_the_full_sequence_gradients() {
        // One 13-token sequence cut into query blocks [0,6), [6,13) and the
        // same key blocks: the four causal block backwards, with the global
        // LSE and D, sum to attention_bwd.
        let s = AttnShape { heads: 4, kv_heads: 2, head_dim: 8 };
        let (n, qw, kvw) = (13, 32, 16);
        let q = random_vec(n * qw, 1).iter().map(|x| 2.0 * x).collect::<Vec<_>>();
        let (k, v, dout) = (random_vec(n * kvw, 2), random_vec(n * kvw, 3), random_vec(n * qw, 4));
        let (mut o, mut lse) = (vec![0.0; n * qw], vec![0.0; n * 4]);
        attention_fwd(&mut o, &mut lse, &q, &k, &v, &[0..n], s);
        let delta: Vec<f32> = (0..n * 4).map(|r| dot(&dout[r * 8..(r + 1) * 8], &o[r * 8..(r + 1) * 8])).collect();
        let (mut dq, mut dk, mut dv) = (vec![0.0; n * qw], vec![0.0; n * kvw], vec![0.0; n * kvw]);
        attention_bwd(&mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &o, &lse, &[0..n], s);
        let blocks = [0..6, 6..13];
        let (mut sq, mut sk, mut sv) = (vec![0.0f32; n * qw], vec![0.0f32; n * kvw], vec![0.0f32; n * kvw]);
        for qb in &blocks {
            for kb in &blocks {
                let (lq, lk) = (qb.len(), kb.len());
                let (mut bq, mut bk, mut bv) = (vec![0.0; lq * qw], vec![0.0; lk * kvw], vec![0.0; lk * kvw]);
                let qs = qb.start * qw..qb.end * qw;
                let ks = kb.start * kvw..kb.end * kvw;
                let ls = qb.start * 4..qb.end * 4;
                attn_block_bwd(&mut bq, &mut bk, &mut bv, &dout[qs.clone()], &q[qs.clone()], &k[ks.clone()], &v[ks.clone()], &lse[ls.clone()], &delta[ls], qb.start, kb.start, true, s);
                sq[qs].iter_mut().zip(&bq).for_each(|(a, b)| *a += b);
                sk[ks.clone()].iter_mut().zip(&bk).for_each(|(a, b)| *a += b);
                sv[ks].iter_mut().zip(&bv).for_each(|(a, b)| *a += b);
            }
        }
        for (name, got, want) in [("dq", &sq, &dq), ("dk", &sk, &dk), ("dv", &sv, &dv)] {
            let err = got.iter().zip(want.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(err < 1e-5, "{name}: {err}");
        }
        // The key block after the query block sees nothing: zero gradients.
        let (mut bq, mut bk, mut bv) = (vec![1.0; 6 * qw], vec![1.0; 7 * kvw], vec![1.0; 7 * kvw]);
        attn_block_bwd(&mut bq, &mut bk, &mut bv, &dout[..6 * qw], &q[..6 * qw], &k[6 * kvw..], &v[6 * kvw..], &lse[..24], &delta[..24], 0, 6, true, s);
        assert!(bq.iter().chain(&bk).chain(&bv).all(|x| *x == 0.0));
        // Without the causal flag the same block contributes.
        attn_block_bwd(&mut bq, &mut bk, &mut bv, &dout[..6 * qw], &q[..6 * qw], &k[6 * kvw..], &v[6 * kvw..], &lse[..24], &delta[..24], 0, 6, false, s);
        assert!(bv.iter().any(|x| *x != 0.0));
    }

    #[test]
    fn rows_with_minus_infinite_lse_contribute_nothing() {
        let s = AttnShape { heads: 1, kv_heads: 1, head_dim: 4 };
        let (q, k, v, dout) = (random_vec(8, 1), random_vec(12, 2), random_vec(12, 3), random_vec(8, 4));
        let (mut dq, mut dk, mut dv) = (vec![0.0; 8], vec![0.0; 12], vec![0.0; 12]);
        attn_block_bwd(&mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &[f32::NEG_INFINITY; 2], &[0.0; 2], 0, 0, false, s);
        assert!(dq.iter().chain(&dk).chain(&dv).all(|x| *x == 0.0 && x.is_finite()));
    }
}
