"""The merger's host time, piece by piece, and whether a call is host-bound (session 23).

    python benchmarks/diag_merger_host.py [--shapes post:4x3520:1024:2048 ...] [--out file.jsonl]

Host us per call: the enqueue loop timed while the GPU is kept busy (torch.cuda._sleep), so the launches
queue up and nothing waits for the GPU. Pieces:
- torch.empty, addmm, gelu_, F.layer_norm (what eager pays per op);
- row_norm through Triton's launcher and through qvdp's fast_launch (the compiled kernel launched directly:
  slower here, s23a), row_stats;
- the CUTLASS fc1 through merger_gemm.fc1_gelu (the checked public call) and merger_gemm.launch (unchecked,
  cached plan), each with the C side's Params cache on and off (QVDP_CUTLASS_PARAM_CACHE=0).
Whole mergers: eager, the floor (two addmm), qvdp "cublas", qvdp "tuned" (cache on / off): host us per call
and event us per call back to back (10 calls, best of 5 rounds, the median of their samples), and "tuned"
replayed from a CUDA graph (no host work: what the GPU alone takes). A system whose host us per call is at or
above its event us is host-bound.
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
import triton

from _common import append_jsonl, event_us, graph_us, host_us
from bench_merger import eager, make_inputs

from qvdp.ops import merger_gemm
from qvdp.ops import patch_merger as pm
from qvdp.ops._triton_utils import fast_launch

NAMED = {"4x3520": 4 * 3520, "4x6400": 4 * 6400, "56320": 56320}






def with_env(name, value, fn):
    def run():
        old = os.environ.get(name)
        os.environ[name] = value
        try:
            return fn()
        finally:
            if old is None:
                del os.environ[name]
            else:
                os.environ[name] = old
    return run


def row_norm_launch(x, weight, bias, width):
    """row_norm's launch as fast_launch's (grid, args, consts) plus its options (session 23 tried it: slower)."""
    y = torch.empty_like(x)
    n = x.numel() // width
    block = triton.next_power_of_2(width)
    rows = max(1, min(16, 8192 // block))
    return ((triton.cdiv(n, rows),), (x, weight, bias, y, n, width, 1e-6),
            dict(RMS=False, HAS_B=True, ROWS=rows, BLOCK=block), dict(num_warps=4 if block * rows <= 4096 else 8,
                                                                         enable_fp_fusion=True))


def norm_sweep(x, nw, nb, width):
    """GPU us of the norm pass (row_norm's kernel) per (rows per program, warps), against F.layer_norm and a copy
    of the same bytes (x.clone(): read + write, the pass's bandwidth floor)."""
    n = x.numel() // width
    block = triton.next_power_of_2(width)
    y = torch.empty_like(x)
    res = {"clone": event_us(lambda: x.clone())[0],
           "F.layer_norm": event_us(lambda: F.layer_norm(x.view(-1, width), (width,), nw, nb, 1e-6))[0]}
    for rows in ((1, 2) if block >= 4096 else (1, 2, 4, 8)):
        for warps in ((4, 8, 16) if block >= 4096 else (4, 8)):
            if block * rows > 32768 or block * rows < 32 * warps:
                continue
            res[f"rows {rows} warps {warps}"] = event_us(lambda: pm._row_norm_tile[(triton.cdiv(n, rows),)](
                x, nw, nb, y, n, width, 1e-6, RMS=False, HAS_B=True, ROWS=rows, BLOCK=block, num_warps=warps,
                enable_fp_fusion=True))[0]
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=["post:4x3520:1024:2048", "pre:4x3520:1024:2048",
                                                     "pre:4x3520:1152:2048", "post:56320:1152:4096"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--norm-sweep", action="store_true", help="also time row_norm's kernel per rows / warps")
    args = ap.parse_args()
    why = merger_gemm.unavailable_reason()
    print(torch.cuda.get_device_name(), "CUTLASS:", why or "available", flush=True)
    rows = []
    for spec in args.shapes:
        place, nname, H, O = spec.split(":")
        post, N, H, O = place == "post", NAMED[nname], int(H), int(O)
        K = 4 * H
        M = N // 4
        x, nw, nb, w1, b1, w2, b2, xn, h1 = make_inputs(N, H, O, post)
        width = K if post else H
        negm = torch.empty(M, device="cuda")
        rstd = torch.empty(M, device="cuda")
        c1 = b1.float()
        pieces = {
            "torch.empty [M, 4H]": lambda: torch.empty(M, K, device="cuda", dtype=torch.bfloat16),
            "addmm fc1": lambda: torch.addmm(b1, xn, w1.t()),
            "gelu_": lambda: torch.ops.aten.gelu_(h1),
            "F.layer_norm": lambda: F.layer_norm(x.view(-1, width), (width,), nw, nb, 1e-6),
            "row_norm (fast_launch)": lambda: (lambda g, a, c, o: fast_launch(pm._row_norm_tile, g, a, c, **o))(
                *row_norm_launch(x, nw, nb, width)),
            "row_norm (Triton's launcher)": lambda: pm.row_norm(x, nw, nb, width, 1e-6, False),
            "row_stats (Triton's launcher)": lambda: pm.row_stats(x, negm, rstd, K, 1e-6, False, negm=True),
        }
        if not why:
            v = 12
            pieces["fc1_gelu checked, Params cached"] = lambda: merger_gemm.fc1_gelu(xn, w1, c=c1, variant=v)
            pieces["fc1_gelu checked, Params rebuilt"] = with_env(
                "QVDP_CUTLASS_PARAM_CACHE", "0", lambda: merger_gemm.fc1_gelu(xn, w1, c=c1, variant=v))
            pieces["launch unchecked, Params cached"] = lambda: merger_gemm.launch(xn, w1, None, None, None, c1,
                                                                                   None, v)
            pieces["launch unchecked, Params rebuilt"] = with_env(
                "QVDP_CUTLASS_PARAM_CACHE", "0", lambda: merger_gemm.launch(xn, w1, None, None, None, c1, None, v))
        call = lambda backend: (lambda: pm.patch_merger(x, nw, nb, w1, b1, w2, b2, postshuffle_norm=post,
                                                        backend=backend))
        whole = {"eager": lambda: eager(x, nw, nb, w1, b1, w2, b2, post),
                 "floor": lambda: torch.addmm(b2, torch.addmm(b1, xn, w1.t(), out=h1), w2.t()),
                 "qvdp cublas": call("cublas")}
        if not why:
            whole["qvdp tuned"] = call("tuned")
            whole["qvdp tuned, Params rebuilt"] = with_env("QVDP_CUTLASS_PARAM_CACHE", "0", call("tuned"))
        print(f"\n== {spec}", flush=True)
        if args.norm_sweep:
            sweep = norm_sweep(x, nw, nb, width)
            print("  norm pass (us): " + ", ".join(f"{k} {v:.1f}" for k, v in sweep.items()), flush=True)
            rows.append(dict(shape=spec, what="norm sweep", us={k: round(v, 2) for k, v in sweep.items()}))
        for name, fn in pieces.items():
            h = host_us(fn)
            print(f"  {name:36s} host {h:7.1f} us/call", flush=True)
            rows.append(dict(shape=spec, what=name, host_us=round(h, 2)))
        for name, fn in whole.items():
            for _ in range(3):
                fn()
            h = host_us(fn)
            ev, ev_min = event_us(fn)
            tag = "HOST-BOUND" if h >= 0.95 * ev else ""
            print(f"  {name:36s} host {h:7.1f} us/call  event {ev:7.1f} us (min {ev_min:7.1f}) {tag}", flush=True)
            rows.append(dict(shape=spec, what=name, host_us=round(h, 2), event_us=round(ev, 2),
                             event_min_us=round(ev_min, 2)))
        if not why:
            picks = pm.tuned_picks(x.device, M, K, K, O, post, "layernorm")
            try:
                gm, gmin = graph_us(whole["qvdp tuned"])
                print(f"  {'qvdp tuned, CUDA graph replay':36s} event {gm:7.1f} us (min {gmin:7.1f})  picks {picks}",
                      flush=True)
                rows.append(dict(shape=spec, what="qvdp tuned graph", event_us=round(gm, 2), picks=list(picks)))
            except Exception as e:  # noqa: BLE001
                print(f"  graph replay failed: {type(e).__name__}: {e}", flush=True)
            ge, gemin = graph_us(whole["eager"])
            print(f"  {'eager, CUDA graph replay':36s} event {ge:7.1f} us (min {gemin:7.1f})", flush=True)
            rows.append(dict(shape=spec, what="eager graph", event_us=round(ge, 2)))
    if args.out:
        append_jsonl(args.out, rows)


if __name__ == "__main__":
    main()
