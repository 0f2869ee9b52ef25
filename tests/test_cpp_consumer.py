"""The C++ library as its users get it: configure, build and ``cmake --install`` hive_gpu into a
fresh prefix, then build ``examples/cpp`` against that prefix with ``find_package(hive_gpu)``
and run it; the example checks its own answers and exits non-zero on a wrong one.

The library is built with the CPU backend only, to keep the test quick. Set
HIVE_GPU_CPP_TEST_BACKENDS=cuda,webgpu (any backends of hive_gpu.backend_status()) to compile those in
too, which also checks that their dependencies come back as imported targets in the consumer.
HIVE_GPU_SOURCE_DIR points at the source tree when the tests run from a copy elsewhere.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import hive_gpu

SOURCE = Path(os.environ.get("HIVE_GPU_SOURCE_DIR") or Path(__file__).resolve().parents[1])


def _missing_tool() -> str | None:
    if shutil.which("cmake") is None:
        return "cmake is not installed"
    compilers = [os.environ.get("CXX", ""), "c++", "g++", "clang++", "cl"]
    if not any(c and shutil.which(c) for c in compilers):
        return "no C++ compiler found (set CXX)"
    return None


def _requested_backends() -> list[str]:
    raw = os.environ.get("HIVE_GPU_CPP_TEST_BACKENDS", "")
    names = [b.strip().lower() for b in raw.split(",") if b.strip()]
    unknown = sorted(set(names) - set(hive_gpu.backend_status()))
    if unknown:
        raise ValueError(f"HIVE_GPU_CPP_TEST_BACKENDS: unknown backends {unknown}")
    return names


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-6000:]}"
    return out


def _project_version() -> str:
    text = (SOURCE / "CMakeLists.txt").read_text()
    m = re.search(r"project\(hive_gpu\s+VERSION\s+([0-9.]+)", text)
    assert m, "CMakeLists.txt has no project(hive_gpu VERSION x.y.z)"
    return m.group(1)


@pytest.fixture(scope="module")
def installed_prefix(tmp_path_factory) -> Path:
    reason = _missing_tool()
    if reason:
        pytest.skip(reason)
    if not (SOURCE / "CMakeLists.txt").is_file() or not (SOURCE / "examples/cpp").is_dir():
        pytest.skip(f"no hive_gpu source tree at {SOURCE} (set HIVE_GPU_SOURCE_DIR)")
    root = tmp_path_factory.mktemp("cpp")
    build, prefix = root / "build", root / "prefix"
    wanted = _requested_backends()
    # Python_EXECUTABLE: backend find modules ask this interpreter where wgpu / nvidia-cublas live.
    # HIVE_GPU_BACKENDS_DEFAULT=OFF: only the backends asked for, and the built-in CPU.
    defines = ["-DHIVE_GPU_PYTHON=OFF", "-DCMAKE_BUILD_TYPE=Release", f"-DPython_EXECUTABLE={sys.executable}",
               "-DHIVE_GPU_BACKENDS_DEFAULT=OFF"]
    defines += [f"-DHIVE_GPU_{b.upper()}=ON" for b in wanted if b != "cpu"]
    jobs = str(os.cpu_count() or 2)
    _run(["cmake", "-S", str(SOURCE), "-B", str(build), *defines])
    _run(["cmake", "--build", str(build), "--config", "Release", "--parallel", jobs])
    _run(["cmake", "--install", str(build), "--config", "Release", "--prefix", str(prefix)])
    return prefix


def test_install_tree_has_headers_library_and_package_config(installed_prefix: Path) -> None:
    headers = installed_prefix / "include" / "hive_gpu"
    for name in ("hive_gpu.hpp", "config.hpp", "context.hpp", "storage.hpp", "types.hpp", "error.hpp", "engine.hpp",
                 "backends.hpp", "backend_list.hpp"):
        assert (headers / name).is_file(), f"{name} not installed"
    # The user's store and context headers show the API, not the core's machinery.
    for name in ("storage.hpp", "context.hpp", "types.hpp"):
        assert "detail" not in (headers / name).read_text(), f"{name} names the core's internals"
    libs = [p for p in installed_prefix.rglob("*") if p.name in ("libhive_gpu.a", "hive_gpu.lib")]
    assert libs, "the static library was not installed"
    config_dir = libs[0].parent / "cmake" / "hive_gpu"
    for name in ("hive_gpuConfig.cmake", "hive_gpuConfigVersion.cmake", "hive_gpuTargets.cmake"):
        assert (config_dir / name).is_file(), f"{name} not installed"
    assert f'"{_project_version()}"' in (config_dir / "hive_gpuConfigVersion.cmake").read_text()
    package = (config_dir / "hive_gpuConfig.cmake").read_text()
    for name in hive_gpu.backend_status():
        built = name == "cpu" or name in _requested_backends()
        assert f"set(HIVE_GPU_WITH_{name.upper()} {int(built)})" in package, name


def test_example_builds_with_find_package_and_passes(installed_prefix: Path, tmp_path: Path) -> None:
    build = tmp_path / "example"
    _run(["cmake", "-S", str(SOURCE / "examples" / "cpp"), "-B", str(build),
          f"-DCMAKE_PREFIX_PATH={installed_prefix}", "-DCMAKE_BUILD_TYPE=Release"])
    _run(["cmake", "--build", str(build), "--config", "Release"])
    apps = [p for p in build.rglob("*") if p.name in ("app", "app.exe") and p.is_file()]
    assert apps, "the example did not produce its executable"
    out = _run([str(apps[0])])
    assert f"hive_gpu {_project_version()}" in out
    assert _project_version() == hive_gpu.__version__
    assert "all checks passed" in out
    compiled = re.search(r"compiled backends:(.*)", out).group(1).split()
    assert sorted(compiled) == sorted({"cpu", *_requested_backends()})
