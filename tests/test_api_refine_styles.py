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
        assert job["kind"] == "compare"  # stored as a batch, shown as what it is
        items = (await client.get("/api/artifacts", params={"project": "compare"})).json()["items"]
        [grid] = [i for i in items if i["engine"] == "compare"]
        meta = (await client.get(f"/api/artifacts/{grid['id']}")).json()["meta"]
    # the cells in order, then the grid sheet: the job names it (issue 14)
    assert [c["id"] for c in meta["grid"]["cells"]] + [grid["id"]] == job["artifact_ids"]
    assert job["grid_id"] == grid["id"] and job["progress"]["images_done"] == job["progress"]["images_total"] == 5
    assert [c["label"] for c in meta["grid"]["cells"]] == [
        "seed 1, style noir", "seed 2, style noir", "seed 1, style ink", "seed 2, style ink"]


async def test_a_second_compare_job_renders_nothing_and_answers_with_the_first_ones_cells_and_grid(tiny_workspace):
    """`echo-os compare`'s rerun rule on the API (issue 14): a second identical job (a new job: no
    Idempotency-Key) takes the cells the first one rendered and finds the same grid sheet. It is queued
    while the first one renders, so its event stream is read from the start."""
    import asyncio

    from tests.api_helpers import parse_sse

    body = {"prompt": "a harbour", "models": ["tiny"], "size": "64x64", "steps": [2], "seeds": [1, 2]}
    async with api_client(tiny_workspace) as (client, _):
        first = await client.post("/api/compare", json=body)
        second = await client.post("/api/compare", json=body)
        assert first.status_code == second.status_code == 202 and first.json()["job_id"] != second.json()["job_id"]
        first_events, second_events = await asyncio.gather(client.get(first.json()["events_url"]),
                                                           client.get(second.json()["events_url"]))
        one = await wait_job(client, first.json()["job_id"], timeout=300)
        two = await wait_job(client, second.json()["job_id"], timeout=300)
        items = (await client.get("/api/artifacts", params={"project": "compare", "limit": 500})).json()["items"]
    assert one["status"] == two["status"] == "succeeded", (one, two)
    assert len(one["artifact_ids"]) == 3 and one["grid_id"] == one["artifact_ids"][-1]
    assert two["artifact_ids"] == one["artifact_ids"] and two["grid_id"] == one["grid_id"]
    # nothing rendered the second time: no pipeline ran, the catalog holds two cells and one grid
    assert two["timings"]["denoise_s"] == 0 and one["timings"]["denoise_s"] > 0
    assert sorted(item["id"] for item in items) == sorted(one["artifact_ids"])
    events = parse_sse(second_events.text)
    # in the renderer's order (cells grouped by engine), each with its number in the job
    saved = sorted((data for name, data in events if name == "artifact"), key=lambda data: data["index"])
    assert [data["artifact_id"] for data in saved] == one["artifact_ids"], [name for name, _ in events]
    assert all(data["resumed"] for data in saved) and [data["grid"] for data in saved] == [False, False, True]
    assert not any(name == "progress" for name, _ in events)
    assert events[-1][0] == "succeeded" and events[-1][1]["grid_id"] == one["grid_id"]
    first_saved = [data for name, data in parse_sse(first_events.text) if name == "artifact"]
    assert not any(data["resumed"] for data in first_saved) and parse_sse(first_events.text)[-1][1]["grid_id"]


async def test_openai_route_takes_a_style_by_name_or_as_words_like_api_render(workspace):
    """/v1/images/generations `style` (issue 14): /api/render's rule, one function for both routes."""
    draft = {"prompt": "a harbour", "size": "64x64", "engine": "draft", "seed": 5}
    async with api_client(workspace) as (client, _):
        assert (await client.post("/api/styles", json={"name": "Dusk", "prompt": "{prompt} at dusk",
                                                       "negative": "noon"})).status_code == 201
        cases = (("DUSK", "Dusk", "a harbour at dusk", "blurry, noon"),
                 ("vivid", "vivid", "a harbour, vivid saturated colours, dramatic lighting, hyper-real detail, "
                                    "high contrast", "blurry, dull, muted colours, flat lighting, washed out"),
                 ("oil on canvas, warm light", None, "a harbour, oil on canvas, warm light", "blurry"))
        for style, name, full_prompt, negative in cases:
            response = await client.post("/v1/images/generations", json={
                **draft, "style": style, "negative_prompt": "blurry", "response_format": "url"})
            assert response.status_code == 200, response.text
            [artifact_id] = response.headers["x-echo-artifact-ids"].split(",")
            meta = (await client.get(f"/api/artifacts/{artifact_id}")).json()["meta"]
            assert (meta["style_name"], meta["full_prompt"], meta["negative_prompt"]) == (name, full_prompt, negative)
            job = (await client.get(f"/api/jobs/{response.headers['x-echo-job-id']}")).json()
            rendered = await client.post("/api/render", json={**draft, "style": style, "negative": "blurry"})
            render_job = (await client.get(rendered.json()["status_url"])).json()
            assert render_job["request"] == job["request"], style  # the same request as /api/render makes
        for route, body in (("/v1/images/generations", draft), ("/api/render", draft)):
            unknown = await client.post(route, json={**body, "style": "nosuch"})
            assert unknown.status_code == 422, (route, unknown.text)
            detail = unknown.json()["detail"][0]
            assert detail["loc"] == ["body", "style"] and "unknown style 'nosuch'" in detail["msg"], detail
        assert unknown.json()["detail"] == (await client.post("/v1/images/generations", json={
            **draft, "style": "nosuch"})).json()["detail"]
        error = (await client.post("/v1/images/generations", json={**draft, "style": "nosuch"})).json()["error"]
        assert error["param"] == "style" and error["type"] == "invalid_request_error"
        bad_type = await client.post("/v1/images/generations", json={**draft, "style": 3})
        assert bad_type.status_code == 422 and bad_type.json()["error"]["param"] == "style"


async def test_a_compare_job_takes_the_cells_and_grid_echo_os_compare_made(workspace, run_cli):
    """One rerun rule for the CLI and the API: the job finds what `echo-os compare` rendered."""
    import json

    code, out, err = run_cli("--home", str(workspace.home), "compare", "a lighthouse", "--engines", "draft",
                             "--size", "64x64", "--cfg", "5,7", "--seeds", "1,2", "--steps", "2", "--json")
    assert code == 0, err
    cli = json.loads(out)
    async with api_client(workspace) as (client, _):
        submitted = await client.post("/api/compare", json={"prompt": "a lighthouse", "engines": ["draft"],
                                                           "size": "64x64", "cfg": [5, 7], "seeds": [1, 2],
                                                           "steps": [2]})
        job = await wait_job(client, submitted.json()["job_id"], timeout=300)
        items = (await client.get("/api/artifacts", params={"limit": 500})).json()["items"]
    assert job["status"] == "succeeded", job
    assert job["artifact_ids"] == [cell["id"] for cell in cli["cells"]] + [cli["grid"]["id"]]
    assert job["grid_id"] == cli["grid"]["id"] and len(items) == 5
