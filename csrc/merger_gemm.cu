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

#ifndef QVDP_MERGER_VARIANT
#define QVDP_MERGER_VARIANT 0
#endif
// Programmatic dependent launch (PDL): every kernel waits for the kernel before it on the stream
// (griddepcontrol.wait) before its first global load, and lets the next one launch at its last tile; a launch
// with pdl = 1 may then start (prologue: barriers, TMA descriptor prefetch) while the previous kernel drains.
// Without pdl the waits are no-ops. Not for the stream-K configurations (7, 21, 22: CUTLASS 4.2's stream-K
// scheduler does not compile with it), which then launch without PDL whatever pdl says.
#if QVDP_MERGER_VARIANT == 7 || QVDP_MERGER_VARIANT == 21 || QVDP_MERGER_VARIANT == 22
#define QVDP_GDC 0
#else
#define QVDP_GDC 1
#define CUTLASS_ENABLE_GDC_FOR_SM90 1
#endif
// Variants 40+ need CuTe's "extended" wgmma shapes (N = 8 * k beyond 64/96/128/192/256). Without them the
// collective builder's ss_op_selector falls back to the largest listed N dividing the tile's: a 128x160 tile was
// built from 64x32x16 instructions, five per warpgroup per k16 step (session 24's "stalled" cuBLAS-tile kernels).
#if QVDP_MERGER_VARIANT >= 40
#define CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED 1
#endif

#include "qvdp_cutlass_gemm.h"
#include "qvdp_fold_mainloop.h"

using namespace cute;

namespace {

using namespace qvdp_cutlass;
using cutlass::epilogue::thread::Identity;

// Act: the epilogue's activation (GeluErfc for fc1, the exact-erf GELU of qvdp_cutlass_gemm.h; Identity gives
// fc2's D = acc + c[n] with rstd / negm / S null).
// StreamK: with cutlass::gemm::StreamKScheduler, force the stream-K decomposition (CUTLASS's heuristic keeps
// data-parallel tiles whenever the last wave is at least half full, e.g. 224 tiles on 132 SMs).
// Wrap / ExtraSmem: the mainloop wrapper (qvdp_cutlass::Gemm; FoldWrap: the per-patch norm folded, variant 30).
// Swap: the transposed problem Y^T [N, M] = W [N, K] @ X [M, K]^T, stored column-major (i.e. Y [M, N] row-major as
// always): the GEMM's M is the features and its N the tokens, so the tile quantises N and M the other way round
// (at M = 3520 tokens a 128x224 tile gives 16 x 16 = 256 tiles for N = 2048, 1.94 rounds on 132 SMs, against the
// 128x256 / 256x128 tiles' 224 = 1.70; a 128x160 tile 36 x 22 = 792 = 6.0 rounds for N = 4608). Lean trees only:
// Act(acc + c[n]) with c per feature = per row of the GEMM.
template <class TileShape, class ClusterShape, class MainSchedule, class EpiSchedule, bool Plain = false,
          class Scheduler = void, template <class> class Act = GeluErfc, bool StreamK = false,
          template <class> class Wrap = NoWrap, int ExtraSmem = 0, bool Lean = false, bool Swap = false>
struct Fc1Gelu {
  // Lean (and every Swap form): Act(acc + c) only (no per-row rstd / negm, no S): the pre-norm merger's fc1, two
  // FMAs and three broadcast leaves less per element; a launch with rstd, negm or S returns 1 (unsupported). c is
  // per feature: per column of the GEMM, or per row where it is swapped.
  static constexpr bool kLean = Lean || Swap;
  using LeanTree = fusion::Sm90EVT<fusion::Sm90Compute<Act, ElementD, float, kRound>,
                                   fusion::Sm90EVT<fusion::Sm90Compute<cutlass::plus, float, float, kRound>,
                                                   fusion::Sm90AccFetch,
                                                   cute::conditional_t<Swap, PerRow<TileShape>, PerCol<TileShape>>>>;
  // negm[m] * S[n] + c[n]
  using Shift = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::homogeneous_multiply_add, float, float, kRound>,
                                PerRow<TileShape>, PerCol<TileShape>, PerCol<TileShape>>;
  // acc * rstd[m] + shift
  using Pre = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::homogeneous_multiply_add, float, float, kRound>,
                              fusion::Sm90AccFetch, PerRow<TileShape>, Shift>;
  using GeluTree = fusion::Sm90EVT<fusion::Sm90Compute<Act, ElementD, float, kRound>, Pre>;
  using G = qvdp_cutlass::Gemm<TileShape, ClusterShape, MainSchedule, EpiSchedule,
                               cute::conditional_t<Plain, PlainTree, cute::conditional_t<kLean, LeanTree, GeluTree>>,
                               Scheduler, Wrap, ExtraSmem,
                               cute::conditional_t<Swap, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>>;
  using Gemm = typename G::Op;

  static typename Gemm::Arguments arguments(const void* X, const void* W, void* Y, int M, int N, int K,
                                            const float* rstd, const float* negm, const float* S,
                                            const float* c, int sm_count, int swizzle, int raster) {
    auto args = Swap ? G::arguments(W, X, Y, N, M, K, sm_count) : G::arguments(X, W, Y, M, N, K, sm_count);
    using Raster = cutlass::gemm::kernel::detail::RasterOrderOptions;
    args.scheduler.max_swizzle_size = swizzle;
    args.scheduler.raster_order = raster == 1 ? Raster::AlongM : raster == 2 ? Raster::AlongN : Raster::Heuristic;
    if constexpr (StreamK) {
      args.scheduler.decomposition_mode = cutlass::gemm::kernel::detail::DecompositionMode::StreamK;
    }
    if constexpr (Plain) {
      args.epilogue.thread = {{}, {}};
    } else if constexpr (kLean) {
      args.epilogue.thread = {{{}, {c, 0.0f}, {}}, {}};  // {{acc, c, plus}, Act}
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

// The swapped configurations (70-76): Fc1Gelu with Swap; Plain: D = acc.
template <class TileShape, class ClusterShape, class MainSchedule, class EpiSchedule, template <class> class Act,
          bool Plain = false>
using Swapped = Fc1Gelu<TileShape, ClusterShape, MainSchedule, EpiSchedule, Plain, void, Act, false, NoWrap, 0, false,
                        true>;

#if QVDP_MERGER_VARIANT == 0
using Config = Fc1Gelu<Shape<_128, _256, _64>, Shape<_2, _1, _1>, Coop, CoopEpi>;
#elif QVDP_MERGER_VARIANT == 1
using Config = Fc1Gelu<Shape<_128, _256, _64>, Shape<_1, _2, _1>, Coop, CoopEpi>;
#elif QVDP_MERGER_VARIANT == 2
using Config = Fc1Gelu<Shape<_128, _128, _64>, Shape<_2, _1, _1>, PingPong, PingPongEpi>;
#elif QVDP_MERGER_VARIANT == 3
using Config = Fc1Gelu<Shape<_256, _128, _64>, Shape<_1, _2, _1>, Coop, CoopEpi>;
#elif QVDP_MERGER_VARIANT == 4  // diagnostics: variant 1's mainloop, D = acc
using Config = Fc1Gelu<Shape<_128, _256, _64>, Shape<_1, _2, _1>, Coop, CoopEpi, true>;
#elif QVDP_MERGER_VARIANT == 5
using Config = Fc1Gelu<Shape<_64, _256, _64>, Shape<_1, _2, _1>, PingPong, PingPongEpi>;
#elif QVDP_MERGER_VARIANT == 6
using Config = Fc1Gelu<Shape<_128, _256, _64>, Shape<_1, _1, _1>, Coop, CoopEpi>;
#elif QVDP_MERGER_VARIANT == 7  // variant 1 with the stream-K scheduler, heuristic decomposition (which keeps
                                // data-parallel tiles when the last wave is at least half full: M=3520, N=4608)
using Config = Fc1Gelu<Shape<_128, _256, _64>, Shape<_1, _2, _1>, Coop, CoopEpi, false, cutlass::gemm::StreamKScheduler>;
#elif QVDP_MERGER_VARIANT == 11  // diagnostics: variant 12's mainloop, D = acc
using Config = Fc1Gelu<Shape<_128, _128, _64>, Shape<_1, _2, _1>, PingPong, PingPongEpi, true>;
#elif QVDP_MERGER_VARIANT == 12  // ping-pong: the two consumers alternate tiles (the epilogue still cost as much, s21c)
using Config = Fc1Gelu<Shape<_128, _128, _64>, Shape<_1, _2, _1>, PingPong, PingPongEpi>;
#elif QVDP_MERGER_VARIANT == 13
using Config = Fc1Gelu<Shape<_128, _192, _64>, Shape<_1, _2, _1>, PingPong, PingPongEpi>;
// 14, 15, 19: ping-pong kernels with no activation (fc2: D = acc + c[n]); 8-10, 16-18 and 20 were measured
// in session 21 and dropped (never the fastest); 24-27 (cuBLAS's fc1 tile, 128x160x64 with cluster 2x1, as
// cooperative / ping-pong / D = acc / fc2 kernels) in session 24: 40-45% behind cuBLAS, dropped
#elif QVDP_MERGER_VARIANT == 14
using Config = Fc1Gelu<Shape<_128, _128, _64>, Shape<_1, _2, _1>, PingPong, PingPongEpi, false, void, Identity>;
#elif QVDP_MERGER_VARIANT == 15
using Config = Fc1Gelu<Shape<_128, _128, _64>, Shape<_2, _1, _1>, PingPong, PingPongEpi, false, void, Identity>;
#elif QVDP_MERGER_VARIANT == 19
using Config = Fc1Gelu<Shape<_128, _192, _64>, Shape<_1, _2, _1>, PingPong, PingPongEpi, false, void, Identity>;
// 21, 22: fc2 with the stream-K decomposition forced (session 22: 2-6% ahead of cuBLAS on some 6400-row fc2
// shapes, behind at 3520 x 2048 where the 1.7-wave tail was the reason to try it; fc1 in this form, measured as
// variant 23, was 2-12% behind variant 1 and dropped)
#elif QVDP_MERGER_VARIANT == 21
using Config = Fc1Gelu<Shape<_128, _256, _64>, Shape<_1, _2, _1>, Coop, CoopEpi, false, cutlass::gemm::StreamKScheduler,
                       Identity, true>;
#elif QVDP_MERGER_VARIANT == 22
using Config = Fc1Gelu<Shape<_256, _128, _64>, Shape<_1, _2, _1>, Coop, CoopEpi, false, cutlass::gemm::StreamKScheduler,
                       Identity, true>;
// 30: variant 0's kernel with the per-patch norm folded into its mainloop (qvdp_fold_mainloop.h): the
// accumulator rescaled per row between the four patch chunks, so the pre-norm merger needs no norm pass
#elif QVDP_MERGER_VARIANT == 30
#define QVDP_FOLD 1
using Config = Fc1Gelu<Shape<_128, _256, _64>, Shape<_2, _1, _1>, Coop, CoopEpi, false, void,
                       GeluErfc, false, FoldWrap, 256>;
// 43, 45: tiles whose N is not 64/128/192/256, from one wgmma of the tile's N per warpgroup and k16 step (the
// extended shapes above). Session 26 (H200): ping-pong 128x160 with cluster 2x1 (43) is the tuned pick for fc1 at
// most 6400-row shapes, its fc2 form (45) on some. The cooperative 128x160 (cuBLAS's own fc1 tile at M=3520,
// N=K=4608 on an H200), 128x144, ping-pong 128x176 / 64x256, and the cooperative kernels with 128x64 / 128x128
// epilogue sub-tiles were 0-30% behind variant 0 and removed (their definitions: commits b4a8e38 and 5683267;
// benchmarks/NOTES.md session 26).
#elif QVDP_MERGER_VARIANT == 43
using Config = Fc1Gelu<Shape<_128, _160, _64>, Shape<_2, _1, _1>, PingPong, PingPongEpi>;
#elif QVDP_MERGER_VARIANT == 45  // fc2 form (D = acc + c[n]) of the cooperative 128x160 tile, cluster 2x1
using Config = Fc1Gelu<Shape<_128, _160, _64>, Shape<_2, _1, _1>, Coop, CoopEpi, false, void, Identity>;
// 50, 52 (diagnostics library only: scripts/build_merger_gemm.py --variants 50 52, timed by
// benchmarks/diag_merger_gemm.py --extra-lib): the cooperative epilogue's cost. 50: variant 1 with Identity for
// the GELU (the vector tree alone); 52: variant 0 with the lean tree GELU(acc + c[n]) (session 26: the lean tree
// was not faster than the full one)
#elif QVDP_MERGER_VARIANT == 50
using Config = Fc1Gelu<Shape<_128, _256, _64>, Shape<_1, _2, _1>, Coop, CoopEpi, false, void, Identity>;
#elif QVDP_MERGER_VARIANT == 52
using Config = Fc1Gelu<Shape<_128, _256, _64>, Shape<_2, _1, _1>, Coop, CoopEpi, false, void,
                       GeluErfc, false, NoWrap, 0, true>;
// 60-63 (diagnostics library only): variants 0, 13, 12, 43 with CUTLASS's erff GELU, the epilogue of every fc1
// configuration until session 28 (GeluErfc, qvdp_cutlass_gemm.h, since: s28c, H200, M = 3520 / 6400 / 14080,
// N = K = 4608: variant 0 -3.0 / -3.3 / -5.4%, 12 -1.7 / -1.1 / -0.6%, 43 level)
#elif QVDP_MERGER_VARIANT == 60
using Config = Fc1Gelu<Shape<_128, _256, _64>, Shape<_2, _1, _1>, Coop, CoopEpi, false, void,
                       cutlass::epilogue::thread::GELU>;
#elif QVDP_MERGER_VARIANT == 61
using Config = Fc1Gelu<Shape<_128, _192, _64>, Shape<_1, _2, _1>, PingPong, PingPongEpi, false, void,
                       cutlass::epilogue::thread::GELU>;
#elif QVDP_MERGER_VARIANT == 62
using Config = Fc1Gelu<Shape<_128, _128, _64>, Shape<_1, _2, _1>, PingPong, PingPongEpi, false, void,
                       cutlass::epilogue::thread::GELU>;
#elif QVDP_MERGER_VARIANT == 63
using Config = Fc1Gelu<Shape<_128, _160, _64>, Shape<_2, _1, _1>, PingPong, PingPongEpi, false, void,
                       cutlass::epilogue::thread::GELU>;
// 70-76: the swapped forms (Swap above; D = Act(acc + c) with the GEMM's M the features, N the tokens).
// fc2 (Identity): 70 cooperative 128x224 cluster 2x1, 71 the same without a cluster, 74 cooperative 256x112
// cluster 2x1. fc1 (GeluErfc): 72 cooperative 128x160 cluster 2x1, 73 ping-pong 128x160 cluster 2x1, 76
// cooperative 256x160 (18 x 22 = 396 tiles at N = 4608, M = 3520: 3.0 rounds). 75: 72's kernel storing D = acc.
#elif QVDP_MERGER_VARIANT == 70
using Config = Swapped<Shape<_128, _224, _64>, Shape<_2, _1, _1>, Coop, CoopEpi, Identity>;
#elif QVDP_MERGER_VARIANT == 71
using Config = Swapped<Shape<_128, _224, _64>, Shape<_1, _1, _1>, Coop, CoopEpi, Identity>;
#elif QVDP_MERGER_VARIANT == 72
using Config = Swapped<Shape<_128, _160, _64>, Shape<_2, _1, _1>, Coop, CoopEpi, GeluErfc>;
#elif QVDP_MERGER_VARIANT == 73
using Config = Swapped<Shape<_128, _160, _64>, Shape<_2, _1, _1>, PingPong, PingPongEpi, GeluErfc>;
#elif QVDP_MERGER_VARIANT == 74
using Config = Swapped<Shape<_256, _112, _64>, Shape<_2, _1, _1>, Coop, CoopEpi, Identity>;
#elif QVDP_MERGER_VARIANT == 75
using Config = Swapped<Shape<_128, _160, _64>, Shape<_2, _1, _1>, Coop, CoopEpi, GeluErfc, true>;
#elif QVDP_MERGER_VARIANT == 76
using Config = Swapped<Shape<_256, _160, _64>, Shape<_1, _1, _1>, Coop, CoopEpi, GeluErfc>;
#else
#error "unknown QVDP_MERGER_VARIANT"
#endif

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

// The C interface's version: 2 since the launches take pdl (a library without this symbol is stale).
int QVDP_SYM(qvdp_merger_abi)() { return 2; }

// 0 on success; 1: shape not supported (alignment), 2: initialise failed, 3: launch failed. A call repeating
// one of the last few (same pointers and sizes) reuses its kernel Params (qvdp_cutlass::Gemm::run_cached).
// pdl = 1: launched as a programmatic dependent of the previous kernel on the stream (see the top).
int QVDP_SYM(qvdp_fc1_gelu)(const void* X, const void* W, void* Y, int M, int N, int K, const float* rstd,
                            const float* negm, const float* S, const float* c, void* workspace, int sm_count,
                            int swizzle, int raster, int pdl, cudaStream_t stream) {
  if (Config::kLean && (rstd != nullptr || negm != nullptr || S != nullptr)) return 1;
  auto u = [](const void* p) { return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(p)); };
  auto i = [](int v) { return static_cast<std::uint64_t>(static_cast<std::uint32_t>(v)); };
  typename Config::G::Key key{u(X), u(W), u(Y), i(M), i(N), i(K), u(rstd), u(negm), u(S), u(c), i(sm_count),
                              i(swizzle), i(raster), 0, 0, 0};
  return Config::G::run_cached(
      key, Config::arguments(X, W, Y, M, N, K, rstd, negm, S, c, sm_count, swizzle, raster), workspace, stream,
      pdl != 0 && QVDP_GDC);
}

#ifdef QVDP_FOLD
// fc1 + GELU with the per-patch norm folded (see qvdp_fold_mainloop.h): X the raw merged patches [M, K], W the
// folded weight W1 * gamma [N, K]; c1, c2 [3, M] and s [3, N] the rescale between chunks; rstd / negm / S the
// last chunk's r_3, -mu_3 r_3, S_3; chunk_k_tiles = (K / 4) / 64. Return codes as qvdp_fc1_gelu's.
int QVDP_SYM(qvdp_fc1_fold)(const void* X, const void* W, void* Y, int M, int N, int K, const float* rstd,
                            const float* negm, const float* S, const float* c, const float* c1, const float* c2,
                            const float* s, int chunk_k_tiles, void* workspace, int sm_count, int swizzle,
                            int raster, int pdl, cudaStream_t stream) {
  auto u = [](const void* p) { return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(p)); };
  auto i = [](int v) { return static_cast<std::uint64_t>(static_cast<std::uint32_t>(v)); };
  typename Config::G::Key key{u(X), u(W), u(Y), i(M), i(N), i(K), u(rstd), u(negm), u(S), u(c), i(sm_count),
                              i(swizzle), i(raster), 1, 0, 0, u(c1), u(c2), u(s), i(chunk_k_tiles)};
  auto args = Config::arguments(X, W, Y, M, N, K, rstd, negm, S, c, sm_count, swizzle, raster);
  args.mainloop.c1 = c1;
  args.mainloop.c2 = c2;
  args.mainloop.s = s;
  args.mainloop.chunk_k_tiles = chunk_k_tiles;
  return Config::G::run_cached(key, args, workspace, stream, pdl != 0 && QVDP_GDC);
}
#endif

}  // extern "C"
