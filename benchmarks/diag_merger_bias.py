"""Where the merger's biases should go (diagnostics, one GPU; session 18: nowhere better, benchmarks/NOTES.md): cuBLAS's bias epilogue (addmm) against a plain
mm with the bias moved elsewhere, on the bench_merger shapes (pre-normalised bf16 input).

Forms of fc1 -> GELU -> fc2 (xn [M, 4H] given):
  floor  addmm -> addmm (no GELU; bench_merger's floor)
  cur    addmm -> GELU in place -> addmm (qvdp's "cublas" path after its norm)
  A      mm -> bias + GELU in one Triton pass (bias_gelu below) -> addmm
  B      mm -> bias + GELU writing [h | 1 | 0...] (8 extra columns) -> mm with [W2 | b2 | 0...]
  C      as B, with fc1's bias also carried by a ones column of xn ([xn | 1 | 0...], as a norm pass could write it)
plus the GEMMs alone (addmm / mm / mm with the bias column) and row_norm over the raw patches. Systems timed
in turn (CUDA events around 10 calls, median of 20); ||form - cur|| / ||cur||.

    python benchmarks/diag_merger_bias.py [--out results.jsonl] [--quick]
"""
import argparse

import torch

import triton
import triton.language as tl

from _common import append_jsonl, card, event_ms, time_interleaved
from qvdp.ops._triton_utils import FP_FUSION
from qvdp.ops.patch_merger import row_norm

AUG = 8


@triton.jit
def _bias_gelu_tile(Y, C, OUT, n_rows, width, stride_y, stride_o, HAS_C: tl.constexpr, AUG: tl.constexpr,
                    ROWS: tl.constexpr, BLOCK: tl.constexpr):
    # OUT[r, :width] = GELU(Y[r, :width] + C) in fp32 (exact erf); AUG > 0: OUT[r, width] = 1 and
    # OUT[r, width + 1 : width + AUG] = 0, the column that carries the next GEMM's bias
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    rm = rows < n_rows
    m = rm[:, None] & (cols < width)[None, :]
    r64 = rows.to(tl.int64)[:, None]
    z = tl.load(Y + r64 * stride_y + cols[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_C:
        z += tl.load(C + cols, mask=cols < width, other=0.0)[None, :]
    z = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    tl.store(OUT + r64 * stride_o + cols[None, :], z.to(OUT.dtype.element_ty), mask=m)
    if AUG > 0:
        if tl.program_id(1) == 0:
            a = tl.arange(0, AUG)
            tl.store(OUT + r64 * stride_o + width + a[None, :], (a == 0).to(OUT.dtype.element_ty)[None, :]
                     + tl.zeros([ROWS, AUG], OUT.dtype.element_ty), mask=rm[:, None])


def bias_gelu(y, c=None, out=None, aug: int = 0):
    """GELU(y + c) (exact erf, fp32 math) for y [M, N] with unit last-dim stride, c an fp32 [N] vector or None;
    one Triton pass. out: [M, >= N + aug] (default: a new [M, N + aug] tensor like y); aug > 0 (a power of two)
    also sets out[:, N] = 1 and out[:, N + 1 : N + aug] = 0, so that out @ [W | b | 0]^T is out[:, :N] @ W^T + b.
    Returns out."""
    M, N = y.shape
    if out is None:
        out = torch.empty(M, N + aug, device=y.device, dtype=y.dtype)
    if M == 0:
        return out
    rows, block = 4, 1024
    _bias_gelu_tile[(triton.cdiv(M, rows), triton.cdiv(N, block))](
        y, c if c is not None else y, out, M, N, y.stride(0), out.stride(0), HAS_C=c is not None, AUG=aug,
        ROWS=rows, BLOCK=block, num_warps=4, **FP_FUSION)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    ms_ = [3520, 6400, 14080]
    ho = [(1152, 2048), (1152, 4096), (1152, 5120), (1024, 2048), (1024, 2560)]
    if a.quick:
        ms_, ho = ms_[:1], ho[1:2]
    bf = dict(device="cuda", dtype=torch.bfloat16)
    for M in ms_:
        for H, O in ho:
            K = 4 * H
            g = torch.Generator(device="cuda").manual_seed(0)
            x = torch.randn(4 * M, H, generator=g, **bf)
            xn = torch.randn(M, K, generator=g, **bf)
            w1 = torch.randn(K, K, generator=g, **bf) * K ** -0.5
            b1 = torch.randn(K, generator=g, **bf) * 0.1
            w2 = torch.randn(O, K, generator=g, **bf) * K ** -0.5
            b2 = torch.randn(O, generator=g, **bf) * 0.1
            nw, nb = torch.ones(H, **bf), torch.zeros(H, **bf)
            b1f = b1.float()
            pad = lambda w, b: torch.cat([w, b[:, None], torch.zeros(w.shape[0], AUG - 1, **bf)], 1).contiguous()
            w1a, w2a = pad(w1, b1), pad(w2, b2)
            xna = torch.cat([xn, torch.ones(M, 1, **bf), torch.zeros(M, AUG - 1, **bf)], 1).contiguous()
            h1 = torch.empty(M, K, **bf)
            ha = torch.empty(M, K + AUG, **bf)
            forms = {
                "floor": lambda: torch.addmm(b2, torch.addmm(b1, xn, w1.t(), out=h1), w2.t()),
                "cur": lambda: torch.addmm(b2, torch.ops.aten.gelu_(torch.addmm(b1, xn, w1.t(), out=h1)), w2.t()),
                "A": lambda: torch.addmm(b2, bias_gelu(torch.mm(xn, w1.t(), out=h1), b1f, out=h1), w2.t()),
                "B": lambda: torch.mm(bias_gelu(torch.mm(xn, w1.t(), out=h1), b1f, out=ha, aug=AUG), w2a.t()),
                "C": lambda: torch.mm(bias_gelu(torch.mm(xna, w1a.t(), out=h1), None, out=ha, aug=AUG), w2a.t()),
                "fc1 addmm": lambda: torch.addmm(b1, xn, w1.t(), out=h1),
                "fc1 mm": lambda: torch.mm(xn, w1.t(), out=h1),
                "fc1 mm+col": lambda: torch.mm(xna, w1a.t(), out=h1),
                "fc2 addmm": lambda: torch.addmm(b2, h1, w2.t()),
                "fc2 mm": lambda: torch.mm(h1, w2.t()),
                "fc2 mm+col": lambda: torch.mm(ha, w2a.t()),
                "gelu_": lambda: torch.ops.aten.gelu_(h1),
                "bias_gelu": lambda: bias_gelu(h1, b1f, out=h1),
                "row_norm": lambda: row_norm(x, nw, nb, H, 1e-6, False),
            }
            ref = forms["cur"]().float()
            err = {k: float((forms[k]().float() - ref).norm() / ref.norm()) for k in ("A", "B", "C")}
            t = time_interleaved(forms, warm=3, rep=20, timer=event_ms)
            r = {"card": card(), "M": M, "H": H, "O": O, **{k: round(v * 1e3, 1) for k, v in t.items()},
                 **{"err " + k: v for k, v in err.items()}}
            f = r["floor"]
            print(f"M={M} H={H} O={O}: floor {f:.1f} us | cur {r['cur'] / f:.3f}x  A {r['A'] / f:.3f}x  "
                  f"B {r['B'] / f:.3f}x  C {r['C'] / f:.3f}x of the floor (+ row_norm {r['row_norm']:.1f} us) | "
                  f"fc1 addmm/mm/col {r['fc1 addmm']:.1f}/{r['fc1 mm']:.1f}/{r['fc1 mm+col']:.1f}  "
                  f"fc2 {r['fc2 addmm']:.1f}/{r['fc2 mm']:.1f}/{r['fc2 mm+col']:.1f}  gelu_ {r['gelu_']:.1f} "
                  f"bias_gelu {r['bias_gelu']:.1f} | err A/B/C {err['A']:.1e}/{err['B']:.1e}/{err['C']:.1e}",
                  flush=True)
            if a.out:
                append_jsonl(a.out, [r])
            forms = None  # (the closures hold this shape's tensors)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
