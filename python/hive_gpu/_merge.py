"""The one k-way merge of per-shard top-k lists, shared by ShardedStorage and RayStorage."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["merge_order"]


def merge_order(
    scores: Sequence[np.ndarray], seqs: Sequence[np.ndarray], k: int, higher_is_better: bool
) -> np.ndarray:
    """Positions of the merged top ``k`` in the shards' lists laid side by side.

    ``scores[s]`` and ``seqs[s]`` are shard ``s``'s ``[nq, k_s]`` results (best first) and the
    global insertion sequence of each hit. Returns ``[nq, min(k, sum k_s)]`` indices into the
    concatenation along axis 1, best first: by score, and equal scores by the smaller
    sequence, the single store's "older first" rule. Each shard's list already holds its own
    best ``k`` in that order, so the merged top ``k`` is among them.
    """
    all_scores = np.concatenate([np.asarray(s, np.float32) for s in scores], axis=1)
    all_seqs = np.concatenate([np.asarray(q, np.int64) for q in seqs], axis=1)
    key = -all_scores if higher_is_better else all_scores  # negation is exact in float
    # lexsort sorts by its last key first: score, then sequence.
    order = np.lexsort((all_seqs, key), axis=1)
    return order[:, : min(k, all_scores.shape[1])]
