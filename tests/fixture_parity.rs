//! Parity with an independent implementation: the tiny Qwen2 checkpoints in
//! ../shared/fixtures, with logits, log-probs, entropies and parameter
//! gradients computed by Hugging Face transformers (f32, eager attention).

use appliance::model::checkpoint::Checkpoint;
use appliance::model::qwen2::Batch;
use appliance::model::{Model, ModelConfig, Weights};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures")).join(name);
    assert!(
        p.join("config.json").exists(),
        "missing {}: these tests need the shared fixtures checked out beside the project (../shared)",
        p.display()
    );
    p
}

struct Reference {
    model: Model,
    seqs: Vec<Vec<u32>>,
    logits: Vec<f32>,
    logprobs: Vec<f32>,
    entropy: Vec<f32>,
    loss: f32,
    grads: Checkpoint,
}

fn load(name: &str) -> Reference {
    let dir = fixture(name);
    let cfg = ModelConfig::from_path(&dir).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let w = Weights::load(&cfg, &ckpt, name).unwrap();
    let mut model = Model::new(cfg, w);
    model.vocab_chunk = 100; // exercise several vocabulary chunks
    let r = Checkpoint::open(&dir.join("reference.safetensors")).unwrap();
    let (shape, ids) = r.get_i64("input_ids").unwrap();
    let (b, t) = (shape[0], shape[1]);
    let seqs = (0..b).map(|i| ids[i * t..(i + 1) * t].iter().map(|&x| x as u32).collect()).collect();
    Reference {
        model,
        seqs,
        logits: r.get_f32("logits").unwrap().data,
        logprobs: r.get_f32("next_token_logprobs").unwrap().data,
        entropy: r.get_f32("next_token_entropy").unwrap().data,
        loss: r.get_f32("loss").unwrap().data[0],
        grads: Checkpoint::open(&dir.join("reference_grads.safetensors")).unwrap(),
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn check(name: &str, recompute: bool) {
    let mut r = load(name);
    r.model.recompute = recompute;
    let batch = Batch::from_sequences(&r.seqs);
    let st = r.model.forward(&batch).unwrap();
    let logits = r.model.logits(&st);
    let d = max_abs_diff(&logits, &r.logits);
    assert!(d < 1e-4, "{name}: logits differ from transformers by {d}");

    // Next-token log-probs and entropies, [B, T-1], through the chunked op.
    let (targets, has_next) = batch.next_token_targets();
    let lp = r.model.token_logprobs(&st, &targets);
    let ours_lp: Vec<f32> = lp.logprob.iter().zip(&has_next).filter(|(_, &m)| m).map(|(v, _)| *v).collect();
    let ours_ent: Vec<f32> = lp.entropy.iter().zip(&has_next).filter(|(_, &m)| m).map(|(v, _)| *v).collect();
    assert!(max_abs_diff(&ours_lp, &r.logprobs) < 1e-4, "{name}: log-probs differ");
    assert!(max_abs_diff(&ours_ent, &r.entropy) < 1e-4, "{name}: entropies differ");

    let mut grads = Weights::zeros(&r.model.cfg);
    let weight = vec![1.0; batch.len()];
    let loss = r.model.nll_loss_and_grads(&batch, &weight, &mut grads).unwrap();
    assert!((loss as f32 - r.loss).abs() < 1e-5, "{name}: loss {loss} vs {}", r.loss);
    let cfg = r.model.cfg.clone();
    let mut checked = 0;
    for (hf_name, ours) in grads.named(&cfg) {
        let want = r.grads.get_f32(&hf_name).unwrap_or_else(|e| panic!("{name}: reference grad {hf_name}: {e:#}"));
        assert_eq!(want.shape, ours.shape, "{hf_name}");
        let scale = want.max_abs().max(1e-12);
        let d = max_abs_diff(&ours.data, &want.data);
        assert!(d / scale < 1e-4, "{name}: grad {hf_name} differs by {d} (scale {scale}, rel {})", d / scale);
        checked += 1;
    }
    assert_eq!(checked, r.grads.names().len(), "{name}: every reference gradient is compared");
}

#[test]
fn qwen2_tiny_matches_transformers() {
    check("qwen2-tiny", false);
}

#[test]
fn qwen2_tiny_yarn_tied_matches_transformers() {
    check("qwen2-tiny-yarn-tied", false);
}

#[test]
fn activation_recomputation_gives_the_same_gradients() {
    check("qwen2-tiny-yarn-tied", true);
}

/// The same YaRN checkpoint with its config rewritten in the newer
/// `rope_parameters` layout gives the same logits.
#[test]
fn rope_parameters_layout_matches_transformers_too() {
    let src = fixture("qwen2-tiny-yarn-tied");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let obj = cfg.as_object_mut().unwrap();
    let theta = obj.remove("rope_theta").unwrap();
    let mut params = obj.remove("rope_scaling").unwrap();
    let p = params.as_object_mut().unwrap();
    let kind = p.remove("type").unwrap();
    p.insert("rope_type".into(), kind);
    p.insert("rope_theta".into(), theta);
    obj.insert("rope_parameters".into(), params);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    let new_cfg = ModelConfig::from_path(dir.path()).unwrap();
    let old_cfg = ModelConfig::from_path(&src).unwrap();
    assert_eq!(new_cfg.rope_scaling, old_cfg.rope_scaling);
    let w = Weights::load(&new_cfg, &Checkpoint::open(&src).unwrap(), "fixture").unwrap();
    let mut model = Model::new(new_cfg, w);
    let r = load("qwen2-tiny-yarn-tied");
    let st = model.forward(&Batch::from_sequences(&r.seqs)).unwrap();
    let d = max_abs_diff(&model.logits(&st), &r.logits);
    assert!(d < 1e-4, "rope_parameters layout: logits differ by {d}");
}
