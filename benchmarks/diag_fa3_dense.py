"""FA3 for batches of equal segments (diagnostics): its fixed-length kernel (flash_attn_func on a
[S, L, H, D] view of the packed rows) against its varlen kernel, (1) the attention call alone at the
tower's shapes (H=16, D=72, bf16; v a strided view of qkv) and (2) the whole 1-GPU tower (CUDA graphs),
both ways timed in turn in one process (QVDP_FA3_DENSE=1 forces the fixed-length kernel, =0 the varlen
one; a graphed forward keeps the mode it was captured with).

    python benchmarks/diag_fa3_dense.py
"""
import os

import torch

from _common import event_ms, time_interleaved, try_import_fa3
from bench_encoder import pixels
from encoder_systems import build_hf

import qvdp
from qvdp.ops.attention import fa3_available, varlen_attention


def main():
    try_import_fa3()
    if not fa3_available():
        print("no FA3")
        return
    H, D = 16, 72
    for S, L in ((4, 3520), (4, 6400), (16, 3520), (64, 256)):
        T = S * L
        qkv = torch.randn(T, 3, H, D, device="cuda", dtype=torch.bfloat16)
        q, k, v = qkv.unbind(1)
        q, k = q.contiguous(), k.contiguous()
        cu = torch.arange(0, T + 1, L, device="cuda", dtype=torch.int32)
        res = {}
        for mode in ("1", "0"):
            os.environ["QVDP_FA3_DENSE"] = mode
            res[mode] = varlen_attention(q, k, v, cu, L, backend="fa3", validate=False)
        err = ((res["1"].float() - res["0"].float()).norm() / res["0"].float().norm()).item()
        ts = {}
        for mode in ("1", "0", "1", "0"):
            os.environ["QVDP_FA3_DENSE"] = mode
            ts.setdefault(mode, []).append(event_ms(lambda: varlen_attention(q, k, v, cu, L, backend="fa3",
                                                                             validate=False), inner=20))
        d, vl = min(ts["1"]), min(ts["0"])
        tf = 4 * S * L * L * H * D / 1e12
        print(f"attention {S}x{L}: dense {d * 1e3:.1f} us ({tf / d * 1e3:.0f} TFLOP/s), varlen {vl * 1e3:.1f} us "
              f"({tf / vl * 1e3:.0f} TFLOP/s), dense/varlen time {d / vl:.3f}, rel diff {err:.1e}", flush=True)
    dev = torch.device("cuda", 0)
    model = build_hf(dev)
    for name, grid in (("4x720p", [[1, 44, 80]] * 4), ("video 32f", [[16, 44, 80]]), ("4x1280^2", [[1, 80, 80]] * 4)):
        px = pixels(grid, dev)
        g = tuple(map(tuple, grid))
        fns, outs = {}, {}
        for mode in ("1", "0"):
            os.environ["QVDP_FA3_DENSE"] = mode
            f = qvdp.Qwen3VLVisionForward(model)
            for _ in range(3):  # eager, eager, capture (the graph keeps this mode's calls)
                outs[mode] = f(px, g)[0]
            # the mode is set again before each call: forwards too large for a graph run eagerly
            fns[f"dense={mode}"] = (lambda f=f, mode=mode: (os.environ.__setitem__("QVDP_FA3_DENSE", mode),
                                                           f(px, g)))
        err = ((outs["1"].float() - outs["0"].float()).norm() / outs["0"].float().norm()).item()
        r = time_interleaved(fns, warm=2, rep=15)
        print(f"tower {name}: dense {r['dense=1']:.2f} ms, varlen {r['dense=0']:.2f} ms, "
              f"ratio {r['dense=0'] / r['dense=1']:.3f}, rel diff {err:.1e}", flush=True)
    os.environ.pop("QVDP_FA3_DENSE", None)


if __name__ == "__main__":
    main()
