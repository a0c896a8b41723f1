//! AdamW over a whole model, clipping by global norm, and the cosine schedule
//! with linear warmup.
//!
//! The moments are fp32 tensors shaped like the weights (a `Weights` each).
//! Weight decay applies to matrices only, not to norms or biases (the usual
//! practice for transformers; `decay_norms_and_biases` turns it on for all).

use crate::backend::cpu::adamw::{adamw_step, sum_squares, AdamWParams};
use crate::model::config::ModelConfig;
use crate::model::qwen2::Model;
use crate::model::qwen2_gpu::HostOptimizer;
use crate::model::weights::{param_specs, ParamKind, Weights};
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate.
    #[serde(serialize_with = "crate::decimal::f32_shortest")]
    pub lr: f32,
    #[serde(serialize_with = "crate::decimal::f32_shortest")]
    pub beta1: f32,
    #[serde(serialize_with = "crate::decimal::f32_shortest")]
    pub beta2: f32,
    #[serde(serialize_with = "crate::decimal::f32_shortest")]
    pub eps: f32,
    #[serde(serialize_with = "crate::decimal::f32_shortest")]
    pub weight_decay: f32,
    pub decay_norms_and_biases: bool,
    /// Clip the global gradient norm to this (0 = off).
    #[serde(serialize_with = "crate::decimal::f32_shortest")]
    pub grad_clip: f32,
    pub warmup_steps: u64,
    /// The schedule decays from `lr` to `lr · min_lr_ratio`.
    #[serde(serialize_with = "crate::decimal::f32_shortest")]
    pub min_lr_ratio: f32,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-6,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            decay_norms_and_biases: false,
            grad_clip: 1.0,
            warmup_steps: 0,
            min_lr_ratio: 0.0,
        }
    }
}

/// Linear warmup over `warmup` steps, then cosine decay to `min` at `total`.
/// `step` counts from 0.
pub fn cosine_lr(step: u64, warmup: u64, total: u64, peak: f32, min: f32) -> f32 {
    if step < warmup {
        return peak * (step + 1) as f32 / warmup as f32;
    }
    if total <= warmup || step >= total {
        return if step >= total { min } else { peak };
    }
    let progress = (step - warmup) as f64 / (total - warmup) as f64;
    (min as f64 + (peak - min) as f64 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
}

/// Global L2 norm of all gradients (f64, fixed order).
pub fn global_norm(grads: &Weights) -> f64 {
    grads.tensors().iter().map(|t| sum_squares(&t.data)).sum::<f64>().sqrt()
}

/// Scale gradients so their global norm is at most `max_norm`. Returns the
/// norm before clipping.
pub fn clip_grad_norm(grads: &mut Weights, max_norm: f32) -> f64 {
    let norm = global_norm(grads);
    if max_norm > 0.0 && norm > max_norm as f64 {
        let scale = (max_norm as f64 / (norm + 1e-6)) as f32;
        for t in grads.tensors_mut() {
            crate::backend::cpu::adamw::scale(&mut t.data, scale);
        }
    }
    norm
}

/// AdamW state for one model.
#[derive(Clone, Debug)]
pub struct AdamW {
    pub config: OptimConfig,
    pub m: Weights,
    pub v: Weights,
    /// Steps taken so far.
    pub step: u64,
    decay: Vec<bool>,
    /// Distinguishes optimizer states (a fresh AdamW per RFT phase, DAPO's
    /// own, one loaded on resume), so a training device that keeps m and v
    /// knows when to take them from this host state.
    id: u64,
}

impl AdamW {
    pub fn new(config: OptimConfig, model: &ModelConfig) -> Self {
        let decay = param_specs(model)
            .into_iter()
            .map(|(_, _, kind)| config.decay_norms_and_biases || kind == ParamKind::Matrix)
            .collect();
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        AdamW { config, m: Weights::zeros(model), v: Weights::zeros(model), step: 0, decay, id }
    }

    /// See the `id` field.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether each parameter (in `param_specs` order) gets weight decay.
    pub fn decays(&self) -> &[bool] {
        &self.decay
    }

    /// AdamW's hyperparameters at learning rate `lr`.
    pub fn params(&self, lr: f32) -> AdamWParams {
        let c = &self.config;
        AdamWParams { lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, weight_decay: c.weight_decay }
    }

    /// One update with learning rate `lr` (from the schedule).
    pub fn update(&mut self, weights: &mut Weights, grads: &Weights, lr: f32) {
        self.step += 1;
        let hp = self.params(lr);
        let params = weights.tensors_mut();
        let grads = grads.tensors();
        let ms = self.m.tensors_mut();
        let vs = self.v.tensors_mut();
        for ((((p, g), m), v), &decay) in params.into_iter().zip(grads).zip(ms).zip(vs).zip(&self.decay) {
            adamw_step(&mut p.data, &g.data, &mut m.data, &mut v.data, self.step, hp, decay);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_min() {
        let (w, t, peak, min) = (10, 110, 1.0, 0.1);
        assert!((cosine_lr(0, w, t, peak, min) - 0.1).abs() < 1e-7);
        assert!((cosine_lr(9, w, t, peak, min) - 1.0).abs() < 1e-7);
        assert!((cosine_lr(10, w, t, peak, min) - 1.0).abs() < 1e-7);
        assert!((cosine_lr(60, w, t, peak, min) - 0.55).abs() < 1e-6);
        assert!((cosine_lr(110, w, t, peak, min) - 0.1).abs() < 1e-7);
        let mut prev = f32::INFINITY;
        for s in 10..=110 {
            let lr = cosine_lr(s, w, t, peak, min);
            assert!(lr <= prev);
            prev = lr;
        }
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let cfg = crate::model::tiny::tiny_config();
        let mut g = Weights::init(&cfg, 3, 1.0);
        let before = clip_grad_norm(&mut g, 1.0);
        assert!(before > 1.0);
        assert!((global_norm(&g) - 1.0).abs() < 1e-4);
        // Below the threshold nothing changes.
        let snapshot = g.clone();
        clip_grad_norm(&mut g, 10.0);
        assert_eq!(g, snapshot);
    }
}

/// One optimizer step where the model's gradients are: on the CPU, clip
/// `grads` to `opt.config.grad_clip` and run AdamW on the host weights; with
/// a training device attached, the clip and AdamW run there (continuing
/// `opt`'s state: its m and v go to the device when the device's do not
/// continue it) and the updated weights stay there: the host copy is
/// brought up to date only when read (`Model::sync_host_weights`). Returns the
/// global gradient norm before clipping. A non-finite norm is an error and
/// leaves the weights unchanged.
pub fn optimizer_step(model: &mut Model, opt: &mut AdamW, grads: &mut Weights, lr: f32) -> Result<f64> {
    let Some(d) = model.train_device.clone() else {
        let norm = clip_grad_norm(grads, opt.config.grad_clip);
        ensure!(norm.is_finite(), "the gradient norm is {norm}; the step was not taken");
        model.update_weights(|w| opt.update(w, grads, lr))?;
        return Ok(norm);
    };
    let norm = {
        let mut g = d.lock()?;
        let host = HostOptimizer { id: opt.id(), step: opt.step, m: &opt.m, v: &opt.v, decay: opt.decays(), hp: opt.params(lr), grad_clip: opt.config.grad_clip };
        g.optimizer_step(&host)?
    };
    opt.step += 1;
    model.device_stepped()?;
    Ok(norm)
}

/// Bring `opt`'s m and v up to date from the model's training device, when
/// the device's continue `opt` (call before saving `opt`).
pub fn sync_optimizer(model: &Model, opt: &mut AdamW) -> Result<()> {
    if let Some(d) = &model.train_device {
        d.lock()?.download_moments(opt.id, opt.step, &mut opt.m, &mut opt.v)?;
    }
    Ok(())
}
