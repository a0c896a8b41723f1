//! The endpoint policy: replies sampled by an OpenAI-compatible server
//! (`appliance serve`, vLLM, or anything that speaks the same routes).
//!
//! Owns: turning a turn into a request, the HTTP exchange with its timeout
//! and its bounded retry of a busy server (503/429 only), and turning the
//! answer back into a [`Reply`]. Does not own the wire types (see
//! `serve::api`), the episode loop or re-tokenization of text replies (the
//! scaffold does that).
//!
//! Two modes:
//! - Completions: the prompt is the exact ids of the ledger, and the reply's
//!   ids come back exactly, from this project's `token_ids` extension or
//!   else from vLLM's `return_tokens_as_token_ids` strings, with their
//!   log-probs. Against `appliance serve` this gives the same ids, the same
//!   bit-for-bit log-probs and the same finish as the in-process
//!   [`super::policy::LocalPolicy`] with the same weights and seed.
//! - Chat: the conversation goes as text messages and the reply comes back
//!   as text only (no ids, no log-probs): for any OpenAI-compatible server.

use super::policy::{Policy, Reply, TurnInput};
use crate::engine::{FinishReason, SamplingParams};
use crate::model::tokenizer::Tokenizer;
use crate::serve::api::{self, ChatMessage, ChatRequest, ChatResponse, CompletionRequest, CompletionResponse, ErrorBody, Prompt};
use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// Which route the policy samples through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointMode {
    /// `/completions` over the exact ledger ids: exact ids and log-probs.
    Completions,
    /// `/chat/completions` over the text messages: text only.
    Chat,
}

/// Where the server is and how to sample from it.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// The OpenAI base URL, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// The `model` field of each request.
    pub model: String,
    /// Sent as `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    pub mode: EndpointMode,
    /// Temperature and truncations; `max_new_tokens` and `seed` come from
    /// each turn.
    pub params: SamplingParams,
    /// The limit on one HTTP exchange, connecting included.
    pub request_timeout: Duration,
    /// How long, in all, to keep retrying while the server answers 503 or
    /// 429 (its queue is full); zero retries none.
    pub busy_retry_for: Duration,
}

impl EndpointConfig {
    /// A config with the default sampling (temperature 1, untruncated), a
    /// 300 s request timeout and 10 s of retrying a busy server.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>, mode: EndpointMode) -> Self {
        EndpointConfig {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            mode,
            params: SamplingParams::default(),
            request_timeout: Duration::from_secs(300),
            busy_retry_for: Duration::from_secs(10),
        }
    }
}

/// The first wait before retrying a busy server; it doubles up to
/// [`MAX_BUSY_BACKOFF`].
const FIRST_BUSY_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BUSY_BACKOFF: Duration = Duration::from_secs(1);
/// Connecting never waits longer than this (or the request timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A policy whose replies come from an OpenAI-compatible server.
pub struct EndpointPolicy {
    cfg: EndpointConfig,
    tokenizer: Tokenizer,
    client: reqwest::Client,
    url: Url,
}

impl EndpointPolicy {
    /// Check the config and build the HTTP client. `tokenizer` must be the
    /// served model's: it decodes the returned ids.
    pub fn new(cfg: EndpointConfig, tokenizer: Tokenizer) -> Result<Self> {
        cfg.params.validate().context("endpoint policy")?;
        if cfg.request_timeout.is_zero() {
            bail!("endpoint policy: the request timeout must be above zero");
        }
        let base = Url::parse(cfg.base_url.trim_end_matches('/')).with_context(|| format!("endpoint policy: {:?} is not a URL", cfg.base_url))?;
        if !matches!(base.scheme(), "http" | "https") {
            bail!("endpoint policy: {} must be an http:// or https:// URL", cfg.base_url);
        }
        let route = match cfg.mode {
            EndpointMode::Completions => "completions",
            EndpointMode::Chat => "chat/completions",
        };
        let url = Url::parse(&format!("{}/{route}", base.as_str().trim_end_matches('/'))).with_context(|| format!("endpoint policy: cannot build the {route} URL from {}", cfg.base_url))?;
        let client = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.request_timeout.min(CONNECT_TIMEOUT))
            .build()
            .context("endpoint policy: cannot build the HTTP client")?;
        Ok(EndpointPolicy { cfg, tokenizer, client, url })
    }

    /// The URL requests go to.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// POST `body` and parse the answer, retrying while the server is busy.
    async fn post<B: Serialize, R: DeserializeOwned>(&self, body: &B) -> Result<R> {
        let url = &self.url;
        let give_up_at = tokio::time::Instant::now() + self.cfg.busy_retry_for;
        let mut backoff = FIRST_BUSY_BACKOFF;
        loop {
            let mut req = self.client.post(url.clone()).json(body);
            if let Some(key) = &self.cfg.api_key {
                req = req.bearer_auth(key);
            }
            let resp = req.send().await.map_err(|e| describe_send_error(e, url, self.cfg.request_timeout))?;
            let status = resp.status();
            let bytes = resp.bytes().await.map_err(|e| describe_send_error(e, url, self.cfg.request_timeout)).with_context(|| format!("POST {url}: HTTP {status}: reading the answer"))?;
            if status.is_success() {
                return serde_json::from_slice(&bytes).map_err(|e| anyhow!("POST {url}: HTTP {status}: the answer is not the expected JSON ({e}); it starts {:?}", snippet(&bytes)));
            }
            let busy = status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS;
            if busy && tokio::time::Instant::now() + backoff <= give_up_at {
                tracing::debug!("POST {url}: HTTP {status}, retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BUSY_BACKOFF);
                continue;
            }
            let gave_up = if busy { format!(" (still busy after retrying for {:?})", self.cfg.busy_retry_for) } else { String::new() };
            bail!("POST {url}: HTTP {status}: {}{gave_up}", error_message(&bytes));
        }
    }

    async fn act_completions(&self, input: &TurnInput<'_>) -> Result<Reply> {
        let mut req = CompletionRequest::new(Prompt::TokenIds(input.ledger.ids.clone()));
        req.model = Some(self.cfg.model.clone());
        req.max_tokens = Some(input.max_new_tokens);
        req.seed = Some(input.seed);
        req.logprobs = Some(0);
        req.return_tokens_as_token_ids = Some(true);
        req.skip_special_tokens = Some(false);
        self.set_sampling(&mut req.temperature, &mut req.top_p, &mut req.top_k, &mut req.min_p);
        let resp: CompletionResponse = self.post(&req).await?;
        completion_reply(resp, &self.tokenizer, input.max_new_tokens).with_context(|| format!("POST {}", self.url))
    }

    async fn act_chat(&self, input: &TurnInput<'_>) -> Result<Reply> {
        let messages = input.messages.iter().map(|m| ChatMessage { role: m.role, content: m.content.clone() }).collect();
        let mut req = ChatRequest::new(messages);
        req.model = Some(self.cfg.model.clone());
        req.max_tokens = Some(input.max_new_tokens);
        req.seed = Some(input.seed);
        self.set_sampling(&mut req.temperature, &mut req.top_p, &mut req.top_k, &mut req.min_p);
        let resp: ChatResponse = self.post(&req).await?;
        chat_reply(resp).with_context(|| format!("POST {}", self.url))
    }

    /// The configured sampling; the truncations only when on, so a server
    /// that does not know vLLM's `top_k`/`min_p` is not sent them for nothing.
    fn set_sampling(&self, temperature: &mut Option<f32>, top_p: &mut Option<f32>, top_k: &mut Option<i64>, min_p: &mut Option<f32>) {
        let p = &self.cfg.params;
        *temperature = Some(p.temperature);
        *top_p = (p.top_p < 1.0).then_some(p.top_p);
        *top_k = (p.top_k > 0).then_some(p.top_k as i64);
        *min_p = (p.min_p > 0.0).then_some(p.min_p);
    }
}

#[async_trait]
impl Policy for EndpointPolicy {
    fn name(&self) -> String {
        let mode = match self.cfg.mode {
            EndpointMode::Completions => "completions",
            EndpointMode::Chat => "chat",
        };
        format!("endpoint:{}:{mode}", self.cfg.model)
    }

    async fn act(&self, input: TurnInput<'_>) -> Result<Reply> {
        match self.cfg.mode {
            EndpointMode::Completions => self.act_completions(&input).await,
            EndpointMode::Chat => self.act_chat(&input).await,
        }
    }
}

/// A reply from a completions answer: exact ids (the `token_ids`
/// extension, else vLLM's `"token_id:N"` strings), their log-probs, the
/// finish, and the text decoded from the ids.
pub fn completion_reply(resp: CompletionResponse, tokenizer: &Tokenizer, max_new_tokens: usize) -> Result<Reply> {
    let choice = resp.choices.into_iter().next().ok_or_else(|| anyhow!("the answer has no choices"))?;
    let logprobs = choice.logprobs;
    let ids: Vec<u32> = match (choice.token_ids, &logprobs) {
        (Some(ids), _) => ids,
        (None, Some(lp)) if !lp.tokens.is_empty() || lp.token_logprobs.is_empty() => lp
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| api::parse_token_id_string(t).ok_or_else(|| anyhow!("logprobs.tokens[{i}] is {t:?}, not a \"token_id:N\" string: the endpoint did not return token ids; use chat mode or a server that supports return_tokens_as_token_ids")))
            .collect::<Result<_>>()?,
        _ => bail!("the endpoint did not return token ids; use chat mode or a server that supports return_tokens_as_token_ids"),
    };
    let lp = logprobs.ok_or_else(|| anyhow!("the endpoint returned token ids but no log-probs (logprobs was requested)"))?;
    if lp.token_logprobs.len() != ids.len() {
        bail!("the endpoint returned {} token ids but {} log-probs", ids.len(), lp.token_logprobs.len());
    }
    let logprobs: Vec<f32> = lp.token_logprobs.iter().enumerate().map(|(i, x)| x.ok_or_else(|| anyhow!("the log-prob of sampled token {i} is null"))).collect::<Result<_>>()?;
    if ids.len() > max_new_tokens {
        bail!("the endpoint returned {} tokens, more than the {max_new_tokens} asked for", ids.len());
    }
    let finish = finish_of(choice.engine_finish_reason.as_deref(), choice.finish_reason.as_deref())?;
    // The reply's text leaves out the stop token that closed the turn. A
    // server that hides the stop token leaves the ids without it: the
    // scaffold then closes the turn itself.
    let stop_ids = tokenizer.stop_ids();
    let body = match ids.split_last() {
        Some((last, rest)) if finish == FinishReason::Stop && stop_ids.contains(last) => rest,
        _ => ids.as_slice(),
    };
    let text = tokenizer.decode(body).context("decoding the returned ids")?;
    Ok(Reply { text, ids: Some(ids), logprobs: Some(logprobs), finish, policy_version: resp.policy_version })
}

/// A text-only reply from a chat answer.
pub fn chat_reply(resp: ChatResponse) -> Result<Reply> {
    let choice = resp.choices.into_iter().next().ok_or_else(|| anyhow!("the answer has no choices"))?;
    let text = choice.message.content.ok_or_else(|| anyhow!("the reply has no text content"))?;
    let finish = finish_of(choice.engine_finish_reason.as_deref(), choice.finish_reason.as_deref())?;
    Ok(Reply { text, ids: None, logprobs: None, finish, policy_version: resp.policy_version })
}

/// The finish from our `engine_finish_reason` extension when present, else
/// from the standard `finish_reason`.
fn finish_of(engine: Option<&str>, openai: Option<&str>) -> Result<FinishReason> {
    match (engine, openai) {
        (Some("stop"), _) => Ok(FinishReason::Stop),
        (Some("length"), _) => Ok(FinishReason::Length),
        (Some("context"), _) => Ok(FinishReason::Context),
        (Some(other), _) => bail!("unknown engine_finish_reason {other:?}"),
        (None, Some("stop")) => Ok(FinishReason::Stop),
        (None, Some("length")) => Ok(FinishReason::Length),
        (None, other) => bail!("finish_reason is {other:?}; expected \"stop\" or \"length\""),
    }
}

/// An error's message from an OpenAI error body, else the start of the body.
fn error_message(bytes: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => b.error.message,
        Err(_) if bytes.is_empty() => "(empty body)".into(),
        Err(_) => format!("{:?}", snippet(bytes)),
    }
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut s: String = text.chars().take(300).collect();
    if text.chars().count() > 300 {
        s.push('…');
    }
    s
}

fn describe_send_error(e: reqwest::Error, url: &Url, timeout: Duration) -> anyhow::Error {
    let what = if e.is_timeout() {
        format!("no answer within {timeout:?}")
    } else if e.is_connect() {
        "cannot connect (is the server running?)".to_string()
    } else {
        "the request failed".to_string()
    };
    anyhow::Error::new(e).context(format!("POST {url}: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::api::{ChatChoice, ChatReplyMessage, CompletionChoice, CompletionLogprobs};

    fn response(choice: CompletionChoice) -> CompletionResponse {
        CompletionResponse { id: "c".into(), object: "text_completion".into(), created: 0, model: "m".into(), choices: vec![choice], usage: None, policy_version: Some(3) }
    }

    fn choice(token_ids: Option<Vec<u32>>, tokens: Vec<String>, logprobs: Vec<Option<f32>>, finish: &str) -> CompletionChoice {
        CompletionChoice {
            index: 0,
            text: String::new(),
            logprobs: Some(CompletionLogprobs { tokens, token_logprobs: logprobs, top_logprobs: None, text_offset: vec![] }),
            finish_reason: Some(finish.into()),
            token_ids,
            engine_finish_reason: None,
        }
    }

    #[test]
    fn ids_come_from_the_extension_or_from_vllm_token_id_strings() {
        let t = Tokenizer::tiny().unwrap();
        let hi = t.encode("hi").unwrap();
        let im_end = t.im_end().unwrap();
        let ids: Vec<u32> = hi.iter().copied().chain([im_end]).collect();
        let lps: Vec<Option<f32>> = (0..ids.len()).map(|i| Some(-0.25 * i as f32)).collect();

        let ours = completion_reply(response(choice(Some(ids.clone()), vec![], lps.clone(), "stop")), &t, 10).unwrap();
        assert_eq!(ours.ids.as_deref(), Some(ids.as_slice()));
        assert_eq!(ours.text, "hi");
        assert_eq!(ours.finish, FinishReason::Stop);
        assert_eq!(ours.policy_version, Some(3));

        let strings = ids.iter().map(|&i| api::token_id_string(i)).collect();
        let vllm = completion_reply(response(choice(None, strings, lps.clone(), "stop")), &t, 10).unwrap();
        assert_eq!(vllm.ids, ours.ids);
        assert_eq!(vllm.logprobs, ours.logprobs);
    }

    #[test]
    fn a_server_without_ids_or_with_bad_answers_is_a_clear_error() {
        let t = Tokenizer::tiny().unwrap();
        let err = |c: CompletionChoice| format!("{:#}", completion_reply(response(c), &t, 10).unwrap_err());
        let m = err(choice(None, vec!["hi".into()], vec![Some(-1.0)], "length"));
        assert!(m.contains("did not return token ids") && m.contains("chat mode"), "{m}");
        let mut no_lp = choice(None, vec![], vec![], "length");
        no_lp.logprobs = None;
        assert!(err(no_lp).contains("did not return token ids"));
        assert!(err(choice(Some(vec![1, 2]), vec![], vec![Some(-1.0)], "length")).contains("2 token ids but 1 log-probs"));
        assert!(err(choice(Some(vec![1]), vec![], vec![None], "length")).contains("null"));
        assert!(err(choice(Some(vec![1]), vec![], vec![Some(-1.0)], "abort")).contains("finish_reason"));
        assert!(err(choice(Some(vec![1; 11]), vec![], vec![Some(-1.0); 11], "length")).contains("more than the 10"));
        let mut empty = response(choice(Some(vec![]), vec![], vec![], "length"));
        empty.choices.clear();
        assert!(format!("{:#}", completion_reply(empty, &t, 10).unwrap_err()).contains("no choices"));
    }

    #[test]
    fn a_hidden_stop_token_leaves_the_ids_as_they_came() {
        let t = Tokenizer::tiny().unwrap();
        let hi = t.encode("hi").unwrap();
        let lps = vec![Some(-0.5); hi.len()];
        let r = completion_reply(response(choice(Some(hi.clone()), vec![], lps, "stop")), &t, 10).unwrap();
        assert_eq!(r.ids, Some(hi));
        assert_eq!((r.text.as_str(), r.finish), ("hi", FinishReason::Stop));
    }

    #[test]
    fn the_engine_finish_tells_the_context_limit_apart() {
        assert_eq!(finish_of(Some("context"), Some("length")).unwrap(), FinishReason::Context);
        assert_eq!(finish_of(None, Some("length")).unwrap(), FinishReason::Length);
        assert_eq!(finish_of(None, Some("stop")).unwrap(), FinishReason::Stop);
        assert!(finish_of(None, None).is_err());
    }

    #[test]
    fn chat_replies_are_text_only() {
        let resp = ChatResponse {
            id: "c".into(),
            object: "chat.completion".into(),
            created: 0,
            model: "m".into(),
            choices: vec![ChatChoice { index: 0, message: ChatReplyMessage { role: "assistant".into(), content: Some("ls".into()) }, logprobs: None, finish_reason: Some("stop".into()), token_ids: None, engine_finish_reason: None }],
            usage: None,
            policy_version: None,
        };
        let r = chat_reply(resp).unwrap();
        assert_eq!((r.text.as_str(), r.ids, r.logprobs, r.finish), ("ls", None, None, FinishReason::Stop));
    }

    #[test]
    fn configs_are_checked() {
        let t = Tokenizer::tiny().unwrap();
        let ok = EndpointPolicy::new(EndpointConfig::new("http://127.0.0.1:8000/v1/", "m", EndpointMode::Chat), t.clone()).unwrap();
        assert_eq!(ok.url().as_str(), "http://127.0.0.1:8000/v1/chat/completions");
        let err = |c: EndpointConfig| format!("{:#}", EndpointPolicy::new(c, t.clone()).err().expect("an error"));
        assert!(err(EndpointConfig::new("127.0.0.1:8000", "m", EndpointMode::Chat)).contains("URL"));
        assert!(err(EndpointConfig::new("ftp://h/v1", "m", EndpointMode::Chat)).contains("http://"));
        let mut c = EndpointConfig::new("http://h/v1", "m", EndpointMode::Completions);
        c.params.temperature = -1.0;
        assert!(err(c).contains("temperature"));
    }

    #[test]
    fn error_bodies_give_their_message() {
        assert_eq!(error_message(br#"{"error": {"message": "queue full", "type": "x", "code": 503}}"#), "queue full");
        assert_eq!(error_message(b""), "(empty body)");
        assert!(error_message(b"<html>bad gateway</html>").contains("bad gateway"));
    }
}
