"""The studio (`/` of `echo-os serve`): the page in headless Chromium against a real server with the tiny model,
signed in with ?token= as a browser must; its routes; and the live previews it shows (echo_os.render.preview).

One server and one browser for the module. ECHO_OS_STUDIO_SHOTS=<folder> saves screenshots of the main
views there (docs/ holds the ones README shows)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

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

@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sdxl_dir):
    running = start_server(tiny_home(tmp_path_factory, tiny_sdxl_dir, "studio"), "--model", "tiny", "--token", TOKEN)
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
