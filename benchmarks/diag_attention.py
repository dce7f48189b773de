"""Attention kernel forms and tiles on a GPU: correctness on ragged segments (several seeds), then time.

Stage 1: every (form, tile) at D=72 on 4 x 3520. Stage 2: the three fastest correct ones and the
shipped default at D=72 mixed / 4 x 6400 and D=80 / D=64. Each config runs in its own process so a
miscompile (illegal address) cannot spill over. Prints one JSON line per run; `--out` writes them."""
import argparse
import json
import os
import subprocess
import sys

CHILD = r'''
import sys, json, torch, triton
sys.path.insert(0, ".")
from qvdp.ops.attention import _varlen_attention_triton, build_block_map, attention_config
from qvdp.reference import attention_reference
v = json.loads(sys.argv[1])
D = v["D"]
cfg = v["cfg"] or attention_config(D, 4096, "cuda")
def mk(lens, H, seed=0):
    torch.manual_seed(seed)
    T = sum(lens)
    qkv = torch.randn(T, 3, H, D, device="cuda", dtype=torch.bfloat16)
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32); cu[1:] = torch.tensor(lens).cumsum(0); cu = cu.cuda()
    ang = torch.rand(T, D // 2, device="cuda") * 40
    return qkv, cu, torch.cat([ang, ang], -1).cos().contiguous(), torch.cat([ang, ang], -1).sin().contiguous()
regs = {}
if v.get("prof"):  # registers and shared memory per program of each launch (what can share an SM)
    from triton.runtime.jit import JITFunction
    _orig = JITFunction.run
    def _run(self, *a, grid, warmup, **kw):
        k = _orig(self, *a, grid=grid, warmup=warmup, **kw)
        regs[self.fn.__name__] = [getattr(k, "n_regs", None), getattr(getattr(k, "metadata", None), "shared", None)]
        return k
    JITFunction.run = _run
errs = []
for seed, lens in enumerate([[1, 300, 3520, 77, 64, 129], [4096, 17, 2, 999], [65, 63, 128, 127, 1000]]):
    qkv, cu, cos, sin = mk(lens, 2, seed)
    q, k, vv = qkv.unbind(1)
    out = _varlen_attention_triton(q, k, vv, cu, max(lens), cos, sin, D ** -0.5, None, cfg)
    ref = attention_reference(q, k, vv, cu, cos, sin)
    errs.append(((out.double() - ref).norm() / ref.norm()).item())
res = dict(D=D, cfg=v["cfg"], err=max(errs), regs=regs)
if max(errs) < 1e-2:
    for name in v["shapes"]:
        L = {"4x3520": [3520] * 4, "4x6400": [6400] * 4, "mixed": [256, 1024, 3520, 6400, 16384],
             "video": [3520] * 16}[name]
        qkv, cu, cos, sin = mk(L, 16)
        q, k, vv = qkv.unbind(1)
        bmap = build_block_map(cu, q.shape[0], cfg["BLOCK_M"])
        ms = triton.testing.do_bench(lambda: _varlen_attention_triton(q, k, vv, cu, max(L), cos, sin, D ** -0.5, bmap,
                                     cfg), warmup=10, rep=60, return_mode="median")
        res[name] = round(4.0 * sum(s * s for s in L) * 16 * D / ms / 1e9, 1)
        if v.get("prof") and name == v["shapes"][0]:  # per-kernel time (us per call): pre-pass vs attention
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(20):
                    _varlen_attention_triton(q, k, vv, cu, max(L), cos, sin, D ** -0.5, bmap, cfg)
                torch.cuda.synchronize()
            res["us"] = {e.key[:40]: round(e.device_time_total / 20, 1) for e in prof.key_averages()
                         if e.device_time_total > 0}
            if v.get("norope"):
                ms = triton.testing.do_bench(lambda: _varlen_attention_triton(q, k, vv, cu, max(L), None, None,
                                             D ** -0.5, bmap, cfg), warmup=10, rep=60, return_mode="median")
                res[name + " no RoPE"] = round(4.0 * sum(s * s for s in L) * 16 * D / ms / 1e9, 1)
print(json.dumps(res))
'''


def tile(bm, bn, w, s, layout=0, pipe=1, tma=0, qtma=None):
    cfg = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s, LAYOUT=layout, PIPE=pipe)
    if tma:
        cfg["TMA"] = 1
    if qtma is not None:
        cfg["QTMA"] = qtma
    return cfg


# (head dim, config); None = the shipped attention_config() (PIPE=1 unless a config says PIPE=0).
# LAYOUT 1 = V's tail stored transposed (exact at BLOCK_N >= 64, NOTES.md v3).
STAGE1 = ([(72, None)] + [(72, tile(*t, layout=1)) for t in [
              (64, 64, 4, 2), (64, 64, 4, 4), (64, 128, 4, 3), (64, 128, 4, 2), (128, 64, 8, 2), (128, 128, 8, 3),
              (64, 32, 4, 3)]]
          + [(80, None)] + [(80, tile(64, 64, 4, 3, 1)), (80, tile(128, 64, 4, 3, 1)), (80, tile(128, 32, 8, 3)),
                            (80, tile(64, 32, 4, 3))]
          + [(64, None)] + [(64, tile(*t)) for t in [
              (64, 128, 4, 3), (128, 64, 4, 3), (64, 64, 4, 4), (64, 64, 4, 2), (128, 128, 8, 2)]])


# v5 (D=64, no tail chunk): K/V by TMA descriptor, against the pointer kernel (v4's 64x64 tile)
STAGE_TMA = [(64, tile(64, 64, 4, 3))] + [(64, tile(*t, tma=1)) for t in [
    (64, 64, 4, 3), (64, 64, 4, 4), (64, 128, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3)]]


# v6 (D=64): Q rotated by the pre-pass and loaded by TMA too (QTMA=1: Q K^T from shared memory, no
# ptxas wgmma serialisation), against v5 (QTMA=0: Q rotated in registers)
STAGE_QTMA = [(64, None), (64, tile(64, 64, 4, 3, tma=1, qtma=0))] + [(64, tile(*t, tma=1, qtma=1)) for t in [
    (64, 64, 4, 3), (64, 64, 4, 4), (64, 64, 4, 2), (64, 128, 4, 3), (64, 128, 4, 2), (128, 64, 8, 3),
    (128, 64, 8, 2), (128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 4, 3)]] + [
    (64, tile(*t, pipe=0, tma=1, qtma=1)) for t in [(64, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 3)]]


# v6b (D=64): a register cap (maxnreg) so 3-4 programs share an SM and one's softmax overlaps
# another's wgmma; caps chosen where ptxas (Triton 3.6) reports no spills or only a few bytes
def _cap(bm, bn, w, s, pipe, qtma, maxnreg):
    cfg = tile(bm, bn, w, s, pipe=pipe, tma=1, qtma=qtma)
    if maxnreg:
        cfg["maxnreg"] = maxnreg
    return cfg


STAGE_CAP = [(64, None), (64, _cap(64, 64, 4, 3, 1, 0, 0)), (64, _cap(64, 64, 4, 3, 1, 1, 0))] + [
    (64, _cap(*t)) for t in [
        (64, 64, 4, 3, 1, 1, 160), (64, 64, 4, 3, 1, 1, 168), (64, 64, 4, 2, 1, 1, 168),
        (64, 64, 4, 3, 0, 1, 128), (64, 64, 4, 2, 0, 1, 128), (64, 64, 4, 2, 0, 1, 168),
        (64, 64, 4, 3, 0, 1, 168), (64, 128, 4, 2, 0, 1, 168), (128, 64, 8, 3, 1, 1, 168),
        (64, 64, 4, 2, 1, 1, 128), (64, 64, 4, 3, 1, 0, 168)]]


# v9 (D=64): V read through a descriptor over the caller's strided view (DIRECT, no copy); K and Q rotated by
# a pre-pass launch that takes a token block x HG heads per program; the attention launch a programmatic
# dependent launch of it (PDL). Also measured and removed (s15-v9 / s15-v10, NOTES.md): QSCR (each attention
# program rotating its own Q rows into a scratch buffer, TMA back) and FUSED (v10: the rotation as work
# items of the attention launch, atomic tickets) and v11 OVL (s16: a resident pre-pass grid counting each head
# group's items, the attention a dependent launch waiting per head group; sweeps in
# results/diag/attention-sweep-v11-ovl-h100.jsonl).
def _v9(bm, bn, w, s, pipe, qtma, cap, direct=1, **kw):
    cfg = tile(bm, bn, w, s, pipe=pipe, tma=1, qtma=qtma)
    cfg.update(DIRECT=direct, **kw)
    if cap:
        cfg["maxnreg"] = cap
    return cfg


STAGE_V9 = [(64, _v9(64, 128, 4, 2, 0, 1, 168, direct=0)), (64, _v9(64, 128, 4, 2, 0, 1, 168, PDL=0)),
            (64, _v9(64, 128, 4, 2, 0, 1, 168, PDL=1)), (64, _v9(64, 128, 4, 2, 0, 0, 168, PDL=1)),
            (64, _v9(64, 128, 4, 2, 0, 0, 168, PDL=0)), (64, _v9(64, 128, 4, 2, 0, 1, 160, PDL=1)),
            (64, _v9(64, 128, 4, 2, 0, 1, 168, PDL=1, PBT=64, PHG=4)),
            (64, _v9(64, 128, 4, 2, 0, 1, 168, PDL=1, PBT=32, PHG=2))]


def run(D, cfg, shapes, prof=False):
    arg = json.dumps(dict(D=D, cfg=cfg, shapes=shapes, prof=prof, norope=prof))
    try:
        r = subprocess.run([sys.executable, "-c", CHILD, arg], capture_output=True, text=True,
                           timeout=int(os.environ.get("DIAG_CHILD_T", 240)))
    except subprocess.TimeoutExpired:
        return dict(D=D, cfg=cfg, fail="timeout")
    lines = [ln for ln in r.stdout.strip().splitlines() if ln.startswith("{")]
    if r.returncode or not lines:
        return dict(D=D, cfg=cfg, fail=f"rc={r.returncode} " + r.stderr.strip()[-200:].replace("\n", " | "))
    return json.loads(lines[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--best", default=None, help="write the fastest correct config per head dim as "
                                                 "QVDP_ATTN_CONFIG JSON")
    ap.add_argument("--stage", choices=["tiles", "tma", "qtma", "cap", "v9"], default="tiles")
    args = ap.parse_args()
    stage = {"tiles": STAGE1, "tma": STAGE_TMA, "qtma": STAGE_QTMA, "cap": STAGE_CAP, "v9": STAGE_V9}[args.stage]
    rows = []

    def emit(r):
        rows.append(r)
        print(json.dumps(r), flush=True)

    for D, cfg in stage:
        emit(run(D, cfg, ["4x3520"], prof=args.stage == "v9"))
    best = {}
    for D in sorted({d for d, _ in stage}):
        mine = [r for r in rows if r["D"] == D]
        base = next((r.get("4x3520", 0) for r in mine if r["cfg"] is None), 0)
        ok = sorted([r for r in mine if r.get("4x3520") and r["cfg"]], key=lambda r: -r["4x3520"])
        if ok and ok[0]["4x3520"] > 1.03 * base:
            best[str(D)] = ok[0]["cfg"]
            print("BEST", D, ok[0]["cfg"], ok[0]["4x3520"], "vs default", base, flush=True)
        if D == 72:
            for cfg in [r["cfg"] for r in ok[:2]] + [None]:
                emit(run(72, cfg, ["4x6400", "mixed", "video"]))
    if args.best and best:
        with open(args.best, "w") as f:
            json.dump(best, f)
    if args.out:
        with open(args.out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
