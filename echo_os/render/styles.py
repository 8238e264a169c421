"""Named styles: styles.toml in the workspace, the built-in styles, and importing A1111 / Fooocus files.

styles.toml (the format `memory analyze --export-styles` writes too):

    [styles.noir]
    prompt = "{prompt}, film noir, hard shadows"   # {prompt} marks where the prompt goes
    negative = "colour, cartoon"

A style learned from artifacts (`echo-os memory learn-from`, echo_os/reflect/learn.py) also has

    [styles.harbour-dusk.learned]      where it came from: source ids, method, palette, when
    [styles.harbour-dusk.reference]    adapter, path (relative to artifacts/), sha256, scale

and a request rendered with it gets the reference image as one more IP-Adapter input (style_fields).

A style's prompt holds `{prompt}` where the user's prompt goes; without it the style is appended after
", " (A1111's rule). Its negative is appended to the user's negative the same way. Names are unique
case-insensitively; a workspace style hides a built-in of the same name.

`--style VALUE` on the CLI (and `style` in the API) is a named style when VALUE is one (in any case); a
VALUE that looks like a name (one word of letters, digits, `_`, `-`, `.`) but is none is an error; anything
else (words with spaces or commas) is free text appended to the prompt, as before named styles existed.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict

from echo_os.errors import OptionError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

if TYPE_CHECKING:
    from echo_os.render.requests import IPAdapterInput
    from echo_os.settings import Settings

PLACEHOLDER = "{prompt}"
MAX_NAME = 100
_NAME_LIKE = re.compile(r"^[\w.\-]+$")
# Bounds on an imported style file (red-team finding: a 12 MB field, deep JSON and a 5000-digit number
# gave a generic error; 200,000 rows made an unknown --style print a 3.4 MB line). A1111's and Fooocus's
# own files hold a few hundred styles in well under 1 MB.
MAX_STYLE_FILE_BYTES = 5 * 1024 * 1024
MAX_IMPORT_ROWS = 5000
MAX_WORKSPACE_STYLES = 10_000
KNOWN_SHOWN = 20  # names an unknown-style error lists before "and N more"


class LearnedTable(TypedDict):
    """[styles.NAME.learned] as styles.toml and the API hold it."""

    sources: list[str]
    method: str
    created: str
    palette: list[str]


class ReferenceTable(TypedDict):
    """[styles.NAME.reference] as styles.toml and the API hold it."""

    adapter: str
    path: str
    sha256: str
    scale: float


class _StyleTomlEntry(TypedDict):
    prompt: str
    negative: str


class StyleTomlEntry(_StyleTomlEntry, total=False):
    """[styles.NAME] of styles.toml."""

    learned: LearnedTable
    reference: ReferenceTable


class _StyleDict(TypedDict):
    name: str
    prompt: str
    negative: str
    builtin: bool


class StyleDict(_StyleDict, total=False):
    """A style as `styles list --json` and the API show it."""

    learned: LearnedTable
    reference: ReferenceTable


@dataclass(frozen=True)
class StyleSource:
    """Where a learned style came from (styles.toml [styles.NAME.learned])."""

    sources: tuple[str, ...]  # artifact ids
    method: str
    created: str = ""
    palette: tuple[str, ...] = ()  # colour names, most of the image first

    def as_dict(self) -> LearnedTable:
        return {"sources": list(self.sources), "method": self.method, "created": self.created,
                "palette": list(self.palette)}


@dataclass(frozen=True)
class StyleReference:
    """A learned style's image, given to the model through an IP-Adapter (styles.toml [styles.NAME.reference])."""

    adapter: str  # a models.toml ip-adapter entry
    path: str  # the image, relative to the artifacts folder (or absolute)
    sha256: str
    scale: float = 0.5

    def as_dict(self) -> ReferenceTable:
        return {"adapter": self.adapter, "path": self.path, "sha256": self.sha256, "scale": self.scale}


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative: str = ""
    builtin: bool = False
    learned: StyleSource | None = None
    reference: StyleReference | None = None

    def apply(self, prompt: str, negative: str | None) -> tuple[str, str | None]:
        """(prompt, negative) with this style applied. No negative anywhere stays None (the model's rule)."""
        return expand_prompt(self.prompt, prompt), join_negative(negative, self.negative)

    def as_dict(self) -> StyleDict:
        data: StyleDict = {"name": self.name, "prompt": self.prompt, "negative": self.negative, "builtin": self.builtin}
        if self.learned is not None:
            data["learned"] = self.learned.as_dict()
        if self.reference is not None:
            data["reference"] = self.reference.as_dict()
        return data


def expand_prompt(template: str, prompt: str) -> str:
    """The style's text with the prompt in place of {prompt}, else the prompt then ", " and the style."""
    template = template.strip()
    if not template:
        return prompt
    if PLACEHOLDER in template:
        return template.replace(PLACEHOLDER, prompt)
    return f"{prompt}, {template}" if prompt.strip() else template


def join_negative(negative: str | None, style_negative: str) -> str | None:
    style_negative = style_negative.strip()
    if not style_negative:
        return negative
    if negative is None or not negative.strip():
        return style_negative
    return f"{negative.strip()}, {style_negative}"


# Written here for echo-os: a few looks people reach for first. Not copied from any other tool's list.
BUILTIN_STYLES: tuple[Style, ...] = (
    Style("cinematic", "cinematic still of {prompt}, anamorphic lens, shallow depth of field, film grain, "
                       "dramatic lighting", "cartoon, illustration, flat lighting, text, watermark", True),
    Style("photographic", "photograph of {prompt}, 50mm lens, natural light, sharp focus, high detail",
          "painting, drawing, cartoon, blurry, text, watermark", True),
    Style("watercolor", "watercolor painting of {prompt}, soft washes, paper texture, loose brushwork",
          "photograph, 3d render, harsh edges, text", True),
    Style("ink", "ink drawing of {prompt}, cross-hatching, black and white, bold linework",
          "colour, photograph, blurry, text", True),
    Style("noir", "{prompt}, film noir, black and white, hard shadows, venetian blind light, 1940s",
          "colour, bright, cartoon, text", True),
    Style("storybook", "storybook illustration of {prompt}, gouache, warm palette, gentle shapes",
          "photograph, gritty, gore, text", True),
    Style("concept-art", "concept art of {prompt}, matte painting, atmospheric perspective, epic scale",
          "photograph, cartoon, text, watermark", True),
    # OpenAI's dall-e-3 `style` values (vivid: hyper-real and dramatic; natural: more natural, less
    # hyper-real), so a client sending them to /v1/images/generations gets that look instead of a 422.
    Style("vivid", "{prompt}, vivid saturated colours, dramatic lighting, hyper-real detail, high contrast",
          "dull, muted colours, flat lighting, washed out", True),
    Style("natural", "{prompt}, natural colours, soft realistic light, understated, true to life",
          "oversaturated, hyper-real, dramatic lighting, neon", True),
)


def builtin_styles() -> dict[str, Style]:
    return {style.name.casefold(): style for style in BUILTIN_STYLES}


# ---- styles.toml ------------------------------------------------------------------------------------

def read_workspace_styles(settings: "Settings") -> dict[str, Style]:
    """casefolded name -> Style from the workspace's styles.toml ({} when there is none)."""
    path = settings.styles_toml
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"{path} cannot be read as TOML ({error}); fix or remove it.") from None
    table = data.get("styles", {})
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [styles] must be a table of [styles.NAME] tables.")
    styles: dict[str, Style] = {}
    for name, entry in table.items():
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k, ""), str) for k in ("prompt", "negative")):
            raise UsageError(f"{path}: [styles.{name}] must have string keys prompt and negative.")
        unknown = set(entry) - {"prompt", "negative", "learned", "reference"}
        if unknown:
            raise UsageError(f"{path}: [styles.{name}] has unknown key(s) {', '.join(sorted(unknown))}; "
                             "it takes prompt and negative (and learned, reference).")
        try:  # a hand-edited file: the rules of `styles add` (printable names, prompt text)
            check_name(name)
            check_style_text(entry.get("prompt", ""), "prompt")
            check_style_text(entry.get("negative", ""), "negative")
        except OptionError as error:
            raise UsageError(f"{path}: [styles.{shown(name)}]: {error}; fix or remove it.") from None
        key = name.casefold()
        if key in styles:
            raise UsageError(f"{path}: style names are unique ignoring case; {styles[key].name!r} and {name!r} clash.")
        styles[key] = Style(name, entry.get("prompt", ""), entry.get("negative", ""),
                            learned=_learned(path, name, entry.get("learned")),
                            reference=_reference(path, name, entry.get("reference")))
    return styles


def _learned(path: Path, name: str, entry: object) -> StyleSource | None:
    if entry is None:
        return None
    try:
        assert isinstance(entry, dict)
        return StyleSource(sources=tuple(str(s) for s in entry["sources"]), method=str(entry["method"]),
                           created=str(entry.get("created", "")),
                           palette=tuple(str(c) for c in entry.get("palette", ())))
    except (AssertionError, KeyError, TypeError):
        raise UsageError(f"{path}: [styles.{name}.learned] needs sources (a list of ids) and method.") from None


def _reference(path: Path, name: str, entry: object) -> StyleReference | None:
    if entry is None:
        return None
    try:
        assert isinstance(entry, dict)
        scale = float(entry.get("scale", 0.5))
        assert 0.0 <= scale <= 2.0
        return StyleReference(adapter=str(entry["adapter"]), path=str(entry["path"]), sha256=str(entry["sha256"]),
                              scale=scale)
    except (AssertionError, KeyError, TypeError, ValueError):
        raise UsageError(f"{path}: [styles.{name}.reference] needs adapter, path, sha256 and a scale from 0 to 2.") \
            from None


def write_workspace_styles(settings: "Settings", styles: dict[str, Style]) -> None:
    import tomli_w

    from echo_os.atomic import write_atomically

    def entry(style: Style) -> StyleTomlEntry:
        data: StyleTomlEntry = {"prompt": style.prompt, "negative": style.negative}
        if style.learned is not None:
            data["learned"] = style.learned.as_dict()
        if style.reference is not None:
            data["reference"] = style.reference.as_dict()
        return data

    data = {"styles": {s.name: entry(s) for s in sorted(styles.values(), key=lambda s: s.name.casefold())}}
    write_atomically(settings.styles_toml, tomli_w.dumps(data))


def all_styles(settings: "Settings") -> dict[str, Style]:
    """Built-ins, then the workspace's (which win by name)."""
    return {**builtin_styles(), **read_workspace_styles(settings)}


def style_table(settings: "Settings") -> dict[str, tuple[str, str, str]]:
    """casefolded name -> (name, prompt, negative) of every style: what the story planner is given."""
    return {key: (s.name, s.prompt, s.negative) for key, s in all_styles(settings).items()}


def get_style(settings: "Settings", name: str, option: str = "style") -> Style:
    styles = all_styles(settings)
    found = styles.get(name.strip().casefold())
    if found is None:
        names = sorted(s.name for s in styles.values())
        known = ", ".join(names[:KNOWN_SHOWN]) + (f" and {len(names) - KNOWN_SHOWN} more" if len(names) > KNOWN_SHOWN
                                                  else "")
        raise OptionError(f"unknown style {shown(name)}; known styles: {known} (`echo-os styles list`)", option)
    return found


def shown(text: str, limit: int = 60) -> str:
    """`text` quoted for one error line: non-printable characters escaped, long text cut."""
    cut = text[:limit] + ("..." if len(text) > limit else "")
    return repr("".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in cut))


def _unprintable(text: str) -> str | None:
    """The first character of `text` that is not printable text (controls, NUL, bidi overrides such as
    U+202E, zero-width format characters, line separators), as U+XXXX; None when there is none."""
    import unicodedata

    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"):
            return f"U+{ord(char):04X}"
    return None


def check_name(name: str, option: str = "name") -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME or any(c in name for c in '\n\r\t"[]'):
        raise OptionError(f"a style name is 1-{MAX_NAME} characters without quotes, brackets or line breaks, "
                          f"got {shown(name)}", option)
    bad = _unprintable(name)
    if bad:
        raise OptionError(f"a style name is printable text; {shown(name)} holds the character {bad}", option)
    return name


def check_style_text(text: str, option: str) -> str:
    """A style's prompt or negative: the rules of prompt text (requests.check_prompt_text: no control
    characters, tab and newline aside; at most MAX_PROMPT_CHARS), else an OptionError on `option`."""
    from echo_os.render.text import MAX_PROMPT_CHARS, check_prompt_text

    if len(text) > MAX_PROMPT_CHARS:
        raise OptionError(f"{option} is {len(text):,} characters; a style's text is at most {MAX_PROMPT_CHARS:,}",
                          option)
    try:
        check_prompt_text(text)
    except ValueError as error:
        raise OptionError(f"{option} {error}", option) from None
    return text


@dataclass(frozen=True)
class StyleChoice:
    """What `--style VALUE` meant: a named style (name set) or free text (name None)."""

    name: str | None
    text: str  # the style's prompt template, or the free text
    negative: str = ""
    reference: StyleReference | None = None


def resolve_style(settings: "Settings", value: str | None, option: str = "style") -> StyleChoice:
    """A named style, else free text; a name-like value that names no style is an OptionError."""
    value = (value or "").strip()
    if not value:
        return StyleChoice(None, "")
    found = all_styles(settings).get(value.casefold())
    if found is not None:
        return StyleChoice(found.name, found.prompt, found.negative, found.reference)
    if _NAME_LIKE.match(value):
        get_style(settings, value, option)  # raises, listing the known names
    return StyleChoice(None, value)


class ReferenceImageFields(TypedDict):
    path: str
    sha256: str


class ReferenceFields(TypedDict):
    """One IPAdapterReference as RenderRequest validates it."""

    name: str
    images: list[ReferenceImageFields]
    scale: float


class AdapterFields(TypedDict):
    """An IPAdapterInput as RenderRequest validates it (this module builds no request types)."""

    model: str
    references: list[ReferenceFields]


class _StyleFields(TypedDict):
    style: str
    style_name: str | None
    negative_prompt: str | None


class StyleFields(_StyleFields, total=False):
    """The RenderRequest fields `--style` sets."""

    ip_adapter: AdapterFields


def style_fields(settings: "Settings", value: str | None, negative: str | None,
                 option: str = "style", adapter: "IPAdapterInput | Mapping[str, Any] | None" = None) -> StyleFields:
    """RenderRequest fields for `--style VALUE` with the user's negative: style (the template or free
    text), style_name, and negative_prompt with the style's negative appended. A learned style with a
    reference image adds `ip_adapter`: `adapter` (the request's own, e.g. a character's) plus the style's
    image as one more reference."""
    choice = resolve_style(settings, value, option)
    fields: StyleFields = {"style": choice.text, "style_name": choice.name,
              "negative_prompt": join_negative(negative, choice.negative)}
    if choice.reference is not None:
        fields["ip_adapter"] = with_style_reference(settings, choice.name or "", choice.reference, adapter)
    return fields


def with_style_reference(settings: "Settings", name: str, reference: StyleReference,
                         adapter: "IPAdapterInput | Mapping[str, Any] | None") -> AdapterFields:
    """`adapter` (the request's IPAdapterInput, or None) with the style's image appended as the reference
    `style:NAME`, as the dict RenderRequest validates (this module sits below requests.py: it builds no
    request types). The request's own adapter model is kept when it has one: one call loads one model."""
    path = Path(reference.path)
    if not path.is_absolute():
        path = settings.artifacts_dir / path
    if not path.is_file():
        raise UsageError(f"style {name!r}: its reference image {path} is not there any more; learn the style again "
                         "(echo-os memory learn-from ID) or remove the [reference] table from styles.toml.")
    own: ReferenceFields = {"name": f"style:{name}", "images": [{"path": str(path), "sha256": reference.sha256}],
           "scale": reference.scale}
    if adapter is None:
        return {"model": reference.adapter, "references": [own]}
    current = dict(adapter) if isinstance(adapter, Mapping) else adapter.model_dump(mode="json")
    kept = [r for r in current["references"] if r["name"] != own["name"]]
    return {"model": current["model"], "references": [*kept, own]}


# ---- import -----------------------------------------------------------------------------------------

@dataclass
class ImportReport:
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "row N: why"


def parse_style_file(path: Path) -> tuple[list[Style], list[str]]:
    """Styles from an A1111 styles.csv (name, prompt, negative_prompt; UTF-8 with or without a BOM) or a
    Fooocus style JSON (a list of {name, prompt, negative_prompt}); and what was skipped, with why.

    A1111 writes its styles with `{prompt}` as the placeholder, Fooocus too: both are kept as written.
    Within one file the first of two names that differ only in case wins; the later one is skipped.
    """
    try:
        if path.stat().st_size > MAX_STYLE_FILE_BYTES:
            raise OptionError(f"{path} is larger than {MAX_STYLE_FILE_BYTES // (1024 * 1024)} MB; a style file "
                              "(A1111 styles.csv, Fooocus JSON) is far smaller", "file")
        raw = path.read_bytes()
    except OSError as error:
        raise OptionError(f"cannot read {path}: {error.strerror or error}", "file") from None
    try:
        text = raw.decode("utf-8-sig")  # strips a UTF-8 BOM when there is one
    except UnicodeDecodeError:
        raise OptionError(f"{path} is not UTF-8 text; save it as UTF-8 and import again", "file") from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        rows = _fooocus_rows(path, text)
    else:
        rows = _a1111_rows(path, text)
    styles: list[Style] = []
    skipped: list[str] = []
    if len(rows) > MAX_IMPORT_ROWS:
        skipped.append(f"{len(rows) - MAX_IMPORT_ROWS:,} rows after the first {MAX_IMPORT_ROWS:,}: one file "
                       f"imports at most {MAX_IMPORT_ROWS:,} styles")
        rows = rows[:MAX_IMPORT_ROWS]
    seen: dict[str, str] = {}
    for where, found_name, found_prompt, found_negative in rows:
        values = {"name": found_name, "prompt": found_prompt, "negative_prompt": found_negative}
        not_text = next((key for key, value in values.items() if value is not None and not isinstance(value, str)),
                        None)
        if not_text is not None:  # a list, an object, a number or NaN: never stored as Python text
            skipped.append(f"{where}: {not_text} is a JSON {_json_kind(values[not_text])}, not text")
            continue
        name, prompt, negative = _text(found_name).strip(), _text(found_prompt), _text(found_negative)
        if not name:
            skipped.append(f"{where}: no name")
            continue
        try:
            check_name(name)
            check_style_text(prompt or "", "prompt")
            check_style_text(negative or "", "negative_prompt")
        except OptionError as error:
            skipped.append(f"{where}: {error}")
            continue
        if name.casefold() in seen:
            skipped.append(f"{where}: {name!r} repeats {seen[name.casefold()]!r} (names are unique ignoring case)")
            continue
        if not (prompt or "").strip() and not (negative or "").strip():
            skipped.append(f"{where}: {name!r} has neither a prompt nor a negative prompt")
            continue
        seen[name.casefold()] = name
        styles.append(Style(name, (prompt or "").strip(), (negative or "").strip()))
    return styles, skipped


class ImportRow(NamedTuple):
    """One style of an imported file as found: the values are the file's (text, None, or any JSON value
    in a Fooocus file), checked by parse_style_file."""

    where: str  # "line N" / "item N"
    name: object
    prompt: object
    negative: object


def _text(value: object) -> str:
    """A checked row value (text or None) as text."""
    return value if isinstance(value, str) else ""


def _a1111_rows(path: Path, text: str) -> list[ImportRow]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip().casefold() for c in reader.fieldnames or []]
    if "name" not in columns or "prompt" not in columns:
        raise OptionError(f"{path} is not an A1111 styles.csv: its header needs name and prompt columns "
                          f"(and optionally negative_prompt), found {', '.join(reader.fieldnames or []) or 'none'}",
                          "file")
    rows = []
    try:
        for number, found in enumerate(reader, start=2):  # line 1 is the header
            row = {(k or "").strip().casefold(): v for k, v in found.items()}
            rows.append(ImportRow(f"line {number}", row.get("name"), row.get("prompt"), row.get("negative_prompt")))
    except csv.Error as error:  # a field over the csv module's limit (128 KB), a NUL byte
        raise OptionError(f"{path}, line {reader.line_num + 1}: {error}; a style's text is at most a few KB",
                          "file") from None
    return rows


def _fooocus_rows(path: Path, text: str) -> list[ImportRow]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise OptionError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})", "file") from None
    except RecursionError:
        raise OptionError(f"{path} nests JSON too deeply to be a style file (a list of {{name, prompt, "
                          "negative_prompt}})", "file") from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts (4300)
        raise OptionError(f"{path} holds a value that cannot be read ({str(error)[:120]})", "file") from None
    if not isinstance(data, list):
        raise OptionError(f"{path}: a Fooocus style file is a JSON list of {{name, prompt, negative_prompt}}",
                          "file")
    rows = []
    for number, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            rows.append(ImportRow(f"item {number}", None, None, None))
            continue
        rows.append(ImportRow(f"item {number}", item.get("name"), item.get("prompt"), item.get("negative_prompt")))
    return rows


def _json_kind(value: object) -> str:
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return "number that is not finite (NaN or Infinity)"
    return {list: "list", dict: "object", bool: "true/false", int: "number", float: "number"}.get(type(value),
                                                                                                 type(value).__name__)


def import_styles(settings: "Settings", path: Path, *, replace: bool = False) -> ImportReport:
    """Add the file's styles to styles.toml. A name already in the workspace is skipped unless `replace`."""
    styles, skipped = parse_style_file(path)
    current = read_workspace_styles(settings)
    report = ImportReport(skipped=skipped)
    for style in styles:
        key = style.name.casefold()
        if key in current:
            if not replace:
                report.skipped.append(f"{style.name!r}: already in styles.toml (--replace overwrites)")
                continue
            report.replaced.append(style.name)
        else:
            report.added.append(style.name)
        current[key] = style
    if len(current) > MAX_WORKSPACE_STYLES:
        raise OptionError(f"the workspace would hold {len(current):,} styles; it holds at most "
                          f"{MAX_WORKSPACE_STYLES:,} (remove some with `echo-os styles rm`)", "file")
    if report.added or report.replaced:
        write_workspace_styles(settings, current)
    return report
