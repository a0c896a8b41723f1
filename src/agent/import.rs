//! Importing public SWE-agent trajectories as this project's [`Trajectory`]
//! records, for rejection fine-tuning and for comparison.
//!
//! Owns: the row schema of the nebius/SWE-agent-trajectories dataset
//! ([`SweAgentRow`]), turning a row into messages, a token ledger and turns
//! ([`convert`]), the mapping of SWE-agent exit statuses ([`map_exit`]), and
//! reading an export of the dataset (JSON lines, or one JSON array) into a
//! trajectory file ([`import`]), with errors that name the file, the row and
//! the field. Does not own: parquet (export the shards first, e.g. with
//! `datasets` or pandas `to_json(orient="records", lines=True)`), the ChatML
//! template (`model::chat`), command extraction (`command`) or the
//! trajectory file format (`trajectory`).
//!
//! The schema, from the dataset card's `dataset_info`
//! (huggingface.co/datasets/nebius/SWE-agent-trajectories, README.md): each
//! row has `instance_id` (string), `model_name` (string), `target` (bool:
//! the generated patch passed the task's tests), `trajectory` (a list of
//! `{role, text, system_prompt, mask, cutoff_date}` with `role` one of
//! `system`, `user`, `ai`), `exit_status` (string, SWE-agent's: `submitted`,
//! `submitted (exit_context)`, `exit_cost`, …), `generated_patch` (string)
//! and `eval_logs` (string). In the published rows the system turn has a null
//! `text` and its prompt in `system_prompt`. `mask`, `cutoff_date` and
//! `eval_logs` are not carried over; unknown fields are ignored.
//!
//! Conversion:
//! - Roles: `system` → System, `user` → User, `ai` (or `assistant`) →
//!   Assistant. A system turn's content is its `system_prompt`, else its
//!   `text`; user and ai turns need a `text`.
//! - Consecutive system turns (only at the start) and consecutive user turns
//!   are joined with "\n" into one message: they are all input, and joining
//!   changes nothing the model produced. Two ai turns in a row, an ai turn
//!   before the first user turn (the task), a system turn after the
//!   conversation started, or a row without any ai turn is malformed: the
//!   row is rejected, never repaired.
//! - Ledger: `ChatTemplate::render(messages, false)`; each assistant message
//!   is one [`Turn`] whose reply span is exactly its Sampled tokens (the
//!   content and its closing `<|im_end|>`), with no log-probs or policy
//!   versions (unknown), `retokenized: true`, and its observation span the
//!   whole user message that follows (`<|im_start|>user\n…<|im_end|>\n`).
//!   The format error and command come from [`command::extract`] with the
//!   configured fence. Tool, exit code and timings are unknown (none, 0).
//! - Reward: 1 if `target`, else 0. `final_reward` is the reward as is,
//!   unless a length penalty is configured: the episodes ran under another
//!   scaffold with its own limits, so no penalty is assumed.
//! - Exit: see [`map_exit`]; the original status is kept in `exit_detail`.
//! - `policy` is `import:<model_name>`, `seed` 0, and `sample` the row's
//!   index among the valid rows with the same `instance_id`, in file order
//!   (counted before `only_successful` filters, so a row keeps its index
//!   whatever is filtered). Rows of several models for one task share that
//!   numbering.

use crate::agent::command::{self, CommandFormat};
use crate::agent::reward::{self, LengthPenalty};
use crate::agent::trajectory::{self, Exit, JsonlWriter, Ledger, ReplyEnd, Span, Timing, Trajectory, Turn};
use crate::model::chat::{ChatTemplate, Message, Role, Source};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

/// A role as the dataset writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SweAgentRole {
    System,
    User,
    #[serde(alias = "assistant")]
    Ai,
}

/// One entry of a row's `trajectory`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweAgentTurn {
    pub role: SweAgentRole,
    #[serde(default)]
    pub text: Option<String>,
    /// The system prompt (on system turns, where `text` is null).
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// The dataset's own training mask (not carried over).
    #[serde(default)]
    pub mask: Option<bool>,
    #[serde(default)]
    pub cutoff_date: Option<String>,
}

/// One row of nebius/SWE-agent-trajectories.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweAgentRow {
    pub instance_id: String,
    pub model_name: String,
    /// Whether the generated patch resolved the issue.
    pub target: bool,
    pub trajectory: Vec<SweAgentTurn>,
    #[serde(default)]
    pub exit_status: Option<String>,
    #[serde(default)]
    pub generated_patch: Option<String>,
}

/// How to import.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// The fence around a command, for format errors and commands.
    pub format: CommandFormat,
    /// Keep only rows whose patch resolved the issue (`target` true): the
    /// rejection fine-tuning set.
    pub only_successful: bool,
    /// Skip rows that cannot be read or converted (counted, and the first
    /// few errors kept) instead of failing.
    pub skip_invalid: bool,
    /// Apply the method's length penalty to `final_reward`; none by default.
    pub length_penalty: Option<LengthPenalty>,
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ImportReport {
    /// Rows in the input (non-blank lines, or array entries).
    pub rows: usize,
    /// Trajectories written.
    pub written: usize,
    /// Valid rows whose patch resolved the issue.
    pub successful: usize,
    /// Valid rows left out by `only_successful`.
    pub unsuccessful_left_out: usize,
    /// Invalid rows skipped (with `skip_invalid`).
    pub skipped: usize,
    /// The errors of the first [`MAX_REPORTED_ERRORS`] skipped rows.
    pub skipped_errors: Vec<String>,
}

/// How many skipped rows' errors an [`ImportReport`] keeps.
pub const MAX_REPORTED_ERRORS: usize = 10;

/// The episode's end, from SWE-agent's `exit_status` and the last command:
/// - `submitted` → Submitted;
/// - anything naming the context (`exit_context`, `submitted (exit_context)`)
///   → ContextLimit;
/// - any other `exit_*`, `submitted (…)` (an autosubmission when a budget ran
///   out: cost, repeated format errors, an error) or `early_exit` →
///   TurnLimit, the nearest of our limits: the scaffold, not the policy,
///   ended the episode. Such rows keep their reward: the dataset graded
///   their patch;
/// - absent or unrecognized: Submitted if the last command was `submit`,
///   else TurnLimit.
pub fn map_exit(exit_status: Option<&str>, last_command: Option<&str>) -> Exit {
    let s = exit_status.map(|s| s.trim().to_ascii_lowercase()).unwrap_or_default();
    if s == "submitted" {
        Exit::Submitted
    } else if s.contains("context") {
        Exit::ContextLimit
    } else if s.starts_with("exit_") || s.starts_with("submitted (") || s.starts_with("early_exit") {
        Exit::TurnLimit
    } else if last_command.map(str::trim) == Some("submit") {
        Exit::Submitted
    } else {
        Exit::TurnLimit
    }
}

/// The row's conversation as ChatML messages (see the module documentation
/// for the joining rules). Errors name the offending field, as
/// `field \`trajectory[3].role\`: …`.
pub fn messages(row: &SweAgentRow) -> Result<Vec<Message>> {
    let mut out: Vec<Message> = vec![];
    for (i, t) in row.trajectory.iter().enumerate() {
        let (role, content) = match t.role {
            SweAgentRole::System => {
                let c = t.system_prompt.as_ref().or(t.text.as_ref()).ok_or_else(|| anyhow!("field `trajectory[{i}].system_prompt`: a system turn with neither `system_prompt` nor `text`"))?;
                (Role::System, c)
            }
            SweAgentRole::User => (Role::User, t.text.as_ref().ok_or_else(|| anyhow!("field `trajectory[{i}].text`: a user turn without text"))?),
            SweAgentRole::Ai => (Role::Assistant, t.text.as_ref().ok_or_else(|| anyhow!("field `trajectory[{i}].text`: an ai turn without text"))?),
        };
        // consecutive input turns (system, user) join into one message
        if let Some(prev) = out.last_mut().filter(|p| p.role == role && role != Role::Assistant) {
            prev.content.push('\n');
            prev.content.push_str(content);
            continue;
        }
        match (role, out.last().map(|m| m.role)) {
            (Role::System, Some(_)) => bail!("field `trajectory[{i}].role`: a system turn after the conversation started"),
            (Role::Assistant, Some(Role::Assistant)) => {
                bail!("field `trajectory[{i}].role`: two ai turns in a row (trajectory[{}] and trajectory[{i}]); each reply must be answered by a user turn", i - 1)
            }
            (Role::Assistant, None | Some(Role::System)) => bail!("field `trajectory[{i}].role`: an ai turn before the first user turn (the task)"),
            _ => {}
        }
        out.push(Message::new(role, content.clone()));
    }
    if !out.iter().any(|m| m.role == Role::Assistant) {
        bail!("field `trajectory`: no ai turn ({} entries): nothing the model did", row.trajectory.len());
    }
    Ok(out)
}

/// Convert one row. `sample` is its index among the task's rows.
pub fn convert(row: &SweAgentRow, sample: u32, tmpl: &ChatTemplate, opts: &ImportOptions) -> Result<Trajectory> {
    let messages = messages(row)?;
    let rendered = tmpl.render(&messages, false).context("rendering the conversation in ChatML")?;
    // Message starts: the Template-tagged <|im_start|> tokens (a literal
    // "<|im_start|>" inside content is tagged with the content's source).
    let mut starts: Vec<usize> = (0..rendered.len()).filter(|&i| rendered.ids[i] == tmpl.im_start() && rendered.source[i] == Source::Template).collect();
    // A template that inserts a default system prompt adds one message ahead.
    let extra = starts.len().checked_sub(messages.len()).filter(|&e| e <= 1).ok_or_else(|| anyhow!("the rendered conversation has {} messages, expected {}", starts.len(), messages.len()))?;
    starts.drain(..extra);
    let span_of = |m: usize| Span { start: starts[m], end: starts.get(m + 1).copied().unwrap_or(rendered.len()) };

    let mut turns = vec![];
    for (m, msg) in messages.iter().enumerate().filter(|(_, msg)| msg.role == Role::Assistant) {
        let whole = span_of(m);
        let sampled: Vec<usize> = (whole.start..whole.end).filter(|&i| rendered.source[i] == Source::Sampled).collect();
        let (Some(&first), Some(&last)) = (sampled.first(), sampled.last()) else {
            bail!("message {m}: an assistant message rendered without sampled tokens");
        };
        if last + 1 - first != sampled.len() {
            bail!("message {m}: the assistant tokens are not contiguous");
        }
        let observation = messages.get(m + 1).map(|_| span_of(m + 1));
        let extracted = command::extract(&msg.content, &opts.format);
        turns.push(Turn {
            observation,
            format_error: extracted.as_ref().err().cloned(),
            command: extracted.ok(),
            retokenized: true,
            ..Turn::new(Span { start: first, end: last + 1 }, ReplyEnd::Stop)
        });
    }
    let last_command = turns.last().and_then(|t| t.command.as_deref());
    let exit = map_exit(row.exit_status.as_deref(), last_command);
    let reward = Some(if row.target { 1.0 } else { 0.0 });
    let final_reward = match &opts.length_penalty {
        Some(lp) => reward::final_reward(reward, turns.len() as u32, lp),
        None => reward,
    };
    let t = Trajectory {
        format_version: trajectory::FORMAT_VERSION,
        instance_id: row.instance_id.clone(),
        sample,
        seed: 0,
        policy: format!("import:{}", row.model_name),
        messages,
        ledger: Ledger::from_rendered(&rendered),
        turns,
        exit,
        exit_detail: match &row.exit_status {
            Some(s) => format!("imported exit_status {s:?}"),
            None => "imported without exit_status".into(),
        },
        patch: row.generated_patch.clone(),
        grade: None,
        reward,
        final_reward,
        attempts: 1,
        timing: Timing::default(),
    };
    t.check().context("the converted trajectory is inconsistent")?;
    Ok(t)
}

/// Parse one row from JSON; errors name the field (`field \`target\`: …`),
/// or say the JSON itself is malformed.
fn parse_row<'de, D: serde::Deserializer<'de, Error = serde_json::Error>>(de: D) -> Result<SweAgentRow> {
    serde_path_to_error::deserialize::<_, SweAgentRow>(de).map_err(|e| {
        let field = e.path().to_string();
        let e = e.into_inner();
        if e.is_syntax() || e.is_eof() {
            anyhow!("malformed JSON: {e}")
        } else if field == "." || field == "?" {
            anyhow!("{e}")
        } else {
            anyhow!("field `{field}`: {e}")
        }
    })
}

/// Whether the first non-blank byte of the file is `[` (a JSON array).
fn is_json_array(path: &Path) -> Result<bool> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = std::io::BufReader::new(file);
    loop {
        let buf = reader.fill_buf().with_context(|| format!("reading {}", path.display()))?;
        if buf.is_empty() {
            return Ok(false);
        }
        if let Some(&b) = buf.iter().find(|b| !b.is_ascii_whitespace()) {
            return Ok(b == b'[');
        }
        let n = buf.len();
        reader.consume(n);
    }
}

/// Call `f` with each row of a JSONL file or JSON-array file, and where it
/// is (`FILE: line N` or `FILE: entry N`). A JSON array is read whole (a
/// file that is not valid JSON fails here); JSON lines are streamed.
fn for_each_row(path: &Path, mut f: impl FnMut(String, Result<SweAgentRow>) -> Result<()>) -> Result<()> {
    let name = path.display();
    if is_json_array(path)? {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {name} (it must be UTF-8)"))?;
        let items: Vec<serde_json::Value> = serde_json::from_str(&text).map_err(|e| anyhow!("{name}: line {}: not a valid JSON array: {e}", e.line()))?;
        drop(text);
        for (i, v) in items.into_iter().enumerate() {
            f(format!("{name}: entry {}", i + 1), parse_row(v))?;
        }
        return Ok(());
    }
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {name}"))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut n = 0usize;
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).with_context(|| format!("reading {name}"))?;
        if read == 0 {
            return Ok(());
        }
        n += 1;
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let row = match std::str::from_utf8(&line) {
            Ok(text) => {
                let mut de = serde_json::Deserializer::from_str(text);
                parse_row(&mut de).and_then(|r| de.end().map(|()| r).map_err(|e| anyhow!("malformed JSON: {e}")))
            }
            Err(e) => Err(anyhow!("not UTF-8: {e}")),
        };
        f(format!("{name}: line {n}"), row)?;
    }
}

/// Import `from` (JSON lines or a JSON array of dataset rows) into a new
/// trajectory file `out`, tokenizing with `tmpl`. The file appears whole or
/// not at all: it is written under a temporary name and renamed at the end.
/// `out` must not exist yet (concatenate several exports first, so that
/// sample indices stay unique). Without `skip_invalid` the first bad row is
/// an error naming the file, the row and the field.
pub fn import(from: &Path, out: &Path, tmpl: &ChatTemplate, opts: &ImportOptions) -> Result<ImportReport> {
    if out.exists() {
        bail!("{} already exists; remove it or choose another output file", out.display());
    }
    let tmp = crate::files::temp_path(out);
    let r = import_to(from, &tmp, tmpl, opts).and_then(|report| {
        std::fs::rename(&tmp, out).with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
        Ok(report)
    });
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn import_to(from: &Path, out: &Path, tmpl: &ChatTemplate, opts: &ImportOptions) -> Result<ImportReport> {
    let mut w = JsonlWriter::open(out)?;
    let mut report = ImportReport::default();
    let mut samples: HashMap<String, u32> = HashMap::new();
    for_each_row(from, |at, row| {
        report.rows += 1;
        let converted = row.and_then(|row| {
            let sample = samples.get(&row.instance_id).copied().unwrap_or(0);
            let t = convert(&row, sample, tmpl, opts)?;
            samples.insert(row.instance_id, sample + 1);
            Ok(t)
        });
        match converted {
            Ok(t) => {
                let ok = t.solved();
                report.successful += usize::from(ok);
                if opts.only_successful && !ok {
                    report.unsuccessful_left_out += 1;
                    return Ok(());
                }
                w.append(&t)?;
                report.written += 1;
            }
            Err(e) => {
                let msg = format!("{at}, {e:#}");
                if !opts.skip_invalid {
                    bail!("{msg}");
                }
                report.skipped += 1;
                if report.skipped_errors.len() < MAX_REPORTED_ERRORS {
                    report.skipped_errors.push(msg);
                }
            }
        }
        Ok(())
    })?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::command::FormatError;
    use crate::model::tokenizer::Tokenizer;

    fn turn(role: SweAgentRole, text: &str) -> SweAgentTurn {
        SweAgentTurn { role, text: Some(text.into()), system_prompt: None, mask: None, cutoff_date: None }
    }

    fn row(trajectory: Vec<SweAgentTurn>) -> SweAgentRow {
        SweAgentRow { instance_id: "o__r-1".into(), model_name: "m".into(), target: true, trajectory, exit_status: Some("submitted".into()), generated_patch: Some("diff".into()) }
    }

    fn system_prompt(p: &str) -> SweAgentTurn {
        SweAgentTurn { role: SweAgentRole::System, text: None, system_prompt: Some(p.into()), mask: Some(false), cutoff_date: Some("01.01.2023".into()) }
    }

    use SweAgentRole::{Ai, User};

    #[test]
    fn exit_statuses_map_to_our_exits() {
        assert_eq!(map_exit(Some("submitted"), None), Exit::Submitted);
        assert_eq!(map_exit(Some(" Submitted "), None), Exit::Submitted);
        assert_eq!(map_exit(Some("submitted (exit_context)"), None), Exit::ContextLimit);
        assert_eq!(map_exit(Some("exit_context"), Some("submit")), Exit::ContextLimit);
        for s in ["submitted (exit_cost)", "exit_cost", "submitted (exit_format)", "exit_format", "exit_error", "submitted (exit_error)", "early_exit"] {
            assert_eq!(map_exit(Some(s), Some("submit")), Exit::TurnLimit, "{s}");
        }
        assert_eq!(map_exit(None, Some(" submit ")), Exit::Submitted);
        assert_eq!(map_exit(Some("weird"), Some("submit")), Exit::Submitted);
        assert_eq!(map_exit(None, Some("ls")), Exit::TurnLimit);
        assert_eq!(map_exit(Some(""), None), Exit::TurnLimit);
    }

    #[test]
    fn messages_take_the_system_prompt_and_join_consecutive_user_turns() {
        let r = row(vec![system_prompt("SETTING"), turn(User, "demo"), turn(User, "issue"), turn(Ai, "```\nls\n```"), turn(User, "a.py")]);
        let m = messages(&r).unwrap();
        assert_eq!(m, vec![Message::system("SETTING"), Message::user("demo\nissue"), Message::assistant("```\nls\n```"), Message::user("a.py")]);
        // a system turn with text only, and two leading system turns
        let s2 = SweAgentTurn { role: SweAgentRole::System, text: Some("more".into()), system_prompt: None, mask: None, cutoff_date: None };
        let r = row(vec![system_prompt("A"), s2, turn(User, "t"), turn(Ai, "x")]);
        assert_eq!(messages(&r).unwrap()[0], Message::system("A\nmore"));
    }

    #[test]
    fn malformed_conversations_are_rejected_with_the_field() {
        let err = |r: SweAgentRow| format!("{:#}", messages(&r).unwrap_err());
        let e = err(row(vec![turn(User, "t"), turn(Ai, "a"), turn(Ai, "b")]));
        assert!(e.contains("field `trajectory[2].role`") && e.contains("two ai turns in a row"), "{e}");
        let e = err(row(vec![system_prompt("s"), turn(Ai, "a"), turn(User, "t")]));
        assert!(e.contains("field `trajectory[1].role`") && e.contains("before the first user turn"), "{e}");
        let e = err(row(vec![turn(User, "t"), system_prompt("s"), turn(Ai, "a")]));
        assert!(e.contains("field `trajectory[1].role`") && e.contains("system turn after"), "{e}");
        let mut null_text = turn(Ai, "");
        null_text.text = None;
        let e = err(row(vec![turn(User, "t"), null_text]));
        assert!(e.contains("field `trajectory[1].text`"), "{e}");
        let e = err(row(vec![system_prompt("s"), turn(User, "t")]));
        assert!(e.contains("field `trajectory`: no ai turn"), "{e}");
        let e = err(row(vec![]));
        assert!(e.contains("no ai turn (0 entries)"), "{e}");
    }

    #[test]
    fn a_converted_row_has_turns_over_the_sampled_tokens() {
        let tmpl = ChatTemplate::new(Tokenizer::tiny().unwrap()).unwrap();
        let r = row(vec![system_prompt("SETTING"), turn(User, "issue"), turn(Ai, "thinking, no command"), turn(User, "error: no command"), turn(Ai, "ok\n```\nsubmit\n```")]);
        let t = convert(&r, 3, &tmpl, &ImportOptions::default()).unwrap();
        assert_eq!((t.sample, t.seed, t.policy.as_str(), t.exit, t.reward, t.final_reward), (3, 0, "import:m", Exit::Submitted, Some(1.0), Some(1.0)));
        assert_eq!(t.turns.len(), 2);
        assert_eq!(t.turns[0].format_error, Some(FormatError::NotExtractable));
        assert_eq!(t.turns[1].command.as_deref(), Some("submit"));
        assert!(t.turns[1].observation.is_none());
        let tok = tmpl.tokenizer();
        let reply = &t.ledger.ids[t.turns[1].reply.start..t.turns[1].reply.end];
        assert_eq!(tok.decode(reply).unwrap(), "ok\n```\nsubmit\n```<|im_end|>");
        let obs = t.turns[0].observation.unwrap();
        assert_eq!(tok.decode(&t.ledger.ids[obs.start..obs.end]).unwrap(), "<|im_start|>user\nerror: no command<|im_end|>\n");
        // a default system prompt in the template is skipped over, not miscounted
        let with_default = ChatTemplate::new(Tokenizer::tiny().unwrap()).unwrap().with_default_system(true);
        let r2 = row(vec![turn(User, "issue"), turn(Ai, "```\nsubmit\n```")]);
        let t2 = convert(&r2, 0, &with_default, &ImportOptions::default()).unwrap();
        assert_eq!(tok.decode(&t2.ledger.ids[t2.turns[0].reply.start..t2.turns[0].reply.end]).unwrap(), "```\nsubmit\n```<|im_end|>");
    }

    #[test]
    fn the_length_penalty_applies_only_when_asked() {
        let tmpl = ChatTemplate::new(Tokenizer::tiny().unwrap()).unwrap();
        let mut tr = vec![turn(User, "issue")];
        for _ in 0..25 {
            tr.push(turn(Ai, "```\nls\n```"));
            tr.push(turn(User, "a.py"));
        }
        let r = row(tr);
        let plain = convert(&r, 0, &tmpl, &ImportOptions::default()).unwrap();
        assert_eq!(plain.final_reward, Some(1.0));
        let opts = ImportOptions { length_penalty: Some(LengthPenalty::default()), ..Default::default() };
        let penalized = convert(&r, 0, &tmpl, &opts).unwrap();
        assert_eq!(penalized.final_reward, Some(0.5));
        assert_eq!(penalized.exit, Exit::Submitted);
    }
}
