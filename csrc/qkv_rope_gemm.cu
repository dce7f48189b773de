// qvdp: the attention's qkv projection with the 2D rotary applied in the GEMM's epilogue, as one
// CUTLASS 3 Hopper kernel (TMA warp-specialised mainloop + an epilogue-visitor tree).
//
//   Y[m, n] = rot( (X @ W^T)[m, n] + bias[n] )
//
// The caller hands W (and bias) with the rows of q and k reordered so that each rotate-half pair
// (column j and j + D/2 of a head) is two adjacent columns: 2i <- j = i, 2i + 1 <- j + D/2. The
// wgmma accumulator layout gives each thread adjacent column pairs, so the epilogue node rotates
// a pair inside one thread's registers:
//   y[2i]   = a * cos(t) - b * sin(t),   y[2i+1] = b * cos(t) + a * sin(t),
//   t = pos_r[m] * f[2i] (f > 0: the rows' half of the 2D rotary) or pos_c[m] * -f[2i] (f < 0: the columns'),
// with f the per-column signed frequency (0 for v: no rotation). This is the vision rotary, whose
// cos/sin tables repeat their first half; sin/cos come from the SFU (|error| <= ~1e-5 at these angles,
// far below bf16's rounding). Every input is a per-tile broadcast (bias, f per column; positions per
// row): the epilogue gathers nothing. q and k leave the kernel rotated with their head dims permuted the
// same way, which leaves q . k unchanged: the attention takes them as they are. X: [M, K] bf16, W: [N, K] bf16 (nn.Linear layout), bias fp32 [N]
// (permuted like W) or null, f fp32 [N] (permuted like W), pos_r / pos_c fp32 [M].
// Built as a plain C shared library (ctypes, no torch ABI). sm_90a only.

#include "qvdp_cutlass_gemm.h"

#ifndef QVDP_QKV_VARIANT
#define QVDP_QKV_VARIANT 0
#endif

namespace cutlass::epilogue::fusion {

// Compute node: the rotation of adjacent column pairs. Inputs, all per element: y = acc + bias[n], the
// column's signed frequency f[n] and the row's two positions pr[m], pc[m]. The angle is pr * f where
// f > 0 (the row half of the 2D rotary), pc * -f where f < 0 (the column half); f = 0 (v) gives the
// identity (sin 0 = 0, cos 0 = 1 exactly). No gathers: every input comes from a per-tile broadcast.
struct QvdpSm90RopePairs : Sm90VisitorImpl<> {
  using Sm90VisitorImpl<>::Sm90VisitorImpl;

  struct ConsumerStoreCallbacks : EmptyConsumerStoreCallbacks {
    template <typename ElementAccumulator, typename EY, typename EF, typename EP, int FragmentSize>
    CUTLASS_DEVICE Array<float, FragmentSize> visit(Array<ElementAccumulator, FragmentSize> const&, int, int, int,
                                                    Array<EY, FragmentSize> const& y, Array<EF, FragmentSize> const& f,
                                                    Array<EP, FragmentSize> const& pr,
                                                    Array<EP, FragmentSize> const& pc) {
      static_assert(FragmentSize % 2 == 0, "the rotation pairs need an even fragment");
      // Elements 2i and 2i + 1 of a fragment are columns n, n + 1 (n even) of one row: the wgmma
      // accumulator layout (checked on the GPU by tests/test_qkv_rope_gemm.py against an fp64 reference).
      Array<float, FragmentSize> out;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < FragmentSize; i += 2) {
        const float fi = static_cast<float>(f[i]);
        const float theta = fi >= 0.f ? static_cast<float>(pr[i]) * fi : static_cast<float>(pc[i]) * -fi;
        float sn, cs;
        __sincosf(theta, &sn, &cs);
        const float a = static_cast<float>(y[i]), b = static_cast<float>(y[i + 1]);
        out[i] = a * cs - b * sn;
        out[i + 1] = b * cs + a * sn;
      }
      return out;
    }
  };

  template <bool ReferenceSrc, class... Args>
  CUTLASS_DEVICE auto get_consumer_store_callbacks(ConsumerStoreArgs<Args...> const&) {
    return ConsumerStoreCallbacks{};
  }
};

}  // namespace cutlass::epilogue::fusion

using namespace cute;

namespace {

using namespace qvdp_cutlass;

template <class TileShape, class ClusterShape, class MainSchedule, class EpiSchedule, bool Plain = false>
struct QkvRope {
  // acc + bias[n]
  using Biased = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::plus, float, float, kRound>, fusion::Sm90AccFetch,
                                 PerCol<TileShape>>;
  // rotate(acc + bias, f[n], pr[m], pc[m]) -> bf16
  using Rope = fusion::Sm90EVT<fusion::QvdpSm90RopePairs, Biased, PerCol<TileShape>, PerRow<TileShape>,
                               PerRow<TileShape>>;
  using RopeTree = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::epilogue::thread::Identity, ElementD, float, kRound>,
                                   Rope>;
  using G = qvdp_cutlass::Gemm<TileShape, ClusterShape, MainSchedule, EpiSchedule,
                               cute::conditional_t<Plain, PlainTree, RopeTree>>;
  using Gemm = typename G::Op;

  static typename Gemm::Arguments arguments(const void* X, const void* W, void* Y, int M, int N, int K,
                                            const float* bias, const float* freq, const float* pos_r,
                                            const float* pos_c, int sm_count) {
    auto args = G::arguments(X, W, Y, M, N, K, sm_count);
    if constexpr (Plain) {
      args.epilogue.thread = {{}, {}};
    } else {
      // Each tree node's arguments: {children..., op}; a broadcast leaf: {ptr, value when ptr is null}.
      args.epilogue.thread = {
          {                               // Rope
           {{}, {bias, 0.0f}, {}},        //   acc + bias[n]
           {freq, 0.0f},                  //   f[n]
           {pos_r, 0.0f},                 //   pr[m]
           {pos_c, 0.0f},                 //   pc[m]
           {}},
          {}};                            // -> bf16
    }
    return args;
  }
};

#if QVDP_QKV_VARIANT == 0
using Config = QkvRope<Shape<_128, _256, _64>, Shape<_1, _2, _1>, Coop, CoopEpi>;
#elif QVDP_QKV_VARIANT == 1
using Config = QkvRope<Shape<_128, _128, _64>, Shape<_2, _1, _1>, PingPong, PingPongEpi>;
#elif QVDP_QKV_VARIANT == 2  // diagnostics: variant 0's mainloop, D = acc
using Config = QkvRope<Shape<_128, _256, _64>, Shape<_1, _2, _1>, Coop, CoopEpi, true>;
#else
#error "unknown QVDP_QKV_VARIANT"
#endif

#define QVDP_SYM(name) QVDP_CAT(name, QVDP_CAT(_v, QVDP_QKV_VARIANT))

}  // namespace

extern "C" {

size_t QVDP_SYM(qvdp_qkv_rope_workspace)(int M, int N, int K, int sm_count) {
  auto args = Config::arguments(nullptr, nullptr, nullptr, M, N, K, nullptr, nullptr, nullptr, nullptr, sm_count);
  return Config::Gemm::get_workspace_size(args);
}

// 0 on success; 1: shape not supported, 2: initialise failed, 3: launch failed.
int QVDP_SYM(qvdp_qkv_rope)(const void* X, const void* W, void* Y, int M, int N, int K, const float* bias,
                            const float* freq, const float* pos_r, const float* pos_c, void* workspace,
                            int sm_count, cudaStream_t stream) {
  return Config::G::run(Config::arguments(X, W, Y, M, N, K, bias, freq, pos_r, pos_c, sm_count), workspace, stream);
}

}  // extern "C"
