"""STORY_BIBLE.md: Markdown for people, YAML front matter for the machine.

    ---
    title: Lighthouse Keeper
    model: sdxl
    defaults: {steps: 30, cfg: 6.5, size: 1216x832, scheduler: dpmpp_2m_karras}
    style: {prompt: "documentary photo, 35mm prime lens", negative: "cartoon, text"}
    characters:
      keeper: {name: Elias, description: "a 68-year-old man with a grey beard", seed: 1868}
    locations: {lighthouse: "a white stone lighthouse on a rocky headland"}
    props: {lamp: "a brass storm lantern"}
    ---
    # Prose for people: kept with the story (its hash is in every image's meta.json), never parsed.

The front matter is read with a SafeLoader subclass that refuses anchors and aliases (the YAML
"billion laughs" bomb), nesting deeper than MAX_YAML_DEPTH, more than MAX_YAML_NODES nodes and
duplicate keys, after a byte cap on the front matter; pydantic (extra="forbid") checks the keys, and
every error is reported with its key path (`characters.keeper.seed`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from echo_os.engines.inputs import MAX_INPUT_IMAGE_BYTES, input_image_problem
from echo_os.errors import UsageError
from echo_os.render.requests import MAX_SEED, MAX_STEPS, SCHEDULERS, parse_size
from echo_os.story.problems import ProblemList

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

    from echo_os.settings import Settings

MAX_BIBLE_BYTES = 4 * 1024 * 1024
MAX_FRONT_MATTER_BYTES = 64 * 1024
MAX_YAML_DEPTH = 16
MAX_YAML_NODES = 10_000

# Ids are how story.csv names characters, locations and props; `;` separates them there.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ID_RE = re.compile(ID_PATTERN)
_FENCE_RE = re.compile(r"^(?:---|\.\.\.)[ \t]*\r?$", re.MULTILINE)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Defaults(_Strict):
    """Render settings for every scene unless a CSV column or a CLI option says otherwise."""

    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    cfg: float | None = Field(default=None, ge=0.0, le=100.0, allow_inf_nan=False)
    size: str | None = None
    scheduler: str | None = None
    # The story's base seed for scenes without characters (see docs/story.md, seed policy).
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)

    @field_validator("size")
    @classmethod
    def _size_parses(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_size(value)
            except UsageError:
                raise ValueError(f"size must look like WIDTHxHEIGHT, for example 1216x832; got {value!r}") from None
        return value

    @field_validator("scheduler")
    @classmethod
    def _scheduler_known(cls, value: str | None) -> str | None:
        if value is not None and value not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {value!r}; allowed: {', '.join(SCHEDULERS)}")
        return value


class Style(_Strict):
    """The story's look: inline words (`{prompt, negative}`, put first in every scene's prompt), or a named
    style (`style: noir`, styles.toml or a built-in: its {prompt} placement and its negative)."""

    prompt: str = ""
    negative: str = ""
    name: str | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _name_only(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _name_or_words(self) -> "Style":
        if self.name is not None and (self.prompt or self.negative):
            raise ValueError("style is either a name (style: noir) or words (prompt, negative), not both")
        return self


class LoraRef(_Strict):
    """A LoRA for a character: a name from the model registry or a path, and its weight."""

    name: str = Field(min_length=1)
    scale: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)


class Character(_Strict):
    name: str = Field(min_length=1)
    description: str = Field(min_length=1)
    seed: int = Field(ge=0, le=MAX_SEED)
    # Image paths relative to the bible; a single path or a list.
    reference: tuple[str, ...] = ()
    ip_adapter_scale: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    lora: LoraRef | None = None

    @field_validator("reference", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("lora", mode="before")
    @classmethod
    def _name_only(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class FrontMatter(_Strict):
    title: str = Field(min_length=1)
    model: str | None = None
    # The IP-Adapter (a models.toml ip-adapter entry) for the characters' reference images; `--ip-adapter`
    # (the API's `ip_adapter`) overrides it, and without either the default is ip-adapter-sdxl.
    ip_adapter: str | None = Field(default=None, min_length=1)
    defaults: Defaults = Field(default_factory=Defaults)
    style: Style = Field(default_factory=Style)
    characters: dict[str, Character] = Field(default_factory=dict)
    locations: dict[str, str] = Field(default_factory=dict)
    props: dict[str, str] = Field(default_factory=dict)

    @field_validator("characters", "locations", "props")
    @classmethod
    def _ids_well_formed(cls, value: dict) -> dict:
        bad = [key for key in value if not _ID_RE.match(key)]
        if bad:
            raise ValueError(
                f"id {bad[0]!r} is not allowed: use letters, digits, '_', '-' or '.', "
                "starting with a letter or digit, at most 64 characters")
        return value


class Bible(BaseModel):
    """A parsed story bible: the front matter, the prose kept as text, and the file's sha256."""

    model_config = ConfigDict(frozen=True)

    path: Path
    sha256: str
    front: FrontMatter
    prose: str

    @property
    def title(self) -> str:
        return self.front.title

    def reference_paths(self, character_id: str) -> tuple[Path, ...]:
        """A character's reference images as absolute paths (relative ones are relative to the bible)."""
        base = self.path.parent
        return tuple((base / ref).resolve() for ref in self.front.characters[character_id].reference)


# ---- YAML with guards ------------------------------------------------------------------------------

class _RefusedYaml(yaml.YAMLError):
    def __init__(self, message: str, mark: yaml.Mark | None):
        super().__init__(message)
        self.message = message
        self.mark = mark


class GuardedSafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses anchors/aliases, deep nesting, huge node counts, duplicate keys."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent, index):  # PyYAML's signature
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _RefusedYaml("YAML anchors and aliases (& and *) are not allowed in the front matter; "
                               "write the value out", event.start_mark)
        self._nodes += 1
        if self._nodes > MAX_YAML_NODES:
            raise _RefusedYaml(f"the front matter has more than {MAX_YAML_NODES} YAML values", event.start_mark)
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise _RefusedYaml(f"the front matter nests deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key; PyYAML reports it below
                break
            if duplicate:
                raise _RefusedYaml(f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_front_matter_yaml(text: str) -> Any:
    """Parse front-matter YAML with the guards above (raises yaml.YAMLError)."""
    loader = GuardedSafeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


# ---- reading the file ------------------------------------------------------------------------------

def _key_path(loc: tuple, bad_key: Any = None) -> str:
    if loc and loc[-1] == "[key]":  # a bad mapping key: name the mapping and the key as YAML read it
        return ".".join([str(part) for part in loc[:-2]] + [str(bad_key)])
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def _allowed_keys(loc: tuple) -> list[str] | None:
    """The keys the schema allows at the mapping that contains loc[-1]."""
    model: Any = FrontMatter
    parts = list(loc[:-1])
    while parts:
        part = parts.pop(0)
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        annotation = field.annotation
        origin = getattr(annotation, "__origin__", None)
        if origin is dict:
            parts = parts[1:]  # skip the id level
            annotation = annotation.__args__[1]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif hasattr(annotation, "__args__"):  # Optional[Model]
            models = [arg for arg in annotation.__args__ if isinstance(arg, type) and issubclass(arg, BaseModel)]
            if not models:
                return None
            model = models[0]
        else:
            return None
    return list(model.model_fields)


def _describe(error: ErrorDetails) -> str:
    kind = error.get("type")
    loc = tuple(error.get("loc", ()))
    if loc and loc[-1] == "[key]":
        return (f"the id {error.get('input')!r} is not text (YAML reads unquoted yes, no, on, off and numbers "
                "as other types); put the id in quotes")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(tuple(error["loc"]))
        return "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    if kind == "missing":
        return "missing required key"
    return str(error.get("msg", "invalid value")).removeprefix("Value error, ")


def _read_bytes(path: Path, limit: int, label: str, problems: ProblemList) -> bytes | None:
    try:
        size = path.stat().st_size
        if size > limit:
            problems.add(label, f"the file is {size:,} bytes; the limit is {limit:,} bytes")
            return None
        with open(path, "rb") as handle:
            return handle.read(limit + 1)
    except FileNotFoundError:
        problems.add(label, f"file not found: {path}")
    except IsADirectoryError:
        problems.add(label, f"{path} is a folder, not a file")
    except OSError as error:
        problems.add(label, f"cannot read {path}: {error.strerror or error}")
    return None


def split_front_matter(text: str) -> tuple[str, str, int] | str:
    """(yaml text, prose, line number of the first YAML line) or a message saying what is wrong."""
    first_newline = text.find("\n")
    first_line = text if first_newline < 0 else text[:first_newline]
    if first_line.rstrip() != "---":
        return ("the file does not start with YAML front matter: put a line '---' first, then the keys "
                "(title, characters, ...), then another '---' line, then the prose")
    start = first_newline + 1
    fence = _FENCE_RE.search(text, start, start + MAX_FRONT_MATTER_BYTES + 8)
    if fence is None:
        if len(text.encode("utf-8")) - start > MAX_FRONT_MATTER_BYTES:
            return f"the front matter is not closed by a '---' line within {MAX_FRONT_MATTER_BYTES:,} bytes"
        return "the front matter is not closed: add a line '---' after the YAML keys"
    front = text[start:fence.start()]
    if len(front.encode("utf-8")) > MAX_FRONT_MATTER_BYTES:
        return f"the front matter is larger than {MAX_FRONT_MATTER_BYTES:,} bytes"
    return front, text[fence.end():].lstrip("\r\n"), 2


# A reference image is read whole (hashed, then decoded for the IP-Adapter): bounded, so a huge file or a
# device cannot stall planning (the rule and its limit live with the engines' inputs).
MAX_REFERENCE_BYTES = MAX_INPUT_IMAGE_BYTES


def reference_image_problem(resolved: Path, roots: tuple[Path, ...]) -> str | None:
    """Why `resolved` (symlinks already followed) cannot be a reference image, or None.

    The rule, the same for `echo-os batch` and the API (engines.inputs.input_image_problem): the file must
    lie inside the folder of the bible that names it or inside the workspace (the API writes the bible
    inside the workspace, so there it is the workspace), be a regular file of at most MAX_REFERENCE_BYTES,
    and be an image Pillow decodes whole (a truncated PNG is refused here, not in the engine).
    """
    return input_image_problem(resolved, roots, "the bible's folder and the workspace",
                               "reference images are read only from there")


def load_bible(path: str | Path, problems: ProblemList | None = None) -> Bible | None:
    """Parse and check a story bible.

    With `problems` given, problems are added to it and None is returned for a bible that cannot be
    used; without, a StoryError is raised. Reference images are checked to exist.
    """
    own = problems is None
    if problems is None:
        problems = ProblemList()
    bible, _ = load_bible_and_raw(Path(path), problems)
    if own:
        problems.raise_if_any()
    return bible


def load_bible_and_raw(path: Path, problems: ProblemList, *,
                       workspace: Path | None = None) -> tuple[Bible | None, dict | None]:
    """(the bible or None, the parsed YAML mapping or None). The raw mapping lets the planner still
    check the storyboard's ids when the YAML parsed but a key is wrong. Reference images must lie inside
    the bible's folder or `workspace` (reference_image_problem)."""
    raw: dict | None = None

    def parsed(value: dict) -> None:
        nonlocal raw
        raw = value

    bible = _load_bible(path, problems, parsed, workspace)
    return bible, raw


def _load_bible(path: Path, problems: ProblemList, on_yaml=lambda raw: None,
                workspace: Path | None = None) -> Bible | None:
    label = path.name
    data = _read_bytes(path, MAX_BIBLE_BYTES, label, problems)
    if data is None:
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        problems.add(label, f"not UTF-8 text (byte 0x{data[error.start]:02x}); save the file as UTF-8", line=line)
        return None
    split = split_front_matter(text)
    if isinstance(split, str):
        problems.add(label, split)
        return None
    front_text, prose, first_line = split
    try:
        raw = load_front_matter_yaml(front_text)
    except _RefusedYaml as error:
        problems.add(label, error.message, line=error.mark.line + first_line if error.mark else None)
        return None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        reason = getattr(error, "problem", None) or str(error)
        problems.add(label, f"YAML error in the front matter: {reason}",
                     line=mark.line + first_line if mark else None)
        return None
    if raw is None:
        problems.add(label, "the front matter is empty; it needs at least a title")
        return None
    if not isinstance(raw, dict):
        problems.add(label, f"the front matter must be YAML keys and values, not a {type(raw).__name__}")
        return None
    on_yaml(raw)
    try:
        front = FrontMatter.model_validate(raw)
    except ValidationError as error:
        for item in error.errors():
            problems.add(label, _describe(item), key=_key_path(tuple(item["loc"]), item.get("input")))
        return None
    bible = Bible(path=path.resolve(), sha256=hashlib.sha256(data).hexdigest(), front=front, prose=prose)
    roots = (path.resolve().parent, *((Path(workspace).resolve(),) if workspace is not None else ()))
    for character_id, character in front.characters.items():
        for index, (ref, resolved) in enumerate(zip(character.reference, bible.reference_paths(character_id))):
            problem = reference_image_problem(resolved, roots)
            if problem:
                problems.add(label, f"reference image {ref!r} {problem}",
                             key=f"characters.{character_id}.reference[{index}]")
    # Returned even with missing images, so the storyboard's ids are still checked against it.
    return bible


def character_ids_named(settings: "Settings", name: str) -> tuple[str, ...]:
    """The ids of the characters called `name` (any case) in the bibles of the workspace's rendered stories
    (each story.json names its bible), so `--character "Elias Marr"` finds what `--character keeper` does."""
    import json

    wanted, ids = name.casefold(), set[str]()
    for story_json in settings.artifacts_dir.glob("*/*/story.json"):
        try:
            data = json.loads(story_json.read_text(encoding="utf-8"))
            path = Path(str((data.get("bible") or {}).get("path") or ""))
            bible = load_bible(path, ProblemList()) if path.name and path.is_file() else None
        except (OSError, ValueError, AttributeError):
            continue  # a story file this cannot read names no character
        if bible is not None:
            ids.update(cid for cid, character in bible.front.characters.items()
                       if character.name.casefold() == wanted)
    return tuple(sorted(ids))
