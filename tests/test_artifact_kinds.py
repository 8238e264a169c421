"""Artifact kinds (issue 24, bugs 1, 2, 3 and 7): rendered images, imported images, compare grid sheets and
videos. A workspace that has all four after the documented flows (batch then animatic, compare, memory
import); every command that takes an id says in one line which kind it needs (exit 2 / 422), scoring and
motif analysis skip what is not an image, and an imported A1111 image can be refined."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from echo_os.settings import Settings
from tests.helpers import run_cli

STORY = "scene,slug,description\n1,morning,he checks the lamp\n2,squall,he watches the squall\n3,night,the quay at night\n"
A1111 = ("a lighthouse in a storm\nNegative prompt: blurry\n"
         "Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234, Size: 64x48, Model: juggernaut")


def _cli(home: Path, *args: str) -> tuple[int, str, str]:
    return run_cli("--home", str(home), *args)


def _ok(home: Path, *args: str) -> str:
    code, out, err = _cli(home, *args)
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def kinds(tmp_path_factory, tiny_sdxl_dir):
    """(settings, ids): a story rendered on the tiny model with its animatic, a compare grid and an import."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from tests.tiny_models import save_tiny_clip

    base = tmp_path_factory.mktemp("kinds")
    home = base / "ws"
    home.mkdir()
    save_tiny_clip(base / "tiny-clip")
    (home / "models.toml").write_text(
        f'[models.tiny]\ntype = "sdxl"\npath = "{tiny_sdxl_dir.as_posix()}"\n\n'
        f'[models.tiny-clip]\ntype = "clip"\npath = "{(base / "tiny-clip").as_posix()}"\n', encoding="utf-8")
    (base / "story.csv").write_text(STORY, encoding="utf-8")
    info = PngInfo()
    info.add_text("parameters", A1111)
    (base / "old").mkdir()
    Image.new("RGB", (64, 48), (10, 20, 30)).save(base / "old" / "a.png", pnginfo=info)

    scenes = json.loads(_ok(home, "batch", "quay", str(base / "story.csv"), "--model", "tiny", "--size", "64x64",
                            "--steps", "2", "--ip-adapter", "none", "--no-score", "--json"))
    video = json.loads(_ok(home, "animatic", "quay", "--json"))["id"]
    grid = json.loads(_ok(home, "compare", "a harbour", "--engines", "draft", "--seeds", "1,2", "--size", "64x64",
                          "--json"))["grid"]["id"]
    imported = json.loads(_ok(home, "memory", "import", str(base / "old"), "--json"))["ids"][0]
    ids = {"video": video, "grid": grid, "imported": imported, "scenes": [s["id"] for s in scenes["scenes"]]
           if "scenes" in scenes else None}
    return Settings(home=home), ids


def test_score_and_analyze_work_once_the_workspace_has_an_animatic_and_skip_what_is_not_an_image(kinds):
    settings, ids = kinds
    code, out, err = _cli(settings.home, "score", "--json")
    assert code == 0, err
    scored = json.loads(out)["scored"]
    assert len(scored) == 4 and ids["video"] not in scored and ids["grid"] not in scored  # 3 scenes + the import
    code, out, err = _cli(settings.home, "memory", "analyze", "--k", "2", "--json")
    assert code == 0, err
    members = {m for c in json.loads(out)["clusterings"] for motif in c["motifs"] for m in motif["members"]}
    assert ids["video"] not in members and ids["grid"] not in members and ids["imported"] in members


@pytest.mark.parametrize("command", ["refine", "texture-check", "memory similar", "score", "replay"])
def test_a_video_id_is_refused_in_one_line_naming_the_kind_needed(kinds, command):
    settings, ids = kinds
    code, out, err = _cli(settings.home, *command.split(), ids["video"])
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "a video (animatic)" in err and "image" in err, err
    assert "Traceback" not in err and "AttributeError" not in err


def test_a_grid_sheet_is_its_own_kind(kinds):
    settings, ids = kinds
    for args in (("rate", ids["grid"], "3"), ("score", ids["grid"]), ("refine", ids["grid"]),
                 ("replay", ids["grid"])):
        code, out, err = _cli(settings.home, *args)
        assert code == 2 and "compare grid sheet" in err and err.strip().count("\n") == 0, (args, err)
    hits = json.loads(_ok(settings.home, "memory", "search", "a harbour", "-k", "50", "--json"))
    assert ids["grid"] not in {hit["id"] for hit in hits} and hits
    kinds = {row["id"]: row["kind"] for row in json.loads(_ok(settings.home, "artifacts", "list", "--json"))}
    assert (kinds[ids["grid"]], kinds[ids["video"]], kinds[ids["imported"]]) == ("sheet", "video", "imported")


def test_an_imported_image_is_refined_from_what_its_png_carried_and_replay_says_why_not(kinds):
    settings, ids = kinds
    code, out, err = _cli(settings.home, "replay", ids["imported"])
    assert code == 2 and "imported" in err and "refine" in err and err.strip().count("\n") == 0, err
    child = json.loads(_ok(settings.home, "refine", ids["imported"], "--model", "tiny", "--steps", "4",
                           "--strength", "0.5", "--json"))[0]
    meta = json.loads(_ok(settings.home, "artifacts", "show", child["id"]))
    assert meta["parent_id"] == ids["imported"] and meta["prompt"] == "a lighthouse in a storm"
    assert (meta["negative_prompt"], meta["cfg"], meta["seed"] >= 0) == ("blurry", 6.5, True)
    assert (meta["width"], meta["height"]) == (64, 48)


def test_the_refine_route_answers_422_for_a_video_and_refines_an_import(kinds):
    from tests.api_helpers import api_client, wait_job

    settings, ids = kinds

    async def run() -> tuple:
        async with api_client(settings) as (client, _):
            assert (await client.get(f"/api/artifacts/{ids['grid']}")).json()["kind"] == "sheet"
            video = await client.post("/api/refine", json={"artifact_id": ids["video"]})
            sheet = await client.post("/api/refine", json={"artifact_id": ids["grid"]})
            imported = await client.post("/api/refine", json={"artifact_id": ids["imported"], "model": "tiny",
                                                              "steps": 4, "strength": 0.5})
            job = await wait_job(client, imported.json()["job_id"], timeout=120) if imported.status_code == 202 else None
            return video, sheet, imported, job

    video, sheet, imported, job = asyncio.run(run())
    assert video.status_code == 422 and video.json()["detail"][0]["loc"] == ["body", "artifact_id"]
    assert "a video (animatic)" in video.json()["detail"][0]["msg"]
    assert sheet.status_code == 422 and "compare grid sheet" in sheet.json()["detail"][0]["msg"]
    assert imported.status_code == 202, imported.text
    assert job["status"] == "succeeded", job
