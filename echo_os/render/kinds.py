"""What `--type` (the CLI) and `type` (POST /api/render) ask for: the request's output kind.

image and texture are images (a texture with seamless tiling, tile = "xy"); 3d_model is a mesh, audio a sound
(echo_os/artifacts/assets.py). `seconds` is a sound's length, the audio engines' `seconds` option.
"""

from __future__ import annotations

from typing import Any

from echo_os.errors import OptionError

RENDER_TYPES = {"image": "image", "texture": "image", "3d_model": "mesh", "audio": "audio"}


def output_fields(kind: str, seconds: float | None, options: dict[str, Any] | None) -> dict[str, Any]:
    """The request fields a type and a length set: `output` and `options.seconds` (a texture's
    tiling is the caller's: the CLI's --tile may narrow it to one axis)."""
    fields: dict[str, Any] = {}
    if RENDER_TYPES[kind] != "image":
        fields["output"] = RENDER_TYPES[kind]
    if seconds is not None:
        if kind != "audio":
            raise OptionError("--seconds is the length of a sound: give it with --type audio.", "seconds")
        fields["options"] = {**(options or {}), "seconds": seconds}
    return fields
