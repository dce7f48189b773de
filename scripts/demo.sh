#!/usr/bin/env bash
# Set up and run the DP-sharded Qwen3-VL vision encoder demo on scikit-image's bundled photos.
# CPU: a small random-weight tower on 2 gloo ranks. GPU: the Qwen3-VL-8B tower config on all GPUs.
# Extra arguments go to `python -m qvdp.demo` (e.g. --images a.jpg b.png, --world 2).
set -euo pipefail
source "$(dirname "$0")/setup_env.sh" demo
python -m qvdp.env
python -m qvdp.demo "$@"
