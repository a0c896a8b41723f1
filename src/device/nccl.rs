//! Making NCCL loadable for cudarc.
//!
//! cudarc's dynamic loader tries `libnccl.so` and a few versioned names, but
//! not `libnccl.so.2`, the only name the NVIDIA runtime packages (and the
//! pip wheel nvidia-nccl-cu12) ship. Since the dynamic loader reads
//! LD_LIBRARY_PATH only at process start, the fix is: find `libnccl.so.2`,
//! put a `libnccl.so` symlink to it in a private directory, and re-execute
//! the binary once with that directory first on LD_LIBRARY_PATH.
//! Owns: that search and shim. Does not own collectives themselves.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Marks the re-executed process so it never loops.
const REEXEC_MARK: &str = "APPLIANCE_NCCL_SHIM";

/// Where to look for NCCL, in order: `APPLIANCE_NCCL_LIB` (a file or a
/// folder), LD_LIBRARY_PATH, then the usual system and CUDA folders.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![];
    if let Some(p) = std::env::var_os("APPLIANCE_NCCL_LIB") {
        let p = PathBuf::from(p);
        dirs.push(if p.is_file() { p.parent().map(Path::to_path_buf).unwrap_or(p) } else { p });
    }
    if let Some(v) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&v));
    }
    for d in ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/cuda/lib64", "/usr/local/nvidia/lib64", "/usr/local/lib"] {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

/// What the search found.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolution {
    /// A `libnccl.so` cudarc finds as it is.
    Direct(PathBuf),
    /// Only `libnccl.so.2`: a shim folder is needed.
    NeedsShim(PathBuf),
    NotFound,
}

pub fn resolve(dirs: &[PathBuf]) -> Resolution {
    for d in dirs {
        let plain = d.join("libnccl.so");
        if plain.exists() {
            return Resolution::Direct(plain);
        }
    }
    for d in dirs {
        let versioned = d.join("libnccl.so.2");
        if versioned.exists() {
            return Resolution::NeedsShim(versioned);
        }
    }
    Resolution::NotFound
}

/// Create `shim_dir/libnccl.so` → `target` (replacing a stale link).
pub fn make_shim(shim_dir: &Path, target: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(shim_dir).with_context(|| format!("creating {}", shim_dir.display()))?;
    let link = shim_dir.join("libnccl.so");
    let tmp = crate::files::temp_path(&link);
    std::os::unix::fs::symlink(target, &tmp).with_context(|| format!("linking {} to {}", tmp.display(), target.display()))?;
    std::fs::rename(&tmp, &link).with_context(|| format!("placing {}", link.display()))?;
    Ok(link)
}

/// Make NCCL loadable for this process, re-executing it once if needed.
/// Returns the library cudarc will load, or None when NCCL is absent.
pub fn ensure_loadable() -> Result<Option<PathBuf>> {
    match resolve(&search_dirs()) {
        Resolution::Direct(p) => Ok(Some(p)),
        Resolution::NotFound => Ok(None),
        Resolution::NeedsShim(target) => {
            if std::env::var_os(REEXEC_MARK).is_some() {
                // Already re-executed but still not found: give up cleanly.
                return Ok(None);
            }
            let shim_dir = std::env::temp_dir().join(format!("appliance-nccl-shim-{}", real_uid()));
            make_shim(&shim_dir, &target)?;
            let mut paths = vec![shim_dir];
            if let Some(v) = std::env::var_os("LD_LIBRARY_PATH") {
                paths.extend(std::env::split_paths(&v));
            }
            let joined = std::env::join_paths(paths)?;
            let status = std::process::Command::new(std::env::current_exe()?)
                .args(std::env::args_os().skip(1))
                .env("LD_LIBRARY_PATH", joined)
                .env(REEXEC_MARK, "1")
                .status()
                .context("re-executing with the NCCL shim on LD_LIBRARY_PATH")?;
            std::process::exit(status.code().unwrap_or(1));
        }
    }
}

fn real_uid() -> u32 {
    // The real uid keeps users' shim folders apart; /proc is always there on Linux.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_a_plain_library_then_shims_the_versioned_one() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let dirs = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(resolve(&dirs), Resolution::NotFound);
        std::fs::write(b.path().join("libnccl.so.2"), b"elf").unwrap();
        assert_eq!(resolve(&dirs), Resolution::NeedsShim(b.path().join("libnccl.so.2")));
        let shim = tempfile::tempdir().unwrap();
        let link = make_shim(shim.path(), &b.path().join("libnccl.so.2")).unwrap();
        assert_eq!(std::fs::read(&link).unwrap(), b"elf");
        // Making it again replaces the link rather than failing.
        make_shim(shim.path(), &b.path().join("libnccl.so.2")).unwrap();
        std::fs::write(a.path().join("libnccl.so"), b"plain").unwrap();
        assert_eq!(resolve(&dirs), Resolution::Direct(a.path().join("libnccl.so")));
    }
}
