"""Where the encoder's time goes (diagnostics, not a results table).

    python benchmarks/diag_encoder.py single [--out DIR]   # 1 GPU
    python benchmarks/diag_encoder.py dp --world 4 [--out DIR]
    python benchmarks/diag_encoder.py profile [--out DIR]  # only the 4 x 720p profile

single: full forward per workload (qvdp with attention "auto" - FA3 where it imports - and with
  its Triton attention); each DP rank's share timed alone on this one GPU (what DP could reach with zero
  overhead); per-patch cost against frame size (to calibrate the planner's cost model); a
  torch.profiler summary of one 4 x 720p forward (GPU time by kernel family, launches, GPU busy
  fraction of the wall time).
dp: per rank, per workload: the local forward alone (after a barrier), the whole
  run_dp_sharded_vision call, and its gather alone; median and spread of 10 runs.
Writes JSON to --out (diag-encoder-<mode>.json).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import torch

from _common import finish_worker, init_nccl_worker, spawn_ranks, time_runs, try_import_fa3
from bench_encoder import pixels, workloads
from encoder_systems import build_hf

import qvdp
from qvdp import plan_shards
from qvdp.geometry import QWEN3_VL_8B


def timed(fn, rep=10, warm=2, sync=None):
    ts = time_runs(fn, warm, rep, sync)
    return {"med": statistics.median(ts), "min": min(ts), "max": max(ts)}


def local_share(plan, rank, grid, px):
    pieces = plan.pieces[rank]
    if not pieces:
        return None, None
    rows, lgrid = [], []
    for p in pieces:
        rows.append(px[p.patch_start:p.patch_end])
        lgrid.append((p.num_frames, grid[p.item][1], grid[p.item][2]))
    return torch.cat(rows), tuple(lgrid)


def family(name: str) -> str:
    n = name.lower()
    for key, fam in (("_varlen_attn_fwd", "attention (qvdp)"), ("_pack_kv", "attention pack_kv"),
                     ("flash", "attention (FA3)"), ("_rope_qk", "rope (qvdp)"),
                     ("_add_layernorm", "add+LayerNorm (qvdp)"), ("_pos_embed_add", "pos-embed add (qvdp)"), ("merger", "merger (Triton)"),
                     ("gemm", "GEMM"), ("cutlass", "GEMM"), ("nvjet", "GEMM"), ("sm90_xmma", "GEMM"),
                     ("layer_norm", "LayerNorm"), ("elementwise", "elementwise"), ("reduce", "reduce"),
                     ("copy", "copy/cast"), ("cat", "cat"), ("index", "index/gather")):
        if key in n:
            return fam
    return "other"


def profile_summary(fn):
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1e3
    fams, kernels, n_launch, gpu = {}, {}, 0, 0.0
    for e in prof.key_averages():
        dt = getattr(e, "device_type", None)
        t = getattr(e, "self_device_time_total", None)
        if t is None:
            t = getattr(e, "self_cuda_time_total", 0)
        if t <= 0 or (dt is not None and "CUDA" not in str(dt)):
            continue
        ms = t / 1e3
        gpu += ms
        n_launch += e.count
        f = family(e.key)
        fams[f] = fams.get(f, 0.0) + ms
        kernels[e.key[:90]] = (kernels.get(e.key[:90], (0.0, 0))[0] + ms, e.count)
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:25]
    # idle GPU time before each kernel, by the family of the kernel that follows the gap
    gaps, dev_ev = {}, []
    for e in prof.events():
        dt = str(getattr(e, "device_type", ""))
        if "CUDA" in dt and e.time_range.end > e.time_range.start:
            dev_ev.append((e.time_range.start, e.time_range.end, e.name))
    dev_ev.sort()
    for (s0, e0, _), (s1, _, n1) in zip(dev_ev, dev_ev[1:]):
        if s1 > e0:
            f = family(n1) if "memset" not in n1.lower() else "memset"
            gaps[f] = gaps.get(f, 0.0) + (s1 - e0) / 1e3
    return {"wall_ms": wall, "gpu_kernel_ms": gpu, "launches": n_launch,
            "gaps_before_ms": dict(sorted(gaps.items(), key=lambda kv: -kv[1])),
            "span_ms": (dev_ev[-1][1] - dev_ev[0][0]) / 1e3 if dev_ev else 0.0,
            "families_ms": dict(sorted(fams.items(), key=lambda kv: -kv[1])),
            "top_kernels": [(k, round(v[0], 3), v[1]) for k, v in top]}


def single(out_dir):
    dev = torch.device("cuda", 0)
    model = build_hf(dev)
    fwds = {"auto": qvdp.Qwen3VLVisionForward(model),
            "triton": qvdp.Qwen3VLVisionForward(model, attention_backend="triton")}
    try_import_fa3()
    res = {"card": torch.cuda.get_device_name(), "full": {}, "shards": {}, "calib": {}, "profile": {}}
    for name, grid in workloads():
        px = pixels(grid, dev)
        g = tuple(map(tuple, grid))
        ref = None
        for b, f in fwds.items():
            r = timed(lambda: f(px, g))
            out = f(px, g)[0].float()
            if ref is None:
                ref = out
            r["rel_vs_triton"] = ((out - ref).norm() / ref.norm()).item()
            res["full"][f"{name} / {b}"] = r
            print("full", name, b, r, flush=True)
        for W in (2, 4):
            plan = plan_shards(grid, W)
            per = []
            for rank in range(W):
                lpx, lg = local_share(plan, rank, grid, px)
                per.append(timed(lambda: fwds["auto"](lpx, lg), rep=5)["med"] if lpx is not None else 0.0)
            full = res["full"][f"{name} / auto"]["med"]
            res["shards"][f"{name} / W{W}"] = {"per_rank_ms": per, "max": max(per), "ideal": full / W,
                                               "max_over_ideal": max(per) / (full / W),
                                               "modelled_imbalance": plan.imbalance}
            print("shards", name, W, res["shards"][f"{name} / W{W}"], flush=True)
    # per-patch cost vs frame size: k frames of h x w, ~14k patches per call
    for h, w in ((8, 8), (16, 16), (24, 32), (32, 32), (44, 80), (64, 64), (80, 80), (68, 120), (128, 128)):
        n = h * w
        k = max(1, round(14080 / n))
        grid = tuple([(1, h, w)] * k)
        px = pixels([list(x) for x in grid], dev)
        r = timed(lambda: fwds["auto"](px, grid), rep=5)
        res["calib"][f"{h}x{w}"] = {"patches": n, "frames": k, "ms": r["med"], "us_per_patch": r["med"] * 1e3 / (n * k)}
        print("calib", h, w, res["calib"][f"{h}x{w}"], flush=True)
    grid = ((1, 44, 80),) * 4
    px = pixels([list(x) for x in grid], dev)
    for b, f in fwds.items():
        res["profile"][b] = profile_summary(lambda: f(px, grid))
        print("profile", b, json.dumps(res["profile"][b], indent=1), flush=True)
    small = ((1, 16, 16),) * 16
    pxs = pixels([list(x) for x in small], dev)
    res["profile"]["auto 16x256^2"] = profile_summary(lambda: fwds["auto"](pxs, small))
    print("profile small", json.dumps(res["profile"]["auto 16x256^2"], indent=1), flush=True)
    return res


def host_gpu_split(fn):
    """One call after a sync: (host enqueue ms, GPU ms between CUDA events around it, wall ms)."""
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    a.record()
    fn()
    t1 = time.perf_counter()
    b.record()
    b.synchronize()
    return (t1 - t0) * 1e3, a.elapsed_time(b), (time.perf_counter() - t0) * 1e3


def profile_only(out_dir):
    """The torch.profiler summary of one 4 x 720p forward (auto backend, graph replay), and the same
    call timed (median of 10): kernel time vs wall."""
    dev = torch.device("cuda", 0)
    model = build_hf(dev)
    try_import_fa3()
    f = qvdp.Qwen3VLVisionForward(model)
    grid = ((1, 44, 80),) * 4
    px = pixels([list(x) for x in grid], dev)
    res = {"card": torch.cuda.get_device_name(), "timed": timed(lambda: f(px, grid)),
           "profile": profile_summary(lambda: f(px, grid)), "split": []}
    # host enqueue time vs GPU time (events) vs wall, per call
    for _ in range(5):
        host, gpu, wall = host_gpu_split(lambda: f(px, grid))
        res["split"].append({"host_enqueue_ms": host, "gpu_events_ms": gpu, "wall_ms": wall})
    # each graph replay alone (events around it)
    ent = next(iter(f._graphs.values()), None)
    if ent is not None:
        per = []
        for gr in ent[1]:
            host, gpu, _ = host_gpu_split(gr.replay)
            per.append({"gpu_ms": gpu, "host_replay_ms": host})
        res["replays"] = per
    fe = qvdp.Qwen3VLVisionForward(model, cuda_graphs=False)
    res["eager"] = timed(lambda: fe(px, grid))
    print("profile 4x720p", json.dumps(res, indent=1), flush=True)
    return res


def _dp_worker(rank, world, port, q):
    import torch.distributed as dist
    dev = init_nccl_worker(rank, world, port)
    model = build_hf(dev)
    qf = qvdp.Qwen3VLVisionForward(model)
    out = {}
    only = [w for w in os.environ.get("QVDP_DIAG_ONLY", "").split(",") if w]
    for name, grid in workloads():
        if only and name not in only:
            continue
        px = pixels(grid, dev)
        plan = plan_shards(grid, world)
        lpx, lg = local_share(plan, rank, grid, px)
        r = {}
        if lpx is not None:
            r["local forward"] = timed(lambda: qf(lpx, lg), sync=dist.barrier)
        r["run_dp_sharded_vision"] = timed(lambda: qvdp.run_dp_sharded_vision(model, px, grid, forward=qf),
                                           sync=dist.barrier)
        r["  no rank check"] = timed(lambda: qvdp.run_dp_sharded_vision(model, px, grid, forward=qf,
                                                                         check_ranks=False), sync=dist.barrier)
        r["  no overlap"] = timed(lambda: qvdp.run_dp_sharded_vision(model, px, grid, forward=qf,
                                                                      overlap_gather=False), sync=dist.barrier)
        # the planner on plain FLOPs (attention_weight 1.0) vs the default weighted model (1.32, fitted to
        # 1-GPU H100 times). Session 6's JSON predates the default: there "calibrated plan" is 1.32 vs 1.0.
        fplan = plan_shards(grid, world, dataclasses.replace(QWEN3_VL_8B, attention_weight=1.0))
        r["  plain-FLOP plan"] = timed(lambda: qvdp.run_dp_sharded_vision(model, px, grid, forward=qf, plan=fplan),
                                       sync=dist.barrier)
        outs = [torch.randn(plan.rows(rank), 4096, device=dev).to(torch.bfloat16) for _ in range(4)]
        r["gather alone"] = timed(lambda: qvdp.gather_rows(outs, plan), sync=dist.barrier)
        r["_uniform"] = plan.uniform_block_rows()
        out[name] = r
    finish_worker(rank, q, out, per_rank=True)


def dp(world):
    allr = spawn_ranks(_dp_worker, world, timeout_s=1500)
    res = {"world": world, "card": torch.cuda.get_device_name(), "per_rank": allr}
    for name in allr[0]:
        print(f"== {name} (uniform gather rows: {allr[0][name]['_uniform']})")
        for k in allr[0][name]:
            if k.startswith("_"):
                continue
            meds = [round(r[name][k]["med"], 2) if k in r[name] else None for r in allr]
            mx = [round(r[name][k]["max"], 2) if k in r[name] else None for r in allr]
            print(f"  {k:24s} median per rank {meds}  max per rank {mx}")
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["single", "dp", "profile"])
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    res = single(a.out) if a.mode == "single" else profile_only(a.out) if a.mode == "profile" else dp(a.world)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, f"diag-encoder-{a.mode}.json"), "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
