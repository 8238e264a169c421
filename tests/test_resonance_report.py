"""`echo-os resonance PROJECT` and GET /api/projects/{p}/resonance (issue 28): the report's figures come
from what is recorded (ratings, scores, versions, evolve runs); its page renders in headless Chromium."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.helpers import run_cli as run
from tests.scorer_plugin import registered_fixed_scorer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")


@pytest.fixture
def fixed_scorer():
    with registered_fixed_scorer() as scorer:
        yield scorer


@pytest.fixture
def project(workspace, tmp_path, fixed_scorer):
    """The example story on draft cards, two scenes scored, one rated, a version, an evolve run."""
    from echo_os.artifacts.store import open_catalog
    from echo_os.resonance.persist import save_scores

    folder = tmp_path / "story"
    shutil.copytree(REPO / "prompts" / "lighthouse-keeper", folder)
    home = str(workspace.home)
    assert run("--home", home, "batch", "Lighthouse Keeper", str(folder / "story.csv"), "--engine", "draft")[0] == 0
    story = max((workspace.artifacts_dir).glob("*/lighthouse-keeper/story.json"))
    ids = [s["artifacts"][0] for s in json.loads(story.read_text())["scenes"]]
    with open_catalog(workspace) as catalog:
        for artifact_id, alignment in zip(ids[:2], (24.0, 30.0)):
            save_scores(catalog, workspace.artifacts_dir, catalog.get(artifact_id).path,
                        {"alignment": alignment, "style": 0.8})
    assert run("--home", home, "rate", ids[0], "4")[0] == 0
    assert run("--home", home, "commit", "Lighthouse Keeper", "first cut", "--minutes", "45")[0] == 0
    code, out, err = run("--home", home, "evolve", ids[1], "--rounds", "2", "--per-round", "2", "--scorer", "fixed",
                         "--min-gain", "0", "--json")
    assert code == 0, err
    return {"home": home, "ids": ids, "evolve": json.loads(out), "settings": workspace}


def test_text_and_json_figures(project):
    code, out, err = run("--home", project["home"], "resonance", "Lighthouse Keeper", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["images"] == 4 + 4  # the four scenes and the evolve candidates
    assert report["ratings"] == {"1": 0, "2": 0, "3": 0, "4": 1, "5": 0}
    day = report["over_time"][0]
    assert day["means"]["alignment"] == 27.0 and day["means"]["style"] == 0.8 and day["mean_rating"] == 4.0
    assert [v["message"] for v in report["versions"]] == ["first cut"]
    assert report["versions"][0]["scores"]["alignment"] == 27.0
    run_ = project["evolve"]
    assert report["evolve"] == [{"run_id": run_["run_id"], "start": run_["start"], "rounds": 2,
                                 "start_score": run_["start_score"], "best_score": run_["best_score"],
                                 "gain": run_["gain"], "gain_pct": run_["gain_pct"],
                                 "round_gains": [r["gain"] for r in run_["rounds"]]}]
    assert report["style_consistency"] is None  # draft cards: the story was not scored
    assert Path(report["page"]).is_file()

    code, out, err = run("--home", project["home"], "resonance", "Lighthouse Keeper", "--no-html")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "Lighthouse Keeper: 8 images"
    assert any(line.startswith("style consistency: not measured") for line in lines)
    assert "ratings: 1 (1: 0, 2: 0, 3: 0, 4: 1, 5: 0)" in lines
    assert any(line.startswith(f"evolve {run_['run_id'][:8]}: ") for line in lines)

    code, out, err = run("--home", project["home"], "resonance", "Nobody")
    assert code == 2 and err.count("\n") == 1 and "has no images" in err


def test_style_consistency_against_the_target():
    from echo_os.reflect.report import ResonanceReport

    report = ResonanceReport(project="p", images=4, style_consistency=0.75, style_threshold=0.75, style_pairs=6)
    assert report.style_target_met is False
    assert "style consistency: 75% of 6 scene pairs at or above 0.75 (target 80%: not met)" in report.lines()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_page_renders_in_headless_chromium_and_the_gallery_links_it(project, tmp_path):
    home = project["home"]
    code, out, err = run("--home", home, "resonance", "Lighthouse Keeper")
    assert code == 0, err
    page = Path(out.splitlines()[-1].removeprefix("page: "))
    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000",
                             "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    charts = int(re.search(r'data-charts="(\d+)"', dom).group(1))
    assert charts == 4  # scores per day, per version, ratings, evolve gains
    assert dom.count("<svg class=\"chart\"") == charts and dom.count("<circle") >= 3 and dom.count("<rect class=\"bar\"") >= 7
    shot = tmp_path / "resonance.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=90, check=True)
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1200, 900)
        assert len(set(image.convert("RGB").getdata())) > 20  # drawn, not blank

    code, out, err = run("--home", home, "gallery")
    assert code == 0, err
    gallery = Path(out.strip())
    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
                             "--dump-dom", gallery.as_uri()], capture_output=True, text=True, timeout=90)
    assert f'href="{page.name}"' in result.stdout and 'class="versions"' in result.stdout
    assert 'data-version="1"' in result.stdout


def test_api_resonance_and_learn(project):
    from tests.api_helpers import api_client

    settings = project["settings"]

    async def go():
        async with api_client(settings) as (client, _):
            response = await client.get("/api/projects/Lighthouse Keeper/resonance")
            assert response.status_code == 200 and response.json()["images"] == 8
            page = await client.get("/api/projects/Lighthouse Keeper/resonance", params={"format": "html"})
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert "<svg" in page.text
            missing = await client.get("/api/projects/Nobody/resonance")
            assert missing.status_code == 404 and "has no images" in missing.json()["detail"]
            bad = await client.get("/api/projects/Lighthouse Keeper/resonance", params={"format": "pdf"})
            assert bad.status_code == 422

            learned = await client.post("/api/styles/learn", json={"ids": [project["ids"][1]], "name": "storm"})
            assert learned.status_code == 201, learned.text
            body = learned.json()
            assert body["name"] == "storm" and body["learned"]["sources"] == [project["ids"][1]]
            assert "reference" not in body and "ip-adapter" in body["note"]
            listed = (await client.get("/api/styles")).json()
            assert any(s["name"] == "storm" and s["learned"] for s in listed)
            for payload, field in (({"ids": []}, "ids"), ({"ids": ["xyz"]}, "ids"),
                                   ({"ids": [project["ids"][1]], "scale": 5}, "scale")):
                response = await client.post("/api/styles/learn", json=payload)
                assert response.status_code == 422 and field in json.dumps(response.json()), (payload, response.text)
            again = await client.post("/api/styles/learn", json={"ids": [project["ids"][1]], "name": "storm"})
            assert again.status_code == 422 and "already in styles.toml" in again.json()["detail"]

    asyncio.run(go())
