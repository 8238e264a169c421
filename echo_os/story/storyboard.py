"""story.csv: one row per scene, read with the csv module and checked cell by cell.

The file is UTF-8 with or without a BOM, comma-separated, with `"` quoting (doubled `""` inside
quotes), any line ending. Rows are numbered the way a spreadsheet shows them: the header is row 1.
Every problem is collected (see problems.py); nothing here raises on bad content.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from echo_os.errors import UsageError
from echo_os.render.requests import MAX_COUNT, MAX_SEED, MAX_SIDE, MAX_STEPS, parse_size
from echo_os.story.bible import Bible
from echo_os.story.problems import ProblemList
from echo_os.story.slug import scene_slug, slugify

MAX_SCENES = 10_000
MAX_CELL_BYTES = 64 * 1024
MAX_STORY_FILE_BYTES = 32 * 1024 * 1024

REQUIRED_COLUMNS = ("scene", "description")
OPTIONAL_COLUMNS = ("slug", "characters", "location", "camera", "lighting", "time_of_day", "mood", "props",
                    "seed", "count", "negative", "steps", "cfg", "size", "duration", "motion", "sound")
COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
ID_SEPARATOR = ";"
# Camera moves of the animatic (echo_os/motion); an empty `motion` cell takes one from the camera words.
MOTIONS = ("push-in", "pull-out", "pan-left", "pan-right", "tilt-up", "tilt-down", "static")
MAX_DURATION_S = 600.0


class SceneRow(BaseModel):
    """One scene as written in the storyboard, checked; None means the cell was empty."""

    model_config = ConfigDict(frozen=True)

    row: int  # spreadsheet row (header = 1), or line number in a prompt list
    scene: int
    description: str
    slug: str
    characters: tuple[str, ...] = ()
    location: str | None = None
    camera: str | None = None
    lighting: str | None = None
    time_of_day: str | None = None
    mood: str | None = None
    props: tuple[str, ...] = ()
    seed: int | None = None
    count: int | None = None
    negative: str | None = None
    steps: int | None = None
    cfg: float | None = None
    width: int | None = None
    height: int | None = None
    duration: float | None = None  # seconds on screen in the animatic (None: the default, 3)
    motion: str | None = None  # one of MOTIONS (None: from the camera words)
    sound: str | None = None  # the scene's ambience or cue (`echo-os soundtrack`; None: from its words)


# ---- cell parsers: value or a message -----------------------------------------------------------------

T = TypeVar("T")


class CellError(ValueError):
    pass


def parse_int(text: str, name: str, low: int, high: int, hint: str = "") -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise CellError(f"{name} must be a whole number, got {text!r}{hint}") from None
    if not low <= value <= high:
        raise CellError(f"{name} must be between {low} and {high}, got {value}{hint}")
    return value


def parse_cfg(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise CellError(f"cfg must be a number such as 6.5, got {text!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 100.0:
        raise CellError(f"cfg must be between 0 and 100, got {text.strip()}")
    return value


def parse_duration(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise CellError(f"duration must be a number of seconds such as 3 or 2.5, got {text!r}") from None
    if not math.isfinite(value) or not 0.0 < value <= MAX_DURATION_S:
        raise CellError(f"duration must be more than 0 and at most {MAX_DURATION_S:g} seconds, got {text.strip()}")
    return value


def parse_motion(text: str) -> str:
    value = text.strip().lower()
    if value not in MOTIONS:
        raise CellError(f"unknown motion {text.strip()!r} (known: {', '.join(MOTIONS)})")
    return value


def parse_dimensions(text: str) -> tuple[int, int]:
    try:
        width, height = parse_size(text)
    except UsageError:
        raise CellError(f"size must look like WIDTHxHEIGHT, for example 1216x832; got {text!r}") from None
    for side in (width, height):
        if side <= 0 or side > MAX_SIDE or side % 8:
            raise CellError(f"size sides must be multiples of 8 between 8 and {MAX_SIDE}, got {text.strip()}")
    return width, height


def parse_seed(text: str) -> int:
    return parse_int(text, "seed", 0, MAX_SEED, hint=" (leave it empty to use the seed policy)")


def parse_count(text: str) -> int:
    return parse_int(text, "count", 1, MAX_COUNT)


def parse_steps(text: str) -> int:
    return parse_int(text, "steps", 1, MAX_STEPS)


def parse_ids(text: str) -> tuple[str, ...]:
    ids: list[str] = []
    for part in text.split(ID_SEPARATOR):
        part = part.strip()
        if part and part not in ids:
            ids.append(part)
    return tuple(ids)


def normalize_column(name: str) -> str:
    """`Time of day` -> `time_of_day`."""
    return "_".join(name.strip().lower().replace("-", " ").split())


# ---- reading ----------------------------------------------------------------------------------------

def read_text_file(path: Path, label: str, problems: ProblemList, limit: int = MAX_STORY_FILE_BYTES) -> str | None:
    """The file as text (UTF-8, BOM removed), or None with a problem added."""
    try:
        size = path.stat().st_size
        if size > limit:
            problems.add(label, f"the file is {size:,} bytes; the limit is {limit:,} bytes (split the story)")
            return None
        data = path.read_bytes()
    except FileNotFoundError:
        problems.add(label, f"file not found: {path}")
        return None
    except IsADirectoryError:
        problems.add(label, f"{path} is a folder, not a file")
        return None
    except OSError as error:
        problems.add(label, f"cannot read {path}: {error.strerror or error}")
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        problems.add(label, f"not UTF-8 text (byte 0x{data[error.start]:02x} near line {line}); "
                            "save it as UTF-8 text (\"CSV UTF-8\" in a spreadsheet)")
        return None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        problems.add(label, f"contains a NUL byte near line {line}: this is a binary file, not text")
        return None
    return text


def _check_header(header: list[str], label: str, problems: ProblemList) -> list[str] | None:
    """The normalized column names, or None when the rows cannot be read (a required column is
    missing). Unknown and repeated columns are problems too, but the rows are still checked."""
    columns = [normalize_column(name) for name in header]
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        found = ", ".join(repr(name) for name in header[:8]) or "nothing"
        hint = ""
        if len(header) == 1 and any(sep in header[0] for sep in ";\t|"):
            hint = "; the columns must be separated by commas (save as \"CSV UTF-8 (comma delimited)\")"
        problems.add(label, f"the header (first row) must name the columns {' and '.join(missing)}; "
                            f"found {found}{hint}", row=1)
    seen: set[str] = set()
    for name, column in zip(header, columns):
        if not column:
            continue  # spreadsheets add unnamed empty columns; their cells must stay empty (checked per row)
        if column in seen:
            problems.add(label, "the column appears twice in the header", row=1, column=column or repr(name))
        seen.add(column)
        if not missing and column not in COLUMNS:
            problems.add(label, f"unknown column (known: {', '.join(COLUMNS)})", row=1, column=name.strip())
    return None if missing else columns


def read_storyboard(path: str | Path, problems: ProblemList, bible: Bible | None = None,
                    ids: "KnownIds | None" = None) -> list[SceneRow]:
    """The storyboard's rows in scene order, their character, location and prop ids checked against
    `ids`, by default those of `bible` (None: no bible, so any id is a problem). Problems are added
    to `problems`; rows with a problem are left out of the result (the caller must not plan when
    `problems` is not empty)."""
    path = Path(path)
    label = path.name
    ids = ids or KnownIds.from_bible(bible, label)
    text = read_text_file(path, label, problems)
    if text is None:
        return []
    reader = csv.reader(io.StringIO(text, newline=""), dialect="excel", strict=True)
    rows: list[SceneRow] = []
    first_row_of_scene: dict[int, int] = {}
    columns: list[str] | None = None
    row_number = 0
    scenes_seen = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            message = str(error)
            if "field larger than field limit" in message:
                message = f"a cell is larger than {MAX_CELL_BYTES:,} bytes"
            else:
                message = f"not valid CSV ({message}); check the quotes on this row"
            problems.add(label, message + "; reading stopped here", row=row_number + 1)
            break
        row_number += 1
        if row_number == 1:
            columns = _check_header(cells, label, problems)
            if columns is None:
                return []
            continue
        if not any(cell.strip() for cell in cells):
            continue  # blank rows are allowed, e.g. between acts
        scenes_seen += 1
        if scenes_seen > MAX_SCENES:
            problems.add(label, f"more than {MAX_SCENES:,} scenes (the limit); split the story into parts",
                         row=row_number)
            break
        assert columns is not None
        if len(cells) > len(columns):
            problems.add(label, f"the row has {len(cells)} cells but the header names {len(columns)} columns; "
                                "put quotes around text that contains commas", row=row_number)
            continue
        for index, (column, text) in enumerate(zip(columns, cells)):
            if not column and text.strip():
                problems.add(label, f"cell {index + 1} is under a column with no name in the header; "
                                    "name the column or move the text", row=row_number)
        scene, row = _parse_row(dict(zip(columns, cells)), row_number, label, problems, ids)
        if scene is not None:
            if scene in first_row_of_scene:
                problems.add(label, f"scene {scene} is also on row {first_row_of_scene[scene]}; "
                                    "scene numbers must be unique", row=row_number, column="scene")
                continue
            first_row_of_scene[scene] = row_number
        if row is not None:
            rows.append(row)
    if columns is None and not problems:
        problems.add(label, "the file is empty; the first row must name the columns (scene,description,...)")
    elif columns is not None and not rows and not problems:
        problems.add(label, "the storyboard has a header but no scenes")
    return sorted(rows, key=lambda row: row.scene)


def _parse_row(cells: dict[str, str], row_number: int, label: str, problems: ProblemList,
               ids: "KnownIds") -> tuple[int | None, SceneRow | None]:
    """(scene number if it parsed, the row if nothing in it was wrong)."""
    before = len(problems)
    values: dict[str, Any] = {"row": row_number}  # SceneRow's fields by name; the model checks their types

    def cell(column: str) -> str | None:
        text = cells.get(column)
        if text is None:
            return None
        if len(text) > MAX_CELL_BYTES // 4 and len(text.encode("utf-8")) > MAX_CELL_BYTES:
            problems.add(label, f"the cell is {len(text.encode('utf-8')):,} bytes; the limit is "
                                f"{MAX_CELL_BYTES:,}", row=row_number, column=column)
            return None
        text = text.strip()
        return text or None

    def parsed(column: str, parse: Callable[[str], T]) -> T | None:
        text = cell(column)
        if text is None:
            return None
        try:
            return parse(text)
        except CellError as error:
            problems.add(label, str(error), row=row_number, column=column)
            return None

    scene = parsed("scene", lambda text: parse_int(text, "scene", 0, 10**9))
    if scene is None and len(problems) == before:  # no number and no problem reported: the cell is empty
        problems.add(label, "the scene number is empty", row=row_number, column="scene")
    description = cell("description")
    if description is None and len(problems) == before:
        problems.add(label, "the description is empty; say what happens in the scene", row=row_number,
                     column="description")
    for column in ("location", "camera", "lighting", "time_of_day", "mood", "negative", "sound"):
        values[column] = cell(column)
    values["characters"] = parsed("characters", parse_ids) or ()
    values["props"] = parsed("props", parse_ids) or ()
    for character in values["characters"]:
        if not ids.knows("character", character):
            problems.add(label, ids.unknown("character", character), row=row_number, column="characters")
    if values["location"] is not None and not ids.knows("location", values["location"]):
        problems.add(label, ids.unknown("location", values["location"]), row=row_number, column="location")
    for prop in values["props"]:
        if not ids.knows("prop", prop):
            problems.add(label, ids.unknown("prop", prop), row=row_number, column="props")
    values["seed"] = parsed("seed", parse_seed)
    values["count"] = parsed("count", parse_count)
    values["steps"] = parsed("steps", parse_steps)
    values["cfg"] = parsed("cfg", parse_cfg)
    size = parsed("size", parse_dimensions)
    values["width"], values["height"] = size if size else (None, None)
    values["duration"] = parsed("duration", parse_duration)
    values["motion"] = parsed("motion", parse_motion)
    slug_text = cell("slug")
    if len(problems) != before:
        return scene, None
    values["scene"] = scene
    values["description"] = description
    values["slug"] = slugify(slug_text) if slug_text else scene_slug(description or "")
    return scene, SceneRow(**values)


# ---- ids against the bible -----------------------------------------------------------------------------

class KnownIds(BaseModel):
    """The ids a storyboard may use, and how to say that one is unknown."""

    characters: frozenset[str] = frozenset()
    locations: frozenset[str] = frozenset()
    props: frozenset[str] = frozenset()
    has_bible: bool = False
    check: bool = True  # False when the bible could not be read at all: its ids are unknown
    csv_name: str = "story.csv"

    @classmethod
    def from_bible(cls, bible: Bible | None, csv_name: str) -> "KnownIds":
        if bible is None:
            return cls(csv_name=csv_name)
        front = bible.front
        return cls(characters=frozenset(front.characters), locations=frozenset(front.locations),
                   props=frozenset(front.props), has_bible=True, csv_name=csv_name)

    @classmethod
    def from_raw(cls, raw: dict | None, csv_name: str) -> "KnownIds":
        """Ids from a bible whose YAML parsed but did not validate (None: not even the YAML did)."""
        if raw is None:
            return cls(check=False, csv_name=csv_name)

        def keys(name: str) -> frozenset[str]:
            value = raw.get(name)
            return frozenset(str(key) for key in value) if isinstance(value, dict) else frozenset()

        return cls(characters=keys("characters"), locations=keys("locations"), props=keys("props"),
                   has_bible=True, csv_name=csv_name)

    def knows(self, kind: str, value: str) -> bool:
        if not self.check:
            return True
        return value in {"character": self.characters, "location": self.locations, "prop": self.props}[kind]

    def unknown(self, kind: str, value: str) -> str:
        known = {"character": self.characters, "location": self.locations, "prop": self.props}[kind]
        if not self.has_bible:
            why = f"no story bible: pass --bible PATH or put STORY_BIBLE.md beside {self.csv_name}"
        elif not known:
            why = f"the bible defines no {kind}s"
        else:
            why = "known: " + ", ".join(sorted(known))
        hint = "; separate ids with ';'" if "," in value else ""
        return f"unknown {kind} id {value!r} ({why}){hint}"
