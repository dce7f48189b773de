#!/usr/bin/env bash
# One device-tool call: build, test and benchmark on a GPU machine; everything lands in $OUT.
#   bash scripts/gpu_session.sh single   # GPU tests + attention sweep/benchmark + merger benchmark (1 GPU)
#   bash scripts/gpu_session.sh diag     # GPU tests + encoder diagnostics (diag_encoder.py single) + attention
#   bash scripts/gpu_session.sh dp       # (4 GPUs) new GPU tests, multi-GPU tests, DP diagnostics, encoder benchmark
#   bash scripts/gpu_session.sh gather   # (4 GPUs) gather benchmark at 2 and 4 GPUs, GPU demo
#   bash scripts/gpu_session.sh multi    # multi-GPU tests, encoder + gather benchmarks, GPU demo
#   bash scripts/gpu_session.sh x4h100   # (4 GPUs, CUTLASS .so carried) DP encoder on H100s, else merger profile (ONLY_H100=1: nothing)
#   bash scripts/gpu_session.sh x4final  # (4 GPUs, CUTLASS .so carried) DP encoder, CUTLASS tests, multi-GPU tests
#   bash scripts/gpu_session.sh s14a     # (1 GPU) attention GPU tests + bench (v6 D=64)
#   bash scripts/gpu_session.sh s15a     # (1 GPU) attention GPU tests + bench (v9 D=64)
#   bash scripts/gpu_session.sh s15n     # (1 GPU, CUTLASS .so carried) every single-GPU test, the attention file first
#   bash scripts/gpu_session.sh s17a     # (1 GPU) attention v13 (Gluon D=64) GPU tests + bench
#   bash scripts/gpu_session.sh s17g     # (2-4 GPUs) push/native multi-GPU tests incl. tuned "auto", bench_gather at 4 and 2
#   bash scripts/gpu_session.sh s18g     # (2 GPUs, asked as H100s) every multi-GPU test, bench_gather and diag_link at 2
#   bash scripts/gpu_session.sh s19v     # (4 GPUs) the pipelined relay's piece size x resident blocks (diag_push), L2 check at 2, every multi-GPU test
#   bash scripts/gpu_session.sh s19b     # (4 GPUs) push tests, diag_push variants at 4 and 2, bench_gather at 4 and 2
#   (s19b ran at commit 43dad40, with a diagnostic QVDP_PUSH_PIPELINE=2 "units for every plan", since removed)
#   bash scripts/gpu_session.sh s19c     # (4 GPUs) push/gather GPU tests + multi-GPU tests, diag_push and bench_gather at 4 and 2
#   bash scripts/gpu_session.sh s19d     # (4 GPUs, asked as H100s) diag_push and bench_gather at 4 (ran at commit 107ae53: auto then sent relay plans under 48 MB to NCCL)
#   bash scripts/gpu_session.sh s19e     # (4 GPUs) final gather code: bench_gather at 4 and 2, push tests
#   bash scripts/gpu_session.sh s19f     # (4 GPUs) launch bounds for the 4-row units (A/B against 4 blocks/SM), push tests, bench at 4
#   bash scripts/gpu_session.sh s20a     # (4 GPUs) ways of marking a relay piece ready (push.MARK): push tests, diag_push variants, bench_gather at 4
#   bash scripts/gpu_session.sh s20b     # (4 GPUs) the owner's copy mixed into the relay units (push.OWN_COPY) x marks: push tests, diag_push, bench_gather at 4 (last, mixed)
#   bash scripts/gpu_session.sh s20c     # (4 GPUs) defaults release + mixed: every multi-GPU test, diag_push piece rows (twice), bench_gather at 4 and 2
#   bash scripts/gpu_session.sh s20d     # (4 GPUs) 8-row pieces by default (launch bounds): every multi-GPU test, diag_push 4 vs 8 rows, bench_gather at 4 and 2
#   bash scripts/gpu_session.sh s20e     # (4 GPUs, asked as H100s) final code: push tests, bench_gather at 4 and 2
#   bash scripts/gpu_session.sh s20f     # (2 GPUs) "auto" takes NCCL for one-owner plans at 2 GPUs: bench_gather at 2, push tests
#   bash scripts/gpu_session.sh s21a     # (1 GPU, CUTLASS .so carried) merger: fc1 forms x CUTLASS tiles x tile orders, merger tests, bench_merger
#     (s21a ran at commit 95f8162, with a Triton bias+GELU pass for the cublas path, since removed)
#   bash scripts/gpu_session.sh s21b     # (1 GPU, CUTLASS .so carried) merger: fc2 cuBLAS vs CUTLASS linear, fc1 again, profile, tests, bench ("tuned")
#     (s21a-s21c name CUTLASS configurations 8-10, 16-18, 20, dropped after session 21: rerun them at their commits; s21b ran at 00908da)
#   bash scripts/gpu_session.sh s21c     # (1 GPU, CUTLASS .so carried) merger: GELU through erfc vs erff in the fc1 epilogue (+ SM clock / power), merger tests
#     (s21c ran at commit f78936e, with the erfc GELU as variants 21-24, since removed)
#   bash scripts/gpu_session.sh s21d     # (1 GPU, CUTLASS .so carried) merger "auto" = "tuned" at every size: bench_merger, the tower A/B tuned vs cublas, every single-GPU test but attention (ran at ba58efe)
#   bash scripts/gpu_session.sh s21e     # (1 GPU, CUTLASS .so carried) final merger code ("tuned" from 6400 merged rows): merger auto/tuned tests, bench_merger twice
#     (ran three times: af13850 (tests passed, the bench hit a typo), 0c06bfe (fixed-order tuner), 04ed011 (final; TEST_T=1 skipped the tests))
#   bash scripts/gpu_session.sh s22a     # (1 GPU, CUTLASS .so carried) "tuned" + whole-merger pair round: single-GPU tests but attention, bench_merger --pairs-ab
#   bash scripts/gpu_session.sh s22b     # (1 GPU, CUTLASS .so carried) bench_merger --pairs-ab again, merger profile with the picks
#   bash scripts/gpu_session.sh s22c     # (1 GPU, CUTLASS .so carried) final merger code: merger GPU tests, bench_merger --pairs-ab, profile (tuning time), tower tuned vs cublas
#   bash scripts/gpu_session.sh s22d     # (1 GPU, CUTLASS .so carried) forced stream-K (21-23): fc2/fc1 diag, merger tests, bench_merger
#   bash scripts/gpu_session.sh s22e     # (1 GPU, CUTLASS .so carried) profile of "tuned" at 3520 rows + quick bench (the s22d anomaly)
#   bash scripts/gpu_session.sh s22f     # (1 GPU, CUTLASS .so carried) final merger code: merger GPU tests, bench_merger --pairs-ab, profile
#   bash scripts/gpu_session.sh s22g     # (1 GPU, CUTLASS .so carried) quick bench with every sample printed (QVDP_BENCH_SPREAD), profile of two post-shuffle 3520-row shapes
#   bash scripts/gpu_session.sh s22h     # (1 GPU, CUTLASS .so carried) final merger code: tuned/auto/graph/linear/stream-K tests, bench_merger --pairs-ab
#   bash scripts/gpu_session.sh s23a     # (1 GPU, CUTLASS .so carried) merger host path (Params cache, unchecked launch, fast_launch norms): merger GPU tests, diag_merger_host, bench_merger
#   bash scripts/gpu_session.sh s23b     # (1 GPU, CUTLASS .so carried) row_norm tiles + Triton launcher again: merger GPU tests, diag_merger_host (norm sweep incl. post widths), bench_merger
#     (s23b ran at commit 68b8a8e + the Triton launcher back, with row_norm's tiles changed, since reverted)
#   bash scripts/gpu_session.sh s23c     # (1 GPU, CUTLASS .so carried) final code: every single-GPU test but attention, bench_merger twice
#   bash scripts/gpu_session.sh s23d     # (1 GPU, CUTLASS .so carried) the tuner's samples behind a GPU busy-wait: tune/tuned/auto/graph tests, profile (tuning times), bench_merger
#   (s23f, busy-wait A/B/A, ran as a plain command: QVDP_TUNE_HEAD=1000000 / 0 / 1000000 python3 benchmarks/bench_merger.py --quick;
#    the overlap probe as: python3 benchmarks/diag_merger_overlap.py)
#   bash scripts/gpu_session.sh s23g     # (1 GPU, CUTLASS .so carried) the split round (two chunks on two streams): tuned/split/graph tests, profile, quick bench
#     (s23g ran at commit 53d00a4, with the split round, since reverted: see benchmarks/NOTES.md session 23)
#   (s18x4, 4 x H100, ran as a plain command: python3 setup.py build_ext --inplace; python3 benchmarks/bench_gather.py --worlds 4)
#   bash scripts/gpu_session.sh s24a     # (1 GPU, CUTLASS .so carried) cuBLAS's fc1 tile (128x160, cluster 2x1) as CUTLASS kernels 24-27: their tests, fc1 / fc2 diag, bench_merger with them as candidates
#     (s24a ran at commit 5f65bb8, with variants 24-27, since removed)
#   (s24b, the context diag, and s24c, the passes diag, ran as plain commands: python3 benchmarks/diag_merger_context.py;
#    cd benchmarks; python3 diag_merger_passes.py --rounds 25 (s24c's diag had its own split-block kernels, since moved into qvdp))
#   bash scripts/gpu_session.sh s24d     # (1 GPU, CUTLASS .so carried) row norm / statistics as two power-of-two blocks: merger GPU tests, passes diag, bench_merger
#     (s24d ran at commit 638e7f5, with 4 warps per program at 4608 wide)
#   bash scripts/gpu_session.sh s24f     # (1 GPU, CUTLASS .so files carried, _merger_fold.so too) the folded per-patch norm (v30): fold/tuned/graph tests, profile, bench_merger
#     (s24f ran at commit 7fbf220, with the rescale loading its factors per accumulator element: v30 70% slower)
#   bash scripts/gpu_session.sh s24g     # (1 GPU, CUTLASS .so files carried) the fold's rescale with one load per row / column: fold/tuned tests, profile, bench_merger, every single-GPU test but attention
#   bash scripts/gpu_session.sh s24h     # (1 GPU, CUTLASS .so files carried) the fold's factors loaded before each chunk's MMAs: fold tests, diag_merger_fold
#     (s24h ran at commit 4c08cea, building the native extension (not in the no-build list then); its diag failed on the main library not being loaded;
#      the fold diag then ran as a plain command: cd benchmarks; python3 diag_merger_fold.py --rounds 11)
#   (s25d, the overlap probe, and s25i, the final GPU tests, ran as plain commands: cd benchmarks; python3 diag_merger_overlap.py /
#    python3 -m pytest -q -m gpu tests/test_patch_merger.py -k "row_norm or row_stats or row_chunks or tuned or auto or cutlass_lib")
#   (s26i, the second bench run of the final code, ran as: python3 benchmarks/bench_merger.py --out $OUT/m)
#   (s26e, the chain at 3520 rows, and s26f, the diag's poisoned check, ran as plain commands: cd benchmarks; python3
#    diag_merger_context.py --shapes pre:3520:1152:2048 post:3520:1152:2048 --variants 0 43 / python3
#    benchmarks/diag_merger_gemm.py --m 3520 --nk 4608 --variants 0 4 43 --extra-lib qvdp/_merger_diag.so --extra-variants 50 52 54)
#   bash scripts/gpu_session.sh s28a     # (1 GPU) the GELU pass after cuBLAS's fc1 from L2: Triton in-place GELU in address / reverse order, chains (diag_merger_l2)
#   bash scripts/gpu_session.sh s28b     # (1 GPU, CUTLASS .so files carried) GEMM time against M around 3520 rows (diag_merger_waves), GELU pass math forms (diag_merger_l2)
#   bash scripts/gpu_session.sh s28c     # (1 GPU, CUTLASS .so files + qvdp/_merger_diag.so of 60 62 63 carried) the erfc-fit GELU: gelu pass tests, fc1 epilogue variants 60-63 against 0 / 12 / 43, GELU pass forms
#   bash scripts/gpu_session.sh s28d     # (1 GPU, CUTLASS .so files + qvdp/_merger_diag.so of 60 62 63 carried) GeluErfc in every fc1 kernel, qvdp's GELU pass in the cublas form: every merger GPU test, fc1 against the erff epilogue (60-63), bench_merger
#   bash scripts/gpu_session.sh s28e     # (1 GPU, CUTLASS .so files carried) the Triton passes as programmatic dependents: PDL / GELU / tuned / graph tests, bench_merger --quick with QVDP_PASS_PDL 0 / 1 / 0 / 1
#   (s28g, s28h, s28i ran as plain commands: python3 benchmarks/bench_merger.py --out $OUT/m; the PDL / GELU / graph /
#    tuned merger GPU tests with and without QVDP_PASS_PDL=0; python3 benchmarks/diag_merger_waves.py --ms 3520 6400
#    --variants --fc2-variants 14 45 --extra-lib qvdp/_merger_diag2.so --extra-fc2-variants 64 65, with the diagnostics
#    library built from benchmarks/results/logs/h200-s28/fc2_stream_k-s28i.patch)
#   bash scripts/gpu_session.sh s28f     # (1 GPU, CUTLASS .so files and .whl carried) final code: every single-GPU test outside the attention file, bench_merger (as s25h)
#   bash scripts/gpu_session.sh s27a     # (1 GPU, CUTLASS .so files carried) the per-patch norm applied to the A tiles in shared memory (31, 32): fold tests, fold diag
#   bash scripts/gpu_session.sh s27b     # (1 GPU, CUTLASS .so files carried) the same, A rescaled in registers (RS wgmma, 33, 34)
#     (s27a and s27b ran on uncommitted trees, both forms dropped: s27b's tree is benchmarks/results/logs/h200-s27/norm_a_rs-s27b.patch
#      against commit c49b52f; s27a's differed in csrc/qvdp_fold_mainloop.h only, see benchmarks/NOTES.md session 27)
#   bash scripts/gpu_session.sh s27c     # (1 GPU, CUTLASS .so files carried) the CUTLASS kernels launched with PDL: every merger GPU test, PDL on / off diag, bench_merger
#   bash scripts/gpu_session.sh s27d     # (1 GPU, CUTLASS .so files carried) PDL on / off: diag at 3520 rows, bench_merger --quick with QVDP_CUTLASS_PDL 0 / 1 / 0 / 1
#   bash scripts/gpu_session.sh s27e     # (1 GPU, CUTLASS .so files carried) final code: every single-GPU test outside the attention file, bench_merger (as s25h)
#   bash scripts/gpu_session.sh s27f     # (1 GPU, CUTLASS .so files carried) the Triton first pass with the largest shared carveout or the default: merger chains eager / graph
#   bash scripts/gpu_session.sh s27g     # (1 GPU, CUTLASS .so files carried) the review's mends: PDL / tuned / graph / cutlass tests, the chain diagnostics briefly
#   bash scripts/gpu_session.sh s26h     # (1 GPU, CUTLASS .so files carried) final code (pair samples of ~3 ms): tuned / auto / graph tests, bench_merger
#   bash scripts/gpu_session.sh s26g     # (1 GPU, CUTLASS .so files carried) bench_merger --quick with the pair round's samples 3 / 10 / 3 calls long
#   bash scripts/gpu_session.sh s26d     # (1 GPU, CUTLASS .so files carried) final code (v43 / v45 tuning candidates): every merger GPU test, bench_merger twice
#   bash scripts/gpu_session.sh s26c     # (1 GPU, qvdp/_merger_diag.so of 50 52 54 55 56 carried) fc1 diag: ping-pong 64x256 2x1, 128x176 (54-56)
#   bash scripts/gpu_session.sh s26b     # (1 GPU, CUTLASS .so files + qvdp/_merger_diag.so carried) the cooperative epilogue: sub-tiles 128x64 / 128x128 (46-49), vector tree without GELU, lean tree (50-53): tests, fc1 diag, bench_merger
#   (s26a ran at commit 7d58909 (variants 40-45), s26b at b4a8e38 (46-49; diag library 50-53), s26c at 5683267 (diag
#    library 50 52 54 55 56); of these only 43 and 45 stay in the package, 50 and 52 in merger_gemm.cu for the diag library)
#   bash scripts/gpu_session.sh s26a     # (1 GPU, CUTLASS .so files carried) tiles of N 160 / 144 from one wgmma (40-45): fc1 tests, fc1 / fc2 diag (+ cuBLAS's kernel names), bench_merger with them as candidates
#   bash scripts/gpu_session.sh s25h     # (1 GPU, CUTLASS .so files carried) final code: every single-GPU test outside the attention file, bench_merger
#   bash scripts/gpu_session.sh s25g     # (1 GPU, CUTLASS .so files carried) the chunked norm / statistics in the merger: merger GPU tests, chunks diag, bench_merger
#   bash scripts/gpu_session.sh s25f     # (1 GPU) diag_merger_chunks: the norm / statistics passes with the row as equal power-of-two chunks
#   bash scripts/gpu_session.sh s25e     # (1 GPU, CUTLASS .so files carried) final code: every single-GPU test outside the attention file
#   bash scripts/gpu_session.sh s25c     # (1 GPU, CUTLASS .so files carried) the tuned path's host trims: tuned tests, host profile, bench_merger
#   bash scripts/gpu_session.sh s25b     # (1 GPU, CUTLASS .so files carried) diag_merger_hostprof: the tuned merger's host time by layer and function
#   bash scripts/gpu_session.sh s25a     # (1 GPU, CUTLASS .so files carried) merger GPU tests, diag_merger_split (chunks on two streams, tuned kernels: GPU / host / graph us)
#   bash scripts/gpu_session.sh s24e     # (1 GPU, CUTLASS .so carried) two warps per norm / statistics program: merger GPU tests, passes diag, bench_merger twice
#   bash scripts/gpu_session.sh s16a     # (1 GPU) D=64-path attention GPU tests + bench (ran on v11 OVL, since removed)
#   bash scripts/gpu_session.sh s14f     # (4 GPUs) multi-GPU tests, bench_gather 4 and 2, (H100) DP encoder at 4, diag_push
#   bash scripts/gpu_session.sh s14h     # (2 x H100 only) multi-GPU tests, bench_gather and diag_push at 2 GPUs
#   bash scripts/gpu_session.sh s13m     # (1 GPU, CUTLASS .so carried) merger tests, stream-K A/B, bench_merger ("auto" paths)
#   bash scripts/gpu_session.sh s13n     # (1 GPU, CUTLASS .so carried) HF-equivalence + every single-GPU test
#   bash scripts/gpu_session.sh s13l     # (2-4 GPUs) diag_link: push vs pull vs copy engines for one owner's rows
#   bash scripts/gpu_session.sh s13f     # (4 GPUs) every multi-GPU test, diag_push, bench_gather at 4 and 2
#   (s13g / s13h, the relay-grid and pull-relay / assist experiments, ran at commits 3ad1003 / d072b94: see benchmarks/NOTES.md session 13)
#   (s14g, the relay's first stage by copy engines, ran at commit d46ef9b: see benchmarks/NOTES.md session 14)
set -uo pipefail
STAGE=${1:-single}
OUT=${OUT:-/tmp/qvdp_out}
mkdir -p "$OUT" logs
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-100000} ))  # whole-call budget: no step runs past it
step() {
  local name=$1; shift; local t0=$(date +%s); local t=${T:-900}; local left=$(( DEADLINE - t0 ))
  [ "$left" -lt "$t" ] && t=$left
  if [ "$t" -le 5 ]; then echo "=== $name: SKIPPED (call budget spent)"; return; fi
  echo "=== $name (limit ${t}s): $*"; timeout "$t" "$@" > "logs/$name.log" 2>&1; local rc=$?
  echo "=== $name rc=$rc $(( $(date +%s) - t0 ))s"; tail -n "${TAILN:-25}" "logs/$name.log"
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -8
on_h100() { nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -q H100; }
case "$STAGE" in  # stages that need H100s and run nothing on other cards
  s14h|s4z|s7f|s8f|s4w|s6d) if ! on_h100; then echo "not an H100: nothing run"; exit 0; fi ;;
esac
build=1
case "$STAGE" in  # stages without the native build (mostly single-GPU work; s5e and x4h100 build on H100s only)
  s28a|s28b|s28c|s28d|s28e|s28f|s28g|s28h|s27a|s27b|s27c|s27d|s27e|s27f|s27g|s26a|s26b|s26c|s26d|s26e|s26f|s26g|s26h|s25a|s25b|s25c|s25d|s25e|s25f|s25g|s25h|s24a|s24b|s24c|s24d|s24e|s24f|s24g|s24h|s23a|s23b|s23c|s23d|s23g|s22a|s22b|s22c|s22d|s22e|s22f|s22g|s22h|s21a|s21b|s21c|s21d|s21e|s5f|s7d|s7e|s8c|s8d|s8i|s9h|s10b|s10c|s10g|s11a|s12m|s12n|s13m|s13n|s14a|s15a|s16a|s17a|s15n|s13l|s11c|s11d|s11e|s6a|s6b)
    build=0 ;;
  s5e) on_h100 || build=0 ;;
  x4h100) on_h100 && build=1 || build=0 ;;
esac
if [ "$build" = 1 ]; then
  T=${BUILD_T:-200} TAILN=3 step build python3 setup.py build_ext --inplace  # (s16g: a cold build took > 60 s)
fi
python3 -m qvdp.env
# (s16g, 2 GPUs, ran at commit 4426f6a: push tests and bench_gather with copy-engine runs; reverted)
if [ "$STAGE" = s17a ]; then  # session 17, one GPU: attention v13 (Gluon, D=64) GPU tests, then the attention benchmark
  T=${ATT_T:-260} TAILN=10 step attention_tests python3 -m pytest -q -m gpu tests/test_attention.py -k "${ATT_K:-gluon or tma_kernel or head_dims or compile}" -p no:cacheprovider --durations=6
  T=${BENCH_T:-260} TAILN=70 step bench_attention python3 benchmarks/bench_attention.py --out logs/a
elif [ "$STAGE" = s19v ]; then  # session 19, 4 GPUs: relay piece size / occupancy variants, L2-evicted one-call, tests
  T=${DIAG_T:-150} TAILN=60 step diag_push4 python3 benchmarks/diag_push.py --worlds 4 --flush \
    --workloads "one 720p image" "skewed 1280^2+3x256^2" --variants ${VARIANTS:-16: 8: 4: 2: 1: 16:1 4:2 4:1 1:4 1:2}
  T=${DIAG2_T:-90} TAILN=20 step diag_push2 python3 benchmarks/diag_push.py --worlds 2 --flush --workloads "one 720p image" "skewed 1280^2+3x256^2"
  T=${TEST_T:-300} TAILN=12 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
elif [ "$STAGE" = s19b ]; then  # session 19, 4 GPUs: 4-row relay pieces + NCCL for small relay plans: push tests, units for every plan, bench_gather at 4 and 2
  T=${TEST_T:-150} TAILN=6 step push_tests python3 -m pytest -q -m multigpu tests/test_multigpu.py -k push_gather_exact -p no:cacheprovider
  T=${DIAG_T:-120} TAILN=70 step diag_push python3 benchmarks/diag_push.py --worlds 4 2 --variants 16: 4::2 8::2
  T=${BENCH_T:-260} TAILN=100 step bench_gather python3 benchmarks/bench_gather.py --worlds 4 2 --out logs/g
elif [ "$STAGE" = s19c ]; then  # session 19, 4 GPUs: push in gather_rows' fast path: push/gather GPU tests + every multi-GPU test, diag_push, bench_gather at 4 and 2
  T=${TEST_T:-260} TAILN=8 step gpu_tests python3 -m pytest -q -m "gpu or multigpu" tests/test_push.py tests/test_multigpu.py tests/test_gather.py -p no:cacheprovider
  T=${DIAG_T:-100} TAILN=70 step diag_push python3 benchmarks/diag_push.py --worlds 4 2
  T=${BENCH_T:-200} TAILN=100 step bench_gather python3 benchmarks/bench_gather.py --worlds 4 2 --out logs/g
elif [ "$STAGE" = s19d ]; then  # session 19, 4 GPUs (asked as H100s): diag_push and bench_gather at 4 only
  T=${DIAG_T:-100} TAILN=40 step diag_push python3 benchmarks/diag_push.py --worlds 4 --workloads "one 720p image" "skewed 1280^2+3x256^2"
  T=${BENCH_T:-150} TAILN=70 step bench_gather python3 benchmarks/bench_gather.py --worlds 4 --out logs/g
elif [ "$STAGE" = s19e ]; then  # session 19, 4 GPUs: the final gather code, bench_gather at 4 and 2, push tests
  T=${BENCH_T:-200} TAILN=100 step bench_gather python3 benchmarks/bench_gather.py --worlds 4 2 --out logs/g
  T=${TEST_T:-150} TAILN=6 step push_tests python3 -m pytest -q -m multigpu tests/test_multigpu.py -k push_gather_exact -p no:cacheprovider
elif [ "$STAGE" = s19f ]; then  # session 19, 4 GPUs: launch bounds for the small unit forms (4 rows: 6 blocks/SM), A/B, push tests, bench at 4
  T=${DIAG_T:-90} TAILN=40 step diag_push python3 benchmarks/diag_push.py --worlds 4 --workloads "one 720p image" "skewed 1280^2+3x256^2" --variants 4:4 2: 2:5 8:
  T=${TEST_T:-100} TAILN=6 step push_tests python3 -m pytest -q -m multigpu tests/test_multigpu.py -k push_gather_exact -p no:cacheprovider
  T=${BENCH_T:-100} TAILN=40 step bench_gather python3 benchmarks/bench_gather.py --worlds 4 --out logs/g
elif [ "$STAGE" = s20a ]; then  # session 20, 4 GPUs: ready marks without the fence.sc / per warp: tests, diag_push, bench_gather at 4
  T=${TEST_T:-150} TAILN=6 step push_tests python3 -m pytest -q -m multigpu tests/test_multigpu.py -k push_gather_exact -p no:cacheprovider
  T=${DIAG_T:-150} TAILN=60 step diag_push python3 benchmarks/diag_push.py --worlds 4 --workloads "one 720p image" "skewed 1280^2+3x256^2" \
    --variants ${VARIANTS:-4::fence 4::release 4::warp 2::warp 8::warp 16::release 4:1:fence 4:1:release 4:1:warp}
  QVDP_PUSH_MARK=${BMARK:-release} T=${BENCH_T:-150} TAILN=40 step bench_gather python3 benchmarks/bench_gather.py --worlds 4 --out logs/g
elif [ "$STAGE" = s20b ]; then  # session 20, 4 GPUs: owner's copy mixed into the relay units, marks: tests, diag_push, bench_gather at 4 twice
  T=${TEST_T:-150} TAILN=6 step push_tests python3 -m pytest -q -m multigpu tests/test_multigpu.py -k push_gather_exact -p no:cacheprovider
  T=${DIAG_T:-150} TAILN=60 step diag_push python3 benchmarks/diag_push.py --worlds 4 --workloads "one 720p image" "skewed 1280^2+3x256^2" \
    --variants ${VARIANTS:-4::fence:last 4::release:last 4::release:mixed 4::warp:mixed 8::release:mixed 2::release:mixed 16::release:mixed 4:2:release:mixed}
  QVDP_PUSH_OWN=last T=${BENCH_T:-120} TAILN=30 step bench_gather_last python3 benchmarks/bench_gather.py --worlds 4 --out logs/g_last
  QVDP_PUSH_OWN=mixed T=${BENCH_T:-120} TAILN=30 step bench_gather_mixed python3 benchmarks/bench_gather.py --worlds 4 --out logs/g_mixed
elif [ "$STAGE" = s20c ]; then  # session 20, 4 GPUs: release marks + owner's copy mixed by default: all multi-GPU tests, piece rows, bench at 4 and 2
  T=${TEST_T:-260} TAILN=12 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
  T=${DIAG_T:-150} TAILN=60 step diag_push python3 benchmarks/diag_push.py --worlds 4 --workloads "one 720p image" "skewed 1280^2+3x256^2" \
    --variants ${VARIANTS:-2: 4: 8: 16: 4::fence:last 2: 4: 8:}
  T=${BENCH_T:-150} TAILN=70 step bench_gather python3 benchmarks/bench_gather.py --worlds 4 2 --out logs/g
elif [ "$STAGE" = s20d ]; then  # session 20, 4 GPUs: 8-row relay pieces with launch bounds: every multi-GPU test, diag_push 4 vs 8 rows, bench at 4 and 2
  T=${TEST_T:-260} TAILN=6 step multigpu_tests python3 -m pytest -q -m multigpu tests -p no:cacheprovider
  T=${DIAG_T:-150} TAILN=60 step diag_push python3 benchmarks/diag_push.py --worlds 4 2 --workloads "one 720p image" "skewed 1280^2+3x256^2" \
    --variants ${VARIANTS:-4: 8: 2: 4: 8: 4::fence:last}
  T=${BENCH_T:-150} TAILN=70 step bench_gather python3 benchmarks/bench_gather.py --worlds 4 2 --out logs/g
elif [ "$STAGE" = s20e ]; then  # session 20, 4 GPUs (asked as H100s): the final code's push tests and bench_gather at 4 and 2
  T=${TEST_T:-100} TAILN=6 step push_tests python3 -m pytest -q -m multigpu tests/test_multigpu.py -k push_gather_exact -p no:cacheprovider
  T=${BENCH_T:-100} TAILN=8 step bench_gather python3 benchmarks/bench_gather.py --worlds 4 2 --out logs/g
elif [ "$STAGE" = s21a ]; then  # session 21, one GPU: the merger's fc1 forms and CUTLASS tiles / tile orders, tests, bench
  python3 -c "from qvdp.ops import merger_gemm as m; print('cutlass merger:', m.unavailable_reason() or 'available')"
  T=${DIAG_T:-150} TAILN=200 step diag_merger_gemm python3 benchmarks/diag_merger_gemm.py --m 3520 6400 14080 --nk 4608 4096 \
    --variants ${VARIANTS:-0 1 3 4 8 9 10 11 12 13} --rasters 0 1 2
  T=${TEST_T:-150} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -k "${TEST_K:-fc1_gelu or bias_gelu or cublas or auto or graph}" -p no:cacheprovider
  T=${BENCH_T:-240} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
elif [ "$STAGE" = s21b ]; then  # session 21, one GPU: fc2 by CUTLASS (no activation) vs cuBLAS, fc1 again, profile
  T=${DIAG_T:-150} TAILN=250 step diag_merger_fc2 python3 benchmarks/diag_merger_gemm.py --fc2 --m 3520 6400 14080 --rasters 0 2
  T=${DIAG_T:-150} TAILN=100 step diag_merger_fc1 python3 benchmarks/diag_merger_gemm.py --m 3520 6400 14080 --variants 0 1 8 12 13 --rasters 0 2
  T=${PROF_T:-100} TAILN=80 step diag_merger_profile python3 benchmarks/diag_merger_profile.py --shapes pre:4x3520:1152:2048 post:4x3520:1152:2048 pre:4x3520:1024:2048
  T=${TEST_T:-200} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -k "${TEST_K:-linear or tuned or graph or auto or fc1_gelu}" -p no:cacheprovider
  T=${BENCH_T:-240} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
elif [ "$STAGE" = s21c ]; then  # session 21, one GPU: fc1 epilogue GELU erff vs erfc, clocks under load; every merger GPU test
  T=${DIAG_T:-200} TAILN=100 step diag_merger_fc1 python3 benchmarks/diag_merger_gemm.py --m 3520 6400 14080 \
    --variants 0 1 12 13 21 22 23 24 4 11 --clocks "addmm (bias)" "v1 " "v22 " "v4 " "v12 " "v23 "
  T=${TEST_T:-240} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -p no:cacheprovider
elif [ "$STAGE" = s21d ]; then  # session 21, one GPU: the final merger code ("auto" = "tuned"): bench, tower A/B, tests
  T=${BENCH_T:-200} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
  T=${TOWER_T:-150} TAILN=20 step diag_tower_merger python3 benchmarks/diag_tower_merger.py --workloads 4x720p "16 mixed" --forms tuned cublas
  T=${REST_T:-340} TAILN=12 step gpu_tests python3 -m pytest -q -m "gpu and not multigpu" tests --ignore=tests/test_attention.py -p no:cacheprovider
elif [ "$STAGE" = s22a ]; then  # session 22, one GPU: "tuned" with its whole-merger round: every single-GPU test but attention, bench (A/B)
  T=${REST_T:-240} TAILN=12 step gpu_tests python3 -m pytest -q -m "gpu and not multigpu" tests --ignore=tests/test_attention.py -p no:cacheprovider
  T=${BENCH_T:-300} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --pairs-ab --out logs/m
elif [ "$STAGE" = s22b ]; then  # session 22, one GPU: bench A/B again (run-to-run spread), profile with the picks
  T=${BENCH_T:-300} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --pairs-ab --out logs/m
  T=${PROF_T:-120} TAILN=80 step diag_merger_profile python3 benchmarks/diag_merger_profile.py --shapes pre:4x3520:1152:2048 post:4x3520:1152:2048 post:4x6400:1024:2048
elif [ "$STAGE" = s22c ]; then  # session 22, one GPU: final merger code (pairs, row buckets, cache file): merger tests, bench, profile, tower
  T=${TEST_T:-200} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -p no:cacheprovider
  T=${BENCH_T:-200} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --pairs-ab --out logs/m
  T=${PROF_T:-120} TAILN=80 step diag_merger_profile python3 benchmarks/diag_merger_profile.py --shapes pre:4x3520:1152:2048 post:56320:1152:4096
  T=${TOWER_T:-120} TAILN=20 step diag_tower_merger python3 benchmarks/diag_tower_merger.py --workloads 4x720p --forms tuned cublas
elif [ "$STAGE" = s22d ]; then  # session 22, one GPU: forced stream-K kernels (21-23): fc2 / fc1 diag, tests, bench with them as tuning candidates
  T=${DIAG_T:-150} TAILN=120 step diag_merger_fc2 python3 benchmarks/diag_merger_gemm.py --fc2 --m 3520 6400 14080 --variants 14 15 19 21 22
  T=${DIAG_T:-100} TAILN=40 step diag_merger_fc1 python3 benchmarks/diag_merger_gemm.py --m 3520 6400 --variants 1 7 23
  T=${TEST_T:-150} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -k "linear or fc1_gelu or stream_k or tuned or graph" -p no:cacheprovider
  T=${BENCH_T:-150} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
elif [ "$STAGE" = s22e ]; then  # session 22, one GPU: why "tuned" ran slower than its own picks at 3520 rows in s22d: profile, quick bench
  T=${PROF_T:-150} TAILN=150 step diag_merger_profile python3 benchmarks/diag_merger_profile.py --shapes post:4x3520:1152:2048 pre:4x3520:1152:2048 post:4x3520:1024:2560
  T=${BENCH_T:-100} TAILN=20 step bench_merger python3 benchmarks/bench_merger.py --quick --pairs-ab --out logs/m
elif [ "$STAGE" = s22f ]; then  # session 22, one GPU: the final merger code: every merger GPU test, bench (pairs A/B column), profile
  T=${TEST_T:-200} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -p no:cacheprovider
  T=${BENCH_T:-200} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --pairs-ab --out logs/m
  T=${PROF_T:-100} TAILN=80 step diag_merger_profile python3 benchmarks/diag_merger_profile.py --shapes pre:4x3520:1152:2048 post:4x6400:1152:4096
elif [ "$STAGE" = s22g ]; then  # session 22, one GPU: the slow post-shuffle 3520-row samples of s22d/s22f: quick bench with each system's samples, profile
  QVDP_BENCH_SPREAD=1 T=${BENCH_T:-100} TAILN=200 step bench_merger python3 benchmarks/bench_merger.py --quick --pairs-ab --out logs/m
  T=${PROF_T:-60} TAILN=80 step diag_merger_profile python3 benchmarks/diag_merger_profile.py --shapes post:4x3520:1024:2048 post:4x3520:1152:2048
elif [ "$STAGE" = s22h ]; then  # session 22, one GPU: final code (stream-K fc2 out of the tuning candidates): merger tests, bench
  T=${TEST_T:-80} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -k "tuned or auto or graph or linear or stream_k" -p no:cacheprovider
  T=${BENCH_T:-120} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --pairs-ab --out logs/m
elif [ "$STAGE" = s23a ]; then  # session 23, one GPU: the merger's host path: merger GPU tests, host diag, bench
  T=${TEST_T:-220} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -p no:cacheprovider
  T=${DIAG_T:-150} TAILN=90 step diag_merger_host python3 benchmarks/diag_merger_host.py --norm-sweep --out logs/host.jsonl
  T=${BENCH_T:-150} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
elif [ "$STAGE" = s23b ]; then  # session 23, one GPU: row_norm's tiles, Triton's launcher back: tests, host diag, bench
  T=${TEST_T:-150} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -k "${TEST_K:-norm or cutlass or tuned or auto or graph or params or operand}" -p no:cacheprovider
  T=${DIAG_T:-200} TAILN=90 step diag_merger_host python3 benchmarks/diag_merger_host.py --norm-sweep --out logs/host.jsonl
  T=${BENCH_T:-150} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
elif [ "$STAGE" = s23c ]; then  # session 23, one GPU: final code: single-GPU tests but attention, bench twice (spread)
  T=${REST_T:-300} TAILN=12 step gpu_tests python3 -m pytest -q -m "gpu and not multigpu" tests --ignore=tests/test_attention.py -p no:cacheprovider
  T=${BENCH_T:-120} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
  T=${BENCH_T:-120} TAILN=40 step bench_merger2 python3 benchmarks/bench_merger.py --out logs/m2
elif [ "$STAGE" = s23d ]; then  # session 23, one GPU: tuner samples behind a busy-wait (host launch time out of them)
  T=${TEST_T:-150} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -k "tune or auto or graph or params or operand" -p no:cacheprovider
  T=${PROF_T:-90} TAILN=60 step diag_merger_profile python3 benchmarks/diag_merger_profile.py --shapes pre:4x3520:1152:2048 post:4x3520:1152:5120
  T=${BENCH_T:-120} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
elif [ "$STAGE" = s28a ]; then  # session 28, one GPU: the GELU pass after cuBLAS's fc1, from L2 (reverse block order)
  T=${DIAG_T:-300} TAILN=80 step diag_l2 python3 benchmarks/diag_merger_l2.py --rounds ${ROUNDS:-15}
elif [ "$STAGE" = s28b ]; then  # session 28, one GPU: staircase or line (cuBLAS / CUTLASS time against M), GELU pass math
  T=${DIAG_T:-240} TAILN=60 step diag_waves python3 benchmarks/diag_merger_waves.py --rounds ${ROUNDS:-9}
  T=${DIAG_T:-200} TAILN=60 step diag_l2 python3 benchmarks/diag_merger_l2.py --rounds ${ROUNDS:-15}
elif [ "$STAGE" = s28c ]; then  # session 28, one GPU: the erfc-fit GELU in the CUTLASS epilogue (diagnostics library 60-63) and the GELU pass
  T=${TEST_T:-120} TAILN=8 step gelu_tests python3 -m pytest -q tests/test_patch_merger.py -k "gelu_pass or epilogue_exact" -p no:cacheprovider
  T=${DIAG_T:-300} TAILN=40 step diag_waves python3 benchmarks/diag_merger_waves.py --no-fc2 --ms ${MS:-3520 6400 14080} --variants 0 12 43 --extra-lib qvdp/_merger_diag.so --extra-variants ${EXTRA_V:-60 62 63} --rounds ${ROUNDS:-11}
  T=${DIAG_T:-200} TAILN=60 step diag_l2 python3 benchmarks/diag_merger_l2.py --rounds ${ROUNDS:-11}
elif [ "$STAGE" = s28d ]; then  # session 28, one GPU: GeluErfc in every fc1 kernel and qvdp's GELU pass: merger GPU tests, fc1 against the erff epilogue, bench_merger
  T=${TEST_T:-260} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -p no:cacheprovider
  T=${DIAG_T:-150} TAILN=14 step diag_waves python3 benchmarks/diag_merger_waves.py --no-fc2 --ms ${MS:-3520 6400 14080} --variants 0 12 43 --extra-lib qvdp/_merger_diag.so --extra-variants ${EXTRA_V:-60 62 63} --rounds ${ROUNDS:-11}
  T=${BENCH_T:-170} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
elif [ "$STAGE" = s28e ]; then  # session 28, one GPU: the merger's Triton passes launched as programmatic dependents (QVDP_PASS_PDL)
  T=${TEST_T:-150} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -k "pdl or gelu or tuned or graph or auto" -p no:cacheprovider
  i=0
  for p in ${PDLS:-0 1 0 1}; do
    i=$((i + 1))
    QVDP_PASS_PDL=$p T=${BENCH_T:-100} TAILN=14 step bench_quick$i-passpdl$p python3 benchmarks/bench_merger.py --quick --out logs/q$i
  done
elif [ "$STAGE" = s27a ] || [ "$STAGE" = s27b ]; then  # session 27, one GPU: the per-patch norm applied to A on its way to the MMAs (s27a: in shared memory, 31 / 32; s27b: in registers, 33 / 34; both uncommitted, see the list above): fold tests, fold diag
  T=${TEST_T:-150} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -k "fold or tuned" -p no:cacheprovider
  T=${DIAG_T:-200} TAILN=80 step diag_fold python3 benchmarks/diag_merger_fold.py --rounds ${ROUNDS:-11}
elif [ "$STAGE" = s27c ]; then  # session 27, one GPU: the CUTLASS kernels launched with PDL: merger GPU tests, the PDL diag, bench_merger
  T=${TEST_T:-240} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -p no:cacheprovider
  T=${DIAG_T:-240} TAILN=60 step diag_pdl python3 benchmarks/diag_merger_pdl.py --rounds ${ROUNDS:-11}
  T=${BENCH_T:-170} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
elif [ "$STAGE" = s27d ]; then  # session 27, one GPU: PDL on / off again: the diag at the 3520-row shapes (21 rounds), bench_merger --quick A/B/A/B
  T=${DIAG_T:-150} TAILN=30 step diag_pdl python3 benchmarks/diag_merger_pdl.py --rounds ${ROUNDS:-21} --shapes pre:3520:1152:2048 post:3520:1152:2048 pre:3520:1152:5120
  i=0
  for p in ${PDLS:-0 1 0 1}; do
    i=$((i + 1))
    QVDP_CUTLASS_PDL=$p T=${BENCH_T:-100} TAILN=14 step bench_quick$i-pdl$p python3 benchmarks/bench_merger.py --quick --out logs/q$i
  done
elif [ "$STAGE" = s27f ]; then  # session 27, one GPU: the first pass's shared-memory carveout, eager and graph-replayed chains
  T=${DIAG_T:-200} TAILN=30 step diag_carveout python3 benchmarks/diag_merger_carveout.py --rounds ${ROUNDS:-11}
elif [ "$STAGE" = s27g ]; then  # session 27, one GPU: the review's mends: PDL / tuned / graph / cutlass tests, the three chain diagnostics briefly
  T=${TEST_T:-200} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -k "pdl or tuned or graph or cutlass or auto" -p no:cacheprovider
  T=60 TAILN=20 step diag_context python3 benchmarks/diag_merger_context.py --shapes pre:3520:1152:2048 --variants 0
  T=60 TAILN=12 step diag_pdl python3 benchmarks/diag_merger_pdl.py --rounds 3 --shapes post:3520:1152:2048 --pairs 0:cublas
  T=60 TAILN=12 step diag_carveout python3 benchmarks/diag_merger_carveout.py --rounds 3 --shapes pre:3520:1152:2048
elif [ "$STAGE" = s26h ]; then  # session 26, one GPU: the pair round's samples by time (TUNE_PAIR_SAMPLE_MS): tuned / auto / graph tests, bench_merger
  T=${TEST_T:-150} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -k "tune or auto or graph or params or operand or cutlass" -p no:cacheprovider
  T=${BENCH_T:-150} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
elif [ "$STAGE" = s26g ]; then  # session 26, one GPU: the pair round's samples 3 / 10 / 3 calls long (A/B/A, 3520-row shapes)
  i=0
  for r in ${PAIR_REPS:-3 10 3}; do
    i=$((i + 1))
    QVDP_TUNE_PAIR_REPS=$r T=${BENCH_T:-100} TAILN=14 step bench_quick$i-reps$r python3 benchmarks/bench_merger.py --quick --out logs/q$i
  done
elif [ "$STAGE" = s26d ]; then  # session 26, one GPU: final code (v43 / v45 tuning candidates): every merger GPU test, bench_merger twice
  T=${TEST_T:-240} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -p no:cacheprovider
  T=${BENCH_T:-150} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
  T=${BENCH_T:-150} TAILN=40 step bench_merger2 python3 benchmarks/bench_merger.py --out logs/m2
elif [ "$STAGE" = s26c ]; then  # session 26, one GPU (qvdp/_merger_diag.so carried too): ping-pong tiles that fill whole rounds at M=3520 (diag library 54-56)
  T=${DIAG_T:-240} TAILN=90 step diag_fc1 python3 benchmarks/diag_merger_gemm.py --m 3520 6400 --nk 4608 4096 --variants ${FC1_V:-0 2 4 5 12 13 43 48} --extra-lib qvdp/_merger_diag.so --extra-variants ${EXTRA_V:-50 52 54 55 56} --clocks "cuBLAS mm" "v0 " "extra v54" "extra v55"
elif [ "$STAGE" = s26b ]; then  # session 26, one GPU (qvdp/_merger_diag.so carried too): the cooperative epilogue's cost: larger sub-tiles (46-49), the vector tree without GELU / the lean tree (diag library 50-53)
  T=${TEST_T:-200} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -k "fc1_gelu or linear_variants or params or launch" -p no:cacheprovider
  T=${DIAG_T:-240} TAILN=90 step diag_fc1 python3 benchmarks/diag_merger_gemm.py --m 3520 6400 14080 --nk 4608 4096 --variants ${FC1_V:-0 1 3 4 43 46 47 48 49} --extra-lib qvdp/_merger_diag.so --extra-variants ${EXTRA_V:-50 51 52 53} --clocks "cuBLAS mm" "v0 " "v46 " "extra v52"
  T=${BENCH_T:-200} TAILN=40 step bench_merger python3 -c "import sys, runpy; sys.path.insert(0, 'benchmarks'); import qvdp.ops.patch_merger as pm; pm.TUNE_FC1 = tuple(int(v) for v in '${TUNE1:-0 1 12 13 43 46 48 49}'.split()); pm.TUNE_FC2 = tuple(int(v) for v in '${TUNE2:-14 15 19 45}'.split()); print('candidates', pm.TUNE_FC1, pm.TUNE_FC2); sys.argv = ['bench_merger.py', '--out', 'logs/m'] + '${BENCH_ARGS:-}'.split(); runpy.run_path('benchmarks/bench_merger.py', run_name='__main__')"
elif [ "$STAGE" = s26a ]; then  # session 26, one GPU: CUTLASS tiles of N 160 / 144 from one wgmma each (extended shapes, 40-45): tests, fc1 / fc2 diag, bench_merger with them as candidates
  T=${TEST_T:-200} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -k "fc1_gelu or linear_variants or params or launch" -p no:cacheprovider
  T=${DIAG_T:-200} TAILN=90 step diag_fc1 python3 benchmarks/diag_merger_gemm.py --names --m 3520 6400 14080 --nk 4608 4096 --variants ${FC1_V:-0 1 4 13 40 41 42 43 44} --clocks "cuBLAS mm" "v4 " "v40 " "v41 "
  T=${DIAG_T:-150} TAILN=60 step diag_fc2 python3 benchmarks/diag_merger_gemm.py --names --fc2 --m 3520 6400 14080 --variants 14 15 19 45
  T=${BENCH_T:-200} TAILN=40 step bench_merger python3 -c "import sys, runpy; sys.path.insert(0, 'benchmarks'); import qvdp.ops.patch_merger as pm; pm.TUNE_FC1 = tuple(int(v) for v in '${TUNE1:-0 1 12 13 40 42 43 44}'.split()); pm.TUNE_FC2 = tuple(int(v) for v in '${TUNE2:-14 15 19 45}'.split()); print('candidates', pm.TUNE_FC1, pm.TUNE_FC2); sys.argv = ['bench_merger.py', '--out', 'logs/m'] + '${BENCH_ARGS:-}'.split(); runpy.run_path('benchmarks/bench_merger.py', run_name='__main__')"
elif [ "$STAGE" = s25h ] || [ "$STAGE" = s27e ] || [ "$STAGE" = s28f ]; then  # session 25, one GPU: final code: every single-GPU test outside the attention file, bench_merger
  T=${REST_T:-300} TAILN=12 step gpu_tests python3 -m pytest -q -m "gpu and not multigpu" tests --ignore=tests/test_attention.py -p no:cacheprovider
  T=${BENCH_T:-150} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
  if [ "$STAGE" = s27e ]; then  # eager against graph-replayed chains with and without a cluster (v6: v0's tile, no cluster)
    T=${DIAG_T:-150} TAILN=30 step diag_pdl python3 benchmarks/diag_merger_pdl.py --rounds 11 --shapes pre:3520:1152:2048 post:3520:1152:2048 --pairs 0:cublas 6:cublas 1:cublas 12:cublas
  fi
elif [ "$STAGE" = s25g ]; then  # session 25, one GPU: the chunked norm / statistics in the merger: merger GPU tests, chunks diag, bench_merger
  T=${TEST_T:-240} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -p no:cacheprovider
  T=${DIAG_T:-120} TAILN=100 step diag_chunks python3 benchmarks/diag_merger_chunks.py --rounds ${ROUNDS:-15}
  T=${BENCH_T:-200} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
elif [ "$STAGE" = s25f ]; then  # session 25, one GPU: norm / statistics with the row as equal power-of-two chunks
  T=${DIAG_T:-200} TAILN=120 step diag_chunks python3 benchmarks/diag_merger_chunks.py --rounds ${ROUNDS:-15}
elif [ "$STAGE" = s25e ]; then  # session 25, one GPU: final code: every single-GPU test outside the attention file
  T=${REST_T:-420} TAILN=12 step gpu_tests python3 -m pytest -q -m "gpu and not multigpu" tests --ignore=tests/test_attention.py -p no:cacheprovider
elif [ "$STAGE" = s25c ]; then  # session 25, one GPU: the tuned path's host trims: tuned tests, host profile, bench_merger
  T=${TEST_T:-150} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -k "tune or auto or graph or params or operand or cutlass" -p no:cacheprovider
  T=${DIAG_T:-100} TAILN=30 step diag_hostprof python3 benchmarks/diag_merger_hostprof.py --calls 150
  T=${BENCH_T:-200} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
elif [ "$STAGE" = s25b ]; then  # session 25, one GPU: where the "tuned" merger's host time goes
  T=${DIAG_T:-200} TAILN=200 step diag_hostprof python3 benchmarks/diag_merger_hostprof.py ${HP_ARGS:-}
elif [ "$STAGE" = s25a ]; then  # session 25, one GPU: merger GPU tests (session 24's review mends), the two-stream split with the tuned kernels
  T=${TEST_T:-240} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -p no:cacheprovider
  T=${DIAG_T:-240} TAILN=250 step diag_split python3 benchmarks/diag_merger_split.py
elif [ "$STAGE" = s24a ]; then  # session 24, one GPU: CUTLASS kernels on cuBLAS's fc1 tile (24-27)
  T=${TEST_T:-150} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -k "fc1_gelu or linear_variants or params" -p no:cacheprovider
  T=${DIAG_T:-150} TAILN=80 step diag_fc1 python3 benchmarks/diag_merger_gemm.py --m 3520 6400 14080 --nk 4608 4096 --variants ${FC1_V:-0 1 4 12 13 24 25 26} --clocks "cuBLAS mm" "addmm + aten" v24 v25 "v1 "
  T=${DIAG_T:-150} TAILN=60 step diag_fc2 python3 benchmarks/diag_merger_gemm.py --fc2 --m 3520 6400 14080 --variants 14 15 19 27
  T=${BENCH_T:-200} TAILN=40 step bench_merger python3 -c "import sys, runpy; sys.path.insert(0, 'benchmarks'); import qvdp.ops.patch_merger as pm; pm.TUNE_FC1 = tuple(int(v) for v in '${TUNE1:-0 1 12 13 24 26}'.split()); pm.TUNE_FC2 = tuple(int(v) for v in '${TUNE2:-14 15 19 27}'.split()); print('candidates', pm.TUNE_FC1, pm.TUNE_FC2); sys.argv = ['bench_merger.py', '--out', 'logs/m'] + '${BENCH_ARGS:-}'.split(); runpy.run_path('benchmarks/bench_merger.py', run_name='__main__')"
elif [ "$STAGE" = s24d ]; then  # session 24, one GPU: the norm / statistics passes as two power-of-two blocks
  T=${TEST_T:-240} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -p no:cacheprovider
  T=${DIAG_T:-150} TAILN=80 step diag_passes python3 benchmarks/diag_merger_passes.py --rounds 25 --no-gelu
  T=${BENCH_T:-200} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
elif [ "$STAGE" = s24e ]; then  # session 24, one GPU: two warps per norm / statistics program: tests, passes diag, bench twice
  T=${TEST_T:-240} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -p no:cacheprovider
  T=${DIAG_T:-150} TAILN=80 step diag_passes python3 benchmarks/diag_merger_passes.py --rounds 25 --no-gelu
  T=${BENCH_T:-200} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
  T=${BENCH_T:-200} TAILN=40 step bench_merger2 python3 benchmarks/bench_merger.py --out logs/m2
elif [ "$STAGE" = s24f ]; then  # session 24, one GPU: the folded per-patch norm (CUTLASS v30, _merger_fold.so): tests, profile, bench
  T=${TEST_T:-200} TAILN=12 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -k "fold or tuned or graph or params or fc1_gelu" -p no:cacheprovider
  T=${PROF_T:-90} TAILN=60 step diag_merger_profile python3 benchmarks/diag_merger_profile.py --shapes pre:4x3520:1152:2048 pre:4x6400:1152:4096
  T=${BENCH_T:-200} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
elif [ "$STAGE" = s24g ]; then  # session 24, one GPU: the fold's rescale with its loads per row / column once: tests, profile, bench, every single-GPU test but attention
  T=${TEST_T:-120} TAILN=8 step fold_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -k "fold or tuned" -p no:cacheprovider
  T=${PROF_T:-90} TAILN=40 step diag_merger_profile python3 benchmarks/diag_merger_profile.py --shapes pre:4x3520:1152:2048 pre:4x6400:1152:4096
  T=${BENCH_T:-150} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
  T=${REST_T:-240} TAILN=12 step gpu_tests python3 -m pytest -q -m "gpu and not multigpu" tests --ignore=tests/test_attention.py -p no:cacheprovider
elif [ "$STAGE" = s24h ]; then  # session 24, one GPU: the fold's factors loaded before each chunk's MMAs: fold tests, fold diag
  T=${TEST_T:-100} TAILN=8 step fold_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -k "fold" -p no:cacheprovider
  T=${DIAG_T:-100} TAILN=40 step diag_fold python3 benchmarks/diag_merger_fold.py
elif [ "$STAGE" = s23g ]; then  # session 23, one GPU: the "tuned" path's split round: tests, profile, quick bench
  T=${TEST_T:-120} TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -k "split or tuned or auto or graph or tune" -p no:cacheprovider
  T=${PROF_T:-60} TAILN=30 step diag_merger_profile python3 benchmarks/diag_merger_profile.py --shapes pre:4x3520:1152:2048 pre:4x3520:1024:2048
  T=${BENCH_T:-80} TAILN=16 step bench_merger python3 benchmarks/bench_merger.py --quick --out logs/m
elif [ "$STAGE" = s21e ]; then  # session 21, one GPU: the final merger code, bench twice (run-to-run spread)
  T=${TEST_T:-120} TAILN=6 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -k "auto or tuned or graph or linear" -p no:cacheprovider
  T=${BENCH_T:-200} TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
  T=${BENCH_T:-200} TAILN=40 step bench_merger2 python3 benchmarks/bench_merger.py --out logs/m2
elif [ "$STAGE" = s20f ]; then  # session 20, 2 GPUs: "auto" routing for one-owner plans: bench_gather at 2, then the push tests
  T=${BENCH_T:-45} TAILN=16 step bench_gather python3 benchmarks/bench_gather.py --worlds 2 --out logs/g
  T=${TEST_T:-80} TAILN=6 step push_tests python3 -m pytest -q -m multigpu tests/test_multigpu.py -k push_gather_exact -p no:cacheprovider
elif [ "$STAGE" = s18g ]; then  # session 18, 2 GPUs (asked as 2 x H100): every multi-GPU test, the gather at 2, link rates
  T=${TEST_T:-240} TAILN=12 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
  T=${BENCH_T:-200} TAILN=40 step bench_gather python3 benchmarks/bench_gather.py --worlds 2 --out logs/g
  T=${LINK_T:-90} TAILN=20 step diag_link python3 benchmarks/diag_link.py --worlds 2
elif [ "$STAGE" = s17g ]; then  # session 17, 2-4 GPUs: tuned "auto" gather: the push/native multi-GPU tests, bench_gather at 4 and 2
  T=${TEST_T:-200} TAILN=12 step multigpu_tests python3 -m pytest -q -s -m multigpu tests/test_multigpu.py -k "push_gather_exact or native_gather_exact" -p no:cacheprovider
  T=${BENCH_T:-240} TAILN=100 step bench_gather python3 benchmarks/bench_gather.py --worlds 4 2 --out logs/g
elif [ "$STAGE" = s16a ]; then  # session 16, one GPU: D=64-path attention GPU tests + bench
  # (ran at commit 960098e with v11 OVL the D=64 default, after diag --stage ovl; both since removed)
  T=200 TAILN=8 step attention_tests python3 -m pytest -q -m gpu tests/test_attention.py -k "head_dims or tma_kernel or compile" -p no:cacheprovider --durations=5
  T=230 TAILN=60 step bench_attention python3 benchmarks/bench_attention.py --out logs/a
elif [ "$STAGE" = s15a ]; then  # session 15, one GPU: attention v9 (D=64) tests + benchmark
  T=320 TAILN=8 step attention_tests python3 -m pytest -q -m gpu tests/test_attention.py -p no:cacheprovider
  T=250 TAILN=60 step bench_attention python3 benchmarks/bench_attention.py --out logs/a
elif [ "$STAGE" = s15n ]; then  # session 15, one GPU (CUTLASS .so carried): every single-GPU test (attention first)
  T=${ATT_T:-240} TAILN=20 step attention_tests python3 -m pytest -q -m gpu tests/test_attention.py -p no:cacheprovider --durations=8
  T=${REST_T:-340} TAILN=12 step gpu_tests python3 -m pytest -q -m "gpu and not multigpu" tests --ignore=tests/test_attention.py -p no:cacheprovider
elif [ "$STAGE" = s14a ]; then  # session 14, one GPU: attention v6 (D=64) tests + benchmark, row_norm split
  T=200 TAILN=8 step attention_tests python3 -m pytest -q -m gpu tests/test_attention.py -p no:cacheprovider
  # (the row_norm split diag and its tests ran here at commit 50cba7e; the split was reverted)
  T=230 TAILN=40 step bench_attention python3 benchmarks/bench_attention.py --out logs/a
elif [ "$STAGE" = s14f ]; then  # session 14, 4 GPUs: push.cu's shared piece copy: every multi-GPU test, gather at 4 and 2, then (H100 only) the DP encoder at 4, diag_push
  T=240 TAILN=12 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
  T=200 TAILN=100 step bench_gather python3 benchmarks/bench_gather.py --worlds 4 2 --out logs/g
  if nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -q H100; then
    T=200 TAILN=40 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 4 --out logs/e4
  fi
  T=120 TAILN=60 step diag_push python3 benchmarks/diag_push.py --worlds 4 2
elif [ "$STAGE" = s14h ]; then  # session 14, 2 x H100 only (else nothing past the build): multi-GPU tests, gather and push diag at 2 GPUs
  T=200 TAILN=12 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
  T=150 TAILN=60 step bench_gather python3 benchmarks/bench_gather.py --worlds 2 --out logs/g
  T=90 TAILN=30 step diag_push python3 benchmarks/diag_push.py --worlds 2
elif [ "$STAGE" = s13m ]; then  # session 13, one GPU: merger tests (cublas / auto paths), stream-K fc1 A/B, bench_merger
  T=200 TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -p no:cacheprovider
  T=150 TAILN=40 step diag_merger_cutlass python3 benchmarks/diag_merger_cutlass.py --variants 1 7 --winner logs/mg_winner
  export QVDP_MERGER_GEMM_VARIANT=$(cat logs/mg_winner 2>/dev/null || echo 1); echo "QVDP_MERGER_GEMM_VARIANT=$QVDP_MERGER_GEMM_VARIANT"
  T=300 TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
elif [ "$STAGE" = s13n ]; then  # session 13, one GPU: every single-GPU test (the tower's merger now "auto")
  T=500 TAILN=12 step gpu_tests python3 -m pytest -q -m "gpu and not multigpu" tests -p no:cacheprovider
elif [ "$STAGE" = s13l ]; then  # session 13, 2-4 GPUs, no build: who should drive the owner's NVLink copies (diag_link)
  T=200 TAILN=40 step diag_link python3 benchmarks/diag_link.py --worlds 2 4
elif [ "$STAGE" = s13f ]; then  # session 13, 4 GPUs: the final gather code: every multi-GPU test, push diag, gather at 4 and 2
  T=240 TAILN=12 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
  T=120 TAILN=60 step diag_push python3 benchmarks/diag_push.py --worlds 4 2
  T=200 TAILN=100 step bench_gather python3 benchmarks/bench_gather.py --worlds 4 2 --out logs/g
elif [ "$STAGE" = single ]; then
  T=420 TAILN=40 step gpu_tests python3 -m pytest -q -x -m "gpu and not multigpu" tests -p no:cacheprovider
  T=300 TAILN=40 step diag_attention python3 benchmarks/diag_attention.py --out logs/diag_attention.jsonl
  T=120 TAILN=40 step bench_attention python3 benchmarks/bench_attention.py
  T=300 TAILN=40 step bench_merger python3 benchmarks/bench_merger.py
elif [ "$STAGE" = diag ]; then
  T=200 TAILN=12 step gpu_tests python3 -m pytest -q -m "gpu and not multigpu" tests -p no:cacheprovider
  T=200 TAILN=150 step diag_encoder python3 benchmarks/diag_encoder.py single --out "$OUT"
  T=120 TAILN=40 step bench_attention python3 benchmarks/bench_attention.py --skip Flex
elif [ "$STAGE" = one ]; then  # one GPU: all GPU tests, attention + encoder (1 GPU) benchmarks, profile
  T=220 TAILN=8 step gpu_tests python3 -m pytest -q -m "gpu and not multigpu" tests -p no:cacheprovider
  T=60 TAILN=40 step bench_attention python3 benchmarks/bench_attention.py --skip Flex
  T=200 TAILN=45 step bench_encoder python3 benchmarks/bench_encoder.py --worlds
  T=100 TAILN=30 step diag_encoder python3 benchmarks/diag_encoder.py single --out "$OUT"
elif [ "$STAGE" = s4a ]; then  # session 4, one GPU: every GPU test, RoPE tuning, 1-GPU encoder, profile, attention
  T=240 TAILN=12 step gpu_tests python3 -m pytest -q -m "gpu and not multigpu" tests -p no:cacheprovider
  T=40 TAILN=12 step diag_rope python3 benchmarks/diag_rope.py
  T=150 TAILN=45 step bench_encoder python3 benchmarks/bench_encoder.py --worlds
  T=60 TAILN=60 step profile python3 benchmarks/diag_encoder.py profile --out "$OUT"
  T=60 TAILN=40 step bench_attention python3 benchmarks/bench_attention.py --skip Flex cuDNN
elif [ "$STAGE" = s4b ]; then  # session 4, one GPU: RoPE v5 vs v3, then the 1-GPU encoder with the faster one
  T=100 TAILN=12 step rope_tests python3 -m pytest -q -m gpu -k "rope or fa3 or graph" tests -p no:cacheprovider
  T=40 TAILN=12 step diag_rope python3 benchmarks/diag_rope.py --winner logs/rope_winner
  export QVDP_ROPE_IMPL=$(cat logs/rope_winner 2>/dev/null || echo tile); echo "QVDP_ROPE_IMPL=$QVDP_ROPE_IMPL"
  T=150 TAILN=30 step bench_encoder python3 benchmarks/bench_encoder.py --worlds
  T=60 TAILN=8 step profile python3 benchmarks/diag_encoder.py profile --out "$OUT"
  T=40 TAILN=40 step bench_attention python3 benchmarks/bench_attention.py --skip Flex cuDNN FA2
elif [ "$STAGE" = s4c ]; then  # session 4, one GPU: where the 3 ms between kernel sum and wall go; FA3 metadata
  T=60 TAILN=30 step profile python3 benchmarks/diag_encoder.py profile --out "$OUT"
  T=60 TAILN=20 step diag_fa3 python3 benchmarks/diag_fa3.py
elif [ "$STAGE" = s4d ]; then  # session 4, one GPU: host vs GPU time of a graph-replayed forward
  T=80 TAILN=8 step profile python3 benchmarks/diag_encoder.py profile --out "$OUT"
elif [ "$STAGE" = s4x ]; then  # session 4, 4 GPUs: NCCL tests, gather (minCTAs rows), encoder at 1/2/4 GPUs, attention
  T=120 TAILN=12 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
  T=150 TAILN=60 step bench_gather python3 benchmarks/bench_gather.py --worlds 4
  T=330 TAILN=50 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 2 4
  T=50 TAILN=36 step bench_attention python3 benchmarks/bench_attention.py --skip Flex cuDNN
elif [ "$STAGE" = s4y ]; then  # session 4, 4 GPUs: NCCL tests, gather at 4, encoder (full on H100, 16 mixed on H200)
  T=90 TAILN=6 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
  T=100 TAILN=40 step bench_gather python3 benchmarks/bench_gather.py --worlds 4
  if nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -q H200; then
    T=90 TAILN=20 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 4 --only "16 mixed" --out logs/enc16
  else
    T=200 TAILN=60 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 2 4
  fi
elif [ "$STAGE" = s4r ]; then  # session 4, one GPU: RoPE v6 vs v5/v3, 4 x 720p encoder (interleaved) twice
  T=80 TAILN=6 step rope_tests python3 -m pytest -q -m gpu -k "rope or fa3_backend" tests -p no:cacheprovider
  T=40 TAILN=14 step diag_rope python3 benchmarks/diag_rope.py --winner logs/rope_winner
  export QVDP_ROPE_IMPL=$(cat logs/rope_winner 2>/dev/null || echo tile); echo "QVDP_ROPE_IMPL=$QVDP_ROPE_IMPL"
  T=60 TAILN=8 step bench_encoder python3 benchmarks/bench_encoder.py --worlds --only 4x720p --out logs/e1
  T=60 TAILN=8 step bench_encoder2 python3 benchmarks/bench_encoder.py --worlds --only 4x720p --out logs/e2
elif [ "$STAGE" = s4w ]; then  # session 4, 4 x H100 only: 16 mixed and the video at 1 and 4 GPUs
  T=150 TAILN=30 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 4 --only "16 mixed" "video 32f" --out logs/e4
elif [ "$STAGE" = s7a ]; then  # session 7, 4 GPUs: on H100 16 mixed + video DP x4 (weighted planner); GPU tests of the device-side cu_seqlens
  if nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -q H100; then
    T=170 TAILN=30 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 4 --only "16 mixed" "video 32f" --out logs/e4
  fi
  T=150 TAILN=8 step gpu_tests_tables python3 -m pytest -q -m "gpu and not multigpu" tests/test_tables.py tests/test_hf_equivalence.py tests/test_pos_embed.py -p no:cacheprovider
  T=100 TAILN=8 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
elif [ "$STAGE" = s7b ]; then  # session 7, 4 x H100: every workload at 1, 2 and 4 GPUs; multi-GPU tests (new fault tests)
  if nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -q H100; then
    T=450 TAILN=75 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 2 4
  fi
  T=150 TAILN=10 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
elif [ "$STAGE" = s7d ]; then  # session 7, one GPU: FA3's fixed-length kernel for equal segments: tests, A/B, 1-GPU encoder
  T=150 TAILN=8 step gpu_tests_fa3 python3 -m pytest -q -m "gpu and not multigpu" tests/test_attention.py -k "fa3 or rope" tests/test_hf_equivalence.py -p no:cacheprovider
  T=150 TAILN=12 step diag_fa3_dense python3 benchmarks/diag_fa3_dense.py
  T=150 TAILN=30 step bench_encoder python3 benchmarks/bench_encoder.py --worlds --out logs/e1
elif [ "$STAGE" = s7e ]; then  # session 7, one GPU: the dense-FA3 threshold tests first, then every single-GPU test
  T=90 TAILN=6 step gpu_tests_fa3 python3 -m pytest -q -m gpu tests/test_attention.py -k "fa3" -p no:cacheprovider
  T=330 TAILN=10 step gpu_tests python3 -m pytest -q -m "gpu and not multigpu" tests -p no:cacheprovider
elif [ "$STAGE" = s7f ]; then  # session 7, 4 x H100 only: 16 mixed and the video at 1 and 4 GPUs, final code
  T=150 TAILN=30 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 4 --only "16 mixed" "video 32f" --out logs/e4
elif [ "$STAGE" = s8a ]; then  # next session, 4 x H100: where the rank check's time goes, then 16 mixed / video DP x4
  T=150 TAILN=8 step diag_rank_check python3 benchmarks/diag_rank_check.py --world 4
  T=150 TAILN=30 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 4 --only "16 mixed" "video 32f" --out logs/e4
elif [ "$STAGE" = s8b ]; then  # session 8, 4 x H100: plan check enqueued at the first output; NCCL tests; DP figures
  T=150 TAILN=8 step diag_rank_check python3 benchmarks/diag_rank_check.py --world 4
  T=150 TAILN=6 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
  T=200 TAILN=40 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 4 --only "16 mixed" "video 32f" 4x720p --out logs/e4
elif [ "$STAGE" = s8c ]; then  # session 8, one GPU: deferred biases (tests, pieces + tower A/B), the 1-GPU encoder table
  T=150 TAILN=8 step gpu_tests_norm python3 -m pytest -q -m gpu tests/test_layernorm.py tests/test_hf_equivalence.py -p no:cacheprovider
  T=200 TAILN=20 step diag_deferred_bias python3 benchmarks/diag_deferred_bias.py
  T=240 TAILN=30 step bench_encoder python3 benchmarks/bench_encoder.py --worlds --out logs/e1
elif [ "$STAGE" = s8d ]; then  # session 8, one GPU: every single-GPU test, deferred-bias pieces at 2 sizes + tower A/B, 1-GPU table
  T=330 TAILN=10 step gpu_tests python3 -m pytest -q -m "gpu and not multigpu" tests -p no:cacheprovider
  T=150 TAILN=20 step diag_deferred_bias python3 benchmarks/diag_deferred_bias.py
  T=200 TAILN=30 step bench_encoder python3 benchmarks/bench_encoder.py --worlds --out logs/e1
elif [ "$STAGE" = s8e ]; then  # session 8, 4 x H100: NCCL tests, then every workload at 1, 2 and 4 GPUs (deferred biases)
  T=150 TAILN=6 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
  T=420 TAILN=50 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 2 4 --out logs/e4
elif [ "$STAGE" = s8f ]; then  # session 8, 4 x H100 only: final code, 16 mixed / video / 4 x 720p at 1 and 4 GPUs
  T=200 TAILN=30 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 4 --only "16 mixed" "video 32f" 4x720p --out logs/e4
elif [ "$STAGE" = s8g ]; then  # session 8, 4 GPUs: the gather as SM-driven peer copies (pull/push relay, push direct)
  T=240 TAILN=60 step diag_gather_ipc python3 benchmarks/diag_gather_ipc.py --worlds 4 2
elif [ "$STAGE" = s8h ]; then  # session 8, 4 GPUs: SM push copies, launch-shape sweep at 2 and 4 GPUs
  T=240 TAILN=80 step diag_gather_ipc_sweep python3 benchmarks/diag_gather_ipc.py --worlds 2 4 --sm-only \
    --sm-configs 4,4096,8 8,2048,8 16,1024,4 2,8192,16 1,16384,16 8,4096,16 \
    --workloads "one 720p image" "skewed 1280^2+3x256^2" 4x720p
elif [ "$STAGE" = s8i ]; then  # session 8, 4 GPUs, no build: SM push copies with a one-program flag barrier
  T=150 TAILN=90 step diag_gather_ipc_flags python3 benchmarks/diag_gather_ipc.py --worlds 2 4 --sm-only \
    --sm-configs 16,1024,4 --flag-barrier
elif [ "$STAGE" = s9a ]; then  # session 9, 4 GPUs: push gather tests, gather benchmark at 2 and 4 GPUs, flag barriers
  T=240 TAILN=30 step push_tests python3 -m pytest -q -s -m gpu -k "push or native_gather or copy_kernel" tests -p no:cacheprovider
  T=200 TAILN=80 step bench_gather python3 benchmarks/bench_gather.py --worlds 2 4 --out logs/g
  T=150 TAILN=60 step diag_flags python3 benchmarks/diag_gather_ipc.py --worlds 4 2 --sm-only --sm-configs 16,1024,4 \
    --flag-barrier --workloads "one 720p image" "skewed 1280^2+3x256^2" 4x720p
elif [ "$STAGE" = s9b ]; then  # session 9, 2-4 GPUs: push gather with the CUDA form (csrc/push.cu): where the time goes, tests, bench
  T=200 TAILN=40 step diag_push python3 benchmarks/diag_push.py --worlds 2 4
  T=200 TAILN=12 step push_tests python3 -m pytest -q -s -m gpu -k "push or native_gather or copy_kernel" tests -p no:cacheprovider
  T=150 TAILN=50 step bench_gather python3 benchmarks/bench_gather.py --worlds 2 4 --out logs/g
elif [ "$STAGE" = s9c ]; then  # session 9, 4 GPUs: push gather (CUDA form, fast path) at 2 and 4 GPUs; DP figures on H100s
  T=150 TAILN=60 step diag_push python3 benchmarks/diag_push.py --worlds 2 4
  T=200 TAILN=12 step push_tests python3 -m pytest -q -s -m gpu -k "push or native_gather or copy_kernel" tests -p no:cacheprovider
  T=150 TAILN=90 step bench_gather python3 benchmarks/bench_gather.py --worlds 2 4 --out logs/g
  if nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -q H100; then
    T=220 TAILN=30 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 4 --only "16 mixed" "video 32f" 4x720p --out logs/e4
  fi
elif [ "$STAGE" = s9d ]; then  # session 9, 4 GPUs: push chunks round-robin over destinations; all multi-GPU tests
  T=150 TAILN=70 step diag_push python3 benchmarks/diag_push.py --worlds 2 4
  T=150 TAILN=90 step bench_gather python3 benchmarks/bench_gather.py --worlds 2 4 --out logs/g
  T=240 TAILN=12 step multigpu_tests python3 -m pytest -q -s -m "gpu and multigpu" tests -p no:cacheprovider
  T=60 TAILN=5 step copy_kernel_tests python3 -m pytest -q -m gpu -k copy_kernel tests -p no:cacheprovider
elif [ "$STAGE" = s9e ]; then  # session 9, 2 GPUs: build with the pipelined relay; all multi-GPU tests; push at 2 GPUs
  T=240 TAILN=14 step multigpu_tests python3 -m pytest -q -s -m "gpu and multigpu" tests -p no:cacheprovider
  T=100 TAILN=30 step diag_push python3 benchmarks/diag_push.py --worlds 2
  T=100 TAILN=50 step bench_gather python3 benchmarks/bench_gather.py --worlds 2 --out logs/g
  T=60 TAILN=5 step copy_kernel_tests python3 -m pytest -q -m gpu -k copy_kernel tests -p no:cacheprovider
elif [ "$STAGE" = s9f ]; then  # session 9, 4 GPUs: pipelined relay tests, diag (order / pipeline A/B), gather at 2 and 4 GPUs
  T=150 TAILN=12 step push_tests python3 -m pytest -q -s -m gpu -k push tests -p no:cacheprovider
  T=120 TAILN=60 step diag_push python3 benchmarks/diag_push.py --worlds 4
  T=150 TAILN=90 step bench_gather python3 benchmarks/bench_gather.py --worlds 2 4 --out logs/g
elif [ "$STAGE" = s9g ]; then  # session 9, 2 GPUs (no 4-GPU machine lent): final-code push tests, copy-shape sweep, gather
  T=150 TAILN=12 step push_tests python3 -m pytest -q -s -m gpu -k "push or native_gather" tests -p no:cacheprovider
  T=120 TAILN=60 step diag_push python3 benchmarks/diag_push.py --worlds 2
  T=100 TAILN=50 step bench_gather python3 benchmarks/bench_gather.py --worlds 2 --out logs/g
elif [ "$STAGE" = s10a ]; then  # session 10, 2 GPUs: every multi-GPU test on the final code, push diag, gather table
  T=240 TAILN=12 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
  T=90 TAILN=6 step push_tests python3 -m pytest -q -m gpu tests/test_push.py -p no:cacheprovider
  T=120 TAILN=40 step diag_push python3 benchmarks/diag_push.py --worlds 2
  T=120 TAILN=50 step bench_gather python3 benchmarks/bench_gather.py --worlds 2 --out logs/g
elif [ "$STAGE" = s10b ]; then  # session 10, one GPU, no NCCL build: CUTLASS merger fc1 (carried .so) tests, sweep, bench, tower A/B
  python3 -c "from qvdp.ops import merger_gemm as m; print('cutlass merger:', m.unavailable_reason() or 'available')"
  T=150 TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -p no:cacheprovider
  T=150 TAILN=40 step diag_merger_cutlass python3 benchmarks/diag_merger_cutlass.py --winner logs/mg_winner
  export QVDP_MERGER_GEMM_VARIANT=$(cat logs/mg_winner 2>/dev/null || echo 0); echo "QVDP_MERGER_GEMM_VARIANT=$QVDP_MERGER_GEMM_VARIANT"
  T=150 TAILN=40 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
  T=150 TAILN=10 step diag_tower_merger python3 benchmarks/diag_tower_merger.py --workloads 4x720p "16 mixed"
elif [ "$STAGE" = s10c ]; then  # session 10, one GPU: the CUTLASS fc1 alone vs cuBLAS (mainloop, tile order), new configurations
  T=200 TAILN=200 step diag_merger_gemm python3 benchmarks/diag_merger_gemm.py
  T=120 TAILN=14 step diag_merger_cutlass python3 benchmarks/diag_merger_cutlass.py --quick
  T=60 TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -k "fc1_gelu or graph" -p no:cacheprovider
elif [ "$STAGE" = s10e ]; then  # session 10, 4 GPUs: DP encoder (H100 only), every multi-GPU test, gather at 4 and 2 GPUs, push diag
  if nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -q H100; then
    T=220 TAILN=30 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 4 --only "16 mixed" "video 32f" --out logs/e4
  fi
  T=200 TAILN=12 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
  T=120 TAILN=90 step bench_gather python3 benchmarks/bench_gather.py --worlds 4 2 --out logs/g
  T=90 TAILN=40 step diag_push python3 benchmarks/diag_push.py --worlds 4
elif [ "$STAGE" = s10f ]; then  # session 10, 4 GPUs: polling back-off in the flag waits (QVDP_PUSH_BACKOFF_NS, reverted after this run) A/B
  QVDP_PUSH_BACKOFF_NS=256 T=150 TAILN=6 step push_tests_backoff python3 -m pytest -q -s -m multigpu -k push tests -p no:cacheprovider
  i=0; for b in 0 128 1024 0; do
    i=$((i + 1)); QVDP_PUSH_BACKOFF_NS=$b T=60 TAILN=24 step diag_push_$i-backoff$b python3 benchmarks/diag_push.py --worlds 4
  done
elif [ "$STAGE" = s11b ]; then  # session 11, 2 GPUs: the final code's multi-GPU tests, gather and DP encoder at 2 GPUs
  T=150 TAILN=8 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
  T=100 TAILN=40 step bench_gather python3 benchmarks/bench_gather.py --worlds 2 --out logs/g
  T=60 TAILN=30 step diag_push python3 benchmarks/diag_push.py --worlds 2
  T=260 TAILN=45 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 2 --out logs/e2
elif [ "$STAGE" = s12n ]; then  # session 12, one GPU, no build (CUTLASS .so carried): eager calls skip the custom ops: every single-GPU test, merger profile + benchmark
  T=330 TAILN=8 step gpu_tests python3 -m pytest -q -m "gpu and not multigpu" tests -p no:cacheprovider
  T=60 TAILN=60 step diag_merger_profile python3 benchmarks/diag_merger_profile.py
  T=150 TAILN=45 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
elif [ "$STAGE" = s12m ]; then  # session 12, one GPU, no build (CUTLASS .so carried): the merger with the one-pass Triton norm: tests, kernel profile, benchmark
  T=200 TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -p no:cacheprovider
  T=60 TAILN=60 step diag_merger_profile python3 benchmarks/diag_merger_profile.py
  T=300 TAILN=45 step bench_merger python3 benchmarks/bench_merger.py --out logs/m
elif [ "$STAGE" = x4h100 ]; then  # (4 GPUs; carry both CUTLASS .so) session 12: the final code's DP encoder at 1/2/4 GPUs (WORLDS) on H100s, else the merger's kernel profile
  if nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -q H100; then
    T=250 TAILN=60 step bench_encoder python3 benchmarks/bench_encoder.py --worlds ${WORLDS:-2 4} --out logs/e4
  elif [ -z "${ONLY_H100:-}" ]; then
    T=120 TAILN=80 step diag_merger_profile python3 benchmarks/diag_merger_profile.py
  fi
elif [ "$STAGE" = x4final ]; then  # (4 GPUs; carry qvdp/_qkv_rope_gemm.so and qvdp/_merger_gemm.so) the final code: DP encoder at 1/2/4 GPUs, then CUTLASS GPU tests, multi-GPU tests
  T=400 TAILN=60 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 2 4 --out logs/e4
  T=200 TAILN=8 step cutlass_tests python3 -m pytest -q -m gpu tests/test_qkv_rope_gemm.py tests/test_patch_merger.py tests/test_hf_equivalence.py -p no:cacheprovider
  T=200 TAILN=12 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
elif [ "$STAGE" = s11e ]; then  # session 11, one GPU, no build (CUTLASS .so carried): the fused qkv GEMM on by default (ping-pong): tests, tower A/B, 1-GPU encoder
  T=60 TAILN=6 step qkv_tests python3 -m pytest -q -m gpu tests/test_qkv_rope_gemm.py tests/test_hf_equivalence.py -p no:cacheprovider
  T=60 TAILN=8 step diag_qkv_tower python3 benchmarks/diag_qkv_rope_gemm.py tower
  T=90 TAILN=30 step bench_encoder python3 benchmarks/bench_encoder.py --worlds --out logs/e1
elif [ "$STAGE" = s11d ]; then  # session 11, one GPU, no build (both CUTLASS .so carried): the CUTLASS qkv GEMM with RoPE: tests, kernels, tower A/B, then the 1-GPU encoder with it if it won
  T=200 TAILN=12 step qkv_tests python3 -m pytest -q -m gpu tests/test_qkv_rope_gemm.py -p no:cacheprovider
  T=120 TAILN=40 step diag_qkv_kernel python3 benchmarks/diag_qkv_rope_gemm.py kernel
  T=150 TAILN=8 step diag_qkv_tower python3 benchmarks/diag_qkv_rope_gemm.py tower
  R=$(grep -o "pass / fused [0-9.]*" logs/diag_qkv_tower.log | head -1 | awk '{print $4}')
  if [ -n "$R" ] && awk "BEGIN{exit !($R > 1.005)}"; then
    QVDP_QKV_ROPE=1 T=200 TAILN=40 step bench_encoder python3 benchmarks/bench_encoder.py --worlds --out logs/e1
  fi
elif [ "$STAGE" = s11c ]; then  # session 11, one GPU, no build (CUTLASS .so carried): every single-GPU test on the final code, a tower profile
  T=420 TAILN=12 step gpu_tests python3 -m pytest -q -m "gpu and not multigpu" tests -p no:cacheprovider
  T=90 TAILN=60 step profile python3 benchmarks/diag_encoder.py profile --out "$OUT"
elif [ "$STAGE" = s11a ]; then  # session 11, one GPU, no build (needs commit 498868c: the experiment was reverted): the qkv GEMM with RoPE in its epilogue: tests, sweep, tower A/B, 1-GPU encoder
  T=240 TAILN=10 step qkv_tests python3 -m pytest -q -m gpu tests/test_qkv_rope.py tests/test_hf_equivalence.py -p no:cacheprovider
  T=240 TAILN=90 step diag_qkv_kernel python3 benchmarks/diag_qkv_rope.py kernel --all-shapes --winner logs/qkv_winner
  W=$(cat logs/qkv_winner 2>/dev/null); [ -n "$W" ] && export QVDP_QKV_ROPE_CONFIG=$W; echo "qkv_rope config: ${W:-default}"
  T=150 TAILN=8 step diag_qkv_tower python3 benchmarks/diag_qkv_rope.py tower
  T=200 TAILN=40 step bench_encoder python3 benchmarks/bench_encoder.py --worlds --out logs/e1
elif [ "$STAGE" = s10g ]; then  # session 10, one GPU: the merger GPU tests on the final code (CUTLASS .so carried)
  T=200 TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -p no:cacheprovider
elif [ "$STAGE" = s9h ]; then  # session 9, one GPU, no build: the tower's GEMMs under cuBLAS, cuBLASLt preference, max-autotune
  T=400 TAILN=20 step diag_gemm_lib python3 benchmarks/diag_gemm_lib.py
elif [ "$STAGE" = s5a ]; then  # session 5, 4 GPUs: 16 mixed + video at 1/4 GPUs (H100 only), interleaved gather, NCCL tests
  if nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -q H100; then
    T=150 TAILN=30 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 4 --only "16 mixed" "video 32f" --out logs/e4
  fi
  T=100 TAILN=45 step bench_gather python3 benchmarks/bench_gather.py --worlds 4
  T=90 TAILN=6 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
elif [ "$STAGE" = s5b ]; then  # session 5, one GPU: merger v3 (TMA, folded norm) tests, config sweep, benchmark
  T=150 TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -p no:cacheprovider
  T=150 TAILN=60 step diag_merger python3 benchmarks/diag_merger.py --winner logs/merger_winner
  export QVDP_MERGER_CFG=$(cat logs/merger_winner 2>/dev/null || echo 128,256,64,8,8,3); echo "QVDP_MERGER_CFG=$QVDP_MERGER_CFG"
  T=240 TAILN=40 step bench_merger python3 benchmarks/bench_merger.py
elif [ "$STAGE" = s5c ]; then  # session 5, one GPU: merger v3 + one-pass stats, persistent and 2-CTA configs
  T=150 TAILN=8 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -p no:cacheprovider
  T=200 TAILN=80 step diag_merger python3 benchmarks/diag_merger.py --winner logs/merger_winner
  export QVDP_MERGER_CFG=$(cat logs/merger_winner 2>/dev/null || echo 128,256,64,8,8,3,0); echo "QVDP_MERGER_CFG=$QVDP_MERGER_CFG"
  T=200 TAILN=40 step bench_merger python3 benchmarks/bench_merger.py
elif [ "$STAGE" = s5d ]; then  # session 5, 4 GPUs: on H100 the 16 mixed / video DP figures; every GPU test
  if nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -q H100; then
    T=150 TAILN=30 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 4 --only "16 mixed" "video 32f" --out logs/e4
  fi
  T=300 TAILN=12 step gpu_tests python3 -m pytest -q -m "gpu and not multigpu" tests -p no:cacheprovider
elif [ "$STAGE" = s5e ]; then  # session 5, 4 GPUs: flash_attn backend tests; on H100 the 16 mixed / video DP figures
  T=120 TAILN=6 step fa_tests python3 -m pytest -q -m gpu tests/test_attention.py -k "flash_attn or fa3" -p no:cacheprovider
  if nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -q H100; then
    T=150 TAILN=30 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 4 --only "16 mixed" "video 32f" --out logs/e4
  fi
elif [ "$STAGE" = s5f ]; then  # session 5, one GPU: merger GPU tests after the tile-helper refactor, quick benchmark
  T=150 TAILN=6 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -p no:cacheprovider
  QVDP_MERGER_CFG=128,128,64,8,8,4,0 T=90 TAILN=16 step bench_merger_quick python3 benchmarks/bench_merger.py --quick --out logs/mq
elif [ "$STAGE" = s6a ]; then  # session 6, one GPU: attention v5 (TMA, split exp2) tests, D=64 sweep, benchmark with the winner
  T=200 TAILN=8 step attn_tests python3 -m pytest -q -m gpu tests/test_attention.py -k "tma" -p no:cacheprovider
  T=200 TAILN=60 step diag_attention python3 benchmarks/diag_attention.py --stage tma --out logs/diag_attention_tma.jsonl --best logs/attn_best.json
  if [ -s logs/attn_best.json ]; then export QVDP_ATTN_CONFIG=$(cat logs/attn_best.json); fi; echo "QVDP_ATTN_CONFIG=${QVDP_ATTN_CONFIG:-}"
  T=150 TAILN=45 step bench_attention python3 benchmarks/bench_attention.py --skip Flex cuDNN
elif [ "$STAGE" = s6b ]; then  # session 6, one GPU: attention GPU tests (v5 default at D=64), benchmark, merger tests
  T=240 TAILN=8 step attn_tests python3 -m pytest -q -m gpu tests/test_attention.py -p no:cacheprovider
  T=150 TAILN=45 step bench_attention python3 benchmarks/bench_attention.py --skip Flex
  T=150 TAILN=6 step merger_tests python3 -m pytest -q -m gpu tests/test_patch_merger.py -p no:cacheprovider
elif [ "$STAGE" = s6c ]; then  # session 6, 4 GPUs: on H100 the 16 mixed / video DP figures; the gather benchmark (shared timer)
  if nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -q H100; then
    T=150 TAILN=30 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 4 --only "16 mixed" "video 32f" --out logs/e4
  fi
  T=110 TAILN=45 step bench_gather python3 benchmarks/bench_gather.py --worlds 4
elif [ "$STAGE" = s6d ]; then  # session 6, 4 x H100 only: per-rank DP breakdown of 16 mixed (overlap off, calibrated plan)
  if nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -q H100; then
    QVDP_DIAG_ONLY="16 mixed,4x1280^2" T=240 TAILN=30 step diag_dp python3 benchmarks/diag_encoder.py dp --world 4 --out "$OUT"
  fi
elif [ "$STAGE" = s6e ]; then  # session 6, 4 GPUs: 16 mixed / video DP x4 with the calibrated planner; NCCL tests
  T=150 TAILN=30 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 4 --only "16 mixed" "video 32f" --out logs/e4
  T=120 TAILN=6 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
elif [ "$STAGE" = s6f ]; then  # session 6, one GPU: the whole single-GPU suite after this session's changes
  T=420 TAILN=8 step gpu_tests python3 -m pytest -q -m "gpu and not multigpu" tests -p no:cacheprovider
elif [ "$STAGE" = s4z ]; then  # session 4, 4 x H100 only: encoder at 1/2/4 GPUs, gather at 4
  if nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -q H100; then
    T=200 TAILN=60 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 2 4
    T=60 TAILN=40 step bench_gather python3 benchmarks/bench_gather.py --worlds 4
  else
    echo "not an H100: nothing run"
  fi
elif [ "$STAGE" = x4 ]; then  # the 4-GPU wrap-up: encoder at 1/2/4 GPUs, gather at 4, tests
  T=270 TAILN=50 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 2 4
  T=80 TAILN=20 step bench_gather python3 benchmarks/bench_gather.py --worlds 4
  T=120 TAILN=6 step gpu_tests_new python3 -m pytest -q -m "gpu and not multigpu" -k "graph or rope or fa3 or layernorm" tests -p no:cacheprovider
  T=90 TAILN=12 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
  T=40 TAILN=40 step bench_attention python3 benchmarks/bench_attention.py --skip Flex cuDNN
elif [ "$STAGE" = last ]; then  # (4 GPUs) overlapped gather: NCCL tests, two encoder workloads, graph test
  T=70 TAILN=12 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
  T=70 TAILN=30 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 4 --only "${ONLY:-16 mixed}"
  T=40 TAILN=4 step gpu_graph_test python3 -m pytest -q -m "gpu and not multigpu" -k graph tests -p no:cacheprovider
elif [ "$STAGE" = dp ]; then  # WORLDS="2 4" (default) or "2" on a 2-GPU machine
  W=${WORLDS:-2 4}; WMAX=${W##* }
  T=90 TAILN=6 step gpu_tests_new python3 -m pytest -q -m "gpu and not multigpu" -k "graph or rope or fa3" tests -p no:cacheprovider
  T=100 TAILN=12 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
  T=330 TAILN=60 step bench_encoder python3 benchmarks/bench_encoder.py --worlds $W
  T=100 TAILN=40 step diag_dp python3 benchmarks/diag_encoder.py dp --world $WMAX --out "$OUT"
  T=150 TAILN=70 step bench_gather python3 benchmarks/bench_gather.py --worlds $W
elif [ "$STAGE" = gather ]; then
  T=200 TAILN=70 step bench_gather python3 benchmarks/bench_gather.py --worlds 2 4
  T=120 TAILN=12 step demo python3 -m qvdp.demo --world 2
elif [ "$STAGE" = final ]; then
  T=130 TAILN=8 step gpu_tests python3 -m pytest -q -m "gpu and not multigpu" tests -p no:cacheprovider
  T=190 TAILN=45 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 2 4
  T=85 TAILN=34 step bench_attention python3 benchmarks/bench_attention.py --skip Flex
  T=30 TAILN=12 step bench_mlp python3 benchmarks/bench_mlp.py
  T=90 TAILN=8 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
  T=120 TAILN=12 step demo python3 -m qvdp.demo --world 2
else
  T=300 TAILN=30 step multigpu_tests python3 -m pytest -q -s -m multigpu tests -p no:cacheprovider
  T=400 TAILN=50 step bench_encoder python3 benchmarks/bench_encoder.py --worlds 2 4
  T=200 TAILN=50 step bench_gather python3 benchmarks/bench_gather.py --worlds 2 4
  T=200 TAILN=30 step demo python3 -m qvdp.demo
fi
tar czf "$OUT/results-$STAGE.tgz" benchmarks/results logs 2>/dev/null
ls -la "$OUT"
