"""FA3 call overhead (diagnostics): flash_attn_varlen_func as the tower calls it, against the same
kernel with FA3's scheduler metadata computed once (get_scheduler_metadata) and passed to every call
(skips the per-call prepare kernel and semaphore memset). 27 calls (one forward's worth) captured in a
CUDA graph each way; outputs compared for equality on every call.

    python benchmarks/diag_fa3.py
"""
import torch

from _common import event_ms, graph_of, try_import_fa3


def main():
    try_import_fa3()
    import importlib
    mod = None
    for name in ("flash_attn_interface", "fa3_fwd_interface"):
        try:
            mod = importlib.import_module(name)
            break
        except Exception:
            continue
    if mod is None:
        print("no FA3")
        return
    T, H, D, S = 14080, 16, 72, 4
    seq = T // S
    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(T, 3, H, D, device="cuda", dtype=torch.bfloat16, generator=g)
    q, k = qkv[:, 0].contiguous(), qkv[:, 1].contiguous()
    v = qkv[:, 2]
    cu = torch.arange(0, T + 1, seq, device="cuda", dtype=torch.int32)
    lens = cu[1:] - cu[:-1]
    scale = D ** -0.5

    def plain():
        return mod.flash_attn_varlen_func(q, k, v, cu, cu, seq, seq, softmax_scale=scale, causal=False)

    ref = plain()
    ref = ref[0] if isinstance(ref, tuple) else ref
    meta = mod.get_scheduler_metadata(S, seq, seq, H, H, D, lens, qkv_dtype=torch.bfloat16, headdim_v=D,
                                      cu_seqlens_q=cu, causal=False, num_splits=1)
    print("metadata", tuple(meta.shape), meta.dtype)

    def with_meta():
        return mod._flash_attn_forward(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, seqused_k=lens, max_seqlen_q=seq,
                                       max_seqlen_k=seq, softmax_scale=scale, causal=False,
                                       scheduler_metadata=meta, num_splits=1)[0]

    for i in range(3):
        o = with_meta()
        print(f"call {i}: equal to plain: {torch.equal(o, ref)}  max diff {(o.float() - ref.float()).abs().max().item():.3e}")

    for name, fn in (("plain", plain), ("metadata", with_meta)):
        gr, outs = graph_of(fn, 27)
        outs = [o[0] if isinstance(o, tuple) else o for o in outs]
        gr.replay()
        torch.cuda.synchronize()
        ok = all(torch.equal(o, ref) for o in outs)
        ts = sorted(event_ms(gr.replay, inner=1) for _ in range(20))
        print(f"{name:9s}: 27 calls in a graph {ts[len(ts) // 2]:.3f} ms (min {ts[0]:.3f}), outputs equal: {ok}")


if __name__ == "__main__":
    main()
