//! Rejection fine-tuning end to end through the binary: trajectory files in,
//! a model directory out that loads and scores the kept replies better.

use appliance::agent::trajectory::{Exit, JsonlWriter, Ledger, ReplyEnd, Span, Timing, Trajectory, Turn, FORMAT_VERSION};
use appliance::model::chat::{ChatTemplate, Message, Source};
use appliance::model::pretrained;
use appliance::model::qwen2::Batch;
use appliance::model::tokenizer::Tokenizer;
use std::process::Command;

fn trajectory(reply: &str, reward: f64) -> Trajectory {
    let t = ChatTemplate::new(Tokenizer::tiny().unwrap()).unwrap().with_special_in_content(false);
    let messages = vec![Message::system("You fix bugs."), Message::user("The add function subtracts."), Message::assistant(reply)];
    let r = t.render(&messages, false).unwrap();
    let start = r.source.iter().position(|&s| s == Source::Sampled).unwrap();
    let end = r.source.iter().rposition(|&s| s == Source::Sampled).unwrap() + 1;
    Trajectory {
        format_version: FORMAT_VERSION,
        instance_id: "t".into(),
        sample: 0,
        seed: 0,
        policy: "test".into(),
        ledger: Ledger::from_rendered(&r),
        messages,
        turns: vec![Turn::new(Span { start, end }, ReplyEnd::Stop)],
        exit: Exit::Submitted,
        exit_detail: String::new(),
        patch: Some(String::new()),
        grade: None,
        reward: Some(reward),
        final_reward: Some(reward),
        attempts: 1,
        timing: Timing::default(),
    }
}

/// Mean log-prob of the assistant tokens of `t` under the model in `dir`.
fn score(dir: Option<&std::path::Path>, t: &Trajectory) -> f64 {
    let p = pretrained::load(dir, 0).unwrap();
    let mut m = p.model;
    let b = Batch::from_sequences(&[t.ledger.ids.clone()]);
    let (targets, _) = b.next_token_targets();
    let st = m.forward(&b).unwrap();
    let lp = m.token_logprobs(&st, &targets);
    let idx: Vec<usize> = (1..t.ledger.len()).filter(|&i| t.ledger.source[i] == Source::Sampled).collect();
    idx.iter().map(|&i| lp.logprob[i - 1] as f64).sum::<f64>() / idx.len() as f64
}

#[test]
fn rft_trains_on_solved_trajectories_only_and_writes_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.jsonl");
    let good = trajectory("Fix it.\n```\nreplace 'a - b' 'a + b'\n```", 1.0);
    let bad = trajectory("zzzz qqqq", 0.0);
    let mut w = JsonlWriter::open(&file).unwrap();
    for _ in 0..4 {
        w.append(&good).unwrap();
        w.append(&bad).unwrap();
    }
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[rft]\nlr = 2e-3\nbatch = 2\nepochs = 5\nwarmup_steps = 1\n").unwrap();
    let out = dir.path().join("model");
    let o = Command::new(env!("CARGO_BIN_EXE_appliance")).args(["--config", cfg.to_str().unwrap(), "rft", "--from", file.to_str().unwrap(), "--out", out.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("8 trajectories: 4 solved and kept, 4 unsolved"), "{err}");
    let (before, after) = (score(None, &good), score(Some(&out), &good));
    assert!(after > before + 1.0, "the kept reply got likelier: {before} -> {after}");
    let (bb, ba) = (score(None, &bad), score(Some(&out), &bad));
    assert!(ba - bb < after - before, "the unsolved reply was not the one trained on");

    // nothing solved: a clear error, and no model directory
    let only_bad = dir.path().join("bad.jsonl");
    JsonlWriter::open(&only_bad).unwrap().append(&bad).unwrap();
    let out2 = dir.path().join("model2");
    let o = Command::new(env!("CARGO_BIN_EXE_appliance")).args(["rft", "--from", only_bad.to_str().unwrap(), "--out", out2.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no solved trajectory"));
    assert!(!out2.exists());
}
