"""qvdp.ops.qkv_rope (the qkv GEMM with the rotary in its epilogue) vs an fp64 linear + HF RoPE.

CPU: the Triton kernel under TRITON_INTERPRET=1 (fp32/fp16, small shapes: bf16 tl.dot is broken in the
interpreter); GPU (-m gpu): bf16/fp16 at the towers' shapes, every kernel configuration, the tower.
"""
import pytest
import torch

import qvdp
from qvdp.ops import _triton_utils
from qvdp.ops.qkv_rope import DEFAULT_CONFIG, qkv_rope, qkv_rope_reference
from conftest import tiny_vision_model

TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2}


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make(T, H, D, C, dtype, device, bias=True, same=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, C, generator=g)
    w = torch.randn(3 * H * D, C, generator=g) / C ** 0.5
    b = torch.randn(3 * H * D, generator=g) if bias else None
    ang = torch.rand(T, D // 2, generator=g) * 60.0
    ang = torch.cat([ang, ang if same else torch.rand(T, D // 2, generator=g) * 60.0], -1)
    to = dict(device=device, dtype=dtype)
    return (x.to(**to), w.to(**to), None if b is None else b.to(**to), ang.cos().to(device), ang.sin().to(device))


def check(T, H, D, C, dtype, device, config=None, bias=True, same=True, seed=0, tol=None):
    x, w, b, cos, sin = make(T, H, D, C, dtype, device, bias, same, seed)
    out = torch.full((T, 3 * H * D), float("nan"), dtype=dtype, device=device)  # poisoned
    got = qkv_rope(x, w, b, cos, sin, H, halves_equal=same, out=out, config=config)
    assert got.data_ptr() == out.data_ptr()
    ref = qkv_rope_reference(x.double(), w.double(), None if b is None else b.double(), cos.double(),
                             sin.double(), H)
    assert torch.isfinite(got).all()
    err = rel(got, ref)
    assert err < (tol or TOL[dtype]), err
    return err


@pytest.fixture
def interpreter():
    if not _triton_utils.interpreter_on():
        pytest.skip("TRITON_INTERPRET=1 must be set before qvdp is imported")
    return "cpu"


@pytest.mark.parametrize("one_dot", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("T,H,D,C", [(37, 2, 72, 64), (1, 2, 80, 48), (50, 1, 64, 40), (19, 3, 8, 32)])
def test_interpreter_matches_reference(interpreter, one_dot, dtype, T, H, D, C):
    # odd row counts, K not a multiple of BLOCK_K (48, 40), pair tiles straddling heads and the q/k/v
    # boundaries (36 pairs per head against 16-pair tiles)
    check(T, H, D, C, dtype, interpreter, config=(16, 16, 32, 4, 1, 2, one_dot), seed=T + D)


@pytest.mark.parametrize("same", [True, False])
def test_interpreter_no_bias_and_distinct_halves(interpreter, same):
    check(23, 2, 72, 64, torch.float32, interpreter, config=(16, 16, 32, 4, 1, 4, 0), bias=False, same=same)


def test_interpreter_empty(interpreter):
    x, w, b, cos, sin = make(0, 2, 8, 16, torch.float32, interpreter)
    assert qkv_rope(x, w, b, cos, sin, 2).shape == (0, 48)


def test_torch_path_without_triton(monkeypatch):
    # where Triton cannot run, the reference runs (same result)
    monkeypatch.setattr("qvdp.ops.qkv_rope.triton_usable", lambda t: False)
    x, w, b, cos, sin = make(9, 2, 8, 16, torch.float32, "cpu")
    got = qkv_rope(x, w, b, cos, sin, 2)
    assert rel(got, qkv_rope_reference(x, w, b, cos, sin, 2)) == 0.0


@pytest.mark.parametrize("bad,exc,word", [
    (dict(x=torch.zeros(4, 16, 1)), ValueError, "x must be"),
    (dict(num_heads=0), ValueError, "num_heads"),
    (dict(w=torch.zeros(47, 16)), ValueError, "weight must be"),
    (dict(w=torch.zeros(48, 15)), ValueError, "weight must be"),
    (dict(b=torch.zeros(47)), ValueError, "bias must be"),
    (dict(cos=torch.zeros(3, 8)), ValueError, "cos must be"),
    (dict(sin=torch.zeros(4, 4)), ValueError, "sin must be"),
    (dict(w=torch.zeros(48, 16, dtype=torch.float16)), TypeError, "dtype"),
    (dict(out=torch.zeros(4, 47)), ValueError, "out must be"),
    (dict(w=torch.zeros(6 * 3, 16), num_heads=2), ValueError, "even head dim"),
])
def test_bad_input(bad, exc, word):
    args = dict(x=torch.randn(4, 16), w=torch.randn(48, 16), b=torch.randn(48), cos=torch.randn(4, 8),
                sin=torch.randn(4, 8), num_heads=2, out=None)
    args.update(bad)
    with pytest.raises(exc, match=word):
        qkv_rope(args["x"], args["w"], args["b"], args["cos"], args["sin"], args["num_heads"], out=args["out"])


def test_tower_with_fused_qkv_rope_matches_hf(interpreter):
    # the tower's fused path forced on under the interpreter (fp32): equal to HF's forward
    from test_hf_equivalence import GRIDS
    m = tiny_vision_model(3)
    grid = GRIDS[0]
    px = torch.randn(sum(t * h * w for t, h, w in grid), 1536)
    with torch.no_grad():
        ref = m(px, grid_thw=torch.tensor(grid))
    fwd = qvdp.Qwen3VLVisionForward(m, attention_backend="triton", fused_qkv_rope=True)
    st = fwd._prologue(px, fwd._tables(tuple(map(tuple, grid))))
    assert st["qkv_rope"]
    pooled, ds, last = fwd(px, tuple(map(tuple, grid)), True)
    assert rel(pooled, ref.pooler_output) < 1e-4
    assert rel(last, ref.last_hidden_state) < 1e-4
    for a, b in zip(ds, ref.deepstack_features):
        assert rel(a, b) < 1e-4


def test_fused_qkv_rope_choice(monkeypatch):
    m = tiny_vision_model(0)
    x = torch.zeros(4, 64)
    with pytest.raises(ValueError, match="fused_qkv_rope"):
        qvdp.Qwen3VLVisionForward(m, fused_qkv_rope="yes")
    auto = qvdp.Qwen3VLVisionForward(m)
    assert not auto._qkv_rope_on(x, "torch")
    assert not qvdp.Qwen3VLVisionForward(m, fused_qkv_rope=True, batch_invariant=True)._qkv_rope_on(x, "triton")
    monkeypatch.setattr("qvdp.ops._triton_utils.interpreter_on", lambda: True)
    assert not auto._qkv_rope_on(x, "triton")  # auto: CUDA with FA3 / flash-attn only
    assert qvdp.Qwen3VLVisionForward(m, fused_qkv_rope=True)._qkv_rope_on(x, "triton")
    monkeypatch.setenv("QVDP_QKV_ROPE", "0")
    assert not qvdp.Qwen3VLVisionForward(m)._qkv_rope_on(x.cuda() if torch.cuda.is_available() else x, "fa3")


# ---- GPU -------------------------------------------------------------------------------------------
GPU_CONFIGS = [DEFAULT_CONFIG, (128, 64, 64, 8, 4, 8, 0), (128, 128, 64, 8, 3, 8, 0), (128, 64, 64, 8, 3, 8, 1),
               (64, 64, 64, 4, 4, 8, 0), (256, 64, 64, 8, 3, 8, 0)]


@pytest.mark.gpu
@pytest.mark.parametrize("config", GPU_CONFIGS)
@pytest.mark.parametrize("T,H,D,C", [(14080, 16, 72, 1152), (3521, 16, 80, 1280), (777, 16, 64, 1024),
                                     (1, 16, 72, 1152)])
def test_gpu_bf16(config, T, H, D, C):
    check(T, H, D, C, torch.bfloat16, "cuda", config=config, seed=T)


@pytest.mark.gpu
@pytest.mark.parametrize("same", [True, False])
def test_gpu_fp16_default(same):
    check(4099, 4, 72, 288, torch.float16, "cuda", same=same, bias=not same)


@pytest.mark.gpu
def test_gpu_tower_fused_vs_rope_pass():
    # bf16 tower at head dim 72: FA3 (or qvdp's Triton kernel) with the fused qkv GEMM vs with the RoPE pass
    from qvdp.ops.attention import fa3_available
    backend = "fa3" if fa3_available() else "triton"
    m = tiny_vision_model(2, hidden_size=144, num_heads=2).cuda().to(torch.bfloat16)
    from test_hf_equivalence import GRIDS
    grid = tuple(map(tuple, GRIDS[2]))
    px = torch.randn(sum(t * h * w for t, h, w in grid), 1536, device="cuda").to(torch.bfloat16)
    a = qvdp.Qwen3VLVisionForward(m, attention_backend=backend, fused_qkv_rope=False, cuda_graphs=False)(px, grid, True)
    on = qvdp.Qwen3VLVisionForward(m, attention_backend=backend, fused_qkv_rope=True, cuda_graphs=False)
    assert on._prologue(px, on._tables(grid))["qkv_rope"]
    b = on(px, grid, True)
    for x, y in zip([a[0], *a[1], a[2]], [b[0], *b[1], b[2]]):
        assert rel(y, x) < 1e-2
