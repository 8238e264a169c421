"""The openai engine against a fake OpenAI Images server on 127.0.0.1 (tests/fake_openai.py): the engine
contract, privacy (zero connections by default), sizes and models, provenance and replay, every fault the
provider answers with, pacing, the response cache, and a story that survives a failing provider."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from PIL import Image

from echo_os.engines import choose_engine, create_engine
from echo_os.requests import RenderRequest
from tests.fake_openai import REVOKED_KEY, fake_images_server, hosted_workspace
from tests.helpers import run_cli

@pytest.fixture
def server(monkeypatch):
    with fake_images_server(slow_s=1.5) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-fake")
        yield fake


@pytest.fixture
def hosted(tmp_path, server):
    """A workspace that allows the openai engine, with fast retries and no pacing to speak of."""
    return hosted_workspace(tmp_path)


def _render(settings, *args):
    code, out, err = run_cli("--home", str(settings.home), "render", *args, "--no-memory", "--json")
    return code, (json.loads(out) if code == 0 else out), err


def _meta(row) -> dict:
    return json.loads((Path(row["path"]) / "meta.json").read_text(encoding="utf-8"))


def test_the_default_install_opens_no_connection(workspace, monkeypatch):
    """A key in the environment is not enough: without the workspace's consent, auto asks neither network
    engine anything, and no socket connects anywhere (loopback included)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-would-be-used")
    attempts = []

    def refuse(self, address):
        attempts.append(address)
        raise AssertionError(f"connection to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    code, out, err = run_cli("--home", str(workspace.home), "render", "a kite", "--size", "1024x1024", "--no-memory")
    assert code == 0, err
    assert attempts == []
    assert "engine: draft (auto: first available in the order sdxl, comfyui, openai, cpu, draft" in err
    assert "openai: it sends requests over the network; set allow = true under [engines.openai]" in err


def test_auto_takes_openai_only_when_allowed_and_keyed(hosted, monkeypatch):
    request = RenderRequest(prompt="x", width=1024, height=1024)
    name, reason = choose_engine(hosted, request)
    assert name == "openai" and "skipped sdxl" in reason
    monkeypatch.delenv("OPENAI_API_KEY")
    name, reason = choose_engine(hosted, request)
    assert name == "draft" and "openai: no OPENAI_API_KEY is set" in reason
    # A size the model does not take: auto passes over it, naming the sizes.
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    name, reason = choose_engine(hosted, RenderRequest(prompt="x", width=512, height=512))
    assert name == "draft" and "openai: model gpt-image-1 renders only the sizes 1024x1024, 1536x1024, 1024x1536" in reason


def test_a_render_records_provenance_says_where_and_replay_refuses(hosted, server):
    code, rows, err = _render(hosted, "a red kite", "--engine", "openai", "--size", "1536x1024", "--count", "2",
                              "-o", "quality=low", "-o", "background=opaque")
    assert code == 0, err
    assert err.count(f"engine openai: prompts are sent to {server.base_url}/ (model gpt-image-1)") == 1
    # one request per image (each saved as it arrives), no seed sent
    assert server.requests == 2 * [{"model": "gpt-image-1", "prompt": "a red kite", "n": 1, "size": "1536x1024",
                                    "quality": "low", "background": "opaque"}]
    metas = [_meta(row) for row in rows]
    for meta in metas:
        p = meta["provenance"]
        assert p["provider"] == "openai" and p["model"] == "gpt-image-1" and p["reproducible"] is False
        assert p["seed_sent"] is False and p["cached"] is False and p["response_id"].startswith("req_fake")
        assert p["usage"]["total_tokens"] == p["usage"]["input_tokens"] + p["usage"]["output_tokens"] > 0
        assert (meta["width"], meta["height"]) == (1536, 1024) and meta["engine"]["name"] == "openai"
    code, out, err = run_cli("--home", str(hosted.home), "replay", rows[0]["id"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "cannot be reproduced" in err and "gpt-image-1" in err
    assert len(server.requests) == 2  # replay asked nothing
    assert metas[0]["provenance"]["response_id"] != metas[1]["provenance"]["response_id"]
    with Image.open(rows[0]["image"]) as one, Image.open(rows[1]["image"]) as two:
        assert one.getpixel((0, 0)) != two.getpixel((0, 0))  # two images, not one twice from the cache


def test_sizes_and_models_are_checked_before_anything_is_sent(hosted, server):
    for args, words in [
        (("--size", "512x512"), "renders only the sizes 1024x1024, 1536x1024, 1024x1536, not 512x512"),
        (("--size", "1024x1024", "-o", "model=dall-e-3"), "dall-e-3 was retired by OpenAI in May 2026"),
        (("--size", "1024x1024", "--model", "dall-e-2"), "dall-e-2 was retired by OpenAI in May 2026"),
        (("--size", "1000x1000", "-o", "model=gpt-image-2"), "multiples of 16"),
        (("--size", "3840x1024", "-o", "model=gpt-image-2"), "at most 3:1"),
        (("--size", "1024x1024", "-o", "quality=ultra"), "quality"),
    ]:
        code, out, err = _render(hosted, "x", "--engine", "openai", *args)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (args, err)
        assert words in err, (args, err)
    assert server.requests == []
    code, rows, err = _render(hosted, "x", "--engine", "openai", "--size", "1536x864", "-o", "model=gpt-image-2")
    assert code == 0, err
    assert server.requests[-1]["size"] == "1536x864" and server.requests[-1]["model"] == "gpt-image-2"


@pytest.mark.parametrize("fault", ["429", "503", "malformed", "slow", "drop"])
def test_a_passing_fault_is_retried(hosted, server, fault):
    engine = create_engine(hosted, "openai", "test")
    waits = []
    engine._sleep = waits.append
    server.faults.append(fault)
    [result] = engine.render([RenderRequest(prompt="x", width=1024, height=1024, engine="openai")])
    assert len(result.images) == 1 and len(server.requests) == 2
    if fault == "429":
        assert 0.02 <= waits[0] < 0.1  # retry-after-ms (20) wins over retry-after (1 s), plus a little jitter


def test_retry_after_in_seconds_is_honoured(hosted, server):
    engine = create_engine(hosted, "openai", "test")
    waits = []
    engine._sleep = waits.append
    server.faults.append("429-seconds")
    engine.render([RenderRequest(prompt="x", width=1024, height=1024, engine="openai")])
    assert len(waits) == 1 and 1.0 <= waits[0] <= 1.2


def test_insufficient_quota_stops_at_once(hosted, server):
    server.faults.extend(["quota"] * 5)
    code, out, err = _render(hosted, "x", "--engine", "openai", "--size", "1024x1024")
    # the engine line, the "prompts are sent" line, then the error: one line
    assert code == 1 and len(err.strip().splitlines()) == 3, err
    assert "no quota left (insufficient_quota)" in err.splitlines()[-1]
    assert len(server.requests) == 1


def test_a_provider_that_keeps_failing_gives_up_in_one_line(hosted, server):
    server.faults.extend(["503"] * 3)
    code, out, err = _render(hosted, "x", "--engine", "openai", "--size", "1024x1024")
    assert code == 1 and "failed 3 times, last with 503" in err.splitlines()[-1]
    assert len(server.requests) == 3
    server.faults.append("401-like")  # unknown fault names do nothing: the next request succeeds
    code, rows, err = _render(hosted, "x", "--engine", "openai", "--size", "1024x1024")
    assert code == 0, err


def test_a_refused_request_is_not_retried(hosted, server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", REVOKED_KEY)  # the fake answers 401 invalid_api_key like the real API
    code, out, err = _render(hosted, "x", "--engine", "openai", "--size", "1024x1024")
    assert code == 1 and "refused the request (401 invalid_api_key" in err.splitlines()[-1]
    assert len(server.requests) == 1


def test_the_same_request_pays_once_and_no_cache_asks_again(hosted, server):
    code, first, err = _render(hosted, "a harbour", "--engine", "openai", "--size", "1024x1024", "--seed", "1")
    assert code == 0, err
    # --again: an identical request otherwise shows the earlier artifact without asking the engine (issue 11)
    code, second, err = _render(hosted, "a harbour", "--engine", "openai", "--size", "1024x1024", "--seed", "1",
                                "--again")
    assert code == 0, err
    assert len(server.requests) == 1 and "prompts are sent" not in err  # nothing was sent
    cached = _meta(second[0])
    assert cached["provenance"]["cached"] is True and cached["provenance"]["response_id"] == \
        _meta(first[0])["provenance"]["response_id"]
    assert Path(second[0]["image"]).is_file() and second[0]["path"] != first[0]["path"]  # a full artifact
    code, third, err = _render(hosted, "a harbour", "--engine", "openai", "--size", "1024x1024", "--seed", "1",
                               "--no-cache", "--again")
    assert code == 0, err
    assert len(server.requests) == 2 and _meta(third[0])["provenance"]["cached"] is False


def test_the_pacer_spaces_images_evenly():
    from echo_os.engines.openai_images import ImagesPacer

    now = [100.0]
    pacer = ImagesPacer(20, clock=lambda: now[0])
    assert [pacer.reserve(1) for _ in range(3)] == [0.0, 3.0, 6.0]
    now[0] += 10  # idle: no debt carried over
    assert pacer.reserve(2) == 0.0 and pacer.reserve(1) == 6.0


def test_engine_settings_are_checked(tmp_path):
    home = tmp_path / "bad"
    home.mkdir()
    (home / "echo-os.toml").write_text('[engines.openai]\nallow = true\nimages_per_minut = 3\n', encoding="utf-8")
    code, out, err = run_cli("--home", str(home), "render", "x", "--engine", "openai", "--size", "1024x1024")
    assert code == 2 and "[engines.openai] images_per_minut" in err and len(err.strip().splitlines()) == 1


def test_a_story_meeting_a_failing_provider_keeps_its_scenes_and_resumes(hosted, server):
    prompts = hosted.home / "prompts.txt"
    prompts.write_text("a fox in the snow\na hare at dusk\na heron in fog\na seal on a rock\n", encoding="utf-8")
    args = ("--home", str(hosted.home), "batch", "animals", f"@{prompts}", "--engine", "openai",
            "--size", "1024x1024", "--json")
    # Scene 1 meets a 429 and a dropped connection and still renders; scene 3 meets a provider that is down.
    server.faults.extend(["429", "drop", "ok", "ok", "503", "503", "503"])
    code, out, err = run_cli(*args)
    assert code == 1 and "failed 3 times" in err.splitlines()[-1]
    assert len(list(hosted.artifacts_dir.rglob("image.png"))) == 2
    code, out, err = run_cli(*args)
    assert code == 0, err
    result = json.loads(out)
    assert (result["rendered"], result["resumed"]) == (2, 2)
    assert server.served == 4  # every scene rendered exactly once across the faults
    prompts_sent = [body["prompt"] for body in server.requests]
    assert prompts_sent.count("a heron in fog") == 4 and prompts_sent.count("a seal on a rock") == 1
    # The same story as another project (nothing to resume there) is paid once: every image from the cache.
    asked = len(server.requests)
    code, out, err = run_cli(*args[:3], "animals-again", *args[4:])
    assert code == 0, err
    again = json.loads(out)
    assert again["rendered"] == 4 and len(server.requests) == asked
    assert all(_meta(row)["provenance"]["cached"] for row in again["artifacts"])


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_the_api_names_the_size_and_renders_through_openai(hosted, server, monkeypatch):
    from tests.api_helpers import api_client, wait_job

    monkeypatch.setenv("ECHO_OS_NO_MEMORY", "1")
    async with api_client(hosted) as (client, _app):
        bad = await client.post("/api/render", json={"prompt": "x", "engine": "openai", "size": "512x512"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "size", bad.text
        assert "1024x1024, 1536x1024, 1024x1536" in bad.json()["detail"][0]["msg"]
        sent = await client.post("/api/render", json={"prompt": "a kite", "engine": "openai", "size": "1024x1536",
                                                      "options": {"quality": "high"}})
        assert sent.status_code == 202, sent.text
        job = await wait_job(client, sent.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert server.requests == [{"model": "gpt-image-1", "prompt": "a kite", "n": 1, "size": "1024x1536",
                                "quality": "high"}]


def test_an_init_image_goes_to_the_edits_endpoint(hosted, server, tmp_path):
    init = tmp_path / "sketch.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(init)
    code, rows, err = _render(hosted, "the same, at dusk", "--engine", "openai", "--size", "1024x1024",
                              "-o", f"init_image={init}", "-o", "quality=low")
    assert code == 0, err
    [sent] = server.requests
    assert sent == {"endpoint": "edits", "model": "gpt-image-1", "prompt": "the same, at dusk", "n": 1,
                    "size": "1024x1024", "quality": "low"}
    with Image.open(rows[0]["image"]) as image:
        assert image.getpixel((0, 0)) == (10, 200, 30)  # the fake answers an edit with the given image's colour
    provenance = _meta(rows[0])["provenance"]
    assert provenance["endpoint"] == "images/edits" and len(provenance["init_image_sha256"]) == 64
    # The cache knows the image by its content: another picture at the same path is asked for again.
    Image.new("RGB", (64, 64), (200, 10, 30)).save(init)
    code, rows, err = _render(hosted, "the same, at dusk", "--engine", "openai", "--size", "1024x1024",
                              "-o", f"init_image={init}", "-o", "quality=low")
    assert code == 0 and len(server.requests) == 2, err
    code, out, err = _render(hosted, "x", "--engine", "openai", "--size", "1024x1024", "-o", "init_image=nope.png")
    assert code == 2 and "init image nope.png is not a file" in err and len(server.requests) == 2
