//! The agent against the real Docker Engine: the scaffold's tools in real
//! containers, the gold policy solving every built-in task through them,
//! the submit-only floor, the token ledger's properties, the tiny local
//! model running whole episodes, and the fault paths (a container that dies,
//! a command that floods its output), with no container left behind.

use appliance::agent::episode::{run_episode, EpisodeSpec, Scaffold};
use appliance::agent::policy::{LocalPolicy, Policy, Reply, TurnInput};
use appliance::agent::rollout::{prepare_images, rollout, RolloutOptions};
use appliance::agent::scaffold::ScaffoldConfig;
use appliance::agent::scripted::{GoldPolicy, SubmitPolicy};
use appliance::agent::trajectory::{read_trajectories, Exit, JsonlWriter, Trajectory};
use appliance::engine::service::EngineService;
use appliance::engine::{FinishReason, SamplingParams};
use appliance::env::grade::GradeOptions;
use appliance::env::pool::Pool;
use appliance::env::sandbox::{self, RunGuard};
use appliance::env::{self, image, suite, task::Task};
use appliance::model::chat::{ChatTemplate, Message, Source};
use appliance::model::qwen2::Batch;
use appliance::model::tokenizer::Tokenizer;
use appliance::model::{pretrained, Model};
use async_trait::async_trait;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

async fn bounded<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f).await.expect("test step did not finish in time (a hang)")
}

struct Setup {
    docker: bollard::Docker,
    run: String,
    _guard: RunGuard,
    pool: Pool,
    tasks: Vec<Task>,
    images: Vec<String>,
}

async fn setup(name: &str, concurrency: usize) -> Setup {
    let docker = env::connect().await.expect("Docker Engine reachable");
    image::ensure_base(&docker).await.expect("base image");
    let run = env::new_run_id(&format!("test-{name}"));
    let pool = Pool::new(docker.clone(), concurrency, 2);
    let tasks = suite::tasks().unwrap();
    let images = bounded(900, prepare_images(&pool, &tasks, None, false)).await.unwrap();
    Setup { docker, run: run.clone(), _guard: RunGuard { run_id: run }, pool, tasks, images }
}

fn scaffold(cfg: ScaffoldConfig, run: &str) -> Scaffold {
    Scaffold::new(cfg, ChatTemplate::new(Tokenizer::tiny().unwrap()).unwrap(), GradeOptions { run_id: run.into(), test_timeout: Duration::from_secs(120) }).unwrap()
}

async fn assert_no_containers(s: &Setup) {
    let left = sandbox::run_containers(&s.docker, &s.run).await.unwrap();
    assert!(left.is_empty(), "containers of run {} remain: {left:?}", s.run);
}

/// The ChatML text of a conversation whose ledger ends right after the last
/// message's `<|im_end|>`.
fn chatml(messages: &[Message]) -> String {
    let mut s: String = messages.iter().map(|m| format!("<|im_start|>{}\n{}<|im_end|>\n", m.role.as_str(), m.content)).collect();
    s.pop();
    s
}

/// Every ledger property the trainer relies on.
fn check_ledger(t: &Trajectory, tok: &Tokenizer) {
    t.check().unwrap();
    // decoding all ids gives the rendered conversation
    assert_eq!(tok.decode(&t.ledger.ids).unwrap(), chatml(&t.messages), "{}", t.instance_id);
    // the loss mask covers exactly the assistant-sampled tokens: each turn's reply span
    let mut from_turns = vec![false; t.ledger.len()];
    for turn in &t.turns {
        for x in &mut from_turns[turn.reply.start..turn.reply.end] {
            *x = true;
        }
    }
    assert_eq!(t.sampled_mask(), from_turns, "{}: sampled tokens are exactly the replies", t.instance_id);
    // and a reply's tokens are its text (plus the closing <|im_end|> when sampled)
    for (k, turn) in t.turns.iter().enumerate() {
        let reply = &t.messages[2 + 2 * k];
        let ids = &t.ledger.ids[turn.reply.start..turn.reply.end];
        let body = if ids.last() == Some(&tok.im_end().unwrap()) { &ids[..ids.len() - 1] } else { ids };
        assert_eq!(tok.decode(body).unwrap(), reply.content);
    }
    assert!(t.ledger.source.iter().zip(&t.ledger.logprob).all(|(s, l)| *s == Source::Sampled || l.is_none()));
}

/// Wraps a policy and records the ids it was shown at every turn.
struct Recording<P> {
    inner: P,
    seen: Mutex<Vec<(String, Vec<u32>)>>,
}

#[async_trait]
impl<P: Policy> Policy for Recording<P> {
    fn name(&self) -> String {
        self.inner.name()
    }
    async fn act(&self, input: TurnInput<'_>) -> anyhow::Result<Reply> {
        self.seen.lock().unwrap().push((input.task.instance_id.clone(), input.ledger.ids.clone()));
        self.inner.act(input).await
    }
}

/// Replies with a fixed list of commands, then `submit`.
struct Script {
    cmds: Vec<String>,
    /// Run before turn N (for fault injection).
    hook: Option<(u32, Arc<dyn Fn() + Send + Sync>)>,
}

#[async_trait]
impl Policy for Script {
    fn name(&self) -> String {
        "script".into()
    }
    async fn act(&self, input: TurnInput<'_>) -> anyhow::Result<Reply> {
        if let Some((n, f)) = &self.hook {
            if *n == input.turn {
                f();
            }
        }
        let cmd = self.cmds.get(input.turn as usize).cloned().unwrap_or_else(|| "submit".into());
        Ok(Reply { text: format!("Next.\n```\n{cmd}\n```"), ids: None, logprobs: None, finish: FinishReason::Stop, policy_version: None })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gold_solves_every_builtin_task_and_submit_only_scores_zero() {
    let s = setup("gold", 4).await;
    let sc = scaffold(ScaffoldConfig::default(), &s.run);
    let tok = Tokenizer::tiny().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gold.jsonl");
    let gold = Arc::new(Recording { inner: GoldPolicy { fence: "```".into() }, seen: Mutex::new(vec![]) });
    let opts = RolloutOptions { samples: 1, seed: 5, env_retries: 1, progress: false };
    let mut w = JsonlWriter::open(&path).unwrap();
    let (trajs, totals) = bounded(1200, rollout(&s.pool, &sc, gold.clone(), &s.tasks, &s.images, &opts, 4, Some(&mut w), &HashSet::new())).await.unwrap();
    eprintln!("{}", totals.line());
    assert_eq!(trajs.len(), s.tasks.len());
    for t in &trajs {
        assert_eq!(t.exit, Exit::Submitted, "{}: {}", t.instance_id, t.exit_detail);
        assert_eq!(t.reward, Some(1.0), "{}: {:?}", t.instance_id, t.grade);
        assert!(t.turns.iter().all(|x| x.format_error.is_none() && x.tool.as_deref() != Some("usage_error")), "{}", t.instance_id);
        assert!(t.turns.iter().any(|x| x.tool.as_deref() == Some("edit")));
        check_ledger(t, &tok);
        // the ids at turn k are a prefix of the ids at turn k+1, and of the final ledger
        let seen: Vec<Vec<u32>> = gold.seen.lock().unwrap().iter().filter(|(id, _)| *id == t.instance_id).map(|x| x.1.clone()).collect();
        assert_eq!(seen.len(), t.turns.len());
        for pair in seen.windows(2) {
            assert!(pair[1].starts_with(&pair[0]) && pair[1].len() > pair[0].len());
        }
        assert!(t.ledger.ids.starts_with(seen.last().unwrap()));
    }
    // the file holds the same records
    let back = read_trajectories(&path).unwrap();
    assert_eq!(back.items.len(), trajs.len());
    assert!(back.torn_line.is_none());

    let submit = Arc::new(SubmitPolicy { fence: "```".into() });
    let (trajs, _) = bounded(1200, rollout(&s.pool, &sc, submit, &s.tasks, &s.images, &opts, 4, None, &HashSet::new())).await.unwrap();
    for t in &trajs {
        assert_eq!((t.exit, t.reward, t.steps()), (Exit::Submitted, Some(0.0), 1), "{}", t.instance_id);
        assert_eq!(t.patch.as_deref(), Some(""));
        // every builtin task has FAIL_TO_PASS tests, so no container ran
        let g = t.grade.as_ref().expect("graded");
        assert_eq!((g.outcome.as_str(), g.seconds), ("tests_failed", 0.0), "{}: {g:?}", t.instance_id);
        assert!(g.detail.contains("not run"), "{}", g.detail);
        check_ledger(t, &tok);
    }
    assert_no_containers(&s).await;
}

fn observations(t: &Trajectory) -> Vec<&str> {
    t.messages.iter().skip(3).step_by(2).map(|m| m.content.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tools_work_in_a_real_container() {
    let s = setup("tools", 2).await;
    let sc = scaffold(ScaffoldConfig { window_lines: 5, ..Default::default() }, &s.run);
    let i = s.tasks.iter().position(|t| t.instance_id.contains("unitconv")).unwrap();
    let cmds = [
        "open unitconv/convert.py",                                     // 0
        "scroll_down",                                                  // 1
        "goto 12",                                                      // 2
        "search_file KM_PER_MILE",                                      // 3
        "replace 'KM_PER_MILE = 1.6' 'KM_PER_MILE = 1.609344'",         // 4
        "replace KM_PER_MILE MILE_KM",                                  // 5: not unique
        "edit 12:13 <<EOF\ndef celsius_to_fahrenheit(c):\n    return c * 1.8 + 32\nEOF", // 6
        "cd unitconv && ls",                                            // 7
        "create notes/todo.txt",                                        // 8
        "edit 1:1 <<EOF\nremember\nEOF",                                // 9
        "open nothere.py",                                              // 10
        "goto",                                                         // 11: usage
        "cd /testbed && git status --short",                            // 12
        "I forgot the fence",                                           // 13 (sent inside a fence: a shell command)
        "open data/\0first.py",                                         // 14: a NUL no path can hold
    ];
    let p = Script { cmds: cmds.iter().map(|c| c.to_string()).collect(), hook: None };
    let t = bounded(600, run_episode(&s.pool, &sc, &p, EpisodeSpec { task: &s.tasks[i], image: &s.images[i], sample: 0, seed: 1 })).await;
    assert_eq!(t.exit, Exit::Submitted, "{}", t.exit_detail);
    let o = observations(&t);
    assert!(o[0].starts_with("[File: /testbed/unitconv/convert.py (13 lines total)]\n1:KM_PER_MILE = 1.6\n"), "{}", o[0]);
    assert!(o[0].contains("(8 more lines below)") && o[0].ends_with("(Current directory: /testbed, current file: /testbed/unitconv/convert.py) bash-$"), "{}", o[0]);
    assert!(o[1].contains("(5 more lines above)\n6:\n"), "{}", o[1]);
    assert!(o[2].contains("12:def celsius_to_fahrenheit(c):"), "{}", o[2]);
    assert!(o[3].starts_with("Found 3 matches for \"KM_PER_MILE\""), "{}", o[3]);
    assert!(o[4].contains("1:KM_PER_MILE = 1.609344"), "{}", o[4]);
    assert!(o[5].contains("occurs 3 times"), "{}", o[5]);
    assert!(o[6].contains("13:    return c * 1.8 + 32"), "{}", o[6]);
    assert!(o[7].contains("convert.py") && o[7].contains("(Current directory: /testbed/unitconv,"), "{}", o[7]);
    assert!(o[8].contains("[File: /testbed/unitconv/notes/todo.txt (0 lines total)]"), "{}", o[8]);
    assert!(o[9].contains("1:remember"), "{}", o[9]);
    assert!(o[10].contains("no such file"), "{}", o[10]);
    assert!(o[11].starts_with("usage: goto LINE"), "{}", o[11]);
    assert!(o[12].contains("M unitconv/convert.py") && o[12].contains("?? unitconv/notes/"), "{}", o[12]);
    assert!(o[13].contains("command not found"), "{}", o[13]);
    assert_eq!(t.turns[11].tool.as_deref(), Some("usage_error"));
    // the daemon would answer a NUL in a path with a server error: the policy's
    // typo is its own usage error, not an environment failure
    assert!(o[14].contains("NUL character"), "{}", o[14]);
    assert_eq!(t.turns[14].tool.as_deref(), Some("usage_error"));
    let patch = t.patch.as_deref().unwrap();
    assert!(patch.contains("+KM_PER_MILE = 1.609344") && patch.contains("+    return c * 1.8 + 32") && patch.contains("+remember"), "{patch}");
    // the miles fix is in, so the task's tests pass despite the other changes
    assert_eq!(t.reward, Some(1.0), "{:?}", t.grade);
    check_ledger(&t, &Tokenizer::tiny().unwrap());
    assert_no_containers(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_paths_are_classified_and_leave_no_container() {
    let s = setup("faults", 2).await;
    let sc = scaffold(ScaffoldConfig { max_turns: 4, ..Default::default() }, &s.run);
    let (task, image) = (&s.tasks[0], &s.images[0]);

    // A command floods its output: capped, recorded, and the episode goes on.
    let p = Script { cmds: vec!["yes appliance | head -c 30000000".into(), "echo after".into()], hook: None };
    let t = bounded(600, run_episode(&s.pool, &sc, &p, EpisodeSpec { task, image, sample: 0, seed: 1 })).await;
    assert_eq!(t.exit, Exit::Submitted, "{}", t.exit_detail);
    assert!(t.turns[0].output_truncated && t.turns[0].output_bytes == 30_000_000, "{:?}", t.turns[0]);
    assert!(observations(&t)[0].len() < 100_000);
    assert!(observations(&t)[1].starts_with("after"));
    assert_eq!(t.reward, Some(0.0));

    // The container dies mid-episode: an environment error, never scored.
    let (d, run) = (s.docker.clone(), s.run.clone());
    let kill: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        let (d, run) = (d.clone(), run.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                for id in sandbox::run_containers(&d, &run).await.unwrap() {
                    let _ = d.kill_container(&id, None::<bollard::query_parameters::KillContainerOptions>).await;
                }
            });
        })
        .join()
        .unwrap();
    });
    let p = Script { cmds: vec!["ls".into(), "ls".into()], hook: Some((1, kill)) };
    let t = bounded(600, run_episode(&s.pool, &sc, &p, EpisodeSpec { task, image, sample: 0, seed: 1 })).await;
    assert_eq!(t.exit, Exit::EnvironmentError, "{}", t.exit_detail);
    assert_eq!((t.reward, t.final_reward), (None, None));
    assert!(t.grade.is_none());
    assert_eq!(t.turns.len(), 2);

    // A policy that fails (its server went away) ends the episode as a policy error.
    struct Gone;
    #[async_trait]
    impl Policy for Gone {
        fn name(&self) -> String {
            "gone".into()
        }
        async fn act(&self, _: TurnInput<'_>) -> anyhow::Result<Reply> {
            anyhow::bail!("connection refused")
        }
    }
    let t = bounded(600, run_episode(&s.pool, &sc, &Gone, EpisodeSpec { task, image, sample: 0, seed: 1 })).await;
    assert_eq!(t.exit, Exit::PolicyError);
    assert!(t.exit_detail.contains("connection refused"));
    assert_eq!(t.reward, None);

    // The turn limit: graded, kept, with the full length penalty at T_max.
    let p = Script { cmds: vec!["ls".into(); 10], hook: None };
    let sc4 = scaffold(ScaffoldConfig { max_turns: 4, length_threshold: 2, ..Default::default() }, &s.run);
    let t = bounded(600, run_episode(&s.pool, &sc4, &p, EpisodeSpec { task, image, sample: 0, seed: 1 })).await;
    assert_eq!(t.exit, Exit::TurnLimit);
    assert_eq!((t.reward, t.final_reward), (Some(0.0), Some(-1.0)));
    assert_eq!(t.patch.as_deref(), Some(""));
    assert_no_containers(&s).await;
}

fn tiny_policy(seed: u64) -> (Arc<LocalPolicy>, Model, Tokenizer) {
    let p = pretrained::load(None, seed).unwrap();
    let engine = EngineService::start(p.model.clone(), "tiny", 64, 4).unwrap();
    let params = SamplingParams { temperature: 1.0, ..Default::default() };
    (Arc::new(LocalPolicy { engine, tokenizer: p.tokenizer.clone(), params }), p.model, p.tokenizer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tiny_model_runs_whole_episodes() {
    let s = setup("tiny", 4).await;
    let cfg = ScaffoldConfig { max_turns: 3, max_reply_tokens: 40, max_context_tokens: 8192, ..Default::default() };
    let sc = scaffold(cfg.clone(), &s.run);
    let (policy, mut model, tok) = tiny_policy(0);
    let tasks = &s.tasks[..3];
    let opts = RolloutOptions { samples: 2, seed: 9, env_retries: 1, progress: false };
    let (trajs, totals) = bounded(900, rollout(&s.pool, &sc, policy.clone(), tasks, &s.images[..3], &opts, 4, None, &HashSet::new())).await.unwrap();
    eprintln!("{}", totals.line());
    assert_eq!(trajs.len(), 6);
    let mut format_errors = 0;
    for t in &trajs {
        assert!(matches!(t.exit, Exit::TurnLimit | Exit::Submitted | Exit::ContextLimit), "{}: {:?} {}", t.instance_id, t.exit, t.exit_detail);
        assert!(t.reward.is_some(), "graded: {:?}", t.grade);
        check_ledger(t, &tok);
        for turn in &t.turns {
            let reply = &t.messages[2 + 2 * t.turns.iter().position(|x| x == turn).unwrap()].content;
            // the classification agrees with the extractor
            assert_eq!(turn.format_error.is_some(), appliance::agent::command::extract(reply, &cfg.command_format()).is_err());
            format_errors += turn.format_error.is_some() as usize;
            assert!(!turn.retokenized && turn.policy_version == Some(0));
            // every sampled token has its log-prob and version
            assert!((turn.reply.start..turn.reply.end).all(|i| t.ledger.logprob[i].is_some() && t.ledger.version[i] == Some(0)));
        }
        // the recorded sampling log-probs are the model's (the trainer will recompute them)
        let batch = Batch::from_sequences(&[t.ledger.ids.clone()]);
        let st = model.forward(&batch).unwrap();
        let (targets, _) = batch.next_token_targets();
        let lp = model.token_logprobs(&st, &targets);
        for i in 1..t.ledger.len() {
            if let Some(rec) = t.ledger.logprob[i] {
                assert!((lp.logprob[i - 1] - rec).abs() < 1e-4, "{} token {i}: recorded {rec}, recomputed {}", t.instance_id, lp.logprob[i - 1]);
            }
        }
    }
    assert!(format_errors > 0, "a random model's replies have format errors, classified");
    // The same seeds give the same episode, bit for bit. (One episode at a
    // time: with several, the engine batches their decoding together, and
    // a batch's shape can move a log-prob by an ulp.)
    let one = RolloutOptions { samples: 1, ..opts };
    let (a, _) = bounded(900, rollout(&s.pool, &sc, policy.clone(), &tasks[..1], &s.images[..1], &one, 1, None, &HashSet::new())).await.unwrap();
    let (b, _) = bounded(900, rollout(&s.pool, &sc, policy, &tasks[..1], &s.images[..1], &one, 1, None, &HashSet::new())).await.unwrap();
    assert_eq!(a[0].ledger, b[0].ledger);
    // the concurrent run's tokens are the same (a one-ulp log-prob change
    // would have to straddle a uniform draw to change one)
    assert_eq!(a[0].ledger.ids, trajs[0].ledger.ids, "sample 0 of the concurrent run is the same episode");
    assert_no_containers(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_episode_against_serve_equals_the_in_process_one() {
    use appliance::agent::endpoint::{EndpointConfig, EndpointMode, EndpointPolicy};
    use appliance::serve::server::{bind, ServeOptions};
    let s = setup("endpoint", 2).await;
    let cfg = ScaffoldConfig { max_turns: 3, max_reply_tokens: 40, max_context_tokens: 8192, ..Default::default() };
    let sc = scaffold(cfg, &s.run);
    let (local, model, tok) = tiny_policy(4);
    let served = EngineService::start(model, "tiny", 64, 4).unwrap();
    let server = bind(served, tok.clone(), ServeOptions::default()).await.unwrap();
    let mut ecfg = EndpointConfig::new(server.base_url(), "tiny", EndpointMode::Completions);
    ecfg.params = local.params.clone();
    let remote = EndpointPolicy::new(ecfg, tok.clone()).unwrap();
    let (task, image) = (&s.tasks[1], &s.images[1]);
    for seed in [3u64, 4] {
        let a = bounded(600, run_episode(&s.pool, &sc, local.as_ref(), EpisodeSpec { task, image, sample: 0, seed })).await;
        let b = bounded(600, run_episode(&s.pool, &sc, &remote, EpisodeSpec { task, image, sample: 0, seed })).await;
        assert_eq!(a.exit, b.exit, "{} / {}", a.exit_detail, b.exit_detail);
        assert!(b.policy.starts_with("endpoint:") || b.policy.contains("http"), "{}", b.policy);
        // the same tokens, and log-probs equal to the bit
        assert_eq!(a.ledger.ids, b.ledger.ids);
        assert_eq!(a.ledger.source, b.ledger.source);
        let bits = |t: &Trajectory| t.ledger.logprob.iter().map(|x| x.map(f32::to_bits)).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
        assert_eq!(a.reward, b.reward);
        check_ledger(&b, &tok);
    }

    // The server goes away mid-episode: a policy error, not a hang; no container remains.
    struct StopAfter {
        inner: EndpointPolicy,
        server: Mutex<Option<appliance::serve::server::RunningServer>>,
    }
    #[async_trait]
    impl Policy for StopAfter {
        fn name(&self) -> String {
            self.inner.name()
        }
        async fn act(&self, input: TurnInput<'_>) -> anyhow::Result<Reply> {
            if input.turn == 1 {
                let s = self.server.lock().unwrap().take();
                if let Some(s) = s {
                    s.shutdown().await?;
                }
            }
            self.inner.act(input).await
        }
    }
    let p = StopAfter { inner: remote, server: Mutex::new(Some(server)) };
    let t = bounded(600, run_episode(&s.pool, &sc, &p, EpisodeSpec { task, image, sample: 0, seed: 3 })).await;
    assert_eq!(t.exit, Exit::PolicyError, "{}", t.exit_detail);
    assert_eq!(t.turns.len(), 1);
    assert_eq!(t.reward, None);
    assert_no_containers(&s).await;
}
