#!/usr/bin/env bash
# The one script for the GPU machine, in one call: build hive_gpu with CUDA and WebGPU, run
# the test suite on CUDA and on WebGPU (through NVIDIA's Vulkan driver), the benchmarks
# against PyTorch and CuPy, and the CUDA tests under compute-sanitizer. Logs, JSON and plots
# go to $OUT; every step has a time limit so that what finished always comes back.
#
#   HIVE_GPU_STEPS        steps to run (default below); e.g. "build tests_cuda sanitize"; also
#                         bench_dtype (16-bit rows) and capacity (fill the GPU), not in the default
#   HIVE_GPU_TEST_FILES   test files for tests_cuda (default: all of tests/)
#   HIVE_GPU_BENCH_DTYPES dtypes of bench_dtype (default "float16 bfloat16"); HIVE_GPU_CAPACITY_DTYPES
#                         likewise for capacity (default "float32 float16")
#   HIVE_GPU_BENCH_RUNS   timed runs per figure in bench_cuda/bench_dtype (default 30)
#   HIVE_GPU_CUDA_ARCHS   CUDA architectures to build (default 90: H100/H200)
#   T_<step>              seconds allowed for a step (e.g. T_tests_cuda=200)
#
# WebGPU needs, carried in the checkout: .gl/libvulkan1_*.deb (the Vulkan loader; the
# machine has only the driver) and .whl/wgpu-*.whl (wgpu-native). Without them the WebGPU
# steps are skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
OUT=${OUT:-$root/device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
STEPS=${HIVE_GPU_STEPS:-build conformance bench_filter bench_sharded tests_cuda tests_webgpu bench_cuda bench_webgpu bench_async sanitize}
PY=${PYTHON:-python3}
start=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - start ))s] $*"; }
has() { [[ " $STEPS " == *" $1 "* ]]; }
limit() { local v="T_$1"; echo "${!v:-$2}"; }
failed() { grep -qE "^(FAILED|ERROR)| failed| error" "$1"; }
status=0

webgpu=OFF
if compgen -G ".gl/*.deb" >/dev/null && compgen -G ".whl/wgpu-*.whl" >/dev/null; then
  step "Vulkan loader and wgpu-native"
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  icd=$(ls /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd*.json /usr/share/vulkan/icd.d/nvidia_icd*.json \
             /etc/vulkan/icd.d/nvidia_icd*.json 2>/dev/null | head -n 1)
  if [ -n "$icd" ]; then
    export VK_DRIVER_FILES=$icd VK_ICD_FILENAMES=$icd
  fi
  echo "Vulkan loader: $(ldconfig -p | grep -o 'libvulkan.so.1 .*' | head -n 1); driver: ${icd:-none found}"
  $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/wgpu-*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} && webgpu=ON
fi

if has build; then
  step "build (CUDA archs ${HIVE_GPU_CUDA_ARCHS:-90}, WebGPU $webgpu)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
  # A wheel, installed like a user's: every test below runs against the installed package.
  rm -rf build/device-wheel
  if ! timeout "$(limit build 300)" $PY -m pip wheel -q --no-deps --no-build-isolation -w build/device-wheel \
      -C build-dir=build/device -C cmake.define.HIVE_GPU_CUDA=ON -C cmake.define.HIVE_GPU_WEBGPU=$webgpu \
      -C cmake.define.CMAKE_CUDA_ARCHITECTURES="${HIVE_GPU_CUDA_ARCHS:-90}" -C cmake.define.HIVE_GPU_TESTS=ON \
      -C cmake.build-type=Release . >"$OUT/build.log" 2>&1 \
     || ! $PY -m pip install -q --no-deps --force-reinstall build/device-wheel/hive_gpu-*.whl >>"$OUT/build.log" 2>&1; then
    tail -n 60 "$OUT/build.log"; exit 1
  fi
  ls -l build/device-wheel/
  grep -E "hive_gpu: " "$OUT/build.log" || true
  (cd /tmp && $PY -c "import hive_gpu; print('compiled', hive_gpu.compiled_backends(), 'available', hive_gpu.available_backends())
for b in hive_gpu.available_backends(): print(hive_gpu.create_context(b).device_info())")
fi

if has conformance; then
  # The C++ engine conformance tests (tests/cpp), built into the wheel's build tree: every
  # engine with a device (CUDA, WebGPU when its driver loads, CPU) against a float64 reference.
  step "engine conformance (ctest) and engine-level filtered search timing"
  timeout "$(limit conformance 120)" ctest --test-dir build/device --output-on-failure -R "^(engine_|cuda_tile_plan)" \
      >"$OUT/conformance.log" 2>&1
  rc=$?; tail -n 15 "$OUT/conformance.log"; [ $rc -eq 0 ] || status=1
  # Filtered search at the engine level, 10M x 128: the bars and the sparse/dense crossover.
  timeout "$(limit conformance 120)" build/device/engine_filter_bench --backend cuda --runs 10 \
      --json "$OUT/engine_filter_cuda.json" 2>&1 | tee "$OUT/engine_filter_bench.log" | tail -n 14
fi

if has bench_filter; then
  step "benchmark: filtered search through the Python API, 10M x 128, CUDA"
  timeout "$(limit bench_filter 150)" $PY benchmarks/bench_filter.py --backend cuda --n 10000000 --dim 128 --repeats "${HIVE_GPU_FILTER_REPEATS:-7}" \
      --out "$OUT/filter_cuda_10000000x128.json" 2>&1 | tee "$OUT/bench_filter.log" | tail -n 16
fi
if has bench_sharded; then
  step "benchmark: two shards on the one GPU against one store (results must be equal)"
  timeout "$(limit bench_sharded 120)" $PY benchmarks/bench_sharded.py --backend cuda --shards 2 \
      --out "$OUT/sharded_cuda.json" 2>&1 | tee "$OUT/bench_sharded.log" | tail -n 14
fi

# run_pytest NAME BACKENDS SECONDS [pytest args]: the suite restricted to BACKENDS.
run_pytest() {
  local name=$1 backends=$2 secs=$3; shift 3
  step "tests on $backends ($name, at most ${secs}s)"
  (cd /tmp && HIVE_GPU_TEST_BACKENDS=$backends timeout "$secs" $PY -m pytest -q -p no:cacheprovider \
      -rfE --durations=8 "$@" 2>&1 || true) | tee "$OUT/pytest_$name.log" | grep -vE "^SKIPPED" | tail -n 25
  if failed "$OUT/pytest_$name.log"; then
    status=1
    grep -E "^E |^(FAILED|ERROR) |^[^ ]+\.py:[0-9]+: " "$OUT/pytest_$name.log" | head -n 40
  fi
}
# HIVE_GPU_TEST_FILES narrows the CUDA run to some test files (paths from the root).
cuda_tests=("$root/tests")
[ -n "${HIVE_GPU_TEST_FILES:-}" ] && read -ra cuda_tests <<<"$(for f in $HIVE_GPU_TEST_FILES; do printf '%s ' "$root/$f"; done)"
has tests_cuda && run_pytest cuda cuda "$(limit tests_cuda 320)" "${cuda_tests[@]}" -k "not webgpu and not metal"
has tests_webgpu && [ $webgpu = ON ] && run_pytest webgpu webgpu "$(limit tests_webgpu 120)" "$root/tests" -k webgpu

if has bench_cuda; then
  step "benchmark: CUDA against PyTorch and CuPy"
  timeout "$(limit bench_cuda 150)" $PY benchmarks/bench_cuda.py --runs "${HIVE_GPU_BENCH_RUNS:-30}" --out "$OUT" 2>&1 | tee "$OUT/bench_cuda.log" | tail -n 30
fi
if has bench_dtype; then
  # 16-bit storage against PyTorch in the same precision, 1M x 768 (issue bars: docs/cuda.md).
  for dt in ${HIVE_GPU_BENCH_DTYPES:-float16 bfloat16}; do
    step "benchmark: CUDA $dt rows against PyTorch $dt"
    timeout "$(limit bench_dtype 120)" $PY benchmarks/bench_cuda.py --dtype $dt --runs "${HIVE_GPU_BENCH_RUNS:-30}" --out "$OUT" 2>&1 \
      | tee "$OUT/bench_cuda_$dt.log" | tail -n 24
  done
fi
if has capacity; then
  # Fill the GPU from device arrays in 1M-row batches until OutOfMemoryError, then time one
  # query over the full store against copy bandwidth.
  for dt in ${HIVE_GPU_CAPACITY_DTYPES:-float32 float16}; do
    step "capacity: 768-d $dt rows until the device is full"
    timeout "$(limit capacity 200)" $PY benchmarks/bench_cuda.py --capacity --dtype $dt --out "$OUT" 2>&1 \
      | tee "$OUT/capacity_$dt.log" | tail -n 12
  done
fi
if has bench_webgpu && [ $webgpu = ON ]; then
  step "benchmark: WebGPU against CUDA, 1M x 768"
  timeout "$(limit bench_webgpu 90)" $PY benchmarks/bench_webgpu.py --out "$OUT" --runs 10 2>&1 | tee "$OUT/bench_webgpu.log" | tail -n 20
fi
if has bench_async; then
  step "benchmark: 256 asyncio clients, 1M x 768, with and without micro-batching"
  timeout "$(limit bench_async 90)" $PY benchmarks/bench_async.py --backend cuda --n 1000000 --dim 768 \
      --seconds 5 --warmup 1 --out "$OUT/async_cuda_1000000x768.json" 2>&1 | tee "$OUT/bench_async.log" | tail -n 15
fi

if has sanitize; then
  # The sanitizers slow kernels 10-100x: the CUDA tests that cover every kernel at small sizes.
  sel="ties or empty or update or device_rows or (search_paths and 13 and not 300) or (search_paths and 768 and 3-) or (large_k and EUCLIDEAN) or pool_config or staged"
  for tool in memcheck racecheck synccheck; do
    step "compute-sanitizer --tool $tool"
    (cd /tmp && timeout "$(limit sanitize 120)" compute-sanitizer --tool "$tool" --print-limit 20 \
        $PY -m pytest -q -p no:cacheprovider "$root/tests/test_cuda.py" -k "$sel" \
        >"$OUT/sanitizer_$tool.log" 2>&1)
    echo "exit $?"; grep -E "ERROR SUMMARY|passed|failed|rror" "$OUT/sanitizer_$tool.log" | tail -n 4
  done
fi
step "done"
exit $status
