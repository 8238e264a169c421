"""What runs in each Ray actor (echo_os.render.ray makes RenderActor remote): engines by name, their models
kept warm in the actor's process's model cache, one pipeline call at a time, its steps readable and its
cancel flag settable from other threads while it runs. The head's side (the pool, the restart-aware calls,
RayEngine) is echo_os.render.ray; nothing here imports Ray.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, TypedDict

if TYPE_CHECKING:
    from echo_os.engines.base import Engine, MemoryInfo, ProgressEvent, RenderResult
    from echo_os.render.requests import RenderRequest
    from echo_os.settings import Settings


class Step(NamedTuple):
    """One denoising step of a call as an actor reports it; `preview` is the engine's live preview of that
    step (a small JPEG data URL, echo_os.render.preview) when it made one, carried to the head and on to
    the job's SSE stream as with a local engine."""

    step: int
    total_steps: int
    images: int
    preview: str | None = None


class ActorInfo(TypedDict):
    """RenderActor.info: who answered."""

    pid: int
    gpus: str  # CUDA_VISIBLE_DEVICES of the actor ("" without a GPU)
    models: list[str]  # its model cache's entries, least recently used first


class ActorStats(TypedDict):
    """RenderActor.stats: what GET /api/workers shows of an actor."""

    pid: int
    node: str
    device: str
    models: list[str]
    calls_done: int
    images_done: int
    last_error: str | None
    state: str  # "rendering" or "idle"


@dataclass
class _Call:
    """A render call on an actor: its steps so far (Step each) and the flag that stops it."""

    cancel: threading.Event
    steps: list[Step] = field(default_factory=list)


def _cached_models() -> list[str]:
    """The models this process's model cache holds, least recently used first."""
    from echo_os.render.cache import model_cache

    return list(model_cache().stats().labels)


class RenderActor:
    """What runs in each Ray actor (made remote by RayPool): engines by name, their models in the process's
    model cache; render calls in, RenderResults out.

    A threaded actor (max_concurrency > 1): while `render` runs on one thread, the head reads the call's
    latest step with `progress(call_id)` and stops it with `cancel(call_id)` (the engine stops at the next
    denoising step and raises CancelledError); `stats()` answers GET /api/workers."""

    def __init__(self, settings: "Settings", max_models: int, threads: int | None):
        if threads is not None:  # Ray set OMP_NUM_THREADS to the actor's whole CPUs (1 for a fraction)
            import torch

            torch.set_num_threads(threads)
        from echo_os.render.cache import model_cache

        self.settings = settings
        self.max_models = max(1, max_models)
        model_cache().max_entries = self.max_models  # the actor's process has its own cache
        self.threads = threads
        # Engine objects are light (their pipelines live in the model cache, which evicts them): kept by name.
        self._engines: dict[tuple[str, str], "Engine"] = {}
        self._lock = threading.RLock()  # the engines; render, free_memory and stats may run at once
        self._calls: dict[str, _Call] = {}
        self._cancelled_early: set[str] = set()  # cancel() came before the call started
        self.calls_done = 0
        self.images_done = 0
        self.last_error: str | None = None
        self.started = time.time()

    def info(self) -> ActorInfo:
        models = _cached_models()
        return {"pid": os.getpid(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "models": models}

    def stats(self) -> ActorStats:
        """What GET /api/workers shows of this actor."""
        import socket

        gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        device = f"cuda:{gpus}" if gpus else f"cpu ({self.threads or os.cpu_count()} threads)"
        models = _cached_models()
        with self._lock:
            rendering = bool(self._calls)
        return {"pid": os.getpid(), "node": socket.gethostname(), "device": device, "models": models,
                "calls_done": self.calls_done, "images_done": self.images_done, "last_error": self.last_error,
                "state": "rendering" if rendering else "idle"}

    def _engine(self, name: str, reason: str, model: str) -> "Engine":
        from echo_os.engines import create_engine

        key = (name, reason)  # `model` is the cache's business: it loads and drops the weights
        with self._lock:
            if key not in self._engines:
                self._engines[key] = create_engine(self.settings, name, reason)
            return self._engines[key]

    def choose(self, request: "RenderRequest") -> tuple[str, str]:
        """The engine `auto` picks for `request` on this actor's hardware (not the head's)."""
        from echo_os.engines import choose_engine

        return choose_engine(self.settings, request)

    def free_memory(self, name: str, reason: str, request: "RenderRequest") -> "MemoryInfo | None":
        return self._engine(name, reason, request.model).free_memory(request)

    def runs_on_cpu(self, name: str, reason: str, request: "RenderRequest") -> bool:
        return self._engine(name, reason, request.model).runs_on_cpu(request)

    def progress(self, call_id: str, since: int = 0) -> list[Step]:
        """The steps of a running call after the first `since` ones (Step each, with its preview if any);
        none before its first step or after it ended (`render` returns them all)."""
        call = self._calls.get(call_id)
        return [] if call is None else call.steps[since:]

    def cancel(self, call_id: str) -> None:
        """Stop the call at its next denoising step (or before it starts)."""
        with self._lock:
            call = self._calls.get(call_id)
            if call is None:
                self._cancelled_early.add(call_id)
            else:
                call.cancel.set()

    def render(self, name: str, reason: str, requests: list["RenderRequest"], call_id: str | None = None,
               vae_tiling: bool = False, engine_cancel: bool = True,
               ) -> tuple[list["RenderResult"], list[Step]]:
        """One pipeline call, as the head's renderer sent it (its OOM back-off decides batch sizes and VAE
        tiling: an out-of-memory error goes back to it as raised): its results and all its steps (the head
        passes on those `progress` polls did not). A cancelled call raises echo_os.errors.CancelledError
        (nothing returned) at its next step.

        engine_cancel: hand the cancel flag to the engine, as the head's renderer would a local engine (the
        API worker hands its engine one). Without it (`batch --ray`, whose local twin hands none) the call
        still stops at its next step, through the step hook, but the engine runs exactly as without a flag:
        the SDXL engine decodes a cancellable batch in chunks, which can round a pixel differently from one
        whole-batch decode."""
        from echo_os.errors import CancelledError

        call = _Call(cancel=threading.Event())
        with self._lock:
            if call_id is not None:
                if call_id in self._cancelled_early:
                    self._cancelled_early.discard(call_id)
                    call.cancel.set()
                self._calls[call_id] = call

        def on_step(event: "ProgressEvent") -> None:
            call.steps.append(Step(event.step, event.total_steps, event.images, event.preview))
            if not engine_cancel and call.cancel.is_set():
                raise CancelledError("render cancelled; unfinished images were not saved")

        try:
            if call.cancel.is_set():
                raise CancelledError("cancelled before it started")
            engine = self._engine(name, reason, requests[0].model)
            extra = {"vae_tiling": vae_tiling} if engine.capabilities.tiled_decode else {}  # the head's, per call
            results = engine.render(requests, progress=on_step, cancel=call.cancel if engine_cancel else None,
                                    **extra)
        except CancelledError:
            raise
        except Exception as error:
            self.last_error = f"{type(error).__name__}: {error}"
            raise
        finally:
            if call_id is not None:
                with self._lock:
                    self._calls.pop(call_id, None)
        self.calls_done += 1
        self.images_done += sum(len(result.images) for result in results)
        return results, call.steps
