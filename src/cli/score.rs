//! `appliance score`: token ids in, logits and next-token log-probs out, in
//! the layout of the shared fixtures' reference.safetensors, so our numerics
//! can be checked against any other engine.

use crate::config::Config;
use crate::model::checkpoint::{self, Checkpoint};
use crate::model::pretrained;
use crate::model::qwen2::Batch;
use crate::tensor::Tensor;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A Hugging Face model directory (default: the embedded tiny model).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// A safetensors file with `input_ids` [B, T] (i64).
    #[arg(long, value_name = "IN.safetensors")]
    pub ids: PathBuf,
    /// Where to write `logits` [B, T, V], `next_token_logprobs` [B, T-1],
    /// `next_token_entropy` [B, T-1] and `loss` [1].
    #[arg(long, value_name = "OUT.safetensors")]
    pub out: PathBuf,
}

pub fn run(config: &Config, a: Args) -> Result<()> {
    let dir = super::model_dir(config, &a.model);
    let mut model = pretrained::load_model(dir.as_deref(), config.model.init_seed)?;
    super::apply_model_settings(config, &mut model);
    let origin = dir.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| "embedded tiny model".into());
    let input = Checkpoint::open(&a.ids)?;
    let (shape, ids) = input
        .get_i64("input_ids")
        .with_context(|| format!("{}: reading `input_ids`", a.ids.display()))?;
    if shape.len() != 2 || shape[1] == 0 {
        bail!("{}: `input_ids` must be [B, T] with T > 0, found shape {:?}", a.ids.display(), shape);
    }
    let (b, t) = (shape[0], shape[1]);
    let v = model.cfg.vocab_size;
    let mut seqs = Vec::with_capacity(b);
    for (i, row) in ids.chunks(t).enumerate() {
        let mut s = Vec::with_capacity(t);
        for (j, &id) in row.iter().enumerate() {
            if id < 0 || id as usize >= v {
                bail!("{}: `input_ids`[{i}, {j}] = {id} is outside the model's vocabulary of {v}", a.ids.display());
            }
            s.push(id as u32);
        }
        seqs.push(s);
    }
    let batch = Batch::from_sequences(&seqs);
    let st = model.forward(&batch)?;
    let logits = model.logits(&st);
    let (targets, has_next) = batch.next_token_targets();
    let lp = model.token_logprobs(&st, &targets);
    let pick = |v: &[f32]| -> Vec<f32> { v.iter().zip(&has_next).filter(|(_, &m)| m).map(|(x, _)| *x).collect() };
    let next_lp = pick(&lp.logprob);
    let loss = if next_lp.is_empty() { 0.0 } else { -next_lp.iter().map(|&x| x as f64).sum::<f64>() / next_lp.len() as f64 };
    let tensors = [
        ("logits".to_string(), Tensor::from_vec(&[b, t, v], logits)?),
        ("next_token_logprobs".to_string(), Tensor::from_vec(&[b, t - 1], next_lp)?),
        ("next_token_entropy".to_string(), Tensor::from_vec(&[b, t - 1], pick(&lp.entropy))?),
        ("loss".to_string(), Tensor::from_vec(&[1], vec![loss as f32])?),
    ];
    let refs: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    checkpoint::save_file(&a.out, &refs, Some(("input_ids", &shape, &ids)))?;
    eprintln!("scored {b}×{t} tokens with {}; wrote {}", origin, a.out.display());
    Ok(())
}
