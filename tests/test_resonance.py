"""Resonance (issue 16): scores equal a direct CLIP computation, drift flags at the threshold, best-of-N on
the tiny pipeline, ratings, bad input. Tiny random CLIP and a tiny aesthetic head built here."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from echo_os.settings import Settings
from tests.helpers import run_cli


def save_tiny_scorer_head(path: Path, input_dim: int = 16, seed: int = 3) -> Path:
    """A LAION-shaped aesthetic head (Linear layers, no activations), tiny: 16 -> 8 -> 1."""
    from safetensors.numpy import save_file

    rng = np.random.RandomState(seed)
    save_file({"layers.0.weight": rng.randn(8, input_dim).astype(np.float32),
               "layers.0.bias": rng.randn(8).astype(np.float32),
               "layers.2.weight": rng.randn(1, 8).astype(np.float32),
               "layers.2.bias": rng.randn(1).astype(np.float32)}, str(path))
    return path


@pytest.fixture(scope="module")
def scorer_ws(tmp_path_factory, tiny_sdxl_dir) -> Settings:
    """A workspace with the tiny SDXL, a tiny CLIP and a tiny aesthetic head."""
    from tests.tiny_models import save_tiny_clip

    home = tmp_path_factory.mktemp("resonance-ws")
    save_tiny_clip(home / "tiny-clip")
    save_tiny_scorer_head(home / "tiny-head.safetensors")
    (home / "models.toml").write_text(
        f'[models.tiny]\ntype = "sdxl"\npath = "{tiny_sdxl_dir.as_posix()}"\n\n'
        '[models.tiny-clip]\ntype = "clip"\npath = "tiny-clip"\n\n'
        '[models.tiny-head]\ntype = "scorer"\nfile = "tiny-head.safetensors"\n', encoding="utf-8")
    return Settings(home=home)


def _noise(seed: int, size: int = 40):
    from PIL import Image

    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, size=(size, size, 3), dtype=np.uint8))


def _direct_clip(folder: Path, images, texts):
    """Image and text embeddings straight from transformers, normalised here."""
    import torch
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    processor = CLIPImageProcessor.from_pretrained(str(folder))
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output).numpy()
        tokens = tokenizer(texts, padding=True, return_tensors="pt")
        text = model.text_projection(model.text_model(**tokens).pooler_output).numpy()
    normalise = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)  # noqa: E731 - a one-line helper local to this test
    return normalise(image.astype(np.float64)), normalise(text.astype(np.float64))


def test_scores_equal_a_direct_computation(scorer_ws):
    import torch
    from safetensors.torch import load_file

    from echo_os.resonance.scorers import load_scorers
    from echo_os.resonance.scores import ScoreItem, score_items

    scorers = load_scorers(scorer_ws, device="cpu")
    assert scorers.clip_name == "tiny-clip" and scorers.aesthetic.name == "tiny-head" and scorers.missing == {}
    images = [_noise(i) for i in range(4)]
    prompts = ["a keeper on a quay", "a gull", "a keeper at night", "an empty quay"]
    items = [ScoreItem("a", images[0], prompts[0], scene=1, characters=("keeper",)),
             ScoreItem("b", images[1], prompts[1], scene=2, characters=("gull",)),
             ScoreItem("c", images[2], prompts[2], scene=3, characters=("keeper",)),
             ScoreItem("d", images[3], prompts[3], scene=3)]
    reference = _noise(99)
    scores, _ = score_items(scorers, items, {"keeper": [reference]})

    image, text = _direct_clip(scorer_ws.home / "tiny-clip", images + [reference], prompts)
    head = load_file(str(scorer_ws.home / "tiny-head.safetensors"))
    with torch.no_grad():
        hidden = torch.from_numpy(image[:4]).float() @ head["layers.0.weight"].T + head["layers.0.bias"]
        aesthetic = (hidden @ head["layers.2.weight"].T + head["layers.2.bias"])[:, 0].numpy()
    for i, key in enumerate("abcd"):
        assert scores[key].alignment == pytest.approx(max(0.0, 100 * image[i] @ text[i]), abs=1e-3)
        assert scores[key].aesthetic == pytest.approx(float(aesthetic[i]), abs=1e-3)
    # style: mean cosine to every image of the other scenes
    assert scores["a"].style == pytest.approx(np.mean([image[0] @ image[j] for j in (1, 2, 3)]), abs=1e-5)
    assert scores["c"].style == pytest.approx(np.mean([image[2] @ image[j] for j in (0, 1)]), abs=1e-5)
    # keeper: to its reference and to its other scene; its score is the mean of the two, the image's the lowest
    keeper = scores["a"].characters["keeper"]
    assert keeper.reference == pytest.approx(image[0] @ image[4], abs=1e-5)
    assert keeper.scenes == pytest.approx(image[0] @ image[2], abs=1e-5) and keeper.against_scenes == [3]
    assert keeper.score == pytest.approx((keeper.reference + keeper.scenes) / 2, abs=1e-5)
    assert scores["a"].character_consistency == keeper.score
    gull = scores["b"].characters["gull"]
    assert gull.reference is None and gull.scenes is None and scores["b"].character_consistency is None
    assert scores["d"].characters == {}


def test_clip_score_is_floored_at_zero():
    from echo_os.resonance.scores import clip_score

    a = np.array([1.0, 0.0])
    assert clip_score(a, np.array([-1.0, 0.0])) == 0.0
    assert clip_score(a, np.array([0.6, 0.8])) == pytest.approx(60.0)


def test_drift_flags_fire_below_the_threshold_and_not_at_it():
    from echo_os.resonance.scores import ArtifactScores, CharacterScore
    from echo_os.resonance.story import Thresholds, drift_flags

    scores = ArtifactScores(alignment=25.0, characters={
        "keeper": CharacterScore(reference=0.6, scenes=0.8, score=0.7, against_scenes=[2, 3])})
    at = Thresholds(character=0.7, alignment=0.25)
    assert drift_flags(4, "f" * 64, scores, at) == []
    above = Thresholds(character=0.7000001, alignment=0.2500001)
    flags = drift_flags(4, "f" * 64, scores, above, prompt="a keeper", reference_paths={"keeper": ["refs/k.png"]})
    assert [(f.kind, f.character) for f in flags] == [("alignment", None), ("character", "keeper")]
    assert flags[0].value == pytest.approx(0.25) and flags[0].against == {"prompt": "a keeper"}
    assert flags[1].value == 0.7 and flags[1].against["references"] == ["refs/k.png"]
    assert flags[1].against["scenes"] == [2, 3]


def test_style_consistency_counts_pairs_at_or_above_the_threshold():
    from echo_os.resonance.scores import style_consistency

    vectors = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    # pairs across scenes: (0,1)=0.8, (0,2)=0.0, (1,2)=0.6; (0,1) share scene 1 in the second call
    assert style_consistency(vectors, [1, 2, 3], 0.6) == (pytest.approx(2 / 3, abs=1e-6), 2, 3)
    assert style_consistency(vectors, [1, 1, 3], 0.6) == (0.5, 1, 2)


def test_objective_weights_and_parsing():
    from echo_os.errors import UsageError
    from echo_os.resonance.scores import ArtifactScores
    from echo_os.resonance.story import parse_objective

    scores = ArtifactScores(alignment=30.0, style=0.8, aesthetic=6.0, character_consistency=0.9)
    objective = parse_objective("alignment=2,rating=0.5")
    assert objective.value(scores, rating=5) == pytest.approx(2 * 0.3 + 0.9 + 0.5 * 0.8 + 0.5 * 0.6 + 0.5 * 1.0)
    with pytest.raises(UsageError, match="unknown term 'beauty'"):
        parse_objective("beauty=1")


def test_a_scorer_entry_is_one_local_file(tmp_path):
    from echo_os.errors import UsageError
    from echo_os.models.registry import parse_models_document

    with pytest.raises(UsageError, match="a scorer entry is one local file"):
        parse_models_document({"models": {"head": {"type": "scorer", "hf": "laion/aesthetic"}}}, tmp_path / "m.toml")
    entry = parse_models_document({"models": {"head": {"type": "scorer", "file": "h.safetensors"}}},
                                  tmp_path / "m.toml")["head"]
    assert entry.kind == "file" and entry.source == str(tmp_path / "h.safetensors")


def test_a_head_that_does_not_fit_the_clip_is_refused(scorer_ws, tmp_path):
    from echo_os.errors import ModelError
    from echo_os.resonance.scorers import load_scorers

    home = tmp_path / "ws"
    home.mkdir()
    save_tiny_scorer_head(home / "wide.safetensors", input_dim=24)
    (home / "models.toml").write_text(
        f'[models.tiny-clip]\ntype = "clip"\npath = "{(scorer_ws.home / "tiny-clip").as_posix()}"\n\n'
        '[models.wide]\ntype = "scorer"\nfile = "wide.safetensors"\n', encoding="utf-8")
    with pytest.raises(ModelError, match="takes 24-d embeddings but CLIP tiny-clip gives 16-d"):
        load_scorers(Settings(home=home), device="cpu")


BIBLE = """---
title: Quay Light
model: tiny
defaults:
  steps: 2
  cfg: 5.0
  size: 64x64
  scheduler: euler
characters:
  keeper:
    name: Elias Marr
    description: an old keeper in a navy peacoat
    seed: 1868
locations:
  quay: a stone quay
---
"""

CSV = """scene,slug,description,characters,location
1,morning,he checks the lamp,keeper,quay
2,squall,he watches the squall,keeper,quay
3,night,the quay at night,,quay
"""


@pytest.fixture(scope="module")
def story_csv(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("quay")
    (folder / "STORY_BIBLE.md").write_text(BIBLE, encoding="utf-8")
    (folder / "story.csv").write_text(CSV, encoding="utf-8")
    return folder / "story.csv"


def _batch(settings: Settings, csv: Path, *extra: str) -> dict:
    code, out, err = run_cli("--home", str(settings.home), "batch", "Quay Light", str(csv), "--ip-adapter", "none",
                             "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def _meta(settings: Settings, artifact_id: str) -> dict:
    with sqlite3.connect(settings.catalog_path) as db:
        path = db.execute("SELECT path FROM artifacts WHERE id = ?", (artifact_id,)).fetchone()[0]
    return json.loads((settings.artifacts_dir / path / "meta.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def best_of_run(scorer_ws, story_csv):
    return _batch(scorer_ws, story_csv, "--best-of", "2")


def test_best_of_keeps_the_highest_objective_candidate(best_of_run, scorer_ws):
    resonance = best_of_run["resonance"]
    assert resonance["clip"] == "tiny-clip" and resonance["aesthetic"] == "tiny-head" and resonance["best_of"] == 2
    assert best_of_run["rendered"] == 6
    story = json.loads(Path(best_of_run["story_json"]).read_text(encoding="utf-8"))
    assert story["resonance"]["kept"] == resonance["kept"]
    for entry in story["scenes"]:
        kept, siblings = entry["artifacts"], entry["siblings"]
        assert len(kept) == 1 and len(siblings) == 1
        candidates = [_meta(scorer_ws, i) for i in kept + siblings]
        seeds = sorted(m["seed"] for m in candidates)
        assert seeds[1] == seeds[0] + 1 and entry["seeds_tried"] == seeds
        values = [m["scores"]["objective"] for m in candidates]
        assert values[0] >= values[1]  # the kept one has the highest objective
        assert candidates[0]["best_of"]["kept"] is True and candidates[1]["best_of"]["kept"] is False
        assert candidates[0]["best_of"]["siblings"] == siblings
        # the objective is the stated weighted sum of the stored scores
        s = candidates[0]["scores"]
        expected = s["alignment"] / 100 + 0.5 * s["style"] + 0.5 * s["aesthetic"] / 10
        if s["character_consistency"] is not None:
            expected += s["character_consistency"]
        assert values[0] == pytest.approx(expected, abs=1e-5)
    # the catalog's generated columns follow meta.json
    with sqlite3.connect(scorer_ws.catalog_path) as db:
        rows = db.execute("SELECT id, alignment, style, aesthetic FROM artifacts WHERE project = 'Quay Light'").fetchall()
    assert len(rows) == 6 and all(r[1] is not None and r[2] is not None and r[3] is not None for r in rows)
    assert 0.0 <= resonance["style_consistency"] <= 1.0 and resonance["style_pairs"] == 3


def test_best_of_is_reproducible(best_of_run, scorer_ws, story_csv):
    again = _batch(scorer_ws, story_csv, "--best-of", "2")
    assert again["rendered"] == 0 and again["resumed"] == 6
    assert again["resonance"]["kept"] == best_of_run["resonance"]["kept"]


def test_reroll_flagged_renders_only_flagged_scenes_from_new_seeds(best_of_run, scorer_ws, story_csv):
    # a threshold of 1.0 flags every scene whose alignment is below CLIP score 100: all of them
    flagged = _batch(scorer_ws, story_csv, "--best-of", "2", "--alignment-threshold", "1.0")
    assert flagged["resonance"]["flagged_scenes"] == [1, 2, 3] and flagged["rendered"] == 0
    before = {e["scene"]: e["seeds_tried"] for e in json.loads(Path(flagged["story_json"]).read_text())["scenes"]}
    code, out, err = run_cli("--home", str(scorer_ws.home), "batch", "Quay Light", str(story_csv), "--ip-adapter",
                             "none", "--json", "--reroll-flagged")
    assert code == 0, err
    result = json.loads(out)
    assert "reroll: scenes 1, 2, 3" in err and result["rendered"] == 3
    for row in result["artifacts"]:
        assert row["seed"] == max(before[row["scene"]]) + 1


def test_score_and_rate_commands(scorer_ws, best_of_run):
    kept = best_of_run["resonance"]["kept"]["1"][0]
    code, out, err = run_cli("--home", str(scorer_ws.home), "score", kept[:16], "--json")
    assert code == 0, err
    assert "scorer clip      on: tiny-clip" in err and "scorer aesthetic on: tiny-head" in err
    scored = json.loads(out)["scored"][kept]
    assert scored["alignment"] == _meta(scorer_ws, kept)["scores"]["alignment"]
    code, out, err = run_cli("--home", str(scorer_ws.home), "rate", kept[:12], "4", "--note", "good lamp")
    assert code == 0 and out.startswith(f"{kept[:12]} rated 4"), err
    assert _meta(scorer_ws, kept)["rating"]["value"] == 4 and _meta(scorer_ws, kept)["rating"]["note"] == "good lamp"
    with sqlite3.connect(scorer_ws.catalog_path) as db:
        assert db.execute("SELECT rating FROM artifacts WHERE id = ?", (kept,)).fetchone()[0] == 4


def test_a_rating_enters_the_objective():
    from echo_os.resonance.scores import ArtifactScores
    from echo_os.resonance.story import Objective

    scores = ArtifactScores(alignment=20.0)
    assert Objective().value(scores, rating=5) - Objective().value(scores, rating=1) == pytest.approx(2.0)


@pytest.mark.parametrize("args, message", [
    (("rate", "0123456789abcdef", "6"), "6 is not in the range 1<=x<=5"),
    (("rate", "0123456789abcdef", "3"), "no artifact with id '0123456789abcdef'"),
    (("score", "0123456789abcdef"), "no artifact with id '0123456789abcdef'"),
    (("batch", "P", "story.csv", "--style-threshold", "1.5"), "'--style-threshold': 1.5 is not in the range"),
    (("batch", "P", "story.csv", "--alignment-threshold", "-0.1"), "'--alignment-threshold'"),
    (("batch", "P", "story.csv", "--objective", "beauty=1"), "--objective: unknown term 'beauty'"),
    (("memory", "analyze", "--k", "two"), "--k must be a whole number or 'auto'"),
])
def test_bad_input_exits_2_naming_it(workspace, args, message, tmp_path):
    (tmp_path / "story.csv").write_text(CSV, encoding="utf-8")
    argv = [str(tmp_path / a) if a == "story.csv" else a for a in args]
    code, out, err = run_cli("--home", str(workspace.home), *argv)
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (workspace.home / "styles.toml").exists()


def test_a_threshold_outside_0_1_in_echo_os_toml_exits_2(workspace, tmp_path):
    (tmp_path / "story.csv").write_text(CSV, encoding="utf-8")
    (tmp_path / "STORY_BIBLE.md").write_text(BIBLE, encoding="utf-8")
    (workspace.home / "echo-os.toml").write_text('[resonance.projects."P"]\ncharacter = 1.2\n', encoding="utf-8")
    code, _, err = run_cli("--home", str(workspace.home), "batch", "P", str(tmp_path / "story.csv"))
    assert code == 2 and 'character must be a number from 0 to 1, got 1.2' in err and len(err.strip().splitlines()) == 1


def test_render_scores_as_it_saves_unless_told_not_to(scorer_ws):
    from echo_os.resonance.scores import clip_score

    def render(*extra):
        code, out, err = run_cli("--home", str(scorer_ws.home), "render", "a lamp on a quay", "--model", "tiny",
                                 "--size", "64x64", "--steps", "2", "--project", "singles", "--json", *extra)
        assert code == 0, err
        return json.loads(out)[0]

    scored = _meta(scorer_ws, render()["id"])
    assert scored["scores"]["clip"] == "tiny-clip" and scored["scores"]["aesthetic_model"] == "tiny-head"
    assert scored["scores"]["style"] is None and scored["scores"]["characters"] == {}
    image, text = _direct_clip(scorer_ws.home / "tiny-clip", [_open(scorer_ws, scored["id"])], ["a lamp on a quay"])
    assert scored["scores"]["alignment"] == pytest.approx(clip_score(image[0], text[0]), abs=1e-3)
    assert "scores" not in _meta(scorer_ws, render("--seed", "5", "--no-score")["id"])


def _open(settings: Settings, artifact_id: str):
    from PIL import Image

    with sqlite3.connect(settings.catalog_path) as db:
        path = db.execute("SELECT path FROM artifacts WHERE id = ?", (artifact_id,)).fetchone()[0]
    with Image.open(settings.artifacts_dir / path / "image.png") as image:
        return image.convert("RGB")


def test_score_without_clip_names_the_missing_scorers(workspace):
    code, out, err = run_cli("--home", str(workspace.home), "render", "a fox", "--engine", "draft", "--size", "64x64",
                             "--no-memory", "--json")
    assert code == 0, err
    code, out, err = run_cli("--home", str(workspace.home), "score")
    assert code == 1
    assert "scorer clip      off: no CLIP model on this machine" in err
    assert 'scorer aesthetic off: no `type = "scorer"` entry in models.toml' in err
    assert "Error: nothing scored: no CLIP model" in err
