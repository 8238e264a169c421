"""The faiss side of the memory index: flat or HNSW, efSearch calibration, exact and filtered k-NN.

Scoring is inner product over L2-normalised vectors, i.e. cosine similarity. Up to the index's
`hnsw_threshold` vectors search is exact; above it the index is HNSW (M=HNSW_M,
efConstruction=HNSW_EF_CONSTRUCTION) and efSearch is calibrated against exact search over the stored
vectors until recall@10 reaches TARGET_RECALL. The tuning constants live here and are read at call time
(tests and benchmarks set them on this module). faiss is imported inside functions so the CLI starts fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from echo_os.memory.index_files import IndexKind

HNSW_M = 32
# Build-time beam width. faiss' default of 40 builds a poor graph on clustered data: at 300k clustered
# 512-d vectors efConstruction=120 reaches recall@10 0.994 at efSearch=32 (0.29 ms) where 40 needs
# efSearch=512 for 0.966 (2.2 ms), for 2.5x the build time (151 s against 60 s on 2 cores); see
# benchmarks/RESULTS.md.
HNSW_EF_CONSTRUCTION = 120
# efSearch values tried, smallest first, when calibrating recall against exact search.
EF_SEARCH_LADDER = (16, 32, 64, 128, 256, 512, 1024, 2048)
TARGET_RECALL = 0.95
# When even the widest efSearch reaches less than this recall@10, the graph is of no use for this data
# (uniform random vectors at 1M reach 0.28): single queries are answered by exact scan instead. Between
# this and TARGET_RECALL the widest efSearch is kept: approximate, but an order of magnitude faster.
EXACT_BELOW_RECALL = 0.80
EXACT_WHEN_RECALL_MISSED = True
# Calibration aims this much above the target: 200 queries measure recall@10 to about +-0.01.
CALIBRATION_MARGIN = 0.01
CALIBRATION_QUERIES = 200
# efSearch is calibrated again (on the grown graph) when the count has grown by this factor since.
RECALIBRATE_GROWTH = 1.5
# A filter that lets fewer ids than this through is answered by exact search over just those rows.
EXACT_SUBSET_LIMIT = 20_000
# Distances a filtered HNSW walk computes per unit of efSearch (the 2*M level-0 neighbours); scanning the
# allowed rows costs one per row. The cheaper of the two answers a filtered search.
GRAPH_WALK_COST = 2 * HNSW_M


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (returned as they are when already unit); ValueError on a zero row."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if np.allclose(norms, 1.0, atol=1e-3):
        return vectors
    if np.any(norms == 0):
        raise ValueError("cannot index a zero vector")
    return (vectors / norms).astype(np.float32)


def as_ids(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    """Any iterable of ids as a flat, contiguous int64 array."""
    return np.ascontiguousarray(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids,
                                           dtype=np.int64).reshape(-1))


@contextmanager
def omp_threads(count: int) -> Iterator[None]:
    """Run faiss with `count` OpenMP threads in this thread, restoring the previous setting after.

    A single query gains nothing from threads (faiss parallelises over queries), and on a busy machine
    the OpenMP barrier waits for a descheduled worker: 8 ms instead of 0.2 ms for one query over 5k
    vectors on 2 shared cores. The setting is per OS thread, so other threads keep theirs.
    """
    import faiss

    previous = faiss.omp_get_max_threads()
    if previous == count:
        yield
        return
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def new_faiss(dim: int, kind: IndexKind, ef_search: int) -> Any:
    """An empty IndexIDMap2 over an exact inner-product index ("flat") or an HNSW graph."""
    import faiss

    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    graph = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    graph.hnsw.efSearch = ef_search
    return faiss.IndexIDMap2(graph)


def exact_knn(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """The ids (-1 where fewer) of the k stored vectors nearest each query, by brute force."""
    import faiss

    _, labels = faiss.knn(queries, np.ascontiguousarray(vectors, dtype=np.float32), k,
                          metric=faiss.METRIC_INNER_PRODUCT)
    return np.where(labels >= 0, ids[np.maximum(labels, 0)], -1)


def exact_top(query: np.ndarray, vectors: np.ndarray, ids: np.ndarray, rows: np.ndarray | None,
              k: int) -> list[tuple[int, float]]:
    """Exact top-k (id, score) for one query over the given sorted rows of `vectors` (all when None)."""
    import faiss

    base = np.ascontiguousarray(vectors if rows is None else vectors[rows], dtype=np.float32)
    if len(base) == 0:
        return []
    scores, found = faiss.knn(query, base, min(k, len(base)), metric=faiss.METRIC_INNER_PRODUCT)
    positions = found[0][found[0] >= 0]
    chosen = positions if rows is None else rows[positions]
    return [(int(ids[r]), float(s)) for r, s in zip(chosen, scores[0][: len(positions)])]


def filtered_ef(ef_search: int, allowed: int, count: int, k: int) -> int:
    """efSearch for a filter letting `allowed` of `count` ids through: a filter hides part of the graph,
    so the beam widens in proportion for k allowed ids to still surface (capped)."""
    fraction = allowed / max(1, count)
    ef = max(ef_search, k)
    return int(min(max(ef, ef / max(fraction, 1e-3)), 4 * EF_SEARCH_LADDER[-1]))


def index_search(index: Any, queries: np.ndarray, k: int, allowed: np.ndarray | None, tombstones: set[int],
                 ef_search: int | None, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of shape (n, k) from a faiss IndexIDMap2, hiding `tombstones`.

    allowed: only these ids may be returned (a faiss IDSelector). ef_search: the HNSW beam (widened for a
    filter, see filtered_ef), None for a flat index. count: how many live vectors the index holds.
    """
    import faiss

    keep_alive: list[object] = []
    selector: faiss.IDSelector | None = None
    if allowed is not None:
        if tombstones:
            allowed = allowed[~np.isin(allowed, np.fromiter(tombstones, dtype=np.int64))]
        selector = faiss.IDSelectorBatch(allowed)
        keep_alive.append(allowed)
    elif tombstones:
        hidden = np.fromiter(tombstones, dtype=np.int64)
        inner = faiss.IDSelectorBatch(hidden)
        selector = faiss.IDSelectorNot(inner)
        keep_alive += [hidden, inner]
    if ef_search is not None:
        ef = filtered_ef(ef_search, len(allowed), count, k) if allowed is not None else max(ef_search, k)
        # faiss 1.15's hand-written stubs leave out the HNSW search parameters the library has.
        params = faiss.SearchParametersHNSW(efSearch=ef)  # type: ignore[attr-defined]
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    scores, labels = index.search(queries, k, params=params)
    del keep_alive
    return scores, labels


def calibrated_recall(queries: np.ndarray, query_ids: np.ndarray, vectors: np.ndarray, ids: np.ndarray,
                      search_at: Callable[[int], np.ndarray], *, held_out: bool, target_recall: float,
                      k: int) -> float:
    """Walk EF_SEARCH_LADDER up until recall@k against exact search reaches the target; the recall reached.

    search_at(ef) sets the index's efSearch to ef and returns the ids (n, k + 1) it finds for `queries`;
    the last ef it was called with is the one picked (the largest when no ef reaches the target).
    held_out: the queries are stored vectors that are not in the graph yet (excluded from the exact answer
    too); otherwise each query is in the graph and only its own id is excluded.
    """
    hidden = set(query_ids.tolist())
    margin = k + 1 + (min(len(hidden), 4 * k) if held_out else 0)
    exact = exact_knn(queries, vectors, ids, min(margin, len(ids)))

    def top(labels: np.ndarray, row: int) -> set[int]:
        excluded = hidden if held_out else {int(query_ids[row])}
        return set([int(i) for i in labels if i >= 0 and int(i) not in excluded][:k])

    truth = [top(exact[row], row) for row in range(len(queries))]
    recall = 0.0
    for ef in EF_SEARCH_LADDER:
        if ef <= k:
            continue
        found = search_at(ef)
        hits = sum(len(truth[row] & top(found[row], row)) for row in range(len(queries)))
        recall = hits / max(1, sum(len(t) for t in truth))
        if recall >= min(target_recall + CALIBRATION_MARGIN, 1.0):
            break
    return recall
