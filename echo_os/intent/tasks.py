"""Task plans (`echo-os plan --kind assets` or `tasks`) and how `echo-os batch` runs them.

Per planned item, three typed tasks in plan.json: `concept-N` (the item's image), `texture-N` (a seamless
texture in the concept's palette; depends on concept-N) and `turnaround-N` (front, side and back views,
refined from the concept's image; depends on concept-N and texture-N); for `--kind assets` also `mesh-N` (a 3D
model: the concept's image lifted to 3D where an image-to-3D entry (shap-e-img2img) resolves here, else a
text-to-3D render of the subject, the draft placeholder without weights; depends on concept-N), `animatic-N` (a
reel of the concept, texture and turnaround, echo_os/motion/reel.py; depends on the three) and `sound-N` (a
sound of the subject as long as the reel, with the reel as its parent; depends on animatic-N, so a change of
the reel's length re-times it). Batch runs the tasks in dependency
order (graphlib), one render each through the one render path (render_requests); a task's artifact id
feeds its dependants: the texture's prompt names the concept's dominant colours (read from its pixels),
the turnaround is an img2img refine of the concept (echo_os.iterate.refine) where the engine refines
(else a text render recorded with the concept as its parent, and a note says so). Resume like a story:
prompts/<slug>/tasks-state.json maps task ids to artifact ids, and a task whose artifact is in the store
is not rendered again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from pathlib import Path

from echo_os.intent.planfile import PlanFile, PlanItem, project_folder
from echo_os.settings import Settings

STATE_NAME = "tasks-state.json"
TURNAROUND_STRENGTH = 0.6
# Named colours for a palette the model reads (sRGB), nearest by distance.
COLOUR_NAMES = {
    "black": (20, 20, 20), "charcoal": (60, 60, 64), "grey": (128, 128, 128), "silver": (192, 192, 196),
    "white": (240, 240, 236), "ivory": (238, 230, 205), "crimson": (160, 20, 40), "red": (200, 40, 40),
    "rust": (150, 70, 40), "orange": (230, 130, 40), "amber": (240, 170, 40), "gold": (212, 175, 55),
    "ochre": (190, 140, 60), "brown": (110, 70, 40), "olive": (110, 110, 50), "green": (50, 140, 60),
    "sage": (150, 170, 130), "teal": (30, 120, 120), "turquoise": (60, 200, 200), "sky blue": (130, 180, 230),
    "cobalt": (30, 70, 170), "navy": (20, 30, 80), "violet": (120, 60, 170), "plum": (100, 40, 80),
    "pink": (230, 150, 180), "coral": (240, 120, 100),
}


MESH_LIFT_MODEL = "shap-e-img2img"
SOUND_SECONDS = 3.0


def task_items(items: list[PlanItem], assets: bool = False) -> list[PlanItem]:
    """concept-N, texture-N and turnaround-N for each planned item (assets: and mesh-N, animatic-N, sound-N)."""
    tasks: list[PlanItem] = []
    for number, item in enumerate(items, start=1):
        subject = item.parts.get("subject") or item.prompt
        theme = item.parts.get("theme", "")
        concept = f"concept-{number}"
        texture = f"texture-{number}"
        tasks.append(item.model_copy(update={"id": concept, "type": "concept", "depends_on": []}))
        tasks.append(PlanItem(prompt=", ".join(p for p in (f"seamless tileable texture of the surface of {subject}",
                                                           "flat top-down orthographic view, even diffuse light") if p),
                              parts={"theme": theme, "subject": subject}, id=texture, type="texture",
                              depends_on=[concept]))
        tasks.append(PlanItem(prompt=", ".join(p for p in (theme, subject, "turnaround sheet, front, side and back "
                                                           "views, orthographic, neutral background, studio light")
                                               if p),
                              parts={"theme": theme, "subject": subject}, id=f"turnaround-{number}",
                              type="turnaround", depends_on=[concept, texture]))
        if assets:
            tasks.append(PlanItem(prompt=", ".join(p for p in (theme, subject, "3D game asset") if p),
                                  parts={"theme": theme, "subject": subject}, id=f"mesh-{number}", type="mesh",
                                  depends_on=[concept]))
            reel = f"animatic-{number}"
            tasks.append(PlanItem(prompt=f"reel of {subject}: concept, texture and turnaround",
                                  parts={"theme": theme, "subject": subject}, id=reel, type="animatic",
                                  depends_on=[concept, texture, f"turnaround-{number}"]))
            tasks.append(PlanItem(prompt=f"sound effect of {subject}", parts={"theme": theme, "subject": subject},
                                  id=f"sound-{number}", type="sound", depends_on=[reel]))
    return tasks


def task_order(items: list[PlanItem]) -> list[PlanItem]:
    by_id = {item.id: item for item in items if item.id}
    order = TopologicalSorter({task_id: item.depends_on for task_id, item in by_id.items()}).static_order()
    return [by_id[task_id] for task_id in order]


def palette_words(image_path: Path, colours: int = 3) -> str:
    """The image's dominant colours as names ("cobalt, ivory and gold")."""
    from PIL import Image

    with Image.open(image_path) as image:
        small = image.convert("RGB").resize((64, 64))
    quantised = small.quantize(colors=6)
    palette = (quantised.getpalette() or [])[: 6 * 3]
    counts: list[tuple[int, int]] = sorted(quantised.getcolors() or [], reverse=True)  # type: ignore[arg-type]
    names: list[str] = []
    for _, index in counts:
        rgb = palette[index * 3: index * 3 + 3]
        name = min(COLOUR_NAMES, key=lambda n: sum((a - b) ** 2 for a, b in zip(COLOUR_NAMES[n], rgb)))
        if name not in names:
            names.append(name)
        if len(names) == colours:
            break
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


@dataclass
class TaskRun:
    done: list[tuple[str, str, bool]] = field(default_factory=list)  # (task id, artifact id, resumed)
    notes: list[str] = field(default_factory=list)


def _state_path(settings: Settings, project: str) -> Path:
    return project_folder(settings, project) / STATE_NAME


def _load_state(settings: Settings, project: str) -> dict[str, str]:
    path = _state_path(settings, project)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _save_state(settings: Settings, project: str, state: dict[str, str]) -> None:
    path = _state_path(settings, project)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def render_tasks(settings: Settings, plan: PlanFile, *, fields: dict, count: int | None = None,
                 dry_run: bool = False, echo=None) -> TaskRun:
    """Render the plan's tasks in dependency order (the first `count` concepts' tasks with --count);
    `fields` are build_request fields from batch's options (engine, model, size, steps, cfg, style...)."""
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.engines import choose_engine, get_engine
    from echo_os.errors import NotFoundError
    from echo_os.iterate.refine import refine_request
    from echo_os.render.requests import build_request
    from echo_os.render.scheduler import render_requests

    items = task_order(plan.items)
    if count is not None:  # the first `count` items' tasks (a task's id ends in its item's number)
        numbers = {str(n) for n in range(1, count + 1)}
        items = [i for i in items if (i.id or "").rsplit("-", 1)[-1] in numbers]
    run = TaskRun()
    state = _load_state(settings, plan.project)
    negative = plan.constraints.negative_prompt or None
    store = ArtifactStore(settings)
    try:
        for item in items:
            task_id = item.id or ""  # task_order keeps only items with an id
            previous = state.get(task_id)
            if previous:
                try:
                    store.open(previous)
                    run.done.append((task_id, previous, True))
                    continue
                except NotFoundError:
                    pass
            if item.type == "animatic":  # encoded from the stills it depends on, not rendered
                if dry_run:
                    if echo is not None:
                        echo(f"{item.id}  {item.type}  {item.prompt}")
                    continue
                from echo_os.motion.reel import make_reel

                stills = [store.open(state[task]) for task in item.depends_on]
                artifact = make_reel(store, plan.project, item.prompt, stills)
            else:
                request = _task_request(settings, store, item, state, fields, negative, run, build_request,
                                        refine_request, choose_engine, get_engine)
                if dry_run:
                    if echo is not None:
                        echo(f"{item.id}  {item.type}  {request.prompt}")
                    continue
                artifact = render_requests(settings, [request], store=store).artifacts[0]
            state[task_id] = artifact.id
            _save_state(settings, plan.project, state)
            run.done.append((task_id, artifact.id, False))
    finally:
        store.close()
    return run


def _task_request(settings, store, item: PlanItem, state: dict[str, str], fields: dict, negative, run: TaskRun,
                  build_request, refine_request, choose_engine, get_engine):
    base = {**fields, "prompt": item.prompt, "negative_prompt": negative, "project": fields["project"]}
    if item.type == "concept" or not item.depends_on:
        return build_request(**base)
    parent = store.open(state[item.depends_on[0]]) if item.depends_on[0] in state else None
    if item.type in ("mesh", "sound"):
        return _asset_request(settings, item, parent, fields, run)
    if item.type == "texture":
        prompt = item.prompt + (f", in {palette_words(parent.image_path)}" if parent is not None else "")
        request = build_request(**{**base, "prompt": prompt, "parent_id": parent.id if parent else None})
        name, reason = choose_engine(settings, request)
        if get_engine(name).capabilities.tiling:
            request = request.model_copy(update={"tile": "xy"})
        return request
    request = build_request(**{**base, "parent_id": parent.id if parent else None})
    name, reason = choose_engine(settings, request)
    if parent is not None and get_engine(name).capabilities.img2img:
        return refine_request(settings, parent, strength=TURNAROUND_STRENGTH, prompt=item.prompt,
                              negative=negative, changes={"engine": name})
    run.notes.append(f"{item.id}: engine {name} does not refine an image; rendered from its prompt with "
                     f"{item.depends_on[0]} as its parent")
    return request


def batch_task_plan(settings: Settings, project: str, *, count: int | None, dry_run: bool, json_output: bool,
                    engine: str, model: str | None, size: str | None, steps: int | None, cfg: float | None,
                    seed: int | None, style, echo) -> bool:
    """`echo-os batch PROJECT` when PROJECT's plan is a task plan: run it and return True; else False."""
    from echo_os.intent.planfile import load_plan
    from echo_os.render.requests import parse_size

    plan = load_plan(settings, project)
    if plan.kind not in ("assets", "tasks"):
        return False
    fields: dict = {"engine": engine, "model": model, "steps": steps, "cfg": cfg, "seed": seed, "project": project,
                    "style": style.text or "", "style_name": style.name}
    if size:
        fields["width"], fields["height"] = parse_size(size)
    fields = {key: value for key, value in fields.items() if value is not None}
    run = render_tasks(settings, plan, fields=fields, count=count, dry_run=dry_run, echo=echo)
    for note in run.notes:
        echo(f"note: {note}", err=True)
    if json_output and not dry_run:
        echo(json.dumps({"tasks": [{"id": t, "artifact": a, "resumed": r} for t, a, r in run.done]}, indent=2))
    elif not dry_run:
        for task_id, artifact_id, resumed in run.done:
            echo(f"{task_id:16s} {artifact_id[:12]}{'  (already rendered)' if resumed else ''}")
        rendered = sum(1 for *_, resumed in run.done if not resumed)
        echo(f"{rendered} rendered, {len(run.done) - rendered} already rendered")
    return True


def _asset_request(settings: Settings, item: PlanItem, parent, fields: dict, run: TaskRun):
    """A mesh task (the concept lifted to 3D when an image-to-3D entry resolves, else text-to-3D) or a sound
    task (as long as its reel, the parent; SOUND_SECONDS without one: a dry run); the image engine, model and
    size of the batch do not apply."""
    from echo_os.render.requests import RenderRequest

    common = {"project": fields["project"], "parent_id": parent.id if parent is not None else None}
    if "seed" in fields:
        common["seed"] = fields["seed"]
    if item.type == "sound":
        seconds = SOUND_SECONDS
        if parent is not None and parent.meta.kind == "video":
            seconds = float(parent.meta.duration_s)
        return RenderRequest(prompt=item.prompt, output="audio", options={"seconds": seconds}, **common)
    if parent is not None and _resolves(settings, MESH_LIFT_MODEL):
        from echo_os.iterate.lift import lift_request

        return lift_request(settings, parent, model=MESH_LIFT_MODEL, seed=common.get("seed", parent.meta.seed),
                            steps=64, cfg=3.0, grid_size=128, device="auto")
    run.notes.append(f"{item.id}: no image-to-3D weights ({MESH_LIFT_MODEL}); a 3D model from its prompt "
                     f"with {item.depends_on[0]} as its parent")
    return RenderRequest(prompt=item.prompt, output="mesh", model="shap-e", **common)


def _resolves(settings: Settings, model: str) -> bool:
    from echo_os.models import ResolveError, load_registry

    registry = load_registry(settings)
    if model not in registry:
        return False
    try:
        registry.resolve(model)
    except ResolveError:
        return False
    return True
