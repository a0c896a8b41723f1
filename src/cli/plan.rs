//! `appliance plan`: the GPU training step's memory plan for a model, a
//! sequence length and a batch, as a table (or JSON), and whether it fits
//! a GPU. All arithmetic lives in `model::memory_plan`; this file only
//! picks the config (a model directory, a preset, or the configured/tiny
//! model) and prints.

use crate::config::Config;
use crate::model::memory_plan::{self, PlanRequest};
use crate::model::ModelConfig;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model directory (its config.json is read; no weights are needed).
    #[arg(long, value_name = "DIR", conflicts_with = "preset")]
    pub model: Option<PathBuf>,
    /// A published shape instead of a directory.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(memory_plan::PRESETS))]
    pub preset: Option<String>,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 131072)]
    pub seq: usize,
    /// Sequences per micro-batch (packed).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// GPUs the optimizer state (and, with ZeRO-2, the gradients) is sharded over.
    #[arg(long, default_value_t = 1)]
    pub gpus: usize,
    /// 1: shard master weights and AdamW state; 2: the gradients too.
    #[arg(long, default_value_t = 2)]
    pub zero_stage: u8,
    /// Keep every layer's tensors instead of recomputing each layer in the backward.
    #[arg(long)]
    pub no_recompute: bool,
    /// Tokens per chunk of the MLP's work (0: the whole micro-batch at once).
    #[arg(long, default_value_t = 8192)]
    pub chunk: usize,
    /// Also reserve a generation KV cache of this many tokens.
    #[arg(long, default_value_t = 0)]
    pub kv_cache_tokens: usize,
    /// The GPU's memory in GiB.
    #[arg(long, default_value_t = 80.0)]
    pub gpu_memory_gib: f64,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(config: &Config, a: Args) -> Result<()> {
    let (cfg, name): (ModelConfig, String) = match (&a.preset, super::model_dir(config, &a.model)) {
        (Some(p), _) => (memory_plan::preset(p)?, p.clone()),
        (None, Some(dir)) => {
            if !dir.is_dir() {
                bail!("--model {}: not a directory (expected a model directory holding config.json)", dir.display());
            }
            let cfg = ModelConfig::from_path(&dir).with_context(|| format!("planning memory for the model in {}", dir.display()))?;
            (cfg, dir.display().to_string())
        }
        (None, None) => (memory_plan::preset("tiny")?, "tiny (embedded)".into()),
    };
    if !(a.gpu_memory_gib.is_finite() && a.gpu_memory_gib > 0.0) {
        bail!("--gpu-memory-gib {}: expected a positive number of GiB", a.gpu_memory_gib);
    }
    let req = PlanRequest {
        seq_len: a.seq,
        batch: a.batch,
        gpus: a.gpus,
        zero_stage: a.zero_stage,
        recompute: !a.no_recompute,
        chunk_tokens: a.chunk,
        kv_cache_tokens: a.kv_cache_tokens,
        gpu_memory_bytes: (a.gpu_memory_gib * (1u64 << 30) as f64) as u64,
    };
    let plan = memory_plan::plan(&cfg, &name, &req)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", memory_plan::render_table(&plan));
    }
    Ok(())
}
