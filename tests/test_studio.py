"""The studio (`/` of `echo-os serve`): the page in headless Chromium against a real server with the tiny model,
signed in with ?token= as a browser must; its routes; and the live previews it shows (echo_os.render.preview).

One server and one browser for the module. ECHO_OS_STUDIO_SHOTS=<folder> saves screenshots of the main
views there (docs/ holds the ones README shows)."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import httpx
import pytest

from tests.scorer_plugin import fixed_alignment
from tests.test_api_server import free_port, read_events, start_server, tiny_home, wait_jobs
from tests.test_gallery import CHROMIUM, CHROMIUM_FLAGS
from tests.webdriver import CHROMEDRIVER, chromium_session

TOKEN = "studio-token-0123456789abcdef"
CTRL_ENTER = "\ue009\ue007\ue000"  # CONTROL down, ENTER, all keys up
SHOTS = os.environ.get("ECHO_OS_STUDIO_SHOTS")
needs_browser = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                   reason="chromium or chromedriver is not installed (apt-get install chromium "
                                          "chromium-driver)")


# ---- the preview itself: no server needed ---------------------------------------------------------------

def test_latent_preview_is_a_small_jpeg_and_throttled():
    import base64
    import io

    import torch
    from PIL import Image

    from echo_os.render.preview import PreviewThrottle, latent_preview

    latents = torch.randn(2, 4, 256, 192, generator=torch.Generator().manual_seed(0))
    url = latent_preview(latents)
    assert url.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert image.size == (144, 192) and image.mode == "RGB"  # at most 192 a side, aspect kept
    assert latent_preview(torch.zeros(1, 3, 8, 8)) is None  # not SDXL's 4 channels: no preview
    now = [0.0]
    throttle = PreviewThrottle(min_interval_s=0.5, clock=lambda: now[0])
    due = []
    for step in range(1, 11):
        due.append(throttle.due(step, 10))
        now[0] += 0.2
    assert due == [True, False, False, True, False, False, True, False, False, False]  # never the last step


def test_a_dropped_progress_step_hands_its_preview_on():
    """The worker process writes only the latest step of each flush; a preview on a dropped step moves on."""
    from echo_os.api.events import JobProgressed
    from echo_os.api.processes import _keep_previews

    steps = [JobProgressed(job_id="a", step=1, total_steps=3, images_done=0, images_total=1, preview="data:x"),
             JobProgressed(job_id="a", step=2, total_steps=3, images_done=0, images_total=1)]
    kept = _keep_previews(steps, {"a": 1})
    assert kept[1].preview == "data:x" and steps[1].preview is None


# ---- the server and the browser -------------------------------------------------------------------------

SCORER_PLUGIN = """from echo_os.engines.hookspecs import hookimpl
from tests.scorer_plugin import FixedScorer


@hookimpl
def register_scorers(register):
    register(FixedScorer())
"""


def install_scorer_plugin(folder: Path) -> Path:
    """The `fixed` scorer of tests/scorer_plugin.py as an installed package is: a module and a dist-info whose
    entry point the server finds through the real plugin loading (no CLIP here, so variations use it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "echo_os_studio_scorer.py").write_text(SCORER_PLUGIN)
    info = folder / "echo_os_studio_scorer-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-os-studio-scorer\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[echo_os.engines]\nstudio-scorer = echo_os_studio_scorer\n")
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sdxl_dir):
    plugin = install_scorer_plugin(tmp_path_factory.mktemp("studio-plugin"))
    running = start_server(tiny_home(tmp_path_factory, tiny_sdxl_dir, "studio"), "--model", "tiny", "--token", TOKEN,
                           pythonpath=(plugin,))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def api(server):
    with httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium or chromedriver is not installed")
    flags = (*CHROMIUM_FLAGS, "--window-size=1440,900")
    with chromium_session(CHROMIUM, flags, tmp_path_factory.mktemp("profile"), free_port()) as session:
        session.open(f"{server.url}/api/studio?token={TOKEN}")
        session.wait_for("return document.body.dataset.ready === 'true'")
        yield session


def shot(browser, name: str) -> None:
    if SHOTS:
        time.sleep(0.3)
        browser.screenshot(Path(SHOTS) / f"studio-{name}.png")


def fill(browser, values: dict[str, str]) -> None:
    for css, value in values.items():
        browser.run("const f = document.querySelector(arguments[0]); f.value = arguments[1]; "
                    "f.dispatchEvent(new Event('input')); f.dispatchEvent(new Event('change', {bubbles: true}))",
                    css, value)


def test_root_redirects_and_the_page_is_guarded(server):
    root = httpx.get(f"{server.url}/")
    assert root.status_code == 307 and root.headers["location"] == "/api/studio"
    assert httpx.get(f"{server.url}/api/studio").status_code == 401  # no token, no cookie
    signin = httpx.get(f"{server.url}/api/studio", params={"token": TOKEN})
    assert signin.status_code == 303 and signin.headers["location"] == "/api/studio"
    cookie = signin.headers["set-cookie"]
    assert TOKEN not in cookie and "HttpOnly" in cookie
    page = httpx.get(f"{server.url}/api/studio", headers={"Cookie": cookie.split(";")[0]})
    assert page.status_code == 200 and TOKEN not in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from another origin
    assert "default-src 'self'" in page.headers["content-security-policy"]
    script = httpx.get(f"{server.url}/api/studio/static/studio.js", headers={"Cookie": cookie.split(";")[0]})
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    for name in ("../__init__.py", "__init__.py", "nope.js"):
        answer = httpx.get(f"{server.url}/api/studio/static/{name}", headers={"Cookie": cookie.split(";")[0]})
        assert answer.status_code in (404, 422), name


def test_previews_arrive_on_the_job_stream(api):
    submitted = api.post("/api/render", json={"prompt": "a red lighthouse", "model": "tiny", "size": "64x64",
                                             "steps": 8, "seed": 3})
    assert submitted.status_code == 202, submitted.text
    events = read_events(api, submitted.json()["events_url"])
    previews = [data["preview"] for name, data in events if name == "progress" and data.get("preview")]
    assert previews and all(p.startswith("data:image/jpeg;base64,") for p in previews)
    assert events[-1][0] == "succeeded"


@needs_browser
def test_ctrl_enter_renders_with_live_previews(browser, api):
    fill(browser, {"#f-size": "64x64", "#f-steps": "12", "#f-seed": "5", "#f-count": "1"})
    browser.send_keys("#f-prompt", "a lighthouse keeper at dawn")
    browser.send_keys("#f-prompt", CTRL_ENTER)
    job = browser.wait_for("return [...document.querySelectorAll('#queue .job')].find(j => "
                           "j.querySelector('.what').textContent === 'a lighthouse keeper at dawn')?.dataset.id", timeout=10)
    browser.wait_for(f"return document.querySelector('.job[data-id=\"{job}\"]').dataset.status === 'succeeded'",
                     timeout=120)
    assert int(browser.run(f"return document.querySelector('.job[data-id=\"{job}\"]').dataset.previews || 0")) >= 1
    artifact = api.get(f"/api/jobs/{job}").json()["artifact_ids"][0]
    assert browser.run(f"return !!document.querySelector('#results .thumb.new[data-id=\"{artifact}\"] img')")
    assert browser.run(f"return document.querySelector('#results .thumb[data-id=\"{artifact}\"] img').naturalWidth") == 64
    # the settings are remembered for the next visit
    assert '"steps":"12"' in browser.run("return localStorage.getItem('echo-os-studio:settings')")
    shot(browser, "render")


@needs_browser
def test_a_422_shows_next_to_its_field(browser):
    fill(browser, {"#f-prompt": "a fox", "#f-steps": "0", "#f-size": "65x64"})
    browser.click("#render-button")
    browser.wait_for("return document.querySelector('[data-error=\"steps\"]').textContent")
    assert "greater than or equal to 1" in browser.run("return document.querySelector('[data-error=\"steps\"]').textContent")
    assert browser.run("return document.querySelector('#f-steps').classList.contains('invalid')")
    assert browser.run("return document.querySelector('[data-error=\"prompt\"]').textContent") == ""
    fill(browser, {"#f-steps": "12", "#f-size": "64x64"})


@needs_browser
def test_cancel_a_job_from_the_queue(browser):
    fill(browser, {"#f-prompt": "a very long render", "#f-size": "64x64", "#f-steps": "200"})
    browser.click("#render-button")
    job = browser.wait_for("return [...document.querySelectorAll('#queue .job')].find(j => "
                           "j.querySelector('.what').textContent === 'a very long render')?.dataset.id", timeout=10)
    row = f".job[data-id=\"{job}\"]"
    browser.wait_for(f"return document.querySelector('{row} .state').textContent.startsWith('step')", timeout=90)
    browser.click(f"{row} .cancel")
    browser.wait_for(f"return document.querySelector('{row}').dataset.status === 'cancelled'", timeout=60)
    fill(browser, {"#f-steps": "12"})


@needs_browser
def test_refine_from_the_lightbox(browser, api):
    parent = browser.wait_for("return document.querySelector('#results .thumb')?.dataset.id")
    browser.click(f"#results .thumb[data-id=\"{parent}\"]")
    browser.wait_for("return document.querySelector('#lightbox').open && document.querySelector('#lb-meta dd')")
    assert parent.startswith(browser.run("return document.querySelector('#lb-meta dd').textContent"))
    assert browser.run("return document.querySelector('#lb-cli').textContent").startswith("echo-os render '")
    shot(browser, "lightbox")
    # animate: this workspace has no video model, and the 422 says so next to the model field
    browser.run("document.querySelectorAll('#lightbox details').forEach(d => d.open = true)")
    fill(browser, {"#lb-animate-model": "no-such-video-model"})
    browser.click("#lb-animate")
    browser.wait_for("return document.querySelector('[data-error=\"lb-model\"]').textContent || "
                     "document.querySelector('[data-error=\"lb-animate\"]').textContent")
    assert "no-such-video-model" in browser.run("return document.querySelector('[data-error=\"lb-model\"]').textContent + "
                                                "document.querySelector('[data-error=\"lb-animate\"]').textContent")
    fill(browser, {"#lb-strength": "0.5", "#lb-refine-prompt": "a lighthouse keeper at dusk"})
    browser.click("#lb-refine")
    job = browser.wait_for("return document.querySelector('#lb-message').textContent.match(/job ([0-9a-f]{8})/)?.[1]")
    row = browser.wait_for(f"return [...document.querySelectorAll('#queue .job')].find(j => j.dataset.id.startsWith('{job}'))"
                           "?.dataset.id")
    browser.wait_for(f"return document.querySelector('.job[data-id=\"{row}\"]').dataset.status === 'succeeded'", timeout=120)
    child = api.get(f"/api/jobs/{row}").json()["artifact_ids"][0]
    meta = api.get(f"/api/artifacts/{child}").json()
    assert meta["parent_id"] == parent and meta["meta"]["strength"] == 0.5 and meta["prompt"] == "a lighthouse keeper at dusk"
    browser.wait_for(f"return !!document.querySelector('#results .thumb[data-id=\"{child}\"]')")
    browser.run("document.querySelector('#lightbox').close()")


@needs_browser
def test_search_finds_a_rendered_image(browser, api):
    wanted = api.get("/api/artifacts", params={"limit": 50}).json()["items"]
    target = next(a["id"] for a in wanted if a["prompt"] == "a lighthouse keeper at dawn")
    browser.click('.tab[data-view="search"]')
    fill(browser, {"#search-q": "lighthouse keeper dawn"})
    browser.run("document.querySelector('#search-form').requestSubmit()")
    browser.wait_for("return document.querySelectorAll('#search-results .thumb').length > 0", timeout=120)
    found = browser.run("return [...document.querySelectorAll('#search-results .thumb')].map(t => t.dataset.id)")
    assert target in found
    shot(browser, "search")
    browser.click(f"#search-results .thumb[data-id=\"{target}\"]")
    browser.wait_for("return document.querySelector('#lightbox').open")  # the same lightbox
    browser.run("document.querySelector('#lightbox').close()")


@needs_browser
def test_a_story_shows_its_cards_in_scene_order(browser, api):
    submitted = api.post("/api/batch", json={"project": "Harbour", "engine": "draft", "size": "64x64",
                                             "prompts": ["a harbour at dawn", "a storm at sea", "a rescue in the fog"]})
    assert submitted.status_code == 202, submitted.text
    assert wait_jobs(api, [submitted.json()["job_id"]])[submitted.json()["job_id"]]["status"] == "succeeded"
    browser.click('.tab[data-view="story"]')
    fill(browser, {"#story-project": "Harbour"})
    browser.run("document.querySelector('#story-form').requestSubmit()")
    browser.wait_for("return document.querySelectorAll('#story-cards .card').length === 3")
    scenes = browser.run("return [...document.querySelectorAll('#story-cards .card')].map(c => [c.dataset.scene, "
                         "c.querySelector('.desc').textContent])")
    assert [s[0] for s in scenes] == ["1", "2", "3"]
    assert [s[1] for s in scenes] == ["a harbour at dawn", "a storm at sea", "a rescue in the fog"]
    browser.wait_for("return [...document.querySelectorAll('#story-cards .card img')].every(i => i.naturalWidth === 64)")
    shot(browser, "story")
    fill(browser, {"#story-project": "No Such Project"})
    browser.run("document.querySelector('#story-form').requestSubmit()")
    browser.wait_for("return document.querySelector('[data-error=\"story-project\"]').textContent.includes('no rendered story')")


def test_edit_storyboard_changes_one_row_only():
    from echo_os.api.routes.studio import SceneEdit, edit_storyboard
    from echo_os.errors import UsageError

    text = 'scene,description,characters\n1,"a harbour, at dawn",mara\n2,a storm,tom\n'
    edited = edit_storyboard(text, 2, SceneEdit(description='a storm, "wild"', duration=4.5))
    assert edited == ('scene,description,characters,duration\n1,"a harbour, at dawn",mara,\n'
                      '2,"a storm, ""wild""",tom,4.5\n')
    assert edit_storyboard(edited, 1, SceneEdit(duration=2)).splitlines()[1] == '1,"a harbour, at dawn",mara,2'
    with pytest.raises(UsageError, match="no scene 9"):
        edit_storyboard(text, 9, SceneEdit(description="x"))


@needs_browser
def test_edit_one_scene_re_renders_only_that_scene(browser, api):
    from echo_os.settings import REPO_ROOT

    story = REPO_ROOT / "prompts" / "lighthouse-keeper"
    submitted = api.post("/api/batch", json={"project": "Keeper", "engine": "draft", "size": "64x64",
                                             "storyboard": (story / "story.csv").read_text(),
                                             "bible": (story / "STORY_BIBLE.md").read_text()})
    assert submitted.status_code == 202, submitted.text
    assert wait_jobs(api, [submitted.json()["job_id"]])[submitted.json()["job_id"]]["status"] == "succeeded"
    before = [s["artifacts"][0] for s in api.get("/api/studio/story/Keeper").json()["scenes"]]
    browser.click('.tab[data-view="story"]')
    fill(browser, {"#story-project": "Keeper"})
    browser.run("document.querySelector('#story-form').requestSubmit()")
    card = '#story-cards .card[data-scene="2"]'
    browser.wait_for(f"return !!document.querySelector('{card} .edit')")
    browser.run(f"document.querySelector('{card} .edit').open = true")
    fill(browser, {f"{card} [data-field=scene-2-duration]": "-1"})
    browser.click(f"{card} .save")
    browser.wait_for(f"return document.querySelector('{card} [data-error=scene-2-duration]').textContent"
                     ".includes('greater than 0')")
    fill(browser, {f"{card} [data-field=scene-2-duration]": "4",
                   f"{card} [data-field=scene-2-description]": "he climbs the stairs in a gale, lamp in hand"})
    browser.click(f"{card} .save")
    browser.wait_for("return document.querySelector('#story-cards .card[data-scene=\"2\"] .desc')?.textContent === "
                     "'he climbs the stairs in a gale, lamp in hand'", timeout=120)
    after = api.get("/api/studio/story/Keeper").json()["scenes"]
    assert [s["artifacts"][0] for s in after][0::2] == before[0::2] and after[3]["artifacts"] == [before[3]]
    assert after[1]["artifacts"][0] != before[1] and after[1]["duration"] == 4
    assert browser.run(f"return document.querySelector('{card}').textContent").count("4 s in the animatic") == 1
    # the edit was written back to the story's story.csv (here the workspace copy /api/batch keeps), the text
    # before kept beside it, and the card says so
    note = browser.run(f"return document.querySelector('{card} .written').textContent")
    written = Path(note.split(" updated (")[0])
    assert written.name == "story.csv" and "he climbs the stairs in a gale, lamp in hand" in written.read_text()
    backup = written.with_name("story.csv.bak")
    assert "he climbs the stairs in a gale" not in backup.read_text() and str(backup) in note


# ---- style swatches, variations (best of N), compare axes, the rating filter, drops, the animatic ----------

def wait_swatch(api, name: str) -> httpx.Response:
    """The style's swatch once rendered: 202 (the draft card) until the background render is on disk."""
    for _ in range(600):
        answer = api.get(f"/api/studio/styles/{name}/swatch")
        if answer.status_code != 202:
            return answer
        assert answer.headers["x-echo-swatch"] == "pending"
        time.sleep(0.1)
    raise AssertionError(f"the {name} swatch never rendered")


def test_style_swatches_are_rendered_samples_cached_by_content(server, api):
    from PIL import Image

    from echo_os.engines.draft import draw_card
    from echo_os.render.requests import build_request
    from echo_os.render.styles import BUILTIN_STYLES
    from echo_os.studio.swatches import SWATCH_SEED, SWATCH_SIZE, SWATCH_SUBJECT

    cache = server.home / "artifacts" / ".cache" / "swatches"
    artifacts_before = len(api.get("/api/artifacts", params={"limit": 500}).json()["items"])
    first = api.get("/api/studio/styles/cinematic/swatch")
    assert first.status_code == 202 and first.headers["x-echo-swatch"] == "pending"  # the draft card meanwhile
    rendered = wait_swatch(api, "cinematic")
    assert rendered.status_code == 200 and rendered.headers["content-type"] == "image/png"
    assert rendered.headers["x-echo-swatch"] == "rendered" and rendered.headers["x-echo-swatch-model"] == "tiny"
    assert rendered.headers["x-echo-swatch-engine"] not in ("draft", "")
    image = Image.open(io.BytesIO(rendered.content)).convert("RGB")
    assert image.size == (SWATCH_SIZE, SWATCH_SIZE)
    # a diffusion render of the tiny model, not the draft card of the same prompt
    style = next(s for s in BUILTIN_STYLES if s.name == "cinematic")
    prompt, negative = style.apply(SWATCH_SUBJECT, None)
    card = draw_card(build_request(prompt=prompt, negative_prompt=negative, model="draft", engine="draft",
                                   width=SWATCH_SIZE, height=SWATCH_SIZE, seed=SWATCH_SEED, steps=1), SWATCH_SEED)
    assert image.tobytes() != card.convert("RGB").tobytes() and image.tobytes() != first.content
    renders = {p.name for p in cache.glob("*.png")}
    assert len(renders) == 2  # the draft card shown meanwhile and the render
    again = api.get("/api/studio/styles/Cinematic/swatch")  # cached: any case, at once, not rendered again
    assert again.status_code == 200 and again.content == rendered.content
    assert {p.name for p in cache.glob("*.png")} == renders
    assert len(api.get("/api/artifacts", params={"limit": 500}).json()["items"]) == artifacts_before  # no artifact
    assert api.post("/api/styles", json={"name": "harbour-test", "prompt": "golden hour, warm light"}).status_code == 201
    started = time.perf_counter()
    assert api.get("/api/studio/styles/harbour-test/swatch").status_code == 202
    assert time.perf_counter() - started < 2  # never waits for the render (the first call imports the engines)
    warm = wait_swatch(api, "harbour-test").content
    assert api.post("/api/styles", json={"name": "harbour-test", "prompt": "moonlit night, cold blue fog",
                                         "replace": True}).status_code in (200, 201)
    cold = wait_swatch(api, "harbour-test").content
    assert cold != warm and len(list(cache.glob("*.png"))) == 6  # an edited style: a new key, a new swatch
    assert api.get("/api/studio/styles/no-such-style/swatch").status_code == 404


def test_a_swatch_is_the_labelled_draft_card_when_no_model_can_render(workspace):
    """No model in the workspace: `auto` can render nothing but the draft card, which is answered as the
    swatch at once (200), labelled draft."""
    import asyncio

    from tests.api_helpers import api_client

    async def go():
        async with api_client(workspace) as (client, _):
            answer = await client.get("/api/studio/styles/noir/swatch")
            assert answer.status_code == 200 and answer.headers["x-echo-swatch"] == "draft", answer.headers
            assert answer.headers["x-echo-swatch-engine"] == "draft" and answer.content.startswith(b"\x89PNG")
            assert answer.headers["x-echo-swatch-reason"]

    asyncio.run(go())


@needs_browser
def test_the_style_picker_shows_the_swatch(browser):
    browser.click('.tab[data-view="render"]')
    browser.run("location.reload()")
    browser.wait_for("return document.body.dataset.ready === 'true'")
    fill(browser, {"#f-style": "noir"})
    browser.wait_for("return document.querySelector('#style-swatch').dataset.state === 'rendered' && "
                     "document.querySelector('#style-swatch').complete && "
                     "document.querySelector('#style-swatch').naturalWidth === 128", timeout=120)
    assert browser.run("return document.querySelector('#style-swatch').dataset.url").endswith("/api/studio/styles/noir/swatch")
    assert "rendered by tiny" in browser.run("return document.querySelector('#style-swatch').title")
    shot(browser, "render")  # the render view with a style's swatch, the queue and the results
    fill(browser, {"#f-style": ""})
    assert browser.run("return document.querySelector('#style-swatch').hidden")


def test_options_name_the_schedulers_and_scorers(api):
    options = api.get("/api/studio/options").json()
    assert {"euler", "ddim", "dpmpp_2m"} <= set(options["schedulers"])
    assert options["scorers"] == ["fixed"]  # no CLIP in this workspace; the plugin's scorer


def first_artifact(api, prompt: str) -> str:
    """The oldest artifact with this prompt (later ones: variations, compare cells and grid sheets of it)."""
    return [a["id"] for a in api.get("/api/artifacts", params={"limit": 200}).json()["items"] if a["prompt"] == prompt][-1]


def open_lightbox(browser, artifact: str) -> None:
    browser.click('.tab[data-view="render"]')
    browser.wait_for(f"return !!document.querySelector('#results .thumb[data-id=\"{artifact}\"]')")
    browser.click(f"#results .thumb[data-id=\"{artifact}\"]")
    browser.wait_for("return document.querySelector('#lightbox').open && document.querySelector('#lb-meta dd')")
    browser.run("document.querySelectorAll('#lightbox details').forEach(d => d.open = true)")


def job_of_message(browser) -> str:
    short = browser.wait_for("return document.querySelector('#lb-message').textContent.match(/job ([0-9a-f]{8})/)?.[1]")
    return browser.wait_for(f"return [...document.querySelectorAll('#queue .job')].find(j => j.dataset.id.startsWith('{short}'))"
                            "?.dataset.id")


@needs_browser
def test_variations_score_the_candidates_and_keep_the_best(browser, api):
    parent = first_artifact(api, "a lighthouse keeper at dawn")
    open_lightbox(browser, parent)
    assert browser.run("return [...document.querySelectorAll('#lb-scorer option')].map(o => o.value)") == ["fixed"]
    fill(browser, {"#lb-variations": "0"})
    browser.click("#lb-vary")
    browser.wait_for("return document.querySelector('[data-error=\"lb-per_round\"]').textContent")
    fill(browser, {"#lb-variations": "2"})
    browser.click("#lb-vary")
    job = job_of_message(browser)
    browser.wait_for(f"return document.querySelector('.job[data-id=\"{job}\"]').dataset.status === 'succeeded'", timeout=180)
    browser.wait_for("return document.querySelector('#lb-vary-result').textContent.startsWith('best of 2')")
    record = api.get(browser.run(f"return document.querySelector('.job[data-id=\"{job}\"]').dataset.record")).json()
    [round_] = record["rounds"]
    scores = {c["id"]: fixed_alignment(c["id"]) for c in round_["candidates"]}  # what the plugin scorer gives
    assert len(scores) == 2 and round_["parent"] == parent and api.get(f"/api/jobs/{job}").json()["kind"] == "evolve"
    best = max(scores, key=scores.get)
    if scores[best] > fixed_alignment(parent):
        assert round_["best"] == best
        browser.wait_for(f"return document.querySelector('#results .thumb.best')?.dataset.id === '{best}'")
    else:
        assert round_["best"] == parent
        assert "kept it" in browser.run("return document.querySelector('#lb-vary-result').textContent")
    browser.run("document.querySelector('#lightbox').close()")


@needs_browser
def test_compare_axes_models_schedulers_and_engines(browser, api):
    parent = first_artifact(api, "a lighthouse keeper at dawn")
    open_lightbox(browser, parent)
    assert "tiny" in browser.run("return [...document.querySelectorAll('#model-list option')].map(o => o.value)")
    assert "ddim" in browser.run("return [...document.querySelectorAll('#scheduler-list option')].map(o => o.value)")
    fill(browser, {"#lb-cmp-schedulers": "euler, nope"})
    browser.click("#lb-compare")
    browser.wait_for("return document.querySelector('[data-error=\"lb-schedulers\"]').textContent")  # a 422, there
    fill(browser, {"#lb-cmp-models": "tiny", "#lb-cmp-schedulers": "euler, ddim", "#lb-cmp-engines": "cpu, draft"})
    browser.click("#lb-compare")
    browser.wait_for("return document.querySelector('#lb-message').textContent.startsWith('compare: 4 cells')")
    job = browser.wait_for("return [...document.querySelectorAll('#queue .job')].find(j => "
                           "j.querySelector('.what').textContent === 'compare: 4 cells')?.dataset.id")
    browser.wait_for(f"return document.querySelector('.job[data-id=\"{job}\"]').dataset.status === 'succeeded'", timeout=180)
    cells = [api.get(f"/api/artifacts/{a}").json() for a in api.get(f"/api/jobs/{job}").json()["artifact_ids"][:-1]]
    assert sorted((c["meta"]["engine"]["name"], c["meta"]["scheduler"]) for c in cells) == [
        ("cpu", "ddim"), ("cpu", "euler"), ("draft", "ddim"), ("draft", "euler")]
    browser.run("document.querySelector('#lightbox').close()")


@needs_browser
def test_the_rating_filter_is_applied_by_the_server(browser, api):
    rated = first_artifact(api, "a lighthouse keeper at dawn")
    answer = api.post(f"/api/artifacts/{rated}/rating", json={"value": 4})
    assert answer.status_code == 200, answer.text
    hits = api.get("/api/memory/search", params={"q": "lighthouse keeper", "k": 50, "min_rating": 4}).json()
    assert [h["id"] for h in hits] == [rated]
    assert len(api.get("/api/memory/search", params={"q": "lighthouse keeper", "k": 50}).json()) > 1
    assert api.get("/api/memory/search", params={"q": "lighthouse", "min_rating": 6}).status_code == 422
    browser.click('.tab[data-view="search"]')
    fill(browser, {"#search-q": "lighthouse keeper", "#filter-rating": "4"})
    browser.run("document.querySelector('#search-form').requestSubmit()")
    browser.wait_for("return document.querySelector('#status').textContent === '1 found'", timeout=60)
    assert browser.run("return [...document.querySelectorAll('#search-results .thumb')].map(t => t.dataset.id)") == [rated]
    # no words: the catalog list (GET /api/artifacts), filtered by rating on the server too
    assert [a["id"] for a in api.get("/api/artifacts", params={"min_rating": 4}).json()["items"]] == [rated]
    fill(browser, {"#search-q": ""})
    browser.run("document.querySelector('#status').textContent = ''")
    browser.run("document.querySelector('#search-form').requestSubmit()")
    browser.wait_for("return document.querySelector('#status').textContent === '1 found'", timeout=60)
    assert browser.run("return [...document.querySelectorAll('#search-results .thumb')].map(t => t.dataset.id)") == [rated]
    fill(browser, {"#filter-rating": ""})


DROP = """const [kind, value] = arguments;
const data = new DataTransfer();
if (kind === "artifact") data.setData("text/x-echo-artifact", value);
else { const blob = await (await fetch(value)).blob(); data.items.add(new File([blob], "dropped.png", { type: "image/png" })); }
document.body.dispatchEvent(new DragEvent("dragenter", { dataTransfer: data, bubbles: true }));
const hint = !document.querySelector("#drop-hint").hidden;
document.body.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
return hint;"""


def drop(browser, kind: str, value: str):
    """Drop a studio result (kind "artifact") or an image file fetched from `value` (kind "file") on the page, as
    a user's drag would: a DragEvent carrying a DataTransfer (WebDriver's execute waits for the promise)."""
    return browser.run(f"return (async () => {{ {DROP} }})()", kind, value)


@needs_browser
def test_drag_and_drop_a_result_to_refine_and_an_image_to_search(browser, api):
    artifact = first_artifact(api, "a lighthouse keeper at dawn")
    browser.click('.tab[data-view="render"]')
    drop(browser, "artifact", artifact)  # a studio result dropped: its lightbox, ready to refine
    browser.wait_for("return document.querySelector('#lightbox').open && document.activeElement?.id === 'lb-refine-prompt'")
    assert artifact.startswith(browser.run("return document.querySelector('#lb-meta dd').textContent"))
    browser.run("document.querySelector('#lightbox').close()")
    # an image file dropped: the search view, searching by that image (this workspace has no CLIP: the 422 says so)
    assert drop(browser, "file", f"/api/artifacts/{artifact}/image") is True  # the drop hint showed
    browser.wait_for("return !document.querySelector('#view-search').hidden")
    problem = browser.wait_for("return document.querySelector('#view-search [data-error=\"body\"]').textContent || "
                               "document.querySelector('#view-search [data-error=\"q\"]').textContent", timeout=60)
    assert "clip" in problem.lower(), problem
    assert browser.run("return document.querySelector('#drop-hint').hidden")


@needs_browser
def test_play_the_animatic(browser, api):
    browser.click('.tab[data-view="story"]')
    fill(browser, {"#story-project": "Harbour"})
    browser.run("document.querySelector('#story-form').requestSubmit()")
    browser.wait_for("return document.querySelectorAll('#story-cards .card').length === 3")
    browser.click("#animatic-play")
    browser.wait_for("return !document.querySelector('#animatic').hidden", timeout=180)
    src = browser.run("return document.querySelector('#animatic').src")
    video_id = src.rsplit("/", 2)[-2]
    assert src.endswith(f"/api/artifacts/{video_id}/video")
    video = api.get(f"/api/artifacts/{video_id}").json()
    assert video["kind"] == "video" and video["project"] == "Harbour"
    assert api.get(f"/api/artifacts/{video_id}/video").headers["content-type"] == "video/mp4"


def test_storyboards_outside_the_workspace_are_editable_only_in_registered_folders(tmp_path, run_cli):
    """A story rendered from a story.csv outside the workspace: its scenes can be edited (and the edit written
    back to that file, with a one-level backup) once its folder is registered ([studio] projects in
    echo-os.toml), and only then; a symlink out of a registered folder is
    followed and refused, and nothing but story.json's own paths is ever read."""
    import asyncio
    import shutil

    from echo_os.settings import REPO_ROOT, Settings
    from tests.api_helpers import api_client

    home = tmp_path / "ws"
    home.mkdir()
    stories, secret = tmp_path / "stories", tmp_path / "secret"
    shutil.copytree(REPO_ROOT / "prompts" / "lighthouse-keeper", stories / "keeper")
    shutil.copytree(REPO_ROOT / "prompts" / "lighthouse-keeper", secret)
    (stories / "link").symlink_to(secret, target_is_directory=True)
    for project, csv_path in (("Keeper", stories / "keeper" / "story.csv"), ("Linked", stories / "link" / "story.csv")):
        code, _, err = run_cli("--home", str(home), "batch", project, str(csv_path), "--engine", "draft", "--size", "64x64")
        assert code == 0, err
    edit = {"description": "he climbs the stairs in a gale"}

    async def go():
        async with api_client(Settings(home=home)) as (client, _):
            view = (await client.get("/api/studio/story/Keeper")).json()
            refused = await client.post("/api/studio/story/Keeper/scenes/2", json=edit)
            assert not view["editable"] and refused.status_code == 422 and "[studio] projects" in refused.text
            (home / "echo-os.toml").write_text('[studio]\nprojects = ["../stories"]\n')
            view = (await client.get("/api/studio/story/Keeper")).json()
            edited = await client.post("/api/studio/story/Keeper/scenes/2", json=edit)
            assert view["editable"] and edited.status_code == 200, edited.text
            body = edited.json()
            assert "he climbs the stairs in a gale" in body["storyboard"] and body["bible"]
            # written back to the user's file, atomically, the text before kept as story.csv.bak
            written = stories / "keeper" / "story.csv"
            assert edited.headers["x-echo-storyboard-written"] == str(written.resolve())
            assert edited.headers["x-echo-storyboard-backup"] == str(written.resolve()) + ".bak"
            assert written.read_text() == body["storyboard"]
            assert (stories / "keeper" / "story.csv.bak").read_text() == original
            again = await client.post("/api/studio/story/Keeper/scenes/3", json={"duration": 2.5})
            assert again.status_code == 200 and written.read_text() == again.json()["storyboard"]
            assert (stories / "keeper" / "story.csv.bak").read_text() == body["storyboard"]  # one level
            assert "he climbs the stairs in a gale" in written.read_text()
            missing = await client.post("/api/studio/story/Keeper/scenes/999", json=edit)
            assert missing.status_code == 404 and written.read_text() == again.json()["storyboard"]
            assert not [p for p in written.parent.iterdir() if p.name.endswith(".tmp")]
            linked = await client.post("/api/studio/story/Linked/scenes/2", json=edit)  # resolves into secret/
            assert not (await client.get("/api/studio/story/Linked")).json()["editable"] and linked.status_code == 422
            assert not (secret / "story.csv.bak").exists()
            (home / "echo-os.toml").write_text('[studio]\nprojects = "../stories"\n')
            broken = await client.get("/api/studio/story/Keeper")
            assert broken.status_code == 422 and "projects must be a list" in broken.text

    original = (REPO_ROOT / "prompts" / "lighthouse-keeper" / "story.csv").read_text()
    asyncio.run(go())
    assert (secret / "story.csv").read_text() == original  # refused: never written


def test_a_failed_swatch_render_is_remembered_and_the_draft_card_stands(workspace):
    """A render that fails on the background thread is not tried again on every request: the draft card is
    the swatch, with the error as its reason."""
    from echo_os.render.requests import build_request
    from echo_os.render.styles import BUILTIN_STYLES
    from echo_os.studio.swatches import SwatchPlan, SwatchRenderer, draw_draft

    renderer = SwatchRenderer()
    plan = SwatchPlan(BUILTIN_STYLES[0], "cpu", "gone", "test",
                      build_request(prompt="x", model="gone", engine="cpu", width=128, height=128))
    renderer.submit(workspace, plan)
    for _ in range(300):
        if plan.key in renderer.failed:
            break
        time.sleep(0.05)
    renderer.shutdown()
    assert "no model named 'gone'" in renderer.failed[plan.key]
    assert not plan.path(workspace).exists() and draw_draft(workspace, plan).is_file()
