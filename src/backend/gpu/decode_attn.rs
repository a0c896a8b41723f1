//! Launchers of decode attention (flash-decoding, cuda/decode_attn.cu) and
//! its kernel-suite cases.
//!
//! Owns: the split choice (from the longest length and an SM-count hint),
//! the workspace layout of the per-split partials, shape and alignment
//! validation, and the byte count the benchmarks divide by. Does not own the
//! math (the kernels; CPU reference `cpu::decode_attention`) or the KV cache.
//!
//! Design: `decode_attn` runs `decode_attn_partial` over `splits` key ranges
//! of one common chunk length, then `decode_attn_combine` merges the splits
//! (log-sum-exp) into O and LSE; with one split the partial kernel writes the
//! result directly and the workspace is not used. `decode_attn_block`
//! exposes the partial kernel over an explicit key range (O = 0, LSE = -inf
//! for a row that sees no key there): a block for split or ring merges.
//!
//! Timing on a GPU (for the lead's benchmark): decode is memory-bound; divide
//! `decode_attn_kv_bytes(lengths, s)` by the time of one `decode_attn` call to
//! get the effective K/V bandwidth (GB/s). Q, O and the workspace are small
//! next to the cache at long lengths and are not counted.

use super::checks::{bf16_bits, rel_err, Case};
use crate::backend::cpu;
use crate::backend::cpu::attention::AttnShape;
use crate::backend::cpu::gradcheck::random_vec;
use crate::device::{Device, DeviceExt, DevicePtr, KernelArg::*, LaunchConfig};
use anyhow::{bail, ensure, Context, Result};
use half::bf16;
use std::ops::Range;

/// Query rows (new token × query head of one kv head) per CTA.
pub const ROWS_PER_CTA: usize = 8;
/// The most splits one launch supports (the combine kernel's shared array).
pub const MAX_SPLITS: usize = 128;
/// Split chunks are multiples of this many keys (whole CTA steps).
const CHUNK_ALIGN: usize = 64;
/// The fewest keys a split is given when choosing the split count.
const MIN_KEYS_PER_SPLIT: usize = 256;
const THREADS: u32 = 128;

fn validate(s: AttnShape) -> Result<()> {
    super::flash_attn::check_shape(s, "decode attention").map(|_| ())
}

fn row_tiles(q_len: usize, s: AttnShape) -> usize {
    (q_len * s.group()).div_ceil(ROWS_PER_CTA)
}

/// The split count for `batch` sequences whose longest has `max_len` keys:
/// enough CTAs for about two waves over `sm_count` SMs, at least
/// `MIN_KEYS_PER_SPLIT` keys per split, at most `MAX_SPLITS`.
pub fn decode_attn_splits(batch: usize, q_len: usize, max_len: usize, s: AttnShape, sm_count: usize) -> usize {
    let ctas = (batch * s.kv_heads * row_tiles(q_len, s)).max(1);
    let want = (2 * sm_count.max(1)).div_ceil(ctas);
    let by_len = max_len.div_ceil(MIN_KEYS_PER_SPLIT).max(1);
    want.min(by_len).clamp(1, MAX_SPLITS)
}

/// Keys per split and the number of non-empty splits for `max_len`.
fn split_geometry(max_len: usize, splits: usize) -> (usize, usize) {
    let chunk = max_len.div_ceil(splits).max(1).next_multiple_of(CHUNK_ALIGN);
    (chunk, max_len.div_ceil(chunk).max(1))
}

/// Workspace bytes `decode_attn` needs for `splits` (0 for one split): the
/// f32 partial O `[splits, batch, q_len, heads, hd]`, then the partial LSE
/// `[splits, batch, q_len, heads]`.
pub fn decode_attn_workspace_bytes(batch: usize, q_len: usize, s: AttnShape, splits: usize) -> usize {
    if splits <= 1 {
        0
    } else {
        splits * batch * q_len * s.heads * (s.head_dim + 1) * 4
    }
}

/// Bytes of K and V (bf16) one `decode_attn` call reads from the cache:
/// each sequence's valid keys, every kv head, once.
pub fn decode_attn_kv_bytes(lengths: &[usize], s: AttnShape) -> u64 {
    lengths.iter().map(|&l| l as u64).sum::<u64>() * (s.kv_heads * s.head_dim * 2 * 2) as u64
}

#[allow(clippy::too_many_arguments)]
fn check_args(q: DevicePtr, k_cache: DevicePtr, v_cache: DevicePtr, batch: usize, q_len: usize, cap: usize, s: AttnShape) -> Result<()> {
    validate(s)?;
    ensure!((1..=65_535).contains(&batch), "decode attention: batch {batch} outside 1..=65535");
    ensure!((1..=cap).contains(&q_len), "decode attention: q_len {q_len} outside 1..=cap ({cap})");
    ensure!(cap < i32::MAX as usize / 2, "decode attention: cache capacity {cap} too large");
    ensure!(batch * cap * s.kv_heads * s.head_dim < i64::MAX as usize / 2, "decode attention: cache too large");
    super::flash_attn::check_aligned("decode attention", &[("q", q), ("k_cache", k_cache), ("v_cache", v_cache)])
}

#[allow(clippy::too_many_arguments)]
fn launch_partial(
    dev: &mut dyn Device,
    out: DevicePtr,
    lse: DevicePtr,
    q: DevicePtr,
    k_cache: DevicePtr,
    v_cache: DevicePtr,
    lengths: DevicePtr,
    batch: usize,
    q_len: usize,
    cap: usize,
    s: AttnShape,
    chunk: usize,
    splits: usize,
    keys: Range<usize>,
) -> Result<()> {
    let tiles = row_tiles(q_len, s);
    let grid_y = s.kv_heads * tiles;
    ensure!(grid_y <= 65_535, "decode attention: {} kv heads × {tiles} row tiles exceed the grid", s.kv_heads);
    let clamp = |x: usize| x.min(i32::MAX as usize) as i32;
    let cfg = LaunchConfig { grid: (splits as u32, grid_y as u32, batch as u32), block: (THREADS, 1, 1), shared_bytes: 0 };
    dev.launch(
        "decode_attn_partial",
        cfg,
        &[
            Ptr(out),
            Ptr(lse),
            Ptr(q),
            Ptr(k_cache),
            Ptr(v_cache),
            Ptr(lengths),
            I32(batch as i32),
            I32(q_len as i32),
            I32(s.heads as i32),
            I32(s.kv_heads as i32),
            I32(s.head_dim as i32),
            I32(cap as i32),
            I32(clamp(chunk)),
            I32(splits as i32),
            I32(clamp(keys.start)),
            I32(clamp(keys.end)),
            F32(s.scale() * std::f32::consts::LOG2_E),
        ],
    )
}

/// Decode attention: O f32 `[batch, q_len, heads, hd]` and LSE f32
/// `[batch, q_len, heads]` of Q bf16 `[batch, q_len, heads, hd]` against the
/// caches bf16 `[batch, cap, kv_heads, hd]`; `lengths` i32 `[batch]` counts
/// the valid keys including the `q_len` new ones (query i of sequence b is at
/// position lengths[b] - q_len + i, causal). `max_len` (≥ every length, ≤
/// cap) sizes the splits; a larger length is still handled, by the last
/// split. `workspace` holds `decode_attn_workspace_bytes(batch, q_len, s,
/// splits)` bytes. Lengths are clamped to `cap` on the device.
#[allow(clippy::too_many_arguments)]
pub fn decode_attn(
    dev: &mut dyn Device,
    out: DevicePtr,
    lse: DevicePtr,
    q: DevicePtr,
    k_cache: DevicePtr,
    v_cache: DevicePtr,
    lengths: DevicePtr,
    batch: usize,
    q_len: usize,
    cap: usize,
    max_len: usize,
    s: AttnShape,
    splits: usize,
    workspace: DevicePtr,
) -> Result<()> {
    check_args(q, k_cache, v_cache, batch, q_len, cap, s)?;
    ensure!(max_len <= cap, "decode attention: max_len {max_len} exceeds the cache capacity {cap}");
    if splits == 0 || splits > MAX_SPLITS {
        bail!("decode attention: {splits} splits outside 1..={MAX_SPLITS}");
    }
    let (chunk, used) = split_geometry(max_len, splits);
    if used == 1 {
        return launch_partial(dev, out, lse, q, k_cache, v_cache, lengths, batch, q_len, cap, s, chunk, 1, 0..usize::MAX)
            .context("decode_attn (one split)");
    }
    let rows = batch * q_len * s.heads;
    let part_o = workspace;
    let part_lse = workspace.offset(used * rows * s.head_dim * 4);
    launch_partial(dev, part_o, part_lse, q, k_cache, v_cache, lengths, batch, q_len, cap, s, chunk, used, 0..usize::MAX)
        .with_context(|| format!("decode_attn: partials of {used} splits of {chunk} keys"))?;
    dev.launch(
        "decode_attn_combine",
        LaunchConfig::linear(rows.div_ceil(4) as u32, THREADS),
        &[Ptr(out), Ptr(lse), Ptr(part_o), Ptr(part_lse), I32(rows as i32), I32(s.head_dim as i32), I32(used as i32)],
    )
    .with_context(|| format!("decode_attn: combining {used} splits"))
}

/// Attention of the new tokens restricted to the cache keys `keys` (and, as
/// always, to each row's causal range): O and LSE in `decode_attn`'s layout,
/// O = 0 and LSE = -inf for a row that sees none of them. One CTA per kv
/// head, row tile and sequence, no workspace.
#[allow(clippy::too_many_arguments)]
pub fn decode_attn_block(
    dev: &mut dyn Device,
    out: DevicePtr,
    lse: DevicePtr,
    q: DevicePtr,
    k_cache: DevicePtr,
    v_cache: DevicePtr,
    lengths: DevicePtr,
    batch: usize,
    q_len: usize,
    cap: usize,
    s: AttnShape,
    keys: Range<usize>,
) -> Result<()> {
    check_args(q, k_cache, v_cache, batch, q_len, cap, s)?;
    ensure!(keys.start <= keys.end, "decode attention: empty key range {keys:?} is reversed");
    launch_partial(dev, out, lse, q, k_cache, v_cache, lengths, batch, q_len, cap, s, cap.max(1), 1, keys.clone())
        .with_context(|| format!("decode_attn_block over keys {keys:?}"))
}

/// One decode problem with its bf16-rounded data.
struct Problem {
    s: AttnShape,
    lengths: Vec<usize>,
    q_len: usize,
    cap: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

fn rounded(n: usize, seed: u64) -> Vec<f32> {
    random_vec(n, seed).iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

impl Problem {
    fn new(s: AttnShape, lengths: &[usize], q_len: usize, seed: u64) -> Problem {
        let cap = lengths.iter().copied().max().unwrap_or(1) + 3;
        let b = lengths.len();
        let (kv, qn) = (b * cap * s.kv_heads * s.head_dim, b * q_len * s.heads * s.head_dim);
        // Keys scaled up so the softmax is not nearly uniform.
        let k: Vec<f32> = random_vec(kv, seed + 1).iter().map(|&x| bf16::from_f32(3.0 * x).to_f32()).collect();
        Problem { s, lengths: lengths.to_vec(), q_len, cap, q: rounded(qn, seed), k, v: rounded(kv, seed + 2) }
    }

    fn reference(&self, keys: Range<usize>) -> (Vec<f32>, Vec<f32>) {
        let rows = self.lengths.len() * self.q_len * self.s.heads;
        let (mut o, mut l) = (vec![0.0; rows * self.s.head_dim], vec![0.0; rows]);
        cpu::decode_attention::decode_attention(&mut o, &mut l, &self.q, &self.k, &self.v, &self.lengths, self.q_len, self.cap, self.s, keys);
        (o, l)
    }

    fn upload(&self, dev: &mut dyn Device) -> Result<(DevicePtr, DevicePtr, DevicePtr, DevicePtr)> {
        let lens: Vec<u32> = self.lengths.iter().map(|&l| l as u32).collect();
        Ok((dev.upload_u16(&bf16_bits(&self.q))?, dev.upload_u16(&bf16_bits(&self.k))?, dev.upload_u16(&bf16_bits(&self.v))?, dev.upload_u32(&lens)?))
    }

    fn rows(&self) -> usize {
        self.lengths.len() * self.q_len * self.s.heads
    }

    fn describe(&self) -> String {
        format!(
            "lengths={:?} q_len={} heads={} kv_heads={} head_dim={}",
            self.lengths, self.q_len, self.s.heads, self.s.kv_heads, self.s.head_dim
        )
    }
}

/// Error of (O, LSE) against the reference; LSE -inf must match exactly.
fn err_pair(got_o: &[f32], got_l: &[f32], want_o: &[f32], want_l: &[f32]) -> f64 {
    let inf_mismatch = got_l.iter().zip(want_l).filter(|(g, w)| (g.is_infinite() || w.is_infinite()) && g != w).count();
    let fin = |v: &[f32]| v.iter().map(|&x| if x.is_infinite() { 0.0 } else { x }).collect::<Vec<f32>>();
    rel_err(got_o, want_o).max(rel_err(&fin(got_l), &fin(want_l))) + inf_mismatch as f64
}

/// A suite shape: (heads, lengths, q_len, split counts or key-block bounds).
type SuiteShape = (AttnShape, Vec<usize>, usize, Vec<usize>);

/// The kernel-suite cases of decode attention: the split path (both
/// kernels) and key blocks merged by `attn_merge_fwd` against attention over
/// the whole cache.
pub(super) fn cases<'a>(quick: bool) -> Vec<Case<'a>> {
    let mut v: Vec<Case> = vec![];
    let sh = |heads, kv_heads, head_dim| AttnShape { heads, kv_heads, head_dim };
    // (shape, lengths, q_len, split counts)
    let mut shapes: Vec<SuiteShape> = vec![
        (sh(2, 2, 64), vec![1, 37, 300], 1, vec![1, 3]),
        (sh(4, 2, 128), vec![300], 1, vec![1, 4]),
        (sh(14, 2, 128), vec![4, 37, 130], 4, vec![1, 2]),
        (sh(7, 1, 64), vec![200, 5], 1, vec![2]),
        (sh(4, 2, 64), vec![129, 64, 70], 4, vec![1, 3]),
    ];
    if !quick {
        shapes.push((sh(28, 4, 128), vec![32_768; 8], 1, vec![1, 8, 0]));
        shapes.push((sh(64, 8, 128), vec![131_072], 1, vec![0]));
        shapes.push((sh(14, 2, 64), vec![131_072, 1000, 65_536, 7, 32_768, 17, 100_000, 4096], 4, vec![0]));
        shapes.push((sh(28, 4, 128), vec![32_768; 8], 4, vec![0]));
    }
    for (i, (s, lengths, q_len, split_list)) in shapes.into_iter().enumerate() {
        let p = std::sync::Arc::new(Problem::new(s, &lengths, q_len, 100 + 10 * i as u64));
        for splits in split_list {
            let p = p.clone();
            let max_len = *p.lengths.iter().max().unwrap();
            // 0: the launcher's own choice for an H100-sized GPU.
            let splits = if splits == 0 { decode_attn_splits(p.lengths.len(), q_len, max_len, s, 132) } else { splits };
            let used = split_geometry(max_len, splits).1;
            v.push(Case {
                kernel: if used > 1 { "decode_attn_combine" } else { "decode_attn_partial" },
                shape: format!("{} splits={splits} (used {used})", p.describe()),
                tol: 1e-5,
                run: Box::new(move |dev| {
                    let (q, k, vv, lens) = p.upload(dev)?;
                    let rows = p.rows();
                    let (o, l) = (dev.zeros(rows * s.head_dim * 4)?, dev.zeros(rows * 4)?);
                    let ws = dev.zeros(decode_attn_workspace_bytes(p.lengths.len(), q_len, s, splits).max(16))?;
                    decode_attn(dev, o, l, q, k, vv, lens, p.lengths.len(), q_len, p.cap, max_len, s, splits, ws)?;
                    let (wo, wl) = p.reference(0..usize::MAX);
                    Ok(err_pair(&dev.download_f32(o, rows * s.head_dim)?, &dev.download_f32(l, rows)?, &wo, &wl))
                }),
            });
        }
    }
    // Key blocks on the device, merged on the device, equal whole-cache attention.
    let blocks: Vec<SuiteShape> = vec![
        (sh(4, 2, 64), vec![60, 23], 4, vec![0, 30, usize::MAX]),
        (sh(7, 1, 128), vec![90], 1, vec![0, 20, 41, 77, usize::MAX]),
        (sh(6, 3, 64), vec![50, 7, 33], 4, vec![0, 8, 31, 48, usize::MAX]),
    ];
    for (i, (s, lengths, q_len, bounds)) in blocks.into_iter().enumerate() {
        let p = Problem::new(s, &lengths, q_len, 500 + 10 * i as u64);
        v.push(Case {
            kernel: "decode_attn_partial",
            shape: format!("{} {} key blocks merged by attn_merge_fwd", p.describe(), bounds.len() - 1),
            tol: 1e-5,
            run: Box::new(move |dev| {
                let (q, k, vv, lens) = p.upload(dev)?;
                let (rows, hd) = (p.rows(), s.head_dim);
                let mut acc: Option<(DevicePtr, DevicePtr)> = None;
                for w in bounds.windows(2) {
                    let (bo, bl) = (dev.zeros(rows * hd * 4)?, dev.zeros(rows * 4)?);
                    decode_attn_block(dev, bo, bl, q, k, vv, lens, p.lengths.len(), q_len, p.cap, s, w[0]..w[1])?;
                    acc = Some(match acc {
                        None => (bo, bl),
                        Some((ao, al)) => {
                            let (mo, ml) = (dev.zeros(rows * hd * 4)?, dev.zeros(rows * 4)?);
                            super::attn_merge::attn_merge_fwd(dev, mo, ml, ao, al, bo, bl, rows, hd)?;
                            (mo, ml)
                        }
                    });
                }
                let (o, l) = acc.context("no blocks")?;
                let (wo, wl) = p.reference(0..usize::MAX);
                Ok(err_pair(&dev.download_f32(o, rows * hd)?, &dev.download_f32(l, rows)?, &wo, &wl))
            }),
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::sim::SimDevice;

    #[test]
    fn split_choice_fills_the_gpu_within_limits() {
        let s = AttnShape { heads: 28, kv_heads: 4, head_dim: 128 };
        // One long sequence: 4 CTAs without splitting; 66 splits for two waves of 132 SMs.
        assert_eq!(decode_attn_splits(1, 1, 131_072, s, 132), 66);
        // Short sequences are not split below 256 keys each.
        assert_eq!(decode_attn_splits(1, 1, 300, s, 132), 2);
        assert_eq!(decode_attn_splits(64, 1, 100_000, s, 132), 2);
        assert_eq!(decode_attn_splits(1, 1, 1, s, 132), 1);
        assert!(decode_attn_splits(1, 1, 10_000_000, AttnShape { heads: 1, kv_heads: 1, head_dim: 64 }, 1000) <= MAX_SPLITS);
        let (chunk, used) = split_geometry(300, 4);
        assert_eq!((chunk, used), (128, 3));
        assert_eq!(decode_attn_workspace_bytes(2, 1, s, 1), 0);
        assert_eq!(decode_attn_workspace_bytes(2, 1, s, 3), 3 * 2 * 28 * 129 * 4);
    }

    /// Just this file's and attn_merge's suite cases on the simulated
    /// device (tests/kernels.rs runs them in CI with every other kernel):
    /// `cargo test --lib decode_and_merge_cases -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn decode_and_merge_cases_on_the_simulated_device() {
        let mut dev = SimDevice::new().unwrap();
        let mut failed = vec![];
        for f in ["decode_attn", "attn_merge"] {
            for c in super::super::checks::run_all(&mut dev, true, Some(f)) {
                eprintln!("{:<22} {:<90} err {:.2e} tol {:.0e} {:.2}s {}", c.kernel, c.shape, c.max_err, c.tolerance, c.seconds, c.error.clone().unwrap_or_default());
                if !c.passed {
                    failed.push(format!("{} {}", c.kernel, c.shape));
                }
            }
        }
        assert!(failed.is_empty(), "{failed:?}");
    }

    #[test]
    fn bad_shapes_are_refused_with_a_reason() {
        let mut dev = SimDevice::new().unwrap();
        let p = dev.zeros(1 << 12).unwrap();
        let s = AttnShape { heads: 4, kv_heads: 2, head_dim: 96 };
        let e = decode_attn(&mut dev, p, p, p, p, p, p, 1, 1, 16, 16, s, 1, p).unwrap_err();
        assert!(format!("{e:#}").contains("head_dim 96"), "{e:#}");
        let s = AttnShape { heads: 5, kv_heads: 2, head_dim: 64 };
        let e = decode_attn(&mut dev, p, p, p, p, p, p, 1, 1, 16, 16, s, 1, p).unwrap_err();
        assert!(format!("{e:#}").contains("multiple"), "{e:#}");
        let s = AttnShape { heads: 4, kv_heads: 2, head_dim: 64 };
        let e = decode_attn(&mut dev, p, p, p.offset(2), p, p, p, 1, 1, 16, 16, s, 1, p).unwrap_err();
        assert!(format!("{e:#}").contains("aligned"), "{e:#}");
        let e = decode_attn(&mut dev, p, p, p, p, p, p, 1, 1, 16, 17, s, 1, p).unwrap_err();
        assert!(format!("{e:#}").contains("max_len"), "{e:#}");
        let e = decode_attn(&mut dev, p, p, p, p, p, p, 1, 1, 16, 16, s, 0, p).unwrap_err();
        assert!(format!("{e:#}").contains("splits"), "{e:#}");
    }
}
