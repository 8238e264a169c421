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
    code, out, err = run_cli("--home", home, "styles", "show", "Dusk")
    assert code == 0 and json.loads(out)["example"] == "a lighthouse at dusk at dusk, long shadows"
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


# ---- red-team findings: the same text rules as prompts, bounded imports ----------------------------------

def test_the_api_refuses_a_style_with_control_characters_or_a_hidden_name(workspace):
    """POST /api/styles accepted control characters in a prompt (the style was then unusable: every
    prompt made with it is refused) and NUL or right-to-left-override characters in names."""
    import asyncio

    from tests.api_helpers import api_client

    async def go():
        async with api_client(workspace, start_worker=False) as (client, _):
            for body, field in (({"name": "bell", "prompt": "{prompt}\x07\x1b]0;pwned\x07"}, "prompt"),
                                ({"name": "neg", "prompt": "x", "negative": "a\x00b"}, "negative"),
                                ({"name": "a\x00b", "prompt": "x"}, "name"),
                                ({"name": "evil\u202egnp.exe", "prompt": "x"}, "name"),
                                ({"name": "zero\u200bwidth", "prompt": "x"}, "name")):
                response = await client.post("/api/styles", json=body)
                assert response.status_code == 422, (body, response.text)
                detail = response.json()["detail"][0]
                assert detail["loc"] == ["body", field] and "U+" in detail["msg"], detail
            names = [style["name"] for style in (await client.get("/api/styles")).json()]
            return names

    names = asyncio.run(go())
    assert not any(not name.isprintable() for name in names)
    assert not workspace.styles_toml.exists()


def test_a_hand_edited_styles_toml_with_a_control_character_is_one_line(run_cli, workspace):
    workspace.styles_toml.write_text('[styles.bad]\nprompt = "x\\u001b[31m"\n', encoding="utf-8")
    code, out, err = run_cli("--home", str(workspace.home), "styles", "list")
    assert code == 2 and "styles.toml" in err and "U+001B" in err and "\x1b" not in err, err
    assert len(err.strip().splitlines()) == 1


def test_styles_import_is_bounded_and_never_stores_python_text(run_cli, workspace, tmp_path):
    """`styles import` gave a generic error for a 12 MB field, deep JSON or a 5000-digit number, stored
    lists, objects and NaN as Python text ("['a']"), imported NUL names and had no row limit. Each bad
    file is one line naming it; each bad row is skipped and named."""
    from echo_os.render.styles import MAX_IMPORT_ROWS

    home = str(workspace.home)
    cases = {
        "huge.csv": ("name,prompt\nbig," + "x" * (12 * 1024 * 1024) + "\n", "larger than 5 MB"),
        "wide.csv": ("name,prompt\nwide," + "x" * 200_000 + "\n", "line 2: field larger than field limit"),
        "deep.json": ("[" * 100_000 + "]" * 100_000, "nests JSON too deeply"),
        "digits.json": ('[{"name": "n", "prompt": ' + "9" * 5000 + "}]", "cannot be read"),
    }
    for name, (text, said) in cases.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        code, out, err = run_cli("--home", home, "styles", "import", str(path))
        assert code == 2 and said in err and len(err.strip().splitlines()) == 1, (name, err[:300])
        assert not workspace.styles_toml.exists()
    odd = tmp_path / "odd.json"
    odd.write_text('[{"name": "list", "prompt": ["a"]}, {"name": "obj", "prompt": {"a": 1}},'
                   ' {"name": "nan", "prompt": NaN}, {"name": "nul\\u0000name", "prompt": "x"},'
                   ' {"name": "bell", "prompt": "x\\u0007"}, {"name": "ok", "prompt": "{prompt}, fine"}]',
                   encoding="utf-8")
    code, out, err = run_cli("--home", home, "styles", "import", str(odd), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["added"] == ["ok"] and len(report["skipped"]) == 5, report
    assert "prompt is a JSON list, not text" in report["skipped"][0]
    assert "not finite" in report["skipped"][2] and "U+0000" in report["skipped"][3]
    assert "U+0007" in report["skipped"][4]
    assert set(read_workspace_styles(workspace)) == {"ok"}
    many = tmp_path / "many.csv"
    many.write_text("name,prompt\n" + "".join(f"s{n},p{n}\n" for n in range(MAX_IMPORT_ROWS + 300)), encoding="utf-8")
    code, out, err = run_cli("--home", home, "styles", "import", str(many), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert len(report["added"]) == MAX_IMPORT_ROWS
    assert any("300 rows after the first" in line for line in report["skipped"]), report["skipped"][:3]
    code, out, err = run_cli("--home", home, "render", "x", "--engine", "draft", "--style", "nosuchstyle")
    assert code == 2 and len(err) < 2000 and "more" in err, len(err)
