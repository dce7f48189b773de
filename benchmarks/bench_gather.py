"""Ordered variable-size gather of Qwen3-VL-8B embeddings (16384-wide bf16 rows: main + 3 deepstack).

    python benchmarks/bench_gather.py [--worlds 2 4] [--out DIR]

Systems: qvdp push (SM stores over NVLink into symmetric-memory outputs, flag barriers, relay for one
owner of most rows; qvdp/dist/push.py); qvdp native (auto = the default: a plain ncclAllGather when the plan gives every rank one
equal run in rank order, else NCCL grouped broadcasts; or forced bcast / p2p send/recv) straight into
final rows; qvdp's
torch.distributed path; torch's uneven all_gather (coalesced broadcast) + reorder; the SGLang/vLLM
path (pad to max rows, all_gather_into_tensor, slice, cat in order); the floor = one
all_gather_into_tensor of equal-size buffers holding the same total bytes.
"""
from __future__ import annotations

import argparse

import torch

from _common import bar_plot, finish_worker, init_nccl_worker, slowest_rank_us, spawn_ranks, write_results

WIDTH = 16384
WORKLOADS = [("4x720p", [[1, 44, 80]] * 4), ("skewed 1280^2+3x256^2", [[1, 80, 80]] + [[1, 16, 16]] * 3),
             ("one 720p image", [[1, 44, 80]]), ("64x256^2", [[1, 16, 16]] * 64),
             ("32-frame video", [[16, 44, 80]])]


def _worker(rank, world, port, q):
    import torch.distributed as dist
    from qvdp import plan_shards
    from qvdp.dist.gather import _gather_rows_torch
    dev = init_nccl_worker(rank, world, port, timeout_s=300)
    try:
        from qvdp.dist.native import gather_rows_native
        native = True
    except Exception:
        native = False
    try:
        from qvdp import _C  # noqa: F401
    except Exception:
        native = False
    out = {}
    try:  # the push backend's output: one symmetric buffer for every workload, allocated once
        from qvdp.dist.push import symmetric_empty
        sbuf = symmetric_empty(max(plan_shards(g, world).total_rows for _, g in WORKLOADS), WIDTH, torch.bfloat16)
    except Exception as e:  # noqa: BLE001
        print(f"rank {rank}: push backend unavailable: {type(e).__name__}: {str(e)[:200]}", flush=True)
        sbuf = None

    for name, grid in WORKLOADS:
        plan = plan_shards(grid, world)        # qvdp: FLOP plan, frames split
        pplan = plan_shards(grid, world, policy="patches")  # engines: whole items by patch count
        g = torch.Generator(device=dev).manual_seed(rank)
        local = torch.randn(plan.rows(rank), WIDTH, generator=g, device=dev).to(torch.bfloat16)
        plocal = torch.randn(pplan.rows(rank), WIDTH, generator=g, device=dev).to(torch.bfloat16)
        total = plan.total_rows
        fns = {}
        if native:
            for mode in ("auto", "bcast", "p2p"):
                fns[f"qvdp native ({mode})"] = (lambda m: lambda: gather_rows_native([local], plan, None, "concat", m))(mode)
        fns["qvdp torch path"] = lambda: _gather_rows_torch([local], plan, None, rank, "concat")
        exact = None
        if sbuf is not None:
            import qvdp
            fns["qvdp push"] = lambda: qvdp.gather_rows([local], plan, layout="concat", backend="push", out=sbuf)
            from qvdp.dist import push as _push  # noqa: E402

            def with_setting(name, value):  # a module default flipped for this call only
                def f():
                    old = getattr(_push, name)
                    setattr(_push, name, value)
                    try:
                        return qvdp.gather_rows([local], plan, layout="concat", backend="push", out=sbuf)
                    finally:
                        setattr(_push, name, old)
                return f
            if _push._native() is not None and _push.use_relay(plan):  # the default is the pipelined relay
                fns["qvdp push (relay in two stages)"] = with_setting("PIPELINED_RELAY", "0")
            fns["qvdp auto (out=)"] = lambda: qvdp.gather_rows([local], plan, layout="concat", out=sbuf)
            if native:  # NCCL straight into the symmetric buffer (what "auto" runs when it picks native)
                fns["qvdp native (auto) into out="] = lambda: gather_rows_native([local], plan, None, "concat", "auto",
                                                                                 outs=[sbuf[:plan.total_rows]])
            if native:  # "auto" measuring its choice on the first call of the plan's class (tune=True)
                fns["qvdp auto tuned (out=)"] = lambda: qvdp.gather_rows([local], plan, layout="concat", out=sbuf,
                                                                          tune=True)
            good = 1
            for k in [k for k in fns if k.startswith(("qvdp push", "qvdp auto"))]:
                sbuf.fill_(float("nan"))
                good &= int(torch.equal(fns[k](), fns["qvdp torch path"]()))
            ok = torch.tensor([good], device=dev)
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
            exact = bool(ok.item())

        rows = [pplan.rows(i) for i in range(world)]

        def uneven():
            buf = torch.empty(total, WIDTH, dtype=torch.bfloat16, device=dev)
            views, o = [], 0
            for n in rows:
                views.append(buf[o:o + n])
                o += n
            dist.all_gather(views, plocal)
            # reorder into request order (rank-major -> item order) unless already in order
            order, o = [], 0
            for i in range(world):
                for p in pplan.pieces[i]:
                    order.append((p.out_start, o, p.num_rows))
                    o += p.num_rows
            if any(a != b for a, b, _ in order):
                res = torch.empty_like(buf)
                for dst, src, n in order:
                    res[dst:dst + n] = buf[src:src + n]
                return res
            return buf
        fns["torch uneven all_gather"] = uneven

        def padded():
            mx = max(rows)
            pad = torch.zeros(mx, WIDTH, dtype=torch.bfloat16, device=dev)
            pad[:plocal.shape[0]] = plocal
            gathered = torch.empty(world * mx, WIDTH, dtype=torch.bfloat16, device=dev)
            dist.all_gather_into_tensor(gathered, pad)
            items = {}
            for i in range(world):
                o = i * mx
                for p in pplan.pieces[i]:
                    items[p.item] = gathered[o:o + p.num_rows]
                    o += p.num_rows
            return torch.cat([items[i] for i in range(len(grid))])
        fns["SGLang/vLLM padded"] = padded

        per = -(-total // world)
        fl_in = torch.randn(per, WIDTH, device=dev).to(torch.bfloat16)
        fl_out = torch.empty(world * per, WIDTH, dtype=torch.bfloat16, device=dev)
        fns["floor (equal all_gather_into_tensor)"] = lambda: dist.all_gather_into_tensor(fl_out, fl_in)
        r = slowest_rank_us(fns, dev)  # systems timed in turn, 30 calls after 5 warm-ups
        r["_bytes"] = total * WIDTH * 2
        out[name] = r
        if native and sbuf is not None:  # host time of one tuned call (python + launches), median of 10
            import time
            hs = []
            for _ in range(10):
                dist.barrier()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                fns["qvdp auto tuned (out=)"]()
                hs.append((time.perf_counter() - t0) * 1e6)
            torch.cuda.synchronize()
            from qvdp.dist.gather import TUNE_TIMES
            if rank == 0:
                print(world, name, "tuned: host us per call", round(sorted(hs)[5], 1), "; tuning runs (us):",
                      list(TUNE_TIMES.values())[-1:], flush=True)
        if rank == 0:
            print(world, name, "push exact on every rank:", exact, {k: round(v, 1) for k, v in r.items() if not k.startswith("_")}, flush=True)
    finish_worker(rank, q, out)


def run(world):
    return spawn_ranks(_worker, world, timeout_s=900)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worlds", nargs="*", type=int, default=[2, 4])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows, groups, series = [], [], {}
    shown = ("qvdp auto (out=)", "qvdp auto tuned (out=)", "qvdp push", "qvdp native (auto)", "torch uneven all_gather", "SGLang/vLLM padded")
    for w in [w for w in args.worlds if w <= torch.cuda.device_count()]:
        res = run(w)
        for name, r in res.items():
            groups.append(f"{w} GPUs: {name}")
            for k in shown:
                series.setdefault(k, []).append(r[k] / r["floor (equal all_gather_into_tensor)"] if k in r else None)
            floor = r["floor (equal all_gather_into_tensor)"]
            best_q = min(v for k, v in r.items() if k.startswith("qvdp"))
            for k, v in r.items():
                if k.startswith("_"):
                    continue
                rows.append([w, name, k, v, r["_bytes"] / v / 1e3, f"{v / floor:.2f}x",
                             f"{v / best_q:.2f}x"])
    write_results("gather", "Ordered gather of 16384-wide bf16 rows (µs, slowest rank, median of 30, systems timed in turn)",
                  ["GPUs", "workload", "system", "µs", "GB/s (output bytes)", "time / floor", "time / best qvdp"],
                  rows, "qvdp uses its FLOP plan (video frames split); the engines' paths use whole-item patch-count "
                  "plans. floor: all_gather_into_tensor of equal buffers with the same total bytes. qvdp native (auto) "
                  "is the default: one ncclAllGather when every rank owns one equal run in rank order (4x720p, "
                  "64 small and the video get such contiguous plans), else grouped broadcasts. qvdp push: "
                  "gather_rows(..., out=symmetric buffer), checked exact against the torch path on every rank before timing "
                  "(the pipelined relay on relay plans, 3+ GPUs; also the relay in two stages). qvdp auto (out=): the default "
                  "gather_rows(..., out=) picks push or the native NCCL gather per plan (push.prefer_push); qvdp auto tuned (out=): "
                  "gather_rows(..., out=, tune=True) times push and the NCCL modes on the first call of the plan's class "
                  "(slowest rank's median of 5 single calls each) and keeps the fastest.",
                  out_dir=args.out)
    if groups:
        bar_plot("gather", groups, series, "time / floor (equal all_gather_into_tensor)", out_dir=args.out)


if __name__ == "__main__":
    main()
