//! Model FLOP utilization: the FLOPs a model needs per token, and the peak
//! dense BF16 throughput of each GPU model.
//!
//! FLOPs per token follow the usual accounting (Kaplan et al.; Chowdhery et
//! al.'s PaLM appendix): a forward pass costs 2 FLOPs per parameter that
//! multiplies (embeddings excluded, LM head included) plus the attention
//! scores and weighted sum, 4·L·(heads·head_dim)·T for a token attending to T
//! keys (halved under a causal mask, on average over a sequence). Training
//! (forward + backward) costs three times the forward.

use crate::model::ModelConfig;

/// Dense BF16 tensor-core peak in TFLOP/s, matched by GPU name.
const PEAKS: &[(&str, f64)] = &[
    ("H200", 989.0),
    ("H100 SXM", 989.0),
    ("H100 80GB HBM3", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
];

/// Peak dense BF16 TFLOP/s for a GPU name as NVML reports it.
pub fn peak_tflops(gpu_name: &str) -> Option<f64> {
    PEAKS.iter().find(|(k, _)| gpu_name.contains(k)).map(|(_, v)| *v)
}

/// Parameters that take part in matrix products per token (all but the
/// embedding lookup; a tied LM head still multiplies).
pub fn matmul_params(cfg: &ModelConfig) -> f64 {
    let (h, i, v) = (cfg.hidden_size as f64, cfg.intermediate_size as f64, cfg.vocab_size as f64);
    let (qd, kvd) = (cfg.q_dim() as f64, cfg.kv_dim() as f64);
    let per_layer = h * qd + 2.0 * h * kvd + qd * h + 3.0 * h * i;
    cfg.num_layers as f64 * per_layer + v * h
}

/// FLOPs per token of a forward pass over sequences of `seq_len` tokens
/// with a causal mask (each token attends to (seq_len+1)/2 keys on average).
pub fn forward_flops_per_token(cfg: &ModelConfig, seq_len: usize) -> f64 {
    let attended = (seq_len as f64 + 1.0) / 2.0;
    2.0 * matmul_params(cfg) + 4.0 * cfg.num_layers as f64 * cfg.q_dim() as f64 * attended
}

/// Forward + backward.
pub fn training_flops_per_token(cfg: &ModelConfig, seq_len: usize) -> f64 {
    3.0 * forward_flops_per_token(cfg, seq_len)
}

/// Achieved FLOP/s over the peak of `gpus` devices of `peak_tflops` each.
pub fn mfu(tokens_per_s: f64, flops_per_token: f64, peak_tflops: f64, gpus: usize) -> f64 {
    tokens_per_s * flops_per_token / (peak_tflops * 1e12 * gpus.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ModelConfig {
        // hidden 8, 2 layers, 2 heads of 4, 1 KV head, MLP 16, vocab 10.
        ModelConfig::from_json_str(
            r#"{"vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":2,
                "num_attention_heads":2,"num_key_value_heads":1,"tie_word_embeddings":true}"#,
            "mfu test",
        )
        .unwrap()
    }

    #[test]
    fn flops_by_hand() {
        // Per layer: q 8·8=64, k 8·4=32, v 32, o 64, MLP 3·8·16=384 → 576;
        // two layers 1152; LM head 10·8=80 → 1232 multiplying parameters.
        assert_eq!(matmul_params(&cfg()), 1232.0);
        // Forward at T=3: 2·1232 + 4·2·8·(4/2) = 2464 + 128 = 2592.
        assert_eq!(forward_flops_per_token(&cfg(), 3), 2592.0);
        assert_eq!(training_flops_per_token(&cfg(), 3), 7776.0);
    }

    #[test]
    fn mfu_by_hand() {
        // 1e6 tokens/s × 6e8 FLOPs = 6e14 = 600 TFLOP/s; on one 989 → 0.6067.
        let m = mfu(1e6, 6e8, 989.0, 1);
        assert!((m - 600.0 / 989.0).abs() < 1e-12);
        // Over 8 GPUs it is an eighth.
        assert!((mfu(1e6, 6e8, 989.0, 8) - m / 8.0).abs() < 1e-12);
    }

    #[test]
    fn peak_table() {
        assert_eq!(peak_tflops("NVIDIA H100 80GB HBM3"), Some(989.0));
        assert_eq!(peak_tflops("NVIDIA H200"), Some(989.0));
        assert_eq!(peak_tflops("NVIDIA H100 PCIe"), Some(756.0));
        assert_eq!(peak_tflops("NVIDIA A100-SXM4-80GB"), Some(312.0));
        assert_eq!(peak_tflops("Some CPU"), None);
    }
}
