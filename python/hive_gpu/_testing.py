"""Internal queries of the core that the test suite checks; not part of the public API."""

from __future__ import annotations

from . import _core


def backend_emulated(backend: str) -> bool:
    """Whether the backend's device is an emulation on the CPU (a WebGPU CPU adapter)."""
    return _core.backend_emulated(backend)


def backend_unavailable_reason(backend: str) -> str:
    """The core's own reason why the backend cannot be used here ("" when it can)."""
    return _core.backend_unavailable_reason(backend)


def cpu_screen_counts() -> tuple[int, ...] | None:
    """The CPU engine's screening counters, or None in a build without them."""
    counts = getattr(getattr(_core, "_testing", None), "cpu_screen_counts", None)
    return tuple(counts()) if counts is not None else None
