//! `appliance rollout`: run episodes of a policy on a task set, in parallel,
//! appending one trajectory per line to a JSONL file. Also the shared
//! plumbing of `eval`: task loading, policy construction, the run itself.

use super::env::{load_tasks, TaskArgs};
use crate::agent::episode::Scaffold;
use crate::agent::policy::{LocalPolicy, Policy};
use crate::agent::rollout::{prepare_images, rollout, RolloutOptions, RolloutTotals};
use crate::agent::scripted::{check_scriptable, GoldPolicy, SubmitPolicy};
use crate::agent::trajectory::{read_trajectories, JsonlWriter, Trajectory};
use crate::config::Config;
use crate::engine::service::EngineService;
use crate::env::grade::GradeOptions;
use crate::env::pool::Pool;
use crate::env::{self, sandbox};
use crate::model::chat::ChatTemplate;
use crate::model::pretrained;
use crate::model::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    /// This project's engine, in process (`--model`, or the embedded tiny model).
    Local,
    /// An OpenAI-compatible server (`--endpoint`), such as vLLM, SGLang or `appliance serve`.
    Endpoint,
    /// Scripted from each task's gold patch, through the tools: checks a task set is solvable.
    Gold,
    /// Submits at once: the floor, which must score 0.
    Submit,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointMode {
    /// /v1/completions on the exact token ids (needs token ids back, as vLLM's return_tokens_as_token_ids).
    Completions,
    /// /v1/chat/completions on the text (replies are re-tokenized here; no sampling log-probs).
    Chat,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub tasks: TaskArgs,
    #[arg(long, value_enum, default_value = "local")]
    pub policy: PolicyKind,
    /// A Hugging Face model directory for the local policy; its tokenizer is
    /// used with every policy (default: the embedded tiny model).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// The model name to send to the endpoint (default: the first of its /v1/models).
    #[arg(long)]
    pub endpoint_model: Option<String>,
    #[arg(long, value_enum, default_value = "completions")]
    pub endpoint_mode: EndpointMode,
    /// Bearer token for the endpoint (or APPLIANCE_API_KEY).
    #[arg(long, env = "APPLIANCE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Samples per task.
    #[arg(long, default_value_t = 1)]
    pub samples: u32,
    /// Episodes at once (default: the config's rollout.concurrency).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Seed of the episodes' sampling (default: the config's rollout.seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Turn limit (default: the config's agent.max_turns).
    #[arg(long)]
    pub max_turns: Option<u32>,
    /// Context limit in tokens (default: the config's agent.max_context_tokens).
    #[arg(long)]
    pub max_context_tokens: Option<usize>,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub run: RunArgs,
    /// The trajectory file (JSON lines, appended; pairs already in it are skipped).
    #[arg(long, value_name = "FILE.jsonl")]
    pub out: PathBuf,
}

/// The policy a run uses.
pub fn build_policy(config: &Config, a: &RunArgs, tokenizer: &Tokenizer, model: Option<crate::model::Model>) -> Result<Arc<dyn Policy>> {
    let fence = config.agent.fence.clone();
    Ok(match a.policy {
        PolicyKind::Gold => Arc::new(GoldPolicy { fence }),
        PolicyKind::Submit => Arc::new(SubmitPolicy { fence }),
        PolicyKind::Local => {
            let model = model.context("the local policy needs a model")?;
            let name = a.model.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| "tiny".into());
            let engine = EngineService::start(model, &name, 256, config.rollout.concurrency.max(1))?;
            Arc::new(LocalPolicy { engine, tokenizer: tokenizer.clone(), params: config.generate.clone() })
        }
        PolicyKind::Endpoint => {
            let Some(url) = a.endpoint.clone() else { bail!("--policy endpoint needs --endpoint URL") };
            endpoint_policy(config, url, a.endpoint_model.clone(), a.endpoint_mode == EndpointMode::Chat, a.api_key.clone(), tokenizer)?
        }
    })
}

fn endpoint_policy(config: &Config, url: String, model: Option<String>, chat: bool, key: Option<String>, tok: &Tokenizer) -> Result<Arc<dyn Policy>> {
    let url = url.trim_end_matches('/').to_string();
    let model = match model {
        Some(m) => m,
        None => first_served_model(&url, key.as_deref()).with_context(|| format!("asking {url}/models which model it serves (or give --endpoint-model)"))?,
    };
    let mode = if chat { crate::agent::endpoint::EndpointMode::Chat } else { crate::agent::endpoint::EndpointMode::Completions };
    let mut cfg = crate::agent::endpoint::EndpointConfig::new(url, model, mode);
    cfg.api_key = key;
    cfg.params = config.generate.clone();
    Ok(Arc::new(crate::agent::endpoint::EndpointPolicy::new(cfg, tok.clone())?))
}

/// The id of the first model an OpenAI-compatible server lists.
fn first_served_model(url: &str, key: Option<&str>) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut req = reqwest::Client::new().get(format!("{url}/models")).timeout(Duration::from_secs(30));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.with_context(|| format!("the answer ({status}) is not JSON"))?;
        if !status.is_success() {
            bail!("{status}: {body}");
        }
        body["data"][0]["id"].as_str().map(str::to_string).ok_or_else(|| anyhow::anyhow!("no model listed in {body}"))
    })
}

/// Run `a`'s episodes, appending to `out` (skipping pairs it already holds);
/// returns every trajectory of the run's tasks in the file, old and new.
pub fn collect(config: &Config, a: &RunArgs, out: Option<&std::path::Path>) -> Result<(Vec<Trajectory>, Option<RolloutTotals>)> {
    let mut config = config.clone();
    if let Some(t) = a.max_turns {
        config.agent.max_turns = t;
    }
    if let Some(c) = a.max_context_tokens {
        config.agent.max_context_tokens = c;
    }
    if let Some(c) = a.concurrency {
        config.rollout.concurrency = c;
    }
    config.agent.validate()?;
    if a.samples == 0 {
        bail!("--samples must be at least 1");
    }
    let tasks = load_tasks(&a.tasks)?;
    if tasks.is_empty() {
        bail!("no tasks to run");
    }
    if a.policy == PolicyKind::Gold {
        check_scriptable(&tasks)?;
    }
    let dir = super::model_dir(&config, &a.model);
    let (tokenizer, model) = if a.policy == PolicyKind::Local {
        let mut p = pretrained::load(dir.as_deref(), config.model.init_seed)?;
        super::apply_model_settings(&config, &mut p.model);
        if config.agent.max_context_tokens > p.model.cfg.max_position_embeddings {
            eprintln!("note: agent.max_context_tokens {} is over the model's context {}; using the model's", config.agent.max_context_tokens, p.model.cfg.max_position_embeddings);
            config.agent.max_context_tokens = p.model.cfg.max_position_embeddings;
        }
        (p.tokenizer, Some(p.model))
    } else {
        let tok = match &dir {
            Some(d) => Tokenizer::from_file(d.join("tokenizer.json"))?,
            None => Tokenizer::tiny()?,
        };
        (tok, None)
    };
    let policy = build_policy(&config, a, &tokenizer, model)?;

    let mut done = HashSet::new();
    let mut old: Vec<Trajectory> = vec![];
    if let Some(p) = out.filter(|p| p.exists()) {
        let r = read_trajectories(p)?;
        if let Some(l) = r.torn_line {
            eprintln!("warning: {}: line {l} was cut short by an earlier crash; skipped, and that episode runs again", p.display());
        }
        let ids: HashSet<&str> = tasks.iter().map(|t| t.instance_id.as_str()).collect();
        for t in r.items {
            if ids.contains(t.instance_id.as_str()) && t.sample < a.samples {
                done.insert((t.instance_id.clone(), t.sample));
                old.push(t);
            }
        }
        if !done.is_empty() {
            eprintln!("{}: {} episodes already there; running the other {}", p.display(), done.len(), tasks.len() * a.samples as usize - done.len());
        }
    }
    let mut writer = match out {
        Some(p) => Some(JsonlWriter::open(p)?),
        None => None,
    };

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (new, totals) = rt.block_on(async {
        let d = env::connect().await?;
        let reaped = sandbox::reap_expired(&d).await?;
        if reaped > 0 {
            eprintln!("removed {reaped} expired containers");
        }
        let run_id = env::new_run_id("rollout");
        sandbox::spawn_signal_reaper(d.clone(), run_id.clone());
        let _guard = sandbox::RunGuard { run_id: run_id.clone() };
        let pool = Pool::new(d.clone(), config.rollout.concurrency, config.rollout.max_starts);
        let images = prepare_images(&pool, &tasks, a.tasks.image_template.as_deref(), true).await?;
        let tmpl = ChatTemplate::new(tokenizer.clone())?;
        let sc = Scaffold::new(config.agent.clone(), tmpl, GradeOptions { run_id: run_id.clone(), test_timeout: Duration::from_secs(config.rollout.test_timeout_s) })?;
        let opts = RolloutOptions { samples: a.samples, seed: a.seed.unwrap_or(config.rollout.seed), env_retries: config.rollout.env_retries, progress: true };
        let r = rollout(&pool, &sc, policy, &tasks, &images, &opts, config.rollout.concurrency, writer.as_mut(), &done).await;
        let _ = sandbox::reap_run(&d, &run_id).await;
        r
    })?;
    let mut all = old;
    all.extend(new);
    Ok((all, Some(totals)))
}

pub fn run(config: &Config, a: Args) -> Result<()> {
    let (all, totals) = collect(config, &a.run, Some(&a.out))?;
    if let Some(t) = totals {
        eprintln!("{}", t.line());
    }
    let solved = all.iter().filter(|t| t.solved()).count();
    let scored = all.iter().filter(|t| t.reward.is_some()).count();
    println!("{}: {} trajectories, {solved} of {scored} scored solved", a.out.display(), all.len());
    Ok(())
}
