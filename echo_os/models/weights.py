"""Weight files: what format a file really holds, and whether it can be loaded safely.

The format is read from the content, never trusted from the file name: a pickle renamed .safetensors,
a git-LFS pointer left by a clone without LFS, or a download cut short each give one ModelError naming
the path. Safetensors headers are parsed here in plain Python (no tensors are read), so checking a
7 GB checkpoint costs a few milliseconds.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from echo_os.errors import ModelError

WeightsFormat = Literal["safetensors", "pickle-zip", "pickle", "lfs-pointer", "unknown"]

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
# The safetensors library refuses headers above 100 MB; anything larger is damage, not a model.
MAX_SAFETENSORS_HEADER = 100_000_000
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")

# Bytes per element, from the safetensors format (dtypes not listed here skip the size check).
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}


@dataclass(frozen=True)
class WeightsFileInfo:
    """What check_weights_file learned about one file. tensor_names is empty for pickles (never unpickled)."""

    path: Path
    format: WeightsFormat
    size: int
    tensor_count: int | None = None
    tensor_names: tuple[str, ...] = ()
    metadata: dict[str, str] | None = None


def detect_format(path: str | Path) -> WeightsFormat:
    """What a file holds, judged by its first bytes.

    safetensors: an 8-byte little-endian header length, then a JSON object ('{').
    pickle-zip: a zip archive (PK\\x03\\x04), the format of torch.save since PyTorch 1.6.
    pickle: a bare pickle (\\x80 then a protocol byte), the legacy torch.save format.
    lfs-pointer: the small text file git leaves when the LFS object was never fetched.
    """
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(LFS_POINTER_PREFIX):
        return "lfs-pointer"
    if head.startswith(b"PK\x03\x04"):
        return "pickle-zip"
    pickle_like = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    if len(head) >= 9 and head[8:9] == b"{":
        (header_length,) = struct.unpack("<Q", head[:8])
        # A header of 0x280..0x580 bytes starts with \x80 and a byte from 2 to 5, like a pickle: safetensors when
        # the header fits the file (a truncated one, not pickle-like, is still safetensors: its check says so).
        if header_length >= 2 and (header_length <= Path(path).stat().st_size - 8 or not pickle_like):
            return "safetensors"
    if pickle_like:
        return "pickle"
    return "unknown"


def read_safetensors_header(path: str | Path) -> dict:
    """The JSON header of a safetensors file, validated against the file size.

    Raises ModelError naming the path when the header length runs past the end of the file, the header
    is not a JSON object, or a tensor's offsets do not fit the data that follows (a truncated download).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelError(f"{path}: corrupt safetensors: only {size} bytes, too short to hold a header.")
        (header_length,) = struct.unpack("<Q", prefix)
        if header_length > MAX_SAFETENSORS_HEADER:
            raise ModelError(f"{path}: corrupt safetensors: header length {header_length} bytes is not plausible; "
                             "download the file again.")
        if 8 + header_length > size:
            raise ModelError(f"{path}: truncated or corrupt safetensors: the header says {header_length} bytes but "
                             f"the file has only {size}; download the file again.")
        raw = handle.read(header_length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: corrupt safetensors: the header is not valid JSON ({error}); "
                         "download the file again.") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path}: corrupt safetensors: the header is not a JSON object.")
    _check_tensor_offsets(path, header, data_size=size - 8 - header_length)
    return header


def _check_tensor_offsets(path: Path, header: dict, data_size: int) -> None:
    """The rules the safetensors library enforces when loading, checked without reading the data."""
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict):
                raise ModelError(f"{path}: corrupt safetensors: __metadata__ is not an object.")
            continue
        try:
            begin, end = (int(value) for value in info["data_offsets"])
            shape = [int(dim) for dim in info["shape"]]
            dtype = str(info["dtype"])
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{path}: corrupt safetensors: tensor {name!r} has no valid dtype/shape/data_offsets.") from None
        if begin < 0 or end < begin:
            raise ModelError(f"{path}: corrupt safetensors: tensor {name!r} has offsets [{begin}, {end}].")
        element_bytes = _DTYPE_BYTES.get(dtype)
        if element_bytes is not None and (end - begin) != math.prod(shape) * element_bytes:
            raise ModelError(f"{path}: corrupt safetensors: tensor {name!r} ({dtype} {shape}) should take "
                             f"{math.prod(shape) * element_bytes} bytes but its offsets give {end - begin}.")
        spans.append((begin, end, name))
    spans.sort()
    expected_begin = 0
    for begin, end, name in spans:
        if begin != expected_begin:
            raise ModelError(f"{path}: corrupt safetensors: tensor {name!r} starts at byte {begin}, expected "
                             f"{expected_begin}.")
        expected_begin = end
    if expected_begin > data_size:
        raise ModelError(f"{path}: truncated safetensors: the header describes {expected_begin} bytes of tensor "
                         f"data but the file holds {data_size}; download the file again.")
    if expected_begin < data_size:
        raise ModelError(f"{path}: corrupt safetensors: {data_size - expected_begin} unexpected bytes after the "
                         "tensor data; download the file again.")


def _lfs_pointer_size(path: Path) -> str:
    text = path.read_text(encoding="utf-8", errors="replace")[:1000]
    match = re.search(r"^size (\d+)$", text, flags=re.MULTILINE)
    return f" to a {format_bytes(int(match.group(1)))} file" if match else ""


# A file's check, kept while its stat signature (device, inode, size, mtime) is unchanged: the front door
# checks the model's weights on every API submission, and reading every safetensors header of an SDXL
# folder cost ~5.4 ms of CPU per submission (benchmarks/submission_profile.py), against ~0.2 ms without it.
_CHECKED: dict[tuple[str, bool], tuple[tuple[int, int, int, int], WeightsFileInfo]] = {}
_CHECKED_MAX = 4096


def check_weights_file(path: str | Path, allow_pickle: bool = False) -> WeightsFileInfo:
    """Check that one weights file can be loaded, without loading it.

    Raises ModelError (one line naming the path) for a missing, empty, corrupt or truncated file, a
    git-LFS pointer, a pickle when allow_pickle is false, and content whose name would make loaders
    read it the wrong way (diffusers picks the reader by extension). A file that passed is not read
    again until its stat signature changes; a failure is never kept.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return _check_weights_file(path, allow_pickle)
    signature = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    key = (str(path), allow_pickle)
    kept = _CHECKED.get(key)
    if kept is not None and kept[0] == signature:
        return kept[1]
    info = _check_weights_file(path, allow_pickle)
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED[key] = (signature, info)
    return info


def _check_weights_file(path: Path, allow_pickle: bool) -> WeightsFileInfo:
    if not path.exists():
        broken = " (a broken link: the download did not finish)" if path.is_symlink() else ""
        raise ModelError(f"{path}: weights file does not exist{broken}.")
    if not path.is_file():
        raise ModelError(f"{path}: is not a file.")
    size = path.stat().st_size
    if size == 0:
        raise ModelError(f"{path}: weights file is empty; download it again.")
    found = detect_format(path)
    suffix = path.suffix.lower()
    if found == "lfs-pointer":
        raise ModelError(f"{path}: is a git-LFS pointer{_lfs_pointer_size(path)}, not the weights; fetch the real "
                         "file (`git lfs pull` in that repository, or `echo-os models pull NAME`).")
    if found == "unknown":
        head = path.open("rb").read(8).hex(" ")
        raise ModelError(f"{path}: not a weights file (neither safetensors nor a PyTorch checkpoint; first bytes "
                         f"{head}); it is corrupt or of another format.")
    if found in ("pickle-zip", "pickle"):
        kind = "a PyTorch pickle checkpoint" + (" (zip)" if found == "pickle-zip" else "")
        if suffix == ".safetensors":
            raise ModelError(f"{path}: is named .safetensors but holds {kind}; it is not safetensors (rename it to "
                             ".ckpt and use --allow-pickle only if you trust where it came from).")
        if not allow_pickle:
            raise ModelError(f"{path}: is {kind}, which can run code when loaded; convert it to safetensors, or "
                             "allow it with --allow-pickle (allow_pickle = true in models.toml) if you trust it.")
        return WeightsFileInfo(path=path, format=found, size=size)
    # safetensors
    if suffix != ".safetensors":
        raise ModelError(f"{path}: holds safetensors data but is named {suffix or 'without an extension'}; "
                         "rename it to .safetensors so it is read as safetensors.")
    header = read_safetensors_header(path)
    names = tuple(name for name in header if name != "__metadata__")
    metadata = header.get("__metadata__")
    return WeightsFileInfo(path=path, format="safetensors", size=size, tensor_count=len(names),
                           tensor_names=names, metadata=metadata)


# Key prefixes only an SDXL checkpoint (original Stability layout) has: the second text encoder
# (OpenCLIP bigG, base model) and the size/crop conditioning embedding (base and refiner).
SDXL_SINGLE_FILE_PREFIXES = ("conditioner.embedders.1.", "model.diffusion_model.label_emb.")
SD1_SINGLE_FILE_PREFIXES = ("cond_stage_model.",)


def sdxl_single_file_problem(info: WeightsFileInfo) -> str | None:
    """Why a checked single-file checkpoint is not an SDXL one (read from its safetensors keys), or None.
    Pickles are never opened, so their keys are not checked (None)."""
    if info.format != "safetensors":
        return None
    names = info.tensor_names
    if any(name.startswith(SDXL_SINGLE_FILE_PREFIXES) for name in names):
        return None
    if any(name.startswith(SD1_SINGLE_FILE_PREFIXES) for name in names):
        return f"{info.path}: a Stable Diffusion 1.x/2.x checkpoint (cond_stage_model), not SDXL."
    return (f"{info.path}: not an SDXL checkpoint (no conditioner.embedders.1 or model.diffusion_model.label_emb "
            "keys).")


# --- which files in a folder a loader reads -------------------------------------------------------------

# The names from_pretrained looks for (diffusers and transformers), plain or sharded, with or without
# a variant: model.safetensors, diffusion_pytorch_model.fp16.safetensors,
# model.fp16-00001-of-00002.safetensors, model-00001-of-00002.fp16.safetensors (legacy).
_WEIGHT_NAME_RE = re.compile(
    r"^(?P<prefix>diffusion_pytorch_model|model|pytorch_model)"
    r"(?:-(?P<shard1>\d{5}-of-\d{5}))?"
    r"(?:\.(?P<variant>[A-Za-z0-9_]+?)(?:-(?P<shard2>\d{5}-of-\d{5}))?)?"
    r"\.(?P<ext>safetensors|bin)$"
)


def weight_file_variant(name: str) -> tuple[bool, str | None, str | None]:
    """(is a from_pretrained weights name, its variant or None, its extension)."""
    match = _WEIGHT_NAME_RE.match(name)
    if not match:
        return False, None, None
    return True, match.group("variant"), match.group("ext")


def choose_weight_files(names: list[str], variant: str | None) -> list[str]:
    """The weight files from_pretrained reads among one folder's file names.

    Mirrors diffusers: files of the requested variant when the folder has any, else the plain ones;
    safetensors when present, else .bin (a pickle, checked later).
    """
    plain: dict[str, list[str]] = {"safetensors": [], "bin": []}
    wanted: dict[str, list[str]] = {"safetensors": [], "bin": []}
    for name in names:
        is_weights, name_variant, ext = weight_file_variant(name)
        if not is_weights or ext is None:
            continue
        if name_variant is None:
            plain[ext].append(name)
        elif variant is not None and name_variant == variant:
            wanted[ext].append(name)
    pool = wanted if (wanted["safetensors"] or wanted["bin"]) else plain
    return sorted(pool["safetensors"] or pool["bin"])


def folder_has_variant(names: list[str], variant: str) -> bool:
    return any(weight_file_variant(name)[1] == variant for name in names)


def format_bytes(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"
