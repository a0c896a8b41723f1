//! Training: the optimizer and schedule, and the supervised loop the demo
//! and (later) rejection fine-tuning use.
//!
//! Owns: turning gradients into weight updates. Does not own the gradients'
//! math (see `model::qwen2`) or what data is trained on (the callers).

pub mod optimizer;
pub mod supervised;
