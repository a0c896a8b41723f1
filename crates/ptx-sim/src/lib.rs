//! ptx-sim: a CPU interpreter for the PTX that NVRTC 12.4 emits for compute_80.
//!
//! The appliance ships precompiled PTX; CI has no GPU. This crate runs that exact
//! PTX on the CPU so every kernel is tested in every CI run. It owns the public API
//! the `Device` layer codes against (`Module`, `Memory`, `LaunchConfig`, `Arg`,
//! `LaunchStats`, `SimError`); parsing lives in `parse`, pre-decoded instructions
//! in `ir`, call inlining in `link`, execution in `exec`, float formats and
//! rounding in `float`, device memory in `memory`. Anything the interpreter does not implement fails loudly with the
//! instruction's text and line instead of mis-executing.
//!
//! # Execution model
//! Blocks run one after another (so float atomics are deterministic run to run).
//! In a block, warps of 32 threads run with one PC per thread; a warp steps the
//! group of threads at its lowest PC, which reconverges branches at their join
//! point. A warp runs until its threads wait at `bar.sync` or exit; the barrier
//! releases when every non-exited thread of the block waits there (exited threads
//! do not hold it up, as CUDA specifies). Threads waiting at different barrier
//! instructions, or waiting while another warp spins past the instruction limit,
//! are reported as a deadlock. Warp collectives (`shfl.sync`, `vote.sync`,
//! `activemask`) require every non-exited thread their member mask names to be at
//! the instruction, the matrix ones (`mma`, `ldmatrix`, `wmma`) the full warp, and
//! a `shfl` that would read an inactive or exited lane is an error.
//! `cp.async` copies at once (so `commit_group`/`wait_group` are no-ops); fences
//! are no-ops. A launch stops after 4e9 thread-instructions (runaway loop guard;
//! `Module::with_instruction_limit` or `PTX_SIM_MAX_INSTRUCTIONS`).
//!
//! # Coverage
//! - Memory: `ld`/`st` (scalar, `.v2`, `.v4`; global, shared, local, param, const
//!   and generic addressing; `.nc`, cache and ordering qualifiers accepted),
//!   `cvta`/`cvta.to`, static and dynamic (`.extern .shared`) shared memory,
//!   `.local` depots, module-scope `.global`/`.const` variables with initializers
//!   (materialized per launch; writes to them do not persist), bounds checks on
//!   every access.
//! - Integer: `add`/`sub` (`.sat` on s32), `mul`/`mad` `.lo/.hi/.wide`, `div`,
//!   `rem`, `abs`, `neg`, `min`, `max`, `and`/`or`/`xor`/`not`/`cnot`, `shl`/`shr`,
//!   `shf.{l,r}.{wrap,clamp}`, `popc`, `clz`, `brev`, `bfind`, `bfe`, `bfi`, `prmt`
//!   (default mode), `lop3`, on 8–64-bit types.
//! - Float: f32 `add/sub/mul/div/fma/mad/sqrt/rcp` with `.rn/.rz/.rm/.rp` (exact
//!   directed rounding from error terms), `.ftz`, `.sat`; `min/max/abs/neg/
//!   copysign`; approximate `ex2/lg2/sin/cos/rsqrt/tanh/rcp/sqrt/div.full`
//!   computed with correctly rounded f32 math — close to, not bit-identical with,
//!   the hardware's approximations; f64 arithmetic (round to nearest);
//!   f16/bf16 and f16x2/bf16x2 `add/sub/mul/fma/min/max/neg/abs` (exact in f64, one
//!   rounding per lane); `testp`.
//! - Conversions: `cvt` between all integer and float widths incl. f16/bf16, with
//!   `.rn/.rz/.rm/.rp/.rna`, `.rni/.rzi/.rmi/.rpi`, `.sat`, `.ftz`, `.relu`,
//!   `.satfinite`; float-to-int saturates and maps NaN to 0; packed
//!   `cvt.rn{.relu}.{f16x2,bf16x2}.f32`.
//! - Control: predicates, `setp` (all comparisons incl. unordered, `.and/.or/.xor`,
//!   two destinations), `selp`, `bra`, `ret`, `exit`, `bar.sync`/`barrier.sync`,
//!   `bar.warp.sync`.
//! - Special registers: `%tid`, `%ntid`, `%ctaid`, `%nctaid`, `%laneid`, `%warpid`,
//!   `%nwarpid`, `%lanemask_*`, `%clock`/`%clock64`/`%globaltimer` (the launch's
//!   instruction count), `%smid` (0), `%nsmid` (1).
//! - Warp: `shfl.sync.{up,down,bfly,idx}` with clamp/segment masks and the
//!   predicate output, `vote.sync.{all,any,uni,ballot}`, `activemask`,
//!   `redux.sync.{add,min,max,and,or,xor}` on 32-bit integers.
//! - Atomics: `atom`/`red` `add/min/max/exch/cas/and/or/xor/inc/dec` on
//!   global/shared/generic for 32/64-bit integers, f32/f64 add, f16/bf16(x2) add.
//! - Tensor cores: `mma.sync.aligned.{m16n8k16,m16n8k8}.row.col.f32.{bf16,f16}.
//!   {bf16,f16}.f32` with the PTX ISA fragment layouts (products exact, the sum
//!   in f64, rounded once to f32), `ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}
//!   .shared.b16`, `cp.async.{ca,cg}.shared.global` with src-size zero fill or
//!   ignore-src, `wmma.{load,store,mma}` m16n16k16 with f16/bf16 inputs and f32
//!   accumulators (fragment layout is ISA-unspecified; ours is consistent).
//!
//! - Calls: `.func` device functions (e.g. `__noinline__` helpers) are inlined at
//!   each call site by `link` (own registers, call frame and local memory; `@p call`
//!   too); the sequences NVRTC emits for `assert()` (a failing assert stops the
//!   launch with its message, file and line), `printf()` (accepted, output
//!   dropped, returns 0) and `__trap()` (an error).
//!
//! - Debug info: `.loc`/`.file` (-lineinfo) put the CUDA source line next to the
//!   instruction in errors; `.section` debug data is skipped.
//!
//! # Not supported (fails loudly when executed)
//! recursive calls, calls through function pointers or to functions the module
//! does not define, `bar.sync` with a thread count smaller than the block,
//! `bar.arrive`/`bar.red`, `match.sync`, directed rounding on f64,
//! `mul24`/`sad`, non-default `prmt` modes, f16 accumulators in mma/wmma, other
//! mma/wmma shapes and types, Hopper instructions (wgmma, TMA, clusters,
//! `cp.async.bulk`), textures and surfaces. `Module::unsupported()` lists such
//! instructions in a module without running it.

mod exec;
mod float;
mod ir;
mod link;
mod memory;
mod parse;

pub use memory::Memory;

use std::collections::HashMap;

/// Errors from parsing or running PTX. Every run-time error names the kernel, the
/// PTX source line and the instruction text so a failing CI log points at the PTX.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("PTX parse error at line {line}: {msg}")]
    Parse { line: usize, msg: String },
    #[error("unsupported PTX at line {line}: `{instruction}`{}", if .reason.is_empty() { String::new() } else { format!(" ({})", .reason) })]
    Unsupported { instruction: String, line: usize, reason: String },
    #[error("out-of-bounds {space} access of {size} bytes at {addr:#x} in kernel `{kernel}`, line {line}: `{instruction}`")]
    OutOfBounds { kernel: String, line: usize, instruction: String, space: &'static str, addr: u64, size: usize },
    #[error("barrier deadlock in kernel `{kernel}`, block {block:?}: {detail}")]
    Deadlock { kernel: String, block: (u32, u32, u32), detail: String },
    #[error("bad launch of `{kernel}`: {msg}")]
    BadLaunch { kernel: String, msg: String },
    #[error("execution error in kernel `{kernel}`, line {line}: `{instruction}`: {msg}")]
    Exec { kernel: String, line: usize, instruction: String, msg: String },
    #[error("memory error: {0}")]
    Memory(String),
}

/// Grid and block shape of a launch, plus the bytes of `extern .shared` memory.
#[derive(Clone, Copy, Debug)]
pub struct LaunchConfig {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub dynamic_shared_bytes: u32,
}

/// One kernel argument, matched against the kernel's `.param` list by size.
#[derive(Clone, Debug)]
pub enum Arg {
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    Ptr(u64),
}

impl Arg {
    fn bytes(&self) -> Vec<u8> {
        match *self {
            Arg::U32(v) => v.to_le_bytes().to_vec(),
            Arg::I32(v) => v.to_le_bytes().to_vec(),
            Arg::F32(v) => v.to_le_bytes().to_vec(),
            Arg::U64(v) | Arg::Ptr(v) => v.to_le_bytes().to_vec(),
            Arg::I64(v) => v.to_le_bytes().to_vec(),
        }
    }
}

/// What a launch did: `instructions` counts per-thread executed instructions
/// (a warp instruction with 32 active threads counts 32), `blocks` the blocks run.
#[derive(Clone, Debug, Default)]
pub struct LaunchStats {
    pub instructions: u64,
    pub blocks: u64,
}

/// A parsed PTX module: its kernels, pre-decoded and ready to launch.
pub struct Module {
    kernels: Vec<ir::Kernel>,
    globals: Vec<ir::GlobalVar>,
    by_name: HashMap<String, usize>,
    limit: Option<u64>,
}

impl Module {
    /// Parses a whole PTX module (the text NVRTC returns).
    pub fn parse(ptx: &str) -> Result<Module, SimError> {
        let (kernels, globals) = parse::parse_module(ptx)?;
        let by_name = kernels.iter().enumerate().map(|(i, k)| (k.name.clone(), i)).collect();
        Ok(Module { kernels, globals, by_name, limit: None })
    }

    /// Caps the thread-instructions one launch may execute (default 4e9, or the
    /// `PTX_SIM_MAX_INSTRUCTIONS` environment variable); past it the launch fails
    /// instead of spinning forever in a runaway loop.
    pub fn with_instruction_limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Every instruction that decodes as unsupported, as (line, text, reason):
    /// executing one fails the launch, so a non-empty list flags PTX the
    /// interpreter cannot run yet without having to reach it at run time.
    pub fn unsupported(&self) -> Vec<(usize, String, String)> {
        self.kernels
            .iter()
            .flat_map(|k| k.insts.iter())
            .filter(|i| i.op == ir::Op::Unsupported)
            .map(|i| (i.line, i.text.clone(), i.why.clone()))
            .collect()
    }

    /// The `.entry` kernels in source order.
    pub fn kernel_names(&self) -> Vec<String> {
        self.kernels.iter().filter(|k| k.is_entry).map(|k| k.name.clone()).collect()
    }

    /// Runs `kernel` over the grid. Blocks run one after another (deterministic);
    /// threads of a block run cooperatively, warp by warp, around `bar.sync`.
    pub fn launch(&self, mem: &mut Memory, kernel: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<LaunchStats, SimError> {
        let k = match self.by_name.get(kernel) {
            Some(&i) if self.kernels[i].is_entry => &self.kernels[i],
            _ => {
                return Err(SimError::BadLaunch { kernel: kernel.to_string(), msg: format!("no such kernel; the module has {:?}", self.kernel_names()) })
            }
        };
        // Module variables live in device memory for the launch only: constant
        // tables are re-initialized each time; writes to them do not persist.
        let addrs: Vec<u64> = self.globals.iter().map(|g| mem.alloc(g.init.len().max(g.align))).collect();
        for (g, &a) in self.globals.iter().zip(&addrs) {
            mem.write(a, &g.init)?;
        }
        let r = exec::launch(k, mem, cfg, args, &addrs, self.limit);
        for a in addrs {
            mem.free(a)?;
        }
        r
    }
}
