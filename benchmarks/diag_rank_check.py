"""Where the rank check's time goes (diagnostics, 4 GPUs): run_dp_sharded_vision on 16 mixed images with and
without check_ranks, timed in turn after a barrier, and on every call with the check the host time spent
waiting in each status check (the plan check, waited for before the first gather; the ok-flag check behind
the last gather) and the host time from the call's start to each wait. A third variant enqueues both checks'
collectives but never waits for them on the host ("check, no host waits"): it separates the host waits from
the GPU-side cost of the two small all_gathers. Prints the per-rank medians (ms) per workload. Written in
session 7 after the asynchronous check left 0.7-1.3 ms unexplained; session 8's runs also timed the
session-7 placement (the plan check built before the forward) through a switch since removed
(results/logs/h100x4-s8/diag_rank_check-*.log).

    python benchmarks/diag_rank_check.py [--world 4] [--workloads "16 mixed" 4x720p]
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


def _worker(rank, world, port, names, q):
    dev = init_nccl_worker(rank, world, port)
    model = build_hf(dev)
    qf = qvdp.Qwen3VLVisionForward(model)
    out = {}
    for name in names:
        for k, v in _measure(model, qf, dict(workloads())[name], dev).items():
            out[f"{name}: {k}"] = v
    finish_worker(rank, q, out, per_rank=True)


def _measure(model, qf, grid, dev):
    import torch.distributed as dist
    px = pixels(grid, dev)
    waits, t0, wait_host = [], [0.0], [True]
    orig = enc._StatusCheck.result

    def timed_result(self):
        if not wait_host[0]:  # the collectives stay enqueued on the GPU; the host does not wait for them
            return None
        a = time.perf_counter()
        try:
            return orig(self)
        finally:
            waits.append(((a - t0[0]) * 1e3, (time.perf_counter() - a) * 1e3))

    enc._StatusCheck.result = timed_result
    builds, orig_init = [], enc._StatusCheck.__init__

    def timed_init(self, *a, **k):
        b = time.perf_counter()
        orig_init(self, *a, **k)
        builds.append((time.perf_counter() - b) * 1e3)

    enc._StatusCheck.__init__ = timed_init

    def with_check(wait=True):
        def run():
            wait_host[0] = wait
            t0[0] = time.perf_counter()
            return qvdp.run_dp_sharded_vision(model, px, grid, forward=qf)
        return run

    r = time_interleaved({"check": with_check(),
                          "check, no host waits": with_check(False),
                          "no check": lambda: qvdp.run_dp_sharded_vision(model, px, grid, forward=qf,
                                                                         check_ranks=False)},
                         warm=3, rep=15, timer=lambda fn: (dist.barrier(), wall_ms(fn))[1])
    pre = [w for i, w in enumerate(waits) if i % 2 == 0]
    fin = [w for i, w in enumerate(waits) if i % 2 == 1]
    enc._StatusCheck.result, enc._StatusCheck.__init__ = orig, orig_init
    return dict(r, **{"host ms to build one check": statistics.median(builds),
                      "host ms to the plan-check wait": statistics.median(w[0] for w in pre),
                      "plan-check wait ms": statistics.median(w[1] for w in pre),
                      "host ms to the final-check wait": statistics.median(w[0] for w in fin),
                      "final-check wait ms": statistics.median(w[1] for w in fin)})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=min(4, torch.cuda.device_count()))
    ap.add_argument("--workloads", nargs="+", default=["16 mixed", "4x720p"])
    a = ap.parse_args()
    for rank, res in enumerate(spawn_ranks(_worker, a.world, a.workloads, timeout_s=900)):
        print(f"rank {rank}: " + ", ".join(f"{k} {v:.3f}" for k, v in res.items()), flush=True)


if __name__ == "__main__":
    main()
