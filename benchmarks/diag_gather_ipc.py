"""Experiment (diagnostics): the ordered gather done by peer copies over NVLink instead of NCCL.

The output [total, 16384] bf16 lives in torch symmetric memory on every rank (no multicast). Each rank
copies its own rows to their final offsets, then pulls the other ranks' rows straight from the peers'
buffers into the same offsets (copy engines, one stream per source rank):
  - "ipc direct": every rank pulls every remote run from its owner;
  - "ipc relay": runs of >= RELAY_MIN rows are split among the non-owner ranks; each pulls its share
    from the owner, then (after a device-side barrier) the other shares from the ranks that pulled them,
    so the owner sends each row out once instead of W-1 times (one image: owner egress N, not 3N).
Side by side with the NCCL floor (equal all_gather_into_tensor) and qvdp's native gather. Every system's
output is checked for exact equality with the expected rows before timing.

    python benchmarks/diag_gather_ipc.py [--worlds 4]
"""
from __future__ import annotations

import argparse

import torch

from _common import finish_worker, init_nccl_worker, slowest_rank_us, spawn_ranks

WIDTH = 16384
RELAY_MIN = 64
WORKLOADS = [("one 720p image", [[1, 44, 80]]), ("skewed 1280^2+3x256^2", [[1, 80, 80]] + [[1, 16, 16]] * 3),
             ("4x720p", [[1, 44, 80]] * 4), ("32-frame video", [[16, 44, 80]])]


def _worker(rank, world, port, q):
    import torch.distributed as dist
    import torch.distributed._symmetric_memory as symm_mem
    from qvdp import plan_shards
    dev = init_nccl_worker(rank, world, port, timeout_s=300)
    try:
        from qvdp.dist.native import gather_rows_native
    except Exception:  # noqa: BLE001
        gather_rows_native = None
    group = dist.group.WORLD
    streams = [torch.cuda.Stream() for _ in range(world)]
    res = {}
    keep = []  # symmetric buffers stay allocated until the end

    for name, grid in WORKLOADS:
        plan = plan_shards(grid, world)
        total = plan.total_rows
        runs = plan.all_runs()  # (rank, local_start, out_start, n)
        locals_ = []
        for r in range(world):
            g = torch.Generator(device=dev).manual_seed(1000 + r)
            locals_.append(torch.randn(plan.rows(r), WIDTH, generator=g, device=dev).to(torch.bfloat16))
        local = locals_[rank]
        expect = torch.empty(total, WIDTH, dtype=torch.bfloat16, device=dev)
        for r, ls, os_, n in runs:
            expect[os_:os_ + n] = locals_[r][ls:ls + n]
        try:
            if hasattr(symm_mem, "enable_symm_mem_for_group"):
                symm_mem.enable_symm_mem_for_group(group.group_name)
            out = symm_mem.empty(total, WIDTH, dtype=torch.bfloat16, device=dev)
            hdl = symm_mem.rendezvous(out, group.group_name)
            peer = [hdl.get_buffer(s, (total, WIDTH), torch.bfloat16) for s in range(world)]
            keep.append((out, hdl, peer))
            ipc = True
        except Exception as e:  # noqa: BLE001
            print(f"rank {rank}: symmetric memory unavailable: {type(e).__name__}: {str(e)[:300]}", flush=True)
            out = torch.empty(total, WIDTH, dtype=torch.bfloat16, device=dev)
            ipc = False
        mine = [(ls, os_, n) for r, ls, os_, n in runs if r == rank]

        # relay assignment: chunk i of a big run owned by s is pulled first by helpers[i]
        stage1, stage2 = [], []  # (source rank, out_start, n)
        for s, ls, os_, n in runs:
            if s == rank:
                continue
            helpers = [r for r in range(world) if r != s]
            if n < RELAY_MIN or len(helpers) < 2:
                stage1.append((s, os_, n))
                continue
            base, extra = divmod(n, len(helpers))
            o = os_
            for i, h in enumerate(helpers):
                c = base + (i < extra)
                if c:
                    if h == rank:
                        stage1.append((s, o, c))
                    else:
                        stage2.append((h, o, c))
                o += c

        def pulls(items):
            cur = torch.cuda.current_stream()
            used = set()
            for s, o, n in items:
                st = streams[s]
                if s not in used:
                    st.wait_stream(cur)
                    used.add(s)
                with torch.cuda.stream(st):
                    out[o:o + n].copy_(peer[s][o:o + n])
            for s in used:
                cur.wait_stream(streams[s])

        def copy_in():
            for ls, os_, n in mine:
                out[os_:os_ + n].copy_(local[ls:ls + n])

        def direct():
            copy_in()
            hdl.barrier(channel=0)
            pulls([(s, os_, n) for s, ls, os_, n in runs if s != rank])
            hdl.barrier(channel=0)  # nobody still reads this rank's buffer when the next call writes it
            return out

        def relay():
            copy_in()
            hdl.barrier(channel=0)
            pulls(stage1)
            hdl.barrier(channel=0)
            pulls(stage2)
            hdl.barrier(channel=0)
            return out

        fns = {"ipc direct": direct, "ipc relay": relay} if ipc else {}
        if gather_rows_native is not None:
            fns["qvdp native (auto)"] = lambda: gather_rows_native([local], plan, None, "concat", "auto")
            fns["qvdp native (bcast)"] = lambda: gather_rows_native([local], plan, None, "concat", "bcast")
        per = -(-total // world)
        fl_in = torch.randn(per, WIDTH, device=dev).to(torch.bfloat16)
        fl_out = torch.empty(world * per, WIDTH, dtype=torch.bfloat16, device=dev)
        fns["floor (equal all_gather_into_tensor)"] = lambda: dist.all_gather_into_tensor(fl_out, fl_in)
        ok = {}
        for k in ("ipc direct", "ipc relay", "qvdp native (auto)"):
            if k in fns:
                out.fill_(float("nan"))  # poison
                torch.cuda.synchronize()
                dist.barrier()
                got = fns[k]()
                got = got[0] if isinstance(got, (list, tuple)) else got
                torch.cuda.synchronize()
                ok[k] = bool(torch.equal(got, expect))
        r = slowest_rank_us(fns, dev)
        okt = torch.tensor([int(all(ok.values()))], device=dev)
        dist.all_reduce(okt, op=dist.ReduceOp.MIN)
        res[name] = (r, bool(okt.item()), ok)
        if rank == 0:
            fl = r["floor (equal all_gather_into_tensor)"]
            print(f"--- {world} GPUs, {name}: {total} rows, exact on all ranks: {bool(okt.item())} {ok}")
            for k, v in r.items():
                print(f"  {k:40s} {v:8.1f} us  {v / fl:.2f}x floor")
        dist.barrier()
    finish_worker(rank, q, res)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worlds", nargs="*", type=int, default=[4])
    a = ap.parse_args()
    for w in a.worlds:
        if torch.cuda.device_count() < w:
            print(f"skip world {w}: {torch.cuda.device_count()} GPUs")
            continue
        spawn_ranks(_worker, w, timeout_s=600)


if __name__ == "__main__":
    main()
