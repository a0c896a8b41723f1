//! The embedded tiny model: a Qwen2-shaped config small enough to train on a
//! laptop CPU in minutes, with weights drawn from a fixed seed.
//!
//! Owns: the default used when no `--model` directory is given. Its tokenizer
//! is embedded beside it (see `tokenizer::Tokenizer::tiny`). Does not own any
//! trained weights: the tiny model starts random and learns in the demo.

use super::config::ModelConfig;
use super::qwen2::Model;
use super::weights::Weights;

/// The tiny model's `config.json`, in the Hugging Face layout.
pub const TINY_CONFIG_JSON: &str = include_str!("../../configs/tiny/config.json");

/// Standard deviation of the random init (as Qwen2's `initializer_range`).
pub const INIT_STD: f32 = 0.02;

pub fn tiny_config() -> ModelConfig {
    ModelConfig::from_json_str(TINY_CONFIG_JSON, "<embedded configs/tiny/config.json>")
        .expect("the embedded tiny config is valid (checked by tests)")
}

/// The tiny model with weights drawn from `seed`.
pub fn tiny_model(seed: u64) -> Model {
    let cfg = tiny_config();
    let w = Weights::init(&cfg, seed, INIT_STD);
    Model::new(cfg, w)
}
