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
    from echo_os.requests import InitImage, IPAdapterImage
    from echo_os.settings import Settings


def init_image_path(settings: "Settings", init: "InitImage") -> Path:
    """Where the init image is: recorded relative to the workspace's artifacts folder (echo_os.refine)
    when it is inside it."""
    path = Path(init.path)
    return path if path.is_absolute() else settings.artifacts_dir / path


def read_init_image(settings: "Settings", init: "InitImage") -> tuple[Path, bytes]:
    """(path, bytes) of the init image, after checking its bytes still have the recorded sha256."""
    path = init_image_path(settings, init)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UsageError(f"the image to refine, {path}, cannot be read ({error.strerror or error}).") from None
    if hashlib.sha256(data).hexdigest() != init.sha256:
        raise UsageError(f"the image to refine, {path}, has changed since it was recorded (sha256 differs); "
                         "refine the artifact again instead of replaying.")
    return path, data


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
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UsageError(f"the reference image {path} cannot be read ({error.strerror or error}).") from None
    if hashlib.sha256(data).hexdigest() != image.sha256:
        raise UsageError(f"the reference image {path} has changed since the request was made (sha256 differs); "
                         "run the command again so it is hashed anew.")
    return path, data
