"""Render on a Ray cluster: `echo-os batch ... --ray [ADDRESS]` and `echo-os serve --ray [ADDRESS]`
(echo_os.api.ray_workers). Ray does placement, GPU scheduling, actor restarts and object transfer; this
module only says what to render where.

- Actors (`RenderActor`, in echo_os.render.ray_actor; this module is the head's side): one per GPU
  (`num_gpus=1`) on a GPU cluster, a fraction of a CPU each on a CPU-only one. Each keeps its pipelines
  warm in its process's model cache (echo_os/render/cache.py: a memory budget and at most `max_models`
  entries, the least recently used dropped first). An actor renders one pipeline call at a time and
  returns RenderResults (the images and the runtime record); it never touches the workspace's artifacts
  or catalog.
- `RayEngine` is an engine (BaseEngine) whose pipeline calls run on the actors: both Ray hosts render
  through the one renderer (echo_os.render.scheduler.render_requests) with it, so grouping, batch sizes,
  the out-of-memory back-off, resume and in-order saving are the renderer's, and only the head (this
  process) saves. `concurrent_calls` is the number of actors: the renderer starts that many calls at
  once, each on an idle actor (`RayPool.render_any`).
- `auto` is decided on an actor (`RayPool.choose`, the engine factory): its GPU, not the head's.
- Progress and cancel: actors are threaded (max_concurrency), so while `render` runs the head asks
  `progress(call_id)` for the latest denoising step (every PROGRESS_POLL_S) and `cancel(call_id)` stops
  the call at its next step. Ctrl-C in `batch --ray` stops the running calls the same way: the renderer
  sets the cancel flag of the calls it runs on other threads (a call on the head's own thread sends the
  cancel itself when interrupted).
- Restarts: every call to an actor goes through one restart-aware path (`RayPool.ask`, `render_on`):
  an actor that died is restarted by Ray (`max_restarts`), and the call waits for it and is sent again.
  Deaths are counted per actor (GET /api/workers), including one noticed only by a new pid. An actor
  gone for good (more than MAX_RESTARTS deaths, or not back within RESTART_TIMEOUT_S) raises
  echo_os.errors.OutageError: an outage, which sends a job back to the queue without spending an attempt.
  Only the head saves, once per call, so no image is saved twice however often a call was sent.

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
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from echo_os.engines.base import BaseEngine
from echo_os.errors import UsageError
from echo_os.render.ray_actor import ActorInfo, ActorStats, RenderActor, Step

if TYPE_CHECKING:
    from echo_os.engines.base import MemoryInfo, ProgressCallback, RenderResult
    from echo_os.render.requests import RenderRequest
    from echo_os.settings import Settings

log = logging.getLogger(__name__)

RAY_MISSING = ("--ray needs Ray, which is not installed: pip install 'echo-os[ray]' (or leave out --ray to "
               "render on this machine)")
LOCAL = "local"  # `--ray` without an address: a Ray instance started for this command on this machine
MAX_RESTARTS = 4  # per actor; a call is re-sent after each death
ACTOR_CONCURRENCY = 4  # render, plus progress/cancel/stats answered while it runs
PROGRESS_POLL_S = 0.1  # how often the head asks a running call for its step (one small actor call)
RESTART_WAIT_S = 0.5  # a call to an actor Ray is still restarting fails at once: wait this long between tries
RESTART_TIMEOUT_S = 180.0  # how long a call waits for a restarting actor before it is an outage
CANCEL_WAIT_S = 10.0  # after a cancel (Ctrl-C), how long the head waits for an actor to stop its call
LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2  # images are small; keeps the store inside a small /dev/shm


def import_ray() -> ModuleType:
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
    max_models: int = 2  # models (model cache entries) an actor keeps warm
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


def machinery_errors() -> tuple[type[BaseException], ...]:
    """Ray's errors that say the machinery failed, not the call: the actor died or is restarting, its
    worker process or node is gone, a result was lost with them."""
    from ray import exceptions

    return (exceptions.RayActorError, exceptions.NodeDiedError, exceptions.WorkerCrashedError,
            exceptions.ObjectLostError, exceptions.OwnerDiedError, exceptions.LocalRayletDiedError)


class RayPool:
    """The actors, made on start and killed on close (with the local Ray instance, if this pool started it).

    Every call to an actor goes through `ask` (a question: choose, free_memory, runs_on_cpu, stats,
    progress), `tell` (cancel) or `render_on` (a pipeline call): the one restart-aware path. An actor
    found dead or restarting is counted once per death (`actor_restarts`); `ask` and `render_on` wait for
    it and send the call again; an actor gone for good is an OutageError."""

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
        self.actor_restarts = [0] * count
        self._down = [False] * count  # died, and nothing has come back from it since
        self._pids: list[int | None] = [None] * count  # as last seen: a new one is a restart
        self._state = threading.Lock()  # the three lists above: calls of several threads fail together
        self._leased = [False] * count  # rendering a call sent by render_any
        self._free = threading.Condition()

    @property
    def restarts(self) -> int:
        """Actor deaths seen, all actors together."""
        return sum(self.actor_restarts)

    # ---- the one path to an actor -------------------------------------------------------------------
    def tell(self, index: int, method: str, *args: Any) -> Any:
        """Send a call to actor `index` and return its ObjectRef without waiting (cancel; render_on)."""
        return getattr(self.actors[index], method).remote(*args)

    def ask(self, index: int, method: str, *args: Any, wait: bool = True, timeout: float | None = None) -> Any:
        """Call actor `index`'s `method` and return its answer, raising the actor's own exception (a
        UsageError, CancelledError, CUDA out-of-memory) as a local call would. An actor that is dead or
        restarting: counted, then (wait=True) the call waits for the restart and is sent again, until the
        actor is gone for good (OutageError); wait=False: OutageError at once (progress, stats). A
        `timeout` without an answer is an OutageError too."""
        from ray.exceptions import GetTimeoutError

        from echo_os.errors import OutageError

        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:
            try:
                answer = self._get(self.tell(index, method, *args), timeout=timeout)
            except GetTimeoutError:
                raise OutageError(f"render actor {index} did not answer {method} within {timeout:g}s") from None
            except machinery_errors() as error:
                self._actor_failed(index, error)
                if not wait:
                    raise OutageError(f"render actor {index} is restarting ({type(error).__name__})") from None
                self._wait_restart(index, deadline, error)
                continue
            self._actor_answered(index)
            return answer

    def _wait_restart(self, index: int, deadline: float, error: BaseException) -> None:
        """Before sending a call again to an actor that failed: a pause, or OutageError if it is gone."""
        from echo_os.errors import OutageError

        if self.actor_restarts[index] > MAX_RESTARTS or time.monotonic() > deadline:
            raise OutageError(f"render actor {index} is gone: it died {self.actor_restarts[index]} times "
                              f"({type(error).__name__}); restart the command or the server") from error
        time.sleep(RESTART_WAIT_S)

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

    def _actor_failed(self, index: int, error: BaseException) -> None:
        """Actor `index` was found dead or restarting: a new death is counted and logged once."""
        with self._state:
            if self._down[index]:
                return
            self._down[index] = True
            self._pids[index] = None  # the next pid seen is the restarted actor's, not another death
            self.actor_restarts[index] += 1
        log.warning("render actor %d died or is restarting (%s); its calls are sent again when it is back",
                    index, type(error).__name__)

    def _actor_answered(self, index: int, pid: int | None = None) -> None:
        """Actor `index` answered (with its pid, where the answer has one): it is up. A pid other than the
        last seen one means it died and restarted while no call noticed: counted now."""
        with self._state:
            self._down[index] = False
            if pid is None:
                return
            if self._pids[index] is not None and self._pids[index] != pid:
                self.actor_restarts[index] += 1
                log.warning("render actor %d restarted (pid %d, was %d)", index, pid, self._pids[index])
            self._pids[index] = pid

    # ---- questions --------------------------------------------------------------------------------------
    def info(self) -> list[ActorInfo]:
        answers: list[ActorInfo] = [self.ask(index, "info") for index in range(len(self.actors))]
        for index, answer in enumerate(answers):
            self._actor_answered(index, answer["pid"])
        return answers

    def stats(self, timeout: float = 2.0) -> list[ActorStats | None]:
        """Each actor's figures (RenderActor.stats); None for one that does not answer in time (restarting)."""
        from echo_os.errors import OutageError

        answers: list[ActorStats | None] = []
        deadline = time.monotonic() + timeout
        for index in range(len(self.actors)):
            try:
                answer: ActorStats = self.ask(index, "stats", wait=False, timeout=max(0.01, deadline - time.monotonic()))
            except OutageError:
                answers.append(None)
                continue
            self._actor_answered(index, answer["pid"])
            answers.append(answer)
        return answers

    def choose(self, request: "RenderRequest", index: int = 0) -> tuple[str, str]:
        """The engine `auto` picks for `request` on actor `index`'s hardware (the one place both Ray hosts
        decide it), with the reason; an unknown model or missing weights raise there as here."""
        choice: tuple[str, str] = self.ask(index, "choose", request)
        return choice

    def engine(self, request: "RenderRequest", index: int = 0, *, engine_cancel: bool = True) -> "RayEngine":
        """A RayEngine for `request`, chosen by actor `index` (see RayEngine for engine_cancel)."""
        return RayEngine(self, index, *self.choose(request, index), engine_cancel=engine_cancel)

    # ---- pipeline calls ---------------------------------------------------------------------------------
    def _poll_progress(self, index: int, call_id: str, sent: list[Step], progress: "ProgressCallback") -> None:
        """Pass on the steps of the call that `sent` (those passed on so far) lacks."""
        from echo_os.errors import OutageError

        try:
            steps = self.ask(index, "progress", call_id, len(sent), wait=False, timeout=PROGRESS_POLL_S * 5)
        except OutageError:  # slow or restarting: no progress this round (the render call sees a death)
            return
        _pass_on(steps, sent, progress)

    def render_on(self, index: int, name: str, reason: str, requests: list["RenderRequest"], *,
                  progress: "ProgressCallback | None" = None, cancel: "threading.Event | None" = None,
                  vae_tiling: bool = False, engine_cancel: bool = True) -> list["RenderResult"]:
        """One pipeline call on actor `index`, its steps passed to `progress` while it runs. A set `cancel`
        is sent on to the actor (the call stops at its next step: CancelledError); so is an interrupt of
        this thread (Ctrl-C), which is raised once the actor has stopped the call or CANCEL_WAIT_S passed.
        An actor that dies mid-call is restarted by Ray and the call sent again; one gone for good is an
        OutageError."""
        from echo_os.errors import CancelledError

        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:
            call_id = uuid.uuid4().hex
            ref = self.tell(index, "render", name, reason, requests, call_id, vae_tiling, engine_cancel)
            sent: list[Step] = []  # the call's steps passed to `progress`
            cancelled_at: float | None = None
            try:
                while True:
                    ready, _ = self.ray.wait([ref], num_returns=1, timeout=PROGRESS_POLL_S)
                    if ready:
                        answer: tuple[list[RenderResult], list[Step]] = self._get(ready[0])
                        results, steps = answer
                        self._actor_answered(index)
                        if progress is not None:
                            _pass_on(steps[len(sent):], sent, progress)
                        return results
                    if cancel is not None and cancel.is_set():
                        if cancelled_at is None:
                            self.tell(index, "cancel", call_id)
                            cancelled_at = time.monotonic()
                        elif time.monotonic() - cancelled_at > CANCEL_WAIT_S:
                            raise CancelledError("cancelled; the actor did not stop its call in time")
                    if progress is not None:
                        self._poll_progress(index, call_id, sent, progress)
            except machinery_errors() as error:
                self._actor_failed(index, error)
                if cancel is not None and cancel.is_set():
                    raise CancelledError("cancelled while its actor restarted") from None
                self._wait_restart(index, deadline, error)
            except KeyboardInterrupt:
                self._stop_call(index, call_id, ref)
                raise

    def _stop_call(self, index: int, call_id: str, ref: Any) -> None:
        """Ctrl-C on the thread waiting for a call: the actor stops it at its next step (it outlives this
        process on a cluster); wait for that, at most CANCEL_WAIT_S (a second Ctrl-C ends the wait)."""
        try:
            self.tell(index, "cancel", call_id)
            self.ray.wait([ref], num_returns=1, timeout=CANCEL_WAIT_S)
        except KeyboardInterrupt:
            pass

    def render_any(self, name: str, reason: str, requests: list["RenderRequest"], *, prefer: int = 0,
                   progress: "ProgressCallback | None" = None, cancel: "threading.Event | None" = None,
                   vae_tiling: bool = False, engine_cancel: bool = True) -> list["RenderResult"]:
        """One pipeline call on an idle actor (the calls of one run, and of every job worker of `serve
        --ray`, share the actors): actor `prefer` if it is idle, else the first idle one; while none is,
        the call waits (a cancel ends the wait with CancelledError). Then render_on."""
        index = self._lease(prefer, cancel)
        try:
            return self.render_on(index, name, reason, requests, progress=progress, cancel=cancel,
                                  vae_tiling=vae_tiling, engine_cancel=engine_cancel)
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

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self.started_ray:
            self.ray.shutdown()


def _pass_on(steps: list[Step], sent: list[Step], progress: "ProgressCallback") -> None:
    from echo_os.render.results import ProgressEvent

    for step in steps:
        sent.append(step)
        progress(ProgressEvent(step=step.step, total_steps=step.total_steps, images=step.images, preview=step.preview))


class RayEngine(BaseEngine):
    """An engine whose pipeline calls run on a RayPool's actors. Name, reason, capabilities and options
    are those of the engine the actor chose (RayPool.engine); the renderer's `vae_tiling` is sent with
    every call. `concurrent_calls` (one per actor) tells the renderer to start that many calls at once;
    each goes to an idle actor, actor `index` first. free_memory and runs_on_cpu are asked of actor
    `index`, through the pool's restart-aware path.

    engine_cancel: whether the actor hands a call's cancel flag to its engine. True for `serve --ray`,
    whose local twin (the API worker) hands its engine one; False for `batch --ray`, whose local twin
    hands none (see RenderActor.render: the calls still stop at their next step)."""

    def __init__(self, pool: RayPool, index: int, name: str, reason: str, *, engine_cancel: bool = True):
        from echo_os.engines import get_engine

        super().__init__(pool.settings, reason)
        plugin = get_engine(name)
        self.pool = pool
        self.index = index
        self.name = name  # the chosen engine's, per instance
        self.capabilities = plugin.capabilities  # type: ignore[misc]
        self.Options = plugin.Options  # type: ignore[misc]
        self.engine_cancel = engine_cancel
        self.concurrent_calls = len(pool.actors)

    def render(self, requests: list["RenderRequest"], *, progress: "ProgressCallback | None" = None,
               cancel: threading.Event | None = None, vae_tiling: bool = False) -> list["RenderResult"]:
        """One pipeline call on an idle actor; vae_tiling: for this call (the renderer's OOM back-off)."""
        return self.pool.render_any(self.name, self.reason, requests, prefer=self.index, progress=progress,
                                    cancel=cancel, vae_tiling=vae_tiling, engine_cancel=self.engine_cancel)

    def free_memory(self, request: "RenderRequest") -> "MemoryInfo | None":
        memory: MemoryInfo | None = self.pool.ask(self.index, "free_memory", self.name, self.reason, request)
        return memory

    def runs_on_cpu(self, request: "RenderRequest") -> bool:
        on_cpu: bool = self.pool.ask(self.index, "runs_on_cpu", self.name, self.reason, request)
        return on_cpu

    def release(self, request: "RenderRequest") -> None:
        """The actor keeps its models in its own model cache (echo_os/render/cache.py)."""


def ray_engine_factory(pool: RayPool, index: int) -> Callable[["RenderRequest"], RayEngine]:
    """The engines of a job worker whose home is actor `index` (serve --ray): one RayEngine per engine the
    actor chooses, shared by every coalesce key, so that the renderer puts all the calls of a job (a
    compare's cells, each its own batch group) through one engine and so runs them concurrently."""
    engines: dict[tuple[str, str], RayEngine] = {}
    lock = threading.Lock()

    def make(request: "RenderRequest") -> RayEngine:
        name, reason = pool.choose(request, index)
        with lock:
            if (name, reason) not in engines:
                engines[name, reason] = RayEngine(pool, index, name, reason)
            return engines[name, reason]

    return make
