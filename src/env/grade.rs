//! Grading: a fresh container from the task image, the patch, then the
//! test patch, then the tests; reward 1 iff every FAIL_TO_PASS and
//! PASS_TO_PASS test passes.
//!
//! Owns: the grading steps, the test command (the task's own, or pytest
//! `-rA` on the files the test patch touches), the classification (passed,
//! patch did not apply, tests failed, timed out, environment error) and
//! per-test status. Environment errors carry no reward: they are never
//! scored as policy failures. Does not own: log parsing (`logparse`).

use super::episode::{apply_command, diff_bytes, upload_files};
use super::logparse::{self, Status};
use super::sandbox::{self, Spec};
use super::shell::{quote, OutputLimits, Shell};
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
    /// 1 for a pass, 0 for the policy's failures, none for the environment's.
    pub fn reward(self) -> Option<f64> {
        match self {
            Outcome::EnvironmentError => None,
            Outcome::Passed => Some(1.0),
            _ => Some(0.0),
        }
    }

    /// The display name, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::PatchDidNotApply => "patch did not apply",
            Outcome::TestsFailed => "tests failed",
            Outcome::TimedOut => "timed out",
            Outcome::EnvironmentError => "environment error",
        }
    }

    /// The stored name: what a trajectory's grade and a report's JSON hold
    /// (the serde name).
    pub fn stored_name(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::PatchDidNotApply => "patch_did_not_apply",
            Outcome::TestsFailed => "tests_failed",
            Outcome::TimedOut => "timed_out",
            Outcome::EnvironmentError => "environment_error",
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
    let files: Vec<String> = task.test_files().iter().map(|f| quote(f)).collect();
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
    Report { instance_id: task.instance_id.clone(), outcome, reward: outcome.reward(), tests, detail, seconds: t0.elapsed().as_secs_f64() }
}

/// The report of `patch` when it is empty, known without a container: it
/// leaves the repository at its base commit, where the task's FAIL_TO_PASS
/// tests fail and its PASS_TO_PASS tests pass. That is what the two lists
/// mean (a task is valid only so; `validate` runs exactly this check in a
/// container). `None` for a patch that changes something, and for a task
/// with no FAIL_TO_PASS test, where an empty patch can pass: those are
/// graded as usual.
///
/// The episode uses it: half the failed episodes of a tiny model change
/// nothing (a `replace` whose old text does not match), and each would
/// otherwise start a container to run tests whose outcome is given.
pub fn empty_patch_report(task: &Task, patch: &str) -> Option<Report> {
    if !patch.trim().is_empty() || task.fail_to_pass.is_empty() {
        return None;
    }
    let mut tests: BTreeMap<String, Status> = task.fail_to_pass.iter().map(|t| (t.clone(), Status::Failed)).collect();
    tests.extend(task.pass_to_pass.iter().map(|t| (t.clone(), Status::Passed)));
    Some(Report {
        instance_id: task.instance_id.clone(),
        outcome: Outcome::TestsFailed,
        reward: Outcome::TestsFailed.reward(),
        tests,
        detail: format!("the patch is empty: not run; the {} FAIL_TO_PASS tests fail on the base commit by the task's definition", task.fail_to_pass.len()),
        seconds: 0.0,
    })
}

/// The files one grading puts in the container's /tmp (one upload): the
/// patch, the test patch, the test command, the task's env_setup, and the
/// script that applies them.
const PATCH_FILE: &str = "appliance_patch.diff";
const TEST_PATCH_FILE: &str = "appliance_test.diff";
const TESTS_FILE: &str = "appliance_tests.sh";
const SETUP_FILE: &str = "appliance_setup.sh";
const PREPARE_FILE: &str = "appliance_prepare.sh";

/// Exit codes of the prepare script: the patch did not apply (the policy's
/// failure), the test patch did not apply or env_setup failed (the
/// environment's).
const PATCH_FAILED: i64 = 90;
const TEST_PATCH_FAILED: i64 = 91;
const SETUP_FAILED: i64 = 92;

/// The prepare script: apply the patch (`git apply`, then `patch` with
/// fuzz), put the test files back to base_commit, apply the test patch, run
/// env_setup. It prints only the output of a step that failed.
fn prepare_script(task: &Task, has_patch: bool) -> String {
    let apply = |file: &str, code: i64| format!("out=$( {} ) || {{ printf '%s\\n' \"$out\"; exit {code}; }}\n", apply_command(&format!("/tmp/{file}")));
    let mut s = String::from("cd /testbed || exit 1\n");
    if has_patch {
        s += &apply(PATCH_FILE, PATCH_FAILED);
    }
    // the test files go back to base_commit before the test patch, as in SWE-bench
    let files: Vec<String> = task.test_files().iter().map(|f| quote(f)).collect();
    if !files.is_empty() {
        s += &format!("for f in {}; do git checkout -q {} -- \"$f\" 2>/dev/null || rm -f \"$f\"; done\n", files.join(" "), quote(&task.base_commit));
    }
    if !task.test_patch.trim().is_empty() {
        s += &apply(TEST_PATCH_FILE, TEST_PATCH_FAILED);
    }
    if task.env_setup.is_some() {
        s += &format!("out=$(bash /tmp/{SETUP_FILE} 2>&1) || {{ c=$?; printf 'env_setup exited with %s\\n%s\\n' \"$c\" \"$out\"; exit {SETUP_FAILED}; }}\n");
    }
    s + "exit 0\n"
}

/// Grade in a started container with one upload and two execs (prepare,
/// then the tests): every round trip to the daemon costs tens of
/// milliseconds on a busy machine, and a rollout grades every episode.
async fn grade_in(docker: &Docker, id: &str, task: &Task, patch: &str, opts: &GradeOptions) -> Result<(Outcome, BTreeMap<String, Status>, String)> {
    let mut sh = Shell::exec_only(docker.clone(), id);
    sh.limits = OutputLimits { head_bytes: 64 << 10, tail_bytes: 256 << 10 };
    let (patch_bytes, test_patch_bytes) = (diff_bytes(patch), diff_bytes(&task.test_patch));
    let prepare = prepare_script(task, !patch_bytes.is_empty());
    let tests = test_command(task);
    let setup = task.env_setup.clone().unwrap_or_default();
    let files: [(&str, &[u8], u32); 5] = [
        (PATCH_FILE, &patch_bytes, 0o644),
        (TEST_PATCH_FILE, &test_patch_bytes, 0o644),
        (TESTS_FILE, tests.as_bytes(), 0o644),
        (SETUP_FILE, setup.as_bytes(), 0o644),
        (PREPARE_FILE, prepare.as_bytes(), 0o644),
    ];
    upload_files(docker, id, "/tmp", &files).await?;
    let limit = Duration::from_secs(if task.env_setup.is_some() { 720 } else { 120 });
    let r = sh.run_exec(&format!("bash /tmp/{PREPARE_FILE}"), limit).await?;
    match r.exit_code {
        Some(0) => {}
        Some(PATCH_FAILED) => return Ok((Outcome::PatchDidNotApply, BTreeMap::new(), tail(&r.output, 2000))),
        Some(TEST_PATCH_FAILED) => anyhow::bail!(super::EnvError(format!("the task's test_patch did not apply: {}", tail(&r.output, 1000)))),
        Some(SETUP_FAILED) => anyhow::bail!(super::EnvError(format!("env_setup failed: {}", tail(&r.output, 1000)))),
        other => anyhow::bail!(super::EnvError(format!("preparing the tests failed (exit {other:?}): {}", tail(&r.output, 1000)))),
    }
    let r = sh.run_exec(&format!("cd /testbed && bash /tmp/{TESTS_FILE}"), opts.test_timeout).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_name_is_the_serde_name() {
        for o in [Outcome::Passed, Outcome::PatchDidNotApply, Outcome::TestsFailed, Outcome::TimedOut, Outcome::EnvironmentError] {
            assert_eq!(serde_json::to_string(&o).unwrap(), format!("\"{}\"", o.stored_name()));
        }
    }

    fn task() -> Task {
        Task {
            base_commit: "abc123".into(),
            test_patch: "diff --git a/tests/test_it's.py b/tests/test_it's.py\n--- a/tests/test_it's.py\n+++ b/tests/test_it's.py\n@@ -1 +1 @@\n-a\n+b\n".into(),
            ..Task::default()
        }
    }

    #[test]
    fn the_prepare_script_applies_the_patch_then_resets_and_patches_the_tests() {
        let t = task();
        let s = prepare_script(&t, true);
        let at = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle:?} missing from\n{s}"));
        assert!(at(PATCH_FILE) < at("git checkout -q 'abc123'") && at("git checkout") < at(TEST_PATCH_FILE), "{s}");
        assert!(s.contains("'tests/test_it'\\''s.py'"), "the test file is quoted for bash: {s}");
        assert!(!s.contains("$(("), "a command substitution must not read as arithmetic: {s}");
        assert!(s.contains(&format!("exit {PATCH_FAILED}")) && s.contains(&format!("exit {TEST_PATCH_FAILED}")) && !s.contains(SETUP_FILE), "{s}");
        let s = prepare_script(&t, false);
        assert!(!s.contains(PATCH_FILE), "no patch, no apply step: {s}");
        let mut t = task();
        t.env_setup = Some("pip install -e .".into());
        assert!(prepare_script(&t, true).contains(&format!("exit {SETUP_FAILED}")));
    }

    #[test]
    fn an_empty_patch_fails_its_fail_to_pass_tests_without_a_container() {
        let mut t = task();
        assert!(empty_patch_report(&t, "").is_none(), "no FAIL_TO_PASS test: an empty patch can pass, so it is graded");
        t.fail_to_pass = vec!["tests/test_a.py::test_fix".into()];
        t.pass_to_pass = vec!["tests/test_a.py::test_kept".into()];
        assert!(empty_patch_report(&t, "diff --git a/x b/x\n").is_none(), "a patch that changes something is graded");
        let r = empty_patch_report(&t, "").unwrap();
        assert_eq!((r.outcome, r.reward), (Outcome::TestsFailed, Some(0.0)));
        assert_eq!(r.tests.get("tests/test_a.py::test_fix"), Some(&Status::Failed));
        assert_eq!(r.tests.get("tests/test_a.py::test_kept"), Some(&Status::Passed));
        // judge reaches the same verdict from those statuses
        assert_eq!(judge(&t, &r.tests).0, false);
        assert!(r.detail.contains("not run"), "{}", r.detail);
    }
}
