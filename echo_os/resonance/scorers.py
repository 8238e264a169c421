"""The scoring models: CLIP (image and text towers) and an optional aesthetic head.

CLIP is the entry the continuity report uses (memory.embedders.find_clip: a models.toml
name, or the first clip entry that resolves on this machine) and is loaded through Echo Memory's
ClipEmbedder, so one CLIP loader serves search, continuity and scores. The aesthetic head is a
models.toml entry of `type = "scorer"`: one local file holding a small MLP (LAION's improved aesthetic
predictor has this shape: Linear layers 768 -> 1024 -> 128 -> 64 -> 16 -> 1 over the L2-normalised CLIP
ViT-L/14 image embedding, no activations between them, keys layers.N.weight / layers.N.bias). It runs in
numpy: a few matrix products do not need torch.

Each model that is not there is named in `Scorers.missing` with the reason, for `score` and `memory stats`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from echo_os.errors import EchoError, ModelError

if TYPE_CHECKING:
    from echo_os.artifacts.store import Artifact
    from echo_os.memory.embedders import ClipEmbedder
    from echo_os.resonance.scores import ArtifactScores
    from echo_os.settings import Settings

SCORER_TYPE = "scorer"
_LAYER_RE = re.compile(r"^(?P<prefix>.*?)(?P<index>\d+)\.weight$")


@dataclass(frozen=True)
class AestheticHead:
    """A chain of Linear layers (weight out x in, bias out) applied to a CLIP image embedding."""

    name: str
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]

    @property
    def input_dim(self) -> int:
        return int(self.layers[0][0].shape[1])

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        """One score per row of `embeddings` (L2-normalised CLIP image embeddings)."""
        values = np.asarray(embeddings, dtype=np.float64)
        for weight, bias in self.layers:
            values = values @ weight.T + bias
        return values[:, 0]


def head_from_tensors(name: str, tensors: dict[str, np.ndarray]) -> AestheticHead:
    """The Linear layers of a state dict in index order; every weight needs its bias and the shapes
    must chain to one output. Raises ModelError naming what does not fit."""
    found = []
    for key, weight in tensors.items():
        match = _LAYER_RE.match(key)
        if match is None or np.ndim(weight) != 2:
            continue
        bias_key = key[: -len("weight")] + "bias"
        if bias_key not in tensors:
            raise ModelError(f"scorer '{name}': {key} has no {bias_key}")
        found.append((match.group("prefix"), int(match.group("index")),
                      np.asarray(weight, dtype=np.float64), np.asarray(tensors[bias_key], dtype=np.float64)))
    if not found:
        raise ModelError(f"scorer '{name}': no Linear layers (keys like layers.0.weight) in the file")
    found.sort(key=lambda item: (item[0], item[1]))
    layers = tuple((weight, bias) for _, _, weight, bias in found)
    for (previous, _), (weight, _) in zip(layers, layers[1:]):
        if weight.shape[1] != previous.shape[0]:
            raise ModelError(f"scorer '{name}': layer shapes do not chain ({previous.shape} then {weight.shape})")
    if layers[-1][0].shape[0] != 1:
        raise ModelError(f"scorer '{name}': the last layer has {layers[-1][0].shape[0]} outputs, not 1")
    return AestheticHead(name=name, layers=layers)


def load_aesthetic_head(name: str, path: Path, allow_pickle: bool = False) -> AestheticHead:
    """An aesthetic head from a local .safetensors file (or a pickle checkpoint when allowed)."""
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(path))
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
            raise ModelError(f"scorer '{name}': cannot read {path}: {error}") from None
    elif allow_pickle:
        import torch

        state = torch.load(str(path), map_location="cpu", weights_only=True)
        tensors = {key: value.float().numpy() for key, value in state.items() if hasattr(value, "numpy")}
    else:
        raise ModelError(f"scorer '{name}': {path.name} is not a .safetensors file (set allow_pickle = true "
                         "in models.toml to load a pickle checkpoint)")
    return head_from_tensors(name, tensors)


@dataclass
class Scorers:
    """What scores images on this machine; missing: scorer -> why it is not there."""

    clip: "ClipEmbedder | None" = None
    clip_name: str | None = None
    aesthetic: AestheticHead | None = None
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.clip is not None

    def describe(self) -> list[str]:
        """One line per scorer: what is used, or why it is off."""
        lines = []
        if self.clip is not None:
            lines.append(f"clip      on: {self.clip_name} (alignment, character and style consistency)")
        if self.aesthetic is not None:
            lines.append(f"aesthetic on: {self.aesthetic.name}")
        lines += [f"{name:<9} off: {why}" for name, why in self.missing.items()]
        return lines


def find_scorer_entry(settings: "Settings") -> tuple[str | None, Path | None, bool, str | None]:
    """(name, file, allow_pickle, None) of the first scorer entry whose file is here, else (None, None, False, why)."""
    from echo_os.models import load_registry

    registry = load_registry(settings)
    entries = sorted((e for e in registry.entries() if e.type == SCORER_TYPE), key=lambda e: e.name)
    reasons = []
    for entry in entries:
        try:
            resolved = registry.resolve(entry.name)
        except EchoError as error:
            reasons.append(f"{entry.name}: {error}")
            continue
        return entry.name, resolved.local_path, entry.allow_pickle, None
    why = "; ".join(reasons) if reasons else 'no `type = "scorer"` entry in models.toml (an aesthetic head is optional)'
    return None, None, False, why


def load_scorers(settings: "Settings", clip: str | None = None, *, device: str = "auto") -> Scorers:
    """CLIP (clip: a models.toml name, "none", or None for the first one here) and the aesthetic head.

    A named CLIP that is not a clip entry raises; anything merely absent is recorded in `missing`.
    An aesthetic head whose input size differs from the CLIP embedding is refused with the two sizes.
    """
    from echo_os.memory.embedders import ClipEmbedder, find_clip

    scorers = Scorers()
    choice = find_clip(settings, clip)  # the one CLIP rule (memory, continuity, dupes, scores)
    name, folder, why = choice.name, choice.folder, choice.why_not
    if name is None or folder is None:
        scorers.missing["clip"] = why or "no CLIP model"
    else:
        scorers.clip, scorers.clip_name = ClipEmbedder(folder, device=device), name
    head_name, head_path, allow_pickle, why = find_scorer_entry(settings)
    if head_name is None or head_path is None:
        scorers.missing["aesthetic"] = why or "no aesthetic scorer"
    else:
        head = load_aesthetic_head(head_name, head_path, allow_pickle)
        if scorers.clip is not None and head.input_dim != scorers.clip.dim:
            raise ModelError(f"scorer '{head_name}' takes {head.input_dim}-d embeddings but CLIP {name} gives "
                             f"{scorers.clip.dim}-d; pair the head with the CLIP it was trained on")
        scorers.aesthetic = head
    return scorers


# ---- scorer plugins (`echo-os evolve --scorer NAME`) ----------------------------------------------------

class ScorerPlugin(Protocol):
    """An image scorer a plugin registers (hook `register_scorers`): `name`, and `score` giving each
    artifact's ArtifactScores (any of alignment, style, character_consistency, aesthetic), which the
    evolve loop turns into one number with the same Objective as `--best-of`."""

    name: str

    def score(self, settings: "Settings", artifacts: list["Artifact"]) -> dict[str, "ArtifactScores"]: ...


def scorer_plugins() -> dict[str, ScorerPlugin]:
    """Registered scorers by name (built-in none; `clip` is the CLIP scorer above, chosen by evolve itself)."""
    from echo_os.engines.plugins import plugin_manager

    found: dict[str, ScorerPlugin] = {}
    plugin_manager().hook.register_scorers(register=lambda scorer: found.setdefault(scorer.name, scorer))
    return found
