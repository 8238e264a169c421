"""prepare: the front door of the render core. What a host was given -> validated RenderRequests.

Every host (`echo-os render`, `compare`, `refine`, POST /api/render, /api/compare, /api/refine,
/v1/images/generations) hands its values here in RenderRequest names, with the names the user gave
explicitly (click's ParameterSource on the CLI, pydantic's `model_fields_set` on the API), and gets back
the requests `render_requests` renders. The layers are applied in one order for every host:

    1. the size text ("WIDTHxHEIGHT"; none given: 1024x1024 until step 9 decides)
    2. the preset (pipelines/presets): its values for every field the user did not give
    3. a story's files (FileLayer: the storyboard row's cells, then the bible's defaults) for what neither
       the user nor the preset gave; when the user or the preset chose a model other than the one the
       bible was written for, that model's entry defaults come before the bible's (`--preset fast` must
       not render SDXL-Turbo at the bible's 30 steps and cfg 6.5)
    4. the style (a named style or free words; its negative joins the user's)
    5. the model entry's render defaults (models.toml steps, cfg, scheduler, size) for what no layer
       above gave (echo_os.models.defaults)
    6. the engine name and the model name: an unknown engine, or a model that is not in models.toml
       (unless the engine named takes that name itself: a hosted model), is an error whatever the engine
    7. the RenderRequest itself (bounds, text), then the LoRAs: the ones given, else the model entry's
    8. the engine: the one named, or `auto`'s first available, with its reason (echo_os.engines)
    9. the engine's default size (the cpu engine: 512x512, ECHO_OS_CPU_SIZE) when no size was given
   10. every capability check for the final request (tile, sizes, img2img, steps x strength)

So, first one set wins: what the user gave > the preset > the row > the bible > the model entry >
RenderRequest's defaults. Steps 1-5 are `layer_fields`, a pure function: the story planner
(echo_os.story.plan), which runs where no Settings exist (the API's worker plans a story again from its
files), layers every scene with it, and `prepare_plan` then applies steps 6 and 8-10 to the story's
requests (`echo-os batch`: plain CSV, plan.json, --count; POST /api/batch: echo_os.story.batch).

Everything is checked here, before a weight moves or a job is queued (diffusers' check_inputs). A bad
value is an OptionError naming the field (RenderRequest names; "size" for width and height, "lora",
"preset"): the CLI prints its one line and exits 2, the API answers a 422 on the body field that carries
it. The message is the same text for both.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from echo_os.errors import EchoError, ModelError, NotFoundError, OptionError, UsageError
from echo_os.render.requests import LoraInput, RenderRequest, describe_validation_error, parse_size

if TYPE_CHECKING:
    from echo_os.models.registry import RenderDefaults
    from echo_os.settings import Settings

DEFAULT_SIZE = "1024x1024"
_DEFAULT_MODEL: str = RenderRequest.model_fields["model"].default
# Fields the preset and the model entry may fill when the user did not give them ("size": width and height).
LAYERED = ("engine", "model", "steps", "cfg", "scheduler", "size", "options")


@dataclass(frozen=True)
class EngineChoice:
    """The engine `prepare` chose for the requests, and why (meta.json's engine.reason)."""

    name: str
    reason: str


@dataclass(frozen=True)
class Prepared:
    """What `prepare` returns: the requests, the engine chosen for them, and notes for the user (the CPU
    size rule)."""

    requests: tuple[RenderRequest, ...]
    engine: EngineChoice
    notes: tuple[str, ...] = ()

    @property
    def request(self) -> RenderRequest:
        return self.requests[0]

    @property
    def note(self) -> str | None:
        return "; ".join(self.notes) or None


@dataclass
class _Layers:
    """The fields being layered, and which names a layer above the model entry set."""

    fields: dict[str, Any]
    given: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class FileLayer:
    """Values a story's files give one scene (RenderRequest names, None: not given): the storyboard row's
    cells, or the bible's `model` and defaults. `written_for`: set on the bible's layer, the model its values
    were written for (None: the bible names none); when the user or the preset chose another model, that
    model's entry defaults come before this layer."""

    values: Mapping[str, Any]
    written_for: str | None = None
    follows_model: bool = False


def layer_fields(fields: Mapping[str, Any], given: Collection[str], *, preset: Mapping[str, Any] | None = None,
                 files: Sequence[FileLayer] = (),
                 entry: "Callable[[str], RenderDefaults | None]" = lambda model: None) -> dict[str, Any]:
    """Steps 2, 3 and 5 of the module docstring, without Settings: `fields` (RenderRequest names, width and
    height) with the preset's values (Preset.fields()), the files' and the model entry's (`entry(model)`)
    for every name no layer above gave. `given`: the names the user gave ("size" for width and height)."""
    from echo_os.models.defaults import fill_model_defaults

    out = dict(fields)
    taken = {_size_name(name) for name in given}
    for key, value in (preset or {}).items():
        option = _size_name(key)
        if option == "options":
            out["options"] = {**value, **(out.get("options") or {})}
        elif option not in taken:
            out[key] = value
    taken |= {_size_name(key) for key in preset or {}}
    chosen = "model" in taken  # the user or the preset chose the model

    def fill(values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            if value is not None and _size_name(key) not in taken:
                out[key] = value
        taken.update(_size_name(key) for key, value in values.items() if value is not None)

    for layer in files:
        if layer.follows_model and chosen and out.get("model") != layer.written_for:
            defaults = entry(out.get("model") or _DEFAULT_MODEL)
            fill(defaults.fields() if defaults is not None else {})
        fill(layer.values)
    return fill_model_defaults(out, entry(out.get("model") or _DEFAULT_MODEL), taken)


def prepare(settings: "Settings", values: Mapping[str, Any], explicit: Collection[str] = (), *,
            preset: str | None = None, loras: Collection[str] | None = None, choose: bool = True,
            files: Sequence[FileLayer] = ()) -> Prepared:
    """The validated request for `values` (RenderRequest names; `size` as "WxH" text or None, `style` as
    the user wrote it). `explicit`: the names the user gave (see the module docstring); `loras`: --lora
    NAME[:SCALE] specs (None or empty: the model entry's LoRA unless `values` has `loras`); choose=False
    leaves the engine unchosen (the request is still checked against the engine it names); `files`: a
    story's layers (FileLayer), below the preset."""
    layers = _Layers(dict(values), {_size_name(name) for name in explicit})
    _size_text(layers)
    _layer(settings, layers, preset, files)
    _style(settings, layers)
    request = _build(settings, layers)
    request = _loras(settings, request, layers, loras)
    _check_named_engine(settings, request)  # a named engine's refusal names the field at fault
    if not choose:
        return Prepared((request,), EngineChoice(request.engine, ""))
    choice = _choose(settings, request)
    notes: tuple[str, ...] = ()
    if "size" not in layers.given:  # a preset's size counts as given; a model entry's is a default
        request, note = engine_default_size(settings, request, choice.name)
        notes = (note,) if note else ()
    _check_capabilities(settings, request, choice)
    return Prepared((request,), choice, notes)


def prepare_recorded(settings: "Settings", request: RenderRequest, engine: str, reason: str) -> Prepared:
    """A request recorded in meta.json (replay), complete already: no layer is applied again (the same
    request makes the same pixels), but it is checked like a new one against the engine that made it
    (the model still known, the engine's capabilities and options) before anything loads."""
    from echo_os.engines import check_engine_name

    check_engine_name(engine)
    check_model_name(settings, request.model, engine)
    _check_named_engine(settings, request.model_copy(update={"engine": engine}))
    return Prepared((request,), EngineChoice(engine, reason))


@dataclass(frozen=True)
class PreparedPlan:
    """The tail of the front door for a planned story: the engine for its requests, and the engine's
    default size ("WxH") to plan the story again at when the user chose none (None: keep the plan's)."""

    engine: EngineChoice
    size: str | None = None
    note: str | None = None


def prepare_plan(settings: "Settings", requests: list[RenderRequest], *, size_given: bool) -> PreparedPlan:
    """A story's requests, already layered by the story planner with `layer_fields` (the user > the preset
    > the row > the bible > the model entry), through the rest of `prepare`: the engine and model names
    (an unknown model is an error whatever the engine), the named engine's checks, the engine choice and
    the default-size rule. The engine is chosen for the first scene (every scene shares the model and
    options); a plan larger than the engine's default size (the cpu engine: 512x512) is planned again at it
    unless `size_given` (a --size or --steps, the preset's too). echo_os.story.batch.prepare_batch calls
    this for `echo-os batch` and POST /api/batch."""
    from echo_os.engines import check_engine_name, get_engine

    for model, engine in dict.fromkeys((request.model, request.engine) for request in requests):
        check_engine_name(engine)
        check_model_name(settings, model, engine)
    _check_named_engine(settings, requests[0])
    choice = _choose(settings, requests[0])
    default = None if size_given else get_engine(choice.name).default_size(settings)
    largest = max(requests, key=lambda request: request.width * request.height)
    if default is None or largest.width * largest.height <= default[0] * default[1]:
        return PreparedPlan(choice)
    width, height = default
    return PreparedPlan(choice, f"{width}x{height}",
                        f"{width}x{height} by default with engine {choice.name} instead of the story's "
                        f"{largest.size}; --size or --steps to choose")


def check_plan_requests(settings: "Settings", requests: list[RenderRequest], choice: EngineChoice) -> None:
    """Every capability check of `prepare`, for each request of the final plan."""
    for request in requests:
        _check_capabilities(settings, request, choice)


# ---- the layers, in order ---------------------------------------------------------------------------

def _size_name(name: str) -> str:
    return "size" if name in ("width", "height") else name


def _size_text(layers: _Layers) -> None:
    """`size` text -> width and height (RenderRequest's 1024x1024 when none is given)."""
    fields = layers.fields
    size = fields.pop("size", None)
    if "width" in fields and size is None:
        return
    try:
        fields["width"], fields["height"] = parse_size(size or DEFAULT_SIZE)
    except UsageError as error:
        raise OptionError(str(error), "size") from None


def _layer(settings: "Settings", layers: _Layers, preset_name: str | None, files: Sequence[FileLayer]) -> None:
    """The preset, the files and the model entry's defaults (layer_fields), with their errors named."""
    from echo_os.models.defaults import model_render_defaults

    preset: dict[str, Any] = {}
    if preset_name is not None:
        from echo_os.engines.presets import get_preset

        preset = get_preset(settings, preset_name).fields()

    def entry(model: str) -> "RenderDefaults | None":
        try:
            return model_render_defaults(settings, model)
        except (UsageError, ModelError) as error:  # models.toml itself is broken
            raise OptionError(str(error), "model") from None

    given = layers.given | {_size_name(key) for key in preset}
    layers.fields = layer_fields(layers.fields, layers.given, preset=preset, files=files, entry=entry)
    layers.given = given


def _style(settings: "Settings", layers: _Layers) -> None:
    from echo_os.render.styles import style_fields

    fields = layers.fields
    negative = fields.get("negative_prompt") or None  # none given: the model's own rule (requests.py)
    if "style_name" in fields:  # already resolved (refine: the parent's own style)
        return
    # a learned style with a reference image adds itself to the request's own IP-Adapter references
    fields.update(style_fields(settings, fields.pop("style", None) or "", negative, adapter=fields.get("ip_adapter")))


def _build(settings: "Settings", layers: _Layers) -> RenderRequest:
    from echo_os.engines import check_engine_name

    fields = layers.fields
    check_engine_name(fields.get("engine") or "auto")
    check_model_name(settings, fields.get("model") or RenderRequest.model_fields["model"].default,
                     fields.get("engine") or "auto")
    try:
        request = RenderRequest(**fields)
    except ValidationError as error:
        first = error.errors()[0]
        name = str(first["loc"][0]) if first.get("loc") else "request"
        raise OptionError(describe_validation_error(error), _size_name(name)) from None
    if (request.init_image is not None and int(request.steps * request.init_image.strength) < 1
            and _scales_steps(request.engine)):  # diffusers would run no denoising step at all
        raise OptionError(f"--strength {request.init_image.strength:g} with {request.steps} steps denoises no "
                          "step (img2img runs steps x strength); raise --strength or --steps", "strength")
    return request


def _scales_steps(engine_name: str) -> bool:
    """Whether the named engine's img2img runs steps x strength (auto: assume so, the diffusers engines
    come first); an engine that runs every step (Capabilities.img2img_scales_steps False) has no such limit."""
    from echo_os.engines import engine_table

    plugin = engine_table().get(engine_name)
    return plugin is None or plugin.capabilities.img2img_scales_steps


def check_model_name(settings: "Settings", model: str, engine: str) -> None:
    """An unknown model is an error whatever the engine (docs/engines.md), unless the engine named takes
    that name itself (`Engine.knows_model`: a hosted engine's own models)."""
    from echo_os.engines import AUTO, get_engine
    from echo_os.models import load_registry

    try:
        registry = load_registry(settings)
    except (UsageError, ModelError) as error:
        raise OptionError(str(error), "model") from None
    if model in registry:
        return
    if engine != AUTO:
        knows = getattr(get_engine(engine), "knows_model", None)
        if knows is not None and knows(settings, model):
            return
    try:
        registry.get(model)
    except NotFoundError as error:
        raise OptionError(str(error), "model") from None


def _loras(settings: "Settings", request: RenderRequest, layers: _Layers,
           specs: Collection[str] | None) -> RenderRequest:
    from echo_os.engines.lora import model_lora_inputs

    if specs:
        loras = parse_loras(settings, tuple(specs))
    elif "loras" in layers.fields:
        return request
    else:
        try:
            loras = model_lora_inputs(settings, request.model)
        except (UsageError, ModelError, NotFoundError) as error:  # the entry's LoRA is missing or refused
            raise OptionError(str(error), "model") from None
    return request.model_copy(update={"loras": loras}) if loras else request


def parse_loras(settings: "Settings", specs: tuple[str, ...]) -> tuple[LoraInput, ...]:
    """--lora NAME[:SCALE] values -> LoraInputs (a trailing :number is the scale; paths may hold colons)."""
    from echo_os.engines.lora import resolve_lora

    loras: dict[str, LoraInput] = {}
    for spec in specs:
        name, scale = spec, 1.0
        head, sep, tail = spec.rpartition(":")
        if sep and head:
            try:
                name, scale = head, float(tail)
            except ValueError:
                pass
        if not 0.0 <= scale <= 2.0:
            raise OptionError(f"--lora {spec}: the scale must be between 0 and 2, got {scale:g}.", "lora")
        try:
            lora = resolve_lora(settings, name, scale=scale, base=Path.cwd())
        except OptionError:
            raise
        except EchoError as error:
            raise OptionError(str(error), "lora") from None
        loras.setdefault(lora.sha256, lora)
    return tuple(loras.values())


def _choose(settings: "Settings", request: RenderRequest) -> EngineChoice:
    """The engine (echo_os.engines.choose_engine); what makes it refuse is the named field's error."""
    from echo_os.engines import choose_engine

    try:
        return EngineChoice(*choose_engine(settings, request))
    except OptionError:
        raise
    except (ModelError, NotFoundError) as error:  # the named engine needs weights the model lacks here
        raise OptionError(str(error), "model") from None
    except UsageError as error:
        raise OptionError(str(error), "engine") from None


def _check_named_engine(settings: "Settings", request: RenderRequest) -> None:
    """A named engine's capabilities, its own options and what it refuses on any machine, each an error on
    the field at fault (choosing would say the same, on `engine`)."""
    if request.engine == "auto":
        return
    from echo_os.engines import engine_options, get_engine

    plugin = get_engine(request.engine)
    unmet = plugin.capabilities.unmet_field(request)
    if unmet:
        raise OptionError(f"engine {plugin.name} cannot render this request: {unmet[1]}.", unmet[0])
    options = engine_options(plugin, request)
    check = getattr(plugin, "check_request", None)  # optional for plugins that do not subclass BaseEngine
    if check is not None:
        check(settings, request, options)


def engine_default_size(settings: "Settings", request: RenderRequest,
                        engine_name: str) -> tuple[RenderRequest, str | None]:
    """(request, note): `request` at the chosen engine's own default size when it has one (the cpu
    engine: settings.cpu_size, ECHO_OS_CPU_SIZE, default 512x512) and the request is larger (a model
    entry's 1024x1024 too); a smaller one keeps its size. The caller applies it only when no size was
    given. `batch` applies the same rule to a story (prepare_plan)."""
    from echo_os.engines import get_engine

    size = get_engine(engine_name).default_size(settings)
    if size is None or request.width * request.height <= size[0] * size[1]:
        return request, None
    width, height = size
    note = f"{width}x{height} by default with engine {engine_name}; --size {DEFAULT_SIZE} for full size"
    return request.model_copy(update={"width": width, "height": height}), note


def _check_capabilities(settings: "Settings", request: RenderRequest, choice: EngineChoice) -> None:
    """The final request against the chosen engine (its size may have changed since it was chosen)."""
    from echo_os.engines import get_engine

    unmet = get_engine(choice.name).capabilities.unmet_field(request)
    if unmet:
        raise OptionError(f"engine {choice.name} cannot render this request: {unmet[1]}.", unmet[0])
