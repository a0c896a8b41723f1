//! Generation: batched decoding over per-sequence KV caches, and sampling.
//!
//! Owns: turning prompts into completions with the exact log-probability of
//! every sampled token under the distribution it was drawn from. Does not own
//! the model's math (see `model::qwen2::Model::forward_cached`) or chat
//! formatting (see `model::chat`).

pub mod generate;
pub mod sampling;

pub use generate::{generate, Completion, FinishReason};
pub use sampling::SamplingParams;
