"""Version history of a project: commit, log, diff, checkout (issue 28).

A project's *current selection* is its newest story.json (the one `echo-os animatic`, the gallery and
`--reroll-flagged` read): scene -> kept artifact. `commit` records it as an immutable version:

    catalog.db `versions` row (migration m004_versions; triggers refuse UPDATE and DELETE)
    artifacts/versions/<project-slug>/v0001.json               the same record, so a rebuilt catalog
    artifacts/versions/<project-slug>/v0001-contact-sheet.png   gets it back; the sheet as it was

A version holds the story.json document, the selection, the hashes of the bible, the storyboard,
styles.toml and plan.json, a scores summary of the kept images, the message and the minutes spent.
Versions only point at artifacts (content-addressed, never copied or deleted). `checkout` writes the
version's story.json (with a new `created`, so it is the newest) and its contact sheet back into
today's project folder: that is the current selection again, for the animatic and the gallery too.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from echo_os.artifacts.catalog import project_slug
from echo_os.errors import NotFoundError, UsageError

if TYPE_CHECKING:
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.settings import Settings

VERSIONS_DIR = "versions"
RECORD_VERSION = 1
SCORE_TERMS = ("alignment", "character_consistency", "style", "aesthetic", "rating")


@dataclass(frozen=True)
class Version:
    """One committed version of a project (what `echo-os log` lists)."""

    project: str
    number: int
    created: str
    message: str
    minutes: float | None
    selection: dict[int, str]  # scene -> kept artifact id
    hashes: dict[str, str | None]  # bible, storyboard, styles, plan
    scores: dict[str, float | None]  # mean of each score over the kept images that have it
    story: dict[str, Any]  # the story.json document as it was
    story_json: str  # where it was read from, relative to the artifacts folder
    contact_sheet: str | None  # the sheet's copy, relative to the artifacts folder
    record_version: int = RECORD_VERSION

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["selection"] = {str(k): v for k, v in self.selection.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Version":
        values = dict(data)
        values["selection"] = {int(k): v for k, v in data["selection"].items()}
        return cls(**values)


@dataclass(frozen=True)
class SceneChange:
    scene: int
    slug: str
    before: str | None  # kept artifact id in A (None: scene not in A)
    after: str | None


@dataclass
class VersionDiff:
    project: str
    a: int
    b: int
    changed: list[SceneChange] = field(default_factory=list)
    same: list[int] = field(default_factory=list)
    hashes: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # only those that differ
    sheet: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"project": self.project, "a": self.a, "b": self.b, "changed": [asdict(c) for c in self.changed],
                "same": self.same, "hashes": {k: list(v) for k, v in self.hashes.items()},
                "sheet": str(self.sheet) if self.sheet else None}


# ---- reading the current selection ---------------------------------------------------------------------

def kept_of(entry: dict[str, Any]) -> str | None:
    """A story.json scene's kept artifact: `kept` when named (best-of), else its first image."""
    ids = entry.get("artifacts") or []
    return entry.get("kept") or (ids[0] if ids else None)


def selection_of(story: dict[str, Any]) -> dict[int, str]:
    return {int(entry["scene"]): kept for entry in story.get("scenes") or [] if (kept := kept_of(entry))}


def _file_hash(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _source_path(settings: "Settings", text: str | None) -> Path | None:
    if not text:
        return None
    path = Path(text).expanduser()
    for candidate in ([path] if path.is_absolute() else [Path.cwd() / path, settings.home / path]):
        if candidate.is_file():
            return candidate
    return None


def current_story(settings: "Settings", project: str) -> tuple[Path, dict[str, Any]]:
    """The project's newest story.json and its document, or a UsageError saying how to make one."""
    from echo_os.motion.animatic import find_story_json

    path = find_story_json(settings, project)
    return path, json.loads(path.read_text(encoding="utf-8"))


def scores_summary(store: "ArtifactStore", ids: list[str]) -> dict[str, float | None]:
    """The mean of each score (and rating) over the kept images that have one."""
    values: dict[str, list[float]] = {term: [] for term in SCORE_TERMS}
    for artifact_id in ids:
        row = store.catalog.get(artifact_id)
        if row is None:
            continue
        scores = row.meta.get("scores") or {}
        for term in SCORE_TERMS[:-1]:
            if isinstance(scores.get(term), (int, float)):
                values[term].append(float(scores[term]))
        rating = (row.meta.get("rating") or {}).get("value")
        if isinstance(rating, int):
            values["rating"].append(float(rating))
    return {term: (round(sum(v) / len(v), 6) if v else None) for term, v in values.items()}


# ---- the versions table ------------------------------------------------------------------------------

def versions_dir(settings: "Settings", project: str) -> Path:
    return settings.artifacts_dir / VERSIONS_DIR / project_slug(project)


def _restore_from_files(db: sqlite3.Connection, settings: "Settings", project: str) -> None:
    """A catalog rebuilt from scratch (deleted, quarantined) gets the project's versions back from their files."""
    slug = project_slug(project)
    if db.execute("SELECT 1 FROM versions WHERE project = ? LIMIT 1", (slug,)).fetchone():
        return
    for path in sorted(versions_dir(settings, project).glob("v*.json")):
        try:
            version = Version.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, KeyError):
            continue
        db.execute("INSERT OR IGNORE INTO versions (project, number, created, message, minutes, record) "
                   "VALUES (?,?,?,?,?,?)", (slug, version.number, version.created, version.message,
                                            version.minutes, json.dumps(version.as_dict(), sort_keys=True)))


def list_versions(settings: "Settings", store: "ArtifactStore", project: str) -> list[Version]:
    """Every version of the project, oldest first."""
    db = store.catalog.db
    _restore_from_files(db, settings, project)
    rows = db.execute("SELECT record FROM versions WHERE project = ? ORDER BY number", (project_slug(project),))
    return [Version.from_dict(json.loads(row[0])) for row in rows]


def get_version(settings: "Settings", store: "ArtifactStore", project: str, number: int) -> Version:
    versions = list_versions(settings, store, project)
    for version in versions:
        if version.number == number:
            return version
    known = ", ".join(str(v.number) for v in versions) or "none yet: `echo-os commit PROJECT MESSAGE`"
    raise NotFoundError(f"project {project!r} has no version {number} (versions: {known}).")


def parse_version(text: str) -> int:
    """'3', 'v3' -> 3; anything else is a UsageError."""
    cleaned = text.strip().lower().removeprefix("v")
    if not cleaned.isdigit() or int(cleaned) < 1:
        raise UsageError(f"version {text!r} is not a version number; give one from `echo-os log PROJECT` (e.g. 1 or v1).")
    return int(cleaned)


# ---- commit ----------------------------------------------------------------------------------------

def commit(settings: "Settings", store: "ArtifactStore", project: str, message: str,
           minutes: float | None = None) -> Version:
    """Record the project's current selection as a new immutable version."""
    message = message.strip()
    if not message:
        raise UsageError("commit: give a message saying what this version is, e.g. \"integrate 3D assets\".")
    if minutes is not None and not minutes >= 0:
        raise UsageError(f"--minutes must be 0 or more, got {minutes:g}.")
    story_path, story = current_story(settings, project)
    selection = selection_of(story)
    if not selection:
        raise UsageError(f"project {project!r} has no scene with an image in {story_path}; render it first.")
    name = story.get("project") or project
    previous = list_versions(settings, store, project)
    hashes = {
        "bible": (story.get("bible") or {}).get("sha256"),
        "storyboard": _file_hash(_source_path(settings, story.get("source"))),
        "styles": _file_hash(settings.home / "styles.toml"),
        "plan": _file_hash(settings.home / "prompts" / project_slug(project) / "plan.json"),
    }
    if previous and previous[-1].selection == selection and previous[-1].hashes == hashes:
        raise UsageError(f"nothing changed since version {previous[-1].number} of {name!r}: the same scenes, "
                         "bible, storyboard, styles and plan.")
    root = settings.artifacts_dir
    folder = versions_dir(settings, project)
    db = store.catalog.db
    db.execute("BEGIN IMMEDIATE")  # the number and the row in one transaction: two commits never share a number
    written: list[Path] = []
    try:
        number = (db.execute("SELECT MAX(number) FROM versions WHERE project = ?",
                             (project_slug(project),)).fetchone()[0] or 0) + 1
        folder.mkdir(parents=True, exist_ok=True)
        sheet_copy: str | None = None
        sheet = story_path.parent / str(story.get("contact_sheet") or "contact-sheet.png")
        if sheet.is_file():
            target = folder / f"v{number:04d}-contact-sheet.png"
            shutil.copyfile(sheet, target)
            written.append(target)
            sheet_copy = target.relative_to(root).as_posix()
        version = Version(
            project=name, number=number, created=datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
            message=message, minutes=minutes, selection=selection, hashes=hashes,
            scores=scores_summary(store, list(selection.values())), story=story,
            story_json=story_path.relative_to(root).as_posix(), contact_sheet=sheet_copy)
        from echo_os.atomic import write_atomically

        record = json.dumps(version.as_dict(), sort_keys=True)
        record_path = folder / f"v{number:04d}.json"
        write_atomically(record_path, (json.dumps(version.as_dict(), indent=2, ensure_ascii=False) + "\n").encode())
        written.append(record_path)
        db.execute("INSERT INTO versions (project, number, created, message, minutes, record) VALUES (?,?,?,?,?,?)",
                   (project_slug(project), number, version.created, message, minutes, record))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return version


def changed_scenes(before: dict[int, str], after: dict[int, str]) -> list[int]:
    return sorted(scene for scene in set(before) | set(after) if before.get(scene) != after.get(scene))


# ---- diff ------------------------------------------------------------------------------------------

def _slugs(version: Version) -> dict[int, str]:
    return {int(e["scene"]): str(e.get("slug", "")) for e in version.story.get("scenes") or []}


def diff(settings: "Settings", store: "ArtifactStore", project: str, a: int, b: int, *,
         sheet: bool = True) -> VersionDiff:
    """Which scenes differ between versions a and b; with `sheet`, a side-by-side PNG of every scene."""
    va, vb = get_version(settings, store, project, a), get_version(settings, store, project, b)
    slugs = {**_slugs(va), **_slugs(vb)}
    result = VersionDiff(project=va.project, a=a, b=b)
    for scene in sorted(set(va.selection) | set(vb.selection)):
        before, after = va.selection.get(scene), vb.selection.get(scene)
        if before == after:
            result.same.append(scene)
        else:
            result.changed.append(SceneChange(scene, slugs.get(scene, ""), before, after))
    result.hashes = {key: (va.hashes.get(key), vb.hashes.get(key)) for key in va.hashes
                     if va.hashes.get(key) != vb.hashes.get(key)}
    if sheet:
        result.sheet = write_diff_sheet(settings, store, va, vb, slugs)
    return result


def _thumbnail(store: "ArtifactStore", artifact_id: str | None, size: int):
    from PIL import Image

    if artifact_id is None:
        return None
    row = store.catalog.get(artifact_id)
    if row is None:
        return None
    path = store.root / row.path / "image.png"
    if not path.is_file():
        return None
    with Image.open(path) as image:
        image.load()
        picture = image.convert("RGB")
    picture.thumbnail((size, size))
    return picture


def write_diff_sheet(settings: "Settings", store: "ArtifactStore", va: Version, vb: Version,
                     slugs: dict[int, str], size: int = 256) -> Path:
    """One row per scene: version A's image | version B's image, changed rows marked in red."""
    from PIL import Image, ImageDraw

    from echo_os.story.contact_sheet import _font, save_png_atomically

    scenes = sorted(set(va.selection) | set(vb.selection))
    label_w, header, gap = 220, 40, 8
    width = label_w + 2 * (size + gap) + gap
    height = header + len(scenes) * (size + gap) + gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((label_w, 10), f"v{va.number}: {va.message[:28]}", fill="black", font=_font(16))
    draw.text((label_w + size + gap, 10), f"v{vb.number}: {vb.message[:28]}", fill="black", font=_font(16))
    for row, scene in enumerate(scenes):
        top = header + row * (size + gap)
        before, after = va.selection.get(scene), vb.selection.get(scene)
        changed = before != after
        draw.text((gap, top + 8), f"{scene:03d} {slugs.get(scene, '')[:20]}", fill="black", font=_font(14))
        draw.text((gap, top + 30), "changed" if changed else "same", fill="red" if changed else "gray", font=_font(14))
        for column, artifact_id in enumerate((before, after)):
            left = label_w + column * (size + gap)
            picture = _thumbnail(store, artifact_id, size)
            if picture is not None:
                canvas.paste(picture, (left, top))
            if changed:
                draw.rectangle((left - 2, top - 2, left + size + 1, top + size + 1), outline="red", width=2)
    path = versions_dir(settings, va.project) / f"diff-v{va.number}-v{vb.number}.png"
    save_png_atomically(canvas, path)
    return path


# ---- checkout --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Checkout:
    version: Version
    story_json: Path
    contact_sheet: Path | None


def checkout(settings: "Settings", store: "ArtifactStore", project: str, number: int, *,
             force: bool = False) -> Checkout:
    """Make version `number` the current selection: its story.json (new `created`) and contact sheet in
    today's project folder. Refuses when the current selection is in no version (it would be lost from
    view; commit it first or pass force), or when a kept artifact is gone from the workspace."""
    version = get_version(settings, store, project, number)
    versions = list_versions(settings, store, project)
    try:
        _, current = current_story(settings, project)
    except UsageError:
        current = None
    if current is not None and not force:
        selection = selection_of(current)
        if all(v.selection != selection for v in versions):
            raise UsageError(f"the current selection of {version.project!r} is in no version; commit it first "
                             f"(echo-os commit {version.project!r} MESSAGE) or pass --force.")
    missing = [aid for aid in version.selection.values() if store.catalog.get(aid) is None]
    if missing:
        raise NotFoundError(f"version {number} keeps artifact {missing[0][:12]}, which is not in this workspace "
                            "any more; run `echo-os artifacts reindex` if its folder is there.")
    from echo_os.atomic import write_atomically
    from echo_os.story.render import CONTACT_SHEET, STORY_JSON

    folder = store.project_dir(version.project)
    folder.mkdir(parents=True, exist_ok=True)
    document = dict(version.story)
    document["created"] = datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
    document["checkout"] = {"version": version.number, "message": version.message, "committed": version.created}
    story_json = folder / STORY_JSON
    sheet: Path | None = None
    if version.contact_sheet and (settings.artifacts_dir / version.contact_sheet).is_file():
        sheet = folder / CONTACT_SHEET
        write_atomically(sheet, (settings.artifacts_dir / version.contact_sheet).read_bytes())
    write_atomically(story_json, (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
    return Checkout(version=version, story_json=story_json, contact_sheet=sheet)


# ---- the gallery -------------------------------------------------------------------------------------

def gallery_parts(settings: "Settings", projects: list[str]) -> dict[str, Any]:
    """What the gallery shows of the reflect loop: {"versions": gallery_versions(...), "reports": project ->
    its resonance page's file name, when `echo-os resonance` has written one beside the gallery}."""
    reports = {}
    for project in projects:
        name = f"resonance-{project_slug(project)}.html"
        if (settings.artifacts_dir / "gallery" / name).is_file():
            reports[project] = name
    return {"versions": gallery_versions(settings, projects), "reports": reports}


def gallery_versions(settings: "Settings", projects: list[str]) -> dict[str, list[dict[str, Any]]]:
    """project -> its committed versions, newest first (from artifacts/versions/<slug>/v*.json, the files
    `echo-os commit` writes beside its catalog row, so building the page needs no catalog write)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for project in projects:
        versions = []
        for path in sorted(versions_dir(settings, project).glob("v*.json")):
            try:
                versions.append(Version.from_dict(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, TypeError, KeyError):
                continue
        rows = []
        for index, version in enumerate(versions):
            before = versions[index - 1].selection if index else {}
            rows.append({"number": version.number, "created": version.created, "message": version.message,
                         "minutes": version.minutes, "changed": changed_scenes(before, version.selection)})
        if rows:
            out[project] = rows[::-1]
    return out
