// qvdp push gather: rows stored by SMs over NVLink into every peer's output buffer (torch symmetric
// memory, peer base addresses given as an int64 table), stages ordered by flag barriers. The whole
// call (barrier, stage-1 copies, barrier, [stage-2 forwards, barrier]) is enqueued by one host call
// on the current stream, so the host cost is a few launches, not a Python launcher per kernel.
//
// Copy items come as int64 [n, 4] tables: destination rank, source row, destination row, rows (<= 16).
// Flag barrier: thread t stores the epoch into slot `rank` of rank t's flag row (system-scope release
// after a system fence), then spins on slot t of this rank's row (system-scope acquire) until it
// holds the epoch or later; after timeout_ns it gives up and counts the timeout in `errors`.
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

constexpr int kRows = 16;      // rows per chunk (the Python planner cuts chunks of <= 16 rows)
constexpr int kThreads = 256;

__device__ __forceinline__ uint64_t global_timer() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Spin until *mark >= epoch (system-scope acquire); after timeout_ns give up and count it in errors.
__device__ __forceinline__ void wait_mark(const int64_t* mark, int64_t epoch, int64_t timeout_ns, int32_t* errors) {
  const uint64_t t0 = global_timer();
  while (true) {
    int64_t v;
    asm volatile("ld.acquire.sys.global.b64 %0, [%1];" : "=l"(v) : "l"(mark) : "memory");
    if (v >= epoch) return;
    if (static_cast<int64_t>(global_timer() - t0) > timeout_ns) {
      atomicAdd(errors, 1);
      return;
    }
  }
}

__global__ void flag_barrier_kernel(const int64_t* __restrict__ flag_peers, int32_t* errors, int rank, int world,
                                    int64_t epoch, int64_t timeout_ns) {
  const int t = threadIdx.x;
  if (t >= world) return;
  __threadfence_system();  // every earlier write of this stream is visible before the signal
  int64_t* slot = reinterpret_cast<int64_t*>(flag_peers[t]) + rank;
  asm volatile("st.release.sys.global.b64 [%0], %1;" ::"l"(slot), "l"(epoch) : "memory");
  wait_mark(reinterpret_cast<const int64_t*>(flag_peers[rank]) + t, epoch, timeout_ns, errors);
}

// One thread's part of a piece of n <= kRows rows: the vector at byte column `off` of rows r0 .. r0+n-1
// of `from`, stored at column `off` of rows d0 .. of `to`. All n loads are issued before the first store
// (up to kRows loads in flight per thread); stores go over NVLink to a peer or to local memory. CG: load
// through L2 only (rows another GPU wrote during this call).
template <typename V, bool CG, int MR = kRows>
__device__ __forceinline__ void copy_piece(const char* from, int64_t from_stride, char* to, int64_t to_stride,
                                           int64_t r0, int64_t d0, int64_t n, int64_t off) {
  V buf[MR];
#pragma unroll
  for (int r = 0; r < MR; ++r)
    if (r < n) {
      const V* p = reinterpret_cast<const V*>(from + (r0 + r) * from_stride + off);
      buf[r] = CG ? __ldcg(p) : *p;
    }
#pragma unroll
  for (int r = 0; r < MR; ++r)
    if (r < n) *reinterpret_cast<V*>(to + (d0 + r) * to_stride + off) = buf[r];
}

// One block per (chunk, column span of kThreads vectors). Seven launch shapes (128-512 threads, 8-16 rows,
// 1-2 vectors per thread) measured within 1-2% of this one (benchmarks/NOTES.md).
template <typename V>
__global__ void push_rows_kernel(const char* __restrict__ src, const int64_t* __restrict__ peers,
                                 const int64_t* __restrict__ chunks, int64_t src_stride, int64_t dst_stride,
                                 int64_t dst_col, int64_t row_bytes) {
  const int64_t* ch = chunks + 4 * static_cast<int64_t>(blockIdx.x);
  const int64_t d = ch[0], r0 = ch[1], d0 = ch[2], n = ch[3];
  const int64_t off = (static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x) * sizeof(V);
  if (off >= row_bytes) return;
  copy_piece<V, false>(src, src_stride, reinterpret_cast<char*>(peers[d]) + dst_col, dst_stride, r0, d0, n, off);
}

// The pipelined gather, one launch: a table of units, each a piece of <= 16 rows copied by one block per
// 4 KB column span. A unit's row, int64 [8]:
//   dst rank, src row, dst row, rows (<= 16),
//   src: -1 = this rank's local rows (`src`), else the output buffer of that rank (peer table; this rank's
//        own for a forward, the owner's for a pull),
//   wait slot: -1, or the block first waits until slot * spans + span of this rank's ready row holds the
//        call's epoch (acquire, system scope),
//   notify mask, notify slot: after its stores the block sets slot * spans + span := epoch (release,
//        system scope) in the ready row of every rank in the mask.
// Units come in depth order: units that never wait first, then units that wait only on units of a lower
// depth (on any rank). Blocks are dispatched in index order, so every waiting block's producer has been
// dispatched (on its own GPU) before it, and producers of depth 0 never wait: no deadlock.
constexpr int64_t kSpan = 4096;  // bytes of a row per block: the unit of the ready marks
// MR: the most rows of any unit (the relay's piece size, 1-16): fewer registers per thread for small pieces.
// The stores are bound by how many blocks each SM keeps issuing (benchmarks/NOTES.md, session 19), so the small
// forms ask for more resident blocks: MR=8 at most 64 registers (4 blocks per SM, no spills; 114 unbounded),
// MR=4 at most 40 (6 blocks per SM; 55 unbounded), MR<=2 at most 32 (8 blocks per SM; MR=2 spills 28 bytes).
constexpr int kUnitCols = 8;
// A piece's producer marks it ready with a block barrier, then thread 0's st.release.sys (SASS: MEMBAR.ALL.SYS +
// a strong store). fence_sc (QVDP_PUSH_MARK=fence, diagnostics) adds __threadfence_system() before it, i.e.
// fence.sc.sys (MEMBAR.SC.SYS): 6% slower back to back on 4 x H200 (benchmarks/NOTES.md, session 20).
constexpr int units_min_blocks(int mr) { return mr == 8 ? 4 : (mr == 4 ? 6 : (mr < 4 ? 8 : 1)); }
template <typename V, int MR>
__global__ void __launch_bounds__(kThreads, units_min_blocks(MR)) push_units_kernel(const char* __restrict__ src, const int64_t* __restrict__ peers,
                                  const int64_t* __restrict__ units, int64_t spans, int64_t src_stride,
                                  int64_t dst_stride, int64_t row_bytes, const int64_t* __restrict__ ready_peers,
                                  int rank, int64_t epoch, int64_t timeout_ns, int32_t* errors, bool fence_sc) {
  const int64_t b = blockIdx.x;
  const int64_t c = b / spans, y = b % spans;
  const int64_t* u = units + kUnitCols * c;
  const int64_t d = u[0], r0 = u[1], d0 = u[2], n = u[3], from_rank = u[4], wait = u[5], mask = u[6], slot = u[7];
  const bool out_src = from_rank >= 0;  // rows of an output buffer (written by this call on some rank)
  const char* from = out_src ? reinterpret_cast<const char*>(peers[from_rank]) : src;
  const int64_t from_stride = out_src ? dst_stride : src_stride;
  char* dst = reinterpret_cast<char*>(peers[d]);
  if (wait >= 0) {
    if (threadIdx.x == 0)
      wait_mark(reinterpret_cast<const int64_t*>(ready_peers[rank]) + wait * spans + y, epoch, timeout_ns, errors);
    __syncthreads();
  }
  const int64_t end = min(row_bytes, (y + 1) * kSpan);
  for (int64_t off = y * kSpan + threadIdx.x * static_cast<int64_t>(sizeof(V)); off < end;
       off += static_cast<int64_t>(kThreads) * sizeof(V)) {
    if (out_src)
      copy_piece<V, true, MR>(from, from_stride, dst, dst_stride, r0, d0, n, off);
    else
      copy_piece<V, false, MR>(from, from_stride, dst, dst_stride, r0, d0, n, off);
  }
  if (mask != 0) {
    __syncthreads();  // orders the block's stores before thread 0's release (a release is cumulative)
    if (threadIdx.x == 0) {
      if (fence_sc) __threadfence_system();  // fence.sc.sys (MEMBAR.SC.SYS) before the release as well
      for (int t = 0; t < 64; ++t) {
        if (!((mask >> t) & 1)) continue;
        int64_t* mark = reinterpret_cast<int64_t*>(ready_peers[t]) + slot * spans + y;
        asm volatile("st.release.sys.global.b64 [%0], %1;" ::"l"(mark), "l"(epoch) : "memory");
      }
    }
  }
}

void check(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("qvdp push: " + what);
}

void cuda_check(cudaError_t e, const char* where) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("qvdp push: CUDA error '") + cudaGetErrorString(e) +
                                                 "' in " + where);
}

void barrier(const at::Tensor& flag_peers, const at::Tensor& errors, int64_t rank, int64_t world, int64_t epoch,
             int64_t timeout_ns, cudaStream_t stream) {
  flag_barrier_kernel<<<1, 32, 0, stream>>>(flag_peers.data_ptr<int64_t>(), errors.data_ptr<int32_t>(),
                                            static_cast<int>(rank), static_cast<int>(world), epoch, timeout_ns);
  cuda_check(cudaGetLastError(), "flag_barrier_kernel");
}

// Largest vector width (16, 8, 4 or 2 bytes) that every address and step of the copy is a multiple of.
int vector_bytes(std::initializer_list<int64_t> vals) {
  int64_t acc = 0;
  for (int64_t v : vals) acc |= v;
  for (int w : {16, 8, 4, 2})
    if (acc % w == 0) return w;
  return 1;
}

// Calls f(V{}) with V the widest vector type of vb bytes (int4, int2, int32_t, int16_t, else int8_t).
template <class F>
void with_vector(int vb, F&& f) {
  switch (vb) {
    case 16: f(int4{}); break;
    case 8: f(int2{}); break;
    case 4: f(int32_t{}); break;
    case 2: f(int16_t{}); break;
    default: f(int8_t{});
  }
}

void copy_rows(const char* src, int64_t src_stride, const at::Tensor& peers, const at::Tensor& chunks,
               int64_t dst_stride, int64_t dst_col, int64_t row_bytes, cudaStream_t stream) {
  const int64_t n = chunks.size(0);
  if (n == 0 || row_bytes == 0) return;
  // the peers' buffers come from symmetric memory (256-byte aligned bases)
  const int vb = vector_bytes({reinterpret_cast<int64_t>(src), src_stride, dst_stride, dst_col, row_bytes});
  const int64_t span = static_cast<int64_t>(kThreads) * vb;
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>((row_bytes + span - 1) / span));
  const int64_t* p = peers.data_ptr<int64_t>();
  const int64_t* c = chunks.data_ptr<int64_t>();
  with_vector(vb, [&](auto v) {
    push_rows_kernel<decltype(v)><<<grid, kThreads, 0, stream>>>(src, p, c, src_stride, dst_stride, dst_col,
                                                                 row_bytes);
  });
  cuda_check(cudaGetLastError(), "push_rows_kernel");
}

void check_table(const at::Tensor& t, int64_t cols, const char* name) {
  check(t.is_cuda() && t.scalar_type() == at::kLong && t.is_contiguous() && t.dim() == 2 && t.size(1) == cols,
        std::string(name) + " must be a contiguous CUDA int64 [n, " + std::to_string(cols) + "] table");
}

}  // namespace

// Launches push_units_kernel<V, MR> with MR the smallest of 1, 2, 4, 8, 16 that is >= piece_rows (16 for
// vectors narrower than 16 bytes); MR=16 takes 213-230 registers per thread (one 256-thread block per SM);
// blocks_per_sm > 0 caps the resident blocks per SM through dynamic shared memory (diagnostics).
template <typename V>
void launch_units(dim3 grid, int64_t piece_rows, int64_t blocks_per_sm, cudaStream_t stream, const char* s,
                  const int64_t* p, const int64_t* u, int64_t spans, int64_t ss, int64_t dst_stride,
                  int64_t row_bytes, const int64_t* rp, int r, int64_t epoch, int64_t timeout_ns, int32_t* e,
                  bool fence_sc) {
  auto go = [&](auto kernel) {
    size_t smem = 0;
    if (blocks_per_sm > 0) {
      int dev = 0, per_sm = 0;
      cuda_check(cudaGetDevice(&dev), "cudaGetDevice");
      cuda_check(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev), "smem per SM");
      smem = static_cast<size_t>(per_sm / blocks_per_sm) - 1024;  // the runtime reserves 1 KB per block
      cuda_check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
                 "cudaFuncSetAttribute");
    }
    kernel<<<grid, kThreads, smem, stream>>>(s, p, u, spans, ss, dst_stride, row_bytes, rp, r, epoch, timeout_ns, e,
                                             fence_sc);
  };
  if constexpr (sizeof(V) == 16) {  // addresses and strides all 16-byte multiples: the small-piece forms
    if (piece_rows <= 1) return go(push_units_kernel<V, 1>);
    if (piece_rows <= 2) return go(push_units_kernel<V, 2>);
    if (piece_rows <= 4) return go(push_units_kernel<V, 4>);
    if (piece_rows <= 8) return go(push_units_kernel<V, 8>);
  }
  go(push_units_kernel<V, kRows>);
}

// The pipelined gather for one source and one destination buffer: entry barrier, one launch of the
// units (push_units_kernel; every unit has <= piece_rows rows), exit barrier. Returns the last epoch used.
int64_t push_gather_pipelined(const at::Tensor& src, const at::Tensor& table, const at::Tensor& own,
                              int64_t dst_stride, const at::Tensor& units, const at::Tensor& ready_peers,
                              const at::Tensor& flag_peers, const at::Tensor& errors, int64_t rank, int64_t world,
                              int64_t epoch, int64_t timeout_ns, int64_t piece_rows, int64_t blocks_per_sm,
                              bool fence_sc) {
  check_table(units, kUnitCols, "units");
  check(src.is_cuda() && src.dim() == 2 && (src.size(0) == 0 || src.stride(1) == 1) && own.is_cuda() &&
            own.dim() == 2 && own.stride(1) == 1 && own.size(1) == src.size(1) && own.dtype() == src.dtype(),
        "src and own must be CUDA [rows, width] tensors of one dtype and width, unit last-dim stride");
  check(world >= 2 && world <= 32 && rank >= 0 && rank < world, "rank/world out of range (2 <= world <= 32)");
  check(table.numel() == world && ready_peers.numel() == world && flag_peers.numel() == world,
        "table, ready_peers and flag_peers must be int64 [world] tables");
  const int64_t eb = src.element_size();
  const int64_t row_bytes = src.size(1) * eb;
  const int64_t spans = (row_bytes + kSpan - 1) / kSpan;
  const int64_t n = units.size(0);
  check(dst_stride == own.stride(0) * eb, "dst_stride must be the output buffer's row stride in bytes");
  check(piece_rows >= 1 && piece_rows <= kRows, "piece_rows must be in 1..16");
  check(blocks_per_sm >= 0 && blocks_per_sm <= 32, "blocks_per_sm must be in 0..32");
  const c10::cuda::CUDAGuard guard(flag_peers.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  barrier(flag_peers, errors, rank, world, ++epoch, timeout_ns, stream);
  const int64_t mark_epoch = epoch;  // > every mark of earlier calls
  if (n > 0 && row_bytes > 0) {
    check(n * spans < (1LL << 31), "too many units for one launch");
    const char* s = static_cast<const char*>(src.data_ptr());
    const int vb = vector_bytes({reinterpret_cast<int64_t>(s), src.stride(0) * eb,
                                 reinterpret_cast<int64_t>(own.data_ptr()), dst_stride, row_bytes, kSpan});
    const dim3 grid(static_cast<unsigned>(n * spans));
    const int64_t* p = table.data_ptr<int64_t>();
    const int64_t* u = units.data_ptr<int64_t>();
    const int64_t* rp = ready_peers.data_ptr<int64_t>();
    int32_t* e = errors.data_ptr<int32_t>();
    const int r = static_cast<int>(rank);
    const int64_t ss = src.stride(0) * eb;
    with_vector(vb, [&](auto v) {
      launch_units<decltype(v)>(grid, piece_rows, blocks_per_sm, stream, s, p, u, spans, ss, dst_stride, row_bytes,
                                rp, r, mark_epoch, timeout_ns, e, fence_sc);
    });
    cuda_check(cudaGetLastError(), "push_units_kernel");
  }
  barrier(flag_peers, errors, rank, world, ++epoch, timeout_ns, stream);
  return epoch;
}

// One flag barrier on the current stream (diagnostics and tests).
void push_flag_barrier(const at::Tensor& flag_peers, const at::Tensor& errors, int64_t rank, int64_t world,
                       int64_t epoch, int64_t timeout_ns) {
  check(flag_peers.is_cuda() && flag_peers.scalar_type() == at::kLong && flag_peers.numel() == world,
        "flag_peers must be a CUDA int64 [world] table");
  check(errors.is_cuda() && errors.scalar_type() == at::kInt, "errors must be a CUDA int32 tensor");
  check(world >= 1 && world <= 32 && rank >= 0 && rank < world, "rank/world out of range (world <= 32)");
  const c10::cuda::CUDAGuard guard(flag_peers.device());
  barrier(flag_peers, errors, rank, world, epoch, timeout_ns, c10::cuda::getCurrentCUDAStream().stream());
}

// The whole push gather on the current stream; returns the last epoch used.
//   srcs[i]: this rank's rows of output i ([rows, w_i], unit last-dim stride), stored through peer table
//   tables[i] (the destination buffer's base on every rank), at byte column dst_cols[i] of rows of
//   dst_strides[i] bytes. stage1: int64 [n, 4] items for srcs. fwd_srcs / fwd_tables / fwd_strides: this
//   rank's destination buffers (the sources of the relay's forwards), stage2 their items; with relay
//   false there is no stage 2 and no third barrier.
int64_t push_gather(const std::vector<at::Tensor>& srcs, const std::vector<at::Tensor>& tables,
                    const std::vector<int64_t>& dst_strides, const std::vector<int64_t>& dst_cols,
                    const at::Tensor& stage1, const std::vector<at::Tensor>& fwd_srcs,
                    const std::vector<at::Tensor>& fwd_tables, const at::Tensor& stage2, bool relay,
                    const at::Tensor& flag_peers, const at::Tensor& errors, int64_t rank, int64_t world,
                    int64_t epoch, int64_t timeout_ns) {
  check(srcs.size() == tables.size() && srcs.size() == dst_strides.size() && srcs.size() == dst_cols.size(),
        "srcs, tables, dst_strides and dst_cols must have one entry per output");
  check(fwd_srcs.size() == fwd_tables.size(), "fwd_srcs and fwd_tables must have the same length");
  check_table(stage1, 4, "stage1");
  check_table(stage2, 4, "stage2");
  check(flag_peers.is_cuda() && flag_peers.scalar_type() == at::kLong && flag_peers.numel() == world,
        "flag_peers must be a CUDA int64 [world] table");
  check(world >= 2 && world <= 32 && rank >= 0 && rank < world, "rank/world out of range (2 <= world <= 32)");
  for (size_t i = 0; i < srcs.size(); ++i) {
    check(srcs[i].is_cuda() && srcs[i].dim() == 2 && (srcs[i].size(0) == 0 || srcs[i].stride(1) == 1),
          "srcs[" + std::to_string(i) + "] must be a CUDA [rows, width] tensor with a unit last-dim stride");
    check(tables[i].is_cuda() && tables[i].scalar_type() == at::kLong && tables[i].numel() == world,
          "tables[" + std::to_string(i) + "] must be a CUDA int64 [world] table");
  }
  const c10::cuda::CUDAGuard guard(flag_peers.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  barrier(flag_peers, errors, rank, world, ++epoch, timeout_ns, stream);  // peers are past their earlier use
  for (size_t i = 0; i < srcs.size(); ++i) {
    const at::Tensor& s = srcs[i];
    if (s.size(0) == 0) continue;
    const int64_t eb = s.element_size();
    copy_rows(static_cast<const char*>(s.data_ptr()), s.stride(0) * eb, tables[i], stage1, dst_strides[i],
              dst_cols[i], s.size(1) * eb, stream);
  }
  barrier(flag_peers, errors, rank, world, ++epoch, timeout_ns, stream);  // every row (or share) landed
  if (!relay) return epoch;
  for (size_t i = 0; i < fwd_srcs.size(); ++i) {
    const at::Tensor& b = fwd_srcs[i];
    const int64_t eb = b.element_size();
    copy_rows(static_cast<const char*>(b.data_ptr()), b.stride(0) * eb, fwd_tables[i], stage2, b.stride(0) * eb, 0,
              b.size(1) * eb, stream);
  }
  barrier(flag_peers, errors, rank, world, ++epoch, timeout_ns, stream);
  return epoch;
}
