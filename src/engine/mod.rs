//! Generation: batched decoding over per-sequence KV caches, and sampling.
//!
//! Owns: turning prompts into completions with the exact log-probability of
//! every sampled token under the distribution it was drawn from, and the
//! in-process generation service (`service`) that batches requests from
//! episodes and the HTTP server. Does not own
//! the model's math (see `model::qwen2::Model::forward_cached`) or chat
//! formatting (see `model::chat`).

pub mod generate;
pub mod sampling;
pub mod service;

pub use generate::{generate, generate_each, Completion, FinishReason, SeqRequest};
pub use sampling::SamplingParams;
