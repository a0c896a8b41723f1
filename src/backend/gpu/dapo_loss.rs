//! Launcher of the fused DAPO loss (cuda/dapo_loss.cu): per token the ratio
//! ρ = exp(logp − logp_old), the asymmetric clip, the advantage and the
//! mask; out come the per-token coefficients c_t = ∂loss/∂logp_t and the
//! loss with its clip counts, reduced deterministically on the device.
//!
//! Owns: the two-pass launch (per-block partials, then one block in a fixed
//! order), its workspace size, the reading of the stats back, and the kernel
//! suite's cases. Does not own the definition of the loss:
//! `backend::cpu::dapo_loss::dapo_loss` (re-exported by `train::algorithms`) is the reference this equals (same f64
//! arithmetic per token, same clip counting, same division by N).
//!
//! Layouts: logp, logp_old, advantage, mask f32 `[n]` (a token counts when
//! its mask is non-zero); coef f32 `[n]`; stats f64 `[4]` = loss, tokens
//! clipped low, tokens clipped high, masked tokens. Timing: one pass over
//! 20 bytes per token read and 4 written ([`bytes_moved`]).

use super::checks::Case;
use crate::backend::cpu::gradcheck::random_vec;
use crate::device::{Device, DeviceExt, DevicePtr, KernelArg::*, LaunchConfig};
use crate::backend::cpu::dapo_loss::{self as algorithms, DapoConfig};
use anyhow::{ensure, Context, Result};

const THREADS: u32 = 256;

/// Blocks of the first pass: about 2048 tokens each, at most 1024.
pub fn dapo_blocks(n: usize) -> usize {
    n.div_ceil(8 * THREADS as usize).clamp(1, 1024)
}

/// Workspace bytes of [`dapo_loss`]: four f64 partials per block.
pub fn dapo_workspace_bytes(n: usize) -> usize {
    dapo_blocks(n) * 4 * 8
}

/// Bytes one launch moves (for a bandwidth figure).
pub fn bytes_moved(n: usize) -> usize {
    n * 20
}

/// The loss of [`dapo_loss`], read back from its `stats` buffer. The
/// fractions are computed as the CPU computes them.
#[derive(Clone, Debug, PartialEq)]
pub struct DapoStats {
    pub loss: f64,
    pub clip_low: u64,
    pub clip_high: u64,
    /// Masked tokens (the denominator of the clip fractions).
    pub n_tokens: u64,
}

impl DapoStats {
    pub fn clip_low_frac(&self) -> f64 {
        if self.n_tokens == 0 { 0.0 } else { self.clip_low as f64 / self.n_tokens as f64 }
    }
    pub fn clip_high_frac(&self) -> f64 {
        if self.n_tokens == 0 { 0.0 } else { self.clip_high as f64 / self.n_tokens as f64 }
    }
}

/// Downloads the stats; checks, as the CPU loss does, that the normalizing
/// count N was not smaller than the masked tokens.
pub fn read_dapo_stats(dev: &mut dyn Device, stats: DevicePtr, norm_tokens: usize) -> Result<DapoStats> {
    let mut b = [0u8; 32];
    dev.copy_d2h(stats, &mut b).context("reading the DAPO stats")?;
    let f = |i: usize| f64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let s = DapoStats { loss: f(0), clip_low: f(1) as u64, clip_high: f(2) as u64, n_tokens: f(3) as u64 };
    ensure!(
        norm_tokens as u64 >= s.n_tokens,
        "dapo_loss: the normalizing token count {norm_tokens} is smaller than the {} masked tokens",
        s.n_tokens
    );
    Ok(s)
}

/// The DAPO loss of `n` tokens normalized by `norm_tokens` (N, the
/// mini-batch's assistant tokens; 0 only when nothing is masked, then 1 is
/// used as on the CPU). Writes `coef` and `stats` (read them with
/// [`read_dapo_stats`]); `workspace` holds [`dapo_workspace_bytes`]`(n)`.
#[allow(clippy::too_many_arguments)]
pub fn dapo_loss(
    dev: &mut dyn Device,
    coef: DevicePtr,
    stats: DevicePtr,
    logp: DevicePtr,
    logp_old: DevicePtr,
    adv: DevicePtr,
    mask: DevicePtr,
    n: usize,
    norm_tokens: usize,
    cfg: &DapoConfig,
    workspace: DevicePtr,
) -> Result<()> {
    cfg.validate().context("dapo_loss")?;
    ensure!(stats.0 % 8 == 0 && workspace.0 % 8 == 0, "dapo_loss: stats and workspace must be 8-byte aligned");
    let blocks = dapo_blocks(n);
    let chunk = n.div_ceil(blocks) as i64;
    let norm = norm_tokens.max(1) as i64;
    dev.launch(
        "dapo_loss_partial",
        LaunchConfig::linear(blocks as u32, THREADS),
        &[
            Ptr(coef),
            Ptr(workspace),
            Ptr(logp),
            Ptr(logp_old),
            Ptr(adv),
            Ptr(mask),
            I64(n as i64),
            I64(chunk),
            I64(cfg.eps_low.to_bits() as i64),
            I64(cfg.eps_high.to_bits() as i64),
            I64(norm),
        ],
    )
    .context("dapo_loss_partial")?;
    dev.launch("dapo_loss_finalize", LaunchConfig::linear(1, THREADS), &[Ptr(stats), Ptr(workspace), I32(blocks as i32), I64(norm)])
        .context("dapo_loss_finalize")
}

/// Per-token inputs that exercise every branch: ratios on both sides of
/// both bounds and exactly 1, positive, negative and zero advantages, and
/// unmasked tokens.
pub(crate) fn test_inputs(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<bool>) {
    let old: Vec<f32> = random_vec(n, seed).iter().map(|x| -1.5 + 1.5 * x).collect();
    let delta = random_vec(n, seed + 1);
    let new: Vec<f32> = old.iter().zip(&delta).enumerate().map(|(i, (&o, &dl))| if i % 11 == 3 { o } else { o + 0.7 * dl }).collect();
    let adv: Vec<f32> = random_vec(n, seed + 2).iter().enumerate().map(|(i, &a)| if i % 13 == 5 { 0.0 } else { 2.0 * a }).collect();
    let mask: Vec<bool> = (0..n).map(|i| i % 5 != 2).collect();
    (new, old, adv, mask)
}

/// Runs the loss on the device; returns (coef, stats).
pub(crate) fn run(dev: &mut dyn Device, new: &[f32], old: &[f32], adv: &[f32], mask: &[bool], norm: usize, cfg: &DapoConfig) -> Result<(Vec<f32>, DapoStats)> {
    let n = new.len();
    let m: Vec<f32> = mask.iter().map(|&b| b as u8 as f32).collect();
    let (a, b, c, d) = (dev.upload_f32(new)?, dev.upload_f32(old)?, dev.upload_f32(adv)?, dev.upload_f32(&m)?);
    let (coef, stats, ws) = (dev.upload_f32(&vec![f32::NAN; n.max(1)])?, dev.zeros(32)?, dev.zeros(dapo_workspace_bytes(n))?);
    dapo_loss(dev, coef, stats, a, b, c, d, n, norm, cfg, ws)?;
    let out = (dev.download_f32(coef, n)?, read_dapo_stats(dev, stats, norm)?);
    for p in [a, b, c, d, coef, stats, ws] {
        dev.free(p)?;
    }
    Ok(out)
}

/// Error of a device result against the CPU loss: the coefficients' max
/// difference relative to their largest, the loss's relative difference,
/// and infinity when any count differs (the clip decisions must be equal).
pub(crate) fn err_vs_cpu(coef: &[f32], st: &DapoStats, want: &algorithms::DapoOut) -> f64 {
    let scale = want.grad_logp.iter().fold(f64::MIN_POSITIVE, |m, &v| m.max(v.abs() as f64));
    let ce = coef.iter().zip(&want.grad_logp).fold(0.0f64, |m, (&a, &b)| {
        let e = (a as f64 - b as f64).abs();
        if e.is_nan() { f64::INFINITY } else { m.max(e) }
    }) / scale;
    let le = (st.loss - want.loss).abs() / want.loss.abs().max(1e-300);
    let counts_equal = st.n_tokens as usize == want.n_tokens && st.clip_low_frac() == want.clip_low_frac && st.clip_high_frac() == want.clip_high_frac;
    if counts_equal && coef.len() == want.grad_logp.len() { ce.max(if want.loss == 0.0 { st.loss.abs() } else { le }) } else { f64::INFINITY }
}

/// The suite's cases: against `train::algorithms::dapo_loss` (coefficients,
/// loss, clip fractions, masked count) at one token, one block, several
/// blocks, with N above the masked count; and a bitwise repeat.
pub(super) fn cases(quick: bool) -> Vec<Case<'static>> {
    let mut v: Vec<Case<'static>> = vec![];
    let mut shapes = vec![(1usize, 0.2, 0.3), (1000, 0.2, 0.28), (5003, 0.1, 0.3)];
    if !quick {
        shapes.push((1 << 20, 0.2, 0.28));
    }
    for (n, eps_low, eps_high) in shapes {
        v.push(Case {
            kernel: "dapo_loss_partial",
            shape: format!("n={n} eps=({eps_low}, {eps_high}) blocks={}", dapo_blocks(n)),
            // Same f64 arithmetic per token; exp may differ by an ulp of f64.
            tol: 1e-6,
            run: Box::new(move |dev| {
                let cfg = DapoConfig { eps_low, eps_high, ..DapoConfig::default() };
                let (new, old, adv, mask) = test_inputs(n, 60 + n as u64);
                let norm = mask.iter().filter(|&&m| m).count() + 7;
                let want = algorithms::dapo_loss(&new, &old, &adv, &mask, norm, &cfg)?;
                ensure!(n < 100 || (want.clip_low_frac > 0.0 && want.clip_high_frac > 0.0), "the inputs do not reach both clip sides");
                let (coef, st) = run(dev, &new, &old, &adv, &mask, norm, &cfg)?;
                Ok(err_vs_cpu(&coef, &st, &want))
            }),
        });
    }
    v.push(Case {
        kernel: "dapo_loss_finalize",
        shape: "n=70001 (35 blocks) + bitwise repeat".into(),
        tol: 1e-6,
        run: Box::new(move |dev| {
            let n = 70_001;
            let cfg = DapoConfig::default();
            let (new, old, adv, mask) = test_inputs(n, 9);
            let norm = mask.iter().filter(|&&m| m).count();
            let want = algorithms::dapo_loss(&new, &old, &adv, &mask, norm, &cfg)?;
            let a = run(dev, &new, &old, &adv, &mask, norm, &cfg)?;
            let b = run(dev, &new, &old, &adv, &mask, norm, &cfg)?;
            ensure!(a.1 == b.1 && a.0.iter().zip(&b.0).all(|(x, y)| x.to_bits() == y.to_bits()), "two runs differ bitwise");
            Ok(err_vs_cpu(&a.0, &a.1, &want))
        }),
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::sim::SimDevice;

    #[test]
    fn the_check_detects_a_different_loss_and_bad_config_is_an_error() {
        let mut dev = SimDevice::new().unwrap();
        let cfg = DapoConfig::default();
        let (new, old, adv, mask) = test_inputs(300, 1);
        let norm = mask.iter().filter(|&&m| m).count();
        let (coef, st) = run(&mut dev, &new, &old, &adv, &mask, norm, &cfg).unwrap();
        let want = algorithms::dapo_loss(&new, &old, &adv, &mask, norm, &cfg).unwrap();
        assert!(err_vs_cpu(&coef, &st, &want) <= 1e-6);
        // Another ε_high moves tokens between clipped and not: the counts differ.
        let other = algorithms::dapo_loss(&new, &old, &adv, &mask, norm, &DapoConfig { eps_high: 0.25, ..cfg.clone() }).unwrap();
        assert!(err_vs_cpu(&coef, &st, &other).is_infinite());
        // Another N scales the loss and the coefficients.
        let other = algorithms::dapo_loss(&new, &old, &adv, &mask, norm + 1, &cfg).unwrap();
        assert!(err_vs_cpu(&coef, &st, &other) > 1e-4);
        // ε_high below ε_low is refused before launching; N below the masked count when read.
        let p = dev.zeros(4096).unwrap();
        let e = dapo_loss(&mut dev, p, p, p, p, p, p, 4, 4, &DapoConfig { eps_low: 0.3, eps_high: 0.2, ..cfg.clone() }, p).unwrap_err();
        assert!(format!("{e:#}").contains("eps_high"), "{e:#}");
        let e = run(&mut dev, &new, &old, &adv, &mask, norm - 1, &cfg).unwrap_err();
        assert!(format!("{e:#}").contains("smaller than"), "{e:#}");
    }

    #[test]
    fn nothing_masked_gives_zero_loss_and_coefficients() {
        let mut dev = SimDevice::new().unwrap();
        let (new, old, adv, _) = test_inputs(50, 2);
        let (coef, st) = run(&mut dev, &new, &old, &adv, &[false; 50], 0, &DapoConfig::default()).unwrap();
        assert!(coef.iter().all(|&c| c == 0.0));
        assert_eq!((st.loss, st.n_tokens, st.clip_low, st.clip_high), (0.0, 0, 0, 0));
    }

    /// This module's quick suite cases, on the simulated device.
    #[test]
    fn suite_cases_pass_on_the_simulated_device() {
        let mut dev = SimDevice::new().unwrap();
        let checks = super::super::checks::run_all(&mut dev, true, Some("dapo_loss"));
        assert!(checks.len() >= 3);
        for c in &checks {
            eprintln!("{} {}: err {:e} tol {:e} {:.2} s {}", c.kernel, c.shape, c.max_err, c.tolerance, c.seconds, c.error.clone().unwrap_or_default());
        }
        assert!(checks.iter().all(|c| c.passed));
    }
}
