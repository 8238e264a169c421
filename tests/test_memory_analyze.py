"""`echo-os memory analyze` on 60 prompts in three clearly different themes, with the real MiniLM model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers import run_cli

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SEA = ["a lighthouse on a rocky cliff", "storm waves crashing against a harbour wall", "a fishing boat in heavy seas",
       "a lighthouse keeper climbing the spiral stairs", "gulls over a grey stormy sea", "a sailing ship in a gale",
       "a lighthouse beam cutting through sea fog", "a stone pier lashed by storm waves",
       "an old fisherman mending nets on the quay", "a shipwreck on the shore after the storm"]
CITY = ["a neon-lit cyberpunk street at night", "a hacker in a hooded jacket under neon signs",
        "flying cars between glowing skyscrapers", "a rain-soaked alley full of holographic adverts",
        "a cyborg street vendor selling noodles", "a futuristic megacity skyline in purple neon",
        "a robot walking through a crowded neon market", "a subway train in a dystopian future city",
        "a neon sign flickering above a cyberpunk bar", "a drone swarm over a glowing city at night"]
FOREST = ["a fox sleeping among ferns in an enchanted forest", "sunlight through ancient oak trees in a misty wood",
          "a deer drinking from a forest stream", "mushrooms glowing on a mossy log in the woods",
          "an owl perched on a branch in a dark forest", "a hidden fairy cottage in the woodland",
          "a rabbit in the bluebells under tall beech trees", "a moss-covered stone bridge in an old forest",
          "a woodland path through autumn trees", "a badger at the edge of the forest at dusk"]
FINISH = {"sea": ["dramatic maritime painting", "moody seascape"],
          "city": ["cinematic sci-fi concept art", "blade runner style"],
          "forest": ["storybook watercolor", "soft fantasy illustration"]}
THEMES = {"sea": SEA, "city": CITY, "forest": FOREST}


def theme_prompts() -> dict[str, list[str]]:
    """20 prompts per theme: every subject with each of the theme's two finishes."""
    return {theme: [f"{subject}, {finish}" for finish in FINISH[theme] for subject in subjects]
            for theme, subjects in THEMES.items()}


@pytest.fixture(scope="module")
def themed_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("themes")
    prompts = theme_prompts()
    lines = [p for theme in ("sea", "city", "forest") for p in prompts[theme]]
    interleaved = [lines[i] for offset in range(20) for i in (offset, 20 + offset, 40 + offset)]
    (home / "prompts.txt").write_text("\n".join(interleaved) + "\n", encoding="utf-8")
    code, _, err = run_cli("--home", str(home), "batch", "moodboard", "@" + str(home / "prompts.txt"),
                           "--engine", "draft", "--size", "64x64")
    assert code == 0, err
    return home


def test_analyze_finds_the_three_themes(themed_home):
    code, out, err = run_cli("--home", str(themed_home), "memory", "analyze", "--k", "auto", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["artifacts"] == 60
    [by_prompt] = [c for c in result["clusterings"] if c["by"] == "prompt"]
    assert by_prompt["embedder"] == "minilm" and by_prompt["k"] == 3 and by_prompt["k_auto"] is True
    assert "image motifs off" in " ".join(result["notes"])
    prompts = theme_prompts()
    found = []
    for motif in by_prompt["motifs"]:
        members = {_prompt(themed_home, i) for i in motif["members"]}
        [theme] = [t for t, ps in prompts.items() if members <= set(ps)]  # each motif is one theme, whole
        assert members == set(prompts[theme])
        found.append(theme)
        assert motif["phrases"][0][1] == 10 and motif["phrases"][0][0] in {f.lower() for f in FINISH[theme]}
        assert motif["settings"]["model"] == {"value": "draft", "share": 1.0}
        assert len(motif["over_time"]) == 3 and sum(p["members"] for p in motif["over_time"]) == 20
    assert sorted(found) == ["city", "forest", "sea"]


def test_analyze_is_reproducible_and_exports_styles(themed_home):
    first = json.loads(run_cli("--home", str(themed_home), "memory", "analyze", "--k", "3", "--json")[1])
    code, out, err = run_cli("--home", str(themed_home), "memory", "analyze", "--k", "3", "--export-styles")
    assert code == 0, err
    assert "by prompt (minilm): 3 motifs (k given" in out and "styles.toml: wrote motif-" in out
    again = json.loads(run_cli("--home", str(themed_home), "memory", "analyze", "--k", "3", "--json")[1])
    assert [m["members"] for m in first["clusterings"][0]["motifs"]] == \
           [m["members"] for m in again["clusterings"][0]["motifs"]]
    styles = tomllib.loads((themed_home / "styles.toml").read_text(encoding="utf-8"))["styles"]
    assert len(styles) == 3
    for entry in styles.values():
        assert entry["prompt"].startswith("{prompt}, ") and set(entry) == {"prompt", "negative"}
    # a second export keeps what is there
    code, _, err = run_cli("--home", str(themed_home), "memory", "analyze", "--k", "3", "--export-styles")
    assert code == 0 and "already has" in err
    assert len(tomllib.loads((themed_home / "styles.toml").read_text(encoding="utf-8"))["styles"]) == 3


def _prompt(home: Path, artifact_id: str) -> str:
    import sqlite3

    with sqlite3.connect(home / "artifacts" / "catalog.db") as db:
        return db.execute("SELECT prompt FROM artifacts WHERE id = ?", (artifact_id,)).fetchone()[0]


def test_ratings_make_a_motif_stronger_for_the_codebook():
    import numpy as np

    from echo_os.artifacts.catalog import CatalogRow
    from echo_os.resonance.analyze import describe_motifs

    def row(i: int, prompt: str, rating: int | None) -> CatalogRow:
        meta = {"rating": {"value": rating}} if rating else {}
        return CatalogRow(num=i, id=f"{i:064x}", created=f"2026-12-01T00:00:{i:02d}", project="p", model="m",
                          engine="sdxl", prompt=prompt, seed=i, width=8, height=8, scene=None, parent_id=None,
                          path=str(i), meta=meta)

    rows = [row(0, "sea, storm", 5), row(1, "sea, storm", None), row(2, "city, neon", 1), row(3, "city, neon", None)]
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    found = describe_motifs(rows, vectors, np.array([0, 0, 1, 1]), vectors[[0, 2]])
    motifs = {theme: m for m in found for theme in ("sea", "city") if [theme, 2] in m.phrases}
    assert motifs["sea"].mean_rating == 5 and motifs["sea"].strength == pytest.approx(2 * 1.5)
    assert motifs["city"].mean_rating == 1 and motifs["city"].strength == pytest.approx(2 * 0.5)
    assert motifs["sea"].best_rated[0]["rating"] == 5


def test_memory_stats_names_the_missing_scorers(themed_home):
    code, out, err = run_cli("--home", str(themed_home), "memory", "stats", "--json")
    assert code == 0, err
    scorers = json.loads(out)["scorers"]
    assert scorers["clip"]["model"] is None and "no CLIP model on this machine" in scorers["clip"]["missing"]
    assert scorers["aesthetic"]["model"] is None and 'type = "scorer"' in scorers["aesthetic"]["missing"]


def _motif(number: int, name: str, size: int, phrases: list[list], strength: float):
    from echo_os.resonance.analyze import Motif

    return Motif(motif=number, name=name, size=size, prompt=phrases[0][0] if phrases else name, negative="",
                 phrases=phrases, settings={}, best_rated=[], best_scored=[], over_time=[],
                 members=[f"{number:064x}"] * size, cohesion=1.0, strength=strength)


def test_export_styles_writes_only_style_like_motifs_with_enough_members_and_says_what_it_skipped(tmp_path):
    """Issue 24, bug 8: a one-image motif is not a style `{prompt}`; a subject motif is not a style
    `{prompt}, un phare`. Only motifs with enough members and phrases about light, palette, lens or medium."""
    from echo_os.resonance.analyze import export_styles
    from echo_os.settings import Settings

    settings = Settings(home=tmp_path)
    motifs = [_motif(1, "alone", 1, [["a cat on a sofa", 1]], 9.0),
              _motif(2, "un-phare", 5, [["un phare", 5], ["la mer", 3]], 8.0),
              _motif(3, "moody-sea", 6, [["un phare", 6], ["moody seascape", 4], ["35mm lens", 3],
                                          ["golden hour light", 2]], 7.0)]
    export = export_styles(settings, motifs)
    assert export.written == ["motif-moody-sea"]
    assert set(export.skipped) == {"motif-alone", "motif-un-phare"}
    assert "1 artifact" in export.skipped["motif-alone"] and "light, palette, lens or medium" in export.skipped["motif-un-phare"]
    styles = tomllib.loads((tmp_path / "styles.toml").read_text(encoding="utf-8"))["styles"]
    assert styles == {"motif-moody-sea": {"prompt": "{prompt}, moody seascape, 35mm lens, golden hour light",
                                          "negative": ""}}
