//! The `train` suite: training tokens/s on the CPU backend — one full RL
//! optimizer step (packed forward, chunked log-prob, DAPO loss, backward,
//! global-norm clip, AdamW) — for the embedded tiny model and for a
//! ~100M-parameter Qwen2-shaped config stated here, with same-process
//! baselines: forward-only tokens/s of the same batch, the step's cost as a
//! multiple of that forward, and the step's split into forward, backward and
//! optimizer. The tiny shape also has the RFT step (weighted NLL).
//!
//! Owns: the benchmark shapes, their synthetic samples (random ids, every
//! token but the first trained, old log-probs near the random model's, ±1
//! advantages) and the rows. Does not own the step itself: the timed step is
//! `train::algorithms::dapo_step`'s body with a clock between its parts (a
//! test checks it leaves the same weights as `dapo_step`), and the RFT row
//! calls `train::rft::accumulate_nll` and the optimizer as the RFT loop does.

use super::{measure, Row};
use crate::model::qwen2::{Batch, Model};
use crate::model::{tiny, ModelConfig, Weights};
use crate::monitor::mfu;
use crate::train::algorithms::{dapo_loss_and_grads, DapoConfig, DapoSample};
use crate::train::optimizer::{optimizer_step, AdamW, OptimConfig};
use crate::train::rft::{accumulate_nll, Example};
use anyhow::{ensure, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::{Duration, Instant};

const SUITE: &str = "train";

/// The ~100M-parameter config: Qwen2-shaped (q/k/v bias, GQA with 2 KV
/// heads as in Qwen2.5, tied embeddings as in Qwen2.5-0.5B), hidden 768,
/// 12 layers, 12 heads of 64, intermediate 2048, vocabulary 32,768:
/// 98,335,488 parameters (25.2M of them the embedding).
pub const CONFIG_100M: &str = r#"{"model_type":"qwen2","vocab_size":32768,"hidden_size":768,"intermediate_size":2048,
  "num_hidden_layers":12,"num_attention_heads":12,"num_key_value_heads":2,"max_position_embeddings":4096,
  "rms_norm_eps":1e-6,"rope_theta":1000000.0,"tie_word_embeddings":true}"#;

pub fn config_100m() -> ModelConfig {
    ModelConfig::from_json_str(CONFIG_100M, "bench train 100M config").expect("valid bench config")
}

/// One benchmarked shape: a model config and a packed batch of `seqs`
/// sequences of `seq_len` tokens.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Row-name prefix, e.g. "tiny 4x512".
    pub label: String,
    pub cfg: ModelConfig,
    pub seqs: usize,
    pub seq_len: usize,
    /// Also time the RFT (NLL) step.
    pub rft: bool,
    /// At most this many timed repeats (keeps `bench all` short for the
    /// large shape); the warm-up is extra.
    pub max_repeats: usize,
    /// Recompute each layer in the backward (`Model::recompute`).
    pub recompute: bool,
}

/// The suite's shapes: the tiny model on 4 × 512 tokens, the 100M config
/// on 1 × 512 (a step takes seconds on 2 cores, so at most 3 repeats).
pub fn shapes() -> Vec<Shape> {
    vec![
        Shape { label: "tiny 4x512".into(), cfg: tiny::tiny_config(), seqs: 4, seq_len: 512, rft: true, max_repeats: usize::MAX, recompute: false },
        Shape { label: "100M 1x512".into(), cfg: config_100m(), seqs: 1, seq_len: 512, rft: false, max_repeats: 3, recompute: false },
    ]
}

/// A line describing a shape's model (printed beside the table).
pub fn describe(s: &Shape) -> String {
    let c = &s.cfg;
    format!(
        "{}: hidden {}, {} layers, {} heads / {} kv heads, intermediate {}, vocab {}, tied {}, {} parameters ({:.1}M); {} x {} tokens",
        s.label,
        c.hidden_size,
        c.num_layers,
        c.num_heads,
        c.num_kv_heads,
        c.intermediate_size,
        c.vocab_size,
        c.tie_word_embeddings,
        c.num_params(),
        c.num_params() as f64 / 1e6,
        s.seqs,
        s.seq_len
    )
}

/// Synthetic DAPO samples: random ids, every token but the first trained,
/// old log-probs around −ln V (what a freshly initialized model gives, so
/// ρ ≈ 1 and the gradient flows), advantages alternating +1 / −1.
pub fn samples(cfg: &ModelConfig, seqs: usize, seq_len: usize, seed: u64) -> Vec<DapoSample> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let uniform = -(cfg.vocab_size as f32).ln();
    (0..seqs)
        .map(|s| {
            let ids: Vec<u32> = (0..seq_len).map(|_| rng.gen_range(0..cfg.vocab_size as u32)).collect();
            let mask: Vec<bool> = (0..seq_len).map(|i| i > 0).collect();
            let old_logprob = (0..seq_len).map(|_| uniform + rng.gen_range(-0.05f32..0.05)).collect();
            DapoSample { ids, mask, old_logprob, advantage: if s % 2 == 0 { 1.0 } else { -1.0 } }
        })
        .collect()
}

/// Where one timed step spent its time.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepTimes {
    /// Packing, forward, log-probs, DAPO loss and backward.
    pub forward_backward: Duration,
    /// Zeroing the gradients, the global-norm clip and AdamW.
    pub optimizer: Duration,
}

/// One DAPO optimizer step, exactly `algorithms::dapo_step` (zero the
/// gradients, `dapo_loss_and_grads`, clip, refuse a non-finite norm, AdamW)
/// with a clock between the parts. With a training device, each part ends
/// with a device synchronize, so the clocks see the kernels, not just their
/// launches. Returns the loss and the times.
pub fn timed_dapo_step(model: &mut Model, opt: &mut AdamW, grads: &mut Weights, samples: &[DapoSample], cfg: &DapoConfig, lr: f32) -> Result<(f64, StepTimes)> {
    let t = Instant::now();
    model.zero_grads(grads)?;
    let zero = t.elapsed();
    let t = Instant::now();
    let s = dapo_loss_and_grads(model, samples, cfg, grads)?;
    model.synchronize_train_device()?;
    let forward_backward = t.elapsed();
    let t = Instant::now();
    optimizer_step(model, opt, grads, lr).with_context(|| format!("the DAPO step (loss {})", s.loss))?;
    model.synchronize_train_device()?;
    Ok((s.loss, StepTimes { forward_backward, optimizer: zero + t.elapsed() }))
}

/// The median over `timed` steps of the optimizer's fraction of the step.
fn optimizer_share(timed: &[StepTimes]) -> f64 {
    let mut frac: Vec<f64> = timed.iter().map(|t| t.optimizer.as_secs_f64() / (t.optimizer + t.forward_backward).as_secs_f64().max(1e-12)).collect();
    super::median(&mut frac)
}

/// What a timed step needs: the model (random init, seed 0), AdamW at the
/// default settings, gradients, the DAPO config and the shape's samples.
struct Rig {
    model: Model,
    opt: AdamW,
    grads: Weights,
    dapo: DapoConfig,
    data: Vec<DapoSample>,
    tokens: f64,
    lr: f32,
}

impl Rig {
    fn new(shape: &Shape) -> Self {
        let cfg = &shape.cfg;
        let ocfg = OptimConfig::default();
        let mut model = Model::new(cfg.clone(), Weights::init(cfg, 0, tiny::INIT_STD));
        model.recompute = shape.recompute;
        Rig {
            model,
            lr: ocfg.lr,
            opt: AdamW::new(ocfg, cfg),
            grads: Weights::zeros(cfg),
            dapo: DapoConfig::default(),
            data: samples(cfg, shape.seqs, shape.seq_len, 0),
            tokens: (shape.seqs * shape.seq_len) as f64,
        }
    }
}

fn derived(name: String, v: f64, unit: &str, repeats: usize) -> Row {
    Row::derived(SUITE, name, v, unit, repeats)
}

/// The rows of one shape, `repeats` timed repeats each (capped by the
/// shape's `max_repeats`) after a warm-up:
/// - `{label}: DAPO step` — tokens/s of the whole step (the headline);
/// - `{label}: RFT step` — the NLL step, when `shape.rft`;
/// - `{label}: forward only` — forward + chunked log-probs, tokens/s;
/// - `{label}: step / forward time` — how many forwards a step costs;
/// - `{label}: share forward|backward|optimizer` — percent of the step:
///   the optimizer's share is timed inside each step; forward is the
///   forward-only time over the step time; backward (with the loss) is the
///   rest, so the three add up to 100 (noise can move time between
///   forward and backward, since they come from different runs);
/// - `{label}: achieved GFLOP/s` — the step's model FLOPs
///   (`monitor::mfu::training_flops_per_token`) at its tokens/s.
pub fn run_shape(shape: &Shape, repeats: usize) -> Result<Vec<Row>> {
    let repeats = repeats.clamp(1, shape.max_repeats.max(1));
    let label = &shape.label;
    let cfg = &shape.cfg;
    ensure!(
        shape.seq_len <= cfg.max_position_embeddings,
        "{label}: sequences of {} tokens exceed the config's {} positions",
        shape.seq_len,
        cfg.max_position_embeddings
    );
    let Rig { mut model, mut opt, mut grads, dapo, data, tokens, lr } = Rig::new(shape);
    let mut rows = vec![];

    let mut times: Vec<StepTimes> = vec![];
    let step = measure(SUITE, &format!("{label}: DAPO step"), "tokens/s", repeats, true, true, || {
        let (loss, t) = timed_dapo_step(&mut model, &mut opt, &mut grads, &data, &dapo, lr)?;
        ensure!(loss.is_finite(), "the DAPO loss is {loss}");
        times.push(t);
        Ok(tokens)
    })?;
    let timed = &times[1..]; // the first is the warm-up

    let rft = if shape.rft {
        let examples: Vec<Example> = data.iter().map(|s| Example::from_mask(&s.ids, &s.mask)).collect();
        let refs: Vec<&Example> = examples.iter().collect();
        let norm = examples.iter().map(|e| e.trained_tokens()).sum::<usize>().max(1) as f64;
        Some(measure(SUITE, &format!("{label}: RFT step"), "tokens/s", repeats, true, true, || {
            model.zero_grads(&mut grads)?;
            let loss = accumulate_nll(&mut model, &refs, norm, &mut grads)?;
            ensure!(loss.is_finite(), "the RFT loss is {loss}");
            optimizer_step(&mut model, &mut opt, &mut grads, lr)?;
            Ok(tokens)
        })?)
    } else {
        None
    };

    let seqs: Vec<&[u32]> = data.iter().map(|s| s.ids.as_slice()).collect();
    let batch = Batch::from_sequences(&seqs);
    let (targets, _) = batch.next_token_targets();
    let forward = measure(SUITE, &format!("{label}: forward only"), "tokens/s", repeats, true, true, || {
        let st = model.forward(&batch).context("forward")?;
        let lp = model.token_logprobs(&st, &targets);
        ensure!(lp.logprob.iter().all(|x| x.is_finite()), "a non-finite log-prob");
        Ok(tokens)
    })?;

    // Medians of rates are rates at the median time.
    let (t_step, t_fwd) = (tokens / step.median, tokens / forward.median);
    let opt_share = optimizer_share(timed);
    let fwd_share = t_fwd / t_step;
    let n = step.repeats;
    let gflops = step.median * mfu::training_flops_per_token(cfg, shape.seq_len) / 1e9;
    rows.push(step);
    rows.extend(rft);
    rows.push(forward);
    rows.push(derived(format!("{label}: step / forward time"), t_step / t_fwd, "x", n));
    rows.push(derived(format!("{label}: share forward"), fwd_share * 100.0, "%", n));
    rows.push(derived(format!("{label}: share backward"), (1.0 - opt_share - fwd_share) * 100.0, "%", n));
    rows.push(derived(format!("{label}: share optimizer"), opt_share * 100.0, "%", n));
    rows.push(derived(format!("{label}: achieved GFLOP/s"), gflops, "GFLOP/s", n));
    Ok(rows)
}

/// Shapes timed only on a GPU: Qwen2.5-0.5B's config (random weights) on
/// 2 × 4096 and 1 × 16384 tokens, the latter also with recomputation (the
/// MLP's buffers then hold one 8192-token chunk).
pub fn gpu_shapes() -> Vec<Shape> {
    let q05 = crate::model::memory_plan::preset("qwen2.5-0.5b").expect("a preset");
    vec![
        Shape { label: "0.5B 2x4096".into(), cfg: q05.clone(), seqs: 2, seq_len: 4096, rft: false, max_repeats: 5, recompute: false },
        Shape { label: "0.5B 1x16384".into(), cfg: q05.clone(), seqs: 1, seq_len: 16384, rft: false, max_repeats: 3, recompute: false },
        Shape { label: "0.5B 1x16384 recompute".into(), cfg: q05, seqs: 1, seq_len: 16384, rft: false, max_repeats: 3, recompute: true },
    ]
}

/// The DAPO step with the trainer on GPU 0 (the GPU model backend: device
/// forward, fused log-probs, backward, clip and AdamW; the weights stay on
/// the device between steps, as in a DAPO iteration):
/// - `{label}: DAPO step, GPU` — tokens/s;
/// - `{label}: share forward|optimizer, GPU` — percent of the step in the
///   forward with log-probs (the forward-only time over the step's) and in
///   zeroing the gradients, the clip and AdamW (timed to a device
///   synchronize); the rest is the loss and the backward;
/// - `{label}: forward only, GPU` — tokens/s of forward + log-probs;
/// - `{label}: weights to host, GPU` — ms to bring the host copy up to date
///   (`Model::sync_host_weights`: once per unit of work, before the engine
///   push or a checkpoint, not per step);
/// - `{label}: DAPO step + weights to host, GPU` — tokens/s when the host
///   copy is synced after every step (what the backend did before the
///   weights stayed on the device), and `{label}: weights kept on device /
///   synced every step` the ratio, both in this process;
/// - `{label}: GPU / CPU step` — the speed-up over `cpu_step` (tokens/s
///   of the CPU step in this process), when given;
/// - `{label}: device memory planned|held, GPU` — GiB: the memory plan for
///   the shape's micro-batch (less its runtime-reserve estimate), and what
///   the driver reports spent on the GPU from before the trainer was
///   attached to after its first step (the plan's buffers plus the kernel
///   modules, cuBLAS and the allocator's rounding); `held / planned` their
///   ratio.
pub fn run_shape_gpu(shape: &Shape, repeats: usize, cpu_step: Option<f64>) -> Result<Vec<Row>> {
    let repeats = repeats.clamp(1, shape.max_repeats.max(1));
    let label = &shape.label;
    let Rig { mut model, mut opt, mut grads, dapo, data, tokens, lr } = Rig::new(shape);
    let probe = crate::device::cuda::MemoryProbe::new(0)?;
    let (free_before, _) = probe.free_total()?;
    let capacity = crate::model::qwen2_gpu::Capacity::new(shape.seqs * shape.seq_len);
    crate::model::qwen2_gpu::attach_cuda(&mut model, 0, capacity)?;
    let mut times: Vec<StepTimes> = vec![];
    let mut held = None;
    let step = measure(SUITE, &format!("{label}: DAPO step, GPU"), "tokens/s", repeats, true, true, || {
        let (loss, t) = timed_dapo_step(&mut model, &mut opt, &mut grads, &data, &dapo, lr)?;
        ensure!(loss.is_finite(), "the DAPO loss is {loss}");
        if held.is_none() {
            held = Some(free_before.saturating_sub(probe.free_total()?.0));
        }
        times.push(t);
        Ok(tokens)
    })?;
    let plan = crate::model::memory_plan::plan_scored(&shape.cfg, model.out_vocab(), label, &capacity.plan_request(model.recompute))?;
    let planned = (plan.total_bytes - plan.bytes(crate::model::memory_plan::names::RESERVE)) as f64;
    let held = held.unwrap_or(0) as f64;
    let gib = (1u64 << 30) as f64;
    let memory = [
        derived(format!("{label}: device memory planned, GPU"), planned / gib, "GiB", 1),
        derived(format!("{label}: device memory held, GPU"), held / gib, "GiB", 1),
        derived(format!("{label}: device memory held / planned, GPU"), held / planned, "x", 1),
    ];
    let opt_share = derived(format!("{label}: share optimizer, GPU"), optimizer_share(&times[1..]) * 100.0, "%", step.repeats);
    let t = Instant::now();
    model.sync_host_weights()?;
    let to_host = derived(format!("{label}: weights to host, GPU"), t.elapsed().as_secs_f64() * 1e3, "ms", 1);
    let synced = measure(SUITE, &format!("{label}: DAPO step + weights to host, GPU"), "tokens/s", repeats, true, true, || {
        let (loss, _) = timed_dapo_step(&mut model, &mut opt, &mut grads, &data, &dapo, lr)?;
        ensure!(loss.is_finite(), "the DAPO loss is {loss}");
        model.sync_host_weights()?;
        Ok(tokens)
    })?;
    let kept = derived(format!("{label}: weights kept on device / synced every step"), step.median / synced.median, "x", step.repeats);
    let seqs: Vec<&[u32]> = data.iter().map(|s| s.ids.as_slice()).collect();
    let batch = Batch::from_sequences(&seqs);
    let (targets, _) = batch.next_token_targets();
    let forward = measure(SUITE, &format!("{label}: forward only, GPU"), "tokens/s", repeats, true, true, || {
        let (_, lp) = model.forward_logprobs(&batch, &targets)?;
        ensure!(lp.logprob.iter().all(|x| x.is_finite()), "a non-finite log-prob");
        Ok(tokens)
    })?;
    let n = step.repeats;
    // Medians of rates are rates at the median time.
    let fwd_share = derived(format!("{label}: share forward, GPU"), step.median / forward.median * 100.0, "%", n);
    let ratio = cpu_step.map(|c| derived(format!("{label}: GPU / CPU step"), step.median / c, "x", n));
    let mut rows = vec![step, fwd_share, opt_share, forward, to_host, synced, kept];
    rows.extend(ratio);
    rows.extend(memory);
    Ok(rows)
}

/// Every shape of [`shapes`]; with a GPU, also their GPU steps and
/// [`gpu_shapes`].
pub fn run(repeats: usize) -> Result<Vec<Row>> {
    let mut rows = vec![];
    let gpu = crate::device::cuda::available();
    for s in shapes() {
        let cpu = run_shape(&s, repeats).with_context(|| format!("train suite, {}", s.label))?;
        let cpu_step = cpu.first().map(|r| r.median);
        rows.extend(cpu);
        if gpu {
            rows.extend(run_shape_gpu(&s, repeats, cpu_step).with_context(|| format!("train suite, {} on the GPU", s.label))?);
        }
    }
    if gpu {
        for s in gpu_shapes() {
            rows.extend(run_shape_gpu(&s, repeats, None).with_context(|| format!("train suite, {} on the GPU", s.label))?);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::algorithms::dapo_step;

    #[test]
    fn the_100m_config_has_about_100m_parameters() {
        let c = config_100m();
        let n = c.num_params();
        assert_eq!(n, 98_335_488, "the count the docs state");
        assert!((90_000_000..=110_000_000).contains(&n), "{n}");
        // Parameters in matrix products: all but the (tied) embedding lookup.
        let m = mfu::matmul_params(&c);
        assert!(m > 90e6 && m < 110e6, "{m}");
        let s = shapes();
        assert!(s.iter().all(|s| s.seq_len <= s.cfg.max_position_embeddings));
        assert_eq!(s[0].cfg, tiny::tiny_config());
    }

    #[test]
    fn the_timed_step_is_dapo_step() {
        let cfg = tiny::tiny_config();
        let data = samples(&cfg, 2, 24, 7);
        let dapo = DapoConfig::default();
        let ocfg = OptimConfig { lr: 1e-3, ..Default::default() };
        let start = Model::new(cfg.clone(), Weights::init(&cfg, 3, tiny::INIT_STD));
        let (mut a, mut b) = (start.clone(), start.clone());
        let (mut oa, mut ob) = (AdamW::new(ocfg.clone(), &cfg), AdamW::new(ocfg.clone(), &cfg));
        let (mut ga, mut gb) = (Weights::zeros(&cfg), Weights::zeros(&cfg));
        for _ in 0..2 {
            let want = dapo_step(&mut a, &mut oa, &mut ga, &data, &dapo, ocfg.lr, 1 << 30).unwrap();
            let (loss, t) = timed_dapo_step(&mut b, &mut ob, &mut gb, &data, &dapo, ocfg.lr).unwrap();
            assert_eq!(loss, want.loss);
            assert!(t.forward_backward > Duration::ZERO);
        }
        assert_ne!(a.weights, start.weights, "the step moved the weights");
        assert_eq!(a.weights, b.weights);
        assert_eq!(oa.step, ob.step);
    }

    #[test]
    fn rows_are_well_formed_on_a_small_shape() {
        let shape = Shape { label: "tiny 2x32".into(), cfg: tiny::tiny_config(), seqs: 2, seq_len: 32, rft: true, max_repeats: 1, recompute: false };
        let rows = run_shape(&shape, 3).unwrap();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        let want: Vec<String> = ["DAPO step", "RFT step", "forward only", "step / forward time", "share forward", "share backward", "share optimizer", "achieved GFLOP/s"]
            .iter()
            .map(|n| format!("tiny 2x32: {n}"))
            .collect();
        assert_eq!(names, want);
        for r in &rows {
            assert_eq!(r.suite, "train");
            assert_eq!(r.repeats, 1, "{}: max_repeats caps the repeats", r.name);
            assert!(r.median.is_finite(), "{}: {}", r.name, r.median);
            assert!(r.name.len() <= 44, "{} is wider than the table's name column", r.name);
            if r.unit == "tokens/s" {
                let t = r.tokens_per_s.expect("a tokens/s row carries tokens_per_s");
                assert!(t.is_finite() && t > 0.0, "{}: {t}", r.name);
                assert_eq!(t, r.median);
            } else {
                assert!(r.tokens_per_s.is_none(), "{}", r.name);
            }
        }
        // The three shares partition the step (whatever the timings).
        let share: f64 = rows.iter().filter(|r| r.name.contains(": share ")).map(|r| r.median).sum();
        assert!((share - 100.0).abs() < 1e-9, "{share}");
        // The ratio is the forward's rate over the step's.
        let (step, fwd, ratio) = (&rows[0], &rows[2], &rows[3]);
        assert!((ratio.median - fwd.median / step.median).abs() < 1e-9 * ratio.median);
    }

    #[test]
    fn a_sequence_longer_than_the_positions_is_an_error() {
        let mut cfg = tiny::tiny_config();
        cfg.max_position_embeddings = 16;
        let shape = Shape { label: "short".into(), cfg, seqs: 1, seq_len: 32, rft: false, max_repeats: 1, recompute: false };
        let e = run_shape(&shape, 1).unwrap_err().to_string();
        assert!(e.contains("exceed the config's 16 positions"), "{e}");
    }
}
