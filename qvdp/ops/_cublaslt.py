"""cuBLASLt through ctypes: out[M, N] = x[M, K] @ w[N, K]^T + bias[N] (bf16 / fp16, fp32 accumulate) with a chosen
algorithm from cuBLASLt's heuristic list, so that the merger's GEMMs can be timed over cuBLASLt's candidates instead
of the one torch.addmm takes (its first).

No compiled code: libcublasLt is the one torch's CUDA build loads (nvidia-cublas wheel). Row-major operands map to
cuBLASLt's column-major form as D^T[N, M] = op(W)[N, K] x^T: A = w as a K x N column-major matrix, transposed; B = x as
K x M, not transposed; D as N x M (ld N); the bias is the per-row (N) vector of D^T, i.e. CUBLASLT_EPILOGUE_BIAS.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os

import torch

_COMPUTE_32F = 68
_R_32F, _R_16F, _R_16BF = 0, 2, 14
_DESC_TRANSA, _DESC_TRANSB, _DESC_EPILOGUE, _DESC_BIAS_POINTER = 3, 4, 7, 8
_EPILOGUE_DEFAULT, _EPILOGUE_BIAS = 1, 4
_PREF_MAX_WORKSPACE = 1
_LABELS = {"tile": "t", "custom": "c", "stages": "s", "splitk": "k", "reduction": "r", "swizzle": "w"}
_CONFIG = {"algo_id": 0, "tile": 1, "splitk": 2, "reduction": 3, "swizzle": 4, "custom": 5, "stages": 6,
           "inner": 7, "cluster": 8}


class _Algo(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64 * 8)]


class _Result(ctypes.Structure):
    _fields_ = [("algo", _Algo), ("workspace", ctypes.c_size_t), ("state", ctypes.c_int),
                ("waves", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


@functools.lru_cache(None)
def _lib():
    torch.cuda.init()
    lib = None
    for n in ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"]:
        try:
            lib = ctypes.CDLL(n)
            break
        except OSError:
            pass
    if lib is None:
        import site
        for p in [p for d in site.getsitepackages()
                  for p in sorted(glob.glob(os.path.join(d, "nvidia", "*", "lib", "libcublasLt.so*")))]:
            try:
                lib = ctypes.CDLL(p)
                break
            except OSError:
                pass
    if lib is None:
        raise RuntimeError("libcublasLt not found (torch's CUDA build ships it in the nvidia-cublas wheel)")
    P, I, S = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    sigs = {"cublasLtCreate": [P],
            "cublasLtMatmulDescCreate": [P, I, I],
            "cublasLtMatmulDescSetAttribute": [P, I, P, S],
            "cublasLtMatmulDescDestroy": [P],
            "cublasLtMatrixLayoutDestroy": [P],
            "cublasLtMatrixLayoutCreate": [P, I, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int64],
            "cublasLtMatmulPreferenceCreate": [P],
            "cublasLtMatmulPreferenceSetAttribute": [P, I, P, S],
            "cublasLtMatmulPreferenceDestroy": [P],
            "cublasLtMatmulAlgoGetHeuristic": [P, P, P, P, P, P, P, I, P, P],
            "cublasLtMatmulAlgoConfigGetAttribute": [P, I, P, S, P],
            "cublasLtMatmul": [P, P, P, P, P, P, P, P, P, P, P, P, P, P, S, P]}
    for name, args in sigs.items():
        f = getattr(lib, name)
        f.argtypes, f.restype = args, ctypes.c_int
    return lib


def _check(st, what):
    if st != 0:
        raise RuntimeError(f"cuBLASLt {what} failed with status {st}")


@functools.lru_cache(None)
def _handle(device: int):
    h = ctypes.c_void_p()
    with torch.cuda.device(device):
        _check(_lib().cublasLtCreate(ctypes.byref(h)), "cublasLtCreate")
    return h


def _set(fn, obj, attr, value):
    _check(fn(obj, attr, ctypes.byref(value), ctypes.sizeof(value)), f"set attribute {attr}")


def enabled() -> bool:
    """QVDP_CUBLASLT=1 adds cuBLASLt's candidates to the merger's tuning (off by default: see patch_merger.LT_PREFIX)."""
    return os.environ.get("QVDP_CUBLASLT", "0") == "1"


# buffers are used as cuBLASLt's heuristic assumes by default (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*: 256 bytes)
ALIGN = 256


class LtGemm:
    """One GEMM shape (M, N, K, dtype, bias or not) with its descriptors and cuBLASLt's heuristic candidates.

    names: one per candidate, from its configuration ("cublaslt t<tile>.c<custom>.s<stages>.k<split-K>.r.w"), in the
    heuristic's order (the first is what a plain heuristic call runs); run(name, x, w, bias, out): out = x @ w^T
    (+ bias) by that candidate, or None where it cannot run this call (name not among this shape's candidates,
    operands not contiguous, not ALIGN-aligned or on another device, bias of another dtype): the caller then takes
    torch.addmm.
    One workspace per object (a few bytes here: the candidates' tile counters), so one object must not run on two
    streams at once."""

    def __init__(self, M: int, N: int, K: int, dtype: torch.dtype, bias: bool, device: int = 0,
                 count: int = 16, max_workspace: int = 32 << 20):
        lib = _lib()
        self.M, self.N, self.K, self.dtype, self.bias, self.device = M, N, K, dtype, bias, device
        self.desc, self.layouts = None, []
        dt = {torch.bfloat16: _R_16BF, torch.float16: _R_16F}[dtype]
        desc = ctypes.c_void_p()
        _check(lib.cublasLtMatmulDescCreate(ctypes.byref(desc), _COMPUTE_32F, _R_32F), "MatmulDescCreate")
        self.desc = desc
        _set(lib.cublasLtMatmulDescSetAttribute, self.desc, _DESC_TRANSA, ctypes.c_int32(1))
        _set(lib.cublasLtMatmulDescSetAttribute, self.desc, _DESC_TRANSB, ctypes.c_int32(0))
        _set(lib.cublasLtMatmulDescSetAttribute, self.desc, _DESC_EPILOGUE,
             ctypes.c_int32(_EPILOGUE_BIAS if bias else _EPILOGUE_DEFAULT))
        for rows, cols, ld in ((K, N, K), (K, M, K), (N, M, N)):
            lay = ctypes.c_void_p()
            _check(lib.cublasLtMatrixLayoutCreate(ctypes.byref(lay), dt, rows, cols, ld), "MatrixLayoutCreate")
            self.layouts.append(lay)
        self.handle = _handle(device)
        probe = torch.empty(ALIGN, dtype=torch.uint8, device=f"cuda:{device}")
        pref = ctypes.c_void_p()
        _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "PreferenceCreate")
        _set(lib.cublasLtMatmulPreferenceSetAttribute, pref, _PREF_MAX_WORKSPACE, ctypes.c_uint64(max_workspace))
        if bias:  # the heuristic reads the bias pointer's alignment only
            _set(lib.cublasLtMatmulDescSetAttribute, self.desc, _DESC_BIAS_POINTER, ctypes.c_void_p(probe.data_ptr()))
        res = (_Result * count)()
        got = ctypes.c_int(0)
        A, B, D = self.layouts
        _check(lib.cublasLtMatmulAlgoGetHeuristic(self.handle, self.desc, A, B, D, D, pref, count, res,
                                                  ctypes.byref(got)), "AlgoGetHeuristic")
        lib.cublasLtMatmulPreferenceDestroy(pref)
        self.results = [res[i] for i in range(got.value) if res[i].state == 0]
        self.names, self._by_name = [], {}
        for i, r in enumerate(self.results):
            d = self.describe(i)
            name = "cublaslt " + ".".join(f"{c}{d[k]}" for k, c in _LABELS.items() if d[k] is not None)
            while name in self._by_name:
                name += "'"
            self.names.append(name)
            self._by_name[name] = i
        need = max([r.workspace for r in self.results], default=0)
        self.ws = torch.empty(max(need, ALIGN), dtype=torch.uint8, device=f"cuda:{device}")
        self.alpha, self.beta = ctypes.c_float(1.0), ctypes.c_float(0.0)

    def __del__(self):  # the descriptors (an object evicted from _gemm's cache); nothing at interpreter exit
        try:
            lib = _lib()
            for lay in self.layouts:
                lib.cublasLtMatrixLayoutDestroy(lay)
            if self.desc is not None:
                lib.cublasLtMatmulDescDestroy(self.desc)
        except Exception:
            pass

    def describe(self, i: int) -> dict:
        lib, r = _lib(), self.results[i]
        out = {}
        for k, a in _CONFIG.items():
            v = ctypes.c_uint16(0) if k in ("inner", "cluster") else ctypes.c_int32(0)  # (their C types)
            n = ctypes.c_size_t(0)
            st = lib.cublasLtMatmulAlgoConfigGetAttribute(ctypes.byref(r.algo), a, ctypes.byref(v), ctypes.sizeof(v),
                                                          ctypes.byref(n))
            out[k] = v.value if st == 0 else None
        out["workspace"] = r.workspace
        out["waves"] = round(r.waves, 3)
        return out

    def run_index(self, x: torch.Tensor, w: torch.Tensor, bias, out: torch.Tensor, i: int):
        """out = x @ w^T (+ bias) by candidate i; the caller has checked the operands (see runs())."""
        lib = _lib()
        if self.bias:
            _set(lib.cublasLtMatmulDescSetAttribute, self.desc, _DESC_BIAS_POINTER, ctypes.c_void_p(bias.data_ptr()))
        A, B, D = self.layouts
        r = self.results[i]
        _check(lib.cublasLtMatmul(self.handle, self.desc, ctypes.byref(self.alpha), w.data_ptr(), A, x.data_ptr(), B,
                                  ctypes.byref(self.beta), out.data_ptr(), D, out.data_ptr(), D, ctypes.byref(r.algo),
                                  self.ws.data_ptr(), r.workspace, torch.cuda.current_stream().cuda_stream), "Matmul")
        return out

    def runs(self, x, w, bias, out) -> bool:
        """These operands are ones this object's candidates take: shapes, dtype, this object's device, contiguous
        rows, ALIGN-aligned."""
        ts = (x, w, out) + ((bias,) if self.bias else ())
        return (bias is not None) == self.bias and x.shape == (self.M, self.K) and w.shape == (self.N, self.K) \
            and out.shape == (self.M, self.N) and all(
                t.is_cuda and t.get_device() == self.device and t.dtype == self.dtype and t.is_contiguous()
                and t.data_ptr() % ALIGN == 0 for t in ts)

    def run(self, name: str, x, w, bias=None, out=None):
        i = self._by_name.get(name)
        if i is None:
            return None
        if out is None:
            out = torch.empty(self.M, self.N, dtype=self.dtype, device=x.device)
        if not self.runs(x, w, bias, out):
            return None
        if self.device != torch.cuda.current_device():
            with torch.cuda.device(self.device):
                return self.run_index(x, w, bias, out, i)
        return self.run_index(x, w, bias, out, i)


@functools.lru_cache(maxsize=1024)
def _gemm(device: int, M: int, N: int, K: int, dtype: torch.dtype, bias: bool):
    try:
        with torch.cuda.device(device):
            return LtGemm(M, N, K, dtype, bias, device)
    except (OSError, RuntimeError, AttributeError):  # no libcublasLt, or it refused the shape
        return None


def gemm_for(device: torch.device, M: int, N: int, K: int, dtype: torch.dtype, bias: bool) -> "LtGemm | None":
    """The LtGemm for [M, K] @ [N, K]^T (+ bias) in dtype on device (kept per shape), or None where cuBLASLt's
    candidates do not apply: not CUDA, not fp16 / bf16, an empty dimension, QVDP_CUBLASLT not 1, or the library or its
    heuristic unavailable."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16) or min(M, N, K) <= 0 or not enabled():
        return None
    return _gemm(device.index if device.index is not None else torch.cuda.current_device(), M, N, K, dtype, bias)
