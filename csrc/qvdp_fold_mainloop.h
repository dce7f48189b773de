// qvdp: a CUTLASS 3 Hopper mainloop (the collective builder's TMA warp-specialised one, wrapped) that folds the
// patch merger's per-patch LayerNorm / RMSNorm into fc1.
//
// The merged row m is four patches x_j (j = 0..3, each H wide) with their own mean mu_j and 1 / sigma_j = r_j.
// With the norm's weight folded into the GEMM's B (WG = W1 * gamma, per chunk S_j[n] = sum over the chunk of
// WG[n, :]) and A_j = x_j . WG_j^T the chunk's partial dot product,
//
//   LN(x) @ W1^T + b1 = sum_j r_j (A_j - mu_j S_j[n]) + c[n].
//
// One accumulator carries the sum: at the boundary after chunk j (j < 3) every accumulator element becomes
//
//   acc = acc * c1[j][m] + c2[j][m] * S_j[n],   c1 = r_j / r_(j+1),  c2 = -mu_j r_j / r_(j+1),
//
// so after the last chunk acc = (sum_(j<3) r_j (A_j - mu_j S_j)) / r_3 + A_3, and the epilogue's
// rstd[m] * acc + negm[m] * S[n] + c[n] with rstd = r_3, negm = -mu_3 r_3, S = S_3 finishes it. The
// normalised [N, H] patches are never written; a statistics pass (qvdp.ops.patch_merger) writes c1, c2, r_3,
// -mu_3 r_3 per merged row.
//
// The rescale needs the tile's row / column offsets, which the kernel hands to the producer's load() but not to
// the consumers' mma(): the producer warp stores them in shared memory (a slot per tile parity) before loading
// the tile, ordered before the consumers' read by the pipeline's full barrier (the producer's arrive releases,
// the consumers' wait acquires). The producer writes tile t + 2's slot once it has acquired the stage of tile
// t + 1's last k tile, i.e. once the consumers released k tile 2 T - 1 - Stages counted from tile t's first
// (T k tiles per tile); they read tile t's slot before its first k tile, so 2 T >= Stages + 1 keeps the slot safe:
// with the fold T = 4 chunk_k_tiles >= 4 and Stages = 4. (Without the rescale, chunk_k_tiles = 0, the slot is
// read but not used.)

#pragma once

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"

namespace qvdp_cutlass {

using namespace cute;

template <class Base>
struct FoldMainloop : Base {
  using typename Base::MainloopPipeline;
  using typename Base::PipelineState;
  using typename Base::TiledMma;
  using typename Base::TileShape;
  using typename Base::SmemLayoutA;
  using typename Base::SmemLayoutB;

  struct Arguments : Base::Arguments {
    float const* c1 = nullptr;  // [3, M]: r_j / r_(j+1)
    float const* c2 = nullptr;  // [3, M]: -mu_j r_j / r_(j+1)
    float const* s = nullptr;   // [3, N]: S_j, the folded weight's row sums over chunk j
    int chunk_k_tiles = 0;      // k tiles per patch chunk (H / BLK_K); 0: no rescale (a plain GEMM)

    Arguments() = default;
    template <class ElementA, class StrideA, class ElementB, class StrideB>
    Arguments(ElementA const* a, StrideA da, ElementB const* b, StrideB db) : Base::Arguments{a, da, b, db} {}
  };

  struct Params : Base::Params {
    float const* c1;
    float const* c2;
    float const* s;
    int chunk_k_tiles;
    int M;
    int N;
  };

  struct TensorStorage : Base::TensorStorage {
    int tile_mn[2][2];  // (m, n) tile indices, one slot per tile parity
  };

  template <class ProblemShape>
  static Params to_underlying_arguments(ProblemShape const& problem_shape, Arguments const& args, void* workspace) {
    auto mnkl = append<4>(problem_shape, 1);
    return Params{Base::to_underlying_arguments(problem_shape, args, workspace), args.c1, args.c2, args.s,
                  args.chunk_k_tiles, int(get<0>(mnkl)), int(get<1>(mnkl))};
  }

  template <class ProblemShape>
  static bool can_implement(ProblemShape const& problem_shape, Arguments const& args) {
    auto mnkl = append<4>(problem_shape, 1);
    int k_tiles = int(get<2>(mnkl)) / int(size<2>(TileShape{}));
    bool fold_ok = args.chunk_k_tiles == 0 ||
                   (args.c1 && args.c2 && args.s && args.chunk_k_tiles > 0 &&
                    int(get<2>(mnkl)) % int(size<2>(TileShape{})) == 0 && k_tiles == 4 * args.chunk_k_tiles);
    return fold_ok && Base::can_implement(problem_shape, args);
  }

  template <class TensorA, class TensorB, class KTileIterator, class BlockCoord>
  CUTLASS_DEVICE void load(Params const& params, MainloopPipeline pipeline, PipelineState smem_pipe_write,
                           cute::tuple<TensorA, TensorB> const& load_inputs, BlockCoord const& blk_coord,
                           KTileIterator k_tile_iter, int k_tile_count, int thread_idx,
                           uint32_t block_rank_in_cluster, TensorStorage& shared) {
    if (k_tile_count > 0) {
      int slot = int(smem_pipe_write.count() / uint32_t(k_tile_count)) & 1;
      shared.tile_mn[slot][0] = int(get<0>(blk_coord));  // every lane the same value, then ordered before the
      shared.tile_mn[slot][1] = int(get<1>(blk_coord));  // elected lane's barrier arrive by the warp sync
      __syncwarp();
    }
    Base::load(params, pipeline, smem_pipe_write, load_inputs, blk_coord, k_tile_iter, k_tile_count, thread_idx,
               block_rank_in_cluster, shared);
  }

  template <class FrgTensorC>
  CUTLASS_DEVICE void mma(MainloopPipeline pipeline, PipelineState smem_pipe_read, FrgTensorC& accum,
                          int k_tile_count, int thread_idx, TensorStorage& shared, Params const& params) {
    Tensor sA = make_tensor(make_smem_ptr(shared.smem_A.data()), SmemLayoutA{});  // (BLK_M, BLK_K, PIPE)
    Tensor sB = make_tensor(make_smem_ptr(shared.smem_B.data()), SmemLayoutB{});  // (BLK_N, BLK_K, PIPE)
    constexpr int kWarpGroups = size(TiledMma{}) / cutlass::NumThreadsPerWarpGroup;
    Layout wg_layout = make_layout(Int<kWarpGroups>{}, Int<cutlass::NumThreadsPerWarpGroup>{});
    int wg = __shfl_sync(0xFFFFFFFF, thread_idx / cutlass::NumThreadsPerWarpGroup, 0);
    TiledMma tiled_mma;
    auto wg_mma = tiled_mma.get_slice(wg_layout(wg));
    Tensor tCrA = wg_mma.make_fragment_A(wg_mma.partition_A(sA));  // (MMA, MMA_M, MMA_K, PIPE)
    Tensor tCrB = wg_mma.make_fragment_B(wg_mma.partition_B(sB));  // (MMA, MMA_N, MMA_K, PIPE)
    // each accumulator element's (row, column) in the tile
    Tensor tCcC = tiled_mma.get_thread_slice(thread_idx)
                      .partition_C(make_identity_tensor(make_shape(size<0>(TileShape{}), size<1>(TileShape{}))));
    CUTE_STATIC_ASSERT_V(size(tCcC) == size(accum));
    static_assert(decltype(size<1>(accum))::value == 1 && decltype(size<2>(accum))::value == 1 &&
                      decltype(rank(get<0>(shape(accum))))::value == 3,
                  "the fold's rescale expects one 64 x N GMMA atom per warpgroup tile");
    constexpr int kColGroups = decltype(size<2>(get<0>(shape(accum))))::value;

    // the producer stored this tile's indices before its first load (see the top): wait for that load first
    {
      auto token = pipeline.consumer_try_wait(smem_pipe_read);
      pipeline.consumer_wait(smem_pipe_read, token);
    }
    int slot = int(smem_pipe_read.count() / uint32_t(k_tile_count)) & 1;
    int const m0 = shared.tile_mn[slot][0] * int(size<0>(TileShape{}));
    int const n0 = shared.tile_mn[slot][1] * int(size<1>(TileShape{}));

    // One chunk after the other, each drained (every MMA done) before the rescale, so no MMA is in flight while
    // ordinary instructions write the accumulator (ptxas otherwise serialises every wgmma of the kernel, C7515).
    PipelineState smem_pipe_release = smem_pipe_read;
    tiled_mma.accumulate_ = GMMA::ScaleOut::Zero;
    warpgroup_fence_operand(accum);
    int const chunk = params.chunk_k_tiles > 0 ? params.chunk_k_tiles : k_tile_count;  // 0: one chunk, no rescale
    int const chunks = k_tile_count / chunk;
    CUTLASS_PRAGMA_NO_UNROLL
    for (int j = 0; j < chunks; ++j) {
      // this chunk's boundary factors, loaded before its MMAs so their latency hides behind them: the accumulator
      // of a 64 x N GMMA atom per warpgroup holds per thread ((2 columns, 2 rows 8 apart, N / 8 column groups),
      // MMA_M = 1, MMA_N = 1), so two rows' factors and each column's S_j once
      float a[2], b[2], sv[kColGroups][2];
      if (j + 1 < chunks) {
        float const* c1 = params.c1 + j * params.M;
        float const* c2 = params.c2 + j * params.M;
        float const* s = params.s + j * params.N;
        CUTLASS_PRAGMA_UNROLL
        for (int h = 0; h < 2; ++h) {
          int r = m0 + int(get<0>(tCcC(make_coord(make_coord(0, h, 0), 0, 0))));
          a[h] = r < params.M ? __ldg(c1 + r) : 0.0f;
          b[h] = r < params.M ? __ldg(c2 + r) : 0.0f;
        }
        CUTLASS_PRAGMA_UNROLL
        for (int g = 0; g < kColGroups; ++g) {
          CUTLASS_PRAGMA_UNROLL
          for (int e = 0; e < 2; ++e) {
            int c = n0 + int(get<1>(tCcC(make_coord(make_coord(e, 0, g), 0, 0))));
            sv[g][e] = c < params.N ? __ldg(s + c) : 0.0f;
          }
        }
      }
      CUTLASS_PRAGMA_NO_UNROLL
      for (int t = 0; t < chunk; ++t) {
        auto token = pipeline.consumer_try_wait(smem_pipe_read);
        pipeline.consumer_wait(smem_pipe_read, token);
        int stage = smem_pipe_read.index();
        warpgroup_fence_operand(accum);
        warpgroup_arrive();
        CUTLASS_PRAGMA_UNROLL
        for (int kb = 0; kb < size<2>(tCrA); ++kb) {
          cute::gemm(tiled_mma, tCrA(_, _, kb, stage), tCrB(_, _, kb, stage), accum);
          tiled_mma.accumulate_ = GMMA::ScaleOut::One;
        }
        warpgroup_commit_batch();
        warpgroup_wait<1>();  // the previous k tile's MMAs are done: release its stage
        warpgroup_fence_operand(accum);
        if (j > 0 || t > 0) {
          pipeline.consumer_release(smem_pipe_release);
          ++smem_pipe_release;
        }
        ++smem_pipe_read;
      }
      if (j + 1 < chunks) {  // a patch boundary: every MMA done, then the rescale
        warpgroup_wait<0>();
        warpgroup_fence_operand(accum);
        CUTLASS_PRAGMA_UNROLL
        for (int g = 0; g < kColGroups; ++g) {
          CUTLASS_PRAGMA_UNROLL
          for (int e = 0; e < 2; ++e) {
            CUTLASS_PRAGMA_UNROLL
            for (int h = 0; h < 2; ++h) {
              auto& v = accum(make_coord(make_coord(e, h, g), 0, 0));
              v = fmaf(v, a[h], b[h] * sv[g][e]);
            }
          }
        }
        warpgroup_fence_operand(accum);
      }
    }
    warpgroup_fence_operand(accum);
    // (the kernel's mma_tail waits for the last k tile's MMAs and releases its stage)
  }
};

template <class Mainloop>
struct FoldWrap {
  using type = FoldMainloop<Mainloop>;
};

}  // namespace qvdp_cutlass
