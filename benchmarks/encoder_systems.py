"""The systems the encoder benchmark compares: HF sdpa, HF + FA3 varlen (what SGLang runs on Hopper),
qvdp, and the SGLang/vLLM-style DP path (patch-count balancing, padded all-gather + reorder)."""
from __future__ import annotations

import sys
import types

import torch
import torch.distributed as dist

from qvdp import plan_shards

CONFIG_8B = dict(depth=27, hidden_size=1152, num_heads=16, intermediate_size=4304, out_hidden_size=4096,
                 deepstack_visual_indexes=[8, 16, 24], num_position_embeddings=2304)


def build_hf(device, seed=0, attn="sdpa", config=None):
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel
    torch.manual_seed(seed)
    cfg = Qwen3VLVisionConfig(**(config or CONFIG_8B))
    cfg._attn_implementation = attn
    with torch.device(device):
        m = Qwen3VLVisionModel(cfg)
    return m.to(torch.bfloat16).eval()


def use_fa3_attention(model, fa3):
    """Swap every vision attention's forward for HF's RoPE + FA3 varlen (SGLang --mm-attention-backend fa3)."""
    mod = sys.modules[type(model.blocks[0].attn).__module__]
    rope = mod.apply_rotary_pos_emb_vision
    cache = {}

    def fwd(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kw):
        T = hidden_states.shape[0]
        q, k, v = self.qkv(hidden_states).reshape(T, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = position_embeddings
        q, k = rope(q, k, cos, sin)
        key = (cu_seqlens.data_ptr(), cu_seqlens.numel())
        if key not in cache:  # one host sync per forward, as the engines do
            cache.clear()
            cache[key] = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        ms = cache[key]
        o = fa3(q, k, v, cu_seqlens, cu_seqlens, ms, ms)
        if isinstance(o, tuple):
            o = o[0]
        return self.proj(o.reshape(T, -1))

    for blk in model.blocks:
        blk.attn.forward = types.MethodType(fwd, blk.attn)
    return model


def hf_call(model):
    @torch.no_grad()
    def f(px, grid):
        gt = torch.tensor(grid, dtype=torch.long, device=px.device)
        o = model(px, grid_thw=gt)
        if isinstance(o, tuple):  # older transformers: (merged, deepstack list)
            return o[0], list(o[1])
        return o.pooler_output, list(o.deepstack_features)
    return f


@torch.no_grad()
def sglang_style_dp(model_call, px_gpu, grid, group=None):
    """What SGLang/vLLM do: whole items balanced by patch count, every rank holding all pixels on its
    GPU, local forward, outputs concatenated [n, 4*O], padded to the largest rank, all_gather_into_tensor,
    then sliced per rank and put back in request order with cat."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    plan = plan_shards(grid, world, policy="patches", split_videos=False)
    patches = [t * h * w for t, h, w in grid]
    offs = [0]
    for n in patches:
        offs.append(offs[-1] + n)
    mine = [p.item for p in plan.pieces[rank]]
    if mine:
        local_px = torch.cat([px_gpu[offs[i]:offs[i + 1]] for i in mine])
        pooled, ds = model_call(local_px, [grid[i] for i in mine])
        local = torch.cat([pooled] + ds, 1)
    else:
        local = torch.empty((0, 4 * 4096), dtype=torch.bfloat16, device=px_gpu.device)
    rows = [plan.rows(r) for r in range(world)]
    mx = max(rows)
    padded = torch.zeros((mx, local.shape[1]), dtype=local.dtype, device=local.device)
    padded[:local.shape[0]] = local
    gathered = torch.empty((world * mx, local.shape[1]), dtype=local.dtype, device=local.device)
    dist.all_gather_into_tensor(gathered, padded, group=group)
    per_item = {}
    for r in range(world):
        chunk = gathered[r * mx: r * mx + rows[r]]
        o = 0
        for p in plan.pieces[r]:
            per_item[p.item] = chunk[o:o + p.num_rows]
            o += p.num_rows
    return torch.cat([per_item[i] for i in range(len(grid))])


def tower_ab(forms: dict, a_label: str, b_label: str, wanted, dev, hf_fa3=None):
    """A/B of two forms of the 1-GPU tower on each wanted workload of bench_encoder: `forms` maps names
    ("<a_label>", "<a_label> #2", ..., "<b_label>", ...) to callables (pixels, grid) -> (pooled, ...); all of
    them, and HF+FA3 when given, are timed in turn (median of 9 after 3 warm-ups) and each label is
    compared by its best instance. At 4 x 720p each form's pooled output is compared with HF in fp32."""
    from _common import time_interleaved
    from bench_encoder import pixels, workloads

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    for name, grid in workloads():
        if name not in wanted:
            continue
        px = pixels(grid, dev)
        g = tuple(map(tuple, grid))
        fns = {k: (lambda f=f: f(px, g)) for k, f in forms.items()}
        if hf_fa3 is not None:
            fns["HF+FA3"] = lambda: hf_fa3(px, grid)
        r = time_interleaved(fns, warm=3, rep=9)
        ta, tb = (min(v for k, v in r.items() if k == lab or k.startswith(lab + " #")) for lab in (a_label, b_label))
        line = ", ".join(f"{k} {v:.2f} ms" for k, v in r.items())
        if "HF+FA3" in r:
            line += f"; HF+FA3 / {a_label} {r['HF+FA3'] / ta:.3f}x, HF+FA3 / {b_label} {r['HF+FA3'] / tb:.3f}x"
        print(f"tower {name}: {line}; {b_label} / {a_label} {tb / ta:.4f}", flush=True)
        if name == "4x720p":
            ref = hf_call(build_hf(dev).float())(px.float(), grid)[0]
            errs = {k: rel(f(px, g)[0], ref) for k, f in forms.items()}
            print("tower 4x720p vs HF fp32, pooled: " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()),
                  flush=True)
            del ref
            torch.cuda.empty_cache()
