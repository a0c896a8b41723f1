//! The PTX the binary ships, as `&'static str` constants, in one index.
//!
//! Owns: the list of kernel modules and the functions each exports. The PTX
//! is generated from cuda/*.cu by `cargo run -p xtask -- ptx` (NVRTC 12.4,
//! compute_80) and committed, so a plain `cargo build` needs no CUDA
//! toolkit. Devices load each module once and look functions up by name.

/// One compiled .cu file.
#[derive(Debug)]
pub struct PtxModule {
    pub name: &'static str,
    pub ptx: &'static str,
    pub functions: &'static [&'static str],
}

macro_rules! module {
    ($name:literal, [$($f:literal),* $(,)?]) => {
        PtxModule { name: $name, ptx: include_str!(concat!("../../ptx/", $name, ".ptx")), functions: &[$($f),*] }
    };
}

pub const MODULES: &[PtxModule] = &[
    module!("adamw", ["adamw_step"]),
    module!("attn_merge", ["attn_merge_fwd", "attn_merge_bwd"]),
    module!("cast", ["f32_to_bf16", "bf16_to_f32"]),
    module!("decode_attn", ["decode_attn_partial", "decode_attn_combine"]),
    module!("dapo_loss", ["dapo_loss_partial", "dapo_loss_finalize"]),
    module!("embedding", ["embedding_fwd", "embedding_bwd"]),
    module!("flash_attn_fwd", ["flash_attn_fwd_hd64", "flash_attn_fwd_hd128", "attn_block_fwd_hd64", "attn_block_fwd_hd128"]),
    module!("flash_attn_bwd", ["flash_attn_bwd_preprocess", "flash_attn_bwd_dkdv_hd64", "flash_attn_bwd_dkdv_hd128", "flash_attn_bwd_dq_hd64", "flash_attn_bwd_dq_hd128", "attn_block_bwd_dkdv_hd64", "attn_block_bwd_dkdv_hd128", "attn_block_bwd_dq_hd64", "attn_block_bwd_dq_hd128"]),
    module!("gemm_mma", ["gemm_bf16_tn"]),
    module!("head_pad", ["pad_heads_bf16", "unpad_heads_bf16", "unpad_heads_f32"]),
    module!("global_norm", ["sum_squares_partial", "sum_partials", "scale_f32"]),
    module!("logprob", ["logprob_entropy_fwd", "logprob_entropy_combine", "logprob_entropy_bwd_dhidden", "logprob_entropy_dhidden_reduce", "logprob_entropy_bwd_dw", "logprob_entropy_grad_chunk"]),
    module!("rmsnorm", ["rmsnorm_fwd", "rmsnorm_bwd", "rmsnorm_bwd_dw"]),
    module!("rope", ["rope_fwd", "rope_bwd"]),
    module!("swiglu", ["swiglu_fwd", "swiglu_bwd"]),
];

/// The module exporting `function`.
pub fn module_of(function: &str) -> Option<&'static PtxModule> {
    MODULES.iter().find(|m| m.functions.contains(&function))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_function_is_an_entry_of_its_ptx() {
        for m in MODULES {
            for f in m.functions {
                assert!(m.ptx.contains(&format!(".entry {f}(")), "{}.ptx lacks .entry {f}", m.name);
            }
            let entries = m.ptx.matches(".entry ").count();
            assert_eq!(entries, m.functions.len(), "{}.ptx has {entries} entries; the index lists {}", m.name, m.functions.len());
        }
    }
}
