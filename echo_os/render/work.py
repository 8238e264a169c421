"""The work a job asks for, estimated per kind in one place, and the limits an API submission is held to
(issue 25, red-team item 9: 8192x8192 at 120 fps was accepted by /api/animatic and its worker passed
5.5 GB within a minute; every other kind had per-field bounds but none on the whole).

Two figures per job, each with its limit:
- `memory_bytes`: the peak of the largest single pipeline call (activations, not the weights, which
  the model cache accounts for): an image's denoise and VAE decode, a clip's decode of its frames, an
  animatic's encoder. Bounded by MAX_CALL_BYTES.
- `megapixel_steps`: the denoising work of the whole job (images x megapixels x steps; a clip's frames
  count as images; an animatic's pixels encoded count one step each per megapixel), so one job cannot
  hold a worker for days. Bounded by MAX_JOB_MEGAPIXEL_STEPS; and images per job by MAX_JOB_IMAGES.

A job over a limit is refused when it is submitted (echo_os.api.deps.Submitter): a 422 on the body field
to lower (`WorkLimitError.option`), naming the estimate and the limit. The estimates are deliberately
simple and cautious (the same per-megapixel figure the batch sizer uses); the limits sit far above every
job the API's own examples and the CLI's defaults make, and well below what exhausts a worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from echo_os.errors import OptionError
from echo_os.render.batching import _BYTES_PER_MEGAPIXEL_16BIT

if TYPE_CHECKING:
    from echo_os.render.requests import RenderRequest

GIB = 1024**3
MEGAPIXEL = 1024 * 1024
# The largest job the API takes without asking: 1000 images (a story of MAX_PROMPTS scenes) of 1024x1024
# at 50 steps. One render of 64 images of 4096x4096 at 200 steps (each field within its own bound) is
# four times that.
MAX_JOB_IMAGES = 1000
MAX_JOB_MEGAPIXEL_STEPS = MAX_JOB_IMAGES * 1 * 50
# One pipeline call's activations: what an 80 GB card (or a large workstation's RAM) holds beside the
# weights. One 4096x4096 image (the largest side a request takes) is estimated at 48 GiB.
MAX_CALL_BYTES = 64 * GIB
SVD_DEFAULT_FRAMES = 14
SVD_DEFAULT_STEPS = 25


class WorkLimitError(OptionError):
    """A job over a work or memory limit; `option` is the body field to lower."""


@dataclass(frozen=True)
class Work:
    """What a job asks for: `images` made, `megapixel_steps` of denoising work, the peak `memory_bytes`
    of its largest pipeline call, and in words what was counted (`what`, for the 422)."""

    images: int
    megapixel_steps: float
    memory_bytes: int
    what: str

    def __add__(self, other: "Work") -> "Work":
        return Work(self.images + other.images, self.megapixel_steps + other.megapixel_steps,
                    max(self.memory_bytes, other.memory_bytes), self.what if self.what == other.what else "the job")


def _megapixels(width: int, height: int) -> float:
    return width * height / MEGAPIXEL


def _image_bytes(width: int, height: int, dtype: str) -> int:
    """One image's activations at the peak (the VAE decode), as echo_os.render.scheduler estimates it."""
    return int(_BYTES_PER_MEGAPIXEL_16BIT * _megapixels(width, height) * (2 if dtype == "float32" else 1))


def _option(request: "RenderRequest", key: str, default: int) -> int:
    value = request.options.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def image_work(request: "RenderRequest") -> Work:
    """An image request (render, refine, a batch scene, a compare cell): count images of its size at its
    steps; the peak is one image's (the batch sizer fits count into memory, one image per call at least)."""
    size = f"{request.width}x{request.height}"
    return Work(request.count, request.count * _megapixels(request.width, request.height) * request.steps,
                _image_bytes(request.width, request.height, request.dtype),
                f"{request.count} image(s) of {size} at {request.steps} steps")


def clip_work(request: "RenderRequest") -> Work:
    """A clip (echo-os animate, Stable Video Diffusion): frames denoised together at the clip's size, then
    decoded `decode_chunk_size` frames per VAE call (all of them when not given), beside every frame held
    as float32 RGB."""
    frames = _option(request, "frames", SVD_DEFAULT_FRAMES)
    chunk = min(frames, _option(request, "decode_chunk_size", frames))
    megapixels = _megapixels(request.width, request.height)
    decode = chunk * _image_bytes(request.width, request.height, request.dtype)
    held = frames * request.width * request.height * 3 * 4
    return Work(request.count, request.count * frames * megapixels * request.steps, decode + held,
                f"{request.count} clip(s) of {frames} frames of {request.width}x{request.height} at {request.steps} "
                f"steps, decoded {chunk} frames at a time")


def asset_work(request: "RenderRequest") -> Work:
    """A 3D model or a sound: a latent of fixed size per asset (a mesh's marching-cubes grid, a few seconds
    of audio latent), counted as one megapixel per asset and step; its peak as one 1024x1024 image."""
    return Work(request.count, request.count * request.steps, _image_bytes(1024, 1024, request.dtype),
                f"{request.count} {request.output}(s) at {request.steps} steps")


def request_work(request: "RenderRequest") -> Work:
    """The work of one render request, by its output kind."""
    if request.output == "video":
        return clip_work(request)
    if request.output in ("mesh", "audio"):
        return asset_work(request)
    return image_work(request)


def animatic_work(width: int, height: int, frames: int) -> Work:
    """An animatic: no denoising, `frames` frames encoded; the largest video echo_os.artifacts.encode takes
    (MAX_VIDEO_PIXELS: an hour of 1920x1080 at 24 fps) counts as the largest job. The peak is the H.264
    encoder's frames in flight (encoder_bytes)."""
    from echo_os.artifacts.encode import MAX_VIDEO_PIXELS, encoder_bytes

    per_pixel = MAX_JOB_MEGAPIXEL_STEPS / MAX_VIDEO_PIXELS
    return Work(0, frames * width * height * per_pixel, encoder_bytes(width, height),
                f"{frames:,} frames of {width}x{height} to encode")


def evolve_work(rounds: int, per_round: int) -> Work:
    """An evolve loop: at most rounds x per_round candidates, each a refine of the start image (its size
    and steps are the start artifact's, known when the job runs; counted here as 1024x1024 at 30 steps)."""
    images = rounds * per_round
    return Work(images, images * 30.0, _image_bytes(1024, 1024, "auto"),
                f"{rounds} round(s) of {per_round} candidate(s) ({images:,} images)")


def job_work(kind: str, spec: Any) -> Work:
    """The work of an API job (an echo_os.api.specs spec, told apart by its `kind`): an animatic, an evolve
    loop, or its render items (render, refine, batch, compare, clip) summed."""
    kind = getattr(spec, "kind", kind)
    if kind == "animatic":
        animatic = spec.animatic
        width, height = animatic.size if animatic.size is not None else (1024, 1024)
        return animatic_work(width, height, animatic.frames)
    if kind == "evolve":
        return evolve_work(spec.evolve.rounds, spec.evolve.per_round)
    total: Work | None = None
    for item in spec.items:
        work = request_work(item)
        total = work if total is None else total + work
    if total is None:
        return Work(0, 0.0, 0, "nothing")
    if len(spec.items) > 1:
        total = Work(total.images, total.megapixel_steps, total.memory_bytes,
                     f"{len(spec.items):,} requests making {total.images:,} image(s)")
    return total


# The body field a client lowers to bring each kind of job under a limit: (images, work, memory).
_FIELDS: dict[str, tuple[str, str, str]] = {
    "render": ("count", "steps", "size"),
    "refine": ("count", "steps", "size"),
    "batch": ("prompts", "steps", "size"),
    "compare": ("seeds", "steps", "size"),
    "clip": ("frames", "frames", "decode_chunk_size"),
    "animatic": ("fps", "fps", "size"),
    "evolve": ("per_round", "rounds", "target"),
}


def check_job_work(kind: str, spec: Any) -> Work:
    """The job's Work, or WorkLimitError on the body field to lower, naming the estimate and the limit."""
    work = job_work(kind, spec)
    kind = getattr(spec, "kind", kind)
    story = getattr(spec, "story", None)
    if kind == "batch" and story is not None and story.kind == "storyboard":
        kind = "storyboard"
    images_field, work_field, memory_field = _FIELDS.get(kind, ("storyboard", "steps", "size"))
    if work.images > MAX_JOB_IMAGES:
        raise WorkLimitError(f"{work.what}: a job makes at most {MAX_JOB_IMAGES:,} images; split it into "
                             "several jobs", images_field)
    if work.megapixel_steps > MAX_JOB_MEGAPIXEL_STEPS * (1 + 1e-9):  # the float sum of exactly the limit fits
        raise WorkLimitError(f"{work.what} are {work.megapixel_steps:,.0f} megapixel-steps of work; a job is at "
                             f"most {MAX_JOB_MEGAPIXEL_STEPS:,} (1,000 images of 1024x1024 at 50 steps): lower "
                             f"{work_field}, size or the number of images, or split the job", work_field)
    if work.memory_bytes > MAX_CALL_BYTES:
        raise WorkLimitError(f"{work.what} would need about {work.memory_bytes / GIB:,.1f} GiB in one pipeline "
                             f"call; a call takes at most {MAX_CALL_BYTES // GIB} GiB: lower {memory_field}",
                             memory_field)
    return work
