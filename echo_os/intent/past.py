"""The project's past work as MiniLM vectors: its artifacts in Echo Memory and the items of its earlier plans."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from echo_os.settings import Settings


@dataclass(frozen=True)
class PastWork:
    vectors: np.ndarray  # L2-normalised MiniLM rows
    artifacts: int  # how many came from Echo Memory
    planned: int  # how many from earlier plans


def past_work(settings: Settings, project: str, embed) -> PastWork:
    """Vectors of what the project already has. Artifacts come from the MiniLM index of Echo Memory (the
    index is brought in line with the catalog first, so images not embedded yet are embedded now);
    earlier plan items are embedded with `embed`."""
    from echo_os.artifacts.catalog import Catalog
    from echo_os.intent.planfile import past_plan_prompts

    rows = []
    if settings.catalog_path.is_file():
        with Catalog(settings.catalog_path) as catalog:
            rows = catalog.query(project=project)
    artifact_vectors: list[np.ndarray] = []
    if rows:
        from echo_os.memory.artifacts import open_memory

        with open_memory(settings) as memory:
            text = memory.memory.embedder("text")
            if text is not None:  # without a text embedder the artifacts' prompts have no vectors to compare
                index = memory.memory.index(text)
                artifact_vectors = [index.vector(row.num) for row in rows if row.num in index]
    planned = past_plan_prompts(settings, project)
    parts = [np.asarray(artifact_vectors, dtype=np.float32).reshape(-1, 384)] if artifact_vectors else []
    if planned:
        parts.append(embed(planned))
    vectors = np.concatenate(parts) if parts else np.zeros((0, 384), dtype=np.float32)
    return PastWork(vectors=vectors, artifacts=len(artifact_vectors), planned=len(planned))
