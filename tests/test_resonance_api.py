"""Ratings over HTTP (POST /api/artifacts/{id}/rating) and the gallery's resonance parts."""

from __future__ import annotations

import json
import sqlite3

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
