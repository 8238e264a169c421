"""PNG text-chunk metadata of other tools: read A1111, ComfyUI and InvokeAI images (echo-os writes A1111
`parameters` with echo_os.artifacts.pnginfo.a1111_parameters; the tests read it back here).

`read_png_metadata(path)` returns an `ImportedMeta` for any PNG: what the chunks say (prompt, seed, steps,
...) plus the raw chunks, with source "unknown" when no known chunk is present. Parsing is tolerant: a
malformed chunk is reported in `warnings` and the next one is tried; nothing here raises on bad contents.

Formats, in the order a file carrying several is read:
- InvokeAI `invokeai_metadata`: JSON (positive_prompt, negative_prompt, seed, steps, cfg_scale, width,
  height, scheduler, model.name).
- ComfyUI `prompt`: the API-format graph {node_id: {class_type, inputs}}; the sampler's positive/negative
  links are followed back to the text encoders. ComfyUI `workflow` (UI format: nodes + links) when no
  `prompt` chunk is present.
- A1111 `parameters` (also written by Forge, SD.Next, ComfyUI savers and echo-os itself):

      <prompt lines>
      Negative prompt: <negative lines>
      Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 1024x1024, Model: sd_xl_base_1.0

  A value holding a comma, colon or newline is written JSON-quoted, as A1111 does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeGuard

from echo_os.artifacts.pnginfo import A1111_SAMPLER_NAMES

Source = Literal["a1111", "comfyui", "invokeai", "fooocus", "unknown"]

# A1111's own pattern for one "Key: value" pair of the last line (modules/infotext_utils.py): a value is
# either JSON-quoted (may contain commas) or runs to the next comma. The key is bounded (A1111's longest
# is under 40 characters): unbounded, a 3 MB line of words with no colon backtracked quadratically and
# hung `memory import` (red-team finding).
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]{0,63}):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
# Outside metadata is read within bounds: a chunk longer than this is ignored with a warning (A1111's
# infotext is a few KB; a ComfyUI workflow a few hundred KB), and so is a number no image could hold
# (a seed of 26 digits aborted an import with OverflowError: SQLite's INTEGER is 64-bit).
MAX_CHUNK_CHARS = 1024 * 1024
MAX_PARAMETERS_LINE = 16 * 1024
MAX_INT = 2**63 - 1
_SIZE_RE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")
_NEGATIVE_PREFIX = "Negative prompt:"

# Other tools' sampler names -> echo-os scheduler names (ComfyUI sampler_name, InvokeAI scheduler).
_TOOL_SAMPLERS = {
    "euler": "euler", "euler_ancestral": "euler_a", "euler_a": "euler_a", "dpmpp_2m": "dpmpp_2m",
    "dpmpp_2m_k": "dpmpp_2m_karras", "ddim": "ddim", "heun": "heun", "unipc": "unipc", "uni_pc": "unipc",
}


@dataclass(frozen=True)
class ImportedMeta:
    """What an image made by another tool says about how it was made. None where the tool did not say."""

    source: Source
    prompt: str | None = None
    negative: str | None = None
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None
    scheduler: str | None = None  # ComfyUI's noise schedule / A1111's "Schedule type" (e.g. "karras")
    width: int | None = None
    height: int | None = None
    model: str | None = None
    model_hash: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # other key/values (A1111 params line)
    raw: dict[str, str] = field(default_factory=dict)  # every text chunk of the file, as read
    warnings: tuple[str, ...] = ()

    def echo_scheduler(self) -> str | None:
        """The echo-os scheduler name (see echo_os.render.requests.SCHEDULERS) for this sampler, if there is one."""
        if not self.sampler:
            return None
        name = self.sampler.strip()
        karras = (self.scheduler or "").strip().lower() == "karras"
        for ours, theirs in A1111_SAMPLER_NAMES.items():  # the table the artifact store writes with
            if name == theirs:
                return "dpmpp_2m_karras" if ours == "dpmpp_2m" and karras else ours
        mapped = _TOOL_SAMPLERS.get(name.lower())
        if mapped == "dpmpp_2m" and karras:
            return "dpmpp_2m_karras"
        return mapped


# -- A1111 -------------------------------------------------------------------------------------------


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            return str(json.loads(value))
        except ValueError:
            return value[1:-1]
    return value


def _split_a1111(text: str) -> tuple[str, str, str]:
    """(prompt, negative, parameters line) the way A1111 splits its infotext."""
    *lines, last = text.strip().split("\n")
    if len(last) > MAX_PARAMETERS_LINE or len(_PARAM_RE.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(_NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(_NEGATIVE_PREFIX):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    return "\n".join(prompt_lines), "\n".join(negative_lines), last


def _to_int(value: object) -> int | None:
    """The value as an int within SQLite's INTEGER (|n| <= MAX_INT), else None."""
    text = str(value).strip()[:40]  # a longer number is out of range anyway (and int() of 5000 digits raises)
    try:
        number = int(text)
    except (TypeError, ValueError):
        try:
            real = float(text)
        except (TypeError, ValueError):
            return None
        if not real.is_integer():
            return None
        number = int(real)
    return number if -MAX_INT <= number <= MAX_INT else None


def _to_float(value: object) -> float | None:
    try:
        return float(str(value).strip())
    except (TypeError, ValueError):
        return None


def parse_a1111_parameters(text: str) -> ImportedMeta:
    """Read an A1111 `parameters` text (tolerant of quoted values with commas, multi-line prompts)."""
    prompt, negative, last = _split_a1111(text)
    params: dict[str, str] = {}
    for key, value in _PARAM_RE.findall(last):
        params[key.strip()] = _unquote(value)
    width = height = None
    size = _SIZE_RE.match(params.pop("Size", ""))
    if size:
        width, height = _to_int(size.group(1)), _to_int(size.group(2))
    known = {"Steps", "Sampler", "CFG scale", "Seed", "Model", "Model hash", "Schedule type"}
    return ImportedMeta(
        source="a1111",
        prompt=prompt or None,
        negative=negative or None,
        steps=_to_int(params.get("Steps")),
        sampler=params.get("Sampler") or None,
        scheduler=params.get("Schedule type") or None,
        cfg=_to_float(params.get("CFG scale")),
        seed=_to_int(params.get("Seed")),
        width=width,
        height=height,
        model=params.get("Model") or None,
        model_hash=params.get("Model hash") or None,
        extra={key: value for key, value in params.items() if key not in known},
    )


def _parse_fooocus(data: dict[str, Any]) -> ImportedMeta:
    """Fooocus writes its own JSON into `parameters` (metadata scheme "fooocus")."""
    width = height = None
    resolution = re.findall(r"\d+", str(data.get("resolution", "")))
    if len(resolution) == 2:
        width, height = _to_int(resolution[0]), _to_int(resolution[1])
    return ImportedMeta(
        source="fooocus", prompt=_text(data.get("prompt")), negative=_text(data.get("negative_prompt")),
        seed=_to_int(data.get("seed")), steps=_to_int(data.get("steps")), cfg=_to_float(data.get("guidance_scale")),
        sampler=_text(data.get("sampler")), scheduler=_text(data.get("scheduler")), width=width, height=height,
        model=_text(data.get("base_model")),
    )


def _text(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


# -- InvokeAI ----------------------------------------------------------------------------------------


def parse_invokeai_metadata(text: str) -> ImportedMeta:
    """Read InvokeAI's `invokeai_metadata` JSON (3.x and 4.x+: model as {name} or {model_name})."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("invokeai_metadata is not a JSON object")
    model = data.get("model")
    model_name = model_hash = None
    if isinstance(model, dict):
        model_name = _text(model.get("name")) or _text(model.get("model_name"))
        model_hash = _text(model.get("hash"))
    elif isinstance(model, str):
        model_name = _text(model)
    return ImportedMeta(
        source="invokeai", prompt=_text(data.get("positive_prompt")), negative=_text(data.get("negative_prompt")),
        seed=_to_int(data.get("seed")), steps=_to_int(data.get("steps")), cfg=_to_float(data.get("cfg_scale")),
        sampler=_text(data.get("scheduler")), width=_to_int(data.get("width")), height=_to_int(data.get("height")),
        model=model_name, model_hash=model_hash,
        extra={key: str(data[key]) for key in ("generation_mode", "app_version", "positive_style_prompt",
                                               "negative_style_prompt", "rand_device") if data.get(key) is not None},
    )


# -- ComfyUI -----------------------------------------------------------------------------------------

_SAMPLER_TYPES = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")
_CHECKPOINT_TYPES = ("CheckpointLoaderSimple", "CheckpointLoader", "UNETLoader", "unCLIPCheckpointLoader")
_TEXT_KEYS = ("text", "text_g", "text_l", "prompt", "string", "value", "positive", "negative")


class _ComfyGraph:
    """The API-format graph: {node_id: {"class_type": str, "inputs": {name: literal | [node_id, slot]}}}."""

    def __init__(self, nodes: dict[str, Any]):
        self.nodes = {str(k): v for k, v in nodes.items() if isinstance(v, dict) and "class_type" in v}

    @staticmethod
    def is_link(value: object) -> TypeGuard[list[Any]]:
        return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)

    def inputs(self, node_id: str) -> dict[str, Any]:
        inputs = self.nodes.get(str(node_id), {}).get("inputs", {})
        return inputs if isinstance(inputs, dict) else {}

    def class_type(self, node_id: str) -> str:
        return str(self.nodes.get(str(node_id), {}).get("class_type", ""))

    def literal(self, value: object, depth: int = 0) -> object:
        """A value, following links to primitive nodes (seed widgets, string nodes) until a literal."""
        if not self.is_link(value) or depth > 8:
            return value
        source = self.inputs(str(value[0]))
        for key in ("value", "seed", "noise_seed", "int", "float", "string", "text"):
            if key in source:
                return self.literal(source[key], depth + 1)
        return None

    def texts(self, value: object, depth: int = 0) -> list[str]:
        """The prompt texts feeding a conditioning link (through combine/concat/area nodes)."""
        if not self.is_link(value) or depth > 16:
            return []
        node_id = str(value[0])
        inputs = self.inputs(node_id)
        found: list[str] = []
        if "TextEncode" in self.class_type(node_id) or any(isinstance(inputs.get(k), str) for k in ("text", "text_g")):
            for key in ("text", "text_g", "text_l"):
                text = self.literal(inputs.get(key))
                if isinstance(text, str) and text.strip() and text.strip() not in found:
                    found.append(text.strip())
            if found:
                return found
        if self.is_link(inputs.get("positive")) and self.is_link(inputs.get("negative")):
            # A node passing both on (ControlNetApplyAdvanced...): output slot 0 is positive, 1 negative.
            return self.texts(inputs["negative" if value[1] == 1 else "positive"], depth + 1)
        for key, item in inputs.items():
            if self.is_link(item) and (key.startswith("conditioning") or key in _TEXT_KEYS):
                for text in self.texts(item, depth + 1):
                    if text not in found:
                        found.append(text)
        return found

    def upstream(self, value: object, types: tuple[str, ...], key: str, depth: int = 0) -> str | None:
        """The node id of the first node of `types` up a chain of links through input `key`."""
        if not self.is_link(value) or depth > 16:
            return None
        node_id = str(value[0])
        if self.class_type(node_id) in types:
            return node_id
        return self.upstream(self.inputs(node_id).get(key), types, key, depth + 1)

    def samplers(self) -> list[str]:
        found = [n for n in self.nodes if self.class_type(n) in _SAMPLER_TYPES]

        def first_pass(node_id: str) -> tuple[int, int]:
            # The txt2img sampler (fed by an empty latent) before refiners and hires passes.
            latent = self.inputs(node_id).get("latent_image")
            fed_by_empty = self.is_link(latent) and "EmptyLatent" in self.class_type(str(latent[0]))
            return (0 if fed_by_empty else 1, _to_int(node_id) or 0)

        return sorted(found, key=first_pass)


def parse_comfyui_prompt(text: str) -> ImportedMeta:
    """Read ComfyUI's API-format `prompt` chunk: sampler settings, the prompts it was fed, the checkpoint."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("ComfyUI prompt is not a JSON object")
    graph = _ComfyGraph(data)
    samplers = graph.samplers()
    if not samplers:
        texts = [t for n in graph.nodes if "TextEncode" in graph.class_type(n)
                 for t in graph.texts([n, 0])]
        return ImportedMeta(source="comfyui", prompt=texts[0] if texts else None)
    sampler_id = samplers[0]
    inputs = graph.inputs(sampler_id)
    positive = graph.texts(inputs.get("positive"))
    negative = graph.texts(inputs.get("negative"))
    if not positive and graph.is_link(inputs.get("guider")):  # SamplerCustomAdvanced: a guider node
        guider = graph.inputs(str(inputs["guider"][0]))
        positive = graph.texts(guider.get("positive") or guider.get("conditioning"))
        negative = graph.texts(guider.get("negative"))
    seed = graph.literal(inputs.get("seed", inputs.get("noise_seed")))
    if seed is None and graph.is_link(inputs.get("noise")):
        seed = graph.literal(graph.inputs(str(inputs["noise"][0])).get("noise_seed"))
    width = height = None
    latent = graph.upstream(inputs.get("latent_image"), ("EmptyLatentImage", "EmptySD3LatentImage"), "samples")
    if latent is not None:
        width = _to_int(graph.literal(graph.inputs(latent).get("width")))
        height = _to_int(graph.literal(graph.inputs(latent).get("height")))
    checkpoint = graph.upstream(inputs.get("model"), _CHECKPOINT_TYPES, "model")
    if checkpoint is None:
        checkpoint = next((n for n in graph.nodes if graph.class_type(n) in _CHECKPOINT_TYPES), None)
    model = None
    if checkpoint is not None:
        loader = graph.inputs(checkpoint)
        model = graph.literal(loader.get("ckpt_name", loader.get("unet_name")))
    return ImportedMeta(
        source="comfyui",
        prompt="\n".join(positive) or None,
        negative="\n".join(negative) or None,
        seed=_to_int(seed),
        steps=_to_int(graph.literal(inputs.get("steps"))),
        cfg=_to_float(graph.literal(inputs.get("cfg"))),
        sampler=_text(graph.literal(inputs.get("sampler_name"))),
        scheduler=_text(graph.literal(inputs.get("scheduler"))),
        width=width, height=height,
        model=_text(model),
        extra={"sampler_node": graph.class_type(sampler_id)},
    )


def parse_comfyui_workflow(text: str) -> ImportedMeta:
    """Read ComfyUI's UI-format `workflow` chunk (nodes with widgets_values, links table)."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise ValueError("ComfyUI workflow has no nodes list")
    nodes = {node.get("id"): node for node in data["nodes"] if isinstance(node, dict)}
    # link: [link_id, from_node, from_slot, to_node, to_slot, type]
    links = {link[0]: link for link in data.get("links", []) if isinstance(link, list) and len(link) >= 4}

    def source_of(node: dict, name: str) -> dict | None:
        for item in node.get("inputs", []) or []:
            if isinstance(item, dict) and item.get("name") == name and item.get("link") in links:
                return nodes.get(links[item["link"]][1])
        return None

    def texts(node: dict | None, depth: int = 0) -> list[str]:
        if node is None or depth > 16:
            return []
        widgets = node.get("widgets_values") or []
        if "TextEncode" in str(node.get("type", "")):
            found = [w.strip() for w in widgets if isinstance(w, str) and w.strip()]
            if found:
                return found[:1] if node.get("type") == "CLIPTextEncode" else found[:2]
        result: list[str] = []
        for item in node.get("inputs", []) or []:
            if isinstance(item, dict) and str(item.get("type")) in ("CONDITIONING", "STRING"):
                for text in texts(source_of(node, item["name"]), depth + 1):
                    if text not in result:
                        result.append(text)
        if not result and str(node.get("type", "")).startswith(("Primitive", "String")):
            result = [w.strip() for w in widgets[:1] if isinstance(w, str) and w.strip()]
        return result

    samplers = [n for n in nodes.values() if n.get("type") in ("KSampler", "KSamplerAdvanced")]
    prompt = negative = sampler = scheduler = model = None
    seed = steps = width = height = None
    cfg = None
    if samplers:
        node = sorted(samplers, key=lambda n: n.get("order", 0))[0]
        widgets = node.get("widgets_values") or []
        if node.get("type") == "KSampler" and len(widgets) >= 6:
            # [seed, control_after_generate, steps, cfg, sampler_name, scheduler, denoise]
            seed, steps, cfg, sampler, scheduler = widgets[0], widgets[2], widgets[3], widgets[4], widgets[5]
        elif node.get("type") == "KSamplerAdvanced" and len(widgets) >= 7:
            # [add_noise, noise_seed, control_after_generate, steps, cfg, sampler_name, scheduler, ...]
            seed, steps, cfg, sampler, scheduler = widgets[1], widgets[3], widgets[4], widgets[5], widgets[6]
        prompt = "\n".join(texts(source_of(node, "positive"))) or None
        negative = "\n".join(texts(source_of(node, "negative"))) or None
        latent = source_of(node, "latent_image")
        if latent is not None and "EmptyLatent" in str(latent.get("type", "")):
            size = latent.get("widgets_values") or []
            if len(size) >= 2:
                width, height = size[0], size[1]
    loader = next((n for n in nodes.values() if n.get("type") in _CHECKPOINT_TYPES), None)
    if loader is not None and loader.get("widgets_values"):
        model = loader["widgets_values"][0]
    return ImportedMeta(
        source="comfyui", prompt=prompt, negative=negative, seed=_to_int(seed), steps=_to_int(steps),
        cfg=_to_float(cfg), sampler=_text(sampler), scheduler=_text(scheduler), width=_to_int(width),
        height=_to_int(height), model=_text(model),
    )


# -- files -------------------------------------------------------------------------------------------


def read_png_text(path: str | Path) -> tuple[dict[str, str], tuple[int, int] | None]:
    """The text chunks (tEXt, zTXt, iTXt) of an image file and its (width, height)."""
    from PIL import Image

    with Image.open(path) as image:  # over twice Pillow's pixel limit: DecompressionBombError here
        width, height = image.size
        limit = Image.MAX_IMAGE_PIXELS  # None: the caller turned Pillow's limit off
        if limit is not None and width * height > limit:  # refused before decoding, not just warned about
            raise ValueError(f"{width}x{height} pixels is more than Pillow's limit of {limit}")
        image.load()  # chunks after IDAT are read with the pixels
        chunks = getattr(image, "text", None) or {}
        chunks = {str(k): str(v) for k, v in chunks.items()}
        if not chunks:
            chunks = {str(k): v for k, v in image.info.items() if isinstance(v, str)}
        return chunks, image.size


def parse_text_chunks(chunks: Mapping[str, str], image_size: tuple[int, int] | None = None) -> ImportedMeta:
    """An ImportedMeta from text chunks, trying the formats from most to least structured."""
    warnings: list[str] = []
    parsed: ImportedMeta | None = None
    readers = (
        ("invokeai_metadata", parse_invokeai_metadata),
        ("prompt", parse_comfyui_prompt),
        ("parameters", _parse_parameters),
        ("workflow", parse_comfyui_workflow),
    )
    for key, reader in readers:
        text = chunks.get(key)
        if not text or not text.strip():
            continue
        if len(text) > MAX_CHUNK_CHARS:
            warnings.append(f"ignored the {key!r} chunk: {len(text):,} characters, more than the "
                            f"{MAX_CHUNK_CHARS:,} read")
            continue
        try:
            parsed = reader(text)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError, OverflowError) as error:
            warnings.append(f"ignored malformed {key!r} chunk ({type(error).__name__}: {error})"[:300])
            continue
        break
    if parsed is None:
        parsed = ImportedMeta(source="unknown")
    fields = dict(parsed.__dict__)
    fields["raw"] = dict(chunks)
    fields["warnings"] = tuple(warnings)
    if image_size is not None:
        fields["width"] = fields["width"] or image_size[0]
        fields["height"] = fields["height"] or image_size[1]
    return ImportedMeta(**fields)


def _parse_parameters(text: str) -> ImportedMeta:
    stripped = text.strip()
    if stripped.startswith("{"):
        data = json.loads(stripped)
        if isinstance(data, dict) and "prompt" in data:
            return _parse_fooocus(data)
    return parse_a1111_parameters(text)


def read_png_metadata(path: str | Path) -> ImportedMeta:
    """How the image at `path` was made, as far as its text chunks say (source "unknown" when silent).

    Raises OSError (PIL.UnidentifiedImageError) when the file is not an image.
    """
    chunks, size = read_png_text(path)
    return parse_text_chunks(chunks, size)
