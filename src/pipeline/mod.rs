//! `appliance train`: the product's main job, end to end. Warm start (the
//! embedded default's stand-in for an instruct model), rejection
//! fine-tuning on the policy's own successes, then synchronous DAPO, with
//! the held-out pass rate measured before and after each phase.
//!
//! Owns: the order of the phases and their units of work (`run`), the run
//! directory, checkpoints and resume (`state`), and the curriculum filter
//! (`curriculum`). Does not own episodes (`agent`), losses and optimizer
//! steps (`train`), generation (`engine`) or the environments (`env`); it
//! calls them. Sits above all of them and below `cli` (and `report`, which
//! only reads what a run wrote).

pub mod curriculum;
pub mod run;
pub mod state;

pub use run::{train, TrainOptions};
