//! The kernel test suite: every GPU kernel against its CPU reference op, at
//! several shapes (including ones that are not multiples of the tile or
//! block sizes). The same checks run on a real GPU (`appliance selftest`),
//! on the simulated device (`appliance selftest --sim`, and the test
//! command), and report max error and time per case.

use super::*;
use crate::backend::cpu;
use crate::backend::cpu::adamw::AdamWParams;
use crate::backend::cpu::gradcheck::random_vec;
use crate::backend::cpu::rope::RopeTable;
use crate::device::{Device, DeviceExt};
use anyhow::ensure;
use half::bf16;
use serde::Serialize;
use std::time::Instant;

/// One kernel at one shape.
#[derive(Clone, Debug, Serialize)]
pub struct KernelCheck {
    pub kernel: String,
    pub shape: String,
    /// Max |device − reference| / max(1, max |reference|).
    pub max_err: f64,
    pub tolerance: f64,
    pub passed: bool,
    pub seconds: f64,
    /// Set when the device failed outright (launch or interpreter error).
    pub error: Option<String>,
}

pub(super) fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let scale = want.iter().fold(1.0f64, |m, &v| m.max(v.abs() as f64));
    let e = got.iter().zip(want).fold(0.0f64, |m, (&a, &b)| {
        let d = (a as f64 - b as f64).abs();
        if d.is_nan() { f64::INFINITY } else { m.max(d) }
    });
    e / scale
}

pub(super) fn bf16_bits(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect()
}

pub(super) type CaseFn<'a> = Box<dyn Fn(&mut dyn Device) -> anyhow::Result<f64> + 'a>;

pub(super) struct Case<'a> {
    pub(super) kernel: &'static str,
    pub(super) shape: String,
    pub(super) tol: f64,
    pub(super) run: CaseFn<'a>,
}

/// Every case of the suite. `quick` keeps only shapes small enough for the
/// interpreter in the test command.
fn cases<'a>(quick: bool) -> Vec<Case<'a>> {
    let mut v: Vec<Case> = vec![];
    let big = !quick;
    // Embedding.
    for &(n, d, vocab) in [(5usize, 64usize, 17usize), (33, 100, 50)].iter().chain(if big { &[(1024usize, 896usize, 4096usize)][..] } else { &[] }) {
        // Ids from an eighth of the vocabulary: they repeat, so the
        // backward's groups hold several rows each.
        let distinct = (vocab / 8).max(2);
        let ids: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % distinct) as u32).collect();
        let table = random_vec(vocab * d, 1);
        let dout = random_vec(n * d, 2);
        let (ids2, table2) = (ids.clone(), table.clone());
        v.push(Case {
            kernel: "embedding_fwd",
            shape: format!("n={n} d={d}"),
            tol: 0.0,
            run: Box::new(move |dev| {
                let (t, i, o) = (dev.upload_f32(&table2)?, dev.upload_u32(&ids2)?, dev.zeros(n * d * 4)?);
                embedding_fwd(dev, o, t, i, n, d)?;
                let got = dev.download_f32(o, n * d)?;
                let mut want = vec![0.0; n * d];
                cpu::embedding::embedding_fwd(&mut want, &table2, &ids2, d);
                Ok(rel_err(&got, &want))
            }),
        });
        v.push(Case {
            kernel: "embedding_bwd",
            shape: format!("n={n} d={d} ids<{distinct} (+ bitwise repeat)"),
            tol: 1e-6,
            run: Box::new(move |dev| {
                // Onto a table that already holds gradient (accumulation).
                let start = random_vec(vocab * d, 3);
                let (order, starts) = embedding_groups(&ids);
                let (g, i, o, st) = (dev.upload_f32(&dout)?, dev.upload_u32(&ids)?, dev.upload_u32(&order)?, dev.upload_u32(&starts)?);
                let run = |dev: &mut dyn Device| -> Result<Vec<f32>> {
                    let dt = dev.upload_f32(&start)?;
                    embedding_bwd(dev, dt, g, i, o, st, starts.len() - 1, d)?;
                    dev.download_f32(dt, vocab * d)
                };
                let (got, again) = (run(dev)?, run(dev)?);
                ensure!(got.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()), "two runs differ bitwise");
                let mut want = start.clone();
                cpu::embedding::embedding_bwd(&mut want, &dout, &ids, d);
                Ok(rel_err(&got, &want))
            }),
        });
    }
    // RMSNorm with and without the fused residual, and its backward.
    for &(rows, d) in [(1usize, 64usize), (7, 100), (33, 257)].iter().chain(if big { &[(512usize, 3584usize)][..] } else { &[] }) {
        let x = random_vec(rows * d, 3);
        let r = random_vec(rows * d, 4);
        let w: Vec<f32> = random_vec(d, 5).iter().map(|v| 1.0 + 0.5 * v).collect();
        let dy = random_vec(rows * d, 6);
        let eps = 1e-6;
        for fused in [false, true] {
            let (x, r, w) = (x.clone(), r.clone(), w.clone());
            v.push(Case {
                kernel: "rmsnorm_fwd",
                shape: format!("rows={rows} d={d}{}", if fused { " +residual" } else { "" }),
                tol: 1e-5,
                run: Box::new(move |dev| {
                    let (xi, ri, wi) = (dev.upload_f32(&x)?, dev.upload_f32(&r)?, dev.upload_f32(&w)?);
                    let (y, rs, xo) = (dev.zeros(rows * d * 4)?, dev.zeros(rows * 4)?, dev.zeros(rows * d * 4)?);
                    rmsnorm_fwd(dev, y, rs, fused.then_some(xo), xi, fused.then_some(ri), wi, rows, d, eps)?;
                    let sum: Vec<f32> = if fused { x.iter().zip(&r).map(|(a, b)| a + b).collect() } else { x.clone() };
                    let (mut wy, mut wr) = (vec![0.0; rows * d], vec![0.0; rows]);
                    cpu::rmsnorm::rmsnorm_fwd(&mut wy, &mut wr, &sum, &w, d, eps);
                    let mut e = rel_err(&dev.download_f32(y, rows * d)?, &wy).max(rel_err(&dev.download_f32(rs, rows)?, &wr));
                    if fused {
                        e = e.max(rel_err(&dev.download_f32(xo, rows * d)?, &sum));
                    }
                    Ok(e)
                }),
            });
        }
        // The launcher runs both kernels; one check reads dx, the other dw
        // (added onto a gradient already there, as over micro-batches).
        for dw_check in [false, true] {
            let (x, w, dy) = (x.clone(), w.clone(), dy.clone());
            v.push(Case {
                kernel: if dw_check { "rmsnorm_bwd_dw" } else { "rmsnorm_bwd" },
                shape: format!("rows={rows} d={d}{}", if dw_check { " onto a gradient (+ bitwise repeat)" } else { "" }),
                tol: 2e-5,
                run: Box::new(move |dev| {
                    let (mut wy, mut wr) = (vec![0.0; rows * d], vec![0.0; rows]);
                    cpu::rmsnorm::rmsnorm_fwd(&mut wy, &mut wr, &x, &w, d, eps);
                    let dw0 = if dw_check { random_vec(d, 7) } else { vec![0.0; d] };
                    let (xi, wi, dyi, rsi) = (dev.upload_f32(&x)?, dev.upload_f32(&w)?, dev.upload_f32(&dy)?, dev.upload_f32(&wr)?);
                    let run = |dev: &mut dyn Device| -> Result<(Vec<f32>, Vec<f32>)> {
                        let (dx, dw) = (dev.zeros(rows * d * 4)?, dev.upload_f32(&dw0)?);
                        rmsnorm_bwd(dev, dx, dw, dyi, xi, wi, rsi, rows, d, false)?;
                        Ok((dev.download_f32(dx, rows * d)?, dev.download_f32(dw, d)?))
                    };
                    let (mut wdx, mut wdw) = (vec![0.0; rows * d], dw0.clone());
                    cpu::rmsnorm::rmsnorm_bwd(&mut wdx, &mut wdw, &dy, &x, &w, &wr, d, false);
                    let (dx, dw) = run(dev)?;
                    if !dw_check {
                        return Ok(rel_err(&dx, &wdx));
                    }
                    let (_, dw_again) = run(dev)?;
                    ensure!(dw.iter().zip(&dw_again).all(|(a, b)| a.to_bits() == b.to_bits()), "two runs' weight gradients differ bitwise");
                    Ok(rel_err(&dw, &wdw))
                }),
            });
        }
    }
    // RoPE with a YaRN table, forward and backward.
    for &(n, heads, half) in [(3usize, 2usize, 4usize), (19, 4, 32)].iter().chain(if big { &[(2048usize, 28usize, 64usize)][..] } else { &[] }) {
        let cfg_text = format!(
            r#"{{"vocab_size":8,"hidden_size":{h},"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":{heads},
               "num_key_value_heads":{heads},"max_position_embeddings":4096,
               "rope_scaling":{{"type":"yarn","factor":4.0,"original_max_position_embeddings":1024}}}}"#,
            h = heads * 2 * half
        );
        let cfg = crate::model::ModelConfig::from_json_str(&cfg_text, "rope check").expect("valid");
        let (inv, af) = cfg.rope_inv_freq();
        let pos: Vec<u32> = (0..n).map(|i| ((i * 131) % 4000) as u32).collect();
        let table = RopeTable::new(inv, af, 4000);
        let x = random_vec(n * heads * 2 * half, 7);
        for bwd in [false, true] {
            let (pos, table, x) = (pos.clone(), table.clone(), x.clone());
            v.push(Case {
                kernel: if bwd { "rope_bwd" } else { "rope_fwd" },
                shape: format!("n={n} heads={heads} head_dim={} yarn", 2 * half),
                tol: 1e-5,
                run: Box::new(move |dev| {
                    let (xi, pi, ci, si) = (dev.upload_f32(&x)?, dev.upload_u32(&pos)?, dev.upload_f32(&table.cos)?, dev.upload_f32(&table.sin)?);
                    let mut want = x.clone();
                    if bwd {
                        rope_bwd(dev, xi, pi, ci, si, n, heads, half)?;
                        cpu::rope::rope_bwd(&mut want, &pos, heads, &table);
                    } else {
                        rope_fwd(dev, xi, pi, ci, si, n, heads, half)?;
                        cpu::rope::rope_fwd(&mut want, &pos, heads, &table);
                    }
                    Ok(rel_err(&dev.download_f32(xi, x.len())?, &want))
                }),
            });
        }
    }
    // SwiGLU.
    for &n in [1usize, 1000].iter().chain(if big { &[4 * 18944usize][..] } else { &[] }) {
        let gate: Vec<f32> = random_vec(n, 8).iter().map(|x| 4.0 * x).collect();
        let up = random_vec(n, 9);
        let dout = random_vec(n, 10);
        let (g2, u2) = (gate.clone(), up.clone());
        v.push(Case {
            kernel: "swiglu_fwd",
            shape: format!("n={n}"),
            tol: 1e-5,
            run: Box::new(move |dev| {
                let (gi, ui, o) = (dev.upload_f32(&g2)?, dev.upload_f32(&u2)?, dev.zeros(n * 4)?);
                swiglu_fwd(dev, o, gi, ui, n)?;
                let mut want = vec![0.0; n];
                cpu::swiglu::swiglu_fwd(&mut want, &g2, &u2);
                Ok(rel_err(&dev.download_f32(o, n)?, &want))
            }),
        });
        v.push(Case {
            kernel: "swiglu_bwd",
            shape: format!("n={n}"),
            tol: 1e-5,
            run: Box::new(move |dev| {
                let (gi, ui, di) = (dev.upload_f32(&gate)?, dev.upload_f32(&up)?, dev.upload_f32(&dout)?);
                let (dg, du) = (dev.zeros(n * 4)?, dev.zeros(n * 4)?);
                swiglu_bwd(dev, dg, du, di, gi, ui, n)?;
                let (mut wg, mut wu) = (vec![0.0; n], vec![0.0; n]);
                cpu::swiglu::swiglu_bwd(&mut wg, &mut wu, &dout, &gate, &up);
                Ok(rel_err(&dev.download_f32(dg, n)?, &wg).max(rel_err(&dev.download_f32(du, n)?, &wu)))
            }),
        });
    }
    // Casts: exact (round to nearest even), including ties and specials.
    for &n in [9usize, 1000].iter().chain(if big { &[1usize << 20][..] } else { &[] }) {
        let mut x: Vec<f32> = random_vec(n, 11).iter().map(|v| v * 1000.0).collect();
        let specials = [0.0f32, -0.0, 1.0 + f32::EPSILON * 64.0, f32::MAX, f32::MIN_POSITIVE, 1e-40, f32::INFINITY, -f32::INFINITY];
        for (i, s) in specials.iter().enumerate().take(n) {
            x[i] = *s;
        }
        let x2 = x.clone();
        v.push(Case {
            kernel: "f32_to_bf16",
            shape: format!("n={n}"),
            tol: 0.0,
            run: Box::new(move |dev| {
                let (xi, o) = (dev.upload_f32(&x2)?, dev.zeros(n * 2)?);
                f32_to_bf16(dev, o, xi, n)?;
                let got = dev.download_u16(o, n)?;
                let want = bf16_bits(&x2);
                Ok(got.iter().zip(&want).filter(|(a, b)| a != b).count() as f64)
            }),
        });
        v.push(Case {
            kernel: "bf16_to_f32",
            shape: format!("n={n}"),
            tol: 0.0,
            run: Box::new(move |dev| {
                let bits = bf16_bits(&x);
                let (bi, o) = (dev.upload_u16(&bits)?, dev.zeros(n * 4)?);
                bf16_to_f32(dev, o, bi, n)?;
                let got = dev.download_f32(o, n)?;
                Ok(got.iter().zip(&bits).filter(|(a, b)| a.to_bits() != bf16::from_bits(**b).to_f32().to_bits()).count() as f64)
            }),
        });
    }
    // Head padding (exact: a bf16 rounding and copies).
    for &(rows, hd, hd_pad) in &[(5usize, 32usize, 64usize), (37, 64, 64), (3, 24, 128)] {
        let x: Vec<f32> = random_vec(rows * hd_pad, 31).iter().map(|v| 10.0 * v).collect();
        v.push(Case {
            kernel: "pad_heads_bf16",
            shape: format!("rows={rows} hd={hd}->{hd_pad}"),
            tol: 0.0,
            run: Box::new({
                let x = x[..rows * hd].to_vec();
                move |dev| {
                    let (xi, o) = (dev.upload_f32(&x)?, dev.upload_f32(&vec![f32::NAN; rows * hd_pad / 2 + 1])?);
                    pad_heads_bf16(dev, o, xi, rows, hd, hd_pad)?;
                    let got = dev.download_u16(o, rows * hd_pad)?;
                    Ok(got.iter().zip(&cpu::head_pad::pad_heads_bf16(&x, hd, hd_pad)).filter(|(a, b)| a != b).count() as f64)
                }
            }),
        });
        let bits = bf16_bits(&x);
        v.push(Case {
            kernel: "unpad_heads_bf16",
            shape: format!("rows={rows} hd={hd_pad}->{hd}"),
            tol: 0.0,
            run: Box::new(move |dev| {
                let (xi, o) = (dev.upload_u16(&bits)?, dev.zeros(rows * hd * 2)?);
                unpad_heads_bf16(dev, o, xi, rows, hd, hd_pad)?;
                let got = dev.download_u16(o, rows * hd)?;
                Ok(got.iter().zip(&cpu::head_pad::unpad_heads(&bits, hd, hd_pad)).filter(|(a, b)| a != b).count() as f64)
            }),
        });
        v.push(Case {
            kernel: "unpad_heads_f32",
            shape: format!("rows={rows} hd={hd_pad}->{hd}"),
            tol: 0.0,
            run: Box::new(move |dev| {
                let (xi, o) = (dev.upload_f32(&x)?, dev.zeros(rows * hd * 4)?);
                unpad_heads_f32(dev, o, xi, rows, hd, hd_pad)?;
                let got = dev.download_f32(o, rows * hd)?;
                Ok(got.iter().zip(&cpu::head_pad::unpad_heads(&x, hd, hd_pad)).filter(|(a, b)| a.to_bits() != b.to_bits()).count() as f64)
            }),
        });
    }
    // AdamW on fp32 master weights with the bf16 copy.
    for &n in [7usize, 3000].iter().chain(if big { &[1usize << 22][..] } else { &[] }) {
        let p0 = random_vec(n, 12);
        let g = random_vec(n, 13);
        v.push(Case {
            kernel: "adamw_step",
            shape: format!("n={n} 3 steps"),
            tol: 1e-6,
            run: Box::new(move |dev| {
                let hp = AdamWParams { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
                let (pm, pb, gi, m, vv) = (dev.upload_f32(&p0)?, dev.zeros(n * 2)?, dev.upload_f32(&g)?, dev.zeros(n * 4)?, dev.zeros(n * 4)?);
                let (mut wp, mut wm, mut wv) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
                for step in 1..=3 {
                    adamw_step(dev, pm, Some(pb), gi, m, vv, n, step, hp, true)?;
                    cpu::adamw::adamw_step(&mut wp, &g, &mut wm, &mut wv, step, hp, true);
                }
                let master = dev.download_f32(pm, n)?;
                let copy = dev.download_u16(pb, n)?;
                let copy_mismatch = copy.iter().zip(&master).filter(|(b, m)| **b != bf16::from_f32(**m).to_bits()).count();
                Ok(rel_err(&master, &wp) + copy_mismatch as f64)
            }),
        });
    }
    // Global norm (sum of squares, f32 on the device vs f64 reference).
    for &n in [1usize, 5000, 70_001].iter().chain(if big { &[1usize << 24][..] } else { &[] }) {
        let g = random_vec(n, 14);
        v.push(Case {
            kernel: "global_norm",
            shape: format!("n={n}"),
            tol: 1e-5,
            run: Box::new(move |dev| {
                let blocks = global_norm_blocks(n) as usize;
                let (gi, out, scratch) = (dev.upload_f32(&g)?, dev.zeros(4)?, dev.zeros(blocks * 4)?);
                sum_squares(dev, out, gi, scratch, n)?;
                let got = dev.download_f32(out, 1)?[0] as f64;
                let want = cpu::adamw::sum_squares(&g);
                Ok((got - want).abs() / want.max(1.0))
            }),
        });
    }
    // The clip's rescale: exact (one f32 multiply per element).
    for &n in [3usize, 70_001].iter() {
        let x = random_vec(n, 17);
        v.push(Case {
            kernel: "scale_f32",
            shape: format!("n={n}"),
            tol: 0.0,
            run: Box::new(move |dev| {
                let xi = dev.upload_f32(&x)?;
                scale_f32(dev, xi, 0.37, n)?;
                let mut want = x.clone();
                cpu::adamw::scale(&mut want, 0.37);
                let got = dev.download_f32(xi, n)?;
                Ok(got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count() as f64)
            }),
        });
    }
    // Tensor-core GEMM (bf16 in, f32 accumulate) vs the CPU on the same
    // bf16-rounded inputs.
    for &(m, n, k) in [(16usize, 8usize, 16usize), (70, 50, 40), (64, 64, 33)].iter().chain(if big { &[(1024usize, 1024usize, 1024usize)][..] } else { &[] }) {
        let a: Vec<f32> = random_vec(m * k, 15).iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
        let b: Vec<f32> = random_vec(n * k, 16).iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
        let (a2, b2) = (a.clone(), b.clone());
        v.push(Case {
            kernel: "gemm_bf16_tn",
            shape: format!("{m}x{n}x{k}"),
            tol: 1e-5,
            run: Box::new(move |dev| {
                let (ai, bi, c) = (dev.upload_u16(&bf16_bits(&a2))?, dev.upload_u16(&bf16_bits(&b2))?, dev.zeros(m * n * 4)?);
                gemm_bf16_tn(dev, c, ai, bi, m, n, k)?;
                let mut want = vec![0.0; m * n];
                cpu::matmul::matmul_naive(&mut want, &a2, &b2, m, k, n, false, true, false);
                Ok(rel_err(&dev.download_f32(c, m * n)?, &want))
            }),
        });
        v.push(Case {
            kernel: "gemm_f32 (device BLAS)",
            shape: format!("{m}x{n}x{k}"),
            tol: 1e-5,
            run: Box::new(move |dev| {
                let (ai, bi, c) = (dev.upload_f32(&a)?, dev.upload_f32(&b)?, dev.zeros(m * n * 4)?);
                dev.gemm_f32_nt(c, ai, bi, m, n, k)?;
                let mut want = vec![0.0; m * n];
                cpu::matmul::matmul_naive(&mut want, &a, &b, m, k, n, false, true, false);
                Ok(rel_err(&dev.download_f32(c, m * n)?, &want))
            }),
        });
    }
    v.extend(super::flash_attn::cases(quick));
    v.extend(super::flash_attn_bwd::cases(quick));
    v.extend(super::decode_attn::cases(quick).into_iter().chain(super::attn_merge::cases(quick)));
    v.extend(super::logprob::cases(quick));
    v.extend(super::dapo_loss::cases(quick));
    v.extend(super::blas::cases(quick));
    // Host copies: below the CUDA device's staging threshold, one staging
    // half, and several halves with an odd tail. The whole buffer goes up
    // and comes back; small windows (copied directly) check the upload on
    // its own at the start, across a 16 MiB half boundary and at the end.
    for bytes in [3usize, (1 << 20) + 4, (40 << 20) + 12] {
        v.push(Case {
            kernel: "host_copy",
            shape: format!("{bytes} bytes"),
            tol: 0.0,
            run: Box::new(move |dev| {
                let src: Vec<u8> = (0..bytes).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
                let p = dev.alloc(bytes)?;
                dev.copy_h2d(p, &src)?;
                let mut bad = 0usize;
                for off in [0usize, (16 << 20) - 8, bytes.saturating_sub(64)] {
                    if off >= bytes {
                        continue;
                    }
                    let mut window = vec![0u8; 64.min(bytes - off)];
                    dev.copy_d2h(p.offset(off), &mut window)?;
                    bad += window.iter().zip(&src[off..]).filter(|(a, b)| a != b).count();
                }
                let mut back = vec![0u8; bytes];
                dev.copy_d2h(p, &mut back)?;
                bad += back.iter().zip(&src).filter(|(a, b)| a != b).count();
                dev.free(p)?;
                Ok(bad as f64)
            }),
        });
    }
    v
}

/// Run every case on `dev`. `quick` drops the large shapes (for the
/// interpreter); a GPU runs them all.
pub fn run_all(dev: &mut dyn Device, quick: bool, filter: Option<&str>) -> Vec<KernelCheck> {
    run_each(dev, quick, filter, |_| {})
}

/// [`run_all`], calling `each` as every case finishes (so a long run on a
/// GPU, whose big shapes' CPU references take minutes, reports as it goes).
pub fn run_each(dev: &mut dyn Device, quick: bool, filter: Option<&str>, mut each: impl FnMut(&KernelCheck)) -> Vec<KernelCheck> {
    let mut out = vec![];
    for c in cases(quick) {
        if let Some(f) = filter {
            if !c.kernel.contains(f) {
                continue;
            }
        }
        let start = Instant::now();
        let r = (c.run)(dev).and_then(|e| dev.synchronize().map(|_| e));
        let seconds = start.elapsed().as_secs_f64();
        let (max_err, error) = match r {
            Ok(e) => (e, None),
            Err(e) => (f64::INFINITY, Some(format!("{e:#}"))),
        };
        let check = KernelCheck {
            kernel: c.kernel.to_string(),
            shape: c.shape,
            max_err,
            tolerance: c.tol,
            passed: error.is_none() && max_err <= c.tol,
            seconds,
            error,
        };
        each(&check);
        out.push(check);
    }
    out
}
