//! Test-log parsers: per-test status from pytest (`-rA`), unittest and
//! Django-style runner output.
//!
//! Owns: turning a log into `test id → status`, with SWE-bench's ids
//! (`path::name` for pytest, `name (module.Class)` for unittest/Django).
//! Does not own: running the tests or deciding the reward (`grade`).

use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Passed,
    Failed,
    Error,
    Skipped,
    Xfail,
}

impl Status {
    pub fn is_pass(self) -> bool {
        matches!(self, Status::Passed | Status::Xfail)
    }
}

/// Parse a log with every parser; later, more specific lines win.
pub fn parse(log: &str) -> BTreeMap<String, Status> {
    let mut m = parse_unittest(log);
    m.extend(parse_pytest(log));
    m
}

/// pytest `-rA` short summary lines (`PASSED id`, `FAILED id - msg`, …) and
/// verbose lines (`id PASSED [ 10%]`).
pub fn parse_pytest(log: &str) -> BTreeMap<String, Status> {
    let mut m = BTreeMap::new();
    for raw in log.lines() {
        let line = raw.trim();
        let words = [("PASSED", Status::Passed), ("FAILED", Status::Failed), ("ERROR", Status::Error), ("SKIPPED", Status::Skipped), ("XFAIL", Status::Xfail), ("XPASS", Status::Passed)];
        for (w, st) in words {
            if let Some(rest) = line.strip_prefix(w).and_then(|r| r.strip_prefix(' ')) {
                let id = rest.split(" - ").next().unwrap_or("").trim();
                if id.contains("::") && !id.contains(' ') {
                    m.insert(id.to_string(), st);
                } else if st == Status::Skipped {
                    // `SKIPPED [1] path:line: reason` has no id: ignore
                }
            } else if let Some(pos) = line.find(&format!(" {w}")) {
                let id = &line[..pos];
                let after = &line[pos + 1 + w.len()..];
                if id.contains("::") && !id.contains(' ') && (after.is_empty() || after.trim_start().starts_with('[')) {
                    m.insert(id.to_string(), st);
                }
            }
        }
    }
    m
}

/// unittest verbose output (`test_x (mod.Class) ... ok`, also the Python
/// 3.11+ form `test_x (mod.Class.test_x)`) and Django's, where a docstring
/// line may stand between the id and the result.
pub fn parse_unittest(log: &str) -> BTreeMap<String, Status> {
    let mut m = BTreeMap::new();
    let mut last_id: Option<String> = None;
    for raw in log.lines() {
        let line = raw.trim_end();
        let (head, result) = match line.rfind(" ... ") {
            Some(i) => (&line[..i], line[i + 5..].trim()),
            None => {
                if let Some(id) = unittest_id(line) {
                    last_id = Some(id);
                }
                continue;
            }
        };
        let status = if result == "ok" || result.starts_with("ok") {
            Status::Passed
        } else if result.starts_with("FAIL") {
            Status::Failed
        } else if result.starts_with("ERROR") {
            Status::Error
        } else if result.starts_with("skipped") {
            Status::Skipped
        } else if result.starts_with("expected failure") {
            Status::Xfail
        } else if result.starts_with("unexpected success") {
            Status::Failed
        } else {
            continue;
        };
        let id = unittest_id(head).or_else(|| last_id.take());
        if let Some(id) = id {
            m.insert(id, status);
        }
        last_id = None;
    }
    m
}

/// `name (dotted.path)` → SWE-bench's id, dropping a trailing `.name`
/// that Python 3.11+ repeats inside the parentheses.
fn unittest_id(s: &str) -> Option<String> {
    let s = s.trim();
    let open = s.find(" (")?;
    if !s.ends_with(')') {
        return None;
    }
    let name = &s[..open];
    let inner = &s[open + 2..s.len() - 1];
    if name.is_empty() || name.contains(' ') || inner.contains(' ') || !inner.contains('.') {
        return None;
    }
    let inner = inner.strip_suffix(&format!(".{name}")).unwrap_or(inner);
    Some(format!("{name} ({inner})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pytest_summary() {
        let log = "tests/test_a.py::test_one PASSED [ 50%]\n=== short test summary info ===\nPASSED tests/test_a.py::test_one\nFAILED tests/test_a.py::test_two - AssertionError: x - y\nERROR tests/test_b.py::test_c[1-2]\nSKIPPED [1] tests/test_a.py:3: no\n";
        let m = parse(log);
        assert_eq!(m["tests/test_a.py::test_one"], Status::Passed);
        assert_eq!(m["tests/test_a.py::test_two"], Status::Failed);
        assert_eq!(m["tests/test_b.py::test_c[1-2]"], Status::Error);
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn unittest_and_django() {
        let log = "test_add (calc.tests.AddTest) ... ok\ntest_sub (calc.tests.SubTest.test_sub) ... FAIL\ntest_doc (app.tests.DocTest)\nChecks the doc. ... ERROR\ntest_skip (app.tests.T) ... skipped 'x'\n";
        let m = parse(log);
        assert_eq!(m["test_add (calc.tests.AddTest)"], Status::Passed);
        assert_eq!(m["test_sub (calc.tests.SubTest)"], Status::Failed);
        assert_eq!(m["test_doc (app.tests.DocTest)"], Status::Error);
        assert_eq!(m["test_skip (app.tests.T)"], Status::Skipped);
    }
}
