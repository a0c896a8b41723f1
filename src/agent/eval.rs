//! Evaluation statistics over finished trajectories: Pass@1 as the method
//! reports it, Pass@k, and per-run and per-task rows, with a plain-text
//! table for the terminal.
//!
//! Owns: the definitions below, [`summarize`], [`render_table`], the
//! unbiased Pass@k estimator ([`pass_at_k`]) and [`mean_sem`] (also used by
//! training's held-out evaluation). Does not own running or grading episodes
//! (`rollout`, `env`) or reading trajectory files (`trajectory`): it is pure
//! arithmetic over `&[Trajectory]`.
//!
//! Definitions:
//! - An episode is **scored** when its `reward` is known. A `None` reward
//!   (an environment or policy error, or grading that failed outside the
//!   policy) is excluded from every rate and counted apart, per task and
//!   overall. Errors with an `EnvironmentError` exit, or any other exit but
//!   `PolicyError`, count as environment errors; `PolicyError` exits as
//!   policy errors. An episode is **solved** when [`Trajectory::solved`].
//! - **Run j** is the set of episodes with `sample == j`. Its pass rate is
//!   solved tasks / tasks scored in that run; a run with no scored episode
//!   has no pass rate and is left out of the mean.
//! - **Pass@1** is the mean of the runs' pass rates, ± the standard error of
//!   that mean across runs (sample standard deviation with ddof = 1, divided
//!   by √runs). With a single run the standard error is absent (`None`), not
//!   0: one run shows no spread.
//! - **Pass@k** is the mean over tasks of the unbiased estimator
//!   1 − C(n−c, k) / C(n, k) (Chen et al. 2021), with n the task's scored
//!   attempts and c its solved ones. It is defined only for n ≥ k: tasks
//!   with fewer scored attempts are left out (their number is reported as
//!   the difference between `tasks` and `pass_at_k_tasks`). For n = k it is
//!   "solved at least once".
//! - A task with no scored episode has no pass rate (`None`), never 0.
//! - Records are keyed by (instance_id, sample). When a key repeats (a
//!   resumed run that wrote an episode again), the last record wins and the
//!   earlier ones are counted in `superseded`.
//! - The behaviour columns of a task (mean steps, submit rate, truncated
//!   episodes, format-error turns) describe its scored episodes.

use crate::agent::trajectory::{Exit, Trajectory};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// The mean of `values` and the standard error of that mean (sample
/// standard deviation with ddof = 1, divided by √n).
///
/// With no values both are NaN; with one value the mean is that value and
/// the standard error is NaN (undefined with ddof = 1, as in numpy and
/// scipy). Callers that print it should show a lone value without "±".
pub fn mean_sem(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return (mean, f64::NAN);
    }
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1) as f64;
    (mean, (var / n as f64).sqrt())
}

/// The unbiased Pass@k estimate for one task with `n` attempts of which `c`
/// succeeded: 1 − C(n−c, k) / C(n, k), computed as the product
/// 1 − ∏_{i=n−c+1}^{n} (1 − k/i), which neither overflows nor loses
/// precision to large binomials.
///
/// `None` when it is undefined: k = 0, n < k, or c > n.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> Option<f64> {
    if k == 0 || n < k || c > n {
        return None;
    }
    if n - c < k {
        // every choice of k attempts includes a success
        return Some(1.0);
    }
    let none = ((n - c + 1)..=n).map(|i| 1.0 - k as f64 / i as f64).product::<f64>();
    Some(1.0 - none)
}

/// One run: the episodes with one sample index.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunResult {
    pub sample: u32,
    /// Tasks with an episode in this run.
    pub tasks: usize,
    /// Tasks whose episode in this run was scored.
    pub scored: usize,
    pub solved: usize,
    /// Episodes with no reward (environment or policy errors).
    pub errors: usize,
    /// solved / scored; `None` when nothing in the run was scored.
    pub pass_rate: Option<f64>,
}

/// One task over all its attempts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskResult {
    pub instance_id: String,
    /// Episodes of this task (after superseded records are dropped).
    pub attempts: usize,
    /// Episodes with a reward.
    pub scored: usize,
    pub solved: usize,
    /// Episodes with no reward (environment or policy errors).
    pub errors: usize,
    /// solved / scored; `None` when no episode was scored.
    pub pass_rate: Option<f64>,
    /// The unbiased Pass@k estimate; `None` when scored < k.
    pub pass_at_k: Option<f64>,
    /// Mean turns per scored episode.
    pub mean_steps: Option<f64>,
    /// Fraction of scored episodes that ended with `submit`.
    pub submit_rate: Option<f64>,
    /// Scored episodes cut by the turn or context limit.
    pub truncated: usize,
    /// Turns with a format error, over the scored episodes.
    pub format_error_turns: usize,
}

/// Everything an evaluation reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// The k of Pass@k.
    pub k: usize,
    /// Runs with a pass rate (the ones Pass@1 averages).
    pub runs: usize,
    /// Mean of the runs' pass rates; `None` when no run has one.
    pub pass_at_1: Option<f64>,
    /// Standard error of that mean; `None` with fewer than two runs.
    pub pass_at_1_sem: Option<f64>,
    /// Mean of the tasks' Pass@k estimates; `None` when no task has k
    /// scored attempts.
    pub pass_at_k: Option<f64>,
    /// Tasks with at least k scored attempts (the ones Pass@k averages).
    pub pass_at_k_tasks: usize,
    pub tasks: usize,
    /// Tasks with no scored episode at all.
    pub tasks_unscored: usize,
    /// Episodes counted (after superseded records are dropped).
    pub episodes: usize,
    pub scored: usize,
    pub solved: usize,
    /// Episodes with no reward: `environment_errors + policy_errors`.
    pub errors: usize,
    pub environment_errors: usize,
    pub policy_errors: usize,
    /// Earlier records of a repeated (instance_id, sample), ignored.
    pub superseded: usize,
    /// By sample index, ascending.
    pub per_run: Vec<RunResult>,
    /// By instance id, ascending.
    pub per_task: Vec<TaskResult>,
}

fn ratio(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Summarize trajectories: Pass@1 over runs, Pass@k over tasks, and the
/// per-run and per-task rows (see the module documentation for the exact
/// definitions). Empty input gives a summary with zero counts and no rates.
/// `k = 0` gives no Pass@k.
pub fn summarize(trajs: &[Trajectory], k: usize) -> Summary {
    // last record per (instance_id, sample) wins
    let mut latest: HashMap<(&str, u32), usize> = HashMap::new();
    for (i, t) in trajs.iter().enumerate() {
        latest.insert((t.instance_id.as_str(), t.sample), i);
    }
    let superseded = trajs.len() - latest.len();
    let mut kept: Vec<&Trajectory> = latest.into_values().map(|i| &trajs[i]).collect();
    kept.sort_by(|a, b| (a.instance_id.as_str(), a.sample).cmp(&(b.instance_id.as_str(), b.sample)));

    let mut environment_errors = 0;
    let mut policy_errors = 0;
    let mut runs: BTreeMap<u32, RunResult> = BTreeMap::new();
    let mut tasks: BTreeMap<&str, Vec<&Trajectory>> = BTreeMap::new();
    for t in &kept {
        let run = runs.entry(t.sample).or_insert(RunResult { sample: t.sample, tasks: 0, scored: 0, solved: 0, errors: 0, pass_rate: None });
        run.tasks += 1;
        match t.reward {
            Some(_) => {
                run.scored += 1;
                run.solved += usize::from(t.solved());
            }
            None => {
                run.errors += 1;
                if t.exit == Exit::PolicyError {
                    policy_errors += 1;
                } else {
                    environment_errors += 1;
                }
            }
        }
        tasks.entry(t.instance_id.as_str()).or_default().push(t);
    }
    let per_run: Vec<RunResult> = runs
        .into_values()
        .map(|mut r| {
            r.pass_rate = ratio(r.solved, r.scored);
            r
        })
        .collect();

    let per_task: Vec<TaskResult> = tasks
        .into_iter()
        .map(|(id, eps)| {
            let scored: Vec<&&Trajectory> = eps.iter().filter(|t| t.reward.is_some()).collect();
            let solved = scored.iter().filter(|t| t.solved()).count();
            let steps: u64 = scored.iter().map(|t| t.steps() as u64).sum();
            let submitted = scored.iter().filter(|t| t.exit == Exit::Submitted).count();
            TaskResult {
                instance_id: id.to_string(),
                attempts: eps.len(),
                scored: scored.len(),
                solved,
                errors: eps.len() - scored.len(),
                pass_rate: ratio(solved, scored.len()),
                pass_at_k: pass_at_k(scored.len(), solved, k),
                mean_steps: (!scored.is_empty()).then(|| steps as f64 / scored.len() as f64),
                submit_rate: ratio(submitted, scored.len()),
                truncated: scored.iter().filter(|t| t.exit.truncated()).count(),
                format_error_turns: scored.iter().map(|t| t.turns.iter().filter(|u| u.format_error.is_some()).count()).sum(),
            }
        })
        .collect();

    let rates: Vec<f64> = per_run.iter().filter_map(|r| r.pass_rate).collect();
    let (p1, sem) = mean_sem(&rates);
    let at_k: Vec<f64> = per_task.iter().filter_map(|t| t.pass_at_k).collect();
    let scored: usize = per_task.iter().map(|t| t.scored).sum();
    Summary {
        k,
        runs: rates.len(),
        pass_at_1: (!rates.is_empty()).then_some(p1),
        pass_at_1_sem: (rates.len() >= 2).then_some(sem),
        pass_at_k: (!at_k.is_empty()).then(|| at_k.iter().sum::<f64>() / at_k.len() as f64),
        pass_at_k_tasks: at_k.len(),
        tasks: per_task.len(),
        tasks_unscored: per_task.iter().filter(|t| t.scored == 0).count(),
        episodes: kept.len(),
        scored,
        solved: per_task.iter().map(|t| t.solved).sum(),
        errors: environment_errors + policy_errors,
        environment_errors,
        policy_errors,
        superseded,
        per_run,
        per_task,
    }
}

fn pct(x: Option<f64>) -> String {
    x.map(|v| format!("{:.1}%", 100.0 * v)).unwrap_or_else(|| "-".into())
}

/// Fixed-width columns: the first left-aligned, the rest right-aligned,
/// every column as wide as its widest cell, two spaces between columns.
fn columns(rows: &[Vec<String>]) -> String {
    let ncol = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let width: Vec<usize> = (0..ncol).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = (0..ncol)
            .map(|c| {
                let s = r.get(c).map(String::as_str).unwrap_or("");
                if c == 0 {
                    format!("{s:<w$}", w = width[c])
                } else {
                    format!("{s:>w$}", w = width[c])
                }
            })
            .collect();
        out.push_str(&cells.join("  "));
        out.push('\n');
    }
    out
}

/// The summary as plain text for a terminal: the headline rates, the
/// counts, then a per-run and a per-task table with fixed-width columns.
/// A dash stands for a rate that is undefined.
pub fn render_table(s: &Summary) -> String {
    if s.episodes == 0 {
        return "no trajectories to summarize\n".into();
    }
    let mut out = String::new();
    let sem = s.pass_at_1_sem.map(|e| format!(" ± {:.1}%", 100.0 * e)).unwrap_or_default();
    let runs = if s.runs == 1 { "1 run".to_string() } else { format!("{} runs", s.runs) };
    out.push_str(&format!("Pass@1   {}{sem}  (mean over {runs}; ± is the standard error)\n", pct(s.pass_at_1)));
    let label = format!("Pass@{}", s.k);
    out.push_str(&format!("{label:<8} {}  (over {} of {} tasks with at least {} scored attempts)\n", pct(s.pass_at_k), s.pass_at_k_tasks, s.tasks, s.k));
    out.push_str(&format!(
        "episodes {}: {} scored, {} solved, {} without reward ({} environment, {} policy errors); {} tasks, {} with no scored episode\n",
        s.episodes, s.scored, s.solved, s.errors, s.environment_errors, s.policy_errors, s.tasks, s.tasks_unscored
    ));
    if s.superseded > 0 {
        out.push_str(&format!("{} earlier records of a repeated (instance, sample) were ignored\n", s.superseded));
    }
    out.push('\n');
    let mut rows = vec![["run", "tasks", "scored", "solved", "errors", "pass"].map(String::from).to_vec()];
    for r in &s.per_run {
        rows.push(vec![r.sample.to_string(), r.tasks.to_string(), r.scored.to_string(), r.solved.to_string(), r.errors.to_string(), pct(r.pass_rate)]);
    }
    out.push_str(&columns(&rows));
    out.push('\n');
    let at_k = format!("pass@{}", s.k);
    let mut rows = vec![vec![
        "instance_id".to_string(),
        "attempts".into(),
        "scored".into(),
        "solved".into(),
        "errors".into(),
        "pass".into(),
        at_k,
        "steps".into(),
        "submit".into(),
        "truncated".into(),
        "format_err".into(),
    ]];
    for t in &s.per_task {
        rows.push(vec![
            t.instance_id.clone(),
            t.attempts.to_string(),
            t.scored.to_string(),
            t.solved.to_string(),
            t.errors.to_string(),
            pct(t.pass_rate),
            pct(t.pass_at_k),
            t.mean_steps.map(|m| format!("{m:.1}")).unwrap_or_else(|| "-".into()),
            pct(t.submit_rate),
            t.truncated.to_string(),
            t.format_error_turns.to_string(),
        ]);
    }
    out.push_str(&columns(&rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::command::FormatError;
    use crate::agent::trajectory::{Ledger, ReplyEnd, Span, Timing, Turn, FORMAT_VERSION};

    fn turn(format_error: bool) -> Turn {
        Turn { format_error: format_error.then_some(FormatError::NotExtractable), ..Turn::new(Span { start: 0, end: 0 }, ReplyEnd::Stop) }
    }

    /// An episode of `steps` turns, the first `format_errors` of them format errors.
    fn ep(id: &str, sample: u32, reward: Option<f64>, exit: Exit, steps: usize, format_errors: usize) -> Trajectory {
        Trajectory {
            format_version: FORMAT_VERSION,
            instance_id: id.into(),
            sample,
            seed: 0,
            policy: "test".into(),
            messages: vec![],
            ledger: Ledger::default(),
            turns: (0..steps).map(|i| turn(i < format_errors)).collect(),
            exit,
            exit_detail: String::new(),
            patch: None,
            grade: None,
            reward,
            final_reward: reward,
            attempts: 1,
            timing: Timing::default(),
        }
    }

    fn win(id: &str, sample: u32) -> Trajectory {
        ep(id, sample, Some(1.0), Exit::Submitted, 3, 0)
    }

    fn loss(id: &str, sample: u32) -> Trajectory {
        ep(id, sample, Some(0.0), Exit::Submitted, 3, 0)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn mean_sem_by_hand_with_ddof_1() {
        // mean 0.4; deviations −0.2, 0, 0.2; var = 0.08 / 2 = 0.04; sd 0.2; sem 0.2/√3
        let (m, e) = mean_sem(&[0.2, 0.4, 0.6]);
        assert!(close(m, 0.4), "{m}");
        assert!(close(e, 0.2 / 3f64.sqrt()), "{e}");
        // [1, 0]: mean 0.5, var = 0.5, sd √0.5, sem √0.5/√2 = 0.5
        let (m, e) = mean_sem(&[1.0, 0.0]);
        assert!(close(m, 0.5) && close(e, 0.5), "{m} {e}");
        let (m, e) = mean_sem(&[0.3, 0.3, 0.3, 0.3]);
        assert!(close(m, 0.3) && close(e, 0.0), "{m} {e}");
    }

    #[test]
    fn mean_sem_of_nothing_and_of_one_value() {
        let (m, e) = mean_sem(&[]);
        assert!(m.is_nan() && e.is_nan());
        let (m, e) = mean_sem(&[0.25]);
        assert_eq!(m, 0.25);
        assert!(e.is_nan());
    }

    /// Pass@k by enumerating every k-subset of n attempts (the first c of
    /// them successes) and counting those with at least one success.
    fn brute_force(n: usize, c: usize, k: usize) -> f64 {
        let (mut hit, mut all) = (0u64, 0u64);
        for mask in 0u32..(1 << n) {
            if mask.count_ones() as usize != k {
                continue;
            }
            all += 1;
            if (0..c).any(|i| mask & (1 << i) != 0) {
                hit += 1;
            }
        }
        hit as f64 / all as f64
    }

    #[test]
    fn pass_at_k_matches_brute_force_enumeration() {
        for n in 1..=10 {
            for c in 0..=n {
                for k in 1..=n {
                    let est = pass_at_k(n, c, k).unwrap();
                    let bf = brute_force(n, c, k);
                    assert!((est - bf).abs() < 1e-12, "n={n} c={c} k={k}: {est} vs {bf}");
                }
            }
        }
    }

    #[test]
    fn pass_at_k_for_n_equal_k_is_any_success_and_k_1_is_the_rate() {
        for n in 1..=12 {
            assert_eq!(pass_at_k(n, 0, n), Some(0.0));
            for c in 1..=n {
                assert_eq!(pass_at_k(n, c, n), Some(1.0));
                assert!(close(pass_at_k(n, c, 1).unwrap(), c as f64 / n as f64));
            }
        }
        // by hand: n 4, c 1, k 2: 1 − C(3,2)/C(4,2) = 1 − 3/6
        assert!(close(pass_at_k(4, 1, 2).unwrap(), 0.5));
        // large n stays finite and in range
        let v = pass_at_k(1000, 3, 500).unwrap();
        assert!(v > 0.87 && v < 0.88, "{v}");
    }

    #[test]
    fn pass_at_k_is_undefined_outside_its_domain() {
        assert_eq!(pass_at_k(5, 1, 0), None);
        assert_eq!(pass_at_k(3, 1, 4), None);
        assert_eq!(pass_at_k(3, 4, 2), None);
        assert_eq!(pass_at_k(0, 0, 1), None);
    }

    #[test]
    fn pass_at_1_is_the_mean_of_run_pass_rates_with_its_standard_error() {
        // Tasks a, b, c; three runs.
        // run 0: a ✓ b ✗ c ✓ → 2/3
        // run 1: a ✓ b ✗ c ✗ → 1/3
        // run 2: a ✓ b ✓ c ✗ → 2/3
        let trajs = vec![
            win("a", 0), loss("b", 0), win("c", 0),
            win("a", 1), loss("b", 1), loss("c", 1),
            win("a", 2), win("b", 2), loss("c", 2),
        ];
        let s = summarize(&trajs, 3);
        assert_eq!(s.runs, 3);
        let rates: Vec<f64> = s.per_run.iter().map(|r| r.pass_rate.unwrap()).collect();
        assert!(close(rates[0], 2.0 / 3.0) && close(rates[1], 1.0 / 3.0) && close(rates[2], 2.0 / 3.0));
        assert!(close(s.pass_at_1.unwrap(), 5.0 / 9.0));
        // deviations 1/9, −2/9, 1/9: var = (1 + 4 + 1)/81 / 2 = 1/27; sem = √(1/27)/√3 = 1/9
        assert!(close(s.pass_at_1_sem.unwrap(), 1.0 / 9.0), "{:?}", s.pass_at_1_sem);
        // pass@3 with n = 3 = k: any success → a 1, b 1, c 1
        assert_eq!(s.pass_at_k, Some(1.0));
        assert_eq!(s.pass_at_k_tasks, 3);
        let a = &s.per_task[0];
        assert_eq!((a.instance_id.as_str(), a.attempts, a.scored, a.solved, a.errors), ("a", 3, 3, 3, 0));
        assert_eq!(a.pass_rate, Some(1.0));
        // pass@1 per task is c/n
        let s1 = summarize(&trajs, 1);
        assert!(close(s1.pass_at_k.unwrap(), (1.0 + 1.0 / 3.0 + 1.0 / 3.0) / 3.0));
        assert_eq!((s.episodes, s.scored, s.solved, s.errors, s.tasks, s.tasks_unscored), (9, 9, 5, 0, 3, 0));
    }

    #[test]
    fn errors_are_excluded_from_rates_and_counted_apart() {
        let trajs = vec![
            win("a", 0),
            ep("b", 0, None, Exit::EnvironmentError, 2, 0),
            loss("a", 1),
            // graded as an environment error after a clean submit
            ep("b", 1, None, Exit::Submitted, 4, 0),
            ep("c", 0, None, Exit::PolicyError, 1, 0),
            ep("c", 1, Some(1.0), Exit::TurnLimit, 40, 2),
        ];
        let s = summarize(&trajs, 2);
        // run 0: a ✓, b error, c error → 1/1; run 1: a ✗, b error, c ✓ → 1/2
        assert_eq!(s.per_run[0].pass_rate, Some(1.0));
        assert_eq!((s.per_run[0].scored, s.per_run[0].errors, s.per_run[0].tasks), (1, 2, 3));
        assert_eq!(s.per_run[1].pass_rate, Some(0.5));
        assert!(close(s.pass_at_1.unwrap(), 0.75));
        assert_eq!((s.errors, s.environment_errors, s.policy_errors), (3, 2, 1));
        let b = &s.per_task[1];
        assert_eq!(b.instance_id, "b");
        assert_eq!((b.attempts, b.scored, b.errors), (2, 0, 2));
        assert_eq!(b.pass_rate, None, "a task with no scored episode has no rate, not 0");
        assert_eq!((b.mean_steps, b.submit_rate, b.pass_at_k), (None, None, None));
        assert_eq!(s.tasks_unscored, 1);
        // pass@2 needs 2 scored attempts: only a (1 of 2 → 1.0)
        assert_eq!(s.pass_at_k_tasks, 1);
        assert_eq!(s.pass_at_k, Some(1.0));
        let c = &s.per_task[2];
        assert_eq!((c.scored, c.solved, c.errors, c.truncated, c.format_error_turns), (1, 1, 1, 1, 2));
        assert_eq!(c.mean_steps, Some(40.0));
        assert_eq!(c.submit_rate, Some(0.0));
    }

    #[test]
    fn behaviour_columns_by_hand() {
        let trajs = vec![
            ep("t", 0, Some(1.0), Exit::Submitted, 4, 1),
            ep("t", 1, Some(0.0), Exit::ContextLimit, 10, 0),
            ep("t", 2, Some(0.0), Exit::Submitted, 7, 3),
            ep("t", 3, None, Exit::EnvironmentError, 100, 50),
        ];
        let s = summarize(&trajs, 2);
        let t = &s.per_task[0];
        assert_eq!(t.mean_steps, Some(7.0));
        assert!(close(t.submit_rate.unwrap(), 2.0 / 3.0));
        assert_eq!((t.truncated, t.format_error_turns), (1, 4));
        // n 3, c 1, k 2: 1 − C(2,2)/C(3,2) = 2/3
        assert!(close(t.pass_at_k.unwrap(), 2.0 / 3.0));
    }

    #[test]
    fn one_run_has_no_standard_error() {
        let s = summarize(&[win("a", 0), loss("b", 0)], 1);
        assert_eq!(s.runs, 1);
        assert_eq!(s.pass_at_1, Some(0.5));
        assert_eq!(s.pass_at_1_sem, None);
        assert!(render_table(&s).contains("Pass@1   50.0%  (mean over 1 run;"), "{}", render_table(&s));
    }

    #[test]
    fn empty_input_has_counts_of_zero_and_no_rates() {
        let s = summarize(&[], 10);
        assert_eq!((s.episodes, s.tasks, s.runs, s.errors, s.pass_at_k_tasks), (0, 0, 0, 0, 0));
        assert_eq!((s.pass_at_1, s.pass_at_1_sem, s.pass_at_k), (None, None, None));
        assert!(s.per_run.is_empty() && s.per_task.is_empty());
        assert_eq!(render_table(&s), "no trajectories to summarize\n");
        // only errors: episodes but no rate anywhere
        let s = summarize(&[ep("a", 0, None, Exit::EnvironmentError, 0, 0)], 1);
        assert_eq!((s.episodes, s.runs, s.tasks_unscored), (1, 0, 1));
        assert_eq!((s.pass_at_1, s.pass_at_k), (None, None));
        assert_eq!(s.per_run[0].pass_rate, None);
        // k = 0: no pass@k, the rest intact
        let s = summarize(&[win("a", 0)], 0);
        assert_eq!((s.pass_at_k, s.pass_at_k_tasks, s.pass_at_1), (None, 0, Some(1.0)));
    }

    #[test]
    fn a_repeated_record_is_superseded_by_the_last() {
        let trajs = vec![ep("a", 0, None, Exit::EnvironmentError, 1, 0), win("b", 0), win("a", 0)];
        let s = summarize(&trajs, 1);
        assert_eq!((s.superseded, s.episodes, s.errors), (1, 2, 0));
        assert_eq!(s.pass_at_1, Some(1.0));
        assert!(render_table(&s).contains("1 earlier records"));
    }

    #[test]
    fn the_table_has_fixed_width_columns_and_the_summary_serializes() {
        let trajs = vec![win("astropy__astropy-12907", 0), loss("a", 0), ep("django__django-1", 0, None, Exit::PolicyError, 0, 0), loss("astropy__astropy-12907", 1)];
        let s = summarize(&trajs, 2);
        let text = render_table(&s);
        let blocks: Vec<&str> = text.split("\n\n").collect();
        assert_eq!(blocks.len(), 3, "{text}");
        for block in &blocks[1..] {
            let widths: Vec<usize> = block.lines().map(|l| l.chars().count()).collect();
            assert!(widths.windows(2).all(|w| w[0] == w[1]), "ragged table:\n{block}");
        }
        let tasks = blocks[2];
        assert!(tasks.lines().next().unwrap().starts_with("instance_id             attempts"), "{tasks}");
        assert!(tasks.contains("django__django-1"));
        assert!(text.contains("Pass@1   25.0% ± 25.0%"), "{text}");
        let j = serde_json::to_value(&s).unwrap();
        for key in ["pass_at_1", "pass_at_1_sem", "pass_at_k", "k", "runs", "per_task", "per_run", "errors", "environment_errors", "policy_errors"] {
            assert!(j.get(key).is_some(), "no {key} in {j}");
        }
        assert_eq!(j["per_task"][2]["pass_rate"], serde_json::Value::Null);
    }
}
