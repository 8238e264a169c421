"""The studio: one page that `echo-os serve` answers `/` with (echo_os.api.routes.studio serves it).

Its files are package data under static/ (index.html, studio.css, studio.js: plain HTML, CSS and an ES
module, no build step, no CDN), read with importlib.resources so a wheel carries them. The page talks
only to the API it came from (same origin): /api/render, /api/jobs/{id}/events (SSE, with the live
latent previews), /api/refine, /api/compare, /api/artifacts, /api/memory/search, /api/styles, ratings.
"""

from __future__ import annotations

from importlib.resources import files

STATIC_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}


def static_names() -> list[str]:
    """The files the studio serves (nothing else under the package is reachable)."""
    folder = files("echo_os.studio") / "static"
    return sorted(entry.name for entry in folder.iterdir()
                  if entry.is_file() and any(entry.name.endswith(ext) for ext in STATIC_TYPES))


def read_static(name: str) -> tuple[bytes, str] | None:
    """(bytes, content type) of one static file, or None when `name` is not one of static_names()."""
    if name not in static_names():
        return None
    suffix = name[name.rfind("."):]
    return (files("echo_os.studio") / "static" / name).read_bytes(), STATIC_TYPES[suffix]
