"""Experiment (diagnostics): the ordered gather done by peer copies over NVLink instead of NCCL.

The output [total, 16384] bf16 lives in torch symmetric memory on every rank (no multicast). Each rank
copies its own rows to their final offsets, then pulls the other ranks' rows straight from the peers'
buffers into the same offsets (copy engines, one stream per source rank):
  - "ipc direct": every rank pulls every remote run from its owner;
  - "ipc relay": runs of >= RELAY_MIN rows are split among the non-owner ranks; each pulls its share
    from the owner, then (after a device-side barrier) the other shares from the ranks that pulled them,
    so the owner sends each row out once instead of W-1 times (one image: owner egress N, not 3N).
  - "sm pull relay" / "sm push relay" / "sm push direct" (session 8): the same moves done by SMs instead of
    copy engines, one Triton kernel per stage that loads from / stores to peer memory over NVLink (peer
    buffer addresses as int64, cast to pointers in the kernel). Push: the owner writes its rows into the
    peers' buffers (relay: the owner writes each big run's share once, to the helper that forwards it).
    4 x H200: exact, but no better than NCCL at 4 GPUs; on 2 GPUs push beats NCCL on every plan
    (benchmarks/NOTES.md, session 8).
Side by side with the NCCL floor (equal all_gather_into_tensor) and qvdp's native gather. Every system's
output is checked for exact equality with the expected rows before timing.

    python benchmarks/diag_gather_ipc.py [--worlds 4] [--sm-configs 4,4096,8 8,2048,8 ...] [--sm-only]
"""
from __future__ import annotations

import argparse

import torch

from _common import finish_worker, gpu_worlds, init_nccl_worker, slowest_rank_us, spawn_ranks
from qvdp.dist.push import relay_shares as _relay_shares

WIDTH = 16384
ROWS_PER_PROG = 4
COLS_PER_PROG = 4096


def _copy_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def _peer_copy(ADDRS, CHUNKS, WIDTH: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
        # CHUNKS int64 [n, 5]: src slot, dst slot, src row, dst row, rows (<= ROWS); ADDRS int64 base addresses
        c = tl.program_id(0)
        cb = tl.program_id(1)
        src = tl.load(CHUNKS + c * 5 + 0)
        dst = tl.load(CHUNKS + c * 5 + 1)
        r0 = tl.load(CHUNKS + c * 5 + 2)
        d0 = tl.load(CHUNKS + c * 5 + 3)
        n = tl.load(CHUNKS + c * 5 + 4)
        sp = tl.load(ADDRS + src).to(tl.pointer_type(tl.bfloat16))
        dp = tl.load(ADDRS + dst).to(tl.pointer_type(tl.bfloat16))
        rows = tl.arange(0, ROWS)
        cols = cb * COLS + tl.arange(0, COLS)
        m = (rows < n)[:, None] & (cols < WIDTH)[None, :]
        v = tl.load(sp + (r0 + rows)[:, None] * WIDTH + cols[None, :], mask=m)
        tl.store(dp + (d0 + rows)[:, None] * WIDTH + cols[None, :], v, mask=m)

    return _peer_copy


def _chunks(items, dev, rows=ROWS_PER_PROG):
    """[(src slot, dst slot, src row, dst row, rows)] -> int64 [n, 5] in pieces of <= `rows` rows."""
    out = []
    for s, d, r0, d0, n in items:
        for k in range(0, n, rows):
            out.append((s, d, r0 + k, d0 + k, min(rows, n - k)))
    return torch.tensor(out or [(0, 0, 0, 0, 0)], dtype=torch.int64, device=dev)
WORKLOADS = [("one 720p image", [[1, 44, 80]]), ("skewed 1280^2+3x256^2", [[1, 80, 80]] + [[1, 16, 16]] * 3),
             ("4x720p", [[1, 44, 80]] * 4), ("32-frame video", [[16, 44, 80]])]


def _sm_items(runs, world, rank, mine, stage1, stage2):
    """Copy items (src slot, dst slot, src row, dst row, rows) of the SM-driven variants for this rank.
    Slots 0..W-1 are the ranks' output buffers, slot W this rank's local rows."""
    L = world
    own = [(L, rank, ls, os_, n) for ls, os_, n in mine]  # local rows into my own buffer
    it = {"pull0": own, "pull1": [(s, rank, o, o, n) for s, o, n in stage1],
          "pull2": [(h, rank, o, o, n) for h, o, n in stage2]}
    # push relay: the owner writes each share of its big runs to the helper that forwards it, and its
    # small runs to every peer; then each helper writes its shares to the remaining peers
    p1, p2 = list(own), []
    for s, ls, os_, n, shares in _relay_shares(runs, world):
        peers = [r for r in range(world) if r != s]
        if shares is None:
            if s == rank:
                p1 += [(L, d, ls, os_, n) for d in peers]
            continue
        for h, o, c in shares:
            if s == rank:
                p1.append((L, h, ls + (o - os_), o, c))
            if h == rank:
                p2 += [(rank, d, o, o, c) for d in peers if d != h]
    it.update(push1=p1, push2=p2,
              pushd=own + [(L, d, ls, os_, n) for ls, os_, n in mine for d in range(world) if d != rank])
    return it


def _worker(rank, world, port, sm_configs, sm_only, workloads, flag_barrier, q):
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

    for name, grid in workloads:
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
        for s, ls, os_, n, shares in _relay_shares(runs, world):
            if s == rank:
                continue
            if shares is None:
                stage1.append((s, os_, n))
                continue
            for h, o, c in shares:
                if h == rank:
                    stage1.append((s, o, c))
                else:
                    stage2.append((h, o, c))

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

        fns = {"ipc direct": direct, "ipc relay": relay} if ipc and not sm_only else {}
        if ipc:  # SM-driven copies: slots 0..W-1 = the ranks' output buffers, slot W = this rank's local rows
            kern = _copy_kernel()
            addrs = torch.tensor([p.data_ptr() for p in peer] + [local.data_ptr()], dtype=torch.int64, device=dev)
            it = _sm_items(runs, world, rank, mine, stage1, stage2)

            def variants(rows, cols, warps):
                ch = {k: _chunks(v, dev, rows) for k, v in it.items()}
                ncb = -(-WIDTH // cols)

                def launch(k):
                    kern[(ch[k].shape[0], ncb)](addrs, ch[k], WIDTH=WIDTH, ROWS=rows, COLS=cols, num_warps=warps)

                def sm_pull_relay():
                    hdl.barrier(channel=0)  # nobody still reads my buffer from the previous call
                    launch("pull0")
                    hdl.barrier(channel=0)  # every rank's own rows are in its buffer
                    launch("pull1")
                    hdl.barrier(channel=0)
                    launch("pull2")
                    return out

                def sm_push_relay():
                    hdl.barrier(channel=0)  # every peer is done with its previous output
                    launch("push1")
                    hdl.barrier(channel=0)
                    launch("push2")
                    hdl.barrier(channel=0)
                    return out

                def sm_push_direct():
                    hdl.barrier(channel=0)
                    launch("pushd")
                    hdl.barrier(channel=0)
                    return out

                return sm_pull_relay, sm_push_relay, sm_push_direct

            for ci, (rows, cols, warps) in enumerate(sm_configs):
                tag = "" if ci == 0 else f" r{rows} c{cols} w{warps}"
                pull_r, push_r, push_d = variants(rows, cols, warps)
                if not sm_only and ci == 0:
                    fns["sm pull relay"] = pull_r
                fns[f"sm push relay{tag}"] = push_r
                fns[f"sm push direct{tag}"] = push_d
            fns["two barriers only"] = lambda: (hdl.barrier(channel=0), hdl.barrier(channel=0))
            if flag_barrier:  # the same push variants with a one-program flag barrier instead of hdl.barrier
                from qvdp.dist.push import _state, flag_barrier  # the library's barrier (qvdp push backend)
                fst = _state(group, dev)

                def fbar():
                    flag_barrier(fst)

                rows, cols, warps = sm_configs[-1]
                chf = {k: _chunks(v, dev, rows) for k, v in it.items()}
                ncbf = -(-WIDTH // cols)

                def launchf(k):
                    kern[(chf[k].shape[0], ncbf)](addrs, chf[k], WIDTH=WIDTH, ROWS=rows, COLS=cols, num_warps=warps)

                def fpush_relay():
                    fbar()
                    launchf("push1")
                    fbar()
                    launchf("push2")
                    fbar()
                    return out

                def fpush_direct():
                    fbar()
                    launchf("pushd")
                    fbar()
                    return out

                tag = f" r{rows} c{cols} w{warps}"
                fns[f"sm push relay, flag barrier{tag}"] = fpush_relay
                fns[f"sm push direct, flag barrier{tag}"] = fpush_direct
                fns["two flag barriers only"] = lambda: (fbar(), fbar())
        if gather_rows_native is not None:
            fns["qvdp native (auto)"] = lambda: gather_rows_native([local], plan, None, "concat", "auto")
            fns["qvdp native (bcast)"] = lambda: gather_rows_native([local], plan, None, "concat", "bcast")
        per = -(-total // world)
        fl_in = torch.randn(per, WIDTH, device=dev).to(torch.bfloat16)
        fl_out = torch.empty(world * per, WIDTH, dtype=torch.bfloat16, device=dev)
        fns["floor (equal all_gather_into_tensor)"] = lambda: dist.all_gather_into_tensor(fl_out, fl_in)
        ok = {}
        for k in list(fns):
            if k.startswith(("ipc", "sm ")) or k == "qvdp native (auto)":
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
    ap.add_argument("--sm-configs", nargs="*", default=[f"{ROWS_PER_PROG},{COLS_PER_PROG},8"],
                    help="rows,cols,warps per program of the SM copy kernel (the first is the untagged one)")
    ap.add_argument("--sm-only", action="store_true", help="skip the copy-engine and pull variants")
    ap.add_argument("--workloads", nargs="*", default=None, help="names from WORKLOADS (default: all)")
    ap.add_argument("--flag-barrier", action="store_true",
                    help="also the push variants (last --sm-configs entry) with a one-program flag barrier")
    a = ap.parse_args()
    for w in gpu_worlds(a.worlds):
        cfgs = [tuple(int(v) for v in c.split(",")) for c in a.sm_configs]
        wls = [x for x in WORKLOADS if not a.workloads or x[0] in a.workloads]
        spawn_ranks(_worker, w, cfgs, a.sm_only, wls, a.flag_barrier, timeout_s=600)


if __name__ == "__main__":
    main()
