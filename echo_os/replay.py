"""Re-render an artifact from its meta.json with the same engine and measure the pixel difference."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from echo_os.artifacts.store import ArtifactStore
from echo_os.engines import create_engine
from echo_os.settings import Settings


@dataclass
class ReplayReport:
    artifact_id: str
    engine: str
    max_pixel_diff: int
    mean_pixel_diff: float
    saved_id: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def pixel_difference(a, b) -> tuple[int, float]:
    """(max, mean) absolute difference over all channels, in 0-255 levels."""
    import numpy as np

    if a.size != b.size:
        raise ValueError(f"image sizes differ: {a.size} vs {b.size}")
    diff = np.abs(np.asarray(a.convert("RGB"), dtype=np.int16) - np.asarray(b.convert("RGB"), dtype=np.int16))
    return int(diff.max()), float(diff.mean())


def replay_artifact(settings: Settings, artifact_id: str, *, save: bool = False) -> ReplayReport:
    from PIL import Image

    store = ArtifactStore(settings)
    try:
        artifact = store.open(artifact_id)
        request = artifact.meta.replay_request()
        engine_name = artifact.meta.engine.name
        engine = create_engine(settings, engine_name, f"replay of {artifact.id[:12]}")
        if artifact.meta.vae_tiling and hasattr(engine, "vae_tiling"):
            engine.vae_tiling = True  # it was decoded tile by tile (OOM back-off): decode it the same way
        result = engine.render([request])[0]
        with Image.open(artifact.image_path) as original:
            original.load()
            max_diff, mean_diff = pixel_difference(original, result.images[0].image)
        saved_id = None
        if save:
            child = result.request.model_copy(update={"parent_id": artifact.id})
            result.request = child
            saved_id = store.save(result, 0).id
        return ReplayReport(artifact.id, engine_name, max_diff, mean_diff, saved_id)
    finally:
        store.close()
