"""Seamless tiling: the UNet's and the VAE's convolutions pad circularly for one call, then are restored.

This is how A1111's "Tiling" option works: a convolution near the left edge sees the right edge's pixels
as its neighbours (and top sees bottom), so the image the model makes wraps around without a seam. A1111
switches every Conv2d to `padding_mode="circular"`, which wraps both axes; to wrap one axis only
(`x`: left-right, `y`: top-bottom) each convolution here pads itself, circularly along the wrapped axis
and with zeros along the other, then convolves without padding. With both axes wrapped that is exactly
what `padding_mode="circular"` computes.

`tiled_convolutions(pipe, "xy")` is a context manager: the pipeline is patched inside it and unchanged
after it, also when the render fails, so a warm pipeline never leaks tiling into the next request.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

TILE_AXES = ("x", "y", "xy")


def _patched_forward(conv: Any, wrap_x: bool, wrap_y: bool) -> Callable[[Any, Any, Any], Any]:
    import torch.nn.functional as F

    pad_y, pad_x = conv.padding  # Conv2d.padding is (height, width)

    def conv_forward(input: Any, weight: Any, bias: Any) -> Any:
        # F.pad takes (left, right, top, bottom); one call per axis so each axis gets its own mode.
        if pad_x:
            input = F.pad(input, (pad_x, pad_x, 0, 0), mode="circular" if wrap_x else "constant")
        if pad_y:
            input = F.pad(input, (0, 0, pad_y, pad_y), mode="circular" if wrap_y else "constant")
        return F.conv2d(input, weight, bias, conv.stride, 0, conv.dilation, conv.groups)

    return conv_forward


def _paddable_convs(module: Any) -> list[Any]:
    import torch

    return [layer for layer in module.modules()
            if isinstance(layer, torch.nn.Conv2d) and isinstance(layer.padding, tuple)
            and any(layer.padding) and layer.padding_mode == "zeros"]


@contextlib.contextmanager
def tiled_convolutions(pipe: Any, axes: str | None) -> Iterator[int]:
    """Inside: every zero-padded Conv2d of pipe.unet and pipe.vae wraps along `axes` ("x", "y", "xy").
    Yields how many convolutions were patched. `axes` None: nothing changes."""
    if axes is None:
        yield 0
        return
    if axes not in TILE_AXES:
        raise ValueError(f"tile axes must be one of {', '.join(TILE_AXES)}, got {axes!r}")
    wrap_x, wrap_y = "x" in axes, "y" in axes
    convs = _paddable_convs(pipe.unet) + _paddable_convs(pipe.vae)
    for conv in convs:
        # An instance attribute shadows Conv2d._conv_forward, which Conv2d.forward calls.
        conv._conv_forward = _patched_forward(conv, wrap_x, wrap_y)
    try:
        yield len(convs)
    finally:
        for conv in convs:
            conv.__dict__.pop("_conv_forward", None)


def seam_score(image: Any, axes: str = "xy") -> "SeamScore":
    """How visible the wrap-around seam is, per axis.

    ratio: the mean absolute difference between the last and the first column (x) or row (y), over the
    mean difference between neighbouring columns/rows inside the image. A seamless tile's wrap edge looks
    like any other neighbour pair: ratio about 1. An edge that jumps shows as a line when tiled (ratio
    well above 1); so does a border that the model darkened or flattened on both sides alike, as zero
    padding does (ratio below 1). The seam is therefore |ln ratio|: 0 for a perfect wrap, growing either way.
    """
    import numpy as np

    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    ratios: dict[str, float] = {}
    for axis in ("x", "y"):
        if axis not in axes:
            continue
        array = pixels if axis == "y" else pixels.transpose(1, 0, 2)  # rows along the first axis
        inner = float(np.abs(np.diff(array, axis=0)).mean())
        across = float(np.abs(array[-1] - array[0]).mean())
        if inner == 0:
            ratios[axis] = 1.0 if across == 0 else float("inf")  # a flat image: seamless unless the edge jumps
        else:
            ratios[axis] = across / inner
    return SeamScore(ratios)


class SeamScore:
    """Per axis: the seam ratio (difference across the wrap edge over the mean neighbour difference)."""

    def __init__(self, ratios: dict[str, float]):
        self.ratios = ratios

    @property
    def seams(self) -> dict[str, float]:
        """|ln ratio| per axis: 0 is a perfect wrap."""
        return {axis: abs(math.log(ratio)) if ratio > 0 else float("inf") for axis, ratio in self.ratios.items()}

    @property
    def worst(self) -> float:
        return max(self.seams.values()) if self.ratios else 0.0

    def as_dict(self) -> dict[str, dict[str, float]]:
        seams = self.seams
        return {axis: {"ratio": round(ratio, 4), "seam": round(seams[axis], 4)} for axis, ratio in self.ratios.items()}


def tiled_preview(image: Any, axes: str = "xy") -> Any:
    """The image repeated 2x2 (or 2x1 / 1x2 for one axis), so a seam shows as a line through the middle."""
    from PIL import Image

    across = 2 if "x" in axes else 1
    down = 2 if "y" in axes else 1
    width, height = image.size
    sheet = Image.new(image.mode, (width * across, height * down))
    for column in range(across):
        for row in range(down):
            sheet.paste(image, (column * width, row * height))
    return sheet
