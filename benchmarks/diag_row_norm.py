"""The merger's one-pass norm (`row_norm`) per row width, one GPU: one masked next-power-of-two block per
row (split=False, sessions 12-13) against a power-of-two main block plus a power-of-two tail block
(split=True: 4608 = 4096 + 512), and torch's LayerNorm, all timed in turn (CUDA events, 20 calls back to
back per sample, median of 15). Floor = bytes (read x, write y) / the x.clone() rate measured here.

    python benchmarks/diag_row_norm.py
"""
import torch
import torch.nn.functional as F

from _common import event_ms, time_interleaved

from qvdp.ops.patch_merger import row_norm


def main():
    print(torch.cuda.get_device_name(), flush=True)
    for width, n in ((1152, 14080), (1152, 56320), (4608, 3520), (4608, 14080), (4096, 3520), (4096, 14080)):
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(n, width, generator=g, device="cuda").bfloat16() * 2 + 0.5
        w = (torch.rand(width, generator=g, device="cuda") + 0.5).bfloat16()
        b = torch.randn(width, generator=g, device="cuda").bfloat16()
        fns = {"clone": lambda: x.clone(),
               "row_norm one block": lambda: row_norm(x, w, b, width, 1e-6, False, split=False),
               "row_norm main + tail": lambda: row_norm(x, w, b, width, 1e-6, False, split=True),
               "torch layer_norm": lambda: F.layer_norm(x, (width,), w, b, 1e-6)}
        ref = F.layer_norm(x.double(), (width,), w.double(), b.double(), 1e-6)
        errs = {k: ((fns[k]().double() - ref).norm() / ref.norm()).item() for k in fns if k.startswith("row")}
        t = time_interleaved(fns, warm=3, rep=15, timer=lambda f: event_ms(f, 20) * 1e3)
        print(f"width {width} rows {n}: " + ", ".join(f"{k} {v:.1f} us" for k, v in t.items())
              + f" | err {max(errs.values()):.1e}", flush=True)


if __name__ == "__main__":
    main()
