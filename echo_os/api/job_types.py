"""The values of the job queue (echo_os.api.jobs): a job as a row of jobs.db, typed, and what the store's
calls answer with (an admission, a recovery, a worker's row)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from pydantic import BaseModel, Field, model_validator

from echo_os.api.specs import JobKind, JobSpec, JobViewKind

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class JobProgress(BaseModel):
    """Denoising step of the current pipeline call, and images saved out of the job's total; an animatic
    job counts frames encoded instead of steps (its one "image" is the video)."""

    step: int = 0
    total_steps: int = 0
    images_done: int = 0
    images_total: int = 0
    frames_done: int = 0
    frames_total: int = 0


class Job(BaseModel):
    """One row of the jobs table, typed. `kind` is the row's (JobKind); `spec.kind` says what it does."""

    id: str
    kind: JobKind
    status: JobStatus
    spec: JobSpec
    attempts: int = 0  # tries counted against max_attempts (claims, less those an outage interrupted)
    interruptions: int = 0  # tries ended by an outage of the machinery (counted against MAX_INTERRUPTIONS)
    error: str | None = None
    cancel_requested: bool = False
    solo: bool = False  # after a failed batched call: render alone next time, to find the culprit
    created: str
    started: str | None = None
    finished: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    # the denoising step its latest pipeline call reached, kept when the job ends (a cancel stops mid-call)
    step: int = 0
    total_steps: int = 0
    artifact_ids: list[str] = Field(default_factory=list)  # in image order

    @property
    def images_total(self) -> int:
        return self.spec.images_total

    @property
    def view_kind(self) -> JobViewKind:
        return self.spec.view_kind

    @model_validator(mode="after")
    def _kind_of_spec(self) -> Job:
        if self.kind != self.spec.row_kind:
            raise ValueError(f"a {self.spec.kind} job is stored as kind {self.spec.row_kind!r}, not {self.kind!r}")
        return self

    @property
    def grid_id(self) -> str | None:
        """A comparison's grid sheet (the last of its artifact_ids), once it is written."""
        index = self.spec.grid_index
        # The sheet is recorded only after every cell, so it is at its own index in artifact_ids.
        return self.artifact_ids[index] if index is not None and len(self.artifact_ids) > index else None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class IdempotencyKey:
    """What makes a submission repeatable: `key` (namespaced by the route layer), the fingerprint of the
    route and body it came with, and `replace`: the key is re-pointed at a new job instead of replayed (a
    derived key of a request that is not a retry)."""

    key: str
    fingerprint: str
    replace: bool = False


@dataclass(frozen=True)
class Admission:
    """What became of a submission: `stored` (a new job), `replayed` (the key's earlier job, same body) or
    `conflict` (the key's earlier job was made from another body); job_id is the job meant."""

    job_id: str
    outcome: Literal["stored", "replayed", "conflict"]


@dataclass(frozen=True)
class SavedImage:
    index: int
    artifact_id: str


@dataclass
class WorkerRow:
    """A worker process as the `workers` table keeps it (one row per slot; a restart reuses the slot)."""

    slot: int
    worker: str
    pid: int | None
    device: str
    model: str | None = None
    jobs_done: int = 0
    images_done: int = 0
    first_job: str | None = None  # when it claimed its first job (images/min counts from here)
    last_error: str | None = None
    restarts: int = 0
    state: str = "starting"  # starting, idle, rendering, stopped, dead
    heartbeat: str | None = None
    last_progress: str | None = None  # when it last claimed, stepped or saved (echo_os.api.stalls)
    step_s: float | None = None  # its recent time per step


@dataclass(frozen=True)
class Recovery:
    requeued: list[str]
    failed: list[str]
    cancelled: list[str]

