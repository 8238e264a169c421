"""IP-Adapter for the sdxl engine: reference images -> image embeddings -> `ip_adapter_image_embeds`.

A request's IPAdapterInput holds one reference per character (its images and scale). The pipeline gets
one IP-Adapter per reference, all loaded from the same models.toml `ip-adapter` entry, so each
character keeps its own scale (`set_ip_adapter_scale([...])`). The adapters are (re)loaded only when
the adapter set changes between batches, and unloaded for requests without references, so a scene
without characters renders exactly as it would with no adapter ever loaded.

Each reference image is encoded once with diffusers' `prepare_ip_adapter_image_embeds` and cached as
safetensors in `<cache>/ip-adapter/<image sha256>-<encoder sha256[:16]>-<kind>-<dtype>.safetensors`:
`kind` is `embeds` (pooled image embeddings, IP-Adapter) or `hidden` (penultimate hidden states,
IP-Adapter Plus), because the same encoder gives different inputs to the two. The file holds the
negative (unconditional) and positive embedding, each [1, 1, ...]. A character with several images
gets them side by side ([1, n, ...]), the layout diffusers uses for several images per adapter; with
classifier-free guidance the negative half goes first ([2, n, ...]) and the pipeline repeats it for
every image of the batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from echo_os.errors import EchoError, ModelError, UsageError

if TYPE_CHECKING:
    import torch
    from transformers import CLIPVisionModelWithProjection

    from echo_os.engines.base import ModelInfo
    from echo_os.engines.devices import DiffusersPipeline
    from echo_os.engines.sdxl import LoadedPipeline
    from echo_os.models import ResolvedModel
    from echo_os.render.requests import IPAdapterImage, IPAdapterInput
    from echo_os.settings import Settings

log = logging.getLogger(__name__)

CACHE_FOLDER = "ip-adapter"


# (negative, positive) image embedding of one reference image, each [1, 1, ...].
EmbeddingPair: TypeAlias = "tuple[torch.Tensor, torch.Tensor]"


@dataclass
class AdapterState:
    """What IP-Adapter set a loaded pipeline holds now. The image encoder survives unloads."""

    model: str | None = None
    count: int = 0
    info: "ModelInfo | None" = None
    encoder: "CLIPVisionModelWithProjection | None" = None
    encoder_path: Path | None = None
    encoder_sha256: str | None = None
    embeddings: dict[Path, EmbeddingPair] = field(default_factory=dict)  # cache file -> (negative, positive)


def resolve_adapter(settings: "Settings", name: str) -> "ResolvedModel":
    """The ip-adapter entry's files on this machine, checked; ModelError naming what is missing."""
    from echo_os.models import check_loadable, load_registry

    resolved = load_registry(settings).resolve(name)
    if resolved.entry.type != "ip-adapter":
        raise UsageError(f"{resolved.entry.label} is a {resolved.entry.type} model, not an ip-adapter; "
                         "name an ip-adapter entry (see `echo-os models list`).")
    check_loadable(resolved)
    return resolved


def ensure_adapters(settings: "Settings", loaded: "LoadedPipeline", adapter: "IPAdapterInput | None") -> "ModelInfo | None":
    """Make the pipeline hold exactly the adapters `adapter` needs (none when it is None), with its scales."""
    state: AdapterState = loaded.ip_adapter
    pipe = loaded.pipe
    wanted = (adapter.model, len(adapter.references)) if adapter is not None else None
    held = (state.model, state.count) if state.count else None
    if wanted != held:
        if held is not None:
            pipe.unload_ip_adapter()
            state.model, state.count, state.info = None, 0, None
            if loaded.attention == "xformers":  # unloading puts back the default SDPA processors
                pipe.enable_xformers_memory_efficient_attention()
        if adapter is not None:
            _load(settings, loaded, adapter)
    if adapter is not None:
        pipe.set_ip_adapter_scale([reference.scale for reference in adapter.references])
    return state.info


def _load(settings: "Settings", loaded: "LoadedPipeline", adapter: "IPAdapterInput") -> None:
    import torch
    from transformers import CLIPVisionModelWithProjection

    from echo_os.models import model_info

    state: AdapterState = loaded.ip_adapter
    resolved = resolve_adapter(settings, adapter.model)
    encoder = resolved.image_encoder
    if encoder is None:  # resolving an ip-adapter entry finds its encoder or raises: not reached
        raise ModelError(f"{resolved.entry.label}: no image encoder was resolved for this IP-Adapter.")
    if state.encoder is None or state.encoder_path != encoder.local_path:
        model = CLIPVisionModelWithProjection.from_pretrained(
            str(encoder.local_path), local_files_only=True, dtype=getattr(torch, loaded.dtype),
            use_safetensors=None if encoder.entry.allow_pickle else True)
        # transformers wraps Module.to in a decorator whose annotations drop `self`: mypy reads the device
        # as the model argument.
        state.encoder = model.to(loaded.device)  # type: ignore[arg-type]
        state.encoder_path = encoder.local_path
        state.encoder_sha256 = model_info(settings, encoder).weights_sha256
        state.embeddings.clear()
    # The encoder is registered first, so load_ip_adapter does not look for one inside the adapter's folder.
    loaded.pipe.register_modules(image_encoder=state.encoder)
    adapter_file = resolved.local_path
    loaded.pipe.load_ip_adapter(str(adapter_file.parent), subfolder="",
                                weight_name=[adapter_file.name] * len(adapter.references),
                                image_encoder_folder=None, local_files_only=True)
    state.model, state.count = adapter.model, len(adapter.references)
    state.info = model_info(settings, resolved)
    log.info("loaded IP-Adapter %s x%d", adapter.model, state.count)


def embedding_kind(pipe: "DiffusersPipeline") -> str:
    """`embeds` for IP-Adapter (ImageProjection), `hidden` for the Plus/Full kinds (hidden states)."""
    from diffusers.models.embeddings import ImageProjection

    layer = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    return "embeds" if isinstance(layer, ImageProjection) else "hidden"


def cache_path(settings: "Settings", image_sha256: str, encoder_sha256: str, kind: str, dtype: str) -> Path:
    return settings.cache_dir / CACHE_FOLDER / f"{image_sha256}-{encoder_sha256[:16]}-{kind}-{dtype}.safetensors"


def image_embedding(settings: "Settings", loaded: "LoadedPipeline", image: "IPAdapterImage") -> EmbeddingPair:
    """(negative, positive) embedding of one reference image, each [1, 1, ...], from the cache or computed."""
    from safetensors.torch import load_file, save_file

    state: AdapterState = loaded.ip_adapter
    assert state.encoder_sha256 is not None, "the adapter's encoder is loaded (ensure_adapters) before embedding"
    path = cache_path(settings, image.sha256, state.encoder_sha256, embedding_kind(loaded.pipe), loaded.dtype)
    if path in state.embeddings:
        return state.embeddings[path]
    if path.is_file():
        tensors = load_file(str(path))
        pair = (tensors["negative"], tensors["positive"])
    else:
        pair = _encode(settings, loaded, image)
        from echo_os.atomic import atomic_path

        with atomic_path(path) as tmp:
            save_file({"negative": pair[0].detach().cpu().contiguous(),
                       "positive": pair[1].detach().cpu().contiguous()}, str(tmp))
        pair = (pair[0].detach().cpu(), pair[1].detach().cpu())
    state.embeddings[path] = pair
    return pair


def _encode(settings: "Settings", loaded: "LoadedPipeline", image: "IPAdapterImage") -> EmbeddingPair:
    import torch
    from PIL import Image

    from echo_os.models.hashing import require_unchanged

    path = require_unchanged(settings, image.path, image.sha256, "reference image")
    with Image.open(path) as opened:
        picture = opened.convert("RGB")
    state: AdapterState = loaded.ip_adapter
    with torch.inference_mode():
        # One image per loaded adapter, as prepare_ip_adapter_image_embeds requires; every adapter shares
        # one encoder and one projection kind, so the first result is this image's embedding.
        embeds = loaded.pipe.prepare_ip_adapter_image_embeds(
            ip_adapter_image=[picture] * state.count, ip_adapter_image_embeds=None, device=loaded.device,
            num_images_per_prompt=1, do_classifier_free_guidance=True)[0]
    negative, positive = embeds.chunk(2)
    return negative, positive


def reference_embeds(settings: "Settings", loaded: "LoadedPipeline", adapter: "IPAdapterInput",
                     guidance: bool) -> list["torch.Tensor"]:
    """`ip_adapter_image_embeds` for one pipeline call: one tensor per adapter, in reference order."""
    import torch

    torch_dtype = getattr(torch, loaded.dtype)
    embeds = []
    for reference in adapter.references:
        pairs = [image_embedding(settings, loaded, image) for image in reference.images]
        negative = torch.cat([pair[0] for pair in pairs], dim=1)
        positive = torch.cat([pair[1] for pair in pairs], dim=1)
        tensor = torch.cat([negative, positive]) if guidance else positive
        embeds.append(tensor.to(device=loaded.device, dtype=torch_dtype))
    return embeds


class AdapterMissing(ModelError):
    """A story needs an IP-Adapter this machine does not have (the HTTP API reports it on `ip_adapter`)."""


def check_adapter(settings: "Settings", name: str) -> None:
    """Resolve an ip-adapter entry now (before any scene renders); AdapterMissing with what to do."""
    try:
        resolve_adapter(settings, name)
    except EchoError as error:
        raise AdapterMissing(f"reference images need the IP-Adapter model '{name}': {str(error).rstrip('.')}; "
                             "or render without them: --ip-adapter none (over HTTP: \"ip_adapter\": \"none\").") \
            from None
