"""Compile qvdp's GPU-path Triton kernels for sm_90a (Hopper) on a machine without a GPU.

    python tests/_compile_sm90.py        # one JSON line per kernel launch: {"kernel", "ok", "error"}

The host wrappers run on fake CUDA tensors (torch FakeTensorMode), so they pick the GPU tile configs
(TMA, QTMA, register caps, ...) exactly as on an H100; the launches are captured instead of run, then each
is compiled with triton.compile(ASTSource, GPUTarget("cuda", 90, 32)) - Triton's own front end, its
passes and the ptxas it bundles. This is how the Triton version that is not on the GPU machine (3.9 here,
3.6 there) gets its GPU compile checked. Must run without TRITON_INTERPRET (the interpreter replaces the
kernels). Used by tests/test_compile_sm90.py.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

_DT = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "i32",
       torch.int64: "i64", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1"}
_OPTIONS = ("num_warps", "num_stages", "maxnreg", "enable_fp_fusion", "num_ctas", "launch_pdl")

CAPTURED = []


def _capture(self, *args, grid, warmup, **kwargs):
    CAPTURED.append((self, args, kwargs))


def _type(v):
    if isinstance(v, torch.Tensor):
        return "*" + _DT[v.dtype]
    if type(v).__name__ == "TensorDescriptor":  # Gluon's carries its shared-memory layout
        lay = f",{v.layout!r}" if getattr(v, "layout", None) is not None else ""
        return f"tensordesc<{_DT[v.base.dtype]}[{', '.join(str(b) for b in v.block_shape)}]{lay}>"
    if isinstance(v, bool):
        return "i1"
    if isinstance(v, int):
        return "i32" if -2 ** 31 <= v < 2 ** 31 else "i64"
    if isinstance(v, float):
        return "fp32"
    raise TypeError(f"no Triton type for {type(v).__name__}")


def source(fn, args, kwargs):
    """(ASTSource, options, signature, constexprs) of one captured launch."""
    sig, const = {}, {}
    values = dict(zip([p.name for p in fn.params], args))
    values.update({k: v for k, v in kwargs.items() if k not in _OPTIONS})
    for p in fn.params:
        v = values[p.name] if p.name in values else p.default  # a parameter left at its default
        if p.is_constexpr:
            sig[p.name], const[p.name] = "constexpr", v
        else:
            sig[p.name] = _type(v)
    opts = {k: kwargs[k] for k in _OPTIONS if k in kwargs and kwargs[k] is not None}
    if type(fn).__name__ == "GluonJITFunction":  # a Gluon kernel (attention v13)
        from triton.experimental.gluon._runtime import GluonASTSource
        return GluonASTSource(fn, sig, dict(const)), opts, sig, const
    return ASTSource(fn, sig, dict(const)), opts, sig, const


def launches():
    """Run the host wrappers of the GPU paths on fake CUDA tensors; every kernel launch is captured."""
    from qvdp.ops import attention as A
    from qvdp.ops.layernorm import add_layernorm
    from qvdp.ops import patch_merger
    from qvdp.ops.patch_merger import bias_gelu_, fold_stats, gelu_, row_norm, row_stats
    from qvdp.ops.pos_embed import pos_embed_add_
    JITFunction.run = _capture
    patch_merger._pdl_capable = lambda index: True  # the passes' PDL launches, as on a Hopper GPU
    cuda = dict(device="cuda")
    with FakeTensorMode(allow_non_fake_inputs=True):
        for D, dt in ((64, torch.bfloat16), (72, torch.bfloat16), (80, torch.bfloat16), (64, torch.float16),
                      (72, torch.float32), (128, torch.bfloat16)):
            T, H = 512, 2
            qkv = torch.empty(T, 3, H, D, dtype=dt, **cuda)
            q, k, v = qkv.unbind(1)
            cu = torch.empty(3, dtype=torch.int32, **cuda)
            cos, sin = torch.empty(T, D, **cuda), torch.empty(T, D, **cuda)
            cfg = A.attention_config(D, 4096, "cuda", q.element_size())
            bmap = torch.empty(T // cfg["BLOCK_M"] + 2, 2, dtype=torch.int32, **cuda)
            A._varlen_attention_triton(q, k, v, cu, 4096, cos, sin, D ** -0.5, bmap)
            if D == 64:  # no RoPE (the tower's qkv GEMM rotated q, k): the views are read, no pre-pass
                A._varlen_attention_triton(q, k, v, cu, 4096, None, None, D ** -0.5, bmap)
                if cfg.get("GLUON"):  # v9, the Triton kernel taken where Triton lacks Gluon's Hopper API
                    for c, s in ((cos, sin), (None, None)):
                        A._varlen_attention_triton(q, k, v, cu, 4096, c, s, D ** -0.5, bmap, dict(cfg, GLUON=0))
        for impl in ("lanes", "tile"):  # the RoPE pass in front of FA3
            qkv = torch.empty(512, 3, 16, 72, dtype=torch.bfloat16, **cuda)
            q, k, _ = qkv.unbind(1)
            A.rope_qk(q, k, torch.empty(512, 72, **cuda), torch.empty(512, 72, **cuda), impl=impl)
        for width in (1152, 4608):
            x = torch.empty(64, width, dtype=torch.bfloat16, **cuda)
            w, b = torch.empty(width, dtype=torch.bfloat16, **cuda), torch.empty(width, dtype=torch.bfloat16, **cuda)
            row_norm(x, w, b, width, 1e-6, False)
            row_norm(x, w, None, width, 1e-6, True)
            row_stats(x, torch.empty(64, **cuda), torch.empty(64, **cuda), width, 1e-6, False, negm=True)
        # power-of-two widths: the block kernels (1152 and 4608 above: the chunked statistics, 1152 the chunked norm)
        x = torch.empty(64, 1024, dtype=torch.bfloat16, **cuda)
        w = torch.empty(1024, dtype=torch.bfloat16, **cuda)
        row_norm(x, w, w, 1024, 1e-6, False)
        row_stats(x, torch.empty(64, **cuda), torch.empty(64, **cuda), 1024, 1e-6, True, negm=True)
        gelu_(torch.empty(3520, 4608, dtype=torch.bfloat16, **cuda))  # the cublas form's GELU pass
        bias_gelu_(torch.empty(3520, 4608, dtype=torch.bfloat16, **cuda),
                   torch.empty(4608, dtype=torch.bfloat16, **cuda))  # the cublas-mm form's pass
        for rms in (False, True):  # the folded per-patch norm's statistics
            fold_stats(torch.empty(256, 1152, dtype=torch.bfloat16, **cuda), 4, 1152, 1e-6, rms)
        x = torch.empty(64, 1152, dtype=torch.bfloat16, **cuda)
        w = torch.empty(1152, dtype=torch.bfloat16, **cuda)
        add_layernorm(x, x, w, w, w)
        pos_embed_add_(x, torch.empty(2304, 1152, dtype=torch.bfloat16, **cuda),
                       torch.empty(64, 4, dtype=torch.int64, **cuda), torch.empty(64, 4, **cuda))
    return CAPTURED


def main():
    target = GPUTarget("cuda", 90, 32)
    seen = set()
    for fn, args, kwargs in launches():
        src, opts, sig, const = source(fn, args, kwargs)
        key = (fn.fn.__name__, json.dumps(sig, sort_keys=True), json.dumps(const, sort_keys=True, default=str),
               json.dumps(opts, sort_keys=True))
        if key in seen:
            continue
        seen.add(key)
        rec = {"kernel": fn.fn.__name__, "constexprs": {k: v for k, v in const.items()
                                                        if isinstance(v, (int, float, bool))}, "options": opts}
        try:
            k = triton.compile(src, target=target, options=opts)
            rec.update(ok=True, cubin_bytes=len(k.asm["cubin"]))
        except Exception as e:  # noqa: BLE001 - reported per kernel
            rec.update(ok=False, error=f"{type(e).__name__}: {str(e)[:400]}")
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
