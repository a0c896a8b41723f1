//! `appliance serve` and the endpoint policy over real HTTP on loopback: a
//! real server over the embedded tiny model, real clients, no mocks. Every
//! wait is bounded, so a hang fails the test instead of stalling the suite.

use appliance::agent::endpoint::{EndpointConfig, EndpointMode, EndpointPolicy};
use appliance::agent::policy::{LocalPolicy, Policy, Reply, TurnInput};
use appliance::engine::service::EngineService;
use appliance::engine::{FinishReason, SamplingParams};
use appliance::env::task::Task;
use appliance::model::chat::{ChatTemplate, Message, Rendered};
use appliance::model::tiny::tiny_model;
use appliance::model::tokenizer::Tokenizer;
use appliance::serve::api::{ChatResponse, CompletionResponse, ErrorBody, ModelList};
use appliance::serve::{bind, RunningServer, ServeOptions};
use reqwest::StatusCode;
use std::future::Future;
use std::time::{Duration, Instant};

const MODEL_SEED: u64 = 11;

/// Fail the test if `f` takes longer than `secs`.
async fn within<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} took longer than {secs} s"),
    }
}

fn tokenizer() -> Tokenizer {
    Tokenizer::tiny().expect("the embedded tokenizer loads")
}

/// The tiny model as the CLI loads it: it produces only its tokenizer's ids
/// (its embedding is padded to 512 rows past the tokenizer's 509).
fn engine(queue: usize, max_batch: usize) -> EngineService {
    let mut m = tiny_model(MODEL_SEED);
    m.output_vocab = tokenizer().vocab_size();
    EngineService::start(m, "tiny", queue, max_batch).expect("the engine starts")
}

async fn server_with(queue: usize, max_batch: usize, opts: ServeOptions) -> RunningServer {
    bind(engine(queue, max_batch), tokenizer(), ServeOptions { host: "127.0.0.1".into(), port: 0, ..opts }).await.expect("the server binds")
}

async fn server() -> RunningServer {
    server_with(64, 8, ServeOptions::default()).await
}

fn dummy_task() -> Task {
    Task {
        instance_id: "demo__demo-1".into(),
        repo: "demo/demo".into(),
        base_commit: "0000000".into(),
        problem_statement: "Make the tests pass.".into(),
        patch: String::new(),
        test_patch: String::new(),
        fail_to_pass: vec![],
        pass_to_pass: vec![],
        version: None,
        image_name: None,
        test_cmd: None,
        env_setup: None,
        repo_path: None,
    }
}

/// One turn's conversation and its ledger.
struct Turn {
    messages: Vec<Message>,
    ledger: Rendered,
    seed: u64,
    max_new_tokens: usize,
}

impl Turn {
    fn new(template: &ChatTemplate, user: &str, seed: u64, max_new_tokens: usize) -> Self {
        let messages = vec![Message::system("You are a software engineer. Reply with one shell command."), Message::user(user)];
        let ledger = template.render(&messages, true).expect("the conversation renders");
        Turn { messages, ledger, seed, max_new_tokens }
    }

    fn input<'a>(&'a self, task: &'a Task) -> TurnInput<'a> {
        TurnInput { task, messages: &self.messages, ledger: &self.ledger, turn: 0, max_new_tokens: self.max_new_tokens, seed: self.seed }
    }
}

fn endpoint(server: &RunningServer, mode: EndpointMode, params: SamplingParams) -> EndpointPolicy {
    let mut cfg = EndpointConfig::new(server.base_url(), "tiny", mode);
    cfg.params = params;
    cfg.request_timeout = Duration::from_secs(60);
    EndpointPolicy::new(cfg, tokenizer()).expect("the endpoint policy builds")
}

/// POST a raw body; the status, the headers and the body as JSON.
async fn post_raw(url: &str, body: impl Into<reqwest::Body>, key: Option<&str>) -> (StatusCode, reqwest::header::HeaderMap, serde_json::Value) {
    let client = reqwest::Client::new();
    let mut req = client.post(url).header("content-type", "application/json").body(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.expect("the server answers");
    answer(resp).await
}

async fn get_raw(url: &str, key: Option<&str>) -> (StatusCode, reqwest::header::HeaderMap, serde_json::Value) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    answer(req.send().await.expect("the server answers")).await
}

async fn answer(resp: reqwest::Response) -> (StatusCode, reqwest::header::HeaderMap, serde_json::Value) {
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("the body arrives");
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("HTTP {status}: the body is not JSON ({e}): {:?}", String::from_utf8_lossy(&bytes)));
    (status, headers, json)
}

/// An error answer: the status wanted, an OpenAI error body with a message
/// containing `needle`.
fn assert_error(got: &(StatusCode, reqwest::header::HeaderMap, serde_json::Value), status: StatusCode, needle: &str, what: &str) {
    let (s, headers, body) = got;
    assert_eq!(*s, status, "{what}: {body}");
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(ct.starts_with("application/json"), "{what}: content-type {ct:?}");
    let e: ErrorBody = serde_json::from_value(body.clone()).unwrap_or_else(|e| panic!("{what}: not an OpenAI error body ({e}): {body}"));
    assert!(!e.error.kind.is_empty() && e.error.code.is_some(), "{what}: {body}");
    assert!(e.error.message.contains(needle), "{what}: message {:?} lacks {needle:?}", e.error.message);
}

fn assert_same_reply(local: &Reply, remote: &Reply, what: &str) {
    assert_eq!(remote.ids, local.ids, "{what}: ids");
    assert_eq!(remote.finish, local.finish, "{what}: finish");
    assert_eq!(remote.text, local.text, "{what}: text");
    assert_eq!(remote.policy_version, local.policy_version, "{what}: policy version");
    let bits = |r: &Reply| r.logprobs.as_ref().map(|l| l.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    assert_eq!(bits(remote), bits(local), "{what}: log-probs, bit for bit");
    assert!(remote.logprobs.as_ref().map(Vec::len) == remote.ids.as_ref().map(Vec::len), "{what}: one log-prob per id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_endpoint_policy_matches_the_local_policy_exactly() {
    within(600, "the parity test", async {
        let server = server().await;
        let tok = tokenizer();
        let template = ChatTemplate::new(tok.clone()).unwrap();
        let task = dummy_task();
        let prompts = ["Fix the failing test in utils.py.", "List the files.", "Why does `make` fail?\nSee the log.", "hello"];
        let param_sets = [
            SamplingParams::default(),
            SamplingParams { temperature: 0.0, ..Default::default() },
            SamplingParams { temperature: 0.8, top_k: 50, top_p: 0.95, min_p: 0.01, ..Default::default() },
            SamplingParams { temperature: 3.0, ..Default::default() },
        ];
        let (mut compared, mut stops, mut lengths) = (0, 0, 0);
        for (pi, params) in param_sets.iter().enumerate() {
            let local = LocalPolicy { engine: engine(64, 8), tokenizer: tok.clone(), params: params.clone() };
            let remote = endpoint(&server, EndpointMode::Completions, params.clone());
            let turns: Vec<Turn> = (0..12u64).map(|k| Turn::new(&template, prompts[k as usize % prompts.len()], 1000 * pi as u64 + k * 7919, 48)).collect();
            // One turn at a time on each side. The engine's tokens do not
            // depend on what shares their batch, but the last bit of a
            // log-prob does (the forward pass sums in another order for
            // another batch shape), so bit-identity is a claim about equal
            // batches: here, batches of one.
            for (k, t) in turns.iter().enumerate() {
                let what = format!("params {pi}, turn {k}");
                let l = local.act(t.input(&task)).await;
                let r = remote.act(t.input(&task)).await;
                match (&l, &r) {
                    (Ok(l), Ok(r)) => {
                        assert_same_reply(l, r, &what);
                        compared += 1;
                        match l.finish {
                            FinishReason::Stop => stops += 1,
                            FinishReason::Length => lengths += 1,
                            FinishReason::Context => {}
                        }
                    }
                    (l, r) => panic!("{what}: local {:?} but remote {:?}", l.as_ref().map(|x| &x.ids), r.as_ref().map(|x| &x.ids).map_err(|e| format!("{e:#}"))),
                }
            }
        }
        eprintln!("compared {compared} replies ({stops} stopped, {lengths} hit the limit)");
        assert!(compared >= 16, "too few replies compared: {compared}");
        assert!(stops >= 1 && lengths >= 1, "want both finishes among the replies: {stops} stops, {lengths} lengths");
        server.shutdown().await.unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_chat_routes_answer_in_openai_shape() {
    within(300, "the chat test", async {
        let server = server().await;
        let base = server.base_url();

        let (status, _, body) = get_raw(&format!("{base}/models"), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let models: ModelList = serde_json::from_value(body).unwrap();
        assert_eq!(models.object, "list");
        assert_eq!(models.data[0].id, "tiny");
        assert_eq!(models.data[0].max_model_len, Some(8192));

        let (status, _, body) = get_raw(&format!("http://{}/health", server.addr()), None).await;
        assert_eq!((status, body), (StatusCode::OK, serde_json::json!({"status": "ok"})));

        let chat = serde_json::json!({
            "model": "tiny",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "List the files."}],
            "max_tokens": 12, "seed": 5, "logprobs": true, "top_logprobs": 0, "temperature": 0.9
        });
        let (status, _, body) = post_raw(&format!("{base}/chat/completions"), chat.to_string(), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let resp: ChatResponse = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(resp.object, "chat.completion");
        let choice = &resp.choices[0];
        assert_eq!(choice.message.role, "assistant");
        assert!(choice.message.content.is_some());
        let ids = choice.token_ids.as_ref().expect("the token_ids extension");
        let lps = choice.logprobs.as_ref().and_then(|l| l.content.as_ref()).expect("per-token log-probs");
        assert_eq!(lps.len(), ids.len());
        assert!(lps.iter().all(|t| t.logprob <= 0.0 && t.logprob.is_finite() && t.top_logprobs.is_empty()), "{body}");
        let usage = resp.usage.as_ref().unwrap();
        assert_eq!(usage.completion_tokens, ids.len());
        assert_eq!(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
        assert_eq!(resp.policy_version, Some(0));

        // The same again gives the same reply: the seed fixes it.
        let (_, _, again) = post_raw(&format!("{base}/chat/completions"), chat.to_string(), None).await;
        assert_eq!(again["choices"], body["choices"]);

        // n > 1: choice 0 is the single answer, the others differ.
        let mut three = chat.clone();
        three["n"] = 3.into();
        let (status, _, many) = post_raw(&format!("{base}/chat/completions"), three.to_string(), None).await;
        assert_eq!(status, StatusCode::OK, "{many}");
        assert_eq!(many["choices"][0]["token_ids"], body["choices"][0]["token_ids"]);
        assert_eq!(many["choices"].as_array().unwrap().len(), 3);
        assert_ne!(many["choices"][1]["token_ids"], many["choices"][0]["token_ids"]);

        // The chat-mode policy: text only, the same text the route gives.
        let policy = endpoint(&server, EndpointMode::Chat, SamplingParams { temperature: 0.9, ..Default::default() });
        let task = dummy_task();
        let messages = vec![Message::system("Be brief."), Message::user("List the files.")];
        let ledger = ChatTemplate::new(tokenizer()).unwrap().render(&messages, true).unwrap();
        let reply = policy.act(TurnInput { task: &task, messages: &messages, ledger: &ledger, turn: 0, max_new_tokens: 12, seed: 5 }).await.unwrap();
        assert_eq!((reply.ids, reply.logprobs), (None, None));
        assert_eq!(Some(reply.text), choice.message.content);
        assert_eq!(reply.policy_version, Some(0));
        server.shutdown().await.unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_guards_every_v1_route() {
    within(300, "the API key test", async {
        let server = server_with(64, 8, ServeOptions { api_key: Some("sekrit-key".into()), ..Default::default() }).await;
        let base = server.base_url();
        let body = r#"{"prompt": [1, 2, 3], "max_tokens": 2}"#;
        assert_error(&get_raw(&format!("{base}/models"), None).await, StatusCode::UNAUTHORIZED, "requires an API key", "no header");
        assert_error(&get_raw(&format!("{base}/models"), Some("sekrit-kez")).await, StatusCode::UNAUTHORIZED, "invalid API key", "wrong key");
        assert_error(&get_raw(&format!("{base}/models"), Some("sekrit-key-and-more")).await, StatusCode::UNAUTHORIZED, "invalid API key", "a longer key");
        assert_error(&post_raw(&format!("{base}/completions"), body, None).await, StatusCode::UNAUTHORIZED, "API key", "completions without a key");
        assert_error(&post_raw(&format!("{base}/chat/completions"), "{}", Some("nope")).await, StatusCode::UNAUTHORIZED, "invalid API key", "chat with a wrong key");
        assert_eq!(get_raw(&format!("{base}/models"), Some("sekrit-key")).await.0, StatusCode::OK);
        let (status, _, answer) = post_raw(&format!("{base}/completions"), body, Some("sekrit-key")).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(get_raw(&format!("http://{}/health", server.addr()), None).await.0, StatusCode::OK, "health needs no key");

        // The policy sends its key, and says so when it has the wrong one.
        let tok = tokenizer();
        let template = ChatTemplate::new(tok.clone()).unwrap();
        let turn = Turn::new(&template, "hi", 3, 4);
        let task = dummy_task();
        let mut cfg = EndpointConfig::new(server.base_url(), "tiny", EndpointMode::Completions);
        cfg.api_key = Some("sekrit-key".into());
        EndpointPolicy::new(cfg.clone(), tok.clone()).unwrap().act(turn.input(&task)).await.expect("the right key works");
        cfg.api_key = Some("wrong".into());
        let err = format!("{:#}", EndpointPolicy::new(cfg, tok).unwrap().act(turn.input(&task)).await.unwrap_err());
        assert!(err.contains("401") && err.contains("invalid API key") && err.contains(&base), "{err}");
        server.shutdown().await.unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_and_the_server_keeps_answering() {
    within(300, "the bad-request test", async {
        let limit = 64 << 10;
        let server = server_with(64, 8, ServeOptions { max_body_bytes: limit, ..Default::default() }).await;
        let base = server.base_url();
        let cmpl = format!("{base}/completions");
        let chat = format!("{base}/chat/completions");
        let over_context = serde_json::json!({"prompt": vec![1u32; 8192]}).to_string();
        assert!(over_context.len() < limit, "the context test must not hit the body limit");
        let oversized = format!(r#"{{"prompt": "{}"}}"#, "a".repeat(limit + 1));
        let bad = BAD_BODIES.iter().map(|(body, status, needle)| (cmpl.as_str(), body.to_string(), *status, *needle));
        let cases: Vec<(&str, String, StatusCode, &str)> = bad
            .chain([
                (cmpl.as_str(), over_context, StatusCode::BAD_REQUEST, "the model's context is 8192"),
                (cmpl.as_str(), oversized, StatusCode::PAYLOAD_TOO_LARGE, "limit of 65536 bytes"),
                (chat.as_str(), r#"{"messages": [{"role": "tool", "content": "x"}]}"#.into(), StatusCode::BAD_REQUEST, "`messages[0].role`"),
                (chat.as_str(), r#"{"messages": [{"role": "user", "content": [{"type": "text"}]}]}"#.into(), StatusCode::BAD_REQUEST, "`messages[0].content`"),
                (chat.as_str(), r#"{"messages": []}"#.into(), StatusCode::BAD_REQUEST, "at least one message"),
                (chat.as_str(), r#"{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}"#.into(), StatusCode::BAD_REQUEST, "top_logprobs"),
                (chat.as_str(), r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "max_completion_tokens": 4}"#.into(), StatusCode::BAD_REQUEST, "disagree"),
            ])
            .collect();
        for (url, body, status, needle) in cases {
            let what = format!("POST {url} {}", &body[..body.len().min(80)]);
            assert_error(&post_raw(url, body, None).await, status, needle, &what);
        }
        assert_error(&get_raw(&format!("{base}/nope"), None).await, StatusCode::NOT_FOUND, "no route GET /v1/nope", "unknown route");
        assert_error(&get_raw(&format!("http://{}/", server.addr()), None).await, StatusCode::NOT_FOUND, "no route", "the root");
        assert_error(&get_raw(&cmpl, None).await, StatusCode::METHOD_NOT_ALLOWED, "does not accept GET", "GET on a POST route");
        assert_error(&post_raw(&format!("{base}/models"), "{}", None).await, StatusCode::METHOD_NOT_ALLOWED, "does not accept POST", "POST on a GET route");

        // Still serving, and a text prompt works too.
        let (status, _, body) = post_raw(&cmpl, r#"{"prompt": "Hello", "max_tokens": 3, "logprobs": 0, "seed": 1, "return_tokens_as_token_ids": true}"#, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let resp: CompletionResponse = serde_json::from_value(body).unwrap();
        assert_eq!(resp.object, "text_completion");
        let c = &resp.choices[0];
        assert_eq!(c.token_ids.as_ref().map(Vec::len), Some(3));
        assert_eq!(c.finish_reason.as_deref(), Some("length"));
        let lp = c.logprobs.as_ref().unwrap();
        assert_eq!((lp.tokens.len(), lp.token_logprobs.len(), lp.text_offset.len()), (3, 3, 3));
        assert!(lp.top_logprobs.is_none());
        let from_strings: Vec<u32> = lp.tokens.iter().map(|t| appliance::serve::api::parse_token_id_string(t).expect("a token_id:N string")).collect();
        assert_eq!(Some(&from_strings), c.token_ids.as_ref(), "vLLM's token strings name the same ids");
        server.shutdown().await.unwrap();
    })
    .await
}

/// Completion bodies that must be refused with 400, and what the message
/// must say.
const BAD_BODIES: &[(&str, StatusCode, &str)] = &[
    ("{", StatusCode::BAD_REQUEST, "not valid JSON"),
    ("not json at all", StatusCode::BAD_REQUEST, "not valid JSON"),
    ("[1, 2, 3]", StatusCode::BAD_REQUEST, "must be a JSON object"),
    (r#"{"max_tokens": 4}"#, StatusCode::BAD_REQUEST, "prompt"),
    (r#"{"prompt": [1], "temperature": "hot"}"#, StatusCode::BAD_REQUEST, "`temperature`"),
    (r#"{"prompt": [1], "max_tokens": -4}"#, StatusCode::BAD_REQUEST, "`max_tokens`"),
    (r#"{"prompt": [1], "temperature": -1}"#, StatusCode::BAD_REQUEST, "temperature: must be a finite number >= 0"),
    (r#"{"prompt": [1], "top_p": 0}"#, StatusCode::BAD_REQUEST, "top_p"),
    (r#"{"prompt": [1], "top_k": -5}"#, StatusCode::BAD_REQUEST, "top_k"),
    (r#"{"prompt": [1], "n": 0}"#, StatusCode::BAD_REQUEST, "n: must be between 1"),
    (r#"{"prompt": [1], "temprature": 1}"#, StatusCode::BAD_REQUEST, "temprature"),
    (r#"{"prompt": [1], "stream": true}"#, StatusCode::BAD_REQUEST, "streaming is not supported"),
    (r#"{"prompt": [1], "echo": true}"#, StatusCode::BAD_REQUEST, "echo"),
    (r#"{"prompt": [1], "logprobs": 2}"#, StatusCode::BAD_REQUEST, "logprobs"),
    (r#"{"prompt": [1], "stop": ["\n"]}"#, StatusCode::BAD_REQUEST, "stop strings are not supported"),
    (r#"{"prompt": [1], "stop_token_ids": [9999]}"#, StatusCode::BAD_REQUEST, "stop_token_ids"),
    (r#"{"prompt": [1, 600]}"#, StatusCode::BAD_REQUEST, "token id 600 at position 1 is outside the model's vocabulary of 509"),
    (r#"{"prompt": [1, -3]}"#, StatusCode::BAD_REQUEST, "position 1"),
    (r#"{"prompt": []}"#, StatusCode::BAD_REQUEST, "the prompt is empty"),
    (r#"{"prompt": ""}"#, StatusCode::BAD_REQUEST, "the prompt is empty"),
    (r#"{"prompt": ["a", "b"]}"#, StatusCode::BAD_REQUEST, "batch"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_refused_at_once_and_the_policy_retries() {
    within(600, "the queue test", async {
        let server = server_with(1, 1, ServeOptions::default()).await;
        let url = format!("{}/completions", server.base_url());
        let body = r#"{"prompt": [1, 2, 3, 4], "max_tokens": 64, "temperature": 1.0}"#;
        let started = Instant::now();
        let answers = futures_util::future::join_all((0..16).map(|_| within(300, "one request", post_raw(&url, body, None)))).await;
        let (mut ok, mut busy) = (0, 0);
        for a in &answers {
            match a.0 {
                StatusCode::OK => ok += 1,
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_error(a, StatusCode::SERVICE_UNAVAILABLE, "queue is full", "a refused request");
                    assert_eq!(a.1.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
                    busy += 1;
                }
                other => panic!("unexpected status {other}: {}", a.2),
            }
        }
        eprintln!("16 concurrent requests, queue 1: {ok} answered, {busy} refused, in {:?}", started.elapsed());
        assert!(ok >= 1 && busy >= 1, "{ok} answered, {busy} refused");

        // The policy waits out a busy server (bounded), so all of these end well.
        let tok = tokenizer();
        let template = ChatTemplate::new(tok.clone()).unwrap();
        let task = dummy_task();
        let mut cfg = EndpointConfig::new(server.base_url(), "tiny", EndpointMode::Completions);
        cfg.busy_retry_for = Duration::from_secs(120);
        let policy = EndpointPolicy::new(cfg, tok).unwrap();
        let turns: Vec<Turn> = (0..4).map(|k| Turn::new(&template, "hi", k, 16)).collect();
        let replies = futures_util::future::join_all(turns.iter().map(|t| policy.act(t.input(&task)))).await;
        for r in replies {
            r.expect("a retried request is answered");
        }

        // Without retries, a busy server is an error that says so.
        let mut cfg = EndpointConfig::new(server.base_url(), "tiny", EndpointMode::Completions);
        cfg.busy_retry_for = Duration::ZERO;
        let impatient = EndpointPolicy::new(cfg, tokenizer()).unwrap();
        let long: Vec<Turn> = (0..6).map(|k| Turn::new(&template, "hi", k, 48)).collect();
        let results = futures_util::future::join_all(long.iter().map(|t| impatient.act(t.input(&task)))).await;
        let refused: Vec<String> = results.into_iter().filter_map(|r| r.err()).map(|e| format!("{e:#}")).collect();
        assert!(!refused.is_empty(), "6 concurrent turns on a queue of 1 must meet a full queue");
        assert!(refused.iter().all(|e| e.contains("503") && e.contains("queue is full")), "{refused:?}");
        server.shutdown().await.unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_server_fails_the_policy_promptly() {
    within(300, "the server-gone test", async {
        let server = server().await;
        let base = server.base_url();
        let tok = tokenizer();
        let template = ChatTemplate::new(tok.clone()).unwrap();
        let task = dummy_task();
        let turn = Turn::new(&template, "hi", 1, 4);
        let policy = endpoint(&server, EndpointMode::Completions, SamplingParams::default());
        let first = policy.act(turn.input(&task)).await;
        first.expect("the server answers while it runs");
        server.shutdown().await.unwrap();

        for attempt in 0..2 {
            let started = Instant::now();
            let err = within(20, "a request to a gone server", policy.act(turn.input(&task))).await.expect_err("the server is gone");
            let msg = format!("{err:#}");
            assert!(msg.contains(&format!("{base}/completions")), "attempt {attempt}: the error names the URL: {msg}");
            assert!(started.elapsed() < Duration::from_secs(5), "attempt {attempt}: took {:?}", started.elapsed());
        }
    })
    .await
}

/// Kills the child when dropped, so a failing test leaves no server behind.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_serves_until_terminated() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let child = Command::new(env!("CARGO_BIN_EXE_appliance"))
        .args(["serve", "--port", "0"])
        .env_remove("RUST_LOG")
        .env_remove("APPLIANCE_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let mut guard = ChildGuard(child);
    let stdout = guard.0.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(120)).expect("the server prints its address within 120 s");
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_string();
    assert!(addr.starts_with("http://127.0.0.1:"), "{addr}");

    let (status, _, body) = within(60, "GET /v1/models", get_raw(&format!("{addr}/v1/models"), None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"][0]["id"], "tiny");

    // SIGTERM: a graceful exit with status 0.
    #[cfg(unix)]
    {
        let pid = guard.0.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = guard.0.try_wait().expect("wait on the child") {
                break s;
            }
            assert!(Instant::now() < deadline, "the server did not exit within 30 s of SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "exit status after SIGTERM: {status}");
    }
}
