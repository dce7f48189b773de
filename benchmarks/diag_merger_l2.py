"""Does the GELU pass after cuBLAS's fc1 read its input from L2? (diagnostics, one Hopper GPU)

At 3520 merged rows, H=1152, the fc1 output is 3520 x 4608 bf16 = 32 MB, less than the H100 / H200's 50 MB L2. The
cublas path runs fc1 (cuBLAS) then an in-place GELU pass over that output (aten's gelu_, ~21-24 us: 65 MB at a
copy's speed). If the rows fc1 wrote last are still in L2, a pass that starts with them (blocks in reverse order)
reads part of its input from L2 instead of HBM. Systems, each timed in turn (median of --rounds samples of 10
calls, behind the tuner's GPU busy-wait), then the kernels of each chain (torch profiler):

  fc1                    cuBLAS addmm alone
  fc1 + gelu_            aten's in-place GELU after it (the cublas path)
  fc1 + tri fwd/rev B/W  a Triton in-place exact-erf GELU, B elements per program, W warps, blocks in address order
                         (fwd) or in reverse (rev); "AS": erfc by Abramowitz-Stegun 7.1.26 instead of libdevice's erf
  mm + tri fwd bias NR   cuBLAS mm without the bias, the bias added in the Triton pass
  fc1 + qvdp gelu_       qvdp's GELU pass (patch_merger.gelu_: the erfc fit of csrc/qvdp_cutlass_gemm.h)
  fc1 + gelu, 2 chunks   fc1 and aten's GELU on each half of the rows in turn (one stream)
  chain ...              norm pass + fc1 + GELU + cuBLAS fc2 (the cublas path) with each GELU form; and the floor

    python benchmarks/diag_merger_l2.py [--shapes pre:3520:1152:2048 post:3520:1152:2048] [--rounds 15]
"""
from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl

from _common import interleaved_ms, kernel_us
from bench_merger import shape_inputs

from qvdp.ops.patch_merger import gelu_ as qvdp_gelu_
from qvdp.ops.patch_merger import row_norm


@triton.jit
def _gelu_inplace(Y, C, n, ncol, BLOCK: tl.constexpr, REV: tl.constexpr, AS: tl.constexpr, HAS_C: tl.constexpr):
    # AS: 0 libdevice's erf; 1 erfc by Abramowitz-Stegun 7.1.26 (abs error 1.5e-7, relative error up to 3.5% in the
    # far tail); 2 erfc by a Chebyshev fit of log(erfc(z) / t) (Numerical Recipes' erfcc: relative error < 1.2e-7 for
    # every z >= 0). With q = erfc(|x| / sqrt(2)): 1 + erf(x / sqrt(2)) = q (x < 0) or 2 - q (x >= 0), no cancellation
    pid = tl.program_id(0)
    if REV:
        pid = tl.num_programs(0) - 1 - pid
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(Y + offs, mask=m).to(tl.float32)
    if HAS_C:  # the fc1 bias, added here after a plain mm
        x += tl.load(C + offs % ncol, mask=m).to(tl.float32)
    if AS == 1:
        z = tl.abs(x) * 0.7071067811865476
        t = 1.0 / (1.0 + 0.3275911 * z)
        p = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t
        q = p * tl.exp(-z * z)
        y = 0.5 * x * tl.where(x >= 0, 2.0 - q, q)
    elif AS == 2:
        z = tl.abs(x) * 0.7071067811865476
        t = 1.0 / (1.0 + 0.5 * z)
        p = 0.17087277 * t - 0.82215223
        p = p * t + 1.48851587
        p = p * t - 1.13520398
        p = p * t + 0.27886807
        p = p * t - 0.18628806
        p = p * t + 0.09678418
        p = p * t + 0.37409196
        p = p * t + 1.00002368
        p = p * t - 1.26551223
        q = t * tl.exp(p - z * z)
        y = 0.5 * x * tl.where(x >= 0, 2.0 - q, q)
    else:
        y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=m)


def tri_gelu(h, block, warps, rev, as_=0, bias=None):
    n = h.numel()
    _gelu_inplace[(triton.cdiv(n, block),)](h, h if bias is None else bias, n, h.shape[-1], BLOCK=block, REV=rev,
                                            AS=as_, HAS_C=bias is not None, num_warps=warps)
    return h


FORMS = [(4096, 4, 0), (4096, 4, 1), (4096, 4, 2)]
MATH = {0: "", 1: " AS", 2: " NR"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=["pre:3520:1152:2048", "post:3520:1152:2048"])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--rev", action="store_true", help="also the reverse block order (session 28: no gain)")
    ap.add_argument("--chunks", action="store_true", help="also fc1 + GELU on two halves of the rows (no gain)")
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), flush=True)
    for spec in a.shapes:
        post, M, H, O, (x, nw, nb, w1, b1, w2, b2, xn, h1) = shape_inputs(spec)
        K = 4 * H
        out = torch.empty(M, O, device="cuda", dtype=torch.bfloat16)
        if post:
            norm = lambda: row_norm(x.view(M, K), nw, nb, K, 1e-6, False)
        else:
            norm = lambda: row_norm(x, nw, nb, H, 1e-6, False)
        fc1 = lambda: torch.addmm(b1, xn, w1.t(), out=h1)
        fc2 = lambda: torch.addmm(b2, h1, w2.t(), out=out)
        ref = torch.nn.functional.gelu(fc1().float())
        gelus = {"gelu_": lambda: torch.ops.aten.gelu_(h1), "qvdp gelu_": lambda: qvdp_gelu_(h1)}
        for blk, w, as_ in FORMS:
            for rev in (False, True) if a.rev else (False,):
                gelus[f"tri {'rev' if rev else 'fwd'} {blk}/{w}{MATH[as_]}"] = (
                    lambda blk=blk, w=w, rev=rev, as_=as_: tri_gelu(h1, blk, w, rev, as_))
        mm = lambda: torch.mm(xn, w1.t(), out=h1)
        bias_nr = lambda: tri_gelu(h1, 4096, 4, False, 2, bias=b1)
        for name, g in list(gelus.items()) + [("mm + tri fwd bias 4096/4 NR", None)]:  # each on fresh fc1 output
            if g is None:
                mm()
                bias_nr()
            else:
                fc1()
                g()
            err = ((h1.float() - ref).norm() / ref.norm()).item()
            print(f"  {name:22s} rel err vs fp32 GELU {err:.2e}{'  WRONG' if not err < 1e-2 else ''}", flush=True)
        half = M // 2
        parts = [(slice(0, half)), (slice(half, M))]

        def chunks2():
            for s in parts:
                torch.addmm(b1, xn[s], w1.t(), out=h1[s])
                torch.ops.aten.gelu_(h1[s])

        seqs = {"floor (addmm + addmm)": lambda: (fc1(), fc2()), "fc1": fc1}
        for name, g in gelus.items():
            seqs[f"fc1 + {name}"] = lambda g=g: (fc1(), g())
        if a.chunks:
            seqs["fc1 + gelu_, 2 chunks"] = chunks2
        seqs["mm"] = mm
        seqs["mm + tri fwd bias 4096/4 NR"] = lambda: (mm(), bias_nr())
        for name in ["gelu_", "tri fwd 4096/4 NR", "qvdp gelu_"]:
            seqs[f"chain {name}"] = lambda g=gelus[name]: (norm(), fc1(), g(), fc2())
        if a.chunks:
            seqs["chain 2 chunks"] = lambda: (norm(), chunks2(), fc2())
        seqs["chain mm + tri fwd bias 4096/4 NR"] = lambda: (norm(), mm(), bias_nr(), fc2())
        t = interleaved_ms(seqs, a.rounds)
        base = t["fc1"]
        print(f"\n== {spec}: median us per call ({a.rounds} rounds, every system in turn); "
              f"+fc1: minus fc1 alone", flush=True)
        for k, v in t.items():
            extra = f"  +{(v - base) * 1e3:6.1f}" if k.startswith("fc1 +") or k.startswith("mm +") else ""
            print(f"  {k:36s} {v * 1e3:8.1f}{extra}  {v / t['floor (addmm + addmm)']:.3f}x floor", flush=True)
        for k in ["fc1 + gelu_", "fc1 + tri fwd 4096/4 NR", "fc1 + qvdp gelu_", "chain gelu_", "chain qvdp gelu_"]:
            print(f"  kernels of {k}: {kernel_us(seqs[k])}", flush=True)

if __name__ == "__main__":
    main()
