//! DAPO on the tiny model: the loss's gradient through the whole model
//! against finite differences, sampler–trainer log-prob parity, the step's
//! direction, token-level normalization, the zero-advantage filter and the
//! length penalty on trajectories, and the `[dapo]` config section.

use appliance::agent::reward::{final_reward, LengthPenalty};
use appliance::agent::trajectory::{Exit, Ledger, ReplyEnd, Span, Timing, Trajectory, Turn};
use appliance::config::Config;
use appliance::engine::{generate, SamplingParams};
use appliance::model::chat::Source;
use appliance::model::qwen2::Batch;
use appliance::model::tiny::tiny_model;
use appliance::model::{Model, Weights};
use appliance::train::algorithms::{dapo_loss_and_grads, dapo_step, group_advantages, prepare_samples, DapoConfig, DapoSample};
use appliance::train::optimizer::{AdamW, OptimConfig};
use appliance::train::supervised::fit;

const CFG: DapoConfig = DapoConfig { eps_low: 0.2, eps_high: 0.3, delta: 1e-6 };

/// Log-prob of each token of each sequence under the packed training
/// forward, aligned with the tokens (entry 0 predicts nothing: 0.0).
fn recompute(model: &mut Model, seqs: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let batch = Batch::from_sequences(seqs);
    let (targets, _) = batch.next_token_targets();
    let st = model.forward(&batch).unwrap();
    let lp = model.token_logprobs(&st, &targets);
    batch
        .seqs
        .iter()
        .map(|r| {
            let mut v = vec![0.0f32];
            v.extend_from_slice(&lp.logprob[r.start..r.end - 1]);
            v
        })
        .collect()
}

/// Prompts and their sampled completions: the sequences and the sampler's
/// log-probs aligned with them (`None` on prompt tokens).
fn rollouts(model: &mut Model, prompts: &[Vec<u32>], new_tokens: usize, seed: u64) -> Vec<(Vec<u32>, Vec<Option<f32>>)> {
    let params = SamplingParams { temperature: 1.0, max_new_tokens: new_tokens, seed, ..Default::default() };
    assert!(params.is_untruncated());
    let out = generate(model, prompts, &params, &[], false).unwrap();
    prompts
        .iter()
        .zip(out)
        .map(|(p, c)| {
            assert_eq!(c.tokens.len(), new_tokens);
            let mut ids = p.clone();
            ids.extend(&c.tokens);
            let mut lps = vec![None; p.len()];
            lps.extend(c.logprobs.iter().map(|&x| Some(x)));
            (ids, lps)
        })
        .collect()
}

fn prompts() -> Vec<Vec<u32>> {
    vec![vec![1, 17, 300, 42, 5], vec![9, 9, 200], (0..23).map(|i| (i * 37 + 11) % 512).collect()]
}

/// max and mean |sampler − trainer| over the sampled tokens.
fn parity(model: &mut Model, rolls: &[(Vec<u32>, Vec<Option<f32>>)]) -> (f64, f64) {
    let seqs: Vec<Vec<u32>> = rolls.iter().map(|r| r.0.clone()).collect();
    let re = recompute(model, &seqs);
    let (mut max, mut sum, mut n) = (0.0f64, 0.0f64, 0usize);
    for ((_, lps), re) in rolls.iter().zip(&re) {
        for (lp, r) in lps.iter().zip(re) {
            if let Some(lp) = lp {
                let d = (*lp as f64 - *r as f64).abs();
                max = max.max(d);
                sum += d;
                n += 1;
            }
        }
    }
    (max, sum / n as f64)
}

/// The tiny model after some supervised steps on a text, so its next-token
/// distributions are peaked (logits far from the random init's near-uniform ones).
fn sharpened_model() -> Model {
    let ids: Vec<u32> = (0..120).map(|i| ((i * i * 7 + 3 * i) % 500) as u32 + 1).collect();
    let mut model = tiny_model(3);
    let mut opt = AdamW::new(OptimConfig { lr: 3e-3, warmup_steps: 5, ..Default::default() }, &model.cfg);
    let stats = fit(&mut model, &mut opt, std::slice::from_ref(&ids), &[vec![1.0; ids.len()]], 40, |_, _| {}).unwrap();
    assert!(stats.last().unwrap().loss < 2.0, "{}", stats.last().unwrap().loss);
    model
}

fn samples_from(rolls: &[(Vec<u32>, Vec<Option<f32>>)], advantages: &[f32]) -> Vec<DapoSample> {
    rolls
        .iter()
        .zip(advantages)
        .map(|((ids, lps), &a)| DapoSample {
            ids: ids.clone(),
            mask: lps.iter().map(Option::is_some).collect(),
            old_logprob: lps.iter().map(|x| x.unwrap_or(0.0)).collect(),
            advantage: a,
        })
        .collect()
}

/// The sampler's recorded log-probs (KV-cache decoding, softmax in f64) and
/// the trainer's (packed forward, chunked online log-sum-exp in f32) agree
/// to 1e-5 on the CPU, for the random tiny model and for a trained one
/// with peaked distributions; and the step reports the same parity.
#[test]
fn sampler_and_trainer_logprobs_agree_on_the_cpu() {
    for (name, mut model) in [("random tiny", tiny_model(0)), ("sharpened tiny", sharpened_model())] {
        let rolls = rollouts(&mut model, &prompts(), 200, 7);
        let (max, mean) = parity(&mut model, &rolls);
        let samples = samples_from(&rolls, &[1.0, -0.5, 0.25]);
        let mut g = Weights::zeros(&model.cfg);
        let s = dapo_loss_and_grads(&mut model, &samples, &CFG, &mut g).unwrap();
        let lps: Vec<f32> = rolls.iter().flat_map(|r| r.1.iter().flatten().copied()).collect();
        let (lo, hi) = lps.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        eprintln!(
            "parity ({name}): max |Δ| = {max:.3e}, mean |Δ| = {mean:.3e} over {} tokens (sampled log-probs {lo:.3}..{hi:.3}, mean entropy {:.3})",
            lps.len(),
            s.entropy
        );
        assert!(max < 1e-5, "{name}: sampler and trainer log-probs differ by up to {max:e}");
        assert_eq!(s.tokens, 600);
        assert!((s.parity_max_abs - max).abs() < 1e-12 && (s.parity_mean_abs - mean).abs() < 1e-12, "{s:?} vs ({max}, {mean})");
        // Parity this close means ρ = 1 to within 1e-5: nothing is clipped.
        assert_eq!((s.clip_low_frac, s.clip_high_frac), (0.0, 0.0));
    }
}

/// A copy of `samples` whose old log-probs put each trained token's ρ at a
/// chosen value, cycling through every region of the clip range but at
/// least 0.05 from its edges [0.8, 1.3], with advantages of both signs.
fn spread_rho(model: &mut Model, samples: &[DapoSample]) -> Vec<DapoSample> {
    const RHO: [f64; 6] = [0.6, 0.9, 1.1, 1.45, 0.7, 1.2];
    let seqs: Vec<Vec<u32>> = samples.iter().map(|s| s.ids.clone()).collect();
    let re = recompute(model, &seqs);
    let mut k = 0;
    samples
        .iter()
        .zip(re)
        .map(|(s, re)| {
            let mut s = s.clone();
            for i in (0..s.ids.len()).filter(|&i| s.mask[i]) {
                // ρ = exp(new − old)  ⇒  old = new − ln ρ
                s.old_logprob[i] = (re[i] as f64 - RHO[k % RHO.len()].ln()) as f32;
                k += 1;
            }
            s
        })
        .collect()
}

/// d loss / d weight through the whole model, against central differences
/// of the same DAPO loss, at the largest-gradient coordinates and one
/// spread coordinate of every tensor.
#[test]
fn dapo_gradient_through_the_model_matches_finite_differences() {
    let mut model = tiny_model(1);
    model.vocab_chunk = 100; // several chunks (the vocabulary is 512)
    let rolls = rollouts(&mut model, &prompts()[..2], 12, 3);
    let samples = spread_rho(&mut model, &samples_from(&rolls, &[1.5, -1.0]));
    let cfg = model.cfg.clone();
    let mut grads = Weights::zeros(&cfg);
    let s = dapo_loss_and_grads(&mut model, &samples, &CFG, &mut grads).unwrap();
    assert!(s.clip_low_frac > 0.0 && s.clip_high_frac > 0.0, "both clip regions are exercised: {s:?}");

    let loss_at = |m: &mut Model| {
        let mut g = Weights::zeros(&cfg);
        dapo_loss_and_grads(m, &samples, &CFG, &mut g).unwrap().loss
    };
    let names: Vec<String> = grads.named(&cfg).into_iter().map(|(n, _)| n).collect();
    let analytic: Vec<Vec<f32>> = grads.tensors().iter().map(|t| t.data.clone()).collect();
    let eps = 1e-2f32;
    let (mut worst, mut checked) = (0.0f64, 0);
    for (ti, name) in names.iter().enumerate() {
        let a = &analytic[ti];
        let mut order: Vec<usize> = (0..a.len()).collect();
        order.sort_by(|&x, &y| a[y].abs().total_cmp(&a[x].abs()));
        let scale = a[order[0]].abs() as f64;
        for &c in &[order[0], order[1], (a.len() * 7 / 13) % a.len()] {
            let w0 = model.weights.tensors()[ti].data[c];
            let (wp, wm) = (w0 + eps, w0 - eps);
            model.weights.tensors_mut()[ti].data[c] = wp;
            let lp = loss_at(&mut model);
            model.weights.tensors_mut()[ti].data[c] = wm;
            let lm = loss_at(&mut model);
            model.weights.tensors_mut()[ti].data[c] = w0;
            // Divide by the step actually taken in f32.
            let numeric = (lp - lm) / (wp as f64 - wm as f64);
            // The tolerance, measured rather than hoped for: the tiny model's
            // weights have std 0.02 and the loss is O(1) in f32, so its
            // rounding noise is ~1e-7, i.e. ~1e-4 in the quotient at a step
            // of 1e-3 (which is why the step is 1e-2: noise ~1e-5). At 1e-2
            // the curvature error is at most ~2e-3 of the gradient (the
            // embedding rows). Measured worst: a third of this bound.
            let err = (numeric - a[c] as f64).abs();
            let tol = 5e-3 * scale.max(numeric.abs()) + 5e-5;
            worst = worst.max(err / tol);
            assert!(err < tol, "{name}[{c}]: analytic {} vs numeric {numeric} (largest |grad| in the tensor {scale})", a[c]);
            checked += 1;
        }
    }
    eprintln!("gradcheck: {checked} coordinates, worst error {worst:.2} of its tolerance");
}

/// Policy-gradient sanity: at ρ = 1 the DAPO gradient is −Â/N per token,
/// which through the model is exactly the weighted-NLL gradient with
/// weights Â (rescaled from its 1/ΣÂ normalization to 1/N). Tokens weigh
/// 1/N each across samples of different lengths (2 and 6 here).
#[test]
fn at_rho_one_dapo_is_the_advantage_weighted_nll_and_tokens_weigh_one_over_n() {
    let mut model = tiny_model(2);
    let seqs = vec![vec![5u32, 6, 7, 8], vec![10u32, 11, 12, 13, 14, 15, 16, 17, 18]];
    // Train the last 2 tokens of the first and the last 6 of the second.
    let masks = [vec![false, false, true, true], vec![false, false, false, true, true, true, true, true, true]];
    let (a1, a2) = (1.0f32, 0.25f32);
    let re = recompute(&mut model, &seqs);
    let samples: Vec<DapoSample> = seqs
        .iter()
        .zip(&masks)
        .zip(&re)
        .zip([a1, a2])
        .map(|(((ids, m), re), a)| DapoSample { ids: ids.clone(), mask: m.clone(), old_logprob: re.clone(), advantage: a })
        .collect();
    let mut g_dapo = Weights::zeros(&model.cfg);
    let s = dapo_loss_and_grads(&mut model, &samples, &CFG, &mut g_dapo).unwrap();
    assert_eq!(s.tokens, 8);
    assert_eq!(s.parity_max_abs, 0.0, "old log-probs are the trainer's own: ρ = 1 exactly");
    // loss = −(2·Â1 + 6·Â2) / 8, not the mean of per-sample means.
    let want = -(2.0 * a1 as f64 + 6.0 * a2 as f64) / 8.0;
    assert!((s.loss - want).abs() < 1e-12, "{} vs {want}", s.loss);

    // The weighted NLL with weight Â at each trained position normalizes by
    // ΣÂ = 3.5; the DAPO gradient is the same direction scaled by 3.5/8.
    let batch = Batch::from_sequences(&seqs);
    let mut weight = vec![];
    for (m, a) in masks.iter().zip([a1, a2]) {
        weight.extend((0..m.len()).map(|t| if t + 1 < m.len() && m[t + 1] { a } else { 0.0 }));
    }
    let mut g_nll = Weights::zeros(&model.cfg);
    model.nll_loss_and_grads(&batch, &weight, &mut g_nll).unwrap();
    let k = 3.5f64 / 8.0;
    for (x, y) in g_dapo.tensors().iter().zip(g_nll.tensors()) {
        let scale = y.max_abs() as f64 * k;
        for (p, q) in x.data.iter().zip(&y.data) {
            assert!((*p as f64 - k * *q as f64).abs() <= 1e-5 * scale + 1e-12, "{p} vs {}", k * *q as f64);
        }
    }
}

/// Why `appliance train` keeps a group in one mini-batch: two rollouts of
/// one prompt that share 15 sampled tokens and differ in the last one, with
/// the group's advantages +1 and −1. Trained together, the shared tokens'
/// terms cancel and the gradient is that of the two last tokens alone. The
/// solved rollout alone (the group split across two steps) puts a gradient
/// on the shared prefix as large as the whole one.
#[test]
fn a_whole_group_puts_no_gradient_on_the_tokens_its_rollouts_share() {
    let mut model = sharpened_model();
    let rolls = rollouts(&mut model, &prompts()[..1], 16, 3);
    let (ids, _) = rolls[0].clone();
    let mut other = ids.clone();
    let last = other.len() - 1;
    other[last] = (other[last] + 1) % 512;
    let seqs = vec![ids, other];
    let re = recompute(&mut model, &seqs);
    let sampled: Vec<bool> = rolls[0].1.iter().map(Option::is_some).collect();
    let only_last: Vec<bool> = (0..sampled.len()).map(|i| i == last).collect();
    let sample = |k: usize, mask: &[bool], a: f32| DapoSample { ids: seqs[k].clone(), mask: mask.to_vec(), old_logprob: re[k].clone(), advantage: a };
    let grads = |model: &mut Model, samples: &[DapoSample]| {
        let mut g = Weights::zeros(&model.cfg);
        let s = dapo_loss_and_grads(model, samples, &CFG, &mut g).unwrap();
        (g, s.tokens as f32)
    };
    let (whole, n_whole) = grads(&mut model, &[sample(0, &sampled, 1.0), sample(1, &sampled, -1.0)]);
    let (divergent, n_div) = grads(&mut model, &[sample(0, &only_last, 1.0), sample(1, &only_last, -1.0)]);
    let (split, _) = grads(&mut model, &[sample(0, &sampled, 1.0)]);
    assert_eq!((n_whole, n_div), (32.0, 2.0));
    let (mut diff, mut scale, mut split_max) = (0.0f32, 0.0f32, 0.0f32);
    for ((w, d), s) in whole.tensors().iter().zip(divergent.tensors()).zip(split.tensors()) {
        for ((x, y), z) in w.data.iter().zip(&d.data).zip(&s.data) {
            // Token-level normalization: the whole group divides by 32
            // tokens, the divergent pair by 2.
            diff = diff.max((x - y * n_div / n_whole).abs());
            scale = scale.max(x.abs());
            split_max = split_max.max(z.abs());
        }
    }
    eprintln!("max |grad|: whole group {scale:.3e}, its difference from the divergent tokens' {diff:.3e}, the solved rollout alone {split_max:.3e}");
    assert!(scale > 0.0 && diff <= 1e-4 * scale, "the shared tokens left a gradient: {diff:e} of {scale:e}");
    assert!(split_max > 2.0 * scale, "split, the shared prefix is trained: {split_max:e} vs {scale:e}");
}

/// One step with a positive advantage raises the log-prob of the sampled
/// tokens; with a negative one, lowers it.
#[test]
fn one_step_moves_the_sampled_tokens_logprobs_with_the_advantage_sign() {
    for adv in [1.0f32, -1.0] {
        let mut model = tiny_model(4);
        let rolls = rollouts(&mut model, &prompts(), 16, 11);
        let samples = samples_from(&rolls, &[adv; 3]);
        let seqs: Vec<Vec<u32>> = rolls.iter().map(|r| r.0.clone()).collect();
        let mean_lp = |m: &mut Model| {
            let re = recompute(m, &seqs);
            let (mut s, mut n) = (0.0f64, 0);
            for (r, smp) in re.iter().zip(&samples) {
                for i in (0..r.len()).filter(|&i| smp.mask[i]) {
                    s += r[i] as f64;
                    n += 1;
                }
            }
            s / n as f64
        };
        let before = mean_lp(&mut model);
        let mut opt = AdamW::new(OptimConfig { lr: 1e-3, ..Default::default() }, &model.cfg);
        let mut g = Weights::zeros(&model.cfg);
        let st = dapo_step(&mut model, &mut opt, &mut g, &samples, &CFG, 1e-3, 1 << 20).unwrap();
        assert_eq!((st.tokens, st.sequences), (48, 3));
        assert!(st.grad_norm > 0.0 && st.grad_norm.is_finite(), "{st:?}");
        assert_eq!((st.clip_low_frac, st.clip_high_frac), (0.0, 0.0));
        assert!(st.entropy > 5.0 && st.entropy <= (512f64).ln() + 1e-4, "a random model is near uniform: {}", st.entropy);
        assert!((st.loss + adv as f64).abs() < 1e-4, "at ρ ≈ 1 the loss is −Â: {}", st.loss);
        let after = mean_lp(&mut model);
        eprintln!("advantage {adv}: mean log-prob of the sampled tokens {before:.5} -> {after:.5}");
        if adv > 0.0 {
            assert!(after > before + 1e-3, "{before} -> {after}");
        } else {
            assert!(after < before - 1e-3, "{before} -> {after}");
        }
    }
}

/// Micro-batch accumulation: a mini-batch packed one sample per
/// micro-batch takes the same step (same statistics, same weights to float
/// tolerance) as the whole mini-batch in one packed forward, because every
/// part is normalized by the mini-batch's token count N.
#[test]
fn micro_batches_add_up_to_the_mini_batch() {
    let mut base = sharpened_model();
    let rolls = rollouts(&mut base, &prompts(), 12, 5);
    let samples = spread_rho(&mut base, &samples_from(&rolls, &[1.5, -0.7, 0.4]));
    let run = |micro: usize| {
        let mut m = base.clone();
        let mut opt = AdamW::new(OptimConfig { lr: 1e-3, ..Default::default() }, &m.cfg);
        let mut g = Weights::zeros(&m.cfg);
        let st = dapo_step(&mut m, &mut opt, &mut g, &samples, &CFG, 1e-3, micro).unwrap();
        (m, st)
    };
    let (whole, a) = run(1 << 20);
    let (parts, b) = run(1);
    assert_eq!((a.tokens, a.sequences), (b.tokens, b.sequences));
    for (x, y, what) in [(a.loss, b.loss, "loss"), (a.grad_norm, b.grad_norm, "grad norm"), (a.clip_low_frac, b.clip_low_frac, "clip low"), (a.clip_high_frac, b.clip_high_frac, "clip high"), (a.entropy, b.entropy, "entropy")] {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{what}: {x} vs {y}");
    }
    assert!(a.clip_low_frac > 0.0 && a.clip_high_frac > 0.0, "the case exercises both clip sides: {a:?}");
    let (p, q) = (&whole.weights.embed.data, &parts.weights.embed.data);
    let moved = p.iter().zip(&base.weights.embed.data).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    let diff = p.iter().zip(q).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(moved > 1e-4 && diff <= 1e-3 * moved, "the step moved weights by {moved}, the packings differ by {diff}");
}

/// A trajectory of one task: a prompt, `turns` replies of 3 sampled tokens
/// each with log-probs, and its reward graded with the stage-1 length penalty.
fn traj(task: &str, sample: u32, reward: Option<f64>, turns: u32) -> Trajectory {
    let mut l = Ledger { ids: vec![1, 2, 3], source: vec![Source::Template, Source::Task, Source::Template], logprob: vec![None; 3], version: vec![None; 3] };
    let mut ts = vec![];
    for k in 0..turns {
        let start = l.ids.len();
        for j in 0..3u32 {
            l.ids.push(10 + (k * 3 + j + sample) % 400);
            l.source.push(Source::Sampled);
            l.logprob.push(Some(-6.0));
            l.version.push(Some(0));
        }
        ts.push(Turn::new(Span { start, end: l.ids.len() }, ReplyEnd::Stop));
        l.ids.push(4);
        l.source.push(Source::Observation);
        l.logprob.push(None);
        l.version.push(None);
    }
    let exit = if reward.is_none() { Exit::EnvironmentError } else if turns >= 40 { Exit::TurnLimit } else { Exit::Submitted };
    let t = Trajectory {
        format_version: 1,
        instance_id: task.into(),
        sample,
        seed: 0,
        policy: "local:test".into(),
        messages: vec![],
        ledger: l,
        turns: ts,
        exit,
        exit_detail: String::new(),
        patch: None,
        grade: None,
        reward,
        final_reward: final_reward(reward, turns, &LengthPenalty::default()),
        attempts: 1,
        timing: Timing::default(),
    };
    t.check().unwrap();
    t
}

/// R_final = R + R_length reaches the advantages: a long success counts
/// for less than a short one, and a group of successes of different
/// lengths still has a signal.
#[test]
fn the_length_penalty_flows_into_the_advantages() {
    // Stage 1: L_thr 10, T_max 40. Steps 5, 25, 40, 8 → R_length 0, −0.5, −1, 0.
    let trajs = vec![traj("a", 0, Some(1.0), 5), traj("a", 1, Some(1.0), 25), traj("a", 2, Some(0.0), 40), traj("a", 3, Some(0.0), 8)];
    let finals: Vec<f64> = trajs.iter().map(|t| t.final_reward.unwrap()).collect();
    assert_eq!(finals, vec![1.0, 0.5, -1.0, 0.0]);
    let p = prepare_samples(&trajs, 1e-6).unwrap();
    // By hand: mean 0.125, population std √0.546875.
    let std = 0.546875f64.sqrt() + 1e-6;
    let want = [0.875 / std, 0.375 / std, -1.125 / std, -0.125 / std];
    for (a, w) in p.advantages.iter().zip(want) {
        assert!((a.unwrap() - w).abs() < 1e-12, "{:?} vs {want:?}", p.advantages);
    }
    assert_eq!(p.samples.len(), 4);
    assert_eq!(p.samples[1].advantage, want[1] as f32);
    // Ten successes, one of them slow: only the penalty separates them.
    let mut g: Vec<Trajectory> = (0..9).map(|i| traj("b", i, Some(1.0), 6)).collect();
    g.push(traj("b", 9, Some(1.0), 30));
    let a = group_advantages(&g.iter().map(|t| t.final_reward.unwrap()).collect::<Vec<_>>(), &[0; 10], 1e-6).unwrap();
    assert!(a[..9].iter().all(|&x| x > 0.0) && a[9] < 0.0, "{a:?}");
}

/// A group with identical rewards contributes nothing and is not counted
/// in N; unscored trajectories are left out before grouping.
#[test]
fn zero_advantage_groups_and_unscored_trajectories_are_not_trained_or_counted() {
    let mut trajs = vec![];
    // Task "same": all failed in 4 turns → identical rewards.
    trajs.extend((0..3).map(|i| traj("same", i, Some(0.0), 4)));
    // Task "mixed": one success among failures, plus an environment error.
    trajs.push(traj("mixed", 0, Some(1.0), 2));
    trajs.push(traj("mixed", 1, Some(0.0), 3));
    trajs.push(traj("mixed", 2, None, 5));
    let p = prepare_samples(&trajs, 1e-6).unwrap();
    assert_eq!((p.zero_advantage, p.no_reward, p.no_logprobs), (3, 1, 0));
    assert_eq!(p.source, vec![3, 4]);
    // {1, 0}: ±0.5/(0.5 + δ) — the unscored one is not a zero in the group.
    assert!((p.advantages[3].unwrap() - 0.5 / (0.5 + 1e-6)).abs() < 1e-12);
    assert_eq!(p.advantages[5], None);
    assert!(p.advantages[..3].iter().all(|&a| a == Some(0.0)));

    let mut model = tiny_model(5);
    let mut g = Weights::zeros(&model.cfg);
    let s = dapo_loss_and_grads(&mut model, &p.samples, &CFG, &mut g).unwrap();
    assert_eq!(s.tokens, 2 * 3 + 3 * 3, "N counts the survivors' sampled tokens only");
}

#[test]
fn the_dapo_config_section_is_validated_with_the_file_and_keys() {
    // The embedded default keeps the method's stage-1 clip range and δ; its
    // group size is the tiny pipeline's (the method's G = 10 is in the Qwen
    // configs, checked in config.rs).
    let c = Config::embedded();
    assert_eq!(c.dapo.algorithm(), DapoConfig::default());
    assert_eq!((c.dapo.eps_low, c.dapo.eps_high, c.dapo.delta, c.dapo.group_size), (0.2, 0.3, 1e-6, 4));
    let c = Config::from_str_over_default("[dapo]\neps_high = 0.26\nproblems_per_iteration = 100\n", "stage2.toml").unwrap();
    assert_eq!((c.dapo.eps_high, c.dapo.problems_per_iteration), (0.26, 100));
    let e = Config::from_str_over_default("[dapo]\neps_high = 0.1\n", "user.toml").unwrap_err().to_string();
    assert!(e.contains("user.toml") && e.contains("dapo.eps_high") && e.contains("dapo.eps_low"), "{e}");
    let e = Config::from_str_over_default("[dapo]\ndelta = -1.0\n", "user.toml").unwrap_err().to_string();
    assert!(e.contains("user.toml") && e.contains("dapo.delta"), "{e}");
    let e = Config::from_str_over_default("[dapo]\ngroup_size = 1\n", "user.toml").unwrap_err().to_string();
    assert!(e.contains("dapo.group_size"), "{e}");
    let e = Config::from_str_over_default("[dapo]\neps_hi = 0.3\n", "user.toml").unwrap_err().to_string();
    assert!(e.contains("eps_hi"), "{e}");
    // One pass over an iteration's samples, as in the method, unless asked.
    assert_eq!(Config::embedded().dapo.epochs, 1);
    assert_eq!(Config::from_str_over_default("[dapo]\nepochs = 4\n", "user.toml").unwrap().dapo.epochs, 4);
    let e = Config::from_str_over_default("[dapo]\nepochs = 0\n", "user.toml").unwrap_err().to_string();
    assert!(e.contains("user.toml") && e.contains("dapo.epochs"), "{e}");
}

/// The trainer's path on the GPU model backend (here the simulated device):
/// two DAPO steps of three micro-batches each (gradients accumulated on the
/// device, the global-norm clip and AdamW there, the weights left on the
/// device between steps and pulled back once at the end, m and v synced for
/// a checkpoint) take the CPU's steps to bf16 rounding.
#[test]
fn dapo_steps_on_the_simulated_device_follow_the_cpu() {
    let mut base = sharpened_model();
    let rolls = rollouts(&mut base, &prompts(), 12, 5);
    let samples = spread_rho(&mut base, &samples_from(&rolls, &[1.5, -0.7, 0.4]));
    let run = |device: bool| {
        let mut m = base.clone();
        if device {
            appliance::model::qwen2_gpu::attach(&mut m, Box::new(appliance::device::sim::SimDevice::new().unwrap()), appliance::model::qwen2_gpu::Capacity { tokens: 512, chunk_tokens: 16 }).unwrap();
        }
        let mut opt = AdamW::new(OptimConfig { lr: 1e-4, ..Default::default() }, &m.cfg);
        let mut g = Weights::zeros(&m.cfg);
        let steps: Vec<_> = (0..2).map(|_| dapo_step(&mut m, &mut opt, &mut g, &samples, &CFG, 1e-4, 1).unwrap()).collect();
        if device {
            // The steps stayed on the device: the host copy is the starting
            // point until it is synced, and saving it is refused meanwhile.
            assert!(!m.host_weights_current());
            assert_eq!(m.weights, base.weights);
            let p = appliance::model::pretrained::Pretrained { model: m.clone(), tokenizer: appliance::model::tokenizer::Tokenizer::tiny().unwrap(), origin: "test".into() };
            let dir = tempfile::tempdir().unwrap();
            let e = appliance::model::pretrained::save(&p, &dir.path().join("model")).unwrap_err();
            assert!(!dir.path().join("model").exists(), "nothing is written");
            assert!(e.to_string().contains("sync_host_weights"), "{e}");
            m.sync_host_weights().unwrap();
            assert!(m.host_weights_current());
        }
        // With the GPU backend, AdamW's m and v live on the device until synced.
        appliance::train::optimizer::sync_optimizer(&m, &mut opt).unwrap();
        (m, opt, steps)
    };
    let (cpu, opt_cpu, a) = run(false);
    let (dev, opt_dev, b) = run(true);
    assert_eq!((opt_cpu.step, opt_dev.step), (2, 2));
    assert!(dev.train_device.is_some() && cpu.train_device.is_none());
    for (x, y) in a.iter().zip(&b) {
        eprintln!("cpu {x:?}\ndev {y:?}");
        assert_eq!((x.tokens, x.sequences), (y.tokens, y.sequences));
        for (p, q, what) in [(x.loss, y.loss, "loss"), (x.grad_norm, y.grad_norm, "grad norm"), (x.entropy, y.entropy, "entropy")] {
            assert!((p - q).abs() <= 2e-2 * p.abs().max(1e-2), "{what}: cpu {p} vs device {q}");
        }
    }
    // The weights moved the same way: the paths differ by a small part of the move.
    let flat = |w: &Weights| -> Vec<f32> { w.tensors().iter().flat_map(|t| t.data.iter().copied()).collect() };
    let (w0, wc, wd) = (flat(&base.weights), flat(&cpu.weights), flat(&dev.weights));
    let norm = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
    let (moved, apart) = (norm(&wc, &w0), norm(&wc, &wd));
    eprintln!("moved {moved:e}, cpu and device apart by {apart:e}");
    assert!(moved > 0.0 && apart < 0.1 * moved, "moved {moved}, apart {apart}");
    // AdamW's first moment came back from the device.
    let (mc, md) = (flat(&opt_cpu.m), flat(&opt_dev.m));
    let zero = vec![0.0f32; mc.len()];
    let (size, apart) = (norm(&mc, &zero), norm(&mc, &md));
    eprintln!("m: size {size:e}, cpu and device apart by {apart:e}");
    assert!(size > 0.0 && apart < 0.1 * size, "m: size {size}, apart {apart}");
}
