"""Render on a Ray cluster: `echo-os batch ... --ray [ADDRESS]` (render_requests_ray) and `echo-os serve
--ray [ADDRESS]` (RayPool.render_any, through echo_os.api.ray_workers). Ray does placement, GPU scheduling,
actor restarts and object transfer; this module only says what to render where.

- Actors (`RenderActor`): one per GPU (`num_gpus=1`) on a GPU cluster, a fraction of a CPU each on a
  CPU-only one. Each keeps its engines (and so their pipelines) warm, at most `max_models` of them, the
  least recently used dropped first. An actor renders and returns RenderResults (the images and the
  runtime record); it never touches the workspace's artifacts or catalog.
- The head (this process) plans, groups requests into pipeline calls exactly as the one renderer does
  (echo_os.render.scheduler: same engine tags, same batch groups, same per-image seeds, batch size from an actor's
  free memory), sends the calls to idle actors, and saves every result itself, in call order, so the
  store and catalog have one writer and a story's scenes are saved in scene order.
- Progress and cancel: actors are threaded (max_concurrency), so while `render` runs the head asks
  `progress(call_id)` for the latest denoising step (every PROGRESS_POLL_S) and `cancel(call_id)` stops
  the call at its next step; Ctrl-C in `batch --ray` cancels the running calls before the head exits.
- An actor that dies mid-call is restarted by Ray (`max_restarts`); the call it had goes back to the
  front of the queue and the next idle actor renders it. Only the head saves, once per call, so no image
  is saved twice however often a call was sent.

Known traps, handled here: Ray sets OMP_NUM_THREADS to an actor's num_cpus (1 for a fraction), so a CPU
actor sets torch's threads itself; a num_cpus=1 actor per core on a 2-core box leaves the driver's tasks
pending, hence fractions; a small /dev/shm makes Ray's object store fail, so a local cluster gets an
object_store_memory that fits; recent Ray turns token auth on and writes ~/.ray/auth_token, so the local
cluster this module starts (bound to 127.0.0.1, for this process only) runs without it. A cluster you
start yourself keeps whatever auth you gave it (RAY_AUTH_TOKEN).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from echo_os.errors import UsageError

if TYPE_CHECKING:
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.engines.base import Engine, ProgressCallback, RenderResult
    from echo_os.render.requests import RenderRequest
    from echo_os.render.scheduler import EngineChoice, ImageDone, RenderOutcome
    from echo_os.settings import Settings

log = logging.getLogger(__name__)

RAY_MISSING = ("--ray needs Ray, which is not installed: pip install 'echo-os[ray]' (or leave out --ray to "
               "render on this machine)")
LOCAL = "local"  # `--ray` without an address: a Ray instance started for this command on this machine
MAX_RESTARTS = 4  # per actor; a call is re-sent after each death
ACTOR_CONCURRENCY = 4  # render, plus progress/cancel/stats answered while it runs
PROGRESS_POLL_S = 0.1  # how often the head asks a running call for its step (one small actor call)
RESTART_WAIT_S = 0.5  # a call to an actor Ray is still restarting fails at once: wait this long between tries
CANCEL_WAIT_S = 10.0  # after Ctrl-C, how long the head waits for the actors to stop their calls
LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2  # images are small; keeps the store inside a small /dev/shm


def import_ray():
    """ray, or UsageError with the one line to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how: `address` None or "local" starts a local instance; "auto" or host:port joins one."""

    address: str | None = None
    actors: int | None = None  # None: one per GPU in the cluster, else 2
    cpus_per_actor: float | None = None  # None: 1 with GPUs, else the local cores shared out
    max_models: int = 2  # engines (pipelines) an actor keeps warm
    threads: int | None = None  # torch threads per actor; None: the cores shared out (CPU), torch's own (GPU)


def start_ray(address: str | None) -> Any:
    """Connect to `address`, or start a local instance (no dashboard, loopback, no token file)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if address in (None, LOCAL):
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # see the module docstring
        shm = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else LOCAL_OBJECT_STORE_BYTES * 4
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                 object_store_memory=min(LOCAL_OBJECT_STORE_BYTES, max(shm // 4, 78 * 1024**2)))
    else:
        ray.init(address=address, log_to_driver=False)
    return ray


@dataclass
class _Call:
    """A render call on an actor: its latest step and the flag that stops it."""

    cancel: Any
    step: int = 0
    total_steps: int = 0
    images: int = 0


class RenderActor:
    """What runs in each Ray actor (made remote by RayPool): engines kept warm, least recently used
    dropped first; render calls in, RenderResults out.

    A threaded actor (max_concurrency > 1): while `render` runs on one thread, the head reads the call's
    latest step with `progress(call_id)` and stops it with `cancel(call_id)` (the engine stops at the next
    denoising step and raises CancelledError); `stats()` answers GET /api/workers."""

    def __init__(self, settings: "Settings", max_models: int, threads: int | None):
        if threads is not None:  # Ray set OMP_NUM_THREADS to the actor's whole CPUs (1 for a fraction)
            import torch

            torch.set_num_threads(threads)
        self.settings = settings
        self.max_models = max(1, max_models)
        self.threads = threads
        self._engines: OrderedDict[tuple[str, str], "Engine"] = OrderedDict()
        self._lock = threading.RLock()  # the engines; render, batch_limit and stats may run at once
        self._calls: dict[str, _Call] = {}
        self._cancelled_early: set[str] = set()  # cancel() came before the call started
        self.calls_done = 0
        self.images_done = 0
        self.last_error: str | None = None
        self.started = time.time()

    def info(self) -> dict:
        with self._lock:
            models = [model for _, model in self._engines]
        return {"pid": os.getpid(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "models": models}

    def stats(self) -> dict:
        """What GET /api/workers shows of this actor."""
        import socket

        gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        device = f"cuda:{gpus}" if gpus else f"cpu ({self.threads or os.cpu_count()} threads)"
        with self._lock:
            models = [model for _, model in self._engines]
            rendering = bool(self._calls)
        return {"pid": os.getpid(), "node": socket.gethostname(), "device": device, "models": models,
                "calls_done": self.calls_done, "images_done": self.images_done, "last_error": self.last_error,
                "state": "rendering" if rendering else "idle"}

    def _engine(self, name: str, reason: str, model: str) -> "Engine":
        from echo_os.engines import create_engine

        key = (name, model)
        with self._lock:
            if key in self._engines:
                self._engines.move_to_end(key)
                return self._engines[key]
            while len(self._engines) >= self.max_models:
                (_, dropped), _engine = self._engines.popitem(last=False)
                log.info("dropping model %s (least recently used)", dropped)
                del _engine
                from echo_os.render.scheduler import _release_memory

                _release_memory()
            engine = self._engines[key] = create_engine(self.settings, name, reason)
            return engine

    def choose(self, request: "RenderRequest") -> tuple[str, str]:
        """The engine `auto` picks for `request` on this actor's hardware (not the head's)."""
        from echo_os.engines import choose_engine

        return choose_engine(self.settings, request)

    def batch_limit(self, name: str, reason: str, request: "RenderRequest") -> int:
        """The renderer's automatic batch size, measured where the images are made."""
        from echo_os.render.scheduler import auto_batch_size

        return auto_batch_size(self._engine(name, reason, request.model), request)

    def free_memory(self, name: str, reason: str, request: "RenderRequest"):
        return self._engine(name, reason, request.model).free_memory(request)

    def runs_on_cpu(self, name: str, reason: str, request: "RenderRequest") -> bool:
        return self._engine(name, reason, request.model).runs_on_cpu(request)

    def progress(self, call_id: str) -> tuple[int, int, int] | None:
        """(step, total steps, images) of a running call; None before its first step or after it ended."""
        call = self._calls.get(call_id)
        if call is None or not call.total_steps:
            return None
        return call.step, call.total_steps, call.images

    def cancel(self, call_id: str) -> None:
        """Stop the call at its next denoising step (or before it starts)."""
        with self._lock:
            call = self._calls.get(call_id)
            if call is None:
                self._cancelled_early.add(call_id)
            else:
                call.cancel.set()

    def render(self, name: str, reason: str, requests: list["RenderRequest"], call_id: str | None = None,
               vae_tiling: bool = False, engine_cancel: bool = True) -> list["RenderResult"]:
        """One pipeline call; out of GPU memory: the call in two halves (results stay in request order).
        A cancelled call raises echo_os.errors.CancelledError (nothing returned) at its next step.

        engine_cancel: hand the cancel flag to the engine, as the head's renderer would (it has one). Without
        it (a plain `batch --ray`, whose local twin passes no flag) the call still stops at its next step,
        through the step hook, but the engine runs exactly as without a flag: the SDXL engine decodes a
        cancellable batch in chunks, which can round a pixel differently from one whole-batch decode."""
        from echo_os.errors import CancelledError

        call = _Call(cancel=threading.Event())
        with self._lock:
            if call_id is not None:
                if call_id in self._cancelled_early:
                    self._cancelled_early.discard(call_id)
                    call.cancel.set()
                self._calls[call_id] = call

        def on_step(event) -> None:
            call.step, call.total_steps, call.images = event.step, event.total_steps, event.images
            if not engine_cancel and call.cancel.is_set():
                raise CancelledError("render cancelled; unfinished images were not saved")

        try:
            if call.cancel.is_set():
                raise CancelledError("cancelled before it started")
            results = self._render(name, reason, requests, on_step, call.cancel if engine_cancel else None,
                                   vae_tiling)
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
        return results

    def _render(self, name: str, reason: str, requests: list["RenderRequest"], progress, cancel,
                vae_tiling: bool) -> list["RenderResult"]:
        from echo_os.render.scheduler import _release_memory, is_out_of_memory

        engine = self._engine(name, reason, requests[0].model)
        if engine.capabilities.tiled_decode:
            engine.vae_tiling = vae_tiling  # the head's OOM back-off asked for it (or not) for this call
        try:
            return engine.render(requests, progress=progress, cancel=cancel)
        except Exception as error:
            if not is_out_of_memory(error) or len(requests) == 1:
                raise
            _release_memory()
            half = len(requests) // 2
            return (self._render(name, reason, requests[:half], progress, cancel, vae_tiling)
                    + self._render(name, reason, requests[half:], progress, cancel, vae_tiling))


class RayPool:
    """The actors, made on start and killed on close (with the local Ray instance, if this pool started it)."""

    def __init__(self, settings: "Settings", options: RayOptions = RayOptions()):
        self.settings = settings
        self.options = options
        self.started_ray = not import_ray().is_initialized()
        self.ray = start_ray(options.address)
        resources = self.ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        count = options.actors or (gpus if gpus else 2)
        if gpus:
            cpus, num_gpus, threads = options.cpus_per_actor or 1, 1, options.threads
        else:  # a fraction: whole CPUs per actor on a small box leave the driver's work pending
            share = max(0.1, round(resources.get("CPU", 1) / (count + 1), 2))
            cpus, num_gpus = options.cpus_per_actor or share, 0
            threads = options.threads or max(1, int(resources.get("CPU", 1)) // count)
        # max_concurrency: progress() and cancel() are answered while render() runs (a threaded actor)
        remote = self.ray.remote(num_cpus=cpus, num_gpus=num_gpus, max_restarts=MAX_RESTARTS,
                                 max_task_retries=0, max_concurrency=ACTOR_CONCURRENCY)(RenderActor)
        self.actors = [remote.remote(settings, options.max_models, threads) for _ in range(count)]
        self.threads = threads
        self.restarts = 0
        self.actor_restarts = [0] * count
        self._down = [False] * count  # died, and no call has come back from it since
        self._leased = [False] * count  # serve --ray: rendering a call that render_any sent
        self._free = threading.Condition()

    def info(self) -> list[dict]:
        return self.ray.get([actor.info.remote() for actor in self.actors])

    def stats(self, timeout: float = 2.0) -> list[dict | None]:
        """Each actor's figures (RenderActor.stats); None for one that does not answer in time (restarting)."""
        from ray.exceptions import GetTimeoutError, RayError

        refs = [actor.stats.remote() for actor in self.actors]
        answers: list[dict | None] = []
        deadline = time.monotonic() + timeout
        for ref in refs:
            try:
                answers.append(self.ray.get(ref, timeout=max(0.01, deadline - time.monotonic())))
            except (GetTimeoutError, RayError):
                answers.append(None)
        return answers

    def batch_limit(self, name: str, reason: str, request: "RenderRequest") -> int:
        return self._get(self.actors[0].batch_limit.remote(name, reason, request))

    def _get(self, ref: Any, timeout: float | None = None) -> Any:
        """ray.get, raising the actor's own exception (CancelledError, a UsageError, CUDA OOM) rather than
        Ray's wrapper, so callers handle it as they would a local render's."""
        from ray.exceptions import RayTaskError

        try:
            return self.ray.get(ref, timeout=timeout)
        except RayTaskError as error:
            cause = getattr(error, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise

    def _send_progress(self, actor: Any, call_id: str, seen: dict[str, tuple], progress: "ProgressCallback") -> None:
        from echo_os.render.results import ProgressEvent

        try:
            step = self.ray.get(actor.progress.remote(call_id), timeout=PROGRESS_POLL_S * 5)
        except Exception:  # noqa: BLE001 - a slow or restarting actor: no progress this round
            return
        if step is not None and seen.get(call_id) != step:
            seen[call_id] = step
            progress(ProgressEvent(step=step[0], total_steps=step[1], images=step[2]))

    def render_on(self, index: int, name: str, reason: str, requests: list["RenderRequest"], *,
                  progress: "ProgressCallback | None" = None, cancel: "threading.Event | None" = None,
                  vae_tiling: bool = False) -> list["RenderResult"]:
        """One pipeline call on actor `index` (serve --ray, through render_any), its steps passed to
        `progress` while it runs, `cancel` sent on to the actor. An actor that dies mid-call is restarted
        by Ray and the call sent again (at most MAX_RESTARTS times)."""
        from ray.exceptions import RayActorError

        from echo_os.errors import CancelledError

        actor = self.actors[index]
        deaths = 0
        while True:
            call_id = uuid.uuid4().hex
            ref = actor.render.remote(name, reason, requests, call_id, vae_tiling, engine_cancel=cancel is not None)
            seen: dict[str, tuple] = {}
            sent_cancel = False
            try:
                while True:
                    ready, _ = self.ray.wait([ref], num_returns=1, timeout=PROGRESS_POLL_S)
                    if ready:
                        results = self._get(ready[0])
                        self._down[index] = False
                        return results
                    if cancel is not None and cancel.is_set() and not sent_cancel:
                        actor.cancel.remote(call_id)
                        sent_cancel = True
                    if progress is not None:
                        self._send_progress(actor, call_id, seen, progress)
            except RayActorError as error:
                deaths += self._actor_failed(index, error)
                if deaths > MAX_RESTARTS:
                    raise
                if cancel is not None and cancel.is_set():
                    raise CancelledError("cancelled while its actor restarted") from None

    def render_any(self, name: str, reason: str, requests: list["RenderRequest"], *, prefer: int = 0,
                   progress: "ProgressCallback | None" = None, cancel: "threading.Event | None" = None,
                   vae_tiling: bool = False) -> list["RenderResult"]:
        """One pipeline call on an idle actor (serve --ray: the calls of the jobs of every job worker share the
        actors): actor `prefer` if it is idle, else the first idle one; while none is, the call waits (a
        cancel ends the wait with CancelledError). Then render_on."""
        index = self._lease(prefer, cancel)
        try:
            return self.render_on(index, name, reason, requests, progress=progress, cancel=cancel,
                                  vae_tiling=vae_tiling)
        finally:
            with self._free:
                self._leased[index] = False
                self._free.notify_all()

    def _lease(self, prefer: int, cancel: "threading.Event | None") -> int:
        from echo_os.errors import CancelledError

        with self._free:
            while True:
                if cancel is not None and cancel.is_set():
                    raise CancelledError("cancelled while waiting for an idle actor")
                order = [prefer, *(i for i in range(len(self._leased)) if i != prefer)]
                for index in order:
                    if index < len(self._leased) and not self._leased[index]:
                        self._leased[index] = True
                        return index
                self._free.wait(PROGRESS_POLL_S)  # woken by a release; the timeout looks at `cancel`

    def _actor_failed(self, index: int, error: Exception) -> int:
        """A call on actor `index` failed because the actor died or is restarting: 1 for a new death
        (counted and logged), 0 while the same one is still restarting (wait a moment before sending again)."""
        if self._down[index]:
            time.sleep(RESTART_WAIT_S)
            return 0
        self._down[index] = True
        self.restarts += 1
        self.actor_restarts[index] += 1
        log.warning("render actor %d died or is restarting (%s); its call is sent again", index, type(error).__name__)
        return 1

    def run(self, name: str, reason: str, calls: list[list["RenderRequest"]], *,
            progress: "ProgressCallback | None" = None, cancel: "threading.Event | None" = None):
        """Yield (call number, results) as calls finish, each call once; a call whose actor died is sent
        again (to the first idle actor: the restarted one or another). `progress` gets the running calls'
        steps; `cancel` set (or Ctrl-C) stops the running calls at their next step and sends no more, then
        CancelledError (KeyboardInterrupt) is raised."""
        ray = self.ray
        from ray.exceptions import RayActorError

        from echo_os.errors import CancelledError

        queue = deque(range(len(calls)))
        idle = list(self.actors)
        running: dict[Any, tuple[int, Any, str]] = {}
        seen: dict[str, tuple] = {}
        cancelled = False
        try:
            while queue or running:
                if cancel is not None and cancel.is_set() and not cancelled:
                    cancelled = True
                    queue.clear()
                    self._cancel_running(running)
                while queue and idle:
                    number = queue.popleft()
                    actor = idle.pop(0)
                    call_id = uuid.uuid4().hex
                    ref = actor.render.remote(name, reason, calls[number], call_id, engine_cancel=cancel is not None)
                    running[ref] = (number, actor, call_id)
                ready, _ = ray.wait(list(running), num_returns=1, timeout=PROGRESS_POLL_S)
                if not ready:
                    if progress is not None:
                        for _, actor, call_id in list(running.values()):
                            self._send_progress(actor, call_id, seen, progress)
                    continue
                number, actor, call_id = running.pop(ready[0])
                seen.pop(call_id, None)
                idle.append(actor)
                index = self.actors.index(actor)
                try:
                    results = self._get(ready[0])
                except RayActorError as error:
                    self._actor_failed(index, error)
                    if self.restarts > MAX_RESTARTS * len(self.actors):
                        raise
                    if not cancelled:
                        queue.appendleft(number)
                    continue
                except CancelledError:
                    cancelled = True
                    continue
                self._down[index] = False
                if not cancelled:
                    yield number, results
        except KeyboardInterrupt:
            # Ctrl-C: the actors stop at their next step (they outlive this process on a cluster)
            self._cancel_running(running)
            try:
                ray.wait(list(running), num_returns=len(running), timeout=CANCEL_WAIT_S)
            except KeyboardInterrupt:
                pass
            raise
        if cancelled:
            raise CancelledError("cancelled")

    def _cancel_running(self, running: dict[Any, tuple[int, Any, str]]) -> None:
        for _, actor, call_id in running.values():
            actor.cancel.remote(call_id)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self.started_ray:
            self.ray.shutdown()


def render_requests_ray(settings: "Settings", requests: list["RenderRequest"], *, store: "ArtifactStore",
                        pool: RayPool, engine: "Engine", batch_size: int | None = None, resume: bool = True,
                        on_image: Callable[["ImageDone"], None] | None = None,
                        on_engine: Callable[["EngineChoice"], None] | None = None,
                        progress: "ProgressCallback | None" = None,
                        cancel: threading.Event | None = None) -> "RenderOutcome":
    """render_requests (echo_os.render.scheduler) with the pipeline calls on Ray actors and the saving here.
    progress: the running calls' denoising steps; cancel: stops the actors' calls at their next step
    (the calls saved before it stay saved), then CancelledError."""
    from echo_os.render.scheduler import (
        EngineChoice,
        ImageDone,
        Piece,
        RenderOutcome,
        canonical_options,
        resume_rendered,
        take_batch,
    )

    outcome = RenderOutcome()
    choice = EngineChoice(engine.name, engine.reason)
    outcome.engines.append(choice)
    if on_engine is not None:
        on_engine(choice)
    # 1. The pieces, tagged as the renderer tags them; what the project already has is resumed.
    pieces = [Piece(source, 0, request.model_copy(update={"engine": engine.name,
                                                          "options": canonical_options(engine, request)}))
              for source, request in enumerate(requests)]
    if resume:
        pieces = resume_rendered(store, pieces, outcome, on_image)
    # 2. The calls: the renderer's batch groups and sizes.
    groups: dict[tuple, list[Piece]] = {}
    for piece in pieces:
        groups.setdefault(piece.request.batch_key(), []).append(piece)
    calls: list[list[Piece]] = []
    cap = max(1, engine.capabilities.max_batch)
    for group in groups.values():
        limit = min(batch_size, cap) if batch_size else pool.batch_limit(engine.name, engine.reason, group[0].request)
        outcome.batch_sizes.setdefault(engine.name, limit)
        queue = deque(group)
        while queue:
            calls.append(take_batch(queue, limit))
    # 3. Render anywhere, save here in call order (scene order: the calls are made in request order).
    finished: dict[int, list["RenderResult"]] = {}
    next_call = 0
    for number, results in pool.run(engine.name, engine.reason, [[p.request for p in call] for call in calls],
                                    progress=progress, cancel=cancel):
        finished[number] = results
        while next_call in finished:
            call, results = calls[next_call], finished.pop(next_call)
            images = sum(len(result.images) for result in results)
            for piece, result in zip(call, results):
                for i in range(len(result.images)):
                    started = time.perf_counter()
                    artifact = store.save(result, i, batch_size=images)
                    outcome.artifacts.append(artifact)
                    if on_image is not None:
                        on_image(ImageDone(artifact, resumed=False, source=piece.source, index=piece.first + i,
                                           save_s=time.perf_counter() - started))
            next_call += 1
    return outcome
