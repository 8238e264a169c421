"""`echo-os render` on a machine with no weights: the draft engine, artifacts, catalog, replay."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from echo_os.artifacts.pnginfo import META_KEY, PARAMETERS_KEY


def test_fresh_workspace_renders_a_draft_and_says_why(run_cli, workspace):
    code, out, err = run_cli("--home", str(workspace.home), "render", "warm fractal", "--seed", "42",
                             "--size", "512x512")
    assert code == 0, err
    assert "engine: draft" in err and "no weights for model 'sdxl'" in err and "echo-os models list" in err
    artifact_id, image_path = out.split()
    image_path = Path(image_path)
    folder = image_path.parent
    # artifacts/<date>/<project-slug>/<seq>-<slug>_<timestamp>/image.png
    assert folder.parent.name == "default"
    assert folder.name.startswith("001-warm-fractal_")
    assert folder.parent.parent.parent == workspace.artifacts_dir
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["id"].startswith(artifact_id)
    assert meta["engine"]["name"] == "draft" and "no weights" in meta["engine"]["reason"]
    assert meta["seed"] == 42 and meta["width"] == 512 and meta["height"] == 512
    assert meta["versions"]["echo_os"]
    with Image.open(image_path) as image:
        assert image.size == (512, 512)
        assert "Seed: 42" in image.text[PARAMETERS_KEY]
        embedded = json.loads(image.text[META_KEY])
    assert embedded["prompt"] == "warm fractal" and "id" not in embedded


def test_artifact_id_is_sha256_of_png(run_cli, workspace):
    import hashlib

    code, out, _ = run_cli("--home", str(workspace.home), "render", "a quiet harbour", "--engine", "draft",
                           "--size", "256x256", "--json")
    assert code == 0
    [summary] = json.loads(out)
    assert hashlib.sha256(Path(summary["image"]).read_bytes()).hexdigest() == summary["id"]


def test_count_gives_consecutive_seeds_and_sequence_numbers(run_cli, workspace):
    code, out, _ = run_cli("--home", str(workspace.home), "render", "storm at night", "--engine", "draft",
                           "--seed", "7", "--count", "3", "--size", "128x128", "--json")
    assert code == 0
    artifacts = json.loads(out)
    assert [a["seed"] for a in artifacts] == [7, 8, 9]
    names = sorted(Path(a["path"]).name[:4] for a in artifacts)
    assert names == ["001-", "002-", "003-"]


def test_list_show_and_prefix(run_cli, workspace):
    home = str(workspace.home)
    run_cli("--home", home, "render", "lighthouse", "--engine", "draft", "--size", "128x128", "--project", "Sea Tales")
    code, out, _ = run_cli("--home", home, "artifacts", "list", "--json")
    [row] = json.loads(out)
    assert row["project"] == "Sea Tales"
    code, out, _ = run_cli("--home", home, "artifacts", "show", row["id"][:12])
    assert code == 0 and json.loads(out)["id"] == row["id"]
    code, out, err = run_cli("--home", home, "artifacts", "show", "abc")
    assert code == 2 and err.count("\n") == 1 and "12 hex" in err
    code, out, err = run_cli("--home", home, "artifacts", "show", "0" * 12)
    assert code == 2 and "no artifact" in err


def test_replay_of_a_draft_is_identical(run_cli, workspace):
    home = str(workspace.home)
    _, out, _ = run_cli("--home", home, "render", "golden morning cliffs", "--engine", "draft", "--size", "256x192")
    artifact_id = out.split()[0]
    code, out, err = run_cli("--home", home, "replay", artifact_id)
    assert code == 0, err
    assert "max pixel difference 0 (identical)" in out


def test_draft_card_palette_follows_light_words():
    from echo_os.engines.draft import draw_card
    from echo_os.render.requests import RenderRequest

    night = draw_card(RenderRequest(prompt="a harbour at night", width=64, height=64), seed=1)
    golden = draw_card(RenderRequest(prompt="a harbour in golden light", width=64, height=64), seed=1)
    assert sum(night.getpixel((1, 40))) < sum(golden.getpixel((1, 40)))


def test_a_1024_draft_card_keeps_its_footer_inside_readable_and_its_disc_off_the_prompt():
    """Issue 24, bug 9: at 1024 the footer ran off the right edge, was drawn dark on a dark ground, and the
    seed disc covered the prompt. A light sky over a dark ground (snow ... night) shows all three."""
    import numpy as np

    from echo_os.engines.draft import PALETTE_WORDS, draw_card
    from echo_os.render.requests import RenderRequest, StoryFields

    size = 1024
    margin = size // 24
    accent = np.array(PALETTE_WORDS["snow"][2])
    for seed in range(8):
        request = RenderRequest(prompt="snow on the roofs of a harbour town at night, lanterns in the windows, "
                                       "a long prompt that wraps onto several lines of the card",
                                width=size, height=size, engine="draft", story=StoryFields(scene=12))
        card = np.asarray(draw_card(request, seed)).astype(int)
        # the right margin holds nothing but the gradient: each row is one colour there
        strip = card[:, size - margin + 2:, :]
        assert (strip == strip[:, :1, :]).all(), f"seed {seed}: something is drawn in the right margin"
        # the footer (bottom rows) has light ink on the dark ground
        footer = card[size - margin - 60: size - margin, margin:size - margin]
        assert footer.max() >= 200, f"seed {seed}: the footer is dark on dark"
        # the disc stays above the prompt (which starts at a third of the height)
        below = card[size // 3:, :, :]
        assert not (below == accent).all(axis=2).any(), f"seed {seed}: the disc covers the prompt"
