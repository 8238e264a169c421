"""Issue 11 (bugs and friction a new user met) and issue 12 item 7 (exit 134 at exit)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.helpers import REPO


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> Path:
    from tests.tiny_models import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip-first-use") / "clip")


def echo_os_process(home: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m echo_os --home HOME ...` in a fresh interpreter (thread and exit behaviour are per process)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    env.pop("ECHO_OS_NO_MEMORY", None)
    return subprocess.run([sys.executable, "-m", "echo_os", "--home", str(home), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def two_scene_story(home: Path, steps: int = 30) -> Path:
    """The example story cut to its first two scenes (and its bible's 30 steps to `steps`)."""
    folder = home / "story"
    folder.mkdir()
    bible = (REPO / "prompts/lighthouse-keeper/STORY_BIBLE.md").read_text(encoding="utf-8")
    assert "  steps: 30\n" in bible
    (folder / "STORY_BIBLE.md").write_text(bible.replace("  steps: 30\n", f"  steps: {steps}\n"), encoding="utf-8")
    lines = (REPO / "prompts/lighthouse-keeper/story.csv").read_text(encoding="utf-8").splitlines()
    (folder / "story.csv").write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    return folder / "story.csv"


# ---- 1, 5 and issue 12 item 7: no thread loads models beside the command --------------------------------

def test_resumed_story_with_a_clip_model_registered(tiny_workspace, tiny_clip_dir, run_cli) -> None:
    """Issue 11 item 1: the second run (nothing left to render) went straight to the continuity report's
    `from transformers import CLIPImageProcessor` while a preload thread imported sentence-transformers:
    ImportError every time. The first run is in-process; the resume needs a fresh interpreter."""
    with open(tiny_workspace.models_toml, "a", encoding="utf-8") as handle:
        handle.write(f'\n[models.tinyclip]\ntype = "clip"\npath = "{tiny_clip_dir.as_posix()}"\n')
    story = two_scene_story(tiny_workspace.home)
    args = ("batch", "Lighthouse Keeper", str(story), "--model", "tiny", "--size", "64x64", "--steps", "2")
    code, out, err = run_cli("--home", str(tiny_workspace.home), *args)
    assert code == 0, err
    again = echo_os_process(tiny_workspace.home, *args)
    assert again.returncode == 0, again.stderr
    assert "0 rendered, 2 already rendered" in again.stdout
    assert "continuity: keeper (Elias Marr): across scenes" in again.stdout and "[CLIP tinyclip]" in again.stdout


def test_render_starts_no_thread_and_leaves_embedding_to_memory(tiny_workspace, run_cli) -> None:
    """Issue 11 item 5: a render does not load the embedding models (nor start a thread to); the next
    memory command embeds what it saved."""
    seen: list[str] = []
    original = threading.Thread.start

    def spy(thread):
        seen.append(thread.name)
        return original(thread)

    threading.Thread.start = spy
    try:
        code, out, err = run_cli("--home", str(tiny_workspace.home), "render", "a lighthouse at dawn", "--model",
                                 "tiny", "--size", "64x64", "--steps", "2", "--seed", "5", "--json")
    finally:
        threading.Thread.start = original
    assert code == 0, err
    # (diffusers' loaders and tqdm start threads of their own; none of ours loads models beside the render)
    assert [name for name in seen if "memory" in name or "preload" in name] == []
    assert not (tiny_workspace.memory_dir / "minilm").exists()

    code, out, err = run_cli("--home", str(tiny_workspace.home), "memory", "search", "lighthouse dawn", "--json")
    assert code == 0, err
    import json

    hits = json.loads(out)
    assert len(hits) == 1 and hits[0]["prompt"] == "a lighthouse at dawn"


@pytest.mark.slow
def test_an_error_after_the_engine_line_exits_2_cleanly(tiny_workspace) -> None:
    """Issue 12 item 7: `--attention xformers` without xformers exited 2 or 134 at random (abort at exit
    while the memory preload thread was still loading). Now no thread is started: exit 2, one line."""
    pytest.importorskip("torch")
    try:
        import xformers  # noqa: F401 - only whether it imports
        pytest.skip("xformers is installed here")
    except ImportError:
        pass
    result = echo_os_process(tiny_workspace.home, "render", "x", "--model", "tiny", "--size", "64x64",
                             "--steps", "2", "--attention", "xformers")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "xformers" in errors[0], result.stderr
    assert "terminate called" not in result.stderr


# ---- 3, 4, 6: batch plans with the registry and the engine the real run uses -----------------------------

def test_dry_run_counts_tokens_with_a_registered_models_tokenizer(tiny_workspace, run_cli) -> None:
    """Issue 11 item 3: `--model tiny` (a models.toml name) estimated; the name now resolves to its folder."""
    story = two_scene_story(tiny_workspace.home)
    code, out, err = run_cli("--home", str(tiny_workspace.home), "batch", "L", str(story), "--model", "tiny",
                             "--dry-run")
    assert code == 0, err
    assert "estimated" not in out and "~" not in out.split("tokens:")[1].split("\n")[0]


def test_dry_run_checks_the_model(tiny_workspace, run_cli) -> None:
    """Issue 11 item 4: an unknown model planned happily (exit 0); the real run then failed."""
    story = two_scene_story(tiny_workspace.home)
    code, out, err = run_cli("--home", str(tiny_workspace.home), "batch", "L", str(story), "--model",
                             "nosuchmodel", "--dry-run")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "nosuchmodel" in err and "models.toml" in err
    code, _, err = run_cli("--home", str(tiny_workspace.home), "batch", "L", str(story), "--model", "tiny",
                           "--clip", "nosuchclip", "--dry-run")
    assert code == 2 and "nosuchclip" in err


def test_batch_applies_the_cpu_size_rule_unless_size_or_steps_is_given(tiny_workspace, run_cli, monkeypatch) -> None:
    """Issue 11 item 6: the example story planned 1216x832 at 30 steps on the CPU; `render` used 512x512."""
    monkeypatch.setenv("ECHO_OS_CPU_SIZE", "64x64")
    home = tiny_workspace.home
    story = two_scene_story(home, steps=3)
    code, out, err = run_cli("--home", str(home), "batch", "L", str(story), "--model", "tiny", "--dry-run")
    assert code == 0, err
    assert "render:    1 image, 64x64, 3 steps" in out
    assert "64x64 by default with engine cpu instead of the story's 1216x832" in err and err.startswith("engine: cpu")
    code, out, err = run_cli("--home", str(home), "batch", "L", str(story), "--model", "tiny", "--steps", "2",
                             "--dry-run")
    assert "render:    1 image, 1216x832, 2 steps" in out and "by default with engine cpu" not in err
    # a story already smaller than the CPU size keeps its own
    monkeypatch.setenv("ECHO_OS_CPU_SIZE", "2048x2048")
    code, out, err = run_cli("--home", str(home), "batch", "L", str(story), "--model", "tiny", "--dry-run")
    assert "render:    1 image, 1216x832, 3 steps" in out and "by default with engine cpu" not in err
    monkeypatch.setenv("ECHO_OS_CPU_SIZE", "64x64")
    # the real run renders at that size and says so on its engine line
    code, out, err = run_cli("--home", str(home), "batch", "L", str(story), "--model", "tiny")
    assert code == 0, err
    assert "64x64 by default with engine cpu" in err
    from PIL import Image

    images = sorted(home.glob("artifacts/*/l/*/image.png"))
    assert len(images) == 2 and all(Image.open(path).size == (64, 64) for path in images)


# ---- friction ---------------------------------------------------------------------------------------------

def draft(run_cli, home: Path, prompt: str, *args: str) -> dict:
    import json

    code, out, err = run_cli("--home", str(home), "render", prompt, "--engine", "draft", "--size", "256x256",
                             "--seed", "1", "--json", *args)
    assert code == 0, err
    return json.loads(out)[0]


def test_projects_are_matched_by_slug_and_keep_their_display_name(workspace, run_cli) -> None:
    import json

    home = workspace.home
    draft(run_cli, home, "fog over the harbor", "--project", "Fog Tests")
    draft(run_cli, home, "fog on the pier", "--project", "fog tests")
    for name in ("fog-tests", "Fog Tests", "FOG TESTS"):
        code, out, err = run_cli("--home", str(home), "artifacts", "list", "--project", name, "--json")
        assert code == 0, err
        assert sorted(row["project"] for row in json.loads(out)) == ["Fog Tests", "fog tests"], name
    code, out, _ = run_cli("--home", str(home), "gallery")
    text = Path(out.strip()).read_text(encoding="utf-8")
    projects = {item["project"] for item in json.loads(text.split('id="gallery-data">')[1].split("</script>")[0])}
    assert projects == {"fog tests"}  # one section, under the newest display name


def test_artifacts_show_says_the_id_is_not_hex(workspace, run_cli) -> None:
    code, out, err = run_cli("--home", str(workspace.home), "artifacts", "show", "zzzzzzzzzzzzzz")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "not hexadecimal" in err and "at least" not in err
    code, _, err = run_cli("--home", str(workspace.home), "artifacts", "show", "abc")
    assert code == 2 and "too short" in err


def test_without_clip_the_messages_name_the_models_toml_entry(workspace, run_cli, tmp_path) -> None:
    draft(run_cli, workspace.home, "a lighthouse")
    code, _, err = run_cli("--home", str(workspace.home), "memory", "dupes")
    assert code == 2 and err.count("\n") == 1
    assert "echo-os models pull clip-vit-l-14" in err and "openai/" not in err and "Image search" not in err
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "q.png")
    code, _, err = run_cli("--home", str(workspace.home), "memory", "search", "--image", str(tmp_path / "q.png"))
    assert code == 2 and "Image search needs a CLIP model: `echo-os models pull clip-vit-l-14`" in err
    code, out, _ = run_cli("--home", str(workspace.home), "models", "list")
    assert "clip-vit-l-14" in out  # the name suggested is one `models pull` knows


def test_gallery_refuses_an_unknown_project_and_never_overwrites_the_full_page(workspace, run_cli,
                                                                               monkeypatch) -> None:
    home = workspace.home
    draft(run_cli, home, "a lighthouse", "--project", "Harbor")
    code, out, _ = run_cli("--home", str(home), "gallery")
    index = Path(out.strip())
    full = index.read_text(encoding="utf-8")
    code, out, err = run_cli("--home", str(home), "gallery", "--project", "No Such")
    assert code == 2 and out == "" and err.count("\n") == 1 and "No Such" in err and "Harbor" in err
    assert index.read_text(encoding="utf-8") == full
    code, out, err = run_cli("--home", str(home), "gallery", "--project", "harbor")
    assert code == 0 and Path(out.strip()) == index.parent / "project-harbor.html"
    assert index.read_text(encoding="utf-8") == full

    import webbrowser

    monkeypatch.setattr(webbrowser, "_tryorder", [])  # a machine without a browser
    monkeypatch.setattr(webbrowser, "_browsers", {})
    code, out, err = run_cli("--home", str(home), "gallery", "--open")
    assert code == 0 and "no web browser found" in err and str(index) in err


# ---- /docs offline -------------------------------------------------------------------------------------------

@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_docs_are_served_from_the_package_with_no_external_host(workspace) -> None:
    """/docs loaded Swagger UI from a CDN: blank on an air-gapped machine (issue 11)."""
    import re

    from tests.api_helpers import api_client

    async with api_client(workspace, start_worker=False) as (client, _):
        page = await client.get("/docs")
        assert page.status_code == 200 and "SwaggerUIBundle" in page.text
        assert re.findall(r"https?://", page.text) == []
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
        assert sorted(assets) == ["/docs/assets/favicon-32x32.png", "/docs/assets/swagger-ui-bundle.js",
                                  "/docs/assets/swagger-ui.css"]
        for asset in assets:
            response = await client.get(asset)
            assert response.status_code == 200 and len(response.content) > 500, asset
        script = (await client.get("/docs/assets/swagger-ui-bundle.js")).text
        assert "SwaggerUIBundle" in script
        assert (await client.get("/docs/assets/..%2Fapp.py")).status_code == 404
        assert (await client.get("/redoc")).status_code == 404
        assert "openapi.json" in page.text


@pytest.mark.anyio
async def test_a_succeeded_jobs_progress_shows_every_step_done(workspace) -> None:
    """After success a job showed step 0 of 0 (issue 11)."""
    from echo_os.api import ApiOptions
    from tests.api_helpers import api_client, wait_job

    async with api_client(workspace, options=ApiOptions(batch_window_ms=0)) as (client, _):
        response = await client.post("/api/render", json={"prompt": "a lighthouse", "engine": "draft",
                                                          "size": "64x64", "steps": 3, "count": 2})
        job = await wait_job(client, response.json()["job_id"])
        assert job["status"] == "succeeded", job
        assert job["progress"] == {"step": 3, "total_steps": 3, "images_done": 2, "images_total": 2,
                                   "frames_done": 0, "frames_total": 0}  # frames: an animatic job's


def test_contact_sheet_captions_are_shortened_at_word_boundaries() -> None:
    """The last caption line was cut a character at a time to fit the "…": mid-word (issue 11)."""
    from PIL import Image, ImageDraw

    from echo_os.story.contact_sheet import _font, wrap_text

    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    font = _font(14)
    text = ("he watches a dark squall roll in over the headland, collar up against the spray, counting the "
            "seconds between the lightning and the thunder while the lamp turns above him")
    words = set(text.replace(",", "").split())
    for width in range(120, 330, 7):
        lines = wrap_text(draw, text, font, width, 3)
        assert len(lines) == 3 and lines[-1].endswith(" …"), width
        for line in lines:
            assert draw.textlength(line, font=font) <= width
            shown = line.removesuffix(" …").replace(",", "").split()
            assert all(word in words for word in shown), (width, line)  # whole words only


def test_batch_size_used_is_what_the_calls_rendered_not_the_cap(workspace) -> None:
    """story.json said `used: {cpu: 16}` for a 4-image run: the engine's cap, not a batch that ran (issue 11)."""
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.render.requests import build_request
    from echo_os.render.scheduler import render_requests

    store = ArtifactStore(workspace)
    try:
        request = build_request(prompt="a gull", engine="draft", width=64, height=64, seed=1, count=4)
        assert render_requests(workspace, [request], store=store).batch_sizes == {"draft": 4}
        again = request.model_copy(update={"seed": 100})
        assert render_requests(workspace, [again], store=store, batch_size=3).batch_sizes == {"draft": 3}
        resumed = render_requests(workspace, [request], store=store, resume=True)
        assert resumed.batch_sizes == {} and len(resumed.resumed) == 4  # nothing rendered, no batch
    finally:
        store.close()


def test_an_identical_render_shows_the_earlier_artifact_unless_again(workspace, run_cli) -> None:
    """Two identical renders got two ids (the PNG holds its timestamp) and `memory dupes` found them. The
    rule: the same request in the same project is not rendered again; --again renders anew (issue 11)."""
    import json

    home = workspace.home
    first = draft(run_cli, home, "a lighthouse", "--count", "2")
    code, out, err = run_cli("--home", str(home), "render", "a lighthouse", "--engine", "draft", "--size", "256x256",
                             "--seed", "1", "--count", "3", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert [a["already_rendered"] for a in shown] == [True, True, False] and shown[0]["id"] == first["id"]
    assert "2 of 3 already rendered" in err and "--again" in err
    code, out, err = run_cli("--home", str(home), "render", "a lighthouse", "--engine", "draft", "--size", "256x256",
                             "--seed", "1", "--again", "--json")
    assert code == 0 and json.loads(out)[0]["already_rendered"] is False and json.loads(out)[0]["id"] != first["id"]
    code, out, _ = run_cli("--home", str(home), "artifacts", "list", "--json")
    assert len(json.loads(out)) == 4
