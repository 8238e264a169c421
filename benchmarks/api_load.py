"""HTTP API load: submission latency under concurrent clients, and images per minute with dynamic
batching on and off. Everything runs against a real `echo-os serve` process on 127.0.0.1 rendering with
the tiny random-weight SDXL from tests/tiny_models.py.

    python benchmarks/api_load.py --clients 50 --per-client 20 --rate 2 --images 64 --steps 4 --size 32 --max-batch 16

1. Submission latency: `--clients` concurrent clients each POST `--per-client` render jobs to
   /api/render; the latency of every POST (until the 202 with the job id, i.e. the job is durably in
   SQLite) is recorded; p50 / p99 reported. Open loop first (each client `--rate` requests per second,
   as independent users), then closed loop (each client as fast as it is answered: the server's
   saturation); each also on GET /health, the floor this machine and client set. The
   worker renders the submitted jobs meanwhile, as it would in use.
2. Throughput: a fresh server per mode (`--max-batch N` = on, `--max-batch 1` = off), the pipeline warmed
   by one job, then `--images` single-image requests submitted at once; images per minute = images /
   (time from the first POST until the last job has succeeded). Median of `--repeats` rounds.

Targets (issue 4): submission p99 <= 50 ms; dynamic batching >= 1.5x images per minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, home: Path, *args: str, threads: int):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   OMP_NUM_THREADS=str(threads))
        self.log = open(home / f"server-{self.port}.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "echo_os", "--home", str(home), "serve", "--port", str(self.port),
             "--log-level", "warning", *args], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start; see {self.log.name}")
            time.sleep(0.1)

    def stop(self) -> None:
        # SIGTERM: the server stops its worker processes before it exits (a SIGKILL would leave them
        # stopping on their own while the temporary workspace is deleted). Queued jobs stay queued.
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def render_body(i: int, steps: int, size: int, project: str) -> dict:
    return {"prompt": f"a lighthouse keeper, scene {i}", "model": "tiny", "steps": steps, "cfg": 5.0,
            "size": f"{size}x{size}", "seed": i, "project": project}


async def wait_all(client, job_ids: list[str], timeout: float) -> None:
    pending = set(job_ids)
    deadline = time.monotonic() + timeout
    while pending:
        page = (await client.get("/api/jobs", params={"status": "succeeded", "limit": 500})).json()["items"]
        pending -= {job["id"] for job in page}
        failed = (await client.get("/api/jobs", params={"status": "failed", "limit": 50})).json()["items"]
        if any(job["id"] in pending for job in failed):
            raise SystemExit(f"a job failed: {failed[0]['error']}")
        if pending and time.monotonic() > deadline:
            raise SystemExit(f"{len(pending)} jobs unfinished after {timeout}s")
        await asyncio.sleep(0.05)


async def submission_latency(url: str, clients: int, per_client: int, steps: int, size: int,
                             rate: float | None, path: str = "/api/render") -> dict:
    """Latency of each POST. rate=None: closed loop (each client sends its next request when the last
    is answered: this measures the server at saturation). rate=R: open loop, each client sends R
    requests per second on a fixed schedule (random phase), answered or not, as independent users do."""
    import random

    import httpx

    latencies: list[float] = []
    start_gate = asyncio.Event()

    async def one(client, n: int, i: int) -> None:
        started = time.perf_counter()
        if path == "/api/render":
            response = await client.post(path, json=render_body(n * per_client + i, steps, size, "load"))
            expected = 202
        else:
            response = await client.get(path)
            expected = 200
        latencies.append(time.perf_counter() - started)
        if response.status_code != expected:
            raise SystemExit(f"request refused: {response.status_code} {response.text}")

    async def client_loop(n: int) -> None:
        limits = httpx.Limits(max_connections=per_client if rate else 1)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            await client.get("/health")  # open the connection before the clock starts
            await start_gate.wait()
            if rate is None:
                for i in range(per_client):
                    await one(client, n, i)
                return
            began = time.perf_counter() + random.random() / rate
            sent = []
            for i in range(per_client):
                delay = began + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent.append(asyncio.create_task(one(client, n, i)))
            await asyncio.gather(*sent)

    tasks = [asyncio.create_task(client_loop(n)) for n in range(clients)]
    await asyncio.sleep(0.5)
    began = time.perf_counter()
    start_gate.set()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - began
    ordered = sorted(latencies)
    return {"route": path, "mode": "closed loop" if rate is None else f"open loop, {rate:g}/s per client",
            "requests": len(ordered), "clients": clients,
            "p50_ms": round(1000 * ordered[len(ordered) // 2], 2),
            "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
            "max_ms": round(1000 * ordered[-1], 2), "requests_per_s": round(len(ordered) / wall, 1)}


async def warm_up(url: str, steps: int, size: int) -> None:
    """One job through the worker first: the first render imports torch and loads the pipeline, which
    holds the GIL for seconds; a server is cold once, not on every request."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        warm = (await client.post("/api/render", json=render_body(0, steps, size, "warm"))).json()["job_id"]
        await wait_all(client, [warm], 600)


async def throughput(url: str, images: int, steps: int, size: int, repeats: int) -> dict:
    import httpx

    await warm_up(url, steps, size)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        rates = []
        for round_ in range(repeats):
            began = time.perf_counter()
            responses = await asyncio.gather(*[
                client.post("/api/render", json=render_body(10_000 * (round_ + 1) + i, steps, size, "throughput"))
                for i in range(images)])
            await wait_all(client, [r.json()["job_id"] for r in responses], 3600)
            rates.append(images / (time.perf_counter() - began) * 60)
    return {"images_per_minute": round(statistics.median(rates), 1), "rounds": [round(r, 1) for r in rates]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--per-client", type=int, default=20)
    parser.add_argument("--rate", type=float, default=2.0, help="open-loop requests per second per client")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=32,
                        help="image side; at 32 the tiny pipeline's per-call overhead dominates, as a real model's "
                             "does on a GPU; at 64 and up it is compute-bound on a CPU and batching gains nothing")
    parser.add_argument("--max-batch", type=int, default=16, help="the batching-on setting")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the server (torch threads)")
    parser.add_argument("--workers", type=int, default=None,
                        help="`echo-os serve --workers N` (render worker processes; 0: a thread in the server; "
                             "default: serve's own default, one per GPU, 1 without)")
    parser.add_argument("--worker-nice", type=int, nargs="+", default=None, metavar="N",
                        help="`serve --worker-nice N` (the worker processes' niceness; serve's default: 10 on the "
                             "CPU); several values run the latency part once each, back to back, in one run")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    import fastapi
    import torch
    import uvicorn

    from tests.tiny_models import make_tiny_workspace, save_tiny_sdxl

    results: dict = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, {platform.machine()}, "
        f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU only'}",
        "load_average": os.getloadavg()[0], "python": platform.python_version(), "torch": torch.__version__,
        "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__, "settings": vars(args) | {"json": None},
    }
    workers = () if args.workers is None else ("--workers", str(args.workers))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = save_tiny_sdxl(tmp / "tiny-sdxl")

        def workspace(name: str) -> Path:
            return make_tiny_workspace(tmp / name, folder)

        nices = [None] if args.worker_nice is None else args.worker_nice
        for nice in [] if args.skip_latency else nices:
            extra = () if nice is None else ("--worker-nice", str(nice))
            suffix = "" if nice is None or len(nices) == 1 else f"@nice{nice}"
            server = Server(workspace(f"latency{suffix}"), "--max-batch", str(args.max_batch), *workers, *extra,
                            threads=args.threads)
            try:
                asyncio.run(warm_up(server.url, args.steps, args.size))
                runs = [("submission", args.rate, "/api/render"), ("health", args.rate, "/health"),
                        ("submission_closed_loop", None, "/api/render"), ("health_closed_loop", None, "/health")]
                for name, rate, path in runs:
                    results[name + suffix] = asyncio.run(submission_latency(
                        server.url, args.clients, args.per_client, args.steps, args.size, rate, path))
                    results[name + suffix]["load_average_after"] = os.getloadavg()[0]
                    print(f"{name}{suffix}: {json.dumps(results[name + suffix])}", flush=True)
            finally:
                server.stop()

        modes = () if args.skip_throughput else (("batching_on", args.max_batch), ("batching_off", 1))
        for mode, max_batch in modes:
            server = Server(workspace(mode), "--max-batch", str(max_batch), *workers, threads=args.threads)
            try:
                results[mode] = asyncio.run(throughput(server.url, args.images, args.steps, args.size, args.repeats))
            finally:
                server.stop()
            print(f"{mode} (--max-batch {max_batch}): {json.dumps(results[mode])}", flush=True)
    if not args.skip_throughput:
        results["batching_speedup"] = round(results["batching_on"]["images_per_minute"]
                                            / results["batching_off"]["images_per_minute"], 2)
        print(f"dynamic batching speed-up: {results['batching_speedup']}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
