"""`echo-os batch PROJECT @prompts.txt`: one prompt per line, in the style of A1111's prompts-from-file.

    # comments and blank lines are skipped
    a lighthouse at dawn, oil painting
    a red fox in the snow --seed 1234 --steps 20
    --prompt "a harbour at night" --negative_prompt "blurry, text" --seed 7 --cfg_scale 5

A line that starts with `--` is all options (it must have --prompt). Otherwise the text before the
first ` --word` is the prompt and the rest are options (an unknown option is an error, never prompt
text). Values with spaces take shell quotes.
Each line becomes a SceneRow (scene = its position, row = its line number), so the planner treats a
prompt list as a storyboard without a bible.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from echo_os.render.requests import MAX_SIDE
from echo_os.story.problems import ProblemList
from echo_os.story.slug import scene_slug
from echo_os.story.storyboard import (
    MAX_CELL_BYTES,
    MAX_SCENES,
    CellError,
    SceneRow,
    parse_cfg,
    parse_count,
    parse_int,
    parse_seed,
    parse_steps,
    read_text_file,
)


def _parse_side(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = parse_int(text, name, 8, MAX_SIDE)
        if value % 8:
            raise CellError(f"{name} must be a multiple of 8, got {value}")
        return value
    return parse


# option -> (SceneRow field, parser)
OPTIONS: dict[str, tuple[str, Callable[[str], object]]] = {
    "prompt": ("description", str),
    "negative_prompt": ("negative", str),
    "seed": ("seed", parse_seed),
    "steps": ("steps", parse_steps),
    "cfg_scale": ("cfg", parse_cfg),
    "width": ("width", _parse_side("width")),
    "height": ("height", _parse_side("height")),
    "batch_size": ("count", parse_count),
}
# Anything that looks like an option starts the options, so a misspelt one is reported, not rendered.
_OPTION_START = re.compile(r"(?:^|\s)--[A-Za-z][A-Za-z0-9_-]*(?=\s|=|$)")


def _split_line(line: str) -> tuple[str, str]:
    """(prompt text, option text)."""
    if line.startswith("--"):
        return "", line
    match = _OPTION_START.search(line)
    if match is None:
        return line, ""
    return line[: match.start()], line[match.start():]


def _parse_options(text: str) -> dict[str, str]:
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise CellError(f"cannot read the options ({error}); check the quotes") from None
    options: dict[str, str] = {}
    index = 0
    while index < len(words):
        word = words[index]
        if not word.startswith("--"):
            raise CellError(f"expected an --option, got {word!r}; put the prompt first or in --prompt \"...\"")
        name, has_value, value = word[2:].partition("=")
        if name not in OPTIONS:
            raise CellError(f"unknown option --{name} (known: {', '.join('--' + key for key in OPTIONS)})")
        if not has_value:
            index += 1
            if index >= len(words):
                raise CellError(f"--{name} needs a value")
            value = words[index]
        options[name] = value
        index += 1
    return options


def read_prompt_list(path: str | Path, problems: ProblemList) -> list[SceneRow]:
    """The prompt list as SceneRows in file order; problems are added to `problems`."""
    path = Path(path)
    label = path.name
    text = read_text_file(path, label, problems)
    if text is None:
        return []
    rows: list[SceneRow] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if len(rows) >= MAX_SCENES:
            problems.add(label, f"more than {MAX_SCENES:,} prompts (the limit); split the list", line=line_number)
            break
        if len(line.encode("utf-8")) > MAX_CELL_BYTES:
            problems.add(label, f"the line is longer than {MAX_CELL_BYTES:,} bytes", line=line_number)
            continue
        prompt, option_text = _split_line(line)
        values: dict[str, Any] = {}  # SceneRow's fields by name; the model checks their types
        try:
            options = _parse_options(option_text) if option_text else {}
        except CellError as error:
            problems.add(label, str(error), line=line_number)
            continue
        bad = False
        for name, raw in options.items():
            field, parse = OPTIONS[name]
            try:
                values[field] = parse(raw.strip())
            except CellError as error:
                problems.add(label, str(error), line=line_number)
                bad = True
        description = str(values.pop("description", "") or prompt).strip()
        if prompt.strip() and "prompt" in options:
            problems.add(label, "the line has both a prompt and --prompt; keep one", line=line_number)
            bad = True
        if not description:
            problems.add(label, "the prompt is empty", line=line_number)
            bad = True
        if bad:
            continue
        negative = str(values.pop("negative", "") or "").strip() or None
        rows.append(SceneRow(row=line_number, scene=len(rows) + 1, description=description,
                             slug=scene_slug(description), negative=negative, **values))
    if not rows and not problems:
        problems.add(label, "no prompts in the file (one prompt per line; lines starting with # are skipped)")
    return rows
