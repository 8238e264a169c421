"""Compare: one prompt over every combination of up to three axes (A1111's X/Y/Z plot), one artifact per
cell, and a labelled grid sheet that is itself an artifact listing its cells.

An axis is an option given more than one value (models, schedulers, cfg, steps, seeds, styles,
engines); options given one value are the same in every cell. The cells go through the one renderer
(scheduler.render_requests) with resume=True: every cell has its resume key, so a re-run renders only
the cells that are missing, and cells that share a batch key (same model, size, steps, cfg, scheduler)
share pipeline calls. Cells are rendered model by model, in the order given.

The grid: the first axis runs across (columns), the second down (rows), the third makes one block per
value, blocks stacked. Its PNG depends only on the cells' images and labels, so a re-run finds the same
sheet (same sha256) and writes nothing.
"""

from __future__ import annotations

import hashlib
import io
import itertools
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from echo_os.errors import OptionError
from echo_os.render.requests import RenderRequest

if TYPE_CHECKING:
    from echo_os.artifacts.store import Artifact, ArtifactStore
    from echo_os.settings import Settings

MAX_CELLS_DEFAULT = 64
MAX_AXES = 3

# axis option -> the RenderRequest field it sets, and its label in the grid
AXES: dict[str, tuple[str, str]] = {
    "models": ("model", "model"),
    "schedulers": ("scheduler", "scheduler"),
    "cfg": ("cfg", "cfg"),
    "steps": ("steps", "steps"),
    "seeds": ("seed", "seed"),
    "styles": ("style", "style"),
    "engines": ("engine", "engine"),
}


@dataclass(frozen=True)
class Axis:
    option: str  # "cfg", "models", ...
    values: tuple[Any, ...]

    @property
    def field(self) -> str:
        return AXES[self.option][0]

    @property
    def label(self) -> str:
        return AXES[self.option][1]


@dataclass(frozen=True)
class Cell:
    values: tuple[Any, ...]  # one value per axis, in axis order
    request: RenderRequest

    def label(self, axes: list[Axis]) -> str:
        return ", ".join(f"{axis.label} {format_value(v)}" for axis, v in zip(axes, self.values))


@dataclass
class ComparePlan:
    axes: list[Axis]
    cells: list[Cell]


@dataclass
class CompareOutcome:
    plan: ComparePlan
    artifacts: list["Artifact"]  # one per cell, in cell order
    rendered: int
    resumed: int
    grid: "Artifact"
    grid_written: bool
    notes: list[str] = field(default_factory=list)


def format_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_list(text: str | None, option: str, convert: Callable[[str], Any] = str) -> tuple[Any, ...]:
    """'5,7' -> (5.0, 7.0) with `convert`; an empty item or a value that does not convert names the option."""
    if text is None:
        return ()
    values = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise OptionError(f"--{option} is a comma-separated list with no empty items, got {text!r}", option)
        try:
            values.append(convert(item))
        except ValueError:
            raise OptionError(f"--{option}: {item!r} is not a {convert.__name__} (got {text!r})", option) from None
    if len(set(values)) != len(values):
        raise OptionError(f"--{option} lists a value twice ({text!r})", option)
    return tuple(values)


def check_distinct(lists: dict[str, tuple[Any, ...]]) -> None:
    """Each option list names a value once (an OptionError names the list otherwise): for hosts that take
    the lists whole (POST /api/compare); the command line's parse_list checks its own."""
    for option, values in lists.items():
        if len(set(values)) != len(values):
            raise OptionError(f"{option} lists a value twice", option)


def compare_title(prompt: str, plan: ComparePlan) -> str:
    """The grid sheet's title: the prompt, then each axis with its number of values."""
    if not plan.axes:
        return prompt
    return f"{prompt}: " + " x ".join(f"{axis.label} ({len(axis.values)})" for axis in plan.axes)


def plan_compare(settings: "Settings", base: dict[str, Any], lists: dict[str, tuple[Any, ...]], *,
                 max_cells: int = MAX_CELLS_DEFAULT, given: Collection[str] = ()) -> ComparePlan:
    """The cells for `base` values (RenderRequest names, `size` as "WxH" text or None) and the option lists
    (option -> values; one value: fixed). Each cell goes through the front door (echo_os.render.prepare):
    its model entry's render defaults and LoRA fill what neither a list nor `given` (the names in `base`
    the user gave) sets, and without a size the engine's default size applies (512x512 on the CPU).

    Raises OptionError naming the option: more than three axes, more cells than max_cells, a value the
    request refuses, an unknown style.
    """
    from echo_os.render.prepare import prepare

    explicit = set(given) | {AXES[option][0] for option in lists}
    axes = [Axis(option, values) for option, values in lists.items() if len(values) > 1]
    fixed = {option: values[0] for option, values in lists.items() if len(values) == 1}
    if len(axes) > MAX_AXES:
        raise OptionError(f"compare takes at most {MAX_AXES} axes (options with several values), got "
                          f"{len(axes)}: {', '.join('--' + a.option for a in axes)}; give one value to the rest",
                          axes[MAX_AXES].option)
    total = 1
    for axis in axes:
        total *= len(axis.values)
    if total > max_cells:
        raise OptionError(f"{total} cells is more than --max-cells {max_cells}; give fewer values or raise "
                          "--max-cells", "max-cells")
    option_of = {field: option for option, (field, _) in AXES.items() if option in lists}
    cells = []
    # The first axis varies fastest (across a grid row), the third slowest (one block per value).
    for reversed_combination in itertools.product(*(axis.values for axis in reversed(axes))):
        combination = tuple(reversed(reversed_combination))
        values = dict(base)
        chosen = dict(fixed)
        chosen.update({axis.option: value for axis, value in zip(axes, combination)})
        values.update({AXES[option][0]: value for option, value in chosen.items()})
        try:
            prepared = prepare(settings, values, explicit)
        except OptionError as error:
            option = option_of.get(error.option, error.option)
            message = str(error)
            if error.option in option_of:  # a value of a list: named as the list's option
                message = message.replace(f"invalid {error.option}", f"invalid --{option}", 1)
            raise OptionError(message, option) from None
        cells.append(Cell(tuple(combination), prepared.request))
    return ComparePlan(axes, cells)


def render_compare(settings: "Settings", plan: ComparePlan, store: "ArtifactStore", *, progress=None,
                   on_engine=None, title: str = "") -> CompareOutcome:
    """Render the missing cells (model by model), then the grid sheet (unless the same one is there)."""
    from echo_os.render.scheduler import render_requests

    found: dict[int, "Artifact"] = {}
    rendered = resumed = 0
    notes: list[str] = []
    models: list[str] = []
    for cell in plan.cells:
        if cell.request.model not in models:
            models.append(cell.request.model)
    for model in models:
        indexes = [i for i, cell in enumerate(plan.cells) if cell.request.model == model]

        def on_image(done, indexes=indexes) -> None:
            found[indexes[done.source]] = done.artifact

        outcome = render_requests(settings, [plan.cells[i].request for i in indexes], store=store, progress=progress,
                                  on_engine=on_engine, resume=True, on_image=on_image)
        rendered += len(outcome.artifacts)
        resumed += len(outcome.resumed)
        notes += outcome.notes
        if len(models) > 1 and outcome.artifacts:  # one model in memory at a time
            from echo_os.engines import create_engine

            for choice in outcome.engines:
                create_engine(settings, choice.name, choice.reason).release(plan.cells[indexes[0]].request)
    artifacts = [found[i] for i in range(len(plan.cells))]
    grid, written = save_grid(settings, store, plan, artifacts, title=title)
    return CompareOutcome(plan, artifacts, rendered, resumed, grid, written, notes)


def grid_image(plan: ComparePlan, artifacts: list["Artifact"], title: str):
    """The labelled sheet: columns = axis 1, rows = axis 2, one block per value of axis 3."""
    from PIL import Image, ImageDraw

    from echo_os.fonts import drawing_font

    images: list[Image.Image] = []
    for artifact in artifacts:
        with Image.open(artifact.image_path) as opened:
            images.append(opened.convert("RGB"))
    cell_w = max(i.width for i in images)
    cell_h = max(i.height for i in images)
    axes = plan.axes
    x_axis = axes[0] if len(axes) > 0 else None
    y_axis = axes[1] if len(axes) > 1 else None
    z_axis = axes[2] if len(axes) > 2 else None
    cols = len(x_axis.values) if x_axis else 1
    rows = len(y_axis.values) if y_axis else 1
    blocks = len(z_axis.values) if z_axis else 1
    font = drawing_font(12)
    pad = 4
    label_h = 18
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    row_labels = [f"{y_axis.label} {format_value(v)}" for v in y_axis.values] if y_axis else [""]
    label_w = int(max(scratch.textlength(text, font=font) for text in row_labels)) + 2 * pad if y_axis else 0
    block_h = label_h * (2 if z_axis else 1) + rows * (cell_h + pad)
    title_h = label_h + pad
    sheet = Image.new("RGB", (label_w + cols * (cell_w + pad) + pad, title_h + blocks * block_h + pad), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, pad), title, fill="black", font=font)
    for index, image in enumerate(images):
        z, rest = divmod(index, cols * rows)
        y, x = divmod(rest, cols)
        top = title_h + z * block_h
        if x == 0 and y == 0:
            if z_axis:
                draw.text((pad, top), f"{z_axis.label} {format_value(z_axis.values[z])}", fill="black", font=font)
                top_labels = top + label_h
            else:
                top_labels = top
            if x_axis:
                for column, value in enumerate(x_axis.values):
                    draw.text((label_w + pad + column * (cell_w + pad), top_labels),
                              f"{x_axis.label} {format_value(value)}", fill="black", font=font)
        grid_top = top + label_h * (2 if z_axis else 1)
        left = label_w + pad + x * (cell_w + pad)
        cell_top = grid_top + y * (cell_h + pad)
        if y_axis and x == 0:
            draw.text((pad, cell_top + cell_h // 2 - 6), row_labels[y], fill="black", font=font)
        sheet.paste(image, (left, cell_top))
    return sheet


def save_grid(settings: "Settings", store: "ArtifactStore", plan: ComparePlan, artifacts: list["Artifact"], *,
              title: str) -> tuple["Artifact", bool]:
    """The grid sheet as an artifact (engine "compare"); (artifact, written). The same sheet is not written twice."""
    from echo_os.artifacts.meta import ArtifactMeta, EngineRecord, collect_versions
    from echo_os.artifacts.store import Artifact

    sheet = grid_image(plan, artifacts, title)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", compress_level=4)
    png = buffer.getvalue()
    sheet_id = hashlib.sha256(png).hexdigest()
    existing = store.catalog.get(sheet_id)
    if existing is not None and (store.root / existing.path / "image.png").is_file():
        return Artifact.from_row(store.root, existing), False
    first = plan.cells[0].request
    cells = [{"id": artifact.id, "values": {axis.label: format_value(v) for axis, v in zip(plan.axes, cell.values)},
              "label": cell.label(plan.axes)} for cell, artifact in zip(plan.cells, artifacts)]
    meta = ArtifactMeta(
        created=datetime.now(timezone.utc).astimezone().isoformat(timespec="microseconds"),
        project=first.project, sequence=0, prompt=first.prompt, full_prompt=title or first.prompt,
        seed=first.seed, steps=first.steps, cfg=first.cfg, width=sheet.width, height=sheet.height,
        scheduler=first.scheduler, engine=EngineRecord(name="compare", reason="echo-os compare grid sheet"),
        device="none", dtype="none", attention="none", versions=collect_versions(), request={},
    ).model_copy(update={"grid": {  # an extra field (ArtifactMeta allows them): what artifact_kind reads as a sheet
        "axes": [{"option": a.option, "label": a.label, "values": [format_value(v) for v in a.values]}
                 for a in plan.axes], "cells": cells}})
    return store.save_file(png, meta, scene_slug="compare-grid"), True
