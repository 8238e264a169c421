"""`echo-os plan` offline (Dynamic Prompts + MiniLM + MMR) and `echo-os batch PROJECT` rendering the plan."""

from __future__ import annotations

import json

import numpy as np
import pytest

from echo_os.story.problems import ProblemList
from echo_os.story.prompt_list import read_prompt_list

INTENT = "warm fractal, no human forms"


def _plan(run_cli, home, *args):
    code, out, err = run_cli("--home", str(home), "plan", *args, "--json")
    assert code == 0, err
    return json.loads(out), err


def _prompts(plan) -> list[str]:
    return [item["prompt"] for item in plan["items"]]


def _embed(texts):
    from echo_os.memory.embedders import MiniLMEmbedder

    return MiniLMEmbedder().embed_texts(texts)


def _nearest_similarity(prompts, past) -> float:
    return float((_embed(prompts) @ _embed(past).T).max(axis=1).mean())


def test_fixed_seed_gives_the_same_plan(tmp_path, run_cli):
    plans = []
    for name in ("one", "two"):
        home = tmp_path / name
        home.mkdir()
        plans.append(_plan(run_cli, home, "Ruzgar NFT", INTENT, "--count", "8", "--seed", "5")[0])
    assert _prompts(plans[0]) == _prompts(plans[1])
    home = tmp_path / "three"
    home.mkdir()
    assert _prompts(_plan(run_cli, home, "Ruzgar NFT", INTENT, "--count", "8", "--seed", "6")[0]) != _prompts(plans[0])


def test_n_items_no_duplicates_exclusions_only_in_the_negative(workspace, run_cli):
    plan, err = _plan(run_cli, workspace.home, "Ruzgar NFT", INTENT, "--count", "20", "--seed", "1")
    prompts = _prompts(plan)
    assert len(prompts) == 20 and len(set(prompts)) == 20
    assert plan["constraints"] == {"exclusions": ["human forms"], "negative_prompt": "human forms"}
    assert plan["method"]["name"] == "offline" and plan["method"]["seed"] == 1
    assert plan["intent"] == INTENT and plan["theme"] == "warm fractal"
    # the list file, read by the real @prompts.txt reader
    problems = ProblemList()
    rows = read_prompt_list(workspace.home / plan["files"]["list"], problems)
    assert not problems and len(rows) == 20
    for row in rows:
        assert row.negative == "human forms"
        assert "human" not in row.description.lower() and row.description.startswith("warm fractal, ")
    assert "diversity: mean pairwise similarity" in err and "past work: none" in err


def test_a_second_plan_is_farther_from_the_first_than_a_plan_that_ignores_memory(workspace, run_cli):
    first, _ = _plan(run_cli, workspace.home, "Ruzgar NFT", INTENT, "--count", "10", "--seed", "1")
    second, err = _plan(run_cli, workspace.home, "Ruzgar NFT", INTENT, "--count", "10", "--seed", "2")
    blind, _ = _plan(run_cli, workspace.home, "Ruzgar NFT", INTENT, "--count", "10", "--seed", "2", "--ignore-memory")
    assert "10 earlier plan items" in second["method"]["memory"] and blind["method"]["memory"] == "ignored"
    with_memory = _nearest_similarity(_prompts(second), _prompts(first))
    without = _nearest_similarity(_prompts(blind), _prompts(first))
    assert with_memory < without, (with_memory, without)
    assert second["diversity"]["mean_nearest_past_similarity"] == pytest.approx(with_memory, abs=1e-3)
    history = (workspace.home / "prompts" / "ruzgar-nft" / "plan-history.jsonl").read_text().splitlines()
    assert [json.loads(line)["method"]["seed"] for line in history] == [1, 2]


def test_rendered_artifacts_in_echo_memory_count_as_past_work(workspace, run_cli):
    home = str(workspace.home)
    _plan(run_cli, workspace.home, "Ruzgar NFT", INTENT, "--count", "4", "--seed", "1")
    code, out, err = run_cli("--home", home, "batch", "Ruzgar NFT", "--count", "3", "--style", "digital art",
                             "--engine", "draft", "--size", "64x64", "--json")
    assert code == 0, err
    from echo_os.artifacts.catalog import Catalog

    with Catalog(workspace.catalog_path) as catalog:
        rows = catalog.query(project="Ruzgar NFT")
    assert len(rows) == 3
    assert all(row.meta["style"] == "digital art" and row.meta["negative_prompt"] == "human forms" for row in rows)
    folder = workspace.home / "prompts" / "ruzgar-nft"
    (folder / "plan.json").unlink()  # leave only the images as past work
    second, _ = _plan(run_cli, workspace.home, "Ruzgar NFT", INTENT, "--count", "4", "--seed", "2")
    assert second["method"]["memory"] == "3 artifacts in Echo Memory, 0 earlier plan items"
    assert second["diversity"]["past_items"] == 3


def test_wildcards_from_files_and_a_template_that_runs_out(workspace, run_cli):
    wildcards = workspace.home / "prompts" / "wildcards"
    wildcards.mkdir(parents=True)
    (wildcards / "metal.txt").write_text("bronze\ncopper\n", encoding="utf-8")
    plan, _ = _plan(run_cli, workspace.home, "Armory", "game asset", "--template", "__metal__ {blade|shield}",
                    "--count", "4", "--seed", "3")
    assert sorted(_prompts(plan)) == sorted(f"game asset, {metal} {thing}" for metal in ("bronze", "copper")
                                            for thing in ("blade", "shield"))
    code, out, err = run_cli("--home", str(workspace.home), "plan", "Armory", "game asset", "--template",
                             "__metal__ {blade|shield}", "--count", "5", "--seed", "3")
    assert code == 2 and "makes only 4 distinct prompts" in err and err.count("\n") == 1


@pytest.mark.parametrize("intent, template, message", [
    ("a {cat|dog", None, "a '{' is never closed"),
    ("a cat|dog}", None, "a '}' at character 10 closes no '{'"),
    ("a __nope__ in the rain", None, "unknown wildcard __nope__"),
    ("warm fractal", "__palette__ {a|b", "--template: a '{' is never closed"),
    ("warm fractal", "__lens__ __missing__", "--template: unknown wildcard __missing__"),
    ("no people", None, "only says what to leave out"),
])
def test_bad_templates_and_unknown_wildcards_exit_2_naming_them(workspace, run_cli, intent, template, message):
    args = ["--home", str(workspace.home), "plan", "Bad", intent] + (["--template", template] if template else [])
    code, out, err = run_cli(*args)
    assert code == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (workspace.home / "prompts").exists()  # nothing written


def test_batch_without_a_plan_or_beyond_it_is_a_one_line_error(workspace, run_cli):
    home = str(workspace.home)
    code, out, err = run_cli("--home", home, "batch", "Nothing Here")
    assert code == 2 and "has no plan" in err and "echo-os plan" in err and err.count("\n") == 1
    _plan(run_cli, workspace.home, "Small", "quiet harbour", "--count", "2", "--seed", "1")
    code, out, err = run_cli("--home", home, "batch", "Small", "--count", "3", "--engine", "draft")
    assert code == 2 and "has 2 items" in err and err.count("\n") == 1


def test_story_kind_writes_a_storyboard_and_a_bible_that_batch_reads(workspace, run_cli):
    plan, _ = _plan(run_cli, workspace.home, "Sea Story", "a quiet harbour without people", "--kind", "story",
                    "--count", "3", "--seed", "4")
    assert plan["files"] == {"list": "prompts/sea-story/story.csv", "bible": "prompts/sea-story/STORY_BIBLE.md"}
    code, out, err = run_cli("--home", str(workspace.home), "batch", "Sea Story", "--dry-run", "--json",
                             "--engine", "draft")
    assert code == 0, err
    story = json.loads(out)
    assert len(story["scenes"]) == 3
    for scene in story["scenes"]:
        assert scene["request"]["negative_prompt"] == "people"
        assert scene["request"]["prompt"].startswith("a quiet harbour, ")
        assert "people" not in scene["request"]["prompt"]


def test_mmr_prefers_candidates_away_from_past_work():
    from echo_os.intent.offline import mmr_select

    candidates = np.eye(4, dtype=np.float32)
    query = np.full(4, 0.5, dtype=np.float32)
    past = candidates[:2]  # the first two were made before
    assert sorted(mmr_select(candidates, query, past, 2)) == [2, 3]
    assert len(set(mmr_select(candidates, query, np.zeros((0, 4), np.float32), 4))) == 4
