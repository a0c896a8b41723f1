//! `appliance rft`: rejection fine-tuning from trajectory files (ours, or
//! imported), then a model directory that `rollout --model`, `serve` and
//! Hugging Face tools load.

use crate::agent::trajectory::read_trajectories;
use crate::config::Config;
use crate::model::pretrained;
use crate::train::optimizer::AdamW;
use crate::train::rft;
use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Trajectory files (JSONL); only solved trajectories are trained on.
    #[arg(long = "from", value_name = "FILE.jsonl", required = true, num_args = 1..)]
    pub from: Vec<PathBuf>,
    /// The model to fine-tune (default: the embedded tiny model); its
    /// tokenizer must be the one the trajectories were tokenized with.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Where to write the fine-tuned model directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn run(config: &Config, a: Args) -> Result<()> {
    let mut trajs = vec![];
    for f in &a.from {
        let r = read_trajectories(f)?;
        if let Some(l) = r.torn_line {
            eprintln!("warning: {}: line {l} was cut short by a crash; skipped", f.display());
        }
        trajs.extend(r.items);
    }
    let (examples, sel) = rft::select(&trajs);
    eprintln!("{} trajectories: {} solved and kept, {} unsolved, {} with only format-error turns", trajs.len(), sel.kept, sel.unsolved, sel.nothing_to_train);
    if examples.is_empty() {
        bail!("no solved trajectory to fine-tune on in {}", a.from.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    let mut p = pretrained::load(super::model_dir(config, &a.model).as_deref(), config.model.init_seed)?;
    super::apply_model_settings(config, &mut p.model);
    let longest = examples.iter().map(|e| e.ids.len()).max().unwrap_or(1);
    crate::pipeline::run::place_trainer(config, &mut p.model, longest)?;
    let cfg = &config.rft;
    let mut opt = AdamW::new(cfg.optim(&config.optim), &p.model.cfg);
    let total = (examples.len().div_ceil(cfg.batch) * cfg.epochs as usize) as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(ProgressStyle::with_template("rft [{bar:30}] {pos}/{len} steps {msg} ({elapsed})").unwrap_or_else(|_| ProgressStyle::default_bar()));
    // Without a terminal (logs, CI, `docker run` without -t) the bar is
    // hidden: one line per step instead.
    let lines = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let steps = rft::train(&mut p.model, &mut opt, &examples, cfg, |s| {
        let msg = format!("loss {:.4}, grad norm {:.3}, lr {:.2e}, {} tokens", s.loss, s.grad_norm, s.lr, s.trained_tokens);
        if lines {
            eprintln!("rft step {}/{total}: {msg}", s.step + 1);
        }
        bar.set_message(msg);
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    p.model.sync_host_weights()?;
    pretrained::save(&p, &a.out)?;
    let (first, last) = (steps.first().map(|s| s.loss).unwrap_or(f64::NAN), steps.last().map(|s| s.loss).unwrap_or(f64::NAN));
    println!("{} steps on {} trajectories: loss {first:.4} -> {last:.4}; wrote {}", steps.len(), examples.len(), a.out.display());
    Ok(())
}
