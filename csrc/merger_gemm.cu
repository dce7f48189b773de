// qvdp: the patch merger's first GEMM with its whole epilogue, as one CUTLASS 3 Hopper kernel.
//
//   Y[m, n] = GELU( rstd[m] * (X @ W^T)[m, n] + negm[m] * S[n] + c[n] )      (exact-erf GELU)
//
// X: [M, K] bf16 row-major (raw merged patches for the folded post-shuffle norm, or an already
// normalised input), W: [N, K] bf16 row-major (nn.Linear layout; for the fold W = W1 * gamma),
// rstd / negm: fp32 per row (nullptr: 1 and 0), S / c: fp32 per column (nullptr: 0).
// With the norm folded, rstd = 1/sigma, negm = -mu/sigma and S = rowsum(W) give
// LayerNorm(x) @ W1^T + b1 exactly in real arithmetic; with nullptr rows it is bias + GELU.
//
// The mainloop is CUTLASS's TMA warp-specialised one (producer warp + consumer warpgroups); the
// epilogue is an epilogue-visitor tree: accumulator -> fma with per-row / per-column vectors ->
// GELU -> bf16 -> TMA store. Built as a plain C shared library (no torch ABI): the Python side
// calls it through ctypes on torch's current stream.  sm_90a only.

#include <cuda_runtime.h>

#include "cutlass/cutlass.h"
#include "cute/tensor.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/thread/activation.h"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

#ifndef QVDP_MERGER_VARIANT
#define QVDP_MERGER_VARIANT 0
#endif

using namespace cute;

namespace {

namespace fusion = cutlass::epilogue::fusion;

template <class TileShape, class ClusterShape, class MainSchedule, class EpiSchedule, bool Plain = false>
struct Fc1Gelu {
  using ElementAB = cutlass::bfloat16_t;
  using ElementD = cutlass::bfloat16_t;
  static constexpr int kAlign = 8;  // 16-byte rows for TMA
  static constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

  using PerRow = fusion::Sm90ColBroadcast<0, TileShape, float, float, Stride<_1, _0, int64_t>>;
  using PerCol = fusion::Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, _1, int64_t>>;
  // negm[m] * S[n] + c[n]
  using Shift = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::homogeneous_multiply_add, float, float, kRound>,
                                PerRow, PerCol, PerCol>;
  // acc * rstd[m] + shift
  using Pre = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::homogeneous_multiply_add, float, float, kRound>,
                              fusion::Sm90AccFetch, PerRow, Shift>;
  using GeluTree = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::epilogue::thread::GELU, ElementD, float, kRound>, Pre>;
  // Plain: D = acc (diagnostics only: the mainloop without the epilogue's work)
  using PlainTree = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::epilogue::thread::Identity, ElementD, float, kRound>,
                                    fusion::Sm90AccFetch>;
  using Tree = cute::conditional_t<Plain, PlainTree, GeluTree>;

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float,
      void, cutlass::layout::RowMajor, kAlign,
      ElementD, cutlass::layout::RowMajor, kAlign,
      EpiSchedule, Tree>::CollectiveOp;

  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp,
      ElementAB, cutlass::layout::RowMajor, kAlign,
      ElementAB, cutlass::layout::ColumnMajor, kAlign,
      float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      MainSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static typename Gemm::Arguments arguments(const void* X, const void* W, void* Y, int M, int N, int K,
                                            const float* rstd, const float* negm, const float* S,
                                            const float* c, int sm_count, int swizzle, int raster) {
    using StrideA = typename Gemm::GemmKernel::StrideA;
    using StrideB = typename Gemm::GemmKernel::StrideB;
    using StrideD = typename Gemm::GemmKernel::StrideD;
    StrideA sa = cutlass::make_cute_packed_stride(StrideA{}, make_shape(M, K, 1));
    StrideB sb = cutlass::make_cute_packed_stride(StrideB{}, make_shape(N, K, 1));
    StrideD sd = cutlass::make_cute_packed_stride(StrideD{}, make_shape(M, N, 1));
    cutlass::KernelHardwareInfo hw;
    hw.sm_count = sm_count;
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {M, N, K, 1},
        {static_cast<const ElementAB*>(X), sa, static_cast<const ElementAB*>(W), sb},
        {{}, nullptr, sd, static_cast<ElementD*>(Y), sd},
        hw};
    using Raster = cutlass::gemm::kernel::detail::RasterOrderOptions;
    args.scheduler.max_swizzle_size = swizzle;
    args.scheduler.raster_order = raster == 1 ? Raster::AlongM : raster == 2 ? Raster::AlongN : Raster::Heuristic;
    if constexpr (Plain) {
      args.epilogue.thread = {{}, {}};
    } else {
      // Each tree node's arguments: {children..., op}; a broadcast leaf: {ptr, value when ptr is null}.
      args.epilogue.thread = {
          {                          // Pre: acc * rstd + shift
           {},                       //   acc
           {rstd, 1.0f},             //   rstd[m]
           {                         //   Shift: negm * S + c
            {negm, 0.0f},            //     negm[m]
            {S, 0.0f},               //     S[n]
            {c, 0.0f},               //     c[n]
            {}},
           {}},
          {}};                       // GELU
    }
    return args;
  }
};

#if QVDP_MERGER_VARIANT == 0
using Config = Fc1Gelu<Shape<_128, _256, _64>, Shape<_2, _1, _1>, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                       cutlass::epilogue::TmaWarpSpecializedCooperative>;
#elif QVDP_MERGER_VARIANT == 1
using Config = Fc1Gelu<Shape<_128, _256, _64>, Shape<_1, _2, _1>, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                       cutlass::epilogue::TmaWarpSpecializedCooperative>;
#elif QVDP_MERGER_VARIANT == 2
using Config = Fc1Gelu<Shape<_128, _128, _64>, Shape<_2, _1, _1>, cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                       cutlass::epilogue::TmaWarpSpecialized>;
#elif QVDP_MERGER_VARIANT == 3
using Config = Fc1Gelu<Shape<_256, _128, _64>, Shape<_1, _2, _1>, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                       cutlass::epilogue::TmaWarpSpecializedCooperative>;
#elif QVDP_MERGER_VARIANT == 4  // diagnostics: variant 1's mainloop, D = acc
using Config = Fc1Gelu<Shape<_128, _256, _64>, Shape<_1, _2, _1>, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                       cutlass::epilogue::TmaWarpSpecializedCooperative, true>;
#elif QVDP_MERGER_VARIANT == 5
using Config = Fc1Gelu<Shape<_64, _256, _64>, Shape<_1, _2, _1>, cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                       cutlass::epilogue::TmaWarpSpecialized>;
#elif QVDP_MERGER_VARIANT == 6
using Config = Fc1Gelu<Shape<_128, _256, _64>, Shape<_1, _1, _1>, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                       cutlass::epilogue::TmaWarpSpecializedCooperative>;
#else
#error "unknown QVDP_MERGER_VARIANT"
#endif

#define QVDP_CAT2(a, b) a##b
#define QVDP_CAT(a, b) QVDP_CAT2(a, b)
#define QVDP_SYM(name) QVDP_CAT(name, QVDP_CAT(_v, QVDP_MERGER_VARIANT))

}  // namespace

extern "C" {

// Bytes of scratch the kernel needs for this problem (the caller allocates). swizzle: the persistent
// scheduler's tile-group size (1, 2, 4, 8); raster: 0 heuristic, 1 along M, 2 along N.
size_t QVDP_SYM(qvdp_fc1_gelu_workspace)(int M, int N, int K, int sm_count, int swizzle, int raster) {
  auto args = Config::arguments(nullptr, nullptr, nullptr, M, N, K, nullptr, nullptr, nullptr, nullptr, sm_count,
                                swizzle, raster);
  return Config::Gemm::get_workspace_size(args);
}

// 0 on success; 1: shape not supported (alignment), 2: initialise failed, 3: launch failed.
int QVDP_SYM(qvdp_fc1_gelu)(const void* X, const void* W, void* Y, int M, int N, int K, const float* rstd,
                            const float* negm, const float* S, const float* c, void* workspace, int sm_count,
                            int swizzle, int raster, cudaStream_t stream) {
  auto args = Config::arguments(X, W, Y, M, N, K, rstd, negm, S, c, sm_count, swizzle, raster);
  typename Config::Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return 1;
  if (gemm.initialize(args, workspace, stream) != cutlass::Status::kSuccess) return 2;
  if (gemm.run(stream) != cutlass::Status::kSuccess) return 3;
  return cudaGetLastError() == cudaSuccess ? 0 : 3;
}

}  // extern "C"
