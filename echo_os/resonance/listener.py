"""Scores as images are saved (`echo-os render`; off with --no-score): an ArtifactStore after-save hook.

The scorers load on the first diffusion-rendered save (draft cards are never scored, so planning stays
instant). Without a CLIP model nothing is scored and nothing is said here: `echo-os score` and
`echo-os memory stats` name what is missing. A single render has no story around it, so what it gets is
prompt alignment and, with a scorer head, the aesthetic score; `echo-os batch` scores story scenes
against each other after the batch (resonance.story).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from echo_os.artifacts.store import Artifact, ArtifactStore
    from echo_os.resonance.scorers import Scorers

log = logging.getLogger(__name__)


class ScoreListener:
    def __init__(self, store: "ArtifactStore", clip: str | None = None):
        self.store = store
        self.clip = clip
        self._scorers: "Scorers | None" = None
        self._failed = False

    def __call__(self, artifact: "Artifact") -> None:
        from echo_os.errors import EchoError
        from echo_os.resonance.persist import save_scores
        from echo_os.resonance.scorers import load_scorers
        from echo_os.resonance.scores import ScoreItem, score_items

        if artifact.meta.engine.name == "draft" or self._failed:
            return
        if self._scorers is None:
            try:
                self._scorers = load_scorers(self.store.settings, self.clip)
            except EchoError as error:
                self._failed = True
                log.warning("scores: off for this run: %s", error)
                return
        if not self._scorers.available:
            return
        from PIL import Image

        with Image.open(artifact.image_path) as image:
            picture = image.convert("RGB")
        scores, _ = score_items(self._scorers, [ScoreItem(id=artifact.id, image=picture, prompt=artifact.meta.prompt)])
        save_scores(self.store.catalog, self.store.root, str(artifact.path.relative_to(self.store.root)),
                    scores[artifact.id].as_dict())


def attach_scorer(store: "ArtifactStore", *, enabled: bool = True, clip: str | None = None) -> ScoreListener | None:
    if not enabled:
        return None
    listener = ScoreListener(store, clip)
    store.listeners.append(listener)
    return listener
