#!/usr/bin/env bash
# auditwheel repair for hive_gpu: usage repair_wheel.sh WHEEL DEST_DIR.
# Shared by .ci/wheel_test.sh and cibuildwheel, so the list below exists once. The libraries
# it names come from their own wheels (nvidia-cublas, wgpu) or from the driver: a second copy
# grafted into our wheel would clash with them at run time.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 WHEEL DEST_DIR" >&2; exit 2; }
if command -v auditwheel >/dev/null; then aw=(auditwheel); else aw=(python3 -m auditwheel); fi
"${aw[@]}" repair "$1" -w "$2" \
  --exclude 'libcuda.so.*' --exclude 'libcudart.so.*' \
  --exclude 'libcublas.so.*' --exclude 'libcublasLt.so.*' \
  --exclude 'libnvrtc.so.*' --exclude 'libnvJitLink.so.*' \
  --exclude 'libwgpu_native*' --exclude 'libwebgpu_dawn*' \
  --exclude 'libvulkan.so.*'
