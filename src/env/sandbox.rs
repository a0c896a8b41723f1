//! Sandboxed containers: creation with limits and labels, removal, and the
//! reaper that removes labelled containers past their deadline.
//!
//! Owns: the container's security settings (network disabled, memory, CPU
//! and pids limits, no-new-privileges, every capability dropped, no host
//! mounts), the run/deadline labels, and cleanup (per run, past deadline,
//! on SIGINT/SIGTERM). Does not own: what runs inside (`shell`, `episode`).

use super::{now_unix, EnvError, LABEL_DEADLINE, LABEL_RUN};
use anyhow::Result;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, ListContainersOptions, RemoveContainerOptions};
use bollard::Docker;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Limits and labels for one container.
#[derive(Debug, Clone)]
pub struct Spec {
    pub image: String,
    pub run_id: String,
    /// How long the container may live; the reaper removes it after that.
    pub ttl: Duration,
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids_limit: i64,
    /// Off by default. Only a user's explicit choice turns it on.
    pub network: bool,
}

impl Spec {
    pub fn new(image: &str, run_id: &str) -> Self {
        Spec { image: image.into(), run_id: run_id.into(), ttl: Duration::from_secs(3600), memory_bytes: 2 << 30, nano_cpus: 1_000_000_000, pids_limit: 256, network: false }
    }
}

/// Set once a signal has arrived: no new container may start after it.
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);
/// Container creations in flight (the signal reaper waits for them).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

struct InFlight;
impl InFlight {
    fn new() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight
    }
}
impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Create and start a sandboxed container that idles until removed.
pub async fn start(docker: &Docker, spec: &Spec) -> Result<String> {
    let _flight = InFlight::new();
    if SHUTTING_DOWN.load(Ordering::SeqCst) {
        return Err(EnvError("shutting down: no new containers".into()).into());
    }
    let id = start_inner(docker, spec).await?;
    tracing::debug!("started container {} of run {}", short(&id), spec.run_id);
    if SHUTTING_DOWN.load(Ordering::SeqCst) {
        remove(docker, &id).await;
        return Err(EnvError("shutting down: no new containers".into()).into());
    }
    Ok(id)
}

async fn start_inner(docker: &Docker, spec: &Spec) -> Result<String> {
    let mut labels = HashMap::new();
    labels.insert(LABEL_RUN.to_string(), spec.run_id.clone());
    labels.insert(LABEL_DEADLINE.to_string(), (now_unix() + spec.ttl.as_secs()).to_string());
    let host = HostConfig {
        network_mode: Some(if spec.network { "bridge".into() } else { "none".into() }),
        memory: Some(spec.memory_bytes),
        memory_swap: Some(spec.memory_bytes),
        nano_cpus: Some(spec.nano_cpus),
        pids_limit: Some(spec.pids_limit),
        security_opt: Some(vec!["no-new-privileges".into()]),
        cap_drop: Some(vec!["ALL".into()]),
        init: Some(true),
        binds: None,
        mounts: None,
        privileged: Some(false),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: Some(vec!["sleep".into(), "infinity".into()]),
        labels: Some(labels),
        network_disabled: Some(!spec.network),
        working_dir: Some("/".into()),
        env: Some(vec!["LANG=C.UTF-8".into(), "PYTHONDONTWRITEBYTECODE=1".into()]),
        host_config: Some(host),
        ..Default::default()
    };
    let created = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await
        .map_err(|e| EnvError(format!("creating a container from image {}: {e}", spec.image)))?;
    if let Err(e) = docker.start_container(&created.id, None::<bollard::query_parameters::StartContainerOptions>).await {
        remove(docker, &created.id).await;
        return Err(EnvError(format!("starting a container from image {}: {e}", spec.image)).into());
    }
    Ok(created.id)
}

/// Remove a container, killing it first; errors are logged, not returned.
pub async fn remove(docker: &Docker, id: &str) {
    let opts = RemoveContainerOptions { force: true, v: true, ..Default::default() };
    match tokio::time::timeout(Duration::from_secs(60), docker.remove_container(id, Some(opts))).await {
        Ok(Ok(())) => tracing::debug!("removed container {}", short(id)),
        Ok(Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })) => {}
        Ok(Err(e)) => tracing::warn!("removing container {id}: {e}"),
        Err(_) => tracing::warn!("removing container {id}: timed out"),
    }
}

/// A container id as `docker ps` shows it.
fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

async fn labelled(docker: &Docker, label: &str) -> Result<Vec<bollard::models::ContainerSummary>> {
    let mut filters = HashMap::new();
    filters.insert("label".to_string(), vec![label.to_string()]);
    let opts = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
    Ok(docker.list_containers(Some(opts)).await.map_err(|e| EnvError(format!("listing containers: {e}")))?)
}

/// Ids of every container (any state) of a run.
pub async fn run_containers(docker: &Docker, run_id: &str) -> Result<Vec<String>> {
    Ok(labelled(docker, &format!("{LABEL_RUN}={run_id}")).await?.into_iter().filter_map(|c| c.id).collect())
}

/// Remove every container of a run. Returns how many.
pub async fn reap_run(docker: &Docker, run_id: &str) -> Result<usize> {
    let ids = run_containers(docker, run_id).await?;
    for id in &ids {
        remove(docker, id).await;
    }
    Ok(ids.len())
}

/// Remove every labelled container (of any run, in any state, Created
/// included) whose deadline has passed or cannot be read.
pub async fn reap_expired(docker: &Docker) -> Result<usize> {
    let now = now_unix();
    let mut n = 0;
    for c in labelled(docker, LABEL_RUN).await? {
        let deadline = c.labels.as_ref().and_then(|l| l.get(LABEL_DEADLINE)).and_then(|d| d.parse::<u64>().ok());
        if deadline.is_none_or(|d| d <= now) {
            if let Some(id) = &c.id {
                remove(docker, id).await;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// On SIGINT or SIGTERM, or once stdout or stderr is a pipe whose reader
/// has gone: remove this run's containers and exit (130, 143 or 141).
///
/// Must be called inside the runtime. The handlers are installed before it
/// returns, not when the spawned task is first polled: on a loaded machine
/// that poll can come after the first container exists, and a signal in
/// between would take the default action and leave the container behind.
/// The reaping runs on a thread and runtime of its own, because the
/// command's work fails fast once its containers go and its runtime may
/// end before the reaping is done; `wait_for_signal_reaper` keeps the
/// process alive until the reaper exits it.
///
/// With the output closed, every `println!` or `eprintln!` of the command
/// panics; `hold_panics_while_reaping` keeps such a panic from ending the
/// process before the reaper does. The reaper's own messages ignore write
/// errors for the same reason.
pub fn spawn_signal_reaper(docker: Docker, run_id: String) {
    let mut signals = crate::signals::Signals::install_with_broken_output();
    hold_panics_while_reaping();
    tokio::spawn(async move {
        let signal = signals.recv().await;
        SHUTTING_DOWN.store(true, Ordering::SeqCst);
        let why = match signal {
            crate::signals::Signal::BrokenOutput => "output closed",
            _ => "signal received",
        };
        say(&format!("{why}: removing the containers of run {run_id}"));
        std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(async {
                    let docker = super::connect().await.unwrap_or(docker);
                    reap_after_signal(&docker, &run_id).await;
                });
            }
            say(&format!("removed the containers of run {run_id}"));
            std::process::exit(signal.exit_code());
        });
    });
}

/// A line on stderr that is lost, not a panic, when stderr is closed.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// How long a panicking thread waits for the signal reaper to exit the
/// process (the reaper's own bounds are 30 s for creations in flight and
/// 60 s of reaping, plus connecting).
const HOLD_FOR_REAPER: Duration = Duration::from_secs(150);

/// Chain a panic hook that holds a panicking thread while the signal
/// reaper works, so the reaper, not the panic, ends the process.
///
/// A panic during shutdown is expected: a `println!` to the closed output,
/// or an episode whose container was just removed. Unwound, a panic on the
/// main thread would end the process with the containers still there. A
/// print that fails before the reaper has even seen the SIGPIPE (the
/// write's EPIPE comes back at once, the signal is handled on another
/// thread) waits a few seconds for it. Any other panic keeps its usual
/// course.
fn hold_panics_while_reaping() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let failed_print = info.payload_as_str().is_some_and(|m| m.starts_with("failed printing to std"));
            let t0 = std::time::Instant::now();
            while failed_print && !SHUTTING_DOWN.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if SHUTTING_DOWN.load(Ordering::SeqCst) {
                while t0.elapsed() < HOLD_FOR_REAPER {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            previous(info)
        }));
    });
}

/// Called when a command is done: if a signal arrived, wait (at most the
/// reaper's own bounds) for the signal reaper to remove the run's
/// containers and exit the process with the signal's code.
pub fn wait_for_signal_reaper() {
    if SHUTTING_DOWN.load(Ordering::SeqCst) {
        std::thread::sleep(HOLD_FOR_REAPER);
    }
}

async fn reap_after_signal(docker: &Docker, run_id: &str) {
    // let creations in flight land (they remove their own container), then reap
    let t0 = std::time::Instant::now();
    while IN_FLIGHT.load(Ordering::SeqCst) > 0 && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // a container another task is removing stays listed (state "removing")
    // until the daemon is done, which takes seconds on a loaded machine:
    // reap until a listing a moment later comes back empty, for up to a
    // minute (a fixed number of tries let such a container outlive the
    // process)
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let _ = reap_run(docker, run_id).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            if run_containers(docker, run_id).await.map(|v| v.is_empty()).unwrap_or(false) {
                break;
            }
        }
    })
    .await;
}

/// Removes a run's containers when dropped (from any context: it uses a
/// runtime of its own on a separate thread).
pub struct RunGuard {
    pub run_id: String,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        let run = self.run_id.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(async {
                    if let Ok(d) = super::connect().await {
                        let _ = reap_run(&d, &run).await;
                    }
                });
            }
        })
        .join();
    }
}
