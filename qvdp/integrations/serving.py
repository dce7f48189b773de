"""Drop-in for SGLang's and vLLM's `run_dp_sharded_mrope_vision_model`.

Same arguments and return value: (vision_model, pixel_values, grid_thw_list, *, rope_type) ->
tuple of per-item embeddings [tokens_i, width], where width is what the engine's vision tower
returns per merged token (for Qwen3-VL: out_hidden_size * (1 + #deepstack), main and deepstack
concatenated). Differences: FLOP-aware balancing, videos split across ranks at frame
boundaries, each rank touching only its own pixel rows, and an ordered gather with no padding.

Two-line patch (vLLM):      import qvdp.integrations.serving as q
                            vllm.model_executor.models.vision.run_dp_sharded_mrope_vision_model = q.run_dp_sharded_mrope_vision_model
(plus the same name in every model module that imported it, e.g. vllm.model_executor.models.qwen3_vl).
SGLang:                     sglang.srt.multimodal.mm_utils.run_dp_sharded_mrope_vision_model = q.run_dp_sharded_mrope_vision_model
(and sglang.srt.models.qwen3_vl's imported name). `qvdp.integrations.serving.patch_engines()` does both.
"""
from __future__ import annotations

import sys

import torch

from ..encoder import run_dp_sharded_vision
from ..geometry import VisionGeometry


def _engine_tp_group():
    """The group the engine all-gathers over: vLLM's / SGLang's TP group, else the default group."""
    try:
        from vllm.distributed import parallel_state as ps
        return ps.get_tp_group().device_group
    except Exception:
        pass
    try:
        from sglang.srt.distributed import parallel_state as ps
        return ps.get_tp_group().device_group
    except Exception:
        pass
    return None


def _geometry(vision_model):
    cfg = getattr(vision_model, "config", None)
    for c in (getattr(cfg, "vision_config", None), cfg):
        try:
            if c is not None:
                return VisionGeometry.from_config(c)
        except Exception:
            pass
    merge = int(getattr(vision_model, "spatial_merge_size", 2))
    return VisionGeometry(spatial_merge_size=merge)


def run_dp_sharded_mrope_vision_model(vision_model, pixel_values, grid_thw_list, *, rope_type: str = "rope_3d",
                                      group=None, policy: str = "flops"):
    if rope_type not in ("rope_3d", "rope_2d"):
        raise ValueError(f"rope_type must be 'rope_3d' or 'rope_2d', got {rope_type!r}")
    if isinstance(grid_thw_list, torch.Tensor):
        grid_thw_list = grid_thw_list.tolist()
    group = group if group is not None else _engine_tp_group()
    geom = _geometry(vision_model)
    p0 = next(vision_model.parameters())
    width = int(getattr(vision_model, "out_hidden_size", 0) or
                geom.out_hidden_size * (1 + len(geom.deepstack_visual_indexes)))

    def engine_forward(px, grid, _ret):
        out = vision_model(px.to(dtype=p0.dtype), grid_thw=[list(g) for g in grid])
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out, [], None

    res = run_dp_sharded_vision(vision_model, pixel_values, grid_thw_list, group, forward=engine_forward,
                                geometry=geom, policy=policy, output_widths=[width], device=p0.device,
                                dtype=p0.dtype, check_ranks=True)
    return tuple(res.split_by_item())


def patch_engines():
    """Point SGLang's and vLLM's DP encoder entry points at qvdp (where those engines are imported)."""
    patched = []
    for modname in list(sys.modules):
        mod = sys.modules.get(modname)
        if mod is None or not (modname.startswith("vllm.") or modname.startswith("sglang.")):
            continue
        if hasattr(mod, "run_dp_sharded_mrope_vision_model"):
            setattr(mod, "run_dp_sharded_mrope_vision_model", run_dp_sharded_mrope_vision_model)
            patched.append(modname)
    return patched
