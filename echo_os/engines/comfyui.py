"""The `comfyui` engine: a client of a running ComfyUI server.

Configured in the workspace's echo-os.toml:

    [engines.comfyui]
    allow = true                          # it opens network connections (to this URL only)
    url = "http://127.0.0.1:8188"
    workflow = "sdxl-txt2img"             # the default template (`-o workflow=NAME` per render)
    refine_workflow = "sdxl-img2img"      # the template of `echo-os refine` (`-o workflow=NAME` wins)
    checkpoint = "sd_xl_base_1.0.safetensors"   # for templates that bind a checkpoint

`auto` asks it only when it is allowed and configured, and then only if GET /system_stats answers and GET
/object_info/{class} says the server has every node class of the template and every file choice it names
(the checkpoint): missing_on_server. (When it then fails before any image, `auto` moves on: the scheduler.)
Each image records the template's sha256 (provenance `template_sha256`, Engine.template_digest), so an
edited template renders anew and replay says it changed.

Per image: the template's API-format graph with the request's values bound (prompt, negative, seed,
steps, cfg, width, height, checkpoint, batch size 1, sampler/scheduler, init image, strength) is sent with
POST /prompt {prompt, client_id}; the websocket /ws?clientId= is followed (executing, progress,
executed, execution_cached, execution_success, execution_error, execution_interrupted; done at
`executing` with node null for this prompt); GET /history/{prompt_id} lists the output images, fetched
with GET /view. A cancel sends POST /interrupt. An init image is sent first with POST /upload/image.

Refine (request.init_image, `echo-os refine --engine comfyui`): the parent's PNG, read through
engines/inputs.py (its recorded sha256 checked), is uploaded under a name made from that sha256 and bound
to the template's `init_image`; the strength is bound to `strength` (a KSampler's `denoise`). The template
is `-o workflow=NAME`, else `[engines.comfyui] refine_workflow` (default sdxl-img2img); one that binds no
init_image is refused. Provenance records the strength and whether the template bound it.

Websocket drops: when the socket closes mid-prompt (a proxy timing out, a restart of the network, a
reset), the engine reconnects with the same clientId (a few tries with back-off, within timeout_s) and
asks GET /history/{prompt_id}: a finished prompt's outputs (or its error) are taken from there; an
unfinished one is followed on the new socket. ComfyUI drops messages for a client that is not connected
and, on reconnect, sends `status` and the node it is executing (server.py websocket_handler), so the
history is the record of what was missed. The prompt is never submitted twice. A prompt in neither the
history nor GET /queue was lost (a restarted ComfyUI keeps both in memory only): one line says so.
One prompt per image, with that image's seed, so image i of a batch is exactly the image its seed gives
alone (ComfyUI's own batches draw all their noise from one seed).

Workflow templates ship in the package, `echo_os/pipelines/comfyui/`: NAME.json (a workflow as ComfyUI's "Export (API)"
writes it) and NAME.toml (its description and bindings: which node input receives each request value,
"NODE_ID.INPUT_NAME", or {input = "...", modulo = N} for an input with a smaller range). A workspace's
own `pipelines/comfyui/` is read too and wins by name. The engine assumes no checkpoint loader: a
template binds only what it has.

Progress: one step per node of the graph (executed or cached) and one per sampling step of the node
`steps` is bound to (ComfyUI's `progress` messages), in order, so the CLI bar, SSE and job status move as
ComfyUI works through the graph.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from echo_os.engines.base import (
    BaseEngine,
    Capabilities,
    EngineOptions,
    ProgressCallback,
    ProgressEvent,
    RenderedImage,
    RenderResult,
    RuntimeInfo,
    Timings,
    table_settings,
)
from echo_os.engines.hookspecs import hookimpl
from echo_os.engines.inputs import decode_received_image
from echo_os.errors import CancelledError, EchoError, OptionError, UsageError
from echo_os.package_data import pipelines_folder

if TYPE_CHECKING:
    from echo_os.render.requests import RenderRequest
    from echo_os.settings import Settings

TEMPLATES_DIR = Path("pipelines") / "comfyui"
BINDABLE = ("prompt", "negative", "seed", "steps", "cfg", "width", "height", "checkpoint", "batch_size",
            "init_image", "strength", "sampler", "scheduler")
RECONNECT_TRIES = 5  # websocket reconnections per prompt, waiting 0.25, 0.5, 1, 2, 4 s (within timeout_s)
# echo-os scheduler names -> ComfyUI's (sampler_name, scheduler).
SAMPLERS: dict[str, tuple[str, str]] = {
    "euler": ("euler", "normal"), "euler_a": ("euler_ancestral", "normal"), "dpmpp_2m": ("dpmpp_2m", "normal"),
    "dpmpp_2m_karras": ("dpmpp_2m", "karras"), "ddim": ("ddim", "ddim_uniform"), "heun": ("heun", "normal"),
    "unipc": ("uni_pc", "normal"),
}


class ComfyUIError(EchoError):
    """ComfyUI refused or failed a workflow; one line naming the node and its message."""


class ComfyUISettings(BaseModel):
    """`[engines.comfyui]` in echo-os.toml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: bool = False
    url: str | None = None
    workflow: str = "sdxl-txt2img"
    refine_workflow: str = "sdxl-img2img"  # for a request with an init image (echo-os refine)
    checkpoint: str | None = None
    timeout_s: float = Field(default=600.0, gt=0)  # one image, submit to last message
    connect_timeout_s: float = Field(default=2.0, gt=0)  # the reachability check and each HTTP call's connect


def engine_settings(settings: "Settings") -> ComfyUISettings:
    return table_settings(settings, "comfyui", ComfyUISettings)


class ComfyUIOptions(EngineOptions):
    # A parent's txt2img template is not a refine's: refine takes refine_workflow unless -o workflow= is given.
    refine_drops: ClassVar[tuple[str, ...]] = ("workflow",)

    workflow: str | None = None  # a template name (pipelines/comfyui/NAME.json + NAME.toml)
    # (a refine's own init image, request.init_image, takes the place of `init_image` below)
    checkpoint: str | None = None  # for templates binding `checkpoint`
    init_image: str | None = None  # a file uploaded and bound to the template's `init_image`


# ---- templates -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Binding:
    node: str
    input: str
    modulo: int | None = None


@dataclass(frozen=True)
class Workflow:
    """An API-format graph and which node input receives each request value."""

    name: str
    graph: dict[str, Any]
    bindings: dict[str, tuple[Binding, ...]]
    description: str = ""
    path: Path | None = None

    @property
    def digest(self) -> str:
        """sha256 of the graph and its bindings: it changes when the template (NAME.json or NAME.toml) does."""
        import hashlib

        bindings = {key: [[b.node, b.input, b.modulo] for b in value] for key, value in sorted(self.bindings.items())}
        text = json.dumps({"graph": self.graph, "bindings": bindings}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def bind(self, values: dict[str, Any]) -> dict[str, Any]:
        """A copy of the graph with `values` (keys of BINDABLE) written into their inputs; values the
        template does not bind are left out (a weightless template has no prompt to set)."""
        graph = json.loads(json.dumps(self.graph))
        for key, value in values.items():
            for binding in self.bindings.get(key, ()):
                graph[binding.node]["inputs"][binding.input] = (
                    value % binding.modulo if binding.modulo and isinstance(value, int) else value)
        return graph


def _parse_binding(path: Path, key: str, spec: Any, graph: dict) -> Binding:
    if isinstance(spec, dict):
        target, modulo = spec.get("input"), spec.get("modulo")
        if not isinstance(modulo, (int, type(None))) or set(spec) - {"input", "modulo"}:
            raise UsageError(f"{path}: binding {key} takes input = \"NODE.INPUT\" and an optional integer modulo.")
    else:
        target, modulo = spec, None
    if not isinstance(target, str) or "." not in target:
        raise UsageError(f'{path}: binding {key} must name a node input as "NODE_ID.INPUT_NAME", got {target!r}.')
    node, name = target.split(".", 1)
    if node not in graph or name not in graph[node].get("inputs", {}):
        raise UsageError(f"{path}: binding {key} names {target}, which is not an input of the workflow "
                         f"(nodes: {', '.join(sorted(graph))}).")
    return Binding(node, name, modulo)


def read_workflow(graph_path: Path) -> Workflow:
    """NAME.json and its NAME.toml, checked: an API-format graph, bindings naming existing inputs."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    bindings_path = graph_path.with_suffix(".toml")
    try:
        graph = json.loads(graph_path.read_text(encoding="utf-8"))
        spec = tomllib.loads(bindings_path.read_text(encoding="utf-8")) if bindings_path.is_file() else {}
    except (OSError, ValueError) as error:
        raise UsageError(f"{graph_path}: cannot read the workflow ({error}).") from None
    if not isinstance(graph, dict) or not all(isinstance(n, dict) and "class_type" in n for n in graph.values()):
        raise UsageError(f"{graph_path} is not an API-format workflow (export it with File > Export (API) in "
                         "ComfyUI: every node has class_type and inputs).")
    unknown = set(spec.get("bindings", {})) - set(BINDABLE)
    if unknown:
        raise UsageError(f"{bindings_path}: unknown binding(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(BINDABLE)}.")
    bindings: dict[str, tuple[Binding, ...]] = {}
    for key, value in spec.get("bindings", {}).items():
        specs = value if isinstance(value, list) else [value]
        bindings[key] = tuple(_parse_binding(bindings_path, key, one, graph) for one in specs)
    return Workflow(graph_path.stem, graph, bindings, str(spec.get("description", "")), graph_path)


def workflow_paths(settings: "Settings") -> dict[str, Path]:
    """name -> NAME.json: the templates shipped in the package, then the workspace's (which win by name)."""
    found: dict[str, Path] = {}
    for folder in (pipelines_folder("comfyui"), settings.home / TEMPLATES_DIR):
        if folder.is_dir():
            found.update({path.stem: path for path in sorted(folder.glob("*.json"))})
    return found


def workflow_name(config: ComfyUISettings, request: "RenderRequest", options: ComfyUIOptions) -> str:
    """`-o workflow=`, else the refine template for a request with an init image, else the default."""
    if options.workflow:
        return options.workflow
    return config.refine_workflow if request.init_image is not None else config.workflow


def get_workflow(settings: "Settings", name: str) -> Workflow:
    paths = workflow_paths(settings)
    if name not in paths:
        raise OptionError(f"no ComfyUI workflow {name!r}; known: {', '.join(paths) or 'none'} "
                          f"(add NAME.json and NAME.toml under {TEMPLATES_DIR}/)", "options.workflow")
    return read_workflow(paths[name])


def input_choices(spec: Any) -> list[str] | None:
    """The values a node input accepts, from its GET /object_info spec: [[choices...], {...}] (a file
    list such as a checkpoint loader's) or ["COMBO", {"options": [...]}] (newer nodes); None: not a choice."""
    if not isinstance(spec, list) or not spec:
        return None
    if isinstance(spec[0], list):
        return [str(choice) for choice in spec[0]]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return [str(choice) for choice in spec[1].get("options", [])]
    return None


def missing_on_server(config: ComfyUISettings, workflow: Workflow, options: ComfyUIOptions) -> str | None:
    """Why the server cannot run the template, asked through GET /object_info/{class}: a node class it does
    not have, or a file choice (checkpoint, VAE, LoRA...) it does not list. None when it has everything.
    The init image is uploaded at render time, so its input is not checked."""
    import httpx

    checkpoint = options.checkpoint or config.checkpoint
    graph = workflow.bind({"checkpoint": checkpoint} if checkpoint else {})
    uploaded = {(b.node, b.input) for b in workflow.bindings.get("init_image", ())}
    infos: dict[str, dict] = {}
    for node_id, node in sorted(graph.items()):
        kind = node["class_type"]
        if kind not in infos:
            try:
                response = httpx.get(f"{config.url.rstrip('/')}/object_info/{kind}", timeout=config.connect_timeout_s)
                response.raise_for_status()
                infos[kind] = response.json().get(kind) or {}
            except (httpx.HTTPError, ValueError) as error:
                return f"ComfyUI at {config.url} does not describe its nodes ({type(error).__name__})"
        info = infos[kind]
        if not info:
            return f"ComfyUI at {config.url} has no {kind} node (workflow {workflow.name} needs it)"
        specs = {**(info.get("input", {}).get("required") or {}), **(info.get("input", {}).get("optional") or {})}
        for name, value in node.get("inputs", {}).items():
            if (node_id, name) in uploaded or not isinstance(value, str):
                continue
            choices = input_choices(specs.get(name))
            if choices is not None and value not in choices:
                listed = ", ".join(choices[:5]) + (", ..." if len(choices) > 5 else "") if choices else "none"
                return (f"ComfyUI at {config.url} has no {name} {value!r} for workflow {workflow.name} "
                        f"(it has: {listed})")
    return None


# ---- the client ------------------------------------------------------------------------------------

def node_error_line(body: dict) -> str:
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
        self.ws = None

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

    def reconnect(self, deadline: float, sleep=time.sleep) -> None:
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

    def submit(self, graph: dict) -> str:
        response = self.http.post("/prompt", json={"prompt": graph, "client_id": self.client_id})
        if response.status_code == 400:
            raise ComfyUIError(f"engine comfyui: ComfyUI refused the workflow: {node_error_line(response.json())}")
        response.raise_for_status()
        prompt_id = response.json()["prompt_id"]
        if not isinstance(prompt_id, str) or not prompt_id:  # else the engine would wait for it until its timeout
            raise TypeError("prompt_id is not text")
        return prompt_id

    def receive(self, wait_s: float) -> dict | None:
        """The next JSON message, or None when none came within wait_s (binary previews are skipped)."""
        import websocket

        self.ws.settimeout(wait_s)
        try:
            message = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return None
        if isinstance(message, bytes):
            return {"type": "<binary>", "data": {}}
        if message == "" and not self.ws.connected:  # a close frame: websocket-client answers it, returns ""
            raise websocket.WebSocketConnectionClosedException("ComfyUI closed the websocket")
        return json.loads(message)

    def history(self, prompt_id: str) -> dict:
        """The prompt's history entry ({} while it is queued or running: ComfyUI writes it when done)."""
        response = self.http.get(f"/history/{prompt_id}")
        response.raise_for_status()
        return response.json().get(prompt_id, {})

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

    def view(self, image: dict) -> bytes:
        response = self.http.get("/view", params={"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                                                  "type": image.get("type", "output")})
        response.raise_for_status()
        return response.content

    def interrupt(self) -> None:
        self.http.post("/interrupt", json={})

    def upload(self, name: str, data: bytes) -> str:
        response = self.http.post("/upload/image", files={"image": (name, data, "image/png")},
                                  data={"overwrite": "true"})
        response.raise_for_status()
        body = response.json()
        return f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else body["name"]


def _malformed(error: BaseException) -> str:
    """What was wrong with a server's answer, in words (not a Python exception's name)."""
    import json

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


def history_failure(entry: dict) -> str | None:
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
class _Run:
    """What following one prompt's messages gathered."""

    cached: list[str]
    executed: list[str]
    reconnects: int = 0
    history: dict | None = None  # the finished prompt's /history entry, when it was read after a drop


# ---- the engine ------------------------------------------------------------------------------------

class ComfyUIEngine(BaseEngine):
    name = "comfyui"
    # One image per scheduler call (each saved as it arrives; see the module docstring on seeds).
    capabilities = Capabilities(needs_weights=False, network=True, img2img=True, deterministic=True, max_batch=1,
                                img2img_scales_steps=False)
    Options = ComfyUIOptions

    def __init__(self, settings: "Settings", reason: str = ""):
        super().__init__(settings, reason)
        self.config = engine_settings(settings)
        self._client: ComfyClient | None = None
        self._announced = False

    @classmethod
    def availability(cls, settings: "Settings", request: "RenderRequest") -> str | None:
        config = engine_settings(settings)
        if not config.url:
            return "no url under [engines.comfyui] in echo-os.toml"
        try:
            import httpx
            import websocket  # noqa: F401 - only to check it is installed before a prompt is sent
        except ImportError:
            return 'httpx and websocket-client are not installed (pip install "echo-os[hosted]")'
        try:
            httpx.get(config.url.rstrip("/") + "/system_stats", timeout=config.connect_timeout_s).raise_for_status()
        except httpx.HTTPError as error:
            return f"ComfyUI at {config.url} does not answer ({type(error).__name__})"
        try:
            options = ComfyUIOptions.model_validate(dict(request.options))
            workflow = get_workflow(settings, workflow_name(config, request, options))
        except (ValueError, UsageError):
            return None  # a wrong option or template is the request's error: check_request says it in one line
        return missing_on_server(config, workflow, options)

    @classmethod
    def check_request(cls, settings: "Settings", request: "RenderRequest", options: EngineOptions) -> None:
        config = engine_settings(settings)
        workflow = get_workflow(settings, workflow_name(config, request, options))  # type: ignore[arg-type]
        init = options.init_image  # type: ignore[attr-defined]
        if request.init_image is not None:
            if "init_image" not in workflow.bindings:
                raise OptionError(f"workflow {workflow.name} binds no init_image, so it cannot refine; name one that "
                                  "does with -o workflow=NAME (e.g. sdxl-img2img) or set refine_workflow under "
                                  "[engines.comfyui]", "options.workflow")
        elif init is not None:
            if "init_image" not in workflow.bindings:
                raise OptionError(f"workflow {workflow.name} binds no init_image", "options.init_image")
            from echo_os.engines.inputs import option_image_path

            option_image_path(settings, init)  # inside the workspace, a regular image that decodes whole
        elif "init_image" in workflow.bindings:
            raise OptionError(f"workflow {workflow.name} needs an init image: -o init_image=PATH", "options.init_image")
        if request.loras or request.ip_adapter is not None:
            raise OptionError("engine comfyui takes no LoRAs or reference images (put them in the workflow)", "loras")

    @property
    def client(self) -> ComfyClient:
        if self._client is None:
            if not self.config.url:
                raise UsageError(f"engine comfyui has no url: set url under [engines.comfyui] in "
                                 f"{self.settings.config_toml}.")
            try:
                self._client = ComfyClient(self.config.url or "", self.config.timeout_s, self.config.connect_timeout_s)
            except ImportError:
                raise UsageError('engine comfyui needs httpx and websocket-client: pip install "echo-os[hosted]"') from None
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def template_digest(self, request: "RenderRequest") -> str | None:
        try:
            options = ComfyUIOptions.model_validate(dict(request.options))
            return get_workflow(self.settings, workflow_name(self.config, request, options)).digest
        except (ValueError, UsageError):
            return None

    def values_for(self, request: "RenderRequest", seed: int, options: ComfyUIOptions, init_name: str | None) -> dict:
        """The request's values by binding name (a template binds what it has)."""
        sampler, scheduler = SAMPLERS.get(request.scheduler, (request.scheduler, "normal"))
        values: dict[str, Any] = {"prompt": request.full_prompt, "negative": request.negative_prompt or "",
                                  "seed": seed, "steps": request.steps, "cfg": request.cfg, "width": request.width,
                                  "height": request.height, "batch_size": 1, "sampler": sampler,
                                  "scheduler": scheduler}
        checkpoint = options.checkpoint or self.config.checkpoint
        if checkpoint:
            values["checkpoint"] = checkpoint
        if init_name:
            values["init_image"] = init_name
        if request.init_image is not None:
            values["strength"] = request.init_image.strength
        return values

    def render(self, requests: "list[RenderRequest]", *, progress: ProgressCallback | None = None,
               cancel: threading.Event | None = None) -> list[RenderResult]:
        import httpx
        import websocket

        results = []
        for request in requests:
            if cancel is not None and cancel.is_set():
                raise CancelledError("render cancelled")
            options = ComfyUIOptions.model_validate(dict(request.options))
            workflow = get_workflow(self.settings, workflow_name(self.config, request, options))
            started = time.perf_counter()
            try:
                images = self._render_request(request, workflow, options, progress, cancel)
            except (httpx.HTTPError, websocket.WebSocketException, OSError) as error:
                self.close()
                raise ComfyUIError(f"engine comfyui: lost ComfyUI at {self.config.url} ({type(error).__name__}: "
                                   f"{error}); images already saved are kept".replace("\n", " ")) from None
            except (KeyError, IndexError, TypeError, AttributeError, ValueError) as error:  # it answered, oddly
                self.close()
                raise ComfyUIError(f"engine comfyui: ComfyUI at {self.config.url} sent an answer this engine "
                                   f"cannot read ({_malformed(error)}); images already saved are kept") from None
            runtime = RuntimeInfo(engine=self.name, reason=self.reason, device="comfyui", dtype="none",
                                  attention="none")
            results.append(RenderResult(request=request, images=images, runtime=runtime,
                                        timings=Timings(denoise_s=time.perf_counter() - started)))
        return results

    def _render_request(self, request: "RenderRequest", workflow: Workflow, options: ComfyUIOptions,
                        progress: ProgressCallback | None, cancel: threading.Event | None) -> list[RenderedImage]:


        client = self.client
        client.connect()
        if not self._announced:
            self._announced = True
            import sys

            print(f"engine comfyui: prompts are sent to {client.url} (workflow {workflow.name})", file=sys.stderr,
                  flush=True)
        init_name = self._upload_init(request, options)
        # One step per node, plus one per sampling step of the node `steps` is bound to (its `progress`
        # messages), so a real SDXL graph's bar moves while the KSampler works, not only between nodes.
        sampler = workflow.bindings["steps"][0].node if "steps" in workflow.bindings else None
        per_image = len(workflow.graph) + (request.steps if sampler else 0)
        total = per_image * request.count
        done = [0]

        def advance(nodes: int) -> None:
            for _ in range(nodes):
                done[0] += 1
                if progress is not None and done[0] <= total:
                    progress(ProgressEvent(step=done[0], total_steps=total, images=request.count))

        images = []
        for index, seed in enumerate(request.seeds):
            graph = workflow.bind(self.values_for(request, seed, options, init_name))
            prompt_id = client.submit(graph)
            run = self._follow(prompt_id, graph, advance, cancel, sampler, request.steps)
            advance((index + 1) * per_image - done[0])  # nodes ComfyUI did not need to run, cached sampling
            outputs = (run.history or client.history(prompt_id)).get("outputs", {})
            found = [image for node in outputs.values() for image in node.get("images", [])
                     if image.get("type", "output") == "output"]
            if len(found) != 1:
                raise ComfyUIError(f"engine comfyui: workflow {workflow.name} saved {len(found)} images for one seed; "
                                   "a template must save exactly one image per prompt (batch size 1)")
            try:
                image = decode_received_image(client.view(found[0]))
            except ValueError as error:  # not "lost ComfyUI": it answered, with something that is no image
                raise ComfyUIError(f"engine comfyui: ComfyUI at {client.url} sent {error} for "
                                   f"{found[0].get('filename')!r} (workflow {workflow.name})") from None
            images.append(RenderedImage(image=image, seed=seed, provenance={
                "provider": "comfyui", "url": client.url, "prompt_id": prompt_id, "workflow": workflow.name,
                "workflow_path": str(workflow.path) if workflow.path else None, "graph": graph,
                "template_sha256": workflow.digest,
                "cached_nodes": run.cached, "reproducible": True, "reconnects": run.reconnects,
                **({"strength": request.init_image.strength, "strength_bound": "strength" in workflow.bindings}
                   if request.init_image is not None else {})}))
        return images

    def _upload_init(self, request: "RenderRequest", options: ComfyUIOptions) -> str | None:
        """POST /upload/image with the refine's init image (checked against its sha256, named by it, so
        another refine's upload never overwrites it) or `-o init_image`; None without one."""
        if request.init_image is not None:
            from echo_os.engines.inputs import read_init_image

            _, data = read_init_image(self.settings, request.init_image)
            return self.client.upload(f"echo-os-init-{request.init_image.sha256[:16]}.png", data)
        if options.init_image:  # inside the workspace only, checked again here (a job may be old)
            from echo_os.engines.inputs import read_option_image

            path, data = read_option_image(self.settings, options.init_image)
            return self.client.upload(path.name, data)
        return None

    def _follow(self, prompt_id: str, graph: dict, advance, cancel: threading.Event | None,
                sampler: str | None = None, steps: int = 0) -> _Run:
        """Read the websocket until `executing` with node null for this prompt; after a dropped socket,
        reconnect and read /history (see the module docstring)."""
        import websocket

        run = _Run(cached=[], executed=[])
        sampled = 0
        deadline = time.monotonic() + self.config.timeout_s
        interrupted_by_us = False
        failure: str | None = None
        quiet_since = time.monotonic()
        while True:
            if cancel is not None and cancel.is_set() and not interrupted_by_us:
                self.client.interrupt()
                interrupted_by_us = True
            if time.monotonic() > deadline:
                self.client.interrupt()
                raise ComfyUIError(f"engine comfyui: no answer within {self.config.timeout_s:g} s; interrupted")
            try:
                message = self.client.receive(0.25)
            except (websocket.WebSocketConnectionClosedException, ConnectionError) as error:
                run.reconnects += 1
                if run.reconnects > RECONNECT_TRIES:
                    raise ComfyUIError(f"engine comfyui: the websocket to {self.client.url} dropped "
                                       f"{run.reconnects} times during one prompt ({type(error).__name__})") from None
                self.client.reconnect(deadline)
                message = None
                quiet_since = 0.0  # ask /history now: what finished while we were away is only there
            if message is None:
                # After a drop, the history is the record of what was missed: read it at once, then after
                # every 2 s of silence (a server may route this client's messages to the old socket a while).
                if run.reconnects and time.monotonic() - quiet_since >= 2.0:
                    quiet_since = time.monotonic()
                    entry = self.client.history(prompt_id)
                    if entry.get("status") is None and not self.client.queued(prompt_id):
                        entry = self.client.history(prompt_id)  # it may have finished between the two calls
                        if entry.get("status") is None:
                            raise ComfyUIError(f"engine comfyui: ComfyUI at {self.client.url} no longer knows prompt "
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


@hookimpl
def register_engines(register) -> None:
    register(ComfyUIEngine)
