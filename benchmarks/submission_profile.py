"""Where a submission's time goes (issue 25, section 4): POST /api/render in-process (httpx
ASGITransport, the app's lifespan running, no render worker so nothing competes), each stage timed in
wall and CPU time, then the whole path under cProfile.

    python benchmarks/submission_profile.py --requests 300 --concurrency 1 50

Stages, per submission (each is measured by wrapping the function that does it):
- request: the whole ASGI call on the event loop (JSON parsing and RenderBody validation, the
  idempotency lookup, building and checking the RenderRequest, waiting for the commit, the response);
  its CPU is the loop thread's.
- find_key: the Idempotency-Key lookup (a read on a threadpool thread).
- build_render_request: the front door's checks (models.toml, styles, sizes): build_render_request on
  the loop before issue 23's prepare(), prepare_body on a threadpool thread since.
- admit: JobStore.admit on the writer thread: the INSERTs and the COMMIT with synchronous=FULL (an
  fsync of the WAL); with several submissions in flight, one admit stores them all (group commit), and
  its time is shared.
- on_stored: the event fan-out after the commit (the worker woken, queued events).

CPU time is what this process spent, which other programs on a loaded machine do not change much;
wall time is what they do change. Every request carries an Idempotency-Key, as a retrying client's does
(`--no-key`: none, as benchmarks/api_load.py posts).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class Stages:
    """Wall and thread-CPU seconds per stage, summed over calls."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.walls: dict[str, list[float]] = defaultdict(list)
        self.lock = threading.Lock()

    def add(self, name: str, wall: float, cpu: float) -> None:
        with self.lock:
            self.wall[name] += wall
            self.cpu[name] += cpu
            self.calls[name] += 1
            self.walls[name].append(wall)

    def wrap(self, owner, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - wall, time.thread_time() - cpu)

        setattr(owner, attribute, timed)

    def reset(self) -> None:
        self.wall.clear()
        self.cpu.clear()
        self.calls.clear()
        self.walls.clear()

    def spread(self, name: str) -> dict[str, float]:
        """p50, p99 and max of one stage's calls, in ms."""
        ordered = sorted(self.walls[name]) or [0.0]
        return {"p50_ms": round(1000 * ordered[len(ordered) // 2], 3),
                "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
                "max_ms": round(1000 * ordered[-1], 3)}


def timed_app(app, stages: Stages):
    async def asgi(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return await app(scope, receive, send)
        finally:
            stages.add("request", time.perf_counter() - wall, time.thread_time() - cpu)

    return asgi


def body(i: int) -> dict:
    return {"prompt": f"a lighthouse keeper, scene {i}", "model": "tiny", "steps": 4, "cfg": 5.0,
            "size": "32x32", "seed": i, "project": "profile"}


KEYED = True  # --no-key: as benchmarks/api_load.py posts, without an Idempotency-Key


async def submit_all(client, count: int, concurrency: int, offset: int) -> list[float]:
    latencies: list[float] = []
    queue = list(range(offset, offset + count))

    async def one_client() -> None:
        while queue:
            i = queue.pop()
            started = time.perf_counter()
            headers = {"Idempotency-Key": uuid.uuid4().hex} if KEYED else {}
            response = await client.post("/api/render", json=body(i), headers=headers)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 202:
                raise SystemExit(f"refused: {response.status_code} {response.text}")

    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return latencies


async def run(settings, requests: int, concurrencies: list[int], profile_path: Path | None) -> dict:
    import httpx

    from echo_os.api import create_app, deps
    from echo_os.api.jobs import JobStore
    from echo_os.api.routes import render as render_routes

    stages = Stages()
    stages.wrap(JobStore, "admit", "admit")
    stages.wrap(JobStore, "find_key", "find_key")
    # the front door: build_render_request on the loop before issue 23, prepare_body on a threadpool after
    front = "prepare_body" if hasattr(render_routes, "prepare_body") else "build_render_request"
    stages.wrap(render_routes, front, "build_render_request")
    original_init = deps.Submitter.__init__

    def init(self, jobs, on_stored):
        def timed_on_stored(new):
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                on_stored(new)
            finally:
                stages.add("on_stored", time.perf_counter() - wall, time.thread_time() - cpu)

        original_init(self, jobs, timed_on_stored)

    deps.Submitter.__init__ = init
    app = create_app(settings, start_worker=False)
    results: dict = {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=timed_app(app, stages))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
            await submit_all(client, 30, 1, 0)  # warm: imports, first connections, caches
            offset = 1000
            for concurrency in concurrencies:
                stages.reset()
                began_cpu, began = time.process_time(), time.perf_counter()
                latencies = await submit_all(client, requests, concurrency, offset)
                process_cpu, wall = time.process_time() - began_cpu, time.perf_counter() - began
                offset += requests
                ordered = sorted(latencies)
                figures = {
                    "requests": requests, "concurrency": concurrency,
                    "latency_p50_ms": round(1000 * statistics.median(ordered), 3),
                    "latency_p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
                    "process_cpu_ms_per_request": round(1000 * process_cpu / requests, 3),
                    "requests_per_s": round(requests / wall, 1),
                    "commits": stages.calls["admit"],
                    "stages_per_request": {name: {"wall_ms": round(1000 * stages.wall[name] / requests, 3),
                                                  "cpu_ms": round(1000 * stages.cpu[name] / requests, 3),
                                                  "calls": stages.calls[name], **stages.spread(name)}
                                           for name in ("request", "find_key", "build_render_request", "admit",
                                                        "on_stored")},
                }
                results[f"concurrency_{concurrency}"] = figures
                print(json.dumps(figures), flush=True)
            # cProfile of the loop thread over sequential submissions (the writer thread: `admit` above),
            # timed in the thread's CPU time: a wall-clock profile on a loaded machine charges whichever
            # function was running when the thread lost the CPU.
            profiler = cProfile.Profile(time.thread_time)
            profiler.enable()
            await submit_all(client, requests, 1, offset)
            profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
            stats.print_stats(r"echo_os|fastapi/routing|pydantic|starlette/(requests|responses)|json", 45)
            stats.sort_stats("tottime").print_stats(25)
            results["cprofile_top"] = out.getvalue()
            if profile_path is not None:
                stats.dump_stats(str(profile_path))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--pstats", type=Path, default=None, help="write the cProfile data here (snakeviz, pstats)")
    parser.add_argument("--print-profile", action="store_true")
    parser.add_argument("--no-key", action="store_true", help="post without an Idempotency-Key")
    parser.add_argument("--checkpoint-in-commit", action="store_true",
                        help="as before issue 25: SQLite's auto-checkpoint runs inside the COMMIT of a submission "
                             "(no background checkpointer), to compare against")
    args = parser.parse_args()
    if args.checkpoint_in_commit:
        from echo_os.sqlite import BackgroundCheckpointer

        BackgroundCheckpointer.take_over = staticmethod(lambda db: None)
        BackgroundCheckpointer.start = lambda self: None
    global KEYED
    KEYED = not args.no_key

    from echo_os.settings import Settings
    from tests.tiny_models import make_tiny_workspace, save_tiny_sdxl

    print(f"load average at the start: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = save_tiny_sdxl(tmp / "tiny-sdxl")
        home = make_tiny_workspace(tmp / "ws", folder)
        results = asyncio.run(run(Settings(home=home), args.requests, args.concurrency, args.pstats))
    results["load_average_end"] = os.getloadavg()[0]
    if args.print_profile:
        print(results["cprofile_top"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
