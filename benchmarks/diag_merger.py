"""Patch-merger tuning (diagnostics): the v3 TMA fc1 kernel (norm folded into the weights, one
accumulator rescaled between patch chunks) over tile configs, against the floor (cuBLAS addmm of fc1
and fc2 on a pre-normalised input) and eager, timed in turn with CUDA events. Prints one line per
config and shape, then the config with the best worst-case ratio to the floor.

    python benchmarks/diag_merger.py [--winner FILE]   # FILE gets "BM,BN,BK,GROUP_M,warps,stages,persistent"
"""
import argparse
import os

import torch

from _common import event_ms, time_interleaved
from bench_merger import make_inputs

from qvdp.ops.patch_merger import _patch_merger_torch, _patch_merger_triton, config_from_tuple, row_stats

# (BM, BN, BK, GROUP_M, warps, stages, persistent CTAs per SM or 0 for one program per tile)
CONFIGS = [(128, 256, 64, 8, 8, 3, 0), (128, 256, 64, 8, 8, 4, 0), (128, 128, 64, 8, 8, 4, 0),
           (128, 128, 64, 8, 8, 3, 0), (128, 128, 64, 8, 4, 3, 0), (128, 128, 64, 8, 8, 2, 0),
           (128, 256, 64, 8, 8, 3, 1), (128, 256, 64, 8, 8, 4, 1), (128, 128, 64, 8, 8, 4, 1),
           (128, 128, 64, 8, 8, 3, 2), (128, 128, 64, 8, 4, 3, 2)]
SHAPES = [(False, 4 * 3520, 1152, 4096), (True, 4 * 3520, 1152, 4096), (False, 56320, 1152, 4096),
          (False, 4 * 3520, 1024, 2048), (True, 4 * 6400, 1152, 2048)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--winner", default=None)
    a = ap.parse_args()
    worst = {c: 0.0 for c in CONFIGS}
    for post, N, H, O in SHAPES:
        K = 4 * H
        x, nw, nb, w1, b1, w2, b2, xn, h1 = make_inputs(N, H, O, post, spread=True)
        args = (x, nw, nb, w1, b1, w2, b2, 2, post, "layernorm", 1e-6)
        ref = _patch_merger_torch(*[t.float() if isinstance(t, torch.Tensor) else t for t in args])
        fns = {"floor": lambda: torch.addmm(b2, torch.addmm(b1, xn, w1.t(), out=h1), w2.t()),
               "eager": lambda: _patch_merger_torch(*args)}
        for c in CONFIGS:
            cfg = config_from_tuple(c)
            fn = (lambda cfg=cfg: _patch_merger_triton(*args, config=cfg))
            try:
                out = fn()
                err = ((out.float() - ref).norm() / ref.norm()).item()
                if not err < 1e-2:
                    print(f"{c}: rel err {err:.2e}, dropped")
                    continue
                fns[c] = fn
            except Exception as e:  # noqa: BLE001
                print(f"{c}: {type(e).__name__}: {str(e)[:160]}")
        fold_env = os.environ.get("QVDP_MERGER_VARIANT")
        width = K if post else H
        mean = torch.empty(N * H // width, device="cuda")
        rstd = torch.empty_like(mean)
        fns["stats"] = lambda: row_stats(x, mean, rstd, width, 1e-6, False)
        t = time_interleaved(fns, warm=3, rep=15, timer=event_ms)
        fl = 2.0 * (N // 4) * K * K + 2.0 * (N // 4) * K * O
        print(f"--- {'post' if post else 'pre'} N={N} H={H} O={O}: floor {t['floor']:.3f} ms "
              f"({fl / t['floor'] / 1e9:.0f} TFLOP/s), eager {t['eager']:.3f} ms ({t['eager'] / t['floor']:.3f}x) "
              f"{fold_env or ''}; stats kernel {t['stats'] * 1e3:.1f} us")
        for c in CONFIGS:
            if c not in t:
                worst[c] = float("inf")
                continue
            r = t[c] / t["floor"]
            worst[c] = max(worst[c], r)
            print(f"  {c}: {t[c]:.3f} ms  {r:.3f}x floor  eager/qvdp {t['eager'] / t[c]:.2f}x")
    best = min(worst, key=worst.get)
    print("worst-case ratio per config:", {str(k): round(v, 3) for k, v in worst.items()})
    print("best:", best, f"{worst[best]:.3f}x")
    if a.winner:
        with open(a.winner, "w") as f:
            f.write(",".join(str(v) for v in best))


if __name__ == "__main__":
    main()
