//! Rotary position embedding, forward and backward, in the "rotate half"
//! layout Hugging Face uses for Qwen2: the pair (x[i], x[i + d/2]) rotates by
//! angle pos · inv_freq[i].
//!
//! The cos/sin table is built once per model (f64 angles rounded to f32) and
//! already carries YaRN's attention factor, so scaled RoPE is still a plain
//! rotation-and-scale here; the backward is its transpose.

use rayon::prelude::*;

/// cos and sin per (position, frequency), times the attention factor.
#[derive(Clone, Debug)]
pub struct RopeTable {
    pub half: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    inv_freq: Vec<f64>,
    attention_factor: f64,
}

impl RopeTable {
    pub fn new(inv_freq: Vec<f64>, attention_factor: f64, positions: usize) -> Self {
        let mut t = RopeTable { half: inv_freq.len(), cos: vec![], sin: vec![], inv_freq, attention_factor };
        t.ensure(positions);
        t
    }

    pub fn positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Grow the table to cover positions `0..positions`.
    pub fn ensure(&mut self, positions: usize) {
        let have = self.positions();
        if positions <= have {
            return;
        }
        for p in have..positions {
            for &f in &self.inv_freq {
                let a = p as f64 * f;
                self.cos.push((a.cos() * self.attention_factor) as f32);
                self.sin.push((a.sin() * self.attention_factor) as f32);
            }
        }
    }
}

/// Rotate every (x[i], x[i + half]) pair of `x` `[n, heads, 2·half]` in
/// place by the angle of token `t`'s position `pos[t]`; `sign` −1 rotates
/// backwards (the transpose).
fn rotate(x: &mut [f32], pos: &[u32], heads: usize, table: &RopeTable, sign: f32) {
    let half = table.half;
    let d = 2 * half;
    x.par_chunks_mut(heads * d).zip(pos.par_iter()).for_each(|(row, &p)| {
        let c = &table.cos[p as usize * half..(p as usize + 1) * half];
        let s = &table.sin[p as usize * half..(p as usize + 1) * half];
        for h in row.chunks_mut(d) {
            for i in 0..half {
                let (x1, x2, sn) = (h[i], h[i + half], sign * s[i]);
                h[i] = x1 * c[i] - x2 * sn;
                h[i + half] = x2 * c[i] + x1 * sn;
            }
        }
    });
}

/// Rotate `x` `[n, heads, 2·half]` in place; token `t` sits at `pos[t]`.
pub fn rope_fwd(x: &mut [f32], pos: &[u32], heads: usize, table: &RopeTable) {
    rotate(x, pos, heads, table, 1.0);
}

/// The transpose of `rope_fwd`, in place on the gradient.
pub fn rope_bwd(dx: &mut [f32], pos: &[u32], heads: usize, table: &RopeTable) {
    rotate(dx, pos, heads, table, -1.0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::gradcheck::*;

    #[test]
    fn rope_backward_is_the_transpose() {
        let (n, heads, half) = (6, 3, 4);
        let inv: Vec<f64> = (0..half).map(|i| 1.0 / 10000f64.powf(2.0 * i as f64 / (2 * half) as f64)).collect();
        let table = RopeTable::new(inv, 1.3, 32);
        let pos: Vec<u32> = vec![0, 1, 5, 9, 17, 31];
        let mut x = random_vec(n * heads * 2 * half, 1);
        let r = random_vec(x.len(), 2);
        let mut g = r.clone();
        rope_bwd(&mut g, &pos, heads, &table);
        let rep = check_gradient(&mut x, &g, 1e-3, 200, |x| {
            let mut y = x.to_vec();
            rope_fwd(&mut y, &pos, heads, &table);
            project(&y, &r)
        });
        assert!(rep.rel_err() < 1e-3, "{rep:?}");
    }

    #[test]
    fn position_zero_is_identity_times_factor() {
        let table = RopeTable::new(vec![1.0, 0.1], 1.0, 4);
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        rope_fwd(&mut x, &[0], 1, &table);
        assert_eq!(x, vec![1.0, 2.0, 3.0, 4.0]);
    }
}
