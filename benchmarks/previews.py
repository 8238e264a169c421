"""Live previews' cost: render time with and without the latent previews (issue 30).

The tiny random-weight SDXL of tests/tiny_models.py on the CPU, in-process through the cpu engine
(SDXLEngine), the same request on both sides, a progress callback on both (the worker always passes one);
the sides interleave, and the figure is the median of per-repeat ratios. A tiny-model step is far
cheaper than a real SDXL step, so a preview weighs more here than it would on a real model: this is the
unfavourable case. A second figure times one preview of a 1024x1024 SDXL latent (4x128x128) alone,
which with the 0.5 s throttle bounds the overhead on any model: cost / 0.5 s.

    python benchmarks/previews.py --size 256 --steps 30 --repeats 5
    python benchmarks/previews.py --size 128 --steps 20 --repeats 3 --taesd

--taesd: the "on" side decodes its previews with TAESD (a `taesd` entry in models.toml, loaded through the
real registry and model cache): an AutoencoderTiny with TAESD-XL's architecture (diffusers' defaults, as in
madebyollin/taesdxl's config.json) and random weights, which cost the same to run as the real ones.
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
PROMPT = "a lighthouse keeper climbing the stairs at dawn"


def render_s(engine, request, previews: bool, sink: list) -> float:
    engine.previews = previews
    started = time.perf_counter()
    engine.render([request], progress=lambda event: sink.append(event.preview))
    return time.perf_counter() - started


def jpeg_width(url: str) -> int:
    """A preview's width: TAESD's are PREVIEW_MAX_SIDE wide, the linear map's the latent's (here smaller)."""
    import base64
    import io

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--taesd", action="store_true", help="previews decoded by a TAESD-XL-sized AutoencoderTiny")
    args = parser.parse_args()

    import torch

    from echo_os.engines.sdxl import SDXLEngine
    from echo_os.render.preview import PREVIEW_MAX_SIDE, PreviewThrottle, latent_preview
    from echo_os.render.requests import RenderRequest
    from echo_os.settings import Settings
    from tests.tiny_models import make_tiny_workspace, save_tiny_sdxl

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = save_tiny_sdxl(tmp / "tiny-sdxl")
        home = make_tiny_workspace(tmp / "ws", folder)
        decoder = None
        if args.taesd:
            from diffusers import AutoencoderTiny

            from echo_os.render.preview import preview_decoder

            torch.manual_seed(0)
            AutoencoderTiny().save_pretrained(tmp / "taesdxl-sized")  # TAESD-XL's architecture, random weights
            with open(home / "models.toml", "a", encoding="utf-8") as handle:
                handle.write(f'[models.taesdxl-sized]\ntype = "taesd"\npath = "{(tmp / "taesdxl-sized").as_posix()}"\n')
            decoder = preview_decoder(Settings(home=home), "cpu", torch.float32)
            assert decoder is not None
        engine = SDXLEngine(Settings(home=home), name="cpu", force_device="cpu")
        request = RenderRequest(prompt=PROMPT, model="tiny", steps=args.steps, width=args.size, height=args.size,
                                seed=7)
        render_s(engine, request, True, [])  # warm: the load, first-call allocations
        with_times, without_times, previews_sent, sharp_sent = [], [], [], []
        for _ in range(args.repeats):
            without_times.append(render_s(engine, request, False, []))
            sent: list = []
            with_times.append(render_s(engine, request, True, sent))
            previews_sent.append(sum(url is not None for url in sent))
            sharp_sent.append(sum(url is not None and jpeg_width(url) == PREVIEW_MAX_SIDE for url in sent))
        ratio = statistics.median(w / o for w, o in zip(with_times, without_times))

        latent = torch.randn(1, 4, 128, 128)
        model = decoder.model if decoder is not None else None
        latent_preview(latent, model)
        started = time.perf_counter()
        for _ in range(20):
            latent_preview(latent, model)
        per_preview = (time.perf_counter() - started) / 20

        figures = {
            "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, {platform.machine()}, CPU only",
            "torch": torch.__version__, "decoder": "taesd (TAESD-XL-sized AutoencoderTiny)" if args.taesd else "linear",
            "size": args.size, "steps": args.steps, "repeats": args.repeats,
            "without_s_median": round(statistics.median(without_times), 3),
            "with_s_median": round(statistics.median(with_times), 3),
            "previews_per_render_median": statistics.median(previews_sent),
            "taesd_previews_per_render_median": statistics.median(sharp_sent),
            "ratio_with_over_without": round(ratio, 4),
            "one_preview_of_1024px_sdxl_latent_ms": round(per_preview * 1000, 2),
            "bound_at_0.5s_throttle_percent": round(per_preview / PreviewThrottle().min_interval_s * 100, 2),
            "budget_percent": PreviewThrottle().budget * 100,
        }
        print(json.dumps(figures, indent=2), flush=True)
        if args.json is not None:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
