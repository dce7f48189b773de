"""Diagnostic: NVLink store rate per SM, SM stores against bulk (TMA) stores from shared memory.

    python benchmarks/diag_tma_link.py [--mb 52] [--grids 16 33 66 132 264]

Session 19 found the push gather's relay bound by how many blocks each SM keeps issuing stores (capping the
resident blocks per SM made it 1.4-3.7x slower). Bulk copies (cp.async.bulk) move a whole shared-memory
buffer with one instruction, off the SM's load/store path. This times rank 0 pushing `--mb` MiB into rank 1's
symmetric buffer with a grid of G blocks, for several G (µs per copy, GB/s, median of 7 samples of 10
copies back to back; rank 1 checks every byte after each grid):
- sm: 256 threads per block, 16-byte vector loads and stores, 4 in flight per thread, grid-stride;
- tma: one issuing thread per block, 4 shared-memory stages of 8 KB: bulk load (global -> shared,
  mbarrier completion), then bulk store (shared -> the peer's global memory), up to 3 stores in flight.
The kernels are compiled on the machine (torch.utils.cpp_extension.load_inline, sm_90).
"""
from __future__ import annotations

import argparse
import statistics

import torch

from _common import event_ms, finish_worker, init_nccl_worker, spawn_ranks

CUDA_SRC = r"""
#include <cuda_runtime.h>
#include <torch/extension.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cstdint>

__global__ void sm_copy(const int4* __restrict__ src, int4* dst, int64_t n) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    int4 a = src[i], b = src[i + stride], c = src[i + 2 * stride], d = src[i + 3 * stride];
    dst[i] = a; dst[i + stride] = b; dst[i + 2 * stride] = c; dst[i + 3 * stride] = d;
  }
  for (; i < n; i += stride) dst[i] = src[i];
}

constexpr int kStages = 4;
constexpr int kChunk = 8192;  // bytes per stage (4 x 8 KB of static shared memory)

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// One thread per block issues everything: chunk c of the block's chunks (blockIdx.x + i * gridDim.x) goes
// through stage i % kStages: bulk load into shared memory (mbarrier completion), bulk store to dst.
__global__ void tma_copy(const char* __restrict__ src, char* dst, int64_t bytes) {
  __shared__ alignas(128) char buf[kStages][kChunk];
  __shared__ alignas(8) uint64_t bar[kStages];
  if (threadIdx.x != 0) return;
  for (int s = 0; s < kStages; ++s)
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(&bar[s])));
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  const int64_t chunks = (bytes + kChunk - 1) / kChunk;
  int i = 0;
  for (int64_t c = blockIdx.x; c < chunks; c += gridDim.x, ++i) {
    const int s = i % kStages;
    const uint32_t phase = (i / kStages) & 1;
    const int64_t off = c * kChunk;
    const uint32_t n = static_cast<uint32_t>(bytes - off < kChunk ? bytes - off : kChunk);
    if (i >= kStages)  // the store that last read this stage has finished reading it
      asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(kStages - 1) : "memory");
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(&bar[s])), "r"(n)
                 : "memory");
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
            smem_addr(buf[s])),
        "l"(src + off), "r"(n), "r"(smem_addr(&bar[s]))
        : "memory");
    uint32_t done = 0;
    while (!done)
      asm volatile(
          "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
          : "=r"(done)
          : "r"(smem_addr(&bar[s])), "r"(phase)
          : "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(dst + off),
                 "r"(smem_addr(buf[s])), "r"(n)
                 : "memory");
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
  }
  asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
}

void copy(int64_t src, int64_t dst, int64_t bytes, int64_t grid, bool tma) {
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  TORCH_CHECK(bytes % 16 == 0 && src % 128 == 0 && dst % 128 == 0, "16-byte sizes, 128-byte aligned addresses");
  if (tma)
    tma_copy<<<grid, 32, 0, stream>>>(reinterpret_cast<const char*>(src), reinterpret_cast<char*>(dst), bytes);
  else
    sm_copy<<<grid, 256, 0, stream>>>(reinterpret_cast<const int4*>(src), reinterpret_cast<int4*>(dst), bytes / 16);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
"""


def _ext():
    import os
    from torch.utils.cpp_extension import load_inline
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    return load_inline("qvdp_diag_tma_link", cpp_sources="void copy(int64_t, int64_t, int64_t, int64_t, bool);",
                       cuda_sources=CUDA_SRC, functions=["copy"], extra_cuda_cflags=["-O3"], verbose=False)


def _worker(rank, world, port, mb, grids, q):
    import torch.distributed as dist
    import torch.distributed._symmetric_memory as symm_mem
    dev = init_nccl_worker(rank, world, port, timeout_s=300)
    ext = _ext() if rank == 0 else None
    n = (mb << 20) // 16 * 16
    buf = symm_mem.empty(n, dtype=torch.uint8, device=dev)
    hdl = symm_mem.rendezvous(buf, dist.group.WORLD.group_name)
    dst = hdl.get_buffer(1, (n,), torch.uint8).data_ptr()
    g = torch.Generator(device=dev).manual_seed(5)
    src = torch.randint(0, 256, (n,), generator=g, device=dev, dtype=torch.uint8)  # the same bytes on both
    res = {}
    for kind in ("sm", "tma"):
        for grid in grids:
            buf.zero_()
            torch.cuda.synchronize()
            dist.barrier()
            ts = []
            if rank == 0:
                def fn():
                    ext.copy(src.data_ptr(), dst, n, grid, kind == "tma")
                fn()
                for _ in range(7):
                    ts.append(event_ms(fn, inner=10) * 1e3)
            torch.cuda.synchronize()
            dist.barrier()
            ok = torch.tensor([int(rank != 1 or torch.equal(buf, src))], device=dev)
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
            if rank == 0:
                us = statistics.median(ts)
                res[f"{kind} {grid}"] = (us, n / us / 1e3, bool(ok.item()))
                print(f"{kind:4s} grid {grid:4d}: {us:8.1f} us  {n / us / 1e3:6.1f} GB/s  exact {bool(ok.item())}",
                      flush=True)
    finish_worker(rank, q, res)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=52)
    ap.add_argument("--grids", nargs="*", type=int, default=[16, 33, 66, 132, 264])
    a = ap.parse_args()
    if torch.cuda.device_count() < 2:
        print("needs 2 GPUs")
        return
    print(spawn_ranks(_worker, 2, a.mb, tuple(a.grids), timeout_s=600))


if __name__ == "__main__":
    main()
