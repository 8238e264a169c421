"""Hostile text: control and bidi characters never reach the terminal raw; one prompt rule for CLI and API."""

from __future__ import annotations

import json

import pytest

from echo_os.artifacts.store import ArtifactStore
from echo_os.engines.draft import DraftEngine
from echo_os.render.requests import MAX_PROMPT_CHARS, RenderRequest
from tests.api_helpers import api_client

HOSTILE = "bell\x07 cr\roverwritten lf\nnext del\x7f rlo\u202eevil esc\x1b[2J"
RAW = ("\x07", "\r", "\x7f", "\u202e", "\x1b")


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def hostile_artifact(workspace):
    """An artifact whose meta.json prompt holds control characters (as an imported PNG or an older version
    could write): a draft render with its meta.json edited, then the catalog rebuilt from it."""
    store = ArtifactStore(workspace)
    request = RenderRequest(prompt="placeholder", width=64, height=64, seed=1, engine="draft")
    [result] = DraftEngine().render([request])
    [artifact] = store.save_result(result)
    meta = json.loads(artifact.meta_path.read_text(encoding="utf-8"))
    meta["prompt"] = meta["full_prompt"] = HOSTILE
    meta["project"] = "proj\u202e"
    artifact.meta_path.write_text(json.dumps(meta), encoding="utf-8")
    store.reindex()
    store.close()
    return artifact


def test_artifacts_list_escapes_control_and_bidi_characters(run_cli, workspace, hostile_artifact):
    code, out, err = run_cli("--home", str(workspace.home), "artifacts", "list")
    assert code == 0, err
    assert not any(char in out for char in RAW)
    assert out.count("\n") == 2  # a header and one row: the LF in the prompt did not start another line
    assert "bell\\x07 cr\\roverwritten lf\\nnext del\\x7f rlo\\u202eevil esc\\x1b" in out
    assert "proj\\u202e" in out


@pytest.mark.parametrize("command", [["artifacts", "show"], ["artifacts", "list", "--json"]])
def test_json_output_escapes_them_and_still_parses_to_the_exact_text(run_cli, workspace, hostile_artifact, command):
    args = [*command, hostile_artifact.id[:12]] if command[-1] == "show" else command
    code, out, err = run_cli("--home", str(workspace.home), *args)
    assert code == 0, err
    assert not any(char in out for char in RAW)
    data = json.loads(out)
    prompt = data["prompt"] if isinstance(data, dict) else data[0]["prompt"]
    assert prompt == HOSTILE


@pytest.mark.parametrize("prompt, needle", [("a" * (MAX_PROMPT_CHARS + 1), "at most 20000"),
                                            ("a lighthouse\x00 at dusk", "U+0000"),
                                            ("a bell\x07", "U+0007"),
                                            ("carriage\rreturn", "U+000D")])
def test_cli_refuses_overlong_prompts_and_control_characters(run_cli, workspace, prompt, needle):
    code, out, err = run_cli("--home", str(workspace.home), "render", prompt, "--engine", "draft", "--size", "64x64")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "prompt" in err and needle in err
    assert not list(workspace.artifacts_dir.glob("*/*/*/image.png"))


def test_tab_and_newline_stay_allowed():
    assert RenderRequest(prompt="two\tcolumns\nand lines").prompt == "two\tcolumns\nand lines"


@pytest.mark.anyio
@pytest.mark.parametrize("route, body, field", [
    ("/api/render", {"prompt": "nul\x00inside"}, "prompt"),
    ("/api/render", {"prompt": "x", "negative": "del\x7f"}, "negative"),
    ("/api/render", {"prompt": "a" * (MAX_PROMPT_CHARS + 1)}, "prompt"),
    ("/v1/images/generations", {"prompt": "nul\x00inside"}, "prompt"),
    ("/v1/images/generations", {"prompt": "a" * (MAX_PROMPT_CHARS + 1)}, "prompt"),
])
async def test_api_refuses_the_same_prompts_naming_the_field(workspace, route, body, field):
    async with api_client(workspace, start_worker=False) as (client, _):
        response = await client.post(route, json={"engine": "draft", "size": "64x64", **body}
                                     if route == "/api/render" else {"model": "sdxl", **body})
        assert response.status_code == 422, response.text
        locs = [error["loc"] for error in response.json()["detail"]]
        assert any(field in loc for loc in locs), locs
        assert (await client.get("/api/jobs")).json()["items"] == []
