"""Helpers for the API tests: an in-process client with the app's lifespan, a controllable fake engine,
and a reader for Server-Sent Events."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import httpx

from echo_os.engines.base import (
    BaseEngine,
    Capabilities,
    ProgressEvent,
    RenderedImage,
    RenderResult,
    RuntimeInfo,
    Timings,
)
from echo_os.engines.hookspecs import hookimpl
from echo_os.errors import CancelledError

TERMINAL = ("succeeded", "failed", "cancelled")


@asynccontextmanager
async def api_client(settings, **create_kwargs):
    """(client, app) for create_app(settings, **create_kwargs), lifespan running, through httpx.ASGITransport."""
    from echo_os.api import create_app

    app = create_app(settings, **create_kwargs)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
            yield client, app


async def wait_job(client: httpx.AsyncClient, job_id: str, statuses=TERMINAL, timeout: float = 60.0,
                   headers: dict | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = (await client.get(f"/api/jobs/{job_id}", headers=headers)).json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s: {job}")
        await asyncio.sleep(0.02)


def parse_sse(text: str) -> list[tuple[str, dict]]:
    """[(event name, data)] from an SSE body; comments (pings) skipped."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if name:
            events.append((name, json.loads("\n".join(data))))
    return events


@dataclass
class FakeEngine(BaseEngine):
    """Renders 8x8 solid images instantly, one progress event per step. `hold` makes every step wait
    until released (or cancelled); `fail_times` makes the first calls raise."""

    max_batch: int = 16
    fail_times: int = 0
    fail_with: type[BaseException] = RuntimeError
    fail_prompt: str | None = None  # any call containing this prompt fails
    name: str = "fake"
    reason: str = "test fake"
    calls: list[list[tuple[str, tuple[int, ...]]]] = field(default_factory=list)
    step_started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    hold: bool = False
    # call number -> a gate its steps wait on (instead of `release`); call_started[n] is set at its first step
    gates: dict[int, threading.Event] = field(default_factory=dict)
    call_started: dict[int, threading.Event] = field(default_factory=dict)

    def __post_init__(self):
        self.capabilities = Capabilities(txt2img=True, max_batch=self.max_batch, needs_weights=False)
        self.release.set()
        if self.hold:
            self.release.clear()
        self._lock = threading.Lock()

    def __call__(self, request):  # the create_app(make_engine=...) factory
        return self

    def create(self, settings, reason):  # as a registered engine (register_engine): always this instance
        return self

    def render(self, requests, *, progress=None, cancel=None):
        from PIL import Image

        with self._lock:
            number = len(self.calls)
            self.calls.append([(r.prompt, tuple(r.seeds)) for r in requests])
            started = self.call_started.setdefault(number, threading.Event())
            gate = self.gates.get(number, self.release)
            failing = self.fail_times > 0 or (self.fail_prompt is not None
                                              and any(r.prompt == self.fail_prompt for r in requests))
            if self.fail_times > 0:
                self.fail_times -= 1
        if failing:
            raise self.fail_with("the fake engine failed on purpose")
        images = sum(r.count for r in requests)
        total = requests[0].steps
        for step in range(1, total + 1):
            self.step_started.set()
            started.set()
            while not gate.wait(0.01):
                if cancel is not None and cancel.is_set():
                    break
            if cancel is not None and cancel.is_set():
                raise CancelledError("render cancelled; unfinished images were not saved")
            if progress is not None:
                progress(ProgressEvent(step=step, total_steps=total, images=images))
        runtime = RuntimeInfo(engine=self.name, reason="test fake", device="cpu", dtype="none", attention="none")
        return [RenderResult(request=r, runtime=runtime, timings=Timings(denoise_s=0.001),
                             images=[RenderedImage(image=Image.new("RGB", (8, 8), (s % 256, 0, 0)), seed=s)
                                     for s in r.seeds])
                for r in requests]


class EnginePlugin:
    """A pluggy plugin object registering the given engines, the way an installed package's module does."""

    def __init__(self, *engines):
        self.engines = engines

    @hookimpl
    def register_engines(self, register):
        for engine in self.engines:
            register(engine)


@contextmanager
def register_engine(*engines):
    """Register engines through the plugin hook for the duration (then forget them again)."""
    from echo_os.engines import reset_plugins
    from echo_os.engines.plugins import plugin_manager

    plugin = EnginePlugin(*engines)
    reset_plugins()
    plugin_manager().register(plugin)
    try:
        yield plugin
    finally:
        reset_plugins()
