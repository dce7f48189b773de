"""The 1-GPU tower with its four mergers on two merger paths (default: the CUTLASS fc1 vs torch/cuBLAS).

Two instances of each form (CUDA graphs are captured per instance, with the merger backend chosen at
capture time), built in the order cutlass, torch, torch, cutlass; HF+FA3 in the same loop; all timed in
turn (median of 9 after 3 warm-ups). At 4 x 720p each form's error vs HF in fp32.

    python benchmarks/diag_tower_merger.py [--workloads 4x720p ...] [--forms tuned cublas]
"""
import os

import torch

from _common import try_import_fa3
from encoder_systems import build_hf, hf_call, tower_ab, use_fa3_attention

import qvdp


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", nargs="+", default=["4x720p", "16 mixed"])
    ap.add_argument("--forms", nargs=2, default=["cutlass", "torch"], metavar=("A", "B"),
                    help="the two merger paths (QVDP_MERGER_AUTO values) to compare")
    a = ap.parse_args()
    fa, fb = a.forms
    fa3 = try_import_fa3()
    dev = torch.device("cuda", 0)
    model = build_hf(dev)
    hf_fa3 = hf_call(use_fa3_attention(build_hf(dev), fa3)) if fa3 is not None else None
    forms = [(fa, fa), (fb, fb), (f"{fb} #2", fb), (f"{fa} #2", fa)]
    fwd = {k: (qvdp.Qwen3VLVisionForward(model), mode) for k, mode in forms}

    def call(f, mode, px, g):
        os.environ["QVDP_MERGER_AUTO"] = mode
        return f(px, g)

    forms = {k: (lambda px, g, f=f, m=m: call(f, m, px, g)) for k, (f, m) in fwd.items()}
    tower_ab(forms, fa, fb, a.workloads, dev, hf_fa3)
    os.environ.pop("QVDP_MERGER_AUTO", None)


if __name__ == "__main__":
    main()
