"""`echo-os animatic PROJECT`: the story's scenes as a timed MP4 with camera moves (echo_os.motion.animatic)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from echo_os.cli import settings_from


@click.command()
@click.argument("project")
@click.option("--fps", type=int, default=24, show_default=True, help="Frames per second.")
@click.option("--size", default=None, help="WIDTHxHEIGHT, even sides (default: the first scene image's size).")
@click.option("--fade", type=float, default=0.5, show_default=True,
              help="Crossfade at each cut, in seconds (0: hard cuts). The video's length does not change.")
@click.option("--captions", is_flag=True, help="Burn each scene's description into its frames and write an .srt.")
@click.option("--clips", is_flag=True, help="Play a scene's newest clip (`echo-os animate`) instead of its still.")
@click.option("--story", "story", type=click.Path(dir_okay=False), default=None,
              help="story.csv to take durations and motions from (default: the one the story was rendered from).")
@click.option("--out", type=click.Path(), default=None, help="Also copy the MP4 (and .srt) to this file.")
@click.option("--json", "json_output", is_flag=True, help="Print the artifact's meta.json.")
@click.pass_context
def animatic(ctx: click.Context, project: str, fps: int, size: str | None, fade: float, captions: bool,
             clips: bool, story: str | None, out: str | None, json_output: bool) -> None:
    """Make an animatic of a rendered story: each scene's image for its `duration` (story.csv, default 3 s)
    under its `motion` (push-in, pull-out, pan-left, pan-right, tilt-up, tilt-down, static; default from the
    camera words, else a slow push-in), with crossfades. The MP4 is an artifact (see `echo-os gallery`).

    \b
      echo-os animatic "Lighthouse Keeper"
      echo-os animatic "Lighthouse Keeper" --size 1024x576 --captions --out keeper.mp4
    """
    from echo_os.cli.progress import StageBars
    from echo_os.motion.animatic import AnimaticOptions, make_animatic
    from echo_os.requests import parse_size

    settings = settings_from(ctx)
    options = AnimaticOptions(fps=fps, size=parse_size(size) if size else None, fade=fade, captions=captions,
                              clips=clips, story=Path(story) if story else None)
    with StageBars(unit="frame", labels={"encode": "encoding"}) as bars:
        result = make_animatic(settings, project, options, out=Path(out) if out else None, progress=bars)
    if json_output:
        click.echo(json.dumps(result.artifact.meta.model_dump(mode="json"), ensure_ascii=False, indent=2))
        return
    meta = result.artifact.meta
    click.echo(f"{result.artifact.id[:12]}  {result.video}")
    click.echo(f"{len(meta.scenes)} scenes, {result.frames} frames, {meta.duration_s:g} s at {meta.fps} fps, "
               f"{meta.width}x{meta.height}; encoded at {result.frames_per_second:.0f} frames/s")
    if result.captions is not None:
        click.echo(f"captions: {result.captions}")
    if result.out is not None:
        click.echo(f"copied to {result.out}")
