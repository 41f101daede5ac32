#!/usr/bin/env bash
# One call on a lent GPU machine (device tool): build pfjax there, then each stage whose
# time limit (seconds) is above 0, all logs under $OUT:
#   SMOKE_S     notebooks/gpu_smoke.py
#   GPU_TESTS_S tests/test_cuda_gpu.py
#   TRACE_S     the training-step workload on CPU and GPU, with JAX's full tracebacks
#   BENCH_S     python -m pfjax.bench --size dram --quick --prebuild 16 $BENCH_ARGS
#   SUITE_S     the whole test suite on the GPU backend (16 workers)
# Usage: SMOKE_S=60 BENCH_S=200 ... bash notebooks/gpu_session.sh
export PYTHONUNBUFFERED=1 PFJAX_CACHE_DIR=/tmp/pfc PFJAX_TEST_CACHE_DIR=/tmp/pfc
export XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
t0=$(date +%s)
stage() { echo "=== $(( $(date +%s) - t0 )) s: $*"; }
on() { [ "${1:-0}" -gt 0 ]; }
stage info
{ nvidia-smi -L; nvcc --version | tail -1; g++ --version | head -1; nproc
  python3 -c "import jax, jaxlib; print(jax.__version__, jaxlib.__version__, jax.devices())"; } 2>&1 | tee "$OUT/info.txt"
stage build
if ! python3 -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
  tail -30 "$OUT/build.log"; echo "editable install failed: running from the source tree"
  export PYTHONPATH=$PWD
fi
if on "$SMOKE_S"; then stage smoke
  timeout "$SMOKE_S" python3 notebooks/gpu_smoke.py 2>&1 | tail -60 | tee "$OUT/smoke.txt"; fi
if on "$GPU_TESTS_S"; then stage gpu tests
  timeout "$GPU_TESTS_S" python3 -m pytest -q -n 16 -p no:cacheprovider -p no:benchmark -rfE \
    tests/test_cuda_gpu.py > "$OUT/gpu_tests.log" 2>&1
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_tests.log" | cut -c1-200 | tail -40; fi
if on "$TRACE_S"; then stage trace
  for p in cpu cuda; do
    JAX_PLATFORMS=$p JAX_TRACEBACK_FILTERING=off timeout "$TRACE_S" python3 -m pfjax.bench \
      --size tiny --quick --no-torch --filter train_step > "$OUT/trace_$p.log" 2>&1
    echo "$p: $(grep -c Traceback "$OUT/trace_$p.log") tracebacks"; done; fi
if on "$BENCH_S"; then stage bench
  timeout "$BENCH_S" python3 -m pfjax.bench --size dram --quick --no-torch --prebuild 16 \
    ${BENCH_ARGS:-} --json "$OUT/bench_dram.json" > "$OUT/bench.log" 2>&1
  grep -v "timing\|making inputs\|compiling\|built in" "$OUT/bench.log" | tail -70; fi
if on "$SUITE_S"; then stage suite
  timeout "$SUITE_S" python3 -m pytest -q -n 16 -p no:cacheprovider -p no:benchmark -rfE \
    --timeout 100 -o console_output_style=classic -v tests > "$OUT/suite.log" 2>&1
  grep -E "FAILED|ERROR|passed|failed" "$OUT/suite.log" | grep -v "^\[gw" | cut -c1-200 | tail -60
  grep -E "^\[gw.*(FAILED|ERROR)" "$OUT/suite.log" | cut -c1-200 | head -60; fi
stage done
