//! Watching the node: NVML snapshots of every GPU, a sampler thread that
//! feeds the metrics stream during long work, metric aggregation and
//! warnings, and model FLOP utilization against each GPU's peak.
//!
//! Owns: everything NVML, and CPU-time sampling when there is no GPU. Does
//! not own what is being measured (the bench suites, the trainer).

pub mod gpu;
pub mod metrics;
pub mod mfu;
pub mod sampler;
