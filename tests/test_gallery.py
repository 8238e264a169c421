"""`echo-os gallery`: the static page, its cached thumbnails, and (when chromium is installed) a headless
check that every image loads and a filter works, with a screenshot."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")


@pytest.fixture
def gallery_home(workspace) -> Path:
    """A story project of three scenes (two characters) and two plain renders, drawn by the draft engine."""
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.render.requests import StoryFields, build_request
    from echo_os.render.scheduler import render_requests

    scenes = [("the keeper climbs the stairs at dawn", "climb", ("Mara",)),
              ("storm over the sea, the lamp flickers", "storm", ("Mara", "Tom")),
              ("a ship in the fog is rescued", "rescue", ("Tom",))]
    requests = [build_request(prompt=p, engine="draft", width=256, height=256, seed=3, project="Lighthouse Keeper",
                              story=StoryFields(scene=n, slug=slug, characters=cast))
                for n, (p, slug, cast) in enumerate(scenes, start=1)]
    requests += [build_request(prompt=p, engine="draft", width=256, height=256, seed=1)
                 for p in ("a red sports car", "a cat <b>sleeping</b> on a sofa, html comment <!-- then <script> tag")]
    store = ArtifactStore(workspace)
    try:
        render_requests(workspace, requests, store=store)
    finally:
        store.close()
    return workspace.home


def test_gallery_page_is_self_contained_with_cached_thumbnails(gallery_home, run_cli) -> None:
    code, out, err = run_cli("--home", str(gallery_home), "gallery")
    assert code == 0, err
    page = Path(out.strip())
    assert page == gallery_home / "artifacts" / "gallery" / "index.html"
    assert "5 artifacts, 5 new thumbnails" in err
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # no CDN: works offline
    assert "<b>sleeping</b>" not in text  # prompts travel as JSON, never as markup
    # An HTML5 parser sees the data script end where the page means it to, and the app script after it
    # (a prompt's `<!-- <script>` used to swallow the rest of the page: issue 11).
    import html5lib

    document = html5lib.parse(text, namespaceHTMLElements=False)
    scripts = document.findall(".//script")
    assert [s.get("id") for s in scripts] == ["gallery-data", "resonance-data", None]
    data = json.loads(scripts[0].text)
    assert any("<!-- then <script> tag" in item["prompt"] for item in data) and len(data) == 5
    assert "function" in scripts[2].text  # the app, after the two data scripts
    for link in re.findall(r'"(?:thumb|image)": "([^"]+)"', text):
        assert (page.parent / link).is_file(), link
    thumbs = sorted((gallery_home / "artifacts" / ".cache" / "thumbs").glob("*.webp"))
    assert len(thumbs) == 5
    stamp = thumbs[0].stat().st_mtime_ns
    code, _, err = run_cli("--home", str(gallery_home), "gallery", "--project", "Lighthouse Keeper")
    assert code == 0 and "3 artifacts, 0 new thumbnails" in err  # made once
    assert thumbs[0].stat().st_mtime_ns == stamp


def _chromium(*args: str, profile: Path) -> str:
    result = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                             *args], capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium chromium-driver; "
                                            ".ci/run installs it)")
def test_gallery_in_headless_chromium(gallery_home, run_cli, tmp_path) -> None:
    code, out, _ = run_cli("--home", str(gallery_home), "gallery")
    page = Path(out.strip()).as_uri()

    dom = _chromium("--dump-dom", page, profile=tmp_path / "profile")
    body = re.search(r"<body([^>]*)>", dom).group(1)
    state = dict(re.findall(r'data-(\w+)="([^"]*)"', body))
    assert state == {**state, "ready": "true", "images": "5", "loaded": "5", "broken": "0", "visible": "5"}

    dom = _chromium("--dump-dom", page + "#character=Tom", profile=tmp_path / "profile")
    state = dict(re.findall(r'data-(\w+)="([^"]*)"', re.search(r"<body([^>]*)>", dom).group(1)))
    assert state["visible"] == "2" and state["broken"] == "0"
    hidden = re.findall(r'<div class="card hidden"', dom)
    assert len(hidden) == 3

    shot = tmp_path / "gallery.png"
    _chromium("--window-size=1280,900", f"--screenshot={shot}", page, profile=tmp_path / "profile")
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 900) and len(image.getcolors(1 << 20) or range(300)) > 200


@pytest.fixture
def animatic_home(tmp_path) -> Path:
    """A draft-rendered story of four scenes and its animatic."""
    from tests.helpers import run_cli
    from tests.test_animatic import FPS, PROJECT, SIZE, write_csv

    home = tmp_path / "ws"
    home.mkdir()
    csv_path = write_csv(home / "story")
    code, _, err = run_cli("--home", str(home), "batch", PROJECT, str(csv_path), "--engine", "draft",
                           "--size", f"{SIZE[0]}x{SIZE[1]}", "--clip", "none")
    assert code == 0, err
    code, _, err = run_cli("--home", str(home), "animatic", PROJECT, "--fps", str(FPS))
    assert code == 0, err
    return home


def test_gallery_lists_the_animatic_as_a_video(animatic_home, run_cli) -> None:
    import json

    code, out, err = run_cli("--home", str(animatic_home), "gallery")
    assert code == 0, err
    page = Path(out.strip())
    items = json.loads(re.search(r'<script type="application/json" id="gallery-data">(.*?)</script>',
                                 page.read_text(), re.S).group(1))
    videos = [item for item in items if item["video"]]
    assert len(items) == 5 and len(videos) == 1
    assert videos[0]["video"].endswith("/animatic.mp4") and (page.parent / videos[0]["video"]).is_file()
    assert videos[0]["image"].endswith("/poster.png") and (page.parent / videos[0]["thumb"]).is_file()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium chromium-driver; "
                                            ".ci/run installs it)")
def test_gallery_plays_the_animatic_in_headless_chromium(animatic_home, run_cli, tmp_path) -> None:
    code, out, _ = run_cli("--home", str(animatic_home), "gallery")
    dom = _chromium("--autoplay-policy=no-user-gesture-required", "--dump-dom", Path(out.strip()).as_uri(),
                    profile=tmp_path / "profile")
    state = dict(re.findall(r'data-(\w+)="([^"]*)"', re.search(r"<body([^>]*)>", dom).group(1)))
    # the <video> decoded a frame of the H.264 MP4: chromium can play what the animatic writes
    assert state == {**state, "ready": "true", "images": "5", "videos": "1", "playable": "1", "broken": "0"}
    assert re.search(r'<video[^>]*src="[^"]*animatic\.mp4"', dom)


def _page_items(page: Path) -> list[dict]:
    return json.loads(re.search(r'<script type="application/json" id="gallery-data">(.*?)</script>',
                                page.read_text(), re.S).group(1))


def test_filter_best_ranks_by_ratings_then_the_best_of_objective_on_its_own_page(gallery_home, run_cli) -> None:
    """Issue 24, bug 4: not a stub. Scores and ratings decide, the note says how, and index.html is kept."""
    from echo_os.artifacts.catalog import Catalog
    from echo_os.resonance.persist import save_scores

    code, out, _ = run_cli("--home", str(gallery_home), "gallery")
    full = Path(out.strip())
    with Catalog(gallery_home / "artifacts" / "catalog.db") as catalog:
        rows = catalog.query()
        low, high, rated = rows[0], rows[1], rows[4]
        save_scores(catalog, gallery_home / "artifacts", low.path, {"alignment": 10.0})
        save_scores(catalog, gallery_home / "artifacts", high.path, {"alignment": 40.0})
    assert run_cli("--home", str(gallery_home), "rate", rated.id, "4")[0] == 0

    code, out, err = run_cli("--home", str(gallery_home), "gallery", "--filter", "best", "--limit", "3")
    assert code == 0, err
    best = Path(out.strip())
    assert best != full and best.name == "index-best.html"
    assert [item["id"] for item in _page_items(best)] == [rated.id, high.id, low.id]
    assert "1 rated first" in err and "objective" in err and "no scores or ratings yet" not in err
    assert len(_page_items(full)) == 5  # the full page is not overwritten by the filtered one
