//! The merge of two partial attention results, forward and backward: the
//! CPU reference of cuda/attn_merge.cu and the combine step of ring attention
//! and flash-decoding.
//!
//! Design: a partial result over a subset of the keys is (O, LSE) with O
//! normalized within the subset, so two subsets merge by the log-sum-exp
//! rule `L = log(e^La + e^Lb)`, `O = e^(La-L)·Oa + e^(Lb-L)·Ob`; the
//! backward follows from `dO/dLa = e^(La-L)·(Oa - O)`. A part whose LSE is
//! -inf (no visible key) has weight 0, is never read and gets gradient 0;
//! two such parts give O = 0, L = -inf. All fp32, same formulas and order
//! as the kernel. Rows are independent: `rows = len(lse)`, O is `[rows, hd]`.

/// Weights of parts a and b in a merge whose merged LSE is `l`.
fn weights(la: f32, lb: f32, l: f32) -> (f32, f32) {
    let w = |x: f32| if x == f32::NEG_INFINITY { 0.0 } else { (x - l).exp() };
    (w(la), w(lb))
}

/// The merged LSE of two parts (-inf when both are -inf).
pub fn merged_lse(la: f32, lb: f32) -> f32 {
    let m = la.max(lb);
    if m == f32::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    m + ((la - m).exp() + (lb - m).exp()).ln()
}

/// `(out, lse) = merge((a_out, a_lse), (b_out, b_lse))`.
pub fn merge_fwd(out: &mut [f32], lse: &mut [f32], a_out: &[f32], a_lse: &[f32], b_out: &[f32], b_lse: &[f32], hd: usize) {
    let rows = lse.len();
    assert!(out.len() == rows * hd && a_out.len() == rows * hd && b_out.len() == rows * hd && a_lse.len() == rows && b_lse.len() == rows);
    for r in 0..rows {
        let l = merged_lse(a_lse[r], b_lse[r]);
        let (ca, cb) = if l == f32::NEG_INFINITY { (0.0, 0.0) } else { weights(a_lse[r], b_lse[r], l) };
        lse[r] = l;
        for d in r * hd..(r + 1) * hd {
            let mut v = 0.0f32;
            if ca != 0.0 {
                v = ca * a_out[d];
            }
            if cb != 0.0 {
                v = cb.mul_add(b_out[d], v);
            }
            out[d] = v;
        }
    }
}

/// Gradients of `merge_fwd` with respect to both parts, given `dout` and
/// optionally `dlse` (None = 0), the forward's inputs and its outputs.
#[allow(clippy::too_many_arguments)]
pub fn merge_bwd(
    da_out: &mut [f32],
    da_lse: &mut [f32],
    db_out: &mut [f32],
    db_lse: &mut [f32],
    dout: &[f32],
    dlse: Option<&[f32]>,
    a_out: &[f32],
    a_lse: &[f32],
    b_out: &[f32],
    b_lse: &[f32],
    out: &[f32],
    lse: &[f32],
    hd: usize,
) {
    let rows = lse.len();
    assert!(da_out.len() == rows * hd && db_out.len() == rows * hd && dout.len() == rows * hd && out.len() == rows * hd);
    assert!(da_lse.len() == rows && db_lse.len() == rows && a_lse.len() == rows && b_lse.len() == rows);
    for r in 0..rows {
        let (ca, cb) = weights(a_lse[r], b_lse[r], lse[r]);
        let (mut dot_a, mut dot_b) = (0.0f32, 0.0f32);
        for d in r * hd..(r + 1) * hd {
            dot_a = dout[d].mul_add(a_out[d] - out[d], dot_a);
            dot_b = dout[d].mul_add(b_out[d] - out[d], dot_b);
            da_out[d] = ca * dout[d];
            db_out[d] = cb * dout[d];
        }
        let dl = dlse.map_or(0.0, |x| x[r]);
        da_lse[r] = if ca != 0.0 { ca * (dot_a + dl) } else { 0.0 };
        db_lse[r] = if cb != 0.0 { cb * (dot_b + dl) } else { 0.0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::attention::{attend_row, attention_fwd, AttnShape};
    use crate::backend::cpu::gradcheck::*;

    /// Attention of every query token of one sequence (`n` tokens, causal)
    /// restricted to keys `keys`: (O, LSE) in the `[n, heads, hd]`/`[n, heads]`
    /// layout; a row that sees none of them gets O = 0, LSE = -inf.
    fn attend_block(q: &[f32], k: &[f32], v: &[f32], n: usize, keys: std::ops::Range<usize>, s: AttnShape) -> (Vec<f32>, Vec<f32>) {
        let d = s.head_dim;
        let (mut o, mut l) = (vec![0.0; n * s.heads * d], vec![0.0; n * s.heads]);
        let mut scratch = vec![];
        for t in 0..n {
            for h in 0..s.heads {
                let row = t * s.heads + h;
                let visible = keys.start..keys.end.min(t + 1);
                let visible = visible.start..visible.end.max(visible.start);
                l[row] = attend_row(&mut o[row * d..(row + 1) * d], &q[row * d..(row + 1) * d], k, v, visible, h / s.group(), s, &mut scratch);
            }
        }
        (o, l)
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| if x == y { 0.0 } else { (x - y).abs() }).fold(0.0, f32::max)
    }

    #[test]
    fn merging_key_blocks_equals_attention_over_the_whole_sequence() {
        let s = AttnShape { heads: 6, kv_heads: 2, head_dim: 8 };
        let n = 23;
        let q = random_vec(n * s.heads * 8, 21);
        let k = random_vec(n * s.kv_heads * 8, 22);
        let v = random_vec(n * s.kv_heads * 8, 23);
        let (mut want_o, mut want_l) = (vec![0.0; n * s.heads * 8], vec![0.0; n * s.heads]);
        attention_fwd(&mut want_o, &mut want_l, &q, &k, &v, std::slice::from_ref(&(0..n)), s);
        for bounds in [vec![0, 11, n], vec![0, 5, 6, 17, n]] {
            let blocks: Vec<_> = bounds.windows(2).map(|w| attend_block(&q, &k, &v, n, w[0]..w[1], s)).collect();
            // Causal: later blocks are empty for early queries (LSE -inf).
            assert!(blocks.last().unwrap().1[0].is_infinite());
            let (mut o, mut l) = blocks[0].clone();
            for (bo, bl) in &blocks[1..] {
                let (mut o2, mut l2) = (vec![0.0; o.len()], vec![0.0; l.len()]);
                merge_fwd(&mut o2, &mut l2, &o, &l, bo, bl, 8);
                (o, l) = (o2, l2);
            }
            assert!(max_diff(&o, &want_o) < 1e-5, "O differs by {} with blocks {bounds:?}", max_diff(&o, &want_o));
            assert!(max_diff(&l, &want_l) < 1e-5, "LSE differs by {} with blocks {bounds:?}", max_diff(&l, &want_l));
            // The check can fail: the first block alone is not the whole attention.
            assert!(max_diff(&blocks[0].0, &want_o) > 1e-3);
        }
    }

    #[test]
    fn minus_infinity_parts_contribute_nothing() {
        let hd = 4;
        let a = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let garbage = vec![f32::NAN; 8];
        let (mut o, mut l) = (vec![0.0; 8], vec![0.0; 2]);
        merge_fwd(&mut o, &mut l, &a, &[0.5, f32::NEG_INFINITY], &garbage, &[f32::NEG_INFINITY, f32::NEG_INFINITY], hd);
        assert_eq!(&o[..4], &a[..4]);
        assert_eq!(l[0], 0.5);
        assert_eq!(&o[4..], &[0.0; 4]);
        assert_eq!(l[1], f32::NEG_INFINITY);
        let (mut dao, mut dal, mut dbo, mut dbl) = (vec![0.0; 8], vec![0.0; 2], vec![0.0; 8], vec![0.0; 2]);
        let dout = vec![1.0; 8];
        merge_bwd(&mut dao, &mut dal, &mut dbo, &mut dbl, &dout, Some(&[1.0, 1.0]), &a, &[0.5, f32::NEG_INFINITY], &garbage, &[f32::NEG_INFINITY; 2], &o, &l, hd);
        assert_eq!(&dao[..4], &[1.0; 4]);
        assert_eq!(dal[0], 1.0); // dL/dLa = 1 when b is empty; dO/dLa = 0.
        assert_eq!(&dbo, &[0.0; 8]);
        assert_eq!(&dbl, &[0.0; 2]);
        assert_eq!(&dao[4..], &[0.0; 4]);
        assert_eq!(dal[1], 0.0);
    }

    #[test]
    fn merge_backward_matches_finite_differences() {
        let (rows, hd) = (5, 6);
        let mut ao = random_vec(rows * hd, 31);
        let mut bo = random_vec(rows * hd, 32);
        let mut al: Vec<f32> = random_vec(rows, 33).iter().map(|x| 2.0 * x).collect();
        let mut bl: Vec<f32> = random_vec(rows, 34).iter().map(|x| 2.0 * x).collect();
        al[3] = f32::NEG_INFINITY; // a row where part a is empty
        let ro = random_vec(rows * hd, 35);
        let rl = random_vec(rows, 36);
        // loss = Σ ro·O + Σ rl·L
        let loss = |ao: &[f32], al: &[f32], bo: &[f32], bl: &[f32]| {
            let (mut o, mut l) = (vec![0.0; rows * hd], vec![0.0; rows]);
            merge_fwd(&mut o, &mut l, ao, al, bo, bl, hd);
            project(&o, &ro) + project(&l, &rl)
        };
        let (mut o, mut l) = (vec![0.0; rows * hd], vec![0.0; rows]);
        merge_fwd(&mut o, &mut l, &ao, &al, &bo, &bl, hd);
        let (mut dao, mut dal, mut dbo, mut dbl) = (vec![0.0; rows * hd], vec![0.0; rows], vec![0.0; rows * hd], vec![0.0; rows]);
        merge_bwd(&mut dao, &mut dal, &mut dbo, &mut dbl, &ro, Some(&rl), &ao, &al, &bo, &bl, &o, &l, hd);
        assert_eq!(dal[3], 0.0);
        let (al0, bo0, bl0) = (al.clone(), bo.clone(), bl.clone());
        let rep = check_gradient(&mut ao, &dao, 1e-3, 100, |x| loss(x, &al0, &bo0, &bl0));
        assert!(rep.rel_err() < 2e-3, "d a_out {rep:?}");
        let ao0 = ao.clone();
        let rep = check_gradient(&mut bo, &dbo, 1e-3, 100, |x| loss(&ao0, &al0, x, &bl0));
        assert!(rep.rel_err() < 2e-3, "d b_out {rep:?}");
        let bo0 = bo.clone();
        let rep = check_gradient(&mut bl, &dbl, 1e-3, 100, |x| loss(&ao0, &al0, &bo0, x));
        assert!(rep.rel_err() < 2e-3, "d b_lse {rep:?}");
        // Central differences at -inf are undefined: check a's LSE on the finite rows.
        let mut al_fin: Vec<f32> = al.iter().map(|&x| if x.is_finite() { x } else { 0.0 }).collect();
        let dal_fin: Vec<f32> = {
            let mut l2 = vec![0.0; rows];
            let mut o2 = vec![0.0; rows * hd];
            merge_fwd(&mut o2, &mut l2, &ao0, &al_fin, &bo0, &bl0, hd);
            let (mut x1, mut x2, mut x3, mut g) = (vec![0.0; rows * hd], vec![0.0; rows * hd], vec![0.0; rows], vec![0.0; rows]);
            merge_bwd(&mut x1, &mut g, &mut x2, &mut x3, &ro, Some(&rl), &ao0, &al_fin, &bo0, &bl0, &o2, &l2, hd);
            g
        };
        let rep = check_gradient(&mut al_fin, &dal_fin, 1e-3, 100, |x| loss(&ao0, x, &bo0, &bl0));
        assert!(rep.rel_err() < 2e-3, "d a_lse {rep:?}");
        // And the check can fail: a gradient off by 10% is caught.
        let wrong: Vec<f32> = dal_fin.iter().map(|g| g * 1.1).collect();
        let rep = check_gradient(&mut al_fin, &wrong, 1e-3, 100, |x| loss(&ao0, x, &bo0, &bl0));
        assert!(rep.rel_err() > 2e-2, "a wrong gradient passed: {rep:?}");
    }
}
