"""qvdp's forward vs HF transformers' Qwen3-VL vision model (tiny random-weight config, CPU fp32)."""
import pytest
import torch

from conftest import tiny_vision_config, tiny_vision_model

import qvdp


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


GRIDS = [[[1, 4, 6], [3, 2, 2], [1, 8, 8]], [[1, 2, 2]], [[2, 10, 6], [1, 14, 2]]]


@pytest.mark.parametrize("grid", GRIDS)
def test_forward_matches_hf(grid):
    m = tiny_vision_model(1)
    N = sum(t * h * w for t, h, w in grid)
    px = torch.randn(N, 1536)
    with torch.no_grad():
        ref = m(px, grid_thw=torch.tensor(grid))
    pooled, ds, last = qvdp.Qwen3VLVisionForward(m)(px, tuple(map(tuple, grid)), True)
    assert pooled.shape == ref.pooler_output.shape and pooled.dtype == ref.pooler_output.dtype
    assert rel(pooled, ref.pooler_output) < 1e-5
    assert len(ds) == len(ref.deepstack_features) == 2
    for a, b in zip(ds, ref.deepstack_features):
        assert rel(a, b) < 1e-5
    assert rel(last, ref.last_hidden_state) < 1e-5


@pytest.mark.parametrize("deferred_bias", [True, False])
def test_fused_norm_paths_match_hf(deferred_bias, monkeypatch):
    # the CUDA-only residual paths (bias-free GEMMs + fused add/LN, and the deferred-bias stream that
    # accumulates in place and adds the biases inside the LayerNorm) forced on CPU, in fp32, with the
    # deepstack mergers and the last hidden state taken mid-stream
    monkeypatch.setattr(qvdp.Qwen3VLVisionForward, "_fuse_norm", lambda self, x: True)
    m = tiny_vision_model(1)
    with torch.no_grad():  # biases large enough that a lost or doubled one shows
        for blk in m.blocks:
            blk.attn.proj.bias.normal_(0, 0.5)
            blk.mlp.linear_fc2.bias.normal_(0, 0.5)
    grid = GRIDS[2]
    px = torch.randn(sum(t * h * w for t, h, w in grid), 1536)
    with torch.no_grad():
        ref = m(px, grid_thw=torch.tensor(grid))
    fwd = qvdp.Qwen3VLVisionForward(m, deferred_bias=deferred_bias)
    pooled, ds, last = fwd(px, tuple(map(tuple, grid)), True)
    assert rel(pooled, ref.pooler_output) < 1e-5
    assert rel(last, ref.last_hidden_state) < 1e-5
    for a, b in zip(ds, ref.deepstack_features):
        assert rel(a, b) < 1e-5


def test_apply_to_qwen3_vl_full_model():
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLForConditionalGeneration
    cfg = Qwen3VLConfig(vision_config=tiny_vision_config().to_dict(),
                        text_config=dict(hidden_size=48, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, head_dim=24,
                                         vocab_size=300, rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                                          "mrope_section": [4, 4, 4]}))
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(cfg).eval()
    grid = [[1, 4, 4], [2, 2, 6]]
    px = torch.randn(sum(t * h * w for t, h, w in grid), 1536)
    gt = torch.tensor(grid)
    with torch.no_grad():
        ref = model.model.get_image_features(px, gt, return_dict=True)
        visual = qvdp.apply_to_qwen3_vl(model)
        got = model.model.get_image_features(px, gt, return_dict=True)
    for a, b in zip(got.pooler_output, ref.pooler_output):
        assert rel(a, b) < 1e-5
    for fa, fb in zip(got.deepstack_features, ref.deepstack_features):
        for a, b in zip(fa, fb):
            assert rel(a, b) < 1e-5
    qvdp.remove_from_qwen3_vl(model)
    assert getattr(visual.forward, "__func__", None) is type(visual).forward


@pytest.mark.parametrize("kind", ["vision", "model"])
def test_apply_accepts_tower_and_model(kind):
    m = tiny_vision_model(2)
    target = m if kind == "vision" else type("Wrap", (torch.nn.Module,), {})()
    if kind == "model":
        target.visual = m
    qvdp.apply_to_qwen3_vl(target)
    grid = [[1, 4, 4]]
    px = torch.randn(16, 1536)
    out = m(px, grid_thw=torch.tensor(grid))
    assert out.pooler_output.shape == (4, 48) and len(out.deepstack_features) == 2


def test_apply_rejects_other_models():
    with pytest.raises(TypeError, match="vision tower"):
        qvdp.apply_to_qwen3_vl(torch.nn.Linear(2, 2))


def test_serving_dropin_single_rank():
    """The SGLang/vLLM-signature drop-in with an engine-style tower (returns [N/4, 4*O] concatenated)."""
    from qvdp.integrations.serving import run_dp_sharded_mrope_vision_model
    m = tiny_vision_model(4)

    class EngineTower(torch.nn.Module):
        def __init__(self, hf):
            super().__init__()
            self.hf = hf
            self.config = hf.config
            self.out_hidden_size = 48 * 3

        def forward(self, x, grid_thw):
            o = self.hf(x, grid_thw=torch.tensor(grid_thw))
            return torch.cat([o.pooler_output] + list(o.deepstack_features), 1)

    tower = EngineTower(m).eval()
    grid = [[1, 4, 4], [2, 2, 6], [1, 2, 2]]
    px = torch.randn(sum(t * h * w for t, h, w in grid), 1536)
    with torch.no_grad():
        got = run_dp_sharded_mrope_vision_model(tower, px, grid, rope_type="rope_3d")
        ref = tower(px, grid)
    assert isinstance(got, tuple) and [g.shape[0] for g in got] == [4, 6, 1]
    assert rel(torch.cat(got), ref) < 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("fused_mlp,deferred_bias", [(True, True), (False, True), (True, False)])
def test_gpu_forward_matches_hf_fp32(fused_mlp, deferred_bias, monkeypatch):
    # tight fp32 check on the GPU: catches an erf-vs-tanh GELU mix-up in the fused fc1 epilogue
    # (erf vs tanh differs by up to 5e-4 per activation) and any GEMM-path difference
    from qvdp.model import _fused_gelu_is_tanh
    assert _fused_gelu_is_tanh(torch.device("cuda"))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # HF's Conv3d patch embed
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    m = tiny_vision_model(1).cuda()
    grid = GRIDS[0]
    N = sum(t * h * w for t, h, w in grid)
    px = torch.randn(N, 1536, device="cuda")
    with torch.no_grad():
        ref = m(px, grid_thw=torch.tensor(grid, device="cuda"))
    fwd = qvdp.Qwen3VLVisionForward(m, attention_backend="torch", fused_mlp=fused_mlp, deferred_bias=deferred_bias)
    pooled, ds, last = fwd(px, tuple(map(tuple, grid)), True)
    assert rel(pooled, ref.pooler_output) < 2e-5
    assert rel(last, ref.last_hidden_state) < 2e-5
    for a, b in zip(ds, ref.deepstack_features):
        assert rel(a, b) < 2e-5


@pytest.mark.gpu
def test_gpu_fused_fc1_is_tanh_gelu(monkeypatch):
    # the fused fc1 (cuBLASLt bias+GELU epilogue) on activations where erf and tanh GELU differ (~5e-4)
    import torch.nn.functional as F
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    fwd = qvdp.Qwen3VLVisionForward(tiny_vision_model(1).cuda())
    mlp = torch.nn.Module()
    mlp.linear_fc1 = torch.nn.Linear(256, 512).cuda()
    with torch.no_grad():
        mlp.linear_fc1.weight.normal_(0, 0.12)
        mlp.linear_fc1.bias.normal_(0, 0.5)
    h = torch.randn(300, 256, device="cuda")
    out = fwd._fc1_act(h, mlp).double()
    pre = F.linear(h.double(), mlp.linear_fc1.weight.double(), mlp.linear_fc1.bias.double())
    tanh, erf = F.gelu(pre, approximate="tanh"), F.gelu(pre)
    assert (erf - tanh).abs().max() > 2e-4  # the check below can tell them apart
    assert (out - tanh).abs().max() < 5e-5


@pytest.mark.gpu
def test_gpu_forward_d64_bf16_vs_hf():
    # head dim 64 (Qwen3-VL-2B/4B): the bf16 tower on qvdp's D=64 attention (Gluon where available) is no
    # further from HF's fp32 forward than HF's own bf16 forward is (x1.5), on every output
    import copy
    m = tiny_vision_model(3, hidden_size=128, num_heads=2).cuda()
    grid = GRIDS[0]
    px = torch.randn(sum(t * h * w for t, h, w in grid), 1536, device="cuda")
    gt = torch.tensor(grid, device="cuda")
    mb = copy.deepcopy(m).to(torch.bfloat16)
    with torch.no_grad():
        ref = m(px, grid_thw=gt)
        hf16 = mb(px.to(torch.bfloat16), grid_thw=gt)
    fwd = qvdp.Qwen3VLVisionForward(mb, attention_backend="triton", cuda_graphs=False)
    pooled, ds, last = fwd(px.to(torch.bfloat16), tuple(map(tuple, grid)), True)
    pairs = [(pooled, hf16.pooler_output, ref.pooler_output), (last, hf16.last_hidden_state, ref.last_hidden_state)]
    pairs += list(zip(ds, hf16.deepstack_features, ref.deepstack_features))
    for ours, theirs, r in pairs:
        e, e_hf = rel(ours.float(), r), rel(theirs.float(), r)
        assert e < max(1.5 * e_hf, 1e-3) and e < 3e-2, (e, e_hf)


@pytest.mark.gpu
@pytest.mark.parametrize("backend,hidden", [("triton", 144), ("fa3", 144), ("triton", 128)])
def test_gpu_cuda_graph_replay(backend, hidden):
    # graphs captured on the second sight of a grid, LRU of one, pixels from GPU and CPU: every output
    # equals the eager forward's, fresh inputs each call, outputs are copies the next replay leaves alone.
    # hidden 144: head dim 72; 128: head dim 64 (the Gluon attention kernel, its launches captured)
    from qvdp.ops.attention import fa3_available
    if backend == "fa3" and not fa3_available():
        pytest.skip("FlashAttention-3 not importable")
    m = tiny_vision_model(2, hidden_size=hidden, num_heads=2).cuda().to(torch.bfloat16)
    eager = qvdp.Qwen3VLVisionForward(m, attention_backend=backend, cuda_graphs=False)
    graphed = qvdp.Qwen3VLVisionForward(m, attention_backend=backend, max_graphs=1)
    worst = 0.0
    for rep in range(3):
        for grid in (GRIDS[0], GRIDS[2]):
            g = tuple(map(tuple, grid))
            px = torch.randn(sum(t * h * w for t, h, w in grid), 1536, device="cuda").to(torch.bfloat16)
            a = eager(px, g, True)
            b = graphed(px.cpu() if rep == 2 else px, g, True)
            for x, y in zip([a[0], *a[1], a[2]], [b[0], *b[1], b[2]]):
                assert x.shape == y.shape and x.dtype == y.dtype
                worst = max(worst, rel(y, x))
    assert worst < 1e-6, worst
    assert len(graphed._graphs) == 1
    g = tuple(map(tuple, GRIDS[2]))
    px = torch.randn(sum(t * h * w for t, h, w in GRIDS[2]), 1536, device="cuda").to(torch.bfloat16)
    first = graphed(px, g)[0]
    keep = first.clone()
    graphed(px * 2, g)
    assert torch.equal(first, keep)
