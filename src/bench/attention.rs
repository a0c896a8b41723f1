//! The GPU rows of the `kernels` suite for the long-context kernels:
//! flash-attention forward and backward in TFLOP/s (FLOPs counted as
//! FlashAttention-2 counts them, halved for causal), each beside PyTorch's
//! scaled-dot-product attention at the same shape in the same run (a ratio
//! row), decode attention in GB/s of KV cache read, and the fused log-prob/
//! entropy loss's time and memory against materialized logits.
//!
//! Owns: the shapes and the rows. Does not own the kernels (backend::gpu)
//! or the PyTorch baseline's runner (`sdpa`).

use super::sdpa::{self, SdpaCase};
use super::{measure, Row};
use crate::backend::cpu::attention::AttnShape;
use crate::backend::cpu::gradcheck::random_vec;
use crate::backend::gpu;
use crate::device::{Device, DeviceExt, DevicePtr};
use anyhow::Result;

fn random_bf16(dev: &mut dyn Device, n: usize, seed: u64) -> Result<DevicePtr> {
    let bits: Vec<u16> = random_vec(n, seed).iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect();
    dev.upload_u16(&bits)
}

/// One attention shape of the suite.
struct AttnCase {
    lens: Vec<usize>,
    s: AttnShape,
    /// Also time the backward (the 128k case times the forward only).
    backward: bool,
}

fn cases() -> Vec<AttnCase> {
    let shape = |heads, kv_heads, head_dim| AttnShape { heads, kv_heads, head_dim };
    vec![
        // FlashAttention-2's benchmark shape: 16k tokens, hidden 2048.
        AttnCase { lens: vec![8192, 8192], s: shape(16, 16, 128), backward: true },
        AttnCase { lens: vec![8192, 8192], s: shape(32, 32, 64), backward: true },
        // Qwen2.5-7B's attention (28 query heads, 4 kv heads).
        AttnCase { lens: vec![8192, 8192], s: shape(28, 4, 128), backward: true },
        // One 131,072-token trajectory, the method's stage-2 context.
        AttnCase { lens: vec![131072], s: shape(28, 4, 128), backward: true },
    ]
}

fn label_of(c: &AttnCase) -> String {
    let lens = if c.lens.iter().all(|&l| l == c.lens[0]) { format!("{}x{}", c.lens.len(), c.lens[0]) } else { format!("{:?}", c.lens) };
    format!("{lens} h{}/{} d{}", c.s.heads, c.s.kv_heads, c.s.head_dim)
}

pub fn run_device(dev: &mut dyn Device, repeats: usize) -> Result<Vec<Row>> {
    let mut rows = vec![];
    let gpu_name = dev.name();
    let peak = crate::monitor::mfu::peak_tflops(&gpu_name);
    let with_mfu = |mut r: Row| {
        if let Some(p) = peak {
            r.mfu = Some(r.median / p);
        }
        r
    };
    let cases = cases();
    // (forward, backward) TFLOP/s of ours per case, for the ratio rows.
    let mut ours: Vec<(f64, Option<f64>)> = vec![];
    for c in &cases {
        let s = c.s;
        let total: usize = c.lens.iter().sum();
        let max_len = *c.lens.iter().max().unwrap_or(&0);
        let (qn, kvn) = (total * s.heads * s.head_dim, total * s.kv_heads * s.head_dim);
        let q = random_bf16(dev, qn, 1)?;
        let k = random_bf16(dev, kvn, 2)?;
        let v = random_bf16(dev, kvn, 3)?;
        let dout = random_bf16(dev, qn, 4)?;
        let (o, lse) = (dev.zeros(qn * 2)?, dev.zeros(total * s.heads * 4)?);
        let cu = dev.upload_u32(&gpu::flash_attn::cu_seqlens(&c.lens))?;
        let name = label_of(c);
        let fwd_flops = gpu::flash_attn::attn_fwd_flops(&c.lens, s);
        let f = measure("kernels", &format!("flash_attn_fwd causal {name} ({gpu_name})"), "TFLOP/s", repeats, false, false, || {
            gpu::flash_attn::flash_attn_fwd(dev, o, lse, q, k, v, cu, c.lens.len(), max_len, s, s.scale())?;
            dev.synchronize()?;
            Ok(fwd_flops / 1e12)
        })?;
        let fwd = f.median;
        rows.push(with_mfu(f));
        let mut bwd = None;
        if c.backward {
            let (dq, dk, dv) = (dev.zeros(qn * 4)?, dev.zeros(kvn * 4)?, dev.zeros(kvn * 4)?);
            let ws = dev.zeros(gpu::flash_attn_bwd::flash_attn_bwd_workspace_bytes(total, s))?;
            let bwd_flops = gpu::flash_attn_bwd::attn_bwd_flops(&c.lens, s);
            for deterministic in [false, true] {
                let mode = if deterministic { "deterministic" } else { "atomic dQ" };
                let r = measure("kernels", &format!("flash_attn_bwd causal {name} {mode} ({gpu_name})"), "TFLOP/s", repeats, false, false, || {
                    gpu::flash_attn_bwd::flash_attn_bwd(dev, dq, dk, dv, dout, q, k, v, o, lse, cu, c.lens.len(), total, max_len, s, s.scale(), deterministic, ws)?;
                    dev.synchronize()?;
                    Ok(bwd_flops / 1e12)
                })?;
                if !deterministic {
                    bwd = Some(r.median);
                }
                rows.push(with_mfu(r));
            }
            for p in [dq, dk, dv, ws] {
                dev.free(p)?;
            }
        }
        ours.push((fwd, bwd));
        for p in [q, k, v, dout, o, lse, cu] {
            dev.free(p)?;
        }
    }

    // The same shapes through PyTorch, in this run (equal-length batches only).
    let sdpa_cases: Vec<SdpaCase> = cases
        .iter()
        .map(|c| SdpaCase { batch: c.lens.len(), seqlen: c.lens[0], heads: c.s.heads, kv_heads: c.s.kv_heads, head_dim: c.s.head_dim, repeats: repeats.max(3) })
        .collect();
    match sdpa::time_cases(&sdpa_cases) {
        Ok(timings) => {
            for ((c, t), (fwd, bwd)) in cases.iter().zip(&timings).zip(&ours) {
                let name = label_of(c);
                let tf = gpu::flash_attn::attn_fwd_flops(&c.lens, c.s) / 1e12 / (t.fwd_ms / 1e3);
                rows.push(with_mfu(Row::derived("kernels", format!("torch {} sdpa fwd causal {name}", t.torch), tf, "TFLOP/s", repeats)));
                rows.push(Row::derived("kernels", format!("flash_attn_fwd / torch sdpa, {name}"), fwd / tf, "x", repeats));
                if let Some(b) = bwd {
                    let tb = gpu::flash_attn_bwd::attn_bwd_flops(&c.lens, c.s) / 1e12 / (t.bwd_ms / 1e3);
                    rows.push(with_mfu(Row::derived("kernels", format!("torch {} sdpa bwd causal {name}", t.torch), tb, "TFLOP/s", repeats)));
                    rows.push(Row::derived("kernels", format!("flash_attn_bwd (atomic dQ) / torch sdpa, {name}"), b / tb, "x", repeats));
                }
            }
        }
        Err(e) => eprintln!("kernels: no PyTorch baseline for attention: {e:#}"),
    }

    // Decode attention: one new token per sequence against long caches.
    for (batch, len) in [(8usize, 32768usize), (1, 131072)] {
        let s = AttnShape { heads: 28, kv_heads: 4, head_dim: 128 };
        let cap = len;
        let q = random_bf16(dev, batch * s.heads * s.head_dim, 5)?;
        let kc = random_bf16(dev, batch * cap * s.kv_heads * s.head_dim, 6)?;
        let vc = random_bf16(dev, batch * cap * s.kv_heads * s.head_dim, 7)?;
        let lengths = dev.upload_u32(&vec![len as u32; batch])?;
        let (o, lse) = (dev.zeros(batch * s.heads * s.head_dim * 4)?, dev.zeros(batch * s.heads * 4)?);
        let splits = gpu::decode_attn::decode_attn_splits(batch, 1, len, s, 132);
        let ws = dev.zeros(gpu::decode_attn::decode_attn_workspace_bytes(batch, 1, s, splits))?;
        let bytes = gpu::decode_attn::decode_attn_kv_bytes(&vec![len; batch], s) as f64;
        rows.push(measure("kernels", &format!("decode_attn {batch}x{len} keys h28/4 d128, {splits} splits ({gpu_name})"), "GB/s", repeats, false, false, || {
            gpu::decode_attn::decode_attn(dev, o, lse, q, kc, vc, lengths, batch, 1, cap, len, s, splits, ws)?;
            dev.synchronize()?;
            Ok(bytes / 1e9)
        })?);
        for p in [q, kc, vc, lengths, o, lse, ws] {
            dev.free(p)?;
        }
    }

    // The fused log-prob/entropy loss at Qwen2.5-7B's LM head.
    let (n, d, vocab) = (8192usize, 3584usize, 152064usize);
    let hidden = random_bf16(dev, n * d, 8)?;
    let w = random_bf16(dev, vocab * d, 9)?;
    let targets = dev.upload_u32(&(0..n).map(|i| ((i * 7919) % vocab) as u32).collect::<Vec<_>>())?;
    let out = gpu::logprob::LogprobOut { logprob: dev.zeros(n * 4)?, entropy: dev.zeros(n * 4)?, lse: dev.zeros(n * 4)? };
    let ws = dev.zeros(gpu::logprob::fwd_workspace_bytes(n, vocab))?;
    let x = gpu::logprob::HeadInputs { hidden, w, targets, n, d, vocab };
    let fwd_flops = gpu::logprob::fwd_flops(n, d, vocab);
    let r = measure("kernels", &format!("fused logprob+entropy fwd {n} tok d{d} vocab {vocab} ({gpu_name})"), "TFLOP/s", repeats, false, false, || {
        gpu::logprob::logprob_entropy_fwd(dev, &x, &out, ws)?;
        dev.synchronize()?;
        Ok(fwd_flops / 1e12)
    })?;
    let fwd_s = fwd_flops / 1e12 / r.median;
    rows.push(with_mfu(r));
    rows.push(Row::derived("kernels", format!("fused logprob+entropy fwd time, {n} tok"), fwd_s * 1e3, "ms", repeats));
    let g = gpu::logprob::LogprobGrads { dlogprob: dev.upload_f32(&random_vec(n, 10))?, dentropy: dev.upload_f32(&random_vec(n, 11))?, lse: out.lse, entropy: out.entropy };
    let (dh, dw) = (dev.zeros(n * d * 4)?, dev.zeros(vocab * d * 4)?);
    let grads = gpu::logprob::HeadGrads { dhidden: dh, dw, accumulate_dw: false };
    let bws = dev.zeros(gpu::logprob::bwd_workspace_bytes(n, d, vocab))?;
    let bwd_flops = gpu::logprob::bwd_flops(n, d, vocab);
    let r = measure("kernels", &format!("fused logprob+entropy bwd {n} tok d{d} vocab {vocab} ({gpu_name})"), "TFLOP/s", repeats, false, false, || {
        gpu::logprob::logprob_entropy_bwd(dev, &x, &g, grads, bws)?;
        dev.synchronize()?;
        Ok(bwd_flops / 1e12)
    })?;
    let bwd_s = bwd_flops / 1e12 / r.median;
    rows.push(with_mfu(r));
    rows.push(Row::derived("kernels", format!("fused logprob+entropy bwd time, {n} tok"), bwd_s * 1e3, "ms", repeats));
    // The chunked backward (what the GPU model runs): the same outputs,
    // the products on cuBLAS, one [rows, cols] block of logits at a time.
    // Its FLOPs: the logits once and two products, 3 GEMMs of 2·n·d·vocab.
    let shape = gpu::logprob::chunk_shape(n, vocab);
    let cws = dev.zeros(shape.workspace_bytes())?;
    let chunked_flops = 3.0 * fwd_flops;
    let r = measure("kernels", &format!("chunked logprob+entropy bwd {n} tok d{d} vocab {vocab}, blocks {}x{} ({gpu_name})", shape.rows, shape.cols), "TFLOP/s", repeats, false, false, || {
        gpu::logprob::logprob_entropy_bwd_chunked(dev, &x, &g, grads, cws)?;
        dev.synchronize()?;
        Ok(chunked_flops / 1e12)
    })?;
    let chunked_s = chunked_flops / 1e12 / r.median;
    rows.push(with_mfu(r));
    rows.push(Row::derived("kernels", format!("chunked logprob+entropy bwd time, {n} tok"), chunked_s * 1e3, "ms", repeats));
    rows.push(Row::derived("kernels", format!("chunked / fused bwd speed, {n} tok"), bwd_s / chunked_s, "x", repeats));
    dev.free(cws)?;
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    rows.push(Row::derived("kernels", format!("fused loss buffers, {n} tok vocab {vocab}"), gib(gpu::logprob::fused_loss_bytes(n, d, vocab)), "GiB", 1));
    rows.push(Row::derived("kernels", format!("materialized f32 logits, {n} tok vocab {vocab}"), gib(gpu::logprob::naive_logits_bytes(n, vocab)), "GiB", 1));
    for p in [hidden, w, targets, out.logprob, out.entropy, out.lse, ws, g.dlogprob, g.dentropy, dh, dw, bws] {
        dev.free(p)?;
    }
    Ok(rows)
}
