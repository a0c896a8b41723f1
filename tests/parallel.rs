//! Collectives between simulated GPUs in one process: each rank owns its own
//! simulated device on its own thread, as each GPU has its own thread.

use appliance::backend::cpu::adamw::AdamWParams;
use appliance::backend::gpu;
use appliance::device::sim::SimDevice;
use appliance::device::DeviceExt;
use appliance::parallel::{local, run_ranks, Communicator};

#[test]
fn all_reduce_broadcast_all_gather_and_a_ring_on_four_simulated_gpus() {
    let n = 4;
    let out = run_ranks(local::group(n), move |rank, mut comm| {
        let mut dev = SimDevice::new()?;
        let count = 37;
        let mine: Vec<f32> = (0..count).map(|i| (rank * 100 + i) as f32).collect();
        // all-reduce
        let buf = dev.upload_f32(&mine)?;
        comm.all_reduce_sum_f32(&mut dev, buf, count)?;
        let reduced = dev.download_f32(buf, count)?;
        // broadcast from rank 2
        let b = dev.upload_f32(&mine)?;
        comm.broadcast_f32(&mut dev, b, count, 2)?;
        let bcast = dev.download_f32(b, count)?;
        // all-gather
        let s = dev.upload_f32(&mine[..5])?;
        let r = dev.zeros(5 * n * 4)?;
        comm.all_gather_f32(&mut dev, s, r, 5)?;
        let gathered = dev.download_f32(r, 5 * n)?;
        // ring: send to the next rank, receive from the previous
        let world = comm.world_size();
        comm.send_f32(&mut dev, buf, count, (rank + 1) % world)?;
        let got = dev.zeros(count * 4)?;
        comm.recv_f32(&mut dev, got, count, (rank + world - 1) % world)?;
        // A send of our own original data round the ring arrives intact:
        let orig = dev.upload_f32(&mine)?;
        comm.send_f32(&mut dev, orig, count, (rank + 1) % world)?;
        comm.recv_f32(&mut dev, got, count, (rank + world - 1) % world)?;
        let from_prev = dev.download_f32(got, count)?;
        Ok((reduced, bcast, gathered, from_prev))
    })
    .unwrap();
    for (rank, (reduced, bcast, gathered, from_prev)) in out.iter().enumerate() {
        for i in 0..37 {
            let want: f32 = (0..n).map(|r| (r * 100 + i) as f32).sum();
            assert_eq!(reduced[i], want, "rank {rank} elem {i}");
            assert_eq!(bcast[i], (200 + i) as f32);
            let prev = (rank + n - 1) % n;
            assert_eq!(from_prev[i], (prev * 100 + i) as f32);
        }
        for r in 0..n {
            for i in 0..5 {
                assert_eq!(gathered[r * 5 + i], (r * 100 + i) as f32);
            }
        }
    }
}

#[test]
fn a_data_parallel_step_keeps_replicas_identical() {
    // Each rank has different gradients; after an all-reduce (mean) and the
    // AdamW kernel on its own simulated GPU, every replica holds the same
    // weights, bit for bit.
    let n = 3;
    let count = 1000;
    let weights = run_ranks(local::group(n), move |rank, mut comm| {
        let mut dev = SimDevice::new()?;
        let p0: Vec<f32> = (0..count).map(|i| (i as f32 * 0.01).sin()).collect();
        let g: Vec<f32> = (0..count).map(|i| ((i * (rank + 1)) as f32 * 0.1).cos() / n as f32).collect();
        let (p, gb, m, v) = (dev.upload_f32(&p0)?, dev.upload_f32(&g)?, dev.zeros(count * 4)?, dev.zeros(count * 4)?);
        comm.all_reduce_sum_f32(&mut dev, gb, count)?;
        let hp = AdamWParams { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
        gpu::adamw_step(&mut dev, p, None, gb, m, v, count, 1, hp, true)?;
        dev.download_f32(p, count)
    })
    .unwrap();
    for r in 1..n {
        assert!(weights[r].iter().zip(&weights[0]).all(|(a, b)| a.to_bits() == b.to_bits()), "rank {r} diverged");
    }
    assert!(weights[0].iter().zip(0..count).any(|(w, i)| *w != (i as f32 * 0.01).sin()), "the step changed the weights");
}

#[test]
fn errors_on_a_rank_are_reported_with_the_rank() {
    let err = run_ranks(local::group(2), |rank, mut comm| {
        let mut dev = SimDevice::new()?;
        let b = dev.upload_f32(&[1.0; 4])?;
        if rank == 1 {
            comm.broadcast_f32(&mut dev, b, 4, 7)?; // no rank 7
        }
        Ok(())
    })
    .unwrap_err();
    assert!(format!("{err:#}").contains("rank 1") && format!("{err:#}").contains("root 7"), "{err:#}");
}

#[test]
fn nccl_all_reduce_on_each_gpu_when_present() {
    use appliance::device::cuda;
    use appliance::parallel::nccl;
    // (No shim re-exec inside a test harness: only a directly loadable NCCL.)
    let direct = matches!(
        appliance::device::nccl::resolve(&appliance::device::nccl::search_dirs()),
        appliance::device::nccl::Resolution::Direct(_)
    );
    if !cuda::available() || !direct || !nccl::available() {
        eprintln!("no GPU with NCCL here: the simulated-rank tests cover the collectives");
        return;
    }
    // One rank per GPU, each on its own thread.
    let gpus = cuda::device_count().unwrap();
    let id = nccl::unique_id().unwrap();
    let handles: Vec<_> = (0..gpus)
        .map(|rank| {
            std::thread::spawn(move || -> anyhow::Result<Vec<f32>> {
                let mut dev = cuda::CudaDevice::new(rank)?;
                let mut comm = nccl::NcclComm::init(id, gpus, rank, &mut dev)?;
                let buf = dev.upload_f32(&[rank as f32 + 1.0; 8])?;
                comm.all_reduce_sum_f32(&mut dev, buf, 8)?;
                dev.download_f32(buf, 8)
            })
        })
        .collect();
    let want: f32 = (1..=gpus).map(|r| r as f32).sum();
    for h in handles {
        assert!(h.join().unwrap().unwrap().iter().all(|&v| v == want));
    }
}
