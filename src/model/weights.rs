//! The model's parameters as a struct, and the mapping to Hugging Face names.
//!
//! Owns: one `Weights` struct per model (also used for gradients and optimizer
//! moments, which have the same shapes), the name ↔ field mapping, shape
//! checks when loading, seeded random initialization, and save in the HF
//! layout. Does not own: the safetensors file format (see `checkpoint`).

use super::checkpoint::{self, Checkpoint, StorageDtype};
use super::config::ModelConfig;
use crate::tensor::Tensor;
use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct LayerWeights {
    pub input_norm: Tensor,
    pub q_proj: Tensor,
    pub q_bias: Option<Tensor>,
    pub k_proj: Tensor,
    pub k_bias: Option<Tensor>,
    pub v_proj: Tensor,
    pub v_bias: Option<Tensor>,
    pub o_proj: Tensor,
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    pub post_norm: Tensor,
    pub gate_proj: Tensor,
    pub up_proj: Tensor,
    pub down_proj: Tensor,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    pub embed: Tensor,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Tensor,
    /// `None` when the LM head is tied to the embedding.
    pub lm_head: Option<Tensor>,
}

/// What kind of values a parameter holds; decides init and weight decay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Matrix,
    Bias,
    Norm,
}

/// Every parameter's HF name, shape and kind, in a fixed order.
pub fn param_specs(cfg: &ModelConfig) -> Vec<(String, Vec<usize>, ParamKind)> {
    use ParamKind::*;
    let (h, i, v, qd, kvd) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.q_dim(), cfg.kv_dim());
    let mut s = vec![("model.embed_tokens.weight".to_string(), vec![v, h], Matrix)];
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        s.push((format!("{p}.input_layernorm.weight"), vec![h], Norm));
        s.push((format!("{p}.self_attn.q_proj.weight"), vec![qd, h], Matrix));
        if cfg.qkv_bias {
            s.push((format!("{p}.self_attn.q_proj.bias"), vec![qd], Bias));
        }
        s.push((format!("{p}.self_attn.k_proj.weight"), vec![kvd, h], Matrix));
        if cfg.qkv_bias {
            s.push((format!("{p}.self_attn.k_proj.bias"), vec![kvd], Bias));
        }
        s.push((format!("{p}.self_attn.v_proj.weight"), vec![kvd, h], Matrix));
        if cfg.qkv_bias {
            s.push((format!("{p}.self_attn.v_proj.bias"), vec![kvd], Bias));
        }
        s.push((format!("{p}.self_attn.o_proj.weight"), vec![h, qd], Matrix));
        if cfg.qk_norm {
            s.push((format!("{p}.self_attn.q_norm.weight"), vec![cfg.head_dim], Norm));
            s.push((format!("{p}.self_attn.k_norm.weight"), vec![cfg.head_dim], Norm));
        }
        s.push((format!("{p}.post_attention_layernorm.weight"), vec![h], Norm));
        s.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h], Matrix));
        s.push((format!("{p}.mlp.up_proj.weight"), vec![i, h], Matrix));
        s.push((format!("{p}.mlp.down_proj.weight"), vec![h, i], Matrix));
    }
    s.push(("model.norm.weight".to_string(), vec![h], Norm));
    if !cfg.tie_word_embeddings {
        s.push(("lm_head.weight".to_string(), vec![v, h], Matrix));
    }
    s
}

impl Weights {
    /// Build from a function giving each named parameter's tensor.
    pub fn build(cfg: &ModelConfig, mut make: impl FnMut(&str, &[usize], ParamKind) -> Result<Tensor>) -> Result<Self> {
        let mut it = param_specs(cfg).into_iter().map(|(n, s, k)| make(&n, &s, k));
        let mut next = || it.next().expect("param_specs and Weights::build agree")
;
        let embed = next()?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for _ in 0..cfg.num_layers {
            let input_norm = next()?;
            let q_proj = next()?;
            let q_bias = if cfg.qkv_bias { Some(next()?) } else { None };
            let k_proj = next()?;
            let k_bias = if cfg.qkv_bias { Some(next()?) } else { None };
            let v_proj = next()?;
            let v_bias = if cfg.qkv_bias { Some(next()?) } else { None };
            let o_proj = next()?;
            let (q_norm, k_norm) = if cfg.qk_norm { (Some(next()?), Some(next()?)) } else { (None, None) };
            layers.push(LayerWeights {
                input_norm,
                q_proj,
                q_bias,
                k_proj,
                k_bias,
                v_proj,
                v_bias,
                o_proj,
                q_norm,
                k_norm,
                post_norm: next()?,
                gate_proj: next()?,
                up_proj: next()?,
                down_proj: next()?,
            });
        }
        let final_norm = next()?;
        let lm_head = if cfg.tie_word_embeddings { None } else { Some(next()?) };
        Ok(Weights { embed, layers, final_norm, lm_head })
    }

    /// All zeros (gradients, optimizer moments).
    pub fn zeros(cfg: &ModelConfig) -> Self {
        Self::build(cfg, |_, s, _| Ok(Tensor::zeros(s))).expect("zeros cannot fail")
    }

    /// Seeded random init: N(0, std) matrices, zero biases, unit norms.
    pub fn init(cfg: &ModelConfig, seed: u64, std: f32) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Self::build(cfg, |_, s, kind| {
            let n: usize = s.iter().product();
            let data = match kind {
                ParamKind::Matrix => (0..n).map(|_| std * normal(&mut rng)).collect(),
                ParamKind::Bias => vec![0.0; n],
                ParamKind::Norm => vec![1.0; n],
            };
            Ok(Tensor { shape: s.to_vec(), data })
        })
        .expect("init cannot fail")
    }

    /// Load from an HF checkpoint, checking every name and shape.
    pub fn load(cfg: &ModelConfig, ckpt: &Checkpoint, origin: &str) -> Result<Self> {
        let w = Self::build(cfg, |name, shape, _| {
            if !ckpt.contains(name) {
                bail!("checkpoint {origin}: missing tensor `{name}` (expected shape {shape:?} from config.json)");
            }
            let t = ckpt.get_f32(name).with_context(|| format!("checkpoint {origin}"))?;
            if t.shape != shape {
                bail!(
                    "checkpoint {origin}: tensor `{name}` has shape {:?}, but config.json implies {:?}",
                    t.shape,
                    shape
                );
            }
            Ok(t)
        })?;
        let known: std::collections::HashSet<String> = param_specs(cfg).into_iter().map(|s| s.0).collect();
        for name in ckpt.names() {
            if !known.contains(&name) {
                if name == "lm_head.weight" && cfg.tie_word_embeddings {
                    tracing::debug!("ignoring lm_head.weight: the config ties it to the embedding");
                } else {
                    tracing::warn!("checkpoint {origin}: ignoring unexpected tensor `{name}`");
                }
            }
        }
        Ok(w)
    }

    /// Write the weights in the HF layout (names, shapes, chosen dtype).
    pub fn save(&self, cfg: &ModelConfig, dir: &Path, dtype: StorageDtype, max_shard_bytes: Option<usize>) -> Result<()> {
        let named: Vec<(String, &Tensor)> = self.named(cfg);
        checkpoint::save(dir, &named, dtype, max_shard_bytes)
    }

    /// (HF name, tensor) for every parameter, in `param_specs` order.
    pub fn named(&self, cfg: &ModelConfig) -> Vec<(String, &Tensor)> {
        param_specs(cfg).into_iter().map(|s| s.0).zip(self.tensors()).collect()
    }

    /// Every tensor in `param_specs` order.
    pub fn tensors(&self) -> Vec<&Tensor> {
        let mut v = vec![&self.embed];
        for l in &self.layers {
            v.push(&l.input_norm);
            v.push(&l.q_proj);
            v.extend(l.q_bias.as_ref());
            v.push(&l.k_proj);
            v.extend(l.k_bias.as_ref());
            v.push(&l.v_proj);
            v.extend(l.v_bias.as_ref());
            v.push(&l.o_proj);
            v.extend(l.q_norm.as_ref());
            v.extend(l.k_norm.as_ref());
            v.push(&l.post_norm);
            v.push(&l.gate_proj);
            v.push(&l.up_proj);
            v.push(&l.down_proj);
        }
        v.push(&self.final_norm);
        v.extend(self.lm_head.as_ref());
        v
    }

    /// Every tensor, mutably, in `param_specs` order.
    pub fn tensors_mut(&mut self) -> Vec<&mut Tensor> {
        let mut v = vec![&mut self.embed];
        for l in &mut self.layers {
            v.push(&mut l.input_norm);
            v.push(&mut l.q_proj);
            v.extend(l.q_bias.as_mut());
            v.push(&mut l.k_proj);
            v.extend(l.k_bias.as_mut());
            v.push(&mut l.v_proj);
            v.extend(l.v_bias.as_mut());
            v.push(&mut l.o_proj);
            v.extend(l.q_norm.as_mut());
            v.extend(l.k_norm.as_mut());
            v.push(&mut l.post_norm);
            v.push(&mut l.gate_proj);
            v.push(&mut l.up_proj);
            v.push(&mut l.down_proj);
        }
        v.push(&mut self.final_norm);
        v.extend(self.lm_head.as_mut());
        v
    }

    /// The LM head: its own matrix, or the embedding when tied.
    pub fn lm_head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    pub fn zero(&mut self) {
        self.tensors_mut().into_iter().for_each(Tensor::fill_zero);
    }
}

/// A standard normal draw (Box–Muller), so init needs no extra crate.
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    use rand::Rng;
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}
