"""The openai engine against a fake OpenAI Images server on 127.0.0.1 (tests/fake_openai.py): the engine
contract, privacy (zero connections by default), sizes and models, provenance and replay, every fault the
provider answers with, pacing, the response cache, and a story that survives a failing provider."""

from __future__ import annotations

import hashlib
import io
import json
import socket
from pathlib import Path

import pytest
from PIL import Image

from echo_os.engines import choose_engine, create_engine
from echo_os.errors import UsageError
from echo_os.render.requests import RenderRequest
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
    code, out, err = run_cli("--home", str(workspace.home), "-v", "render", "a kite", "--size", "1024x1024",
                             "--no-memory")
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
    init = hosted.home / "sketch.png"  # a path is read only from inside the workspace
    Image.new("RGB", (64, 64), (10, 200, 30)).save(init)
    code, rows, err = _render(hosted, "the same, at dusk", "--engine", "openai", "--size", "1024x1024",
                              "-o", f"init_image={init}", "-o", "quality=low")
    assert code == 0, err
    [sent] = server.requests
    assert sent == {"endpoint": "edits", "model": "gpt-image-1", "prompt": "the same, at dusk", "n": 1,
                    "size": "1024x1024", "quality": "low",
                    "images": [hashlib.sha256(init.read_bytes()).hexdigest()]}
    with Image.open(rows[0]["image"]) as image:
        assert image.getpixel((0, 0)) == (10, 200, 30)  # the fake answers an edit with the given image's colour
    provenance = _meta(rows[0])["provenance"]
    assert provenance["endpoint"] == "images/edits" and len(provenance["init_image_sha256"]) == 64
    # The cache knows the image by its content: another picture at the same path is asked for again.
    Image.new("RGB", (64, 64), (200, 10, 30)).save(init)
    code, rows, err = _render(hosted, "the same, at dusk", "--engine", "openai", "--size", "1024x1024",
                              "-o", f"init_image={init}", "-o", "quality=low")
    assert code == 0 and len(server.requests) == 2, err
    missing = hosted.home / "nope.png"
    code, out, err = _render(hosted, "x", "--engine", "openai", "--size", "1024x1024", "-o", f"init_image={missing}")
    assert code == 2 and f"init image {missing} not found" in err and len(server.requests) == 2


def test_no_server_file_is_sent_to_an_edit(hosted, server, tmp_path, monkeypatch):
    """Red-team finding: `options.init_image=/etc/hostname` was sent to /images/edits. The CLI reads a path
    only inside the workspace (an image that decodes whole); the API takes an artifact id or the bytes as a
    data: URL, never a path; the engine checks the file again when it renders."""
    import asyncio
    import base64

    from tests.api_helpers import api_client, wait_job

    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8)).save(outside)
    for path in ("/etc/hostname", str(outside)):
        code, out, err = _render(hosted, "x", "--engine", "openai", "--size", "1024x1024", "-o", f"init_image={path}")
        assert code == 2 and "outside the workspace" in err and len(err.strip().splitlines()) == 1, err
    engine = create_engine(hosted, "openai", "test")
    with pytest.raises(UsageError, match="outside the workspace"):
        engine.render([RenderRequest(prompt="x", width=1024, height=1024, engine="openai",
                                     options={"init_image": "/etc/hostname"})])
    assert server.requests == []
    code, rows, err = _render(hosted, "a parent", "--engine", "openai", "--size", "1024x1024")
    assert code == 0, err
    parent = rows[0]
    png = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 99, 2)).save(png, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    monkeypatch.setenv("ECHO_OS_NO_MEMORY", "1")
    body = {"prompt": "again", "engine": "openai", "size": "1024x1024"}

    async def go():
        async with api_client(hosted) as (client, _app):
            for value in ("/etc/hostname", str(hosted.home / "sketch.png"), parent["image"]):
                answer = await client.post("/api/render", json={**body, "options": {"init_image": value}})
                assert answer.status_code == 422, answer.text
                assert answer.json()["detail"][0]["loc"][-2:] == ["options", "init_image"], answer.text
            jobs = []
            for value in (parent["id"], data_url):
                sent = await client.post("/api/render", json={**body, "options": {"init_image": value}})
                assert sent.status_code == 202, sent.text
                jobs.append(await wait_job(client, sent.json()["job_id"]))
            return jobs

    jobs = asyncio.run(go())
    assert [job["status"] for job in jobs] == ["succeeded", "succeeded"], jobs
    edits = [sent for sent in server.requests if sent.get("endpoint") == "edits"]
    assert [sent["images"] for sent in edits] == [[parent["id"]], [hashlib.sha256(png.getvalue()).hexdigest()]]


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_the_real_client_sends_several_images_as_image_brackets_and_the_fake_reads_them(server):
    """openai-python names the items of a list `image[]` (and one image `image`); the fake, like the real
    server, takes both, counts each request and refuses an edit without an image."""
    import openai

    client = openai.OpenAI(max_retries=0)
    one, two = (Image.new("RGB", (8, 8), colour) for colour in ((1, 2, 3), (200, 100, 50)))
    files = []
    for image in (one, two):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        files.append(("ref.png", buffer.getvalue()))
    client.images.edit(image=files, prompt="p", model="gpt-image-1", n=1, size="1024x1024")
    client.images.edit(image=files[1], prompt="p", model="gpt-image-1", n=1, size="1024x1024")
    assert [body["images"] for body in server.requests] == [
        [hashlib.sha256(f[1]).hexdigest() for f in files], [hashlib.sha256(files[1][1]).hexdigest()]]
    with pytest.raises(openai.BadRequestError, match="Missing required parameter: 'image'"):
        client.images.with_raw_response.edit(image=[], prompt="p", model="gpt-image-1")
    with pytest.raises(openai.BadRequestError, match="at most 16"):
        client.images.edit(image=[files[0]] * 17, prompt="p", model="gpt-image-1")
    assert len(server.requests) == 4 and server.served == 2


def test_refine_through_openai_sends_the_parent_to_the_edits_endpoint(hosted, server):
    code, rows, err = _render(hosted, "a red kite", "--engine", "openai", "--size", "1024x1024", "-o", "quality=low")
    assert code == 0, err
    parent = rows[0]
    args = ("--home", str(hosted.home), "refine", parent["id"], "the kite at night", "--engine", "openai",
            "--strength", "0.5", "--seed", "5", "--json", "--no-memory")
    code, out, err = run_cli(*args)
    assert code == 0, err
    [child] = json.loads(out)
    sent = server.requests[-1]
    # the parent's PNG, as it is on disk, is the one image; the parent's own option (quality) is carried
    assert sent == {"endpoint": "edits", "model": "gpt-image-1", "prompt": "the kite at night", "n": 1,
                    "size": "1024x1024", "quality": "low", "images": [parent["id"]]}
    meta = _meta(child)
    assert meta["parent_id"] == parent["id"] and meta["strength"] == 0.5 and meta["parent_sha256"] == parent["id"]
    p = meta["provenance"]
    assert p["endpoint"] == "images/edits" and p["init_image_sha256"] == parent["id"]
    assert p["strength"] == 0.5 and p["strength_sent"] is False and p["reference_images"] == []
    with Image.open(child["image"]) as image, Image.open(parent["image"]) as original:
        assert image.getpixel((0, 0)) == original.getpixel((0, 0))  # the fake's edit: the given image's colour
    # lineage
    code, out, err = run_cli("--home", str(hosted.home), "artifacts", "tree", child["id"])
    assert code == 0 and parent["id"][:12] in out and child["id"][:12] in out, err
    # the same refine again is answered from the cache (same parent bytes, same seed); a refine of the
    # child is another image: keyed by the sent image's sha256
    asked = len(server.requests)
    code, out, err = run_cli(*args)
    assert code == 0 and len(server.requests) == asked, err
    assert _meta(json.loads(out)[0])["provenance"]["cached"] is True
    code, out, err = run_cli("--home", str(hosted.home), "refine", child["id"], "the kite at night", "--engine",
                             "openai", "--seed", "5", "--json")
    assert code == 0 and len(server.requests) == asked + 1, err
    assert server.requests[-1]["images"] == [child["id"]]
    # -o on refine reaches the engine; replay of a hosted refine refuses like any hosted image
    code, out, err = run_cli(*args[:-2], "-o", "quality=high", "--json")
    assert code == 0 and server.requests[-1]["quality"] == "high", err
    code, out, err = run_cli("--home", str(hosted.home), "replay", child["id"])
    assert code == 2 and "cannot be reproduced" in err


def test_a_refine_of_a_parent_that_changed_on_disk_stops_before_sending(hosted, server):
    code, rows, err = _render(hosted, "a kite", "--engine", "openai", "--size", "1024x1024")
    assert code == 0, err
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.engines import create_engine
    from echo_os.iterate.refine import refine_request

    store = ArtifactStore(hosted)
    try:
        request = refine_request(hosted, store.open(rows[0]["id"]), strength=0.4, changes={"engine": "openai"})
    finally:
        store.close()
    Image.new("RGB", (1024, 1024), (1, 1, 1)).save(rows[0]["image"])
    asked = len(server.requests)
    with pytest.raises(UsageError, match="has changed since it was recorded"):
        create_engine(hosted, "openai", "test").render([request])
    assert len(server.requests) == asked


def _references(tmp_path, counts: dict[str, int]):
    from echo_os.render.requests import IPAdapterImage, IPAdapterInput, IPAdapterReference

    references = []
    for index, (name, count) in enumerate(counts.items()):
        images = []
        for i in range(count):
            path = tmp_path / f"{name}-{i}.png"
            Image.new("RGB", (16, 16), (index * 40, i * 10, 90)).save(path)
            images.append(IPAdapterImage(path=str(path), sha256=_sha(path)))
        references.append(IPAdapterReference(name=name, images=tuple(images)))
    return IPAdapterInput(model="ip-adapter-sdxl", references=tuple(references))


def test_reference_images_are_sent_to_the_edits_endpoint_and_keyed(hosted, server, tmp_path):
    adapter = _references(tmp_path, {"keeper": 2, "gull": 1})
    request = RenderRequest(prompt="the keeper and the gull", width=1024, height=1024, engine="openai", seed=3,
                            ip_adapter=adapter)
    assert choose_engine(hosted, request)[0] == "openai"
    engine = create_engine(hosted, "openai", "test")
    [result] = engine.render([request])
    shas = [image.sha256 for ref in adapter.references for image in ref.images]
    assert server.requests[-1]["endpoint"] == "edits" and server.requests[-1]["images"] == shas
    p = result.images[0].provenance
    assert p["reference_images"] == [{"name": "keeper", "sha256": shas[0]}, {"name": "keeper", "sha256": shas[1]},
                                     {"name": "gull", "sha256": shas[2]}]
    assert p["init_image_sha256"] is None and p["strength"] is None
    engine.render([request])
    assert len(server.requests) == 1  # the same request and images: the cache
    (tmp_path / "other").mkdir()
    other = _references(tmp_path / "other", {"keeper": 1, "gull": 2})
    engine.render([request.model_copy(update={"ip_adapter": other})])
    assert len(server.requests) == 2  # other images: asked again
    # more than the 16 images an edit takes: refused, naming the limit, before anything is sent
    (tmp_path / "many").mkdir()
    too_many = request.model_copy(update={"ip_adapter": _references(tmp_path / "many", {"a": 9, "b": 8})})
    with pytest.raises(UsageError, match="at most 16 images"):
        choose_engine(hosted, too_many)
    assert len(server.requests) == 2


STORY_BIBLE = """---
title: Kites
defaults:
  size: 1024x1024
characters:
  flyer:
    name: Ada
    description: a girl in a yellow coat
    seed: 11
    reference: refs/ada.png
---
A girl and her kite.
"""


def test_a_story_sends_the_bible_references_through_openai(hosted, server):
    folder = hosted.home / "kites"
    (folder / "refs").mkdir(parents=True)
    Image.new("RGB", (32, 32), (250, 220, 0)).save(folder / "refs" / "ada.png")
    (folder / "STORY_BIBLE.md").write_text(STORY_BIBLE, encoding="utf-8")
    (folder / "story.csv").write_text("scene,slug,description,characters\n1,hill,she flies the kite,flyer\n"
                                      "2,sky,the kite alone in the sky,\n", encoding="utf-8")
    code, out, err = run_cli("--home", str(hosted.home), "batch", "Kites", str(folder / "story.csv"),
                             "--engine", "openai", "--json")
    assert code == 0, err
    with_ref = [body for body in server.requests if body.get("endpoint") == "edits"]
    assert len(server.requests) == 2 and len(with_ref) == 1
    assert with_ref[0]["images"] == [_sha(folder / "refs" / "ada.png")] and "yellow coat" in with_ref[0]["prompt"]
    rows = json.loads(out)["artifacts"]
    provenances = [_meta(row)["provenance"] for row in rows]
    assert sorted(len(p["reference_images"]) for p in provenances) == [0, 1]


@pytest.mark.anyio
async def test_api_refine_through_openai(hosted, server, monkeypatch):
    from tests.api_helpers import api_client, wait_job

    monkeypatch.setenv("ECHO_OS_NO_MEMORY", "1")
    code, rows, err = _render(hosted, "a red kite", "--engine", "openai", "--size", "1024x1024")
    assert code == 0, err
    parent = rows[0]
    async with api_client(hosted) as (client, _app):
        bad = await client.post("/api/refine", json={"artifact_id": parent["id"], "engine": "openai",
                                                     "options": {"quality": "ultra"}})
        assert bad.status_code == 422 and "quality" in bad.text, bad.text
        sent = await client.post("/api/refine", json={"artifact_id": parent["id"], "prompt": "the kite at night",
                                                      "engine": "openai", "strength": 0.6,
                                                      "options": {"quality": "high"}})
        assert sent.status_code == 202, sent.text
        job = await wait_job(client, sent.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert server.requests[-1] == {"endpoint": "edits", "model": "gpt-image-1", "prompt": "the kite at night", "n": 1,
                                   "size": "1024x1024", "quality": "high", "images": [parent["id"]]}
    [child] = [p for p in hosted.artifacts_dir.rglob("meta.json") if json.loads(p.read_text())["parent_id"]]
    meta = json.loads(child.read_text())
    assert meta["parent_id"] == parent["id"] and meta["provenance"]["strength"] == 0.6
    assert meta["provenance"]["strength_sent"] is False
    from PIL import Image

    with Image.open(child.with_name("image.png")) as png:  # the A1111 chunk claims no strength either
        assert "Denoising strength" not in png.text["parameters"] and "Engine: openai" in png.text["parameters"]


def test_a_hostile_provider_answer_is_one_line_and_never_cached(hosted, server):
    """Red-team findings: an undecodable image was cached, so reruns failed until --no-cache; an image of
    another size (24x40, 12000x12000) was saved with the asked size in meta.json. An answer that is no
    image, or larger than 4096 a side, is retried and then one line naming the server; it is never cached,
    so the next run asks again. A smaller image is kept, recorded at the size that arrived."""
    for fault, said in (("undecodable", "not an image"), ("huge", "12000x12000")):
        server.faults.extend([fault] * 3)  # every attempt (max_attempts = 3)
        asked = len(server.requests)
        code, out, err = _render(hosted, "a harbour", "--engine", "openai", "--size", "1024x1024", "--seed", "1")
        errors = [line for line in err.splitlines() if line.startswith("Error")]
        assert code != 0 and len(errors) == 1 and said in errors[0] and server.base_url in errors[0], err
        assert "Traceback" not in err and len(server.requests) == asked + 3
    code, rows, err = _render(hosted, "a harbour", "--engine", "openai", "--size", "1024x1024", "--seed", "1")
    assert code == 0, err  # nothing bad was cached: asked again, and this answer is good
    assert _meta(rows[0])["provenance"]["cached"] is False
    server.faults.append("size:24x40")
    code, rows, err = _render(hosted, "a kite", "--engine", "openai", "--size", "1024x1024")
    assert code == 0, err
    meta = _meta(rows[0])
    assert (meta["width"], meta["height"]) == (24, 40)  # what arrived
    assert (meta["request"]["width"], meta["request"]["height"]) == (1024, 1024)  # what was asked
    with Image.open(rows[0]["image"]) as image:
        assert image.size == (24, 40)


# What each hostile body must be reported as: one line, naming the server and what was wrong.
_HOSTILE_SAID = {
    "data-missing": "no `data` field", "data-null": "`data` is null", "data-object": "`data` is an object",
    "data-string": "`data` is a string", "data-empty": "0 image(s) in `data`, 1 asked",
    "data-too-many": "2 image(s) in `data`, 1 asked", "item-string": "image 1 of `data` is a string",
    "item-empty": "image 1 has no b64_json", "item-url": "image 1 has a url but no b64_json",
    "b64-not-base64": "b64_json is not base64", "b64-number": "image 1 has no b64_json",
    "top-array": "a JSON array instead of an object", "top-string": "a JSON string instead",
    "top-null": "a JSON null instead", "top-number": "a JSON number instead", "html": "not JSON",
    "empty": "not JSON: 0 bytes", "deep": "nested too deep", "long-number": "a number too long",
    "not-utf8": "not JSON",
}


@pytest.mark.parametrize("shape", sorted(_HOSTILE_SAID))
def test_every_malformed_answer_is_one_line_naming_the_server_and_the_shape(hosted, server, shape):
    """Red-team item 8: a malformed answer surfaced as a Python exception's name (a JSON nested deeper than
    the parser recurses raised RecursionError out of the engine); the others named Python's own words
    ("list indices must be integers", "'data'"). Every shape is retried, then one line naming the server
    and what was wrong; nothing is cached, so the next request asks again."""
    from echo_os.engines.openai_images import ProviderError
    from tests.fake_openai import HOSTILE_BODIES

    assert set(_HOSTILE_SAID) == set(HOSTILE_BODIES)
    engine = create_engine(hosted, "openai", "test")
    engine._sleep = lambda seconds: None
    server.faults.extend([f"body:{shape}"] * 3)  # every attempt (max_attempts = 3)
    with pytest.raises(ProviderError) as raised:
        engine.render([RenderRequest(prompt="x", width=1024, height=1024, engine="openai")])
    message = str(raised.value)
    assert len(message.splitlines()) == 1 and server.base_url in message and _HOSTILE_SAID[shape] in message, message
    for python_words in ("Error", "subscriptable", "indices", "set_int_max_str_digits", "char 0"):
        assert python_words not in message, message
    assert len(server.requests) == 3 and not list((hosted.cache_dir / "openai").glob("*.json"))
    [result] = engine.render([RenderRequest(prompt="x", width=1024, height=1024, engine="openai")])
    assert len(result.images) == 1 and len(server.requests) == 4


def test_a_malformed_answer_through_the_cli_is_one_line(hosted, server):
    server.faults.extend(["body:deep"] * 3)
    code, out, err = _render(hosted, "x", "--engine", "openai", "--size", "1024x1024")
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert code == 1 and len(errors) == 1 and "nested too deep" in errors[0] and server.base_url in errors[0], err
    assert "Traceback" not in err and "RecursionError" not in err


@pytest.mark.parametrize("asked", ["inf", "1e12", "Mon, 01 Jan 3000 00:00:00 GMT"])
def test_a_hostile_retry_after_is_bounded(hosted, server, asked):
    """A server asking to wait for ever (Retry-After: inf raised OverflowError out of time.sleep; 1e12 or a
    date in the year 3000 hung the render) waits at most MAX_RETRY_AFTER_S (plus jitter) a retry."""
    from echo_os.engines.openai_answers import MAX_RETRY_AFTER_S

    engine = create_engine(hosted, "openai", "test")
    waits = []
    engine._sleep = waits.append
    server.faults.append(f"retry-after:{asked}")
    [result] = engine.render([RenderRequest(prompt="x", width=1024, height=1024, engine="openai")])
    assert len(result.images) == 1 and len(waits) == 1
    assert MAX_RETRY_AFTER_S <= waits[0] <= MAX_RETRY_AFTER_S + 1.0


def test_a_connection_dropped_halfway_through_the_body_saves_nothing_half(hosted, server):
    """An HTTP drop mid-download: the server promises the whole answer and closes halfway. Retried like a
    dropped connection; when it keeps happening, one line naming the server, nothing cached, no artifact."""
    server.faults.extend(["truncated"] * 3)
    code, out, err = _render(hosted, "x", "--engine", "openai", "--size", "1024x1024")
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert code == 1 and len(errors) == 1 and server.base_url in errors[0], err
    assert "Traceback" not in err and "RemoteProtocolError" not in err and len(server.requests) == 3
    assert not list((hosted.cache_dir / "openai").glob("*.json"))
    assert not list(hosted.artifacts_dir.rglob("image.png"))
    server.faults.append("truncated")  # once: the retry gets the whole answer
    code, rows, err = _render(hosted, "x", "--engine", "openai", "--size", "1024x1024")
    assert code == 0 and len(rows) == 1 and len(server.requests) == 5, err
