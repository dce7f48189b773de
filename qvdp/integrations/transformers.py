"""Hugging Face transformers integration: make a Qwen3-VL vision tower run through qvdp."""
from __future__ import annotations

import sys
import types


from ..dist.gather import group_info
from ..encoder import run_dp_sharded_vision
from ..model import Qwen3VLVisionForward, find_vision_tower


def _output_class(visual):
    mod = sys.modules.get(type(visual).__module__)
    cls = getattr(mod, "BaseModelOutputWithDeepstackFeatures", None)
    if cls is None:
        from transformers.modeling_outputs import BaseModelOutputWithPooling as cls  # noqa: N813
    return cls


def apply_to_qwen3_vl(model, group=None, *, attention_backend: str = "auto", policy: str = "flops",
                      max_patches_per_chunk: int | None = None, gather_last_hidden_state: bool = False,
                      gather_backend: str = "auto", check_ranks: bool = True):
    """Route the vision tower of `model` through qvdp (fused kernels; DP-sharded over `group`).

    Accepts Qwen3VLForConditionalGeneration, Qwen3VLModel, Qwen3VLVisionModel and the MoE
    variants. Returns the vision tower. The patched forward keeps HF's signature
    (hidden_states, grid_thw, **kwargs) and returns the same output class, with
    pooler_output [N/4, O] and deepstack_features in original item order on every rank.
    last_hidden_state is returned on a single rank, and across ranks only when
    gather_last_hidden_state=True (it is 4x the rows; LLM embedding needs only the rest).
    `qvdp.remove_from_qwen3_vl(model)` restores HF's forward.
    """
    visual = find_vision_tower(model)
    if getattr(visual, "_qvdp_original_forward", None) is None:
        visual._qvdp_original_forward = visual.forward
    fwd = Qwen3VLVisionForward(visual, attention_backend=attention_backend)
    visual._qvdp_forward = fwd
    out_cls = _output_class(visual)

    def forward(self, hidden_states, grid_thw=None, **kwargs):
        if grid_thw is None:
            raise ValueError("grid_thw is required: [num_items, 3] (t, h, w) per image/video")
        world, _ = group_info(group)
        want_last = world == 1 or gather_last_hidden_state
        out = run_dp_sharded_vision(self, hidden_states, grid_thw, group, forward=fwd, policy=policy,
                                    max_patches_per_chunk=max_patches_per_chunk, gather_backend=gather_backend,
                                    return_last_hidden=want_last, check_ranks=check_ranks)
        res = out_cls(last_hidden_state=out.last_hidden_state, pooler_output=out.pooler_output)
        if hasattr(res, "deepstack_features") or "deepstack_features" in getattr(out_cls, "__dataclass_fields__", {}):
            res.deepstack_features = out.deepstack_features
        else:
            res["deepstack_features"] = out.deepstack_features
        return res

    visual.forward = types.MethodType(forward, visual)
    return visual


def remove_from_qwen3_vl(model):
    visual = find_vision_tower(model)
    orig = getattr(visual, "_qvdp_original_forward", None)
    if orig is not None:
        visual.forward = orig
        visual._qvdp_original_forward = None
    visual._qvdp_forward = None
    return visual
