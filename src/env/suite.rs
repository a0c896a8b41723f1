//! The built-in task suite: small Python repositories written for this
//! project, each with a bug, an issue text, a gold patch and a test patch.
//!
//! Owns: the embedded task bundles (src/env/suite/*.json, made by
//! scripts/make_suite.py) and turning them into local git repositories
//! (deterministic commits, so base_commit is stable) that `image` builds
//! task images from. Does not own: images, grading.

use super::task::Task;
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

macro_rules! bundles {
    ($($name:literal),* $(,)?) => { &[$(($name, include_str!(concat!("suite/", $name, ".json")))),*] };
}

/// (name, JSON) of every embedded task.
pub const BUNDLES: &[(&str, &str)] = bundles![
    "textstat-range",
    "unitconv-constant",
    "slugify-empty",
    "configparse-exception",
    "money-format",
    "inventory-two-files",
    "pager-last-page",
    "semver-compare",
    "csvsum-header",
    "retry-backoff",
    "wordwrap-long",
    "dateparse-leap",
    "cache-ttl",
];

#[derive(Deserialize)]
struct Bundle {
    instance_id: String,
    repo: String,
    problem_statement: String,
    files: BTreeMap<String, String>,
    patch: String,
    test_patch: String,
    #[serde(rename = "FAIL_TO_PASS")]
    fail_to_pass: Vec<String>,
    #[serde(rename = "PASS_TO_PASS")]
    pass_to_pass: Vec<String>,
}

/// Where the suite's repositories live: $APPLIANCE_CACHE, else
/// $XDG_CACHE_HOME/appliance, else ~/.cache/appliance, else the temp dir.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("APPLIANCE_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("appliance");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache/appliance");
    }
    std::env::temp_dir().join("appliance-cache")
}

pub(crate) fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "appliance")
        .env("GIT_AUTHOR_EMAIL", "suite@appliance.invalid")
        .env("GIT_COMMITTER_NAME", "appliance")
        .env("GIT_COMMITTER_EMAIL", "suite@appliance.invalid")
        .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .with_context(|| format!("running git {} (is git installed?)", args.join(" ")))?;
    if !out.status.success() {
        bail!("git {} in {}: {}", args.join(" "), dir.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Write one bundle as a git repository (if not already there) and return
/// its task, with `repo_path` set and `base_commit` the commit made.
fn materialize(name: &str, json: &str, root: &Path) -> Result<Task> {
    let b: Bundle = serde_json::from_str(json).with_context(|| format!("embedded suite task {name}"))?;
    let h = super::content_hash(&[json.as_bytes()]);
    let dir = root.join(format!("{}-{}", b.instance_id, &h[..10]));
    let head = if dir.join(".git").is_dir() { git(&dir, &["rev-parse", "HEAD"]).ok() } else { None };
    let base_commit = match head {
        Some(c) => c,
        None => {
            let tmp = root.join(format!(".{}-{}.tmp{}", b.instance_id, &h[..10], std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            for (path, content) in &b.files {
                if path.contains("..") || path.starts_with('/') {
                    bail!("embedded suite task {name}: bad path {path}");
                }
                let p = tmp.join(path);
                std::fs::create_dir_all(p.parent().ok_or_else(|| anyhow!("bad path {path}"))?)?;
                std::fs::write(&p, content).with_context(|| format!("writing {}", p.display()))?;
            }
            git(&tmp, &["init", "-q"])?;
            git(&tmp, &["add", "-A"])?;
            git(&tmp, &["commit", "-q", "-m", &format!("{}: initial import", b.repo)])?;
            match std::fs::rename(&tmp, &dir) {
                Ok(()) => {}
                Err(_) if dir.join(".git").is_dir() => {
                    let _ = std::fs::remove_dir_all(&tmp);
                }
                Err(e) => return Err(e).with_context(|| format!("moving {} to {}", tmp.display(), dir.display())),
            }
            git(&dir, &["rev-parse", "HEAD"])?
        }
    };
    Ok(Task {
        instance_id: b.instance_id,
        repo: b.repo,
        base_commit,
        problem_statement: b.problem_statement,
        patch: b.patch,
        test_patch: b.test_patch,
        fail_to_pass: b.fail_to_pass,
        pass_to_pass: b.pass_to_pass,
        version: Some("1.0".into()),
        image_name: None,
        test_cmd: None,
        env_setup: None,
        repo_path: Some(dir),
    })
}

/// Every built-in task, its repository written under `root` when missing.
pub fn tasks_in(root: &Path) -> Result<Vec<Task>> {
    // one writer at a time within a process; across processes the rename decides
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    BUNDLES.iter().map(|(n, j)| materialize(n, j, root)).collect()
}

/// Every built-in task, under [`cache_dir`]/suite.
pub fn tasks() -> Result<Vec<Task>> {
    tasks_in(&cache_dir().join("suite"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn bundles_parse_and_are_varied() {
        assert!(super::BUNDLES.len() >= 12);
        for (n, j) in super::BUNDLES {
            let b: super::Bundle = serde_json::from_str(j).unwrap_or_else(|e| panic!("{n}: {e}"));
            assert!(!b.patch.is_empty() && !b.test_patch.is_empty() && !b.fail_to_pass.is_empty(), "{n}");
        }
    }
}
