"""Where new rows go: the placement rule shared by ShardedStorage and RayStorage.

A shard's capacity is the rows it holds plus the rows that fit in its free memory (the
device's free memory, or the headroom under its context's pool cap when that is smaller).
Every batch is split so that the fill, rows / capacity, stays as even as possible: a new
row goes to the shard with the most free room for its size. Shards without device memory
of their own (CPU contexts, backends that do not report free memory) have equal capacity,
so the rule becomes "fewest rows first". Ties go to the shard with the fewest rows, then
the lowest index. Each shard receives one contiguous slice of the batch.
"""

from __future__ import annotations

from typing import Optional, Sequence

__all__ = ["split_rows"]


def split_rows(counts: Sequence[int], capacities: Optional[Sequence[float]], n: int) -> list[int]:
    """How many of ``n`` new rows each shard takes, given the rows it holds (``counts``) and
    its capacity in rows (``None``: equal capacities)."""
    s = len(counts)
    caps = [1.0] * s if capacities is None else [max(float(c), 1.0) for c in capacities]
    if n <= 0:
        return [0] * s
    # Water-fill: the level L (a fill fraction) at which sum(max(0, L*cap - count)) == n.
    def need(level: float) -> float:
        return sum(max(0.0, level * c - k) for c, k in zip(caps, counts))

    lo, hi = 0.0, max((k + n) / c for c, k in zip(caps, counts))
    for _ in range(100):
        mid = (lo + hi) / 2
        if need(mid) < n:
            lo = mid
        else:
            hi = mid
    # need(lo) < n, so rounding down leaves sum(take) <= n.
    take = [int(max(0.0, lo * c - k)) for c, k in zip(caps, counts)]
    # The few rows the rounding left: one at a time to the least filled shard.
    while sum(take) < n:
        i = min(range(s), key=lambda j: ((counts[j] + take[j] + 1) / caps[j], counts[j] + take[j], j))
        take[i] += 1
    return take
