"""The files of a memory index on disk: generations, manifest.json, checksums, repair, the memory lock.

Layout of settings.memory_dir (the index is a cache: the artifact folders are the source of truth):

    memory/.lock                         one writer at a time, across processes (filelock)
    memory/<embedder>/manifest.json      the commit point: generation, count, embedder, dim, checksums
    memory/<embedder>/index-<gen>.faiss  IndexIDMap2 over IndexFlatIP (exact) or IndexHNSWFlat
    memory/<embedder>/vectors-<gen>.npy  the raw float32 vectors (rebuilds never re-embed; exact checks)
    memory/<embedder>/ids-<gen>.npy      int64 catalog ids, row-aligned with vectors

`IndexFiles.write` writes the files of a new generation, fsyncs them, then replaces manifest.json
atomically; a crash at any point leaves the previous generation intact. `IndexFiles.read` verifies sizes
and sha256 of every file and recovers the vectors from the faiss index when they are lost; when both are
lost it raises IndexCorruptError. The in-memory index and its searches are in index.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from echo_os.errors import EchoError

FORMAT_VERSION = 1
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


@dataclass
class StoredGeneration:
    """What `IndexFiles.read` got back of one generation.

    faiss_index is None when the index file was lost (the caller rebuilds it from the vectors); `bad`
    names the files that were missing, truncated or failing their checksum. stamp: the manifest's
    `IndexFiles.manifest_stamp` before it was read (set by read_current).
    """

    manifest: Manifest
    ids: np.ndarray
    vectors: np.ndarray
    faiss_index: Any
    bad: list[str]
    stamp: tuple[int, int, int] | None = None


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


# -- one embedder's folder ---------------------------------------------------------------------------


class IndexFiles:
    """The generations in memory_dir/<embedder>/: read, verify, write. Holds no vectors itself."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    def read_manifest(self) -> Manifest | None:
        """The current manifest, None when there is none; IndexCorruptError when it cannot be parsed."""
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

    def disk_generation(self) -> int:
        manifest = self.read_manifest()
        return manifest.generation if manifest is not None else 0

    def manifest_stamp(self) -> tuple[int, int, int] | None:
        """A cheap token that changes whenever a save replaces manifest.json (None when there is none)."""
        try:
            stat = self.manifest_path.stat()
        except FileNotFoundError:
            return None
        # os.replace gives every saved manifest a new inode.
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def check_no_leftovers(self) -> None:
        """With no manifest, index files of a generation mean a lost commit point: IndexCorruptError."""
        leftovers = sorted(p.name for p in self.directory.glob("*-*.*")) if self.directory.exists() else []
        if leftovers:
            raise IndexCorruptError(
                f"{self.directory} holds index files but no manifest.json; run `echo-os memory reindex`."
            )

    def check(self, manifest: Manifest, embedder: str, dim: int, fingerprint: str) -> None:
        """IndexMismatchError when the manifest is of another format, embedder, dimension or weights."""
        if manifest.format != FORMAT_VERSION:
            raise IndexMismatchError(
                f"{self.manifest_path} has format {manifest.format}, this echo-os reads {FORMAT_VERSION}; "
                "run `echo-os memory reindex`."
            )
        if manifest.embedder != embedder or manifest.dim != dim:
            raise IndexMismatchError(
                f"{self.directory} holds {manifest.dim}-d vectors of {manifest.embedder!r}, expected "
                f"{dim}-d of {embedder!r}; run `echo-os memory reindex`."
            )
        if fingerprint and manifest.fingerprint and manifest.fingerprint != fingerprint:
            raise IndexMismatchError(
                f"{self.directory} was built with other {embedder} weights ({manifest.fingerprint[:12]}, "
                f"now {fingerprint[:12]}); run `echo-os memory reindex`."
            )

    def verified(self, manifest: Manifest, role: str) -> Path | None:
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

    def read(self, manifest: Manifest, dim: int, repair: bool) -> StoredGeneration:
        """Load and verify the generation `manifest` names (its embedder already checked).

        With repair=False any bad file raises IndexCorruptError. With repair=True lost ids or vectors are
        read back from the faiss index, and a lost faiss index is returned as None for the caller to
        rebuild; IndexCorruptError only when both are lost.
        """
        import faiss

        ids_path = self.verified(manifest, "ids")
        vectors_path = self.verified(manifest, "vectors")
        index_path = self.verified(manifest, "index")
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
                                        or faiss_index.d != dim
                                        or faiss_index.ntotal != manifest.count + len(manifest.tombstones)):
            bad.append("index")
            faiss_index = None

        ids = np.load(ids_path, allow_pickle=False) if ids_path is not None else None
        vectors = np.load(vectors_path, mmap_mode="r", allow_pickle=False) if vectors_path is not None else None
        if ids is not None and (ids.dtype != np.int64 or ids.shape != (manifest.count,)):
            bad.append("ids")
            ids = None
        if vectors is not None and (vectors.dtype != np.float32 or vectors.shape != (manifest.count, dim)):
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
        return StoredGeneration(manifest=manifest, ids=ids, vectors=vectors, faiss_index=faiss_index, bad=bad)

    def read_current(self, embedder: str, dim: int, fingerprint: str, repair: bool) -> StoredGeneration | None:
        """The generation manifest.json names, checked against the embedder (see check) and read (see read);
        None when there is none yet.

        A writer may replace the generation between reading the manifest and the files: read again then
        (three tries in all).
        """
        attempt = 0
        while True:
            stamp = self.manifest_stamp()
            manifest = self.read_manifest()
            if manifest is None:
                self.check_no_leftovers()
                return None
            try:
                self.check(manifest, embedder, dim, fingerprint)
                stored = self.read(manifest, dim, repair)
            except IndexCorruptError:
                latest = self.read_manifest()
                attempt += 1
                if attempt < 3 and latest is not None and latest.generation != manifest.generation:
                    continue
                raise
            stored.stamp = stamp
            return stored

    def write(self, manifest: Manifest, ids: np.ndarray, vectors: np.ndarray,
              write_index: Callable[[Path], None]) -> Manifest:
        """Write generation `manifest.generation` (its `files` filled in here), then commit its manifest.

        Data files are written under temporary names, fsynced and renamed; manifest.json is replaced last
        (os.replace), then the files of older generations are removed. Returns the manifest written.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        stem = f"{manifest.generation:08d}"
        files: dict[str, FileEntry] = {}
        writers: dict[str, tuple[str, Callable[[Path], None]]] = {
            "ids": (f"ids-{stem}.npy", lambda p: _write_npy(p, ids)),
            "vectors": (f"vectors-{stem}.npy", lambda p: _write_npy(p, np.asarray(vectors))),
            "index": (f"index-{stem}.faiss", write_index),
        }
        written: list[Path] = []  # this generation's files, removed again when the save fails
        temporary = self.directory / f".manifest.json.tmp-{os.getpid()}"
        try:
            for role, (name, write) in writers.items():
                final = self.directory / name
                part = self.directory / f".{name}.tmp-{os.getpid()}"
                written.append(part)
                write(part)
                _fsync_file(part)
                os.replace(part, final)
                written.append(final)
                files[role] = FileEntry(name=name, bytes=final.stat().st_size, sha256=_sha256_of(final))
            manifest = replace(manifest, files=files, saved_at=time.time())
            written.append(temporary)
            temporary.write_text(manifest.to_json(), encoding="utf-8")
            _fsync_file(temporary)
            os.replace(temporary, self.manifest_path)  # the save's commit point
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
        return manifest

    def prune(self, manifest: Manifest) -> None:
        """Remove every file in the folder that the committed `manifest` does not name."""
        keep = {entry.name for entry in manifest.files.values()} | {"manifest.json"}
        for path in self.directory.iterdir():
            if path.name not in keep:
                try:
                    path.unlink(missing_ok=True)
                except OSError:  # still mapped by a reader on Windows: the next save removes it
                    pass
