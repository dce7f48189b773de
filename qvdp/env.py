"""python -m qvdp.env: which backends are active on this machine, and why."""
from __future__ import annotations

import platform


def backends() -> list:
    rows = []
    import torch
    cuda = torch.cuda.is_available()
    from .ops import _triton_utils as tu
    if tu.HAS_TRITON:
        import triton
        if cuda:
            rows.append(("Triton GPU kernels", True, f"triton {triton.__version__} on {torch.cuda.get_device_name()}"))
        else:
            rows.append(("Triton GPU kernels", False, "no CUDA device"))
        rows.append(("Triton interpreter", tu.interpreter_on(),
                     "TRITON_INTERPRET=1 (CPU tests of the kernels)" if tu.interpreter_on()
                     else "TRITON_INTERPRET not set (set it before importing qvdp to run kernels on CPU)"))
    else:
        rows.append(("Triton", False, f"not importable: {tu.TRITON_IMPORT_ERROR}"))
    try:
        from . import _C
        rows.append(("native NCCL gather (qvdp._C)", True, f"built, NCCL {_C.nccl_version()}"))
    except Exception as e:
        rows.append(("native NCCL gather (qvdp._C)", False,
                     f"not built ({type(e).__name__}); setup.py builds it when torch has CUDA, nvcc and NCCL "
                     f"headers are found"))
    rows.append(("torch.distributed gather", torch.distributed.is_available(),
                 "broadcast of each contiguous run into the output (gloo/NCCL; all_gather for equal shares on NCCL)"))
    from .ops.attention import fa3_available, flash_attn_available
    fa3 = fa3_available()
    rows.append(("FlashAttention-3 backend", fa3,
                 "imports: the tower's attention 'auto' uses it on Hopper (fp16/bf16, head dim >= 64)" if fa3
                 else "optional: FA3's flash_attn_interface or the fa3-fwd wheel; else qvdp's Triton kernel"))
    rows.append(("flash-attn backend", flash_attn_available(), "optional: pip install flash-attn"))
    from .ops import merger_gemm
    why = merger_gemm.unavailable_reason()
    rows.append(("CUTLASS merger fc1 (opt-in)", why is None,
                 "patch_merger(backend='cutlass') runs here" if why is None else
                 f"optional (QVDP_BUILD_CUTLASS=1, nvidia-cutlass, Hopper): {why}"))
    why = merger_gemm.fold_unavailable_reason()
    rows.append(("CUTLASS merger fc1, norm folded", why is None,
                 "patch_merger's per-patch norm folded into fc1 (variant 30, explicit only) runs here" if why is None
                 else f"optional (QVDP_BUILD_CUTLASS=1, nvidia-cutlass, Hopper): {why}"))
    from .ops import qkv_rope_gemm
    why = qkv_rope_gemm.unavailable_reason()
    rows.append(("CUTLASS qkv GEMM + RoPE (opt-in)", why is None,
                 "the tower's qkv GEMM rotates q and k in its epilogue here (fused_qkv_rope, on by default)"
                 if why is None else
                 f"optional (QVDP_BUILD_CUTLASS=1, nvidia-cutlass, Hopper): {why}"))
    rows.append(("torch fallback", True, "plain torch for every op (CPU, or backend='torch')"))
    return rows


def main():
    import torch
    print(f"qvdp environment: python {platform.python_version()}, torch {torch.__version__}, "
          f"CUDA {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}")
    try:
        import transformers
        print(f"transformers {transformers.__version__}")
    except Exception:
        print("transformers not installed (needed for the HF integration, the demo and the tests)")
    for name, on, why in backends():
        print(f"  [{'x' if on else ' '}] {name:34s} {why}")


if __name__ == "__main__":
    main()
