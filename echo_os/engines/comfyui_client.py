"""The ComfyUI protocol for the `comfyui` engine (engines/comfyui.py): HTTP (httpx) and the websocket
(websocket-client) of one ComfyUI server, and following one prompt from POST /prompt to its outputs.

    client = ComfyClient(url, timeout_s, connect_timeout_s); client.connect()
    prompt_id = client.submit(graph)                              # POST /prompt {prompt, client_id}
    run = follow_prompt(client, prompt_id, graph, advance, cancel, timeout_s=...)
    outputs = (run.history or client.history(prompt_id))["outputs"]   # GET /history/{prompt_id}
    png = client.view(image)                                      # GET /view

The websocket /ws?clientId= carries executing, progress, executed, execution_cached, execution_success,
execution_error and execution_interrupted; a prompt is done at `executing` with node null for it. A cancel
sends POST /interrupt. When the socket closes mid-prompt the client reconnects with the same clientId and
reads GET /history/{prompt_id} (ComfyUI drops messages for a client that is not connected, so the history is
the record of what was missed); the prompt is never submitted twice. A prompt in neither the history nor
GET /queue was lost (a restarted ComfyUI keeps both in memory only).

Everything the server sends is JSON read defensively (`.get`); an answer of the wrong shape raises KeyError,
TypeError, ... which the engine turns into one line (`malformed`).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from echo_os.engines.comfyui_workflows import Graph
from echo_os.errors import CancelledError, EchoError, connection_words

if TYPE_CHECKING:
    import websocket

RECONNECT_TRIES = 5  # websocket reconnections per prompt, waiting 0.25, 0.5, 1, 2, 4 s (within timeout_s)
VIEW_TRIES = 3  # GET /view of a finished image, when the connection drops mid-download (0.2 s, 0.4 s between)

# A JSON object as ComfyUI sent it (a message, a /history entry, an image reference): its fields depend on
# the message type and the server's version, and are read with .get where they may be absent.
JSONObject: TypeAlias = dict[str, Any]


class ComfyUIError(EchoError):
    """ComfyUI refused or failed a workflow; one line naming the node and its message."""


def node_error_line(body: JSONObject) -> str:
    """One line from a POST /prompt 400 body: the first node error, naming node and message."""
    for node_id, info in (body.get("node_errors") or {}).items():
        for error in info.get("errors", []):
            details = f" ({error['details']})" if error.get("details") else ""
            return f"node {node_id} ({info.get('class_type', '?')}): {error.get('message', 'invalid')}{details}"
    error = body.get("error") or {}
    if isinstance(error, dict):
        return f"{error.get('message', 'the workflow was refused')}{': ' + error['details'] if error.get('details') else ''}"
    return str(error or body)


class ComfyClient:
    """HTTP (httpx) and the websocket (websocket-client) of one ComfyUI server, for one client_id."""

    def __init__(self, url: str, timeout_s: float, connect_timeout_s: float):
        import httpx

        self.url = url.rstrip("/")
        self.client_id = uuid.uuid4().hex
        self.timeout_s = timeout_s
        self.http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s))
        self.ws: websocket.WebSocket | None = None

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        self.http.close()

    def connect(self) -> None:
        import websocket

        if self.ws is None:
            ws_url = "ws" + self.url[len("http"):] + f"/ws?clientId={self.client_id}"
            self.ws = websocket.create_connection(ws_url, timeout=self.timeout_s)

    def reconnect(self, deadline: float, sleep: Callable[[float], None] = time.sleep) -> None:
        """A new socket with the same clientId (ComfyUI then routes this client's messages to it), after
        the old one dropped: up to RECONNECT_TRIES tries, backing off 0.25 s doubling, before `deadline`;
        the last error is raised when none succeeds."""
        import websocket

        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:  # noqa: BLE001 - the socket is already gone
                pass
            self.ws = None
        for attempt in range(RECONNECT_TRIES):
            try:
                self.connect()
                return
            except (websocket.WebSocketException, OSError):
                wait = 0.25 * 2 ** attempt
                if attempt == RECONNECT_TRIES - 1 or time.monotonic() + wait > deadline:
                    raise
                sleep(wait)

    def submit(self, graph: Graph) -> str:
        response = self.http.post("/prompt", json={"prompt": graph, "client_id": self.client_id})
        if response.status_code == 400:
            raise ComfyUIError(f"engine comfyui: ComfyUI refused the workflow: {node_error_line(response.json())}")
        response.raise_for_status()
        prompt_id = response.json()["prompt_id"]
        if not isinstance(prompt_id, str) or not prompt_id:  # else the engine would wait for it until its timeout
            raise TypeError("prompt_id is not text")
        return prompt_id

    def receive(self, wait_s: float) -> JSONObject | None:
        """The next JSON message, or None when none came within wait_s (binary previews are skipped)."""
        import websocket

        if self.ws is None:
            raise websocket.WebSocketConnectionClosedException("not connected to ComfyUI's websocket")
        self.ws.settimeout(wait_s)
        try:
            message = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return None
        if isinstance(message, bytes):
            return {"type": "<binary>", "data": {}}
        if message == "" and not self.ws.connected:  # a close frame: websocket-client answers it, returns ""
            raise websocket.WebSocketConnectionClosedException("ComfyUI closed the websocket")
        parsed: JSONObject = json.loads(message)
        return parsed

    def history(self, prompt_id: str) -> JSONObject:
        """The prompt's history entry ({} while it is queued or running: ComfyUI writes it when done)."""
        response = self.http.get(f"/history/{prompt_id}")
        response.raise_for_status()
        entry: JSONObject = response.json().get(prompt_id, {})
        return entry

    def queued(self, prompt_id: str) -> bool:
        """Whether the prompt is running or pending (GET /queue: items [number, prompt_id, ...])."""
        response = self.http.get("/queue")
        response.raise_for_status()
        body = response.json()
        for item in (*body.get("queue_running", []), *body.get("queue_pending", [])):
            found = item[1] if isinstance(item, (list, tuple)) and len(item) > 1 else \
                item.get("prompt_id") if isinstance(item, dict) else None
            if found == prompt_id:
                return True
        return False

    def view(self, image: JSONObject, sleep: Callable[[float], None] = time.sleep) -> bytes:
        """The output image's bytes (GET /view). The image is on the server already, so a connection that
        drops mid-download (a body shorter than its Content-Length, a reset) is asked again, VIEW_TRIES
        times in all; then one line naming the server, the file and what happened."""
        import httpx

        params = {"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                  "type": image.get("type", "output")}
        for attempt in range(VIEW_TRIES):
            try:
                response = self.http.get("/view", params=params)
                response.raise_for_status()
                return response.content
            except httpx.TransportError as error:
                if attempt == VIEW_TRIES - 1:
                    raise ComfyUIError(f"engine comfyui: ComfyUI at {self.url} did not send image "
                                       f"{str(params['filename'])[:200]!r} whole ({connection_words(error)}, "
                                       f"{VIEW_TRIES} tries); nothing was saved for it, run the same command again "
                                       "(images already saved are kept)") from None
                sleep(0.2 * 2 ** attempt)
        raise AssertionError("unreachable")

    def interrupt(self) -> None:
        self.http.post("/interrupt", json={})

    def upload(self, name: str, data: bytes) -> str:
        response = self.http.post("/upload/image", files={"image": (name, data, "image/png")},
                                  data={"overwrite": "true"})
        response.raise_for_status()
        body = response.json()
        return f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else str(body["name"])


def malformed(error: BaseException) -> str:
    """What was wrong with a server's answer, in words (not a Python exception's name)."""
    if isinstance(error, json.JSONDecodeError):
        return "a body that is not JSON"
    if isinstance(error, KeyError):
        return f"no {error.args[0]!r} where one was expected" if error.args else "a field missing"
    if isinstance(error, IndexError):
        return "a list shorter than expected"
    if isinstance(error, (TypeError, AttributeError)):
        return "a value of the wrong type (a list or text where an object was expected)"
    text = "".join(c if c.isprintable() else "?" for c in str(error))[:120]
    return text or "a value it could not use"


def history_failure(entry: JSONObject) -> str | None:
    """The one-line error of a finished /history entry whose status is an error, else None. Upstream
    ComfyUI records [event, data] pairs (data as the websocket sent it); the pip-installable fork records
    "event: exception_message" strings."""
    status = entry.get("status") or {}
    if status.get("status_str") != "error":
        return None
    for message in status.get("messages", []):
        if isinstance(message, (list, tuple)) and len(message) == 2 and isinstance(message[1], dict):
            kind, data = message
            if kind == "execution_error":
                return (f"engine comfyui: node {data.get('node_id')} ({data.get('node_type')}) failed: "
                        f"{data.get('exception_type', 'error')}: {str(data.get('exception_message', '')).strip()}")
            if kind == "execution_interrupted":
                return (f"engine comfyui: ComfyUI interrupted the workflow at node {data.get('node_id')} "
                        f"({data.get('node_type')})")
        elif isinstance(message, str):
            if message.startswith("execution_error"):
                return f"engine comfyui: the workflow failed: {message.partition(':')[2].strip() or 'an error'}"
            if message.startswith("execution_interrupted"):
                return "engine comfyui: ComfyUI interrupted the workflow"
    return "engine comfyui: the workflow failed (ComfyUI's history says error)"


@dataclass
class PromptRun:
    """What following one prompt's messages gathered."""

    cached: list[str] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)
    reconnects: int = 0
    history: JSONObject | None = None  # the finished prompt's /history entry, when it was read after a drop


def follow_prompt(client: ComfyClient, prompt_id: str, graph: Graph, advance: Callable[[int], None],
                  cancel: threading.Event | None, *, timeout_s: float, sampler: str | None = None,
                  steps: int = 0) -> PromptRun:
    """Read the websocket until `executing` with node null for this prompt, calling advance(n) for each node
    run or cached and each sampling step of `sampler` (up to `steps`); after a dropped socket, reconnect and
    read /history (see the module docstring). A cancel interrupts the prompt and raises CancelledError."""
    import websocket

    run = PromptRun()
    sampled = 0
    deadline = time.monotonic() + timeout_s
    interrupted_by_us = False
    failure: str | None = None
    quiet_since = time.monotonic()
    while True:
        if cancel is not None and cancel.is_set() and not interrupted_by_us:
            client.interrupt()
            interrupted_by_us = True
        if time.monotonic() > deadline:
            client.interrupt()
            raise ComfyUIError(f"engine comfyui: no answer within {timeout_s:g} s; interrupted")
        try:
            message = client.receive(0.25)
        except (websocket.WebSocketConnectionClosedException, ConnectionError) as error:
            run.reconnects += 1
            if run.reconnects > RECONNECT_TRIES:
                raise ComfyUIError(f"engine comfyui: the websocket to {client.url} dropped "
                                   f"{run.reconnects} times during one prompt ({connection_words(error)})") from None
            client.reconnect(deadline)
            message = None
            quiet_since = 0.0  # ask /history now: what finished while we were away is only there
        if message is None:
            # After a drop, the history is the record of what was missed: read it at once, then after
            # every 2 s of silence (a server may route this client's messages to the old socket a while).
            if run.reconnects and time.monotonic() - quiet_since >= 2.0:
                quiet_since = time.monotonic()
                entry = client.history(prompt_id)
                if entry.get("status") is None and not client.queued(prompt_id):
                    entry = client.history(prompt_id)  # it may have finished between the two calls
                    if entry.get("status") is None:
                        raise ComfyUIError(f"engine comfyui: ComfyUI at {client.url} no longer knows prompt "
                                           f"{prompt_id} (restarted while the websocket was down?); run the same "
                                           "command again, images already saved are kept")
                if entry.get("status") is not None:
                    run.history = entry
                    failure = failure or history_failure(entry)
                    break
            continue
        quiet_since = time.monotonic()
        kind, data = message.get("type"), message.get("data") or {}
        if data.get("prompt_id") not in (None, prompt_id):
            continue  # another prompt's messages (a shared server)
        if kind == "execution_cached":
            run.cached = list(data.get("nodes", []))
            advance(len(run.cached))
        elif kind == "executing" and data.get("node") is not None:
            # On reconnect ComfyUI repeats the node it is running (without a prompt_id): counted once.
            if data["node"] in graph and data["node"] not in run.executed:
                run.executed.append(data["node"])
                advance(1)
        elif kind == "progress" and sampler is not None and data.get("node") == sampler:
            value = min(int(data.get("value", 0)), steps)
            if value > sampled:
                advance(value - sampled)
                sampled = value
        elif kind == "execution_error":
            failure = (f"engine comfyui: node {data.get('node_id')} ({data.get('node_type')}) failed: "
                       f"{data.get('exception_type', 'error')}: {str(data.get('exception_message', '')).strip()}")
        elif kind == "execution_interrupted":
            failure = (None if interrupted_by_us else
                       f"engine comfyui: ComfyUI interrupted the workflow at node {data.get('node_id')} "
                       f"({data.get('node_type')})")
        elif kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            break
    if interrupted_by_us:
        raise CancelledError("render cancelled")
    if failure:
        raise ComfyUIError(failure.replace("\n", " "))
    return run
