"""What a job does, typed by its kind: `JobSpec` is a discriminated union on `kind` (pydantic), persisted as
the `request` column of jobs.db. Each kind is handled by one handler (echo_os.api.handlers), found by kind.

    render    one RenderRequest from /api/render or /v1/images/generations
    refine    one image-to-image RenderRequest from /api/refine (its parent an artifact)
    clip      one video RenderRequest from /api/animate (a clip from an image artifact)
    batch     a story's requests, one per scene, from /api/batch, and where the story's files are
    compare   one request per cell, from /api/compare, and the axes of its grid sheet
    animatic  an animatic's options, from /api/animatic (its one artifact is the video)
    evolve    an improvement loop's options, from /api/evolve

The jobs table keeps a coarser `kind` per row (JobKind: which rows the claim may batch together): render
and refine rows are `render`, compare rows `batch` (`row_kind`). Rows written before the spec carried its
kind are read by `parse_spec`, which infers it from the row's kind and the fields that are set.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from echo_os.render.requests import RenderRequest
from echo_os.story.plan import PlanOptions

JobKind = Literal["render", "batch", "animatic", "evolve", "clip"]  # the jobs table's `kind` column
SpecKind = Literal["render", "refine", "clip", "batch", "compare", "animatic", "evolve"]
# What a job is to a client: a refine is shown as a render, as before kinds were typed.
JobViewKind = Literal["render", "batch", "compare", "animatic", "evolve", "clip"]


class StorySource(BaseModel):
    """Where a batch job's story is (the files /api/batch wrote under artifacts/.jobs/<id>/) and how it was
    planned: the worker plans it again once every image is saved, to write story.json, the contact sheet
    and the continuity report with the code `echo-os batch` uses."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str
    kind: Literal["storyboard", "prompts"]
    source: str  # story.csv or prompts.txt
    bible: str | None = None
    options: PlanOptions = PlanOptions()
    ip_adapter: str | None = None  # as asked ("none" -> None)
    count: int | None = None  # only the first `count` scenes were rendered (`echo-os batch --count`)


class CompareAxis(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    option: str  # echo_os.iterate.compare.AXES key: "cfg", "models", ...
    values: tuple[int | float | str, ...]


class CompareSource(BaseModel):
    """A compare job's axes and each item's values on them, so the worker writes the grid sheet
    (echo_os.iterate.compare.save_grid) once every cell is saved."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    title: str
    axes: tuple[CompareAxis, ...] = ()
    cells: tuple[tuple[int | float | str, ...], ...]  # one per item, in item order


class AnimaticSpec(BaseModel):
    """What an /api/animatic job encodes: `echo-os animatic`'s options (echo_os.motion.animatic), checked
    when the job was submitted; `scenes` and `frames` are what the story had then."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str
    fps: int
    size: tuple[int, int] | None = None
    fade: float
    captions: bool = False
    clips: bool = False
    scenes: int = 0
    frames: int = 0


class EvolveSpec(BaseModel):
    """What an /api/evolve job runs: `echo-os evolve`'s options (echo_os.reflect.evolve), checked when
    the job was submitted; `start` is the artifact the target resolved to, `run_id` its record's name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: str
    run_id: str
    rounds: int
    per_round: int
    objective: dict[str, float]
    scorer: str
    min_gain: float
    strengths: tuple[float, ...]
    seed: int = 0


class _Spec(BaseModel):
    """What every kind answers, so views and the queue read a spec without asking its kind."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    row_kind: ClassVar[JobKind]
    view_kind: ClassVar[JobViewKind]

    def render_items(self) -> tuple[RenderRequest, ...]:
        """The RenderRequests the renderer renders for this job (none for an animatic or a loop)."""
        return ()

    @property
    def title_text(self) -> str | None:
        return None

    @property
    def animatic_options(self) -> AnimaticSpec | None:
        """What an animatic job encodes (shown in its view); None for other kinds."""
        return None

    @property
    def scenes(self) -> int:
        return len(self.render_items())

    @property
    def images_total(self) -> int:
        """Artifacts the job makes."""
        return sum(item.count for item in self.render_items())

    @property
    def grid_index(self) -> int | None:
        """A comparison's grid sheet is recorded as the image after its cells; None for other jobs."""
        return None


class ItemsSpec(_Spec):
    """A job of RenderRequests for the renderer (render_requests)."""

    items: tuple[RenderRequest, ...] = Field(min_length=1)
    # render anew (the body's `again`, the CLI's --again); otherwise images the project already has are taken
    again: bool = False

    def render_items(self) -> tuple[RenderRequest, ...]:
        return self.items


class RenderSpec(ItemsSpec):
    kind: Literal["render"] = "render"
    row_kind: ClassVar[JobKind] = "render"
    view_kind: ClassVar[JobViewKind] = "render"


class RefineSpec(ItemsSpec):
    kind: Literal["refine"] = "refine"
    row_kind: ClassVar[JobKind] = "render"  # batched with renders of the same coalesce key
    view_kind: ClassVar[JobViewKind] = "render"


class ClipSpec(ItemsSpec):
    kind: Literal["clip"] = "clip"
    row_kind: ClassVar[JobKind] = "clip"
    view_kind: ClassVar[JobViewKind] = "clip"


class BatchSpec(ItemsSpec):
    kind: Literal["batch"] = "batch"
    row_kind: ClassVar[JobKind] = "batch"
    view_kind: ClassVar[JobViewKind] = "batch"
    title: str | None = None  # the story's title
    warnings: tuple[str, ...] = ()
    story: StorySource | None = None  # jobs stored before /api/batch kept its files have none

    @property
    def title_text(self) -> str | None:
        return self.title


class CompareSpec(ItemsSpec):
    kind: Literal["compare"] = "compare"
    row_kind: ClassVar[JobKind] = "batch"  # the same rows and worker path as a batch
    view_kind: ClassVar[JobViewKind] = "compare"
    title: str
    compare: CompareSource

    @property
    def title_text(self) -> str | None:
        return self.title

    @property
    def images_total(self) -> int:
        return sum(item.count for item in self.items) + 1  # and the grid sheet

    @property
    def grid_index(self) -> int | None:
        return sum(item.count for item in self.items)


class AnimaticJobSpec(_Spec):
    kind: Literal["animatic"] = "animatic"
    row_kind: ClassVar[JobKind] = "animatic"
    view_kind: ClassVar[JobViewKind] = "animatic"
    animatic: AnimaticSpec

    @property
    def images_total(self) -> int:
        return 1  # the one video

    @property
    def animatic_options(self) -> AnimaticSpec | None:
        return self.animatic

    @property
    def scenes(self) -> int:
        return self.animatic.scenes


class EvolveJobSpec(_Spec):
    kind: Literal["evolve"] = "evolve"
    row_kind: ClassVar[JobKind] = "evolve"
    view_kind: ClassVar[JobViewKind] = "evolve"
    evolve: EvolveSpec

    @property
    def images_total(self) -> int:
        """At most rounds x per_round candidates (fewer when the loop stops early)."""
        return self.evolve.rounds * self.evolve.per_round


JobSpec = Annotated[RenderSpec | RefineSpec | ClipSpec | BatchSpec | CompareSpec | AnimaticJobSpec | EvolveJobSpec,
                    Field(discriminator="kind")]
SPEC_TYPES: dict[str, type[_Spec]] = {cls.model_fields["kind"].default: cls for cls in (
    RenderSpec, RefineSpec, ClipSpec, BatchSpec, CompareSpec, AnimaticJobSpec, EvolveJobSpec)}
_ADAPTER: TypeAdapter[JobSpec] = TypeAdapter(JobSpec)


def parse_spec(text: str, row_kind: str | None = None) -> JobSpec:
    """A spec as stored in jobs.db. A spec written before specs carried their kind (a bag of optional fields:
    items, title, warnings, story, animatic, compare, evolve, again) gets it from its fields and its row's
    kind; the fields left at their empty defaults that its kind lacks are dropped."""
    data = json.loads(text)
    if isinstance(data, dict) and "kind" not in data:
        data = _legacy(data, row_kind)
    return _ADAPTER.validate_python(data)


def _legacy(data: dict[str, Any], row_kind: str | None) -> dict[str, Any]:
    if data.get("animatic") is not None:
        kind = "animatic"
    elif data.get("evolve") is not None:
        kind = "evolve"
    elif data.get("compare") is not None:
        kind = "compare"
    elif row_kind in ("clip", "batch"):
        kind = row_kind
    else:  # a render; a refine was stored as one (its request's init image is all that tells them apart)
        kind = "render"
    fields = SPEC_TYPES[kind].model_fields
    kept = {name: value for name, value in data.items() if name in fields}
    dropped = {name: value for name, value in data.items() if name not in fields and value not in (None, False, [], ())}
    if dropped:  # a field of another kind with a value: not a spec this code wrote
        raise ValueError(f"a stored {kind} job has fields of another kind: {sorted(dropped)}")
    return {**kept, "kind": kind}


def spec_json(spec: JobSpec) -> str:
    """The `request` column's text."""
    return spec.model_dump_json()
