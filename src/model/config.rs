//! The model's shape, read from a Hugging Face `config.json`.
//!
//! Owns: parsing both layouts found in the wild (the classic top-level
//! `rope_theta` + `rope_scaling` that published Qwen2.5 checkpoints ship, and
//! the `rope_parameters` object newer transformers releases write), the
//! Qwen2 / Qwen2.5 / dense Qwen3 differences (QKV bias, q/k norm, explicit
//! head_dim), and the RoPE frequency table including YaRN.
//! Does not own: weights (see `weights`), or the appliance's own TOML config.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::path::Path;

/// The positional-encoding variant, with everything needed to build its table.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// YaRN (Peng et al. 2023), as transformers and vLLM implement it.
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        /// Multiplies cos and sin (so q·k gains its square).
        attention_factor: f64,
        truncate: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Copy)]
pub enum Family {
    /// Qwen2 / Qwen2.5: bias on q, k, v; no q/k norm.
    Qwen2,
    /// Dense Qwen3: no QKV bias; RMSNorm over head_dim on q and k before RoPE.
    Qwen3,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub qkv_bias: bool,
    pub qk_norm: bool,
    pub eos_token_ids: Vec<u32>,
    /// The original JSON, kept so that a save writes back what was read.
    pub raw: Value,
}

impl ModelConfig {
    /// Read `config.json` from a model directory (or the file itself).
    pub fn from_path(path: &Path) -> Result<Self> {
        let file = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read model config {}", file.display()))?;
        Self::from_json_str(&text, &file.display().to_string())
    }

    /// Parse a config.json text; `origin` names it in errors.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self> {
        let raw: Value = serde_json::from_str(text).map_err(|e| {
            anyhow!("{origin}:{}:{}: not valid JSON: {e}", e.line(), e.column())
        })?;
        Self::from_value(raw, origin)
    }

    pub fn from_value(raw: Value, origin: &str) -> Result<Self> {
        let obj = raw
            .as_object()
            .ok_or_else(|| anyhow!("{origin}: expected a JSON object at the top level"))?;
        let req_usize = |key: &str| -> Result<usize> {
            match obj.get(key) {
                None | Some(Value::Null) => bail!("{origin}: missing required key `{key}` (expected a positive integer)"),
                Some(v) => v
                    .as_u64()
                    .filter(|&n| n > 0)
                    .map(|n| n as usize)
                    .ok_or_else(|| anyhow!("{origin}: key `{key}`: expected a positive integer, found {v}")),
            }
        };
        let opt_f64 = |key: &str| -> Result<Option<f64>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| anyhow!("{origin}: key `{key}`: expected a number, found {v}")),
            }
        };
        let opt_bool = |key: &str| -> Result<Option<bool>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_bool()
                    .map(Some)
                    .ok_or_else(|| anyhow!("{origin}: key `{key}`: expected true or false, found {v}")),
            }
        };

        let model_type = obj.get("model_type").and_then(Value::as_str).unwrap_or("qwen2");
        let family = match model_type {
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            other => bail!(
                "{origin}: key `model_type`: expected \"qwen2\" or \"qwen3\" (dense), found \"{other}\""
            ),
        };

        let hidden_size = req_usize("hidden_size")?;
        let num_heads = req_usize("num_attention_heads")?;
        let num_kv_heads = match obj.get("num_key_value_heads") {
            None | Some(Value::Null) => num_heads,
            Some(_) => req_usize("num_key_value_heads")?,
        };
        if num_heads % num_kv_heads != 0 {
            bail!("{origin}: key `num_key_value_heads`: {num_kv_heads} does not divide num_attention_heads {num_heads}");
        }
        let head_dim = match obj.get("head_dim") {
            None | Some(Value::Null) => {
                if hidden_size % num_heads != 0 {
                    bail!("{origin}: key `hidden_size`: {hidden_size} is not a multiple of num_attention_heads {num_heads} and no head_dim is given");
                }
                hidden_size / num_heads
            }
            Some(_) => req_usize("head_dim")?,
        };
        if head_dim % 2 != 0 {
            bail!("{origin}: key `head_dim`: RoPE needs an even head dimension, found {head_dim}");
        }
        let max_position_embeddings = match obj.get("max_position_embeddings") {
            None | Some(Value::Null) => 32768,
            Some(_) => req_usize("max_position_embeddings")?,
        };

        // RoPE: `rope_parameters` (new layout) wins over the classic keys.
        let (rope_theta, rope_obj) = match obj.get("rope_parameters") {
            Some(Value::Object(p)) => {
                let theta = match p.get("rope_theta") {
                    Some(v) => v.as_f64().ok_or_else(|| {
                        anyhow!("{origin}: key `rope_parameters.rope_theta`: expected a number, found {v}")
                    })?,
                    None => opt_f64("rope_theta")?.unwrap_or(10000.0),
                };
                (theta, Some((p.clone(), "rope_parameters")))
            }
            Some(Value::Null) | None => {
                let theta = opt_f64("rope_theta")?.unwrap_or(10000.0);
                match obj.get("rope_scaling") {
                    Some(Value::Object(s)) => (theta, Some((s.clone(), "rope_scaling"))),
                    Some(Value::Null) | None => (theta, None),
                    Some(v) => bail!("{origin}: key `rope_scaling`: expected an object or null, found {v}"),
                }
            }
            Some(v) => bail!("{origin}: key `rope_parameters`: expected an object, found {v}"),
        };
        let rope_scaling = match rope_obj {
            None => RopeScaling::None,
            Some((p, section)) => parse_rope(&p, section, origin, max_position_embeddings)?,
        };

        let qkv_bias = opt_bool("attention_bias")?.unwrap_or(family == Family::Qwen2);
        let eos_token_ids = match obj.get("eos_token_id") {
            Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|v| v as u32).collect(),
            _ => vec![],
        };
        let cfg = ModelConfig {
            family,
            vocab_size: req_usize("vocab_size")?,
            hidden_size,
            intermediate_size: req_usize("intermediate_size")?,
            num_layers: req_usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: opt_bool("tie_word_embeddings")?.unwrap_or(false),
            qkv_bias,
            qk_norm: family == Family::Qwen3,
            eos_token_ids,
            raw,
        };
        Ok(cfg)
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Parameters in the model (counting a tied LM head once).
    pub fn num_params(&self) -> usize {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let attn = h * self.q_dim() + 2 * h * self.kv_dim() + self.q_dim() * h
            + if self.qkv_bias { self.q_dim() + 2 * self.kv_dim() } else { 0 }
            + if self.qk_norm { 2 * self.head_dim } else { 0 };
        let layer = attn + 3 * h * i + 2 * h;
        v * h + self.num_layers * layer + h + if self.tie_word_embeddings { 0 } else { v * h }
    }

    /// The inverse frequencies (head_dim/2 of them) and the factor that
    /// multiplies cos and sin.
    pub fn rope_inv_freq(&self) -> (Vec<f64>, f64) {
        let dim = self.head_dim;
        let base = self.rope_theta;
        let pos_freq: Vec<f64> = (0..dim / 2).map(|i| base.powf((2 * i) as f64 / dim as f64)).collect();
        match &self.rope_scaling {
            RopeScaling::None => (pos_freq.iter().map(|p| 1.0 / p).collect(), 1.0),
            RopeScaling::Linear { factor } => (pos_freq.iter().map(|p| 1.0 / (p * factor)).collect(), 1.0),
            RopeScaling::Yarn { factor, original_max_position_embeddings, beta_fast, beta_slow, attention_factor, truncate } => {
                let orig = *original_max_position_embeddings as f64;
                let correction_dim = |rotations: f64| {
                    dim as f64 * (orig / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
                };
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let high = high.min(dim as f64 - 1.0);
                let high = if low == high { high + 0.001 } else { high };
                let inv: Vec<f64> = pos_freq
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolation = 1.0 - ramp;
                        let inter = 1.0 / (factor * p);
                        let extra = 1.0 / p;
                        inter * (1.0 - extrapolation) + extra * extrapolation
                    })
                    .collect();
                (inv, *attention_factor)
            }
        }
    }
}

fn parse_rope(p: &serde_json::Map<String, Value>, section: &str, origin: &str, max_pos: usize) -> Result<RopeScaling> {
    let kind = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |key: &str| -> Result<Option<f64>> {
        match p.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| anyhow!("{origin}: key `{section}.{key}`: expected a number, found {v}")),
        }
    };
    let factor = || -> Result<f64> {
        let f = num("factor")?.ok_or_else(|| anyhow!("{origin}: key `{section}.factor`: missing (expected a number >= 1)"))?;
        if f.is_nan() || f < 1.0 {
            bail!("{origin}: key `{section}.factor`: expected a number >= 1, found {f}");
        }
        Ok(f)
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear { factor: factor()? }),
        "yarn" => {
            let factor = factor()?;
            let original = match num("original_max_position_embeddings")? {
                Some(v) => v as usize,
                None => max_pos,
            };
            let mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
            let attention_factor = match num("attention_factor")? {
                Some(a) => a,
                None => match (num("mscale")?, num("mscale_all_dim")?) {
                    (Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => mscale(factor, m) / mscale(factor, ma),
                    _ => mscale(factor, 1.0),
                },
            };
            let truncate = p.get("truncate").and_then(Value::as_bool).unwrap_or(true);
            Ok(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original,
                beta_fast: num("beta_fast")?.unwrap_or(32.0),
                beta_slow: num("beta_slow")?.unwrap_or(1.0),
                attention_factor,
                truncate,
            })
        }
        other => bail!(
            "{origin}: key `{section}.rope_type`: expected \"default\", \"linear\" or \"yarn\", found \"{other}\""
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLASSIC: &str = r#"{"model_type":"qwen2","vocab_size":512,"hidden_size":64,"intermediate_size":176,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":1,"rms_norm_eps":1e-6,
        "max_position_embeddings":256,"tie_word_embeddings":true,"rope_theta":10000.0,
        "rope_scaling":{"type":"yarn","factor":4.0,"original_max_position_embeddings":64}}"#;
    const NEW: &str = r#"{"model_type":"qwen2","vocab_size":512,"hidden_size":64,"intermediate_size":176,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":1,"rms_norm_eps":1e-6,
        "max_position_embeddings":256,"tie_word_embeddings":true,
        "rope_parameters":{"rope_type":"yarn","rope_theta":10000.0,"factor":4.0,"original_max_position_embeddings":64}}"#;

    #[test]
    fn both_rope_layouts_parse_to_the_same_config() {
        let a = ModelConfig::from_json_str(CLASSIC, "classic.json").unwrap();
        let b = ModelConfig::from_json_str(NEW, "new.json").unwrap();
        assert_eq!(a.rope_scaling, b.rope_scaling);
        assert_eq!(a.rope_theta, b.rope_theta);
        assert!(matches!(a.rope_scaling, RopeScaling::Yarn { .. }));
        assert_eq!(a.head_dim, 16);
        assert!(a.qkv_bias && !a.qk_norm);
        let (inv_a, af) = a.rope_inv_freq();
        assert_eq!(inv_a, b.rope_inv_freq().0);
        // mscale for factor 4: 0.1 ln 4 + 1
        assert!((af - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
        // The first frequency is extrapolated (unchanged), the last interpolated.
        assert_eq!(inv_a[0], 1.0);
        let plain = 1.0 / 10000f64.powf(14.0 / 16.0);
        assert!((inv_a[7] - plain / 4.0).abs() < 1e-15);
    }

    #[test]
    fn missing_key_is_named() {
        let text = CLASSIC.replace("\"hidden_size\":64,", "");
        let err = ModelConfig::from_json_str(&text, "m/config.json").unwrap_err().to_string();
        assert!(err.contains("m/config.json") && err.contains("hidden_size"), "{err}");
    }

    #[test]
    fn wrong_types_and_values_are_named() {
        let text = CLASSIC.replace("\"vocab_size\":512", "\"vocab_size\":\"big\"");
        let err = ModelConfig::from_json_str(&text, "c.json").unwrap_err().to_string();
        assert!(err.contains("vocab_size") && err.contains("positive integer"), "{err}");
        let text = CLASSIC.replace("\"num_key_value_heads\":1", "\"num_key_value_heads\":3");
        let err = ModelConfig::from_json_str(&text, "c.json").unwrap_err().to_string();
        assert!(err.contains("num_key_value_heads"), "{err}");
        let text = CLASSIC.replace("\"yarn\"", "\"dynamic\"");
        let err = ModelConfig::from_json_str(&text, "c.json").unwrap_err().to_string();
        assert!(err.contains("rope_scaling.rope_type") && err.contains("dynamic"), "{err}");
        let err = ModelConfig::from_json_str("{\"a\":", "c.json").unwrap_err().to_string();
        assert!(err.contains("c.json:1:"), "{err}");
    }

    #[test]
    fn qwen3_has_qk_norm_and_no_bias() {
        let text = r#"{"model_type":"qwen3","vocab_size":100,"hidden_size":32,"intermediate_size":64,
            "num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":16,
            "attention_bias":false,"rope_theta":1000000}"#;
        let c = ModelConfig::from_json_str(text, "q3.json").unwrap();
        assert!(c.qk_norm && !c.qkv_bias);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.q_dim(), 64);
    }
}
