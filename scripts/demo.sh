#!/usr/bin/env bash
# Set up and run the DP-sharded Qwen3-VL vision encoder demo on scikit-image's bundled photos.
# CPU: a small random-weight tower on 2 gloo ranks. GPU: the Qwen3-VL-8B tower config on all GPUs.
# Extra arguments go to `python -m qvdp.demo` (e.g. --images a.jpg b.png, --world 2).
set -euo pipefail
source "$(dirname "$0")/setup_env.sh" demo
# On a Hopper GPU with nvcc: the opt-in CUTLASS kernels (the tower's qkv GEMM with RoPE in its epilogue,
# the merger's fc1), built once; skipped quietly where nvidia-cutlass cannot be installed or nvcc is missing
if [ ! -f qvdp/_qkv_rope_gemm.so ] && command -v nvidia-smi >/dev/null 2>&1 \
    && nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | grep -q '^9\.0'; then
  { python -m pip install -q --retries 1 --timeout 15 nvidia-cutlass && python scripts/build_merger_gemm.py; } \
    || echo "qvdp: CUTLASS kernels not built (the tower runs its RoPE pass instead)"
fi
python -m qvdp.env
python -m qvdp.demo "$@"
