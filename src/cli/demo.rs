//! `appliance demo` (the no-argument default before `train` existed): the
//! embedded tiny pipeline on the CPU. The tiny model, random at first, is
//! fine-tuned on two short agent conversations with the loss only on the
//! assistant's tokens (the token ledger's mask), and then answers each issue
//! greedily. A newcomer sees the loss fall and the learned reply come back.
//! The no-argument default is now `train` (the whole RL pipeline).

use crate::config::Config;
use crate::engine::{generate, SamplingParams};
use crate::model::chat::{ChatTemplate, Message, Source};
use crate::model::pretrained;
use crate::train::optimizer::{AdamW, OptimConfig};
use crate::train::supervised::fit;
use anyhow::{anyhow, Result};
use indicatif::{ProgressBar, ProgressStyle};
use crate::monitor::metrics::{aggregate, warnings};
use crate::monitor::sampler::{Sampler, Source as SampleSource};
use crate::monitor::stream::{device_record, live_summary, MetricsStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const CONVERSATIONS: &str = include_str!("../../configs/tiny/demo_conversations.json");

#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// Training steps (default: the config's `demo.steps`).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Save the trained model here in the Hugging Face layout.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Write per-step metrics to DIR/metrics.jsonl.
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
}

fn parse_conversations() -> Result<Vec<Vec<Message>>> {
    serde_json::from_str(CONVERSATIONS)
        .map_err(|e| anyhow!("configs/tiny/demo_conversations.json:{}:{}: {e}", e.line(), e.column()))
}

pub fn run(config: &Config, a: Args) -> Result<()> {
    let d = &config.demo;
    let steps = a.steps.unwrap_or(d.steps);
    let mut p = pretrained::load(config.model.dir.as_deref(), config.model.init_seed)?;
    super::apply_model_settings(config, &mut p.model);
    let tmpl = ChatTemplate::new(p.tokenizer.clone())?;
    let convs = parse_conversations()?;

    // The ledger: ids with their sources; the loss is on predictions of
    // sampled (assistant) tokens only.
    let mut seqs = vec![];
    let mut weights = vec![];
    for c in &convs {
        let r = tmpl.render(c, false)?;
        let w: Vec<f32> = (0..r.ids.len())
            .map(|t| if t + 1 < r.ids.len() && r.source[t + 1] == Source::Sampled { 1.0 } else { 0.0 })
            .collect();
        seqs.push(r.ids);
        weights.push(w);
    }
    let trained_tokens: f32 = weights.iter().flatten().sum();
    println!(
        "appliance demo: {} ({} parameters), {} conversations, {} tokens, loss on {} assistant tokens",
        p.origin,
        p.model.cfg.num_params(),
        seqs.len(),
        seqs.iter().map(Vec::len).sum::<usize>(),
        trained_tokens
    );

    // The demo is supervised: the supervised phases' AdamW (the eps of
    // [rft], not DAPO's damped one), with the demo's lr and warmup.
    let optim = OptimConfig { lr: d.lr, warmup_steps: d.warmup_steps, ..config.rft.optim(&config.optim) };
    let mut opt = AdamW::new(optim, &p.model.cfg);
    let bar = ProgressBar::new(steps);
    bar.set_style(ProgressStyle::with_template("training [{bar:30}] {pos}/{len} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    let start = Instant::now();
    let tokens_per_step: usize = seqs.iter().map(Vec::len).sum();
    let sampler = Sampler::start(Duration::from_millis(config.monitor.interval_ms.max(10)));
    let mut stream = a.run_dir.as_deref().map(MetricsStream::open).transpose()?;
    let mut stream_err = None;
    let mut last = Instant::now();
    let stats = fit(&mut p.model, &mut opt, &seqs, &weights, steps, |step, s| {
        let live = live_summary(&sampler.latest(), sampler.source);
        bar.set_message(format!("loss {:.4} | {live}", s.loss));
        bar.inc(1);
        if step % 10 == 0 || step + 1 == steps {
            bar.println(format!("step {:>4}  loss {:.4}  grad_norm {:.3}  lr {:.2e}", step, s.loss, s.grad_norm, s.lr));
        }
        let window = sampler.take();
        for w in warnings(&window, sampler.source == SampleSource::Gpus, config.monitor.low_util_pct) {
            tracing::warn!("{w}");
        }
        let secs = last.elapsed().as_secs_f64();
        last = Instant::now();
        if let Some(st) = stream.as_mut() {
            let record = serde_json::json!({
                "phase": "demo_sft", "step": step, "loss": s.loss, "grad_norm": s.grad_norm, "lr": s.lr,
                "tokens": s.tokens, "train_tokens_per_s": s.tokens as f64 / secs.max(1e-9),
                "device": device_record(&aggregate(&window), sampler.source),
            });
            if let Err(e) = st.write(&record) {
                stream_err.get_or_insert(e);
            }
        }
    })?;
    drop(sampler);
    if let Some(e) = stream_err {
        return Err(e);
    }
    bar.finish_and_clear();
    let train_secs = start.elapsed().as_secs_f64();
    let first = stats.first().map(|s| s.loss).unwrap_or(f64::NAN);
    let last = stats.last().map(|s| s.loss).unwrap_or(f64::NAN);
    println!(
        "trained {steps} steps in {train_secs:.1} s ({:.0} tokens/s forward+backward): loss {first:.3} -> {last:.3}",
        (tokens_per_step as f64 * steps as f64) / train_secs.max(1e-9)
    );

    // Ask each issue again and let the model answer greedily.
    let params = SamplingParams { temperature: 0.0, max_new_tokens: 64, ..config.generate.clone() };
    let stop = p.tokenizer.stop_ids();
    let mut matched = 0;
    let gen_start = Instant::now();
    let mut gen_tokens = 0;
    for c in &convs {
        let prompt = tmpl.render(&c[..c.len() - 1], true)?.ids;
        let out = generate(&mut p.model, &[prompt], &params, &stop, false)?;
        gen_tokens += out[0].tokens.len();
        let reply = p.tokenizer.decode(&out[0].tokens)?;
        let reply = reply.trim_end_matches("<|im_end|>");
        let want = &c[c.len() - 1].content;
        let ok = reply == want;
        matched += ok as usize;
        println!("\n> {}\n{}\n[{}]", c[1].content, reply, if ok { "learned reply" } else { "differs from the demonstration" });
    }
    println!(
        "\n{matched}/{} replies reproduced; generation {:.0} tokens/s",
        convs.len(),
        gen_tokens as f64 / gen_start.elapsed().as_secs_f64().max(1e-9)
    );
    if let Some(out) = &a.out {
        pretrained::save(&p, out)?;
        println!("saved the model to {}", out.display());
    }
    Ok(())
}
