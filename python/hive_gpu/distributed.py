"""One store over Ray actors: a shard per GPU across a Ray cluster, or CPU actors.

``RayStorage`` has the API of ``VectorStorage`` and its answers: each actor holds one
ordinary store and runs the same shard operations as ``ShardedStorage`` (``_Shard``);
queries fan out through Ray and the caller merges them with the one merge function. Ray is
an optional dependency (``pip install "hive-gpu[ray]"``) and is imported only here.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

try:
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
except ImportError as e:  # pragma: no cover - exercised where Ray is absent
    raise ImportError('hive_gpu.distributed needs Ray: pip install "hive-gpu[ray]"') from e

from ._contexts import _ALIASES, create_context
from ._sharded import _Shard, _ShardedBase, check_dtype, dir_path, read_manifest
from ._types import GpuDistanceMetric
from .errors import BackendError, InvalidArgumentError

__all__ = ["RayStorage"]

_GPU_BACKENDS = ("cuda", "rocm")  # the devices Ray schedules as "GPU"
_PUT_BYTES = 1 << 16  # arrays from this size go to the object store once, by reference


class _ShardActor:
    """A Ray actor holding one shard; ``call`` runs a ``_Shard`` operation."""

    def __init__(self, backend: str) -> None:
        self._shard = _Shard(create_context(backend))

    def call(self, op: str, *args: Any) -> Any:
        return getattr(self._shard, op)(*args)

    def backend(self) -> str:
        return self._shard.context.backend


class RayStorage(_ShardedBase):
    """A sharded store over ``shards`` Ray actors, with the API of :class:`VectorStorage`.

    ``backend``: "auto" takes one GPU per actor when the cluster has ``shards`` GPUs, else
    runs CPU actors; "cuda"/"rocm" ask Ray for ``num_gpus=1`` per actor; other backends run
    in CPU actors. ``placement``: the placement group strategy ("SPREAD", "PACK",
    "STRICT_SPREAD", "STRICT_PACK"). ``cpus_per_shard``: CPUs Ray reserves per actor.
    ``actor_options``: more Ray actor options (``runtime_env``, ``resources``...).

    Ray is started with ``ray.init()`` when it is not running. Paths given to ``save`` and
    ``load`` must be visible to every actor (one host, or a shared file system). If an
    actor dies, every call raises ``BackendError`` naming the shard until ``restore(path)``.
    """

    def __init__(
        self,
        dimension: int,
        metric: GpuDistanceMetric | str = GpuDistanceMetric.COSINE,
        *,
        shards: int,
        backend: str = "auto",
        dtype: str = "float32",
        placement: str = "SPREAD",
        cpus_per_shard: float = 1.0,
        actor_options: dict[str, Any] | None = None,
        placement_timeout_s: float = 60.0,
    ) -> None:
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise InvalidArgumentError(f"shards must be an integer >= 1, got {shards!r}")
        if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1:
            raise InvalidArgumentError(f"dimension must be an integer >= 1, got {dimension!r}")
        if placement not in ("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK"):
            raise InvalidArgumentError(f"unknown placement strategy {placement!r}")
        self._init_state(shards, dimension, GpuDistanceMetric.parse(metric), check_dtype(dtype))
        self._options = dict(
            backend=backend,
            placement=placement,
            cpus_per_shard=float(cpus_per_shard),
            actor_options=dict(actor_options or {}),
            placement_timeout_s=placement_timeout_s,
        )
        self._actors: list[Any] = []
        self._pg = None
        self._failed: dict[int, str] = {}
        self._start()

    def _start(self) -> None:
        o = self._options
        if not ray.is_initialized():
            ray.init()
        name = _ALIASES.get(o["backend"].lower(), o["backend"].lower())
        on_gpu = name in _GPU_BACKENDS or (name == "auto" and ray.cluster_resources().get("GPU", 0) >= self._n)
        if name == "auto" and not on_gpu:
            name = "cpu"
        bundle = {"CPU": o["cpus_per_shard"], **({"GPU": 1} if on_gpu else {})}
        bundle = {k: v for k, v in bundle.items() if v > 0} or {"CPU": 0.001}
        self._pg = placement_group([dict(bundle) for _ in range(self._n)], strategy=o["placement"])
        try:
            ray.get(self._pg.ready(), timeout=o["placement_timeout_s"])
        except GetTimeoutError:
            remove_placement_group(self._pg)
            self._pg = None
            raise BackendError(
                f"Ray could not place {self._n} shards of {bundle} ({o['placement']}) within "
                f"{o['placement_timeout_s']} s; cluster resources: {ray.cluster_resources()}"
            ) from None
        # A restarted actor would come back empty: a dead shard must stay dead until restore().
        options = {**o["actor_options"], "max_restarts": 0, "max_task_retries": 0}
        actor_class = ray.remote(_ShardActor)
        self._actors = [
            actor_class.options(
                num_cpus=bundle.get("CPU", 0),
                num_gpus=bundle.get("GPU", 0),
                scheduling_strategy=PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=i),
                **options,
            ).remote(name)
            for i in range(self._n)
        ]
        self._all([(i, "create", (self._dimension, self._metric, self._dtype)) for i in range(self._n)])
        self._backend = ray.get(self._actors[0].backend.remote())

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, shards: int | None = None, **options: Any) -> "RayStorage":
        """Restore a ``ShardedStorage``/``RayStorage`` save onto ``shards`` actors (default: as
        many as were saved; rows are re-balanced when the number differs). ``options`` are
        those of the constructor (backend, placement, ...)."""
        path = os.path.abspath(dir_path(path))
        m = read_manifest(path)
        store = cls(m["dimension"], m["metric"], shards=shards or len(m["shards"]), dtype=m["dtype"], **options)
        return store._filled_from(path)

    def restore(self, path: str | os.PathLike[str]) -> None:
        """Replace every actor, including dead ones, by fresh ones loaded from a save."""
        path = os.path.abspath(dir_path(path))
        read_manifest(path)  # refuse a bad save before giving up the current actors
        with self._lock.write():
            if self._closed:
                super()._check_open()
            self._release()
            self._where, self._counts, self._next_seq = {}, [0] * self._n, 0
            self._room = (-1e9, None)
            # Until the new actors hold the save, calls fail as they did.
            self._failed = {i: "not restored yet" for i in range(self._n)}
            self._start()
            self._restore_from(path)
            self._failed = {}

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def actors(self) -> list[Any]:
        """The shards' Ray actor handles, shard 0 first."""
        return list(self._actors)

    def _check_open(self) -> None:
        super()._check_open()
        if self._failed:
            raise BackendError(
                "; ".join(f"shard {i}: {why}" for i, why in sorted(self._failed.items()))
                + " (call restore(path) to bring the store back)"
            )

    def _run(self, calls: list[tuple[int, str, tuple]], parallel: bool = True) -> list[Any]:
        # Actors always run in parallel: a Ray round trip costs more than any search it saves.
        puts: dict[int, Any] = {}

        def by_reference(a: Any) -> Any:
            # One object-store copy per array, shared by every shard that reads it.
            if isinstance(a, np.ndarray) and a.nbytes >= _PUT_BYTES:
                if id(a) not in puts:
                    puts[id(a)] = (a, ray.put(a))
                return puts[id(a)][1]
            return a

        refs = [self._actors[s].call.remote(op, *map(by_reference, args)) for s, op, args in calls]
        out: list[Any] = []
        for (shard, op, _), ref in zip(calls, refs):
            try:
                out.append(ray.get(ref))
            except RayActorError as e:
                why = f"its Ray actor died ({type(e).__name__})"
                self._failed.setdefault(shard, why)
                out.append(BackendError(f"shard {shard}: {why} during {op}"))
            except RayTaskError as e:
                cause = getattr(e, "cause", None)
                out.append(cause if isinstance(cause, Exception) else BackendError(f"shard {shard}: {e}"))
        return out

    def _release(self) -> None:
        for a in self._actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # already gone
                pass
        self._actors = []
        if self._pg is not None:
            remove_placement_group(self._pg)
            self._pg = None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a ShardedStorage-format directory (see ``ShardedStorage.save``); each actor
        writes its own shard file, so ``path`` must be visible to all of them."""
        super().save(os.path.abspath(dir_path(path)))
