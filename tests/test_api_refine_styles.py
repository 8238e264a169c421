"""POST /api/refine, GET/POST /api/styles and a named style on /api/render, in-process with the real worker."""

from __future__ import annotations

import pytest

from tests.api_helpers import api_client, wait_job

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_styles_routes_and_a_named_style_on_render(workspace):
    async with api_client(workspace) as (client, _):
        styles = (await client.get("/api/styles")).json()
        assert {"cinematic", "noir"} <= {s["name"] for s in styles}
        created = await client.post("/api/styles", json={"name": "Dusk", "prompt": "{prompt} at dusk",
                                                        "negative": "noon"})
        assert created.status_code == 201 and created.json()["builtin"] is False
        again = await client.post("/api/styles", json={"name": "dusk", "prompt": "x"})
        assert again.status_code == 422 and again.json()["detail"][0]["loc"] == ["body", "name"]
        unknown = await client.post("/api/render", json={"prompt": "a harbour", "style": "nosuch", "engine": "draft"})
        assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "style"]
        submitted = await client.post("/api/render", json={"prompt": "a harbour", "style": "dusk", "engine": "draft",
                                                          "size": "64x64"})
        assert submitted.status_code == 202
        job = await wait_job(client, submitted.json()["job_id"], timeout=300)
        assert job["status"] == "succeeded", job
        [item] = (await client.get("/api/artifacts")).json()["items"]
        meta = (await client.get(f"/api/artifacts/{item['id']}")).json()["meta"]
    assert meta["style_name"] == "Dusk" and meta["full_prompt"] == "a harbour at dusk"
    assert meta["negative_prompt"] == "noon"


async def test_refine_route_queues_an_img2img_child(tiny_workspace):
    async with api_client(tiny_workspace) as (client, _):
        parent_job = await client.post("/api/render", json={"prompt": "a harbour", "engine": "draft", "size": "64x64"})
        assert (await wait_job(client, parent_job.json()["job_id"], timeout=300))["status"] == "succeeded"
        [parent] = (await client.get("/api/artifacts")).json()["items"]
        refused = await client.post("/api/refine", json={"artifact_id": parent["id"], "engine": "draft"})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "engine"]
        bad = await client.post("/api/refine", json={"artifact_id": parent["id"], "strength": 1.5})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "strength"]
        submitted = await client.post("/api/refine", json={"artifact_id": parent["id"], "model": "tiny", "steps": 2,
                                                          "strength": 1.0, "seed": 4, "prompt": "a harbour in fog"})
        assert submitted.status_code == 202, submitted.text
        job = await wait_job(client, submitted.json()["job_id"], timeout=300)
        assert job["status"] == "succeeded", job
        items = (await client.get("/api/artifacts")).json()["items"]
        [child] = [i for i in items if i["id"] != parent["id"]]
        meta = (await client.get(f"/api/artifacts/{child['id']}")).json()["meta"]
    assert meta["parent_id"] == parent["id"] and meta["strength"] == 1.0 and meta["parent_sha256"] == parent["id"]
    assert meta["prompt"] == "a harbour in fog" and meta["engine"]["name"] == "cpu"


async def test_compare_route_renders_the_cells_then_the_grid(workspace):
    async with api_client(workspace) as (client, _):
        too_many = await client.post("/api/compare", json={"prompt": "a harbour", "engines": ["draft"],
                                                           "seeds": list(range(10)), "cfg": [1.0, 2.0], "max_cells": 8})
        assert too_many.status_code == 422 and too_many.json()["detail"][0]["loc"] == ["body", "max_cells"]
        submitted = await client.post("/api/compare", json={"prompt": "a harbour", "engines": ["draft"], "size": "64x64",
                                                           "seeds": [1, 2], "styles": ["noir", "ink"], "steps": [2]})
        assert submitted.status_code == 202 and submitted.json()["cells"] == 4
        job = await wait_job(client, submitted.json()["job_id"], timeout=300)
        assert job["status"] == "succeeded", job
        items = (await client.get("/api/artifacts", params={"project": "compare"})).json()["items"]
        [grid] = [i for i in items if i["engine"] == "compare"]
        meta = (await client.get(f"/api/artifacts/{grid['id']}")).json()["meta"]
    assert [c["id"] for c in meta["grid"]["cells"]] == job["artifact_ids"]
    assert [c["label"] for c in meta["grid"]["cells"]] == [
        "seed 1, style noir", "seed 2, style noir", "seed 1, style ink", "seed 2, style ink"]
