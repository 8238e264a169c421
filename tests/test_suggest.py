"""`echo-os suggest PROJECT` (issue 28): each suggestion with its reason, from what is recorded."""

from __future__ import annotations

import json
import shutil

from tests.helpers import REPO
from tests.helpers import run_cli as run


def _render(home: str, prompt: str, seed: int) -> str:
    code, out, err = run("--home", home, "render", prompt, "--engine", "draft", "--seed", str(seed), "--size",
                         "128x128", "--project", "Harbour", "--json")
    assert code == 0, err
    return json.loads(out)[0]["id"]


def test_suggestions_say_why(workspace):
    from echo_os.artifacts.store import open_catalog
    from echo_os.intent.planfile import Constraints, PlanFile, PlanItem, save_plan
    from echo_os.resonance.persist import save_scores

    home = str(workspace.home)
    # plan.json as `echo-os plan` writes it (save_plan), without loading the planner's MiniLM here
    plan = save_plan(workspace, PlanFile(project="Harbour", intent="a quiet harbour at dawn", theme="harbour",
                                         kind="prompts", constraints=Constraints(), method={"name": "offline"},
                                         items=[PlanItem(prompt=p) for p in (
                                             "a quiet harbour at dawn, a lone tree on a hill",
                                             "a quiet harbour at dawn, a koi pond, teal and coral",
                                             "a quiet harbour at dawn, a brass telescope, moonlight")])).model_dump()
    rendered_item = plan["items"][0]["prompt"]
    made = {
        _render(home, "boats in a harbour, golden hour light, oil painting", 1): 30.0,
        _render(home, "a crane on the quay, golden hour light, oil painting", 2): 28.0,
        _render(home, "nets drying, flat grey light", 3): 12.0,
        _render(home, rendered_item, 4): 10.0,
    }
    with open_catalog(workspace) as catalog:
        for artifact_id, alignment in made.items():
            save_scores(catalog, workspace.artifacts_dir, catalog.get(artifact_id).path, {"alignment": alignment})
    code, out, err = run("--home", home, "suggest", "Harbour", "--json")
    assert code == 0, err
    found = json.loads(out)
    kinds = [s["kind"] for s in found]
    assert kinds.count("missing") == 2 and "untried" in kinds
    missing = [s for s in found if s["kind"] == "missing"]
    assert [s["prompt"] for s in missing] == [item["prompt"] for item in plan["items"][1:]]
    assert missing[0]["why"] == "plan item 2 of 3 (prompts/.../plan.json) has never been rendered"
    untried = [s for s in found if s["kind"] == "untried"]
    past_words = {"boats", "harbour", "golden", "hour", "oil", "painting", "crane", "quay", "nets", "drying", "flat", "grey",
                  "quiet", "dawn", "lone", "tree", "hill"}
    for item in untried:
        assert item["prompt"].startswith("boats in a harbour, golden hour light, oil painting, ")
        added = item["prompt"].rsplit(", ", 1)[1]
        assert not set(added.split()) & past_words and "no prompt of this project's 4 images" in item["why"]
    assert all(s["why"] for s in found)

    code, out, err = run("--home", home, "suggest", "Harbour")
    assert code == 0, err
    assert out.startswith("1. [missing] ") and "\n   why: plan item 2 of 3" in out

    code, out, err = run("--home", home, "suggest", "Nobody")
    assert code == 2 and err.count("\n") == 1


def test_what_worked_and_characters_in_few_scenes(workspace, tmp_path):
    from echo_os.artifacts.store import open_catalog
    from echo_os.resonance.persist import save_scores

    home = str(workspace.home)
    made = {_render(home, "boats in a harbour, oil painting", 1): 30.0,
            _render(home, "a crane on the quay, golden hour light, oil painting", 2): 29.0,
            _render(home, "a gull on a post, golden hour light, oil painting", 3): 28.0,
            _render(home, "nets drying, flat grey light", 4): 5.0,
            _render(home, "a rope, flat grey light", 5): 4.0}
    with open_catalog(workspace) as catalog:
        for artifact_id, alignment in made.items():
            save_scores(catalog, workspace.artifacts_dir, catalog.get(artifact_id).path, {"alignment": alignment})
    code, out, err = run("--home", home, "suggest", "Harbour", "--json")
    worked = [s for s in json.loads(out) if s["kind"] == "worked"]
    assert worked[0]["prompt"] == "boats in a harbour, oil painting, golden hour light"
    assert worked[0]["why"].startswith("'golden hour light' is in 2 of the project's 3 best-valued images (mean 0.285)")

    folder = tmp_path / "story"
    shutil.copytree(REPO / "prompts" / "lighthouse-keeper", folder)
    csv = folder / "story.csv"
    rows = csv.read_text().splitlines()
    rows[2] = rows[2].replace(",keeper,", ",,", 1)  # scene 2 without the keeper
    rows[3] = rows[3].replace(",keeper,", ",,", 1)
    rows[4] = rows[4].replace(",keeper,", ",,", 1)
    csv.write_text("\n".join(rows) + "\n")
    assert run("--home", home, "batch", "Lighthouse Keeper", str(csv), "--engine", "draft")[0] == 0
    code, out, err = run("--home", home, "suggest", "Lighthouse Keeper", "--json")
    assert code == 0, err
    missing = [s for s in json.loads(out) if s["kind"] == "missing"]
    assert missing == [{"kind": "missing", "prompt": "keeper in a new scene: add a storyboard row with characters=keeper",
                        "why": "character 'keeper' is in only 1 of 4 scenes of the current story"}]


def test_memory_analyze_as_the_design_spells_it(workspace):
    """`echo-os memory --analyze` is `echo-os memory analyze` (same line, same exit code)."""
    home = str(workspace.home)
    assert run("--home", home, "memory", "--analyze") == run("--home", home, "memory", "analyze")
    code, out, err = run("--home", home, "memory", "--analyze")
    assert code == 2 and "memory analyze needs at least 3 artifacts" in err
    code, out, err = run("--home", home, "memory", "--analyze", "stats")
    assert code == 2 and "go without a subcommand" in err
