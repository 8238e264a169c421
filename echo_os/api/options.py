"""ApiOptions: how the server behaves (`echo-os serve` fills it). Below both the request dependencies
(api/deps.py) and the worker processes (api/processes.py), which read it, so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass

from echo_os.api.jobs import DEFAULT_MAX_ATTEMPTS
from echo_os.api.security import DEFAULT_MAX_BODY_BYTES

DEFAULT_LEASE_S = 30.0  # a worker renews every lease/3; a killed server's jobs wait at most this long


@dataclass(frozen=True)
class ApiOptions:
    """How the server behaves; `echo-os serve` fills this from its options."""

    max_batch: int = 8  # images per pipeline call; 1 turns dynamic batching off
    batch_window_ms: int = 25  # how long the worker waits for compatible jobs to batch with
    default_model: str = "sdxl"  # for the OpenAI route when the model is omitted or an OpenAI name
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    # How long the job of a synchronous request whose client disconnected waits for a retry to attach
    # before it is cancelled: the openai client's backoff between tries is at most 8 s.
    abandoned_grace_s: float = 10.0
    # Render worker processes (echo_os.api.processes); 0 renders on a thread in the HTTP process.
    workers: int = 0
    lease_s: float = DEFAULT_LEASE_S  # a worker process's claim lasts this long unless renewed
    worker_log_level: str = "INFO"
    worker_nice: int | None = None  # niceness of worker processes; None: 10 on the CPU, 0 with GPUs
    # `serve --ray`: render on Ray actors (echo_os.api.ray_workers). "local" starts a Ray instance on this
    # machine, "auto" or host:port joins a cluster; None: no Ray. ray_actors None: one per GPU, else 2.
    ray_address: str | None = None
    ray_actors: int | None = None
