"""The engine contract: what every engine must do, run against each one (the way diffusers mixes
PipelineTesterMixin into every pipeline's tests). A new engine adds a class here: subclass
EngineContract, say how to make the engine and a small request.

- deterministic engines: a batch equals each image rendered alone, seed by seed;
- progress events count steps 1..N in order, for all the images of the call;
- a set cancel flag raises CancelledError and nothing is saved;
- every image records its seed and the runtime (engine, device, timings) in meta.json;
- an engine's error reaches the user as one line naming the engine and the reason;
- an engine that declares img2img refines an artifact it rendered: the child records its parent, the
  strength and the parent's sha256 (its request names the parent's bytes by that sha256).
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from echo_os.errors import CancelledError
from echo_os.render.requests import RenderRequest


def _pixels(image):
    return np.asarray(image.convert("RGB"), dtype=np.int16)


class EngineContract:
    engine_name: str
    request_fields: dict = {}
    cli_args: tuple[str, ...] = ()

    @pytest.fixture
    def settings(self, workspace):
        return workspace

    def make_engine(self, settings):
        from echo_os.engines import create_engine

        return create_engine(settings, self.engine_name, "contract test")

    def request(self, **fields) -> RenderRequest:
        return RenderRequest(**{"prompt": "a lighthouse in a storm", "engine": self.engine_name,
                                "project": "contract", **self.request_fields, **fields})

    def test_batched_equals_single_per_seed(self, settings):
        engine = self.make_engine(settings)
        if not engine.capabilities.deterministic:
            pytest.skip(f"{self.engine_name} does not promise the same pixels per seed")
        [batched] = engine.render([self.request(seed=100, count=2)])
        assert [image.seed for image in batched.images] == [100, 101]
        for image in batched.images:
            [alone] = engine.render([self.request(seed=image.seed, count=1)])
            assert np.abs(_pixels(image.image) - _pixels(alone.images[0].image)).max() <= 1, f"seed {image.seed}"
        # and seeds matter (a constant output would pass the check above)
        assert np.abs(_pixels(batched.images[0].image) - _pixels(batched.images[1].image)).max() > 0

    def test_progress_counts_steps_in_order(self, settings):
        engine = self.make_engine(settings)
        events = []
        engine.render([self.request(seed=1, count=2)], progress=events.append)
        assert events, "no progress events"
        total = events[0].total_steps
        assert [e.step for e in events] == list(range(1, total + 1))
        assert all(e.total_steps == total and e.images == 2 for e in events)

    def test_cancel_raises_and_saves_nothing(self, settings):
        from echo_os.artifacts.store import ArtifactStore
        from echo_os.render.scheduler import render_requests

        engine = self.make_engine(settings)
        cancel = threading.Event()
        cancel.set()
        store = ArtifactStore(settings)
        try:
            with pytest.raises(CancelledError):
                render_requests(settings, [self.request(seed=3, count=2)], store=store, cancel=cancel, engine=engine)
            assert store.catalog.count() == 0
        finally:
            store.close()
        assert not list(settings.home.rglob("image.png"))

    def test_seeds_and_runtime_are_recorded(self, settings):
        from echo_os.artifacts.store import ArtifactStore
        from echo_os.render.scheduler import render_requests

        engine = self.make_engine(settings)
        store = ArtifactStore(settings)
        try:
            outcome = render_requests(settings, [self.request(seed=7, count=2)], store=store, engine=engine)
        finally:
            store.close()
        metas = [json.loads((a.path / "meta.json").read_text()) for a in outcome.artifacts]
        assert [m["seed"] for m in metas] == [7, 8]
        for meta in metas:
            assert meta["engine"]["name"] == engine.name and meta["engine"]["reason"] == engine.reason
            assert meta["device"] and meta["request"]["seed"] == meta["seed"] and meta["request_key"]
            assert set(meta["timings"]) >= {"load_s", "denoise_s", "decode_s"}

    def test_img2img_refines_an_artifact_with_lineage(self, settings):
        from echo_os.artifacts.store import ArtifactStore
        from echo_os.iterate.refine import refine_request
        from echo_os.render.scheduler import render_requests

        engine = self.make_engine(settings)
        if not engine.capabilities.img2img:
            pytest.skip(f"{self.engine_name} does not refine (no img2img)")
        store = ArtifactStore(settings)
        try:
            [parent] = render_requests(settings, [self.request(seed=5)], store=store, engine=engine).artifacts
            request = refine_request(settings, parent, strength=0.5, changes={"engine": self.engine_name, "seed": 6})
            [child] = render_requests(settings, [request], store=store, engine=engine).artifacts
        finally:
            store.close()
        assert child.id != parent.id
        meta = json.loads((child.path / "meta.json").read_text())
        assert (meta["parent_id"], meta["parent_sha256"], meta["strength"]) == (parent.id, parent.id, 0.5)
        assert meta["request"]["init_image"]["sha256"] == parent.id

    def test_an_engine_error_is_one_line(self, settings, run_cli):
        code, out, err = run_cli("--home", str(settings.home), "render", "x", "--engine", self.engine_name,
                                 *self.cli_args, "-o", "no_such_option=1", "--no-memory")
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert f"engine {self.engine_name} has no option 'no_such_option'" in err


TINY = dict(model="tiny", width=64, height=64, steps=2, cfg=5.0, device="cpu")
TINY_CLI = ("--model", "tiny", "--size", "64x64", "--steps", "2", "--device", "cpu")


class TestSDXLContract(EngineContract):
    engine_name = "sdxl"
    request_fields = TINY
    cli_args = TINY_CLI

    @pytest.fixture
    def settings(self, tiny_workspace):
        return tiny_workspace


class TestCPUContract(TestSDXLContract):
    engine_name = "cpu"


class TestDraftContract(EngineContract):
    engine_name = "draft"
    request_fields = dict(width=128, height=96)


class TestFakeEngineContract(EngineContract):
    """The API tests' fake engine, registered through the plugin hook like any installed engine."""

    engine_name = "fake"
    request_fields = dict(width=64, height=64, steps=3)

    @pytest.fixture
    def settings(self, workspace):
        from tests.api_helpers import FakeEngine, register_engine

        with register_engine(FakeEngine()):
            yield workspace


class TestOpenAIContract(EngineContract):
    """The hosted engine against the fake OpenAI Images server (tests/fake_openai.py)."""

    engine_name = "openai"
    request_fields = dict(width=1024, height=1024)
    cli_args = ("--size", "1024x1024")

    @pytest.fixture
    def settings(self, tmp_path, monkeypatch):
        from tests.fake_openai import fake_images_server, hosted_workspace

        with fake_images_server() as server:
            monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
            monkeypatch.setenv("OPENAI_API_KEY", "sk-test-fake")
            yield hosted_workspace(tmp_path)


class TestComfyUIContract(EngineContract):
    """The ComfyUI client against the fake ComfyUI (tests/fake_comfyui.py), with the weightless
    solid-colour workflow (one colour per seed)."""

    engine_name = "comfyui"
    request_fields = dict(width=64, height=48)
    workflow_toml = 'workflow = "solid-colour"\nrefine_workflow = "upload-scale"\n'

    @pytest.fixture
    def settings(self, tmp_path):
        from tests.fake_comfyui import comfy_workspace, fake_comfyui

        with fake_comfyui() as server:
            yield comfy_workspace(tmp_path, server.url, self.workflow_toml)


class TestComfyUISDXLTemplateContract(TestComfyUIContract):
    """The default SDXL text-to-image template (the fake runs its KSampler on numpy noise)."""

    request_fields = dict(width=64, height=64, steps=3)
    workflow_toml = 'checkpoint = "sd_xl_base_1.0.safetensors"\n'


class TestRayContract(EngineContract):
    """RayEngine (echo_os.render.ray, `batch --ray` and `serve --ray`): the cpu engine chosen by, and
    rendering on, a Ray actor of a local instance; the head saves. One actor for the class (starting Ray is
    the slow part); each test gets the pool's workspace with its artifacts cleared (the actor reads init
    images from that workspace, as on a cluster with a shared one)."""

    engine_name = "cpu"
    request_fields = TINY
    cli_args = TINY_CLI

    @pytest.fixture(scope="class")
    def ray_pool(self, tmp_path_factory, tiny_sdxl_dir):
        pytest.importorskip("ray")
        from echo_os.render.ray import RayOptions, RayPool
        from echo_os.settings import Settings
        from tests.conftest import register_model

        settings = Settings(home=tmp_path_factory.mktemp("ray-contract"))
        register_model(settings, "tiny", tiny_sdxl_dir)
        pool = RayPool(settings, RayOptions(actors=1))
        yield pool
        pool.close()

    @pytest.fixture
    def settings(self, ray_pool):
        import shutil

        shutil.rmtree(ray_pool.settings.artifacts_dir, ignore_errors=True)
        type(self).pool = ray_pool
        return ray_pool.settings

    def make_engine(self, settings):
        from echo_os.engines.base import BaseEngine
        from echo_os.render.ray import RayEngine

        engine = self.pool.engine(self.request())
        assert isinstance(engine, RayEngine) and isinstance(engine, BaseEngine)
        assert engine.name == self.engine_name and engine.concurrent_calls == 1
        return engine


@pytest.fixture(scope="module")
def tiny_svd_dir(tmp_path_factory):
    from tests.tiny_video import save_tiny_svd

    return save_tiny_svd(tmp_path_factory.mktemp("tiny-svd") / "tiny-svd")


class TestVideoContract(EngineContract):
    """The SVD engine (output kind "video") on the tiny random-weight pipeline: a clip per seed from a source
    image, saved by the renderer as a clip artifact (its poster frame stands for the image here)."""

    engine_name = "video"
    request_fields = dict(model="tiny-svd", output="video", width=32, height=32, steps=2, cfg=3.0, device="cpu",
                          options={"frames": 2})

    @pytest.fixture
    def settings(self, workspace, tiny_svd_dir):
        import hashlib

        from PIL import Image

        with open(workspace.models_toml, "a", encoding="utf-8") as handle:
            handle.write(f'\n[models.tiny-svd]\ntype = "video"\npath = "{tiny_svd_dir.as_posix()}"\n')
        source = workspace.home / "source.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(source)
        self.init_sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
        self.init_path = str(source)
        return workspace

    def request(self, **fields) -> RenderRequest:
        from echo_os.render.requests import InitImage

        init = InitImage(path=self.init_path, sha256=self.init_sha256, strength=1.0)
        return super().request(init_image=init, **fields)

    def test_img2img_refines_an_artifact_with_lineage(self, settings):
        """A clip's source is an image artifact: the clip records it as its parent, by id and bytes."""
        from echo_os.artifacts.store import ArtifactStore
        from echo_os.motion.clips import clip_render_request
        from echo_os.render.requests import ClipRequest
        from echo_os.render.scheduler import render_requests

        store = ArtifactStore(settings)
        try:
            [parent] = render_requests(settings, [RenderRequest(prompt="a harbour", engine="draft", width=64,
                                                                height=64, seed=5)], store=store).artifacts
            request = clip_render_request(settings, parent, ClipRequest(seed=6, model="tiny-svd", frames=2, steps=2,
                                                                        width=32, height=32, device="cpu"))
            [child] = render_requests(settings, [request], store=store, engine=self.make_engine(settings)).artifacts
        finally:
            store.close()
        meta = json.loads((child.path / "meta.json").read_text())
        assert (meta["kind"], meta["video_kind"], meta["parent_id"], meta["sources"]) == ("video", "clip", parent.id,
                                                                                          [parent.id])
        assert meta["request"]["init_image"]["sha256"] == parent.id and meta["engine"]["name"] == "video"
        assert meta["engine"]["reason"].startswith("auto") is False and meta["frames"] == 2

    def test_an_engine_error_is_one_line(self, settings, run_cli):
        """Asked for an image, the video engine is refused in one line naming what it makes."""
        code, out, err = run_cli("--home", str(settings.home), "render", "x", "--engine", self.engine_name,
                                 "--model", "tiny-svd", "--no-memory")
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert "engine video cannot render this request: it makes videos, not images" in err

    def test_auto_asks_only_engines_of_the_kind(self, settings):
        from echo_os.engines import choose_engine

        name, reason = choose_engine(settings, self.request(engine="auto", seed=1))
        assert name == "video" and "sdxl" not in reason and "draft" not in reason
        assert choose_engine(settings, RenderRequest(prompt="x", engine="auto", model="tiny-svd"))[0] == "draft"


class TestDraftMeshContract(EngineContract):
    """The placeholder mesh engine (output kind "mesh"): the turntable sheet stands for the image here."""

    engine_name = "draft-mesh"
    request_fields = dict(output="mesh")
    cli_args = ("--type", "3d_model")


class TestDraftAudioContract(EngineContract):
    """The placeholder tone bed (output kind "audio"): the waveform/spectrogram stands for the image here."""

    engine_name = "draft-audio"
    request_fields = dict(output="audio", options={"seconds": 0.5, "sample_rate": 8000})
    cli_args = ("--type", "audio")


@pytest.fixture(scope="module")
def tiny_shap_e_dir(tmp_path_factory):
    from tests.tiny_shap_e import save_tiny_shap_e

    return save_tiny_shap_e(tmp_path_factory.mktemp("tiny-shap-e") / "tiny-shap-e")


class TestShapEContract(EngineContract):
    """The Shap-E engine (output kind "mesh") on a tiny random-weight pipeline, loaded through models.toml."""

    engine_name = "shap-e"
    request_fields = dict(model="tiny-shap-e", output="mesh", steps=2, cfg=3.0, device="cpu",
                          options={"grid_size": 16})
    cli_args = ("--type", "3d_model", "--model", "tiny-shap-e")

    @pytest.fixture
    def settings(self, workspace, tiny_shap_e_dir):
        with open(workspace.models_toml, "a", encoding="utf-8") as handle:
            handle.write(f'\n[models.tiny-shap-e]\ntype = "3d"\npath = "{tiny_shap_e_dir.as_posix()}"\n')
        return workspace

    def test_img2img_refines_an_artifact_with_lineage(self, settings, tmp_path):
        """Shap-E's image input is a lift (an image-to-3D entry): the mesh records the image as its parent."""
        from echo_os.artifacts.store import ArtifactStore
        from echo_os.iterate.lift import lift_request
        from echo_os.render.scheduler import render_requests
        from tests.tiny_shap_e import save_tiny_shap_e_img2img

        folder = save_tiny_shap_e_img2img(tmp_path / "tiny-lift")
        with open(settings.models_toml, "a", encoding="utf-8") as handle:
            handle.write(f'\n[models.tiny-lift]\ntype = "3d"\npath = "{folder.as_posix()}"\n')
        store = ArtifactStore(settings)
        try:
            [parent] = render_requests(settings, [RenderRequest(prompt="a harbour", engine="draft", width=64,
                                                                height=64, seed=5)], store=store).artifacts
            request = lift_request(settings, parent, model="tiny-lift", seed=6, steps=2, cfg=3.0, grid_size=16,
                                   device="cpu")
            [child] = render_requests(settings, [request], store=store, engine=self.make_engine(settings)).artifacts
        finally:
            store.close()
        meta = json.loads((child.path / "meta.json").read_text())
        assert (meta["kind"], meta["parent_id"], meta["sources"]) == ("mesh", parent.id, [parent.id])
        assert meta["request"]["init_image"]["sha256"] == parent.id and meta["engine"]["name"] == "shap-e"


@pytest.fixture(scope="module")
def tiny_stable_audio_dir(tmp_path_factory):
    from tests.tiny_stable_audio import save_tiny_stable_audio

    return save_tiny_stable_audio(tmp_path_factory.mktemp("tiny-stable-audio") / "tiny-stable-audio")


class TestStableAudioContract(EngineContract):
    """The Stable Audio engine (output kind "audio") on a tiny random-weight pipeline, through models.toml."""

    engine_name = "stable-audio"
    request_fields = dict(model="tiny-stable-audio", output="audio", steps=2, cfg=3.0, device="cpu",
                          options={"seconds": 0.25})
    cli_args = ("--type", "audio", "--model", "tiny-stable-audio")

    @pytest.fixture
    def settings(self, workspace, tiny_stable_audio_dir):
        with open(workspace.models_toml, "a", encoding="utf-8") as handle:
            handle.write(f'\n[models.tiny-stable-audio]\ntype = "audio"\npath = "{tiny_stable_audio_dir.as_posix()}"\n')
        return workspace


@pytest.fixture(scope="module")
def tiny_audioldm2_dir(tmp_path_factory):
    from tests.tiny_audioldm2 import save_tiny_audioldm2

    return save_tiny_audioldm2(tmp_path_factory.mktemp("tiny-audioldm2") / "tiny-audioldm2")


class TestAudioLDM2Contract(EngineContract):
    """The AudioLDM 2 engine (output kind "audio", 16 kHz mono) on a tiny random-weight pipeline, through
    models.toml."""

    engine_name = "audioldm2"
    request_fields = dict(model="tiny-audioldm2", output="audio", steps=2, cfg=3.0, device="cpu",
                          options={"seconds": 0.016})
    cli_args = ("--type", "audio", "--model", "tiny-audioldm2")

    @pytest.fixture
    def settings(self, workspace, tiny_audioldm2_dir):
        with open(workspace.models_toml, "a", encoding="utf-8") as handle:
            handle.write(f'\n[models.tiny-audioldm2]\ntype = "audio"\npath = "{tiny_audioldm2_dir.as_posix()}"\n')
        return workspace
