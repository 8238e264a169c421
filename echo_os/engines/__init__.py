"""The engine registry: every engine comes from a plugin (echo_os/engines/plugins.py), built-ins included.

`auto` asks the engines in the workspace's order (`[engines] order` in echo-os.toml, default DEFAULT_ORDER)
that make the request's output kind (`request.output`: image, video; an order naming none of that kind: every
engine of the kind, in registration order) and takes the first that can render it: one whose capabilities
cover it (text, reference images, LoRAs, size), whose weights resolve here when it needs weights, which opens
no network connection unless the workspace allows it, which takes the request's options, and whose own
`availability(settings, request)` says nothing against it. The reason, with the order and what each engine
before it lacked, goes into meta.json.

Engine modules are imported when the registry is first read, and they import torch only inside their
functions, so validating a request or drawing draft cards never imports torch.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from pydantic import ValidationError

from echo_os.errors import OptionError, UsageError

if TYPE_CHECKING:
    from echo_os.engines.base import Engine, EngineOptions, EnginePlugin
    from echo_os.render.requests import RenderRequest
    from echo_os.settings import Settings

# The order `auto` asks the built-in engines in, when the workspace sets none. The network engines
# (comfyui, openai) are asked only where the workspace allows them, so by default they are skipped
# without a connection being opened: a local GPU first, then a configured ComfyUI, then the hosted API,
# then the CPU and the storyboard cards, which always work.
DEFAULT_ORDER: tuple[str, ...] = ("sdxl", "comfyui", "openai", "cpu", "draft")
AUTO = "auto"


@functools.cache
def engine_table() -> dict[str, "EnginePlugin"]:
    """name -> engine class, from every plugin's register_engines hook (first registration of a name wins)."""
    from echo_os.engines.plugins import plugin_manager

    table: dict[str, "EnginePlugin"] = {}

    def register(engine: "EnginePlugin") -> None:
        if not getattr(engine, "name", ""):
            raise TypeError(f"engine {engine!r} has no name")
        table.setdefault(engine.name, engine)

    # In registration order (built-ins first, then entry points), so a plugin cannot take a built-in's
    # name, and listings show the built-ins first. (pluggy's own call order is last-registered first.)
    for impl in plugin_manager().hook.register_engines.get_hookimpls():
        impl.function(register=register)
    return table


def engine_names() -> tuple[str, ...]:
    """Every name --engine accepts: auto, then the registered engines."""
    return (AUTO, *engine_table())


def check_engine_name(name: str, option: str = "engine") -> str:
    if name not in engine_names():
        raise OptionError(f"unknown engine {name!r}; choose one of: {', '.join(engine_names())}", option)
    return name


def get_engine(name: str) -> "EnginePlugin":
    check_engine_name(name)
    return engine_table()[name]


def engine_options(plugin: "EnginePlugin | Engine", request: "RenderRequest") -> "EngineOptions":
    """The request's `options`, validated by the engine's own Options model (one error per field)."""
    try:
        return plugin.Options.model_validate(dict(request.options))
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        key = ".".join(str(part) for part in first.get("loc", ())) or "options"
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        if first.get("type") == "extra_forbidden":
            known = ", ".join(plugin.Options.model_fields) or "none"
            message = f"engine {plugin.name} has no option {key!r} (its options: {known})"
        else:
            message = f"option {key} of engine {plugin.name}: {message}"
        raise OptionError(message, f"options.{key}") from None


def _lacks(settings: "Settings", plugin: "EnginePlugin", request: "RenderRequest", asked: bool) -> str | None:
    """Why `plugin` cannot render `request` here, or None. asked: the user named this engine, so a
    problem is their error (raised) and the engine's own availability is not second-guessed."""
    caps = plugin.capabilities
    problems: list[str] = []
    if caps.network and not settings.network_allowed(plugin.name):
        problems.append(f"it sends requests over the network; set allow = true under [engines.{plugin.name}] "
                        "(or allow_network = true under [engines]) in echo-os.toml")
    unmet = caps.unmet(request)
    if unmet:
        problems.append(unmet)
    if not problems:
        try:
            options = engine_options(plugin, request)
            # What this engine refuses whatever the machine (a hosted model's sizes): the user's error
            # when they named the engine. Optional for plugins that do not subclass BaseEngine.
            check = getattr(plugin, "check_request", None)
            if check is not None:
                check(settings, request, options)
        except OptionError as error:
            if asked:
                raise
            problems.append(str(error))
    if not problems and caps.needs_weights:
        from echo_os.models import ResolveError, check_loadable, load_registry

        registry = load_registry(settings)
        registry.get(request.model)  # an unknown name is the user's error whatever the engine: raise
        try:
            resolved = registry.resolve(request.model)
        except ResolveError as error:
            if asked:
                raise
            return f"no weights for model '{request.model}' here ({error.reason}); see `echo-os models list`"
        check_loadable(resolved)  # a broken or refused file is reported before anything starts
    if problems:
        if asked:
            raise UsageError(f"engine {plugin.name} cannot render this request: {problems[0]}.")
        return problems[0]
    return None if asked else plugin.availability(settings, request)


def engines_of_kind(order: "tuple[str, ...] | list[str]", output: str) -> tuple[str, ...]:
    """The engines of `order` that make `output` (an output kind: image, video, ...); when the order names
    none of that kind, every registered engine of the kind, in registration order."""
    table = engine_table()
    chosen = tuple(name for name in order if table[name].capabilities.output == output)
    return chosen or tuple(name for name, plugin in table.items() if plugin.capabilities.output == output)


def choose_engine(settings: "Settings", request: "RenderRequest",
                  exclude: tuple[str, ...] = ()) -> tuple[str, str]:
    """(engine name, one-line reason): the engine the request names, or for `auto` the first engine
    of the workspace's order that can render it (see the module docstring); `exclude`: engines `auto`
    passes over (one that failed before any image, echo_os.render.scheduler)."""
    if request.engine != AUTO:
        _lacks(settings, get_engine(request.engine), request, asked=True)
        return request.engine, f"chosen with --engine {request.engine}"
    order = settings.engine_order or DEFAULT_ORDER
    unknown = [name for name in order if name not in engine_table()]
    if unknown:  # a typo is reported even when an engine before it is available
        raise UsageError(f"[engines] order in echo-os.toml names {unknown[0]!r}, which is not an engine here; "
                         f"known: {', '.join(engine_table())}.")
    order = engines_of_kind(order, request.output)
    skipped: list[str] = []
    reasons: dict[str, str] = {}
    for name in order:
        if name in exclude:
            continue
        problem = _lacks(settings, engine_table()[name], request, asked=False)
        if problem is None:
            reason = f"auto: first available in the order {', '.join(order)}"
            return name, reason + (f"; skipped {'; '.join(skipped)}" if skipped else "")
        repeated = next((earlier for earlier, why in reasons.items() if why == problem), None)
        reasons[name] = problem
        skipped.append(f"{name}: as {repeated}" if repeated else f"{name}: {problem}")
    raise UsageError(f"no engine of the order {', '.join(order)} can render this request: {'; '.join(skipped)}.")


def check_runtime(settings: "Settings", request: "RenderRequest") -> None:
    """Raise the OptionError of the engine that would render `request` for what this machine lacks (a device,
    a package): the named engine, or for `auto` the first engine of the workspace's order whose capabilities
    cover the request (the one `auto` tries first). Each engine states its own rules (check_runtime)."""
    if request.engine != AUTO:
        plugin = get_engine(request.engine)
    else:
        table = engine_table()
        order = engines_of_kind([n for n in settings.engine_order or DEFAULT_ORDER if n in table], request.output)
        covering = [table[name] for name in order if table[name].capabilities.unmet(request) is None
                    and (not table[name].capabilities.network or settings.network_allowed(name))]
        if not covering:
            return  # choose_engine says why no engine fits
        plugin = covering[0]
    check = getattr(plugin, "check_runtime", None)  # optional for plugins that do not subclass BaseEngine
    if check is not None:
        check(settings, request)


def create_engine(settings: "Settings", name: str, reason: str) -> "Engine":
    return get_engine(name).create(settings, reason)


def reset_plugins() -> None:
    """Forget the plugin manager and the tables built from it; the next use loads the plugins again
    (for tests that put a plugin on the path or register one)."""
    from echo_os.engines.plugins import plugin_manager
    from echo_os.engines.presets import preset_table

    plugin_manager.cache_clear()
    engine_table.cache_clear()
    preset_table.cache_clear()
