"""The 1-GPU tower with its four mergers on the CUTLASS fc1 vs on torch/cuBLAS (issue 6 A/B).

Two instances of each form (CUDA graphs are captured per instance, with the merger backend chosen at
capture time), built in the order cutlass, torch, torch, cutlass; HF+FA3 in the same loop; all timed in
turn (median of 9 after 3 warm-ups). At 4 x 720p each form's error vs HF in fp32.

    python benchmarks/diag_tower_merger.py [--workloads 4x720p ...]
"""
import os

import torch

from _common import time_interleaved, try_import_fa3
from bench_encoder import pixels, workloads
from encoder_systems import build_hf, hf_call, use_fa3_attention

import qvdp


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", nargs="+", default=["4x720p", "16 mixed"])
    a = ap.parse_args()
    fa3 = try_import_fa3()
    dev = torch.device("cuda", 0)
    model = build_hf(dev)
    hf_fa3 = hf_call(use_fa3_attention(build_hf(dev), fa3)) if fa3 is not None else None
    forms = [("cutlass", "cutlass"), ("torch", "torch"), ("torch #2", "torch"), ("cutlass #2", "cutlass")]
    fwd = {k: (qvdp.Qwen3VLVisionForward(model), mode) for k, mode in forms}

    def call(f, mode, px, g):
        os.environ["QVDP_MERGER_AUTO"] = mode
        return f(px, g)

    for name, grid in workloads():
        if name not in a.workloads:
            continue
        px = pixels(grid, dev)
        g = tuple(map(tuple, grid))
        fns = {k: (lambda f=f, m=m: call(f, m, px, g)) for k, (f, m) in fwd.items()}
        if hf_fa3 is not None:
            fns["HF+FA3"] = lambda: hf_fa3(px, grid)
        r = time_interleaved(fns, warm=3, rep=9)
        cut = min(r["cutlass"], r["cutlass #2"])
        tor = min(r["torch"], r["torch #2"])
        line = ", ".join(f"{k} {v:.2f} ms" for k, v in r.items())
        if "HF+FA3" in r:
            line += f"; HF+FA3 / cutlass {r['HF+FA3'] / cut:.3f}x, HF+FA3 / torch {r['HF+FA3'] / tor:.3f}x"
        print(f"tower {name}: {line}; torch / cutlass {tor / cut:.4f}", flush=True)
        if name == "4x720p":
            ref = hf_call(build_hf(dev).float())(px.float(), grid)[0]
            errs = {k: rel(call(f, m, px, g)[0], ref) for k, (f, m) in fwd.items()}
            print("tower 4x720p vs HF fp32, pooled: " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()),
                  flush=True)
            del ref
            torch.cuda.empty_cache()
    os.environ.pop("QVDP_MERGER_AUTO", None)


if __name__ == "__main__":
    main()
