//! Every embedded PTX kernel against its CPU reference: on the simulated
//! device (the PTX interpreter) always, and on every real GPU when one is
//! present. Same checks as `appliance selftest`.

use appliance::backend::gpu::{self, checks::run_all};
use appliance::device::sim::SimDevice;
use appliance::device::{cuda, Device, DeviceExt};

fn assert_all_pass(dev: &mut dyn Device, quick: bool) {
    let checks = run_all(dev, quick, None);
    assert!(checks.len() >= 30, "{} checks", checks.len());
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{} {}: err {:e} (tol {:e}) {}", c.kernel, c.shape, c.max_err, c.tolerance, c.error.clone().unwrap_or_default()))
        .collect();
    assert!(failed.is_empty(), "on {}:\n{}", dev.name(), failed.join("\n"));
    // Every kernel in the index is exercised.
    for m in appliance::kernels::MODULES {
        for f in m.functions {
            let covered = checks.iter().any(|c| c.kernel == *f || (c.kernel == "global_norm" && m.name == "global_norm"));
            assert!(covered, "kernel {f} has no check");
        }
    }
}

#[test]
fn every_kernel_matches_its_cpu_reference_on_the_simulated_device() {
    let mut dev = SimDevice::new().unwrap();
    assert_all_pass(&mut dev, true);
}

#[test]
fn every_kernel_matches_its_cpu_reference_on_each_gpu() {
    if !cuda::available() {
        eprintln!("no GPU here: the simulated-device test covers the same kernels");
        return;
    }
    for i in 0..cuda::device_count().unwrap() {
        let mut dev = cuda::CudaDevice::new(i).unwrap();
        assert_all_pass(&mut dev, false);
    }
}

#[test]
fn a_wrong_launch_fails_loudly_on_the_simulated_device() {
    let mut dev = SimDevice::new().unwrap();
    // A table of 2 rows but ids pointing at row 1000: out of bounds.
    let table = dev.upload_f32(&[1.0; 8]).unwrap();
    let ids = dev.upload_u32(&[1000]).unwrap();
    let out = dev.zeros(16).unwrap();
    let err = gpu::embedding_fwd(&mut dev, out, table, ids, 1, 4).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("embedding_fwd"), "{msg}");
    assert!(dev.launch("no_such_kernel", appliance::device::LaunchConfig::linear(1, 32), &[]).is_err());
}

/// The whole training step (forward, fused log-probs, DAPO loss, backward,
/// AdamW) of the GPU model backend on `dev`, against the CPU backend.
fn assert_step_matches(dev: Box<dyn Device + Send>, model: &appliance::model::qwen2::Model, lens: &[usize], recompute: bool) -> appliance::model::qwen2_gpu::StepComparison {
    use appliance::model::qwen2_gpu::{compare_training_step, random_batch};
    let batch = random_batch(lens, model.out_vocab(), 7);
    let c = compare_training_step(dev, model, &batch, recompute).unwrap();
    eprintln!(
        "{} tokens on {}: log-prob err {:.2e}, entropy err {:.2e}, loss {} vs {}, max grad err {:.2e}, AdamW err {:.2e}",
        c.tokens, c.device, c.logprob_err, c.entropy_err, c.loss_device, c.loss_cpu, c.max_grad_err, c.adamw_err
    );
    let failures = c.failures();
    assert!(failures.is_empty(), "on {}: {}", c.device, failures.join("\n"));
    c
}

#[test]
fn the_gpu_model_trains_the_tiny_model_like_the_cpu_on_the_simulated_device() {
    // Head dim 32 (padded to 64 for the attention kernels), GQA 2, tied LM
    // head; three uneven sequences, none a tile multiple.
    let model = appliance::model::tiny::tiny_model(0);
    let kept = assert_step_matches(Box::new(SimDevice::new().unwrap()), &model, &[37, 70, 20], false);
    // Recomputation gives the same step, bit for bit (the simulated device
    // runs every kernel in a fixed order).
    let recomputed = assert_step_matches(Box::new(SimDevice::new().unwrap()), &model, &[37, 70, 20], true);
    assert_eq!(format!("{:?}", kept.grad_errs), format!("{:?}", recomputed.grad_errs));
    assert_eq!(kept.loss_device, recomputed.loss_device);
}

fn small_model(head_dim: usize) -> appliance::model::qwen2::Model {
    appliance::model::qwen2_gpu::check_model(head_dim).unwrap()
}

#[test]
fn the_gpu_model_runs_head_dim_64_untied_on_the_simulated_device() {
    assert_step_matches(Box::new(SimDevice::new().unwrap()), &small_model(64), &[65, 9], false);
}

#[test]
fn the_gpu_model_trains_like_the_cpu_on_each_gpu() {
    if !cuda::available() {
        eprintln!("no GPU here: the simulated-device tests cover the same step");
        return;
    }
    let tiny = appliance::model::tiny::tiny_model(0);
    for i in 0..cuda::device_count().unwrap() {
        let open = || Box::new(cuda::CudaDevice::new(i).unwrap());
        assert_step_matches(open(), &tiny, &[37, 70, 20], false);
        assert_step_matches(open(), &tiny, &[300, 1, 129], true);
        assert_step_matches(open(), &small_model(64), &[65, 9, 200], false);
        assert_step_matches(open(), &small_model(128), &[513, 64], true);
    }
}
