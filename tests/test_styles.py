"""Named styles: styles.toml, the built-ins, `echo-os styles`, A1111 / Fooocus imports, --style NAME."""

from __future__ import annotations

import json
from pathlib import Path

from echo_os.render.styles import expand_prompt, parse_style_file, read_workspace_styles


def test_expand_prompt_places_or_appends():
    assert expand_prompt("photo of {prompt}, 35mm", "a cat") == "photo of a cat, 35mm"
    assert expand_prompt("oil painting", "a cat") == "a cat, oil painting"
    assert expand_prompt("", "a cat") == "a cat"


def test_a1111_csv_with_bom_quotes_duplicate_and_missing_column(tmp_path):
    path = tmp_path / "styles.csv"
    # BOM; a quoted prompt holding a comma and doubled quotes; a duplicate name differing in case;
    # a row with no name; a row with neither prompt nor negative.
    path.write_bytes("\ufeffname,prompt,negative_prompt\r\n"
                     'Film,"{prompt}, 35mm film, ""kodak"" grain",blurry\r\n'
                     "film,second film,\r\n"
                     ",orphan prompt,\r\n"
                     "Empty,,\r\n"
                     "Sketch,pencil sketch,colour\r\n".encode("utf-8"))
    styles, skipped = parse_style_file(path)
    assert [(s.name, s.prompt, s.negative) for s in styles] == [
        ("Film", '{prompt}, 35mm film, "kodak" grain', "blurry"), ("Sketch", "pencil sketch", "colour")]
    assert skipped == ["line 3: 'film' repeats 'Film' (names are unique ignoring case)", "line 4: no name",
                       "line 5: 'Empty' has neither a prompt nor a negative prompt"]

    # A1111 files without the negative_prompt column still import; without prompt they are refused.
    no_negative = tmp_path / "old.csv"
    no_negative.write_text("name,prompt\nInk,ink drawing\n", encoding="utf-8")
    assert [(s.name, s.negative) for s in parse_style_file(no_negative)[0]] == [("Ink", "")]


def test_fooocus_json(tmp_path):
    path = tmp_path / "sdxl_styles.json"
    path.write_text(json.dumps([
        {"name": "Fooocus Sharp", "prompt": "cinematic still {prompt} . sharp", "negative_prompt": "blurry"},
        {"name": "fooocus sharp", "prompt": "again"},
        {"name": "No Negative", "prompt": "{prompt}, plain"},
        "not an object",
    ]), encoding="utf-8")
    styles, skipped = parse_style_file(path)
    assert [(s.name, s.prompt, s.negative) for s in styles] == [
        ("Fooocus Sharp", "cinematic still {prompt} . sharp", "blurry"), ("No Negative", "{prompt}, plain", "")]
    assert skipped == ["item 2: 'fooocus sharp' repeats 'Fooocus Sharp' (names are unique ignoring case)",
                       "item 4: no name"]


def test_styles_cli_add_show_list_import_rm(run_cli, workspace, tmp_path):
    home = str(workspace.home)
    code, out, err = run_cli("--home", home, "styles", "add", "dusk", "--prompt", "{prompt} at dusk, long shadows",
                             "--negative", "noon")
    assert code == 0, err
    assert read_workspace_styles(workspace)["dusk"].prompt == "{prompt} at dusk, long shadows"
    code, out, err = run_cli("--home", home, "styles", "add", "DUSK", "--prompt", "x")
    assert code == 2 and "already in styles.toml" in err
    code, out, err = run_cli("--home", home, "styles", "show", "Dusk", "--json")
    assert code == 0 and json.loads(out)["example"] == "a lighthouse at dusk at dusk, long shadows"
    code, out, err = run_cli("--home", home, "styles", "show", "Dusk")  # readable text without --json
    assert code == 0 and out.splitlines() == [
        "style:    dusk", "source:   styles.toml", "prompt:   {prompt} at dusk, long shadows", "negative: noon",
        "example:  'a lighthouse at dusk' becomes 'a lighthouse at dusk at dusk, long shadows'",
        "          with the negative 'noon'"]
    csv_path = tmp_path / "styles.csv"
    csv_path.write_text("name,prompt,negative_prompt\nDusk,other,\nFilm,35mm film,\n", encoding="utf-8")
    code, out, err = run_cli("--home", home, "styles", "import", str(csv_path))
    assert code == 0, err
    assert "imported 1 style(s)" in out and "'Dusk': already in styles.toml" in err
    code, out, err = run_cli("--home", home, "styles", "list", "--json")
    names = {s["name"]: s["builtin"] for s in json.loads(out)}
    assert names["dusk"] is False and names["Film"] is False and names["cinematic"] is True
    code, out, err = run_cli("--home", home, "styles", "rm", "film")
    assert code == 0 and "Film" not in {s.name for s in read_workspace_styles(workspace).values()}
    code, out, err = run_cli("--home", home, "styles", "rm", "cinematic")
    assert code == 2 and "built-in" in err
    code, out, err = run_cli("--home", home, "styles", "import", str(tmp_path / "missing.csv"))
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_render_with_a_named_style_records_name_and_expanded_text(run_cli, workspace):
    home = str(workspace.home)
    Path(home, "styles.toml").write_text('[styles.dusk]\nprompt = "{prompt} at dusk"\nnegative = "noon"\n',
                                         encoding="utf-8")
    code, out, err = run_cli("--home", home, "render", "a harbour", "--engine", "draft", "--style", "DUSK",
                             "--negative", "people", "--size", "64x64", "--no-memory", "--json")
    assert code == 0, err
    meta = json.loads((Path(json.loads(out)[0]["path"]) / "meta.json").read_text())
    assert meta["style_name"] == "dusk" and meta["style"] == "{prompt} at dusk"
    assert meta["full_prompt"] == "a harbour at dusk" and meta["negative_prompt"] == "people, noon"
    # free text keeps working, and is recorded without a name
    code, out, err = run_cli("--home", home, "render", "a harbour", "--engine", "draft", "--style", "digital art",
                             "--size", "64x64", "--no-memory", "--json")
    meta = json.loads((Path(json.loads(out)[0]["path"]) / "meta.json").read_text())
    assert meta["style_name"] is None and meta["full_prompt"] == "a harbour, digital art"


def test_unknown_style_exits_2_naming_the_option(run_cli, workspace):
    home = str(workspace.home)
    code, out, err = run_cli("--home", home, "render", "a harbour", "--engine", "draft", "--style", "nosuch")
    assert code == 2 and "unknown style 'nosuch'" in err and "cinematic" in err
    assert len(err.strip().splitlines()) == 1
    assert not Path(home, "artifacts").exists() or not list(Path(home, "artifacts").glob("*/*/*/meta.json"))


def test_bible_style_name_and_batch_style_option(run_cli, workspace, tmp_path):
    home = str(workspace.home)
    Path(home, "styles.toml").write_text('[styles.dusk]\nprompt = "{prompt} at dusk"\nnegative = "noon"\n',
                                         encoding="utf-8")
    story = tmp_path / "story"
    story.mkdir()
    (story / "STORY_BIBLE.md").write_text("---\ntitle: Harbour\nstyle: Dusk\n---\n", encoding="utf-8")
    (story / "story.csv").write_text("scene,description,negative\n1,a harbour,people\n", encoding="utf-8")
    code, out, err = run_cli("--home", home, "batch", "harbour", str(story / "story.csv"), "--engine", "draft",
                             "--dry-run", "--json")
    assert code == 0, err
    [scene] = json.loads(out)["scenes"]
    request = scene["request"]
    assert (request["style_name"], request["style"], request["negative_prompt"]) == ("dusk", "{prompt} at dusk",
                                                                                     "people, noon")
    # the tokens are counted on what the model reads (the styled prompt and negative), and the human dry
    # run shows that prompt
    unstyled = tmp_path / "unstyled"
    unstyled.mkdir()
    (unstyled / "STORY_BIBLE.md").write_text("---\ntitle: Harbour\n---\n", encoding="utf-8")
    (unstyled / "story.csv").write_text("scene,description,negative\n1,a harbour,people\n", encoding="utf-8")
    plain = json.loads(run_cli("--home", home, "batch", "harbour", str(unstyled / "story.csv"), "--engine", "draft",
                               "--dry-run", "--json")[1])["scenes"][0]
    assert scene["tokens"]["prompt"] == plain["tokens"]["prompt"] + 2  # "at dusk"
    assert scene["tokens"]["negative"] == plain["tokens"]["negative"] + 2  # ", noon"
    code, out, err = run_cli("--home", home, "batch", "harbour", str(story / "story.csv"), "--engine", "draft",
                             "--dry-run")
    assert code == 0 and "prompt:    a harbour at dusk  (style dusk)" in out, out
    # --style overrides the bible's; an unknown name in the bible is a problem naming it
    code, out, err = run_cli("--home", home, "batch", "harbour", str(story / "story.csv"), "--engine", "draft",
                             "--dry-run", "--json", "--style", "noir")
    assert code == 0, err
    assert json.loads(out)["scenes"][0]["request"]["style_name"] == "noir"
    (story / "STORY_BIBLE.md").write_text("---\ntitle: Harbour\nstyle: nosuch\n---\n", encoding="utf-8")
    code, out, err = run_cli("--home", home, "batch", "harbour", str(story / "story.csv"), "--engine", "draft",
                             "--dry-run")
    assert code == 2 and "style 'nosuch' is not a named style here" in err
