"""FAISS vector index for Echo Memory: one per embedder, keyed by the catalog's stable int64 ids.

`VectorIndex` holds one embedder's vectors in memory (ids, float32 vectors and a faiss index over them)
and keeps them in step with their files in settings.memory_dir/<embedder>/. The pieces it is made of:

- index_files.py: the on-disk generations, manifest.json, checksums and repair, the memory lock and the
  index errors. A save writes a new generation and commits it by replacing manifest.json atomically;
  `VectorIndex.open` verifies every file and repairs what it can (index rebuilt from the vectors, or
  vectors read back from the index); when both are lost it raises IndexCorruptError and the caller
  rebuilds from the store (`open_reconciled`).
- knn.py: faiss itself: exact (flat) up to `hnsw_threshold` vectors (default 200,000), HNSW above with
  efSearch calibrated against exact search until recall@10 reaches TARGET_RECALL; filtered and exact
  k-NN, and the tuning constants.
- dupes.py: near-duplicate pairs and groups. reconcile.py: making the index hold the catalog's ids.

Every name callers used from this module is still importable from here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echo_os.memory import knn
from echo_os.memory.dupes import DupePair, dupe_pairs, group_dupes
from echo_os.memory.index_files import (
    DEFAULT_LOCK_TIMEOUT_S,
    FORMAT_VERSION,
    ConcurrentWriteError,
    FileEntry,
    IndexCorruptError,
    IndexFiles,
    IndexKind,
    IndexMismatchError,
    Manifest,
    MemoryBusyError,
    MemoryIndexError,
    MemoryLock,
)
from echo_os.memory.knn import omp_threads as _omp_threads  # noqa: F401  (resonance.analyze imports it from here)
from echo_os.memory.reconcile import FetchMissing, ReconcileReport, reconcile

__all__ = [
    "DEFAULT_HNSW_THRESHOLD", "DEFAULT_LOCK_TIMEOUT_S", "FORMAT_VERSION", "ConcurrentWriteError", "DupePair",
    "FetchMissing", "FileEntry", "IndexCorruptError", "IndexKind", "IndexMismatchError", "IndexStats",
    "Manifest", "MemoryBusyError", "MemoryIndexError", "MemoryLock", "ReconcileReport", "VectorIndex",
    "group_dupes", "open_reconciled", "reconcile",
]

logger = logging.getLogger(__name__)

DEFAULT_HNSW_THRESHOLD = 200_000


@dataclass(frozen=True)
class IndexStats:
    embedder: str
    dim: int
    count: int
    kind: IndexKind
    generation: int
    ef_search: int | None
    calibrated_recall: float | None
    tombstones: int
    bytes_on_disk: int
    fingerprint: str
    answers_exactly: bool = False  # HNSW missed the recall target: queries scan the vectors instead


class VectorIndex:
    """The vectors of one embedder, in memory, with their files in memory_dir/<embedder>/.

    Use `VectorIndex.open(...)` to load (or start empty) and `with index.writing(): index.add(...)` to
    change it safely while other processes may write too. Search works on the in-memory copy;
    `refresh()` reloads it when another process has saved a newer generation.
    """

    def __init__(self, memory_dir: Path, embedder: str, dim: int, *, fingerprint: str = "",
                 hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S):
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.memory_dir = Path(memory_dir)
        self.directory = self.memory_dir / embedder
        self.files = IndexFiles(self.directory)
        self.embedder = embedder
        self.dim = int(dim)
        self.fingerprint = fingerprint
        self.hnsw_threshold = int(hnsw_threshold)
        self.lock_timeout = lock_timeout
        self.generation = 0
        self.kind: IndexKind = "flat"
        self.ef_search = knn.EF_SEARCH_LADDER[-1]
        self.calibrated_recall: float | None = None
        self.calibrated_count = 0
        # What open() had to repair, if anything (None when the files were intact or absent).
        self.repaired: str | None = None
        self.dirty = False
        self._ids = np.zeros(0, dtype=np.int64)
        self._vectors = np.zeros((0, self.dim), dtype=np.float32)
        self._tombstones: set[int] = set()  # ids removed from an HNSW graph that cannot delete in place
        self._faiss = None
        self._row_lookup: tuple[np.ndarray, np.ndarray] | None = None
        self._guard = threading.RLock()  # one thread at a time mutates the in-memory copy
        self._seen_manifest: tuple[int, int, int] | None = None  # manifest stat when last loaded/saved

    # ---- opening and saving

    @property
    def manifest_path(self) -> Path:
        return self.files.manifest_path

    def lock(self) -> MemoryLock:
        return MemoryLock(self.memory_dir, timeout=self.lock_timeout)

    @classmethod
    def open(cls, memory_dir: Path, embedder: str, dim: int, *, fingerprint: str = "",
             hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD, repair: bool = True,
             lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> VectorIndex:
        """Load the index saved in memory_dir/<embedder>/, or an empty one when there is none.

        Raises IndexMismatchError when the files belong to another embedder (name, dim or fingerprint),
        IndexCorruptError when files are missing, truncated or fail their checksum and cannot be repaired
        from each other. With repair=True a lost index file is rebuilt from the vectors and lost vectors
        are read back from the index; `index.repaired` then says what happened (saved on the next save).
        """
        index = cls(memory_dir, embedder, dim, fingerprint=fingerprint, hnsw_threshold=hnsw_threshold,
                    lock_timeout=lock_timeout)
        index._load(repair=repair)
        return index

    @classmethod
    def replacing(cls, memory_dir: Path, embedder: str, dim: int, **options: object) -> VectorIndex:
        """An empty index whose next save replaces whatever is on disk (broken or foreign files included).

        Call under the memory lock; used to rebuild from the store after IndexCorruptError/IndexMismatchError.
        """
        index = cls(memory_dir, embedder, dim, **options)  # type: ignore[arg-type]
        try:
            manifest = index.files.read_manifest()
        except IndexCorruptError:
            manifest = None
            index.manifest_path.unlink(missing_ok=True)
        index.generation = manifest.generation if manifest is not None else 0
        index.dirty = True
        return index

    def _load(self, repair: bool) -> None:
        """Take the generation on disk into memory (nothing when there is none); a lost faiss index is
        rebuilt from the vectors and `repaired` says so."""
        stored = self.files.read_current(self.embedder, self.dim, self.fingerprint, repair)
        if stored is None:
            return
        manifest, bad, faiss_index = stored.manifest, stored.bad, stored.faiss_index
        self.generation = manifest.generation
        self.fingerprint = self.fingerprint or manifest.fingerprint
        self.kind = manifest.kind
        self.ef_search = manifest.ef_search
        self.calibrated_recall = manifest.calibrated_recall
        self.calibrated_count = manifest.calibrated_count
        self._ids = stored.ids
        self._vectors = stored.vectors
        self._tombstones = set(manifest.tombstones)
        self._row_lookup = None
        self.repaired = None
        self.dirty = False
        if faiss_index is None:
            self._tombstones = set()
            self._rebuild(self._choose_kind())
            self.repaired = f"rebuilt the faiss index from the stored vectors ({', '.join(sorted(set(bad)))} bad)"
            self.dirty = True
        else:
            self._faiss = faiss_index
            if bad:
                self.repaired = f"recovered the vectors from the faiss index ({', '.join(sorted(set(bad)))} bad)"
                self.dirty = True
        if self.repaired:
            logger.warning("memory index %s: %s", self.embedder, self.repaired)
        self._seen_manifest = stored.stamp

    def disk_generation(self) -> int:
        return self.files.disk_generation()

    def refresh(self) -> bool:
        """Reload from disk if another process saved a newer generation. Returns True when reloaded."""
        with self._guard:
            seen = self.files.manifest_stamp()
            if seen == self._seen_manifest:  # cheap: no JSON parse while nothing was saved
                return False
            if self.disk_generation() == self.generation:
                self._seen_manifest = seen
                return False
            self._load(repair=True)
            return True

    @contextmanager
    def writing(self) -> Iterator[VectorIndex]:
        """Hold the memory lock, bring this copy up to date with disk, and save on exit if changed.

        The read-modify-write that keeps two processes adding at once from losing each other's vectors.
        Unsaved in-memory changes made before entering are discarded if another process saved since.
        """
        with self.lock(), self._guard:
            if self.disk_generation() != self.generation:
                self._load(repair=True)
            yield self
            if self.dirty:
                self.save()

    def save(self) -> None:
        """Write a new generation atomically: data files first (fsynced), then manifest.json via os.replace."""
        import faiss

        with self.lock(), self._guard:
            on_disk = self.disk_generation()
            if on_disk != self.generation:
                raise ConcurrentWriteError(
                    f"{self.directory} was saved by another process (generation {on_disk}, this copy has "
                    f"{self.generation}); change the index inside `with index.writing():`."
                )
            faiss_index = self._get_faiss()  # built now if it never was, before the manifest records its kind
            template = Manifest(
                format=FORMAT_VERSION, generation=self.generation + 1, embedder=self.embedder, dim=self.dim,
                fingerprint=self.fingerprint, count=len(self._ids), kind=self.kind, hnsw_m=knn.HNSW_M,
                ef_construction=knn.HNSW_EF_CONSTRUCTION, ef_search=self.ef_search,
                calibrated_recall=self.calibrated_recall, tombstones=tuple(sorted(self._tombstones)),
                files={}, saved_at=0.0, calibrated_count=self.calibrated_count,
            )
            manifest = self.files.write(template, self._ids, self._vectors,
                                        lambda p: faiss.write_index(faiss_index, str(p)))
            self._seen_manifest = self.files.manifest_stamp()
            self.generation = manifest.generation
            self.dirty = False
            self.repaired = None
            self.files.prune(manifest)

    # ---- contents

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def count(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> np.ndarray:
        """The ids held, in storage order (read-only view)."""
        view = self._ids.view()
        view.flags.writeable = False
        return view

    def __contains__(self, item: int) -> bool:
        return self._rows_of(np.array([item], dtype=np.int64))[0] >= 0

    def vector(self, item: int) -> np.ndarray:
        row = self._rows_of(np.array([item], dtype=np.int64))[0]
        if row < 0:
            raise KeyError(item)
        return np.array(self._vectors[row], dtype=np.float32)

    def vectors(self) -> np.ndarray:
        """All stored vectors, row-aligned with `ids` (read-only; may be a memory map)."""
        return np.asarray(self._vectors)

    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id in the stored arrays, -1 where absent."""
        if self._row_lookup is None:
            order = np.argsort(self._ids, kind="stable")
            self._row_lookup = (self._ids[order], order)
        sorted_ids, order = self._row_lookup
        if len(sorted_ids) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        positions = np.searchsorted(sorted_ids, ids)
        positions = np.minimum(positions, len(sorted_ids) - 1)
        found = sorted_ids[positions] == ids
        return np.where(found, order[positions], -1)

    def stats(self) -> IndexStats:
        size = sum(p.stat().st_size for p in self.directory.glob("*") if p.is_file()) if self.directory.exists() else 0
        return IndexStats(
            embedder=self.embedder, dim=self.dim, count=self.count, kind=self.kind, generation=self.generation,
            ef_search=self.ef_search if self.kind == "hnsw" else None, calibrated_recall=self.calibrated_recall,
            tombstones=len(self._tombstones), bytes_on_disk=size, fingerprint=self.fingerprint,
            answers_exactly=self.answers_exactly,
        )

    # ---- building

    def _choose_kind(self) -> IndexKind:
        return "hnsw" if self.count > self.hnsw_threshold else "flat"

    def _get_faiss(self):
        if self._faiss is None:
            self._rebuild(self._choose_kind())
        return self._faiss

    def _rebuild(self, kind: IndexKind) -> None:
        """Build a fresh faiss index of `kind` from the stored vectors (no re-embedding).

        For HNSW, CALIBRATION_QUERIES stored vectors are held out of the graph, efSearch is calibrated
        with them as queries (unseen points, like a new image), and then they are added.
        """
        started = time.perf_counter()
        index = knn.new_faiss(self.dim, kind, self.ef_search)
        self._faiss, self.kind, self._tombstones, self.dirty = index, kind, set(), True
        holdout = np.zeros(0, dtype=np.int64)
        if kind == "hnsw" and self.count >= 10 * knn.CALIBRATION_QUERIES:
            holdout = np.sort(np.random.default_rng(0).choice(self.count, knn.CALIBRATION_QUERIES, replace=False))
        graph_rows = np.setdiff1d(np.arange(self.count), holdout, assume_unique=True)
        chunk = 100_000
        for start in range(0, len(graph_rows), chunk):
            rows = graph_rows[start:start + chunk]
            index.add_with_ids(np.ascontiguousarray(self._vectors[rows], dtype=np.float32), self._ids[rows])
        if kind == "hnsw" and len(holdout):
            self._calibrate(np.ascontiguousarray(self._vectors[holdout], dtype=np.float32), self._ids[holdout],
                            held_out=True)
            index.add_with_ids(np.ascontiguousarray(self._vectors[holdout], dtype=np.float32), self._ids[holdout])
        elif kind == "hnsw":
            self.calibrate()
        else:
            self.calibrated_recall = None
        logger.info("memory index %s: built %s over %d vectors in %.1f s", self.embedder, kind, self.count,
                    time.perf_counter() - started)

    def compact(self) -> None:
        """Rebuild the faiss index from the stored vectors: drops tombstones, picks flat or HNSW by count."""
        with self._guard:
            self._rebuild(self._choose_kind())

    def calibrate(self, target_recall: float = knn.TARGET_RECALL, queries: int = knn.CALIBRATION_QUERIES,
                  seed: int = 0) -> tuple[int, float]:
        """Re-pick efSearch on the current graph, with stored vectors as queries (their own id excluded).

        Slightly optimistic next to the held-out calibration a rebuild does (a stored point sits in the
        graph next to its neighbours). Returns (ef_search, recall@10).
        """
        if self.kind != "hnsw" or self.count <= 11:
            return self.ef_search, 1.0
        rows = np.sort(np.random.default_rng(seed).choice(self.count, size=min(queries, self.count), replace=False))
        return self._calibrate(np.ascontiguousarray(self._vectors[rows], dtype=np.float32), self._ids[rows],
                               held_out=False, target_recall=target_recall)

    def _calibrate(self, queries: np.ndarray, query_ids: np.ndarray, *, held_out: bool,
                   target_recall: float = knn.TARGET_RECALL, k: int = 10) -> tuple[int, float]:
        """Smallest efSearch on EF_SEARCH_LADDER whose recall@k against exact search reaches the target.

        held_out: the queries are stored vectors that are not in the graph yet (excluded from the exact
        answer too); otherwise each query is in the graph and only its own id is excluded. If no efSearch
        reaches the target, the largest is kept and the recall it reached is recorded, so `stats` tells
        the truth.
        """
        def search_at(ef: int) -> np.ndarray:
            self.ef_search = ef
            return self._faiss_search(queries, k + 1, None)[1]

        recall = knn.calibrated_recall(queries, query_ids, self._vectors, self._ids, search_at,
                                       held_out=held_out, target_recall=target_recall, k=k)
        self.calibrated_recall = round(recall, 4)
        self.calibrated_count = self.count
        self.dirty = True
        if recall < target_recall:
            logger.warning("memory index %s: recall@%d %.3f < %.2f even at efSearch=%d", self.embedder, k,
                           recall, target_recall, self.ef_search)
        return self.ef_search, recall

    # ---- changing

    def add(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Add (or replace) vectors under catalog ids. Vectors are L2-normalised if they are not already."""
        ids = knn.as_ids(ids)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {vectors.shape}")
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(ids) == 0:
            return
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids passed to add() must be unique")
        if not np.all(np.isfinite(vectors)):
            raise ValueError("vectors must be finite")
        vectors = np.ascontiguousarray(knn.normalise(vectors))
        with self._guard:
            existing = ids[self._rows_of(ids) >= 0]
            if len(existing):
                self._drop_rows(existing)
            index = self._get_faiss()
            needs_rebuild = self.kind == "hnsw" and (
                len(existing) > 0 or any(int(i) in self._tombstones for i in ids))
            if self.kind == "flat" and len(existing):
                index.remove_ids(existing)
            self._ids = np.concatenate([self._ids, ids]) if len(self._ids) else ids
            self._vectors = np.concatenate([self._vectors, vectors]) if len(self._vectors) else vectors
            self._row_lookup = None
            self.dirty = True
            if needs_rebuild or (self.kind == "flat" and self._choose_kind() == "hnsw"):
                # HNSW cannot replace a vector in place; crossing the threshold switches to HNSW.
                self._rebuild(self._choose_kind())
            else:
                index.add_with_ids(vectors, ids)
                if self.kind == "hnsw" and self.count >= knn.RECALIBRATE_GROWTH * max(1, self.calibrated_count):
                    # A bigger graph needs a wider beam for the same recall.
                    self.calibrate()

    def remove(self, ids: Iterable[int] | np.ndarray) -> int:
        """Remove ids (absent ones are ignored). Returns how many were removed."""
        ids = knn.as_ids(ids)
        with self._guard:
            present = ids[self._rows_of(ids) >= 0]
            if len(present) == 0:
                return 0
            index = self._get_faiss()
            self._drop_rows(present)
            if self.kind == "flat":
                index.remove_ids(present)
            else:
                # HNSW graphs cannot delete: hide the ids from searches until compact().
                self._tombstones.update(int(i) for i in present)
                if len(self._tombstones) > max(1000, self.count // 4):
                    self._rebuild(self._choose_kind())
            self.dirty = True
            return len(present)

    def _drop_rows(self, ids: np.ndarray) -> None:
        keep = ~np.isin(self._ids, ids)
        self._ids = self._ids[keep]
        self._vectors = np.asarray(self._vectors)[keep]
        self._row_lookup = None

    # ---- searching

    def search(self, vector: np.ndarray, k: int = 10, allowed_ids: Iterable[int] | np.ndarray | None = None,
               ) -> list[tuple[int, float]]:
        """The k nearest ids to one query vector, best first, as (id, cosine score).

        allowed_ids restricts results to those ids (a filter from the catalog: project, model, date...).
        Exact indexes apply it through a faiss IDSelector. On HNSW, a filter is answered exactly over
        just the allowed rows when that is cheaper than the graph walk (always up to
        EXACT_SUBSET_LIMIT ids); otherwise it goes through the selector with efSearch widened in
        proportion to how much it removes. One query runs on one OpenMP thread (see knn.omp_threads).
        """
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.dim:
            raise ValueError(f"expected a {self.dim}-d query, got {query.shape[1]}-d")
        query = knn.normalise(query)
        if k <= 0 or self.count == 0:
            return []
        with self._guard, knn.omp_threads(1):
            allowed = None
            if allowed_ids is not None:
                allowed = knn.as_ids(allowed_ids)
                allowed = allowed[self._rows_of(allowed) >= 0]
                if len(allowed) == 0:
                    return []
                if self.kind == "hnsw" and len(allowed) <= max(
                        knn.EXACT_SUBSET_LIMIT,
                        knn.filtered_ef(self.ef_search, len(allowed), self.count, k) * knn.GRAPH_WALK_COST):
                    return self._exact_subset(query, allowed, k)
            if self.answers_exactly:
                return self._exact_subset(query, allowed, k)
            scores, labels = self._faiss_search(query, k, allowed)
        return [(int(i), float(s)) for i, s in zip(labels[0], scores[0]) if i >= 0]

    @property
    def answers_exactly(self) -> bool:
        """True when single queries scan the stored vectors instead of walking the HNSW graph.

        That is the case when the graph reached less than EXACT_BELOW_RECALL even at the widest
        efSearch (data with no low-dimensional structure, e.g. uniform random vectors): a slow right
        answer beats a fast wrong one.
        """
        return (self.kind == "hnsw" and knn.EXACT_WHEN_RECALL_MISSED and self.calibrated_recall is not None
                and self.calibrated_recall < knn.EXACT_BELOW_RECALL)

    def search_batch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) arrays of shape (n, k) for many queries at once; id -1 where fewer than k."""
        queries = knn.normalise(np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)))
        with self._guard:
            return self._faiss_search(queries, k, None)

    def exact_search(self, vector: np.ndarray, k: int = 10) -> list[tuple[int, float]]:
        """Brute force over the stored vectors: the ground truth HNSW recall is measured against."""
        query = knn.normalise(np.asarray(vector, dtype=np.float32).reshape(1, -1))
        with self._guard, knn.omp_threads(1):
            return self._exact_subset(query, None, k)

    def _exact_subset(self, query: np.ndarray, allowed: np.ndarray | None, k: int) -> list[tuple[int, float]]:
        """Exact top-k over the stored rows of `allowed` (all rows when None)."""
        rows = None
        if allowed is not None:
            rows = self._rows_of(allowed)
            rows = np.sort(rows[rows >= 0])
        return knn.exact_top(query, self._vectors, self._ids, rows, k)

    def _faiss_search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None,
                      ) -> tuple[np.ndarray, np.ndarray]:
        return knn.index_search(self._get_faiss(), queries, k, allowed, self._tombstones,
                                self.ef_search if self.kind == "hnsw" else None, self.count)

    # ---- near-duplicates

    def dupes(self, threshold: float = 0.97, batch: int = 1024) -> list[DupePair]:
        """Pairs of ids whose vectors have cosine >= threshold, highest first.

        k-NN over the stored vectors through the index (exact when flat); k grows for rows whose k-th
        neighbour is still above the threshold, so clusters of near-identical images are listed whole.
        """
        with self._guard:
            return dupe_pairs(self._vectors, self._ids, lambda queries, k: self._faiss_search(queries, k, None),
                              threshold, batch)


def open_reconciled(memory_dir: Path, embedder: str, dim: int, catalog_ids: Iterable[int],
                    fetch_missing: FetchMissing, *, fingerprint: str = "",
                    hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD, rebuild: bool = False,
                    progress: Callable[[int, int], None] | None = None) -> tuple[VectorIndex, ReconcileReport]:
    """Open an index and bring it in line with the catalog, rebuilding from the store when it is broken.

    Under the memory lock: a corrupt or foreign index (IndexCorruptError / IndexMismatchError), or any
    index when rebuild=True, is discarded and every catalog id is re-embedded through fetch_missing;
    otherwise only the difference is fixed. Saved when anything changed.
    """
    catalog_ids = knn.as_ids(catalog_ids)
    with MemoryLock(memory_dir):
        reason = "rebuild requested" if rebuild else None
        index = None
        if not rebuild:
            try:
                index = VectorIndex.open(memory_dir, embedder, dim, fingerprint=fingerprint,
                                         hnsw_threshold=hnsw_threshold)
            except (IndexCorruptError, IndexMismatchError) as error:
                reason = str(error)
                logger.warning("memory index %s: %s -- rebuilding from the artifacts", embedder, reason)
        if index is None:
            index = VectorIndex.replacing(memory_dir, embedder, dim, fingerprint=fingerprint,
                                          hnsw_threshold=hnsw_threshold)
        with index.writing():
            report = reconcile(index, catalog_ids, fetch_missing, progress=progress)
            if reason is not None:
                report.rebuilt, report.reason = True, reason
                index.dirty = True
        return index, report
