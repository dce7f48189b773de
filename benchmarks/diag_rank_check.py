"""Where the rank check's time goes (diagnostics, 4 GPUs): run_dp_sharded_vision on 16 mixed images with and
without check_ranks, timed in turn after a barrier, and on every call with the check the host time spent
waiting in each status check (the plan check, waited for before the first gather; the ok-flag check behind
the last gather) and the host time from the call's start to the first gather being issued. Prints the
per-rank medians (ms). Written in session 7 after the asynchronous check left 0.7-1.3 ms unexplained; not
yet run.

    python benchmarks/diag_rank_check.py [--world 4]
"""
import argparse
import statistics
import time

import torch

from _common import finish_worker, init_nccl_worker, spawn_ranks, time_interleaved, wall_ms
from bench_encoder import pixels, workloads
from encoder_systems import build_hf

import qvdp
import qvdp.encoder as enc


def _worker(rank, world, port, q):
    import torch.distributed as dist
    dev = init_nccl_worker(rank, world, port)
    model = build_hf(dev)
    qf = qvdp.Qwen3VLVisionForward(model)
    grid = dict(workloads())["16 mixed"]
    px = pixels(grid, dev)
    waits, t0 = [], [0.0]
    orig = enc._StatusCheck.result

    def timed_result(self):
        a = time.perf_counter()
        try:
            return orig(self)
        finally:
            waits.append(((a - t0[0]) * 1e3, (time.perf_counter() - a) * 1e3))

    enc._StatusCheck.result = timed_result

    def with_check():
        t0[0] = time.perf_counter()
        return qvdp.run_dp_sharded_vision(model, px, grid, forward=qf)

    r = time_interleaved({"check": with_check,
                          "no check": lambda: qvdp.run_dp_sharded_vision(model, px, grid, forward=qf,
                                                                         check_ranks=False)},
                         warm=3, rep=15, timer=lambda fn: (dist.barrier(), wall_ms(fn))[1])
    pre = [w for i, w in enumerate(waits) if i % 2 == 0]
    fin = [w for i, w in enumerate(waits) if i % 2 == 1]
    out = dict(r, **{"host ms to the plan-check wait": statistics.median(w[0] for w in pre),
                     "plan-check wait ms": statistics.median(w[1] for w in pre),
                     "host ms to the final-check wait": statistics.median(w[0] for w in fin),
                     "final-check wait ms": statistics.median(w[1] for w in fin)})
    finish_worker(rank, q, out, per_rank=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=min(4, torch.cuda.device_count()))
    a = ap.parse_args()
    for rank, res in enumerate(spawn_ranks(_worker, a.world, timeout_s=900)):
        print(f"rank {rank}: " + ", ".join(f"{k} {v:.3f}" for k, v in res.items()), flush=True)


if __name__ == "__main__":
    main()
