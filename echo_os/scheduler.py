"""The scheduler: choose an engine per request, group compatible requests into batches, render, save.

Requests with the same engine and batch key (model, size, steps, cfg, scheduler, device, dtype,
attention) share one pipeline call of at most `batch_size` images. A request with more images than that
is split by seed (image i always has seed + i), so splitting never changes an image.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from echo_os.engines import choose_engine, create_engine

if TYPE_CHECKING:
    from echo_os.artifacts.store import Artifact, ArtifactStore
    from echo_os.engines.base import Engine, ProgressCallback
    from echo_os.requests import RenderRequest
    from echo_os.settings import Settings


@dataclass
class EngineChoice:
    name: str
    reason: str


@dataclass
class RenderOutcome:
    artifacts: list["Artifact"] = field(default_factory=list)
    engines: list[EngineChoice] = field(default_factory=list)


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


def plan_batches(requests: list["RenderRequest"], max_images: int) -> list[list["RenderRequest"]]:
    """Group by batch key in order of first appearance, then fill batches of at most max_images."""
    groups: dict[tuple, list["RenderRequest"]] = {}
    for request in requests:
        groups.setdefault(request.batch_key(), []).extend(split_request(request, max_images))
    batches: list[list["RenderRequest"]] = []
    for pieces in groups.values():
        current: list["RenderRequest"] = []
        for piece in pieces:
            if current and sum(r.count for r in current) + piece.count > max_images:
                batches.append(current)
                current = []
            current.append(piece)
        if current:
            batches.append(current)
    return batches


def render_requests(
    settings: "Settings",
    requests: list["RenderRequest"],
    *,
    store: "ArtifactStore",
    progress: "ProgressCallback | None" = None,
    cancel: threading.Event | None = None,
    batch_size: int | None = None,
    on_engine: Callable[[EngineChoice], None] | None = None,
) -> RenderOutcome:
    """Render every request and save one artifact per image (folder numbers: see ArtifactStore.save)."""
    outcome = RenderOutcome()
    engines: dict[str, "Engine"] = {}
    by_engine: dict[str, list[tuple[int, "RenderRequest"]]] = {}
    for index, request in enumerate(requests):
        name, reason = choose_engine(settings, request)
        if name not in engines:
            engines[name] = create_engine(settings, name, reason)
            choice = EngineChoice(name, reason)
            outcome.engines.append(choice)
            if on_engine is not None:
                on_engine(choice)
        by_engine.setdefault(name, []).append((index, request))

    for name, indexed in by_engine.items():
        engine = engines[name]
        limit = max(1, min(batch_size or engine.capabilities.max_batch, engine.capabilities.max_batch))
        tagged = [request.model_copy(update={"engine": name}) for _, request in indexed]
        for batch in plan_batches(tagged, limit):
            results = engine.render(batch, progress=progress, cancel=cancel)
            images = sum(len(result.images) for result in results)
            for result in results:
                outcome.artifacts.extend(store.save_result(result, batch_size=images))
    return outcome

