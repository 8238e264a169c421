"""One handler per kind of job (echo_os.api.specs), found by the spec's `kind` in `HANDLERS`: what the worker
runs for a claimed group of jobs, and what it writes once a job's images are all saved.

    render, refine, clip  the renderer (render_requests) over the jobs' requests; render jobs claimed together
                          share pipeline calls
    batch                 the same, then story.json, the contact sheet and the continuity report, written by
                          the code `echo-os batch` runs (story.render.write_story_outputs)
    compare               model by model (one model in memory, as `echo-os compare`), then the grid sheet,
                          recorded as the job's last artifact
    animatic              echo_os.motion.animatic.make_animatic; frames encoded are its progress
    evolve                echo_os.reflect.evolve.evolve; its candidates are recorded as each round ends

A handler gets the Worker (echo_os.api.worker) for its store, its events and its cancel flags. Jobs claimed
together always share one handler: only `render` rows (render and refine specs) are claimed together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

from echo_os.api.events import ArtifactSaved, JobProgressed, image_url
from echo_os.api.jobs import Job
from echo_os.api.specs import AnimaticJobSpec, BatchSpec, CompareSpec, EvolveJobSpec, ItemsSpec, SpecKind
from echo_os.errors import CancelledError
from echo_os.render.requests import RenderRequest
from echo_os.render.scheduler import CallControl, ImageDone, Piece, RenderHooks, RenderOutcome, render_requests

if TYPE_CHECKING:
    from echo_os.api.worker import Worker
    from echo_os.engines.base import ProgressEvent, RenderResult
    from echo_os.reflect.evolve import Round
    from echo_os.render.prepare import EngineChoice

log = logging.getLogger(__name__)


@dataclass
class JobRun:
    """A claimed job while the worker holds it."""

    job: Job
    saved: dict[int, str]
    timings: dict[str, float] = field(default_factory=lambda: {"load_s": 0.0, "denoise_s": 0.0,
                                                                "decode_s": 0.0, "save_s": 0.0})
    done: bool = False
    engines: list[EngineChoice] = field(default_factory=list)
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


class Interrupted(Exception):
    """The pipeline call stopped on its cancel flag (a cancelled job, or the server stopping)."""


class JobHandler(Protocol):
    """What the worker runs for one kind of job."""

    def run(self, worker: Worker, runs: dict[str, JobRun]) -> None:
        """Render (or encode, or evolve) the claimed jobs; images a job has recorded are skipped. Raises
        Interrupted when stopped on a cancel flag; a job whose cancel is seen is ended as cancelled."""
        ...

    def finish(self, worker: Worker, run: JobRun) -> None:
        """What a job writes once its images are saved, before it is recorded as succeeded (a failure here
        is logged; the job still succeeds)."""
        ...


HANDLERS: dict[SpecKind, JobHandler] = {}


Handler = TypeVar("Handler", bound=type)


def handles(*kinds: SpecKind) -> Callable[[Handler], Handler]:
    """Register a handler class's one instance for `kinds`."""
    def register(cls: Handler) -> Handler:
        instance = cls()
        for kind in kinds:
            HANDLERS[kind] = instance
        return cls
    return register


def handler_for(runs: dict[str, JobRun]) -> JobHandler:
    """The one handler of a claimed group (jobs claimed together share it)."""
    found = {id(HANDLERS[run.job.spec.kind]): HANDLERS[run.job.spec.kind] for run in runs.values()}
    if len(found) != 1:
        raise RuntimeError(f"jobs of different handlers claimed together: {[r.job.spec.kind for r in runs.values()]}")
    return next(iter(found.values()))


# ---- the renderer's kinds ---------------------------------------------------------------------------

class _JobHooks(RenderHooks):
    """The renderer's hooks for claimed jobs: a cancel flag per pipeline call that the jobs in it can set,
    progress and saved images as job events, and each image recorded right after it is saved."""

    def __init__(self, worker: Worker, runs: dict[str, JobRun], places: list[tuple[JobRun, int]]):
        super().__init__()
        self.worker = worker
        self.runs = runs
        self.places = places

    def _job_ids(self, pieces: list[Piece]) -> set[str]:
        return {self.places[piece.source][0].job.id for piece in pieces}

    def before_call(self, pieces: list[Piece]) -> list[Piece]:
        worker = self.worker
        worker.drop_lost(self.runs, self._job_ids(pieces))
        worker.cancel_jobs(self.runs, worker.cancelled(self._job_ids(pieces)))
        pieces = [piece for piece in pieces if not self.places[piece.source][0].done]
        if pieces and worker.stopping:
            raise Interrupted()
        return pieces

    @contextmanager
    def call(self, pieces: list[Piece]) -> Iterator[CallControl]:
        worker = self.worker
        job_ids = self._job_ids(pieces)

        def on_step(event: ProgressEvent) -> None:
            worker.stats.clock.step()
            for job_id in job_ids:
                run = self.runs[job_id]
                run.step = (event.step, event.total_steps)
                worker.publish(JobProgressed(job_id=job_id, step=event.step, total_steps=event.total_steps,
                                             images_done=len(run.saved), images_total=run.job.images_total,
                                             preview=event.preview))

        with worker.cancel_flag(job_ids) as call_cancel:
            try:
                yield CallControl(progress=on_step, cancel=call_cancel)
            except CancelledError:
                worker.cancel_jobs(self.runs, worker.cancelled(job_ids))
                raise Interrupted() from None

    def after_call(self, pieces: list[Piece], results: list[RenderResult]) -> list[bool]:
        # A cancel that came with the last step: that job's images are not saved.
        self.worker.cancel_jobs(self.runs, self.worker.cancelled(self._job_ids(pieces)))
        return [not self.places[piece.source][0].done for piece in pieces]

    def result(self, piece: Piece, result: RenderResult) -> None:
        run = self.places[piece.source][0]
        for name in ("load_s", "denoise_s", "decode_s"):
            run.timings[name] += getattr(result.timings, name)

    def image(self, done: ImageDone) -> None:
        run, offset = self.places[done.source]
        index = offset + done.index
        self.worker.jobs.record_image(run.job.id, index, done.artifact.id)
        run.timings["save_s"] += done.save_s
        run.saved[index] = done.artifact.id
        self.worker.stats.clock.mark()
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


@handles("render", "refine", "clip")
class RenderHandler:
    """Every job item is one request to the renderer; images a job has recorded are skipped."""

    by_model = False  # render model by model, releasing each model's weights before the next loads

    def run(self, worker: Worker, runs: dict[str, JobRun]) -> None:
        requests: list[RenderRequest] = []
        places: list[tuple[JobRun, int]] = []  # per request: its job and the job's number of its first image
        for run in runs.values():
            offset = 0
            for item in run.job.spec.render_items():
                requests.append(item)
                places.append((run, offset))
                offset += item.count
        hooks = _JobHooks(worker, runs, places)
        # Every job resumes as the CLI does (the renderer's resume rule: an image whose one-image request key
        # is already in its project, folder on disk, is taken as the job's image, not rendered again), unless
        # it asked for `again`. Render jobs claimed together share the call: one that asked for `again`
        # renders the whole call anew.
        resume = not any(cast(ItemsSpec, run.job.spec).again for run in runs.values())
        models: list[str | None] = list(dict.fromkeys(r.model for r in requests)) if self.by_model else [None]
        outcome = RenderOutcome()
        for model in models:
            def skip(source: int, index: int, model: str | None = model) -> bool:
                if model is not None and requests[source].model != model:
                    return True
                return places[source][1] + index in places[source][0].saved

            # The same per-call size a story batch gets (free GPU memory on CUDA, 1 for CPU diffusion above
            # 64x64), capped by --max-batch.
            part = render_requests(worker.settings, requests, store=worker.store, max_batch=worker.max_batch,
                                   skip=skip, engine_for=worker.engine, hooks=hooks, resume=resume)
            _merge_outcome(outcome, part)
            if len(models) > 1 and part.artifacts:
                first = next(request for request in requests if request.model == model)
                worker.engine(first).release(first)
        for run in runs.values():
            run.engines, run.batch_sizes, run.notes = outcome.engines, outcome.batch_sizes, outcome.notes
        for choice in outcome.engines:
            if choice.name == "draft" and outcome.artifacts:
                # Not an error (the job succeeds), but its client asked for images and gets storyboard cards.
                log.warning("jobs %s: answered with draft cards, not renders (%s)", ", ".join(runs), choice.reason)

    def finish(self, worker: Worker, run: JobRun) -> None:
        return None


@handles("batch")
class BatchHandler(RenderHandler):
    """A story batch ends like `echo-os batch`: story.json, the contact sheet and the continuity report."""

    def finish(self, worker: Worker, run: JobRun) -> None:
        from echo_os.artifacts.store import Artifact
        from echo_os.resonance.story import ResonanceOptions, load_thresholds
        from echo_os.story.render import plan_from_source, write_story_outputs

        spec = cast(BatchSpec, run.job.spec)
        story = spec.story
        if story is None:  # a batch stored before /api/batch kept its story's files
            return
        plan = plan_from_source(story.project, Path(story.source), kind=story.kind,
                                bible=Path(story.bible) if story.bible else None, options=story.options)
        store = worker.store
        artifacts = [Artifact.from_row(store.root, store.catalog.resolve_id(artifact_id))
                     for artifact_id in run.artifact_ids]
        carried: list[Artifact] = []
        if story.count is not None:  # a part rendered: the whole story's other scenes as earlier runs left them
            from echo_os.story.batch import first_scenes
            from echo_os.story.render import whole_story

            plan, carried = whole_story(worker.settings, plan, first_scenes(plan, story.count), store,
                                        story.ip_adapter, None)
        job = run.job
        started = datetime.fromisoformat(job.started) if job.started else datetime.fromisoformat(job.created)
        elapsed = (datetime.now(started.tzinfo) - started).total_seconds()
        write_story_outputs(worker.settings, plan, store=store, artifacts=artifacts + carried,
                            resumed_ids={artifact.id for artifact in carried},
                            carried_ids={artifact.id for artifact in carried},
                            engines=run.engines, batch_sizes=run.batch_sizes, notes=run.notes, elapsed_s=elapsed,
                            requested_batch_size=None, ip_adapter=story.ip_adapter,
                            uses_ip_adapter=any(item.ip_adapter for item in spec.items), clip=None,
                            resonance=ResonanceOptions(thresholds=load_thresholds(worker.settings, story.project)))


@handles("compare")
class CompareHandler(RenderHandler):
    """A compare over several models renders model by model and releases each model's weights before the
    next loads, as `echo-os compare` does (echo_os.iterate.compare.render_compare): one model in memory.
    Then the labelled grid sheet, as `echo-os compare` writes it (the same sheet is found, not written
    again), recorded as the job's image after its cells."""

    by_model = True

    def finish(self, worker: Worker, run: JobRun) -> None:
        from echo_os.iterate.compare import Axis, Cell, ComparePlan, save_grid

        spec = cast(CompareSpec, run.job.spec)
        source = spec.compare
        index = sum(item.count for item in spec.items)
        axes = [Axis(axis.option, tuple(axis.values)) for axis in source.axes]
        plan = ComparePlan(axes, [Cell(tuple(values), request) for values, request in zip(source.cells, spec.items)])
        artifacts = [worker.store.open(run.saved[cell]) for cell in range(index)]
        grid, written = save_grid(worker.settings, worker.store, plan, artifacts, title=source.title)
        worker.jobs.record_image(run.job.id, index, grid.id)
        run.saved[index] = grid.id
        worker.publish(ArtifactSaved(job_id=run.job.id, artifact_id=grid.id, index=index,
                                     image_url=image_url(grid.id), resumed=not written, grid=True))
        log.info("job %s: compare grid %s%s", run.job.id, grid.id, "" if written else " (already there)")


# ---- kinds claimed alone -----------------------------------------------------------------------------

@handles("animatic")
class AnimaticHandler:
    """An /api/animatic job: echo_os.motion.animatic.make_animatic with the job's options. Frames encoded
    are its progress; a cancel (or the server stopping) is looked at before every frame and leaves nothing
    written; the video artifact is recorded as the job's image 0."""

    def run(self, worker: Worker, runs: dict[str, JobRun]) -> None:
        for run in runs.values():  # claimed alone: only render rows are claimed together
            self._encode(worker, run, runs)

    def _encode(self, worker: Worker, run: JobRun, runs: dict[str, JobRun]) -> None:
        from echo_os.motion.animatic import AnimaticOptions, make_animatic

        job = run.job
        spec = cast(AnimaticJobSpec, job.spec).animatic
        if 0 in run.saved:  # encoded and recorded by an attempt that was stopped before it finished
            return
        options = AnimaticOptions(fps=spec.fps, size=spec.size, fade=spec.fade, captions=spec.captions,
                                  clips=spec.clips)
        every = max(1, spec.frames // 100)  # about 100 progress events, however long the video
        with worker.cancel_flag({job.id}) as cancel:
            def on_frame(stage: str, done: int, total: int) -> None:
                # A cancel that reached the store but not this worker (asked through another process). One
                # indexed read per frame: tens of microseconds against ~100 ms to draw and encode a 1024x576
                # frame here (benchmarks/RESULTS.md, animatic encode speed).
                worker.stats.clock.step()
                if not cancel.is_set() and worker.jobs.cancel_requested([job.id]):
                    cancel.set()
                if done % every == 0 or done == total:
                    worker.publish(JobProgressed(job_id=job.id, step=0, total_steps=0, images_done=0,
                                                 images_total=1, frames_done=done, frames_total=total))

            try:
                result = make_animatic(worker.settings, spec.project, options, store=worker.store,
                                       progress=on_frame, cancel=cancel)
            except CancelledError:
                _cancelled_or_interrupted(worker, runs, job)
                return
        run.timings["encode_s"] = result.encode_s
        worker.jobs.record_image(job.id, 0, result.artifact.id)
        run.saved[0] = result.artifact.id
        worker.publish(ArtifactSaved(job_id=job.id, artifact_id=result.artifact.id, index=0,
                                     image_url=image_url(result.artifact.id)))

    def finish(self, worker: Worker, run: JobRun) -> None:
        return None


@handles("evolve")
class EvolveHandler:
    """An /api/evolve job: echo_os.reflect.evolve.evolve with the job's options. Candidate i of round r is
    the job's image (r - 1) x per_round + i - 1, recorded as each round ends; images rendered are its
    progress. Run again after a crash, the loop goes on from its record (artifacts/evolve/RUN.json) and
    finds the images already on disk."""

    def run(self, worker: Worker, runs: dict[str, JobRun]) -> None:
        for run in runs.values():  # claimed alone, like animatics
            self._evolve(worker, run, runs)

    def _evolve(self, worker: Worker, run: JobRun, runs: dict[str, JobRun]) -> None:
        from echo_os.reflect.evolve import EvolveOptions, evolve, find_scorer
        from echo_os.resonance.story import Objective

        job = run.job
        spec = cast(EvolveJobSpec, job.spec).evolve
        options = EvolveOptions(rounds=spec.rounds, per_round=spec.per_round, objective=Objective(dict(spec.objective)),
                                scorer=spec.scorer, min_gain=spec.min_gain, strengths=spec.strengths, seed=spec.seed)

        def record(done_round: Round) -> None:
            for index, candidate in enumerate(done_round.candidates):
                image = (done_round.round - 1) * spec.per_round + index
                if image not in run.saved:
                    worker.jobs.record_image(job.id, image, candidate.id)
                    run.saved[image] = candidate.id
                    worker.publish(ArtifactSaved(job_id=job.id, artifact_id=candidate.id, index=image,
                                                 image_url=image_url(candidate.id)))

        with worker.cancel_flag({job.id}) as cancel:
            def on_image(stage: str, done: int, total: int) -> None:
                worker.stats.clock.step()
                if not cancel.is_set() and worker.jobs.cancel_requested([job.id]):
                    cancel.set()
                worker.publish(JobProgressed(job_id=job.id, step=0, total_steps=0,
                                             images_done=len(run.saved) + done, images_total=job.images_total))

            try:
                result = evolve(worker.settings, worker.store, spec.start, options,
                                scorer=find_scorer(worker.settings, spec.scorer), progress=on_image, cancel=cancel,
                                on_round=record)
            except CancelledError:
                _cancelled_or_interrupted(worker, runs, job)
                return
        for done_round in result.rounds:  # rounds an earlier attempt finished before it was stopped
            record(done_round)

    def finish(self, worker: Worker, run: JobRun) -> None:
        return None


def _cancelled_or_interrupted(worker, runs, job) -> None:
    """A single-job handler's call stopped (CancelledError): the job's own cancel is recorded (the caller
    returns), anything else (the server stopping) raises Interrupted, which spends no attempt."""
    cancelled = worker.cancelled({job.id})
    if not cancelled:
        raise Interrupted()
    worker.cancel_jobs(runs, cancelled)
