//! Every embedded PTX kernel against its CPU reference: on the simulated
//! device (the PTX interpreter) always, and on every real GPU when one is
//! present. Same checks as `appliance selftest`.

use appliance::backend::gpu::{self, checks::run_all};
use appliance::device::sim::SimDevice;
use appliance::device::{cuda, Device, DeviceExt};
use appliance::model::qwen2_gpu::Capacity;

fn assert_all_pass(dev: &mut dyn Device, quick: bool) {
    let checks = run_all(dev, quick, None);
    assert!(checks.len() >= 30, "{} checks", checks.len());
    assert_eq!(checks.iter().filter(|c| c.kernel == "host_copy").count(), 3, "the host copy checks run");
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
fn assert_step_matches(dev: Box<dyn Device + Send>, model: &appliance::model::qwen2::Model, lens: &[usize], recompute: bool, capacity: Capacity) -> appliance::model::qwen2_gpu::StepComparison {
    use appliance::model::qwen2_gpu::{compare_training_step, random_batch};
    let batch = random_batch(lens, model.out_vocab(), 7);
    let c = compare_training_step(dev, model, &batch, recompute, capacity).unwrap();
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
    // head; three uneven sequences, none a tile multiple, in buffers for
    // more tokens than they hold; o_proj and the MLP in chunks of 48 tokens
    // (48, 48, 31).
    let model = appliance::model::tiny::tiny_model(0);
    let cap = Capacity { tokens: 140, chunk_tokens: 48 };
    let kept = assert_step_matches(Box::new(SimDevice::new().unwrap()), &model, &[37, 70, 20], false, cap);
    // Recomputation gives the same step, bit for bit (the simulated device
    // runs every kernel in a fixed order, and both run the same chunks).
    let recomputed = assert_step_matches(Box::new(SimDevice::new().unwrap()), &model, &[37, 70, 20], true, cap);
    assert_eq!(format!("{:?}", kept.grad_errs), format!("{:?}", recomputed.grad_errs));
    assert_eq!(kept.loss_device, recomputed.loss_device);
    // The whole batch as one chunk: the same step to rounding.
    let whole = assert_step_matches(Box::new(SimDevice::new().unwrap()), &model, &[37, 70, 20], true, Capacity { tokens: 127, chunk_tokens: 0 });
    assert!((whole.loss_device - kept.loss_device).abs() < 1e-4 * kept.loss_device.abs(), "{} vs {}", whole.loss_device, kept.loss_device);
}

fn small_model(head_dim: usize) -> appliance::model::qwen2::Model {
    appliance::model::qwen2_gpu::check_model(head_dim).unwrap()
}

#[test]
fn the_gpu_model_runs_head_dim_64_untied_on_the_simulated_device() {
    assert_step_matches(Box::new(SimDevice::new().unwrap()), &small_model(64), &[65, 9], false, Capacity { tokens: 74, chunk_tokens: 0 });
}

/// A `Device` that forwards to another and counts the bytes it allocates.
struct Counting<D> {
    inner: D,
    allocated: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    allocations: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<D: Device> Device for Counting<D> {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn alloc(&mut self, bytes: usize) -> anyhow::Result<appliance::device::DevicePtr> {
        self.allocated.fetch_add(bytes, std::sync::atomic::Ordering::SeqCst);
        self.allocations.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.alloc(bytes)
    }
    fn free(&mut self, ptr: appliance::device::DevicePtr) -> anyhow::Result<()> {
        panic!("the GPU model frees nothing after allocating its plan ({ptr:?})")
    }
    fn copy_h2d(&mut self, dst: appliance::device::DevicePtr, src: &[u8]) -> anyhow::Result<()> {
        self.inner.copy_h2d(dst, src)
    }
    fn copy_d2h(&mut self, src: appliance::device::DevicePtr, dst: &mut [u8]) -> anyhow::Result<()> {
        self.inner.copy_d2h(src, dst)
    }
    fn copy_d2d(&mut self, dst: appliance::device::DevicePtr, src: appliance::device::DevicePtr, bytes: usize) -> anyhow::Result<()> {
        self.inner.copy_d2d(dst, src, bytes)
    }
    fn memset_zero(&mut self, dst: appliance::device::DevicePtr, bytes: usize) -> anyhow::Result<()> {
        self.inner.memset_zero(dst, bytes)
    }
    fn launch(&mut self, function: &str, cfg: appliance::device::LaunchConfig, args: &[appliance::device::KernelArg]) -> anyhow::Result<()> {
        self.inner.launch(function, cfg, args)
    }
    fn gemm(&mut self, g: &appliance::device::Gemm, c: appliance::device::DevicePtr, a: appliance::device::DevicePtr, b: appliance::device::DevicePtr) -> anyhow::Result<()> {
        self.inner.gemm(g, c, a, b)
    }
    fn synchronize(&mut self) -> anyhow::Result<()> {
        self.inner.synchronize()
    }
}

/// The GPU model allocates the memory plan: every component the plan
/// prints (less the runtime reserve, an estimate) is what the model's
/// ledger holds, byte for byte, and the ledger is every byte the device was
/// asked for (less each buffer's rounding up to 256 bytes). Then a step
/// runs in it, and a batch past the capacity is refused without a byte more.
#[test]
fn the_gpu_model_allocates_its_memory_plan_once() {
    use appliance::model::memory_plan::{names, plan_scored};
    use appliance::model::qwen2_gpu::{random_batch, GpuModel};
    use std::sync::atomic::Ordering::SeqCst;
    let cases = [
        ("tiny, recompute, chunks of 48", appliance::model::tiny::tiny_model(0), true, Capacity { tokens: 140, chunk_tokens: 48 }),
        ("tiny, layers kept, chunks of 48", appliance::model::tiny::tiny_model(0), false, Capacity { tokens: 140, chunk_tokens: 48 }),
        ("hd64 untied, whole batch", small_model(64), true, Capacity { tokens: 90, chunk_tokens: 0 }),
        ("hd128 untied, layers kept", small_model(128), false, Capacity { tokens: 64, chunk_tokens: 8 }),
    ];
    for (what, mut model, recompute, cap) in cases {
        model.recompute = recompute;
        let allocated = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let allocations = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let dev = Counting { inner: SimDevice::new().unwrap(), allocated: allocated.clone(), allocations: allocations.clone() };
        let mut g = GpuModel::new(Box::new(dev), &model, cap).unwrap();
        let plan = plan_scored(&model.cfg, model.out_vocab(), what, &cap.plan_request(recompute)).unwrap();
        let planned: Vec<(&str, u64)> = plan.components.iter().filter(|c| c.bytes > 0 && c.name != names::RESERVE).map(|c| (c.name.as_str(), c.bytes)).collect();
        let mut held: Vec<(&str, u64)> = g.memory().components.iter().map(|&(n, b)| (n, b as u64)).collect();
        let mut want = planned.clone();
        held.sort();
        want.sort();
        assert_eq!(held, want, "{what}: the device ledger against the plan");
        let total = g.memory().total();
        assert_eq!(total as u64, plan.total_bytes - plan.bytes(names::RESERVE), "{what}");
        let (got, count) = (allocated.load(SeqCst), allocations.load(SeqCst));
        assert!(got >= total && got < total + 256 * count, "{what}: {got} bytes allocated in {count} buffers, the ledger says {total}");
        // A step in those buffers, then one batch too large: refused, and
        // nothing more is allocated.
        let lens = [cap.tokens / 3, cap.tokens - cap.tokens / 3];
        let batch = random_batch(&lens, model.out_vocab(), 1);
        g.forward(&batch).unwrap();
        let (targets, _) = batch.next_token_targets();
        g.token_logprobs(&targets).unwrap();
        g.backward(&vec![0.01; cap.tokens], &vec![0.0; cap.tokens]).unwrap();
        let big = random_batch(&[cap.tokens + 1], model.out_vocab(), 1);
        let e = format!("{:#}", g.forward(&big).unwrap_err());
        assert!(e.contains(&format!("{} tokens", cap.tokens + 1)) && e.contains(&format!("capacity of {} tokens", cap.tokens)), "{e}");
        assert_eq!(allocated.load(SeqCst), got, "{what}: the step allocated");
    }
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
        assert_step_matches(open(), &tiny, &[37, 70, 20], false, Capacity { tokens: 127, chunk_tokens: 0 });
        assert_step_matches(open(), &tiny, &[300, 1, 129], true, Capacity { tokens: 512, chunk_tokens: 64 });
        assert_step_matches(open(), &small_model(64), &[65, 9, 200], false, Capacity { tokens: 300, chunk_tokens: 128 });
        assert_step_matches(open(), &small_model(128), &[513, 64], true, Capacity { tokens: 577, chunk_tokens: 256 });
    }
}
