"""The `openai` engine: images from the OpenAI Images API (or any server that speaks it), through the
official `openai` client (`pip install "echo-os[hosted]"`).

Privacy first: it is a network engine, so `auto` never asks it unless the workspace allows it
(`[engines.openai] allow = true`, or `[engines] allow_network = true`) and availability() finds a key
(OPENAI_API_KEY). The client reads OPENAI_API_KEY and OPENAI_BASE_URL itself, so any compatible server
works. The first request of a command prints one line saying where prompts are sent.

- Models: gpt-image-1, gpt-image-1-mini, gpt-image-1.5, gpt-image-2 (`-o model=...`, default from
  `[engines.openai] model`); dall-e-2/3 are refused (retired in May 2026). Sizes: 1024x1024, 1536x1024,
  1024x1536; gpt-image-2 any WxH in multiples of 16 within its limits (GPT_IMAGE_2_LIMITS).
- Not deterministic: no seed is sent (the API takes none). meta.json's `provenance` records the provider,
  model, revised prompt, usage block and response id, and `reproducible: false`; replay says it cannot
  reproduce the image.
- Faults: tenacity retries 429 rate_limit_exceeded, 408, 409, 5xx, timeouts, dropped connections and
  malformed answers, waiting what `retry-after-ms` / `Retry-After` says (plus jitter), else exponential
  back-off with jitter; `insufficient_quota` stops at once. The client's own retries are off (max_retries
  0) because it would retry insufficient_quota too. A pacer spaces requests to `images_per_minute`.
- Edits (POST /images/edits): a refine's init image (request.init_image, `echo-os refine --engine openai`;
  or `-o init_image=PATH`) and the characters' reference images (request.ip_adapter, from the story
  bible) are sent as the edit's images, the init image first, at most MAX_EDIT_IMAGES in all. The
  endpoint takes no strength: provenance says `strength_sent: false` beside the strength asked. Each
  image is read through engines/inputs.py (its recorded sha256 checked) and keyed in the cache by it.
- A response cache (artifacts/.cache/openai/) keyed by the full request body, the sent images' sha256s,
  the server and the images' seeds (echo-os's, never sent; they tell apart image 1 and 2 of `--count 2`,
  and a new random seed is a new image): the same request pays once; `--no-cache`
  (Settings.response_cache) or `[engines.openai] cache = false` turns it off.

The answer's checks, the errors' sorting (retried or not, named in one line) and the response cache are
in engines/openai_answers.py; this module builds the requests, sends them and turns answers into images.
"""

from __future__ import annotations

import base64
import hashlib
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
from echo_os.engines.openai_answers import (
    CacheEntry,
    MalformedResponse,
    ResponseCache,
    describe,
    error_code,
    is_retryable,
    parse_answer,
    retry_after_seconds,
)
from echo_os.errors import CancelledError, EchoError, OptionError, UsageError

if TYPE_CHECKING:
    import openai

    from echo_os.render.requests import RenderRequest
    from echo_os.settings import Settings

PROVIDER = "openai"
MODELS: tuple[str, ...] = ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2")
RETIRED: dict[str, str] = {
    "dall-e-2": "dall-e-2 was retired by OpenAI in May 2026",
    "dall-e-3": "dall-e-3 was retired by OpenAI in May 2026",
}
FIXED_SIZES: tuple[tuple[int, int], ...] = ((1024, 1024), (1536, 1024), (1024, 1536))
# gpt-image-2 takes any size within these limits (OpenAI's image generation guide, 2026): both sides
# multiples of 16, the long side at most 3840, the long side at most 3 times the short one, and between
# 655,360 and 8,294,400 pixels.
GPT_IMAGE_2_LIMITS = {"multiple": 16, "max_side": 3840, "max_ratio": 3.0, "min_pixels": 655_360,
                      "max_pixels": 8_294_400}
MAX_IMAGES_PER_CALL = 10  # the API's limit on n
# The gpt-image models take up to 16 images on POST /images/edits (openai-python's `images.edit` docs:
# "You can provide up to 16 images"): the init image and the reference images together.
MAX_EDIT_IMAGES = 16


class ProviderError(EchoError):
    """The hosted provider failed or refused; the message is one line naming what to do."""


def _check_model(value: str) -> str:
    if value in RETIRED:
        raise ValueError(f"{RETIRED[value]}; use one of {', '.join(MODELS)}")
    if value not in MODELS:
        raise ValueError(f"unknown model {value!r}; use one of {', '.join(MODELS)}")
    return value


class OpenAIOptions(EngineOptions):
    """`-o KEY=VALUE` for the openai engine; None means the API's default (the key is not sent)."""

    model: str | None = None  # None: [engines.openai] model
    quality: Literal["auto", "low", "medium", "high"] | None = None
    background: Literal["auto", "transparent", "opaque"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    moderation: Literal["auto", "low"] | None = None  # generations only (the edits endpoint takes none)
    # An image file to edit: the request goes to POST /images/edits with it (img2img). A refine's own init
    # image (request.init_image: the parent artifact) takes its place.
    init_image: str | None = None

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        return None if value is None else _check_model(value)


class OpenAISettings(BaseModel):
    """`[engines.openai]` in echo-os.toml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: bool = False  # may `auto` (and --engine openai) send prompts to the provider
    model: str = "gpt-image-1"
    # Client-side pacing: requests are spaced so at most this many images start per minute. 5 is the
    # lowest usage tier's limit for gpt-image-1; raise it to your account's limit.
    images_per_minute: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=6, ge=1, le=20)  # tries per request, the first included
    retry_initial_s: float = Field(default=1.0, ge=0)  # back-off without a Retry-After: initial * 2^n, jittered
    retry_max_s: float = Field(default=60.0, ge=0)
    timeout_s: float = Field(default=180.0, gt=0)  # one request (gpt-image calls can take a minute)
    cache: bool = True

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return _check_model(value)


def engine_settings(settings: "Settings") -> OpenAISettings:
    return table_settings(settings, "openai", OpenAISettings)


def model_for(settings: "Settings", request: "RenderRequest", options: OpenAIOptions) -> str:
    """`-o model=`, else `--model` when it names an OpenAI model, else the workspace's default."""
    if options.model:
        return options.model
    if request.model in MODELS or request.model in RETIRED:
        try:
            return _check_model(request.model)
        except ValueError as error:
            raise OptionError(f"--model: {error}", "model") from None
    return engine_settings(settings).model


def check_size(model: str, width: int, height: int) -> None:
    """Raise an OptionError on `size` naming what the model takes."""
    if model != "gpt-image-2":
        if (width, height) not in FIXED_SIZES:
            allowed = ", ".join(f"{w}x{h}" for w, h in FIXED_SIZES)
            raise OptionError(f"model {model} renders only the sizes {allowed}, not {width}x{height}", "size")
        return
    limits = GPT_IMAGE_2_LIMITS
    long, short = max(width, height), min(width, height)
    if (width % limits["multiple"] or height % limits["multiple"] or long > limits["max_side"]
            or long > limits["max_ratio"] * short
            or not limits["min_pixels"] <= width * height <= limits["max_pixels"]):
        raise OptionError(
            f"gpt-image-2 takes sizes whose sides are multiples of 16, at most {limits['max_side']}, at most 3:1, "
            f"with {limits['min_pixels']:,} to {limits['max_pixels']:,} pixels (e.g. 1024x1024, 1536x864); "
            f"not {width}x{height}", "size")


@dataclass(frozen=True)
class EditImage:
    """One image sent to POST /images/edits: the init image (role "init") or a character's reference
    image (role "reference", `name` the character)."""

    role: Literal["init", "reference"]
    name: str
    filename: str
    sha256: str
    data: bytes = field(repr=False)


def edit_images(settings: "Settings", request: "RenderRequest", options: OpenAIOptions) -> list[EditImage]:
    """The images an edit sends, in order: the init image (the refine's, else `-o init_image`), then every
    reference image of every character; none for a plain text-to-image request. OptionError over
    MAX_EDIT_IMAGES; UsageError for an image that changed since it was recorded."""
    from echo_os.engines.inputs import read_init_image, read_reference_image

    images: list[EditImage] = []
    if request.init_image is not None:
        path, data = read_init_image(settings, request.init_image)
        images.append(EditImage("init", request.init_image.artifact_id or path.name, path.name,
                                request.init_image.sha256, data))
    elif options.init_image is not None:  # inside the workspace only, checked again here (a job may be old)
        from echo_os.engines.inputs import read_option_image

        path, data = read_option_image(settings, options.init_image)
        images.append(EditImage("init", path.name, path.name, hashlib.sha256(data).hexdigest(), data))
    references = [(ref.name, image) for ref in request.ip_adapter.references for image in ref.images] \
        if request.ip_adapter is not None else []
    if len(images) + len(references) > MAX_EDIT_IMAGES:
        raise OptionError(f"engine openai sends at most {MAX_EDIT_IMAGES} images to an edit (the init image and the "
                          f"reference images together), not {len(images) + len(references)}; give the characters "
                          "fewer reference images", "ip_adapter")
    for name, image in references:
        path, data = read_reference_image(image)
        images.append(EditImage("reference", name, path.name, image.sha256, data))
    return images


class ImagesPacer:
    """Spaces request starts so no more than `per_minute` images start in any minute, evenly (a story
    of 40 scenes at 20/min takes two minutes instead of collecting 429s). Thread-safe; hand-written
    because it is one lock and one timestamp, and a rate-limit library would add a dependency for it."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.interval = 60.0 / per_minute
        self._next = 0.0
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep

    def reserve(self, images: int) -> float:
        """Seconds to wait before starting a request for `images` images (the slot is taken now)."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + images * self.interval
            return start - now


class OpenAIEngine(BaseEngine):
    name = "openai"
    # One image per scheduler call, so each image is saved as soon as it arrives and a provider that
    # fails mid-story loses nothing already paid for; render() itself sends up to 10 images as n.
    # img2img and reference images go to POST /images/edits (edit_images).
    capabilities = Capabilities(needs_weights=False, network=True, img2img=True, reference_images=True,
                                deterministic=False, max_batch=1)
    Options = OpenAIOptions

    def __init__(self, settings: "Settings", reason: str = "", client: "openai.OpenAI | None" = None):
        super().__init__(settings, reason)
        self.config = engine_settings(settings)
        self.pacer = ImagesPacer(self.config.images_per_minute)
        self._client = client
        self._announced = False
        self._sleep = time.sleep  # tests record the waits here
        self.cache = ResponseCache(settings.cache_dir / "openai")

    @classmethod
    def knows_model(cls, settings: "Settings", model: str) -> bool:
        return model in MODELS or model in RETIRED  # OpenAI's own model names (`--model gpt-image-1`)

    @classmethod
    def availability(cls, settings: "Settings", request: "RenderRequest") -> str | None:
        import os

        if not os.environ.get("OPENAI_API_KEY"):
            return "no OPENAI_API_KEY is set"
        try:
            import openai  # noqa: F401 - only to check it is installed before anything is sent
            import tenacity  # noqa: F401 - the same
        except ImportError:
            return 'the openai and tenacity packages are not installed (pip install "echo-os[hosted]")'
        return None

    @classmethod
    def check_request(cls, settings: "Settings", request: "RenderRequest", options: EngineOptions) -> None:
        if not isinstance(options, OpenAIOptions):  # the renderer passes this engine's Options
            options = OpenAIOptions.model_validate(dict(request.options))
        model = model_for(settings, request, options)
        check_size(model, request.width, request.height)
        init = options.init_image
        if init is not None and request.init_image is None:
            from echo_os.engines.inputs import option_image_path

            option_image_path(settings, init)
        references = sum(len(ref.images) for ref in request.ip_adapter.references) if request.ip_adapter else 0
        edit = init is not None or request.init_image is not None or references
        if edit and options.moderation is not None:
            raise OptionError("moderation applies to new images only, not to edits (an init image or reference "
                              "images)", "options.moderation")
        if (init is not None or request.init_image is not None) + references > MAX_EDIT_IMAGES:
            raise OptionError(f"engine openai sends at most {MAX_EDIT_IMAGES} images to an edit (the init image and "
                              f"the reference images together); give the characters fewer reference images",
                              "ip_adapter")
        if request.loras:
            raise OptionError("engine openai takes no LoRAs", "loras")

    @property
    def client(self) -> "openai.OpenAI":
        if self._client is None:
            try:
                import openai
                import tenacity  # noqa: F401  (used per request; reported here, before anything is sent)
            except ImportError:
                raise UsageError('the openai engine needs the openai and tenacity packages: '
                                 'pip install "echo-os[hosted]"') from None
            try:
                self._client = openai.OpenAI(max_retries=0, timeout=self.config.timeout_s)
            except openai.OpenAIError as error:  # no key
                raise UsageError(f"engine openai: {error}".splitlines()[0]) from None
        return self._client

    def request_body(self, request: "RenderRequest") -> dict[str, Any]:
        """The fields sent for `request` (JSON to /images/generations, or the form of /images/edits beside
        its images); with the images' sha256s, what the cache is keyed by."""
        options = OpenAIOptions.model_validate(dict(request.options))
        if request.count > MAX_IMAGES_PER_CALL:
            raise OptionError(f"engine openai renders at most {MAX_IMAGES_PER_CALL} images per request", "count")
        body: dict[str, Any] = {"model": model_for(self.settings, request, options), "prompt": request.full_prompt,
                                "n": request.count, "size": f"{request.width}x{request.height}"}
        for key in ("quality", "background", "output_format", "moderation"):
            value = getattr(options, key)
            if value is not None:
                body[key] = value
        return body

    def render(self, requests: "list[RenderRequest]", *, progress: ProgressCallback | None = None,
               cancel: threading.Event | None = None) -> list[RenderResult]:
        results = []
        for request in requests:
            if cancel is not None and cancel.is_set():
                raise CancelledError("render cancelled")
            started = time.perf_counter()
            body = self.request_body(request)
            sent = edit_images(self.settings, request, OpenAIOptions.model_validate(dict(request.options)))
            entry, cached = self._response(body, sent, request.seeds, cancel)
            images = self._images(request, body, sent, entry, cached)
            if progress is not None:
                progress(ProgressEvent(step=1, total_steps=1, images=request.count))
            runtime = RuntimeInfo(engine=self.name, reason=self.reason, device="remote", dtype="none",
                                  attention="none")
            results.append(RenderResult(request=request, images=images, runtime=runtime,
                                        timings=Timings(denoise_s=time.perf_counter() - started)))
        return results

    # ---- one request -------------------------------------------------------------------------------

    def _response(self, body: dict[str, Any], sent: list[EditImage], seeds: list[int],
                  cancel: threading.Event | None) -> tuple[CacheEntry, bool]:
        """(cache entry, came from the cache): {"response": the API's JSON, "request_id": ...}."""
        use_cache = self.config.cache and self.settings.response_cache
        base_url = str(self.client.base_url)
        # The edit's images are part of what is asked: keyed by their content (and order), not their paths.
        keyed = {**body, "images": [[image.role, image.sha256] for image in sent]} if sent else body
        key = ResponseCache.key(base_url, keyed, seeds)
        if use_cache:
            entry = self.cache.get(key)
            if entry is not None:
                return entry, True
        entry = self._call_with_retries(body, sent, cancel)
        if use_cache:
            self.cache.put(key, entry)
        return entry, False

    def _call_with_retries(self, body: dict[str, Any], sent: list[EditImage],
                           cancel: threading.Event | None) -> CacheEntry:
        import openai
        import tenacity

        def wait(retry_state: tenacity.RetryCallState) -> float:
            error = retry_state.outcome.exception() if retry_state.outcome else None
            asked = retry_after_seconds(error) if error is not None else None
            if asked is not None:
                return asked + random.uniform(0, min(1.0, 0.1 * asked + 0.05))
            return tenacity.wait_random_exponential(multiplier=self.config.retry_initial_s,
                                                    max=self.config.retry_max_s)(retry_state)

        def sleep(seconds: float) -> None:
            if cancel is not None:
                if cancel.wait(seconds):
                    raise CancelledError("render cancelled")
            else:
                self._sleep(seconds)

        retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(self.config.max_attempts), wait=wait,
                                     retry=tenacity.retry_if_exception(is_retryable), sleep=sleep, reraise=True)
        try:
            return retrying(self._call_once, body, sent, cancel)
        except openai.APIStatusError as error:
            if error_code(error) == "insufficient_quota":
                raise ProviderError("engine openai: the account has no quota left (insufficient_quota); add credit "
                                    "or raise the limit with the provider, then run the same command again "
                                    "(images already saved are kept)") from None
            if is_retryable(error):
                raise self._gave_up(error) from None
            raise ProviderError(f"engine openai: the provider refused the request ({describe(error)})") from None
        except (openai.APIConnectionError, MalformedResponse) as error:
            raise self._gave_up(error) from None

    def _gave_up(self, error: BaseException) -> ProviderError:
        return ProviderError(f"engine openai: {self.client.base_url} failed {self.config.max_attempts} times, last "
                             f"with {describe(error)}; images already saved are kept, run the same command again "
                             "later to render the rest")

    def _call_once(self, body: dict[str, Any], sent: list[EditImage], cancel: threading.Event | None) -> CacheEntry:
        wait = self.pacer.reserve(body["n"])
        if wait > 0:
            if cancel is not None and cancel.wait(wait):
                raise CancelledError("render cancelled")
            if cancel is None:
                self._sleep(wait)
        if not self._announced:
            self._announced = True
            print(f"engine openai: prompts are sent to {self.client.base_url} (model {body['model']})",
                  file=sys.stderr, flush=True)
        if sent:  # POST /images/edits: one image as `image`, several as `image[]` (how the client sends a list)
            files = [(image.filename, image.data) for image in sent]
            raw = self.client.images.with_raw_response.edit(image=files[0] if len(files) == 1 else files, **body)
        else:
            raw = self.client.images.with_raw_response.generate(**body)
        response = parse_answer(raw.http_response.content, body["n"])
        return {"response": response, "request_id": raw.headers.get("x-request-id")}

    def _images(self, request: "RenderRequest", body: dict[str, Any], sent: list[EditImage], entry: CacheEntry,
                cached: bool) -> list[RenderedImage]:
        response = entry["response"]
        usage = response.get("usage")
        images = []
        for seed, item in zip(request.seeds, response["data"]):
            try:
                image = decode_received_image(base64.b64decode(item["b64_json"]))
            except ValueError as error:  # a cache entry from before answers were checked
                raise ProviderError(f"engine openai: {self.client.base_url} sent {error}; run again with "
                                    "--no-cache") from None
            provenance = {
                "provider": PROVIDER, "base_url": str(self.client.base_url), "model": body["model"],
                "response_id": entry.get("request_id"), "created": response.get("created"),
                "revised_prompt": item.get("revised_prompt"), "usage": usage,
                "options": {k: body[k] for k in ("quality", "background", "output_format", "moderation") if k in body},
                "endpoint": "images/edits" if sent else "images/generations",
                "init_image_sha256": next((image.sha256 for image in sent if image.role == "init"), None),
                "reference_images": [{"name": image.name, "sha256": image.sha256}
                                     for image in sent if image.role == "reference"],
                # The edits endpoint takes no strength: what was asked is recorded, and that it was not sent.
                "strength": request.init_image.strength if request.init_image is not None else None,
                "strength_sent": False,
                "seed_sent": False, "reproducible": False, "cached": cached,
                "negative_prompt_sent": False,
            }
            images.append(RenderedImage(image=image, seed=seed, provenance=provenance))
        return images


@hookimpl
def register_engines(register: Callable[[type[Any]], object]) -> None:
    register(OpenAIEngine)
