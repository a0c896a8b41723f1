//! The GPU training step's memory plan: for a model config, a micro-batch
//! (sequence length × sequences), the number of GPUs the optimizer state is
//! sharded over and whether each layer is recomputed in the backward, the
//! bytes of every buffer the GPU backend allocates once, a total, and
//! whether it fits a GPU.
//!
//! Owns: the list of tensors a layer saves (with and without recomputation),
//! the backward's scratch, and the arithmetic. Why here: it needs only the
//! model's shape, so it sits in the model layer beside `ModelConfig`. The
//! GPU model backend (`qwen2_gpu`) allocates exactly these buffers, once,
//! for a token capacity, and reports its bytes under these component names
//! (a test holds the two equal); `appliance plan` prints them. Does not own
//! any allocation.
//!
//! Conventions (the GPU backend's, stated once so the numbers can be
//! checked): fp32 master weights with a bf16 copy of every matrix (the GEMM
//! operands), AdamW m and v in fp32, weight gradients fp32. The residual
//! stream, norms, RoPE, SwiGLU and activation gradients are fp32, with a
//! bf16 copy of each tensor that feeds a GEMM (cuBLAS wants A and B in one
//! type); attention's q/k/v/output are bf16 at the kernels' head dim, its
//! log-sum-exp fp32. Token-wise work after attention (o_proj's residual,
//! the MLP) runs in chunks of `chunk_tokens`, so only attention's tensors
//! span the whole micro-batch when layers are recomputed. The loss is the
//! fused log-prob/entropy kernel: it never writes `[tokens, vocab]`.

use super::config::ModelConfig;
use super::weights::{param_specs, ParamKind};
use crate::backend::cpu::attention::AttnShape;
use crate::backend::gpu::flash_attn_bwd::flash_attn_bwd_workspace_bytes;
use crate::backend::gpu::global_norm_blocks;
use crate::backend::gpu::logprob;
use anyhow::{bail, Context, Result};
use serde::Serialize;

const BF16: u64 = 2;
const F32: u64 = 4;
const U32: u64 = 4;
const GIB: f64 = (1u64 << 30) as f64;

/// CUDA context, cuBLAS workspace and allocator slack: an estimate, not an
/// allocation of the backend, kept so that "fits" is not optimistic.
pub const RUNTIME_RESERVE_BYTES: u64 = 1 << 30;

/// The published Qwen2.5 shapes (config.json as Hugging Face ships them;
/// the 7B and 72B with the YaRN factor 4 their model cards give for 128k)
/// and the embedded tiny model.
pub const PRESETS: &[&str] = &["qwen2.5-0.5b", "qwen2.5-7b", "qwen2.5-72b", "tiny"];

const QWEN25_05B: &str = r#"{"model_type":"qwen2","vocab_size":151936,"hidden_size":896,"intermediate_size":4864,
  "num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,"max_position_embeddings":32768,
  "rms_norm_eps":1e-6,"rope_theta":1000000.0,"tie_word_embeddings":true}"#;
const QWEN25_7B: &str = r#"{"model_type":"qwen2","vocab_size":152064,"hidden_size":3584,"intermediate_size":18944,
  "num_hidden_layers":28,"num_attention_heads":28,"num_key_value_heads":4,"max_position_embeddings":131072,
  "rms_norm_eps":1e-6,"rope_theta":1000000.0,"tie_word_embeddings":false,
  "rope_scaling":{"type":"yarn","factor":4.0,"original_max_position_embeddings":32768}}"#;
const QWEN25_72B: &str = r#"{"model_type":"qwen2","vocab_size":152064,"hidden_size":8192,"intermediate_size":29568,
  "num_hidden_layers":80,"num_attention_heads":64,"num_key_value_heads":8,"max_position_embeddings":131072,
  "rms_norm_eps":1e-5,"rope_theta":1000000.0,"tie_word_embeddings":false,
  "rope_scaling":{"type":"yarn","factor":4.0,"original_max_position_embeddings":32768}}"#;

/// The config of a preset (one of `PRESETS`).
pub fn preset(name: &str) -> Result<ModelConfig> {
    let text = match name {
        "qwen2.5-0.5b" => QWEN25_05B,
        "qwen2.5-7b" => QWEN25_7B,
        "qwen2.5-72b" => QWEN25_72B,
        "tiny" => return Ok(super::tiny::tiny_config()),
        other => bail!("unknown model preset {other:?}; expected one of {}", PRESETS.join(", ")),
    };
    ModelConfig::from_json_str(text, &format!("<preset {name}>"))
}

/// What the plan is for.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanRequest {
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Sequences per micro-batch (packed: tokens = seq_len × batch).
    pub batch: usize,
    /// GPUs the optimizer state is sharded over (1 = not sharded).
    pub gpus: usize,
    /// 1: master weights, m and v are sharded (ZeRO-1); 2: the fp32
    /// gradients too (ZeRO-2), each layer's staged whole until its
    /// reduce-scatter. No effect with one GPU.
    pub zero_stage: u8,
    /// Activation recomputation per layer.
    pub recompute: bool,
    /// Tokens per chunk of the token-wise work (MLP); 0 = the whole batch.
    pub chunk_tokens: usize,
    /// Tokens of generation-engine KV cache to reserve beside training (0: none).
    pub kv_cache_tokens: usize,
    pub gpu_memory_bytes: u64,
}

impl PlanRequest {
    /// One sequence of `seq_len` tokens on one 80 GiB GPU, recomputation
    /// on, chunks of 8192 tokens, ZeRO-2 when sharded, no KV cache.
    pub fn new(seq_len: usize) -> Self {
        PlanRequest {
            seq_len,
            batch: 1,
            gpus: 1,
            zero_stage: 2,
            recompute: true,
            chunk_tokens: 8192,
            kv_cache_tokens: 0,
            gpu_memory_bytes: 80 << 30,
        }
    }

    pub fn tokens(&self) -> u64 {
        self.seq_len as u64 * self.batch as u64
    }

    /// Tokens of one chunk of the post-attention work (o_proj's residual
    /// and the MLP): `chunk_tokens`, or the whole micro-batch for 0.
    pub fn chunk(&self) -> u64 {
        if self.chunk_tokens == 0 { self.tokens() } else { (self.chunk_tokens as u64).min(self.tokens()) }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.seq_len == 0 {
            bail!("the sequence length must be at least 1 token");
        }
        if self.batch == 0 {
            bail!("the batch must hold at least 1 sequence");
        }
        if self.chunk_tokens % 8 != 0 {
            bail!("the MLP chunk ({} tokens) must be a multiple of 8 (0: the whole micro-batch), so chunks start 16-byte aligned", self.chunk_tokens);
        }
        if self.gpus == 0 {
            bail!("the optimizer state needs at least 1 GPU to live on");
        }
        if !(1..=2).contains(&self.zero_stage) {
            bail!("ZeRO stage {} is not planned: 1 shards master weights and AdamW state, 2 also gradients", self.zero_stage);
        }
        if self.gpu_memory_bytes == 0 {
            bail!("the GPU memory must be positive");
        }
        Ok(())
    }
}

/// A tensor held for every token (of a layer, or of the batch).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenTensor {
    pub name: &'static str,
    /// Bytes per element (2: bf16, 4: f32 or u32).
    pub elem_bytes: u64,
    /// Elements per token.
    pub per_token: u64,
}

impl TokenTensor {
    fn new(name: &'static str, elem_bytes: u64, per_token: usize) -> Self {
        TokenTensor { name, elem_bytes, per_token: per_token as u64 }
    }
}

/// Bytes per token of a list of tensors.
pub fn bytes_per_token(list: &[TokenTensor]) -> u64 {
    list.iter().map(|t| t.elem_bytes * t.per_token).sum()
}

/// The head dim the GPU attention kernels run a model at: 64 for head dims
/// up to 64 (smaller heads are zero-padded, which is exact), 128 for 128.
/// Other head dims are refused: no kernel is built for them.
pub fn attention_head_dim(cfg: &ModelConfig) -> Result<usize> {
    match cfg.head_dim {
        d if d % 2 == 1 => bail!("head_dim {d} is odd; RoPE needs pairs"),
        d if d <= 64 => Ok(64),
        128 => Ok(128),
        d => bail!("the GPU attention kernels run head dims up to 64 (padded) and 128; this model has {d}"),
    }
}

/// What a layer keeps for its backward when it is recomputed: its input,
/// the fp32 residual stream.
pub fn saved_with_recompute(cfg: &ModelConfig) -> Vec<TokenTensor> {
    vec![TokenTensor::new("x (layer input)", F32, cfg.hidden_size)]
}

/// A layer's tensors that span the whole micro-batch (attention needs
/// every key): the first norm, q/k/v (fp32 for RoPE, then bf16 at the
/// kernels' head dim `hdp`), attention's output and log-sum-exp.
pub fn attention_side(cfg: &ModelConfig, hdp: usize) -> Vec<TokenTensor> {
    let (h, heads, kvh) = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads);
    let mut v = vec![
        TokenTensor::new("rstd (input norm)", F32, 1),
        TokenTensor::new("xn1 (normed input)", F32, h),
        TokenTensor::new("xn1 (bf16 copy for the GEMMs)", BF16, h),
    ];
    if cfg.qk_norm {
        v.push(TokenTensor::new("q before q-norm", F32, cfg.q_dim()));
        v.push(TokenTensor::new("k before k-norm", F32, cfg.kv_dim()));
        v.push(TokenTensor::new("rstd (q-norm)", F32, heads));
        v.push(TokenTensor::new("rstd (k-norm)", F32, kvh));
    }
    v.extend([
        TokenTensor::new("q, k, v (RoPE in place)", F32, cfg.q_dim() + 2 * cfg.kv_dim()),
        TokenTensor::new("q, k, v (bf16, kernel head dim)", BF16, (heads + 2 * kvh) * hdp),
        TokenTensor::new("attention output", BF16, heads * hdp),
        TokenTensor::new("attention lse", F32, heads),
    ]);
    if hdp != cfg.head_dim {
        v.push(TokenTensor::new("attention output (unpadded)", BF16, cfg.q_dim()));
    }
    v
}

/// A layer's token-wise tensors after attention, per chunk of tokens: the
/// residual, the second norm and the SwiGLU MLP's gate, up and activation.
pub fn mlp_side(cfg: &ModelConfig) -> Vec<TokenTensor> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    vec![
        TokenTensor::new("x_mid (residual after attention)", F32, h),
        TokenTensor::new("rstd (post-attention norm)", F32, 1),
        TokenTensor::new("xn2 (normed)", F32, h),
        TokenTensor::new("xn2 (bf16 copy)", BF16, h),
        TokenTensor::new("gate, up, act = silu(gate)·up", F32, 3 * i),
        TokenTensor::new("act (bf16 copy)", BF16, i),
    ]
}

/// Everything a layer saves without recomputation.
pub fn saved_without_recompute(cfg: &ModelConfig, hdp: usize) -> Vec<TokenTensor> {
    let mut v = saved_with_recompute(cfg);
    v.extend(attention_side(cfg, hdp));
    v.extend(mlp_side(cfg));
    v
}

/// The backward's activation gradients that span the whole micro-batch.
pub fn grad_attention_side(cfg: &ModelConfig, hdp: usize) -> Vec<TokenTensor> {
    let (h, q, kv) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim());
    let mut v = vec![
        TokenTensor::new("d residual", F32, h),
        TokenTensor::new("d normed input", F32, h),
        TokenTensor::new("d residual (bf16 copy for dW)", BF16, h),
        TokenTensor::new("dq, dk, dv", F32, q + 2 * kv),
        TokenTensor::new("dq, dk, dv (bf16 copies for dW)", BF16, q + 2 * kv),
        TokenTensor::new("dO (attention output grad)", BF16, cfg.num_heads * hdp),
    ];
    if hdp != cfg.head_dim {
        v.push(TokenTensor::new("dq, dk, dv (kernel head dim)", F32, (cfg.num_heads + 2 * cfg.num_kv_heads) * hdp));
    }
    v
}

/// The backward's MLP gradients, per chunk of tokens (d act is computed
/// into d gate's buffer).
pub fn grad_mlp_side(cfg: &ModelConfig) -> Vec<TokenTensor> {
    let i = cfg.intermediate_size;
    vec![TokenTensor::new("d gate, d up", F32, 2 * i), TokenTensor::new("d gate, d up (bf16 copies for dW)", BF16, 2 * i)]
}

/// After the last layer: its output, the final norm's output (fp32 and
/// the bf16 copy the LM head reads) and rstd.
pub fn final_side(cfg: &ModelConfig) -> Vec<TokenTensor> {
    let h = cfg.hidden_size;
    vec![
        TokenTensor::new("last layer's output", F32, h),
        TokenTensor::new("final norm output", F32, h),
        TokenTensor::new("final norm output (bf16 copy)", BF16, h),
        TokenTensor::new("rstd (final norm)", F32, 1),
    ]
}

/// Per-token buffers of the fused log-prob/entropy loss: target id, the
/// vocabulary log-sum-exp (saved for its backward), log-prob, entropy and
/// the two gradient coefficients the loss hands back (d log-prob, d
/// entropy). Its one workspace is counted beside them.
pub fn fused_loss_buffers() -> Vec<TokenTensor> {
    vec![
        TokenTensor::new("target id", U32, 1),
        TokenTensor::new("vocabulary lse", F32, 1),
        TokenTensor::new("log-prob", F32, 1),
        TokenTensor::new("entropy", F32, 1),
        TokenTensor::new("d log-prob, d entropy", F32, 2),
    ]
}

/// The fused loss's workspace: one buffer shared by its forward (the
/// split-vocabulary records) and its chunked backward (one block of f32
/// logits and bf16 g, at most `logprob::CHUNK_BUDGET_BYTES`), never live
/// together, sized for every batch up to `tokens` (the forward splits the
/// vocabulary more finely for fewer rows).
pub fn fused_loss_workspace_bytes(tokens: usize, vocab: usize) -> u64 {
    logprob::fwd_workspace_bytes_upto(tokens, vocab).max(logprob::bwd_chunked_workspace_bytes_upto(tokens, vocab)) as u64
}

/// Per-token batch inputs on the device: token ids, the rows' order by id
/// (the embedding backward's groups), positions, and the ones vector the
/// bias GEMMs use.
pub fn batch_inputs() -> Vec<TokenTensor> {
    vec![
        TokenTensor::new("token id", U32, 1),
        TokenTensor::new("row order by token id (embedding backward)", U32, 1),
        TokenTensor::new("position", U32, 1),
        TokenTensor::new("ones (bias GEMMs)", F32, 1),
    ]
}

/// The global gradient norm's scratch in f32 elements: (one Σg² per
/// parameter tensor, the block partials of the largest tensor).
pub fn grad_norm_scratch_elements(cfg: &ModelConfig) -> (usize, usize) {
    let specs = param_specs(cfg);
    let blocks = specs.iter().map(|(_, shape, _)| global_norm_blocks(shape.iter().product()) as usize).max().unwrap_or(1);
    (specs.len(), blocks)
}

/// The global gradient norm's scratch bytes (see [`grad_norm_scratch_elements`]).
pub fn grad_norm_scratch_bytes(cfg: &ModelConfig) -> u64 {
    let (tensors, blocks) = grad_norm_scratch_elements(cfg);
    (tensors + blocks) as u64 * F32
}

/// One line of the plan.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Component {
    pub name: String,
    pub bytes: u64,
    /// How the bytes are counted.
    pub what: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryPlan {
    pub model: String,
    pub params: u64,
    pub tokens: u64,
    pub request: PlanRequest,
    pub components: Vec<Component>,
    pub total_bytes: u64,
    pub fits: bool,
    /// What materialized f32 logits and their gradient would take
    /// (tokens × vocab × 4 bytes, twice): never allocated.
    pub materialized_logits_bytes: u64,
    /// What the fused loss allocates instead.
    pub fused_loss_bytes: u64,
    /// `materialized_logits_bytes` less the fused loss's workspace: the
    /// fused loss needs the same per-token buffers as a materialized loss
    /// would, and not the logits.
    pub fused_loss_saving_bytes: u64,
}

impl MemoryPlan {
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }
    pub fn bytes(&self, name: &str) -> u64 {
        self.component(name).map_or(0, |c| c.bytes)
    }
}

/// Names of the plan's lines (stable: JSON consumers and tests use them).
pub mod names {
    pub const WEIGHTS: &str = "bf16 weights";
    pub const MASTER: &str = "fp32 master weights";
    pub const ADAM_M: &str = "AdamW m (fp32)";
    pub const ADAM_V: &str = "AdamW v (fp32)";
    pub const GRADS: &str = "fp32 gradients";
    pub const NORM_SCRATCH: &str = "gradient-norm scratch";
    pub const SAVED: &str = "saved activations";
    pub const FINAL: &str = "final hidden state";
    pub const RECOMPUTE: &str = "recomputed layer";
    pub const GRAD_SCRATCH: &str = "backward scratch";
    pub const FLASH: &str = "flash-attention workspace";
    pub const LOSS: &str = "fused loss buffers";
    pub const INPUTS: &str = "batch inputs + RoPE";
    pub const KV_CACHE: &str = "generation KV cache";
    pub const RESERVE: &str = "runtime reserve";
}

/// The plan of one training step of `cfg` (called `model` in reports),
/// scoring its whole vocabulary.
pub fn plan(cfg: &ModelConfig, model: &str, req: &PlanRequest) -> Result<MemoryPlan> {
    plan_scored(cfg, cfg.vocab_size, model, req)
}

/// [`plan`] for a model that scores the first `scored_vocab` rows of its
/// LM head (`Model::out_vocab`): what the GPU model backend allocates.
pub fn plan_scored(cfg: &ModelConfig, scored_vocab: usize, model: &str, req: &PlanRequest) -> Result<MemoryPlan> {
    req.validate().with_context(|| format!("memory plan for {model}"))?;
    let hdp = attention_head_dim(cfg).with_context(|| format!("memory plan for {model}"))?;
    let (h, v, layers) = (cfg.hidden_size as u64, scored_vocab as u64, cfg.num_layers as u64);
    let p = cfg.num_params() as u64;
    let matrices: u64 = param_specs(cfg).iter().filter(|s| s.2 == ParamKind::Matrix).map(|s| s.1.iter().product::<usize>() as u64).sum();
    let tokens = req.tokens();
    let chunk = req.chunk();
    let n = req.gpus as u64;
    let shard = p.div_ceil(n);
    let sharded = n > 1;
    let mut c = vec![];
    let mut add = |name: &str, bytes: u64, what: String| c.push(Component { name: name.into(), bytes, what });

    add(names::WEIGHTS, matrices * BF16, format!("the {matrices} parameters of the matrices × 2 B, the GEMM operands (every GPU holds all of them)"));
    let shard_note = if sharded { format!("⌈{p} / {n}⌉ parameters") } else { format!("{p} parameters") };
    add(names::MASTER, shard * F32, format!("{shard_note} × 4 B"));
    add(names::ADAM_M, shard * F32, format!("{shard_note} × 4 B"));
    add(names::ADAM_V, shard * F32, format!("{shard_note} × 4 B"));
    if sharded && req.zero_stage >= 2 {
        // The largest gradient produced at once: one layer's, or the
        // embedding / LM head's.
        let embed = cfg.vocab_size as u64 * h;
        let layer = (p - h - if cfg.tie_word_embeddings { embed } else { 2 * embed }) / layers;
        let staged = layer.max(embed);
        add(names::GRADS, (shard + staged) * F32, format!("{shard_note} + {staged} staged before each reduce-scatter, × 4 B"));
    } else {
        add(names::GRADS, p * F32, format!("{p} parameters × 4 B"));
    }
    add(names::NORM_SCRATCH, grad_norm_scratch_bytes(cfg), "one f32 Σg² per parameter tensor + the largest one's block partials".into());

    let saved = if req.recompute { saved_with_recompute(cfg) } else { saved_without_recompute(cfg, hdp) };
    let per_layer = bytes_per_token(&saved);
    add(
        names::SAVED,
        layers * tokens * per_layer,
        format!(
            "{layers} layers × {tokens} tokens × {per_layer} B ({})",
            if req.recompute { "recompute: the layer input" } else { "every tensor of every layer" }
        ),
    );
    let fin = bytes_per_token(&final_side(cfg));
    add(names::FINAL, tokens * fin, format!("{tokens} tokens × {fin} B (last layer's output, final norm's output in fp32 and bf16, rstd)"));
    let (att, mlp) = (bytes_per_token(&attention_side(cfg, hdp)), bytes_per_token(&mlp_side(cfg)));
    if req.recompute {
        add(
            names::RECOMPUTE,
            tokens * att + chunk * mlp,
            format!("one layer's forward again: {tokens} tokens × {att} B (attention side) + {chunk} tokens × {mlp} B (MLP chunk)"),
        );
    } else {
        add(names::RECOMPUTE, 0, "none: every layer's tensors are saved".into());
    }
    let (gatt, gmlp) = (bytes_per_token(&grad_attention_side(cfg, hdp)), bytes_per_token(&grad_mlp_side(cfg)));
    add(
        names::GRAD_SCRATCH,
        tokens * gatt + chunk * gmlp,
        format!("one layer's activation gradients: {tokens} tokens × {gatt} B + {chunk} tokens × {gmlp} B (MLP chunk)"),
    );
    let shape = AttnShape { heads: cfg.num_heads, kv_heads: cfg.num_kv_heads, head_dim: hdp };
    add(
        names::FLASH,
        flash_attn_bwd_workspace_bytes(tokens as usize, shape) as u64,
        format!("D = rowsum(dO∘O): {tokens} tokens × {} heads × 4 B", cfg.num_heads),
    );
    let loss_per_token = bytes_per_token(&fused_loss_buffers());
    let loss_ws = fused_loss_workspace_bytes(tokens as usize, scored_vocab);
    let fused_loss_bytes = tokens * loss_per_token + loss_ws;
    add(names::LOSS, fused_loss_bytes, format!("{tokens} tokens × {loss_per_token} B + a {loss_ws} B workspace (never [tokens, vocab])"));
    let per_input = bytes_per_token(&batch_inputs());
    let rope = req.seq_len as u64 * (cfg.head_dim as u64 / 2) * 2 * F32;
    add(
        names::INPUTS,
        tokens * per_input + 2 * (tokens + 1) * U32 + rope,
        format!(
            "ids, their order by id, positions, ones ({per_input} B per token), cu_seqlens and the id groups' starts (room for one per token), cos/sin [{}, {}] f32",
            req.seq_len,
            cfg.head_dim / 2
        ),
    );
    if req.kv_cache_tokens > 0 {
        let kv = req.kv_cache_tokens as u64;
        add(names::KV_CACHE, kv * layers * 2 * cfg.kv_dim() as u64 * BF16, format!("{kv} tokens × {layers} layers × K and V × {} × 2 B", cfg.kv_dim()));
    }
    add(names::RESERVE, RUNTIME_RESERVE_BYTES, "CUDA context, cuBLAS workspace, allocator slack (an estimate)".into());

    let total_bytes = c.iter().map(|x| x.bytes).sum();
    let materialized_logits_bytes = tokens * v * F32 * 2;
    Ok(MemoryPlan {
        model: model.into(),
        params: p,
        tokens,
        request: req.clone(),
        components: c,
        total_bytes,
        fits: total_bytes <= req.gpu_memory_bytes,
        materialized_logits_bytes,
        fused_loss_bytes,
        fused_loss_saving_bytes: materialized_logits_bytes.saturating_sub(loss_ws),
    })
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB
}

/// Digits in groups of three, for the table.
fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The plan as a text table: component, bytes, GiB; the total; whether it
/// fits; the fused loss's saving.
pub fn render_table(plan: &MemoryPlan) -> String {
    let r = &plan.request;
    let mut s = format!(
        "memory plan: {} ({:.2}B parameters), {} tokens per micro-batch ({} × {}), recompute {}, optimizer state over {} GPU{}{}\n\n",
        plan.model,
        plan.params as f64 / 1e9,
        plan.tokens,
        r.batch,
        r.seq_len,
        if r.recompute { "on" } else { "off" },
        r.gpus,
        if r.gpus == 1 { "" } else { "s" },
        if r.gpus > 1 { format!(" (ZeRO-{})", r.zero_stage) } else { String::new() },
    );
    s += &format!("{:<28} {:>22} {:>10}\n", "component", "bytes", "GiB");
    for c in &plan.components {
        s += &format!("{:<28} {:>22} {:>10.2}\n", c.name, grouped(c.bytes), gib(c.bytes));
    }
    s += &format!("{:<28} {:>22} {:>10.2}\n", "total", grouped(plan.total_bytes), gib(plan.total_bytes));
    let cap = gib(r.gpu_memory_bytes);
    if plan.fits {
        s += &format!("fits in {cap:.0} GiB: yes ({:.2} GiB free)\n", gib(r.gpu_memory_bytes - plan.total_bytes));
    } else {
        s += &format!("fits in {cap:.0} GiB: no ({:.2} GiB over)\n", gib(plan.total_bytes - r.gpu_memory_bytes));
    }
    s += &format!(
        "fused log-prob/entropy loss: {:.2} MiB of per-token buffers and workspace; materialized f32 logits and their gradient would add {:.2} GiB ({} tokens × {} vocab × 4 B × 2): saving {:.2} GiB\n",
        plan.fused_loss_bytes as f64 / (1u64 << 20) as f64,
        gib(plan.materialized_logits_bytes),
        plan.tokens,
        plan.materialized_logits_bytes / plan.tokens.max(1) / 8,
        gib(plan.fused_loss_saving_bytes),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// vocab 10, hidden 4, intermediate 8, 2 layers, 2 heads (head_dim 2),
    /// 1 kv head, tied, QKV bias.
    fn toy() -> ModelConfig {
        ModelConfig::from_json_str(
            r#"{"model_type":"qwen2","vocab_size":10,"hidden_size":4,"intermediate_size":8,"num_hidden_layers":2,
               "num_attention_heads":2,"num_key_value_heads":1,"tie_word_embeddings":true}"#,
            "toy",
        )
        .unwrap()
    }

    #[test]
    fn a_hand_computed_tiny_plan() {
        let cfg = toy();
        // Per layer: q 4·4 + k,v 2·(4·2) + o 4·4 + bias 4+2+2 + MLP 3·4·8 + norms 2·4 = 160;
        // embedding 40, final norm 4: 364, of which matrices 40 + 2·144 = 328.
        assert_eq!(cfg.num_params(), 364);
        // Head dim 2 runs padded to 64.
        assert_eq!(attention_head_dim(&cfg).unwrap(), 64);
        assert_eq!(global_norm_blocks(40), 1);
        let mut req = PlanRequest::new(8);
        req.batch = 2; // 16 tokens
        req.chunk_tokens = 8; // two chunks
        let p = plan(&cfg, "toy", &req).unwrap();
        assert_eq!(p.tokens, 16);
        let ws = fused_loss_workspace_bytes(16, 10);
        assert!(ws > 0);
        let want: &[(&str, u64)] = &[
            (names::WEIGHTS, 656),
            (names::MASTER, 1456),
            (names::ADAM_M, 1456),
            (names::ADAM_V, 1456),
            (names::GRADS, 1456),
            // 26 tensors' Σg² + 1 block partial
            (names::NORM_SCRATCH, 108),
            // 2 layers × 16 tokens × x (4 f32)
            (names::SAVED, 512),
            // 16 × (16 + 16 + 8 + 4)
            (names::FINAL, 704),
            // attention side: rstd 4, xn1 16 + 8, q/k/v f32 32, bf16 at head
            // dim 64 (2+1+1)·64·2 = 512, output 256, lse 8, unpadded output
            // 8 = 844, × 16 tokens; MLP side: x_mid 16, rstd 4, xn2 16 + 8,
            // gate/up/act 96, act bf16 16 = 156, × 8 tokens (the chunk)
            (names::RECOMPUTE, 16 * 844 + 8 * 156),
            // 16 + 16 + 8 + dqkv 32 + 16 + dO 256 + padded dqkv 4·64·4 = 1368, × 16;
            // MLP 2·8·4 + 2·8·2 = 96, × 8
            (names::GRAD_SCRATCH, 16 * 1368 + 8 * 96),
            // 16 tokens × 2 heads × 4
            (names::FLASH, 128),
            // 16 × 24 + the workspace
            (names::LOSS, 384 + ws),
            // 16 × 16 + cu_seqlens and id starts 2 × 17 × 4 + cos/sin 8 × 1 × 2 × 4
            (names::INPUTS, 456),
            (names::RESERVE, 1 << 30),
        ];
        let got: Vec<(&str, u64)> = p.components.iter().map(|c| (c.name.as_str(), c.bytes)).collect();
        assert_eq!(got, want);
        assert_eq!(p.total_bytes, want.iter().map(|w| w.1).sum::<u64>());
        assert_eq!(p.materialized_logits_bytes, 16 * 10 * 8);
        assert_eq!(p.fused_loss_saving_bytes, 16 * 10 * 8 - ws);
        assert!(p.fits);
        // Without recomputation: every tensor, 16 + 844 + 156 B per token per layer.
        req.recompute = false;
        let q = plan(&cfg, "toy", &req).unwrap();
        assert_eq!(q.bytes(names::SAVED), 2 * 16 * 1016);
        assert_eq!(q.bytes(names::RECOMPUTE), 0);
        // A KV cache of 5 tokens: 5 × 2 layers × 2 × 2 × 2 B.
        req.kv_cache_tokens = 5;
        assert_eq!(plan(&cfg, "toy", &req).unwrap().bytes(names::KV_CACHE), 80);
        // The whole micro-batch as one chunk.
        req.chunk_tokens = 0;
        req.recompute = true;
        assert_eq!(plan(&cfg, "toy", &req).unwrap().bytes(names::RECOMPUTE), 16 * (844 + 156));
    }

    #[test]
    fn recomputation_saves_memory_at_long_context() {
        let cfg = preset("qwen2.5-7b").unwrap();
        let mut req = PlanRequest::new(131072);
        let on = plan(&cfg, "7b", &req).unwrap();
        req.recompute = false;
        let off = plan(&cfg, "7b", &req).unwrap();
        assert!(on.bytes(names::SAVED) * 10 < off.bytes(names::SAVED));
        assert!(on.total_bytes < off.total_bytes);
        // The per-layer saving is what a layer keeps beyond its input and lse.
        let per = bytes_per_token(&saved_without_recompute(&cfg, 128)) - bytes_per_token(&saved_with_recompute(&cfg));
        assert_eq!(off.bytes(names::SAVED) - on.bytes(names::SAVED), 28 * 131072 * per);
    }

    #[test]
    fn the_fused_loss_saves_tokens_times_vocab_times_8_bytes() {
        let cfg = preset("qwen2.5-7b").unwrap();
        for (seq, batch) in [(131072usize, 1usize), (4096, 3)] {
            let mut req = PlanRequest::new(seq);
            req.batch = batch;
            let p = plan(&cfg, "7b", &req).unwrap();
            let t = (seq * batch) as u64;
            let ws = fused_loss_workspace_bytes(seq * batch, 152064);
            assert_eq!(p.materialized_logits_bytes, t * 152064 * 8);
            assert_eq!(p.fused_loss_saving_bytes, t * 152064 * 8 - ws);
            assert_eq!(p.bytes(names::LOSS), t * 24 + ws);
            assert!(p.fused_loss_bytes * 50 < p.fused_loss_saving_bytes);
        }
        // 131072 × 152064 × 8 B is 148.5 GiB; the workspace (the backward's
        // 256 MiB block at most) takes back a quarter GiB.
        let p = plan(&cfg, "7b", &PlanRequest::new(131072)).unwrap();
        assert!((gib(p.materialized_logits_bytes) - 148.5).abs() < 0.01);
        assert!(gib(p.fused_loss_saving_bytes) > 148.0);
    }

    #[test]
    fn sharding_divides_the_optimizer_state() {
        let cfg = preset("qwen2.5-7b").unwrap();
        let one = plan(&cfg, "7b", &PlanRequest::new(8192)).unwrap();
        let mut req = PlanRequest::new(8192);
        req.gpus = 8;
        let eight = plan(&cfg, "7b", &req).unwrap();
        let p = cfg.num_params() as u64;
        for name in [names::MASTER, names::ADAM_M, names::ADAM_V] {
            assert_eq!(one.bytes(name), p * 4);
            assert_eq!(eight.bytes(name), p.div_ceil(8) * 4);
        }
        assert_eq!(eight.bytes(names::WEIGHTS), one.bytes(names::WEIGHTS));
        // ZeRO-2: the gradient shard plus the largest group (the 7B's
        // 152064 × 3584 embedding) staged.
        assert_eq!(eight.bytes(names::GRADS), (p.div_ceil(8) + 152064 * 3584) * 4);
        req.zero_stage = 1;
        assert_eq!(plan(&cfg, "7b", &req).unwrap().bytes(names::GRADS), p * 4);
        // Activations do not depend on sharding.
        assert_eq!(eight.bytes(names::SAVED), one.bytes(names::SAVED));
    }

    #[test]
    fn presets_have_the_published_parameter_counts() {
        for (name, published) in [("qwen2.5-0.5b", 0.49e9), ("qwen2.5-7b", 7.62e9), ("qwen2.5-72b", 72.7e9)] {
            let n = preset(name).unwrap().num_params() as f64;
            assert!((n / published - 1.0).abs() < 0.01, "{name}: {n} parameters, published {published}");
        }
        let c = preset("qwen2.5-7b").unwrap();
        assert_eq!((c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads, c.num_kv_heads, c.vocab_size), (3584, 18944, 28, 28, 4, 152064));
        assert!(!c.tie_word_embeddings && preset("qwen2.5-0.5b").unwrap().tie_word_embeddings);
        let err = preset("llama").unwrap_err().to_string();
        assert!(err.contains("llama") && err.contains("qwen2.5-7b"), "{err}");
    }

    #[test]
    fn fits_is_decided_against_the_gpu_memory() {
        let tiny = plan(&preset("tiny").unwrap(), "tiny", &PlanRequest::new(1024)).unwrap();
        assert!(tiny.fits);
        // 7B on one GPU: weights + master + m + v + grads alone are 16 B per parameter.
        let seven = plan(&preset("qwen2.5-7b").unwrap(), "7b", &PlanRequest::new(131072)).unwrap();
        assert!(!seven.fits && seven.total_bytes > 16 * 7_600_000_000);
        let mut req = PlanRequest::new(131072);
        req.gpu_memory_bytes = seven.total_bytes;
        assert!(plan(&preset("qwen2.5-7b").unwrap(), "7b", &req).unwrap().fits);
        req.gpu_memory_bytes -= 1;
        assert!(!plan(&preset("qwen2.5-7b").unwrap(), "7b", &req).unwrap().fits);
    }

    #[test]
    fn bad_requests_are_clear_errors() {
        let cfg = toy();
        for (edit, needle) in [
            (Box::new(|r: &mut PlanRequest| r.gpus = 0) as Box<dyn Fn(&mut PlanRequest)>, "1 GPU"),
            (Box::new(|r: &mut PlanRequest| r.seq_len = 0), "sequence length"),
            (Box::new(|r: &mut PlanRequest| r.batch = 0), "batch"),
            (Box::new(|r: &mut PlanRequest| r.zero_stage = 3), "ZeRO stage 3"),
            (Box::new(|r: &mut PlanRequest| r.chunk_tokens = 12), "multiple of 8"),
        ] {
            let mut r = PlanRequest::new(16);
            edit(&mut r);
            let err = format!("{:#}", plan(&cfg, "toy", &r).unwrap_err());
            assert!(err.contains(needle) && err.contains("toy"), "{err}");
        }
    }

    #[test]
    fn head_dims_without_a_kernel_are_refused() {
        let mut cfg = toy();
        cfg.head_dim = 96;
        let err = format!("{:#}", plan(&cfg, "toy", &PlanRequest::new(16)).unwrap_err());
        assert!(err.contains("96") && err.contains("toy"), "{err}");
        cfg.head_dim = 3;
        assert!(attention_head_dim(&cfg).unwrap_err().to_string().contains("odd"));
        cfg.head_dim = 128;
        assert_eq!(attention_head_dim(&cfg).unwrap(), 128);
    }

    #[test]
    fn the_table_names_every_component_and_the_saving() {
        let p = plan(&preset("qwen2.5-7b").unwrap(), "qwen2.5-7b", &PlanRequest::new(131072)).unwrap();
        let t = render_table(&p);
        for c in &p.components {
            assert!(t.contains(&c.name), "{t}");
        }
        assert!(t.contains("total") && t.contains("fits in 80 GiB: no") && t.contains("would add 148.50 GiB"), "{t}");
        assert!(t.contains(&format!("saving {:.2} GiB", gib(p.fused_loss_saving_bytes))), "{t}");
        assert_eq!(grouped(1234567), "1,234,567");
        assert_eq!(grouped(12), "12");
    }
}
