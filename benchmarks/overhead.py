"""What echo-os adds on top of diffusers: engine + artifact store + catalog vs a bare diffusers loop.

Both sides render the same N images (same prompts, seeds, steps, size, batch 1) with the tiny
random-weight SDXL from tests/tiny_models.py, on the CPU, and save each image as a PNG. Reported as the
ratio echo-os / bare, measured in one run with the two sides interleaved, median of `--repeats`.

    python benchmarks/overhead.py --images 8 --steps 20 --size 128 --repeats 5
    python benchmarks/overhead.py --images 1 --steps 12 --size 128 --repeats 5   # issue 11: one image

Targets (issue 2): in-process ratio <= 1.05; whole processes (interpreter start, imports, model load,
render, save, exit) <= 1.10. Issue 11: a single-image CLI render with Echo Memory on (the default) costs
at most 1.10x the bare process; since then a render never embeds (the next memory command does), so the
"memory on" and `--no-memory` rows run the same path and both are shown.
"""

from __future__ import annotations

import argparse
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

PROMPT = "a lighthouse keeper on a cliff, golden morning light"

BARE_SCRIPT = """
import sys, torch
from diffusers import StableDiffusionXLPipeline
folder, out, n, steps, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
pipe = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True, use_safetensors=True)
pipe.set_progress_bar_config(disable=True)
for i in range(n):
    image = pipe(prompt=sys.argv[6], generator=torch.Generator("cpu").manual_seed(1000 + i),
                 num_inference_steps=steps, guidance_scale=7.0, width=size, height=size).images[0]
    image.save(f"{out}/{i:04d}.png")
"""


def bare_in_process(pipe, out: Path, images: int, steps: int, size: int) -> float:
    import torch

    started = time.perf_counter()
    for i in range(images):
        image = pipe(prompt=PROMPT, generator=torch.Generator("cpu").manual_seed(1000 + i), num_inference_steps=steps,
                     guidance_scale=7.0, width=size, height=size).images[0]
        image.save(out / f"{i:04d}.png")
    return time.perf_counter() - started


def echo_in_process(settings, images: int, steps: int, size: int) -> float:
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.render.requests import RenderRequest
    from echo_os.render.scheduler import render_requests

    request = RenderRequest(prompt=PROMPT, model="tiny", engine="cpu", seed=1000, count=images, steps=steps,
                            cfg=7.0, width=size, height=size)
    store = ArtifactStore(settings)
    started = time.perf_counter()
    render_requests(settings, [request], store=store, batch_size=1)
    elapsed = time.perf_counter() - started
    store.close()
    return elapsed


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-processes", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    import torch
    from diffusers import StableDiffusionXLPipeline

    from echo_os.engines.sdxl import SDXLEngine
    from echo_os.render.requests import RenderRequest
    from echo_os.settings import Settings
    from tests.tiny_models import make_tiny_workspace, save_tiny_sdxl

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = save_tiny_sdxl(tmp / "tiny-sdxl")
        home = make_tiny_workspace(tmp / "ws", folder)
        settings = Settings(home=home)
        pipe = StableDiffusionXLPipeline.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
        pipe.set_progress_bar_config(disable=True)
        # Warm both paths (first-call allocations, the engine's pipeline load and weights hash).
        SDXLEngine(settings, name="cpu", force_device="cpu").render(
            [RenderRequest(prompt=PROMPT, model="tiny", steps=2, width=args.size, height=args.size)])
        bare_in_process(pipe, tmp, 1, 2, args.size)

        bare_times, echo_times = [], []
        for repeat in range(args.repeats):
            out = tmp / f"bare-{repeat}"
            out.mkdir()
            bare_times.append(bare_in_process(pipe, out, args.images, args.steps, args.size))
            echo_times.append(echo_in_process(settings, args.images, args.steps, args.size))
        in_process = statistics.median(e / b for e, b in zip(echo_times, bare_times))

        figures = {
            "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, {platform.machine()}, CPU only",
            "torch": torch.__version__, "images": args.images, "steps": args.steps, "size": args.size,
            "repeats": args.repeats, "bare_s_median": statistics.median(bare_times),
            "echo_s_median": statistics.median(echo_times), "ratio_in_process": round(in_process, 3),
        }
        print(json.dumps(figures, indent=2), flush=True)
        if not args.skip_processes:
            env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
            bare_cmd = [sys.executable, "-c", BARE_SCRIPT, str(folder), "", str(args.images), str(args.steps),
                        str(args.size), PROMPT]
            echo_cmd = [sys.executable, "-m", "echo_os", "--home", str(home), "render", PROMPT, "--model", "tiny",
                        "--engine", "cpu", "--seed", "1000", "--count", str(args.images), "--batch-size", "1",
                        "--steps", str(args.steps), "--size", f"{args.size}x{args.size}",
                        "--again"]  # every repeat renders: the same request would otherwise be shown, not rendered
            # Memory on is the default; before issue 11 it loaded the embedding models beside the render.
            # --no-memory (now a no-op kept for old scripts) is timed too, to show the two are one path.
            bare_p, echo_p, plain_p = [], [], []
            for repeat in range(args.repeats):
                out = tmp / f"bare-proc-{repeat}"
                out.mkdir()
                bare_cmd[4] = str(out)
                bare_p.append(timed(bare_cmd, env))
                echo_p.append(timed(echo_cmd, env))
                plain_p.append(timed(echo_cmd + ["--no-memory"], env))
            figures.update(bare_process_s_median=statistics.median(bare_p), echo_process_s_median=statistics.median(echo_p),
                           echo_no_memory_process_s_median=statistics.median(plain_p),
                           ratio_processes=round(statistics.median(e / b for e, b in zip(echo_p, bare_p)), 3),
                           ratio_processes_no_memory=round(statistics.median(e / b for e, b in zip(plain_p, bare_p)), 3))

    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
