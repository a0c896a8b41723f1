//! Scripted policies: `gold`, which solves a task from its gold patch
//! through the scaffold's own tools, and `submit`, which submits at once.
//!
//! Owns: turning a unified diff into tool calls (per file: `open`, then one
//! `edit` per hunk from the bottom up so earlier line numbers stay valid;
//! `create` for new files, `rm` for deleted ones) and the replies that carry
//! them. Does not own running them (`tools`, `episode`).
//!
//! The gold policy is how tests (and users, with `--policy gold`) check that
//! a task set is solvable through the scaffold end to end: the tools, the
//! submission diff and grading. The submit-only policy is the floor: it must
//! score 0.

use super::policy::{Policy, Reply, TurnInput};
use crate::engine::FinishReason;
use crate::env::task::Task;
use anyhow::{anyhow, bail, Result};
use async_trait::async_trait;

/// One hunk of a unified diff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hunk {
    pub old_start: usize,
    pub old_len: usize,
    /// The new side's lines (context and added), without line endings.
    pub new_lines: Vec<String>,
}

/// One file of a unified diff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDiff {
    /// Path relative to the repository root (the `b/` side; the `a/` side
    /// for deletions).
    pub path: String,
    pub new_file: bool,
    pub deleted: bool,
    pub hunks: Vec<Hunk>,
}

fn strip_prefix(p: &str) -> String {
    let p = p.split('\t').next().unwrap_or(p).trim();
    p.strip_prefix("a/").or_else(|| p.strip_prefix("b/")).unwrap_or(p).to_string()
}

fn hunk_range(s: &str) -> Result<(usize, usize)> {
    let s = s.trim_start_matches(['-', '+']);
    match s.split_once(',') {
        Some((a, b)) => Ok((a.parse()?, b.parse()?)),
        None => Ok((s.parse()?, 1)),
    }
}

/// Parse a unified diff (as `git diff` writes it) into files and hunks.
pub fn parse_diff(diff: &str) -> Result<Vec<FileDiff>> {
    let mut files: Vec<FileDiff> = vec![];
    let mut lines = diff.lines().peekable();
    let mut old_path = String::new();
    while let Some(l) = lines.next() {
        if l.starts_with("diff --git ") {
            files.push(FileDiff { path: String::new(), new_file: false, deleted: false, hunks: vec![] });
            // "diff --git a/x b/x": the b side, in case there are no ---/+++ lines
            if let Some(b) = l.rsplit_once(" b/") {
                files.last_mut().expect("pushed").path = b.1.to_string();
            }
        } else if l.starts_with("new file mode") {
            if let Some(f) = files.last_mut() {
                f.new_file = true;
            }
        } else if l.starts_with("deleted file mode") {
            if let Some(f) = files.last_mut() {
                f.deleted = true;
            }
        } else if let Some(p) = l.strip_prefix("--- ") {
            old_path = strip_prefix(p);
            if files.is_empty() {
                files.push(FileDiff { path: String::new(), new_file: false, deleted: false, hunks: vec![] });
            }
        } else if let Some(p) = l.strip_prefix("+++ ") {
            let f = files.last_mut().ok_or_else(|| anyhow!("a +++ line before any file header"))?;
            let new = strip_prefix(p);
            if new == "/dev/null" {
                f.deleted = true;
                f.path = old_path.clone();
            } else {
                f.path = new;
            }
            if old_path == "/dev/null" {
                f.new_file = true;
            }
        } else if l.starts_with("@@ ") {
            let f = files.last_mut().ok_or_else(|| anyhow!("a hunk before any file header"))?;
            let parts: Vec<&str> = l.split_whitespace().collect();
            if parts.len() < 3 {
                bail!("bad hunk header {l:?}");
            }
            let (old_start, old_len) = hunk_range(parts[1]).map_err(|_| anyhow!("bad hunk header {l:?}"))?;
            let (_, new_len) = hunk_range(parts[2]).map_err(|_| anyhow!("bad hunk header {l:?}"))?;
            let (mut seen_old, mut seen_new) = (0, 0);
            let mut new_lines = vec![];
            while seen_old < old_len || seen_new < new_len {
                let Some(h) = lines.next() else { bail!("hunk {l:?} ends early") };
                match h.chars().next() {
                    Some(' ') | None => {
                        new_lines.push(h.get(1..).unwrap_or("").to_string());
                        seen_old += 1;
                        seen_new += 1;
                    }
                    Some('-') => seen_old += 1,
                    Some('+') => {
                        new_lines.push(h[1..].to_string());
                        seen_new += 1;
                    }
                    Some('\\') => {}
                    _ => bail!("unexpected line {h:?} in hunk {l:?}"),
                }
            }
            while lines.peek().is_some_and(|x| x.starts_with('\\')) {
                lines.next();
            }
            f.hunks.push(Hunk { old_start, old_len, new_lines });
        }
    }
    files.retain(|f| !f.path.is_empty());
    Ok(files)
}

fn heredoc_marker(lines: &[String]) -> String {
    let mut m = "EOF".to_string();
    let mut i = 0;
    while lines.iter().any(|l| *l == m) {
        i += 1;
        m = format!("EOF_{i}");
    }
    m
}

fn quote(p: &str) -> String {
    if p.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)) {
        p.to_string()
    } else {
        format!("'{}'", p.replace('\'', "'\\''"))
    }
}

/// The tool calls that turn the repository at base into base + `diff`.
pub fn diff_commands(diff: &str) -> Result<Vec<String>> {
    let mut cmds = vec![];
    for f in parse_diff(diff)? {
        let p = quote(&f.path);
        if f.deleted {
            cmds.push(format!("rm {p}"));
            continue;
        }
        if f.new_file {
            cmds.push(format!("create {p}"));
        } else {
            cmds.push(format!("open {p}"));
        }
        // bottom-up: a hunk's edit never moves the lines of the hunks above it
        let mut hunks = f.hunks.clone();
        hunks.sort_by_key(|h| std::cmp::Reverse(h.old_start));
        for h in hunks {
            // a pure insertion (old_len 0) goes after line old_start
            let (start, end) = if h.old_len == 0 { (h.old_start + 1, h.old_start) } else { (h.old_start, h.old_start + h.old_len - 1) };
            let m = heredoc_marker(&h.new_lines);
            let mut body = h.new_lines.join("\n");
            if !h.new_lines.is_empty() {
                body.push('\n');
            }
            cmds.push(format!("edit {start}:{end} <<{m}\n{body}{m}"));
        }
    }
    Ok(cmds)
}

fn scripted_reply(why: &str, cmd: &str, fence: &str) -> Reply {
    Reply { text: format!("{why}\n{fence}\n{cmd}\n{fence}"), ids: None, logprobs: None, finish: FinishReason::Stop, policy_version: None }
}

/// Solves a task from its gold patch, through the tools.
pub struct GoldPolicy {
    pub fence: String,
}

#[async_trait]
impl Policy for GoldPolicy {
    fn name(&self) -> String {
        "gold".into()
    }

    async fn act(&self, input: TurnInput<'_>) -> Result<Reply> {
        let cmds = diff_commands(&input.task.patch).map_err(|e| anyhow!("the gold patch of {} cannot be scripted: {e:#}", input.task.instance_id))?;
        let t = input.turn as usize;
        Ok(match cmds.get(t) {
            Some(c) => scripted_reply(&format!("Step {} of the known fix.", t + 1), c, &self.fence),
            None => scripted_reply("The fix is in place.", "submit", &self.fence),
        })
    }
}

/// Submits at once: the floor every task must score 0 on.
pub struct SubmitPolicy {
    pub fence: String,
}

#[async_trait]
impl Policy for SubmitPolicy {
    fn name(&self) -> String {
        "submit".into()
    }

    async fn act(&self, _input: TurnInput<'_>) -> Result<Reply> {
        Ok(scripted_reply("Submitting without changes.", "submit", &self.fence))
    }
}

/// Replies with a micro task's canonical demonstration (`open`, `replace`,
/// `submit`, each after one short line of reasoning; see `env::micro`):
/// the warm start's demonstrations.
pub struct MicroDemonstrationPolicy {
    pub fence: String,
}

#[async_trait]
impl Policy for MicroDemonstrationPolicy {
    fn name(&self) -> String {
        "micro-demonstration".into()
    }

    async fn act(&self, input: TurnInput<'_>) -> Result<Reply> {
        let replies = crate::env::micro::demonstration_replies(input.task, &self.fence)?;
        let text = replies.get(input.turn as usize).cloned().unwrap_or_else(|| crate::env::micro::reply_text("Done.", "submit", &self.fence));
        Ok(Reply { text, ids: None, logprobs: None, finish: FinishReason::Stop, policy_version: None })
    }
}

/// The tasks' gold patches as scripts, checked up front (for `--policy gold`).
pub fn check_scriptable(tasks: &[Task]) -> Result<()> {
    for t in tasks {
        diff_commands(&t.patch).map_err(|e| anyhow!("task {}: its gold patch cannot be scripted: {e:#}", t.instance_id))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::tools::{parse, Tool};

    const DIFF: &str = "diff --git a/pkg/m.py b/pkg/m.py
index 1..2 100644
--- a/pkg/m.py
+++ b/pkg/m.py
@@ -2,3 +2,4 @@ def f():
 a = 1
-b = 2
+b = 3
+c = 4
 d = 5
@@ -10,0 +12,1 @@
+tail = True
diff --git a/new.py b/new.py
new file mode 100644
--- /dev/null
+++ b/new.py
@@ -0,0 +1,2 @@
+x = 1
+EOF
diff --git a/old.py b/old.py
deleted file mode 100644
--- a/old.py
+++ /dev/null
@@ -1 +0,0 @@
-gone
";

    #[test]
    fn diffs_parse_into_files_and_hunks() {
        let f = parse_diff(DIFF).unwrap();
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].path, "pkg/m.py");
        assert_eq!(f[0].hunks[0], Hunk { old_start: 2, old_len: 3, new_lines: vec!["a = 1".into(), "b = 3".into(), "c = 4".into(), "d = 5".into()] });
        assert_eq!(f[0].hunks[1], Hunk { old_start: 10, old_len: 0, new_lines: vec!["tail = True".into()] });
        assert!(f[1].new_file && f[1].path == "new.py");
        assert!(f[2].deleted && f[2].path == "old.py");
    }

    #[test]
    fn commands_edit_bottom_up_and_parse_as_tools() {
        let c = diff_commands(DIFF).unwrap();
        assert_eq!(c[0], "open pkg/m.py");
        assert_eq!(c[1], "edit 11:10 <<EOF\ntail = True\nEOF", "insertion after line 10, first");
        assert_eq!(c[2], "edit 2:4 <<EOF\na = 1\nb = 3\nc = 4\nd = 5\nEOF");
        assert_eq!(c[3], "create new.py");
        assert_eq!(c[4], "edit 1:0 <<EOF_1\nx = 1\nEOF\nEOF_1", "the marker avoids a body line");
        assert_eq!(c[5], "rm old.py");
        assert_eq!(parse(&c[4]).unwrap(), Tool::Edit { path: None, start: 1, end: 0, text: "x = 1\nEOF\n".into() });
        assert_eq!(parse(&c[5]).unwrap(), Tool::Shell("rm old.py".into()));
    }

    #[test]
    fn a_broken_diff_is_an_error() {
        assert!(parse_diff("--- a/x\n+++ b/x\n@@ -1,3 +1,3 @@\n a\n").is_err());
        assert!(parse_diff("--- a/x\n+++ b/x\n@@ nonsense @@\n").is_err());
    }
}
