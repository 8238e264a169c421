"""The one model cache: every pipeline and model a process loads goes through it.

    pipe = model_cache().get(CacheKey("sdxl", path, "cuda", ("bfloat16", "sdpa")), load, label="sdxl-base",
                             settings=settings)

Who uses it: the SDXL and cpu engines (a pipeline with its img2img view and IP-Adapters, which live inside
its modules, is one entry; a refiner is its own), the video engine, CLIP and MiniLM (memory search, the
continuity report and the resonance scorers share one CLIP loader), API workers, Ray actors and compare.
Each process has one cache (`model_cache()`); a Ray actor is its own process, so its own cache.

Budget: entries on a CUDA device count against VRAM, all others (CPU, MPS, CPU offload) against RAM. The
default is BUDGET_FRACTION of the device's total memory (torch.cuda.mem_get_info on a GPU; psutil, else
os.sysconf, for RAM); `[model_cache] max_gb` in the workspace's echo-os.toml or ECHO_OS_MODEL_CACHE_GB
(the env var wins) sets one figure for both. An entry's size is the bytes of its modules' parameters and
buffers (each tensor counted once: an img2img view shares its pipeline's weights), measured when it is
loaded and again whenever room is made (an IP-Adapter loaded later grows its pipeline's entry).

Eviction: least recently used first, before a load (by the estimate the loader gives, e.g. the size of the
weight files) and after it (by the measured size), never the entry being loaded. An entry larger than the
whole budget is still kept alone (it is the one being used). Dropping an entry drops the cache's only
reference; the garbage collector then frees the modules and, on CUDA, the allocator's cached blocks are
returned (`free_released_memory`). A render running on an evicted pipeline keeps its own reference until
it ends, so eviction never breaks a call in flight.

The shape follows InvokeAI's model cache (an LRU over a memory budget that every loader goes through); the
code is this project's own.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from echo_os.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

BUDGET_ENV = "ECHO_OS_MODEL_CACHE_GB"
BUDGET_FRACTION = {"vram": 0.75, "ram": 0.5}  # the rest: activations (VRAM), everything else (RAM)
GIB = 1024**3


@dataclass(frozen=True)
class CacheKey:
    """What identifies a loaded model: its kind (sdxl, sdxl-refiner, video, clip, minilm...), the weights'
    path, the device it lives on, and whatever else makes two loads differ (dtype, attention, offload)."""

    kind: str
    path: str
    device: str = "cpu"
    variant: tuple[str | bool, ...] = ()

    @property
    def memory(self) -> str:
        """Which budget the entry counts against: "vram" on CUDA, "ram" anywhere else."""
        return "vram" if self.device.startswith("cuda") else "ram"


@dataclass
class CacheEntry:
    key: CacheKey
    value: Any
    label: str
    size_bytes: int
    last_used: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class CacheStats:
    """What the cache holds: per memory kind, the bytes used and the budget; the entries' labels, oldest first."""

    used: dict[str, int]
    budget: dict[str, int]
    labels: tuple[str, ...]


def model_bytes(value: Any) -> int:
    """Bytes of the parameters and buffers of every torch module in `value` (a module, a diffusers pipeline,
    a dataclass or tuple holding them), each tensor's storage counted once."""
    seen: set[int] = set()
    total = 0
    for module in _modules(value, set()):
        for tensor in (*module.parameters(), *module.buffers()):
            try:
                pointer = tensor.untyped_storage().data_ptr()
            except (RuntimeError, NotImplementedError):  # meta tensors, offloaded hooks
                continue
            if pointer in seen:
                continue
            seen.add(pointer)
            total += tensor.untyped_storage().nbytes()
    return total


def _modules(value: Any, visited: set[int]) -> Iterator[Any]:
    torch = sys.modules.get("torch")
    if torch is None or value is None or id(value) in visited:
        return
    visited.add(id(value))
    if isinstance(value, torch.nn.Module):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _modules(item, visited)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _modules(item, visited)
    elif isinstance(getattr(value, "components", None), dict):  # a diffusers pipeline
        yield from _modules(value.components, visited)
    elif hasattr(value, "__dataclass_fields__"):
        for name in value.__dataclass_fields__:
            yield from _modules(getattr(value, name, None), visited)


def total_memory(memory: str) -> int:
    """Total bytes of VRAM (the current CUDA device; 0 without one) or RAM."""
    if memory == "vram":
        import torch

        if not torch.cuda.is_available():
            return 0
        _free, total = torch.cuda.mem_get_info()
        return int(total)
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def configured_budget(settings: "Settings | None") -> int | None:
    """The budget set by ECHO_OS_MODEL_CACHE_GB, else by the workspace's `[model_cache] max_gb`; None: default."""
    from echo_os.errors import UsageError

    raw = os.environ.get(BUDGET_ENV, "").strip()
    if raw:
        try:
            gb = float(raw)
        except ValueError:
            gb = -1.0
        if not gb >= 0:
            raise UsageError(f"{BUDGET_ENV} must be a number of GB (for example 12), got {raw!r}.")
        return int(gb * GIB)
    gb_setting = getattr(settings, "model_cache_gb", None) if settings is not None else None
    return None if gb_setting is None else int(gb_setting * GIB)


def free_released_memory() -> None:
    """Collect what was dropped and hand CUDA's cached blocks back, so the memory is free for the next load."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class ModelCache:
    """Loaded models by CacheKey, least recently used dropped first when over the budget (module docstring).

    max_entries caps the number of entries as well (a Ray actor's `max_models`); None: only the budget."""

    def __init__(self, budget_bytes: int | None = None, max_entries: int | None = None):
        self._entries: dict[CacheKey, CacheEntry] = {}
        self._lock = threading.RLock()  # the table; held briefly, never while loading (stats answer meanwhile)
        self._load_lock = threading.RLock()  # loads are serialised: two threads never load the same weights twice
        self.budget_bytes = budget_bytes  # None: configured_budget, else the default fraction
        self.max_entries = max_entries
        self._configured: int | None = None
        self.evictions = 0

    # -- reading ------------------------------------------------------------------------------------
    def get(self, key: CacheKey, load: Callable[[], T], *, label: str = "", estimate_bytes: int = 0,
            settings: "Settings | None" = None) -> T:
        """The value kept under `key`, loaded by `load()` on a miss (after making room for estimate_bytes)."""
        if settings is not None:
            self._configured = configured_budget(settings)
        value = self._hit(key)
        if value is not None:
            return cast(T, value)
        with self._load_lock:
            value = self._hit(key)  # loaded by another thread while this one waited
            if value is not None:
                return cast(T, value)
            with self._lock:
                self._make_room(key, estimate_bytes, extra_entry=True)
            value = load()
            with self._lock:
                self._entries[key] = CacheEntry(key, value, label or key.kind, model_bytes(value))
                self._make_room(key, 0, extra_entry=False)
            return value

    def _hit(self, key: CacheKey) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            entry.last_used = time.monotonic()
            return entry.value

    def peek(self, key: CacheKey) -> Any | None:
        """The value under `key` if loaded (not counted as a use)."""
        entry = self._entries.get(key)
        return None if entry is None else entry.value

    def keys(self) -> list[CacheKey]:
        with self._lock:
            return list(self._entries)

    def stats(self) -> CacheStats:
        with self._lock:
            entries = sorted(self._entries.values(), key=lambda e: e.last_used)
            used = {"vram": 0, "ram": 0}
            for entry in entries:
                entry.size_bytes = model_bytes(entry.value)
                used[entry.key.memory] += entry.size_bytes
            return CacheStats(used=used, budget={m: self.budget(m) for m in used},
                              labels=tuple(entry.label for entry in entries))

    def budget(self, memory: str) -> int:
        if self.budget_bytes is not None:
            return self.budget_bytes
        if self._configured is None:
            self._configured = configured_budget(None)
        if self._configured is not None:
            return self._configured
        return int(total_memory(memory) * BUDGET_FRACTION[memory])

    # -- dropping -----------------------------------------------------------------------------------
    def release(self, match: Callable[[CacheKey], bool]) -> int:
        """Drop every entry whose key matches and free the memory; the number dropped."""
        with self._lock:
            dropped = [key for key in self._entries if match(key)]
            for key in dropped:
                del self._entries[key]
        if dropped:
            free_released_memory()
        return len(dropped)

    def clear(self) -> None:
        self.release(lambda key: True)

    def _make_room(self, keep: CacheKey, incoming: int, *, extra_entry: bool) -> None:
        """Drop least recently used entries (never `keep`) until what `keep`'s memory holds, plus `incoming`
        bytes, fits the budget, and the entry count fits max_entries."""
        if self._evict(keep, incoming, extra_entry):
            free_released_memory()  # after _evict returned: no local of it still refers to a dropped entry

    def _evict(self, keep: CacheKey, incoming: int, extra_entry: bool) -> int:
        memory = keep.memory
        dropped = 0
        while self.max_entries is not None and len(self._entries) + extra_entry > max(1, self.max_entries):
            if not self._drop_oldest(keep, None):
                break
            dropped += 1
        budget = self.budget(memory) if any(k.memory == memory for k in self._entries) or incoming else 0
        for key in self._entries:  # sizes now: an IP-Adapter loaded since may have grown an entry
            self._entries[key].size_bytes = model_bytes(self._entries[key].value)
        while sum(self._entries[k].size_bytes for k in self._entries if k.memory == memory) + incoming > budget:
            if not self._drop_oldest(keep, memory):
                break
            dropped += 1
        return dropped

    def _drop_oldest(self, keep: CacheKey, memory: str | None) -> bool:
        """Drop the least recently used entry other than `keep` (of `memory`, when given); False: none left."""
        candidates = [k for k in self._entries if k != keep and (memory is None or k.memory == memory)]
        if not candidates:
            return False
        oldest = min(candidates, key=lambda k: self._entries[k].last_used)
        label, size = self._entries[oldest].label, self._entries[oldest].size_bytes
        del self._entries[oldest]
        self.evictions += 1
        log.info("model cache: dropped %s (%.2f GB, least recently used)", label, size / GIB)
        return True


_CACHE = ModelCache()


def model_cache() -> ModelCache:
    """This process's model cache."""
    return _CACHE


def weights_bytes(path: str) -> int:
    """The size of the weight files under `path` (a folder or one file): the estimate a loader makes room for."""
    from pathlib import Path

    root = Path(path)
    if root.is_file():
        return root.stat().st_size
    suffixes = {".safetensors", ".bin", ".ckpt", ".pt", ".pth"}
    try:
        return sum(p.stat().st_size for p in root.rglob("*") if p.suffix in suffixes and p.is_file())
    except OSError:
        return 0
