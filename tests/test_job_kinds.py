"""Typed jobs (echo_os.api.specs): the spec is a union on `kind`, each kind has one handler
(echo_os.api.handlers), rows stored before specs carried their kind still load, and an outage (an
expired lease, a restarted server) spends no attempt of the job's (issue 25)."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import get_args

import pytest
from pydantic import ValidationError

from echo_os.api.handlers import HANDLERS
from echo_os.api.jobs import Job, JobStore, coalesce_key, new_job_id, now_iso
from echo_os.api.specs import (
    AnimaticJobSpec,
    AnimaticSpec,
    BatchSpec,
    CompareSpec,
    RenderSpec,
    SpecKind,
    parse_spec,
)
from echo_os.render.requests import RenderRequest
from tests.api_helpers import api_client, parse_sse, wait_job

REQUEST = RenderRequest(prompt="an old job", engine="draft", width=64, height=64, steps=2)
# The fields every spec had before kinds were typed, as its model_dump_json wrote them.
OLD_EMPTY = {"items": [], "title": None, "warnings": [], "story": None, "animatic": None, "compare": None,
             "evolve": None, "again": False}


def _old(**fields) -> str:
    return json.dumps({**OLD_EMPTY, **fields})


def _insert_old_row(path, job_id: str, kind: str, request_json: str, images_total: int = 1) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute("INSERT INTO jobs (id, kind, status, request, coalesce_key, images_total, created) "
                   "VALUES (?, ?, 'queued', ?, ?, ?, ?)",
                   (job_id, kind, request_json, coalesce_key(REQUEST) if kind == "render" else None, images_total,
                    now_iso()))
    db.close()


def test_every_kind_has_one_handler():
    assert set(HANDLERS) == set(get_args(SpecKind))
    assert HANDLERS["render"] is HANDLERS["refine"]  # claimed together, so rendered together


def test_a_spec_holds_only_its_kinds_fields_and_its_row_kind():
    with pytest.raises(ValidationError):
        AnimaticJobSpec.model_validate({"kind": "animatic", "items": [REQUEST.model_dump(mode="json")],
                                        "animatic": {"project": "p", "fps": 4, "fade": 0.0}})
    with pytest.raises(ValidationError):
        RenderSpec(items=())  # a render renders something
    with pytest.raises(ValidationError):
        Job(id=new_job_id(), kind="batch", status="queued", created=now_iso(), spec=RenderSpec(items=(REQUEST,)))
    spec = CompareSpec.model_validate({"items": [REQUEST.model_dump(mode="json")], "title": "t",
                                       "compare": {"title": "t", "cells": [[]]}})
    assert (spec.row_kind, spec.view_kind, spec.images_total, spec.grid_index) == ("batch", "compare", 2, 1)
    assert parse_spec(spec.model_dump_json()) == spec


def test_rows_written_before_specs_had_a_kind_still_load(tmp_path):
    """jobs.db rows in the old format (a bag of optional fields, no `kind`) get their kind from their
    fields and their row's kind, and a queued one is claimed and runs as before."""
    path = tmp_path / "jobs.db"
    JobStore(path).close()  # the schema, as a server of any version makes it
    item = REQUEST.model_dump(mode="json")
    animatic = {"project": "p", "fps": 4, "size": None, "fade": 0.0, "captions": False, "clips": False,
                "scenes": 1, "frames": 4}
    compare = {"title": "cfg", "axes": [{"option": "cfg", "values": [5.0, 7.0]}], "cells": [[5.0], [7.0]]}
    rows = {"a" * 32: ("render", _old(items=[item], again=True)),
            "b" * 32: ("batch", _old(items=[item, item], title="Lighthouse", warnings=["long prompt"])),
            "c" * 32: ("batch", _old(items=[item, item], title="cfg", compare=compare)),
            "d" * 32: ("animatic", _old(animatic=animatic)),
            "e" * 32: ("clip", json.dumps({"items": [item]})),  # older still: only the fields that were set
            }
    for job_id, (kind, text) in rows.items():
        _insert_old_row(path, job_id, kind, text)
    store = JobStore(path)
    try:
        loaded = {job_id: store.get(job_id) for job_id in rows}
        assert {job_id: job.spec.kind for job_id, job in loaded.items()} == {
            "a" * 32: "render", "b" * 32: "batch", "c" * 32: "compare", "d" * 32: "animatic", "e" * 32: "clip"}
        assert loaded["a" * 32].spec == RenderSpec(items=(REQUEST,), again=True)
        batch = loaded["b" * 32].spec
        assert isinstance(batch, BatchSpec) and batch.title == "Lighthouse" and batch.warnings == ("long prompt",)
        assert loaded["c" * 32].view_kind == "compare" and loaded["c" * 32].spec.grid_index == 2
        assert loaded["d" * 32].spec == AnimaticJobSpec(animatic=AnimaticSpec(**animatic))
        claimed = store.claim_next("w1", lease_s=60)
        assert claimed is not None and claimed.id == "a" * 32 and claimed.spec.kind == "render"
        # written back in the new format when a new job is stored beside them
        store.insert([Job(id="f" * 32, kind="render", status="queued", created=now_iso(),
                          spec=RenderSpec(items=(REQUEST,)))])
        (text,) = store._db.execute("SELECT request FROM jobs WHERE id = ?", ("f" * 32,)).fetchone()
        assert json.loads(text)["kind"] == "render"
    finally:
        store.close()


def test_an_old_row_with_fields_of_another_kind_is_refused():
    with pytest.raises(ValueError, match="fields of another kind"):
        parse_spec(_old(items=[REQUEST.model_dump(mode="json")], title="x"), "render")


# ---- an outage spends no attempt (issue 25, section 2) ------------------------------------------------

def test_an_expired_lease_spends_no_attempt(tmp_path, monkeypatch):
    import echo_os.api.jobs as jobs_module

    monkeypatch.setattr(jobs_module, "REQUEUE_BACKOFF_S", 0.0)
    store = JobStore(tmp_path / "jobs.db", max_attempts=2)
    try:
        job = Job(id=new_job_id(), kind="render", status="queued", created=now_iso(),
                  spec=RenderSpec(items=(REQUEST,)))
        store.insert([job])
        for lost in range(1, 4):  # more lost leases than max_attempts
            claimed = store.claim_next(f"w{lost}", lease_s=0.05)
            assert claimed is not None and claimed.attempts == 1
            time.sleep(0.1)
            taken = store.requeue_expired()
            assert taken.requeued == [job.id] and not taken.failed
            back = store.get(job.id)
            assert (back.status, back.attempts, back.interruptions) == ("queued", 0, lost)
    finally:
        store.close()


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_a_job_running_when_the_server_died_completes_without_spending_an_attempt(workspace):
    """A job claimed (attempt 1) by a server that then died: the next server recovers it as an outage,
    renders it, and it succeeds on its first attempt with one interruption."""
    store = JobStore(workspace.artifacts_dir / "jobs.db")
    job = Job(id=new_job_id(), kind="render", status="queued", created=now_iso(), spec=RenderSpec(items=(REQUEST,)))
    store.insert([job])
    assert store.claim_next().attempts == 1  # the in-process worker of the server that died
    store.close()
    async with api_client(workspace) as (client, _):
        done = await wait_job(client, job.id)
    assert done["status"] == "succeeded" and len(done["artifact_ids"]) == 1
    assert (done["attempts"], done["interruptions"]) == (1, 1)


@pytest.mark.anyio
async def test_images_recorded_before_an_outage_are_announced_again_when_the_job_runs_again(workspace):
    """A worker process killed between recording an image and writing its event (it writes events every
    50 ms) left the image without an `artifact` event: when the job runs again after the outage, every
    image it already has is announced again (resumed), so an SSE client sees each of the job's images."""
    from datetime import datetime, timedelta, timezone

    from echo_os.api.events import image_url

    store = JobStore(workspace.artifacts_dir / "jobs.db")
    job = Job(id=new_job_id(), kind="render", status="queued", created=now_iso(),
              spec=RenderSpec(items=(REQUEST.model_copy(update={"count": 2}),)))
    store.insert([job])
    assert store.claim_next(worker="dead", lease_s=30).attempts == 1
    earlier = "e" * 64  # recorded by the worker that died; its event was never written
    store.record_image(job.id, 0, earlier)
    assert store.requeue_worker("dead").requeued == [job.id]
    later = (datetime.now(timezone.utc) + timedelta(seconds=3)).isoformat(timespec="microseconds")
    store._write("UPDATE jobs SET not_before = ? WHERE id = ?", (later, job.id))  # time to subscribe first
    store.close()
    async with api_client(workspace) as (client, _):
        events = parse_sse((await client.get(f"/api/jobs/{job.id}/events")).text)
        done = await wait_job(client, job.id)
    assert done["status"] == "succeeded" and done["artifact_ids"][0] == earlier
    assert (done["attempts"], done["interruptions"]) == (1, 1)
    announced = {data["artifact_id"]: data for name, data in events if name == "artifact"}
    assert set(announced) == set(done["artifact_ids"])
    assert announced[earlier]["resumed"] and announced[earlier]["image_url"] == image_url(earlier)
