//! The scaffold's words and limits: the system prompt that documents the
//! tools, the optional one-shot demonstration, the task message, the
//! observation footer, and the `[agent]` config section.
//!
//! Owns: every text the policy reads that is not a command's output, and the
//! episode limits (turns, context tokens, tokens per reply, command timeout).
//! Does not own running the tools (`tools`) or the loop (`episode`).
//!
//! The prompt follows the method's SWE-agent-style scaffold: free reasoning,
//! then exactly one command in a fenced block; file viewing and editing tools
//! beside any shell command; no interactive programs; tests are not to be
//! modified.

use super::command::CommandFormat;
use super::reward::LengthPenalty;
use crate::env::task::Task;
use serde::{Deserialize, Serialize};

/// `[agent]` in the config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScaffoldConfig {
    /// The fence around the one command of a reply.
    pub fence: String,
    /// T_max: the turn limit (the method: 40 in stage 1, 80 in stage 2).
    pub max_turns: u32,
    /// The context limit in tokens (the method: 65,536 then 131,072).
    pub max_context_tokens: usize,
    /// At most this many tokens per reply.
    pub max_reply_tokens: usize,
    /// A reply needs at least this much room; when less is left, the episode
    /// ends as truncated by the context.
    pub min_reply_tokens: usize,
    /// L_thr: steps before the length penalty starts.
    pub length_threshold: u32,
    /// A shell command is killed after this many seconds.
    pub command_timeout_s: u64,
    /// Lines shown by `open`, `goto` and the scroll commands.
    pub window_lines: usize,
    /// Include the one-shot demonstration in the system prompt (the method
    /// used it only to collect the first rejection fine-tuning data).
    pub demonstration: bool,
    /// "full" documents every tool and rule; "brief" is a few lines (for
    /// small models trained from scratch, where every prompt token costs
    /// compute on every turn and is never read).
    pub prompt: PromptStyle,
}

/// `[agent] prompt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptStyle {
    Full,
    Brief,
}

impl Default for ScaffoldConfig {
    fn default() -> Self {
        ScaffoldConfig {
            fence: "```".into(),
            max_turns: 40,
            max_context_tokens: 65_536,
            max_reply_tokens: 4096,
            min_reply_tokens: 16,
            length_threshold: 10,
            command_timeout_s: 120,
            window_lines: 100,
            demonstration: false,
            prompt: PromptStyle::Full,
        }
    }
}

impl ScaffoldConfig {
    pub fn command_format(&self) -> CommandFormat {
        CommandFormat { fence: self.fence.clone() }
    }

    pub fn length_penalty(&self) -> LengthPenalty {
        LengthPenalty { threshold: self.length_threshold, max_turns: self.max_turns }
    }

    /// Impossible values, named by key.
    pub fn validate(&self) -> anyhow::Result<()> {
        let bad = |k: &str, why: &str| Err(anyhow::anyhow!("[agent] {k}: {why}"));
        if self.fence.trim().is_empty() || self.fence.contains('\n') {
            return bad("fence", "must be a non-empty single line");
        }
        if self.max_turns == 0 {
            return bad("max_turns", "must be at least 1");
        }
        if self.max_reply_tokens == 0 {
            return bad("max_reply_tokens", "must be at least 1");
        }
        if self.min_reply_tokens > self.max_reply_tokens {
            return bad("min_reply_tokens", "must not exceed max_reply_tokens");
        }
        if self.max_context_tokens <= self.min_reply_tokens {
            return bad("max_context_tokens", "must exceed min_reply_tokens");
        }
        if self.window_lines == 0 {
            return bad("window_lines", "must be at least 1");
        }
        if self.command_timeout_s == 0 {
            return bad("command_timeout_s", "must be at least 1");
        }
        Ok(())
    }
}

/// The system prompt: the response format, the tools, the rules.
pub fn system_prompt(cfg: &ScaffoldConfig) -> String {
    let f = &cfg.fence;
    if cfg.prompt == PromptStyle::Brief {
        return format!(
            "Fix the issue in /testbed. Reply: one line of reasoning, then one command in a {f} block. \
Tools: open, goto, scroll_down, scroll_up, create, edit, replace, search_file, submit."
        );
    }
    let w = cfg.window_lines;
    let mut s = format!(
        "You are an autonomous software engineer. You work in a shell on a repository checked out at /testbed, \
and you solve the issue you are given by editing its source code.

Every reply has two parts: first your reasoning about what to do next, then exactly ONE command in a fenced block, like this:

I'll start by listing the files in the repository.
{f}
ls -a
{f}

The command runs and you see its output. Send one command per reply: a reply with no command, or with more than one, gets an error instead.

Besides any shell command, you can use these commands:
  open FILE [LINE]      show {w} lines of FILE with line numbers, around LINE
  goto LINE             move the window of the open file to LINE
  scroll_down           move the window down by {w} lines
  scroll_up             move the window up by {w} lines
  create FILE           create an empty file and open it
  edit [--file PATH] START:END <<EOF
  NEW LINES
  EOF                   replace lines START to END (inclusive) of the open file, or of PATH,
                        with the lines between <<EOF and EOF; indentation is kept as written
  replace SEARCH REPLACE [--replace-all]
                        replace the text SEARCH by REPLACE in the open file; quote arguments
                        that contain spaces; SEARCH must occur once unless --replace-all is given
  search_file TERM [FILE]
                        show the lines of the open file, or of FILE, that contain TERM
  submit                end the session; the changes you made (git diff) are your solution

Rules:
- Interactive programs (editors such as vim or nano, pagers, a bare python prompt) are not available. Run scripts instead: python reproduce.py.
- Do not modify or add tests: the repository's own tests will be run on your change.
- A command that runs longer than {t} seconds is stopped.
- Each output ends with the current directory and the open file, then the prompt bash-$.",
        t = cfg.command_timeout_s
    );
    if cfg.demonstration {
        s.push_str("\n\nHere is a demonstration of a solved issue in another repository:\n\n");
        s.push_str(&demonstration(f));
    }
    s
}

/// The one-shot demonstration: a short solved episode, as text.
pub fn demonstration(fence: &str) -> String {
    let f = fence;
    format!(
        "--- DEMONSTRATION ---
ISSUE: `mean([])` raises ZeroDivisionError; it should return 0.0.

I'll find where mean is defined.
{f}
search_file \"def mean\" stats/core.py
{f}
Found 1 matches for \"def mean\" in /testbed/stats/core.py:
12:def mean(xs):
(Current directory: /testbed, current file: none) bash-$

I'll open the file at that line.
{f}
open stats/core.py 12
{f}
[File: /testbed/stats/core.py (20 lines total)]
(11 more lines above)
12:def mean(xs):
13:    return sum(xs) / len(xs)
(7 more lines below)
(Current directory: /testbed, current file: /testbed/stats/core.py) bash-$

An empty list must give 0.0. I'll edit lines 12 to 13.
{f}
edit 12:13 <<EOF
def mean(xs):
    if not xs:
        return 0.0
    return sum(xs) / len(xs)
EOF
{f}
[File: /testbed/stats/core.py (22 lines total)]
(11 more lines above)
12:def mean(xs):
13:    if not xs:
14:        return 0.0
15:    return sum(xs) / len(xs)
(7 more lines below)
(Current directory: /testbed, current file: /testbed/stats/core.py) bash-$

I'll check the fix.
{f}
python -c \"from stats.core import mean; print(mean([]))\"
{f}
0.0
(Current directory: /testbed, current file: /testbed/stats/core.py) bash-$

It works, so I'll submit.
{f}
submit
{f}
--- END OF DEMONSTRATION ---"
    )
}

/// The footer every observation ends with.
pub fn footer(cwd: &str, file: Option<&str>) -> String {
    format!("(Current directory: {cwd}, current file: {}) bash-$", file.unwrap_or("none"))
}

/// The first user message: the issue and what to do with it (with the
/// brief prompt, the issue alone).
pub fn task_message(task: &Task, cwd: &str, style: PromptStyle) -> String {
    if style == PromptStyle::Brief {
        return format!("ISSUE:\n{}\n{}", task.problem_statement.trim_end(), footer(cwd, None));
    }
    format!(
        "We're solving this issue in the repository at /testbed:
ISSUE:
{}

Solve it by editing the repository's source code, using the commands above. When you are done, run `submit`.
{}",
        task.problem_statement.trim_end(),
        footer(cwd, None)
    )
}

/// What a command's output looks like to the policy.
pub fn observation(output: &str, cwd: &str, file: Option<&str>) -> String {
    let body = if output.trim().is_empty() { "Your command ran successfully and did not produce any output." } else { output.trim_end_matches('\n') };
    format!("{body}\n{}", footer(cwd, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observation_ends_with_the_footer() {
        let o = observation("a\nb\n", "/testbed/src", Some("/testbed/src/x.py"));
        assert_eq!(o, "a\nb\n(Current directory: /testbed/src, current file: /testbed/src/x.py) bash-$");
        let o = observation("", "/testbed", None);
        assert!(o.starts_with("Your command ran successfully"));
        assert!(o.ends_with("(Current directory: /testbed, current file: none) bash-$"));
    }

    #[test]
    fn the_prompt_uses_the_configured_fence_and_the_demonstration_is_optional() {
        let mut c = ScaffoldConfig::default();
        let p = system_prompt(&c);
        assert!(p.contains("```\nls -a\n```"));
        assert!(!p.contains("DEMONSTRATION"));
        c.fence = "~~~".into();
        c.demonstration = true;
        let p = system_prompt(&c);
        assert!(p.contains("~~~\nls -a\n~~~") && p.contains("~~~\nsubmit\n~~~"));
        assert!(!p.contains("```"));
        // The demonstration's commands are each extractable with that fence.
        let demo = demonstration("~~~");
        let replies: Vec<&str> = demo.split("bash-$").collect();
        assert!(replies.len() >= 5);
        // the brief prompt still names every tool and the fence
        c.prompt = PromptStyle::Brief;
        let b = system_prompt(&c);
        for tool in ["open", "goto", "scroll_down", "scroll_up", "create", "edit", "replace", "search_file", "submit", "~~~"] {
            assert!(b.contains(tool), "{tool} missing from {b}");
        }
        assert!(b.len() * 4 < system_prompt(&ScaffoldConfig::default()).len());
    }

    #[test]
    fn impossible_limits_are_named() {
        let c = ScaffoldConfig { min_reply_tokens: 10, max_reply_tokens: 5, ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("min_reply_tokens"));
        let c = ScaffoldConfig { max_turns: 0, ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("max_turns"));
        ScaffoldConfig::default().validate().unwrap();
    }
}
