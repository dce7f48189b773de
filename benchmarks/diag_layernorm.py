"""Launch shape of the residual LayerNorm pass (diagnostics, one GPU): rows per program x warps for the
deferred form (read x, write h: 2 x T x H x 2 bytes) and the add form (read x, y, write s, h: 4 x), at
T = 14080 (4 x 720p) and 56320 (the 32-frame video), H = 1152, bf16. CUDA events over 20 back-to-back
calls, best of 3; floor = bytes / the best device-to-device copy rate measured here (x.clone()).

    python benchmarks/diag_layernorm.py
"""
import torch
import triton

from _common import best_event_ms

from qvdp.ops.layernorm import _add_layernorm


def main():
    H = 1152
    for T in (14080, 56320):
        g = torch.Generator(device="cuda").manual_seed(0)
        bf = dict(device="cuda", dtype=torch.bfloat16)
        x, y = torch.randn(T, H, generator=g, **bf), torch.randn(T, H, generator=g, **bf)
        cum = torch.randn(H, generator=g, device="cuda")
        w, lb = torch.rand(H, generator=g, **bf) + 0.5, torch.randn(H, generator=g, **bf)
        s, h = torch.empty_like(x), torch.empty_like(x)
        copy = best_event_ms(lambda: x.clone())
        bw = 2 * x.numel() * 2 / (copy * 1e-3)
        print(f"T={T}: x.clone() {copy * 1e3:.1f} us = {bw / 1e12:.2f} TB/s", flush=True)
        for form, has_y in (("deferred", False), ("add", True)):
            nbytes = (4 if has_y else 2) * x.numel() * 2
            res = []
            for rows in (1, 2, 4, 8, 16):
                for warps in (2, 4, 8, 16):
                    def run(rows=rows, warps=warps):
                        _add_layernorm[(triton.cdiv(T, rows),)](
                            x, y, cum, w, lb, s, h, T, H, 1e-6, HAS_Y=has_y, HAS_BIAS=True, HAS_LN=True,
                            STORE_S=has_y, ROWS=rows, BLOCK=2048, num_warps=warps)
                    try:
                        run()
                        t = best_event_ms(run)
                    except Exception as e:  # e.g. out of registers / shared memory
                        print(f"  {form} rows={rows} warps={warps}: {type(e).__name__}", flush=True)
                        continue
                    res.append((t, rows, warps))
            res.sort()
            cur_rows, cur_warps = 2, 8  # add_layernorm's launch for H = 1152
            cur = [t for t, r, wp in res if (r, wp) == (cur_rows, cur_warps)]
            floor = nbytes / bw * 1e3
            print(f"  {form}: floor {floor * 1e3:.1f} us; current (rows 2, 8 warps) "
                  f"{cur[0] * 1e3 if cur else float('nan'):.1f} us; best: " +
                  ", ".join(f"rows {r} warps {wp} {t * 1e3:.1f} us" for t, r, wp in res[:5]), flush=True)


if __name__ == "__main__":
    main()
