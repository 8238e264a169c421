"""What a story render gives back per scene: the one value story/render.py (which renders) and
resonance/story.py (which scores and picks the best of each scene) share. It sits below both, so
neither imports the other for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from echo_os.artifacts.store import Artifact


@dataclass
class SceneResult:
    scene: int
    slug: str
    description: str
    characters: tuple[str, ...]
    artifacts: list["Artifact"]
    resumed: list[bool]
    siblings: list["Artifact"] = field(default_factory=list)  # best-of candidates not kept (issue 16)
