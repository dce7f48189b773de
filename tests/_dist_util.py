"""Spawn helpers for multi-rank tests on gloo (CPU)."""
from __future__ import annotations

import os
import socket
import tempfile
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, fn, args, outdir, timeout_s, backend="gloo"):
    import datetime
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    torch.set_num_threads(1)
    kw = {}
    if backend == "nccl":
        torch.cuda.set_device(rank)
        kw["device_id"] = torch.device("cuda", rank)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s), **kw)
    try:
        res = fn(rank, world, *args)
        torch.save({"ok": True, "result": res}, os.path.join(outdir, f"{rank}.pt"))
    except BaseException as e:  # noqa: BLE001
        torch.save({"ok": False, "error": f"{type(e).__name__}: {e}", "tb": traceback.format_exc()},
                   os.path.join(outdir, f"{rank}.pt"))
    finally:
        try:
            dist.destroy_process_group()
        except Exception:
            pass


def run_ranks(fn, world: int, *args, timeout_s: float = 60.0, join_timeout_s: float = 120.0, backend: str = "gloo"):
    """Run fn(rank, world, *args) on `world` ranks (gloo on CPU, or nccl one GPU each); return the
    per-rank {"ok", "result"|"error"}."""
    with tempfile.TemporaryDirectory() as d:
        ctx = mp.get_context("spawn")
        port = free_port()
        procs = [ctx.Process(target=_entry, args=(r, world, port, fn, args, d, timeout_s, backend)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(join_timeout_s)
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
        out = []
        for r in range(world):
            path = os.path.join(d, f"{r}.pt")
            if os.path.exists(path):
                out.append(torch.load(path, weights_only=False))
            else:
                out.append({"ok": False, "error": "hung" if r in hung else f"exit {procs[r].exitcode}"})
        return out


def fail_after_first_output(fwd, fail: bool, exc: Exception):
    """A forward that hands over its outputs as `fwd` does (on_output) and, when `fail`, raises `exc`
    right after the first one: a deepstack feature whose gather is already in flight."""
    class Failing:
        supports_output_callback = True

        def __call__(self, px, grid, ret, on_output=None):
            def cb(i, t):
                on_output(i, t)
                if fail:
                    raise exc
            return fwd(px, grid, ret, on_output=cb)
    return Failing()
