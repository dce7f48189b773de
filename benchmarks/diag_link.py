"""Diagnostic: how fast can one GPU's rows reach its peers over NVLink, and who should drive the copy?

    python benchmarks/diag_link.py [--worlds 2 4] [--rows 1600]

The push gather's one-owner plans (one image, skewed) are limited by the owner's egress. Its copies are
SM stores driven by the owner ("push"). This times the alternatives on symmetric-memory buffers, 20 copies
back to back per sample (µs per copy and GB/s of the owner's egress, slowest rank, median of 7):
- push: the owner's SMs store its rows into the peers' buffers (Triton copy kernel, 64 KB per program);
- pull: the receivers' SMs load the rows from the owner's buffer and store them locally;
- push+pull: half of the rows each way, at the same time;
- CE push / CE pull: cudaMemcpyAsync over peer-to-peer (copy engines) from the owner / from the receiver;
- at 4 GPUs the same for a full copy to every peer (egress 3N) and for a third to each peer (egress N,
  the relay's first stage).
"""
from __future__ import annotations

import argparse

import torch

from _common import event_ms, finish_worker, gpu_worlds, init_nccl_worker, spawn_ranks

WIDTH = 16384


def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def _copy(SRC, DST, n_words, BLOCK: tl.constexpr):
        # raw int32 words from SRC to DST (addresses as int64), BLOCK words per program
        pid = tl.program_id(0).to(tl.int64)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        s = SRC.to(tl.pointer_type(tl.int32))
        d = DST.to(tl.pointer_type(tl.int32))
        m = offs < n_words
        v = tl.load(s + offs, mask=m)
        tl.store(d + offs, v, mask=m)

    return _copy, triton.cdiv


def _worker(rank, world, port, rows, q):
    import torch.distributed as dist
    import torch.distributed._symmetric_memory as symm_mem
    dev = init_nccl_worker(rank, world, port, timeout_s=300)
    copy, cdiv = _kernel()
    buf = symm_mem.empty(rows, WIDTH, dtype=torch.bfloat16, device=dev)
    hdl = symm_mem.rendezvous(buf, dist.group.WORLD.group_name)
    peer = [hdl.get_buffer(r, (rows, WIDTH), torch.bfloat16) for r in range(world)]
    src = torch.randn(rows, WIDTH, device=dev).to(torch.bfloat16)
    side = torch.cuda.Stream()
    BLOCK = 16384  # 64 KB per program

    def sm(dst, s, r0, r1):
        n = (r1 - r0) * WIDTH // 2  # int32 words
        if n:
            copy[(cdiv(n, BLOCK),)](s[r0:r1].data_ptr(), dst[r0:r1].data_ptr(), n, BLOCK=BLOCK, num_warps=8)

    def ce(dst, s, r0, r1):
        if r1 > r0:
            dst[r0:r1].copy_(s[r0:r1])

    owner = 0
    others = [r for r in range(world) if r != owner]
    N = rows
    modes = {}
    if world == 2:
        h = N // 2
        modes["push (SM)"] = {owner: lambda: sm(peer[1], src, 0, N)}
        modes["pull (SM)"] = {1: lambda: sm(buf, peer[owner], 0, N)}
        modes["push+pull (SM, half each)"] = {owner: lambda: sm(peer[1], src, 0, h), 1: lambda: sm(buf, peer[owner], h, N)}
        modes["CE push"] = {owner: lambda: ce(peer[1], src, 0, N)}
        modes["CE pull"] = {1: lambda: ce(buf, peer[owner], 0, N)}
        modes["SM push + CE pull (half each)"] = {owner: lambda: sm(peer[1], src, 0, h), 1: lambda: ce(buf, peer[owner], h, N)}
        modes["SM push + CE push (half each, 2 streams)"] = {owner: lambda: _two(side, lambda: sm(peer[1], src, 0, h),
                                                                               lambda: ce(peer[1], src, h, N))}
        modes["push+pull (SM, 1/3 pulled)"] = {owner: lambda: sm(peer[1], src, 0, 2 * N // 3),
                                                1: lambda: sm(buf, peer[owner], 2 * N // 3, N)}
    else:
        k = len(others)
        cut = [N * i // k for i in range(k + 1)]
        modes["push full to every peer (SM, egress 3N)"] = {owner: lambda: [sm(peer[d], src, 0, N) for d in others]}
        modes["every peer pulls all (SM, egress 3N)"] = {d: (lambda: sm(buf, peer[owner], 0, N)) for d in others}
        modes["push a third to each peer (SM, egress N)"] = {
            owner: lambda: [sm(peer[d], src, cut[i], cut[i + 1]) for i, d in enumerate(others)]}
        modes["each peer pulls its third (SM, egress N)"] = {
            d: (lambda i=i: sm(buf, peer[owner], cut[i], cut[i + 1])) for i, d in enumerate(others)}
        modes["CE push a third to each peer (egress N)"] = {
            owner: lambda: [ce(peer[d], src, cut[i], cut[i + 1]) for i, d in enumerate(others)]}
        modes["each peer CE-pulls its third (egress N)"] = {
            d: (lambda i=i: ce(buf, peer[owner], cut[i], cut[i + 1])) for i, d in enumerate(others)}
    res = {}
    for name, parts in modes.items():
        fn = parts.get(rank, lambda: None)
        samples = []
        for it in range(9):
            torch.cuda.synchronize()
            dist.barrier()
            torch.cuda.synchronize()
            us = event_ms(fn, 20) * 1e3
            if it >= 2:
                samples.append(us)
        samples.sort()
        t = torch.tensor([samples[len(samples) // 2]], device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        res[name] = t.item()
        if rank == 0:
            egress = N * WIDTH * 2 * (3 if "3N" in name else 1)
            print(f"{world} GPUs {name:48s} {t.item():8.1f} us/copy  owner egress {egress / t.item() / 1e3:6.1f} GB/s",
                  flush=True)
    finish_worker(rank, q, res)


def _two(side, f1, f2):
    side.wait_stream(torch.cuda.current_stream())
    f1()
    with torch.cuda.stream(side):
        f2()
    torch.cuda.current_stream().wait_stream(side)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worlds", nargs="*", type=int, default=[2, 4])
    ap.add_argument("--rows", type=int, default=1600)
    a = ap.parse_args()
    for w in gpu_worlds(a.worlds):
        spawn_ranks(_worker, w, a.rows, timeout_s=600)


if __name__ == "__main__":
    main()
