"""Vision block MLP fc1 + bias + tanh-GELU: GEMM then a separate GELU pass (HF) vs one cuBLASLt GEMM
with the bias+GELU epilogue (`torch._addmm_activation`, what qvdp's forward uses on CUDA), and the
whole MLP (fc1 + GELU + fc2). Qwen3-VL-8B widths (1152 -> 4304 -> 1152), bf16. One card, one run.

    python benchmarks/bench_mlp.py
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from _common import bench, write_results

SHAPES = [("4x720p", 4 * 3520), ("4x1280^2", 4 * 6400), ("16 mixed / 1 rank", 9000), ("64 small", 64 * 256)]


def main():
    torch.manual_seed(0)
    dt, dev = torch.bfloat16, "cuda"
    H, I = 1152, 4304
    w1, b1 = torch.randn(I, H, device=dev, dtype=dt) * 0.03, torch.randn(I, device=dev, dtype=dt)
    w2, b2 = torch.randn(H, I, device=dev, dtype=dt) * 0.02, torch.randn(H, device=dev, dtype=dt)
    rows = []
    for name, n in SHAPES:
        x = torch.randn(n, H, device=dev, dtype=dt)
        fc1_sep = lambda: F.gelu(F.linear(x, w1, b1), approximate="tanh")  # noqa: E731
        fc1_fused = lambda: torch._addmm_activation(b1, x, w1.t(), use_gelu=True)  # noqa: E731
        err = ((fc1_fused().double() - fc1_sep().double()).norm() / fc1_sep().double().norm()).item()
        t_sep, t_fused = bench(fc1_sep), bench(fc1_fused)
        mlp_sep = lambda: F.linear(fc1_sep(), w2, b2)  # noqa: E731
        mlp_fused = lambda: F.linear(fc1_fused(), w2, b2)  # noqa: E731
        m_sep, m_fused = bench(mlp_sep), bench(mlp_fused)
        fl1 = 2.0 * n * H * I
        rows.append([name, n, t_sep, t_fused, fl1 / t_fused / 1e9, t_sep / t_fused, m_sep, m_fused, m_sep / m_fused,
                     err])
    write_results("mlp", "Vision MLP: fc1 + bias + tanh-GELU fused in the cuBLASLt epilogue vs GEMM + GELU (bf16)",
                  ["shape", "rows", "fc1+GELU sep ms", "fc1 fused ms", "fused TFLOP/s", "speedup",
                   "MLP sep ms", "MLP fused ms", "MLP speedup", "rel diff"], rows,
                  notes="speedup = separate / fused (>1: fused faster). rel diff: fused vs separate, "
                        "‖a−b‖/‖b‖ (both bf16 outputs).")


if __name__ == "__main__":
    main()
