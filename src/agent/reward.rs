//! The episode reward: R_final = R + R_length, with the method's length
//! penalty R_length = 0 if steps < L_thr, else (L_thr − steps) / (T_max −
//! L_thr). An environment error has no reward at all (`None`): it is retried
//! or excluded, never scored 0.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LengthPenalty {
    /// L_thr: steps before the penalty starts.
    pub threshold: u32,
    /// T_max: the turn limit, where the penalty reaches −1.
    pub max_turns: u32,
}

impl Default for LengthPenalty {
    /// Stage 1 of the method: L_thr 10, T_max 40.
    fn default() -> Self {
        LengthPenalty { threshold: 10, max_turns: 40 }
    }
}

impl LengthPenalty {
    pub fn penalty(&self, steps: u32) -> f64 {
        if steps < self.threshold || self.max_turns <= self.threshold {
            return 0.0;
        }
        (self.threshold as f64 - steps as f64) / (self.max_turns - self.threshold) as f64
    }
}

/// R + R_length for a graded episode; `None` (no reward) when grading hit
/// an environment error.
pub fn final_reward(grade: Option<f64>, steps: u32, lp: &LengthPenalty) -> Option<f64> {
    grade.map(|r| r + lp.penalty(steps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalty_by_hand() {
        let lp = LengthPenalty::default();
        assert_eq!(lp.penalty(0), 0.0);
        assert_eq!(lp.penalty(9), 0.0);
        assert_eq!(lp.penalty(10), 0.0);
        assert_eq!(lp.penalty(25), -0.5);
        assert_eq!(lp.penalty(40), -1.0);
        let stage2 = LengthPenalty { threshold: 10, max_turns: 80 };
        assert!((stage2.penalty(45) - (-0.5)).abs() < 1e-12);
    }

    #[test]
    fn environment_errors_have_no_reward() {
        let lp = LengthPenalty::default();
        assert_eq!(final_reward(Some(1.0), 25, &lp), Some(0.5));
        assert_eq!(final_reward(Some(0.0), 5, &lp), Some(0.0));
        assert_eq!(final_reward(None, 25, &lp), None);
    }
}
