//! The DAPO policy loss per token, its gradient with respect to the
//! current log-probs, and the clip statistics: the CPU reference of the
//! fused `dapo_loss` kernel (`backend::gpu::dapo_loss`) and the loss the
//! trainer uses on the CPU (`train::algorithms` re-exports it beside the
//! other RL algorithms).
//!
//! Owns: the per-position arithmetic in f64 and the hyperparameters'
//! validation. Does not own how positions are packed or where N comes
//! from (`train::algorithms`).

use anyhow::{ensure, Result};

/// The DAPO hyperparameters (METHOD.md: ε_low 0.2, ε_high 0.3 in stage 1 and
/// 0.26 in stage 2; δ is the advantage's guard against a zero std).
/// (The `[dapo]` config section, `config::DapoSection`, carries these.)
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DapoConfig {
    /// ρ below 1 − ε_low is clipped (for negative advantages).
    pub eps_low: f64,
    /// ρ above 1 + ε_high is clipped (for positive advantages).
    pub eps_high: f64,
    /// δ in Â = (R − mean) / (std + δ).
    pub delta: f64,
}

impl Default for DapoConfig {
    /// Stage 1 of the method.
    fn default() -> Self {
        DapoConfig { eps_low: 0.2, eps_high: 0.3, delta: 1e-6 }
    }
}

impl DapoConfig {
    /// Every value finite and non-negative, ε_low below 1 (so the lower clip
    /// bound 1 − ε_low is positive), and ε_high ≥ ε_low (DAPO's "clip
    /// higher": the upper range is never the narrower one).
    pub fn validate(&self) -> Result<()> {
        for (key, v) in [("dapo.eps_low", self.eps_low), ("dapo.eps_high", self.eps_high), ("dapo.delta", self.delta)] {
            ensure!(v.is_finite() && v >= 0.0, "{key} must be a finite number >= 0, got {v}");
        }
        ensure!(self.eps_low < 1.0, "dapo.eps_low must be below 1 (the lower clip bound is 1 - eps_low), got {}", self.eps_low);
        ensure!(
            self.eps_high >= self.eps_low,
            "dapo.eps_high ({}) must be at least dapo.eps_low ({}): DAPO clips higher, not lower",
            self.eps_high,
            self.eps_low
        );
        Ok(())
    }
}

/// What [`dapo_loss`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct DapoOut {
    /// − Σ_masked term / N.
    pub loss: f64,
    /// d loss / d logp_new per position (0 where not masked or clipped).
    pub grad_logp: Vec<f32>,
    /// Fraction of the masked tokens where the clip is active on the low
    /// side: Â < 0 and ρ < 1 − ε_low (the clipped term is the min, and the
    /// token's gradient is 0).
    pub clip_low_frac: f64,
    /// Fraction of the masked tokens where the clip is active on the high
    /// side: Â > 0 and ρ > 1 + ε_high.
    pub clip_high_frac: f64,
    /// Masked tokens in this call (the denominator of the clip fractions).
    pub n_tokens: usize,
}

/// The DAPO policy loss over per-position arrays, and its gradient with
/// respect to `logp_new`.
///
/// `n_tokens_norm` is N, the number of assistant tokens in the whole
/// mini-batch; it is passed in (not counted here) so that a mini-batch
/// split into micro-batches still divides by the mini-batch's count. It
/// must be at least the number of masked positions here.
///
/// Per masked position, in f64:
///
/// ```text
///   ρ        = exp(logp_new − logp_old)
///   term     = min(ρ·Â, clip(ρ, 1−ε_low, 1+ε_high)·Â)
///   d(−term/N)/d logp_new = −ρ·Â/N   where the unclipped branch is the min
///                         = 0         where the clip is active:
///                                     Â > 0 and ρ > 1+ε_high, or
///                                     Â < 0 and ρ < 1−ε_low
/// ```
///
/// (For Â > 0 and ρ < 1−ε_low, or Â < 0 and ρ > 1+ε_high, the unclipped
/// term is the smaller one, so the gradient flows: the pessimistic bound.)
/// At ρ exactly on a bound both branches are equal and the unclipped
/// gradient is used. Â = 0 gives term 0 and gradient 0.
pub fn dapo_loss(logp_new: &[f32], logp_old: &[f32], adv_per_token: &[f32], mask: &[bool], n_tokens_norm: usize, cfg: &DapoConfig) -> Result<DapoOut> {
    let n = logp_new.len();
    ensure!(
        logp_old.len() == n && adv_per_token.len() == n && mask.len() == n,
        "dapo_loss: arrays disagree: {} new log-probs, {} old, {} advantages, {} mask entries",
        n,
        logp_old.len(),
        adv_per_token.len(),
        mask.len()
    );
    cfg.validate()?;
    let masked = mask.iter().filter(|&&m| m).count();
    ensure!(
        n_tokens_norm >= masked && (n_tokens_norm > 0 || masked == 0),
        "dapo_loss: the normalizing token count {n_tokens_norm} is smaller than the {masked} masked tokens"
    );
    let (lo, hi) = (1.0 - cfg.eps_low, 1.0 + cfg.eps_high);
    let norm = n_tokens_norm.max(1) as f64;
    let mut sum = 0.0f64;
    let mut grad = vec![0.0f32; n];
    let (mut low, mut high) = (0usize, 0usize);
    for t in 0..n {
        if !mask[t] {
            continue;
        }
        let a = adv_per_token[t] as f64;
        let rho = (logp_new[t] as f64 - logp_old[t] as f64).exp();
        let unclipped = rho * a;
        let clipped = rho.clamp(lo, hi) * a;
        sum += unclipped.min(clipped);
        let clip_low = a < 0.0 && rho < lo;
        let clip_high = a > 0.0 && rho > hi;
        low += clip_low as usize;
        high += clip_high as usize;
        if !(clip_low || clip_high) {
            grad[t] = (-unclipped / norm) as f32;
        }
    }
    let frac = |k: usize| if masked == 0 { 0.0 } else { k as f64 / masked as f64 };
    Ok(DapoOut { loss: -sum / norm, grad_logp: grad, clip_low_frac: frac(low), clip_high_frac: frac(high), n_tokens: masked })
}
