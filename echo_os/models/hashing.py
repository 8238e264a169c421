"""sha256 of model weights, for meta.json, computed once per file.

Hashing an SDXL checkpoint reads 7 GB, so each file's digest is kept in
<workspace>/artifacts/.cache/weights-sha256.json keyed by its real path, size and mtime_ns: a render
reuses it, and a file that changed on disk (other size or mtime) is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from echo_os.models.registry import atomic_write_text
from echo_os.render.results import ModelInfo

if TYPE_CHECKING:
    from echo_os.models.resolve import ResolvedModel
    from echo_os.settings import Settings

log = logging.getLogger(__name__)

CACHE_NAME = "weights-sha256.json"
_CHUNK = 8 * 1024 * 1024


def sha256_cache_path(settings: "Settings") -> Path:
    return settings.cache_dir / CACHE_NAME


def _read_cache(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # absent or damaged: it is only a cache, start again
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def _hash_file(path: Path, size: int, show_progress: bool) -> str:
    digest = hashlib.sha256()
    progress = None
    if show_progress:
        from tqdm import tqdm

        progress = tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}", leave=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress.update(len(chunk))
    if progress is not None:
        progress.close()
    return digest.hexdigest()


def file_sha256(settings: "Settings", path: str | Path, show_progress: bool = False) -> str:
    """sha256 of one file, from the cache while its size and mtime_ns are unchanged."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    cache_path = sha256_cache_path(settings)
    cached = _read_cache(cache_path).get(real)
    if (isinstance(cached, dict) and cached.get("size") == stat.st_size
            and cached.get("mtime_ns") == stat.st_mtime_ns and isinstance(cached.get("sha256"), str)):
        return cached["sha256"]
    log.info("hashing %s (%d bytes, once)", path, stat.st_size)
    digest = _hash_file(Path(real), stat.st_size, show_progress)
    from filelock import FileLock

    cache_path.parent.mkdir(parents=True, exist_ok=True)
    # Read-modify-write under a lock so two renders hashing different files both keep their entry.
    with FileLock(str(cache_path) + ".lock"):
        files = _read_cache(cache_path)
        files[real] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        atomic_write_text(cache_path, json.dumps({"version": 1, "files": files}, indent=1, sort_keys=True))
    return digest


def require_unchanged(settings: "Settings", path: str | Path, sha256: str, what: str) -> Path:
    """`path`, checked to be the file a request recorded (its sha256); UsageError naming `what` if it
    is gone or changed since (a reference image, a LoRA: what a replay or a queued job would load)."""
    from echo_os.errors import UsageError

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} {path} is not there any more; put it back or re-plan.")
    if file_sha256(settings, path) != sha256:
        raise UsageError(f"{what} {path} changed since the request was made (its sha256 differs); "
                         "re-plan to use the new file.")
    return path


def weights_sha256(settings: "Settings", resolved: "ResolvedModel", show_progress: bool = False) -> str:
    """One sha256 naming the weights a resolved model loads.

    A single file: that file's sha256 (what A1111, ComfyUI and model sites show). A folder: sha256 of
    the sorted lines "relative/path<TAB>file sha256\\n" over its weight files, so renaming the folder
    keeps the digest and changing any weight changes it. The image encoder of an ip-adapter is not
    included (it is resolved as its own model).
    """
    if resolved.format == "single-file":
        return file_sha256(settings, resolved.local_path, show_progress)
    lines = []
    for path in resolved.files:
        relative = path.relative_to(resolved.local_path).as_posix()
        lines.append(f"{relative}\t{file_sha256(settings, path, show_progress)}\n")
    return hashlib.sha256("".join(sorted(lines)).encode("utf-8")).hexdigest()


def model_info(settings: "Settings", resolved: "ResolvedModel", show_progress: bool = False) -> "ModelInfo":
    """What meta.json records about the weights: name, source (with the snapshot commit), kind, sha256."""

    return ModelInfo(name=resolved.entry.name, source=resolved.source_ref, kind=resolved.entry.kind,
                     weights_sha256=weights_sha256(settings, resolved, show_progress))
