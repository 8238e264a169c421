"""Starvation under load (issue 25): what a user of a busy workstation gets from `echo-os serve` on the
CPU while other programs keep every core busy, with the render worker at several nicenesses.

    python benchmarks/starvation.py --burners 0 4 8 --nice 0 5 10 --jobs 3 --steps 8 --size 64

For each number of competing busy processes (`--burners`: CPU burners this script starts, each a Python
busy loop at the user's own niceness 0, stopped by the script and, should it die, by themselves after
`--burn-max-s`) and each worker niceness (`--nice`, `serve --worker-nice N`), a fresh `echo-os serve
--workers 1 --max-batch 1` with the tiny random-weight SDXL (tests/tiny_models.py), warmed by one job
before the burners start:

1. render time: `--jobs` tiny jobs (`--size`, `--steps`) submitted at once; per job the time from its POST
   until it has succeeded (what the user waits), and the time until the last one is done; a job not done
   within `--job-timeout` s is counted as not done.
2. submission latency: `--clients` clients posting `--per-client` render jobs each, open loop at `--rate`
   per second per client (benchmarks/api_load.py's measurement), while the worker renders.

The table printed (and written with `--json`) has one row per (burners, nice). Everything the script
starts it stops: burners by pid, the server with SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from api_load import Server, render_body, submission_latency, warm_up  # noqa: E402 - after the sys.path line above

BURNER = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


class Burners:
    """`count` busy-looping processes, each bounded to `max_s` seconds by itself."""

    def __init__(self, count: int, max_s: float):
        self.processes = [subprocess.Popen([sys.executable, "-c", BURNER.format(seconds=max_s)])
                          for _ in range(count)]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def render_times(url: str, jobs: int, steps: int, size: int, timeout: float) -> dict:
    """Submit `jobs` tiny jobs at once; seconds from each POST until its job succeeded."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        began = time.perf_counter()
        posted: dict[str, float] = {}
        for i in range(jobs):
            body = render_body(50_000 + i, steps, size, "starvation")
            posted[(await client.post("/api/render", json=body)).json()["job_id"]] = time.perf_counter()
        done: dict[str, float] = {}
        deadline = began + timeout
        while len(done) < jobs and time.perf_counter() < deadline:
            for job_id in set(posted) - set(done):
                job = (await client.get(f"/api/jobs/{job_id}")).json()
                if job["status"] == "succeeded":
                    done[job_id] = time.perf_counter() - posted[job_id]
                elif job["status"] in ("failed", "cancelled"):
                    raise SystemExit(f"job {job_id} {job['status']}: {job['error']}")
            await asyncio.sleep(0.1)
        waits = sorted(done.values())
        stalled = (await client.get("/api/workers")).json()["items"][0]
    return {"jobs": jobs, "done": len(done), "timeout_s": timeout,
            "median_s": round(statistics.median(waits), 2) if waits else None,
            "last_s": round(waits[-1], 2) if len(waits) == jobs else None,
            "worker_step_s": stalled.get("step_s"), "worker_stalled": stalled.get("stalled")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burners", type=int, nargs="+", default=[0, 4, 8])
    parser.add_argument("--nice", type=int, nargs="+", default=[0, 5, 10])
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--job-timeout", type=float, default=120.0)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-client", type=int, default=10)
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--burn-max-s", type=float, default=600.0,
                        help="each burner stops by itself after this long, whatever happens to this script")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the server (torch threads)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from tests.tiny_models import make_tiny_workspace, save_tiny_sdxl

    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "machine": f"{os.cpu_count()} cores, {platform.machine()}, "
                                f"{'CUDA' if torch.cuda.is_available() else 'CPU only'}",
                     "load_average_start": os.getloadavg()[0], "settings": vars(args) | {"json": None}, "rows": []}
    print(f"load average at the start: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = save_tiny_sdxl(tmp / "tiny-sdxl")
        for burners in args.burners:
            for nice in args.nice:
                home = make_tiny_workspace(tmp / f"b{burners}-n{nice}", folder)
                row = {"burners": burners, "nice": nice}
                server = Server(home, "--workers", "1", "--worker-nice", str(nice), "--max-batch", "1",
                                threads=args.threads)
                load = None
                try:
                    asyncio.run(warm_up(server.url, args.steps, args.size))
                    load = Burners(burners, args.burn_max_s)
                    time.sleep(1.0)  # let the burners get going
                    row["load_average_before"] = os.getloadavg()[0]
                    row["render"] = asyncio.run(render_times(server.url, args.jobs, args.steps, args.size,
                                                             args.job_timeout))
                    row["submission"] = asyncio.run(submission_latency(
                        server.url, args.clients, args.per_client, 4, 32, args.rate))
                    row["load_average_after"] = os.getloadavg()[0]
                except Exception as error:  # noqa: BLE001 - one row lost, not the table: say why and go on
                    log_tail = Path(server.log.name).read_text(errors="replace")[-2000:]
                    row["error"] = f"{type(error).__name__}: {error}"
                    print(f"burners {burners}, nice {nice}: {row['error']}; server log:\n{log_tail}", flush=True)
                finally:
                    if load is not None:
                        load.stop()
                    server.stop()
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
    print("\n| burners | worker nice | jobs done | median s | last s | POST p50 ms | POST p99 ms | load avg |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in results["rows"]:
        if "error" in row:
            print(f"| {row['burners']} | {row['nice']} | failed: {row['error']} |")
            continue
        render, post = row["render"], row["submission"]
        last = render["last_s"] if render["last_s"] is not None else f"> {render['timeout_s']:.0f}"
        print(f"| {row['burners']} | {row['nice']} | {render['done']}/{render['jobs']} | {render['median_s']} | "
              f"{last} | {post['p50_ms']} | {post['p99_ms']} | {row['load_average_before']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
