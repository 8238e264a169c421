"""The worker: the job adapter over the one renderer. One thread claims jobs from the store, renders
them with scheduler.render_requests (which batches, backs off on out-of-memory and saves), and turns its
progress and saved images into job events.

Dynamic batching: after claiming the oldest queued job, a render job takes along the queued render jobs
with the same coalesce key (engine, model, size, steps, cfg, scheduler, device, dtype, attention), waiting
up to `batch_window_ms` for more, while their images fit in `max_batch`; the renderer then renders them
in shared pipeline calls, each image with its own seed and saved as its own job's artifact.

Exactly once: every saved image is recorded against (job, image number) right after ArtifactStore.save.
A job that runs again renders only the numbers it has not recorded. A process killed between the save
and the record leaves an artifact nobody recorded; before a job's second attempt the worker adopts such
artifacts (same one-image request, made after the job was created) instead of rendering them again.

Cancel: a threading.Event per pipeline call, passed to the engine, which stops at the next denoising step
and saves nothing. An engine that runs several calls at once (`serve --ray`) has several flags out; a
cancel sets every one whose call has the job. Batch mates of a cancelled job go back to the queue
without losing an attempt.
What the worker runs for each kind of job, and what a job writes once its images are saved (a story's
outputs, a compare's grid sheet), is that kind's handler (echo_os.api.handlers, found by the spec's kind).
In a worker process (`echo-os serve --workers N`, echo_os.api.processes) the same Worker runs with a
`worker_id` and a lease: claims name it, a heartbeat there renews the lease, and before each pipeline
call the jobs another worker took back (a lost lease) are dropped. `stats` are this worker's figures
for GET /api/workers, with a ProgressClock (echo_os.api.stalls) marked at each claim, step, frame and
saved image, so a worker that has made no progress for long is shown as stalled, not merely slow.
Failures: a failed batched call sends its jobs back to be rendered alone (`solo`); a job alone that fails
is retried until `max_attempts`, except for user errors (EchoError: unknown model, bad weights), which
fail at once because they would fail again. An outage of the machinery (OutageError: a Ray actor gone,
a worker process dead) is not the job's error: its jobs go back to the queue without spending an attempt
(up to MAX_INTERRUPTIONS times). A job sent back after a failure or an outage waits a back-off
(jobs.requeue_backoff_s) before it can be claimed again, so the worker that failed does not take it
straight back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from echo_os.api.events import (
    ArtifactSaved,
    JobCancelled,
    JobFailed,
    JobQueued,
    JobStarted,
    JobSucceeded,
    image_url,
)
from echo_os.api.handlers import HANDLERS, Interrupted, JobRun, handler_for
from echo_os.api.hosts import worker_view
from echo_os.api.jobs import MAX_INTERRUPTIONS, Job, JobStore, coalesce_key, now_iso
from echo_os.api.stalls import ProgressClock
from echo_os.errors import EchoError, OutageError, disk_full
from echo_os.render.requests import RenderRequest, image_request_key

if TYPE_CHECKING:
    from echo_os.api.schemas import WorkerView
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.engines.base import Engine
    from echo_os.settings import Settings

log = logging.getLogger(__name__)

EngineFactory = Callable[[RenderRequest], "Engine"]
Publish = Callable[[Any], None]  # a job event (echo_os.api.events)


def default_engine_factory(settings: "Settings") -> EngineFactory:
    """The CLI's choice: `auto` picks sdxl on CUDA, else cpu, else draft (echo_os.engines)."""
    from echo_os.engines import choose_engine, create_engine

    def make(request: RenderRequest) -> "Engine":
        name, reason = choose_engine(settings, request)
        return create_engine(settings, name, reason)

    return make


@dataclass
class WorkerStats:
    """What GET /api/workers shows of a worker: the model of its latest engine, jobs finished, images
    saved, when its first job started, the latest error, what it is doing, and when it last made
    progress (echo_os.api.stalls: slow or stuck)."""

    model: str | None = None
    jobs_done: int = 0
    images_done: int = 0
    first_job: str | None = None
    last_error: str | None = None
    state: str = "idle"
    clock: ProgressClock = field(default_factory=ProgressClock)


class Worker:
    """The one thread that renders. Thread-safe entry points: start, stop, wake, cancel."""

    def __init__(self, jobs: JobStore, store: "ArtifactStore", publish: Publish, *, make_engine: EngineFactory,
                 max_batch: int = 8, batch_window_ms: int = 25, poll_s: float = 1.0,
                 worker_id: str | None = None, lease_s: float | None = None):
        self.settings = store.settings
        self.jobs = jobs
        self.store = store
        self.publish = publish
        self.make_engine = make_engine
        self.max_batch = max(1, max_batch)
        self.batch_window_s = max(0, batch_window_ms) / 1000
        self.poll_s = poll_s
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.stats = WorkerStats()
        self._engines: dict[str, "Engine"] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stop_outage = False
        self._wake = threading.Event()
        self._lock = threading.Lock()  # guards the three fields below
        self._cancel_asked: set[str] = set()
        # the claimed jobs not yet ended: stats.state is "rendering" while any is left
        self._open_jobs: set[str] = set()
        # the pipeline calls running now (several at once with a concurrent engine): their jobs and cancel flag
        self._calls: dict[int, tuple[set[str], threading.Event]] = {}
        self._jobs_lock = threading.RLock()  # a job is finished once when calls on several threads end it
        # Jobs of a turn whose end could not be recorded (jobs.db full): put back in the queue (without
        # counting an attempt: the machinery failed, not the job) before the next claim.
        self._stranded: set[str] = set()
        self._turn_jobs: set[str] = set()

    # -- control (any thread) -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="echo-os-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0, *, outage: bool = False) -> None:
        """Stop at the next step; jobs in flight go back to the queue without losing an attempt; `outage`
        (a worker process whose server was killed): an interruption is counted (jobs.MAX_INTERRUPTIONS)."""
        self._stop_outage = outage
        self._stop.set()
        self._wake.set()
        with self._lock:
            for _, call_cancel in self._calls.values():
                call_cancel.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """A job was queued: look now instead of at the next poll."""
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """Stop `job_id` at the next step if it is rendering (the store already has cancel_requested)."""
        with self._lock:
            self._cancel_asked.add(job_id)
            for job_ids, call_cancel in self._calls.values():
                if job_id in job_ids:
                    call_cancel.set()

    def views(self, stall_after_s: float) -> list[WorkerView]:
        """The in-process thread (echo_os.api.hosts.WorkerHost), from its own figures."""
        import os

        from echo_os.api.jobs import WorkerRow

        stats = self.stats
        state = stats.state if self.alive else "stopped"
        row = WorkerRow(slot=0, worker="thread", pid=os.getpid(), device="in-process", model=stats.model,
                        jobs_done=stats.jobs_done, images_done=stats.images_done, first_job=stats.first_job,
                        last_error=stats.last_error, state=state)
        return [worker_view(row, stats.clock.judge(stall_after_s, busy=state == "rendering"))]

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @contextmanager
    def cancel_flag(self, job_ids: set[str]) -> Iterator[threading.Event]:
        """The cancel flag of one call (a pipeline call, an encode, a loop) for `job_ids`: set by a cancel of
        any of them and by stop; already set when one was asked to cancel or the worker is stopping."""
        flag = threading.Event()
        with self._lock:
            self._calls[id(flag)] = (set(job_ids), flag)
            if job_ids & self._cancel_asked or self._stop.is_set():
                flag.set()
        try:
            yield flag
        finally:
            with self._lock:
                self._calls.pop(id(flag), None)

    def jobs_in_call(self) -> set[str]:
        """The jobs of the pipeline calls running now."""
        with self._lock:
            return set().union(*(job_ids for job_ids, _ in self._calls.values()))

    # -- the loop -------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._turn()
            except Exception as error:
                log.exception("worker: cannot record a job's state; trying again")
                self.stats.last_error = str(disk_full(error) or f"{type(error).__name__}: {error}")
                self.stats.state = "idle"
                self._stranded |= self._turn_jobs
                self._stop.wait(self.poll_s)

    def _turn(self) -> None:
        """Claim and run one group of jobs (or wait for one). What fails while a job's failure is being
        recorded (a full disk under jobs.db) propagates to _run, which waits and goes on."""
        for job_id in sorted(self._stranded):  # a job still 'running' from a turn that failed goes back
            self.jobs.requeue(job_id, error="running again: its end could not be recorded (the disk was full)",
                              count_attempt=False, outage=True)
            self._stranded.discard(job_id)
        self._turn_jobs = set()
        try:
            claimed = self._claim()
        except Exception:
            log.exception("worker: cannot claim jobs; trying again")
            self._stop.wait(self.poll_s)
            return
        if not claimed:
            self._wake.wait(self.poll_s)
            self._wake.clear()
            return
        with self._lock:
            self._open_jobs = {job.id for job in claimed}
            self.stats.state = "rendering"
            self.stats.clock.start()
        self._turn_jobs = {job.id for job in claimed}
        try:
            self._run_claimed(claimed)
        except Exception as error:
            log.exception("worker: unexpected error; its jobs go back to the queue")
            self.stats.last_error = f"{type(error).__name__}: {error}"
            for job in claimed:
                self._requeue(job, "interrupted by an internal error; running again", count_attempt=True,
                              backoff=True)
        finally:
            with self._lock:
                self._open_jobs.clear()
                self.stats.state = "idle"

    def _claim(self) -> list[Job]:
        first = self.jobs.claim_next(self.worker_id, self.lease_s)
        if first is None:
            return []
        self.stats.first_job = self.stats.first_job or now_iso()
        claimed = [first]
        if first.kind == "render" and not first.solo and self.max_batch > 1:
            key = coalesce_key(first.spec.render_items()[0])
            budget = self.max_batch - first.images_total
            more = self.jobs.claim_compatible(key, budget, self.worker_id, self.lease_s)
            budget -= sum(job.images_total for job in more)
            if budget > 0 and self.batch_window_s > 0 and not self._stop.wait(self.batch_window_s):
                more += self.jobs.claim_compatible(key, budget, self.worker_id, self.lease_s)
            claimed += more
        return claimed

    def _run_claimed(self, claimed: list[Job]) -> None:
        runs: dict[str, JobRun] = {}
        for job in claimed:
            saved = {image.index: image.artifact_id for image in self.jobs.saved_images(job.id)}
            run = runs[job.id] = JobRun(job=job, saved=saved)
            if job.attempts + job.interruptions > 1:  # a try before this one may have saved and not recorded
                self._adopt_unrecorded(run)
            self.publish(JobStarted(job_id=job.id, attempt=job.attempts, images_done=len(run.saved),
                                    images_total=job.images_total, artifact_ids=run.artifact_ids))
            if job.interruptions:
                # An outage ended an earlier try: the worker that saved these images may have died between
                # recording one and writing its event (a worker process writes its events every 50 ms), and an
                # adopted one never had an event. Each is announced again, as found rather than rendered.
                for index, artifact_id in sorted(run.saved.items()):
                    self.publish(ArtifactSaved(job_id=job.id, artifact_id=artifact_id, index=index,
                                               image_url=image_url(artifact_id), resumed=True))
        try:
            handler_for(runs).run(self, runs)
        except Interrupted:
            for run in runs.values():
                if not run.done:
                    self._requeue(run.job, "interrupted: the server is stopping" if self._stop.is_set()
                                  else "a job rendering in the same batch was cancelled; running again",
                                  count_attempt=False, outage=self._stop.is_set() and self._stop_outage)
            return
        except OutageError as error:
            self._outage(runs, error)
            return
        except Exception as error:  # noqa: BLE001 - recorded on the job; the worker goes on
            self._failed(runs, error)
            return
        for run in runs.values():
            if not run.done:
                self._finish_succeeded(run)

    def engine(self, request: RenderRequest) -> "Engine":
        # One engine object per coalesce key for the life of the server: engines are light, their pipelines
        # live in the model cache (echo_os/render/cache.py), which drops the least recently used over its
        # memory budget. `auto` is decided once, so weights added later are used after a restart.
        key = coalesce_key(request)
        if key not in self._engines:
            self._engines[key] = self.make_engine(request)
        self.stats.model = request.model
        return self._engines[key]

    # -- cancelling -------------------------------------------------------------------------------------
    def drop_lost(self, runs: dict[str, JobRun], job_ids: set[str]) -> None:
        """Jobs whose lease ran out were taken back (and perhaps claimed by another worker): stop here."""
        if self.worker_id is None:
            return
        for job_id in job_ids - self.jobs.held_by(job_ids, self.worker_id):
            run = runs[job_id]
            if not run.done:
                run.done = True
                self._leaving(job_id)
                log.warning("job %s: lease lost (taken back while this worker was busy); leaving it", job_id)

    def cancelled(self, job_ids: set[str]) -> set[str]:
        with self._lock:
            asked = job_ids & self._cancel_asked
        return asked | self.jobs.cancel_requested(job_ids - asked)

    def cancel_jobs(self, runs: dict[str, JobRun], job_ids: set[str]) -> None:
        for job_id in job_ids:
            run = runs[job_id]
            with self._jobs_lock:  # the threads of a job's concurrent calls may all see its cancel
                if run.done:
                    continue
                run.done = True
            self.stats.jobs_done += 1
            self._leaving(job_id)
            self.jobs.finish(job_id, "cancelled", timings=self._job_timings(run), step=run.step)
            self.publish(JobCancelled(job_id=job_id, artifact_ids=run.artifact_ids))
            self._forget(job_id)

    # -- endings ------------------------------------------------------------------------------------------
    def _job_timings(self, run: JobRun) -> dict[str, float]:
        timings = {name: round(value, 4) for name, value in run.timings.items()}
        created = datetime.fromisoformat(run.job.created)
        started = datetime.fromisoformat(run.job.started) if run.job.started else created
        timings["queued_s"] = round((started - created).total_seconds(), 4)
        timings["run_s"] = round((datetime.fromisoformat(now_iso()) - started).total_seconds(), 4)
        return timings

    def _leaving(self, job_id: str) -> None:
        """`job_id` is about to be recorded as ended (or back in the queue). The worker's own state flips
        first: whoever sees the job ended sees a worker that is idle once its last job has left."""
        with self._lock:
            self._open_jobs.discard(job_id)
            if not self._open_jobs:
                self.stats.state = "idle"

    def _forget(self, job_id: str) -> None:
        with self._lock:
            self._cancel_asked.discard(job_id)

    def _finish_succeeded(self, run: JobRun) -> None:
        try:
            HANDLERS[run.job.spec.kind].finish(self, run)
        except Exception:  # the images are saved; the job is not failed for its report or its grid sheet
            log.exception("job %s: could not write what it writes after its images", run.job.id)
        run.done = True
        self.stats.jobs_done += 1
        self._forget(run.job.id)
        timings = self._job_timings(run)
        self._leaving(run.job.id)
        if self.jobs.finish(run.job.id, "succeeded", timings=timings) is not None:
            self.publish(JobSucceeded(job_id=run.job.id, artifact_ids=run.artifact_ids, timings=timings,
                                      grid_id=run.grid_id))

    def _requeue(self, job: Job, reason: str, *, count_attempt: bool, solo: bool | None = None,
                 outage: bool = False, backoff: bool = False) -> None:
        self._leaving(job.id)
        requeued = self.jobs.requeue(job.id, error=reason, count_attempt=count_attempt, solo=solo, outage=outage,
                                     backoff=backoff)
        if requeued is not None:
            self.publish(JobQueued(job_id=job.id, attempts=requeued.attempts, error=reason))
            self._wake.set()

    def _outage(self, runs: dict[str, JobRun], error: OutageError) -> None:
        """The machinery failed under these jobs (not their own error): back to the queue, no attempt
        spent, after a back-off; failed only after MAX_INTERRUPTIONS outages."""
        message = str(error)
        self.stats.last_error = message
        log.warning("an outage interrupted %d job(s): %s; they go back to the queue", len(runs), message)
        for run in runs.values():
            if run.done:
                continue
            job = run.job
            if job.interruptions + 1 >= MAX_INTERRUPTIONS:
                run.done = True
                self.stats.jobs_done += 1
                self._forget(job.id)
                reason = f"interrupted by an outage {job.interruptions + 1} times; last: {message}"
                self._leaving(job.id)
                if self.jobs.finish(job.id, "failed", error=reason, timings=self._job_timings(run),
                                    step=run.step) is not None:
                    self.publish(JobFailed(job_id=job.id, error=reason, attempts=job.attempts,
                                           artifact_ids=run.artifact_ids))
                continue
            self._requeue(job, f"interrupted by an outage ({message}); running again", count_attempt=False,
                          outage=True, backoff=True)

    def _failed(self, runs: dict[str, JobRun], error: Exception) -> None:
        error = disk_full(error) or error  # a full disk fails the job at once, with one line, not three times
        message = str(error) if isinstance(error, EchoError) else f"{type(error).__name__}: {error}"
        self.stats.last_error = message
        pending = [run for run in runs.values() if not run.done]
        if len(pending) > 1:
            log.warning("batched render of %d jobs failed (%s); rendering each alone", len(pending), message)
            for run in pending:
                self._requeue(run.job, f"the batched render failed ({message}); rendering this job alone",
                              count_attempt=False, solo=True)
            return
        for run in pending:
            job = run.job
            if not isinstance(error, EchoError):
                log.error("job %s attempt %d failed", job.id, job.attempts, exc_info=error)
            if isinstance(error, EchoError) or job.attempts >= self.jobs.max_attempts:
                run.done = True
                self.stats.jobs_done += 1
                self._forget(job.id)
                reason = message if isinstance(error, EchoError) else \
                    f"failed {job.attempts} times; last error: {message}"
                self._leaving(job.id)
                if self.jobs.finish(job.id, "failed", error=reason, timings=self._job_timings(run),
                                   step=run.step) is not None:
                    self.publish(JobFailed(job_id=job.id, error=reason, attempts=job.attempts,
                                           artifact_ids=run.artifact_ids))
            else:
                self._requeue(job, f"attempt {job.attempts} failed: {message}", count_attempt=True, backoff=True)

    # -- crash recovery -------------------------------------------------------------------------------
    def _adopt_unrecorded(self, run: JobRun) -> None:
        """Artifacts this job saved but did not record (killed in between): record them now.

        Found by the renderer's resume lookup (scheduler.find_rendered: the one-image request key, in
        the catalog or in a folder the catalog missed); only an artifact made after the job was created
        and recorded by no job is taken."""
        from echo_os.render.scheduler import find_rendered

        wanted: dict[str, int] = {}
        tagged: list[RenderRequest] = []
        offset = 0
        for item in run.job.spec.render_items():
            try:
                name = self.engine(item).name
            except Exception:  # noqa: BLE001 - the render that follows reports it on the job
                return
            item = item.model_copy(update={"engine": name})  # as the renderer tags what it saves
            tagged.append(item)
            for i, one in enumerate(item.image_requests()):
                if offset + i not in run.saved:
                    wanted[image_request_key(one)] = offset + i
            offset += item.count
        if not wanted:
            return
        created = datetime.fromisoformat(run.job.created)
        found = {wanted[key]: artifact for key, artifact in find_rendered(self.store, tagged).items()
                 if key in wanted and datetime.fromisoformat(artifact.meta.created) >= created}
        taken = self.jobs.recorded_artifact_ids(artifact.id for artifact in found.values())
        for index, artifact in sorted(found.items()):
            if artifact.id in taken:
                continue
            self.jobs.record_image(run.job.id, index, artifact.id)
            run.saved[index] = artifact.id
            log.info("job %s: adopted artifact %s saved before an interruption", run.job.id, artifact.id[:12])
