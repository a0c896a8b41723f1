//! Policies: whatever writes the agent's replies, behind one trait.
//!
//! Owns: the [`Policy`] trait (given the conversation so far, as token ids
//! and as text, produce one reply), the local-engine policy over this
//! project's generation service, and the sampling seed of each turn. The
//! OpenAI-compatible endpoint policy is in `endpoint`, the scripted ones in
//! `scripted`. Does not own the episode loop or tokenization of observations.
//!
//! A reply carries the exact sampled ids and their log-probs when the policy
//! knows them (the local engine, a completions endpoint that returns token
//! ids). Otherwise it carries text only, and the scaffold tokenizes it and
//! marks the turn as re-tokenized, with no log-probs: fine for rejection
//! fine-tuning, never used as a sampling distribution.

use crate::engine::service::{EngineService, GenRequest};
use crate::engine::{FinishReason, SamplingParams};
use crate::env::task::Task;
use crate::model::chat::{Message, Rendered};
use crate::model::tokenizer::Tokenizer;
use anyhow::Result;
use async_trait::async_trait;

/// What a policy sees when it is asked for a reply.
pub struct TurnInput<'a> {
    pub task: &'a Task,
    /// The conversation so far as text (system, task, replies, observations).
    pub messages: &'a [Message],
    /// The same conversation as the exact ids of the ledger, ending with the
    /// generation prompt `<|im_start|>assistant\n`.
    pub ledger: &'a Rendered,
    /// Turn number, from 0.
    pub turn: u32,
    /// At most this many tokens may be produced (the per-turn limit or what
    /// is left of the context, whichever is smaller).
    pub max_new_tokens: usize,
    /// The seed for this turn's sampling.
    pub seed: u64,
}

/// One reply.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// The reply's text, without the closing `<|im_end|>`.
    pub text: String,
    /// The sampled ids, ending with `<|im_end|>` when the policy ended its
    /// turn; `None` when only text is known.
    pub ids: Option<Vec<u32>>,
    /// One sampling log-prob per id in `ids`.
    pub logprobs: Option<Vec<f32>>,
    pub finish: FinishReason,
    pub policy_version: Option<u64>,
}

#[async_trait]
pub trait Policy: Send + Sync {
    /// A short name for trajectories and tables.
    fn name(&self) -> String;
    /// The next reply. An error means the policy itself failed (for example
    /// its server went away); the episode ends as a policy error.
    async fn act(&self, input: TurnInput<'_>) -> Result<Reply>;
}

/// The sampling seed of turn `turn` of an episode seeded `episode_seed`:
/// fixed by the two, so a run can be repeated and two policies can be
/// compared token for token.
pub fn turn_seed(episode_seed: u64, turn: u32) -> u64 {
    // SplitMix64 of the pair: well spread, no two turns share a stream start.
    let mut z = episode_seed ^ ((turn as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of sample `sample` of task `task_index` in a run seeded `seed`.
pub fn episode_seed(seed: u64, task_index: usize, sample: u32) -> u64 {
    turn_seed(turn_seed(seed, task_index as u32), sample)
}

/// This project's engine, in process.
pub struct LocalPolicy {
    pub engine: EngineService,
    pub tokenizer: Tokenizer,
    /// Temperature, truncations; `max_new_tokens` and `seed` are set per turn.
    pub params: SamplingParams,
}

#[async_trait]
impl Policy for LocalPolicy {
    fn name(&self) -> String {
        format!("local:{}", self.engine.info().name)
    }

    async fn act(&self, input: TurnInput<'_>) -> Result<Reply> {
        let mut params = self.params.clone();
        params.max_new_tokens = input.max_new_tokens;
        params.seed = input.seed;
        let stop = self.tokenizer.stop_ids();
        let g = self.engine.generate(GenRequest { prompt: input.ledger.ids.clone(), params, stop: stop.clone() }).await?;
        let c = g.completion;
        let body: &[u32] = match c.tokens.last() {
            Some(t) if c.finish == FinishReason::Stop && stop.contains(t) => &c.tokens[..c.tokens.len() - 1],
            _ => &c.tokens,
        };
        let text = self.tokenizer.decode(body)?;
        Ok(Reply { text, ids: Some(c.tokens), logprobs: Some(c.logprobs), finish: c.finish, policy_version: Some(g.policy_version) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_per_turn_and_sample_and_are_fixed() {
        assert_eq!(turn_seed(7, 3), turn_seed(7, 3));
        let mut s: Vec<u64> = (0..50).map(|t| turn_seed(7, t)).collect();
        s.extend((0..50).map(|k| episode_seed(7, 0, k)));
        s.extend((0..50).map(|i| episode_seed(7, i, 0)));
        let n = s.len();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), n - 1, "only episode_seed(7,0,0) appears twice");
    }
}
