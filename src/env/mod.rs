//! Docker SWE environments: tasks, images, sandboxed containers, a
//! persistent shell per episode, grading, validation and a bounded pool.
//!
//! Owns: everything that talks to the Docker Engine (through `bollard`, over
//! its API; never the docker CLI) and the task files users bring. Does not
//! own: the agent scaffold or the policy (the `agent` layer drives episodes
//! through [`episode::Episode`]), nor anything about models.
//!
//! Errors: every fallible call returns `anyhow` errors with context naming
//! the task, file:line or field. Daemon and container failures are kept
//! apart from policy failures through [`EnvError`] (see `grade`).

pub mod bench;
pub mod episode;
pub mod grade;
pub mod image;
pub mod logparse;
pub mod micro;
pub mod pool;
pub mod sandbox;
pub mod shell;
pub mod suite;
pub mod task;
pub mod validate;

use anyhow::{Context, Result};
use bollard::Docker;

/// Label naming the run a container belongs to.
pub const LABEL_RUN: &str = "appliance.run";
/// Label holding the container's deadline, in Unix seconds.
pub const LABEL_DEADLINE: &str = "appliance.deadline";

/// A failure of the environment (daemon, container, image), never of the
/// policy. Grading reports it apart and it is never scored as reward 0.
#[derive(Debug, thiserror::Error)]
#[error("environment error: {0}")]
pub struct EnvError(pub String);

/// Is this error (anywhere in its chain) an environment error?
pub fn is_env_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<EnvError>().is_some() || c.downcast_ref::<bollard::errors::Error>().is_some())
}

/// Connect to the local Docker Engine and agree on an API version the
/// daemon speaks (the machines here run Engine 20.10, API 1.41).
pub async fn connect() -> Result<Docker> {
    let d = Docker::connect_with_local_defaults().context("connecting to the Docker Engine (is the daemon running?)")?;
    let d = d.with_timeout(std::time::Duration::from_secs(600));
    let d = d.negotiate_version().await.context("asking the Docker Engine for its API version (is the daemon running?)")?;
    Ok(d)
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A run id unique enough for labels: prefix, process id and time.
pub fn new_run_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

/// Hex SHA-256 of some byte strings (cache keys for images).
pub fn content_hash(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

pub use crate::files::write_atomic;
