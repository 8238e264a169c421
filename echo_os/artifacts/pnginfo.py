"""PNG text chunks: the A1111 `parameters` chunk every tool in the ecosystem reads, and our own meta.

A1111's format is three parts: the prompt, a line starting "Negative prompt: ", and one line of
"Key: value" pairs separated by ", " (values holding commas or quotes are JSON-quoted).
"""

from __future__ import annotations

import json
import re

PARAMETERS_KEY = "parameters"
META_KEY = "echo-os"

_NEEDS_QUOTES = re.compile(r'[,:"\n]')


def _quote(value: object) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if _NEEDS_QUOTES.search(text) else text


def a1111_parameters(prompt: str, negative: str, *, steps: int, sampler: str, cfg: float, seed: int,
                     width: int, height: int, model: str, extra: dict[str, object] | None = None) -> str:
    """The `parameters` text as A1111 writes it."""
    pairs: dict[str, object] = {
        "Steps": steps,
        "Sampler": sampler,
        "CFG scale": f"{cfg:g}",
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model": model,
    }
    pairs.update(extra or {})
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
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
}


def png_info(parameters: str, meta: dict) -> "PngInfo":  # noqa: F821 - PIL imported lazily
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt(PARAMETERS_KEY, parameters)
    info.add_itxt(META_KEY, json.dumps(meta, ensure_ascii=False, sort_keys=True))
    return info
