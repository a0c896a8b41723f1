//! The HTTP server: OpenAI-compatible routes over one [`EngineService`].
//!
//! Owns: routing, the optional bearer-key check, reading bodies under a size
//! limit, validating requests into engine requests (every user mistake is a
//! 4xx with an OpenAI-shaped JSON error, never a panic), turning completions
//! into responses with the exact f32 log-probs, and graceful shutdown. Does
//! not own batching or the refusal of a full queue (the engine service does
//! both; a refusal becomes a 503 here), sampling, tokenization or the chat
//! template. Streaming is not supported.
//!
//! Seeds: a request's `seed` fixes its output. Choice 0 of a request samples
//! with the seed itself, so `n = 1` with seed `s` gives exactly what the
//! in-process engine gives with seed `s`; choice `i > 0` uses a seed mixed
//! from `s` and `i`. Without a seed, one is drawn from a counter.
//!
//! Log-probs: one per sampled token, the stop token included (in
//! completions' `logprobs` and in chat's `logprobs.content` alike, aligned
//! with the `token_ids` extension); top alternatives are not computed. The
//! text leaves out the stop token that ended a reply, and other special
//! tokens too unless `skip_special_tokens` is false.

use super::api::{
    token_id_string, ChatChoice, ChatLogprobs, ChatReplyMessage, ChatRequest, ChatResponse, ChatTokenLogprob, CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, ErrorBody, ErrorDetail, ModelCard, ModelList, Prompt, Usage,
};
use crate::engine::service::{EngineService, GenRequest, Generated, Refused};
use crate::engine::{FinishReason, SamplingParams};
use crate::model::chat::{ChatTemplate, Message};
use crate::model::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The most choices one request may ask for.
pub const MAX_CHOICES: usize = 16;

/// `max_tokens` of a completion request that gives none (OpenAI's default).
pub const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;

/// How the server listens and what it accepts.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// When set, every `/v1` route requires `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Larger request bodies are refused with 413.
    pub max_body_bytes: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions { host: "127.0.0.1".into(), port: 0, api_key: None, max_body_bytes: 8 << 20 }
    }
}

/// A server accepting connections on a background task.
pub struct RunningServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// The address it is bound to (with the real port when asked for 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OpenAI base URL, `http://ADDR/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Stop accepting connections, let requests in flight finish, and
    /// return once the listener is closed.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("the server task failed")?.context("the server failed")
    }

    /// Serve until `signal` completes, then shut down gracefully.
    pub async fn run_until(mut self, signal: impl std::future::Future<Output = ()>) -> Result<()> {
        tokio::select! {
            () = signal => self.shutdown().await,
            ended = &mut self.task => ended.context("the server task failed")?.context("the server failed"),
        }
    }
}

/// Bind `opts.host:opts.port` and serve the routes over `engine` on a
/// background task. The tokenizer must be the engine's model's, with the
/// ChatML special tokens.
pub async fn bind(engine: EngineService, tokenizer: Tokenizer, opts: ServeOptions) -> Result<RunningServer> {
    let state = Arc::new(AppState::new(engine, tokenizer, &opts)?);
    let listener = tokio::net::TcpListener::bind((opts.host.as_str(), opts.port)).await.with_context(|| format!("cannot listen on {}:{}", opts.host, opts.port))?;
    let addr = listener.local_addr().context("cannot read the bound address")?;
    let (stop, stopped) = oneshot::channel::<()>();
    let app = router(state);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    tracing::info!("serving on http://{addr}");
    Ok(RunningServer { addr, stop, task })
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(list_models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state)
}

struct AppState {
    engine: EngineService,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    stop_ids: Vec<u32>,
    api_key_digest: Option<[u8; 32]>,
    max_body_bytes: usize,
    started: u64,
    next_seed: AtomicU64,
    next_id: AtomicU64,
}

impl AppState {
    fn new(engine: EngineService, tokenizer: Tokenizer, opts: &ServeOptions) -> Result<Self> {
        let info = engine.info();
        tokenizer.check_fits_model(info.vocab_size, &info.name)?;
        let template = ChatTemplate::new(tokenizer.clone()).context("the served tokenizer cannot render chat messages")?;
        let api_key_digest = match &opts.api_key {
            Some(k) if k.is_empty() => anyhow::bail!("the API key is empty; give a non-empty key or none"),
            Some(k) => Some(sha256(k.as_bytes())),
            None => None,
        };
        Ok(AppState {
            stop_ids: tokenizer.stop_ids(),
            engine,
            tokenizer,
            template,
            api_key_digest,
            max_body_bytes: opts.max_body_bytes,
            started: unix_now(),
            next_seed: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
        })
    }

    /// Ok when no key is set or the request carries it. The comparison is
    /// of SHA-256 digests, in constant time: neither the key's bytes nor
    /// its length can be learned from timing.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(want) = &self.api_key_digest else { return Ok(()) };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized("missing_api_key", "this server requires an API key: send `Authorization: Bearer <key>`"));
        };
        let bytes = value.as_bytes();
        let token = match bytes.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => &bytes[7..],
            _ => return Err(ApiError::unauthorized("invalid_api_key", "the Authorization header must be `Bearer <key>`")),
        };
        if !digests_equal(&sha256(token), want) {
            return Err(ApiError::unauthorized("invalid_api_key", "invalid API key"));
        }
        Ok(())
    }

    fn next_request_id(&self, prefix: &str) -> String {
        format!("{prefix}-{:016x}{:08x}", self.started, self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Queue `n` generations of `prompt` and wait for them all. When the
    /// queue fills part way, the whole request is refused; the choices
    /// already queued still run, and their answers are dropped.
    async fn generate(&self, prompt: &[u32], plan: &SamplingPlan) -> Result<Vec<Generated>, ApiError> {
        let mut pending = Vec::with_capacity(plan.n);
        for choice in 0..plan.n {
            let mut params = plan.params.clone();
            params.seed = choice_seed(plan.params.seed, choice);
            let req = GenRequest { prompt: prompt.to_vec(), params, stop: plan.stop.clone() };
            match self.engine.submit(req) {
                Ok(rx) => pending.push(rx),
                Err(e @ Refused::QueueFull(_)) => return Err(ApiError::overloaded(e.to_string())),
                Err(e @ Refused::Stopped) => return Err(ApiError::unavailable(e.to_string())),
            }
        }
        let mut out = Vec::with_capacity(plan.n);
        for rx in pending {
            match rx.await {
                Ok(Ok(g)) => out.push(g),
                Ok(Err(e)) => return Err(ApiError::internal(format!("generation failed: {e:#}"))),
                Err(_) => return Err(ApiError::unavailable(Refused::Stopped.to_string())),
            }
        }
        Ok(out)
    }

    /// The prompt's ids, checked against the vocabulary and the context.
    fn check_prompt(&self, ids: &[u32]) -> Result<(), ApiError> {
        let info = self.engine.info();
        if ids.is_empty() {
            return Err(ApiError::invalid("invalid_prompt", "the prompt is empty"));
        }
        if let Some((pos, &bad)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= info.vocab_size) {
            return Err(ApiError::invalid("invalid_prompt", format!("prompt token id {bad} at position {pos} is outside the model's vocabulary of {}", info.vocab_size)));
        }
        if ids.len() >= info.max_context {
            return Err(ApiError::invalid(
                "context_length_exceeded",
                format!("the prompt has {} tokens, but the model's context is {} tokens and at least one must be left to generate", ids.len(), info.max_context),
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Errors

/// An error answer: an HTTP status and an OpenAI error body.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, kind, code, message: message.into() }
    }
    fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", code, message)
    }
    fn param(name: &str, message: impl std::fmt::Display) -> Self {
        Self::invalid("invalid_parameter", format!("{name}: {message}"))
    }
    fn unsupported(name: &str, message: impl std::fmt::Display) -> Self {
        Self::invalid("unsupported_parameter", format!("{name}: {message}"))
    }
    fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", code, message)
    }
    fn overloaded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_overloaded", "queue_full", message)
    }
    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "engine_stopped", message)
    }
    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!("{} {}: {}", self.status.as_u16(), self.code, self.message);
        } else {
            tracing::debug!("{} {}: {}", self.status.as_u16(), self.code, self.message);
        }
        let body = ErrorBody { error: ErrorDetail { message: self.message, kind: self.kind.to_string(), code: Some(serde_json::Value::String(self.code.to_string())) } };
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "unknown_route", format!("no route {method} {}; the routes are GET /v1/models, POST /v1/completions, POST /v1/chat/completions and GET /health", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", "method_not_allowed", format!("{} does not accept {method}", uri.path()))
}

// ---------------------------------------------------------------------------
// Bodies

/// The whole body, refused with 413 past `limit` bytes (by its declared
/// length when it has one, else while reading).
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", "body_too_large", format!("the request body is larger than this server's limit of {limit} bytes"));
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut out = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid("unreadable_body", format!("cannot read the request body: {e}")))?;
        if out.len() + chunk.len() > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Parse a JSON body; the message says whether the JSON itself is broken or
/// which field has the wrong type or value.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde would also read a struct from a JSON array, by position: refuse
    // anything but an object up front.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => ApiError::invalid("invalid_parameter", "the request body must be a JSON object"),
            Err(e) => ApiError::invalid("invalid_json", format!("the request body is not valid JSON: {e}")),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid("invalid_json", format!("the request body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::invalid("invalid_parameter", format!("invalid request: {inner}"))
        } else {
            ApiError::invalid("invalid_parameter", format!("`{path}`: {inner}"))
        }
    })?;
    de.end().map_err(|e| ApiError::invalid("invalid_json", format!("the request body is not valid JSON: {e}")))?;
    Ok(parsed)
}

// ---------------------------------------------------------------------------
// Validation

/// The sampling parameters both endpoints share, as the request gave them.
struct SamplingFields<'a> {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    seed: Option<u64>,
    n: Option<usize>,
    stream: Option<bool>,
    stop: &'a Option<serde_json::Value>,
    stop_token_ids: Option<&'a [u32]>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
}

/// What to ask the engine for: the parameters of choice 0 (the seed
/// included; `max_new_tokens` still unset), how many choices, the stop ids.
#[derive(Debug)]
struct SamplingPlan {
    params: SamplingParams,
    n: usize,
    stop: Vec<u32>,
}

/// Check every shared field; `base_stop` are the tokenizer's stop ids and
/// `vocab_size` the model's. `fallback_seed` is used when none was given.
fn plan_sampling(f: &SamplingFields, base_stop: &[u32], vocab_size: usize, fallback_seed: impl FnOnce() -> u64) -> Result<SamplingPlan, ApiError> {
    if f.stream == Some(true) {
        return Err(ApiError::unsupported("stream", "streaming is not supported; leave `stream` out or send false"));
    }
    let temperature = f.temperature.unwrap_or(1.0);
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(ApiError::param("temperature", format!("must be a finite number >= 0, got {temperature}")));
    }
    let top_p = f.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::param("top_p", format!("must be in (0, 1], got {top_p}")));
    }
    let top_k = match f.top_k.unwrap_or(0) {
        -1 | 0 => 0,
        k if k > 0 => usize::try_from(k).map_err(|_| ApiError::param("top_k", format!("{k} is too large")))?,
        k => return Err(ApiError::param("top_k", format!("must be -1 or 0 (off) or a positive count, got {k}"))),
    };
    let min_p = f.min_p.unwrap_or(0.0);
    if !(0.0..1.0).contains(&min_p) {
        return Err(ApiError::param("min_p", format!("must be in [0, 1), got {min_p}")));
    }
    let n = f.n.unwrap_or(1);
    if !(1..=MAX_CHOICES).contains(&n) {
        return Err(ApiError::param("n", format!("must be between 1 and {MAX_CHOICES}, got {n}")));
    }
    for (name, v) in [("presence_penalty", f.presence_penalty), ("frequency_penalty", f.frequency_penalty)] {
        if let Some(v) = v.filter(|&v| v != 0.0) {
            return Err(ApiError::unsupported(name, format!("penalties are not supported (they would change the sampling distribution); send 0 or leave it out, got {v}")));
        }
    }
    match f.stop {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(s)) if s.is_empty() => {}
        Some(serde_json::Value::Array(a)) if a.is_empty() => {}
        Some(_) => return Err(ApiError::unsupported("stop", "stop strings are not supported; use `stop_token_ids`")),
    }
    let mut stop = base_stop.to_vec();
    for &id in f.stop_token_ids.unwrap_or(&[]) {
        if id as usize >= vocab_size {
            return Err(ApiError::param("stop_token_ids", format!("id {id} is outside the model's vocabulary of {vocab_size}")));
        }
        if !stop.contains(&id) {
            stop.push(id);
        }
    }
    let seed = f.seed.unwrap_or_else(fallback_seed);
    let params = SamplingParams { temperature, top_p, top_k, min_p, max_new_tokens: 0, seed };
    params.validate().map_err(|e| ApiError::invalid("invalid_parameter", format!("{e:#}")))?;
    Ok(SamplingPlan { params, n, stop })
}

impl<'a> SamplingFields<'a> {
    fn of_completion(r: &'a CompletionRequest) -> Self {
        SamplingFields {
            temperature: r.temperature,
            top_p: r.top_p,
            top_k: r.top_k,
            min_p: r.min_p,
            seed: r.seed,
            n: r.n,
            stream: r.stream,
            stop: &r.stop,
            stop_token_ids: r.stop_token_ids.as_deref(),
            presence_penalty: r.presence_penalty,
            frequency_penalty: r.frequency_penalty,
        }
    }

    fn of_chat(r: &'a ChatRequest) -> Self {
        SamplingFields {
            temperature: r.temperature,
            top_p: r.top_p,
            top_k: r.top_k,
            min_p: r.min_p,
            seed: r.seed,
            n: r.n,
            stream: r.stream,
            stop: &r.stop,
            stop_token_ids: r.stop_token_ids.as_deref(),
            presence_penalty: r.presence_penalty,
            frequency_penalty: r.frequency_penalty,
        }
    }
}

/// The seed of choice `i` of a request seeded `seed`: the seed itself for
/// choice 0, a SplitMix64 mix of the pair for the others.
fn choice_seed(seed: u64, i: usize) -> u64 {
    if i == 0 {
        return seed;
    }
    splitmix64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------
// Routes

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn list_models(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<ModelList>, ApiError> {
    s.authorize(&headers)?;
    let info = s.engine.info();
    Ok(Json(ModelList {
        object: "list".into(),
        data: vec![ModelCard { id: info.name.clone(), object: "model".into(), created: s.started, owned_by: "appliance".into(), max_model_len: Some(info.max_context) }],
    }))
}

async fn completions(State(s): State<Arc<AppState>>, req: Request) -> Result<Json<CompletionResponse>, ApiError> {
    let (parts, body) = req.into_parts();
    s.authorize(&parts.headers)?;
    let req: CompletionRequest = parse_json(&read_body(&parts.headers, body, s.max_body_bytes).await?)?;
    if req.echo == Some(true) {
        return Err(ApiError::unsupported("echo", "echoing the prompt is not supported; send false or leave it out"));
    }
    if let Some(k) = req.logprobs.filter(|&k| k > 0) {
        return Err(ApiError::unsupported("logprobs", format!("top alternatives are not computed; send 0 for the sampled tokens' log-probs, got {k}")));
    }
    let info = s.engine.info();
    let mut plan = plan_sampling(&SamplingFields::of_completion(&req), &s.stop_ids, info.vocab_size, || splitmix64(s.next_seed.fetch_add(1, Ordering::Relaxed)))?;
    plan.params.max_new_tokens = req.max_tokens.unwrap_or(DEFAULT_COMPLETION_MAX_TOKENS);
    let prompt = match &req.prompt {
        Prompt::Text(t) => s.tokenizer.encode(t).map_err(|e| ApiError::invalid("invalid_prompt", format!("cannot tokenize the prompt: {e:#}")))?,
        Prompt::TokenIds(ids) => ids.clone(),
    };
    s.check_prompt(&prompt)?;
    let outs = s.generate(&prompt, &plan).await?;
    let skip_special = req.skip_special_tokens.unwrap_or(true);
    let as_ids = req.return_tokens_as_token_ids.unwrap_or(false);
    let mut choices = Vec::with_capacity(outs.len());
    for (index, g) in outs.iter().enumerate() {
        let c = &g.completion;
        let text = decode_lenient(&s.tokenizer, body_ids(c.tokens.as_slice(), c.finish, &plan.stop), skip_special)?;
        let logprobs = match req.logprobs {
            None => None,
            Some(_) => {
                let mut tokens = Vec::with_capacity(c.tokens.len());
                let mut text_offset = Vec::with_capacity(c.tokens.len());
                let mut offset = 0;
                for &id in &c.tokens {
                    text_offset.push(offset);
                    offset += decode_lenient(&s.tokenizer, &[id], skip_special)?.chars().count();
                    tokens.push(if as_ids { token_id_string(id) } else { decode_lenient(&s.tokenizer, &[id], false)? });
                }
                Some(CompletionLogprobs { tokens, token_logprobs: c.logprobs.iter().map(|&x| Some(x)).collect(), top_logprobs: None, text_offset })
            }
        };
        choices.push(CompletionChoice { index, text, logprobs, finish_reason: Some(openai_finish(c.finish).into()), token_ids: Some(c.tokens.clone()), engine_finish_reason: Some(engine_finish(c.finish).into()) });
    }
    Ok(Json(CompletionResponse {
        id: s.next_request_id("cmpl"),
        object: "text_completion".into(),
        created: unix_now(),
        model: req.model.clone().unwrap_or_else(|| info.name.clone()),
        choices,
        usage: Some(usage(prompt.len(), &outs)),
        policy_version: outs.iter().map(|g| g.policy_version).min(),
    }))
}

async fn chat_completions(State(s): State<Arc<AppState>>, req: Request) -> Result<Json<ChatResponse>, ApiError> {
    let (parts, body) = req.into_parts();
    s.authorize(&parts.headers)?;
    let req: ChatRequest = parse_json(&read_body(&parts.headers, body, s.max_body_bytes).await?)?;
    if let Some(k) = req.top_logprobs.filter(|&k| k > 0) {
        return Err(ApiError::unsupported("top_logprobs", format!("top alternatives are not computed; send 0 or leave it out, got {k}")));
    }
    if req.messages.is_empty() {
        return Err(ApiError::param("messages", "at least one message is required"));
    }
    let max_tokens = match (req.max_tokens, req.max_completion_tokens) {
        (Some(a), Some(b)) if a != b => return Err(ApiError::param("max_tokens", format!("max_tokens ({a}) and max_completion_tokens ({b}) disagree; give one"))),
        (a, b) => a.or(b),
    };
    let info = s.engine.info();
    let mut plan = plan_sampling(&SamplingFields::of_chat(&req), &s.stop_ids, info.vocab_size, || splitmix64(s.next_seed.fetch_add(1, Ordering::Relaxed)))?;
    let messages: Vec<Message> = req.messages.iter().map(|m| Message::new(m.role, m.content.clone())).collect();
    let prompt = s.template.render(&messages, true).map_err(|e| ApiError::invalid("invalid_prompt", format!("cannot render the messages: {e:#}")))?.ids;
    s.check_prompt(&prompt)?;
    plan.params.max_new_tokens = max_tokens.unwrap_or(info.max_context - prompt.len());
    let outs = s.generate(&prompt, &plan).await?;
    let skip_special = req.skip_special_tokens.unwrap_or(true);
    let mut choices = Vec::with_capacity(outs.len());
    for (index, g) in outs.iter().enumerate() {
        let c = &g.completion;
        let content = decode_lenient(&s.tokenizer, body_ids(&c.tokens, c.finish, &plan.stop), skip_special)?;
        let logprobs = if req.logprobs == Some(true) {
            let mut entries = Vec::with_capacity(c.tokens.len());
            for (&id, &logprob) in c.tokens.iter().zip(&c.logprobs) {
                let token = decode_lenient(&s.tokenizer, &[id], false)?;
                entries.push(ChatTokenLogprob { bytes: Some(token.as_bytes().to_vec()), token, logprob, top_logprobs: vec![] });
            }
            Some(ChatLogprobs { content: Some(entries) })
        } else {
            None
        };
        choices.push(ChatChoice {
            index,
            message: ChatReplyMessage { role: "assistant".into(), content: Some(content) },
            logprobs,
            finish_reason: Some(openai_finish(c.finish).into()),
            token_ids: Some(c.tokens.clone()),
            engine_finish_reason: Some(engine_finish(c.finish).into()),
        });
    }
    Ok(Json(ChatResponse {
        id: s.next_request_id("chatcmpl"),
        object: "chat.completion".into(),
        created: unix_now(),
        model: req.model.clone().unwrap_or_else(|| info.name.clone()),
        choices,
        usage: Some(usage(prompt.len(), &outs)),
        policy_version: outs.iter().map(|g| g.policy_version).min(),
    }))
}

// ---------------------------------------------------------------------------
// Response pieces

/// The sampled ids without the stop token that ended them.
fn body_ids<'a>(tokens: &'a [u32], finish: FinishReason, stop: &[u32]) -> &'a [u32] {
    match tokens.split_last() {
        Some((last, rest)) if finish == FinishReason::Stop && stop.contains(last) => rest,
        _ => tokens,
    }
}

/// Text of `ids`; an id the model has but the tokenizer does not (a padded
/// embedding row) becomes U+FFFD instead of failing the request.
fn decode_lenient(tokenizer: &Tokenizer, ids: &[u32], skip_special: bool) -> Result<String, ApiError> {
    let mut out = String::new();
    let mut run: Vec<u32> = Vec::new();
    let flush = |run: &mut Vec<u32>, out: &mut String| -> Result<(), ApiError> {
        if !run.is_empty() {
            let text = tokenizer.inner().decode(run, skip_special).map_err(|e| ApiError::internal(format!("cannot decode the sampled ids: {e}")))?;
            out.push_str(&text);
            run.clear();
        }
        Ok(())
    };
    for &id in ids {
        if tokenizer.id_to_token(id).is_some() {
            run.push(id);
        } else {
            flush(&mut run, &mut out)?;
            out.push('\u{FFFD}');
        }
    }
    flush(&mut run, &mut out)?;
    Ok(out)
}

fn openai_finish(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Context => "length",
    }
}

fn engine_finish(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Context => "context",
    }
}

fn usage(prompt_tokens: usize, outs: &[Generated]) -> Usage {
    let completion_tokens = outs.iter().map(|g| g.completion.tokens.len()).sum();
    Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equality of two digests that reads every byte whatever the answer.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> SamplingFields<'static> {
        SamplingFields { temperature: None, top_p: None, top_k: None, min_p: None, seed: Some(1), n: None, stream: None, stop: &None, stop_token_ids: None, presence_penalty: None, frequency_penalty: None }
    }

    fn plan(f: SamplingFields) -> Result<SamplingPlan, String> {
        plan_sampling(&f, &[508, 506], 512, || 99).map_err(|e| {
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            e.message
        })
    }

    #[test]
    fn defaults_are_the_untruncated_softmax_at_temperature_one() {
        let p = plan(fields()).unwrap();
        assert_eq!(p.params, SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, min_p: 0.0, max_new_tokens: 0, seed: 1 });
        assert_eq!((p.n, p.stop), (1, vec![508, 506]));
        let p = plan(SamplingFields { seed: None, ..fields() }).unwrap();
        assert_eq!(p.params.seed, 99, "the fallback seed is used when none is given");
    }

    #[test]
    fn bad_values_are_refused_with_the_parameter_named() {
        let cases: Vec<(SamplingFields, &str)> = vec![
            (SamplingFields { temperature: Some(-1.0), ..fields() }, "temperature: must be a finite number >= 0, got -1"),
            (SamplingFields { temperature: Some(f32::NAN), ..fields() }, "temperature"),
            (SamplingFields { top_p: Some(0.0), ..fields() }, "top_p: must be in (0, 1], got 0"),
            (SamplingFields { top_p: Some(1.5), ..fields() }, "top_p"),
            (SamplingFields { top_k: Some(-2), ..fields() }, "top_k: must be -1 or 0 (off) or a positive count, got -2"),
            (SamplingFields { min_p: Some(1.0), ..fields() }, "min_p: must be in [0, 1)"),
            (SamplingFields { n: Some(0), ..fields() }, "n: must be between 1 and 16, got 0"),
            (SamplingFields { n: Some(17), ..fields() }, "n: must be between 1"),
            (SamplingFields { stream: Some(true), ..fields() }, "stream: streaming is not supported"),
            (SamplingFields { presence_penalty: Some(0.5), ..fields() }, "presence_penalty: penalties are not supported"),
            (SamplingFields { stop_token_ids: Some(&[512]), ..fields() }, "stop_token_ids: id 512 is outside the model's vocabulary of 512"),
        ];
        for (f, want) in cases {
            let got = plan(f).unwrap_err();
            assert!(got.contains(want), "{got:?} should contain {want:?}");
        }
        let stop = Some(serde_json::json!(["\n"]));
        assert!(plan(SamplingFields { stop: &stop, ..fields() }).unwrap_err().contains("stop strings are not supported"));
    }

    #[test]
    fn knobs_that_are_off_in_every_spelling_are_accepted() {
        let empty = Some(serde_json::json!([]));
        let p = plan(SamplingFields { top_k: Some(-1), stream: Some(false), presence_penalty: Some(0.0), stop: &empty, stop_token_ids: Some(&[7, 508]), ..fields() }).unwrap();
        assert_eq!(p.params.top_k, 0);
        assert_eq!(p.stop, vec![508, 506, 7], "extra stop ids are added once, after the tokenizer's");
        let p = plan(SamplingFields { temperature: Some(0.0), top_k: Some(40), top_p: Some(0.9), ..fields() }).unwrap();
        assert_eq!((p.params.temperature, p.params.top_k, p.params.top_p), (0.0, 40, 0.9));
    }

    #[test]
    fn choice_zero_keeps_the_seed_and_the_others_differ() {
        assert_eq!(choice_seed(42, 0), 42);
        let seeds: std::collections::HashSet<u64> = (0..MAX_CHOICES).map(|i| choice_seed(42, i)).collect();
        assert_eq!(seeds.len(), MAX_CHOICES);
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let msg = |body: &str| parse_json::<CompletionRequest>(body.as_bytes()).unwrap_err().message;
        assert!(msg("{\"prompt\": ").contains("not valid JSON"));
        assert!(msg("{\"prompt\": \"x\"} trailing").contains("not valid JSON"));
        let m = msg(r#"{"prompt": "x", "temperature": "hot"}"#);
        assert!(m.contains("`temperature`") && m.contains("string"), "{m}");
        let m = msg(r#"{"prompt": "x", "max_tokens": -1}"#);
        assert!(m.contains("`max_tokens`"), "{m}");
        let m = msg(r#"{"temperature": 1}"#);
        assert!(m.contains("prompt"), "{m}");
        assert!(msg(r#"[1, 2]"#).contains("must be a JSON object"));
        assert!(msg("").contains("not valid JSON"));
        assert!(msg("  nonsense").contains("not valid JSON"));
    }

    #[test]
    fn the_stop_token_is_cut_from_the_text_only_when_it_ended_the_reply() {
        assert_eq!(body_ids(&[1, 2, 508], FinishReason::Stop, &[508]), &[1, 2]);
        assert_eq!(body_ids(&[1, 2, 508], FinishReason::Length, &[508]), &[1, 2, 508]);
        assert_eq!(body_ids(&[], FinishReason::Length, &[508]), &[] as &[u32]);
    }

    #[test]
    fn ids_beyond_the_tokenizer_decode_to_a_replacement_character() {
        let t = Tokenizer::tiny().unwrap();
        let hi = t.encode("hi").unwrap();
        let mut ids = hi.clone();
        ids.push(511);
        ids.extend(&hi);
        assert_eq!(decode_lenient(&t, &ids, true).unwrap(), "hi\u{FFFD}hi");
        let im_end = t.im_end().unwrap();
        assert_eq!(decode_lenient(&t, &[hi.as_slice(), &[im_end]].concat(), true).unwrap(), "hi");
        assert_eq!(decode_lenient(&t, &[hi.as_slice(), &[im_end]].concat(), false).unwrap(), "hi<|im_end|>");
    }

    #[tokio::test]
    async fn bodies_past_the_limit_are_refused_whether_declared_or_not() {
        let undeclared = read_body(&HeaderMap::new(), Body::from(vec![b'x'; 100]), 50).await.unwrap_err();
        assert_eq!((undeclared.status, undeclared.code), (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"));
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1000000"));
        let declared = read_body(&headers, Body::empty(), 50).await.unwrap_err();
        assert_eq!(declared.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(read_body(&HeaderMap::new(), Body::from(vec![b'x'; 50]), 50).await.unwrap().len(), 50);
    }

    #[test]
    fn digest_comparison() {
        assert!(digests_equal(&sha256(b"k"), &sha256(b"k")));
        assert!(!digests_equal(&sha256(b"k"), &sha256(b"k2")));
    }
}
