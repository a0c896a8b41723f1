//! The ops the model calls, by name: matmul, rmsnorm, rope, attention,
//! swiglu, embedding, chunked log-prob/entropy, AdamW and the global norm.
//!
//! Owns: the CPU implementation in `cpu`, one file per layer kind with its
//! forward and backward side by side. It is the numerical reference that every
//! GPU kernel is checked against. Does not own: the model's wiring of those
//! ops (see `model::qwen2`), or device memory (the GPU backend comes later).

pub mod cpu;
pub mod gpu;
