//! Task validation: for every task, the empty patch must fail and the gold
//! patch must pass, N times each (flaky tests are caught this way).
//!
//! Owns: the validation plan, its table, and the clean task list. Does not
//! own: grading itself (`grade`) or building images (`image`).

use super::grade::{GradeOptions, Outcome, Report};
use super::image;
use super::pool::Pool;
use super::task::Task;
use anyhow::Result;
use std::time::Duration;

/// One task's validation.
#[derive(Debug, Clone)]
pub struct Row {
    pub instance_id: String,
    pub image: Option<String>,
    pub empty: Vec<Report>,
    pub gold: Vec<Report>,
    /// Why the task is not valid (None when it is).
    pub problem: Option<String>,
}

impl Row {
    pub fn valid(&self) -> bool {
        self.problem.is_none()
    }
}

fn judge(empty: &[Report], gold: &[Report]) -> Option<String> {
    for r in empty.iter().chain(gold) {
        if r.outcome == Outcome::EnvironmentError {
            return Some(format!("environment error: {}", r.detail.lines().last().unwrap_or("")));
        }
    }
    if let Some(r) = empty.iter().find(|r| r.reward != Some(0.0)) {
        return Some(format!("the empty patch passed ({})", r.outcome.as_str()));
    }
    if let Some(r) = gold.iter().find(|r| r.reward != Some(1.0)) {
        let failing: Vec<&String> = r.tests.iter().filter(|(_, s)| !s.is_pass()).map(|(t, _)| t).take(3).collect();
        return Some(format!("the gold patch did not pass ({}; failing: {failing:?})", r.outcome.as_str()));
    }
    None
}

/// Validate tasks with `runs` repetitions, up to the pool's concurrency.
pub async fn validate(pool: &Pool, tasks: &[Task], runs: usize, template: Option<&str>, run_id: &str, test_timeout: Duration) -> Result<Vec<Row>> {
    let opts = GradeOptions { run_id: run_id.to_string(), test_timeout };
    // images first, a few at a time (builds are heavy for the daemon)
    let mut images = Vec::new();
    for t in tasks {
        images.push(image::ensure_task_image(&pool.docker, t, template).await.map_err(|e| format!("{e:#}")));
    }
    let mut handles = Vec::new();
    for (t, img) in tasks.iter().zip(images) {
        let pool = pool.clone();
        let t = t.clone();
        let opts = opts.clone();
        handles.push(tokio::spawn(async move {
            let img = match img {
                Ok(i) => i,
                Err(e) => return Row { instance_id: t.instance_id.clone(), image: None, empty: vec![], gold: vec![], problem: Some(format!("no image: {e}")) },
            };
            let mut empty = Vec::new();
            let mut gold = Vec::new();
            for _ in 0..runs.max(1) {
                let (e, g) = tokio::join!(pool.grade(&t, &img, "", &opts), pool.grade(&t, &img, &t.patch, &opts));
                empty.push(e);
                gold.push(g);
            }
            let problem = if t.patch.trim().is_empty() { Some("the task has no gold patch".to_string()) } else { judge(&empty, &gold) };
            Row { instance_id: t.instance_id.clone(), image: Some(img), empty, gold, problem }
        }));
    }
    let mut rows = Vec::new();
    for h in handles {
        rows.push(h.await?);
    }
    Ok(rows)
}

/// The table printed by `appliance env validate`.
pub fn table(rows: &[Row]) -> String {
    let w = rows.iter().map(|r| r.instance_id.len()).max().unwrap_or(8).max(8);
    let mut s = format!("{:<w$}  {:<22}  {:<22}  {}\n", "task", "empty patch", "gold patch", "valid");
    for r in rows {
        let sum = |v: &[Report]| {
            if v.is_empty() {
                return "-".to_string();
            }
            let first = v[0].outcome.as_str();
            let same = v.iter().all(|x| x.outcome == v[0].outcome);
            if same {
                format!("{first} ×{}", v.len())
            } else {
                "mixed".to_string()
            }
        };
        s.push_str(&format!("{:<w$}  {:<22}  {:<22}  {}\n", r.instance_id, sum(&r.empty), sum(&r.gold), match &r.problem {
            None => "yes".to_string(),
            Some(p) => format!("NO: {p}"),
        }));
    }
    let ok = rows.iter().filter(|r| r.valid()).count();
    s.push_str(&format!("{ok}/{} tasks valid\n", rows.len()));
    s
}
