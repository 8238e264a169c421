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
A batch job (/api/batch) ends like `echo-os batch`: story.json, the contact sheet and the continuity
report are written by the same code (story.render.write_story_outputs). A compare job (/api/compare) is
rendered with the renderer's resume rule, as `echo-os compare` is: cells already in the project are taken
(recorded, announced as `resumed`), not rendered; then its grid sheet (echo_os.iterate.compare.save_grid) is
recorded as its last artifact. An animatic job (/api/animatic) is
claimed alone and encoded by the code `echo-os animatic` runs (motion.animatic.make_animatic); its
progress is frames encoded, and a cancel is looked at before every frame.
In a worker process (`echo-os serve --workers N`, echo_os.api.processes) the same Worker runs with a
`worker_id` and a lease: claims name it, a heartbeat there renews the lease, and before each pipeline
call the jobs another worker took back (a lost lease) are dropped. `stats` are this worker's figures
for GET /api/workers.
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
from pathlib import Path
from typing import TYPE_CHECKING

from echo_os.api.events import (
    ArtifactSaved,
    JobCancelled,
    JobFailed,
    JobProgressed,
    JobQueued,
    JobStarted,
    JobSucceeded,
    image_url,
)
from echo_os.api.jobs import MAX_INTERRUPTIONS, Job, JobStore, coalesce_key, now_iso
from echo_os.errors import CancelledError, EchoError, OutageError, disk_full
from echo_os.render.requests import RenderRequest, image_request_key
from echo_os.render.scheduler import CallControl, ImageDone, Piece, RenderHooks, RenderOutcome, render_requests

if TYPE_CHECKING:
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.engines.base import Engine, ProgressEvent, RenderResult
    from echo_os.render.scheduler import EngineChoice
    from echo_os.settings import Settings

log = logging.getLogger(__name__)

EngineFactory = Callable[[RenderRequest], "Engine"]
Publish = Callable[[object], None]


def default_engine_factory(settings: "Settings") -> EngineFactory:
    """The CLI's choice: `auto` picks sdxl on CUDA, else cpu, else draft (echo_os.engines)."""
    from echo_os.engines import choose_engine, create_engine

    def make(request: RenderRequest) -> "Engine":
        name, reason = choose_engine(settings, request)
        return create_engine(settings, name, reason)

    return make


@dataclass
class JobRun:
    """A claimed job while the worker holds it."""

    job: Job
    saved: dict[int, str]
    timings: dict[str, float] = field(default_factory=lambda: {"load_s": 0.0, "denoise_s": 0.0,
                                                                "decode_s": 0.0, "save_s": 0.0})
    done: bool = False
    engines: list["EngineChoice"] = field(default_factory=list)
    batch_sizes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    step: tuple[int, int] = (0, 0)  # (step, total_steps) its latest pipeline call reached

    @property
    def artifact_ids(self) -> list[str]:
        return [self.saved[index] for index in sorted(self.saved)]

    @property
    def grid_id(self) -> str | None:
        index = self.job.spec.grid_index
        return self.saved.get(index) if index is not None else None


@dataclass
class WorkerStats:
    """What GET /api/workers shows of a worker: the model of its latest engine, jobs finished, images
    saved, when its first job started, the latest error, and what it is doing."""

    model: str | None = None
    jobs_done: int = 0
    images_done: int = 0
    first_job: str | None = None
    last_error: str | None = None
    state: str = "idle"


class Interrupted(Exception):
    """The pipeline call stopped on its cancel flag (a cancelled job, or the server stopping)."""


class _JobHooks(RenderHooks):
    """The renderer's hooks for claimed jobs: a cancel flag per pipeline call that the jobs in it can set,
    progress and saved images as job events, and each image recorded right after it is saved."""

    def __init__(self, worker: "Worker", runs: dict[str, JobRun], places: list[tuple[JobRun, int]]):
        super().__init__()
        self.worker = worker
        self.runs = runs
        self.places = places

    def _job_ids(self, pieces: list[Piece]) -> set[str]:
        return {self.places[piece.source][0].job.id for piece in pieces}

    def before_call(self, pieces: list[Piece]) -> list[Piece]:
        worker = self.worker
        worker._drop_lost(self.runs, self._job_ids(pieces))
        worker._cancel_jobs(self.runs, worker._cancelled(self._job_ids(pieces)))
        pieces = [piece for piece in pieces if not self.places[piece.source][0].done]
        if pieces and worker._stop.is_set():
            raise Interrupted()
        return pieces

    @contextmanager
    def call(self, pieces: list[Piece]) -> Iterator[CallControl]:
        worker = self.worker
        job_ids = self._job_ids(pieces)
        call_cancel = threading.Event()
        with worker._lock:
            worker._calls[id(call_cancel)] = (job_ids, call_cancel)
            if job_ids & worker._cancel_asked or worker._stop.is_set():
                call_cancel.set()

        def on_step(event: "ProgressEvent") -> None:
            for job_id in job_ids:
                run = self.runs[job_id]
                run.step = (event.step, event.total_steps)
                worker.publish(JobProgressed(job_id=job_id, step=event.step, total_steps=event.total_steps,
                                             images_done=len(run.saved), images_total=run.job.images_total))

        try:
            yield CallControl(progress=on_step, cancel=call_cancel)
        except CancelledError:
            worker._cancel_jobs(self.runs, worker._cancelled(job_ids))
            raise Interrupted() from None
        finally:
            with worker._lock:
                worker._calls.pop(id(call_cancel), None)

    def after_call(self, pieces: list[Piece], results: list["RenderResult"]) -> list[bool]:
        # A cancel that came with the last step: that job's images are not saved.
        self.worker._cancel_jobs(self.runs, self.worker._cancelled(self._job_ids(pieces)))
        return [not self.places[piece.source][0].done for piece in pieces]

    def result(self, piece: Piece, result: "RenderResult") -> None:
        run = self.places[piece.source][0]
        for name in ("load_s", "denoise_s", "decode_s"):
            run.timings[name] += getattr(result.timings, name)

    def image(self, done: ImageDone) -> None:
        run, offset = self.places[done.source]
        index = offset + done.index
        self.worker.jobs.record_image(run.job.id, index, done.artifact.id)
        run.timings["save_s"] += done.save_s
        run.saved[index] = done.artifact.id
        if not done.resumed:
            self.worker.stats.images_done += 1
        self.worker.publish(ArtifactSaved(job_id=run.job.id, artifact_id=done.artifact.id, index=index,
                                          image_url=image_url(done.artifact.id), resumed=done.resumed))


def _merge_outcome(into: RenderOutcome, part: RenderOutcome) -> None:
    """Add one render_requests outcome to the job's (a compare renders model by model)."""
    into.artifacts += part.artifacts
    into.resumed += part.resumed
    into.notes += part.notes
    for choice in part.engines:
        if all(choice.name != known.name for known in into.engines):
            into.engines.append(choice)
    for name, size in part.batch_sizes.items():
        into.batch_sizes[name] = max(into.batch_sizes.get(name, 0), size)


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
        self._stop_counts = False
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

    def stop(self, timeout: float = 30.0, *, count_attempt: bool = False) -> None:
        """Stop at the next step; jobs in flight go back to the queue, without losing an attempt unless
        `count_attempt` (a worker process whose server was killed)."""
        self._stop_counts = count_attempt
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
            key = coalesce_key(first.spec.items[0])
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
            if job.attempts > 1:
                self._adopt_unrecorded(run)
            self.publish(JobStarted(job_id=job.id, attempt=job.attempts, images_done=len(run.saved),
                                    images_total=job.images_total, artifact_ids=run.artifact_ids))
        try:
            self._render(runs)
        except Interrupted:
            for run in runs.values():
                if not run.done:
                    self._requeue(run.job, "interrupted: the server is stopping" if self._stop.is_set()
                                  else "a job rendering in the same batch was cancelled; running again",
                                  count_attempt=self._stop.is_set() and self._stop_counts)
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

    def _engine(self, request: RenderRequest) -> "Engine":
        # One engine object per coalesce key for the life of the server: engines are light, their pipelines
        # live in the model cache (echo_os/render/cache.py), which drops the least recently used over its
        # memory budget. `auto` is decided once, so weights added later are used after a restart.
        key = coalesce_key(request)
        if key not in self._engines:
            self._engines[key] = self.make_engine(request)
        self.stats.model = request.model
        return self._engines[key]

    def _render(self, runs: dict[str, JobRun]) -> None:
        """Every job item is one request to the renderer; images a job has recorded are skipped."""
        animatics = [run for run in runs.values() if run.job.spec.animatic is not None]
        if animatics:  # claimed alone: only render jobs are claimed together
            for run in animatics:
                self._encode_animatic(run, runs)
            return
        loops = [run for run in runs.values() if run.job.spec.evolve is not None]
        if loops:  # claimed alone, like animatics
            for run in loops:
                self._run_evolve(run, runs)
            return
        requests: list[RenderRequest] = []
        places: list[tuple[JobRun, int]] = []  # per request: its job and the job's number of its first image
        for run in runs.values():
            offset = 0
            for item in run.job.spec.items:
                requests.append(item)
                places.append((run, offset))
                offset += item.count
        hooks = _JobHooks(self, runs, places)
        # Every job resumes as the CLI does (the renderer's resume rule: an image whose one-image request key
        # is already in its project, folder on disk, is taken as the job's image, not rendered again), unless
        # it asked for `again`. Render jobs claimed together share the call: one that asked for `again`
        # renders the whole call anew.
        resume = not any(run.job.spec.again for run in runs.values())
        # A compare over several models renders model by model and releases each model's weights before the
        # next loads, as `echo-os compare` does (echo_os.iterate.compare.render_compare): one model in memory.
        compare = all(run.job.spec.compare is not None for run in runs.values())
        models: list[str | None] = list(dict.fromkeys(r.model for r in requests)) if compare else [None]
        outcome = RenderOutcome()
        for model in models:
            def skip(source: int, index: int, model: str | None = model) -> bool:
                if model is not None and requests[source].model != model:
                    return True
                return places[source][1] + index in places[source][0].saved

            # The same per-call size a story batch gets (free GPU memory on CUDA, 1 for CPU diffusion above
            # 64x64), capped by --max-batch.
            part = render_requests(self.settings, requests, store=self.store, max_batch=self.max_batch, skip=skip,
                                   engine_for=self._engine, hooks=hooks, resume=resume)
            _merge_outcome(outcome, part)
            if len(models) > 1 and part.artifacts:
                first = next(request for request in requests if request.model == model)
                self._engine(first).release(first)
        for run in runs.values():
            run.engines, run.batch_sizes, run.notes = outcome.engines, outcome.batch_sizes, outcome.notes

    # -- animatics ---------------------------------------------------------------------------------------
    def _encode_animatic(self, run: JobRun, runs: dict[str, JobRun]) -> None:
        """An /api/animatic job: echo_os.motion.animatic.make_animatic with the job's options. Frames
        encoded are its progress; a cancel (or the server stopping) is looked at before every frame and
        leaves nothing written; the video artifact is recorded as the job's image 0."""
        from echo_os.motion.animatic import AnimaticOptions, make_animatic

        job = run.job
        spec = job.spec.animatic
        if 0 in run.saved:  # encoded and recorded by an attempt that was stopped before it finished
            return
        options = AnimaticOptions(fps=spec.fps, size=spec.size, fade=spec.fade, captions=spec.captions,
                                  clips=spec.clips)
        cancel = threading.Event()
        with self._lock:
            self._calls[id(cancel)] = ({job.id}, cancel)
            if job.id in self._cancel_asked or self._stop.is_set():
                cancel.set()
        every = max(1, spec.frames // 100)  # about 100 progress events, however long the video

        def on_frame(stage: str, done: int, total: int) -> None:
            # A cancel that reached the store but not this worker (asked through another process). One
            # indexed read per frame: tens of microseconds against ~100 ms to draw and encode a 1024x576
            # frame here (benchmarks/RESULTS.md, animatic encode speed).
            if not cancel.is_set() and self.jobs.cancel_requested([job.id]):
                cancel.set()
            if done % every == 0 or done == total:
                self.publish(JobProgressed(job_id=job.id, step=0, total_steps=0, images_done=0, images_total=1,
                                           frames_done=done, frames_total=total))

        try:
            result = make_animatic(self.settings, spec.project, options, store=self.store, progress=on_frame,
                                   cancel=cancel)
        except CancelledError:
            cancelled = self._cancelled({job.id})
            if cancelled:
                self._cancel_jobs(runs, cancelled)
                return
            raise Interrupted() from None
        finally:
            with self._lock:
                self._calls.pop(id(cancel), None)
        run.timings["encode_s"] = result.encode_s
        self.jobs.record_image(job.id, 0, result.artifact.id)
        run.saved[0] = result.artifact.id
        self.publish(ArtifactSaved(job_id=job.id, artifact_id=result.artifact.id, index=0,
                                   image_url=image_url(result.artifact.id)))

    # -- evolve loops ------------------------------------------------------------------------------------
    def _run_evolve(self, run: JobRun, runs: dict[str, JobRun]) -> None:
        """An /api/evolve job: echo_os.reflect.evolve.evolve with the job's options. Candidate i of round
        r is the job's image (r - 1) x per_round + i - 1, recorded as each round ends; images rendered are
        its progress. Run again after a crash, the loop goes on from its record (artifacts/evolve/RUN.json)
        and finds the images already on disk."""
        from echo_os.reflect.evolve import EvolveOptions, evolve, find_scorer
        from echo_os.resonance.story import Objective

        job = run.job
        spec = job.spec.evolve
        options = EvolveOptions(rounds=spec.rounds, per_round=spec.per_round, objective=Objective(dict(spec.objective)),
                                scorer=spec.scorer, min_gain=spec.min_gain, strengths=spec.strengths, seed=spec.seed)
        cancel = threading.Event()
        with self._lock:
            self._calls[id(cancel)] = ({job.id}, cancel)
            if job.id in self._cancel_asked or self._stop.is_set():
                cancel.set()

        def record(done_round) -> None:
            for index, candidate in enumerate(done_round.candidates):
                image = (done_round.round - 1) * spec.per_round + index
                if image not in run.saved:
                    self.jobs.record_image(job.id, image, candidate.id)
                    run.saved[image] = candidate.id
                    self.publish(ArtifactSaved(job_id=job.id, artifact_id=candidate.id, index=image,
                                               image_url=image_url(candidate.id)))

        def on_image(stage: str, done: int, total: int) -> None:
            if not cancel.is_set() and self.jobs.cancel_requested([job.id]):
                cancel.set()
            self.publish(JobProgressed(job_id=job.id, step=0, total_steps=0, images_done=len(run.saved) + done,
                                       images_total=job.images_total))

        try:
            result = evolve(self.settings, self.store, spec.start, options,
                            scorer=find_scorer(self.settings, spec.scorer), progress=on_image, cancel=cancel,
                            on_round=record)
        except CancelledError:
            cancelled = self._cancelled({job.id})
            if cancelled:
                self._cancel_jobs(runs, cancelled)
                return
            raise Interrupted() from None
        finally:
            with self._lock:
                self._calls.pop(id(cancel), None)
        for done_round in result.rounds:  # rounds an earlier attempt finished before it was stopped
            record(done_round)

    # -- cancelling -------------------------------------------------------------------------------------
    def _drop_lost(self, runs: dict[str, JobRun], job_ids: set[str]) -> None:
        """Jobs whose lease ran out were taken back (and perhaps claimed by another worker): stop here."""
        if self.worker_id is None:
            return
        for job_id in job_ids - self.jobs.held_by(job_ids, self.worker_id):
            run = runs[job_id]
            if not run.done:
                run.done = True
                self._leaving(job_id)
                log.warning("job %s: lease lost (taken back while this worker was busy); leaving it", job_id)

    def _cancelled(self, job_ids: set[str]) -> set[str]:
        with self._lock:
            asked = job_ids & self._cancel_asked
        return asked | self.jobs.cancel_requested(job_ids - asked)

    def _cancel_jobs(self, runs: dict[str, JobRun], job_ids: set[str]) -> None:
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
        if run.job.spec.story is not None:
            try:
                self._write_story(run)
            except Exception:  # the images are saved; the job is not failed for its report
                log.exception("job %s: could not write the story outputs", run.job.id)
        if run.job.spec.compare is not None:
            try:
                self._write_compare_grid(run)
            except Exception:  # the cells are saved; the job is not failed for its sheet
                log.exception("job %s: could not write the compare grid", run.job.id)
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

    def _write_compare_grid(self, run: JobRun) -> None:
        """The labelled grid sheet of a /api/compare job, as `echo-os compare` writes it (the same sheet
        is found, not written again), recorded as the job's image after its cells."""
        from echo_os.iterate.compare import Axis, Cell, ComparePlan, save_grid

        source = run.job.spec.compare
        index = run.job.spec.grid_index
        axes = [Axis(axis.option, tuple(axis.values)) for axis in source.axes]
        plan = ComparePlan(axes, [Cell(tuple(values), request)
                                  for values, request in zip(source.cells, run.job.spec.items)])
        artifacts = [self.store.open(run.saved[cell]) for cell in range(index)]
        grid, written = save_grid(self.settings, self.store, plan, artifacts, title=source.title)
        self.jobs.record_image(run.job.id, index, grid.id)
        run.saved[index] = grid.id
        self.publish(ArtifactSaved(job_id=run.job.id, artifact_id=grid.id, index=index, image_url=image_url(grid.id),
                                   resumed=not written, grid=True))
        log.info("job %s: compare grid %s%s", run.job.id, grid.id, "" if written else " (already there)")

    def _write_story(self, run: JobRun) -> None:
        """story.json, contact sheet and continuity report, as `echo-os batch` writes them."""
        from echo_os.artifacts.store import Artifact
        from echo_os.resonance.story import ResonanceOptions, load_thresholds
        from echo_os.story.render import plan_from_source, write_story_outputs

        story = run.job.spec.story
        plan = plan_from_source(story.project, Path(story.source), kind=story.kind,
                                bible=Path(story.bible) if story.bible else None, options=story.options)
        artifacts = [Artifact.from_row(self.store.root, self.store.catalog.resolve_id(artifact_id))
                     for artifact_id in run.artifact_ids]
        started = datetime.fromisoformat(run.job.started) if run.job.started else datetime.fromisoformat(run.job.created)
        elapsed = (datetime.now(started.tzinfo) - started).total_seconds()
        write_story_outputs(self.settings, plan, store=self.store, artifacts=artifacts, resumed_ids=set(),
                            engines=run.engines, batch_sizes=run.batch_sizes, notes=run.notes, elapsed_s=elapsed,
                            requested_batch_size=None, ip_adapter=story.ip_adapter,
                            uses_ip_adapter=any(item.ip_adapter for item in run.job.spec.items), clip=None,
                            resonance=ResonanceOptions(thresholds=load_thresholds(self.settings, story.project)))

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
        for item in run.job.spec.items:
            try:
                name = self._engine(item).name
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
