//! The `model` suite: forward+backward tokens/s (keeping activations, and
//! with recomputation) and generation tokens/s (batch 1 and batch 8) for a
//! stated config, on the CPU backend (the GPU backend comes later); and the
//! engine's row-invariant product against the gemm crate's.

use super::{measure, Row};
use crate::engine::{generate, SamplingParams};
use crate::model::qwen2::Batch;
use crate::model::{Model, ModelConfig, Weights};
use anyhow::Result;

/// The stated benchmark config: 4 layers, hidden 256, 8 heads / 2 KV
/// heads, vocabulary 8192 (4.9M parameters).
pub const CONFIG: &str = r#"{"model_type":"qwen2","vocab_size":8192,"hidden_size":256,"intermediate_size":704,
  "num_hidden_layers":4,"num_attention_heads":8,"num_key_value_heads":2,"max_position_embeddings":4096,
  "rms_norm_eps":1e-6,"rope_theta":10000.0,"tie_word_embeddings":true}"#;

pub fn config() -> ModelConfig {
    ModelConfig::from_json_str(CONFIG, "bench model config").expect("valid bench config")
}

pub fn run(repeats: usize) -> Result<Vec<Row>> {
    let cfg = config();
    let mut model = Model::new(cfg.clone(), Weights::init(&cfg, 0, 0.02));
    let seqs: Vec<Vec<u32>> = (0..4).map(|s| (0..256).map(|i| ((i * 31 + s * 7) % 8192) as u32).collect()).collect();
    let batch = Batch::from_sequences(&seqs);
    let weight = vec![1.0f32; batch.len()];
    let mut grads = Weights::zeros(&cfg);
    let mut rows = vec![];
    for recompute in [false, true] {
        model.recompute = recompute;
        let name = if recompute { "forward+backward 4x256, recompute" } else { "forward+backward 4x256" };
        rows.push(measure("model", name, "tokens/s", repeats, true, true, || {
            grads.zero();
            model.nll_loss_and_grads(&batch, &weight, &mut grads)?;
            Ok(batch.len() as f64)
        })?);
    }
    model.recompute = false;
    let params = SamplingParams { max_new_tokens: 32, ..Default::default() };
    let prompt: Vec<u32> = (0..64).map(|i| (i * 17 % 8192) as u32).collect();
    for b in [1usize, 8] {
        let prompts: Vec<Vec<u32>> = (0..b).map(|_| prompt.clone()).collect();
        rows.push(measure("model", &format!("generation batch {b}, 64 prompt + 32 new"), "tokens/s", repeats, true, true, || {
            let out = generate(&mut model, &prompts, &params, &[], false)?;
            Ok(out.iter().map(|c| c.tokens.len()).sum::<usize>() as f64)
        })?);
    }
    // The engine's row-invariant product against the gemm crate's, at the
    // shape of one MLP projection of Qwen2.5-0.5B (896 -> 4864): decode
    // (8 rows) and prefill (512 rows). What reproducible batching costs.
    let (din, dout) = (896usize, 4864usize);
    let w = crate::backend::cpu::gradcheck::random_vec(dout * din, 1);
    for n in [8usize, 512] {
        let x = crate::backend::cpu::gradcheck::random_vec(n * din, 2);
        let mut y = vec![0.0f32; n * dout];
        let flops = 2.0 * (n * din * dout) as f64 / 1e9;
        let gemm = measure("model", &format!("linear {n}x{din}->{dout}, gemm crate"), "GFLOP/s", repeats, false, true, || {
            crate::backend::cpu::matmul::linear_fwd(&mut y, &x, &w, None, n, din, dout);
            Ok(flops)
        })?;
        let inv = measure("model", &format!("linear {n}x{din}->{dout}, row-invariant (the engine's)"), "GFLOP/s", repeats, false, true, || {
            crate::backend::cpu::matmul::linear_fwd_row_invariant(&mut y, &x, &w, None, n, din, dout);
            Ok(flops)
        })?;
        let ratio = inv.median / gemm.median;
        rows.push(gemm);
        rows.push(inv);
        rows.push(Row::derived("model", format!("row-invariant / gemm crate speed, {n} rows"), ratio, "x", repeats));
    }
    Ok(rows)
}
