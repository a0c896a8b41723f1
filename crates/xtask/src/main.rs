//! `cargo run -p xtask -- <task>`: the kernel build.
//!
//! - `ptx [--check]`: compile every cuda/*.cu to ptx/<name>.ptx through NVRTC
//!   (cudarc's bindings), for compute_80; `--check` compiles in memory and
//!   fails if any committed file differs (CI's freshness check).
//! - `ptx --source FILE --out FILE [--define NAME=VAL]...`: compile one .cu
//!   file with preprocessor macros to a chosen output (variant builds for
//!   tile sweeps); ptx/ is left alone.
//! - `ptxas [--budget-spill-bytes N] [--allow-spill KERNEL=BYTES]...`: run
//!   ptxas -v on every ptx/*.ptx for sm_80 and sm_90 and fail on register
//!   spills (stores + loads) beyond the budget, or beyond a named kernel's
//!   own allowance.
//!
//! The toolchain is pinned to CUDA 12.4 from the Python package registry
//! (nvidia-cuda-nvrtc-cu12==12.4.127 and friends; see .ci/cuda-toolchain).
//! NVRTC 12.4 emits PTX ISA 8.4, loadable by drivers from R550 on. The wheel
//! directory (`.../site-packages/nvidia`) comes from `--nvidia DIR` or
//! `APPLIANCE_NVIDIA_WHEELS`. The loader only reads LD_LIBRARY_PATH at
//! start-up, so when NVRTC's directory is missing from it, the task re-runs
//! itself with it added.

use anyhow::{bail, Context, Result};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The pinned NVRTC release; compile refuses any other.
const PINNED_NVRTC: (i32, i32) = (12, 4);
const ARCH: &str = "compute_80";

/// The repository the command runs in: the nearest folder at or above the
/// working directory with cuda/, ptx/ and Cargo.toml. Not the compile-time
/// path: clones sharing one CARGO_TARGET_DIR share this binary, and it must
/// not check or rewrite another clone's kernels.
fn repo_root() -> PathBuf {
    let here = std::env::current_dir().ok();
    let found = here.as_deref().and_then(|d| d.ancestors().find(|a| a.join("cuda").is_dir() && a.join("ptx").is_dir() && a.join("Cargo.toml").is_file()).map(Path::to_path_buf));
    found.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root"))
}

fn wheels(args: &[String]) -> Result<PathBuf> {
    let from_arg = args.windows(2).find(|w| w[0] == "--nvidia").map(|w| PathBuf::from(&w[1]));
    let dir = from_arg
        .or_else(|| std::env::var_os("APPLIANCE_NVIDIA_WHEELS").map(PathBuf::from))
        .context("where are the CUDA 12.4 wheels? pass --nvidia DIR or set APPLIANCE_NVIDIA_WHEELS to .../site-packages/nvidia (bash .ci/cuda-toolchain installs them)")?;
    if !dir.join("cuda_nvrtc/lib").is_dir() {
        bail!("{}: no cuda_nvrtc/lib inside; expected the site-packages/nvidia folder of nvidia-cuda-nvrtc-cu12==12.4.127", dir.display());
    }
    Ok(dir)
}

/// Re-run this process with NVRTC's library directory on LD_LIBRARY_PATH.
fn ensure_library_path(nvidia: &Path) -> Result<()> {
    let lib = nvidia.join("cuda_nvrtc/lib");
    let current = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    if current.split(':').any(|p| Path::new(p) == lib) {
        return Ok(());
    }
    let path = if current.is_empty() { lib.display().to_string() } else { format!("{}:{current}", lib.display()) };
    let status = Command::new(std::env::current_exe()?)
        .args(std::env::args().skip(1))
        .env("LD_LIBRARY_PATH", path)
        .status()
        .context("re-running xtask with NVRTC on LD_LIBRARY_PATH")?;
    std::process::exit(status.code().unwrap_or(1));
}

fn sources(root: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root.join("cuda"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().map(|e| e == "cu").unwrap_or(false))
        .collect();
    v.sort();
    Ok(v)
}

fn compile(src: &Path, root: &Path, nvidia: &Path, defines: &[String]) -> Result<String> {
    let text = std::fs::read_to_string(src).with_context(|| format!("reading {}", src.display()))?;
    let mut options = vec!["--std=c++17".to_string(), "-default-device".to_string()];
    options.extend(defines.iter().map(|d| format!("-D{d}")));
    let opts = CompileOptions {
        arch: Some(ARCH),
        include_paths: vec![
            root.join("cuda").display().to_string(),
            nvidia.join("cuda_runtime/include").display().to_string(),
            nvidia.join("cuda_cccl/include").display().to_string(),
        ],
        options,
        name: src.file_name().map(|n| n.to_string_lossy().to_string()),
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(text, opts).map_err(|e| anyhow::anyhow!("{}: {e:?}", src.display()))?;
    Ok(ptx.to_src())
}

fn task_ptx(args: &[String]) -> Result<()> {
    let nvidia = wheels(args)?;
    ensure_library_path(&nvidia)?;
    // SAFETY: plain FFI calls with valid out-pointers; is_culib_present
    // checks the library loads before anything else touches it.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        bail!("libnvrtc could not be loaded from {}", nvidia.join("cuda_nvrtc/lib").display());
    }
    let (mut major, mut minor) = (0, 0);
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if (major, minor) != PINNED_NVRTC {
        bail!("NVRTC {major}.{minor} found; the build is pinned to {}.{}", PINNED_NVRTC.0, PINNED_NVRTC.1);
    }
    let check = args.iter().any(|a| a == "--check");
    let root = repo_root();
    let value_of = |flag: &str| args.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone());
    let defines: Vec<String> = args.windows(2).filter(|w| w[0] == "--define").map(|w| w[1].clone()).collect();
    for d in &defines {
        let name = d.split('=').next().unwrap_or("");
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("--define takes NAME or NAME=VALUE, got {d:?}");
        }
    }
    match (value_of("--source"), value_of("--out")) {
        (Some(src), Some(out)) => {
            if check {
                bail!("--check verifies ptx/ against cuda/; it does not combine with --source/--out");
            }
            let ptx = compile(Path::new(&src), &root, &nvidia, &defines)?;
            let out = PathBuf::from(out);
            let tmp = out.with_extension("ptx.tmp");
            std::fs::write(&tmp, &ptx).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &out)?;
            println!("{src} {} -> {} ({} lines)", defines.join(" "), out.display(), ptx.lines().count());
            return Ok(());
        }
        (None, None) if defines.is_empty() => {}
        _ => bail!("--source FILE and --out FILE go together (and --define only with them): variants never overwrite ptx/"),
    }
    let mut stale = vec![];
    for src in sources(&root)? {
        let stem = src.file_stem().unwrap().to_string_lossy().to_string();
        let ptx = compile(&src, &root, &nvidia, &[])?;
        let out = root.join("ptx").join(format!("{stem}.ptx"));
        if check {
            let committed = std::fs::read_to_string(&out).unwrap_or_default();
            if committed != ptx {
                stale.push(out.display().to_string());
            }
        } else {
            let tmp = out.with_extension("ptx.tmp");
            std::fs::write(&tmp, &ptx)?;
            std::fs::rename(&tmp, &out)?;
            println!("{} -> {} ({} lines)", src.display(), out.display(), ptx.lines().count());
        }
    }
    if check {
        // Also fail on committed PTX with no source.
        for e in std::fs::read_dir(root.join("ptx"))? {
            let p = e?.path();
            if p.extension().map(|x| x == "ptx").unwrap_or(false) && !root.join("cuda").join(p.file_stem().unwrap()).with_extension("cu").exists() {
                stale.push(format!("{} (no cuda/ source)", p.display()));
            }
        }
        if !stale.is_empty() {
            bail!("ptx/ is stale; run `cargo run -p xtask -- ptx` and commit:\n  {}", stale.join("\n  "));
        }
        println!("ptx/ is fresh: matches NVRTC {major}.{minor} output for every cuda/*.cu");
    }
    Ok(())
}

fn task_ptxas(args: &[String]) -> Result<()> {
    let nvidia = wheels(args)?;
    let budget: u64 = args
        .windows(2)
        .find(|w| w[0] == "--budget-spill-bytes")
        .map(|w| w[1].parse())
        .transpose()
        .context("--budget-spill-bytes takes a number")?
        .unwrap_or(0);
    // Named exceptions, `--allow-spill KERNEL=BYTES` (spill stores + loads
    // per arch): a kernel measured faster with a small spill than without.
    let mut allowed: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for w in args.windows(2).filter(|w| w[0] == "--allow-spill") {
        let (k, b) = w[1].split_once('=').with_context(|| format!("--allow-spill takes KERNEL=BYTES, got {:?}", w[1]))?;
        allowed.insert(k.to_string(), b.parse().with_context(|| format!("--allow-spill {}: {b:?} is not a number of bytes", w[1]))?);
    }
    let ptxas = nvidia.join("cuda_nvcc/bin/ptxas");
    let root = repo_root();
    let mut over = vec![];
    println!("{:<16} {:<22} {:>6} {:>5} {:>9} {:>9} {:>9}", "file", "kernel", "arch", "regs", "smem", "spill_st", "spill_ld");
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("ptx"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().map(|x| x == "ptx").unwrap_or(false))
        .collect();
    files.sort();
    for ptx in files {
        for arch in ["sm_80", "sm_90"] {
            let out = Command::new(&ptxas)
                .args(["-v", "-arch", arch, "-o", "/dev/null"])
                .arg(&ptx)
                .output()
                .with_context(|| format!("running {}", ptxas.display()))?;
            let log = String::from_utf8_lossy(&out.stderr).to_string();
            if !out.status.success() {
                bail!("ptxas failed on {} for {arch}:\n{log}", ptx.display());
            }
            // Per kernel: "Compiling entry function 'k'", then the spill
            // line, then "Used N registers[, S bytes smem]".
            let (mut kernel, mut spills) = (String::new(), (0u64, 0u64));
            for line in log.lines() {
                let nums: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse().ok()).collect();
                if let Some(rest) = line.split("Compiling entry function '").nth(1) {
                    kernel = rest.split('\'').next().unwrap_or("").to_string();
                } else if line.contains("bytes spill stores") {
                    spills = (nums.get(1).copied().unwrap_or(0), nums.get(2).copied().unwrap_or(0));
                    if spills.0 + spills.1 > allowed.get(&kernel).copied().unwrap_or(budget) {
                        over.push(format!("{kernel} ({arch}): {} bytes spill stores, {} bytes spill loads", spills.0, spills.1));
                    }
                } else if line.contains("Used") && line.contains("registers") {
                    let regs = nums.first().copied().unwrap_or(0);
                    let smem = line.split(',').find(|p| p.contains("bytes smem")).and_then(|p| p.trim().split(' ').next()).unwrap_or("0");
                    let file = ptx.file_name().unwrap().to_string_lossy();
                    println!("{:<16} {:<22} {:>6} {:>5} {:>9} {:>9} {:>9}", file, kernel, arch, regs, smem, spills.0, spills.1);
                }
            }
        }
    }
    if !over.is_empty() {
        bail!("register spills beyond the budget of {budget} bytes:\n  {}", over.join("\n  "));
    }
    println!("no kernel spills beyond {budget} bytes or its own allowance");
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ptx") => task_ptx(&args[1..]),
        Some("ptxas") => task_ptxas(&args[1..]),
        _ => bail!("usage: cargo run -p xtask -- ptx [--check] [--nvidia DIR] | ptx --source FILE --out FILE [--define NAME=VAL]... | ptxas [--budget-spill-bytes N] [--allow-spill KERNEL=BYTES]... [--nvidia DIR]"),
    }
}
