//! `cargo bench --bench model`: CPU throughput of the model core.
//!
//! Reports, for a stated config, forward+backward tokens/s and generation
//! tokens/s (median of repeated runs after a warm-up), and ratios against a
//! baseline measured in the same process: recomputation against keeping
//! activations, and batched against single-sequence decoding.

use appliance::engine::{generate, SamplingParams};
use appliance::model::qwen2::Batch;
use appliance::model::{Model, ModelConfig, Weights};
use std::time::Instant;

const CONFIG: &str = r#"{"model_type":"qwen2","vocab_size":8192,"hidden_size":256,"intermediate_size":704,
  "num_hidden_layers":4,"num_attention_heads":8,"num_key_value_heads":2,"max_position_embeddings":4096,
  "rms_norm_eps":1e-6,"rope_theta":10000.0,"tie_word_embeddings":true}"#;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn measure(reps: usize, mut f: impl FnMut() -> usize) -> (f64, f64, f64) {
    f(); // warm-up
    let rates: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            let n = f();
            n as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    let lo = rates.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = rates.iter().cloned().fold(0.0, f64::max);
    (median(rates), lo, hi)
}

fn main() {
    let cfg = ModelConfig::from_json_str(CONFIG, "bench config").unwrap();
    let mut model = Model::new(cfg.clone(), Weights::init(&cfg, 0, 0.02));
    let threads = rayon::current_num_threads();
    println!(
        "model: hidden {}, {} layers, {} heads / {} kv heads, vocab {}, {:.1}M parameters; {threads} threads",
        cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size, cfg.num_params() as f64 / 1e6
    );
    let seqs: Vec<Vec<u32>> = (0..4).map(|s| (0..256).map(|i| ((i * 31 + s * 7) % 8192) as u32).collect()).collect();
    let batch = Batch::from_sequences(&seqs);
    let weight = vec![1.0f32; batch.len()];
    let mut grads = Weights::zeros(&cfg);
    let mut fb = |m: &mut Model| {
        grads.zero();
        m.nll_loss_and_grads(&batch, &weight, &mut grads).unwrap();
        batch.len()
    };
    let (keep, klo, khi) = measure(5, || fb(&mut model));
    model.recompute = true;
    let (rec, rlo, rhi) = measure(5, || fb(&mut model));
    model.recompute = false;
    println!("{:<44} {:>10} {:>20}", "measurement", "tokens/s", "min..max");
    println!("{:<44} {:>10.0} {:>9.0}..{:<9.0}", "forward+backward, 4x256 tokens", keep, klo, khi);
    println!("{:<44} {:>10.0} {:>9.0}..{:<9.0}", "forward+backward, recompute", rec, rlo, rhi);
    let params = SamplingParams { max_new_tokens: 64, ..Default::default() };
    let prompt: Vec<u32> = (0..64).map(|i| (i * 17 % 8192) as u32).collect();
    let (g1, g1lo, g1hi) = measure(3, || {
        generate(&mut model, &[prompt.clone()], &params, &[], false).unwrap()[0].tokens.len()
    });
    let prompts: Vec<Vec<u32>> = (0..8).map(|_| prompt.clone()).collect();
    let (g8, g8lo, g8hi) = measure(3, || {
        generate(&mut model, &prompts, &params, &[], false).unwrap().iter().map(|c| c.tokens.len()).sum()
    });
    println!("{:<44} {:>10.0} {:>9.0}..{:<9.0}", "generation, batch 1, 64-token prompt, 64 new", g1, g1lo, g1hi);
    println!("{:<44} {:>10.0} {:>9.0}..{:<9.0}", "generation, batch 8, 64-token prompt, 64 new", g8, g8lo, g8hi);
    println!("ratios: recompute/keep {:.2}x; batch-8/batch-1 generation {:.2}x", rec / keep, g8 / g1);
}
