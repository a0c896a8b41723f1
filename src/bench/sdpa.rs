//! The baseline for the attention rows of the `kernels` suite: PyTorch's
//! scaled-dot-product attention on the same GPU, in the same run, at the
//! same shapes, so each of our kernels is reported as a ratio against it.
//!
//! Owns: running the embedded script `sdpa_torch.py` with the machine's
//! `python3` and reading its timings. Does not own the FLOP count (the
//! launchers' `attn_*_flops`) or our kernels' timing (`kernels.rs`).
//! Where PyTorch with CUDA is missing, it says why and the suite goes on
//! without the ratios.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::process::{Command, Stdio};

const SCRIPT: &str = include_str!("sdpa_torch.py");

/// One causal attention shape: `batch` sequences of `seqlen` tokens.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SdpaCase {
    pub batch: usize,
    pub seqlen: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub repeats: usize,
}

/// PyTorch's times for one case, in milliseconds (median of the repeats).
#[derive(Clone, Debug, Deserialize)]
pub struct SdpaTiming {
    pub batch: usize,
    pub seqlen: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub fwd_ms: f64,
    pub bwd_ms: f64,
    pub torch: String,
}

/// Time every case with PyTorch. Err when python3, PyTorch or CUDA is
/// missing, with the reason.
pub fn time_cases(cases: &[SdpaCase]) -> Result<Vec<SdpaTiming>> {
    // The script goes in on stdin (`python3 - ARGS`): no temporary file.
    let arg = serde_json::to_string(cases)?;
    let mut child = Command::new("python3")
        .arg("-")
        .arg(&arg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running python3 (is it installed?)")?;
    child.stdin.take().context("python3's stdin")?.write_all(SCRIPT.as_bytes()).context("sending the script to python3")?;
    let out = child.wait_with_output().context("waiting for python3")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").to_string();
        bail!("the PyTorch baseline failed ({}): {last}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = vec![];
    for (i, line) in text.lines().filter(|l| l.trim_start().starts_with('{')).enumerate() {
        v.push(serde_json::from_str(line).with_context(|| format!("the PyTorch baseline's output, line {}: {line}", i + 1))?);
    }
    if v.len() != cases.len() {
        bail!("the PyTorch baseline timed {} of {} cases", v.len(), cases.len());
    }
    Ok(v)
}
