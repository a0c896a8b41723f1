//! Training: the optimizer and schedule, the supervised step, and rejection
//! fine-tuning on successful trajectories.
//!
//! Owns: turning gradients into weight updates, and which tokens of which
//! trajectories are trained on. Does not own the gradients' math (see
//! `model::qwen2`) or where trajectories come from (`agent`).

pub mod optimizer;
pub mod rft;
pub mod supervised;
