"""Render presets (pipelines/presets/*.toml) through the registry and `--preset` on render and batch."""

from __future__ import annotations

import json
from pathlib import Path

from echo_os.engines.presets import get_preset, presets


def _meta(out: str) -> dict:
    return json.loads((Path(json.loads(out)[0]["path"]) / "meta.json").read_text())


def test_the_built_in_presets_are_registered(workspace):
    table = presets(workspace)
    assert {"draft", "quick", "fast", "turbo", "quality"} <= set(table)
    assert table["draft"].engine == "draft" and table["quality"].steps == 40
    assert table["quick"].fields()["width"] == 768
    # `fast` is the few-step model (what someone on a CPU means by fast); `turbo` is its old name.
    assert table["fast"].fields() == table["turbo"].fields() == {"model": "sdxl-turbo"}


def test_render_with_a_preset_fills_only_what_was_not_given(workspace, run_cli):
    home = str(workspace.home)
    code, out, err = run_cli("--home", home, "render", "x", "--preset", "quick", "--engine", "draft", "--steps", "3",
                             "--no-memory", "--json")
    assert code == 0, err
    meta = _meta(out)
    assert (meta["steps"], meta["scheduler"], meta["cfg"], meta["width"]) == (3, "dpmpp_2m_karras", 6.0, 768)
    code, out, err = run_cli("--home", home, "render", "x", "--preset", "draft", "--no-memory", "--json")
    assert code == 0, err
    assert "engine: draft (chosen with --engine draft)" in err and _meta(out)["steps"] == 1


def test_a_workspace_preset_wins_and_bad_ones_are_one_line(workspace, run_cli):
    folder = workspace.home / "pipelines" / "presets"
    folder.mkdir(parents=True)
    (folder / "fast.toml").write_text('engine = "draft"\nsteps = 2\nsize = "64x64"\n', encoding="utf-8")
    assert get_preset(workspace, "fast").steps == 2
    home = str(workspace.home)
    code, out, err = run_cli("--home", home, "render", "x", "--preset", "fast", "--no-memory", "--json")
    assert code == 0, err
    assert (_meta(out)["steps"], _meta(out)["width"]) == (2, 64)
    code, _, err = run_cli("--home", home, "render", "x", "--preset", "nope", "--no-memory")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "unknown preset 'nope'" in err and "quality" in err
    (folder / "bad.toml").write_text("steps = 0\n", encoding="utf-8")
    code, _, err = run_cli("--home", home, "render", "x", "--preset", "fast", "--no-memory")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "bad.toml" in err and "steps" in err


def test_batch_takes_a_preset(workspace, run_cli, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red kite\na blue kite\n", encoding="utf-8")
    code, out, err = run_cli("--home", str(workspace.home), "batch", "kites", f"@{prompts}", "--preset", "quick",
                             "--engine", "draft", "--size", "64x64", "--dry-run", "--json")
    assert code == 0, err
    plan = json.loads(out)
    request = plan["scenes"][0]["request"]
    assert (request["steps"], request["scheduler"], request["width"], request["engine"]) == (16, "dpmpp_2m_karras", 64, "draft")
