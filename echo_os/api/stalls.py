"""Slow or stuck: when a worker, or a running job, has made no progress for too long (issue 25).

On a loaded CPU a step may take seconds; a stuck worker (an engine blocked on a lock, a dead GPU driver,
a process frozen) takes none at all. A `ProgressClock` remembers when progress was last made (a job
claimed, a denoising step, an image saved, a frame encoded) and how long a step has taken lately (the
mean interval between progress marks, smoothed). Progress is overdue after

    stall_threshold_s = max(floor, STALL_STEPS x the expected step time)

so a worker that is merely slow (each step 20 s under load) keeps its steps coming and is not flagged,
while one that has taken no step for many times its own usual step time is. The floor
(ApiOptions.stall_after_s, DEFAULT_STALL_AFTER_S) covers what comes before the first step: loading a
model, encoding prompts, and decoding and saving between calls.

GET /api/workers shows each worker's `last_progress`, `stalled` and a `warning`; GET /api/jobs/{id} the
same for a running job (its clock is kept by the event hub from the job's own events, so it works for
the in-process thread, worker processes and Ray actors alike).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

# A step that takes this many times the recent step time is no longer "slow": at 10, a worker whose steps
# slow down a few times over when other programs start competing for the cores (benchmarks/RESULTS.md,
# starvation under load) is not flagged.
STALL_STEPS = 10
# Before any step is measured (model loading, the first call): the default floor, in seconds. Loading
# SDXL from a local disk takes 10-60 s; 120 s leaves room for a slow disk.
DEFAULT_STALL_AFTER_S = 120.0
# Smoothing of the step time: each new interval counts this much (the last ~5 intervals dominate).
STEP_SMOOTHING = 0.2


def stall_threshold_s(step_s: float | None, floor_s: float) -> float:
    """Seconds without progress after which a worker or job is reported stalled."""
    return max(floor_s, STALL_STEPS * step_s) if step_s else floor_s


def iso_from_epoch(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="microseconds")


def epoch_from_iso(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


@dataclass(frozen=True)
class Stall:
    """What a view shows: when progress was last made, and whether it is overdue (with a warning that
    says how long, against what was expected)."""

    last_progress: str | None
    stalled: bool
    warning: str | None
    step_s: float | None


def judge(last_progress: float | None, step_s: float | None, floor_s: float, *, busy: bool,
          now: float | None = None) -> Stall:
    """A Stall for a worker or job last seen progressing at epoch `last_progress` (None: never). Only a
    `busy` one (rendering, running) can be stalled: an idle worker makes no progress by design."""
    if last_progress is None:
        return Stall(None, False, None, step_s)
    stamp = iso_from_epoch(last_progress)
    if not busy:
        return Stall(stamp, False, None, step_s)
    quiet = (now if now is not None else time.time()) - last_progress
    limit = stall_threshold_s(step_s, floor_s)
    if quiet < limit:
        return Stall(stamp, False, None, step_s)
    expected = f"a step takes about {step_s:.1f} s here" if step_s else "no step measured yet"
    warning = (f"no progress for {quiet:.0f} s ({expected}; stalled after {limit:.0f} s): the worker may be "
               "stuck rather than slow; see the server log, cancel the job or restart the server")
    return Stall(stamp, True, warning, step_s)


class ProgressClock:
    """When progress was last made and the smoothed time between steps. Thread-safe (the worker thread
    marks, the HTTP loop reads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last: float | None = None  # epoch seconds
        self.step_s: float | None = None
        self._stepping = False  # the previous mark was a step, so the next interval is a step time

    def start(self, now: float | None = None) -> None:
        """Work began (a job claimed or started): progress now, but the interval to the first step
        (loading, prompt encoding) is not a step time."""
        with self._lock:
            self.last = now if now is not None else time.time()
            self._stepping = False

    def step(self, now: float | None = None) -> None:
        """A denoising step (or a frame, an image of a loop) was made."""
        now = now if now is not None else time.time()
        with self._lock:
            if self._stepping and self.last is not None and now >= self.last:
                interval = now - self.last
                self.step_s = interval if self.step_s is None else \
                    (1 - STEP_SMOOTHING) * self.step_s + STEP_SMOOTHING * interval
            self.last = now
            self._stepping = True

    def mark(self, now: float | None = None) -> None:
        """Progress that is not a step (an image saved): the clock moves, the step time does not."""
        with self._lock:
            self.last = now if now is not None else time.time()
            self._stepping = False

    def judge(self, floor_s: float, *, busy: bool, now: float | None = None) -> Stall:
        with self._lock:
            last, step_s = self.last, self.step_s
        return judge(last, step_s, floor_s, busy=busy, now=now)
