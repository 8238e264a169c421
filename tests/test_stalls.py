"""Slow or stuck (echo_os.api.stalls, issue 25): the progress clock's threshold scales with the step
time; GET /api/workers and GET /api/jobs/{id} flag a real in-process worker whose engine blocks; a worker
process's clock travels through its row in jobs.db."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from echo_os.api import ApiOptions
from echo_os.api.jobs import JobStore, WorkerRow, now_iso
from echo_os.api.stalls import (
    STALL_STEPS,
    ProgressClock,
    iso_from_epoch,
    judge,
    stall_threshold_s,
)
from tests.api_helpers import FakeEngine, api_client, wait_job

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def test_the_threshold_scales_with_the_step_time_so_slow_is_not_stuck():
    clock = ProgressClock()
    clock.start(now=1000.0)
    for step in range(1, 6):  # a slow worker: one step every 4 s
        clock.step(now=1000.0 + 5 + 4 * step)
    assert clock.step_s == pytest.approx(4.0)
    last = 1000.0 + 5 + 4 * 5
    floor = 10.0
    assert stall_threshold_s(clock.step_s, floor) == pytest.approx(STALL_STEPS * 4.0)
    assert not clock.judge(floor, busy=True, now=last + 30).stalled  # 30 s > floor, but < 10 of its steps
    stalled = clock.judge(floor, busy=True, now=last + 41)
    assert stalled.stalled and "no progress for 41 s" in stalled.warning and "4.0 s" in stalled.warning
    assert not clock.judge(floor, busy=False, now=last + 1000).stalled  # idle: no progress expected
    # a fast worker is flagged after the floor, not after 10 of its (tiny) steps
    fast = ProgressClock()
    fast.start(now=0.0)
    fast.step(now=1.0)
    fast.step(now=1.01)
    assert not fast.judge(floor, busy=True, now=1.01 + 9).stalled
    assert fast.judge(floor, busy=True, now=1.01 + 11).stalled


def test_a_worker_process_row_carries_its_progress_clock(tmp_path):
    jobs = JobStore(tmp_path / "jobs.db")
    try:
        stamp = iso_from_epoch(time.time() - 500)
        jobs.set_worker_row(WorkerRow(slot=0, worker="w", pid=1, device="cpu", state="rendering",
                                      heartbeat=now_iso(), last_progress=stamp, step_s=2.5))
        (row,) = jobs.worker_rows()
        assert row.last_progress == stamp and row.step_s == 2.5
        assert judge(time.time() - 500, row.step_s, 120.0, busy=True).stalled  # 500 s > max(120, 25)
    finally:
        jobs.close()


async def test_a_worker_whose_engine_blocks_is_shown_stalled_and_recovers(workspace):
    gates = {1: threading.Event()}  # call 0 renders at once; call 1 blocks before its first step
    engine = FakeEngine(gates=gates, call_started={n: threading.Event() for n in range(2)})
    options = ApiOptions(batch_window_ms=0, stall_after_s=2.0)
    async with api_client(workspace, make_engine=engine, options=options) as (client, _):
        quick = (await client.post("/api/render", json={"prompt": "quick", "steps": 3, "size": "64x64"})).json()
        assert (await wait_job(client, quick["job_id"]))["status"] == "succeeded"
        (worker,) = (await client.get("/api/workers")).json()["items"]
        assert worker["last_progress"] is not None and worker["step_s"] is not None and not worker["stalled"]

        stuck = (await client.post("/api/render", json={"prompt": "stuck", "steps": 3, "size": "64x64"})).json()
        await asyncio.to_thread(engine.call_started[1].wait, 30)
        job = (await client.get(f"/api/jobs/{stuck['job_id']}")).json()
        assert job["status"] == "running" and not job["stalled"] and job["warning"] is None  # just started
        deadline = time.monotonic() + 30
        while not (await client.get("/api/workers")).json()["items"][0]["stalled"]:
            assert time.monotonic() < deadline, "the blocked worker was never flagged"
            await asyncio.sleep(0.1)
        (worker,) = (await client.get("/api/workers")).json()["items"]
        assert worker["state"] == "rendering" and "no progress for" in worker["warning"]
        job = (await client.get(f"/api/jobs/{stuck['job_id']}")).json()
        assert job["stalled"] and "stuck rather than slow" in job["warning"] and job["last_progress"]
        listed = (await client.get("/api/jobs", params={"status": "running"})).json()["items"]
        assert [item["stalled"] for item in listed] == [True]

        gates[1].set()  # unstuck: it finishes and nothing is flagged any more
        done = await wait_job(client, stuck["job_id"])
        assert done["status"] == "succeeded" and not done["stalled"] and done["warning"] is None
        (worker,) = (await client.get("/api/workers")).json()["items"]
        assert not worker["stalled"] and worker["warning"] is None
