"""hive_gpu in one page: pick a device, store vectors with ids and metadata, search them.

    python examples/python/quickstart.py            # the best available backend
    python examples/python/quickstart.py cpu        # or name one: cpu, cuda, rocm, metal, webgpu

The answers are checked against NumPy at the end; the script exits 1 if one is wrong.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

import hive_gpu
from hive_gpu import GpuDistanceMetric, GpuVector


def main(backend: str = "auto") -> int:
    print(f"hive_gpu {hive_gpu.__version__}; available here: {hive_gpu.available_backends()}")
    ctx = hive_gpu.create_context(backend)
    info = ctx.device_info()
    print(f"using {info.backend}: {info.name}")

    rng = np.random.default_rng(0)
    dim, n = 128, 20_000
    store = ctx.create_storage(dim, GpuDistanceMetric.COSINE)

    # One vector with metadata, then a batch straight from a float32 array (no copy).
    intro = rng.standard_normal(dim, dtype=np.float32)
    store.add_vector(GpuVector("intro", intro, {"lang": "en"}))
    ids = [f"doc-{i}" for i in range(n)]
    data = rng.standard_normal((n, dim), dtype=np.float32)
    store.add_vectors(ids, data, metadata=[{"shard": str(i % 8)} for i in range(n)])
    print(f"{len(store)} vectors, {store.memory_usage() / 2**20:.1f} MiB held by the store")

    # One query: a list of hits, best first, with their metadata.
    query = data[42] + 0.05 * rng.standard_normal(dim, dtype=np.float32)
    for hit in store.search(query, k=3):
        print(f"  {hit.id:>10}  cosine {hit.distance:.4f}  {hit.metadata}")

    # Many queries at once: NumPy arrays out, shaped [queries, k].
    queries = rng.standard_normal((64, dim), dtype=np.float32)
    scores, hit_ids = store.search_batch(queries, k=10)
    print(f"batch: scores {scores.shape}, ids {hit_ids.shape}")
    ok = matches_numpy(np.vstack([intro, data]), ["intro", *ids], queries, scores, hit_ids)

    # Update, remove, save and load back (on any backend).
    store.update_vector("doc-7", np.ones(dim, np.float32))
    store.remove_vector("intro")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "docs.hgpu"
        store.save(path)
        again = ctx.load_storage(path)
        print(f"saved and loaded {len(again)} vectors")
        ok = ok and len(again) == n and again.search(np.ones(dim, np.float32), k=1)[0].id == "doc-7"

    print("all results check out" if ok else "WRONG RESULTS")
    return 0 if ok else 1


def matches_numpy(rows, ids, queries, scores, hit_ids) -> bool:
    """The batch search against cosine similarity computed by NumPy in float64."""
    r = rows.astype(np.float64)
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    q = queries.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ref = q @ r.T
    best = -np.sort(-ref, axis=1)[:, : scores.shape[1]]
    row_of = {id_: i for i, id_ in enumerate(ids)}
    picked = np.array([[ref[qi, row_of[h]] for h in row] for qi, row in enumerate(hit_ids)])
    return bool(np.allclose(scores, best, atol=1e-4) and np.allclose(picked, scores, atol=1e-4))


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
