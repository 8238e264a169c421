"""Images per minute on Ray render actors (echo_os.ray_cluster), 1 actor against 2, on this machine's CPU
with the tiny random-weight SDXL from tests/tiny_models.py.

    python benchmarks/ray_throughput.py --images 24 --size 128 --steps 4 --actors 1 2

For each actor count: a local Ray instance with all the cores, that many actors (each a fraction of
the CPUs, torch threads = cores // actors, as RayPool sets them), one warm-up call per actor (weights
loaded), then `--images` one-image calls rendered on the actors and saved by this process in order.
images/min = images / (first call sent .. last image saved).

On a GPU cluster the same script measures GPU actors (`--address auto`: one actor per GPU, num_gpus=1).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--address", default=None, help="a Ray cluster (default: a local instance)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from echo_os.artifacts.store import ArtifactStore
    from echo_os.engines import choose_engine, create_engine
    from echo_os.ray_cluster import RayOptions, RayPool, render_requests_ray, start_ray
    from echo_os.requests import RenderRequest
    from echo_os.settings import Settings
    from tests.tiny_models import save_tiny_sdxl

    os.environ.setdefault("ECHO_OS_NO_MEMORY", "1")  # the figure is rendering + saving, not embedding
    ray = start_ray(args.address)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "load_average": os.getloadavg()[0],
                     "ray": ray.__version__, "cluster": ray.cluster_resources(), "settings": vars(args) | {"json": None}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = save_tiny_sdxl(tmp / "tiny-sdxl")
        for count in args.actors:
            settings = Settings(home=tmp / f"actors-{count}")
            settings.home.mkdir()
            (settings.home / "models.toml").write_text(f'[models.tiny]\ntype = "sdxl"\npath = "{folder.as_posix()}"\n')
            requests = [RenderRequest(prompt=f"a harbour at hour {i}", model="tiny", width=args.size,
                                      height=args.size, steps=args.steps, seed=i, project="bench")
                        for i in range(args.images)]
            engine = create_engine(settings, *choose_engine(settings, requests[0]))
            pool = RayPool(settings, RayOptions(address=args.address, actors=count))
            store = ArtifactStore(settings)
            try:
                warm = [[requests[0].model_copy(update={"engine": engine.name, "seed": 10_000 + n})]
                        for n in range(count)]
                list(pool.run(engine.name, engine.reason, warm))
                started = time.perf_counter()
                outcome = render_requests_ray(settings, requests, store=store, pool=pool, engine=engine, batch_size=1,
                                              resume=False)
                elapsed = time.perf_counter() - started
            finally:
                store.close()
                pool.close()
            assert len(outcome.artifacts) == args.images
            results[f"actors_{count}"] = {"images": args.images, "seconds": round(elapsed, 2),
                                          "images_per_minute": round(args.images / elapsed * 60, 1)}
            print(f"{count} actor(s): {json.dumps(results[f'actors_{count}'])}", flush=True)
    if len(args.actors) == 2:
        first, second = (results[f"actors_{n}"]["images_per_minute"] for n in args.actors)
        results["ratio"] = round(second / first, 2)
        print(f"{args.actors[1]} vs {args.actors[0]} actors: {results['ratio']}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
