"""`echo-os serve`: the HTTP API on this machine (FastAPI + uvicorn); render workers are separate processes,
one per GPU (echo_os.api.processes), or Ray actors with --ray (echo_os.api.ray_workers)."""

from __future__ import annotations

import logging
import sys

import click

from echo_os.cli import settings_from
from echo_os.errors import UsageError


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs --token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="TCP port to listen on; checked free before any worker starts.")
@click.option("--token", envvar="ECHO_OS_TOKEN", default=None,
              help="Require `Authorization: Bearer TOKEN` on every route but /health (env: ECHO_OS_TOKEN); "
                   "at least 16 characters when listening beyond loopback. A browser opens "
                   "/api/gallery?token=TOKEN once (an HttpOnly session cookie).")
@click.option("--model", "default_model", default="sdxl", show_default=True,
              help="Model for OpenAI-style requests that name none (or name dall-e-*, gpt-image-*).")
@click.option("--max-batch", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Most images in one pipeline call; compatible queued jobs share a call up to this. "
                   "1 turns dynamic batching off.")
@click.option("--batch-window-ms", type=click.IntRange(0, 10_000), default=25, show_default=True,
              help="How long the worker waits for compatible jobs before a batched call.")
@click.option("--allow-origin", "allowed_origins", multiple=True,
              help="A browser origin (e.g. http://localhost:5173) allowed to call the API; repeatable. "
                   "Only absolute http(s) origins: `*` and `null` are refused.")
@click.option("--max-body-mb", type=click.FloatRange(0.01, 1024), default=5.0, show_default=True,
              help="Largest request body accepted.")
@click.option("--abandoned-grace-s", type=click.FloatRange(0, 3600), default=10.0, show_default=True,
              help="A synchronous /v1/images/generations request whose client disconnected before any image was "
                   "saved: its job is cancelled after this many seconds unless a retry comes back for it.")
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Render worker processes [default: one per visible GPU, 1 without a GPU]. Each GPU worker "
                   "is pinned to one GPU (CUDA_VISIBLE_DEVICES). 0 renders on a thread in the server process.")
@click.option("--worker-nice", type=click.IntRange(0, 19), default=None,
              help="Scheduling niceness of the worker processes [default: 0, the user's own priority: on a "
                   "busy machine a higher value hands the CPU to other programs and renders starve].")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Render on Ray actors instead of worker processes: `--ray` alone starts a local Ray instance, "
                   "`--ray auto` or `--ray HOST:PORT` joins a cluster. This server keeps the job queue and saves "
                   "every image. Needs pip install 'echo-os[ray]'.")
@click.option("--ray-actors", type=click.IntRange(1, 1024), default=None,
              help="Ray render actors [default: one per GPU in the cluster, 2 without GPUs].")
@click.option("--lease-s", type=click.FloatRange(1, 3600), default=30.0, show_default=True, hidden=True,
              help="How long a worker's claim on a job lasts without a heartbeat.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True, help="Server log detail (uvicorn and echo-os).")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, token: str | None, default_model: str, max_batch: int,
          batch_window_ms: int, allowed_origins: tuple[str, ...], max_body_mb: float, abandoned_grace_s: float,
          workers: int | None, worker_nice: int | None, ray_address: str | None, ray_actors: int | None,
          lease_s: float, log_level: str) -> None:
    """Serve the HTTP API: /api/render, /api/batch, /api/jobs, /api/artifacts and the OpenAI Images API
    at /v1/images/generations. The OpenAPI spec is at /openapi.json.

    \b
      echo-os serve                                   # http://127.0.0.1:8000, no token needed
      echo-os serve --host 0.0.0.0 --token "$(openssl rand -hex 16)"
      CUDA_VISIBLE_DEVICES=0,1,2,3 echo-os serve   # four worker processes, one per GPU
      echo-os serve --ray auto                        # render on the GPUs of a running Ray cluster
    """
    if ray_address is not None:
        if workers is not None:
            raise UsageError("--workers and --ray cannot be combined: with --ray the render workers are Ray "
                             "actors (choose how many with --ray-actors)")
        from echo_os.render.ray import import_ray

        import_ray()  # not installed: one line, before anything is written
    elif ray_actors is not None:
        raise UsageError("--ray-actors needs --ray")
    import uvicorn

    from echo_os.api import ApiOptions, create_app
    from echo_os.api.app import hold_server_lock
    from echo_os.api.processes import default_worker_count
    from echo_os.api.security import LOOPBACK_NAMES, check_bind, check_origins, is_loopback

    settings = settings_from(ctx)
    token = token.strip() if token and token.strip() else None
    check_bind(host, token)
    allowed_origins = check_origins(allowed_origins)
    hold_server_lock(settings).release()  # fail now, with one line, rather than inside uvicorn's startup
    check_port_free(host, port)  # before any worker starts, not uvicorn's errno line after they did
    # Bound to loopback without a token, only loopback Host names are answered, so a web page whose
    # name a DNS trick points at 127.0.0.1 cannot use the server.
    allowed_hosts = None if token or not is_loopback(host) else tuple(sorted({*LOOPBACK_NAMES, host.strip("[]")}))
    options = ApiOptions(max_batch=max_batch, batch_window_ms=batch_window_ms, default_model=default_model,
                         max_body_bytes=int(max_body_mb * 1024 * 1024), allowed_origins=allowed_origins,
                         allowed_hosts=allowed_hosts, abandoned_grace_s=abandoned_grace_s,
                         workers=0 if ray_address is not None else default_worker_count() if workers is None else workers,
                         lease_s=lease_s, worker_log_level=log_level.upper(), worker_nice=worker_nice,
                         ray_address=ray_address, ray_actors=ray_actors)
    app = create_app(settings, token=token, options=options)
    rendering = (f"Ray render actors ({'a local Ray instance' if ray_address == 'local' else ray_address})"
                 if ray_address is not None else
                 f"{options.workers} render worker process{'es' if options.workers > 1 else ''}"
                 if options.workers else "rendering in this process")
    click.echo(f"echo-os serving {settings.home} on http://{host}:{port} "
               f"({'token required' if token else 'no token: this machine only'}; {rendering})", err=True)
    shown = "<this machine's address>" if host.strip("[]") in ("0.0.0.0", "::", "") else host.strip("[]")
    shown = f"[{shown}]" if ":" in shown else shown
    # With a token a browser cannot send the header: it signs in once (the token itself is not echoed into logs).
    click.echo(f"gallery in a browser: http://{shown}:{port}/api/gallery{'?token=<token>' if token else ''}",
               err=True)
    click.echo(f"studio in a browser: http://{shown}:{port}/api/studio{'?token=<token>' if token else ''}",
               err=True)
    # --log-level applies to echo-os's own server log too (a worker's start is INFO, a problem WARNING).
    logging.getLogger("echo_os").setLevel(log_level.upper())
    if not options.workers and ray_address is None:
        # The worker thread renders while this one answers requests: hand the GIL over every 1 ms instead
        # of Python's default 5 ms, so a submission waits at most that long behind the worker's Python code.
        sys.setswitchinterval(0.001)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5,
                            server_header=False)
    uvicorn.Server(config).run()


def check_port_free(host: str, port: int) -> None:
    """One line and exit 2 when HOST:PORT cannot be listened on (another server has it), before anything
    starts. SO_REUSEADDR as uvicorn sets it: a port left in TIME_WAIT by a stopped server is free."""
    import socket

    if port == 0:  # the system picks a free port
        return
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as error:
            raise UsageError(f"cannot listen on {host}:{port}: {error.strerror or error} (another server has "
                             "the port?); stop it or choose another with --port") from None
