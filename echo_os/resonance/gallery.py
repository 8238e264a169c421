"""The gallery's resonance parts: per story its style consistency and drift flags (from its newest
story.json), the motifs of the latest `echo-os memory analyze` (artifacts/memory/motifs.json), and,
when the page is served by `echo-os serve`, rating buttons that POST /api/artifacts/{id}/rating.

Scores, ratings and best-of marks of each image are already in the page (each item carries its meta).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from echo_os.settings import Settings


def gallery_resonance(settings: "Settings", projects: list[str]) -> dict[str, Any]:
    """{"stories": {project: {style_consistency, style_pairs, threshold, flags}}, "motifs": [...]}"""
    from echo_os.resonance.analyze import MOTIFS_JSON
    from echo_os.resonance.story import load_story_json

    stories = {}
    for project in projects:
        story = load_story_json(settings, project)
        reflection = (story or {}).get("resonance")
        if reflection and not reflection.get("note"):
            stories[project] = {"style_consistency": reflection.get("style_consistency"),
                                "style_pairs": reflection.get("style_pairs"),
                                "threshold": (reflection.get("thresholds") or {}).get("style"),
                                "flags": reflection.get("flags") or []}
    motifs: list[dict] = []
    path = settings.memory_dir / MOTIFS_JSON
    if path.is_file():
        try:
            analysis = json.loads(path.read_text(encoding="utf-8"))
            for clustering in analysis.get("clusterings", []):
                for motif in clustering.get("motifs", []):
                    motifs.append({"by": clustering.get("by"), "name": motif["name"], "size": motif["size"],
                                   "phrases": [p for p, _ in motif.get("phrases", [])][:5],
                                   "members": motif.get("members", [])[:8]})
        except (OSError, ValueError, KeyError, TypeError):
            motifs = []
    # "versions" and "reports" are added by echo_os.reflect.versions.gallery_parts (gallery/build.py)
    return {"stories": stories, "motifs": motifs, "versions": {}, "reports": {}}


RESONANCE_CSS = """
.badge { display: inline-block; margin-left: 6px; padding: 0 6px; border-radius: 8px; font-size: 11px;
         background: #5a2a2a; color: #ffd9d0; }
.card.flagged { border-color: #c0553f; }
.card .scores { color: var(--dim); font-size: 11px; margin-top: 3px; }
.rate { display: flex; gap: 4px; margin-top: 6px; }
.rate button { background: var(--bg); color: var(--text); border: 1px solid var(--line); border-radius: 5px;
               padding: 1px 7px; cursor: pointer; font: inherit; font-size: 12px; }
.rate button.on { background: var(--accent); color: #000; }
.motif { margin-bottom: 18px; }
.versions { color: var(--dim); font-size: 12px; margin: 0 0 10px 0; padding-left: 18px; }
h2 a.report { margin-left: 10px; font-size: 12px; color: var(--accent); }
.motif .thumbs { display: flex; gap: 6px; margin-top: 6px; }
.motif .thumbs img { width: 72px; height: 72px; object-fit: cover; border-radius: 6px; }
"""

RESONANCE_JS = """
const resonance = JSON.parse(document.getElementById("resonance-data").textContent);
const served = location.pathname.startsWith("/api/gallery/");
const flaggedIds = new Set(Object.values(resonance.stories).flatMap(s => s.flags.map(f => f.artifact)));
function decorate() {
  for (const node of document.querySelectorAll(".card")) {
    const item = items.find(i => i.id === node.dataset.id);
    const meta = item.meta || {}, scores = meta.scores || {}, caption = node.querySelector(".caption");
    if (flaggedIds.has(item.id)) {
      node.classList.add("flagged");
      caption.querySelector(".prompt").before(el("span", {class: "badge"}, "drift"));
    }
    const parts = [];
    if (scores.alignment !== undefined && scores.alignment !== null) parts.push("CLIP " + scores.alignment.toFixed(1));
    if (scores.character_consistency !== undefined && scores.character_consistency !== null)
      parts.push("consistency " + scores.character_consistency.toFixed(2));
    if (scores.aesthetic !== undefined && scores.aesthetic !== null) parts.push("aesthetic " + scores.aesthetic.toFixed(1));
    if (meta.best_of) parts.push(meta.best_of.kept ? "best of " + meta.best_of.of : "sibling");
    if (meta.rating) parts.push("\\u2605".repeat(meta.rating.value));
    if (parts.length) caption.appendChild(el("div", {class: "scores"}, parts.join(" \\u00b7 ")));
    if (served) {
      const row = el("div", {class: "rate", "data-id": item.id});
      for (let value = 1; value <= 5; value++) {
        const button = el("button", {type: "button", title: "rate " + value}, String(value));
        if (meta.rating && meta.rating.value === value) button.classList.add("on");
        button.addEventListener("click", async (event) => {
          event.stopPropagation();
          // same-origin credentials: with `serve --token` the session cookie of /api/gallery?token= signs it
          const response = await fetch("/api/artifacts/" + item.id + "/rating", {method: "POST",
            credentials: "same-origin", headers: {"Content-Type": "application/json"},
            body: JSON.stringify({value: value})});
          if (!response.ok) {
            button.title = "rating failed: " + response.status +
              (response.status === 401 ? " (sign in again: open /api/gallery?token=<token>)" : "");
            return;
          }
          meta.rating = await response.json();
          row.querySelectorAll("button").forEach((b, i) => b.classList.toggle("on", i + 1 === value));
        });
        row.appendChild(button);
      }
      caption.appendChild(row);
    }
  }
  for (const section of document.querySelectorAll("section[data-project]")) {
    const project = section.dataset.project, versions = (resonance.versions || {})[project] || [];
    const report = (resonance.reports || {})[project];
    if (report) section.querySelector("h2").appendChild(el("a", {class: "report", href: report}, "resonance report"));
    if (versions.length) {
      const list = el("ol", {class: "versions"});
      for (const v of versions) list.appendChild(el("li", {"data-version": v.number}, "v" + v.number + " \u00b7 " +
        v.created.slice(0, 16).replace("T", " ") + (v.minutes !== null ? " \u00b7 " + v.minutes + " min" : "") +
        " \u00b7 " + v.message + " (scenes changed: " + (v.changed.join(", ") || "none") + ")"));
      section.querySelector("h2").after(list);
    }
    const story = resonance.stories[project];
    if (!story) continue;
    const heading = section.querySelector("h2");
    if (story.style_consistency !== null && story.style_consistency !== undefined)
      heading.appendChild(el("small", {class: "style-consistency"}, "style consistency " +
        Math.round(100 * story.style_consistency) + "% (" + story.style_pairs + " scene pairs, threshold " +
        story.threshold + ")"));
    if (story.flags.length)
      heading.appendChild(el("small", {class: "flags"}, story.flags.length + " drift flag" +
        (story.flags.length === 1 ? "" : "s") + ": " + story.flags.map(f => "scene " + f.scene + " " +
        (f.character ? f.character : "alignment") + " " + f.value.toFixed(3) + " < " + f.threshold).join("; ")));
  }
  if (resonance.motifs.length) {
    const section = el("section", {id: "motifs"});
    section.appendChild(el("h2", {}, "Motifs"));
    for (const motif of resonance.motifs) {
      const box = el("div", {class: "motif"});
      box.appendChild(el("div", {}, motif.name + " \\u00b7 " + motif.size + " artifacts by " + motif.by + ": " +
                                    motif.phrases.join(", ")));
      const thumbs = el("div", {class: "thumbs"});
      for (const id of motif.members) {
        const member = items.find(i => i.id === id);
        if (member) thumbs.appendChild(el("img", {src: member.thumb, alt: member.prompt}));
      }
      box.appendChild(thumbs);
      section.appendChild(box);
    }
    main.appendChild(section);
  }
}
"""
