//! Batched generation: prefill every prompt, then decode all unfinished
//! sequences together, one token each per step.
//!
//! Each sequence samples from its own ChaCha8 stream (seed, stream = its
//! index in the batch), so a sequence's tokens do not depend on what else is
//! in the batch or on thread scheduling.

use super::sampling::{sample, SamplingParams};
use crate::model::qwen2::{KvCache, Model};
use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token was sampled (it is included in `tokens`).
    Stop,
    /// `max_new_tokens` was reached.
    Length,
    /// The model's maximum context was reached.
    Context,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub tokens: Vec<u32>,
    /// Log-probability of each token under the distribution it was drawn from.
    pub logprobs: Vec<f32>,
    pub finish: FinishReason,
}

/// Generate one completion per prompt.
pub fn generate(model: &mut Model, prompts: &[Vec<u32>], params: &SamplingParams, stop: &[u32], progress: bool) -> Result<Vec<Completion>> {
    params.validate()?;
    let max_ctx = model.cfg.max_position_embeddings;
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            bail!("prompt {i} is empty");
        }
        if p.len() >= max_ctx {
            bail!("prompt {i} has {} tokens, but the model's context is {max_ctx}", p.len());
        }
    }
    let n = prompts.len();
    let mut caches: Vec<KvCache> = (0..n).map(|_| KvCache::new(&model.cfg)).collect();
    let mut rngs: Vec<ChaCha8Rng> = (0..n)
        .map(|i| {
            let mut r = ChaCha8Rng::seed_from_u64(params.seed);
            r.set_stream(i as u64);
            r
        })
        .collect();
    let mut out: Vec<Completion> = (0..n).map(|_| Completion { tokens: vec![], logprobs: vec![], finish: FinishReason::Length }).collect();
    let bar = if progress { ProgressBar::new(params.max_new_tokens as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} tokens ({per_sec})").unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar.set_message("generating");

    // Prefill: all prompts in one packed pass.
    let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let mut logits = model.forward_cached(&refs, &mut caches, false)?;
    let mut active: Vec<usize> = (0..n).collect();
    for _ in 0..params.max_new_tokens {
        let mut next = Vec::with_capacity(active.len());
        let mut still = Vec::with_capacity(active.len());
        for (row, &s) in active.iter().enumerate() {
            let (tok, lp) = sample(&logits[row], params, &mut rngs[s]);
            out[s].tokens.push(tok);
            out[s].logprobs.push(lp);
            if stop.contains(&tok) {
                out[s].finish = FinishReason::Stop;
            } else if caches[s].len + 1 >= max_ctx {
                out[s].finish = FinishReason::Context;
            } else {
                still.push(s);
                next.push(tok);
            }
        }
        bar.inc(1);
        active = still;
        if active.is_empty() || out[active[0]].tokens.len() >= params.max_new_tokens {
            break;
        }
        // Decode: one token for each active sequence, batched.
        let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let refs: Vec<&[u32]> = toks.iter().map(|t| &t[..]).collect();
        let mut sub: Vec<KvCache> = active.iter().map(|&s| std::mem::take(&mut caches[s])).collect();
        logits = model.forward_cached(&refs, &mut sub, false)?;
        for (&s, c) in active.iter().zip(sub) {
            caches[s] = c;
        }
    }
    bar.finish_and_clear();
    Ok(out)
}
