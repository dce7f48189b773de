"""Cache keys of weights derived once and reused (folded or reordered copies)."""
from __future__ import annotations

import torch


def stamp(t: torch.Tensor) -> tuple:
    """(address, in-place version counter) of `t`: changes when it moves or is written in place. Tensors
    made under torch.inference_mode keep no version counter: for them only a move is seen."""
    try:
        version = t._version
    except RuntimeError:
        version = 0
    return t.data_ptr(), version
