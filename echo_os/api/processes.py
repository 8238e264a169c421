"""Render workers as processes: `echo-os serve --workers N`. The HTTP process accepts, stores and
streams; each worker process runs the same Worker (echo_os.api.worker) over the one renderer.

The durable job queue (jobs.db) stays the single source of truth, and the only channel:
- claiming: the Worker's atomic UPDATE, now naming the worker and a lease (`lease_until`); the worker's
  heartbeat thread renews it every lease/3. A worker the supervisor sees exit has its jobs taken back
  at once (`JobStore.requeue_worker`): an outage, not the jobs' error, so no attempt is spent (an
  interruption is counted; failed after MAX_INTERRUPTIONS) and each waits a back-off before it is claimed
  again. A lease that runs out (the whole server was killed, a worker froze) is taken back by the
  supervisor's sweep (`requeue_expired`) by `recover`'s rule: cancelled if asked, failed after
  max_attempts, else queued. Either way its recorded images are kept and skipped.
- events: a worker writes its job events into `job_events` (EventWriter: one transaction every 50 ms);
  the HTTP process tails the table (every 50 ms) into its EventHub, so SSE clients see what they saw
  with the in-process thread. jobs.db rather
  than a multiprocessing queue because the events then survive the HTTP process: a worker that outlives
  a killed server for a moment still records its last state changes in order, after the job rows they
  describe (the hub's contract: state first, then the event), and there is no pipe to drain or lose.
  The HTTP process deletes the events it has published.
- wake-up and cancel: a worker's control loop reads jobs.db every 0.1 s (one indexed read): a queued job
  wakes its Worker, `cancel_requested` (set by the HTTP route) on a job in its pipeline call stops the call
  at the next step. Stop is SIGTERM. No multiprocessing lock or event is shared: a worker killed while
  holding one would leave it held and hang the server.
- figures: each worker writes its row in `workers` (device, model, jobs done, images, last error, when
  it last made progress and its step time) with every heartbeat; GET /api/workers reads them.

Exactly once: every saved image is recorded against (job, image number) right after it is saved, by
whichever worker saved it; a job that runs again renders only the numbers nobody recorded, and adopts an
image saved but not recorded by a worker killed in between (Worker._adopt_unrecorded). Before each
pipeline call a worker drops the jobs it no longer holds.

Devices: each worker process gets CUDA_VISIBLE_DEVICES set to one GPU before torch is imported (round
robin when there are more workers than GPUs); on a CPU-only machine the cores are split between workers
(OMP_NUM_THREADS), since torch in each process would otherwise start one thread per core.
Processes are started with multiprocessing's `spawn` (never `fork`: CUDA cannot be forked, and the
HTTP process has threads). A worker whose parent disappears (kill -9 of the server) stops by itself,
putting its jobs back in the queue.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from echo_os.api.events import JOB_EVENT_ADAPTER, JobCancelled, JobFailed, JobQueued
from echo_os.api.hosts import images_per_minute, worker_view
from echo_os.api.jobs import JobStore, Recovery, WorkerRow, now_iso
from echo_os.api.options import ApiOptions
from echo_os.api.stalls import iso_from_epoch
from echo_os.sqlite import connect, rollback

if TYPE_CHECKING:
    from echo_os.api.schemas import WorkerView
    from echo_os.settings import Settings

log = logging.getLogger(__name__)

EVENT_POLL_S = 0.05
SUPERVISE_S = 0.2
CONTROL_POLL_S = 0.1  # how often a worker looks for queued jobs, cancels and its parent
# A render worker on the CPU runs at this niceness (os.nice) unless `serve --worker-nice N` says otherwise.
# It was 10 (issue 15: a submission should not wait for a render's time slice). Measured with other busy
# programs on the machine (benchmarks/RESULTS.md, starvation under load, issue 25), 10 hands the CPU to
# them, not to the server: with 8 busy processes two tiny 64x64 jobs did not finish in 60 s at nice 10 and
# took 19-26 s at nice 0, while the submission p99 was the same at 0, 5 and 10 (400-410 ms: the busy
# programs, not the render, take the server's time). So the render runs at the user's own priority, as
# any program they start; GPU workers always did.
CPU_WORKER_NICE = 0


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them, without importing torch:
    the variable if set, else `nvidia-smi -L` (none when it is absent)."""
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    if named is not None:
        return [part.strip() for part in named.split(",") if part.strip() and part.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(index) for index, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def default_worker_count() -> int:
    """One worker per visible GPU; one on a machine without a GPU."""
    return max(1, len(visible_gpus()))


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker process is started with (pickled by multiprocessing spawn)."""

    settings: "Settings"
    slot: int
    worker_id: str
    device: str  # "cuda:<physical index>" or "cpu"
    cuda_visible: str | None  # the CUDA_VISIBLE_DEVICES the process gets (None: leave as is)
    threads: int | None  # OMP_NUM_THREADS on the CPU (None: leave as is)
    max_batch: int
    batch_window_ms: int
    max_attempts: int
    lease_s: float
    parent_pid: int
    restarts: int = 0
    last_error: str | None = None  # why the previous worker in this slot died
    log_level: str = "INFO"
    nice: int = 0  # added to the process's niceness before anything else (0: the server's priority)


def worker_main(config: WorkerConfig) -> None:
    """A worker process: pin the device, then run a Worker until SIGTERM or until the server is gone."""
    # 1. The device, before anything imports torch.
    if config.cuda_visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = config.cuda_visible
    if config.threads is not None and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(config.threads)
    if config.nice > 0:
        try:
            os.nice(config.nice)
        except OSError:  # not allowed here: render at the server's priority
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server stops us
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    logging.basicConfig(level=config.log_level.upper(),
                        format=f"%(asctime)s worker {config.slot} [{config.device}] %(levelname)s %(message)s")

    from echo_os.api.worker import Worker, default_engine_factory
    from echo_os.artifacts.store import ArtifactStore

    # 2. The queue, the store (with the scorer hook, as the in-process worker has; images are embedded into
    # Echo Memory by the next /api/memory request, issue 11) and the Worker.
    # synchronous=NORMAL for the worker's writes (claims, recorded images, endings): they hold SQLite's one
    # write lock for no fsync, so the server's submissions wait less. A power cut may lose the latest of
    # them, never an accepted job: a job taken back runs again, adopts the images it saved but lost the
    # record of (Worker._adopt_unrecorded), and renders only the rest.
    jobs = JobStore(config.settings.artifacts_dir / "jobs.db", max_attempts=config.max_attempts,
                    synchronous="NORMAL")
    store = ArtifactStore(config.settings)
    from echo_os.resonance.listener import attach_scorer

    attach_scorer(store)
    events = EventWriter(connect(jobs.path, synchronous="NORMAL"))
    events.start()
    publish = events.publish

    worker = Worker(jobs, store, publish,
                    make_engine=default_engine_factory(config.settings), max_batch=config.max_batch,
                    batch_window_ms=config.batch_window_ms, poll_s=1.0, worker_id=config.worker_id,
                    lease_s=config.lease_s)
    worker.stats.last_error = config.last_error
    row = WorkerRow(slot=config.slot, worker=config.worker_id, pid=os.getpid(), device=config.device,
                    last_error=config.last_error, restarts=config.restarts, state="idle", heartbeat=now_iso())
    jobs.set_worker_row(row, only_if_same_worker=True)
    worker.start()
    log.info("started (pid %d)", os.getpid())

    # 3. The control loop: wake-ups, cancels, the lease, our row; until stopped or orphaned. Everything
    # goes through jobs.db: no multiprocessing lock is shared with the server, since a process killed
    # while holding one (SIGKILL, the OOM killer) would leave it held for good.
    renew_every = config.lease_s / 3
    renewed = time.monotonic()
    jobs_logged = 0
    orphaned = False
    try:
        while not stop.wait(CONTROL_POLL_S) and worker.alive:
            if os.getppid() != config.parent_pid:
                log.warning("the server process is gone; stopping (jobs in flight go back to the queue)")
                orphaned = True
                break
            if jobs.has_queued():
                worker.wake()
            for job_id in jobs.cancel_requested(worker.jobs_in_call()):
                worker.cancel(job_id)
            if time.monotonic() - renewed >= renew_every:
                jobs.renew_leases(config.worker_id, config.lease_s)
                renewed = time.monotonic()
                _write_row(jobs, row, worker)
            if worker.stats.jobs_done != jobs_logged:
                jobs_logged = worker.stats.jobs_done
                _write_row(jobs, row, worker)
                log.info("%d jobs done, %d images, %s images/min", row.jobs_done, row.images_done,
                         _per_minute(row))
    finally:
        # A killed server is an outage of the jobs in flight, as it is with the in-process worker
        # (JobStore.recover): no attempt spent, an interruption counted, so a job that keeps bringing the
        # server down ends up failed after MAX_INTERRUPTIONS, not retried forever.
        worker.stop(outage=orphaned)
        row.state = "stopped"
        _write_row(jobs, row, worker)
        store.close()
        events.close()
        jobs.close()
        log.info("stopped")


class EventWriter:
    """A worker's job events into `job_events`, written every EVENT_POLL_S in one transaction, on their
    own connection with synchronous=NORMAL: no fsync per progress step (the job rows, the source of truth,
    keep FULL), and few write transactions to contend with the server's submissions for the one SQLite
    write lock. Within one flush only the latest progress event of a job is kept (a step superseded
    before anyone could see it)."""

    def __init__(self, db):
        self.db = db
        self._pending: list = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="echo-os-worker-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def publish(self, event) -> None:
        with self._lock:
            self._pending.append(event)

    def _run(self) -> None:
        while not self._closed.wait(EVENT_POLL_S):
            try:
                self.flush()
            except Exception:  # e.g. busy for longer than the timeout; next round
                log.exception("writing job events; trying again")

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        latest_progress = {event.job_id: index for index, event in enumerate(batch) if event.event == "progress"}
        batch = _keep_previews(batch, latest_progress)
        rows = [(event.job_id, event.model_dump_json()) for index, event in enumerate(batch)
                if event.event != "progress" or latest_progress[event.job_id] == index]
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("INSERT INTO job_events (job_id, body) VALUES (?, ?)", rows)
            self.db.execute("COMMIT")
        except BaseException:
            rollback(self.db)
            with self._lock:
                self._pending[:0] = batch
            raise

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self.flush()
        self.db.close()


def _keep_previews(batch: list, latest_progress: dict[str, int]) -> list:
    """A dropped progress step's live preview moves onto the step that is kept (when that has none), so a
    preview is not lost because another step followed it within one flush."""
    batch = list(batch)
    for index, event in enumerate(batch):
        if event.event == "progress" and getattr(event, "preview", None):
            kept = latest_progress[event.job_id]
            if kept != index and not batch[kept].preview:
                batch[kept] = batch[kept].model_copy(update={"preview": event.preview})
    return batch


def _write_row(jobs: JobStore, row: WorkerRow, worker) -> None:
    stats = worker.stats
    row.model, row.jobs_done, row.images_done = stats.model, stats.jobs_done, stats.images_done
    row.first_job, row.last_error, row.heartbeat = stats.first_job, stats.last_error, now_iso()
    row.last_progress = iso_from_epoch(stats.clock.last) if stats.clock.last is not None else None
    row.step_s = stats.clock.step_s
    if row.state != "stopped":
        row.state = stats.state
    jobs.set_worker_row(row, only_if_same_worker=True)


def _per_minute(row: WorkerRow) -> str:
    rate = images_per_minute(row)
    return "-" if rate is None else f"{rate:.2f}"


@dataclass
class _Slot:
    config: WorkerConfig
    process: multiprocessing.process.BaseProcess


class WorkerPool:
    """The supervisor in the HTTP process: starts the worker processes, restarts one that dies (its
    jobs go back to the queue first), sweeps expired leases, and tails job events into the hub.

    Same control surface as the in-process Worker: start, stop, wake, cancel, alive."""

    def __init__(self, settings: "Settings", jobs: JobStore, publish: Callable[[Any], None],
                 options: "ApiOptions", *, count: int, log_level: str = "INFO"):
        self.settings = settings
        self.jobs = jobs
        self.publish = publish  # thread-safe (EventHub.publish_threadsafe)
        self.options = options
        self.count = max(1, count)
        self.log_level = log_level
        self._context = multiprocessing.get_context("spawn")
        self._stopping = threading.Event()
        self._slots: list[_Slot] = []
        self._threads: list[threading.Thread] = []
        self._last_event = 0
        gpus = visible_gpus()
        self._devices = [(f"cuda:{gpus[slot % len(gpus)]}", gpus[slot % len(gpus)]) if gpus else ("cpu", None)
                         for slot in range(self.count)]
        self._threads_each = None if gpus else max(1, (os.cpu_count() or 1) // self.count)
        self._nice = (options.worker_nice if options.worker_nice is not None
                      else 0 if gpus else CPU_WORKER_NICE)

    # -- control -----------------------------------------------------------------------------------
    def start(self) -> None:
        self.jobs.clear_workers()
        self._last_event = self.jobs.last_event_id()  # older events belong to a server that is gone
        self.jobs.drop_events(self._last_event)
        for slot in range(self.count):
            self._slots.append(self._spawn(slot, restarts=0))
        for target, name in ((self._supervise, "echo-os-workers"), (self._tail_events, "echo-os-worker-events")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _spawn(self, slot: int, *, restarts: int, last_error: str | None = None) -> _Slot:
        device, visible = self._devices[slot]
        config = WorkerConfig(settings=self.settings, slot=slot, worker_id=uuid.uuid4().hex, device=device,
                              cuda_visible=visible, threads=self._threads_each, max_batch=self.options.max_batch,
                              batch_window_ms=self.options.batch_window_ms, max_attempts=self.options.max_attempts,
                              lease_s=self.options.lease_s, parent_pid=os.getpid(), restarts=restarts,
                              last_error=last_error, log_level=self.log_level, nice=self._nice)
        process = self._context.Process(target=worker_main, args=(config,),
                                        name=f"echo-os-worker-{slot}", daemon=False)
        process.start()
        self.jobs.set_worker_row(WorkerRow(slot=slot, worker=config.worker_id, pid=process.pid, device=device,
                                           last_error=last_error, restarts=restarts, state="starting",
                                           heartbeat=now_iso()))
        log.info("worker %d started on %s (pid %d)", slot, device, process.pid)  # normal: not a warning
        return _Slot(config, process)

    def stop(self, timeout: float = 30.0) -> None:
        """Workers stop at the next step and put their jobs back; one that does not stop in time is killed
        (its jobs come back through the lease on the next start)."""
        self._stopping.set()
        for slot in self._slots:
            if slot.process.is_alive():
                slot.process.terminate()  # SIGTERM: the worker stops at the next step
        deadline = time.monotonic() + timeout
        for slot in self._slots:
            slot.process.join(max(0.1, deadline - time.monotonic()))
            if slot.process.is_alive():
                log.warning("worker %d did not stop in %.0fs; killing it", slot.config.slot, timeout)
                slot.process.kill()
                slot.process.join(5)
        for thread in self._threads:
            thread.join(5)
        self._publish_new_events()  # what the workers said while stopping

    def wake(self) -> None:
        """Nothing to send: workers look for queued jobs in jobs.db every CONTROL_POLL_S."""

    def cancel(self, job_id: str) -> None:
        """Nothing to send: the store has `cancel_requested`, which the worker holding the job polls."""

    @property
    def alive(self) -> bool:
        return any(slot.process.is_alive() for slot in self._slots)

    def rows(self) -> list[WorkerRow]:
        return self.jobs.worker_rows()

    def views(self, stall_after_s: float) -> list[WorkerView]:
        """The worker processes (echo_os.api.hosts.WorkerHost) from their rows in jobs.db."""
        from echo_os.api.stalls import epoch_from_iso, judge

        return [worker_view(row, judge(epoch_from_iso(row.last_progress) if row.last_progress else None, row.step_s,
                                       stall_after_s, busy=row.state == "rendering"))
                for row in self.rows()]

    # -- the supervisor thread -------------------------------------------------------------------------
    def _supervise(self) -> None:
        swept = time.monotonic()
        while not self._stopping.wait(SUPERVISE_S):
            try:
                for index, slot in enumerate(self._slots):
                    if not slot.process.is_alive() and not self._stopping.is_set():
                        self._replace(index, slot)
                if time.monotonic() - swept >= 1.0:
                    swept = time.monotonic()
                    self._announce(self.jobs.requeue_expired())
            except Exception:  # e.g. the database busy for longer than its timeout
                log.exception("worker supervisor: trying again")

    def _replace(self, index: int, slot: _Slot) -> None:
        code = slot.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        log.error("worker %d (pid %s) %s; its jobs go back to the queue and a new worker starts",
                  slot.config.slot, slot.process.pid, how)
        self._announce(self.jobs.requeue_worker(slot.config.worker_id))
        self._slots[index] = self._spawn(slot.config.slot, restarts=slot.config.restarts + 1,
                                         last_error=f"previous worker process (pid {slot.process.pid}) {how}")

    def _announce(self, taken_back: Recovery) -> None:
        """Events for jobs the supervisor took back from a dead worker (the worker cannot send them)."""
        for job_id in taken_back.requeued:
            job = self.jobs.get(job_id)
            if job is not None:
                self.publish(JobQueued(job_id=job_id, attempts=job.attempts, error=job.error))
        for job_id in taken_back.failed:
            job = self.jobs.get(job_id)
            if job is not None:
                self.publish(JobFailed(job_id=job_id, error=job.error or "failed", attempts=job.attempts,
                                       artifact_ids=job.artifact_ids))
        for job_id in taken_back.cancelled:
            job = self.jobs.get(job_id)
            if job is not None:
                self.publish(JobCancelled(job_id=job_id, artifact_ids=job.artifact_ids))
        if taken_back.requeued:
            log.warning("%d jobs back in the queue: %s", len(taken_back.requeued), ", ".join(taken_back.requeued))

    # -- the event tail -----------------------------------------------------------------------------------
    def _tail_events(self) -> None:
        dropped = time.monotonic()
        while not self._stopping.wait(EVENT_POLL_S):
            try:
                self._publish_new_events()
                if time.monotonic() - dropped >= 2.0:
                    dropped = time.monotonic()
                    self.jobs.drop_events(self._last_event)
            except Exception:
                log.exception("worker events: trying again")

    def _publish_new_events(self) -> None:
        while True:
            rows = self.jobs.events_after(self._last_event)
            if not rows:
                return
            for event_id, body in rows:
                self._last_event = event_id
                try:
                    self.publish(JOB_EVENT_ADAPTER.validate_json(body))
                except ValueError:
                    log.warning("worker event %d unreadable; skipped", event_id)
