//! Micro tasks: many generated, tiny Python bug-fix tasks that a tiny model
//! trained from scratch can learn to solve in three short turns.
//!
//! Owns: the seeded generator (ChaCha8; five templates with their names,
//! constants and operators drawn), the issue text, gold patch and test patch
//! of each task, writing the tasks' repository (deterministic commit, so
//! base_commit is stable), the canonical solution as tool commands and as
//! short replies (for warm-start demonstrations), the train/held-out split,
//! and building the tasks' one shared image. Does not own: grading, running
//! tools or episodes, or anything about models.
//!
//! Why it is built so:
//! - Learnable by copying. Every issue has two lines in one fixed form: a
//!   symptom (`` `cost(4)` returns 12 but should return 20. ``) and the fix
//!   (`Fix: in shop/core.py replace 'RATE = 3' with 'RATE = 5'.`). The
//!   canonical solution copies the path and the two quoted strings, token
//!   for token, into `open shop/core.py`, `replace 'RATE = 3' 'RATE = 5'`,
//!   then `submit`. The quoted strings are whole source lines without their
//!   indentation and occur once in their file, so `replace` always applies.
//! - Few templates, much variation: an arithmetic operator, a constant, a
//!   comparison at its boundary, a string literal, a list index; package,
//!   module, function and variable names, numbers and operators are drawn.
//!   Task `i` uses template `i mod 5`, so any run of five tasks (and so a
//!   held-out tail) covers every template.
//! - Hidden tests, as in SWE-bench: the test file is not in the repository;
//!   the test patch adds it. It holds a FAIL_TO_PASS test (the symptom) and
//!   a PASS_TO_PASS test (behaviour the bug does not touch), stdlib only.
//!   The repository's own runner (`run_tests.py`, stdlib only) runs them
//!   and prints pytest's `-rA` lines: pytest's start-up alone took ten
//!   times the tests' time, and every episode is graded.
//! - One repository, one image. An image per task costs about 2 s through
//!   `image::ensure_task_image` on the 2-core machine (each build clones the
//!   repository afresh, so Docker's cache never hits): ten minutes for 300
//!   tasks. So the `n` tasks of one generation live side by side in one
//!   repository (each in its own `pkg/module.py`, each test file named
//!   after it) at one commit; they share `base_commit` and so one image,
//!   which [`prepare_images`] builds once (about 2 s for 300 tasks).
//!   Grading runs only the task's own test file, and the gold patch touches
//!   only the task's own module, so the tasks stay independent.
//! - Deterministic and prefix-stable: tasks are drawn in order from one
//!   seeded stream, so the first `k` tasks of `n` are the same for every
//!   `n >= k` (their base_commit is the repository's, which depends on `n`).

use super::image;
use super::suite;
use super::task::Task;
use anyhow::{bail, Context, Result};
use bollard::Docker;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The `repo` field of every micro task.
pub const REPO: &str = "appliance/micro";

/// Bumped whenever the generator's output changes, so the cached
/// repositories (keyed by content) never mix generations.
const GENERATOR_VERSION: &str = "micro-v2";

/// The five bug templates, in the order tasks cycle through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Template {
    /// `return a - b` where `a + b` is meant.
    Arith,
    /// `RATE = 3` where the tests need 5.
    Constant,
    /// `x < 10` where `x <= 10` is meant (or the other way round).
    Compare,
    /// `"Helo, "` where `"Hello, "` is meant.
    String,
    /// `items[1]` where `items[0]` is meant.
    Index,
}

pub const TEMPLATES: [Template; 5] = [Template::Arith, Template::Constant, Template::Compare, Template::String, Template::Index];

impl Template {
    pub fn name(self) -> &'static str {
        match self {
            Template::Arith => "arith",
            Template::Constant => "constant",
            Template::Compare => "compare",
            Template::String => "string",
            Template::Index => "index",
        }
    }
}

/// One generated task before it is written to disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    pub index: usize,
    pub template: Template,
    pub instance_id: String,
    /// The module with the bug, relative to the repository root.
    pub path: String,
    /// The module's text, with the bug.
    pub source: String,
    /// The line content (no indentation) that is wrong, and what it must be.
    pub old: String,
    pub new: String,
    /// The test file the test patch adds, and its text.
    pub test_path: String,
    pub test_source: String,
    /// The call the issue shows, what it returns with the bug (as `print`
    /// shows it), and what it should return.
    pub call: String,
    pub actual: String,
    pub expected: String,
    pub fail_to_pass: Vec<String>,
    pub pass_to_pass: Vec<String>,
    pub problem_statement: String,
}

impl Generated {
    /// The module as the gold patch leaves it.
    pub fn fixed_source(&self) -> String {
        self.source.replacen(&self.old, &self.new, 1)
    }

    /// The gold patch: one hunk over the whole (tiny) module.
    pub fn gold_patch(&self) -> String {
        let (before, after) = (self.source.lines().collect::<Vec<_>>(), self.fixed_source());
        let after: Vec<&str> = after.lines().collect();
        let p = &self.path;
        let mut s = format!("diff --git a/{p} b/{p}\n--- a/{p}\n+++ b/{p}\n@@ -1,{} +1,{} @@\n", before.len(), after.len());
        for (b, a) in before.iter().zip(&after) {
            if b == a {
                let _ = writeln!(s, " {b}");
            } else {
                let _ = writeln!(s, "-{b}\n+{a}");
            }
        }
        s
    }

    /// The test patch: the test file, added.
    pub fn test_patch(&self) -> String {
        let p = &self.test_path;
        let lines: Vec<&str> = self.test_source.lines().collect();
        let mut s = format!("diff --git a/{p} b/{p}\nnew file mode 100644\n--- /dev/null\n+++ b/{p}\n@@ -0,0 +1,{} @@\n", lines.len());
        for l in lines {
            let _ = writeln!(s, "+{l}");
        }
        s
    }
}

const PACKAGES: &[&str] = &["shop", "bank", "geo", "calc", "stats", "text", "units", "grid", "clock", "cart", "score", "game", "mail", "store", "fleet", "farm", "hotel", "quiz", "ticket", "audio", "photo", "trade", "sport", "water"];
const MODULES: &[&str] = &["core", "util", "rules", "logic", "ops", "model", "basic", "tools", "main", "helpers", "prices", "values"];

fn pick<'a, T>(rng: &mut ChaCha8Rng, xs: &'a [T]) -> &'a T {
    &xs[rng.gen_range(0..xs.len())]
}

/// A template's draw: the module, the bug, the tests.
struct Bug {
    source: String,
    old: String,
    new: String,
    call: String,
    actual: String,
    expected: String,
    /// Names the test file imports from the module.
    imports: Vec<String>,
    /// (test name, body lines) of the FAIL_TO_PASS and the PASS_TO_PASS test.
    f2p: (String, Vec<String>),
    p2p: (String, Vec<String>),
}

fn arith_value(a: i64, op: &str, b: i64) -> i64 {
    match op {
        "+" => a + b,
        "-" => a - b,
        _ => a * b,
    }
}

fn draw_arith(rng: &mut ChaCha8Rng) -> Bug {
    const FNS: &[(&str, &str)] = &[("add", "+"), ("plus", "+"), ("total", "+"), ("subtract", "-"), ("minus", "-"), ("diff", "-"), ("multiply", "*"), ("times", "*"), ("product", "*")];
    const PARAMS: &[(&str, &str)] = &[("a", "b"), ("x", "y"), ("m", "n"), ("p", "q"), ("left", "right")];
    let &(f, good) = pick(rng, FNS);
    let bad = *pick(rng, &["+", "-", "*"].iter().copied().filter(|o| *o != good).collect::<Vec<_>>());
    // the other function is correct and its line differs from the buggy one
    let others: Vec<(&str, &str)> = FNS.iter().copied().filter(|(g, o)| *g != f && *o != bad).collect();
    let &(g, gop) = pick(rng, &others);
    let (p, q) = *pick(rng, PARAMS);
    let (p2, q2) = *pick(rng, PARAMS);
    let (x, y) = loop {
        let (x, y) = (rng.gen_range(2..=9), rng.gen_range(2..=9));
        if arith_value(x, good, y) != arith_value(x, bad, y) {
            break (x, y);
        }
    };
    let (u, v) = (rng.gen_range(2..=9), rng.gen_range(2..=9));
    let buggy = format!("def {f}({p}, {q}):\n    return {p} {bad} {q}\n");
    let other = format!("def {g}({p2}, {q2}):\n    return {p2} {gop} {q2}\n");
    let source = if rng.gen_bool(0.5) { format!("{buggy}\n\n{other}") } else { format!("{other}\n\n{buggy}") };
    Bug {
        source,
        old: format!("return {p} {bad} {q}"),
        new: format!("return {p} {good} {q}"),
        call: format!("{f}({x}, {y})"),
        actual: arith_value(x, bad, y).to_string(),
        expected: arith_value(x, good, y).to_string(),
        imports: vec![f.to_string(), g.to_string()],
        f2p: (format!("test_{f}"), vec![format!("assert {f}({x}, {y}) == {}", arith_value(x, good, y))]),
        p2p: (format!("test_{g}"), vec![format!("assert {g}({u}, {v}) == {}", arith_value(u, gop, v))]),
    }
}

fn draw_constant(rng: &mut ChaCha8Rng) -> Bug {
    const NAMES: &[&str] = &["RATE", "PRICE", "FACTOR", "SCALE", "STEP", "BONUS", "FEE", "SIZE", "WEIGHT", "UNIT", "LIMIT", "DEPTH"];
    const FNS: &[&str] = &["cost", "total", "charge", "scaled", "amount", "value_of"];
    let name = *pick(rng, NAMES);
    let f = *pick(rng, FNS);
    let bad: i64 = rng.gen_range(2..=12);
    let good = loop {
        let g = rng.gen_range(2..=12);
        if g != bad {
            break g;
        }
    };
    let k: i64 = rng.gen_range(2..=9);
    Bug {
        source: format!("{name} = {bad}\n\n\ndef {f}(n):\n    return n * {name}\n"),
        old: format!("{name} = {bad}"),
        new: format!("{name} = {good}"),
        call: format!("{f}({k})"),
        actual: (k * bad).to_string(),
        expected: (k * good).to_string(),
        imports: vec![f.to_string()],
        f2p: (format!("test_{f}"), vec![format!("assert {f}({k}) == {}", k * good)]),
        p2p: (format!("test_{f}_zero"), vec![format!("assert {f}(0) == 0")]),
    }
}

fn py_bool(b: bool) -> String {
    if b { "True" } else { "False" }.to_string()
}

fn draw_compare(rng: &mut ChaCha8Rng) -> Bug {
    // (name, true below the limit?)
    const FNS: &[(&str, bool)] = &[("is_small", true), ("is_low", true), ("fits", true), ("under_limit", true), ("is_short", true), ("is_big", false), ("is_high", false), ("is_long", false), ("over_limit", false), ("exceeds", false)];
    const VARS: &[&str] = &["x", "n", "size", "value", "age"];
    let &(f, below) = pick(rng, FNS);
    let v = *pick(rng, VARS);
    let (strict, loose) = if below { ("<", "<=") } else { (">", ">=") };
    let (good, bad) = if rng.gen_bool(0.5) { (loose, strict) } else { (strict, loose) };
    let limit: i64 = rng.gen_range(10..=99);
    let d: i64 = rng.gen_range(1..=5);
    let at_limit = good == loose;
    Bug {
        source: format!("def {f}({v}):\n    return {v} {bad} {limit}\n"),
        old: format!("return {v} {bad} {limit}"),
        new: format!("return {v} {good} {limit}"),
        call: format!("{f}({limit})"),
        actual: py_bool(!at_limit),
        expected: py_bool(at_limit),
        imports: vec![f.to_string()],
        f2p: (format!("test_{f}_limit"), vec![format!("assert {f}({limit}) is {}", py_bool(at_limit))]),
        p2p: (format!("test_{f}"), vec![format!("assert {f}({}) is {}", limit - d, py_bool(below)), format!("assert {f}({}) is {}", limit + d, py_bool(!below))]),
    }
}

/// A misspelling of `w` (never `w` itself, never empty).
fn typo(rng: &mut ChaCha8Rng, w: &str) -> String {
    let c: Vec<char> = w.chars().collect();
    loop {
        let t: String = match rng.gen_range(0..3) {
            0 => {
                // drop a letter after the first
                let i = rng.gen_range(1..c.len());
                c.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, ch)| *ch).collect()
            }
            1 => {
                // double a letter
                let i = rng.gen_range(0..c.len());
                c.iter().enumerate().flat_map(|(j, ch)| if j == i { vec![*ch, *ch] } else { vec![*ch] }).collect()
            }
            _ => w.to_lowercase(),
        };
        if t != w && !t.is_empty() {
            return t;
        }
    }
}

fn draw_string(rng: &mut ChaCha8Rng) -> Bug {
    const FNS: &[&str] = &["greet", "welcome", "salute", "address", "hail"];
    const WORDS: &[&str] = &["Hello", "Hi", "Welcome", "Goodbye", "Thanks", "Dear", "Hey", "Cheers"];
    const VARS: &[&str] = &["name", "who", "person", "user"];
    const NAMES: &[&str] = &["Ann", "Bob", "Eve", "Sam", "Zoe", "Max", "Ida", "Tom"];
    let f = *pick(rng, FNS);
    let good = *pick(rng, WORDS);
    let bad = typo(rng, good);
    let v = *pick(rng, VARS);
    let who = *pick(rng, NAMES);
    let other = *pick(rng, NAMES);
    Bug {
        source: format!("def {f}({v}):\n    return \"{bad}, \" + {v}\n"),
        old: format!("return \"{bad}, \" + {v}"),
        new: format!("return \"{good}, \" + {v}"),
        call: format!("{f}(\"{who}\")"),
        actual: format!("{bad}, {who}"),
        expected: format!("{good}, {who}"),
        imports: vec![f.to_string()],
        f2p: (format!("test_{f}"), vec![format!("assert {f}(\"{who}\") == \"{good}, {who}\"")]),
        p2p: (format!("test_{f}_ends_with_name"), vec![format!("assert {f}(\"{other}\").endswith(\", {other}\")")]),
    }
}

fn draw_index(rng: &mut ChaCha8Rng) -> Bug {
    const FNS: &[(&str, i64)] = &[("first", 0), ("head", 0), ("front", 0), ("oldest", 0), ("second", 1), ("third", 2), ("last", -1), ("final", -1), ("newest", -1)];
    const VARS: &[&str] = &["items", "xs", "values", "seq", "row", "data", "nums", "queue", "names", "parts"];
    let &(f, good) = pick(rng, FNS);
    let bad = if rng.gen_bool(0.5) { good + 1 } else { good - 1 };
    let bad = if good == -1 && bad == 0 { -2 } else { bad };
    let v = *pick(rng, VARS);
    let mut list: Vec<i64> = vec![];
    while list.len() < 5 {
        let x = rng.gen_range(1..=99);
        if !list.contains(&x) {
            list.push(x);
        }
    }
    let at = |i: i64| list[i.rem_euclid(list.len() as i64) as usize];
    let shown = list.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
    // both lists are long enough for every index drawn (-2 to 3)
    let same: i64 = rng.gen_range(1..=99);
    Bug {
        source: format!("def {f}({v}):\n    return {v}[{bad}]\n"),
        old: format!("return {v}[{bad}]"),
        new: format!("return {v}[{good}]"),
        call: format!("{f}([{shown}])"),
        actual: at(bad).to_string(),
        expected: at(good).to_string(),
        imports: vec![f.to_string()],
        f2p: (format!("test_{f}"), vec![format!("assert {f}([{shown}]) == {}", at(good))]),
        p2p: (format!("test_{f}_same"), vec![format!("assert {f}([{same}, {same}, {same}, {same}]) == {same}")]),
    }
}

fn draw(template: Template, rng: &mut ChaCha8Rng) -> Bug {
    match template {
        Template::Arith => draw_arith(rng),
        Template::Constant => draw_constant(rng),
        Template::Compare => draw_compare(rng),
        Template::String => draw_string(rng),
        Template::Index => draw_index(rng),
    }
}

/// A micro task family: how much the tasks vary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Names, constants, operators and paths drawn from wide lists; every
    /// task has its own module in one shared repository. Solving a new task
    /// means copying its path and lines from the issue, which a model
    /// trained from scratch learns slowly.
    Wide,
    /// Ten fixed bugs (two per template) at five fixed paths; only the
    /// symptoms' arguments are drawn. Tasks are grouped into repositories of
    /// at most one task per path (one image each). A held-out task repeats a
    /// bug seen in training with other arguments: what a tiny model trained
    /// from scratch learns in minutes.
    Small,
}

/// The small family's bugs: (template, path, buggy module, old line, new line).
const SMALL: [(Template, &str, &str, &str, &str); 10] = [
    (Template::Arith, "calc/arith.py", "def add(a, b):\n    return a - b\n\n\ndef double(a):\n    return a * 2\n", "return a - b", "return a + b"),
    (Template::Arith, "calc/arith.py", "def times(a, b):\n    return a + b\n\n\ndef double(a):\n    return a * 2\n", "return a + b", "return a * b"),
    (Template::Constant, "shop/rates.py", "RATE = 3\n\n\ndef cost(n):\n    return n * RATE\n", "RATE = 3", "RATE = 5"),
    (Template::Constant, "shop/rates.py", "FEE = 2\n\n\ndef charge(n):\n    return n * FEE\n", "FEE = 2", "FEE = 4"),
    (Template::Compare, "util/checks.py", "def is_small(x):\n    return x < 10\n", "return x < 10", "return x <= 10"),
    (Template::Compare, "util/checks.py", "def is_big(x):\n    return x >= 10\n", "return x >= 10", "return x > 10"),
    (Template::String, "text/greet.py", "def greet(name):\n    return \"Helo, \" + name\n", "return \"Helo, \" + name", "return \"Hello, \" + name"),
    (Template::String, "text/greet.py", "def thank(name):\n    return \"Thanx, \" + name\n", "return \"Thanx, \" + name", "return \"Thanks, \" + name"),
    (Template::Index, "data/lists.py", "def first(items):\n    return items[1]\n", "return items[1]", "return items[0]"),
    (Template::Index, "data/lists.py", "def last(items):\n    return items[0]\n", "return items[0]", "return items[-1]"),
];

/// Bug `k` of the small family with drawn symptom arguments.
fn draw_small(k: usize, rng: &mut ChaCha8Rng) -> Bug {
    let (_, _, source, old, new) = SMALL[k];
    let (x, y) = (rng.gen_range(2..=9i64), rng.gen_range(2..=9i64));
    let name = *pick(rng, &["Ann", "Bob", "Eve", "Sam", "Zoe", "Max", "Ida", "Tom"]);
    let list: Vec<i64> = (0..3).map(|i| rng.gen_range(1..=30) + 30 * i).collect();
    let shown = format!("[{}, {}, {}]", list[0], list[1], list[2]);
    let (f, call, actual, expected, p2p): (&str, String, String, String, (String, Vec<String>)) = match k {
        0 => ("add", format!("add({x}, {y})"), (x - y).to_string(), (x + y).to_string(), ("test_double".into(), vec![format!("assert double({x}) == {}", 2 * x)])),
        1 => ("times", format!("times({x}, {y})"), (x + y).to_string(), (x * y).to_string(), ("test_double".into(), vec![format!("assert double({y}) == {}", 2 * y)])),
        2 => ("cost", format!("cost({x})"), (3 * x).to_string(), (5 * x).to_string(), ("test_cost_zero".into(), vec!["assert cost(0) == 0".into()])),
        3 => ("charge", format!("charge({x})"), (2 * x).to_string(), (4 * x).to_string(), ("test_charge_zero".into(), vec!["assert charge(0) == 0".into()])),
        4 => ("is_small", "is_small(10)".into(), "False".into(), "True".into(), ("test_is_small_away_from_the_limit".into(), vec![format!("assert is_small({x}) is True"), format!("assert is_small({}) is False", 10 + y)])),
        5 => ("is_big", "is_big(10)".into(), "True".into(), "False".into(), ("test_is_big_away_from_the_limit".into(), vec![format!("assert is_big({}) is True", 10 + y), format!("assert is_big({x}) is False")])),
        6 => ("greet", format!("greet(\"{name}\")"), format!("Helo, {name}"), format!("Hello, {name}"), ("test_greet_ends_with_name".into(), vec![format!("assert greet(\"{name}\").endswith(\", {name}\")")])),
        7 => ("thank", format!("thank(\"{name}\")"), format!("Thanx, {name}"), format!("Thanks, {name}"), ("test_thank_ends_with_name".into(), vec![format!("assert thank(\"{name}\").endswith(\", {name}\")")])),
        8 => ("first", format!("first({shown})"), list[1].to_string(), list[0].to_string(), ("test_first_same".into(), vec![format!("assert first([{x}, {x}, {x}]) == {x}")])),
        _ => ("last", format!("last({shown})"), list[0].to_string(), list[2].to_string(), ("test_last_same".into(), vec![format!("assert last([{y}, {y}, {y}]) == {y}")])),
    };
    let quoted = |v: &str| if SMALL[k].0 == Template::String { format!("\"{v}\"") } else { v.to_string() };
    let imports = if k <= 1 { vec![f.to_string(), "double".to_string()] } else { vec![f.to_string()] };
    Bug {
        source: source.into(),
        old: old.into(),
        new: new.into(),
        f2p: (format!("test_{f}"), vec![format!("assert {call} == {}", quoted(&expected))]),
        call,
        actual,
        expected,
        imports,
        p2p,
    }
}

/// The first `n` tasks of the small family drawn with `seed`, and the
/// repository group of each (no two tasks of a group share a path).
pub fn generate_small(seed: u64, n: usize) -> (Vec<Generated>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5A11);
    let mut out = Vec::with_capacity(n);
    let mut groups: Vec<HashSet<&'static str>> = vec![];
    let mut group_of = Vec::with_capacity(n);
    for index in 0..n {
        let k = rng.gen_range(0..SMALL.len());
        let (template, path, ..) = SMALL[k];
        let g = match groups.iter().position(|used| !used.contains(path)) {
            Some(g) => g,
            None => {
                groups.push(HashSet::new());
                groups.len() - 1
            }
        };
        groups[g].insert(path);
        group_of.push(g);
        let b = draw_small(k, &mut rng);
        let (pkg, module) = path.trim_end_matches(".py").split_once('/').unwrap_or(("pkg", "module"));
        out.push(assemble(index, template, format!("micro-small-{seed}-{index:04}-{}", template.name()), pkg, module, b));
    }
    (out, group_of)
}

/// The issue text: the symptom, then the fix in the form the canonical
/// solution copies from.
fn issue(path: &str, b: &Bug, template: Template) -> String {
    let q = |s: &str| if template == Template::String { format!("\"{s}\"") } else { s.to_string() };
    format!("`{}` returns {} but should return {}.\nFix: in {path} replace '{}' with '{}'.\n", b.call, q(&b.actual), q(&b.expected), b.old, b.new)
}

/// A drawn bug as a task: its test file (the FAIL_TO_PASS and PASS_TO_PASS
/// tests) beside `path`, and the issue.
fn assemble(index: usize, template: Template, instance_id: String, pkg: &str, module: &str, b: Bug) -> Generated {
    let path = format!("{pkg}/{module}.py");
    let test_path = format!("tests/test_{pkg}_{module}.py");
    let mut test_source = format!("from {pkg}.{module} import {}\n", b.imports.join(", "));
    for (name, body) in [&b.f2p, &b.p2p] {
        let _ = write!(test_source, "\n\ndef {name}():\n");
        for l in body {
            let _ = writeln!(test_source, "    {l}");
        }
    }
    Generated {
        index,
        template,
        instance_id,
        problem_statement: issue(&path, &b, template),
        fail_to_pass: vec![format!("{test_path}::{}", b.f2p.0)],
        pass_to_pass: vec![format!("{test_path}::{}", b.p2p.0)],
        path,
        source: b.source,
        old: b.old,
        new: b.new,
        test_path,
        test_source,
        call: b.call,
        actual: b.actual,
        expected: b.expected,
    }
}

/// The first `n` tasks drawn with `seed` (no disk access).
pub fn generate(seed: u64, n: usize) -> Vec<Generated> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut paths: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(n);
    for index in 0..n {
        let template = TEMPLATES[index % TEMPLATES.len()];
        let mut tries = 0;
        let (pkg, module) = loop {
            let mut pkg = pick(&mut rng, PACKAGES).to_string();
            if tries >= 8 {
                // the plain names are taken: number the package
                pkg = format!("{pkg}{}", rng.gen_range(2..=999));
            }
            let module = pick(&mut rng, MODULES).to_string();
            if paths.insert(format!("{pkg}/{module}.py")) {
                break (pkg, module);
            }
            tries += 1;
        };
        let b = loop {
            let b = draw(template, &mut rng);
            if b.source.matches(&b.old).count() == 1 && !b.old.contains('\'') && !b.new.contains('\'') {
                break b;
            }
        };
        out.push(assemble(index, template, format!("micro-{seed}-{index:04}-{}", template.name()), &pkg, &module, b));
    }
    out
}

/// The repository's own test runner, at its root.
pub const RUNNER_PATH: &str = "run_tests.py";

/// The test runner: the test functions of each file named, in file order,
/// one pytest `-rA` style line each (`PASSED path::name`, `FAILED
/// path::name - why`), so the usual log parser reads it. Standard library
/// only, because pytest's start-up (about 0.3 s of CPU) is ten times the
/// tests' own time, and a rollout grades every episode.
const RUNNER_SOURCE: &str = r#"# Run the test functions of the named files; one PASSED/FAILED line each.
import importlib.util
import sys
import traceback


def first_line(e):
    lines = str(e).splitlines()
    return "%s: %s" % (type(e).__name__, lines[0]) if lines else type(e).__name__


failed = 0
for i, path in enumerate(sys.argv[1:]):
    try:
        spec = importlib.util.spec_from_file_location("micro_tests_%d" % i, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except BaseException as e:
        traceback.print_exc()
        print("ERROR %s - %s" % (path, first_line(e)))
        failed += 1
        continue
    for name, f in list(vars(module).items()):
        if name.startswith("test") and callable(f):
            try:
                f()
                print("PASSED %s::%s" % (path, name))
            except BaseException as e:
                traceback.print_exc()
                print("FAILED %s::%s - %s" % (path, name, first_line(e)))
                failed += 1
sys.exit(1 if failed else 0)
"#;

/// The repository's files: the test runner, and each task's package
/// `__init__.py` and module.
fn repo_files(gens: &[Generated]) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    files.insert(RUNNER_PATH.to_string(), RUNNER_SOURCE.to_string());
    for g in gens {
        let pkg = g.path.split('/').next().unwrap_or_default();
        files.insert(format!("{pkg}/__init__.py"), String::new());
        files.insert(g.path.clone(), g.source.clone());
    }
    files
}

/// Write the repository (if not already there) and return its directory
/// and commit.
fn materialize(seed: u64, n: usize, files: &BTreeMap<String, String>, root: &Path) -> Result<(PathBuf, String)> {
    let mut parts: Vec<&[u8]> = vec![GENERATOR_VERSION.as_bytes()];
    for (p, c) in files {
        parts.push(p.as_bytes());
        parts.push(c.as_bytes());
    }
    let h = super::content_hash(&parts);
    let name = format!("micro-s{seed}-n{n}-{}", &h[..10]);
    let dir = root.join(&name);
    if dir.join(".git").is_dir() {
        if let Ok(c) = suite::git(&dir, &["rev-parse", "HEAD"]) {
            return Ok((dir, c));
        }
    }
    let tmp = root.join(format!(".{name}.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    for (path, content) in files {
        let p = tmp.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&p, content).with_context(|| format!("writing {}", p.display()))?;
    }
    suite::git(&tmp, &["init", "-q"])?;
    suite::git(&tmp, &["add", "-A"])?;
    suite::git(&tmp, &["commit", "-q", "-m", &format!("micro tasks: seed {seed}, {n} tasks")])?;
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => {}
        Err(_) if dir.join(".git").is_dir() => {
            // another process wrote the same content first
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Err(e) => return Err(e).with_context(|| format!("moving {} to {}", tmp.display(), dir.display())),
    }
    let c = suite::git(&dir, &["rev-parse", "HEAD"])?;
    Ok((dir, c))
}

/// A generated task as a task of the repository at `dir`, `base_commit`.
fn to_task(g: &Generated, dir: &Path, base_commit: &str) -> Task {
    Task {
        instance_id: g.instance_id.clone(),
        repo: REPO.into(),
        base_commit: base_commit.to_string(),
        problem_statement: g.problem_statement.clone(),
        patch: g.gold_patch(),
        test_patch: g.test_patch(),
        fail_to_pass: g.fail_to_pass.clone(),
        pass_to_pass: g.pass_to_pass.clone(),
        version: Some("1.0".into()),
        image_name: None,
        test_cmd: Some(format!("python3 {RUNNER_PATH} {}", g.test_path)),
        env_setup: None,
        repo_path: Some(dir.to_path_buf()),
    }
}

/// `n` micro tasks drawn with `seed`, their repository written under
/// `root` when missing. All share one repository and base_commit.
pub fn micro_tasks(seed: u64, n: usize, root: &Path) -> Result<Vec<Task>> {
    if n == 0 {
        return Ok(vec![]);
    }
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let gens = generate(seed, n);
    let (dir, base_commit) = materialize(seed, n, &repo_files(&gens), root).with_context(|| format!("writing the micro tasks' repository (seed {seed}, {n} tasks) under {}", root.display()))?;
    Ok(gens
        .iter()
        .map(|g| to_task(g, &dir, &base_commit))
        .collect())
}

/// `n` tasks of `family` drawn with `seed`; their repositories (one for
/// the wide family, one per group for the small one) written under `root`
/// when missing.
pub fn family_tasks(family: Family, seed: u64, n: usize, root: &Path) -> Result<Vec<Task>> {
    if family == Family::Wide {
        return micro_tasks(seed, n, root);
    }
    if n == 0 {
        return Ok(vec![]);
    }
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let (gens, group_of) = generate_small(seed, n);
    let n_groups = group_of.iter().max().map_or(0, |g| g + 1);
    let mut repos = Vec::with_capacity(n_groups);
    for g in 0..n_groups {
        let members: Vec<Generated> = gens.iter().zip(&group_of).filter(|(_, &k)| k == g).map(|(x, _)| x.clone()).collect();
        let r = materialize(seed, n, &repo_files(&members), root).with_context(|| format!("writing micro repository {g} (small family, seed {seed}) under {}", root.display()))?;
        repos.push(r);
    }
    Ok(gens
        .iter()
        .zip(&group_of)
        .map(|(g, &k)| to_task(g, &repos[k].0, &repos[k].1))
        .collect())
}

/// Split into (train, held-out): the last `held_out` tasks are held out
/// (all of them when there are fewer). With tasks in generation order, a
/// held-out tail of at least five covers every template.
pub fn split(mut tasks: Vec<Task>, held_out: usize) -> (Vec<Task>, Vec<Task>) {
    let at = tasks.len().saturating_sub(held_out);
    let held = tasks.split_off(at);
    (tasks, held)
}

/// The one-line change of a micro task's gold patch: (path, old, new), the
/// old and new lines without their indentation.
pub fn fix_of(task: &Task) -> Result<(String, String, String)> {
    let mut path = None;
    let (mut old, mut new) = (vec![], vec![]);
    for l in task.patch.lines() {
        if let Some(p) = l.strip_prefix("+++ ") {
            if path.is_some() {
                bail!("task {}: the gold patch changes more than one file", task.instance_id);
            }
            path = Some(p.strip_prefix("b/").unwrap_or(p).to_string());
            continue;
        }
        if l.starts_with("--- ") || l.starts_with("diff ") || l.starts_with("@@") {
            continue;
        }
        if let Some(x) = l.strip_prefix('-') {
            old.push(x.trim().to_string());
        } else if let Some(x) = l.strip_prefix('+') {
            new.push(x.trim().to_string());
        }
    }
    let Some(path) = path else { bail!("task {}: the gold patch names no file", task.instance_id) };
    if old.len() != 1 || new.len() != 1 {
        bail!("task {}: the gold patch is not a one-line change ({} lines out, {} in)", task.instance_id, old.len(), new.len());
    }
    let (old, new) = (old.remove(0), new.remove(0));
    if old.is_empty() || [&old, &new].iter().any(|s| s.contains('\'')) {
        bail!("task {}: the changed line is empty or holds a single quote; no canonical replace", task.instance_id);
    }
    Ok((path, old, new))
}

/// The canonical solution as tool commands: `open PATH`, `replace 'OLD'
/// 'NEW'`, `submit`.
pub fn demonstration_commands(task: &Task) -> Result<Vec<String>> {
    let (path, old, new) = fix_of(task)?;
    Ok(vec![format!("open {path}"), format!("replace '{old}' '{new}'"), "submit".into()])
}

/// The reasoning line before each canonical command: short and fixed.
pub const DEMONSTRATION_REASONS: [&str; 3] = ["Open the file.", "Fix the line.", "Done."];

/// A reply: one reasoning line, then the command in a fenced block.
pub fn reply_text(reason: &str, command: &str, fence: &str) -> String {
    format!("{reason}\n{fence}\n{command}\n{fence}")
}

/// The canonical solution as the replies of a demonstration episode.
pub fn demonstration_replies(task: &Task, fence: &str) -> Result<Vec<String>> {
    let cmds = demonstration_commands(task)?;
    Ok(DEMONSTRATION_REASONS.iter().zip(&cmds).map(|(r, c)| reply_text(r, c, fence)).collect())
}

/// Each task's image, in task order. Micro tasks that share a repository
/// and commit share one image, built once (about 2 s) instead of once per
/// task; other tasks go through [`image::ensure_task_image`] as usual.
pub async fn prepare_images(docker: &Docker, tasks: &[Task]) -> Result<Vec<String>> {
    let mut built: HashMap<(PathBuf, String), String> = HashMap::new();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        let shared = match (&t.repo_path, t.repo == REPO && t.env_setup.is_none() && t.image_name.is_none()) {
            (Some(p), true) => Some((p.clone(), t.base_commit.clone())),
            _ => None,
        };
        let Some(key) = shared else {
            out.push(image::ensure_task_image(docker, t, None).await?);
            continue;
        };
        if let Some(tag) = built.get(&key) {
            out.push(tag.clone());
            continue;
        }
        // The image holds the repository at base_commit; the instance id
        // only names the tag, so name it after the repository.
        let repo = Task { instance_id: "micro-workspace".into(), ..t.clone() };
        let tag = image::ensure_task_image(docker, &repo, None).await.with_context(|| format!("the micro tasks' image (from task {})", t.instance_id))?;
        built.insert(key, tag.clone());
        out.push(tag);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_small_family_groups_tasks_by_path_and_states_each_fix() {
        let (gens, group_of) = generate_small(3, 60);
        assert_eq!(gens.len(), 60);
        let mut seen: HashSet<(usize, String)> = HashSet::new();
        for (g, &k) in gens.iter().zip(&group_of) {
            assert!(seen.insert((k, g.path.clone())), "two tasks of group {k} share {}", g.path);
            assert_eq!(g.source.matches(&g.old).count(), 1, "{}", g.instance_id);
            assert_ne!(g.fail_to_pass, g.pass_to_pass, "{}: one test would shadow the other", g.instance_id);
            let defs = g.test_source.matches("\ndef ").count();
            assert_eq!(defs, 2, "{}", g.test_source);
            assert!(g.problem_statement.contains(&format!("Fix: in {} replace '{}' with '{}'.", g.path, g.old, g.new)), "{}", g.problem_statement);
            assert!(g.fixed_source().contains(&g.new) && !g.old.contains('\'') && !g.new.contains('\''));
        }
        // every bug appears, and groups are filled before new ones open
        let bugs: HashSet<&str> = gens.iter().map(|g| g.old.as_str()).collect();
        assert_eq!(bugs.len(), SMALL.iter().map(|b| b.3).collect::<HashSet<_>>().len());
        assert!(group_of.iter().max().unwrap() + 1 <= 60 / 5 + 6);
        // deterministic, prefix-stable
        assert_eq!(generate_small(3, 20).0[..], gens[..20]);
        let d = tempfile::tempdir().unwrap();
        let tasks = family_tasks(Family::Small, 3, 12, d.path()).unwrap();
        assert_eq!(tasks.len(), 12);
        for t in &tasks {
            let (path, old, new) = fix_of(t).unwrap();
            let src = std::fs::read_to_string(t.repo_path.as_ref().unwrap().join(&path)).unwrap();
            assert!(src.contains(&old) && !src.contains(&new), "{}", t.instance_id);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_tasks_and_commits() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ta = micro_tasks(7, 20, a.path()).unwrap();
        let tb = micro_tasks(7, 20, b.path()).unwrap();
        assert_eq!(ta.len(), 20);
        let strip = |v: &[Task]| v.iter().map(|t| Task { repo_path: None, ..t.clone() }).collect::<Vec<_>>();
        assert_eq!(strip(&ta), strip(&tb));
        assert_eq!(ta[0].base_commit.len(), 40);
        assert!(ta.iter().all(|t| t.base_commit == ta[0].base_commit && t.repo_path == ta[0].repo_path));
        // written again into the same root: found, not rewritten
        let again = micro_tasks(7, 20, a.path()).unwrap();
        assert_eq!(again, ta);
        // another seed: other tasks, another commit
        let tc = micro_tasks(8, 20, a.path()).unwrap();
        assert_ne!(tc[0].base_commit, ta[0].base_commit);
        assert_ne!(tc.iter().map(|t| &t.problem_statement).collect::<Vec<_>>(), ta.iter().map(|t| &t.problem_statement).collect::<Vec<_>>());
        // the repository holds exactly the modules and packages, at that commit
        let dir = ta[0].repo_path.as_ref().unwrap();
        let listed = suite::git(dir, &["ls-files"]).unwrap();
        let gens = generate(7, 20);
        for g in &gens {
            assert!(listed.lines().any(|l| l == g.path), "{}", g.path);
            assert_eq!(std::fs::read_to_string(dir.join(&g.path)).unwrap(), g.source);
            assert!(!listed.contains(&g.test_path), "tests are hidden: {}", g.test_path);
        }
    }

    #[test]
    fn generation_is_prefix_stable() {
        let long = generate(3, 40);
        assert_eq!(generate(3, 12), long[..12].to_vec());
        assert_ne!(generate(4, 12), long[..12].to_vec());
    }

    #[test]
    fn tasks_are_varied() {
        let g = generate(11, 300);
        let distinct = |f: &dyn Fn(&Generated) -> String| g.iter().map(f).collect::<HashSet<_>>().len();
        assert_eq!(distinct(&|x| x.path.clone()), 300, "every task has its own module");
        assert_eq!(distinct(&|x| x.test_path.clone()), 300, "and its own test file");
        assert_eq!(distinct(&|x| x.instance_id.clone()), 300);
        assert_eq!(distinct(&|x| x.problem_statement.clone()), 300);
        assert!(distinct(&|x| format!("{} -> {}", x.old, x.new)) > 150, "fixes vary: {}", distinct(&|x| format!("{} -> {}", x.old, x.new)));
        assert!(distinct(&|x| x.source.clone()) > 250);
        for t in TEMPLATES {
            let of: Vec<&Generated> = g.iter().filter(|x| x.template == t).collect();
            assert_eq!(of.len(), 60, "{t:?}");
            let fixes: HashSet<_> = of.iter().map(|x| (&x.old, &x.new)).collect();
            assert!(fixes.len() >= 20, "{t:?}: {} distinct fixes", fixes.len());
        }
        // operators and constants vary inside their templates
        let ops: HashSet<_> = g.iter().filter(|x| x.template == Template::Arith).map(|x| (x.old.split(' ').nth(2).unwrap().to_string(), x.new.split(' ').nth(2).unwrap().to_string())).collect();
        assert_eq!(ops.len(), 6, "every wrong/right operator pair: {ops:?}");
        let cmp: HashSet<_> = g.iter().filter(|x| x.template == Template::Compare).map(|x| x.old.split(' ').nth(2).unwrap().to_string()).collect();
        assert_eq!(cmp.len(), 4, "{cmp:?}");
        let values: HashSet<_> = g.iter().filter(|x| x.template == Template::Constant).map(|x| x.new.clone()).collect();
        assert!(values.len() > 30);
        // many packages, and more tasks than plain names: numbered packages
        assert!(g.iter().any(|x| x.path.split('/').next().unwrap().chars().any(|c| c.is_ascii_digit())));
        // the held-out tail covers every template
        let (_, held) = split(g.iter().map(|x| Task { instance_id: x.instance_id.clone(), ..dummy() }).collect(), 10);
        for t in TEMPLATES {
            assert!(held.iter().any(|h| h.instance_id.ends_with(t.name())), "{t:?}");
        }
    }

    fn dummy() -> Task {
        Task { instance_id: String::new(), repo: REPO.into(), base_commit: String::new(), problem_statement: String::new(), patch: String::new(), test_patch: String::new(), fail_to_pass: vec![], pass_to_pass: vec![], version: None, image_name: None, test_cmd: None, env_setup: None, repo_path: None }
    }

    fn task_of(g: &Generated) -> Task {
        Task { instance_id: g.instance_id.clone(), problem_statement: g.problem_statement.clone(), patch: g.gold_patch(), test_patch: g.test_patch(), fail_to_pass: g.fail_to_pass.clone(), pass_to_pass: g.pass_to_pass.clone(), ..dummy() }
    }

    #[test]
    fn the_issue_holds_what_the_solution_copies() {
        for g in generate(5, 200) {
            let t = task_of(&g);
            let (path, old, new) = fix_of(&t).unwrap();
            assert_eq!((&path, &old, &new), (&g.path, &g.old, &g.new));
            let s = &g.problem_statement;
            assert!(s.contains(&format!("in {path} replace '{old}' with '{new}'.")), "{s}");
            assert!(s.contains(&format!("`{}` returns", g.call)) && s.contains(&g.actual) && s.contains(&g.expected), "{s}");
            assert_ne!(g.actual, g.expected, "{s}");
            assert_eq!(s.lines().count(), 2, "{s}");
            // every command's argument is in the issue, and the replace applies once
            let cmds = demonstration_commands(&t).unwrap();
            assert_eq!(cmds, vec![format!("open {path}"), format!("replace '{old}' '{new}'"), "submit".to_string()]);
            assert_eq!(g.source.matches(&old).count(), 1, "{}", g.source);
            assert_eq!(g.fixed_source().lines().count(), g.source.lines().count());
            assert!(g.source.lines().count() <= 15 && g.test_source.lines().count() <= 15);
            // the tests import only the module, and name the ids the task lists
            assert!(g.test_source.starts_with(&format!("from {} import ", g.path.trim_end_matches(".py").replace('/', "."))));
            for id in g.fail_to_pass.iter().chain(&g.pass_to_pass) {
                let (file, name) = id.split_once("::").unwrap();
                assert_eq!(file, g.test_path);
                assert!(g.test_source.contains(&format!("def {name}():")), "{id}");
            }
            assert_eq!(t.test_files(), vec![g.test_path.clone()]);
        }
    }

    #[test]
    fn patches_are_exact_diffs() {
        for g in generate(9, 25) {
            let patch = g.gold_patch();
            assert_eq!(patch.lines().filter(|l| l.starts_with('-') && !l.starts_with("---")).count(), 1, "{patch}");
            // the patch's old side is the module, its new side the fixed module
            let body: Vec<&str> = patch.lines().skip(4).collect();
            let side = |skip: char| body.iter().filter(|l| !l.starts_with(skip)).map(|l| &l[1..]).collect::<Vec<_>>().join("\n") + "\n";
            assert_eq!(side('+'), g.source);
            assert_eq!(side('-'), g.fixed_source());
            let tp = g.test_patch();
            assert!(tp.contains("--- /dev/null") && tp.contains(&format!("+++ b/{}", g.test_path)));
            let added: String = tp.lines().skip(5).map(|l| format!("{}\n", &l[1..])).collect();
            assert_eq!(added, g.test_source);
        }
    }

    #[test]
    fn replies_are_short_and_fenced() {
        let g = &generate(1, 1)[0];
        let r = demonstration_replies(&task_of(g), "```").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0], format!("Open the file.\n```\nopen {}\n```", g.path));
        assert_eq!(r[2], "Done.\n```\nsubmit\n```");
        // a task that is no one-line change has no canonical solution
        let mut t = task_of(g);
        t.patch.push_str("+extra = 1\n");
        assert!(demonstration_commands(&t).unwrap_err().to_string().contains("one-line"));
    }

    #[test]
    fn split_is_deterministic_and_disjoint() {
        let tasks: Vec<Task> = generate(2, 30).iter().map(task_of).collect();
        let (train, held) = split(tasks.clone(), 8);
        assert_eq!((train.len(), held.len()), (22, 8));
        assert_eq!(held, tasks[22..].to_vec());
        assert!(held.iter().all(|h| !train.iter().any(|t| t.instance_id == h.instance_id)));
        assert_eq!(split(tasks.clone(), 8), (train, held));
        let (train, held) = split(tasks.clone(), 100);
        assert!(train.is_empty() && held.len() == 30);
    }
}
