#!/usr/bin/env bash
# The one script for the GPU machine: build hive_gpu with CUDA, run the whole test suite
# (every backend present; HIVE_GPU_TEST_BACKENDS selects), the CUDA tests under
# compute-sanitizer (memcheck, racecheck, synccheck) and the CUDA benchmarks. Logs, JSON
# and plots go to $OUT. HIVE_GPU_STEPS picks steps (default: "build tests sanitize bench");
# HIVE_GPU_CUDA_ARCHS the architectures to build (default 90, the H100).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
STEPS=${HIVE_GPU_STEPS:-build tests sanitize bench}
PY=${PYTHON:-python3}
start=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - start ))s] $*"; }
has() { [[ " $STEPS " == *" $1 "* ]]; }
status=0

if has build; then
  step "build (CUDA archs ${HIVE_GPU_CUDA_ARCHS:-90})"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"
  if ! $PY -m pip install -q --no-deps --no-build-isolation -C build-dir=build/device \
      -C cmake.define.HIVE_GPU_CUDA=ON -C cmake.define.HIVE_GPU_WEBGPU="${HIVE_GPU_DEVICE_WEBGPU:-OFF}" \
      -C cmake.define.CMAKE_CUDA_ARCHITECTURES="${HIVE_GPU_CUDA_ARCHS:-90}" \
      -C cmake.build-type=Release . >"$OUT/build.log" 2>&1; then
    tail -n 60 "$OUT/build.log"; exit 1
  fi
  grep -E "hive_gpu: " "$OUT/build.log" || true
  (cd /tmp && $PY -c "import hive_gpu; print('compiled', hive_gpu.compiled_backends(), 'available', hive_gpu.available_backends())")
fi

if has tests; then
  step "test suite"
  root=$PWD
  paths=(); for p in ${HIVE_GPU_TEST_PATHS:-tests}; do paths+=("$root/$p"); done
  (cd /tmp && $PY -m pytest -q -p no:cacheprovider "${paths[@]}" --timeout=900 2>&1 || true) | tee "$OUT/pytest.log" | grep -vE "^SKIPPED" | tail -n 25
  grep -qE "^(FAILED|ERROR)| failed| error" "$OUT/pytest.log" && status=1
fi

root=$PWD
if has sanitize; then
  # The sanitizers slow kernels 10-100x: the CUDA tests that cover every kernel at small sizes.
  sel="ties or empty or update or device_rows or (search_paths and 13 and not 300) or (search_paths and 768 and 3-) or (large_k and EUCLIDEAN) or pool_config"
  for tool in memcheck racecheck synccheck; do
    step "compute-sanitizer --tool $tool"
    (cd /tmp && timeout ${HIVE_GPU_SANITIZER_TIMEOUT:-240} compute-sanitizer --tool "$tool" --print-limit 20 \
        $PY -m pytest -q -p no:cacheprovider "$root/tests/test_cuda.py" -k "$sel" \
        >"$OUT/sanitizer_$tool.log" 2>&1)
    echo "exit $?"; grep -E "ERROR SUMMARY|passed|failed" "$OUT/sanitizer_$tool.log" | tail -n 3
  done
fi

if has bench; then
  step "benchmarks"
  $PY benchmarks/bench_cuda.py --out "$OUT" ${HIVE_GPU_BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -n 40
fi
step "done"
exit $status
