//! Launchers of the fp32 merge of two partial attention results
//! (cuda/attn_merge.cu), forward and backward, and their kernel-suite cases.
//!
//! Owns: launch geometry and argument validation of `attn_merge_fwd` /
//! `attn_merge_bwd`. Does not own the math (the kernels; CPU reference
//! `cpu::attention_merge`) nor where the partials come from (ring steps,
//! decode splits).
//!
//! Design: one warp per row of `hd` floats, 8 rows per 256-thread block;
//! memory-bound. Timing on a GPU: `attn_merge_fwd_bytes` /
//! `attn_merge_bwd_bytes` are the bytes each call moves; divide by the time.

use super::checks::{rel_err, Case};
use crate::backend::cpu;
use crate::backend::cpu::gradcheck::random_vec;
use crate::device::{Device, DeviceExt, DevicePtr, KernelArg::*, LaunchConfig};
use anyhow::{ensure, Context, Result};

const THREADS: u32 = 256;
const ROWS_PER_BLOCK: usize = THREADS as usize / 32;

fn geometry(rows: usize, hd: usize, what: &str) -> Result<LaunchConfig> {
    ensure!(rows >= 1 && hd >= 1, "{what}: empty shape rows={rows} hd={hd}");
    ensure!(rows <= i32::MAX as usize && hd <= i32::MAX as usize, "{what}: rows={rows} hd={hd} beyond i32");
    let blocks = rows.div_ceil(ROWS_PER_BLOCK);
    ensure!(blocks <= i32::MAX as usize, "{what}: {rows} rows exceed the grid");
    Ok(LaunchConfig::linear(blocks as u32, THREADS))
}

/// Bytes moved by one `attn_merge_fwd` (f32): reads two parts, writes one.
pub fn attn_merge_fwd_bytes(rows: usize, hd: usize) -> u64 {
    (3 * rows * (hd + 1) * 4) as u64
}

/// Bytes moved by one `attn_merge_bwd` (f32): reads dO, dLSE, both parts and
/// the merged result, writes both parts' gradients.
pub fn attn_merge_bwd_bytes(rows: usize, hd: usize) -> u64 {
    (8 * rows * (hd + 1) * 4) as u64
}

/// `(out, lse) = merge((a_out, a_lse), (b_out, b_lse))`, out of place: O f32
/// `[rows, hd]`, LSE f32 `[rows]`. A part with LSE -inf contributes nothing
/// (its O is not read); both -inf give O = 0, LSE = -inf.
#[allow(clippy::too_many_arguments)]
pub fn attn_merge_fwd(
    dev: &mut dyn Device,
    out: DevicePtr,
    lse: DevicePtr,
    a_out: DevicePtr,
    a_lse: DevicePtr,
    b_out: DevicePtr,
    b_lse: DevicePtr,
    rows: usize,
    hd: usize,
) -> Result<()> {
    let cfg = geometry(rows, hd, "attn_merge_fwd")?;
    dev.launch("attn_merge_fwd", cfg, &[Ptr(out), Ptr(lse), Ptr(a_out), Ptr(a_lse), Ptr(b_out), Ptr(b_lse), I32(rows as i32), I32(hd as i32)])
        .with_context(|| format!("attn_merge_fwd rows={rows} hd={hd}"))
}

/// Gradients of `attn_merge_fwd` with respect to both parts, from `dout`
/// (and `dlse`, None = 0), the forward's inputs and its outputs `out`, `lse`.
/// All four outputs are overwritten (not accumulated).
#[allow(clippy::too_many_arguments)]
pub fn attn_merge_bwd(
    dev: &mut dyn Device,
    da_out: DevicePtr,
    da_lse: DevicePtr,
    db_out: DevicePtr,
    db_lse: DevicePtr,
    dout: DevicePtr,
    dlse: Option<DevicePtr>,
    a_out: DevicePtr,
    a_lse: DevicePtr,
    b_out: DevicePtr,
    b_lse: DevicePtr,
    out: DevicePtr,
    lse: DevicePtr,
    rows: usize,
    hd: usize,
) -> Result<()> {
    let cfg = geometry(rows, hd, "attn_merge_bwd")?;
    dev.launch(
        "attn_merge_bwd",
        cfg,
        &[
            Ptr(da_out),
            Ptr(da_lse),
            Ptr(db_out),
            Ptr(db_lse),
            Ptr(dout),
            Ptr(dlse.unwrap_or(DevicePtr(0))),
            Ptr(a_out),
            Ptr(a_lse),
            Ptr(b_out),
            Ptr(b_lse),
            Ptr(out),
            Ptr(lse),
            I32(rows as i32),
            I32(hd as i32),
        ],
    )
    .with_context(|| format!("attn_merge_bwd rows={rows} hd={hd}"))
}

/// Two parts over `rows` rows whose LSEs include -inf in a, in b and in
/// both (rows 1, 2, 3 mod 7), with NaN in the O of every -inf part: the
/// kernel must not read it.
fn parts(rows: usize, hd: usize, seed: u64) -> [Vec<f32>; 4] {
    let mut ao = random_vec(rows * hd, seed);
    let mut bo = random_vec(rows * hd, seed + 1);
    let mut al: Vec<f32> = random_vec(rows, seed + 2).iter().map(|x| 4.0 * x).collect();
    let mut bl: Vec<f32> = random_vec(rows, seed + 3).iter().map(|x| 4.0 * x).collect();
    for r in 0..rows {
        let (ka, kb) = (r % 7 == 1 || r % 7 == 3, r % 7 == 2 || r % 7 == 3);
        if ka {
            al[r] = f32::NEG_INFINITY;
            ao[r * hd..(r + 1) * hd].fill(f32::NAN);
        }
        if kb {
            bl[r] = f32::NEG_INFINITY;
            bo[r * hd..(r + 1) * hd].fill(f32::NAN);
        }
    }
    [ao, al, bo, bl]
}

/// Like `rel_err`, but -inf must match -inf exactly (counted as an error of 1 each otherwise).
fn err_inf(got: &[f32], want: &[f32]) -> f64 {
    let mismatch = got.iter().zip(want).filter(|(g, w)| (g.is_infinite() || w.is_infinite()) && g != w).count();
    let fin = |v: &[f32]| v.iter().map(|&x| if x.is_infinite() { 0.0 } else { x }).collect::<Vec<f32>>();
    rel_err(&fin(got), &fin(want)) + mismatch as f64
}

pub(super) fn cases<'a>(quick: bool) -> Vec<Case<'a>> {
    let mut v: Vec<Case> = vec![];
    let shapes: &[(usize, usize)] = if quick { &[(1, 64), (37, 128), (200, 64)] } else { &[(1, 64), (37, 128), (200, 64), (131_072 * 8, 128)] };
    for &(rows, hd) in shapes {
        let [ao, al, bo, bl] = parts(rows, hd, 40 + rows as u64);
        let (ao2, al2, bo2, bl2) = (ao.clone(), al.clone(), bo.clone(), bl.clone());
        v.push(Case {
            kernel: "attn_merge_fwd",
            shape: format!("rows={rows} hd={hd} with -inf parts"),
            tol: 2e-6,
            run: Box::new(move |dev| {
                let (a, la, b, lb) = (dev.upload_f32(&ao2)?, dev.upload_f32(&al2)?, dev.upload_f32(&bo2)?, dev.upload_f32(&bl2)?);
                let (o, l) = (dev.zeros(rows * hd * 4)?, dev.zeros(rows * 4)?);
                attn_merge_fwd(dev, o, l, a, la, b, lb, rows, hd)?;
                let (mut wo, mut wl) = (vec![0.0; rows * hd], vec![0.0; rows]);
                cpu::attention_merge::merge_fwd(&mut wo, &mut wl, &ao2, &al2, &bo2, &bl2, hd);
                Ok(rel_err(&dev.download_f32(o, rows * hd)?, &wo).max(err_inf(&dev.download_f32(l, rows)?, &wl)))
            }),
        });
        for with_dlse in [true, false] {
            let (ao, al, bo, bl) = (ao.clone(), al.clone(), bo.clone(), bl.clone());
            let dout = random_vec(rows * hd, 90);
            let dl = random_vec(rows, 91);
            v.push(Case {
                kernel: "attn_merge_bwd",
                shape: format!("rows={rows} hd={hd} with -inf parts{}", if with_dlse { " +dLSE" } else { "" }),
                tol: 2e-6,
                run: Box::new(move |dev| {
                    let (mut mo, mut ml) = (vec![0.0; rows * hd], vec![0.0; rows]);
                    cpu::attention_merge::merge_fwd(&mut mo, &mut ml, &ao, &al, &bo, &bl, hd);
                    let (a, la, b, lb) = (dev.upload_f32(&ao)?, dev.upload_f32(&al)?, dev.upload_f32(&bo)?, dev.upload_f32(&bl)?);
                    let (o, l, g, gl) = (dev.upload_f32(&mo)?, dev.upload_f32(&ml)?, dev.upload_f32(&dout)?, dev.upload_f32(&dl)?);
                    let (dao, dal, dbo, dbl) = (dev.zeros(rows * hd * 4)?, dev.zeros(rows * 4)?, dev.zeros(rows * hd * 4)?, dev.zeros(rows * 4)?);
                    attn_merge_bwd(dev, dao, dal, dbo, dbl, g, with_dlse.then_some(gl), a, la, b, lb, o, l, rows, hd)?;
                    let (mut wao, mut wal, mut wbo, mut wbl) = (vec![0.0; rows * hd], vec![0.0; rows], vec![0.0; rows * hd], vec![0.0; rows]);
                    cpu::attention_merge::merge_bwd(&mut wao, &mut wal, &mut wbo, &mut wbl, &dout, with_dlse.then_some(&dl[..]), &ao, &al, &bo, &bl, &mo, &ml, hd);
                    let e = rel_err(&dev.download_f32(dao, rows * hd)?, &wao)
                        .max(rel_err(&dev.download_f32(dal, rows)?, &wal))
                        .max(rel_err(&dev.download_f32(dbo, rows * hd)?, &wbo))
                        .max(rel_err(&dev.download_f32(dbl, rows)?, &wbl));
                    Ok(e)
                }),
            });
        }
    }
    v
}
