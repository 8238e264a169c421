"""SDXL throughput on one device: the plain diffusers loop against every speed-up, in one run.

Builds the full SDXL base architecture with random weights from the configs in benchmarks/sdxl/ (random
weights cost the same compute as real ones; nothing is downloaded) and measures, in one process:

  plain          fp16 on CUDA / fp32 on CPU, PyTorch's SDPA choice, a Python loop over images, no compile
  bf16           bf16, PyTorch's SDPA choice, no compile            (the drift reference, at batch 1)
  sdpa-flash     bf16 with scaled_dot_product_attention restricted to one kernel (batch 1)
  sdpa-cudnn, sdpa-efficient, sdpa-math                             (same, other kernels)
  default-cuda   echo_os' "default-cuda" profile: bf16 + channels_last + torch.compile (UNet, VAE decode)
  cfg-cutoff     default-cuda with CFG off after 40% of the steps (changes the image: opt-in)
  vae            VAE decode alone, batched separately, bf16 eager
  vae-compile    VAE decode alone, compiled as in default-cuda

Each pipeline variant renders end to end (text encoding, denoising, VAE decode, conversion to arrays) at
each batch size; per measurement it reports images per minute sustained after warm-up, the latency of one
call, achieved TFLOP/s and its share of a matmul peak measured first on the same device and dtype, peak
memory (torch.cuda.max_memory_allocated on CUDA; the process's peak RSS on CPU), compile time (first call
minus a warm call) and drift: the max and mean absolute pixel difference (images in [0, 1]) against the
bf16 batch-1 images of the same seeds (VAE variants: against "vae" at batch 1).

FLOPs are counted, not assumed: the real modules run once on the meta device under
torch.utils.flop_counter.FlopCounterMode at the measured size (2 FLOPs per multiply-add; matmul,
convolution and attention). For the SDXL configs at 1024x1024 this gives exactly the figures of
benchmarks/sdxl/flops_1024.json (checked in tests/test_gpu_harness.py).

--time-budget makes a device run fit its 10-minute command limit: before each measurement the script
estimates its cost from what it already measured and skips (and says so) what would not fit.

On a GPU (see benchmarks/README-gpu.md for the device-tool commands):
    python benchmarks/gpu_throughput.py --device cuda --time-budget 540 --out $OUT/gpu.json
On CPU, small configs:
    python benchmarks/gpu_throughput.py --device cpu --config-dir tests/data/tiny_sdxl --sizes 128x128 \
        --steps 4 --batch-sizes 1,2,4 --out cpu.json
Markdown table from saved runs:
    python benchmarks/gpu_throughput.py --table run1.json run2.json
Memory model constants used by echo_os.engines.cuda_profile.pick_batch_size:
    python benchmarks/gpu_throughput.py --memory-model
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from echo_os.engines.cuda_profile import (  # noqa: E402  (after the sys.path line on purpose)
    PROFILES,
    RenderProfile,
    apply_profile,
    cfg_cutoff_step,
    configure_compile_cache,
    decode_latents,
    profile_call_kwargs,
    resolve_sdpa_backend,
    sdpa_backend_context,
    torch_dtype,
)

DEFAULT_CONFIG_DIR = HERE / "sdxl"
PROMPTS = (
    "a lighthouse on a cliff at dusk, storm clouds, cinematic lighting",
    "a detective in a rain-soaked alley, neon signs, 35mm film",
    "a red fox in fresh snow, morning light, telephoto lens",
    "an old library with floating candles, warm light, wide angle",
    "a market street in Marrakech at noon, vivid colours, documentary photo",
    "a spaceship hangar, crew walking to a shuttle, volumetric light",
    "a watercolour of a small harbour town, soft pastel palette",
    "a portrait of an elderly sailor, weathered face, studio lighting",
)
NEGATIVE_PROMPT = "blurry, low quality, watermark"
ALL_VARIANTS = ("plain", "bf16", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "sdpa-math",
                "default-cuda", "cfg-cutoff", "vae", "vae-compile")
DEFAULT_VARIANTS = ("plain", "bf16", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "vae",
                    "default-cuda", "vae-compile", "cfg-cutoff")
# Max abs pixel difference (images in [0, 1]) within which an exact variant counts as "the same image"
# as the bf16 reference. bf16 keeps 8 significant bits (relative step 2**-8 = 0.0039); 8-bit output
# quantises to 1/255 = 0.0039. Kernel and batch-shape changes reorder bf16 sums, each step's rounding
# feeding the next: tolerance of 8/255.
DEFAULT_DRIFT_TOL = 8 / 255


# --- Building SDXL with random weights ----------------------------------------------------------------

def write_clip_tokenizer(folder: Path, vocab_size: int = 49408, max_length: int = 77) -> Path:
    """Write a CLIP BPE tokenizer (vocab.json, merges.txt) of exactly `vocab_size` entries.

    Any tokenizer with CLIP's vocabulary size and max length costs the same as the real one: the text
    encoders always see 77 token ids. Merges join lowercase letter pairs; fillers pad the vocabulary;
    the special tokens take the last two ids as in CLIP (the text encoder pools at the highest id).
    """
    folder.mkdir(parents=True, exist_ok=True)
    from tests.tiny_models import bytes_to_unicode

    byte_chars = list(bytes_to_unicode().values())
    vocab: list[str] = byte_chars + [c + "</w>" for c in byte_chars]
    letters = "abcdefghijklmnopqrstuvwxyz"
    merges: list[str] = []
    room = vocab_size - len(vocab) - 2
    if room < 0:
        raise ValueError(f"a CLIP tokenizer needs a vocabulary of at least {len(vocab) + 2}, got {vocab_size}")
    for a in letters:
        for b in letters:
            for end in ("", "</w>"):
                if len(merges) < room:
                    merges.append(f"{a} {b}{end}")
                    vocab.append(f"{a}{b}{end}")
    vocab += [f"<|filler{i}|>" for i in range(vocab_size - len(vocab) - 2)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == vocab_size
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": max_length,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }), encoding="utf-8")
    return folder


def load_configs(config_dir: Path) -> dict[str, dict]:
    names = ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")
    return {name: json.loads((config_dir / f"{name}_config.json").read_text()) for name in names}


def _quiet_libraries() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


def build_components(config_dir: Path, device: str, seed: int = 0):
    """UNet, VAE and both text encoders from their configs, random weights, float32, built on `device`.

    Building inside `torch.device(device)` allocates and initialises the weights where they will run:
    2.6 B parameters take seconds on a GPU, with no CPU copy. The same seed gives the same weights.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    _quiet_libraries()
    configs = load_configs(config_dir)
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"]))
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(),
            "text_encoder_2": text_encoder_2.eval()}


def build_random_sdxl(config_dir: Path, device: str, seed: int = 0, tokenizer_root: Path | None = None):
    """A StableDiffusionXLPipeline of random weights (float32; apply a profile to set dtype etc.)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    configs = load_configs(config_dir)
    root = tokenizer_root or Path(tempfile.mkdtemp(prefix="sdxl-tokenizer-"))
    tokenizers = []
    for name in ("text_encoder", "text_encoder_2"):
        cfg = configs[name]
        folder = root / f"{name}-{cfg['vocab_size']}-{cfg['max_position_embeddings']}"
        if not (folder / "vocab.json").exists():
            write_clip_tokenizer(folder, cfg["vocab_size"], cfg["max_position_embeddings"])
        tokenizers.append(CLIPTokenizer.from_pretrained(str(folder), local_files_only=True))
    components = build_components(config_dir, device, seed)
    pipe = StableDiffusionXLPipeline(
        **components,
        tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1],
        scheduler=EulerDiscreteScheduler.from_config(configs["scheduler"]),
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- FLOPs ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FlopCounts:
    """Counted on the meta device at one size, batch 1."""

    width: int
    height: int
    unet_forward: int
    vae_decode: int
    text_encoders_per_prompt: int

    def per_image(self, steps: int, cfg: bool, cfg_cutoff: float | None = None) -> int:
        guided = cfg_cutoff_step(cfg_cutoff, steps) if (cfg and cfg_cutoff) else (steps if cfg else 0)
        unet = self.unet_forward * (2 * guided + (steps - guided))
        # With CFG the negative prompt is encoded too (we always pass one, as users do).
        return unet + self.vae_decode + self.text_encoders_per_prompt * (2 if cfg else 1)


def count_flops(config_dir: Path, width: int, height: int) -> FlopCounts:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    components = build_components(config_dir, "meta")
    unet, vae = components["unet"], components["vae"]
    configs = load_configs(config_dir)
    latent_scale = 2 ** (len(configs["vae"]["block_out_channels"]) - 1)
    lh, lw = height // latent_scale, width // latent_scale
    te1, te2 = components["text_encoder"], components["text_encoder_2"]
    add_dim = configs["unet"]["projection_class_embeddings_input_dim"]
    time_dim = configs["unet"].get("addition_time_embed_dim") or 0
    pooled_dim = add_dim - 6 * time_dim

    def flops_of(fn) -> int:
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            fn()
        return int(counter.get_total_flops())

    with torch.device("meta"):
        sample = torch.empty(1, unet.config.in_channels, lh, lw)
        hidden = torch.empty(1, te1.config.max_position_embeddings, unet.config.cross_attention_dim)
        added = {"text_embeds": torch.empty(1, pooled_dim), "time_ids": torch.empty(1, 6)}
        ids = torch.zeros(1, te1.config.max_position_embeddings, dtype=torch.long)
        unet_flops = flops_of(lambda: unet(sample, torch.tensor([999.0]), encoder_hidden_states=hidden,
                                           added_cond_kwargs=added))
        vae_flops = flops_of(lambda: vae.decode(torch.empty(1, vae.config.latent_channels, lh, lw)))
        text_flops = flops_of(lambda: (te1(ids, output_hidden_states=True),
                                       te2(ids, output_hidden_states=True)))
    return FlopCounts(width, height, unet_flops, vae_flops, text_flops)


# --- Device measurements ----------------------------------------------------------------------------

def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def measure_matmul_peak(device: str, dtype_name: str, seconds: float = 1.0) -> float:
    """TFLOP/s of a large square matmul in `dtype_name` on `device` (8192 on CUDA, 1024 on CPU)."""
    import torch

    n = 8192 if device.startswith("cuda") else 1024
    dtype = torch_dtype(dtype_name)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    reps, started = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        if reps % 5 == 0:
            synchronize(device)
            if time.perf_counter() - started > seconds:
                break
    elapsed = time.perf_counter() - started
    return 2 * n**3 * reps / elapsed / 1e12


class PeakMemory:
    """Peak GPU memory (allocator) on CUDA; peak resident set size of the process on CPU."""

    def __init__(self, device: str):
        self.device = device

    def reset(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            with contextlib.suppress(OSError):  # Linux: "5" resets VmHWM, the peak RSS
                Path("/proc/self/clear_refs").write_text("5")

    def read(self) -> int:
        if self.device.startswith("cuda"):
            import torch

            return int(torch.cuda.max_memory_allocated())
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def free_device_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


# --- Variants ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    name: str
    profile: RenderProfile
    kind: str  # "pipeline" | "plain-loop" | "vae"
    batched: bool
    reference: str  # the variant whose batch-1 images are the drift reference


def make_variants(device: str, compile_mode: str | None) -> dict[str, Variant]:
    cuda = device.startswith("cuda")
    compiled = PROFILES["default-cuda"]
    if compile_mode is not None:
        compiled = replace(compiled, compile_mode=compile_mode)
    bf16 = RenderProfile(name="bf16", dtype="bfloat16", description="bf16 eager")
    variants = [
        Variant("plain", RenderProfile(name="plain", dtype="float16" if cuda else "float32",
                                       description="plain diffusers loop"), "plain-loop", False, "bf16"),
        Variant("bf16", bf16, "pipeline", True, "bf16"),
        *(Variant(f"sdpa-{k}", replace(bf16, name=f"sdpa-{k}", sdpa_backend=k), "pipeline", False, "bf16")
          for k in ("flash", "cudnn", "efficient", "math")),
        Variant("default-cuda", compiled, "pipeline", True, "bf16"),
        Variant("cfg-cutoff", replace(PROFILES["cfg-cutoff"], compile_mode=compiled.compile_mode),
                "pipeline", True, "bf16"),
        Variant("vae", replace(bf16, name="vae"), "vae", True, "vae"),
        Variant("vae-compile", replace(compiled, name="vae-compile"), "vae", True, "vae"),
    ]
    return {v.name: v for v in variants}


@dataclass
class Measurement:
    variant: str
    kind: str
    size: str
    batch_size: int
    status: str = "ok"  # ok | skipped | error
    reason: str = ""
    profile: dict[str, Any] = field(default_factory=dict)
    applied: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    seconds: float | None = None
    images_per_min: float | None = None
    s_per_image: float | None = None
    call_latency_s: float | None = None
    first_call_s: float | None = None
    compile_s: float | None = None
    flops_per_image: int | None = None
    tflops: float | None = None
    peak_share: float | None = None
    peak_memory_bytes: int | None = None
    drift_reference: str | None = None
    drift_max: float | None = None
    drift_mean: float | None = None
    within_tolerance: bool | None = None
    image_changing: bool = False


class Runner:
    """Runs the measurements in order, within a time budget, keeping the drift images."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = args.device
        self.started = time.perf_counter()
        self.results: list[Measurement] = []
        self.drift_images: dict[tuple[str, str, int], Any] = {}  # (variant, size, seed) -> array
        self.peaks: dict[str, float] = {}
        self.flops: dict[str, FlopCounts] = {}
        self.tokenizer_root = Path(tempfile.mkdtemp(prefix="sdxl-tokenizer-"))
        self.compile_seen_s: list[float] = []
        self.compile_estimate = args.compile_estimate or (300.0 if self.device.startswith("cuda") else 120.0)

    # -- budget --
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def estimate_s(self, variant: Variant, size: str, batch_size: int, batches: int) -> float | None:
        """Seconds a measurement should take, from the latest per-image time measured at this size
        (VAE variants from VAE measurements), plus one compile; None before anything was measured."""
        is_vae = variant.kind == "vae"
        per_image = next((m.s_per_image for m in reversed(self.results)
                          if m.status == "ok" and m.size == size and (m.kind == "vae") == is_vae), None)
        if per_image is None:
            return None
        cost = per_image * batch_size * (batches + self.warmup_calls(variant))
        if variant.profile.compile:
            cost += max(self.compile_seen_s, default=self.compile_estimate)
        return cost

    def warmup_calls(self, variant: Variant) -> int:
        # CUDA graphs (max-autotune) are recorded on the call after compiling.
        return 2 if (variant.profile.compile and self.device.startswith("cuda")) else 1

    def batches_for(self, batch_size: int) -> int:
        return max(self.args.min_batches, math.ceil(self.args.min_images / batch_size))

    # -- figures --
    def peak_tflops(self, dtype_name: str) -> float:
        if dtype_name not in self.peaks:
            self.peaks[dtype_name] = measure_matmul_peak(self.device, dtype_name, self.args.peak_seconds)
        return self.peaks[dtype_name]

    def flop_counts(self, width: int, height: int) -> FlopCounts:
        key = f"{width}x{height}"
        if key not in self.flops:
            self.flops[key] = count_flops(Path(self.args.config_dir), width, height)
        return self.flops[key]

    # -- one variant --
    def run_variant(self, variant: Variant, batch_sizes: list[int] | None = None) -> None:
        args = self.args
        if batch_sizes is None:
            batch_sizes = args.batch_sizes if variant.batched and variant.kind != "plain-loop" else [1]
        if variant.profile.sdpa_backend:
            backend, note = resolve_sdpa_backend(variant.profile.sdpa_backend, self.device)
            if backend != variant.profile.sdpa_backend and not variant.profile.compile:
                for size in args.sizes:
                    self.skip(variant, size, 1, f"no {variant.profile.sdpa_backend} SDPA kernel on {self.device}"
                                              + (f" ({note})" if note and "cuDNN" in note else ""))
                return
        pipe = applied = None
        try:
            for size in args.sizes:
                width, height = (int(x) for x in size.lower().split("x"))
                for batch_size in batch_sizes:
                    batches = self.batches_for(batch_size)
                    estimate = self.estimate_s(variant, size, batch_size, batches)
                    left = args.time_budget - self.elapsed() if args.time_budget else None
                    if left is not None and left <= 0:
                        self.skip(variant, size, batch_size, "--time-budget used up")
                        continue
                    if left is not None and estimate is not None and estimate > left:
                        self.skip(variant, size, batch_size,
                                  f"estimated {estimate:.0f} s > {left:.0f} s left of --time-budget")
                        continue
                    try:
                        if pipe is None:
                            pipe, applied = self.build(variant)
                        self.results.append(
                            self.measure(variant, pipe, applied, width, height, batch_size, batches))
                    except Exception as error:  # an OOM at one batch size must not lose the rest
                        if args.raise_errors:
                            raise
                        self.results.append(Measurement(variant.name, variant.kind, size, batch_size,
                                                        status="error",
                                                        reason=f"{type(error).__name__}: {error}"[:300]))
                        free_device_memory(self.device)
                        if pipe is None:  # could not even build it: the other sizes would fail the same way
                            return
                    self.report(self.results[-1])
        finally:
            del pipe, applied
            if variant.profile.compile:
                import torch

                # Drop this variant's compiled graphs (and CUDA-graph pools); later variants compile
                # again, from inductor's on-disk cache, as a restarted engine would.
                torch._dynamo.reset()
            free_device_memory(self.device)

    def skip(self, variant: Variant, size: str, batch_size: int, why: str) -> None:
        m = Measurement(variant.name, variant.kind, size, batch_size, status="skipped", reason=why)
        self.results.append(m)
        self.report(m)

    def build(self, variant: Variant):
        pipe = build_random_sdxl(Path(self.args.config_dir), self.device, self.args.weights_seed,
                                 self.tokenizer_root)
        applied = apply_profile(pipe, variant.profile, self.device,
                                cache_dir=self.args.cache_dir if variant.profile.compile else None)
        if variant.kind == "plain-loop":
            import torch

            torch.backends.cudnn.benchmark = False  # plain: no tuning of any kind
        return pipe, applied

    def measure(self, variant: Variant, pipe, applied, width: int, height: int, batch_size: int,
                batches: int) -> Measurement:
        args = self.args
        size = f"{width}x{height}"
        m = Measurement(variant.name, variant.kind, size, batch_size, profile=variant.profile.as_dict(),
                        applied=applied.as_dict(), steps=args.steps, image_changing=variant.profile.image_changing)
        memory = PeakMemory(self.device)
        if variant.kind == "vae":
            m.steps = 0
            call = self.vae_call(pipe, width, height, batch_size, applied)
            m.flops_per_image = self.flop_counts(width, height).vae_decode
        else:
            call = self.pipeline_call(variant, pipe, width, height, batch_size, applied)
            m.flops_per_image = self.flop_counts(width, height).per_image(
                args.steps, args.cfg > 1, variant.profile.cfg_cutoff)
        # Warm-up: the first call compiles (if anything does); its images are the drift images.
        started = time.perf_counter()
        images, seeds = call(0)
        m.first_call_s = time.perf_counter() - started
        self.keep_drift_images(variant.name, size, seeds, images)
        for _ in range(self.warmup_calls(variant) - 1):
            call(0)
        memory.reset()
        started = time.perf_counter()
        for index in range(1, batches + 1):
            images, seeds = call(index)
            self.keep_drift_images(variant.name, size, seeds, images)
        m.seconds = time.perf_counter() - started
        m.peak_memory_bytes = memory.read()
        m.images = batches * batch_size
        m.s_per_image = m.seconds / m.images
        m.images_per_min = 60.0 / m.s_per_image
        m.call_latency_s = m.seconds / batches
        if variant.profile.compile:
            m.compile_s = max(0.0, m.first_call_s - m.call_latency_s)
            self.compile_seen_s.append(m.compile_s)
        m.tflops = m.flops_per_image / m.s_per_image / 1e12
        m.peak_share = m.tflops / self.peak_tflops(variant.profile.dtype)
        return m

    def seeds_for(self, index: int, batch_size: int) -> list[int]:
        first = self.args.seed + (index * batch_size if index else 0)
        return [first + j for j in range(batch_size)]

    def pipeline_call(self, variant: Variant, pipe, width: int, height: int, batch_size: int, applied):
        import torch

        args = self.args
        extra = profile_call_kwargs(variant.profile)

        def run_batch(seeds: list[int]):
            prompts = [PROMPTS[s % len(PROMPTS)] for s in seeds]
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
            with sdpa_backend_context(applied.sdpa_backend), torch.inference_mode():
                out = pipe(prompt=prompts, negative_prompt=[NEGATIVE_PROMPT] * len(seeds),
                           num_inference_steps=args.steps, guidance_scale=args.cfg, width=width,
                           height=height, generator=generators, output_type="np", **extra)
            return out.images

        def call(index: int):
            seeds = self.seeds_for(index, batch_size)
            if variant.kind == "plain-loop":  # a Python loop over images, one pipeline call each
                images = [run_batch([s])[0] for s in seeds]
            else:
                images = list(run_batch(seeds))
            synchronize(self.device)
            return images, seeds

        return call

    def vae_call(self, pipe, width: int, height: int, batch_size: int, applied):
        import torch

        scale = pipe.vae_scale_factor
        channels = pipe.vae.config.latent_channels

        def call(index: int):
            seeds = self.seeds_for(index, batch_size)
            latents = torch.stack([
                torch.randn(channels, height // scale, width // scale,
                            generator=torch.Generator("cpu").manual_seed(s))
                for s in seeds]).to(self.device, pipe.vae.dtype)
            with sdpa_backend_context(applied.sdpa_backend):
                images = decode_latents(pipe, latents, batch_size)
            synchronize(self.device)
            return list(images), seeds

        return call

    def keep_drift_images(self, variant: str, size: str, seeds: list[int], images) -> None:
        for seed, image in zip(seeds, images):
            if seed < self.args.seed + self.args.drift_images:
                self.drift_images.setdefault((variant, size, seed), image)

    def compute_drift(self, variants: dict[str, Variant]) -> None:
        import numpy as np

        for m in self.results:
            if m.status != "ok":
                continue
            reference = variants[m.variant].reference
            diffs = []
            for seed in range(self.args.seed, self.args.seed + self.args.drift_images):
                ours = self.drift_images.get((m.variant, m.size, seed))
                theirs = self.drift_images.get((reference, m.size, seed))
                if ours is not None and theirs is not None:
                    diffs.append(np.abs(np.asarray(ours, np.float32) - np.asarray(theirs, np.float32)))
            if not diffs:
                continue
            m.drift_reference = f"{reference} batch 1, {len(diffs)} image(s)"
            m.drift_max = float(max(d.max() for d in diffs))
            m.drift_mean = float(np.mean([d.mean() for d in diffs]))
            m.within_tolerance = m.drift_max <= self.args.drift_tol

    def report(self, m: Measurement) -> None:
        if self.args.quiet:
            return
        if m.status != "ok":
            print(f"[{self.elapsed():7.1f}s] {m.variant:<14} {m.size:>9} b{m.batch_size:<3} {m.status}: {m.reason}",
                  flush=True)
            return
        compile_note = f", compile {m.compile_s:.1f} s" if m.compile_s is not None else ""
        print(f"[{self.elapsed():7.1f}s] {m.variant:<14} {m.size:>9} b{m.batch_size:<3} "
              f"{m.images_per_min:8.2f} img/min, {m.tflops:7.3f} TFLOP/s{compile_note}", flush=True)


# --- Output -----------------------------------------------------------------------------------------

def environment(device: str) -> dict[str, Any]:
    import diffusers
    import torch
    import transformers

    cpu_name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_name = line.split(":", 1)[1].strip()
                break
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    env: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpu": cpu_name, "cores": cores, "torch_threads": torch.get_num_threads(),
                    # The CPU figures of a shared machine depend on what else ran: say how busy it was.
                    "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        },
        "device": device,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        env["machine"]["gpu"] = props.name
        env["machine"]["gpu_memory_bytes"] = props.total_memory
        env["machine"]["gpu_capability"] = f"{props.major}.{props.minor}"
    return env


def format_table(results: list[dict[str, Any]]) -> str:
    """Markdown table of measurements (dicts as in the JSON)."""
    head = ("| variant | size | batch | img/min | s/img | call s | TFLOP/s | % of matmul peak | peak mem GiB "
            "| compile s | drift max | drift mean | note |")
    lines = [head, "|" + "|".join([" --- "] * (head.count("|") - 1)) + "|"]

    def f(value, fmt):
        return "" if value is None else format(value, fmt)

    for r in results:
        if r["status"] != "ok":
            note = f"{r['status']}: {r['reason']}"
        else:
            notes = ["changes the image"] if r.get("image_changing") else []
            if r.get("within_tolerance") is False and not r.get("image_changing"):
                notes.append("drift over tolerance")
            note = "; ".join(notes)
        mem = r.get("peak_memory_bytes")
        share = r.get("peak_share")
        cells = [r["variant"], r["size"], str(r["batch_size"]), f(r.get("images_per_min"), ".2f"),
                 f(r.get("s_per_image"), ".3f"), f(r.get("call_latency_s"), ".3f"), f(r.get("tflops"), ".3f"),
                 f(None if share is None else 100 * share, ".1f"), f(None if mem is None else mem / 2**30, ".2f"),
                 f(r.get("compile_s"), ".1f"), f(r.get("drift_max"), ".4f"), f(r.get("drift_mean"), ".5f"), note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarise(results: list[Measurement]) -> dict[str, Any]:
    ok = [m for m in results if m.status == "ok" and m.kind != "vae"]
    plain = next((m for m in ok if m.variant == "plain"), None)
    exact = [m for m in ok if not m.image_changing and m.within_tolerance is not False]
    best = max(exact, key=lambda m: m.images_per_min, default=None)
    single = [m for m in exact if m.batch_size == 1]
    fastest_single = min(single, key=lambda m: m.call_latency_s, default=None)
    summary: dict[str, Any] = {}
    if best:
        summary["best_exact"] = {"variant": best.variant, "size": best.size, "batch_size": best.batch_size,
                                 "images_per_min": best.images_per_min}
        if plain and plain.size == best.size:
            summary["speedup_vs_plain"] = best.images_per_min / plain.images_per_min
    if fastest_single:
        summary["single_image_latency_s"] = {"variant": fastest_single.variant,
                                             "seconds": fastest_single.call_latency_s}
    skipped = [f"{m.variant} {m.size} b{m.batch_size}: {m.reason}" for m in results if m.status != "ok"]
    if skipped:
        summary["not_measured"] = skipped
    return summary


# --- Memory model -----------------------------------------------------------------------------------

def memory_model(config_dir: Path, width: int = 1024, height: int = 1024) -> dict[str, float]:
    """Peak activation MiB of one UNet forward (batch 2 = one CFG image) and one VAE decode, bf16.

    Runs the real modules on the meta device under MemTracker. Attention is replaced by an
    output-only stand-in, as flash/cuDNN/efficient SDPA never hold the attention matrix.
    """
    import torch
    import torch.nn.functional as F
    from torch.distributed._tools.mem_tracker import MemTracker

    components = build_components(config_dir, "meta")
    unet = components["unet"].to(torch.bfloat16)
    vae = components["vae"].to(torch.bfloat16)
    configs = load_configs(config_dir)
    scale = 2 ** (len(configs["vae"]["block_out_channels"]) - 1)
    lh, lw = height // scale, width // scale
    add_dim = configs["unet"]["projection_class_embeddings_input_dim"]
    pooled = add_dim - 6 * (configs["unet"].get("addition_time_embed_dim") or 0)

    def peak_activation_mib(fn, module) -> float:
        tracker = MemTracker()
        tracker.track_external(module)
        with tracker, torch.inference_mode():
            fn()
        snapshot = tracker.get_tracker_snapshot("peak")
        total = sum(v for dev in snapshot.values() for k, v in dev.items() if "ACT" in str(k) or "TEMP" in str(k))
        return total / 2**20

    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = lambda q, k, v, *a, **kw: q.new_empty(q.shape[:-1] + (v.shape[-1],))
    try:
        with torch.device("meta"):
            dt_ = torch.bfloat16
            unet_mib = peak_activation_mib(lambda: unet(
                torch.empty(2, 4, lh, lw, dtype=dt_), torch.tensor([999.0]),
                encoder_hidden_states=torch.empty(2, 77, unet.config.cross_attention_dim, dtype=dt_),
                added_cond_kwargs={"text_embeds": torch.empty(2, pooled, dtype=dt_),
                                   "time_ids": torch.empty(2, 6, dtype=dt_)}), unet)
            vae_mib = peak_activation_mib(lambda: vae.decode(torch.empty(1, 4, lh, lw, dtype=dt_)), vae)
    finally:
        F.scaled_dot_product_attention = original
    return {"width": width, "height": height, "unet_cfg_image_mib": unet_mib, "vae_decode_image_mib": vae_mib}


# --- CLI --------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default)")
    parser.add_argument("--config-dir", default=str(DEFAULT_CONFIG_DIR),
                        help="folder of unet/vae/text_encoder/text_encoder_2/scheduler *_config.json")
    parser.add_argument("--sizes", default="1024x1024", help="comma-separated WIDTHxHEIGHT")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, run in this order; any of: {', '.join(ALL_VARIANTS)}")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode for compiled variants (default: the profile's, "
                             "max-autotune; CPU always uses the default mode)")
    parser.add_argument("--min-images", type=int, default=8, help="images timed per measurement, at least")
    parser.add_argument("--min-batches", type=int, default=2, help="calls timed per measurement, at least")
    parser.add_argument("--drift-images", type=int, default=2, help="seeds compared for drift")
    parser.add_argument("--drift-tol", type=float, default=DEFAULT_DRIFT_TOL)
    parser.add_argument("--no-reference", action="store_true",
                        help="do not add the drift reference (bf16 / vae at batch 1) when it is not listed")
    parser.add_argument("--seed", type=int, default=1000, help="first image seed")
    parser.add_argument("--weights-seed", type=int, default=0)
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds; measurements that would not fit are skipped and listed")
    parser.add_argument("--compile-estimate", type=float, default=None,
                        help="seconds one compile is assumed to take before one was measured "
                             "(default 300 on CUDA, 120 on CPU)")
    parser.add_argument("--cache-dir", default=str(HERE / ".cache"),
                        help="where inductor keeps compiled kernels (TORCHINDUCTOR_CACHE_DIR)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); fewer suffer less on a shared CPU")
    parser.add_argument("--peak-seconds", type=float, default=1.0, help="time spent on each matmul peak")
    parser.add_argument("--out", default=None, help="write the JSON here")
    parser.add_argument("--raise-errors", action="store_true", help="stop at the first error (debugging)")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--table", nargs="+", metavar="JSON", help="print the markdown table of saved runs")
    parser.add_argument("--memory-model", action="store_true",
                        help="print the activation-memory figures pick_batch_size uses, then exit")
    args = parser.parse_args(argv)
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in ALL_VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(ALL_VARIANTS)}")
    for size in args.sizes:
        parts = size.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) % 8 == 0 for p in parts):
            parser.error(f"--sizes: {size!r} is not WIDTHxHEIGHT with multiples of 8")
    if any(b < 1 for b in args.batch_sizes):
        parser.error("--batch-sizes must be positive")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.table:
        runs = [json.loads(Path(path).read_text()) for path in args.table]
        for index, run in enumerate(runs, 1):
            if len(runs) > 1:
                print(f"Run {index}: {run.get('date', '?')}, {run.get('command', '?')}")
                print()
            print(format_table(run["results"]))
            print()
        return None
    if args.memory_model:
        figures = memory_model(Path(args.config_dir))
        print(json.dumps(figures, indent=2))
        return figures

    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu":
        torch.set_flush_denormal(True)  # random weights must not hit the slow denormal path

    env = environment(args.device)
    variants = make_variants(args.device, args.compile_mode)
    if any(variants[name].profile.compile for name in args.variants):
        cache = configure_compile_cache(args.cache_dir)
        # Compile time depends on what inductor already has cached: record it.
        env["inductor_cache"] = {"path": str(cache), "files_before_run": sum(1 for p in cache.rglob("*")
                                                                             if p.is_file())}
    env["command"] = shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else \
        shlex.join(["python", "benchmarks/gpu_throughput.py", *argv])
    runner = Runner(args)
    # Drift is measured against a reference variant at batch 1 on the same seeds; run it (batch 1 only)
    # first when the chosen variants need it and it is not among them.
    references = [] if args.no_reference else list(dict.fromkeys(
        variants[name].reference for name in args.variants if variants[name].reference not in args.variants))
    for name in references:
        runner.run_variant(variants[name], batch_sizes=[1])
    for name in args.variants:  # drift is computed after all ran, so the order is free
        runner.run_variant(variants[name])
    runner.compute_drift(variants)

    flops = {k: asdict(v) for k, v in runner.flops.items()}
    reference = Path(args.config_dir) / "flops_1024.json"
    if "1024x1024" in runner.flops and reference.exists():
        table = json.loads(reference.read_text())
        counted = runner.flops["1024x1024"]
        flops["check_against_flops_1024_json"] = {
            "unet_ratio": counted.unet_forward / table["unet_flops_b1"],
            "vae_ratio": counted.vae_decode / table["vae_decode_flops"],
        }
    output = {
        **env,
        "args": {k: v for k, v in vars(args).items() if k not in ("table",)},
        "matmul_peak_tflops": runner.peaks,
        "flops": flops,
        "results": [asdict(m) for m in runner.results],
        "summary": summarise(runner.results),
        "elapsed_s": runner.elapsed(),
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(output, indent=2, default=str))
    if not args.quiet:
        print()
        print(format_table(output["results"]))
        print()
        print(json.dumps({"matmul_peak_tflops": runner.peaks, **output["summary"]}, indent=2))
    return output


if __name__ == "__main__":
    main()
