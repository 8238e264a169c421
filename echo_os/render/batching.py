"""Batch size for the scheduler: how many images go into one pipeline call, the pieces a batch is cut from
(`Piece`: consecutive seeds of one request), and the out-of-memory back-off's helpers (taking a batch off a
group's queue, freeing memory before a smaller retry).

Batch size: `batch_size` when given (render_requests), else from the free GPU memory once the weights are
loaded (CUDA, auto_batch_size), else one image per call for CPU diffusion above CPU_BATCH_MAX_PIXELS,
else the engine's maximum.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections import deque

    from echo_os.engines.base import Engine
    from echo_os.render.requests import RenderRequest

GIB = 1024**3


@dataclass(frozen=True)
class Piece:
    """Consecutive images of one given request: `request` renders them (its seed is the first one's),
    `source` is the given request's position, `first` the first image's place in it."""

    source: int
    first: int
    request: "RenderRequest"

    def split(self, head: int) -> tuple["Piece", "Piece"]:
        """The first `head` images and the rest (0 < head < count), every image keeping its seed."""
        request = self.request
        return (Piece(self.source, self.first, request.model_copy(update={"count": head})),
                Piece(self.source, self.first + head,
                      request.model_copy(update={"seed": request.seeds[head], "count": request.count - head})))


# ---- batch size ------------------------------------------------------------------------------------

# Activation memory of one SDXL image at 1024x1024 in 16-bit, with classifier-free guidance (two UNet
# passes) and the VAE decode, which is the peak. A deliberately cautious estimate: the OOM back-off
# covers an estimate that is too high for the card, and free memory is measured after the weights load.
_BYTES_PER_MEGAPIXEL_16BIT = int(3.0 * GIB)
_RESERVE_BYTES = int(1.5 * GIB)


def estimate_batch_size(free_bytes: int, width: int, height: int, dtype: str = "bfloat16") -> int:
    """The largest power of two whose estimated activations fit in free_bytes (at least 1).

    Used until echo_os.engines.cuda_profile.pick_batch_size (measured on GPUs) is in the tree.
    """
    per_image = _BYTES_PER_MEGAPIXEL_16BIT * (width * height) / (1024 * 1024)
    if dtype == "float32":
        per_image *= 2
    size = 1
    while (size * 2) * per_image + _RESERVE_BYTES <= free_bytes:
        size *= 2
    return size


def pick_batch_size(free_bytes: int, width: int, height: int, dtype: str) -> int:
    try:
        from echo_os.engines.cuda_profile import pick_batch_size as measured
    except ImportError:
        return estimate_batch_size(free_bytes, width, height, dtype)
    return measured(free_bytes, width, height, dtype)


# On a CPU, batching pays only where per-call overhead outweighs the arithmetic: measured with the tiny
# pipeline (benchmarks/RESULTS.md, "Story throughput"), 16 images per call were 1.63x faster than one at
# 64x64 and 0.87x (slower) at 128x128. Real CPU renders are 512px and up, so they go one image per call.
CPU_BATCH_MAX_PIXELS = 64 * 64


def auto_batch_size(engine: "Engine", request: "RenderRequest") -> int:
    """Images per call for `request`'s batch group.

    CUDA: from free GPU memory. CPU diffusion: one image per call above CPU_BATCH_MAX_PIXELS, where
    batching is slower. Engines with neither (draft): the engine's maximum.
    """
    cap = max(1, engine.capabilities.max_batch)
    memory = engine.free_memory(request)
    if memory is None:
        if engine.runs_on_cpu(request) and request.width * request.height > CPU_BATCH_MAX_PIXELS:
            return 1
        return cap
    return max(1, min(cap, pick_batch_size(memory.free_bytes, request.width, request.height, memory.dtype)))


# ---- out of memory ---------------------------------------------------------------------------------


def release_memory() -> None:
    """Free what an out-of-memory call left behind: Python garbage, then torch's cached CUDA blocks."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def take_batch(queue: "deque[Piece]", limit: int) -> list[Piece]:
    """Up to `limit` images from the front of the queue, splitting a piece by seed where needed."""
    batch, images = [], 0
    while queue and images < limit:
        piece = queue.popleft()
        room = limit - images
        if piece.request.count > room:
            piece, tail = piece.split(room)
            queue.appendleft(tail)
        batch.append(piece)
        images += piece.request.count
    return batch
