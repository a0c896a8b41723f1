//! The shell an agent acts through: one long-lived bash per episode,
//! attached over the Engine API, with a per-command timeout, capped output
//! and a recorded fallback to one exec per command.
//!
//! Owns: the session protocol (each command is eval'd from a quoted
//! variable, followed by an end marker carrying its exit code), killing a
//! timed-out command without killing the session, output capping
//! (head + tail, elision marker, printable text), and exec-per-command.
//! Does not own: the container's lifetime (`sandbox`) or file operations
//! (`episode`).

use super::EnvError;
use anyhow::{Context, Result};
use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::Docker;
use futures_util::{Stream, StreamExt};
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// How much output one command may keep.
#[derive(Debug, Clone, Copy)]
pub struct OutputLimits {
    pub head_bytes: usize,
    pub tail_bytes: usize,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits { head_bytes: 8 * 1024, tail_bytes: 8 * 1024 }
    }
}

/// Output kept under a cap: the first `head` bytes and the last `tail`
/// bytes, whatever the total. Memory stays O(head + tail).
#[derive(Debug, Clone)]
pub struct Capped {
    head: Vec<u8>,
    tail: Vec<u8>,
    total: u64,
    limits: OutputLimits,
}

impl Capped {
    pub fn new(limits: OutputLimits) -> Self {
        Capped { head: Vec::new(), tail: Vec::new(), total: 0, limits }
    }

    pub fn push(&mut self, mut b: &[u8]) {
        self.total += b.len() as u64;
        if self.head.len() < self.limits.head_bytes {
            let n = (self.limits.head_bytes - self.head.len()).min(b.len());
            self.head.extend_from_slice(&b[..n]);
            b = &b[n..];
        }
        if b.len() >= self.limits.tail_bytes {
            self.tail.clear();
            self.tail.extend_from_slice(&b[b.len() - self.limits.tail_bytes..]);
        } else {
            self.tail.extend_from_slice(b);
            if self.tail.len() > 2 * self.limits.tail_bytes.max(1) {
                let cut = self.tail.len() - self.limits.tail_bytes;
                self.tail.drain(..cut);
            }
        }
    }

    /// Bytes seen in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes held now (bounded by about head + 2 × tail).
    pub fn held(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// The kept text, printable, with a marker where the middle was elided.
    pub fn render(&self) -> (String, bool) {
        let tail = if self.tail.len() > self.limits.tail_bytes { &self.tail[self.tail.len() - self.limits.tail_bytes..] } else { &self.tail[..] };
        let kept = (self.head.len() + tail.len()) as u64;
        if kept >= self.total {
            let mut all = self.head.clone();
            all.extend_from_slice(tail);
            (printable(&all), false)
        } else {
            let elided = self.total - kept;
            (format!("{}\n[... {elided} bytes elided ...]\n{}", printable(&self.head), printable(tail)), true)
        }
    }
}

/// Text safe to show a model: invalid UTF-8 becomes U+FFFD, control
/// characters other than newline and tab become `\xNN`.
pub fn printable(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '\n' || c == '\t' || !c.is_control() {
            out.push(c);
        } else if c == '\r' {
            // carriage returns from progress bars: keep lines readable
            out.push('\n');
        } else {
            out.push_str(&format!("\\x{:02x}", c as u32));
        }
    }
    out
}

/// What one command gave back.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    pub output: String,
    /// None when the command timed out.
    pub exit_code: Option<i64>,
    pub timed_out: bool,
    pub truncated: bool,
    pub total_bytes: u64,
    pub elapsed: Duration,
    /// Ran through one exec (fallback or by choice), not the session.
    pub via_exec: bool,
}

impl CmdOutput {
    /// The observation text for the model.
    pub fn observation(&self, timeout: Duration) -> String {
        let mut s = self.output.clone();
        if self.timed_out {
            s.push_str(&format!("\n[command timed out after {} s and was killed]", timeout.as_secs_f64()));
        }
        s
    }
}

type OutStream = Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;

struct Session {
    input: Pin<Box<dyn AsyncWrite + Send>>,
    output: OutStream,
    pid: i64,
    nonce: String,
}

/// A shell in one container.
pub struct Shell {
    docker: Docker,
    container: String,
    session: Option<Session>,
    counter: u64,
    pub limits: OutputLimits,
    /// Why the session was given up, when it was (the episode records it).
    pub fallback_reason: Option<String>,
    /// Working directory for exec-per-command.
    pub workdir: String,
}

/// `s` as one single-quoted bash word.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

enum SessionEnd {
    Done(Capped, i64),
}

impl Shell {
    /// A shell that runs every command through its own exec (no session).
    pub fn exec_only(docker: Docker, container: &str) -> Self {
        Shell { docker, container: container.to_string(), session: None, counter: 0, limits: OutputLimits::default(), fallback_reason: None, workdir: "/testbed".into() }
    }

    /// Start a persistent bash session in the container (cwd /testbed when it exists).
    pub async fn start(docker: Docker, container: &str) -> Result<Self> {
        let mut sh = Shell::exec_only(docker, container);
        let exec = sh
            .docker
            .create_exec(
                container,
                ExecConfig {
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(false),
                    cmd: Some(vec!["bash".into(), "--noprofile".into(), "--norc".into()]),
                    env: Some(vec!["PAGER=cat".into(), "GIT_PAGER=cat".into(), "TERM=dumb".into(), "PYTHONDONTWRITEBYTECODE=1".into()]),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| EnvError(format!("creating the shell session in {container}: {e}")))?;
        let started = sh.docker.start_exec(&exec.id, Some(StartExecOptions { detach: false, tty: false, output_capacity: None })).await.map_err(|e| EnvError(format!("attaching to the shell session: {e}")))?;
        let (output, input) = match started {
            StartExecResults::Attached { output, input } => (output, input),
            StartExecResults::Detached => return Err(EnvError("shell session came up detached".into()).into()),
        };
        let nonce = format!("{:x}", super::content_hash(&[container.as_bytes(), exec.id.as_bytes()]).as_bytes().iter().take(6).fold(0u64, |a, b| a * 31 + *b as u64));
        sh.session = Some(Session { input, output, pid: 0, nonce });
        let r = sh.run("cd /testbed 2>/dev/null; echo $$", Duration::from_secs(30)).await?;
        let pid = r.output.trim().parse::<i64>().map_err(|_| EnvError(format!("shell session did not report its pid: {:?}", r.output)))?;
        match sh.session.as_mut() {
            Some(s) => s.pid = pid,
            None => return Err(EnvError(format!("shell session died at start-up: {}", sh.fallback_reason.clone().unwrap_or_default())).into()),
        }
        Ok(sh)
    }

    /// Is the container running (per the daemon)?
    async fn running(&mut self) -> Result<bool> {
        let c = self
            .docker
            .inspect_container(&self.container, None::<bollard::query_parameters::InspectContainerOptions>)
            .await
            .map_err(|e| EnvError(format!("inspecting container {}: {e}", self.container)))?;
        Ok(c.state.and_then(|s| s.running).unwrap_or(false))
    }

    /// Is the persistent session still in use?
    pub fn has_session(&self) -> bool {
        self.session.is_some()
    }

    /// Run one command. A timeout kills the command (not the session); an
    /// error means the environment failed (an [`EnvError`]).
    pub async fn run(&mut self, cmd: &str, timeout: Duration) -> Result<CmdOutput> {
        let t0 = Instant::now();
        if self.session.is_some() {
            match self.run_session(cmd, timeout).await {
                Ok(SessionEnd::Done(cap, code)) => {
                    let (output, truncated) = cap.render();
                    return Ok(CmdOutput { output, exit_code: Some(code), timed_out: false, truncated, total_bytes: cap.total(), elapsed: t0.elapsed(), via_exec: false });
                }
                Err(TimedOutWith(Some(cap))) => {
                    let (output, truncated) = cap.render();
                    return Ok(CmdOutput { output, exit_code: None, timed_out: true, truncated, total_bytes: cap.total(), elapsed: t0.elapsed(), via_exec: false });
                }
                Err(_) => {
                    // the session died before the command ran to its end: the
                    // command is not re-run (it may have had effects)
                    let reason = self.fallback_reason.clone().unwrap_or_else(|| "session ended".into());
                    return self.after_death(&reason, t0).await;
                }
            }
        }
        self.run_exec(cmd, timeout).await
    }

    async fn after_death(&mut self, reason: &str, t0: Instant) -> Result<CmdOutput> {
        // check the container is still usable, so the next command can fall back
        let alive = match self.running().await {
            Err(e) => Err(e),
            Ok(false) => Err(EnvError(format!("container {} is not running", self.container)).into()),
            Ok(true) => match self.run_exec("true", Duration::from_secs(20)).await {
                Ok(r) if r.exit_code == Some(0) => match self.running().await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(EnvError(format!("container {} is not running", self.container)).into()),
                    Err(e) => Err(e),
                },
                Ok(r) => Err(EnvError(format!("a probe in container {} failed (exit {:?})", self.container, r.exit_code)).into()),
                Err(e) => Err(e),
            },
        };
        match alive {
            Ok(()) => Ok(CmdOutput {
                output: format!("[the shell session ended ({reason}); later commands run one exec each, without the session's state]"),
                exit_code: None,
                timed_out: false,
                truncated: false,
                total_bytes: 0,
                elapsed: t0.elapsed(),
                via_exec: true,
            }),
            Err(e) => Err(e.context(EnvError(format!("the shell session ended ({reason}) and the container no longer runs commands")))),
        }
    }

    async fn run_session(&mut self, cmd: &str, timeout: Duration) -> std::result::Result<SessionEnd, TimedOutWith> {
        self.counter += 1;
        let n = self.counter;
        let limits = self.limits;
        let sess = self.session.as_mut().expect("session present");
        let marker = format!("__APPL_{}_{n}__:", sess.nonce);
        let line = format!("__appl_c={}\neval \"$__appl_c\" </dev/null 2>&1; printf '\\n{marker}%s\\n' \"$?\"\n", quote(cmd));
        let wrote = async {
            sess.input.write_all(line.as_bytes()).await?;
            sess.input.flush().await
        };
        if let Err(e) = tokio::time::timeout(Duration::from_secs(20), wrote).await.map_err(|_| std::io::Error::other("write timed out")).and_then(|r| r) {
            self.kill_session(&format!("writing to the session failed: {e}")).await;
            return Err(TimedOutWith(None));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut cap = Capped::new(limits);
        let mut pending: Vec<u8> = Vec::new();
        let mut timed_out = false;
        let mut hard_deadline = deadline;
        loop {
            let sess = self.session.as_mut().expect("session present");
            let next = tokio::time::timeout_at(hard_deadline, sess.output.next()).await;
            match next {
                Ok(Some(Ok(msg))) => {
                    let bytes = match msg {
                        LogOutput::StdOut { message } | LogOutput::StdErr { message } | LogOutput::Console { message } => message,
                        LogOutput::StdIn { .. } => continue,
                    };
                    pending.extend_from_slice(&bytes);
                    if let Some(i) = find(&pending, marker.as_bytes()) {
                        let after = &pending[i + marker.len()..];
                        if let Some(nl) = after.iter().position(|&b| b == b'\n') {
                            let code = std::str::from_utf8(&after[..nl]).ok().and_then(|s| s.trim().parse::<i64>().ok()).unwrap_or(-1);
                            let mut body = &pending[..i];
                            if body.last() == Some(&b'\n') {
                                body = &body[..body.len() - 1];
                            }
                            cap.push(body);
                            if timed_out {
                                return Err(TimedOutWith(Some(cap)));
                            }
                            return Ok(SessionEnd::Done(cap, code));
                        }
                        // the marker line is not complete yet: keep it pending
                        let (head, rest) = pending.split_at(i);
                        cap.push(head);
                        pending = rest.to_vec();
                    } else {
                        let keep = marker.len() + 1;
                        if pending.len() > keep {
                            let cut = pending.len() - keep;
                            cap.push(&pending[..cut]);
                            pending.drain(..cut);
                        }
                    }
                }
                Ok(Some(Err(e))) => {
                    self.kill_session(&format!("session stream failed: {e}")).await;
                    return Err(TimedOutWith(if timed_out { Some(cap) } else { None }));
                }
                Ok(None) => {
                    self.kill_session("the session's bash exited").await;
                    return Err(TimedOutWith(if timed_out { Some(cap) } else { None }));
                }
                Err(_) if !timed_out => {
                    timed_out = true;
                    let pid = self.session.as_ref().map(|s| s.pid).unwrap_or(0);
                    self.kill_children(pid).await;
                    hard_deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                }
                Err(_) => {
                    self.kill_session("the session did not come back after a timed-out command was killed").await;
                    return Err(TimedOutWith(Some(cap)));
                }
            }
        }
    }

    /// Kill every process in the container except PID 1, the session's bash
    /// and the killer itself. Uses only bash builtins, so it works even when
    /// the pids limit is reached.
    async fn kill_children(&mut self, session_pid: i64) {
        // PID 1 is docker-init; its children (the idle main process, orphans)
        // are left alone; the session's bash and the killer too.
        let script = format!(
            "for r in 1 2 3 4; do for p in /proc/[0-9]*; do q=${{p#/proc/}}; case \"$q\" in 1|$$|{session_pid}) continue;; esac; st=; read -r st < \"$p/stat\" 2>/dev/null || continue; st=${{st##*) }}; set -- $st; [ \"$2\" = 1 ] && continue; kill -9 \"$q\" 2>/dev/null; done; done; true"
        );
        let _ = tokio::time::timeout(Duration::from_secs(15), exec_raw(self.docker.clone(), self.container.clone(), vec!["bash".into(), "-c".into(), script], OutputLimits { head_bytes: 256, tail_bytes: 256 })).await;
    }

    async fn kill_session(&mut self, reason: &str) {
        if let Some(s) = self.session.take() {
            if s.pid > 0 {
                let _ = tokio::time::timeout(Duration::from_secs(10), exec_raw(self.docker.clone(), self.container.clone(), vec!["kill".into(), "-9".into(), s.pid.to_string()], OutputLimits { head_bytes: 256, tail_bytes: 256 })).await;
            }
        }
        tracing::warn!(container = %self.container, "shell session given up: {reason}; falling back to one exec per command");
        self.fallback_reason.get_or_insert_with(|| reason.to_string());
    }

    /// One exec for one command, killed by `timeout -s KILL` inside.
    pub async fn run_exec(&mut self, cmd: &str, timeout: Duration) -> Result<CmdOutput> {
        let t0 = Instant::now();
        let secs = format!("{}", timeout.as_secs_f64().max(0.1));
        let argv = vec!["timeout".into(), "-s".into(), "KILL".into(), secs, "bash".into(), "-c".into(), format!("cd {} 2>/dev/null; {cmd}", quote(&self.workdir))];
        let (cap, code) = tokio::time::timeout(timeout + Duration::from_secs(30), exec_raw(self.docker.clone(), self.container.clone(), argv, self.limits)).await.map_err(|_| EnvError(format!("exec in {} did not return", self.container)))??;
        let timed_out = code == Some(137) && t0.elapsed() >= timeout;
        let (output, truncated) = cap.render();
        Ok(CmdOutput { output, exit_code: if timed_out { None } else { code }, timed_out, truncated, total_bytes: cap.total(), elapsed: t0.elapsed(), via_exec: true })
    }

    /// Run argv through one exec; output capped; the exit code from inspect.
    pub async fn exec_raw(&mut self, argv: Vec<String>, limits: OutputLimits) -> Result<(Capped, Option<i64>)> {
        exec_raw(self.docker.clone(), self.container.clone(), argv, limits).await
    }
}

/// Run argv through one exec in a container; output capped; exit code from inspect.
pub async fn exec_raw(docker: Docker, container: String, argv: Vec<String>, limits: OutputLimits) -> Result<(Capped, Option<i64>)> {
    {
        let exec = docker
            .create_exec(
                &container,
                ExecConfig { attach_stdout: Some(true), attach_stderr: Some(true), cmd: Some(argv), env: Some(vec!["PAGER=cat".into(), "GIT_PAGER=cat".into()]), ..Default::default() },
            )
            .await
            .map_err(|e| EnvError(format!("exec in container {container}: {e}")))?;
        let started = docker.start_exec(&exec.id, None).await.map_err(|e| EnvError(format!("starting exec in {container}: {e}")))?;
        let mut cap = Capped::new(limits);
        if let StartExecResults::Attached { mut output, .. } = started {
            while let Some(m) = output.next().await {
                match m {
                    Ok(LogOutput::StdOut { message }) | Ok(LogOutput::StdErr { message }) | Ok(LogOutput::Console { message }) => cap.push(&message),
                    Ok(_) => {}
                    Err(e) => return Err(EnvError(format!("reading exec output in {container}: {e}")).into()),
                }
            }
        }
        let info = docker.inspect_exec(&exec.id).await.map_err(|e| EnvError(format!("inspecting exec in {container}: {e}")))?;
        Ok((cap, info.exit_code))
    }
}

impl Shell {
    /// Close the session (the container is the sandbox's to remove).
    pub async fn close(&mut self) {
        if let Some(mut s) = self.session.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), async { s.input.write_all(b"exit 0\n").await }).await;
        }
    }
}

/// A timed-out command's output (or None when the session died first).
struct TimedOutWith(Option<Capped>);

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Context for a failed step.
pub fn ctx<T>(r: Result<T>, what: &str) -> Result<T> {
    r.with_context(|| what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_keeps_head_and_tail() {
        let mut c = Capped::new(OutputLimits { head_bytes: 4, tail_bytes: 4 });
        for _ in 0..1000 {
            c.push(b"0123456789");
        }
        assert!(c.held() <= 4 + 8);
        let (s, t) = c.render();
        assert!(t);
        assert!(s.starts_with("0123\n[... 9992 bytes elided ...]\n6789"), "{s}");
    }

    #[test]
    fn cap_small_output_whole() {
        let mut c = Capped::new(OutputLimits { head_bytes: 4, tail_bytes: 4 });
        c.push(b"abc");
        c.push(b"defg");
        assert_eq!(c.render(), ("abcdefg".to_string(), false));
    }

    #[test]
    fn binary_made_printable() {
        assert_eq!(printable(b"a\x00b\xffc\n"), "a\\x00b\u{fffd}c\n");
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(quote("it's"), "'it'\\''s'");
    }
}
