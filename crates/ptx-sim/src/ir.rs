//! The pre-decoded instruction form. The parser turns every PTX statement into an
//! `Inst` once: an opcode enum, parsed modifiers, operands with registers resolved
//! to slot numbers, symbols resolved to state-space offsets and labels resolved to
//! instruction indices. The executor then dispatches on enums and never looks at
//! strings again except to name an instruction in an error.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    B8, B16, B32, B64, U8, U16, U32, U64, S8, S16, S32, S64,
    F16, F16x2, BF16, BF16x2, F32, F64, Pred,
}

impl Ty {
    pub fn parse(s: &str) -> Option<Ty> {
        use Ty::*;
        Some(match s {
            "b8" => B8, "b16" => B16, "b32" => B32, "b64" => B64,
            "u8" => U8, "u16" => U16, "u32" => U32, "u64" => U64,
            "s8" => S8, "s16" => S16, "s32" => S32, "s64" => S64,
            "f16" => F16, "f16x2" => F16x2, "bf16" => BF16, "bf16x2" => BF16x2,
            "f32" => F32, "f64" => F64, "pred" => Pred,
            _ => return None,
        })
    }
    pub fn bits(self) -> u32 {
        use Ty::*;
        match self {
            B8 | U8 | S8 => 8,
            B16 | U16 | S16 | F16 | BF16 => 16,
            B32 | U32 | S32 | F32 | F16x2 | BF16x2 => 32,
            B64 | U64 | S64 | F64 => 64,
            Pred => 1,
        }
    }
    pub fn bytes(self) -> usize {
        (self.bits() as usize).div_ceil(8)
    }
    pub fn signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }
    pub fn is_float(self) -> bool {
        matches!(self, Ty::F16 | Ty::F16x2 | Ty::BF16 | Ty::BF16x2 | Ty::F32 | Ty::F64)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space { Generic, Global, Shared, Local, Param, Const,
    /// `.param` variables declared in a kernel body for a call sequence: a small
    /// per-thread frame (only `__assertfail` and `vprintf` calls are understood).
    CallParam }

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim { X, Y, Z }

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sreg {
    Tid(Dim), Ntid(Dim), Ctaid(Dim), Nctaid(Dim),
    Laneid, Warpid, Nwarpid, Smid, Nsmid, Gridid, Clock, Clock64, Globaltimer,
    LanemaskEq, LanemaskLt, LanemaskLe, LanemaskGt, LanemaskGe,
}

#[derive(Clone, Copy, Debug)]
pub enum Imm { Int(i64), F32(u32), F64(u64) }

#[derive(Clone, Debug)]
pub enum Operand {
    Reg(u32),
    /// `!%p` (setp's combining predicate, vote's source).
    NotReg(u32),
    Imm(Imm),
    Special(Sreg),
    /// A state-space address of a symbol (shared/local offset, param offset), or
    /// for `Space::Global` the index of a module variable.
    Sym(Space, u64),
    /// `[base+off]`; base is `Reg`, `Sym` or absent.
    Addr(Option<Box<Operand>>, i64),
    Vec(Vec<Operand>),
    /// `d|p`: a value destination and a predicate destination.
    Pair(Box<Operand>, Box<Operand>),
    Label(u32),
    /// `_` in a vector operand.
    Sink,
    /// A name the parser could not resolve (e.g. a `.func` target); using it fails.
    Name(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp { Eq, Ne, Lt, Le, Gt, Ge, Lo, Ls, Hi, Hs, Equ, Neu, Ltu, Leu, Gtu, Geu, Num, Nan }

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoolOp { And, Or, Xor }

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rnd { Rn, Rz, Rm, Rp, Rna }

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    None, Lo, Hi, Wide,
    Up, Down, Bfly, Idx,
    All, Any, Uni, Ballot,
    L, R,
    Finite, Infinite, Number, NotANumber, Normal, Subnormal,
    ShiftAmt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtomOp { Add, Min, Max, Exch, Cas, And, Or, Xor, Inc, Dec }

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Mov, Ld, St, Cvta, CvtaTo,
    Add, Sub, Mul, Mad, Fma, Div, Rem, Abs, Neg, Min, Max,
    And, Or, Xor, Not, Cnot, Shl, Shr, Shf, Popc, Clz, Bfind, Brev, Bfe, Bfi, Prmt, Lop3,
    Setp, Selp, Testp, Cvt, Rcp, Sqrt, Rsqrt, Ex2, Lg2, Sin, Cos, Tanh, Copysign,
    Bra, Ret, Exit, BarSync, BarWarpSync, Nop,
    Shfl, Vote, Activemask, Redux, Atom, Red,
    Mma, Ldmatrix, CpAsync, CpAsyncCommit, CpAsyncWait,
    /// `call __assertfail`: the device-side assert failed.
    AssertFail,
    /// `trap`.
    Trap,
    /// A call to a `.func`; the linker inlines every one before execution.
    Call,
    /// Copies call-frame bytes (argument/return passing of an inlined call):
    /// ops are `Imm(dst)`, `Imm(src)`, `Imm(size)`.
    FrameCopy,
    WmmaLoad, WmmaStore, WmmaMma,
    /// Decoded but not implemented: executing it is an `Unsupported` error.
    Unsupported,
}

#[derive(Clone, Debug)]
pub struct Mods {
    pub tys: Vec<Ty>,
    pub space: Space,
    pub cmp: Option<Cmp>,
    pub boolop: Option<BoolOp>,
    pub rnd: Option<Rnd>,
    /// Rounding to an integral value (`.rni`, `.rzi`, ...), stored in `rnd`.
    pub rnd_int: bool,
    pub ftz: bool,
    pub sat: bool,
    pub approx: bool,
    pub relu: bool,
    pub satfinite: bool,
    pub clamp: bool,
    pub mode: Mode,
    pub aop: Option<AtomOp>,
    pub vec: u8,
    pub trans: bool,
    pub num: u8,
    /// cp.async's 4th operand is the ignore-src predicate (not a src-size).
    pub pred4: bool,
    /// mma shape (m, n, k).
    pub shape: (u8, u8, u8),
}

impl Default for Mods {
    fn default() -> Self {
        Mods {
            tys: Vec::new(), space: Space::Generic, cmp: None, boolop: None, rnd: None, rnd_int: false,
            ftz: false, sat: false, approx: false, relu: false, satfinite: false, clamp: false,
            mode: Mode::None, aop: None, vec: 1, trans: false, num: 1, pred4: false, shape: (0, 0, 0),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Inst {
    pub op: Op,
    pub m: Mods,
    pub guard: Option<(u32, bool)>,
    pub ops: Vec<Operand>,
    pub line: usize,
    pub text: String,
    /// Why an `Op::Unsupported` instruction is unsupported.
    pub why: String,
    /// CUDA source (file index, line) from `.loc`, when compiled with -lineinfo.
    pub src: Option<(u32, u32)>,
}

/// A module-scope `.global`/`.const` variable; instructions name it as
/// `Operand::Sym(Space::Global, index)` and the launch gives it an address.
#[derive(Clone, Debug)]
pub struct GlobalVar {
    pub name: String,
    pub align: usize,
    pub init: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct Param {
    pub offset: usize,
    pub size: usize,
}

#[derive(Clone, Debug)]
pub struct Kernel {
    pub name: String,
    pub is_entry: bool,
    pub params: Vec<Param>,
    pub param_bytes: usize,
    pub insts: Vec<Inst>,
    pub nregs: usize,
    /// Dynamic (`extern .shared`) memory starts here, after the static variables.
    pub dyn_shared_offset: usize,
    pub local_bytes: usize,
    /// Bytes of the per-thread call-parameter frame.
    pub call_frame: usize,
    /// For a `.func`: (frame offset, size) of each parameter and return value.
    pub fparams: Vec<(u64, usize)>,
    pub frets: Vec<(u64, usize)>,
}
