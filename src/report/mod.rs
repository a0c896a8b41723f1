//! The report of a training run: one self-contained HTML page (inline SVG
//! plots, no script, nothing fetched) from the files `train` writes in its
//! run directory.
//!
//! Owns: loading a run directory (metrics.jsonl, summary.json, config.toml;
//! the run may still be going or may have been killed), the choice of plots
//! and their series, and the page (HTML-escaped text from the files).
//! Does not own the files' writing side (train, monitor), the drawing
//! (plot.rs), nor where the page goes (the CLI writes it via
//! `crate::files`). This layer only reads files.

pub mod data;
pub mod plot;

use anyhow::{bail, Context, Result};
use data::{PhaseResult, Row, Series, Summary};
use plot::{LineChart, Scale};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Everything the page shows, read from a run directory.
#[derive(Debug)]
pub struct Run {
    pub dir: PathBuf,
    /// The directory's own name, for the title.
    pub name: String,
    pub rows: Vec<Row>,
    pub summary: Option<Summary>,
    pub config: Option<String>,
    /// Things the user should know (a torn line, a missing file), for stderr
    /// and the page.
    pub warnings: Vec<String>,
}

/// The text of `path`, or `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Read a run directory. A missing summary.json or config.toml is normal
/// (the run is going or was killed); a directory with none of the run's
/// files is an error.
pub fn load(dir: &Path) -> Result<Run> {
    if !dir.exists() {
        bail!("{}: no such run directory", dir.display());
    }
    if !dir.is_dir() {
        bail!("{}: not a directory (give the run directory that `appliance train` wrote)", dir.display());
    }
    let mut warnings = vec![];
    let metrics_path = dir.join("metrics.jsonl");
    let rows = if metrics_path.exists() {
        let m = data::read_metrics(&metrics_path)?;
        if let Some(l) = m.torn_line {
            warnings.push(format!("{}: line {l} was cut short (the run was killed mid-write); skipped", metrics_path.display()));
        }
        Some(m.rows)
    } else {
        None
    };
    let summary_path = dir.join("summary.json");
    let summary = read_optional(&summary_path)?.map(|t| data::parse_summary(&summary_path, &t)).transpose()?;
    let config = read_optional(&dir.join("config.toml"))?;
    if rows.is_none() && summary.is_none() && config.is_none() {
        bail!("{}: not a run directory (no metrics.jsonl, summary.json or config.toml in it)", dir.display());
    }
    if rows.is_none() {
        warnings.push(format!("{}: not there yet; the plots are empty", metrics_path.display()));
    }
    let name = std::fs::canonicalize(dir).ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_else(|| dir.display().to_string());
    Ok(Run { dir: dir.to_path_buf(), name, rows: rows.unwrap_or_default(), summary, config, warnings })
}

/// Escape text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn chart(title: &str, x_label: &str, y_label: &str, scale: Scale, series: Vec<Series>) -> LineChart {
    LineChart { title: title.into(), x_label: x_label.into(), y_label: y_label.into(), scale, series }
}

/// The line charts of the page, in order, with their series from the rows.
pub fn line_charts(rows: &[Row]) -> Vec<LineChart> {
    let it = |y: &str, label: &str| data::series(rows, "dapo_iteration", "iteration", y, label);
    let step = |kind: &str, y: &str, label: &str| data::series(rows, kind, "step", y, label);
    vec![
        chart("DAPO reward and pass rate", "iteration", "mean over the iteration's episodes", Scale::FromZero, vec![it("reward_mean", "reward mean"), it("pass_rate", "pass rate")]),
        chart("Token entropy", "iteration", "mean entropy of sampled tokens (nats)", Scale::FromZero, vec![it("entropy", "entropy")]),
        chart("Clip fractions", "iteration", "fraction of tokens clipped", Scale::FromZero, vec![it("clip_low_frac", "low (ratio < 1 - ε_low)"), it("clip_high_frac", "high (ratio > 1 + ε_high)")]),
        chart(
            "Sampler-trainer parity",
            "iteration",
            "|Δ log-prob| (log scale; 0 drawn at 1e-12)",
            Scale::Log,
            vec![it("parity_mean_abs", "mean |Δ log-prob|"), it("parity_max_abs", "max |Δ log-prob|")],
        ),
        chart("Throughput", "iteration", "tokens/s", Scale::FromZero, vec![it("gen_tokens_per_s", "generation"), it("train_tokens_per_s", "training")]),
        chart("Warm-start and RFT loss", "optimizer step", "loss", Scale::FromZero, vec![step("warm_start_step", "loss", "warm start"), step("rft_step", "loss", "RFT")]),
        chart(
            "Time per iteration",
            "iteration",
            "seconds",
            Scale::FromZero,
            vec![it("time_generation_s", "generation"), it("time_env_s", "environment"), it("time_train_s", "training"), it("wall_s", "wall (whole iteration)")],
        ),
        chart(
            "Gradient norm",
            "optimizer step (each phase counts its own)",
            "gradient norm",
            Scale::FromZero,
            vec![step("warm_start_step", "grad_norm", "warm start"), step("rft_step", "grad_norm", "RFT"), step("dapo_step", "grad_norm", "DAPO")],
        ),
    ]
}

/// The `<svg …>…</svg>` element of a rendered SVG document.
fn inline_svg(doc: &str) -> &str {
    doc.find("<svg").map_or(doc, |i| &doc[i..])
}

fn figure(out: &mut String, title: &str, svg: Option<String>) {
    match svg {
        Some(doc) => {
            let _ = writeln!(out, "<figure>{}</figure>", inline_svg(&doc).trim_end());
        }
        None => {
            let _ = writeln!(out, "<figure class=\"empty\"><figcaption>{}</figcaption><p class=\"nodata\">no data yet</p></figure>", escape(title));
        }
    }
}

fn count(v: Option<f64>) -> String {
    match v {
        Some(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{}", v as i64),
        Some(v) => format!("{v}"),
        None => "–".into(),
    }
}

fn phase_table(out: &mut String, phases: &[PhaseResult], source: &str) {
    if phases.is_empty() {
        out.push_str("<p class=\"nodata\">no held-out evaluation yet</p>\n");
        return;
    }
    out.push_str("<table>\n<thead><tr><th>phase</th><th>pass rate</th><th>± SEM</th><th>solved</th><th>episodes</th></tr></thead>\n<tbody>\n");
    for p in phases {
        let sem = p.sem.map_or("–".into(), |s| format!("{s:.4}"));
        let _ = writeln!(out, "<tr><td>{}</td><td>{:.4}</td><td>{}</td><td>{}</td><td>{}</td></tr>", escape(&p.phase), p.pass_rate, sem, count(p.solved), count(p.episodes));
    }
    let _ = writeln!(out, "</tbody>\n</table>\n<p class=\"note\">From {}.</p>", escape(source));
}

const STYLE: &str = "body{font-family:sans-serif;max-width:780px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .8em;text-align:right}\
td:first-child,th:first-child{text-align:left}figure{margin:1.5em 0}svg{max-width:100%;height:auto}\
figure.empty{border:1px dashed #bbb;padding:1em}figcaption{font-weight:bold}.nodata,.note{color:#777}\
.warn{color:#a40}pre{background:#f6f6f6;padding:1em;overflow-x:auto}";

/// The whole page.
pub fn render(run: &Run) -> Result<String> {
    let mut out = String::new();
    let name = escape(&run.name);
    let _ = writeln!(out, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>appliance run {name}</title>\n<style>{STYLE}</style>\n</head>\n<body>");
    let _ = writeln!(out, "<h1>Run {name}</h1>");
    let mut facts = format!("{} · {} metric rows", escape(&run.dir.display().to_string()), run.rows.len());
    if let Some(t) = data::last_time(&run.rows) {
        let _ = write!(facts, " · last row at {:.0} s ({:.2} h)", t, t / 3600.0);
    }
    if run.summary.is_none() {
        facts.push_str(" · no summary.json (the run is going, or was stopped)");
    }
    let _ = writeln!(out, "<p class=\"note\">{facts}</p>");
    for w in &run.warnings {
        let _ = writeln!(out, "<p class=\"warn\">warning: {}</p>", escape(w));
    }

    out.push_str("<h2>Held-out pass rate</h2>\n");
    let phases = data::merge_phases(run.summary.as_ref(), data::phases_from_rows(&run.rows));
    let source = if run.summary.as_ref().is_some_and(|s| !s.phases.is_empty()) { "summary.json (phases it lacks: eval rows of metrics.jsonl)" } else { "the eval rows of metrics.jsonl" };
    phase_table(&mut out, &phases, source);

    out.push_str("<h2>Training curves</h2>\n");
    let title = "Held-out pass rate per phase (± SEM)";
    figure(&mut out, title, plot::phase_chart(title, &phases)?);
    for c in line_charts(&run.rows) {
        let svg = if c.has_data() { plot::line_chart(&c)? } else { None };
        figure(&mut out, &c.title, svg);
    }

    if let Some(cfg) = &run.config {
        let _ = writeln!(out, "<h2>Config</h2>\n<pre>{}</pre>", escape(cfg));
    }
    if let Some(s) = &run.summary {
        let pretty = serde_json::to_string_pretty(&s.raw).unwrap_or_default();
        let _ = writeln!(out, "<details><summary>summary.json</summary>\n<pre>{}</pre>\n</details>", escape(&pretty));
    }
    let _ = writeln!(out, "<p class=\"note\">appliance {} report</p>\n</body>\n</html>", env!("CARGO_PKG_VERSION"));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> Vec<Row> {
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(escape(r#"<a href="x">&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
    }

    #[test]
    fn each_chart_takes_its_series_from_its_kind() {
        let r = rows(concat!(
            "{\"kind\":\"dapo_iteration\",\"iteration\":1,\"entropy\":0.5,\"parity_mean_abs\":0.0,\"parity_max_abs\":0.01}\n",
            "{\"kind\":\"rft_step\",\"step\":1,\"loss\":1.2,\"grad_norm\":3.0}\n",
            "{\"kind\":\"dapo_step\",\"step\":7,\"grad_norm\":0.5}\n",
        ));
        let c = line_charts(&r);
        assert_eq!(c.len(), 8);
        let by = |t: &str| c.iter().find(|c| c.title == t).unwrap();
        assert_eq!(by("Token entropy").series[0].points, vec![(1.0, 0.5)]);
        assert_eq!(by("Warm-start and RFT loss").series[1].points, vec![(1.0, 1.2)]);
        assert!(by("Warm-start and RFT loss").series[0].points.is_empty());
        assert_eq!(by("Gradient norm").series[2].points, vec![(7.0, 0.5)]);
        assert!(!by("Throughput").has_data());
        assert_eq!(by("Sampler-trainer parity").scale, Scale::Log);
    }

    #[test]
    fn a_page_without_data_says_so_for_every_plot() {
        let run = Run { dir: "r".into(), name: "r<1>".into(), rows: vec![], summary: None, config: Some("a = \"<b>\"".into()), warnings: vec!["w & w".into()] };
        let html = render(&run).unwrap();
        assert_eq!(html.matches("no data yet").count(), 9);
        assert!(!html.contains("<svg"));
        assert!(html.contains("Run r&lt;1&gt;") && html.contains("&lt;b&gt;") && html.contains("w &amp; w"));
    }

    #[test]
    fn a_page_with_data_inlines_one_svg_per_plot_with_data() {
        let r = rows(concat!(
            "{\"kind\":\"eval\",\"phase\":\"initial\",\"pass_rate\":0.25,\"sem\":0.04}\n",
            "{\"kind\":\"dapo_iteration\",\"iteration\":1,\"entropy\":0.5,\"parity_mean_abs\":0.0,\"parity_max_abs\":0.0}\n",
            "{\"kind\":\"dapo_iteration\",\"iteration\":2,\"entropy\":0.4,\"parity_mean_abs\":1e-7,\"parity_max_abs\":2e-6}\n",
        ));
        let run = Run { dir: "r".into(), name: "r".into(), rows: r, summary: None, config: None, warnings: vec![] };
        let html = render(&run).unwrap();
        // phase chart, entropy, parity
        assert_eq!(html.matches("<svg").count(), 3, "{html}");
        assert_eq!(html.matches("no data yet").count(), 6);
        assert!(!html.contains("<?xml"));
        assert!(html.contains("0.2500") && html.contains("initial"));
    }
}
