//! Turning one row of logits into one token and its log-probability.
//!
//! Temperature is applied first, then the optional truncations (top-k, top-p,
//! min-p), then the distribution is renormalized and sampled by inverse CDF in
//! token-id order. All three truncations are OFF by default: any truncation
//! biases RL, because the trainer assumes tokens came from the full softmax.
//! The returned log-probability is that of the distribution actually sampled
//! from (after truncation), computed in f64.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    /// 0 means greedy (argmax, log-probability 0).
    #[serde(serialize_with = "crate::decimal::f32_shortest")]
    pub temperature: f32,
    /// 1.0 = off.
    #[serde(serialize_with = "crate::decimal::f32_shortest")]
    pub top_p: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 0.0 = off.
    #[serde(serialize_with = "crate::decimal::f32_shortest")]
    pub min_p: f32,
    pub max_new_tokens: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, min_p: 0.0, max_new_tokens: 64, seed: 0 }
    }
}

impl SamplingParams {
    /// True when no truncation is on: what RL requires.
    pub fn is_untruncated(&self) -> bool {
        self.top_p >= 1.0 && self.top_k == 0 && self.min_p <= 0.0
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            anyhow::bail!("sampling: temperature must be a finite number >= 0, got {}", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            anyhow::bail!("sampling: top_p must be in (0, 1], got {}", self.top_p);
        }
        if !(0.0..1.0).contains(&self.min_p) {
            anyhow::bail!("sampling: min_p must be in [0, 1), got {}", self.min_p);
        }
        Ok(())
    }
}

/// The probabilities the token is drawn from: softmax(logits / T), then the
/// enabled truncations, renormalized. Zero outside the kept set.
pub fn sampling_distribution(logits: &[f32], p: &SamplingParams) -> Vec<f64> {
    let t = p.temperature as f64;
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let mut probs: Vec<f64> = logits.iter().map(|&z| ((z as f64 - m) / t).exp()).collect();
    normalize(&mut probs);
    if p.top_k > 0 && p.top_k < probs.len() {
        let order = sorted_desc(&probs);
        for &i in &order[p.top_k..] {
            probs[i] = 0.0;
        }
        normalize(&mut probs);
    }
    if p.top_p < 1.0 {
        let order = sorted_desc(&probs);
        let mut cum = 0.0;
        let mut keep = order.len();
        for (rank, &i) in order.iter().enumerate() {
            cum += probs[i];
            if cum >= p.top_p as f64 {
                keep = rank + 1;
                break;
            }
        }
        for &i in &order[keep..] {
            probs[i] = 0.0;
        }
        normalize(&mut probs);
    }
    if p.min_p > 0.0 {
        let pmax = probs.iter().fold(0.0f64, |a, &b| a.max(b));
        let floor = p.min_p as f64 * pmax;
        probs.iter_mut().filter(|x| **x < floor).for_each(|x| *x = 0.0);
        normalize(&mut probs);
    }
    probs
}

fn normalize(p: &mut [f64]) {
    let s: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= s);
}

/// Indexes by descending probability; ties broken by lower id first.
fn sorted_desc(p: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    idx
}

/// Draw one token; returns (token, log-probability under the distribution
/// it was drawn from).
pub fn sample(logits: &[f32], p: &SamplingParams, rng: &mut ChaCha8Rng) -> (u32, f32) {
    if p.temperature == 0.0 {
        let mut best = 0;
        for (i, &z) in logits.iter().enumerate() {
            if z > logits[best] {
                best = i;
            }
        }
        return (best as u32, 0.0);
    }
    let probs = sampling_distribution(logits, p);
    let u: f64 = rng.gen();
    let mut cum = 0.0;
    let mut last_kept = 0;
    for (i, &q) in probs.iter().enumerate() {
        if q > 0.0 {
            last_kept = i;
            cum += q;
            if u < cum {
                return (i as u32, q.ln() as f32);
            }
        }
    }
    // Rounding left u above the final cumulative sum: take the last kept id.
    (last_kept as u32, probs[last_kept].ln() as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn defaults_are_untruncated_temperature_one() {
        let p = SamplingParams::default();
        assert!(p.is_untruncated());
        assert_eq!(p.temperature, 1.0);
    }

    #[test]
    fn untruncated_distribution_is_the_softmax() {
        let logits = [1.0f32, 2.0, 0.5, -1.0];
        let d = sampling_distribution(&logits, &SamplingParams::default());
        let s: f64 = logits.iter().map(|&z| (z as f64).exp()).sum();
        for (q, &z) in d.iter().zip(&logits) {
            assert!((q - (z as f64).exp() / s).abs() < 1e-12);
        }
    }

    #[test]
    fn truncations_keep_the_right_sets() {
        let logits = [3.0f32, 2.0, 1.0, 0.0, -5.0];
        let k = sampling_distribution(&logits, &SamplingParams { top_k: 2, ..Default::default() });
        assert!(k[0] > 0.0 && k[1] > 0.0 && k[2] == 0.0 && k[3] == 0.0);
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let p = sampling_distribution(&logits, &SamplingParams { top_p: 0.5, ..Default::default() });
        assert!(p[0] == 1.0, "the top token alone has > 50%: {p:?}");
        let m = sampling_distribution(&logits, &SamplingParams { min_p: 0.2, ..Default::default() });
        // p1/p0 = e^-1 ≈ 0.37 ≥ 0.2 kept; p2/p0 = e^-2 ≈ 0.135 dropped.
        assert!(m[1] > 0.0 && m[2] == 0.0);
    }

    #[test]
    fn sampled_frequencies_follow_the_distribution() {
        let logits = [0.0f32, 1.0, 2.0];
        let p = SamplingParams::default();
        let want = sampling_distribution(&logits, &p);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut counts = [0usize; 3];
        let n = 20000;
        for _ in 0..n {
            let (t, lp) = sample(&logits, &p, &mut rng);
            assert!((lp as f64 - want[t as usize].ln()).abs() < 1e-6);
            counts[t as usize] += 1;
        }
        for i in 0..3 {
            let f = counts[i] as f64 / n as f64;
            assert!((f - want[i]).abs() < 0.015, "token {i}: {f} vs {}", want[i]);
        }
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let p = SamplingParams { temperature: 0.0, ..Default::default() };
        assert_eq!(sample(&[0.1, 0.9, 0.3], &p, &mut rng), (1, 0.0));
    }
}
