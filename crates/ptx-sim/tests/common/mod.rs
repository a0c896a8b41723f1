//! Shared test helpers: typed upload/download through `Memory`, a tiny
//! deterministic RNG (tests must not depend on external crates or seeds), and
//! bf16/f16 rounding references built on the `half` crate.
#![allow(dead_code)]

use ptx_sim::{Arg, LaunchConfig, Memory, Module};

pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407))
    }
    pub fn next_u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u32() as f64 / (1u64 << 31) as f64 - 1.0) as f32
    }
}

pub fn up_f32(mem: &mut Memory, v: &[f32]) -> u64 {
    let p = mem.alloc(v.len() * 4);
    let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    mem.write(p, &b).unwrap();
    p
}
pub fn up_u32(mem: &mut Memory, v: &[u32]) -> u64 {
    let p = mem.alloc(v.len() * 4);
    let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    mem.write(p, &b).unwrap();
    p
}
pub fn up_u16(mem: &mut Memory, v: &[u16]) -> u64 {
    let p = mem.alloc(v.len() * 2);
    let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    mem.write(p, &b).unwrap();
    p
}
pub fn down_f32(mem: &Memory, p: u64, n: usize) -> Vec<f32> {
    let mut b = vec![0u8; n * 4];
    mem.read(p, &mut b).unwrap();
    b.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}
pub fn down_u32(mem: &Memory, p: u64, n: usize) -> Vec<u32> {
    let mut b = vec![0u8; n * 4];
    mem.read(p, &mut b).unwrap();
    b.chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
}
pub fn down_u64(mem: &Memory, p: u64, n: usize) -> Vec<u64> {
    let mut b = vec![0u8; n * 8];
    mem.read(p, &mut b).unwrap();
    b.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect()
}
pub fn down_u16(mem: &Memory, p: u64, n: usize) -> Vec<u16> {
    let mut b = vec![0u8; n * 2];
    mem.read(p, &mut b).unwrap();
    b.chunks(2).map(|c| u16::from_le_bytes(c.try_into().unwrap())).collect()
}

pub fn cfg(grid: u32, block: u32) -> LaunchConfig {
    LaunchConfig { grid: (grid, 1, 1), block: (block, 1, 1), dynamic_shared_bytes: 0 }
}

pub fn bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}
pub fn bf16_f32(b: u16) -> f32 {
    half::bf16::from_bits(b).to_f32()
}
pub fn f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}
pub fn f16_f32(b: u16) -> f32 {
    half::f16::from_bits(b).to_f32()
}

/// Wraps a kernel body in a module with `.param .u64 out` (and `in`), for snippets.
pub fn snippet(body: &str) -> Module {
    let src = format!(
        ".version 8.4\n.target sm_80\n.address_size 64\n.visible .entry k(\n.param .u64 out,\n.param .u64 inp\n)\n{{\n{body}\n}}\n"
    );
    match Module::parse(&src) {
        Ok(m) => m,
        Err(e) => panic!("{e}\n{src}"),
    }
}

/// Runs a snippet with one output buffer (`out`, u32 words) and one input buffer.
pub fn run_snippet(body: &str, threads: u32, out_words: usize, input: &[u32]) -> Vec<u32> {
    let m = snippet(body);
    let mut mem = Memory::new();
    let out = mem.alloc(out_words * 4);
    let inp = up_u32(&mut mem, if input.is_empty() { &[0] } else { input });
    if let Err(e) = m.launch(&mut mem, "k", cfg(1, threads), &[Arg::Ptr(out), Arg::Ptr(inp)]) {
        panic!("{e}");
    }
    down_u32(&mem, out, out_words)
}
