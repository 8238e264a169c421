"""Issue 12, the API half: origins and tokens, idempotent submissions, what /api/batch errors reveal,
non-finite numbers in bodies, runtime checks like the CLI's, a full disk, cancel during a VAE decode."""

from __future__ import annotations

import asyncio
import time

import pytest

from echo_os.api import ApiOptions
from echo_os.api.security import check_origin
from echo_os.errors import UsageError
from tests.api_helpers import api_client

pytestmark = pytest.mark.anyio

DRAFT = {"engine": "draft", "size": "64x64", "steps": 2}


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(autouse=True)
def no_memory(monkeypatch):
    """What these tests check does not involve embedding the images (which loads a model)."""
    monkeypatch.setenv("ECHO_OS_NO_MEMORY", "1")


async def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def app_waiting(client) -> dict[str, int]:
    """job id -> clients of the synchronous route waiting on it."""
    return client._transport.app.state.api.waiting._counts


# ---- 1. origins and tokens -----------------------------------------------------------------------------

@pytest.mark.parametrize("origin", ["*", "null", "", "  ", "localhost:5173", "ftp://example.com", "http://",
                                    "http://example.com/app", "http://example.com?x=1", "http://a@example.com",
                                    "file:///etc", "http://*.example.com", "http://example.com:99999",
                                    "https://example.com#x", "example.com"])
def test_serve_refuses_origins_that_are_not_absolute_http_origins(run_cli, workspace, origin):
    code, out, err = run_cli("--home", str(workspace.home), "serve", "--allow-origin", origin)
    assert code == 2, (origin, err)
    assert len(err.strip().splitlines()) == 1 and "--allow-origin" in err and "http://localhost:5173" in err, err
    assert "Traceback" not in err and not (workspace.home / "artifacts").exists()


@pytest.mark.parametrize("origin, normal", [("http://localhost:5173", "http://localhost:5173"),
                                            ("HTTPS://App.Example.com/", "https://app.example.com"),
                                            ("https://example.com:443", "https://example.com"),
                                            ("http://[::1]:8080", "http://[::1]:8080"),
                                            ("http://127.0.0.1:80", "http://127.0.0.1")])
def test_origins_are_kept_as_browsers_send_them(origin, normal):
    assert check_origin(origin) == normal


def test_create_app_refuses_a_wildcard_origin_too(workspace):
    from echo_os.api import create_app

    with pytest.raises(UsageError, match="wildcard or null"):
        create_app(workspace, start_worker=False, options=ApiOptions(allowed_origins=("*",)))


@pytest.mark.parametrize("token", ["", "   ", "short", "fifteen-chars-x"])
def test_a_short_or_blank_token_is_refused_beyond_loopback(run_cli, workspace, token, monkeypatch):
    monkeypatch.delenv("ECHO_OS_TOKEN", raising=False)
    code, out, err = run_cli("--home", str(workspace.home), "serve", "--host", "0.0.0.0", "--token", token)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "token" in err and "Traceback" not in err, err
    assert "16" in err or "without a token" in err


async def test_an_allowed_origin_gets_cors_and_a_wildcard_never(workspace):
    async with api_client(workspace, start_worker=False,
                          options=ApiOptions(allowed_origins=("HTTP://LOCALHOST:5173/",))) as (client, _):
        ok = await client.post("/api/render", json={"prompt": "x", **DRAFT},
                               headers={"Origin": "http://localhost:5173", "Sec-Fetch-Site": "same-site"})
        assert ok.status_code == 202 and ok.headers["access-control-allow-origin"] == "http://localhost:5173"
        other = await client.get("/api/artifacts", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        sandboxed = await client.post("/api/render", json={"prompt": "x", **DRAFT}, headers={"Origin": "null"})
        assert sandboxed.status_code == 403


# ---- 10. non-finite numbers --------------------------------------------------------------------------------

NON_FINITE = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"]


@pytest.mark.parametrize("number", NON_FINITE)
async def test_non_finite_numbers_are_422_naming_the_field(workspace, number):
    async with api_client(workspace, start_worker=False) as (client, _):
        for route, body, field in (
                ("/api/render", b'{"prompt": "x", "engine": "draft", "cfg": %s}', "cfg"),
                ("/api/render", b'{"prompt": "x", "engine": "draft", "steps": %s}', "steps"),
                ("/api/render", b'{"prompt": %s}', "prompt"),
                ("/api/batch", b'{"project": "P", "prompts": ["x"], "cfg": %s}', "cfg"),
                ("/api/batch", b'{"project": "P", "prompts": ["x"], "seed": %s}', "seed"),
                ("/v1/images/generations", b'{"prompt": "x", "cfg": %s}', "cfg"),
                ("/v1/images/generations", b'{"prompt": "x", "n": %s}', "n")):
            response = await client.post(route, content=body % number, headers={"content-type": "application/json"})
            assert response.status_code == 422, (route, number, response.text)
            locs = [error["loc"] for error in response.json()["detail"]]
            assert any(field in loc for loc in locs), (route, locs)
        assert (await client.get("/api/jobs")).json()["items"] == []


# ---- 3. what /api/batch errors reveal ---------------------------------------------------------------------

def _bible(reference: str) -> str:
    return f"---\ntitle: T\ncharacters:\n  keeper: {{name: K, description: d, seed: 1, reference: {reference}}}\n---\n"


async def test_batch_errors_do_not_tell_which_files_exist_outside_the_workspace(workspace, tmp_path):
    import os

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "real.png").write_bytes(b"\x89PNG not really")
    answers = {}
    async with api_client(workspace, start_worker=False) as (client, _):
        for name, reference in (("exists", "/etc/passwd"), ("exists-2", str(outside / "real.png")),
                                ("missing", "/etc/nope.png"), ("missing-2", str(outside / "nope.png")),
                                ("relative-out", "../../../../../../../../etc/passwd"),
                                ("missing-inside", "not-here.png")):
            response = await client.post("/api/batch", json={
                "project": "P", "engine": "draft", "bible": _bible(reference),
                "storyboard": "scene,description,characters\n1,a walk,keeper\n"})
            assert response.status_code == 422, response.text
            [error] = response.json()["detail"]
            assert error["loc"] == ["body", "bible"]
            answers[name] = error["msg"]
    assert len(set(answers.values())) == 1, answers
    text = next(iter(answers.values()))
    for secret in (str(workspace.home), str(tmp_path), ".jobs", str(os.getpid())):
        assert secret not in text, text


async def test_batch_errors_show_no_server_paths(workspace):
    import os

    async with api_client(workspace, start_worker=False) as (client, _):
        for body in ({"storyboard": "scene,description,characters\n1,a walk,bob\n", "bible": "---\ntitle: T\n---\n"},
                     {"storyboard": "scene,description\n1,\n"},
                     {"storyboard": "scene,description,characters\n1,a walk,keeper\n",
                      "bible": _bible("../../../x.png")}):
            response = await client.post("/api/batch", json={"project": "P", "engine": "draft", **body})
            assert response.status_code == 422, response.text
            for secret in (str(workspace.home), ".jobs", str(os.getpid())):
                assert secret not in response.text, response.text


# ---- 2. idempotent submissions ---------------------------------------------------------------------------

async def test_the_same_idempotency_key_and_body_answer_with_the_same_job(workspace):
    async with api_client(workspace, start_worker=False) as (client, _):
        body = {"prompt": "a lighthouse", **DRAFT}
        first = await client.post("/api/render", json=body, headers={"Idempotency-Key": "render-1"})
        assert first.status_code == 202 and "idempotent-replayed" not in first.headers
        again = await client.post("/api/render", content=b'{"size": "64x64", "steps": 2, "engine": "draft",'
                                                          b' "prompt": "a lighthouse"}',
                                  headers={"Idempotency-Key": "render-1", "content-type": "application/json"})
        assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
        assert again.json()["job_id"] == first.json()["job_id"] and again.json()["status"] == "queued"
        other = await client.post("/api/render", json={**body, "prompt": "a harbour"},
                                  headers={"Idempotency-Key": "render-1"})
        assert other.status_code == 409 and first.json()["job_id"] in other.json()["detail"]
        # the same key on another route is another request
        assert (await client.post("/api/batch", json={"project": "P", "prompts": ["x"], "engine": "draft"},
                                  headers={"Idempotency-Key": "render-1"})).status_code == 409
        # without a key, or with a new one, each POST is a job
        assert (await client.post("/api/render", json=body)).json()["job_id"] != first.json()["job_id"]
        assert (await client.post("/api/render", json=body, headers={"Idempotency-Key": "render-2"})).status_code == 202
        assert len((await client.get("/api/jobs")).json()["items"]) == 3
        for bad in ("", "x" * 256, "caf\u00e9", "two words"):
            response = await client.post("/api/render", json=body, headers={"Idempotency-Key": bad.encode()})
            assert response.status_code == 422 and "Idempotency-Key" in response.text, bad


async def test_idempotent_batches_plan_once(workspace):
    async with api_client(workspace, start_worker=False) as (client, _):
        body = {"project": "P", "prompts": ["one", "two"], "engine": "draft", "size": "64x64"}
        first = await client.post("/api/batch", json=body, headers={"Idempotency-Key": "story-1"})
        again = await client.post("/api/batch", json=body, headers={"Idempotency-Key": "story-1"})
        assert first.status_code == 202 and again.status_code == 200
        assert {k: v for k, v in again.json().items()} == {**first.json()}
        assert [p.name for p in (workspace.artifacts_dir / ".jobs").iterdir()] == [first.json()["job_id"]]
        assert (await client.post("/api/batch", json={**body, "prompts": ["three"]},
                                  headers={"Idempotency-Key": "story-1"})).status_code == 409


async def test_concurrent_requests_with_one_key_make_one_job(workspace):
    import asyncio

    async with api_client(workspace, start_worker=False) as (client, _):
        body = {"prompt": "race", **DRAFT}
        answers = await asyncio.gather(*(client.post("/api/render", json=body, headers={"Idempotency-Key": "k"})
                                         for _ in range(12)))
        assert sorted(a.status_code for a in answers) == [200] * 11 + [202]
        assert len({a.json()["job_id"] for a in answers}) == 1
        assert len((await client.get("/api/jobs")).json()["items"]) == 1


async def test_keys_are_durable_and_expire(workspace, monkeypatch):
    from echo_os.api import jobs as jobs_module

    body = {"prompt": "kept", **DRAFT}
    async with api_client(workspace, start_worker=False) as (client, _):
        job_id = (await client.post("/api/render", json=body, headers={"Idempotency-Key": "durable"})).json()["job_id"]
    async with api_client(workspace, start_worker=False) as (client, _):  # a restarted server
        again = await client.post("/api/render", json=body, headers={"Idempotency-Key": "durable"})
        assert again.status_code == 200 and again.json()["job_id"] == job_id
        monkeypatch.setattr(jobs_module, "IDEMPOTENCY_TTL_S", 0)
        later = await client.post("/api/render", json=body, headers={"Idempotency-Key": "durable"})
        assert later.status_code == 202 and later.json()["job_id"] != job_id


async def test_openai_route_retries_wait_on_the_first_tries_job(workspace):
    from tests.api_helpers import FakeEngine

    engine = FakeEngine(hold=True)
    body = {"prompt": "slow lighthouse", "size": "64x64", "engine": "draft", "steps": 2}
    async with api_client(workspace, make_engine=engine, options=ApiOptions(batch_window_ms=0)) as (client, _):
        first = asyncio.ensure_future(client.post("/v1/images/generations", json=body,
                                                  headers={"x-stainless-retry-count": "0"}))
        await asyncio.to_thread(engine.step_started.wait, 30)
        retry = asyncio.ensure_future(client.post("/v1/images/generations", json=body,
                                                  headers={"x-stainless-retry-count": "1"}))
        await wait_until(lambda: len(app_waiting(client)) == 1 and sum(app_waiting(client).values()) == 2)
        engine.release.set()
        one, two = await first, await retry
        assert one.status_code == two.status_code == 200, (one.text, two.text)
        assert one.headers["x-echo-job-id"] == two.headers["x-echo-job-id"]
        assert one.headers["x-echo-artifact-ids"] == two.headers["x-echo-artifact-ids"]
        # the retry is a replay, and says so as every other route does (red-team finding: it did not)
        assert "idempotent-replayed" not in one.headers and two.headers["idempotent-replayed"] == "true"
        # a deliberate second request (not a retry) is a new render
        third = await client.post("/v1/images/generations", json=body, headers={"x-stainless-retry-count": "0"})
        assert third.headers["x-echo-job-id"] != one.headers["x-echo-job-id"]
        assert len(engine.calls) == 2 and len((await client.get("/api/jobs")).json()["items"]) == 2
        # with the client's own key, a different body is a 409 that the client must not retry
        keyed = {"Idempotency-Key": "img-1"}
        first_keyed = await client.post("/v1/images/generations", json=body, headers=keyed)
        assert first_keyed.status_code == 200 and "idempotent-replayed" not in first_keyed.headers
        replayed = await client.post("/v1/images/generations", json=body, headers=keyed)
        assert replayed.status_code == 200 and replayed.headers["idempotent-replayed"] == "true"
        assert replayed.headers["x-echo-job-id"] == first_keyed.headers["x-echo-job-id"]
        conflict = await client.post("/v1/images/generations", json={**body, "prompt": "other"}, headers=keyed)
        assert conflict.status_code == 409 and conflict.headers["x-should-retry"] == "false"
        assert conflict.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.slow  # 30-90 s on 2 shared cores: the tiny pipeline loads once, then ~30 s of client tries
def test_the_openai_clients_retries_make_one_job_on_a_real_server(tmp_path_factory, tiny_sdxl_dir, monkeypatch):
    """The official client with a short timeout against uvicorn: its retries wait on the first try's job
    (one job, one artifact), and a client that gives up has its job cancelled before anything is saved.
    A long job queued first keeps the client's job waiting, whatever this machine's speed."""
    import httpx
    import openai

    from tests.test_api_server import start_server, tiny_home

    home = tiny_home(tmp_path_factory, tiny_sdxl_dir, "retries")
    server = start_server(home, "--model", "tiny")  # the default grace, 10 s: longer than the client's backoff
    sent: list[str] = []
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            def block() -> str:
                job = http.post("/api/render", json={"prompt": "blocker", "model": "tiny", "size": "64x64",
                                                     "steps": 200}).json()["job_id"]
                deadline = time.monotonic() + 240
                while http.get(f"/api/jobs/{job}").json()["progress"]["step"] < 1:  # loaded and rendering
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                return job

            def on_request(request: httpx.Request) -> None:
                sent.append(request.headers.get("x-stainless-retry-count", "?"))
                if len(sent) == 2:  # the first retry is on its way: let the queue move
                    assert http.post(f"/api/jobs/{blocker}/cancel").status_code == 202

            blocker = block()
            # 7 tries of 2 s, 0.5 to 8 s apart (never more than the grace): the job has ~30 s to finish
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="loopback", timeout=2.0, max_retries=6,
                                   http_client=httpx.Client(event_hooks={"request": [on_request]}))
            try:
                raw = client.images.with_raw_response.generate(model="tiny", prompt="a lighthouse in fog",
                                                               size="64x64", extra_body={"steps": 2, "seed": 5})
            except openai.APITimeoutError:
                raise AssertionError(f"tries {sent}; jobs {http.get('/api/jobs').json()}") from None
            assert len(raw.parse().data) == 1 and raw.retries_taken >= 1, sent
            assert sent[:2] == ["0", "1"]
            mine = [job for job in http.get("/api/jobs").json()["items"] if job["id"] != blocker]
            assert len(mine) == 1 and mine[0]["status"] == "succeeded" and len(mine[0]["artifact_ids"]) == 1
            assert len(http.get("/api/artifacts").json()["items"]) == 1
            assert raw.headers["x-echo-artifact-ids"] == mine[0]["artifact_ids"][0]

            # a client that gives up: its job is cancelled after the grace period, nothing saved
            blocker = block()
            gone = openai.OpenAI(base_url=f"{server.url}/v1", api_key="loopback", timeout=1.0, max_retries=0)
            with pytest.raises(openai.APITimeoutError):
                gone.images.generate(model="tiny", prompt="nobody waits", size="64x64", extra_body={"steps": 2})
            [abandoned] = [job for job in http.get("/api/jobs").json()["items"]
                           if job["request"] and job["request"]["prompt"] == "nobody waits"]
            deadline = time.monotonic() + 60
            while http.get(f"/api/jobs/{abandoned['id']}").json()["status"] != "cancelled":
                assert time.monotonic() < deadline, http.get(f"/api/jobs/{abandoned['id']}").json()
                time.sleep(0.1)
            http.post(f"/api/jobs/{blocker}/cancel")
            assert len(http.get("/api/artifacts").json()["items"]) == 1
    finally:
        server.stop()


# ---- 13. cancel during the VAE decode --------------------------------------------------------------------

TINY_CPU = dict(model="tiny", width=64, height=64, steps=2, cfg=5.0, device="cpu")


def _count_decodes(monkeypatch, pipe, on_first=None) -> list[int]:
    calls: list[int] = []
    decode = pipe.vae.decode

    def counting(latents, *args, **kwargs):
        calls.append(latents.shape[0])
        if on_first is not None and len(calls) == 1:
            on_first()
        return decode(latents, *args, **kwargs)

    monkeypatch.setattr(pipe.vae, "decode", counting)
    return calls


def test_a_cancel_during_the_vae_decode_stops_it(tiny_workspace, monkeypatch):
    import threading

    from echo_os.engines.sdxl import SDXLEngine
    from echo_os.errors import CancelledError
    from echo_os.render.requests import RenderRequest

    engine = SDXLEngine(tiny_workspace)
    request = RenderRequest(prompt="rain", seed=1, count=3, **TINY_CPU)
    pipe = engine.loaded(request).pipe
    cancel = threading.Event()
    calls = _count_decodes(monkeypatch, pipe, on_first=cancel.set)
    with pytest.raises(CancelledError, match="VAE decode"):
        engine.render([request], cancel=cancel)
    assert calls == [1]  # one image decoded, then the flag was seen; the other two never were
    calls.clear()
    results = engine.render([request], cancel=threading.Event())  # not cancelled: every image, one at a time
    assert calls == [1, 1, 1] and len(results[0].images) == 3


async def test_a_job_cancelled_during_the_decode_saves_nothing(tiny_workspace, monkeypatch):
    from echo_os.engines.sdxl import SDXLEngine
    from echo_os.render.requests import RenderRequest
    from tests.api_helpers import wait_job

    pipe = SDXLEngine(tiny_workspace).loaded(RenderRequest(prompt="x", **TINY_CPU)).pipe
    async with api_client(tiny_workspace, options=ApiOptions(batch_window_ms=0)) as (client, app):
        state = app.state.api
        job_ids: list[str] = []

        def cancel_the_job() -> None:  # what POST /api/jobs/{id}/cancel does, from the worker's thread
            state.jobs.request_cancel(job_ids[0])
            state.worker.cancel(job_ids[0])

        calls = _count_decodes(monkeypatch, pipe, on_first=cancel_the_job)
        response = await client.post("/api/render", json={"prompt": "rain", "model": "tiny", "engine": "cpu",
                                                          "size": "64x64", "steps": 2, "cfg": 5.0, "count": 3,
                                                          "device": "cpu"})
        job_ids.append(response.json()["job_id"])
        job = await wait_job(client, job_ids[0], timeout=240)
        assert job["status"] == "cancelled" and job["artifact_ids"] == [] and calls == [1]
    assert not list(tiny_workspace.artifacts_dir.glob("*/*/*/image.png"))


# ---- 13. checked like the CLI; a full disk ---------------------------------------------------------------

async def test_runtime_options_this_machine_lacks_are_422(tiny_workspace):
    import importlib.util

    import torch

    cases = []
    if not torch.cuda.is_available():
        cases.append(({"device": "cuda"}, "device"))
    if importlib.util.find_spec("xformers") is None:
        cases.append(({"attention": "xformers"}, "attention"))
    if not cases:
        pytest.skip("this machine has a GPU and xformers")
    async with api_client(tiny_workspace, start_worker=False) as (client, _):
        for patch, field in cases:
            for engine in ("auto", "sdxl", "cpu"):
                response = await client.post("/api/render", json={"prompt": "x", "model": "tiny", "size": "64x64",
                                                                  "engine": engine, **patch})
                assert response.status_code == 422, (patch, engine, response.text)
                [error] = response.json()["detail"]
                assert error["loc"] == ["body", field] and "--" not in error["msg"], error
        assert (await client.get("/api/jobs")).json()["items"] == []
        # the draft engine renders no pixels: any device is fine for it
        assert (await client.post("/api/render", json={"prompt": "x", "device": "cuda", "attention": "xformers",
                                                       **DRAFT})).status_code == 202


def _fill_the_disk(monkeypatch) -> None:
    import errno

    from echo_os.artifacts import store

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(store, "_write_durably", full)


async def test_a_full_disk_fails_the_job_at_once_and_the_openai_route_answers_507(workspace, monkeypatch):
    from tests.api_helpers import FakeEngine, wait_job

    _fill_the_disk(monkeypatch)
    async with api_client(workspace, make_engine=FakeEngine(), options=ApiOptions(batch_window_ms=0)) as (client, _):
        job_id = (await client.post("/api/render", json={"prompt": "x", **DRAFT})).json()["job_id"]
        job = await wait_job(client, job_id)
        assert job["status"] == "failed" and job["attempts"] == 1, job  # not tried again: it would fail again
        assert job["error"].startswith("the disk is full") and "\n" not in job["error"]
        response = await client.post("/v1/images/generations", json={"prompt": "y", "size": "64x64",
                                                                     "engine": "draft"})
        assert response.status_code == 507 and response.headers["x-should-retry"] == "false"
        assert response.json()["error"]["message"].startswith("the disk is full")
    assert not list(workspace.artifacts_dir.glob("*/*/*/image.png"))
    assert not any((workspace.artifacts_dir / ".tmp").iterdir())


async def test_a_full_disk_while_storing_a_submission_is_507(workspace, monkeypatch):
    import errno
    import sqlite3

    from echo_os.api.jobs import JobStore

    async with api_client(workspace, start_worker=False) as (client, _):
        def sqlite_full(self, submissions):
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(JobStore, "admit", sqlite_full)
        response = await client.post("/api/render", json={"prompt": "x", **DRAFT})
        assert response.status_code == 507 and response.json() == {"detail": response.json()["detail"]}
        assert response.json()["detail"].startswith("the disk is full") and "\n" not in response.json()["detail"]
        monkeypatch.undo()

        def os_full(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        from pathlib import Path
        monkeypatch.setattr(Path, "write_text", os_full)
        response = await client.post("/api/batch", json={"project": "P", "prompts": ["x"], "engine": "draft"})
        assert response.status_code == 507 and response.json()["detail"].startswith("the disk is full")


async def test_a_style_post_takes_an_idempotency_key(workspace):
    """Red-team finding: POST /api/styles ignored Idempotency-Key (a repeat was a 422 "already exists").
    The first answer is kept with the key: a repeat gets it (200, Idempotent-Replayed), another body 409."""
    async with api_client(workspace, start_worker=False) as (client, _):
        body = {"name": "ink", "prompt": "{prompt}, ink drawing"}
        first = await client.post("/api/styles", json=body, headers={"Idempotency-Key": "style-1"})
        assert first.status_code == 201 and "idempotent-replayed" not in first.headers, first.text
        again = await client.post("/api/styles", json=body, headers={"Idempotency-Key": "style-1"})
        assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true", again.text
        assert again.json() == first.json()
        other = await client.post("/api/styles", json={**body, "prompt": "{prompt}, oil"},
                                  headers={"Idempotency-Key": "style-1"})
        assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"], other.text
        styles = {style["name"]: style["prompt"] for style in (await client.get("/api/styles")).json()}
        assert styles["ink"] == "{prompt}, ink drawing"  # the 409 changed nothing
        # without a key, a repeat is refused as before (the style exists)
        assert (await client.post("/api/styles", json=body)).status_code == 422


async def test_compare_and_refine_take_an_idempotency_key_too(workspace):
    """Every POST that creates work (issue 12): /api/compare and /api/refine, added later, included."""
    async with api_client(workspace, start_worker=False) as (client, _):
        body = {"prompt": "a harbour", "engines": ["draft"], "size": "64x64", "seeds": [1, 2], "steps": [2]}
        first = await client.post("/api/compare", json=body, headers={"Idempotency-Key": "compare-1"})
        assert first.status_code == 202 and first.json()["cells"] == 2
        again = await client.post("/api/compare", json=body, headers={"Idempotency-Key": "compare-1"})
        assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
        assert again.json()["job_id"] == first.json()["job_id"] and again.json()["cells"] == 2
        other = await client.post("/api/compare", json={**body, "seeds": [3, 4]},
                                  headers={"Idempotency-Key": "compare-1"})
        assert other.status_code == 409
        refine = await client.post("/api/refine", json={"artifact_id": "ab" * 32, "strength": 0.5},
                                   headers={"Idempotency-Key": "compare-1"})
        assert refine.status_code == 409  # the key is taken by another request (another route and body)
        assert len((await client.get("/api/jobs")).json()["items"]) == 1
