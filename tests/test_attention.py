"""qvdp.varlen_attention vs the float64 per-segment reference with RoPE.

CPU: the Triton kernel under TRITON_INTERPRET=1 (fp32/fp16, small shapes; bf16 tl.dot is broken in
the interpreter, triton#11584). GPU (-m gpu): bf16/fp16, long segments, many tiny segments.
"""

import json

import pytest
import torch

from qvdp.ops import _triton_utils
from qvdp.ops.attention import attention_config, varlen_attention
from qvdp.reference import attention_reference

TOL = {torch.float32: 1e-3, torch.float16: 3e-3, torch.bfloat16: 1e-2}
TOL_GPU_FP32 = 5e-3  # fp32 inputs run tl.dot on tf32 tensor cores on the GPU


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make(lens, H, D, dtype, device, rope=True, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    T = sum(lens)
    qkv = torch.randn(T, 3, H, D, generator=g).to(device=device, dtype=dtype)
    q, k, v = qkv.unbind(1)  # strided views into the packed tensor, as in the model
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lens).cumsum(0)
    cos = sin = None
    if rope:
        ang = torch.rand(T, D // 2, generator=g) * 40.0  # positions up to ~40 radians of rotation
        cos = torch.cat([ang, ang], -1).cos().to(device)
        sin = torch.cat([ang, ang], -1).sin().to(device)
    return q, k, v, cu.to(device), cos, sin


def _check(lens, H, D, dtype, device, rope=True, backend="triton", seed=0, cfg=None):
    # cfg: one kernel form/tile given explicitly to the Triton path (the shipped attention_config() may
    # not pick it)
    q, k, v, cu, cos, sin = make(lens, H, D, dtype, device, rope, seed)
    if cfg is None:
        out = varlen_attention(q, k, v, cu, max(lens), cos=cos, sin=sin, backend=backend)
    else:
        from qvdp.ops.attention import _varlen_attention_triton
        out = _varlen_attention_triton(q, k, v, cu, max(lens), cos, sin, D ** -0.5, None, cfg)
    ref = attention_reference(q, k, v, cu, cos, sin)  # float64, on the inputs' device
    assert out.shape == q.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    e = rel(out, ref)
    tol = TOL_GPU_FP32 if (dtype == torch.float32 and str(device).startswith("cuda")) else TOL[dtype]
    assert e < tol, f"rel err {e:.2e} lens={lens[:5]}... D={D} {dtype}"
    return e


interp = pytest.mark.skipif(not _triton_utils.HAS_TRITON, reason="triton not importable")


@pytest.fixture
def interpreter():
    if not (_triton_utils.interpreter_on() or torch.cuda.is_available()):
        pytest.skip("TRITON_INTERPRET=1 must be set before qvdp is imported")
    return "cuda" if torch.cuda.is_available() else "cpu"


@interp
@pytest.mark.parametrize("D", [64, 72, 80, 16, 40, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_interpreter_head_dims(interpreter, D, dtype):
    _check([1, 37, 70, 5], 2, D, dtype, interpreter)


@interp
@pytest.mark.parametrize("lens", [[1], [1] * 40, [33, 0, 64, 1], [200], [3, 96, 2, 31, 17]])
def test_interpreter_segments(interpreter, lens):
    _check(lens, 2, 72, torch.float32, interpreter, seed=len(lens))


@interp
def test_interpreter_block_map_for_another_tile_is_rebuilt(interpreter):
    # a reused block map built for a different BLOCK_M than the kernel runs must not be used as is
    from qvdp.ops.attention import build_block_map
    lens = [200, 3, 90]
    q, k, v, cu, cos, sin = make(lens, 2, 72, torch.float32, interpreter, seed=3)
    stale = build_block_map(cu, q.shape[0], 128)  # the interpreter config runs BLOCK_M=32
    out = varlen_attention(q, k, v, cu, max(lens), cos=cos, sin=sin, backend="triton", block_map=stale)
    assert rel(out, attention_reference(q, k, v, cu, cos, sin)) < TOL[torch.float32]


@interp
def test_interpreter_no_rope_and_scale(interpreter):
    q, k, v, cu, _, _ = make([20, 9], 2, 72, torch.float32, interpreter, rope=False)
    out = varlen_attention(q, k, v, cu, 20, scale=0.3, backend="triton")
    ref = attention_reference(q.cpu(), k.cpu(), v.cpu(), cu.cpu(), scale=0.3)
    assert rel(out.cpu(), ref) < 1e-3


def test_torch_backend_cpu():
    _check([1, 37, 70], 2, 72, torch.float32, "cpu", backend="torch")


@interp
def test_poisoned_output_is_fully_written(interpreter, monkeypatch):
    from qvdp.ops import attention as A
    q, k, v, cu, cos, sin = make([5, 40, 1], 2, 72, torch.float32, interpreter)
    real_empty = torch.empty

    def poisoned_empty(*a, **kw):
        t = real_empty(*a, **kw)
        if t.dtype.is_floating_point:
            t.fill_(float("nan"))
        return t
    monkeypatch.setattr(A.torch, "empty", poisoned_empty)
    out = varlen_attention(q, k, v, cu, 40, cos=cos, sin=sin, backend="triton")
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kw,exc,name", [
    (dict(q=torch.randn(4, 2)), ValueError, "q"),
    (dict(cu=torch.tensor([0, 4], dtype=torch.int64)), TypeError, "cu_seqlens"),
    (dict(cu=torch.tensor([0, 3], dtype=torch.int32)), ValueError, "cu_seqlens"),
    (dict(cu=torch.tensor([0, 3, 2, 4], dtype=torch.int32)), ValueError, "cu_seqlens"),
    (dict(cos=torch.randn(4, 3)), ValueError, "cos"),
    (dict(max_seqlen=2), ValueError, "max_seqlen"),
    (dict(D=12), ValueError, "head dim"),
    (dict(kdtype=torch.float16), TypeError, "dtype"),
])
def test_bad_inputs(kw, exc, name):
    D = kw.get("D", 8)
    q = kw.get("q", torch.randn(4, 2, D))
    k = torch.randn(4, 2, D, dtype=kw.get("kdtype", torch.float32))
    v = torch.randn(4, 2, D)
    cu = kw.get("cu", torch.tensor([0, 4], dtype=torch.int32))
    cos = kw.get("cos", None)
    sin = torch.randn(4, 3) if cos is not None else None
    with pytest.raises(exc, match=name):
        varlen_attention(q, k, v, cu, kw.get("max_seqlen", 4), cos=cos, sin=sin, backend="torch")


# ---- GPU -------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("D", [64, 72, 80, 128, 32, 96, 104, 40, 48, 24])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_head_dims(D, dtype):
    _check([1, 300, 3520, 77], 4, D, dtype, "cuda", seed=D)


@pytest.mark.gpu
@pytest.mark.parametrize("lens", [[65536], [1] * 3000, [7] * 2000 + [4000], [256, 1024, 3520, 6400, 16384],
                                  [3520] * 4, [0, 5, 0, 130]])
def test_gpu_segments(lens):
    _check(lens, 2 if sum(lens) > 30000 else 4, 72, torch.bfloat16, "cuda", seed=len(lens))


@pytest.mark.gpu
@pytest.mark.parametrize("D", [72, 80, 64])
@pytest.mark.parametrize("pipe", [0, 1])
def test_gpu_layouts_and_pipelining(D, pipe, monkeypatch):
    # both K/V layouts and the PIPE on/off loop, at the BLOCK_N the shipped tiles use
    for layout, bn in ((0, 32), (1, 64), (1, 128)):
        cfg = {"BLOCK_M": 64 if bn == 64 else 128, "BLOCK_N": bn, "num_warps": 4 if bn == 64 else 8,
               "num_stages": 3, "LAYOUT": layout, "PIPE": pipe}
        monkeypatch.setenv("QVDP_ATTN_CONFIG", json.dumps({str(D): cfg}))
        _check([1, 300, 1000, 77, 64, 129], 2, D, torch.bfloat16, "cuda", seed=D + pipe)


@interp
@pytest.mark.parametrize("D", [64, 128, 16, 32])
@pytest.mark.parametrize("pipe", [0, 1])
@pytest.mark.parametrize("qtma", [0, 1])
def test_interpreter_tma_kernel(interpreter, D, pipe, qtma):
    # v5: K/V boxes by TMA descriptor, rows past a segment read and masked; v6 (qtma): Q rotated by the
    # pre-pass and loaded by TMA too
    cfg = dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1, PIPE=pipe, TMA=1, QTMA=qtma)
    for dtype in (torch.float32, torch.float16):
        _check([1, 37, 70, 5, 33, 64], 2, D, dtype, interpreter, seed=D + pipe, cfg=cfg)


@interp
@pytest.mark.parametrize("D", [64, 16])
@pytest.mark.parametrize("qmode", ["reg", "tma"])
@pytest.mark.parametrize("rope", [True, False])
@pytest.mark.parametrize("pipe", [0, 1])
def test_interpreter_tma_direct(interpreter, D, qmode, rope, pipe):
    # v9: V (and without RoPE Q and K) read through descriptors over the caller's strided views; K (and Q
    # with QTMA) rotated by the pre-pass that takes a token block x HG heads per program (H=3: a partial
    # head group)
    cfg = dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1, PIPE=pipe, TMA=1, QTMA=int(qmode != "reg"), PBT=16,
               PHG=2)
    for dtype in (torch.float32, torch.float16):
        _check([1, 37, 70, 5, 33, 64], 3, D, dtype, interpreter, rope=rope, seed=D + pipe, cfg=cfg)


@interp
def test_fast_launch_matches_the_jit_launch(interpreter):
    # _triton_utils.fast_launch (the v13 launches): the same result as kernel[grid](...); on a GPU the second
    # call of a specialization goes through the cached compiled kernel, in the interpreter never
    from qvdp.ops.attention import _rot_pack
    q, k, v, cu, cos, sin = make([5, 40, 19], 3, 64, torch.float16, interpreter)
    T, H, D = k.shape
    outs = []
    for launch in ("jit", "fast", "fast"):
        kp = torch.full((H * T, D), float("nan"), dtype=k.dtype, device=k.device)
        args = (k, kp, k, kp, cos, sin, T, H, k.stride(0), k.stride(1), k.stride(0), k.stride(1), cos.stride(0))
        consts = dict(HALF=32, TWO=False, HG=2, BLOCK_T=16, PDL=False)
        grid = ((T + 15) // 16, (H + 1) // 2)
        if launch == "jit":
            _rot_pack[grid](*args, **consts, num_warps=4)
        else:
            _triton_utils.fast_launch(_rot_pack, grid, args, consts, num_warps=4)
        outs.append(kp)
    assert not torch.isnan(outs[0]).any()
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@interp
def test_interpreter_tma_views_not_describable_fall_back(interpreter):
    # heads not side by side in a row (a [H, T, D] tensor permuted): no descriptor covers the view, so
    # the packed (v6) path runs
    from qvdp.ops.attention import _tma_view_ok
    q, k, v, cu, cos, sin = make([5, 40, 19], 2, 64, torch.float32, interpreter)
    assert _tma_view_ok(q) and _tma_view_ok(v)
    assert not _tma_view_ok(v.permute(1, 0, 2).contiguous().permute(1, 0, 2))
    assert not _tma_view_ok(q[:, :, :32])
    cfg = dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1, PIPE=0, TMA=1, QTMA=1)
    from qvdp.ops.attention import _varlen_attention_triton
    vt = v.permute(1, 0, 2).contiguous().permute(1, 0, 2)
    out = _varlen_attention_triton(q, k, vt, cu, 40, cos, sin, 64 ** -0.5, None, cfg)
    assert rel(out, attention_reference(q, k, vt, cu, cos, sin)) < TOL[torch.float32]


@interp
def test_interpreter_tma_flag_ignored_with_tail_chunk(interpreter):
    # head dims with a tail chunk keep the pointer kernel (the TMA form takes D = DA only)
    cfg = dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1, LAYOUT=1, TMA=1)
    _check([1, 37, 70], 2, 72, torch.float32, interpreter, cfg=cfg)


@pytest.mark.gpu
@pytest.mark.parametrize("D", [64, 128, 32])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_tma_kernel(D, dtype):
    # (BLOCK_M, BLOCK_N, warps, stages, PIPE, QTMA, maxnreg, PDL, DIRECT); QTMA=1: Q rotated by the
    # pre-pass, by TMA; DIRECT=1 (v9, the default): V (and without RoPE Q and K) read from the caller's
    # views; PDL=1 (v9, the default): the attention launch overlaps the pre-pass's tail
    tiles = [(64, 64, 4, 3, 0, 0, 0, 0, 0), (64, 64, 4, 3, 1, 0, 0, 0, 0), (64, 128, 4, 3, 1, 0, 0, 0, 0),
             (128, 128, 8, 3, 1, 0, 0, 0, 0), (64, 128, 4, 2, 0, 1, 168, 0, 0), (64, 64, 4, 3, 1, 1, 0, 0, 0),
             (128, 64, 8, 2, 1, 1, 0, 0, 0), (64, 128, 4, 2, 0, 1, 168, 0, 1), (64, 128, 4, 2, 0, 1, 168, 1, 1),
             (64, 64, 4, 3, 1, 1, 168, 1, 1), (128, 128, 8, 2, 0, 1, 0, 1, 1), (64, 64, 4, 3, 1, 0, 168, 0, 1),
             (64, 128, 4, 2, 0, 0, 168, 1, 1)]
    for i, (bm, bn, w, st, pipe, qtma, cap, pdl, direct) in enumerate(tiles):
        if D == 128 and bn == 128 and bm == 128:
            continue  # shared memory
        if D != 64 and i not in (1, 4, 7, 9):  # other head dims: v5, v6, v9 and v9's pipelined form (compile time)
            continue
        cfg = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st, PIPE=pipe, TMA=1, QTMA=qtma, maxnreg=cap,
                   PDL=pdl, DIRECT=direct)
        for rope in (True, False) if direct else (True,):
            _check([1, 300, 1000, 77, 64, 129], 3, D, dtype, "cuda", rope=rope, seed=i, cfg=cfg)
    if D != 64:
        return
    for cfg in (dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3, PIPE=1, TMA=1, DIRECT=0),
                attention_config(64, 4096, "cuda")):  # the D=64 default
        for lens in ([65536], [1] * 3000, [7] * 2000 + [4000]):
            _check(lens, 2, D, dtype, "cuda", seed=len(lens), cfg=cfg)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_gluon_kernel(dtype):
    # v13 (Gluon, D=64): Q rotated in the kernel, K by the K-only pre-pass; ring depths 2 and 3, the loads
    # issued early or behind P V, a register cap; segment edge cases incl. 65536 tokens and 3000 segments
    from qvdp.ops.attention_gluon import HAS_GLUON
    if not HAS_GLUON:
        pytest.skip("this Triton has no Gluon Hopper API")
    base = attention_config(64, 4096, "cuda")
    assert base.get("GLUON") == 1
    for i, extra in enumerate([{}, {"STAGES": 3}, {"LATE": 1}, {"GREG": 168}, {"BLOCK_N": 64}]):
        cfg = dict(base, **extra)
        for rope in (True, False):
            _check([1, 300, 1000, 77, 64, 129, 128, 127], 3, 64, dtype, "cuda", rope=rope, seed=i, cfg=cfg)
    for lens in ([65536], [1] * 3000, [7] * 2000 + [4000], [63, 65, 191]):
        for rope in (True, False):
            _check(lens, 2, 64, dtype, "cuda", rope=rope, seed=len(lens), cfg=base)


@pytest.mark.gpu
def test_gpu_fp32_inputs():
    _check([100, 900], 2, 72, torch.float32, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("D", [72, 64])
def test_gpu_torch_compile_no_graph_break(D):
    q, k, v, cu, cos, sin = make([128, 64], 2, D, torch.bfloat16, "cuda")

    def f(q, k, v, cu, cos, sin):
        return varlen_attention(q, k, v, cu, 128, cos=cos, sin=sin, validate=False) * 2

    cf = torch.compile(f, fullgraph=True)
    assert rel(cf(q, k, v, cu, cos, sin), f(q, k, v, cu, cos, sin)) < 1e-6


# ---- the RoPE pass in front of external kernels, and the FA3 backend -------------------------
def _rope_check(T, H, D, dtype, device, impl=None, packed=True):
    from qvdp.ops.attention import rope_qk
    from qvdp.reference import apply_rope
    q, k, _, _, _, _ = make([T], H, D, dtype, device, seed=3)
    if not packed:  # heads not D apart: [T, H, D] views of a [T, H, D + 8] tensor
        g = torch.Generator().manual_seed(5)
        big = torch.randn(2, T, H, D + 8, generator=g).to(device=device, dtype=dtype)
        q, k = big[0, :, :, :D], big[1, :, :, :D]
    # cos/sin halves independent (the general [T, D] contract, not only HF's duplicated halves)
    g = torch.Generator().manual_seed(4)
    ang = torch.rand(T, D, generator=g) * 40.0
    cos, sin = ang.cos().to(device), ang.sin().to(device)
    qr, kr = rope_qk(q, k, cos, sin, impl=impl)
    assert qr.is_contiguous() and kr.is_contiguous() and qr.shape == q.shape
    for got, x in ((qr, q), (kr, k)):
        ref = apply_rope(x.double(), cos.double(), sin.double())
        assert rel(got, ref) < {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]


@interp
@pytest.mark.parametrize("D", [72, 64, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("impl", ["tile", "lanes"])
def test_interpreter_rope_qk(interpreter, D, dtype, impl):
    _rope_check(77, 3, D, dtype, interpreter, impl=impl)


@interp
def test_interpreter_rope_qk_unpacked_heads(interpreter):
    _rope_check(19, 3, 72, torch.float32, interpreter, impl="tile", packed=False)


@pytest.mark.gpu
@pytest.mark.parametrize("D", [72, 80, 64, 128, 40])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", ["tile", "lanes"])
def test_gpu_rope_qk(D, dtype, impl):
    _rope_check(1000, 4, D, dtype, "cuda", impl=impl)
    _rope_check(3, 16, D, dtype, "cuda", impl=impl, packed=False)


@pytest.mark.gpu
def test_gpu_rope_qk_tower_shape():
    _rope_check(14080, 16, 72, torch.bfloat16, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("D", [72, 80, 64])
@pytest.mark.parametrize("lens", [[3520] * 4, [1] * 300 + [4000], [256, 1024, 3520, 6400], [1] * 64, [100] * 16])
def test_gpu_fa3_backend(D, lens):
    from qvdp.ops.attention import fa3_available
    if not fa3_available():
        pytest.skip("FlashAttention-3 not importable (bring the fa3-fwd wheel)")
    _check(lens, 4, D, torch.bfloat16, "cuda", backend="fa3")


@pytest.mark.gpu
def test_gpu_fa3_dense_path(monkeypatch):
    # equal segments go through FA3's fixed-length kernel; a max_seqlen above the real longest segment
    # (an upper bound, allowed) keeps the varlen kernel; both agree with the float64 reference
    from qvdp.ops.attention import fa3_available, fa3_dense_func, varlen_attention
    from qvdp.reference import attention_reference
    if not fa3_available():
        pytest.skip("FlashAttention-3 not importable")
    q, k, v, cu, cos, sin = make([2048] * 13, 2, 72, torch.bfloat16, "cuda", seed=11)
    ref = attention_reference(q, k, v, cu, cos, sin)
    outs = {}
    for mode, ms in (("", 2048), ("0", 2048), ("", 3000), ("1", 2048)):
        monkeypatch.setenv("QVDP_FA3_DENSE", mode)
        o = varlen_attention(q, k, v, cu, ms, cos=cos, sin=sin, backend="fa3")
        assert rel(o, ref) < 1e-2
        outs[(mode, ms)] = o
    assert torch.equal(outs[("0", 2048)], outs[("", 3000)])  # both varlen
    assert torch.equal(outs[("", 2048)], outs[("1", 2048)])  # both dense
    monkeypatch.setenv("QVDP_FA3_DENSE", "")
    assert fa3_dense_func(13, 2048) is not None
    assert fa3_dense_func(4, 3520) is None and fa3_dense_func(64, 256) is None  # measured slower there
    monkeypatch.setenv("QVDP_FA3_DENSE", "1")
    assert fa3_dense_func(64, 256) is not None


@pytest.mark.gpu
def test_gpu_fa3_dtype_guard():
    """fp16 where the FA3 build has none (the fa3-fwd wheel): the tower's auto backend keeps qvdp's kernel,
    and backend='fa3' refuses with a ValueError naming the dtypes, before any launch."""
    from qvdp.model import auto_attention_backend
    from qvdp.ops.attention import fa3_available, fa3_dtypes
    if not fa3_available():
        pytest.skip("FlashAttention-3 not importable (bring the fa3-fwd wheel)")
    x = torch.empty(4, 8, device="cuda", dtype=torch.float16)
    if torch.float16 in fa3_dtypes():
        assert auto_attention_backend(x, 72) in ("fa3", "triton")
        return
    assert auto_attention_backend(x, 72) == "triton"
    q = torch.randn(64, 2, 72, device="cuda", dtype=torch.float16)
    cu = torch.tensor([0, 64], dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match="dtype"):
        varlen_attention(q, q, q, cu, 64, backend="fa3")


def test_flash_attn_backend_guards(monkeypatch):
    """backend='flash_attn': CPU or fp32 tensors -> ValueError; package missing -> ImportError naming it.
    Both before any kernel launch."""
    import sys
    q, k, v, cu, cos, sin = make([7, 9], 2, 16, torch.float32, "cpu")
    with pytest.raises(ValueError, match="flash_attn"):
        varlen_attention(q, k, v, cu, 9, cos=cos, sin=sin, backend="flash_attn")
    if not torch.cuda.is_available():
        return
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import of flash_attn raises ImportError
    q, k, v, cu, cos, sin = make([7, 9], 2, 16, torch.bfloat16, "cuda")
    with pytest.raises(ImportError, match="flash-attn"):
        varlen_attention(q, k, v, cu, 9, cos=cos, sin=sin, backend="flash_attn")


def _flash_attn_module():
    """flash-attn if importable; else a stand-in module with flash-attn's varlen signature that runs
    torch's bundled FlashAttention-2 varlen kernel (aten._flash_attention_forward), so the backend's call
    contract (argument order, scale, RoPE applied first, output unpacking) is exercised on the GPU."""
    import types
    from qvdp.ops.attention import flash_attn_available
    if flash_attn_available():
        import flash_attn
        return flash_attn, "flash-attn"

    def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None,
                               causal=False, **kw):
        return torch.ops.aten._flash_attention_forward(q, k, v.contiguous(), cu_q, cu_k, max_q, max_k, dropout_p,
                                                       causal, False, scale=softmax_scale)[0]
    return types.SimpleNamespace(flash_attn_varlen_func=flash_attn_varlen_func), "torch FA2 stand-in"


@pytest.mark.gpu
@pytest.mark.parametrize("D", [72, 80, 64])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lens", [[1] * 300 + [4000], [256, 1024, 3520, 6400]])
def test_gpu_flash_attn_backend(D, dtype, lens, monkeypatch):
    import sys
    mod, _ = _flash_attn_module()
    monkeypatch.setitem(sys.modules, "flash_attn", mod)
    _check(lens, 4, D, dtype, "cuda", backend="flash_attn")


@pytest.mark.skipif(not (_triton_utils.interpreter_on() or torch.cuda.is_available()), reason="needs the interpreter")
def test_custom_op_dispatch(monkeypatch):
    """Eager inference calls the kernel directly; with inputs that want gradients the custom op runs and
    refuses a backward (the kernel has none) instead of returning silently wrong gradients."""
    import qvdp.ops.attention as A
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v, cu, cos, sin = make([9, 4], 2, 16, torch.float32, dev)
    calls = []
    real = A._varlen_attention_impl
    monkeypatch.setattr(A, "_varlen_attention_impl", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        want = varlen_attention(q, k, v, cu, 9, cos=cos, sin=sin, backend="triton")
    assert len(calls) == 1
    qg = q.clone().requires_grad_(True)
    out = varlen_attention(qg, k, v, cu, 9, cos=cos, sin=sin, backend="triton")
    assert len(calls) == 2 and torch.equal(out.detach(), want)  # through the custom op, same kernel
    with pytest.raises(RuntimeError):
        out.sum().backward()
