"""Idempotent submissions, and the jobs of synchronous requests whose client went away.

Every POST that creates work takes an `Idempotency-Key` header (1-255 visible ASCII characters): the same
key with the same body answers with the job the first request made (200, `Idempotent-Replayed: true`);
the same key with another body is a 409. Keys live in jobs.db, stored with their job in one transaction,
for IDEMPOTENCY_TTL_S (24 hours). A body is compared after validation (as JSON with sorted keys), so
spacing and key order do not matter, and neither do fields a route ignores.

The synchronous OpenAI route derives a key when the client sends none. The official `openai` client
retries a timed-out or failed request with the same body and `x-stainless-retry-count: N` (N >= 1; the
first try says 0), and sends no idempotency header of its own. So a request that says it is a retry is
answered with the job of the latest request with the same body from the same client address; any other
request makes a new job (two deliberate, identical requests are two renders) and becomes the one its
own retries find.

A synchronous request waits on its job; when every client waiting on a job has disconnected and no image
of it is saved yet, the job is cancelled after a grace period (ApiOptions.abandoned_grace_s), unless a
retry attached to it meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Header, Request
from pydantic import BaseModel

from echo_os.api.jobs import Admission, IdempotencyKey

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
RETRY_COUNT_HEADER = "x-stainless-retry-count"

IdempotencyHeader = Annotated[str | None, Header(
    alias=IDEMPOTENCY_HEADER, pattern=r"^[\x21-\x7e]{1,255}$",
    description="Makes the POST safe to repeat: the same key and body answer with the same job for 24 hours; "
                "the same key with another body is a 409.")]


def fingerprint(route: str, body: BaseModel) -> str:
    """sha256 of the route and the validated body."""
    text = json.dumps([route, body.model_dump(mode="json")], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def client_key(route: str, header: str | None, body: BaseModel) -> IdempotencyKey | None:
    """The client's Idempotency-Key for this route and body, or None when it sent none."""
    if header is None:
        return None
    return IdempotencyKey(key=f"client:{header}", fingerprint=fingerprint(route, body))


def derived_key(request: Request, route: str, body: BaseModel) -> IdempotencyKey:
    """The key of a client that sent none: same client address and body. A retry (retry count >= 1) is
    answered with the job of that key; anything else is a new job that the key then points at."""
    retry = request.headers.get(RETRY_COUNT_HEADER, "0").strip()
    retried = retry.isdigit() and int(retry) > 0
    host = request.client.host if request.client else ""
    body_print = fingerprint(route, body)
    key = hashlib.sha256(f"{host}\n{body_print}".encode()).hexdigest()
    return IdempotencyKey(key=f"derived:{key}", fingerprint=body_print, replace=not retried)


def conflict_message(job_id: str) -> str:
    return (f"this {IDEMPOTENCY_HEADER} was used for a different request (job {job_id}); send a new key "
            "for a new request")


def known(found: tuple[str, str] | None, key: IdempotencyKey) -> Admission | None:
    """What a live stored key (JobStore.find_key) means for this submission, before doing any work."""
    if found is None or key.replace:
        return None
    fingerprint_, job_id = found
    return Admission(job_id, "replayed" if fingerprint_ == key.fingerprint else "conflict")


class WaitingClients:
    """Clients waiting on their job's answer (the synchronous route), counted per job. When the last one
    disconnects, `on_abandoned(job_id)` runs after `grace_s` unless a client (a retry) attached again.
    Used on the event loop only."""

    def __init__(self, grace_s: float, on_abandoned: Callable[[str], Coroutine[Any, Any, None]]):
        self.grace_s = grace_s
        self.on_abandoned = on_abandoned
        self._counts: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task] = set()  # held: the loop keeps only weak references to tasks

    def attach(self, job_id: str) -> None:
        self._counts[job_id] = self._counts.get(job_id, 0) + 1
        timer = self._timers.pop(job_id, None)
        if timer is not None:
            timer.cancel()

    def detach(self, job_id: str, *, disconnected: bool) -> None:
        left = self._counts.get(job_id, 1) - 1
        if left > 0:
            self._counts[job_id] = left
            return
        self._counts.pop(job_id, None)
        if disconnected:
            loop = asyncio.get_running_loop()
            self._timers[job_id] = loop.call_later(self.grace_s, self._expire, job_id)

    def _expire(self, job_id: str) -> None:
        self._timers.pop(job_id, None)
        if self._counts.get(job_id):
            return
        task = asyncio.get_running_loop().create_task(self.on_abandoned(job_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
