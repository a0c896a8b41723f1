//! Task files: SWE-bench / SWE-rebench instances read from JSONL or a JSON
//! array, checked field by field.
//!
//! Owns: the `Task` record, reading and checking task files (errors name
//! file:line and the field), the lists-or-JSON-strings quirk of
//! FAIL_TO_PASS/PASS_TO_PASS, image-name templates, and writing task lists.
//! Does not own: building images (`image`) or running anything.

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// One SWE task. Field names on disk follow SWE-bench.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Task {
    pub instance_id: String,
    pub repo: String,
    pub base_commit: String,
    pub problem_statement: String,
    /// The gold patch (may be empty when a user has none).
    pub patch: String,
    pub test_patch: String,
    #[serde(rename = "FAIL_TO_PASS")]
    pub fail_to_pass: Vec<String>,
    #[serde(rename = "PASS_TO_PASS")]
    pub pass_to_pass: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The instance image, when the task names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    /// The task's own test command (run in /testbed by bash).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_cmd: Option<String>,
    /// Shell commands run in /testbed before the tests (e.g. `pip install -e .`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env_setup: Option<String>,
    /// A local git repository to build the task image from (with base_commit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo_path: Option<PathBuf>,
}

impl Task {
    /// The image for this task: its own field, else the template with
    /// `{instance_id}` (as is) or `{instance_id_docker}` (lower case, `__` →
    /// `_1776_`, the SWE-bench convention) filled in.
    pub fn image_ref(&self, template: Option<&str>) -> Option<String> {
        if let Some(i) = &self.image_name {
            return Some(i.clone());
        }
        let t = template?;
        let docker_id = self.instance_id.to_lowercase().replace("__", "_1776_");
        Some(t.replace("{instance_id_docker}", &docker_id).replace("{instance_id}", &self.instance_id))
    }

    /// Test files that the test patch touches (the `b/` side of each diff).
    pub fn test_files(&self) -> Vec<String> {
        patch_files(&self.test_patch)
    }
}

/// Paths a unified diff writes (from `diff --git a/X b/Y` or `+++ b/Y`).
pub fn patch_files(patch: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in patch.lines() {
        let path = if let Some(rest) = line.strip_prefix("+++ ") {
            let p = rest.split('\t').next().unwrap_or("").trim();
            if p == "/dev/null" {
                continue;
            }
            p.strip_prefix("b/").unwrap_or(p).to_string()
        } else {
            continue;
        };
        if !path.is_empty() && !out.contains(&path) {
            out.push(path);
        }
    }
    out
}

/// How to read a task file.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Keep the good entries and report the bad ones instead of failing.
    pub skip_invalid: bool,
}

/// Tasks read from a file, and the entries skipped (with their errors).
#[derive(Debug, Default)]
pub struct Loaded {
    pub tasks: Vec<Task>,
    pub skipped: Vec<String>,
}

/// Read a JSONL file or a JSON array of task objects.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading task file {}", path.display()))?;
    parse(&text, &path.display().to_string(), path.parent(), opts)
}

/// Parse task text; `name` is used in errors, `base_dir` resolves relative `repo_path`s.
pub fn parse(text: &str, name: &str, base_dir: Option<&Path>, opts: &LoadOptions) -> Result<Loaded> {
    let mut out = Loaded::default();
    let mut entries: Vec<(String, Result<Value>)> = Vec::new();
    if text.trim_start().starts_with('[') {
        let v: Value = serde_json::from_str(text).map_err(|e| anyhow!("{name}:{}: not a valid JSON array: {e}", e.line()))?;
        for (i, item) in v.as_array().into_iter().flatten().enumerate() {
            entries.push((format!("{name}: entry {}", i + 1), Ok(item.clone())));
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let r = serde_json::from_str::<Value>(line).map_err(|e| anyhow!("malformed JSON: {e}"));
            entries.push((format!("{name}:{}", i + 1), r));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (loc, v) in entries {
        let r = v.and_then(|v| task_from_value(&v, base_dir)).and_then(|t| {
            if !seen.insert(t.instance_id.clone()) {
                bail!("field instance_id: duplicate {:?}", t.instance_id)
            }
            Ok(t)
        });
        match r {
            Ok(t) => out.tasks.push(t),
            Err(e) => {
                let msg = format!("{loc}: {e:#}");
                if opts.skip_invalid {
                    out.skipped.push(msg);
                } else {
                    bail!("{msg}");
                }
            }
        }
    }
    Ok(out)
}

fn field_str(m: &Map<String, Value>, key: &str, required: bool) -> Result<Option<String>> {
    match m.get(key) {
        None | Some(Value::Null) => {
            if required {
                bail!("field {key}: missing")
            }
            Ok(None)
        }
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => bail!("field {key}: expected a string, found {}", kind(other)),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A list of test ids: a JSON array of strings, or a string holding one.
fn field_list(m: &Map<String, Value>, key: &str) -> Result<Vec<String>> {
    let v = m.get(key).ok_or_else(|| anyhow!("field {key}: missing"))?;
    let arr = match v {
        Value::Array(a) => a.clone(),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Array(a)) => a,
            _ => bail!("field {key}: a string that is not a JSON-encoded list: {:?}", truncate(s, 60)),
        },
        other => bail!("field {key}: expected a list of test ids, found {}", kind(other)),
    };
    arr.into_iter()
        .enumerate()
        .map(|(i, x)| match x {
            Value::String(s) => Ok(s),
            other => Err(anyhow!("field {key}[{i}]: expected a string, found {}", kind(&other))),
        })
        .collect()
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn task_from_value(v: &Value, base_dir: Option<&Path>) -> Result<Task> {
    let m = v.as_object().ok_or_else(|| anyhow!("expected a JSON object, found {}", kind(v)))?;
    let instance_id = field_str(m, "instance_id", true)?.unwrap_or_default();
    if instance_id.trim().is_empty() {
        bail!("field instance_id: empty");
    }
    let repo_path = field_str(m, "repo_path", false)?.map(|p| {
        let p = PathBuf::from(p);
        match base_dir {
            Some(d) if p.is_relative() => d.join(p),
            _ => p,
        }
    });
    let repo = field_str(m, "repo", repo_path.is_none())?.unwrap_or_default();
    let base_commit = field_str(m, "base_commit", true)?.unwrap_or_default();
    let image_name = match field_str(m, "image_name", false)? {
        Some(i) => Some(i),
        None => match field_str(m, "docker_image", false)? {
            Some(i) => Some(i),
            None => field_str(m, "image", false)?,
        },
    };
    let test_cmd = match field_str(m, "test_cmd", false)? {
        Some(c) => Some(c),
        None => field_str(m, "test_command", false)?,
    };
    let t = Task {
        instance_id: instance_id.clone(),
        repo,
        base_commit,
        problem_statement: field_str(m, "problem_statement", true)?.unwrap_or_default(),
        patch: field_str(m, "patch", false)?.unwrap_or_default(),
        test_patch: field_str(m, "test_patch", true)?.unwrap_or_default(),
        fail_to_pass: field_list(m, "FAIL_TO_PASS")?,
        pass_to_pass: if m.contains_key("PASS_TO_PASS") { field_list(m, "PASS_TO_PASS")? } else { Vec::new() },
        version: field_str(m, "version", false)?,
        image_name,
        test_cmd,
        env_setup: field_str(m, "env_setup", false)?,
        repo_path,
    };
    if t.fail_to_pass.is_empty() {
        bail!("field FAIL_TO_PASS: empty (a task needs at least one test that the fix makes pass)");
    }
    if t.test_cmd.is_none() && t.test_files().is_empty() {
        bail!("field test_patch: touches no file, and the task has no test_cmd");
    }
    Ok(t)
}

/// Write tasks as JSONL, atomically.
pub fn write_jsonl(path: &Path, tasks: &[Task]) -> Result<()> {
    let mut s = String::new();
    for t in tasks {
        s.push_str(&serde_json::to_string(t).context("serializing a task")?);
        s.push('\n');
    }
    super::write_atomic(path, s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(extra: &str) -> String {
        format!(
            r#"{{"instance_id":"a__b-1","repo":"a/b","base_commit":"abc","problem_statement":"x","patch":"","test_patch":"diff --git a/t.py b/t.py\n--- a/t.py\n+++ b/t.py\n","FAIL_TO_PASS":"[\"t.py::test_x\"]","PASS_TO_PASS":[]{extra}}}"#
        )
    }

    #[test]
    fn reads_jsonl_with_encoded_lists() {
        let l = parse(&line(""), "f.jsonl", None, &LoadOptions::default()).unwrap();
        assert_eq!(l.tasks.len(), 1);
        assert_eq!(l.tasks[0].fail_to_pass, vec!["t.py::test_x".to_string()]);
        assert_eq!(l.tasks[0].test_files(), vec!["t.py".to_string()]);
        assert_eq!(l.tasks[0].image_ref(Some("r/sweb.eval.x86_64.{instance_id_docker}")).unwrap(), "r/sweb.eval.x86_64.a_1776_b-1");
    }

    #[test]
    fn reads_json_array() {
        let text = format!("[{}, {}]", line(""), line("").replace("a__b-1", "c-2"));
        let l = parse(&text, "f.json", None, &LoadOptions::default()).unwrap();
        assert_eq!(l.tasks.len(), 2);
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let text = format!("{}\n{{not json\n", line(""));
        let e = parse(&text, "f.jsonl", None, &LoadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("f.jsonl:2"), "{e}");
        let l = parse(&text, "f.jsonl", None, &LoadOptions { skip_invalid: true }).unwrap();
        assert_eq!(l.tasks.len(), 1);
        assert_eq!(l.skipped.len(), 1);
    }

    #[test]
    fn missing_field_is_named() {
        let text = line("").replace(r#""base_commit":"abc","#, "");
        let e = parse(&text, "f.jsonl", None, &LoadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("f.jsonl:1") && e.contains("base_commit"), "{e}");
        let text = line("").replace(r#""FAIL_TO_PASS":"[\"t.py::test_x\"]""#, r#""FAIL_TO_PASS":5"#);
        let e = parse(&text, "f.jsonl", None, &LoadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("FAIL_TO_PASS"), "{e}");
    }

    #[test]
    fn duplicate_ids_rejected() {
        let text = format!("{}\n{}\n", line(""), line(""));
        let e = parse(&text, "f.jsonl", None, &LoadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("f.jsonl:2") && e.contains("duplicate"), "{e}");
    }
}
