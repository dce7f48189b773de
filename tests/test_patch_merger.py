"""qvdp.patch_merger vs the fp32/fp64 torch reference: three norm variants, ragged row counts."""
import pytest
import torch

from qvdp.ops import _triton_utils
from qvdp.ops.patch_merger import patch_merger
from qvdp.reference import patch_merger_reference

TOL = {torch.float32: 1e-3, torch.float16: 3e-3, torch.bfloat16: 1e-2}
VARIANTS = [("layernorm", False), ("layernorm", True), ("rmsnorm", False)]


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make(n, H, out, norm, post, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    K = 4 * H
    nw = K if post else H
    # non-zero mean; each patch scaled by its own factor (0.05-20x), so the four patch norms of a merged
    # row differ widely (the TMA kernel rescales one accumulator by rstd_p / rstd_p+1 between patches)
    x = (torch.randn(n, H, generator=g) * 2 + 0.5) * torch.exp(torch.randn(n, 1, generator=g).clamp(-3, 3))
    x = x.to(device=device, dtype=dtype)
    p = dict(norm_weight=(1 + 0.1 * torch.randn(nw, generator=g)),
             norm_bias=(0.1 * torch.randn(nw, generator=g)) if norm == "layernorm" else None,
             fc1_weight=torch.randn(K, K, generator=g) / K ** 0.5, fc1_bias=0.1 * torch.randn(K, generator=g),
             fc2_weight=torch.randn(out, K, generator=g) / K ** 0.5, fc2_bias=0.1 * torch.randn(out, generator=g))
    p = {k: (v.to(device=device, dtype=dtype) if v is not None else None) for k, v in p.items()}
    return x, p


def _check(n, H, out, norm, post, dtype, device, backend):
    x, p = make(n, H, out, norm, post, dtype, device)
    got = patch_merger(x, **p, postshuffle_norm=post, norm=norm, backend=backend)
    ref = patch_merger_reference(x.cpu(), **{k: (v.cpu() if v is not None else None) for k, v in p.items()},
                                 postshuffle_norm=post, norm=norm, dtype=torch.float64)
    assert got.shape == (n // 4, out) and got.dtype == dtype
    assert torch.isfinite(got).all()
    e = rel(got.cpu(), ref)
    assert e < TOL[dtype], f"{norm} post={post} {dtype}: rel err {e:.2e}"


@pytest.mark.parametrize("norm,post", VARIANTS)
def test_torch_backend(norm, post):
    _check(4 * 37, 64, 48, norm, post, torch.float32, "cpu", "torch")


@pytest.mark.skipif(not (_triton_utils.interpreter_on() or torch.cuda.is_available()), reason="needs the interpreter")
@pytest.mark.parametrize("norm,post", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("variant", ["tma", "tmap", "fold", "load"])
def test_triton_interpreter(norm, post, dtype, variant, monkeypatch):
    monkeypatch.setenv("QVDP_MERGER_VARIANT", variant)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    _check(4 * 37, 64, 48, norm, post, dtype, dev, "triton")  # 37 merged rows: not a multiple of the tile


@pytest.mark.gpu
@pytest.mark.parametrize("norm,post", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,H,out", [(4 * 3520, 1152, 4096), (4 * 1001, 1024, 2048), (4, 1152, 2048)])
@pytest.mark.parametrize("backend", ["triton", "cublas"])
def test_gpu(norm, post, dtype, n, H, out, backend):
    _check(n, H, out, norm, post, dtype, "cuda", backend)


@pytest.mark.skipif(not (_triton_utils.interpreter_on() or torch.cuda.is_available()), reason="needs the interpreter")
@pytest.mark.parametrize("norm,post", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cublas_backend(norm, post, dtype):
    """qvdp's one-pass norm + cuBLAS GEMMs + GELU in place (interpreter on CPU; any GPU)"""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    _check(4 * 37, 64, 48, norm, post, dtype, dev, "cublas")


def test_auto_backend_choice(monkeypatch):
    from qvdp.ops import patch_merger as pm
    x = torch.randn(8, 16)
    monkeypatch.delenv("QVDP_MERGER_AUTO", raising=False)
    assert pm.auto_backend(x, 64, 64) == "torch"  # CPU: the torch path
    for forced in ("cutlass", "tuned"):
        monkeypatch.setenv("QVDP_MERGER_AUTO", forced)
        assert pm.auto_backend(x, 64, 64) == "torch"  # the CUTLASS paths cannot run on CPU: falls back
    monkeypatch.setenv("QVDP_MERGER_AUTO", "torch")
    assert pm.auto_backend(x, 64, 64) == "torch"
    monkeypatch.delenv("QVDP_MERGER_AUTO")
    monkeypatch.setenv("QVDP_TUNE", "0")
    assert pm.auto_backend(x, 64, 64) == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        patch_merger(torch.randn(8, 16), torch.ones(16), torch.zeros(16), torch.ones(64, 64), None,
                     torch.ones(8, 64), None, backend="fastest")


def test_tune_pick(monkeypatch):
    """ops._tune: the fastest candidate is chosen once per key and kept; QVDP_TUNE=0 and a single candidate
    give the default without timing"""
    from qvdp.ops import _tune
    monkeypatch.delenv("QVDP_TUNE_CACHE", raising=False)
    _tune.clear()
    cost = {"a": 3.0, "b": 1.0, "c": 2.0}
    calls = []
    monkeypatch.setattr(_tune, "event_ms", lambda fn, reps: (calls.append(fn()), cost[calls[-1]])[1])
    cands = {k: (lambda k=k: k) for k in cost}
    assert _tune.pick("k1", cands, "a") == "b"
    assert _tune.timings("k1") == cost
    n = len(calls)
    cost["b"] = 9.0
    assert _tune.pick("k1", cands, "a") == "b" and len(calls) == n  # cached: not timed again
    monkeypatch.setenv("QVDP_TUNE", "0")
    assert _tune.pick("k2", cands, "c") == "c" and _tune.timings("k2") == {}
    monkeypatch.delenv("QVDP_TUNE")
    assert _tune.pick("k3", {"only": lambda: 0}, "only") == "only"
    _tune.clear()


@pytest.mark.gpu
def test_gpu_tune_event_ms_head(monkeypatch):
    """ops._tune.event_ms counts GPU time, not the host's: with the busy-wait queued first, calls that spend
    0.2 ms on the host each but little on the GPU time as little; without it (QVDP_TUNE_HEAD=0) the host time
    shows; a bad QVDP_TUNE_HEAD is an error naming it"""
    import time
    from qvdp.ops import _tune
    x = torch.zeros(1024, device="cuda")
    fn = lambda: (time.sleep(2e-4), x.add_(1))
    fn()
    monkeypatch.setenv("QVDP_TUNE_HEAD", "8000000")  # ~4 ms at Hopper clocks: longer than 3 calls' host time
    with_head = min(_tune.event_ms(fn, 3) for _ in range(3))
    monkeypatch.setenv("QVDP_TUNE_HEAD", "0")
    without = min(_tune.event_ms(fn, 3) for _ in range(3))
    assert with_head < 0.05 and without > 0.15, (with_head, without)
    monkeypatch.setenv("QVDP_TUNE_HEAD", "lots")
    with pytest.raises(ValueError, match="QVDP_TUNE_HEAD"):
        _tune.event_ms(fn, 1)


def test_tune_near():
    from qvdp.ops import _tune
    _tune.clear()
    _tune._TIMES["k"] = {"a": 1.0, "b": 1.07, "c": 1.2, "d": 1.05, "e": 1.01}
    assert _tune.near("k", 0.08) == ["a", "e", "d"]
    assert _tune.near("k", 0.08, most=5) == ["a", "e", "d", "b"]
    assert _tune.near("k", 0.0) == ["a"] and _tune.near("unknown", 0.5) == []
    _tune.clear()


def test_tune_rows():
    """row buckets: every 256 rows up to 2048, then 4 per doubling; each bucket's edge covers its rows"""
    from qvdp.ops.patch_merger import tune_rows
    got = [tune_rows(m) for m in range(1, 70000)]
    assert all(b >= m for m, b in zip(range(1, 70000), got)) and got == sorted(got)
    assert tune_rows(1) == 256 and tune_rows(2048) == 2048 and tune_rows(3520) == tune_rows(3584) == 3584
    assert len({b for b in got if 4096 < b <= 8192}) == 4 and len({b for b in got if 32768 < b <= 65536}) == 4


def test_cutlass_lib_known_device(monkeypatch):
    """CutlassLib.unavailable_reason answers a device it has seen without asking torch again; other devices, and
    devices given as an index or a string, take the full path"""
    from qvdp.ops._cutlass_lib import CutlassLib
    lib = CutlassLib("_none.so", "QVDP_NONE_LIB", "a test library", {}, ())
    lib._lib = object()
    lib._why = {0: None, 1: "built for sm_90a, this is another GPU"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert lib.unavailable_reason(torch.device("cuda", 0)) is None
    assert lib.unavailable_reason(torch.device("cuda", 1)) == "built for sm_90a, this is another GPU"
    assert lib.available(torch.device("cuda", 0)) and not lib.available(torch.device("cuda", 1))
    for other in (torch.device("cuda", 2), torch.device("cuda"), 0, "cuda:0", None):
        assert lib.unavailable_reason(other) == "no CUDA device"


def test_merger_gemm_launch_arguments(monkeypatch):
    """merger_gemm.launch / launch_fold hand the C functions their arguments in the order of their ctypes
    signatures (x, w, out, M, N, K, the vectors as pointers or None, launch_fold's chunk count, workspace, SMs,
    swizzle, raster, the PDL flag, stream); an empty problem launches nothing; a failing code is an error naming the
    kernel"""
    from qvdp.ops import merger_gemm
    calls, plans = [], []

    def fake_plan(lib, plans_, name, variant, x, dev, M, N, K, swizzle, raster):
        plans.append((lib, name, variant))
        return (lambda *a: calls.append(a) or rc[0]), 132, None
    rc = [0]
    monkeypatch.setattr(merger_gemm, "_plan", fake_plan)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda dev: 77, raising=False)
    monkeypatch.setattr(torch.Tensor, "get_device", lambda self: 0)
    x, w = torch.randn(6, 16), torch.randn(8, 16)
    v = [torch.randn(6), None, torch.randn(8), torch.randn(8)]
    out = merger_gemm.launch(x, w, *v, None, 1, 2, 0)
    assert out.shape == (6, 8) and plans[-1][1:] == ("qvdp_fc1_gelu", 1)
    ptr = lambda t: t.data_ptr() if t is not None else None
    assert calls[-1] == (x.data_ptr(), w.data_ptr(), out.data_ptr(), 6, 8, 16, *map(ptr, v), None, 132, 2, 0,
                         int(merger_gemm.PDL), 77)
    monkeypatch.setattr(merger_gemm, "PDL", not merger_gemm.PDL)
    merger_gemm.launch(x, w, *v, out, 1, 2, 0)
    assert calls[-1][-2] == int(merger_gemm.PDL)
    c1, c2, sc = torch.randn(3, 6), torch.randn(3, 6), torch.randn(3, 8)
    out = merger_gemm.launch_fold(x, w, *v, c1, c2, sc, 5, out=out)
    assert plans[-1][1:] == ("qvdp_fc1_fold", 30)
    assert calls[-1] == (x.data_ptr(), w.data_ptr(), out.data_ptr(), 6, 8, 16, *map(ptr, v), c1.data_ptr(),
                         c2.data_ptr(), sc.data_ptr(), 5, None, 132, 1, 0, int(merger_gemm.PDL), 77)
    n = len(calls)
    assert merger_gemm.launch(x[:0], w, *v, None, 1).shape == (0, 8) and len(calls) == n
    rc[0] = 3
    with pytest.raises(RuntimeError, match="qvdp_fc1_fold_v30 failed"):
        merger_gemm.launch_fold(x, w, *v, c1, c2, sc, 5)


def test_cutlass_variant_lists_agree():
    """The configurations scripts/build_merger_gemm.py compiles are exactly those qvdp.ops.merger_gemm loads (a
    library lacking one is reported as not loadable), each has its branch in csrc/merger_gemm.cu, the "tuned"
    path's candidates are among them, and the diagnostics library's configurations (50, 52) are defined too."""
    import importlib.util
    import os
    import re
    from qvdp.ops import merger_gemm as mg, patch_merger as pm
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("_build_merger_gemm",
                                                  os.path.join(root, "scripts", "build_merger_gemm.py"))
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    loaded = set(mg.VARIANTS) | set(mg.DIAG_VARIANTS) | set(mg.LINEAR_VARIANTS)
    assert set(build.VARIANTS) == loaded
    assert set(build.FOLD_VARIANTS) == set(mg.FOLD_VARIANTS)
    with open(os.path.join(root, "csrc", "merger_gemm.cu")) as f:
        src_cu = f.read()
    branches = {int(v) for v in re.findall(r"QVDP_MERGER_VARIANT == (\d+)", src_cu)}
    assert loaded | set(mg.FOLD_VARIANTS) | {50, 52} <= branches
    # PDL: every configuration is built to wait for the previous kernel (GDC) except the stream-K ones, which
    # then launch without PDL; the exception list names exactly the configurations using the stream-K scheduler
    configs = re.findall(r"#(?:el)?if QVDP_MERGER_VARIANT == (\d+)\b(.*?)(?=#el|#endif)", src_cu, re.S)
    stream_k = {int(v) for v, body in configs if "using Config" in body and "StreamKScheduler" in body}
    no_gdc = {int(v) for v in re.findall(r"QVDP_MERGER_VARIANT == (\d+)", src_cu.split("#define QVDP_GDC 0")[0]
                                         .rsplit("#if", 1)[1])}
    assert stream_k == no_gdc == {7, 21, 22}, (stream_k, no_gdc)
    # the ctypes signatures have the C entry points' parameter counts (a mismatch would misplace the stream)
    for lib in (mg._LIB, mg._FOLD_LIB):
        for name, (_, argtypes) in lib.symbols.items():
            params = re.search(r"QVDP_SYM\(%s\)\(([^)]*)\)" % name, src_cu)
            assert params, name
            n = 0 if not params.group(1).strip() else len(params.group(1).split(","))
            assert n == len(argtypes), (name, n, len(argtypes))
    assert set(pm.TUNE_FC1) <= set(mg.VARIANTS) and set(pm.TUNE_FC2) <= set(mg.LINEAR_VARIANTS)
    # the swapped configurations (bias only) are exactly the built ones declared through the Swapped alias
    swapped = {int(v) for v, body in configs if "using Config = Swapped<" in body}
    assert mg.BIAS_ONLY == swapped & loaded, (mg.BIAS_ONLY, swapped)


def test_bias_only_variants_refuse_vectors():
    """the swapped configurations' epilogue takes the bias only: rstd / negm / s are a ValueError naming them,
    raised before the library is asked for anything (here on the CPU)"""
    from qvdp.ops import merger_gemm as mg
    x, w = torch.ones(4, 8, dtype=torch.bfloat16), torch.ones(8, 8, dtype=torch.bfloat16)
    for v in sorted(mg.BIAS_ONLY & set(mg.VARIANTS)):
        for name in ("rstd", "negm", "s"):
            with pytest.raises(ValueError, match="takes the bias c only: rstd, negm and s must be None"):
                mg.fc1_gelu(x, w, variant=v, **{name: torch.ones(4 if name != "s" else 8)})


def test_tune_pair_reps(monkeypatch):
    """the pair round's calls per sample: enough for TUNE_PAIR_SAMPLE_MS by the stages' fastest times, 3 to
    TUNE_PAIR_REPS_MAX; QVDP_TUNE_PAIR_REPS fixes it, a bad value is a ValueError naming the variable"""
    from qvdp.ops import _tune, patch_merger as pm
    monkeypatch.delenv("QVDP_TUNE_PAIR_REPS", raising=False)
    k1, k2 = ("test.fc1", 1), ("test.fc2", 1)
    monkeypatch.setitem(_tune._TIMES, k1, {"cublas": 0.25, "cutlass v0": 0.24})
    monkeypatch.setitem(_tune._TIMES, k2, {"cublas": 0.10})
    assert pm._tune_pair_reps(k1, k2) == 9  # 3 ms / 0.34 ms per call
    monkeypatch.setitem(_tune._TIMES, k1, {"cublas": 1.1})
    monkeypatch.setitem(_tune._TIMES, k2, {"cublas": 0.4})
    assert pm._tune_pair_reps(k1, k2) == 3  # long calls: the floor of 3
    monkeypatch.setitem(_tune._TIMES, k1, {"cublas": 0.01})
    assert pm._tune_pair_reps(k1, k2) == 8  # the fastest of each stage: 0.01 + 0.4 ms per call
    assert pm._tune_pair_reps(("test.none",), ("test.none2",)) == pm.TUNE_PAIR_REPS_MAX  # no timings
    monkeypatch.setitem(_tune._TIMES, k2, {"cublas": 0.0001})
    assert pm._tune_pair_reps(k1, k2) == pm.TUNE_PAIR_REPS_MAX  # short calls: the cap
    assert pm._pair_reps_fixed() is None
    monkeypatch.setenv("QVDP_TUNE_PAIR_REPS", "4")
    assert pm._pair_reps_fixed() == 4 and pm._tune_pair_reps(k1, k2, pm._pair_reps_fixed()) == 4
    for bad in ("0", "x", "2.5"):
        monkeypatch.setenv("QVDP_TUNE_PAIR_REPS", bad)
        with pytest.raises(ValueError, match="QVDP_TUNE_PAIR_REPS"):
            pm._pair_reps_fixed()


def test_tuned_keys_and_names():
    """the "tuned" path's kept keys and candidate names are those tune_keys / TUNE_FC1 / TUNE_FC2 give"""
    from qvdp.ops import patch_merger as pm
    dev = torch.device("cpu")
    k1, k2, kc = pm._tuned_keys(dev, 3520, 4608, 4608, 2048, False, "layernorm")
    assert (k1, k2) == pm.tune_keys(dev, 3520, 4608, 4608, 2048, False, "layernorm")
    assert kc == pm._pair_key(k1, 2048)
    n1, n2, pairs = pm._candidate_names((0, 12), (14,), True)
    assert n1 == ("cublas", "cutlass v0", "cutlass v12") and n2 == ("cublas", "cutlass v14")
    assert "cutlass v12 + cutlass v14" in pairs and len(pairs) == 6 and None not in pairs
    assert pm._candidate_names((0,), (14,), False)[1] == ("cublas",)
    n1, n2, pairs = pm._candidate_names((0,), (14,), True, ("cublaslt t1",), ("cublaslt t2", "cublaslt t3"))
    assert n1 == ("cublas", "cublaslt t1", "cutlass v0") and n2 == ("cublas", "cublaslt t2", "cublaslt t3", "cutlass v14")
    assert "cublaslt t1 + cublaslt t3" in pairs and len(pairs) == 12
    n1, n2, pairs = pm._candidate_names((0,), (14,), True, mm=True)
    assert n1 == ("cublas", pm.MM_FORM, "cutlass v0") and n2 == ("cublas", "cutlass v14")


def test_cublaslt_names_on_cpu(monkeypatch):
    """cuBLASLt's candidates apply to CUDA fp16 / bf16 only: on CPU none, and a cuBLASLt pick (e.g. from a cache
    file) runs as torch.addmm; a stored pick is runnable where this build has it"""
    from qvdp.ops import _cublaslt
    from qvdp.ops import patch_merger as pm
    x = torch.randn(6, 8, dtype=torch.float64)
    w, b = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    assert pm._lt_names(x, 6, 5, 8, True, w.dtype) == ()
    assert _cublaslt.gemm_for(torch.device("cpu"), 6, 5, 8, torch.bfloat16, True) is None
    assert torch.equal(pm._linear_named("cublaslt t29.c5.s35.k1.r0.w0", x, w, b), torch.addmm(b, x, w.t()))
    assert torch.equal(pm._linear_named("cublas", x, w, None), x @ w.t())
    assert pm._runnable("cublas", (0,), False) and pm._runnable("cublaslt t1", (0,), False)
    assert pm._runnable("cutlass v0", (0,), True) and not pm._runnable("cutlass v0", (0,), False)
    assert not pm._runnable("cutlass v99", (0,), True) and not pm._runnable("cutlass vx", (0,), True)
    assert not pm._runnable("", (0,), True)
    assert pm._runnable(pm.MM_FORM, (0,), False, mm=True) and not pm._runnable(pm.MM_FORM, (0,), True)
    monkeypatch.delenv("QVDP_CUBLASLT", raising=False)
    assert not _cublaslt.enabled()  # opt-in
    monkeypatch.setenv("QVDP_CUBLASLT", "1")
    assert _cublaslt.enabled()
    assert pm._lt_names(x, 6, 5, 8, True, w.dtype) == ()


def test_tune_cache_file(monkeypatch, tmp_path):
    """QVDP_TUNE_CACHE: a choice is written to the file, a fresh process state reads it back without timing;
    a file from other torch / CUDA versions, or an unreadable one, is ignored"""
    from qvdp.ops import _tune
    path = tmp_path / "tune.json"
    monkeypatch.setenv("QVDP_TUNE_CACHE", str(path))
    _tune.clear()
    cost = {"a": 3.0, "b": 1.0}
    monkeypatch.setattr(_tune, "event_ms", lambda fn, reps: cost[fn()])
    cands = {k: (lambda k=k: k) for k in cost}
    key = ("merger.fc1", "NVIDIA H100 80GB HBM3 sm90", True, "layernorm", 3584, 4608, 4608)
    assert _tune.pick(key, cands, "a") == "b" and path.exists()
    _tune.clear()  # as a new process: nothing in memory

    def no_timing(fn, reps):
        raise AssertionError("timed although the cache file has the key")
    monkeypatch.setattr(_tune, "event_ms", no_timing)
    assert _tune.choice(key) == "b" and _tune.pick(key, cands, "a") == "b"
    _tune.clear()
    data = path.read_text().replace(torch.__version__, "0.0.0")
    path.write_text(data)
    assert _tune.choice(key) is None
    path.write_text("{not json")
    _tune.clear()
    assert _tune.choice(key) is None
    monkeypatch.setattr(_tune, "event_ms", lambda fn, reps: cost[fn()])
    assert _tune.pick(key, cands, "a") == "b"  # re-tuned, and the broken file replaced
    _tune.clear()
    assert _tune.choice(key) == "b"
    _tune.clear()


def test_tuned_pairs(monkeypatch):
    """"tuned" (CPU, the CUTLASS kernels faked by torch): each stage is tuned alone, then the pairs of near
    candidates as whole mergers; a pair that wins only in context is chosen, its result returned, and the
    choice kept without timing again"""
    from qvdp.ops import _tune, merger_gemm
    from qvdp.ops import patch_merger as pm
    monkeypatch.delenv("QVDP_TUNE_CACHE", raising=False)
    _tune.clear()
    trace = []
    x, p = make(4 * 6, 32, 24, "layernorm", False, torch.float32, "cpu")
    x, p = x.to(torch.float64), {k: (v.to(torch.float64) if v is not None else None) for k, v in p.items()}

    def fc1_ref(x, nw, nb, w1, b1, ms, post, norm, eps):
        y = pm._normalised(x, nw, nb, ms, post, norm, eps)
        return torch.nn.functional.gelu(torch.nn.functional.linear(y, w1, b1))

    def fake_fc1(*a, variant=None, gemm="cublas"):
        trace.append(f"v{variant}" if variant is not None else ("c1" if gemm == "cublas" else "c1mm"))
        return fc1_ref(*a)

    def fake_launch(h, w, rstd, negm, s, c, out, variant):  # merger_gemm.launch as _fc2_named calls it
        trace.append(f"l{variant}")
        return torch.nn.functional.linear(h, w, c.to(h.dtype) if c is not None else None)

    real_linear = pm._linear
    monkeypatch.setattr(pm, "_fc1_cublas", fake_fc1)
    monkeypatch.setattr(pm, "_fc1_cutlass", fake_fc1)
    monkeypatch.setattr(merger_gemm, "launch", fake_launch)
    monkeypatch.setattr(pm, "_linear", lambda h, w, b: (trace.append("c2"), real_linear(h, w, b))[1])
    monkeypatch.setattr(pm, "TUNE_FC1", (0, 1, 12, 13))
    monkeypatch.setattr(pm, "TUNE_FC2", (14, 15))
    # alone: cublas best on both stages, v0 / v12 and v14 near it; together v12 + v14 wins
    cost = {"c1": 1.0, "c1mm": 1.5, "v0": 1.05, "v1": 2.0, "v12": 1.06, "v13": 3.0, "c2": 1.0, "l14": 1.02, "l15": 3.0}

    reps_seen = []

    def timed(fn, reps):
        reps_seen.append(reps)
        trace.clear()
        fn()
        t = sum(cost[s] for s in trace)
        return t - 0.5 if trace == ["v12", "l14"] else t

    monkeypatch.setattr(_tune, "event_ms", timed)
    monkeypatch.setattr(pm, "_f32", lambda t: t)
    monkeypatch.setattr(pm, "_fc2_cutlass_ok", lambda w: True)
    args = (x, p["norm_weight"], p["norm_bias"], p["fc1_weight"], p["fc1_bias"], p["fc2_weight"], p["fc2_bias"],
            2, False, "layernorm", 1e-6)
    out = pm._patch_merger_tuned(*args)
    ref = patch_merger_reference(x, **p, postshuffle_norm=False, norm="layernorm", dtype=torch.float64)
    assert rel(out, ref) < 1e-12
    key1, key2 = pm.tune_keys(x.device, 6, 128, 128, 24, False, "layernorm")
    assert _tune.choice(key1) == "cublas" and _tune.choice(key2) == "cublas"
    assert pm.tuned_picks(x.device, 6, 128, 128, 24, False, "layernorm") == ("cutlass v12", "cutlass v14")
    trace.clear()
    out2 = pm._patch_merger_tuned(*args)
    assert trace == ["v12", "l14"] and torch.equal(out, out2)  # the pair kept, nothing timed
    monkeypatch.setenv("QVDP_TUNE_CONTEXT", "eight percent")
    with pytest.raises(ValueError, match="QVDP_TUNE_CONTEXT"):
        pm._patch_merger_tuned(*args)
    monkeypatch.delenv("QVDP_TUNE_CONTEXT")
    _tune.clear()
    trace.clear()
    monkeypatch.setenv("QVDP_TUNE_PAIR_REPS", "zero")
    with pytest.raises(ValueError, match="QVDP_TUNE_PAIR_REPS"):
        pm._patch_merger_tuned(*args)
    assert trace == []  # raised before anything ran
    monkeypatch.setenv("QVDP_TUNE_PAIR_REPS", "7")
    reps_seen.clear()
    assert rel(pm._patch_merger_tuned(*args), ref) < 1e-12
    assert reps_seen.count(7) == 6 * 5 and set(reps_seen) == {3, 7}  # 3 x 2 near pairs, 5 rounds, 7 calls each
    monkeypatch.delenv("QVDP_TUNE_PAIR_REPS")
    _tune._CHOICES[("merger.pair",) + key1[1:] + (24,)] = "cutlass v99 + cublas"  # e.g. from an older cache file
    assert rel(pm._patch_merger_tuned(*args), ref) < 1e-12  # not run: the pairs are timed again
    assert pm.tuned_picks(x.device, 6, 128, 128, 24, False, "layernorm") == ("cutlass v12", "cutlass v14")
    _tune.clear()


def test_tuned_no_pair_round(monkeypatch):
    """"tuned" where no stage has a near second: the stage picks are recorded as the pair, so later calls take
    the fast path (nothing looked up or timed again)"""
    from qvdp.ops import _tune
    from qvdp.ops import patch_merger as pm
    monkeypatch.delenv("QVDP_TUNE_CACHE", raising=False)
    _tune.clear()
    x, p = make(4 * 6, 32, 24, "layernorm", False, torch.float64, "cpu")
    trace = []
    monkeypatch.setattr(pm, "TUNE_FC1", (1,))
    monkeypatch.setattr(pm, "_fc2_cutlass_ok", lambda w: False)
    monkeypatch.setattr(pm, "_fc1_cublas", lambda *a, gemm="cublas": (trace.append("c1" if gemm == "cublas" else "mm"),
                                                                      pm._normalised(*a[:3], *a[5:]))[1])
    monkeypatch.setattr(pm, "_fc1_cutlass", lambda *a, variant: (trace.append("v1"), pm._normalised(*a[:3], *a[5:]))[1])
    monkeypatch.setattr(_tune, "event_ms", lambda fn, reps: (trace.clear(), fn(),
                                                             2.0 if "v1" in trace or "mm" in trace else 1.0)[2])
    args = (x, p["norm_weight"], p["norm_bias"], p["fc1_weight"], p["fc1_bias"], p["fc2_weight"], p["fc2_bias"],
            2, False, "layernorm", 1e-6)
    pm._patch_merger_tuned(*args)
    assert pm.tuned_picks(x.device, 6, 128, 128, 24, False, "layernorm") == ("cublas", "cublas")
    monkeypatch.setattr(_tune, "pick", lambda *a, **k: pytest.fail("the tuned shape went through pick again"))
    trace.clear()
    pm._patch_merger_tuned(*args)
    assert trace == ["c1"]
    _tune.clear()


@pytest.mark.gpu
@pytest.mark.parametrize("norm,post", VARIANTS)
def test_gpu_auto(norm, post, monkeypatch):
    """"auto" on both sides of the QVDP_TUNE=0 threshold: "tuned" where the CUTLASS library is built"""
    from qvdp.ops import patch_merger as pm
    monkeypatch.delenv("QVDP_MERGER_AUTO", raising=False)
    monkeypatch.delenv("QVDP_TUNE", raising=False)
    for m in (pm.CUTLASS_AUTO_MIN_ROWS - 1, pm.CUTLASS_AUTO_MIN_ROWS):
        x, p = make(4 * m, 1152, 2048, norm, post, torch.bfloat16, "cuda", seed=m)
        want = "tuned" if pm.cutlass_ok(x, 4608, 4608) else "cublas"
        assert pm.auto_backend(x, 4608, 4608) == want
        got = patch_merger(x, **p, postshuffle_norm=post, norm=norm)
        assert torch.equal(got, patch_merger(x, **p, postshuffle_norm=post, norm=norm, backend=want))
        # the first 64 merged rows against the fp64 reference
        ref = patch_merger_reference(x[:256].cpu(), **{k: (v.cpu() if v is not None else None) for k, v in p.items()},
                                     postshuffle_norm=post, norm=norm, dtype=torch.float64)
        assert rel(got[:64].cpu(), ref) < TOL[torch.bfloat16]
    _check(4 * 37, 1152, 2048, norm, post, torch.bfloat16, "cuda", "auto")


@pytest.mark.parametrize("kw,name", [(dict(n=6), "rows"), (dict(nw=3), "norm_weight"), (dict(fc1=5), "fc1_weight")])
def test_bad_inputs(kw, name):
    x, p = make(8, 16, 8, "layernorm", False, torch.float32, "cpu")
    if "n" in kw:
        x = x[:kw["n"]]
    if "nw" in kw:
        p["norm_weight"] = p["norm_weight"][:kw["nw"]]
    if "fc1" in kw:
        p["fc1_weight"] = p["fc1_weight"][:, :kw["fc1"]]
    with pytest.raises(ValueError, match=name):
        patch_merger(x, **p)


@pytest.mark.gpu
@pytest.mark.parametrize("norm,post", VARIANTS)
@pytest.mark.parametrize("variant", ["tma", "tmap"])
def test_gpu_tma_variants(norm, post, variant, monkeypatch):
    """one program per tile and the persistent form, bf16, a row count that is not a tile multiple"""
    monkeypatch.setenv("QVDP_MERGER_VARIANT", variant)
    _check(4 * 1001, 1152, 2048, norm, post, torch.bfloat16, "cuda", "triton")


# ---- CUTLASS fc1 (csrc/merger_gemm.cu): bf16, Hopper, the library built --------------------------------

def _cutlass_or_skip():
    from qvdp.ops import merger_gemm
    why = merger_gemm.unavailable_reason()
    if why:
        pytest.skip(why)
    return merger_gemm


@pytest.mark.gpu
@pytest.mark.parametrize("norm,post", VARIANTS)
@pytest.mark.parametrize("n,H,out", [(4 * 3520, 1152, 4096), (4 * 1001, 1024, 2048), (4, 1152, 2048),
                                     (4 * 257, 1152, 5120)])
def test_gpu_cutlass(norm, post, n, H, out):
    _cutlass_or_skip()
    _check(n, H, out, norm, post, torch.bfloat16, "cuda", "cutlass")


@pytest.mark.gpu
@pytest.mark.parametrize("M,N,K", [(3520, 4608, 4608), (1001, 2048, 4096), (1, 4096, 4608), (129, 264, 72),
                                   (300, 8, 8)])
@pytest.mark.parametrize("vectors", [True, False])
def test_gpu_fc1_gelu_variants(M, N, K, vectors):
    """every compiled kernel configuration vs an fp64 reference of GELU(rstd*(x@w.T) + negm*s + c),
    output poisoned, fresh random inputs; rows/columns that are not tile multiples"""
    mg = _cutlass_or_skip()
    g = torch.Generator(device="cuda").manual_seed(M * 7 + N)
    x = (torch.randn(M, K, device="cuda", generator=g) * 2 + 0.3).bfloat16()
    w = (torch.randn(N, K, device="cuda", generator=g) / K ** 0.5).bfloat16()
    vec = dict(rstd=torch.rand(M, device="cuda", generator=g) + 0.5, negm=torch.randn(M, device="cuda", generator=g),
               s=torch.randn(N, device="cuda", generator=g), c=torch.randn(N, device="cuda", generator=g)) \
        if vectors else dict(c=torch.randn(N, device="cuda", generator=g))
    pre = x.double() @ w.double().t()
    if vectors:
        pre = pre * vec["rstd"].double()[:, None] + vec["negm"].double()[:, None] * vec["s"].double()[None, :]
    pre = pre + vec["c"].double()[None, :]
    ref = torch.nn.functional.gelu(pre)
    for v in sorted(mg.VARIANTS):
        out = torch.full((M, N), float("nan"), device="cuda", dtype=torch.bfloat16)
        if vectors and v in mg.BIAS_ONLY:  # the swapped kernels take the bias only: an error before any launch
            with pytest.raises(ValueError, match="takes the bias c only"):
                mg.fc1_gelu(x, w, out=out, variant=v, **vec)
            torch.cuda.synchronize()
            assert torch.isnan(out).all(), f"variant {v}: wrote outputs although the call was refused"
            continue
        got = mg.fc1_gelu(x, w, out=out, variant=v, **vec)
        assert got.data_ptr() == out.data_ptr()
        torch.cuda.synchronize()
        assert torch.isfinite(got).all(), f"variant {v}: unwritten or non-finite outputs"
        e = rel(got, ref)
        assert e < 1e-2, f"variant {v} ({mg.VARIANTS[v]}): rel err {e:.2e}"


@pytest.mark.gpu
def test_gpu_fc1_gelu_epilogue_exact():
    """The epilogue's GELU alone, to the last bf16 bit: with w = I the GEMM is exact (one product per output), so
    every configuration's output must be GELU(x) (exact erf) rounded to bf16: within half a bf16 ulp of the fp64
    value plus the fp32 GELU's own error (GeluErfc, csrc/qvdp_cutlass_gemm.h: relative <= 1.6e-6 for x > -5,
    <= 7.2e-6 down to x = -11.5, plus the MUFU approximations' ~2^-22)."""
    mg = _cutlass_or_skip()
    g = torch.Generator(device="cuda").manual_seed(11)
    n = 512
    x = (torch.randn(n, n, device="cuda", generator=g) * 3).bfloat16()
    x[0, :8] = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 6.0, -6.0, 12.0, -12.0], device="cuda").bfloat16()
    w = torch.eye(n, device="cuda").bfloat16()
    c = torch.zeros(n, device="cuda")
    ref = torch.nn.functional.gelu(x.double())
    for v in sorted(mg.VARIANTS):
        got = mg.fc1_gelu(x, w, c=c, variant=v).double()
        bad = (got - ref).abs() > ref.abs() * 2.0 ** -8 + 2e-6
        assert not bad.any(), f"variant {v}: {int(bad.sum())} outputs off by more than half a bf16 ulp"


@pytest.mark.gpu
def test_gpu_stream_k_deterministic_and_graph():
    """the forced stream-K fc2 kernels (21, 22) reduce a tile's partial sums in a fixed order through their workspace:
    repeated calls are bit-identical, and CUDA-graph replays (the workspace's flags reset inside the graph) match
    the eager call"""
    mg = _cutlass_or_skip()
    M, N, K = 3520, 2048, 4608  # 224 tiles of 128x256 on 132 SMs: a partial second wave, split by stream-K
    g = torch.Generator(device="cuda").manual_seed(7)
    x = (torch.randn(M, K, device="cuda", generator=g) * 2 + 0.3).bfloat16()
    w = (torch.randn(N, K, device="cuda", generator=g) / K ** 0.5).bfloat16()
    c = torch.randn(N, device="cuda", generator=g)
    runs = [(v, lambda v=v: mg.linear(x, w, c, variant=v)) for v in (21, 22) if v in mg.LINEAR_VARIANTS]
    assert runs, "no stream-K configuration compiled"
    for v, f in runs:
        want = f()
        assert torch.equal(f(), want), f"variant {v}: two calls differ"
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = f()
        for _ in range(2):
            out.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(out, want), f"variant {v}: graph replay differs"


@pytest.mark.gpu
def test_gpu_params_cache(monkeypatch):
    """the C side keeps a call's kernel Params for repeats (same pointers and sizes): a repeat on new contents of
    the same buffers, calls on other buffers, more distinct calls than the cache holds (8), and every call with
    the cache off (QVDP_CUTLASS_PARAM_CACHE=0) all give the fp64 reference's answer, bit-identical across the
    two modes"""
    mg = _cutlass_or_skip()
    g = torch.Generator(device="cuda").manual_seed(3)
    K, N = 1024, 512
    w = (torch.randn(N, K, device="cuda", generator=g) / K ** 0.5).bfloat16()
    c = torch.randn(N, device="cuda", generator=g)
    xs = [torch.empty(M, K, device="cuda", dtype=torch.bfloat16) for M in (200, 200, 64, 333, 200, 7, 129, 512, 96,
                                                                           200)]
    outs = [torch.empty(x.shape[0], N, device="cuda", dtype=torch.bfloat16) for x in xs]
    for mode in ("1", "0", "1"):
        monkeypatch.setenv("QVDP_CUTLASS_PARAM_CACHE", mode)
        for rnd in range(2):
            for i, (x, out) in enumerate(zip(xs, outs)):
                x.copy_(torch.randn(x.shape, device="cuda", generator=g) * 2 + 0.3)  # new contents each round
                out.fill_(float("nan"))
                v = (12, 1)[i % 2]
                got = mg.launch(x, w, None, None, None, c, out, v)
                ref = torch.nn.functional.gelu(x.double() @ w.double().t() + c.double())
                torch.cuda.synchronize()
                assert torch.isfinite(got).all() and rel(got, ref) < 1e-2, (mode, rnd, i)
                lin = mg.launch(x, w, None, None, None, c, None, 14)
                assert torch.equal(lin, mg.linear(x, w, c, variant=14))
                if mode == "0":
                    monkeypatch.setenv("QVDP_CUTLASS_PARAM_CACHE", "1")
                    assert torch.equal(mg.launch(x, w, None, None, None, c, None, v), got), (rnd, i)
                    monkeypatch.setenv("QVDP_CUTLASS_PARAM_CACHE", "0")


@pytest.mark.gpu
def test_gpu_cutlass_operand_checks():
    """the CUTLASS kernels run without merger_gemm's checks, so patch_merger checks the weights first: an fp32
    fc1 weight or a bias on the CPU is an error naming them for backend="cutlass" / "tuned", and "auto" hands
    the call to the cuBLAS path (where torch reports it)"""
    _cutlass_or_skip()
    x, p = make(4 * 64, 256, 512, "layernorm", False, torch.bfloat16, "cuda")
    for bad in (dict(fc1_weight=p["fc1_weight"].float()), dict(fc2_bias=p["fc2_bias"].cpu())):
        q = {**p, **bad}
        for backend in ("cutlass", "tuned"):
            with pytest.raises(ValueError, match="fc1_weight bf16, the weights and biases"):
                patch_merger(x, **q, backend=backend)
        with pytest.raises(RuntimeError):
            patch_merger(x, **q)
            torch.cuda.synchronize()


@pytest.mark.gpu
@pytest.mark.parametrize("M,N,K", [(3520, 2048, 4608), (1001, 2560, 4096), (1, 4096, 4608), (129, 264, 72)])
@pytest.mark.parametrize("bias", [True, False])
def test_gpu_linear_variants(M, N, K, bias):
    """merger_gemm.linear (fc2: x @ w.T + c, no activation), every compiled configuration vs fp64, output
    poisoned, rows/columns that are not tile multiples"""
    mg = _cutlass_or_skip()
    g = torch.Generator(device="cuda").manual_seed(M + N)
    x = (torch.randn(M, K, device="cuda", generator=g) * 2 + 0.3).bfloat16()
    w = (torch.randn(N, K, device="cuda", generator=g) / K ** 0.5).bfloat16()
    c = torch.randn(N, device="cuda", generator=g) if bias else None
    ref = x.double() @ w.double().t() + (c.double()[None, :] if bias else 0)
    for v in sorted(mg.LINEAR_VARIANTS):
        out = torch.full((M, N), float("nan"), device="cuda", dtype=torch.bfloat16)
        got = mg.linear(x, w, c, out=out, variant=v)
        torch.cuda.synchronize()
        assert got.data_ptr() == out.data_ptr() and torch.isfinite(got).all(), f"variant {v}: unwritten outputs"
        e = rel(got, ref)
        assert e < 1e-2, f"variant {v} ({mg.LINEAR_VARIANTS[v]}): rel err {e:.2e}"
    with pytest.raises(ValueError, match="variant must be one of"):
        mg.linear(x, w, c, variant=1)


@pytest.mark.gpu
@pytest.mark.parametrize("norm,post", VARIANTS)
@pytest.mark.parametrize("n,H,out", [(4 * 3520, 1152, 2048), (4 * 1001, 1024, 2560), (4, 1152, 2048)])
def test_gpu_tuned(norm, post, n, H, out):
    """the "tuned" path against fp64, and every candidate it may pick for this shape agrees with it"""
    from qvdp.ops import _tune
    from qvdp.ops import patch_merger as pm
    _cutlass_or_skip()
    _check(n, H, out, norm, post, torch.bfloat16, "cuda", "tuned")
    x, p = make(n, H, out, norm, post, torch.bfloat16, "cuda")
    a = (x, p["norm_weight"], p["norm_bias"], p["fc1_weight"], p["fc1_bias"], 2, post, norm, 1e-6)
    ref = pm._fc1_cublas(*a)
    assert rel(pm._fc1_named(pm.MM_FORM, a), ref) < 1e-2
    from qvdp.ops import merger_gemm
    for v in pm.TUNE_FC1 + (tuple(merger_gemm.FOLD_VARIANTS) if merger_gemm.fold_available() else ()):
        assert rel(pm._fc1_cutlass(*a, variant=v), ref) < 1e-2, f"variant {v}"
    keys = [k for k in _tune._CHOICES if k[0].startswith("merger.")]
    assert keys, "nothing was tuned"


def _lt_or_skip():
    from qvdp.ops import _cublaslt
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    try:
        _cublaslt._lib()
    except RuntimeError as e:
        pytest.skip(str(e))
    return _cublaslt


@pytest.mark.gpu
@pytest.mark.parametrize("M,N,K", [(3520, 2048, 4608), (1001, 2560, 4096), (1, 4096, 4608), (129, 264, 72)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_cublaslt_candidates(M, N, K, bias, dtype, monkeypatch):
    """every cuBLASLt candidate (qvdp.ops._cublaslt) against fp64, output poisoned, repeated bit-identically;
    operands it cannot take (a misaligned or strided view, a bias of another dtype, a name not among the shape's)
    give None, and _linear_named then runs torch.addmm; without QVDP_CUBLASLT=1 no candidates"""
    lt = _lt_or_skip()
    monkeypatch.setenv("QVDP_CUBLASLT", "1")
    from qvdp.ops import patch_merger as pm
    g = torch.Generator(device="cuda").manual_seed(M + N + K)
    x = (torch.randn(M + 1, K, device="cuda", generator=g) * 2 + 0.3).to(dtype)
    w = (torch.randn(N, K, device="cuda", generator=g) / K ** 0.5).to(dtype)
    c = torch.randn(N, device="cuda", generator=g).to(dtype) if bias else None
    xs = x[:M]
    ref = xs.double() @ w.double().t() + (c.double()[None, :] if bias else 0)
    gm = lt.gemm_for(x.device, M, N, K, dtype, bias)
    assert gm is not None and gm.names and len(set(gm.names)) == len(gm.names)
    assert all(n.startswith(pm.LT_PREFIX) and " + " not in n for n in gm.names)
    assert pm._lt_names(xs, M, N, K, bias, w.dtype) == tuple(gm.names)
    for name in gm.names:
        outs = []
        for _ in range(2):
            out = torch.full((M, N), float("nan"), device="cuda", dtype=dtype)
            got = gm.run(name, xs, w, c, out=out)
            torch.cuda.synchronize()
            assert got is not None and got.data_ptr() == out.data_ptr() and torch.isfinite(got).all(), name
            outs.append(got.clone())
        assert rel(outs[0], ref) < TOL[dtype] / 3, (name, rel(outs[0], ref))
        assert torch.equal(outs[0], outs[1]), name
    name = gm.names[-1]
    want = torch.addmm(c, xs, w.t()) if bias else xs @ w.t()
    assert torch.equal(pm._linear_named("cublas", xs, w, c), want)
    assert gm.run("cublaslt no-such", xs, w, c) is None
    if (K * x.element_size()) % lt.ALIGN:  # rows 1..M: not 256-byte aligned
        assert gm.run(name, x[1:], w, c) is None
        assert torch.equal(pm._linear_named(name, x[1:], w, c),
                           torch.addmm(c, x[1:], w.t()) if bias else x[1:] @ w.t())
    wt = torch.empty(K, N, device="cuda", dtype=dtype).t()
    wt.copy_(w)
    assert gm.run(name, xs, wt, c) is None  # strided weight
    assert gm.run(name, xs.cpu(), w, c) is None  # another device
    if bias:
        assert gm.run(name, xs, w, c.float()) is None and gm.run(name, xs, w, None) is None
    monkeypatch.delenv("QVDP_CUBLASLT")
    assert lt.gemm_for(x.device, M, N, K, dtype, bias) is None and pm._lt_names(xs, M, N, K, bias, w.dtype) == ()
    assert gm.run(name, xs, w, c) is not None  # a pick already made still runs (e.g. from a cache file)


@pytest.mark.gpu
@pytest.mark.parametrize("post", [False, True])
def test_gpu_tuned_cublaslt(post, monkeypatch):
    """the "tuned" path with cuBLASLt picks for both GEMMs (stored as the shape's pair choice): against fp64, and
    eager against a CUDA-graph replay (the cuBLASLt calls captured), outputs poisoned"""
    _cutlass_or_skip()
    lt = _lt_or_skip()
    monkeypatch.setenv("QVDP_CUBLASLT", "1")
    from qvdp.ops import _tune
    from qvdp.ops import patch_merger as pm
    n, H, out = 4 * 1001, 1152, 2048
    x, p = make(n, H, out, "layernorm", post, torch.bfloat16, "cuda", seed=7)
    M, K = n // 4, 4 * H
    g1 = lt.gemm_for(x.device, M, K, K, torch.bfloat16, True)
    g2 = lt.gemm_for(x.device, M, out, K, torch.bfloat16, True)
    ref = patch_merger_reference(x.cpu(), **{k: (v.cpu() if v is not None else None) for k, v in p.items()},
                                 postshuffle_norm=post, norm="layernorm", dtype=torch.float64)
    keyc = pm._tuned_keys(x.device, M, K, K, out, post, "layernorm")[2]
    old = _tune._CHOICES.get(keyc)
    try:
        for a, b in ((g1.names[-1], g2.names[-1]), (g1.names[0], "cublas")):
            _tune._CHOICES[keyc] = f"{a} + {b}"
            assert pm.tuned_picks(x.device, M, K, K, out, post, "layernorm") == (a, b)
            static_x = x.clone()
            f = lambda: patch_merger(static_x, **p, postshuffle_norm=post, backend="tuned")
            got = f()
            torch.cuda.synchronize()
            assert torch.isfinite(got).all() and rel(got.cpu(), ref) < TOL[torch.bfloat16], (a, b)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                gout = f()
            gout.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(gout, got), (a, b)
    finally:
        if old is None:
            _tune._CHOICES.pop(keyc, None)
        else:
            _tune._CHOICES[keyc] = old


@pytest.mark.gpu
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("M,H", [(3520, 1152), (301, 1024), (1, 1152), (130, 64)])
def test_gpu_fold_fc1(norm, M, H):
    """the folded per-patch norm kernel (the accumulator rescaled per row between the patch chunks) vs fp64
    GELU(norm(x) @ W1^T + b1); every patch scaled and shifted by its own factors, so the four chunks' r and mu differ
    widely; rows and columns not tile multiples; the output poisoned, and the call repeated bit-identically"""
    from qvdp.ops import merger_gemm as mg
    from qvdp.ops import patch_merger as pm
    why = mg.fold_unavailable_reason() if torch.cuda.is_available() else "no CUDA device"
    if why:
        pytest.skip(why)
    rms = norm == "rmsnorm"
    g = torch.Generator(device="cuda").manual_seed(M + H)
    K = 4 * H
    x = ((torch.randn(4 * M, H, device="cuda", generator=g) + 2 * torch.randn(4 * M, 1, device="cuda", generator=g))
         * torch.exp(torch.randn(4 * M, 1, device="cuda", generator=g))).bfloat16()
    nw = (1 + 0.2 * torch.randn(H, device="cuda", generator=g)).bfloat16()
    nb = None if rms else (0.2 * torch.randn(H, device="cuda", generator=g)).bfloat16()
    w1 = (torch.randn(K, K, device="cuda", generator=g) / K ** 0.5).bfloat16()
    b1 = torch.randn(K, device="cuda", generator=g).bfloat16()
    xd = x.double()
    if rms:
        xn = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6) * nw.double()
    else:
        xn = torch.nn.functional.layer_norm(xd, (H,), nw.double(), nb.double(), 1e-6)
    ref = torch.nn.functional.gelu(xn.view(M, K) @ w1.double().t() + b1.double())
    got = pm._fc1_cutlass(x, nw, nb, w1, b1, 2, False, norm, 1e-6, variant=30)
    torch.cuda.synchronize()
    assert torch.isfinite(got).all() and rel(got, ref) < 1e-2, rel(got, ref)
    wg, s_, c_ = pm._folded_weights(nw, nb, w1, b1, 4, False, rms)
    c1c2, rn = pm.fold_stats(x, 4, H, 1e-6, rms)
    out = torch.full((M, K), float("nan"), device="cuda", dtype=torch.bfloat16)
    mg.launch_fold(x.view(M, K), wg, rn[0], rn[1], s_[3], c_, c1c2[0], c1c2[1], s_[:3], H // 64, out=out)
    torch.cuda.synchronize()
    assert torch.equal(out, got)
    with pytest.raises(ValueError, match="multiple of 64"):
        pm._fc1_cutlass(x[:, :H - 8].contiguous(), nw[:H - 8], None if rms else nb[:H - 8],
                        w1[:, :K - 32].contiguous(), b1, 2, False, norm, 1e-6, variant=30)


@pytest.mark.skipif(not (_triton_utils.interpreter_on() or torch.cuda.is_available()), reason="needs the interpreter")
@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("H,M", [(48, 5), (40, 3), (64, 1)])
def test_fold_stats(rms, H, M):
    """the folded norm's per-row factors (c1 = r_j / r_(j+1), c2 = -mu_j r_j / r_(j+1), the last patch's r and
    -mu r) vs fp64; patches with their own scales and shifts"""
    from qvdp.ops.patch_merger import fold_stats
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(H + M)
    x = ((torch.randn(4 * M, H, generator=g) + 2 * torch.randn(4 * M, 1, generator=g))
         * torch.exp(torch.randn(4 * M, 1, generator=g))).to(dev)
    c1c2, rn = fold_stats(x, 4, H, 1e-6, rms)
    xd = x.double().cpu().view(M, 4, H)
    mu = torch.zeros(M, 4, dtype=torch.float64) if rms else xd.mean(-1)
    r = torch.rsqrt((xd.pow(2).mean(-1) if rms else xd.var(-1, unbiased=False)) + 1e-6)
    assert torch.allclose(c1c2[0].double().cpu(), (r[:, :3] / r[:, 1:]).t(), rtol=1e-5)
    assert torch.allclose(c1c2[1].double().cpu(), (-mu[:, :3] * r[:, :3] / r[:, 1:]).t(), rtol=1e-4, atol=1e-6)
    assert torch.allclose(rn[0].double().cpu(), r[:, 3], rtol=1e-5)
    assert torch.allclose(rn[1].double().cpu(), -mu[:, 3] * r[:, 3], rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cutlass", "tuned"])
def test_gpu_cutlass_cuda_graph(backend):
    """the ctypes launch is captured into a CUDA graph (the tower replays its mergers in graphs); "tuned" tunes
    in the warm call and keeps its choice under capture"""
    _cutlass_or_skip()
    for post in (False, True):
        x, p = make(4 * 300, 1152, 2048, "layernorm", post, torch.bfloat16, "cuda")
        static_x = x.clone()
        f = lambda: patch_merger(static_x, **p, postshuffle_norm=post, backend=backend)
        f()  # warm: caches (folded weights, fp32 bias) filled outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = f()
        x2, _ = make(4 * 300, 1152, 2048, "layernorm", post, torch.bfloat16, "cuda", seed=5)
        static_x.copy_(x2)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        want = patch_merger(x2, **p, postshuffle_norm=post, backend=backend)
        assert torch.equal(out, want)


@pytest.mark.gpu
def test_gpu_cutlass_pdl(monkeypatch):
    """the CUTLASS kernels launched as programmatic dependents (merger_gemm.PDL) give bit-identical results to plain
    launches, each kernel right after a kernel writing its input (the norm pass, fc1, a CUTLASS fc2 after a CUTLASS
    fc1), eagerly and replayed from a CUDA graph captured with PDL, the outputs poisoned before every call; the
    plain launches agree with the cublas form within 1e-2"""
    mg = _cutlass_or_skip()
    from qvdp.ops import patch_merger as pm
    x, p = make(4 * 1001, 1152, 2048, "layernorm", False, torch.bfloat16, "cuda")
    a = (x, p["norm_weight"], p["norm_bias"], p["fc1_weight"], p["fc1_bias"], 2, False, "layernorm", 1e-6)
    w2, b2 = p["fc2_weight"], p["fc2_bias"].float()

    def chain(fc1, fc2, out):
        h = pm._fc1_cutlass(*a, variant=fc1)
        return mg.launch(h, w2, None, None, None, b2, out, fc2)

    pairs = [(0, 14), (43, 45), (12, 19)]
    got = {}
    for pdl in (False, True):
        monkeypatch.setattr(mg, "PDL", pdl)
        for pair in pairs:
            out = torch.full((1001, 2048), float("nan"), device="cuda", dtype=torch.bfloat16)
            got[pdl, pair] = chain(*pair, out).clone()
    ref = pm._fc2_named("cublas", pm._fc1_cublas(*a), p["fc2_weight"], p["fc2_bias"])
    torch.cuda.synchronize()
    for pair in pairs:
        assert torch.isfinite(got[False, pair]).all() and rel(got[False, pair], ref) < 1e-2, pair
        assert torch.equal(got[True, pair], got[False, pair]), pair
    monkeypatch.setattr(mg, "PDL", True)
    out = torch.empty((1001, 2048), device="cuda", dtype=torch.bfloat16)
    chain(0, 14, out)  # warm (folded weights, plans) outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        chain(0, 14, out)
    for _ in range(3):
        out.fill_(float("nan"))
        graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, got[False, (0, 14)])


@pytest.mark.skipif(not _triton_utils.HAS_TRITON, reason="needs triton")
def test_pass_pdl_options(monkeypatch):
    """the passes launch as programmatic dependents only on CUDA devices of compute capability >= 9.0 (griddepcontrol
    is sm_90 PTX), and not with QVDP_PASS_PDL=0 (PASS_PDL False); CPU tensors (the interpreter) never"""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from qvdp.ops import patch_merger as pm
    assert pm._pdl(torch.ones(4)) == {}
    with FakeTensorMode(allow_non_fake_inputs=True):
        t = torch.empty(4, device="cuda")
        monkeypatch.setattr(pm, "_pdl_capable", lambda index: True)
        assert pm._pdl(t) == ({"PDL": True, "launch_pdl": True} if pm.gdc_wait is not None else {})
        monkeypatch.setattr(pm, "_pdl_capable", lambda index: False)
        assert pm._pdl(t) == {}
        monkeypatch.setattr(pm, "_pdl_capable", lambda index: True)
        monkeypatch.setattr(pm, "PASS_PDL", False)
        assert pm._pdl(t) == {}


@pytest.mark.gpu
def test_gpu_pass_pdl(monkeypatch):
    """the merger's Triton passes (norm, statistics, GELU) launched as programmatic dependents (patch_merger.PASS_PDL:
    each lets the next kernel launch at its start and waits for the previous one) give bit-identical results to plain
    launches: pre-norm and post-shuffle chains through a CUTLASS fc1 and through the cublas form (norm, cuBLAS fc1,
    the GELU pass), each with a CUTLASS fc2, run twice in a row so a pass also follows a CUTLASS kernel; eagerly and
    replayed from a CUDA graph captured with every PDL on, the outputs poisoned before every run"""
    mg = _cutlass_or_skip()
    from qvdp.ops import patch_merger as pm
    monkeypatch.setattr(mg, "PDL", True)
    cases = []
    for post in (False, True):
        x, p = make(4 * 1001, 1152, 2048, "layernorm", post, torch.bfloat16, "cuda")
        a = (x, p["norm_weight"], p["norm_bias"], p["fc1_weight"], p["fc1_bias"], 2, post, "layernorm", 1e-6)
        cases.append((a, p["fc2_weight"], p["fc2_bias"].float()))
    out = torch.empty((2, 4, 1001, 2048), device="cuda", dtype=torch.bfloat16)

    def run():
        for r in range(2):
            for i, (a, w2, b2) in enumerate(cases):
                mg.launch(pm._fc1_cutlass(*a, variant=0), w2, None, None, None, b2, out[r, i], 45)
                mg.launch(pm._fc1_cublas(*a), w2, None, None, None, b2, out[r, 2 + i], 45)

    got = {}
    for pdl in (False, True):
        monkeypatch.setattr(pm, "PASS_PDL", pdl)
        out.fill_(float("nan"))
        run()
        got[pdl] = out.clone()
    torch.cuda.synchronize()
    assert torch.isfinite(got[False]).all()
    assert torch.equal(got[True], got[False])
    assert torch.equal(got[False][0], got[False][1])
    monkeypatch.setattr(pm, "PASS_PDL", True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    for _ in range(2):
        out.fill_(float("nan"))
        graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, got[False])


def test_cutlass_bad_inputs():
    from qvdp.ops import merger_gemm
    x, p = make(8, 16, 8, "layernorm", False, torch.float32, "cpu")
    with pytest.raises(ValueError, match="cutlass"):
        patch_merger(x, **p, backend="cutlass")
    with pytest.raises(ValueError, match="bfloat16"):
        merger_gemm.fc1_gelu(torch.ones(4, 8), torch.ones(8, 8))
    with pytest.raises(ValueError, match=r"x must be \[M, K\]"):
        merger_gemm.fc1_gelu(torch.ones(4, 8, dtype=torch.bfloat16), torch.ones(8, 16, dtype=torch.bfloat16))


@pytest.mark.skipif(not (_triton_utils.interpreter_on() or torch.cuda.is_available()), reason="needs the interpreter")
@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("width,n", [(72, 37), (64, 1), (200, 9)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_row_norm(rms, width, n, dtype):
    """The one-pass Triton norm of the CUTLASS path's per-patch / RMS norms vs fp64 torch."""
    from qvdp.ops.patch_merger import row_norm
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(3)
    x = ((torch.randn(n, width, generator=g) * 3 + 1.5) * torch.exp(torch.randn(n, 1, generator=g))).to(dev, dtype)
    w = (1 + 0.2 * torch.randn(width, generator=g)).to(dev, dtype)
    b = None if rms else (0.2 * torch.randn(width, generator=g)).to(dev, dtype)
    got = row_norm(x, w, b, width, 1e-6, rms)
    xd = x.double().cpu()
    if rms:
        ref = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double().cpu()
    else:
        ref = torch.nn.functional.layer_norm(xd, (width,), w.double().cpu(), b.double().cpu(), 1e-6)
    assert got.shape == x.shape and got.dtype == dtype
    assert rel(got.cpu(), ref) < TOL[dtype] / 3


def _gelu_grid(n_rand, dev, dtype, seed):
    """Every representable value on [-11, 12] that the dtype has at 2e-3 spacing, edge values, then random ones."""
    g = torch.Generator().manual_seed(seed)
    edge = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 6.0, -6.0, 12.0, -11.0])
    return torch.cat([edge, torch.linspace(-11, 12, 11501), torch.randn(n_rand, generator=g) * 3]).to(dev, dtype)


@pytest.mark.skipif(not (_triton_utils.interpreter_on() or torch.cuda.is_available()), reason="needs the interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gelu_pass(dtype):
    """The cublas form's in-place GELU pass (patch_merger.gelu_, the erfc fit) against the exact-erf GELU in fp64:
    fp32 within 2e-5 relative wherever the value is a normal fp32 number (torch's own fp32 GELU loses the negative
    tail), fp16 within one ulp and almost always the correctly rounded value; a size that is not a multiple of the
    block (11509 + 3001 elements) and an empty tensor."""
    from qvdp.ops.patch_merger import gelu_
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    h = _gelu_grid(3001, dev, dtype, 5)
    xd = h.double().cpu()
    ref = 0.5 * xd * torch.special.erfc(-xd * 0.5 ** 0.5)
    assert gelu_(h) is h
    got = h.double().cpu()
    if dtype == torch.float32:
        normal = ref.abs() > 1e-37
        assert ((got - ref).abs() <= 2e-5 * ref.abs())[normal].all()
        assert (got[~normal].abs() <= 1e-37).all()
    else:
        exact = ref.to(dtype).double()
        ulp = (exact.abs() * 2.0 ** -10).clamp_min(2.0 ** -24)  # one ulp (subnormals: 2^-24)
        assert ((got - exact).abs() <= ulp).all()
        assert (got != exact).float().mean().item() < 1e-3
    e = torch.empty(0, device=dev, dtype=dtype)
    assert gelu_(e).numel() == 0


@pytest.mark.gpu
def test_gpu_gelu_pass():
    """bf16 on the GPU (ex2 / rcp approximations): every output within half a bf16 ulp (+2e-6 relative) of the
    exact-erf GELU, against aten's gelu_ which misses the negative tail."""
    from qvdp.ops.patch_merger import gelu_
    h = _gelu_grid(3 * 4096 + 17, "cuda", torch.bfloat16, 6)
    xd = h.double()
    ref = 0.5 * xd * torch.special.erfc(-xd * 0.5 ** 0.5)
    gelu_(h)
    bad = (h.double() - ref).abs() > ref.abs() * 2.0 ** -8 * (1 + 1e-4)
    assert not bad.any(), f"{int(bad.sum())} outputs off by more than half a bf16 ulp"


@pytest.mark.skipif(not (_triton_utils.interpreter_on() or torch.cuda.is_available()), reason="needs the interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("M,N", [(13, 600), (1, 8), (8, 512), (0, 24)])
def test_bias_gelu_pass(dtype, M, N, monkeypatch):
    """the MM_FORM's pass (patch_merger.bias_gelu_): GELU(h + b) in place against fp64 (fp32 within 2e-5 relative
    where normal, fp16 within one ulp of the correctly rounded value); rows / columns that are not multiples of the
    block (13 x 600 with 8 x 512 blocks), one row, no rows; the torch fallback (other device / dtype of the bias)
    agrees; the "cublas-mm" fc1 against the cublas form"""
    from qvdp.ops import patch_merger as pm
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(M * 1000 + N)
    h = (torch.randn(M, N, generator=g) * 3).to(dev, dtype)
    b = torch.randn(N, generator=g).to(dev, dtype)
    yd = h.double().cpu() + b.double().cpu()
    ref = 0.5 * yd * torch.special.erfc(-yd * 0.5 ** 0.5)
    assert pm.bias_gelu_(h, b) is h
    got = h.double().cpu()
    if dtype == torch.float32:
        normal = ref.abs() > 1e-30
        assert ((got - ref).abs() <= 2e-5 * ref.abs())[normal].all()
    else:
        exact = ref.to(dtype).double()
        ulp = (exact.abs() * 2.0 ** -10).clamp_min(2.0 ** -24)
        assert ((got - exact).abs() <= ulp).all()  # (h + b is exact in fp32)
    if M:
        h2 = (torch.randn(M, N, generator=g) * 3).to(dev, dtype)
        want = pm.bias_gelu_(h2.clone(), b)
        h3 = h2.clone()  # the int64-offset form (taken from 2^31 elements on) gives the same values
        br, bc, warps = pm.BIAS_GELU_BLOCK
        pm._bias_gelu_inplace[(-(-N // bc), -(-M // br))](h3, b, M, N, BR=br, BC=bc, I64=True, num_warps=warps)
        assert torch.equal(h3, want)
        monkeypatch.setattr(pm, "triton_usable", lambda t: False)
        fb = pm.bias_gelu_(h2.clone(), b)
        assert rel(fb, want) < (1e-6 if dtype == torch.float32 else 2e-3)


@pytest.mark.gpu
def test_gpu_bias_gelu_pass():
    """bf16 on the GPU: GELU(h + b) within half a bf16 ulp (+2e-6 relative) of the exact-erf GELU of the fp32 sum
    (exact for bf16 inputs), at the merger's size (3520 x 4608) and a ragged one; and the cublas form's fc1 as mm +
    this pass against addmm + the GELU pass (the same GEMM tile without its bias epilogue) within 1e-2"""
    from qvdp.ops import patch_merger as pm
    g = torch.Generator(device="cuda").manual_seed(11)
    for M, N in ((3520, 4608), (77, 1000)):
        h = (torch.randn(M, N, device="cuda", generator=g) * 3).bfloat16()
        b = torch.randn(N, device="cuda", generator=g).bfloat16()
        yd = h.double() + b.double()
        ref = 0.5 * yd * torch.special.erfc(-yd * 0.5 ** 0.5)
        pm.bias_gelu_(h, b)
        bad = (h.double() - ref).abs() > ref.abs() * 2.0 ** -8 * (1 + 1e-4) + 1e-30
        assert not bad.any(), f"{int(bad.sum())} outputs off by more than half a bf16 ulp"
    x, p = make(4 * 1001, 1152, 2048, "layernorm", False, torch.bfloat16, "cuda")
    a = (x, p["norm_weight"], p["norm_bias"], p["fc1_weight"], p["fc1_bias"], 2, False, "layernorm", 1e-6)
    assert rel(pm._fc1_cublas(*a, gemm=pm.MM_FORM), pm._fc1_cublas(*a)) < 1e-2


def test_norm_tiles():
    """Rows as two power-of-two blocks where the width allows, else one padded block; every tile covers the row."""
    from qvdp.ops.patch_merger import norm_tiles
    assert norm_tiles(1152)[:2] == (1024, 128) and norm_tiles(4608)[:2] == (4096, 512)
    assert norm_tiles(1280)[:2] == (1024, 256) and norm_tiles(1024)[:2] == (1024, 0)
    assert norm_tiles(200)[:2] == (256, 0) and norm_tiles(3584)[:2] == (4096, 0)
    for w in (1, 3, 8, 72, 200, 1152, 1280, 3584, 4608, 5120, 16384):
        block, tail, rows, warps = norm_tiles(w)
        assert block + tail >= w and (tail == 0 or block + tail == w) and rows >= 1 and 1 <= warps <= 16
        assert block & (block - 1) == 0 and tail & (tail - 1) == 0


@pytest.mark.skipif(not (_triton_utils.interpreter_on() or torch.cuda.is_available()), reason="needs the interpreter")
@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("width,n,tiles", [(48, 13, None), (48, 13, (64, 0, 4, 4)), (200, 5, None),
                                           (96, 7, (64, 32, 1, 2)), (1152, 3, None)])
def test_row_stats_and_norm_tiles(rms, width, n, tiles, chunks=None):
    """row_stats and row_norm with split blocks (48 = 32 + 16), a padded block, and explicit tiles, and (1152:
    the default chunk_tiles) the row as equal chunks, vs fp64; rows not a multiple of the rows per program;
    outputs poisoned"""
    from qvdp.ops.patch_merger import row_norm, row_stats
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(width + n)
    x = ((torch.randn(n, width, generator=g) * 3 + 1.5) * torch.exp(torch.randn(n, 1, generator=g))).to(dev)
    xd = x.double().cpu()
    mean = torch.full((n,), float("nan"), device=dev)
    rstd = torch.full((n,), float("nan"), device=dev)
    row_stats(x, mean, rstd, width, 1e-6, rms, negm=True, tiles=tiles, chunks=chunks)
    if rms:
        r = torch.rsqrt(xd.pow(2).mean(-1) + 1e-6)
        m = torch.zeros(n, dtype=torch.float64)
    else:
        r = torch.rsqrt(xd.var(-1, unbiased=False) + 1e-6)
        m = xd.mean(-1)
    assert torch.allclose(rstd.double().cpu(), r, rtol=1e-5)
    assert torch.allclose(mean.double().cpu(), -m * r, rtol=1e-5, atol=1e-6)
    w = (1 + 0.2 * torch.randn(width, generator=g)).to(dev)
    b = None if rms else (0.2 * torch.randn(width, generator=g)).to(dev)
    got = row_norm(x, w, b, width, 1e-6, rms, tiles=tiles, chunks=chunks)
    ref = (xd - m[:, None]) * r[:, None] * w.double().cpu() + (0 if rms else b.double().cpu())
    assert torch.isfinite(got).all() and rel(got.cpu(), ref) < 1e-5


@pytest.mark.skipif(not (_triton_utils.interpreter_on() or torch.cuda.is_available()), reason="needs the interpreter")
@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("width,n,chunks", [(384, 5, None), (96, 7, (32, 1, 1)), (160, 9, (32, 4, 2)),
                                            (640, 3, (128, 2, 2))])
def test_row_chunks(rms, width, n, chunks):
    """the chunked norm / statistics kernels (the row as equal power-of-two chunks): the default plan (384 = 3 x
    128) and explicit ones, rows not a multiple of the rows per program, vs fp64"""
    test_row_stats_and_norm_tiles(rms, width, n, None, chunks)


def test_row_chunks_bad_plans():
    """explicit chunks that do not split the row into equal power-of-two chunks, or chunks and tiles together, are
    refused before any launch"""
    from qvdp.ops.patch_merger import row_norm, row_stats
    x, w = torch.randn(4, 96), torch.ones(96)
    m, r = torch.empty(4), torch.empty(4)
    for bad in ((64, 1, 1), (48, 1, 1), (0, 1, 1)):
        with pytest.raises(ValueError, match="chunk width"):
            row_norm(x, w, None, 96, 1e-6, True, chunks=bad)
        with pytest.raises(ValueError, match="chunk width"):
            row_stats(x, m, r, 96, 1e-6, True, chunks=bad)
    with pytest.raises(ValueError, match="not both"):
        row_norm(x, w, None, 96, 1e-6, True, tiles=(64, 32, 1, 2), chunks=(32, 1, 1))


def test_chunk_tiles():
    """the chunked kernels take non-power-of-two widths made of at most 64 chunks of 32+ columns; norms up to 2048
    wide (4608: the two-block kernel, s25f)"""
    from qvdp.ops.patch_merger import chunk_tiles
    assert chunk_tiles(1152) == (128, 9, 2, 2) and chunk_tiles(4608, stats=True) == (512, 9, 1, 2)
    assert chunk_tiles(1280) == (128, 10, 2, 2) and chunk_tiles(4608) is None
    assert chunk_tiles(1024) is None and chunk_tiles(4096, stats=True) is None and chunk_tiles(200) is None
    assert chunk_tiles(96 * 65, stats=True) is None and chunk_tiles(1152, stats=True) == (128, 9, 2, 2)
    for w in range(1, 6000):
        for st in (False, True):
            t = chunk_tiles(w, st)
            if t is not None:
                cw, nch, rows, warps = t
                assert cw * nch == w and cw & (cw - 1) == 0 and 32 <= cw and nch <= 64 and rows >= 1 and warps == 2


@pytest.mark.gpu
@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("width,n", [(1152, 4 * 3520 + 3), (4608, 1001), (1024, 4), (1280, 999), (200, 77)])
def test_gpu_row_norm(rms, width, n):
    from qvdp.ops.patch_merger import row_norm
    torch.manual_seed(4)
    x = ((torch.randn(n, width, device="cuda") * 2 + 0.5) * torch.exp(torch.randn(n, 1, device="cuda"))).bfloat16()
    w = (1 + 0.1 * torch.randn(width, device="cuda")).bfloat16()
    b = None if rms else (0.1 * torch.randn(width, device="cuda")).bfloat16()
    got = row_norm(x, w, b, width, 1e-6, rms)
    xd = x.double()
    if rms:
        ref = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()
    else:
        ref = torch.nn.functional.layer_norm(xd, (width,), w.double(), b.double(), 1e-6)
    assert torch.isfinite(got).all()
    assert rel(got, ref) < 5e-3


def test_custom_op_dispatch(monkeypatch):
    """Eager inference runs the implementation directly; torch.compile traces the custom op (no graph break)
    and inputs that want gradients go through the custom op, which refuses a backward instead of returning
    silently wrong gradients."""
    import qvdp.ops.patch_merger as pm
    x, p = make(4 * 5, 16, 8, "layernorm", True, torch.float32, "cpu")
    with torch.no_grad():
        want = patch_merger(x, **p, postshuffle_norm=True, backend="torch")
    calls = []
    real = pm._patch_merger_impl
    monkeypatch.setattr(pm, "_patch_merger_impl", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        got = patch_merger(x, **p, postshuffle_norm=True, backend="torch")
    assert len(calls) == 1 and torch.equal(got, want)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm
    f = torch.compile(lambda x: patch_merger(x, **p, postshuffle_norm=True, backend="torch"), backend=backend,
                      fullgraph=True)
    with torch.no_grad():
        assert rel(f(x), want) < 1e-6
    assert any("qvdp.patch_merger" in str(n.target) for g in graphs for n in g.graph.nodes)
    xg = x.clone().requires_grad_(True)
    out = patch_merger(xg, **p, postshuffle_norm=True, backend="torch")
    with pytest.raises(RuntimeError):
        out.sum().backward()
