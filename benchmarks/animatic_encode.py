"""Animatic encode speed: frames per second for a 12-scene 1024x576 story (issue 17).

A throwaway workspace gets a 12-scene story.csv (default 3 s per scene, motions cycling through every camera
move, one static), rendered with the draft engine (no weights), then `make_animatic` runs at 24 fps with
0.5 s crossfades: 12 x 3 x 24 = 864 frames. What is timed is the whole encode (frames drawn, moved,
blended, H.264-encoded, muxed); not the story render. Prints one JSON line per run.

    python benchmarks/animatic_encode.py --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

MOTIONS = ("push-in", "pull-out", "pan-left", "pan-right", "tilt-up", "tilt-down", "static")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=12)
    parser.add_argument("--size", default="1024x576")
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--captions", action="store_true")
    parser.add_argument("--preset", default="veryfast")
    args = parser.parse_args()

    from echo_os.cli import main as cli_main
    from echo_os.motion.animatic import AnimaticOptions, make_animatic
    from echo_os.render.requests import parse_size
    from echo_os.settings import Settings

    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder) / "ws"
        home.mkdir()
        story = home / "story.csv"
        rows = ["scene,description,motion"] + [f'{n},"scene {n}: the keeper at the lamp",{MOTIONS[n % len(MOTIONS)]}'
                                               for n in range(1, args.scenes + 1)]
        story.write_text("\n".join(rows) + "\n", encoding="utf-8")
        try:
            cli_main(["--home", str(home), "batch", "bench", str(story), "--engine", "draft", "--size", args.size,
                      "--clip", "none"])
        except SystemExit as done:
            assert done.code in (0, None), done.code
        settings = Settings(home=home)
        for repeat in range(args.repeats):
            options = AnimaticOptions(fps=args.fps, size=parse_size(args.size), captions=args.captions,
                                      preset=args.preset)
            started = time.perf_counter()
            result = make_animatic(settings, "bench", options)
            wall = time.perf_counter() - started
            print(json.dumps({"repeat": repeat, "scenes": args.scenes, "size": args.size, "fps": args.fps,
                              "preset": args.preset, "captions": args.captions, "frames": result.frames,
                              "encode_s": round(result.encode_s, 2), "frames_per_s": round(result.frames_per_second, 1),
                              "wall_s": round(wall, 2), "mp4_bytes": result.video.stat().st_size,
                              "load_1min": round(os.getloadavg()[0], 1), "cpus": os.cpu_count(),
                              "machine": platform.machine()}), flush=True)


if __name__ == "__main__":
    main()
