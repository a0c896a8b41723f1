//! The `kernels` suite: time per op and achieved bandwidth (GB/s) or
//! throughput (GFLOP/s). On a GPU it times the embedded PTX kernels and
//! cuBLAS; on the CPU it times the reference ops of the CPU backend.

use super::{measure, Row};
use crate::backend::cpu;
use crate::backend::cpu::attention::AttnShape;
use crate::backend::cpu::gradcheck::random_vec;
use crate::backend::gpu;
use crate::device::{Device, DeviceExt};
use anyhow::Result;

pub fn run_cpu(repeats: usize) -> Result<Vec<Row>> {
    let mut rows = vec![];
    let (m, k, n) = (512, 512, 512);
    let (a, b) = (random_vec(m * k, 1), random_vec(k * n, 2));
    let mut c = vec![0.0; m * n];
    rows.push(measure("kernels", "cpu matmul 512x512x512", "GFLOP/s", repeats, false, true, || {
        cpu::matmul::matmul(&mut c, &a, &b, m, k, n, false, true, false);
        Ok(2.0 * (m * k * n) as f64 / 1e9)
    })?);
    let (rowsn, d) = (4096, 1024);
    let x = random_vec(rowsn * d, 3);
    let w = vec![1.0; d];
    let (mut y, mut r) = (vec![0.0; rowsn * d], vec![0.0; rowsn]);
    rows.push(measure("kernels", "cpu rmsnorm_fwd 4096x1024", "GB/s", repeats, false, true, || {
        cpu::rmsnorm::rmsnorm_fwd(&mut y, &mut r, &x, &w, d, 1e-6);
        Ok((2 * rowsn * d * 4) as f64 / 1e9)
    })?);
    let n = 1 << 22;
    let (g, u) = (random_vec(n, 4), random_vec(n, 5));
    let mut o = vec![0.0; n];
    rows.push(measure("kernels", "cpu swiglu_fwd 4M", "GB/s", repeats, false, true, || {
        cpu::swiglu::swiglu_fwd(&mut o, &g, &u);
        Ok((3 * n * 4) as f64 / 1e9)
    })?);
    let s = AttnShape { heads: 8, kv_heads: 2, head_dim: 64 };
    let t = 512;
    let (q, kk, v) = (random_vec(t * 512, 6), random_vec(t * 128, 7), random_vec(t * 128, 8));
    let (mut out, mut lse) = (vec![0.0; t * 512], vec![0.0; t * 8]);
    rows.push(measure("kernels", "cpu attention_fwd T=512 8/2 heads d=64", "GFLOP/s", repeats, false, true, || {
        cpu::attention::attention_fwd(&mut out, &mut lse, &q, &kk, &v, std::slice::from_ref(&(0..t)), s);
        // Causal: about half of 4·T²·heads·d.
        Ok(2.0 * (t * t * 8 * 64) as f64 / 1e9)
    })?);
    let (tok, hid, vocab) = (1024, 256, 8192);
    let (hdn, lm) = (random_vec(tok * hid, 9), random_vec(vocab * hid, 10));
    let tg: Vec<u32> = (0..tok).map(|i| (i * 13 % vocab) as u32).collect();
    rows.push(measure("kernels", "cpu logprob_entropy 1024 tok, vocab 8192", "tokens/s", repeats, true, true, || {
        cpu::logprob::logprob_entropy_fwd(&hdn, &lm, &tg, hid, vocab, 2048);
        Ok(tok as f64)
    })?);
    Ok(rows)
}

/// Time the device kernels; each closure synchronizes so time is real.
pub fn run_device(dev: &mut dyn Device, repeats: usize) -> Result<Vec<Row>> {
    let mut rows = vec![];
    let label = dev.name();
    let (rowsn, d) = (8192usize, 4096usize);
    let x = dev.upload_f32(&random_vec(rowsn * d, 1))?;
    let w = dev.upload_f32(&vec![1.0; d])?;
    let (y, r) = (dev.zeros(rowsn * d * 4)?, dev.zeros(rowsn * 4)?);
    rows.push(measure("kernels", &format!("rmsnorm_fwd 8192x4096 ({label})"), "GB/s", repeats, false, false, || {
        gpu::rmsnorm_fwd(dev, y, r, None, x, None, w, rowsn, d, 1e-6)?;
        dev.synchronize()?;
        Ok((2 * rowsn * d * 4) as f64 / 1e9)
    })?);
    let n = 1usize << 26;
    let (g, u, o) = (dev.zeros(n * 4)?, dev.zeros(n * 4)?, dev.zeros(n * 4)?);
    rows.push(measure("kernels", &format!("swiglu_fwd 64M ({label})"), "GB/s", repeats, false, false, || {
        gpu::swiglu_fwd(dev, o, g, u, n)?;
        dev.synchronize()?;
        Ok((3 * n * 4) as f64 / 1e9)
    })?);
    let mm = 4096usize;
    let (a, b, c) = (dev.zeros(mm * mm * 2)?, dev.zeros(mm * mm * 2)?, dev.zeros(mm * mm * 4)?);
    rows.push(measure("kernels", &format!("gemm_bf16_tn mma.sync 4096^3 ({label})"), "GFLOP/s", repeats, false, false, || {
        gpu::gemm_bf16_tn(dev, c, a, b, mm, mm, mm)?;
        dev.synchronize()?;
        Ok(2.0 * (mm * mm * mm) as f64 / 1e9)
    })?);
    // Tensor-core throughput against the GPU's dense BF16 peak.
    if let (Some(peak), Some(row)) = (crate::monitor::mfu::peak_tflops(&label), rows.last_mut()) {
        row.mfu = Some(row.median / 1e3 / peak);
    }
    let (af, bf) = (dev.zeros(mm * mm * 4)?, dev.zeros(mm * mm * 4)?);
    rows.push(measure("kernels", &format!("cuBLAS sgemm 4096^3 ({label})"), "GFLOP/s", repeats, false, false, || {
        dev.gemm_f32_nt(c, af, bf, mm, mm, mm)?;
        dev.synchronize()?;
        Ok(2.0 * (mm * mm * mm) as f64 / 1e9)
    })?);
    rows.extend(super::attention::run_device(dev, repeats)?);
    Ok(rows)
}
