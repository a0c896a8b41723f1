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
    opt.update(&mut model.weights, grads, lr);
    Ok(StepStats { loss, grad_norm, lr, tokens: batch.len() })
}
