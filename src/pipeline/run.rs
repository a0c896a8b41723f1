//! One training run, unit by unit: the held-out evaluation before anything,
//! then each configured phase (warm start, rejection fine-tuning, DAPO)
//! followed by its evaluation, with a checkpoint after every unit.
//!
//! Owns: the order of the work, the tasks' split into training and
//! held-out, the trainer's copy of the model and the engine's (weights go
//! to the engine in process after every update: no file round trip), the
//! metrics records and the summary. Does not own the episode loop
//! (`agent`), the losses and steps (`train`), or the file layout and
//! checkpoint format (`state`).
//!
//! Why units: a unit is the most a kill can lose (one evaluation, one
//! phase's training, one DAPO iteration). Each unit's trajectories go to
//! their own file, and its metrics records lie after the byte offset the
//! previous checkpoint recorded, so resuming truncates both and runs the
//! unit again, from the same weights, RNG state and seeds: the records it
//! writes are the ones an uninterrupted run writes.
//!
//! Seeds: every evaluation uses the same episode seeds (common random
//! numbers: two evaluations differ by the model, not by luck); RFT sampling
//! and each DAPO iteration have their own. Problems are drawn by a ChaCha8
//! stream whose position is checkpointed.

use super::curriculum;
use super::state::{EvalResult, Progress, RngState, RunDir, PROGRESS_VERSION};
use crate::agent::episode::Scaffold;
use crate::agent::eval::mean_sem;
use crate::agent::policy::{turn_seed, LocalPolicy, Policy};
use crate::agent::rollout::{rollout, RolloutOptions, RolloutTotals};
use crate::agent::scripted::MicroDemonstrationPolicy;
use crate::agent::trajectory::{read_trajectories, Exit, JsonlWriter, Trajectory};
use crate::config::{Backend, Config, Phase};
use crate::engine::service::EngineService;
use crate::env::grade::GradeOptions;
use crate::env::pool::Pool;
use crate::env::task::Task;
use crate::env::{micro, sandbox};
use crate::model::chat::{ChatTemplate, Source};
use crate::model::pretrained::{self, Pretrained};
use crate::model::weights::Weights;
use crate::train::algorithms::{dapo_step, epoch_mini_batches, prepare_samples};
use crate::train::optimizer::{cosine_lr, AdamW};
use crate::train::rft::{self, RftConfig};
use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What `appliance train` was asked to do.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub run_dir: PathBuf,
    /// Continue the run in `run_dir` (its own config.toml) instead of starting one.
    pub resume: bool,
    /// Progress bars and per-phase lines on stderr.
    pub progress: bool,
}

/// One unit of work; a checkpoint follows each.
#[derive(Clone, Debug, PartialEq)]
pub enum Unit {
    /// Held-out pass rate at a point: "initial", or after a phase.
    Eval(&'static str),
    WarmStart,
    RftSample,
    RftTrain,
    /// DAPO iteration (from 1).
    Dapo(u64),
}

impl Unit {
    pub fn name(&self) -> String {
        match self {
            Unit::Eval(p) => format!("eval-{p}"),
            Unit::WarmStart => "warm-start".into(),
            Unit::RftSample => "rft-sample".into(),
            Unit::RftTrain => "rft-train".into(),
            Unit::Dapo(k) => format!("dapo-{k:04}"),
        }
    }
}

/// The run's units, in order.
pub fn units(cfg: &Config) -> Vec<Unit> {
    let mut u = vec![Unit::Eval("initial")];
    for p in &cfg.train.phases {
        match p {
            Phase::WarmStart => u.extend([Unit::WarmStart, Unit::Eval("warm_start")]),
            Phase::Rft => u.extend([Unit::RftSample, Unit::RftTrain, Unit::Eval("rft")]),
            Phase::Dapo => {
                u.extend((1..=cfg.dapo.iterations).map(Unit::Dapo));
                u.push(Unit::Eval("dapo"));
            }
        }
    }
    u
}

/// The held-out pass rate: the mean over tasks of each task's success rate
/// over its scored attempts, and the SEM of that mean over tasks.
pub fn eval_result(trajs: &[Trajectory]) -> EvalResult {
    let mut per_task: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut unscored = 0;
    for t in trajs {
        if t.reward.is_none() {
            unscored += 1;
            continue;
        }
        let e = per_task.entry(t.instance_id.as_str()).or_default();
        e.0 += 1;
        e.1 += t.solved() as usize;
    }
    let rates: Vec<f64> = per_task.values().map(|&(n, s)| s as f64 / n as f64).collect();
    let (mean, sem) = mean_sem(&rates);
    EvalResult {
        pass_rate: if rates.is_empty() { 0.0 } else { mean },
        sem: if sem.is_finite() { sem } else { 0.0 },
        tasks: rates.len(),
        episodes: trajs.len(),
        solved: trajs.iter().filter(|t| t.solved()).count(),
        unscored,
    }
}

/// Put the trainer's forward, backward and optimizer where `[model] backend`
/// says: on the CPU (nothing to do), or on GPU 0 (after `check_backend`),
/// its buffers allocated once for `trainer_capacity`.
pub fn place_trainer(cfg: &Config, model: &mut crate::model::qwen2::Model, longest_sequence: usize) -> Result<()> {
    check_backend(cfg)?;
    match cfg.model.backend {
        Backend::Cpu => Ok(()),
        Backend::Cuda => crate::model::qwen2_gpu::attach_cuda(model, 0, trainer_capacity(cfg, longest_sequence)),
    }
}

/// The most tokens one training micro-batch can hold: micro-batches are
/// packed up to `[rft]`/`[dapo] micro_batch_tokens`, and a longer sequence
/// (at most `longest_sequence`) goes alone.
pub fn trainer_capacity(cfg: &Config, longest_sequence: usize) -> crate::model::qwen2_gpu::Capacity {
    let tokens = cfg.rft.micro_batch_tokens.max(cfg.dapo.micro_batch_tokens).max(longest_sequence);
    crate::model::qwen2_gpu::Capacity { tokens, chunk_tokens: cfg.model.mlp_chunk_tokens }
}

/// The config's hardware must be here: a GPU backend on a machine without
/// one fails before anything else happens.
pub fn check_backend(cfg: &Config) -> Result<()> {
    match cfg.model.backend {
        Backend::Cpu => Ok(()),
        Backend::Cuda => match crate::device::cuda::device_count() {
            Ok(n) if n > 0 => Ok(()),
            Ok(_) => bail!("[model] backend = \"cuda\" needs an NVIDIA GPU, and the CUDA driver reports none; use backend = \"cpu\" on this machine"),
            Err(e) => bail!("[model] backend = \"cuda\" needs an NVIDIA GPU and its driver: {e:#}; use backend = \"cpu\" on this machine"),
        },
    }
}

/// The tasks, split into (training, held-out).
fn load_tasks(cfg: &Config) -> Result<(Vec<Task>, Vec<Task>)> {
    let t = &cfg.train;
    let all = if t.tasks == "micro" {
        let root = crate::env::suite::cache_dir().join("micro");
        micro::family_tasks(t.micro_family, t.micro_seed, t.micro_tasks, &root)?
    } else {
        let p = Path::new(&t.tasks);
        crate::env::task::load(p, &Default::default()).with_context(|| format!("train.tasks = {:?}", t.tasks))?.tasks
    };
    ensure!(
        all.len() > t.held_out,
        "train.held_out ({}) leaves no training task: {} has {} tasks",
        t.held_out,
        t.tasks,
        all.len()
    );
    Ok(micro::split(all, t.held_out))
}

/// Sizes that only the task count can rule out, named by key.
fn check_sizes(cfg: &Config, train: usize) -> Result<()> {
    if cfg.train.phases.contains(&Phase::WarmStart) {
        ensure!(
            cfg.warm_start.demonstrations <= train,
            "warm_start.demonstrations ({}) is more than the {train} training tasks",
            cfg.warm_start.demonstrations
        );
    }
    if cfg.train.phases.contains(&Phase::Rft) {
        let most = train * cfg.rft.samples_per_task as usize;
        ensure!(
            cfg.rft.batch <= most,
            "rft.batch ({}) is larger than the data: at most {most} trajectories ({train} training tasks x rft.samples_per_task {})",
            cfg.rft.batch,
            cfg.rft.samples_per_task
        );
    }
    if cfg.train.phases.contains(&Phase::Dapo) {
        ensure!(
            cfg.dapo.problems_per_iteration <= train,
            "dapo.problems_per_iteration ({}) is more than the {train} training tasks",
            cfg.dapo.problems_per_iteration
        );
    }
    Ok(())
}

/// Everything a run holds while it works.
struct Run {
    cfg: Config,
    dir: RunDir,
    progress_bars: bool,
    rt: tokio::runtime::Runtime,
    docker: bollard::Docker,
    run_id: String,
    pool: Pool,
    sc: Scaffold,
    train: Vec<Task>,
    train_images: Vec<String>,
    held: Vec<Task>,
    held_images: Vec<String>,
    /// The trainer's model (and tokenizer, for checkpoints).
    pre: Pretrained,
    /// The generation engine's policy: its own copy of the weights.
    policy: Arc<LocalPolicy>,
    /// DAPO's optimizer, alive across iterations.
    opt: Option<AdamW>,
    grads: Option<Weights>,
    progress: Progress,
    metrics: JsonlWriter,
    t0: Instant,
    /// The weights changed since the last checkpoint that saved them.
    weights_dirty: bool,
    /// Solved trajectories from `rft.from`, read at start.
    extra_rft: Vec<Trajectory>,
    /// Run time before this process started (from the checkpoint), so
    /// `t_s` continues across a resume.
    elapsed_at_start: f64,
}

/// The trajectories of `rft.from`, read and checked up front: a torn last
/// line (a crash while writing) is skipped with a warning; any other bad
/// line is an error naming the file and line.
fn read_rft_inputs(cfg: &Config) -> Result<Vec<Trajectory>> {
    if !cfg.train.phases.contains(&Phase::Rft) {
        return Ok(vec![]);
    }
    let mut out = vec![];
    for p in &cfg.rft.from {
        let r = read_trajectories(p).with_context(|| format!("rft.from: {}", p.display()))?;
        if let Some(l) = r.torn_line {
            eprintln!("warning: {}: line {l} was cut short (a crash while writing?); skipped", p.display());
        }
        for (i, t) in r.items.iter().enumerate() {
            t.check().with_context(|| format!("rft.from: {}: trajectory {} ({})", p.display(), i + 1, t.instance_id))?;
        }
        out.extend(r.items);
    }
    Ok(out)
}

/// Order trajectories as `tasks`, then by sample (stable; trajectories of
/// other tasks last): the order of the jobs that made them, whatever order
/// they ended in.
pub fn sort_by_task(trajs: &mut [Trajectory], tasks: &[Task]) {
    let order: BTreeMap<&str, usize> = tasks.iter().enumerate().map(|(i, t)| (t.instance_id.as_str(), i)).collect();
    trajs.sort_by_key(|t| (order.get(t.instance_id.as_str()).copied().unwrap_or(usize::MAX), t.sample));
}

/// Append one metrics record: `kind`, `t_s`, then the fields of `v`.
fn emit_to(metrics: &mut JsonlWriter, t_s: f64, kind: &str, v: Value) -> Result<()> {
    let mut rec = serde_json::Map::new();
    rec.insert("kind".into(), json!(kind));
    rec.insert("t_s".into(), json!(t_s));
    if let Value::Object(m) = v {
        rec.extend(m);
    }
    metrics.append(&Value::Object(rec))
}

/// Run (or resume) `appliance train`. Returns the held-out results by point.
pub fn train(config: Config, opts: &TrainOptions) -> Result<BTreeMap<String, EvalResult>> {
    // The config: the given one for a fresh run; the run's own on resume.
    let dir_for_resume = if opts.resume { Some(RunDir::open(&opts.run_dir)?) } else { None };
    let cfg = match &dir_for_resume {
        Some(d) => Config::from_file(&d.config())?,
        None => config,
    };
    // Everything that can be wrong with the input is found before the run
    // directory is created or touched.
    check_backend(&cfg)?;
    let (train, held) = load_tasks(&cfg)?;
    check_sizes(&cfg, train.len())?;
    let extra_rft = read_rft_inputs(&cfg)?;
    let earlier_stats = match &cfg.train.curriculum_from {
        Some(d) => {
            let earlier = RunDir::open(d).context("train.curriculum_from")?;
            let name = earlier.latest()?.with_context(|| format!("train.curriculum_from: {} has no checkpoint yet", d.display()))?;
            earlier.read_progress(&name)?.task_stats
        }
        None => Default::default(),
    };
    let plan = units(&cfg);
    let progress = match &dir_for_resume {
        Some(d) => match d.latest()? {
            Some(name) => {
                let p = d.read_progress(&name)?;
                let names: Vec<String> = plan.iter().map(Unit::name).collect();
                ensure!(
                    p.units_done <= names.len() && p.unit_names[..] == names[..p.units_done],
                    "{}: the checkpoint's completed units {:?} do not match the config's plan {:?}",
                    d.checkpoint(&name).display(),
                    p.unit_names,
                    &names[..p.units_done.min(names.len())]
                );
                Some((name, p))
            }
            None => None,
        },
        None => None,
    };
    // The model: the checkpoint's weights, or the starting point.
    let mut pre = match (&dir_for_resume, &progress) {
        (Some(d), Some((_, p))) if !p.weights_in.is_empty() => pretrained::load(Some(&d.model_dir(&p.weights_in)), cfg.model.init_seed)?,
        _ => pretrained::load(cfg.model.dir.as_deref(), cfg.model.init_seed)?,
    };
    pre.model.vocab_chunk = cfg.model.vocab_chunk;
    pre.model.recompute = cfg.model.recompute;
    // The trainer's forward and backward go to GPU 0 with the CUDA backend
    // (before the run directory exists: a model the GPU backend cannot run
    // fails here).
    // An episode's tokens stay within the context limit (see below).
    let longest = cfg.agent.max_context_tokens.min(pre.model.cfg.max_position_embeddings);
    place_trainer(&cfg, &mut pre.model, longest)?;
    let opt = match (&dir_for_resume, &progress) {
        (Some(d), Some((_, p))) if p.has_optimizer => Some(crate::pipeline::state::load_optimizer(cfg.optim.clone(), &pre.model.cfg, &d.optimizer_path(&p.weights_in), p.dapo_steps)?),
        _ => None,
    };

    // The run directory: created now, or cut back to the last checkpoint.
    let dir = match dir_for_resume {
        Some(d) => d,
        None => {
            let d = RunDir::create(&opts.run_dir)?;
            let text = toml::to_string(&cfg).context("serializing the config")?;
            crate::files::write_atomic(&d.config(), text.as_bytes())?;
            d
        }
    };
    if opts.resume && opts.progress {
        match &progress {
            Some((n, p)) => eprintln!("resuming {} from {n}: {} of {} units done", dir.root.display(), p.units_done, plan.len()),
            None => eprintln!("resuming {}: no checkpoint yet, starting from the beginning", dir.root.display()),
        }
    }
    let progress = match progress {
        Some((_, p)) => p,
        None => Progress {
            format_version: PROGRESS_VERSION,
            units_done: 0,
            unit_names: vec![],
            dapo_steps: 0,
            dapo_iterations: 0,
            rng: RngState::of(&ChaCha8Rng::seed_from_u64(turn_seed(cfg.train.seed, 0xDA90))),
            task_stats: earlier_stats.clone(),
            dapo_pool: None,
            summary: Default::default(),
            metrics_bytes: 0,
            elapsed_s: 0.0,
            weights_in: String::new(),
            has_optimizer: false,
        },
    };
    dir.truncate_metrics(progress.metrics_bytes)?;
    let mut sc_cfg = cfg.agent.clone();
    sc_cfg.max_context_tokens = sc_cfg.max_context_tokens.min(pre.model.cfg.max_position_embeddings);

    // The environment: one run id, its containers reaped on exit and on signals.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let run_id = crate::env::new_run_id("train");
    let docker = rt.block_on(async {
        let d = crate::env::connect().await?;
        sandbox::reap_expired(&d).await?;
        sandbox::spawn_signal_reaper(d.clone(), run_id.clone());
        anyhow::Ok(d)
    })?;
    let _guard = sandbox::RunGuard { run_id: run_id.clone() };
    let pool = Pool::new(docker.clone(), cfg.rollout.concurrency, cfg.rollout.max_starts);
    let (train_images, held_images) = rt.block_on(async {
        let a = micro::prepare_images(&docker, &train).await?;
        let b = micro::prepare_images(&docker, &held).await?;
        anyhow::Ok((a, b))
    })?;
    let tmpl = ChatTemplate::new(pre.tokenizer.clone())?;
    let sc = Scaffold::new(sc_cfg, tmpl, GradeOptions { run_id: run_id.clone(), test_timeout: Duration::from_secs(cfg.rollout.test_timeout_s) })?;
    let name = cfg.model.dir.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| "tiny".into());
    // The engine's copy is a CPU model: generation runs there.
    let mut engine_model = pre.model.clone();
    engine_model.train_device = None;
    let engine = EngineService::start(engine_model, &name, 4096, cfg.rollout.concurrency.max(1))?;
    let policy = Arc::new(LocalPolicy { engine, tokenizer: pre.tokenizer.clone(), params: cfg.generate.clone() });
    let metrics = JsonlWriter::open(&dir.metrics())?;

    let mut run = Run {
        cfg,
        dir,
        progress_bars: opts.progress,
        rt,
        docker,
        run_id,
        pool,
        sc,
        train,
        train_images,
        held,
        held_images,
        pre,
        policy,
        opt,
        grads: None,
        progress,
        metrics,
        t0: Instant::now(),
        weights_dirty: false,
        extra_rft,
        elapsed_at_start: 0.0,
    };
    run.elapsed_at_start = run.progress.elapsed_s;
    let r = run.run_units(&plan);
    let _ = run.rt.block_on(sandbox::reap_run(&run.docker, &run.run_id));
    r?;
    Ok(run.progress.summary.clone())
}

impl Run {
    fn say(&self, line: &str) {
        if self.progress_bars {
            eprintln!("{line}");
        }
    }

    fn t_s(&self) -> f64 {
        self.elapsed_at_start + self.t0.elapsed().as_secs_f64()
    }

    /// Append one metrics record: `kind`, `t_s`, then the fields of `v`.
    fn emit(&mut self, kind: &str, v: Value) -> Result<()> {
        let t = self.t_s();
        emit_to(&mut self.metrics, t, kind, v)
    }

    fn run_units(&mut self, plan: &[Unit]) -> Result<()> {
        for (i, unit) in plan.iter().enumerate().skip(self.progress.units_done) {
            match unit {
                Unit::Eval(point) => self.eval(point)?,
                Unit::WarmStart => self.warm_start()?,
                Unit::RftSample => self.rft_sample()?,
                Unit::RftTrain => self.rft_train()?,
                Unit::Dapo(k) => self.dapo_iteration(*k, plan.iter().filter(|u| matches!(u, Unit::Dapo(_))).count() as u64)?,
            }
            self.checkpoint(i + 1, plan)?;
        }
        Ok(())
    }

    /// Write the checkpoint after `done` units.
    fn checkpoint(&mut self, done: usize, plan: &[Unit]) -> Result<()> {
        let name = format!("ckpt-{done:04}");
        self.progress.units_done = done;
        self.progress.unit_names = plan[..done].iter().map(Unit::name).collect();
        self.progress.metrics_bytes = std::fs::metadata(self.dir.metrics()).map(|m| m.len()).unwrap_or(0);
        self.progress.elapsed_s = self.t_s();
        let save = self.weights_dirty;
        if save {
            // With the GPU backend, the weights and AdamW's m and v live on
            // the device.
            self.pre.model.sync_host_weights()?;
            if let Some(opt) = self.opt.as_mut() {
                crate::train::optimizer::sync_optimizer(&self.pre.model, opt)?;
            }
            self.progress.weights_in = name.clone();
            self.progress.has_optimizer = self.opt.is_some();
        }
        let weights = save.then_some((&self.pre, self.opt.as_ref()));
        self.dir.write_checkpoint(&name, &self.progress, weights)?;
        self.weights_dirty = false;
        Ok(())
    }

    /// Run episodes of `tasks` (one file per unit). With `keep_partial`,
    /// episodes an interrupted attempt at this unit already wrote are kept
    /// and not run again.
    #[allow(clippy::too_many_arguments)]
    fn rollout(&self, policy: Arc<dyn Policy>, tasks: &[Task], images: &[String], samples: u32, seed: u64, file: &str, keep_partial: bool) -> Result<(Vec<Trajectory>, RolloutTotals)> {
        let path = self.dir.trajectories(file);
        let mut old = vec![];
        let mut done = HashSet::new();
        if path.exists() {
            if keep_partial {
                let r = read_trajectories(&path)?;
                for t in r.items {
                    if done.insert((t.instance_id.clone(), t.sample)) {
                        old.push(t);
                    }
                }
            } else {
                std::fs::remove_file(&path).with_context(|| format!("removing the partial {}", path.display()))?;
            }
        }
        let mut w = JsonlWriter::open(&path)?;
        let opts = RolloutOptions { samples, seed, env_retries: self.cfg.rollout.env_retries, progress: self.progress_bars };
        let (new, totals) = self.rt.block_on(rollout(&self.pool, &self.sc, policy, tasks, images, &opts, self.cfg.rollout.concurrency, Some(&mut w), &done))?;
        let mut all = old;
        all.extend(new);
        sort_by_task(&mut all, tasks);
        Ok((all, totals))
    }

    /// Send the trainer's weights to the engine (in process); with the GPU
    /// backend they come back from the device here, once per unit of work.
    fn push_weights(&mut self) -> Result<()> {
        self.pre.model.sync_host_weights()?;
        let w = self.pre.model.weights.clone();
        self.rt.block_on(self.policy.engine.update(move |m| {
            m.weights = w;
            Ok(())
        }))?;
        self.weights_dirty = true;
        Ok(())
    }

    fn step_bar(&self, len: u64, what: &str) -> ProgressBar {
        let bar = if self.progress_bars { ProgressBar::new(len) } else { ProgressBar::hidden() };
        let style = format!("{what} [{{bar:30}}] {{pos}}/{{len}} {{msg}} ({{elapsed}})");
        bar.set_style(ProgressStyle::with_template(&style).unwrap_or_else(|_| ProgressStyle::default_bar()));
        bar
    }

    fn eval(&mut self, point: &'static str) -> Result<()> {
        let t = Instant::now();
        let seed = turn_seed(self.cfg.train.seed, 0xE7A1);
        let (held, images) = (self.held.clone(), self.held_images.clone());
        self.say(&format!("== held-out evaluation ({point}): {} tasks x {} samples", held.len(), self.cfg.train.eval_samples));
        let (trajs, _) = self.rollout(self.policy.clone(), &held, &images, self.cfg.train.eval_samples, seed, &format!("eval-{point}"), false)?;
        let r = eval_result(&trajs);
        self.say(&format!("held-out pass rate ({point}): {:.3} ± {:.3} ({} of {} episodes solved)", r.pass_rate, r.sem, r.solved, r.episodes));
        self.emit(
            "eval",
            json!({"phase": point, "pass_rate": r.pass_rate, "sem": r.sem, "tasks": r.tasks, "episodes": r.episodes, "solved": r.solved, "unscored": r.unscored, "time_s": t.elapsed().as_secs_f64()}),
        )?;
        self.progress.summary.insert(point.to_string(), r);
        self.write_summary()
    }

    fn write_summary(&self) -> Result<()> {
        let order: Vec<&str> = units(&self.cfg)
            .iter()
            .filter_map(|u| match u {
                Unit::Eval(p) => Some(*p),
                _ => None,
            })
            .filter(|p| self.progress.summary.contains_key(*p))
            .collect();
        let s = json!({
            "phases": self.progress.summary,
            "order": order,
            "held_out_tasks": self.held.len(),
            "eval_samples": self.cfg.train.eval_samples,
            "seed": self.cfg.train.seed,
        });
        crate::files::write_atomic(&self.dir.summary(), serde_json::to_string_pretty(&s)?.as_bytes())
    }

    /// Supervised fine-tuning on scripted demonstrations, run and verified
    /// in the real environment.
    fn warm_start(&mut self) -> Result<()> {
        let ws = self.cfg.warm_start.clone();
        let tasks: Vec<Task> = self.train[..ws.demonstrations].to_vec();
        let images: Vec<String> = self.train_images[..ws.demonstrations].to_vec();
        self.say(&format!("== warm start: {} scripted demonstrations, {} epochs", tasks.len(), ws.epochs));
        let demo = Arc::new(MicroDemonstrationPolicy { fence: self.cfg.agent.fence.clone() });
        let (trajs, _) = self.rollout(demo, &tasks, &images, 1, turn_seed(self.cfg.train.seed, 0x3A7), "warm-start-demonstrations", true)?;
        let (examples, sel) = rft::select(&trajs);
        ensure!(!examples.is_empty(), "no scripted demonstration solved its task ({} episodes); see {}", trajs.len(), self.dir.trajectories("warm-start-demonstrations").display());
        if sel.kept < trajs.len() {
            tracing::warn!("{} of {} demonstrations did not solve their task and are left out", trajs.len() - sel.kept, trajs.len());
        }
        ensure!(ws.batch <= examples.len(), "warm_start.batch ({}) is larger than the data: {} verified demonstrations", ws.batch, examples.len());
        // [rft]'s eps and micro-batch size, the warm start's own schedule
        let rc = RftConfig { lr: ws.lr, warmup_steps: ws.warmup_steps, batch: ws.batch, epochs: ws.epochs, seed: self.cfg.train.seed, samples_per_task: 1, from: vec![], ..self.cfg.rft.clone() };
        self.supervised("warm_start", &examples, &rc)
    }

    /// Fine-tune the trainer's model on `examples` (a fresh AdamW with the
    /// config's betas and weight decay), record each step, push the weights.
    fn supervised(&mut self, phase: &str, examples: &[rft::Example], rc: &RftConfig) -> Result<()> {
        let steps = (examples.len().div_ceil(rc.batch) as u64) * rc.epochs as u64;
        let bar = self.step_bar(steps, phase);
        let mut opt = AdamW::new(rc.optim(&self.cfg.optim), &self.pre.model.cfg);
        let kind = format!("{phase}_step");
        let mut last = Instant::now();
        let (mut first, mut last_loss) = (f64::NAN, f64::NAN);
        let (t_base, t0) = (self.elapsed_at_start, self.t0);
        let metrics = &mut self.metrics;
        let mut failed = Ok(());
        rft::train(&mut self.pre.model, &mut opt, examples, rc, |s| {
            let dt = last.elapsed().as_secs_f64();
            last = Instant::now();
            if first.is_nan() {
                first = s.loss;
            }
            last_loss = s.loss;
            let rec = json!({"step": s.step, "loss": s.loss, "grad_norm": s.grad_norm, "lr": s.lr, "tokens": s.tokens, "trained_tokens": s.trained_tokens, "train_tokens_per_s": s.tokens as f64 / dt.max(1e-9)});
            if failed.is_ok() {
                failed = emit_to(metrics, t_base + t0.elapsed().as_secs_f64(), &kind, rec);
            }
            bar.set_message(format!("loss {:.4}", s.loss));
            bar.inc(1);
        })?;
        failed?;
        bar.finish_and_clear();
        self.say(&format!("{phase}: {steps} steps on {} trajectories, loss {first:.4} -> {last_loss:.4}", examples.len()));
        self.push_weights()
    }

    /// RFT, part 1: sample attempts of every training task with the current
    /// policy (an interrupted sampling keeps what it wrote).
    fn rft_sample(&mut self) -> Result<()> {
        let k = self.cfg.rft.samples_per_task;
        let (tasks, images) = (self.train.clone(), self.train_images.clone());
        self.say(&format!("== rejection fine-tuning: sampling {k} attempts of each of {} training tasks", tasks.len()));
        let (trajs, totals) = self.rollout(self.policy.clone(), &tasks, &images, k, turn_seed(self.cfg.train.seed, 0x0F7), "rft-samples", true)?;
        curriculum::record(&mut self.progress.task_stats, &trajs);
        let solved = trajs.iter().filter(|t| t.solved()).count();
        let scored = trajs.iter().filter(|t| t.reward.is_some()).count();
        self.say(&format!("rft sampling: {solved} of {scored} scored attempts solved their task"));
        let (g, e, r) = totals.time_split();
        self.emit(
            "rft_sample",
            json!({"episodes": trajs.len(), "scored": scored, "solved": solved, "pass_rate": solved as f64 / scored.max(1) as f64, "wall_s": totals.wall_s, "share_generation": g, "share_env": e + r}),
        )
    }

    /// RFT, part 2: fine-tune on the successful samples, format-error turns masked.
    fn rft_train(&mut self) -> Result<()> {
        let path = self.dir.trajectories("rft-samples");
        let mut trajs = read_trajectories(&path)?.items;
        // The file holds episodes in the order they ended, which depends on
        // timing when several run at once: train in the tasks' order.
        sort_by_task(&mut trajs, &self.train);
        let own = trajs.len();
        trajs.extend(self.extra_rft.iter().cloned());
        let (examples, sel) = rft::select(&trajs);
        if examples.is_empty() {
            // Nothing to imitate: the phase leaves the weights as they are
            // (and says so) rather than ending the run.
            let msg = format!(
                "rejection fine-tuning: none of the {own} sampled attempts in {} (nor of the {} trajectories of rft.from) solved its task; nothing to fine-tune on, the weights are unchanged",
                path.display(),
                self.extra_rft.len()
            );
            eprintln!("warning: {msg}");
            return self.emit("rft_skipped", json!({"sampled": own, "from_files": self.extra_rft.len()}));
        }
        let mut rc = self.cfg.rft.clone();
        if rc.batch > examples.len() {
            self.say(&format!("rft: {} successful trajectories, fewer than rft.batch = {}; one step takes them all", examples.len(), rc.batch));
            rc.batch = examples.len();
        }
        self.say(&format!("== rejection fine-tuning: {} successful trajectories ({} unsolved left out)", sel.kept, sel.unsolved));
        self.supervised("rft", &examples, &rc)
    }

    /// One synchronous DAPO iteration: sample P problems, G rollouts each,
    /// verify, advantages, drop zero-advantage samples, mini-batch steps,
    /// then the new weights go to the engine.
    fn dapo_iteration(&mut self, k: u64, total: u64) -> Result<()> {
        let d = self.cfg.dapo.clone();
        let t_iter = Instant::now();
        // The task pool: the curriculum filter, applied once when DAPO starts.
        if self.progress.dapo_pool.is_none() {
            let pool: Vec<String> = if self.cfg.train.curriculum {
                let (kept, f) = curriculum::filter(&self.train, &self.progress.task_stats);
                self.say(&format!(
                    "curriculum: {} training tasks kept, {} dropped as solved in >= 2/3 of their attempts, {} as never solved",
                    f.kept, f.dropped_easy, f.dropped_never_solved
                ));
                self.emit("curriculum", json!({"kept": f.kept, "dropped_easy": f.dropped_easy, "dropped_never_solved": f.dropped_never_solved}))?;
                kept.iter().map(|t| t.instance_id.clone()).collect()
            } else {
                self.train.iter().map(|t| t.instance_id.clone()).collect()
            };
            self.progress.dapo_pool = Some(pool);
        }
        let ids: HashSet<&str> = self.progress.dapo_pool.as_ref().map(|p| p.iter().map(String::as_str).collect()).unwrap_or_default();
        let mut pool: Vec<usize> = (0..self.train.len()).filter(|&i| ids.contains(self.train[i].instance_id.as_str())).collect();
        if pool.len() < d.problems_per_iteration {
            tracing::warn!("the DAPO pool has {} tasks, fewer than dapo.problems_per_iteration = {}; the whole training set is used", pool.len(), d.problems_per_iteration);
            pool = (0..self.train.len()).collect();
        }
        let mut rng = self.progress.rng.rng();
        let chosen: Vec<usize> = pool.choose_multiple(&mut rng, d.problems_per_iteration).copied().collect();
        let tasks: Vec<Task> = chosen.iter().map(|&i| self.train[i].clone()).collect();
        let images: Vec<String> = chosen.iter().map(|&i| self.train_images[i].clone()).collect();
        self.say(&format!("== DAPO iteration {k}/{total}: {} problems x {} rollouts", tasks.len(), d.group_size));

        // Generate and verify.
        let seed = turn_seed(turn_seed(self.cfg.train.seed, 0xDA90), k as u32);
        let (trajs, totals) = self.rollout(self.policy.clone(), &tasks, &images, d.group_size as u32, seed, &format!("dapo-{k:04}"), false)?;
        curriculum::record(&mut self.progress.task_stats, &trajs);

        // Advantages; zero-advantage samples dropped; mini-batches of whole
        // groups (see group_mini_batches for why).
        let prepared = prepare_samples(&trajs, d.delta)?;
        let sample_groups: Vec<&str> = prepared.source.iter().map(|&i| trajs[i].instance_id.as_str()).collect();
        let mini_batches = epoch_mini_batches(&sample_groups, d.mini_batch, d.epochs, &mut rng);

        // Train: `dapo.epochs` passes of mini-batch steps (the method: one).
        let t_train = Instant::now();
        if self.opt.is_none() {
            self.opt = Some(AdamW::new(self.cfg.optim.clone(), &self.pre.model.cfg));
        }
        let mut grads = self.grads.take().unwrap_or_else(|| Weights::zeros(&self.pre.model.cfg));
        let mut opt = self.opt.take().expect("set above");
        let n_steps = mini_batches.len() as u64;
        let bar = if self.progress_bars { ProgressBar::new(n_steps) } else { ProgressBar::hidden() };
        bar.set_style(ProgressStyle::with_template("dapo steps [{bar:30}] {pos}/{len} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()));
        let alg = d.algorithm();
        let mut steps = vec![];
        let mut packed_tokens = 0usize;
        let mut result = Ok(());
        for (epoch, chunk) in &mini_batches {
            let batch: Vec<_> = chunk.iter().map(|&i| prepared.samples[i].clone()).collect();
            let step = self.progress.dapo_steps;
            let o = &self.cfg.optim;
            let lr = if o.warmup_steps > 0 { cosine_lr(step, o.warmup_steps, u64::MAX, o.lr, o.lr) } else { o.lr };
            let ts = Instant::now();
            let st = match dapo_step(&mut self.pre.model, &mut opt, &mut grads, &batch, &alg, lr, d.micro_batch_tokens) {
                Ok(st) => st,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let tokens: usize = batch.iter().map(|s| s.ids.len()).sum();
            let dt = ts.elapsed().as_secs_f64();
            packed_tokens += tokens;
            steps.push(st);
            self.progress.dapo_steps += 1;
            let rec = json!({"iteration": k, "epoch": epoch, "step": step, "loss": st.loss, "grad_norm": st.grad_norm, "lr": st.lr, "clip_low_frac": st.clip_low_frac,
                   "clip_high_frac": st.clip_high_frac, "entropy": st.entropy, "tokens": st.tokens, "sequences": st.sequences,
                   "parity_mean_abs": st.parity_mean_abs, "parity_max_abs": st.parity_max_abs, "train_tokens_per_s": tokens as f64 / dt.max(1e-9)});
            if let Err(e) = self.emit("dapo_step", rec) {
                result = Err(e);
                break;
            }
            bar.set_message(format!("loss {:.4} clip {:.3}/{:.3}", st.loss, st.clip_low_frac, st.clip_high_frac));
            bar.inc(1);
        }
        self.opt = Some(opt);
        self.grads = Some(grads);
        result?;
        bar.finish_and_clear();
        let train_s = t_train.elapsed().as_secs_f64();
        self.progress.rng = RngState::of(&rng);
        if !steps.is_empty() {
            self.push_weights()?;
        }

        // The iteration's record.
        let n = trajs.len().max(1) as f64;
        let scored: Vec<&Trajectory> = trajs.iter().filter(|t| t.reward.is_some()).collect();
        let ns = scored.len().max(1) as f64;
        let groups: BTreeMap<&str, Vec<f64>> = scored.iter().fold(BTreeMap::new(), |mut m, t| {
            m.entry(t.instance_id.as_str()).or_insert_with(Vec::new).push(t.final_reward.unwrap_or(0.0));
            m
        });
        let kept_groups = groups.values().filter(|r| r.iter().any(|&x| x != r[0])).count();
        let sampled_tokens: usize = trajs.iter().map(|t| t.ledger.source.iter().filter(|&&s| s == Source::Sampled).count()).sum();
        let weight: f64 = steps.iter().map(|s| s.tokens as f64).sum::<f64>().max(1.0);
        let wmean = |f: &dyn Fn(&crate::train::algorithms::DapoStepStats) -> f64| if steps.is_empty() { None } else { Some(steps.iter().map(|s| f(s) * s.tokens as f64).sum::<f64>() / weight) };
        let (g, e, r) = totals.time_split();
        let first = steps.first().copied();
        let rec = json!({
            "iteration": k,
            "problems": tasks.len(),
            "episodes": trajs.len(),
            "reward_mean": scored.iter().map(|t| t.final_reward.unwrap_or(0.0)).sum::<f64>() / ns,
            "pass_rate": scored.iter().filter(|t| t.solved()).count() as f64 / ns,
            "groups_kept_frac": kept_groups as f64 / groups.len().max(1) as f64,
            "samples_kept": prepared.samples.len(),
            "zero_advantage": prepared.zero_advantage,
            "steps_mean": trajs.iter().map(|t| t.steps() as f64).sum::<f64>() / n,
            "submit_rate": trajs.iter().filter(|t| t.exit == Exit::Submitted).count() as f64 / n,
            "truncated_rate": trajs.iter().filter(|t| t.exit.truncated()).count() as f64 / n,
            "env_error_rate": totals.env_errors as f64 / n,
            "optimizer_steps": steps.len(),
            "entropy": wmean(&|s| s.entropy),
            "clip_low_frac": wmean(&|s| s.clip_low_frac),
            "clip_high_frac": wmean(&|s| s.clip_high_frac),
            "grad_norm": if steps.is_empty() { None } else { Some(steps.iter().map(|s| s.grad_norm).sum::<f64>() / steps.len() as f64) },
            "parity_mean_abs": first.map(|s| s.parity_mean_abs),
            "parity_max_abs": first.map(|s| s.parity_max_abs),
            "gen_tokens_per_s": sampled_tokens as f64 / totals.wall_s.max(1e-9),
            "train_tokens_per_s": packed_tokens as f64 / train_s.max(1e-9),
            "time_generation_s": totals.wall_s * g,
            "time_env_s": totals.wall_s * (e + r),
            "time_train_s": train_s,
            "wall_s": t_iter.elapsed().as_secs_f64(),
        });
        self.say(&format!(
            "iteration {k}: reward {:.3}, pass rate {:.3}, groups kept {:.2}, {} steps, parity max {:.2e}",
            rec["reward_mean"].as_f64().unwrap_or(0.0),
            rec["pass_rate"].as_f64().unwrap_or(0.0),
            rec["groups_kept_frac"].as_f64().unwrap_or(0.0),
            steps.len(),
            rec["parity_max_abs"].as_f64().unwrap_or(0.0)
        ));
        self.emit("dapo_iteration", rec)?;
        self.progress.dapo_iterations = k;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trainer_is_sized_for_the_largest_micro_batch_the_config_allows() {
        let mut c = Config::embedded();
        c.rft.micro_batch_tokens = 4096;
        c.dapo.micro_batch_tokens = 8192;
        c.model.mlp_chunk_tokens = 1024;
        let cap = trainer_capacity(&c, 2000);
        assert_eq!((cap.tokens, cap.chunk_tokens), (8192, 1024));
        // A sequence longer than every micro-batch goes alone.
        assert_eq!(trainer_capacity(&c, 65536).tokens, 65536);
        c.rft.micro_batch_tokens = 10_000;
        assert_eq!(trainer_capacity(&c, 2000).tokens, 10_000);
    }

    #[test]
    fn units_follow_the_phases() {
        let mut c = Config::embedded();
        c.dapo.iterations = 2;
        let names: Vec<String> = units(&c).iter().map(Unit::name).collect();
        assert_eq!(names, ["eval-initial", "warm-start", "eval-warm_start", "rft-sample", "rft-train", "eval-rft", "dapo-0001", "dapo-0002", "eval-dapo"]);
        c.train.phases = vec![Phase::Dapo];
        assert_eq!(units(&c).len(), 4);
    }

    fn traj(id: &str, sample: u32, reward: Option<f64>) -> Trajectory {
        use crate::agent::trajectory::{Ledger, Timing};
        Trajectory {
            format_version: 1,
            instance_id: id.into(),
            sample,
            seed: 0,
            policy: "x".into(),
            messages: vec![],
            ledger: Ledger::default(),
            turns: vec![],
            exit: if reward.is_some() { Exit::Submitted } else { Exit::EnvironmentError },
            exit_detail: String::new(),
            patch: None,
            grade: None,
            reward,
            final_reward: reward,
            attempts: 1,
            timing: Timing::default(),
        }
    }

    #[test]
    fn trajectories_go_in_the_order_of_their_tasks_whatever_order_they_ended_in() {
        let dir = tempfile::tempdir().unwrap();
        let tasks = micro::micro_tasks(0, 3, dir.path()).unwrap();
        let id = |i: usize| tasks[i].instance_id.as_str();
        let mut v = vec![traj(id(2), 0, None), traj("other", 0, None), traj(id(0), 1, None), traj(id(2), 1, None), traj(id(0), 0, None), traj(id(1), 0, None)];
        sort_by_task(&mut v, &tasks);
        let got: Vec<(&str, u32)> = v.iter().map(|t| (t.instance_id.as_str(), t.sample)).collect();
        assert_eq!(got, [(id(0), 0), (id(0), 1), (id(1), 0), (id(2), 0), (id(2), 1), ("other", 0)]);
    }

    #[test]
    fn eval_result_is_the_mean_over_tasks_with_its_sem() {
        let t = traj;
        // task a: 2/2, task b: 0/2, task c: 1/1 scored (one unscored)
        let v = [t("a", 0, Some(1.0)), t("a", 1, Some(1.0)), t("b", 0, Some(0.0)), t("b", 1, Some(0.0)), t("c", 0, Some(1.0)), t("c", 1, None)];
        let r = eval_result(&v);
        assert_eq!((r.tasks, r.episodes, r.solved, r.unscored), (3, 6, 3, 1));
        assert!((r.pass_rate - 2.0 / 3.0).abs() < 1e-12);
        let sem = ((2.0 * (1.0f64 / 3.0).powi(2) + (2.0f64 / 3.0).powi(2)) / 2.0 / 3.0).sqrt();
        assert!((r.sem - sem).abs() < 1e-12, "{} vs {sem}", r.sem);
        let none = eval_result(&[]);
        assert_eq!((none.pass_rate, none.sem, none.tasks), (0.0, 0.0, 0));
    }

    #[test]
    fn a_gpu_backend_without_a_gpu_fails_fast() {
        let mut c = Config::embedded();
        check_backend(&c).unwrap();
        c.model.backend = Backend::Cuda;
        if crate::device::cuda::device_count().map(|n| n == 0).unwrap_or(true) {
            let e = check_backend(&c).unwrap_err().to_string();
            assert!(e.contains("backend = \"cuda\"") && e.contains("GPU"), "{e}");
        }
    }
}
