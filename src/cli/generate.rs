//! `appliance generate`: one prompt in, the completion and tokens/s out.

use crate::config::Config;
use crate::engine::generate;
use crate::model::chat::{ChatTemplate, Message, Role};
use crate::model::pretrained;
use anyhow::Result;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A Hugging Face model directory (default: the embedded tiny model).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub prompt: String,
    /// Send the prompt as is, without the ChatML template.
    #[arg(long)]
    pub raw: bool,
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
}

pub fn run(config: &Config, a: Args) -> Result<()> {
    let mut p = pretrained::load(super::model_dir(config, &a.model).as_deref(), config.model.init_seed)?;
    super::apply_model_settings(config, &mut p.model);
    let mut params = config.generate.clone();
    if let Some(n) = a.max_new_tokens {
        params.max_new_tokens = n;
    }
    if let Some(t) = a.temperature {
        params.temperature = t;
    }
    if let Some(s) = a.seed {
        params.seed = s;
    }
    let prompt = if a.raw {
        p.tokenizer.encode(&a.prompt)?
    } else {
        let tmpl = ChatTemplate::new(p.tokenizer.clone())?;
        tmpl.render(&[Message { role: Role::User, content: a.prompt.clone() }], true)?.ids
    };
    let stop = p.tokenizer.stop_ids();
    let start = Instant::now();
    let out = generate(&mut p.model, &[prompt], &params, &stop, true)?;
    let secs = start.elapsed().as_secs_f64();
    let c = &out[0];
    let text = p.tokenizer.decode(&c.tokens)?;
    println!("{text}");
    eprintln!(
        "{} tokens in {:.2} s: {:.1} tokens/s (finish: {:?}, model: {})",
        c.tokens.len(),
        secs,
        c.tokens.len() as f64 / secs.max(1e-9),
        c.finish,
        p.origin
    );
    Ok(())
}
