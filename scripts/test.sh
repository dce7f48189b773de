#!/usr/bin/env bash
# Set up and run the test suite. Without a GPU the Triton kernels run under TRITON_INTERPRET=1
# and GPU tests are skipped; on a GPU machine run `scripts/test.sh -m gpu` for the GPU set.
set -euo pipefail
source "$(dirname "$0")/setup_env.sh" test,demo
python -m qvdp.env
if [ $# -eq 0 ]; then set -- -m "not gpu and not multigpu"; fi
python -m pytest -q -p no:cacheprovider "$@" tests
