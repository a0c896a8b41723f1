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
