//! The env layer against the real Docker Engine (no mock): the built-in
//! suite validates, faults end cleanly, bad input is reported, and no
//! labelled container outlives a test.
//!
//! Each test uses its own run label and a guard that removes the run's
//! containers however the test ends. Images are built once and cached by
//! content hash (the base image by its recipe, task images by base and
//! commit), so later runs reuse them.

use appliance::env::episode::Episode;
use appliance::env::grade::{self, GradeOptions, Outcome};
use appliance::env::pool::Pool;
use appliance::env::sandbox::{self, RunGuard, Spec};
use appliance::env::{self, image, suite, task, validate};
use std::time::Duration;

async fn setup(name: &str) -> (bollard::Docker, String, RunGuard, String) {
    let d = env::connect().await.expect("Docker Engine reachable");
    let base = image::ensure_base(&d).await.expect("base image");
    let run = env::new_run_id(&format!("test-{name}"));
    (d, run.clone(), RunGuard { run_id: run }, base)
}

async fn assert_no_containers(d: &bollard::Docker, run: &str) {
    let left = sandbox::run_containers(d, run).await.unwrap();
    assert!(left.is_empty(), "containers of run {run} remain: {left:?}");
}

/// Bound every test so that nothing can hang the run.
async fn bounded<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f).await.expect("test step did not finish in time (a hang)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_builtin_task_validates() {
    let (d, run, _g, _) = setup("validate").await;
    let tasks = suite::tasks().unwrap();
    assert!(tasks.len() >= 12);
    let pool = Pool::new(d.clone(), 4, 2);
    let rows = bounded(900, validate::validate(&pool, &tasks, 1, None, &run, Duration::from_secs(120))).await.unwrap();
    let table = validate::table(&rows);
    eprintln!("{table}");
    for r in &rows {
        assert!(r.valid(), "{}: {:?}\n{table}", r.instance_id, r.problem);
        assert_eq!(r.empty[0].outcome, Outcome::TestsFailed, "{}", r.instance_id);
        assert_eq!(r.gold[0].reward, Some(1.0));
    }
    assert_no_containers(&d, &run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_command_not_the_session() {
    let (d, run, _g, base) = setup("sleep").await;
    let mut ep = bounded(120, Episode::start(&d, &Spec::new(&base, &run), "HEAD")).await.unwrap();
    let r = ep.run("cd /tmp && export FOO=bar", Duration::from_secs(30)).await.unwrap();
    assert_eq!(r.exit_code, Some(0));
    let r = bounded(60, ep.run("echo before; sleep 1000", Duration::from_secs(2))).await.unwrap();
    assert!(r.timed_out, "{r:?}");
    assert!(r.output.contains("before"), "{r:?}");
    assert!(r.observation(Duration::from_secs(2)).contains("timed out"));
    let r = bounded(60, ep.run("echo $FOO; pwd; false", Duration::from_secs(30))).await.unwrap();
    assert_eq!(r.output, "bar\n/tmp\n");
    assert_eq!(r.exit_code, Some(1));
    assert!(!r.timed_out && !r.via_exec && ep.shell.has_session(), "the session should survive: {r:?}");
    ep.close().await;
    assert_no_containers(&d, &run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_output_is_capped() {
    let (d, run, _g, base) = setup("yes").await;
    let mut ep = bounded(120, Episode::start(&d, &Spec::new(&base, &run), "HEAD")).await.unwrap();
    let r = bounded(300, ep.run("yes | head -c 200M", Duration::from_secs(240))).await.unwrap();
    assert_eq!(r.exit_code, Some(0), "{}", &r.output[..200.min(r.output.len())]);
    assert!(r.truncated);
    assert_eq!(r.total_bytes, 200 * 1024 * 1024);
    assert!(r.output.len() < 64 * 1024, "kept {} bytes", r.output.len());
    assert!(r.output.contains("bytes elided"));
    // binary output comes back printable
    let r = ep.run("printf 'a\\000b\\377c'", Duration::from_secs(30)).await.unwrap();
    assert_eq!(r.output, "a\\x00b\u{fffd}c");
    ep.close().await;
    assert_no_containers(&d, &run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_is_contained_by_the_pids_limit() {
    let (d, run, _g, base) = setup("forkbomb").await;
    let mut spec = Spec::new(&base, &run);
    spec.pids_limit = 64;
    let mut ep = bounded(120, Episode::start(&d, &spec, "HEAD")).await.unwrap();
    let _ = bounded(120, ep.run("bomb() { bomb | bomb & }; bomb; sleep 3", Duration::from_secs(5))).await;
    use futures_util::StreamExt;
    let opts = bollard::query_parameters::StatsOptions { stream: false, one_shot: false };
    let stats = bounded(60, d.stats(&ep.container, Some(opts)).next()).await.unwrap().unwrap();
    let pids = stats.pids_stats.and_then(|p| p.current).unwrap_or(0);
    assert!(pids <= 64, "pids {pids} over the limit");
    // the host is unaffected: this process can still spawn processes
    assert!(std::process::Command::new("true").status().unwrap().success());
    bounded(120, ep.close()).await;
    assert_no_containers(&d, &run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_connections_fail() {
    let (d, run, _g, base) = setup("net").await;
    let mut ep = bounded(120, Episode::start(&d, &Spec::new(&base, &run), "HEAD")).await.unwrap();
    // the network is disabled: connect fails at once (nothing is reached)
    let py = "import socket\ns = socket.socket()\ns.settimeout(3)\ntry:\n    s.connect(('1.1.1.1', 80))\n    print('CONNECTED')\nexcept OSError as e:\n    print('FAILED', e)\n";
    ep.write_file("/tmp/net.py", py).await.unwrap();
    let r = bounded(60, ep.run("python3 /tmp/net.py; ls /sys/class/net", Duration::from_secs(30))).await.unwrap();
    assert!(r.output.contains("FAILED") && !r.output.contains("CONNECTED"), "{}", r.output);
    assert!(!r.output.contains("eth0"), "{}", r.output);
    ep.close().await;
    assert_no_containers(&d, &run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_container_is_an_environment_error() {
    let (d, run, _g, base) = setup("kill").await;
    let mut ep = bounded(120, Episode::start(&d, &Spec::new(&base, &run), "HEAD")).await.unwrap();
    let id = ep.container.clone();
    let d2 = d.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = d2.kill_container(&id, None::<bollard::query_parameters::KillContainerOptions>).await;
    });
    let r = bounded(120, ep.run("sleep 30", Duration::from_secs(60))).await;
    let e = r.expect_err("a killed container must end the episode with an error");
    assert!(env::is_env_error(&e), "not classified as an environment error: {e:#}");
    // The session can end a moment before the daemon has stopped the
    // container; once it has, every later command must fail too.
    bounded(60, async {
        while d.inspect_container(&ep.container, None::<bollard::query_parameters::InspectContainerOptions>).await.ok().and_then(|c| c.state).and_then(|s| s.running).unwrap_or(false) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let r = bounded(60, ep.run("true", Duration::from_secs(10))).await;
    assert!(r.is_err());
    ep.close().await;
    assert_no_containers(&d, &run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_death_falls_back_to_exec() {
    let (d, run, _g, base) = setup("fallback").await;
    let mut ep = bounded(120, Episode::start(&d, &Spec::new(&base, &run), "HEAD")).await.unwrap();
    let r = bounded(60, ep.run("exit 3", Duration::from_secs(10))).await.unwrap();
    assert!(r.via_exec, "{r:?}");
    assert!(ep.fallback().is_some());
    let r = bounded(60, ep.run("echo still here", Duration::from_secs(10))).await.unwrap();
    assert_eq!(r.output.trim(), "still here");
    assert!(r.via_exec);
    ep.close().await;
    assert_no_containers(&d, &run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaper_removes_expired_containers_even_created_ones() {
    let (d, run, _g, base) = setup("reaper").await;
    let mut labels = std::collections::HashMap::new();
    labels.insert(env::LABEL_RUN.to_string(), run.clone());
    labels.insert(env::LABEL_DEADLINE.to_string(), (env::now_unix() - 1).to_string());
    let body = bollard::models::ContainerCreateBody { image: Some(base.clone()), cmd: Some(vec!["true".into()]), labels: Some(labels), network_disabled: Some(true), ..Default::default() };
    d.create_container(None::<bollard::query_parameters::CreateContainerOptions>, body).await.unwrap();
    // a live container of the same run, deadline in the future: kept
    let live = sandbox::start(&d, &Spec::new(&base, &run)).await.unwrap();
    assert_eq!(sandbox::run_containers(&d, &run).await.unwrap().len(), 2);
    sandbox::reap_expired(&d).await.unwrap();
    assert_eq!(sandbox::run_containers(&d, &run).await.unwrap(), vec![live.clone()]);
    sandbox::reap_run(&d, &run).await.unwrap();
    assert_no_containers(&d, &run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn episode_file_operations_and_grading_of_a_submission() {
    let (d, run, _g, _) = setup("files").await;
    let t = suite::tasks().unwrap().into_iter().find(|t| t.instance_id.ends_with("pager-last-page")).unwrap();
    let img = bounded(300, image::ensure_task_image(&d, &t, None)).await.unwrap();
    let mut ep = bounded(120, Episode::start(&d, &Spec::new(&img, &run), &t.base_commit)).await.unwrap();
    let w = ep.read_window("pager/paginator.py", 1, 3).await.unwrap();
    assert!(w.starts_with("     1  class PageError"), "{w}");
    assert!(ep.read_window("no/such.py", 1, 3).await.is_err());
    assert_eq!(ep.submission().await.unwrap(), "");
    let (ok, out) = ep.apply_diff(&t.patch).await.unwrap();
    assert!(ok, "{out}");
    ep.write_file("NOTES.txt", "a new file\n").await.unwrap();
    let r = bounded(120, ep.run("python3 -m pytest -q tests >/dev/null; python3 -c 'import py_compile; py_compile.compile(\"pager/paginator.py\")'", Duration::from_secs(60))).await.unwrap();
    assert!(!r.timed_out);
    let sub = ep.submission().await.unwrap();
    assert!(sub.contains("pager/paginator.py") && sub.contains("NOTES.txt"), "{sub}");
    assert!(!sub.contains("__pycache__") && !sub.contains(".pytest_cache"), "{sub}");
    let (ok, _) = ep.apply_diff("--- a/nothing.py\n+++ b/nothing.py\n@@ -1 +1 @@\n-x\n+y\n").await.unwrap();
    assert!(!ok);
    ep.close().await;
    let opts = GradeOptions { run_id: run.clone(), test_timeout: Duration::from_secs(120) };
    let r = bounded(300, grade::grade(&d, &t, &img, &sub, &opts)).await;
    assert_eq!(r.outcome, Outcome::Passed, "{}", r.detail);
    assert_eq!(r.reward, Some(1.0));
    assert!(r.tests.values().all(|s| s.is_pass()));
    assert_no_containers(&d, &run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_clear_errors_or_classified_results() {
    let (d, run, _g, _) = setup("bad").await;
    let dir = tempfile::tempdir().unwrap();
    // a malformed JSONL line and a missing field
    let good = serde_json::to_string(&suite::tasks().unwrap()[0]).unwrap();
    let p = dir.path().join("tasks.jsonl");
    std::fs::write(&p, format!("{good}\n{{\"instance_id\": \n")).unwrap();
    let e = task::load(&p, &task::LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("tasks.jsonl:2"), "{e}");
    let l = task::load(&p, &task::LoadOptions { skip_invalid: true }).unwrap();
    assert_eq!((l.tasks.len(), l.skipped.len()), (1, 1));
    let missing = good.replacen("\"base_commit\"", "\"base_commit_x\"", 1);
    std::fs::write(&p, format!("{missing}\n")).unwrap();
    let e = task::load(&p, &task::LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("tasks.jsonl:1") && e.contains("field base_commit"), "{e}");
    // an unknown image
    let mut t = suite::tasks().unwrap()[0].clone();
    t.repo_path = None;
    t.image_name = Some("appliance-test/no-such-image:never".into());
    let e = bounded(120, image::ensure_task_image(&d, &t, None)).await.unwrap_err();
    assert!(format!("{e:#}").contains("appliance-test/no-such-image:never"), "{e:#}");
    // a base_commit that is not in the repository
    let mut t = suite::tasks().unwrap()[0].clone();
    t.base_commit = "0123456789abcdef0123456789abcdef01234567".into();
    let e = bounded(120, image::ensure_task_image(&d, &t, None)).await.unwrap_err();
    assert!(format!("{e:#}").contains("base_commit"), "{e:#}");
    // a patch that does not apply, and grading in an image that does not exist
    let t = suite::tasks().unwrap().into_iter().next().unwrap();
    let img = bounded(300, image::ensure_task_image(&d, &t, None)).await.unwrap();
    let opts = GradeOptions { run_id: run.clone(), test_timeout: Duration::from_secs(120) };
    let bad = "diff --git a/nope.py b/nope.py\n--- a/nope.py\n+++ b/nope.py\n@@ -1,2 +1,2 @@\n-a\n+b\n c\n";
    let r = bounded(300, grade::grade(&d, &t, &img, bad, &opts)).await;
    assert_eq!(r.outcome, Outcome::PatchDidNotApply, "{}", r.detail);
    assert_eq!(r.reward, Some(0.0));
    let r = bounded(300, grade::grade(&d, &t, "appliance-test/no-such-image:never", &t.patch, &opts)).await;
    assert_eq!(r.outcome, Outcome::EnvironmentError);
    assert_eq!(r.reward, None, "an environment error is never scored");
    // a test patch that does not apply and an env_setup that fails are the
    // environment's failures (never scored); tests past their limit time out
    let mut broken = t.clone();
    broken.test_patch = bad.into();
    let r = bounded(300, grade::grade(&d, &broken, &img, &t.patch, &opts)).await;
    assert_eq!((r.outcome, r.reward), (Outcome::EnvironmentError, None), "{}", r.detail);
    assert!(r.detail.contains("test_patch did not apply"), "{}", r.detail);
    let mut broken = t.clone();
    broken.env_setup = Some("echo no such toolchain; exit 3".into());
    let r = bounded(300, grade::grade(&d, &broken, &img, &t.patch, &opts)).await;
    assert_eq!((r.outcome, r.reward), (Outcome::EnvironmentError, None), "{}", r.detail);
    assert!(r.detail.contains("env_setup exited with 3") && r.detail.contains("no such toolchain"), "{}", r.detail);
    let mut slow = t.clone();
    slow.test_cmd = Some("sleep 60".into());
    let quick = GradeOptions { run_id: run.clone(), test_timeout: Duration::from_secs(2) };
    let r = bounded(300, grade::grade(&d, &slow, &img, &t.patch, &quick)).await;
    assert_eq!((r.outcome, r.reward), (Outcome::TimedOut, Some(0.0)), "{}", r.detail);
    assert_no_containers(&d, &run).await;
}

/// (state, run label) of the labelled containers whose run label starts
/// with `prefix`: a child process's runs are `COMMAND-PID-…`.
async fn containers_of_runs(d: &bollard::Docker, prefix: &str) -> Vec<(String, String)> {
    let mut filters = std::collections::HashMap::new();
    filters.insert("label".to_string(), vec![env::LABEL_RUN.to_string()]);
    let opts = bollard::query_parameters::ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
    let run = |c: &bollard::models::ContainerSummary| c.labels.as_ref().and_then(|l| l.get(env::LABEL_RUN)).cloned().unwrap_or_default();
    d.list_containers(Some(opts)).await.unwrap().into_iter().filter(|c| run(c).starts_with(prefix)).map(|c| (format!("{:?}", c.state), run(&c))).collect()
}

/// Wait (up to two minutes) until the child has a container; false if it
/// exited first or none came.
async fn wait_for_a_container(d: &bollard::Docker, prefix: &str, child: &mut std::process::Child) -> bool {
    for _ in 0..600 {
        if !containers_of_runs(d, prefix).await.is_empty() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// `appliance env validate` (the built-in suite: it starts containers for
/// minutes) as a child process, with the given stdout and stderr.
fn spawn_validate(out: &std::path::Path, stdout: std::process::Stdio, stderr: std::process::Stdio, log: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_appliance"))
        .args(["env", "validate", "--out"])
        .arg(out.join("valid.jsonl"))
        .env("RUST_LOG", log)
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Wait for the child's exit (bounded), then remove whatever its runs left,
/// so that a failing test leaks nothing; returns the status and what was left.
async fn exit_and_leftovers(d: &bollard::Docker, prefix: &str, mut child: std::process::Child) -> (std::process::ExitStatus, Vec<(String, String)>) {
    let waited = tokio::time::timeout(Duration::from_secs(200), tokio::task::spawn_blocking(move || child.wait())).await;
    let status = match waited {
        Ok(Ok(Ok(status))) => Some(status),
        _ => None,
    };
    let left = containers_of_runs(d, prefix).await;
    for (_, run) in &left {
        let _ = sandbox::reap_run(d, run).await;
    }
    (status.expect("the child exits within 200 s of its shutdown"), left)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_removes_the_runs_containers() {
    let (d, _run, _g, _) = setup("sigterm").await;
    let out = tempfile::tempdir().unwrap();
    let mut child = spawn_validate(out.path(), std::process::Stdio::null(), std::fs::File::create(out.path().join("stderr")).unwrap().into(), "warn");
    let prefix = format!("validate-{}-", child.id());
    assert!(wait_for_a_container(&d, &prefix, &mut child).await, "validate started no container");
    assert!(std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let (status, left) = exit_and_leftovers(&d, &prefix, child).await;
    let stderr = std::fs::read_to_string(out.path().join("stderr")).unwrap_or_default();
    let lines: Vec<&str> = stderr.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    // 143, not death by the signal: the reaper handled it and exited
    assert_eq!(status.code(), Some(143), "exit status {status}; stderr ends:\n{tail}");
    assert!(left.is_empty(), "containers of the interrupted run remain: {left:?}; stderr ends:\n{tail}");
    assert!(stderr.contains("signal received: removing the containers"), "{tail}");
}

/// `appliance env validate | head`, with head gone and then a Ctrl-C or
/// `kill`: the reaper's message goes nowhere, and the containers still go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_output_pipe_closed_removes_the_runs_containers() {
    let (d, _run, _g, _) = setup("sigterm-closed-pipe").await;
    let out = tempfile::tempdir().unwrap();
    // warn level: nothing is written between closing the pipe and the signal
    let mut child = spawn_validate(out.path(), std::process::Stdio::piped(), std::process::Stdio::piped(), "warn");
    let prefix = format!("validate-{}-", child.id());
    assert!(wait_for_a_container(&d, &prefix, &mut child).await, "validate started no container");
    drop(child.stdout.take());
    drop(child.stderr.take());
    assert!(std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let (status, left) = exit_and_leftovers(&d, &prefix, child).await;
    assert_eq!(status.code(), Some(143), "exit status {status} (death by SIGPIPE is signal 13)");
    assert!(left.is_empty(), "containers of the interrupted run remain: {left:?}");
}

/// `appliance env validate 2>&1 | head`, with head gone: the next line the
/// command writes ends it like a SIGTERM would, with exit code 141 (the
/// shell's code for death by SIGPIPE) and no container left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_closed_output_pipe_ends_the_run_and_removes_its_containers() {
    use std::io::BufRead;
    let (d, _run, _g, _) = setup("closed-pipe").await;
    let out = tempfile::tempdir().unwrap();
    // debug level: a line for each container started and removed
    let mut child = spawn_validate(out.path(), std::process::Stdio::piped(), std::process::Stdio::piped(), "appliance=debug");
    let prefix = format!("validate-{}-", child.id());
    let stderr = child.stderr.take().unwrap();
    // read until the first container's line, then close the pipe
    let first = bounded(300, tokio::task::spawn_blocking(move || {
        let mut reader = std::io::BufReader::new(stderr);
        let mut seen = Vec::new();
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if line.contains("started container") {
                return Ok(line);
            }
            seen.push(std::mem::take(&mut line));
        }
        Err(seen.concat())
    }))
    .await
    .unwrap();
    drop(child.stdout.take());
    let first = match first {
        Ok(line) => line,
        Err(all) => {
            let _ = exit_and_leftovers(&d, &prefix, child).await;
            panic!("validate ended its stderr without starting a container:\n{all}");
        }
    };
    assert!(first.contains(&prefix), "{first}");
    let (status, left) = exit_and_leftovers(&d, &prefix, child).await;
    assert_eq!(status.code(), Some(141), "exit status {status} (death by SIGPIPE is signal 13)");
    assert!(left.is_empty(), "containers of the run remain after its output closed: {left:?}");
}
