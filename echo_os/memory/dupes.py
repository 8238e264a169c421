"""Near-duplicates in a memory index: pairs of ids whose vectors are almost the same, and their groups."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

# search(queries, k) -> (scores, ids), arrays of shape (n, k); id -1 where there are fewer than k.
KnnSearch = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class DupePair:
    """Two ids whose vectors have cosine similarity >= the threshold; a < b."""

    a: int
    b: int
    score: float


def dupe_pairs(vectors: np.ndarray, ids: np.ndarray, search: KnnSearch, threshold: float = 0.97,
               batch: int = 1024) -> list[DupePair]:
    """Pairs of ids whose vectors have cosine >= threshold, highest first.

    k-NN of every stored vector (`vectors`, row-aligned with `ids`) through `search`; k grows for rows
    whose k-th neighbour is still above the threshold, so clusters of near-identical images are listed
    whole. VectorIndex.dupes calls this with its own index search.
    """
    count = len(ids)
    pairs: dict[tuple[int, int], float] = {}
    for start in range(0, count, batch):
        block = np.ascontiguousarray(vectors[start:start + batch], dtype=np.float32)
        block_ids = ids[start:start + batch]
        pending = np.arange(len(block))
        k = min(16, count)
        while len(pending):
            scores, labels = search(block[pending], k)
            saturated = []
            for row, (row_scores, row_labels) in zip(pending, zip(scores, labels)):
                me = int(block_ids[row])
                for other, score in zip(row_labels, row_scores):
                    if other < 0 or other == me or score < threshold:
                        continue
                    key = (min(me, int(other)), max(me, int(other)))
                    pairs[key] = max(pairs.get(key, -1.0), float(score))
                if row_labels[-1] >= 0 and row_scores[-1] >= threshold and k < count:
                    saturated.append(row)
            pending = np.array(saturated, dtype=np.int64)
            k = min(k * 4, count)
    return sorted((DupePair(a, b, s) for (a, b), s in pairs.items()), key=lambda p: (-p.score, p.a, p.b))


def group_dupes(pairs: Iterable[DupePair]) -> list[list[int]]:
    """Connected groups of near-duplicate ids (union-find over the pairs), largest group first."""
    parent: dict[int, int] = {}

    def root(item: int) -> int:
        parent.setdefault(item, item)
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for pair in pairs:
        parent[root(pair.a)] = root(pair.b)
    groups: dict[int, list[int]] = {}
    for item in parent:
        groups.setdefault(root(item), []).append(item)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: (-len(g), g[0]))
