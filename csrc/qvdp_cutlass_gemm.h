// qvdp: what the opt-in CUTLASS kernels share (csrc/merger_gemm.cu, csrc/qkv_rope_gemm.cu): a Hopper GEMM
// Y[M, N] = epilogue(X[M, K] @ W[N, K]^T), bf16 in and out, fp32 accumulation, assembled from CUTLASS's
// collective builders (TMA warp-specialised mainloop, epilogue-visitor tree `Tree`), its arguments and its
// launch. sm_90a only.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <mutex>

#include "cutlass/cutlass.h"
#include "cute/tensor.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/thread/activation.h"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

namespace qvdp_cutlass {

using namespace cute;

using ElementAB = cutlass::bfloat16_t;
using ElementD = cutlass::bfloat16_t;
constexpr int kAlign = 8;  // 16-byte rows for TMA
constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

namespace fusion = cutlass::epilogue::fusion;

// Schedules: cooperative (two consumer warpgroups on one tile) and ping-pong (alternating tiles)
using Coop = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
using CoopEpi = cutlass::epilogue::TmaWarpSpecializedCooperative;
using PingPong = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
using PingPongEpi = cutlass::epilogue::TmaWarpSpecialized;

// Epilogue-tree leaves: an fp32 vector per row (length M) or per column (length N), loaded once per tile
template <class TileShape>
using PerRow = fusion::Sm90ColBroadcast<0, TileShape, float, float, Stride<_1, _0, int64_t>>;
template <class TileShape>
using PerCol = fusion::Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, _1, int64_t>>;
// D = acc (diagnostics: the mainloop without the epilogue's work)
using PlainTree = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::epilogue::thread::Identity, ElementD, float, kRound>,
                                  fusion::Sm90AccFetch>;

// Exact-erf GELU, x * Phi(x) = x * (1 - q) for x >= 0 and x * q for x < 0, with q = erfc(|x| / sqrt 2) / 2
// from a fit of the form t * exp(-x^2 / 2) * P(t), t = 1 / (1 + p |x| / sqrt 2), p = 0.335, P of degree 7
// (coefficients fitted for the smallest relative error of erfc on [0, 14]: 1.6e-7). In fp32 its relative error is
// <= 1.6e-6 for x > -5 and <= 7.2e-6 down to x = -11.5 (fp32 evaluation with exact reciprocal and exp2; the
// rcp / ex2 approximations used here add ~2^-22), with no cancellation for x < 0, where 0.5 x (1 + erff(x / sqrt 2))
// loses the tail (relative error up to 0.2 near x = -5). 15 FP32 instructions and 2 MUFU per element against erff's
// ~22 (its two polynomial branches as selects) and 1 MUFU; the cooperative epilogue is issue-bound on it (session 28:
// variant 0 3-3.5% faster with it than with CUTLASS's erff GELU at 3520-14080 rows, N = K = 4608).
CUTLASS_HOST_DEVICE float gelu_erfc(float x) {
#if defined(__CUDA_ARCH__)
  float a = fabsf(x);
  float d = fmaf(a, 0.2368807717f, 1.0f);  // 1 + p |x| / sqrt 2, p = 0.335
  float t;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(t) : "f"(d));
  float p = -6.006897883e-02f;  // the fit's coefficients / 2 (q = erfc / 2), highest degree first
  p = fmaf(p, t, 1.881990598e-01f);
  p = fmaf(p, t, -1.140790118e-01f);
  p = fmaf(p, t, 1.547405906e-01f);
  p = fmaf(p, t, 4.730256656e-02f);
  p = fmaf(p, t, 9.557727363e-02f);
  p = fmaf(p, t, 9.379387755e-02f);
  p = fmaf(p, t, 9.453454161e-02f);
  float e;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"((a * -0.72134752f) * a));  // exp(-x^2 / 2)
  float q = (t * p) * e;
  return x * (x >= 0.0f ? 1.0f - q : q);
#else
  return 0.5f * x * std::erfc(-x * 0.70710678118654752f);
#endif
}

template <class T>
struct GeluErfc {
  static const bool kIsHeavy = true;
  CUTLASS_HOST_DEVICE T operator()(T const& v) const { return T(gelu_erfc(float(v))); }
};

template <class T, int N>
struct GeluErfc<cutlass::Array<T, N>> {
  static const bool kIsHeavy = true;
  CUTLASS_HOST_DEVICE cutlass::Array<T, N> operator()(cutlass::Array<T, N> const& v) const {
    cutlass::Array<T, N> y;
    GeluErfc<T> op;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) y[i] = op(v[i]);
    return y;
  }
};

// The builder's mainloop as it is (Gemm's default Wrap).
template <class Mainloop>
struct NoWrap {
  using type = Mainloop;
};

// Scheduler: void (the persistent data-parallel tile scheduler) or cutlass::gemm::StreamKScheduler (the last
// partial wave's tiles split along K over the idle SMs; cooperative schedule only). Wrap<M>::type: the mainloop
// the kernel runs, built from the builder's M (NoWrap: M itself); ExtraSmem: bytes of shared memory it adds.
// LayoutD: the output's layout (ColumnMajor: D [M, N] stored as its transpose [N, M] row-major, for the swapped
// forms of merger_gemm.cu, where the GEMM's M is the features and N the tokens).
template <class TileShape, class ClusterShape, class MainSchedule, class EpiSchedule, class Tree,
          class Scheduler = void, template <class> class Wrap = NoWrap, int ExtraSmem = 0,
          class LayoutD = cutlass::layout::RowMajor>
struct Gemm {
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float,
      void, LayoutD, kAlign,
      ElementD, LayoutD, kAlign,
      EpiSchedule, Tree>::CollectiveOp;

  using Mainloop = typename Wrap<typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp,
      ElementAB, cutlass::layout::RowMajor, kAlign,
      ElementAB, cutlass::layout::ColumnMajor, kAlign,
      float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<
          static_cast<int>(sizeof(typename Epilogue::SharedStorage)) + ExtraSmem>,
      MainSchedule>::CollectiveOp>::type;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue, Scheduler>;
  using Op = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  // The arguments without the epilogue tree's (the caller fills args.epilogue.thread).
  static typename Op::Arguments arguments(const void* X, const void* W, void* Y, int M, int N, int K, int sm_count) {
    using StrideA = typename Op::GemmKernel::StrideA;
    using StrideB = typename Op::GemmKernel::StrideB;
    using StrideD = typename Op::GemmKernel::StrideD;
    StrideA sa = cutlass::make_cute_packed_stride(StrideA{}, make_shape(M, K, 1));
    StrideB sb = cutlass::make_cute_packed_stride(StrideB{}, make_shape(N, K, 1));
    StrideD sd = cutlass::make_cute_packed_stride(StrideD{}, make_shape(M, N, 1));
    cutlass::KernelHardwareInfo hw;
    hw.sm_count = sm_count;
    return typename Op::Arguments{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {M, N, K, 1},
        {static_cast<const ElementAB*>(X), sa, static_cast<const ElementAB*>(W), sb},
        {{}, nullptr, sd, static_cast<ElementD*>(Y), sd},
        hw};
  }

  // 0 on success; 1: shape not supported (alignment), 2: initialise failed, 3: launch failed.
  static int run(typename Op::Arguments const& args, void* workspace, cudaStream_t stream) {
    Op gemm;
    if (gemm.can_implement(args) != cutlass::Status::kSuccess) return 1;
    if (gemm.initialize(args, workspace, stream) != cutlass::Status::kSuccess) return 2;
    if (gemm.run(stream) != cutlass::Status::kSuccess) return 3;
    return cudaGetLastError() == cudaSuccess ? 0 : 3;
  }

  // Every launch argument of the C entry point (pointers, sizes, options) as integers: equal keys give
  // equal kernel Params.
  using Key = std::array<std::uint64_t, 20>;

  // run() with the host work of a repeated call skipped. run() checks the shape, encodes the TMA
  // descriptors and sets the kernel's shared-memory attribute on every call. Here the last kEntries
  // calls' Params are kept by key (with the device), so a call that repeats one (the caching allocator
  // hands back the same buffers call after call) launches at once, and the attribute is set once per
  // device. A launch with a workspace (stream-K: zeroed before every launch) takes run().
  // QVDP_CUTLASS_PARAM_CACHE=0 turns the cache off (A/B timing of the host path).
  // pdl: launch as a programmatic dependent of the kernel before it on the stream (PDL; the kernel must be built
  // with CUTLASS_ENABLE_GDC_FOR_SM90, so that it waits for that kernel before touching global memory): its
  // launch and prologue overlap that kernel's tail. Launches with a workspace (run()) never use it.
  static int run_cached(Key const& key, typename Op::Arguments const& args, void* workspace,
                        cudaStream_t stream, bool pdl = false) {
    char const* off = std::getenv("QVDP_CUTLASS_PARAM_CACHE");
    if (workspace != nullptr || (off != nullptr && off[0] == '0')) return run(args, workspace, stream);
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return run(args, workspace, stream);
    using Params = typename Op::Params;
    struct Entry {
      Key key;
      int dev = -1;
      Params params;
    };
    constexpr int kEntries = 8;
    static std::mutex mu;
    static Entry cache[kEntries];
    static int next = 0;
    static std::uint64_t attribute_set = 0;  // one bit per device
    Params params;
    {
      std::lock_guard<std::mutex> lock(mu);
      int hit = -1;
      for (int i = 0; i < kEntries; ++i) {
        if (cache[i].dev == dev && cache[i].key == key) {
          hit = i;
          break;
        }
      }
      if (hit < 0) {
        if (Op::can_implement(args) != cutlass::Status::kSuccess) return 1;
        if (!(attribute_set >> dev & 1)) {
          int smem = Op::GemmKernel::SharedStorageSize;
          if (smem >= (48 << 10) &&
              cudaFuncSetAttribute(cutlass::device_kernel<typename Op::GemmKernel>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess) {
            cudaGetLastError();
            return 2;
          }
          attribute_set |= std::uint64_t(1) << dev;
        }
        hit = next;
        next = (next + 1) % kEntries;
        cache[hit].key = key;
        cache[hit].dev = dev;
        cache[hit].params = Op::GemmKernel::to_underlying_arguments(args, nullptr);
      }
      params = cache[hit].params;
    }
    if (Op::run(params, stream, nullptr, pdl) != cutlass::Status::kSuccess) return 3;
    return cudaGetLastError() == cudaSuccess ? 0 : 3;
  }
};

}  // namespace qvdp_cutlass

#define QVDP_CAT2(a, b) a##b
#define QVDP_CAT(a, b) QVDP_CAT2(a, b)
