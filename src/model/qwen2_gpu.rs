//! The Qwen2 training step on a `Device`: the same forward and backward as
//! `qwen2::Model` (CPU), chained from the GPU kernels (`backend::gpu`) and the
//! device GEMM (cuBLAS on a GPU, the CPU gemm on the simulated device).
//!
//! Owns: the parameters on the device (fp32 master, a bf16 copy of every
//! matrix for the GEMMs, fp32 gradients, AdamW's m and v), the activation
//! buffers, the order of the ops per layer, recomputation, the MLP's token
//! chunks, and the ledger of bytes per component. Everything is allocated
//! once, in `GpuModel::new`, for a `Capacity` (the most tokens of a
//! micro-batch): exactly the buffers of `memory_plan` under its component
//! names, so the plan `appliance plan` prints is what a run holds. Does not own the math of any op (each
//! kernel equals its CPU reference, `backend::gpu::checks`), the loss
//! (callers turn log-probs into d/d log-prob and d/d entropy, as on the CPU),
//! or the optimizer's schedule and clipping (`train::optimizer`).
//!
//! Design (llm.c-style, one function per direction, ops in order):
//! - Precision: the residual stream, norms, RoPE, SwiGLU and every gradient
//!   are fp32; each GEMM takes bf16 operands (a cast of its fp32 input, or a
//!   weight's bf16 copy) and accumulates in fp32, as does attention. So the
//!   step equals the CPU backend's to bf16 rounding, not bit for bit.
//! - Residual adds are GEMMs with beta = 1 into a copy of the residual;
//!   residual gradients accumulate in place (`rmsnorm_bwd`'s accumulate
//!   flag), so the backward keeps one d(residual) buffer.
//! - Biases are rank-1 GEMMs against a ones vector (forward: C += 1·bᵀ;
//!   backward: db += 1ᵀ·dY), so no bias kernel is needed.
//! - Attention runs the flash kernels; a head dim they are not built for
//!   (below 64, the embedded tiny model's 32) runs on heads zero-padded to
//!   64, which is exact, with the softmax scale of the real head dim.
//! - The LM head is the fused log-prob/entropy kernel pair: no `[n, vocab]`.
//! - Recomputation: with `recompute`, one set of layer buffers is shared and
//!   each layer's forward is rerun from its saved input before its backward;
//!   otherwise every layer keeps its own set.
//! - Chunks: o_proj's residual and the MLP run over `chunk_tokens` tokens at
//!   a time, forward and backward. With recomputation their buffers hold one
//!   chunk (the MLP's gate/up/act are most of a layer's bytes: 3 × 4.3 × the
//!   hidden size per token for Qwen2.5), and each chunk's forward is rerun
//!   just before its backward; without it the layer's buffers are whole and
//!   the chunks are windows into them.
//! - Qwen3's q/k norm is not wired yet: such a config is refused.

use super::config::ModelConfig;
use super::memory_plan::{self, names, PlanRequest};
use super::qwen2::{Batch, Model};
use super::weights::{param_specs, ParamKind, Weights};
use crate::backend::cpu::attention::AttnShape;
use crate::backend::cpu::logprob::TokenLogprobs;
use crate::backend::gpu;
use crate::backend::gpu::flash_attn::{cu_seqlens, flash_attn_fwd};
use crate::backend::gpu::flash_attn_bwd::{flash_attn_bwd, flash_attn_bwd_workspace_bytes};
use crate::backend::gpu::logprob::{self as lp_kernels, LogprobGrads, LogprobOut};
use crate::device::{Device, DeviceExt, DevicePtr, Dtype, Gemm};
use anyhow::{bail, ensure, Context, Result};
use std::sync::Arc;

const F32: usize = 4;
const BF16: usize = 2;

/// One parameter tensor on the device.
#[derive(Clone, Copy, Debug)]
struct Param {
    len: usize,
    master: DevicePtr,
    /// bf16 copy (matrices only: the GEMM operands and the LM head).
    half: Option<DevicePtr>,
    grad: DevicePtr,
}

impl Param {
    fn half(&self) -> DevicePtr {
        self.half.expect("matrices have a bf16 copy")
    }
}

/// Indices into `GpuModel::params` of one layer's tensors.
#[derive(Clone, Copy, Debug)]
struct LayerParams {
    input_norm: usize,
    q: usize,
    q_bias: Option<usize>,
    k: usize,
    k_bias: Option<usize>,
    v: usize,
    v_bias: Option<usize>,
    o: usize,
    post_norm: usize,
    gate: usize,
    up: usize,
    down: usize,
}

/// One layer's activations (a "slot"): what its backward reads.
#[derive(Clone, Copy, Debug)]
struct Slot {
    rstd1: DevicePtr,
    xn1: DevicePtr,
    xn1_b: DevicePtr,
    q: DevicePtr,
    k: DevicePtr,
    v: DevicePtr,
    q_b: DevicePtr,
    k_b: DevicePtr,
    v_b: DevicePtr,
    out_b: DevicePtr,
    lse: DevicePtr,
    /// `out_b` without head padding (the same buffer when unpadded).
    attn_b: DevicePtr,
    x_mid: DevicePtr,
    rstd2: DevicePtr,
    xn2: DevicePtr,
    xn2_b: DevicePtr,
    gate: DevicePtr,
    up: DevicePtr,
    act: DevicePtr,
    act_b: DevicePtr,
}

/// Buffers of one step that are not per layer.
#[derive(Clone, Debug)]
struct StepBuffers {
    ids: DevicePtr,
    /// The rows sorted by token id, and each id's first position in that
    /// order (`gpu::embedding_groups`), for the embedding backward.
    id_order: DevicePtr,
    id_starts: DevicePtr,
    pos: DevicePtr,
    targets: DevicePtr,
    cu_seqlens: DevicePtr,
    ones: DevicePtr,
    /// Layer inputs `[cap, hidden]`, entry `num_layers` the last residual.
    /// (Shared slices: `layer_ctx` copies the buffers per layer and chunk.)
    xs: Arc<[DevicePtr]>,
    slots: Arc<[Slot]>,
    final_rstd: DevicePtr,
    hidden: DevicePtr,
    hidden_b: DevicePtr,
    logprob: DevicePtr,
    entropy: DevicePtr,
    lse_vocab: DevicePtr,
    dlogprob: DevicePtr,
    dentropy: DevicePtr,
    /// Backward scratch.
    dx: DevicePtr,
    dh: DevicePtr,
    dh_b: DevicePtr,
    di1: DevicePtr,
    di2: DevicePtr,
    di1_b: DevicePtr,
    di2_b: DevicePtr,
    dq: DevicePtr,
    dk: DevicePtr,
    dv: DevicePtr,
    dq_b: DevicePtr,
    dk_b: DevicePtr,
    dv_b: DevicePtr,
    /// Padded attention gradients (the same as dq/dk/dv when unpadded).
    dqp: DevicePtr,
    dkp: DevicePtr,
    dvp: DevicePtr,
    dout_b: DevicePtr,
    ws_attn: DevicePtr,
    /// The fused loss's workspace (its forward's and its backward's).
    ws_lp: DevicePtr,
}

/// What the last forward left for the backward.
#[derive(Clone, Debug)]
struct StepState {
    n: usize,
    batch: usize,
    max_seqlen: usize,
    /// Targets uploaded by `token_logprobs` (the backward needs them).
    scored: bool,
    /// Distinct token ids of the batch: the embedding backward's groups.
    id_groups: usize,
}

/// See `GpuModel::layer_ctx`.
struct LayerCtx {
    st: StepState,
    b: StepBuffers,
    a: Slot,
    w: LayerParams,
    n: usize,
    h: usize,
    i: usize,
    qd: usize,
    kvd: usize,
    hd: usize,
    hdp: usize,
    heads: usize,
    kvh: usize,
    eps: f32,
    cos: DevicePtr,
    sin: DevicePtr,
    shape: AttnShape,
    /// The softmax scale of the real head dim (heads may run zero-padded).
    scale: f32,
}

/// What a `GpuModel` allocates its activations for, once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// The most tokens of a micro-batch, and so of one sequence (the RoPE
    /// table's rows).
    pub tokens: usize,
    /// Tokens per chunk of o_proj's residual and the MLP (0: the whole
    /// micro-batch); a multiple of 8.
    pub chunk_tokens: usize,
}

impl Capacity {
    /// The plan's default chunk, 8192 tokens.
    pub fn new(tokens: usize) -> Self {
        Capacity { tokens, chunk_tokens: 8192 }
    }

    /// Tokens of one chunk of the post-attention work.
    pub fn chunk(&self) -> usize {
        self.plan_request(false).chunk() as usize
    }

    /// The memory plan's request for this capacity on one GPU: one
    /// sequence of `tokens` (the longest a micro-batch can hold).
    pub fn plan_request(&self, recompute: bool) -> PlanRequest {
        PlanRequest { batch: 1, gpus: 1, recompute, chunk_tokens: self.chunk_tokens, kv_cache_tokens: 0, ..PlanRequest::new(self.tokens) }
    }
}

/// Bytes the model holds on its device, by the memory plan's component
/// names (`memory_plan::names`), in the order allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    pub components: Vec<(&'static str, usize)>,
    pub capacity: Capacity,
}

impl DeviceMemory {
    fn add(&mut self, name: &'static str, bytes: usize) {
        match self.components.iter_mut().find(|c| c.0 == name) {
            Some(c) => c.1 += bytes,
            None => self.components.push((name, bytes)),
        }
    }

    /// Bytes under one component name (0 when none).
    pub fn bytes(&self, name: &str) -> usize {
        self.components.iter().find(|c| c.0 == name).map_or(0, |c| c.1)
    }

    pub fn total(&self) -> usize {
        self.components.iter().map(|c| c.1).sum()
    }
}

/// The Qwen2 model on a device.
pub struct GpuModel {
    dev: Box<dyn Device + Send>,
    pub cfg: ModelConfig,
    out_vocab: usize,
    /// Head dim the attention kernels run at (64 or 128).
    hd_pad: usize,
    pub recompute: bool,
    params: Vec<Param>,
    embed: usize,
    layers: Vec<LayerParams>,
    final_norm: usize,
    lm_head: Option<usize>,
    /// RoPE cos and sin, `capacity.tokens` positions.
    rope_dev: (DevicePtr, DevicePtr),
    buf: StepBuffers,
    state: Option<StepState>,
    memory: DeviceMemory,
    /// `Model::weights_version` of the weights on the device.
    weights_version: Option<u64>,
    /// AdamW's m and v, one pair per parameter.
    moments: Vec<(DevicePtr, DevicePtr)>,
    /// The host optimizer state (id, steps taken) the device's m and v
    /// continue; None until a device step has run.
    moments_of: Option<(u64, u64)>,
    /// Per-parameter Σ g² and the global norm's block partials.
    norm_scratch: (DevicePtr, DevicePtr),
}

impl GpuModel {
    /// Upload `model` (weights, RoPE table, settings) to `dev` and allocate
    /// everything a training step needs for micro-batches of up to
    /// `capacity.tokens` tokens: the memory plan's buffers, once.
    pub fn new(mut dev: Box<dyn Device + Send>, model: &Model, capacity: Capacity) -> Result<Self> {
        let cfg = model.cfg.clone();
        if cfg.qk_norm {
            bail!("the GPU model backend does not run q/k norm (Qwen3) yet; use backend = \"cpu\"");
        }
        let hd_pad = memory_plan::attention_head_dim(&cfg)?;
        ensure!(cfg.hidden_size % 8 == 0, "the fused LM-head kernels need hidden_size ({}) to be a multiple of 8", cfg.hidden_size);
        capacity.plan_request(model.recompute).validate().context("the GPU trainer's capacity")?;
        let mut memory = DeviceMemory { components: vec![], capacity };
        let specs = param_specs(&cfg);
        let mut params = Vec::with_capacity(specs.len());
        let mut moments = Vec::with_capacity(specs.len());
        for (_, shape, kind) in &specs {
            let len: usize = shape.iter().product();
            let half = if *kind == ParamKind::Matrix {
                memory.add(names::WEIGHTS, len * BF16);
                Some(dev.alloc(len * BF16)?)
            } else {
                None
            };
            memory.add(names::MASTER, len * F32);
            let master = dev.alloc(len * F32)?;
            memory.add(names::GRADS, len * F32);
            let grad = dev.zeros(len * F32)?;
            params.push(Param { len, master, half, grad });
        }
        for p in &params {
            memory.add(names::ADAM_M, p.len * F32);
            memory.add(names::ADAM_V, p.len * F32);
            moments.push((dev.zeros(p.len * F32)?, dev.zeros(p.len * F32)?));
        }
        let (tensors, max_blocks) = memory_plan::grad_norm_scratch_elements(&cfg);
        memory.add(names::NORM_SCRATCH, (tensors + max_blocks) * F32);
        let norm_scratch = (dev.zeros(tensors * F32)?, dev.zeros(max_blocks * F32)?);
        // Indices in param_specs order (as Weights::build walks them).
        let mut next = 0usize;
        let mut take = || {
            next += 1;
            next - 1
        };
        let embed = take();
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for _ in 0..cfg.num_layers {
            let input_norm = take();
            let q = take();
            let q_bias = cfg.qkv_bias.then(&mut take);
            let k = take();
            let k_bias = cfg.qkv_bias.then(&mut take);
            let v = take();
            let v_bias = cfg.qkv_bias.then(&mut take);
            let o = take();
            layers.push(LayerParams { input_norm, q, q_bias, k, k_bias, v, v_bias, o, post_norm: take(), gate: take(), up: take(), down: take() });
        }
        let final_norm = take();
        let lm_head = (!cfg.tie_word_embeddings).then(&mut take);
        ensure!(next == params.len(), "parameter layout mismatch: {next} walked, {} allocated", params.len());
        let out_vocab = model.out_vocab();
        let buf = allocate_step_buffers(dev.as_mut(), &mut memory, &cfg, hd_pad, out_vocab, model.recompute, capacity)
            .with_context(|| format!("allocating the activations for {} tokens", capacity.tokens))?;
        // The RoPE table for every position a micro-batch can hold.
        let mut rope = model.rope.clone();
        rope.ensure(capacity.tokens);
        let rows = capacity.tokens * (cfg.head_dim / 2);
        memory.add(names::INPUTS, 2 * rows * F32);
        let rope_dev = (dev.upload_f32(&rope.cos[..rows])?, dev.upload_f32(&rope.sin[..rows])?);
        let mut g = GpuModel {
            dev,
            out_vocab,
            hd_pad,
            recompute: model.recompute,
            params,
            embed,
            layers,
            final_norm,
            lm_head,
            rope_dev,
            buf,
            state: None,
            memory,
            weights_version: None,
            moments,
            moments_of: None,
            norm_scratch,
            cfg,
        };
        g.upload_weights(&model.weights).context("uploading the weights")?;
        g.weights_version = Some(model.weights_version());
        Ok(g)
    }

    /// The device's name.
    pub fn device_name(&self) -> String {
        self.dev.name()
    }

    /// Bytes held on the device, by component.
    pub fn memory(&self) -> &DeviceMemory {
        &self.memory
    }

    fn shape(&self) -> AttnShape {
        AttnShape { heads: self.cfg.num_heads, kv_heads: self.cfg.num_kv_heads, head_dim: self.hd_pad }
    }

    fn lm(&self) -> Param {
        self.params[self.lm_head.unwrap_or(self.embed)]
    }

    // ----------------------------------------------------------------------
    // GEMM helpers: every matrix row-major, bf16 operands, fp32 accumulation.
    // ----------------------------------------------------------------------

    /// `y [n, out] (+)= x_b [n, in] · W_bᵀ` (W stored `[out, in]`), then `+ bias`.
    #[allow(clippy::too_many_arguments)]
    fn linear_fwd(&mut self, y: DevicePtr, x_b: DevicePtr, w: usize, bias: Option<usize>, n: usize, inp: usize, out: usize, beta: f32) -> Result<()> {
        let wp = self.params[w];
        let g = Gemm::new(n, out, inp).trans_b(true).types(Dtype::Bf16, Dtype::F32).scale(1.0, beta);
        self.dev.gemm(&g, y, x_b, wp.half())?;
        if let Some(b) = bias {
            let ones = self.buf.ones;
            let g = Gemm::new(n, out, 1).scale(1.0, 1.0);
            self.dev.gemm(&g, y, ones, self.params[b].master)?;
        }
        Ok(())
    }

    /// Backward of `linear_fwd`: `dx [n, in] (+)= dy_b · W_b` and
    /// `dW += dy_bᵀ · x_b`, `dbias += 1ᵀ · dy` (fp32 `dy`).
    #[allow(clippy::too_many_arguments)]
    fn linear_bwd(&mut self, dx: DevicePtr, dx_beta: f32, dy_b: DevicePtr, dy: DevicePtr, x_b: DevicePtr, w: usize, bias: Option<usize>, n: usize, inp: usize, out: usize) -> Result<()> {
        let wp = self.params[w];
        let g = Gemm::new(n, inp, out).types(Dtype::Bf16, Dtype::F32).scale(1.0, dx_beta);
        self.dev.gemm(&g, dx, dy_b, wp.half())?;
        let g = Gemm::new(out, inp, n).trans_a(true).types(Dtype::Bf16, Dtype::F32).scale(1.0, 1.0);
        self.dev.gemm(&g, wp.grad, dy_b, x_b)?;
        if let Some(b) = bias {
            let ones = self.buf.ones;
            let g = Gemm::new(1, out, n).trans_a(true).scale(1.0, 1.0);
            self.dev.gemm(&g, self.params[b].grad, ones, dy)?;
        }
        Ok(())
    }

    // ----------------------------------------------------------------------
    // Forward
    // ----------------------------------------------------------------------

    /// What layer `l`'s forward and backward read: the step, the buffers,
    /// the layer's slot and weights, the sizes and the RoPE table.
    fn layer_ctx(&self, l: usize) -> LayerCtx {
        let st = self.state.clone().expect("forward state");
        let b = self.buf.clone();
        let c = &self.cfg;
        let (cos, sin) = self.rope_dev;
        LayerCtx {
            a: b.slots[if self.recompute { 0 } else { l }],
            w: self.layers[l],
            n: st.n,
            st,
            b,
            h: c.hidden_size,
            i: c.intermediate_size,
            qd: c.q_dim(),
            kvd: c.kv_dim(),
            hd: c.head_dim,
            hdp: self.hd_pad,
            heads: c.num_heads,
            kvh: c.num_kv_heads,
            eps: c.rms_norm_eps,
            cos,
            sin,
            shape: self.shape(),
            scale: AttnShape { heads: c.num_heads, kv_heads: c.num_kv_heads, head_dim: c.head_dim }.scale(),
        }
    }

    /// The token chunks of the post-attention work over `n` tokens: (first
    /// token, tokens), and where the chunk's rows start in the slot's MLP
    /// buffers (0 when they hold one chunk, under recomputation).
    fn chunks(&self, n: usize) -> Vec<(usize, usize, usize)> {
        let chunk = self.memory.capacity.chunk();
        (0..n).step_by(chunk).map(|s| (s, chunk.min(n - s), if self.recompute { 0 } else { s })).collect()
    }

    /// Layer `l`'s attention half of the forward from `xs[l]`: the input
    /// norm, q/k/v with RoPE, flash attention.
    fn attention_fwd(&mut self, l: usize) -> Result<()> {
        let LayerCtx { st, b, a, w, n, h, qd, kvd, hd, hdp, heads, kvh, eps, cos, sin, shape, scale, .. } = self.layer_ctx(l);
        let dev = self.dev.as_mut();
        gpu::rmsnorm_fwd(dev, a.xn1, a.rstd1, None, b.xs[l], None, self.params[w.input_norm].master, n, h, eps)?;
        gpu::f32_to_bf16(dev, a.xn1_b, a.xn1, n * h)?;
        self.linear_fwd(a.q, a.xn1_b, w.q, w.q_bias, n, h, qd, 0.0)?;
        self.linear_fwd(a.k, a.xn1_b, w.k, w.k_bias, n, h, kvd, 0.0)?;
        self.linear_fwd(a.v, a.xn1_b, w.v, w.v_bias, n, h, kvd, 0.0)?;
        let dev = self.dev.as_mut();
        gpu::rope_fwd(dev, a.q, b.pos, cos, sin, n, heads, hd / 2)?;
        gpu::rope_fwd(dev, a.k, b.pos, cos, sin, n, kvh, hd / 2)?;
        gpu::pad_heads_bf16(dev, a.q_b, a.q, n * heads, hd, hdp)?;
        gpu::pad_heads_bf16(dev, a.k_b, a.k, n * kvh, hd, hdp)?;
        gpu::pad_heads_bf16(dev, a.v_b, a.v, n * kvh, hd, hdp)?;
        flash_attn_fwd(dev, a.out_b, a.lse, a.q_b, a.k_b, a.v_b, b.cu_seqlens, st.batch, st.max_seqlen, shape, scale)?;
        if a.attn_b != a.out_b {
            gpu::unpad_heads_bf16(dev, a.attn_b, a.out_b, n * heads, hd, hdp)?;
        }
        Ok(())
    }

    /// Layer `l`'s post-attention forward over tokens `s..s + len` (rows
    /// from `off` in the slot's MLP buffers): o_proj's residual, the second
    /// norm, the SwiGLU MLP; writes those rows of `xs[l + 1]` when `output`.
    fn mlp_fwd(&mut self, l: usize, (s, len, off): (usize, usize, usize), output: bool) -> Result<()> {
        let LayerCtx { b, a, w, h, i, qd, eps, .. } = self.layer_ctx(l);
        let (x_mid, xn2, xn2_b) = (a.x_mid.offset(off * h * F32), a.xn2.offset(off * h * F32), a.xn2_b.offset(off * h * BF16));
        let (gate, up, act, act_b) = (a.gate.offset(off * i * F32), a.up.offset(off * i * F32), a.act.offset(off * i * F32), a.act_b.offset(off * i * BF16));
        // x_mid = x + attn · Woᵀ
        self.dev.copy_d2d(x_mid, b.xs[l].offset(s * h * F32), len * h * F32)?;
        self.linear_fwd(x_mid, a.attn_b.offset(s * qd * BF16), w.o, None, len, qd, h, 1.0)?;
        let dev = self.dev.as_mut();
        gpu::rmsnorm_fwd(dev, xn2, a.rstd2.offset(off * F32), None, x_mid, None, self.params[w.post_norm].master, len, h, eps)?;
        gpu::f32_to_bf16(dev, xn2_b, xn2, len * h)?;
        self.linear_fwd(gate, xn2_b, w.gate, None, len, h, i, 0.0)?;
        self.linear_fwd(up, xn2_b, w.up, None, len, h, i, 0.0)?;
        let dev = self.dev.as_mut();
        gpu::swiglu_fwd(dev, act, gate, up, len * i)?;
        gpu::f32_to_bf16(dev, act_b, act, len * i)?;
        if output {
            // x_{l+1} = x_mid + act · Wdᵀ
            let out = b.xs[l + 1].offset(s * h * F32);
            dev.copy_d2d(out, x_mid, len * h * F32)?;
            self.linear_fwd(out, act_b, w.down, None, len, i, h, 1.0)?;
        }
        Ok(())
    }

    /// The training forward over a packed batch; the activations stay on the
    /// device for `token_logprobs` and `backward`.
    pub fn forward(&mut self, batch: &Batch) -> Result<()> {
        let n = batch.len();
        ensure!(n > 0, "the GPU forward got an empty batch");
        ensure!(batch.pos.len() == n, "batch: {} positions for {n} tokens", batch.pos.len());
        if let Some(&bad) = batch.ids.iter().find(|&&t| t as usize >= self.out_vocab) {
            bail!("token id {bad} is outside the model's vocabulary of {}", self.out_vocab);
        }
        let lens: Vec<usize> = batch.seqs.iter().map(|r| r.len()).collect();
        ensure!(
            lens.iter().sum::<usize>() == n && batch.seqs.first().is_some_and(|r| r.start == 0) && batch.seqs.windows(2).all(|w| w[0].end == w[1].start),
            "batch: sequences must tile the tokens in order"
        );
        let max_pos = batch.pos.iter().copied().max().unwrap_or(0) as usize;
        let cap = self.memory.capacity.tokens;
        ensure!(n <= cap, "a micro-batch of {n} tokens is larger than the GPU trainer's capacity of {cap} tokens (its buffers are allocated once, for the largest micro-batch the config allows)");
        ensure!(max_pos < cap, "position {max_pos} is past the GPU trainer's RoPE table of {cap} positions (its capacity)");
        let b = self.buf.clone();
        let dev = self.dev.as_mut();
        dev.copy_h2d(b.ids, &u32_bytes(&batch.ids))?;
        dev.copy_h2d(b.pos, &u32_bytes(&batch.pos))?;
        dev.copy_h2d(b.cu_seqlens, &u32_bytes(&cu_seqlens(&lens)))?;
        let (order, starts) = gpu::embedding_groups(&batch.ids);
        dev.copy_h2d(b.id_order, &u32_bytes(&order))?;
        dev.copy_h2d(b.id_starts, &u32_bytes(&starts))?;
        let id_groups = starts.len() - 1;
        self.state = Some(StepState { n, batch: lens.len(), max_seqlen: lens.iter().copied().max().unwrap_or(0), scored: false, id_groups });

        let h = self.cfg.hidden_size;
        gpu::embedding_fwd(dev, b.xs[0], self.params[self.embed].master, b.ids, n, h)?;
        for l in 0..self.cfg.num_layers {
            self.attention_fwd(l).with_context(|| format!("GPU forward, layer {l}"))?;
            for c in self.chunks(n) {
                self.mlp_fwd(l, c, true).with_context(|| format!("GPU forward, layer {l}, tokens {}..{}", c.0, c.0 + c.1))?;
            }
        }
        let dev = self.dev.as_mut();
        let last = b.xs[self.cfg.num_layers];
        gpu::rmsnorm_fwd(dev, b.hidden, b.final_rstd, None, last, None, self.params[self.final_norm].master, n, h, self.cfg.rms_norm_eps)?;
        gpu::f32_to_bf16(dev, b.hidden_b, b.hidden, n * h)
    }

    /// Log-prob and entropy of `targets` at every position of the last
    /// forward (the fused LM-head kernel), downloaded.
    pub fn token_logprobs(&mut self, targets: &[u32]) -> Result<TokenLogprobs> {
        let st = self.state.as_mut().context("token_logprobs before forward")?;
        ensure!(targets.len() == st.n, "{} targets for {} tokens", targets.len(), st.n);
        if let Some(&bad) = targets.iter().find(|&&t| t as usize >= self.out_vocab) {
            bail!("target id {bad} is outside the model's vocabulary of {}", self.out_vocab);
        }
        st.scored = true;
        let n = st.n;
        let b = self.buf.clone();
        let lm = self.lm();
        let (h, v) = (self.cfg.hidden_size, self.out_vocab);
        let dev = self.dev.as_mut();
        dev.copy_h2d(b.targets, &u32_bytes(targets))?;
        let out = LogprobOut { logprob: b.logprob, entropy: b.entropy, lse: b.lse_vocab };
        let x = lp_kernels::HeadInputs { hidden: b.hidden_b, w: lm.half(), targets: b.targets, n, d: h, vocab: v };
        lp_kernels::logprob_entropy_fwd(dev, &x, &out, b.ws_lp)?;
        Ok(TokenLogprobs { logprob: dev.download_f32(b.logprob, n)?, entropy: dev.download_f32(b.entropy, n)?, lse: dev.download_f32(b.lse_vocab, n)? })
    }

    // ----------------------------------------------------------------------
    // Backward
    // ----------------------------------------------------------------------

    /// Layer `l`'s post-attention backward over one chunk of tokens (see
    /// `mlp_fwd`; its forward must be in the slot): `b.dx`'s rows hold
    /// d x_{l+1} on entry and d x_mid on exit.
    fn mlp_bwd(&mut self, l: usize, (s, len, off): (usize, usize, usize)) -> Result<()> {
        let LayerCtx { b, a, w, h, i, .. } = self.layer_ctx(l);
        let (dx, dh, dh_b) = (b.dx.offset(s * h * F32), b.dh.offset(s * h * F32), b.dh_b.offset(s * h * BF16));
        let (x_mid, rstd2, xn2_b) = (a.x_mid.offset(off * h * F32), a.rstd2.offset(off * F32), a.xn2_b.offset(off * h * BF16));
        let (gate, up, act_b) = (a.gate.offset(off * i * F32), a.up.offset(off * i * F32), a.act_b.offset(off * i * BF16));
        // x_{l+1} = x_mid + down(swiglu(gate(xn2), up(xn2)))
        gpu::f32_to_bf16(self.dev.as_mut(), dh_b, dx, len * h)?;
        self.linear_bwd(b.di1, 0.0, dh_b, dx, act_b, w.down, None, len, i, h)?; // di1 = dact
        gpu::swiglu_bwd(self.dev.as_mut(), b.di1, b.di2, b.di1, gate, up, len * i)?; // di1 = dgate, di2 = dup
        let dev = self.dev.as_mut();
        gpu::f32_to_bf16(dev, b.di1_b, b.di1, len * i)?;
        gpu::f32_to_bf16(dev, b.di2_b, b.di2, len * i)?;
        self.linear_bwd(dh, 0.0, b.di1_b, b.di1, xn2_b, w.gate, None, len, h, i)?;
        self.linear_bwd(dh, 1.0, b.di2_b, b.di2, xn2_b, w.up, None, len, h, i)?;
        gpu::rmsnorm_bwd(self.dev.as_mut(), dx, self.params[w.post_norm].grad, dh, x_mid, self.params[w.post_norm].master, rstd2, len, h, true)
    }

    /// Layer `l`'s attention backward (its forward must be in the slot):
    /// `b.dx` holds d x_mid on entry, d x_l on exit.
    fn attention_bwd(&mut self, l: usize) -> Result<()> {
        let LayerCtx { st, b, a, w, n, h, qd, kvd, hd, hdp, heads, kvh, cos, sin, shape, scale, .. } = self.layer_ctx(l);
        // x_mid = x + o_proj(attn(rope(q), rope(k), v))
        gpu::f32_to_bf16(self.dev.as_mut(), b.dh_b, b.dx, n * h)?;
        self.linear_bwd(b.dq, 0.0, b.dh_b, b.dx, a.attn_b, w.o, None, n, qd, h)?; // dq = d attn
        let dev = self.dev.as_mut();
        gpu::pad_heads_bf16(dev, b.dout_b, b.dq, n * heads, hd, hdp)?;
        flash_attn_bwd(
            dev, b.dqp, b.dkp, b.dvp, b.dout_b, a.q_b, a.k_b, a.v_b, a.out_b, a.lse, b.cu_seqlens, st.batch, n, st.max_seqlen, shape, scale, true, b.ws_attn,
        )?;
        if hdp != hd {
            gpu::unpad_heads_f32(dev, b.dq, b.dqp, n * heads, hd, hdp)?;
            gpu::unpad_heads_f32(dev, b.dk, b.dkp, n * kvh, hd, hdp)?;
            gpu::unpad_heads_f32(dev, b.dv, b.dvp, n * kvh, hd, hdp)?;
        }
        gpu::rope_bwd(dev, b.dq, b.pos, cos, sin, n, heads, hd / 2)?;
        gpu::rope_bwd(dev, b.dk, b.pos, cos, sin, n, kvh, hd / 2)?;
        gpu::f32_to_bf16(dev, b.dq_b, b.dq, n * qd)?;
        gpu::f32_to_bf16(dev, b.dk_b, b.dk, n * kvd)?;
        gpu::f32_to_bf16(dev, b.dv_b, b.dv, n * kvd)?;
        self.linear_bwd(b.dh, 0.0, b.dq_b, b.dq, a.xn1_b, w.q, w.q_bias, n, h, qd)?;
        self.linear_bwd(b.dh, 1.0, b.dk_b, b.dk, a.xn1_b, w.k, w.k_bias, n, h, kvd)?;
        self.linear_bwd(b.dh, 1.0, b.dv_b, b.dv, a.xn1_b, w.v, w.v_bias, n, h, kvd)?;
        gpu::rmsnorm_bwd(self.dev.as_mut(), b.dx, self.params[w.input_norm].grad, b.dh, b.xs[l], self.params[w.input_norm].master, a.rstd1, n, h, true)
    }

    /// The backward from d loss / d logprob and d loss / d entropy per token
    /// of the last `token_logprobs`: parameter gradients are ADDED to the
    /// device's gradient buffers (see `zero_grads`, `download_grads`).
    pub fn backward(&mut self, g_logprob: &[f32], g_entropy: &[f32]) -> Result<()> {
        let st = self.state.clone().context("backward before forward")?;
        ensure!(st.scored, "backward before token_logprobs");
        ensure!(g_logprob.len() == st.n && g_entropy.len() == st.n, "backward: {} / {} gradients for {} tokens", g_logprob.len(), g_entropy.len(), st.n);
        let b = self.buf.clone();
        let lm = self.lm();
        let (n, h, v) = (st.n, self.cfg.hidden_size, self.out_vocab);
        let dev = self.dev.as_mut();
        dev.write_f32(b.dlogprob, g_logprob)?;
        dev.write_f32(b.dentropy, g_entropy)?;
        let g = LogprobGrads { dlogprob: b.dlogprob, dentropy: b.dentropy, lse: b.lse_vocab, entropy: b.entropy };
        // The LM head's rows past the output vocabulary get no gradient.
        let x = lp_kernels::HeadInputs { hidden: b.hidden_b, w: lm.half(), targets: b.targets, n, d: h, vocab: v };
        lp_kernels::logprob_entropy_bwd_chunked(dev, &x, &g, lp_kernels::HeadGrads { dhidden: b.dh, dw: lm.grad, accumulate_dw: true }, b.ws_lp)?;
        let last = b.xs[self.cfg.num_layers];
        let fnorm = self.params[self.final_norm];
        gpu::rmsnorm_bwd(dev, b.dx, fnorm.grad, b.dh, last, fnorm.master, b.final_rstd, n, h, false)?;
        for l in (0..self.cfg.num_layers).rev() {
            if self.recompute {
                self.attention_fwd(l).with_context(|| format!("GPU recompute, layer {l}"))?;
            }
            for c in self.chunks(n) {
                let tokens = || format!("layer {l}, tokens {}..{}", c.0, c.0 + c.1);
                if self.recompute {
                    self.mlp_fwd(l, c, false).with_context(|| format!("GPU recompute, {}", tokens()))?;
                }
                self.mlp_bwd(l, c).with_context(|| format!("GPU backward, {}", tokens()))?;
            }
            self.attention_bwd(l).with_context(|| format!("GPU backward, layer {l}"))?;
        }
        gpu::embedding_bwd(self.dev.as_mut(), self.params[self.embed].grad, b.dx, b.ids, b.id_order, b.id_starts, st.id_groups, h)
    }

    // ----------------------------------------------------------------------
    // Parameters
    // ----------------------------------------------------------------------

    pub fn zero_grads(&mut self) -> Result<()> {
        for p in &self.params {
            self.dev.memset_zero(p.grad, p.len * F32)?;
        }
        Ok(())
    }

    /// Wait until the device has finished the work queued so far (for
    /// timing: launches return before their kernels run).
    pub fn synchronize(&mut self) -> Result<()> {
        self.dev.synchronize()
    }

    /// One device buffer of every parameter, as host `Weights`.
    fn download(&mut self, which: fn(&Param) -> DevicePtr) -> Result<Weights> {
        let mut w = Weights::zeros(&self.cfg);
        self.download_into(which, &mut w)?;
        Ok(w)
    }

    /// One device buffer of every parameter into `w` (its tensors' memory is
    /// reused: no allocation, no first-touch page faults).
    fn download_into(&mut self, which: fn(&Param) -> DevicePtr, w: &mut Weights) -> Result<()> {
        let tensors = w.tensors_mut();
        ensure!(tensors.len() == self.params.len(), "download: {} tensors for {} parameters", tensors.len(), self.params.len());
        for (t, p) in tensors.into_iter().zip(&self.params) {
            ensure!(t.data.len() == p.len, "download: a tensor of {} values for a parameter of {}", t.data.len(), p.len);
            self.dev.read_f32(which(p), &mut t.data)?;
        }
        Ok(())
    }

    /// The gradients, as host `Weights` (parameter order and shapes of `cfg`).
    pub fn download_grads(&mut self) -> Result<Weights> {
        self.download(|p| p.grad)
    }

    /// The fp32 master weights, as host `Weights`.
    pub fn download_weights(&mut self) -> Result<Weights> {
        self.download(|p| p.master)
    }

    /// The fp32 master weights into `w`, which has the model's shapes.
    pub fn download_weights_into(&mut self, w: &mut Weights) -> Result<()> {
        self.download_into(|p| p.master, w)
    }

    /// The `Model::weights_version` the device holds (None after an
    /// upload not tagged with one, or a device AdamW step).
    pub fn weights_version(&self) -> Option<u64> {
        self.weights_version
    }

    pub fn set_weights_version(&mut self, v: u64) {
        self.weights_version = Some(v);
    }

    /// Replace the weights (fp32 masters and their bf16 copies) with `w`.
    pub fn upload_weights(&mut self, w: &Weights) -> Result<()> {
        self.weights_version = None;
        let tensors = w.tensors();
        ensure!(tensors.len() == self.params.len(), "upload_weights: {} tensors for {} parameters", tensors.len(), self.params.len());
        for (t, p) in tensors.into_iter().zip(&self.params) {
            ensure!(t.data.len() == p.len, "upload_weights: a tensor of {} values for a parameter of {}", t.data.len(), p.len);
            self.dev.write_f32(p.master, &t.data)?;
            if let Some(hp) = p.half {
                gpu::f32_to_bf16(self.dev.as_mut(), hp, p.master, p.len)?;
            }
        }
        Ok(())
    }

    /// Σ g² of every parameter's gradient (f32 on the device per
    /// parameter, summed in f64 here in parameter order): the global norm².
    pub fn grad_sum_squares(&mut self) -> Result<f64> {
        let (sums, scratch) = self.norm_scratch;
        for (i, p) in self.params.iter().enumerate() {
            gpu::sum_squares(self.dev.as_mut(), sums.offset(i * F32), p.grad, scratch, p.len)?;
        }
        Ok(self.dev.download_f32(sums, self.params.len())?.iter().map(|&x| x as f64).sum())
    }

    /// One optimizer step on the device, continuing the host optimizer state
    /// `host`: the global gradient norm, the clip (gradients rescaled when
    /// the norm exceeds `host.grad_clip`), then AdamW on the fp32 masters
    /// with m and v kept on the device (taken from `host.m`/`host.v` when
    /// they do not continue `host`), the bf16 copies refreshed. Returns the
    /// norm before clipping; a non-finite norm is an error and changes
    /// nothing.
    pub fn optimizer_step(&mut self, host: &HostOptimizer<'_>) -> Result<f64> {
        ensure!(host.decay.len() == self.params.len(), "optimizer_step: {} decay flags for {} parameters", host.decay.len(), self.params.len());
        let norm = self.grad_sum_squares()?.sqrt();
        ensure!(norm.is_finite(), "the gradient norm is {norm}; the step was not taken");
        if self.moments_of != Some((host.id, host.step)) {
            ensure!(
                host.m.tensors().len() == self.params.len() && host.v.tensors().len() == self.params.len(),
                "optimizer_step: moments of {} / {} tensors for {} parameters",
                host.m.tensors().len(),
                host.v.tensors().len(),
                self.params.len()
            );
            for (p, (m, v)) in self.params.iter().zip(host.m.tensors().into_iter().zip(host.v.tensors())) {
                ensure!(m.data.len() == p.len && v.data.len() == p.len, "optimizer_step: moments of {} / {} values for a parameter of {}", m.data.len(), v.data.len(), p.len);
            }
            for ((dm, dv), (m, v)) in self.moments.iter().zip(host.m.tensors().into_iter().zip(host.v.tensors())) {
                self.dev.write_f32(*dm, &m.data)?;
                self.dev.write_f32(*dv, &v.data)?;
            }
            self.moments_of = Some((host.id, host.step));
        }
        if host.grad_clip > 0.0 && norm > host.grad_clip as f64 {
            let scale = (host.grad_clip as f64 / (norm + 1e-6)) as f32;
            for p in &self.params {
                gpu::scale_f32(self.dev.as_mut(), p.grad, scale, p.len)?;
            }
        }
        let step = host.step + 1;
        for ((p, &decay), (m, v)) in self.params.iter().zip(host.decay).zip(&self.moments) {
            gpu::adamw_step(self.dev.as_mut(), p.master, p.half, p.grad, *m, *v, p.len, step, host.hp, decay)?;
        }
        self.moments_of = Some((host.id, step));
        self.weights_version = None;
        Ok(norm)
    }

    /// Download m and v into `m`/`v` when the device's continue the host
    /// state (`id`, `step`); returns whether it did.
    pub fn download_moments(&mut self, id: u64, step: u64, m: &mut Weights, v: &mut Weights) -> Result<bool> {
        if self.moments_of != Some((id, step)) {
            return Ok(false);
        }
        let mv = self.moments.clone();
        for ((tm, tv), (p, (dm, dv))) in m.tensors_mut().into_iter().zip(v.tensors_mut()).zip(self.params.iter().zip(&mv)) {
            tm.data = self.dev.download_f32(*dm, p.len)?;
            tv.data = self.dev.download_f32(*dv, p.len)?;
        }
        Ok(true)
    }
}

/// Allocate the step's buffers for `cap` on `dev`, each counted in
/// `memory` under its memory-plan component (`memory_plan`'s lists, in the
/// same conventions; a test holds the two equal).
#[allow(clippy::too_many_arguments)]
fn allocate_step_buffers(dev: &mut dyn Device, memory: &mut DeviceMemory, c: &ModelConfig, hdp: usize, v: usize, recompute: bool, cap: Capacity) -> Result<StepBuffers> {
    let (n, chunk) = (cap.tokens, cap.chunk());
    let (h, i, qd, kvd) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
    let (heads, kvh) = (c.num_heads, c.num_kv_heads);
    let padded = hdp != c.head_dim;
    let mut a = |what: &'static str, n_bytes: usize| -> Result<DevicePtr> {
        // 256-byte granularity keeps every buffer 16-byte aligned on the
        // simulated device too (cuMemAlloc aligns to 256 already).
        let p = dev.alloc(n_bytes.max(1).next_multiple_of(256))?;
        memory.add(what, n_bytes);
        Ok(p)
    };
    let ids = a(names::INPUTS, n * 4)?;
    let pos = a(names::INPUTS, n * 4)?;
    let ones = a(names::INPUTS, n * F32)?;
    let cu = a(names::INPUTS, (n + 1) * 4)?;
    let id_order = a(names::INPUTS, n * 4)?;
    let id_starts = a(names::INPUTS, (n + 1) * 4)?;
    let mut xs = (0..c.num_layers).map(|_| a(names::SAVED, n * h * F32)).collect::<Result<Vec<_>>>()?;
    xs.push(a(names::FINAL, n * h * F32)?);
    // With recomputation one slot, its MLP side one chunk; without, one
    // whole slot per layer.
    let (slots_of, n_slots, mlp_rows) = if recompute { (names::RECOMPUTE, 1, chunk) } else { (names::SAVED, c.num_layers.max(1), n) };
    let mut slots = vec![];
    for _ in 0..n_slots {
        let out_b = a(slots_of, n * heads * hdp * BF16)?;
        slots.push(Slot {
            rstd1: a(slots_of, n * F32)?,
            xn1: a(slots_of, n * h * F32)?,
            xn1_b: a(slots_of, n * h * BF16)?,
            q: a(slots_of, n * qd * F32)?,
            k: a(slots_of, n * kvd * F32)?,
            v: a(slots_of, n * kvd * F32)?,
            q_b: a(slots_of, n * heads * hdp * BF16)?,
            k_b: a(slots_of, n * kvh * hdp * BF16)?,
            v_b: a(slots_of, n * kvh * hdp * BF16)?,
            out_b,
            lse: a(slots_of, n * heads * F32)?,
            attn_b: if padded { a(slots_of, n * qd * BF16)? } else { out_b },
            x_mid: a(slots_of, mlp_rows * h * F32)?,
            rstd2: a(slots_of, mlp_rows * F32)?,
            xn2: a(slots_of, mlp_rows * h * F32)?,
            xn2_b: a(slots_of, mlp_rows * h * BF16)?,
            gate: a(slots_of, mlp_rows * i * F32)?,
            up: a(slots_of, mlp_rows * i * F32)?,
            act: a(slots_of, mlp_rows * i * F32)?,
            act_b: a(slots_of, mlp_rows * i * BF16)?,
        });
    }
    let g = names::GRAD_SCRATCH;
    let dq = a(g, n * qd * F32)?;
    let dk = a(g, n * kvd * F32)?;
    let dv = a(g, n * kvd * F32)?;
    let (dqp, dkp, dvp) = if padded { (a(g, n * heads * hdp * F32)?, a(g, n * kvh * hdp * F32)?, a(g, n * kvh * hdp * F32)?) } else { (dq, dk, dv) };
    let shape = AttnShape { heads, kv_heads: kvh, head_dim: hdp };
    let b = StepBuffers {
        ids,
        id_order,
        id_starts,
        pos,
        targets: a(names::LOSS, n * 4)?,
        cu_seqlens: cu,
        ones,
        xs: xs.into(),
        slots: slots.into(),
        final_rstd: a(names::FINAL, n * F32)?,
        hidden: a(names::FINAL, n * h * F32)?,
        hidden_b: a(names::FINAL, n * h * BF16)?,
        logprob: a(names::LOSS, n * F32)?,
        entropy: a(names::LOSS, n * F32)?,
        lse_vocab: a(names::LOSS, n * F32)?,
        dlogprob: a(names::LOSS, n * F32)?,
        dentropy: a(names::LOSS, n * F32)?,
        dx: a(g, n * h * F32)?,
        dh: a(g, n * h * F32)?,
        dh_b: a(g, n * h * BF16)?,
        di1: a(g, chunk * i * F32)?,
        di2: a(g, chunk * i * F32)?,
        di1_b: a(g, chunk * i * BF16)?,
        di2_b: a(g, chunk * i * BF16)?,
        dq,
        dk,
        dv,
        dq_b: a(g, n * qd * BF16)?,
        dk_b: a(g, n * kvd * BF16)?,
        dv_b: a(g, n * kvd * BF16)?,
        dqp,
        dkp,
        dvp,
        dout_b: a(g, n * heads * hdp * BF16)?,
        ws_attn: a(names::FLASH, flash_attn_bwd_workspace_bytes(n, shape))?,
        ws_lp: a(names::LOSS, memory_plan::fused_loss_workspace_bytes(n, v) as usize)?,
    };
    dev.write_f32(b.ones, &vec![1.0; n])?;
    Ok(b)
}

/// The host optimizer state a device step continues (see
/// `GpuModel::optimizer_step`): its identity and step count, its m and v,
/// which parameters decay, the hyperparameters and the clip.
pub struct HostOptimizer<'a> {
    pub id: u64,
    /// Steps taken before this one.
    pub step: u64,
    pub m: &'a Weights,
    pub v: &'a Weights,
    pub decay: &'a [bool],
    pub hp: crate::backend::cpu::adamw::AdamWParams,
    pub grad_clip: f32,
}

/// Run `model`'s training path on GPU `ordinal` from now on (see
/// `Model::train_device`), its buffers allocated once for `capacity`; the
/// plan's components are logged.
pub fn attach_cuda(model: &mut Model, ordinal: usize, capacity: Capacity) -> Result<()> {
    let dev = crate::device::cuda::CudaDevice::new(ordinal).with_context(|| format!("opening GPU {ordinal} for the trainer"))?;
    // Refuse a plan the GPU cannot hold before allocating any of it.
    let plan = memory_plan::plan_scored(&model.cfg, model.out_vocab(), "the trainer", &capacity.plan_request(model.recompute))?;
    let need = plan.total_bytes - plan.bytes(names::RESERVE);
    let (free, _) = crate::device::cuda::MemoryProbe::new(ordinal)?.free_total()?;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    ensure!(
        need <= free as u64,
        "the trainer's memory plan for micro-batches of up to {} tokens needs {:.2} GiB and GPU {ordinal} has {:.2} GiB free; {}lower [rft]/[dapo] micro_batch_tokens or [agent] max_context_tokens (`appliance plan` shows the components)",
        capacity.tokens,
        gib(need),
        gib(free as u64),
        if model.recompute { "" } else { "set [model] recompute = true, or " }
    );
    attach(model, Box::new(dev), capacity)?;
    if let Some(d) = &model.train_device {
        let g = d.lock()?;
        let m = g.memory();
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        let parts: Vec<String> = m.components.iter().map(|(name, b)| format!("{name} {:.2}", gib(*b))).collect();
        tracing::info!(
            "trainer on GPU {ordinal} ({}): {:.2} GiB allocated for micro-batches of up to {} tokens (MLP chunks of {}): {} GiB",
            g.device_name(),
            gib(m.total()),
            m.capacity.tokens,
            m.capacity.chunk(),
            parts.join(", ")
        );
    }
    Ok(())
}

/// Run `model`'s training path on `dev` from now on, its buffers allocated
/// once for `capacity`.
pub fn attach(model: &mut Model, dev: Box<dyn Device + Send>, capacity: Capacity) -> Result<()> {
    model.train_device = None;
    let g = GpuModel::new(dev, model, capacity)?;
    model.train_device = Some(super::qwen2::TrainDevice::new(g));
    Ok(())
}

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// --------------------------------------------------------------------------
// The training step against the CPU backend (tests, `appliance selftest`)
// --------------------------------------------------------------------------

/// How far one training step on a device is from the CPU backend's.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepComparison {
    pub device: String,
    pub tokens: usize,
    /// Max |device − CPU| over tokens (nats).
    pub logprob_err: f64,
    pub entropy_err: f64,
    pub loss_cpu: f64,
    pub loss_device: f64,
    /// Per parameter: ‖g_device − g_cpu‖₂ / ‖g_cpu‖₂.
    pub grad_errs: Vec<(String, f64)>,
    /// The largest of `grad_errs`.
    pub max_grad_err: f64,
    /// Device AdamW vs the CPU AdamW fed the device's gradients: max
    /// |Δweight| relative to the largest weight.
    pub adamw_err: f64,
}

impl StepComparison {
    /// Log-probs and entropies within 2e-2 nats, the loss within 1%, every
    /// gradient within 3% (relative L2), AdamW within 1e-6: the device's
    /// GEMM operands and attention are bf16, the CPU's f32.
    pub fn failures(&self) -> Vec<String> {
        let mut f = vec![];
        if !(self.logprob_err < 2e-2) {
            f.push(format!("log-probs differ by {:e}", self.logprob_err));
        }
        if !(self.entropy_err < 2e-2) {
            f.push(format!("entropies differ by {:e}", self.entropy_err));
        }
        if !((self.loss_cpu - self.loss_device).abs() <= 1e-2 * self.loss_cpu.abs().max(1e-3)) {
            f.push(format!("loss {} vs the CPU's {}", self.loss_device, self.loss_cpu));
        }
        for (name, e) in &self.grad_errs {
            if !(*e < 3e-2) {
                f.push(format!("gradient of {name} differs by {e:e}"));
            }
        }
        if !(self.adamw_err < 1e-6) {
            f.push(format!("AdamW differs by {:e}", self.adamw_err));
        }
        f
    }
}

/// A small untied Qwen2 for checks: 4 heads of `head_dim`, GQA 4, 2 layers.
pub fn check_model(head_dim: usize) -> Result<Model> {
    let json = format!(
        r#"{{"model_type":"qwen2","vocab_size":320,"hidden_size":{},"intermediate_size":384,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":1,"max_position_embeddings":4096,"rms_norm_eps":1e-6,
            "rope_theta":1000000.0,"tie_word_embeddings":false}}"#,
        4 * head_dim
    );
    let cfg = ModelConfig::from_json_str(&json, "check model")?;
    let w = Weights::init(&cfg, 3, 0.02);
    Ok(Model::new(cfg, w))
}

/// The training-step checks `appliance selftest` runs after the kernels:
/// the tiny model (head dim 32, padded) with and without recomputation,
/// and head dims 64 and 128 untied (the last only without `quick`). The
/// recomputed cases run the MLP in chunks (the last one short) in buffers
/// allocated for more tokens than the batch holds.
pub fn step_checks(open: &mut dyn FnMut() -> Result<Box<dyn Device + Send>>, quick: bool, mut each: impl FnMut(&crate::backend::gpu::checks::KernelCheck)) -> Vec<crate::backend::gpu::checks::KernelCheck> {
    let exact = |lens: &[usize]| Capacity { tokens: lens.iter().sum(), chunk_tokens: 0 };
    let mut cases: Vec<(String, Result<Model>, Vec<usize>, bool, Capacity)> = vec![
        ("tiny hd32 tied".into(), Ok(super::tiny::tiny_model(0)), vec![37, 70, 20], false, exact(&[37, 70, 20])),
        ("tiny hd32 tied, recompute, chunks of 48".into(), Ok(super::tiny::tiny_model(0)), vec![37, 70, 20], true, Capacity { tokens: 160, chunk_tokens: 48 }),
        ("hd64 gqa4 untied".into(), check_model(64), vec![65, 9], false, exact(&[65, 9])),
    ];
    if !quick {
        cases.push(("hd128 gqa4 untied, recompute, chunks of 256".into(), check_model(128), vec![513, 64, 1], true, Capacity { tokens: 600, chunk_tokens: 256 }));
    }
    let mut out = vec![];
    for (name, model, lens, recompute, capacity) in cases {
        let t = std::time::Instant::now();
        let shape = format!("{name} {lens:?}");
        let r = model.and_then(|m| {
            let batch = random_batch(&lens, m.out_vocab(), 7);
            compare_training_step(open()?, &m, &batch, recompute, capacity)
        });
        let (max_err, error) = match r {
            Ok(c) => (c.max_grad_err, Some(c.failures().join("; ")).filter(|f| !f.is_empty())),
            Err(e) => (f64::INFINITY, Some(format!("{e:#}"))),
        };
        let c = crate::backend::gpu::checks::KernelCheck {
            kernel: "model_step".into(),
            shape,
            max_err,
            tolerance: 3e-2,
            passed: error.is_none(),
            seconds: t.elapsed().as_secs_f64(),
            error,
        };
        each(&c);
        out.push(c);
    }
    out
}

/// A packed batch of sequences of `lens` tokens, ids drawn from `seed`.
pub fn random_batch(lens: &[usize], vocab: usize, seed: u64) -> Batch {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let seqs: Vec<Vec<u32>> = lens.iter().map(|&l| (0..l).map(|_| rng.gen_range(0..vocab as u32)).collect()).collect();
    Batch::from_sequences(&seqs)
}

/// One DAPO training step of `model` on `batch`, on the CPU and on `dev`:
/// forward, log-probs and entropies, the DAPO loss (old log-probs a fixed
/// perturbation of the CPU's, advantages ±1 by sequence, an entropy term
/// so that its backward runs too), backward, and one AdamW update.
pub fn compare_training_step(dev: Box<dyn Device + Send>, model: &Model, batch: &Batch, recompute: bool, capacity: Capacity) -> Result<StepComparison> {
    use crate::backend::cpu::adamw::{adamw_step, AdamWParams};
    use crate::backend::cpu::dapo_loss::{dapo_loss, DapoConfig};
    let n = batch.len();
    let (targets, mask) = batch.next_token_targets();
    let mut adv = vec![0.0f32; n];
    for (s, r) in batch.seqs.iter().enumerate() {
        adv[r.clone()].fill(if s % 2 == 0 { 1.0 } else { -1.0 });
    }
    let n_mask = mask.iter().filter(|&&m| m).count();
    let cfg = DapoConfig { eps_low: 0.2, eps_high: 0.28, delta: 1e-6 };
    let g_entropy: Vec<f32> = mask.iter().map(|&m| if m { 0.5 / n_mask as f32 } else { 0.0 }).collect();

    // CPU.
    let mut cpu = model.clone();
    cpu.recompute = recompute;
    let st = cpu.forward(batch)?;
    let lp_cpu = cpu.token_logprobs(&st, &targets);
    let old: Vec<f32> = lp_cpu.logprob.iter().enumerate().map(|(i, &l)| l + 0.15 * ((i as f32) * 0.7).sin()).collect();
    let out_cpu = dapo_loss(&lp_cpu.logprob, &old, &adv, &mask, n_mask, &cfg)?;
    let mut g_cpu = Weights::zeros(&cpu.cfg);
    cpu.backward(batch, &st, &targets, &lp_cpu, &out_cpu.grad_logp, &g_entropy, &mut g_cpu);

    // Device.
    let mut m = model.clone();
    m.recompute = recompute;
    let mut gm = GpuModel::new(dev, &m, capacity)?;
    let device = gm.device_name();
    gm.forward(batch)?;
    let lp_dev = gm.token_logprobs(&targets)?;
    let out_dev = dapo_loss(&lp_dev.logprob, &old, &adv, &mask, n_mask, &cfg)?;
    gm.zero_grads()?;
    gm.backward(&out_dev.grad_logp, &g_entropy)?;
    let g_dev = gm.download_grads()?;

    let max_abs = |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()));
    let masked = |v: &[f32]| -> Vec<f32> { v.iter().zip(&mask).map(|(&x, &k)| if k { x } else { 0.0 }).collect() };
    let mut grad_errs = vec![];
    for ((name, _, _), (a, b)) in param_specs(&m.cfg).into_iter().zip(g_dev.tensors().into_iter().zip(g_cpu.tensors())) {
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for (x, y) in a.data.iter().zip(&b.data) {
            num += (*x as f64 - *y as f64).powi(2);
            den += (*y as f64).powi(2);
        }
        let e = if den > 0.0 { (num / den).sqrt() } else if num > 0.0 { f64::INFINITY } else { 0.0 };
        grad_errs.push((name, if e.is_nan() { f64::INFINITY } else { e }));
    }
    let max_grad_err = grad_errs.iter().fold(0.0f64, |m, e| m.max(e.1));

    // AdamW: the device's update against the CPU's, both from the device's
    // gradients (no clip: the threshold is above the norm).
    let hp = AdamWParams { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
    let kinds: Vec<ParamKind> = param_specs(&m.cfg).into_iter().map(|s| s.2).collect();
    let decay: Vec<bool> = kinds.iter().map(|k| *k == ParamKind::Matrix).collect();
    let zeros = Weights::zeros(&m.cfg);
    let host = HostOptimizer { id: 0, step: 0, m: &zeros, v: &zeros, decay: &decay, hp, grad_clip: 1e30 };
    gm.optimizer_step(&host)?;
    let w_dev = gm.download_weights()?;
    let mut w_cpu = m.weights.clone();
    let (mut adamw_err, mut scale) = (0.0f64, 1e-30f64);
    for (((p, g), &dc), d) in w_cpu.tensors_mut().into_iter().zip(g_dev.tensors()).zip(&decay).zip(w_dev.tensors()) {
        let (mut mm, mut vv) = (vec![0.0; p.data.len()], vec![0.0; p.data.len()]);
        adamw_step(&mut p.data, &g.data, &mut mm, &mut vv, 1, hp, dc);
        adamw_err = adamw_err.max(max_abs(&p.data, &d.data));
        scale = p.data.iter().fold(scale, |s, &x| s.max(x.abs() as f64));
    }

    Ok(StepComparison {
        device,
        tokens: n,
        logprob_err: max_abs(&masked(&lp_dev.logprob), &masked(&lp_cpu.logprob)),
        entropy_err: max_abs(&lp_dev.entropy, &lp_cpu.entropy),
        loss_cpu: out_cpu.loss,
        loss_device: out_dev.loss,
        grad_errs,
        max_grad_err,
        adamw_err: adamw_err / scale,
    })
}
