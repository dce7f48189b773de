"""fc1 without the bias in the GEMM, the bias added in the GELU pass (diagnostics, one Hopper GPU): is
torch.mm + a bias-and-GELU pass faster than torch.addmm + the GELU pass, and at what accuracy?

s28c measured torch.mm 6.4 us faster than addmm at 3520 x 4608 x 4608 on an H200, but its flat bias pass 3 us slower
than the plain GELU pass (a column index per element). Here the pass runs over 2-D blocks (BR rows x BC columns, the
bias loaded once per block). Systems, every one in turn (median of --rounds samples of 10 calls behind the tuner's
busy-wait): fc1 forms alone (addmm + gelu_, mm + the pass in a few block shapes, cuBLASLt's no-bias candidates + the
pass), and the whole chain norm pass + fc1 form + fc2 (CUTLASS v45 where built, else addmm). The fc1 output of each
form against fp64 GELU(xn W1^T + b1) (output poisoned first), and the kernels the forms launch.

    python benchmarks/diag_merger_mm.py [--shapes pre:3520:1152:2048 ...] [--rounds 21]
"""
from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl

from _common import interleaved_ms
from bench_merger import cutlass_ready, shape_inputs
from diag_merger_gemm import kernel_names

from qvdp.ops import _cublaslt
from qvdp.ops import patch_merger as pm
from qvdp.ops._triton_utils import FP_FUSION
from qvdp.ops.patch_merger import _gelu_erfc, _pdl_start


@triton.jit
def _bias_gelu_2d(Y, B, M, N, BR: tl.constexpr, BC: tl.constexpr, COLS_FIRST: tl.constexpr, I32: tl.constexpr,
                  PDL: tl.constexpr = False):
    _pdl_start(PDL)
    if COLS_FIRST:  # consecutive programs along a row: each wave of programs reads whole row stretches
        pc, pr = tl.program_id(0), tl.program_id(1)
    else:
        pr, pc = tl.program_id(0), tl.program_id(1)
    rows = pr * BR + tl.arange(0, BR)
    cols = pc * BC + tl.arange(0, BC)
    cm = cols < N
    b = tl.load(B + cols, mask=cm).to(tl.float32)
    if I32:
        offs = (rows * N)[:, None] + cols[None, :]
    else:
        offs = (rows.to(tl.int64) * N)[:, None] + cols[None, :]
    m = (rows[:, None] < M) & cm[None, :]
    y = tl.load(Y + offs, mask=m).to(tl.float32) + b[None, :]
    tl.store(Y + offs, _gelu_erfc(y).to(Y.dtype.element_ty), mask=m)


@triton.jit
def _bias_gelu_flat(Y, B, n, N, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    _pdl_start(PDL)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    y = tl.load(Y + offs, mask=m).to(tl.float32) + tl.load(B + offs % N, mask=m).to(tl.float32)
    tl.store(Y + offs, _gelu_erfc(y).to(Y.dtype.element_ty), mask=m)


def bias_gelu_(h, b, br, bc, warps, cols_first=False, i32=False):
    M, N = h.shape
    if br == 0:  # flat blocks of bc elements, the column as offs % N
        _bias_gelu_flat[(triton.cdiv(M * N, bc),)](h, b, M * N, N, BLOCK=bc, num_warps=warps, **pm._pdl(h),
                                                   **FP_FUSION)
        return h
    grid = (triton.cdiv(N, bc), triton.cdiv(M, br)) if cols_first else (triton.cdiv(M, br), triton.cdiv(N, bc))
    _bias_gelu_2d[grid](h, b, M, N, BR=br, BC=bc, COLS_FIRST=cols_first, I32=i32, num_warps=warps, **pm._pdl(h),
                        **FP_FUSION)
    return h


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["pre:3520:1152:2048", "pre:3520:1024:2048",
                                                    "post:3520:1152:2048", "pre:6400:1152:2048"])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--blocks", nargs="+", default=["8:512:4:0:0", "8:512:4:1:0", "8:512:4:1:1", "4:1024:4:1:1",
                                                    "0:4096:4:0:0"],
                    help="BR:BC:warps:cols-first:int32 offsets (BR 0: flat blocks of BC, the column as offs % N)")
    ap.add_argument("--lt", type=int, default=4, help="cuBLASLt no-bias candidates to time")
    a = ap.parse_args()
    cut = cutlass_ready()
    for spec in a.shapes:
        post, M, H, O, (x, nw, nb, w1, b1, w2, b2, xn, h1) = shape_inputs(spec)
        K = 4 * H
        lt = _cublaslt.LtGemm(M, K, K, x.dtype, False)
        blocks = [tuple(int(v) for v in s.split(":")) for s in a.blocks]
        forms = {"addmm + gelu_": lambda xn: pm.gelu_(torch.addmm(b1, xn, w1.t())),
                 "mm + gelu_ (no bias: the pass's cost)": lambda xn: pm.gelu_(torch.mm(xn, w1.t()))}
        for br, bc, wp, cf, i32 in blocks:
            forms[f"mm + bias_gelu {br}x{bc}/{wp}{' cols-first' if cf else ''}{' i32' if i32 else ''}"] = \
                lambda xn, br=br, bc=bc, wp=wp, cf=cf, i32=i32: bias_gelu_(torch.mm(xn, w1.t()), b1, br, bc, wp,
                                                                           bool(cf), bool(i32))
        for i, n in enumerate(lt.names[:a.lt]):
            forms[f"lt-nobias {n[9:]} + bias_gelu"] = lambda xn, i=i: bias_gelu_(
                lt.run_index(xn, w1, None, torch.empty(M, K, device="cuda", dtype=x.dtype), i), b1, 8, 512, 4, True, True)
        ref = torch.nn.functional.gelu(xn.double() @ w1.double().t() + b1.double())
        print(f"\n== {spec}", flush=True)
        for k, f in forms.items():
            h = f(xn)
            err = ((h.double() - ref).norm() / ref.norm()).item()
            print(f"  {k:44s} fc1 output rel err vs fp64 {err:.2e}{'  WRONG' if not err < 1e-2 else ''}", flush=True)
        fc2 = ((lambda h: pm._fc2_named("cutlass v45", h, w2, b2)) if cut
               else (lambda h: torch.addmm(b2, h, w2.t())))
        norm = lambda: pm._row_normed(x, nw, nb, 2, post, "layernorm", 1e-6)
        fns = {f"fc1 {k}": (lambda f=f: f(xn)) for k, f in forms.items()}
        fns.update({f"chain {k}": (lambda f=f: fc2(f(norm()))) for k, f in forms.items()})
        fns["floor (addmm + addmm)"] = lambda: torch.addmm(b2, torch.addmm(b1, xn, w1.t(), out=h1), w2.t())
        fns["mm alone"] = lambda: torch.mm(xn, w1.t(), out=h1)
        fns["addmm alone"] = lambda: torch.addmm(b1, xn, w1.t(), out=h1)
        t = interleaved_ms(fns, rounds=a.rounds)
        fl = t["floor (addmm + addmm)"]
        for k in fns:
            print(f"  {k:52s} {t[k] * 1e3:8.1f} us  {t[k] / fl:6.3f}x floor", flush=True)
        for k in ("mm alone", "addmm alone"):
            print(f"  kernels {k}: {[n[:80] for n in kernel_names(fns[k])]}", flush=True)


if __name__ == "__main__":
    main()
