//! The device GEMM (`Device::gemm`: cuBLAS `cublasGemmEx` on a GPU, the CPU
//! gemm on the simulated device) in the kernel suite, and its benchmark.
//!
//! Owns: the checks of every operand combination the GPU backend uses
//! (both transposes of A and B, bf16 or f32 inputs, f32 or bf16 output,
//! beta 0 or 1 with alpha ≠ 1, shapes that are not multiples of anything),
//! and `bench_gemm` for timing on a GPU. Does not own the GEMM itself (the
//! device layer) or the tensor-core kernel `gemm_bf16_tn` (checked in
//! checks.rs). The reference is `cpu::matmul::matmul_naive` (f64 sums; the blocked
//! CPU gemm for the GPU-only shapes of billions of multiply-adds) on
//! the same bf16-rounded inputs, so the only error left is the
//! accumulation order and, for a bf16 output, its final rounding.
//! With beta = 0 the output buffer starts as NaN: a GEMM that reads C when
//! it must not fails the check.

use super::checks::{bf16_bits, rel_err, Case};
use crate::backend::cpu;
use crate::backend::cpu::gradcheck::random_vec;
use crate::device::{Device, DeviceExt, DevicePtr, Dtype, Gemm};
use anyhow::Result;
use half::bf16;
use std::time::Instant;

/// Inputs for one GEMM check: A, B, the old C (already in their device
/// types' precision, as f32) and the expected C.
pub(super) struct GemmData {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub c_old: Vec<f32>,
    pub want: Vec<f32>,
}

fn round(v: Vec<f32>, t: Dtype) -> Vec<f32> {
    match t {
        Dtype::F32 => v,
        Dtype::Bf16 => v.into_iter().map(|x| bf16::from_f32(x).to_f32()).collect(),
    }
}

/// Above this many multiply-adds the reference uses the blocked CPU gemm.
const BIG_REFERENCE: usize = 1 << 28;

/// Random operands for `g` from `seed`, and the reference (f64-summed up
/// to `BIG_REFERENCE` multiply-adds).
pub(super) fn reference(g: &Gemm, seed: u64) -> GemmData {
    let (na, nb, nc) = g.sizes();
    let a = round(random_vec(na, seed), g.ab_type);
    let b = round(random_vec(nb, seed + 1), g.ab_type);
    let c_old = round(random_vec(nc, seed + 2), g.c_type);
    let mut prod = vec![0.0f32; nc];
    // The GPU-only big shapes (billions of multiply-adds) use the blocked
    // CPU gemm: the naive loop takes minutes there. The shapes the
    // simulated device runs, whose device GEMM is that same CPU gemm,
    // keep the independent naive loop.
    if g.m * g.n * g.k > BIG_REFERENCE {
        cpu::matmul::matmul(&mut prod, &a, &b, g.m, g.k, g.n, g.trans_a, g.trans_b, false);
    } else {
        cpu::matmul::matmul_naive(&mut prod, &a, &b, g.m, g.k, g.n, g.trans_a, g.trans_b, false);
    }
    let want = prod
        .iter()
        .zip(&c_old)
        .map(|(&p, &o)| (g.alpha as f64 * p as f64 + if g.beta != 0.0 { g.beta as f64 * o as f64 } else { 0.0 }) as f32)
        .collect();
    GemmData { a, b, c_old, want }
}

fn upload(dev: &mut dyn Device, v: &[f32], t: Dtype) -> Result<DevicePtr> {
    match t {
        Dtype::F32 => dev.upload_f32(v),
        Dtype::Bf16 => dev.upload_u16(&bf16_bits(v)),
    }
}

fn download(dev: &mut dyn Device, p: DevicePtr, n: usize, t: Dtype) -> Result<Vec<f32>> {
    Ok(match t {
        Dtype::F32 => dev.download_f32(p, n)?,
        Dtype::Bf16 => dev.download_u16(p, n)?.into_iter().map(|b| bf16::from_bits(b).to_f32()).collect(),
    })
}

/// Run `g` on `dev` with `d`'s operands; C starts as `d.c_old`, or as NaN
/// when beta is 0. Returns the device's C.
pub(super) fn run_on(dev: &mut dyn Device, g: &Gemm, d: &GemmData) -> Result<Vec<f32>> {
    let (_, _, nc) = g.sizes();
    let a = upload(dev, &d.a, g.ab_type)?;
    let b = upload(dev, &d.b, g.ab_type)?;
    let c = if g.beta != 0.0 { upload(dev, &d.c_old, g.c_type)? } else { upload(dev, &vec![f32::NAN; nc], g.c_type)? };
    dev.gemm(g, c, a, b)?;
    let got = download(dev, c, nc, g.c_type)?;
    for p in [a, b, c] {
        dev.free(p)?;
    }
    Ok(got)
}

fn name(t: Dtype) -> &'static str {
    match t {
        Dtype::F32 => "f32",
        Dtype::Bf16 => "bf16",
    }
}

/// Tolerance on max error / max |reference|: the accumulation order for an
/// f32 output; one bf16 rounding (2^-9 relative, with margin) for bf16.
fn tolerance(g: &Gemm) -> f64 {
    match g.c_type {
        Dtype::F32 => 1e-5,
        Dtype::Bf16 => 5e-3,
    }
}

/// The GEMM cases of the suite.
pub(super) fn cases(quick: bool) -> Vec<Case<'static>> {
    let mut shapes: Vec<(usize, usize, usize)> = vec![(1, 1, 1), (17, 33, 9), (70, 50, 40), (5, 130, 257), (3, 4, 0)];
    if !quick {
        // Model-like products (a 7B layer's o_proj and an MLP slice), not
        // multiples of the cuBLAS tiles in one dimension.
        shapes.extend([(1000, 3584, 3584), (2049, 1024, 4864)]);
    }
    let types = [(Dtype::Bf16, Dtype::F32), (Dtype::Bf16, Dtype::Bf16), (Dtype::F32, Dtype::F32)];
    let mut v = vec![];
    let mut seed = 100;
    for &(m, n, k) in &shapes {
        for &(ab, c) in &types {
            for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
                for (alpha, beta) in [(1.0f32, 0.0f32), (0.5, 1.0)] {
                    let g = Gemm::new(m, n, k).trans_a(trans_a).trans_b(trans_b).types(ab, c).scale(alpha, beta);
                    seed += 3;
                    let s = seed;
                    v.push(Case {
                        kernel: "gemm (device BLAS)",
                        shape: format!(
                            "{m}x{n}x{k} {}{} {}->{} alpha={alpha} beta={beta}",
                            if trans_a { "T" } else { "N" },
                            if trans_b { "T" } else { "N" },
                            name(ab),
                            name(c)
                        ),
                        tol: tolerance(&g),
                        run: Box::new(move |dev| {
                            let d = reference(&g, s);
                            let got = run_on(dev, &g, &d)?;
                            Ok(rel_err(&got, &d.want))
                        }),
                    });
                }
            }
        }
    }
    v
}

/// Time `iters` GEMMs of `g` on `dev` (after one warm-up) and return the
/// seconds per call; TFLOP/s = `g.flops() / seconds / 1e12`. Operands are
/// zero-filled buffers, since only time is measured.
pub fn bench_gemm(dev: &mut dyn Device, g: &Gemm, iters: usize) -> Result<f64> {
    g.validate()?;
    let (na, nb, nc) = g.sizes();
    let a = dev.zeros(na * g.ab_type.bytes())?;
    let b = dev.zeros(nb * g.ab_type.bytes())?;
    let c = dev.zeros(nc * g.c_type.bytes())?;
    dev.gemm(g, c, a, b)?;
    dev.synchronize()?;
    let start = Instant::now();
    for _ in 0..iters.max(1) {
        dev.gemm(g, c, a, b)?;
    }
    dev.synchronize()?;
    let secs = start.elapsed().as_secs_f64() / iters.max(1) as f64;
    for p in [a, b, c] {
        dev.free(p)?;
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::sim::SimDevice;

    #[test]
    fn every_gemm_case_passes_on_the_simulated_device() {
        let mut dev = SimDevice::new().unwrap();
        let cases = cases(true);
        // 5 shapes x 3 type combinations x 4 transposes x 2 (alpha, beta).
        assert_eq!(cases.len(), 120);
        for c in cases {
            let e = (c.run)(&mut dev).unwrap_or_else(|e| panic!("{} {}: {e:#}", c.kernel, c.shape));
            assert!(e <= c.tol, "{} {}: err {e:e} > tol {:e}", c.kernel, c.shape, c.tol);
        }
    }

    #[test]
    fn the_check_catches_a_wrong_transpose_and_a_read_of_c_under_beta_zero() {
        let mut dev = SimDevice::new().unwrap();
        // Square, so the wrong product has the right size: only values differ.
        let g = Gemm::new(8, 8, 8).types(Dtype::Bf16, Dtype::F32).trans_b(true);
        let d = reference(&g, 7);
        let wrong = run_on(&mut dev, &g.trans_b(false), &d).unwrap();
        assert!(rel_err(&wrong, &d.want) > 0.05, "a wrong transpose must fail the check");
        let right = run_on(&mut dev, &g, &d).unwrap();
        assert!(rel_err(&right, &d.want) <= tolerance(&g));
        // beta = 0 over a NaN C stays finite; beta = 1 over it is NaN, which
        // rel_err reports as an infinite error.
        assert!(right.iter().all(|v| v.is_finite()));
        let g1 = g.scale(1.0, 1.0);
        let (a, b) = (dev.upload_u16(&bf16_bits(&d.a)).unwrap(), dev.upload_u16(&bf16_bits(&d.b)).unwrap());
        let c = dev.upload_f32(&[f32::NAN; 64]).unwrap();
        dev.gemm(&g1, c, a, b).unwrap();
        assert_eq!(rel_err(&dev.download_f32(c, 64).unwrap(), &d.want), f64::INFINITY);
    }

    #[test]
    fn a_bf16_output_is_rounded_to_nearest_even() {
        let mut dev = SimDevice::new().unwrap();
        // 1 x 1 x 2: 1 + 2^-8 is a tie between 1 and 1 + 2^-7; even is 1.
        let g = Gemm::new(1, 1, 2).types(Dtype::Bf16, Dtype::Bf16);
        let a = dev.upload_u16(&bf16_bits(&[1.0, 1.0 / 256.0])).unwrap();
        let b = dev.upload_u16(&bf16_bits(&[1.0, 1.0])).unwrap();
        let c = dev.zeros(2).unwrap();
        dev.gemm(&g, c, a, b).unwrap();
        assert_eq!(bf16::from_bits(dev.download_u16(c, 1).unwrap()[0]).to_f32(), 1.0);
        // 1 + 3·2^-8 rounds up to 1 + 2^-6.
        let a = dev.upload_u16(&bf16_bits(&[1.0, 3.0 / 256.0])).unwrap();
        dev.gemm(&g, c, a, b).unwrap();
        assert_eq!(bf16::from_bits(dev.download_u16(c, 1).unwrap()[0]).to_f32(), 1.0 + 1.0 / 64.0);
    }

    #[test]
    fn unsupported_combinations_are_clear_errors() {
        let mut dev = SimDevice::new().unwrap();
        let p = dev.zeros(64).unwrap();
        let err = dev.gemm(&Gemm::new(2, 2, 2).types(Dtype::F32, Dtype::Bf16), p, p, p).unwrap_err();
        assert!(format!("{err:#}").contains("bf16 output"), "{err:#}");
        let err = dev.gemm(&Gemm::new(2, 2, 2).scale(f32::NAN, 0.0), p, p, p).unwrap_err();
        assert!(format!("{err:#}").contains("finite"), "{err:#}");
        // A buffer too small for the shape fails on the read, not silently.
        let small = dev.zeros(4).unwrap();
        assert!(dev.gemm(&Gemm::new(64, 64, 64), p, small, small).is_err());
    }
}
