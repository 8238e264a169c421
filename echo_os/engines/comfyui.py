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

Three modules: this one (settings, options, availability, the engine), engines/comfyui_workflows.py (reading
and binding templates) and engines/comfyui_client.py (the HTTP and websocket protocol, following a prompt).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
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
from echo_os.engines.comfyui_client import (
    ComfyClient,
    ComfyUIError,
    JSONObject,
    follow_prompt,
    malformed,
)
from echo_os.engines.comfyui_workflows import Workflow, get_workflow
from echo_os.engines.hookspecs import hookimpl
from echo_os.engines.inputs import decode_received_image
from echo_os.errors import CancelledError, OptionError, UsageError, connection_words

if TYPE_CHECKING:
    from echo_os.render.requests import RenderRequest
    from echo_os.settings import Settings

# echo-os scheduler names -> ComfyUI's (sampler_name, scheduler).
SAMPLERS: dict[str, tuple[str, str]] = {
    "euler": ("euler", "normal"), "euler_a": ("euler_ancestral", "normal"), "dpmpp_2m": ("dpmpp_2m", "normal"),
    "dpmpp_2m_karras": ("dpmpp_2m", "karras"), "ddim": ("ddim", "ddim_uniform"), "heun": ("heun", "normal"),
    "unipc": ("uni_pc", "normal"),
}


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


# ---- which template, and whether the server has what it needs ----------------------------------

def workflow_name(config: "ComfyUISettings", request: "RenderRequest", options: "ComfyUIOptions") -> str:
    """`-o workflow=`, else the refine template for a request with an init image, else the default."""
    if options.workflow:
        return options.workflow
    return config.refine_workflow if request.init_image is not None else config.workflow


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
    infos: dict[str, JSONObject] = {}
    base = (config.url or "").rstrip("/")  # availability asks this only of a configured url
    for node_id, node in sorted(graph.items()):
        kind = node["class_type"]
        if kind not in infos:
            try:
                response = httpx.get(f"{base}/object_info/{kind}", timeout=config.connect_timeout_s)
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
        if not isinstance(options, ComfyUIOptions):  # the renderer passes this engine's Options
            options = ComfyUIOptions.model_validate(dict(request.options))
        workflow = get_workflow(settings, workflow_name(config, request, options))
        init = options.init_image
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

    def values_for(self, request: "RenderRequest", seed: int, options: ComfyUIOptions, init_name: str | None) -> dict[str, Any]:
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
                raise ComfyUIError(f"engine comfyui: lost ComfyUI at {self.config.url} ({connection_words(error)}); "
                                   "images already saved are kept".replace("\n", " ")) from None
            except (KeyError, IndexError, TypeError, AttributeError, ValueError) as error:  # it answered, oddly
                self.close()
                raise ComfyUIError(f"engine comfyui: ComfyUI at {self.config.url} sent an answer this engine "
                                   f"cannot read ({malformed(error)}); images already saved are kept") from None
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
            run = follow_prompt(client, prompt_id, graph, advance, cancel, timeout_s=self.config.timeout_s,
                                sampler=sampler, steps=request.steps)
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

@hookimpl
def register_engines(register: Callable[[type[Any]], object]) -> None:
    register(ComfyUIEngine)
