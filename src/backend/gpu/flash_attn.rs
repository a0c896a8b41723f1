//! Launchers of the flash-attention forward kernels (cuda/flash_attn_fwd.cu):
//! packed variable-length causal GQA self-attention and the ring-attention
//! block (one query block against one key/value block), their FLOP count, a
//! GPU timing helper, and their cases of the kernel suite.
//!
//! Owns: shape validation, launch geometry (which must agree with the tile
//! configuration in the .cu, `fa::Cfg<HD>`: see `FwdTiles`) and the kernels'
//! exact argument lists. Does not own the math (the kernels, with
//! `cpu::attention::attention_fwd` and `cpu::attention_block::
//! attention_block_fwd` as references), device memory, or the merge of ring
//! partials (fp32 (out, lse) pairs; a row with no visible key is O = 0,
//! LSE = -inf, the merge's neutral element).
//!
//! Timing on a GPU: `bench_flash_attn_fwd` runs the packed kernel on random
//! inputs and returns seconds per launch; divide `attn_fwd_flops` by it for
//! FLOP/s (FlashAttention-2's count, halved for causal).

use super::checks::{bf16_bits, rel_err, Case};
use crate::backend::cpu;
use crate::backend::cpu::attention::AttnShape;
use crate::backend::cpu::gradcheck::random_vec;
use crate::device::{Device, DeviceExt, DevicePtr, KernelArg::*, LaunchConfig};
use anyhow::{bail, ensure, Context, Result};
use half::bf16;
use std::time::Instant;

/// The forward kernels' tile configuration for one head dim, as compiled
/// into the PTX by default (`fa::Cfg<HD>` in cuda/flash_attn_fwd.cu): `warps`
/// warps per CTA, each owning `row_groups` groups of 16 query rows, and key
/// tiles of `key_tile` rows. The launch geometry follows from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FwdTiles {
    pub head_dim: usize,
    pub warps: usize,
    pub row_groups: usize,
    pub key_tile: usize,
}

impl FwdTiles {
    /// Query rows per CTA.
    pub const fn rows(&self) -> usize {
        16 * self.warps * self.row_groups
    }
    pub const fn threads(&self) -> u32 {
        32 * self.warps as u32
    }
    /// Dynamic shared memory per CTA: the Q tile plus one K and one V tile, bf16.
    pub const fn shared_bytes(&self) -> u32 {
        ((self.rows() + 2 * self.key_tile) * self.head_dim * 2) as u32
    }
    fn launch(&self, grid: (u32, u32, u32)) -> LaunchConfig {
        LaunchConfig { grid, block: (self.threads(), 1, 1), shared_bytes: self.shared_bytes() }
    }
}

/// hd64: 4 warps × 2 row groups = 128 query rows, 64-key tiles (32 KiB of shared memory).
pub const HD64_TILES: FwdTiles = FwdTiles { head_dim: 64, warps: 4, row_groups: 2, key_tile: 64 };
/// hd128: 4 warps × 2 row groups = 128 query rows, 64-key tiles (64 KiB of
/// dynamic shared memory): FA2's tiles, fastest on an H100 despite a 16-byte
/// register spill (see the .cu).
pub const HD128_TILES: FwdTiles = FwdTiles { head_dim: 128, warps: 4, row_groups: 2, key_tile: 64 };

/// The forward kernels' tiles for a head dim `check_shape` accepted.
pub fn fwd_tiles(head_dim: usize) -> Result<FwdTiles> {
    match head_dim {
        64 => Ok(HD64_TILES),
        128 => Ok(HD128_TILES),
        d => bail!("flash-attention forward: no tile configuration for head_dim {d}"),
    }
}

/// The attention shape every attention kernel supports (head dims 64 and
/// 128, query heads a positive multiple of kv heads, heads within a grid
/// dimension); returns the head dim's kernel-name suffix.
pub(super) fn check_shape(s: AttnShape, what: &str) -> Result<&'static str> {
    ensure!(s.heads > 0 && s.kv_heads > 0, "{what}: heads ({}) and kv_heads ({}) must be positive", s.heads, s.kv_heads);
    ensure!(s.heads % s.kv_heads == 0, "{what}: heads ({}) is not a multiple of kv_heads ({})", s.heads, s.kv_heads);
    ensure!(s.heads <= 65535, "{what}: {} heads exceed the grid's y limit", s.heads);
    match s.head_dim {
        64 => Ok("64"),
        128 => Ok("128"),
        d => bail!("{what}: head_dim {d} is not supported (64 or 128)"),
    }
}

/// Q/K/V must be 16-byte aligned: the kernels load 16-byte chunks.
pub(super) fn check_aligned(what: &str, ptrs: &[(&str, DevicePtr)]) -> Result<()> {
    for (name, p) in ptrs {
        ensure!(p.0 % 16 == 0, "{what}: {name} at {:#x} is not 16-byte aligned (the kernels load 16-byte chunks)", p.0);
    }
    Ok(())
}

/// `log2(e) · scale`: the kernels work in the log2 domain.
fn scale_log2(scale: f32) -> f32 {
    (scale as f64 * std::f64::consts::LOG2_E) as f32
}

/// Packed variable-length causal self-attention. `q`: bf16 `[total, heads,
/// hd]`; `k`, `v`: bf16 `[total, kv_heads, hd]`; `cu_seqlens`: i32 `[batch+1]`
/// on the device; `max_seqlen` ≥ every sequence's length; `scale` the softmax
/// scale (`s.scale()`, or the real head dim's when heads are zero-padded to
/// a supported one). Writes `out` bf16 `[total, heads, hd]` and `lse` f32
/// `[total, heads]` (natural log).
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_fwd(
    dev: &mut dyn Device,
    out: DevicePtr,
    lse: DevicePtr,
    q: DevicePtr,
    k: DevicePtr,
    v: DevicePtr,
    cu_seqlens: DevicePtr,
    batch: usize,
    max_seqlen: usize,
    s: AttnShape,
    scale: f32,
) -> Result<()> {
    let hd = check_shape(s, "flash_attn_fwd")?;
    check_aligned("flash_attn_fwd", &[("q", q), ("k", k), ("v", v)])?;
    ensure!(batch <= 65535, "flash_attn_fwd: batch {batch} exceeds the grid's z limit");
    ensure!(max_seqlen <= i32::MAX as usize, "flash_attn_fwd: max_seqlen {max_seqlen} does not fit i32");
    if batch == 0 || max_seqlen == 0 {
        return Ok(());
    }
    let f = format!("flash_attn_fwd_hd{hd}");
    let tiles = fwd_tiles(s.head_dim)?;
    let cfg = tiles.launch((max_seqlen.div_ceil(tiles.rows()) as u32, s.heads as u32, batch as u32));
    dev.launch(
        &f,
        cfg,
        &[Ptr(out), Ptr(lse), Ptr(q), Ptr(k), Ptr(v), Ptr(cu_seqlens), I32(s.heads as i32), I32(s.kv_heads as i32), F32(scale_log2(scale))],
    )
    .with_context(|| format!("flash_attn_fwd: batch {batch}, max_seqlen {max_seqlen}, {s:?}"))
}

/// Ring-attention block: `lq` queries at global positions `q_pos0..` against
/// `lk` keys at `k_pos0..`; with `causal`, key j is visible to query i iff
/// `k_pos0 + j <= q_pos0 + i`. `q`: bf16 `[lq, heads, hd]`; `k`, `v`: bf16
/// `[lk, kv_heads, hd]`. Writes `out` f32 `[lq, heads, hd]` and `lse` f32
/// `[lq, heads]`; a row with no visible key gets O = 0 and LSE = -inf.
#[allow(clippy::too_many_arguments)]
pub fn attn_block_fwd(
    dev: &mut dyn Device,
    out: DevicePtr,
    lse: DevicePtr,
    q: DevicePtr,
    k: DevicePtr,
    v: DevicePtr,
    lq: usize,
    lk: usize,
    q_pos0: usize,
    k_pos0: usize,
    causal: bool,
    s: AttnShape,
) -> Result<()> {
    let hd = check_shape(s, "attn_block_fwd")?;
    check_aligned("attn_block_fwd", &[("q", q), ("k", k), ("v", v)])?;
    ensure!(lq < i32::MAX as usize / 2 && lk < i32::MAX as usize / 2, "attn_block_fwd: block lengths {lq}, {lk} are too large");
    if lq == 0 {
        return Ok(());
    }
    // Only q_pos0 - k_pos0 matters; clamped to [-(lq+1), lk + 1] it keeps the
    // same visibility and fits i32 whatever the positions.
    let diag = (q_pos0 as i128 - k_pos0 as i128).clamp(-(lq as i128) - 1, lk as i128 + 1) as i32;
    let f = format!("attn_block_fwd_hd{hd}");
    let tiles = fwd_tiles(s.head_dim)?;
    let cfg = tiles.launch((lq.div_ceil(tiles.rows()) as u32, s.heads as u32, 1));
    dev.launch(
        &f,
        cfg,
        &[
            Ptr(out),
            Ptr(lse),
            Ptr(q),
            Ptr(k),
            Ptr(v),
            I32(lq as i32),
            I32(lk as i32),
            I32(diag),
            I32(causal as i32),
            I32(s.heads as i32),
            I32(s.kv_heads as i32),
            F32(scale_log2(s.scale())),
        ],
    )
    .with_context(|| format!("attn_block_fwd: lq {lq}, lk {lk}, q_pos0 {q_pos0}, k_pos0 {k_pos0}, causal {causal}, {s:?}"))
}

/// FLOPs of the causal packed forward as FlashAttention-2 counts them:
/// 4·L²·hd·heads per sequence (two GEMMs of 2·L²·hd), halved for causal.
pub fn attn_fwd_flops(seq_lens: &[usize], s: AttnShape) -> f64 {
    seq_lens.iter().map(|&l| 4.0 * (l as f64) * (l as f64) * s.head_dim as f64 * s.heads as f64 / 2.0).sum()
}

/// Cumulative offsets `[0, l0, l0+l1, …]` as the kernels take them.
pub fn cu_seqlens(seq_lens: &[usize]) -> Vec<u32> {
    let mut v = vec![0u32];
    for &l in seq_lens {
        v.push(v.last().copied().unwrap_or(0) + l as u32);
    }
    v
}

/// Seconds per launch of `flash_attn_fwd` on random inputs (after one warm-up
/// launch), for `appliance bench kernels`: TFLOP/s = `attn_fwd_flops / secs / 1e12`.
pub fn bench_flash_attn_fwd(dev: &mut dyn Device, seq_lens: &[usize], s: AttnShape, iters: usize) -> Result<f64> {
    let total: usize = seq_lens.iter().sum();
    let max_seqlen = seq_lens.iter().copied().max().unwrap_or(0);
    let q = dev.upload_u16(&bf16_bits(&random_vec(total * s.heads * s.head_dim, 1)))?;
    let k = dev.upload_u16(&bf16_bits(&random_vec(total * s.kv_heads * s.head_dim, 2)))?;
    let v = dev.upload_u16(&bf16_bits(&random_vec(total * s.kv_heads * s.head_dim, 3)))?;
    let cu = dev.upload_u32(&cu_seqlens(seq_lens))?;
    let (o, l) = (dev.alloc(total * s.heads * s.head_dim * 2)?, dev.alloc(total * s.heads * 4)?);
    let run = |dev: &mut dyn Device| flash_attn_fwd(dev, o, l, q, k, v, cu, seq_lens.len(), max_seqlen, s, s.scale());
    run(dev)?;
    dev.synchronize()?;
    let start = Instant::now();
    for _ in 0..iters.max(1) {
        run(dev)?;
    }
    dev.synchronize()?;
    let secs = start.elapsed().as_secs_f64() / iters.max(1) as f64;
    for p in [q, k, v, cu, o, l] {
        dev.free(p)?;
    }
    Ok(secs)
}

fn rounded(n: usize, seed: u64, mul: f32) -> Vec<f32> {
    random_vec(n, seed).iter().map(|&x| bf16::from_f32(x * mul).to_f32()).collect()
}

/// Max |got − want| / max(1, max |want| over finite entries), where equal
/// infinities (empty rows' -inf) count as exact and any other mismatch in
/// finiteness as infinite error.
fn lse_err(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let scale = want.iter().filter(|x| x.is_finite()).fold(1.0f64, |m, &x| m.max(x.abs() as f64));
    let e = got.iter().zip(want).fold(0.0f64, |m, (&a, &b)| {
        if a == b {
            m
        } else if !(a.is_finite() && b.is_finite()) {
            f64::INFINITY
        } else {
            m.max((a as f64 - b as f64).abs())
        }
    });
    e / scale
}

/// O's error and LSE's in one number: O (bf16 out, P rounded to bf16) is
/// good to ~1e-2, LSE to ~1e-4, so LSE's error is weighted by 100.
fn combined(o: f64, lse: f64) -> f64 {
    o.max(100.0 * lse)
}

/// Runs the packed kernel on `seq_lens` and compares with the CPU reference
/// computed over `ref_seqs` (the same split, except in tests of the test).
fn packed_err(dev: &mut dyn Device, seq_lens: &[usize], ref_seqs: &[usize], s: AttnShape, seed: u64) -> Result<f64> {
    let total: usize = seq_lens.iter().sum();
    let (qw, kw) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let q = rounded(total * qw, seed, 4.0);
    let k = rounded(total * kw, seed + 1, 1.0);
    let v = rounded(total * kw, seed + 2, 1.0);
    let (qi, ki, vi) = (dev.upload_u16(&bf16_bits(&q))?, dev.upload_u16(&bf16_bits(&k))?, dev.upload_u16(&bf16_bits(&v))?);
    let cu = dev.upload_u32(&cu_seqlens(seq_lens))?;
    let (o, l) = (dev.zeros(total * qw * 2)?, dev.zeros(total * s.heads * 4)?);
    flash_attn_fwd(dev, o, l, qi, ki, vi, cu, seq_lens.len(), seq_lens.iter().copied().max().unwrap_or(0), s, s.scale())?;
    let got_o: Vec<f32> = dev.download_u16(o, total * qw)?.into_iter().map(|b| bf16::from_bits(b).to_f32()).collect();
    let got_l = dev.download_f32(l, total * s.heads)?;
    let cu_ref = cu_seqlens(ref_seqs);
    let ranges: Vec<_> = cu_ref.windows(2).map(|w| w[0] as usize..w[1] as usize).collect();
    let (mut want_o, mut want_l) = (vec![0.0; total * qw], vec![0.0; total * s.heads]);
    cpu::attention::attention_fwd(&mut want_o, &mut want_l, &q, &k, &v, &ranges, s);
    Ok(combined(rel_err(&got_o, &want_o), lse_err(&got_l, &want_l)))
}

/// One ring block on the device against the reference at (`ref_q_pos0`, `k_pos0`, `causal`).
#[derive(Clone, Copy, Debug)]
struct Block {
    lq: usize,
    lk: usize,
    q_pos0: usize,
    k_pos0: usize,
    causal: bool,
}

fn block_err(dev: &mut dyn Device, b: Block, reference: Block, s: AttnShape, seed: u64) -> Result<f64> {
    let (qw, kw) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let q = rounded(b.lq * qw, seed, 4.0);
    let k = rounded(b.lk * kw, seed + 1, 1.0);
    let v = rounded(b.lk * kw, seed + 2, 1.0);
    let (qi, ki, vi) = (dev.upload_u16(&bf16_bits(&q))?, dev.upload_u16(&bf16_bits(&k))?, dev.upload_u16(&bf16_bits(&v))?);
    // Start from garbage so a row the kernel forgets to write is caught.
    let (o, l) = (dev.upload_f32(&vec![f32::NAN; b.lq * qw])?, dev.upload_f32(&vec![f32::NAN; b.lq * s.heads])?);
    attn_block_fwd(dev, o, l, qi, ki, vi, b.lq, b.lk, b.q_pos0, b.k_pos0, b.causal, s)?;
    let (got_o, got_l) = (dev.download_f32(o, b.lq * qw)?, dev.download_f32(l, b.lq * s.heads)?);
    let (mut want_o, mut want_l) = (vec![0.0; b.lq * qw], vec![0.0; b.lq * s.heads]);
    cpu::attention_block::attention_block_fwd(&mut want_o, &mut want_l, &q, &k, &v, reference.q_pos0, reference.k_pos0, reference.causal, s);
    Ok(combined(rel_err(&got_o, &want_o), lse_err(&got_l, &want_l)))
}

const TOL: f64 = 1e-2;

fn shape_str(s: AttnShape) -> String {
    format!("heads={}/kv={} hd={}", s.heads, s.kv_heads, s.head_dim)
}

/// The kernel suite's cases for these kernels (error = max(O, 100·LSE)).
pub(super) fn cases(quick: bool) -> Vec<Case<'static>> {
    let sh = |heads, kv_heads, head_dim| AttnShape { heads, kv_heads, head_dim };
    let mut v = vec![];
    // Packed: uneven lengths that are not tile multiples (one short of, one
    // past and between the 128-row query tiles), GQA 1, 2 and 7, both head dims.
    let mut packed: Vec<(Vec<usize>, AttnShape)> = vec![
        (vec![1, 37, 70], sh(4, 2, 64)),
        (vec![130], sh(2, 2, 64)),
        (vec![129, 127, 200], sh(7, 1, 64)),
        (vec![1, 37, 70], sh(7, 1, 128)),
        (vec![130], sh(2, 2, 128)),
        (vec![127, 1, 200, 129], sh(4, 2, 128)),
    ];
    if !quick {
        packed.extend([
            (vec![2048], sh(14, 2, 64)),
            (vec![2048], sh(28, 4, 128)),
            (vec![100, 3000, 1, 900], sh(16, 2, 128)),
            (vec![8192], sh(14, 2, 128)),
        ]);
    }
    for (i, (lens, s)) in packed.into_iter().enumerate() {
        v.push(Case {
            kernel: if s.head_dim == 64 { "flash_attn_fwd_hd64" } else { "flash_attn_fwd_hd128" },
            shape: format!("seqs={lens:?} {}", shape_str(s)),
            tol: TOL,
            run: Box::new(move |dev| packed_err(dev, &lens, &lens, s, 100 + 10 * i as u64)),
        });
    }
    // Ring blocks: causal on and off; q_pos0 < k_pos0 (all rows or some rows
    // empty), equal, greater.
    let blk = |lq, lk, q_pos0, k_pos0, causal| Block { lq, lk, q_pos0, k_pos0, causal };
    let mut blocks: Vec<(Block, AttnShape)> = vec![
        (blk(70, 45, 0, 0, true), sh(4, 2, 64)),
        (blk(70, 45, 50, 30, true), sh(7, 1, 64)),
        (blk(70, 45, 0, 30, true), sh(2, 2, 64)),
        (blk(20, 45, 0, 100, true), sh(2, 2, 64)),
        (blk(70, 45, 0, 100, false), sh(4, 2, 64)),
        (blk(70, 45, 0, 0, true), sh(7, 1, 128)),
        (blk(70, 45, 10, 40, true), sh(4, 2, 128)),
        (blk(33, 130, 200, 0, false), sh(2, 2, 128)),
        // Blocks longer than one 128-row query tile, with a diagonal offset
        // either way (q_pos0 < k_pos0 leaves the first rows empty).
        (blk(200, 150, 60, 20, true), sh(2, 2, 128)),
        (blk(129, 200, 0, 40, true), sh(4, 2, 64)),
    ];
    if !quick {
        blocks.extend([
            (blk(2048, 2048, 2048, 2048, true), sh(28, 4, 128)),
            (blk(2048, 2048, 4096, 2048, true), sh(28, 4, 128)),
            (blk(1000, 3000, 100, 0, true), sh(14, 2, 64)),
        ]);
    }
    for (i, (b, s)) in blocks.into_iter().enumerate() {
        v.push(Case {
            kernel: if s.head_dim == 64 { "attn_block_fwd_hd64" } else { "attn_block_fwd_hd128" },
            shape: format!("lq={} lk={} q_pos0={} k_pos0={} causal={} {}", b.lq, b.lk, b.q_pos0, b.k_pos0, b.causal, shape_str(s)),
            tol: TOL,
            run: Box::new(move |dev| block_err(dev, b, b, s, 200 + 10 * i as u64)),
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::sim::SimDevice;

    #[test]
    fn flops_follow_flash_attention_2() {
        let s = AttnShape { heads: 2, kv_heads: 1, head_dim: 64 };
        assert_eq!(attn_fwd_flops(&[10, 20], s), 2.0 * (100.0 + 400.0) * 64.0 * 2.0);
        assert_eq!(cu_seqlens(&[3, 0, 5]), vec![0, 3, 3, 8]);
    }

    // The launch geometry follows the .cu's compiled-in tile defaults.
    #[test]
    fn tiles_match_the_kernel_defaults() {
        let cu = include_str!("../../../cuda/flash_attn_fwd.cu");
        for t in [HD64_TILES, HD128_TILES] {
            for (name, v) in [("WARPS", t.warps), ("RG", t.row_groups), ("BC", t.key_tile)] {
                let line = format!("#define FA_HD{}_{name} {v}", t.head_dim);
                assert!(cu.lines().any(|l| l.trim() == line), "`{line}` is not in cuda/flash_attn_fwd.cu");
            }
        }
        assert_eq!((HD128_TILES.rows(), HD128_TILES.threads(), HD128_TILES.shared_bytes()), (128, 128, 64 * 1024));
        assert_eq!(fwd_tiles(64).unwrap(), HD64_TILES);
        assert!(fwd_tiles(96).is_err());
    }

    #[test]
    fn bad_shapes_are_refused_before_launch() {
        let mut dev = SimDevice::new().unwrap();
        let p = dev.zeros(1024).unwrap();
        let bad_hd = AttnShape { heads: 2, kv_heads: 2, head_dim: 96 };
        let e = flash_attn_fwd(&mut dev, p, p, p, p, p, p, 1, 4, bad_hd, 1.0).unwrap_err();
        assert!(format!("{e:#}").contains("head_dim 96"), "{e:#}");
        let bad_gqa = AttnShape { heads: 3, kv_heads: 2, head_dim: 64 };
        let e = attn_block_fwd(&mut dev, p, p, p, p, p, 4, 4, 0, 0, true, bad_gqa).unwrap_err();
        assert!(format!("{e:#}").contains("not a multiple"), "{e:#}");
        let ok = AttnShape { heads: 2, kv_heads: 2, head_dim: 64 };
        let e = attn_block_fwd(&mut dev, p, p, p.offset(2), p, p, 4, 4, 0, 0, true, ok).unwrap_err();
        assert!(format!("{e:#}").contains("aligned"), "{e:#}");
    }

    // The comparisons can fail: a reference that lets sequences see each
    // other, or that shifts the ring block's positions, is far off.
    #[test]
    fn a_wrong_reference_fails_the_comparison() {
        let mut dev = SimDevice::new().unwrap();
        let s = AttnShape { heads: 2, kv_heads: 1, head_dim: 64 };
        assert!(packed_err(&mut dev, &[20, 30], &[20, 30], s, 1).unwrap() <= TOL);
        assert!(packed_err(&mut dev, &[20, 30], &[50], s, 1).unwrap() > TOL);
        let b = Block { lq: 20, lk: 30, q_pos0: 10, k_pos0: 0, causal: true };
        assert!(block_err(&mut dev, b, b, s, 2).unwrap() <= TOL);
        assert!(block_err(&mut dev, b, Block { q_pos0: 11, ..b }, s, 2).unwrap() > TOL);
        assert!(block_err(&mut dev, b, Block { causal: false, ..b }, s, 2).unwrap() > TOL);
    }
}
