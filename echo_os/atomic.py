"""Atomic file writes: readers see the old file or the new one, whole, never half of it.

The one helper for every file echo-os replaces in place (story.json, contact sheets, models.toml, gallery
pages and thumbnails, cached IP-Adapter embeddings). A temporary file is written beside the target (same
file system, so the rename is atomic), fsynced, then renamed over it with os.replace; on any error the
temporary file is removed. Artifact folders are made the same way one level up (artifacts.store), and the
FAISS index by generations (memory.index).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to (by any library); renamed over `path` when the block
    ends without an error. An existing file's permissions are kept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomically(path: Path, data: bytes | str) -> None:
    """Write `data` (str: as UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
