import os
import sys

import pytest
import torch

# Triton reads TRITON_INTERPRET when a kernel is defined, so set it before qvdp is imported:
# without a GPU, the kernels' CPU tests run in the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (run through the device tool)")
    config.addinivalue_line("markers", "multigpu: needs 2+ CUDA GPUs")
    config.addinivalue_line("markers", "slow: slower CPU test")


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    ngpu = torch.cuda.device_count() if has_gpu else 0
    skip_gpu = pytest.mark.skip(reason="no CUDA GPU here (run with -m gpu on a GPU machine)")
    skip_multi = pytest.mark.skip(reason="needs 2+ CUDA GPUs")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
        if "multigpu" in item.keywords and ngpu < 2:
            item.add_marker(skip_multi)


def tiny_vision_config(**kw):
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
    base = dict(depth=3, hidden_size=64, num_heads=4, intermediate_size=128, out_hidden_size=48,
                deepstack_visual_indexes=[0, 1], num_position_embeddings=64)
    base.update(kw)
    return Qwen3VLVisionConfig(**base)


def tiny_vision_model(seed=0, **kw):
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel
    torch.manual_seed(seed)
    m = Qwen3VLVisionModel(tiny_vision_config(**kw)).eval()
    # HF initialises some weights to constants; give every parameter random values
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.05 + (1.0 if p.ndim == 1 and p.shape[0] in (64, 256) else 0.0) * 0)
    return m
