"""Interpolated position-embedding add (qvdp.ops.pos_embed) vs a float64 reference."""
import pytest
import torch

from qvdp.ops import _triton_utils
from qvdp.ops.pos_embed import pos_embed_add_

TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _case(n, H, rows, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, H, generator=g).to(device=device, dtype=dtype)
    tab = torch.randn(rows, H, generator=g).to(device=device, dtype=dtype)
    idx = torch.randint(0, rows, (n, 4), generator=g).to(device)
    wgt = torch.rand(n, 4, generator=g).to(device)
    ref = x.double() + (tab.double()[idx] * wgt.double()[:, :, None]).sum(1)
    out = pos_embed_add_(x, tab, idx, wgt)
    assert out.data_ptr() == x.data_ptr() and out.dtype == dtype and torch.isfinite(out).all()
    assert rel(out, ref) < TOL[dtype]


@pytest.fixture
def dev():
    if not (_triton_utils.interpreter_on() or torch.cuda.is_available()):
        pytest.skip("TRITON_INTERPRET=1 must be set before qvdp is imported")
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("n,H", [(1, 64), (17, 72), (5, 1152)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_interpreter_pos_embed_add(dev, n, H, dtype):
    _case(n, H, 9, dtype, dev)


def test_pos_embed_add_cpu_fallback():
    # plain CPU tensors without the interpreter take the torch form; with it, the kernel: same contract
    _case(11, 40, 5, torch.float32, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 14080, 56321])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_pos_embed_add(n, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    _case(n, 1152, 2304, dtype, "cuda", seed=n)


def test_pos_embed_add_bad_input():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="table"):
        pos_embed_add_(x, torch.randn(3, 9), torch.zeros(4, 4, dtype=torch.long), torch.rand(4, 4))
    with pytest.raises(ValueError, match="idx and wgt"):
        pos_embed_add_(x, torch.randn(3, 8), torch.zeros(4, 4, dtype=torch.long), torch.rand(4, 3))
    with pytest.raises(TypeError, match="integer"):
        pos_embed_add_(x, torch.randn(3, 8), torch.zeros(4, 4), torch.rand(4, 4))
    with pytest.raises(ValueError, match="contiguous"):
        pos_embed_add_(torch.randn(8, 4).t(), torch.randn(3, 8), torch.zeros(4, 4, dtype=torch.long),
                       torch.rand(4, 4))
