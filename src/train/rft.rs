//! Rejection fine-tuning: keep the successful trajectories, train on their
//! assistant tokens with format-error turns masked.
//!
//! Owns: selecting trajectories (reward 1, at least one trainable token),
//! the per-position loss weights (the prediction of each assistant token
//! outside a format-error turn; masked turns stay in the context and carry
//! no loss), packing trajectories into micro-batches by length so short ones
//! don't waste compute (first fit by decreasing length; attention never
//! crosses sequences in a packed `Batch`), and the epoch loop: optimizer
//! steps of `batch` trajectories, gradients accumulated over micro-batches
//! and normalized by the step's number of trained tokens, warmup then cosine
//! decay. The method's settings are the defaults: lr 5e-6, weight decay
//! 0.1, 10 warmup steps, cosine to 0, batch 64, one epoch.
//! Does not own the model's math, the optimizer (`optimizer`) or where
//! trajectories come from (`agent`).

use super::optimizer::{cosine_lr, optimizer_step, AdamW, OptimConfig};
use crate::agent::trajectory::Trajectory;
use crate::model::qwen2::{Batch, Model};
use crate::model::weights::Weights;
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// `[rft]` in the config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RftConfig {
    #[serde(serialize_with = "crate::decimal::f32_shortest")]
    pub lr: f32,
    /// AdamW's eps for the supervised phases (RFT, the warm start), apart
    /// from DAPO's `[optim] eps`: the tiny default damps DAPO's AdamW with
    /// a large eps, which would stall supervised learning.
    #[serde(serialize_with = "crate::decimal::f32_shortest")]
    pub eps: f32,
    pub warmup_steps: u64,
    /// Trajectories per optimizer step.
    pub batch: usize,
    pub epochs: u32,
    /// Tokens per packed micro-batch (a longer trajectory goes alone).
    pub micro_batch_tokens: usize,
    /// Order of the trajectories in each epoch.
    pub seed: u64,
    /// `appliance train`'s RFT phase: attempts sampled per training task
    /// (the method: 10). Not used by `appliance rft`, which reads files.
    pub samples_per_task: u32,
    /// `appliance train`'s RFT phase also trains on the solved trajectories
    /// of these files (ours, or imported with `appliance import`); they are
    /// read and checked before the run starts.
    pub from: Vec<std::path::PathBuf>,
}

impl Default for RftConfig {
    fn default() -> Self {
        RftConfig { lr: 5e-6, eps: 1e-8, warmup_steps: 10, batch: 64, epochs: 1, micro_batch_tokens: 16_384, seed: 0, samples_per_task: 10, from: vec![] }
    }
}

impl RftConfig {
    /// The supervised phases' AdamW: `base`'s betas, weight decay and
    /// clip (`[optim]`), with this config's lr and eps.
    pub fn optim(&self, base: &OptimConfig) -> OptimConfig {
        OptimConfig { lr: self.lr, eps: self.eps, ..base.clone() }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("[rft] lr must be a positive number, got {}", self.lr);
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            bail!("[rft] eps must be a positive number, got {}", self.eps);
        }
        if self.batch == 0 {
            bail!("[rft] batch must be at least 1");
        }
        if self.epochs == 0 {
            bail!("[rft] epochs must be at least 1");
        }
        if self.micro_batch_tokens == 0 {
            bail!("[rft] micro_batch_tokens must be at least 1");
        }
        if self.samples_per_task == 0 {
            bail!("[rft] samples_per_task must be at least 1");
        }
        Ok(())
    }
}

/// One training sequence: ids and the loss weight of the prediction made at
/// each position (weight[t] trains predicting ids[t + 1]).
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub weight: Vec<f32>,
}

impl Example {
    /// The trainable tokens of a trajectory under `mask` (per ledger token):
    /// token i is trained through the prediction at position i − 1.
    pub fn from_mask(ids: &[u32], mask: &[bool]) -> Self {
        let weight = super::algorithms::predicted_at(mask).into_iter().map(|m| if m { 1.0 } else { 0.0 }).collect();
        Example { ids: ids.to_vec(), weight }
    }

    pub fn trained_tokens(&self) -> usize {
        self.weight.iter().filter(|&&w| w > 0.0).count()
    }
}

/// What selection kept and why it left the rest out.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Selection {
    pub kept: usize,
    pub unsolved: usize,
    /// Solved, but every assistant turn was a format error.
    pub nothing_to_train: usize,
}

/// The solved trajectories as examples, with format-error turns masked.
pub fn select(trajs: &[Trajectory]) -> (Vec<Example>, Selection) {
    let mut sel = Selection::default();
    let mut out = vec![];
    for t in trajs {
        if !t.solved() {
            sel.unsolved += 1;
            continue;
        }
        let ex = Example::from_mask(&t.ledger.ids, &t.rft_mask());
        if ex.trained_tokens() == 0 {
            sel.nothing_to_train += 1;
            continue;
        }
        sel.kept += 1;
        out.push(ex);
    }
    (out, sel)
}

/// Pack example indexes into micro-batches of at most `max_tokens` tokens:
/// first fit, longest first. An example longer than `max_tokens` gets a
/// micro-batch of its own. Deterministic.
pub fn pack(lengths: &[usize], max_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
    let mut bins: Vec<(usize, Vec<usize>)> = vec![];
    for i in order {
        match bins.iter_mut().find(|(used, _)| used + lengths[i] <= max_tokens) {
            Some((used, items)) => {
                *used += lengths[i];
                items.push(i);
            }
            None => bins.push((lengths[i], vec![i])),
        }
    }
    bins.into_iter().map(|(_, items)| items).collect()
}

/// Statistics of one optimizer step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RftStep {
    pub step: u64,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f32,
    pub trained_tokens: usize,
    pub tokens: usize,
    pub micro_batches: usize,
}

/// Accumulate the gradient of the weighted NLL of `examples`, normalized by
/// `norm` (the trained tokens of the whole optimizer step), into `grads`.
/// Returns this part's share of the loss.
pub fn accumulate_nll(model: &mut Model, examples: &[&Example], norm: f64, grads: &mut Weights) -> Result<f64> {
    let seqs: Vec<&[u32]> = examples.iter().map(|e| e.ids.as_slice()).collect();
    let batch = Batch::from_sequences(&seqs);
    let weight: Vec<f32> = examples.iter().flat_map(|e| e.weight.iter().copied()).collect();
    let (targets, has_next) = batch.next_token_targets();
    let (st, lp) = model.forward_logprobs(&batch, &targets)?;
    let mut loss = 0.0;
    let mut g_lp = vec![0.0f32; batch.len()];
    for i in 0..batch.len() {
        if has_next[i] && weight[i] > 0.0 {
            loss -= lp.logprob[i] as f64 * weight[i] as f64 / norm;
            g_lp[i] = (-(weight[i] as f64) / norm) as f32;
        }
    }
    let g_ent = vec![0.0; batch.len()];
    model.backward_into(&batch, &st, &targets, &lp, &g_lp, &g_ent, grads)?;
    Ok(loss)
}

/// Fine-tune on `examples` for `cfg.epochs` epochs; `on_step` sees each
/// optimizer step. The learning-rate schedule spans all steps.
pub fn train(model: &mut Model, opt: &mut AdamW, examples: &[Example], cfg: &RftConfig, mut on_step: impl FnMut(&RftStep)) -> Result<Vec<RftStep>> {
    cfg.validate()?;
    if examples.is_empty() {
        bail!("rejection fine-tuning has no successful trajectories to train on");
    }
    let steps_per_epoch = examples.len().div_ceil(cfg.batch) as u64;
    let total = steps_per_epoch * cfg.epochs as u64;
    let mut grads = Weights::zeros(&model.cfg);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut out = vec![];
    let mut step = 0u64;
    for _ in 0..cfg.epochs {
        let mut order: Vec<usize> = (0..examples.len()).collect();
        order.shuffle(&mut rng);
        for chunk in order.chunks(cfg.batch) {
            let lr = cosine_lr(step, cfg.warmup_steps, total, cfg.lr, 0.0);
            model.zero_grads(&mut grads)?;
            let norm: usize = chunk.iter().map(|&i| examples[i].trained_tokens()).sum();
            let lengths: Vec<usize> = chunk.iter().map(|&i| examples[i].ids.len()).collect();
            let bins = pack(&lengths, cfg.micro_batch_tokens);
            let mut loss = 0.0;
            for bin in &bins {
                let part: Vec<&Example> = bin.iter().map(|&j| &examples[chunk[j]]).collect();
                loss += accumulate_nll(model, &part, norm.max(1) as f64, &mut grads)?;
            }
            let grad_norm = optimizer_step(model, opt, &mut grads, lr).with_context(|| format!("the RFT step {step} (loss {loss})"))?;
            let s = RftStep { step, loss, grad_norm, lr, trained_tokens: norm, tokens: lengths.iter().sum(), micro_batches: bins.len() };
            on_step(&s);
            out.push(s);
            step += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tiny::tiny_model;
    use crate::train::optimizer::OptimConfig;

    #[test]
    fn masks_shift_to_the_predicting_position() {
        let e = Example::from_mask(&[10, 11, 12, 13], &[false, false, true, true]);
        assert_eq!(e.weight, vec![0.0, 1.0, 1.0, 0.0]);
        assert_eq!(e.trained_tokens(), 2);
    }

    #[test]
    fn packing_is_first_fit_longest_first() {
        let bins = pack(&[5, 9, 3, 4, 12, 1], 10);
        assert_eq!(bins, vec![vec![4], vec![1, 5], vec![0, 3], vec![2]]);
        // everything is placed once
        let mut all: Vec<usize> = bins.concat();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn accumulating_micro_batches_equals_one_batch() {
        let mut m = tiny_model(1);
        let a = Example { ids: vec![1, 2, 3, 4, 5, 6], weight: vec![0.0, 1.0, 1.0, 0.0, 1.0, 0.0] };
        let b = Example { ids: vec![7, 8, 9], weight: vec![1.0, 1.0, 0.0] };
        let norm = (a.trained_tokens() + b.trained_tokens()) as f64;
        let mut g1 = Weights::zeros(&m.cfg);
        let l1 = accumulate_nll(&mut m, &[&a, &b], norm, &mut g1).unwrap();
        let mut g2 = Weights::zeros(&m.cfg);
        let l2 = accumulate_nll(&mut m, &[&a], norm, &mut g2).unwrap() + accumulate_nll(&mut m, &[&b], norm, &mut g2).unwrap();
        assert!((l1 - l2).abs() < 1e-6, "{l1} vs {l2}");
        let (x, y) = (&g1.embed.data, &g2.embed.data);
        let scale = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        assert!(x.iter().zip(y).all(|(p, q)| (p - q).abs() <= 1e-5 * scale.max(1e-6)));
    }

    #[test]
    fn training_lowers_the_loss_of_the_kept_tokens() {
        let mut m = tiny_model(2);
        let ex = vec![Example::from_mask(&[1, 5, 9, 5, 9, 5, 9, 2], &[false, true, true, true, true, true, true, true]); 4];
        let oc = OptimConfig { lr: 3e-3, weight_decay: 0.1, ..Default::default() };
        let mut opt = AdamW::new(oc, &m.cfg);
        let cfg = RftConfig { lr: 3e-3, warmup_steps: 2, batch: 2, epochs: 10, micro_batch_tokens: 8, samples_per_task: 1, ..Default::default() };
        let steps = train(&mut m, &mut opt, &ex, &cfg, |_| {}).unwrap();
        assert_eq!(steps.len(), 20);
        assert_eq!(steps[0].micro_batches, 2, "two 8-token sequences in micro-batches of 8 tokens");
        assert!(steps.last().unwrap().loss < steps[0].loss * 0.5, "{} -> {}", steps[0].loss, steps.last().unwrap().loss);
        assert_eq!(steps.last().unwrap().lr, cosine_lr(19, 2, 20, 3e-3, 0.0));
        assert!(train(&mut m, &mut opt, &[], &cfg, |_| {}).unwrap_err().to_string().contains("no successful trajectories"));
    }
}
