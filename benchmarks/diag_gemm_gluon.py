"""Could a Gluon GEMM give the merger's fc1 its bias + exact-erf GELU epilogue at cuBLAS speed? (diagnostics,
one Hopper GPU; session 18 measured no: 0.69-0.77x cuBLAS at the best configuration per shape, benchmarks/NOTES.md)

The kernel under test, written here and used nowhere else: a persistent Hopper GEMM in Gluon,

    Y[m, n] = act( rstd[m] * (X @ W^T)[m, n] + negm[m] * S[n] + c[n] )       act: exact-erf GELU or none

X [M, K] and W [N, K] bf16 (nn.Linear layout), fp32 accumulation, Y bf16; rstd / negm per row and S / c per
column optional fp32 vectors (with them the post-shuffle LayerNorm folds into the GEMM, W = W1 * gamma). One
program per SM walks its output tiles (grouped along M) as ONE flat loop over every (tile, k) step it owns: a
STAGES-deep TMA ring with one mbarrier per stage, asynchronous wgmma with one MMA group in flight, the load
for step c + STAGES - 1 issued once step c - 1's MMA retired (so the next tile's loads fly during this tile's
epilogue); the epilogue leaves through one shared-memory tile and a TMA store (SMEM_EPI) or plain stores.

Per shape (M merged rows, N = K = 4H): cuBLAS mm, addmm (bias), addmm + GELU (eager's fc1), and Gluon
configurations with no epilogue work, bias only, and bias + GELU. CUDA events over 20 back-to-back calls,
best of 5; TFLOP/s; ||out - ref|| / ||ref|| against fp32.

    python benchmarks/diag_gemm_gluon.py [--out results.jsonl] [--quick] [--configs NAME,NAME]
"""
import argparse

import torch
import torch.nn.functional as F

from _common import append_jsonl, best_event_ms, card
from qvdp.ops._triton_utils import fast_launch

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                  warpgroup_mma, warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    _tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
    HAS_GLUON = True
except Exception:  # pragma: no cover - Triton without Gluon's Hopper API
    HAS_GLUON = False

if HAS_GLUON:
    @gluon.jit
    def _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M: gl.constexpr):
        # GROUP_M rows of tiles walked column by column (the programs running at once share W tiles in L2)
        per_group = GROUP_M * num_pid_n
        first_m = (tile // per_group) * GROUP_M
        rows = gl.minimum(num_pid_m - first_m, GROUP_M)
        return first_m + (tile % per_group) % rows, (tile % per_group) // rows

    @gluon.jit
    def _issue_step(p, total, k_tiles, pid, nprog, num_pid_m, num_pid_n, a_desc, b_desc, a_smem, b_smem, bars,
                    STAGES: gl.constexpr, GROUP_M: gl.constexpr):
        # TMA loads of flat step p (tile p // k_tiles of this program, k block p % k_tiles) into stage p % STAGES
        BM: gl.constexpr = a_desc.block_type.shape[0]
        BN: gl.constexpr = b_desc.block_type.shape[0]
        BK: gl.constexpr = a_desc.block_type.shape[1]
        pr = p < total
        pm, pn = _tile_coords(pid + (p // k_tiles) * nprog, num_pid_m, num_pid_n, GROUP_M)
        kk = (p % k_tiles) * BK
        s = p % STAGES
        mbarrier.expect(bars.index(s), a_desc.block_type.nbytes + b_desc.block_type.nbytes, pred=pr)
        _tma_load(a_desc, [pm * BM, kk], bars.index(s), a_smem.index(s), pred=pr)
        _tma_load(b_desc, [pn * BN, kk], bars.index(s), b_smem.index(s), pred=pr)

    @gluon.jit
    def _gemm_epi_kernel(a_desc, b_desc, c_desc, Y, RSTD, NEGM, S, C, M, N, K, stride_y,
                         HAS_RSTD: gl.constexpr, HAS_SHIFT: gl.constexpr, HAS_C: gl.constexpr,
                         GELU: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr, NW: gl.constexpr,
                         SMEM_EPI: gl.constexpr):
        dtype: gl.constexpr = a_desc.dtype
        BM: gl.constexpr = a_desc.block_type.shape[0]
        BK: gl.constexpr = a_desc.block_type.shape[1]
        BN: gl.constexpr = b_desc.block_type.shape[0]
        INSTR_N: gl.constexpr = BN if BN <= 256 else 256
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1],
                                                      instr_shape=[16, INSTR_N, 16])
        pid = gl.program_id(0)
        nprog = gl.num_programs(0)
        num_pid_m = gl.cdiv(M, BM)
        num_pid_n = gl.cdiv(N, BN)
        k_tiles = gl.cdiv(K, BK)
        my_tiles = gl.cdiv(num_pid_m * num_pid_n - pid, nprog)
        total = my_tiles * k_tiles

        a_smem = gl.allocate_shared_memory(dtype, [STAGES, BM, BK], a_desc.layout)
        b_smem = gl.allocate_shared_memory(dtype, [STAGES, BN, BK], b_desc.layout)
        if SMEM_EPI:
            c_smem = gl.allocate_shared_memory(dtype, [BM, BN], c_desc.layout)
        bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(bars.index(i), count=1)
        for i in gl.static_range(STAGES - 1):
            _issue_step(i, total, k_tiles, pid, nprog, num_pid_m, num_pid_n, a_desc, b_desc, a_smem, b_smem, bars,
                        STAGES, GROUP_M)

        rows_l: gl.constexpr = gl.SliceLayout(1, mma)
        cols_l: gl.constexpr = gl.SliceLayout(0, mma)
        acc = gl.zeros([BM, BN], gl.float32, mma)
        for c in range(total):
            s = c % STAGES
            kk = c % k_tiles
            mbarrier.wait(bars.index(s), (c // STAGES) & 1)
            acc = warpgroup_mma(a_smem.index(s), b_smem.index(s).permute((1, 0)), acc, use_acc=kk > 0,
                                is_async=True)
            # step c - 1's MMA has retired: its stage takes the loads of step c + STAGES - 1
            acc = warpgroup_mma_wait(1, deps=[acc])
            _issue_step(c + STAGES - 1, total, k_tiles, pid, nprog, num_pid_m, num_pid_n, a_desc, b_desc,
                        a_smem, b_smem, bars, STAGES, GROUP_M)
            if kk == k_tiles - 1:
                acc = warpgroup_mma_wait(0, deps=[acc])
                pm, pn = _tile_coords(pid + (c // k_tiles) * nprog, num_pid_m, num_pid_n, GROUP_M)
                rows = pm * BM + gl.arange(0, BM, layout=rows_l)
                cols = pn * BN + gl.arange(0, BN, layout=cols_l)
                z = acc
                if HAS_RSTD:
                    z = z * gl.load(RSTD + rows, mask=rows < M, other=1.0)[:, None]
                if HAS_SHIFT:
                    z = z + (gl.load(NEGM + rows, mask=rows < M, other=0.0)[:, None]
                             * gl.load(S + cols, mask=cols < N, other=0.0)[None, :])
                if HAS_C:
                    z = z + gl.load(C + cols, mask=cols < N, other=0.0)[None, :]
                if GELU:
                    z = 0.5 * z * (1.0 + gl.erf(z * 0.7071067811865476))
                if SMEM_EPI:
                    tma.store_wait(0)  # the previous tile's store has left c_smem
                    c_smem.store(z.to(dtype))
                    fence_async_shared()
                    _tma_store(c_desc, [pm * BM, pn * BN], c_smem)
                else:
                    gl.store(Y + rows[:, None] * stride_y + cols[None, :], z.to(dtype),
                             mask=(rows < M)[:, None] & (cols < N)[None, :])
        if SMEM_EPI:
            tma.store_wait(0)
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(bars.index(i))


_GL_DTYPE = {}
if HAS_GLUON:
    _GL_DTYPE = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}


def _layout(block, dtype):
    return gl.NVMMASharedLayout.get_default_for(block, _GL_DTYPE[dtype])


DEFAULT_CFG = dict(BM=128, BN=256, BK=64, STAGES=3, GROUP_M=8, num_warps=8)


def linear_epilogue_gluon(x, w, c=None, *, rstd=None, negm=None, s=None, gelu=True, out=None, cfg=None):
    """act(rstd[:, None] * (x @ w^T) + negm[:, None] * s[None, :] + c[None, :]) by the Gluon kernel (see the
    module docstring); every vector optional and fp32; x, w 16-bit, contiguous rows, sizes multiples of 8."""
    M, K = x.shape
    N = w.shape[0]
    k = dict(DEFAULT_CFG, **(cfg or {}))
    if out is None:
        out = torch.empty(M, N, device=x.device, dtype=x.dtype)
    if M == 0:
        return out
    BM, BN, BK = int(k["BM"]), int(k["BN"]), int(k["BK"])
    a_d = GluonDescriptor(x, [M, K], [x.stride(0), 1], [BM, BK], _layout([BM, BK], x.dtype))
    b_d = GluonDescriptor(w, [N, K], [w.stride(0), 1], [BN, BK], _layout([BN, BK], x.dtype))
    c_d = GluonDescriptor(out, [M, N], [out.stride(0), 1], [BM, BN], _layout([BM, BN], x.dtype))
    tiles = -(-M // BM) * -(-N // BN)
    dummy = out  # never read: its flag is off
    shift = negm is not None
    grid = (min(tiles, torch.cuda.get_device_properties(x.device).multi_processor_count),)
    fast_launch(_gemm_epi_kernel, grid,
                (a_d, b_d, c_d, out, rstd if rstd is not None else dummy, negm if shift else dummy,
                 s if shift else dummy, c if c is not None else dummy, M, N, K, out.stride(0)),
                dict(HAS_RSTD=rstd is not None, HAS_SHIFT=shift, HAS_C=c is not None, GELU=bool(gelu),
                     STAGES=int(k["STAGES"]), GROUP_M=int(k["GROUP_M"]), NW=int(k["num_warps"]),
                     SMEM_EPI=bool(k.get("SMEM_EPI", True))),
                num_warps=int(k["num_warps"]))
    return out


CONFIGS = {
    "128x256 s3 g8": dict(BM=128, BN=256, STAGES=3, GROUP_M=8),
    "128x256 s3 g1": dict(BM=128, BN=256, STAGES=3, GROUP_M=1),
    "128x256 s3 g16": dict(BM=128, BN=256, STAGES=3, GROUP_M=16),
    "256x128 s3 g8": dict(BM=256, BN=128, STAGES=3, GROUP_M=8),
    "128x256x32 s6 g8": dict(BM=128, BN=256, BK=32, STAGES=6, GROUP_M=8),
    "256x128x32 s6 g8": dict(BM=256, BN=128, BK=32, STAGES=6, GROUP_M=8),
    "128x128 s4 g8": dict(BM=128, BN=128, STAGES=4, GROUP_M=8),
    "128x256 s3 g32": dict(BM=128, BN=256, STAGES=3, GROUP_M=32),
    "256x128 s3 g1": dict(BM=256, BN=128, STAGES=3, GROUP_M=1),
    "256x128 s3 g16": dict(BM=256, BN=128, STAGES=3, GROUP_M=16),
    "128x256 s4 g8 reg-epi": dict(BM=128, BN=256, STAGES=4, GROUP_M=8, SMEM_EPI=False),
    "256x128 s4 g8 reg-epi": dict(BM=256, BN=128, STAGES=4, GROUP_M=8, SMEM_EPI=False),
    "128x256 s3 g8 reg-epi": dict(BM=128, BN=256, STAGES=3, GROUP_M=8, SMEM_EPI=False),
}


def us(fn):
    fn()
    torch.cuda.synchronize()
    return best_event_ms(fn, 20, 5) * 1e3


def rel(out, ref):
    return float((out.float() - ref).norm() / ref.norm())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true", help="one shape, the default configuration only")
    ap.add_argument("--configs", default=None, help="comma-separated names of CONFIGS")
    a = ap.parse_args()
    if not HAS_GLUON:
        print("this Triton has no Gluon Hopper API: nothing to time")
        return
    shapes = [(3520, 4608), (6400, 4608), (14080, 4608), (3520, 4096)]
    cfgs = CONFIGS if a.configs is None else {k: CONFIGS[k] for k in a.configs.split(",")}
    if a.quick:
        shapes, cfgs = shapes[:1], dict(list(CONFIGS.items())[:1])
    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for M, K in shapes:
        N = K
        bf = dict(device="cuda", dtype=torch.bfloat16)
        x = torch.randn(M, K, generator=g, **bf)
        w = torch.randn(N, K, generator=g, **bf) * K ** -0.5
        b = torch.randn(N, generator=g, **bf) * 0.1
        bf32 = b.float()
        flop = 2 * M * N * K
        ref = x.float() @ w.float().T + bf32
        ref_gelu = F.gelu(ref)
        res = {"card": card(), "M": M, "N": N, "K": K}
        res["cublas mm"] = us(lambda: x @ w.T)
        res["cublas addmm"] = us(lambda: torch.addmm(b, x, w.T))
        res["cublas addmm+gelu"] = us(lambda: F.gelu(torch.addmm(b, x, w.T)))
        res["err eager"] = rel(F.gelu(torch.addmm(b, x, w.T)), ref_gelu)
        out = torch.empty(M, N, **bf)
        for name, cfg in cfgs.items():
            for epi, kw in (("plain", dict(gelu=False)), ("bias", dict(c=bf32, gelu=False)),
                            ("bias+gelu", dict(c=bf32, gelu=True))):
                try:
                    out.fill_(float("nan"))
                    linear_epilogue_gluon(x, w, out=out, cfg=cfg, **kw)
                    r = ref_gelu if kw["gelu"] else (ref if "c" in kw else ref - bf32)
                    res[f"err {name} {epi}"] = rel(out, r)
                    res[f"{name} {epi}"] = us(lambda: linear_epilogue_gluon(x, w, out=out, cfg=cfg, **kw))
                except Exception as e:  # noqa: BLE001 - reported per configuration
                    res[f"{name} {epi}"] = f"{type(e).__name__}: {str(e)[:200]}"
        base = res["cublas addmm"]
        print(f"\nM={M} N=K={K}  ({card()})")
        for k, v in res.items():
            if isinstance(v, float) and not k.startswith("err"):
                print(f"  {k:32s} {v:8.1f} us  {flop / v / 1e6:6.0f} TFLOP/s  {v / base:5.3f}x addmm"
                      + (f"  err {res.get('err ' + k, float('nan')):.2e}" if ('err ' + k) in res else ""))
            elif isinstance(v, str) and k not in ("card",):
                print(f"  {k:32s} {v}")
        print(f"  eager err {res['err eager']:.2e}")
        rows.append(res)
    if a.out:
        append_jsonl(a.out, rows)


if __name__ == "__main__":
    main()
