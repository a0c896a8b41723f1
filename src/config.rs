//! The appliance's own configuration: TOML, read through serde with
//! `deny_unknown_fields`, layered over an embedded default.
//!
//! Owns: the schema of configs/default.toml and the error messages for bad
//! files (file, line, key path, what was expected). Does not own the model's
//! Hugging Face `config.json` (see `model::config`).

use crate::agent::scaffold::ScaffoldConfig;
use crate::engine::SamplingParams;
use crate::train::rft::RftConfig;
use crate::train::algorithms::DapoConfig;
use crate::train::optimizer::OptimConfig;
use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The embedded default, used when no `--config` file is given.
pub const DEFAULT_TOML: &str = include_str!("../configs/default.toml");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub model: ModelSection,
    pub generate: SamplingParams,
    pub optim: OptimConfig,
    pub demo: DemoSection,
    pub monitor: MonitorSection,
    pub agent: ScaffoldConfig,
    pub rollout: RolloutSection,
    pub serve: ServeSection,
    pub rft: RftConfig,
    pub dapo: DapoSection,
    pub train: TrainSection,
    pub warm_start: WarmStartSection,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutSection {
    /// Episodes that run at once.
    pub concurrency: usize,
    /// Container starts in flight at once.
    pub max_starts: usize,
    /// An episode that hit an environment error is run again up to this many times.
    pub env_retries: u32,
    /// Seconds the task's tests may run when grading.
    pub test_timeout_s: u64,
    /// Seed of the episodes' sampling seeds.
    pub seed: u64,
}

impl Default for RolloutSection {
    fn default() -> Self {
        RolloutSection { concurrency: 4, max_starts: 2, env_retries: 2, test_timeout_s: 300, seed: 0 }
    }
}

/// `appliance serve`: where it listens and how much it takes at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeSection {
    pub host: String,
    pub port: u16,
    /// Requests waiting for the engine; more are refused with 503.
    pub queue: usize,
    /// Sequences decoded together.
    pub max_batch: usize,
    /// Larger request bodies are refused with 413.
    pub max_body_bytes: usize,
}

impl Default for ServeSection {
    fn default() -> Self {
        ServeSection { host: "127.0.0.1".into(), port: 8000, queue: 64, max_batch: 16, max_body_bytes: 8 << 20 }
    }
}

/// RL with DAPO (METHOD.md, phase 2; the defaults are stage 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DapoSection {
    /// ρ below 1 − eps_low is clipped.
    pub eps_low: f64,
    /// ρ above 1 + eps_high is clipped; at least `eps_low`.
    pub eps_high: f64,
    /// δ in Â = (R − group mean) / (group std + δ).
    pub delta: f64,
    /// G: rollouts per problem.
    pub group_size: usize,
    /// Problems sampled per iteration.
    pub problems_per_iteration: usize,
    /// Trajectories per optimizer step (the method's "batch"), at most: a
    /// mini-batch holds whole groups, and only a group larger than it is cut
    /// (`train::algorithms::group_mini_batches`).
    pub mini_batch: usize,
    /// Trajectories of a mini-batch are packed into micro-batches of at most
    /// this many tokens; gradients accumulate over them (a longer trajectory
    /// goes alone).
    pub micro_batch_tokens: usize,
    /// Iterations of `appliance train`'s DAPO phase.
    pub iterations: u64,
    /// Passes over an iteration's samples (the method: 1). Each pass draws
    /// new mini-batches; from the second on the policy has moved, so ρ
    /// leaves 1 and the clip bounds how far a pass can push a token.
    pub epochs: usize,
}

impl Default for DapoSection {
    fn default() -> Self {
        let c = DapoConfig::default();
        DapoSection {
            eps_low: c.eps_low,
            eps_high: c.eps_high,
            delta: c.delta,
            group_size: 10,
            problems_per_iteration: 300,
            mini_batch: 128,
            micro_batch_tokens: 16_384,
            iterations: 100,
            epochs: 1,
        }
    }
}

impl DapoSection {
    /// The loss's hyperparameters.
    pub fn algorithm(&self) -> DapoConfig {
        DapoConfig { eps_low: self.eps_low, eps_high: self.eps_high, delta: self.delta }
    }

    pub fn validate(&self) -> Result<()> {
        self.algorithm().validate()?;
        anyhow::ensure!(self.group_size >= 2, "dapo.group_size must be at least 2 (a group of one has no advantage), got {}", self.group_size);
        anyhow::ensure!(self.problems_per_iteration >= 1, "dapo.problems_per_iteration must be at least 1");
        anyhow::ensure!(self.mini_batch >= 1, "dapo.mini_batch must be at least 1");
        anyhow::ensure!(self.epochs >= 1, "dapo.epochs must be at least 1");
        anyhow::ensure!(self.micro_batch_tokens >= 1, "dapo.micro_batch_tokens must be at least 1");
        let per_iteration = self.problems_per_iteration * self.group_size;
        anyhow::ensure!(
            self.mini_batch <= per_iteration,
            "dapo.mini_batch ({}) is larger than the trajectories of one iteration (problems_per_iteration {} x group_size {} = {per_iteration})",
            self.mini_batch,
            self.problems_per_iteration,
            self.group_size
        );
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorSection {
    /// How often the monitor thread samples NVML (or this process's CPU).
    pub interval_ms: u64,
    /// Warn when mean utilization falls below this in a GPU phase.
    pub low_util_pct: f64,
}

impl Default for MonitorSection {
    fn default() -> Self {
        MonitorSection { interval_ms: 1000, low_util_pct: 30.0 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    pub dir: Option<PathBuf>,
    /// Where the trainer's forward and backward run: "cpu", or "cuda" (GPU 0,
    /// the GPU model backend; generation stays on the CPU).
    pub backend: Backend,
    pub init_seed: u64,
    pub vocab_chunk: usize,
    pub recompute: bool,
    /// The GPU backend's chunk of the post-attention work, in tokens (a
    /// multiple of 8; 0: the whole micro-batch).
    pub mlp_chunk_tokens: usize,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection { dir: None, backend: Backend::Cpu, init_seed: 0, vocab_chunk: 8192, recompute: false, mlp_chunk_tokens: 8192 }
    }
}

impl ModelSection {
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            self.mlp_chunk_tokens % 8 == 0,
            "model.mlp_chunk_tokens ({}) must be a multiple of 8 (0: the whole micro-batch)",
            self.mlp_chunk_tokens
        );
        Ok(())
    }
}

/// `[model] backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Cpu,
    Cuda,
}

/// `appliance train`: where the tasks come from, which phases run, and how
/// progress is measured. The phases' own settings are `[warm_start]`,
/// `[rft]` and `[dapo]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// "micro" (generated micro-repositories, see `env::micro`) or the path
    /// of a task file (SWE-bench JSONL or JSON).
    pub tasks: String,
    /// With tasks = "micro": how many to generate (training + held-out).
    pub micro_tasks: usize,
    /// With tasks = "micro": the generator's seed.
    pub micro_seed: u64,
    /// With tasks = "micro": "small" (ten fixed bugs, only their symptoms
    /// drawn: learnable by a tiny model in minutes) or "wide" (every name
    /// and path drawn: solving means copying from the issue).
    pub micro_family: crate::env::micro::Family,
    /// The last `held_out` tasks are never trained on; the pass rate on them
    /// is measured before the first phase and after each phase.
    pub held_out: usize,
    /// Attempts per held-out task at each measurement.
    pub eval_samples: u32,
    /// The phases, in order: any of "warm_start", "rft", "dapo".
    pub phases: Vec<Phase>,
    /// Before DAPO, drop the training tasks solved in at least 2/3 of their
    /// attempts so far, and those never solved (METHOD.md's filter between
    /// its two DAPO stages; the attempts so far are the RFT samples, or
    /// `curriculum_from`'s). A run whose phases are just `dapo` has no
    /// attempts yet, so the filter keeps every task: the method's stage 1.
    pub curriculum: bool,
    /// A run directory of an earlier stage: its attempts per task (from its
    /// last checkpoint) are where this run's curriculum filter starts.
    pub curriculum_from: Option<PathBuf>,
    /// Seed of problem sampling and of every episode's sampling seed.
    pub seed: u64,
}

/// A phase of `appliance train`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Supervised fine-tuning on scripted demonstrations of training tasks
    /// (micro tasks only): stands in for starting from an instruct model.
    WarmStart,
    /// Rejection fine-tuning on the policy's own successful samples.
    Rft,
    /// Synchronous DAPO iterations.
    Dapo,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::WarmStart => "warm_start",
            Phase::Rft => "rft",
            Phase::Dapo => "dapo",
        }
    }
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            tasks: "micro".into(),
            micro_tasks: 150,
            micro_seed: 0,
            micro_family: crate::env::micro::Family::Small,
            held_out: 30,
            eval_samples: 2,
            phases: vec![Phase::WarmStart, Phase::Rft, Phase::Dapo],
            curriculum: true,
            curriculum_from: None,
            seed: 0,
        }
    }
}

impl TrainSection {
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(!self.phases.is_empty(), "train.phases is empty: name at least one of warm_start, rft, dapo");
        let order = |p: Phase| self.phases.iter().position(|&q| q == p);
        for (i, p) in self.phases.iter().enumerate() {
            anyhow::ensure!(order(*p) == Some(i), "train.phases names {} twice", p.name());
        }
        anyhow::ensure!(self.phases.windows(2).all(|w| (w[0] as u8) < (w[1] as u8)), "train.phases must keep the order warm_start, rft, dapo");
        anyhow::ensure!(self.eval_samples >= 1, "train.eval_samples must be at least 1");
        anyhow::ensure!(self.held_out >= 1, "train.held_out must be at least 1: progress is measured on held-out tasks");
        if self.tasks == "micro" {
            anyhow::ensure!(
                self.held_out < self.micro_tasks,
                "train.held_out ({}) must be smaller than train.micro_tasks ({}): no task would be left to train on",
                self.held_out,
                self.micro_tasks
            );
        } else {
            anyhow::ensure!(!self.phases.contains(&Phase::WarmStart), "train.phases: warm_start needs scripted demonstrations, which only tasks = \"micro\" has");
        }
        Ok(())
    }
}

/// `[warm_start]`: supervised fine-tuning on scripted demonstrations, the
/// embedded default's stand-in for an instruct model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarmStartSection {
    /// Training tasks demonstrated (one episode each, run in the real
    /// environment and verified).
    pub demonstrations: usize,
    pub epochs: u32,
    #[serde(serialize_with = "crate::decimal::f32_shortest")]
    pub lr: f32,
    pub warmup_steps: u64,
    /// Demonstrations per optimizer step.
    pub batch: usize,
}

impl Default for WarmStartSection {
    fn default() -> Self {
        WarmStartSection { demonstrations: 40, epochs: 4, lr: 3e-3, warmup_steps: 4, batch: 8 }
    }
}

impl WarmStartSection {
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(self.demonstrations >= 1, "warm_start.demonstrations must be at least 1");
        anyhow::ensure!(self.epochs >= 1, "warm_start.epochs must be at least 1");
        anyhow::ensure!(self.lr > 0.0 && self.lr.is_finite(), "warm_start.lr must be a positive number, got {}", self.lr);
        anyhow::ensure!(self.batch >= 1, "warm_start.batch must be at least 1");
        anyhow::ensure!(
            self.batch <= self.demonstrations,
            "warm_start.batch ({}) is larger than the data (warm_start.demonstrations = {})",
            self.batch,
            self.demonstrations
        );
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoSection {
    pub steps: u64,
    #[serde(serialize_with = "crate::decimal::f32_shortest")]
    pub lr: f32,
    pub warmup_steps: u64,
    pub seq_len: usize,
    pub batch_seqs: usize,
    pub seed: u64,
}

impl Default for DemoSection {
    fn default() -> Self {
        DemoSection { steps: 120, lr: 3e-3, warmup_steps: 10, seq_len: 128, batch_seqs: 4, seed: 0 }
    }
}

impl Config {
    /// The embedded default.
    pub fn embedded() -> Self {
        parse_toml(DEFAULT_TOML, "<embedded configs/default.toml>").expect("the embedded default config is valid (tested)")
    }

    /// A user's file, over the embedded default: keys it gives replace the
    /// default's, keys it leaves out keep them.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_str_over_default(&text, &path.display().to_string())
    }

    pub fn from_str_over_default(text: &str, origin: &str) -> Result<Self> {
        let mut base: toml::Value = toml::from_str(DEFAULT_TOML).expect("embedded default parses");
        let user: toml::Value = toml::from_str(text).map_err(|e| anyhow!("{origin}: {}", located(text, &e)))?;
        // Check the user's own text first, so line numbers are theirs.
        check_schema(text, origin)?;
        merge(&mut base, user);
        let merged = toml::to_string(&base).expect("a TOML value serializes");
        let c = parse_toml(&merged, origin)?;
        c.model.validate().map_err(|e| anyhow!("{origin}: {e}"))?;
        c.agent.validate().map_err(|e| anyhow!("{origin}: {e}"))?;
        c.rft.validate().map_err(|e| anyhow!("{origin}: {e}"))?;
        c.dapo.validate().map_err(|e| anyhow!("{origin}: {e}"))?;
        c.train.validate().map_err(|e| anyhow!("{origin}: {e}"))?;
        c.warm_start.validate().map_err(|e| anyhow!("{origin}: {e}"))?;
        Ok(c)
    }

    /// Load `--config` if given, else the embedded default.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        match path {
            Some(p) => Self::from_file(p),
            None => Ok(Self::embedded()),
        }
    }
}

/// Deserialize, naming the key path and (when known) the line.
fn parse_toml(text: &str, origin: &str) -> Result<Config> {
    deserialize_located(text, origin)
}

/// Deserialize `text` as `T`; errors name `origin`, the key path and the line.
fn deserialize_located<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
        let path = e.path().to_string();
        anyhow!("{origin}: key `{path}`: {}", located(text, &e.into_inner()))
    })
}

/// Check a user's file alone against the schema (all fields optional), so
/// unknown keys and wrong types are reported with the user's line numbers.
fn check_schema(text: &str, origin: &str) -> Result<()> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Partial {
        model: Option<ModelSection>,
        generate: Option<SamplingParams>,
        optim: Option<OptimConfig>,
        demo: Option<DemoSection>,
        monitor: Option<MonitorSection>,
        agent: Option<ScaffoldConfig>,
        rollout: Option<RolloutSection>,
        serve: Option<ServeSection>,
        rft: Option<RftConfig>,
        dapo: Option<DapoSection>,
        train: Option<TrainSection>,
        warm_start: Option<WarmStartSection>,
    }
    deserialize_located::<Partial>(text, origin).map(|_| ())
}

/// "line N: message" from a toml error's span.
fn located(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {msg}")
        }
        None => msg,
    }
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_and_is_untruncated() {
        let c = Config::embedded();
        assert!(c.generate.is_untruncated());
        assert!(c.model.dir.is_none());
        assert_eq!(c.optim.weight_decay, 0.1);
    }

    #[test]
    fn the_written_config_shows_the_values_as_typed_and_reads_back_equal() {
        // What a run directory's config.toml holds (pipeline::run).
        let c = Config::embedded();
        let text = toml::to_string(&c).unwrap();
        for line in ["lr = 0.0003", "eps = 0.001", "eps = 0.00000001", "lr = 0.003", "beta2 = 0.999"] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
        // A widened f32 shows 16 or 17 significant digits (0.0003000000142492354).
        for l in text.lines() {
            let value = l.split_once(" = ").map_or("", |(_, v)| v);
            let digits = value.trim_start_matches(['0', '.']).chars().take_while(|c| c.is_ascii_digit() || *c == '.').filter(char::is_ascii_digit).count();
            assert!(value.parse::<f64>().is_err() || digits <= 9, "a widened f32: {l:?}");
        }
        assert_eq!(Config::from_str_over_default(&text, "config.toml").unwrap(), c);
    }

    #[test]
    fn a_partial_file_overrides_only_its_keys() {
        let c = Config::from_str_over_default("[generate]\ntemperature = 0.5\n", "user.toml").unwrap();
        assert_eq!(c.generate.temperature, 0.5);
        assert_eq!(c.generate.max_new_tokens, Config::embedded().generate.max_new_tokens);
    }

    #[test]
    fn unknown_keys_name_file_line_and_path() {
        let err = Config::from_str_over_default("[generate]\n\ntemprature = 0.5\n", "user.toml").unwrap_err().to_string();
        assert!(err.contains("user.toml") && err.contains("line 3") && err.contains("temprature"), "{err}");
        assert!(err.contains("generate"), "{err}");
    }

    #[test]
    fn an_mlp_chunk_off_the_8_token_grid_is_refused() {
        let err = Config::from_str_over_default("[model]\nmlp_chunk_tokens = 100\n", "u.toml").unwrap_err().to_string();
        assert!(err.contains("u.toml") && err.contains("model.mlp_chunk_tokens") && err.contains("100"), "{err}");
        assert_eq!(Config::from_str_over_default("[model]\nmlp_chunk_tokens = 0\n", "u.toml").unwrap().model.mlp_chunk_tokens, 0);
        assert_eq!(Config::embedded().model.mlp_chunk_tokens, 8192);
    }

    #[test]
    fn wrong_types_name_the_key_path_and_expectation() {
        let err = Config::from_str_over_default("[optim]\nlr = \"fast\"\n", "u.toml").unwrap_err().to_string();
        assert!(err.contains("optim.lr") && err.contains("line 2") && err.contains("f32"), "{err}");
        let err = Config::from_str_over_default("[nonsense]\n", "u.toml").unwrap_err().to_string();
        assert!(err.contains("nonsense"), "{err}");
        let err = Config::from_str_over_default("[model\n", "u.toml").unwrap_err().to_string();
        assert!(err.contains("u.toml") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn the_method_configs_load_with_their_hyperparameters() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/");
        let load = |f: &str| Config::from_file(Path::new(&format!("{dir}{f}"))).unwrap_or_else(|e| panic!("{f}: {e:#}"));
        let rft = load("qwen2.5-7b-rft.toml");
        assert_eq!((rft.rft.lr, rft.rft.eps, rft.rft.warmup_steps, rft.rft.batch, rft.rft.epochs), (5e-6, 1e-8, 10, 64, 1));
        assert_eq!(rft.optim.weight_decay, 0.1);
        let s1 = load("qwen2.5-72b-stage1.toml");
        assert_eq!((s1.agent.max_context_tokens, s1.agent.max_turns, s1.dapo.problems_per_iteration, s1.dapo.mini_batch), (65_536, 40, 300, 128));
        assert_eq!((s1.dapo.eps_low, s1.dapo.eps_high, s1.dapo.group_size, s1.agent.length_threshold), (0.2, 0.3, 10, 10));
        let s2 = load("qwen2.5-72b-stage2.toml");
        assert_eq!((s2.agent.max_context_tokens, s2.agent.max_turns, s2.dapo.problems_per_iteration, s2.dapo.mini_batch), (131_072, 80, 100, 256));
        assert_eq!((s2.dapo.eps_low, s2.dapo.eps_high), (0.2, 0.26));
        assert!(s2.train.curriculum && s2.train.curriculum_from.is_some());
        let d = load("qwen2.5-7b-dapo.toml");
        assert_eq!((d.optim.lr, d.optim.beta2, d.optim.eps, d.optim.grad_clip), (1e-6, 0.999, 1e-8, 1.0));
        for c in [&s1, &s2, &d] {
            // the method's AdamW eps, not the tiny default's damped one
            assert_eq!(c.optim.eps, 1e-8);
            assert!(c.generate.is_untruncated() && c.generate.temperature == 1.0);
            assert_eq!((c.optim.lr, c.dapo.iterations, c.dapo.epochs), (1e-6, 100, 1));
        }
        // every config names the GPU backend and the method's full scaffold,
        // whatever the tiny default shortens
        for c in [&rft, &s1, &s2, &d] {
            assert_eq!(c.model.backend, Backend::Cuda);
            assert_eq!((c.agent.prompt, c.agent.max_reply_tokens), (crate::agent::scaffold::PromptStyle::Full, 4096));
            assert!(c.train.tasks.ends_with(".jsonl"));
        }
        assert_eq!(rft.rft.samples_per_task, 10);
    }
}
