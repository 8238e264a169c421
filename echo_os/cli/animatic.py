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
@click.option("--sound", is_flag=True, help="Mux the soundtrack (`echo-os soundtrack`: one cue per scene, "
                                            "crossfaded at the cuts) into the MP4 as AAC.")
@click.option("--json", "json_output", is_flag=True, help="Print the artifact's meta.json.")
@click.pass_context
def animatic(ctx: click.Context, project: str, fps: int, size: str | None, fade: float, captions: bool,
             clips: bool, story: str | None, out: str | None, json_output: bool, sound: bool) -> None:
    """Make an animatic of a rendered story: each scene's image for its `duration` (story.csv, default 3 s)
    under its `motion` (push-in, pull-out, pan-left, pan-right, tilt-up, tilt-down, static; default from the
    camera words, else a slow push-in), with crossfades. The MP4 is an artifact (see `echo-os gallery`).

    \b
      echo-os animatic "Lighthouse Keeper"
      echo-os animatic "Lighthouse Keeper" --size 1024x576 --captions --out keeper.mp4
    """
    from echo_os.artifacts.meta import VideoMeta
    from echo_os.cli.progress import StageBars
    from echo_os.motion.animatic import AnimaticOptions, make_animatic
    from echo_os.render.requests import parse_size

    settings = settings_from(ctx)
    options = AnimaticOptions(fps=fps, size=parse_size(size) if size else None, fade=fade, captions=captions,
                              clips=clips, story=Path(story) if story else None, sound=sound)
    with StageBars(unit="frame", labels={"encode": "encoding"}) as bars:
        result = make_animatic(settings, project, options, out=Path(out) if out else None, progress=bars)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if json_output:
        click.echo(json.dumps(result.artifact.meta.model_dump(mode="json"), ensure_ascii=False, indent=2))
        return
    meta = result.artifact.meta
    assert isinstance(meta, VideoMeta)  # make_animatic saves a video
    click.echo(f"{result.artifact.id[:12]}  {result.video}")
    click.echo(f"{len(meta.scenes)} scenes, {result.frames} frames, {meta.duration_s:g} s at {meta.fps} fps, "
               f"{meta.width}x{meta.height}; encoded at {result.frames_per_second:.0f} frames/s")
    if result.captions is not None:
        click.echo(f"captions: {result.captions}")
    if result.out is not None:
        click.echo(f"copied to {result.out}")


@click.command()
@click.argument("artifact_id", metavar="ID")
@click.option("--model", default="svd", show_default=True, help="Image-to-video model (models.toml, type = \"video\").")
@click.option("--frames", type=int, default=14, show_default=True, help="Frames to generate.")
@click.option("--fps", type=int, default=7, show_default=True, help="Frame rate of the clip (also conditions SVD).")
@click.option("--motion-bucket", type=int, default=127, show_default=True, help="SVD's amount of motion (0-1023).")
@click.option("--noise-aug", type=float, default=0.02, show_default=True,
              help="Noise added to the image before encoding; more lets the clip stray further from it.")
@click.option("--steps", type=int, default=25, show_default=True, help="Denoising steps.")
@click.option("--seed", type=int, default=None, help="Seed (default: the image's own seed).")
@click.option("--size", default=None, help="WIDTHxHEIGHT (default: the image's size, rounded down to multiples of 64).")
@click.option("--decode-chunk-size", type=int, default=None,
              help="Frames per VAE decode (default: all; halved automatically on out-of-memory).")
@click.option("--cpu-offload", is_flag=True, help="Keep only the running model on the GPU (small GPUs; slower).")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu", "mps"]), default="auto", show_default=True,
              help="Where the video model runs: auto is cuda when PyTorch sees a GPU, else the CPU.")
@click.pass_context
def animate(ctx: click.Context, artifact_id: str, model: str, frames: int, fps: int, motion_bucket: int,
            noise_aug: float, steps: int, seed: int | None, size: str | None, decode_chunk_size: int | None,
            cpu_offload: bool, device: str) -> None:
    """Turn a scene image into a short clip with an image-to-video model (Stable Video Diffusion).

    The clip is an artifact whose parent is the image; `echo-os animatic PROJECT --clips` uses it.

    \b
      echo-os models pull svd
      echo-os animate 3f9a1c2b7d4e --frames 14 --fps 7 --motion-bucket 127
    """
    from echo_os.artifacts.meta import VideoMeta
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.engines.video import ClipRequest
    from echo_os.motion.clips import make_clip
    from echo_os.render.requests import parse_size

    settings = settings_from(ctx)
    width, height = parse_size(size) if size else (None, None)
    store = ArtifactStore(settings)
    try:
        parent = store.open(artifact_id)
        request = ClipRequest(seed=parent.meta.seed if seed is None else seed, model=model, frames=frames, fps=fps,
                              motion_bucket=motion_bucket, noise_aug=noise_aug, steps=steps, width=width,
                              height=height, decode_chunk_size=decode_chunk_size, cpu_offload=cpu_offload,
                              device=device)
        request.check()
        from tqdm import tqdm

        with tqdm(total=steps, unit="step", desc="animating", leave=False, disable=None, dynamic_ncols=True) as bar:
            result = make_clip(settings, parent.id, request, store=store,
                               progress=lambda event: bar.update(max(0, event.step - bar.n)))
    finally:
        store.close()
    meta = result.artifact.meta
    assert isinstance(meta, VideoMeta)  # make_clip saves a video
    click.echo(f"{result.artifact.id[:12]}  {result.video_path}")
    click.echo(f"{meta.frames} frames at {meta.fps} fps, {meta.width}x{meta.height}, seed {meta.seed}, "
               f"from {result.parent.id[:12]} ({result.seconds:.1f} s)")


@click.command()
@click.argument("project")
@click.option("--engine", default="auto", show_default=True, help="The audio engine (auto: a text-to-audio "
                                                                  "model when its weights are here, else draft-audio).")
@click.option("--json", "json_output", is_flag=True, help="Print the cues and their artifacts as JSON.")
@click.pass_context
def soundtrack(ctx: click.Context, project: str, engine: str, json_output: bool) -> None:
    """Render one sound cue per scene of a rendered story, at the scene's duration: the scene's `sound`
    column in story.csv, else an ambience derived from its location, lighting and weather words.
    `echo-os animatic PROJECT --sound` mixes them into the animatic.

    \b
      echo-os soundtrack "Lighthouse Keeper"
    """
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.cli.render import StepBar
    from echo_os.engines import check_engine_name
    from echo_os.motion.animatic import story_cues
    from echo_os.motion.soundtrack import cue_file, make_soundtrack

    settings = settings_from(ctx)
    check_engine_name(engine)
    store = ArtifactStore(settings)
    try:
        cues = story_cues(settings, project)  # the story is read (and checked) before rendering
        bar = StepBar(len(cues))
        try:
            cues = make_soundtrack(settings, project, cues, store=store, engine=engine, progress=bar)
        finally:
            bar.close()
    finally:
        store.close()
    if json_output:
        click.echo(json.dumps([{"scene": cue.scene, "cue": cue.cue, "derived": cue.derived, "seconds": cue.duration,
                                "id": artifact.id, "path": str(cue_file(artifact)),
                                "engine": artifact.meta.engine.name} for cue, artifact in cues], indent=2))
        return
    for cue, artifact in cues:
        click.echo(f"scene {cue.scene}: {artifact.id[:12]}  {cue.duration:g} s  {cue.cue!r}"
                   + (" (from its words)" if cue.derived else ""))
