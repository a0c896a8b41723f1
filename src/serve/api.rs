//! The OpenAI-compatible wire types, shared by this project's server
//! (`serve::server`) and its client (`agent::endpoint`).
//!
//! Owns: the JSON shapes of `/v1/models`, `/v1/completions`,
//! `/v1/chat/completions` and of error bodies; the vLLM extensions we speak
//! (`top_k`, `min_p`, `stop_token_ids`, `skip_special_tokens`,
//! `return_tokens_as_token_ids` and its `"token_id:N"` strings); and this
//! project's own response extensions (`token_ids`, `engine_finish_reason`,
//! `policy_version`), which let a client be exact. Does not own validation
//! of values (the server does that, with its own messages) or HTTP.
//!
//! Requests reject unknown fields, so a misspelt parameter is an error
//! rather than silently ignored. Responses accept unknown fields, so the
//! client also reads servers (vLLM) that send more than we know. Optional
//! request fields are left out when unset, so what the client sends is only
//! what it asked for.

use crate::model::chat::Role;
use serde::{Deserialize, Deserializer, Serialize};

/// The prefix of vLLM's `return_tokens_as_token_ids` token strings.
pub const TOKEN_ID_PREFIX: &str = "token_id:";

/// `"token_id:123"` for id 123.
pub fn token_id_string(id: u32) -> String {
    format!("{TOKEN_ID_PREFIX}{id}")
}

/// The id in a `"token_id:N"` string; `None` for anything else (a token's
/// text, a negative or oversized number, trailing characters).
pub fn parse_token_id_string(s: &str) -> Option<u32> {
    let digits = s.strip_prefix(TOKEN_ID_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

// ---------------------------------------------------------------------------
// Errors

/// `{"error": {"message", "type", "code"}}`, the OpenAI error body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    /// The error class, e.g. `invalid_request_error`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// A machine-readable code; this server sends a string such as
    /// `context_length_exceeded`, others send numbers or null.
    #[serde(default)]
    pub code: Option<serde_json::Value>,
}

// ---------------------------------------------------------------------------
// Models

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// The model's context in tokens (a vLLM field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<usize>,
}

// ---------------------------------------------------------------------------
// Requests

/// A completion prompt: text (encoded by the server, special-token strings
/// included) or the exact token ids. Batches of prompts are not accepted.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    TokenIds(Vec<u32>),
}

impl<'de> Deserialize<'de> for Prompt {
    // By hand, so that each wrong shape gets its own message rather than
    // serde's "did not match any variant".
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_json::Value::deserialize(d)?;
        match v {
            serde_json::Value::String(s) => Ok(Prompt::Text(s)),
            serde_json::Value::Array(items) => {
                if items.iter().any(|x| x.is_string() || x.is_array()) {
                    return Err(D::Error::custom("a batch of prompts is not supported: send one request per prompt (a string or one array of token ids)"));
                }
                let mut ids = Vec::with_capacity(items.len());
                for (i, x) in items.iter().enumerate() {
                    match x.as_u64().and_then(|n| u32::try_from(n).ok()) {
                        Some(id) => ids.push(id),
                        None => return Err(D::Error::custom(format!("token id at position {i} is {x}, not an integer in 0..2^32"))),
                    }
                }
                Ok(Prompt::TokenIds(ids))
            }
            other => Err(D::Error::custom(format!("prompt must be a string or an array of token ids, got {}", json_kind(&other)))),
        }
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A seed: any JSON integer. Negative seeds (which OpenAI clients may send)
/// are taken as their two's-complement `u64`.
fn de_seed<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct SeedVisitor;
    impl<'de> serde::de::Visitor<'de> for SeedVisitor {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an integer seed or null")
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(self)
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v as u64))
        }
    }
    d.deserialize_option(SeedVisitor)
}

/// `POST /v1/completions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub prompt: Prompt,
    /// Default 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// Default 1.0; 0 is greedy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// -1 or 0: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "de_seed")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// The number of top alternatives per token; 0 asks for the sampled
    /// tokens' log-probs alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Stop strings (a string or an array of strings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_token_ids: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_tokens_as_token_ids: Option<bool>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_special_tokens: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl CompletionRequest {
    /// A request with only a prompt; every parameter at its default.
    pub fn new(prompt: Prompt) -> Self {
        CompletionRequest {
            model: None,
            prompt,
            max_tokens: None,
            temperature: None,
            top_p: None,
            top_k: None,
            min_p: None,
            seed: None,
            n: None,
            logprobs: None,
            echo: None,
            stream: None,
            stop: None,
            stop_token_ids: None,
            return_tokens_as_token_ids: None,
            skip_special_tokens: None,
            presence_penalty: None,
            frequency_penalty: None,
            user: None,
        }
    }
}

/// One chat message on the wire: text content only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    /// Default: what is left of the context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// The newer name of `max_tokens`; give one or the other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "de_seed")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// Per-token log-probs of the sampled tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_token_ids: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_special_tokens: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl ChatRequest {
    /// A request with only messages; every parameter at its default.
    pub fn new(messages: Vec<ChatMessage>) -> Self {
        ChatRequest {
            model: None,
            messages,
            max_tokens: None,
            max_completion_tokens: None,
            temperature: None,
            top_p: None,
            top_k: None,
            min_p: None,
            seed: None,
            n: None,
            logprobs: None,
            top_logprobs: None,
            stream: None,
            stop: None,
            stop_token_ids: None,
            skip_special_tokens: None,
            presence_penalty: None,
            frequency_penalty: None,
            user: None,
        }
    }
}

// ---------------------------------------------------------------------------
// Responses

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// The answer to `/v1/completions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    pub id: String,
    /// `"text_completion"`.
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Extension: the version of the weights that sampled the choices (the
    /// oldest, if a weight update fell between them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    #[serde(default)]
    pub logprobs: Option<CompletionLogprobs>,
    /// `"stop"` or `"length"`.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Extension: every sampled id, the stop token included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
    /// Extension: the engine's own reason, which tells the context limit
    /// (`"context"`) apart from `max_tokens` (both `"length"` above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_finish_reason: Option<String>,
}

/// Legacy completions log-probs: one entry per sampled token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletionLogprobs {
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Exact f32 values; null only from servers that echo the prompt.
    #[serde(default)]
    pub token_logprobs: Vec<Option<f32>>,
    /// Top alternatives per token; this server does not compute them (null).
    #[serde(default)]
    pub top_logprobs: Option<serde_json::Value>,
    /// Character offset of each token in `text`.
    #[serde(default)]
    pub text_offset: Vec<usize>,
}

/// The answer to `/v1/chat/completions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    pub id: String,
    /// `"chat.completion"`.
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatReplyMessage,
    #[serde(default)]
    pub logprobs: Option<ChatLogprobs>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_finish_reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatReplyMessage {
    pub role: String,
    /// Null from servers when the reply is a tool call; this server always
    /// sends text.
    #[serde(default)]
    pub content: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatLogprobs {
    #[serde(default)]
    pub content: Option<Vec<ChatTokenLogprob>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    #[serde(default)]
    pub bytes: Option<Vec<u8>>,
    #[serde(default)]
    pub top_logprobs: Vec<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_id_strings_round_trip_and_reject_everything_else() {
        assert_eq!(parse_token_id_string(&token_id_string(0)), Some(0));
        assert_eq!(parse_token_id_string(&token_id_string(151_644)), Some(151_644));
        assert_eq!(parse_token_id_string("token_id:4294967295"), Some(u32::MAX));
        for bad in ["token_id:", "token_id:-1", "token_id:+5", "token_id:4294967296", "token_id:12a", "token_id: 1", "hello", "Token_id:1", ""] {
            assert_eq!(parse_token_id_string(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn prompts_parse_as_text_or_ids_and_name_the_bad_shapes() {
        let r: CompletionRequest = serde_json::from_str(r#"{"prompt": "hi"}"#).unwrap();
        assert_eq!(r.prompt, Prompt::Text("hi".into()));
        let r: CompletionRequest = serde_json::from_str(r#"{"prompt": [1, 2, 3]}"#).unwrap();
        assert_eq!(r.prompt, Prompt::TokenIds(vec![1, 2, 3]));
        let err = |s: &str| serde_json::from_str::<CompletionRequest>(s).unwrap_err().to_string();
        assert!(err(r#"{"prompt": ["a", "b"]}"#).contains("batch"));
        assert!(err(r#"{"prompt": [[1], [2]]}"#).contains("batch"));
        assert!(err(r#"{"prompt": [1, -2]}"#).contains("position 1"));
        assert!(err(r#"{"prompt": [1.5]}"#).contains("position 0"));
        assert!(err(r#"{"prompt": 5}"#).contains("a number"));
        assert!(err(r#"{"prompt": "x", "temprature": 1}"#).contains("temprature"));
    }

    #[test]
    fn seeds_accept_any_integer_and_null() {
        let seed = |s: &str| serde_json::from_str::<CompletionRequest>(&format!(r#"{{"prompt": "x", "seed": {s}}}"#)).map(|r| r.seed);
        assert_eq!(seed("null").unwrap(), None);
        assert_eq!(seed("18446744073709551615").unwrap(), Some(u64::MAX));
        assert_eq!(seed("-1").unwrap(), Some(u64::MAX));
        assert!(seed("1.5").is_err());
        assert!(seed("\"7\"").is_err());
    }

    #[test]
    fn unset_request_fields_are_not_sent() {
        let v = serde_json::to_value(CompletionRequest::new(Prompt::TokenIds(vec![4]))).unwrap();
        assert_eq!(v, serde_json::json!({"prompt": [4]}));
        let v = serde_json::to_value(ChatRequest::new(vec![ChatMessage { role: Role::User, content: "hi".into() }])).unwrap();
        assert_eq!(v, serde_json::json!({"messages": [{"role": "user", "content": "hi"}]}));
    }

    #[test]
    fn f32_log_probs_survive_json_bit_for_bit() {
        // The client must read back exactly the f32 the engine produced.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let v = -((x as f64 / u32::MAX as f64) * 40.0) as f32;
            let text = serde_json::to_string(&v).unwrap();
            let back: f32 = serde_json::from_str(&text).unwrap();
            assert_eq!(back.to_bits(), v.to_bits(), "{v} -> {text}");
        }
        for v in [0.0f32, -0.0, -1e-30, -f32::MIN_POSITIVE, -103.27893] {
            let back: f32 = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
            assert_eq!(back.to_bits(), v.to_bits(), "{v}");
        }
    }
}
