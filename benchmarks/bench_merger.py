"""Patch merger: qvdp (backend "auto": "tuned" where the CUTLASS library is built, i.e. fc1 + GELU and fc2 each
by the fastest of cuBLAS and a few CUTLASS kernels for the shape; else "cublas"; the "cublas" and "cutlass"
paths also timed on their own) vs eager HF-style vs torch.compile, and the floor = the two cuBLAS GEMMs with
bias (torch.addmm) on pre-normalised input.

    python benchmarks/bench_merger.py [--out DIR]
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from _common import bar_plot, event_ms, time_interleaved, write_results

from qvdp.ops import merger_gemm
from qvdp.ops.patch_merger import patch_merger
from qvdp.reference import patch_merger_reference

NS = [("4x3520", 4 * 3520), ("4x6400", 4 * 6400), ("56320", 56320)]
HO = [(1152, 2048), (1152, 4096), (1152, 5120), (1024, 2048), (1024, 2560)]


def make_inputs(N, H, O, post, spread=False):
    """bf16 merger inputs (seed 0), the pre-normalised input xn and an fc1 output buffer h1 for the floor.
    spread: each patch scaled by its own factor, so the four patch norms of a merged row differ."""
    torch.manual_seed(0)
    K = 4 * H
    x = torch.randn(N, H, device="cuda", dtype=torch.bfloat16) * 2 + 0.3
    if spread:
        x *= torch.exp(0.5 * torch.randn(N, 1, device="cuda")).bfloat16()
    nwd = K if post else H
    nw = (1 + 0.1 * torch.randn(nwd, device="cuda")).bfloat16()
    nb = (0.1 * torch.randn(nwd, device="cuda")).bfloat16()
    w1 = (torch.randn(K, K, device="cuda") / K ** 0.5).bfloat16()
    b1 = (0.1 * torch.randn(K, device="cuda")).bfloat16()
    w2 = (torch.randn(O, K, device="cuda") / K ** 0.5).bfloat16()
    b2 = (0.1 * torch.randn(O, device="cuda")).bfloat16()
    xn = (F.layer_norm(x.view(-1, K), (K,), nw, nb, 1e-6) if post else
          F.layer_norm(x, (H,), nw, nb, 1e-6).view(-1, K)).contiguous()
    h1 = torch.empty(N // 4, K, device="cuda", dtype=torch.bfloat16)
    return x, nw, nb, w1, b1, w2, b2, xn, h1


def cutlass_ready() -> bool:
    """Print the card and whether the CUTLASS merger kernels run on it (the merger diagnostics' first line)."""
    why = merger_gemm.unavailable_reason()
    print(torch.cuda.get_device_name(), "CUTLASS:", why or "available", flush=True)
    return why is None


def shape_inputs(spec):
    """(post, M, H, O, make_inputs(4 M, H, O, post)) for a diagnostics shape "pre|post:M:H:O" (M merged rows)."""
    place, M, H, O = spec.split(":")
    post, M, H, O = place == "post", int(M), int(H), int(O)
    return post, M, H, O, make_inputs(4 * M, H, O, post)


def eager(x, nw, nb, w1, b1, w2, b2, post):
    H = x.shape[-1]
    if post:
        y = F.layer_norm(x.view(-1, 4 * H), (4 * H,), nw, nb, 1e-6)
    else:
        y = F.layer_norm(x, (H,), nw, nb, 1e-6).view(-1, 4 * H)
    return F.linear(F.gelu(F.linear(y, w1, b1)), w2, b2)


def _stage_tuned(fn):
    """fn with the "tuned" path's whole-merger round off (each stage by its own pick)."""
    os.environ["QVDP_TUNE_CONTEXT"] = "0"
    try:
        return fn()
    finally:
        del os.environ["QVDP_TUNE_CONTEXT"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--pairs-ab", action="store_true",
                    help="also time 'tuned' without its whole-merger round (QVDP_TUNE_CONTEXT=0): column 'qvdp alone'")
    args = ap.parse_args()
    compiled = torch.compile(eager, dynamic=True)
    from qvdp.ops.patch_merger import TUNE_FC1, TUNE_FC2
    has_cutlass = merger_gemm.available()
    cfg = merger_gemm.VARIANTS.get(merger_gemm.selected_variant()) if has_cutlass else None
    from qvdp.ops import _cublaslt
    print("qvdp backend: auto;", f"tuned over CUTLASS fc1 variants {TUNE_FC1}, fc2 variants {TUNE_FC2}"
          if has_cutlass else "CUTLASS not built", "; cuBLASLt candidates:", "on" if _cublaslt.enabled() else "off")
    rows, plot = [], {"qvdp": [], "eager": [], "torch.compile": [], "floor (2 addmm)": []}
    labels = []
    ns = NS[:1] if args.quick else NS
    for post in (False, True):
        for nname, N in ns:
            for H, O in HO:
                K = 4 * H
                x, nw, nb, w1, b1, w2, b2, xn, h1 = make_inputs(N, H, O, post)
                fq = lambda: patch_merger(x, nw, nb, w1, b1, w2, b2, postshuffle_norm=post)
                fcu = lambda: patch_merger(x, nw, nb, w1, b1, w2, b2, postshuffle_norm=post, backend="cutlass")
                fcb = lambda: patch_merger(x, nw, nb, w1, b1, w2, b2, postshuffle_norm=post, backend="cublas")
                fe = lambda: eager(x, nw, nb, w1, b1, w2, b2, post)
                fc = lambda: compiled(x, nw, nb, w1, b1, w2, b2, post)
                ff = lambda: torch.addmm(b2, torch.addmm(b1, xn, w1.t(), out=h1), w2.t())
                got = fq()
                ref = patch_merger_reference(x[:4096], nw, nb, w1, b1, w2, b2, postshuffle_norm=post,
                                             dtype=torch.float32)
                err = ((got[:1024].float() - ref).norm() / ref.norm()).item()
                fns = {}
                systems = [("qvdp", fq), ("qvdp cublas", fcb)] + ([("qvdp cutlass", fcu)] if has_cutlass else [])
                if args.pairs_ab:
                    systems.append(("qvdp alone", lambda: _stage_tuned(fq)))
                for name, fn in systems + [("eager", fe), ("torch.compile", fc), ("floor (2 addmm)", ff)]:
                    try:
                        fn()
                        fns[name] = fn
                    except Exception as e:  # noqa: BLE001
                        print(f"[{name}] {type(e).__name__}: {str(e)[:200]}")
                # systems timed in turn (CUDA events around 10 calls), so clock drift hits all alike
                t = dict.fromkeys(("qvdp", "qvdp cublas", "qvdp cutlass", "qvdp alone", "eager", "torch.compile",
                                   "floor (2 addmm)"))
                # (each sample behind the tuner's GPU busy-wait since session 23: GPU time, the first call's launch
                # not counted; QVDP_TUNE_HEAD=0 gives the protocol of sessions 1-22)
                t.update(time_interleaved(fns, warm=3, rep=20, timer=lambda f: event_ms(f, head_cycles=None)))
                fl = 2.0 * (N // 4) * K * K + 2.0 * (N // 4) * K * O
                lab = f"{'post' if post else 'pre'} N={nname} H={H} O={O}"
                labels.append(lab)
                for name in plot:
                    plot[name].append(fl / t[name] / 1e9 if t[name] else None)
                from qvdp.ops.patch_merger import auto_backend, tuned_picks
                path = auto_backend(x, K, K)
                if path == "tuned":  # what the tuner chose for this shape (the warm-up call tuned it)
                    path += " ({}, {})".format(*tuned_picks(x.device, N // 4, K, K, O, post, "layernorm"))
                ms = lambda v: v if v is not None else "n/a"
                rows.append([lab, path, t["qvdp"], ms(t["qvdp cublas"]), ms(t["qvdp cutlass"]), t["eager"],
                             t["torch.compile"], t["floor (2 addmm)"],
                             fl / t["qvdp"] / 1e9, f"{t['qvdp'] / t['floor (2 addmm)']:.3f}x",
                             f"{t['eager'] / t['qvdp']:.2f}x", f"{t['torch.compile'] / t['qvdp']:.2f}x" if t["torch.compile"] else "n/a",
                             f"{err:.1e}"])
                if args.pairs_ab:
                    from qvdp.ops import _tune
                    from qvdp.ops.patch_merger import tune_keys
                    k1, k2 = tune_keys(x.device, N // 4, K, K, O, post, "layernorm")
                    rows[-1] += [f"{_tune.choice(k1)}, {_tune.choice(k2)}", ms(t["qvdp alone"]),
                                 f"{t['qvdp alone'] / t['qvdp']:.3f}x" if t["qvdp alone"] else "n/a"]
                print(rows[-1], flush=True)
    write_results("merger", "Patch merger (bf16): LN + 2x2 merge + fc1 + GELU + fc2",
                  ["shape", "auto path", "qvdp ms", "cublas ms", "cutlass ms", "eager ms", "compile ms", "floor ms",
                   "qvdp TFLOP/s", "qvdp / floor", "eager / qvdp", "compile / qvdp", "err"]
                  + (["alone picks", "alone ms", "alone / qvdp"] if args.pairs_ab else []), rows,
                  "qvdp = patch_merger(backend='auto'): "
                  + (f"'tuned' (fc1 + GELU by the fastest of the cublas form (its GEMM by torch.addmm, by torch.mm "
                     f"with the bias added in the GELU pass, 'cublas-mm', or by one of cuBLASLt's heuristic candidates, "
                     f"'cublaslt t<tile>...'{'' if _cublaslt.enabled() else ': off'}) "
                     f"and CUTLASS configurations {TUNE_FC1}, fc2 by the fastest of cuBLAS addmm, cuBLASLt's "
                     f"candidates and CUTLASS configurations {TUNE_FC2}, timed on the first "
                     "call of each shape, i.e. in the warm-up; the auto path column names the picks: fc1, fc2)" if has_cutlass else "'cublas' (CUTLASS not built here)")
                  + "; cublas column: qvdp's one-pass Triton norm, cuBLAS fc1 + bias, GELU in place, cuBLAS fc2 + bias; "
                  f"cutlass column: fc1 + GELU by CUTLASS ({cfg}), fc2 by cuBLAS. floor = torch.addmm(fc1) + torch.addmm(fc2) on a pre-normalised input (cuBLAS, bias fused). "
                  "torch.compile with dynamic=True. Systems timed in turn (CUDA events, 10 calls per sample, median of 20; "
                  "each sample behind a GPU busy-wait, QVDP_TUNE_HEAD, so the first call's launch is not counted). err: qvdp vs fp32 torch reference on the first 1024 merged rows.",
                  out_dir=args.out)
    bar_plot("merger", labels, plot, "TFLOP/s", out_dir=args.out)


if __name__ == "__main__":
    main()
