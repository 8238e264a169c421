"""`echo-os resonance PROJECT` (and GET /api/projects/{p}/resonance): is the project getting better?

One report from what is already recorded (meta.json scores and ratings through the catalog, the newest
story.json, the versions of `echo-os commit`, the records of `echo-os evolve`, motifs.json of
`memory analyze`):
- over time: per day, images made and the mean of each score over those that have it, and ratings
- per version: its message, minutes and the mean scores of its kept images
- style consistency of the current story against the threshold, and the target share (the design's
  "style consistency > 80%": STYLE_TARGET of scene pairs at or above the style threshold)
- drift flags of the current story, the ratings' spread, best-of gains (per scene: the kept image's
  objective minus the mean of its candidates'), evolve gains (per run), motifs with project members

As text (lines), JSON (as_dict) and an HTML page with inline SVG charts (no plotting library, no CDN:
the page opens from disk) at artifacts/gallery/resonance-<slug>.html, which the gallery links to.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from echo_os.errors import NotFoundError

if TYPE_CHECKING:
    from echo_os.settings import Settings

STYLE_TARGET = 0.80  # the design's target: style consistency above 80%
SCORE_KEYS = ("alignment", "character_consistency", "style", "aesthetic")


@dataclass
class DayPoint:
    day: str
    images: int
    means: dict[str, float | None]
    rated: int
    mean_rating: float | None


@dataclass
class VersionPoint:
    number: int
    created: str
    message: str
    minutes: float | None
    scores: dict[str, float | None]
    style_consistency: float | None


@dataclass
class EvolvePoint:
    run_id: str
    start: str
    rounds: int
    start_score: float
    best_score: float
    gain: float
    gain_pct: float | None
    round_gains: list[float]


@dataclass
class ResonanceReport:
    project: str
    images: int
    over_time: list[DayPoint] = field(default_factory=list)
    versions: list[VersionPoint] = field(default_factory=list)
    style_consistency: float | None = None
    style_threshold: float | None = None
    style_pairs: int = 0
    style_target: float = STYLE_TARGET
    drift_flags: list[dict[str, Any]] = field(default_factory=list)
    ratings: dict[str, int] = field(default_factory=lambda: {str(v): 0 for v in range(1, 6)})
    best_of: list[dict[str, Any]] = field(default_factory=list)  # scene, kept, of, gain
    evolve: list[EvolvePoint] = field(default_factory=list)
    motifs: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def style_target_met(self) -> bool | None:
        return None if self.style_consistency is None else self.style_consistency >= self.style_target

    def lines(self) -> list[str]:
        out = [f"{self.project}: {self.images} image{'s' if self.images != 1 else ''}"]
        for point in self.over_time:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in point.means.items() if v is not None) or "no scores"
            rating = f", rating {point.mean_rating:.2f} ({point.rated})" if point.mean_rating is not None else ""
            out.append(f"  {point.day}: {point.images} images, {shown}{rating}")
        if self.style_consistency is None:
            out.append("style consistency: not measured (score the story: echo-os batch ... --best-of or echo-os score)")
        else:
            verdict = "met" if self.style_target_met else "not met"
            out.append(f"style consistency: {100 * self.style_consistency:.0f}% of {self.style_pairs} scene pairs at or "
                       f"above {self.style_threshold} (target {100 * self.style_target:.0f}%: {verdict})")
        out.append(f"drift flags: {len(self.drift_flags)}" + "".join(
            f"\n  scene {f.get('scene')}: {f.get('character') or 'alignment'} {f.get('value')} < {f.get('threshold')}"
            for f in self.drift_flags))
        rated = sum(self.ratings.values())
        out.append(f"ratings: {rated}" + (" (" + ", ".join(f"{k}: {v}" for k, v in self.ratings.items()) + ")"
                                          if rated else ""))
        for version in self.versions:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in version.scores.items() if v is not None) or "no scores"
            out.append(f"v{version.number} {version.created[:16]} {version.message}: {shown}")
        for entry in self.best_of:
            out.append(f"best-of scene {entry['scene']}: kept 1 of {entry['of']}, {entry['gain']:+.4f} over the mean")
        for run in self.evolve:
            pct = "n/a" if run.gain_pct is None else f"{run.gain_pct:+.1f}%"
            out.append(f"evolve {run.run_id[:8]}: {run.start_score:.4f} -> {run.best_score:.4f} ({run.gain:+.4f}, {pct}) "
                       f"in {run.rounds} rounds")
        for motif in self.motifs:
            out.append(f"motif {motif['name']}: {', '.join(motif['phrases'])} ({motif['members']} of this project)")
        return out


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 6) if values else None


def build_report(settings: "Settings", project: str) -> ResonanceReport:
    """The project's report; NotFoundError when it has no images."""
    from echo_os.artifacts.store import open_catalog
    from echo_os.resonance.story import load_story_json

    with open_catalog(settings) as catalog:
        rows = [row for row in catalog.query(project=project, newest_first=False) if row.meta.get("kind") != "video"]
    if not rows:
        raise NotFoundError(f"project {project!r} has no images in this workspace (see `echo-os artifacts list`).")
    report = ResonanceReport(project=rows[-1].project, images=len(rows))
    ids = {row.id for row in rows}
    by_day: dict[str, list] = {}
    for row in rows:
        by_day.setdefault(row.created[:10], []).append(row)
        rating = (row.meta.get("rating") or {}).get("value")
        if isinstance(rating, int) and str(rating) in report.ratings:
            report.ratings[str(rating)] += 1
    for day, members in sorted(by_day.items()):
        means = {key: _mean([float(v) for r in members
                             if isinstance(v := (r.meta.get("scores") or {}).get(key), (int, float))])
                 for key in SCORE_KEYS}
        ratings = [r.meta["rating"]["value"] for r in members if isinstance((r.meta.get("rating") or {}).get("value"), int)]
        report.over_time.append(DayPoint(day=day, images=len(members), means=means, rated=len(ratings),
                                         mean_rating=_mean([float(v) for v in ratings])))
    story = load_story_json(settings, report.project) or {}
    reflection = story.get("resonance") or {}
    if reflection.get("style_consistency") is not None:
        report.style_consistency = reflection["style_consistency"]
        report.style_pairs = reflection.get("style_pairs") or 0
        report.style_threshold = (reflection.get("thresholds") or {}).get("style")
    report.drift_flags = list(reflection.get("flags") or [])
    report.best_of = _best_of_gains(rows)
    report.versions = _versions(settings, report.project)
    report.evolve = _evolve_runs(settings, ids)
    report.motifs = _motifs(settings, ids)
    return report


def _best_of_gains(rows: list) -> list[dict[str, Any]]:
    by_id = {row.id: row for row in rows}
    out = []
    for row in rows:
        best_of = row.meta.get("best_of") or {}
        if not best_of.get("kept"):
            continue
        recorded = [(by_id[i].meta.get("scores") or {}).get("objective") for i in [row.id, *best_of.get("siblings", [])]
                    if i in by_id]
        values = [float(v) for v in recorded if isinstance(v, (int, float))]
        own = (row.meta.get("scores") or {}).get("objective")
        if values and isinstance(own, (int, float)):
            out.append({"scene": row.scene, "kept": row.id, "of": best_of.get("of"),
                        "gain": round(float(own) - sum(values) / len(values), 6)})
    return sorted(out, key=lambda e: (e["scene"] is None, e["scene"] or 0))


def _versions(settings: "Settings", project: str) -> list[VersionPoint]:
    from echo_os.reflect.versions import Version, versions_dir

    out = []
    for path in sorted(versions_dir(settings, project).glob("v*.json")):
        try:
            version = Version.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, KeyError):
            continue
        reflection = version.story.get("resonance") or {}
        out.append(VersionPoint(number=version.number, created=version.created, message=version.message,
                                minutes=version.minutes, scores=version.scores,
                                style_consistency=reflection.get("style_consistency")))
    return out


def _evolve_runs(settings: "Settings", ids: set[str]) -> list[EvolvePoint]:
    from echo_os.reflect.evolve import EVOLVE_DIR

    out = []
    for path in sorted((settings.artifacts_dir / EVOLVE_DIR).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if data.get("start") in ids and data.get("rounds"):
            out.append(EvolvePoint(run_id=data["run_id"], start=data["start"], rounds=len(data["rounds"]),
                                   start_score=data["start_score"], best_score=data["best_score"], gain=data["gain"],
                                   gain_pct=data.get("gain_pct"), round_gains=[r["gain"] for r in data["rounds"]]))
    return out


def _motifs(settings: "Settings", ids: set[str]) -> list[dict[str, Any]]:
    from echo_os.resonance.analyze import MOTIFS_JSON

    path = settings.memory_dir / MOTIFS_JSON
    if not path.is_file():
        return []
    try:
        analysis = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    out = []
    for clustering in analysis.get("clusterings", []):
        for motif in clustering.get("motifs", []):
            members = [m for m in motif.get("members", []) if m in ids]
            if members:
                out.append({"by": clustering.get("by"), "name": motif.get("name"), "members": len(members),
                            "phrases": [p for p, _ in motif.get("phrases", [])][:5]})
    return out


# ---- the page -----------------------------------------------------------------------------------------

COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2")


def svg_line_chart(title: str, labels: list[str], series: dict[str, list[float | None]], *, width: int = 560,
                   height: int = 220, y_max: float | None = None) -> str:
    """Lines over `labels` (one per series; None leaves a gap), a y axis from 0, a legend."""
    left, right, top, bottom = 44, 12, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for line in series.values() for v in line if v is not None]
    top_value = y_max or (max(values) * 1.1 if values and max(values) > 0 else 1.0)
    step = plot_w / max(1, len(labels) - 1)
    def x(i):
        return left + (i * step if len(labels) > 1 else plot_w / 2)
    def y(v):
        return top + plot_h - plot_h * (v / top_value)
    parts = [f'<svg class="chart" role="img" aria-label="{html.escape(title)}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="{left}" y="16" class="title">{html.escape(title)}</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" class="axis"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" class="axis"/>',
             f'<text x="{left - 6}" y="{top + 4}" class="tick" text-anchor="end">{top_value:.2g}</text>',
             f'<text x="{left - 6}" y="{top + plot_h}" class="tick" text-anchor="end">0</text>']
    for i, label in enumerate(labels):
        parts.append(f'<text x="{x(i):.1f}" y="{top + plot_h + 14}" class="tick" text-anchor="middle">'
                     f'{html.escape(label)}</text>')
    for index, (name, line) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        points = [(x(i), y(v)) for i, v in enumerate(line) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2" '
                         f'data-series="{html.escape(name)}"/>')
        for px, py in points:
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"/>')
        parts.append(f'<rect x="{left + 110 * index}" y="{height - 14}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{left + 14 + 110 * index}" y="{height - 5}" class="tick">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_bar_chart(title: str, labels: list[str], values: list[float], *, width: int = 560, height: int = 200,
                  threshold: float | None = None, threshold_label: str = "", y_max: float | None = None) -> str:
    """Bars from 0 (negative values below the axis), with an optional dashed threshold line."""
    left, right, top, bottom = 44, 12, 28, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    high = max([*values, threshold or 0.0, 0.0]) or 1.0
    low = min([*values, 0.0])
    high = y_max or high * 1.1
    span = high - low or 1.0
    def y(v):
        return top + plot_h * (high - v) / span
    slot = plot_w / max(1, len(values))
    parts = [f'<svg class="chart" role="img" aria-label="{html.escape(title)}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="{left}" y="16" class="title">{html.escape(title)}</text>',
             f'<line x1="{left}" y1="{y(0):.1f}" x2="{left + plot_w}" y2="{y(0):.1f}" class="axis"/>']
    for i, (label, value) in enumerate(zip(labels, values)):
        x0 = left + i * slot + slot * 0.15
        y_top, y_bottom = (y(value), y(0)) if value >= 0 else (y(0), y(value))
        parts.append(f'<rect class="bar" x="{x0:.1f}" y="{y_top:.1f}" width="{slot * 0.7:.1f}" '
                     f'height="{max(0.5, y_bottom - y_top):.1f}" fill="{COLOURS[0] if value >= 0 else COLOURS[3]}">'
                     f'<title>{html.escape(label)}: {value:g}</title></rect>')
        parts.append(f'<text x="{x0 + slot * 0.35:.1f}" y="{top + plot_h + 14}" class="tick" text-anchor="middle">'
                     f'{html.escape(label)}</text>')
        parts.append(f'<text x="{x0 + slot * 0.35:.1f}" y="{y_top - 3:.1f}" class="tick" text-anchor="middle">'
                     f'{value:.3g}</text>')
    if threshold is not None:
        parts.append(f'<line x1="{left}" y1="{y(threshold):.1f}" x2="{left + plot_w}" y2="{y(threshold):.1f}" '
                     f'class="threshold"/><text x="{left + plot_w}" y="{y(threshold) - 4:.1f}" class="tick" '
                     f'text-anchor="end">{html.escape(threshold_label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


PAGE_CSS = """
body { font: 14px system-ui, sans-serif; background: #14161a; color: #e6e6e6; margin: 24px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
.charts { display: flex; flex-wrap: wrap; gap: 18px; }
svg.chart { background: #1d2026; border-radius: 8px; }
svg .title { fill: #e6e6e6; font-size: 13px; } svg .tick { fill: #9aa0a6; font-size: 10px; }
svg .axis { stroke: #555; } svg .threshold { stroke: #e15759; stroke-dasharray: 5 4; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; border-bottom: 1px solid #333; text-align: left; }
.met { color: #59a14f; } .missed { color: #e15759; } a { color: #76b7b2; }
"""


def render_page(report: ResonanceReport) -> str:
    """The report as one self-contained HTML page (inline SVG, inline CSS, the data as JSON for scripts)."""
    esc = html.escape
    days = [p.day[5:] for p in report.over_time]
    charts = [svg_line_chart("mean scores per day", days,
                             {"alignment/100": [None if p.means["alignment"] is None else p.means["alignment"] / 100
                                                for p in report.over_time],
                              "character": [p.means["character_consistency"] for p in report.over_time],
                              "style": [p.means["style"] for p in report.over_time],
                              "rating/5": [None if p.mean_rating is None else p.mean_rating / 5 for p in report.over_time]},
                             y_max=1.0)]
    if report.style_consistency is not None:
        charts.append(svg_bar_chart("style consistency (share of scene pairs)", ["now"], [report.style_consistency],
                                    threshold=report.style_target, threshold_label=f"target {100 * report.style_target:.0f}%",
                                    y_max=1.0, width=260))
    if report.versions:
        charts.append(svg_line_chart("per version", [f"v{v.number}" for v in report.versions],
                                     {"alignment/100": [None if (a := v.scores.get("alignment")) is None else a / 100
                                                        for v in report.versions],
                                      "style": [v.scores.get("style") for v in report.versions],
                                      "consistency": [v.style_consistency for v in report.versions]}, y_max=1.0))
    charts.append(svg_bar_chart("ratings", list(report.ratings), [float(v) for v in report.ratings.values()], width=300))
    if report.evolve:
        charts.append(svg_bar_chart("evolve gain per round", [f"{run.run_id[:4]} r{i + 1}" for run in report.evolve
                                                             for i in range(len(run.round_gains))],
                                    [g for run in report.evolve for g in run.round_gains]))
    if report.best_of:
        charts.append(svg_bar_chart("best-of gain per scene", [f"scene {e['scene']}" for e in report.best_of],
                                    [e["gain"] for e in report.best_of]))
    if report.style_consistency is None:
        verdict = "<p>Style consistency: not measured yet (render the story with scoring on).</p>"
    else:
        cls = "met" if report.style_target_met else "missed"
        verdict = (f'<p>Style consistency <b class="{cls}">{100 * report.style_consistency:.0f}%</b> of '
                   f'{report.style_pairs} scene pairs at or above {report.style_threshold} '
                   f'(target {100 * report.style_target:.0f}%).</p>')
    rows = "".join(f"<tr><td>v{v.number}</td><td>{esc(v.created[:16])}</td><td>{esc(v.message)}</td>"
                   f"<td>{'' if v.minutes is None else f'{v.minutes:g}'}</td></tr>" for v in report.versions)
    versions = (f"<h2>Versions</h2><table><tr><th>version</th><th>when</th><th>message</th><th>minutes</th></tr>"
                f"{rows}</table>") if rows else ""
    flags = "".join(f"<li>scene {esc(str(f.get('scene')))}: {esc(str(f.get('character') or 'alignment'))} "
                    f"{esc(str(f.get('value')))} &lt; {esc(str(f.get('threshold')))}</li>" for f in report.drift_flags)
    evolve = "".join(f"<li>{esc(run.run_id[:8])}: {run.start_score:.4f} &rarr; {run.best_score:.4f} "
                     f"({run.gain:+.4f}{'' if run.gain_pct is None else f', {run.gain_pct:+.1f}%'}) in {run.rounds} rounds</li>"
                     for run in report.evolve)
    motifs = "".join(f"<li>{esc(str(m['name']))}: {esc(', '.join(m['phrases']))}</li>" for m in report.motifs)
    data = json.dumps(report.as_dict(), ensure_ascii=False).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>resonance: {esc(report.project)}</title>
<style>{PAGE_CSS}</style></head>
<body data-charts="{len(charts)}" data-images="{report.images}">
<h1>Resonance: {esc(report.project)}</h1>
<p>{report.images} images &middot; <a href="index.html">gallery</a></p>
{verdict}
<div class="charts">{''.join(charts)}</div>
{versions}
<h2>Drift flags</h2>{f'<ul>{flags}</ul>' if flags else '<p>none</p>'}
<h2>Evolve runs</h2>{f'<ul>{evolve}</ul>' if evolve else '<p>none</p>'}
<h2>Motifs</h2>{f'<ul>{motifs}</ul>' if motifs else '<p>none (run echo-os memory analyze)</p>'}
<script type="application/json" id="report-data">{data}</script>
</body></html>
"""


def write_page(settings: "Settings", report: ResonanceReport) -> Path:
    """artifacts/gallery/resonance-<slug>.html (beside the gallery pages, which link to it)."""
    from echo_os.artifacts.catalog import project_slug
    from echo_os.atomic import write_atomically

    path = settings.artifacts_dir / "gallery" / f"resonance-{project_slug(report.project)}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, render_page(report).encode("utf-8"))
    return path
