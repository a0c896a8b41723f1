//! The linker: inlines every `call` to a `.func` into the calling kernel.
//!
//! NVRTC inlines almost all device code, but a `__noinline__` or large helper
//! stays a `.func` reached through a call sequence (`st.param` the arguments into
//! call-frame variables, `call (retval), f, (params)`, `ld.param` the result).
//! Rather than a run-time call stack, each call site gets its own copy of the
//! callee: fresh registers, its own slice of the per-thread call frame and local
//! memory, `ret` turned into a branch to the end of the copy, and `FrameCopy`
//! instructions moving arguments in and return values out. Inlined code sits where
//! the call was, so the warp scheduler's lowest-PC rule reconverges it like any
//! other branch. Recursion cannot be inlined and fails loudly at the call.

use crate::ir::*;
use std::collections::HashMap;

/// Label meaning "the end of the inlined callee" (what `ret` branches to).
const END: u32 = u32::MAX;

struct Ctx<'a> {
    funcs: &'a HashMap<String, Kernel>,
    stack: Vec<String>,
    nregs: usize,
    local: usize,
    frame: usize,
}

pub fn link(k: &mut Kernel, funcs: &HashMap<String, Kernel>) {
    if !k.insts.iter().any(|i| i.op == Op::Call) {
        return;
    }
    let mut ctx = Ctx { funcs, stack: Vec::new(), nregs: k.nregs, local: k.local_bytes, frame: k.call_frame };
    k.insts = expand(&k.insts, &mut ctx);
    k.nregs = ctx.nregs;
    k.local_bytes = ctx.local;
    k.call_frame = ctx.frame;
}

fn unsupported(inst: &Inst, why: String) -> Inst {
    Inst { op: Op::Unsupported, why, ..inst.clone() }
}

fn map_labels(o: &mut Operand, f: &dyn Fn(u32) -> u32) {
    match o {
        Operand::Label(l) => *l = f(*l),
        Operand::Vec(v) => v.iter_mut().for_each(|x| map_labels(x, f)),
        _ => {}
    }
}

/// Offsets a callee instruction into its call site's registers, frame and local memory.
fn remap(o: &mut Operand, roff: u32, foff: u64, loff: u64) {
    match o {
        Operand::Reg(r) | Operand::NotReg(r) => *r += roff,
        Operand::Sym(Space::CallParam, x) => *x += foff,
        Operand::Sym(Space::Local, x) => *x += loff,
        Operand::Addr(Some(b), _) => remap(b, roff, foff, loff),
        Operand::Vec(v) => v.iter_mut().for_each(|x| remap(x, roff, foff, loff)),
        Operand::Pair(a, b) => {
            remap(a, roff, foff, loff);
            remap(b, roff, foff, loff);
        }
        _ => {}
    }
}

fn frame_copy(like: &Inst, dst: u64, src: u64, size: usize) -> Inst {
    Inst {
        op: Op::FrameCopy,
        m: Mods::default(),
        guard: None,
        ops: vec![Operand::Imm(Imm::Int(dst as i64)), Operand::Imm(Imm::Int(src as i64)), Operand::Imm(Imm::Int(size as i64))],
        ..like.clone()
    }
}

fn expand(insts: &[Inst], ctx: &mut Ctx) -> Vec<Inst> {
    let mut out: Vec<Inst> = Vec::new();
    let mut map = vec![0u32; insts.len() + 1];
    let mut fix = Vec::new();
    for (i, inst) in insts.iter().enumerate() {
        map[i] = out.len() as u32;
        if inst.op != Op::Call {
            if inst.ops.iter().any(|o| matches!(o, Operand::Label(_))) {
                fix.push(out.len());
            }
            out.push(inst.clone());
            continue;
        }
        match inline_call(inst, ctx, out.len() as u32) {
            Ok(body) => out.extend(body),
            Err(why) => out.push(unsupported(inst, why)),
        }
    }
    map[insts.len()] = out.len() as u32;
    for i in fix {
        for o in out[i].ops.iter_mut() {
            map_labels(o, &|l| if l == END { END } else { map[l as usize] });
        }
    }
    out
}

/// The instructions that replace one call, placed at index `base`.
fn inline_call(inst: &Inst, ctx: &mut Ctx, base: u32) -> Result<Vec<Inst>, String> {
    let callee = inst.ops.iter().find_map(|o| if let Operand::Name(n) = o { Some(n.clone()) } else { None }).unwrap_or_default();
    let f = ctx.funcs.get(&callee).ok_or_else(|| format!("call to `{callee}`, which this module does not define"))?;
    if ctx.stack.contains(&callee) {
        return Err(format!("recursive call to `{callee}` cannot be inlined"));
    }
    let pos = inst.ops.iter().position(|o| matches!(o, Operand::Name(_))).unwrap();
    let list = |o: Option<&Operand>| -> Vec<Operand> {
        match o {
            Some(Operand::Vec(v)) => v.clone(),
            _ => Vec::new(),
        }
    };
    let rets = if pos > 0 { list(inst.ops.first()) } else { Vec::new() };
    let args = list(inst.ops.get(pos + 1));
    if args.len() != f.fparams.len() || rets.len() != f.frets.len() {
        return Err(format!("call to `{callee}` passes {} argument(s) and {} result(s), it takes {} and {}", args.len(), rets.len(), f.fparams.len(), f.frets.len()));
    }
    let slot = |o: &Operand| match o {
        Operand::Sym(Space::CallParam, off) => Ok(*off),
        _ => Err(format!("call to `{callee}` with an operand that is not a .param variable")),
    };
    let roff = ctx.nregs as u32;
    ctx.nregs += f.nregs;
    let loff = ctx.local.div_ceil(16) * 16;
    ctx.local = loff + f.local_bytes;
    let foff = ctx.frame.div_ceil(16) * 16;
    ctx.frame = foff + f.call_frame;
    let foff = foff as u64;

    let mut out = Vec::new();
    if let Some((p, neg)) = inst.guard {
        // `@p call`: skip the whole inlined call when the guard is false.
        out.push(Inst { op: Op::Bra, m: Mods::default(), guard: Some((p, !neg)), ops: vec![Operand::Label(END)], ..inst.clone() });
    }
    for (a, &(off, size)) in args.iter().zip(&f.fparams) {
        out.push(frame_copy(inst, foff + off, slot(a)?, size));
    }
    let body: Vec<Inst> = f
        .insts
        .iter()
        .map(|x| {
            let mut x = x.clone();
            x.ops.iter_mut().for_each(|o| remap(o, roff, foff, loff as u64));
            if let Some((p, _)) = x.guard.as_mut() {
                *p += roff;
            }
            if x.op == Op::Ret {
                x.op = Op::Bra;
                x.ops = vec![Operand::Label(END)];
            }
            x
        })
        .collect();
    ctx.stack.push(callee.clone());
    let body = expand(&body, ctx);
    ctx.stack.pop();
    let start = base + out.len() as u32;
    let end = start + body.len() as u32;
    for mut x in body {
        x.ops.iter_mut().for_each(|o| map_labels(o, &|l| if l == END { end } else { l + start }));
        out.push(x);
    }
    for (r, &(off, size)) in rets.iter().zip(&f.frets) {
        out.push(frame_copy(inst, slot(r)?, foff + off, size));
    }
    let after = base + out.len() as u32;
    if inst.guard.is_some() {
        out[0].ops = vec![Operand::Label(after)];
    }
    Ok(out)
}
