//! `appliance report` end to end: synthetic run directories in a tempdir,
//! the real binary, and the page it writes (or the error it gives, with no
//! page left behind).

use std::path::Path;
use std::process::{Command, Output};

fn report(args: &[&Path]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_appliance"));
    c.env_remove("RUST_LOG").arg("report").args(args);
    c.output().expect("the binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Metrics rows of every kind, as `train` writes them: two warm-start and
/// RFT steps, three DAPO iterations of two steps, evals after each phase,
/// device rows, a row of a kind the report does not know, and nulls.
fn metrics() -> String {
    let mut l = vec![r#"{"kind":"eval","t_s":10.0,"phase":"initial","pass_rate":0.125,"sem":0.02,"episodes":200,"solved":25}"#.to_string()];
    for s in 1..=3 {
        l.push(format!(r#"{{"kind":"warm_start_step","t_s":{},"step":{s},"loss":{},"grad_norm":{},"lr":1e-6,"tokens":4096,"train_tokens_per_s":900.0}}"#, 10 + s, 2.0 / s as f64, 1.0 + s as f64));
    }
    l.push(r#"{"kind":"eval","t_s":20.0,"phase":"warm_start","pass_rate":0.2,"sem":0.025,"episodes":200,"solved":40}"#.into());
    for s in 1..=3 {
        l.push(format!(r#"{{"kind":"rft_step","t_s":{},"step":{s},"loss":{},"grad_norm":null,"lr":5e-6,"tokens":4096}}"#, 20 + s, 1.0 / s as f64));
    }
    l.push(r#"{"kind":"device","t_s":25.0,"gpu":0,"util":0.93,"mem_used_gib":61.2}"#.into());
    l.push(r#"{"kind":"eval","t_s":30.0,"phase":"rft","pass_rate":0.3,"sem":0.03,"episodes":200,"solved":60}"#.into());
    for it in 1..=3 {
        for k in 0..2 {
            let step = 2 * (it - 1) + k + 1;
            l.push(format!(
                r#"{{"kind":"dapo_step","t_s":{},"iteration":{it},"step":{step},"loss":0.01,"grad_norm":{},"lr":1e-6,"clip_low_frac":0.001,"clip_high_frac":0.002,"entropy":0.4,"tokens":9000,"sequences":16,"parity_mean_abs":0.0,"parity_max_abs":1e-5,"train_tokens_per_s":800.0}}"#,
                30 + step,
                0.5 + 0.1 * step as f64
            ));
        }
        l.push(format!(
            r#"{{"kind":"dapo_iteration","t_s":{},"iteration":{it},"problems":8,"episodes":64,"reward_mean":{},"pass_rate":{},"groups_kept_frac":0.5,"samples_kept":32,"steps_mean":20.5,"submit_rate":0.9,"truncated_rate":0.05,"env_error_rate":0.0,"entropy":{},"clip_low_frac":0.001,"clip_high_frac":0.003,"grad_norm":0.7,"parity_mean_abs":{},"parity_max_abs":2e-5,"gen_tokens_per_s":12000.0,"train_tokens_per_s":800.0,"time_generation_s":100.0,"time_env_s":40.0,"time_train_s":60.0,"wall_s":205.0,"a_future_field":{{"x":1}}}}"#,
            40 + it,
            0.1 * it as f64,
            0.12 * it as f64,
            0.5 - 0.05 * it as f64,
            if it == 1 { 0.0 } else { 1e-7 }
        ));
    }
    l.push(r#"{"kind":"some_later_kind","t_s":50.0,"whatever":[1,2,3]}"#.into());
    l.push(r#"{"kind":"eval","t_s":60.0,"phase":"dapo","pass_rate":0.375,"sem":0.034,"episodes":200,"solved":75}"#.into());
    l.join("\n") + "\n"
}

const SUMMARY: &str = r#"{"phases":{"initial":{"pass_rate":0.125,"sem":0.02,"episodes":200,"solved":25},"warm_start":{"pass_rate":0.2,"sem":0.025,"episodes":200,"solved":40},"rft":{"pass_rate":0.3,"sem":0.03,"episodes":200,"solved":60},"dapo":{"pass_rate":0.375,"sem":0.034,"episodes":200,"solved":75}},"order":["initial","warm_start","rft","dapo"],"model":"Qwen2.5-7B"}"#;

const CONFIG: &str = "[dapo]\n# keep groups where 0 < solved < group size\ngroup_size = 8\nnote = \"a<b & c>d\"\n";

fn run_dir(root: &Path, summary: bool) -> std::path::PathBuf {
    let d = root.join("run-7b");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("metrics.jsonl"), metrics()).unwrap();
    std::fs::write(d.join("config.toml"), CONFIG).unwrap();
    if summary {
        std::fs::write(d.join("summary.json"), SUMMARY).unwrap();
    }
    d
}

/// The files in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// A failure a user can act on: exit 1, not a panic, and a message.
fn assert_clean_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "want exit 1, got {:?}; stderr:\n{err}", o.status.code());
    assert!(!err.contains("panicked"), "panic reached the user:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

/// Every `src=` and `href=` value in the page, and whether any loads from the network.
fn remote_refs(html: &str) -> Vec<String> {
    let mut out = vec![];
    for attr in ["src=", "href="] {
        for (i, _) in html.match_indices(attr) {
            let v: String = html[i + attr.len()..].trim_start_matches(['"', '\'']).chars().take(12).collect();
            if v.starts_with("http:") || v.starts_with("https:") || v.starts_with("//") {
                out.push(v);
            }
        }
    }
    out
}

#[test]
fn a_full_run_renders_a_self_contained_page() {
    let tmp = tempfile::tempdir().unwrap();
    let d = run_dir(tmp.path(), true);
    let o = report(&[&d]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = d.join("report.html");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), out.display().to_string());
    let html = std::fs::read_to_string(&out).unwrap();

    assert!(html.contains("<title>appliance run run-7b</title>"), "title");
    // one inline SVG per plot, none empty
    assert_eq!(html.matches("<svg").count(), 9, "one <svg per plot");
    assert_eq!(html.matches("</svg>").count(), 9);
    assert!(!html.contains("no data yet"));
    // self-contained: nothing loaded from elsewhere, no script at all
    assert_eq!(remote_refs(&html), Vec::<String>::new());
    assert!(!html.to_lowercase().contains("<script"));
    assert!(!html.contains("<?xml"), "the SVG documents' prologs are stripped when inlined");
    // the summary table, phases in run order
    let pos: Vec<usize> = ["<td>initial</td>", "<td>warm_start</td>", "<td>rft</td>", "<td>dapo</td>"].iter().map(|p| html.find(p).unwrap_or_else(|| panic!("{p} missing"))).collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "phases out of order: {pos:?}");
    for rate in ["0.1250", "0.2000", "0.3000", "0.3750", "0.0340"] {
        assert!(html.contains(rate), "pass rate or SEM {rate} missing");
    }
    assert!(html.contains("From summary.json"));
    // the config, escaped
    assert!(html.contains("note = &quot;a&lt;b &amp; c&gt;d&quot;"), "config not escaped");
    assert!(!html.contains("a<b"));
    // every plot has a legend and axis labels (text elements in the SVG)
    for label in ["reward mean", "generation", "warm start", "max |Δ log-prob|", "optimizer step", "tokens/s", "± SEM", "environment"] {
        assert!(html.contains(label), "{label} missing");
    }
    // nothing else left in the run directory
    assert_eq!(listing(&d), ["config.toml", "metrics.jsonl", "report.html", "summary.json"]);
}

#[test]
fn out_puts_the_page_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let d = run_dir(tmp.path(), true);
    let out = tmp.path().join("pages/r.html");
    let o = report(&[&d, Path::new("--out"), &out]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&out).unwrap().contains("<svg"));
    assert!(!d.join("report.html").exists());
}

#[test]
fn a_torn_last_line_is_skipped_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let d = run_dir(tmp.path(), false);
    let mut m = metrics();
    m.push_str(r#"{"kind":"dapo_iteration","iteration":4,"rew"#);
    let lines = m.lines().count();
    std::fs::write(d.join("metrics.jsonl"), m).unwrap();
    let o = report(&[&d]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("warning") && err.contains("metrics.jsonl") && err.contains(&format!("line {lines}")), "{err}");
    let html = std::fs::read_to_string(d.join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 9);
}

#[test]
fn an_invalid_middle_line_fails_naming_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let d = run_dir(tmp.path(), true);
    let mut lines: Vec<String> = metrics().lines().map(String::from).collect();
    lines[4] = "{\"kind\": \"rft_step\", \"step\": 2,".into();
    std::fs::write(d.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
    let o = report(&[&d]);
    assert_clean_error(&o, &["metrics.jsonl: line 5"]);
    assert_eq!(listing(&d), ["config.toml", "metrics.jsonl", "summary.json"], "nothing partial left behind");
}

#[test]
fn a_missing_run_dir_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("no-such-run");
    let o = report(&[&d]);
    assert_clean_error(&o, &["no-such-run", "no such run directory"]);
    assert!(!d.exists());
    assert!(listing(tmp.path()).is_empty());
    // a directory without any of the run's files is not a run directory
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_clean_error(&report(&[&empty]), &["not a run directory"]);
    assert!(listing(&empty).is_empty());
}

#[test]
fn a_bad_summary_fails_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = run_dir(tmp.path(), false);
    std::fs::write(d.join("summary.json"), r#"{"phases":{"rft":{"pass_rate":"most"}}}"#).unwrap();
    assert_clean_error(&report(&[&d]), &["summary.json", "phases.rft.pass_rate"]);
    assert!(!d.join("report.html").exists());
}

#[test]
fn without_summary_the_table_comes_from_eval_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let d = run_dir(tmp.path(), false);
    let o = report(&[&d]);
    assert!(o.status.success(), "{}", stderr(&o));
    let html = std::fs::read_to_string(d.join("report.html")).unwrap();
    assert!(html.contains("From the eval rows of metrics.jsonl"));
    for (phase, rate) in [("initial", "0.1250"), ("warm_start", "0.2000"), ("rft", "0.3000"), ("dapo", "0.3750")] {
        assert!(html.contains(&format!("<tr><td>{phase}</td><td>{rate}</td>")), "{phase} {rate} missing");
    }
    assert_eq!(html.matches("<svg").count(), 9);
}

#[test]
fn an_early_run_shows_no_data_notes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("early");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("config.toml"), CONFIG).unwrap();
    std::fs::write(d.join("metrics.jsonl"), r#"{"kind":"eval","t_s":1.0,"phase":"initial","pass_rate":0.1,"sem":null}"#.to_string() + "\n" + r#"{"kind":"rft_step","t_s":2.0,"step":1,"loss":1.5}"# + "\n").unwrap();
    let o = report(&[&d]);
    assert!(o.status.success(), "{}", stderr(&o));
    let html = std::fs::read_to_string(d.join("report.html")).unwrap();
    // the phase chart and the loss chart have data; the other seven do not
    assert_eq!(html.matches("<svg").count(), 2);
    assert_eq!(html.matches("no data yet").count(), 7);
    assert!(html.contains("<tr><td>initial</td><td>0.1000</td><td>–</td>"));
}
