"""Style swatches: a small rendered sample of each named style, for the studio's style picker.

A swatch is one fixed subject (SWATCH_SUBJECT) with the style applied, rendered SWATCH_SIZE pixels a side in
SWATCH_STEPS steps by the engine `auto` chooses for the server's model on this machine, through the front
door like any render: `prepare` (the style layered by its name, every check) then `render_requests` (the one
render path). The images are kept by the hooks, never saved as artifacts: a swatch is not in the catalog.

Rendering takes seconds (minutes for a real SDXL on a CPU), so it runs on a background thread (one at a
time: the server's `SwatchRenderer`, shut down with it) and the route (GET /api/studio/styles/{name}/swatch)
never waits for it: until the render is on disk it answers 202 with the draft card (echo_os.engines.draft:
a palette drawn from the style's light and mood words, milliseconds, no weights), and the page asks again.
When no model can render here (`auto` finds only the draft engine, or the model is missing), or the render
failed, the draft card is the swatch, answered 200 and labelled "draft" (header X-Echo-Swatch: draft, with
the reason).

Each swatch is cached as artifacts/.cache/swatches/<key>.png, where the key is the sha256 of what it depends
on: the style's name, words and negative, the subject, size, steps and seed, SWATCH_VERSION, and the model
and engine that render it (the draft card's key names the draft engine). An edited or re-learned style, or
another model, gets a new key, hence a new swatch; an unchanged one is never rendered twice.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from echo_os.render.requests import RenderRequest
    from echo_os.render.results import RenderResult
    from echo_os.render.scheduler import Piece
    from echo_os.render.styles import Style
    from echo_os.settings import Settings

log = logging.getLogger(__name__)

SWATCH_SUBJECT = "a lighthouse on a cliff above the sea"
SWATCH_SIZE = 128  # pixels a side (multiples of 8, the engines' rule); the page shows it at 48 px
SWATCH_STEPS = 6
SWATCH_SEED = 7
SWATCH_VERSION = 2  # bump when the drawing changes: every cached swatch is then drawn again
SWATCH_DIR = "swatches"
DRAFT = "draft"


@dataclass(frozen=True)
class SwatchPlan:
    """What a style's swatch is made with: the prepared request and its engine, or the draft card (request
    None) and why."""

    style: "Style"
    engine: str
    model: str | None
    reason: str
    request: "RenderRequest | None" = None

    @property
    def rendered(self) -> bool:
        return self.request is not None

    @property
    def key(self) -> str:
        style = self.style
        content = {"name": style.name, "prompt": style.prompt, "negative": style.negative, "subject": SWATCH_SUBJECT,
                   "size": SWATCH_SIZE, "steps": SWATCH_STEPS, "seed": SWATCH_SEED, "version": SWATCH_VERSION,
                   "engine": self.engine, "model": self.model if self.rendered else None}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()

    def path(self, settings: "Settings") -> Path:
        return settings.cache_dir / SWATCH_DIR / f"{self.key}.png"

    def draft(self, reason: str) -> "SwatchPlan":
        return SwatchPlan(self.style, DRAFT, None, reason)


def plan_swatch(settings: "Settings", style: "Style", model: str) -> SwatchPlan:
    """The swatch of `style` as `auto` would render it with `model` here (prepare's checks), or the draft
    card when no engine but the draft one can (or the model is unknown)."""
    from echo_os.errors import EchoError
    from echo_os.render.prepare import prepare

    values = {"prompt": SWATCH_SUBJECT, "style": style.name, "model": model, "engine": "auto",
              "size": f"{SWATCH_SIZE}x{SWATCH_SIZE}", "steps": SWATCH_STEPS, "seed": SWATCH_SEED,
              "project": "studio-swatches"}
    try:
        prepared = prepare(settings, values, explicit=tuple(values))
    except EchoError as error:
        return SwatchPlan(style, DRAFT, None, f"no model can render a swatch here: {error}")
    if prepared.engine.name == DRAFT:
        return SwatchPlan(style, DRAFT, None, f"auto chose the draft engine: {prepared.engine.reason}")
    request = prepared.request.model_copy(update={"engine": prepared.engine.name})
    return SwatchPlan(style, prepared.engine.name, model, prepared.engine.reason, request)


def draw_draft(settings: "Settings", plan: SwatchPlan) -> Path:
    """The draft card of the plan's style, drawn and cached on first use (atomic write)."""
    from echo_os.engines.draft import draw_card
    from echo_os.render.requests import build_request

    draft = plan if not plan.rendered else plan.draft(plan.reason)
    path = draft.path(settings)
    if path.is_file():
        return path
    prompt, negative = plan.style.apply(SWATCH_SUBJECT, None)
    request = build_request(prompt=prompt, negative_prompt=negative, model="draft", engine=DRAFT,
                            width=SWATCH_SIZE, height=SWATCH_SIZE, seed=SWATCH_SEED, steps=1)
    _write_png(path, draw_card(request, SWATCH_SEED))
    return path


def _write_png(path: Path, image: object) -> None:
    from echo_os.atomic import write_atomically

    buffer = io.BytesIO()
    image.save(buffer, "PNG")  # type: ignore[attr-defined]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, buffer.getvalue())


def render_swatch(settings: "Settings", plan: SwatchPlan) -> Path:
    """Render the plan's request through render_requests, keeping the image out of the artifact store (a
    RenderHooks that saves nothing), and cache it as the plan's PNG."""
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.render.scheduler import RenderHooks, render_requests

    assert plan.request is not None
    results: list["RenderResult"] = []

    class KeepNothing(RenderHooks):
        def after_call(self, pieces: list["Piece"], found: list["RenderResult"]) -> list[bool]:
            results.extend(found)
            return [False] * len(pieces)

    store = ArtifactStore(settings)
    try:
        render_requests(settings, [plan.request], store=store, hooks=KeepNothing())
    finally:
        store.close()
    if not results or not results[0].images:
        raise RuntimeError(f"the {plan.engine} engine returned no image for the swatch")
    path = plan.path(settings)
    _write_png(path, results[0].images[0].image.convert("RGB"))
    return path


class SwatchRenderer:
    """Renders swatches one at a time on a background thread; remembers the ones that failed (their draft
    card stands, with the error) until the server restarts."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="echo-os-swatch")
        self._lock = threading.Lock()
        self._running: dict[str, Future[Path]] = {}
        self.failed: dict[str, str] = {}

    def submit(self, settings: "Settings", plan: SwatchPlan) -> None:
        key = plan.key
        with self._lock:
            if key in self._running or key in self.failed:
                return
            future = self._pool.submit(render_swatch, settings, plan)
            self._running[key] = future
        future.add_done_callback(lambda done: self._finished(key, plan, done))

    def _finished(self, key: str, plan: SwatchPlan, done: "Future[Path]") -> None:
        with self._lock:
            self._running.pop(key, None)
            if done.cancelled():  # the server stopped before it ran
                return
            error = done.exception()
            if error is not None:
                self.failed[key] = f"the swatch render failed ({' '.join(str(error).split())[:200]})"
                log.warning("style %s: %s", plan.style.name, self.failed[key])

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class Swatch:
    """What the route answers: the PNG, whether it is the style's render (state "rendered"), the draft card
    while the render runs ("pending") or the draft card as the swatch ("draft"), and with what."""

    path: Path
    state: str
    engine: str
    model: str | None
    reason: str


def swatch(settings: "Settings", style: "Style", model: str, renderer: SwatchRenderer) -> Swatch:
    """The style's swatch now: the cached render, else the draft card while a background render starts (or
    as the swatch, when nothing can render here or the render failed). Never waits for a render."""
    plan = plan_swatch(settings, style, model)
    if not plan.rendered:
        return Swatch(draw_draft(settings, plan), DRAFT, DRAFT, None, plan.reason)
    path = plan.path(settings)
    if path.is_file():
        return Swatch(path, "rendered", plan.engine, plan.model, plan.reason)
    failed = renderer.failed.get(plan.key)
    if failed is not None:
        return Swatch(draw_draft(settings, plan), DRAFT, DRAFT, None, failed)
    renderer.submit(settings, plan)
    return Swatch(draw_draft(settings, plan), "pending", plan.engine, plan.model, plan.reason)
