"""The images a request points at, read for an engine: a refine's init image (request.init_image) and the
characters' reference images (request.ip_adapter). Each is checked against the sha256 recorded when the
request was made, so a replay, a hosted edit or a ComfyUI upload starts from the recorded bytes, never
from a file that changed since. One rule for every engine: sdxl decodes them, openai and comfyui send
the bytes as they are.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from echo_os.errors import UsageError

if TYPE_CHECKING:
    from echo_os.render.requests import InitImage, IPAdapterImage
    from echo_os.settings import Settings


def init_image_path(settings: "Settings", init: "InitImage") -> Path:
    """Where the init image is: recorded relative to the workspace's artifacts folder (echo_os.iterate.refine)
    when it is inside it."""
    path = Path(init.path)
    return path if path.is_absolute() else settings.artifacts_dir / path


def read_init_image(settings: "Settings", init: "InitImage") -> tuple[Path, bytes]:
    """(path, bytes) of the init image, after checking its bytes still have the recorded sha256."""
    path = init_image_path(settings, init)
    return path, _read_checked(path, init.sha256, f"the image to refine, {path},", "since it was recorded",
                               "refine the artifact again instead of replaying")


def load_init_image(settings: "Settings", init: "InitImage") -> Any:
    """The init image's pixels (RGB), after checking its bytes still have the recorded sha256."""
    import io

    from PIL import Image

    _, data = read_init_image(settings, init)
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def read_reference_image(image: "IPAdapterImage") -> tuple[Path, bytes]:
    """(path, bytes) of one reference image, checked against its recorded sha256."""
    path = Path(image.path)
    return path, _read_checked(path, image.sha256, f"the reference image {path}", "since the request was made",
                               "run the command again so it is hashed anew")


def _read_checked(path: Path, sha256: str, what: str, since: str, then: str) -> bytes:
    """The file's bytes, or one UsageError line when it cannot be read or no longer has `sha256`."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UsageError(f"{what} cannot be read ({error.strerror or error}).") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise UsageError(f"{what} has changed {since} (sha256 differs); {then}.")
    return data
