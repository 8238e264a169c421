"""Version history (issue 28): commit, change a scene, commit, diff, checkout back; on draft cards."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.helpers import run_cli as run

EXAMPLE = REPO / "prompts" / "lighthouse-keeper"


def _newest_story(home: Path) -> Path:
    found = [(json.loads(p.read_text())["created"], p) for p in (home / "artifacts").glob("*/lighthouse-keeper/story.json")]
    return max(found)[1]


@pytest.fixture
def story(workspace, tmp_path):
    folder = tmp_path / "story"
    shutil.copytree(EXAMPLE, folder)
    home = str(workspace.home)
    code, out, err = run("--home", home, "batch", "Lighthouse Keeper", str(folder / "story.csv"), "--engine", "draft")
    assert code == 0, err
    return workspace.home, folder


def test_commit_change_diff_checkout_back(story):
    home, folder = story
    h = str(home)
    first_story = json.loads(_newest_story(home).read_text())
    first_sheet = (_newest_story(home).parent / "contact-sheet.png").read_bytes()

    code, out, err = run("--home", h, "commit", "Lighthouse Keeper", "first cut", "--minutes", "90")
    assert code == 0, err
    assert out.startswith("v1  Lighthouse Keeper: first cut  (4 scenes, 4 changed, 90 min)")

    # change scene 2: a new description is a new request, so a new image
    csv = folder / "story.csv"
    csv.write_text(csv.read_text().replace("storm", "thunder", 1), encoding="utf-8")
    code, out, err = run("--home", h, "batch", "Lighthouse Keeper", str(csv), "--engine", "draft")
    assert code == 0, err
    second_story = json.loads(_newest_story(home).read_text())
    changed = [a["scene"] for a, b in zip(first_story["scenes"], second_story["scenes"]) if a["artifacts"] != b["artifacts"]]
    assert changed == [2]

    code, out, err = run("--home", h, "commit", "Lighthouse Keeper", "thunder", "--minutes", "15")
    assert code == 0, err
    assert "1 changed, 15 min" in out
    code, out, err = run("--home", h, "commit", "Lighthouse Keeper", "again")
    assert code == 2 and "nothing changed since version 2" in err

    code, out, err = run("--home", h, "log", "Lighthouse Keeper")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("v2  ") and "15 min" in lines[0] and lines[0].endswith("thunder  (scenes changed: 2)")
    assert lines[1].startswith("v1  ") and lines[1].endswith("first cut  (scenes changed: 1, 2, 3, 4)")

    code, out, err = run("--home", h, "diff", "Lighthouse Keeper", "1", "v2", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert [c["scene"] for c in result["changed"]] == [2] and result["same"] == [1, 3, 4]
    assert result["changed"][0]["before"] == first_story["scenes"][1]["artifacts"][0]
    assert result["changed"][0]["after"] == second_story["scenes"][1]["artifacts"][0]
    assert "storyboard" in result["hashes"]
    from PIL import Image

    with Image.open(result["sheet"]) as sheet:
        assert sheet.width > 2 * 256 and sheet.height > 4 * 256

    artifacts_before = sorted(p.name for p in (home / "artifacts").glob("*/lighthouse-keeper/*/image.png"))
    code, out, err = run("--home", h, "checkout", "Lighthouse Keeper", "1")
    assert code == 0, err
    assert out.startswith("v1 (first cut) is the current selection")
    current = _newest_story(home)
    restored = json.loads(current.read_text())
    assert restored["scenes"] == first_story["scenes"]
    assert restored["checkout"]["version"] == 1
    assert (current.parent / "contact-sheet.png").read_bytes() == first_sheet
    assert sorted(p.name for p in (home / "artifacts").glob("*/lighthouse-keeper/*/image.png")) == artifacts_before

    # the animatic reads the checked-out selection
    from echo_os.motion.animatic import find_story_json

    assert find_story_json(type("S", (), {"artifacts_dir": home / "artifacts"})(), "Lighthouse Keeper") == current


def test_versions_are_immutable_and_survive_a_new_catalog(story):
    home, _ = story
    h = str(home)
    assert run("--home", h, "commit", "Lighthouse Keeper", "first cut")[0] == 0
    db = sqlite3.connect(home / "artifacts" / "catalog.db")
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        db.execute("UPDATE versions SET message = 'x'")
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        db.execute("DELETE FROM versions")
    db.close()
    (home / "artifacts" / "catalog.db").unlink()
    for extra in ("catalog.db-wal", "catalog.db-shm"):
        (home / "artifacts" / extra).unlink(missing_ok=True)
    code, out, err = run("--home", h, "log", "Lighthouse Keeper")
    assert code == 0, err
    assert "first cut" in out


def test_bad_input_exits_2_and_writes_nothing(workspace, story):
    home, _ = story
    h = str(home)
    for args, expected in ((("commit", "Nobody", "x"), "has no rendered scenes"),
                           (("commit", "Lighthouse Keeper", "  "), "give a message"),
                           (("commit", "Lighthouse Keeper", "m", "--minutes", "-3"), "--minutes must be 0 or more"),
                           (("diff", "Lighthouse Keeper", "one", "2"), "not a version number"),
                           (("checkout", "Lighthouse Keeper", "7"), "has no version 7"),
                           (("log", "Lighthouse Keeper"), "no versions yet")):
        code, out, err = run("--home", h, *args)
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and expected in err, (args, err)
    assert not (home / "artifacts" / "versions").exists()


def test_checkout_refuses_to_lose_an_uncommitted_selection(story):
    home, folder = story
    h = str(home)
    assert run("--home", h, "commit", "Lighthouse Keeper", "first")[0] == 0
    csv = folder / "story.csv"
    csv.write_text(csv.read_text().replace("storm", "thunder", 1), encoding="utf-8")
    assert run("--home", h, "batch", "Lighthouse Keeper", str(csv), "--engine", "draft")[0] == 0
    before = _newest_story(home).read_bytes()
    code, out, err = run("--home", h, "checkout", "Lighthouse Keeper", "1")
    assert code == 2 and "is in no version; commit it first" in err
    assert _newest_story(home).read_bytes() == before
    assert run("--home", h, "checkout", "Lighthouse Keeper", "1", "--force")[0] == 0


def test_gallery_shows_the_versions(story):
    home, _ = story
    h = str(home)
    assert run("--home", h, "commit", "Lighthouse Keeper", "first cut", "--minutes", "30")[0] == 0
    code, out, err = run("--home", h, "gallery")
    assert code == 0, err
    text = Path(out.strip()).read_text(encoding="utf-8")
    data = json.loads(text.split('id="resonance-data">')[1].split("</script>")[0])
    assert data["versions"]["Lighthouse Keeper"] == [
        {"number": 1, "created": data["versions"]["Lighthouse Keeper"][0]["created"], "message": "first cut",
         "minutes": 30.0, "changed": [1, 2, 3, 4]}]
    assert 'class: "versions"' in text
