"""The merger's GEMMs alone, cuBLAS against the CUTLASS kernels of csrc/merger_gemm.cu (chosen configurations x
tile orders). Systems timed in turn, CUDA events around 20 calls, best of 5 rounds. TFLOP/s = 2*M*N*K / time.

    python benchmarks/diag_merger_gemm.py [--m 3520 14080] [--nk 4608 4096] [--variants 1 4 ...] [--rasters 0 1 2]
        [--swizzles 1] [--names] [--extra-lib qvdp/_merger_diag.so --extra-variants 50 52]
                                            fc1 (N = K): cuBLAS mm / addmm / cuBLASLt bias+GELU(tanh) / addmm + GELU
                                            pass vs CUTLASS fc1_gelu (VARIANTS, DIAG_VARIANTS: D = acc)
    python benchmarks/diag_merger_gemm.py --fc2 [--m ...] [--kn 4608:2048 ...] [--variants 14 ...] [--rasters ...]
                                            fc2 (K -> N): cuBLAS addmm vs CUTLASS linear (LINEAR_VARIANTS)
"""
import argparse
import statistics
import subprocess
import threading
import time

import torch

from _common import event_ms

from qvdp.ops import merger_gemm as mg


def operands(M, N, K, g):
    """x [M, K], w [N, K], bias b [N] (bf16) and its fp32 copy c, an output buffer [M, N]"""
    x = torch.randn(M, K, device="cuda", generator=g).bfloat16()
    w = (torch.randn(N, K, device="cuda", generator=g) / K ** 0.5).bfloat16()
    b = torch.randn(N, device="cuda", generator=g).bfloat16()
    return x, w, b, b.float(), torch.empty(M, N, device="cuda", dtype=torch.bfloat16)


def extra_library(path, variants):
    """(launch(x, w, c, out, variant, swizzle, raster), variants) for a diagnostics library built by
    `scripts/build_merger_gemm.py --variants ... --out path` (merger_gemm.cu configurations outside the package's)."""
    import os
    from qvdp.ops._cutlass_lib import CutlassLib
    os.environ["QVDP_MERGER_DIAG_LIB"] = os.path.abspath(path)
    # the package library's C interface (a library built before its current version is reported as not loadable)
    lib = CutlassLib(os.path.basename(path), "QVDP_MERGER_DIAG_LIB", "the diagnostics library",
                     {k: mg._LIB.symbols[k] for k in ("qvdp_merger_abi", "qvdp_fc1_gelu", "qvdp_fc1_gelu_workspace")},
                     variants)
    why = lib.unavailable_reason()
    if why:
        raise SystemExit(f"--extra-lib: {why}")
    plans = {}
    return (lambda x, w, c, out, v, sw, ra: mg._launch(lib, plans, "qvdp_fc1_gelu", v, x, w, out,
                                                        (None, None, None, c), (), sw, ra))


EXTRA = None  # (launch, variants) of --extra-lib


def fc1_systems(M, N, K, variants, swizzles, rasters, g):
    x, w, b, c, out = operands(M, N, K, g)
    fns = {"cuBLAS mm": lambda: torch.mm(x, w.t(), out=out),
           "cuBLAS addmm (bias)": lambda: torch.addmm(b, x, w.t(), out=out),
           "cuBLASLt addmm bias+GELU(tanh)": lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True),
           "addmm + aten.gelu_ (cublas path)": lambda: torch.ops.aten.gelu_(torch.addmm(b, x, w.t(), out=out))}
    for v in variants:
        for sw in swizzles:
            for ra in rasters:
                fns[f"CUTLASS v{v} sw{sw} raster{ra}"] = (
                    lambda v=v, sw=sw, ra=ra: mg.fc1_gelu(x, w, c=c, out=out, variant=v, swizzle=sw, raster=ra))
    if EXTRA is not None:
        launch, extra = EXTRA
        for v in extra:
            fns[f"extra v{v}"] = lambda v=v: launch(x, w, c, out, v, swizzles[0], rasters[0])
    return fns, (x, w, c, out)


def fc2_systems(M, N, K, variants, swizzles, rasters, g):
    x, w, b, c, out = operands(M, N, K, g)
    fns = {"cuBLAS addmm (bias)": lambda: torch.addmm(b, x, w.t(), out=out),
           "cuBLAS addmm (bias), fresh out": lambda: torch.addmm(b, x, w.t())}
    for v in variants:
        for sw in swizzles:
            for ra in rasters:
                fns[f"CUTLASS linear v{v} sw{sw} raster{ra}"] = (
                    lambda v=v, sw=sw, ra=ra: mg.linear(x, w, c, out=out, variant=v, swizzle=sw, raster=ra))
    return fns, (x, w, c, out)


def clocks_under_load(fn, seconds=1.0):
    """(median SM clock MHz, median board power W) from nvidia-smi while fn runs back to back for `seconds`."""
    samples, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            r = subprocess.run(["nvidia-smi", "-i", str(torch.cuda.current_device()), "--query-gpu=clocks.sm,power.draw",
                                "--format=csv,noheader,nounits"], capture_output=True, text=True)
            try:
                mhz, watts = (float(v) for v in r.stdout.strip().split(","))
                samples.append((mhz, watts))
            except ValueError:
                pass
            time.sleep(0.05)

    for _ in range(20):  # reach steady state first
        fn()
    torch.cuda.synchronize()
    th = threading.Thread(target=poll)
    th.start()
    t0 = time.time()
    while time.time() - t0 < seconds:
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
    stop.set()
    th.join()
    if not samples:
        return float("nan"), float("nan")
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def kernel_names(fn):
    """The CUDA kernels one call of fn launches (torch profiler), e.g. cuBLAS's choice for a shape."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fc2", action="store_true", help="time fc2 (bias, no activation) instead of fc1")
    ap.add_argument("--m", type=int, nargs="+", default=[3520, 14080])
    ap.add_argument("--nk", type=int, nargs="+", default=[4608, 4096], help="fc1: N = K")
    ap.add_argument("--kn", nargs="+", default=["4608:2048", "4608:4096", "4608:5120", "4096:2048", "4096:2560"],
                    help="fc2: K:N")
    ap.add_argument("--variants", type=int, nargs="+", default=None, help="default: every compiled one")
    ap.add_argument("--rasters", type=int, nargs="+", default=[0], help="0 heuristic, 1 along M, 2 along N")
    ap.add_argument("--swizzles", type=int, nargs="+", default=[1])
    ap.add_argument("--clocks", nargs="*", default=None,
                    help="also report the SM clock and board power under a 1 s loop of the systems whose names "
                         "contain one of these strings (no strings: every system)")
    ap.add_argument("--names", action="store_true", help="also print the kernels cuBLAS runs for each shape")
    ap.add_argument("--extra-lib", default=None, help="a diagnostics library (scripts/build_merger_gemm.py "
                    "--variants ... --out PATH) whose --extra-variants are timed as fc1 kernels too")
    ap.add_argument("--extra-variants", type=int, nargs="*", default=[])
    ap.add_argument("--extra-identity", type=int, nargs="*", default=[50],
                    help="extra variants whose activation is Identity (checked against x @ w.T + c)")
    a = ap.parse_args()
    global EXTRA
    if a.extra_lib:
        EXTRA = (extra_library(a.extra_lib, a.extra_variants), a.extra_variants)
    why = mg.unavailable_reason()
    print(torch.cuda.get_device_name(), "CUTLASS:", why or "available")
    pool = mg.LINEAR_VARIANTS if a.fc2 else {**mg.VARIANTS, **mg.DIAG_VARIANTS}
    variants = [] if why else (a.variants if a.variants is not None else sorted(pool))
    kns = [tuple(int(v) for v in s.split(":")) for s in a.kn] if a.fc2 else [(nk, nk) for nk in a.nk]
    for K, N in kns:
        for M in a.m:
            g = torch.Generator(device="cuda").manual_seed(0)
            fns, (x, w, c, out) = (fc2_systems if a.fc2 else fc1_systems)(M, N, K, variants, a.swizzles, a.rasters, g)
            if not a.fc2:  # every fused fc1 kernel checked once against fp32 GELU(x @ w.T + c) (Plain ones: D = acc)
                pre = x.float() @ w.float().t()
                for k, f in fns.items():
                    if k.startswith(("CUTLASS", "extra")):
                        out.fill_(float("nan"))  # poisoned: a kernel writing nothing cannot pass on another's output
                        plain = k.startswith("CUTLASS") and k.split()[1] in {f"v{v}" for v in mg.DIAG_VARIANTS}
                        ident = k.startswith("extra") and k.split()[1] in {f"v{v}" for v in a.extra_identity}
                        ref = pre if plain else pre + c if ident else torch.nn.functional.gelu(pre + c)
                        got = f().float()
                        err = ((got - ref).norm() / ref.norm()).item()
                        if not err < 1e-2:
                            print(f"M={M} N={N} K={K} {k}: WRONG, rel err {err:.2e}", flush=True)
            best = {k: float("inf") for k in fns}
            for _ in range(5):
                for k, f in fns.items():
                    f()
                    best[k] = min(best[k], event_ms(f, inner=20))
            fl = 2.0 * M * N * K
            if a.names:
                for k in [k for k in fns if k.startswith("cuBLAS")]:
                    print(f"M={M} N={N} K={K} {k}: {', '.join(kernel_names(fns[k]))}", flush=True)
            for k, t in best.items():
                extra = ""
                if a.clocks is not None and (not a.clocks or any(c in k for c in a.clocks)):
                    mhz, watts = clocks_under_load(fns[k])
                    extra = f"  {mhz:6.0f} MHz {watts:6.0f} W"
                print(f"M={M} N={N} K={K} {k:42s} {t * 1e3:8.1f} us {fl / t / 1e9:7.1f} TFLOP/s{extra}", flush=True)


if __name__ == "__main__":
    main()
