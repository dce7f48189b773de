"""qvdp.tables.vision_tables (vectorised, on the model's device) equals the item-by-item reference."""
import pytest
import torch

from qvdp import reference as R
from qvdp.tables import vision_tables

GRIDS = [((1, 44, 80),) * 2, ((1, 2, 2),), ((3, 4, 6), (1, 2, 2), (2, 8, 10)), ((1, 16, 16),) * 30,
         ((1, 96, 2), (1, 2, 96)), ((16, 12, 20),)]


def _check(grid, device, D=72, side=48):
    cos, sin, idx, wgt, cu, cu_list, ms = vision_tables(grid, D, 2, side, 10000.0, device)
    rc, rs = R.rotary_cos_sin(grid, D, 2, 10000.0, device=device)
    ri, rw = R.pos_embed_taps(grid, side, 2, device=device)
    rcu = R.cu_seqlens_for(grid)
    assert torch.equal(cos, rc) and torch.equal(sin, rs)
    assert torch.equal(idx, ri) and torch.equal(wgt, rw)
    assert torch.equal(cu.cpu(), rcu) and cu.dtype == torch.int32 and cu_list == rcu.tolist()
    assert ms == max(h * w for _, h, w in grid)
    assert cos.device.type == torch.device(device).type


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("D,side", [(72, 48), (64, 32), (80, 48)])
def test_tables_equal_reference_cpu(grid, D, side):
    _check(grid, "cpu", D, side)


@pytest.mark.gpu
@pytest.mark.parametrize("grid", GRIDS)
def test_tables_equal_reference_gpu(grid):
    _check(grid, "cuda")
