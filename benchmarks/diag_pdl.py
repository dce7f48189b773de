"""Does a programmatic dependent launch (PDL) start early on this GPU / Triton? And what do the D=64
attention's two launches (RoPE pre-pass, attention) use per program (registers, shared memory)?

1. A resident primary grid records %globaltimer, calls griddepcontrol.launch_dependents (or not), spins
   SPIN us; the secondary grid (launch_pdl=True) records its start. Printed: secondary start minus
   primary start, us (PDL working: ~0; not: ~SPIN). Session 16 on an H100 (Triton 3.6): 18 us with the
   trigger, 200 without.
2. One D=64 attention call at 4 x 3520, H=16: each Triton launch's n_regs / shared bytes / grid. Two
   kernels' programs share an SM only within its register file and under one L1/shared split (NOTES.md,
   v11 OVL)."""
import json
import sys

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents

sys.path.insert(0, ".")


@triton.jit
def _now():
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def _primary(T0, spin_ns, TRIG: tl.constexpr):
    if TRIG:
        gdc_launch_dependents()
    t = _now()
    tl.store(T0 + tl.program_id(0), t)
    while _now() - t < spin_ns:
        pass


@triton.jit
def _secondary(T1):
    tl.store(T1 + tl.program_id(0), _now())


def pdl_probe(trig, pdl, n=132, spin_us=200):
    t0 = torch.zeros(n, dtype=torch.int64, device="cuda")
    t1 = torch.zeros(n, dtype=torch.int64, device="cuda")
    for _ in range(3):
        _primary[(n,)](t0, spin_us * 1000, TRIG=trig, num_warps=4)
        _secondary[(n,)](t1, num_warps=4, **({"launch_pdl": True} if pdl else {}))
        torch.cuda.synchronize()
    return round((t1.min().item() - t0.min().item()) / 1e3, 1)


def main():
    for trig, pdl in ((1, 1), (0, 1), (1, 0)):
        print(json.dumps({"probe": "pdl", "trigger": trig, "launch_pdl": pdl, "secondary_start_us": pdl_probe(trig, pdl)}),
              flush=True)
    from triton.runtime.jit import JITFunction
    from qvdp.ops import attention as A
    got = []
    orig = JITFunction.run

    def run(self, *args, grid, warmup, **kw):
        k = orig(self, *args, grid=grid, warmup=warmup, **kw)
        got.append(dict(kernel=self.fn.__name__, grid=str(grid), n_regs=getattr(k, "n_regs", None),
                        shared=getattr(getattr(k, "metadata", None), "shared", None),
                        launch_pdl=getattr(getattr(k, "metadata", None), "launch_pdl", None)))
        return k
    JITFunction.run = run
    T, H, D = 14080, 16, 64
    qkv = torch.randn(T, 3, H, D, device="cuda", dtype=torch.bfloat16)
    q, k, v = qkv.unbind(1)
    cu = torch.tensor([0, 3520, 7040, 10560, 14080], dtype=torch.int32, device="cuda")
    cos, sin = torch.randn(T, D, device="cuda"), torch.randn(T, D, device="cuda")
    A._varlen_attention_triton(q, k, v, cu, 3520, cos, sin, 0.125, None, A.attention_config(64, 3520, "cuda"))
    torch.cuda.synchronize()
    for g in got:
        print(json.dumps(g), flush=True)
    JITFunction.run = orig


if __name__ == "__main__":
    main()
