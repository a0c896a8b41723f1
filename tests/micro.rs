//! Micro tasks against the real Docker Engine: generated tasks share one
//! image; the empty patch fails and the gold patch passes each; the issue's
//! symptom is what the code really returns; and the canonical demonstration
//! (`open`, `replace`, `submit`) solves each through the real scaffold.
//! Also the token counts of the issue and the replies with the tiny
//! tokenizer (no Docker needed for those).

use appliance::agent::episode::{run_episode, EpisodeSpec, Scaffold};
use appliance::agent::policy::{Policy, Reply, TurnInput};
use appliance::agent::scaffold::{self, ScaffoldConfig};
use appliance::agent::trajectory::Exit;
use appliance::engine::FinishReason;
use appliance::env::episode::Episode;
use appliance::env::grade::{self, GradeOptions, Outcome};
use appliance::env::logparse::Status;
use appliance::env::micro::{self, Generated};
use appliance::env::pool::Pool;
use appliance::env::sandbox::{self, RunGuard, Spec};
use appliance::env::{self, image, suite, task::Task};
use appliance::model::chat::ChatTemplate;
use appliance::model::tokenizer::Tokenizer;
use async_trait::async_trait;
use std::time::{Duration, Instant};

const SEED: u64 = 20240601;
const N: usize = 6;

/// Bound every step so that nothing can hang the run.
async fn bounded<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f).await.expect("test step did not finish in time (a hang)")
}

struct Setup {
    docker: bollard::Docker,
    run: String,
    _guard: RunGuard,
    tasks: Vec<Task>,
    gens: Vec<Generated>,
    images: Vec<String>,
}

/// One image build at a time across this binary's tests (they share it).
static BUILD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn setup(name: &str) -> Setup {
    let docker = env::connect().await.expect("Docker Engine reachable");
    bounded(900, image::ensure_base(&docker)).await.expect("base image");
    let run = env::new_run_id(&format!("test-micro-{name}"));
    let tasks = micro::micro_tasks(SEED, N, &suite::cache_dir().join("micro")).unwrap();
    let gens = micro::generate(SEED, N);
    let images = {
        let _g = BUILD.lock().await;
        let t0 = Instant::now();
        let images = bounded(600, micro::prepare_images(&docker, &tasks)).await.unwrap();
        eprintln!("images for {} micro tasks: {:.2}s ({} distinct)", tasks.len(), t0.elapsed().as_secs_f64(), images.iter().collect::<std::collections::HashSet<_>>().len());
        images
    };
    Setup { docker, run: run.clone(), _guard: RunGuard { run_id: run }, tasks, gens, images }
}

async fn assert_no_containers(s: &Setup) {
    let left = sandbox::run_containers(&s.docker, &s.run).await.unwrap();
    assert!(left.is_empty(), "containers of run {} remain: {left:?}", s.run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_patch_fails_gold_passes_and_the_issue_tells_the_truth() {
    let s = setup("grade").await;
    assert_eq!(s.tasks.len(), N);
    assert!(s.images.iter().all(|i| *i == s.images[0]), "one shared image: {:?}", s.images);
    // the templates all appear among the six
    for t in micro::TEMPLATES {
        assert!(s.gens.iter().any(|g| g.template == t), "{t:?}");
    }
    let opts = GradeOptions { run_id: s.run.clone(), test_timeout: Duration::from_secs(120) };
    for (t, img) in s.tasks.iter().zip(&s.images) {
        let empty = bounded(300, grade::grade(&s.docker, t, img, "", &opts)).await;
        assert_eq!((empty.outcome, empty.reward), (Outcome::TestsFailed, Some(0.0)), "{}: {}", t.instance_id, empty.detail);
        for id in &t.fail_to_pass {
            assert_eq!(empty.tests[id], Status::Failed, "{}: {id}\n{}", t.instance_id, empty.detail);
        }
        for id in &t.pass_to_pass {
            assert_eq!(empty.tests[id], Status::Passed, "{}: {id}\n{}", t.instance_id, empty.detail);
        }
        let gold = bounded(300, grade::grade(&s.docker, t, img, &t.patch, &opts)).await;
        assert_eq!((gold.outcome, gold.reward), (Outcome::Passed, Some(1.0)), "{}: {}", t.instance_id, gold.detail);
        // the repository's own runner judges every test as pytest does
        assert!(t.test_cmd.as_deref().is_some_and(|c| c.contains(micro::RUNNER_PATH)), "{:?}", t.test_cmd);
        let mut under_pytest = t.clone();
        under_pytest.test_cmd = None;
        for (patch, ours) in [("", &empty), (t.patch.as_str(), &gold)] {
            let theirs = bounded(300, grade::grade(&s.docker, &under_pytest, img, patch, &opts)).await;
            assert_eq!((theirs.outcome, &theirs.tests), (ours.outcome, &ours.tests), "{}: pytest said\n{}\nthe runner said\n{}", t.instance_id, theirs.detail, ours.detail);
        }
        eprintln!("{}: empty {:.2}s, gold {:.2}s", t.instance_id, empty.seconds, gold.seconds);
    }
    // what the issue says the call returns is what it returns at base_commit
    let mut ep = bounded(120, Episode::start(&s.docker, &Spec::new(&s.images[0], &s.run), &s.tasks[0].base_commit)).await.unwrap();
    for g in &s.gens {
        let module = g.path.trim_end_matches(".py").replace('/', ".");
        let func = g.call.split('(').next().unwrap();
        ep.write_file("/tmp/symptom.py", &format!("from {module} import {func}\nprint({})\n", g.call)).await.unwrap();
        let r = bounded(60, ep.run("cd /testbed && PYTHONPATH=/testbed python3 /tmp/symptom.py", Duration::from_secs(30))).await.unwrap();
        assert_eq!(r.output.trim_end(), g.actual, "{}: {}", g.instance_id, g.problem_statement);
        assert_ne!(g.actual, g.expected);
    }
    // and the repository holds no test file
    let r = ep.run("cd /testbed && ls tests 2>&1; git status --short", Duration::from_secs(30)).await.unwrap();
    assert!(r.output.contains("No such file"), "{}", r.output);
    bounded(120, ep.close()).await;
    assert_no_containers(&s).await;
}

/// Replies with a task's canonical demonstration, turn by turn.
struct Demonstration;

#[async_trait]
impl Policy for Demonstration {
    fn name(&self) -> String {
        "micro-demonstration".into()
    }
    async fn act(&self, input: TurnInput<'_>) -> anyhow::Result<Reply> {
        let replies = micro::demonstration_replies(input.task, "```")?;
        let text = replies.get(input.turn as usize).cloned().unwrap_or_else(|| micro::reply_text("Done.", "submit", "```"));
        Ok(Reply { text, ids: None, logprobs: None, finish: FinishReason::Stop, policy_version: None })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demonstration_solves_each_task_through_the_scaffold() {
    let s = setup("demo").await;
    let pool = Pool::new(s.docker.clone(), 2, 2);
    let cfg = ScaffoldConfig { max_turns: 5, max_reply_tokens: 64, max_context_tokens: 8192, ..Default::default() };
    let grade = GradeOptions { run_id: s.run.clone(), test_timeout: Duration::from_secs(120) };
    let sc = Scaffold::new(cfg, ChatTemplate::new(Tokenizer::tiny().unwrap()).unwrap(), grade).unwrap();
    for (i, (t, img)) in s.tasks.iter().zip(&s.images).enumerate() {
        let traj = bounded(600, run_episode(&pool, &sc, &Demonstration, EpisodeSpec { task: t, image: img, sample: 0, seed: i as u64 })).await;
        assert_eq!(traj.exit, Exit::Submitted, "{}: {}", t.instance_id, traj.exit_detail);
        assert_eq!(traj.reward, Some(1.0), "{}: {:?}", t.instance_id, traj.grade);
        let tools: Vec<&str> = traj.turns.iter().map(|x| x.tool.as_deref().unwrap_or("-")).collect();
        assert_eq!(tools, ["open", "replace", "submit"], "{}", t.instance_id);
        assert!(traj.turns.iter().all(|x| x.format_error.is_none() && x.exit_code == Some(0)), "{}: {:?}", t.instance_id, traj.turns);
        // the submitted patch is the gold patch's one-line change
        let (path, old, new) = micro::fix_of(t).unwrap();
        let patch = traj.patch.as_deref().unwrap();
        assert!(patch.contains(&format!("+++ b/{path}")) && patch.contains(&old) && patch.contains(&new), "{patch}");
        assert_eq!(patch.lines().filter(|l| l.starts_with('+') && !l.starts_with("+++")).count(), 1, "{patch}");
        // the replace's observation shows the fixed line
        assert!(traj.messages[5].content.contains(&new), "{}", traj.messages[5].content);
        eprintln!("{}: {} ledger tokens, {:.2}s", t.instance_id, traj.ledger.len(), traj.timing.total_s);
    }
    assert_no_containers(&s).await;
}

/// Token counts with the tiny tokenizer: the issue and each canonical
/// reply stay small (the tiny model's context is 8192 and it learns from
/// a few hundred demonstrations).
#[test]
fn token_counts_are_small() {
    let tok = Tokenizer::tiny().unwrap();
    let n = |s: &str| tok.encode_plain(s).unwrap().len();
    let gens = micro::generate(SEED, 200);
    let dir = tempfile::tempdir().unwrap();
    let tasks = micro::micro_tasks(SEED, 200, dir.path()).unwrap();
    let mut issue = vec![];
    let mut replies = [vec![], vec![], vec![]];
    for t in &tasks {
        issue.push(n(&t.problem_statement));
        for (k, r) in micro::demonstration_replies(t, "```").unwrap().iter().enumerate() {
            replies[k].push(n(r));
        }
    }
    let stats = |v: &[usize]| (v.iter().min().copied().unwrap(), v.iter().sum::<usize>() as f64 / v.len() as f64, v.iter().max().copied().unwrap());
    eprintln!("example issue ({} tokens):\n{}", issue[0], tasks[0].problem_statement);
    eprintln!("issue tokens min/mean/max: {:?}", stats(&issue));
    for (k, name) in ["open", "replace", "submit"].iter().enumerate() {
        eprintln!("{name} reply tokens min/mean/max: {:?} (+1 for <|im_end|>)", stats(&replies[k]));
    }
    for tm in micro::TEMPLATES {
        let v: Vec<usize> = gens.iter().zip(&issue).filter(|(g, _)| g.template == tm).map(|(_, c)| *c).collect();
        eprintln!("  {:<8} issue tokens min/mean/max: {:?}", tm.name(), stats(&v));
    }
    let cfg = ScaffoldConfig::default();
    eprintln!("system prompt: {} tokens; task message around the issue: {} tokens", n(&scaffold::system_prompt(&cfg)), n(&scaffold::task_message(&tasks[0], "/testbed", cfg.prompt)) - issue[0]);
    assert!(stats(&issue).2 <= 120, "{:?}", stats(&issue));
    assert!(stats(&replies[0]).2 <= 30 && stats(&replies[1]).2 <= 64 && stats(&replies[2]).2 <= 16, "{:?}", replies.iter().map(|v| stats(v)).collect::<Vec<_>>());
}

/// Every reply of the small family's canonical solutions, `<|im_end|>`
/// included, fits the embedded default's reply limit: a longer one is cut
/// before its closing fence, and its bug could never be solved (at 48
/// tokens the `thank` bug's 50-token `replace` never was).
#[test]
fn every_small_bug_fits_the_default_reply_limit() {
    let cfg = appliance::config::Config::embedded();
    let tok = Tokenizer::tiny().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tasks = micro::family_tasks(micro::Family::Small, cfg.train.micro_seed, cfg.train.micro_tasks, dir.path()).unwrap();
    let mut longest = (0, String::new());
    for t in &tasks {
        for r in micro::demonstration_replies(t, &cfg.agent.fence).unwrap() {
            let n = tok.encode_plain(&r).unwrap().len() + 1;
            if n > longest.0 {
                longest = (n, r);
            }
        }
    }
    eprintln!("longest canonical reply: {} tokens with <|im_end|>:\n{}", longest.0, longest.1);
    assert!(longest.0 <= cfg.agent.max_reply_tokens, "agent.max_reply_tokens = {} cuts this {}-token reply:\n{}", cfg.agent.max_reply_tokens, longest.0, longest.1);
}

/// The small family against the real Engine: for each of its ten bugs the
/// empty patch fails and the gold patch passes (so no test shadows
/// another and the bug is real).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bug_of_the_small_family_is_valid() {
    let docker = env::connect().await.expect("Docker Engine reachable");
    bounded(900, image::ensure_base(&docker)).await.expect("base image");
    let run = env::new_run_id("test-micro-small");
    let _guard = RunGuard { run_id: run.clone() };
    let tasks = micro::family_tasks(micro::Family::Small, SEED, 40, &suite::cache_dir().join("micro")).unwrap();
    let mut one_per_bug: Vec<Task> = vec![];
    for t in tasks {
        let (_, old, _) = micro::fix_of(&t).unwrap();
        if !one_per_bug.iter().any(|u| micro::fix_of(u).unwrap().1 == old) {
            one_per_bug.push(t);
        }
    }
    assert_eq!(one_per_bug.len(), 10, "40 draws cover the ten bugs");
    let pool = Pool::new(docker.clone(), 2, 2);
    let rows = bounded(900, appliance::env::validate::validate(&pool, &one_per_bug, 1, None, &run, Duration::from_secs(120))).await.unwrap();
    for r in &rows {
        assert!(r.valid(), "{:?}", r.problem);
    }
    let _ = sandbox::reap_run(&docker, &run).await;
}
