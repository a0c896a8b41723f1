//! The ring-attention building block on the CPU: one query block against one
//! key/value block, returning the fp32 output and log-sum-exp of that pair.
//!
//! Design: a thin layer over `attention::attend_row`, so it computes exactly
//! what the packed attention computes, restricted to the keys of one block.
//! Blocks carry global positions (`q_pos0`, `k_pos0`); with `causal`, key j is
//! visible to query i iff `k_pos0 + j <= q_pos0 + i`. A row that sees no key
//! of the block gets O = 0 and LSE = -inf, the neutral element of the merge
//! of (out, lse) pairs, so a ring step over a block entirely in the future
//! contributes nothing. It is the reference of the `attn_block_fwd` kernels.

use super::attention::{attend_row, AttnShape};
use rayon::prelude::*;

/// Keys `0..visible_keys(..)` of the block are visible to query `i`.
pub fn visible_keys(i: usize, lk: usize, q_pos0: usize, k_pos0: usize, causal: bool) -> usize {
    if !causal {
        return lk;
    }
    // k_pos0 + j <= q_pos0 + i  <=>  j < q_pos0 + i + 1 - k_pos0
    (q_pos0 + i + 1).saturating_sub(k_pos0).min(lk)
}

/// `q`: `[lq, heads, hd]`; `k`, `v`: `[lk, kv_heads, hd]`; `out`: like `q`;
/// `lse`: `[lq, heads]` (natural log). `lq`, `lk` come from the slices.
#[allow(clippy::too_many_arguments)]
pub fn attention_block_fwd(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q_pos0: usize,
    k_pos0: usize,
    causal: bool,
    s: AttnShape,
) {
    let (qw, d) = (s.heads * s.head_dim, s.head_dim);
    let lk = k.len() / (s.kv_heads * d);
    out.par_chunks_mut(qw)
        .zip(lse.par_chunks_mut(s.heads))
        .enumerate()
        .for_each_init(Vec::new, |scores, (i, (orow, lrow))| {
            let nk = visible_keys(i, lk, q_pos0, k_pos0, causal);
            for h in 0..s.heads {
                let o = &mut orow[h * d..(h + 1) * d];
                if nk == 0 {
                    o.iter_mut().for_each(|x| *x = 0.0);
                    lrow[h] = f32::NEG_INFINITY;
                    continue;
                }
                let qr = &q[i * qw + h * d..i * qw + (h + 1) * d];
                lrow[h] = attend_row(o, qr, k, v, 0..nk, h / s.group(), s, scores);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::attention::attention_fwd;
    use crate::backend::cpu::gradcheck::random_vec;

    const S: AttnShape = AttnShape { heads: 4, kv_heads: 2, head_dim: 8 };

    /// Merge two partial results of the same queries (the ring's fp32 merge).
    fn merge(o1: &[f32], l1: &[f32], o2: &[f32], l2: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let d = S.head_dim;
        let mut o = vec![0.0; o1.len()];
        let mut l = vec![0.0; l1.len()];
        for r in 0..l1.len() {
            let m = l1[r].max(l2[r]);
            let (w1, w2) = if m == f32::NEG_INFINITY { (0.0, 0.0) } else { ((l1[r] - m).exp(), (l2[r] - m).exp()) };
            l[r] = if m == f32::NEG_INFINITY { m } else { m + (w1 + w2).ln() };
            let (a, b) = if m == f32::NEG_INFINITY { (0.0, 0.0) } else { (w1 / (w1 + w2), w2 / (w1 + w2)) };
            for c in 0..d {
                o[r * d + c] = a * o1[r * d + c] + b * o2[r * d + c];
            }
        }
        (o, l)
    }

    fn close(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| if x == y { 0.0 } else { (x - y).abs() }).fold(0.0, f32::max)
    }

    #[test]
    fn visibility_follows_global_positions() {
        assert_eq!(visible_keys(0, 10, 5, 5, true), 1);
        assert_eq!(visible_keys(3, 10, 5, 5, true), 4);
        assert_eq!(visible_keys(0, 10, 0, 20, true), 0);
        assert_eq!(visible_keys(0, 10, 100, 0, true), 10);
        assert_eq!(visible_keys(0, 10, 0, 20, false), 10);
    }

    #[test]
    fn diagonal_block_equals_causal_attention_and_future_block_is_empty() {
        let n = 9;
        let (qw, kw) = (S.heads * S.head_dim, S.kv_heads * S.head_dim);
        let (q, k, v) = (random_vec(n * qw, 1), random_vec(n * kw, 2), random_vec(n * kw, 3));
        let (mut o, mut l) = (vec![0.0; n * qw], vec![0.0; n * S.heads]);
        attention_fwd(&mut o, &mut l, &q, &k, &v, &[0..n], S);
        let (mut ob, mut lb) = (vec![1.0; n * qw], vec![1.0; n * S.heads]);
        attention_block_fwd(&mut ob, &mut lb, &q, &k, &v, 40, 40, true, S);
        assert_eq!(o, ob);
        assert_eq!(l, lb);
        // The same keys placed after the queries: nothing is visible.
        attention_block_fwd(&mut ob, &mut lb, &q, &k, &v, 40, 40 + n, true, S);
        assert!(ob.iter().all(|&x| x == 0.0));
        assert!(lb.iter().all(|&x| x == f32::NEG_INFINITY));
    }

    #[test]
    fn ring_steps_merged_equal_attention_over_the_whole_sequence() {
        // Queries 6..13 of a 13-token sequence, keys split into 0..6 and 6..13.
        let n = 13;
        let (qw, kw) = (S.heads * S.head_dim, S.kv_heads * S.head_dim);
        let q: Vec<f32> = random_vec(n * qw, 4).iter().map(|x| 3.0 * x).collect();
        let (k, v) = (random_vec(n * kw, 5), random_vec(n * kw, 6));
        let (mut o, mut l) = (vec![0.0; n * qw], vec![0.0; n * S.heads]);
        attention_fwd(&mut o, &mut l, &q, &k, &v, &[0..n], S);
        let qb = &q[6 * qw..];
        let lq = n - 6;
        let (mut o1, mut l1) = (vec![0.0; lq * qw], vec![0.0; lq * S.heads]);
        let (mut o2, mut l2) = (vec![0.0; lq * qw], vec![0.0; lq * S.heads]);
        attention_block_fwd(&mut o1, &mut l1, qb, &k[..6 * kw], &v[..6 * kw], 6, 0, true, S);
        attention_block_fwd(&mut o2, &mut l2, qb, &k[6 * kw..], &v[6 * kw..], 6, 6, true, S);
        let (om, lm) = merge(&o1, &l1, &o2, &l2);
        assert!(close(&om, &o[6 * qw..]) < 1e-5, "{}", close(&om, &o[6 * qw..]));
        assert!(close(&lm, &l[6 * S.heads..]) < 1e-5);
        // The past block alone is not the answer (the test can fail).
        assert!(close(&o1, &o[6 * qw..]) > 1e-2);
        // Non-causal: every key of the block, whatever the positions.
        attention_block_fwd(&mut o1, &mut l1, qb, &k[6 * kw..], &v[6 * kw..], 0, 100, false, S);
        attention_block_fwd(&mut o2, &mut l2, qb, &k[6 * kw..], &v[6 * kw..], 100, 0, true, S);
        assert_eq!(o1, o2);
        assert_eq!(l1, l2);
    }
}
