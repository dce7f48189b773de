"""qvdp.ops.qkv_rope_gemm: the CUTLASS qkv GEMM with RoPE in its epilogue (opt-in build, Hopper, bf16).

CPU: the pair order and the epilogue's math emulated in fp64 against linear + HF's RoPE; bad input.
GPU (-m gpu, where the library is built): every kernel configuration against the fp64 reference with a
poisoned output; the tower with it against the tower with the RoPE pass; CUDA-graph replay.
"""
import pytest
import torch

import qvdp
from qvdp.ops import qkv_rope_gemm as Q
from conftest import tiny_vision_model


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make(T, H, D, C, device="cpu", dtype=torch.float64, bias=True, seed=0):
    """x, w, b, patch positions [2, T] (rows and columns up to 120) and their HF-layout cos/sin [T, D]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, C, generator=g)
    w = torch.randn(3 * H * D, C, generator=g) / C ** 0.5
    b = torch.randn(3 * H * D, generator=g) if bias else None
    pos = torch.randint(0, 121, (2, T), generator=g).float()
    cos, sin = Q.rotary_tables(pos, D)
    to = dict(device=device, dtype=dtype)
    return (x.to(**to), w.to(**to), (b.to(**to) if b is not None else None), pos.to(device), cos.to(device),
            sin.to(device))


def emulate(x, w_perm, b_perm, freq, pos, H):
    """The kernel's epilogue in torch: acc + bias, adjacent column pairs turned by pos * freq."""
    y = x @ w_perm.T + (b_perm if b_perm is not None else 0)
    f = freq.to(y.dtype)
    t = torch.where(f >= 0, pos[0][:, None].to(y.dtype) * f, pos[1][:, None].to(y.dtype) * -f)
    a, b = y[:, 0::2], y[:, 1::2]
    c, s = t[:, 0::2].cos(), t[:, 0::2].sin()
    return torch.stack([a * c - b * s, b * c + a * s], -1).reshape(y.shape)


@pytest.mark.parametrize("T,H,D,C", [(7, 2, 72, 16), (5, 3, 8, 8), (1, 1, 80, 24), (9, 2, 64, 32)])
def test_pair_order_and_epilogue_math(T, H, D, C):
    x, w, b, pos, cos, sin = make(T, H, D, C)
    wp, bp = Q.permuted_qkv(w, b, H)
    assert bp.dtype == torch.float32
    freq = Q.pair_freqs(H, D)
    assert (freq[2 * H * D:] == 0).all() and (freq[:2 * H * D] != 0).all()
    got = emulate(x, wp, bp.double(), freq, pos, H)  # (HF's RoPE and the fp32 bias round to fp32)
    assert rel(got, Q.reference(x, w, b, cos, sin, H)) < 1e-6
    # q . k is unchanged by the pair order: the attention needs no other change
    ref = torch.nn.functional.linear(x, w, b).view(T, 3, H, D)
    q, k = [qvdp.reference.apply_rope(t, cos, sin) for t in (ref[:, 0], ref[:, 1])]
    g = got.view(T, 3, H, D)
    assert rel(torch.einsum("thd,shd->hts", g[:, 0], g[:, 1]), torch.einsum("thd,shd->hts", q, k)) < 1e-6
    assert rel(Q.unpermute_qk(g[:, 0], D), q) < 1e-6
    assert rel(g[:, 2], ref[:, 2]) < 1e-6


def test_positions_match_the_tables():
    from qvdp.tables import patch_positions, vision_tables
    grid = ((1, 4, 6), (2, 2, 2), (1, 8, 4))
    pos = patch_positions(grid, 2, "cpu")
    cos, sin = vision_tables(grid, 72, 2, 8, 10000.0, "cpu")[:2]
    c2, s2 = Q.rotary_tables(pos, 72)
    assert torch.equal(cos, c2) and torch.equal(sin, s2)


def test_bad_input():
    x, w, b, pos, cos, sin = make(4, 2, 8, 16, dtype=torch.bfloat16)
    wp, bp = Q.permuted_qkv(w, b, 2)
    f = Q.pair_freqs(2, 8)
    with pytest.raises(ValueError, match="CUDA"):
        Q.qkv_rope(x, wp, bp, f, pos, 2)
    with pytest.raises(ValueError, match="bfloat16"):
        Q.qkv_rope(x.float(), wp, bp, f, pos, 2)
    with pytest.raises(ValueError, match="w_perm"):
        Q.qkv_rope(x, wp[:, :8], bp, f, pos, 2)
    with pytest.raises(ValueError, match="3 \\* num_heads"):
        Q.qkv_rope(x, wp, bp, f, pos, 5)
    with pytest.raises(ValueError, match="freq must be"):
        Q.qkv_rope(x, wp, bp, f[:5], pos, 2)
    with pytest.raises(ValueError, match="pos must be"):
        Q.qkv_rope(x, wp, bp, f, pos.T.contiguous(), 2)
    with pytest.raises(TypeError):
        Q.qkv_rope(x, None, bp, f, pos, 2)
    with pytest.raises(ValueError, match="divisible by 4"):
        Q.pair_freqs(2, 6)
    with pytest.raises(ValueError, match="even head dim"):
        Q.pair_order(2, 7)
    with pytest.raises(ValueError, match="fused_qkv_rope"):
        qvdp.Qwen3VLVisionForward(tiny_vision_model(0), fused_qkv_rope="yes")


def test_permuted_copy_follows_weight_updates():
    # the tower's pair-ordered qkv copy: made once, remade in place (same buffers, which captured graphs
    # read) after an in-place update of the weights and after they move
    m = tiny_vision_model(1)
    f = qvdp.Qwen3VLVisionForward(m)
    qkv = m.blocks[0].attn.qkv
    w1, b1 = f._permuted_qkv(0, qkv)
    assert f._permuted_qkv(0, qkv)[0] is w1
    H = f.geometry.num_heads
    with torch.no_grad():
        qkv.weight.mul_(2.0)
        qkv.bias.add_(1.0)
    f._refresh_qkv_perm()
    w2, b2 = f._qkv_perm[0][1:]
    assert w2 is w1 and b2 is b1
    ref_w, ref_b = Q.permuted_qkv(qkv.weight, qkv.bias, H)
    assert torch.equal(w2, ref_w) and torch.equal(b2, ref_b)
    qkv.weight = torch.nn.Parameter(qkv.weight.detach().clone() * 3)
    w3 = f._permuted_qkv(0, qkv)[0]
    assert w3 is w1 and torch.equal(w3, Q.permuted_qkv(qkv.weight, qkv.bias, H)[0])
    assert f._qkv_perm[0][0] == f._qkv_stamp(qkv)


def test_tower_choice_off_on_cpu(monkeypatch):
    monkeypatch.setenv("QVDP_QKV_ROPE", "1")
    f = qvdp.Qwen3VLVisionForward(tiny_vision_model(0))
    assert not f._qkv_rope_on(torch.zeros(4, 64, dtype=torch.bfloat16), "fa3")


# ---- GPU ----------------------------------------------------------------------------------------------
def _need_kernel():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    why = Q.unavailable_reason()
    if why:
        pytest.skip(why)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", sorted(Q.VARIANTS))
@pytest.mark.parametrize("T,H,D,C,bias", [(14080, 16, 72, 1152, True), (3521, 16, 80, 1280, True),
                                          (777, 16, 64, 1024, False), (1, 16, 72, 1152, True),
                                          (300, 2, 72, 144, True)])
def test_gpu_matches_reference(variant, T, H, D, C, bias):
    _need_kernel()
    x, w, b, pos, cos, sin = make(T, H, D, C, device="cuda", dtype=torch.bfloat16, bias=bias, seed=T + D)
    wp, bp = Q.permuted_qkv(w, b, H)
    out = torch.full((T, 3 * H * D), float("nan"), device="cuda", dtype=torch.bfloat16)
    got = Q.qkv_rope(x, wp, bp, Q.pair_freqs(H, D, device="cuda"), pos, H, out=out, variant=variant)
    assert got.data_ptr() == out.data_ptr() and torch.isfinite(got).all()
    ref = Q.reference(x.double(), w.double(), None if b is None else b.double(), cos.double(), sin.double(), H)
    assert rel(got, ref) < 1e-2


@pytest.mark.gpu
def test_gpu_positions_view_and_theta():
    # pos as a [2, T] view of a wider buffer (row stride > T), a non-default theta
    _need_kernel()
    x, w, b, pos, _, _ = make(1000, 4, 72, 288, device="cuda", dtype=torch.bfloat16)
    wide = torch.zeros(2, 1024, device="cuda")
    wide[:, :1000] = pos
    cos, sin = Q.rotary_tables(pos, 72, theta=500.0)
    wp, bp = Q.permuted_qkv(w, b, 4)
    got = Q.qkv_rope(x, wp, bp, Q.pair_freqs(4, 72, 500.0, device="cuda"), wide[:, :1000], 4)
    ref = Q.reference(x.double(), w.double(), b.double(), cos.double(), sin.double(), 4)
    assert rel(got, ref) < 1e-2


@pytest.mark.gpu
def test_gpu_tower_fused_qkv_rope():
    # bf16 tower at head dim 72 (FA3 where it imports, else qvdp's Triton kernel): the fused qkv GEMM
    # against the RoPE pass, eager and CUDA-graph replays
    _need_kernel()
    from qvdp.ops.attention import fa3_available
    from test_hf_equivalence import GRIDS
    backend = "fa3" if fa3_available() else "triton"
    m = tiny_vision_model(2, hidden_size=144, num_heads=2).cuda().to(torch.bfloat16)
    g = tuple(map(tuple, GRIDS[2]))
    off = qvdp.Qwen3VLVisionForward(m, attention_backend=backend, fused_qkv_rope=False, cuda_graphs=False)
    on = qvdp.Qwen3VLVisionForward(m, attention_backend=backend, fused_qkv_rope=True, cuda_graphs=False)
    graphed = qvdp.Qwen3VLVisionForward(m, attention_backend=backend, fused_qkv_rope=True)
    for rep in range(3):
        px = torch.randn(sum(t * h * w for t, h, w in g), 1536, device="cuda").to(torch.bfloat16)
        assert on._prologue(px, on._tables(g))["qkv_rope"] is not None
        a, b, c = off(px, g, True), on(px, g, True), graphed(px, g, True)
        for x, y, z in zip([a[0], *a[1], a[2]], [b[0], *b[1], b[2]], [c[0], *c[1], c[2]]):
            assert rel(y, x) < 1e-2
            assert rel(z, y) < 1e-6
    assert len(graphed._graphs) == 1
