//! The run directory and its checkpoints: what `appliance train` writes, and
//! what `--resume` reads back to continue exactly where a run stopped.
//!
//! Owns: the layout (below), the progress record, and writing and reading a
//! checkpoint. A checkpoint is written whole into a temporary directory and
//! renamed into place; then the `checkpoints/LATEST` pointer is replaced
//! atomically. A kill at any moment leaves the last complete checkpoint as
//! the one resume finds, and loses at most the unit of work in progress (an
//! evaluation, a phase's training, one DAPO iteration).
//! Does not own what the units do (`run`) or the model file format
//! (`model::checkpoint`).
//!
//! ```text
//! RUN/config.toml            the config used (resume reads this one)
//! RUN/metrics.jsonl          one JSON record per step, iteration and evaluation
//! RUN/summary.json           held-out pass rate ± SEM per phase
//! RUN/trajectories/*.jsonl   every episode, one file per unit
//! RUN/checkpoints/LATEST     the name of the newest complete checkpoint
//! RUN/checkpoints/ckpt-NNNN/ progress.json (counters, RNG, curriculum
//!                            statistics, summary, metrics length), and when
//!                            the weights changed: model/ (Hugging Face
//!                            config.json, model.safetensors, tokenizer.json)
//!                            and optimizer.safetensors (AdamW m and v)
//! ```

use super::curriculum::Stats;
use crate::files::write_atomic;
use crate::model::checkpoint::{save_f32_file, Checkpoint};
use crate::model::config::ModelConfig;
use crate::model::pretrained::{self, Pretrained};
use crate::model::weights::Weights;
use crate::train::optimizer::{AdamW, OptimConfig};
use anyhow::{bail, Context, Result};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const PROGRESS_VERSION: u32 = 1;

/// Held-out pass rate at one point of the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// Mean over held-out tasks of each task's success rate.
    pub pass_rate: f64,
    /// Standard error of that mean over tasks (ddof = 1).
    pub sem: f64,
    pub tasks: usize,
    pub episodes: usize,
    pub solved: usize,
    /// Episodes with no reward (environment or policy errors).
    pub unscored: usize,
}

/// The RNG that samples DAPO's problems, as a resumable value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: [u8; 32],
    pub stream: u64,
    /// Position in the stream, in 32-bit words.
    pub word_pos: u128,
}

impl RngState {
    pub fn of(r: &ChaCha8Rng) -> Self {
        RngState { seed: r.get_seed(), stream: r.get_stream(), word_pos: r.get_word_pos() }
    }

    pub fn rng(&self) -> ChaCha8Rng {
        use rand::SeedableRng;
        let mut r = ChaCha8Rng::from_seed(self.seed);
        r.set_stream(self.stream);
        r.set_word_pos(self.word_pos);
        r
    }
}

/// Everything besides the weights that the run needs to continue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub format_version: u32,
    /// Units of work completed, in the order `run::units` lists them.
    pub units_done: usize,
    /// Their names, checked on resume against the config's unit list.
    pub unit_names: Vec<String>,
    /// DAPO optimizer steps and iterations taken so far.
    pub dapo_steps: u64,
    pub dapo_iterations: u64,
    pub rng: RngState,
    /// Scored attempts per training task so far (the curriculum filter's input).
    pub task_stats: Stats,
    /// The DAPO task pool after the curriculum filter, fixed when DAPO starts.
    pub dapo_pool: Option<Vec<String>>,
    /// Held-out results so far, by point ("initial", then each phase).
    pub summary: BTreeMap<String, EvalResult>,
    /// Bytes of metrics.jsonl that belong to the completed units.
    pub metrics_bytes: u64,
    /// Seconds of run time before this checkpoint (so `t_s` continues).
    pub elapsed_s: f64,
    /// The checkpoint directory that holds the current weights (this one
    /// or an earlier one, when the last units did not change them).
    pub weights_in: String,
    /// Whether that directory holds a live optimizer state (DAPO's).
    pub has_optimizer: bool,
}

/// Paths of a run directory.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: &Path) -> Self {
        RunDir { root: root.to_path_buf() }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }
    pub fn trajectories(&self, name: &str) -> PathBuf {
        self.root.join("trajectories").join(format!("{name}.jsonl"))
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn checkpoint(&self, name: &str) -> PathBuf {
        self.checkpoints().join(name)
    }
    fn latest_pointer(&self) -> PathBuf {
        self.checkpoints().join("LATEST")
    }

    /// A fresh run: the directory must not exist or be empty.
    pub fn create(root: &Path) -> Result<Self> {
        if root.exists() {
            let mut entries = std::fs::read_dir(root).with_context(|| format!("reading the run directory {}", root.display()))?;
            if entries.next().is_some() {
                bail!("the run directory {} already exists and is not empty; continue it with `appliance train --resume {}`, or choose another --out", root.display(), root.display());
            }
        }
        std::fs::create_dir_all(root.join("trajectories")).with_context(|| format!("creating the run directory {}", root.display()))?;
        std::fs::create_dir_all(root.join("checkpoints")).with_context(|| format!("creating {}", root.join("checkpoints").display()))?;
        Ok(RunDir::new(root))
    }

    /// An existing run to resume: it must hold a config.toml.
    pub fn open(root: &Path) -> Result<Self> {
        let d = RunDir::new(root);
        if !root.is_dir() {
            bail!("cannot resume {}: no such run directory", root.display());
        }
        if !d.config().is_file() {
            bail!("cannot resume {}: it holds no config.toml, so it is not a run directory of `appliance train`", root.display());
        }
        std::fs::create_dir_all(root.join("trajectories"))?;
        std::fs::create_dir_all(root.join("checkpoints"))?;
        Ok(d)
    }

    /// The newest complete checkpoint's name, if any.
    pub fn latest(&self) -> Result<Option<String>> {
        let p = self.latest_pointer();
        if !p.exists() {
            return Ok(None);
        }
        let name = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?.trim().to_string();
        if name.is_empty() || name.contains('/') || !self.checkpoint(&name).join("progress.json").is_file() {
            bail!("{} names `{name}`, which is not a complete checkpoint in {}", p.display(), self.checkpoints().display());
        }
        Ok(Some(name))
    }

    pub fn read_progress(&self, name: &str) -> Result<Progress> {
        let p = self.checkpoint(name).join("progress.json");
        let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let pr: Progress = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}:{}:{}: {e}", p.display(), e.line(), e.column()))?;
        if pr.format_version != PROGRESS_VERSION {
            bail!("{}: format_version {} is not {PROGRESS_VERSION}, which this appliance writes", p.display(), pr.format_version);
        }
        Ok(pr)
    }

    /// Write checkpoint `name`: the progress record and, when `weights` is
    /// given, the model directory and the optimizer state. Whole or not at
    /// all; then LATEST points at it and older checkpoints that hold
    /// nothing the new one needs are removed.
    pub fn write_checkpoint(&self, name: &str, progress: &Progress, weights: Option<(&Pretrained, Option<&AdamW>)>) -> Result<()> {
        let dir = self.checkpoint(name);
        let tmp = crate::files::temp_path(&dir);
        let r = (|| -> Result<()> {
            std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            if let Some((p, opt)) = weights {
                pretrained::save(p, &tmp.join("model"))?;
                if let Some(opt) = opt {
                    save_optimizer(opt, &p.model.cfg, &tmp.join("optimizer.safetensors"))?;
                }
            }
            write_atomic(&tmp.join("progress.json"), serde_json::to_string_pretty(progress)?.as_bytes())?;
            if dir.exists() {
                std::fs::remove_dir_all(&dir).with_context(|| format!("removing the stale {}", dir.display()))?;
            }
            std::fs::rename(&tmp, &dir).with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
            Ok(())
        })();
        if r.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        r?;
        write_atomic(&self.latest_pointer(), name.as_bytes())?;
        // Keep the new checkpoint and the one holding its weights.
        if let Ok(entries) = std::fs::read_dir(self.checkpoints()) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("ckpt-") && n != name && n != progress.weights_in {
                    let _ = std::fs::remove_dir_all(e.path());
                }
                if n.starts_with(".ckpt-") {
                    let _ = std::fs::remove_dir_all(e.path()); // a temporary left by a killed run
                }
            }
        }
        Ok(())
    }

    /// The model directory of checkpoint `name`.
    pub fn model_dir(&self, name: &str) -> PathBuf {
        self.checkpoint(name).join("model")
    }

    pub fn optimizer_path(&self, name: &str) -> PathBuf {
        self.checkpoint(name).join("optimizer.safetensors")
    }

    /// Cut metrics.jsonl back to its first `bytes` bytes (the records of the
    /// completed units), atomically.
    pub fn truncate_metrics(&self, bytes: u64) -> Result<()> {
        let p = self.metrics();
        let data = if p.exists() { std::fs::read(&p).with_context(|| format!("reading {}", p.display()))? } else { vec![] };
        if (data.len() as u64) < bytes {
            bail!("{} holds {} bytes, but the checkpoint recorded {bytes}: the file was changed outside the run", p.display(), data.len());
        }
        if data.len() as u64 != bytes {
            write_atomic(&p, &data[..bytes as usize])?;
        }
        Ok(())
    }
}

/// AdamW's moments as one safetensors file (`m.NAME`, `v.NAME`, HF names);
/// the step count lives in the progress record's optimizer counters.
pub fn save_optimizer(opt: &AdamW, cfg: &ModelConfig, path: &Path) -> Result<()> {
    let mut named: Vec<(String, &crate::tensor::Tensor)> = vec![];
    for (n, t) in opt.m.named(cfg) {
        named.push((format!("m.{n}"), t));
    }
    for (n, t) in opt.v.named(cfg) {
        named.push((format!("v.{n}"), t));
    }
    save_f32_file(path, &named)
}

/// Read an optimizer state written by [`save_optimizer`].
pub fn load_optimizer(config: OptimConfig, cfg: &ModelConfig, path: &Path, step: u64) -> Result<AdamW> {
    let ck = Checkpoint::open(path).with_context(|| format!("reading the optimizer state {}", path.display()))?;
    let get = |prefix: &str| {
        Weights::build(cfg, |name, shape, _| {
            let key = format!("{prefix}.{name}");
            let t = ck.get_f32(&key).with_context(|| format!("{}: tensor `{key}`", path.display()))?;
            if t.shape != shape {
                bail!("{}: tensor `{key}` has shape {:?}, expected {shape:?}", path.display(), t.shape);
            }
            Ok(t)
        })
    };
    let mut opt = AdamW::new(config, cfg);
    opt.m = get("m")?;
    opt.v = get("v")?;
    opt.step = step;
    Ok(opt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn the_rng_resumes_mid_stream() {
        let mut a = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..37 {
            a.gen::<u32>();
        }
        let st = RngState::of(&a);
        let json = serde_json::to_string(&st).unwrap();
        let mut b = serde_json::from_str::<RngState>(&json).unwrap().rng();
        let x: Vec<u64> = (0..10).map(|_| a.gen()).collect();
        let y: Vec<u64> = (0..10).map(|_| b.gen()).collect();
        assert_eq!(x, y);
    }

    #[test]
    fn optimizer_state_round_trips() {
        let m = crate::model::tiny::tiny_model(1);
        let mut opt = AdamW::new(OptimConfig::default(), &m.cfg);
        opt.m = Weights::init(&m.cfg, 2, 0.1);
        opt.v = Weights::init(&m.cfg, 3, 0.1);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("optimizer.safetensors");
        save_optimizer(&opt, &m.cfg, &p).unwrap();
        let back = load_optimizer(OptimConfig::default(), &m.cfg, &p, 7).unwrap();
        assert_eq!((back.m == opt.m, back.v == opt.v, back.step), (true, true, 7));
    }

    #[test]
    fn a_fresh_run_refuses_a_non_empty_directory_and_truncation_checks_length() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x"), "keep me").unwrap();
        let e = RunDir::create(d.path()).unwrap_err().to_string();
        assert!(e.contains("not empty") && e.contains("--resume"), "{e}");
        assert_eq!(std::fs::read_to_string(d.path().join("x")).unwrap(), "keep me");
        let r = RunDir::create(&d.path().join("run")).unwrap();
        std::fs::write(r.metrics(), "{\"a\":1}\n{\"b\":2}\n").unwrap();
        r.truncate_metrics(8).unwrap();
        assert_eq!(std::fs::read_to_string(r.metrics()).unwrap(), "{\"a\":1}\n");
        assert!(r.truncate_metrics(100).is_err());
        assert!(r.latest().unwrap().is_none());
        let e = RunDir::open(&d.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("no such run directory"), "{e}");
    }
}
