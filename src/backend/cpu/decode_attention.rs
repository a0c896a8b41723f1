//! Decode attention over a KV cache: the CPU reference of
//! cuda/decode_attn.cu.
//!
//! Design: a thin loop over `attention::attend_row`, so decode shares the
//! training attention's math exactly. Layouts are the generation engine's:
//! Q `[batch, q_len, heads, hd]`, K/V caches `[batch, cap, kv_heads, hd]`,
//! `lengths[b]` valid keys including the `q_len` new ones, so query `i` of
//! sequence `b` sits at position `lengths[b] - q_len + i` and sees keys
//! `0..=position` (causal within the new tokens). An optional key range
//! restricts the keys further (a block of a split or ring step); a row that
//! sees no key gets O = 0 and LSE = -inf.

use super::attention::{attend_row, AttnShape};
use std::ops::Range;

/// Writes O `[batch, q_len, heads, hd]` and LSE `[batch, q_len, heads]`.
#[allow(clippy::too_many_arguments)]
pub fn decode_attention(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    lengths: &[usize],
    q_len: usize,
    cap: usize,
    s: AttnShape,
    keys: Range<usize>,
) {
    let (d, kvw) = (s.head_dim, s.kv_heads * s.head_dim);
    let batch = lengths.len();
    assert_eq!(q.len(), batch * q_len * s.heads * d);
    assert!(k_cache.len() == batch * cap * kvw && v_cache.len() == batch * cap * kvw);
    let mut scratch = vec![];
    for (b, &len) in lengths.iter().enumerate() {
        assert!(len >= q_len && len <= cap, "sequence {b}: length {len} outside {q_len}..={cap}");
        let kb = &k_cache[b * cap * kvw..(b + 1) * cap * kvw];
        let vb = &v_cache[b * cap * kvw..(b + 1) * cap * kvw];
        for i in 0..q_len {
            let pos = len - q_len + i;
            let lo = keys.start.min(pos + 1);
            let hi = keys.end.min(pos + 1).max(lo);
            for h in 0..s.heads {
                let row = (b * q_len + i) * s.heads + h;
                lse[row] = attend_row(&mut out[row * d..(row + 1) * d], &q[row * d..(row + 1) * d], kb, vb, lo..hi, h / s.group(), s, &mut scratch);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::attention::attention_fwd;
    use crate::backend::cpu::gradcheck::random_vec;

    #[test]
    fn decoding_every_token_of_a_sequence_is_causal_attention() {
        // q_len = length: the "new" tokens are the whole sequence, so decode
        // must equal the training attention on it.
        let s = AttnShape { heads: 4, kv_heads: 2, head_dim: 8 };
        let (n, cap) = (9, 12);
        let q = random_vec(n * 32, 1);
        let k = random_vec(n * 16, 2);
        let v = random_vec(n * 16, 3);
        let (mut want, mut wl) = (vec![0.0; n * 32], vec![0.0; n * 4]);
        attention_fwd(&mut want, &mut wl, &q, &k, &v, std::slice::from_ref(&(0..n)), s);
        let mut kc = vec![9.0; cap * 16];
        let mut vc = vec![9.0; cap * 16];
        kc[..n * 16].copy_from_slice(&k);
        vc[..n * 16].copy_from_slice(&v);
        let (mut got, mut gl) = (vec![0.0; n * 32], vec![0.0; n * 4]);
        decode_attention(&mut got, &mut gl, &q, &kc, &vc, &[n], n, cap, s, 0..usize::MAX);
        assert_eq!(got, want);
        assert_eq!(gl, wl);
        // The last token alone, as a 1-token decode step.
        let (mut g1, mut l1) = (vec![0.0; 32], vec![0.0; 4]);
        decode_attention(&mut g1, &mut l1, &q[(n - 1) * 32..], &kc, &vc, &[n], 1, cap, s, 0..usize::MAX);
        assert_eq!(g1, want[(n - 1) * 32..]);
        // A key range that is empty for early tokens gives -inf there.
        decode_attention(&mut got, &mut gl, &q, &kc, &vc, &[n], n, cap, s, 5..n);
        assert_eq!(gl[0], f32::NEG_INFINITY);
        assert!(got[..32].iter().all(|&x| x == 0.0));
        assert!(gl[8 * 4].is_finite());
    }
}
