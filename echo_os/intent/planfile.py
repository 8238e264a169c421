"""plan.json and the files written beside it, in the workspace's prompts/<project-slug>/ folder.

    prompts/<slug>/plan.json          intent, constraints (exclusions -> negative prompt), method, items
    prompts/<slug>/prompts.txt        --kind prompts: one line per item, the @prompts.txt syntax
    prompts/<slug>/story.csv          --kind story: one scene per item
    prompts/<slug>/STORY_BIBLE.md     --kind story: a skeleton (title, style, negative) to fill in
    prompts/<slug>/plan-history.jsonl every earlier plan of the project, one JSON line each

A new plan replaces plan.json; the one it replaces is appended to plan-history.jsonl first, so the next
plan can stay away from its items too (offline.py: past work). `echo-os batch PROJECT` renders the
list plan.json names.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from echo_os.artifacts.slugs import slugify
from echo_os.errors import NotFoundError
from echo_os.settings import Settings

PLAN_NAME = "plan.json"
HISTORY_NAME = "plan-history.jsonl"
PLAN_VERSION = 1


class PlanItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    parts: dict[str, str] = Field(default_factory=dict)  # theme/subject/palette/camera/lighting when known
    # Task plans (--kind assets/tasks): the task's id, its type and the ids it needs rendered first.
    id: str | None = None
    type: Literal["concept", "texture", "turnaround", "mesh", "animatic", "sound"] | None = None
    depends_on: list[str] = Field(default_factory=list)


class Constraints(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exclusions: list[str] = Field(default_factory=list)
    negative_prompt: str = ""



PlanKind = Literal["prompts", "story", "assets", "tasks"]  # what `echo-os plan --kind` writes

class PlanFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = PLAN_VERSION
    project: str
    intent: str
    theme: str
    kind: PlanKind
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    constraints: Constraints
    method: dict[str, Any]  # {"name": "offline", "seed": ..., ...} or {"name": "llm", "model": ..., ...}
    items: list[PlanItem]
    diversity: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)  # "list", "bible": paths relative to the workspace
    notes: list[str] = Field(default_factory=list)  # what the planner wants the user to know (too few subjects...)
    story: dict[str, Any] = Field(default_factory=dict)  # --kind story: cast, location, phases (storyplan.py)


def project_folder(settings: Settings, project: str) -> Path:
    return settings.home / "prompts" / slugify(project, fallback="default")


def load_plan(settings: Settings, project: str) -> PlanFile:
    path = project_folder(settings, project) / PLAN_NAME
    if not path.is_file():
        raise NotFoundError(f"project {project!r} has no plan ({path} is missing); make one with "
                            f"`echo-os plan {shlex.quote(project)} \"INTENT\"`, or give batch a SOURCE.")
    return PlanFile.model_validate_json(path.read_text(encoding="utf-8"))


def past_plan_prompts(settings: Settings, project: str) -> list[str]:
    """The items of the project's current and earlier plans."""
    folder = project_folder(settings, project)
    prompts: list[str] = []
    history = folder / HISTORY_NAME
    if history.is_file():
        for line in history.read_text(encoding="utf-8").splitlines():
            if line.strip():
                prompts += [item["prompt"] for item in json.loads(line).get("items", [])]
    current = folder / PLAN_NAME
    if current.is_file():
        prompts += [item.prompt for item in PlanFile.model_validate_json(current.read_text(encoding="utf-8")).items]
    return prompts


def prompt_list_text(plan: PlanFile) -> str:
    lines = [f"# {plan.project}: {plan.intent}", f"# made by `echo-os plan` ({plan.method.get('name')}); see plan.json"]
    negative = plan.constraints.negative_prompt
    for item in plan.items:
        line = " ".join(item.prompt.replace("--", "- -").split())  # a prompt never starts an --option
        if negative:
            line += f" --negative_prompt {shlex.quote(negative)}"
        lines.append(line)
    return "\n".join(lines) + "\n"


STORY_COLUMNS = ("description", "characters", "location", "camera", "lighting", "time_of_day", "mood")
BIBLE_MARK = "<!-- made by echo-os plan: replaced by the next plan unless you edit this line away -->"


def storyboard_text(plan: PlanFile) -> str:
    """story.csv: a story plan's scenes with their cast, place, camera, light, time of day and mood; an
    older plan (no cast) or a template's items: description, camera and lighting."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if plan.story:
        writer.writerow(["scene", *STORY_COLUMNS])
        for number, item in enumerate(plan.items, start=1):
            writer.writerow([number, *(item.parts.get(column, "") for column in STORY_COLUMNS)])
        return buffer.getvalue()
    writer.writerow(["scene", "description", "camera", "lighting"])
    for number, item in enumerate(plan.items, start=1):
        parts = item.parts
        if {"subject", "camera", "lighting"} <= parts.keys():
            description = ", ".join(p for p in (parts.get("subject"), parts.get("palette")) if p)
            writer.writerow([number, description, parts["camera"], parts["lighting"]])
        else:
            writer.writerow([number, item.prompt, "", ""])
    return buffer.getvalue()


def bible_text(plan: PlanFile) -> str:
    front: dict[str, Any] = {"title": plan.project,
                             "style": {"prompt": plan.theme, "negative": plan.constraints.negative_prompt}}
    if plan.story:
        front["characters"] = plan.story.get("cast", {})
        location = plan.story.get("location") or {}
        if location:
            front["locations"] = {location["id"]: location["description"]}
    import yaml

    phases = ", ".join(dict.fromkeys(plan.story.get("phases", []))) if plan.story else ""
    return ("---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n"
            f"{BIBLE_MARK}\n\n# {plan.project}\n\n"
            f"Intent: {plan.intent}\n\n"
            + (f"Arc: {phases}.\n\n" if phases else "")
            + "## Look\n\nTODO: the lens, the light and the palette that hold the scenes together.\n\n"
            "## Characters\n\nThe cast recurs scene to scene with its own seed; add reference images "
            "(`reference:`) for a closer match; see docs/story.md.\n")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def save_plan(settings: Settings, plan: PlanFile, out: Path | None = None) -> PlanFile:
    """Write the list (or storyboard and bible) and plan.json; the replaced plan.json goes to the history."""
    folder = project_folder(settings, plan.project)
    if plan.kind in ("assets", "tasks"):
        files = {"list": _relative(settings, folder / PLAN_NAME)}
    elif plan.kind == "prompts":
        list_path = out or folder / "prompts.txt"
        _write(list_path, prompt_list_text(plan))
        files = {"list": _relative(settings, list_path)}
    else:
        list_path = out or folder / "story.csv"
        bible_path = list_path.parent / "STORY_BIBLE.md"
        _write(list_path, storyboard_text(plan))
        # A bible the user has edited (the mark line removed) is never overwritten.
        if not bible_path.exists() or BIBLE_MARK in bible_path.read_text(encoding="utf-8", errors="replace"):
            _write(bible_path, bible_text(plan))
        files = {"list": _relative(settings, list_path), "bible": _relative(settings, bible_path)}
    plan = plan.model_copy(update={"files": files})
    current = folder / PLAN_NAME
    if current.is_file():
        with open(folder / HISTORY_NAME, "a", encoding="utf-8") as history:
            history.write(json.dumps(json.loads(current.read_text(encoding="utf-8")), ensure_ascii=False) + "\n")
    _write(current, plan.model_dump_json(indent=2) + "\n")
    return plan


def _relative(settings: Settings, path: Path) -> str:
    path = path.resolve()
    try:
        return path.relative_to(settings.home).as_posix()
    except ValueError:
        return str(path)


def list_path(settings: Settings, plan: PlanFile) -> Path:
    path = Path(plan.files["list"])
    return path if path.is_absolute() else settings.home / path
