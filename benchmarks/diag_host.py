"""Where the time of one attention call goes at D=64, 4 x 3520, H=16 (one GPU): the GPU kernels (profiler),
the host's enqueue time per call, and the same call timed three ways - triton's do_bench (L2 flushed before
each call, what bench_attention.py reports), back to back (no flush), CUDA graph replay (no host work); and
a plain copy of the pre-pass's bytes as its floor. Prints JSON lines; --out writes them. (Session 17 also timed
a pre-pass form with 3-D tiles here, `_rot_pack3`: slower, removed; NOTES.md.)"""
import argparse
import json
import sys
import time

import torch
import triton

sys.path.insert(0, ".")
from benchmarks._common import kernel_us as kernels, try_import_fa3  # noqa: E402
from qvdp.ops.attention import attention_config, build_block_map, varlen_attention  # noqa: E402


def make(lens, H, D, seed=0):
    torch.manual_seed(seed)
    T = sum(lens)
    qkv = torch.randn(T, 3, H, D, device="cuda", dtype=torch.bfloat16)
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lens).cumsum(0)
    ang = torch.rand(T, D // 2, device="cuda") * 40
    ang = torch.cat([ang, ang], -1)
    return qkv, cu.cuda(), ang.cos().contiguous(), ang.sin().contiguous()


def timings(fn, n=30):
    fn()
    torch.cuda.synchronize()
    res = {"do_bench": triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median") * 1e3}
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(n):
        fn()
    e1.record()
    torch.cuda.synchronize()
    res["back_to_back"] = e0.elapsed_time(e1) * 1e3 / n
    torch.cuda._sleep(int(3e8))  # keep the GPU busy: the host loop below measures enqueue time only
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    res["host_us"] = (time.perf_counter() - t0) * 1e6 / n
    torch.cuda.synchronize()
    try:
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(g):
            fn()
        g.replay()
        torch.cuda.synchronize()
        e0.record()
        for _ in range(n):
            g.replay()
        e1.record()
        torch.cuda.synchronize()
        res["graph"] = e0.elapsed_time(e1) * 1e3 / n
    except Exception as e:  # noqa: BLE001
        res["graph"] = f"{type(e).__name__}: {str(e)[:120]}"
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in res.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    lines = []

    def emit(d):
        print(json.dumps(d), flush=True)
        lines.append(d)

    emit({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__})
    lens, H, D = [3520] * 4, 16, 64
    fl = 4.0 * sum(s * s for s in lens) * H * D
    qkv, cu, cos, sin = make(lens, H, D)
    q, k, v = qkv.unbind(1)
    base = attention_config(D, max(lens), "cuda")
    bm = build_block_map(cu, q.shape[0], base["BLOCK_M"])
    x = torch.randn(q.numel() * 2, device="cuda", dtype=torch.bfloat16)  # the pre-pass's bytes: q and k
    y = torch.empty_like(x)
    emit({"what": "copy of q+k bytes (57.7 MB read + write)", "us": kernels(lambda: y.copy_(x))})
    fa3 = try_import_fa3()
    qr = torch.empty_like(q).copy_(q)
    kr = torch.empty_like(k).copy_(k)
    systems = {"qvdp (RoPE fused)": lambda: varlen_attention(q, k, v, cu, max(lens), cos=cos, sin=sin, validate=False,
                                                             block_map=bm),
               "qvdp attn only": lambda: varlen_attention(q, k, v, cu, max(lens), validate=False, block_map=bm)}
    if fa3 is not None:
        systems["FA3 attn only"] = lambda: fa3(qr, kr, v, cu, cu, max(lens), max(lens), causal=False)
    for name, fn in systems.items():
        t = timings(fn)
        emit({"system": name, **t, "tflops_do_bench": round(fl / t["do_bench"] / 1e6, 1), "kernels": kernels(fn)})
    if args.out:
        with open(args.out, "w") as f:
            f.write("".join(json.dumps(d) + "\n" for d in lines))


if __name__ == "__main__":
    main()
