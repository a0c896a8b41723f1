//! `appliance serve`: the OpenAI-compatible server over the local engine,
//! until SIGINT or SIGTERM.
//!
//! Owns: the command's arguments (over the config's `[serve]` section), the
//! runtime, printing the bound address as the first line of stdout (scripts
//! and tests read it) and waiting for a signal. Does not own the server
//! itself (see `serve`).

use crate::config::Config;
use crate::engine::service::EngineService;
use crate::model::pretrained;
use crate::serve::{self, ServeOptions};
use crate::signals::Signals;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Read when `--api-key` is not given.
pub const API_KEY_ENV: &str = "APPLIANCE_API_KEY";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A Hugging Face model directory (default: the embedded tiny model).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// The address to listen on (default: the config's, 127.0.0.1).
    #[arg(long)]
    pub host: Option<String>,
    /// The port; 0 picks a free one (default: the config's, 8000).
    #[arg(long)]
    pub port: Option<u16>,
    /// Require `Authorization: Bearer KEY` on every /v1 route (default: the
    /// APPLIANCE_API_KEY environment variable; none when unset or empty).
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// The model name clients see (default: the model directory's name, or
    /// "tiny").
    #[arg(long, value_name = "NAME")]
    pub served_model_name: Option<String>,
}

pub fn run(config: &Config, a: Args) -> Result<()> {
    let dir = super::model_dir(config, &a.model);
    let mut p = pretrained::load(dir.as_deref(), config.model.init_seed)?;
    super::apply_model_settings(config, &mut p.model);
    let name = a.served_model_name.clone().unwrap_or_else(|| served_name(dir.as_deref()));
    let c = &config.serve;
    let opts = ServeOptions {
        host: a.host.clone().unwrap_or_else(|| c.host.clone()),
        port: a.port.unwrap_or(c.port),
        api_key: a.api_key.clone().or_else(|| std::env::var(API_KEY_ENV).ok()).filter(|k| !k.is_empty()),
        max_body_bytes: c.max_body_bytes,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let engine = EngineService::start(p.model, &name, c.queue, c.max_batch)?;
        let server = serve::bind(engine, p.tokenizer, opts).await?;
        // listening for signals before the address goes out: a client may
        // stop the server as soon as it reads it
        let mut signals = Signals::install();
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{}", server.addr())?;
        out.flush()?;
        drop(out);
        eprintln!("serving {name} ({}) at {}; Ctrl-C stops", p.origin, server.base_url());
        server
            .run_until(async move {
                signals.recv().await;
                eprintln!("shutting down");
            })
            .await
    })
}

/// The name clients see: the model directory's last component, or "tiny".
fn served_name(dir: Option<&Path>) -> String {
    dir.and_then(|d| d.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "tiny".into())
}
