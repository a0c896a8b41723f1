//! Measures interpreter throughput (thread-instructions per second) on two NVRTC
//! kernels, to keep an eye on CI time: `cargo run --release -p ptx-sim --example throughput`.

use ptx_sim::{Arg, LaunchConfig, Memory, Module};
use std::time::Instant;

fn main() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kernels");
    let red = Module::parse(&std::fs::read_to_string(format!("{dir}/block_reduce.ptx")).unwrap()).unwrap();
    let n = 1 << 20;
    let mut mem = Memory::new();
    let x = mem.alloc(n * 4);
    let out = mem.alloc(4);
    let t = Instant::now();
    let cfg = LaunchConfig { grid: (64, 1, 1), block: (256, 1, 1), dynamic_shared_bytes: 0 };
    let st = red.launch(&mut mem, "block_reduce", cfg, &[Arg::Ptr(x), Arg::Ptr(out), Arg::I32(n as i32)]).unwrap();
    let s = t.elapsed().as_secs_f64();
    println!("block_reduce n={n}: {} thread-instructions in {s:.3}s = {:.1} M/s", st.instructions, st.instructions as f64 / s / 1e6);

    let gemm = Module::parse(&std::fs::read_to_string(format!("{dir}/mma_gemm.ptx")).unwrap()).unwrap();
    let (m, nn, k) = (128usize, 128usize, 128usize);
    let a = mem.alloc(m * k * 2);
    let b = mem.alloc(nn * k * 2);
    let c = mem.alloc(m * nn * 4);
    let cfg = LaunchConfig { grid: (nn as u32 / 8, m as u32 / 16, 1), block: (32, 1, 1), dynamic_shared_bytes: 0 };
    let t = Instant::now();
    let st = gemm
        .launch(&mut mem, "mma_gemm_bf16", cfg, &[Arg::Ptr(a), Arg::Ptr(b), Arg::Ptr(c), Arg::I32(m as i32), Arg::I32(nn as i32), Arg::I32(k as i32)])
        .unwrap();
    let s = t.elapsed().as_secs_f64();
    println!("mma_gemm {m}x{nn}x{k}: {} thread-instructions in {s:.3}s = {:.1} M/s", st.instructions, st.instructions as f64 / s / 1e6);
}
