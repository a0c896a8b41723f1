//! One episode: a sandboxed container from a task image, the persistent
//! shell in it, and the file operations a scaffold needs.
//!
//! Owns: starting and closing an episode's container, start-to-ready and
//! per-command latency, file operations (read a window with line numbers,
//! write a file, apply a unified diff, the submitted patch as `git diff`
//! against base_commit), and the record of a fallback to exec-per-command.
//! Does not own: the policy, grading (`grade`), or admission (`pool`).

use super::sandbox::{self, Spec};
use super::shell::{quote, CmdOutput, OutputLimits, Shell};
use super::EnvError;
use anyhow::{bail, Result};
use bollard::Docker;
use std::time::{Duration, Instant};

/// A live episode. Call [`Episode::close`]; a run guard or the reaper
/// removes the container if the caller never does.
pub struct Episode {
    pub docker: Docker,
    pub container: String,
    pub shell: Shell,
    pub base_commit: String,
    /// Container create → first shell response.
    pub start_to_ready: Duration,
    /// Wall time of each command.
    pub cmd_latencies: Vec<Duration>,
    closed: bool,
}

/// Put one file into a container through the Engine API (a one-entry tar).
pub async fn upload_file(docker: &Docker, container: &str, path: &str, content: &[u8]) -> Result<()> {
    upload_file_mode(docker, container, path, content, 0o644).await
}

/// A regular file read from a container, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileBytes {
    pub content: Vec<u8>,
    /// Permission bits (so an edit keeps an executable executable).
    pub mode: u32,
}

/// Why a file could not be read (not an environment failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotAFile {
    Missing,
    Directory,
    /// Larger than the limit given.
    TooLarge(u64),
    /// A link, device, socket or fifo.
    Special,
}

/// Read one file out of a container through the Engine API (a tar stream):
/// exact bytes, no shell quoting, no output capping. Errors are environment
/// failures; a path that is no readable regular file is `Ok(Err(..))`.
pub async fn download_file(docker: &Docker, container: &str, path: &str, max_bytes: u64) -> Result<std::result::Result<FileBytes, NotAFile>> {
    use futures_util::StreamExt;
    use std::io::Read;
    let opts = bollard::query_parameters::DownloadFromContainerOptions { path: path.to_string() };
    let mut stream = docker.download_from_container(container, Some(opts));
    let mut tar_bytes: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => {
                tar_bytes.extend_from_slice(&b);
                // the tar of one file is its size plus headers: stop early on huge files
                if tar_bytes.len() as u64 > max_bytes + (64 << 10) {
                    return Ok(Err(NotAFile::TooLarge(tar_bytes.len() as u64)));
                }
            }
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => return Ok(Err(NotAFile::Missing)),
            Err(e) => return Err(EnvError(format!("reading {path} from container {container}: {e}")).into()),
        }
    }
    let mut ar = tar::Archive::new(tar_bytes.as_slice());
    let mut entries = ar.entries().map_err(|e| EnvError(format!("reading {path}: bad archive from the daemon: {e}")))?;
    let Some(entry) = entries.next() else { return Ok(Err(NotAFile::Missing)) };
    let mut entry = entry.map_err(|e| EnvError(format!("reading {path}: bad archive from the daemon: {e}")))?;
    let kind = entry.header().entry_type();
    if kind.is_dir() {
        return Ok(Err(NotAFile::Directory));
    }
    if !kind.is_file() {
        return Ok(Err(NotAFile::Special));
    }
    let size = entry.header().size().unwrap_or(0);
    if size > max_bytes {
        return Ok(Err(NotAFile::TooLarge(size)));
    }
    let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
    let mut content = Vec::with_capacity(size as usize);
    entry.read_to_end(&mut content).map_err(|e| EnvError(format!("reading {path}: {e}")))?;
    Ok(Ok(FileBytes { content, mode }))
}

/// Like [`upload_file`], with the file's permission bits.
pub async fn upload_file_mode(docker: &Docker, container: &str, path: &str, content: &[u8], mode: u32) -> Result<()> {
    let (dir, name) = match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => bail!("path {path:?} must be absolute"),
    };
    if name.is_empty() {
        bail!("path {path:?} names a directory, not a file");
    }
    upload_files(docker, container, dir, &[(name, content, mode)]).await
}

/// Put several files into one existing directory of a container with one
/// Engine API call (one tar): each is (name, content, permission bits).
pub async fn upload_files(docker: &Docker, container: &str, dir: &str, files: &[(&str, &[u8], u32)]) -> Result<()> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, content, mode) in files {
        if name.is_empty() || name.contains('/') {
            bail!("file name {name:?} must be a plain name inside {dir}");
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(super::now_unix());
        h.set_cksum();
        b.append_data(&mut h, name, *content)?;
    }
    let bytes = b.into_inner()?;
    let opts = bollard::query_parameters::UploadToContainerOptions { path: dir.to_string(), ..Default::default() };
    let names: Vec<&str> = files.iter().map(|f| f.0).collect();
    docker
        .upload_to_container(container, Some(opts), bollard::body_full(bytes.into()))
        .await
        .map_err(|e| EnvError(format!("writing {} into {dir} of container {container}: {e}", names.join(", "))))?;
    Ok(())
}

impl Episode {
    /// Start a container and its shell session.
    pub async fn start(docker: &Docker, spec: &Spec, base_commit: &str) -> Result<Self> {
        let t0 = Instant::now();
        let id = sandbox::start(docker, spec).await?;
        let shell = match Shell::start(docker.clone(), &id).await {
            Ok(s) => s,
            Err(e) => {
                sandbox::remove(docker, &id).await;
                return Err(e);
            }
        };
        Ok(Episode { docker: docker.clone(), container: id, shell, base_commit: base_commit.into(), start_to_ready: t0.elapsed(), cmd_latencies: Vec::new(), closed: false })
    }

    /// Run a shell command (see [`Shell::run`]).
    pub async fn run(&mut self, cmd: &str, timeout: Duration) -> Result<CmdOutput> {
        let r = self.shell.run(cmd, timeout).await?;
        self.cmd_latencies.push(r.elapsed);
        Ok(r)
    }

    /// Why the session was replaced by exec-per-command, if it was.
    pub fn fallback(&self) -> Option<&str> {
        self.shell.fallback_reason.as_deref()
    }

    fn abs(path: &str) -> String {
        if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/testbed/{path}")
        }
    }

    /// Lines `start..=end` (1-based) of a file, each with its number.
    pub async fn read_window(&mut self, path: &str, start: usize, end: usize) -> Result<String> {
        let p = Self::abs(path);
        let cmd = format!("test -f {q} || {{ echo 'no such file: {p}'; exit 2; }}; awk -v a={start} -v b={end} 'NR>=a && NR<=b {{ printf \"%6d  %s\\n\", NR, $0 }}' {q}", q = quote(&p), p = p.replace('\'', ""));
        let r = self.shell.run_exec(&cmd, Duration::from_secs(30)).await?;
        if r.exit_code != Some(0) {
            bail!("reading {p}: {}", r.output.trim());
        }
        Ok(r.output)
    }

    /// Write a whole file.
    pub async fn write_file(&mut self, path: &str, content: &str) -> Result<()> {
        upload_file(&self.docker, &self.container, &Self::abs(path), content.as_bytes()).await
    }

    /// Read a file byte for byte (absolute path, or relative to /testbed).
    pub async fn read_file(&mut self, path: &str, max_bytes: u64) -> Result<std::result::Result<FileBytes, NotAFile>> {
        download_file(&self.docker, &self.container, &Self::abs(path), max_bytes).await
    }

    /// Write a file byte for byte with the given permission bits.
    pub async fn write_bytes(&mut self, path: &str, content: &[u8], mode: u32) -> Result<()> {
        upload_file_mode(&self.docker, &self.container, &Self::abs(path), content, mode).await
    }

    /// Apply a unified diff in /testbed. Ok(false) with the tool's output
    /// when it does not apply.
    pub async fn apply_diff(&mut self, diff: &str) -> Result<(bool, String)> {
        apply_patch(&mut self.shell, &self.docker, &self.container, diff, "/tmp/appliance_edit.diff").await
    }

    /// The submitted patch: the working tree (new files included, Python
    /// caches left out) against base_commit.
    pub async fn submission(&mut self) -> Result<String> {
        let saved = self.shell.limits;
        self.shell.limits = OutputLimits { head_bytes: 8 << 20, tail_bytes: 0 };
        let r = self.shell.run_exec(&format!("cd /testbed && git add -A -- . ':(exclude,glob)**/__pycache__/**' ':(exclude,glob)**/.pytest_cache/**' ':(exclude,glob)**/*.pyc' >/dev/null 2>&1 && git -c core.fileMode=false diff --cached --binary {} ", quote(&self.base_commit)), Duration::from_secs(60)).await;
        self.shell.limits = saved;
        let r = r?;
        if r.exit_code != Some(0) {
            bail!("git diff against {} failed: {}", self.base_commit, r.output.trim());
        }
        if r.truncated {
            bail!("the submitted patch is over 8 MiB");
        }
        let mut s = r.output;
        if !s.is_empty() && !s.ends_with('\n') {
            s.push('\n');
        }
        Ok(s)
    }

    /// Remove the container.
    pub async fn close(mut self) {
        self.shell.close().await;
        sandbox::remove(&self.docker, &self.container).await;
        self.closed = true;
    }
}

impl Drop for Episode {
    fn drop(&mut self) {
        if !self.closed {
            // best effort without blocking: the run guard and the reaper are the backstop
            let d = self.docker.clone();
            let id = self.container.clone();
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move { sandbox::remove(&d, &id).await });
            }
        }
    }
}

/// A diff as `git apply` wants it: with a final newline; empty when blank.
pub fn diff_bytes(diff: &str) -> Vec<u8> {
    if diff.trim().is_empty() {
        return vec![];
    }
    let mut d = diff.to_string();
    if !d.ends_with('\n') {
        d.push('\n');
    }
    d.into_bytes()
}

/// The command that applies the diff file at `path` in the current
/// directory: `git apply`, then `patch` with fuzz; output on stdout.
pub fn apply_command(path: &str) -> String {
    format!("(git apply --verbose {p} 2>&1 || patch --batch --fuzz=5 -p1 -i {p} 2>&1)", p = quote(path))
}

/// Apply a diff in /testbed: `git apply`, then `patch` with fuzz. Ok(false)
/// when it does not apply; Err only for environment failures.
pub async fn apply_patch(shell: &mut Shell, docker: &Docker, container: &str, diff: &str, tmp_path: &str) -> Result<(bool, String)> {
    let d = diff_bytes(diff);
    if d.is_empty() {
        return Ok((true, String::new()));
    }
    upload_file(docker, container, tmp_path, &d).await?;
    let r = shell.run_exec(&format!("cd /testbed && {}", apply_command(tmp_path)), Duration::from_secs(60)).await?;
    Ok((r.exit_code == Some(0), r.output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_bytes_end_with_a_newline_and_blank_diffs_are_empty() {
        assert_eq!(diff_bytes("a\nb"), b"a\nb\n");
        assert_eq!(diff_bytes("a\n"), b"a\n");
        assert!(diff_bytes(" \n\t").is_empty());
    }
}
