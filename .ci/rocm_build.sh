#!/usr/bin/env bash
# Compiles and links the ROCm backend (hive_gpu._core with HIP and rocBLAS) in its own build
# directory, so the .hip code cannot rot on a machine without an AMD GPU. Nothing is run on
# a GPU. Self-contained and idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
start=$(date +%s)
step() { echo "--- [rocm $(( $(date +%s) - start ))s] $*"; }

tools=$root/build/rocm-tools        # venv with CMake (Debian's is too old for HIP), Ninja, pybind11
deps=$root/build/rocm-deps          # rocBLAS unpacked from Debian packages
build=$root/build/rocm              # the ROCm build tree
archs="gfx90a;gfx1030"              # wavefront 64 and 32; Debian's clang 15 cannot build gfx942
export HIP_PLATFORM=amd             # nvcc may be installed too: hipcc must not pick NVIDIA

# rocPRIM (header-only, same HIP 5.2 stack) gives the engine its device radix sort (CUB's
# place on NVIDIA).
step "HIP compiler, runtime and rocPRIM headers (Debian: hipcc, libamdhip64-dev, librocprim-dev)"
if ! command -v hipcc >/dev/null || [ ! -f /usr/include/hip/hip_runtime.h ] ||
   [ ! -f /usr/include/rocprim/rocprim.hpp ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends hipcc libamdhip64-dev librocprim-dev >/dev/null
fi
echo "HIP $(hipconfig --version); rocPRIM $(sed -n 's/^#define ROCPRIM_VERSION_MAJOR *//p' /usr/include/rocprim/rocprim_version.hpp 2>/dev/null).$(sed -n 's/^#define ROCPRIM_VERSION_MINOR *//p' /usr/include/rocprim/rocprim_version.hpp 2>/dev/null)"

step "CMake, Ninja and pybind11 in $tools/venv"
if [ ! -x "$tools/venv/bin/cmake" ]; then
  rm -rf "$tools/venv"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q cmake ninja pybind11
fi
"$tools/venv/bin/cmake" --version | sed -n 1p

# Debian 12 has no rocBLAS; Debian 13 (trixie) packages it against the same HIP soname.
# apt fetches and verifies the two packages with a private state directory (the system's
# sources are untouched); only the headers and the shared library are unpacked, not the
# 2 GB of GEMM kernels that rocBLAS loads at run time.
step "rocBLAS headers and library from Debian trixie into $deps"
stamp=$deps/rocblas/.unpacked
if [ ! -f "$stamp" ]; then
  rm -rf "$deps"
  mkdir -p "$deps/apt/lists/partial" "$deps/apt/cache/archives/partial" "$deps/debs" "$deps/rocblas"
  cat >"$deps/apt/trixie.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  apt_opts=(-o "Dir::Etc::SourceList=$deps/apt/trixie.sources" -o "Dir::Etc::SourceParts=/nonexistent"
            -o "Dir::State::Lists=$deps/apt/lists" -o "Dir::Cache=$deps/apt/cache"
            -o "Dir::State::status=/dev/null" -o "APT::Sandbox::User=root")
  apt-get "${apt_opts[@]}" -qq update
  (cd "$deps/debs" && apt-get "${apt_opts[@]}" -qq download librocblas-dev librocblas0)
  dpkg-deb -x "$deps"/debs/librocblas-dev_*.deb "$deps/rocblas"
  dpkg-deb --fsys-tarfile "$deps"/debs/librocblas0_*.deb |
    tar -x -C "$deps/rocblas" --wildcards './usr/lib/*/librocblas.so*' './usr/share/doc/librocblas0/*'
  basename "$deps"/debs/librocblas0_*.deb >"$stamp"
  rm -rf "$deps/debs" "$deps/apt"
fi
echo "rocBLAS: $(cat "$stamp")"

mkdir -p "$build"
step "configure $build (HIVE_GPU_ROCM=ON, targets $archs)"
launcher=()
if [ -n "${CMAKE_CXX_COMPILER_LAUNCHER:-}" ]; then
  launcher=(-DCMAKE_HIP_COMPILER_LAUNCHER="$CMAKE_CXX_COMPILER_LAUNCHER")
fi
"$tools/venv/bin/cmake" -S . -B "$build" -G Ninja \
  -DCMAKE_MAKE_PROGRAM="$tools/venv/bin/ninja" \
  -DCMAKE_BUILD_TYPE=Release \
  -DHIVE_GPU_ROCM=ON -DHIVE_GPU_CUDA=OFF -DHIVE_GPU_WEBGPU=OFF -DHIVE_GPU_METAL=OFF \
  -DHIVE_GPU_PYTHON=ON \
  -DPython_EXECUTABLE="$tools/venv/bin/python" \
  -Dpybind11_DIR="$("$tools/venv/bin/python" -m pybind11 --cmakedir)" \
  -DROCBLAS_ROOT="$deps/rocblas/usr" \
  -DCMAKE_HIP_ARCHITECTURES="$archs" \
  "${launcher[@]}" >"$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }
grep -E "hive_gpu: (HIP|rocm)" "$build/configure.log"

step "build hive_gpu._core"
"$tools/venv/bin/cmake" --build "$build" --target _core
module=$(ls "$build"/_core*.so)

# A shared object links with unresolved symbols, so check them: every symbol the module
# needs must come from the libraries it names (Python's own API comes from the interpreter).
step "link check of $(basename "$module")"
needed=$(readelf -d "$module" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')
echo "needs: $(echo $needed)"
for lib in libamdhip64.so.5 librocblas.so.0; do
  grep -qx "$lib" <<<"$needed" || { echo "error: $module does not link $lib"; exit 1; }
done
libdirs=("$deps/rocblas/usr/lib/x86_64-linux-gnu" /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu)
provided=$(mktemp)
for lib in $needed; do
  path=""
  for dir in "${libdirs[@]}"; do [ -e "$dir/$lib" ] && { path=$dir/$lib; break; }; done
  [ -n "$path" ] || { echo "error: $lib not found in ${libdirs[*]}"; exit 1; }
  nm -D --defined-only "$path" | awk '{print $NF}' | sed 's/@.*//' >>"$provided"
done
missing=$(nm -D --undefined-only "$module" | awk '$1 == "U" {print $2}' | sed 's/@.*//' |
          grep -vE '^_?Py' | sort -u | comm -23 - <(sort -u "$provided") || true)
rm -f "$provided"
if [ -n "$missing" ]; then
  echo "error: unresolved symbols in $module:"; echo "$missing"; exit 1
fi
echo "all $(nm -D --undefined-only "$module" | wc -l) imported symbols resolve"

# The engine (csrc/cuda compiled by HIP) must carry device code for every target, each with
# its own wavefront width: the kernels' warp width is per target, not assumed.
step "device code of the shared engine"
hip_clang=$(sed -n 's/^CMAKE_HIP_COMPILER:[A-Z]*=//p' "$build/CMakeCache.txt")
bundler=$(dirname "$(readlink -f "$hip_clang")")/clang-offload-bundler
# The shared sources compile to several objects (csrc/cuda/*.cu as HIP); the kernels of all
# of them are counted per target.
mapfile -t engine_objs < <(find "$build" -path '*hive_gpu_rocm.dir*' -name '*.cu.o' | sort)
[ "${#engine_objs[@]}" -gt 0 ] || { echo "error: the engine objects were not built"; exit 1; }
fatbin=$(mktemp); code=$(mktemp)
for arch in ${archs//;/ }; do
  case $arch in gfx9*) want=64 ;; *) want=32 ;; esac
  kernels=0; widths=""
  for obj in "${engine_objs[@]}"; do
    objcopy -O binary --only-section=.hip_fatbin "$obj" "$fatbin"
    [ -s "$fatbin" ] || continue  # host code only
    "$bundler" --unbundle --type=o --input="$fatbin" --output="$code" \
      --targets="hipv4-amdgcn-amd-amdhsa--$arch"
    # LLVM's readelf decodes the AMDGPU metadata note (binutils' prints it as bytes).
    notes=$("$(dirname "$bundler")/llvm-readelf" --notes "$code")
    kernels=$(( kernels + $(grep -c '\.wavefront_size:' <<<"$notes" || true) ))
    widths+=" $( (grep -o '\.wavefront_size: *[0-9]*' <<<"$notes" || true) | awk '{print $2}')"
  done
  widths=$(tr ' ' '\n' <<<"$widths" | grep -v '^$' | sort -u | tr '\n' ' ')
  echo "$arch: $kernels kernels in ${#engine_objs[@]} objects, wavefront ${widths% }"
  [ "$kernels" -gt 0 ] && [ "${widths% }" = "$want" ] ||
    { echo "error: $arch should have kernels of wavefront $want"; exit 1; }
done
rm -f "$fatbin" "$code"

step "ROCm build done in $(( $(date +%s) - start ))s"
