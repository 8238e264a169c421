"""The scheduler: choose an engine per request, group compatible requests into batches, render, save.

Requests with the same engine and batch key (model, size, steps, cfg, scheduler, device, dtype,
attention, IP-Adapter set) share pipeline calls of at most `batch_size` images. A request with more
images than that is split by seed (image i always has seed + i), so splitting never changes an image.

Batch size: `batch_size` when given, else from the free GPU memory once the weights are loaded (CUDA),
else the engine's maximum. On CUDA out-of-memory the batch is halved and retried, down to one image;
then the VAE decodes tile by tile; only if one image still does not fit does the render stop, with
every image rendered so far saved (a re-run with resume=True finishes the rest).

Resume (resume=True): every image has a key, the sha256 of its one-image request with the engine that
renders it (requests.image_request_key, also in meta.json as `request_key`). Images whose key is
already in the project's catalog, with the folder still on disk, are not rendered again: they are
reported as resumed. So a killed batch finishes on the next run, without duplicates.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from echo_os.engines import choose_engine, create_engine
from echo_os.errors import EchoError
from echo_os.requests import image_request_key

if TYPE_CHECKING:
    from echo_os.artifacts.store import Artifact, ArtifactStore
    from echo_os.engines.base import Engine, ProgressCallback
    from echo_os.requests import RenderRequest
    from echo_os.settings import Settings

log = logging.getLogger(__name__)

GIB = 1024**3


class OutOfMemoryError(EchoError):
    """One image does not fit on the GPU even at batch 1 with a tiled VAE decode."""


@dataclass
class EngineChoice:
    name: str
    reason: str


@dataclass(frozen=True)
class ImageDone:
    """One image of the run is on disk: rendered now, or found from an earlier run (resumed)."""

    artifact: "Artifact"
    resumed: bool


@dataclass
class RenderOutcome:
    artifacts: list["Artifact"] = field(default_factory=list)  # rendered by this call, in render order
    engines: list[EngineChoice] = field(default_factory=list)
    resumed: list["Artifact"] = field(default_factory=list)  # already in the project (resume=True)
    # engine -> the most images one of its pipeline calls rendered (not the cap: 4 images under a cap of 16
    # are a batch of 4); absent when it rendered nothing
    batch_sizes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the OOM back-off did


def split_request(request: "RenderRequest", max_images: int) -> list["RenderRequest"]:
    """Cut a request into pieces of at most max_images, keeping every image's seed."""
    if request.count <= max_images:
        return [request]
    pieces, done = [], 0
    while done < request.count:
        n = min(max_images, request.count - done)
        pieces.append(request.model_copy(update={"seed": request.seeds[done], "count": n}))
        done += n
    return pieces


# ---- batch size ------------------------------------------------------------------------------------

# Activation memory of one SDXL image at 1024x1024 in 16-bit, with classifier-free guidance (two UNet
# passes) and the VAE decode, which is the peak. A deliberately cautious estimate: the OOM back-off
# covers an estimate that is too high for the card, and free memory is measured after the weights load.
_BYTES_PER_MEGAPIXEL_16BIT = int(3.0 * GIB)
_RESERVE_BYTES = int(1.5 * GIB)


def estimate_batch_size(free_bytes: int, width: int, height: int, dtype: str = "bfloat16") -> int:
    """The largest power of two whose estimated activations fit in free_bytes (at least 1).

    Used until echo_os.engines.cuda_profile.pick_batch_size (measured on GPUs) is in the tree.
    """
    per_image = _BYTES_PER_MEGAPIXEL_16BIT * (width * height) / (1024 * 1024)
    if dtype == "float32":
        per_image *= 2
    size = 1
    while (size * 2) * per_image + _RESERVE_BYTES <= free_bytes:
        size *= 2
    return size


def pick_batch_size(free_bytes: int, width: int, height: int, dtype: str) -> int:
    try:
        from echo_os.engines.cuda_profile import pick_batch_size as measured
    except ImportError:
        return estimate_batch_size(free_bytes, width, height, dtype)
    return measured(free_bytes, width, height, dtype)


# On a CPU, batching pays only where per-call overhead outweighs the arithmetic: measured with the tiny
# pipeline (benchmarks/RESULTS.md, "Story throughput"), 16 images per call were 1.63x faster than one at
# 64x64 and 0.87x (slower) at 128x128. Real CPU renders are 512px and up, so they go one image per call.
CPU_BATCH_MAX_PIXELS = 64 * 64


def auto_batch_size(engine: "Engine", request: "RenderRequest") -> int:
    """Images per call for `request`'s batch group.

    CUDA: from free GPU memory. CPU diffusion: one image per call above CPU_BATCH_MAX_PIXELS, where
    batching is slower. Engines with neither (draft): the engine's maximum.
    """
    cap = max(1, engine.capabilities.max_batch)
    free_memory = getattr(engine, "free_memory", None)
    memory = free_memory(request) if free_memory is not None else None
    if memory is None:
        on_cpu = getattr(engine, "runs_on_cpu", None)
        if on_cpu is not None and on_cpu(request) and request.width * request.height > CPU_BATCH_MAX_PIXELS:
            return 1
        return cap
    return max(1, min(cap, pick_batch_size(memory.free_bytes, request.width, request.height, memory.dtype)))


# ---- out of memory ---------------------------------------------------------------------------------

def is_out_of_memory(error: BaseException) -> bool:
    torch = sys.modules.get("torch")  # an engine that ran out of GPU memory has imported torch
    return torch is not None and isinstance(error, torch.cuda.OutOfMemoryError)


def _release_memory() -> None:
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def take_batch(queue: "deque[RenderRequest]", limit: int) -> list["RenderRequest"]:
    """Up to `limit` images from the front of the queue, splitting a request by seed where needed."""
    batch, images = [], 0
    while queue and images < limit:
        piece = queue.popleft()
        room = limit - images
        if piece.count > room:
            head, tail = split_request(piece, room)[0], piece.model_copy(
                update={"seed": piece.seeds[room], "count": piece.count - room})
            queue.appendleft(tail)
            piece = head
        batch.append(piece)
        images += piece.count
    return batch


# ---- resume ----------------------------------------------------------------------------------------

def _missing_runs(request: "RenderRequest", done: set[str]) -> list["RenderRequest"]:
    """The images of `request` whose key is not in `done`, as runs of consecutive seeds."""
    runs: list["RenderRequest"] = []
    start = None
    images = request.image_requests()
    for i, image in enumerate(images + [None]):
        missing = image is not None and image_request_key(image) not in done
        if missing and start is None:
            start = i
        elif not missing and start is not None:
            runs.append(request.model_copy(update={"seed": request.seeds[start], "count": i - start}))
            start = None
    return runs


def find_rendered(store: "ArtifactStore", requests: list["RenderRequest"]) -> dict[str, "Artifact"]:
    """request_key -> artifact for the images of `requests` already in their project (folder on disk)."""
    from echo_os.artifacts.meta import ArtifactMeta
    from echo_os.artifacts.store import META_NAME, Artifact

    by_project: dict[str, list[str]] = {}
    for request in requests:
        by_project.setdefault(request.project, []).extend(image_request_key(i) for i in request.image_requests())
    found: dict[str, "Artifact"] = {}
    for project, keys in by_project.items():
        added = store.index_unlisted(project)
        if added:
            log.info("catalogued %d folder(s) of project %s that were not in the catalog", added, project)
        for key, row in store.catalog.by_request_keys(project, keys).items():
            folder = store.root / row.path
            if (folder / "image.png").is_file() and (folder / META_NAME).is_file():
                found[key] = Artifact(id=row.id, path=folder, meta=ArtifactMeta.model_validate(row.meta))
    return found


# ---- rendering -------------------------------------------------------------------------------------

def render_requests(
    settings: "Settings",
    requests: list["RenderRequest"],
    *,
    store: "ArtifactStore",
    progress: "ProgressCallback | None" = None,
    cancel: threading.Event | None = None,
    batch_size: int | None = None,
    on_engine: Callable[[EngineChoice], None] | None = None,
    resume: bool = False,
    on_image: Callable[[ImageDone], None] | None = None,
    engine: "Engine | None" = None,
) -> RenderOutcome:
    """Render every request and save one artifact per image (folder numbers: see ArtifactStore.save).

    resume: skip images already rendered in their project (see the module docstring).
    on_image: called once per image, as it is saved or found already rendered.
    engine: render everything with this engine instead of choosing one per request (tests, benchmarks,
    a worker that keeps its engine warm).
    """
    outcome = RenderOutcome()
    engines: dict[str, "Engine"] = {}
    by_engine: dict[str, list["RenderRequest"]] = {}
    for request in requests:
        if engine is not None:
            name, reason = engine.name, getattr(engine, "reason", "given by the caller")
        else:
            name, reason = choose_engine(settings, request)
        if name not in engines:
            engines[name] = engine if engine is not None else create_engine(settings, name, reason)
            choice = EngineChoice(name, reason)
            outcome.engines.append(choice)
            if on_engine is not None:
                on_engine(choice)
        by_engine.setdefault(name, []).append(request.model_copy(update={"engine": name}))

    for name, tagged in by_engine.items():
        if resume:
            rendered = find_rendered(store, tagged)
            for request in tagged:
                for image in request.image_requests():
                    artifact = rendered.get(image_request_key(image))
                    if artifact is not None:
                        outcome.resumed.append(artifact)
                        if on_image is not None:
                            on_image(ImageDone(artifact, resumed=True))
            tagged = [run for request in tagged for run in _missing_runs(request, set(rendered))]
        _render_groups(engines[name], tagged, store=store, outcome=outcome, progress=progress, cancel=cancel,
                       batch_size=batch_size, on_image=on_image)
    return outcome


def _render_groups(engine: "Engine", requests: list["RenderRequest"], *, store: "ArtifactStore",
                   outcome: RenderOutcome, progress, cancel, batch_size: int | None,
                   on_image: Callable[[ImageDone], None] | None) -> None:
    groups: dict[tuple, list["RenderRequest"]] = {}
    for request in requests:
        groups.setdefault(request.batch_key(), []).append(request)
    cap = max(1, engine.capabilities.max_batch)
    for pieces in groups.values():
        limit = min(batch_size, cap) if batch_size else auto_batch_size(engine, pieces[0])
        queue = deque(pieces)
        tiling = getattr(engine, "vae_tiling", None)
        try:
            _render_queue(engine, queue, limit, store=store, outcome=outcome, progress=progress, cancel=cancel,
                          on_image=on_image)
        finally:  # the OOM back-off's VAE tiling is for this group only; the engine may outlive the call
            if tiling is not None:
                engine.vae_tiling = tiling


def _render_queue(engine: "Engine", queue: "deque[RenderRequest]", limit: int, *, store: "ArtifactStore",
                  outcome: RenderOutcome, progress, cancel, on_image: Callable[[ImageDone], None] | None) -> None:
    """Render one batch group, halving the batch on out-of-memory, then decoding with VAE tiling."""
    while queue:
        batch = take_batch(queue, limit)
        try:
            results = engine.render(batch, progress=progress, cancel=cancel)
            images = sum(r.count for r in batch)
            outcome.batch_sizes[engine.name] = max(outcome.batch_sizes.get(engine.name, 0), images)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            _release_memory()
            queue.extendleft(reversed(batch))
            images = sum(r.count for r in batch)
            if limit > 1:
                limit = max(1, min(limit, images) // 2)
                outcome.notes.append(f"out of GPU memory with {images} images per call; retrying with {limit}")
            elif hasattr(engine, "vae_tiling") and not engine.vae_tiling:
                engine.vae_tiling = True
                outcome.notes.append("out of GPU memory with 1 image per call; retrying with VAE tiling")
            else:
                first = batch[0]
                raise OutOfMemoryError(
                    f"out of GPU memory rendering one {first.width}x{first.height} image even with VAE tiling; "
                    f"{len(outcome.artifacts)} image(s) of this run were saved; free GPU memory or use a "
                    "smaller --size, then run the same command again to render the rest") from None
            log.warning(outcome.notes[-1])
            continue
        images = sum(len(result.images) for result in results)
        for result in results:
            for artifact in store.save_result(result, batch_size=images):
                outcome.artifacts.append(artifact)
                if on_image is not None:
                    on_image(ImageDone(artifact, resumed=False))
