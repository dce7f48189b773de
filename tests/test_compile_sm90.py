"""qvdp's GPU-path Triton kernels compile for Hopper (sm_90a) with the installed Triton, on any machine.

The GPU machine has Triton 3.6; CI and PyPI have 3.9. The interpreter tests check the kernels' math but
not Triton's GPU compiler, so this compiles the launches of the default GPU paths (the tile configs an H100
gets: TMA descriptors, QTMA, register caps) through triton.compile with Triton's bundled ptxas
(tests/_compile_sm90.py), in a subprocess without TRITON_INTERPRET: attention at D=64/72/80/128 in
bf16/fp16/fp32 (D=64 also without RoPE; with RoPE v9's pre-pass and the programmatic dependent launch),
the RoPE pass, the merger's norms (block and chunked kernels) and GELU pass (launched as programmatic
dependents), the residual LayerNorm, the position embedding. Not covered: the opt-in Triton merger fc1 and the
push gather's Triton fallback."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
EXPECTED = {"_pack_kv", "_rot_pack", "_varlen_attn_fwd_tma", "_varlen_attn_fwd", "_rope_qk", "_rope_qk_tile",
            "_row_norm_tile", "_row_stats_tile", "_row_norm_chunks", "_row_stats_chunks", "_fold_stats_tile",
            "_add_layernorm", "_pos_embed_add", "_attn_fwd_gluon", "_gelu_inplace"}


def test_gpu_kernels_compile_for_sm90():
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run([sys.executable, os.path.join(HERE, "_compile_sm90.py")], capture_output=True, text=True,
                       env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    bad = [rec for rec in recs if not rec["ok"]]
    assert not bad, bad
    assert EXPECTED <= {rec["kernel"] for rec in recs}
