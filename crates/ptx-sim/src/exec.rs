//! The executor: runs a decoded kernel over a grid.
//!
//! Blocks run one after another, so results (including float atomics) are
//! deterministic. Inside a block, threads are grouped into warps of 32; each thread
//! has its own PC, and a warp always steps the group of threads at its lowest PC.
//! That reconverges divergent branches at their join point without a
//! reconvergence stack (the lower path runs until it reaches the higher one), and
//! it gives warp-collective instructions (shfl, vote, mma, ldmatrix) the set of
//! threads that are at the instruction together: a collective whose member mask
//! names a live thread that is elsewhere (or, for the matrix ops, an exited one) is
//! an error, not a guess, and so is a shfl that reads an inactive lane. A warp runs
//! until all its threads wait at `bar.sync` or have exited; when every warp of the
//! block is there, the barrier releases. Exited threads do not hold a barrier up
//! (CUDA: `__syncthreads` waits for all non-exited threads); threads waiting at
//! different barrier instructions are reported as a deadlock, and so is a warp that
//! spins past the instruction limit while others wait at a barrier.
//!
//! Generic addresses: shared memory appears at `SHARED_WIN + offset` and a thread's
//! local memory at `LOCAL_WIN + offset`; everything else is global memory.

#![allow(clippy::needless_range_loop)] // lane and fragment loops index several arrays

use crate::float::{self, Bin, Fmt};
use crate::ir::*;
use crate::{Arg, LaunchConfig, LaunchStats, Memory, SimError};

pub(crate) const SHARED_WIN: u64 = 0x0000_1000_0000_0000;
pub(crate) const LOCAL_WIN: u64 = 0x0000_2000_0000_0000;
const WIN: u64 = 1 << 32;
/// Thread-instructions one launch may execute before it is reported as a runaway
/// (minutes of interpreter time); `PTX_SIM_MAX_INSTRUCTIONS` overrides it.
const DEFAULT_LIMIT: u64 = 4_000_000_000;
/// Largest shared memory one block may have (227 KiB on Hopper; 163 KiB on A100).
const MAX_SHARED: usize = 227 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TS {
    Run,
    Bar,
    Done,
}

enum Fault {
    Oob(&'static str, u64, usize),
    Msg(String),
    Unsup(String),
}

type R<T> = Result<T, Fault>;

fn msg<T>(s: impl Into<String>) -> R<T> {
    Err(Fault::Msg(s.into()))
}

enum Flow {
    Next,
    Jump(u32),
    Exit,
    Bar,
}

#[inline]
fn mask(bits: u32) -> u64 {
    if bits >= 64 { !0 } else { (1u64 << bits) - 1 }
}
#[inline]
fn sx(v: u64, bits: u32) -> i64 {
    if bits >= 64 { v as i64 } else { ((v << (64 - bits)) as i64) >> (64 - bits) }
}

fn fmt_of(t: Ty) -> Option<Fmt> {
    match t {
        Ty::F16 | Ty::F16x2 => Some(float::F16),
        Ty::BF16 | Ty::BF16x2 => Some(float::BF16),
        Ty::F32 => Some(float::F32),
        Ty::F64 => Some(float::F64),
        _ => None,
    }
}

/// Interprets raw register bits of float type `t` as f64 (exact).
fn to_f64(v: u64, t: Ty) -> f64 {
    match t {
        Ty::F32 => f32::from_bits(v as u32) as f64,
        Ty::F64 => f64::from_bits(v),
        Ty::F16 | Ty::F16x2 => float::F16.to_f64(v & 0xffff),
        Ty::BF16 | Ty::BF16x2 => float::BF16.to_f64(v & 0xffff),
        _ => f64::NAN,
    }
}

pub fn launch(k: &Kernel, mem: &mut Memory, cfg: LaunchConfig, args: &[Arg], gaddr: &[u64], limit: Option<u64>) -> Result<LaunchStats, SimError> {
    let bad = |m: String| SimError::BadLaunch { kernel: k.name.clone(), msg: m };
    let (bx, by, bz) = cfg.block;
    let (gx, gy, gz) = cfg.grid;
    let nthreads = bx as u64 * by as u64 * bz as u64;
    if nthreads == 0 || nthreads > 1024 {
        return Err(bad(format!("block {:?} has {nthreads} threads (1..=1024 allowed)", cfg.block)));
    }
    if gx == 0 || gy == 0 || gz == 0 {
        return Err(bad(format!("grid {:?} is empty", cfg.grid)));
    }
    // The hardware's limits, so a launch that would fail on a GPU fails here too.
    if bx > 1024 || by > 1024 || bz > 64 || gx > i32::MAX as u32 || gy > 65535 || gz > 65535 {
        return Err(bad(format!("grid {:?} / block {:?} exceed the CUDA limits", cfg.grid, cfg.block)));
    }
    if k.dyn_shared_offset > 48 * 1024 {
        return Err(bad(format!("{} bytes of static shared memory (48 KiB is the limit)", k.dyn_shared_offset)));
    }
    if k.dyn_shared_offset + cfg.dynamic_shared_bytes as usize > MAX_SHARED {
        return Err(bad(format!(
            "{} bytes of static + {} of dynamic shared memory exceed {MAX_SHARED} (the sm_90 per-block maximum)",
            k.dyn_shared_offset, cfg.dynamic_shared_bytes
        )));
    }
    if args.len() != k.params.len() {
        return Err(bad(format!("{} arguments given, the kernel takes {}", args.len(), k.params.len())));
    }
    let mut params = vec![0u8; k.param_bytes];
    for (i, (a, p)) in args.iter().zip(&k.params).enumerate() {
        let b = a.bytes();
        if b.len() != p.size && !(p.size < b.len() && p.size <= 2) {
            return Err(bad(format!("argument {i} ({a:?}) is {} bytes, parameter {i} is {} bytes", b.len(), p.size)));
        }
        params[p.offset..p.offset + p.size].copy_from_slice(&b[..p.size]);
    }
    let shared_bytes = k.dyn_shared_offset + cfg.dynamic_shared_bytes as usize;
    let n = nthreads as usize;
    let mut b = Block {
        k,
        mem,
        cfg,
        ctaid: [0; 3],
        n,
        nr: k.nregs.max(1),
        regs: vec![0; n * k.nregs.max(1)],
        pc: vec![0; n],
        st: vec![TS::Run; n],
        shared: vec![0; shared_bytes],
        local: vec![0; n * k.local_bytes],
        cparams: vec![0; n * k.call_frame],
        params,
        gaddr,
        count: 0,
        limit: limit.unwrap_or_else(|| std::env::var("PTX_SIM_MAX_INSTRUCTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_LIMIT)),
    };
    let mut blocks = 0u64;
    for z in 0..gz {
        for y in 0..gy {
            for x in 0..gx {
                b.ctaid = [x, y, z];
                b.regs.fill(0);
                b.pc.fill(0);
                b.st.fill(TS::Run);
                b.shared.fill(0);
                b.local.fill(0);
                b.cparams.fill(0);
                b.run_block()?;
                blocks += 1;
            }
        }
    }
    Ok(LaunchStats { instructions: b.count, blocks })
}

struct Block<'a> {
    k: &'a Kernel,
    mem: &'a mut Memory,
    cfg: LaunchConfig,
    ctaid: [u32; 3],
    n: usize,
    nr: usize,
    regs: Vec<u64>,
    pc: Vec<u32>,
    st: Vec<TS>,
    shared: Vec<u8>,
    local: Vec<u8>,
    cparams: Vec<u8>,
    params: Vec<u8>,
    gaddr: &'a [u64],
    count: u64,
    limit: u64,
}

impl Block<'_> {
    fn run_block(&mut self) -> Result<(), SimError> {
        let nwarps = self.n.div_ceil(32);
        loop {
            for w in 0..nwarps {
                self.run_warp(w)?;
            }
            let waiting = self.st.iter().filter(|&&s| s == TS::Bar).count();
            if waiting == 0 {
                return Ok(());
            }
            // Exited threads do not hold a barrier up (CUDA: __syncthreads waits for
            // all non-exited threads). Waiting at different `bar.sync` instructions
            // is undefined for aligned barriers and hangs on hardware: report it.
            let mut at: Vec<u32> = (0..self.n).filter(|&t| self.st[t] == TS::Bar).map(|t| self.pc[t]).collect();
            at.sort_unstable();
            at.dedup();
            if at.len() > 1 {
                let desc: Vec<String> = at
                    .iter()
                    .map(|&pc| {
                        let c = (0..self.n).filter(|&t| self.st[t] == TS::Bar && self.pc[t] == pc).count();
                        let i = &self.k.insts[pc as usize];
                        format!("{c} at `{}` (line {})", i.text, i.line)
                    })
                    .collect();
                return Err(SimError::Deadlock {
                    kernel: self.k.name.clone(),
                    block: (self.ctaid[0], self.ctaid[1], self.ctaid[2]),
                    detail: format!("threads wait at different barriers: {}", desc.join(", ")),
                });
            }
            for t in 0..self.n {
                if self.st[t] == TS::Bar {
                    self.st[t] = TS::Run;
                    self.pc[t] += 1;
                }
            }
        }
    }

    fn run_warp(&mut self, w: usize) -> Result<(), SimError> {
        let lo = w * 32;
        let hi = (lo + 32).min(self.n);
        let ninst = self.k.insts.len() as u32;
        // When every running thread stepped a non-control instruction together, the
        // next group is the same threads at pc+1: skip the scan (the common case).
        let mut next: Option<(u32, u32)> = None;
        let mut running = 0u32;
        loop {
            let (minpc, m) = match next.take() {
                Some(x) => x,
                None => {
                    let mut minpc = u32::MAX;
                    let mut m = 0u32;
                    running = 0;
                    for t in lo..hi {
                        if self.st[t] == TS::Run {
                            running |= 1 << (t - lo);
                            let p = self.pc[t];
                            if p < minpc {
                                minpc = p;
                                m = 1 << (t - lo);
                            } else if p == minpc {
                                m |= 1 << (t - lo);
                            }
                        }
                    }
                    (minpc, m)
                }
            };
            if m == 0 {
                return Ok(());
            }
            if minpc >= ninst {
                for t in lo..hi {
                    if m >> (t - lo) & 1 == 1 {
                        self.st[t] = TS::Done;
                    }
                }
                continue;
            }
            let k = self.k;
            let inst = &k.insts[minpc as usize];
            self.count += m.count_ones() as u64;
            if let Err(f) = self.step(lo, hi, m, inst) {
                return Err(self.fault(inst, f));
            }
            if m == running && !matches!(inst.op, Op::Bra | Op::Ret | Op::Exit | Op::BarSync) {
                next = Some((minpc + 1, m));
            }
            if self.count > self.limit {
                if let Some(t) = (0..self.n).find(|&t| self.st[t] == TS::Bar) {
                    let b = &self.k.insts[self.pc[t] as usize];
                    let waiting = self.st.iter().filter(|&&s| s == TS::Bar).count();
                    return Err(SimError::Deadlock {
                        kernel: self.k.name.clone(),
                        block: (self.ctaid[0], self.ctaid[1], self.ctaid[2]),
                        detail: format!(
                            "{waiting} thread(s) wait at `{}` (line {}) while warp {} never reaches it: it ran past {} thread-instructions, last at `{}` (line {})",
                            b.text, b.line, lo / 32, self.limit, inst.text, inst.line
                        ),
                    });
                }
                return Err(self.fault(
                    inst,
                    Fault::Msg(format!(
                        "more than {} thread-instructions in this launch (an infinite loop?); raise PTX_SIM_MAX_INSTRUCTIONS if it is legitimate",
                        self.limit
                    )),
                ));
            }
        }
    }

    fn fault(&self, inst: &Inst, f: Fault) -> SimError {
        match f {
            Fault::Oob(space, addr, size) => SimError::OutOfBounds {
                kernel: self.k.name.clone(),
                line: inst.line,
                instruction: inst.text.clone(),
                space,
                addr,
                size,
            },
            Fault::Msg(m) => SimError::Exec { kernel: self.k.name.clone(), line: inst.line, instruction: inst.text.clone(), msg: m },
            Fault::Unsup(why) => SimError::Unsupported { instruction: inst.text.clone(), line: inst.line, reason: why },
        }
    }

    #[inline(always)]
    fn guard_ok(&self, t: usize, inst: &Inst) -> bool {
        match inst.guard {
            None => true,
            Some((p, neg)) => (self.regs[t * self.nr + p as usize] != 0) != neg,
        }
    }

    fn step(&mut self, lo: usize, hi: usize, m: u32, inst: &Inst) -> R<()> {
        match inst.op {
            Op::Unsupported => return Err(Fault::Unsup(inst.why.clone())),
            Op::Shfl | Op::Vote | Op::Redux | Op::Mma | Op::Ldmatrix | Op::Activemask | Op::WmmaLoad | Op::WmmaStore | Op::WmmaMma => {
                return self.collective(lo, hi, m, inst)
            }
            _ => {}
        }
        for t in lo..hi {
            if m >> (t - lo) & 1 == 0 {
                continue;
            }
            if !self.guard_ok(t, inst) {
                self.pc[t] += 1;
                continue;
            }
            match self.exec(t, inst)? {
                Flow::Next => self.pc[t] += 1,
                Flow::Jump(l) => self.pc[t] = l,
                Flow::Exit => self.st[t] = TS::Done,
                Flow::Bar => self.st[t] = TS::Bar,
            }
        }
        Ok(())
    }

    // ---- operands -------------------------------------------------------------

    fn sreg(&self, t: usize, s: Sreg) -> u64 {
        let (bx, by, bz) = self.cfg.block;
        let (bx, by) = (bx as usize, by as usize);
        let tid = [t % bx, (t / bx) % by, t / (bx * by)];
        let d = |d: Dim| match d {
            Dim::X => 0,
            Dim::Y => 1,
            Dim::Z => 2,
        };
        let lane = (t % 32) as u32;
        match s {
            Sreg::Tid(x) => tid[d(x)] as u64,
            Sreg::Ntid(x) => [self.cfg.block.0, self.cfg.block.1, bz][d(x)] as u64,
            Sreg::Ctaid(x) => self.ctaid[d(x)] as u64,
            Sreg::Nctaid(x) => [self.cfg.grid.0, self.cfg.grid.1, self.cfg.grid.2][d(x)] as u64,
            Sreg::Laneid => lane as u64,
            Sreg::Warpid => (t / 32) as u64,
            Sreg::Nwarpid => self.n.div_ceil(32) as u64,
            Sreg::Smid | Sreg::Gridid => 0,
            Sreg::Nsmid => 1,
            Sreg::Clock | Sreg::Clock64 | Sreg::Globaltimer => self.count,
            Sreg::LanemaskEq => 1u64 << lane,
            Sreg::LanemaskLt => (1u64 << lane) - 1,
            Sreg::LanemaskLe => (1u64 << (lane + 1)) - 1,
            Sreg::LanemaskGt => !((1u64 << (lane + 1)) - 1) & 0xffff_ffff,
            Sreg::LanemaskGe => !((1u64 << lane) - 1) & 0xffff_ffff,
        }
    }

    /// Reads an operand as raw bits; float immediates convert to `ty`'s format.
    #[inline(always)]
    fn rt(&self, t: usize, o: &Operand, ty: Ty) -> R<u64> {
        Ok(match o {
            Operand::Reg(x) => self.regs[t * self.nr + *x as usize],
            Operand::NotReg(x) => (self.regs[t * self.nr + *x as usize] == 0) as u64,
            Operand::Imm(Imm::Int(v)) => *v as u64,
            Operand::Imm(Imm::F32(b)) => match ty {
                Ty::F64 => (f32::from_bits(*b) as f64).to_bits(),
                Ty::F16 | Ty::BF16 => float::from_f64(f32::from_bits(*b) as f64, fmt_of(ty).unwrap(), Rnd::Rn),
                _ => *b as u64,
            },
            Operand::Imm(Imm::F64(b)) => match fmt_of(ty) {
                Some(f) if ty != Ty::F64 && ty != Ty::F16x2 && ty != Ty::BF16x2 => float::from_f64(f64::from_bits(*b), f, Rnd::Rn),
                _ => *b,
            },
            Operand::Special(s) => self.sreg(t, *s),
            Operand::Sym(Space::Global, i) => self.gaddr[*i as usize],
            Operand::Sym(_, off) => *off,
            _ => return msg(format!("operand {o:?} is not a value")),
        })
    }

    #[inline(always)]
    fn wr(&mut self, t: usize, o: &Operand, v: u64) -> R<()> {
        match o {
            Operand::Reg(x) => {
                self.regs[t * self.nr + *x as usize] = v;
                Ok(())
            }
            Operand::Sink => Ok(()),
            _ => msg(format!("operand {o:?} is not a destination")),
        }
    }

    fn addr(&self, t: usize, o: &Operand) -> R<u64> {
        match o {
            Operand::Addr(base, off) => {
                let b = match base {
                    Some(b) => self.rt(t, b, Ty::U64)?,
                    None => 0,
                };
                Ok(b.wrapping_add(*off as u64))
            }
            _ => msg("expected an address operand"),
        }
    }

    // ---- memory ---------------------------------------------------------------

    /// The state space an access really uses: `ld/st.param` on a call-sequence
    /// variable goes to the call frame.
    fn space_of(space: Space, o: &Operand) -> Space {
        match (space, o) {
            (Space::Param, Operand::Addr(Some(b), _)) if matches!(**b, Operand::Sym(Space::CallParam, _)) => Space::CallParam,
            _ => space,
        }
    }

    fn resolve(space: Space, addr: u64) -> (Space, u64) {
        match space {
            Space::Generic => {
                if (SHARED_WIN..SHARED_WIN + WIN).contains(&addr) {
                    (Space::Shared, addr - SHARED_WIN)
                } else if (LOCAL_WIN..LOCAL_WIN + WIN).contains(&addr) {
                    (Space::Local, addr - LOCAL_WIN)
                } else {
                    (Space::Global, addr)
                }
            }
            s => (s, addr),
        }
    }

    fn bytes_mut(&mut self, t: usize, space: Space, addr: u64, len: usize) -> R<&mut [u8]> {
        let (sp, a) = Self::resolve(space, addr);
        let lb = self.k.local_bytes;
        match sp {
            Space::Global => self.mem.slice_mut(a, len).ok_or(Fault::Oob("global", a, len)),
            Space::Shared => {
                let end = a.checked_add(len as u64).filter(|&e| e <= self.shared.len() as u64).ok_or(Fault::Oob("shared", a, len))?;
                Ok(&mut self.shared[a as usize..end as usize])
            }
            Space::Local => {
                let end = a.checked_add(len as u64).filter(|&e| e <= lb as u64).ok_or(Fault::Oob("local", a, len))?;
                Ok(&mut self.local[t * lb + a as usize..t * lb + end as usize])
            }
            Space::Param => {
                let end = a.checked_add(len as u64).filter(|&e| e <= self.params.len() as u64).ok_or(Fault::Oob("param", a, len))?;
                Ok(&mut self.params[a as usize..end as usize])
            }
            Space::Const => self.mem.slice_mut(a, len).ok_or(Fault::Oob("const", a, len)),
            Space::CallParam => {
                let f = self.k.call_frame;
                let end = a.checked_add(len as u64).filter(|&e| e <= f as u64).ok_or(Fault::Oob("param", a, len))?;
                Ok(&mut self.cparams[t * f + a as usize..t * f + end as usize])
            }
            Space::Generic => unreachable!(),
        }
    }

    /// A NUL-terminated string in global memory (for assert messages).
    fn c_string(&self, p: u64) -> String {
        let mut out = Vec::new();
        let (_, a) = Self::resolve(Space::Generic, p);
        while out.len() < 256 {
            match self.mem.slice(a + out.len() as u64, 1) {
                Some([0]) | None => break,
                Some(b) => out.push(b[0]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn load(&mut self, t: usize, space: Space, addr: u64, size: usize) -> R<u64> {
        let s = self.bytes_mut(t, space, addr, size)?;
        let mut b = [0u8; 8];
        b[..size].copy_from_slice(s);
        Ok(u64::from_le_bytes(b))
    }

    fn store(&mut self, t: usize, space: Space, addr: u64, size: usize, v: u64) -> R<()> {
        if space == Space::Param {
            return Err(Fault::Unsup("st.param to a kernel parameter".into()));
        }
        let s = self.bytes_mut(t, space, addr, size)?;
        s.copy_from_slice(&v.to_le_bytes()[..size]);
        Ok(())
    }

    // ---- per-thread instructions ---------------------------------------------

    fn exec(&mut self, t: usize, inst: &Inst) -> R<Flow> {
        let m = &inst.m;
        let o = &inst.ops;
        let ty = m.tys.first().copied().unwrap_or(Ty::B32);
        match inst.op {
            Op::Mov => self.mov(t, inst)?,
            Op::Ld => {
                let a = self.addr(t, &o[1])?;
                let sz = ty.bytes();
                let dsts: &[Operand] = match &o[0] {
                    Operand::Vec(v) => v,
                    x => std::slice::from_ref(x),
                };
                if dsts.len() != m.vec as usize {
                    return msg("vector width and operand count differ");
                }
                for (i, d) in dsts.iter().enumerate() {
                    let raw = self.load(t, Self::space_of(m.space, &o[1]), a.wrapping_add((i * sz) as u64), sz)?;
                    let v = if ty.signed() { sx(raw, ty.bits()) as u64 } else { raw };
                    self.wr(t, d, v)?;
                }
            }
            Op::St => {
                let a = self.addr(t, &o[0])?;
                let sz = ty.bytes();
                let srcs: &[Operand] = match &o[1] {
                    Operand::Vec(v) => v,
                    x => std::slice::from_ref(x),
                };
                if srcs.len() != m.vec as usize {
                    return msg("vector width and operand count differ");
                }
                for (i, s) in srcs.iter().enumerate() {
                    let v = self.rt(t, s, ty)?;
                    self.store(t, Self::space_of(m.space, &o[0]), a.wrapping_add((i * sz) as u64), sz, v)?;
                }
            }
            Op::Cvta | Op::CvtaTo => {
                let a = self.rt(t, &o[1], ty)?;
                let win = match m.space {
                    Space::Shared => SHARED_WIN,
                    Space::Local => LOCAL_WIN,
                    Space::Global | Space::Const => 0,
                    _ => return Err(Fault::Unsup("cvta for this state space".into())),
                };
                let v = if inst.op == Op::Cvta {
                    a.wrapping_add(win)
                } else {
                    if win != 0 && !(win..win + WIN).contains(&a) {
                        return msg(format!("cvta.to: generic address {a:#x} is not in that state space"));
                    }
                    a - win
                };
                self.wr(t, &o[0], v & mask(ty.bits()))?;
            }
            Op::Bra => {
                if let Operand::Label(l) = o[0] {
                    return Ok(Flow::Jump(l));
                }
                return msg("bad branch target");
            }
            Op::Ret | Op::Exit => return Ok(Flow::Exit),
            Op::Trap => return msg("trap executed (__trap() or a failed check)"),
            Op::FrameCopy => {
                let (dst, src, size) = (self.rt(t, &o[0], Ty::U64)?, self.rt(t, &o[1], Ty::U64)?, self.rt(t, &o[2], Ty::U64)? as usize);
                let bytes = self.bytes_mut(t, Space::CallParam, src, size)?.to_vec();
                self.bytes_mut(t, Space::CallParam, dst, size)?.copy_from_slice(&bytes);
            }
            Op::Call => return Err(Fault::Unsup("call that was not inlined".into())),
            Op::AssertFail => {
                // __assertfail(message, file, line, function, charsize)
                let args = match o.iter().rev().find(|x| matches!(x, Operand::Vec(_))) {
                    Some(Operand::Vec(v)) if v.len() >= 4 => v.clone(),
                    _ => return msg("device-side assert failed"),
                };
                let mut word = |i: usize, size: usize| -> R<u64> {
                    match args[i] {
                        Operand::Sym(Space::CallParam, off) => self.load(t, Space::CallParam, off, size),
                        _ => Ok(0),
                    }
                };
                let (pm, pf, line, pfun) = (word(0, 8)?, word(1, 8)?, word(2, 4)?, word(3, 8)?);
                let text = |p: u64| self.c_string(p);
                return msg(format!("device-side assert failed: `{}` at {}:{} in {}", text(pm), text(pf), line as u32, text(pfun)));
            }
            Op::BarSync => {
                // A thread count is only supported when it names the whole block.
                if o.len() == 2 {
                    let c = self.rt(t, &o[1], Ty::U32)? & 0xffff_ffff;
                    if c as usize != self.n.div_ceil(32) * 32 {
                        return Err(Fault::Unsup(format!("bar.sync with a thread count ({c}) smaller than the block")));
                    }
                }
                return Ok(Flow::Bar);
            }
            Op::BarWarpSync | Op::Nop | Op::CpAsyncCommit | Op::CpAsyncWait => {}
            Op::CpAsync => {
                let dst = self.addr(t, &o[0])?;
                let src = self.addr(t, &o[1])?;
                let cp = self.rt(t, &o[2], Ty::U32)? as usize;
                if ![4, 8, 16].contains(&cp) {
                    return msg(format!("cp.async size {cp}"));
                }
                let mut n = cp;
                if o.len() == 4 {
                    let v = self.rt(t, &o[3], Ty::U32)?;
                    if m.pred4 {
                        if v != 0 {
                            n = 0;
                        }
                    } else {
                        n = (v as usize).min(cp);
                    }
                }
                let mut buf = [0u8; 16];
                if n > 0 {
                    let s = self.bytes_mut(t, Space::Global, src, n)?;
                    buf[..n].copy_from_slice(s);
                }
                let d = self.bytes_mut(t, Space::Shared, dst, cp)?;
                d.copy_from_slice(&buf[..cp]);
            }
            Op::Setp => self.setp(t, inst)?,
            Op::Testp => {
                let x = to_f64(self.rt(t, &o[1], ty)?, ty);
                let min_normal = if ty == Ty::F32 { f32::MIN_POSITIVE as f64 } else { f64::MIN_POSITIVE };
                let r = match m.mode {
                    Mode::Finite => x.is_finite(),
                    Mode::Infinite => x.is_infinite(),
                    Mode::Number => !x.is_nan(),
                    Mode::NotANumber => x.is_nan(),
                    Mode::Normal => x.is_finite() && x.abs() >= min_normal,
                    Mode::Subnormal => x != 0.0 && x.abs() < min_normal,
                    _ => return Err(Fault::Unsup("testp mode".into())),
                };
                self.wr(t, &o[0], r as u64)?;
            }
            Op::Selp => {
                let a = self.rt(t, &o[1], ty)?;
                let b = self.rt(t, &o[2], ty)?;
                let c = self.rt(t, &o[3], Ty::Pred)?;
                self.wr(t, &o[0], if c != 0 { a } else { b })?;
            }
            Op::Cvt => self.cvt(t, inst)?,
            Op::Atom | Op::Red => self.atom(t, inst)?,
            _ => {
                if ty.is_float() {
                    self.farith(t, inst)?
                } else {
                    self.iarith(t, inst)?
                }
            }
        }
        Ok(Flow::Next)
    }

    fn mov(&mut self, t: usize, inst: &Inst) -> R<()> {
        let ty = inst.m.tys[0];
        let o = &inst.ops;
        match (&o[0], &o[1]) {
            (Operand::Vec(d), src) => {
                let v = self.rt(t, src, ty)?;
                let eb = ty.bits() / d.len() as u32;
                for (i, x) in d.iter().enumerate() {
                    self.wr(t, x, (v >> (i as u32 * eb)) & mask(eb))?;
                }
            }
            (dst, Operand::Vec(s)) => {
                let eb = ty.bits() / s.len() as u32;
                let mut v = 0u64;
                for (i, x) in s.iter().enumerate() {
                    v |= (self.rt(t, x, Ty::B64)? & mask(eb)) << (i as u32 * eb);
                }
                self.wr(t, dst, v)?;
            }
            (dst, src) => {
                let v = self.rt(t, src, ty)?;
                let v = if ty == Ty::Pred { (v & 1 != 0 || v != 0) as u64 } else { v & mask(ty.bits()) };
                self.wr(t, dst, v)?;
            }
        }
        Ok(())
    }

    fn setp(&mut self, t: usize, inst: &Inst) -> R<()> {
        let m = &inst.m;
        let o = &inst.ops;
        let ty = m.tys[0];
        let a = self.rt(t, &o[1], ty)?;
        let b = self.rt(t, &o[2], ty)?;
        let c = m.cmp.unwrap_or(Cmp::Eq);
        let r = if ty.is_float() {
            if matches!(ty, Ty::F16x2 | Ty::BF16x2) {
                return Err(Fault::Unsup("packed setp".into()));
            }
            let (mut x, mut y) = (to_f64(a, ty), to_f64(b, ty));
            if m.ftz && ty == Ty::F32 {
                // .ftz: subnormal inputs compare as (signed) zero.
                x = float::ftz32(x as f32) as f64;
                y = float::ftz32(y as f32) as f64;
            }
            let un = x.is_nan() || y.is_nan();
            match c {
                Cmp::Eq => !un && x == y,
                Cmp::Ne => !un && x != y,
                Cmp::Lt => !un && x < y,
                Cmp::Le => !un && x <= y,
                Cmp::Gt => !un && x > y,
                Cmp::Ge => !un && x >= y,
                Cmp::Equ => un || x == y,
                Cmp::Neu => un || x != y,
                Cmp::Ltu => un || x < y,
                Cmp::Leu => un || x <= y,
                Cmp::Gtu => un || x > y,
                Cmp::Geu => un || x >= y,
                Cmp::Num => !un,
                Cmp::Nan => un,
                _ => return Err(Fault::Unsup("integer comparison on floats".into())),
            }
        } else {
            let w = ty.bits();
            let (ua, ub) = (a & mask(w), b & mask(w));
            let (sa, sb) = (sx(a, w), sx(b, w));
            let s = ty.signed();
            match c {
                Cmp::Eq => ua == ub,
                Cmp::Ne => ua != ub,
                Cmp::Lt => if s { sa < sb } else { ua < ub },
                Cmp::Le => if s { sa <= sb } else { ua <= ub },
                Cmp::Gt => if s { sa > sb } else { ua > ub },
                Cmp::Ge => if s { sa >= sb } else { ua >= ub },
                Cmp::Lo => ua < ub,
                Cmp::Ls => ua <= ub,
                Cmp::Hi => ua > ub,
                Cmp::Hs => ua >= ub,
                _ => return Err(Fault::Unsup("float comparison on integers".into())),
            }
        };
        let (p, q) = match m.boolop {
            None => (r, !r),
            Some(op) => {
                let cv = self.rt(t, &o[3], Ty::Pred)? != 0;
                let f = |x: bool| match op {
                    BoolOp::And => x && cv,
                    BoolOp::Or => x || cv,
                    BoolOp::Xor => x ^ cv,
                };
                (f(r), f(!r))
            }
        };
        match &o[0] {
            Operand::Pair(pd, qd) => {
                self.wr(t, pd, p as u64)?;
                self.wr(t, qd, q as u64)?;
            }
            d => self.wr(t, d, p as u64)?,
        }
        Ok(())
    }

    fn iarith(&mut self, t: usize, inst: &Inst) -> R<()> {
        let m = &inst.m;
        if m.relu || m.satfinite || m.approx || m.ftz {
            return Err(Fault::Unsup("float modifier on an integer instruction".into()));
        }
        let o = &inst.ops;
        let ty = m.tys[0];
        let w = ty.bits();
        let s = ty.signed();
        let a = self.rt(t, &o[1], ty)?;
        let v: u64 = match inst.op {
            Op::Add | Op::Sub => {
                let b = self.rt(t, &o[2], ty)?;
                if m.sat {
                    if ty != Ty::S32 {
                        return Err(Fault::Unsup(".sat on this integer type".into()));
                    }
                    let (x, y) = (sx(a, 32), sx(b, 32));
                    let r = if inst.op == Op::Add { x + y } else { x - y };
                    r.clamp(i32::MIN as i64, i32::MAX as i64) as u64
                } else if inst.op == Op::Add {
                    a.wrapping_add(b)
                } else {
                    a.wrapping_sub(b)
                }
            }
            Op::Mul | Op::Mad => {
                let b = self.rt(t, &o[2], ty)?;
                let p: i128 = if s { sx(a, w) as i128 * sx(b, w) as i128 } else { (a & mask(w)) as i128 * (b & mask(w)) as i128 };
                let r = match m.mode {
                    Mode::Lo | Mode::None => p as u64 & mask(w),
                    Mode::Hi => (p >> w) as u64 & mask(w),
                    Mode::Wide => {
                        if w > 32 {
                            return Err(Fault::Unsup(".wide on 64-bit types".into()));
                        }
                        p as u64 & mask(2 * w)
                    }
                    _ => return Err(Fault::Unsup("multiply mode".into())),
                };
                if inst.op == Op::Mad {
                    let cw = if m.mode == Mode::Wide { 2 * w } else { w };
                    let c = self.rt(t, &o[3], ty)?;
                    if m.sat {
                        return Err(Fault::Unsup("mad.sat".into()));
                    }
                    r.wrapping_add(c) & mask(cw)
                } else {
                    r
                }
            }
            Op::Div | Op::Rem => {
                let b = self.rt(t, &o[2], ty)?;
                if s {
                    let (x, y) = (sx(a, w), sx(b, w));
                    if y == 0 {
                        if inst.op == Op::Div { mask(w) } else { a }
                    } else if inst.op == Op::Div {
                        x.wrapping_div(y) as u64
                    } else {
                        x.wrapping_rem(y) as u64
                    }
                } else {
                    let (x, y) = (a & mask(w), b & mask(w));
                    if y == 0 {
                        if inst.op == Op::Div { mask(w) } else { x }
                    } else if inst.op == Op::Div {
                        x / y
                    } else {
                        x % y
                    }
                }
            }
            Op::Abs => sx(a, w).wrapping_abs() as u64,
            Op::Neg => sx(a, w).wrapping_neg() as u64,
            Op::Min | Op::Max => {
                let b = self.rt(t, &o[2], ty)?;
                let lt = if s { sx(a, w) < sx(b, w) } else { a & mask(w) < b & mask(w) };
                if (inst.op == Op::Min) == lt { a } else { b }
            }
            Op::And | Op::Or | Op::Xor => {
                let b = self.rt(t, &o[2], ty)?;
                match inst.op {
                    Op::And => a & b,
                    Op::Or => a | b,
                    _ => a ^ b,
                }
            }
            Op::Not => {
                if ty == Ty::Pred {
                    (a == 0) as u64
                } else {
                    !a
                }
            }
            Op::Cnot => (a & mask(w) == 0) as u64,
            Op::Shl | Op::Shr => {
                let n = self.rt(t, &o[2], Ty::U32)? & 0xffff_ffff;
                if inst.op == Op::Shl {
                    if n >= w as u64 { 0 } else { a << n }
                } else if s {
                    (sx(a, w) >> n.min(w as u64 - 1)) as u64
                } else if n >= w as u64 {
                    0
                } else {
                    (a & mask(w)) >> n
                }
            }
            Op::Shf => {
                let b = self.rt(t, &o[2], ty)? & 0xffff_ffff;
                let c = self.rt(t, &o[3], Ty::U32)? & 0xffff_ffff;
                let n = if m.clamp { c.min(32) } else { c & 31 };
                let cat = (b << 32) | (a & 0xffff_ffff);
                match m.mode {
                    Mode::L => (cat << n) >> 32,
                    Mode::R => cat >> n,
                    _ => return Err(Fault::Unsup("shf direction".into())),
                }
            }
            Op::Popc => (a & mask(w)).count_ones() as u64,
            Op::Clz => ((a & mask(w)).leading_zeros() - (64 - w)) as u64,
            Op::Brev => (a & mask(w)).reverse_bits() >> (64 - w),
            Op::Bfind => {
                // Most significant non-sign bit; all ones when there is none.
                let v = if s && sx(a, w) < 0 { !a & mask(w) } else { a & mask(w) };
                if v == 0 {
                    0xffff_ffff
                } else {
                    let pos = 63 - v.leading_zeros() as u64;
                    if m.mode == Mode::ShiftAmt { w as u64 - 1 - pos } else { pos }
                }
            }
            Op::Bfe => {
                let pos = self.rt(t, &o[2], Ty::U32)? & 0xff;
                let len = self.rt(t, &o[3], Ty::U32)? & 0xff;
                let msb = (pos + len).saturating_sub(1).min(w as u64 - 1);
                let sbit = if s && len > 0 { (a >> msb) & 1 } else { 0 };
                let mut r = 0u64;
                for i in 0..w as u64 {
                    let bit = if i < len && pos + i < w as u64 { (a >> (pos + i)) & 1 } else { sbit };
                    r |= bit << i;
                }
                r
            }
            Op::Bfi => {
                let b = self.rt(t, &o[2], ty)?;
                let pos = self.rt(t, &o[3], Ty::U32)? & 0xff;
                let len = self.rt(t, &o[4], Ty::U32)? & 0xff;
                let mut r = b;
                for i in 0..len {
                    if pos + i >= w as u64 {
                        break;
                    }
                    r = (r & !(1 << (pos + i))) | (((a >> i) & 1) << (pos + i));
                }
                r
            }
            Op::Prmt => {
                let b = self.rt(t, &o[2], ty)?;
                let c = self.rt(t, &o[3], ty)?;
                let bytes = ((b & 0xffff_ffff) << 32) | (a & 0xffff_ffff);
                let mut r = 0u64;
                for i in 0..4 {
                    let sel = (c >> (4 * i)) & 0xf;
                    let byte = (bytes >> ((sel & 7) * 8)) & 0xff;
                    let byte = if sel & 8 != 0 { if byte & 0x80 != 0 { 0xff } else { 0 } } else { byte };
                    r |= byte << (8 * i);
                }
                r
            }
            Op::Lop3 => {
                let b = self.rt(t, &o[2], ty)?;
                let c = self.rt(t, &o[3], ty)?;
                let lut = self.rt(t, &o[4], Ty::U32)? & 0xff;
                let mut r = 0u64;
                for i in 0..w {
                    let idx = (((a >> i) & 1) << 2) | (((b >> i) & 1) << 1) | ((c >> i) & 1);
                    r |= ((lut >> idx) & 1) << i;
                }
                r
            }
            _ => return Err(Fault::Unsup(format!("{:?} on integer type {:?}", inst.op, ty))),
        };
        let outw = if matches!(inst.op, Op::Mul | Op::Mad) && m.mode == Mode::Wide {
            2 * w
        } else if matches!(inst.op, Op::Popc | Op::Clz | Op::Bfind) {
            32
        } else {
            w
        };
        self.wr(t, &o[0], v & mask(outw))
    }

    fn farith(&mut self, t: usize, inst: &Inst) -> R<()> {
        let m = &inst.m;
        let o = &inst.ops;
        let ty = m.tys[0];
        if (m.relu && !matches!(inst.op, Op::Min | Op::Max)) || m.satfinite {
            return Err(Fault::Unsup(".relu/.satfinite on this instruction".into()));
        }
        let nsrc = o.len() - 1;
        let mut src = [0u64; 3];
        for i in 0..nsrc.min(3) {
            src[i] = self.rt(t, &o[i + 1], ty)?;
        }
        let v = match ty {
            Ty::F32 => self.f32op(inst, src)?.to_bits() as u64,
            Ty::F64 => self.f64op(inst, src)?.to_bits(),
            Ty::F16 | Ty::BF16 => self.f16op(inst, ty, src)?,
            Ty::F16x2 | Ty::BF16x2 => {
                let lo = self.f16op(inst, ty, src.map(|x| x & 0xffff))?;
                let hi = self.f16op(inst, ty, src.map(|x| (x >> 16) & 0xffff))?;
                (hi << 16) | lo
            }
            _ => unreachable!(),
        };
        self.wr(t, &o[0], v)
    }

    fn f32op(&self, inst: &Inst, s: [u64; 3]) -> R<f32> {
        let m = &inst.m;
        let f = |x: u64| {
            let v = f32::from_bits(x as u32);
            if m.ftz { float::ftz32(v) } else { v }
        };
        let (a, b, c) = (f(s[0]), f(s[1]), f(s[2]));
        let rnd = m.rnd.unwrap_or(Rnd::Rn);
        let r = match inst.op {
            Op::Add => float::bin32(Bin::Add, a, b, rnd),
            Op::Sub => float::bin32(Bin::Sub, a, b, rnd),
            Op::Mul => float::bin32(Bin::Mul, a, b, rnd),
            Op::Div => {
                if m.approx && m.rnd.is_none() {
                    a / b
                } else {
                    float::bin32(Bin::Div, a, b, rnd)
                }
            }
            Op::Fma | Op::Mad => float::fma32(a, b, c, rnd),
            Op::Abs => f32::from_bits(a.to_bits() & 0x7fff_ffff),
            Op::Neg => f32::from_bits(a.to_bits() ^ 0x8000_0000),
            Op::Min | Op::Max => {
                if a.is_nan() && b.is_nan() {
                    f32::from_bits(0x7fff_ffff)
                } else if a.is_nan() {
                    b
                } else if b.is_nan() {
                    a
                } else if a == b {
                    // -0 < +0 for min/max.
                    if (inst.op == Op::Min) == a.is_sign_negative() { a } else { b }
                } else if (inst.op == Op::Min) == (a < b) {
                    a
                } else {
                    b
                }
            }
            Op::Rcp => {
                if m.approx {
                    1.0 / a
                } else {
                    float::bin32(Bin::Div, 1.0, a, rnd)
                }
            }
            Op::Sqrt => {
                if m.approx {
                    a.sqrt()
                } else {
                    float::sqrt32(a, rnd)
                }
            }
            Op::Rsqrt => 1.0 / a.sqrt(),
            Op::Ex2 => a.exp2(),
            Op::Lg2 => a.log2(),
            Op::Sin => a.sin(),
            Op::Cos => a.cos(),
            Op::Tanh => a.tanh(),
            Op::Copysign => f32::from_bits((b.to_bits() & 0x7fff_ffff) | (a.to_bits() & 0x8000_0000)),
            _ => return Err(Fault::Unsup(format!("{:?} on f32", inst.op))),
        };
        let r = if m.ftz { float::ftz32(r) } else { r };
        let r = if r.is_nan() && !matches!(inst.op, Op::Abs | Op::Neg | Op::Copysign) { f32::from_bits(0x7fff_ffff) } else { r };
        // min/max .relu: negative results become +0 (NaN stays the canonical NaN).
        let r = if m.relu && r < 0.0 { 0.0 } else { r };
        Ok(if m.sat { float::sat32(r) } else { r })
    }

    fn f64op(&self, inst: &Inst, s: [u64; 3]) -> R<f64> {
        let m = &inst.m;
        if !matches!(m.rnd, None | Some(Rnd::Rn)) {
            return Err(Fault::Unsup("directed rounding on f64".into()));
        }
        let (a, b, c) = (f64::from_bits(s[0]), f64::from_bits(s[1]), f64::from_bits(s[2]));
        Ok(match inst.op {
            Op::Add => a + b,
            Op::Sub => a - b,
            Op::Mul => a * b,
            Op::Div => a / b,
            Op::Fma | Op::Mad => a.mul_add(b, c),
            Op::Abs => a.abs(),
            Op::Neg => -a,
            Op::Min => if a.is_nan() { b } else if b.is_nan() { a } else { a.min(b) },
            Op::Max => if a.is_nan() { b } else if b.is_nan() { a } else { a.max(b) },
            Op::Rcp => 1.0 / a,
            Op::Sqrt => a.sqrt(),
            Op::Rsqrt => 1.0 / a.sqrt(),
            _ => return Err(Fault::Unsup(format!("{:?} on f64", inst.op))),
        })
    }

    /// One 16-bit lane of f16/bf16 arithmetic: exact in f64, then one rounding.
    fn f16op(&self, inst: &Inst, ty: Ty, s: [u64; 3]) -> R<u64> {
        let m = &inst.m;
        let fmt = fmt_of(ty).unwrap();
        let f = |x: u64| {
            let v = fmt.to_f64(x);
            if m.ftz && v != 0.0 && v.abs() < fmt.to_f64(1 << fmt.mbits) { 0.0 * v.signum() } else { v }
        };
        let (a, b, c) = (f(s[0]), f(s[1]), f(s[2]));
        let rnd = m.rnd.unwrap_or(Rnd::Rn);
        let r = match inst.op {
            Op::Add => a + b,
            Op::Sub => a - b,
            Op::Mul => a * b,
            Op::Fma | Op::Mad => a.mul_add(b, c),
            Op::Neg => return Ok(s[0] ^ 0x8000),
            Op::Abs => return Ok(s[0] & 0x7fff),
            Op::Min | Op::Max => {
                if a.is_nan() && b.is_nan() {
                    return Ok(fmt.nan());
                }
                let pick_a = if a.is_nan() {
                    false
                } else if b.is_nan() {
                    true
                } else if a == b {
                    (inst.op == Op::Min) == a.is_sign_negative()
                } else {
                    (inst.op == Op::Min) == (a < b)
                };
                let bits = if pick_a { s[0] } else { s[1] };
                let neg = bits >> 15 & 1 == 1 && fmt.to_f64(bits) < 0.0;
                return Ok(if m.relu && neg { 0 } else { bits });
            }
            Op::Ex2 => a.exp2(),
            Op::Tanh => a.tanh(),
            Op::Rcp => 1.0 / a,
            Op::Sqrt => a.sqrt(),
            Op::Rsqrt => 1.0 / a.sqrt(),
            _ => return Err(Fault::Unsup(format!("{:?} on {:?}", inst.op, ty))),
        };
        let r = if m.sat {
            if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) }
        } else {
            r
        };
        let mut bits = float::from_f64(r, fmt, rnd);
        if m.ftz && (bits >> fmt.mbits) & ((1 << fmt.ebits) - 1) == 0 {
            bits &= 1 << (fmt.ebits + fmt.mbits);
        }
        Ok(bits)
    }

    fn cvt(&mut self, t: usize, inst: &Inst) -> R<()> {
        let m = &inst.m;
        let o = &inst.ops;
        let (dt, st) = (m.tys[0], m.tys[1]);
        // Packed conversions: cvt.rn.{f16x2,bf16x2}.f32 d, a, b (a -> upper half).
        if matches!(dt, Ty::F16x2 | Ty::BF16x2) {
            if st != Ty::F32 || o.len() != 3 {
                return Err(Fault::Unsup("packed cvt form".into()));
            }
            let a = self.rt(t, &o[1], Ty::F32)?;
            let b = self.rt(t, &o[2], Ty::F32)?;
            let hi = self.cvt_float(to_f64(a, Ty::F32), dt, m)?;
            let lo = self.cvt_float(to_f64(b, Ty::F32), dt, m)?;
            return self.wr(t, &o[0], (hi << 16) | lo);
        }
        if o.len() != 2 {
            return msg("cvt takes two operands");
        }
        if matches!(st, Ty::F16x2 | Ty::BF16x2) {
            return Err(Fault::Unsup("cvt from a packed type".into()));
        }
        let a = self.rt(t, &o[1], st)?;
        let v = if st.is_float() {
            let mut x = to_f64(a, st);
            if m.ftz && st == Ty::F32 && x != 0.0 && x.abs() < f32::MIN_POSITIVE as f64 {
                x = 0.0 * x.signum();
            }
            if dt.is_float() {
                let x = if m.rnd_int { float::round_int(x, m.rnd.unwrap()) } else { x };
                if m.rnd_int && fmt_of(dt).unwrap().mbits < fmt_of(st).unwrap().mbits {
                    return Err(Fault::Unsup("integer rounding with narrowing".into()));
                }
                self.cvt_float(x, dt, m)?
            } else {
                // float -> int: round, then saturate to the destination range; NaN -> 0.
                let rnd = m.rnd.unwrap_or(Rnd::Rz);
                let w = dt.bits();
                let (lo, hi) = if dt.signed() { (-(2f64.powi(w as i32 - 1)), 2f64.powi(w as i32 - 1) - 1.0) } else { (0.0, 2f64.powi(w as i32) - 1.0) };
                let r = if x.is_nan() { 0.0 } else { float::round_int(x, rnd).clamp(lo, hi) };
                (r as i128 as u64) & mask(w)
            }
        } else {
            let sw = st.bits();
            let iv: i128 = if st.signed() { sx(a, sw) as i128 } else { (a & mask(sw)) as i128 };
            if dt.is_float() {
                let fmt = fmt_of(dt).unwrap();
                let mut bits = float::from_int(iv, fmt, m.rnd.unwrap_or(Rnd::Rn));
                if m.sat {
                    let x = fmt.to_f64(bits).clamp(0.0, 1.0);
                    bits = float::from_f64(x, fmt, Rnd::Rn);
                }
                bits
            } else {
                let w = dt.bits();
                let r = if m.sat {
                    let (lo, hi): (i128, i128) = if dt.signed() { (-(1i128 << (w - 1)), (1i128 << (w - 1)) - 1) } else { (0, (1i128 << w) - 1) };
                    iv.clamp(lo, hi)
                } else {
                    iv
                };
                let r = r as u64 & mask(w);
                if dt.signed() { sx(r, w) as u64 & mask(w.max(32)) } else { r }
            }
        };
        self.wr(t, &o[0], v)
    }

    /// Converts an exact value `x` to float type `dt` with cvt's modifiers.
    fn cvt_float(&self, x: f64, dt: Ty, m: &Mods) -> R<u64> {
        let fmt = fmt_of(dt).unwrap();
        let mut x = x;
        if m.relu && x < 0.0 {
            x = 0.0;
        }
        if m.sat {
            x = if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
        }
        let rnd = if m.rnd_int { Rnd::Rn } else { m.rnd.unwrap_or(Rnd::Rn) };
        let mut bits = float::from_f64(x, fmt, rnd);
        if m.satfinite && !x.is_nan() && (bits & !(1 << (fmt.ebits + fmt.mbits))) == fmt.inf(false) {
            bits = fmt.max_finite(x < 0.0);
        }
        if m.ftz && dt == Ty::F32 && (bits >> 23) & 0xff == 0 {
            bits &= 0x8000_0000;
        }
        Ok(bits)
    }

    fn atom(&mut self, t: usize, inst: &Inst) -> R<()> {
        let m = &inst.m;
        let o = &inst.ops;
        let ty = m.tys[0];
        let (ai, bi) = if inst.op == Op::Atom { (1, 2) } else { (0, 1) };
        let a = self.addr(t, &o[ai])?;
        let b = self.rt(t, &o[bi], ty)?;
        let sz = ty.bytes();
        let w = ty.bits();
        let old = self.load(t, m.space, a, sz)?;
        let aop = m.aop.ok_or_else(|| Fault::Unsup("atomic without an operation".into()))?;
        let new = match (aop, ty) {
            (AtomOp::Add, Ty::F32) => {
                let r = float::ftz32(float::ftz32(f32::from_bits(old as u32)) + float::ftz32(f32::from_bits(b as u32)));
                r.to_bits() as u64
            }
            (AtomOp::Add, Ty::F64) => (f64::from_bits(old) + f64::from_bits(b)).to_bits(),
            (AtomOp::Add, Ty::F16 | Ty::BF16) => float::from_f64(to_f64(old, ty) + to_f64(b, ty), fmt_of(ty).unwrap(), Rnd::Rn),
            (AtomOp::Add, Ty::F16x2 | Ty::BF16x2) => {
                let f = fmt_of(ty).unwrap();
                let lo = float::from_f64(f.to_f64(old & 0xffff) + f.to_f64(b & 0xffff), f, Rnd::Rn);
                let hi = float::from_f64(f.to_f64((old >> 16) & 0xffff) + f.to_f64((b >> 16) & 0xffff), f, Rnd::Rn);
                (hi << 16) | lo
            }
            (_, x) if x.is_float() && aop != AtomOp::Exch && aop != AtomOp::Cas => {
                return Err(Fault::Unsup("this atomic float operation".into()))
            }
            (AtomOp::Add, _) => old.wrapping_add(b),
            (AtomOp::Exch, _) => b,
            (AtomOp::Cas, _) => {
                let c = self.rt(t, &o[3], ty)?;
                if old & mask(w) == b & mask(w) { c } else { old }
            }
            (AtomOp::And, _) => old & b,
            (AtomOp::Or, _) => old | b,
            (AtomOp::Xor, _) => old ^ b,
            (AtomOp::Min | AtomOp::Max, _) => {
                let lt = if ty.signed() { sx(old, w) < sx(b, w) } else { old & mask(w) < b & mask(w) };
                if (aop == AtomOp::Min) == lt { old } else { b }
            }
            (AtomOp::Inc, _) => {
                if old & mask(w) >= b & mask(w) { 0 } else { old + 1 }
            }
            (AtomOp::Dec, _) => {
                if old & mask(w) == 0 || old & mask(w) > b & mask(w) { b } else { old - 1 }
            }
        };
        self.store(t, m.space, a, sz, new & mask(w))?;
        if inst.op == Op::Atom {
            self.wr(t, &o[0], old)?;
        }
        Ok(())
    }

    // ---- warp-collective instructions ----------------------------------------

    fn collective(&mut self, lo: usize, hi: usize, m: u32, inst: &Inst) -> R<()> {
        let nl = hi - lo;
        let exist: u32 = if nl == 32 { !0 } else { (1u32 << nl) - 1 };
        let mut act = 0u32;
        for l in 0..nl {
            if m >> l & 1 == 1 && self.guard_ok(lo + l, inst) {
                act |= 1 << l;
            }
        }
        if act == 0 {
            for l in 0..nl {
                if m >> l & 1 == 1 {
                    self.pc[lo + l] += 1;
                }
            }
            return Ok(());
        }
        let first = lo + act.trailing_zeros() as usize;
        let o = &inst.ops;
        // Which lanes must be here: the member mask (shfl/vote) or the whole warp.
        let members = match inst.op {
            Op::Shfl => self.rt(first, &o[4], Ty::U32)? as u32 & exist,
            Op::Vote | Op::Redux => self.rt(first, &o[2], Ty::U32)? as u32 & exist,
            Op::Activemask => act,
            _ => {
                if nl != 32 {
                    return msg("warp-wide matrix instruction in a partial warp");
                }
                !0
            }
        };
        let mut exited = !exist;
        for l in 0..nl {
            if self.st[lo + l] == TS::Done {
                exited |= 1 << l;
            }
        }
        // shfl/vote wait for the non-exited members; the matrix ops need them all.
        let missing = if matches!(inst.op, Op::Shfl | Op::Vote | Op::Redux) { members & !act & !exited } else { members & !act };
        if missing != 0 {
            let l = missing.trailing_zeros() as usize;
            let why = match self.st[lo + l] {
                TS::Done => "has exited".to_string(),
                TS::Bar => "waits at a barrier".to_string(),
                TS::Run if m >> l & 1 == 1 => "has a false guard predicate".to_string(),
                TS::Run => format!("is at line {} instead", self.k.insts.get(self.pc[lo + l] as usize).map_or(0, |i| i.line)),
            };
            return msg(format!("lane {l} of warp {} is named by the member mask but {why} (divergent warp-collective)", lo / 32));
        }
        match inst.op {
            Op::Activemask => {
                for l in 0..nl {
                    if act >> l & 1 == 1 {
                        self.wr(lo + l, &o[0], act as u64)?;
                    }
                }
            }
            Op::Shfl => {
                let (dst, pdst) = match &o[0] {
                    Operand::Pair(a, b) => (&**a, Some(&**b)),
                    d => (d, None),
                };
                let mut vals = [0u64; 32];
                for l in 0..nl {
                    vals[l] = self.rt(lo + l, &o[1], Ty::B32)?;
                }
                let mut out = [(0u64, false); 32];
                for l in 0..nl {
                    if act >> l & 1 == 0 {
                        continue;
                    }
                    let t = lo + l;
                    let b = (self.rt(t, &o[2], Ty::U32)? & 31) as i32;
                    let c = self.rt(t, &o[3], Ty::U32)? as i32;
                    let cval = c & 31;
                    let seg = (c >> 8) & 31;
                    let lane = l as i32;
                    let max_lane = (lane & seg) | (cval & !seg);
                    let min_lane = lane & seg;
                    let (j, ok) = match inst.m.mode {
                        Mode::Up => (lane - b, lane - b >= max_lane),
                        Mode::Down => (lane + b, lane + b <= max_lane),
                        Mode::Bfly => (lane ^ b, (lane ^ b) <= max_lane),
                        Mode::Idx => {
                            let j = min_lane | (b & !seg);
                            (j, j <= max_lane)
                        }
                        _ => return Err(Fault::Unsup("shfl mode".into())),
                    };
                    let j = if ok { j } else { lane };
                    if !(0..32).contains(&j) || act >> j & 1 == 0 {
                        return msg(format!("lane {l} reads lane {j}, which is not active in this shfl (undefined on hardware)"));
                    }
                    let v = vals[j as usize];
                    out[l] = (v & 0xffff_ffff, ok);
                }
                for l in 0..nl {
                    if act >> l & 1 == 1 {
                        self.wr(lo + l, dst, out[l].0)?;
                        if let Some(p) = pdst {
                            self.wr(lo + l, p, out[l].1 as u64)?;
                        }
                    }
                }
            }
            Op::Vote => {
                let mut ballot = 0u32;
                for l in 0..nl {
                    if act >> l & 1 == 1 && self.rt(lo + l, &o[1], Ty::Pred)? != 0 {
                        ballot |= 1 << l;
                    }
                }
                let v = match inst.m.mode {
                    Mode::Ballot => ballot as u64,
                    Mode::All => (ballot == act) as u64,
                    Mode::Any => (ballot != 0) as u64,
                    Mode::Uni => (ballot == act || ballot == 0) as u64,
                    _ => return Err(Fault::Unsup("vote mode".into())),
                };
                for l in 0..nl {
                    if act >> l & 1 == 1 {
                        self.wr(lo + l, &o[0], v)?;
                    }
                }
            }
            Op::Redux => {
                let ty = inst.m.tys[0];
                if ty.bits() != 32 || ty.is_float() {
                    return Err(Fault::Unsup("redux.sync on this type".into()));
                }
                let mut acc: Option<u64> = None;
                for l in 0..nl {
                    if act >> l & 1 == 0 {
                        continue;
                    }
                    let v = self.rt(lo + l, &o[1], ty)? & 0xffff_ffff;
                    acc = Some(match (acc, inst.m.aop) {
                        (None, _) => v,
                        (Some(x), Some(AtomOp::Add)) => x.wrapping_add(v) & 0xffff_ffff,
                        (Some(x), Some(AtomOp::And)) => x & v,
                        (Some(x), Some(AtomOp::Or)) => x | v,
                        (Some(x), Some(AtomOp::Xor)) => x ^ v,
                        (Some(x), Some(op @ (AtomOp::Min | AtomOp::Max))) => {
                            let lt = if ty.signed() { sx(v, 32) < sx(x, 32) } else { v < x };
                            if lt == (op == AtomOp::Min) { v } else { x }
                        }
                        _ => return Err(Fault::Unsup("redux operation".into())),
                    });
                }
                let v = acc.unwrap_or(0);
                for l in 0..nl {
                    if act >> l & 1 == 1 {
                        self.wr(lo + l, &o[0], v)?;
                    }
                }
            }
            Op::Mma => self.mma(lo, inst)?,
            Op::Ldmatrix => self.ldmatrix(lo, inst)?,
            Op::WmmaLoad | Op::WmmaStore => self.wmma_mem(lo, inst)?,
            Op::WmmaMma => self.wmma_mma(lo, inst)?,
            _ => unreachable!(),
        }
        for l in 0..nl {
            if m >> l & 1 == 1 {
                self.pc[lo + l] += 1;
            }
        }
        Ok(())
    }

    fn regs_of(o: &Operand, n: usize) -> R<&[Operand]> {
        match o {
            Operand::Vec(v) if v.len() == n => Ok(v),
            _ => msg(format!("expected a vector of {n} registers")),
        }
    }

    /// mma.sync m16n8k{16,8}.row.col.f32.{bf16,f16}x2.f32 with the PTX ISA fragment
    /// layouts: lane = 4*group + tig; A reg i holds row group+8*(i&1), cols
    /// 2*tig+8*(i>>1) (+0 low half, +1 high half); B reg i holds k rows
    /// 2*tig+8*i (+0, +1) of column group; C/D reg i holds row group+8*(i>>1),
    /// col 2*tig+(i&1).
    fn mma(&mut self, lo: usize, inst: &Inst) -> R<()> {
        let (_, _, kk) = inst.m.shape;
        let kk = kk as usize;
        let na = kk / 4;
        let nb = kk / 8;
        let fmt = fmt_of(inst.m.tys[1]).unwrap();
        let o = &inst.ops;
        let (dv, av, bv, cv) = (Self::regs_of(&o[0], 4)?, Self::regs_of(&o[1], na)?, Self::regs_of(&o[2], nb)?, Self::regs_of(&o[3], 4)?);
        let mut a = [[0f64; 16]; 16];
        let mut b = [[0f64; 8]; 16];
        let mut c = [[0f64; 8]; 16];
        for lane in 0..32 {
            let t = lo + lane;
            let (g, tig) = (lane / 4, lane % 4);
            for (i, r) in av.iter().enumerate() {
                let v = self.rt(t, r, Ty::B32)?;
                let (row, col) = (g + 8 * (i & 1), 2 * tig + 8 * (i >> 1));
                a[row][col] = fmt.to_f64(v & 0xffff);
                a[row][col + 1] = fmt.to_f64((v >> 16) & 0xffff);
            }
            for (i, r) in bv.iter().enumerate() {
                let v = self.rt(t, r, Ty::B32)?;
                let k = 2 * tig + 8 * i;
                b[k][g] = fmt.to_f64(v & 0xffff);
                b[k + 1][g] = fmt.to_f64((v >> 16) & 0xffff);
            }
            for (i, r) in cv.iter().enumerate() {
                let v = self.rt(t, r, Ty::F32)?;
                c[g + 8 * (i >> 1)][2 * tig + (i & 1)] = f32::from_bits(v as u32) as f64;
            }
        }
        for lane in 0..32 {
            let t = lo + lane;
            let (g, tig) = (lane / 4, lane % 4);
            for (i, r) in dv.iter().enumerate() {
                let (row, col) = (g + 8 * (i >> 1), 2 * tig + (i & 1));
                let mut s = c[row][col];
                for k in 0..kk {
                    s += a[row][k] * b[k][col];
                }
                self.wr(t, r, (s as f32).to_bits() as u64)?;
            }
        }
        Ok(())
    }

    /// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16: lanes 8j..8j+7
    /// give the row addresses of matrix j; lane l receives, for each matrix j, row
    /// l/4, columns 2*(l%4) and 2*(l%4)+1 (transposed with .trans).
    fn ldmatrix(&mut self, lo: usize, inst: &Inst) -> R<()> {
        let num = inst.m.num as usize;
        let o = &inst.ops;
        let dv = Self::regs_of(&o[0], num)?;
        let mut mats = [[[0u64; 8]; 8]; 4];
        for j in 0..num {
            for r in 0..8 {
                let t = lo + 8 * j + r;
                let a = self.addr(t, &o[1])?;
                if a % 16 != 0 {
                    return msg(format!("ldmatrix row address {a:#x} is not 16-byte aligned"));
                }
                for c in 0..8 {
                    mats[j][r][c] = self.load(t, Space::Shared, a + 2 * c as u64, 2)?;
                }
            }
        }
        for lane in 0..32 {
            let (r, c) = (lane / 4, 2 * (lane % 4));
            for (j, d) in dv.iter().enumerate() {
                let (e0, e1) = if inst.m.trans { (mats[j][c][r], mats[j][c + 1][r]) } else { (mats[j][r][c], mats[j][r][c + 1]) };
                self.wr(lo + lane, d, e0 | (e1 << 16))?;
            }
        }
        Ok(())
    }

    // ---- wmma (m16n16k16, f16/bf16 inputs, f32 accumulators) -----------------
    //
    // The ISA leaves wmma fragment layouts unspecified, so legal programs only move
    // fragments between load, mma, fill and store. We lay them out like two
    // m16n8k16 mma tiles side by side (A as mma's A; B and C/D as two mma n-halves),
    // which is consistent for every such program.

    fn wa(lane: usize, i: usize, h: usize) -> (usize, usize) {
        let (g, t) = (lane / 4, lane % 4);
        (g + 8 * (i & 1), 2 * t + 8 * (i >> 1) + h)
    }
    fn wb(lane: usize, i: usize, h: usize) -> (usize, usize) {
        let (g, t) = (lane / 4, lane % 4);
        (2 * t + 8 * (i & 1) + h, 8 * (i >> 1) + g)
    }
    fn wc(lane: usize, i: usize) -> (usize, usize) {
        let (g, t) = (lane / 4, lane % 4);
        (g + 8 * ((i & 3) >> 1), 8 * (i >> 2) + 2 * t + (i & 1))
    }

    fn wmma_mem(&mut self, lo: usize, inst: &Inst) -> R<()> {
        let m = &inst.m;
        let o = &inst.ops;
        let (frag_op, addr_op) = if inst.op == Op::WmmaLoad { (&o[0], &o[1]) } else { (&o[1], &o[0]) };
        // f16 A/B fragments are 8 registers (the second four duplicate the first,
        // as on Volta); bf16 ones are 4; C/D are 8 f32.
        let nregs = if m.num < 2 && m.tys[0] == Ty::BF16 { 4 } else { 8 };
        let regs = Self::regs_of(frag_op, nregs)?;
        for lane in 0..32 {
            let t = lo + lane;
            let base = self.addr(t, addr_op)?;
            let stride = if o.len() == 3 { self.rt(t, &o[2], Ty::U32)? & 0xffff_ffff } else { 16 };
            let off = |r: usize, c: usize| if m.trans { c as u64 * stride + r as u64 } else { r as u64 * stride + c as u64 };
            for (i, reg) in regs.iter().enumerate() {
                match m.num {
                    0 | 1 => {
                        let mut v = 0u64;
                        for h in 0..2 {
                            let (r, c) = if m.num == 0 { Self::wa(lane, i % 4, h) } else { Self::wb(lane, i % 4, h) };
                            v |= self.load(t, m.space, base.wrapping_add(2 * off(r, c)), 2)? << (16 * h);
                        }
                        self.wr(t, reg, v)?;
                    }
                    2 => {
                        let (r, c) = Self::wc(lane, i);
                        let v = self.load(t, m.space, base.wrapping_add(4 * off(r, c)), 4)?;
                        self.wr(t, reg, v)?;
                    }
                    _ => {
                        let (r, c) = Self::wc(lane, i);
                        let v = self.rt(t, reg, Ty::F32)?;
                        self.store(t, m.space, base.wrapping_add(4 * off(r, c)), 4, v)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn wmma_mma(&mut self, lo: usize, inst: &Inst) -> R<()> {
        let fmt = fmt_of(inst.m.tys[1]).unwrap();
        let o = &inst.ops;
        let nab = if inst.m.tys[1] == Ty::BF16 { 4 } else { 8 };
        let (dv, av, bv, cv) = (Self::regs_of(&o[0], 8)?, Self::regs_of(&o[1], nab)?, Self::regs_of(&o[2], nab)?, Self::regs_of(&o[3], 8)?);
        let mut a = [[0f64; 16]; 16];
        let mut b = [[0f64; 16]; 16];
        let mut c = [[0f64; 16]; 16];
        for lane in 0..32 {
            let t = lo + lane;
            for i in 0..4 {
                let va = self.rt(t, &av[i], Ty::B32)?;
                let vb = self.rt(t, &bv[i], Ty::B32)?;
                for h in 0..2 {
                    let (r, cc) = Self::wa(lane, i, h);
                    a[r][cc] = fmt.to_f64((va >> (16 * h)) & 0xffff);
                    let (k, n) = Self::wb(lane, i, h);
                    b[k][n] = fmt.to_f64((vb >> (16 * h)) & 0xffff);
                }
            }
            for (i, reg) in cv.iter().enumerate() {
                let (r, cc) = Self::wc(lane, i);
                c[r][cc] = f32::from_bits(self.rt(t, reg, Ty::F32)? as u32) as f64;
            }
        }
        for lane in 0..32 {
            for (i, reg) in dv.iter().enumerate() {
                let (r, cc) = Self::wc(lane, i);
                let mut s = c[r][cc];
                for k in 0..16 {
                    s += a[r][k] * b[k][cc];
                }
                self.wr(lo + lane, reg, (s as f32).to_bits() as u64)?;
            }
        }
        Ok(())
    }
}
