"""Typed job events and the hub that carries them from the worker thread to asyncio subscribers.

The worker thread never touches asyncio objects: it calls `EventHub.publish_threadsafe`, which hands the
event to the loop with `loop.call_soon_threadsafe` (ComfyUI's server.py pattern). On the loop, `publish`
numbers the event, remembers the latest progress of running jobs (for GET /api/jobs/{id} and for clients
that connect late) and when each made progress (a ProgressClock, echo_os.api.stalls: the job view's
stalled warning), and puts it on every subscriber's queue.

The worker writes a state change to the job store before it publishes the event, so whoever receives an
event and then reads the store sees at least that state.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter

from echo_os.api.stalls import ProgressClock

log = logging.getLogger(__name__)


class _JobEvent(BaseModel):
    event: str  # each kind of event narrows it to its name
    job_id: str
    seq: int = 0  # per job, in publishing order; set by the hub


class JobQueued(_JobEvent):
    event: Literal["queued"] = "queued"
    attempts: int = 0
    error: str | None = None  # why it is queued again (a failed attempt, an interruption)


class JobStarted(_JobEvent):
    event: Literal["started"] = "started"
    attempt: int
    images_done: int
    images_total: int
    artifact_ids: list[str] = Field(default_factory=list)


class JobProgressed(_JobEvent):
    """One denoising step of the pipeline call this job is part of; for an animatic job, frames encoded
    (`frames_done` of `frames_total`; step and total_steps stay 0)."""

    event: Literal["progress"] = "progress"
    step: int
    total_steps: int
    images_done: int
    images_total: int
    frames_done: int = 0
    frames_total: int = 0
    # Now and then (at most every 0.5 s) a small JPEG data URL of the first image so far, decoded cheaply
    # from the latents (echo_os.render.preview); None on most steps and for engines that have none.
    preview: str | None = None


class ArtifactSaved(_JobEvent):
    event: Literal["artifact"] = "artifact"
    artifact_id: str
    index: int  # the image's number within the job
    image_url: str
    # Found already rendered instead of rendered now (a compare job's cells that an earlier run saved, or
    # its grid sheet when the same one exists), or saved by a try that an outage ended: announced again
    # when the job runs again, since a killed worker process may not have written its event.
    resumed: bool = False
    grid: bool = False  # a compare job's grid sheet (its last artifact), not a cell


class JobSucceeded(_JobEvent):
    event: Literal["succeeded"] = "succeeded"
    artifact_ids: list[str]
    timings: dict[str, float] = Field(default_factory=dict)
    grid_id: str | None = None  # a compare job: which of artifact_ids is the grid sheet


class JobFailed(_JobEvent):
    event: Literal["failed"] = "failed"
    error: str
    attempts: int
    artifact_ids: list[str] = Field(default_factory=list)


class JobCancelled(_JobEvent):
    event: Literal["cancelled"] = "cancelled"
    artifact_ids: list[str] = Field(default_factory=list)


JobEvent = Annotated[
    JobQueued | JobStarted | JobProgressed | ArtifactSaved | JobSucceeded | JobFailed | JobCancelled,
    Field(discriminator="event"),
]
JOB_EVENT_ADAPTER: TypeAdapter = TypeAdapter(JobEvent)
EVENT_NAMES = ("queued", "started", "progress", "artifact", "succeeded", "failed", "cancelled")
FINAL_EVENTS = frozenset({"succeeded", "failed", "cancelled"})


def image_url(artifact_id: str) -> str:
    return f"/api/artifacts/{artifact_id}/image"


def sse_message(event: _JobEvent) -> str:
    """One Server-Sent Events message: `event:` name, `id:` seq, `data:` the event as JSON."""
    return f"event: {event.event}\nid: {event.seq}\ndata: {event.model_dump_json()}\n\n"


class EventHub:
    """Per-job subscriber queues on one event loop. Everything but publish_threadsafe runs on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._subscribers: dict[str, set[asyncio.Queue]] = {}
        self._seq: dict[str, int] = {}
        self._progress: dict[str, JobProgressed] = {}
        self._clocks: dict[str, ProgressClock] = {}
        self._closed = False

    # -- from the worker thread -------------------------------------------------------------------
    def publish_threadsafe(self, event: _JobEvent) -> None:
        try:
            self.loop.call_soon_threadsafe(self.publish, event)
        except RuntimeError:  # the loop is closed: the server is stopping, nobody is listening
            log.debug("event for job %s dropped: the event loop is closed", event.job_id)

    # -- on the loop ----------------------------------------------------------------------------------
    def publish(self, event: _JobEvent) -> None:
        job_id = event.job_id
        seq = self._seq.get(job_id, 0) + 1
        event = event.model_copy(update={"seq": seq})
        if event.event in FINAL_EVENTS:
            self._seq.pop(job_id, None)
            self._progress.pop(job_id, None)
            self._clocks.pop(job_id, None)
        else:
            self._seq[job_id] = seq
            if isinstance(event, JobProgressed):
                # A late subscriber's snapshot carries the latest preview even when this step had none.
                earlier = self._progress.get(job_id)
                kept = event
                if event.preview is None and earlier is not None and earlier.preview is not None:
                    kept = event.model_copy(update={"preview": earlier.preview})
                self._progress[job_id] = kept
                self._clocks.setdefault(job_id, ProgressClock()).step()
            elif event.event == "started":
                self._progress.pop(job_id, None)
                self._clocks.setdefault(job_id, ProgressClock()).start()
            elif event.event == "queued":
                self._progress.pop(job_id, None)
                self._clocks.pop(job_id, None)
            elif event.event == "artifact":
                self._clocks.setdefault(job_id, ProgressClock()).mark()
        for queue in self._subscribers.get(job_id, ()):
            queue.put_nowait(event)

    def subscribe(self, job_id: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        if self._closed:
            queue.put_nowait(None)
        self._subscribers.setdefault(job_id, set()).add(queue)
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue) -> None:
        queues = self._subscribers.get(job_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._subscribers[job_id]

    def progress(self, job_id: str) -> JobProgressed | None:
        """The latest step of a running job, if it has taken one in this process."""
        return self._progress.get(job_id)

    def clock(self, job_id: str) -> ProgressClock | None:
        """When a running job last made progress in this process (None: no event of it seen yet)."""
        return self._clocks.get(job_id)

    @property
    def subscriber_count(self) -> int:
        return sum(len(queues) for queues in self._subscribers.values())

    def close(self) -> None:
        """Wake every subscriber with None: the server is stopping."""
        self._closed = True
        for queues in self._subscribers.values():
            for queue in queues:
                queue.put_nowait(None)
