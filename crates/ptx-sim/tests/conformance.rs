//! Conformance tests per instruction family, each a hand-written PTX snippet run in
//! the interpreter with its expected results computed independently in Rust.
//! Snippets share a prologue that loads `out`/`inp` and the thread's word offset.

mod common;
use common::*;
use ptx_sim::{Arg, LaunchConfig, Memory};

/// Declares registers and computes %rd4 = out + 4*tid, %rd5 = inp + 4*tid.
const PRE: &str = "
    .reg .b32 %r<40>; .reg .b64 %rd<20>; .reg .pred %p<10>; .reg .f32 %f<20>; .reg .b16 %h<10>; .reg .f64 %fd<4>;
    ld.param.u64 %rd1, [out]; ld.param.u64 %rd2, [inp];
    cvta.to.global.u64 %rd1, %rd1; cvta.to.global.u64 %rd2, %rd2;
    mov.u32 %r1, %tid.x; mul.wide.u32 %rd3, %r1, 4; add.s64 %rd4, %rd1, %rd3; add.s64 %rd5, %rd2, %rd3;
";

/// Runs single-thread straight-line code whose results are st.global'd to out[i].
fn one(body: &str, n: usize) -> Vec<u32> {
    run_snippet(&format!("{PRE}\n{body}\nret;"), 1, n, &[])
}

#[test]
fn integer_ops() {
    let r = one(
        "
        mov.u32 %r2, -7; mov.u32 %r3, 3;
        div.s32 %r4, %r2, %r3; st.global.u32 [%rd1+0], %r4;
        rem.s32 %r4, %r2, %r3; st.global.u32 [%rd1+4], %r4;
        div.u32 %r4, %r2, %r3; st.global.u32 [%rd1+8], %r4;
        rem.u32 %r4, %r2, %r3; st.global.u32 [%rd1+12], %r4;
        mul.hi.s32 %r4, %r2, 0x40000000; st.global.u32 [%rd1+16], %r4;
        mul.hi.u32 %r4, %r2, 0x40000000; st.global.u32 [%rd1+20], %r4;
        mul.wide.s32 %rd6, %r2, 1000000; st.global.u64 [%rd1+24], %rd6;
        mad.lo.s32 %r4, %r2, %r3, 100; st.global.u32 [%rd1+32], %r4;
        shr.s32 %r4, %r2, 1; st.global.u32 [%rd1+36], %r4;
        shr.u32 %r4, %r2, 28; st.global.u32 [%rd1+40], %r4;
        shl.b32 %r4, %r3, 33; st.global.u32 [%rd1+44], %r4;
        shr.s32 %r4, %r2, 40; st.global.u32 [%rd1+48], %r4;
        min.s32 %r4, %r2, %r3; st.global.u32 [%rd1+52], %r4;
        min.u32 %r4, %r2, %r3; st.global.u32 [%rd1+56], %r4;
        max.s32 %r4, %r2, %r3; st.global.u32 [%rd1+60], %r4;
        abs.s32 %r4, %r2; st.global.u32 [%rd1+64], %r4;
        neg.s32 %r4, %r3; st.global.u32 [%rd1+68], %r4;
        popc.b32 %r4, %r2; st.global.u32 [%rd1+72], %r4;
        clz.b32 %r4, %r3; st.global.u32 [%rd1+76], %r4;
        brev.b32 %r4, %r3; st.global.u32 [%rd1+80], %r4;
        bfe.u32 %r4, 0xF0F0ABCD, 4, 12; st.global.u32 [%rd1+84], %r4;
        bfe.s32 %r4, 0x00000F00, 8, 4; st.global.u32 [%rd1+88], %r4;
        bfi.b32 %r4, 0xF, 0x12345678, 8, 4; st.global.u32 [%rd1+92], %r4;
        prmt.b32 %r4, 0x33221100, 0x77665544, 0x5140; st.global.u32 [%rd1+96], %r4;
        lop3.b32 %r4, 0xF0F0F0F0, 0xCCCCCCCC, 0xAAAAAAAA, 0xE8; st.global.u32 [%rd1+100], %r4;
        shf.l.wrap.b32 %r4, 0x80000001, 0x12345678, 4; st.global.u32 [%rd1+104], %r4;
        shf.r.clamp.b32 %r4, 0x80000001, 0x12345678, 40; st.global.u32 [%rd1+108], %r4;
        add.sat.s32 %r4, 0x7FFFFFF0, 0x100; st.global.u32 [%rd1+112], %r4;
        xor.b32 %r4, %r2, %r3; not.b32 %r4, %r4; st.global.u32 [%rd1+116], %r4;
        cnot.b32 %r4, 0; st.global.u32 [%rd1+120], %r4;
        mov.u64 %rd7, 0xFFFFFFFF; add.u64 %rd7, %rd7, 1; mul.lo.u64 %rd7, %rd7, 3; st.global.u64 [%rd1+124], %rd7;
        mul.hi.u64 %rd8, %rd7, %rd7; st.global.u64 [%rd1+132], %rd8;
        sub.s32 %r4, 0, 0x80000000; st.global.u32 [%rd1+140], %r4;
        bfind.u32 %r4, 0x00F00000; st.global.u32 [%rd1+144], %r4;
        bfind.shiftamt.u32 %r4, 0x00F00000; st.global.u32 [%rd1+148], %r4;
        bfind.s32 %r4, -5; st.global.u32 [%rd1+152], %r4;
        bfind.u32 %r4, 0; st.global.u32 [%rd1+156], %r4;
        ",
        40,
    );
    let w = |i: usize| r[i / 4];
    assert_eq!(w(0) as i32, -2);
    assert_eq!(w(4) as i32, -1);
    assert_eq!(w(8), (-7i32 as u32) / 3);
    assert_eq!(w(12), (-7i32 as u32) % 3);
    assert_eq!(w(16) as i32, ((-7i64 * 0x4000_0000) >> 32) as i32);
    assert_eq!(w(20), ((0xFFFF_FFF9u64 * 0x4000_0000) >> 32) as u32);
    assert_eq!((w(24) as u64 | (w(28) as u64) << 32) as i64, -7_000_000);
    assert_eq!(w(32), 79);
    assert_eq!(w(36) as i32, -4);
    assert_eq!(w(40), 0xF);
    assert_eq!(w(44), 0);
    assert_eq!(w(48) as i32, -1);
    assert_eq!(w(52) as i32, -7);
    assert_eq!(w(56), 3);
    assert_eq!(w(60), 3);
    assert_eq!(w(64), 7);
    assert_eq!(w(68) as i32, -3);
    assert_eq!(w(72), (-7i32 as u32).count_ones());
    assert_eq!(w(76), 30);
    assert_eq!(w(80), 3u32.reverse_bits());
    assert_eq!(w(84), 0xABC);
    assert_eq!(w(88) as i32, -1);
    assert_eq!(w(92), 0x12345F78);
    // prmt selectors 0,4,1,5 -> bytes a0,b0,a1,b1
    assert_eq!(w(96), u32::from_le_bytes([0x00, 0x44, 0x11, 0x55]));
    assert_eq!(w(100), (0xF0F0F0F0u32 & 0xCCCCCCCC) | (0xF0F0F0F0u32 & 0xAAAAAAAA) | (0xCCCCCCCCu32 & 0xAAAAAAAA)); // majority
    assert_eq!(w(104), (((0x12345678u64 << 32 | 0x80000001) << 4) >> 32) as u32);
    assert_eq!(w(108), 0x12345678); // clamp to 32: the high word
    assert_eq!(w(112), 0x7FFF_FFFF);
    assert_eq!(w(116), !((-7i32 as u32) ^ 3));
    assert_eq!(w(120), 1);
    assert_eq!(w(124) as u64 | (w(128) as u64) << 32, 3u64 << 32);
    assert_eq!(w(132) as u64 | (w(136) as u64) << 32, (((3u128 << 32) * (3u128 << 32)) >> 64) as u64);
    assert_eq!(w(140), 0x8000_0000);
    assert_eq!(w(144), 23);
    assert_eq!(w(148), 8);
    assert_eq!(w(152), 2); // -5 = ...11111011: the top non-sign bit is bit 2
    assert_eq!(w(156), u32::MAX);
}

fn f(bits: u32) -> f32 {
    f32::from_bits(bits)
}

#[test]
fn float_rounding_modes() {
    // 1 + 2^-30 and -1 - 2^-30: inexact sums that expose each mode.
    let r = one(
        "
        mov.f32 %f1, 0f3F800000; mov.f32 %f2, 0f30800000; neg.f32 %f3, %f1; neg.f32 %f4, %f2;
        add.rn.f32 %f5, %f1, %f2; st.global.f32 [%rd1+0], %f5;
        add.rz.f32 %f5, %f1, %f2; st.global.f32 [%rd1+4], %f5;
        add.rm.f32 %f5, %f1, %f2; st.global.f32 [%rd1+8], %f5;
        add.rp.f32 %f5, %f1, %f2; st.global.f32 [%rd1+12], %f5;
        add.rz.f32 %f5, %f3, %f4; st.global.f32 [%rd1+16], %f5;
        add.rm.f32 %f5, %f3, %f4; st.global.f32 [%rd1+20], %f5;
        add.rp.f32 %f5, %f3, %f4; st.global.f32 [%rd1+24], %f5;
        mov.f32 %f6, 0f40400000;
        div.rn.f32 %f5, %f1, %f6; st.global.f32 [%rd1+28], %f5;
        div.rz.f32 %f5, %f1, %f6; st.global.f32 [%rd1+32], %f5;
        div.rp.f32 %f5, %f1, %f6; st.global.f32 [%rd1+36], %f5;
        mul.rp.f32 %f7, %f5, %f6; st.global.f32 [%rd1+40], %f7;
        mul.rm.f32 %f7, %f5, %f6; st.global.f32 [%rd1+44], %f7;
        fma.rn.f32 %f7, %f5, %f6, %f3; st.global.f32 [%rd1+48], %f7;
        sqrt.rn.f32 %f7, 0f40000000; st.global.f32 [%rd1+52], %f7;
        sqrt.rp.f32 %f7, 0f40000000; st.global.f32 [%rd1+56], %f7;
        add.sat.f32 %f7, %f1, %f1; st.global.f32 [%rd1+60], %f7;
        mul.sat.f32 %f7, %f3, %f1; st.global.f32 [%rd1+64], %f7;
        mul.ftz.f32 %f7, 0f00400000, %f1; st.global.f32 [%rd1+68], %f7;
        mul.f32 %f7, 0f00400000, %f1; st.global.f32 [%rd1+72], %f7;
        min.f32 %f7, 0f7FC00000, %f1; st.global.f32 [%rd1+76], %f7;
        max.f32 %f7, %f3, 0f7FC00000; st.global.f32 [%rd1+80], %f7;
        ex2.approx.ftz.f32 %f7, 0f40400000; st.global.f32 [%rd1+84], %f7;
        rcp.approx.f32 %f7, 0f40800000; st.global.f32 [%rd1+88], %f7;
        rsqrt.approx.f32 %f7, 0f40800000; st.global.f32 [%rd1+92], %f7;
        lg2.approx.f32 %f7, 0f41000000; st.global.f32 [%rd1+96], %f7;
        abs.f32 %f7, %f3; st.global.f32 [%rd1+100], %f7;
        sub.f32 %f7, %f1, %f6; st.global.f32 [%rd1+104], %f7;
        mov.f64 %fd1, 0d3FF0000000000000; add.f64 %fd2, %fd1, %fd1; mul.f64 %fd2, %fd2, 0d4008000000000000;
        st.global.f64 [%rd1+108], %fd2;
        mad.rn.f32 %f7, %f6, %f6, %f1; st.global.f32 [%rd1+116], %f7;
        copysign.f32 %f7, %f3, %f6; st.global.f32 [%rd1+120], %f7;
        ",
        31,
    );
    let up = |x: f32| f32::from_bits(x.to_bits() + 1);
    let g = |i: usize| f(r[i / 4]);
    assert_eq!(g(0), 1.0);
    assert_eq!(g(4), 1.0);
    assert_eq!(g(8), 1.0);
    assert_eq!(g(12), up(1.0));
    assert_eq!(g(16), -1.0);
    assert_eq!(g(20), -up(1.0));
    assert_eq!(g(24), -1.0);
    let third = 1.0f32 / 3.0; // RN rounds down here (0x3EAAAAAB is above 1/3? check both modes)
    assert_eq!(g(28), third);
    let exact = 1.0f64 / 3.0;
    let (lo, hi) = if (third as f64) < exact { (third, up(third)) } else { (f32::from_bits(third.to_bits() - 1), third) };
    assert_eq!(g(32), lo);
    assert_eq!(g(36), hi);
    // hi * 3 > 1 exactly; rp gives the float above or equal, rm the one below or equal.
    let p = hi as f64 * 3.0;
    assert!(g(40) as f64 >= p && (g(40) as f64 - p) < 2.4e-7);
    assert!(g(44) as f64 <= p && (p - g(44) as f64) < 2.4e-7);
    assert_eq!(g(48), hi.mul_add(3.0, -1.0));
    assert_eq!(g(52), 2f32.sqrt());
    assert!(g(56) as f64 >= 2f64.sqrt() && g(56) > 2f32.sqrt() - 1e-7);
    assert_eq!(g(60), 1.0);
    assert_eq!(g(64).to_bits(), 0);
    assert_eq!(g(68).to_bits(), 0);
    assert_eq!(g(72).to_bits(), 0x0040_0000);
    assert_eq!(g(76), 1.0);
    assert_eq!(g(80), -1.0);
    assert!((g(84) - 8.0).abs() < 1e-5);
    assert!((g(88) - 0.25).abs() < 1e-7);
    assert!((g(92) - 0.5).abs() < 1e-7);
    assert!((g(96) - 3.0).abs() < 1e-6);
    assert_eq!(g(100), 1.0);
    assert_eq!(g(104), -2.0);
    assert_eq!(r[27] as u64 | (r[28] as u64) << 32, 6f64.to_bits());
    assert_eq!(f(r[29]), 10.0);
    assert_eq!(f(r[30]), -3.0);
}

#[test]
fn conversions() {
    let r = one(
        "
        cvt.rn.bf16.f32 %h1, 0f3F808000; cvt.u32.u16 %r2, %h1; st.global.u32 [%rd1+0], %r2;
        cvt.rn.bf16.f32 %h1, 0f3F818000; cvt.u32.u16 %r2, %h1; st.global.u32 [%rd1+4], %r2;
        cvt.rz.bf16.f32 %h1, 0f3F81FFFF; cvt.u32.u16 %r2, %h1; st.global.u32 [%rd1+8], %r2;
        cvt.rn.f16.f32 %h1, 0f477FF000; cvt.u32.u16 %r2, %h1; st.global.u32 [%rd1+12], %r2;
        cvt.rn.satfinite.f16.f32 %h1, 0f47800000; cvt.u32.u16 %r2, %h1; st.global.u32 [%rd1+16], %r2;
        cvt.rn.f16.f32 %h1, 0f3DCCCCCD; cvt.f32.f16 %f1, %h1; st.global.f32 [%rd1+20], %f1;
        mov.b16 %h2, 0x3FC0; cvt.f32.bf16 %f1, %h2; st.global.f32 [%rd1+24], %f1;
        cvt.rzi.s32.f32 %r2, 0fC06CCCCD; st.global.u32 [%rd1+28], %r2;
        cvt.rni.s32.f32 %r2, 0f40200000; st.global.u32 [%rd1+32], %r2;
        cvt.rmi.s32.f32 %r2, 0fC06CCCCD; st.global.u32 [%rd1+36], %r2;
        cvt.rpi.s32.f32 %r2, 0f40600000; st.global.u32 [%rd1+40], %r2;
        cvt.rzi.s32.f32 %r2, 0f60AD78EC; st.global.u32 [%rd1+44], %r2;
        cvt.rzi.s32.f32 %r2, 0f7FC00000; st.global.u32 [%rd1+48], %r2;
        cvt.rzi.u32.f32 %r2, 0fC0A00000; st.global.u32 [%rd1+52], %r2;
        cvt.sat.u8.s32 %r2, 300; st.global.u32 [%rd1+56], %r2;
        cvt.sat.u8.s32 %r2, -5; st.global.u32 [%rd1+60], %r2;
        mov.u32 %r3, 0xFF; cvt.s32.s8 %r2, %r3; st.global.u32 [%rd1+64], %r2;
        cvt.rn.f32.s32 %f1, 16777217; st.global.f32 [%rd1+68], %f1;
        cvt.rp.f32.s32 %f1, 16777217; st.global.f32 [%rd1+72], %f1;
        cvt.rn.f32.u32 %f1, -1; st.global.f32 [%rd1+76], %f1;
        cvt.rn.bf16x2.f32 %r2, 0f3F800000, 0f40000000; st.global.u32 [%rd1+80], %r2;
        cvt.rn.f32.f64 %f1, 0d3FB999999999999A; st.global.f32 [%rd1+84], %f1;
        cvt.f64.f32 %fd1, 0f3DCCCCCD; cvt.rn.f32.f64 %f1, %fd1; st.global.f32 [%rd1+88], %f1;
        cvt.rni.f32.f32 %f1, 0f40300000; st.global.f32 [%rd1+92], %f1;
        cvt.rn.relu.bf16.f32 %h1, 0fBF800000; cvt.u32.u16 %r2, %h1; st.global.u32 [%rd1+96], %r2;
        cvt.rn.bf16.f32 %h1, 0f7FC00000; cvt.u32.u16 %r2, %h1; st.global.u32 [%rd1+100], %r2;
        cvt.u64.u32 %rd6, -1; st.global.u64 [%rd1+104], %rd6;
        cvt.s64.s32 %rd6, -1; st.global.u64 [%rd1+112], %rd6;
        cvt.rn.f16.f32 %h1, 0f33800000; cvt.u32.u16 %r2, %h1; st.global.u32 [%rd1+120], %r2;
        testp.infinite.f32 %p1, 0fFF800000; testp.notanumber.f32 %p2, 0f7FC00000; testp.subnormal.f32 %p3, 0f00000001;
        testp.finite.f32 %p4, 0f7F800000; testp.normal.f64 %p5, 0d3FF0000000000000;
        selp.u32 %r2, 1, 0, %p1; selp.u32 %r3, 2, 0, %p2; or.b32 %r2, %r2, %r3; selp.u32 %r3, 4, 0, %p3; or.b32 %r2, %r2, %r3;
        selp.u32 %r3, 8, 0, %p4; or.b32 %r2, %r2, %r3; selp.u32 %r3, 16, 0, %p5; or.b32 %r2, %r2, %r3;
        st.global.u32 [%rd1+124], %r2;
        ",
        32,
    );
    assert_eq!(r[0], 0x3f80); // tie to even (down)
    assert_eq!(r[1], 0x3f82); // tie to even (up)
    assert_eq!(r[2], 0x3f81); // truncation
    assert_eq!(r[3], 0x7c00); // 65520 rounds to inf in f16
    assert_eq!(r[4], 0x7bff); // satfinite clamps
    assert_eq!(f(r[5]), f16_f32(f16(0.1)));
    assert_eq!(f(r[6]), 1.5);
    assert_eq!(r[7] as i32, -3);
    assert_eq!(r[8] as i32, 2);
    assert_eq!(r[9] as i32, -4);
    assert_eq!(r[10] as i32, 4);
    assert_eq!(r[11] as i32, i32::MAX);
    assert_eq!(r[12], 0);
    assert_eq!(r[13], 0);
    assert_eq!(r[14], 255);
    assert_eq!(r[15], 0);
    assert_eq!(r[16] as i32, -1);
    assert_eq!(f(r[17]), 16777216.0);
    assert_eq!(f(r[18]), 16777218.0);
    assert_eq!(f(r[19]), 4294967296.0);
    assert_eq!(r[20], (0x3f80 << 16) | 0x4000); // a -> upper half
    assert_eq!(f(r[21]), 0.1f32);
    assert_eq!(f(r[22]), 0.1f32);
    assert_eq!(f(r[23]), 3.0); // rni of 2.75
    assert_eq!(r[24], 0);
    assert_eq!(r[25], 0x7fff);
    assert_eq!(r[26] as u64 | (r[27] as u64) << 32, 0xFFFF_FFFF);
    assert_eq!(r[28] as u64 | (r[29] as u64) << 32, u64::MAX);
    assert_eq!(r[30], 1); // 2^-24 is the smallest f16 subnormal
    assert_eq!(r[31], 1 | 2 | 4 | 16); // testp
}

#[test]
fn bf16_f16_rounding_sweep() {
    // Many random floats through cvt.rn.{bf16,f16}.f32 against the half crate (RNE).
    let mut rng = Rng::new(11);
    let xs: Vec<u32> = (0..512).map(|i| if i % 2 == 0 { rng.next_u32() } else { (rng.f32() * 70000.0).to_bits() }).collect();
    let out = run_snippet(
        &format!(
            "{PRE}
            ld.global.f32 %f1, [%rd5];
            cvt.rn.bf16.f32 %h1, %f1; cvt.rn.f16.f32 %h2, %f1;
            mov.b32 %r2, {{%h1, %h2}};
            st.global.u32 [%rd4], %r2; ret;"
        ),
        512,
        512,
        &xs,
    );
    for (i, &x) in xs.iter().enumerate() {
        let v = f(x);
        let (b, h) = (out[i] & 0xffff, out[i] >> 16);
        if v.is_nan() {
            assert_eq!(b, 0x7fff);
            continue;
        }
        assert_eq!(b as u16, bf16(v), "bf16 of {v:e} ({x:#x})");
        assert_eq!(h as u16, f16(v), "f16 of {v:e} ({x:#x})");
    }
}

#[test]
fn packed_half_arithmetic() {
    let a = (f16(1.5) as u32) | (f16(-2.25) as u32) << 16;
    let b = (f16(0.1) as u32) | (f16(3.0) as u32) << 16;
    let ab = (bf16(1.5) as u32) | (bf16(-2.25) as u32) << 16;
    let bb = (bf16(0.1) as u32) | (bf16(3.0) as u32) << 16;
    let r = run_snippet(
        &format!(
            "{PRE}
            ld.global.u32 %r2, [%rd2]; ld.global.u32 %r3, [%rd2+4]; ld.global.u32 %r4, [%rd2+8]; ld.global.u32 %r5, [%rd2+12];
            add.f16x2 %r6, %r2, %r3; st.global.u32 [%rd1], %r6;
            mul.rn.f16x2 %r6, %r2, %r3; st.global.u32 [%rd1+4], %r6;
            fma.rn.bf16x2 %r6, %r4, %r5, %r4; st.global.u32 [%rd1+8], %r6;
            max.f16x2 %r6, %r2, %r3; st.global.u32 [%rd1+12], %r6;
            neg.bf16x2 %r6, %r4; st.global.u32 [%rd1+16], %r6;
            max.relu.bf16x2 %r6, %r4, 0xC0000000; st.global.u32 [%rd1+24], %r6;
            min.relu.f32 %f1, 0fC0000000, 0f3F800000; st.global.f32 [%rd1+28], %f1;
            mov.b32 {{%h1, %h2}}, %r2; sub.f16 %h3, %h1, %h2; cvt.u32.u16 %r6, %h3; st.global.u32 [%rd1+20], %r6;
            ret;"
        ),
        1,
        8,
        &[a, b, ab, bb],
    );
    let h2 = |x: f64, y: f64| (half::f16::from_f64(x).to_bits() as u32) | (half::f16::from_f64(y).to_bits() as u32) << 16;
    let (a0, a1, b0, b1) = (f16_f32(f16(1.5)) as f64, f16_f32(f16(-2.25)) as f64, f16_f32(f16(0.1)) as f64, 3.0);
    assert_eq!(r[0], h2(a0 + b0, a1 + b1));
    assert_eq!(r[1], h2(a0 * b0, a1 * b1));
    let (x0, x1, y0) = (bf16_f32(bf16(1.5)) as f64, bf16_f32(bf16(-2.25)) as f64, bf16_f32(bf16(0.1)) as f64);
    let bb2 = |x: f64, y: f64| (half::bf16::from_f64(x).to_bits() as u32) | (half::bf16::from_f64(y).to_bits() as u32) << 16;
    assert_eq!(r[2], bb2(x0 * y0 + x0, x1 * 3.0 + x1));
    assert_eq!(r[3], h2(a0, 3.0));
    assert_eq!(r[4], ab ^ 0x8000_8000);
    assert_eq!(r[5], half::f16::from_f64(a0 - a1).to_bits() as u32);
    // max.relu(bf16x2 {1.5, -2.25}, {-2, 0}) = {1.5, relu(-2.0)} -> {1.5, 0}
    assert_eq!(r[6], bf16(1.5) as u32);
    assert_eq!(r[7], 0);
}

#[test]
fn predicates_branches_divergence() {
    // Thread i loops i times on odd lanes and 2i times on even lanes, with nested
    // divergence, then reconverges and stores; setp combinations and selp too.
    let r = run_snippet(
        &format!(
            "{PRE}
            mov.u32 %r2, 0; mov.u32 %r3, 0;
            and.b32 %r4, %r1, 1;
            setp.eq.u32 %p1, %r4, 0;
            @%p1 bra EVEN;
            LOOP_ODD:
              setp.ge.u32 %p2, %r3, %r1;
              @%p2 bra JOIN;
              add.u32 %r2, %r2, 3; add.u32 %r3, %r3, 1;
              bra.uni LOOP_ODD;
            EVEN:
              shl.b32 %r5, %r1, 1;
            LOOP_EVEN:
              setp.lt.u32 %p2, %r3, %r5;
              @!%p2 bra JOIN;
              add.u32 %r2, %r2, 1; add.u32 %r3, %r3, 1;
              bra LOOP_EVEN;
            JOIN:
            setp.gt.u32 %p3, %r1, 10;
            setp.lt.and.u32 %p4, %r1, 20, %p3;
            setp.eq.or.u32 %p5|%p6, %r1, 0, %p4;
            selp.u32 %r6, 1000, 0, %p5;
            selp.u32 %r7, 10000, 0, %p6;
            add.u32 %r2, %r2, %r6; add.u32 %r2, %r2, %r7;
            setp.gt.ftz.f32 %p9, 0f00000001, 0f00000000;
            @%p9 add.u32 %r2, %r2, 1000000;
            setp.nan.f32 %p7, 0f7FC00000, 0f00000000;
            setp.ltu.f32 %p8, 0f7FC00000, 0f00000000;
            and.pred %p7, %p7, %p8;
            selp.u32 %r8, 100000, 0, %p7;
            add.u32 %r2, %r2, %r8;
            st.global.u32 [%rd4], %r2;
            ret;"
        ),
        64,
        64,
        &[],
    );
    for i in 0..64u32 {
        let base = if i % 2 == 1 { 3 * i } else { 2 * i };
        let p5 = i == 0 || (i > 10 && i < 20);
        let p6 = i != 0 || (i > 10 && i < 20); // setp.eq.or's second result: !(i == 0) || p4
        let want = base + if p5 { 1000 } else { 0 } + if p6 { 10000 } else { 0 } + 100000;
        assert_eq!(r[i as usize], want, "thread {i}");
    }
}

#[test]
fn special_registers() {
    let m = snippet(&format!(
        "{PRE}
        mov.u32 %r2, %tid.y; mov.u32 %r3, %tid.z; mov.u32 %r4, %ntid.x; mov.u32 %r5, %ntid.y;
        mov.u32 %r6, %ctaid.x; mov.u32 %r7, %ctaid.y; mov.u32 %r8, %nctaid.x; mov.u32 %r9, %nctaid.y;
        mov.u32 %r10, %laneid; mov.u32 %r11, %warpid; mov.u32 %r12, %ntid.z;
        // linear thread id in block and block id in grid
        mad.lo.u32 %r13, %r3, %r5, %r2; mad.lo.u32 %r13, %r13, %r4, %r1;
        mad.lo.u32 %r14, %r7, %r8, %r6;
        mul.lo.u32 %r15, %r4, %r5; mul.lo.u32 %r15, %r15, %r12;
        mad.lo.u32 %r16, %r14, %r15, %r13;
        mul.wide.u32 %rd6, %r16, 64; add.s64 %rd7, %rd1, %rd6;
        st.global.v4.u32 [%rd7], {{%r1, %r2, %r3, %r4}};
        st.global.v4.u32 [%rd7+16], {{%r5, %r6, %r7, %r8}};
        st.global.v4.u32 [%rd7+32], {{%r9, %r10, %r11, %r12}};
        st.global.u32 [%rd7+48], %r13;
        ret;"
    ));
    let mut mem = Memory::new();
    let (bx, by, bz, gx, gy) = (5u32, 3u32, 4u32, 2u32, 3u32);
    let nthreads = (bx * by * bz * gx * gy) as usize;
    let out = mem.alloc(nthreads * 64);
    let inp = mem.alloc(4);
    let cfg = LaunchConfig { grid: (gx, gy, 1), block: (bx, by, bz), dynamic_shared_bytes: 0 };
    let st = m.launch(&mut mem, "k", cfg, &[Arg::Ptr(out), Arg::Ptr(inp)]).unwrap();
    assert_eq!(st.blocks, 6);
    let r = down_u32(&mem, out, nthreads * 16);
    for cy in 0..gy {
        for cx in 0..gx {
            for z in 0..bz {
                for y in 0..by {
                    for x in 0..bx {
                        let lin = (z * by + y) * bx + x;
                        let blk = cy * gx + cx;
                        let o = ((blk * bx * by * bz + lin) * 16) as usize;
                        assert_eq!(&r[o..o + 13], &[x, y, z, bx, by, cx, cy, gx, gy, lin % 32, lin / 32, bz, lin]);
                    }
                }
            }
        }
    }
}

#[test]
fn shared_memory_and_barrier() {
    // Two blocks each reverse their 256 elements through static shared memory, and
    // again through dynamic (extern) shared memory placed after it.
    let src = format!(
        ".version 8.4\n.target sm_80\n.address_size 64\n.extern .shared .align 16 .b8 dyn[];\n\
        .visible .entry k(.param .u64 out, .param .u64 inp)\n{{\n.shared .align 4 .b8 buf[1024];\n{PRE}
        mov.u32 %r2, %ctaid.x; mov.u32 %r3, %ntid.x; mad.lo.u32 %r4, %r2, %r3, %r1;
        mul.wide.u32 %rd6, %r4, 4; add.s64 %rd7, %rd2, %rd6; ld.global.u32 %r5, [%rd7];
        mov.u32 %r6, buf; shl.b32 %r7, %r1, 2; add.u32 %r8, %r6, %r7; st.shared.u32 [%r8], %r5;
        bar.sync 0;
        sub.u32 %r9, %r3, 1; sub.u32 %r9, %r9, %r1; shl.b32 %r9, %r9, 2; add.u32 %r10, %r6, %r9;
        ld.shared.u32 %r11, [%r10];
        mov.u64 %rd8, dyn; cvta.shared.u64 %rd8, %rd8; cvt.u64.u32 %rd9, %r7; add.s64 %rd10, %rd8, %rd9;
        st.u32 [%rd10], %r11;
        barrier.sync 0;
        cvt.u64.u32 %rd11, %r9; add.s64 %rd12, %rd8, %rd11; ld.u32 %r12, [%rd12];
        add.s64 %rd13, %rd1, %rd6; st.global.v2.u32 [%rd13], {{%r11, %r12}};
        ret;\n}}\n"
    );
    let src = src.replace("st.global.v2.u32 [%rd13], {%r11, %r12}", "st.global.u32 [%rd13], %r11; add.s64 %rd14, %rd13, 2048; st.global.u32 [%rd14], %r12");
    let m = ptx_sim::Module::parse(&src).unwrap();
    let mut mem = Memory::new();
    let input: Vec<u32> = (0..512).map(|i| i * 7 + 1).collect();
    let inp = up_u32(&mut mem, &input);
    let out = mem.alloc(4096);
    let cfg = LaunchConfig { grid: (2, 1, 1), block: (256, 1, 1), dynamic_shared_bytes: 1024 };
    m.launch(&mut mem, "k", cfg, &[Arg::Ptr(out), Arg::Ptr(inp)]).unwrap();
    let r = down_u32(&mem, out, 1024);
    for b in 0..2 {
        for i in 0..256 {
            assert_eq!(r[b * 256 + i], input[b * 256 + 255 - i], "reversed b={b} i={i}");
            assert_eq!(r[512 + b * 256 + i], input[b * 256 + i], "twice reversed b={b} i={i}");
        }
    }
    // Without enough dynamic shared memory the same kernel fails out of bounds.
    let cfg = LaunchConfig { dynamic_shared_bytes: 512, ..cfg };
    let e = m.launch(&mut mem, "k", cfg, &[Arg::Ptr(out), Arg::Ptr(inp)]).unwrap_err();
    assert!(matches!(e, ptx_sim::SimError::OutOfBounds { space: "shared", .. }), "{e}");
}

#[test]
fn shfl_all_modes() {
    let r = run_snippet(
        &format!(
            "{PRE}
            mad.lo.u32 %r2, %r1, 10, 5;
            shfl.sync.up.b32 %r3|%p1, %r2, 3, 0, -1;
            shfl.sync.down.b32 %r4|%p2, %r2, 5, 31, -1;
            shfl.sync.bfly.b32 %r5, %r2, 7, 31, -1;
            sub.u32 %r9, 31, %r1;
            shfl.sync.idx.b32 %r6, %r2, %r9, 31, -1;
            shfl.sync.idx.b32 %r7, %r2, 2, 0x181f, -1;
            shfl.sync.down.b32 %r8|%p3, %r2, 3, 0x181f, -1;
            selp.u32 %r10, 1, 0, %p1; selp.u32 %r11, 2, 0, %p2; selp.u32 %r12, 4, 0, %p3;
            or.b32 %r10, %r10, %r11; or.b32 %r10, %r10, %r12;
            mul.wide.u32 %rd6, %r1, 28; add.s64 %rd7, %rd1, %rd6;
            st.global.u32 [%rd7], %r3; st.global.u32 [%rd7+4], %r4; st.global.u32 [%rd7+8], %r5;
            st.global.u32 [%rd7+12], %r6; st.global.u32 [%rd7+16], %r7; st.global.u32 [%rd7+20], %r8;
            st.global.u32 [%rd7+24], %r10;
            ret;"
        ),
        32,
        32 * 7,
        &[],
    );
    let v = |l: u32| l * 10 + 5;
    for l in 0..32u32 {
        let o = &r[l as usize * 7..l as usize * 7 + 7];
        let up_ok = l >= 3;
        let down_ok = l + 5 <= 31;
        let seg_ok = (l & 7) + 3 <= 7;
        assert_eq!(o[0], if up_ok { v(l - 3) } else { v(l) }, "up lane {l}");
        assert_eq!(o[1], if down_ok { v(l + 5) } else { v(l) }, "down lane {l}");
        assert_eq!(o[2], v(l ^ 7), "bfly lane {l}");
        assert_eq!(o[3], v(31 - l), "idx lane {l}");
        assert_eq!(o[4], v((l & !7) + 2), "idx width 8 lane {l}");
        assert_eq!(o[5], if seg_ok { v(l + 3) } else { v(l) }, "down width 8 lane {l}");
        assert_eq!(o[6], up_ok as u32 | (down_ok as u32) << 1 | (seg_ok as u32) << 2, "preds lane {l}");
    }
}

#[test]
fn vote_activemask_and_redux() {
    let r = run_snippet(
        &format!(
            "{PRE}
            rem.u32 %r2, %r1, 3; setp.eq.u32 %p1, %r2, 0;
            vote.sync.ballot.b32 %r3, %p1, -1;
            vote.sync.any.pred %p2, %p1, -1; vote.sync.all.pred %p3, %p1, -1; vote.sync.all.pred %p4, !%p1, 0x0000FFFF;
            setp.lt.u32 %p5, %r1, 100; vote.sync.uni.pred %p6, %p5, -1;
            selp.u32 %r4, 1, 0, %p2; selp.u32 %r5, 2, 0, %p3; selp.u32 %r6, 4, 0, %p6;
            or.b32 %r4, %r4, %r5; or.b32 %r4, %r4, %r6;
            redux.sync.add.u32 %r8, %r1, -1; redux.sync.max.s32 %r9, %r2, -1; redux.sync.xor.b32 %r10, %r1, -1;
            add.u32 %r8, %r8, %r9; add.u32 %r8, %r8, %r10; st.global.u32 [%rd4+384], %r8;
            @%p1 bra SKIP;
            activemask.b32 %r7;
            st.global.u32 [%rd4+128], %r7;
            SKIP:
            st.global.u32 [%rd4], %r3; st.global.u32 [%rd4+256], %r4;
            ret;"
        ),
        32,
        128,
        &[],
    );
    // redux: sum of lanes (496) + max of lane % 3 (2) + xor of 0..31 (0).
    assert!(r[96..128].iter().all(|&v| v == 496 + 2));
    let ballot: u32 = (0..32).filter(|l| l % 3 == 0).map(|l| 1u32 << l).sum();
    for l in 0..32 {
        assert_eq!(r[l], ballot);
        assert_eq!(r[64 + l], 1 | 4);
        if l % 3 != 0 {
            assert_eq!(r[32 + l], !ballot);
        }
    }
}

#[test]
fn atomics_and_reductions() {
    let body = format!(
        "{PRE}
        .shared .align 4 .b32 cnt;
        mov.u32 %r2, %ctaid.x; mov.u32 %r3, %ntid.x; mad.lo.u32 %r4, %r2, %r3, %r1;
        atom.global.add.u32 %r5, [%rd1], 1;
        mul.wide.u32 %rd6, %r5, 4; add.s64 %rd7, %rd1, 64; add.s64 %rd7, %rd7, %rd6; st.global.u32 [%rd7], %r4;
        atom.global.add.f32 %f1, [%rd1+4], 0f3F800000;
        red.global.add.u32 [%rd1+8], 2;
        atom.global.max.s32 %r6, [%rd1+12], %r4;
        sub.u32 %r7, 0, %r4; atom.global.min.s32 %r6, [%rd1+16], %r7;
        atom.global.or.b32 %r6, [%rd1+20], 0x10;
        atom.global.exch.b32 %r6, [%rd1+24], 77;
        atom.global.cas.b32 %r6, [%rd1+28], 0, 5;
        atom.global.add.u64 %rd8, [%rd1+32], 3;
        atom.shared.add.u32 %r8, [cnt], 1;
        bar.sync 0;
        ld.shared.u32 %r9, [cnt];
        setp.eq.u32 %p1, %r1, 0;
        @%p1 red.global.add.u32 [%rd1+40], %r9;
        atom.global.inc.u32 %r6, [%rd1+44], 9;
        ret;"
    );
    let m = snippet(&body);
    let mut mem = Memory::new();
    let (blocks, threads) = (4u32, 256u32);
    let n = (blocks * threads) as usize;
    let out = mem.alloc(64 + 4 * n);
    let inp = mem.alloc(4);
    m.launch(&mut mem, "k", cfg(blocks, threads), &[Arg::Ptr(out), Arg::Ptr(inp)]).unwrap();
    let r = down_u32(&mem, out, 16 + n);
    assert_eq!(r[0], n as u32);
    assert_eq!(f(r[1]), n as f32);
    assert_eq!(r[2], 2 * n as u32);
    assert_eq!(r[3], n as u32 - 1);
    assert_eq!(r[4] as i32, -(n as i32 - 1));
    assert_eq!(r[5], 0x10);
    assert_eq!(r[6], 77);
    assert_eq!(r[7], 5);
    assert_eq!(r[8] as u64 | (r[9] as u64) << 32, 3 * n as u64);
    assert_eq!(r[10], n as u32); // each block's shared counter reached 256
    assert_eq!(r[11], (n as u32) % 10);
    // atom returned every old value exactly once.
    let mut ids: Vec<u32> = r[16..].to_vec();
    ids.sort();
    assert_eq!(ids, (0..n as u32).collect::<Vec<_>>());
}

#[test]
fn local_memory() {
    let src = format!(
        ".version 8.4\n.target sm_80\n.address_size 64\n.visible .entry k(.param .u64 out, .param .u64 inp)\n{{\n\
        .local .align 8 .b8 __local_depot0[64]; .reg .b64 %SP; .reg .b64 %SPL;\n{PRE}
        mov.u64 %SPL, __local_depot0; cvta.local.u64 %SP, %SPL;
        mov.u32 %r2, 0;
        L1: setp.lt.u32 %p1, %r2, 16; @!%p1 bra L2;
          mad.lo.u32 %r3, %r2, %r1, 1; mul.wide.u32 %rd6, %r2, 4; add.s64 %rd7, %SPL, %rd6; st.local.u32 [%rd7], %r3;
          add.u32 %r2, %r2, 1; bra L1;
        L2:
        rem.u32 %r4, %r1, 16; mul.wide.u32 %rd8, %r4, 4; add.s64 %rd9, %SP, %rd8; ld.u32 %r5, [%rd9];
        ld.local.u32 %r6, [%SPL+60];
        add.u32 %r5, %r5, %r6;
        st.global.u32 [%rd4], %r5;
        ret;\n}}\n"
    );
    let m = ptx_sim::Module::parse(&src).unwrap();
    let mut mem = Memory::new();
    let out = mem.alloc(4 * 64);
    let inp = mem.alloc(4);
    m.launch(&mut mem, "k", cfg(1, 64), &[Arg::Ptr(out), Arg::Ptr(inp)]).unwrap();
    let r = down_u32(&mem, out, 64);
    for t in 0..64u32 {
        assert_eq!(r[t as usize], ((t % 16) * t + 1) + (15 * t + 1), "thread {t}");
    }
}

/// Fragment positions per the PTX ISA for mma.m16n8k16 (.f16/.bf16 A/B, f32 C/D).
fn a_pos(lane: usize, i: usize, half: usize) -> (usize, usize) {
    let (g, t) = (lane / 4, lane % 4);
    let row = if i % 2 == 0 { g } else { g + 8 };
    let col = t * 2 + half + if i >= 2 { 8 } else { 0 };
    (row, col)
}
fn b_pos(lane: usize, i: usize, half: usize) -> (usize, usize) {
    let (g, t) = (lane / 4, lane % 4);
    (t * 2 + half + if i >= 1 { 8 } else { 0 }, g)
}
fn c_pos(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane / 4, lane % 4);
    (if i < 2 { g } else { g + 8 }, t * 2 + (i & 1))
}

fn mma_case(ty: &str) {
    let mut rng = Rng::new(99);
    let enc = |x: f32| if ty == "bf16" { bf16(x) } else { f16(x) };
    let dec = |b: u16| if ty == "bf16" { bf16_f32(b) } else { f16_f32(b) };
    let a: Vec<Vec<u16>> = (0..16).map(|_| (0..16).map(|_| enc(rng.f32() * 4.0)).collect()).collect();
    let b: Vec<Vec<u16>> = (0..16).map(|_| (0..8).map(|_| enc(rng.f32() * 4.0)).collect()).collect();
    let c: Vec<Vec<f32>> = (0..16).map(|_| (0..8).map(|_| rng.f32()).collect()).collect();
    let mut inp = vec![0u32; 32 * 10];
    for lane in 0..32 {
        for i in 0..4 {
            let (r0, c0) = a_pos(lane, i, 0);
            let (r1, c1) = a_pos(lane, i, 1);
            inp[lane * 10 + i] = a[r0][c0] as u32 | (a[r1][c1] as u32) << 16;
        }
        for i in 0..2 {
            let (r0, c0) = b_pos(lane, i, 0);
            let (r1, c1) = b_pos(lane, i, 1);
            inp[lane * 10 + 4 + i] = b[r0][c0] as u32 | (b[r1][c1] as u32) << 16;
        }
        for i in 0..4 {
            let (r, cc) = c_pos(lane, i);
            inp[lane * 10 + 6 + i] = c[r][cc].to_bits();
        }
    }
    let out = run_snippet(
        &format!(
            "{PRE}
            mul.wide.u32 %rd6, %r1, 40; add.s64 %rd7, %rd2, %rd6;
            ld.global.v4.u32 {{%r2, %r3, %r4, %r5}}, [%rd7];
            ld.global.v2.u32 {{%r6, %r7}}, [%rd7+16];
            ld.global.v4.f32 {{%f1, %f2, %f3, %f4}}, [%rd7+24];
            mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32 {{%f5, %f6, %f7, %f8}}, {{%r2, %r3, %r4, %r5}}, {{%r6, %r7}}, {{%f1, %f2, %f3, %f4}};
            mul.wide.u32 %rd8, %r1, 16; add.s64 %rd9, %rd1, %rd8;
            st.global.v4.f32 [%rd9], {{%f5, %f6, %f7, %f8}};
            ret;"
        ),
        32,
        128,
        &inp,
    );
    for lane in 0..32 {
        for i in 0..4 {
            let (r, cc) = c_pos(lane, i);
            let want: f64 = c[r][cc] as f64 + (0..16).map(|k| dec(a[r][k]) as f64 * dec(b[k][cc]) as f64).sum::<f64>();
            let got = f(out[lane * 4 + i]) as f64;
            assert!((got - want).abs() < 1e-5 * (1.0 + want.abs()), "{ty} D[{r}][{cc}] = {got}, want {want}");
        }
    }
}

/// m16n8k8 (bf16): A is 2 registers (rows g / g+8, cols 2t..2t+1), B one register.
#[test]
fn mma_m16n8k8_bf16() {
    let mut rng = Rng::new(5);
    let a: Vec<Vec<u16>> = (0..16).map(|_| (0..8).map(|_| bf16(rng.f32())).collect()).collect();
    let b: Vec<Vec<u16>> = (0..8).map(|_| (0..8).map(|_| bf16(rng.f32())).collect()).collect();
    let mut inp = vec![0u32; 32 * 3];
    for lane in 0..32 {
        let (g, t) = (lane / 4, lane % 4);
        inp[lane * 3] = a[g][2 * t] as u32 | (a[g][2 * t + 1] as u32) << 16;
        inp[lane * 3 + 1] = a[g + 8][2 * t] as u32 | (a[g + 8][2 * t + 1] as u32) << 16;
        inp[lane * 3 + 2] = b[2 * t][g] as u32 | (b[2 * t + 1][g] as u32) << 16;
    }
    let out = run_snippet(
        &format!(
            "{PRE}
            mul.wide.u32 %rd6, %r1, 12; add.s64 %rd7, %rd2, %rd6;
            ld.global.u32 %r2, [%rd7]; ld.global.u32 %r3, [%rd7+4]; ld.global.u32 %r4, [%rd7+8];
            mov.f32 %f1, 0f00000000;
            mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {{%f5, %f6, %f7, %f8}}, {{%r2, %r3}}, {{%r4}}, {{%f1, %f1, %f1, %f1}};
            mul.wide.u32 %rd8, %r1, 16; add.s64 %rd9, %rd1, %rd8;
            st.global.v4.f32 [%rd9], {{%f5, %f6, %f7, %f8}};
            ret;"
        ),
        32,
        128,
        &inp,
    );
    for lane in 0..32 {
        for i in 0..4 {
            let (r, cc) = c_pos(lane, i);
            let want: f64 = (0..8).map(|k| bf16_f32(a[r][k]) as f64 * bf16_f32(b[k][cc]) as f64).sum();
            let got = f(out[lane * 4 + i]) as f64;
            assert!((got - want).abs() < 1e-5 * (1.0 + want.abs()), "k8 D[{r}][{cc}] = {got}, want {want}");
        }
    }
}

#[test]
fn mma_m16n8k16_bf16() {
    mma_case("bf16");
}

#[test]
fn mma_m16n8k16_f16() {
    mma_case("f16");
}

fn ldmatrix_case(num: usize, trans: bool) {
    // Shared holds 4 matrices of 8x8 u16, value j*64 + r*8 + c; row stride 16 bytes.
    let regs: Vec<String> = (0..num).map(|j| format!("%r{}", 10 + j)).collect();
    let stores: String = (0..num).map(|j| format!("st.global.u32 [%rd7+{}], %r{};", 4 * j, 10 + j)).collect();
    let out = run_snippet(
        &format!(
            "{PRE}
            .shared .align 16 .b8 tile[512];
            mov.u32 %r2, tile;
            // every thread fills 8 bytes: 4 u16 values
            mul.lo.u32 %r3, %r1, 8;
            shl.b32 %r4, %r1, 2;
            add.u32 %r5, %r2, %r3;
            add.u32 %r6, %r4, 1; add.u32 %r7, %r4, 2; add.u32 %r8, %r4, 3;
            cvt.u16.u32 %h1, %r4; cvt.u16.u32 %h2, %r6; cvt.u16.u32 %h3, %r7; cvt.u16.u32 %h4, %r8;
            st.shared.v4.u16 [%r5], {{%h1, %h2, %h3, %h4}};
            add.u32 %r5, %r5, 256;
            add.u32 %r4, %r4, 128; add.u32 %r6, %r6, 128; add.u32 %r7, %r7, 128; add.u32 %r8, %r8, 128;
            cvt.u16.u32 %h1, %r4; cvt.u16.u32 %h2, %r6; cvt.u16.u32 %h3, %r7; cvt.u16.u32 %h4, %r8;
            st.shared.v4.u16 [%r5], {{%h1, %h2, %h3, %h4}};
            bar.sync 0;
            shl.b32 %r9, %r1, 4; add.u32 %r9, %r2, %r9;
            ldmatrix.sync.aligned.m8n8.x{num}{}.shared.b16 {{{}}}, [%r9];
            mul.wide.u32 %rd6, %r1, 16; add.s64 %rd7, %rd1, %rd6;
            {stores}
            ret;",
            if trans { ".trans" } else { "" },
            regs.join(", ")
        ),
        32,
        128,
        &[],
    );
    for lane in 0..32 {
        for j in 0..num {
            let (r, c) = (lane / 4, 2 * (lane % 4));
            let val = |r: usize, c: usize| (j * 64 + r * 8 + c) as u32;
            let want = if trans { val(c, r) | val(c + 1, r) << 16 } else { val(r, c) | val(r, c + 1) << 16 };
            assert_eq!(out[lane * 4 + j], want, "x{num} trans={trans} lane {lane} matrix {j}");
        }
    }
}

#[test]
fn ldmatrix_all_forms() {
    for num in [1, 2, 4] {
        ldmatrix_case(num, false);
        ldmatrix_case(num, true);
    }
}

#[test]
fn cp_async_copy_and_zero_fill() {
    let input: Vec<u32> = (0..8).map(|i| 0x1111_1111 * (i + 1)).collect();
    let out = run_snippet(
        &format!(
            "{PRE}
            .shared .align 16 .b8 s[64];
            mov.u32 %r2, s;
            st.shared.v4.u32 [%r2+16], {{-1, -1, -1, -1}};
            cp.async.ca.shared.global [%r2], [%rd2], 16;
            cp.async.cg.shared.global [%r2+16], [%rd2+16], 16, 8;
            cp.async.commit_group;
            cp.async.wait_group 0;
            cp.async.wait_all;
            ld.shared.v4.u32 {{%r3, %r4, %r5, %r6}}, [%r2];
            ld.shared.v4.u32 {{%r7, %r8, %r9, %r10}}, [%r2+16];
            st.global.v4.u32 [%rd1], {{%r3, %r4, %r5, %r6}};
            st.global.v4.u32 [%rd1+16], {{%r7, %r8, %r9, %r10}};
            ret;"
        ),
        1,
        8,
        &input,
    );
    assert_eq!(&out[..6], &input[..6]);
    assert_eq!(&out[6..], &[0, 0]);
}

#[test]
fn module_constants_and_globals() {
    let src = format!(
        ".version 8.4\n.target sm_80\n.address_size 64\n\
         .const .align 4 .b8 table[16] = {{1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 255, 255, 255, 255}};\n\
         .global .align 4 .f32 scale = 0f40000000;\n\
         .global .align 8 .u64 zeroed;\n\
         .visible .entry k(.param .u64 out, .param .u64 inp)\n{{\n{PRE}
         shl.b32 %r2, %r1, 2; mov.u64 %rd6, table; cvt.u64.u32 %rd7, %r2; add.s64 %rd8, %rd6, %rd7;
         ld.const.u32 %r3, [%rd8];
         mov.u64 %rd9, scale; cvta.global.u64 %rd9, %rd9; ld.f32 %f1, [%rd9];
         cvt.rn.f32.s32 %f2, %r3; mul.f32 %f2, %f2, %f1;
         ld.global.u64 %rd10, [zeroed]; cvt.u32.u64 %r4, %rd10; cvt.rn.f32.u32 %f3, %r4; add.f32 %f2, %f2, %f3;
         mov.u64 %rd11, table; cvta.const.u64 %rd11, %rd11; ld.u32 %r5, [%rd11+4]; cvt.rn.f32.u32 %f4, %r5; add.f32 %f2, %f2, %f4;
         st.global.f32 [%rd4], %f2;
         ret;\n}}\n"
    );
    let m = ptx_sim::Module::parse(&src).unwrap();
    let mut mem = Memory::new();
    let out = mem.alloc(16);
    m.launch(&mut mem, "k", cfg(1, 4), &[Arg::Ptr(out), Arg::Ptr(out)]).unwrap();
    let r: Vec<f32> = down_u32(&mem, out, 4).into_iter().map(f).collect();
    assert_eq!(r, vec![4.0, 6.0, 8.0, 0.0]);
}
