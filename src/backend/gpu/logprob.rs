//! Launchers of the fused log-prob/entropy kernels (cuda/logprob.cu): the
//! per-token log-prob of the target and the entropy of the next-token
//! distribution, straight from the final hidden states and the LM head,
//! forward and backward, never holding the `[n × vocab]` logits.
//!
//! Owns: the launch geometry (64-row × 64-vocabulary tiles, 128 threads),
//! the chunked backward's blocks and GEMM sequence, the vocabulary split of
//! the forward and its workspace size, shape and
//! alignment validation, the memory and FLOP accounting the benchmark
//! reports, and the kernel-suite cases. Does not own the math's reference
//! (`backend::cpu::logprob`, which these kernels must equal) or device
//! memory (callers allocate outputs and the workspace).
//!
//! Layouts: hidden bf16 `[n, d]`, weight bf16 `[vocab, d]` (the LM head in
//! the nn.Linear layout, also the tied embedding), targets i32 `[n]`;
//! logprob, entropy, lse f32 `[n]`; gradients f32 (`dhidden [n, d]`,
//! `dw [vocab, d]`). `d` must be a multiple of 8 and hidden/weight 16-byte
//! aligned. A target outside `[0, vocab)` gives a NaN log-prob.
//!
//! Precision: logits are exact bf16 products accumulated in f32; the
//! statistics are f32. In the backward g = ∂L/∂z is rounded to bf16 before
//! the tensor-core products (2^-9 relative per element), so dhidden and dw
//! agree with the f32 CPU backward to about 1e-3 of their largest element.
//!
//! Timing (for `bench kernels`): [`fwd_flops`] and [`bwd_flops`] count the
//! tensor-core work per launch (the backward recomputes the logits once in
//! each of its two kernels); [`fused_loss_bytes`] vs [`naive_logits_bytes`]
//! is the memory saving. Time `logprob_entropy_fwd` and `logprob_entropy_bwd`
//! at n 4096, d 3584, vocab 152064 (Qwen2.5-7B) after one warm-up launch.
//! Measured on an H200 at that shape (driver-API harness, same PTX): forward
//! 36 ms (124 TFLOP/s), dhidden 215 ms and dw 188 ms (42 and 48 TFLOP/s
//! counting the recomputation); torch's materialized bf16 logits plus an
//! f32 log-sum-exp took 11.5 ms and 2.3 GiB. Results matched an f32 torch
//! reference (log-prob 2e-6, entropy 1e-5, gradients 2e-3 of their largest
//! element) and were bit-identical on a repeat.
//!
//! Two backwards, the same g and the same outputs. The self-contained
//! kernels (`logprob_entropy_bwd`) recompute and multiply in one pass, but
//! read-modify-write their f32 outputs per 128-deep slice: 46 TFLOP/s, 840
//! ms at 8192 tokens of the 7B head on an H200. The chunked backward
//! (`logprob_entropy_bwd_chunked`, what the GPU model runs) hands the three
//! products to cuBLAS, block by block (`[rows, cols]` of f32 logits and
//! bf16 g, at most 256 MiB, never `[n, vocab]`), with one elementwise kernel
//! (`logprob_entropy_grad_chunk`) between them. `bench kernels` times both
//! in the same run and reports their ratio.

use super::checks::{bf16_bits, rel_err, Case};
use crate::backend::cpu;
use crate::backend::cpu::gradcheck::random_vec;
use crate::device::{Device, DeviceExt, DevicePtr, Dtype, Gemm, KernelArg::*, LaunchConfig};
use anyhow::{ensure, Context, Result};
use half::bf16;

/// Rows per CTA tile.
pub const ROW_TILE: usize = 64;
/// Vocabulary entries per tile.
pub const VOCAB_TILE: usize = 64;
const THREADS: u32 = 128;
/// CTAs the forward aims for (about two waves of an H100's 132 SMs), so
/// that a few row tiles still fill the GPU by splitting the vocabulary.
const TARGET_CTAS: usize = 264;

/// Where the forward writes its three per-token outputs (f32 `[n]` each).
#[derive(Clone, Copy, Debug)]
pub struct LogprobOut {
    pub logprob: DevicePtr,
    pub entropy: DevicePtr,
    pub lse: DevicePtr,
}

/// What every kernel here reads: the final hidden states bf16 `[n, d]`,
/// the LM head bf16 `[vocab, d]` and the targets i32 `[n]`.
#[derive(Clone, Copy, Debug)]
pub struct HeadInputs {
    pub hidden: DevicePtr,
    pub w: DevicePtr,
    pub targets: DevicePtr,
    pub n: usize,
    pub d: usize,
    pub vocab: usize,
}

impl HeadInputs {
    /// The shape and alignment every kernel here requires; `what` names the caller.
    fn check(&self, what: &str) -> Result<()> {
        let HeadInputs { hidden, w, n, d, vocab, .. } = *self;
        ensure!(d > 0 && d % 8 == 0, "{what}: hidden size {d} must be a positive multiple of 8");
        ensure!(vocab > 0, "{what}: the vocabulary is empty");
        for (name, v) in [("n", n), ("d", d), ("vocab", vocab)] {
            ensure!(v <= i32::MAX as usize, "{what}: {name} = {v} does not fit the kernel's i32");
        }
        ensure!(hidden.0 % 16 == 0 && w.0 % 16 == 0, "{what}: hidden ({:#x}) and weight ({:#x}) must be 16-byte aligned", hidden.0, w.0);
        Ok(())
    }
}

/// Where a whole backward writes: `dhidden` f32 `[n, d]` (overwritten) and
/// `dw` f32 `[vocab, d]` (added to when `accumulate_dw`: tied embeddings).
#[derive(Clone, Copy, Debug)]
pub struct HeadGrads {
    pub dhidden: DevicePtr,
    pub dw: DevicePtr,
    pub accumulate_dw: bool,
}

/// Vocabulary tiles per split of the forward for `splits` requested splits.
fn tiles_per_split(vocab: usize, splits: usize) -> usize {
    vocab.div_ceil(VOCAB_TILE).div_ceil(splits.max(1)).max(1)
}

/// Vocabulary tiles per split of the dhidden kernel, which takes the tiles
/// in pairs: even.
fn bwd_tiles_per_split(vocab: usize, splits: usize) -> usize {
    tiles_per_split(vocab, splits).next_multiple_of(2)
}

/// Splits wanted so that the row tiles times the splits reach TARGET_CTAS.
fn wanted_splits(n: usize, vocab: usize) -> usize {
    TARGET_CTAS.div_ceil(n.div_ceil(ROW_TILE).max(1)).clamp(1, vocab.div_ceil(VOCAB_TILE).max(1))
}

/// The forward's vocabulary splits at this shape (no empty split).
pub fn fwd_splits(n: usize, vocab: usize) -> usize {
    vocab.div_ceil(VOCAB_TILE).div_ceil(tiles_per_split(vocab, wanted_splits(n, vocab)))
}

/// Workspace bytes of [`logprob_entropy_fwd`]: one 16-byte record per
/// (split, row).
pub fn fwd_workspace_bytes(n: usize, vocab: usize) -> usize {
    fwd_splits(n, vocab) * n * 16
}

/// Workspace bytes that serve [`logprob_entropy_fwd`] at every `n <= cap`:
/// the splits grow as the rows shrink, so a workspace sized for `cap` rows
/// can be too small for fewer (a caller that allocates once for a capacity
/// must use this). The splits depend on `n` only through its row tiles, so
/// the largest `n` of each tile count is the one to check.
pub fn fwd_workspace_bytes_upto(cap: usize, vocab: usize) -> usize {
    max_over_row_tiles(cap, |n| fwd_workspace_bytes(n, vocab))
}

/// [`bwd_workspace_bytes`] for every `n <= cap`; see [`fwd_workspace_bytes_upto`].
pub fn bwd_workspace_bytes_upto(cap: usize, d: usize, vocab: usize) -> usize {
    max_over_row_tiles(cap, |n| bwd_workspace_bytes(n, d, vocab))
}

/// The largest `bytes(n)` over the largest `n <= cap` of each row-tile count.
fn max_over_row_tiles(cap: usize, bytes: impl Fn(usize) -> usize) -> usize {
    (1..=cap.div_ceil(ROW_TILE)).map(|r| bytes((r * ROW_TILE).min(cap))).max().unwrap_or(0)
}

/// Device memory the fused loss needs beyond its inputs and the gradients:
/// the three per-token outputs and one workspace shared by the forward and
/// the backward (never live together), with either backward.
pub fn fused_loss_bytes(n: usize, d: usize, vocab: usize) -> usize {
    3 * n * 4 + fwd_workspace_bytes(n, vocab).max(bwd_workspace_bytes(n, d, vocab)).max(bwd_chunked_workspace_bytes(n, vocab))
}

/// What materializing f32 logits would take (their gradient as much again).
pub fn naive_logits_bytes(n: usize, vocab: usize) -> usize {
    n * vocab * 4
}

/// Tensor-core FLOPs of one forward: the logits GEMM.
pub fn fwd_flops(n: usize, d: usize, vocab: usize) -> f64 {
    2.0 * n as f64 * d as f64 * vocab as f64
}

/// Tensor-core FLOPs of one backward (both kernels): each recomputes the
/// logits and does one product, 4 GEMMs of 2·n·d·vocab.
pub fn bwd_flops(n: usize, d: usize, vocab: usize) -> f64 {
    4.0 * fwd_flops(n, d, vocab)
}

/// Per-token log-prob, entropy and log-sum-exp. `workspace` holds at least
/// [`fwd_workspace_bytes`]`(n, vocab)` bytes.
pub fn logprob_entropy_fwd(dev: &mut dyn Device, x: &HeadInputs, out: &LogprobOut, workspace: DevicePtr) -> Result<()> {
    logprob_entropy_fwd_splits(dev, x, out, workspace, fwd_splits(x.n, x.vocab))
}

/// [`logprob_entropy_fwd`] with an explicit vocabulary split (clamped to
/// the tile count); `workspace` holds `splits · n · 16` bytes. For tests
/// and tuning.
pub fn logprob_entropy_fwd_splits(dev: &mut dyn Device, x: &HeadInputs, out: &LogprobOut, workspace: DevicePtr, splits: usize) -> Result<()> {
    x.check("logprob_entropy_fwd")?;
    let HeadInputs { hidden, w, targets, n, d, vocab } = *x;
    if n == 0 {
        return Ok(());
    }
    let tps = tiles_per_split(vocab, splits);
    let splits = vocab.div_ceil(VOCAB_TILE).div_ceil(tps);
    ensure!(splits * n <= i32::MAX as usize, "logprob_entropy_fwd: {splits} splits × {n} rows overflow the workspace index");
    let cfg = LaunchConfig { grid: (n.div_ceil(ROW_TILE) as u32, splits as u32, 1), block: (THREADS, 1, 1), shared_bytes: 0 };
    dev.launch(
        "logprob_entropy_fwd",
        cfg,
        &[Ptr(workspace), Ptr(hidden), Ptr(w), Ptr(targets), I32(n as i32), I32(d as i32), I32(vocab as i32), I32(tps as i32)],
    )
    .context("logprob_entropy_fwd")?;
    dev.launch(
        "logprob_entropy_combine",
        LaunchConfig::linear(n.div_ceil(256) as u32, 256),
        &[Ptr(out.logprob), Ptr(out.entropy), Ptr(out.lse), Ptr(workspace), Ptr(targets), I32(n as i32), I32(vocab as i32), I32(splits as i32)],
    )
    .context("logprob_entropy_combine")
}

/// The saved forward values and incoming gradients the backward reads
/// (all f32 `[n]`).
#[derive(Clone, Copy, Debug)]
pub struct LogprobGrads {
    pub dlogprob: DevicePtr,
    pub dentropy: DevicePtr,
    pub lse: DevicePtr,
    pub entropy: DevicePtr,
}

fn bwd_args(x: &HeadInputs, g: &LogprobGrads) -> Vec<crate::device::KernelArg> {
    vec![
        Ptr(x.hidden),
        Ptr(x.w),
        Ptr(x.targets),
        Ptr(g.dlogprob),
        Ptr(g.dentropy),
        Ptr(g.lse),
        Ptr(g.entropy),
        I32(x.n as i32),
        I32(x.d as i32),
        I32(x.vocab as i32),
    ]
}

/// Vocabulary splits of the dhidden kernel (as the forward's, so that few
/// row tiles still fill the GPU; an even number of tiles each).
pub fn bwd_splits(n: usize, vocab: usize) -> usize {
    vocab.div_ceil(VOCAB_TILE).div_ceil(bwd_tiles_per_split(vocab, wanted_splits(n, vocab)))
}

/// Workspace bytes of [`logprob_entropy_bwd_dhidden`]: one f32 `[n, d]`
/// partial per vocabulary split after the first (0 at long inputs).
pub fn bwd_workspace_bytes(n: usize, d: usize, vocab: usize) -> usize {
    (bwd_splits(n, vocab) - 1) * n * d * 4
}

/// `dhidden [n, d] = g · W` (overwritten), g = ∂L/∂logits recomputed tile
/// by tile. `workspace` holds [`bwd_workspace_bytes`]`(n, d, vocab)`.
pub fn logprob_entropy_bwd_dhidden(dev: &mut dyn Device, x: &HeadInputs, g: &LogprobGrads, dhidden: DevicePtr, workspace: DevicePtr) -> Result<()> {
    logprob_entropy_bwd_dhidden_splits(dev, x, g, dhidden, workspace, bwd_splits(x.n, x.vocab))
}

/// [`logprob_entropy_bwd_dhidden`] with an explicit vocabulary split
/// (fewer when the tile count, rounded to pairs, asks for fewer);
/// `workspace` holds `(splits − 1) · n · d · 4` bytes. For tests and tuning.
pub fn logprob_entropy_bwd_dhidden_splits(dev: &mut dyn Device, x: &HeadInputs, g: &LogprobGrads, dhidden: DevicePtr, workspace: DevicePtr, splits: usize) -> Result<()> {
    x.check("logprob_entropy_bwd_dhidden")?;
    let HeadInputs { n, d, vocab, .. } = *x;
    ensure!(dhidden.0 % 8 == 0 && workspace.0 % 8 == 0, "logprob_entropy_bwd_dhidden: dhidden and the workspace must be 8-byte aligned");
    if n == 0 {
        return Ok(());
    }
    let tps = bwd_tiles_per_split(vocab, splits);
    let splits = vocab.div_ceil(VOCAB_TILE).div_ceil(tps);
    let cfg = LaunchConfig { grid: (n.div_ceil(ROW_TILE) as u32, splits as u32, 1), block: (THREADS, 1, 1), shared_bytes: 0 };
    let mut args = vec![Ptr(dhidden), Ptr(workspace)];
    args.extend_from_slice(&bwd_args(x, g));
    args.push(I32(tps as i32));
    dev.launch("logprob_entropy_bwd_dhidden", cfg, &args).context("logprob_entropy_bwd_dhidden")?;
    if splits > 1 {
        let count = n * d;
        dev.launch(
            "logprob_entropy_dhidden_reduce",
            LaunchConfig::linear(count.div_ceil(256).clamp(1, 4096) as u32, 256),
            &[Ptr(dhidden), Ptr(workspace), I64(count as i64), I32(splits as i32 - 1)],
        )
        .context("logprob_entropy_dhidden_reduce")?;
    }
    Ok(())
}

/// `dw [vocab, d] (+)= gᵀ · H`; `accumulate` adds into dw (tied embeddings),
/// otherwise dw is overwritten (zeros when n = 0).
pub fn logprob_entropy_bwd_dw(dev: &mut dyn Device, x: &HeadInputs, g: &LogprobGrads, dw: DevicePtr, accumulate: bool) -> Result<()> {
    x.check("logprob_entropy_bwd_dw")?;
    ensure!(dw.0 % 8 == 0, "logprob_entropy_bwd_dw: dw must be 8-byte aligned");
    let cfg = LaunchConfig { grid: (x.vocab.div_ceil(VOCAB_TILE) as u32, 1, 1), block: (THREADS, 1, 1), shared_bytes: 0 };
    let mut args = vec![Ptr(dw)];
    args.extend_from_slice(&bwd_args(x, g));
    args.push(I32(accumulate as i32));
    dev.launch("logprob_entropy_bwd_dw", cfg, &args).context("logprob_entropy_bwd_dw")
}

/// The whole backward: dhidden (overwritten) and dw (added to when
/// `accumulate_dw`). `workspace`: [`bwd_workspace_bytes`]`(n, d, vocab)`.
pub fn logprob_entropy_bwd(dev: &mut dyn Device, x: &HeadInputs, g: &LogprobGrads, out: HeadGrads, workspace: DevicePtr) -> Result<()> {
    logprob_entropy_bwd_dhidden(dev, x, g, out.dhidden, workspace)?;
    logprob_entropy_bwd_dw(dev, x, g, out.dw, out.accumulate_dw)
}

// --------------------------------------------------------------------------
// The chunked backward: cuBLAS products over blocks of the logits
// --------------------------------------------------------------------------

/// The most bytes one block of the chunked backward holds: its logits in
/// f32 and its g in bf16, 6 bytes per (row, vocabulary entry).
pub const CHUNK_BUDGET_BYTES: usize = 256 << 20;
/// Blocks are at most this many rows (a multiple of 64): the f32 dhidden
/// rows are read and written once per vocabulary chunk, and dw's chunk once
/// per row block, so square blocks (√(budget / 6) ≈ 6,688) keep both
/// streams small at long inputs. At 131,072 tokens and the 7B head: 20 row
/// blocks × 23 chunks, about 170 GB of f32 traffic, against 430 TFLOP of
/// products.
pub const CHUNK_MAX_ROWS: usize = 6656;

/// One block of the chunked backward: `rows` tokens × `cols` vocabulary
/// entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkShape {
    pub rows: usize,
    pub cols: usize,
}

impl ChunkShape {
    /// Workspace bytes: the f32 logits, then (16-byte aligned) the bf16 g.
    pub fn workspace_bytes(&self) -> usize {
        (self.rows * self.cols * 4).next_multiple_of(16) + self.rows * self.cols * 2
    }
}

/// The block the chunked backward uses at (n, vocab): all rows up to
/// [`CHUNK_MAX_ROWS`], then as many vocabulary entries (a multiple of 64,
/// at least 64) as [`CHUNK_BUDGET_BYTES`] allows, at most the vocabulary.
pub fn chunk_shape(n: usize, vocab: usize) -> ChunkShape {
    let rows = n.clamp(1, CHUNK_MAX_ROWS);
    let cols = (CHUNK_BUDGET_BYTES / (6 * rows) / VOCAB_TILE * VOCAB_TILE).max(VOCAB_TILE).min(vocab.max(1));
    ChunkShape { rows, cols }
}

/// Workspace bytes of [`logprob_entropy_bwd_chunked`] at (n, vocab).
pub fn bwd_chunked_workspace_bytes(n: usize, vocab: usize) -> usize {
    chunk_shape(n, vocab).workspace_bytes()
}

/// [`bwd_chunked_workspace_bytes`] for every `n <= cap` (the block's area
/// is not monotone in `n`: its columns are rounded down to tiles).
pub fn bwd_chunked_workspace_bytes_upto(cap: usize, vocab: usize) -> usize {
    (1..=cap.clamp(1, CHUNK_MAX_ROWS)).map(|n| bwd_chunked_workspace_bytes(n, vocab)).max().unwrap_or(0)
}

/// Launches of the elementwise kernel: a thread per column, the grid's y
/// over (at most this many) rows.
const GRAD_CHUNK_THREADS: u32 = 256;
const GRAD_CHUNK_MAX_GRID_Y: usize = 1024;

/// The backward through cuBLAS, block by block: for each block of rows and
/// chunk of the vocabulary, z = H·W_chunkᵀ (bf16 in, f32 out), g = ∂L/∂z
/// (`logprob_entropy_grad_chunk`, rounded to bf16), dhidden (+)= g·W_chunk
/// and dw_chunk (+)= gᵀ·H, all f32-accumulated. The same g and the same
/// outputs as [`logprob_entropy_bwd`] (dhidden overwritten, dw added to when
/// `accumulate_dw`), with the products on the GEMM library instead of the
/// self-contained kernels' read-modify-write per 128-deep slice. It writes
/// one `[rows, cols]` block, never `[n, vocab]`. Fixed order everywhere:
/// results are bit-identical run to run on one device. `workspace` holds
/// [`bwd_chunked_workspace_bytes`]`(n, vocab)`.
pub fn logprob_entropy_bwd_chunked(dev: &mut dyn Device, x: &HeadInputs, g: &LogprobGrads, out: HeadGrads, workspace: DevicePtr) -> Result<()> {
    logprob_entropy_bwd_chunked_with(dev, x, g, out, workspace, chunk_shape(x.n, x.vocab))
}

/// [`logprob_entropy_bwd_chunked`] with an explicit block; `workspace`
/// holds `shape.workspace_bytes()`. For tests and tuning.
pub fn logprob_entropy_bwd_chunked_with(dev: &mut dyn Device, x: &HeadInputs, g: &LogprobGrads, out: HeadGrads, workspace: DevicePtr, shape: ChunkShape) -> Result<()> {
    const WHAT: &str = "logprob_entropy_bwd_chunked";
    x.check(WHAT)?;
    let (HeadInputs { hidden, w, targets, n, d, vocab }, HeadGrads { dhidden, dw, accumulate_dw }) = (*x, out);
    ensure!(shape.rows > 0 && shape.cols > 0, "{WHAT}: an empty block {shape:?}");
    ensure!(dhidden.0 % 4 == 0 && dw.0 % 4 == 0 && workspace.0 % 16 == 0, "{WHAT}: dhidden and dw must be 4-byte and the workspace 16-byte aligned");
    if n == 0 {
        if !accumulate_dw {
            dev.memset_zero(dw, vocab * d * 4)?;
        }
        return Ok(());
    }
    let (z, gb) = (workspace, workspace.offset((shape.rows * shape.cols * 4).next_multiple_of(16)));
    for r0 in (0..n).step_by(shape.rows) {
        let rows = shape.rows.min(n - r0);
        let (h_blk, dh_blk) = (hidden.offset(r0 * d * 2), dhidden.offset(r0 * d * 4));
        for v0 in (0..vocab).step_by(shape.cols) {
            let cols = shape.cols.min(vocab - v0);
            let (w_chunk, dw_chunk) = (w.offset(v0 * d * 2), dw.offset(v0 * d * 4));
            let at = || format!("{WHAT}: rows {r0}..{}, vocabulary {v0}..{}", r0 + rows, v0 + cols);
            dev.gemm(&Gemm::new(rows, cols, d).trans_b(true).types(Dtype::Bf16, Dtype::F32), z, h_blk, w_chunk).with_context(|| format!("{}: the logits", at()))?;
            let cfg = LaunchConfig { grid: (cols.div_ceil(GRAD_CHUNK_THREADS as usize) as u32, rows.min(GRAD_CHUNK_MAX_GRID_Y) as u32, 1), block: (GRAD_CHUNK_THREADS, 1, 1), shared_bytes: 0 };
            dev.launch(
                "logprob_entropy_grad_chunk",
                cfg,
                &[Ptr(gb), Ptr(z), Ptr(targets), Ptr(g.dlogprob), Ptr(g.dentropy), Ptr(g.lse), Ptr(g.entropy), I32(rows as i32), I32(cols as i32), I32(r0 as i32), I32(v0 as i32)],
            )
            .with_context(|| format!("{}: g", at()))?;
            let beta_h = if v0 == 0 { 0.0 } else { 1.0 };
            dev.gemm(&Gemm::new(rows, d, cols).types(Dtype::Bf16, Dtype::F32).scale(1.0, beta_h), dh_blk, gb, w_chunk).with_context(|| format!("{}: dhidden", at()))?;
            let beta_w = if r0 == 0 && !accumulate_dw { 0.0 } else { 1.0 };
            dev.gemm(&Gemm::new(cols, d, rows).trans_a(true).types(Dtype::Bf16, Dtype::F32).scale(1.0, beta_w), dw_chunk, gb, h_blk).with_context(|| format!("{}: dw", at()))?;
        }
    }
    Ok(())
}

// --------------------------------------------------------------------------
// Kernel-suite cases
// --------------------------------------------------------------------------

/// Max |got − want| / max |want| (no floor: gradients are small numbers).
fn scaled_err(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let scale = want.iter().fold(f64::MIN_POSITIVE, |m, &v| m.max(v.abs() as f64));
    got.iter().zip(want).fold(0.0f64, |m, (&a, &b)| {
        let e = (a as f64 - b as f64).abs();
        if e.is_nan() { f64::INFINITY } else { m.max(e) }
    }) / scale
}

fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

/// Test inputs: bf16-representable hidden `[n, d]` and weight `[vocab, d]`
/// scaled so the logits have a spread of a few units (neither one-hot nor
/// uniform softmaxes), targets covering the first and last vocabulary entry.
pub(crate) fn test_inputs(n: usize, d: usize, vocab: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<u32>) {
    let h: Vec<f32> = random_vec(n * d, seed).iter().map(|x| 2.0 * x).collect();
    let s = 3.0 / (d as f32).sqrt();
    let w: Vec<f32> = random_vec(vocab * d, seed + 1).iter().map(|x| s * x).collect();
    let t = (0..n)
        .map(|i| match i % 5 {
            0 => vocab - 1,
            1 => 0,
            _ => (i * 7919 + 13) % vocab,
        } as u32)
        .collect();
    (round_bf16(&h), round_bf16(&w), t)
}

struct Uploaded {
    h: DevicePtr,
    w: DevicePtr,
    t: DevicePtr,
}

fn upload(dev: &mut dyn Device, h: &[f32], w: &[f32], t: &[u32]) -> Result<Uploaded> {
    Ok(Uploaded { h: dev.upload_u16(&bf16_bits(h))?, w: dev.upload_u16(&bf16_bits(w))?, t: dev.upload_u32(t)? })
}

impl Uploaded {
    fn inputs(&self, n: usize, d: usize, vocab: usize) -> HeadInputs {
        HeadInputs { hidden: self.h, w: self.w, targets: self.t, n, d, vocab }
    }
}

fn free_all(dev: &mut dyn Device, ptrs: &[DevicePtr]) -> Result<()> {
    for &p in ptrs {
        dev.free(p)?;
    }
    Ok(())
}

/// Runs the forward on the device; returns (logprob, entropy, lse).
pub(crate) fn run_fwd(dev: &mut dyn Device, h: &[f32], w: &[f32], t: &[u32], d: usize, vocab: usize, splits: Option<usize>) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let n = t.len();
    let u = upload(dev, h, w, t)?;
    let splits = splits.unwrap_or_else(|| fwd_splits(n, vocab));
    let ws = dev.alloc((splits * n * 16).max(16))?;
    let out = LogprobOut { logprob: dev.zeros(n * 4)?, entropy: dev.zeros(n * 4)?, lse: dev.zeros(n * 4)? };
    logprob_entropy_fwd_splits(dev, &u.inputs(n, d, vocab), &out, ws, splits)?;
    let r = (dev.download_f32(out.logprob, n)?, dev.download_f32(out.entropy, n)?, dev.download_f32(out.lse, n)?);
    free_all(dev, &[u.h, u.w, u.t, ws, out.logprob, out.entropy, out.lse])?;
    Ok(r)
}

fn fwd_err(got: &(Vec<f32>, Vec<f32>, Vec<f32>), want: &cpu::logprob::TokenLogprobs) -> f64 {
    rel_err(&got.0, &want.logprob).max(rel_err(&got.1, &want.entropy)).max(rel_err(&got.2, &want.lse))
}

/// Which backward kernel a case runs.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Bwd {
    /// dhidden with a vocabulary split override.
    DHidden(Option<usize>),
    /// dw, starting from `init` when accumulating.
    Dw { accumulate: bool },
    /// The chunked backward (dhidden and dw) with an explicit block.
    Chunked { rows: usize, cols: usize, accumulate: bool },
}

/// The CPU backward with g rounded to bf16 exactly where the kernel rounds
/// it: the tight reference that separates kernel bugs from bf16 rounding.
#[allow(clippy::too_many_arguments)]
fn bwd_bf16_g_reference(fwd: &cpu::logprob::TokenLogprobs, gl: &[f32], ge: &[f32], h: &[f32], w: &[f32], t: &[u32], d: usize, vocab: usize) -> (Vec<f32>, Vec<f32>) {
    let n = t.len();
    let z = cpu::logprob::logits_full(h, w, n, d, vocab);
    let mut g = vec![0.0f32; n * vocab];
    for r in 0..n {
        let (lse, ez) = (fwd.lse[r], fwd.lse[r] - fwd.entropy[r]);
        for v in 0..vocab {
            let zv = z[r * vocab + v];
            let p = (zv - lse).exp();
            let onehot = if v == t[r] as usize { 1.0 } else { 0.0 };
            g[r * vocab + v] = bf16::from_f32(gl[r] * (onehot - p) - ge[r] * p * (zv - ez)).to_f32();
        }
    }
    let (mut dh, mut dw) = (vec![0.0; n * d], vec![0.0; vocab * d]);
    cpu::matmul::matmul(&mut dh, &g, w, n, vocab, d, false, false, false);
    cpu::matmul::matmul(&mut dw, &g, h, vocab, n, d, true, false, false);
    (dh, dw)
}

/// One backward kernel on the device against cpu::logprob::logprob_entropy_bwd
/// (returned, judged by the case's tolerance) and against the bf16-g
/// reference (must agree to `tight`, or the case fails with an error).
fn bwd_case(dev: &mut dyn Device, which: Bwd, n: usize, d: usize, vocab: usize, tight: f64) -> Result<f64> {
    let (h, w, t) = test_inputs(n, d, vocab, 40 + n as u64);
    let fwd = cpu::logprob::logprob_entropy_fwd(&h, &w, &t, d, vocab, 256);
    let gl = random_vec(n, 50);
    let ge: Vec<f32> = random_vec(n, 51).iter().map(|x| 0.5 * x).collect();
    let (mut dh, mut dw) = (vec![0.0; n * d], vec![0.0; vocab * d]);
    let init: Vec<f32> = random_vec(vocab * d, 52);
    let accumulating = matches!(which, Bwd::Dw { accumulate: true } | Bwd::Chunked { accumulate: true, .. });
    if accumulating {
        dw.clone_from(&init);
    }
    cpu::logprob::logprob_entropy_bwd(&mut dh, &mut dw, &gl, &ge, &fwd, &h, &w, &t, d, vocab, 256);
    let (mut th, mut tw) = bwd_bf16_g_reference(&fwd, &gl, &ge, &h, &w, &t, d, vocab);
    if accumulating {
        tw.iter_mut().zip(&init).for_each(|(a, b)| *a += b);
    }
    let u = upload(dev, &h, &w, &t)?;
    let g = LogprobGrads { dlogprob: dev.upload_f32(&gl)?, dentropy: dev.upload_f32(&ge)?, lse: dev.upload_f32(&fwd.lse)?, entropy: dev.upload_f32(&fwd.entropy)? };
    let (got, want, want_tight) = match which {
        Bwd::DHidden(splits) => {
            // Garbage in the output: the kernel must overwrite it.
            let out = dev.upload_f32(&random_vec(n * d, 53))?;
            let splits = splits.unwrap_or_else(|| bwd_splits(n, vocab));
            let ws = dev.alloc((splits.saturating_sub(1) * n * d * 4).max(16))?;
            logprob_entropy_bwd_dhidden_splits(dev, &u.inputs(n, d, vocab), &g, out, ws, splits)?;
            let got = dev.download_f32(out, n * d)?;
            free_all(dev, &[out, ws])?;
            (got, std::mem::take(&mut dh), std::mem::take(&mut th))
        }
        Bwd::Dw { accumulate } => {
            let out = dev.upload_f32(&if accumulate { init.clone() } else { random_vec(vocab * d, 54) })?;
            logprob_entropy_bwd_dw(dev, &u.inputs(n, d, vocab), &g, out, accumulate)?;
            let got = dev.download_f32(out, vocab * d)?;
            dev.free(out)?;
            (got, std::mem::take(&mut dw), std::mem::take(&mut tw))
        }
        Bwd::Chunked { rows, cols, accumulate } => {
            // dhidden starts as garbage (overwritten), dw as `init` or garbage.
            let oh = dev.upload_f32(&random_vec(n * d, 53))?;
            let ow = dev.upload_f32(&if accumulate { init.clone() } else { random_vec(vocab * d, 54) })?;
            let shape = ChunkShape { rows, cols };
            let ws = dev.alloc(shape.workspace_bytes())?;
            let x = u.inputs(n, d, vocab);
            logprob_entropy_bwd_chunked_with(dev, &x, &g, HeadGrads { dhidden: oh, dw: ow, accumulate_dw: accumulate }, ws, shape)?;
            let (got, got_w) = (dev.download_f32(oh, n * d)?, dev.download_f32(ow, vocab * d)?);
            // A second run gives the same bits (fixed order, no atomics).
            logprob_entropy_bwd_chunked_with(dev, &x, &g, HeadGrads { dhidden: oh, dw: ow, accumulate_dw: false }, ws, shape)?;
            let again = dev.download_f32(oh, n * d)?;
            ensure!(got.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()), "two chunked runs differ bitwise in dhidden");
            free_all(dev, &[oh, ow, ws])?;
            // Judge dhidden and dw on their own scales: the larger error.
            let (e_h, e_w) = (scaled_err(&got, &dh), scaled_err(&got_w, &dw));
            let (t_h, t_w) = (scaled_err(&got, &th), scaled_err(&got_w, &tw));
            ensure!(t_h.max(t_w) <= tight, "{which:?}: dhidden {t_h:e}, dw {t_w:e} from the bf16-g reference (allowed {tight:e})");
            free_all(dev, &[u.h, u.w, u.t, g.dlogprob, g.dentropy, g.lse, g.entropy])?;
            return Ok(e_h.max(e_w));
        }
    };
    free_all(dev, &[u.h, u.w, u.t, g.dlogprob, g.dentropy, g.lse, g.entropy])?;
    let e_tight = scaled_err(&got, &want_tight);
    ensure!(e_tight <= tight, "{which:?}: {e_tight:e} from the bf16-g reference (allowed {tight:e})");
    Ok(scaled_err(&got, &want))
}

/// The suite's cases for the fused log-prob kernels. Quick shapes cover
/// rows that are not tile multiples (1, 37, 130), d 64 and 128, vocabularies
/// of 512 and 1000 (not a tile multiple), one, several and uneven splits.
pub(super) fn cases(quick: bool) -> Vec<Case<'static>> {
    let mut v: Vec<Case<'static>> = vec![];
    // Forward: (n, d, vocab, splits override).
    let mut fwd: Vec<(usize, usize, usize, Option<usize>)> = vec![(1, 64, 512, None), (37, 128, 1000, None), (130, 64, 1000, Some(1)), (130, 128, 512, None)];
    if !quick {
        fwd.extend([(4096, 3584, 152064, None), (1000, 896, 151936, None)]);
    }
    for (n, d, vocab, splits) in fwd {
        let big = n * vocab * d > 1 << 28;
        v.push(Case {
            kernel: "logprob_entropy_fwd",
            shape: format!("n={n} d={d} vocab={vocab} splits={}", splits.unwrap_or_else(|| fwd_splits(n, vocab))),
            // f32 statistics over the vocabulary, against the f32 CPU chunked path.
            tol: if big { 1e-4 } else { 2e-5 },
            run: Box::new(move |dev| {
                let (h, w, t) = test_inputs(n, d, vocab, n as u64);
                let want = cpu::logprob::logprob_entropy_fwd(&h, &w, &t, d, vocab, 4096);
                Ok(fwd_err(&run_fwd(dev, &h, &w, &t, d, vocab, splits)?, &want))
            }),
        });
    }
    // The split merge: uneven splits (16 tiles in 3 splits of 6, 6, 4), and
    // a vocabulary smaller than one tile; bit-identical on a repeat.
    for (n, d, vocab, splits) in [(70usize, 64usize, 1000usize, 3usize), (5, 64, 40, 4)] {
        v.push(Case {
            kernel: "logprob_entropy_combine",
            shape: format!("n={n} d={d} vocab={vocab} splits={splits} (+ bitwise repeat)"),
            tol: 2e-5,
            run: Box::new(move |dev| {
                let (h, w, t) = test_inputs(n, d, vocab, 7);
                let want = cpu::logprob::logprob_entropy_fwd(&h, &w, &t, d, vocab, 64);
                let a = run_fwd(dev, &h, &w, &t, d, vocab, Some(splits))?;
                let b = run_fwd(dev, &h, &w, &t, d, vocab, Some(splits))?;
                let same = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
                ensure!(same(&a.0, &b.0) && same(&a.1, &b.1) && same(&a.2, &b.2), "two forward runs differ bitwise");
                Ok(fwd_err(&a, &want))
            }),
        });
    }
    // Backward. bf16 g: about 2^-9 relative per element of g; against the
    // f32 CPU backward the largest element's error stays under 1e-2 of the
    // largest element (observed a few 1e-3); against the bf16-g reference
    // only f32 summation order and the exp approximation differ.
    let mut bwd: Vec<(Bwd, usize, usize, usize)> = vec![
        (Bwd::DHidden(None), 37, 64, 1000),
        (Bwd::DHidden(Some(1)), 130, 128, 512),
        (Bwd::DHidden(Some(3)), 70, 64, 1000),
        (Bwd::DHidden(Some(2)), 1, 128, 136),
        (Bwd::Dw { accumulate: false }, 37, 128, 1000),
        (Bwd::Dw { accumulate: false }, 130, 64, 512),
        (Bwd::Dw { accumulate: true }, 1, 64, 512),
    ];
    // The chunked backward: several row blocks and vocabulary chunks, each
    // with an uneven last one (130 rows in blocks of 48; 1000 entries in
    // chunks of 192), a block of the whole input, and one row.
    bwd.extend([
        (Bwd::Chunked { rows: 48, cols: 192, accumulate: false }, 130, 64, 1000),
        (Bwd::Chunked { rows: 48, cols: 192, accumulate: true }, 130, 128, 1000),
        (Bwd::Chunked { rows: 37, cols: 512, accumulate: false }, 37, 128, 512),
        (Bwd::Chunked { rows: 1, cols: 64, accumulate: true }, 1, 64, 136),
    ]);
    if !quick {
        bwd.extend([(Bwd::DHidden(None), 256, 3584, 152064), (Bwd::Dw { accumulate: true }, 256, 3584, 152064)]);
        bwd.push((Bwd::Chunked { rows: 128, cols: 40960, accumulate: true }, 256, 3584, 152064));
    }
    for (which, n, d, vocab) in bwd {
        let big = n * vocab * d > 1 << 28;
        v.push(Case {
            // The split dhidden case also covers the reduce of its partials.
            kernel: match which {
                Bwd::DHidden(Some(3)) => "logprob_entropy_dhidden_reduce",
                Bwd::DHidden(_) => "logprob_entropy_bwd_dhidden",
                Bwd::Dw { .. } => "logprob_entropy_bwd_dw",
                Bwd::Chunked { .. } => "logprob_entropy_grad_chunk",
            },
            shape: match which {
                Bwd::DHidden(s) => format!("n={n} d={d} vocab={vocab} splits={}", s.unwrap_or_else(|| bwd_splits(n, vocab))),
                Bwd::Dw { accumulate } => format!("n={n} d={d} vocab={vocab}{}", if accumulate { " accumulate" } else { "" }),
                Bwd::Chunked { rows, cols, accumulate } => {
                    format!("chunked backward n={n} d={d} vocab={vocab} blocks {rows}x{cols}{} (+ bitwise repeat)", if accumulate { " accumulate" } else { "" })
                }
            },
            tol: 1e-2,
            run: Box::new(move |dev| bwd_case(dev, which, n, d, vocab, if big { 1e-3 } else { 2e-4 })),
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::sim::SimDevice;

    #[test]
    fn bad_shapes_are_clear_errors() {
        let mut dev = SimDevice::new().unwrap();
        let p = dev.zeros(4096).unwrap();
        let out = LogprobOut { logprob: p, entropy: p, lse: p };
        let x = |hidden: DevicePtr, d: usize, vocab: usize| HeadInputs { hidden, w: p, targets: p, n: 4, d, vocab };
        let e = logprob_entropy_fwd(&mut dev, &x(p, 60, 100), &out, p).unwrap_err();
        assert!(format!("{e:#}").contains("multiple of 8"), "{e:#}");
        let e = logprob_entropy_fwd(&mut dev, &x(p.offset(2), 64, 100), &out, p).unwrap_err();
        assert!(format!("{e:#}").contains("aligned"), "{e:#}");
        let e = logprob_entropy_fwd(&mut dev, &x(p, 64, 0), &out, p).unwrap_err();
        assert!(format!("{e:#}").contains("vocabulary"), "{e:#}");
    }

    #[test]
    fn splits_cover_the_vocabulary_without_empty_splits() {
        for (n, vocab) in [(1, 1), (1, 1000), (4096, 152064), (37, 64), (100_000, 512)] {
            let s = fwd_splits(n, vocab);
            let tiles = vocab.div_ceil(VOCAB_TILE);
            let tps = tiles_per_split(vocab, s);
            assert!(s >= 1 && (s - 1) * tps < tiles && s * tps >= tiles, "n {n} vocab {vocab}: {s} splits of {tps}");
            let b = bwd_splits(n, vocab);
            let tps = bwd_tiles_per_split(vocab, b);
            assert!(tps % 2 == 0 && b >= 1 && (b - 1) * tps < tiles && b * tps >= tiles, "n {n} vocab {vocab}: {b} backward splits of {tps}");
        }
        assert!(fused_loss_bytes(4096, 3584, 152064) * 8 < naive_logits_bytes(4096, 152064));
        // At 131,072 tokens: the 256 MiB backward block against 74 GiB of logits.
        assert!(fused_loss_bytes(131_072, 3584, 152064) * 250 < naive_logits_bytes(131_072, 152064));
    }

    #[test]
    fn chunk_blocks_stay_in_their_budget_and_tile_the_vocabulary() {
        for (n, vocab) in [(1, 1), (1, 152_064), (100, 1000), (6657, 512), (8192, 152_064), (131_072, 152_064)] {
            let s = chunk_shape(n, vocab);
            assert!(s.rows >= 1 && s.rows <= n && s.rows <= CHUNK_MAX_ROWS, "n {n}: {s:?}");
            assert!(s.cols >= 1 && s.cols <= vocab && (s.cols == vocab || s.cols % VOCAB_TILE == 0), "vocab {vocab}: {s:?}");
            assert!(s.workspace_bytes() <= CHUNK_BUDGET_BYTES + 16, "{s:?}");
        }
        // Few rows take the whole vocabulary in one block; many rows, square blocks.
        assert_eq!(chunk_shape(100, 152_064), ChunkShape { rows: 100, cols: 152_064 });
        assert_eq!(chunk_shape(8192, 152_064), ChunkShape { rows: 6656, cols: 6720 });
        let cap = bwd_chunked_workspace_bytes_upto(7000, 152_064);
        assert!((1..=7000).all(|n| bwd_chunked_workspace_bytes(n, 152_064) <= cap));
        assert!(bwd_chunked_workspace_bytes(7000, 152_064) < cap, "the largest block is not at the largest n");
    }

    /// The checks can fail: a wrong target (shifted by one) or a wrong
    /// reference row is far outside the forward's tolerance.
    #[test]
    fn capacity_workspaces_serve_every_smaller_batch() {
        // The splits grow as the rows shrink: a workspace sized for the
        // capacity alone is too small for some smaller batch (the GPU
        // model's first sizing, which overflowed at 2243 of 4096 rows).
        let (cap, d, vocab) = (4096, 128, 512);
        assert!(fwd_workspace_bytes(2243, vocab) > fwd_workspace_bytes(cap, vocab));
        for (cap, d, vocab) in [(cap, d, vocab), (1, 64, 100), (1000, 896, 151_936), (16384, 3584, 152_064)] {
            let (f, b) = (fwd_workspace_bytes_upto(cap, vocab), bwd_workspace_bytes_upto(cap, d, vocab));
            for n in 1..=cap {
                assert!(fwd_workspace_bytes(n, vocab) <= f && bwd_workspace_bytes(n, d, vocab) <= b, "cap {cap} n {n} vocab {vocab}");
            }
        }
    }

    #[test]
    fn a_capacity_workspace_runs_a_smaller_batch_on_the_simulated_device() {
        // The simulated device faults on any access past an allocation, so
        // this fails with the workspace of `fwd_workspace_bytes(cap, ..)`.
        let mut dev = SimDevice::new().unwrap();
        let (cap, n, d, vocab) = (4096, 2243, 16, 512);
        let hidden = random_vec(n * d, 1);
        let w: Vec<f32> = random_vec(vocab * d, 2).iter().map(|x| x * 0.5).collect();
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % vocab as u32).collect();
        let hb: Vec<u8> = hidden.iter().flat_map(|&x| bf16::from_f32(x).to_bits().to_le_bytes()).collect();
        let wb: Vec<u8> = w.iter().flat_map(|&x| bf16::from_f32(x).to_bits().to_le_bytes()).collect();
        let (h_dev, w_dev) = (dev.alloc(hb.len()).unwrap(), dev.alloc(wb.len()).unwrap());
        dev.copy_h2d(h_dev, &hb).unwrap();
        dev.copy_h2d(w_dev, &wb).unwrap();
        let t_dev = dev.alloc(n * 4).unwrap();
        dev.copy_h2d(t_dev, &targets.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        let out = LogprobOut { logprob: dev.zeros(n * 4).unwrap(), entropy: dev.zeros(n * 4).unwrap(), lse: dev.zeros(n * 4).unwrap() };
        let ws = dev.zeros(fwd_workspace_bytes_upto(cap, vocab)).unwrap();
        logprob_entropy_fwd(&mut dev, &HeadInputs { hidden: h_dev, w: w_dev, targets: t_dev, n, d, vocab }, &out, ws).unwrap();
        let got = dev.download_f32(out.logprob, n).unwrap();
        let round = |v: &[f32]| v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect::<Vec<f32>>();
        let want = crate::backend::cpu::logprob::logprob_entropy_fwd(&round(&hidden), &round(&w), &targets, d, vocab, vocab);
        let err = got.iter().zip(&want.logprob).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 1e-3, "max |log-prob error| {err}");
    }

    #[test]
    fn the_forward_check_detects_a_wrong_answer() {
        let mut dev = SimDevice::new().unwrap();
        let (n, d, vocab) = (5, 64, 100);
        let (h, w, t) = test_inputs(n, d, vocab, 3);
        let got = run_fwd(&mut dev, &h, &w, &t, d, vocab, None).unwrap();
        let want = cpu::logprob::logprob_entropy_fwd(&h, &w, &t, d, vocab, 32);
        assert!(fwd_err(&got, &want) < 2e-5);
        let shifted: Vec<u32> = t.iter().map(|&y| (y + 1) % vocab as u32).collect();
        let wrong = cpu::logprob::logprob_entropy_fwd(&h, &w, &shifted, d, vocab, 32);
        assert!(fwd_err(&got, &wrong) > 1e-2);
        // An out-of-vocabulary target is a NaN, never a plausible number.
        let bad: Vec<u32> = t.iter().map(|&y| if y == 0 { vocab as u32 } else { y }).collect();
        let got = run_fwd(&mut dev, &h, &w, &bad, d, vocab, None).unwrap();
        assert!(got.0.iter().zip(&bad).all(|(lp, &y)| lp.is_nan() == (y as usize >= vocab)));
    }

    /// This module's quick suite cases, on the simulated device.
    #[test]
    fn suite_cases_pass_on_the_simulated_device() {
        let mut dev = SimDevice::new().unwrap();
        let checks = super::super::checks::run_all(&mut dev, true, Some("logprob_entropy"));
        assert!(checks.len() >= 3);
        for c in &checks {
            eprintln!("{} {}: err {:e} tol {:e} {:.2} s {}", c.kernel, c.shape, c.max_err, c.tolerance, c.seconds, c.error.clone().unwrap_or_default());
        }
        assert!(checks.iter().all(|c| c.passed));
    }
}
