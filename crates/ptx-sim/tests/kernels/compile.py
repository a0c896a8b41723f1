#!/usr/bin/env python3
"""Compile the interpreter's whole-kernel test sources (*.cu here) to PTX with the
pinned NVRTC 12.4 (pip: nvidia-cuda-nvrtc-cu12==12.4.127 plus the runtime and cccl
header wheels), for compute_80. The .ptx files are committed so tests need no toolchain.

Usage: python3 compile.py [--check] [file.cu ...]   (default: every .cu beside this script)
  --check  compile without writing and exit 1 if a committed .ptx is stale.
"""
import ctypes, glob, os, sys

import nvidia.cuda_nvrtc, nvidia.cuda_runtime, nvidia.cuda_cccl, nvidia.cuda_nvcc  # noqa: E402


def pkg_dir(mod):
    return list(mod.__path__)[0]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    lib = ctypes.CDLL(os.path.join(pkg_dir(nvidia.cuda_nvrtc), "lib", "libnvrtc.so.12"))
    ver = (ctypes.c_int(), ctypes.c_int())
    lib.nvrtcVersion(ctypes.byref(ver[0]), ctypes.byref(ver[1]))
    if (ver[0].value, ver[1].value) != (12, 4):
        sys.exit(f"NVRTC {ver[0].value}.{ver[1].value} found; 12.4 is pinned")
    opts = [
        "--gpu-architecture=compute_80",
        "-default-device",
        "--std=c++17",
        "-I" + os.path.join(pkg_dir(nvidia.cuda_runtime), "include"),
        "-I" + os.path.join(pkg_dir(nvidia.cuda_cccl), "include"),
        # crt/mma.h (the wmma API) ships in the nvcc wheel.
        "-I" + os.path.join(pkg_dir(nvidia.cuda_nvcc), "include"),
    ]
    args = sys.argv[1:]
    check = "--check" in args
    args = [a for a in args if a != "--check"]
    files = args or sorted(glob.glob(os.path.join(here, "*.cu")))
    if len(files) > 1:
        # One process per file: NVRTC numbers call sequences ("// callseq N") with a
        # process-wide counter, so compiling several files in one process would make
        # a file's PTX depend on the files compiled before it.
        import subprocess
        bad = 0
        for f in files:
            r = subprocess.run([sys.executable, os.path.abspath(__file__)] + (["--check"] if check else []) + [f])
            bad |= r.returncode
        sys.exit(bad)
    stale = []
    for path in files:
        src = open(path, "rb").read()
        prog = ctypes.c_void_p()
        name = os.path.basename(path).encode()
        if lib.nvrtcCreateProgram(ctypes.byref(prog), src, name, 0, None, None) != 0:
            sys.exit(f"nvrtcCreateProgram failed for {path}")
        copts = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        rc = lib.nvrtcCompileProgram(prog, len(opts), copts)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        if rc != 0:
            sys.exit(f"{path}: compile failed\n{log.value.decode()}")
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetPTX(prog, ptx)
        out = os.path.splitext(path)[0] + ".ptx"
        text = ptx.value.decode()
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
        if check:
            old = open(out).read() if os.path.exists(out) else None
            if old != text:
                stale.append(os.path.basename(out))
            continue
        with open(out, "w") as f:
            f.write(text)
        print(f"{os.path.basename(path)} -> {os.path.basename(out)}")
    if stale:
        sys.exit(f"stale PTX (rerun compile.py): {' '.join(stale)}")
    if check:
        print(f"{os.path.basename(files[0])}: PTX is fresh")


if __name__ == "__main__":
    main()
