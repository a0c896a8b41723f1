//! Integration tests for `model::tokenizer` and `model::chat`.
//!
//! Owns the checks against the real Qwen2.5 tokenizer (reference ids from HF
//! tokenizers, fixtures under ../shared) and the reproducibility of the
//! committed tiny tokenizer. Does not test sampling or model weights.

use std::path::PathBuf;
use std::sync::OnceLock;

use appliance::model::chat::{ChatTemplate, Message, Rendered, Source, QWEN_DEFAULT_SYSTEM};
use appliance::model::tokenizer::{build_tiny_tokenizer_json, Tokenizer, TINY_TOKENIZER_JSON};

const QWEN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/qwen-tokenizer");

/// Path of a Qwen fixture; fails the test loudly when ../shared is missing.
fn fixture(name: &str) -> PathBuf {
    let p = PathBuf::from(QWEN_DIR).join(name);
    if !p.is_file() {
        panic!(
            "fixture {} is missing: ../shared (the shared fixtures directory next to the crate) \
             must be present for these tests; they do not pass without it",
            p.display()
        );
    }
    p
}

fn qwen() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_file(fixture("tokenizer.json")).expect("load Qwen tokenizer"))
}

fn tiny() -> Tokenizer {
    Tokenizer::tiny().expect("embedded tiny tokenizer loads")
}

// ---------------------------------------------------------------- Qwen ----

#[test]
fn qwen_ids_match_hf_reference_exactly() {
    let tok = qwen();
    let text = std::fs::read_to_string(fixture("reference_ids.jsonl")).expect("read reference_ids.jsonl");
    let mut n = 0;
    for (lineno, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).expect("reference line is JSON");
        let s = v["text"].as_str().expect("text field");
        let want: Vec<u32> = serde_json::from_value(v["ids"].clone()).expect("ids field");
        let got = tok.encode(s).unwrap();
        assert_eq!(got, want, "line {}: ids differ for {:?}", lineno + 1, s);
        assert_eq!(tok.decode(&got).unwrap(), s, "line {}: decode round trip", lineno + 1);
        n += 1;
    }
    assert!(n >= 10, "expected at least 10 reference lines, got {n}");
}

#[test]
fn qwen_special_token_ids() {
    let tok = qwen();
    assert_eq!(tok.im_start().unwrap(), 151644);
    assert_eq!(tok.im_end().unwrap(), 151645);
    assert_eq!(tok.endoftext().unwrap(), 151643);
    assert_eq!(tok.token_id("<|im_end|>"), Some(151645));
    assert_eq!(tok.token_id("<|no_such_token|>"), None);
    assert_eq!(tok.stop_ids(), vec![151645, 151643]);
    // vocab_size = highest id + 1, counting added tokens (151643 BPE tokens
    // plus the fixture's added tokens); the model pads its table to 151936.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("tokenizer.json")).unwrap()).unwrap();
    let max_added = json["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(max_added >= 151645);
    assert_eq!(tok.vocab_size() as u64, max_added + 1);
    tok.check_fits_model(151936, "Qwen2.5-0.5B").unwrap();
    let msg = format!("{:#}", tok.check_fits_model(512, "tiny").unwrap_err());
    assert!(msg.contains(&format!("ids up to {max_added}")) && msg.contains("vocab_size 512"), "{msg}");
}

fn conversation() -> Vec<Message> {
    vec![
        Message::system("You are a careful software engineer. Use the tools to fix the issue."),
        Message::user(
            "Issue: `clamp(-5, -10, 10)` returns -10.\n\nTraceback (most recent call last):\n  \
             File \"/testbed/src/utils.py\", line 3, in clamp\nAssertionError\n",
        ),
        Message::assistant("Let me look at the file.\n```\nopen src/utils.py 1\n```"),
    ]
}

/// The ChatML string Qwen's Jinja template would produce (no default system).
fn format_chatml(messages: &[Message], add_generation_prompt: bool) -> String {
    let mut s = String::new();
    for m in messages {
        s.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role.as_str(), m.content));
    }
    if add_generation_prompt {
        s.push_str("<|im_start|>assistant\n");
    }
    s
}

fn check_render(tok: &Tokenizer) {
    let t = ChatTemplate::new(tok.clone()).unwrap();
    let msgs = conversation();
    for gen in [false, true] {
        let r = t.render(&msgs, gen).unwrap();
        r.check().unwrap();
        let whole = format_chatml(&msgs, gen);
        // `encode` recognizes the special-token strings, so this is the
        // whole-string tokenization with <|im_start|>/<|im_end|> as ids.
        let want = tok.encode(&whole).unwrap();
        assert_eq!(r.ids, want, "{}: segment-wise render differs from whole-string encode", tok.origin());
        assert_eq!(tok.decode(&r.ids).unwrap(), whole);

        assert_eq!(r.ids[0], tok.im_start().unwrap());
        assert_eq!(r.source[0], Source::Template);
        let n = |s: &str| tok.encode(s).unwrap().len();
        assert_eq!(r.count(Source::System), n(&msgs[0].content));
        assert_eq!(r.count(Source::Task), n(&msgs[1].content));
        // The assistant's content and its closing <|im_end|> (how it ends a turn).
        assert_eq!(r.count(Source::Sampled), n(&msgs[2].content) + 1);
        assert_eq!(r.count(Source::Observation), 0);
        let template = 3 + 2 + n("system\n") + n("user\n") + n("assistant\n") + 3 * n("\n")
            + if gen { 1 + n("assistant\n") } else { 0 };
        assert_eq!(r.count(Source::Template), template);
        // Every special token is scaffolding, except the assistant's <|im_end|>.
        let assistant_end = r.ids.iter().zip(&r.source).position(|(id, s)| *s == Source::Sampled && *id == t.im_end());
        for (i, (id, src)) in r.ids.iter().zip(&r.source).enumerate() {
            if *id == t.im_start() || (*id == t.im_end() && Some(i) != assistant_end) {
                assert_eq!(*src, Source::Template);
            }
        }
        assert!(assistant_end.is_some(), "the assistant's <|im_end|> is Sampled");
        if gen {
            let tail = tok.encode("<|im_start|>assistant\n").unwrap();
            assert!(r.ids.ends_with(&tail));
        }
    }
}

#[test]
fn qwen_chatml_render_equals_whole_string_encoding() {
    check_render(qwen());
}

#[test]
fn tiny_chatml_render_equals_whole_string_encoding() {
    check_render(&tiny());
}

#[test]
fn qwen_default_system_prompt() {
    let t = ChatTemplate::new(qwen().clone()).unwrap().with_default_system(true);
    let msgs = [Message::user("hello")];
    let r = t.render(&msgs, true).unwrap();
    let whole = format!(
        "<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(r.ids, qwen().encode(&whole).unwrap());
    assert_eq!(r.count(Source::System), qwen().encode(QWEN_DEFAULT_SYSTEM).unwrap().len());
}

fn check_ledger_prefix(tok: &Tokenizer) {
    let t = ChatTemplate::new(tok.clone()).unwrap();
    let issue = "Fix the bug in utils.py: clamp ignores `low`.";
    let mut r = t.render(&[Message::system("Be precise."), Message::user(issue)], true).unwrap();
    let mut snapshots: Vec<Rendered> = vec![r.clone()];

    // A sampled reply that stopped on <|im_end|>; the ids are taken as-is.
    let mut reply = tok.encode("```\ncat src/utils.py\n```").unwrap();
    reply.push(t.im_end());
    t.append_sampled(&mut r, &reply).unwrap();
    snapshots.push(r.clone());

    let obs = "def clamp(x, low, high):\n    if x < 0:\n        return low\n";
    t.append_user_turn(&mut r, obs, Source::Observation).unwrap();
    snapshots.push(r.clone());

    let reply2 = tok.encode("Found it.").unwrap();
    t.append_sampled(&mut r, &reply2).unwrap();
    // Cut off before <|im_end|>: the caller closes the turn explicitly.
    t.close_turn(&mut r).unwrap();
    snapshots.push(r.clone());
    t.append_user_turn(&mut r, "exit code 0", Source::Observation).unwrap();

    r.check().unwrap();
    for s in &snapshots {
        assert_eq!(&r.ids[..s.len()], &s.ids[..], "earlier ids must be untouched");
        assert_eq!(&r.source[..s.len()], &s.source[..], "earlier tags must be untouched");
    }
    // The sampled ids are exactly what was appended, tagged Sampled.
    let start = snapshots[0].len();
    assert_eq!(&r.ids[start..start + reply.len()], &reply[..]);
    assert!(r.source[start..start + reply.len()].iter().all(|&s| s == Source::Sampled));
    assert_eq!(r.count(Source::Sampled), reply.len() + reply2.len());
    assert_eq!(
        r.count(Source::Observation),
        tok.encode(obs).unwrap().len() + tok.encode("exit code 0").unwrap().len()
    );
    assert_eq!(r.count(Source::Task), tok.encode(issue).unwrap().len());

    // The whole ledger is the ChatML string of the conversation, token for token.
    let whole = format!(
        "<|im_start|>system\nBe precise.<|im_end|>\n<|im_start|>user\n{issue}<|im_end|>\n\
         <|im_start|>assistant\n```\ncat src/utils.py\n```<|im_end|>\n\
         <|im_start|>user\n{obs}<|im_end|>\n<|im_start|>assistant\nFound it.<|im_end|>\n\
         <|im_start|>user\nexit code 0<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(r.ids, tok.encode(&whole).unwrap());
}

#[test]
fn qwen_append_turns_keep_prefix() {
    check_ledger_prefix(qwen());
}

#[test]
fn tiny_append_turns_keep_prefix() {
    check_ledger_prefix(&tiny());
}

// ---------------------------------------------------------------- tiny ----

#[test]
fn tiny_committed_file_is_reproducible() {
    let corpus_path = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/tiny/corpus.txt");
    let corpus = std::fs::read_to_string(corpus_path).expect("configs/tiny/corpus.txt is committed");
    let built = build_tiny_tokenizer_json(&corpus).unwrap();
    assert!(
        built == TINY_TOKENIZER_JSON,
        "configs/tiny/tokenizer.json is stale: run `cargo run --example make_tiny_tokenizer`"
    );
}

#[test]
fn tiny_layout_and_fit() {
    let tok = tiny();
    assert_eq!(tok.vocab_size(), 509);
    tok.check_fits_model(512, "tiny default model").unwrap();
    // The 256 byte tokens come first.
    let mut byte_ids: Vec<u32> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .map(|c| tok.token_id(&c.to_string()).expect("every byte has a token"))
        .collect();
    byte_ids.sort();
    assert_eq!(byte_ids, (0..256).collect::<Vec<u32>>());
    assert_eq!(tok.endoftext().unwrap(), 506);
    assert_eq!(tok.im_start().unwrap(), 507);
    assert_eq!(tok.im_end().unwrap(), 508);
    assert_eq!(tok.stop_ids(), vec![508, 506]);

    let err = tok.check_fits_model(100, "tiny-100").unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("508") && msg.contains("100") && msg.contains("tiny-100") && msg.contains("configs/tiny"),
        "{msg}"
    );
}

#[test]
fn tiny_round_trips_unicode_and_code() {
    let tok = tiny();
    let texts = [
        "def add(a, b):\n    return a + b\n",
        "$ python -m pytest tests/test_utils.py -x -q 2>&1 | tail -n 20\n",
        "Unicode: naïve café, Привет мир, 你好世界, こんにちは, 🤖🚀",
        "\ttabs\r\nand CRLF\r\n   trailing   ",
        "<|im_start|>user\nhi<|im_end|>\n",
        "",
    ];
    for s in texts {
        let ids = tok.encode(s).unwrap();
        assert!(ids.iter().all(|&i| (i as usize) < 512));
        assert_eq!(tok.decode(&ids).unwrap(), s);
    }
    // Merges were actually learned: common code compresses below one token per byte.
    let code = "def parse(data):\n    return data\n";
    assert!(tok.encode(code).unwrap().len() < code.len() / 2);
}

#[test]
fn garbage_tokenizer_file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();

    let truncated = dir.path().join("truncated.json");
    std::fs::write(&truncated, &TINY_TOKENIZER_JSON[..TINY_TOKENIZER_JSON.len() / 2]).unwrap();
    let msg = format!("{:#}", Tokenizer::from_file(&truncated).unwrap_err());
    assert!(msg.contains("truncated.json") && msg.contains("not valid JSON"), "{msg}");

    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, b"\x00\xff not a tokenizer").unwrap();
    let msg = format!("{:#}", Tokenizer::from_file(&garbage).unwrap_err());
    assert!(msg.contains("garbage.json"), "{msg}");

    let no_model = dir.path().join("no_model.json");
    std::fs::write(&no_model, br#"{"version": "1.0", "added_tokens": []}"#).unwrap();
    let msg = format!("{:#}", Tokenizer::from_file(&no_model).unwrap_err());
    assert!(msg.contains("no_model.json") && msg.contains("model"), "{msg}");

    let missing = dir.path().join("does_not_exist.json");
    let msg = format!("{:#}", Tokenizer::from_file(&missing).unwrap_err());
    assert!(msg.contains("does_not_exist.json"), "{msg}");
}

#[test]
fn template_needs_chatml_tokens() {
    // A byte-level tokenizer without <|im_start|> cannot be used for chat.
    let mut v: serde_json::Value = serde_json::from_str(TINY_TOKENIZER_JSON).unwrap();
    v["added_tokens"] = serde_json::json!([]);
    let tok = Tokenizer::from_json_bytes(&serde_json::to_vec(&v).unwrap(), "plain-bpe").unwrap();
    assert_eq!(tok.vocab_size(), 506);
    assert!(tok.stop_ids().is_empty());
    let msg = format!("{:#}", ChatTemplate::new(tok).unwrap_err());
    assert!(msg.contains("plain-bpe") && msg.contains("<|im_start|>"), "{msg}");
}
