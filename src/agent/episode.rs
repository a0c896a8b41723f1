//! The episode loop: from the issue text to a graded trajectory.
//!
//! Owns: one episode end to end — render the system prompt and the task,
//! then per turn ask the policy for a reply, append its ids verbatim to the
//! ledger, extract the one command (a format error gets an error
//! observation), run it through the tools, tokenize the observation once and
//! append it — until `submit`, the turn limit or the context limit; then the
//! patch is graded in a fresh container and the reward computed (an empty
//! patch needs no container: `grade::empty_patch_report`). Truncated
//! episodes are graded and kept with their length penalty: the method found
//! that dropping overlong looping episodes makes looping worse.
//!
//! Failures are classified, never hidden: a container or daemon failure
//! ends the episode as an environment error, a failing policy (its server
//! went away) as a policy error; neither is scored. The episode's container
//! is removed on every path.
//!
//! Does not own what the tools do (`tools`), the words (`scaffold`), who
//! writes the replies (`policy`), or parallelism (`rollout`).

use super::command;
use super::policy::{turn_seed, Policy, TurnInput};
use super::reward::final_reward;
use super::scaffold::{self, ScaffoldConfig};
use super::tools::{self, Tool, Tools};
use super::trajectory::{Exit, Graded, Ledger, ReplyEnd, Span, Timing, Trajectory, Turn, FORMAT_VERSION};
use crate::engine::FinishReason;
use crate::env::grade::GradeOptions;
use crate::env::pool::Pool;
use crate::env::sandbox::Spec;
use crate::env::task::Task;
use crate::model::chat::{ChatTemplate, Message, Rendered, Source};
use std::time::{Duration, Instant};

/// Everything an episode needs besides the policy and the task.
#[derive(Clone)]
pub struct Scaffold {
    pub cfg: ScaffoldConfig,
    /// Renders with special-token strings in content treated as text.
    pub template: ChatTemplate,
    pub grade: GradeOptions,
}

impl Scaffold {
    pub fn new(cfg: ScaffoldConfig, template: ChatTemplate, grade: GradeOptions) -> anyhow::Result<Self> {
        cfg.validate()?;
        Ok(Scaffold { cfg, template: template.with_special_in_content(false), grade })
    }

    /// The opening messages: system prompt and task.
    pub fn opening(&self, task: &Task) -> Vec<Message> {
        vec![Message::system(scaffold::system_prompt(&self.cfg)), Message::user(scaffold::task_message(task, "/testbed", self.cfg.prompt))]
    }
}

/// Which episode: a task, its image, and which sample of it with what seed.
pub struct EpisodeSpec<'a> {
    pub task: &'a Task,
    pub image: &'a str,
    pub sample: u32,
    pub seed: u64,
}

struct Run {
    messages: Vec<Message>,
    rendered: Rendered,
    ledger: Ledger,
    turns: Vec<Turn>,
    timing: Timing,
}

fn reply_end(f: FinishReason) -> ReplyEnd {
    match f {
        FinishReason::Stop => ReplyEnd::Stop,
        FinishReason::Length => ReplyEnd::Length,
        FinishReason::Context => ReplyEnd::Context,
    }
}

/// Run one episode and grade it. Never fails: every failure is classified
/// in the returned trajectory.
pub async fn run_episode(pool: &Pool, sc: &Scaffold, policy: &dyn Policy, spec: EpisodeSpec<'_>) -> Trajectory {
    let t0 = Instant::now();
    let task = spec.task;
    let messages = sc.opening(task);
    let (rendered, opening_error) = match sc.template.render(&messages, true) {
        Ok(r) => (r, None),
        Err(e) => (Rendered::new(), Some(format!("rendering the prompt: {e:#}"))),
    };
    let mut run = Run { ledger: Ledger::from_rendered(&rendered), rendered, messages, turns: vec![], timing: Timing::default() };
    let traj = |run: Run, exit: Exit, detail: String, patch: Option<String>| Trajectory {
        format_version: FORMAT_VERSION,
        instance_id: task.instance_id.clone(),
        sample: spec.sample,
        seed: spec.seed,
        policy: policy.name(),
        messages: run.messages,
        ledger: run.ledger,
        turns: run.turns,
        exit,
        exit_detail: detail,
        patch,
        grade: None,
        reward: None,
        final_reward: None,
        attempts: 1,
        timing: run.timing,
    };
    if let Some(e) = opening_error {
        return traj(run, Exit::PolicyError, e, None);
    }
    if run.rendered.len() + sc.cfg.min_reply_tokens > sc.cfg.max_context_tokens {
        let d = format!("the prompt alone has {} tokens; the context limit is {}", run.rendered.len(), sc.cfg.max_context_tokens);
        return traj(run, Exit::ContextLimit, d, None);
    }

    let te = Instant::now();
    let mut ep = match pool.episode(&Spec::new(spec.image, &sc.grade.run_id), &task.base_commit).await {
        Ok(ep) => ep,
        Err(e) => {
            run.timing.env_s += te.elapsed().as_secs_f64();
            run.timing.total_s = t0.elapsed().as_secs_f64();
            return traj(run, Exit::EnvironmentError, format!("starting the container: {e:#}"), None);
        }
    };
    run.timing.env_s += te.elapsed().as_secs_f64();

    let (exit, detail, patch) = turns(&mut run, &mut ep.ep, sc, policy, &spec).await;
    let mut patch = patch;
    let (mut exit, mut detail) = (exit, detail);
    if exit.truncated() {
        // a truncated episode is still graded: take the working tree as it is
        let te = Instant::now();
        match ep.ep.submission().await {
            Ok(p) => patch = Some(p),
            Err(e) => {
                exit = Exit::EnvironmentError;
                detail = format!("{detail}; then taking the final diff failed: {e:#}");
            }
        }
        run.timing.env_s += te.elapsed().as_secs_f64();
    }
    let te = Instant::now();
    ep.close().await;
    run.timing.env_s += te.elapsed().as_secs_f64();

    let steps = run.turns.len() as u32;
    let mut t = traj(run, exit, detail, patch.clone());
    if let (false, Some(p)) = (exit.is_error(), patch) {
        let tg = Instant::now();
        // An empty patch's outcome is given by the task (no container).
        let report = match crate::env::grade::empty_patch_report(task, &p) {
            Some(r) => r,
            None => pool.grade(task, spec.image, &p, &sc.grade).await,
        };
        t.timing.grading_s = tg.elapsed().as_secs_f64();
        t.reward = report.reward;
        t.final_reward = final_reward(report.reward, steps, &sc.cfg.length_penalty());
        t.grade = Some(Graded { outcome: report.outcome.stored_name().into(), detail: report.detail, seconds: report.seconds });
    }
    t.timing.total_s = t0.elapsed().as_secs_f64();
    t
}

/// The turns of an episode; returns how it ended, a detail line, and the
/// submitted patch.
async fn turns(run: &mut Run, ep: &mut crate::env::episode::Episode, sc: &Scaffold, policy: &dyn Policy, spec: &EpisodeSpec<'_>) -> (Exit, String, Option<String>) {
    let cfg = &sc.cfg;
    let tmpl = &sc.template;
    let fmt = cfg.command_format();
    let mut tools = Tools::new(cfg.window_lines, Duration::from_secs(cfg.command_timeout_s));
    let im_end = tmpl.im_end();
    for turn in 0..cfg.max_turns {
        // --- the reply
        let room = cfg.max_context_tokens.saturating_sub(run.rendered.len());
        if room < cfg.min_reply_tokens {
            return (Exit::ContextLimit, format!("{} tokens used of {}; no room for a reply", run.rendered.len(), cfg.max_context_tokens), None);
        }
        let max_new = room.min(cfg.max_reply_tokens);
        let tg = Instant::now();
        let input = TurnInput { task: spec.task, messages: &run.messages, ledger: &run.rendered, turn, max_new_tokens: max_new, seed: turn_seed(spec.seed, turn) };
        let reply = policy.act(input).await;
        let generation_s = tg.elapsed().as_secs_f64();
        run.timing.generation_s += generation_s;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => return (Exit::PolicyError, format!("turn {turn}: the policy failed: {e:#}"), None),
        };
        let (ids, logprobs, retokenized) = match &reply.ids {
            Some(ids) => {
                if let Some(lp) = &reply.logprobs {
                    if lp.len() != ids.len() {
                        return (Exit::PolicyError, format!("turn {turn}: the policy returned {} ids but {} log-probs", ids.len(), lp.len()), None);
                    }
                }
                (ids.clone(), reply.logprobs.clone(), false)
            }
            None => {
                let mut ids = match tmpl.encode_content(&reply.text) {
                    Ok(x) => x,
                    Err(e) => return (Exit::PolicyError, format!("turn {turn}: tokenizing the reply: {e:#}"), None),
                };
                if reply.finish == FinishReason::Stop {
                    ids.push(im_end);
                }
                (ids, None, true)
            }
        };
        if run.rendered.len() + ids.len() > cfg.max_context_tokens {
            return (Exit::ContextLimit, format!("turn {turn}: a reply of {} tokens does not fit in the context", ids.len()), None);
        }
        let start = run.rendered.len();
        if let Err(e) = tmpl.append_sampled(&mut run.rendered, &ids) {
            return (Exit::PolicyError, format!("turn {turn}: {e:#}"), None);
        }
        let end = run.rendered.len();
        if ids.last() != Some(&im_end) {
            // the reply was cut off: close the turn with a template token
            let _ = tmpl.close_turn(&mut run.rendered);
        }
        run.ledger.sync_from(&run.rendered);
        for i in start..end {
            run.ledger.logprob[i] = logprobs.as_ref().map(|l| l[i - start]);
            run.ledger.version[i] = reply.policy_version;
        }
        run.messages.push(Message::assistant(reply.text.clone()));
        let mut rec = Turn { policy_version: reply.policy_version, retokenized, generation_s, ..Turn::new(Span { start, end }, reply_end(reply.finish)) };

        // --- the command
        let te = Instant::now();
        let output = match command::extract(&reply.text, &fmt) {
            Err(fe) => {
                let msg = format!("Format error: {fe}.");
                rec.format_error = Some(fe);
                msg
            }
            Ok(cmd) => {
                rec.command = Some(cmd.clone());
                match tools::parse(&cmd) {
                    Err(usage) => {
                        rec.tool = Some("usage_error".into());
                        usage
                    }
                    Ok(tool) => {
                        rec.tool = Some(tool.name().into());
                        let is_submit = tool == Tool::Submit;
                        match tools.run(ep, tool).await {
                            Err(e) => {
                                rec.env_s = te.elapsed().as_secs_f64();
                                run.timing.env_s += rec.env_s;
                                run.turns.push(rec);
                                return (Exit::EnvironmentError, format!("turn {turn}: {e:#}"), None);
                            }
                            Ok(out) => {
                                rec.exit_code = out.exit_code;
                                rec.timed_out = out.timed_out;
                                rec.output_truncated = out.truncated;
                                rec.output_bytes = out.total_bytes;
                                if is_submit {
                                    rec.env_s = te.elapsed().as_secs_f64();
                                    run.timing.env_s += rec.env_s;
                                    run.turns.push(rec);
                                    return (Exit::Submitted, String::new(), out.submitted);
                                }
                                out.output
                            }
                        }
                    }
                }
            }
        };
        rec.env_s = te.elapsed().as_secs_f64();
        run.timing.env_s += rec.env_s;

        // --- the observation
        if turn + 1 == cfg.max_turns {
            run.turns.push(rec);
            return (Exit::TurnLimit, format!("{} turns without submit", cfg.max_turns), None);
        }
        let obs = scaffold::observation(&output, &tools.cwd, tools.file.as_deref());
        let before = run.rendered.len();
        if let Err(e) = tmpl.append_user_turn(&mut run.rendered, &obs, Source::Observation) {
            run.turns.push(rec);
            return (Exit::PolicyError, format!("turn {turn}: appending the observation: {e:#}"), None);
        }
        if run.rendered.len() + cfg.min_reply_tokens > cfg.max_context_tokens {
            run.rendered.ids.truncate(before);
            run.rendered.source.truncate(before);
            run.turns.push(rec);
            return (Exit::ContextLimit, format!("turn {turn}: the observation does not leave room for another reply"), None);
        }
        run.ledger.sync_from(&run.rendered);
        rec.observation = Some(Span { start: before, end: run.rendered.len() });
        run.messages.push(Message::user(obs));
        run.turns.push(rec);
    }
    (Exit::TurnLimit, format!("{} turns without submit", cfg.max_turns), None)
}
