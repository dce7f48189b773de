"""Input checks shared by every public entry point.

All of them run on the host before any kernel launch or collective, and raise a
ValueError/TypeError that names the argument, what was expected and what came.
"""
from __future__ import annotations

import numbers

import torch


def _is_int(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, numbers.Integral):
        return True
    if isinstance(v, torch.Tensor) and v.ndim == 0 and not v.dtype.is_floating_point and v.dtype != torch.bool:
        return True
    return False


def normalize_grid_thw(grid_thw, merge_size: int = 2, name: str = "grid_thw") -> tuple:
    """Return grid_thw as a tuple of (t, h, w) Python ints, or raise.

    Accepts a list/tuple of 3-sequences or an integer tensor of shape [n, 3] (any device:
    a CUDA tensor costs one device->host copy, so pass a list or CPU tensor when you can).
    """
    if isinstance(grid_thw, torch.Tensor):
        if grid_thw.dtype.is_floating_point or grid_thw.dtype in (torch.bool, torch.complex64, torch.complex128):
            raise TypeError(f"{name} must hold integers, got a tensor of dtype {grid_thw.dtype}")
        if grid_thw.ndim != 2 or grid_thw.shape[1] != 3:
            raise ValueError(f"{name} must have shape [num_items, 3] (t, h, w), got {tuple(grid_thw.shape)}")
        rows = [tuple(int(x) for x in r) for r in grid_thw.tolist()]
    elif isinstance(grid_thw, (list, tuple)):
        rows = []
        for i, r in enumerate(grid_thw):
            if isinstance(r, torch.Tensor):
                r = r.tolist()
            if not isinstance(r, (list, tuple)) or len(r) != 3:
                raise ValueError(f"{name}[{i}] must be a (t, h, w) triple, got {r!r}")
            if not all(_is_int(v) for v in r):
                raise TypeError(f"{name}[{i}] must hold integers (t, h, w), got {r!r}")
            rows.append(tuple(int(v) for v in r))
    else:
        raise TypeError(f"{name} must be a list of (t, h, w) or an integer tensor [num_items, 3], "
                        f"got {type(grid_thw).__name__}")
    if len(rows) == 0:
        raise ValueError(f"{name} is empty: at least one image or video is needed")
    for i, (t, h, w) in enumerate(rows):
        if t <= 0 or h <= 0 or w <= 0:
            raise ValueError(f"{name}[{i}] = {(t, h, w)}: t, h and w must be positive")
        if h % merge_size or w % merge_size:
            raise ValueError(f"{name}[{i}] = {(t, h, w)}: h and w must be divisible by the spatial merge "
                             f"size {merge_size}")
    return tuple(rows)


def check_pixel_values(pixel_values, grid: tuple, patch_dim: int | None, name: str = "pixel_values"):
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(pixel_values).__name__}")
    if not pixel_values.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {pixel_values.dtype}")
    if pixel_values.ndim != 2:
        raise ValueError(f"{name} must have shape [num_patches, patch_dim], got {tuple(pixel_values.shape)}")
    n = sum(t * h * w for t, h, w in grid)
    if pixel_values.shape[0] != n:
        raise ValueError(f"{name} has {pixel_values.shape[0]} rows but grid_thw describes {n} patches "
                         f"(sum of t*h*w)")
    if patch_dim is not None and pixel_values.shape[1] != patch_dim:
        raise ValueError(f"{name} rows must have {patch_dim} values (channels*temporal_patch*patch^2), "
                         f"got {pixel_values.shape[1]}")
