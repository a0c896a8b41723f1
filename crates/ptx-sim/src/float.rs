//! Float formats and rounding. One routine, `round_exact`, rounds an exactly known
//! value (sign, integer mantissa, binary exponent) into any IEEE-like format (f16,
//! bf16, f32, f64) under any PTX rounding mode, with subnormals and overflow; every
//! conversion (float narrowing, int to float) goes through it, so rounding lives in
//! one place. f32 arithmetic with directed rounding takes the hardware-exact
//! round-to-nearest result and nudges it by one ulp using the sign of the exact
//! error (TwoSum / FMA residuals), which is exact for add, mul, div and sqrt.

use crate::ir::Rnd;

#[derive(Clone, Copy, Debug)]
pub struct Fmt {
    pub ebits: u32,
    pub mbits: u32,
}

pub const F16: Fmt = Fmt { ebits: 5, mbits: 10 };
pub const BF16: Fmt = Fmt { ebits: 8, mbits: 7 };
pub const F32: Fmt = Fmt { ebits: 8, mbits: 23 };
pub const F64: Fmt = Fmt { ebits: 11, mbits: 52 };

impl Fmt {
    fn bias(self) -> i32 {
        (1 << (self.ebits - 1)) - 1
    }
    pub fn inf(self, neg: bool) -> u64 {
        ((neg as u64) << (self.ebits + self.mbits)) | (((1u64 << self.ebits) - 1) << self.mbits)
    }
    pub fn max_finite(self, neg: bool) -> u64 {
        self.inf(neg) - 1
    }
    pub fn nan(self) -> u64 {
        // Canonical NaN as the hardware produces it: all exponent bits, all mantissa bits.
        (((1u64 << self.ebits) - 1) << self.mbits) | ((1u64 << self.mbits) - 1)
    }
    pub fn to_f64(self, bits: u64) -> f64 {
        let sign = (bits >> (self.ebits + self.mbits)) & 1 == 1;
        let e = ((bits >> self.mbits) & ((1 << self.ebits) - 1)) as i32;
        let f = bits & ((1u64 << self.mbits) - 1);
        let v = if e == (1 << self.ebits) - 1 {
            if f == 0 { f64::INFINITY } else { f64::NAN }
        } else if e == 0 {
            f as f64 * 2f64.powi(1 - self.bias() - self.mbits as i32)
        } else {
            (f | (1u64 << self.mbits)) as f64 * 2f64.powi(e - self.bias() - self.mbits as i32)
        };
        if sign { -v } else { v }
    }
}

/// Rounds (-1)^neg * mant * 2^exp into `fmt` under `mode`.
pub fn round_exact(neg: bool, mant: u128, exp: i32, fmt: Fmt, mode: Rnd) -> u64 {
    let sign = (neg as u64) << (fmt.ebits + fmt.mbits);
    if mant == 0 {
        return sign;
    }
    let msb = 127 - mant.leading_zeros() as i32;
    let e = msb + exp;
    let emin = 1 - fmt.bias();
    let q = e.max(emin) - fmt.mbits as i32;
    let shift = q - exp;
    let (mut m, rem_cmp, inexact) = if shift <= 0 {
        (mant << (-shift) as u32, std::cmp::Ordering::Less, false)
    } else if shift >= 128 {
        (0u128, std::cmp::Ordering::Less, true)
    } else {
        let m = mant >> shift;
        let rem = mant & ((1u128 << shift) - 1);
        let half = 1u128 << (shift - 1);
        (m, rem.cmp(&half), rem != 0)
    };
    let up = match mode {
        Rnd::Rn => rem_cmp == std::cmp::Ordering::Greater || (rem_cmp == std::cmp::Ordering::Equal && m & 1 == 1),
        Rnd::Rna => rem_cmp != std::cmp::Ordering::Less,
        Rnd::Rz => false,
        Rnd::Rp => inexact && !neg,
        Rnd::Rm => inexact && neg,
    };
    if up {
        m += 1;
    }
    let mut q = q;
    if m >> (fmt.mbits + 1) != 0 {
        m >>= 1;
        q += 1;
    }
    if m >> fmt.mbits == 0 {
        return sign | m as u64; // subnormal or zero
    }
    let bexp = q + fmt.mbits as i32 + fmt.bias();
    if bexp >= (1 << fmt.ebits) - 1 {
        let to_inf = match mode {
            Rnd::Rn | Rnd::Rna => true,
            Rnd::Rz => false,
            Rnd::Rp => !neg,
            Rnd::Rm => neg,
        };
        return if to_inf { fmt.inf(neg) } else { fmt.max_finite(neg) };
    }
    sign | ((bexp as u64) << fmt.mbits) | (m as u64 & ((1u64 << fmt.mbits) - 1))
}

/// Rounds an f64 (exact input) into `fmt`.
pub fn from_f64(x: f64, fmt: Fmt, mode: Rnd) -> u64 {
    if x.is_nan() {
        return fmt.nan();
    }
    let neg = x.is_sign_negative();
    if x.is_infinite() {
        return fmt.inf(neg);
    }
    let b = x.to_bits();
    let e = ((b >> 52) & 0x7ff) as i32;
    let f = b & ((1u64 << 52) - 1);
    let (mant, exp) = if e == 0 { (f, -1074) } else { (f | (1u64 << 52), e - 1075) };
    round_exact(neg, mant as u128, exp, fmt, mode)
}

/// Rounds an exact integer into `fmt`.
pub fn from_int(v: i128, fmt: Fmt, mode: Rnd) -> u64 {
    round_exact(v < 0, v.unsigned_abs(), 0, fmt, mode)
}

pub fn next_up(x: f32) -> f32 {
    if x.is_nan() || x == f32::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f32::from_bits(1);
    }
    let b = x.to_bits();
    f32::from_bits(if x > 0.0 { b + 1 } else { b - 1 })
}

pub fn next_down(x: f32) -> f32 {
    -next_up(-x)
}

/// Turns the round-to-nearest result `r` into the `mode` result given the sign of
/// (exact - r).
pub fn directed(r: f32, err: f64, mode: Rnd) -> f32 {
    if err == 0.0 || r.is_nan() || err.is_nan() {
        return r;
    }
    match mode {
        Rnd::Rn | Rnd::Rna => r,
        Rnd::Rp => if err > 0.0 { next_up(r) } else { r },
        Rnd::Rm => if err < 0.0 { next_down(r) } else { r },
        Rnd::Rz => {
            if r > 0.0 && err < 0.0 { next_down(r) } else if r < 0.0 && err > 0.0 { next_up(r) } else { r }
        }
    }
}

pub fn ftz32(x: f32) -> f32 {
    if x.is_subnormal() { f32::from_bits(x.to_bits() & 0x8000_0000) } else { x }
}

pub fn sat32(x: f32) -> f32 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

#[derive(Clone, Copy)]
pub enum Bin { Add, Sub, Mul, Div }

/// f32 add/sub/mul/div with a PTX rounding mode.
pub fn bin32(op: Bin, a: f32, b: f32, mode: Rnd) -> f32 {
    let b = if let Bin::Sub = op { -b } else { b };
    match op {
        Bin::Add | Bin::Sub => {
            let r = a + b;
            if mode == Rnd::Rn {
                return r;
            }
            if r.is_infinite() && a.is_finite() && b.is_finite() {
                return directed(r, if r > 0.0 { -1.0 } else { 1.0 }, mode);
            }
            // TwoSum: exact error of the rounded sum.
            let bb = r - a;
            let err = (a - (r - bb)) + (b - bb);
            directed(r, err as f64, mode)
        }
        Bin::Mul => {
            let r = a * b;
            if mode == Rnd::Rn {
                return r;
            }
            let exact = a as f64 * b as f64;
            directed(r, exact - r as f64, mode)
        }
        Bin::Div => {
            let r = a / b;
            if mode == Rnd::Rn || !r.is_finite() || b == 0.0 {
                return r;
            }
            let res = (-(r as f64)).mul_add(b as f64, a as f64); // a - r*b, exact in f64
            directed(r, res * (b as f64).signum(), mode)
        }
    }
}

pub fn fma32(a: f32, b: f32, c: f32, mode: Rnd) -> f32 {
    let r = a.mul_add(b, c);
    if mode == Rnd::Rn || !r.is_finite() {
        return r;
    }
    let p = a as f64 * b as f64;
    let s = p + c as f64;
    let bb = s - p;
    let e = (p - (s - bb)) + (c as f64 - bb);
    directed(r, (s - r as f64) + e, mode)
}

pub fn sqrt32(a: f32, mode: Rnd) -> f32 {
    let r = a.sqrt();
    if mode == Rnd::Rn || !r.is_finite() || r == 0.0 {
        return r;
    }
    let res = (-(r as f64)).mul_add(r as f64, a as f64);
    directed(r, res, mode)
}

/// Rounds a float (given exactly as f64) to an integral value.
pub fn round_int(x: f64, mode: Rnd) -> f64 {
    match mode {
        Rnd::Rn => x.round_ties_even(),
        Rnd::Rna => x.round(),
        Rnd::Rz => x.trunc(),
        Rnd::Rm => x.floor(),
        Rnd::Rp => x.ceil(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn bf16_rne() {
        assert_eq!(from_f64(1.0, BF16, Rnd::Rn), 0x3f80);
        // 1 + 2^-8 is a tie between 1 and 1+2^-7: even is 1.
        assert_eq!(from_f64(1.0 + 2f64.powi(-8), BF16, Rnd::Rn), 0x3f80);
        assert_eq!(from_f64(1.0 + 3.0 * 2f64.powi(-8), BF16, Rnd::Rn), 0x3f82);
        assert_eq!(from_f64(65520.0, F16, Rnd::Rn), 0x7c00);
        assert_eq!(from_f64(65520.0, F16, Rnd::Rz), 0x7bff);
        assert_eq!(from_f64(2f64.powi(-24), F16, Rnd::Rn), 1);
        assert_eq!(from_f64(0.1, F32, Rnd::Rn) as u32, 0.1f32.to_bits());
        assert_eq!(from_int(16_777_217, F32, Rnd::Rn) as u32, 16_777_216f32.to_bits());
        assert_eq!(from_int(16_777_217, F32, Rnd::Rp) as u32, 16_777_218f32.to_bits());
    }
}
