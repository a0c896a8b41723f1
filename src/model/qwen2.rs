//! The Qwen2 / Qwen2.5 / dense Qwen3 transformer, forward and backward,
//! written out per layer in the llm.c style (no general autograd).
//!
//! Design: the training forward runs over a packed batch (several sequences
//! in one buffer, no attention across them) and keeps what each layer's
//! backward needs, or, with recomputation on, only each layer's input. The
//! backward walks the layers in reverse order, calling the same named ops.
//! The output of the forward is the final hidden state; log-probabilities and
//! entropies of given targets come from the chunked LM-head op, so no
//! `[tokens × vocab]` matrix exists on the training path. The inference path
//! (`forward_cached`) appends to per-sequence KV caches and is what the
//! generation engine drives.

use super::config::ModelConfig;
use super::weights::Weights;
use crate::backend::cpu::attention::{attend_row, attention_bwd, attention_fwd, AttnShape};
use crate::backend::cpu::embedding::{embedding_bwd, embedding_fwd};
use crate::backend::cpu::logprob::{logits_full, logprob_entropy_bwd, logprob_entropy_fwd, TokenLogprobs};
use crate::backend::cpu::matmul::{linear_bwd, linear_fwd, linear_fwd_row_invariant};
use crate::backend::cpu::rmsnorm::{rmsnorm_bwd, rmsnorm_fwd};
use crate::backend::cpu::rope::{rope_bwd, rope_fwd, RopeTable};
use crate::backend::cpu::swiglu::{swiglu_bwd, swiglu_fwd};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::ops::Range;

/// Default vocabulary chunk for the log-prob op.
pub const DEFAULT_VOCAB_CHUNK: usize = 8192;

/// A model ready to run: config, weights and the RoPE table.
#[derive(Clone, Debug)]
pub struct Model {
    pub cfg: ModelConfig,
    pub weights: Weights,
    pub rope: RopeTable,
    /// Vocabulary chunk size for the log-prob/entropy op.
    pub vocab_chunk: usize,
    /// Keep only each layer's input during the forward, and recompute the
    /// rest in the backward.
    pub recompute: bool,
    /// Ids the model produces and scores: the first `output_vocab` rows of
    /// the LM head. Qwen pads its embedding table past the tokenizer's
    /// vocabulary (151,936 rows for 151,665 ids); the padding rows are never
    /// sampled and never in a softmax, so the sampler and the trainer see the
    /// same distribution. Defaults to `cfg.vocab_size`; loading a model with
    /// its tokenizer sets it to the tokenizer's size.
    pub output_vocab: usize,
    /// Where the training path (`forward_logprobs`, `backward_into`) runs:
    /// `None` on this CPU model, or a GPU model backend. After a device
    /// optimizer step the device's fp32 masters are ahead of the host
    /// `weights` (`device_stepped`), and they stay there until something
    /// reads the host copy: the engine push and checkpoints call
    /// `sync_host_weights` first, which downloads them once however many
    /// steps were taken. Weights changed on the host (`update_weights`) are
    /// uploaded before the next device forward. Generation always runs on
    /// the CPU.
    pub train_device: Option<TrainDevice>,
    /// Bumped by every change of the weights (`update_weights`, a device
    /// step); the training device records which version it holds.
    weights_version: u64,
    /// The host `weights` lag the training device's (a device optimizer
    /// step happened since the last `sync_host_weights`).
    host_behind: bool,
}

/// A handle on the GPU model backend that runs a model's training path.
#[derive(Clone)]
pub struct TrainDevice(pub std::sync::Arc<std::sync::Mutex<super::qwen2_gpu::GpuModel>>);

impl std::fmt::Debug for TrainDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrainDevice")
    }
}

impl TrainDevice {
    pub fn new(m: super::qwen2_gpu::GpuModel) -> Self {
        TrainDevice(std::sync::Arc::new(std::sync::Mutex::new(m)))
    }
    pub fn lock(&self) -> Result<std::sync::MutexGuard<'_, super::qwen2_gpu::GpuModel>> {
        self.0.lock().map_err(|_| anyhow::anyhow!("the GPU model backend was poisoned by an earlier panic"))
    }
}

/// What `Model::forward_logprobs` keeps for `Model::backward_into`.
#[derive(Debug)]
pub enum TrainState {
    Cpu(ForwardState),
    /// The activations stay on the training device.
    Device,
}

/// Several token sequences packed into one buffer.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub ids: Vec<u32>,
    pub seqs: Vec<Range<usize>>,
    /// Position of each token within its sequence.
    pub pos: Vec<u32>,
}

impl Batch {
    pub fn from_sequences<S: AsRef<[u32]>>(seqs: &[S]) -> Self {
        let mut b = Batch::default();
        for s in seqs {
            let s = s.as_ref();
            let start = b.ids.len();
            b.ids.extend_from_slice(s);
            b.pos.extend(0..s.len() as u32);
            b.seqs.push(start..b.ids.len());
        }
        b
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The next token of each position within its sequence (the last
    /// position of a sequence has none: target 0, mask false).
    pub fn next_token_targets(&self) -> (Vec<u32>, Vec<bool>) {
        let mut t = vec![0u32; self.len()];
        let mut m = vec![false; self.len()];
        for r in &self.seqs {
            for i in r.start..r.end.saturating_sub(1) {
                t[i] = self.ids[i + 1];
                m[i] = true;
            }
        }
        (t, m)
    }
}

/// What one layer's backward needs from its forward.
#[derive(Clone, Debug, Default)]
pub struct LayerActs {
    rstd1: Vec<f32>,
    xn1: Vec<f32>,
    q_pre: Vec<f32>,
    k_pre: Vec<f32>,
    rstd_q: Vec<f32>,
    rstd_k: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    lse: Vec<f32>,
    x_mid: Vec<f32>,
    rstd2: Vec<f32>,
    xn2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
}

/// Everything the forward keeps for the backward.
#[derive(Clone, Debug)]
pub struct ForwardState {
    /// Each layer's input `[n, hidden]`; entry `num_layers` is the final
    /// pre-norm residual stream.
    layer_inputs: Vec<Vec<f32>>,
    /// Per-layer activations (empty when recomputing).
    acts: Vec<LayerActs>,
    final_rstd: Vec<f32>,
    /// The final normed hidden state `[n, hidden]`, input to the LM head.
    pub hidden: Vec<f32>,
}

/// Per-sequence key/value cache for generation: `[len, kv_heads·head_dim]`
/// per layer.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    pub len: usize,
}

impl KvCache {
    pub fn new(cfg: &ModelConfig) -> Self {
        KvCache { k: vec![vec![]; cfg.num_layers], v: vec![vec![]; cfg.num_layers], len: 0 }
    }
}

impl Model {
    pub fn new(cfg: ModelConfig, weights: Weights) -> Self {
        let (inv, af) = cfg.rope_inv_freq();
        // The table grows on demand; start with a modest window.
        let rope = RopeTable::new(inv, af, cfg.max_position_embeddings.min(4096));
        let output_vocab = cfg.vocab_size;
        Model { cfg, weights, rope, vocab_chunk: DEFAULT_VOCAB_CHUNK, recompute: false, output_vocab, train_device: None, weights_version: 0, host_behind: false }
    }

    fn attn_shape(&self) -> AttnShape {
        AttnShape { heads: self.cfg.num_heads, kv_heads: self.cfg.num_kv_heads, head_dim: self.cfg.head_dim }
    }

    /// Check token ids and grow the RoPE table to cover `max_pos`.
    fn prepare(&mut self, ids: &[u32], max_pos: usize) -> Result<()> {
        let v = self.out_vocab();
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= v) {
            bail!("token id {bad} is outside the model's vocabulary of {v}");
        }
        self.rope.ensure(max_pos + 1);
        Ok(())
    }

    // ----------------------------------------------------------------------
    // Training path: packed batch, activations kept for the backward.
    // ----------------------------------------------------------------------

    /// One layer's forward. Returns the layer output and its activations.
    /// (Fields are filled in the order the layer computes them.)
    #[allow(clippy::field_reassign_with_default)]
    fn layer_fwd(&self, l: usize, x: &[f32], batch: &Batch) -> (Vec<f32>, LayerActs) {
        let cfg = &self.cfg;
        let w = &self.weights.layers[l];
        let (n, h, i, qd, kvd, hd) = (batch.len(), cfg.hidden_size, cfg.intermediate_size, cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
        let mut a = LayerActs::default();

        a.rstd1 = vec![0.0; n];
        a.xn1 = vec![0.0; n * h];
        rmsnorm_fwd(&mut a.xn1, &mut a.rstd1, x, &w.input_norm.data, h, cfg.rms_norm_eps);

        a.q = vec![0.0; n * qd];
        a.k = vec![0.0; n * kvd];
        a.v = vec![0.0; n * kvd];
        linear_fwd(&mut a.q, &a.xn1, &w.q_proj.data, w.q_bias.as_ref().map(|b| &b.data[..]), n, h, qd);
        linear_fwd(&mut a.k, &a.xn1, &w.k_proj.data, w.k_bias.as_ref().map(|b| &b.data[..]), n, h, kvd);
        linear_fwd(&mut a.v, &a.xn1, &w.v_proj.data, w.v_bias.as_ref().map(|b| &b.data[..]), n, h, kvd);

        if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
            a.q_pre = std::mem::take(&mut a.q);
            a.k_pre = std::mem::take(&mut a.k);
            a.q = vec![0.0; n * qd];
            a.k = vec![0.0; n * kvd];
            a.rstd_q = vec![0.0; n * cfg.num_heads];
            a.rstd_k = vec![0.0; n * cfg.num_kv_heads];
            rmsnorm_fwd(&mut a.q, &mut a.rstd_q, &a.q_pre, &qn.data, hd, cfg.rms_norm_eps);
            rmsnorm_fwd(&mut a.k, &mut a.rstd_k, &a.k_pre, &kn.data, hd, cfg.rms_norm_eps);
        }
        rope_fwd(&mut a.q, &batch.pos, cfg.num_heads, &self.rope);
        rope_fwd(&mut a.k, &batch.pos, cfg.num_kv_heads, &self.rope);

        a.attn = vec![0.0; n * qd];
        a.lse = vec![0.0; n * cfg.num_heads];
        attention_fwd(&mut a.attn, &mut a.lse, &a.q, &a.k, &a.v, &batch.seqs, self.attn_shape());

        let mut o = vec![0.0; n * h];
        linear_fwd(&mut o, &a.attn, &w.o_proj.data, None, n, qd, h);
        a.x_mid = x.iter().zip(&o).map(|(x, o)| x + o).collect();

        a.rstd2 = vec![0.0; n];
        a.xn2 = vec![0.0; n * h];
        rmsnorm_fwd(&mut a.xn2, &mut a.rstd2, &a.x_mid, &w.post_norm.data, h, cfg.rms_norm_eps);

        a.gate = vec![0.0; n * i];
        a.up = vec![0.0; n * i];
        linear_fwd(&mut a.gate, &a.xn2, &w.gate_proj.data, None, n, h, i);
        linear_fwd(&mut a.up, &a.xn2, &w.up_proj.data, None, n, h, i);
        a.act = vec![0.0; n * i];
        swiglu_fwd(&mut a.act, &a.gate, &a.up);

        let mut out = vec![0.0; n * h];
        linear_fwd(&mut out, &a.act, &w.down_proj.data, None, n, i, h);
        out.iter_mut().zip(&a.x_mid).for_each(|(o, r)| *o += r);
        (out, a)
    }

    /// One layer's backward: takes d(output), returns d(input), adds to `g`.
    fn layer_bwd(&self, l: usize, x: &[f32], a: &LayerActs, dout: &[f32], batch: &Batch, g: &mut Weights) -> Vec<f32> {
        let cfg = &self.cfg;
        let w = &self.weights.layers[l];
        let gw = &mut g.layers[l];
        let (n, h, i, qd, kvd, hd) = (batch.len(), cfg.hidden_size, cfg.intermediate_size, cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);

        // MLP: out = x_mid + down(swiglu(gate(xn2), up(xn2)))
        let mut dact = vec![0.0; n * i];
        linear_bwd(&mut dact, &mut gw.down_proj.data, None, dout, &a.act, &w.down_proj.data, n, i, h, false);
        let mut dgate = vec![0.0; n * i];
        let mut dup = vec![0.0; n * i];
        swiglu_bwd(&mut dgate, &mut dup, &dact, &a.gate, &a.up);
        let mut dxn2 = vec![0.0; n * h];
        linear_bwd(&mut dxn2, &mut gw.gate_proj.data, None, &dgate, &a.xn2, &w.gate_proj.data, n, h, i, false);
        linear_bwd(&mut dxn2, &mut gw.up_proj.data, None, &dup, &a.xn2, &w.up_proj.data, n, h, i, true);
        let mut dx_mid = dout.to_vec();
        rmsnorm_bwd(&mut dx_mid, &mut gw.post_norm.data, &dxn2, &a.x_mid, &w.post_norm.data, &a.rstd2, h, true);

        // Attention: x_mid = x + o_proj(attn(rope(q), rope(k), v))
        let mut dattn = vec![0.0; n * qd];
        linear_bwd(&mut dattn, &mut gw.o_proj.data, None, &dx_mid, &a.attn, &w.o_proj.data, n, qd, h, false);
        let mut dq = vec![0.0; n * qd];
        let mut dk = vec![0.0; n * kvd];
        let mut dv = vec![0.0; n * kvd];
        attention_bwd(&mut dq, &mut dk, &mut dv, &dattn, &a.q, &a.k, &a.v, &a.attn, &a.lse, &batch.seqs, self.attn_shape());
        rope_bwd(&mut dq, &batch.pos, cfg.num_heads, &self.rope);
        rope_bwd(&mut dk, &batch.pos, cfg.num_kv_heads, &self.rope);
        if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
            let mut dq_pre = vec![0.0; n * qd];
            let mut dk_pre = vec![0.0; n * kvd];
            rmsnorm_bwd(&mut dq_pre, &mut gw.q_norm.as_mut().expect("qk norm grads").data, &dq, &a.q_pre, &qn.data, &a.rstd_q, hd, false);
            rmsnorm_bwd(&mut dk_pre, &mut gw.k_norm.as_mut().expect("qk norm grads").data, &dk, &a.k_pre, &kn.data, &a.rstd_k, hd, false);
            dq = dq_pre;
            dk = dk_pre;
        }
        let mut dxn1 = vec![0.0; n * h];
        linear_bwd(&mut dxn1, &mut gw.q_proj.data, gw.q_bias.as_mut().map(|b| &mut b.data[..]), &dq, &a.xn1, &w.q_proj.data, n, h, qd, false);
        linear_bwd(&mut dxn1, &mut gw.k_proj.data, gw.k_bias.as_mut().map(|b| &mut b.data[..]), &dk, &a.xn1, &w.k_proj.data, n, h, kvd, true);
        linear_bwd(&mut dxn1, &mut gw.v_proj.data, gw.v_bias.as_mut().map(|b| &mut b.data[..]), &dv, &a.xn1, &w.v_proj.data, n, h, kvd, true);
        let mut dx = dx_mid;
        rmsnorm_bwd(&mut dx, &mut gw.input_norm.data, &dxn1, x, &w.input_norm.data, &a.rstd1, h, true);
        dx
    }

    /// The training forward over a packed batch. Returns the state the
    /// backward needs; `state.hidden` is the final normed hidden state.
    pub fn forward(&mut self, batch: &Batch) -> Result<ForwardState> {
        let max_pos = batch.pos.iter().copied().max().unwrap_or(0) as usize;
        self.prepare(&batch.ids, max_pos)?;
        let (n, h) = (batch.len(), self.cfg.hidden_size);
        let mut x = vec![0.0; n * h];
        embedding_fwd(&mut x, &self.weights.embed.data, &batch.ids, h);
        let mut layer_inputs = Vec::with_capacity(self.cfg.num_layers + 1);
        let mut acts = Vec::new();
        for l in 0..self.cfg.num_layers {
            let (out, a) = self.layer_fwd(l, &x, batch);
            layer_inputs.push(std::mem::replace(&mut x, out));
            if !self.recompute {
                acts.push(a);
            }
        }
        let mut hidden = vec![0.0; n * h];
        let mut final_rstd = vec![0.0; n];
        rmsnorm_fwd(&mut hidden, &mut final_rstd, &x, &self.weights.final_norm.data, h, self.cfg.rms_norm_eps);
        layer_inputs.push(x);
        Ok(ForwardState { layer_inputs, acts, final_rstd, hidden })
    }

    /// Change the weights through `f` (an optimizer update) and mark them
    /// changed, so an attached training device uploads them again. Change
    /// `weights` only through this while a training device is attached; the
    /// host copy is brought up to date first if the device is ahead.
    pub fn update_weights(&mut self, f: impl FnOnce(&mut Weights)) -> Result<()> {
        self.sync_host_weights()?;
        f(&mut self.weights);
        self.weights_version += 1;
        Ok(())
    }

    /// See [`Model::update_weights`].
    pub fn weights_version(&self) -> u64 {
        self.weights_version
    }

    /// The training forward and the log-prob/entropy of `targets`, on the
    /// training device when one is attached (the host weights are uploaded
    /// first), else on the CPU.
    pub fn forward_logprobs(&mut self, batch: &Batch, targets: &[u32]) -> Result<(TrainState, TokenLogprobs)> {
        if let Some(d) = &self.train_device {
            let mut g = d.lock()?;
            if g.weights_version() != Some(self.weights_version) {
                g.upload_weights(&self.weights)?;
                g.set_weights_version(self.weights_version);
            }
            g.forward(batch)?;
            let lp = g.token_logprobs(targets)?;
            return Ok((TrainState::Device, lp));
        }
        let st = self.forward(batch)?;
        let lp = self.token_logprobs(&st, targets);
        Ok((TrainState::Cpu(st), lp))
    }

    /// The backward of `forward_logprobs`: gradients ADDED to `grads` on
    /// the CPU; with a training device attached they accumulate in the
    /// device's buffers instead (`zero_grads` clears both; the train
    /// layer's `optimizer::optimizer_step` uses them there).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_into(&self, batch: &Batch, st: &TrainState, targets: &[u32], lp: &TokenLogprobs, g_logprob: &[f32], g_entropy: &[f32], grads: &mut Weights) -> Result<()> {
        match st {
            TrainState::Cpu(s) => {
                self.backward(batch, s, targets, lp, g_logprob, g_entropy, grads);
                Ok(())
            }
            TrainState::Device => {
                let d = self.train_device.as_ref().context("a device training state without a training device")?;
                d.lock()?.backward(g_logprob, g_entropy)
            }
        }
    }

    /// Zero the gradients a step accumulates: the training device's
    /// buffers when one is attached (the host `grads` are not used then),
    /// else `grads`.
    pub fn zero_grads(&mut self, grads: &mut Weights) -> Result<()> {
        match &self.train_device {
            Some(d) => d.lock()?.zero_grads(),
            None => {
                grads.zero();
                Ok(())
            }
        }
    }

    /// After an optimizer step on the training device: the device's fp32
    /// masters are the model's weights now, and the host `weights` are
    /// stale until `sync_host_weights`. Nothing crosses PCIe here.
    pub fn device_stepped(&mut self) -> Result<()> {
        let d = self.train_device.clone().context("no training device is attached")?;
        self.weights_version += 1;
        d.lock()?.set_weights_version(self.weights_version);
        self.host_behind = true;
        Ok(())
    }

    /// Wait for the training device's queued work (nothing to do on the
    /// CPU): host clocks around a device step time only its launches
    /// otherwise.
    pub fn synchronize_train_device(&self) -> Result<()> {
        match &self.train_device {
            Some(d) => d.lock()?.synchronize(),
            None => Ok(()),
        }
    }

    /// Whether the host `weights` are the model's current weights (false
    /// between a device optimizer step and `sync_host_weights`).
    pub fn host_weights_current(&self) -> bool {
        !self.host_behind
    }

    /// Bring the host `weights` up to date with the training device's fp32
    /// masters when a device step left them behind (one download of every
    /// parameter); nothing to do otherwise. Call before reading `weights`
    /// on a model that trains on a device: the engine push, checkpoints,
    /// saving a model directory.
    pub fn sync_host_weights(&mut self) -> Result<()> {
        if !self.host_behind {
            return Ok(());
        }
        let d = self.train_device.clone().context("the host weights are behind, but no training device is attached")?;
        let mut g = d.lock()?;
        g.download_weights_into(&mut self.weights).context("downloading the trained weights from the device")?;
        g.set_weights_version(self.weights_version);
        self.host_behind = false;
        Ok(())
    }

    /// Log-probability and entropy of `targets` at every position, from the
    /// chunked LM-head op.
    pub fn token_logprobs(&self, st: &ForwardState, targets: &[u32]) -> TokenLogprobs {
        let lm = self.weights.lm_head();
        let (h, v) = (self.cfg.hidden_size, self.out_vocab());
        logprob_entropy_fwd(&st.hidden, &lm.data[..v * h], targets, h, v, self.vocab_chunk)
    }

    /// Full logits `[n, vocab]`; for scoring and checks, not for training.
    pub fn logits(&self, st: &ForwardState) -> Vec<f32> {
        let n = st.hidden.len() / self.cfg.hidden_size;
        let (h, v) = (self.cfg.hidden_size, self.out_vocab());
        logits_full(&st.hidden, &self.weights.lm_head().data[..v * h], n, h, v)
    }

    /// [`Model::output_vocab`], bounded by the LM head's rows.
    pub fn out_vocab(&self) -> usize {
        self.output_vocab.clamp(1, self.cfg.vocab_size)
    }

    /// The backward, from d loss / d logprob and d loss / d entropy per token
    /// to parameter gradients, added into `grads`. Layers run in reverse.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        batch: &Batch,
        st: &ForwardState,
        targets: &[u32],
        lp: &TokenLogprobs,
        g_logprob: &[f32],
        g_entropy: &[f32],
        grads: &mut Weights,
    ) {
        let (n, h, v) = (batch.len(), self.cfg.hidden_size, self.out_vocab());
        let mut dhidden = vec![0.0; n * h];
        {
            let lm = self.weights.lm_head();
            let dlm = match grads.lm_head.as_mut() {
                Some(t) => &mut t.data,
                None => &mut grads.embed.data,
            };
            logprob_entropy_bwd(&mut dhidden, &mut dlm[..v * h], g_logprob, g_entropy, lp, &st.hidden, &lm.data[..v * h], targets, h, v, self.vocab_chunk);
        }
        let mut dx = vec![0.0; n * h];
        let last = &st.layer_inputs[self.cfg.num_layers];
        rmsnorm_bwd(&mut dx, &mut grads.final_norm.data, &dhidden, last, &self.weights.final_norm.data, &st.final_rstd, h, false);
        for l in (0..self.cfg.num_layers).rev() {
            let x = &st.layer_inputs[l];
            dx = if self.recompute {
                let (_, a) = self.layer_fwd(l, x, batch);
                self.layer_bwd(l, x, &a, &dx, batch, grads)
            } else {
                self.layer_bwd(l, x, &st.acts[l], &dx, batch, grads)
            };
        }
        embedding_bwd(&mut grads.embed.data, &dx, &batch.ids, h);
    }

    /// Mean next-token negative log-likelihood over the positions where
    /// `weight > 0` (weighted), and its gradients added into `grads`.
    /// This is the supervised loss (fixture parity, RFT, smoke training).
    pub fn nll_loss_and_grads(&mut self, batch: &Batch, weight: &[f32], grads: &mut Weights) -> Result<f64> {
        let (targets, has_next) = batch.next_token_targets();
        let st = self.forward(batch)?;
        let lp = self.token_logprobs(&st, &targets);
        let w: Vec<f32> = weight.iter().zip(&has_next).map(|(&w, &m)| if m { w } else { 0.0 }).collect();
        let total: f64 = w.iter().map(|&x| x as f64).sum();
        if total <= 0.0 {
            bail!("the batch has no position with a next token and a positive weight");
        }
        let loss = -lp.logprob.iter().zip(&w).map(|(&l, &w)| l as f64 * w as f64).sum::<f64>() / total;
        let g_lp: Vec<f32> = w.iter().map(|&w| (-(w as f64) / total) as f32).collect();
        let g_ent = vec![0.0; batch.len()];
        self.backward(batch, &st, &targets, &lp, &g_lp, &g_ent, grads);
        Ok(loss)
    }

    // ----------------------------------------------------------------------
    // Inference path: KV caches, several sequences at once.
    // ----------------------------------------------------------------------

    /// Append `new[s]` to sequence `s` (whose cache is `caches[s]`) and return
    /// logits `[vocab]` for each appended token (`all_logits`) or only for the
    /// last one of each sequence. Every product is row-invariant
    /// (`linear_fwd_row_invariant`) and attention runs per row, so a
    /// sequence's logits are the same bits whatever else is in the batch.
    pub fn forward_cached(&mut self, new: &[&[u32]], caches: &mut [KvCache], all_logits: bool) -> Result<Vec<Vec<f32>>> {
        assert_eq!(new.len(), caches.len(), "one cache per sequence");
        let all: Vec<u32> = new.iter().flat_map(|s| s.iter().copied()).collect();
        let max_pos = new.iter().zip(caches.iter()).map(|(s, c)| c.len + s.len()).max().unwrap_or(0);
        self.prepare(&all, max_pos)?;
        let cfg = &self.cfg;
        let (n, h, i, qd, kvd, hd) = (all.len(), cfg.hidden_size, cfg.intermediate_size, cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
        // Row r belongs to sequence seq_of[r] at absolute position pos[r].
        let mut seq_of = Vec::with_capacity(n);
        let mut pos = Vec::with_capacity(n);
        for (s, (toks, c)) in new.iter().zip(caches.iter()).enumerate() {
            for j in 0..toks.len() {
                seq_of.push(s);
                pos.push((c.len + j) as u32);
            }
        }
        let shape = self.attn_shape();
        let mut x = vec![0.0; n * h];
        embedding_fwd(&mut x, &self.weights.embed.data, &all, h);
        let mut xn = vec![0.0; n * h];
        let mut rstd = vec![0.0; n];
        for l in 0..cfg.num_layers {
            let w = &self.weights.layers[l];
            rmsnorm_fwd(&mut xn, &mut rstd, &x, &w.input_norm.data, h, cfg.rms_norm_eps);
            let mut q = vec![0.0; n * qd];
            let mut k = vec![0.0; n * kvd];
            let mut v = vec![0.0; n * kvd];
            linear_fwd_row_invariant(&mut q, &xn, &w.q_proj.data, w.q_bias.as_ref().map(|b| &b.data[..]), n, h, qd);
            linear_fwd_row_invariant(&mut k, &xn, &w.k_proj.data, w.k_bias.as_ref().map(|b| &b.data[..]), n, h, kvd);
            linear_fwd_row_invariant(&mut v, &xn, &w.v_proj.data, w.v_bias.as_ref().map(|b| &b.data[..]), n, h, kvd);
            if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
                let (q0, k0) = (q.clone(), k.clone());
                let mut r = vec![0.0; n * cfg.num_heads];
                rmsnorm_fwd(&mut q, &mut r, &q0, &qn.data, hd, cfg.rms_norm_eps);
                let mut r = vec![0.0; n * cfg.num_kv_heads];
                rmsnorm_fwd(&mut k, &mut r, &k0, &kn.data, hd, cfg.rms_norm_eps);
            }
            rope_fwd(&mut q, &pos, cfg.num_heads, &self.rope);
            rope_fwd(&mut k, &pos, cfg.num_kv_heads, &self.rope);
            // Append this layer's new keys and values to each sequence's cache.
            let mut row = 0;
            for (s, toks) in new.iter().enumerate() {
                caches[s].k[l].extend_from_slice(&k[row * kvd..(row + toks.len()) * kvd]);
                caches[s].v[l].extend_from_slice(&v[row * kvd..(row + toks.len()) * kvd]);
                row += toks.len();
            }
            let mut attn = vec![0.0; n * qd];
            let caches_ro: &[KvCache] = caches;
            attn.par_chunks_mut(qd).enumerate().for_each_init(Vec::new, |scores, (r, orow)| {
                let c = &caches_ro[seq_of[r]];
                for hh in 0..cfg.num_heads {
                    let qr = &q[r * qd + hh * hd..r * qd + (hh + 1) * hd];
                    attend_row(&mut orow[hh * hd..(hh + 1) * hd], qr, &c.k[l], &c.v[l], 0..pos[r] as usize + 1, hh / shape.group(), shape, scores);
                }
            });
            let mut o = vec![0.0; n * h];
            linear_fwd_row_invariant(&mut o, &attn, &w.o_proj.data, None, n, qd, h);
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
            rmsnorm_fwd(&mut xn, &mut rstd, &x, &w.post_norm.data, h, cfg.rms_norm_eps);
            let mut gate = vec![0.0; n * i];
            let mut up = vec![0.0; n * i];
            linear_fwd_row_invariant(&mut gate, &xn, &w.gate_proj.data, None, n, h, i);
            linear_fwd_row_invariant(&mut up, &xn, &w.up_proj.data, None, n, h, i);
            let mut act = vec![0.0; n * i];
            swiglu_fwd(&mut act, &gate, &up);
            let mut down = vec![0.0; n * h];
            linear_fwd_row_invariant(&mut down, &act, &w.down_proj.data, None, n, i, h);
            x.iter_mut().zip(&down).for_each(|(x, d)| *x += d);
        }
        for (c, toks) in caches.iter_mut().zip(new) {
            c.len += toks.len();
        }
        // Final norm and LM head, only for the rows whose logits are wanted.
        let wanted: Vec<usize> = if all_logits {
            (0..n).collect()
        } else {
            let mut ends = vec![];
            let mut row = 0;
            for toks in new {
                row += toks.len();
                if !toks.is_empty() {
                    ends.push(row - 1);
                }
            }
            ends
        };
        let sel: Vec<f32> = wanted.iter().flat_map(|&r| x[r * h..(r + 1) * h].iter().copied()).collect();
        let m = wanted.len();
        let mut hid = vec![0.0; m * h];
        let mut r = vec![0.0; m];
        rmsnorm_fwd(&mut hid, &mut r, &sel, &self.weights.final_norm.data, h, cfg.rms_norm_eps);
        let v = self.out_vocab();
        let mut logits = vec![0.0; m * v];
        linear_fwd_row_invariant(&mut logits, &hid, &self.weights.lm_head().data[..v * h], None, m, h, v);
        Ok(logits.chunks(v).map(<[f32]>::to_vec).collect())
    }
}
