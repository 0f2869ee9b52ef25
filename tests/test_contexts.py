"""Contexts, device info and backend discovery."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import hive_gpu
from hive_gpu import GpuDeviceInfo, _testing


def test_device_info_is_typed_and_sane(ctx):
    info = ctx.device_info()
    assert isinstance(info, GpuDeviceInfo)
    assert info.name and info.backend
    assert info.device_id == ctx.device_id
    for f in ("vram_total", "vram_available", "vram_used", "max_threads_per_block", "max_shared_memory"):
        assert isinstance(getattr(info, f), int) and getattr(info, f) >= 0
    if "vram_total" not in info.unknown:
        assert info.vram_total > 0
        assert info.vram_available <= info.vram_total
        assert 0.0 <= info.vram_usage_percent() <= 100.0
        assert info.has_available_vram(1)
        assert not info.has_available_vram(info.vram_total + 1)
    with pytest.raises(Exception):
        info.name = "x"  # frozen


def test_vram_helpers(ctx):
    assert 0.0 <= ctx.vram_usage() <= 100.0
    assert isinstance(ctx.has_available_vram(1024), bool)


def test_pool_stats(ctx):
    st = ctx.pool_stats()
    assert st.used_bytes <= max(st.reserved_bytes, st.used_bytes)
    assert st.peak_bytes >= 0


def test_cpu_always_available():
    assert hive_gpu.CpuContext.is_available()
    assert hive_gpu.CpuContext.device_count() == 1
    assert hive_gpu.CpuContext.unavailable_reason() == ""
    assert hive_gpu.create_context("cpu").backend == "cpu"
    with pytest.raises(hive_gpu.InvalidDeviceIdError):
        hive_gpu.CpuContext(device_id=1)


def test_auto_picks_first_available():
    ctx = hive_gpu.create_context("auto")
    assert ctx.backend == hive_gpu.available_backends()[0]


def test_unknown_backend():
    with pytest.raises(hive_gpu.InvalidArgumentError):
        hive_gpu.create_context("quantum")


@pytest.mark.parametrize("cls", [c for c in hive_gpu.Context.__subclasses__() if c is not hive_gpu.CpuContext])
def test_unavailable_backends_raise_no_device(cls):
    if cls.is_available():
        assert cls.device_count() >= 1
        with pytest.raises(hive_gpu.InvalidDeviceIdError):
            cls(device_id=cls.device_count() + 5)
        return
    assert cls.device_count() == 0
    assert cls.unavailable_reason()
    with pytest.raises(hive_gpu.NoDeviceError):
        cls()


def test_cli_info_json():
    out = subprocess.run(
        [sys.executable, "-m", "hive_gpu", "info", "--json"], check=True, capture_output=True, text=True
    ).stdout
    data = json.loads(out)
    # Every known backend is listed; those not compiled in say why.
    assert {b["backend"] for b in data["backends"]} == set(hive_gpu.backend_status())
    assert {b["backend"] for b in data["backends"] if b["compiled"]} == set(hive_gpu.compiled_backends())
    assert all(b["reason"] for b in data["backends"] if not b["available"])
    cpu = next(b for b in data["backends"] if b["backend"] == "cpu")
    assert cpu["available"] and cpu["devices"][0]["name"]


def test_cli_version():
    out = subprocess.run(
        [sys.executable, "-m", "hive_gpu", "--version"], check=True, capture_output=True, text=True
    ).stdout
    assert hive_gpu.__version__ in out


def test_auto_ranks_emulated_devices_after_the_cpu():
    avail = hive_gpu.available_backends()
    for b in avail:
        if b == "webgpu":
            # A WebGPU CPU adapter (lavapipe, llvmpipe) is an emulation, a GPU adapter is not.
            on_cpu = hive_gpu.create_context("webgpu").device_info().compute_capability.startswith("CPU")
            assert _testing.backend_emulated("webgpu") == on_cpu
    emulated = [b for b in avail if _testing.backend_emulated(b)]
    assert all(avail.index(b) > avail.index("cpu") for b in emulated), avail
    assert hive_gpu.create_context("auto").backend not in emulated


def test_backend_status_says_why_each_backend_is_unavailable():
    status = hive_gpu.backend_status()
    assert {"cpu", "cuda", "rocm", "metal", "webgpu"} <= set(status)
    assert status["cpu"] == ""
    # "" exactly for the backends that can make a context here.
    assert {b for b, why in status.items() if not why} == set(hive_gpu.available_backends())
    for b, why in status.items():
        if b not in hive_gpu.compiled_backends():
            # The build's own reason follows: OFF, no toolchain, not this platform...
            head = f"backend '{b}' is not compiled into this build of hive_gpu: "
            assert why.startswith(head) and len(why) > len(head), why
        assert why == _testing.backend_unavailable_reason(b)


def test_every_backend_of_the_registry_has_its_context_class_and_status():
    known = hive_gpu._core.known_backends()
    names = [name for name, *_ in known]
    assert list(hive_gpu.backend_status()) == names
    compiled = hive_gpu.compiled_backends()
    assert compiled == [n for n in names if n in compiled], "compiled backends keep the registry's order"
    for name, class_name, aliases, description in known:
        cls = getattr(hive_gpu, class_name)
        assert class_name in hive_gpu.__all__
        assert issubclass(cls, hive_gpu.Context) and cls.BACKEND == name and cls.__doc__ == description
        for alias in aliases:
            if hive_gpu.backend_status()[name]:
                with pytest.raises(hive_gpu.NoDeviceError, match=name):
                    hive_gpu.create_context(alias)
            else:
                assert hive_gpu.create_context(alias).backend == name
