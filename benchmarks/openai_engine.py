"""The openai engine against the fake OpenAI Images server (tests/fake_openai.py) on 127.0.0.1.

Two measurements (issue 13):

overhead   per-image time of OpenAIEngine.render (one image, no pacing, the response cache on or off)
           against a bare client call doing the least a caller must: client.images.generate(...) and the
           b64 PNG decoded with Pillow. The sides interleave; the figure is the median per-image difference.
           Target: at most 5 ms.

story      a 40-scene prompt list through `echo-os batch --engine openai` against a fake that allows 20
           images a minute (a sliding window answering 429 with Retry-After beyond it, like the provider),
           with the engine's pacer at 20 images/min. Target: no failed scene, wall time within 10% of
           2 minutes (39 intervals of 3 s = 117 s, plus the last image).

    python benchmarks/openai_engine.py overhead --images 200 --size 1024
    python benchmarks/openai_engine.py story --scenes 40 --per-minute 20
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def overhead(args) -> dict:
    import openai
    from PIL import Image

    from echo_os.engines import create_engine
    from echo_os.render.requests import RenderRequest
    from echo_os.settings import load_settings
    from tests.fake_openai import fake_images_server

    results = {}
    with fake_images_server() as server, tempfile.TemporaryDirectory() as tmp:
        os.environ["OPENAI_BASE_URL"] = server.base_url
        os.environ["OPENAI_API_KEY"] = "sk-bench"
        home = Path(tmp)
        (home / "echo-os.toml").write_text("[engines.openai]\nallow = true\nimages_per_minute = 1000000\n")
        settings = load_settings(home, env={})
        bare = openai.OpenAI(max_retries=0)
        size = f"{args.size}x{args.size}"

        def bare_call(i: int) -> None:
            response = bare.images.generate(model="gpt-image-1", prompt=f"bench {i}", n=1, size=size)
            Image.open(io.BytesIO(base64.b64decode(response.data[0].b64_json))).load()

        for cache in (False, True):
            engine = create_engine(settings.__class__(**{**settings.__dict__, "response_cache": cache}), "openai",
                                   "bench")
            engine.render([RenderRequest(prompt="warm-up", width=args.size, height=args.size, engine="openai")])
            for i in range(40):  # the fake's PNGs (32 colours) encoded before anything is timed
                bare_call(-1 - i)
            bare_s, engine_s = [], []
            for i in range(args.images):
                started = time.perf_counter()
                bare_call(i)
                bare_s.append(time.perf_counter() - started)
                request = RenderRequest(prompt=f"bench {i} {cache}", seed=i, width=args.size, height=args.size,
                                        engine="openai")
                started = time.perf_counter()
                engine.render([request])
                engine_s.append(time.perf_counter() - started)
            diffs = [e - b for e, b in zip(engine_s, bare_s)]
            results["cache on" if cache else "cache off"] = {
                "bare_median_ms": round(statistics.median(bare_s) * 1000, 2),
                "engine_median_ms": round(statistics.median(engine_s) * 1000, 2),
                "overhead_median_ms": round(statistics.median(diffs) * 1000, 2),
                "images": args.images}
    return results


def story(args) -> dict:
    from tests.fake_openai import fake_images_server
    from tests.helpers import run_cli

    with fake_images_server(images_per_minute=args.per_minute) as server, tempfile.TemporaryDirectory() as tmp:
        os.environ["OPENAI_BASE_URL"] = server.base_url
        os.environ["OPENAI_API_KEY"] = "sk-bench"
        home = Path(tmp)
        (home / "echo-os.toml").write_text(f"[engines.openai]\nallow = true\nimages_per_minute = {args.per_minute}\n")
        prompts = home / "prompts.txt"
        prompts.write_text("".join(f"scene {i}: a lighthouse at dusk, gull number {i}\n" for i in range(args.scenes)))
        os.environ["ECHO_OS_NO_MEMORY"] = "1"
        started = time.perf_counter()
        code, out, err = run_cli("--home", str(home), "batch", "bench", f"@{prompts}", "--engine", "openai",
                                 "--size", "1024x1024", "--json")
        wall = time.perf_counter() - started
        result = json.loads(out) if code == 0 else {}
        rejected = sum(1 for _ in server.requests) - server.served
        return {"exit_code": code, "scenes": args.scenes, "rendered": result.get("rendered"), "wall_s": round(wall, 1),
                "requests": len(server.requests), "answered_429": rejected, "per_minute": args.per_minute,
                "target_s": round(60 * args.scenes / args.per_minute, 1), "error": err.splitlines()[-1] if code else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    one = sub.add_parser("overhead")
    one.add_argument("--images", type=int, default=200)
    one.add_argument("--size", type=int, default=1024)
    two = sub.add_parser("story")
    two.add_argument("--scenes", type=int, default=40)
    two.add_argument("--per-minute", type=float, default=20)
    for each in (one, two):
        each.add_argument("--json", default=None, help="write the figures here too")
    args = parser.parse_args()
    figures = overhead(args) if args.what == "overhead" else story(args)
    import openai

    figures["machine"] = {"python": platform.python_version(), "openai": openai.__version__, "cpus": os.cpu_count(),
                          "load": os.getloadavg()}
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
