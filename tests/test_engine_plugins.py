"""Engines from plugins: a throw-away third-party package (a real dist-info with an entry_points.txt on
sys.path) renders through `echo-os render --engine toy` and POST /api/render, with no echo-os change;
the registry's names are what --engine and the API accept; `auto` follows the workspace's order."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from echo_os.engines import DEFAULT_ORDER, choose_engine, engine_names, reset_plugins
from echo_os.render.requests import RenderRequest

TOY_MODULE = '''
"""A third-party engine: solid-colour images from the prompt's hash, with its own option."""
import time
from typing import Literal

from echo_os.engines.base import BaseEngine, Capabilities, EngineOptions
from echo_os.engines.hookspecs import hookimpl
from echo_os.errors import CancelledError
from echo_os.render.results import ProgressEvent, RenderedImage, RenderResult, RuntimeInfo, Timings


class ToyOptions(EngineOptions):
    quality: Literal["low", "high"] = "low"


class ToyEngine(BaseEngine):
    name = "toy"
    capabilities = Capabilities(needs_weights=False, max_batch=4)
    Options = ToyOptions

    def render(self, requests, *, progress=None, cancel=None):
        from PIL import Image

        results = []
        for request in requests:
            options = ToyOptions.model_validate(dict(request.options))
            if cancel is not None and cancel.is_set():
                raise CancelledError("render cancelled")
            if progress is not None:
                progress(ProgressEvent(step=1, total_steps=1, images=request.count))
            shade = 255 if options.quality == "high" else 128
            images = [RenderedImage(Image.new("RGB", (request.width, request.height), (seed % 256, shade, 0)), seed)
                      for seed in request.seeds]
            runtime = RuntimeInfo(engine=self.name, reason=self.reason, device="cpu", dtype="none",
                                  attention="none")
            results.append(RenderResult(request=request, images=images, runtime=runtime, timings=Timings()))
        return results


@hookimpl
def register_engines(register):
    register(ToyEngine)
'''


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """The package as pip would leave it in site-packages: the module and its dist-info."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "echo_os_toy.py").write_text(textwrap.dedent(TOY_MODULE), encoding="utf-8")
    info = site / "echo_os_toy-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-os-toy\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[echo_os.engines]\ntoy = echo_os_toy\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    reset_plugins()
    yield site
    reset_plugins()


def test_the_built_in_engines_come_through_the_hook():
    reset_plugins()
    assert set(DEFAULT_ORDER) <= set(engine_names()) and engine_names()[0] == "auto"


def test_a_third_party_engine_renders_through_the_cli(toy_package, workspace, run_cli):
    assert "toy" in engine_names()
    code, out, err = run_cli("--home", str(workspace.home), "render", "a red kite", "--engine", "toy", "--seed", "5",
                             "--count", "2", "--size", "64x32", "-o", "quality=high", "--no-memory", "--json")
    assert code == 0, err
    assert "engine: toy (chosen with --engine toy)" in err
    artifacts = json.loads(out)
    assert len(artifacts) == 2
    meta = json.loads((Path(artifacts[0]["path"]) / "meta.json").read_text())
    assert meta["engine"]["name"] == "toy" and meta["request"]["options"] == {"quality": "high"}
    assert meta["seed"] == 5 and (meta["width"], meta["height"]) == (64, 32)


def test_engine_errors_at_the_cli_are_one_line(toy_package, workspace, run_cli):
    home = str(workspace.home)
    code, _, err = run_cli("--home", home, "render", "x", "--engine", "nope", "--no-memory")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "unknown engine 'nope'" in err and "toy" in err and "draft" in err
    code, _, err = run_cli("--home", home, "render", "x", "--engine", "toy", "-o", "quality=ultra", "--no-memory")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "quality" in err and "toy" in err
    code, _, err = run_cli("--home", home, "render", "x", "--engine", "toy", "-o", "steps=3", "--no-memory")
    assert code == 2 and "engine toy has no option 'steps'" in err and "quality" in err
    assert not (workspace.home / "artifacts").exists() or not any((workspace.home / "artifacts").rglob("image.png"))


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_a_third_party_engine_renders_through_the_api(toy_package, workspace, monkeypatch):
    from tests.api_helpers import api_client, wait_job

    monkeypatch.setenv("ECHO_OS_NO_MEMORY", "1")  # embedding is not what this test is about

    async with api_client(workspace) as (client, _app):
        bad = await client.post("/api/render", json={"prompt": "x", "engine": "nope"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "engine"
        assert "toy" in bad.json()["detail"][0]["msg"]
        bad_option = await client.post("/api/render", json={"prompt": "x", "engine": "toy",
                                                            "options": {"quality": "ultra"}})
        assert bad_option.status_code == 422 and bad_option.json()["detail"][0]["loc"] == ["body", "options", "quality"]
        sent = await client.post("/api/render", json={"prompt": "a red kite", "engine": "toy", "seed": 3,
                                                      "size": "64x64", "options": {"quality": "high"}})
        assert sent.status_code == 202, sent.text
        job = await wait_job(client, sent.json()["job_id"])
        assert job["status"] == "succeeded", job
    [meta_path] = list((workspace.home / "artifacts").rglob("meta.json"))
    meta = json.loads(meta_path.read_text())
    assert meta["engine"]["name"] == "toy" and meta["request"]["options"] == {"quality": "high"} and meta["seed"] == 3


def test_auto_asks_the_workspace_order_and_records_why(toy_package, tmp_path, run_cli):
    from echo_os.settings import load_settings

    home = tmp_path / "ws"
    home.mkdir()
    (home / "echo-os.toml").write_text('[engines]\norder = ["toy", "draft"]\n', encoding="utf-8")
    settings = load_settings(home, env={})
    assert settings.engine_order == ("toy", "draft")
    name, reason = choose_engine(settings, RenderRequest(prompt="x"))
    assert name == "toy" and "order toy, draft" in reason
    # Reference images are a capability toy lacks: auto passes over it, saying why.
    from echo_os.render.requests import IPAdapterImage, IPAdapterInput, IPAdapterReference

    refs = IPAdapterInput(model="ip", references=(IPAdapterReference(
        name="a", images=(IPAdapterImage(path="a.png", sha256="0" * 64),)),))
    with pytest.raises(Exception, match="toy: it takes no reference images"):  # draft takes none either
        choose_engine(settings, RenderRequest(prompt="x", ip_adapter=refs))
    code, out, err = run_cli("--home", str(home), "render", "x", "--size", "64x64", "--no-memory", "--json")
    assert code == 0, err
    assert "engine: toy (auto: first available in the order toy, draft)" in err, err
    meta = json.loads((Path(json.loads(out)[0]["path"]) / "meta.json").read_text())
    assert meta["engine"] == {"name": "toy", "reason": "auto: first available in the order toy, draft"}
    (home / "echo-os.toml").write_text('[engines]\norder = ["toy", "warp"]\n', encoding="utf-8")
    code, _, err = run_cli("--home", str(home), "render", "x", "--no-memory")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "'warp'" in err


def test_a_network_engine_needs_the_workspace_to_allow_it(workspace, tmp_path):
    from echo_os.engines.base import BaseEngine, Capabilities
    from echo_os.errors import UsageError
    from echo_os.settings import load_settings
    from tests.api_helpers import register_engine

    class Hosted(BaseEngine):
        name = "hosted"
        capabilities = Capabilities(needs_weights=False, network=True, sizes=((1024, 1024),))

    with register_engine(Hosted):
        with pytest.raises(UsageError, match="allow_network"):
            choose_engine(workspace, RenderRequest(prompt="x", engine="hosted"))
        (workspace.home / "echo-os.toml").write_text('[engines]\nallow_network = true\norder = ["hosted", "draft"]\n')
        allowed = load_settings(workspace.home, env={})
        assert choose_engine(allowed, RenderRequest(prompt="x", engine="hosted"))[0] == "hosted"
        name, reason = choose_engine(allowed, RenderRequest(prompt="x", width=512, height=512))
        assert name == "draft" and "hosted: it renders only the sizes 1024x1024, not 512x512" in reason


def test_replay_of_a_non_deterministic_engine_says_a_difference_is_expected(workspace, run_cli):
    import itertools

    from echo_os.engines.base import BaseEngine, Capabilities
    from echo_os.render.results import ProgressEvent, RenderedImage, RenderResult, RuntimeInfo
    from tests.api_helpers import register_engine

    counter = itertools.count(1)

    class Hosted(BaseEngine):
        name = "varies"
        capabilities = Capabilities(needs_weights=False, deterministic=False)

        def render(self, requests, *, progress=None, cancel=None):
            from PIL import Image

            if progress is not None:
                progress(ProgressEvent(step=1, total_steps=1, images=sum(r.count for r in requests)))
            runtime = RuntimeInfo(engine=self.name, reason=self.reason, device="remote", dtype="none", attention="none")
            return [RenderResult(request=r, runtime=runtime, images=[
                RenderedImage(Image.new("RGB", (r.width, r.height), (next(counter) * 40 % 256, 0, 0)), s)
                for s in r.seeds]) for r in requests]

    with register_engine(Hosted):
        home = str(workspace.home)
        code, out, err = run_cli("--home", home, "render", "x", "--engine", "varies", "--size", "64x64",
                                 "--no-memory", "--json")
        assert code == 0, err
        code, out, err = run_cli("--home", home, "replay", json.loads(out)[0]["id"])
        assert code == 0, err
        assert "differs; engine varies does not promise the same pixels per seed" in out


@pytest.mark.anyio
async def test_the_api_fake_engine_works_through_the_registry(workspace, monkeypatch):
    """The API tests' fake engine registered as a plugin: the app's own engine factory finds it by name."""
    from tests.api_helpers import FakeEngine, api_client, register_engine, wait_job

    monkeypatch.setenv("ECHO_OS_NO_MEMORY", "1")
    fake = FakeEngine()
    with register_engine(fake):
        async with api_client(workspace) as (client, _app):
            sent = await client.post("/api/render", json={"prompt": "a kite", "engine": "fake", "seed": 4,
                                                          "count": 2, "steps": 2, "size": "64x64"})
            assert sent.status_code == 202, sent.text
            job = await wait_job(client, sent.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert fake.calls == [[("a kite", (4, 5))]]


def test_runtime_rules_are_the_engines_own(workspace, monkeypatch):
    """Nothing outside an engine applies its machine rules: the API asks the engine that would render
    (named, or the one auto tries first) for its check_runtime; the draft engine declares none, so a device
    this machine lacks is no error for it; a plugin's own rule is a 422 on its field."""
    from fastapi.exceptions import RequestValidationError

    from echo_os.api.deps import check_runtime
    from echo_os.engines.base import BaseEngine, Capabilities
    from echo_os.errors import OptionError
    from echo_os.render.requests import RenderRequest
    from tests.api_helpers import register_engine

    class NeedsGpuEngine(BaseEngine):
        name = "gpuonly"
        capabilities = Capabilities(needs_weights=False)

        @classmethod
        def check_runtime(cls, settings, request):
            if request.dtype == "float16":
                raise OptionError("dtype float16 is not here", "dtype")

    check_runtime(workspace, RenderRequest(prompt="x", engine="draft", device="cuda", attention="xformers"))
    with register_engine(NeedsGpuEngine):
        check_runtime(workspace, RenderRequest(prompt="x", engine="gpuonly", dtype="bfloat16"))
        with pytest.raises(RequestValidationError) as raised:
            check_runtime(workspace, RenderRequest(prompt="x", engine="gpuonly", dtype="float16"))
        assert raised.value.errors()[0]["loc"] == ("body", "dtype")
        # auto: the first engine of the order that covers the request decides
        (workspace.home / "echo-os.toml").write_text('[engines]\norder = ["gpuonly", "draft"]\n')
        from echo_os.settings import load_settings

        with pytest.raises(RequestValidationError):
            check_runtime(load_settings(workspace.home), RenderRequest(prompt="x", dtype="float16"))


def test_only_engines_that_load_weights_import_the_ml_libraries_first(monkeypatch):
    from echo_os import ml_imports
    from echo_os.api.app import importing_first
    from echo_os.render.requests import RenderRequest

    imported = []
    monkeypatch.setattr(ml_imports, "import_ml_libraries", lambda: imported.append(True))
    make = importing_first(lambda request: request.engine)
    assert make(RenderRequest(prompt="x", engine="draft")) == "draft" and imported == []
    make(RenderRequest(prompt="x", engine="cpu"))
    make(RenderRequest(prompt="x", engine="auto"))
    assert imported == [True, True]
