"""qvdp's forward of a Qwen3-VL vision tower, reading the weights of a transformers
Qwen3VLVisionModel (or any module with the same attributes) in place.

Differences from the HF forward, all numerically equivalent:
- the Conv3d patch embed (kernel == stride) runs as one GEMM on the pixel rows;
- rotary cos/sin, pos-embed taps and cu_seqlens are built once per forward on the device in one
  vectorised pass (qvdp.tables; cached per grid), the attention block map once per forward;
- attention takes strided q/k/v views of the packed qkv output and applies RoPE inside
  (qvdp.varlen_attention; on Hopper with FA3 installed, FA3 after qvdp's one-pass RoPE kernel, or, where
  the opt-in CUTLASS kernels are built, on q and k rotated by the qkv GEMM's own epilogue:
  qvdp.ops.qkv_rope_gemm);
- fc1 + bias + tanh-GELU is one cuBLASLt GEMM; proj/fc2 run bias-free and the residual add, bias
  and the next LayerNorm are one Triton pass (qvdp.ops.layernorm);
- the interpolated position embedding is added to the patch-embed output by one Triton pass
  (qvdp.ops.pos_embed) instead of gather + multiply + sum + cast + add;
- the mergers go through qvdp.patch_merger;
- on CUDA the whole tower for a repeated grid is replayed from a CUDA graph.
"""
from __future__ import annotations

import os
from functools import lru_cache

import torch
import torch.nn.functional as F

from . import reference as R
from .geometry import VisionGeometry
from .ops.attention import attention_config, build_block_map, varlen_attention
from .ops.layernorm import add_layernorm
from .ops.patch_merger import patch_merger
from .ops._stamp import stamp
from .ops.pos_embed import pos_embed_add_
from .tables import patch_positions, vision_tables


@lru_cache(maxsize=8)
def _fused_gelu_is_tanh(device) -> bool:
    """torch._addmm_activation(use_gelu=True) is the tanh GELU on CUDA (cuBLASLt epilogue or its
    fallback) but the erf GELU on CPU; check what this device does, once (fp32, 64x32x48, inputs on a
    coarse grid so the GEMM is exact even in TF32)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, (64, 32), generator=g).float().div(4).to(device)
    w = torch.randint(-3, 4, (48, 32), generator=g).float().div(16).to(device)
    b = torch.randint(-8, 9, (48,), generator=g).float().div(8).to(device)
    fused = torch._addmm_activation(b, x, w.t(), use_gelu=True).cpu()
    tanh = F.gelu(F.linear(x, w, b), approximate="tanh").cpu()
    erf = F.gelu(F.linear(x, w, b)).cpu()
    return bool((fused - tanh).abs().max() < 0.25 * (erf - tanh).abs().max())


@lru_cache(maxsize=16)
def _geometry(grid: tuple, head_dim: int, merge: int, side: int, theta: float, device: torch.device):
    """Per-grid tables on `device` (qvdp.tables.vision_tables: one vectorised pass on the device, no
    host loop over items, no large copy): rotary cos/sin, pos-embed taps, cu_seqlens (device tensor
    and host list) and the longest segment. Cached for repeated grids."""
    return vision_tables(grid, head_dim, merge, side, theta, device)


@lru_cache(maxsize=16)
def _positions(grid: tuple, merge: int, device: torch.device):
    """Per-grid patch rows and columns [2, N] fp32 (the fused qkv GEMM's rotary input). Cached."""
    return patch_positions(grid, merge, device)


@lru_cache(maxsize=8)
def _pair_freqs(num_heads: int, head_dim: int, theta: float, device: torch.device):
    from .ops.qkv_rope_gemm import pair_freqs
    return pair_freqs(num_heads, head_dim, theta, device)


@lru_cache(maxsize=8)
def _is_hopper(device) -> bool:
    return torch.cuda.get_device_capability(device)[0] == 9


def auto_attention_backend(x, head_dim: int) -> str:
    """"fa3" on a Hopper GPU when FlashAttention-3 imports, for head dims 64..256 and the dtypes that
    FA3 build runs (fa3_dtypes(): bf16, fp16 only where built - the fa3-fwd wheel has no fp16) (its
    kernel plus qvdp's one-pass RoPE measured 1.17-1.39x faster than qvdp's Triton kernel at head dim
    72 on an H100, benchmarks/results/attention-h100.md); else "triton" on CUDA; else "torch"."""
    if not x.is_cuda:
        return "torch"
    from .ops.attention import fa3_available, fa3_dtypes
    if (x.dtype in (torch.float16, torch.bfloat16) and 64 <= head_dim <= 256 and head_dim % 8 == 0
            and _is_hopper(x.device) and fa3_available() and x.dtype in fa3_dtypes()):
        return "fa3"
    return "triton"


def find_vision_tower(model):
    """The Qwen3VLVisionModel inside a Qwen3VL(Moe)ForConditionalGeneration / Qwen3VL(Moe)Model, or itself."""
    for path in ("visual", "model.visual"):
        m = model
        ok = True
        for part in path.split("."):
            if not hasattr(m, part):
                ok = False
                break
            m = getattr(m, part)
        if ok and hasattr(m, "blocks") and hasattr(m, "merger"):
            return m
    if hasattr(model, "blocks") and hasattr(model, "merger") and hasattr(model, "patch_embed"):
        return model
    raise TypeError(f"{type(model).__name__} holds no Qwen3-VL vision tower (expected .visual or .model.visual "
                    f"with .blocks, .merger, .patch_embed)")


class Qwen3VLVisionForward:
    """Callable: (pixel_values [N, P], grid) -> (pooled [N/4, O], [deepstack [N/4, O] ...], last_hidden or None)."""

    def __init__(self, visual, attention_backend: str = "auto", batch_invariant: bool = False,
                 invariant_rows: int = 64, fused_mlp: bool = True, fused_norm: bool = True,
                 deferred_bias: bool = True, fused_qkv_rope=None, cuda_graphs: bool = True,
                 graph_after_calls: int = 2, max_graphs: int = 4, graph_max_patches: int = 16384):
        """attention_backend: "auto" (auto_attention_backend: FA3 + qvdp's RoPE pass on Hopper when FA3
        imports, else qvdp's Triton kernel on CUDA, torch elsewhere), "triton", "torch", "fa3" /
        "flash_attn" (that library's varlen kernel after qvdp's one-pass RoPE kernel).
        batch_invariant: run every GEMM on fixed-size row tiles (the tail padded), so a row's
        result never depends on which other rows share the call. Then a DP rank's output for
        an item is bit-identical to the single-process run (GEMM libraries pick kernels by M).
        fused_mlp: on CUDA, fc1 + bias + tanh-GELU as one cuBLASLt GEMM with the GELU epilogue
        (benchmarks/bench_mlp.py); off in batch_invariant mode.
        fused_norm: on CUDA, proj and fc2 run without bias and one Triton pass does residual add + bias +
        the following LayerNorm (qvdp.ops.layernorm.add_layernorm); off in batch_invariant mode.
        deferred_bias (with fused_norm): proj and fc2 accumulate into the residual stream in place
        (cuBLAS beta=1) and the stream carries no bias: the biases, the same for every row, are kept as
        one fp32 prefix sum and added inside the next LayerNorm pass, which then reads the stream once
        and writes only the normalised rows (two passes over [T, H] instead of four). The stream is made
        whole (bias added) where it leaves a segment: the merger inputs and the last hidden state.
        fused_qkv_rope: the qkv GEMM rotates q and k in its epilogue (qvdp.ops.qkv_rope_gemm, one CUTLASS
        kernel on a cached pair-ordered copy of each qkv weight, 8 MB per layer of the 8B tower) instead of
        cuBLAS's GEMM + qvdp's RoPE pass before FA3 / flash-attn / the Triton kernel. Needs the opt-in
        CUTLASS build (QVDP_BUILD_CUTLASS=1), bf16, Hopper, a head dim divisible by 4. None (default): on
        where it can run, unless QVDP_QKV_ROPE=0; True: the same, ignoring the variable; False: never.
        Off in batch_invariant mode and with the torch attention.
        cuda_graphs: on CUDA, the whole forward for a grid seen `graph_after_calls` times is captured
        as CUDA graphs (one per segment, see _segments) and replayed (pixels copied into its input
        buffer, outputs copied out): 4 replays instead of ~440 launches, which matters once a DP rank's
        share is small enough for the host to be the bottleneck (benchmarks/diag_encoder.py). Only
        calls of at most `graph_max_patches` patches are captured (bigger ones keep the GPU busy on
        their own), at most `max_graphs` grids are kept (LRU), each holding a memory pool about the size
        of the eager forward's activations (not measured); the weights must not move after a capture."""
        self.visual = visual
        self.batch_invariant = batch_invariant
        self.invariant_rows = invariant_rows
        cfg = visual.config
        self.geometry = VisionGeometry.from_config(cfg)
        rp = getattr(cfg, "rope_parameters", None) or {}
        self.theta = float(rp.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)) or 10000.0)
        if attention_backend not in ("auto", "triton", "torch", "fa3", "flash_attn"):
            raise ValueError(f"attention_backend must be 'auto', 'triton', 'torch', 'fa3' or 'flash_attn', "
                             f"got {attention_backend!r}")
        self.attention_backend = attention_backend
        act = getattr(cfg, "hidden_act", "gelu_pytorch_tanh")
        self._tanh_gelu = act == "gelu_pytorch_tanh"
        self._act = (lambda t: F.gelu(t, approximate="tanh")) if self._tanh_gelu else None
        self.fused_mlp = fused_mlp
        self.fused_norm = fused_norm
        self.deferred_bias = bool(deferred_bias)
        if fused_qkv_rope not in (None, True, False):
            raise ValueError(f"fused_qkv_rope must be None, True or False, got {fused_qkv_rope!r}")
        self.fused_qkv_rope = fused_qkv_rope
        self._qkv_perm = {}  # layer -> (_qkv_stamp, pair-ordered weight, fp32 bias)
        if not isinstance(cuda_graphs, bool):
            raise TypeError(f"cuda_graphs must be a bool, got {cuda_graphs!r}")
        self.cuda_graphs = cuda_graphs
        self.graph_after_calls = max(int(graph_after_calls), 1)
        self.max_graphs = max(int(max_graphs), 1)
        self.graph_max_patches = int(graph_max_patches)
        self._graphs = {}       # key -> (static input, CUDAGraph, static outputs, tables); LRU order
        self._graph_seen = {}   # key -> calls so far

    def _fc1_act(self, h, mlp):
        """fc1 + bias + tanh-GELU. On CUDA one cuBLASLt GEMM with the bias+GELU epilogue (no separate
        elementwise pass over the [T, intermediate] activation), when this device's fused op is the
        tanh GELU (probed once); otherwise GEMM then GELU."""
        w, b = mlp.linear_fc1.weight, mlp.linear_fc1.bias
        if (self.fused_mlp and self._tanh_gelu and not self.batch_invariant and h.is_cuda and b is not None
                and h.shape[0] > 1 and _fused_gelu_is_tanh(h.device)):
            return torch._addmm_activation(b, h, w.t(), use_gelu=True)
        h = self._linear(h, w, b)
        return self._act(h) if self._act is not None else mlp.act_fn(h)

    def _fuse_norm(self, x) -> bool:
        """Residual add + bias + LayerNorm as one Triton pass (qvdp.ops.layernorm) on CUDA."""
        if not (self.fused_norm and x.is_cuda and not self.batch_invariant):
            return False
        from .ops._triton_utils import triton_usable
        blk = self.visual.blocks[0] if len(self.visual.blocks) else None
        return (triton_usable(x) and blk is not None and isinstance(blk.norm1, torch.nn.LayerNorm)
                and blk.attn.proj.bias is not None and blk.mlp.linear_fc2.bias is not None)

    def _linear(self, x, weight, bias):
        if not self.batch_invariant:
            return F.linear(x, weight, bias)
        m = self.invariant_rows
        n = x.shape[0]
        pad = (-n) % m
        xp = torch.cat([x, x.new_zeros((pad, x.shape[1]))]) if pad else x
        out = torch.cat([F.linear(c, weight, bias) for c in xp.split(m)]) if xp.shape[0] else \
            x.new_empty((0, weight.shape[0]))
        return out[:n]

    @property
    def dtype(self):
        return self.visual.patch_embed.proj.weight.dtype

    @property
    def device(self):
        return self.visual.patch_embed.proj.weight.device

    def _merger(self, m, x, postshuffle):
        if self.batch_invariant:
            mu = self.geometry.merge_unit
            H = x.shape[-1]
            if postshuffle:
                y = F.layer_norm(x.reshape(-1, mu * H), (mu * H,), m.norm.weight, m.norm.bias, m.norm.eps)
            else:
                y = F.layer_norm(x, (H,), m.norm.weight, m.norm.bias, m.norm.eps).reshape(-1, mu * H)
            y = F.gelu(self._linear(y, m.linear_fc1.weight, m.linear_fc1.bias))
            return self._linear(y, m.linear_fc2.weight, m.linear_fc2.bias)
        return patch_merger(x, m.norm.weight, m.norm.bias, m.linear_fc1.weight, m.linear_fc1.bias,
                            m.linear_fc2.weight, m.linear_fc2.bias, merge_size=self.geometry.spatial_merge_size,
                            postshuffle_norm=postshuffle, eps=m.norm.eps)

    def _tables(self, grid: tuple):
        """vision_tables(...) + (patch positions [2, N], or None where the fused qkv GEMM is off)."""
        g = self.geometry
        tabs = _geometry(grid, g.head_dim, g.spatial_merge_size, int(g.num_position_embeddings ** 0.5), self.theta,
                         self.device)
        pos = _positions(grid, g.spatial_merge_size, self.device) if self._qkv_rope_wanted() else None
        return (*tabs, pos)

    def _qkv_rope_wanted(self) -> bool:
        """fused_qkv_rope resolved: None -> on unless QVDP_QKV_ROPE=0, where the CUTLASS kernel can run."""
        mode = self.fused_qkv_rope
        if mode is None:
            mode = os.environ.get("QVDP_QKV_ROPE", "1") != "0"
        if not mode or self.batch_invariant or self.device.type != "cuda":
            return False
        from .ops import qkv_rope_gemm
        return qkv_rope_gemm.available(self.device)

    # the forward as segments: [prologue +] layers up to a deepstack merger (or the end) + that merger;
    # outputs are indexed as in (pooled, *deepstack): deepstack k -> 1 + k, pooled -> 0, and are
    # produced in the order 1, 2, ..., nd, 0
    supports_output_callback = True

    def _segments(self) -> list:
        """[(first block, end block, output k or None, merger index)]: deepstack outputs in layer order."""
        L = len(self.visual.blocks)
        ds = list(self.geometry.deepstack_visual_indexes)
        segs, start = [], 0
        for k, li in enumerate(sorted(x for x in ds if 0 <= x < L)):
            segs.append((start, li + 1, k, ds.index(li)))
            start = li + 1
        segs.append((start, L, None, None))
        return segs

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor, grid: tuple, return_last_hidden: bool = False, on_output=None):
        """on_output(index, tensor), when given, is called as soon as each output has been enqueued
        (index 1 + k for deepstack k, then 0 for pooled), on the host, in stream order: the tensor is
        valid for work enqueued after it on the current stream (or on a stream that waits on it)."""
        grid = tuple(tuple(int(x) for x in r) for r in grid)
        if not self._graphable(pixel_values):
            return self._forward(pixel_values, grid, return_last_hidden, self._tables(grid), on_output)
        key = (grid, bool(return_last_hidden), pixel_values.shape[1], self.visual.patch_embed.proj.weight.data_ptr())
        ent = self._graphs.get(key)
        if ent is None:
            if len(self._graph_seen) > 4096:  # a long run of ever-new grids: forget the counts
                self._graph_seen.clear()
            seen = self._graph_seen.get(key, 0) + 1
            self._graph_seen[key] = seen
            if seen < self.graph_after_calls:
                return self._forward(pixel_values, grid, return_last_hidden, self._tables(grid), on_output)
            ent = self._capture(pixel_values, grid, return_last_hidden, key)
        else:
            self._graphs[key] = self._graphs.pop(key)  # most recently used last
        static_in, graphs, seg_outs, st = ent
        if self._qkv_perm:
            self._refresh_qkv_perm()
        last = st["x"] if return_last_hidden else None
        static_in.copy_(pixel_values, non_blocking=True)
        res = {}
        for graph, outs in zip(graphs, seg_outs):
            graph.replay()
            for i, t in outs:
                # the graph's buffers are overwritten by its next replay: hand out copies
                res[i] = t.clone()
                if on_output is not None:
                    on_output(i, res[i])
        nd = len(res) - 1
        return res[0], [res[1 + k] for k in range(nd)], (last.clone() if last is not None else None)

    # ---- CUDA graphs: the tower for one grid as one graph per segment (~440 launches -> 4 replays) -----
    def _graphable(self, px) -> bool:
        if not (self.cuda_graphs and px.ndim == 2 and self.device.type == "cuda"
                and 0 < px.shape[0] <= self.graph_max_patches):
            return False
        if self.batch_invariant or torch.cuda.is_current_stream_capturing():
            return False
        try:
            if torch.compiler.is_compiling():
                return False
        except AttributeError:  # pragma: no cover
            pass
        return True

    def _capture(self, pixel_values, grid, return_last_hidden, key):
        while len(self._graphs) >= self.max_graphs:  # least recently used out
            self._graphs.pop(next(iter(self._graphs)))
        tables = self._tables(grid)  # kept alive through st["tables"]: the graphs read these buffers
        static_in = torch.empty(pixel_values.shape, dtype=self.dtype, device=self.device)
        static_in.copy_(pixel_values)
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up off the capture: compiles kernels, runs the one-time probes
            self._forward(static_in, grid, return_last_hidden, tables)
        torch.cuda.current_stream(self.device).wait_stream(side)
        pool = torch.cuda.graph_pool_handle()  # one pool: the segments replay in capture order
        graphs, seg_outs, st = [], [], None
        for si, seg in enumerate(self._segments()):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                if si == 0:
                    st = self._prologue(static_in, tables)
                outs = self._segment(st, seg)
            graphs.append(graph)
            seg_outs.append(outs)
        # st holds the tables and the final stream x (the last hidden state): the graphs read and write them
        self._graphs[key] = ent = (static_in, graphs, seg_outs, st)
        return ent

    def _forward(self, pixel_values, grid, return_last_hidden, tables, on_output=None):
        st = self._prologue(pixel_values, tables)
        res = {}
        for seg in self._segments():
            for i, t in self._segment(st, seg):
                res[i] = t
                if on_output is not None:
                    on_output(i, t)
        nd = len(res) - 1
        return res[0], [res[1 + k] for k in range(nd)], (st["x"] if return_last_hidden else None)

    def _prologue(self, pixel_values, tables) -> dict:
        g, v = self.geometry, self.visual
        dev, dt = self.device, self.dtype
        D = g.head_dim
        cos, sin, idx, wgt, cu_dev, cu_list, max_seqlen, pos = tables
        # patch embed: Conv3d with kernel == stride is a GEMM over the pixel rows
        w = v.patch_embed.proj.weight
        x = self._linear(pixel_values.to(device=dev, dtype=dt), w.reshape(w.shape[0], -1), v.patch_embed.proj.bias)
        # learned position embedding: bilinear taps of the 48x48 table (fp32 weights), added in place
        # by one Triton pass on CUDA (qvdp.ops.pos_embed); the eager form elsewhere
        if x.is_cuda:
            pos_embed_add_(x, v.pos_embed.weight, idx, wgt)
        else:
            pos = (v.pos_embed(idx) * wgt[:, :, None]).sum(1)
            x = x + pos.to(dt)
        T = x.shape[0]
        backend = self.attention_backend
        if backend == "auto":
            backend = auto_attention_backend(x, D)
        block_map = None
        if backend == "triton":
            block_map = build_block_map(cu_dev, T, attention_config(D, max_seqlen, x.device.type,
                                                                       x.element_size())["BLOCK_M"])
        fuse = self._fuse_norm(x)
        qkv_rope_on = None  # or (signed column frequencies, positions) for the fused qkv GEMM
        if pos is not None and self._qkv_rope_on(x, backend):
            qkv_rope_on = (_pair_freqs(g.num_heads, D, self.theta, x.device), pos)
        cum = None
        if fuse and self.deferred_bias:  # row 2l: biases up to block l's proj; 2l + 1: up to its fc2
            cum = torch.stack([b for blk in v.blocks for b in (blk.attn.proj.bias, blk.mlp.linear_fc2.bias)])
            cum = cum.float().cumsum(0)
        # h: LN1 of the block about to run, when the previous block's fused add produced it; cum: the
        # deferred biases (x + cum[r] is the true stream, r = st["cum_row"]; None: x is whole)
        return dict(x=x, h=None, T=T, backend=backend, block_map=block_map, fuse=fuse, tables=tables,
                    cum=cum, cum_row=None, qkv_rope=qkv_rope_on)

    def _qkv_rope_on(self, x, backend) -> bool:
        """Whether the qkv GEMM applies the rotary in its epilogue (see fused_qkv_rope)."""
        if not self._qkv_rope_wanted() or backend == "torch" or not x.is_cuda or x.dtype != torch.bfloat16:
            return False
        g = self.geometry
        return (g.head_dim % 4 == 0 and x.shape[1] % 8 == 0
                and self.visual.blocks[0].attn.qkv.weight.dtype == torch.bfloat16)

    @staticmethod
    def _qkv_stamp(qkv):
        """Where the qkv weight and bias live and their in-place versions (qvdp.ops._stamp)."""
        return stamp(qkv.weight), None if qkv.bias is None else stamp(qkv.bias)

    def _permuted_qkv(self, li, qkv):
        """The pair-ordered copy of layer li's qkv weight (and fp32 bias) for the fused qkv GEMM, made once
        and remade in place - the same buffers, which captured graphs keep reading - whenever the weights
        change in place (load_state_dict, copy_) or move."""
        from .ops.qkv_rope_gemm import permuted_qkv
        key = self._qkv_stamp(qkv)
        ent = self._qkv_perm.get(li)
        if ent is not None and ent[0] == key:
            return ent[1], ent[2]
        w, b = permuted_qkv(qkv.weight, qkv.bias, self.geometry.num_heads)
        same = (ent is not None and ent[1].shape == w.shape and ent[1].dtype == w.dtype and ent[1].device == w.device
                and (ent[2] is None) == (b is None) and (b is None or ent[2].shape == b.shape))
        if same:
            ent[1].copy_(w)
            if b is not None:
                ent[2].copy_(b)
            w, b = ent[1], ent[2]
        self._qkv_perm[li] = (key, w, b)
        return w, b

    def _refresh_qkv_perm(self):
        """Before a graph replay (which runs no Python per layer): remake stale pair-ordered copies."""
        blocks = self.visual.blocks
        for li, ent in list(self._qkv_perm.items()):
            if ent[0] != self._qkv_stamp(blocks[li].attn.qkv):
                self._permuted_qkv(li, blocks[li].attn.qkv)

    def _segment(self, st, seg) -> list:
        """Run blocks [a, b) on the state, then the deepstack merger k (or the final merger)."""
        a, b, k, m = seg
        v = self.visual
        for li in range(a, b):
            self._block(st, li)
        x = st["x"]
        if st["cum_row"] is not None:  # the true stream: x + the deferred biases (one pass)
            x = add_layernorm(x, None, st["cum"][st["cum_row"]])[0]
        if k is not None:
            return [(1 + k, self._merger(v.deepstack_merger_list[m], x, True))]
        st["x"], st["cum_row"] = x, None  # the last hidden state is handed out whole
        st["cum"] = None
        return [(0, self._merger(v.merger, x, False))]

    def _block(self, st, li):
        g = self.geometry
        D, nh = g.head_dim, g.num_heads
        cos, sin, idx, wgt, cu_dev, cu_list, max_seqlen, _ = st["tables"]
        blocks = self.visual.blocks
        blk = blocks[li]
        x, h, T, backend = st["x"], st["h"], st["T"], st["backend"]
        if h is None:
            h = F.layer_norm(x, (x.shape[-1],), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
        if st["qkv_rope"] is not None:  # q and k leave the GEMM rotated (head dims in pair order): no cos/sin below
            from .ops.qkv_rope_gemm import qkv_rope
            qkv = qkv_rope(h, *self._permuted_qkv(li, blk.attn.qkv), *st["qkv_rope"], nh)
            cos = sin = None
        else:
            qkv = self._linear(h, blk.attn.qkv.weight, blk.attn.qkv.bias)
        q, k, vv = qkv.view(T, 3, nh, D).unbind(1)
        if backend == "torch":
            o = R.varlen_attention_torch(q, k, vv, cu_dev, cos, sin, blk.attn.scaling, cu_list=cu_list)
        else:
            o = varlen_attention(q, k, vv, cu_dev, max_seqlen, cos=cos, sin=sin, scale=blk.attn.scaling,
                                 backend=backend, validate=False, block_map=st["block_map"])
        nxt = blocks[li + 1].norm1 if li + 1 < len(blocks) else None
        if st["cum"] is not None:  # deferred biases: GEMMs accumulate into x in place, LN adds the biases
            cum = st["cum"]
            x.addmm_(o.reshape(T, -1), blk.attn.proj.weight.t())
            h = add_layernorm(x, None, cum[2 * li], blk.norm2.weight, blk.norm2.bias, blk.norm2.eps,
                              store_sum=False)[1]
            h = self._fc1_act(h, blk.mlp)
            x.addmm_(h, blk.mlp.linear_fc2.weight.t())
            h = None if nxt is None else add_layernorm(x, None, cum[2 * li + 1], nxt.weight, nxt.bias, nxt.eps,
                                                         store_sum=False)[1]
            st["cum_row"] = 2 * li + 1
        elif st["fuse"]:  # bias-free GEMMs; residual add + bias + the next LayerNorm in one pass each
            y = torch.mm(o.reshape(T, -1), blk.attn.proj.weight.t())
            x, h = add_layernorm(x, y, blk.attn.proj.bias, blk.norm2.weight, blk.norm2.bias, blk.norm2.eps)
            h = self._fc1_act(h, blk.mlp)
            y = torch.mm(h, blk.mlp.linear_fc2.weight.t())
            x, h = add_layernorm(x, y, blk.mlp.linear_fc2.bias, nxt.weight if nxt is not None else None,
                                 nxt.bias if nxt is not None else None, nxt.eps if nxt is not None else 1e-6)
        else:
            x = x + self._linear(o.reshape(T, -1), blk.attn.proj.weight, blk.attn.proj.bias)
            h = F.layer_norm(x, (x.shape[-1],), blk.norm2.weight, blk.norm2.bias, blk.norm2.eps)
            h = self._fc1_act(h, blk.mlp)
            x = x + self._linear(h, blk.mlp.linear_fc2.weight, blk.mlp.linear_fc2.bias)
            h = None
        st["x"], st["h"] = x, h


def hf_vision_forward(visual):
    """Wrap the unmodified HF forward in the same calling convention (for comparisons)."""
    orig = getattr(visual, "_qvdp_original_forward", visual.forward)

    @torch.no_grad()
    def fwd(pixel_values, grid, return_last_hidden=False):
        gt = torch.tensor([list(r) for r in grid], dtype=torch.long, device=pixel_values.device)
        out = orig(pixel_values, grid_thw=gt)
        if isinstance(out, tuple):  # older transformers: (merged, deepstack list)
            return out[0], list(out[1]), None
        return out.pooler_output, list(out.deepstack_features or []), (out.last_hidden_state if return_last_hidden
                                                                         else None)
    return fwd
