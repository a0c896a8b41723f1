//! Whole-model checks on small random models: gradients against finite
//! differences, KV-cache decoding against full recomputation, generation's
//! log-probabilities against the model, and bit-for-bit determinism.

use appliance::backend::cpu::gradcheck::random_vec;
use appliance::engine::{generate, SamplingParams};
use appliance::model::qwen2::{Batch, KvCache};
use appliance::model::weights::ParamKind;
use appliance::model::{Model, ModelConfig, Weights};
use appliance::tensor::Tensor;

/// A small config of each family: Qwen2 with QKV bias, GQA and YaRN; Qwen3
/// with q/k norm, explicit head_dim and no bias.
fn small_config(qwen3: bool) -> ModelConfig {
    let text = if qwen3 {
        r#"{"model_type":"qwen3","vocab_size":37,"hidden_size":16,"intermediate_size":24,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":2,"head_dim":6,"attention_bias":false,
            "rms_norm_eps":1e-6,"rope_theta":1000000,"max_position_embeddings":64,"tie_word_embeddings":true}"#
    } else {
        r#"{"model_type":"qwen2","vocab_size":37,"hidden_size":16,"intermediate_size":24,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":1,"rms_norm_eps":1e-6,"max_position_embeddings":64,
            "tie_word_embeddings":false,"rope_theta":10000.0,
            "rope_scaling":{"type":"yarn","factor":4.0,"original_max_position_embeddings":16}}"#
    };
    ModelConfig::from_json_str(text, "small").unwrap()
}

/// Random weights with non-trivial norms and biases.
fn random_model(cfg: &ModelConfig, seed: u64) -> Model {
    let mut s = seed;
    let w = Weights::build(cfg, |_, shape, kind| {
        s += 1;
        let n: usize = shape.iter().product();
        let r = random_vec(n, s);
        let data = match kind {
            ParamKind::Matrix => r.iter().map(|x| 0.5 * x).collect(),
            ParamKind::Bias => r.iter().map(|x| 0.2 * x).collect(),
            ParamKind::Norm => r.iter().map(|x| 1.0 + 0.3 * x).collect(),
        };
        Ok(Tensor { shape: shape.to_vec(), data })
    })
    .unwrap();
    Model::new(cfg.clone(), w)
}

fn whole_model_gradcheck(qwen3: bool, recompute: bool) {
    let cfg = small_config(qwen3);
    let mut model = random_model(&cfg, 11);
    model.vocab_chunk = 10;
    model.recompute = recompute;
    let batch = Batch::from_sequences(&[vec![1u32, 5, 9, 2, 30, 7, 7, 3], vec![4, 8, 15, 16, 23, 36]]);
    let weight: Vec<f32> = (0..batch.len()).map(|i| 0.5 + (i % 3) as f32 * 0.25).collect();
    let mut grads = Weights::zeros(&cfg);
    model.nll_loss_and_grads(&batch, &weight, &mut grads).unwrap();

    let names: Vec<String> = grads.named(&cfg).into_iter().map(|(n, _)| n).collect();
    let analytic: Vec<Tensor> = grads.tensors().into_iter().cloned().collect();
    let eps = 1e-2f32;
    for (ti, name) in names.iter().enumerate() {
        let n = analytic[ti].numel();
        let coords: Vec<usize> = (0..6).map(|k| (k * 7919 + 13) % n).collect();
        let scale = analytic[ti].max_abs().max(1e-3);
        for &c in &coords {
            let eval = |delta: f32| {
                let mut m = model.clone();
                m.weights.tensors_mut()[ti].data[c] += delta;
                let mut g = Weights::zeros(&cfg);
                m.nll_loss_and_grads(&batch, &weight, &mut g).unwrap()
            };
            let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps as f64);
            let a = analytic[ti].data[c] as f64;
            let err = (numeric - a).abs();
            assert!(
                err < 2e-3 * (scale as f64).max(numeric.abs()) + 2e-4,
                "{} coord {c}: analytic {a} vs numeric {numeric} (qwen3={qwen3})",
                name
            );
        }
    }
}

#[test]
fn qwen2_gradients_match_finite_differences() {
    whole_model_gradcheck(false, false);
}

#[test]
fn qwen3_gradients_match_finite_differences() {
    whole_model_gradcheck(true, false);
}

#[test]
fn recomputation_gradients_match_finite_differences() {
    whole_model_gradcheck(false, true);
}

fn full_logits(model: &mut Model, ids: &[u32]) -> Vec<f32> {
    let batch = Batch::from_sequences(&[ids.to_vec()]);
    let st = model.forward(&batch).unwrap();
    model.logits(&st)
}

#[test]
fn kv_cache_decoding_matches_full_recomputation() {
    for qwen3 in [false, true] {
        let cfg = small_config(qwen3);
        let mut model = random_model(&cfg, 5);
        let ids: Vec<u32> = (0..40).map(|i| (i * 13 + 5) % 37).collect();
        let want = full_logits(&mut model, &ids);
        let v = cfg.vocab_size;
        // Prefill 7, then appends of 1, 3, 1, 1, 5, ... up to the end.
        let mut cache = KvCache::new(&cfg);
        let mut at = 0;
        let steps = [7usize, 1, 3, 1, 1, 5, 1, 2, 9, 1, 1, 8];
        for &s in steps.iter().cycle() {
            if at >= ids.len() {
                break;
            }
            let s = s.min(ids.len() - at);
            let got = model.forward_cached(&[&ids[at..at + s]], std::slice::from_mut(&mut cache), true).unwrap();
            for (j, row) in got.iter().enumerate() {
                let p = at + j;
                let w = &want[p * v..(p + 1) * v];
                let d = row.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(d < 1e-5, "position {p}: cached logits differ by {d} (qwen3={qwen3})");
            }
            at += s;
        }
        assert_eq!(cache.len, ids.len());
    }
}

#[test]
fn generation_logprobs_are_the_models_and_batching_changes_nothing() {
    let cfg = small_config(false);
    let mut model = random_model(&cfg, 9);
    let prompts = vec![vec![1u32, 2, 3], vec![7u32, 7, 7, 7, 7], vec![30u32]];
    let params = SamplingParams { max_new_tokens: 12, seed: 42, ..Default::default() };
    let batched = generate(&mut model, &prompts, &params, &[], false).unwrap();
    // Same seed twice: identical.
    assert_eq!(batched, generate(&mut model, &prompts, &params, &[], false).unwrap());
    // Each recorded log-prob is log softmax of the full forward at that point.
    for (p, c) in prompts.iter().zip(&batched) {
        assert_eq!(c.tokens.len(), 12);
        let mut seq = p.clone();
        seq.extend(&c.tokens);
        let logits = full_logits(&mut model, &seq);
        let v = cfg.vocab_size;
        for (j, (&tok, &lp)) in c.tokens.iter().zip(&c.logprobs).enumerate() {
            let row = &logits[(p.len() + j - 1) * v..(p.len() + j) * v];
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let lse = m + row.iter().map(|&z| (z as f64 - m).exp()).sum::<f64>().ln();
            let want = row[tok as usize] as f64 - lse;
            assert!((lp as f64 - want).abs() < 1e-4, "token {j}: {lp} vs {want}");
        }
    }
    // A sequence's tokens don't depend on what else is in the batch: the
    // first two prompts without the third give the same completions.
    let alone = generate(&mut model, &prompts[..2], &params, &[], false).unwrap();
    assert_eq!(alone[..], batched[..2]);
}

/// The embedded tiny model's sequence decodes to the same bits alone and
/// at any place in batches of other sequences of other lengths: the engine
/// batches whatever requests wait together, so without this the default run
/// was not reproducible at `rollout.concurrency` > 1.
#[test]
fn a_sequence_samples_the_same_bits_in_any_batch() {
    use appliance::engine::generate::{generate_each, SeqRequest};
    let mut model = appliance::model::tiny::tiny_model(3);
    let params = SamplingParams { max_new_tokens: 24, seed: 11, ..Default::default() };
    let seq = |prompt: Vec<u32>, stream: u64| SeqRequest { prompt, params: params.clone(), stream };
    let me = seq((0..57).map(|i| (i * 37 % 500) as u32).collect(), 5);
    let alone = generate_each(&mut model, std::slice::from_ref(&me), &[], false).unwrap().remove(0);
    let bits = |c: &appliance::engine::generate::Completion| (c.tokens.clone(), c.logprobs.iter().map(|l| l.to_bits()).collect::<Vec<_>>());
    for others in 1..=6usize {
        let mut reqs: Vec<SeqRequest> = (0..others).map(|o| seq((0..3 + 11 * o as u32).map(|i| (i * 13 + o as u32) % 500).collect(), o as u64)).collect();
        let at = others / 2;
        reqs.insert(at, me.clone());
        let got = generate_each(&mut model, &reqs, &[], false).unwrap();
        assert_eq!(bits(&got[at]), bits(&alone), "beside {others} other sequences");
    }
}

#[test]
fn generation_stops_on_stop_tokens_and_at_context() {
    let cfg = small_config(false);
    let mut model = random_model(&cfg, 9);
    let params = SamplingParams { max_new_tokens: 200, seed: 1, ..Default::default() };
    let all: Vec<u32> = (0..37).collect();
    let c = generate(&mut model, &[vec![1, 2]], &params, &all, false).unwrap();
    assert_eq!(c[0].tokens.len(), 1);
    assert_eq!(c[0].finish, appliance::engine::FinishReason::Stop);
    let c = generate(&mut model, &[vec![1, 2]], &params, &[], false).unwrap();
    assert_eq!(c[0].finish, appliance::engine::FinishReason::Context);
    assert_eq!(2 + c[0].tokens.len(), cfg.max_position_embeddings);
}

#[test]
fn training_steps_are_reproducible_bit_for_bit() {
    use appliance::train::optimizer::{AdamW, OptimConfig};
    use appliance::train::supervised::supervised_step;
    let run = || {
        let cfg = small_config(true);
        let mut model = random_model(&cfg, 3);
        let mut opt = AdamW::new(OptimConfig { lr: 1e-2, ..Default::default() }, &cfg);
        let mut g = Weights::zeros(&cfg);
        let batch = Batch::from_sequences(&[vec![1u32, 5, 9, 2, 30, 7], vec![4, 8, 15]]);
        let w = vec![1.0; batch.len()];
        for _ in 0..3 {
            supervised_step(&mut model, &mut opt, &mut g, &batch, &w, 1e-2).unwrap();
        }
        model.weights
    };
    let a = run();
    let b = run();
    for (x, y) in a.tensors().iter().zip(b.tensors()) {
        assert!(x.data.iter().zip(&y.data).all(|(p, q)| p.to_bits() == q.to_bits()));
    }
}
