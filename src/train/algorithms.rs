//! The RL algorithms of the method, side by side: group advantages with the
//! zero-advantage filter, the DAPO policy loss with its gradient and clip
//! statistics, the rejection fine-tuning loss weights, and the DAPO training
//! step on a packed mini-batch.
//!
//! Owns: the math that turns rewards and log-probs into a loss and
//! d loss / d logprob, and the packing of trajectories into per-position
//! training arrays (which position predicts which ledger token). Does not
//! own the model's backward from d logprob to weights (`model::qwen2`), the
//! optimizer (`train::optimizer`), how rewards are computed
//! (`agent::reward`), or the iteration loop that rolls out, verifies and
//! calls these.
//!
//! The loss (METHOD.md, phase 2, step 6), for the assistant tokens `t` of a
//! mini-batch, `N` of them in all:
//!
//! ```text
//!   ρ_t    = exp(logp_new_t − logp_old_t)           π_θ / π_sampling
//!   term_t = min(ρ_t · Â_t, clip(ρ_t, 1 − ε_low, 1 + ε_high) · Â_t)
//!   loss   = − Σ_t term_t / N                        token-level mean
//! ```
//!
//! No KL term, no entropy bonus. `N` counts tokens across all samples of the
//! mini-batch, so a long trajectory weighs more than a short one, token for
//! token (not a mean of per-sample means).
//!
//! Position convention: the ledger's token `i` is predicted at packed
//! position `i − 1` (`Batch::next_token_targets`), so a sample's mask,
//! old log-prob and advantage at token `i` land on position `i − 1`; token
//! 0 has no prediction and is never trained.

use super::optimizer::{optimizer_step, AdamW};
use crate::agent::trajectory::Trajectory;
use crate::model::chat::Source;
use crate::model::qwen2::{Batch, Model};
use crate::model::weights::Weights;
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::hash::Hash;

// --------------------------------------------------------------------------
// Advantages
// --------------------------------------------------------------------------

/// Group-normalized advantages, Â_i = (R_i − mean_g) / (std_g + δ), where
/// `g = groups[i]` and the mean and standard deviation are over the rewards
/// of group `g` (METHOD.md, phase 2, step 5).
///
/// The standard deviation is the POPULATION one (divide by G, not G − 1).
/// METHOD.md does not say which; the population std is the textbook
/// "standardize the group" choice. Note that verl's and TRL's GRPO
/// advantages call `torch.std`, which is the sample (Bessel-corrected)
/// std: theirs are smaller than ours by a factor √((G−1)/G), 0.949 at G = 10.
///
/// A group whose rewards are all equal (including a group of one) gets an
/// advantage of exactly 0 for every member, so [`keep_nonzero`] drops it.
/// This is decided by comparing the rewards, not by computing R − mean:
/// ten rewards of 0.1 have a floating-point mean of 0.09999999999999999,
/// and (0.1 − mean) / (0 + δ) would be 1.4e-11, not 0.
///
/// Errors: `groups` and `rewards` of different lengths, a non-finite
/// reward, a negative or non-finite δ.
pub fn group_advantages<G: Eq + Hash>(rewards: &[f64], groups: &[G], delta: f64) -> Result<Vec<f64>> {
    ensure!(rewards.len() == groups.len(), "group_advantages: {} rewards but {} group ids", rewards.len(), groups.len());
    ensure!(delta.is_finite() && delta >= 0.0, "group_advantages: delta must be a finite number >= 0, got {delta}");
    if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
        bail!("group_advantages: reward {i} is {}, not a finite number", rewards[i]);
    }
    // Members of each group, in input order (so the sums are deterministic).
    let mut members: HashMap<&G, Vec<usize>> = HashMap::new();
    for (i, g) in groups.iter().enumerate() {
        members.entry(g).or_default().push(i);
    }
    let mut adv = vec![0.0; rewards.len()];
    for idx in members.values() {
        let first = rewards[idx[0]];
        if idx.iter().all(|&i| rewards[i] == first) {
            continue; // identical rewards: no signal, advantage exactly 0
        }
        let n = idx.len() as f64;
        let mean = idx.iter().map(|&i| rewards[i]).sum::<f64>() / n;
        let var = idx.iter().map(|&i| (rewards[i] - mean).powi(2)).sum::<f64>() / n;
        let std = var.sqrt();
        for &i in idx {
            adv[i] = (rewards[i] - mean) / (std + delta);
        }
    }
    Ok(adv)
}

/// [`group_advantages`] over the samples that have a reward: samples whose
/// reward is `None` (an environment or policy error) are left out before
/// grouping, so they count toward neither the mean nor the std, and get
/// `None` back.
pub fn scored_advantages<G: Eq + Hash>(rewards: &[Option<f64>], groups: &[G], delta: f64) -> Result<Vec<Option<f64>>> {
    ensure!(rewards.len() == groups.len(), "scored_advantages: {} rewards but {} group ids", rewards.len(), groups.len());
    let scored: Vec<usize> = (0..rewards.len()).filter(|&i| rewards[i].is_some()).collect();
    let r: Vec<f64> = scored.iter().filter_map(|&i| rewards[i]).collect();
    let g: Vec<&G> = scored.iter().map(|&i| &groups[i]).collect();
    let a = group_advantages(&r, &g, delta)?;
    let mut out = vec![None; rewards.len()];
    for (&i, a) in scored.iter().zip(a) {
        out[i] = Some(a);
    }
    Ok(out)
}

/// Indices of the samples to train on: those whose advantage is not
/// exactly zero. Zero-advantage samples (groups with identical rewards)
/// carry no gradient; dropping them also keeps them out of the token count
/// `N` that normalizes the loss.
pub fn keep_nonzero(advantages: &[f64]) -> Vec<usize> {
    (0..advantages.len()).filter(|&i| advantages[i] != 0.0).collect()
}

/// Split an iteration's samples into mini-batches of at most `mini_batch`,
/// keeping each group (one task's rollouts, `groups[i]` for sample `i`)
/// whole: the groups are visited in a random order (that of their first
/// members in the samples shuffled by `rng`), and a group that does not fit
/// in the room left starts the next mini-batch. Only a group larger than
/// `mini_batch` is cut, into `mini_batch`-sized pieces.
/// Returns sample indices per mini-batch.
///
/// Why whole groups: the group advantages of a task sum to zero, so at
/// ρ = 1 every token its rollouts share (the prompt-conditioned prefix
/// before they diverge: the same `open`, the same path) gets exactly zero
/// gradient when the whole group is in one step. Split across steps, the
/// solved half pushes that prefix up in one step and the failed half pushes
/// it down in another; AdamW's momentum does not undo the first push, so the
/// shared decisions drift at random.
pub fn group_mini_batches<G: Eq + Hash>(groups: &[G], mini_batch: usize, rng: &mut impl rand::Rng) -> Vec<Vec<usize>> {
    let mini_batch = mini_batch.max(1);
    // The samples are shuffled, and the groups taken in the order in which
    // their first member comes (a HashMap's order is not seeded); members
    // keep their own order.
    let mut order: Vec<usize> = (0..groups.len()).collect();
    rand::seq::SliceRandom::shuffle(order.as_mut_slice(), rng);
    let mut slot: HashMap<&G, usize> = HashMap::new();
    let mut members: Vec<Vec<usize>> = vec![];
    for &i in &order {
        let k = *slot.entry(&groups[i]).or_insert_with(|| {
            members.push(vec![]);
            members.len() - 1
        });
        members[k].push(i);
    }
    for m in &mut members {
        m.sort_unstable();
    }
    let mut out: Vec<Vec<usize>> = vec![];
    let mut cur: Vec<usize> = vec![];
    // A group that fits is one piece; a larger one, mini-batch-sized pieces.
    for piece in members.iter().flat_map(|m| m.chunks(mini_batch)) {
        if cur.len() + piece.len() > mini_batch && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.extend_from_slice(piece);
        if cur.len() == mini_batch {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// An iteration's optimizer steps: `epochs` passes over the samples, each
/// split by `group_mini_batches` with fresh draws from `rng`, as (epoch,
/// sample indices) in the order they train. The method takes one pass; in
/// a later pass the policy has moved since sampling, so ρ leaves 1 and the
/// clip range bounds how far the pass pushes each token.
pub fn epoch_mini_batches<G: Eq + Hash>(groups: &[G], mini_batch: usize, epochs: usize, rng: &mut impl rand::Rng) -> Vec<(usize, Vec<usize>)> {
    let mut out = vec![];
    for epoch in 0..epochs {
        out.extend(group_mini_batches(groups, mini_batch, rng).into_iter().map(|b| (epoch, b)));
    }
    out
}

// --------------------------------------------------------------------------
// The DAPO loss
// --------------------------------------------------------------------------

// The per-token loss is the CPU reference of the fused GPU kernel, so it
// lives in the backend beside it; it is part of this module's API.
pub use crate::backend::cpu::dapo_loss::{dapo_loss, DapoConfig, DapoOut};

// --------------------------------------------------------------------------
// Rejection fine-tuning
// --------------------------------------------------------------------------

/// Move a per-token mask onto the positions that predict those tokens:
/// `out[t] = mask[t + 1]`, and the last position predicts nothing.
pub fn predicted_at(mask: &[bool]) -> Vec<bool> {
    let mut out = vec![false; mask.len()];
    if let Some(next) = mask.get(1..) {
        out[..next.len()].copy_from_slice(next);
    }
    out
}

/// The RFT loss weights of one trajectory, aligned with
/// `Batch::next_token_targets` of its ledger ids: 1 at position `t` when
/// token `t + 1` is an assistant token outside a format-error turn
/// (`Trajectory::rft_mask`), else 0. Format-error turns stay in the
/// context; they are only left out of the loss. Feed these to
/// `supervised::supervised_step` (a token-level weighted NLL: the sum over
/// trained tokens divided by their count across the batch).
pub fn rft_weights(traj: &Trajectory) -> Vec<f32> {
    predicted_at(&traj.rft_mask()).into_iter().map(|m| if m { 1.0 } else { 0.0 }).collect()
}

// --------------------------------------------------------------------------
// Samples and the training step
// --------------------------------------------------------------------------

/// One trajectory ready for the DAPO step. All vectors are per ledger token.
#[derive(Clone, Debug, PartialEq)]
pub struct DapoSample {
    pub ids: Vec<u32>,
    /// The tokens to train: sampled assistant tokens with a recorded
    /// sampling log-prob. Token 0 is never trained (nothing predicts it).
    pub mask: Vec<bool>,
    /// The sampling log-prob of each token; read only where `mask`.
    pub old_logprob: Vec<f32>,
    /// Â, the same for every token of the trajectory.
    pub advantage: f32,
}

impl DapoSample {
    /// The sample for a trajectory: every sampled assistant token that has
    /// a recorded log-prob is trained; assistant tokens without one
    /// (re-tokenized or scripted replies) stay in the context but carry no
    /// loss, since ρ cannot be formed for them. Format-error turns ARE
    /// trained (only RFT masks them), and so are truncated episodes.
    /// `None` when no token is left to train.
    pub fn from_trajectory(t: &Trajectory, advantage: f32) -> Option<Self> {
        let l = &t.ledger;
        let n = l.ids.len();
        if l.source.len() != n || l.logprob.len() != n {
            return None; // a malformed ledger (Trajectory::check would say so)
        }
        let mut mask: Vec<bool> = l.source.iter().zip(&l.logprob).map(|(&s, lp)| s == Source::Sampled && lp.is_some()).collect();
        if let Some(m) = mask.first_mut() {
            *m = false;
        }
        if !mask.iter().any(|&m| m) {
            return None;
        }
        let old_logprob = l.logprob.iter().map(|lp| lp.unwrap_or(0.0)).collect();
        Some(DapoSample { ids: l.ids.clone(), mask, old_logprob, advantage })
    }
}

/// One iteration's trajectories turned into training samples.
#[derive(Clone, Debug, Default)]
pub struct PreparedBatch {
    pub samples: Vec<DapoSample>,
    /// For each sample, the index of its trajectory.
    pub source: Vec<usize>,
    /// Each trajectory's advantage (`None`: no reward).
    pub advantages: Vec<Option<f64>>,
    /// Trajectories left out for having no reward (environment or policy errors).
    pub no_reward: usize,
    /// Trajectories dropped for a zero advantage.
    pub zero_advantage: usize,
    /// Trajectories with a nonzero advantage but no token to train.
    pub no_logprobs: usize,
}

/// Advantages for one iteration's trajectories, grouped by task
/// (`instance_id`), from each one's `final_reward` (R + R_length); then the
/// zero-advantage filter; then one [`DapoSample`] per survivor.
pub fn prepare_samples(trajs: &[Trajectory], delta: f64) -> Result<PreparedBatch> {
    let rewards: Vec<Option<f64>> = trajs.iter().map(|t| t.final_reward).collect();
    let groups: Vec<&str> = trajs.iter().map(|t| t.instance_id.as_str()).collect();
    let adv = scored_advantages(&rewards, &groups, delta)?;
    let mut p = PreparedBatch { advantages: adv.clone(), ..Default::default() };
    for (i, (t, a)) in trajs.iter().zip(&adv).enumerate() {
        match *a {
            None => p.no_reward += 1,
            Some(0.0) => p.zero_advantage += 1,
            Some(a) => match DapoSample::from_trajectory(t, a as f32) {
                Some(s) => {
                    p.samples.push(s);
                    p.source.push(i);
                }
                None => p.no_logprobs += 1,
            },
        }
    }
    Ok(p)
}

/// A mini-batch packed for one forward: per packed position, the target
/// token, whether it is trained, its old log-prob and its advantage.
#[derive(Debug)]
struct Packed {
    batch: Batch,
    targets: Vec<u32>,
    mask: Vec<bool>,
    old: Vec<f32>,
    adv: Vec<f32>,
    n_tokens: usize,
}

fn pack(samples: &[DapoSample]) -> Result<Packed> {
    ensure!(!samples.is_empty(), "the DAPO mini-batch is empty");
    for (k, s) in samples.iter().enumerate() {
        let n = s.ids.len();
        ensure!(n > 0, "sample {k} has no tokens");
        ensure!(s.mask.len() == n, "sample {k}: {} mask entries for {n} tokens", s.mask.len());
        ensure!(s.old_logprob.len() == n, "sample {k}: {} old log-probs for {n} tokens", s.old_logprob.len());
        ensure!(!s.mask[0], "sample {k}: token 0 is marked for training, but nothing predicts it");
        ensure!(s.advantage.is_finite(), "sample {k}: the advantage is {}, not a finite number", s.advantage);
        if let Some(i) = (0..n).find(|&i| s.mask[i] && !s.old_logprob[i].is_finite()) {
            bail!("sample {k}: the sampling log-prob of token {i} is {}, not a finite number", s.old_logprob[i]);
        }
    }
    let seqs: Vec<&[u32]> = samples.iter().map(|s| s.ids.as_slice()).collect();
    let batch = Batch::from_sequences(&seqs);
    let (targets, _) = batch.next_token_targets();
    let total = batch.len();
    let (mut mask, mut old, mut adv) = (vec![false; total], vec![0.0f32; total], vec![0.0f32; total]);
    for (s, r) in samples.iter().zip(&batch.seqs) {
        // Token i of the sample is predicted at packed position r.start + i − 1.
        for i in 1..s.ids.len() {
            let p = r.start + i - 1;
            mask[p] = s.mask[i];
            old[p] = s.old_logprob[i];
            adv[p] = s.advantage;
        }
    }
    let n_tokens = mask.iter().filter(|&&m| m).count();
    ensure!(n_tokens > 0, "the DAPO mini-batch of {} samples has no token to train", samples.len());
    Ok(Packed { batch, targets, mask, old, adv, n_tokens })
}

/// The DAPO loss of a mini-batch under the model's current weights, and
/// what came with it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DapoLossStats {
    pub loss: f64,
    pub clip_low_frac: f64,
    pub clip_high_frac: f64,
    /// Mean entropy (nats) of the distributions that predict the trained tokens.
    pub entropy: f64,
    /// Trained tokens, N.
    pub tokens: usize,
    /// Sampler–trainer parity over the trained tokens, before any update:
    /// mean and max of |old_logprob − recomputed log-prob|.
    pub parity_mean_abs: f64,
    pub parity_max_abs: f64,
}

/// Forward over the packed mini-batch, the DAPO loss, and its gradients
/// ADDED into `grads` (zero them first for a fresh step).
pub fn dapo_loss_and_grads(model: &mut Model, samples: &[DapoSample], cfg: &DapoConfig, grads: &mut Weights) -> Result<DapoLossStats> {
    accumulate_dapo(model, samples, cfg, None, grads)
}

/// [`dapo_loss_and_grads`] for one micro-batch of a larger mini-batch: the
/// loss is normalized by `norm_tokens`, the assistant tokens of the WHOLE
/// mini-batch (`None`: this micro-batch's own), so that the gradients of
/// the micro-batches add up to the mini-batch's. The returned loss is this
/// part's share; the other statistics are this part's own means.
pub fn accumulate_dapo(model: &mut Model, samples: &[DapoSample], cfg: &DapoConfig, norm_tokens: Option<usize>, grads: &mut Weights) -> Result<DapoLossStats> {
    let p = pack(samples)?;
    let norm = norm_tokens.unwrap_or(p.n_tokens);
    let (st, lp) = model.forward_logprobs(&p.batch, &p.targets).context("DAPO forward")?;
    let out = dapo_loss(&lp.logprob, &p.old, &p.adv, &p.mask, norm, cfg)?;

    let (mut ent, mut dsum, mut dmax) = (0.0f64, 0.0f64, 0.0f64);
    for t in (0..p.mask.len()).filter(|&t| p.mask[t]) {
        ent += lp.entropy[t] as f64;
        let d = (p.old[t] as f64 - lp.logprob[t] as f64).abs();
        dsum += d;
        dmax = dmax.max(d);
    }
    let n = p.n_tokens as f64;

    let g_entropy = vec![0.0f32; p.batch.len()];
    model.backward_into(&p.batch, &st, &p.targets, &lp, &out.grad_logp, &g_entropy, grads).context("DAPO backward")?;
    Ok(DapoLossStats {
        loss: out.loss,
        clip_low_frac: out.clip_low_frac,
        clip_high_frac: out.clip_high_frac,
        entropy: ent / n,
        tokens: p.n_tokens,
        parity_mean_abs: dsum / n,
        parity_max_abs: dmax,
    })
}

/// What one DAPO optimizer step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DapoStepStats {
    pub loss: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f32,
    pub clip_low_frac: f64,
    pub clip_high_frac: f64,
    pub entropy: f64,
    pub tokens: usize,
    pub sequences: usize,
    pub parity_mean_abs: f64,
    pub parity_max_abs: f64,
}

/// One DAPO optimizer step on a mini-batch: the samples are packed into
/// micro-batches of at most `micro_batch_tokens` tokens (first fit, longest
/// first; see `rft::pack`), each contributes its gradient normalized by the
/// mini-batch's assistant-token count N (so the sum is the mini-batch's
/// gradient, whatever the packing), then the global gradient norm is
/// clipped to `opt.config.grad_clip` and AdamW steps at `lr`. A non-finite
/// gradient norm is an error and leaves the weights unchanged. The
/// statistics are over the whole mini-batch (token-weighted means).
#[allow(clippy::too_many_arguments)]
pub fn dapo_step(
    model: &mut Model,
    opt: &mut AdamW,
    grads: &mut Weights,
    samples: &[DapoSample],
    cfg: &DapoConfig,
    lr: f32,
    micro_batch_tokens: usize,
) -> Result<DapoStepStats> {
    ensure!(!samples.is_empty(), "the DAPO mini-batch is empty");
    model.zero_grads(grads)?;
    let n_total: usize = samples.iter().map(|s| s.mask.iter().skip(1).filter(|&&m| m).count()).sum();
    let lengths: Vec<usize> = samples.iter().map(|s| s.ids.len()).collect();
    let bins = super::rft::pack(&lengths, micro_batch_tokens.max(1));
    let (mut loss, mut low, mut high, mut ent, mut par_sum, mut par_max, mut tokens) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0f64, 0usize);
    for bin in &bins {
        let part: Vec<DapoSample> = bin.iter().map(|&i| samples[i].clone()).collect();
        let s = accumulate_dapo(model, &part, cfg, Some(n_total), grads)?;
        let w = s.tokens as f64;
        loss += s.loss;
        low += s.clip_low_frac * w;
        high += s.clip_high_frac * w;
        ent += s.entropy * w;
        par_sum += s.parity_mean_abs * w;
        par_max = par_max.max(s.parity_max_abs);
        tokens += s.tokens;
    }
    let n = tokens.max(1) as f64;
    let grad_norm = optimizer_step(model, opt, grads, lr).with_context(|| format!("the DAPO step (loss {loss})"))?;
    Ok(DapoStepStats {
        loss,
        grad_norm,
        lr,
        clip_low_frac: low / n,
        clip_high_frac: high / n,
        entropy: ent / n,
        tokens,
        sequences: samples.len(),
        parity_mean_abs: par_sum / n,
        parity_max_abs: par_max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::command::FormatError;
    use crate::agent::trajectory::{Exit, Ledger, ReplyEnd, Span, Timing, Turn};
    use crate::backend::cpu::gradcheck::random_vec;

    const CFG: DapoConfig = DapoConfig { eps_low: 0.2, eps_high: 0.3, delta: 1e-6 };

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// Each epoch is a whole split of the samples into whole groups, with a
    /// group order of its own; one epoch is exactly `group_mini_batches`
    /// (the same draws), and the epochs come in order.
    #[test]
    fn every_epoch_trains_every_sample_once_in_whole_groups() {
        use rand::SeedableRng;
        let groups = ["a", "b", "c", "a", "b", "d", "c", "a", "e", "b", "d", "c", "a", "d", "e", "b", "c"];
        let mut reshuffled = false;
        for seed in 0..10u64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let one = group_mini_batches(&groups, 8, &mut rng);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let plan = epoch_mini_batches(&groups, 8, 1, &mut rng);
            assert_eq!(plan, one.into_iter().map(|b| (0, b)).collect::<Vec<_>>());
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let plan = epoch_mini_batches(&groups, 8, 3, &mut rng);
            let epochs: Vec<usize> = plan.iter().map(|(e, _)| *e).collect();
            assert!(epochs.windows(2).all(|w| w[0] <= w[1]) && epochs[0] == 0 && *epochs.last().unwrap() == 2, "{epochs:?}");
            let mut splits = vec![];
            for e in 0..3 {
                let batches: Vec<&Vec<usize>> = plan.iter().filter(|(x, _)| *x == e).map(|(_, b)| b).collect();
                let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.iter().copied()).collect();
                seen.sort_unstable();
                assert_eq!(seen, (0..groups.len()).collect::<Vec<_>>(), "epoch {e}: {plan:?}");
                for g in ["a", "b", "c", "d", "e"] {
                    assert_eq!(batches.iter().filter(|b| b.iter().any(|&i| groups[i] == g)).count(), 1, "epoch {e} splits {g}: {plan:?}");
                }
                splits.push(batches);
            }
            reshuffled |= splits[0] != splits[1] || splits[1] != splits[2];
        }
        assert!(reshuffled, "every epoch drew the same mini-batches");
    }

    /// Every sample lands in exactly one mini-batch of at most `mini_batch`,
    /// every group in one mini-batch when it fits, the same seed gives the
    /// same split, and the group order is shuffled.
    #[test]
    fn mini_batches_keep_groups_whole() {
        use rand::SeedableRng;
        // Five groups of 4, 4, 4, 3 and 2 samples, interleaved.
        let groups = ["a", "b", "c", "a", "b", "d", "c", "a", "e", "b", "d", "c", "a", "d", "e", "b", "c"];
        let mut orders = std::collections::HashSet::new();
        for seed in 0..20u64 {
            for mb in [4usize, 5, 8, 16, 17] {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                let batches = group_mini_batches(&groups, mb, &mut rng);
                let mut seen: Vec<usize> = batches.concat();
                seen.sort_unstable();
                assert_eq!(seen, (0..groups.len()).collect::<Vec<_>>(), "mb {mb}: {batches:?}");
                for b in &batches {
                    assert!(!b.is_empty() && b.len() <= mb, "mb {mb}: {batches:?}");
                }
                for g in ["a", "b", "c", "d", "e"] {
                    let holding = batches.iter().filter(|b| b.iter().any(|&i| groups[i] == g)).count();
                    assert_eq!(holding, 1, "group {g} split at mb {mb}: {batches:?}");
                }
                // Greedy filling: a mini-batch is closed only when the next
                // group does not fit.
                for w in batches.windows(2) {
                    let next = groups.iter().filter(|&&g| g == groups[w[1][0]]).count();
                    assert!(w[0].len() + next > mb, "mb {mb}: {batches:?}");
                }
                let mut again = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                assert_eq!(group_mini_batches(&groups, mb, &mut again), batches);
                if mb == 4 {
                    orders.insert(batches.iter().map(|b| groups[b[0]]).collect::<String>());
                }
            }
        }
        assert!(orders.len() > 10, "the group order is not shuffled: {orders:?}");
    }

    /// A group larger than the mini-batch is cut into mini-batch-sized
    /// pieces (mini_batch 1: one sample per step), and what is left of it
    /// shares a mini-batch with the next group when that fits.
    #[test]
    fn groups_larger_than_the_mini_batch_are_cut() {
        use rand::SeedableRng;
        let groups = [0u8, 0, 0, 0, 0, 1, 1];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let one = group_mini_batches(&groups, 1, &mut rng);
        assert_eq!(one.len(), 7);
        assert!(one.iter().all(|b| b.len() == 1));
        for seed in 0..8 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let b = group_mini_batches(&groups, 3, &mut rng);
            let sizes: Vec<usize> = b.iter().map(Vec::len).collect();
            // Group 0 first: [3] [2] then group 1's 2 do not fit beside the
            // 2 → [3, 2, 2]. Group 1 first: [2] then 0's pieces [3], [2] →
            // [2, 3, 2].
            assert!(sizes == [3, 2, 2] || sizes == [2, 3, 2], "{b:?}");
            assert!(b.iter().all(|m| m.iter().all(|&i| groups[i] == groups[m[0]])), "{b:?}");
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        assert!(group_mini_batches::<u8>(&[], 4, &mut rng).is_empty());
    }

    #[test]
    fn group_advantages_by_hand() {
        // Group 7: rewards 1, 0, 0, 1 → mean 0.5, population std 0.5.
        // Group 3: rewards 1, 0, 0 → mean 1/3, std √(2/9).
        let r = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        let g = [7usize, 3, 7, 3, 7, 3, 7];
        let a = group_advantages(&r, &g, 1e-6).unwrap();
        let s7 = 0.5 + 1e-6;
        let (m3, s3) = (1.0 / 3.0, (2.0f64 / 9.0).sqrt() + 1e-6);
        let want = [0.5 / s7, (1.0 - m3) / s3, -0.5 / s7, -m3 / s3, -0.5 / s7, -m3 / s3, 0.5 / s7];
        for (x, w) in a.iter().zip(want) {
            assert!(close(*x, w, 1e-12), "{a:?} vs {want:?}");
        }
        // The group mean of the advantages is zero.
        assert!(close(a[1] + a[3] + a[5], 0.0, 1e-12));
    }

    #[test]
    fn identical_rewards_give_exactly_zero_and_are_dropped() {
        // Ten rewards of 0.1 (a penalized success) have a floating-point
        // mean that is not 0.1; the group must still come out exactly zero.
        let mean = [0.1f64; 10].iter().sum::<f64>() / 10.0;
        assert_ne!(mean, 0.1, "the trap this test guards against");
        let mut r = vec![0.1; 10];
        r.extend([1.0, 0.0, 0.0]);
        r.push(0.5); // a group of one
        let mut g = vec!["a"; 10];
        g.extend(["b", "b", "b"]);
        g.push("c");
        let a = group_advantages(&r, &g, 1e-6).unwrap();
        assert!(a[..10].iter().all(|&x| x == 0.0), "{a:?}");
        assert_eq!(a[13], 0.0);
        assert_eq!(keep_nonzero(&a), vec![10, 11, 12]);
    }

    #[test]
    fn unscored_samples_are_left_out_before_grouping() {
        // Without the None, the group would be {1, 0, 0}; with it left out,
        // {1, 0}: mean 0.5, std 0.5.
        let r = [Some(1.0), None, Some(0.0)];
        let a = scored_advantages(&r, &[0, 0, 0], 0.0).unwrap();
        assert_eq!(a, vec![Some(1.0), None, Some(-1.0)]);
    }

    #[test]
    fn advantage_input_errors_are_named() {
        let e = group_advantages(&[1.0, 0.0], &[0], 1e-6).unwrap_err().to_string();
        assert!(e.contains("2 rewards but 1 group ids"), "{e}");
        let e = group_advantages(&[1.0, f64::NAN], &[0, 0], 1e-6).unwrap_err().to_string();
        assert!(e.contains("reward 1 is NaN"), "{e}");
        let e = group_advantages(&[1.0], &[0], -1.0).unwrap_err().to_string();
        assert!(e.contains("delta"), "{e}");
    }

    #[test]
    fn config_validation_names_the_keys() {
        CFG.validate().unwrap();
        DapoConfig::default().validate().unwrap();
        let e = DapoConfig { eps_low: 0.3, eps_high: 0.2, delta: 1e-6 }.validate().unwrap_err().to_string();
        assert!(e.contains("dapo.eps_high") && e.contains("dapo.eps_low"), "{e}");
        let e = DapoConfig { eps_low: -0.1, ..CFG }.validate().unwrap_err().to_string();
        assert!(e.contains("dapo.eps_low"), "{e}");
        let e = DapoConfig { delta: -1e-6, ..CFG }.validate().unwrap_err().to_string();
        assert!(e.contains("dapo.delta"), "{e}");
        let e = DapoConfig { eps_low: 1.0, eps_high: 1.5, ..CFG }.validate().unwrap_err().to_string();
        assert!(e.contains("below 1"), "{e}");
    }

    /// Each case: (ρ, Â, term, d loss/d logp · N, clipped low, clipped high),
    /// with ε_low 0.2 and ε_high 0.3: the range is [0.8, 1.3].
    const CASES: [(f64, f64, f64, f64, bool, bool); 10] = [
        // positive advantage
        (1.1, 1.0, 1.1, -1.1, false, false),   // inside
        (1.25, 2.0, 2.5, -2.5, false, false),  // inside; would clip if ε_high were 0.2
        (1.5, 1.0, 1.3, 0.0, false, true),     // above: clipped, no gradient
        (0.5, 1.0, 0.5, -0.5, false, false),   // below: unclipped is the min
        // negative advantage
        (0.9, -1.0, -0.9, 0.9, false, false),  // inside
        (0.5, -1.0, -0.8, 0.0, true, false),   // below: clipped
        (0.75, -2.0, -1.6, 0.0, true, false),  // below 0.8; would be inside if ε_low were 0.3
        (1.5, -1.0, -1.5, 1.5, false, false),  // above: unclipped is the min
        (1.25, -1.0, -1.25, 1.25, false, false), // inside the asymmetric upper range
        // zero advantage
        (1.7, 0.0, 0.0, 0.0, false, false),
    ];

    #[test]
    fn dapo_loss_by_hand_both_sides_both_signs() {
        let n = CASES.len();
        // old log-probs arbitrary; new = old + ln ρ (computed in f64, stored f32).
        let old: Vec<f32> = (0..n).map(|i| -0.3 - 0.4 * i as f32).collect();
        let new: Vec<f32> = CASES.iter().zip(&old).map(|(c, &o)| (o as f64 + c.0.ln()) as f32).collect();
        let adv: Vec<f32> = CASES.iter().map(|c| c.1 as f32).collect();
        // Two extra positions that are not masked, with garbage values.
        let (mut new2, mut old2, mut adv2) = (new.clone(), old.clone(), adv.clone());
        new2.extend([5.0, -50.0]);
        old2.extend([-50.0, 5.0]);
        adv2.extend([3.0, -3.0]);
        let mut mask = vec![true; n];
        mask.extend([false, false]);
        let out = dapo_loss(&new2, &old2, &adv2, &mask, n, &CFG).unwrap();
        let nf = n as f64;
        let want_loss = -CASES.iter().map(|c| c.2).sum::<f64>() / nf;
        assert!(close(out.loss, want_loss, 1e-6), "loss {} vs {want_loss}", out.loss);
        for (i, c) in CASES.iter().enumerate() {
            assert!(close(out.grad_logp[i] as f64, c.3 / nf, 1e-6), "case {i} {c:?}: grad {} vs {}", out.grad_logp[i], c.3 / nf);
        }
        assert_eq!(&out.grad_logp[n..], &[0.0, 0.0]);
        assert_eq!(out.n_tokens, n);
        let lows = CASES.iter().filter(|c| c.4).count() as f64;
        let highs = CASES.iter().filter(|c| c.5).count() as f64;
        assert_eq!((lows, highs), (2.0, 1.0));
        assert!(close(out.clip_low_frac, lows / nf, 1e-15) && close(out.clip_high_frac, highs / nf, 1e-15), "{out:?}");
    }

    #[test]
    fn token_level_normalization_across_lengths() {
        // A 2-token sample (Â = +1) and a 6-token sample (Â = −0.5) at ρ = 1:
        // every token weighs 1/8. Per-sample averaging would give
        // −(1 + (−0.5)) / 2 = −0.25 instead of −(2·1 + 6·(−0.5)) / 8 = 0.125.
        let lp = vec![-1.0f32; 8];
        let adv = [1.0f32, 1.0, -0.5, -0.5, -0.5, -0.5, -0.5, -0.5];
        let out = dapo_loss(&lp, &lp, &adv, &[true; 8], 8, &CFG).unwrap();
        assert!(close(out.loss, 0.125, 1e-12), "{}", out.loss);
        for (g, a) in out.grad_logp.iter().zip(adv) {
            assert_eq!(*g, -a / 8.0);
        }
        // Micro-batching with the mini-batch's N gives the same sum.
        let a = dapo_loss(&lp[..2], &lp[..2], &adv[..2], &[true; 2], 8, &CFG).unwrap();
        let b = dapo_loss(&lp[2..], &lp[2..], &adv[2..], &[true; 6], 8, &CFG).unwrap();
        assert!(close(a.loss + b.loss, out.loss, 1e-12));
        // N smaller than the masked count is a caller's error.
        assert!(dapo_loss(&lp, &lp, &adv, &[true; 8], 7, &CFG).is_err());
        assert!(dapo_loss(&lp, &lp[..7], &adv, &[true; 8], 8, &CFG).is_err());
    }

    #[test]
    fn at_rho_one_the_gradient_is_minus_advantage_over_n() {
        let n = 37;
        let lp: Vec<f32> = random_vec(n, 1).iter().map(|x| -3.0 + 2.0 * x).collect();
        let adv: Vec<f32> = random_vec(n, 2).iter().map(|x| 3.0 * x).collect();
        let mask: Vec<bool> = (0..n).map(|i| i % 5 != 0).collect();
        let m = mask.iter().filter(|&&x| x).count();
        let out = dapo_loss(&lp, &lp, &adv, &mask, m, &CFG).unwrap();
        for t in 0..n {
            let want = if mask[t] { -adv[t] / m as f32 } else { 0.0 };
            assert_eq!(out.grad_logp[t], want, "position {t}");
        }
        assert_eq!((out.clip_low_frac, out.clip_high_frac), (0.0, 0.0));
    }

    #[test]
    fn dapo_loss_gradient_matches_finite_differences() {
        // ρ spread over all regions but kept ≥ 0.05 away from the kinks at
        // 0.8 and 1.3 (a step of 1e-3 in log ρ moves ρ by ~0.1%).
        let n = 64;
        let rho: Vec<f64> = random_vec(n, 3).iter().map(|x| 1.05 + 0.9 * *x as f64).filter(|r| (r - 0.8).abs() > 0.05 && (r - 1.3).abs() > 0.05).collect();
        let n = rho.len();
        assert!(n > 40);
        let old: Vec<f32> = random_vec(n, 4).iter().map(|x| -2.0 + x).collect();
        let mut new: Vec<f32> = old.iter().zip(&rho).map(|(&o, r)| (o as f64 + r.ln()) as f32).collect();
        let adv: Vec<f32> = random_vec(n, 5).iter().map(|x| 2.0 * x).collect();
        let mask: Vec<bool> = (0..n).map(|i| i % 7 != 3).collect();
        let out = dapo_loss(&new, &old, &adv, &mask, n, &CFG).unwrap();
        assert!(out.clip_low_frac > 0.0 && out.clip_high_frac > 0.0, "both clip regions are exercised: {out:?}");
        // Central differences, dividing by the step actually taken: the
        // inputs are f32, so x ± 1e-3 rounds, by up to 1.2e-7 at |x| ≈ 3
        // (1e-4 of the step). The loss sums in f64, so what is left is the
        // quotient's own O(ε²) error, about ε²/6 = 2e-7 of the gradient.
        let (mut max_err, mut max_g) = (0.0f64, 0.0f64);
        for i in 0..n {
            let x0 = new[i];
            let (xp, xm) = (x0 + 1e-3, x0 - 1e-3);
            new[i] = xp;
            let lp = dapo_loss(&new, &old, &adv, &mask, n, &CFG).unwrap().loss;
            new[i] = xm;
            let lm = dapo_loss(&new, &old, &adv, &mask, n, &CFG).unwrap().loss;
            new[i] = x0;
            let numeric = (lp - lm) / (xp as f64 - xm as f64);
            max_err = max_err.max((numeric - out.grad_logp[i] as f64).abs());
            max_g = max_g.max(numeric.abs());
        }
        assert!(max_g > 1e-3, "{max_g}");
        assert!(max_err < 1e-6 * max_g, "max error {max_err} against max gradient {max_g}");
    }

    fn turn(start: usize, end: usize, format_error: Option<FormatError>) -> Turn {
        let mut t = Turn::new(Span { start, end }, ReplyEnd::Stop);
        t.format_error = format_error;
        t
    }

    /// Tokens: 0..3 template/system, 3..6 reply 1 (a format error), 6..8
    /// observation, 8..11 reply 2 whose first token has no log-prob.
    fn trajectory() -> Trajectory {
        use Source::*;
        let source = vec![Template, System, Template, Sampled, Sampled, Sampled, Observation, Template, Sampled, Sampled, Sampled];
        let logprob = vec![None, None, None, Some(-0.1), Some(-0.2), Some(-0.3), None, None, None, Some(-0.5), Some(-0.6)];
        let n = source.len();
        Trajectory {
            format_version: 1,
            instance_id: "t".into(),
            sample: 0,
            seed: 0,
            policy: "local:test".into(),
            messages: vec![],
            ledger: Ledger { ids: (10..10 + n as u32).collect(), source, logprob, version: vec![None; n] },
            turns: vec![turn(3, 6, Some(FormatError::NotExtractable)), turn(8, 11, None)],
            exit: Exit::Submitted,
            exit_detail: String::new(),
            patch: None,
            grade: None,
            reward: Some(1.0),
            final_reward: Some(1.0),
            attempts: 1,
            timing: Timing::default(),
        }
    }

    #[test]
    fn rft_weights_skip_format_error_turns_and_are_shifted() {
        let t = trajectory();
        t.check().unwrap();
        let w = rft_weights(&t);
        assert_eq!(w.len(), t.ledger.len());
        // Reply 2 (tokens 8, 9, 10) is predicted at positions 7, 8, 9.
        assert_eq!(w, vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn sample_from_trajectory_trains_tokens_with_logprobs() {
        let t = trajectory();
        let s = DapoSample::from_trajectory(&t, 0.5).unwrap();
        // Format-error turns are trained in DAPO; token 8 has no log-prob.
        let want: Vec<bool> = (0..11).map(|i| matches!(i, 3 | 4 | 5 | 9 | 10)).collect();
        assert_eq!(s.mask, want);
        assert_eq!(s.old_logprob[4], -0.2);
        assert_eq!(s.advantage, 0.5);
        // No log-probs at all (a scripted policy): nothing to train.
        let mut scripted = t.clone();
        scripted.ledger.logprob = vec![None; 11];
        assert!(DapoSample::from_trajectory(&scripted, 1.0).is_none());
    }

    #[test]
    fn packing_puts_each_token_on_the_position_that_predicts_it() {
        let a = DapoSample { ids: vec![1, 2, 3], mask: vec![false, true, true], old_logprob: vec![0.0, -1.0, -2.0], advantage: 1.0 };
        let b = DapoSample { ids: vec![4, 5, 6, 7], mask: vec![false, false, true, false], old_logprob: vec![0.0, 0.0, -3.0, 0.0], advantage: -2.0 };
        let p = pack(&[a.clone(), b]).unwrap();
        assert_eq!(p.targets, vec![2, 3, 0, 5, 6, 7, 0]);
        assert_eq!(p.mask, vec![true, true, false, false, true, false, false]);
        assert_eq!(p.old, vec![-1.0, -2.0, 0.0, 0.0, -3.0, 0.0, 0.0]);
        assert_eq!(p.adv[..3], [1.0, 1.0, 0.0]); // the last position predicts nothing
        assert_eq!(p.adv[4], -2.0);
        assert_eq!(p.n_tokens, 3);
        // Malformed samples are errors naming the sample.
        let mut bad = a.clone();
        bad.mask[0] = true;
        assert!(pack(&[a.clone(), bad]).unwrap_err().to_string().contains("sample 1: token 0"));
        let mut bad = a.clone();
        bad.old_logprob.pop();
        assert!(pack(&[bad]).unwrap_err().to_string().contains("2 old log-probs for 3 tokens"));
        let mut bad = a;
        bad.mask = vec![false; 3];
        assert!(pack(&[bad]).unwrap_err().to_string().contains("no token to train"));
        assert!(pack(&[]).is_err());
    }
}
