"""What an API caller may give where an engine takes an image (`options.init_image` of the openai and
comfyui engines): an artifact of this workspace, by its id (a full id or a unique prefix of 12 or more hex
characters), or the image itself as a `data:image/png;base64,...` URL (png, jpeg or webp). Never a path:
a path is a CLI convenience (`-o init_image=PATH`); through the API it would let a caller have any file
the server can read uploaded to a ComfyUI or sent to a hosted edit.

Before the request is built, the value is replaced by a file the server chose inside the workspace: the
artifact's PNG, or the sent bytes written once to artifacts/.inputs/<sha256>.<ext> (decoded whole and
bounded first). The engine then checks that file by the CLI's rule (echo_os.engines.inputs), in the
request check and again in the worker, so an old or hand-made job naming a path outside is refused too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any

from echo_os.atomic import write_atomically
from echo_os.engines.inputs import MAX_INPUT_IMAGE_BYTES, image_bytes_problem
from echo_os.errors import NotFoundError, OptionError, UsageError
from echo_os.settings import Settings

IMAGE_OPTIONS = ("init_image",)  # engine options that name an image file (openai, comfyui)
INPUTS_DIR = ".inputs"  # under artifacts/: images sent as bytes (no meta.json, so never an artifact)
_DATA_URL = re.compile(r"data:image/(png|jpeg|webp);base64,", re.IGNORECASE)
_ARTIFACT_ID = re.compile(r"[0-9a-fA-F]{12,64}")
_HOW = ("name an artifact by its id (see GET /api/artifacts) or send the image as a data:image/png;base64,... "
        "URL; the API reads no server path")


def with_input_images(settings: Settings, fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` with every image option of `fields["options"]` replaced by the server's file for it; an
    OptionError naming `options.<key>` for a path or an unusable value."""
    options = fields.get("options")
    if not options or not any(key in options for key in IMAGE_OPTIONS):
        return fields
    resolved = dict(options)
    for key in IMAGE_OPTIONS:
        if key in resolved and resolved[key] is not None:
            resolved[key] = input_image_file(settings, resolved[key], f"options.{key}")
    return {**fields, "options": resolved}


def input_image_file(settings: Settings, value: Any, option: str) -> str:
    """The absolute path of the server's file for one image option's value (see the module docstring)."""
    if not isinstance(value, str):
        raise OptionError(f"{option}: {_HOW}", option)
    match = _DATA_URL.match(value)
    if match:
        return _save_sent_image(settings, match.group(1).lower(), value[match.end():], option)
    if _ARTIFACT_ID.fullmatch(value):
        return _artifact_image(settings, value, option)
    raise OptionError(f"{option} {_shown(value)} is neither an artifact id nor a data: URL; {_HOW}", option)


def _artifact_image(settings: Settings, artifact_id: str, option: str) -> str:
    from echo_os.artifacts.store import IMAGE_NAME, open_catalog
    from echo_os.artifacts.video import POSTER_NAME, is_video_meta

    catalog = open_catalog(settings)
    try:
        row = catalog.resolve_id(artifact_id)
    except (NotFoundError, UsageError) as error:
        raise OptionError(f"{option}: {error}", option) from None
    finally:
        catalog.close()
    base = settings.artifacts_dir.resolve()
    path = (base / row.path / (POSTER_NAME if is_video_meta(row.meta) else IMAGE_NAME)).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        raise OptionError(f"{option}: the image of artifact {row.id[:12]} is missing on disk; run "
                          "`echo-os artifacts reindex`", option)
    return str(path)


def _save_sent_image(settings: Settings, kind: str, text: str, option: str) -> str:
    if len(text) > MAX_INPUT_IMAGE_BYTES * 4 // 3 + 4:
        raise OptionError(f"{option}: the image is larger than {MAX_INPUT_IMAGE_BYTES // (1024 * 1024)} MB", option)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise OptionError(f"{option}: the data: URL is not valid base64", option) from None
    problem = image_bytes_problem(data, "the sent image")
    if problem:
        raise OptionError(f"{option}: the sent image {problem}", option)
    digest = hashlib.sha256(data).hexdigest()
    path = settings.artifacts_dir / INPUTS_DIR / f"{digest}.{'jpg' if kind == 'jpeg' else kind}"
    if not path.is_file():  # named by content: the same bytes sent twice are one file
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data)
    return str(path.resolve())


def _shown(value: str) -> str:
    """The value for an error line: short, without control characters."""
    text = "".join(c if c.isprintable() else "?" for c in value[:60])
    return repr(text + ("..." if len(value) > 60 else ""))
