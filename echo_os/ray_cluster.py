"""Render on a Ray cluster: `echo-os batch ... --ray [ADDRESS]`. Ray does placement, GPU scheduling,
actor restarts and object transfer; this module only says what to render where.

- Actors (`RenderActor`): one per GPU (`num_gpus=1`) on a GPU cluster, a fraction of a CPU each on a
  CPU-only one. Each keeps its engines (and so their pipelines) warm, at most `max_models` of them, the
  least recently used dropped first. An actor renders and returns RenderResults (the images and the
  runtime record); it never touches the workspace's artifacts or catalog.
- The head (this process) plans, groups requests into pipeline calls exactly as the one renderer does
  (echo_os.scheduler: same engine tags, same batch groups, same per-image seeds, batch size from an actor's
  free memory), sends the calls to idle actors, and saves every result itself, in call order, so the
  store and catalog have one writer and a story's scenes are saved in scene order.
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
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from echo_os.errors import UsageError

if TYPE_CHECKING:
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.engines.base import Engine, RenderResult
    from echo_os.requests import RenderRequest
    from echo_os.scheduler import EngineChoice, ImageDone, Piece, RenderOutcome
    from echo_os.settings import Settings

log = logging.getLogger(__name__)

RAY_MISSING = ("--ray needs Ray, which is not installed: pip install 'echo-os[ray]' (or leave out --ray to "
               "render on this machine)")
LOCAL = "local"  # `--ray` without an address: a Ray instance started for this command on this machine
MAX_RESTARTS = 4  # per actor; a call is re-sent after each death
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


class RenderActor:
    """What runs in each Ray actor (made remote by RayPool): engines kept warm, least recently used
    dropped first; render calls in, RenderResults out."""

    def __init__(self, settings: "Settings", max_models: int, threads: int | None):
        if threads is not None:  # Ray set OMP_NUM_THREADS to the actor's whole CPUs (1 for a fraction)
            import torch

            torch.set_num_threads(threads)
        self.settings = settings
        self.max_models = max(1, max_models)
        self._engines: OrderedDict[tuple[str, str], "Engine"] = OrderedDict()

    def info(self) -> dict:
        return {"pid": os.getpid(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                "models": [model for _, model in self._engines]}

    def _engine(self, name: str, reason: str, model: str) -> "Engine":
        from echo_os.engines import create_engine

        key = (name, model)
        if key in self._engines:
            self._engines.move_to_end(key)
            return self._engines[key]
        while len(self._engines) >= self.max_models:
            (_, dropped), _engine = self._engines.popitem(last=False)
            log.info("dropping model %s (least recently used)", dropped)
            del _engine
            from echo_os.scheduler import _release_memory

            _release_memory()
        engine = self._engines[key] = create_engine(self.settings, name, reason)
        return engine

    def batch_limit(self, name: str, reason: str, request: "RenderRequest") -> int:
        """The renderer's automatic batch size, measured where the images are made."""
        from echo_os.scheduler import auto_batch_size

        return auto_batch_size(self._engine(name, reason, request.model), request)

    def render(self, name: str, reason: str, requests: list["RenderRequest"]) -> list["RenderResult"]:
        """One pipeline call; out of GPU memory: the call in two halves (results stay in request order)."""
        from echo_os.scheduler import _release_memory, is_out_of_memory

        engine = self._engine(name, reason, requests[0].model)
        try:
            return engine.render(requests)
        except Exception as error:
            if not is_out_of_memory(error) or len(requests) == 1:
                raise
            _release_memory()
            half = len(requests) // 2
            return self.render(name, reason, requests[:half]) + self.render(name, reason, requests[half:])


class RayPool:
    """The actors, made on start and killed on close."""

    def __init__(self, settings: "Settings", options: RayOptions = RayOptions()):
        self.settings = settings
        self.options = options
        self.ray = start_ray(options.address)
        resources = self.ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        count = options.actors or (gpus if gpus else 2)
        if gpus:
            cpus, num_gpus, threads = options.cpus_per_actor or 1, 1, None
        else:  # a fraction: whole CPUs per actor on a small box leave the driver's work pending
            share = max(0.1, round(resources.get("CPU", 1) / (count + 1), 2))
            cpus, num_gpus = options.cpus_per_actor or share, 0
            threads = max(1, int(resources.get("CPU", 1)) // count)
        remote = self.ray.remote(num_cpus=cpus, num_gpus=num_gpus, max_restarts=MAX_RESTARTS,
                                 max_task_retries=0)(RenderActor)
        self.actors = [remote.remote(settings, options.max_models, threads) for _ in range(count)]
        self.restarts = 0

    def info(self) -> list[dict]:
        return self.ray.get([actor.info.remote() for actor in self.actors])

    def batch_limit(self, name: str, reason: str, request: "RenderRequest") -> int:
        return self.ray.get(self.actors[0].batch_limit.remote(name, reason, request))

    def run(self, name: str, reason: str, calls: list[list["RenderRequest"]]):
        """Yield (call number, results) as calls finish, each call once; a call whose actor died is sent
        again (to the first idle actor: the restarted one or another)."""
        ray = self.ray
        from ray.exceptions import RayActorError

        queue = deque(range(len(calls)))
        idle = list(self.actors)
        running: dict[Any, tuple[int, Any]] = {}
        while queue or running:
            while queue and idle:
                number = queue.popleft()
                actor = idle.pop(0)
                running[actor.render.remote(name, reason, calls[number])] = (number, actor)
            ready, _ = ray.wait(list(running), num_returns=1)
            number, actor = running.pop(ready[0])
            idle.append(actor)
            try:
                results = ray.get(ready[0])
            except RayActorError as error:
                self.restarts += 1
                if self.restarts > MAX_RESTARTS * len(self.actors):
                    raise
                log.warning("a render actor died during call %d (%s); sending the call again", number,
                            type(error).__name__)
                queue.appendleft(number)
                continue
            yield number, results

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []


def render_requests_ray(settings: "Settings", requests: list["RenderRequest"], *, store: "ArtifactStore",
                        pool: RayPool, engine: "Engine", batch_size: int | None = None, resume: bool = True,
                        on_image: Callable[["ImageDone"], None] | None = None,
                        on_engine: Callable[["EngineChoice"], None] | None = None) -> "RenderOutcome":
    """render_requests (echo_os.scheduler) with the pipeline calls on Ray actors and the saving here."""
    from echo_os.requests import image_request_key
    from echo_os.scheduler import (
        EngineChoice, ImageDone, Piece, RenderOutcome, canonical_options, find_rendered, missing_runs, take_batch,
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
        rendered = find_rendered(store, [piece.request for piece in pieces])
        remaining = []
        for piece in pieces:
            keys = [image_request_key(image) for image in piece.request.image_requests()]
            for i, key in enumerate(keys):
                if key in rendered:
                    outcome.resumed.append(rendered[key])
                    if on_image is not None:
                        on_image(ImageDone(rendered[key], resumed=True, source=piece.source, index=i))
            remaining += missing_runs(piece, lambda index, k=keys: k[index] in rendered)
        pieces = remaining
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
    for number, results in pool.run(engine.name, engine.reason, [[p.request for p in call] for call in calls]):
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
