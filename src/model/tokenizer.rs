//! Text <-> token ids for Qwen2.5-family models.
//!
//! This module owns:
//! - [`Tokenizer`], a thin wrapper around the `tokenizers` crate that loads a
//!   Hugging Face `tokenizer.json`, encodes without adding BOS/EOS, decodes
//!   without dropping special tokens (so decode(encode(s)) == s), and looks up
//!   the ChatML special tokens (`<|im_start|>`, `<|im_end|>`, `<|endoftext|>`);
//! - the check that a tokenizer's ids fit a model's embedding table;
//! - the embedded tiny byte-level BPE tokenizer used by the project's tiny
//!   default model ([`TINY_TOKENIZER_JSON`], [`Tokenizer::tiny`]) and the
//!   deterministic generator that produced it ([`build_tiny_tokenizer_json`]).
//!
//! It does not own chat formatting (see `model::chat`), sampling, or anything
//! about model weights; it never re-tokenizes sampled text.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

/// `<|endoftext|>`: Qwen's document separator / pad token.
pub const ENDOFTEXT: &str = "<|endoftext|>";
/// `<|im_start|>`: opens a ChatML message.
pub const IM_START: &str = "<|im_start|>";
/// `<|im_end|>`: closes a ChatML message; the end-of-turn token.
pub const IM_END: &str = "<|im_end|>";

/// The Qwen2 / Qwen2.5 pre-tokenizer split regex (same string as in the
/// released `tokenizer.json`).
pub const QWEN_PRETOKENIZER_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer of the project's tiny default model (vocab_size 512):
/// 256 byte tokens, BPE merges learned from `configs/tiny/corpus.txt`, then
/// `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`.
/// Regenerate with `cargo run --example make_tiny_tokenizer`.
pub const TINY_TOKENIZER_JSON: &str = include_str!("../../configs/tiny/tokenizer.json");

/// Name used in messages for the embedded tiny tokenizer.
pub const TINY_TOKENIZER_ORIGIN: &str = "configs/tiny/tokenizer.json (embedded)";

/// Number of ids the BPE trainer may use for the tiny tokenizer (bytes + merges).
/// The three special tokens come right after, so the tiny vocab is 509.
pub const TINY_BPE_VOCAB: usize = 506;

/// A loaded tokenizer plus where it came from (for error messages).
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer with special-token strings treated as plain text.
    plain: std::sync::Arc<tokenizers::Tokenizer>,
    origin: String,
    /// Highest id (model vocab or added token) + 1; 0 for an empty vocab.
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("origin", &self.origin)
            .field("vocab_size", &self.vocab_size)
            .finish()
    }
}

fn tk_err(e: tokenizers::Error) -> anyhow::Error {
    anyhow!("{e}")
}

impl Tokenizer {
    /// Load a Hugging Face `tokenizer.json` from disk.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read tokenizer file {}", path.display()))?;
        Self::from_json_bytes(&bytes, &path.display().to_string())
    }

    /// Parse a `tokenizer.json` held in memory; `origin` names it in errors.
    pub fn from_json_bytes(bytes: &[u8], origin: &str) -> Result<Self> {
        // Check the outer shape ourselves first: the tokenizers crate's own
        // messages do not say which file was wrong, and a JSON syntax error is
        // the most common failure (truncated download).
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .with_context(|| format!("tokenizer {origin} is not valid JSON"))?;
        let obj = value
            .as_object()
            .ok_or_else(|| anyhow!("tokenizer {origin}: top level is not a JSON object"))?;
        match obj.get("model") {
            Some(m) if m.is_object() => {}
            Some(_) => bail!("tokenizer {origin}: \"model\" is not a JSON object"),
            None => bail!("tokenizer {origin} has no \"model\" section (is it a tokenizer.json?)"),
        }
        drop(value);

        // The tokenizers crate reports bad input through Result, but guard
        // against a panic deep inside it as well: a bad file must never take
        // the trainer down.
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes))
            .map_err(|_| anyhow!("tokenizer {origin}: the tokenizers crate panicked while parsing it"))?;
        let inner = parsed
            .map_err(tk_err)
            .with_context(|| format!("tokenizer {origin} could not be loaded"))?;
        Ok(Self::from_inner(inner, origin))
    }

    /// Wrap an already-built `tokenizers::Tokenizer`.
    pub fn from_inner(inner: tokenizers::Tokenizer, origin: &str) -> Self {
        let model_max = inner.get_vocab(false).into_values().max();
        let added_max = inner.get_added_tokens_decoder().into_keys().max();
        let vocab_size = match model_max.max(added_max) {
            Some(m) => m as usize + 1,
            None => 0,
        };
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        Tokenizer { inner, plain: std::sync::Arc::new(plain), origin: origin.to_string(), vocab_size }
    }

    /// The embedded tokenizer of the tiny default model.
    pub fn tiny() -> Result<Self> {
        Self::from_json_bytes(TINY_TOKENIZER_JSON.as_bytes(), TINY_TOKENIZER_ORIGIN)
    }

    /// Where this tokenizer was loaded from (a path or a description).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The wrapped `tokenizers` object, for callers that need more.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The tokenizer as `tokenizer.json` text (for saving a model directory).
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| anyhow::anyhow!("cannot serialize tokenizer {}: {e}", self.origin))
    }

    /// Encode text to ids without adding any BOS/EOS (add_special_tokens =
    /// false). Like Hugging Face, special-token strings that appear literally
    /// in `text` (e.g. "<|im_end|>") are recognized and become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(tk_err)
            .with_context(|| format!("tokenizer {} failed to encode {} bytes of text", self.origin, text.len()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encode text in which special-token strings are ordinary text: an
    /// issue or a command output that contains "<|im_end|>" must not end a
    /// ChatML message. Used for everything the environment says.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .plain
            .encode(text, false)
            .map_err(tk_err)
            .with_context(|| format!("tokenizer {} failed to encode {} bytes of text", self.origin, text.len()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decode ids to text, keeping special tokens (skip_special_tokens =
    /// false) so that `decode(encode(s)) == s` for NFC-normalized `s`.
    /// Errors on an id the tokenizer does not know (the underlying crate would
    /// silently drop it). Bytes that do not form valid UTF-8 (e.g. a prefix
    /// cut inside a multi-byte character) decode to U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some((pos, &bad)) = ids
            .iter()
            .enumerate()
            .find(|(_, &id)| self.inner.id_to_token(id).is_none())
        {
            bail!(
                "tokenizer {} cannot decode id {bad} at position {pos}: it is not in the vocabulary (size {})",
                self.origin,
                self.vocab_size
            );
        }
        self.inner
            .decode(ids, false)
            .map_err(tk_err)
            .with_context(|| format!("tokenizer {} failed to decode {} ids", self.origin, ids.len()))
    }

    /// The id of a token string (model vocab or added/special token).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The string of one id, if known.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    fn required(&self, token: &str) -> Result<u32> {
        self.token_id(token).ok_or_else(|| {
            anyhow!(
                "tokenizer {} has no {token} token; a Qwen2.5-style ChatML tokenizer is required",
                self.origin
            )
        })
    }

    /// Id of `<|im_start|>`.
    pub fn im_start(&self) -> Result<u32> {
        self.required(IM_START)
    }

    /// Id of `<|im_end|>`.
    pub fn im_end(&self) -> Result<u32> {
        self.required(IM_END)
    }

    /// Id of `<|endoftext|>`.
    pub fn endoftext(&self) -> Result<u32> {
        self.required(ENDOFTEXT)
    }

    /// Number of ids this tokenizer can produce: the highest id (model vocab
    /// or added token) + 1. For Qwen2.5 this is 151665 (151643 BPE tokens +
    /// 22 added), less than the model's padded embedding table (151936).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Error unless every id of this tokenizer is < `model_vocab`, the
    /// model's embedding rows; `model_origin` names the model in the message.
    pub fn check_fits_model(&self, model_vocab: usize, model_origin: &str) -> Result<()> {
        if self.vocab_size > model_vocab {
            bail!(
                "tokenizer {} has ids up to {} but model {} has vocab_size {}",
                self.origin,
                self.vocab_size - 1,
                model_origin,
                model_vocab
            );
        }
        Ok(())
    }

    /// Ids on which generation stops: `<|im_end|>` then `<|endoftext|>`,
    /// each only where the tokenizer has it.
    pub fn stop_ids(&self) -> Vec<u32> {
        [IM_END, ENDOFTEXT].iter().filter_map(|t| self.token_id(t)).collect()
    }
}

/// The untrained pipeline of the tiny tokenizer: NFC, the Qwen split regex,
/// byte-level mapping, an empty BPE model and the byte-level decoder — the
/// same shape as Qwen2.5's tokenizer.json.
fn tiny_skeleton() -> serde_json::Value {
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": { "type": "NFC" },
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": { "Regex": QWEN_PRETOKENIZER_REGEX },
                    "behavior": "Isolated",
                    "invert": false
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": false,
                    "trim_offsets": false,
                    "use_regex": false
                }
            ]
        },
        "post_processor": null,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": false,
            "trim_offsets": false,
            "use_regex": false
        },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": {},
            "merges": []
        }
    })
}

/// Build the tiny tokenizer from `corpus` and return its pretty JSON (with a
/// trailing newline), exactly as committed at `configs/tiny/tokenizer.json`.
///
/// Deterministic: the BPE trainer sorts the byte alphabet by code point and
/// breaks count ties by the lower pair of ids, and the JSON writer emits the
/// vocab ordered by id, so the same corpus always gives the same bytes.
/// The corpus is trained as a single sequence so that newline/indent runs are
/// seen exactly as the pre-tokenizer will see them in real text.
pub fn build_tiny_tokenizer_json(corpus: &str) -> Result<String> {
    use tokenizers::models::bpe::BpeTrainer;
    use tokenizers::models::TrainerWrapper;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::AddedToken;

    let skeleton = serde_json::to_vec(&tiny_skeleton()).context("serializing the tiny skeleton")?;
    let mut tok = tokenizers::Tokenizer::from_bytes(&skeleton)
        .map_err(tk_err)
        .context("building the untrained tiny tokenizer")?;

    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(TINY_BPE_VOCAB)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    tok.train(&mut trainer, std::iter::once(corpus))
        .map_err(tk_err)
        .context("training the tiny BPE")?;

    // Special tokens go right after the byte tokens and merges.
    let specials: Vec<AddedToken> =
        [ENDOFTEXT, IM_START, IM_END].iter().map(|t| AddedToken::from(*t, true)).collect();
    tok.add_special_tokens(&specials);

    let mut json = tok.to_string(true).map_err(tk_err).context("serializing the tiny tokenizer")?;
    json.push('\n');
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_json_names_origin() {
        let err = Tokenizer::from_json_bytes(b"{\"model\": {", "bad.json").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("bad.json") && msg.contains("not valid JSON"), "{msg}");
    }

    #[test]
    fn missing_model_names_origin() {
        let err = Tokenizer::from_json_bytes(b"{\"version\": \"1.0\"}", "nomodel.json").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("nomodel.json") && msg.contains("\"model\""), "{msg}");
    }

    #[test]
    fn non_object_top_level() {
        let err = Tokenizer::from_json_bytes(b"[1,2,3]", "list.json").unwrap_err();
        assert!(format!("{err:#}").contains("list.json"));
    }

    #[test]
    fn bad_model_contents_is_an_error_not_a_panic() {
        let mut v = tiny_skeleton();
        v["model"]["merges"] = serde_json::json!(["a b"]);
        let bytes = serde_json::to_vec(&v).unwrap();
        let err = Tokenizer::from_json_bytes(&bytes, "badmerge.json").unwrap_err();
        assert!(format!("{err:#}").contains("badmerge.json"));
    }

    #[test]
    fn empty_vocab_has_size_zero_and_no_specials() {
        let bytes = serde_json::to_vec(&tiny_skeleton()).unwrap();
        let t = Tokenizer::from_json_bytes(&bytes, "empty").unwrap();
        assert_eq!(t.vocab_size(), 0);
        assert!(t.stop_ids().is_empty());
        let msg = format!("{:#}", t.im_start().unwrap_err());
        assert!(msg.contains("<|im_start|>") && msg.contains("empty"), "{msg}");
        assert!(t.check_fits_model(0, "m").is_ok());
    }

    #[test]
    fn tiny_layout() {
        let t = Tokenizer::tiny().unwrap();
        assert_eq!(t.vocab_size(), TINY_BPE_VOCAB + 3);
        assert_eq!(t.endoftext().unwrap() as usize, TINY_BPE_VOCAB);
        assert_eq!(t.im_start().unwrap() as usize, TINY_BPE_VOCAB + 1);
        assert_eq!(t.im_end().unwrap() as usize, TINY_BPE_VOCAB + 2);
        assert_eq!(t.stop_ids(), vec![t.im_end().unwrap(), t.endoftext().unwrap()]);
    }

    #[test]
    fn decode_rejects_unknown_id() {
        let t = Tokenizer::tiny().unwrap();
        let msg = format!("{:#}", t.decode(&[1, 100_000]).unwrap_err());
        assert!(msg.contains("100000") && msg.contains("position 1"), "{msg}");
    }
}
