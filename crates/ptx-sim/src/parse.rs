//! A small hand-rolled lexer and parser for the PTX subset NVRTC emits.
//!
//! It reads a module statement by statement: module directives, module-scope
//! `.shared` variables (NVRTC demotes function-scope `__shared__` arrays there),
//! `.entry` kernels with their `.param` lists, and kernel bodies (register
//! declarations incl. `%r<N>` ranges, nested `{ }` scopes from inline asm, `.local`
//! and `.shared` variables, labels, predicated instructions). Instructions are first
//! collected with registers resolved in their scope, then decoded once the whole
//! body (and so the shared/local layout and every label) is known. Module-scope
//! `.global`/`.const` variables (e.g. the math library's constant tables) are kept
//! with their initial bytes and placed in device memory at each launch. Modifiers the
//! decoder does not know make the instruction `Op::Unsupported`, which fails at run
//! time with the instruction text and line: unknown PTX is never guessed at.

use crate::ir::*;
use crate::SimError;
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    P(char),
    Str(String),
}

#[derive(Clone, Debug)]
struct Token {
    t: Tok,
    line: usize,
}

fn perr<T>(line: usize, msg: impl Into<String>) -> Result<T, SimError> {
    Err(SimError::Parse { line, msg: msg.into() })
}

fn lex(src: &str) -> Result<Vec<Token>, SimError> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut line = 1;
    let mut out = Vec::new();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c == b'%' || c == b'.';
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
            i += 1;
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                if b[i] == b'\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 2;
        } else if c == b'"' {
            i += 1;
            let s = i;
            while i < b.len() && b[i] != b'"' {
                i += 1;
            }
            out.push(Token { t: Tok::Str(src[s..i.min(b.len())].to_string()), line });
            i += 1;
        } else if word(c) {
            let s = i;
            while i < b.len() && (word(b[i]) || (b[i] == b':' && b.get(i + 1) == Some(&b':'))) {
                i += if b[i] == b':' { 2 } else { 1 };
            }
            out.push(Token { t: Tok::Word(src[s..i].to_string()), line });
        } else if b"{}[]()<>,;:@!+-|=".contains(&c) {
            out.push(Token { t: Tok::P(c as char), line });
            i += 1;
        } else {
            return perr(line, format!("unexpected character {:?}", c as char));
        }
    }
    Ok(out)
}

struct Cur {
    toks: Vec<Token>,
    i: usize,
}

impl Cur {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|t| &t.t)
    }
    fn line(&self) -> usize {
        self.toks.get(self.i).or(self.toks.last()).map_or(0, |t| t.line)
    }
    fn next(&mut self) -> Result<Tok, SimError> {
        let t = self.toks.get(self.i).map(|t| t.t.clone());
        self.i += 1;
        t.ok_or_else(|| SimError::Parse { line: self.line(), msg: "unexpected end of input".into() })
    }
    fn word(&mut self) -> Result<String, SimError> {
        let l = self.line();
        match self.next()? {
            Tok::Word(w) => Ok(w),
            t => perr(l, format!("expected a name, found {t:?}")),
        }
    }
    fn expect(&mut self, c: char) -> Result<(), SimError> {
        let l = self.line();
        match self.next()? {
            Tok::P(x) if x == c => Ok(()),
            t => perr(l, format!("expected `{c}`, found {t:?}")),
        }
    }
    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::P(c)) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn eat_word(&mut self, w: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Word(x)) if x == w) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn skip_line(&mut self) {
        let l = self.line();
        while self.i < self.toks.len() && self.toks[self.i].line == l {
            self.i += 1;
        }
    }
    fn skip_past(&mut self, c: char) -> Result<(), SimError> {
        while self.next()? != Tok::P(c) {}
        Ok(())
    }
}

fn parse_int(s: &str) -> Option<i64> {
    let s = s.trim_end_matches('U');
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok().map(|v| v as i64)
    } else if s.len() > 1 && s.starts_with('0') && s.bytes().all(|c| c.is_ascii_digit()) {
        u64::from_str_radix(&s[1..], 8).ok().map(|v| v as i64)
    } else {
        s.parse::<u64>().ok().map(|v| v as i64)
    }
}

fn parse_imm(s: &str) -> Option<Imm> {
    if let Some(h) = s.strip_prefix("0f").or_else(|| s.strip_prefix("0F")) {
        if h.len() == 8 {
            return u32::from_str_radix(h, 16).ok().map(Imm::F32);
        }
    }
    if let Some(h) = s.strip_prefix("0d").or_else(|| s.strip_prefix("0D")) {
        if h.len() == 16 {
            return u64::from_str_radix(h, 16).ok().map(Imm::F64);
        }
    }
    if let Some(v) = parse_int(s) {
        return Some(Imm::Int(v));
    }
    if s.contains('.') || s.contains('e') {
        return s.parse::<f64>().ok().map(|v| Imm::F64(v.to_bits()));
    }
    None
}

fn sreg(s: &str) -> Option<Sreg> {
    let dim = |d: &str| match d {
        "x" => Some(Dim::X),
        "y" => Some(Dim::Y),
        "z" => Some(Dim::Z),
        _ => None,
    };
    if let Some((base, d)) = s.split_once('.') {
        let d = dim(d)?;
        return Some(match base {
            "%tid" => Sreg::Tid(d),
            "%ntid" => Sreg::Ntid(d),
            "%ctaid" => Sreg::Ctaid(d),
            "%nctaid" => Sreg::Nctaid(d),
            _ => return None,
        });
    }
    Some(match s {
        "%tid" => Sreg::Tid(Dim::X),
        "%ntid" => Sreg::Ntid(Dim::X),
        "%laneid" => Sreg::Laneid,
        "%warpid" => Sreg::Warpid,
        "%nwarpid" => Sreg::Nwarpid,
        "%smid" => Sreg::Smid,
        "%nsmid" => Sreg::Nsmid,
        "%gridid" => Sreg::Gridid,
        "%clock" => Sreg::Clock,
        "%clock64" => Sreg::Clock64,
        "%globaltimer" => Sreg::Globaltimer,
        "%lanemask_eq" => Sreg::LanemaskEq,
        "%lanemask_lt" => Sreg::LanemaskLt,
        "%lanemask_le" => Sreg::LanemaskLe,
        "%lanemask_gt" => Sreg::LanemaskGt,
        "%lanemask_ge" => Sreg::LanemaskGe,
        _ => return None,
    })
}

/// A module- or kernel-scope variable: its state space, size and alignment.
#[derive(Clone, Debug)]
struct VarDecl {
    space: Space,
    name: String,
    align: usize,
    size: usize,
    is_extern: bool,
    /// Initial bytes (module-scope .global/.const only).
    init: Vec<u8>,
}

/// `= {1, 2, ...}` or `= value`: element literals of type `ty`, little-endian.
fn parse_init(c: &mut Cur, ty: Ty, out: &mut Vec<u8>, line: usize) -> Result<(), SimError> {
    if c.eat('{') {
        loop {
            if c.eat('}') {
                return Ok(());
            }
            parse_init(c, ty, out, line)?;
            c.eat(',');
        }
    }
    let neg = c.eat('-');
    let w = c.word()?;
    let imm = parse_imm(&w).ok_or_else(|| SimError::Parse { line, msg: format!("bad initializer {w}") })?;
    let bits: u64 = match (imm, ty) {
        (Imm::Int(v), _) => (if neg { v.wrapping_neg() } else { v }) as u64,
        (Imm::F32(b), Ty::F64) => (f32::from_bits(b) as f64 * if neg { -1.0 } else { 1.0 }).to_bits(),
        (Imm::F32(b), _) => (b ^ if neg { 0x8000_0000 } else { 0 }) as u64,
        (Imm::F64(b), Ty::F32) => ((f64::from_bits(b) * if neg { -1.0 } else { 1.0 }) as f32).to_bits() as u64,
        (Imm::F64(b), _) => b ^ if neg { 1 << 63 } else { 0 },
    };
    out.extend_from_slice(&bits.to_le_bytes()[..ty.bytes()]);
    Ok(())
}

/// `.shared .align 16 .b8 name[512];` (the leading space word already consumed).
fn parse_var(c: &mut Cur, space: Space, is_extern: bool) -> Result<VarDecl, SimError> {
    let line = c.line();
    let mut align = 0usize;
    let mut ty = None;
    loop {
        let w = c.word()?;
        if w == ".align" {
            let n = c.word()?;
            align = parse_int(&n).ok_or_else(|| SimError::Parse { line, msg: format!("bad alignment {n}") })? as usize;
        } else if let Some(t) = w.strip_prefix('.').and_then(Ty::parse) {
            ty = Some(t);
        } else if w.starts_with('.') {
            return perr(line, format!("unsupported variable qualifier {w}"));
        } else {
            let ty = ty.ok_or_else(|| SimError::Parse { line, msg: format!("variable {w} has no type") })?;
            let mut size = ty.bytes();
            let mut unsized_ = false;
            while c.eat('[') {
                if c.eat(']') {
                    unsized_ = true;
                    continue;
                }
                let n = c.word()?;
                size *= parse_int(&n).ok_or_else(|| SimError::Parse { line, msg: format!("bad array size {n}") })? as usize;
                c.expect(']')?;
            }
            let mut init = Vec::new();
            if c.eat('=') {
                if space != Space::Global && space != Space::Const {
                    return perr(line, format!("initialized {space:?} variable {w} is not supported"));
                }
                parse_init(c, ty, &mut init, line)?;
                if init.len() > size {
                    return perr(line, format!("initializer of {w} is larger than the variable"));
                }
            }
            c.expect(';')?;
            if unsized_ {
                size = 0;
            }
            init.resize(size, 0);
            return Ok(VarDecl { space, name: w, align: align.max(ty.bytes()).max(1), size, is_extern, init });
        }
    }
}

struct RawInst {
    opcode: String,
    guard: Option<(u32, bool)>,
    ops: Vec<Operand>,
    line: usize,
    text: String,
    src: Option<(u32, u32)>,
}

struct KernelBuilder {
    scopes: Vec<HashMap<String, u32>>,
    reg_tys: Vec<Ty>,
    raw: Vec<RawInst>,
    labels: HashMap<String, u32>,
    vars: Vec<VarDecl>,
    /// Call-sequence `.param` names: (largest size, largest alignment).
    call_params: HashMap<String, (usize, usize)>,
    /// The last `.loc` (file, line), from -lineinfo.
    loc: Option<(u32, u32)>,
}

impl KernelBuilder {
    fn reg(&self, name: &str) -> Option<u32> {
        self.scopes.iter().rev().find_map(|s| s.get(name).copied())
    }
    fn declare(&mut self, name: String, ty: Ty) {
        let id = self.reg_tys.len() as u32;
        self.reg_tys.push(ty);
        self.scopes.last_mut().unwrap().insert(name, id);
    }
}

/// Parses a whole module into its kernels.
pub fn parse_module(src: &str) -> Result<(Vec<Kernel>, Vec<GlobalVar>), SimError> {
    let mut c = Cur { toks: lex(src)?, i: 0 };
    let mut module_vars: Vec<VarDecl> = Vec::new();
    let mut globals: Vec<GlobalVar> = Vec::new();
    let mut files: HashMap<u32, String> = HashMap::new();
    let mut funcs: HashMap<String, Kernel> = HashMap::new();
    let mut kernels = Vec::new();
    while let Some(t) = c.peek().cloned() {
        let line = c.line();
        let Tok::Word(w) = t else { return perr(line, format!("unexpected {t:?} at module scope")) };
        match w.as_str() {
            ".version" | ".target" | ".address_size" | ".loc" => c.skip_line(),
            ".file" => {
                // `.file N "path"` (from -lineinfo): source names for error messages.
                c.i += 1;
                let n = c.word().ok().and_then(|w| parse_int(&w));
                if let (Some(n), Some(Tok::Str(path))) = (n, c.peek().cloned()) {
                    files.insert(n as u32, path.rsplit('/').next().unwrap_or(&path).to_string());
                }
                c.skip_line();
            }
            ".section" => {
                // Debug sections (-lineinfo / -G): skipped.
                c.i += 1;
                c.word()?;
                if c.eat('{') {
                    let mut depth = 1;
                    while depth > 0 {
                        match c.next()? {
                            Tok::P('{') => depth += 1,
                            Tok::P('}') => depth -= 1,
                            _ => {}
                        }
                    }
                }
            }
            ".visible" | ".weak" | ".extern" => {
                c.i += 1;
                if w == ".extern" {
                    if c.eat_word(".shared") {
                        module_vars.push(parse_var(&mut c, Space::Shared, true)?);
                    } else if c.eat_word(".func") {
                        c.skip_past(';')?;
                    } else {
                        let n = c.word()?;
                        return perr(line, format!("unsupported .extern {n}"));
                    }
                }
            }
            ".entry" => {
                c.i += 1;
                kernels.extend(parse_kernel(&mut c, &module_vars, &globals, false)?);
            }
            ".func" => {
                // Device functions: parsed like kernels, then inlined at their calls.
                c.i += 1;
                if let Some(f) = parse_kernel(&mut c, &module_vars, &globals, true)? {
                    funcs.insert(f.name.clone(), f);
                }
            }
            ".shared" => {
                c.i += 1;
                module_vars.push(parse_var(&mut c, Space::Shared, false)?);
            }
            ".global" | ".const" => {
                c.i += 1;
                let space = if w == ".global" { Space::Global } else { Space::Const };
                let v = parse_var(&mut c, space, false)?;
                globals.push(GlobalVar { name: v.name, align: v.align, init: v.init });
            }
            _ => return perr(line, format!("unexpected `{w}` at module scope")),
        }
    }
    for k in kernels.iter_mut() {
        crate::link::link(k, &funcs);
    }
    // With -lineinfo, name the CUDA source line of each instruction in errors.
    for k in kernels.iter_mut() {
        for i in k.insts.iter_mut() {
            if let Some((f, l)) = i.src {
                let name = files.get(&f).cloned().unwrap_or_else(|| format!("file {f}"));
                i.text = format!("{}  // {name}:{l}", i.text);
            }
        }
    }
    Ok((kernels, globals))
}

/// Parses an `.entry` kernel or (with `is_func`) a `.func` device function, whose
/// parameters and return values live in its call frame. A `.func` prototype
/// without a body yields `None`.
fn parse_kernel(c: &mut Cur, module_vars: &[VarDecl], globals: &[GlobalVar], is_func: bool) -> Result<Option<Kernel>, SimError> {
    let param_list = |c: &mut Cur| -> Result<Vec<VarDecl>, SimError> {
        let mut v = Vec::new();
        while !c.eat(')') {
            let line = c.line();
            if !c.eat_word(".param") {
                return perr(line, "expected .param");
            }
            v.push(parse_param(c)?);
            c.eat(',');
        }
        Ok(v)
    };
    let rets = if is_func && c.eat('(') { param_list(c)? } else { Vec::new() };
    let name = c.word()?;
    let decls = if c.eat('(') { param_list(c)? } else { Vec::new() };
    let mut params = Vec::new();
    let mut param_syms = HashMap::new();
    let mut off = 0usize;
    if !is_func {
        for v in &decls {
            off = off.div_ceil(v.align) * v.align;
            param_syms.insert(v.name.clone(), off as u64);
            params.push(Param { offset: off, size: v.size });
            off += v.size;
        }
    }
    // Performance directives (.maxntid, .reqntid, .minnctapersm, .noreturn, ...) until the body.
    while c.peek() != Some(&Tok::P('{')) {
        if c.eat(';') {
            return Ok(None);
        }
        c.next()?;
    }
    c.expect('{')?;
    let mut kb = KernelBuilder { scopes: vec![HashMap::new()], reg_tys: Vec::new(), raw: Vec::new(), labels: HashMap::new(), vars: Vec::new(), call_params: HashMap::new(), loc: None };
    if is_func {
        for v in rets.iter().chain(&decls) {
            kb.call_params.insert(v.name.clone(), (v.size, v.align));
        }
    }
    let mut depth = 1;
    while depth > 0 {
        let line = c.line();
        match c.next()? {
            Tok::P('{') => {
                depth += 1;
                kb.scopes.push(HashMap::new());
            }
            Tok::P('}') => {
                depth -= 1;
                kb.scopes.pop();
            }
            Tok::P(';') => {}
            Tok::P('@') => {
                let neg = c.eat('!');
                let p = c.word()?;
                let id = kb.reg(&p).ok_or_else(|| SimError::Parse { line, msg: format!("unknown predicate {p}") })?;
                let opc = c.word()?;
                let shown = format!("@{}{p} {opc}", if neg { "!" } else { "" });
                parse_inst(c, &mut kb, opc, Some((id, neg)), line, shown)?;
            }
            Tok::Word(w) => {
                if c.peek() == Some(&Tok::P(':')) {
                    c.i += 1;
                    if kb.labels.insert(w.clone(), kb.raw.len() as u32).is_some() {
                        return perr(line, format!("duplicate label {w}"));
                    }
                    continue;
                }
                match w.as_str() {
                    ".reg" => parse_reg_decl(c, &mut kb)?,
                    ".local" => kb.vars.push(parse_var(c, Space::Local, false)?),
                    ".shared" => kb.vars.push(parse_var(c, Space::Shared, false)?),
                    ".pragma" => c.skip_past(';')?,
                    ".param" => {
                        let v = parse_param(c)?;
                        c.expect(';')?;
                        let e = kb.call_params.entry(v.name).or_insert((0, 0));
                        e.0 = e.0.max(v.size);
                        e.1 = e.1.max(v.align);
                    }
                    ".loc" => {
                        let f = c.word().ok().and_then(|w| parse_int(&w));
                        let l = c.word().ok().and_then(|w| parse_int(&w));
                        kb.loc = f.zip(l).map(|(f, l)| (f as u32, l as u32));
                        c.skip_line();
                    }
                    ".file" => c.skip_line(),
                    _ if w.starts_with('.') => return perr(line, format!("unsupported directive {w} in kernel body")),
                    _ => parse_inst(c, &mut kb, w.clone(), None, line, w)?,
                }
            }
            t => return perr(line, format!("unexpected {t:?} in kernel body")),
        }
    }
    // Layout of shared memory: module-scope then kernel-scope statics, dynamic last.
    let mut syms: HashMap<String, (Space, u64)> = HashMap::new();
    let mut shared_off = 0usize;
    let mut dyn_align = 16usize;
    let mut externs = Vec::new();
    for v in module_vars.iter().chain(kb.vars.iter().filter(|v| v.space == Space::Shared)) {
        if v.is_extern {
            dyn_align = dyn_align.max(v.align);
            externs.push(v.name.clone());
            continue;
        }
        shared_off = shared_off.div_ceil(v.align) * v.align;
        syms.insert(v.name.clone(), (Space::Shared, shared_off as u64));
        shared_off += v.size;
    }
    let dyn_off = shared_off.div_ceil(dyn_align) * dyn_align;
    for e in externs {
        syms.insert(e, (Space::Shared, dyn_off as u64));
    }
    let mut local_off = 0usize;
    for v in kb.vars.iter().filter(|v| v.space == Space::Local) {
        local_off = local_off.div_ceil(v.align) * v.align;
        syms.insert(v.name.clone(), (Space::Local, local_off as u64));
        local_off += v.size;
    }
    for (i, g) in globals.iter().enumerate() {
        syms.insert(g.name.clone(), (Space::Global, i as u64));
    }
    let mut frame = 0usize;
    let mut cps: Vec<_> = kb.call_params.iter().collect();
    cps.sort();
    for (n, &(size, align)) in cps {
        frame = frame.div_ceil(align.max(1)) * align.max(1);
        syms.insert(n.clone(), (Space::CallParam, frame as u64));
        frame += size;
    }
    for (n, o) in &param_syms {
        syms.insert(n.clone(), (Space::Param, *o));
    }
    let mut insts = Vec::with_capacity(kb.raw.len());
    for r in kb.raw.drain(..) {
        insts.push(decode(r, &syms, &kb.labels, &kb.reg_tys));
    }
    let frame_of = |v: &VarDecl| (syms[&v.name].1, v.size);
    let fparams = if is_func { decls.iter().map(frame_of).collect() } else { Vec::new() };
    let frets = if is_func { rets.iter().map(frame_of).collect() } else { Vec::new() };
    Ok(Some(Kernel {
        fparams,
        frets,
        name,
        is_entry: !is_func,
        params,
        param_bytes: off,
        insts,
        nregs: kb.reg_tys.len(),
        dyn_shared_offset: dyn_off,
        local_bytes: local_off,
        call_frame: frame,
    }))
}

fn parse_param(c: &mut Cur) -> Result<VarDecl, SimError> {
    let line = c.line();
    let mut align = 0;
    let mut ty = None;
    loop {
        let w = c.word()?;
        if w == ".align" {
            align = parse_int(&c.word()?).unwrap_or(1) as usize;
        } else if w == ".ptr" || w == ".global" || w == ".shared" || w == ".const" || w == ".local" {
            // `.ptr .global .align N` attributes on pointer params: informational.
        } else if let Some(t) = w.strip_prefix('.').and_then(Ty::parse) {
            ty = Some(t);
        } else if w.starts_with('.') {
            return perr(line, format!("unsupported param qualifier {w}"));
        } else {
            let ty = ty.ok_or_else(|| SimError::Parse { line, msg: format!("param {w} has no type") })?;
            let mut size = ty.bytes();
            while c.eat('[') {
                size *= parse_int(&c.word()?).unwrap_or(1) as usize;
                c.expect(']')?;
            }
            return Ok(VarDecl { space: Space::Param, name: w, align: if align > 0 { align } else { ty.bytes() }, size, is_extern: false, init: Vec::new() });
        }
    }
}

fn parse_reg_decl(c: &mut Cur, kb: &mut KernelBuilder) -> Result<(), SimError> {
    let line = c.line();
    let mut ty = None;
    loop {
        let w = c.word()?;
        if let Some(t) = w.strip_prefix('.').and_then(Ty::parse) {
            ty = Some(t);
            continue;
        }
        if w.starts_with(".v") {
            return perr(line, format!("vector registers ({w}) are not supported"));
        }
        let ty = ty.ok_or_else(|| SimError::Parse { line, msg: "register declaration without a type".into() })?;
        if c.eat('<') {
            let n = parse_int(&c.word()?).ok_or_else(|| SimError::Parse { line, msg: "bad register count".into() })?;
            c.expect('>')?;
            for i in 0..n {
                kb.declare(format!("{w}{i}"), ty);
            }
        } else {
            kb.declare(w, ty);
        }
        if c.eat(',') {
            continue;
        }
        c.expect(';')?;
        return Ok(());
    }
}

fn parse_operand(c: &mut Cur, kb: &KernelBuilder, line: usize) -> Result<Operand, SimError> {
    let op = match c.next()? {
        Tok::P('{') => {
            let mut v = Vec::new();
            loop {
                v.push(parse_operand(c, kb, line)?);
                if c.eat('}') {
                    break;
                }
                c.expect(',')?;
            }
            Operand::Vec(v)
        }
        Tok::P('[') => {
            let mut base = None;
            let mut off = 0i64;
            let mut sign = 1i64;
            loop {
                match c.next()? {
                    Tok::P(']') => break,
                    Tok::P('+') => sign = 1,
                    Tok::P('-') => sign = -sign,
                    Tok::Word(w) => {
                        if let Some(v) = parse_int(&w) {
                            off += sign * v;
                        } else if base.is_none() {
                            base = Some(Box::new(name_operand(&w, kb)));
                        } else {
                            return perr(line, format!("unsupported address expression with {w}"));
                        }
                        sign = 1;
                    }
                    t => return perr(line, format!("unexpected {t:?} in address")),
                }
            }
            Operand::Addr(base, off)
        }
        Tok::P('(') => {
            // A call's return or argument list.
            let mut v = Vec::new();
            while !c.eat(')') {
                v.push(parse_operand(c, kb, line)?);
                c.eat(',');
            }
            Operand::Vec(v)
        }
        Tok::P('!') => {
            let w = c.word()?;
            match kb.reg(&w) {
                Some(r) => Operand::NotReg(r),
                None => return perr(line, format!("unknown predicate {w}")),
            }
        }
        Tok::P('-') => {
            let w = c.word()?;
            match parse_imm(&w) {
                Some(Imm::Int(v)) => Operand::Imm(Imm::Int(v.wrapping_neg())),
                Some(Imm::F64(b)) => Operand::Imm(Imm::F64((-f64::from_bits(b)).to_bits())),
                Some(Imm::F32(b)) => Operand::Imm(Imm::F32(b ^ 0x8000_0000)),
                None => return perr(line, format!("bad negative literal -{w}")),
            }
        }
        Tok::Word(w) => {
            if let Some(i) = parse_imm(&w).filter(|_| w.as_bytes()[0].is_ascii_digit()) {
                Operand::Imm(i)
            } else if w == "_" {
                Operand::Sink
            } else {
                name_operand(&w, kb)
            }
        }
        t => return perr(line, format!("unexpected {t:?} in operand")),
    };
    if c.eat('|') {
        let second = parse_operand(c, kb, line)?;
        return Ok(Operand::Pair(Box::new(op), Box::new(second)));
    }
    Ok(op)
}

fn name_operand(w: &str, kb: &KernelBuilder) -> Operand {
    if let Some(r) = kb.reg(w) {
        Operand::Reg(r)
    } else if let Some(s) = sreg(w) {
        Operand::Special(s)
    } else {
        Operand::Name(w.to_string())
    }
}

fn parse_inst(c: &mut Cur, kb: &mut KernelBuilder, opcode: String, guard: Option<(u32, bool)>, line: usize, shown: String) -> Result<(), SimError> {
    let start = c.i;
    let mut ops = Vec::new();
    if !c.eat(';') {
        loop {
            ops.push(parse_operand(c, kb, line)?);
            if c.eat(';') {
                break;
            }
            if c.eat(',') {
                continue;
            }
            return perr(line, format!("expected `,` or `;` in `{opcode}` operands"));
        }
    }
    let mut text = shown;
    text.push(' ');
    for (k, t) in c.toks[start..c.i - 1].iter().enumerate() {
        match &t.t {
            Tok::Word(w) => {
                if k > 0 && matches!(c.toks[start + k - 1].t, Tok::Word(_)) {
                    text.push(' ');
                }
                text.push_str(w)
            }
            Tok::P(',') => text.push_str(", "),
            Tok::P(p) => text.push(*p),
            Tok::Str(x) => text.push_str(&format!("{x:?}")),
        }
    }
    kb.raw.push(RawInst { opcode, guard, ops, line, text: text.trim_end().to_string(), src: kb.loc });
    Ok(())
}

fn resolve(o: &mut Operand, syms: &HashMap<String, (Space, u64)>, labels: &HashMap<String, u32>) {
    match o {
        Operand::Name(n) => {
            if let Some(&l) = labels.get(n) {
                *o = Operand::Label(l);
            } else if let Some(&(s, off)) = syms.get(n) {
                *o = Operand::Sym(s, off);
            }
            // Otherwise (e.g. a call target) it stays a Name and fails if used.
        }
        Operand::Addr(Some(b), _) => resolve(b, syms, labels),
        Operand::Vec(v) => {
            for x in v {
                resolve(x, syms, labels);
            }
        }
        Operand::Pair(a, b) => {
            resolve(a, syms, labels);
            resolve(b, syms, labels);
        }
        _ => {}
    }
}

fn decode(r: RawInst, syms: &HashMap<String, (Space, u64)>, labels: &HashMap<String, u32>, reg_tys: &[Ty]) -> Inst {
    let mut ops = r.ops;
    let mut why = String::new();
    for o in ops.iter_mut() {
        resolve(o, syms, labels);
    }
    let (op, m) = match decode_opcode(&r.opcode, &ops, reg_tys) {
        Ok(x) => x,
        Err(e) => {
            why = e;
            (Op::Unsupported, Mods::default())
        }
    };
    Inst { op, m, guard: r.guard, ops, line: r.line, text: r.text, why, src: r.src }
}

/// Decodes `base.mod.mod...` into an opcode and modifiers; `Err` names what is unknown.
fn decode_opcode(opcode: &str, ops: &[Operand], reg_tys: &[Ty]) -> Result<(Op, Mods), String> {
    let mut parts = opcode.split('.');
    let base = parts.next().unwrap_or("");
    let mut m = Mods::default();
    let op = match base {
        "mov" => Op::Mov, "ld" | "ldu" => Op::Ld, "st" => Op::St,
        "cvta" => Op::Cvta,
        "add" => Op::Add, "sub" => Op::Sub, "mul" => Op::Mul, "mad" => Op::Mad, "fma" => Op::Fma,
        "div" => Op::Div, "rem" => Op::Rem, "abs" => Op::Abs, "neg" => Op::Neg, "min" => Op::Min, "max" => Op::Max,
        "and" => Op::And, "or" => Op::Or, "xor" => Op::Xor, "not" => Op::Not, "cnot" => Op::Cnot,
        "shl" => Op::Shl, "shr" => Op::Shr, "shf" => Op::Shf, "popc" => Op::Popc, "bfind" => Op::Bfind, "clz" => Op::Clz,
        "brev" => Op::Brev, "bfe" => Op::Bfe, "bfi" => Op::Bfi, "prmt" => Op::Prmt, "lop3" => Op::Lop3,
        "setp" => Op::Setp, "testp" => Op::Testp, "selp" => Op::Selp, "cvt" => Op::Cvt,
        "rcp" => Op::Rcp, "sqrt" => Op::Sqrt, "rsqrt" => Op::Rsqrt, "ex2" => Op::Ex2, "lg2" => Op::Lg2,
        "sin" => Op::Sin, "cos" => Op::Cos, "tanh" => Op::Tanh, "copysign" => Op::Copysign,
        "bra" => Op::Bra, "ret" => Op::Ret, "exit" => Op::Exit,
        "bar" | "barrier" => Op::BarSync,
        "membar" | "fence" | "prefetch" | "prefetchu" => Op::Nop,
        "shfl" => Op::Shfl, "redux" => Op::Redux, "vote" => Op::Vote, "activemask" => Op::Activemask,
        "atom" => Op::Atom, "red" => Op::Red, "mma" => Op::Mma, "ldmatrix" => Op::Ldmatrix,
        "cp" => Op::CpAsync, "wmma" => Op::WmmaMma, "trap" => Op::Trap,
        "call" => {
            let callee = ops.iter().find_map(|o| if let Operand::Name(n) = o { Some(n.as_str()) } else { None }).unwrap_or("?");
            return match callee {
                "__assertfail" => Ok((Op::AssertFail, m)),
                // printf output is dropped; its return value reads as 0.
                "vprintf" => Ok((Op::Nop, m)),
                // Other calls are inlined by the linker (`link`).
                _ => Ok((Op::Call, m)),
            };
        }
        _ => return Err(format!("unknown opcode `{base}`")),
    };
    let mut op = op;
    let all: Vec<&str> = parts.collect();
    if op == Op::Nop {
        return Ok((op, m));
    }
    let mut idx = 0;
    while idx < all.len() {
        let p = all[idx];
        idx += 1;
        if let Some(t) = Ty::parse(p) {
            m.tys.push(t);
            continue;
        }
        match (op, p) {
            (_, "global") => m.space = Space::Global,
            (_, "shared") | (_, "shared::cta") => m.space = Space::Shared,
            (_, "local") => m.space = Space::Local,
            (_, "param") => m.space = Space::Param,
            (_, "const") => m.space = Space::Const,
            (Op::Cvta, "to") => op = Op::CvtaTo,
            (Op::Setp, c) if cmp(c).is_some() => m.cmp = cmp(c),
            (Op::Setp, "and") => m.boolop = Some(BoolOp::And),
            (Op::Setp, "or") => m.boolop = Some(BoolOp::Or),
            (Op::Setp, "xor") => m.boolop = Some(BoolOp::Xor),
            (Op::Atom | Op::Red, a) if atom_op(a).is_some() => m.aop = atom_op(a),
            (Op::Redux, "add" | "min" | "max" | "and" | "or" | "xor") => m.aop = atom_op(p),
            (_, "rn") => m.rnd = Some(Rnd::Rn),
            (_, "rz") => m.rnd = Some(Rnd::Rz),
            (_, "rm") => m.rnd = Some(Rnd::Rm),
            (_, "rp") => m.rnd = Some(Rnd::Rp),
            (_, "rna") => m.rnd = Some(Rnd::Rna),
            (_, "rni") | (_, "rzi") | (_, "rmi") | (_, "rpi") => {
                m.rnd_int = true;
                m.rnd = Some(match p { "rni" => Rnd::Rn, "rzi" => Rnd::Rz, "rmi" => Rnd::Rm, _ => Rnd::Rp });
            }
            (_, "ftz") => m.ftz = true,
            (_, "sat") => m.sat = true,
            (_, "approx") => m.approx = true,
            (_, "full") => m.approx = true,
            (_, "relu") => m.relu = true,
            (_, "satfinite") => m.satfinite = true,
            (Op::Mul | Op::Mad, "lo") => m.mode = Mode::Lo,
            (Op::Mul | Op::Mad, "hi") => m.mode = Mode::Hi,
            (Op::Mul | Op::Mad, "wide") => m.mode = Mode::Wide,
            (Op::Shfl, "up") => m.mode = Mode::Up,
            (Op::Shfl, "down") => m.mode = Mode::Down,
            (Op::Shfl, "bfly") => m.mode = Mode::Bfly,
            (Op::Shfl, "idx") => m.mode = Mode::Idx,
            (Op::Vote, "all") => m.mode = Mode::All,
            (Op::Vote, "any") => m.mode = Mode::Any,
            (Op::Vote, "uni") => m.mode = Mode::Uni,
            (Op::Vote, "ballot") => m.mode = Mode::Ballot,
            (Op::Testp, "finite") => m.mode = Mode::Finite,
            (Op::Testp, "infinite") => m.mode = Mode::Infinite,
            (Op::Testp, "number") => m.mode = Mode::Number,
            (Op::Testp, "notanumber") => m.mode = Mode::NotANumber,
            (Op::Testp, "normal") => m.mode = Mode::Normal,
            (Op::Testp, "subnormal") => m.mode = Mode::Subnormal,
            (Op::Bfind, "shiftamt") => m.mode = Mode::ShiftAmt,
            (Op::Shf, "l") => m.mode = Mode::L,
            (Op::Shf, "r") => m.mode = Mode::R,
            (Op::Shf, "wrap") => m.clamp = false,
            (Op::Shf, "clamp") => m.clamp = true,
            (Op::Ld | Op::St, "v2") => m.vec = 2,
            (Op::Ld | Op::St, "v4") => m.vec = 4,
            (Op::BarSync, "sync") | (Op::BarSync, "aligned") => {}
            (Op::BarSync, "warp") => op = Op::BarWarpSync,
            (Op::BarSync, "arrive") | (Op::BarSync, "red") => return Err("bar.arrive/bar.red are not supported".into()),
            (Op::Ldmatrix, "m8n8") => {}
            (Op::Ldmatrix, "x1") => m.num = 1,
            (Op::Ldmatrix, "x2") => m.num = 2,
            (Op::Ldmatrix, "x4") => m.num = 4,
            (Op::Ldmatrix, "trans") => m.trans = true,
            (Op::WmmaMma | Op::WmmaLoad | Op::WmmaStore, "load") if idx == 1 => op = Op::WmmaLoad,
            (Op::WmmaMma | Op::WmmaLoad | Op::WmmaStore, "store") if idx == 1 => op = Op::WmmaStore,
            (Op::WmmaMma, "mma") if idx == 1 => {}
            (Op::WmmaLoad, "a") => m.num = 0,
            (Op::WmmaLoad, "b") => m.num = 1,
            (Op::WmmaLoad, "c") => m.num = 2,
            (Op::WmmaStore, "d") => m.num = 3,
            (Op::WmmaLoad | Op::WmmaStore, "row") => m.trans = false,
            (Op::WmmaLoad | Op::WmmaStore, "col") => m.trans = true,
            (Op::WmmaMma, "row") | (Op::WmmaMma, "col") => {}
            (Op::WmmaMma | Op::WmmaLoad | Op::WmmaStore, "m16n16k16") => m.shape = (16, 16, 16),
            (Op::Mma, "m16n8k16") => m.shape = (16, 8, 16),
            (Op::Mma, "m16n8k8") => m.shape = (16, 8, 8),
            (Op::Mma, "row") | (Op::Mma, "col") => {
                // Only row.col exists for these shapes; checked below.
                if m.trans {
                    return Err("mma layout".into());
                }
                if p == "row" && m.num != 1 {
                    return Err("mma layout must be .row.col".into());
                }
                if p == "row" {
                    m.num = 2;
                } else if m.num != 2 {
                    return Err("mma layout must be .row.col".into());
                }
            }
            (Op::CpAsync, "async") => {}
            (Op::CpAsync, "commit_group") => op = Op::CpAsyncCommit,
            (Op::CpAsync, "wait_group") | (Op::CpAsync, "wait_all") => op = Op::CpAsyncWait,
            (Op::CpAsync, "ca") | (Op::CpAsync, "cg") => {}
            (_, "L2::128B") | (_, "L2::64B") | (_, "L2::256B") => {}
            (_, "L1::evict_normal") | (_, "L1::evict_unchanged") | (_, "L1::evict_first") | (_, "L1::evict_last")
            | (_, "L1::no_allocate") | (_, "L2::evict_normal") | (_, "L2::evict_first") | (_, "L2::evict_last") => {}
            (_, "sync") | (_, "aligned") | (_, "uni") | (_, "nc") | (_, "volatile") | (_, "relaxed")
            | (_, "acquire") | (_, "release") | (_, "acq_rel") | (_, "gpu") | (_, "cta") | (_, "sys")
            | (_, "ca") | (_, "cg") | (_, "cs") | (_, "lu") | (_, "cv") | (_, "wb") | (_, "wt") | (_, "noftz") => {}
            (Op::Ret, _) | (Op::Exit, _) => return Err(format!("modifier .{p}")),
            _ => return Err(format!("modifier .{p} is not supported on {base}")),
        }
    }
    // Shape checks that turn PTX we would mis-execute into loud errors.
    let nty = m.tys.len();
    let need = |n: usize| if nty == n { Ok(()) } else { Err(format!("expected {n} type suffix(es), found {nty}")) };
    match op {
        Op::Mov | Op::Ld | Op::St | Op::Add | Op::Sub | Op::Mul | Op::Mad | Op::Fma | Op::Div | Op::Rem | Op::Abs | Op::Neg
        | Op::Min | Op::Max | Op::And | Op::Or | Op::Xor | Op::Not | Op::Cnot | Op::Shl | Op::Shr | Op::Popc | Op::Clz
        | Op::Brev | Op::Bfind | Op::Bfe | Op::Bfi | Op::Selp | Op::Rcp | Op::Sqrt | Op::Rsqrt | Op::Ex2 | Op::Lg2 | Op::Sin | Op::Cos
        | Op::Tanh | Op::Copysign | Op::Shfl | Op::Redux | Op::Activemask | Op::Atom | Op::Red | Op::Prmt | Op::Lop3 | Op::Shf
        | Op::Cvta | Op::CvtaTo | Op::Setp | Op::Testp => need(1)?,
        Op::Cvt => need(2)?,
        Op::Mma => {
            need(4)?;
            if m.shape.0 == 0 || m.num != 2 {
                return Err("mma must be m16n8k16/m16n8k8 .row.col".into());
            }
            let ok = matches!((m.tys[0], m.tys[1], m.tys[2], m.tys[3]), (Ty::F32, Ty::BF16, Ty::BF16, Ty::F32) | (Ty::F32, Ty::F16, Ty::F16, Ty::F32));
            if !ok {
                return Err("only f32.{bf16,f16}.{bf16,f16}.f32 mma is supported".into());
            }
        }
        Op::WmmaLoad | Op::WmmaStore | Op::WmmaMma => {
            if m.shape != (16, 16, 16) {
                return Err("only wmma m16n16k16 is supported".into());
            }
            let ok = match op {
                Op::WmmaLoad if m.num < 2 => matches!(m.tys[..], [Ty::F16] | [Ty::BF16]),
                Op::WmmaLoad | Op::WmmaStore => m.tys[..] == [Ty::F32],
                _ => {
                    matches!(m.tys[..], [Ty::F32, Ty::F32] | [Ty::F32, Ty::F16, Ty::F16, Ty::F32] | [Ty::F32, Ty::BF16, Ty::BF16, Ty::F32])
                }
            };
            if !ok {
                return Err("wmma supports f16/bf16 inputs with f32 accumulators".into());
            }
            if op == Op::WmmaMma && m.tys.len() == 2 {
                m.tys = vec![Ty::F32, Ty::F16, Ty::F16, Ty::F32];
            }
        }
        Op::Ldmatrix if m.tys != [Ty::B16] || m.space != Space::Shared => {
            return Err("ldmatrix must be .m8n8{.x1,.x2,.x4}{.trans}.shared.b16".into());
        }
        _ => {}
    }
    if m.rnd == Some(Rnd::Rna) && op != Op::Cvt {
        return Err(".rna outside cvt".into());
    }
    if op == Op::Prmt && !all.is_empty() && all.len() > 1 {
        return Err("prmt modes other than the default".into());
    }
    // Operand-count checks.
    let n = ops.len();
    let want: Option<std::ops::RangeInclusive<usize>> = match op {
        Op::Mov | Op::Cvta | Op::CvtaTo | Op::Abs | Op::Neg | Op::Not | Op::Cnot | Op::Popc | Op::Clz | Op::Brev | Op::Bfind
        | Op::Rcp | Op::Sqrt | Op::Rsqrt | Op::Ex2 | Op::Lg2 | Op::Sin | Op::Cos | Op::Tanh | Op::Ld | Op::St => Some(2..=2),
        Op::Cvt => Some(2..=3),
        Op::Testp => Some(2..=2),
        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Rem | Op::Min | Op::Max | Op::And | Op::Or | Op::Xor | Op::Shl | Op::Shr
        | Op::Copysign => Some(3..=3),
        Op::Mad | Op::Fma | Op::Selp | Op::Bfe | Op::Prmt | Op::Shf => Some(4..=4),
        Op::Bfi | Op::Lop3 => Some(5..=5),
        Op::Setp => Some(3..=4),
        Op::Shfl => Some(5..=5),
        Op::Vote | Op::Redux => Some(3..=3),
        Op::Mma => Some(4..=4),
        Op::Ldmatrix => Some(2..=2),
        Op::WmmaLoad | Op::WmmaStore => Some(2..=3),
        Op::WmmaMma => Some(4..=4),
        Op::Atom => Some(3..=4),
        Op::Red => Some(2..=2),
        Op::Bra => Some(1..=1),
        Op::Ret | Op::Exit | Op::CpAsyncCommit => Some(0..=0),
        Op::CpAsync => Some(3..=4),
        _ => None,
    };
    if let Some(w) = want {
        if !w.contains(&n) {
            return Err(format!("{n} operands"));
        }
    }
    if op == Op::Bra && !matches!(ops[0], Operand::Label(_)) {
        return Err("indirect branch".into());
    }
    if op == Op::BarSync && n > 2 {
        return Err("bar.sync operands".into());
    }
    // Any name left unresolved (a call target, an unknown symbol) is unsupported.
    fn has_name(o: &Operand) -> Option<String> {
        match o {
            Operand::Name(n) => Some(n.clone()),
            Operand::Addr(Some(b), _) => has_name(b),
            Operand::Vec(v) => v.iter().find_map(has_name),
            Operand::Pair(a, b) => has_name(a).or_else(|| has_name(b)),
            _ => None,
        }
    }
    if let Some(nm) = ops.iter().find_map(has_name) {
        return Err(format!("unresolved name `{nm}`"));
    }
    if op == Op::CpAsync && n == 4 {
        if let Operand::Reg(r) | Operand::NotReg(r) = ops[3] {
            m.pred4 = reg_tys.get(r as usize) == Some(&Ty::Pred);
        }
    }
    Ok((op, m))
}

fn cmp(s: &str) -> Option<Cmp> {
    use Cmp::*;
    Some(match s {
        "eq" => Eq, "ne" => Ne, "lt" => Lt, "le" => Le, "gt" => Gt, "ge" => Ge,
        "lo" => Lo, "ls" => Ls, "hi" => Hi, "hs" => Hs,
        "equ" => Equ, "neu" => Neu, "ltu" => Ltu, "leu" => Leu, "gtu" => Gtu, "geu" => Geu,
        "num" => Num, "nan" => Nan,
        _ => return None,
    })
}

fn atom_op(s: &str) -> Option<AtomOp> {
    use AtomOp::*;
    Some(match s {
        "add" => Add, "min" => Min, "max" => Max, "exch" => Exch, "cas" => Cas,
        "and" => And, "or" => Or, "xor" => Xor, "inc" => Inc, "dec" => Dec,
        _ => return None,
    })
}
