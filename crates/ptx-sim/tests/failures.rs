//! Failure behaviour: what the interpreter cannot or must not run fails loudly with
//! an error that names the instruction, line, kernel and address, never a hang or
//! a silent wrong answer.

mod common;
use common::*;
use ptx_sim::{Arg, LaunchConfig, Memory, Module, SimError};

const PRE: &str = "
    .reg .b32 %r<10>; .reg .b64 %rd<10>; .reg .pred %p<4>;
    ld.param.u64 %rd1, [out]; mov.u32 %r1, %tid.x;
";

fn launch(body: &str, threads: u32) -> Result<(), SimError> {
    let m = snippet(&format!("{PRE}\n{body}"));
    let mut mem = Memory::new();
    let out = mem.alloc(64);
    let inp = mem.alloc(4);
    m.launch(&mut mem, "k", cfg(1, threads), &[Arg::Ptr(out), Arg::Ptr(inp)]).map(|_| ())
}

#[test]
fn unsupported_instruction_is_named() {
    let e = launch("mov.u32 %r2, 1;\nsad.u32 %r3, %r1, %r2, %r2;\nret;", 32).unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, SimError::Unsupported { .. }), "{s}");
    assert!(s.contains("sad.u32 %r3, %r1, %r2, %r2"), "{s}");
    assert!(s.contains("line 14"), "{s}");
    // An unknown modifier on a known opcode is unsupported too, not ignored.
    let e = launch("add.cc.u32 %r3, %r1, %r1;\nret;", 1).unwrap_err();
    assert!(e.to_string().contains("add.cc.u32"), "{e}");
    // A call to a device function.
    let e = launch("call.uni foo, (%r1);\nret;", 1).unwrap_err();
    assert!(e.to_string().contains("call.uni"), "{e}");
    // A named barrier over part of the block.
    let e = launch("bar.sync 1, 32;\nret;", 64).unwrap_err();
    assert!(e.to_string().contains("thread count (32)"), "{e}");
    launch("bar.sync 0, 64;\nret;", 64).unwrap();
    // Not executed (guarded off by a branch): no error.
    launch("bra.uni L;\nsad.u32 %r3, %r1, %r1, %r1;\nL: ret;", 1).unwrap();
}

#[test]
fn out_of_bounds_global_access() {
    let e = launch("ld.global.u32 %r2, [%rd1+64];\nret;", 1).unwrap_err();
    match &e {
        SimError::OutOfBounds { kernel, instruction, space, addr, size, .. } => {
            assert_eq!(kernel, "k");
            assert!(instruction.contains("ld.global.u32"));
            assert_eq!(*space, "global");
            assert_eq!(*size, 4);
            assert_eq!(addr % 256, 64);
        }
        _ => panic!("{e}"),
    }
    assert!(e.to_string().contains("0x"), "{e}");
    // Just below the allocation, and a null pointer.
    assert!(matches!(launch("st.global.u8 [%rd1+-1], %r1;\nret;", 1), Err(SimError::OutOfBounds { .. })));
    assert!(matches!(launch("mov.u64 %rd2, 0;\nld.u32 %r2, [%rd2];\nret;", 1), Err(SimError::OutOfBounds { .. })));
    // Straddling the end.
    assert!(matches!(launch("ld.global.u64 %rd2, [%rd1+60];\nret;", 1), Err(SimError::OutOfBounds { .. })));
}

#[test]
fn early_exit_before_a_barrier_is_legal() {
    // CUDA: __syncthreads waits for all non-exited threads, so threads that return
    // early do not hold the barrier up.
    let m = snippet(&format!(
        "{PRE}\n.shared .align 4 .b8 s[256];\nsetp.ge.u32 %p1, %r1, 48;\n@%p1 ret;\n\
         mov.u32 %r2, s; shl.b32 %r3, %r1, 2; add.u32 %r4, %r2, %r3; st.shared.u32 [%r4], %r1;\n\
         bar.sync 0;\nsub.u32 %r5, 47, %r1; shl.b32 %r5, %r5, 2; add.u32 %r5, %r2, %r5; ld.shared.u32 %r6, [%r5];\n\
         cvta.to.global.u64 %rd1, %rd1; mul.wide.u32 %rd2, %r1, 4; add.s64 %rd3, %rd1, %rd2; st.global.u32 [%rd3], %r6;\nret;"
    ));
    let mut mem = Memory::new();
    let out = mem.alloc(64 * 4);
    m.launch(&mut mem, "k", cfg(1, 64), &[Arg::Ptr(out), Arg::Ptr(out)]).unwrap();
    let r = down_u32(&mem, out, 48);
    assert_eq!(r, (0..48).rev().collect::<Vec<u32>>());
}

#[test]
fn barrier_deadlock_is_reported() {
    // Threads of one block wait at two different barriers: never released.
    let e = launch("setp.ge.u32 %p1, %r1, 40;\n@%p1 bra B;\nbar.sync 0;\nret;\nB: bar.sync 0;\nret;", 64).unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, SimError::Deadlock { .. }), "{s}");
    assert!(s.contains("different barriers") && s.contains("40 at `bar.sync 0` (line 15)") && s.contains("24 at `bar.sync 0` (line 17)"), "{s}");
    // Warp 0 waits at the barrier; warp 1 spins on a flag warp 0 sets after it.
    let m = snippet(&format!(
        "{PRE}\n.shared .align 4 .b8 flag[4];\nsetp.ge.u32 %p1, %r1, 32;\n@%p1 bra SPIN;\nbar.sync 0;\n\
         mov.u32 %r2, 1; st.shared.u32 [flag], %r2;\nret;\n\
         SPIN: ld.volatile.shared.u32 %r3, [flag];\nsetp.eq.u32 %p2, %r3, 0;\n@%p2 bra SPIN;\nbar.sync 0;\nret;"
    ))
    .with_instruction_limit(1_000_000);
    let mut mem = Memory::new();
    let out = mem.alloc(4);
    let e = m.launch(&mut mem, "k", cfg(1, 64), &[Arg::Ptr(out), Arg::Ptr(out)]).unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, SimError::Deadlock { .. }), "{s}");
    assert!(s.contains("32 thread(s) wait at `bar.sync 0`") && s.contains("warp 1 never reaches it"), "{s}");
}

#[test]
fn divergent_collective_is_reported() {
    // Half the warp skips the shfl that names the whole warp.
    let e = launch("setp.ge.u32 %p1, %r1, 16;\n@%p1 bra L;\nshfl.sync.bfly.b32 %r2, %r1, 1, 31, -1;\nL: ret;", 32).unwrap_err();
    assert!(e.to_string().contains("member mask"), "{e}");
    // Exited lanes are skipped by vote (legal), but a shfl may not read one.
    let m = snippet(&format!(
        "{PRE}\nsetp.ge.u32 %p1, %r1, 20;\n@%p1 ret;\nvote.sync.ballot.b32 %r2, %p1, -1;\nsetp.lt.u32 %p2, %r1, 5;\n\
         vote.sync.ballot.b32 %r3, %p2, -1;\ncvta.to.global.u64 %rd1, %rd1;\nst.global.u32 [%rd1], %r3;\nret;"
    ));
    let mut mem = Memory::new();
    let out = mem.alloc(4);
    m.launch(&mut mem, "k", cfg(1, 32), &[Arg::Ptr(out), Arg::Ptr(out)]).unwrap();
    assert_eq!(down_u32(&mem, out, 1)[0], 0x1f);
    let e = launch("setp.ge.u32 %p1, %r1, 20;\n@%p1 ret;\nshfl.sync.bfly.b32 %r2, %r1, 16, 31, -1;\nret;", 32).unwrap_err();
    assert!(e.to_string().contains("not active"), "{e}");
}

#[test]
fn bad_launches() {
    let m = snippet(&format!("{PRE}\nret;"));
    let mut mem = Memory::new();
    let e = m.launch(&mut mem, "nope", cfg(1, 1), &[]).unwrap_err();
    assert!(matches!(e, SimError::BadLaunch { .. }), "{e}");
    let e = m.launch(&mut mem, "k", cfg(1, 1), &[Arg::U64(0)]).unwrap_err();
    assert!(e.to_string().contains("1 arguments given"), "{e}");
    let e = m.launch(&mut mem, "k", cfg(1, 1), &[Arg::U32(0), Arg::U64(0)]).unwrap_err();
    assert!(e.to_string().contains("4 bytes"), "{e}");
    for c in [
        LaunchConfig { grid: (1, 1, 1), block: (2048, 1, 1), dynamic_shared_bytes: 0 },
        LaunchConfig { grid: (1, 70000, 1), block: (32, 1, 1), dynamic_shared_bytes: 0 },
        LaunchConfig { grid: (1, 1, 1), block: (1, 1, 128), dynamic_shared_bytes: 0 },
        LaunchConfig { grid: (1, 1, 1), block: (32, 1, 1), dynamic_shared_bytes: 300 * 1024 },
    ] {
        let e = m.launch(&mut mem, "k", c, &[Arg::Ptr(0), Arg::Ptr(0)]).unwrap_err();
        assert!(matches!(e, SimError::BadLaunch { .. }), "{c:?}: {e}");
    }
}

#[test]
fn parse_errors_name_the_line() {
    let e = Module::parse(".version 8.4\n.target sm_80\n.visible .entry k()\n{\n  .reg .b32 %r<2>;\n  mov.u32 %r1, #;\n}\n").err().unwrap();
    assert!(matches!(e, SimError::Parse { line: 6, .. }), "{e}");
    let e = Module::parse(".version 8.4\n.visible .entry k()\n{\n  mov.u32 %nope, 1;\n}\n");
    // An undeclared register name cannot be resolved: the instruction is unsupported.
    let m = e.unwrap();
    let mut mem = Memory::new();
    let err = m.launch(&mut mem, "k", cfg(1, 1), &[]).unwrap_err();
    assert!(err.to_string().contains("%nope"), "{err}");
}

#[test]
fn memory_api_errors() {
    let mut mem = Memory::new();
    let p = mem.alloc(100);
    assert_eq!(p % 256, 0);
    assert_ne!(p, 0);
    let q = mem.alloc(1);
    assert!(q > p + 100);
    mem.write(p + 96, &[1, 2, 3, 4]).unwrap();
    assert!(mem.write(p + 97, &[1, 2, 3, 4]).is_err());
    let mut b = [0u8; 4];
    mem.read(p + 96, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 4]);
    assert!(mem.free(p + 1).is_err());
    mem.free(p).unwrap();
    assert!(mem.read(p, &mut b).is_err());
    mem.read(q, &mut b[..1]).unwrap();
}

#[test]
fn runaway_loop_hits_the_instruction_limit() {
    let m = snippet(&format!("{PRE}\nL: add.u32 %r2, %r2, 1;\nbra.uni L;\nret;")).with_instruction_limit(100_000);
    let mut mem = Memory::new();
    let out = mem.alloc(4);
    let e = m.launch(&mut mem, "k", cfg(1, 32), &[Arg::Ptr(out), Arg::Ptr(out)]).unwrap_err();
    assert!(e.to_string().contains("infinite loop"), "{e}");
}

#[test]
fn guarded_instruction_text_names_the_predicate() {
    let e = launch("setp.eq.u32 %p2, %r1, 0;\n@!%p2 sad.u32 %r3, %r1, %r1, %r1;\nret;", 2).unwrap_err();
    assert!(e.to_string().contains("@!%p2 sad.u32"), "{e}");
}

#[test]
fn api_types_cross_threads() {
    // Simulated devices run on their own OS threads: modules are shared, memories
    // move, errors cross thread boundaries (anyhow needs Send + Sync + 'static).
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Module>();
    send::<Memory>();
    send_sync::<SimError>();
    send_sync::<ptx_sim::LaunchStats>();
}

#[test]
fn assert_printf_and_trap_in_nvrtc_kernels() {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kernels/assert_printf.ptx")).unwrap();
    let m = Module::parse(&src).unwrap();
    assert!(m.unsupported().is_empty(), "{:?}", m.unsupported());
    let mut mem = Memory::new();
    let x = up_f32(&mut mem, &[1.0, 2.0, 3.0, -4.0, 5.0]);
    let y = mem.alloc(20);
    // printf is accepted; within the checked range the kernel runs.
    m.launch(&mut mem, "checked_scale", cfg(1, 32), &[Arg::Ptr(x), Arg::Ptr(y), Arg::I32(3)]).unwrap();
    assert_eq!(down_f32(&mem, y, 3), vec![2.0, 4.0, 6.0]);
    // The assert fails for x[3] < 0.
    let e = m.launch(&mut mem, "checked_scale", cfg(1, 32), &[Arg::Ptr(x), Arg::Ptr(y), Arg::I32(5)]).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("device-side assert failed: `x[i] >= 0.f` at assert_printf.cu:9"), "{s}");
    let e = m.launch(&mut mem, "checked_scale", cfg(1, 32), &[Arg::Ptr(x), Arg::Ptr(y), Arg::I32(-1)]).unwrap_err();
    assert!(e.to_string().contains("trap"), "{e}");
}

#[test]
fn lineinfo_names_the_cuda_source_line() {
    // With -lineinfo NVRTC adds .loc lines, a trailing .file table and debug
    // sections; errors then name the .cu line too.
    let src = ".version 8.4\n.target sm_80\n.address_size 64\n\
        .visible .entry k(.param .u64 out)\n{\n.reg .b32 %r<3>; .reg .b64 %rd<3>;\n\
        .loc 1 5 3\nld.param.u64 %rd1, [out];\n\
        .loc 1 7 9, function_name $L__info_string0, inlined_at 1 30 9\nld.global.u32 %r1, [%rd1+4096];\nret;\n}\n\
        .file 1 \"/src/cuda/kernel.cu\"\n.section .debug_str\n{\n$L__info_string0:\n.b8 95,90,0\n}\n";
    let m = Module::parse(src).unwrap();
    let mut mem = Memory::new();
    let out = mem.alloc(16);
    let e = m.launch(&mut mem, "k", cfg(1, 1), &[Arg::Ptr(out)]).unwrap_err();
    assert!(e.to_string().contains("ld.global.u32 %r1, [%rd1+4096]  // kernel.cu:7"), "{e}");
}

#[test]
fn predicated_and_recursive_calls() {
    // twice(x) = 2x through a .func; `@p call` only for odd threads.
    let src = ".version 8.4\n.target sm_80\n.address_size 64\n\
        .func (.param .b32 r) twice(.param .b32 x)\n{\n.reg .b32 %r<3>;\nld.param.b32 %r1, [x];\nadd.s32 %r2, %r1, %r1;\nst.param.b32 [r], %r2;\nret;\n}\n\
        .func (.param .b32 r) forever(.param .b32 x)\n{\n.reg .b32 %r<3>;\nld.param.b32 %r1, [x];\n\
        { .param .b32 p0; st.param.b32 [p0], %r1; .param .b32 q0; call.uni (q0), forever, (p0); ld.param.b32 %r2, [q0]; }\n\
        st.param.b32 [r], %r2;\nret;\n}\n\
        .visible .entry k(.param .u64 out, .param .u32 rec)\n{\n.reg .b32 %r<6>; .reg .b64 %rd<4>; .reg .pred %p<3>;\n\
        ld.param.u64 %rd1, [out]; ld.param.u32 %r5, [rec]; mov.u32 %r1, %tid.x; mov.u32 %r3, 100;\n\
        and.b32 %r2, %r1, 1; setp.eq.u32 %p1, %r2, 1; setp.ne.u32 %p2, %r5, 0;\n\
        { .param .b32 a0; st.param.b32 [a0], %r1; .param .b32 b0;\n@%p1 call.uni (b0), twice, (a0);\n@%p1 ld.param.b32 %r3, [b0]; }\n\
        @%p2 bra REC;\n\
        mul.wide.u32 %rd2, %r1, 4; add.s64 %rd3, %rd1, %rd2; st.global.u32 [%rd3], %r3;\nret;\n\
        REC:\n{ .param .b32 a1; st.param.b32 [a1], %r1; .param .b32 b1; call.uni (b1), forever, (a1); ld.param.b32 %r4, [b1]; }\nret;\n}\n";
    let m = Module::parse(src).unwrap();
    let mut mem = Memory::new();
    let out = mem.alloc(4 * 8);
    m.launch(&mut mem, "k", cfg(1, 8), &[Arg::Ptr(out), Arg::U32(0)]).unwrap();
    assert_eq!(down_u32(&mem, out, 8), vec![100, 2, 100, 6, 100, 10, 100, 14]);
    let e = m.launch(&mut mem, "k", cfg(1, 8), &[Arg::Ptr(out), Arg::U32(1)]).unwrap_err();
    assert!(e.to_string().contains("recursive call to `forever`"), "{e}");
}
