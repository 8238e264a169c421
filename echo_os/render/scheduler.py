"""The scheduler: choose an engine per request, group compatible requests into batches, render, save.

The one render path: `echo-os render`, `batch`, `replay`, stories and the API's jobs all call
render_requests (the API worker through RenderHooks: a cancel flag and progress per call, saved images
recorded against their jobs).

An engine may run several pipeline calls at once (`concurrent_calls`, e.g. `serve --ray`'s RayEngine,
one call per idle actor): the calls of a batch group are then started together, each on its own thread,
and saved here in call order, so the saving order does not depend on which call finishes first.

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

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from echo_os.engines import choose_engine, create_engine
from echo_os.errors import EchoError, is_out_of_memory
from echo_os.render.batching import CPU_BATCH_MAX_PIXELS as CPU_BATCH_MAX_PIXELS
from echo_os.render.batching import GIB as GIB
from echo_os.render.batching import Piece as Piece
from echo_os.render.batching import auto_batch_size as auto_batch_size
from echo_os.render.batching import estimate_batch_size as estimate_batch_size
from echo_os.render.batching import pick_batch_size as pick_batch_size
from echo_os.render.batching import release_memory, take_batch
from echo_os.render.prepare import EngineChoice
from echo_os.render.requests import image_request_key

if TYPE_CHECKING:
    from concurrent.futures import Future

    from echo_os.artifacts.store import Artifact, ArtifactStore
    from echo_os.engines.base import Engine, ProgressCallback, RenderResult
    from echo_os.render.requests import RenderRequest
    from echo_os.settings import Settings

log = logging.getLogger(__name__)


class OutOfMemoryError(EchoError):
    """One image does not fit on the GPU even at batch 1 with a tiled VAE decode."""


@dataclass(frozen=True)
class ImageDone:
    """One image of the run is on disk: rendered now, or found from an earlier run (resumed).

    source: which of the requests given to render_requests it belongs to; index: its place in that
    request (image `index` has seed + index). save_s: how long saving it took (0 when resumed)."""

    artifact: "Artifact"
    resumed: bool
    source: int = 0
    index: int = 0
    save_s: float = 0.0


@dataclass
class CallControl:
    """What one pipeline call gets: where its progress goes and the flag that cancels it."""

    progress: "ProgressCallback | None" = None
    cancel: threading.Event | None = None


class RenderHooks:
    """How a host (the CLI, a story, the API's job adapter) follows and steers a render, call by call.

    The defaults: one progress callback and one cancel flag for the whole run, every image kept, and
    `on_image` told about each one. The API worker overrides them to run several jobs in one call: drop
    the pieces of a job cancelled before the call, give each call its own cancel flag, keep no image of a
    job cancelled during the call, and add each result's timings to its job.

    `call` (and the progress and cancel it gives) runs on the thread that renders the call: a thread of its
    own for each call when the engine runs calls concurrently. The other hooks run on the caller's thread.
    """

    def __init__(self, progress: "ProgressCallback | None" = None, cancel: threading.Event | None = None,
                 on_image: Callable[[ImageDone], None] | None = None):
        self._control = CallControl(progress, cancel)
        self._on_image = on_image

    def before_call(self, pieces: list[Piece]) -> list[Piece]:
        """The pieces to render now (an empty list skips the call); may raise to stop the run."""
        return pieces

    @contextmanager
    def call(self, pieces: list[Piece]) -> Iterator[CallControl]:
        """Around the engine's render call (its errors pass through here)."""
        yield self._control

    def after_call(self, pieces: list[Piece], results: list["RenderResult"]) -> list[bool]:
        """Per piece (and its result): save its images?"""
        return [True] * len(pieces)

    def result(self, piece: Piece, result: "RenderResult") -> None:
        """A kept piece's result, before its images are saved."""

    def image(self, done: ImageDone) -> None:
        if self._on_image is not None:
            self._on_image(done)


@dataclass
class RenderOutcome:
    artifacts: list["Artifact"] = field(default_factory=list)  # rendered by this call, in render order
    engines: list[EngineChoice] = field(default_factory=list)
    resumed: list["Artifact"] = field(default_factory=list)  # already in the project (resume=True)
    # engine -> the most images one of its pipeline calls rendered (not the cap: 4 images under a cap of 16
    # are a batch of 4); absent when it rendered nothing
    batch_sizes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the OOM back-off did


def canonical_options(engine: "Engine", request: "RenderRequest") -> dict[str, Any]:
    """The request's engine options as the engine's Options model reads them, defaults left out: so
    `--option clip_skip=2` and the API's {"clip_skip": 2} batch, key and resume as the same image."""
    from echo_os.engines import engine_options

    if not request.options:
        return {}
    return engine_options(engine, request).model_dump(mode="json", exclude_defaults=True)


# ---- resume ----------------------------------------------------------------------------------------

def missing_runs(piece: Piece, done: Callable[[int], bool]) -> list[Piece]:
    """The images of `piece` for which done(index in the given request) is false, as runs of
    consecutive seeds (image i has seed + i). Resume uses it with request keys, the API worker with the
    image numbers a job has recorded."""
    runs: list[Piece] = []
    start = None
    request = piece.request
    for i in range(request.count + 1):
        missing = i < request.count and not done(piece.first + i)
        if missing and start is None:
            start = i
        elif not missing and start is not None:
            runs.append(Piece(piece.source, piece.first + start,
                              request.model_copy(update={"seed": request.seeds[start], "count": i - start})))
            start = None
    return runs


def find_rendered(store: "ArtifactStore", requests: list["RenderRequest"]) -> dict[str, "Artifact"]:
    """request_key -> artifact for the images of `requests` already in their project (folder on disk)."""
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
                found[key] = Artifact.from_row(store.root, row)
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
    max_batch: int | None = None,
    on_engine: Callable[[EngineChoice], None] | None = None,
    resume: bool = False,
    skip: Callable[[int, int], bool] | None = None,
    on_image: Callable[[ImageDone], None] | None = None,
    engine: "Engine | None" = None,
    engine_for: Callable[["RenderRequest"], "Engine"] | None = None,
    hooks: RenderHooks | None = None,
    vae_tiling: bool = False,
) -> RenderOutcome:
    """Render every request and save one artifact per image (folder numbers: see ArtifactStore.save).

    This is the one render path: `echo-os render`, `batch`, `replay`, stories and the API's jobs (through
    echo_os.api.worker, which passes `hooks`, `skip`, `engine_for` and `max_batch`).

    batch_size: images per call (capped by the engine); None: auto_batch_size, capped by max_batch.
    resume: skip images already rendered in their project (see the module docstring).
    skip(source, index): true for images not to render (a job's images already recorded).
    on_image: called once per image, as it is saved or found already rendered.
    engine: render everything with this engine instead of choosing one per request (tests, benchmarks).
    engine_for(request): the engine for a request (the API worker keeps its engines warm this way).
    hooks: per-call progress, cancel and saving (RenderHooks); progress, cancel and on_image are
    ignored when given.
    vae_tiling: decode tile by tile from the first call (replay of an image decoded that way); engines
    without tiled_decode ignore it.
    """
    hooks = hooks or RenderHooks(progress, cancel, on_image)
    outcome = RenderOutcome()
    created: dict[str, "Engine"] = {}
    engines: dict[int, "Engine"] = {}  # by id: the worker has one engine object per batch key
    by_engine: dict[int, list[Piece]] = {}
    for source, request in enumerate(requests):
        given = engine if engine is not None else engine_for(request) if engine_for is not None else None
        if given is not None:
            chosen = given
            name, reason = chosen.name, chosen.reason
        else:
            name, reason = choose_engine(settings, request)
            chosen = created.get(name) or create_engine(settings, name, reason)
            created[name] = chosen
        if id(chosen) not in engines:
            engines[id(chosen)] = chosen
            if all(c.name != name for c in outcome.engines):
                choice = EngineChoice(name, reason)
                outcome.engines.append(choice)
                if on_engine is not None:
                    on_engine(choice)
        piece = Piece(source, 0, request.model_copy(
            update={"engine": name, "options": canonical_options(chosen, request)}))
        by_engine.setdefault(id(chosen), []).extend(
            missing_runs(piece, functools.partial(skip, source)) if skip is not None else [piece])

    for key, pieces in by_engine.items():
        if resume:
            pieces = resume_rendered(store, pieces, outcome, hooks.image,
                                     digest=getattr(engines[key], "template_digest", None))
        current, failed = engines[key], []
        while True:
            saved_before = len(outcome.artifacts)
            try:
                _render_groups(current, pieces, store=store, outcome=outcome, hooks=hooks, batch_size=batch_size,
                               max_batch=max_batch, vae_tiling=vae_tiling)
                break
            except (EchoError, OSError) as error:
                failed.append(current.name)
                moved = _auto_moves_on(settings, current, pieces, requests, error, failed,
                                       saved=len(outcome.artifacts) > saved_before)
                if moved is None:
                    raise
                current, pieces, choice = moved
                outcome.engines.append(choice)  # its reason is the one line saying so (the engine line)
                if on_engine is not None:
                    on_engine(choice)
    return outcome


def _auto_moves_on(settings: "Settings", engine: "Engine", pieces: list[Piece], requests: list["RenderRequest"],
                   error: BaseException, failed: list[str], *, saved: bool,
                   ) -> tuple["Engine", list[Piece], EngineChoice] | None:
    """When `auto` chose a network engine (a ComfyUI, a hosted API) and it failed before saving any image,
    the next engine of the order that can render the requests, their pieces for it, and the one line that
    says so; None when the error stands (a cancel, an engine the user named, images already saved)."""
    from echo_os.errors import CancelledError

    if (saved or isinstance(error, CancelledError) or not engine.capabilities.network
            or any(requests[piece.source].engine != "auto" for piece in pieces)):
        return None
    original = requests[pieces[0].source]
    try:
        name, reason = choose_engine(settings, original, exclude=tuple(failed))
    except EchoError:
        return None
    successor = create_engine(settings, name, reason)
    why = " ".join(str(error).split())[:300]
    line = f"auto: {engine.name} failed before any image ({why}); moved on to {name}"
    moved = [Piece(piece.source, piece.first, piece.request.model_copy(
        update={"engine": name, "options": canonical_options(successor, requests[piece.source])}))
        for piece in pieces]
    return successor, moved, EngineChoice(name, line)


def resume_rendered(store: "ArtifactStore", pieces: list[Piece], outcome: RenderOutcome,
                    on_image: Callable[[ImageDone], None] | None = None,
                    digest: Callable[["RenderRequest"], str | None] | None = None) -> list[Piece]:
    """The runs of `pieces` still to render: every image the project already has (the same one-image
    request key) is taken instead, added to outcome.resumed and told to on_image with resumed=True.
    digest(request): the engine's template digest now (Engine.template_digest); an earlier image made
    under another one is rendered again, and outcome.notes says the template changed since."""
    rendered = find_rendered(store, [piece.request for piece in pieces])
    if digest is not None:
        for piece in pieces:
            now = digest(piece.request)
            for image in piece.request.image_requests():
                key = image_request_key(image)
                found = rendered.get(key)
                # an image's meta.json has provenance; an asset's (a mesh, a sound) has none
                provenance = getattr(found.meta, "provenance", None) if found is not None else None
                then = (provenance or {}).get("template_sha256")
                if found is not None and now is not None and then is not None and then != now:
                    del rendered[key]
                    note = (f"{found.id[:12]} was rendered with another version of the template: the template "
                            "changed since, so it is rendered again")
                    if note not in outcome.notes:
                        outcome.notes.append(note)
    remaining: list[Piece] = []
    for piece in pieces:
        keys = [image_request_key(image) for image in piece.request.image_requests()]
        for i, request_key in enumerate(keys):
            artifact = rendered.get(request_key)
            if artifact is not None:
                outcome.resumed.append(artifact)
                if on_image is not None:
                    on_image(ImageDone(artifact, resumed=True, source=piece.source, index=piece.first + i))
        def done(index: int, p: Piece = piece, k: list[str] = keys) -> bool:
            return k[index - p.first] in rendered

        remaining += missing_runs(piece, done)
    return remaining


def _render_groups(engine: "Engine", pieces: list[Piece], *, store: "ArtifactStore", outcome: RenderOutcome,
                   hooks: RenderHooks, batch_size: int | None, max_batch: int | None,
                   vae_tiling: bool = False) -> None:
    """Render the pieces in batch groups, one after another, each its own batch size (from the engine when
    the group starts), halving it on out-of-memory, then decoding with VAE tiling.

    Calls run one at a time on this thread, unless the engine has `concurrent_calls` above 1
    (echo_os.render.ray.RayEngine: one per Ray actor): then up to that many run at once, each on a
    thread of its own, the next group's calls starting while the last of the group before run; their
    results are saved here, in call order, as the oldest call ends. A call that ran out of memory is
    rendered again (smaller, or with VAE tiling) before any later call is saved. On any other error, or
    an interrupt (Ctrl-C) of this thread, the calls still running are stopped at their next step through
    their cancel flag and waited for (nothing of theirs is saved), then the error is raised.
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    grouped: dict[tuple[object, ...], list[Piece]] = {}
    for piece in pieces:
        grouped.setdefault(piece.request.batch_key(), []).append(piece)
    groups = deque(_Group(deque(group), vae_tiling=vae_tiling) for group in grouped.values())
    cap = max(1, engine.capabilities.max_batch)
    width = max(1, engine.concurrent_calls)
    window: deque[_PipelineCall] = deque()  # started (or split, waiting to start) calls, in saving order

    def next_call() -> "_PipelineCall | None":
        while groups and not groups[0].queue:
            groups.popleft()
        if not groups:
            return None
        group = groups[0]
        if group.limit is None:  # the group starts: its batch size now, with what the engine has loaded
            first = group.queue[0].request
            limit = min(batch_size, cap) if batch_size else auto_batch_size(engine, first)
            group.limit = max(1, min(limit, max_batch)) if max_batch else limit
        return _PipelineCall(group, take_batch(group.queue, group.limit))

    # Calls on other threads are stopped through their cancel flag when the run ends early (Ctrl-C, an
    # error): a caller that gave no flag gets this one for them (a call on this thread is stopped by the
    # exception itself).
    stop = threading.Event()

    def render(pieces: list[Piece], tiling: bool) -> list["RenderResult"]:
        # VAE tiling goes with the call (never set on the engine, which other calls and jobs share), and
        # only to an engine that declares tiled_decode.
        extra = {"vae_tiling": tiling} if engine.capabilities.tiled_decode else {}
        with hooks.call(pieces) as control:
            cancel = control.cancel if control.cancel is not None or pool is None else stop
            return engine.render([piece.request for piece in pieces], progress=control.progress, cancel=cancel,
                                 **extra)

    def start(call: _PipelineCall) -> bool:
        call.pieces = hooks.before_call(call.pieces)
        if not call.pieces:
            window.remove(call)
            return False
        tiling = call.group.vae_tiling
        call.future = pool.submit(render, call.pieces, tiling) if pool else _run_here(render, call.pieces, tiling)
        return True

    pool = ThreadPoolExecutor(width, thread_name_prefix="echo-os-call") if width > 1 else None
    ahead = CALLS_AHEAD * width if pool else 1  # calls ended out of order wait in `window` to be saved
    try:
        while groups or window:
            # 1. Start calls in call order while fewer than `width` run: first those split after
            # out-of-memory, then new ones.
            running = sum(call.running for call in window)
            for call in [call for call in window if call.future is None]:
                if running >= width:
                    break
                running += start(call)
            while running < width and len(window) < ahead and (new_call := next_call()) is not None:
                window.append(new_call)
                running += start(new_call)
            if not window:
                continue
            oldest = window[0]
            if oldest.future is None or not oldest.future.done():
                # Any call that ends frees a slot for the next; the oldest is saved once it has ended.
                wait([call.future for call in window if call.future is not None and not call.future.done()],
                     return_when=FIRST_COMPLETED)
                continue
            # 2. The oldest call's results, saved; or the out-of-memory back-off.
            window.popleft()
            batch, group = oldest.pieces, oldest.group
            images = sum(piece.request.count for piece in batch)
            try:
                results = oldest.future.result()
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                release_memory()
                if group.size > 1:
                    group.limit = max(1, min(group.size, images) // 2)
                    outcome.notes.append(f"out of GPU memory with {images} images per call; retrying with "
                                         f"{group.limit}")
                elif engine.capabilities.tiled_decode and not group.vae_tiling:
                    group.vae_tiling = True
                    outcome.notes.append("out of GPU memory with 1 image per call; retrying with VAE tiling")
                else:
                    first = batch[0].request
                    raise OutOfMemoryError(
                        f"out of GPU memory rendering one {first.width}x{first.height} image even with VAE tiling; "
                        f"{len(outcome.artifacts)} image(s) of this run were saved; free GPU memory or use a "
                        "smaller --size, then run the same command again to render the rest") from None
                log.warning(outcome.notes[-1])
                if window:  # later calls have started: this one's images go before them, as calls of their own
                    again, redo = deque(batch), []
                    while again:
                        redo.append(_PipelineCall(group, take_batch(again, group.size)))
                    window.extendleft(reversed(redo))
                else:  # nothing after it has started: back to the front of its group, as one queue
                    group.queue.extendleft(reversed(batch))
                    if not groups or groups[0] is not group:
                        groups.appendleft(group)
                continue
            outcome.batch_sizes[engine.name] = max(outcome.batch_sizes.get(engine.name, 0), images)
            images = sum(len(result.images) for result in results)
            for piece, result, keep in zip(batch, results, hooks.after_call(batch, results)):
                if not keep:
                    continue
                hooks.result(piece, result)
                for i in range(len(result.images)):
                    started = time.perf_counter()
                    artifact = _save(store, result, i, images)
                    outcome.artifacts.append(artifact)
                    hooks.image(ImageDone(artifact, resumed=False, source=piece.source, index=piece.first + i,
                                          save_s=time.perf_counter() - started))
    except BaseException:
        stop.set()  # the calls still running stop at their next step
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)  # the calls still running (after an error) end before it is raised


def _save(store: "ArtifactStore", result: "RenderResult", index: int, batch_size: int) -> "Artifact":
    """Output `index` of a result as an artifact: an image folder, or a clip's (a video engine's output)."""
    if result.images[index].asset is not None:
        from echo_os.artifacts.assets import save_asset

        return save_asset(store, result, index)
    if result.images[index].video is not None:
        from echo_os.artifacts.video import save_clip

        return save_clip(store, result, index)
    return store.save(result, index, batch_size=batch_size)


# With an engine that runs calls concurrently: how many calls per concurrent call may be started or
# ended but not yet saved (they wait for the calls before them). Bounds the results held in memory.
CALLS_AHEAD = 4


@dataclass
class _Group:
    """A batch group's pieces still to render, and its batch size once it has started."""

    queue: "deque[Piece]"
    limit: int | None = None
    vae_tiling: bool = False  # the OOM back-off's last step, for this group's calls from then on

    @property
    def size(self) -> int:
        """The batch size of a started group (its calls are taken only after `limit` is set)."""
        if self.limit is None:
            raise RuntimeError("the batch group has not started")
        return self.limit


@dataclass
class _PipelineCall:
    """One pipeline call of _render_groups: its group, its pieces and, once started, its results to come."""

    group: _Group
    pieces: list[Piece]
    future: "Future[list[RenderResult]] | None" = None

    @property
    def running(self) -> bool:
        return self.future is not None and not self.future.done()


def _run_here(render: Callable[[list[Piece], bool], list["RenderResult"]], pieces: list[Piece],
              tiling: bool) -> "Future[list[RenderResult]]":
    """The call rendered now, on this thread (one call at a time), its outcome in a Future."""
    from concurrent.futures import Future

    future: Future[list[RenderResult]] = Future()
    try:
        future.set_result(render(pieces, tiling))
    except Exception as error:  # noqa: BLE001 - handed to whoever reads the future, as a pool thread would
        future.set_exception(error)
    return future
