#!/usr/bin/env bash
# WebGPU on an NVIDIA GPU machine through NVIDIA's Vulkan driver: build hive_gpu with the
# WebGPU backend (and CUDA, to compare), run the shared suite on WgpuContext, then the
# 1M x 768 benchmark against CUDA. Needs, carried in the checkout: .gl/libvulkan1_*.deb
# (the Vulkan loader; the machine has only the driver) and .whl/wgpu-*.whl (wgpu-native).
# Logs and JSON go to $OUT. HIVE_GPU_STEPS picks steps (default "build tests bench");
# HIVE_GPU_DEVICE_CUDA=OFF skips the CUDA build (WebGPU figures alone).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
STEPS=${HIVE_GPU_STEPS:-build tests bench}
PY=${PYTHON:-python3}
start=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - start ))s] $*"; }
has() { [[ " $STEPS " == *" $1 "* ]]; }
status=0

step "Vulkan loader and wgpu-native"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/wgpu-*.whl || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}

if has build; then
  step "build (WebGPU ON, CUDA ${HIVE_GPU_DEVICE_CUDA:-ON})"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
  if ! $PY -m pip install -q --no-deps --no-build-isolation -C build-dir=build/device-webgpu \
      -C cmake.define.HIVE_GPU_WEBGPU=ON -C cmake.define.HIVE_GPU_CUDA="${HIVE_GPU_DEVICE_CUDA:-ON}" \
      -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90 -C cmake.build-type=Release . >"$OUT/build.log" 2>&1; then
    tail -n 60 "$OUT/build.log"; exit 1
  fi
  grep -E "hive_gpu: " "$OUT/build.log" || true
  (cd /tmp && $PY -c "import hive_gpu; print('compiled', hive_gpu.compiled_backends(), 'available', hive_gpu.available_backends()); print(hive_gpu.WgpuContext().device_info())")
fi

if has tests; then
  step "shared suite on WgpuContext"
  # -k webgpu: the WebGPU parametrizations of the shared suite plus tests/test_webgpu.py.
  (cd /tmp && HIVE_GPU_TEST_BACKENDS=webgpu timeout "${HIVE_GPU_TEST_TIMEOUT:-300}" $PY -m pytest -q \
      -p no:cacheprovider "$OLDPWD/tests" -k webgpu --timeout=120 --durations=10 2>&1 || true) \
      | tee "$OUT/pytest_webgpu.log" | tail -n 40
  grep -qE "^(FAILED|ERROR)| failed| error" "$OUT/pytest_webgpu.log" && status=1
fi

if has bench; then
  step "benchmark 1M x 768"
  $PY benchmarks/bench_webgpu.py --out "$OUT" ${HIVE_GPU_BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_webgpu.log" | tail -n 30
fi
step "done"
exit $status
