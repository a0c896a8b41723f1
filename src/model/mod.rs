//! The Qwen2-family model: its config, weights, tokenizer and chat ledger,
//! and the forward and backward written out per layer.
//!
//! Owns: everything about one model that does not depend on how it is used.
//! Does not own: sampling and batching (`engine`), training loops (`train`).

pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod memory_plan;
pub mod pretrained;
pub mod qwen2;
pub mod qwen2_gpu;
pub mod tiny;
pub mod tokenizer;
pub mod weights;

pub use config::ModelConfig;
pub use qwen2::Model;
pub use weights::Weights;
