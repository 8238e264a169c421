"""`echo-os render` and `echo-os replay`."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

import click

from echo_os.cli import settings_from
from echo_os.cli.terminal import json_for_terminal
from echo_os.render.kinds import RENDER_TYPES, output_fields
from echo_os.render.prepare import DEFAULT_SIZE, engine_default_size  # noqa: F401  (older import path)
from echo_os.render.requests import ATTENTIONS, DEVICES, DTYPES, SCHEDULERS

if TYPE_CHECKING:
    from tqdm import tqdm


class StepBar:
    """A tqdm bar over denoising steps, all images of one pipeline call advancing together. Before the first
    step it says what is loading (`loading(...)`), so a model load of several seconds is not a silent bar."""

    LOADING_FORMAT = "{desc} ({elapsed})"

    def __init__(self, total_images: int, *, file=None, enabled: bool | None = None):
        self.total_images = total_images
        self.done_images = 0
        self.file = file  # None: stderr
        self.disable = None if enabled is None else not enabled  # None: on when the stream is a terminal
        self.bar: tqdm | None = None  # made at the first thing to show: no empty `0step` bar before it

    def _make(self, **fields):
        from tqdm import tqdm

        return tqdm(total=0, unit="step", leave=False, disable=self.disable, dynamic_ncols=True,
                    file=self.file, **fields)

    def loading(self, what: str) -> None:
        """Show `what` (`loading model 'sdxl'`) with the time spent, until the first step."""
        if self.bar is None:
            self.bar = self._make(desc=what, bar_format=self.LOADING_FORMAT)

    def __call__(self, event) -> None:
        if self.bar is None:
            self.bar = self._make()
        if event.step == 1:
            self.bar.bar_format = None
            self.bar.reset(total=event.total_steps)
            self.bar.set_description(f"images {self.done_images + 1}-{self.done_images + event.images}"
                                     f" of {self.total_images}")
        self.bar.update(1)
        if event.step == event.total_steps:
            self.done_images += event.images

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def parse_engine_options(specs: tuple[str, ...]) -> dict[str, str]:
    """--option KEY=VALUE values -> {KEY: VALUE}; the engine's Options model converts and checks them."""
    from echo_os.errors import OptionError

    options = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"--option must look like KEY=VALUE (for example guidance_rescale=0.7), got {spec!r}.",
                              "option")
        options[key.strip()] = value.strip()
    return options


# CLI option -> the RenderRequest field prepare() calls it (the others have the same name)
CLI_FIELDS = {"negative": "negative_prompt", "option_specs": "options", "lora_specs": "lora"}


def explicit_options(ctx: click.Context) -> set[str]:
    """The options the user gave on the command line (not left at their default), in RenderRequest names:
    what the preset and the model entry's render defaults must not replace (echo_os.render.prepare)."""
    from click.core import ParameterSource

    return {CLI_FIELDS.get(name, name) for name in ctx.params
            if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)}


def refiner_input(settings, name: str | None, switch: float):
    """--refiner NAME --switch F -> RefinerInput (None without --refiner); a bad value names its option."""
    from echo_os.errors import OptionError
    from echo_os.models import load_registry
    from echo_os.render.requests import RefinerInput

    if name is None:
        return None
    if not 0.0 < switch < 1.0:  # NaN fails too
        raise OptionError(f"--switch must be between 0 and 1 (the fraction the base denoises), got {switch:g}.",
                          "switch")
    load_registry(settings).get(name)  # an unknown name is an error now, not after the base has rendered
    return RefinerInput(model=name, switch=switch)


def engine_line(choice, note: str | None = None) -> str:
    """The short engine line (the full reason with `echo-os -v`; always in meta.json)."""
    from echo_os.cli.feedback import engine_line as line

    return line(choice.name, choice.reason, note)


def engine_announcer(note: str | None = None, *, bar=None, model: str | None = None):
    """on_engine callback: print the engine line (with `note`, e.g. the CPU size rule, inside its brackets),
    clear of any live bar; with `bar` and an engine that loads weights, the bar says `model` is loading.

    Nothing else starts here: the images are embedded into Echo Memory by the next memory command, not
    beside the render (echo_os.memory.artifacts)."""
    from echo_os.cli.feedback import draft_hint, echo_beside_bars

    def announce(choice) -> None:
        echo_beside_bars(engine_line(choice, note))
        hint = draft_hint(choice.name, choice.reason)
        if hint:
            echo_beside_bars(hint)
        if bar is not None and model:
            from echo_os.engines import engine_table

            plugin = engine_table().get(choice.name)
            if plugin is not None and plugin.capabilities.needs_weights:
                bar.loading(f"loading model '{model}' ({choice.name})")

    return announce


@click.command()
@click.argument("prompt")
@click.option("--style", default="", help="A named style (`echo-os styles list`), or free words appended to the "
                                         "prompt, e.g. 'digital art'.")
@click.option("--negative", "negative_prompt", default=None,
              help="Negative prompt. Default: none, so the model's own rule applies.")
@click.option("--seed", type=int, default=None, help="Seed of the first image (image i uses seed+i). Default: random.")
@click.option("--steps", type=int, default=30, show_default=True, help="Denoising steps (1-200).")
@click.option("--cfg", type=float, default=7.0, show_default=True, help="Classifier-free guidance scale.")
@click.option("--size", default=None,
              help=f"WIDTHxHEIGHT, multiples of 8. Default: {DEFAULT_SIZE} (or the model entry's); "
              "512x512 when SDXL runs on the CPU "
              "(ECHO_OS_CPU_SIZE sets it).")
@click.option("--count", type=int, default=1, show_default=True, help="Images to render (1-64), batched.")
@click.option("--scheduler", type=click.Choice(SCHEDULERS), default="euler", show_default=True,
              help="Sampler (diffusers scheduler); lcm, tcd and euler_trailing suit few-step models "
                   "(Turbo, Lightning, LCM).")
@click.option("--model", default="sdxl", show_default=True, help="A model name from models.toml.")
@click.option("--engine", default="auto", show_default=True,
              help="auto (the workspace's engine order) or a registered engine, plugins included.")
@click.option("--option", "-o", "option_specs", multiple=True, metavar="KEY=VALUE",
              help="An option of the chosen engine (see docs/engines.md). Repeat for several.")
@click.option("--preset", default=None, help="A render preset from pipelines/presets (draft, fast, quick, quality): "
                                              "its values for every option not given.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="Where SDXL runs: auto is cuda when PyTorch sees a GPU, else the CPU.")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
              help="Weights precision: auto is bfloat16 (float16 on older GPUs) on CUDA, float32 elsewhere.")
@click.option("--attention", type=click.Choice(ATTENTIONS), default="sdpa", show_default=True,
              help="Attention kernel: sdpa (PyTorch's own) or xformers (needs the xformers package).")
@click.option("--project", default="default", show_default=True, help="Project the artifacts belong to.")
@click.option("--batch-size", type=click.IntRange(1, 64), default=None, help="Images per pipeline call.")
@click.option("--lora", "lora_specs", multiple=True, metavar="NAME[:SCALE]",
              help="Apply a LoRA: a models.toml `lora` entry or a .safetensors file, scale 0-2 (default 1). "
                   "Repeat for several.")
@click.option("--again", is_flag=True,
              help="Render even when this exact request (same seed, model, settings, project) was rendered "
                   "before; without it the earlier artifact is shown instead.")
@click.option("--tile", type=click.Choice(["x", "y", "xy"]), is_flag=False, flag_value="xy", default=None,
              help="Seamless texture: the image wraps left-right (x), top-bottom (y) or both (--tile alone: xy).")
@click.option("--type", "kind", type=click.Choice(list(RENDER_TYPES)), default="image", show_default=True,
              help="texture: the same as --tile xy; 3d_model: a mesh (GLB); audio: a sound (FLAC).")
@click.option("--seconds", type=click.FloatRange(0.1, 600), default=None, help="--type audio: its length.")
@click.option("--refiner", default=None, help="A refiner model (models.toml sdxl entry): the base denoises to "
                                             "--switch and hands its latents to it (SDXL base+refiner).")
@click.option("--switch", type=float, default=0.8, show_default=True,
              help="With --refiner: the fraction of the schedule the base denoises (between 0 and 1).")
@click.option("--json", "as_json", is_flag=True, help="Print the artifacts as JSON.")
@click.option("--no-memory", is_flag=True, hidden=True,
              help="No effect (kept for old scripts): renders are embedded by the next memory command.")
@click.option("--no-score", is_flag=True,
              help="Do not score the images (CLIP prompt alignment, aesthetic) as they are saved.")
@click.option("--no-cache", is_flag=True, help="Hosted engines: ask the provider again even for a request "
                                               "already answered (its response cache is not read).")
@click.pass_context
def render(ctx: click.Context, prompt: str, size: str | None, seed: int | None, batch_size: int | None, as_json: bool,
           no_memory: bool, no_score: bool, again: bool, lora_specs: tuple[str, ...], option_specs: tuple[str, ...],
           preset: str | None, tile: str | None, kind: str, refiner: str | None, switch: float,
           no_cache: bool, seconds: float | None, **options) -> None:
    """Render PROMPT into images, each saved as an artifact (image.png + meta.json).

    An image whose exact request (seed included) is already an artifact of the project is not rendered
    again: the earlier artifact is shown (the same request makes the same pixels). --again renders anew.
    """
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.engines import create_engine
    from echo_os.render.prepare import prepare
    from echo_os.render.scheduler import render_requests

    settings = settings_from(ctx)
    if no_cache:
        settings = dataclasses.replace(settings, response_cache=False)
    values = dict(options, prompt=prompt, size=size, tile=tile or ("xy" if kind == "texture" else None),
                  refiner=refiner_input(settings, refiner, switch))
    if option_specs:
        values["options"] = parse_engine_options(option_specs)
    values.update(output_fields(kind, seconds, values.get("options")))  # --type 3d_model / audio, --seconds
    if seed is not None:
        values["seed"] = seed
    # One front door (echo_os.render.prepare): preset, style, model defaults, LoRAs, engine, size, checks.
    prepared = prepare(settings, values, explicit_options(ctx), preset=preset, loras=lora_specs)
    request = prepared.request
    engine = create_engine(settings, prepared.engine.name, prepared.engine.reason)
    note = prepared.note

    store = ArtifactStore(settings)
    from echo_os.resonance.listener import attach_scorer

    attach_scorer(store, enabled=not no_score)  # scores when a CLIP model is here (`echo-os score` says if not)
    bar = StepBar(request.count)
    from echo_os.cli.feedback import interrupt_report
    from echo_os.errors import EchoError

    saved: list = []  # the images saved so far: named even when a later one fails (a server lost mid-run)
    try:
        # without --seed the seed was drawn at random: the line names it, or a re-run would draw another
        with interrupt_report(store, again=again, seed=request.seed if seed is None else None):
            outcome = render_requests(settings, [request], store=store, progress=bar, batch_size=batch_size,
                                      on_engine=engine_announcer(note, bar=bar, model=request.model),
                                      engine=engine, resume=not again,
                                      on_image=lambda done: saved.append(done.artifact) if not done.resumed else None)
    except EchoError:
        bar.close()
        for artifact in saved:
            click.echo(f"saved before the error: {artifact.id[:12]}  {artifact.image_path}", err=True)
        raise
    finally:
        bar.close()
        store.close()
    for line in outcome.notes:
        click.echo(f"note: {line}", err=True)
    if outcome.resumed:
        click.echo(f"{len(outcome.resumed)} of {request.count} already rendered with this exact request: shown "
                   "below, not rendered again (--again renders anew)", err=True)
    # in image order (seed, seed+1, ...), earlier artifacts where there were some
    shown = sorted([(a, True) for a in outcome.resumed] + [(a, False) for a in outcome.artifacts],
                   key=lambda pair: pair[0].meta.seed)
    if as_json:
        click.echo(json_for_terminal([{**a.summary(), "already_rendered": resumed} for a, resumed in shown]))
    else:
        for artifact, resumed in shown:
            shown_path = artifact.path / artifact.meta.file if hasattr(artifact.meta, "file") else artifact.image_path
            click.echo(f"{artifact.id[:12]}  {shown_path}" + ("  (already rendered)" if resumed else ""))


BATCH_TOLERANCE = 1  # levels of 255 between an image rendered in a batch and the same image alone


@click.command()
@click.argument("artifact_id")
@click.option("--save", is_flag=True, help="Keep the re-render as a new artifact whose parent is ARTIFACT_ID.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def replay(ctx: click.Context, artifact_id: str, save: bool, as_json: bool) -> None:
    """Re-render an artifact from its meta.json and report the largest pixel difference (0 = identical)."""
    from echo_os.iterate.replay import replay_artifact

    settings = settings_from(ctx)
    report = replay_artifact(settings, artifact_id, save=save)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    # a mesh or a sound: its content hash is the verdict
    if report.content_matches is not None and report.content_sha256 is not None:
        click.echo(f"replayed {report.artifact_id[:12]} with engine {report.engine}: content sha256 "
                   f"{report.content_sha256[:12]} ({'identical' if report.content_matches else 'differs'})"
                   + (f"; saved as {report.saved_id[:12]}" if report.saved_id else ""))
        return
    verdict = "identical" if report.max_pixel_diff == 0 else "differs"
    if report.max_pixel_diff and report.template_changed:
        verdict += "; the template changed since it was rendered"
    elif report.max_pixel_diff and not report.deterministic:
        verdict += f"; engine {report.engine} does not promise the same pixels per seed"
    elif 0 < report.max_pixel_diff <= BATCH_TOLERANCE and report.batch_size > 1:
        # A batched call and a call of one image run the same maths on differently shaped tensors, so the
        # kernels may round differently: one level of 255 at most (the engine contract's tolerance).
        verdict += (f" by rounding only: it was rendered in a batch of {report.batch_size} and replayed alone")
    click.echo(f"replayed {report.artifact_id[:12]} with engine {report.engine}: "
               f"max pixel difference {report.max_pixel_diff} ({verdict})"
               + (f"; saved as {report.saved_id[:12]}" if report.saved_id else ""))
