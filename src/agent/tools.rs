//! The scaffold's tools: parsing a command into a tool call, and running it
//! in an episode's container.
//!
//! Owns: the tool syntax (`open`, `goto`, `scroll_up`, `scroll_down`,
//! `create`, `edit` with a heredoc, `replace`, `search_file`, `submit`; any
//! other command goes to the shell), the viewer state (current directory,
//! open file, window), and the text each tool answers with. Does not own the
//! container, the shell session or file transfer (`env::episode`), nor the
//! observation footer (`scaffold`).
//!
//! The file tools run on the host: a file is read out of the container byte
//! for byte through the Engine API, changed here, and written back with its
//! permission bits. That keeps edits exact (no shell quoting of the
//! replacement text) and costs two API calls per edit.

use crate::env::episode::{Episode, FileBytes, NotAFile};
use anyhow::Result;
use std::time::Duration;

/// Files larger than this are not opened or edited by the file tools.
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// `search_file` lists at most this many matching lines.
pub const MAX_SEARCH_MATCHES: usize = 50;

/// One parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tool {
    Open { path: String, line: Option<usize> },
    Goto { line: usize },
    ScrollUp,
    ScrollDown,
    Create { path: String },
    /// Replace lines `start..=end` (1-based) with `text`'s lines; `end ==
    /// start - 1` inserts before `start`.
    Edit { path: Option<String>, start: usize, end: usize, text: String },
    Replace { search: String, replace: String, all: bool },
    SearchFile { term: String, path: Option<String> },
    Submit,
    /// Anything else: a shell command, run as is.
    Shell(String),
}

impl Tool {
    /// The tool's name, as recorded in trajectories.
    pub fn name(&self) -> &'static str {
        match self {
            Tool::Open { .. } => "open",
            Tool::Goto { .. } => "goto",
            Tool::ScrollUp => "scroll_up",
            Tool::ScrollDown => "scroll_down",
            Tool::Create { .. } => "create",
            Tool::Edit { .. } => "edit",
            Tool::Replace { .. } => "replace",
            Tool::SearchFile { .. } => "search_file",
            Tool::Submit => "submit",
            Tool::Shell(_) => "shell",
        }
    }
}

const TOOL_NAMES: &[&str] = &["open", "goto", "scroll_up", "scroll_down", "create", "edit", "replace", "search_file", "submit"];

fn usage(tool: &str) -> &'static str {
    match tool {
        "open" => "usage: open FILE [LINE]",
        "goto" => "usage: goto LINE",
        "scroll_up" => "usage: scroll_up",
        "scroll_down" => "usage: scroll_down",
        "create" => "usage: create FILE",
        "edit" => "usage: edit [--file PATH] START:END <<EOF\nNEW LINES\nEOF",
        "replace" => "usage: replace SEARCH REPLACE [--replace-all]",
        "search_file" => "usage: search_file TERM [FILE]",
        _ => "usage: submit",
    }
}

fn line_number(s: &str, tool: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{tool}: {s:?} is not a line number (lines count from 1)\n{}", usage(tool))),
    }
}

/// Parse a command. `Err` is a usage error to show the policy (the command
/// named a tool but did not follow its syntax).
pub fn parse(cmd: &str) -> Result<Tool, String> {
    let cmd = cmd.trim_matches(|c| c == '\n' || c == '\r');
    // No argument, file name or shell command can hold a NUL: the daemon
    // answers such a path or exec with a server error, which would count a
    // policy's typo as an environment failure (retried, never scored).
    if cmd.contains('\0') {
        return Err("the command contains a NUL character, which no file name or shell command can hold".into());
    }
    let first_line = cmd.lines().next().unwrap_or("");
    let head = first_line.split_whitespace().next().unwrap_or("");
    if !TOOL_NAMES.contains(&head) {
        return Ok(Tool::Shell(cmd.to_string()));
    }
    if head == "edit" {
        return parse_edit(cmd);
    }
    if cmd.lines().count() > 1 {
        return Err(format!("{head} takes a single line; send other commands in later replies\n{}", usage(head)));
    }
    let args = shlex::split(first_line).ok_or_else(|| format!("{head}: unbalanced quotes\n{}", usage(head)))?;
    let a: Vec<&str> = args.iter().skip(1).map(|s| s.as_str()).collect();
    let bad = || Err(usage(head).to_string());
    match head {
        "open" => match a.as_slice() {
            [p] => Ok(Tool::Open { path: p.to_string(), line: None }),
            [p, l] => Ok(Tool::Open { path: p.to_string(), line: Some(line_number(l, head)?) }),
            _ => bad(),
        },
        "goto" => match a.as_slice() {
            [l] => Ok(Tool::Goto { line: line_number(l, head)? }),
            _ => bad(),
        },
        "scroll_up" if a.is_empty() => Ok(Tool::ScrollUp),
        "scroll_down" if a.is_empty() => Ok(Tool::ScrollDown),
        "create" => match a.as_slice() {
            [p] => Ok(Tool::Create { path: p.to_string() }),
            _ => bad(),
        },
        "replace" => {
            let all = a.contains(&"--replace-all");
            let rest: Vec<&str> = a.iter().copied().filter(|x| *x != "--replace-all").collect();
            match rest.as_slice() {
                [s, r] if !s.is_empty() => Ok(Tool::Replace { search: s.to_string(), replace: r.to_string(), all }),
                [_, _] => Err("replace: SEARCH must not be empty".into()),
                _ => bad(),
            }
        }
        "search_file" => match a.as_slice() {
            [t] if !t.is_empty() => Ok(Tool::SearchFile { term: t.to_string(), path: None }),
            [t, p] if !t.is_empty() => Ok(Tool::SearchFile { term: t.to_string(), path: Some(p.to_string()) }),
            _ => bad(),
        },
        "submit" if a.is_empty() => Ok(Tool::Submit),
        _ => bad(),
    }
}

fn parse_edit(cmd: &str) -> Result<Tool, String> {
    let mut lines = cmd.split('\n');
    let first = lines.next().unwrap_or("");
    // The heredoc opener may be glued to the range (`10:12<<EOF`) or apart.
    let (head, marker) = match first.find("<<") {
        Some(i) => {
            let m = first[i + 2..].trim().trim_start_matches('-').trim();
            let m = m.trim_matches(|c| c == '\'' || c == '"');
            (&first[..i], m.to_string())
        }
        None => return Err(format!("edit: the new lines go in a heredoc\n{}", usage("edit"))),
    };
    if marker.is_empty() || marker.contains(char::is_whitespace) {
        return Err(format!("edit: the heredoc needs a one-word end marker, as in <<EOF\n{}", usage("edit")));
    }
    let args = shlex::split(head).ok_or_else(|| format!("edit: unbalanced quotes\n{}", usage("edit")))?;
    let a: Vec<&str> = args.iter().skip(1).map(|s| s.as_str()).collect();
    let (path, range) = match a.as_slice() {
        [r] => (None, *r),
        ["--file", p, r] => (Some(p.to_string()), *r),
        _ => return Err(usage("edit").to_string()),
    };
    let (s, e) = range.split_once(':').ok_or_else(|| format!("edit: {range:?} is not a line range START:END\n{}", usage("edit")))?;
    let start = line_number(s, "edit")?;
    let end = match e.parse::<usize>() {
        Ok(n) => n,
        Err(_) => return Err(format!("edit: {e:?} is not a line number\n{}", usage("edit"))),
    };
    if end + 1 < start {
        return Err(format!("edit: END ({end}) is before START ({start}); use START:START-1 to insert before START"));
    }
    let mut body: Vec<&str> = vec![];
    let mut closed = false;
    for l in lines.by_ref() {
        if l.trim_end_matches('\r') == marker {
            closed = true;
            break;
        }
        body.push(l);
    }
    if !closed {
        return Err(format!("edit: the heredoc is not closed: end it with a line that is exactly {marker}"));
    }
    if lines.any(|l| !l.trim().is_empty()) {
        return Err(format!("edit: text after the heredoc's end marker {marker}; send other commands in later replies"));
    }
    let mut text = body.join("\n");
    if !body.is_empty() {
        text.push('\n');
    }
    Ok(Tool::Edit { path, start, end, text })
}

/// What a tool gave back.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ToolOutput {
    pub output: String,
    pub exit_code: Option<i64>,
    pub timed_out: bool,
    pub truncated: bool,
    pub total_bytes: u64,
    /// Set by `submit`: the patch.
    pub submitted: Option<String>,
}

impl ToolOutput {
    fn text(s: impl Into<String>, code: i64) -> Self {
        let output = s.into();
        ToolOutput { total_bytes: output.len() as u64, output, exit_code: Some(code), ..Default::default() }
    }
}

/// The viewer and shell state of one episode.
#[derive(Clone, Debug)]
pub struct Tools {
    pub cwd: String,
    /// The open file, as an absolute path.
    pub file: Option<String>,
    /// First line of the window (1-based).
    pub first_line: usize,
    pub window: usize,
    pub timeout: Duration,
}

/// `base` joined with `path`, with `.` and `..` resolved.
pub fn resolve(base: &str, path: &str) -> String {
    let joined = if path.starts_with('/') { path.to_string() } else { format!("{}/{path}", base.trim_end_matches('/')) };
    let mut parts: Vec<&str> = vec![];
    for p in joined.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            x => parts.push(x),
        }
    }
    format!("/{}", parts.join("/"))
}

/// A text file split into lines, each with its line ending.
struct TextFile {
    lines: Vec<String>,
    mode: u32,
    /// "\r\n" when most lines end so, else "\n".
    eol: &'static str,
}

impl TextFile {
    fn parse(b: FileBytes, path: &str) -> Result<TextFile, String> {
        let s = String::from_utf8(b.content).map_err(|_| format!("{path} is not a UTF-8 text file"))?;
        let lines: Vec<String> = s.split_inclusive('\n').map(|l| l.to_string()).collect();
        let crlf = lines.iter().filter(|l| l.ends_with("\r\n")).count();
        let eol = if crlf * 2 > lines.len() { "\r\n" } else { "\n" };
        Ok(TextFile { lines, mode: b.mode, eol })
    }

    fn bytes(&self) -> Vec<u8> {
        self.lines.concat().into_bytes()
    }

    fn line(&self, i: usize) -> &str {
        self.lines[i].trim_end_matches('\n').trim_end_matches('\r')
    }

    /// Lines `start..=end` (1-based) replaced by `text`'s lines.
    fn splice(&mut self, start: usize, end: usize, text: &str) {
        let n = self.lines.len();
        let reaches_end = end == n && n > 0 && end >= start;
        let last_had_eol = self.lines.last().is_some_and(|l| l.ends_with('\n'));
        let mut new: Vec<String> = text.split_inclusive('\n').map(|l| format!("{}{}", l.trim_end_matches('\n').trim_end_matches('\r'), self.eol)).collect();
        if reaches_end && !last_had_eol {
            if let Some(l) = new.last_mut() {
                *l = l.trim_end_matches('\n').trim_end_matches('\r').to_string();
            }
        }
        // a line that had no ending and now has lines after it needs one
        if start > 1 && start - 1 == n {
            if let Some(prev) = self.lines.last_mut() {
                if !prev.ends_with('\n') && !new.is_empty() {
                    prev.push_str(self.eol);
                }
            }
        }
        self.lines.splice(start - 1..end, new);
    }
}

impl Tools {
    pub fn new(window: usize, timeout: Duration) -> Self {
        Tools { cwd: "/testbed".into(), file: None, first_line: 1, window: window.max(1), timeout }
    }

    /// Run one tool. `Err` only when the environment failed; a tool's own
    /// failure (no such file, bad range) is an output with exit code 1.
    pub async fn run(&mut self, ep: &mut Episode, tool: Tool) -> Result<ToolOutput> {
        match tool {
            Tool::Shell(cmd) => self.shell(ep, &cmd).await,
            Tool::Submit => {
                let patch = ep.submission().await?;
                let mut o = ToolOutput::text("Submitted.", 0);
                o.submitted = Some(patch);
                Ok(o)
            }
            Tool::Open { path, line } => {
                let p = resolve(&self.cwd, &path);
                let f = match self.read(ep, &p).await? {
                    Ok(f) => f,
                    Err(e) => return Ok(ToolOutput::text(e, 1)),
                };
                if let Some(l) = line {
                    if l > f.lines.len().max(1) {
                        return Ok(ToolOutput::text(format!("{p} has {} lines; line {l} does not exist", f.lines.len()), 1));
                    }
                }
                self.file = Some(p.clone());
                self.center(line.unwrap_or(1), &f, line.is_none());
                Ok(ToolOutput::text(self.window_text(&p, &f), 0))
            }
            Tool::Goto { line } => {
                let Some((p, f)) = self.open_file(ep).await? else { return Ok(ToolOutput::text("No file is open: use open FILE first.", 1)) };
                let f = match f {
                    Ok(f) => f,
                    Err(e) => return Ok(ToolOutput::text(e, 1)),
                };
                if line > f.lines.len().max(1) {
                    return Ok(ToolOutput::text(format!("{p} has {} lines; line {line} does not exist", f.lines.len()), 1));
                }
                self.center(line, &f, false);
                Ok(ToolOutput::text(self.window_text(&p, &f), 0))
            }
            Tool::ScrollUp | Tool::ScrollDown => {
                let down = matches!(tool, Tool::ScrollDown);
                let Some((p, f)) = self.open_file(ep).await? else { return Ok(ToolOutput::text("No file is open: use open FILE first.", 1)) };
                let f = match f {
                    Ok(f) => f,
                    Err(e) => return Ok(ToolOutput::text(e, 1)),
                };
                let n = f.lines.len();
                if down {
                    if self.first_line + self.window > n {
                        return Ok(ToolOutput::text(format!("Already at the end of {p}.\n{}", self.window_text(&p, &f)), 0));
                    }
                    self.first_line += self.window;
                } else {
                    if self.first_line <= 1 {
                        return Ok(ToolOutput::text(format!("Already at the top of {p}.\n{}", self.window_text(&p, &f)), 0));
                    }
                    self.first_line = self.first_line.saturating_sub(self.window).max(1);
                }
                Ok(ToolOutput::text(self.window_text(&p, &f), 0))
            }
            Tool::Create { path } => {
                let p = resolve(&self.cwd, &path);
                match ep.read_file(&p, MAX_FILE_BYTES).await? {
                    Err(NotAFile::Missing) => {}
                    _ => return Ok(ToolOutput::text(format!("{p} already exists: open it instead"), 1)),
                }
                if let Some(dir) = p.rsplit_once('/').map(|x| x.0).filter(|d| !d.is_empty()) {
                    let r = ep.shell.run_exec(&format!("mkdir -p '{}'", dir.replace('\'', "'\\''")), Duration::from_secs(30)).await?;
                    if r.exit_code != Some(0) {
                        return Ok(ToolOutput::text(format!("cannot create {dir}: {}", r.output.trim()), 1));
                    }
                }
                ep.write_bytes(&p, b"", 0o644).await?;
                self.file = Some(p.clone());
                self.first_line = 1;
                let f = TextFile { lines: vec![], mode: 0o644, eol: "\n" };
                Ok(ToolOutput::text(self.window_text(&p, &f), 0))
            }
            Tool::Edit { path, start, end, text } => {
                let p = match path {
                    Some(x) => resolve(&self.cwd, &x),
                    None => match &self.file {
                        Some(f) => f.clone(),
                        None => return Ok(ToolOutput::text("No file is open: use open FILE first, or edit --file PATH.", 1)),
                    },
                };
                let mut f = match self.read(ep, &p).await? {
                    Ok(f) => f,
                    Err(e) => return Ok(ToolOutput::text(e, 1)),
                };
                let n = f.lines.len();
                if start > n + 1 {
                    return Ok(ToolOutput::text(format!("{p} has {n} lines: START must be at most {}", n + 1), 1));
                }
                let end = end.min(n);
                let end = end.max(start - 1);
                f.splice(start, end, &text);
                ep.write_bytes(&p, &f.bytes(), f.mode).await?;
                self.file = Some(p.clone());
                self.center(start, &f, false);
                Ok(ToolOutput::text(self.window_text(&p, &f), 0))
            }
            Tool::Replace { search, replace, all } => {
                let Some((p, f)) = self.open_file(ep).await? else { return Ok(ToolOutput::text("No file is open: use open FILE first.", 1)) };
                let f = match f {
                    Ok(f) => f,
                    Err(e) => return Ok(ToolOutput::text(e, 1)),
                };
                let text = f.lines.concat();
                let count = text.matches(search.as_str()).count();
                if count == 0 {
                    return Ok(ToolOutput::text(format!("{search:?} was not found in {p}"), 1));
                }
                if count > 1 && !all {
                    return Ok(ToolOutput::text(format!("{search:?} occurs {count} times in {p}: give more context to make it unique, or add --replace-all"), 1));
                }
                let at = text.find(search.as_str()).unwrap_or(0);
                let line = text[..at].matches('\n').count() + 1;
                let new = if all { text.replace(search.as_str(), &replace) } else { text.replacen(search.as_str(), &replace, 1) };
                let nf = TextFile::parse(FileBytes { content: new.into_bytes(), mode: f.mode }, &p).map_err(anyhow::Error::msg)?;
                ep.write_bytes(&p, &nf.bytes(), nf.mode).await?;
                self.center(line, &nf, false);
                let head = if count > 1 { format!("Replaced {count} occurrences.\n") } else { String::new() };
                Ok(ToolOutput::text(format!("{head}{}", self.window_text(&p, &nf)), 0))
            }
            Tool::SearchFile { term, path } => {
                let p = match path {
                    Some(x) => resolve(&self.cwd, &x),
                    None => match &self.file {
                        Some(f) => f.clone(),
                        None => return Ok(ToolOutput::text("No file is open: use open FILE first, or search_file TERM FILE.", 1)),
                    },
                };
                let f = match self.read(ep, &p).await? {
                    Ok(f) => f,
                    Err(e) => return Ok(ToolOutput::text(e, 1)),
                };
                let hits: Vec<usize> = (0..f.lines.len()).filter(|&i| f.line(i).contains(term.as_str())).collect();
                if hits.is_empty() {
                    return Ok(ToolOutput::text(format!("No matches found for {term:?} in {p}"), 1));
                }
                let mut s = format!("Found {} matches for {term:?} in {p}:\n", hits.len());
                for &i in hits.iter().take(MAX_SEARCH_MATCHES) {
                    s.push_str(&format!("{}:{}\n", i + 1, f.line(i)));
                }
                if hits.len() > MAX_SEARCH_MATCHES {
                    s.push_str(&format!("(showing the first {MAX_SEARCH_MATCHES}; narrow the search)\n"));
                }
                Ok(ToolOutput::text(s, 0))
            }
        }
    }

    async fn shell(&mut self, ep: &mut Episode, cmd: &str) -> Result<ToolOutput> {
        let first = cmd.split_whitespace().next().unwrap_or("");
        if ["vim", "vi", "nano", "emacs", "less", "more", "top", "htop", "ipython"].contains(&first) {
            return Ok(ToolOutput::text(format!("{first} is interactive and not available here: use open, edit and search_file, or run a script"), 1));
        }
        let r = ep.run(cmd, self.timeout).await?;
        let out = ToolOutput { output: r.observation(self.timeout), exit_code: r.exit_code, timed_out: r.timed_out, truncated: r.truncated, total_bytes: r.total_bytes, submitted: None };
        if ep.shell.has_session() {
            // `cd` in the command persists in the session: ask where it is now
            if let Ok(p) = ep.run("pwd", Duration::from_secs(20)).await {
                let d = p.output.trim();
                if p.exit_code == Some(0) && d.starts_with('/') && !d.contains('\n') {
                    self.cwd = d.to_string();
                }
            }
        }
        Ok(out)
    }

    async fn read(&self, ep: &mut Episode, p: &str) -> Result<Result<TextFile, String>> {
        Ok(match ep.read_file(p, MAX_FILE_BYTES).await? {
            Ok(b) => TextFile::parse(b, p),
            Err(NotAFile::Missing) => Err(format!("{p}: no such file")),
            Err(NotAFile::Directory) => Err(format!("{p} is a directory: use ls")),
            Err(NotAFile::TooLarge(n)) => Err(format!("{p} is too large to open ({n} bytes): use grep, head or sed")),
            Err(NotAFile::Special) => Err(format!("{p} is not a regular file")),
        })
    }

    async fn open_file(&self, ep: &mut Episode) -> Result<Option<(String, Result<TextFile, String>)>> {
        match self.file.clone() {
            None => Ok(None),
            Some(p) => {
                let f = self.read(ep, &p).await?;
                Ok(Some((p, f)))
            }
        }
    }

    /// Put `line` in the window: at the top when `top`, else about centred.
    fn center(&mut self, line: usize, f: &TextFile, top: bool) {
        let n = f.lines.len().max(1);
        let line = line.clamp(1, n);
        self.first_line = if top { 1 } else { line.saturating_sub(self.window / 2).max(1) };
    }

    fn window_text(&self, p: &str, f: &TextFile) -> String {
        let n = f.lines.len();
        let first = self.first_line.min(n.max(1));
        let last = (first + self.window - 1).min(n);
        let mut s = format!("[File: {p} ({n} lines total)]\n");
        if first > 1 {
            s.push_str(&format!("({} more lines above)\n", first - 1));
        }
        for i in first..=last {
            s.push_str(&format!("{i}:{}\n", f.line(i - 1)));
        }
        if last < n {
            s.push_str(&format!("({} more lines below)\n", n - last));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_parse() {
        assert_eq!(parse("open src/a.py 30"), Ok(Tool::Open { path: "src/a.py".into(), line: Some(30) }));
        assert_eq!(parse("open 'a b.py'"), Ok(Tool::Open { path: "a b.py".into(), line: None }));
        assert_eq!(parse("goto 7"), Ok(Tool::Goto { line: 7 }));
        assert_eq!(parse("scroll_down"), Ok(Tool::ScrollDown));
        assert_eq!(parse("submit\n"), Ok(Tool::Submit));
        assert_eq!(parse("replace 'a + b' \"a - b\" --replace-all"), Ok(Tool::Replace { search: "a + b".into(), replace: "a - b".into(), all: true }));
        assert_eq!(parse("search_file TODO x.py"), Ok(Tool::SearchFile { term: "TODO".into(), path: Some("x.py".into()) }));
        assert_eq!(parse("ls -la | head"), Ok(Tool::Shell("ls -la | head".into())));
        assert_eq!(parse("python -c 'print(1)'\necho hi"), Ok(Tool::Shell("python -c 'print(1)'\necho hi".into())));
        // a word that merely starts like a tool is a shell command
        assert_eq!(parse("opener x"), Ok(Tool::Shell("opener x".into())));
    }

    #[test]
    fn edit_parses_its_heredoc() {
        let t = parse("edit 3:4 <<EOF\n    if x:\n        return 1\nEOF").unwrap();
        assert_eq!(t, Tool::Edit { path: None, start: 3, end: 4, text: "    if x:\n        return 1\n".into() });
        let t = parse("edit --file pkg/m.py 10:9 << 'END'\nnew\nEND\n").unwrap();
        assert_eq!(t, Tool::Edit { path: Some("pkg/m.py".into()), start: 10, end: 9, text: "new\n".into() });
        // an empty body deletes the lines
        assert_eq!(parse("edit 2:2 <<EOF\nEOF").unwrap(), Tool::Edit { path: None, start: 2, end: 2, text: String::new() });
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        assert!(parse("open").unwrap_err().contains("usage: open FILE [LINE]"));
        assert!(parse("goto x").unwrap_err().contains("not a line number"));
        assert!(parse("goto 0").unwrap_err().contains("not a line number"));
        assert!(parse("edit 3:4").unwrap_err().contains("heredoc"));
        assert!(parse("edit 3:4 <<EOF\nx\n").unwrap_err().contains("not closed"));
        assert!(parse("edit 5:3 <<EOF\nx\nEOF").unwrap_err().contains("before START"));
        assert!(parse("edit 3-4 <<EOF\nx\nEOF").unwrap_err().contains("START:END"));
        assert!(parse("edit 1:1 <<EOF\nx\nEOF\nls").unwrap_err().contains("after the heredoc"));
        assert!(parse("replace onlyone").unwrap_err().contains("usage: replace"));
        assert!(parse("submit now").unwrap_err().contains("usage: submit"));
        assert!(parse("open a.py\nls").unwrap_err().contains("single line"));
        for c in ["open data/\0first.py", "cat a\0b", "replace 'x\0' 'y'", "edit 1:1 <<EOF\n\0\nEOF"] {
            assert!(parse(c).unwrap_err().contains("NUL character"), "{c:?}");
        }
    }

    #[test]
    fn paths_resolve_against_the_directory() {
        assert_eq!(resolve("/testbed", "src/a.py"), "/testbed/src/a.py");
        assert_eq!(resolve("/testbed/src", "../b.py"), "/testbed/b.py");
        assert_eq!(resolve("/testbed", "/etc/./hosts"), "/etc/hosts");
        assert_eq!(resolve("/", "x"), "/x");
    }

    fn tf(s: &str) -> TextFile {
        TextFile::parse(FileBytes { content: s.as_bytes().to_vec(), mode: 0o755 }, "f").unwrap()
    }

    #[test]
    fn splicing_lines() {
        let mut f = tf("a\nb\nc\n");
        f.splice(2, 2, "B1\nB2\n");
        assert_eq!(String::from_utf8(f.bytes()).unwrap(), "a\nB1\nB2\nc\n");
        let mut f = tf("a\nb\nc\n");
        f.splice(2, 1, "x\n"); // insert before line 2
        assert_eq!(String::from_utf8(f.bytes()).unwrap(), "a\nx\nb\nc\n");
        let mut f = tf("a\nb\nc\n");
        f.splice(2, 3, ""); // delete
        assert_eq!(String::from_utf8(f.bytes()).unwrap(), "a\n");
        let mut f = tf("a\nb"); // no final newline stays so
        f.splice(2, 2, "c\n");
        assert_eq!(String::from_utf8(f.bytes()).unwrap(), "a\nc");
        let mut f = tf("a"); // appending after a last line without newline
        f.splice(2, 1, "b\n");
        assert_eq!(String::from_utf8(f.bytes()).unwrap(), "a\nb\n");
        let mut f = tf(""); // an empty file
        f.splice(1, 0, "x\ny\n");
        assert_eq!(String::from_utf8(f.bytes()).unwrap(), "x\ny\n");
        let mut f = tf("a\r\nb\r\n"); // CRLF files keep CRLF
        f.splice(1, 1, "z\n");
        assert_eq!(String::from_utf8(f.bytes()).unwrap(), "z\r\nb\r\n");
        assert_eq!(f.mode, 0o755);
    }

    #[test]
    fn the_window_shows_numbers_and_what_is_around() {
        let f = tf(&(1..=250).map(|i| format!("line{i}\n")).collect::<String>());
        let mut t = Tools::new(100, Duration::from_secs(1));
        t.center(120, &f, false);
        let w = t.window_text("/testbed/x", &f);
        assert!(w.starts_with("[File: /testbed/x (250 lines total)]\n(69 more lines above)\n70:line70\n"), "{w}");
        assert!(w.ends_with("169:line169\n(81 more lines below)\n"), "{w}");
    }
}
