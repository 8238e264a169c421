"""Issue 12, the API half: origins and tokens, idempotent submissions, what /api/batch errors reveal,
non-finite numbers in bodies, runtime checks like the CLI's, a full disk, cancel during a VAE decode."""

from __future__ import annotations

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
