//! The supervised step: weighted next-token NLL, backward, clip, AdamW.
//!
//! One function that reads top to bottom, used by the demo and the smoke
//! test now and by rejection fine-tuning later.

use super::optimizer::{clip_grad_norm, AdamW};
use crate::model::qwen2::{Batch, Model};
use crate::model::weights::Weights;
use anyhow::Result;

#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f32,
    pub tokens: usize,
}

/// One optimizer step on `batch`, with loss weight `weight[t]` on the
/// prediction made at position `t` (0 masks it).
pub fn supervised_step(model: &mut Model, opt: &mut AdamW, grads: &mut Weights, batch: &Batch, weight: &[f32], lr: f32) -> Result<StepStats> {
    grads.zero();
    let loss = model.nll_loss_and_grads(batch, weight, grads)?;
    let grad_norm = clip_grad_norm(grads, opt.config.grad_clip);
    model.update_weights(|w| opt.update(w, grads, lr))?;
    Ok(StepStats { loss, grad_norm, lr, tokens: batch.len() })
}

/// Fit `seqs` for `steps` steps (every step sees all of them), with warmup
/// and cosine decay from `opt.config`. `weights[s][t]` is the loss weight of
/// the prediction at position `t` of sequence `s`. Calls `on_step` after
/// each step.
pub fn fit(
    model: &mut Model,
    opt: &mut AdamW,
    seqs: &[Vec<u32>],
    weights: &[Vec<f32>],
    steps: u64,
    mut on_step: impl FnMut(u64, &StepStats),
) -> Result<Vec<StepStats>> {
    let batch = Batch::from_sequences(seqs);
    let weight: Vec<f32> = weights.iter().flatten().copied().collect();
    anyhow::ensure!(weight.len() == batch.len(), "fit: {} loss weights for {} tokens", weight.len(), batch.len());
    let mut grads = Weights::zeros(&model.cfg);
    let c = opt.config.clone();
    let mut stats = Vec::with_capacity(steps as usize);
    for step in 0..steps {
        let lr = super::optimizer::cosine_lr(step, c.warmup_steps, steps, c.lr, c.lr * c.min_lr_ratio);
        let s = supervised_step(model, opt, &mut grads, &batch, &weight, lr)?;
        on_step(step, &s);
        stats.push(s);
    }
    Ok(stats)
}
