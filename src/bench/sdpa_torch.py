# PyTorch's scaled-dot-product attention, timed the way `appliance bench
# kernels` times its own flash-attention kernels, so the two can be compared
# in one run. Embedded in the binary and run with the machine's python3 when
# PyTorch with CUDA is installed; prints one JSON object per case.
#
# Input (argv[1]): JSON list of cases {batch, seqlen, heads, kv_heads,
# head_dim, repeats}. Output per case: forward and backward milliseconds
# (median over repeats, CUDA events) and the backend PyTorch picked.
import json
import sys

import torch
import torch.nn.functional as F


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def time_ms(fn, repeats):
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b))
    return median(out)


def main():
    cases = json.loads(sys.argv[1])
    torch.manual_seed(0)
    for c in cases:
        b, s, h, kvh, d = c["batch"], c["seqlen"], c["heads"], c["kv_heads"], c["head_dim"]
        q = torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(b, kvh, s, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(b, kvh, s, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        gqa = h != kvh
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        dout = torch.randn_like(out)
        fwd = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa), c["repeats"])

        def fwd_bwd():
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
            torch.autograd.grad(o, (q, k, v), dout)

        both = time_ms(fwd_bwd, c["repeats"])
        print(json.dumps({**c, "fwd_ms": fwd, "bwd_ms": max(both - fwd, 1e-6), "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
