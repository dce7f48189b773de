"""Deferred biases in the residual stream (diagnostics, one GPU).

With `deferred_bias` the tower's proj and fc2 GEMMs accumulate into the residual stream in place (cuBLAS
beta=1) and the LayerNorm pass after each reads the stream once and writes only the normalised rows (the
biases, one fp32 prefix sum, added in registers): per residual step 4 -> 2 passes over [T, H] in the
LayerNorm kernel, plus one read of the stream inside the GEMM's epilogue.

(1) the pieces at 4 x 720p and the 32-frame video (T = 14080, 56320, H = 1152, I = 4304, bf16; CUDA
    events, 20 back-to-back calls, the variants timed in turn, best of 5 rounds): mm vs in-place addmm_ for proj and fc2, add_layernorm with
    the GEMM output vs the deferred form;
(2) the whole 1-GPU tower (4 x 720p captured as CUDA graphs; 16 mixed and the video run eagerly): deferred
    vs the session-7 form vs HF+FA3, timed in turn (median of 9 after 3 warm-ups), and at 4 x 720p each
    form's ‖out−ref‖/‖ref‖ against HF in fp32.

    python benchmarks/diag_deferred_bias.py [--workloads 4x720p ...] [--twice]
"""
import torch

from _common import event_ms, try_import_fa3
from encoder_systems import build_hf, hf_call, tower_ab, use_fa3_attention

import qvdp
from qvdp.ops.layernorm import add_layernorm


def pieces(T):
    H, I = 1152, 4304
    g = torch.Generator(device="cuda").manual_seed(0)
    bf = dict(device="cuda", dtype=torch.bfloat16)
    x = torch.randn(T, H, generator=g, **bf)
    o, h4 = torch.randn(T, H, generator=g, **bf), torch.randn(T, I, generator=g, **bf) * 0.1
    wp, wf = torch.randn(H, H, generator=g, **bf) * 0.03, torch.randn(H, I, generator=g, **bf) * 0.015
    y = torch.randn(T, H, generator=g, **bf)
    b, cum = torch.randn(H, generator=g, **bf), torch.randn(H, generator=g, device="cuda")
    w, lb = torch.rand(H, generator=g, **bf) + 0.5, torch.randn(H, generator=g, **bf)
    fns = {
        "proj mm": lambda: torch.mm(o, wp.t()),
        "proj addmm_ (in place)": lambda: x.addmm_(o, wp.t()),
        "fc2 mm": lambda: torch.mm(h4, wf.t()),
        "fc2 addmm_ (in place)": lambda: x.addmm_(h4, wf.t()),
        "add+LN (x, y, bias -> s, h)": lambda: add_layernorm(x, y, b, w, lb),
        "deferred LN (x, fp32 bias -> h)": lambda: add_layernorm(x, None, cum, w, lb, store_sum=False),
    }
    best = {k: float("inf") for k in fns}
    for _ in range(5):
        for k, f in fns.items():
            f()
            best[k] = min(best[k], event_ms(f, inner=20))
    for k, v in best.items():
        print(f"piece T={T} {k}: {v * 1e3:.1f} us", flush=True)
    print(f"T={T} per residual step (proj): {(best['proj mm'] + best['add+LN (x, y, bias -> s, h)']) * 1e3:.1f} -> "
          f"{(best['proj addmm_ (in place)'] + best['deferred LN (x, fp32 bias -> h)']) * 1e3:.1f} us; (fc2): "
          f"{(best['fc2 mm'] + best['add+LN (x, y, bias -> s, h)']) * 1e3:.1f} -> "
          f"{(best['fc2 addmm_ (in place)'] + best['deferred LN (x, fp32 bias -> h)']) * 1e3:.1f} us", flush=True)


def tower(names, twice):
    fa3 = try_import_fa3()
    dev = torch.device("cuda", 0)
    model = build_hf(dev)
    hf_fa3 = hf_call(use_fa3_attention(build_hf(dev), fa3)) if fa3 is not None else None
    if twice:  # each form twice, built in the order add+LN, deferred, deferred, add+LN: instance effects show
        fwd = {"add+LN": qvdp.Qwen3VLVisionForward(model, deferred_bias=False),
               "deferred": qvdp.Qwen3VLVisionForward(model, deferred_bias=True),
               "deferred #2": qvdp.Qwen3VLVisionForward(model, deferred_bias=True),
               "add+LN #2": qvdp.Qwen3VLVisionForward(model, deferred_bias=False)}
    else:
        fwd = {"deferred": qvdp.Qwen3VLVisionForward(model, deferred_bias=True),
               "add+LN": qvdp.Qwen3VLVisionForward(model, deferred_bias=False)}
    tower_ab(fwd, "deferred", "add+LN", names, dev, hf_fa3)


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", nargs="+", default=["4x720p", "16 mixed", "video 32f"])
    ap.add_argument("--twice", action="store_true", help="two instances of each form (tower only)")
    a = ap.parse_args()
    if not a.twice:
        for T in (14080, 56320):
            pieces(T)
    tower(a.workloads, a.twice)


if __name__ == "__main__":
    main()
