//! Trajectories: what one episode was, token by token, and the JSONL files
//! they are kept in.
//!
//! Owns: the trajectory record (the text view, the token ledger with each
//! token's source, sampling log-prob and policy version, one record per turn,
//! how the episode ended, the grade and reward, and where the time went), the
//! loss masks derived from it, and the trajectory file: append-only JSON
//! lines, each fsynced, with a torn last line (a crash mid-write) detected,
//! skipped on read with a warning, and cut off before the next append.
//! Does not own how an episode runs (`episode`) or training.

use crate::agent::command::FormatError;
use crate::model::chat::{Message, Rendered, Source};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Bumped when the record's meaning changes.
pub const FORMAT_VERSION: u32 = 1;

/// The token ledger of one episode: every id the policy was conditioned on
/// or produced, in order, with its provenance. Stored column-wise; `source`
/// is written as one letter per token (see [`source_letter`]).
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    pub ids: Vec<u32>,
    #[serde(with = "source_letters")]
    pub source: Vec<Source>,
    /// The sampling log-prob of each sampled token; null for every other
    /// token, and for assistant tokens whose log-prob is unknown (scripted
    /// policies, imported or re-tokenized replies).
    pub logprob: Vec<Option<f32>>,
    /// The policy version that produced each assistant token; null elsewhere.
    pub version: Vec<Option<u64>>,
}

/// One letter per [`Source`]: `t` template, `s` system, `k` task, `o`
/// observation, `a` assistant (sampled).
pub fn source_letter(s: Source) -> char {
    match s {
        Source::Template => 't',
        Source::System => 's',
        Source::Task => 'k',
        Source::Observation => 'o',
        Source::Sampled => 'a',
    }
}

mod source_letters {
    use crate::model::chat::Source;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[Source], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.iter().map(|&x| super::source_letter(x)).collect::<String>())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Source>, D::Error> {
        let s = String::deserialize(d)?;
        s.chars()
            .enumerate()
            .map(|(i, c)| match c {
                't' => Ok(Source::Template),
                's' => Ok(Source::System),
                'k' => Ok(Source::Task),
                'o' => Ok(Source::Observation),
                'a' => Ok(Source::Sampled),
                other => Err(serde::de::Error::custom(format!("token {i}: unknown source letter {other:?} (expected one of t s k o a)"))),
            })
            .collect()
    }
}

impl Ledger {
    /// A ledger over rendered ids with no log-probs or versions yet.
    pub fn from_rendered(r: &Rendered) -> Self {
        Ledger { ids: r.ids.clone(), source: r.source.clone(), logprob: vec![None; r.len()], version: vec![None; r.len()] }
    }

    /// The ids and sources alone.
    pub fn rendered(&self) -> Rendered {
        Rendered { ids: self.ids.clone(), source: self.source.clone() }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Bring the per-token columns up to the length of `ids` after the ids
    /// and sources grew through a [`Rendered`] (new tokens: no log-prob).
    pub fn sync_from(&mut self, r: &Rendered) {
        let n = self.ids.len();
        debug_assert!(r.ids.starts_with(&self.ids));
        // only the new tail is copied: the ledger grows turn by turn
        self.ids.extend_from_slice(&r.ids[n..]);
        self.source.extend_from_slice(&r.source[n..]);
        self.logprob.resize(self.ids.len(), None);
        self.version.resize(self.ids.len(), None);
    }

    /// Every column has one entry per id, and log-probs and versions sit
    /// only on assistant tokens.
    pub fn check(&self) -> Result<()> {
        let n = self.ids.len();
        if self.source.len() != n || self.logprob.len() != n || self.version.len() != n {
            bail!("ledger columns disagree: {} ids, {} sources, {} log-probs, {} versions", n, self.source.len(), self.logprob.len(), self.version.len());
        }
        for i in 0..n {
            if self.source[i] != Source::Sampled && (self.logprob[i].is_some() || self.version[i].is_some()) {
                bail!("ledger token {i} is not an assistant token but carries a log-prob or policy version");
            }
        }
        Ok(())
    }
}

/// A span of ledger positions, `start..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

/// Why the reply of a turn ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyEnd {
    /// The policy ended its turn (`<|im_end|>`).
    Stop,
    /// The per-turn token limit.
    Length,
    /// The context limit.
    Context,
}

/// One turn: the reply, what the scaffold made of it, and the observation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// Ledger positions of the reply (assistant tokens, up to and including
    /// its `<|im_end|>` when the policy sampled one).
    pub reply: Span,
    /// Ledger positions of the observation message that answered it (the
    /// whole user message, scaffolding included); none for the last turn.
    pub observation: Option<Span>,
    pub end: ReplyEnd,
    pub policy_version: Option<u64>,
    /// The reply had no extractable command, or several: an error
    /// observation was sent, and rejection fine-tuning masks this turn.
    pub format_error: Option<FormatError>,
    /// The command that ran.
    pub command: Option<String>,
    /// Which tool ran it (`shell` for a plain command).
    pub tool: Option<String>,
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub timed_out: bool,
    /// The output was longer than the observation limit and was cut.
    #[serde(default)]
    pub output_truncated: bool,
    #[serde(default)]
    pub output_bytes: u64,
    /// The reply's ids were made by tokenizing its text here (a chat
    /// endpoint, a scripted policy or an import), not taken as sampled.
    #[serde(default)]
    pub retokenized: bool,
    pub generation_s: f64,
    pub env_s: f64,
}

impl Turn {
    /// A turn whose reply spans `reply` and ended as `end`; nothing else
    /// known yet (no command, no observation, no timings).
    pub fn new(reply: Span, end: ReplyEnd) -> Self {
        Turn {
            reply,
            observation: None,
            end,
            policy_version: None,
            format_error: None,
            command: None,
            tool: None,
            exit_code: None,
            timed_out: false,
            output_truncated: false,
            output_bytes: 0,
            retokenized: false,
            generation_s: 0.0,
            env_s: 0.0,
        }
    }
}

/// How an episode ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// The policy ran `submit`.
    Submitted,
    /// The turn limit was reached.
    TurnLimit,
    /// The next turn could not fit in the context.
    ContextLimit,
    /// The container or the daemon failed: not the policy's doing; no reward.
    EnvironmentError,
    /// The policy itself failed (its server went away, or answered garbage):
    /// no reward.
    PolicyError,
}

impl Exit {
    /// Truncated episodes are graded and kept (with their length penalty).
    pub fn truncated(self) -> bool {
        matches!(self, Exit::TurnLimit | Exit::ContextLimit)
    }

    /// Ended by a failure outside the policy's reply: never scored.
    pub fn is_error(self) -> bool {
        matches!(self, Exit::EnvironmentError | Exit::PolicyError)
    }
}

/// The grading result as kept in a trajectory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graded {
    /// `passed`, `patch_did_not_apply`, `tests_failed`, `timed_out` or `environment_error`.
    pub outcome: String,
    pub detail: String,
    pub seconds: f64,
}

/// Where an episode's wall time went.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct Timing {
    pub generation_s: f64,
    pub env_s: f64,
    pub grading_s: f64,
    pub total_s: f64,
}

/// One episode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    pub format_version: u32,
    pub instance_id: String,
    /// Which of a task's samples this is (0-based).
    pub sample: u32,
    /// The episode's seed; turn k samples with a seed derived from it.
    pub seed: u64,
    /// Which policy produced it (`local:NAME`, `endpoint:URL`, `gold`, `submit`, `import:…`).
    pub policy: String,
    /// The conversation as text: system, task, then reply/observation pairs.
    pub messages: Vec<Message>,
    pub ledger: Ledger,
    pub turns: Vec<Turn>,
    pub exit: Exit,
    #[serde(default)]
    pub exit_detail: String,
    /// The submitted (or, when truncated, the final) `git diff`.
    pub patch: Option<String>,
    pub grade: Option<Graded>,
    /// R: 1 if the patch passes the task's tests, else 0; null when the
    /// episode or its grading failed for reasons outside the policy.
    pub reward: Option<f64>,
    /// R + R_length; null when `reward` is null.
    pub final_reward: Option<f64>,
    /// Environment attempts this record took (retries after environment errors + 1).
    #[serde(default = "one")]
    pub attempts: u32,
    pub timing: Timing,
}

fn one() -> u32 {
    1
}

impl Trajectory {
    /// Turns taken (steps, for the length penalty).
    pub fn steps(&self) -> u32 {
        self.turns.len() as u32
    }

    pub fn solved(&self) -> bool {
        self.reward == Some(1.0)
    }

    /// Assistant tokens: what the policy produced (the DAPO loss mask).
    pub fn sampled_mask(&self) -> Vec<bool> {
        self.ledger.source.iter().map(|&s| s == Source::Sampled).collect()
    }

    /// Assistant tokens outside format-error turns: the rejection
    /// fine-tuning mask. Masked turns stay in the context.
    pub fn rft_mask(&self) -> Vec<bool> {
        let mut m = self.sampled_mask();
        for t in self.turns.iter().filter(|t| t.format_error.is_some()) {
            let end = t.reply.end.min(m.len());
            for x in &mut m[t.reply.start.min(end)..end] {
                *x = false;
            }
        }
        m
    }

    /// Consistency of the record: ledger columns, turn spans inside the
    /// ledger and covering assistant tokens only.
    pub fn check(&self) -> Result<()> {
        self.ledger.check()?;
        let n = self.ledger.len();
        for (k, t) in self.turns.iter().enumerate() {
            if t.reply.start > t.reply.end || t.reply.end > n {
                bail!("turn {k}: reply span {}..{} is outside the ledger of {n} tokens", t.reply.start, t.reply.end);
            }
            if let Some(i) = (t.reply.start..t.reply.end).find(|&i| self.ledger.source[i] != Source::Sampled) {
                bail!("turn {k}: reply token {i} is not an assistant token");
            }
        }
        Ok(())
    }
}

/// What reading a JSONL file gave.
#[derive(Debug)]
pub struct ReadJsonl<T> {
    pub items: Vec<T>,
    /// The 1-based line number of a torn last line that was skipped.
    pub torn_line: Option<usize>,
}

/// Read a JSON-lines file of `T`. A last line without its newline that does
/// not parse is a torn write: it is skipped with a warning. Any other bad
/// line is an error naming the file, the line and the field.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<ReadJsonl<T>> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let ends_clean = text.last().is_none_or(|&b| b == b'\n');
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    let mut items = Vec::with_capacity(lines.len());
    let mut torn_line = None;
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut de = serde_json::Deserializer::from_str(line);
        let parsed = serde_path_to_error::deserialize::<_, T>(&mut de)
            .map_err(|e| (e.path().to_string(), e.into_inner()))
            .and_then(|v| de.end().map(|()| v).map_err(|e| (".".to_string(), e)));
        match parsed {
            Ok(v) => items.push(v),
            Err((field, e)) => {
                let last = i + 1 == lines.len();
                if last && !ends_clean {
                    tracing::warn!("{}: line {} is incomplete (a write cut short); skipping it", path.display(), i + 1);
                    torn_line = Some(i + 1);
                    continue;
                }
                let at = if field == "." { String::new() } else { format!(", field `{field}`") };
                bail!("{}: line {}{at}: {e}", path.display(), i + 1);
            }
        }
    }
    Ok(ReadJsonl { items, torn_line })
}

/// Read a trajectory file, checking each record's consistency.
pub fn read_trajectories(path: &Path) -> Result<ReadJsonl<Trajectory>> {
    let r = read_jsonl::<Trajectory>(path)?;
    for (i, t) in r.items.iter().enumerate() {
        t.check().with_context(|| format!("{}: record {} ({} sample {})", path.display(), i + 1, t.instance_id, t.sample))?;
    }
    Ok(r)
}

/// An append-only JSONL file: one record per line, each written whole and
/// fsynced before `append` returns.
pub struct JsonlWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl JsonlWriter {
    /// Open (or create) `path` for appending. A torn last line left by a
    /// crash is cut off first, with a warning, so the next record starts on
    /// a line of its own.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut file = std::fs::OpenOptions::new().read(true).append(true).create(true).open(path).with_context(|| format!("cannot open {} for appending", path.display()))?;
        let len = file.metadata()?.len();
        if len > 0 {
            // find the end of the last complete line
            let mut buf = vec![];
            let back = len.min(1 << 20);
            file.seek(SeekFrom::Start(len - back))?;
            file.read_to_end(&mut buf)?;
            if buf.last() != Some(&b'\n') {
                let keep = match buf.iter().rposition(|&b| b == b'\n') {
                    Some(p) => len - back + p as u64 + 1,
                    None if back == len => 0,
                    None => bail!("{}: the last line is over 1 MiB and has no end; repair the file by hand", path.display()),
                };
                tracing::warn!("{}: cutting off a torn last line ({} bytes) before appending", path.display(), len - keep);
                file.set_len(keep)?;
                file.sync_all()?;
            }
        }
        Ok(JsonlWriter { file, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record as one line, then fsync.
    pub fn append<T: Serialize>(&mut self, v: &T) -> Result<()> {
        let mut line = serde_json::to_vec(v).map_err(|e| anyhow!("serializing a record for {}: {e}", self.path.display()))?;
        line.push(b'\n');
        self.file.write_all(&line).with_context(|| format!("appending to {}", self.path.display()))?;
        self.file.sync_data().with_context(|| format!("syncing {}", self.path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Rec {
        n: u32,
        name: String,
    }

    #[test]
    fn torn_last_line_is_skipped_then_cut_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        let mut w = JsonlWriter::open(&p).unwrap();
        w.append(&Rec { n: 1, name: "a".into() }).unwrap();
        w.append(&Rec { n: 2, name: "b".into() }).unwrap();
        drop(w);
        // a crash mid-write
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"n\": 3, \"na").unwrap();
        drop(f);
        let r = read_jsonl::<Rec>(&p).unwrap();
        assert_eq!(r.items.len(), 2);
        assert_eq!(r.torn_line, Some(3));
        let mut w = JsonlWriter::open(&p).unwrap();
        w.append(&Rec { n: 4, name: "d".into() }).unwrap();
        let r = read_jsonl::<Rec>(&p).unwrap();
        assert_eq!(r.items.iter().map(|x| x.n).collect::<Vec<_>>(), vec![1, 2, 4]);
        assert_eq!(r.torn_line, None);
    }

    #[test]
    fn a_bad_line_in_the_middle_names_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        std::fs::write(&p, "{\"n\":1,\"name\":\"a\"}\n{\"n\":\"two\",\"name\":\"b\"}\n{\"n\":3,\"name\":\"c\"}\n").unwrap();
        let e = format!("{:#}", read_jsonl::<Rec>(&p).unwrap_err());
        assert!(e.contains("t.jsonl: line 2, field `n`"), "{e}");
        // a complete last line that is bad is an error too, not a torn write
        std::fs::write(&p, "{\"n\":1,\"name\":\"a\"}\n{\"n\":2}\n").unwrap();
        let e = format!("{:#}", read_jsonl::<Rec>(&p).unwrap_err());
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn ledger_sources_round_trip_as_letters() {
        let l = Ledger { ids: vec![1, 2, 3, 4, 5], source: vec![Source::Template, Source::System, Source::Task, Source::Observation, Source::Sampled], logprob: vec![None, None, None, None, Some(-0.5)], version: vec![None, None, None, None, Some(2)] };
        let j = serde_json::to_string(&l).unwrap();
        assert!(j.contains("\"source\":\"tskoa\""), "{j}");
        let back: Ledger = serde_json::from_str(&j).unwrap();
        assert_eq!(back, l);
        back.check().unwrap();
        let bad = j.replace("tskoa", "tskox");
        assert!(serde_json::from_str::<Ledger>(&bad).unwrap_err().to_string().contains("unknown source letter"));
        let mut wrong = l.clone();
        wrong.logprob[0] = Some(-1.0);
        assert!(wrong.check().is_err());
    }
}
