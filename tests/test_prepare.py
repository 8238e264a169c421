"""The front door (echo_os.render.prepare): the same inputs through the CLI and through the API give the
same RenderRequest (table-driven parity), and the disagreements the hosts had before are gone.

The CLI side runs `echo-os render` in-process through its real error boundary and takes the request it
hands to the renderer (the renderer itself is tested elsewhere: test_scheduler, test_render_draft); the
API side queues the job through httpx.ASGITransport (no worker) and reads the queued request back.
"""

from __future__ import annotations

import pytest

from echo_os.errors import EchoError
from tests.api_helpers import api_client

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class _Stop(EchoError):
    """Raised by the spy once the CLI has handed its requests to the renderer."""


@pytest.fixture
def parity_workspace(tiny_workspace, tiny_sdxl_dir):
    """tiny (no defaults) and tiny-few (a few-step entry: steps 3, cfg 1, euler_trailing, 64x64)."""
    with open(tiny_workspace.models_toml, "a", encoding="utf-8") as handle:
        handle.write(f'\n[models.tiny-few]\npath = "{tiny_sdxl_dir.as_posix()}"\n'
                     'steps = 3\ncfg = 1.0\nscheduler = "euler_trailing"\nsize = "64x64"\n')
    return tiny_workspace


def cli_request(monkeypatch, run_cli, settings, *args: str):
    """(exit code, stderr, the RenderRequest `echo-os render ARGS` hands to render_requests or None)."""
    # Imported before the spy goes in, so the names they bind (from ... import render_requests) stay the real one.
    import echo_os.api.worker
    import echo_os.iterate.replay  # noqa: F401 - imported for the binding above, not used here
    import echo_os.render.scheduler as scheduler

    seen = []

    def spy(settings, requests, **kwargs):
        seen.extend(requests)
        raise _Stop("stopped by the test before rendering")

    monkeypatch.setattr(scheduler, "render_requests", spy)
    code, _out, err = run_cli("--home", str(settings.home), "render", *args, "--no-memory")
    return code, err, (seen[0] if seen else None)


async def api_request(client, body: dict):
    """(status, the queued RenderRequest as JSON or the 422 detail)."""
    response = await client.post("/api/render", json=body)
    if response.status_code != 202:
        return response.status_code, response.json()["detail"]
    job = (await client.get(f"/api/jobs/{response.json()['job_id']}")).json()
    return 202, job["request"]


# (CLI arguments, the same as an /api/render body, what the request must say)
CASES = [
    pytest.param(["a gull", "--model", "tiny", "--seed", "3"], {"prompt": "a gull", "model": "tiny", "seed": 3},
                 {"width": 512, "height": 512, "steps": 30}, id="cpu-default-size"),
    pytest.param(["a gull", "--model", "tiny", "--seed", "3", "--size", "64x64"],
                 {"prompt": "a gull", "model": "tiny", "seed": 3, "size": "64x64"},
                 {"width": 64, "height": 64}, id="size-given"),
    pytest.param(["a gull", "--model", "tiny", "--seed", "3", "--preset", "quick"],
                 {"prompt": "a gull", "model": "tiny", "seed": 3, "preset": "quick"},
                 {"width": 768, "height": 768, "steps": 16, "scheduler": "dpmpp_2m_karras", "cfg": 6.0},
                 id="preset"),
    pytest.param(["a gull", "--model", "tiny", "--seed", "3", "--preset", "quick", "--steps", "2"],
                 {"prompt": "a gull", "model": "tiny", "seed": 3, "preset": "quick", "steps": 2},
                 {"steps": 2, "width": 768}, id="preset-under-given"),
    pytest.param(["a gull", "--seed", "3", "--preset", "draft"],
                 {"prompt": "a gull", "seed": 3, "preset": "draft"},
                 {"engine": "draft", "steps": 1}, id="preset-engine"),
    pytest.param(["a gull", "--model", "tiny", "--seed", "3", "--size", "64x64", "--style", "vivid",
                  "--negative", "blur"],
                 {"prompt": "a gull", "model": "tiny", "seed": 3, "size": "64x64", "style": "vivid",
                  "negative": "blur"},
                 {"style_name": "vivid"}, id="named-style"),
    pytest.param(["a gull", "--model", "tiny", "--seed", "3", "--size", "64x64", "--style", "oil painting"],
                 {"prompt": "a gull", "model": "tiny", "seed": 3, "size": "64x64", "style": "oil painting"},
                 {"style": "oil painting", "style_name": None}, id="free-style"),
    pytest.param(["a gull", "--model", "tiny-few", "--seed", "3"], {"prompt": "a gull", "model": "tiny-few", "seed": 3},
                 {"steps": 3, "cfg": 1.0, "scheduler": "euler_trailing", "width": 64}, id="model-defaults"),
    pytest.param(["a gull", "--model", "tiny-few", "--seed", "3", "--cfg", "5", "--size", "128x128"],
                 {"prompt": "a gull", "model": "tiny-few", "seed": 3, "cfg": 5.0, "size": "128x128"},
                 {"steps": 3, "cfg": 5.0, "width": 128}, id="model-defaults-under-given"),
    pytest.param(["a gull", "--model", "tiny", "--seed", "3", "--size", "64x64", "--tile", "x"],
                 {"prompt": "a gull", "model": "tiny", "seed": 3, "size": "64x64", "tile": "x"},
                 {"tile": "x"}, id="tile"),
    pytest.param(["a gull", "--engine", "draft", "--seed", "3", "--count", "2"],
                 {"prompt": "a gull", "engine": "draft", "seed": 3, "count": 2},
                 {"engine": "draft", "width": 1024, "count": 2}, id="draft-keeps-its-size"),
]


@pytest.mark.parametrize("args, body, expected", CASES)
async def test_the_cli_and_the_api_prepare_the_same_request(monkeypatch, run_cli, parity_workspace, args, body,
                                                              expected):
    from echo_os.render.requests import RenderRequest

    code, err, from_cli = cli_request(monkeypatch, run_cli, parity_workspace, *args)
    assert code == 1 and "stopped by the test" in err and from_cli is not None, err
    async with api_client(parity_workspace, start_worker=False) as (client, _):
        status, from_api = await api_request(client, body)
    assert status == 202, from_api
    from_api = RenderRequest.model_validate(from_api)
    assert from_api == from_cli
    for key, value in expected.items():
        assert getattr(from_cli, key) == value, (key, from_cli)


def _engines() -> tuple[str, ...]:
    from echo_os.engines import engine_names

    return engine_names()


@pytest.mark.parametrize("engine", _engines())
async def test_an_unknown_model_is_an_error_with_every_engine(monkeypatch, run_cli, parity_workspace, engine):
    code, err, request = cli_request(monkeypatch, run_cli, parity_workspace, "a gull", "--model", "nope",
                                     "--engine", engine)
    assert code == 2 and request is None and err.count("\n") == 1 and "no model named 'nope'" in err, err
    async with api_client(parity_workspace, start_worker=False) as (client, _):
        status, detail = await api_request(client, {"prompt": "a gull", "model": "nope", "engine": engine})
        assert (await client.get("/api/jobs")).json()["items"] == []
    assert status == 422 and detail[0]["loc"] == ["body", "model"], detail
    assert "no model named 'nope'" in detail[0]["msg"]


async def test_a_bad_value_names_the_same_field_with_the_same_words(monkeypatch, run_cli, parity_workspace):
    """One OptionError, two presentations: the CLI's line and the API's 422 carry the same message (the API
    spells an option `--name` as its field `name`: api_message, the one presentation rule)."""
    from echo_os.api.deps import api_message

    cases = [(["--preset", "nosuch"], {"preset": "nosuch"}, "preset", "unknown preset 'nosuch'"),
             (["--style", "nosuch"], {"style": "nosuch"}, "style", "unknown style 'nosuch'"),
             (["--engine", "draft", "--tile", "xy"], {"engine": "draft", "tile": "xy"}, "tile", "seamless tiles"),
             (["--steps", "999"], {"steps": 999}, "steps", None)]
    async with api_client(parity_workspace, start_worker=False) as (client, _):
        for args, patch, field, words in cases:
            code, err, request = cli_request(monkeypatch, run_cli, parity_workspace, "a gull", "--model", "tiny", *args)
            status, detail = await api_request(client, {"prompt": "a gull", "model": "tiny", **patch})
            assert code == 2 and request is None and err.count("\n") == 1, (args, err)
            assert status == 422 and detail[0]["loc"][:2] == ["body", field], (patch, detail)
            if words is not None:
                assert words in err and detail[0]["msg"] == api_message(err.strip().removeprefix("Error: ")), \
                    (err, detail)


def test_auto_skips_an_engine_that_cannot_tile(parity_workspace):
    """tile is a capability: with the order draft first, auto passes it over for an engine that tiles."""
    import dataclasses

    from echo_os.render.prepare import prepare

    settings = dataclasses.replace(parity_workspace, engine_order=("draft", "cpu"))
    plain = prepare(settings, {"prompt": "wall", "model": "tiny", "size": "64x64"})
    tiled = prepare(settings, {"prompt": "wall", "model": "tiny", "size": "64x64", "tile": "xy"})
    assert plain.engine.name == "draft"
    assert tiled.engine.name == "cpu" and "draft: --tile needs an engine" in tiled.engine.reason


def test_draft_with_an_unknown_model_is_exit_2_one_line(run_cli, workspace):
    code, out, err = run_cli("--home", str(workspace.home), "render", "a gull", "--engine", "draft", "--model", "nope")
    assert code == 2 and not out and err.count("\n") == 1 and "no model named 'nope'" in err
    assert not list(workspace.artifacts_dir.glob("*/*/*/image.png"))


async def test_v1_images_generations_takes_the_cpu_size_and_a_preset(parity_workspace):
    """(The cpu engine's size is 64x64 here to keep the render short; the parity table has the 512x512 default.)"""
    import dataclasses

    async with api_client(dataclasses.replace(parity_workspace, cpu_size="64x64")) as (client, _):
        response = await client.post("/v1/images/generations",
                                     json={"prompt": "a gull", "model": "tiny", "steps": 1, "seed": 1})
        assert response.status_code == 200, response.text
        assert response.json()["size"] == "64x64"  # the cpu engine's default, as `echo-os render`
        response = await client.post("/v1/images/generations", json={"prompt": "a gull", "preset": "draft", "seed": 1})
        assert response.status_code == 200, response.text
        job = (await client.get(f"/api/jobs/{response.headers['X-Echo-Job-Id']}")).json()
        assert job["request"]["engine"] == "draft" and job["request"]["steps"] == 1


def test_compare_without_size_renders_the_cpu_size_and_says_so_in_help(monkeypatch, run_cli, parity_workspace):
    import json

    from PIL import Image

    from echo_os.iterate.compare import plan_compare

    plan = plan_compare(parity_workspace, {"prompt": "a gull", "size": None}, {"models": ("tiny",), "seeds": (1,)})
    assert plan.cells[0].request.size == "512x512"
    monkeypatch.setenv("ECHO_OS_CPU_SIZE", "64x64")  # a short render of the same rule
    home = str(parity_workspace.home)
    code, out, _ = run_cli("--home", home, "compare", "--help")
    text = " ".join(out.split())
    assert code == 0 and "512x512 when the cpu engine renders" in text and "default: 1024x1024" not in text
    code, out, err = run_cli("--home", home, "compare", "a gull", "--models", "tiny", "--steps", "1", "--seeds", "1",
                             "--json")
    assert code == 0, err
    [cell] = json.loads(out)["cells"]
    with Image.open(cell["image"]) as image:
        assert image.size == (64, 64)


# ---- batch: `echo-os batch` and POST /api/batch plan through the same layering (echo_os.story.batch) ------

def cli_batch_requests(monkeypatch, run_cli, settings, tmp_path, source: dict, *args: str):
    """(exit code, stderr, the RenderRequests `echo-os batch` hands to render_requests) for `source`: a
    /api/batch body's story ({"prompts": [...]} or {"storyboard": ..., "bible": ...}) written as files."""
    import echo_os.render.scheduler as scheduler

    seen = []

    def spy(settings, requests, **kwargs):
        seen.extend(requests)
        raise _Stop("stopped by the test before rendering")

    monkeypatch.setattr(scheduler, "render_requests", spy)
    folder = tmp_path / "story"
    folder.mkdir(exist_ok=True)
    if "prompts" in source:
        (folder / "prompts.txt").write_text("\n".join(source["prompts"]) + "\n", encoding="utf-8")
        path = f"@{folder / 'prompts.txt'}"
    else:
        (folder / "story.csv").write_text(source["storyboard"], encoding="utf-8")
        if "bible" in source:
            (folder / "STORY_BIBLE.md").write_text(source["bible"], encoding="utf-8")
        path = str(folder / "story.csv")
    code, _out, err = run_cli("--home", str(settings.home), "batch", "Gulls", path, "--clip", "none", "--no-score",
                              *args)
    return code, err, seen


async def api_batch_requests(client, app, body: dict):
    """(status, the queued job's RenderRequests, or the 422 detail)."""
    response = await client.post("/api/batch", json={"project": "Gulls", **body})
    if response.status_code != 202:
        return response.status_code, response.json()["detail"]
    return 202, list(app.state.api.jobs.get(response.json()["job_id"]).spec.items)


PROMPTS = {"prompts": ["a gull --seed 3", "a tern at dusk"]}
STORY = {"storyboard": "scene,description,steps\n1,a gull on a post,5\n2,a tern at dusk,\n",
         "bible": "---\ntitle: Gulls\nmodel: tiny\ndefaults: {cfg: 2.5, steps: 7, seed: 11}\n---\n"}

# (the story, CLI options, the same as /api/batch fields, what every request must say)
BATCH_CASES = [
    pytest.param(PROMPTS, ["--model", "tiny"], {"model": "tiny"}, {"width": 512, "height": 512, "steps": 30},
                 id="cpu-default-size"),
    pytest.param(PROMPTS, ["--model", "tiny", "--size", "64x64"], {"model": "tiny", "size": "64x64"},
                 {"width": 64}, id="size-given"),
    pytest.param(PROMPTS, ["--model", "tiny", "--preset", "quick"], {"model": "tiny", "preset": "quick"},
                 {"width": 768, "steps": 16, "scheduler": "dpmpp_2m_karras", "cfg": 6.0}, id="preset"),
    pytest.param(PROMPTS, ["--model", "tiny", "--preset", "quick", "--steps", "2"],
                 {"model": "tiny", "preset": "quick", "steps": 2}, {"steps": 2, "width": 768}, id="preset-under-given"),
    pytest.param(PROMPTS, ["--preset", "draft"], {"preset": "draft"}, {"engine": "draft", "steps": 1},
                 id="preset-engine"),
    pytest.param(PROMPTS, ["--model", "tiny", "--size", "64x64", "--style", "vivid"],
                 {"model": "tiny", "size": "64x64", "style": "vivid"}, {"style_name": "vivid"}, id="named-style"),
    pytest.param(PROMPTS, ["--model", "tiny", "--size", "64x64", "--style", "oil painting"],
                 {"model": "tiny", "size": "64x64", "style": "oil painting"},
                 {"style": "oil painting", "style_name": None}, id="free-style"),
    pytest.param(PROMPTS, ["--model", "tiny-few"], {"model": "tiny-few"},
                 {"steps": 3, "cfg": 1.0, "scheduler": "euler_trailing", "width": 64}, id="model-defaults"),
    pytest.param(STORY, [], {}, {"cfg": 2.5, "width": 512}, id="bible"),
    pytest.param(STORY, ["--preset", "quick"], {"preset": "quick"}, {"cfg": 6.0, "steps": 16, "width": 768},
                 id="preset-over-the-bible"),
    pytest.param(STORY, ["--model", "tiny-few"], {"model": "tiny-few"},
                 {"cfg": 1.0, "scheduler": "euler_trailing", "width": 64}, id="another-model-than-the-bibles"),
]


@pytest.mark.parametrize("source, args, body, expected", BATCH_CASES)
async def test_cli_batch_and_api_batch_prepare_the_same_requests(monkeypatch, run_cli, parity_workspace, tmp_path,
                                                                 source, args, body, expected):
    code, err, from_cli = cli_batch_requests(monkeypatch, run_cli, parity_workspace, tmp_path, source, *args)
    assert code == 1 and "stopped by the test" in err and len(from_cli) == 2, err
    async with api_client(parity_workspace, start_worker=False) as (client, app):
        status, from_api = await api_batch_requests(client, app, {**source, **body})
    assert status == 202, from_api
    assert from_api == from_cli
    for request in from_cli:
        for key, value in expected.items():
            assert getattr(request, key) == value, (key, request)
    if source is STORY and "preset" not in body:  # a row's own cell: below the options and the preset only
        assert [request.steps for request in from_cli] == [5, 7 if "model" not in body else 3]


# --count / `count`: the first N scenes or prompts, planned (and sized) as the whole story is
COUNT_CASES = [
    pytest.param(PROMPTS, ["--model", "tiny", "--count", "1"], {"model": "tiny", "count": 1}, 1,
                 {"width": 512, "seed": 3}, id="prompts-first"),
    pytest.param(PROMPTS, ["--model", "tiny", "--size", "64x64", "--count", "5"],
                 {"model": "tiny", "size": "64x64", "count": 5}, 2, {"width": 64}, id="more-than-the-story"),
    pytest.param(STORY, ["--count", "1"], {"count": 1}, 1, {"cfg": 2.5, "steps": 5, "width": 512}, id="story-first"),
    pytest.param(STORY, ["--preset", "quick", "--count", "1"], {"preset": "quick", "count": 1}, 1,
                 {"steps": 16, "width": 768}, id="story-preset"),
]


@pytest.mark.parametrize("source, args, body, rendered, expected", COUNT_CASES)
async def test_cli_batch_count_and_api_batch_count_prepare_the_same_requests(monkeypatch, run_cli, parity_workspace,
                                                                             tmp_path, source, args, body, rendered,
                                                                             expected):
    code, err, from_cli = cli_batch_requests(monkeypatch, run_cli, parity_workspace, tmp_path, source, *args)
    assert code == 1 and "stopped by the test" in err and len(from_cli) == rendered, err
    async with api_client(parity_workspace, start_worker=False) as (client, app):
        status, from_api = await api_batch_requests(client, app, {**source, **body})
    assert status == 202, from_api
    assert from_api == from_cli
    assert [request.story.scene for request in from_api] == list(range(1, rendered + 1))
    for key, value in expected.items():
        assert getattr(from_cli[0], key) == value, (key, from_cli[0])


@pytest.mark.parametrize("count", [0, -1, "1", 1.5, 100_001])
async def test_api_batch_names_a_bad_count(parity_workspace, count):
    async with api_client(parity_workspace, start_worker=False) as (client, app):
        status, detail = await api_batch_requests(client, app, {**PROMPTS, "count": count})
        assert (await client.get("/api/jobs")).json()["items"] == []
    assert status == 422 and detail[0]["loc"] == ["body", "count"], detail


@pytest.mark.parametrize("engine", _engines())
async def test_a_batch_with_an_unknown_model_is_an_error_with_every_engine(monkeypatch, run_cli, parity_workspace,
                                                                          tmp_path, engine):
    code, err, requests = cli_batch_requests(monkeypatch, run_cli, parity_workspace, tmp_path, PROMPTS,
                                             "--model", "nope", "--engine", engine)
    assert code == 2 and requests == [] and err.count("\n") == 1 and "no model named 'nope'" in err, err
    async with api_client(parity_workspace, start_worker=False) as (client, app):
        status, detail = await api_batch_requests(client, app, {**PROMPTS, "model": "nope", "engine": engine})
        assert (await client.get("/api/jobs")).json()["items"] == []
        # the bible's model: the bible's fault
        bible = STORY["bible"].replace("model: tiny", "model: nope")
        bad_bible, bible_detail = await api_batch_requests(client, app, {**STORY, "bible": bible, "engine": engine})
    assert status == 422 and detail[0]["loc"] == ["body", "model"] and "no model named 'nope'" in detail[0]["msg"]
    assert bad_bible == 422 and bible_detail[0]["loc"] == ["body", "bible"], bible_detail


async def test_api_batch_names_an_unknown_preset(parity_workspace):
    async with api_client(parity_workspace, start_worker=False) as (client, app):
        status, detail = await api_batch_requests(client, app, {**PROMPTS, "preset": "nosuch"})
    assert status == 422 and detail[0]["loc"] == ["body", "preset"] and "unknown preset 'nosuch'" in detail[0]["msg"]


def test_one_layering_order_for_every_host(parity_workspace):
    """prepare's `files` and the story planner share layer_fields: the user > the preset > the row > the bible
    > the model entry; a bible written for another model steps aside for the chosen model's entry."""
    from echo_os.render.prepare import FileLayer, prepare

    def steps_cfg(explicit=(), preset=None, **values):
        row = FileLayer({"steps": 5})
        bible = FileLayer({"model": "tiny", "steps": 7, "cfg": 2.5}, written_for="tiny", follows_model=True)
        request = prepare(parity_workspace, {"prompt": "a gull", "size": "64x64", **values}, {"size", *explicit},
                          preset=preset, files=[row, bible], choose=False).request
        return request.model, request.steps, request.cfg, request.scheduler

    assert steps_cfg() == ("tiny", 5, 2.5, "euler")  # the row's steps, the bible's cfg and model
    assert steps_cfg(preset="quick") == ("tiny", 16, 6.0, "dpmpp_2m_karras")  # the preset over the files
    assert steps_cfg(("steps",), preset="quick", steps=2)[1] == 2  # the user over the preset
    # the user chose tiny-few (steps 3, cfg 1): its entry over the bible's values, the row's cell still first
    assert steps_cfg(("model",), model="tiny-few") == ("tiny-few", 5, 1.0, "euler_trailing")
