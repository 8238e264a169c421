"""echo-os batch --compare-models: the story once per model, contact sheets side by side."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def test_story_once_per_model_and_sheets_side_by_side(run_cli, workspace, tmp_path):
    home = str(workspace.home)
    # Two models.toml entries: an unknown name is an error whatever the engine, draft too (the front door)
    with open(workspace.models_toml, "a", encoding="utf-8") as handle:
        handle.write('\n[models.alpha]\nhf = "example/alpha"\n\n[models.beta]\nhf = "example/beta"\n')
    story = tmp_path / "story.csv"
    story.write_text("scene,description\n1,a harbour at dawn\n2,a boat leaves\n", encoding="utf-8")
    args = ("--home", home, "batch", "Harbour", str(story), "--engine", "draft", "--size", "64x64", "--json")
    code, out, err = run_cli(*args, "--compare-models", "alpha,beta")
    assert code == 0, err
    result = json.loads(out)
    assert set(result["models"]) == {"alpha", "beta"}
    sheets = {}
    for name, story_result in result["models"].items():
        assert story_result["project"] == f"Harbour [{name}]"
        story_json = json.loads(Path(story_result["story_json"]).read_text())
        assert len(story_json["scenes"]) == 2
        with Image.open(story_result["contact_sheet"]) as sheet:
            sheets[name] = sheet.size
    with Image.open(result["compare_sheet"]) as combined:
        assert combined.width >= sheets["alpha"][0] + sheets["beta"][0]
        assert combined.height >= max(h for _, h in sheets.values())
    for name in ("alpha", "beta"):
        metas = [json.loads(p.read_text()) for p in Path(home, "artifacts").glob("*/*/*/meta.json")]
        assert sum(1 for m in metas if m["request"]["model"] == name) == 2

    code, out, err = run_cli(*args, "--compare-models", "alpha,nope")
    assert code == 2 and "no model named 'nope'" in err and err.count("\n") == 1, err
    code, out, err = run_cli(*args, "--compare-models", "alpha")
    assert code == 2 and "--compare-models needs at least two models" in err
    code, out, err = run_cli(*args, "--compare-models", "alpha,beta", "--model", "x")
    assert code == 2 and "--compare-models" in err
