"""The worker: one thread that owns the engine, claims jobs from the store, renders and saves.

Dynamic batching: after claiming the oldest queued job, a render job takes along the queued render jobs
with the same coalesce key (engine, model, size, steps, cfg, scheduler, device, dtype, attention), waiting
up to `batch_window_ms` for more, while their images fit in `max_batch`; one pipeline call then renders
them all, each image with its own seed and saved as its own job's artifact.

Exactly once: every saved image is recorded against (job, image number) right after ArtifactStore.save.
A job that runs again renders only the numbers it has not recorded. A process killed between the save
and the record leaves an artifact nobody recorded; before a job's second attempt the worker adopts such
artifacts (same one-image request, made after the job was created) instead of rendering them again.

Cancel: a threading.Event per pipeline call, passed to the engine, which stops at the next denoising step
and saves nothing. Batch mates of a cancelled job go back to the queue without losing an attempt.
Failures: a failed batched call sends its jobs back to be rendered alone (`solo`); a job alone that fails
is retried until `max_attempts`, except for user errors (EchoError: unknown model, bad weights), which
fail at once because they would fail again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Callable

from echo_os.api.events import (
    ArtifactSaved, JobCancelled, JobFailed, JobProgressed, JobQueued, JobStarted, JobSucceeded, image_url,
)
from echo_os.api.jobs import Job, JobStore, coalesce_key, now_iso
from echo_os.errors import CancelledError, EchoError, disk_full
from echo_os.requests import RenderRequest
from echo_os.scheduler import auto_batch_size, split_request

if TYPE_CHECKING:
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.engines.base import Engine, ProgressEvent, RenderResult
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


@dataclass(frozen=True)
class Piece:
    """Consecutive images of one job item still to render, and their image numbers in the job."""

    job_id: str
    request: RenderRequest
    indices: tuple[int, ...]


def missing_pieces(job: Job, saved: set[int]) -> list[Piece]:
    """The images of `job` not yet saved, as runs of consecutive seeds (image i of an item has seed+i)."""
    pieces: list[Piece] = []
    offset = 0
    for item in job.spec.items:
        start = None
        for i in range(item.count + 1):
            missing = i < item.count and offset + i not in saved
            if missing and start is None:
                start = i
            elif not missing and start is not None:
                pieces.append(Piece(job.id, item.model_copy(update={"seed": item.seeds[start], "count": i - start}),
                                    tuple(range(offset + start, offset + i))))
                start = None
        offset += item.count
    return pieces


def chunk_pieces(pieces: list[Piece], limit: int) -> list[list[Piece]]:
    """Pipeline calls of at most `limit` images: pieces grouped by batch key in order of first
    appearance, big pieces split by seed."""
    groups: dict[str, list[Piece]] = {}
    for piece in pieces:
        parts, done = [], 0
        for part in split_request(piece.request, limit):
            parts.append(Piece(piece.job_id, part, piece.indices[done:done + part.count]))
            done += part.count
        groups.setdefault(coalesce_key(piece.request), []).extend(parts)
    chunks: list[list[Piece]] = []
    for parts in groups.values():
        current: list[Piece] = []
        for part in parts:
            if current and sum(p.request.count for p in current) + part.request.count > limit:
                chunks.append(current)
                current = []
            current.append(part)
        if current:
            chunks.append(current)
    return chunks


@dataclass
class JobRun:
    """A claimed job while the worker holds it."""

    job: Job
    saved: dict[int, str]
    timings: dict[str, float] = field(default_factory=lambda: {"load_s": 0.0, "denoise_s": 0.0,
                                                                "decode_s": 0.0, "save_s": 0.0})
    done: bool = False

    @property
    def artifact_ids(self) -> list[str]:
        return [self.saved[index] for index in sorted(self.saved)]


class Interrupted(Exception):
    """The pipeline call stopped on its cancel flag (a cancelled job, or the server stopping)."""


class Worker:
    """The one thread that renders. Thread-safe entry points: start, stop, wake, cancel."""

    def __init__(self, jobs: JobStore, store: "ArtifactStore", publish: Publish, *, make_engine: EngineFactory,
                 max_batch: int = 8, batch_window_ms: int = 25, poll_s: float = 1.0):
        self.jobs = jobs
        self.store = store
        self.publish = publish
        self.make_engine = make_engine
        self.max_batch = max(1, max_batch)
        self.batch_window_s = max(0, batch_window_ms) / 1000
        self.poll_s = poll_s
        self._engines: dict[str, "Engine"] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()  # guards the three fields below
        self._cancel_asked: set[str] = set()
        self._in_call: set[str] = set()
        self._call_cancel: threading.Event | None = None

    # -- control (any thread) -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="echo-os-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop at the next step; jobs in flight go back to the queue without losing an attempt."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            if self._call_cancel is not None:
                self._call_cancel.set()
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
            if job_id in self._in_call and self._call_cancel is not None:
                self._call_cancel.set()

    # -- the loop -------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                claimed = self._claim()
            except Exception:  # noqa: BLE001 - e.g. the database is locked for longer than its timeout
                log.exception("worker: cannot claim jobs; trying again")
                self._stop.wait(self.poll_s)
                continue
            if not claimed:
                self._wake.wait(self.poll_s)
                self._wake.clear()
                continue
            try:
                self._run_claimed(claimed)
            except Exception:  # noqa: BLE001 - the worker must outlive any one job
                log.exception("worker: unexpected error; its jobs go back to the queue")
                for job in claimed:
                    self._requeue(job, "interrupted by an internal error; running again", count_attempt=True)

    def _claim(self) -> list[Job]:
        first = self.jobs.claim_next()
        if first is None:
            return []
        claimed = [first]
        if first.kind == "render" and not first.solo and self.max_batch > 1:
            key = coalesce_key(first.spec.items[0])
            budget = self.max_batch - first.images_total
            more = self.jobs.claim_compatible(key, budget)
            budget -= sum(job.images_total for job in more)
            if budget > 0 and self.batch_window_s > 0 and not self._stop.wait(self.batch_window_s):
                more += self.jobs.claim_compatible(key, budget)
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
        pieces = [piece for run in runs.values() for piece in missing_pieces(run.job, set(run.saved))]
        try:
            self._render(pieces, runs)
        except Interrupted:
            for run in runs.values():
                if not run.done:
                    self._requeue(run.job, "interrupted: the server is stopping" if self._stop.is_set()
                                  else "a job rendering in the same batch was cancelled; running again",
                                  count_attempt=False)
            return
        except Exception as error:  # noqa: BLE001 - recorded on the job; the worker goes on
            self._failed(runs, error)
            return
        for run in runs.values():
            if not run.done:
                self._finish_succeeded(run)

    def _engine(self, request: RenderRequest) -> "Engine":
        # One engine per coalesce key for the life of the server (pipelines are cached by the engines
        # anyway); `auto` is decided once, so weights added later are used after a restart.
        key = coalesce_key(request)
        if key not in self._engines:
            self._engines[key] = self.make_engine(request)
        return self._engines[key]

    def _render(self, pieces: list[Piece], runs: dict[str, JobRun]) -> None:
        engines: dict[str, "Engine"] = {}
        for piece in pieces:
            engines.setdefault(coalesce_key(piece.request), self._engine(piece.request))
        calls: list[tuple["Engine", list[Piece]]] = []
        for key, engine in engines.items():
            group = [piece for piece in pieces if coalesce_key(piece.request) == key]
            # The same per-call size a story batch gets (free GPU memory on CUDA, 1 for CPU diffusion
            # above 64x64), capped by --max-batch.
            limit = max(1, min(self.max_batch, auto_batch_size(engine, group[0].request)))
            calls += [(engine, chunk) for chunk in chunk_pieces(group, limit)]
        for engine, chunk in calls:
            self._cancel_jobs(runs, self._cancelled({piece.job_id for piece in chunk}))
            chunk = [piece for piece in chunk if not runs[piece.job_id].done]
            if not chunk:
                continue
            if self._stop.is_set():
                raise Interrupted()
            self._render_call(engine, chunk, runs)

    def _render_call(self, engine: "Engine", chunk: list[Piece], runs: dict[str, JobRun]) -> None:
        job_ids = {piece.job_id for piece in chunk}
        call_cancel = threading.Event()
        with self._lock:
            self._in_call = job_ids
            self._call_cancel = call_cancel
            if job_ids & self._cancel_asked or self._stop.is_set():
                call_cancel.set()

        def on_step(event: "ProgressEvent") -> None:
            for job_id in job_ids:
                run = runs[job_id]
                self.publish(JobProgressed(job_id=job_id, step=event.step, total_steps=event.total_steps,
                                           images_done=len(run.saved), images_total=run.job.images_total))

        try:
            results = engine.render([piece.request for piece in chunk], progress=on_step, cancel=call_cancel)
        except CancelledError:
            self._cancel_jobs(runs, self._cancelled(job_ids))
            raise Interrupted() from None
        finally:
            with self._lock:
                self._in_call = set()
                self._call_cancel = None
        # A cancel that came with the last step: that job's images are not saved.
        self._cancel_jobs(runs, self._cancelled(job_ids))
        images = sum(len(result.images) for result in results)
        for piece, result in zip(chunk, results):
            run = runs[piece.job_id]
            if run.done:
                continue
            self._add_timings(run, result)
            for i, index in enumerate(piece.indices):
                started = time.perf_counter()
                artifact = self.store.save(result, i, batch_size=images)
                self.jobs.record_image(run.job.id, index, artifact.id)
                run.timings["save_s"] += time.perf_counter() - started
                run.saved[index] = artifact.id
                self.publish(ArtifactSaved(job_id=run.job.id, artifact_id=artifact.id, index=index,
                                           image_url=image_url(artifact.id)))

    @staticmethod
    def _add_timings(run: JobRun, result: "RenderResult") -> None:
        for name in ("load_s", "denoise_s", "decode_s"):
            run.timings[name] += getattr(result.timings, name)

    # -- cancelling -------------------------------------------------------------------------------------
    def _cancelled(self, job_ids: set[str]) -> set[str]:
        with self._lock:
            asked = job_ids & self._cancel_asked
        return asked | self.jobs.cancel_requested(job_ids - asked)

    def _cancel_jobs(self, runs: dict[str, JobRun], job_ids: set[str]) -> None:
        for job_id in job_ids:
            run = runs[job_id]
            if run.done:
                continue
            run.done = True
            self.jobs.finish(job_id, "cancelled", timings=self._job_timings(run))
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

    def _forget(self, job_id: str) -> None:
        with self._lock:
            self._cancel_asked.discard(job_id)

    def _finish_succeeded(self, run: JobRun) -> None:
        run.done = True
        self._forget(run.job.id)
        timings = self._job_timings(run)
        if self.jobs.finish(run.job.id, "succeeded", timings=timings) is not None:
            self.publish(JobSucceeded(job_id=run.job.id, artifact_ids=run.artifact_ids, timings=timings))

    def _requeue(self, job: Job, reason: str, *, count_attempt: bool, solo: bool | None = None) -> None:
        requeued = self.jobs.requeue(job.id, error=reason, count_attempt=count_attempt, solo=solo)
        if requeued is not None:
            self.publish(JobQueued(job_id=job.id, attempts=requeued.attempts, error=reason))
            self._wake.set()

    def _failed(self, runs: dict[str, JobRun], error: Exception) -> None:
        error = disk_full(error) or error  # a full disk fails the job at once, with one line, not three times
        message = str(error) if isinstance(error, EchoError) else f"{type(error).__name__}: {error}"
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
                self._forget(job.id)
                reason = message if isinstance(error, EchoError) else \
                    f"failed {job.attempts} times; last error: {message}"
                if self.jobs.finish(job.id, "failed", error=reason, timings=self._job_timings(run)) is not None:
                    self.publish(JobFailed(job_id=job.id, error=reason, attempts=job.attempts,
                                           artifact_ids=run.artifact_ids))
            else:
                self._requeue(job, f"attempt {job.attempts} failed: {message}", count_attempt=True)

    # -- crash recovery -------------------------------------------------------------------------------
    def _adopt_unrecorded(self, run: JobRun) -> None:
        """Artifacts this job saved but did not record (killed in between): record them now."""
        from echo_os.artifacts.meta import ArtifactMeta
        from echo_os.artifacts.slugs import slugify

        wanted: dict[str, int] = {}
        offset = 0
        for item in run.job.spec.items:
            for i, seed in enumerate(item.seeds):
                if offset + i not in run.saved:
                    one = item.model_copy(update={"seed": seed, "count": 1}).model_dump(mode="json")
                    one.pop("engine")
                    wanted[_request_key(one)] = offset + i
            offset += item.count
        if not wanted:
            return
        created = datetime.fromisoformat(run.job.created)
        first_day = (created.astimezone().date() - timedelta(days=1)).isoformat()
        projects = {slugify(item.project, fallback="default") for item in run.job.spec.items}
        found: dict[int, tuple[ArtifactMeta, str]] = {}
        for day in sorted(self.store.root.iterdir()):
            if not (day.is_dir() and _is_day(day.name) and day.name >= first_day):
                continue
            for project in projects:
                for meta_path in (day / project).glob("*/meta.json"):
                    try:
                        meta = ArtifactMeta.read(meta_path)
                    except (OSError, ValueError):
                        continue
                    if datetime.fromisoformat(meta.created) < created:
                        continue
                    request = dict(meta.request)
                    request.pop("engine", None)
                    index = wanted.get(_request_key(request))
                    if index is not None and index not in found:
                        found[index] = (meta, str(meta_path.parent.relative_to(self.store.root)))
        taken = self.jobs.recorded_artifact_ids(meta.id for meta, _ in found.values())
        for index, (meta, relative) in sorted(found.items()):
            if meta.id in taken:
                continue
            self.store.catalog.upsert(meta.model_dump(mode="json"), relative)
            self.jobs.record_image(run.job.id, index, meta.id)
            run.saved[index] = meta.id
            log.info("job %s: adopted artifact %s saved before an interruption", run.job.id, meta.id[:12])


def _request_key(request: dict) -> str:
    import json

    return json.dumps(request, sort_keys=True)


def _is_day(name: str) -> bool:
    try:
        date.fromisoformat(name)
    except ValueError:
        return False
    return True
