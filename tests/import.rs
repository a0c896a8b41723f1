//! Importing SWE-agent trajectories end to end: a small file in the format
//! of nebius/SWE-agent-trajectories, written here, converted, and read back
//! as trajectory records; and the `appliance import` command once.

use appliance::agent::command::FormatError;
use appliance::agent::import::{import, ImportOptions};
use appliance::agent::trajectory::{read_trajectories, Exit, Trajectory};
use appliance::model::chat::{ChatTemplate, Message, Role, Source};
use appliance::model::tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const SYSTEM: &str = "SETTING: You are an autonomous programmer, and you're working directly in the command line.";

fn sys() -> Value {
    json!({"role": "system", "text": null, "system_prompt": SYSTEM, "mask": false, "cutoff_date": "01.01.2023"})
}

fn user(text: &str) -> Value {
    json!({"role": "user", "text": text, "system_prompt": null, "mask": false, "cutoff_date": null})
}

fn ai(text: &str) -> Value {
    json!({"role": "ai", "text": text, "system_prompt": null, "mask": true, "cutoff_date": null})
}

fn row(id: &str, model: &str, target: bool, exit: &str, trajectory: Vec<Value>) -> Value {
    json!({
        "instance_id": id,
        "model_name": model,
        "target": target,
        "trajectory": trajectory,
        "exit_status": exit,
        "generated_patch": format!("diff --git a/{id}.py b/{id}.py\n"),
        "eval_logs": "Will execute following command for apply_patch: ...",
    })
}

/// Four rows: a clean success, an unsuccessful attempt of the same task
/// with a format-error turn, a success of another task whose task text
/// comes in two user turns, and (line 4) a row with a bad role.
fn fixture_rows() -> Vec<Value> {
    vec![
        row(
            "owner__repo-1",
            "swe-agent-llama-70b",
            true,
            "submitted",
            vec![
                sys(),
                user("We're currently solving the following issue:\nadd() subtracts."),
                ai("Let's look at the file.\n```\nopen src/calc.py\n```"),
                user("[File: src/calc.py (2 lines total)]\n1:def add(a, b):\n2:    return a - b\n(Open file: src/calc.py)\n(Current directory: /repo)\nbash-$"),
                ai("Fix the operator.\n```\nedit 2:2\n    return a + b\nend_of_edit\n```"),
                user("File updated.\n(Open file: src/calc.py)\n(Current directory: /repo)\nbash-$"),
                ai("Done.\n```\nsubmit\n```"),
            ],
        ),
        row(
            "owner__repo-1",
            "swe-agent-llama-8b",
            false,
            "submitted (exit_cost)",
            vec![
                sys(),
                user("We're currently solving the following issue:\nadd() subtracts."),
                ai("I think the bug is in add, let me think more about it."),
                user("Your output was not formatted correctly. Put exactly one command in a fenced block."),
                ai("```\nls\n```\nand\n```\ncat src/calc.py\n```"),
                user("Your output contained more than one command."),
                ai("```\nls\n```"),
                user("src\n(Open file: n/a)\n(Current directory: /repo)\nbash-$"),
            ],
        ),
        row(
            "owner__repo-2",
            "swe-agent-llama-70b",
            true,
            "submitted",
            vec![sys(), user("Here is a demonstration: ..."), user("Now the issue: mul() adds."), ai("```\nsubmit\n```")],
        ),
        row("owner__repo-3", "swe-agent-llama-70b", true, "submitted", vec![sys(), user("issue"), json!({"role": "robot", "text": "beep"})]),
    ]
}

fn write_jsonl(path: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn template() -> ChatTemplate {
    ChatTemplate::new(Tokenizer::tiny().unwrap()).unwrap()
}

fn skip_invalid() -> ImportOptions {
    ImportOptions { skip_invalid: true, ..Default::default() }
}

/// The fixture imported with invalid rows skipped, read back.
fn imported(dir: &Path) -> Vec<Trajectory> {
    let from = dir.join("rows.jsonl");
    write_jsonl(&from, &fixture_rows());
    let out = dir.join("out/trajectories.jsonl");
    let report = import(&from, &out, &template(), &skip_invalid()).unwrap();
    assert_eq!((report.rows, report.written, report.skipped, report.successful), (4, 3, 1, 2));
    assert!(report.skipped_errors[0].contains("line 4, field `trajectory[2].role`"), "{:?}", report.skipped_errors);
    read_trajectories(&out).unwrap().items
}

/// The ChatML text of a conversation, written out by hand.
fn chatml(messages: &[Message]) -> String {
    messages.iter().map(|m| format!("<|im_start|>{}\n{}<|im_end|>\n", m.role.as_str(), m.content)).collect()
}

fn decode(ids: &[u32]) -> String {
    Tokenizer::tiny().unwrap().decode(ids).unwrap()
}

#[test]
fn the_ledger_decodes_to_the_chatml_rendering_of_the_messages() {
    let dir = tempfile::tempdir().unwrap();
    let trajs = imported(dir.path());
    for t in &trajs {
        assert_eq!(decode(&t.ledger.ids), chatml(&t.messages), "{}", t.instance_id);
        assert_eq!(t.messages[0], Message::system(SYSTEM), "the system prompt comes from system_prompt");
    }
    // two user turns in a row became one message
    let joined = &trajs[2];
    assert_eq!(joined.messages[1], Message::user("Here is a demonstration: ...\nNow the issue: mul() adds."));
    assert_eq!(joined.messages.len(), 3);
}

#[test]
fn sampled_tokens_are_the_assistant_replies_and_their_im_end() {
    let dir = tempfile::tempdir().unwrap();
    for t in imported(dir.path()) {
        let replies: Vec<&Message> = t.messages.iter().filter(|m| m.role == Role::Assistant).collect();
        assert_eq!(t.turns.len(), replies.len());
        let mut in_a_reply = vec![false; t.ledger.len()];
        for (turn, m) in t.turns.iter().zip(&replies) {
            let ids = &t.ledger.ids[turn.reply.start..turn.reply.end];
            assert_eq!(decode(ids), format!("{}<|im_end|>", m.content));
            assert!(turn.retokenized);
            assert_eq!(turn.policy_version, None);
            in_a_reply[turn.reply.start..turn.reply.end].iter_mut().for_each(|x| *x = true);
        }
        // every Sampled token lies in a reply, and only those
        assert_eq!(t.sampled_mask(), in_a_reply);
        assert!(t.ledger.logprob.iter().all(Option::is_none) && t.ledger.version.iter().all(Option::is_none));
        let sampled: Vec<u32> = t.ledger.ids.iter().zip(&t.ledger.source).filter(|(_, &s)| s == Source::Sampled).map(|(&i, _)| i).collect();
        let want: String = replies.iter().map(|m| format!("{}<|im_end|>", m.content)).collect();
        assert_eq!(decode(&sampled), want);
        // each observation span is the whole user message after the reply
        for (k, turn) in t.turns.iter().enumerate() {
            let Some(obs) = turn.observation else { continue };
            let text = decode(&t.ledger.ids[obs.start..obs.end]);
            let user_after = &t.messages[2 + 2 * k + 1];
            assert_eq!(text, format!("<|im_start|>user\n{}<|im_end|>\n", user_after.content));
        }
    }
}

#[test]
fn the_rft_mask_leaves_out_format_error_turns() {
    let dir = tempfile::tempdir().unwrap();
    let trajs = imported(dir.path());
    let t = &trajs[1];
    assert_eq!(t.turns[0].format_error, Some(FormatError::NotExtractable));
    assert_eq!(t.turns[1].format_error, Some(FormatError::MultipleCommands { count: 2 }));
    assert_eq!(t.turns[2].format_error, None);
    assert_eq!(t.turns[2].command.as_deref(), Some("ls"));
    assert_eq!(t.turns[0].command, None);
    let rft = t.rft_mask();
    let sampled = t.sampled_mask();
    for (k, turn) in t.turns.iter().enumerate() {
        let span = turn.reply.start..turn.reply.end;
        assert!(sampled[span.clone()].iter().all(|&x| x), "turn {k} is sampled");
        let want = turn.format_error.is_none();
        assert!(rft[span].iter().all(|&x| x == want), "turn {k}: rft mask should be {want}");
    }
    assert_eq!(rft.iter().filter(|&&x| x).count(), t.turns[2].reply.end - t.turns[2].reply.start);
    // the clean row trains on every reply
    assert_eq!(trajs[0].rft_mask(), trajs[0].sampled_mask());
    assert_eq!(trajs[0].turns.iter().map(|t| t.command.clone().unwrap()).collect::<Vec<_>>(), ["open src/calc.py", "edit 2:2\n    return a + b\nend_of_edit", "submit"]);
}

#[test]
fn rewards_exits_samples_and_policies() {
    let dir = tempfile::tempdir().unwrap();
    let trajs = imported(dir.path());
    let got: Vec<(&str, u32, &str, Option<f64>, Exit)> = trajs.iter().map(|t| (t.instance_id.as_str(), t.sample, t.policy.as_str(), t.reward, t.exit)).collect();
    assert_eq!(
        got,
        [
            ("owner__repo-1", 0, "import:swe-agent-llama-70b", Some(1.0), Exit::Submitted),
            ("owner__repo-1", 1, "import:swe-agent-llama-8b", Some(0.0), Exit::TurnLimit),
            ("owner__repo-2", 0, "import:swe-agent-llama-70b", Some(1.0), Exit::Submitted),
        ]
    );
    for t in &trajs {
        assert_eq!((t.seed, t.format_version, t.final_reward), (0, appliance::agent::trajectory::FORMAT_VERSION, t.reward));
        assert_eq!(t.patch.as_deref(), Some(format!("diff --git a/{0}.py b/{0}.py\n", t.instance_id).as_str()));
    }
    assert!(trajs[1].exit_detail.contains("submitted (exit_cost)"), "{}", trajs[1].exit_detail);
    assert!(trajs[1].turns[2].observation.is_some(), "a trailing user turn is the last turn's observation");
    assert!(trajs[0].turns[2].observation.is_none());
}

#[test]
fn a_bad_row_names_its_line_and_field_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let from = dir.path().join("rows.jsonl");
    let out = dir.path().join("out.jsonl");
    write_jsonl(&from, &fixture_rows());
    let e = format!("{:#}", import(&from, &out, &template(), &ImportOptions::default()).unwrap_err());
    assert!(e.contains("rows.jsonl: line 4, field `trajectory[2].role`: unknown variant `robot`"), "{e}");
    assert!(!out.exists(), "a failed import leaves no output");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left behind");

    // a missing target, and a structural error, each name their line
    let mut rows = fixture_rows();
    rows[3] = json!({"instance_id": "x", "model_name": "m", "trajectory": []});
    rows.insert(1, row("owner__repo-9", "m", true, "submitted", vec![user("t"), ai("a"), ai("b")]));
    write_jsonl(&from, &rows);
    let mut text = std::fs::read_to_string(&from).unwrap();
    text.push_str("\n{\"instance_id\": \"cut\n");
    std::fs::write(&from, text).unwrap();
    let r = import(&from, &out, &template(), &skip_invalid()).unwrap();
    assert_eq!((r.rows, r.written, r.skipped), (6, 3, 3));
    assert!(r.skipped_errors[0].contains("line 2, field `trajectory[2].role`: two ai turns in a row"), "{:?}", r.skipped_errors);
    assert!(r.skipped_errors[1].contains("line 5") && r.skipped_errors[1].contains("missing field `target`"), "{:?}", r.skipped_errors);
    assert!(r.skipped_errors[2].contains("line 7, malformed JSON"), "a blank line still counts: {:?}", r.skipped_errors);
    // an existing output is never overwritten
    let e = format!("{:#}", import(&from, &out, &template(), &skip_invalid()).unwrap_err());
    assert!(e.contains("already exists"), "{e}");
}

#[test]
fn only_successful_keeps_resolved_rows() {
    let dir = tempfile::tempdir().unwrap();
    let from = dir.path().join("rows.jsonl");
    let out = dir.path().join("rft.jsonl");
    write_jsonl(&from, &fixture_rows());
    let opts = ImportOptions { only_successful: true, skip_invalid: true, ..Default::default() };
    let r = import(&from, &out, &template(), &opts).unwrap();
    assert_eq!((r.written, r.successful, r.unsuccessful_left_out), (2, 2, 1));
    let trajs = read_trajectories(&out).unwrap().items;
    assert!(trajs.iter().all(|t| t.solved()));
    assert_eq!(trajs.iter().map(|t| (t.instance_id.as_str(), t.sample)).collect::<Vec<_>>(), [("owner__repo-1", 0), ("owner__repo-2", 0)]);
}

#[test]
fn a_json_array_is_read_too_with_errors_by_entry() {
    let dir = tempfile::tempdir().unwrap();
    let from = dir.path().join("rows.json");
    std::fs::write(&from, serde_json::to_string_pretty(&fixture_rows()).unwrap()).unwrap();
    let out = dir.path().join("out.jsonl");
    let r = import(&from, &out, &template(), &skip_invalid()).unwrap();
    assert_eq!((r.rows, r.written, r.skipped), (4, 3, 1));
    assert!(r.skipped_errors[0].contains("rows.json: entry 4, field `trajectory[2].role`"), "{:?}", r.skipped_errors);
    let from_lines = dir.path().join("lines");
    std::fs::create_dir(&from_lines).unwrap();
    assert_eq!(read_trajectories(&out).unwrap().items, imported(&from_lines));
    // not JSON at all
    std::fs::write(&from, "[{\"instance_id\": ").unwrap();
    let e = format!("{:#}", import(&from, &dir.path().join("x.jsonl"), &template(), &skip_invalid()).unwrap_err());
    assert!(e.contains("rows.json: line 1: not a valid JSON array"), "{e}");
}

fn bin() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_appliance"));
    c.env_remove("RUST_LOG");
    c
}

#[test]
fn the_import_command_writes_the_file_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let from = dir.path().join("rows.jsonl");
    write_jsonl(&from, &fixture_rows());
    let out: PathBuf = dir.path().join("rft.jsonl");
    let o = bin().args(["import", "--from", from.to_str().unwrap(), "--only-successful", "--skip-invalid", "--out", out.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("read 4 rows from") && stdout.contains("wrote 2 trajectories to") && stdout.contains("2 successful, 1 invalid skipped, 1 unsuccessful left out"), "{stdout}");
    assert!(stderr.contains("skipped: ") && stderr.contains("line 4, field `trajectory[2].role`"), "{stderr}");
    assert_eq!(read_trajectories(&out).unwrap().items.len(), 2);
    // without --skip-invalid: exit 1, the line and field named, no panic
    let o = bin().args(["import", "--from", from.to_str().unwrap(), "--out", dir.path().join("all.jsonl").to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 4, field `trajectory[2].role`") && !stderr.contains("panicked"), "{stderr}");
}
