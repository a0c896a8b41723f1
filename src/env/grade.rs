//! Grading: a fresh container from the task image, the patch, then the
//! test patch, then the tests; reward 1 iff every FAIL_TO_PASS and
//! PASS_TO_PASS test passes.
//!
//! Owns: the grading steps, the test command (the task's own, or pytest
//! `-rA` on the files the test patch touches), the classification (passed,
//! patch did not apply, tests failed, timed out, environment error) and
//! per-test status. Environment errors carry no reward: they are never
//! scored as policy failures. Does not own: log parsing (`logparse`).

use super::episode::{apply_patch, upload_file};
use super::logparse::{self, Status};
use super::sandbox::{self, Spec};
use super::shell::{OutputLimits, Shell};
use super::task::Task;
use anyhow::Result;
use bollard::Docker;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    PatchDidNotApply,
    TestsFailed,
    TimedOut,
    EnvironmentError,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::PatchDidNotApply => "patch did not apply",
            Outcome::TestsFailed => "tests failed",
            Outcome::TimedOut => "timed out",
            Outcome::EnvironmentError => "environment error",
        }
    }
}

/// The result of grading one patch.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub instance_id: String,
    pub outcome: Outcome,
    /// 1 or 0; None for an environment error (never scored).
    pub reward: Option<f64>,
    /// Status of every FAIL_TO_PASS and PASS_TO_PASS test (missing ones: FAILED).
    pub tests: BTreeMap<String, Status>,
    pub detail: String,
    pub seconds: f64,
}

/// Options for grading.
#[derive(Debug, Clone)]
pub struct GradeOptions {
    pub run_id: String,
    pub test_timeout: Duration,
}

/// The command that runs the task's tests in /testbed.
pub fn test_command(task: &Task) -> String {
    if let Some(c) = &task.test_cmd {
        return c.clone();
    }
    let files: Vec<String> = task.test_files().iter().map(|f| format!("'{}'", f.replace('\'', "'\\''"))).collect();
    format!("python3 -m pytest -rA -p no:cacheprovider {}", files.join(" "))
}

/// Decide reward and outcome from parsed statuses.
pub fn judge(task: &Task, parsed: &BTreeMap<String, Status>) -> (bool, BTreeMap<String, Status>) {
    let mut tests = BTreeMap::new();
    let mut all = true;
    for t in task.fail_to_pass.iter().chain(task.pass_to_pass.iter()) {
        let st = parsed.get(t).copied().unwrap_or(Status::Failed);
        all &= st.is_pass();
        tests.insert(t.clone(), st);
    }
    (all, tests)
}

/// Grade `patch` for `task` in a fresh container from `image`.
pub async fn grade(docker: &Docker, task: &Task, image: &str, patch: &str, opts: &GradeOptions) -> Report {
    let t0 = Instant::now();
    let mut spec = Spec::new(image, &opts.run_id);
    spec.ttl = opts.test_timeout + Duration::from_secs(600);
    let r = match sandbox::start(docker, &spec).await {
        Ok(id) => {
            let r = grade_in(docker, &id, task, patch, opts).await;
            sandbox::remove(docker, &id).await;
            r
        }
        Err(e) => Err(e),
    };
    let (outcome, tests, detail) = match r {
        Ok(x) => x,
        Err(e) => (Outcome::EnvironmentError, BTreeMap::new(), format!("{e:#}")),
    };
    let reward = match outcome {
        Outcome::EnvironmentError => None,
        Outcome::Passed => Some(1.0),
        _ => Some(0.0),
    };
    Report { instance_id: task.instance_id.clone(), outcome, reward, tests, detail, seconds: t0.elapsed().as_secs_f64() }
}

async fn grade_in(docker: &Docker, id: &str, task: &Task, patch: &str, opts: &GradeOptions) -> Result<(Outcome, BTreeMap<String, Status>, String)> {
    let mut sh = Shell::exec_only(docker.clone(), id);
    sh.limits = OutputLimits { head_bytes: 64 << 10, tail_bytes: 256 << 10 };
    let (ok, out) = apply_patch(&mut sh, docker, id, patch, "/tmp/appliance_patch.diff").await?;
    if !ok {
        return Ok((Outcome::PatchDidNotApply, BTreeMap::new(), tail(&out, 2000)));
    }
    // the test files go back to base_commit before the test patch, as in SWE-bench
    let files: Vec<String> = task.test_files().iter().map(|f| format!("'{}'", f.replace('\'', "'\\''"))).collect();
    if !files.is_empty() {
        let c = format!("cd /testbed && for f in {}; do git checkout -q '{}' -- \"$f\" 2>/dev/null || rm -f \"$f\"; done; true", files.join(" "), task.base_commit.replace('\'', ""));
        sh.run_exec(&c, Duration::from_secs(60)).await?;
    }
    let (ok, out) = apply_patch(&mut sh, docker, id, &task.test_patch, "/tmp/appliance_test.diff").await?;
    if !ok {
        anyhow::bail!(super::EnvError(format!("the task's test_patch did not apply: {}", tail(&out, 1000))));
    }
    if let Some(setup) = &task.env_setup {
        let r = sh.run_exec(setup, Duration::from_secs(600)).await?;
        if r.exit_code != Some(0) {
            anyhow::bail!(super::EnvError(format!("env_setup failed ({:?}): {}", r.exit_code, tail(&r.output, 1000))));
        }
    }
    upload_file(docker, id, "/tmp/appliance_tests.sh", test_command(task).as_bytes()).await?;
    let r = sh.run_exec("cd /testbed && bash /tmp/appliance_tests.sh", opts.test_timeout).await?;
    let parsed = logparse::parse(&r.output);
    let (all, tests) = judge(task, &parsed);
    if r.timed_out {
        return Ok((Outcome::TimedOut, tests, tail(&r.output, 2000)));
    }
    let outcome = if all { Outcome::Passed } else { Outcome::TestsFailed };
    Ok((outcome, tests, tail(&r.output, 2000)))
}

fn tail(s: &str, n: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= n {
        s.to_string()
    } else {
        chars[chars.len() - n..].iter().collect()
    }
}
