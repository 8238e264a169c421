"""models.toml: named models and where their weights are.

Two layers, read in order: the default registry that ships with echo-os (default_models.toml in this
package; the repo root's models.toml is the same file for people reading the repository), then the
workspace's own models.toml, whose entries add to the defaults and replace those of the same name.
The format is documented in docs/models.md.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from echo_os.errors import NotFoundError, UsageError
from echo_os.package_data import package_folder

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from echo_os.models.entry import (  # noqa: F401  (re-exported: the older import path)
    DEFAULT_KEYS,
    MODEL_TYPES,
    PIPELINE_TYPES,
    SOURCE_KEYS,
    STRING_KEYS,
    ModelEntry,
    ModelType,
    RenderDefaults,
    SourceKind,
)

if TYPE_CHECKING:
    from echo_os.models.resolve import ResolvedModel
    from echo_os.settings import Settings

KNOWN_KEYS: tuple[str, ...] = (*STRING_KEYS, "allow_pickle", *DEFAULT_KEYS)

DEFAULT_MODELS_TOML = package_folder("models") / "default_models.toml"

# Names become TOML keys and CLI arguments: keep them to what needs no explaining.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# A Hugging Face repo id: "org/name" (or a legacy bare "name"); no "--" or "..", as the Hub requires.
HF_ID_RE = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
PACKAGE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _parse_defaults(table: dict, where: str, model_type: str) -> RenderDefaults | None:
    from echo_os.render.requests import MAX_STEPS, SCHEDULERS, parse_size

    given = {key: table[key] for key in DEFAULT_KEYS if key in table}
    if not given:
        return None
    if model_type != "sdxl":
        raise UsageError(f"{where}: {', '.join(given)} only apply to sdxl entries.")
    steps, cfg = given.get("steps"), given.get("cfg")
    if steps is not None and not (isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps <= MAX_STEPS):
        raise UsageError(f"{where}.steps: must be a whole number from 1 to {MAX_STEPS}.")
    if cfg is not None and not (isinstance(cfg, (int, float)) and not isinstance(cfg, bool) and 0 <= cfg <= 100):
        raise UsageError(f"{where}.cfg: must be a number from 0 to 100.")
    scheduler = given.get("scheduler")
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise UsageError(f"{where}.scheduler: unknown scheduler {scheduler!r} (known: {', '.join(SCHEDULERS)}).")
    size = given.get("size")
    if size is not None:
        if not isinstance(size, str):
            raise UsageError(f"{where}.size: must be a string like \"512x512\".")
        parse_size(size)
    lora = given.get("lora")
    if lora is not None and not (isinstance(lora, str) and NAME_RE.match(lora)):
        raise UsageError(f"{where}.lora: must name a lora entry of models.toml.")
    return RenderDefaults(steps=steps, cfg=None if cfg is None else float(cfg), scheduler=scheduler, size=size,
                          lora=lora)


class ModelRegistry:
    """The merged registry: default entries, then the workspace's, by name."""

    def __init__(self, entries: dict[str, ModelEntry], sources: tuple[Path, ...] = ()) -> None:
        self._entries = dict(entries)
        self.sources = sources

    def get(self, name: str) -> ModelEntry:
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(self._entries) or "(none)"
            raise NotFoundError(f"no model named '{name}' in models.toml; known models: {known} "
                                "(see `echo-os models list`).")
        return entry

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def resolve(self, name: str) -> "ResolvedModel":
        """resolve_model for a name, with this registry at hand for image_encoder references."""
        from echo_os.models.resolve import resolve_model

        return resolve_model(self.get(name), registry=self)


def load_registry(settings: "Settings") -> ModelRegistry:
    """The default registry overlaid with the workspace's models.toml (when it has one)."""
    sources = [DEFAULT_MODELS_TOML]
    workspace = settings.models_toml
    if workspace.is_file() and not _same_file(workspace, DEFAULT_MODELS_TOML):
        sources.append(workspace)
    entries: dict[str, ModelEntry] = {}
    for source in sources:
        entries.update(parse_models_toml(source))
    return ModelRegistry(entries, tuple(sources))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def read_toml(path: Path) -> dict:
    """A TOML file as a dict; a syntax error becomes one UsageError line naming the file."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{path}: invalid TOML: {error}.") from None
    except UnicodeDecodeError as error:  # tomllib reads UTF-8 only; binary garbage lands here
        raise UsageError(f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}); "
                         "it must be a TOML file saved as UTF-8.") from None
    except OSError as error:
        raise UsageError(f"{path}: cannot read: {error.strerror}.") from None


# Parsed models.toml files by path, with the file's stat signature: the API builds several requests a
# second and each asks the registry two or three times (model check, entry defaults, LoRA); parsing both
# files each time cost ~8 ms a submission (benchmarks/RESULTS.md, issue 15). Entries are frozen, so the
# cached ones are shared; a file changed on disk (mtime, ctime, size or inode) is parsed again.
_PARSED: dict[Path, tuple[tuple[int, int, int, int], dict[str, ModelEntry]]] = {}


def parse_models_toml(path: Path) -> dict[str, ModelEntry]:
    try:
        stat = path.stat()
    except OSError:
        return parse_models_document(read_toml(path), path)  # read_toml names what is wrong
    signature = (stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, stat.st_ino)
    cached = _PARSED.get(path)
    if cached is not None and cached[0] == signature:
        return dict(cached[1])
    entries = parse_models_document(read_toml(path), path)
    _PARSED[path] = (signature, entries)
    return dict(entries)


def parse_models_document(document: dict, path: Path) -> dict[str, ModelEntry]:
    """Validate a parsed models.toml. Every error is one line naming the file and the key path."""
    for key in document:
        if key != "models":
            raise UsageError(f"{path}: unknown key '{key}'; a models.toml holds only [models.NAME] tables.")
    tables = document.get("models", {})
    if not isinstance(tables, dict):
        raise UsageError(f"{path}: 'models' must be a table of [models.NAME] tables.")
    return {name: _parse_entry(name, table, path) for name, table in tables.items()}


def _parse_entry(name: str, table: object, path: Path) -> ModelEntry:
    where = f"{path}: models.{name}"
    if not NAME_RE.match(name):
        raise UsageError(f"{where}: a model name is letters, digits, '.', '_' or '-' (at most 64, starting with a "
                         "letter or digit).")
    if not isinstance(table, dict):
        raise UsageError(f"{where}: must be a table ([models.{name}]) with one of {', '.join(SOURCE_KEYS)}.")
    for key, value in table.items():
        if key not in KNOWN_KEYS:
            raise UsageError(f"{where}.{key}: unknown key (known keys: {', '.join(KNOWN_KEYS)}).")
        if key == "allow_pickle":
            if not isinstance(value, bool):
                raise UsageError(f"{where}.allow_pickle: must be true or false.")
        elif key in DEFAULT_KEYS:
            pass  # checked by _parse_defaults
        elif not isinstance(value, str) or not value.strip():
            raise UsageError(f"{where}.{key}: must be a non-empty string.")

    model_type = table.get("type", "sdxl")
    if model_type not in MODEL_TYPES:
        raise UsageError(f"{where}.type: unknown type '{model_type}' (known: {', '.join(MODEL_TYPES)}).")
    given = [key for key in SOURCE_KEYS if key in table]
    if len(given) != 1:
        found = f"found {', '.join(given)}" if given else "found none"
        raise UsageError(f"{where}: give exactly one of {', '.join(SOURCE_KEYS)} ({found}).")
    kind = given[0]
    raw_source = table[kind]
    base = path.parent

    if kind in ("path", "file"):
        source = _absolute(raw_source, base)
    elif kind == "hf":
        if not HF_ID_RE.match(raw_source) or "--" in raw_source or ".." in raw_source:
            raise UsageError(f"{where}.hf: '{raw_source}' is not a Hugging Face repo id (like org/name).")
        source = raw_source
    else:
        if not PACKAGE_RE.match(raw_source):
            raise UsageError(f"{where}.package: '{raw_source}' is not a Python package name.")
        source = raw_source

    def refuse(key: str, why: str) -> None:
        if key in table:
            raise UsageError(f"{where}.{key}: {why}.")

    if kind != "hf":
        refuse("revision", "only applies to hf entries")
    if kind == "file":
        refuse("variant", "does not apply to a single file")
        refuse("subfolder", "does not apply to a single file")
        refuse("weight_name", "does not apply to a file entry (the file is the weights)")
    if model_type in PIPELINE_TYPES:  # a diffusers pipeline folder (engines/video.py, shap_e.py, audio.py)
        if kind in ("file", "package"):
            raise UsageError(f"{where}: a {model_type} model is a diffusers pipeline folder (path or hf), not a {kind}.")
        refuse("weight_name", f"a {model_type} model is a pipeline folder, not one file")
    if model_type in ("clip", "text-embedder", "taesd"):
        if kind == "file":
            raise UsageError(f"{where}: a {model_type} model is a folder (path, hf or package), not a single file.")
        refuse("weight_name", f"a {model_type} model is a folder, not one file")
    single_file = kind == "file" or "weight_name" in table
    if not (model_type == "sdxl" and single_file):
        refuse("config", "only applies to a single-file sdxl checkpoint (file, or hf/path with weight_name)")
    if model_type == "scorer" and kind != "file":
        # An aesthetic head is a few kilobytes of MLP weights: one local file, never fetched (issue 16).
        raise UsageError(f"{where}: a scorer entry is one local file: give `file` (a .safetensors MLP head over "
                         "CLIP image embeddings).")
    if model_type == "lora" and kind != "file" and "weight_name" not in table:
        raise UsageError(f"{where}: a lora entry is one file: give `file`, or weight_name (the .safetensors "
                         "file) with hf or path.")
    if model_type != "ip-adapter":
        refuse("image_encoder", "only applies to type = \"ip-adapter\"")
    elif kind != "file" and "weight_name" not in table:
        raise UsageError(f"{where}: an ip-adapter entry needs weight_name (the adapter file, like "
                         "ip-adapter_sdxl.safetensors), with subfolder if it is not at the top.")

    config = table.get("config")
    if config is not None:
        config = _config_location(config, base, where)
    image_encoder = table.get("image_encoder")
    if image_encoder is not None and _looks_like_path(image_encoder):
        image_encoder = _absolute(image_encoder, base)
    return ModelEntry(
        name=name,
        type=model_type,
        kind=kind,
        source=source,
        variant=table.get("variant"),
        revision=table.get("revision"),
        config=config,
        subfolder=_clean_subfolder(table.get("subfolder"), where),
        weight_name=table.get("weight_name"),
        image_encoder=image_encoder,
        description=table.get("description"),
        allow_pickle=bool(table.get("allow_pickle", False)),
        origin=path,
        defaults=_parse_defaults(table, where, model_type),
    )


def _absolute(value: str, base: Path) -> str:
    """A path from models.toml: ~ expanded, relative to the toml file's folder, symlinks kept."""
    expanded = Path(value).expanduser()
    return os.path.abspath(expanded if expanded.is_absolute() else base / expanded)


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.startswith((".", "~"))


def _config_location(value: str, base: Path, where: str) -> str:
    """config = a local folder (kept as an absolute path) or a Hugging Face repo id (kept as is)."""
    if value.startswith(("/", "./", "../", "~", ".\\", "..\\")) or Path(value).is_absolute():
        return _absolute(value, base)
    if (base / value).is_dir():
        return _absolute(value, base)
    if HF_ID_RE.match(value) and "--" not in value and ".." not in value:
        return value
    raise UsageError(f"{where}.config: '{value}' is neither a folder nor a Hugging Face repo id.")


def _clean_subfolder(value: str | None, where: str) -> str | None:
    if value is None:
        return None
    cleaned = value.strip("/")
    if Path(cleaned).is_absolute() or ".." in Path(cleaned).parts:
        raise UsageError(f"{where}.subfolder: must be a relative folder inside the model, got '{value}'.")
    return cleaned or None


# --- writing the workspace models.toml (`echo-os models add`) -------------------------------------------

_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_FIELD_ORDER = ("type", *SOURCE_KEYS, "variant", "revision", "config", "subfolder", "weight_name", "image_encoder",
                "allow_pickle", "description")

WORKSPACE_HEADER = (
    "# echo-os models for this workspace. Entries here add to the default registry and replace default\n"
    "# entries of the same name. Format: docs/models.md in the echo-os repository.\n"
)


def toml_string(value: str) -> str:
    """A TOML basic string (the small writer used when tomli_w is not installed)."""
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    out = []
    for char in value:
        if char in escapes:
            out.append(escapes[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_key(key: str) -> str:
    return key if _BARE_KEY_RE.match(key) else toml_string(key)


def _ordered(fields: dict) -> dict:
    ordered = {key: fields[key] for key in _FIELD_ORDER if key in fields}
    ordered.update({key: value for key, value in fields.items() if key not in ordered})
    return ordered


def model_table_text(name: str, fields: dict[str, str | bool]) -> str:
    """The text of one [models.NAME] table, with tomli_w when installed, else the small writer."""
    fields = _ordered(fields)
    try:
        import tomli_w
    except ImportError:
        pass
    else:
        return tomli_w.dumps({"models": {name: fields}})
    lines = [f"[models.{toml_key(name)}]"]
    for key, value in fields.items():
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, str):
            rendered = toml_string(value)
        else:
            raise TypeError(f"models.toml values are strings or booleans, not {type(value).__name__}")
        lines.append(f"{toml_key(key)} = {rendered}")
    return "\n".join(lines) + "\n"


_TABLE_HEADER_RE = re.compile(r"^\s*\[\s*(?P<key>[^\]]*?)\s*\]\s*(?:#.*)?$")
_ANY_TABLE_RE = re.compile(r"^\s*\[")


def _header_names(key_text: str) -> list[str] | None:
    """['models', 'sdxl'] for the text inside [ ] of a table header; None when it is not a plain one."""
    try:
        parsed = tomllib.loads(f"[{key_text}]\n")
    except tomllib.TOMLDecodeError:
        return None
    names = []
    node = parsed
    while isinstance(node, dict) and len(node) == 1:
        key, node = next(iter(node.items()))
        names.append(key)
    return names


def _without_table(text: str, name: str) -> str:
    """text with the [models.NAME] table (header to the next table header) cut out.

    Comment lines right before the next header stay: they are about the table that follows.
    """
    kept: list[str] = []
    trailing_comments: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        if _ANY_TABLE_RE.match(line):
            match = _TABLE_HEADER_RE.match(line)
            if skipping:
                kept.extend(trailing_comments)
            skipping = match is not None and _header_names(match.group("key")) == ["models", name]
            trailing_comments = []
        if not skipping:
            kept.append(line)
        elif line.lstrip().startswith("#"):
            trailing_comments.append(line)
        elif line.strip():
            trailing_comments = []
    return "".join(kept)


def write_model_entry(toml_path: Path, name: str, fields: dict[str, str | bool], replace: bool) -> None:
    """Add (or, with replace, swap) one [models.NAME] table in a workspace models.toml, atomically.

    The file is edited as text so the user's comments and layout survive. The result is parsed back and
    compared with the intended document; should the text edit not give exactly that (an entry written as
    an inline table, say), the whole file is written out fresh instead.
    """
    original_text = toml_path.read_text(encoding="utf-8") if toml_path.exists() else ""
    document = tomllib.loads(original_text) if original_text else {}
    tables = dict(document.get("models", {}))
    if name in tables and not replace:
        raise UsageError(f"{toml_path}: already has a model named '{name}'; use --force to replace it.")
    tables.pop(name, None)
    tables[name] = fields
    intended = {**document, "models": tables}

    text = _without_table(original_text, name) if name in document.get("models", {}) else original_text
    if not text.strip():
        text = WORKSPACE_HEADER
    text = text.rstrip("\n") + "\n\n" + model_table_text(name, fields)
    try:
        matches = tomllib.loads(text) == intended
    except tomllib.TOMLDecodeError:
        matches = False
    if not matches:
        text = WORKSPACE_HEADER + "".join("\n" + model_table_text(key, value) for key, value in tables.items())
    atomic_write_text(toml_path, text)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so readers see the old or the new content, never half of it."""
    from echo_os.atomic import write_atomically

    write_atomically(path, text)
