"""Images per minute on Ray render actors (echo_os.render.ray), for several actor counts and torch threads
per actor, on this machine's CPU with the tiny random-weight SDXL from tests/tiny_models.py. The whole table
comes from one run:

    python benchmarks/ray_throughput.py --images 12 --size 128 --steps 4 --configs 1x1 2x1 1x2 --json ray.json

A config AxT is A actors with T torch threads each (RayOptions.threads). For each: a local Ray instance with
all the cores, the actors (each a fraction of the CPUs, so none waits for a whole core), one warm-up call per
actor (weights loaded), then `--images` one-image calls rendered on the actors and saved by this process in
order. images/min = images / (first call sent .. last image saved). The 1-minute load average is recorded
before and after each config: on a shared machine it says how much the figures mean. The actors run at
nice 0 here (`--niceness`; Ray starts its workers at 15, which on a busy machine hands them only the idle
CPU, the same amount for one actor as for two).

On a GPU cluster the same script measures GPU actors (`--address auto --configs 1x0 4x0`: T=0 leaves torch's
threads alone; one actor per GPU, num_gpus=1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_config(text: str) -> tuple[int, int]:
    actors, _, threads = text.partition("x")
    try:
        return int(actors), int(threads or 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a config is ACTORSxTHREADS (e.g. 2x1), not {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--configs", type=parse_config, nargs="+", default=[(1, 1), (2, 1), (1, 2)],
                        help="ACTORSxTHREADS each (default: 1x1 2x1 1x2)")
    parser.add_argument("--address", default=None, help="a Ray cluster (default: a local instance)")
    parser.add_argument("--niceness", type=int, default=0,
                        help="the actors' nice level on a local instance (Ray's default is 15: on a machine shared "
                             "with other work they then get only the cores nobody else wants, whatever their number)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.address is None:
        os.environ["RAY_worker_niceness"] = str(args.niceness)  # read by the raylet that start_ray starts

    from echo_os.artifacts.store import ArtifactStore
    from echo_os.render.ray import RayOptions, RayPool, start_ray
    from echo_os.render.requests import RenderRequest
    from echo_os.render.scheduler import render_requests
    from echo_os.settings import Settings
    from tests.tiny_models import make_tiny_workspace, save_tiny_sdxl

    os.environ.setdefault("ECHO_OS_NO_MEMORY", "1")  # the figure is rendering + saving, not embedding
    ray = start_ray(args.address)
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "cores": os.cpu_count(), "ray": ray.__version__,
                     "cluster": ray.cluster_resources(),
                     "settings": {"images": args.images, "size": args.size, "steps": args.steps,
                                  "configs": [f"{a}x{t}" for a, t in args.configs], "address": args.address,
                                  "niceness": args.niceness if args.address is None else None},
                     "rows": []}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = save_tiny_sdxl(tmp / "tiny-sdxl")
        for number, (count, threads) in enumerate(args.configs):
            settings = Settings(home=make_tiny_workspace(tmp / f"run-{number}", folder))
            requests = [RenderRequest(prompt=f"a harbour at hour {i}", model="tiny", width=args.size,
                                      height=args.size, steps=args.steps, seed=i, project="bench")
                        for i in range(args.images)]
            pool = RayPool(settings, RayOptions(address=args.address, actors=count, threads=threads or None))
            engine = pool.engine(requests[0], engine_cancel=False)  # as `batch --ray` makes it
            store = ArtifactStore(settings)
            load_before = os.getloadavg()[0]
            try:
                for index in range(count):  # one warm-up call per actor (its weights loaded), nothing saved
                    warm = requests[0].model_copy(update={"engine": engine.name, "seed": 10_000 + index})
                    pool.render_on(index, engine.name, engine.reason, [warm], engine_cancel=False)
                started = time.perf_counter()
                outcome = render_requests(settings, requests, store=store, engine=engine, batch_size=1)
                elapsed = time.perf_counter() - started
                calls = [stats["calls_done"] - 1 if stats else None for stats in pool.stats()]  # less the warm-up
            finally:
                store.close()
                pool.close()
            assert len(outcome.artifacts) == args.images
            row = {"actors": count, "threads_each": pool.threads, "images": args.images, "seconds": round(elapsed, 2),
                   "images_per_minute": round(args.images / elapsed * 60, 1),
                   "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
                   "calls_per_actor": calls,
                   # the actors' denoising time over their wall time: 1.0 = every actor busy all the time
                   "denoise_s": round(sum(a.meta.timings.get("denoise_s", 0) for a in outcome.artifacts), 2)}
            row["actor_busy"] = round(row["denoise_s"] / (count * elapsed), 2)
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
    base = results["rows"][0]["images_per_minute"]
    for row in results["rows"]:
        row["vs_first"] = round(row["images_per_minute"] / base, 2)
    print("\n| actors | torch threads each | images | seconds | images/min | vs first row | load before/after |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in results["rows"]:
        print(f"| {row['actors']} | {row['threads_each']} | {row['images']} | {row['seconds']} | "
              f"{row['images_per_minute']} | {row['vs_first']}x | {row['load_before']} / {row['load_after']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
