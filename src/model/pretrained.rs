//! Opening a Hugging Face model directory as a whole: `config.json`, the
//! safetensors weights and `tokenizer.json`, checked against each other.
//!
//! Owns: the rules for what a model directory must hold, and the embedded
//! tiny default when no directory is given. Does not own the parsing of any
//! single file (see `config`, `checkpoint`, `tokenizer`).

use super::checkpoint::Checkpoint;
use super::config::ModelConfig;
use super::qwen2::Model;
use super::tiny;
use super::tokenizer::Tokenizer;
use super::weights::Weights;
use crate::files::write_atomic;
use anyhow::{Context, Result};
use std::path::Path;

/// A model with its tokenizer.
pub struct Pretrained {
    pub model: Model,
    pub tokenizer: Tokenizer,
    /// Where it came from, for messages.
    pub origin: String,
}

/// Load `dir`, or the embedded tiny model (random weights from `init_seed`)
/// when `dir` is `None`.
pub fn load(dir: Option<&Path>, init_seed: u64) -> Result<Pretrained> {
    match dir {
        None => {
            let model = tiny::tiny_model(init_seed);
            let tokenizer = Tokenizer::tiny()?;
            tokenizer.check_fits_model(model.cfg.vocab_size, "the embedded tiny model")?;
            let mut model = model;
            model.output_vocab = tokenizer.vocab_size();
            Ok(Pretrained { model, tokenizer, origin: "embedded tiny model".into() })
        }
        Some(dir) => {
            let origin = dir.display().to_string();
            let cfg = ModelConfig::from_path(dir)?;
            let tok_path = dir.join("tokenizer.json");
            let tokenizer = Tokenizer::from_file(&tok_path)?;
            tokenizer.check_fits_model(cfg.vocab_size, &dir.join("config.json").display().to_string())?;
            let mut model = load_weights(dir, cfg)?;
            model.output_vocab = tokenizer.vocab_size();
            Ok(Pretrained { model, tokenizer, origin })
        }
    }
}

/// The model alone (config.json and weights, no tokenizer), for commands
/// that work on token ids.
pub fn load_model(dir: Option<&Path>, init_seed: u64) -> Result<Model> {
    match dir {
        None => Ok(tiny::tiny_model(init_seed)),
        Some(dir) => load_weights(dir, ModelConfig::from_path(dir)?),
    }
}

fn load_weights(dir: &Path, cfg: ModelConfig) -> Result<Model> {
    let origin = dir.display().to_string();
    let ckpt = Checkpoint::open(dir).with_context(|| format!("loading weights from {origin}"))?;
    let weights = Weights::load(&cfg, &ckpt, &origin)?;
    Ok(Model::new(cfg, weights))
}

/// Write a model directory that Hugging Face transformers, vLLM and
/// `load` read back: config.json, model*.safetensors (f32) and
/// tokenizer.json. Every file is written to a temporary name, then renamed.
/// With a training device, call `Model::sync_host_weights` first: saving
/// host weights that lag the device's is refused.
pub fn save(p: &Pretrained, dir: &Path) -> Result<()> {
    anyhow::ensure!(p.model.host_weights_current(), "saving {}: the host weights lag the training device's (call Model::sync_host_weights first)", dir.display());
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cfg_json = serde_json::to_string_pretty(&p.model.cfg.raw)?;
    write_atomic(&dir.join("config.json"), cfg_json.as_bytes())?;
    write_atomic(&dir.join("tokenizer.json"), p.tokenizer.to_json()?.as_bytes())?;
    p.model.weights.save(&p.model.cfg, dir, super::checkpoint::StorageDtype::F32, None)
}
