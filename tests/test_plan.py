"""`echo-os plan` offline (Dynamic Prompts + MiniLM + MMR) and `echo-os batch PROJECT` rendering the plan."""

from __future__ import annotations

import json
import re

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
    assert plan["constraints"]["exclusions"] == ["human forms"]
    # the excluded concept, widened by meaning: people, figures, faces, portraits stay out of the positives
    assert plan["constraints"]["negative_prompt"] == "human forms, people, human figure, face, portrait, crowd"
    assert plan["method"]["name"] == "offline" and plan["method"]["seed"] == 1
    assert plan["intent"] == INTENT and plan["theme"] == "warm fractal"
    # the list file, read by the real @prompts.txt reader
    problems = ProblemList()
    rows = read_prompt_list(workspace.home / plan["files"]["list"], problems)
    assert not problems and len(rows) == 20
    for row in rows:
        assert row.negative == plan["constraints"]["negative_prompt"]
        assert ", warm fractal, " in row.description  # the item's own subject, then the intent's words
        assert not any(word in row.description.lower() for word in ("human", "people", "figure", "face", "portrait"))
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
    assert all(row.meta["style"] == "digital art" and row.meta["negative_prompt"].startswith("human forms, people")
               for row in rows)
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
        assert scene["request"]["negative_prompt"].startswith("people, human figure, face")
        assert scene["request"]["prompt"].startswith("a quiet harbour, ")
        assert "people" not in scene["request"]["prompt"]


def test_mmr_prefers_candidates_away_from_past_work():
    from echo_os.intent.offline import mmr_select

    candidates = np.eye(4, dtype=np.float32)
    query = np.full(4, 0.5, dtype=np.float32)
    past = candidates[:2]  # the first two were made before
    assert sorted(mmr_select(candidates, query, past, 2)) == [2, 3]
    assert len(set(mmr_select(candidates, query, np.zeros((0, 4), np.float32), 4))) == 4


@pytest.mark.parametrize("intent, theme, negative_starts", [
    ("un port tranquille sans personne", "un port tranquille", "personne, people"),
    ("iznik çinisi desenleri, insansız", "iznik çinisi desenleri", "insan, people"),
    ("mittelalterliche Burg ohne Menschen", "mittelalterliche Burg", "Menschen, people"),
    ("armas medievales sin sangre", "armas medievales", "sangre, blood"),
    ("vasi di ceramica senza decorazioni floreali", "vasi di ceramica", "decorazioni floreali"),
    ("casas coloniais sem pessoas", "casas coloniais", "pessoas, people"),
    ("a quiet harbour without people", "a quiet harbour", "people"),
])
def test_exclusions_in_seven_languages_leave_the_theme(intent, theme, negative_starts):
    from echo_os.intent.intent import parse_intent

    parsed = parse_intent(intent)
    assert parsed.theme == theme and parsed.negative_prompt.startswith(negative_starts)
    assert parse_intent("notes on a page").exclusions == ()  # "no" only as a word of its own


def test_french_turkish_german_exclusions_land_in_the_negative_and_plans_stay_on_topic(workspace, run_cli):
    for project, intent, excluded in [("Port", "un port tranquille sans personne", "personne"),
                                      ("Cini", "iznik çinisi desenleri, insansız", "insan"),
                                      ("Burg", "mittelalterliche Burg ohne Menschen", "Menschen")]:
        plan, _ = _plan(run_cli, workspace.home, project, intent, "--count", "4", "--seed", "1")
        negative = plan["constraints"]["negative_prompt"]
        assert negative.startswith(f"{excluded}, people"), negative
        for prompt in _prompts(plan):
            assert excluded.lower() not in prompt.lower() and " people" not in prompt


def test_weapons_intent_plans_weapons_isolated_as_assets(workspace, run_cli):
    plan, err = _plan(run_cli, workspace.home, "Video Game Assets", "medieval fantasy weapons", "--count", "6",
                      "--seed", "1")
    weapons = ("sword", "axe", "mace", "bow", "shield", "dagger", "spear", "halberd", "hammer", "flail", "glaive",
               "scimitar", "rapier", "lance", "pike", "falchion", "club", "khopesh", "stiletto", "cutlass", "dirk",
               "bardiche", "tomahawk", "knives", "trident", "scythe", "javelin", "sling", "quiver", "buckler",
               "katana", "sabre", "estoc", "zweihander", "claymore", "maul", "morning star", "arbalest", "staff",
               "pick", "poleaxe")
    for item in plan["items"]:
        assert any(w in item["parts"]["subject"] for w in weapons), item
        assert item["prompt"].endswith("isolated on a neutral background, orthographic, studio light")
        assert "lens" not in item["prompt"] and "pinhole" not in item["prompt"]
    assert "relevance: mean similarity to the intent" in err and "diversity: mean pairwise similarity" in err


def test_an_iznik_intent_draws_only_ottoman_motifs_on_fritware(workspace, run_cli):
    from echo_os.intent.subjects import DOMAINS

    plan, _ = _plan(run_cli, workspace.home, "Kervan NFT", "ornate ceramic tiles in iznik blue, no human forms",
                    "--count", "12", "--seed", "1", "--method", "offline")
    iznik = next(d for d in DOMAINS if d.name == "ornament_iznik")
    others = [noun for d in DOMAINS if d.name.startswith("ornament") and d.name != "ornament_iznik"
              for noun in d.nouns if noun not in iznik.nouns]
    assert len(plan["items"]) == 12
    for item in plan["items"]:
        subject = item["parts"]["subject"]
        assert any(noun in subject for noun in iznik.nouns), subject
        assert not [noun for noun in others if noun in subject], subject
        for foreign in ("talavera", "azulejo", "zellige", "delft", "acanthus", "majolica", "terracotta",
                        "porcelain", "stucco", "faience"):
            assert foreign not in item["prompt"], item["prompt"]
        assert any(glaze in item["parts"]["palette"] for glaze in ("cobalt", "turquoise")), item["parts"]
    materials = " ".join(item["prompt"] for item in plan["items"])
    assert "fritware" in materials


def test_a_weapons_plan_is_dressed_in_metal_leather_and_wood_tones(workspace, run_cli):
    from echo_os.intent.subjects import DOMAIN_PALETTES

    plan, _ = _plan(run_cli, workspace.home, "Armory", "medieval fantasy weapons", "--count", "8", "--seed", "1",
                    "--method", "offline")
    own = {name for name, _, _ in DOMAIN_PALETTES["weapons"]}
    for item in plan["items"]:
        palette = item["parts"]["palette"]
        assert palette in own, palette
        assert any(w in palette for w in ("steel", "iron", "bronze", "gunmetal")), palette
        assert any(w in palette for w in ("leather", "oak", "walnut", "ash", "yew", "rawhide", "charcoal")), palette
        for soft in ("rose gold", "blush", "honey", "cream", "peach", "pastel"):
            assert soft not in item["prompt"], item["prompt"]


def test_an_indoor_story_changes_its_light_not_its_weather(workspace, run_cli):
    plan, _ = _plan(run_cli, workspace.home, "Station", "a space station at night", "--kind", "story",
                    "--count", "8", "--seed", "1", "--method", "offline")
    parts = [item["parts"] for item in plan["items"]]
    assert [p["phase"] for p in parts] == ["beginning"] * 2 + ["turn"] * 2 + ["climax"] * 2 + ["aftermath"] * 2
    weather = re.compile(r"\b(rain|storm|wind|gusts?|squall|lightning|clouds?|spray|puddles?|drizzle|snow|hail|wet|"
                         r"sky(?! blue))\b")
    for item in plan["items"]:
        assert not weather.search(item["prompt"]), item["prompt"]
    assert weather.search("dusk under a threatening slate sky") and not weather.search("navy and pale sky blue")
    assert len({p["lighting"] for p in parts}) >= 6  # the light still moves through the arc
    assert "harsh" in parts[4]["lighting"] or "chiaroscuro" in parts[4]["lighting"]


def test_a_harbour_story_casts_recurring_props_not_places(workspace, run_cli):
    plan, _ = _plan(run_cli, workspace.home, "Harbour", "a quiet harbour without people", "--kind", "story",
                    "--count", "8", "--seed", "1", "--method", "offline")
    names = [member["name"] for member in plan["story"]["cast"].values()]
    assert names, plan["story"]
    for name in names:
        assert not {"jetty", "boathouse", "pier", "quay", "slipway", "hut"} & set(name.split()), names
    assert any(w in " ".join(names) for w in ("boat", "gull", "lantern")), names
    assert "storm" in plan["items"][4]["parts"]["lighting"]  # outdoors the weather still turns


def test_story_plan_has_an_arc_one_cast_camera_variety_and_renders_on_the_draft_engine(workspace, run_cli):
    plan, _ = _plan(run_cli, workspace.home, "Sea Story", "a quiet harbour without people", "--kind", "story",
                    "--count", "8", "--seed", "2")
    parts = [item["parts"] for item in plan["items"]]
    assert [p["phase"] for p in parts] == ["beginning"] * 2 + ["turn"] * 2 + ["climax"] * 2 + ["aftermath"] * 2
    assert "golden" in parts[0]["lighting"] and "storm" in parts[4]["lighting"] and "dawn" in parts[-1]["lighting"]
    assert len({p["location"] for p in parts}) == 1  # one place
    cast = list(plan["story"]["cast"])
    assert cast and all(p["characters"].split(";")[0] == cast[0] for p in parts)  # the cast recurs
    assert all(a["camera"] != b["camera"] for a, b in zip(parts, parts[1:]))  # the framing changes each cut
    assert parts[0]["camera"].startswith("wide establishing shot")
    harbour = ("harbour", "quay", "pier", "jetty", "boat", "lighthouse", "buoy", "seawall", "breakwater", "crane",
               "net", "lobster", "rope", "bollard", "slipway", "gull", "pontoon", "ferry", "trawler", "crates",
               "boathouse", "fish market", "lantern", "tide", "steps", "office", "hull", "mooring", "mast", "dinghy",
               "anchor", "harbour master")
    assert all(any(word in p["description"] for word in harbour) for p in parts), parts
    home = str(workspace.home)
    code, out, err = run_cli("--home", home, "batch", "Sea Story", "--engine", "draft", "--size", "64x64",
                             "--no-score", "--json")
    assert code == 0, err
    story = json.loads(out)
    assert len(story["scenes"]) == 8 if "scenes" in story else story["rendered"] == 8
    code, out, err = run_cli("--home", home, "batch", "Sea Story", "--engine", "draft", "--size", "64x64",
                             "--no-score")
    assert code == 0 and "0 rendered, 8 already rendered" in out, out + err


def _task_plan(run_cli, home):
    plan, err = _plan(run_cli, home, "Armory", "medieval fantasy weapons for a game", "--kind", "assets",
                      "--count", "2", "--seed", "3")
    return plan


def test_assets_plan_is_typed_tasks_with_dependencies_that_batch_runs_in_order_and_resumes(workspace, run_cli):
    plan = _task_plan(run_cli, workspace.home)
    tasks = {item["id"]: item for item in plan["items"]}
    assert list(tasks) == ["concept-1", "texture-1", "turnaround-1", "mesh-1", "animatic-1", "sound-1",
                           "concept-2", "texture-2", "turnaround-2", "mesh-2", "animatic-2", "sound-2"]
    assert tasks["mesh-1"]["type"] == "mesh" and tasks["mesh-1"]["depends_on"] == ["concept-1"]
    assert tasks["animatic-2"]["type"] == "animatic"
    assert tasks["animatic-2"]["depends_on"] == ["concept-2", "texture-2", "turnaround-2"]
    assert tasks["sound-2"]["type"] == "sound" and tasks["sound-2"]["depends_on"] == ["animatic-2"]
    assert tasks["texture-1"]["type"] == "texture" and tasks["texture-1"]["depends_on"] == ["concept-1"]
    assert tasks["turnaround-2"]["depends_on"] == ["concept-2", "texture-2"]
    home = str(workspace.home)
    code, out, err = run_cli("--home", home, "batch", "Armory", "--engine", "draft", "--size", "64x64", "--json")
    assert code == 0, err
    done = json.loads(out)["tasks"]
    order = [task["id"] for task in done]
    assert order.index("concept-1") < order.index("texture-1") < order.index("turnaround-1")
    from echo_os.artifacts.store import ArtifactStore

    ids = {task["id"]: task["artifact"] for task in done}
    store = ArtifactStore(workspace)
    try:
        texture = store.open(ids["texture-1"])
        turnaround = store.open(ids["turnaround-1"])
    finally:
        store.close()
    # the concept's artifact feeds its dependants: lineage, and the texture is in the concept's colours
    assert texture.meta.parent_id == ids["concept-1"] and turnaround.meta.parent_id == ids["concept-1"]
    assert ", in " in texture.meta.prompt
    assert "does not refine an image" in err or "does not refine an image" in out
    # mesh after the concept, the placeholder here (no weights), with the concept as its parent; the reel
    # after the three stills; the sound after the reel, as long as it, with the reel as its parent
    from echo_os.artifacts.encode import probe

    store = ArtifactStore(workspace)
    try:
        mesh, reel, sound = store.open(ids["mesh-1"]), store.open(ids["animatic-1"]), store.open(ids["sound-1"])
    finally:
        store.close()
    assert (mesh.meta.kind, mesh.meta.engine.name, mesh.meta.parent_id) == ("mesh", "draft-mesh", ids["concept-1"])
    assert (reel.meta.kind, reel.meta.video_kind) == ("video", "animatic")
    assert reel.meta.sources == [ids["concept-1"], ids["texture-1"], ids["turnaround-1"]]
    assert probe(reel.path / "animatic.mp4")["frames"] == reel.meta.frames == 3 * 2 * 12  # 3 stills, 2 s, 12 fps
    assert (sound.meta.kind, sound.meta.parent_id) == ("audio", ids["animatic-1"])
    assert sound.meta.duration_s == reel.meta.duration_s == 6.0
    assert order.index("concept-1") < order.index("mesh-1") and "no image-to-3D weights" in err
    assert order.index("turnaround-1") < order.index("animatic-1") < order.index("sound-1")
    code, out, err = run_cli("--home", home, "batch", "Armory", "--engine", "draft", "--size", "64x64")
    assert code == 0 and "0 rendered, 12 already rendered" in out, out + err
    # --count keeps the first item's tasks, the reel and its sound included
    code, out, err = run_cli("--home", home, "batch", "Armory", "--engine", "draft", "--size", "64x64", "--count",
                             "1", "--json")
    assert code == 0 and [t["id"] for t in json.loads(out)["tasks"]] == [t for t in order if t.endswith("-1")], err


@pytest.mark.slow
def test_assets_and_story_plans_render_on_the_tiny_model(tiny_workspace, run_cli):
    home = str(tiny_workspace.home)
    _task_plan(run_cli, tiny_workspace.home)
    code, out, err = run_cli("--home", home, "batch", "Armory", "--model", "tiny", "--engine", "sdxl", "--size",
                             "64x64", "--steps", "2", "--count", "1", "--json")
    assert code == 0, err
    done = json.loads(out)["tasks"]
    assert sorted(task["id"] for task in done) == sorted(["concept-1", "texture-1", "turnaround-1", "mesh-1",
                                                          "animatic-1", "sound-1"])
    from echo_os.artifacts.store import ArtifactStore

    store = ArtifactStore(tiny_workspace)
    try:
        turnaround = store.open({task["id"]: task["artifact"] for task in done}["turnaround-1"])
    finally:
        store.close()
    assert turnaround.meta.request["init_image"] is not None  # refined from the concept's image (img2img)
    _plan(run_cli, tiny_workspace.home, "Sea Story", "a quiet harbour without people", "--kind", "story",
          "--count", "4", "--seed", "2")
    code, out, err = run_cli("--home", home, "batch", "Sea Story", "--model", "tiny", "--engine", "sdxl", "--size",
                             "64x64", "--steps", "2", "--no-score", "--ip-adapter", "none")
    assert code == 0 and "4 rendered" in out, out + err
