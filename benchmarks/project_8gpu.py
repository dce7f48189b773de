"""A modelled 8-GPU projection (NOT a measurement): planner makespans x measured per-GPU throughput.

t_W(projected) = t_1(qvdp, measured) * makespan_W / total_FLOPs + overhead_W, with the overhead
(gather, planning, rank check, imbalance the model misses) taken from the measured 4-GPU run:
overhead_4 = t_4 - t_1 * makespan_4 / total, scaled by the gathered bytes per rank ((W-1)/W).
Inputs: benchmarks/results/encoder-h100.md (one run, 4 x H100).
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qvdp import QWEN3_VL_8B, plan_makespan, plan_shards  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_encoder import workloads  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
table = open(os.path.join(here, "results", "encoder-h100.md")).read()


def measured(wl, system):
    m = re.search(r"\| " + re.escape(wl) + r" \| " + re.escape(system) + r" \| ([0-9.]+) \|", table)
    return float(m.group(1)) if m else None


rows = ["| workload | qvdp 1 GPU (measured) | qvdp DP x4 (measured) | DP x8 (projected) | projected scaling x8 | "
        "SGLang-style x8 (projected) |", "|---|---|---|---|---|---|"]
for name, grid in workloads():
    t1 = measured(name, "qvdp (1 GPU)")
    t4 = measured(name, "qvdp DP x4")
    s4 = measured(name, "SGLang-style DP x4")
    h1 = measured(name, "HF+FA3 (1 GPU)")
    total = sum(QWEN3_VL_8B.frame_flops(h * w) * t for t, h, w in grid)
    mk = {W: plan_makespan(plan_shards(grid, W, QWEN3_VL_8B), QWEN3_VL_8B) for W in (4, 8)}
    pk = {W: plan_makespan(plan_shards(grid, W, QWEN3_VL_8B, policy="patches"), QWEN3_VL_8B) for W in (4, 8)}
    o4 = max(t4 - t1 * mk[4] / total, 0.0)
    t8 = t1 * mk[8] / total + o4 * (7 / 8) / (3 / 4)
    so4 = max(s4 - h1 * pk[4] / total, 0.0)
    s8 = h1 * pk[8] / total + so4 * (7 / 8) / (3 / 4)
    rows.append(f"| {name} | {t1:.1f} | {t4:.1f} | {t8:.1f} | {t1 / (8 * t8):.2f} | {s8:.1f} |")
text = ("# 8-GPU projection (modelled, not measured)\n\n" + __doc__.strip() + "\n\n" + "\n".join(rows) + "\n")
open(os.path.join(here, "results", "encoder-8gpu-projection.md"), "w").write(text)
print(text)
