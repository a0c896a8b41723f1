//! Training: the optimizer and schedule, the supervised step, rejection
//! fine-tuning on successful trajectories (`rft`), and the RL algorithms
//! (`algorithms`: group advantages, the DAPO loss and step).
//!
//! Owns: turning gradients into weight updates, and which tokens of which
//! trajectories are trained on. Does not own the gradients' math (see
//! `model::qwen2`) or where trajectories come from (`agent`).

pub mod algorithms;
pub mod optimizer;
pub mod rft;
pub mod supervised;
