//! What a run directory holds, read leniently: the rows of metrics.jsonl,
//! summary.json's per-phase results, and the series the plots draw.
//!
//! Owns: the reading side of the contract with `train` (kinds and field
//! names), forward compatibility (unknown kinds and fields are ignored; a
//! missing or null number drops only that point), and series extraction.
//! Does not own drawing or HTML (plot.rs, mod.rs), nor writing these files.

use crate::agent::trajectory::read_jsonl;
use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The phases in the order a run goes through them.
pub const PHASE_ORDER: [&str; 4] = ["initial", "warm_start", "rft", "dapo"];

/// One line of metrics.jsonl: its kind, and every other field as JSON.
#[derive(Debug, Clone, Deserialize)]
pub struct Row {
    pub kind: String,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl Row {
    /// A finite number in `field`; `None` when it is missing, null, not a
    /// number, or not finite.
    pub fn num(&self, field: &str) -> Option<f64> {
        self.fields.get(field).and_then(Value::as_f64).filter(|v| v.is_finite())
    }

    /// A string in `field`.
    pub fn text(&self, field: &str) -> Option<&str> {
        self.fields.get(field).and_then(Value::as_str)
    }
}

/// The rows of a metrics file, and the line number of a torn last line that
/// was skipped.
#[derive(Debug, Default)]
pub struct Metrics {
    pub rows: Vec<Row>,
    pub torn_line: Option<usize>,
}

/// Read metrics.jsonl. A torn last line (no newline, not JSON: the run was
/// killed mid-write) is skipped and reported; any other bad line is an error
/// naming the file and the line.
pub fn read_metrics(path: &Path) -> Result<Metrics> {
    let r = read_jsonl::<Row>(path)?;
    Ok(Metrics { rows: r.items, torn_line: r.torn_line })
}

/// Held-out results of one phase.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseResult {
    pub phase: String,
    pub pass_rate: f64,
    pub sem: Option<f64>,
    pub episodes: Option<f64>,
    pub solved: Option<f64>,
}

/// The parts of summary.json the report reads; other fields are kept as
/// JSON to be shown as they are.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub phases: Vec<PhaseResult>,
    pub order: Vec<String>,
    pub raw: Value,
}

#[derive(Deserialize)]
struct SummaryFile {
    #[serde(default)]
    phases: BTreeMap<String, PhaseEntry>,
    #[serde(default)]
    order: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct PhaseEntry {
    pass_rate: Option<f64>,
    sem: Option<f64>,
    episodes: Option<f64>,
    solved: Option<f64>,
}

/// Parse summary.json's text (`path` names it in errors).
pub fn parse_summary(path: &Path, text: &str) -> Result<Summary> {
    let raw: Value = serde_json::from_str(text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    let f: SummaryFile = serde_path_to_error::deserialize(&raw).map_err(|e| anyhow::anyhow!("{}: field `{}`: {}", path.display(), e.path(), e.inner()))?;
    let phases = f
        .phases
        .into_iter()
        .filter_map(|(phase, e)| {
            let pass_rate = e.pass_rate.filter(|v| v.is_finite())?;
            Some(PhaseResult { phase, pass_rate, sem: e.sem.filter(|v| v.is_finite()), episodes: e.episodes, solved: e.solved })
        })
        .collect();
    Ok(Summary { phases, order: f.order.unwrap_or_default(), raw })
}

/// Held-out results per phase from the `eval` rows; a later row for the
/// same phase replaces an earlier one (a resumed run).
pub fn phases_from_rows(rows: &[Row]) -> Vec<PhaseResult> {
    let mut out: Vec<PhaseResult> = vec![];
    for r in rows.iter().filter(|r| r.kind == "eval") {
        let (Some(phase), Some(pass_rate)) = (r.text("phase"), r.num("pass_rate")) else { continue };
        let p = PhaseResult { phase: phase.to_string(), pass_rate, sem: r.num("sem"), episodes: r.num("episodes"), solved: r.num("solved") };
        match out.iter_mut().find(|q| q.phase == p.phase) {
            Some(q) => *q = p,
            None => out.push(p),
        }
    }
    out
}

/// The phases to show: summary.json's where it has them, the eval rows'
/// for the others; ordered by summary.json's `order`, then the run's usual
/// order, then as first seen.
pub fn merge_phases(summary: Option<&Summary>, from_rows: Vec<PhaseResult>) -> Vec<PhaseResult> {
    let mut all: Vec<PhaseResult> = summary.map(|s| s.phases.clone()).unwrap_or_default();
    for p in from_rows {
        if !all.iter().any(|q| q.phase == p.phase) {
            all.push(p);
        }
    }
    let mut order: Vec<&str> = summary.map(|s| s.order.iter().map(String::as_str).collect()).unwrap_or_default();
    order.extend(PHASE_ORDER);
    let rank = |name: &str| order.iter().position(|o| *o == name).unwrap_or(usize::MAX);
    // a stable sort keeps unknown phases in the order they were seen
    all.sort_by_key(|p| rank(&p.phase));
    all
}

/// A named line of (x, y) points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// The points (`x`, `y`) of the rows of `kind` that have both as finite
/// numbers, sorted by x; a later row with the same x replaces an earlier one
/// (an iteration logged again after a resume).
pub fn series(rows: &[Row], kind: &str, x: &str, y: &str, label: &str) -> Series {
    let mut points: Vec<(f64, f64)> = rows.iter().filter(|r| r.kind == kind).filter_map(|r| Some((r.num(x)?, r.num(y)?))).collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0)); // stable: equal x stay in file order
    let mut dedup: Vec<(f64, f64)> = Vec::with_capacity(points.len());
    for p in points {
        match dedup.last_mut() {
            Some(last) if last.0 == p.0 => *last = p,
            _ => dedup.push(p),
        }
    }
    Series { label: label.to_string(), points: dedup }
}

/// The last `t_s` in the rows: how long the run has gone, as far as it logged.
pub fn last_time(rows: &[Row]) -> Option<f64> {
    rows.iter().filter_map(|r| r.num("t_s")).reduce(f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> Vec<Row> {
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn rows_keep_unknown_kinds_and_fields_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        std::fs::write(&p, "{\"kind\":\"dapo_iteration\",\"t_s\":1.5,\"iteration\":1,\"future\":[1,2]}\n{\"kind\":\"something_new\",\"x\":{}}\n{\"kind\":\"dapo_it").unwrap();
        let m = read_metrics(&p).unwrap();
        assert_eq!(m.rows.len(), 2);
        assert_eq!(m.torn_line, Some(3));
        assert_eq!(m.rows[0].num("iteration"), Some(1.0));
        assert_eq!(m.rows[1].kind, "something_new");
    }

    #[test]
    fn a_bad_middle_line_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        std::fs::write(&p, "{\"kind\":\"eval\"}\n{oops\n{\"kind\":\"eval\"}\n").unwrap();
        let e = format!("{:#}", read_metrics(&p).unwrap_err());
        assert!(e.contains("metrics.jsonl: line 2"), "{e}");
        std::fs::write(&p, "{\"kind\":\"eval\"}\n{\"no_kind\":1}\n").unwrap();
        let e = format!("{:#}", read_metrics(&p).unwrap_err());
        assert!(e.contains("line 2") && e.contains("kind"), "{e}");
    }

    #[test]
    fn series_skip_missing_null_and_non_numeric_points_and_sort_by_x() {
        let r = rows(concat!(
            "{\"kind\":\"dapo_iteration\",\"iteration\":3,\"entropy\":0.3}\n",
            "{\"kind\":\"dapo_iteration\",\"iteration\":1,\"entropy\":0.1}\n",
            "{\"kind\":\"dapo_iteration\",\"iteration\":2,\"entropy\":null}\n",
            "{\"kind\":\"dapo_iteration\",\"iteration\":4}\n",
            "{\"kind\":\"dapo_iteration\",\"iteration\":5,\"entropy\":\"high\"}\n",
            "{\"kind\":\"dapo_step\",\"iteration\":6,\"entropy\":0.6}\n",
        ));
        let s = series(&r, "dapo_iteration", "iteration", "entropy", "entropy");
        assert_eq!(s.points, vec![(1.0, 0.1), (3.0, 0.3)]);
        assert!(series(&r, "rft_step", "step", "loss", "loss").points.is_empty());
    }

    #[test]
    fn a_repeated_x_keeps_the_later_row() {
        let r = rows("{\"kind\":\"rft_step\",\"step\":1,\"loss\":2.0}\n{\"kind\":\"rft_step\",\"step\":2,\"loss\":1.5}\n{\"kind\":\"rft_step\",\"step\":1,\"loss\":1.9}\n");
        assert_eq!(series(&r, "rft_step", "step", "loss", "l").points, vec![(1.0, 1.9), (2.0, 1.5)]);
    }

    #[test]
    fn phases_come_from_the_summary_first_then_eval_rows_in_run_order() {
        let r = rows(concat!(
            "{\"kind\":\"eval\",\"phase\":\"rft\",\"pass_rate\":0.3,\"sem\":0.02}\n",
            "{\"kind\":\"eval\",\"phase\":\"initial\",\"pass_rate\":0.1,\"sem\":0.01,\"episodes\":100,\"solved\":10}\n",
            "{\"kind\":\"eval\",\"phase\":\"initial\",\"pass_rate\":0.12}\n",
            "{\"kind\":\"eval\",\"phase\":\"dapo\",\"pass_rate\":null}\n",
        ));
        let from_rows = phases_from_rows(&r);
        assert_eq!(from_rows.len(), 2);
        assert_eq!(from_rows[1], PhaseResult { phase: "initial".into(), pass_rate: 0.12, sem: None, episodes: None, solved: None });
        let merged = merge_phases(None, from_rows.clone());
        assert_eq!(merged.iter().map(|p| p.phase.as_str()).collect::<Vec<_>>(), ["initial", "rft"]);

        let s = parse_summary(Path::new("summary.json"), r#"{"phases":{"rft":{"pass_rate":0.35,"sem":0.03,"episodes":200,"solved":70},"custom":{"pass_rate":0.5}},"order":["custom","initial","rft"],"other":1}"#).unwrap();
        let merged = merge_phases(Some(&s), from_rows);
        assert_eq!(merged.iter().map(|p| (p.phase.as_str(), p.pass_rate)).collect::<Vec<_>>(), [("custom", 0.5), ("initial", 0.12), ("rft", 0.35)]);
    }

    #[test]
    fn a_bad_summary_names_the_file_and_field() {
        let e = format!("{:#}", parse_summary(Path::new("run/summary.json"), r#"{"phases":{"rft":{"pass_rate":"high"}}}"#).unwrap_err());
        assert!(e.contains("run/summary.json") && e.contains("phases.rft.pass_rate"), "{e}");
        let e = format!("{:#}", parse_summary(Path::new("run/summary.json"), "{").unwrap_err());
        assert!(e.contains("run/summary.json"), "{e}");
    }

    #[test]
    fn last_time_is_the_largest_t_s() {
        let r = rows("{\"kind\":\"a\",\"t_s\":3.5}\n{\"kind\":\"b\",\"t_s\":2}\n{\"kind\":\"c\"}\n");
        assert_eq!(last_time(&r), Some(3.5));
        assert_eq!(last_time(&[]), None);
    }
}
