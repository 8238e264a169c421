"""FAISS vector index for Echo Memory: one per embedder, keyed by the catalog's stable int64 ids.

Layout of settings.memory_dir (the index is a cache: the artifact folders are the source of truth):

    memory/.lock                         one writer at a time, across processes (filelock)
    memory/<embedder>/manifest.json      the commit point: generation, count, embedder, dim, checksums
    memory/<embedder>/index-<gen>.faiss  IndexIDMap2 over IndexFlatIP (exact) or IndexHNSWFlat
    memory/<embedder>/vectors-<gen>.npy  the raw float32 vectors (rebuilds never re-embed; exact checks)
    memory/<embedder>/ids-<gen>.npy      int64 catalog ids, row-aligned with vectors

A save writes the files of a new generation, fsyncs them, then replaces manifest.json atomically; a crash
at any point leaves the previous generation intact. `VectorIndex.open` verifies sizes and sha256 of every
file and repairs what it can (index rebuilt from vectors, or vectors read back from the index); when both
are lost it raises IndexCorruptError and the caller rebuilds from the store (`open_reconciled`).

Scoring is inner product over L2-normalised vectors, i.e. cosine similarity. Up to `hnsw_threshold`
vectors (default 200,000) search is exact; above it the index switches to HNSW (M=32,
efConstruction=HNSW_EF_CONSTRUCTION) and efSearch is calibrated against exact search over the stored
vectors until recall@10 reaches TARGET_RECALL. faiss is imported inside functions so the CLI starts fast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from echo_os.errors import EchoError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_HNSW_THRESHOLD = 200_000
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
DEFAULT_LOCK_TIMEOUT_S = 120.0

IndexKind = Literal["flat", "hnsw"]


class MemoryIndexError(EchoError):
    """Something is wrong with the memory index; `echo-os memory reindex` rebuilds it from the artifacts."""


class IndexCorruptError(MemoryIndexError):
    """Index files missing, truncated or failing their checksum, and not repairable from each other."""


class IndexMismatchError(MemoryIndexError):
    """The index on disk was made by another embedder (name, dimension or weights differ)."""


class MemoryBusyError(MemoryIndexError):
    """Another process held the memory lock for longer than the timeout."""


class ConcurrentWriteError(MemoryIndexError):
    """save() found a newer generation on disk: another process wrote since this index was loaded."""


@dataclass(frozen=True)
class FileEntry:
    name: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """manifest.json: what a generation of the index holds and how to verify it."""

    format: int
    generation: int
    embedder: str
    dim: int
    fingerprint: str
    count: int
    kind: IndexKind
    hnsw_m: int
    ef_construction: int
    ef_search: int
    calibrated_recall: float | None
    tombstones: tuple[int, ...]
    files: dict[str, FileEntry]
    saved_at: float
    calibrated_count: int = 0  # how many vectors the graph held when efSearch was last calibrated

    def to_json(self) -> str:
        data = asdict(self)
        data["tombstones"] = list(self.tombstones)
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        data["files"] = {role: FileEntry(**entry) for role, entry in data["files"].items()}
        data["tombstones"] = tuple(int(i) for i in data.get("tombstones", ()))
        return cls(**data)


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


@dataclass(frozen=True)
class DupePair:
    """Two ids whose vectors have cosine similarity >= the threshold; a < b."""

    a: int
    b: int
    score: float


@dataclass
class ReconcileReport:
    embedder: str
    removed: list[int] = field(default_factory=list)
    added: list[int] = field(default_factory=list)
    unembeddable: list[int] = field(default_factory=list)
    rebuilt: bool = False
    reason: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.removed or self.added or self.rebuilt)


# -- locking -----------------------------------------------------------------------------------------


class MemoryLock:
    """One writer at a time on a memory folder: filelock on memory_dir/.lock.

    Reentrant within a thread (is_singleton: every MemoryLock on the same folder in a process shares one
    FileLock), exclusive across threads and processes.
    """

    def __init__(self, memory_dir: Path, timeout: float = DEFAULT_LOCK_TIMEOUT_S):
        from filelock import FileLock

        memory_dir = Path(memory_dir)
        memory_dir.mkdir(parents=True, exist_ok=True)
        self.path = memory_dir / ".lock"
        self.timeout = timeout
        self._lock = FileLock(str(self.path), is_singleton=True)

    def __enter__(self) -> MemoryLock:
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=self.timeout)
        except Timeout:
            raise MemoryBusyError(
                f"The memory index in {self.path.parent} has been locked by another process for over "
                f"{self.timeout:.0f} s (a reindex?); try again when it finishes."
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


# -- file helpers ------------------------------------------------------------------------------------


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on this platform (Windows)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if np.allclose(norms, 1.0, atol=1e-3):
        return vectors
    if np.any(norms == 0):
        raise ValueError("cannot index a zero vector")
    return (vectors / norms).astype(np.float32)


@contextmanager
def _omp_threads(count: int) -> Iterator[None]:
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


def _as_ids(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids,
                                           dtype=np.int64).reshape(-1))


# -- the index ---------------------------------------------------------------------------------------


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
        self.embedder = embedder
        self.dim = int(dim)
        self.fingerprint = fingerprint
        self.hnsw_threshold = int(hnsw_threshold)
        self.lock_timeout = lock_timeout
        self.generation = 0
        self.kind: IndexKind = "flat"
        self.ef_search = EF_SEARCH_LADDER[-1]
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
        return self.directory / "manifest.json"

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
            manifest = index._read_manifest()
        except IndexCorruptError:
            manifest = None
            index.manifest_path.unlink(missing_ok=True)
        index.generation = manifest.generation if manifest is not None else 0
        index.dirty = True
        return index

    def _read_manifest(self) -> Manifest | None:
        try:
            text = self.manifest_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            manifest = Manifest.from_json(text)
        except (ValueError, TypeError, KeyError) as error:
            raise IndexCorruptError(
                f"{self.manifest_path} is unreadable ({type(error).__name__}); run `echo-os memory reindex`."
            ) from None
        return manifest

    def _load(self, repair: bool) -> None:
        # A writer may replace the generation between reading the manifest and the files; retry then.
        for attempt in range(3):
            stamp = self._manifest_stamp()
            manifest = self._read_manifest()
            if manifest is None:
                leftovers = sorted(p.name for p in self.directory.glob("*-*.*")) if self.directory.exists() else []
                if leftovers:
                    raise IndexCorruptError(
                        f"{self.directory} holds index files but no manifest.json; run `echo-os memory reindex`."
                    )
                return
            try:
                self._load_generation(manifest, repair)
                self._seen_manifest = stamp
                return
            except IndexCorruptError:
                latest = self._read_manifest()
                if attempt < 2 and latest is not None and latest.generation != manifest.generation:
                    continue
                raise

    def _check_manifest(self, manifest: Manifest) -> None:
        if manifest.format != FORMAT_VERSION:
            raise IndexMismatchError(
                f"{self.manifest_path} has format {manifest.format}, this echo-os reads {FORMAT_VERSION}; "
                "run `echo-os memory reindex`."
            )
        if manifest.embedder != self.embedder or manifest.dim != self.dim:
            raise IndexMismatchError(
                f"{self.directory} holds {manifest.dim}-d vectors of {manifest.embedder!r}, expected "
                f"{self.dim}-d of {self.embedder!r}; run `echo-os memory reindex`."
            )
        if self.fingerprint and manifest.fingerprint and manifest.fingerprint != self.fingerprint:
            raise IndexMismatchError(
                f"{self.directory} was built with other {self.embedder} weights ({manifest.fingerprint[:12]}, "
                f"now {self.fingerprint[:12]}); run `echo-os memory reindex`."
            )

    def _verified(self, manifest: Manifest, role: str) -> Path | None:
        """The path of one file of the generation if its size and checksum match, else None."""
        entry = manifest.files.get(role)
        if entry is None:
            return None
        path = self.directory / entry.name
        try:
            if path.stat().st_size != entry.bytes:
                return None
        except FileNotFoundError:
            return None
        return path if _sha256_of(path) == entry.sha256 else None

    def _load_generation(self, manifest: Manifest, repair: bool) -> None:
        import faiss

        self._check_manifest(manifest)
        ids_path = self._verified(manifest, "ids")
        vectors_path = self._verified(manifest, "vectors")
        index_path = self._verified(manifest, "index")
        bad = [role for role, path in (("ids", ids_path), ("vectors", vectors_path), ("index", index_path))
               if path is None]

        faiss_index = None
        if index_path is not None:
            try:
                faiss_index = faiss.read_index(str(index_path))
            except RuntimeError:
                bad.append("index")
                index_path = None
        if faiss_index is not None and (not isinstance(faiss_index, faiss.IndexIDMap2)
                                        or faiss_index.d != self.dim
                                        or faiss_index.ntotal != manifest.count + len(manifest.tombstones)):
            bad.append("index")
            faiss_index = None

        ids = np.load(ids_path, allow_pickle=False) if ids_path is not None else None
        vectors = np.load(vectors_path, mmap_mode="r", allow_pickle=False) if vectors_path is not None else None
        if ids is not None and (ids.dtype != np.int64 or ids.shape != (manifest.count,)):
            bad.append("ids")
            ids = None
        if vectors is not None and (vectors.dtype != np.float32 or vectors.shape != (manifest.count, self.dim)):
            bad.append("vectors")
            vectors = None

        if bad and not repair:
            raise IndexCorruptError(
                f"{self.directory}: {', '.join(sorted(set(bad)))} file(s) missing, truncated or failing their "
                "checksum; run `echo-os memory reindex`."
            )

        if (ids is None or vectors is None) and faiss_index is not None:
            # Read the vectors back out of the index (IndexIDMap2 keeps the id map and the flat storage),
            # leaving out the ids an HNSW graph still holds but hides.
            id_map = faiss.vector_to_array(faiss_index.id_map).astype(np.int64)
            live = ~np.isin(id_map, np.array(manifest.tombstones, dtype=np.int64))
            ids = np.ascontiguousarray(id_map[live])
            vectors = np.ascontiguousarray(faiss_index.index.reconstruct_n(0, faiss_index.ntotal)[live],
                                           dtype=np.float32)
        if ids is None or vectors is None:
            raise IndexCorruptError(
                f"{self.directory}: {', '.join(sorted(set(bad)))} file(s) missing, truncated or failing their "
                "checksum and not recoverable from the others; run `echo-os memory reindex`."
            )

        self.generation = manifest.generation
        self.fingerprint = self.fingerprint or manifest.fingerprint
        self.kind = manifest.kind
        self.ef_search = manifest.ef_search
        self.calibrated_recall = manifest.calibrated_recall
        self.calibrated_count = manifest.calibrated_count
        self._ids = ids
        self._vectors = vectors
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

    def disk_generation(self) -> int:
        manifest = self._read_manifest()
        return manifest.generation if manifest is not None else 0

    def refresh(self) -> bool:
        """Reload from disk if another process saved a newer generation. Returns True when reloaded."""
        with self._guard:
            seen = self._manifest_stamp()
            if seen == self._seen_manifest:  # cheap: no JSON parse while nothing was saved
                return False
            if self.disk_generation() == self.generation:
                self._seen_manifest = seen
                return False
            self._load(repair=True)
            return True

    def _manifest_stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = self.manifest_path.stat()
        except FileNotFoundError:
            return None
        # os.replace gives every saved manifest a new inode.
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

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
            self.directory.mkdir(parents=True, exist_ok=True)
            generation = self.generation + 1
            stem = f"{generation:08d}"
            files: dict[str, FileEntry] = {}
            writers: dict[str, tuple[str, Callable[[Path], None]]] = {
                "ids": (f"ids-{stem}.npy", lambda p: _write_npy(p, self._ids)),
                "vectors": (f"vectors-{stem}.npy", lambda p: _write_npy(p, np.asarray(self._vectors))),
                "index": (f"index-{stem}.faiss", lambda p: faiss.write_index(self._get_faiss(), str(p))),
            }
            written: list[Path] = []  # this generation's files, removed again when the save fails
            try:
                for role, (name, write) in writers.items():
                    final = self.directory / name
                    temporary = self.directory / f".{name}.tmp-{os.getpid()}"
                    written.append(temporary)
                    write(temporary)
                    _fsync_file(temporary)
                    os.replace(temporary, final)
                    written.append(final)
                    files[role] = FileEntry(name=name, bytes=final.stat().st_size, sha256=_sha256_of(final))
                self._save_manifest(generation, files)
            except BaseException as error:
                for path in written:  # nothing half-saved: the previous generation (manifest and files) stands
                    path.unlink(missing_ok=True)
                from echo_os.errors import DiskFullError, disk_full

                if disk_full(error) is not None or (isinstance(error, RuntimeError) and "No space" in str(error)):
                    raise DiskFullError(
                        f"the disk is full: the memory index ({self.directory.name}) was not saved, the artifacts "
                        "are kept; free some space, then run `echo-os memory reindex` (or any memory command "
                        "rebuilds it)") from None
                raise
            _fsync_dir(self.directory)
            self._seen_manifest = self._manifest_stamp()
            self.generation = generation
            self.dirty = False
            self.repaired = None
            keep = {entry.name for entry in files.values()} | {"manifest.json"}
            for path in self.directory.iterdir():
                if path.name not in keep:
                    try:
                        path.unlink(missing_ok=True)
                    except OSError:  # still mapped by a reader on Windows: the next save removes it
                        pass

    def _save_manifest(self, generation: int, files: dict[str, FileEntry]) -> None:
        """manifest.json for `generation`, written beside and renamed into place (the save's commit point)."""
        temporary = self.directory / f".manifest.json.tmp-{os.getpid()}"
        try:
            manifest = Manifest(
                format=FORMAT_VERSION, generation=generation, embedder=self.embedder, dim=self.dim,
                fingerprint=self.fingerprint, count=len(self._ids), kind=self.kind, hnsw_m=HNSW_M,
                ef_construction=HNSW_EF_CONSTRUCTION, ef_search=self.ef_search,
                calibrated_recall=self.calibrated_recall, tombstones=tuple(sorted(self._tombstones)),
                files=files, saved_at=time.time(), calibrated_count=self.calibrated_count,
            )
            temporary.write_text(manifest.to_json(), encoding="utf-8")
            _fsync_file(temporary)
            os.replace(temporary, self.manifest_path)
        finally:
            temporary.unlink(missing_ok=True)

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

    def _new_faiss(self, kind: IndexKind):
        import faiss

        if kind == "flat":
            inner = faiss.IndexFlatIP(self.dim)
        else:
            inner = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            inner.hnsw.efSearch = self.ef_search
        return faiss.IndexIDMap2(inner)

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
        index = self._new_faiss(kind)
        self._faiss, self.kind, self._tombstones, self.dirty = index, kind, set(), True
        holdout = np.zeros(0, dtype=np.int64)
        if kind == "hnsw" and self.count >= 10 * CALIBRATION_QUERIES:
            holdout = np.sort(np.random.default_rng(0).choice(self.count, CALIBRATION_QUERIES, replace=False))
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

    def calibrate(self, target_recall: float = TARGET_RECALL, queries: int = CALIBRATION_QUERIES,
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
                   target_recall: float = TARGET_RECALL, k: int = 10) -> tuple[int, float]:
        """Smallest efSearch on EF_SEARCH_LADDER whose recall@k against exact search reaches the target.

        held_out: the queries are stored vectors that are not in the graph yet (excluded from the exact
        answer too); otherwise each query is in the graph and only its own id is excluded. If no efSearch
        reaches the target, the largest is kept and the recall it reached is recorded, so `stats` tells
        the truth.
        """
        hidden = set(query_ids.tolist())
        margin = k + 1 + (min(len(hidden), 4 * k) if held_out else 0)
        exact = self._exact_knn(queries, min(margin, self.count))

        def top(labels: np.ndarray, row: int) -> set[int]:
            excluded = hidden if held_out else {int(query_ids[row])}
            return set([int(i) for i in labels if i >= 0 and int(i) not in excluded][:k])

        truth = [top(exact[row], row) for row in range(len(queries))]
        recall = 0.0
        for ef in EF_SEARCH_LADDER:
            if ef <= k:
                continue
            self.ef_search = ef
            _, found = self._faiss_search(queries, k + 1, None)
            hits = sum(len(truth[row] & top(found[row], row)) for row in range(len(queries)))
            recall = hits / max(1, sum(len(t) for t in truth))
            if recall >= min(target_recall + CALIBRATION_MARGIN, 1.0):
                break
        self.calibrated_recall = round(recall, 4)
        self.calibrated_count = self.count
        self.dirty = True
        if recall < target_recall:
            logger.warning("memory index %s: recall@%d %.3f < %.2f even at efSearch=%d", self.embedder, k,
                           recall, target_recall, self.ef_search)
        return self.ef_search, recall

    def _exact_knn(self, queries: np.ndarray, k: int) -> np.ndarray:
        import faiss

        _, labels = faiss.knn(queries, np.ascontiguousarray(self._vectors, dtype=np.float32), k,
                              metric=faiss.METRIC_INNER_PRODUCT)
        return np.where(labels >= 0, self._ids[np.maximum(labels, 0)], -1)

    # ---- changing

    def add(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Add (or replace) vectors under catalog ids. Vectors are L2-normalised if they are not already."""
        ids = _as_ids(ids)
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
        vectors = np.ascontiguousarray(_normalise(vectors))
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
                if self.kind == "hnsw" and self.count >= RECALIBRATE_GROWTH * max(1, self.calibrated_count):
                    # A bigger graph needs a wider beam for the same recall.
                    self.calibrate()

    def remove(self, ids: Iterable[int] | np.ndarray) -> int:
        """Remove ids (absent ones are ignored). Returns how many were removed."""
        ids = _as_ids(ids)
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
        proportion to how much it removes. One query runs on one OpenMP thread (see _omp_threads).
        """
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.dim:
            raise ValueError(f"expected a {self.dim}-d query, got {query.shape[1]}-d")
        query = _normalise(query)
        if k <= 0 or self.count == 0:
            return []
        with self._guard, _omp_threads(1):
            allowed = None
            if allowed_ids is not None:
                allowed = _as_ids(allowed_ids)
                allowed = allowed[self._rows_of(allowed) >= 0]
                if len(allowed) == 0:
                    return []
                if self.kind == "hnsw" and len(allowed) <= max(
                        EXACT_SUBSET_LIMIT, self._filtered_ef(len(allowed), k) * GRAPH_WALK_COST):
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
        return (self.kind == "hnsw" and EXACT_WHEN_RECALL_MISSED and self.calibrated_recall is not None
                and self.calibrated_recall < EXACT_BELOW_RECALL)

    def search_batch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) arrays of shape (n, k) for many queries at once; id -1 where fewer than k."""
        queries = _normalise(np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)))
        with self._guard:
            return self._faiss_search(queries, k, None)

    def exact_search(self, vector: np.ndarray, k: int = 10) -> list[tuple[int, float]]:
        """Brute force over the stored vectors: the ground truth HNSW recall is measured against."""
        query = _normalise(np.asarray(vector, dtype=np.float32).reshape(1, -1))
        with self._guard, _omp_threads(1):
            return self._exact_subset(query, None, k)

    def _exact_subset(self, query: np.ndarray, allowed: np.ndarray | None, k: int) -> list[tuple[int, float]]:
        """Exact top-k over the stored rows of `allowed` (all rows when None)."""
        import faiss

        if allowed is None:
            rows, base = None, np.ascontiguousarray(self._vectors, dtype=np.float32)
        else:
            rows = self._rows_of(allowed)
            rows = np.sort(rows[rows >= 0])
            base = np.ascontiguousarray(self._vectors[rows], dtype=np.float32)
        if len(base) == 0:
            return []
        scores, found = faiss.knn(query, base, min(k, len(base)), metric=faiss.METRIC_INNER_PRODUCT)
        positions = found[0][found[0] >= 0]
        chosen = positions if rows is None else rows[positions]
        return [(int(self._ids[r]), float(s)) for r, s in zip(chosen, scores[0][: len(positions)])]

    def _faiss_search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None,
                      ) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        index = self._get_faiss()
        keep_alive: list[object] = []
        selector = None
        if allowed is not None:
            if self._tombstones:
                allowed = allowed[~np.isin(allowed, np.fromiter(self._tombstones, dtype=np.int64))]
            selector = faiss.IDSelectorBatch(allowed)
            keep_alive.append(allowed)
        elif self._tombstones:
            hidden = np.fromiter(self._tombstones, dtype=np.int64)
            inner = faiss.IDSelectorBatch(hidden)
            selector = faiss.IDSelectorNot(inner)
            keep_alive += [hidden, inner]
        if self.kind == "hnsw":
            ef = self._filtered_ef(len(allowed), k) if allowed is not None else max(self.ef_search, k)
            params = faiss.SearchParametersHNSW(efSearch=ef)
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
        scores, labels = index.search(queries, k, params=params)
        del keep_alive
        return scores, labels

    def _filtered_ef(self, allowed: int, k: int) -> int:
        """efSearch for a filter letting `allowed` ids through: a filter hides part of the graph, so the
        beam widens in proportion for k allowed ids to still surface (capped)."""
        fraction = allowed / max(1, self.count)
        ef = max(self.ef_search, k)
        return int(min(max(ef, ef / max(fraction, 1e-3)), 4 * EF_SEARCH_LADDER[-1]))

    # ---- near-duplicates

    def dupes(self, threshold: float = 0.97, batch: int = 1024) -> list[DupePair]:
        """Pairs of ids whose vectors have cosine >= threshold, highest first.

        k-NN over the stored vectors through the index (exact when flat); k grows for rows whose k-th
        neighbour is still above the threshold, so clusters of near-identical images are listed whole.
        """
        pairs: dict[tuple[int, int], float] = {}
        with self._guard:
            vectors = self._vectors
            for start in range(0, self.count, batch):
                block = np.ascontiguousarray(vectors[start:start + batch], dtype=np.float32)
                block_ids = self._ids[start:start + batch]
                pending = np.arange(len(block))
                k = min(16, self.count)
                while len(pending):
                    scores, labels = self._faiss_search(block[pending], k, None)
                    saturated = []
                    for row, (row_scores, row_labels) in zip(pending, zip(scores, labels)):
                        me = int(block_ids[row])
                        for other, score in zip(row_labels, row_scores):
                            if other < 0 or other == me or score < threshold:
                                continue
                            key = (min(me, int(other)), max(me, int(other)))
                            pairs[key] = max(pairs.get(key, -1.0), float(score))
                        if row_labels[-1] >= 0 and row_scores[-1] >= threshold and k < self.count:
                            saturated.append(row)
                    pending = np.array(saturated, dtype=np.int64)
                    k = min(k * 4, self.count)
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


# -- reconciliation with the catalog -----------------------------------------------------------------

# fetch_missing(ids) -> (ids it could embed, their vectors). Ids it cannot embed (image gone) are left out.
FetchMissing = Callable[[Sequence[int]], tuple[np.ndarray, np.ndarray]]


def reconcile(index: VectorIndex, catalog_ids: Iterable[int], fetch_missing: FetchMissing, *,
              batch_size: int = 64, progress: Callable[[int, int], None] | None = None) -> ReconcileReport:
    """Make the index hold exactly the catalog's ids: drop the extra, embed and add the missing.

    Call inside `with index.writing():` so the result is saved under the lock.
    """
    report = ReconcileReport(embedder=index.embedder, rebuilt=bool(index.repaired), reason=index.repaired)
    wanted = np.unique(_as_ids(catalog_ids))
    held = np.unique(index.ids)
    stale = np.setdiff1d(held, wanted, assume_unique=True)
    missing = np.setdiff1d(wanted, held, assume_unique=True)
    if len(stale):
        index.remove(stale)
        report.removed = [int(i) for i in stale]
    done = 0
    for start in range(0, len(missing), batch_size):
        chunk = [int(i) for i in missing[start:start + batch_size]]
        got_ids, vectors = fetch_missing(chunk)
        got_ids = _as_ids(got_ids)
        if len(got_ids):
            index.add(got_ids, vectors)
        report.added += [int(i) for i in got_ids]
        report.unembeddable += sorted(set(chunk) - {int(i) for i in got_ids})
        done += len(chunk)
        if progress is not None:
            progress(done, len(missing))
    return report


def open_reconciled(memory_dir: Path, embedder: str, dim: int, catalog_ids: Iterable[int],
                    fetch_missing: FetchMissing, *, fingerprint: str = "",
                    hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD, rebuild: bool = False,
                    progress: Callable[[int, int], None] | None = None) -> tuple[VectorIndex, ReconcileReport]:
    """Open an index and bring it in line with the catalog, rebuilding from the store when it is broken.

    Under the memory lock: a corrupt or foreign index (IndexCorruptError / IndexMismatchError), or any
    index when rebuild=True, is discarded and every catalog id is re-embedded through fetch_missing;
    otherwise only the difference is fixed. Saved when anything changed.
    """
    catalog_ids = _as_ids(catalog_ids)
    options = {"fingerprint": fingerprint, "hnsw_threshold": hnsw_threshold}
    with MemoryLock(memory_dir):
        reason = "rebuild requested" if rebuild else None
        index = None
        if not rebuild:
            try:
                index = VectorIndex.open(memory_dir, embedder, dim, **options)
            except (IndexCorruptError, IndexMismatchError) as error:
                reason = str(error)
                logger.warning("memory index %s: %s -- rebuilding from the artifacts", embedder, reason)
        if index is None:
            index = VectorIndex.replacing(memory_dir, embedder, dim, **options)
        with index.writing():
            report = reconcile(index, catalog_ids, fetch_missing, progress=progress)
            if reason is not None:
                report.rebuilt, report.reason = True, reason
                index.dirty = True
        return index, report
