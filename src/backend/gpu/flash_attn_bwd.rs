//! Launchers for the flash-attention backward (cuda/flash_attn_bwd.cu):
//! dQ, dK, dV of packed variable-length causal GQA attention, recomputed from
//! the forward's saved log-sum-exp, plus its kernel-suite checks and a bench.
//!
//! Owns: the launch geometry of the three backward kernels, shape validation,
//! the workspace size (the f32 `D = rowsum(dO∘O)` buffer) and the choice
//! between the deterministic dQ (a separate kernel that owns query tiles, no
//! atomics, bit-reproducible) and the fast dQ (f32 atomics from the dK/dV
//! kernel). Does not own the math (the .cu file; its reference is
//! `cpu::attention::attention_bwd`) or device memory (callers allocate the
//! outputs and the workspace). Layouts are the issue-8 conventions: Q/O/dO
//! bf16 `[total, heads, hd]`, K/V bf16 `[total, kv_heads, hd]`, LSE f32
//! `[total, heads]`, `cu_seqlens` i32 `[batch+1]`, gradients f32.
//! Also the ring building block's backward, `attn_block_bwd` (same kernels'
//! tile bodies, one query block against one key/value block).

use super::checks::{bf16_bits, Case};
use crate::backend::cpu;
use crate::backend::cpu::attention::AttnShape;
use crate::backend::cpu::gradcheck::random_vec;
use crate::device::{Device, DeviceExt, DevicePtr, KernelArg::*, LaunchConfig};
use anyhow::{ensure, Context, Result};
use half::bf16;
use std::ops::Range;

/// Threads per CTA of every backward kernel (4 warps of 16 rows each).
const THREADS: u32 = 128;
/// Rows a dK/dV CTA owns (keys) and a dQ CTA owns (queries).
const TILE: usize = 64;

/// Bytes of device workspace `flash_attn_bwd` needs: `D` as f32 `[total, heads]`.
pub fn flash_attn_bwd_workspace_bytes(total: usize, s: AttnShape) -> usize {
    (total * s.heads * 4).max(4)
}

/// FLOPs of one backward as FlashAttention-2 counts them: 2.5 × the forward's
/// `4·L²·hd·heads` per sequence, halved for causal.
pub fn attn_bwd_flops(seq_lens: &[usize], s: AttnShape) -> f64 {
    seq_lens.iter().map(|&l| 2.5 * 4.0 * (l as f64).powi(2) * s.head_dim as f64 * s.heads as f64 / 2.0).sum()
}

fn validate(batch: usize, total: usize, max_seqlen: usize, s: AttnShape) -> Result<()> {
    super::flash_attn::check_shape(s, "flash_attn_bwd")?;
    ensure!(batch <= 65535, "flash_attn_bwd: batch {batch} exceeds the grid limit 65535");
    ensure!(batch > 0, "flash_attn_bwd: empty batch");
    ensure!(max_seqlen <= total, "flash_attn_bwd: max_seqlen {max_seqlen} exceeds total {total}");
    ensure!(total * s.heads * s.head_dim < i32::MAX as usize / 2, "flash_attn_bwd: {total} tokens x {} heads overflow the kernels' 32-bit row count", s.heads);
    Ok(())
}

/// dQ, dK, dV (f32, overwritten) of causal attention over the packed
/// sequences `cu_seqlens` (device i32 `[batch+1]`); `max_seqlen` must be at
/// least every sequence's length (the kernels trap otherwise); `scale` is the
/// forward's softmax scale (see `flash_attn::flash_attn_fwd`). `workspace`
/// holds `flash_attn_bwd_workspace_bytes(total, s)` bytes. `deterministic`
/// computes dQ in its own kernel without atomics (bit-reproducible); otherwise
/// dQ is accumulated with f32 atomics from the dK/dV kernel (faster, order
/// of additions varies run to run on a GPU).
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_bwd(
    dev: &mut dyn Device,
    dq: DevicePtr,
    dk: DevicePtr,
    dv: DevicePtr,
    dout: DevicePtr,
    q: DevicePtr,
    k: DevicePtr,
    v: DevicePtr,
    out: DevicePtr,
    lse: DevicePtr,
    cu_seqlens: DevicePtr,
    batch: usize,
    total: usize,
    max_seqlen: usize,
    s: AttnShape,
    scale: f32,
    deterministic: bool,
    workspace: DevicePtr,
) -> Result<()> {
    validate(batch, total, max_seqlen, s)?;
    if total == 0 || max_seqlen == 0 {
        return Ok(());
    }
    let hd = s.head_dim;
    let rows = total * s.heads;
    let warps = (THREADS / 32) as usize;
    dev.launch(
        "flash_attn_bwd_preprocess",
        LaunchConfig::linear(rows.div_ceil(warps) as u32, THREADS),
        &[Ptr(workspace), Ptr(if deterministic { DevicePtr(0) } else { dq }), Ptr(dout), Ptr(out), I32(rows as i32), I32(hd as i32)],
    )
    .context("flash_attn_bwd: preprocess (D = rowsum(dO*O))")?;
    let tiles = max_seqlen.div_ceil(TILE) as u32;
    let common = |dq_arg: DevicePtr| {
        [
            Ptr(dk),
            Ptr(dv),
            Ptr(dq_arg),
            Ptr(q),
            Ptr(k),
            Ptr(v),
            Ptr(dout),
            Ptr(lse),
            Ptr(workspace),
            Ptr(cu_seqlens),
            I32(s.heads as i32),
            I32(s.kv_heads as i32),
            F32(scale),
        ]
    };
    let dkdv = format!("flash_attn_bwd_dkdv_hd{hd}");
    let cfg = LaunchConfig { grid: (tiles, batch as u32, s.kv_heads as u32), block: (THREADS, 1, 1), shared_bytes: 0 };
    dev.launch(&dkdv, cfg, &common(if deterministic { DevicePtr(0) } else { dq })).with_context(|| format!("flash_attn_bwd: {dkdv}"))?;
    if deterministic {
        let name = format!("flash_attn_bwd_dq_hd{hd}");
        let cfg = LaunchConfig { grid: (tiles, batch as u32, s.heads as u32), block: (THREADS, 1, 1), shared_bytes: 0 };
        let args = common(DevicePtr(0));
        dev.launch(&name, cfg, &[&[Ptr(dq)][..], &args[3..]].concat()).with_context(|| format!("flash_attn_bwd: {name}"))?;
    }
    Ok(())
}

/// Backward of the ring building block: queries `q`/`dout` bf16 `[lq,
/// heads, hd]` at global positions `q_pos0..`, keys `k`/`v` bf16 `[lk,
/// kv_heads, hd]` at `k_pos0..`; with `causal`, key j is visible to query i
/// iff k_pos0+j <= q_pos0+i. `lse` and `delta` (f32 `[lq, heads]`) are the
/// FINAL ones of the whole attention (D = rowsum(dO∘O) of the merged output,
/// e.g. from `flash_attn_bwd_delta`). Writes (overwrites) this block's
/// partial dQ f32 `[lq, heads, hd]` and dK, dV f32 `[lk, kv_heads, hd]`; the
/// caller sums them over blocks (in fp32). `deterministic` as in `flash_attn_bwd`.
#[allow(clippy::too_many_arguments)]
pub fn attn_block_bwd(
    dev: &mut dyn Device,
    dq: DevicePtr,
    dk: DevicePtr,
    dv: DevicePtr,
    dout: DevicePtr,
    q: DevicePtr,
    k: DevicePtr,
    v: DevicePtr,
    lse: DevicePtr,
    delta: DevicePtr,
    lq: usize,
    lk: usize,
    q_pos0: usize,
    k_pos0: usize,
    causal: bool,
    s: AttnShape,
    deterministic: bool,
) -> Result<()> {
    validate(1, lq.max(lk), lq.max(lk), s).context("attn_block_bwd")?;
    let shift = q_pos0 as i64 - k_pos0 as i64;
    ensure!(shift.abs() < i32::MAX as i64 / 2, "attn_block_bwd: positions {q_pos0} and {k_pos0} are too far apart");
    let hd = s.head_dim;
    if !deterministic && lq > 0 {
        // Zero dQ for the atomics (preprocess with no D to compute).
        let rows = lq * s.heads;
        let null = DevicePtr(0);
        dev.launch(
            "flash_attn_bwd_preprocess",
            LaunchConfig::linear(rows.div_ceil((THREADS / 32) as usize) as u32, THREADS),
            &[Ptr(null), Ptr(dq), Ptr(null), Ptr(null), I32(rows as i32), I32(hd as i32)],
        )
        .context("attn_block_bwd: zeroing dQ")?;
    }
    let tail = [I32(lq as i32), I32(lk as i32), I32(shift as i32), I32(causal as i32), I32(s.heads as i32), I32(s.kv_heads as i32), F32(s.scale())];
    let ins = [Ptr(q), Ptr(k), Ptr(v), Ptr(dout), Ptr(lse), Ptr(delta)];
    let name = format!("attn_block_bwd_dkdv_hd{hd}");
    let cfg = LaunchConfig { grid: (lk.div_ceil(TILE).max(1) as u32, 1, s.kv_heads as u32), block: (THREADS, 1, 1), shared_bytes: 0 };
    let dq_arg = if deterministic { DevicePtr(0) } else { dq };
    dev.launch(&name, cfg, &[&[Ptr(dk), Ptr(dv), Ptr(dq_arg)][..], &ins[..], &tail[..]].concat()).with_context(|| format!("attn_block_bwd: {name}"))?;
    if deterministic {
        let name = format!("attn_block_bwd_dq_hd{hd}");
        let cfg = LaunchConfig { grid: (lq.div_ceil(TILE).max(1) as u32, 1, s.heads as u32), block: (THREADS, 1, 1), shared_bytes: 0 };
        dev.launch(&name, cfg, &[&[Ptr(dq)][..], &ins[..], &tail[..]].concat()).with_context(|| format!("attn_block_bwd: {name}"))?;
    }
    Ok(())
}

/// D = rowsum(dO∘O) f32 `[rows]` for `rows` rows of `head_dim` bf16 (rows =
/// tokens × heads), the input `attn_block_bwd` takes.
pub fn flash_attn_bwd_delta(dev: &mut dyn Device, delta: DevicePtr, dout: DevicePtr, out: DevicePtr, rows: usize, head_dim: usize) -> Result<()> {
    ensure!(rows < i32::MAX as usize, "flash_attn_bwd_delta: {rows} rows overflow i32");
    dev.launch(
        "flash_attn_bwd_preprocess",
        LaunchConfig::linear(rows.div_ceil((THREADS / 32) as usize).max(1) as u32, THREADS),
        &[Ptr(delta), Ptr(DevicePtr(0)), Ptr(dout), Ptr(out), I32(rows as i32), I32(head_dim as i32)],
    )
}

/// One ring-block check: device vs `cpu::attn_block_bwd::attn_block_bwd` on
/// the same bf16 inputs and the same (plausible) global LSE and D.
#[allow(clippy::too_many_arguments)]
fn block_error(dev: &mut dyn Device, lq: usize, lk: usize, q_pos0: usize, k_pos0: usize, causal: bool, s: AttnShape, deterministic: bool, seed: u64) -> Result<f64> {
    let (qn, kvn) = (lq * s.heads * s.head_dim, lk * s.kv_heads * s.head_dim);
    let q = rounded(random_vec(qn, seed).iter().map(|x| 3.0 * x).collect());
    let k = rounded(random_vec(kvn, seed + 1));
    let v = rounded(random_vec(kvn, seed + 2));
    let dout = rounded(random_vec(qn, seed + 3));
    let delta: Vec<f32> = random_vec(lq * s.heads, seed + 4).iter().map(|x| 0.3 * x).collect();
    // Global LSE: this block's own log-sum-exp plus as much mass again from
    // other blocks (ln 2); rows that see nothing here get ln 2 alone.
    let d = s.head_dim;
    let mut lse = vec![0.0f32; lq * s.heads];
    let mut o = vec![0.0f32; d];
    let mut scratch = vec![];
    for i in 0..lq {
        let end = if causal { (q_pos0 + i + 1).saturating_sub(k_pos0).min(lk) } else { lk };
        for h in 0..s.heads {
            let qr = &q[(i * s.heads + h) * d..(i * s.heads + h + 1) * d];
            let local = if end == 0 { f32::NEG_INFINITY } else { cpu::attention::attend_row(&mut o, qr, &k, &v, 0..end, h / s.group(), s, &mut scratch) };
            lse[i * s.heads + h] = if end == 0 { 2f32.ln() } else { local + 2f32.ln() };
        }
    }
    let (mut wq, mut wk, mut wv) = (vec![0.0; qn], vec![0.0; kvn], vec![0.0; kvn]);
    cpu::attn_block_bwd::attn_block_bwd(&mut wq, &mut wk, &mut wv, &dout, &q, &k, &v, &lse, &delta, q_pos0, k_pos0, causal, s);
    let ins: Vec<DevicePtr> = [&q, &k, &v, &dout].iter().map(|x| dev.upload_u16(&bf16_bits(x))).collect::<Result<_>>()?;
    let (li, di) = (dev.upload_f32(&lse)?, dev.upload_f32(&delta)?);
    let (dq, dk, dv) = (dev.upload_f32(&vec![7.0; qn])?, dev.upload_f32(&vec![7.0; kvn])?, dev.upload_f32(&vec![7.0; kvn])?);
    attn_block_bwd(dev, dq, dk, dv, ins[3], ins[0], ins[1], ins[2], li, di, lq, lk, q_pos0, k_pos0, causal, s, deterministic)?;
    let got = [dev.download_f32(dq, qn)?, dev.download_f32(dk, kvn)?, dev.download_f32(dv, kvn)?];
    for p in ins.into_iter().chain([li, di, dq, dk, dv]) {
        dev.free(p)?;
    }
    Ok(got.iter().zip([&wq, &wk, &wv]).map(|(g, w)| rel_max_err(g, w)).fold(0.0, f64::max))
}

/// Packed-sequence offsets `[0, l0, l0+l1, …]` and the ranges the CPU reference takes.
fn offsets(seq_lens: &[usize]) -> (Vec<u32>, Vec<Range<usize>>) {
    let mut cu = vec![0u32];
    let mut ranges = vec![];
    for &l in seq_lens {
        let a = *cu.last().unwrap() as usize;
        ranges.push(a..a + l);
        cu.push((a + l) as u32);
    }
    (cu, ranges)
}

fn rounded(v: Vec<f32>) -> Vec<f32> {
    v.into_iter().map(|x| bf16::from_f32(x).to_f32()).collect()
}

/// Test inputs on bf16 values: Q, K, V, dO, and O (rounded to bf16 as the GPU
/// forward stores it) and LSE from the CPU forward.
pub(crate) struct BwdInputs {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub dout: Vec<f32>,
    pub out: Vec<f32>,
    pub lse: Vec<f32>,
}

pub(crate) fn bwd_inputs(seq_lens: &[usize], s: AttnShape, seed: u64) -> BwdInputs {
    let total: usize = seq_lens.iter().sum();
    let (_, ranges) = offsets(seq_lens);
    // Q scaled so scores spread over a few units: peaked rows as well as flat ones.
    let q = rounded(random_vec(total * s.heads * s.head_dim, seed).iter().map(|x| 3.0 * x).collect());
    let k = rounded(random_vec(total * s.kv_heads * s.head_dim, seed + 1));
    let v = rounded(random_vec(total * s.kv_heads * s.head_dim, seed + 2));
    let dout = rounded(random_vec(total * s.heads * s.head_dim, seed + 3));
    let mut out = vec![0.0; q.len()];
    let mut lse = vec![0.0; total * s.heads];
    cpu::attention::attention_fwd(&mut out, &mut lse, &q, &k, &v, &ranges, s);
    BwdInputs { q, k, v, dout, out: rounded(out), lse }
}

/// max |got − want| / max |want|: relative to the gradient's own scale (no
/// floor at 1, so small gradients are not checked absolutely).
fn rel_max_err(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let scale = want.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64)).max(1e-30);
    let e = got.iter().zip(want).fold(0.0f64, |m, (&a, &b)| {
        let d = (a as f64 - b as f64).abs();
        if d.is_nan() { f64::INFINITY } else { m.max(d) }
    });
    e / scale
}

/// The three gradients from the device for `inp`, launched with the
/// offsets of `gpu_lens` (the test passes wrong ones to prove the check fails).
fn run_device(dev: &mut dyn Device, inp: &BwdInputs, gpu_lens: &[usize], s: AttnShape, deterministic: bool) -> Result<[Vec<f32>; 3]> {
    let total: usize = gpu_lens.iter().sum();
    let (cu, _) = offsets(gpu_lens);
    let max_seqlen = gpu_lens.iter().copied().max().unwrap_or(0);
    let (qn, kvn) = (total * s.heads * s.head_dim, total * s.kv_heads * s.head_dim);
    let mut bufs = vec![];
    let mut up16 = |dev: &mut dyn Device, x: &[f32]| -> Result<DevicePtr> {
        let p = dev.upload_u16(&bf16_bits(x))?;
        bufs.push(p);
        Ok(p)
    };
    let (q, k, v, dout, out) = (up16(dev, &inp.q)?, up16(dev, &inp.k)?, up16(dev, &inp.v)?, up16(dev, &inp.dout)?, up16(dev, &inp.out)?);
    let lse = dev.upload_f32(&inp.lse)?;
    let cu_d = dev.upload_u32(&cu)?;
    // Outputs start as garbage: the launcher must overwrite, not accumulate.
    let (dq, dk, dv) = (dev.upload_f32(&vec![7.0; qn])?, dev.upload_f32(&vec![7.0; kvn])?, dev.upload_f32(&vec![7.0; kvn])?);
    let ws = dev.zeros(flash_attn_bwd_workspace_bytes(total, s))?;
    flash_attn_bwd(dev, dq, dk, dv, dout, q, k, v, out, lse, cu_d, gpu_lens.len(), total, max_seqlen, s, s.scale(), deterministic, ws)?;
    let r = [dev.download_f32(dq, qn)?, dev.download_f32(dk, kvn)?, dev.download_f32(dv, kvn)?];
    for p in bufs.into_iter().chain([lse, cu_d, dq, dk, dv, ws]) {
        dev.free(p)?;
    }
    Ok(r)
}

fn reference(inp: &BwdInputs, seq_lens: &[usize], s: AttnShape) -> [Vec<f32>; 3] {
    let (_, ranges) = offsets(seq_lens);
    let (mut dq, mut dk, mut dv) = (vec![0.0; inp.q.len()], vec![0.0; inp.k.len()], vec![0.0; inp.v.len()]);
    cpu::attention::attention_bwd(&mut dq, &mut dk, &mut dv, &inp.dout, &inp.q, &inp.k, &inp.v, &inp.out, &inp.lse, &ranges, s);
    [dq, dk, dv]
}

/// Worst relative error over dQ, dK, dV of the device against the CPU.
fn bwd_error(dev: &mut dyn Device, seq_lens: &[usize], gpu_lens: &[usize], s: AttnShape, deterministic: bool, seed: u64) -> Result<f64> {
    let inp = bwd_inputs(seq_lens, s, seed);
    let got = run_device(dev, &inp, gpu_lens, s, deterministic)?;
    let want = reference(&inp, seq_lens, s);
    Ok(got.iter().zip(&want).map(|(g, w)| rel_max_err(g, w)).fold(0.0, f64::max))
}

/// Tolerance vs the f32 CPU reference on the same bf16 inputs. The kernels
/// round P and dS to bf16 (relative error ≤ 2⁻⁹ ≈ 2e-3 each) before the
/// dV/dK/dQ products; the rounding errors of the terms of a sum are
/// independent, but sums of signed terms cancel, so relative to the largest
/// gradient entry the error runs at about one 2⁻⁹ (measured on the simulated
/// device: 1.3e-3 to 2.5e-3 on the quick varlen shapes, 3.3e-3 on the ring
/// blocks). 1e-2 (3× the worst measured) leaves room for the longer sums of the big shapes without
/// hiding real bugs: a mask, index or layout error moves gradients by O(1)
/// relative (the packing test below sees > 10× the tolerance).
pub const BWD_TOL: f64 = 1e-2;

/// The kernel-suite cases of the backward (see checks.rs).
pub(super) fn cases(quick: bool) -> Vec<Case<'static>> {
    let sh = |heads, kv_heads, head_dim| AttnShape { heads, kv_heads, head_dim };
    // (lengths, shape): uneven packed batches with lengths that are not tile
    // multiples, GQA ratios 1, 2 and 7, head dims 64 and 128.
    let mut shapes: Vec<(Vec<usize>, AttnShape)> = vec![
        (vec![1, 37, 70], sh(2, 1, 64)),
        (vec![130], sh(1, 1, 64)),
        (vec![23, 9], sh(7, 1, 64)),
        (vec![1, 37, 70], sh(2, 2, 128)),
        (vec![45], sh(7, 1, 128)),
        (vec![64, 129, 3], sh(4, 2, 128)),
    ];
    if !quick {
        shapes.extend([
            (vec![2048], sh(14, 2, 64)),
            (vec![300, 1000, 2048, 700], sh(4, 2, 128)),
            (vec![8192], sh(7, 1, 128)),
            (vec![8192], sh(16, 16, 64)),
        ]);
    }
    let mut v = vec![];
    for (i, (lens, s)) in shapes.into_iter().enumerate() {
        for deterministic in [true, false] {
            let lens = lens.clone();
            let hd = s.head_dim;
            v.push(Case {
                // The deterministic run is the dQ kernel's check; the fast one the dK/dV kernel's.
                kernel: if deterministic {
                    if hd == 64 { "flash_attn_bwd_dq_hd64" } else { "flash_attn_bwd_dq_hd128" }
                } else if hd == 64 {
                    "flash_attn_bwd_dkdv_hd64"
                } else {
                    "flash_attn_bwd_dkdv_hd128"
                },
                shape: format!("lens={lens:?} heads={} kv_heads={} hd={hd} {}", s.heads, s.kv_heads, if deterministic { "deterministic" } else { "atomic dQ" }),
                tol: BWD_TOL,
                run: Box::new(move |dev| bwd_error(dev, &lens, &lens, s, deterministic, 100 + i as u64)),
            });
        }
    }
    // Deterministic mode: two runs agree bit for bit (count of differing values).
    for (lens, s) in [(vec![70usize, 37], sh(2, 1, 64))].into_iter().chain((!quick).then(|| (vec![4096usize, 1000], sh(8, 2, 128)))) {
        v.push(Case {
            kernel: if s.head_dim == 64 { "flash_attn_bwd_dq_hd64" } else { "flash_attn_bwd_dq_hd128" },
            shape: format!("lens={lens:?} heads={} kv_heads={} hd={} two runs bit-identical", s.heads, s.kv_heads, s.head_dim),
            tol: 0.0,
            run: Box::new(move |dev| {
                let inp = bwd_inputs(&lens, s, 7);
                let a = run_device(dev, &inp, &lens, s, true)?;
                let b = run_device(dev, &inp, &lens, s, true)?;
                Ok(a.iter().zip(&b).map(|(x, y)| x.iter().zip(y).filter(|(p, q)| p.to_bits() != q.to_bits()).count()).sum::<usize>() as f64)
            }),
        });
    }
    // Ring block: (lq, lk, q_pos0, k_pos0, causal, shape): a block crossing
    // the diagonal, one fully visible, one fully hidden, one non-causal.
    let mut blocks = vec![
        (70usize, 90usize, 40usize, 20usize, true, sh(2, 1, 64)),
        (37, 50, 200, 100, true, sh(7, 1, 64)),
        (33, 40, 0, 50, true, sh(2, 2, 128)),
        (45, 20, 0, 0, false, sh(4, 2, 128)),
    ];
    if !quick {
        blocks.extend([(2048, 2048, 2048, 0, true, sh(8, 1, 128)), (2048, 2048, 4096, 4096, true, sh(14, 2, 64))]);
    }
    for (i, (lq, lk, qp, kp, causal, s)) in blocks.into_iter().enumerate() {
        for deterministic in [true, false] {
            let hd = s.head_dim;
            v.push(Case {
                kernel: match (deterministic, hd) {
                    (true, 64) => "attn_block_bwd_dq_hd64",
                    (true, _) => "attn_block_bwd_dq_hd128",
                    (false, 64) => "attn_block_bwd_dkdv_hd64",
                    (false, _) => "attn_block_bwd_dkdv_hd128",
                },
                shape: format!(
                    "lq={lq}@{qp} lk={lk}@{kp} {} heads={} kv_heads={} hd={hd} {}",
                    if causal { "causal" } else { "full" },
                    s.heads,
                    s.kv_heads,
                    if deterministic { "deterministic" } else { "atomic dQ" }
                ),
                tol: BWD_TOL,
                run: Box::new(move |dev| block_error(dev, lq, lk, qp, kp, causal, s, deterministic, 300 + i as u64)),
            });
        }
    }
    // Preprocess alone: D = rowsum(dO∘O) and the zeroed dQ.
    for &(rows, hd) in [(5usize, 64usize), (37, 128)].iter().chain(if quick { &[][..] } else { &[(1usize << 16, 128usize)][..] }) {
        v.push(Case {
            kernel: "flash_attn_bwd_preprocess",
            shape: format!("rows={rows} hd={hd}"),
            tol: 1e-5,
            run: Box::new(move |dev| {
                let a = rounded(random_vec(rows * hd, 21));
                let o = rounded(random_vec(rows * hd, 22));
                let (ai, oi) = (dev.upload_u16(&bf16_bits(&a))?, dev.upload_u16(&bf16_bits(&o))?);
                let (d, dq) = (dev.zeros(rows * 4)?, dev.upload_f32(&vec![3.0; rows * hd])?);
                dev.launch(
                    "flash_attn_bwd_preprocess",
                    LaunchConfig::linear(rows.div_ceil(4) as u32, THREADS),
                    &[Ptr(d), Ptr(dq), Ptr(ai), Ptr(oi), I32(rows as i32), I32(hd as i32)],
                )?;
                let want: Vec<f32> = (0..rows).map(|r| (0..hd).map(|i| a[r * hd + i] as f64 * o[r * hd + i] as f64).sum::<f64>() as f32).collect();
                let got = dev.download_f32(d, rows)?;
                let nonzero = dev.download_f32(dq, rows * hd)?.iter().filter(|x| **x != 0.0).count();
                for p in [ai, oi, d, dq] {
                    dev.free(p)?;
                }
                let scale = want.iter().fold(1.0f64, |m, x| m.max(x.abs() as f64));
                Ok(got.iter().zip(&want).map(|(g, w)| (g - w).abs() as f64).fold(0.0, f64::max) / scale + nonzero as f64)
            }),
        });
    }
    v
}

/// Times `iters` backward passes on `dev` (inputs random, after one warm-up)
/// and returns (seconds per pass, TFLOP/s counted as FlashAttention-2 does,
/// `attn_bwd_flops`). For `appliance bench kernels` on a GPU.
pub fn bench_flash_attn_bwd(dev: &mut dyn Device, seq_lens: &[usize], s: AttnShape, deterministic: bool, iters: usize) -> Result<(f64, f64)> {
    let total: usize = seq_lens.iter().sum();
    let (cu, _) = offsets(seq_lens);
    let max_seqlen = seq_lens.iter().copied().max().unwrap_or(0);
    let (qn, kvn) = (total * s.heads * s.head_dim, total * s.kv_heads * s.head_dim);
    let bits = |n: usize, seed: u64| bf16_bits(&random_vec(n, seed));
    let (q, k, v) = (dev.upload_u16(&bits(qn, 1))?, dev.upload_u16(&bits(kvn, 2))?, dev.upload_u16(&bits(kvn, 3))?);
    let (dout, out) = (dev.upload_u16(&bits(qn, 4))?, dev.upload_u16(&bits(qn, 5))?);
    // A plausible LSE (ln of the row's key count) keeps exp() in range.
    let lse: Vec<f32> = seq_lens.iter().flat_map(|&l| (0..l).flat_map(move |t| std::iter::repeat_n(((t + 1) as f32).ln(), s.heads))).collect();
    let lse = dev.upload_f32(&lse)?;
    let cu_d = dev.upload_u32(&cu)?;
    let (dq, dk, dv) = (dev.zeros(qn * 4)?, dev.zeros(kvn * 4)?, dev.zeros(kvn * 4)?);
    let ws = dev.zeros(flash_attn_bwd_workspace_bytes(total, s))?;
    let run = |dev: &mut dyn Device| flash_attn_bwd(dev, dq, dk, dv, dout, q, k, v, out, lse, cu_d, seq_lens.len(), total, max_seqlen, s, s.scale(), deterministic, ws);
    run(dev)?;
    dev.synchronize()?;
    let t = std::time::Instant::now();
    for _ in 0..iters.max(1) {
        run(dev)?;
    }
    dev.synchronize()?;
    let secs = t.elapsed().as_secs_f64() / iters.max(1) as f64;
    for p in [q, k, v, dout, out, lse, cu_d, dq, dk, dv, ws] {
        dev.free(p)?;
    }
    Ok((secs, attn_bwd_flops(seq_lens, s) / secs / 1e12))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::sim::SimDevice;

    fn sh(heads: usize, kv_heads: usize, head_dim: usize) -> AttnShape {
        AttnShape { heads, kv_heads, head_dim }
    }

    #[test]
    fn flops_follow_flash_attention_2() {
        // 2.5 × 4·L²·hd·heads / 2 for causal.
        assert_eq!(attn_bwd_flops(&[1024], sh(2, 1, 64)), 2.5 * 4.0 * 1024.0 * 1024.0 * 64.0 * 2.0 / 2.0);
        assert_eq!(attn_bwd_flops(&[3, 5], sh(1, 1, 128)), attn_bwd_flops(&[3], sh(1, 1, 128)) + attn_bwd_flops(&[5], sh(1, 1, 128)));
    }

    #[test]
    fn bad_shapes_are_refused_before_launching() {
        let mut dev = SimDevice::new().unwrap();
        let p = DevicePtr(0);
        let mut call = |s: AttnShape, max_seqlen: usize| {
            flash_attn_bwd(&mut dev, p, p, p, p, p, p, p, p, p, p, 1, 10, max_seqlen, s, s.scale(), true, p).map(|_| ()).map_err(|e| format!("{e:#}"))
        };
        assert!(call(sh(2, 1, 96), 10).unwrap_err().contains("head_dim 96"));
        assert!(call(sh(3, 2, 64), 10).unwrap_err().contains("multiple of kv_heads"));
        assert!(call(sh(2, 1, 64), 11).unwrap_err().contains("max_seqlen"));
    }

    #[test]
    fn a_too_small_max_seqlen_fails_loudly() {
        let mut dev = SimDevice::new().unwrap();
        let s = sh(1, 1, 64);
        let inp = bwd_inputs(&[70], s, 3);
        // Launch claiming max_seqlen 64 for a 70-token sequence: the kernel traps.
        let total = 70;
        let up = |dev: &mut SimDevice, x: &[f32]| dev.upload_u16(&bf16_bits(x)).unwrap();
        let (q, k, v, dout, out) = (up(&mut dev, &inp.q), up(&mut dev, &inp.k), up(&mut dev, &inp.v), up(&mut dev, &inp.dout), up(&mut dev, &inp.out));
        let lse = dev.upload_f32(&inp.lse).unwrap();
        let cu = dev.upload_u32(&[0, 70]).unwrap();
        let (dq, dk, dv, ws) = (dev.zeros(total * 64 * 4).unwrap(), dev.zeros(total * 64 * 4).unwrap(), dev.zeros(total * 64 * 4).unwrap(), dev.zeros(total * 4).unwrap());
        let r = flash_attn_bwd(&mut dev, dq, dk, dv, dout, q, k, v, out, lse, cu, 1, total, 64, s, s.scale(), false, ws);
        assert!(r.is_err(), "a sequence longer than max_seqlen must not pass silently");
    }

    #[test]
    fn the_check_catches_a_wrong_packing() {
        // Launching with the two sequences merged into one lets the second
        // attend to the first: the suite's tolerance must reject it.
        let mut dev = SimDevice::new().unwrap();
        let s = sh(2, 1, 64);
        let right = bwd_error(&mut dev, &[20, 30], &[20, 30], s, true, 5).unwrap();
        let wrong = bwd_error(&mut dev, &[20, 30], &[50], s, true, 5).unwrap();
        assert!(right <= BWD_TOL, "right packing: {right}");
        assert!(wrong > 10.0 * BWD_TOL, "merged packing passed with error {wrong}");
    }
}
