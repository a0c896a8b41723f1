//! Extracting the single command from a reply: reasoning in free text, then
//! exactly one command in a fenced block.
//!
//! The default fence is three backticks (an optional info string such as
//! `bash` on the opening line is ignored), as in SWE-agent's prompts; the
//! fence is configurable. A reply with no complete block is the format error
//! "command not extractable"; one with several blocks is "multiple commands in
//! a single turn" — the two failures the method reports for the base model.
//! Such turns get an error observation and are masked in rejection
//! fine-tuning.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandFormat {
    /// The fence that opens and closes the command block.
    pub fence: String,
}

impl Default for CommandFormat {
    fn default() -> Self {
        CommandFormat { fence: "```".into() }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormatError {
    /// No complete fenced block (or only an empty one).
    NotExtractable,
    /// More than one fenced block.
    MultipleCommands { count: usize },
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FormatError::NotExtractable => write!(f, "no command found: put exactly one command in a fenced block"),
            FormatError::MultipleCommands { count } => {
                write!(f, "{count} commands found in one reply: put exactly one command in a fenced block")
            }
        }
    }
}

/// The command in `reply`, or why there is none.
pub fn extract(reply: &str, fmt: &CommandFormat) -> Result<String, FormatError> {
    let fence = fmt.fence.as_str();
    let mut blocks: Vec<String> = vec![];
    let mut current: Option<Vec<&str>> = None;
    for line in reply.lines() {
        let trimmed = line.trim_start();
        match current.as_mut() {
            None => {
                if trimmed.starts_with(fence) {
                    current = Some(vec![]);
                }
            }
            Some(body) => {
                if trimmed.trim_end() == fence {
                    blocks.push(body.join("\n"));
                    current = None;
                } else {
                    body.push(line);
                }
            }
        }
    }
    // An unclosed block does not count as a command.
    let blocks: Vec<String> = blocks.into_iter().filter(|b| !b.trim().is_empty()).collect();
    match blocks.len() {
        0 => Err(FormatError::NotExtractable),
        1 => Ok(blocks.into_iter().next().expect("one block")),
        count => Err(FormatError::MultipleCommands { count }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(s: &str) -> Result<String, FormatError> {
        extract(s, &CommandFormat::default())
    }

    #[test]
    fn one_block_with_or_without_an_info_string() {
        assert_eq!(ex("I will look.\n```\nls -la\n```\n").unwrap(), "ls -la");
        assert_eq!(ex("Run it:\n```bash\npython -m pytest -q\n```").unwrap(), "python -m pytest -q");
        // A multi-line command (an edit with its heredoc) stays whole.
        let edit = "Fix:\n```\nedit 3:4 <<EOF\n    return a + b\nEOF\n```";
        assert_eq!(ex(edit).unwrap(), "edit 3:4 <<EOF\n    return a + b\nEOF");
    }

    #[test]
    fn format_errors_are_classified() {
        assert_eq!(ex("I think the bug is in add."), Err(FormatError::NotExtractable));
        assert_eq!(ex("```\nls\n"), Err(FormatError::NotExtractable), "an unclosed block");
        assert_eq!(ex("```\n\n```"), Err(FormatError::NotExtractable), "an empty block");
        assert_eq!(ex("```\nls\n```\nthen\n```\ncat a.py\n```"), Err(FormatError::MultipleCommands { count: 2 }));
    }

    #[test]
    fn the_fence_is_configurable() {
        let f = CommandFormat { fence: "~~~".into() };
        assert_eq!(extract("~~~\nsubmit\n~~~", &f).unwrap(), "submit");
        assert_eq!(extract("```\nsubmit\n```", &f), Err(FormatError::NotExtractable));
    }
}
