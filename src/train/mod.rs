//! Training: the optimizer and schedule, the supervised loop the demo and
//! rejection fine-tuning use, and the RL algorithms (advantages, the DAPO
//! loss and step).
//!
//! Owns: turning gradients into weight updates. Does not own the gradients'
//! math (see `model::qwen2`) or what data is trained on (the callers).

pub mod algorithms;
pub mod optimizer;
pub mod supervised;
