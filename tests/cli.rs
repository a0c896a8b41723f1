//! The binary end to end: real files in temporary directories, the real
//! fixtures, and the exit codes and messages a user sees.

use appliance::model::checkpoint::{self, Checkpoint};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_appliance"));
    c.env_remove("RUST_LOG");
    c
}

fn shared(rel: &str) -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")).join(rel);
    assert!(p.exists(), "missing {}: these tests need ../shared beside the project", p.display());
    p
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A failure a user can act on: exit 1 (not a panic's 101) and a message.
fn assert_clean_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "want exit 1, got {:?}; stderr:\n{err}", o.status.code());
    assert!(!err.contains("panicked"), "panic reached the user:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

#[test]
fn version_and_help() {
    let o = run(&["--version"]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), format!("appliance {}", env!("CARGO_PKG_VERSION")));
    let o = run(&["--help"]);
    let out = String::from_utf8_lossy(&o.stdout);
    for cmd in ["generate", "score", "tokenize", "demo"] {
        assert!(out.contains(cmd), "help lacks {cmd}");
    }
}

#[test]
fn tokenize_prints_the_reference_ids() {
    let line = std::fs::read_to_string(shared("fixtures/qwen-tokenizer/reference_ids.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    let tok = shared("fixtures/qwen-tokenizer/tokenizer.json");
    let o = run(&["tokenize", "--tokenizer", tok.to_str().unwrap(), first["text"].as_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ids: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ids, first["ids"]);
}

#[test]
fn score_writes_the_fixture_layout_and_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("scored.safetensors");
    let model = shared("fixtures/qwen2-tiny");
    let ids = model.join("reference.safetensors");
    let o = run(&["score", "--model", model.to_str().unwrap(), "--ids", ids.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ours = Checkpoint::open(&out).unwrap();
    let reference = Checkpoint::open(&ids).unwrap();
    assert_eq!(ours.get_i64("input_ids").unwrap(), reference.get_i64("input_ids").unwrap());
    for (name, tol) in [("logits", 1e-4f32), ("next_token_logprobs", 1e-4), ("next_token_entropy", 1e-4), ("loss", 1e-5)] {
        let a = ours.get_f32(name).unwrap();
        let b = reference.get_f32(name).unwrap();
        assert_eq!(a.shape, b.shape, "{name}");
        let d = a.data.iter().zip(&b.data).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(d < tol, "{name} differs by {d}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "only the output file remains: {leftovers:?}");
}

#[test]
fn demo_learns_saves_and_the_saved_model_generates() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    let rd = dir.path().join("run");
    let o = run(&["demo", "--steps", "100", "--out", out.to_str().unwrap(), "--run-dir", rd.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}\n{}", stdout, stderr(&o));
    assert!(stdout.contains("2/2 replies reproduced"), "{stdout}");
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(out.join(f).exists(), "{f} saved");
    }
    // One metrics record per step, with the loss falling and device data.
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(rd.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(metrics.len(), 100);
    assert!(metrics[99]["loss"].as_f64().unwrap() < metrics[0]["loss"].as_f64().unwrap() / 10.0);
    assert!(metrics[0]["device"]["source"].is_string());
    // The saved directory is a model directory `generate` accepts, and the
    // learned reply comes back through the CLI too.
    let o = run(&[
        "generate", "--model", out.to_str().unwrap(), "--temperature", "0",
        "--prompt", "Issue: tests in tests/test_ops.py fail. Run them first.", "--max-new-tokens", "40",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Without the demo's system prompt the reply may differ; it must still
    // be text and report its speed.
    assert!(stderr(&o).contains("tokens/s"), "{}", stderr(&o));
}

#[test]
fn generate_on_the_embedded_default_prints_tokens_per_second() {
    let o = run(&["generate", "--prompt", "hello", "--max-new-tokens", "8", "--seed", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("tokens/s"));
    // Seeded: the same command prints the same completion.
    let again = run(&["generate", "--prompt", "hello", "--max-new-tokens", "8", "--seed", "3"]);
    assert_eq!(o.stdout, again.stdout);
}

fn copy_fixture(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(shared("fixtures/qwen2-tiny").join(f), to.join(f)).unwrap();
    }
}

#[test]
fn bad_config_file_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[generate]\nmax_new_tokens = 4\ntemperatur = 0.5\n").unwrap();
    let o = run(&["--config", cfg.to_str().unwrap(), "generate", "--prompt", "x"]);
    assert_clean_error(&o, &["bad.toml", "line 3", "temperatur"]);
}

#[test]
fn missing_config_key_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    copy_fixture(&m);
    let text = std::fs::read_to_string(m.join("config.json")).unwrap().replace("\"num_hidden_layers\": 2,", "");
    std::fs::write(m.join("config.json"), text).unwrap();
    let ids = shared("fixtures/qwen2-tiny/reference.safetensors");
    let o = run(&["score", "--model", m.to_str().unwrap(), "--ids", ids.to_str().unwrap(), "--out", "/dev/null"]);
    assert_clean_error(&o, &["config.json", "num_hidden_layers"]);
}

#[test]
fn mismatched_tensor_shape_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    copy_fixture(&m);
    // Say the MLP is wider than the checkpoint's tensors.
    let text = std::fs::read_to_string(m.join("config.json")).unwrap().replace("\"intermediate_size\": 176", "\"intermediate_size\": 180");
    std::fs::write(m.join("config.json"), text).unwrap();
    let ids = shared("fixtures/qwen2-tiny/reference.safetensors");
    let o = run(&["score", "--model", m.to_str().unwrap(), "--ids", ids.to_str().unwrap(), "--out", "/dev/null"]);
    assert_clean_error(&o, &["mlp.gate_proj.weight", "[176, 64]", "[180, 64]"]);
}

#[test]
fn truncated_weights_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    copy_fixture(&m);
    let bytes = std::fs::read(m.join("model.safetensors")).unwrap();
    std::fs::write(m.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let ids = shared("fixtures/qwen2-tiny/reference.safetensors");
    let o = run(&["score", "--model", m.to_str().unwrap(), "--ids", ids.to_str().unwrap(), "--out", "/dev/null"]);
    assert_clean_error(&o, &["model.safetensors"]);
}

#[test]
fn tokenizer_that_does_not_fit_the_model_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    copy_fixture(&m);
    // The Qwen tokenizer has ids up to 151668; this model's vocabulary is 512.
    std::fs::copy(shared("fixtures/qwen-tokenizer/tokenizer.json"), m.join("tokenizer.json")).unwrap();
    let o = run(&["generate", "--model", m.to_str().unwrap(), "--prompt", "x"]);
    assert_clean_error(&o, &["512", "tokenizer"]);
}

#[test]
fn out_of_vocabulary_ids_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ids = dir.path().join("ids.safetensors");
    checkpoint::save_i64(&ids, "input_ids", &[1, 3], &[1, 2, 9999]).unwrap();
    let o = run(&["score", "--ids", ids.to_str().unwrap(), "--out", dir.path().join("o.safetensors").to_str().unwrap()]);
    assert_clean_error(&o, &["input_ids", "9999", "[0, 2]"]);
}

#[test]
fn gpus_reports_no_driver_with_its_own_exit_code() {
    let o = run(&["gpus"]);
    if appliance::monitor::gpu::open().is_ok() {
        assert!(o.status.success(), "{}", stderr(&o));
        return;
    }
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("no NVIDIA driver"), "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn selftest_without_a_gpu_says_so() {
    if appliance::device::cuda::available() {
        return;
    }
    let o = run(&["selftest"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("no GPU"), "{}", stderr(&o));
}

#[test]
fn bench_model_json_has_tokens_per_s_and_compare_gives_ratios() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.json");
    let o = run(&["bench", "model", "--repeats", "1", "--json", "--out", first.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 10);
    let tokens: Vec<&serde_json::Value> = rows.iter().filter(|r| r["unit"] == "tokens/s").collect();
    assert_eq!(tokens.len(), 4);
    for r in tokens {
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["util_mean_pct"].is_number() || r["util_mean_pct"].is_null());
    }
    // The engine's row-invariant product against gemm's, a ratio per shape.
    let ratios = rows.iter().filter(|r| r["unit"] == "x" && r["name"].as_str().unwrap().starts_with("row-invariant / gemm")).count();
    assert_eq!(ratios, 2, "{rows:#?}");
    assert!(v["hardware"]["cores"].as_u64().unwrap() >= 1);
    assert_eq!(std::fs::read(&first).unwrap(), o.stdout.trim_ascii_end(), "--out holds the same report");
    let o = run(&["bench", "kernels", "--repeats", "1", "--compare", first.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("(new)"), "kernel rows are new against a model-only baseline");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"rows\": 3}").unwrap();
    let o = run(&["bench", "model", "--compare", bad.to_str().unwrap()]);
    assert_clean_error(&o, &["bad.json", "bench report"]);
}

#[test]
fn rollout_and_eval_refuse_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.jsonl");
    let o = run(&["rollout", "--policy", "endpoint", "--out", out.to_str().unwrap()]);
    assert_clean_error(&o, &["--policy endpoint needs --endpoint URL"]);
    let o = run(&["rollout", "--samples", "0", "--policy", "gold", "--out", out.to_str().unwrap()]);
    assert_clean_error(&o, &["--samples must be at least 1"]);
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[agent]\nmax_turns = 0\n").unwrap();
    let o = run(&["--config", cfg.to_str().unwrap(), "rollout", "--policy", "gold", "--out", out.to_str().unwrap()]);
    assert_clean_error(&o, &["c.toml", "[agent] max_turns"]);
    std::fs::write(&cfg, "[agent]\nmax_turn = 3\n").unwrap();
    let o = run(&["--config", cfg.to_str().unwrap(), "eval", "--from", out.to_str().unwrap()]);
    assert_clean_error(&o, &["c.toml", "line 2", "max_turn"]);
    // a trajectory file with a bad line names the line and the field
    std::fs::write(&out, "{\"format_version\": \"one\"}\n").unwrap();
    let o = run(&["eval", "--from", out.to_str().unwrap()]);
    assert_clean_error(&o, &["t.jsonl: line 1", "format_version"]);
    // nothing was written by the refused rollouts
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"format_version\": \"one\"}\n");
}

#[test]
fn plan_prints_the_memory_table_and_refuses_a_bad_model_dir() {
    let o = run(&["plan", "--preset", "qwen2.5-7b", "--seq", "131072"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in ["qwen2.5-7b", "131072 tokens", "bf16 weights", "fp32 master weights", "AdamW m", "saved activations", "total", "fits in 80 GiB: no", "would add 148.50 GiB", "saving 148.25 GiB"] {
        assert!(out.contains(needle), "plan lacks {needle:?}:\n{out}");
    }
    // At 65,536 tokens, sharded over 8 GPUs, it fits (131,072 needs the
    // sequence split too); the JSON carries the same numbers.
    let o = run(&["plan", "--preset", "qwen2.5-7b", "--seq", "65536", "--gpus", "8", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["tokens"], 65536);
    assert_eq!(j["fits"], true);
    assert_eq!(j["materialized_logits_bytes"], 65536u64 * 152064 * 8);
    // The saving is the logits less the fused loss's workspace (its
    // buffers beyond the 24 bytes per token any loss needs).
    let workspace = j["fused_loss_bytes"].as_u64().unwrap() - 65536 * 24;
    assert_eq!(j["fused_loss_saving_bytes"].as_u64().unwrap(), 65536u64 * 152064 * 8 - workspace);
    let o = run(&["plan", "--preset", "qwen2.5-7b", "--seq", "131072", "--gpus", "8", "--json"]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["fits"], false);
    let sum: u64 = j["components"].as_array().unwrap().iter().map(|c| c["bytes"].as_u64().unwrap()).sum();
    assert_eq!(j["total_bytes"].as_u64().unwrap(), sum);
    // A model directory is read for its config.json only.
    let o = run(&["plan", "--model", shared("fixtures/qwen2-tiny").to_str().unwrap(), "--seq", "64"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("fits in 80 GiB: yes"));
    let dir = tempfile::tempdir().unwrap();
    let o = run(&["plan", "--model", dir.path().to_str().unwrap()]);
    assert_clean_error(&o, &["config.json", "planning memory"]);
    let o = run(&["plan", "--model", dir.path().join("nope").to_str().unwrap()]);
    assert_clean_error(&o, &["nope", "not a directory"]);
    let o = run(&["plan", "--preset", "tiny", "--gpus", "0"]);
    assert_clean_error(&o, &["at least 1 GPU"]);
    let o = run(&["plan", "--preset", "tiny", "--chunk", "100"]);
    assert_clean_error(&o, &["multiple of 8"]);
}
