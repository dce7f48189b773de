"""Residual add + bias + LayerNorm (qvdp.ops.layernorm) vs a float64 reference."""
import pytest
import torch
import torch.nn.functional as F

from qvdp.ops import _triton_utils
from qvdp.ops.layernorm import add_layernorm

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _case(n, H, dtype, device, bias=True, ln=True, seed=0, with_y=True, store_sum=True, bias_fp32=False):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, H, generator=g) * 3 + 1).to(device=device, dtype=dtype)
    y = torch.randn(n, H, generator=g).to(device=device, dtype=dtype) if with_y else None
    b = torch.randn(H, generator=g).to(device=device, dtype=torch.float32 if bias_fp32 else dtype) if bias else None
    w = (torch.rand(H, generator=g) + 0.5).to(device=device, dtype=dtype) if ln else None
    lb = torch.randn(H, generator=g).to(device=device, dtype=dtype) if ln else None
    s, h = add_layernorm(x, y, b, w, lb, eps=1e-6, store_sum=store_sum)
    ref_s = x.double() + (y.double() if with_y else 0) + (b.double() if bias else 0)
    if store_sum:
        assert s.dtype == dtype and s.shape == x.shape and torch.isfinite(s).all()
        assert rel(s, ref_s) < TOL[dtype]
    else:
        assert s is None
    if ln:
        ref_h = F.layer_norm(ref_s, (H,), w.double(), lb.double(), 1e-6)
        assert h.dtype == dtype and torch.isfinite(h).all()
        assert rel(h, ref_h) < TOL[dtype]
    else:
        assert h is None


@pytest.fixture
def dev():
    if not (_triton_utils.interpreter_on() or torch.cuda.is_available()):
        pytest.skip("TRITON_INTERPRET=1 must be set before qvdp is imported")
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("n,H", [(1, 64), (7, 72), (33, 144), (5, 1152)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_interpreter_add_layernorm(dev, n, H, dtype):
    _case(n, H, dtype, dev)


@pytest.mark.parametrize("bias,ln", [(False, True), (True, False), (False, False)])
def test_interpreter_add_layernorm_variants(dev, bias, ln):
    _case(9, 96, torch.float32, dev, bias=bias, ln=ln)


@pytest.mark.parametrize("with_y,store_sum", [(False, False), (False, True), (True, False)])
def test_interpreter_add_layernorm_deferred_bias(dev, with_y, store_sum):
    # the tower's deferred-bias form: h = LN(x + fp32 bias), the sum itself not written
    _case(9, 96, torch.float32, dev, with_y=with_y, store_sum=store_sum, bias_fp32=True)
    _case(5, 72, torch.float16, dev, with_y=with_y, store_sum=store_sum, bias_fp32=True)


def test_add_layernorm_bad_input():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="x and y"):
        add_layernorm(x, torch.randn(4, 9))
    with pytest.raises(ValueError, match="norm_weight"):
        add_layernorm(x, x, None, torch.ones(7), torch.zeros(7))
    with pytest.raises(ValueError, match="together"):
        add_layernorm(x, x, None, torch.ones(8), None)
    with pytest.raises(TypeError, match="dtype"):
        add_layernorm(x, x.double())
    with pytest.raises(ValueError, match="store_sum"):
        add_layernorm(x, None, torch.ones(8), store_sum=False)


@pytest.mark.gpu
@pytest.mark.parametrize("n,H", [(14080, 1152), (1, 1152), (1001, 1024), (3, 1280), (50000, 1152)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_add_layernorm(n, H, dtype):
    _case(n, H, dtype, "cuda")
    _case(n, H, dtype, "cuda", with_y=False, store_sum=False, bias_fp32=True, seed=1)


@pytest.mark.gpu
def test_gpu_add_layernorm_poisoned_outputs(monkeypatch):
    # outputs start as NaN: every element must be written
    real = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda t, **kw: real(t, **kw).fill_(float("nan")))
    _case(333, 1152, torch.bfloat16, "cuda")
    _case(333, 1152, torch.bfloat16, "cuda", with_y=False, store_sum=False, bias_fp32=True)
