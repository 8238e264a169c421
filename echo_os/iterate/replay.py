"""Re-render an artifact from its meta.json with the same engine and measure the pixel difference.

The render goes through the one renderer (scheduler.render_requests); its image is saved only with
save=True, as a child of the artifact (parent_id)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from echo_os.artifacts.meta import ArtifactMeta, artifact_kind, require_kind
from echo_os.artifacts.store import ArtifactStore
from echo_os.engines import create_engine
from echo_os.errors import UsageError
from echo_os.render.prepare import prepare_recorded
from echo_os.render.scheduler import RenderHooks, render_requests
from echo_os.settings import Settings


class _KeepResult(RenderHooks):
    """Holds the one result for comparing; saves it only when asked."""

    def __init__(self, save: bool):
        super().__init__()
        self.save = save
        self.results: list = []

    def after_call(self, pieces, results) -> list[bool]:
        self.results += results
        return [self.save] * len(pieces)


@dataclass
class ReplayReport:
    artifact_id: str
    engine: str
    max_pixel_diff: int
    mean_pixel_diff: float
    saved_id: str | None = None
    deterministic: bool = True  # the engine's capability: if False, a difference is expected, not a fault
    batch_size: int = 1  # images in the pipeline call that made the original; replay renders it alone
    # the engine's template (a ComfyUI workflow file) is not the one the original was rendered with
    template_changed: bool = False
    # a mesh or a sound: the content hash (vertices+faces, 16-bit samples) of the replay, and whether it is
    # the artifact's recorded content_sha256
    content_sha256: str | None = None
    content_matches: bool | None = None

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
        kind = artifact_kind(artifact.meta)
        if kind == "imported":
            raise UsageError(f"artifact {artifact.id[:12]} was imported ({artifact.meta.engine.name}): echo-os did not "
                             "render it, so there is no request to replay; `echo-os refine` starts from it")
        if kind == "sheet":
            raise UsageError(f"artifact {artifact.id[:12]} is a compare grid sheet, drawn from its cells; replay a "
                             "cell (`echo-os artifacts show` lists them under grid.cells)")
        if kind in ("mesh", "audio"):
            return _replay_asset(settings, store, artifact, save)
        require_kind(artifact.id, artifact.meta, ("image",), "replay", needs="an image artifact")
        assert isinstance(artifact.meta, ArtifactMeta)  # an image's meta.json
        provenance = artifact.meta.provenance or {}
        if provenance.get("reproducible") is False:
            raise UsageError(
                f"artifact {artifact.id[:12]} came from {provenance.get('provider', artifact.meta.engine.name)} "
                f"({provenance.get('model', 'a hosted model')}), which takes no seed: it cannot be reproduced, "
                "so replay does not pretend to; render the prompt again for a new image")
        prepared = prepare_recorded(settings, artifact.meta.replay_request(), artifact.meta.engine.name,
                                    f"replay of {artifact.id[:12]}")
        request, engine_name = prepared.request, prepared.engine.name
        engine = create_engine(settings, engine_name, prepared.engine.reason)
        if save:
            request = request.model_copy(update={"parent_id": artifact.id})
        hooks = _KeepResult(save)
        # An image decoded tile by tile (the OOM back-off) is decoded the same way again.
        outcome = render_requests(settings, [request], store=store, engine=engine, batch_size=1, hooks=hooks,
                                  vae_tiling=artifact.meta.vae_tiling)
        with Image.open(artifact.image_path) as original:
            original.load()
            max_diff, mean_diff = pixel_difference(original, hooks.results[0].images[0].image)
        saved_id = outcome.artifacts[0].id if save else None
        then = (artifact.meta.provenance or {}).get("template_sha256")
        now = (hooks.results[0].images[0].provenance or {}).get("template_sha256")
        return ReplayReport(artifact.id, engine_name, max_diff, mean_diff, saved_id,
                            deterministic=engine.capabilities.deterministic,
                            batch_size=int(artifact.meta.batch.get("size", 1) or 1),
                            template_changed=bool(then and now and then != now))
    finally:
        store.close()


def _replay_asset(settings: Settings, store: ArtifactStore, artifact, save: bool) -> ReplayReport:
    """Render a mesh or a sound again with its engine and compare its content hash and its preview."""
    from PIL import Image

    from echo_os.artifacts.assets import mesh_hash, samples_hash

    request = artifact.meta.replay_request()
    engine = create_engine(settings, artifact.meta.engine.name, f"replay of {artifact.id[:12]}")
    if save:
        request = request.model_copy(update={"parent_id": artifact.id})
    hooks = _KeepResult(save)
    outcome = render_requests(settings, [request], store=store, engine=engine, batch_size=1, hooks=hooks,
                              resume=False)
    rendered = hooks.results[0].images[0]
    asset = rendered.asset
    digest = mesh_hash(asset.data) if asset.kind == "mesh" else samples_hash(asset.data)
    with Image.open(artifact.image_path) as original:
        original.load()
        max_diff, mean_diff = pixel_difference(original, rendered.image)
    return ReplayReport(artifact.id, artifact.meta.engine.name, max_diff, mean_diff,
                        outcome.artifacts[0].id if save else None, deterministic=engine.capabilities.deterministic,
                        content_sha256=digest, content_matches=digest == artifact.meta.content_sha256)
