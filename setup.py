"""qvdp: builds the native NCCL gather (csrc/) only when torch has CUDA, nvcc is found and NCCL's
headers are found (the nvidia-nccl wheel torch depends on ships them); otherwise pure Python."""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup


def _nccl_paths():
    cands = []
    if os.environ.get("NCCL_HOME"):
        cands.append(os.environ["NCCL_HOME"])
    for p in sys.path:
        cands.append(os.path.join(p, "nvidia", "nccl"))
    cands += ["/usr/local/cuda", "/usr"]
    for c in cands:
        inc = os.path.join(c, "include")
        if os.path.exists(os.path.join(inc, "nccl.h")):
            libdir = os.path.join(c, "lib")
            libs = glob.glob(os.path.join(libdir, "libnccl.so*")) or glob.glob(os.path.join(c, "lib64", "libnccl.so*"))
            if libs:
                return inc, os.path.dirname(libs[0]), os.path.basename(sorted(libs, key=len)[0])
    return None


def _native_extension():
    why = None
    if os.environ.get("QVDP_NO_NATIVE"):
        why = "QVDP_NO_NATIVE is set"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except Exception as e:  # torch missing at build time: pure Python
        return None, None, f"torch not importable at build time ({e})"
    if why is None and not torch.version.cuda:
        why = "torch is a CPU build"
    if why is None and not (CUDA_HOME and shutil.which(os.path.join(CUDA_HOME, "bin", "nvcc")) or shutil.which("nvcc")):
        why = "nvcc not found"
    nccl = _nccl_paths() if why is None else None
    if why is None and nccl is None:
        why = "NCCL headers/library not found (set NCCL_HOME)"
    if why:
        return None, None, why
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    inc, libdir, libname = nccl
    link = [f"-l:{libname}"] if libname != "libnccl.so" else ["-lnccl"]
    ext = CUDAExtension("qvdp._C", ["csrc/allgather_reorder.cpp", "csrc/push.cu"], include_dirs=[inc], library_dirs=[libdir],
                        extra_link_args=link + [f"-Wl,-rpath,{libdir}"], extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]})
    return [ext], {"build_ext": BuildExtension}, None


ext_modules, cmdclass, why_not = _native_extension()
if why_not:
    print(f"qvdp: building pure Python (no native NCCL gather): {why_not}")

# The CUTLASS kernels (the merger fc1 behind patch_merger(backend="cutlass"), and the qkv GEMM with RoPE in
# its epilogue that the tower uses where it is built), opt-in because the build takes minutes:
# QVDP_BUILD_CUTLASS=1 and CUTLASS headers (QVDP_CUTLASS_DIR or pip install nvidia-cutlass).
if os.environ.get("QVDP_BUILD_CUTLASS") == "1" and any(a.startswith(("build", "install", "develop", "bdist"))
                                                         for a in sys.argv[1:]):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))
    import build_merger_gemm
    try:
        print("qvdp: built", build_merger_gemm.build(jobs=os.cpu_count() or 2))
        print("qvdp: built", build_merger_gemm.build_fold(jobs=os.cpu_count() or 2))
        print("qvdp: built", build_merger_gemm.build_qkv(jobs=os.cpu_count() or 2))
    except RuntimeError as e:
        print(f"qvdp: CUTLASS kernels not built: {e}")

setup(
    name="qvdp",
    version="0.1.0",
    description="Data-parallel Qwen3-VL vision encoding: fused Triton kernels and an ordered NCCL gather",
    packages=find_packages(include=["qvdp", "qvdp.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "triton>=3.6", "numpy"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis", "transformers>=5.17"],
        "demo": ["transformers>=5.17", "scikit-image", "pillow"],
        "bench": ["matplotlib", "pytest-benchmark", "transformers>=5.17"],
        "flash": ["flash-attn"],
    },
    ext_modules=ext_modules or [],
    cmdclass=cmdclass or {},
)
