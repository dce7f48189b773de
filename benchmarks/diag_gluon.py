"""v13 (Gluon D=64 kernel) against v9 on one GPU: correctness on ragged segments (several seeds, with and
without RoPE, bf16 and fp16) vs the fp64 reference, then time at 4 x 3520, H=16 (do_bench, as
bench_attention.py, and per kernel), with FA3 (if importable) in the same run. JSON lines; --out writes them."""
import argparse
import json
import sys

import torch
import triton

sys.path.insert(0, ".")
from benchmarks._common import attention_inputs as mk, kernel_us, try_import_fa3  # noqa: E402
from benchmarks.diag_host import timings  # noqa: E402
from qvdp.ops.attention import _varlen_attention_triton, attention_config, build_block_map  # noqa: E402
from qvdp.reference import attention_reference  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--variants", default='[{}, {"GLUON": 1}, {"GLUON": 1, "STAGES": 3}]')
    args = ap.parse_args()
    lines = []

    def emit(d):
        print(json.dumps(d), flush=True)
        lines.append(d)
    D = 64
    base = attention_config(D, 4096, "cuda")
    for var in json.loads(args.variants):
        cfg = dict(base, **var)
        res = {"variant": var}
        try:
            errs = {}
            for dt in (torch.bfloat16, torch.float16):
                for rope in (True, False):
                    worst = 0.0
                    for seed, lens in enumerate([[1, 300, 3520, 77, 64, 129], [4096, 17, 2, 999],
                                                 [65, 63, 128, 127, 1000], [5] * 300]):
                        qkv, cu, cos, sin = mk(lens, 3, D, dt, seed)
                        q, k, v = qkv.unbind(1)
                        out = _varlen_attention_triton(q, k, v, cu, max(lens), cos if rope else None,
                                                       sin if rope else None, D ** -0.5, None, cfg)
                        ref = attention_reference(q, k, v, cu, cos if rope else None, sin if rope else None)
                        worst = max(worst, ((out.double() - ref).norm() / ref.norm()).item())
                    errs[f"{str(dt)[6:]}{'' if rope else ' no RoPE'}"] = worst
            res["err"] = errs
            lens = [3520] * 4
            fl = 4.0 * sum(s * s for s in lens) * 16 * D
            qkv, cu, cos, sin = mk(lens, 16, D, torch.bfloat16)
            q, k, v = qkv.unbind(1)
            bm = build_block_map(cu, q.shape[0], cfg["BLOCK_M"])
            for rope in (True, False):
                c, s_ = (cos, sin) if rope else (None, None)
                fn = lambda: _varlen_attention_triton(q, k, v, cu, max(lens), c, s_, D ** -0.5, bm, cfg)  # noqa: E731
                ms = triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")
                res["TFLOP/s" + ("" if rope else " no RoPE")] = round(fl / ms / 1e9, 1)
                res["us" + ("" if rope else " no RoPE")] = kernel_us(fn, width=28)
        except Exception as e:  # noqa: BLE001
            res["error"] = f"{type(e).__name__}: {str(e)[:400]}"
        emit(res)
    from qvdp import varlen_attention  # the public call, as bench_attention.py times it (default config)
    lens = [3520] * 4
    qkv, cu, cos, sin = mk(lens, 16, D, torch.bfloat16)
    q, k, v = qkv.unbind(1)
    bm = build_block_map(cu, q.shape[0], base["BLOCK_M"])
    fn = lambda: varlen_attention(q, k, v, cu, max(lens), cos=cos, sin=sin, validate=False, block_map=bm)  # noqa: E731
    for rep in range(2):
        t = timings(fn)
        emit({"public varlen_attention TFLOP/s": round(4.0 * sum(s * s for s in lens) * 16 * D / t["do_bench"] / 1e6, 1),
              **t, "rep": rep})
    emit({"public us": kernel_us(fn, width=28)})
    fa3 = try_import_fa3()
    if fa3 is not None:
        lens = [3520] * 4
        qkv, cu, cos, sin = mk(lens, 16, D, torch.bfloat16)
        q, k, v = (x.contiguous() for x in qkv.unbind(1))
        fn = lambda: fa3(q, k, v, cu, cu, max(lens), max(lens))  # noqa: E731
        t = timings(fn)
        emit({"FA3 attn only TFLOP/s": round(4.0 * sum(s * s for s in lens) * 16 * D / t["do_bench"] / 1e6, 1), **t,
              "us": kernel_us(fn, width=28)})
    if args.out:
        with open(args.out, "w") as f:
            f.write("".join(json.dumps(d) + "\n" for d in lines))


if __name__ == "__main__":
    main()
