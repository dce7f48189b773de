"""Build the opt-in CUTLASS kernels, one object per kernel configuration, each library linked against the
shared CUDA runtime torch already loads:
  qvdp/_merger_gemm.so  the merger's fc1 (csrc/merger_gemm.cu, QVDP_MERGER_VARIANT 0-7, 11-15, 19, 21, 22, 43, 45,
                        70, 72, 73);
  qvdp/_merger_fold.so  the merger's fc1 with the per-patch norm folded into its mainloop (merger_gemm.cu,
                        QVDP_MERGER_VARIANT 30);
  qvdp/_qkv_rope_gemm.so  the tower's qkv GEMM with RoPE in its epilogue (csrc/qkv_rope_gemm.cu,
                          QVDP_QKV_VARIANT 0-2).

    python scripts/build_merger_gemm.py [--jobs N] [--only merger|fold|qkv]
    python scripts/build_merger_gemm.py --variants 50 52 [--out qvdp/_merger_diag.so]
                        a diagnostics library of just these merger_gemm.cu configurations (for
                        benchmarks/diag_merger_gemm.py --extra-lib; the package never loads it)

Needs nvcc with sm_90a and CUTLASS 3.x/4.x headers: QVDP_CUTLASS_DIR=<cutlass checkout> (include/ and
tools/util/include/), or `pip install nvidia-cutlass` (its cutlass_library package ships both). About a
minute per configuration per core. setup.py runs it when QVDP_BUILD_CUTLASS=1.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = (*range(8), 11, 12, 13, 14, 15, 19, 21, 22, 43, 45, 70, 72, 73)
QKV_VARIANTS = range(3)
FOLD_VARIANTS = (30,)


def cutlass_includes():
    roots = []
    if os.environ.get("QVDP_CUTLASS_DIR"):
        roots.append(os.environ["QVDP_CUTLASS_DIR"])
    spec = importlib.util.find_spec("cutlass_library")
    if spec and spec.origin:
        roots.append(os.path.join(os.path.dirname(spec.origin), "source"))
    for r in roots:
        inc, util = os.path.join(r, "include"), os.path.join(r, "tools", "util", "include")
        if os.path.exists(os.path.join(inc, "cutlass", "cutlass.h")) and os.path.isdir(util):
            return [inc, util]
    return None


def nvcc():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    cand = os.path.join(home, "bin", "nvcc")
    return cand if os.path.exists(cand) else shutil.which("nvcc")


def build(jobs: int = 2, out: str | None = None) -> str:
    """qvdp/_merger_gemm.so"""
    return _build_lib("merger_gemm.cu", "QVDP_MERGER_VARIANT", VARIANTS,
                      out or os.path.join(ROOT, "qvdp", "_merger_gemm.so"), jobs)


def build_fold(jobs: int = 2, out: str | None = None) -> str:
    """qvdp/_merger_fold.so: the merger's fc1 with the per-patch norm folded into its mainloop (csrc/merger_gemm.cu,
    QVDP_MERGER_VARIANT 30, csrc/qvdp_fold_mainloop.h), its own library so it builds without the others"""
    return _build_lib("merger_gemm.cu", "QVDP_MERGER_VARIANT", FOLD_VARIANTS,
                      out or os.path.join(ROOT, "qvdp", "_merger_fold.so"), jobs)


def build_diag(variants, jobs: int = 2, out: str | None = None) -> str:
    """A library of just these merger_gemm.cu configurations (default qvdp/_merger_diag.so): a new configuration
    timed without rebuilding every other one."""
    return _build_lib("merger_gemm.cu", "QVDP_MERGER_VARIANT", tuple(variants),
                      out or os.path.join(ROOT, "qvdp", "_merger_diag.so"), jobs)


def build_qkv(jobs: int = 2, out: str | None = None) -> str:
    """qvdp/_qkv_rope_gemm.so"""
    return _build_lib("qkv_rope_gemm.cu", "QVDP_QKV_VARIANT", QKV_VARIANTS,
                      out or os.path.join(ROOT, "qvdp", "_qkv_rope_gemm.so"), jobs)


def _build_lib(source: str, macro: str, variants, out: str, jobs: int) -> str:
    inc = cutlass_includes()
    if inc is None:
        raise RuntimeError("CUTLASS headers not found: set QVDP_CUTLASS_DIR or pip install nvidia-cutlass")
    cc = nvcc()
    if cc is None:
        raise RuntimeError("nvcc not found")
    src = os.path.join(ROOT, "csrc", source)
    tmp = tempfile.mkdtemp(prefix="qvdp_mg_")
    flags = ["-O3", "-DNDEBUG", "-std=c++17", "-arch=sm_90a", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC"]
    flags += [f"-I{d}" for d in inc]

    def one(v):
        obj = os.path.join(tmp, f"v{v}.o")
        r = subprocess.run([cc, *flags, "-c", f"-D{macro}={v}", src, "-o", obj], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"nvcc failed for {source} configuration {v}:\n{r.stderr[-4000:]}")
        return obj

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        objs = list(ex.map(one, variants))
    subprocess.run([cc, "-shared", "-cudart", "shared", "-arch=sm_90a", *objs, "-o", out], check=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--only", choices=["merger", "qkv", "fold"], default=None)
    ap.add_argument("--variants", type=int, nargs="+", default=None,
                    help="build only these merger_gemm.cu configurations, into --out (a diagnostics library)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.variants and a.only:
        ap.error("--variants builds a diagnostics library on its own: leave out --only")
    try:
        if a.variants:
            print("built", build_diag(a.variants, a.jobs, a.out))
            return
        if a.only in (None, "merger"):
            print("built", build(a.jobs))
        if a.only in (None, "fold"):
            print("built", build_fold(a.jobs))
        if a.only in (None, "qkv"):
            print("built", build_qkv(a.jobs))
    except RuntimeError as e:
        print("qvdp: CUTLASS kernels not built:", e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
