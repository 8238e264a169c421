"""Render workers on Ray: `echo-os serve --ray [ADDRESS]`. The HTTP process keeps the durable queue
(jobs.db) and is the one writer of artifacts and the catalog; the pipeline calls run on Ray actors
(echo_os.render.ray.RenderActor: engines kept warm, least recently used model dropped, restarted by Ray).

The design is the in-process worker (`--workers 0`) N times over: one job Worker thread per actor, each
rendering through the one renderer (scheduler.render_requests) with a RayEngine (echo_os.render.ray), an
engine whose `render` sends a pipeline call to an idle actor and returns the actor's RenderResults. So claiming, dynamic
batching, exactly-once recording, SSE progress, cancel, the OOM back-off, story outputs and the catalog
are the in-process worker's code, unchanged; only the denoising happens elsewhere.

- One job spreads over the actors: the RayEngine has `concurrent_calls` = the number of actors, so the
  renderer starts that many of a job's pipeline calls at once (the scenes of an /api/batch story, the
  cells of a compare, the images of a CPU render with count > 1), each on an idle actor (the Worker's own
  actor first: RayPool.render_any), and saves their images in call order as the oldest call returns. Jobs
  of several Workers share the actors the same way: a call waits for an idle actor.
- Progress: while a call runs, the head asks the actor for its latest step every PROGRESS_POLL_S (the
  actor is threaded, so `progress()` is answered during `render()`), and the Worker publishes it as a job
  progress event, as with a local engine, with the live preview the actor's engine made of that step (if
  any): the studio's previews work under `--ray` too. While several calls of a job run, each reports its
  own steps.
- Cancel: the Worker's cancel flag for each call is sent on as the actor's `cancel(call_id)` (a cancelled
  job sets the flags of all its running calls); the actors' engines stop at their next step and raise
  CancelledError, which reaches the Worker as from a local engine.
- Restarts: every call to an actor (the engine's choice, free memory, the render call, progress, cancel,
  stats) goes through RayPool's restart-aware path: an actor that dies is restarted by Ray and the call
  waits and is sent again; nothing is saved until a call returns, and only here, so no image is saved
  twice. An actor gone for good is an OutageError, which sends the job back to the queue (with a
  back-off) without spending an attempt. GET /api/workers counts each actor's restarts.
- `auto` is decided on the actor (its GPU, not the head's): RayPool.choose, as for `batch --ray`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from echo_os.api.hosts import worker_view
from echo_os.api.jobs import WorkerRow, now_iso
from echo_os.api.worker import EngineFactory, Worker

if TYPE_CHECKING:
    from echo_os.api.jobs import JobStore
    from echo_os.api.options import ApiOptions
    from echo_os.api.schemas import WorkerView
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.render.ray import RayPool
    from echo_os.render.ray_actor import ActorStats
    from echo_os.settings import Settings

log = logging.getLogger(__name__)


class RayWorkers:
    """The render workers of `serve --ray`: a RayPool and one job Worker thread per actor. Same control
    surface as Worker and WorkerPool: start, stop, wake, cancel, alive; `views()` for GET /api/workers."""

    def __init__(self, settings: "Settings", jobs: "JobStore", publish: Callable[[Any], None],
                 options: "ApiOptions"):
        self.settings = settings
        self.jobs = jobs
        self.publish = publish
        self.options = options
        self.pool: "RayPool | None" = None
        self.workers: list[Worker] = []
        self._stores: list["ArtifactStore"] = []

    def start(self) -> None:
        """Start (or join) Ray, make the actors, start one Worker per actor."""
        from echo_os.render.ray import RayOptions, RayPool

        self.pool = RayPool(self.settings, RayOptions(address=self.options.ray_address, actors=self.options.ray_actors))
        try:
            self._start_workers()
        except BaseException:
            self.stop()
            raise

    def _start_workers(self) -> None:
        from echo_os.artifacts.store import ArtifactStore
        from echo_os.render.ray import ray_engine_factory
        from echo_os.resonance.listener import attach_scorer

        pool = self.pool
        if pool is None:
            raise RuntimeError("start() makes the pool first")
        for index in range(len(pool.actors)):
            store = ArtifactStore(self.settings)  # its own catalog connection; saves are safe across threads
            attach_scorer(store)
            self._stores.append(store)
            # a RayEngine is an engine by its methods (the render core's protocol), not by its class
            make_engine = cast(EngineFactory, ray_engine_factory(pool, index))
            self.workers.append(Worker(self.jobs, store, self.publish, make_engine=make_engine,
                                       max_batch=self.options.max_batch, batch_window_ms=self.options.batch_window_ms))
        for worker in self.workers:
            worker.start()
        log.warning("ray: %d render actors (%s)", len(self.workers),
                    ", ".join(stats["device"] if stats else "starting" for stats in pool.stats(timeout=30)))

    def stop(self, timeout: float = 30.0) -> None:
        """Workers stop at the next step (the actors' calls are cancelled) and put their jobs back; then the
        actors are killed, and the local Ray instance stopped if this server started it."""
        stopping = [threading.Thread(target=worker.stop, args=(timeout,), name="echo-os-ray-stop")
                    for worker in self.workers]  # all at once: each waits for its actor's call to stop
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
        for store in self._stores:
            store.close()
        if self.pool is not None:
            self.pool.close()

    def wake(self) -> None:
        for worker in self.workers:
            worker.wake()

    def cancel(self, job_id: str) -> None:
        for worker in self.workers:
            worker.cancel(job_id)

    @property
    def alive(self) -> bool:
        return any(worker.alive for worker in self.workers)

    def views(self, stall_after_s: float) -> list[WorkerView]:
        """The actors (echo_os.api.hosts.WorkerHost): their rows, each judged by its Worker thread's progress
        clock, with the actors' own figures."""
        views = []
        for (row, stats), worker in zip(self.rows(), self.workers):
            stall = worker.stats.clock.judge(stall_after_s, busy=row.state == "rendering")
            views.append(worker_view(row, stall, heartbeat=now_iso(), calls_done=stats["calls_done"] if stats else None,
                                     models=stats["models"] if stats else None))
        return views

    def rows(self) -> list[tuple[WorkerRow, ActorStats | None]]:
        """Per actor: its row as GET /api/workers shows it (jobs and images saved by the Worker whose home it
        is, whichever actors rendered them; the actor's device and pid) and the actor's own figures (calls
        rendered, models; None while it does not answer: restarting)."""
        if self.pool is None:
            return []
        answers = self.pool.stats()
        rows = []
        for index, (worker, stats) in enumerate(zip(self.workers, answers)):
            state = worker.stats.state if worker.alive else "stopped"
            if stats is None and state != "stopped":
                state = "restarting"
            device = f"ray {stats['device']} on {stats['node']}" if stats else "ray actor"
            rows.append((WorkerRow(slot=index, worker=f"ray-actor-{index}", pid=stats["pid"] if stats else None,
                                   device=device, model=worker.stats.model, jobs_done=worker.stats.jobs_done,
                                   images_done=worker.stats.images_done, first_job=worker.stats.first_job,
                                   last_error=worker.stats.last_error or (stats["last_error"] if stats else None),
                                   restarts=self.pool.actor_restarts[index], state=state), stats))
        return rows
