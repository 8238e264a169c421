"""Story throughput: a 32-scene story through echo-os's scheduler vs the same scenes one by one in diffusers.

Both sides render the same images: the story's composed prompts, negative prompts and seeds (taken from
the plan), the same steps, guidance and size, each image from its own CPU torch.Generator. The
echo-os side is `render_plan` (scheduler batches of `--batch-size` images, or the engine's automatic
size, then artifacts, story.json, contact sheet); the plain side is a loop of
`StableDiffusionXLPipeline(prompt, generator=...)` calls, one scene at a time, each image saved as PNG.
Every repeat renders into a fresh workspace (otherwise resume would skip every scene), the two sides
interleaved; medians of `--repeats`. The images of both sides are compared: they must agree within 1
level per pixel, or the comparison is not of the same work.

    python benchmarks/story_throughput.py --scenes 32 --steps 4 --size 64 --repeats 3

With no GPU (the development machines) this uses the tiny random-weight SDXL from tests/tiny_models.py
on the CPU: it measures what echo-os adds or saves around the pipeline, not SDXL speed. On a CUDA
machine, `--model-dir` points at a real SDXL diffusers folder and `--device cuda` runs the same
comparison there.
"""

from __future__ import annotations

import argparse
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

CHARACTERS = {
    "keeper": ("Elias Marr", "an old lighthouse keeper with a grey beard and a navy peacoat", 1868),
    "girl": ("Maren", "a girl of ten in a yellow raincoat", 2024),
}
LOCATIONS = {"lantern": "a brass lantern room", "gallery": "an iron gallery high above the sea",
             "quay": "a stone quay", "cottage": "a whitewashed cottage kitchen"}
LIGHT = ["golden morning light", "flat grey light", "storm light", "moonlight", "pale dawn light"]
ACTIONS = ["polishes the lens", "watches the squall", "climbs the stairs", "writes in the logbook",
           "mends a net", "lights the lamp", "carries a lantern", "looks out to sea"]


def write_story(folder: Path, scenes: int, steps: int, size: int) -> Path:
    """A storyboard of `scenes` rows with a bible, settings pinned so every scene batches together."""
    folder.mkdir(parents=True, exist_ok=True)
    characters = "\n".join(
        f"  {cid}:\n    name: {name}\n    description: {description}\n    seed: {seed}"
        for cid, (name, description, seed) in CHARACTERS.items())
    locations = "\n".join(f"  {lid}: {text}" for lid, text in LOCATIONS.items())
    (folder / "STORY_BIBLE.md").write_text(
        f"---\ntitle: Throughput\nmodel: bench\ndefaults:\n  steps: {steps}\n  cfg: 6.0\n  size: {size}x{size}\n"
        f"  scheduler: euler\nstyle:\n  prompt: documentary photo, 35mm\n  negative: text, watermark\n"
        f"characters:\n{characters}\nlocations:\n{locations}\n---\n", encoding="utf-8")
    rows = ["scene,slug,description,characters,location,lighting"]
    ids, places = list(CHARACTERS), list(LOCATIONS)
    for n in range(1, scenes + 1):
        cast = ids[n % 2] if n % 5 else ";".join(ids)
        rows.append(f"{n},scene-{n},{ACTIONS[n % len(ACTIONS)]},{cast},{places[n % len(places)]},"
                    f"{LIGHT[n % len(LIGHT)]}")
    (folder / "story.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder / "story.csv"


def plain_diffusers(pipe, plan, out: Path, device: str) -> tuple[float, list]:
    """Every scene alone, one image per call, saved as PNG. Returns (seconds, images in scene order)."""
    import torch

    images = []
    started = time.perf_counter()
    for scene in plan.scenes:
        request = scene.request
        for seed in request.seeds:
            image = pipe(prompt=request.prompt, negative_prompt=request.negative_prompt,
                         generator=torch.Generator("cpu").manual_seed(seed), num_inference_steps=request.steps,
                         guidance_scale=request.cfg, width=request.width, height=request.height).images[0]
            image.save(out / f"{scene.scene:03d}-{seed}.png")
            images.append(image)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, images


def through_scheduler(home: Path, models_toml: str, plan, batch_size: int | None, engine_name: str):
    from echo_os.engines import create_engine
    from echo_os.settings import Settings
    from echo_os.story.render import render_plan

    home.mkdir(parents=True)
    (home / "models.toml").write_text(models_toml, encoding="utf-8")
    settings = Settings(home=home)
    engine = create_engine(settings, engine_name, "benchmark")
    started = time.perf_counter()
    result = render_plan(settings, plan, batch_size=batch_size, engine=engine, clip="none")
    total = time.perf_counter() - started
    return result, total


def max_difference(a_images, b_images) -> int:
    import numpy as np

    return max(int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())
               for a, b in zip(a_images, b_images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, action="append", default=None,
                        help="scheduler batch sizes to measure (repeatable); default: automatic only")
    parser.add_argument("--model-dir", type=Path, default=None, help="a real SDXL diffusers folder (default: tiny)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    import torch
    from diffusers import StableDiffusionXLPipeline
    from PIL import Image

    from echo_os.story import plan_story
    from tests.tiny_models import save_tiny_sdxl

    batch_sizes = args.batch_size or [None]
    engine_name = "sdxl" if args.device == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = args.model_dir or save_tiny_sdxl(tmp / "tiny-sdxl")
        models_toml = f'[models.bench]\ntype = "sdxl"\npath = "{folder.as_posix()}"\n'
        plan = plan_story("Throughput", write_story(tmp / "story", args.scenes, args.steps, args.size))
        dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
        pipe = StableDiffusionXLPipeline.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                                         torch_dtype=dtype).to(args.device)
        pipe.set_progress_bar_config(disable=True)

        # Warm both paths: first-call allocations, the engine's pipeline load and weights hash.
        warm = tmp / "warm"
        warm.mkdir()
        plain_diffusers(pipe, plan.model_copy(update={"scenes": plan.scenes[:1]}), warm, args.device)
        through_scheduler(tmp / "ws-warm", models_toml, plan.model_copy(update={"scenes": plan.scenes[:1]}),
                          None, engine_name)

        plain_s: list[float] = []
        echo_s: dict[str, list[float]] = {str(b or "auto"): [] for b in batch_sizes}
        echo_total_s: dict[str, list[float]] = {str(b or "auto"): [] for b in batch_sizes}
        used: dict[str, dict] = {}
        worst = 0
        for repeat in range(args.repeats):
            out = tmp / f"plain-{repeat}"
            out.mkdir()
            seconds, plain_images = plain_diffusers(pipe, plan, out, args.device)
            plain_s.append(seconds)
            for batch in batch_sizes:
                label = str(batch or "auto")
                result, total = through_scheduler(tmp / f"ws-{label}-{repeat}", models_toml, plan, batch, engine_name)
                echo_s[label].append(result.elapsed_s)
                echo_total_s[label].append(total)
                used[label] = result.batch_sizes
                ours = []
                for scene in result.scenes:
                    for artifact in scene.artifacts:
                        with Image.open(artifact.image_path) as image:
                            ours.append(image.convert("RGB"))
                worst = max(worst, max_difference(ours, plain_images))

        images = plan.image_count
        per_minute = lambda seconds: round(60.0 * images / statistics.median(seconds), 1)  # noqa: E731 - a one-line helper local to this report
        figures = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} cores, {platform.machine()}, "
                       + (torch.cuda.get_device_name() if args.device == "cuda" else "CPU only"),
            "torch": torch.__version__, "model": "tiny random SDXL" if args.model_dir is None else str(args.model_dir),
            "scenes": args.scenes, "images": images, "steps": args.steps, "size": args.size,
            "repeats": args.repeats,
            "plain_diffusers_one_by_one": {"seconds_median": round(statistics.median(plain_s), 3),
                                           "images_per_minute": per_minute(plain_s)},
            "scheduler": {
                label: {"batch_size_used": used[label],
                        "render_seconds_median": round(statistics.median(echo_s[label]), 3),
                        "images_per_minute": per_minute(echo_s[label]),
                        "with_sheet_and_story_json_seconds_median": round(statistics.median(echo_total_s[label]), 3),
                        "speedup_vs_plain": round(statistics.median(plain_s) / statistics.median(echo_s[label]), 3)}
                for label in echo_s},
            "max_pixel_difference_vs_plain": worst,
        }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
