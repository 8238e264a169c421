"""A fake ComfyUI server, in-process on 127.0.0.1 (FastAPI on a real uvicorn, websockets included), that
speaks the protocol a real ComfyUI 0.12 was seen speaking (/work/shared/comfyui/README.md, checked by
hand against one on 127.0.0.1:8188):

- GET /system_stats; GET /object_info and /object_info/{class} ({class: {input: {required: {name: spec}},
  ...}}, a file or enum input as [[choices...], {...}] like upstream's CheckpointLoaderSimple; {} for a class
  it does not have); `checkpoints` is the checkpoint files it has;
  POST /prompt {prompt, client_id} -> {prompt_id, number, node_errors: {}}, or 400
  {error: {type: "prompt_outputs_failed_validation", ...}, node_errors: {ID: {errors: [{type, message,
  details, extra_info}], dependent_outputs, class_type}}} (an input that is not an INT, a checkpoint or
  an image not on the server, a required input missing), or 400 invalid_prompt for an unknown node type;
- /ws?clientId=: status with sid on connect; per prompt status (queue 1) -> execution_start ->
  execution_cached {nodes} -> per node progress_state, executing {node}, `progress` {value, max} per
  KSampler step, executed {node, output: {images}} for SaveImage -> execution_success -> status (queue 0)
  -> executing {node: null, prompt_id}; a failing node sends execution_error {node_id, node_type,
  exception_message, exception_type, traceback, executed, current_inputs, current_outputs}; POST
  /interrupt sends execution_interrupted {node_id, node_type, executed};
- a node whose class and inputs (links resolved) are those of the last run is cached, as in ComfyUI;
- GET /history/{id} (prompt, outputs, status {status_str, completed, messages}; {} until the prompt is
  done, as ComfyUI writes history at the end); GET /view; POST /upload/image (multipart `image`) ->
  {name, subfolder: "", type: "input"}; GET /queue {queue_running, queue_pending: [[number, prompt_id,
  prompt, extra_data, outputs], ...]};
- a reconnecting client (the same clientId) gets `status` with its sid and, when the running prompt is
  its own, `executing {node: <the node running now>}` without a prompt_id (server.py websocket_handler);
  messages for a client whose socket is gone are dropped, as ComfyUI's send_json does;
- `drop_socket(when, how, away_s)`: the next message of type `when` for a client is not delivered; its
  connection is cut instead, "reset" (an RST: the client reads ConnectionResetError) or "close" (a FIN
  without a close frame: WebSocketConnectionClosedException), like a network drop mid-prompt; for
  `away_s` seconds after, that client's websocket handshakes are refused (403, the network still down).

The nodes it runs, with numpy in place of torch: EmptyImage, LoadImage, ImageScale, ImageBlend,
SaveImage, CheckpointLoaderSimple, CLIPTextEncode, EmptyLatentImage (zeros), VAEEncode (every 8th
pixel), KSampler (noise from its seed, tinted by the prompt, mixed into the latent by `denoise`),
VAEDecode. `posts` counts POST /prompt bodies; `step_s` slows KSampler steps.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import io
import itertools
import json
import queue
import socket
import threading
import time
import uuid
from contextlib import contextmanager

import numpy as np

# Module level: FastAPI reads the route annotations (strings, under `from __future__ import annotations`)
# from the module's globals.
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response

CHECKPOINTS = ("sd_xl_base_1.0.safetensors",)
INT_INPUTS = {"width", "height", "batch_size", "color", "seed", "steps"}
REQUIRED = {
    "EmptyImage": ("width", "height", "batch_size", "color"),
    "LoadImage": ("image",),
    "ImageScale": ("image", "upscale_method", "width", "height", "crop"),
    "ImageBlend": ("image1", "image2", "blend_factor", "blend_mode"),
    "SaveImage": ("images", "filename_prefix"),
    "CheckpointLoaderSimple": ("ckpt_name",),
    "CLIPTextEncode": ("text", "clip"),
    "EmptyLatentImage": ("width", "height", "batch_size"),
    "VAEEncode": ("pixels", "vae"),
    "KSampler": ("model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                 "latent_image", "denoise"),
    "VAEDecode": ("samples", "vae"),
}
OUTPUT_NODES = {"SaveImage"}
# GET /object_info's choices (upstream's form for file and enum inputs: [[choices...], {...}]).
CHOICES = {"sampler_name": ["euler", "euler_ancestral", "dpmpp_2m", "ddim", "heun", "uni_pc"],
           "scheduler": ["normal", "karras", "exponential", "ddim_uniform"],
           "upscale_method": ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"],
           "crop": ["disabled", "center"], "blend_mode": ["normal", "multiply", "screen", "overlay", "soft_light",
                                                          "difference"]}
LINK_TYPES = {"model": "MODEL", "clip": "CLIP", "vae": "VAE", "positive": "CONDITIONING",
              "negative": "CONDITIONING", "latent_image": "LATENT", "samples": "LATENT", "pixels": "IMAGE",
              "image": "IMAGE", "image1": "IMAGE", "image2": "IMAGE", "images": "IMAGE"}


class Interrupted(Exception):
    pass


class _HalfResponse(Response):
    """Headers promising the whole body (Content-Length), then half of it, then the connection closes
    (uvicorn drops a connection whose app sent less than its Content-Length)."""

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body[:len(self.body) // 2], "more_body": False})


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class FakeComfyUI:
    def __init__(self, step_s: float = 0.0, checkpoints: tuple[str, ...] = CHECKPOINTS):
        self.step_s = step_s
        self.checkpoints = checkpoints  # the checkpoint files this server has (a real one lists its models/)
        self.posts: list[dict] = []
        self.uploads: dict[str, bytes] = {}
        self.files: dict[str, bytes] = {}
        self.history: dict[str, dict] = {}
        self.interrupt_flag = threading.Event()
        # Injected faults, one per executed prompt in order: "error" (the first node run raises, so an
        # execution_error follows), "restart" (as a ComfyUI that restarts when it takes the prompt: every
        # socket is reset, and the prompt is gone from the queue and the history, both held in memory),
        # "ok" (nothing).
        self.faults: collections.deque[str] = collections.deque()
        # What GET /view answers for an output file instead of its bytes, one per request in order (a
        # hostile or broken server: b"<html>..." for non-image bytes, a PNG of another size).
        self.view_answers: collections.deque[bytes] = collections.deque()
        # GET /view answers to cut halfway: the next `view_truncations` answers promise the whole file
        # (Content-Length) and the connection closes after half of it, like a network drop mid-download.
        self.view_truncations = 0
        self.views = 0  # GET /view requests for output files
        # A websocket flood: per KSampler step, `flood` more `progress` messages (the same value again) and
        # `flood` binary preview frames of `flood_bytes` each (ComfyUI's PREVIEW_IMAGE: a 4-byte event type
        # 1, a 4-byte image type 2 (PNG), then the image), as a server streaming previews sends them.
        self.flood = 0
        self.flood_bytes = 1024
        # What POST /prompt answers instead of queueing, one per request in order (a JSON-able value, or
        # bytes sent as they are).
        self.prompt_answers: collections.deque = collections.deque()
        self._cache: dict[str, tuple[str, list]] = {}  # node id -> (signature, outputs)
        self._counter = itertools.count(1)
        self._numbers = itertools.count(0)
        self._jobs: queue.Queue = queue.Queue()
        self._queued: dict[str, list] = {}  # prompt_id -> its /queue item, while pending or running
        self._executing: str | None = None
        self._sockets: dict[str, object] = {}
        self._drops: collections.deque[tuple[str, str, float]] = collections.deque()  # (message type, how, away_s)
        self._away_until: dict[str, float] = {}  # client_id -> monotonic time its handshakes are refused until
        self.refused_handshakes = 0
        self._running: tuple[str | None, str | None] = (None, None)  # (client_id, node) as server.last_node_id
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = _free_port()
        self._server = None
        self._thread = None
        self._worker = threading.Thread(target=self._work, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- the app -------------------------------------------------------------------------------
    def app(self):
        app = FastAPI()
        fake = self

        @app.get("/system_stats")
        def system_stats():
            return {"system": {"os": "linux", "comfyui_version": "0.12.1-fake"}, "devices": []}

        @app.post("/prompt")
        async def post_prompt(request: Request):
            body = await request.json()
            fake.posts.append(body)
            if fake.prompt_answers:
                answer = fake.prompt_answers.popleft()
                return Response(answer, media_type="application/json") if isinstance(answer, bytes) \
                    else JSONResponse(answer)
            graph, client_id = body.get("prompt", {}), body.get("client_id")
            invalid = fake.validate(graph)
            if invalid is not None:
                return JSONResponse(invalid, status_code=400)
            prompt_id = str(uuid.uuid4())
            number = next(fake._numbers)
            fake.history[prompt_id] = {"prompt": [number, prompt_id, graph, {"client_id": client_id}, []],
                                       "outputs": {}, "status": None}
            fake._queued[prompt_id] = [number, prompt_id, graph, {"client_id": client_id},
                                       [i for i, n in graph.items() if n["class_type"] in OUTPUT_NODES]]
            fake._jobs.put((prompt_id, graph, client_id))
            fake.send({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": fake._jobs.qsize()}}}})
            return {"prompt_id": prompt_id, "number": number, "node_errors": {}}

        @app.get("/object_info")
        def object_info_all():
            return {kind: fake.object_info(kind) for kind in REQUIRED}

        @app.get("/object_info/{node_class}")
        def object_info(node_class: str):
            return {node_class: fake.object_info(node_class)} if node_class in REQUIRED else {}

        @app.post("/interrupt")
        def interrupt():
            fake.interrupt_flag.set()
            return Response(status_code=200)

        @app.get("/queue")
        def get_queue():
            items = list(fake._queued.values())
            return {"queue_running": [i for i in items if i[1] == fake._executing],
                    "queue_pending": [i for i in items if i[1] != fake._executing]}

        @app.get("/history/{prompt_id}")
        def history(prompt_id: str):
            entry = fake.history.get(prompt_id)
            return {} if entry is None or entry["status"] is None else {prompt_id: entry}

        @app.get("/view")
        def view(filename: str, subfolder: str = "", type: str = "output"):
            store = fake.files if type == "output" else fake.uploads
            if filename not in store:
                raise HTTPException(404)
            if type == "output":
                fake.views += 1
            if type == "output" and fake.view_truncations > 0:
                fake.view_truncations -= 1
                return _HalfResponse(store[filename], media_type="image/png")
            if type == "output" and fake.view_answers:
                return Response(fake.view_answers.popleft(), media_type="image/png")
            return Response(store[filename], media_type="image/png")

        @app.post("/upload/image")
        async def upload(image: UploadFile = File(...), overwrite: str = Form("false")):
            fake.uploads[image.filename] = await image.read()
            return {"name": image.filename, "subfolder": "", "type": "input"}

        @app.websocket("/ws")
        async def ws(websocket: WebSocket, clientId: str | None = None):
            if clientId and time.monotonic() < fake._away_until.get(clientId, 0.0):
                fake.refused_handshakes += 1
                await websocket.close()  # before accept: uvicorn answers the handshake with 403
                return
            await websocket.accept()
            sid = clientId or uuid.uuid4().hex
            fake._sockets[sid] = websocket
            await websocket.send_text(json.dumps({"type": "status", "data": {
                "status": {"exec_info": {"queue_remaining": fake._jobs.qsize()}}, "sid": sid}}))
            running_client, running_node = fake._running
            if running_client == sid and running_node is not None:  # a reconnect: the node running now
                await websocket.send_text(json.dumps({"type": "executing", "data": {"node": running_node}}))
            try:
                while True:
                    await websocket.receive_text()
            except (WebSocketDisconnect, RuntimeError):
                pass
            finally:
                # ComfyUI pops the sid here; only this socket's entry, so a reconnect that came first stays
                if fake._sockets.get(sid) is websocket:
                    fake._sockets.pop(sid, None)

        @app.on_event("startup")
        async def remember_loop():
            fake._loop = asyncio.get_running_loop()

        return app

    # ---- messages (the worker thread -> the event loop, as ComfyUI's server does) ------------------
    def drop_socket(self, when: str = "progress", how: str = "reset", away_s: float = 0.0) -> None:
        """Cut the connection of the next client that is sent a message of type `when` (see the docstring)."""
        assert how in ("reset", "close")
        self._drops.append((when, how, away_s))

    def _cut(self, client_id: str, how: str) -> None:
        """Close the client's TCP connection under its websocket (uvicorn's protocol for that peer)."""
        import struct

        websocket = self._sockets.pop(client_id, None)
        peer = tuple(websocket.client) if websocket is not None and websocket.client else None
        for protocol in list(self._server.server_state.connections):
            if tuple(getattr(protocol, "client", None) or ()) == peer:
                if how == "reset":  # SO_LINGER 0: close sends an RST
                    sock = protocol.transport.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                protocol.transport.abort()

    def send_bytes(self, data: bytes, client_id: str) -> None:
        """A binary frame to one client (ComfyUI's previews), from the worker thread, in order."""
        async def deliver():
            target = self._sockets.get(client_id)
            if target is not None:
                try:
                    await target.send_bytes(data)
                except Exception:  # noqa: BLE001 - a client that left
                    pass

        asyncio.run_coroutine_threadsafe(deliver(), self._loop).result(timeout=30)

    def send(self, message: dict, client_id: str | None = None) -> None:
        text = json.dumps(message)

        async def deliver():
            if client_id and self._drops and self._drops[0][0] == message["type"] and client_id in self._sockets:
                _, how, away_s = self._drops.popleft()
                self._away_until[client_id] = time.monotonic() + away_s
                self._cut(client_id, how)
                return
            targets = [self._sockets.get(client_id)] if client_id else list(self._sockets.values())
            for target in targets:
                if target is not None:
                    try:
                        await target.send_text(text)
                    except Exception:  # noqa: BLE001 - a client that left
                        pass

        if self._loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:  # from a route: queue it on the loop (waiting here would deadlock)
            self._loop.create_task(deliver())
        else:  # from the worker thread: wait, so messages keep their order
            asyncio.run_coroutine_threadsafe(deliver(), self._loop).result(timeout=5)

    def object_info(self, kind: str) -> dict:
        """A node class as GET /object_info describes it: its required inputs' types or choices."""
        def spec(name: str) -> list:
            if kind == "CheckpointLoaderSimple" and name == "ckpt_name":
                return [list(self.checkpoints), {"tooltip": "The name of the checkpoint (model) to load."}]
            if kind == "LoadImage" and name == "image":
                return [sorted(self.uploads), {"image_upload": True}]
            if name in CHOICES:
                return [CHOICES[name], {}]
            if name in INT_INPUTS:
                return ["INT", {"default": 0, "min": 0}]
            if name in ("cfg", "denoise", "blend_factor"):
                return ["FLOAT", {"default": 1.0}]
            if name in LINK_TYPES:
                return [LINK_TYPES[name]]
            return ["STRING", {"default": ""}]

        return {"input": {"required": {name: spec(name) for name in REQUIRED[kind]}}, "output": [],
                "name": kind, "display_name": kind, "category": "fake", "output_node": kind in OUTPUT_NODES}

    # ---- validation ---------------------------------------------------------------------------------
    def validate(self, graph: dict) -> dict | None:
        for node_id, node in graph.items():
            if node.get("class_type") not in REQUIRED:
                return {"error": {"type": "invalid_prompt", "message": f"Cannot execute because node "
                                  f"{node.get('class_type')} does not exist.", "details": f"Node ID '#{node_id}'",
                                  "extra_info": {}}, "node_errors": {}}
        if not any(node["class_type"] in OUTPUT_NODES for node in graph.values()):
            return {"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "",
                              "extra_info": {}}, "node_errors": []}
        node_errors = {}
        for node_id, node in graph.items():
            errors = []
            inputs = node.get("inputs", {})
            for name in REQUIRED[node["class_type"]]:
                value = inputs.get(name)
                if name not in inputs:
                    errors.append({"type": "required_input_missing", "message": "Required input is missing",
                                   "details": name, "extra_info": {"input_name": name}})
                elif name in INT_INPUTS and not isinstance(value, list):
                    try:
                        int(value)
                    except (TypeError, ValueError):
                        errors.append({"type": "invalid_input_type",
                                       "message": "Failed to convert an input value to a INT value",
                                       "details": f"{name}, {value}, invalid literal for int() with base 10: {value!r}",
                                       "extra_info": {"input_name": name, "received_value": value}})
            if node["class_type"] == "CheckpointLoaderSimple" and inputs.get("ckpt_name") not in self.checkpoints:
                errors.append({"type": "value_not_in_list", "message": "Value not in list",
                               "details": f"ckpt_name: '{inputs.get('ckpt_name')}' not in {list(self.checkpoints)}",
                               "extra_info": {"input_name": "ckpt_name"}})
            if node["class_type"] == "LoadImage" and inputs.get("image") not in self.uploads:
                errors.append({"type": "custom_validation_failed", "message": "Custom validation failed for node",
                               "details": f"image - Invalid image file: {inputs.get('image')}",
                               "extra_info": {"input_name": "image"}})
            if errors:
                outputs = [i for i, n in graph.items() if n["class_type"] in OUTPUT_NODES]
                node_errors[node_id] = {"errors": errors, "dependent_outputs": outputs,
                                        "class_type": node["class_type"]}
        if node_errors:
            return {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                              "details": "", "extra_info": {}}, "node_errors": node_errors}
        return None

    # ---- execution ----------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if self.faults and self.faults[0] == "restart":
                self.faults.popleft()
                self._restart(job[0])
                continue
            self._executing = job[0]
            try:
                self._execute(*job)
            finally:
                self._executing = None
                self._queued.pop(job[0], None)

    def _restart(self, prompt_id: str) -> None:
        """What a client sees of a ComfyUI restarting as it takes `prompt_id`: connections reset, the
        prompt in neither the queue nor the history."""
        self._queued.pop(prompt_id, None)
        self.history.pop(prompt_id, None)

        async def reset_all():
            for client_id in list(self._sockets):
                self._cut(client_id, "reset")

        asyncio.run_coroutine_threadsafe(reset_all(), self._loop).result(timeout=5)

    def _order(self, graph: dict) -> list[str]:
        """Outputs' dependencies first (depth first from each output node, as ComfyUI's execution list)."""
        order: list[str] = []

        def visit(node_id: str) -> None:
            if node_id in order:
                return
            for value in graph[node_id]["inputs"].values():
                if isinstance(value, list) and len(value) == 2 and value[0] in graph:
                    visit(value[0])
            order.append(node_id)

        for node_id, node in graph.items():
            if node["class_type"] in OUTPUT_NODES:
                visit(node_id)
        return order

    def _signature(self, graph: dict, node_id: str, signatures: dict) -> str:
        inputs = {k: (signatures[v[0]], v[1]) if isinstance(v, list) and len(v) == 2 and v[0] in graph else v
                  for k, v in sorted(graph[node_id]["inputs"].items())}
        return hashlib.sha256(json.dumps([graph[node_id]["class_type"], inputs], sort_keys=True).encode()).hexdigest()

    def _execute(self, prompt_id: str, graph: dict, client_id: str) -> None:
        def event(kind: str, data: dict) -> None:
            self.send({"type": kind, "data": {**data, "prompt_id": prompt_id}}, client_id)

        messages = ["execution_start"]
        fault = self.faults.popleft() if self.faults else None
        order = self._order(graph)
        signatures: dict[str, str] = {}
        for node_id in order:
            signatures[node_id] = self._signature(graph, node_id, signatures)
        cached = [n for n in order if self._cache.get(n, ("",))[0] == signatures[n]]
        self.interrupt_flag.clear()
        event("execution_start", {"timestamp": int(time.time() * 1000)})
        event("execution_cached", {"nodes": cached, "timestamp": int(time.time() * 1000)})
        messages.append("execution_cached")
        values: dict[str, list] = {n: self._cache[n][1] for n in cached}
        outputs: dict[str, dict] = {}
        executed: list[str] = []
        status = "success"
        for node_id in order:
            node = graph[node_id]
            if node_id in cached:
                if node["class_type"] in OUTPUT_NODES:
                    outputs[node_id] = values[node_id][1]
                    event("executed", {"node": node_id, "display_node": node_id, "output": outputs[node_id]})
                continue
            event("progress_state", {"nodes": {node_id: {"value": 0.0, "max": 1.0, "state": "running",
                                                         "node_id": node_id}}})
            self._running = (client_id, node_id)
            event("executing", {"node": node_id, "display_node": node_id})
            inputs = {k: values[v[0]][v[1]] if isinstance(v, list) and len(v) == 2 and v[0] in graph else v
                      for k, v in node["inputs"].items()}
            try:
                if self.interrupt_flag.is_set():
                    raise Interrupted
                if fault == "error":
                    raise RuntimeError("injected fault")
                result = self._run_node(node["class_type"], inputs, node_id, event)
            except Interrupted:
                event("execution_interrupted", {"node_id": node_id, "node_type": node["class_type"],
                                                "executed": executed, "timestamp": int(time.time() * 1000)})
                messages.append("execution_interrupted")
                status = "error"
                break
            except Exception as error:  # noqa: BLE001 - a node's failure is the workflow's answer
                event("execution_error", {"node_id": node_id, "node_type": node["class_type"], "executed": executed,
                                          "exception_message": f"{error}\n", "exception_type": type(error).__name__,
                                          "traceback": ["  File \"fake_comfyui.py\", in _run_node\n"],
                                          "current_inputs": {k: [str(type(v))] for k, v in inputs.items()},
                                          "current_outputs": order, "timestamp": int(time.time() * 1000)})
                messages.append(f"execution_error: {error}\n")
                status = "error"
                break
            values[node_id] = result
            self._cache[node_id] = (signatures[node_id], result)
            executed.append(node_id)
            if node["class_type"] in OUTPUT_NODES:
                outputs[node_id] = result[1]
                event("executed", {"node": node_id, "display_node": node_id, "output": outputs[node_id]})
        if status == "success":
            event("execution_success", {"timestamp": int(time.time() * 1000)})
            messages.append("execution_success")
        self._running = (None, None)
        entry = self.history[prompt_id]
        entry.update(outputs=outputs, status={"status_str": status, "completed": status == "success",
                                              "messages": messages})
        self.send({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": self._jobs.qsize()}}}})
        event("executing", {"node": None})

    def _run_node(self, kind: str, inputs: dict, node_id: str, event) -> list:
        if kind == "EmptyImage":
            c = int(inputs["color"])
            rgb = np.array([(c >> 16) & 255, (c >> 8) & 255, c & 255], dtype=np.float32) / 255
            return [np.broadcast_to(rgb, (int(inputs["batch_size"]), int(inputs["height"]), int(inputs["width"]), 3)).copy()]
        if kind == "LoadImage":
            from PIL import Image

            image = Image.open(io.BytesIO(self.uploads[inputs["image"]])).convert("RGB")
            return [np.asarray(image, dtype=np.float32)[None] / 255, None]
        if kind == "ImageScale":
            from PIL import Image

            scaled = [np.asarray(Image.fromarray((im * 255).astype(np.uint8)).resize(
                (int(inputs["width"]), int(inputs["height"])), Image.BILINEAR), dtype=np.float32) / 255
                for im in inputs["image"]]
            return [np.stack(scaled)]
        if kind == "ImageBlend":
            a, b = inputs["image1"], inputs["image2"]
            if a.shape[0] != b.shape[0]:
                raise RuntimeError(f"The size of tensor a ({a.shape[0]}) must match the size of tensor b "
                                   f"({b.shape[0]}) at non-singleton dimension 0")
            return [a * (1 - inputs["blend_factor"]) + b * inputs["blend_factor"]]
        if kind == "SaveImage":
            images = []
            for array in inputs["images"]:
                name = f"{inputs['filename_prefix']}_{next(self._counter):05d}_.png"
                self.files[name] = _png(array)
                images.append({"filename": name, "subfolder": "", "type": "output"})
            return [None, {"images": images}]
        if kind == "CheckpointLoaderSimple":
            return ["model", "clip", "vae"]
        if kind == "CLIPTextEncode":
            return [inputs["text"]]
        if kind == "EmptyLatentImage":
            return [np.zeros((int(inputs["batch_size"]), int(inputs["height"]) // 8, int(inputs["width"]) // 8, 3),
                             dtype=np.float32)]
        if kind == "VAEEncode":
            return [inputs["pixels"][:, ::8, ::8, :].copy()]
        if kind == "KSampler":
            latent = inputs["latent_image"]
            batch, h, w, _ = latent.shape
            denoise = float(inputs["denoise"])
            steps = int(inputs["steps"])
            for step in range(1, steps + 1):
                if self.interrupt_flag.is_set():
                    raise Interrupted
                time.sleep(self.step_s)
                event("progress", {"value": step, "max": steps, "node": node_id})
                if self.flood:
                    import struct

                    preview = struct.pack(">II", 1, 2) + bytes(self.flood_bytes)
                    for _ in range(self.flood):
                        event("progress", {"value": step, "max": steps, "node": node_id})
                        self.send_bytes(preview, self._running[0])
            tint = int(hashlib.sha256(inputs["positive"].encode()).hexdigest()[:6], 16)
            noise = np.random.default_rng(int(inputs["seed"])).random((batch, h, w, 3), dtype=np.float32)
            sampled = noise * 0.5 + np.array([(tint >> 16) & 255, (tint >> 8) & 255, tint & 255]) / 510
            return [latent * (1 - denoise) + sampled * denoise]
        if kind == "VAEDecode":
            latent = inputs["samples"]
            return [latent.repeat(8, axis=1).repeat(8, axis=2)]
        raise RuntimeError(f"the fake cannot run {kind}")

    # ---- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> "FakeComfyUI":
        import uvicorn

        config = uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="warning", ws="websockets-sansio",
                                lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        self._worker.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake ComfyUI did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._jobs.put(None)
        self._server.should_exit = True
        self._thread.join(timeout=10)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def fake_comfyui(**kwargs):
    server = FakeComfyUI(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()


def comfy_workspace(tmp_path, url: str, extra: str = ""):
    from echo_os.settings import load_settings

    home = tmp_path / "comfy-ws"
    home.mkdir(exist_ok=True)
    (home / "echo-os.toml").write_text(f'[engines.comfyui]\nallow = true\nurl = "{url}"\ntimeout_s = 30\n{extra}',
                                       encoding="utf-8")
    return load_settings(home, env={})
