"""PNG text chunks: the A1111 `parameters` chunk every tool in the ecosystem reads, and our own meta.

A1111's format is three parts: the prompt, a line starting "Negative prompt: ", and one line of
"Key: value" pairs separated by ", " (values holding commas or quotes are JSON-quoted).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.PngImagePlugin import PngInfo

PARAMETERS_KEY = "parameters"
META_KEY = "echo-os"

_NEEDS_QUOTES = re.compile(r'[,:"\n]')
_KEY = re.compile(r"\w[\w \-/]*")


def _quote(value: object) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if _NEEDS_QUOTES.search(text) else text


def _format_cfg(cfg: float) -> str:
    cfg = float(cfg)
    return str(int(cfg)) if cfg.is_integer() else repr(cfg)


def a1111_parameters(prompt: str, negative: str | None, *, steps: int, sampler: str, cfg: float, seed: int,
                     width: int, height: int, model: str | None,
                     extra: Mapping[str, object] | None = None) -> str:
    """The `parameters` text as A1111 writes it; memory.pngmeta.parse_a1111_parameters reads every field
    back exactly (prompt and negative without surrounding whitespace).

    sampler is written as given (an A1111 name: A1111_SAMPLER_NAMES maps ours). extra adds "Key: value"
    pairs after the standard ones; keys must be words, values are quoted when they hold a comma, colon,
    quote or newline.
    """
    pairs: dict[str, object] = {"Steps": int(steps), "Sampler": sampler, "CFG scale": _format_cfg(cfg),
                                "Seed": int(seed), "Size": f"{int(width)}x{int(height)}"}
    if model:
        pairs["Model"] = model
    for key, value in (extra or {}).items():
        if not _KEY.fullmatch(key):
            raise ValueError(f"A1111 parameter names are words, got {key!r}")
        if value is not None:
            pairs[key] = value
    lines = [prompt.strip()]
    if negative and negative.strip():
        lines.append(f"Negative prompt: {negative.strip()}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in pairs.items()))
    return "\n".join(lines)


# Names A1111 and Civitai show for our scheduler names.
A1111_SAMPLER_NAMES = {
    "euler": "Euler",
    "euler_a": "Euler a",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "ddim": "DDIM",
    "heun": "Heun",
    "unipc": "UniPC",
    "lcm": "LCM",
    "tcd": "TCD",
    "euler_trailing": "Euler",
}


def png_info(parameters: str, meta: dict) -> "PngInfo":
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt(PARAMETERS_KEY, parameters)
    info.add_itxt(META_KEY, json.dumps(meta, ensure_ascii=False, sort_keys=True))
    return info
