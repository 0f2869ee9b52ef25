"""Property-based fuzzing: random operation sequences against a NumPy model, on every
backend, with adversarial values (magnitudes at the documented limit, denormals, zero
vectors, duplicates and their negations, dimension 1 and 4096+, k = n and k > n).

HIVE_GPU_FUZZ_EXAMPLES sets the number of sequences per backend (default 25).

Defined results checked here (docs/guarantees.md):
- cosine: a vector whose squared norm (computed in float64) is below FLT_MIN counts as the
  zero vector; its similarity with anything, itself included, is 0;
- equal scores rank the older vector (insertion order; update keeps a vector's age) first.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from reference import tolerance

import hive_gpu
from hive_gpu import (
    DimensionMismatchError,
    DuplicateIdError,
    GpuDistanceMetric,
    InvalidArgumentError,
    NonFiniteValueError,
)

EXAMPLES = int(os.environ.get("HIVE_GPU_FUZZ_EXAMPLES", "25"))
FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)
MAX_SQUARED_NORM = FLT_MAX / 4  # the write limit of storage.hpp
IDS = [f"id{i}" for i in range(10)]
DIMS = [1, 2, 3, 8, 33, 4100]
KINDS = ["gauss", "small", "large", "limit", "tiny", "denormal-parts", "zero", "dup", "neg", "int"]


def make_vector(kind: str, seed: int, dim: int, pool: list[np.ndarray]) -> np.ndarray:
    r = np.random.default_rng(seed)
    g = r.standard_normal(dim)
    if kind == "gauss":
        v = g
    elif kind == "small":
        v = g * 1e-15
    elif kind == "large":
        v = g * 1e15
    elif kind == "limit":  # squared norm just inside the write limit
        v = g / np.linalg.norm(g) * np.sqrt(MAX_SQUARED_NORM) * 0.9999
    elif kind == "tiny":  # every component denormal: a zero vector for cosine
        v = np.sign(g) * r.integers(1, 1000, dim) * 1e-42
    elif kind == "denormal-parts":
        v = g.copy()
        v[r.random(dim) < 0.5] = 1e-41
    elif kind == "zero":
        v = np.zeros(dim)
    elif kind in ("dup", "neg") and pool:
        v = pool[seed % len(pool)].astype(np.float64) * (1 if kind == "dup" else -1)
    elif kind == "int":  # small integers: many exact ties
        v = r.integers(-2, 3, dim).astype(np.float64)
    else:
        v = g
    out = v.astype(np.float32)
    if float(np.dot(out.astype(np.float64), out)) > MAX_SQUARED_NORM:  # float32 rounding
        out = (out * np.float32(0.999)).astype(np.float32)
    return out


def model_scores(X: np.ndarray, q: np.ndarray, metric: GpuDistanceMetric) -> np.ndarray:
    X = np.asarray(X, np.float64)
    q = np.asarray(q, np.float64)
    if metric is GpuDistanceMetric.DOT_PRODUCT:
        return X @ q
    if metric is GpuDistanceMetric.EUCLIDEAN:
        return np.sqrt(((X - q) ** 2).sum(1))
    xn2 = (X * X).sum(1)
    qn2 = float(q @ q)
    xi = np.where(xn2 >= FLT_MIN, 1 / np.sqrt(np.maximum(xn2, FLT_MIN)), 0.0)
    qi = 1 / np.sqrt(qn2) if qn2 >= FLT_MIN else 0.0
    return (X @ q) * xi * qi


vectors = st.tuples(st.sampled_from(KINDS), st.integers(0, 2**31))


class StoreMachine(RuleBasedStateMachine):
    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.tmp = tempfile.mkdtemp(prefix="hive_gpu_fuzz_")
        self.s = None

    @initialize(dim=st.sampled_from(DIMS), metric=st.sampled_from(list(GpuDistanceMetric)))
    def create(self, dim, metric):
        self.dim, self.metric = dim, metric
        self.s = self.ctx.create_storage(dim, metric)
        self.model: dict[str, tuple[np.ndarray, dict, int]] = {}
        self.age = 0

    def vec(self, spec) -> np.ndarray:
        kind, seed = spec
        v = make_vector(kind, seed, self.dim, [v for v, _, _ in self.model.values()])
        return v

    # -- writes --------------------------------------------------------------------------
    @rule(id=st.sampled_from(IDS), spec=vectors, md=st.dictionaries(st.sampled_from("ab"), st.text(max_size=3), max_size=2))
    def add(self, id, spec, md):
        v = self.vec(spec)
        if id in self.model:
            with pytest.raises(DuplicateIdError):
                self.s.add_vector(id, v, md)
        else:
            self.s.add_vector(id, v, md)
            self.model[id] = (v, md, self.age)
            self.age += 1

    @rule(ids=st.lists(st.sampled_from(IDS), min_size=1, max_size=5), specs=st.lists(vectors, min_size=5, max_size=5))
    def add_batch(self, ids, specs):
        X = np.stack([self.vec(sp) for sp in specs[: len(ids)]])
        if len(set(ids)) < len(ids) or any(i in self.model for i in ids):
            with pytest.raises(DuplicateIdError):  # all or nothing
                self.s.add_vectors(ids, X)
        else:
            self.s.add_vectors(ids, X)
            for i, v in zip(ids, X):
                self.model[i] = (v, {}, self.age)
                self.age += 1

    @rule(id=st.sampled_from(IDS), spec=vectors, md=st.one_of(st.none(), st.just({"u": "1"})))
    def update(self, id, spec, md):
        v = self.vec(spec)
        assert self.s.update_vector(id, v, md) == (id in self.model)
        if id in self.model:
            _, old_md, age = self.model[id]
            self.model[id] = (v, old_md if md is None else md, age)

    @rule(id=st.sampled_from(IDS + ["absent"]))
    def remove(self, id):
        assert self.s.remove_vector(id) == (id in self.model)
        self.model.pop(id, None)

    @rule(ids=st.lists(st.sampled_from(IDS), max_size=4, unique=True))
    def remove_many(self, ids):
        assert self.s.remove_vectors(ids) == sum(i in self.model for i in ids)
        for i in ids:
            self.model.pop(i, None)

    @rule()
    def clear(self):
        self.s.clear()
        self.model.clear()

    @rule(id=st.sampled_from(IDS), bad=st.sampled_from(["nan", "inf", "-inf", "over-limit", "wrong-dim"]), spec=vectors)
    def rejected_writes_change_nothing(self, id, bad, spec):
        v = self.vec(spec).copy()
        if bad == "wrong-dim":
            v, err = np.ones(self.dim + 1, np.float32), DimensionMismatchError
        elif bad == "over-limit":
            v, err = np.full(self.dim, np.sqrt(MAX_SQUARED_NORM / self.dim) * 1.01, np.float32), InvalidArgumentError
        else:
            v[spec[1] % self.dim], err = float(bad), NonFiniteValueError
        with pytest.raises(err):
            if id in self.model:
                self.s.update_vector(id, v)
            else:
                self.s.add_vector(id, v)
        ok = np.ones((1, self.dim), np.float32)
        fresh = "fresh" if "fresh" not in self.model else "fresh2"
        with pytest.raises(err):  # a bad row anywhere in a batch rejects the whole batch
            self.s.add_vectors([fresh, "other-fresh"], np.vstack([ok, v[None, : self.dim]]) if bad != "wrong-dim" else np.ones((2, self.dim + 1), np.float32))

    @rule()
    def save_and_reload(self):
        path = os.path.join(self.tmp, "s.hgv")
        self.s.save(path)
        old, self.s = self.s, self.ctx.load_storage(path)
        assert old.ids() == self.s.ids()
        old.close()

    # -- reads ---------------------------------------------------------------------------
    @rule(spec=vectors, k_kind=st.sampled_from(["1", "n", "n+1", "huge", "small"]))
    def search(self, spec, k_kind):
        q = self.vec(spec)
        n = len(self.model)
        k = {"1": 1, "n": max(n, 1), "n+1": n + 1, "huge": 2**40, "small": 3}[k_kind]
        hits = self.s.search(q, k)
        self.check_hits(q, k, [h.id for h in hits], [h.distance for h in hits])
        for h in hits:
            assert h.metadata == self.model[h.id][1]

    @rule(specs=st.lists(vectors, min_size=1, max_size=3), k=st.integers(1, 12))
    def search_batch(self, specs, k):
        Q = np.stack([self.vec(sp) for sp in specs])
        scores, ids = self.s.search_batch(Q, k)
        assert scores.shape == ids.shape == (len(Q), min(k, len(self.model)))
        for j in range(len(Q)):
            self.check_hits(Q[j], k, list(ids[j]), list(scores[j]))

    def check_hits(self, q, k, ids, scores):
        n = len(self.model)
        assert len(ids) == min(k, n)
        assert len(set(ids)) == len(ids), ids
        if not n:
            return
        names = list(self.model)
        X = np.stack([self.model[i][0] for i in names])
        exact = dict(zip(names, model_scores(X, q, self.metric)))
        tol = tolerance(X, q, self.metric)
        got = np.asarray(scores, np.float64)
        assert np.all(np.isfinite(got)), got
        for i, s in zip(ids, got):
            assert abs(s - exact[i]) <= tol, (i, s, exact[i], tol)
        better = self.metric.higher_is_better
        step = np.diff(got)
        assert np.all(step <= 0) if better else np.all(step >= 0), got
        # No vector left out is better than the worst one returned.
        worst = min(exact[i] for i in ids) if better else max(exact[i] for i in ids)
        for i in set(names) - set(ids):
            assert (exact[i] <= worst + 2 * tol) if better else (exact[i] >= worst - 2 * tol), (i, exact[i], worst)
        # Bitwise duplicates score identically, so the older one must rank first.
        pos = {i: p for p, i in enumerate(ids)}
        for a in names:
            for b in names:
                va, _, age_a = self.model[a]
                vb, _, age_b = self.model[b]
                if age_a < age_b and np.array_equal(va, vb) and b in pos:
                    assert a in pos and pos[a] < pos[b], (a, b, ids)

    @invariant()
    def contents_match_the_model(self):
        if self.s is None:
            return
        assert len(self.s) == len(self.model)
        assert sorted(self.s.ids()) == sorted(self.model)
        for i, (v, md, _) in self.model.items():
            got = self.s.get_vector(i)
            np.testing.assert_array_equal(got.data, v)
            assert got.metadata == md

    def teardown(self):
        if self.s is not None:
            self.s.close()
        for name in os.listdir(self.tmp):
            os.remove(os.path.join(self.tmp, name))
        os.rmdir(self.tmp)


def test_random_operation_sequences(ctx):
    run_state_machine_as_test(
        lambda: StoreMachine(ctx),
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=30,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )


@pytest.mark.parametrize("metric", list(GpuDistanceMetric), ids=lambda m: m.value)
def test_zero_vectors(ctx, metric):
    # Cosine with a zero vector is similarity 0; the other metrics need no special case.
    s = ctx.create_storage(4, metric)
    s.add_vectors(["zero", "one"], np.array([[0, 0, 0, 0], [1, 0, 0, 0]], np.float32))
    by_id = {h.id: h.distance for h in s.search(np.array([0, 0, 0, 0], np.float32), 2)}
    want = {"cosine": (0.0, 0.0), "dot_product": (0.0, 0.0), "euclidean": (0.0, 1.0)}[metric.value]
    assert (by_id["zero"], by_id["one"]) == want
    by_id = {h.id: h.distance for h in s.search(np.array([2, 0, 0, 0], np.float32), 2)}
    want = {"cosine": (0.0, 1.0), "dot_product": (0.0, 2.0), "euclidean": (2.0, 1.0)}[metric.value]
    assert (by_id["zero"], by_id["one"]) == pytest.approx(want, abs=1e-6)


def test_cosine_tiny_norm_is_the_zero_vector(ctx):
    s = ctx.create_storage(3, "cosine")
    tiny = np.array([1e-40, -3e-41, 0], np.float32)
    s.add_vectors(["tiny", "unit"], np.stack([tiny, np.array([1, 0, 0], np.float32)]))
    for q in (np.array([1, 0, 0], np.float32), tiny):
        hits = {h.id: h.distance for h in s.search(q, 2)}
        assert hits["tiny"] == 0.0, hits
        assert hits["unit"] == (1.0 if q[0] == 1 else 0.0), hits


@pytest.mark.parametrize("metric", list(GpuDistanceMetric), ids=lambda m: m.value)
def test_magnitudes_at_the_limit_stay_finite(ctx, metric):
    # |x|^2 at the write limit, query its exact opposite: the largest score the limit allows.
    d = 64
    g = np.random.default_rng(3).standard_normal(d)
    v = (g / np.linalg.norm(g) * np.sqrt(MAX_SQUARED_NORM) * 0.9999).astype(np.float32)
    s = ctx.create_storage(d, metric)
    s.add_vector("v", v)
    for q in (v, -v):
        (h,) = s.search(q, 5)
        want = float(model_scores(v[None], q, metric)[0])
        assert np.isfinite(h.distance)
        assert h.distance == pytest.approx(want, rel=1e-4, abs=1e-6)
    with pytest.raises(InvalidArgumentError, match="norm"):
        s.add_vector("over", v * np.float32(1.001))
