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

/// One sequence to generate: its prompt, its sampling parameters (each
/// sequence may have its own temperature, token limit and seed) and the
/// ChaCha8 stream its draws come from.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub stream: u64,
}

/// Generate one completion per prompt; prompt `i` samples from stream `i`
/// of `params.seed`.
pub fn generate(model: &mut Model, prompts: &[Vec<u32>], params: &SamplingParams, stop: &[u32], progress: bool) -> Result<Vec<Completion>> {
    let reqs: Vec<SeqRequest> = prompts.iter().enumerate().map(|(i, p)| SeqRequest { prompt: p.clone(), params: params.clone(), stream: i as u64 }).collect();
    generate_each(model, &reqs, stop, progress)
}

/// Generate one completion per request, all decoded together. A sequence's
/// tokens depend only on its own prompt, parameters and stream, never on
/// what else is in the batch.
pub fn generate_each(model: &mut Model, reqs: &[SeqRequest], stop: &[u32], progress: bool) -> Result<Vec<Completion>> {
    let max_ctx = model.cfg.max_position_embeddings;
    for (i, r) in reqs.iter().enumerate() {
        r.params.validate()?;
        if r.prompt.is_empty() {
            bail!("prompt {i} is empty");
        }
        if r.prompt.len() >= max_ctx {
            bail!("prompt {i} has {} tokens, but the model's context is {max_ctx}", r.prompt.len());
        }
        if let Some(&bad) = r.prompt.iter().find(|&&t| t as usize >= model.cfg.vocab_size) {
            bail!("prompt {i} has token id {bad}, outside the model's vocabulary of {}", model.cfg.vocab_size);
        }
    }
    let n = reqs.len();
    let mut out: Vec<Completion> = (0..n).map(|_| Completion { tokens: vec![], logprobs: vec![], finish: FinishReason::Length }).collect();
    // A request for zero tokens is answered at once.
    let live: Vec<usize> = (0..n).filter(|&i| reqs[i].params.max_new_tokens > 0).collect();
    if live.is_empty() {
        return Ok(out);
    }
    let mut caches: Vec<KvCache> = (0..n).map(|_| KvCache::new(&model.cfg)).collect();
    let mut rngs: Vec<ChaCha8Rng> = reqs
        .iter()
        .map(|r| {
            let mut g = ChaCha8Rng::seed_from_u64(r.params.seed);
            g.set_stream(r.stream);
            g
        })
        .collect();
    let longest = live.iter().map(|&i| reqs[i].params.max_new_tokens).max().unwrap_or(0);
    let bar = if progress { ProgressBar::new(longest as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} tokens ({per_sec})").unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar.set_message("generating");

    // Prefill: all prompts in one packed pass.
    let refs: Vec<&[u32]> = live.iter().map(|&i| reqs[i].prompt.as_slice()).collect();
    let mut sub: Vec<KvCache> = live.iter().map(|&s| std::mem::take(&mut caches[s])).collect();
    let mut logits = model.forward_cached(&refs, &mut sub, false)?;
    for (&s, c) in live.iter().zip(sub) {
        caches[s] = c;
    }
    let mut active: Vec<usize> = live;
    loop {
        let mut next = Vec::with_capacity(active.len());
        let mut still = Vec::with_capacity(active.len());
        for (row, &s) in active.iter().enumerate() {
            let (tok, lp) = sample(&logits[row], &reqs[s].params, &mut rngs[s]);
            out[s].tokens.push(tok);
            out[s].logprobs.push(lp);
            if stop.contains(&tok) {
                out[s].finish = FinishReason::Stop;
            } else if caches[s].len + 1 >= max_ctx {
                out[s].finish = FinishReason::Context;
            } else if out[s].tokens.len() >= reqs[s].params.max_new_tokens {
                out[s].finish = FinishReason::Length;
            } else {
                still.push(s);
                next.push(tok);
            }
        }
        bar.inc(1);
        active = still;
        if active.is_empty() {
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
