#!/usr/bin/env bash
# One device call for attention work: form/tile diagnosis, then (if a faster correct tail config was
# found) the attention GPU tests and the attention benchmark with that config. Results land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/qvdp_out}; mkdir -p "$OUT" logs
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name --format=csv,noheader
timeout "${DIAG_T:-330}" python3 benchmarks/diag_attention.py --out "$OUT/diag.jsonl" --best "$OUT/best.json" ${DIAG_ARGS:-}
if [ -f "$OUT/best.json" ]; then
  export QVDP_ATTN_CONFIG=$(cat "$OUT/best.json"); echo "QVDP_ATTN_CONFIG=$QVDP_ATTN_CONFIG"
  [ -z "${SKIP_TESTS:-}" ] && timeout 150 python3 -m pytest -q -x -m gpu tests/test_attention.py -p no:cacheprovider 2>&1 | tail -4
  timeout 150 python3 benchmarks/bench_attention.py --skip Flex 2>&1 | tail -30
  cp benchmarks/results/attention-*.md benchmarks/results/attention-*.png "$OUT/" 2>/dev/null
fi
if [ -n "${ALL_GPU_TESTS:-}" ]; then
  unset QVDP_ATTN_CONFIG
  timeout 240 python3 -m pytest -q -m "gpu and not multigpu" tests -p no:cacheprovider 2>&1 | tail -8
fi
ls "$OUT"
