"""Refine: image-to-image from an artifact, through the one renderer.

prepare_refine builds the RenderRequest through the front door (echo_os.render.prepare): the parent's recorded
request (model, size, scheduler, steps, cfg, style, engine options...) with the user's changes, and an init
image pointing at the parent's PNG with its sha256 and the strength. The child records the parent's id
(`parent_id`), the strength and the parent's sha256 in meta.json (lineage: `echo-os artifacts tree`), and its
replay starts from the same bytes, so it is exact.

Engine options (`-o KEY=VALUE`): the parent's, under the ones given, when the refine runs on the parent's
engine or on `auto`; none of the parent's when another engine is named (they are another engine's
options). The parent's own `init_image` option is never carried: the refine's init image is the parent.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from echo_os.errors import OptionError, UsageError
from echo_os.render.requests import InitImage, RenderRequest

if TYPE_CHECKING:
    from echo_os.artifacts.store import Artifact
    from echo_os.render.prepare import Prepared
    from echo_os.settings import Settings

DEFAULT_STRENGTH = 0.35


def check_strength(strength: float, option: str = "strength") -> float:
    if not (0.0 < strength <= 1.0):  # NaN fails too
        raise OptionError(f"--strength must be more than 0 and at most 1 (how much of the image is repainted), "
                          f"got {strength:g}", option)
    return strength


def _model_loras(settings: "Settings", base: RenderRequest, model: str) -> tuple:
    """Refining with another model: the new entry's LoRA replaces the old entry's (a few-step model's
    distillation LoRA goes with its model); LoRAs the parent was given otherwise stay."""
    from echo_os.engines.lora import model_lora_inputs
    from echo_os.models.defaults import model_render_defaults

    old = model_render_defaults(settings, base.model)
    old_lora = old.lora if old is not None else None
    kept = tuple(lora for lora in base.loras if lora.name != old_lora)
    return kept + tuple(lora for lora in model_lora_inputs(settings, model)
                        if lora.sha256 not in {k.sha256 for k in kept})


def _refine_drops(engine_name: str) -> tuple[str, ...]:
    """The parent engine's options a refine does not carry (EngineOptions.refine_drops)."""
    from echo_os.engines import engine_table

    plugin = engine_table().get(engine_name)
    return tuple(getattr(plugin.Options, "refine_drops", ())) if plugin is not None else ()


def parent_request(settings: "Settings", parent: "Artifact") -> RenderRequest:
    """What a refine starts from: the parent's own request, or, for an image brought in by `memory import`,
    the prompt and settings its PNG carried (what it lacks, and a model that is not in models.toml, take
    echo-os's defaults). Not validated here: the refine's own fields are checked once they are merged."""
    from echo_os.artifacts.meta import ArtifactMeta, artifact_kind
    from echo_os.models.registry import load_registry
    from echo_os.render.requests import MAX_STEPS, SCHEDULERS

    meta = parent.meta
    assert isinstance(meta, ArtifactMeta)  # prepare_refine's require_kind let image kinds only through
    if artifact_kind(meta) != "imported":
        return meta.replay_request()
    fields: dict[str, Any] = {"prompt": meta.prompt, "project": meta.project}
    if meta.negative_prompt:
        fields["negative_prompt"] = meta.negative_prompt
    if 1 <= meta.steps <= MAX_STEPS:
        fields["steps"] = meta.steps
    if 0 < meta.cfg <= 100:
        fields["cfg"] = meta.cfg
    if meta.scheduler in SCHEDULERS:
        fields["scheduler"] = meta.scheduler
    if meta.model is not None and meta.model.name in load_registry(settings):
        fields["model"] = meta.model.name
    return RenderRequest.model_construct(**fields)


def refine_request(settings: "Settings", parent: "Artifact", *, strength: float = DEFAULT_STRENGTH,
                   prompt: str | None = None, style: str | None = None, negative: str | None = None,
                   changes: dict[str, Any] | None = None, options: dict[str, Any] | None = None) -> RenderRequest:
    """The request that refines `parent` (see prepare_refine), its engine not chosen yet."""
    return prepare_refine(settings, parent, strength=strength, prompt=prompt, style=style, negative=negative,
                          changes=changes, options=options, choose=False).request


def prepare_refine(settings: "Settings", parent: "Artifact", *, strength: float = DEFAULT_STRENGTH,
                   prompt: str | None = None, style: str | None = None, negative: str | None = None,
                   changes: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
                   choose: bool = True) -> "Prepared":
    """The refine of `parent` through the front door (echo_os.render.prepare): its own request with
    `changes` (steps, cfg, seed, model, engine, scheduler...), PROMPT (default: the parent's), a style
    (named or free text; default: the parent's), engine `options` over the parent's (see the module
    docstring) and the init image. The size stays the image's. Refining with another model: the new
    entry's render defaults replace the parent's values the user did not give."""
    from echo_os.artifacts.meta import IMAGE_KINDS, require_kind
    from echo_os.render.prepare import prepare

    check_strength(strength)
    require_kind(parent.id, parent.meta, IMAGE_KINDS, "refine")
    if not (prompt or parent.meta.prompt).strip():
        raise OptionError(f"{parent.id[:12]} was imported without a prompt: give PROMPT", "prompt")
    base = parent_request(settings, parent)
    png = parent.image_path.read_bytes()
    values: dict[str, Any] = base.model_dump(exclude={"width", "height", "seed"})
    values.update({"count": 1, "parent_id": parent.id, "ip_adapter": base.ip_adapter, "loras": base.loras,
                   "story": base.story, "engine": "auto", "refiner": None})
    given = {k: v for k, v in (changes or {}).items() if v is not None}
    values.update(given)
    model_changed = given.get("model", base.model) != base.model
    # The parent's values count as given (they made the image), unless the model changes: then only the
    # user's changes do, and the new entry's defaults fill the rest.
    explicit = set(given) | {"size", "loras"} if model_changed else set(values) | {"size"}
    if model_changed and "loras" not in given:
        values["loras"] = _model_loras(settings, base, given["model"])
    if options and "init_image" in options:
        raise OptionError("refine starts from the artifact's own image; -o init_image is for render",
                          "options.init_image")
    inherited = dict(base.options) if values["engine"] in ("auto", parent.meta.engine.name) else {}
    inherited.pop("init_image", None)
    for name in _refine_drops(parent.meta.engine.name):  # e.g. the parent's txt2img template
        inherited.pop(name, None)
    values["options"] = {**inherited, **(options or {})}
    if prompt is not None:
        values["prompt"] = prompt
    own_negative = negative if negative is not None else base.negative_prompt
    values["negative_prompt"] = own_negative
    if style is not None:  # resolved by prepare (a named style, else free words); else the parent's stays
        values["style"] = style
        values.pop("style_name", None)
        explicit.add("style")
    import io

    from PIL import Image

    from echo_os.engines.inputs import image_bytes_problem

    problem = image_bytes_problem(png, str(parent.image_path))  # decoded whole: a cut PNG stops here
    if problem:
        raise UsageError(f"artifact {parent.id[:12]}'s image {problem}; it cannot be refined")
    with Image.open(io.BytesIO(png)) as image:
        values["size"] = "{}x{}".format(*image.size)
    # Relative to the artifacts folder when it is inside it, so a moved workspace still replays.
    try:
        path = parent.image_path.resolve().relative_to(settings.artifacts_dir.resolve()).as_posix()
    except ValueError:
        path = str(parent.image_path)
    values["init_image"] = InitImage(artifact_id=parent.id, path=path,
                                     sha256=hashlib.sha256(png).hexdigest(), strength=strength)
    return prepare(settings, values, explicit, choose=choose)
