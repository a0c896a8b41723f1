//! Images: the base image built with debootstrap and imported through the
//! Engine API, task images built FROM it with the repository at
//! base_commit in /testbed, and finding (or pulling) instance images.
//!
//! Owns: the base recipe and its content-hash tag, building and caching
//! images (a tag that exists is never rebuilt). Does not own: containers
//! (`sandbox`) or the task records (`task`).

use super::task::Task;
use super::{content_hash, EnvError};
use anyhow::{anyhow, bail, Context, Result};
use bollard::query_parameters::{BuildImageOptions, CreateImageOptions};
use bollard::Docker;
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::AsyncReadExt;

/// Debian suite, variant and packages of the base image.
pub const BASE_SUITE: &str = "bookworm";
pub const BASE_PACKAGES: &str = "python3,python3-pytest,git,procps,ca-certificates,patch";
const BASE_CHANGES: &[&str] = &["ENV LANG=C.UTF-8", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "WORKDIR /", "CMD [\"bash\"]"];
/// Paths removed from the root filesystem before import (caches and docs).
const BASE_TRIM: &[&str] = &["var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info"];

/// The base image's tag: a hash of the recipe, so a changed recipe builds anew.
pub fn base_tag() -> String {
    let recipe = format!("{BASE_SUITE}|minbase|{BASE_PACKAGES}|{BASE_CHANGES:?}|{BASE_TRIM:?}|v1");
    format!("appliance/base:py3-{}", &content_hash(&[recipe.as_bytes()])[..12])
}

/// Does the daemon have this image?
pub async fn exists(docker: &Docker, name: &str) -> Result<bool> {
    match docker.inspect_image(name).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
        Err(e) => Err(EnvError(format!("inspecting image {name}: {e}")).into()),
    }
}

/// The Debian mirror apt is configured with (deb822 `URIs:` or a `deb` line).
pub fn apt_mirror() -> String {
    let mut files: Vec<PathBuf> = vec!["/etc/apt/sources.list".into()];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        v.sort();
        files.extend(v);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        for line in text.lines() {
            let line = line.trim();
            let uri = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().next()
            } else if let Some(rest) = line.strip_prefix("deb ") {
                rest.split_whitespace().find(|w| w.contains("://"))
            } else {
                None
            };
            if let Some(u) = uri {
                if u.contains("debian") && !u.contains("security") {
                    return u.to_string();
                }
            }
        }
    }
    "http://deb.debian.org/debian".to_string()
}

static BUILD_LOCK: std::sync::OnceLock<tokio::sync::Mutex<()>> = std::sync::OnceLock::new();

/// Build the base image when its tag is missing; returns the tag.
pub async fn ensure_base(docker: &Docker) -> Result<String> {
    let tag = base_tag();
    let _g = BUILD_LOCK.get_or_init(|| tokio::sync::Mutex::new(())).lock().await;
    if exists(docker, &tag).await? {
        return Ok(tag);
    }
    build_base(docker, &tag).await?;
    Ok(tag)
}

async fn build_base(docker: &Docker, tag: &str) -> Result<()> {
    let debootstrap = ["/usr/sbin/debootstrap", "/usr/bin/debootstrap"].into_iter().find(|p| Path::new(p).exists()).ok_or_else(|| anyhow!("debootstrap is not installed (apt-get install -y debootstrap), and no registry is reachable to pull a base image"))?;
    let work = unique_tempdir("appliance-base")?;
    let root = work.join("rootfs");
    let mirror = apt_mirror();
    eprintln!("building base image {tag}: debootstrap {BASE_SUITE} from {mirror} (about a minute)");
    let log_path = work.join("debootstrap.log");
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let status = tokio::process::Command::new(debootstrap)
        .args(["--variant=minbase", &format!("--include={BASE_PACKAGES}"), BASE_SUITE])
        .arg(&root)
        .arg(&mirror)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .status()
        .await
        .context("running debootstrap")?;
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: String = text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        let _ = std::fs::remove_dir_all(&work);
        bail!("debootstrap failed ({status}):\n{tail}");
    }
    for t in BASE_TRIM {
        let p = root.join(t);
        if p.is_dir() {
            let _ = std::fs::remove_dir_all(&p);
            let _ = std::fs::create_dir_all(&p);
        }
    }
    let _ = std::fs::create_dir_all(root.join("testbed"));
    // stream `tar -C rootfs -c .` into the import endpoint
    let mut child = tokio::process::Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(&root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running tar over the root filesystem")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("tar has no stdout"))?;
    let body = futures_util::stream::unfold(stdout, |mut out| async move {
        let mut buf = vec![0u8; 1 << 20];
        match out.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((bytes::Bytes::from(buf), out))
            }
        }
    });
    let (repo, t) = tag.split_once(':').unwrap_or((tag, "latest"));
    let opts = CreateImageOptions { from_src: Some("-".into()), repo: Some(repo.into()), tag: Some(t.into()), changes: BASE_CHANGES.iter().map(|s| s.to_string()).collect(), ..Default::default() };
    let mut s = docker.create_image(Some(opts), Some(bollard::body_stream(body)), None);
    let mut err = None;
    while let Some(m) = s.next().await {
        if let Err(e) = m {
            err = Some(e);
        }
    }
    let st = child.wait().await;
    let _ = std::fs::remove_dir_all(&work);
    if let Some(e) = err {
        bail!(EnvError(format!("importing the base root filesystem as {tag}: {e}")));
    }
    if !st.map(|s| s.success()).unwrap_or(false) {
        bail!("tar over the base root filesystem failed");
    }
    if !exists(docker, tag).await? {
        bail!(EnvError(format!("the import finished but {tag} is not there")));
    }
    eprintln!("base image {tag} ready");
    Ok(())
}

fn unique_tempdir(prefix: &str) -> Result<PathBuf> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let base = std::env::temp_dir();
    let p = base.join(format!("{prefix}-{}-{}-{n}", std::process::id(), super::now_unix()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
    Ok(p)
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("git").arg("-C").arg(dir).args(args).output().with_context(|| format!("running git {} in {}", args.join(" "), dir.display()))?;
    if !out.status.success() {
        bail!("git {} in {}: {}", args.join(" "), dir.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The tag of the image built for a `repo_path` task.
pub fn task_tag(task: &Task, base: &str) -> String {
    let safe: String = task.instance_id.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' { c } else { '-' }).collect();
    let h = content_hash(&[base.as_bytes(), task.base_commit.as_bytes(), task.env_setup.as_deref().unwrap_or("").as_bytes(), b"task-v1"]);
    format!("appliance/task:{}-{}", safe.trim_matches('-').chars().take(80).collect::<String>(), &h[..12])
}

/// The image a task runs in: the instance image (local, or pulled where a
/// registry answers), or one built from its `repo_path`.
pub async fn ensure_task_image(docker: &Docker, task: &Task, template: Option<&str>) -> Result<String> {
    if let Some(repo) = &task.repo_path {
        let base = ensure_base(docker).await?;
        let tag = task_tag(task, &base);
        if exists(docker, &tag).await? {
            return Ok(tag);
        }
        build_from_repo(docker, task, repo, &base, &tag).await.with_context(|| format!("task {}: building {tag} from {}", task.instance_id, repo.display()))?;
        return Ok(tag);
    }
    let name = task.image_ref(template).ok_or_else(|| anyhow!("task {}: no image_name field, no repo_path, and no image template given", task.instance_id))?;
    if exists(docker, &name).await? {
        return Ok(name);
    }
    pull(docker, &name).await.with_context(|| format!("task {}: image {name} is not present locally", task.instance_id))?;
    Ok(name)
}

/// Pull an image, with progress on stderr.
pub async fn pull(docker: &Docker, name: &str) -> Result<()> {
    let opts = CreateImageOptions { from_image: Some(name.to_string()), ..Default::default() };
    let mut s = docker.create_image(Some(opts), None, None);
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(format!("pulling {name}"));
    let r = tokio::time::timeout(std::time::Duration::from_secs(1800), async {
        while let Some(m) = s.next().await {
            let info = m.map_err(|e| EnvError(format!("pulling {name}: {e}")))?;
            if let Some(st) = info.status {
                bar.set_message(format!("{name}: {st} {}", info.progress.unwrap_or_default()));
                bar.tick();
            }
        }
        Ok::<(), anyhow::Error>(())
    })
    .await;
    bar.finish_and_clear();
    match r {
        Ok(x) => x,
        Err(_) => bail!(EnvError(format!("pulling {name}: timed out"))),
    }
}

async fn build_from_repo(docker: &Docker, task: &Task, repo: &Path, base: &str, tag: &str) -> Result<()> {
    let work = unique_tempdir("appliance-task")?;
    let r = async {
        let tb = work.join("testbed");
        let out = std::process::Command::new("git").args(["clone", "--quiet", "--no-hardlinks"]).arg(repo).arg(&tb).output().context("running git clone")?;
        if !out.status.success() {
            bail!("git clone {}: {}", repo.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        git(&tb, &["checkout", "--quiet", "--detach", &task.base_commit]).with_context(|| format!("field base_commit: {} is not in {}", task.base_commit, repo.display()))?;
        git(&tb, &["remote", "remove", "origin"])?;
        let mut df = format!("FROM {base}\nCOPY testbed /testbed\nWORKDIR /testbed\n");
        if let Some(setup) = &task.env_setup {
            df.push_str(&format!("RUN {}\n", setup.replace('\n', " && ")));
        }
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        let mut h = tar::Header::new_gnu();
        h.set_size(df.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "Dockerfile", df.as_bytes())?;
        b.append_dir_all("testbed", &tb).context("packing the build context")?;
        let ctx = b.into_inner()?;
        let opts = BuildImageOptions { t: Some(tag.to_string()), rm: true, forcerm: true, dockerfile: "Dockerfile".into(), ..Default::default() };
        let mut s = docker.build_image(opts, None, Some(bollard::body_full(ctx.into())));
        let mut log = String::new();
        while let Some(m) = s.next().await {
            match m {
                Ok(info) => {
                    if let Some(e) = info.error {
                        bail!("build failed: {e}\n{log}");
                    }
                    if let Some(st) = info.stream {
                        log.push_str(&st);
                    }
                }
                Err(e) => bail!(EnvError(format!("building {tag}: {e}\n{log}"))),
            }
        }
        Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&work);
    r
}
