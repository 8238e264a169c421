"""The images a request points at, read for an engine: a refine's init image (request.init_image), the
characters' reference images (request.ip_adapter) and an engine's own image option (`-o init_image=PATH`
of openai and comfyui). Each recorded one is checked against the sha256 recorded when the request was
made, so a replay, a hosted edit or a ComfyUI upload starts from the recorded bytes, never from a file
that changed since. One rule for every engine: sdxl decodes them, openai and comfyui send the bytes as
they are.

Which files may be read (input_image_problem): a regular file inside the workspace (or, for a reference
image, the bible's folder), at most MAX_INPUT_IMAGE_BYTES, that Pillow decodes whole. A path is a CLI
convenience: an API caller names an artifact by id or sends the bytes (echo_os.api.inputs), which the
server turns into a file inside the workspace before this check, so no server file outside it is ever
read, uploaded to a ComfyUI or sent to a hosted edit.
"""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from echo_os.errors import OptionError, UsageError

if TYPE_CHECKING:
    from echo_os.render.requests import InitImage, IPAdapterImage
    from echo_os.settings import Settings


# An input image is read whole (hashed, decoded): bounded, so a huge file or a device cannot stall a
# check. 50 MB holds any photo a person would use as a reference or a starting image.
MAX_INPUT_IMAGE_BYTES = 50 * 1024 * 1024


def input_image_problem(resolved: Path, roots: tuple[Path, ...], inside: str, why: str) -> str | None:
    """Why `resolved` (symlinks already followed) cannot be read as an input image, or None.

    It must lie inside one of `roots` (named `inside` in the answer, `why` says what is read only from
    there), be a regular file (not a FIFO or device: never opened, so never waited on) of at most
    MAX_INPUT_IMAGE_BYTES, and be an image Pillow decodes whole, of at most Pillow's pixel limit: a
    truncated PNG is refused here, when the request is checked, not in the engine mid-render. Where the
    file is is checked first, so the answer for a path outside says nothing about whether it exists.
    """
    if not any(resolved.is_relative_to(root) for root in roots):
        return f"is outside {inside}; copy it there ({why})"
    try:
        info = resolved.stat()
    except OSError:
        return f"not found (looked for {resolved})"
    if not stat.S_ISREG(info.st_mode):
        return f"is not a regular file ({resolved})"
    if info.st_size > MAX_INPUT_IMAGE_BYTES:
        return f"is larger than {MAX_INPUT_IMAGE_BYTES // (1024 * 1024)} MB ({resolved})"
    return image_bytes_problem(resolved.read_bytes(), str(resolved))


def image_bytes_problem(data: bytes, name: str) -> str | None:
    """Why `data` is not an image Pillow decodes whole within its pixel limit, or None."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:  # the header: the size before any pixel is decoded
            width, height = image.size
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and width * height > limit:
                return f"is {width}x{height} pixels, more than the {limit} allowed ({name})"
            image.load()  # every pixel: a truncated or corrupt file fails here
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return f"is not an image Pillow can decode ({name}: {str(error)[:120] or type(error).__name__})"
    return None


def option_image_path(settings: "Settings", value: str, option: str = "options.init_image") -> Path:
    """The file an engine's image option names (`-o init_image=PATH`, relative to the current folder),
    resolved, or an OptionError on `option` when it is not a readable image inside the workspace."""
    resolved = Path(value).expanduser().resolve()
    problem = input_image_problem(resolved, (settings.home.resolve(),), "the workspace",
                                  "an engine's image option is read only from there")
    if problem:
        raise OptionError(f"{option.rpartition('.')[2].replace('_', ' ')} {value} {problem}", option)
    return resolved


def read_option_image(settings: "Settings", value: str, option: str = "options.init_image") -> tuple[Path, bytes]:
    """(path, bytes) of an engine's image option, checked by option_image_path first."""
    path = option_image_path(settings, value, option)
    try:
        return path, path.read_bytes()
    except OSError as error:
        raise OptionError(f"{option.rpartition('.')[2].replace('_', ' ')} {value} cannot be read "
                          f"({error.strerror or error})", option) from None


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


# ---- images a server sends back (openai, comfyui) ---------------------------------------------------------

# The largest side accepted from a server: echo-os asks for at most this (render.requests.MAX_SIDE), and a
# server answering 12000x12000 must not make the worker decode 144 megapixels (red-team finding).
MAX_RECEIVED_SIDE = 4096


def decode_received_image(data: bytes) -> Any:
    """The PIL image in `data` (a server's answer), decoded whole; ValueError with one line saying what
    arrived instead: nothing, bytes that are no image, or an image over MAX_RECEIVED_SIDE a side. A smaller
    or odd size is accepted: the artifact records the size that arrived (ArtifactStore.build_meta)."""
    import io
    import warnings

    from PIL import Image

    if not data:
        raise ValueError("an empty answer instead of an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
            image = Image.open(io.BytesIO(data))  # the header only
        width, height = image.size
        if width > MAX_RECEIVED_SIDE or height > MAX_RECEIVED_SIDE:
            raise ValueError(f"a {width}x{height} image; at most {MAX_RECEIVED_SIDE} pixels a side are accepted")
        image.load()
    except Image.DecompressionBombError as error:  # a header over twice Pillow's pixel limit
        raise ValueError(f"an image too large to accept ({str(error)[:80]})") from None
    except (OSError, SyntaxError) as error:
        raise ValueError(f"{len(data):,} bytes that are not an image Pillow can decode (they start "
                         f"{data[:12]!r}; {str(error)[:80] or type(error).__name__})") from None
    return image

