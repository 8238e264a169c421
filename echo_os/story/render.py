"""Rendering a story plan: every scene in order, one artifact per image, then story.json and a contact sheet.

    result = render_plan(settings, plan_story("Lighthouse Keeper", "prompts/lighthouse-keeper/story.csv"))
    result.story_json, result.contact_sheet, result.scenes[0].artifacts

The scheduler does the batching, the OOM back-off and the resume: images already rendered with the same
one-image request are found in the project and not rendered again, so re-running a killed batch
finishes it without duplicates. Characters with reference images get IP-Adapter inputs (one adapter
per character, its `ip_adapter_scale`, default 0.6). After the batch: a contact sheet of every image
in scene order, a continuity report (CLIP image similarity per character), and story.json mapping
scenes to artifact ids, all in the project folder artifacts/<date>/<project-slug>/.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from echo_os.engines.ip_adapter import check_adapter
from echo_os.render.requests import IPAdapterImage, IPAdapterInput, IPAdapterReference, LoraInput, RenderRequest
from echo_os.story.continuity import CastEntry, CastImage, ContinuityReport
from echo_os.story.results import SceneResult

if TYPE_CHECKING:
    from echo_os.artifacts.store import Artifact, ArtifactStore
    from echo_os.engines.base import Engine
    from echo_os.render.prepare import EngineChoice
    from echo_os.render.scheduler import ImageDone
    from echo_os.settings import Settings
    from echo_os.story.plan import PlanOptions, StoryPlan

DEFAULT_IP_ADAPTER = "ip-adapter-sdxl"
DEFAULT_IP_ADAPTER_SCALE = 0.6
STORY_JSON = "story.json"
CONTACT_SHEET = "contact-sheet.png"
STORY_JSON_VERSION = 1


@dataclass(frozen=True)
class StoryProgress:
    """Where a story render is: scenes whose every image is on disk, images rendered now vs found."""

    scenes_done: int
    scenes_total: int
    images_done: int
    images_total: int
    images_rendered: int
    elapsed_s: float

    @property
    def images_per_minute(self) -> float:
        return 60.0 * self.images_rendered / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class StoryRender:
    title: str
    project: str
    project_dir: Path
    story_json: Path
    contact_sheet: Path
    scenes: list[SceneResult]
    continuity: ContinuityReport
    engines: list["EngineChoice"]
    rendered: int
    resumed: int
    elapsed_s: float
    batch_sizes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    resonance: Any = None  # resonance.story.StoryReflection when scoring was asked for

    @property
    def images_per_minute(self) -> float:
        return 60.0 * self.rendered / self.elapsed_s if self.elapsed_s > 0 and self.rendered else 0.0

    def artifact_rows(self) -> list[dict[str, Any]]:
        """One row per image in scene order (what the CLI prints)."""
        rows = []
        for scene in self.scenes:
            for artifact, resumed in zip(scene.artifacts, scene.resumed):
                rows.append({"scene": scene.scene, "slug": scene.slug, "id": artifact.id, "seed": artifact.meta.seed,
                             "path": str(artifact.path), "image": str(artifact.image_path),
                             "engine": artifact.meta.engine.name, "resumed": resumed})
        return rows

    def as_dict(self) -> dict[str, Any]:
        return {"title": self.title, "project": self.project, "project_dir": str(self.project_dir),
                "story_json": str(self.story_json), "contact_sheet": str(self.contact_sheet),
                "engines": [{"name": c.name, "reason": c.reason} for c in self.engines],
                "rendered": self.rendered, "resumed": self.resumed, "seconds": round(self.elapsed_s, 3),
                "images_per_minute": round(self.images_per_minute, 2), "batch_sizes": self.batch_sizes,
                "notes": self.notes, "artifacts": self.artifact_rows(), "continuity": self.continuity.as_dict(),
                "resonance": self.resonance.as_dict() if self.resonance is not None else None}


# ---- requests --------------------------------------------------------------------------------------

def story_requests(settings: "Settings", plan: "StoryPlan",
                   ip_adapter: str | None = DEFAULT_IP_ADAPTER) -> list[RenderRequest]:
    """The plan's requests in scene order, with IP-Adapter inputs for characters that have references
    (none when ip_adapter is None). Reference images are hashed through the workspace's sha256 cache."""
    if ip_adapter is None:
        return plan.requests
    from echo_os.models.hashing import file_sha256

    hashes: dict[Path, str] = {}  # a character's references recur in every scene it is in

    def image(path: Path) -> IPAdapterImage:
        if path not in hashes:
            hashes[path] = file_sha256(settings, path)
        return IPAdapterImage(path=str(path), sha256=hashes[path])

    requests = []
    for scene in plan.scenes:
        references = tuple(
            IPAdapterReference(name=member.id, images=tuple(image(path) for path in member.references),
                               scale=DEFAULT_IP_ADAPTER_SCALE if member.ip_adapter_scale is None
                               else member.ip_adapter_scale)
            for member in scene.cast if member.references)
        request = scene.request
        if references:
            request = request.model_copy(update={"ip_adapter": IPAdapterInput(model=ip_adapter, references=references)})
        requests.append(request)
    return requests


def check_adapters(settings: "Settings", requests: list[RenderRequest]) -> None:
    """Fail before the first scene when reference images need an adapter this machine does not have."""
    for model in dict.fromkeys(request.ip_adapter.model for request in requests if request.ip_adapter):
        check_adapter(settings, model)


def attach_loras(settings: "Settings", plan: "StoryPlan", requests: list[RenderRequest]) -> list[RenderRequest]:
    """Each scene's characters' LoRAs (bible `lora`: a models.toml entry or a file beside the bible) on
    its request, at each character's scale, after the model entry's own `lora` (a distillation LoRA such
    as LCM-LoRA, models.toml); a missing or wrong LoRA stops the story here, before the first scene renders."""
    from echo_os.engines.lora import model_lora_inputs, resolve_lora

    base = plan.bible_path.parent if plan.bible_path is not None else None
    resolved: dict[str, LoraInput] = {}
    of_model: dict[str, tuple[LoraInput, ...]] = {}
    out = []
    for scene, request in zip(plan.scenes, requests):
        if request.model not in of_model:
            of_model[request.model] = model_lora_inputs(settings, request.model)
        loras: dict[str, LoraInput] = {lora.sha256: lora for lora in of_model[request.model]}
        for ref in (member.lora for member in scene.cast if member.lora is not None):
            if ref.name not in resolved:
                resolved[ref.name] = resolve_lora(settings, ref.name, base=base)
            lora = resolved[ref.name].model_copy(update={"scale": ref.scale})
            loras.setdefault(lora.sha256, lora)  # two characters sharing one LoRA: the first one's scale
        out.append(request.model_copy(update={"loras": tuple(loras.values())}) if loras else request)
    return out


def attach_style_references(settings: "Settings", requests: list[RenderRequest]) -> list[RenderRequest]:
    """A learned style's reference image (styles.toml [styles.NAME.reference], `echo-os memory learn-from`)
    on each request styled with it (`--style NAME` or the bible's `style: NAME`), after the characters'."""
    from echo_os.render.styles import all_styles, with_style_reference

    styles = {key: style for key, style in all_styles(settings).items() if style.reference is not None}
    if not styles:
        return requests
    out = []
    for request in requests:
        style = styles.get((request.style_name or "").casefold())
        if style is None or style.reference is None:
            out.append(request)
            continue
        adapter = with_style_reference(settings, style.name, style.reference, request.ip_adapter)
        out.append(request.model_copy(update={"ip_adapter": IPAdapterInput.model_validate(adapter)}))
    return out


def scene_requests(settings: "Settings", plan: "StoryPlan", ip_adapter: str | None,
                   engine: "Engine | None" = None) -> list[RenderRequest]:
    """What each scene renders: its request with the characters' reference images and LoRAs, checked
    (a missing adapter or LoRA raises here, before anything renders). `echo-os batch` and /api/batch.

    A plan has one engine (model, engine and device come from the options or the bible, not per row),
    chosen here when not given. An engine that takes no LoRAs or no reference images gets none."""
    requests = story_requests(settings, plan, ip_adapter)
    if not requests:
        return requests
    if ip_adapter is not None:  # --ip-adapter none leaves out every reference image, a style's too
        requests = attach_style_references(settings, requests)
    if engine is None:
        from echo_os.engines import choose_engine, get_engine

        capabilities = get_engine(choose_engine(settings, requests[0])[0]).capabilities
    else:
        capabilities = engine.capabilities
    if not capabilities.reference_images:
        requests = [r.model_copy(update={"ip_adapter": None}) for r in requests]
    if capabilities.loras:
        requests = attach_loras(settings, plan, requests)
    if capabilities.reference_images and capabilities.needs_weights:  # a hosted engine sends the images as they are
        check_adapters(settings, requests)
    return requests


def _plan_notes(plan: "StoryPlan", ip_adapter: str | None) -> list[str]:
    notes = []
    seen: set[str] = set()
    for scene in plan.scenes:
        for member in scene.cast:
            if member.references and ip_adapter is None and f"refs:{member.id}" not in seen:
                seen.add(f"refs:{member.id}")
                notes.append(f"character {member.id}: reference images left out (--ip-adapter none)")
    return notes


# ---- rendering -------------------------------------------------------------------------------------

def render_plan(
    settings: "Settings",
    plan: "StoryPlan",
    *,
    batch_size: int | None = None,
    ip_adapter: str | None = DEFAULT_IP_ADAPTER,
    clip: str | None = None,
    progress: Callable[[StoryProgress], None] | None = None,
    cancel: threading.Event | None = None,
    on_engine: Callable[["EngineChoice"], None] | None = None,
    engine: "Engine | None" = None,
    store: "ArtifactStore | None" = None,
    resonance: Any = None,
    story: "StoryPlan | None" = None,
) -> StoryRender:
    """Render every scene of a validated StoryPlan (resuming what is already rendered), then write the
    contact sheet and story.json. clip: a models.toml clip entry for the continuity report, "none" to
    skip it, None for the first one on this machine. resonance: resonance.story.ResonanceOptions to score
    the images, keep each scene's best of N and flag drift before the contact sheet and story.json.
    engine: render with this engine (a RayEngine for `batch --ray`: the calls on Ray actors, the saving
    here); None: the one `auto` or the plan's engine picks here.
    story: the whole story when `plan` is a part of it (`batch --count N`): story.json and the contact sheet
    describe every scene of it rendered so far (earlier runs' images found by their request keys), not only
    the part this run rendered."""
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.render.scheduler import render_requests

    started = time.perf_counter()
    if engine is None and plan.scenes:  # one engine for the whole plan (see scene_requests), chosen once
        from echo_os.engines import choose_engine, create_engine

        engine = create_engine(settings, *choose_engine(settings, plan.scenes[0].request))
    requests = scene_requests(settings, plan, ip_adapter, engine)
    own_store = store is None
    store = store or ArtifactStore(settings)
    try:
        need = {scene.scene: scene.request.count for scene in plan.scenes}
        have: dict[int, int] = {}
        counts = {"done": 0, "rendered": 0}

        def on_image(done: "ImageDone") -> None:
            scene = done.artifact.meta.story.scene
            if scene is not None:  # a story's images carry their scene number
                have[scene] = have.get(scene, 0) + 1
            counts["done"] += 1
            counts["rendered"] += 0 if done.resumed else 1
            if progress is not None:
                scenes_done = sum(1 for number, n in need.items() if have.get(number, 0) >= n)
                progress(StoryProgress(scenes_done, len(need), counts["done"], plan.image_count, counts["rendered"],
                                       time.perf_counter() - started))

        outcome = render_requests(settings, requests, store=store, cancel=cancel, batch_size=batch_size,
                                  on_engine=on_engine, resume=True, on_image=on_image, engine=engine)
        artifacts = [*outcome.resumed, *outcome.artifacts]
        carried: list["Artifact"] = []
        whole = plan
        if story is not None:
            whole, carried = whole_story(settings, story, plan, store, ip_adapter, engine)
        return write_story_outputs(
            settings, whole, store=store, artifacts=artifacts + carried,
            resumed_ids={artifact.id for artifact in [*outcome.resumed, *carried]},
            carried_ids={artifact.id for artifact in carried}, engines=outcome.engines,
            batch_sizes=outcome.batch_sizes, notes=outcome.notes, elapsed_s=time.perf_counter() - started,
            requested_batch_size=batch_size, ip_adapter=ip_adapter,
            uses_ip_adapter=any(r.ip_adapter for r in requests), clip=clip, resonance=resonance)
    finally:
        if own_store:
            store.close()


def whole_story(settings: "Settings", story: "StoryPlan", part: "StoryPlan", store: "ArtifactStore",
                ip_adapter: str | None, engine: "Engine | None") -> tuple["StoryPlan", list["Artifact"]]:
    """(the story with `part`'s scenes in their place, the images earlier runs made of its other scenes)."""
    from echo_os.render.scheduler import find_rendered

    in_part = {scene.scene: scene for scene in part.scenes}
    others = story.model_copy(update={"scenes": tuple(s for s in story.scenes if s.scene not in in_part)})
    found = find_rendered(store, scene_requests(settings, others, ip_adapter, engine)) if others.scenes else {}
    whole = story.model_copy(update={"scenes": tuple(in_part.get(s.scene, s) for s in story.scenes)})
    return whole, list(found.values())


def plan_from_source(project: str, source: Path, *, kind: str, bible: Path | None,
                     options: "PlanOptions") -> "StoryPlan":
    """Plan a story again from its files (the API's batch jobs, once their images are saved)."""
    from echo_os.story import plan_prompt_list, plan_story

    if kind == "prompts":
        return plan_prompt_list(project, source, options=options)
    return plan_story(project, source, bible=bible, options=options)


def write_story_outputs(settings: "Settings", plan: "StoryPlan", *, store: "ArtifactStore",
                        artifacts: list["Artifact"], resumed_ids: set[str], engines: list["EngineChoice"],
                        batch_sizes: dict[str, int], notes: list[str], elapsed_s: float,
                        requested_batch_size: int | None, ip_adapter: str | None, uses_ip_adapter: bool,
                        clip: str | None, resonance: Any = None,
                        carried_ids: set[str] | frozenset[str] = frozenset()) -> StoryRender:
    """The contact sheet, continuity report and story.json of a rendered plan, written to its project
    folder: `echo-os batch` and the API's batch jobs both end here. `artifacts`: every image of the plan
    (any order), those in resumed_ids found from an earlier run. resonance: ResonanceOptions to score and
    reflect on the story (drift flags, best of N) before the sheet is drawn. carried_ids: images of scenes
    this run did not render, from earlier runs (neither rendered nor resumed by it); a scene of `plan` with
    no image at all (never rendered) is left out."""
    by_image = {(a.meta.story.scene, a.meta.seed): a for a in artifacts}
    scenes = []
    for planned in plan.scenes:
        found = [by_image[(planned.scene, seed)] for seed in planned.request.seeds
                 if (planned.scene, seed) in by_image]
        if not found:
            continue
        scenes.append(SceneResult(scene=planned.scene, slug=planned.slug, description=planned.row.description,
                                  characters=planned.row.characters, artifacts=found,
                                  resumed=[a.id in resumed_ids for a in found]))
    reflection = None
    if resonance is not None:
        from echo_os.resonance.story import reflect_story

        reflection = reflect_story(settings, store, plan, scenes, resonance)
    created = datetime.now(timezone.utc).astimezone()
    project_dir = store.project_dir(plan.project, created)
    result = StoryRender(
        title=plan.title, project=plan.project, project_dir=project_dir,
        story_json=project_dir / STORY_JSON, contact_sheet=project_dir / CONTACT_SHEET, scenes=scenes,
        continuity=ContinuityReport(), engines=engines, rendered=len(artifacts) - len(resumed_ids),
        resumed=len(resumed_ids - set(carried_ids)), elapsed_s=elapsed_s, batch_sizes=batch_sizes,
        notes=_plan_notes(plan, ip_adapter) + notes, resonance=reflection)
    write_contact_sheet(plan, result, created)
    result.continuity = story_continuity(settings, plan, scenes, clip)
    write_story_json(plan, result, created, store.root, requested_batch_size=requested_batch_size,
                     ip_adapter=ip_adapter if uses_ip_adapter else None)
    return result


# ---- outputs ---------------------------------------------------------------------------------------

def _open_image(artifact: "Artifact"):
    from PIL import Image

    with Image.open(artifact.image_path) as image:
        image.load()
        return image.convert("RGB")


def write_contact_sheet(plan: "StoryPlan", result: StoryRender, created: datetime) -> None:
    from echo_os.story.contact_sheet import SheetCell, render_contact_sheet, save_png_atomically

    cells = []
    for scene in result.scenes:
        for index, artifact in enumerate(scene.artifacts, start=1):
            cells.append(SheetCell(scene=scene.scene, slug=scene.slug, caption=scene.description,
                                   image=_open_image(artifact), index=index, of=len(scene.artifacts)))
    engines = ", ".join(sorted({a.meta.engine.name for s in result.scenes for a in s.artifacts})) or "none"
    images = len(cells)
    scenes = len(result.scenes)
    subtitle = (f"{'' if plan.project == plan.title else plan.project + '  ·  '}{scenes} scene{'s' if scenes != 1 else ''}, "
                f"{images} image{'s' if images != 1 else ''}  ·  engine {engines}  ·  {created:%Y-%m-%d %H:%M}")
    if plan.bible_hash:
        subtitle += f"  ·  bible {plan.bible_hash[:12]}"
    save_png_atomically(render_contact_sheet(plan.title, subtitle, cells), result.contact_sheet)


def story_continuity(settings: "Settings", plan: "StoryPlan", scenes: list[SceneResult],
                     clip: str | None) -> ContinuityReport:
    """CLIP similarity per character over its images rendered from model weights (an engine that loads
    none, such as storyboard cards, is left out: its images show no character)."""
    from echo_os.story.continuity import clip_image_embedder, continuity_report, find_clip_model

    cast: dict[str, CastEntry] = {}
    planned_by_number = {planned.scene: planned for planned in plan.scenes}
    for scene in scenes:  # the scenes with images (a story's unrendered scenes are not among them)
        planned = planned_by_number[scene.scene]
        rendered = [a for a in scene.artifacts if a.meta.model is not None]
        for member in planned.cast:
            entry = cast.get(member.id)
            if entry is None:
                entry = cast[member.id] = CastEntry(id=member.id, name=member.name, images=[],
                                                    references=[_open_reference(p) for p in member.references])
            entry.images.extend(CastImage(scene=scene.scene, image=_open_image(a)) for a in rendered)
    if not cast:
        return ContinuityReport(note="no characters in this story")
    if not any(entry.images for entry in cast.values()):
        return ContinuityReport(note="the images are draft cards, not diffusion renders")
    name, folder, why = find_clip_model(settings, clip)
    if name is None or folder is None:
        return ContinuityReport(note=why)
    return continuity_report(list(cast.values()), clip_image_embedder(folder), model=name)


def _open_reference(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def _unique(values) -> list:
    seen = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def write_story_json(plan: "StoryPlan", result: StoryRender, created: datetime, artifacts_root: Path, *,
                     requested_batch_size: int | None, ip_adapter: str | None) -> None:
    from echo_os.atomic import write_atomically

    requests = [scene.request for scene in plan.scenes]
    document = {
        "version": STORY_JSON_VERSION,
        "title": plan.title,
        "project": plan.project,
        "kind": plan.kind,
        "source": str(plan.source),
        "bible": {"path": str(plan.bible_path) if plan.bible_path else None, "sha256": plan.bible_hash},
        "created": created.isoformat(timespec="seconds"),
        "settings": {
            "engines": [{"name": c.name, "reason": c.reason} for c in result.engines],
            "models": _unique(r.model for r in requests),
            "sizes": _unique(r.size for r in requests),
            "steps": _unique(r.steps for r in requests),
            "cfg": _unique(r.cfg for r in requests),
            "schedulers": _unique(r.scheduler for r in requests),
            "batch_size": {"requested": requested_batch_size, "used": result.batch_sizes},
            "ip_adapter": ip_adapter,
            "clip": result.continuity.model,
        },
        "scenes": [
            {"scene": scene.scene, "slug": scene.slug, "description": scene.description,
             "characters": list(scene.characters), "seeds": [a.meta.seed for a in scene.artifacts],
             "artifacts": [a.id for a in scene.artifacts],
             "paths": [str(a.path.relative_to(artifacts_root)) for a in scene.artifacts],
             "resumed": scene.resumed, "siblings": [a.id for a in scene.siblings],
             "seeds_tried": sorted(a.meta.seed for a in [*scene.artifacts, *scene.siblings])}
            for scene in result.scenes
        ],
        "continuity": result.continuity.as_dict(),
        "resonance": result.resonance.as_dict() if result.resonance is not None else None,
        "contact_sheet": CONTACT_SHEET,
        "run": {"rendered": result.rendered, "resumed": result.resumed, "seconds": round(result.elapsed_s, 3),
                "images_per_minute": round(result.images_per_minute, 2), "notes": result.notes},
    }
    text = json.dumps(document, ensure_ascii=False, indent=2) + "\n"
    write_atomically(result.story_json, text.encode("utf-8"))
