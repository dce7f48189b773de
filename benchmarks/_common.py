"""Shared bits of the benchmarks: card name, timing, the results table (markdown) and plot."""
from __future__ import annotations

import datetime
import os
import sys
from typing import Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
sys.path.insert(0, ROOT)


def card() -> str:
    if not torch.cuda.is_available():
        return "cpu"
    n = torch.cuda.get_device_name()
    for k in ("H100", "H200", "A100", "B200", "L40S"):
        if k in n:
            return k.lower()
    return n.replace(" ", "_").lower()


def bench(fn, warmup=25, rep=100) -> float:
    """Median ms, CUDA events (triton.testing.do_bench)."""
    import triton
    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def attention_inputs(lens, H: int, D: int, dtype=torch.bfloat16, seed: int = 0):
    """(qkv [T, 3, H, D], cu_seqlens, cos, sin) on the GPU: random packed qkv, segments `lens`, 2-D-RoPE-like
    rotate-half tables (angles up to 50 rad)."""
    torch.manual_seed(seed)
    T = sum(lens)
    qkv = torch.randn(T, 3, H, D, device="cuda", dtype=dtype)
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lens).cumsum(0)
    ang = torch.rand(T, D // 2, device="cuda") * 50
    ang = torch.cat([ang, ang], -1)
    return qkv, cu.cuda(), ang.cos().contiguous(), ang.sin().contiguous()


def event_us(fn, inner: int = 10, rounds: int = 7, warm: int = 1, head_cycles: int = 0):
    """(median, min) GPU us per call of fn over `rounds` samples of event_ms(fn, inner, head_cycles), after `warm`
    calls (head_cycles > 0: GPU time only, the host's launch time out)."""
    import statistics
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = [event_ms(fn, inner, head_cycles) * 1e3 for _ in range(rounds)]
    return statistics.median(ts), min(ts)


def host_us(fn, n: int = 50, busy_cycles: int = int(2e8)) -> float:
    """Host us per call of fn: n calls enqueued while the GPU is kept busy (torch.cuda._sleep(busy_cycles), ~0.1 s
    per 2e8 cycles), so nothing waits for the GPU and what is timed is host work (the merger host diagnostics)."""
    import time
    fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(int(busy_cycles))
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t = (time.perf_counter() - t0) * 1e6 / n
    torch.cuda.synchronize()
    return t


def graph_of(fn, n: int):
    """(CUDA graph of n calls of fn, the n results): one warm call on a side stream first, as capture needs."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        outs = [fn() for _ in range(n)]
    return g, outs


def graph_us(fn, inner: int = 10, rounds: int = 7, head_cycles: int = 0):
    """(median, min) GPU us per call of fn replayed from a CUDA graph of `inner` calls (no host work in the
    timing; event_us of the replay, head_cycles as there)."""
    g, _ = graph_of(fn, inner)
    return tuple(v / inner for v in event_us(g.replay, inner=1, rounds=rounds, head_cycles=head_cycles))


def interleaved_ms(fns: dict, rounds: int, inner: int = 10) -> dict:
    """{name: median GPU ms per call}: every fn timed in turn, round after round (event_ms of `inner` calls behind
    the tuner's busy-wait), after three warm-up calls each (the merger pass diagnostics)."""
    import statistics
    for f in fns.values():
        for _ in range(3):
            f()
    got = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            got[k].append(event_ms(f, inner=inner, head_cycles=None))
    return {k: statistics.median(v) for k, v in got.items()}


def report_bandwidth(title: str, times: dict, nbytes) -> None:
    """Print us, TB/s (nbytes: one count, or one per name) and the ratio to the first entry of {name: ms}."""
    print(f"\n== {title}", flush=True)
    base = None
    for k, t in times.items():
        base = base or t
        b = nbytes[k] if isinstance(nbytes, dict) else nbytes
        print(f"{k:44s} {t * 1e3:7.1f} us  {b / t / 1e9:5.2f} TB/s  {t / base:5.3f}x", flush=True)


def kernel_us(fn, n: int = 20, width: int = 40) -> dict:
    """{kernel name[:width]: GPU us per call of fn} from the torch profiler (fn called once before)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    return {e.key[:width]: round(e.device_time_total / n, 1) for e in prof.key_averages() if e.device_time_total > 0}


def try_import_fa3():
    """FlashAttention-3 forward from the PyPI wheel fa3-fwd (its interface imports flash_attn_config,
    shipped as fa3_fwd_config)."""
    try:
        import fa3_fwd_config
        sys.modules.setdefault("flash_attn_config", fa3_fwd_config)
        import fa3_fwd_interface
        return fa3_fwd_interface.flash_attn_varlen_func
    except Exception as e:  # noqa: BLE001
        print(f"[fa3] not available: {type(e).__name__}: {e}")
        return None


def append_jsonl(path, rows):
    """Append each dict of `rows` as one JSON line to `path` (diagnostics' --out)."""
    import json
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def write_results(name: str, title: str, header: list, rows: list, notes: str = "", out_dir: str | None = None):
    c = card()
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}-{c}.md")
    lines = [f"# {title}", "", f"card: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}; "
             f"date: {datetime.date.today().isoformat()}; torch {torch.__version__}"
             + (f"; triton {__import__('triton').__version__}" if _has_triton() else ""), ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for r in rows:
        lines.append("| " + " | ".join(_fmt(x) for x in r) + " |")
    if notes:
        lines += ["", notes]
    text = "\n".join(lines) + "\n"
    for d in filter(None, [RESULTS, out_dir]):
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{name}-{c}.md"), "w") as f:
            f.write(text)
    print(text)
    return path


def _has_triton():
    try:
        import triton  # noqa: F401
        return True
    except Exception:
        return False


def _fmt(x):
    if isinstance(x, float):
        return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"
    return str(x)


def bar_plot(name: str, groups: list, series: dict, ylabel: str, out_dir: str | None = None):
    """groups: x labels; series: {system: [value per group]} -> results/<name>-<card>.png"""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001
        print(f"[plot] matplotlib unavailable: {e}")
        return
    import numpy as np
    x = np.arange(len(groups))
    n = max(len(series), 1)
    w = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    for i, (k, vals) in enumerate(series.items()):
        ax.bar(x + i * w - 0.4 + w / 2, [v if v is not None else 0 for v in vals], w, label=k)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{name} ({card()})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    for d in filter(None, [RESULTS, out_dir]):
        os.makedirs(d, exist_ok=True)
        fig.savefig(os.path.join(d, f"{name}-{card()}.png"), dpi=120)
    plt.close(fig)


def init_nccl_worker(rank: int, world: int, port: int, timeout_s: float = 600):
    """Join the NCCL process group of a spawn_ranks() worker (NVLink multicast off); return its device."""
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NCCL_NVLS_ENABLE="0")
    torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank)
    dist.init_process_group("nccl", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=dev)
    return dev


def time_runs(fn, warm: int, rep: int, sync=None) -> list:
    """Wall ms of `rep` synchronised calls after `warm` untimed ones; sync() (e.g. a barrier) before each."""
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(rep):
        if sync:
            sync()
        ts.append(wall_ms(fn))
    return ts


def wall_ms(fn) -> float:
    """Wall ms of one synchronised call."""
    import time
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def event_ms(fn, inner: int = 10, head_cycles: Optional[int] = 0) -> float:
    """GPU ms per call, CUDA events around `inner` back-to-back calls (host launch gaps amortised); the merger
    tuner's timer (qvdp.ops._tune.event_ms). head_cycles: a GPU busy-wait queued before the first event, so the
    host's launch of the first call is not counted (0: none, the benchmarks' protocol before session 23 and still
    every benchmark's but bench_merger's; None: the tuner's, QVDP_TUNE_HEAD)."""
    from qvdp.ops._tune import event_ms as timer
    return timer(fn, inner, head_cycles)


def best_event_ms(fn, inner: int = 20, rounds: int = 3) -> float:
    """The best of `rounds` event_ms(fn, inner) measurements (kernel-level diagnostics)."""
    return min(event_ms(fn, inner) for _ in range(rounds))


def time_interleaved(fns: dict, warm: int, rep: int, timer=wall_ms) -> dict:
    """Median of timer(fn) per system, the systems timed in turn (one call each per round, in a seeded
    random order), so all of them see the same GPU clock state and none always runs first: a sustained
    load heats an H100 and its clock falls (one 4 x 720p forward went 38.5 -> 41.0 ms over five
    back-to-back calls), which penalises whichever system is timed last when each is timed in its own
    block; on 4 x H200 the first-timed gather mode came out 11-32% slower than the same code timed second."""
    import random
    import statistics
    for fn in fns.values():
        for _ in range(warm):
            fn()
    names = list(fns)
    ts = {n: [] for n in names}
    order = random.Random(0)  # the same sequence on every rank (the gather benchmark times collectives)
    for r in range(rep):
        # a fresh permutation each round: neither the first slot nor the predecessor is fixed. With a plain
        # rotation "bcast" always ran right after "auto" (the same code on a non-uniform plan, the same
        # NCCL communicator) and came out 3-10% faster in every gather run of session 5
        for n in order.sample(names, len(names)):
            ts[n].append(timer(fns[n]))
    if os.environ.get("QVDP_BENCH_SPREAD"):  # diagnostics: each system's samples, sorted
        for n, v in ts.items():
            print(f"    {n:24s} " + " ".join(f"{t:.3f}" for t in sorted(v)), flush=True)
    return {n: statistics.median(v) for n, v in ts.items()}


def slowest_rank_us(fns: dict, dev, warm: int = 5, rep: int = 30) -> dict:
    """Median µs per system of one call after a barrier, timed by CUDA events on each rank, the systems
    timed in turn (time_interleaved); the slowest rank's median (every rank gets the same dict). A system
    function with a `pre` attribute has pre() run, untimed, before each timed call's barrier."""
    import torch.distributed as dist

    def event_us(fn):
        pre = getattr(fn, "pre", None)  # untimed work before the barrier (e.g. evicting L2), if any
        if pre is not None:
            pre()
        dist.barrier()
        torch.cuda.synchronize()
        return event_ms(fn, inner=1) * 1e3
    med = time_interleaved(fns, warm=warm, rep=rep, timer=event_us)
    t = torch.tensor([med[n] for n in fns], device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return dict(zip(fns, t.tolist()))


def finish_worker(rank: int, q, result, per_rank: bool = False):
    """End a spawn_ranks() worker: rank 0 puts `result` (per_rank: the list of every rank's result) on the
    queue, then all ranks leave the process group together."""
    import torch.distributed as dist
    if per_rank:
        allr = [None] * dist.get_world_size()
        dist.all_gather_object(allr, result)
        result = allr
    if rank == 0:
        q.put(result)
    dist.barrier()
    dist.destroy_process_group()


def gpu_worlds(worlds):
    """The requested world sizes this machine has the GPUs for (the others are reported and skipped)."""
    for w in worlds:
        if torch.cuda.device_count() < w:
            print(f"skip world {w}: {torch.cuda.device_count()} GPUs")
            continue
        yield w


def spawn_ranks(worker, world: int, *args, timeout_s: float = 1800):
    """Start `world` processes running worker(rank, world, port, *args, queue); return what rank 0 puts."""
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, world, port, *args, q)) for r in range(world)]
    for p in procs:
        p.start()
    res = q.get(timeout=timeout_s)
    for p in procs:
        p.join(120)
    return res
