"""`echo-os gallery`: one static HTML page over the artifacts, self-contained within the workspace.

    artifacts/gallery/index.html      the page: inline CSS and JS, the catalog rows as inline JSON
    artifacts/gallery/project-<slug>.html   the page of one project (--project), beside the full one
    artifacts/.cache/thumbs/<id>.webp thumbnails (made once, kept: an artifact's image never changes)

Links are relative (../.cache/thumbs/..., ../<artifact folder>/image.png), so the artifacts folder can be
opened from disk, copied, or served as it is. Story projects (artifacts with a scene number) are shown as
storyboards in scene order; other projects as a grid, newest first. Filters: project, character, scene;
a URL hash like #project=Harbor&character=Mara applies them on load. Video artifacts (animatics, clips;
artifacts/video.py) are cards holding a <video> (poster = their thumbnail, plays on hover) and play with
controls in the lightbox. A 3D model's card plays its turntable.mp4 (artifacts/assets.py) on hover, and its
lightbox turns the GLB itself in a WebGL viewer shipped with the package (echo_os/gallery/glb_viewer.js,
inlined in the page: no CDN, works offline). A page opened from disk may not fetch() a file, so each GLB is
also written once as a script, artifacts/.cache/glb/<id>.js (`echoGlb["<id>"] = "<base64>"`, up to
GLB_SCRIPT_MAX bytes of GLB), which the viewer adds to the page when the lightbox opens.
For headless checks the page writes its state on <body>: data-images, data-loaded, data-broken, data-visible,
data-videos (videos and turntables), data-playable (those with a decoded frame) and data-ready="true"; the
viewer's canvas (#lb-mesh) says data-drawn="1" once it drew the GLB, or data-error.
"""

from __future__ import annotations

import html
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from echo_os.artifacts.catalog import CatalogRow, project_slug
from echo_os.artifacts.store import open_catalog
from echo_os.atomic import write_atomically
from echo_os.errors import UsageError
from echo_os.settings import Settings

log = logging.getLogger(__name__)

THUMB_SIZE = 360
GLB_SCRIPT_MAX = 64 * 1024 * 1024  # a larger GLB is linked for download, not inlined for the viewer
GALLERY_DIR = "gallery"


@dataclass(frozen=True)
class GalleryResult:
    page: Path
    artifacts: int
    thumbnails_made: int
    note: str | None = None  # how --filter best chose, when it did


def thumbnail_path(settings: Settings, artifact_id: str) -> Path:
    return settings.cache_dir / "thumbs" / f"{artifact_id}.webp"


def tiled_thumbnail_path(settings: Settings, artifact_id: str) -> Path:
    return settings.cache_dir / "thumbs" / f"{artifact_id}.tiled.webp"


def glb_script_path(settings: Settings, artifact_id: str) -> Path:
    return settings.cache_dir / "glb" / f"{artifact_id}.js"


def make_glb_script(source: Path, target: Path, artifact_id: str) -> bool:
    """Write the GLB as a script for the lightbox viewer once (see the module docstring); True when made.
    A GLB over GLB_SCRIPT_MAX is not written (the lightbox links the file instead)."""
    import base64

    if target.exists() or source.stat().st_size > GLB_SCRIPT_MAX:
        return False
    encoded = base64.b64encode(source.read_bytes()).decode("ascii")
    write_atomically(target, f'(window.echoGlb = window.echoGlb || {{}})["{artifact_id}"] = "{encoded}";\n')
    return True


def make_thumbnail(source: Path, target: Path, size: int = THUMB_SIZE, tile: str | None = None) -> bool:
    """Write a WebP thumbnail once; returns True when it had to be made. With `tile` (a seamless
    texture's axes) the thumbnail is of the image repeated 2x2, so a seam would show through the middle."""
    if target.exists():
        return False
    from PIL import Image

    from echo_os.atomic import atomic_path

    with Image.open(source) as opened, atomic_path(target) as temporary:
        image = opened.convert("RGB")
        if tile:
            from echo_os.engines.tiling import tiled_preview

            image = tiled_preview(image, tile)
        image.thumbnail((size, size))
        image.save(temporary, format="WEBP", quality=82)
    return True


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def still_path(settings: Settings, row: CatalogRow) -> Path:
    """The picture a card shows: image.png, or a video artifact's poster frame (artifacts/video.py)."""
    name = row.meta.get("poster", "poster.png") if row.meta.get("kind") == "video" else "image.png"
    return settings.artifacts_dir / row.path / name


def _asset_file(settings: Settings, row: CatalogRow, kind: str, page_dir: Path) -> str | None:
    if row.meta.get("kind") != kind or not row.meta.get("file"):
        return None
    return _relative(settings.artifacts_dir / row.path / row.meta["file"], page_dir)


def _mesh_extras(settings: Settings, row: CatalogRow, page_dir: Path) -> dict:
    """A mesh's turntable MP4 and the viewer's GLB script, as page-relative links (None when absent)."""
    folder = settings.artifacts_dir / row.path
    turntable = row.meta.get("turntable") if row.meta.get("kind") == "mesh" else None
    script = glb_script_path(settings, row.id)
    return {"turntable": _relative(folder / turntable, page_dir) if turntable and (folder / turntable).is_file()
            else None,
            "glb": _relative(script, page_dir) if row.meta.get("kind") == "mesh" and script.is_file() else None}


def gallery_item(settings: Settings, row: CatalogRow, page_dir: Path, project: str | None = None) -> dict:
    """The page's record of one artifact; `project`: the display name its project is shown under."""
    story = row.meta.get("story") or {}
    image = still_path(settings, row)
    video = settings.artifacts_dir / row.path / row.meta["video"] if row.meta.get("kind") == "video" else None
    tile = row.meta.get("tile")
    thumb = tiled_thumbnail_path(settings, row.id) if tile else thumbnail_path(settings, row.id)
    return {
        "id": row.id, "project": project or row.project, "prompt": row.prompt, "created": row.created,
        "engine": row.engine, "model": row.model, "seed": row.seed, "size": f"{row.width}x{row.height}",
        "scene": story.get("scene"), "slug": story.get("slug"), "characters": list(story.get("characters") or []),
        "thumb": _relative(thumb, page_dir), "image": _relative(image, page_dir), "tile": tile,
        "video": _relative(video, page_dir) if video is not None else None,
        "video_kind": row.meta.get("video_kind"), "meta": row.meta,
        # a mesh or a sound (artifacts/assets.py): the card shows its preview (turntable, waveform) and the file
        "mesh": _asset_file(settings, row, "mesh", page_dir), "audio": _asset_file(settings, row, "audio", page_dir),
        "placeholder": bool(row.meta.get("placeholder")), **_mesh_extras(settings, row, page_dir),
        "parent_id": row.parent_id, "strength": row.meta.get("strength"),
    }


def best_rows(rows: list[CatalogRow], limit: int) -> tuple[list[CatalogRow], str]:
    """The `limit` best artifacts and how "best" was decided: by the objective `batch --best-of` keeps by
    (echo_os.resonance.story.Objective, its default weights), rated artifacts first (highest rating, then
    objective), then scored ones by objective, then the rest newest first. Grid sheets and videos are not
    ranked (they have no scores; a sheet is its cells)."""
    from echo_os.artifacts.meta import IMAGE_KINDS, artifact_kind
    from echo_os.resonance.scores import ArtifactScores
    from echo_os.resonance.story import Objective

    objective = Objective()
    images = [row for row in rows if artifact_kind(row.meta) in IMAGE_KINDS]
    newest = sorted(images, key=lambda row: row.created, reverse=True)

    def rating(row: CatalogRow) -> int | None:
        value = (row.meta.get("rating") or {}).get("value")
        return value if isinstance(value, int) else None

    def value(row: CatalogRow) -> float:
        scores = row.meta.get("scores") or {}
        known = ArtifactScores(alignment=scores.get("alignment"), style=scores.get("style"),
                               aesthetic=scores.get("aesthetic"),
                               character_consistency=scores.get("character_consistency"))
        return objective.value(known, rating(row))

    rated = [row for row in newest if rating(row) is not None]
    scored = [row for row in newest if rating(row) is None and row.meta.get("scores")]
    rest = [row for row in newest if rating(row) is None and not row.meta.get("scores")]
    ranked = (sorted(rated, key=lambda row: (rating(row), value(row)), reverse=True)
              + sorted(scored, key=value, reverse=True) + rest)
    if not rated and not scored:
        return ranked[:limit], "no scores or ratings yet, so best means most recent (`echo-os score`, `echo-os rate`)"
    parts = []
    if rated:
        parts.append(f"{len(rated)} rated first (highest rating)")
    parts.append(f"ranked by the --best-of objective {objective.describe()}")
    if rest:
        parts.append(f"{len(rest)} unscored last, newest first")
    return ranked[:limit], "best: " + "; ".join(parts)


def add_lineage(items: list[dict]) -> None:
    """Each item's `lineage`: its ancestors' ids, oldest first (as far as the page has them), and
    `children`: the ids refined (or replayed and saved) from it. The lightbox shows the chain."""
    by_id = {item["id"]: item for item in items}
    for item in items:
        item["children"] = []
    for item in items:
        parent = by_id.get(item["parent_id"] or "")
        if parent is not None:
            parent["children"].append(item["id"])
    for item in items:
        chain, seen, parent_id = [], {item["id"]}, item["parent_id"]
        while parent_id and parent_id in by_id and parent_id not in seen:
            seen.add(parent_id)
            chain.append(parent_id)
            parent_id = by_id[parent_id]["parent_id"]
        item["lineage"] = list(reversed(chain))


def build_gallery(settings: Settings, *, project: str | None = None,
                  progress: Callable[[str, int, int], None] | None = None,
                  best: int | None = None) -> GalleryResult:
    """Write artifacts/gallery/index.html (and any missing thumbnails); returns where it is.

    progress("thumbnails", done, total) after each artifact (thumbnails are made once, then reused).
    best: only the best `best` artifacts (see best_rows), best first, on their own page (index-best.html or
    project-<slug>-best.html, never over the full page); the result's note says how they were ranked.
    """
    page_dir = settings.artifacts_dir / GALLERY_DIR
    with open_catalog(settings) as catalog:
        rows = catalog.query(project=project)
        if project and not rows:
            known = sorted({project_slug(row.project): row.project for row in catalog.query()}.values(),
                           key=str.casefold)
            raise UsageError(f"no project {project!r} in this workspace; projects: "
                             f"{', '.join(known) if known else 'none yet'} (or leave out --project).")
    page_dir.mkdir(parents=True, exist_ok=True)
    # One section per project slug (one folder), under its newest display name.
    shown: dict[str, str] = {}
    for row in rows:  # newest first
        shown.setdefault(project_slug(row.project), row.project)
    note = None
    if best is not None:
        rows, note = best_rows(rows, best)
    items, made = [], 0
    for done, row in enumerate(rows, start=1):
        image = still_path(settings, row)
        tile = row.meta.get("tile")
        try:
            made += make_thumbnail(image, tiled_thumbnail_path(settings, row.id) if tile
                                   else thumbnail_path(settings, row.id), tile=tile)
            if row.meta.get("kind") == "mesh" and row.meta.get("file"):
                make_glb_script(settings.artifacts_dir / row.path / row.meta["file"],
                                glb_script_path(settings, row.id), row.id)
        except OSError as error:  # a folder deleted since the catalog was built: leave it out
            log.warning("gallery: skipping %s: %s", row.id[:12], error)
            continue
        finally:
            if progress is not None:
                progress("thumbnails", done, len(rows))
        items.append(gallery_item(settings, row, page_dir, shown[project_slug(row.project)]))
    add_lineage(items)
    title = f"echo-os gallery: {shown[project_slug(project)]}" if project else "echo-os gallery"
    if best is not None:
        title += f": best {len(items)}"
    # The full page is index.html; one project's page and the best page are written beside it, never over it.
    page = page_dir / ((f"project-{project_slug(project)}" if project else "index")
                       + ("-best" if best is not None else "") + ".html")
    from echo_os.resonance.gallery import gallery_resonance

    resonance = gallery_resonance(settings, sorted({item["project"] for item in items}))
    from echo_os.reflect.versions import gallery_parts

    resonance.update(gallery_parts(settings, sorted({item["project"] for item in items})))  # versions, report links
    write_atomically(page, render_page(title, items, resonance))
    return GalleryResult(page=page, artifacts=len(items), thumbnails_made=made, note=note)


# Characters escaped in the JSON inside <script>: `<` and `>` (so neither `</script>` nor `<!--` can change
# the HTML parser's state; a prompt holding `<!-- <script>` blanked the whole page), `&`, and U+2028/9
# (line terminators to older JavaScript). JSON's \\uXXXX escapes leave the data the same.
_SCRIPT_JSON_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                                      "\u2028": "\\u2028", "\u2029": "\\u2029"})


def script_json(value: object) -> str:
    """JSON that is safe as the text of a <script> element."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True).translate(_SCRIPT_JSON_ESCAPES)


def viewer_js() -> str:
    """The lightbox's GLB viewer (echo_os/gallery/glb_viewer.js, shipped in the package)."""
    from echo_os.package_data import package_folder

    return package_folder("gallery", "glb_viewer.js").read_text(encoding="utf-8").replace("</", "<\\/")


def render_page(title: str, items: list[dict], resonance: dict | None = None) -> str:
    from echo_os.resonance.gallery import RESONANCE_CSS, RESONANCE_JS

    data = script_json(items)
    extra = script_json(resonance or {"stories": {}, "motifs": []})
    return (PAGE.replace("{{TITLE}}", html.escape(title))
                .replace("{{COUNT}}", str(len(items)))
                .replace("{{RESONANCE_CSS}}", RESONANCE_CSS)
                .replace("{{RESONANCE_JS}}", RESONANCE_JS)
                .replace("{{VIEWER_JS}}", viewer_js())
                .replace("{{RESONANCE}}", extra)
                .replace("{{DATA}}", data))


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{TITLE}}</title>
<style>
:root { --bg: #101216; --panel: #181b21; --line: #2a2f38; --text: #e8e6e1; --dim: #9aa0aa; --accent: #e0a458; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { position: sticky; top: 0; z-index: 2; display: flex; flex-wrap: wrap; gap: 12px 20px; align-items: center;
         padding: 14px 28px; background: rgba(16,18,22,.94); border-bottom: 1px solid var(--line); }
header h1 { margin: 0; font-size: 18px; font-weight: 600; letter-spacing: .02em; }
header h1 span { color: var(--accent); }
header .count { color: var(--dim); }
header label { color: var(--dim); font-size: 12px; text-transform: uppercase; letter-spacing: .06em; }
select { margin-left: 6px; background: var(--panel); color: var(--text); border: 1px solid var(--line);
         border-radius: 6px; padding: 5px 8px; font: inherit; }
main { padding: 8px 28px 48px; }
section { margin-top: 26px; }
section h2 { margin: 0 0 12px; font-size: 16px; font-weight: 600; display: flex; gap: 10px; align-items: baseline; }
section h2 small { color: var(--dim); font-weight: 400; font-size: 12px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 16px; }
.storyboard { display: flex; gap: 16px; overflow-x: auto; padding-bottom: 8px; }
.storyboard .card { flex: 0 0 240px; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 10px; overflow: hidden;
        cursor: pointer; transition: transform .12s, border-color .12s; }
.card:hover { transform: translateY(-2px); border-color: var(--accent); }
.card img, .card video { display: block; width: 100%; aspect-ratio: 1 / 1; object-fit: cover; background: #000; }
.card .badge { color: var(--accent); font-size: 11px; text-transform: uppercase; letter-spacing: .06em; }
#lightbox video { max-width: 100%; max-height: calc(100vh - 56px); margin: auto; display: block; border-radius: 8px; }
.card .caption { padding: 8px 10px 10px; }
.card .scene { color: var(--accent); font-weight: 600; font-size: 12px; }
.card .prompt { display: -webkit-box; -webkit-line-clamp: 2; -webkit-box-orient: vertical; overflow: hidden; }
.card .facts { color: var(--dim); font-size: 12px; margin-top: 4px; }
.hidden { display: none !important; }
#lightbox { position: fixed; inset: 0; z-index: 5; background: rgba(5,6,8,.92); display: none;
            grid-template-columns: minmax(0, 3fr) minmax(280px, 2fr); gap: 20px; padding: 28px; }
#lightbox.open { display: grid; }
#lightbox img { max-width: 100%; max-height: calc(100vh - 56px); margin: auto; display: block; border-radius: 8px; }
#lightbox .meta { overflow: auto; max-height: calc(100vh - 56px); background: var(--panel); border-radius: 8px;
                  padding: 16px; }
#lightbox table { border-collapse: collapse; width: 100%; font-size: 12px; }
#lightbox td { border-top: 1px solid var(--line); padding: 4px 6px; vertical-align: top; word-break: break-word; }
#lightbox td:first-child { color: var(--dim); white-space: nowrap; }
#lightbox pre { white-space: pre-wrap; margin: 0; font-size: 11px; }
#lightbox .lineage { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin: 0 0 12px; }
#lightbox .lineage img { width: 56px; height: 56px; object-fit: cover; border-radius: 4px; cursor: pointer;
                         border: 2px solid transparent; margin: 0; }
#lightbox .lineage img.current { border-color: var(--accent); }
#lightbox canvas { width: 100%; max-height: calc(100vh - 96px); aspect-ratio: 4 / 3; display: block;
                   border-radius: 8px; cursor: grab; touch-action: none; }
#lightbox .files { margin: 6px 0 0; font-size: 12px; color: var(--dim); }
#lightbox .files a { color: var(--accent); margin-right: 12px; }
#lightbox .close { position: absolute; top: 10px; right: 18px; color: var(--text); font-size: 26px;
                   background: none; border: 0; cursor: pointer; }
.empty { color: var(--dim); margin-top: 40px; }
{{RESONANCE_CSS}}
</style>
</head>
<body data-ready="false">
<header>
  <h1><span>echo-os</span> gallery</h1>
  <span class="count" id="count">{{COUNT}} artifacts</span>
  <label>Project <select id="f-project"><option value="">all</option></select></label>
  <label>Character <select id="f-character"><option value="">all</option></select></label>
  <label>Scene <select id="f-scene"><option value="">all</option></select></label>
</header>
<main id="main"></main>
<div id="lightbox" role="dialog" aria-modal="true">
  <button class="close" id="lb-close" aria-label="Close">&times;</button>
  <div id="lb-media"><a id="lb-link" target="_blank"><img id="lb-image" alt=""></a>
    <video id="lb-video" controls preload="metadata" class="hidden"></video>
    <canvas id="lb-mesh" width="800" height="600" class="hidden" title="drag to turn"></canvas>
    <p class="files hidden" id="lb-files"></p></div>
  <div class="meta" id="lb-meta"></div>
</div>
<script type="application/json" id="gallery-data">{{DATA}}</script>
<script type="application/json" id="resonance-data">{{RESONANCE}}</script>
<script>
"use strict";
{{VIEWER_JS}}
const items = JSON.parse(document.getElementById("gallery-data").textContent);
const body = document.body, main = document.getElementById("main");
const filters = {project: document.getElementById("f-project"), character: document.getElementById("f-character"),
                 scene: document.getElementById("f-scene")};
let loaded = 0, broken = 0, playable = 0;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
function settle() {
  body.dataset.loaded = loaded; body.dataset.broken = broken; body.dataset.playable = playable;
  if (loaded + broken >= items.length) body.dataset.ready = "true";
}
function fill(select, values) {
  for (const v of values) select.appendChild(el("option", {value: String(v)}, String(v)));
}
const unique = (list) => [...new Set(list)].sort((a, b) => (a > b) - (a < b));
fill(filters.project, unique(items.map(i => i.project)));
fill(filters.character, unique(items.flatMap(i => i.characters)));
fill(filters.scene, unique(items.filter(i => i.scene !== null && i.scene !== undefined).map(i => i.scene))
                      .sort((a, b) => a - b));

function card(item) {
  const node = el("div", {class: "card", "data-id": item.id, "data-project": item.project,
                          "data-scene": item.scene === null || item.scene === undefined ? "" : String(item.scene),
                          "data-characters": JSON.stringify(item.characters)});
  // A video card holds the video itself (muted, poster = its thumbnail): "loaded" once a frame is decoded;
  // a 3D model's card holds its turntable the same way.
  const clip = item.video || item.turntable;
  const media = clip ? el("video", {src: clip, poster: item.thumb, muted: "", loop: "",
                                    preload: "auto", playsinline: "", title: item.prompt})
                     : el("img", {src: item.thumb, alt: item.prompt});
  let counted = false;
  const done = (ok) => {
    if (counted) return;
    counted = true;
    if (ok) { loaded++; if (clip && media.videoWidth > 0) playable++; }
    else { broken++; node.classList.add("broken"); }
    settle();
  };
  media.addEventListener(clip ? "loadeddata" : "load", () => done(true));
  media.addEventListener("error", () => done(false));
  if (clip) {
    node.addEventListener("mouseenter", () => media.play().catch(() => {}));
    node.addEventListener("mouseleave", () => media.pause());
  }
  node.appendChild(media);
  const caption = el("div", {class: "caption"});
  if (item.video) caption.appendChild(el("div", {class: "badge"}, "\u25b6 " + (item.video_kind || "video")));
  if (item.mesh || item.audio) {  // a 3D model (its turntable) or a sound (its waveform, and a player)
    caption.appendChild(el("div", {class: "badge"}, (item.mesh ? "3D model (GLB)" : "sound") +
                                                    (item.placeholder ? " \u00b7 placeholder" : "")));
    if (item.audio) caption.appendChild(el("audio", {src: item.audio, controls: "", preload: "metadata"}));
  }
  if (item.scene !== null && item.scene !== undefined)
    caption.appendChild(el("div", {class: "scene"}, "Scene " + item.scene + (item.slug ? " \\u00b7 " + item.slug : "")));
  caption.appendChild(el("div", {class: "prompt"}, item.prompt || "(no prompt)"));
  const who = item.characters.length ? item.characters.join(", ") + " \\u00b7 " : "";
  const tiled = item.tile ? " \\u00b7 tiled " + item.tile + " (2x2 preview)" : "";
  caption.appendChild(el("div", {class: "facts"},
                         who + item.engine + " \\u00b7 " + item.size + tiled + " \\u00b7 " + item.created.slice(0, 10)));
  if (item.parent_id) caption.appendChild(el("div", {class: "facts"}, "refined from " + item.parent_id.slice(0, 12) +
                                             (item.strength != null ? " at " + item.strength : "")));
  node.appendChild(caption);
  node.addEventListener("click", () => openLightbox(item));
  return node;
}

function render() {
  const projects = unique(items.map(i => i.project));
  for (const project of projects) {
    const members = items.filter(i => i.project === project);
    const story = members.some(i => i.scene !== null && i.scene !== undefined);
    members.sort(story ? (a, b) => (a.scene ?? 1e9) - (b.scene ?? 1e9) || a.created.localeCompare(b.created)
                       : (a, b) => b.created.localeCompare(a.created));
    const section = el("section", {"data-project": project});
    const heading = el("h2", {}, project);
    heading.appendChild(el("small", {}, story ? "storyboard \\u00b7 " + members.length + " frames"
                                              : members.length + " images"));
    section.appendChild(heading);
    const row = el("div", {class: story ? "storyboard" : "grid"});
    members.forEach(m => row.appendChild(card(m)));
    section.appendChild(row);
    main.appendChild(section);
  }
  if (!items.length) main.appendChild(el("p", {class: "empty"}, "No artifacts yet: render something first."));
  body.dataset.images = items.length;
  body.dataset.videos = items.filter(i => i.video || i.turntable).length;
  settle();
}

function applyFilters() {
  const project = filters.project.value, character = filters.character.value, scene = filters.scene.value;
  let visible = 0;
  for (const node of document.querySelectorAll(".card")) {
    const show = (!project || node.dataset.project === project) && (!scene || node.dataset.scene === scene) &&
                 (!character || JSON.parse(node.dataset.characters).includes(character));
    node.classList.toggle("hidden", !show);
    visible += show;
  }
  for (const section of document.querySelectorAll("section[data-project]"))
    section.classList.toggle("hidden", !section.querySelector(".card:not(.hidden)"));
  body.dataset.visible = visible;
  document.getElementById("count").textContent = visible + " of " + items.length + " artifacts";
  const hash = Object.entries({project, character, scene}).filter(([, v]) => v)
    .map(([k, v]) => k + "=" + encodeURIComponent(v)).join("&");
  history.replaceState(null, "", hash ? "#" + hash : location.pathname);
}

function fromHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  for (const [name, select] of Object.entries(filters)) {
    const value = params.get(name);
    if (value !== null && [...select.options].some(o => o.value === value)) select.value = value;
  }
}

let viewer = null;
function showMesh(item) {  // the GLB turning in the WebGL viewer (glb_viewer.js), or why not on the canvas
  const canvas = document.getElementById("lb-mesh"), files = document.getElementById("lb-files");
  files.textContent = "";
  files.appendChild(el("a", {href: item.mesh, download: ""}, "mesh.glb"));
  if (item.turntable) files.appendChild(el("a", {href: item.turntable, target: "_blank"}, "turntable.mp4"));
  if (item.placeholder) files.appendChild(el("span", {}, "placeholder mesh (draft engine), not a generated model"));
  delete canvas.dataset.drawn;
  const fail = (error) => { canvas.dataset.error = String(error.message || error);
                            files.appendChild(el("span", {}, "viewer: " + canvas.dataset.error)); };
  if (!item.glb) { fail(new Error("the GLB is too large to view here; download it")); return; }
  GlbViewer.load(item.id, item.glb).then((bytes) => {
    if (canvas.dataset.showing !== item.id) return;  // another artifact was opened meanwhile
    viewer = GlbViewer.show(canvas, bytes);
  }).catch(fail);
}
function stopMesh() {
  if (viewer) viewer.stop();
  viewer = null;
}

function openLightbox(item) {
  const video = document.getElementById("lb-video"), link = document.getElementById("lb-link");
  const canvas = document.getElementById("lb-mesh"), files = document.getElementById("lb-files");
  stopMesh();
  link.classList.toggle("hidden", !!item.video || !!item.mesh);
  video.classList.toggle("hidden", !item.video);
  canvas.classList.toggle("hidden", !item.mesh);
  files.classList.toggle("hidden", !item.mesh);
  canvas.dataset.showing = item.mesh ? item.id : "";
  if (item.video) { video.src = item.video; video.poster = item.image; }
  else { video.pause(); video.removeAttribute("src"); document.getElementById("lb-image").src = item.image; }
  if (item.mesh) showMesh(item);
  link.href = item.mesh || item.audio || item.video || item.image;
  const meta = document.getElementById("lb-meta");
  meta.textContent = "";
  meta.appendChild(el("h2", {}, item.prompt || item.id.slice(0, 12)));
  const chain = [...item.lineage, item.id, ...item.children];
  if (chain.length > 1) {  // the refine chain: ancestors, this one, then what was refined from it
    const lineage = el("div", {class: "lineage", "data-lineage": chain.join(",")});
    for (const id of chain) {
      const other = items.find(i => i.id === id);
      const thumb = el("img", {src: other.thumb, alt: other.prompt, title: id.slice(0, 12) +
                               (other.strength != null ? " \u00b7 strength " + other.strength : "")});
      if (id === item.id) thumb.classList.add("current");
      else thumb.addEventListener("click", () => openLightbox(other));
      lineage.appendChild(thumb);
    }
    meta.appendChild(lineage);
  }
  const table = el("table");
  for (const [key, value] of Object.entries(item.meta)) {
    const tr = el("tr");
    tr.appendChild(el("td", {}, key));
    const td = el("td");
    if (value !== null && typeof value === "object") td.appendChild(el("pre", {}, JSON.stringify(value, null, 2)));
    else td.textContent = String(value);
    tr.appendChild(td);
    table.appendChild(tr);
  }
  meta.appendChild(table);
  document.getElementById("lightbox").classList.add("open");
}
function closeLightbox() {
  stopMesh();
  document.getElementById("lb-video").pause();
  document.getElementById("lightbox").classList.remove("open");
}
document.getElementById("lb-close").addEventListener("click", closeLightbox);
document.getElementById("lightbox").addEventListener("click", (e) => { if (e.target.id === "lightbox") closeLightbox(); });
document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeLightbox(); });
Object.values(filters).forEach(s => s.addEventListener("change", applyFilters));
window.addEventListener("hashchange", () => { fromHash(); applyFilters(); });

{{RESONANCE_JS}}
render();
decorate();
fromHash();
applyFilters();
</script>
</body>
</html>
"""
