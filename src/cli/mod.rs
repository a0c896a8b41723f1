//! The command line: one file per subcommand, each a thin layer that parses
//! arguments, calls the library, and prints.
//!
//! Owns: argument parsing (clap derive), logging setup, and turning errors
//! into a message and an exit code. No panic reaches the user: `run` returns
//! errors, and `main` prints them with their whole context chain.

mod bench;
mod demo;
mod env;
mod eval;
mod generate;
mod gpus;
mod import;
mod plan;
mod report;
mod rft;
mod rollout;
mod score;
mod selftest;
mod serve;
mod tokenize;
mod train;

use crate::config::Config;
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "appliance", version, about = "Make an open-weight LLM a better software-engineering agent through RL.")]
#[command(after_help = "With no command, runs `train` on the embedded default: the tiny model learns micro tasks in real containers, on the CPU.")]
pub struct Cli {
    /// A TOML config file, layered over the embedded default.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The training pipeline: warm start, rejection fine-tuning, DAPO; held-out pass rate before and after each phase.
    Train(train::Args),
    /// The embedded tiny pipeline on the CPU: the model learns a demonstration, then writes it.
    Demo(demo::Args),
    /// Generate a completion for a prompt, and print it with tokens/s.
    Generate(generate::Args),
    /// Score token ids: write logits and next-token log-probs (the fixtures' layout).
    Score(score::Args),
    /// Print the token ids of a text as a JSON array.
    Tokenize(tokenize::Args),
    /// Run every GPU kernel against its CPU reference (on GPUs, or --sim).
    Selftest(selftest::Args),
    /// A snapshot of the node's GPUs through NVML (exit 3: no NVIDIA driver).
    Gpus(gpus::Args),
    /// Docker SWE environments: build the base image, list and validate tasks.
    Env(env::Args),
    /// Benchmark mode: tokens/s, utilization, memory and MFU per suite.
    Bench(bench::Args),
    /// Run a policy's episodes on a task set, appending trajectories to a JSONL file.
    Rollout(rollout::Args),
    /// Pass@1 (mean over k runs ± SEM) and Pass@k of a policy on a task set.
    Eval(eval::Args),
    /// Rejection fine-tuning on the solved trajectories of JSONL files; writes a model directory.
    Rft(rft::Args),
    /// Import public SWE-agent trajectories (nebius/SWE-agent-trajectories rows) as a trajectory file.
    Import(import::Args),
    /// An OpenAI-compatible HTTP server over the local engine (prints its address first).
    Serve(serve::Args),
    /// One self-contained HTML page with the training curves of a run directory.
    Report(report::Args),
    /// The GPU training step's memory plan (bytes per component) for a model, sequence length and batch.
    Plan(plan::Args),
}

/// An error that ends the program with a specific exit code.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

impl Exit {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Exit { code, message: message.into() }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // A closed stderr loses the log lines; by default the subscriber would
    // report each lost line with an `eprintln!`, which panics there.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).log_internal_errors(false).try_init();
}

/// The model directory a command uses: its `--model`, else the config's
/// `model.dir`; `None` means the embedded tiny model.
fn model_dir(config: &Config, arg: &Option<PathBuf>) -> Option<PathBuf> {
    arg.clone().or_else(|| config.model.dir.clone())
}

/// Apply the config's runtime settings to a loaded model.
fn apply_model_settings(config: &Config, model: &mut crate::model::Model) {
    model.vocab_chunk = config.model.vocab_chunk;
    model.recompute = config.model.recompute;
}

/// Parse the command line and run it.
pub fn run(cli: Cli) -> Result<()> {
    init_logging(cli.verbose);
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        None => train::run(&config, false, train::Args::default()),
        Some(Command::Train(a)) => train::run(&config, cli.config.is_some(), a),
        Some(Command::Demo(a)) => demo::run(&config, a),
        Some(Command::Generate(a)) => generate::run(&config, a),
        Some(Command::Score(a)) => score::run(&config, a),
        Some(Command::Tokenize(a)) => tokenize::run(a),
        Some(Command::Selftest(a)) => selftest::run(a),
        Some(Command::Gpus(a)) => gpus::run(a),
        Some(Command::Env(a)) => env::run(a),
        Some(Command::Bench(a)) => bench::run(a),
        Some(Command::Rollout(a)) => rollout::run(&config, a),
        Some(Command::Eval(a)) => eval::run(&config, a),
        Some(Command::Rft(a)) => rft::run(&config, a),
        Some(Command::Import(a)) => import::run(&config, a),
        Some(Command::Serve(a)) => serve::run(&config, a),
        Some(Command::Report(a)) => report::run(a),
        Some(Command::Plan(a)) => plan::run(&config, a),
    }
}

/// The binary's entry point: returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let r = run(cli);
    // an interrupted run exits from the signal reaper, once its containers are gone
    crate::env::sandbox::wait_for_signal_reaper();
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            e.downcast_ref::<Exit>().map(|x| x.code).unwrap_or(1)
        }
    }
}
