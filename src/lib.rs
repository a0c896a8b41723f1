//! appliance: one binary that turns an open-weight LLM into a better
//! software-engineering agent through reinforcement learning.
//!
//! Layers (a layer imports only layers below it):
//! `cli` → `pipeline` → `agent`/`train` → `env`/`engine` → `model` → `backend` → `tensor`.
//! `config` is plain data usable from every layer. See docs/ARCHITECTURE.md.

pub mod agent;
pub mod backend;
pub mod bench;
pub mod cli;
pub mod config;
pub mod decimal;
pub mod device;
pub mod engine;
pub mod env;
pub mod files;
pub mod kernels;
pub mod model;
pub mod monitor;
pub mod parallel;
pub mod pipeline;
pub mod report;
pub mod serve;
pub mod signals;
pub mod tensor;
pub mod train;
