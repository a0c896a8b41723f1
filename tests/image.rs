//! The container image: built here by the real Docker Engine from the
//! locally built base image (no registry), around the binary built on this
//! machine (the Dockerfile's `prebuilt` target), then run.

use appliance::env::{self, sandbox, LABEL_RUN};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{BuildImageOptions, CreateContainerOptions, LogsOptions, RemoveImageOptions, WaitContainerOptions};
use bollard::Docker;
use futures_util::StreamExt;
use std::collections::HashMap;

fn context_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, bytes: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(mode);
        h.set_cksum();
        b.append_data(&mut h, name, bytes).unwrap();
    };
    let dockerfile = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    add("Dockerfile", &dockerfile, 0o644);
    add("appliance", &std::fs::read(env!("CARGO_BIN_EXE_appliance")).unwrap(), 0o755);
    b.into_inner().unwrap()
}

/// Run `args` in a fresh container of `image`; (exit code, output).
async fn run(docker: &Docker, image: &str, run_id: &str, args: &[&str]) -> (i64, String) {
    let body = ContainerCreateBody {
        image: Some(image.into()),
        cmd: Some(args.iter().map(|s| s.to_string()).collect()),
        labels: Some(HashMap::from([(LABEL_RUN.to_string(), run_id.to_string())])),
        network_disabled: Some(true),
        ..Default::default()
    };
    let id = docker.create_container(None::<CreateContainerOptions>, body).await.unwrap().id;
    docker.start_container(&id, None::<bollard::query_parameters::StartContainerOptions>).await.unwrap();
    let mut code = -1;
    let mut wait = docker.wait_container(&id, None::<WaitContainerOptions>);
    while let Some(r) = wait.next().await {
        match r {
            Ok(w) => code = w.status_code,
            // A non-zero exit arrives as an error carrying the code.
            Err(bollard::errors::Error::DockerContainerWaitError { code: c, .. }) => code = c,
            Err(e) => panic!("waiting for the container: {e}"),
        }
    }
    let mut out = String::new();
    let mut logs = docker.logs(&id, Some(LogsOptions { stdout: true, stderr: true, ..Default::default() }));
    while let Some(Ok(chunk)) = logs.next().await {
        out.push_str(&chunk.to_string());
    }
    sandbox::remove(docker, &id).await;
    (code, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_builds_from_the_local_base_and_runs_the_binary() {
    let docker = env::connect().await.unwrap();
    let base = env::image::ensure_base(&docker).await.unwrap();
    let run_id = env::new_run_id("image-test");
    let tag = format!("appliance/image-test:{}", std::process::id());
    let opts = BuildImageOptions {
        t: Some(tag.clone()),
        dockerfile: "Dockerfile".into(),
        target: "prebuilt".into(),
        buildargs: Some(HashMap::from([("RUNTIME_BASE".to_string(), base.clone())])),
        rm: true,
        forcerm: true,
        ..Default::default()
    };
    let mut build = docker.build_image(opts, None, Some(bollard::body_full(context_tar().into())));
    let mut log = String::new();
    while let Some(m) = build.next().await {
        let info = m.unwrap_or_else(|e| panic!("building the image: {e}\n{log}"));
        assert!(info.error.is_none(), "build failed: {:?}\n{log}", info.error);
        if let Some(s) = info.stream {
            log.push_str(&s);
        }
    }
    let (code, out) = run(&docker, &tag, &run_id, &["--version"]).await;
    assert_eq!((code, out.trim()), (0, format!("appliance {}", env!("CARGO_PKG_VERSION")).as_str()));
    // No GPU in the container here: the clear message and its exit code.
    let (code, out) = run(&docker, &tag, &run_id, &["gpus"]).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("no NVIDIA driver"), "{out}");
    // The binary needs nothing beyond glibc from the image: the embedded
    // tiny model runs.
    let (code, out) = run(&docker, &tag, &run_id, &["generate", "--prompt", "hi", "--max-new-tokens", "4"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(sandbox::run_containers(&docker, &run_id).await.unwrap().is_empty());
    let _ = docker.remove_image(&tag, Some(RemoveImageOptions { force: true, ..Default::default() }), None).await;
}
