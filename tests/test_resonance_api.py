"""Ratings over HTTP (POST /api/artifacts/{id}/rating) and the gallery's resonance parts."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from tests.api_helpers import api_client
from tests.helpers import run_cli

pytestmark = pytest.mark.anyio


def _draft(workspace, prompt: str) -> str:
    code, out, err = run_cli("--home", str(workspace.home), "render", prompt, "--engine", "draft", "--size",
                             "64x64", "--json")
    assert code == 0, err
    data = json.loads(out)
    return (data["artifacts"] if isinstance(data, dict) else data)[0]["id"]


async def test_rating_route_writes_meta_and_catalog(workspace, monkeypatch):
    monkeypatch.setenv("ECHO_OS_NO_MEMORY", "1")
    artifact = _draft(workspace, "a lighthouse at dusk")
    async with api_client(workspace, start_worker=False) as (client, _):
        response = await client.post(f"/api/artifacts/{artifact[:12]}/rating", json={"rating": 5, "note": "keep"})
        assert response.status_code == 200, response.text
        assert response.json()["id"] == artifact and response.json()["value"] == 5
        bad = await client.post(f"/api/artifacts/{artifact}/rating", json={"rating": 6})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "rating"]
        text = await client.post(f"/api/artifacts/{artifact}/rating", json={"rating": "5"})
        assert text.status_code == 422 and text.json()["detail"][0]["loc"] == ["body", "rating"]
        missing = await client.post("/api/artifacts/0123456789abcdef/rating", json={"rating": 3})
        assert missing.status_code == 404 and "0123456789abcdef" in missing.json()["detail"]
    with sqlite3.connect(workspace.catalog_path) as db:
        path, rating = db.execute("SELECT path, rating FROM artifacts WHERE id = ?", (artifact,)).fetchone()
    assert rating == 5
    meta = json.loads((workspace.artifacts_dir / path / "meta.json").read_text(encoding="utf-8"))
    assert meta["rating"]["value"] == 5 and meta["rating"]["note"] == "keep"


# ---- the gallery -----------------------------------------------------------------------------------------

from tests.test_gallery import CHROMIUM, _chromium, gallery_home  # noqa: E402,F401  (fixture reused)


def _mark_story(home):
    """Scores on the story's images, a story.json with a drift flag, and a motifs.json, as the commands write them."""
    from echo_os.artifacts.catalog import Catalog
    from echo_os.resonance.persist import save_scores, update_meta
    from echo_os.settings import Settings

    settings = Settings(home=home)
    with Catalog(settings.catalog_path) as catalog:
        rows = sorted((r for r in catalog.query(project="Lighthouse Keeper")), key=lambda r: r.scene)
        for row in rows:
            save_scores(catalog, settings.artifacts_dir, row.path, {"alignment": 24.5, "style": 0.8, "aesthetic": 5.5,
                                                                    "character_consistency": 0.66})
        update_meta(catalog, settings.artifacts_dir, rows[0].path, {"rating": {"value": 4, "note": None, "rated_at": "x"}})
    folder = settings.artifacts_dir / rows[0].path
    story = {"project": "Lighthouse Keeper", "created": "2026-12-01T00:00:00", "scenes": [],
             "resonance": {"note": None, "style_consistency": 0.6667, "style_pairs": 3, "thresholds": {"style": 0.75},
                           "flags": [{"scene": 2, "artifact": rows[1].id, "kind": "character", "character": "Mara",
                                      "value": 0.66, "threshold": 0.7, "against": {"scenes": [1]}}]}}
    (folder.parent / "story.json").write_text(json.dumps(story), encoding="utf-8")
    settings.memory_dir.mkdir(parents=True, exist_ok=True)
    (settings.memory_dir / "motifs.json").write_text(json.dumps({"clusterings": [{"by": "prompt", "motifs": [
        {"name": "sea-storm", "size": 2, "phrases": [["storm", 2]], "members": [rows[1].id, rows[2].id]}]}]}))
    return rows


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_gallery_shows_style_consistency_drift_and_motifs(gallery_home, tmp_path):
    rows = _mark_story(gallery_home)
    code, out, err = run_cli("--home", str(gallery_home), "gallery")
    assert code == 0, err
    dom = _chromium("--dump-dom", Path(out.strip()).as_uri(), profile=tmp_path / "profile")
    assert "style consistency 67% (3 scene pairs, threshold 0.75)" in dom
    assert "1 drift flag: scene 2 Mara 0.660 &lt; 0.7" in dom
    assert len(re.findall(r'<div class="card flagged"', dom)) == 1 and f'data-id="{rows[1].id}"' in dom
    assert "CLIP 24.5 · consistency 0.66 · aesthetic 5.5 · ★★★★" in dom
    assert '<section id="motifs">' in dom and "sea-storm · 2 artifacts by prompt: storm" in dom
    assert 'class="rate"' not in dom  # a page opened from disk has no server to rate through


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_served_gallery_has_rating_buttons(gallery_home, tmp_path):
    from tests.test_api_server import start_server

    _mark_story(gallery_home)
    server = start_server(gallery_home)
    try:
        dom = _chromium("--dump-dom", f"{server.url}/api/gallery", profile=tmp_path / "profile")
    finally:
        server.stop()
    rows = re.findall(r'<div class="rate" data-id="([0-9a-f]{64})">', dom)
    assert len(rows) == 5
    assert '<button type="button" title="rate 4" class="on">4</button>' in dom
