//! GPU launchers: one thin function per kernel, mapping the op's shapes to a
//! launch configuration and the kernel's exact argument list. They run on any
//! `Device`, so the same code drives a real GPU and the PTX interpreter.
//!
//! Owns: the launch geometry of each kernel. Does not own the kernels' math
//! (cuda/*.cu, with CPU references in `backend::cpu`) or device memory.

pub mod attn_merge;
pub mod blas;
pub mod checks;
pub mod flash_attn;
pub mod flash_attn_bwd;
pub mod decode_attn;
pub mod dapo_loss;
pub mod logprob;

use crate::device::{Device, DevicePtr, KernelArg::*, LaunchConfig};
use anyhow::Result;

const THREADS: u32 = 256;

fn blocks_for(n: u64, per_block: u64, cap: u64) -> u32 {
    n.div_ceil(per_block).clamp(1, cap) as u32
}

pub fn embedding_fwd(dev: &mut dyn Device, out: DevicePtr, table: DevicePtr, ids: DevicePtr, n: usize, d: usize) -> Result<()> {
    dev.launch("embedding_fwd", LaunchConfig::linear(n as u32, 128), &[Ptr(out), Ptr(table), Ptr(ids), I32(n as i32), I32(d as i32)])
}

/// The rows of a batch grouped by token id, for [`embedding_bwd`]: `order`
/// holds the row indices sorted by id (stably, so each id's rows stay in row
/// order), and `starts[g]..starts[g + 1]` are group g's positions in `order`
/// (`starts` ends with `ids.len()`). Sorting on the host, where the ids are,
/// spares the kernel float atomics and makes its sums the same every run.
pub fn embedding_groups(ids: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_by_key(|&r| ids[r as usize]);
    let mut starts = Vec::with_capacity(ids.len() + 1);
    for (j, &r) in order.iter().enumerate() {
        if j == 0 || ids[r as usize] != ids[order[j - 1] as usize] {
            starts.push(j as u32);
        }
    }
    starts.push(ids.len() as u32);
    (order, starts)
}

/// `dtable[ids[r]] += dout[r]` for every row, with the rows grouped by
/// [`embedding_groups`] (`order` and `starts` on the device; `groups` is
/// `starts.len() - 1`).
#[allow(clippy::too_many_arguments)]
pub fn embedding_bwd(dev: &mut dyn Device, dtable: DevicePtr, dout: DevicePtr, ids: DevicePtr, order: DevicePtr, starts: DevicePtr, groups: usize, d: usize) -> Result<()> {
    if groups == 0 {
        return Ok(());
    }
    dev.launch(
        "embedding_bwd",
        LaunchConfig::linear(groups as u32, 128),
        &[Ptr(dtable), Ptr(dout), Ptr(ids), Ptr(order), Ptr(starts), I32(groups as i32), I32(d as i32)],
    )
}

/// `y = rmsnorm(inp + residual) · w`; with a residual, the sum goes to `x_out`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_fwd(
    dev: &mut dyn Device,
    y: DevicePtr,
    rstd: DevicePtr,
    x_out: Option<DevicePtr>,
    inp: DevicePtr,
    residual: Option<DevicePtr>,
    w: DevicePtr,
    rows: usize,
    d: usize,
    eps: f32,
) -> Result<()> {
    let null = DevicePtr(0);
    dev.launch(
        "rmsnorm_fwd",
        LaunchConfig::linear(rows as u32, THREADS),
        &[Ptr(y), Ptr(rstd), Ptr(x_out.unwrap_or(null)), Ptr(inp), Ptr(residual.unwrap_or(null)), Ptr(w), I32(rows as i32), I32(d as i32), F32(eps)],
    )
}

/// `dx` (+)= the input gradient (added when `accumulate`), and `dw` += the
/// weight gradient, a sum over rows in a fixed order (`rmsnorm_bwd_dw`).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_bwd(dev: &mut dyn Device, dx: DevicePtr, dw: DevicePtr, dy: DevicePtr, x: DevicePtr, w: DevicePtr, rstd: DevicePtr, rows: usize, d: usize, accumulate: bool) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    dev.launch(
        "rmsnorm_bwd",
        LaunchConfig::linear(rows as u32, THREADS),
        &[Ptr(dx), Ptr(dy), Ptr(x), Ptr(w), Ptr(rstd), I32(rows as i32), I32(d as i32), I32(accumulate as i32)],
    )?;
    // A block per 32 columns; its 32 warps split the rows.
    dev.launch("rmsnorm_bwd_dw", LaunchConfig::linear(d.div_ceil(32) as u32, 1024), &[Ptr(dw), Ptr(dy), Ptr(x), Ptr(rstd), I32(rows as i32), I32(d as i32)])
}

#[allow(clippy::too_many_arguments)]
fn rope(dev: &mut dyn Device, f: &str, x: DevicePtr, pos: DevicePtr, cos: DevicePtr, sin: DevicePtr, n: usize, heads: usize, half: usize) -> Result<()> {
    let total = (n * heads * half) as u64;
    dev.launch(
        f,
        LaunchConfig::linear(blocks_for(total, THREADS as u64, u32::MAX as u64), THREADS),
        &[Ptr(x), Ptr(pos), Ptr(cos), Ptr(sin), I32(n as i32), I32(heads as i32), I32(half as i32)],
    )
}

/// In place on `x` `[n, heads, 2·half]`; `cos`/`sin` are `[positions, half]`.
#[allow(clippy::too_many_arguments)]
pub fn rope_fwd(dev: &mut dyn Device, x: DevicePtr, pos: DevicePtr, cos: DevicePtr, sin: DevicePtr, n: usize, heads: usize, half: usize) -> Result<()> {
    rope(dev, "rope_fwd", x, pos, cos, sin, n, heads, half)
}

#[allow(clippy::too_many_arguments)]
pub fn rope_bwd(dev: &mut dyn Device, dx: DevicePtr, pos: DevicePtr, cos: DevicePtr, sin: DevicePtr, n: usize, heads: usize, half: usize) -> Result<()> {
    rope(dev, "rope_bwd", dx, pos, cos, sin, n, heads, half)
}

fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig::linear(blocks_for(n as u64, THREADS as u64, 4096), THREADS)
}

pub fn swiglu_fwd(dev: &mut dyn Device, out: DevicePtr, gate: DevicePtr, up: DevicePtr, n: usize) -> Result<()> {
    dev.launch("swiglu_fwd", elementwise(n), &[Ptr(out), Ptr(gate), Ptr(up), I64(n as i64)])
}

pub fn swiglu_bwd(dev: &mut dyn Device, dgate: DevicePtr, dup: DevicePtr, dout: DevicePtr, gate: DevicePtr, up: DevicePtr, n: usize) -> Result<()> {
    dev.launch("swiglu_bwd", elementwise(n), &[Ptr(dgate), Ptr(dup), Ptr(dout), Ptr(gate), Ptr(up), I64(n as i64)])
}

pub fn f32_to_bf16(dev: &mut dyn Device, out: DevicePtr, inp: DevicePtr, n: usize) -> Result<()> {
    dev.launch("f32_to_bf16", elementwise(n), &[Ptr(out), Ptr(inp), I64(n as i64)])
}

pub fn bf16_to_f32(dev: &mut dyn Device, out: DevicePtr, inp: DevicePtr, n: usize) -> Result<()> {
    dev.launch("bf16_to_f32", elementwise(n), &[Ptr(out), Ptr(inp), I64(n as i64)])
}

/// bf16 `out [rows, hd_pad]` = f32 `inp [rows, hd]`, zero past `hd`: q/k/v
/// (and dO) into the attention kernels' layout; a plain cast when equal.
pub fn pad_heads_bf16(dev: &mut dyn Device, out: DevicePtr, inp: DevicePtr, rows: usize, hd: usize, hd_pad: usize) -> Result<()> {
    anyhow::ensure!(hd > 0 && hd <= hd_pad, "pad_heads_bf16: head dim {hd} padded to {hd_pad}");
    dev.launch("pad_heads_bf16", elementwise(rows * hd_pad), &[Ptr(out), Ptr(inp), I64(rows as i64), I32(hd as i32), I32(hd_pad as i32)])
}

/// The first `hd` columns of bf16 `inp [rows, hd_pad]` into `out [rows, hd]`.
pub fn unpad_heads_bf16(dev: &mut dyn Device, out: DevicePtr, inp: DevicePtr, rows: usize, hd: usize, hd_pad: usize) -> Result<()> {
    anyhow::ensure!(hd > 0 && hd <= hd_pad, "unpad_heads_bf16: head dim {hd} from {hd_pad}");
    dev.launch("unpad_heads_bf16", elementwise(rows * hd), &[Ptr(out), Ptr(inp), I64(rows as i64), I32(hd as i32), I32(hd_pad as i32)])
}

/// The first `hd` columns of f32 `inp [rows, hd_pad]` into `out [rows, hd]`.
pub fn unpad_heads_f32(dev: &mut dyn Device, out: DevicePtr, inp: DevicePtr, rows: usize, hd: usize, hd_pad: usize) -> Result<()> {
    anyhow::ensure!(hd > 0 && hd <= hd_pad, "unpad_heads_f32: head dim {hd} from {hd_pad}");
    dev.launch("unpad_heads_f32", elementwise(rows * hd), &[Ptr(out), Ptr(inp), I64(rows as i64), I32(hd as i32), I32(hd_pad as i32)])
}

/// AdamW on fp32 `master`, writing the bf16 copy to `param` when given.
/// `step` counts from 1; the bias corrections are computed here, in f64,
/// exactly as the CPU reference does.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    dev: &mut dyn Device,
    master: DevicePtr,
    param: Option<DevicePtr>,
    grad: DevicePtr,
    m: DevicePtr,
    v: DevicePtr,
    n: usize,
    step: u64,
    hp: crate::backend::cpu::adamw::AdamWParams,
    decay: bool,
) -> Result<()> {
    let bc1 = 1.0 - (hp.beta1 as f64).powi(step as i32);
    let bc2 = 1.0 - (hp.beta2 as f64).powi(step as i32);
    let step_size = (hp.lr as f64 / bc1) as f32;
    let wd = if decay { hp.lr * hp.weight_decay } else { 0.0 };
    dev.launch(
        "adamw_step",
        elementwise(n),
        &[
            Ptr(master),
            Ptr(param.unwrap_or(DevicePtr(0))),
            Ptr(grad),
            Ptr(m),
            Ptr(v),
            I64(n as i64),
            F32(hp.lr),
            F32(hp.beta1),
            F32(hp.beta2),
            F32(hp.eps),
            F32(wd),
            F32(step_size),
            F32(bc2.sqrt() as f32),
        ],
    )
}

/// Σ g² into `out[0]`, through per-block partials in `scratch` (at least
/// `global_norm_blocks(n)` floats). Deterministic: no atomics.
pub fn sum_squares(dev: &mut dyn Device, out: DevicePtr, g: DevicePtr, scratch: DevicePtr, n: usize) -> Result<()> {
    let blocks = global_norm_blocks(n);
    let chunk = (n as u64).div_ceil(blocks as u64).max(1);
    dev.launch("sum_squares_partial", LaunchConfig::linear(blocks, THREADS), &[Ptr(scratch), Ptr(g), I64(n as i64), I64(chunk as i64)])?;
    dev.launch("sum_partials", LaunchConfig::linear(1, THREADS), &[Ptr(out), Ptr(scratch), I32(blocks as i32)])
}

/// `x *= s` in place, `n` floats (the clip's rescale of a gradient).
pub fn scale_f32(dev: &mut dyn Device, x: DevicePtr, s: f32, n: usize) -> Result<()> {
    dev.launch("scale_f32", elementwise(n), &[Ptr(x), F32(s), I64(n as i64)])
}

pub fn global_norm_blocks(n: usize) -> u32 {
    blocks_for(n as u64, 16 * 1024, 1024)
}

/// `c[m,n] = a[m,k] · b[n,k]^T` on the tensor cores (bf16 in, f32 out).
pub fn gemm_bf16_tn(dev: &mut dyn Device, c: DevicePtr, a: DevicePtr, b: DevicePtr, m: usize, n: usize, k: usize) -> Result<()> {
    let cfg = LaunchConfig { grid: (n.div_ceil(64).max(1) as u32, m.div_ceil(64).max(1) as u32, 1), block: (128, 1, 1), shared_bytes: 0 };
    dev.launch("gemm_bf16_tn", cfg, &[Ptr(c), Ptr(a), Ptr(b), I32(m as i32), I32(n as i32), I32(k as i32)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_groups_list_each_ids_rows_in_row_order() {
        let ids = [5u32, 2, 5, 9, 2, 5];
        let (order, starts) = embedding_groups(&ids);
        assert_eq!(order, [1, 4, 0, 2, 5, 3]);
        assert_eq!(starts, [0, 2, 5, 6]);
        for g in starts.windows(2) {
            let rows = &order[g[0] as usize..g[1] as usize];
            assert!(rows.windows(2).all(|r| r[0] < r[1] && ids[r[0] as usize] == ids[r[1] as usize]), "{rows:?}");
        }
        assert_eq!(embedding_groups(&[]), (vec![], vec![0]));
        assert_eq!(embedding_groups(&[7]), (vec![0], vec![0, 1]));
    }
}
