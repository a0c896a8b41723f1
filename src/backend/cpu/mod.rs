//! CPU reference ops: f32 compute, rayon for threads, the `gemm` crate for
//! matrix products.
//!
//! Every op is deterministic: parallel work is split over disjoint outputs,
//! never over a floating-point reduction, so a CPU run is reproducible bit for
//! bit whatever the thread count.

pub mod adamw;
pub mod gradcheck;
pub mod attention;
pub mod dapo_loss;
pub mod attention_block;
pub mod attention_merge;
pub mod decode_attention;
pub mod attn_block_bwd;
pub mod embedding;
pub mod head_pad;
pub mod logprob;
pub mod matmul;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;
