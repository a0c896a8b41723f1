//! The curriculum filter between stages (METHOD.md): drop the tasks solved
//! in at least 2/3 of their attempts so far (too easy: their groups mostly
//! have identical rewards) and the tasks never solved (no signal yet).
//!
//! Owns: the per-task attempt counts and the rule. Does not own where the
//! attempts come from (the pipeline records every scored trajectory) or
//! sampling problems from what is kept.

use crate::agent::trajectory::Trajectory;
use crate::env::task::Task;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Scored attempts of one task so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStats {
    pub attempts: u32,
    pub solved: u32,
}

impl TaskStats {
    /// Kept by the filter: solved at least once, and in less than 2/3 of
    /// the attempts. A task with no attempts yet is kept (nothing is known).
    pub fn kept(&self) -> bool {
        self.attempts == 0 || (self.solved > 0 && 3 * self.solved < 2 * self.attempts)
    }
}

/// Attempts per instance id (ordered, so the record serializes stably).
pub type Stats = BTreeMap<String, TaskStats>;

/// Count the scored trajectories (environment and policy errors are not
/// attempts of the task).
pub fn record(stats: &mut Stats, trajs: &[Trajectory]) {
    for t in trajs.iter().filter(|t| t.reward.is_some()) {
        let s = stats.entry(t.instance_id.clone()).or_default();
        s.attempts += 1;
        s.solved += t.solved() as u32;
    }
}

/// What the filter did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Filtered {
    pub kept: usize,
    pub dropped_easy: usize,
    pub dropped_never_solved: usize,
}

/// The tasks the filter keeps, in their order.
pub fn filter(tasks: &[Task], stats: &Stats) -> (Vec<Task>, Filtered) {
    let mut f = Filtered::default();
    let mut out = vec![];
    for t in tasks {
        let s = stats.get(&t.instance_id).copied().unwrap_or_default();
        if s.kept() {
            f.kept += 1;
            out.push(t.clone());
        } else if s.solved == 0 {
            f.dropped_never_solved += 1;
        } else {
            f.dropped_easy += 1;
        }
    }
    (out, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_thirds_boundary_and_the_never_solved() {
        let k = |attempts, solved| TaskStats { attempts, solved }.kept();
        assert!(k(0, 0), "no attempts: kept");
        assert!(!k(10, 0), "never solved: dropped");
        assert!(k(10, 1) && k(10, 6));
        assert!(!k(10, 7), "7/10 >= 2/3: dropped");
        assert!(!k(3, 2), "exactly 2/3: dropped");
        assert!(k(3, 1));
        assert!(!k(1, 1));
    }

    #[test]
    fn filter_counts_by_reason_and_keeps_order() {
        let task = |id: &str| Task { instance_id: id.into(), ..Default::default() };
        let tasks: Vec<Task> = ["a", "b", "c", "d"].iter().map(|i| task(i)).collect();
        let mut st = Stats::new();
        st.insert("a".into(), TaskStats { attempts: 4, solved: 4 });
        st.insert("b".into(), TaskStats { attempts: 4, solved: 1 });
        st.insert("c".into(), TaskStats { attempts: 4, solved: 0 });
        let (kept, f) = filter(&tasks, &st);
        let ids: Vec<&str> = kept.iter().map(|t| t.instance_id.as_str()).collect();
        assert_eq!(ids, ["b", "d"]);
        assert_eq!(f, Filtered { kept: 2, dropped_easy: 1, dropped_never_solved: 1 });
    }
}
