//! `appliance import`: public SWE-agent trajectories (an export of
//! nebius/SWE-agent-trajectories) into a trajectory file.
//!
//! Owns the arguments and the printed summary; the conversion itself is
//! `agent::import`.

use crate::agent::command::CommandFormat;
use crate::agent::import::{self, ImportOptions};
use crate::agent::reward::LengthPenalty;
use crate::config::Config;
use crate::model::chat::ChatTemplate;
use crate::model::tokenizer::Tokenizer;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The dataset's rows as JSON lines or one JSON array (export parquet shards first).
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// The trajectory file to write (JSON lines); it must not exist yet.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// A model directory whose tokenizer.json tokenizes the conversations
    /// (default: the config's model.dir, else the embedded tiny tokenizer).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Keep only rows whose patch resolved the issue (for rejection fine-tuning).
    #[arg(long)]
    pub only_successful: bool,
    /// Skip rows that cannot be read or converted, and count them, instead of failing.
    #[arg(long)]
    pub skip_invalid: bool,
    /// The fence around the one command of a reply.
    #[arg(long, default_value = "```")]
    pub fence: String,
    /// Apply the method's length penalty to final_reward, as L_THR:T_MAX
    /// (e.g. 10:40); by default final_reward equals the reward.
    #[arg(long, value_name = "L_THR:T_MAX", value_parser = parse_length_penalty)]
    pub length_penalty: Option<LengthPenalty>,
}

fn parse_length_penalty(s: &str) -> Result<LengthPenalty, String> {
    let (a, b) = s.split_once(':').ok_or_else(|| format!("{s:?}: expected L_THR:T_MAX, e.g. 10:40"))?;
    let threshold = a.trim().parse::<u32>().map_err(|e| format!("L_THR {a:?}: {e}"))?;
    let max_turns = b.trim().parse::<u32>().map_err(|e| format!("T_MAX {b:?}: {e}"))?;
    if max_turns <= threshold {
        return Err(format!("T_MAX ({max_turns}) must be above L_THR ({threshold})"));
    }
    Ok(LengthPenalty { threshold, max_turns })
}

pub fn run(config: &Config, a: Args) -> Result<()> {
    let tokenizer = match super::model_dir(config, &a.model) {
        Some(dir) => Tokenizer::from_file(dir.join("tokenizer.json"))?,
        None => Tokenizer::tiny()?,
    };
    let tmpl = ChatTemplate::new(tokenizer)?;
    let opts = ImportOptions { format: CommandFormat { fence: a.fence }, only_successful: a.only_successful, skip_invalid: a.skip_invalid, length_penalty: a.length_penalty };
    let r = import::import(&a.from, &a.out, &tmpl, &opts)?;
    for e in &r.skipped_errors {
        eprintln!("skipped: {e}");
    }
    if r.skipped > r.skipped_errors.len() {
        eprintln!("skipped: … and {} more", r.skipped - r.skipped_errors.len());
    }
    let left_out = if a.only_successful { format!(", {} unsuccessful left out", r.unsuccessful_left_out) } else { String::new() };
    println!(
        "read {} rows from {}: wrote {} {} to {}; {} successful, {} invalid skipped{left_out}",
        r.rows,
        a.from.display(),
        r.written,
        if r.written == 1 { "trajectory" } else { "trajectories" },
        a.out.display(),
        r.successful,
        r.skipped
    );
    Ok(())
}
