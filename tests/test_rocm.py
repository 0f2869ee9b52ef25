"""ROCm-specific checks. The ROCm engine is the CUDA engine compiled by HIP, so the CUDA
tests of the engine (search paths against a float64 reference, large k through the device
radix sort, ties after removals, the bulk-add pipeline, the memory pool, out-of-memory
atomicity, device arrays, concurrent searches, on-device update and swap-remove) run here
again against a RocmContext; only device info and device ids are checked ROCm's way.
PyTorch for ROCm names its devices "cuda" and speaks __cuda_array_interface__, so the
device-array tests are the same too."""

from __future__ import annotations

import re

import pytest

import hive_gpu
from test_cuda import *  # noqa: F401,F403  (the engine tests, collected again in this module)

pytestmark = pytest.mark.skipif(
    not hive_gpu.RocmContext.is_available(), reason=f"rocm: {hive_gpu.RocmContext.unavailable_reason()}"
)


@pytest.fixture(scope="module")
def cctx() -> hive_gpu.RocmContext:
    return hive_gpu.RocmContext()


def test_device_info_fields(cctx):
    d = cctx.device_info()
    assert d.backend == "rocm" and d.name
    assert d.vram_total > 1 << 30 and 0 < d.vram_available <= d.vram_total
    assert d.vram_used == d.vram_total - d.vram_available
    assert re.match(r"gfx[0-9a-f]+", d.compute_capability)  # the ISA, e.g. gfx90a:sramecc+:xnack-
    assert re.match(r"\d+\.\d+", d.driver_version)
    assert d.max_threads_per_block >= 256 and d.max_shared_memory >= 32 * 1024
    assert d.device_id == 0 and re.fullmatch(r"[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.\d", d.pci_bus_id)
    assert hive_gpu.RocmContext.device_count() >= 1


def test_invalid_device_id():
    with pytest.raises(hive_gpu.InvalidDeviceIdError):
        hive_gpu.RocmContext(device_id=hive_gpu.RocmContext.device_count())


def test_storages_are_made_by_the_shared_engine(cctx, rng):
    s = cctx.create_storage(24, hive_gpu.GpuDistanceMetric.COSINE)
    x = rng.standard_normal((500, 24)).astype("float32")
    s.add_vectors([f"r{i}" for i in range(500)], x)
    assert s.search(x[17], 1)[0].id == "r17"
    assert cctx.pool_stats().allocations > 0
