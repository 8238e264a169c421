"""Story input: bible, storyboard, prompt lists, composition, seeds, planning, `batch --dry-run`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from echo_os.story import (
    COMPOSITION_ORDER,
    PlanOptions,
    StoryError,
    clip_token_count,
    compose_scene_prompt,
    load_bible,
    plan_prompt_list,
    plan_story,
    slugify,
)
from echo_os.story.slug import to_ascii
from echo_os.story.storyboard import MAX_SCENES
from echo_os.story.tokens import estimate_clip_tokens

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "prompts" / "lighthouse-keeper"


BIBLE = """\
---
title: Test Story
model: sdxl
defaults:
  steps: 20
  cfg: 5.5
  size: 1024x768
  scheduler: euler_a
style:
  prompt: film photo, 35mm
  negative: cartoon, text
characters:
  keeper:
    name: Elias
    description: an old keeper with a grey beard
    seed: 1234
  girl:
    name: Mara
    description: a girl in a yellow raincoat
    seed: 99
locations:
  lighthouse: a white lighthouse on a headland
props:
  lamp: a brass storm lamp
  book: a leather logbook
---
# Test Story

Prose that is kept but never parsed: characters: [nonsense
"""

HEADER = "scene,description,characters,location,camera,lighting,time_of_day,mood,props,seed,count,negative,steps,cfg,size"


def write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def story(tmp_path: Path, rows: str, bible: str = BIBLE, header: str = HEADER) -> Path:
    write(tmp_path, "STORY_BIBLE.md", bible)
    return write(tmp_path, "story.csv", header + "\n" + rows)


def problems_of(error: StoryError) -> list[str]:
    return [str(problem) for problem in error.problems]


# ---- storyboard parsing ----------------------------------------------------------------------------

def test_bom_crlf_quoted_commas_and_doubled_quotes(tmp_path):
    text = ("scene,description,camera\r\n"
            '1,"he says ""hello"", then waves, twice","wide, low"\r\n'
            '2,"a line\r\nbreak inside",close-up\r\n')
    write(tmp_path, "STORY_BIBLE.md", BIBLE)
    csv_path = write(tmp_path, "story.csv", b"\xef\xbb\xbf" + text.encode("utf-8"))
    plan = plan_story("p", csv_path)
    first, second = plan.scenes
    assert first.row.description == 'he says "hello", then waves, twice'
    assert first.row.camera == "wide, low"
    assert first.request.story.description == 'he says "hello", then waves, twice'
    assert second.row.description == "a line\r\nbreak inside"
    assert "a line break inside" in second.request.prompt  # whitespace runs become one space


def test_turkish_text_survives_and_slugs_are_ascii(tmp_path):
    description = "İhtiyar bekçi ışığı yakıyor, şafak söküyor; güçlü rüzgâr, ağır dalgalar"
    csv_path = story(tmp_path, f'1,"{description}",keeper,lighthouse,geniş açı,altın ışık,sabah,huzurlu,lamp,,,,,,\n')
    plan = plan_story("Türkçe Proje", csv_path)
    scene = plan.scenes[0]
    assert description in scene.request.prompt
    assert "geniş açı" in scene.request.prompt and "altın ışık" in scene.request.prompt
    assert scene.request.story.description == description
    assert scene.request.story.camera == "geniş açı"
    assert scene.request.project == "Türkçe Proje"
    assert scene.slug.isascii()
    assert scene.slug == "ihtiyar-bekci-isigi-yakiyor-safak-sokuyor"
    dumped = json.dumps(scene.request.model_dump(mode="json"), ensure_ascii=False)
    assert description in dumped


def test_slugify():
    assert slugify("İĞÜŞÖÇ ığüşöç") == "igusoc-igusoc"
    assert to_ascii("Çağrı Işık") == "Cagri Isik"
    assert slugify("Crème brûlée à Øresund, Straße") == "creme-brulee-a-oresund-strasse"
    assert slugify("🌊🌊") == "scene"
    long = slugify("word " * 40)
    assert len(long) <= 48 and not long.endswith("-") and long.startswith("word-word")
    assert slugify("snake_case Title") == "snake_case-title"


def test_every_problem_reported_together_with_row_and_column(tmp_path):
    bible = BIBLE.replace("    seed: 99\n", "    seed: 99\n    reference: refs/mara.png\n    eyes: green\n")
    bible = bible.replace("title: Test Story\n", "title: Test Story\ncolour: blue\n")
    rows = ("1,fine scene,keeper,lighthouse,,,,,,,,,,,\n"
            "2,unknown ids,keeper;bob,moon,,,,,ghost,,,,,,\n"
            "1,duplicate scene number,,,,,,,,,,,,,\n"
            "4,bad numbers,,,,,,,,abc,0,,-3,hot,100x100\n"
            "5,,,,,,,,,,,,,,\n"
            "x,bad scene number,,,,,,,,,,,,,\n")
    csv_path = story(tmp_path, rows, bible=bible)
    with pytest.raises(StoryError) as caught:
        plan_story("p", csv_path)
    lines = problems_of(caught.value)
    expected = [
        "STORY_BIBLE.md, key characters.girl.eyes: unknown key (allowed: name, description, seed, reference, "
        "ip_adapter_scale, lora)",
        "STORY_BIBLE.md, key colour: unknown key (allowed: title, model, defaults, style, characters, locations, props)",
        "story.csv row 3, column characters: unknown character id 'bob' (known: girl, keeper)",
        "story.csv row 3, column location: unknown location id 'moon' (known: lighthouse)",
        "story.csv row 3, column props: unknown prop id 'ghost' (known: book, lamp)",
        "story.csv row 4, column scene: scene 1 is also on row 2; scene numbers must be unique",
        "story.csv row 5, column seed: seed must be a whole number, got 'abc' (leave it empty to use the seed policy)",
        "story.csv row 5, column count: count must be between 1 and 64, got 0",
        "story.csv row 5, column steps: steps must be between 1 and 200, got -3",
        "story.csv row 5, column cfg: cfg must be a number such as 6.5, got 'hot'",
        "story.csv row 5, column size: size sides must be multiples of 8 between 8 and 4096, got 100x100",
        "story.csv row 6, column description: the description is empty; say what happens in the scene",
        "story.csv row 7, column scene: scene must be a whole number, got 'x'",
    ]
    # The bible has wrong keys, yet the storyboard's ids are still checked against the ids it defines.
    assert lines == expected
    assert str(caught.value).splitlines()[0].endswith("problems in the story files; nothing was rendered:")

    # Unknown-key-free bible, missing reference image: the ids are checked against it too.
    bible = BIBLE.replace("    seed: 99\n", "    seed: 99\n    reference: refs/mara.png\n")
    csv_path = story(tmp_path, rows, bible=bible)
    with pytest.raises(StoryError) as caught:
        plan_story("p", csv_path)
    lines = problems_of(caught.value)
    assert lines[0].startswith("STORY_BIBLE.md, key characters.girl.reference[0]: reference image 'refs/mara.png' "
                               "not found")
    assert lines[1:] == expected[2:]
    assert str(caught.value).splitlines()[0] == f"{len(lines)} problems in the story files; nothing was rendered:"


def test_cli_reports_problems_in_one_block_exit_2(tmp_path, capsys):
    from echo_os.cli import main

    csv_path = story(tmp_path, "1,a,bob,,,,,,,,,,,,\n2,b,,moon,,,,,,,,,,,\n")
    with pytest.raises(SystemExit) as exited:
        main(["--home", str(tmp_path), "batch", "p", str(csv_path)])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    assert captured.err.splitlines() == [
        "Error: 2 problems in the story files; nothing was rendered:",
        "  story.csv row 2, column characters: unknown character id 'bob' (known: girl, keeper)",
        "  story.csv row 3, column location: unknown location id 'moon' (known: lighthouse)",
    ]


def test_header_and_shape_problems(tmp_path):
    csv_path = story(tmp_path, "1,a,b\n", header="scene,description,lense")
    with pytest.raises(StoryError) as caught:
        plan_story("p", csv_path)
    assert problems_of(caught.value)[0].startswith("story.csv row 1, column lense: unknown column (known: scene,")

    csv_path = story(tmp_path, "1,he waves, then smiles\n", header="scene,description")
    with pytest.raises(StoryError, match="row 2: the row has 3 cells but the header names 2 columns; put quotes"):
        plan_story("p", csv_path)

    csv_path = story(tmp_path, "1,a,,\n2,b,,stray\n", header="scene,description,,")
    with pytest.raises(StoryError) as caught:
        plan_story("p", csv_path)
    assert problems_of(caught.value) == [
        "story.csv row 3: cell 4 is under a column with no name in the header; name the column or move the text"]

    csv_path = story(tmp_path, "1;a\n", header="scene;description")
    with pytest.raises(StoryError, match="must name the columns scene and description.*separated by commas"):
        plan_story("p", csv_path)


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8 text"),
    (b"scene,description\n1,a\x00b\n", "NUL byte"),
    (b'{"scenes": [1, 2, 3]}', "must name the columns scene and description"),
    (b'scene,description\n1,"unclosed quote\n', "not valid CSV"),
    (b'scene,description\n1,"quoted"trailing\n', "not valid CSV"),
    (b"", "the file is empty"),
    (b"scene,description\n", "header but no scenes"),
])
def test_a_csv_that_is_not_a_csv(tmp_path, content, message):
    csv_path = write(tmp_path, "story.csv", content)
    with pytest.raises(StoryError, match=message):
        plan_story("p", csv_path)


def test_bible_beside_csv_is_found_and_missing_bible_is_explained(tmp_path):
    csv_path = story(tmp_path, "1,a,keeper,,,,,,,,,,,,\n")
    plan = plan_story("p", csv_path)
    assert plan.bible_path == (tmp_path / "STORY_BIBLE.md").resolve()
    (tmp_path / "STORY_BIBLE.md").unlink()
    with pytest.raises(StoryError, match="no story bible: pass --bible PATH or put STORY_BIBLE.md beside story.csv"):
        plan_story("p", csv_path)
    with pytest.raises(StoryError, match=r"STORY_BIBLE.md: file not found"):
        plan_story("p", csv_path, bible=tmp_path / "STORY_BIBLE.md")
    # No bible and no ids: a plain storyboard plans, titled by the project.
    csv_path = write(tmp_path, "plain.csv", "scene,description\n2,a boat\n1,a harbour\n")
    plan = plan_story("Harbour", csv_path)
    assert [scene.scene for scene in plan.scenes] == [1, 2]
    assert plan.title == "Harbour" and plan.bible_hash is None


# ---- the bible -------------------------------------------------------------------------------------

def test_bible_parses_and_hashes_the_whole_file(tmp_path):
    import hashlib

    path = write(tmp_path, "STORY_BIBLE.md", BIBLE)
    bible = load_bible(path)
    assert bible.title == "Test Story"
    assert bible.sha256 == hashlib.sha256(BIBLE.encode()).hexdigest()
    assert bible.prose.startswith("# Test Story")
    assert bible.front.characters["keeper"].seed == 1234


@pytest.mark.parametrize("front, message", [
    ("title: x\ncharacters:\n  keeper:\n    name: E\n    description: d\n    seed: lots\n",
     "key characters.keeper.seed: Input should be a valid integer"),
    ("title: x\ncharacters:\n  keeper:\n    name: E\n    description: d\n",
     "key characters.keeper.seed: missing required key"),
    ("model: sdxl\n", "key title: missing required key"),
    ("title: x\ndefaults:\n  size: big\n", "key defaults.size: size must look like WIDTHxHEIGHT"),
    ("title: x\ndefaults:\n  scheduler: fast\n", "key defaults.scheduler: unknown scheduler 'fast'"),
    ("title: x\ndefaults:\n  stepz: 3\n", "key defaults.stepz: unknown key (allowed: steps, cfg, size, scheduler, seed)"),
    ("title: x\nstyle:\n  prompt: a\n  negativ: b\n", "key style.negativ: unknown key (allowed: prompt, negative, name)"),
    ("title: x\ncharacters:\n  keeper:\n    name: E\n    description: d\n    seed: 1\n    lora: {name: a, weight: 2}\n",
     "key characters.keeper.lora.weight: unknown key (allowed: name, scale)"),
    ("title: x\nlocations:\n  'bad id;x': somewhere\n", "key locations: id 'bad id;x' is not allowed"),
    ("title: x\ntitle: y\n", "line 3: duplicate key 'title'"),
    ("title: x\nlocations:\n  no: somewhere\n", "key locations.False: the id False is not text"),
    ("title: [unclosed\n", "YAML error in the front matter"),
    ("- a\n- b\n", "must be YAML keys and values, not a list"),
    ("", "the front matter is empty"),
])
def test_bible_problems_name_the_key_path(tmp_path, front, message):
    path = write(tmp_path, "STORY_BIBLE.md", f"---\n{front}---\nprose\n")
    with pytest.raises(StoryError) as caught:
        load_bible(path)
    assert message in str(caught.value)


def test_bible_needs_front_matter(tmp_path):
    path = write(tmp_path, "STORY_BIBLE.md", "# Just prose\n")
    with pytest.raises(StoryError, match="does not start with YAML front matter"):
        load_bible(path)
    path = write(tmp_path, "STORY_BIBLE.md", "---\ntitle: x\n")
    with pytest.raises(StoryError, match="front matter is not closed"):
        load_bible(path)


def test_reference_images_resolve_relative_to_the_bible(tmp_path):
    from PIL import Image

    (tmp_path / "refs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "refs" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "refs" / "b.png")
    bible = BIBLE.replace("    seed: 1234\n", "    seed: 1234\n    reference: [refs/a.png, refs/b.png]\n"
                                               "    ip_adapter_scale: 0.6\n    lora: keeper-lora\n")
    csv_path = story(tmp_path, "1,a,keeper;girl,,,,,,,,,,,,\n", bible=bible)
    plan = plan_story("p", csv_path)
    keeper, girl = plan.scenes[0].cast
    assert keeper.references == ((tmp_path / "refs/a.png").resolve(), (tmp_path / "refs/b.png").resolve())
    assert keeper.ip_adapter_scale == 0.6
    assert keeper.lora.name == "keeper-lora" and keeper.lora.scale == 1.0
    assert girl.references == () and girl.ip_adapter_scale is None


# ---- hostile input ---------------------------------------------------------------------------------

def _rejected_quickly(callable_, message, seconds=60.0):
    # Not a speed target: a generous bound that still catches an exponential blow-up (a billion-laughs
    # document would run for hours), so a loaded machine does not fail it.
    started = time.perf_counter()
    with pytest.raises(StoryError, match=message):
        callable_()
    assert time.perf_counter() - started < seconds


def test_yaml_alias_bomb_is_refused(tmp_path):
    lines = ["title: bomb", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for index in range(1, 9):
        previous = chr(ord("a") + index - 1)
        lines.append(f"{chr(ord('a') + index)}: &{chr(ord('a') + index)} [{', '.join(['*' + previous] * 9)}]")
    path = write(tmp_path, "STORY_BIBLE.md", "---\n" + "\n".join(lines) + "\n---\n")
    _rejected_quickly(lambda: load_bible(path), r"line 3: YAML anchors and aliases \(& and \*\) are not allowed")


def test_deeply_nested_front_matter_is_refused(tmp_path):
    path = write(tmp_path, "STORY_BIBLE.md", "---\ntitle: deep\nx: " + "[" * 5000 + "]" * 5000 + "\n---\n")
    _rejected_quickly(lambda: load_bible(path), "nests deeper than 16 levels")
    nested = "title: deep\n" + "".join("  " * depth + f"k{depth}:\n" for depth in range(40))
    path = write(tmp_path, "STORY_BIBLE.md", "---\n" + nested + "---\n")
    _rejected_quickly(lambda: load_bible(path), "nests deeper than 16 levels")


def test_huge_front_matter_and_node_count_are_refused(tmp_path):
    path = write(tmp_path, "STORY_BIBLE.md", "---\ntitle: big\nx: '" + "a" * 70_000 + "'\n---\n")
    _rejected_quickly(lambda: load_bible(path), "larger than 65,536 bytes|within 65,536 bytes")
    path = write(tmp_path, "STORY_BIBLE.md", "---\ntitle: many\nx: [" + "1," * 12_000 + "1]\n---\n")
    _rejected_quickly(lambda: load_bible(path), "more than 10000 YAML values")


def test_100k_rows_are_refused(tmp_path):
    rows = "".join(f"{n},scene number {n}\n" for n in range(1, 100_001))
    csv_path = write(tmp_path, "story.csv", "scene,description\n" + rows)
    _rejected_quickly(lambda: plan_story("p", csv_path),
                      f"row {MAX_SCENES + 2}: more than 10,000 scenes \\(the limit\\)")


def test_10mb_cell_is_refused(tmp_path):
    csv_path = write(tmp_path, "story.csv", "scene,description\n1,\"" + "a" * 10_000_000 + "\"\n2,fine\n")
    _rejected_quickly(lambda: plan_story("p", csv_path), "row 2: a cell is larger than 65,536 bytes")
    # Between our cell limit and the csv module's own field limit:
    csv_path = write(tmp_path, "story.csv", "scene,description\n1,\"" + "b" * 100_000 + "\"\n2,fine\n")
    _rejected_quickly(lambda: plan_story("p", csv_path),
                      "row 2, column description: the cell is 100,000 bytes; the limit is 65,536")


def test_an_oversized_scene_cell_is_one_problem(tmp_path):
    csv_path = write(tmp_path, "story.csv", "scene,description\n\"" + "7" * 70_000 + "\",a walk\n")
    with pytest.raises(StoryError) as raised:
        plan_story("p", csv_path)
    lines = [str(problem) for problem in raised.value.problems]
    assert lines == ["story.csv row 2, column scene: the cell is 70,000 bytes; the limit is 65,536"], lines


def test_hostile_input_through_the_cli_exits_2(tmp_path, capsys):
    from echo_os.cli import main

    write(tmp_path, "STORY_BIBLE.md", "---\ntitle: t\na: &a [1]\nb: *a\n---\n")
    csv_path = write(tmp_path, "story.csv", "scene,description\n1,a\n")
    with pytest.raises(SystemExit) as exited:
        main(["--home", str(tmp_path), "batch", "p", str(csv_path), "--dry-run"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "anchors and aliases" in err and "Traceback" not in err


# ---- composition, seeds, settings ------------------------------------------------------------------

def test_composition_order(tmp_path):
    csv_path = story(tmp_path, '1,"he lights the lamp.",girl;keeper,lighthouse,wide shot,warm light,dusk,'
                               'hopeful,lamp;book,,,"blurry, extra limbs",,,\n')
    plan = plan_story("p", csv_path)
    request = plan.scenes[0].request
    assert request.prompt == ("film photo, 35mm, a girl in a yellow raincoat, an old keeper with a grey beard, "
                              "a white lighthouse on a headland, he lights the lamp, a brass storm lamp, "
                              "a leather logbook, wide shot, warm light, dusk, hopeful")
    assert request.negative_prompt == "cartoon, text, blurry, extra limbs"
    assert request.style == ""
    assert COMPOSITION_ORDER == ("style", "character", "location", "scene", "prop", "camera", "lighting",
                                 "time_of_day", "mood")
    composed = compose_scene_prompt(plan.scenes[0].row, load_bible(tmp_path / "STORY_BIBLE.md"))
    assert [part.kind for part in composed.parts] == ["style", "character", "character", "location", "scene",
                                                      "prop", "prop", "camera", "lighting", "time_of_day", "mood"]
    story_fields = request.story
    assert story_fields.characters == ("girl", "keeper") and story_fields.props == ("lamp", "book")
    assert story_fields.location == "lighthouse" and story_fields.mood == "hopeful"
    assert story_fields.bible_hash == plan.bible_hash and len(plan.bible_hash) == 64


def test_seed_policy(tmp_path):
    rows = ("1,pinned,keeper,,,,,,,77,,,,,\n"
            "2,main character is the first listed,girl;keeper,,,,,,,,,,,,\n"
            "3,no characters,,lighthouse,,,,,,,,,,,\n"
            "4,several images,keeper,,,,,,,,3,,,,\n")
    csv_path = story(tmp_path, rows)
    scenes = plan_story("p", csv_path).scenes
    assert (scenes[0].seed.value, scenes[0].seed.provenance) == (77, "csv")
    assert scenes[1].seed.value == 99 + 1000 * 2
    assert scenes[1].seed.provenance == "derived from character girl seed 99 + 1000*scene 2"
    from echo_os.story.plan import text_seed
    assert scenes[2].seed.value == (text_seed("Test Story") + 3000) % 2**32
    assert scenes[2].seed.source == "story"
    assert scenes[3].request.seeds == [1234 + 4000, 1234 + 4001, 1234 + 4002]
    assert [scene.request.seed for scene in scenes] == [scene.seed.value for scene in scenes]

    cli = plan_story("p", csv_path, options=PlanOptions(seed=5)).scenes
    assert cli[0].seed.value == 77  # a seed in the file stays pinned
    assert [scene.seed.value for scene in cli[1:]] == [2005, 3005, 4005]
    assert cli[1].seed.provenance == "derived from --seed 5 + 1000*scene 2"

    bible = BIBLE.replace("  scheduler: euler_a\n", "  scheduler: euler_a\n  seed: 4294967000\n")
    csv_path = story(tmp_path, rows, bible=bible)
    scene3 = plan_story("p", csv_path).scenes[2]
    assert scene3.seed.value == (4294967000 + 3000) % 2**32
    assert scene3.seed.provenance == "derived from defaults.seed 4294967000 + 1000*scene 3"
    # Deterministic: planning twice gives the same seeds.
    assert [s.seed for s in plan_story("p", csv_path).scenes] == [s.seed for s in plan_story("p", csv_path).scenes]


def test_settings_precedence(tmp_path):
    csv_path = story(tmp_path, "1,a,,,,,,,,,,,12,3.5,512x512\n2,b,,,,,,,,,,,,,\n")
    first, second = plan_story("p", csv_path).scenes
    assert (first.request.steps, first.request.cfg, first.request.size) == (12, 3.5, "512x512")
    assert (second.request.steps, second.request.cfg, second.request.size) == (20, 5.5, "1024x768")
    assert second.request.scheduler == "euler_a" and second.request.model == "sdxl"
    options = PlanOptions(steps=4, cfg=1.0, size="256x256", scheduler="ddim", model="other")
    for scene in plan_story("p", csv_path, options=options).scenes:
        request = scene.request
        assert (request.steps, request.cfg, request.size, request.scheduler, request.model) == (
            4, 1.0, "256x256", "ddim", "other")


def test_bad_options_are_one_line_usage_errors(tmp_path):
    from echo_os.errors import UsageError

    csv_path = story(tmp_path, "1,a,,,,,,,,,,,,,\n")
    with pytest.raises(UsageError, match="invalid --steps"):
        plan_story("p", csv_path, options=PlanOptions(steps=0))
    with pytest.raises(UsageError, match="--size must look like WIDTHxHEIGHT"):
        plan_story("p", csv_path, options=PlanOptions(size="big"))
    with pytest.raises(UsageError, match="^unknown engine 'warp'; choose one of"):
        plan_story("p", csv_path, options=PlanOptions(engine="warp"))


# ---- tokens ----------------------------------------------------------------------------------------

def test_token_counts_and_warnings(tmp_path):
    assert clip_token_count("a red fox").count == 3
    assert clip_token_count("a red fox").approximate
    assert str(clip_token_count("a, b")) == "~3"
    # Never undercounts a typical prompt badly: the real CLIP BPE gives 22 tokens for this one.
    assert estimate_clip_tokens("an astronaut riding a horse on mars, photorealistic, hdr, octane render, "
                                "unreal engine 5, cinematic composition") >= 22

    class FakeTokenizer:
        def __call__(self, text, add_special_tokens=True, truncation=True):
            assert add_special_tokens is False and truncation is False
            return {"input_ids": list(range(len(text.split())))}

    assert clip_token_count("one two three", FakeTokenizer()).count == 3
    assert not clip_token_count("one two three", FakeTokenizer()).approximate

    long_description = " ".join(["a lonely weathered lighthouse"] * 25)
    csv_path = story(tmp_path, f"1,{long_description},,,,,,,,,,,,,\n2,short,,,,,,,,,,,,,\n")
    plan = plan_story("p", csv_path)
    assert plan.scenes[0].tokens.prompt > 75 and plan.scenes[0].tokens.approximate
    assert len(plan.warnings) == 1
    assert plan.warnings[0].startswith("scene 1: the prompt is ~")
    assert "CLIP tokens by estimate; SDXL reads 75 (77 with start and end) and drops the rest" in plan.warnings[0]
    assert long_description in plan.scenes[0].request.prompt  # warned, never truncated

    exact = plan_story("p", csv_path, tokenizer_loader=lambda model: FakeTokenizer())
    assert not exact.scenes[1].tokens.approximate
    assert exact.scenes[1].tokens.prompt == len(exact.scenes[1].request.prompt.split())


# ---- prompt lists ----------------------------------------------------------------------------------

def test_prompt_list_with_per_line_options(tmp_path):
    path = write(tmp_path, "prompts.txt",
                 "# a comment\n"
                 "a lighthouse at dawn, oil painting\n"
                 "\n"
                 "a red fox in the snow --seed 1234 --steps 20\n"
                 '--prompt "a harbour at night" --negative_prompt "blurry, text" --seed 7 --cfg_scale 5\n'
                 "İstanbul'da sabah --width 512 --height 768 --batch_size 2\n")
    plan = plan_prompt_list("sketches", path)
    first, fox, harbour, istanbul = plan.scenes
    assert first.request.prompt == "a lighthouse at dawn, oil painting"
    assert first.seed.provenance == "derived from sha256 of the prompt"
    assert (fox.request.prompt, fox.request.seed, fox.request.steps) == ("a red fox in the snow", 1234, 20)
    assert fox.seed.provenance == "prompts.txt line 4 --seed"
    assert harbour.request.prompt == "a harbour at night"
    assert harbour.request.negative_prompt == "blurry, text"
    assert (harbour.request.seed, harbour.request.cfg) == (7, 5.0)
    assert istanbul.request.prompt == "İstanbul'da sabah" and istanbul.slug == "istanbul-da-sabah"
    assert (istanbul.request.size, istanbul.request.count) == ("512x768", 2)
    assert [scene.scene for scene in plan.scenes] == [1, 2, 3, 4]
    assert plan.kind == "prompts" and plan.bible_hash is None

    with_base = plan_prompt_list("sketches", path, options=PlanOptions(seed=10))
    assert with_base.scenes[0].seed.value == 1010 and with_base.scenes[1].seed.value == 1234


def test_prompt_list_problems_reported_together(tmp_path):
    path = write(tmp_path, "prompts.txt",
                 "fine\n"
                 "a cat --sampler_name euler\n"
                 "a dog --seed lots --steps 999\n"
                 '--prompt "unclosed\n'
                 "--seed 3\n"
                 "a bird --steps\n")
    with pytest.raises(StoryError) as caught:
        plan_prompt_list("p", path)
    assert problems_of(caught.value) == [
        "prompts.txt line 2: unknown option --sampler_name (known: --prompt, --negative_prompt, --seed, "
        "--steps, --cfg_scale, --width, --height, --batch_size)",
        "prompts.txt line 3: seed must be a whole number, got 'lots' (leave it empty to use the seed policy)",
        "prompts.txt line 3: steps must be between 1 and 200, got 999",
        "prompts.txt line 4: cannot read the options (No closing quotation); check the quotes",
        "prompts.txt line 5: the prompt is empty",
        "prompts.txt line 6: --steps needs a value",
    ]


# ---- the command -----------------------------------------------------------------------------------

def test_dry_run_on_the_lighthouse_example(tmp_path):
    from echo_os.cli import cli

    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "batch", "Lighthouse Keeper",
                                      str(EXAMPLE / "story.csv"), "--bible", str(EXAMPLE / "STORY_BIBLE.md"),
                                      "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "\nLighthouse Keeper: 4 scenes, 4 images (dry run: nothing rendered)\n" in out  # after the engine line
    for number, slug in enumerate(["golden-morning", "storm-approach", "storm-climax", "calm-dawn"], start=1):
        assert f"scene {number}  {slug}\n" in out
        assert f"  seed:      {1868 + 1000 * number} (derived from character keeper seed 1868 + 1000*scene {number})" in out
    assert out.count("  prompt:    documentary realism, 35mm prime lens, film grain, a 68-year-old keeper with a grey "
                     "beard and a navy peacoat, ") == 4
    assert "  negative:  cartoon, illustration" in out
    assert "tokens:    prompt ~" in out and "/75" in out
    assert "1216x832, 30 steps, cfg 6, dpmpp_2m_karras, model sdxl" in out
    assert "warning" not in out  # the shipped example fits the CLIP window
    for light in ("golden", "threatening", "storm light", "dawn light"):
        assert light in out
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").iterdir())


def test_dry_run_json_and_bible_found_beside_the_csv(tmp_path):
    from echo_os.cli import cli

    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "batch", "Lighthouse Keeper",
                                      str(EXAMPLE / "story.csv"), "--dry-run", "--json", "--steps", "8"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)  # the engine line goes to stderr
    assert plan["title"] == "Lighthouse Keeper" and plan["kind"] == "storyboard"
    assert len(plan["bible_hash"]) == 64
    scenes = plan["scenes"]
    assert [scene["row"]["scene"] for scene in scenes] == [1, 2, 3, 4]
    assert all(scene["request"]["steps"] == 8 for scene in scenes)
    assert scenes[2]["request"]["story"]["slug"] == "storm-climax"
    assert scenes[2]["request"]["story"]["characters"] == ["keeper"]
    assert scenes[3]["request"]["story"]["props"] == ["logbook"]
    assert scenes[0]["seed"] == {"value": 2868, "source": "character",
                                 "provenance": "derived from character keeper seed 1868 + 1000*scene 1"}


def test_batch_without_dry_run_hands_the_plan_to_render_plan(tmp_path, monkeypatch):
    from echo_os.cli import batch as batch_module
    from echo_os.cli import cli

    seen = {}

    def fake_render_plan(settings, plan, *, batch_size=None, json_output=False, ip_adapter=None, clip=None,
                         **rest):
        seen.update(settings=settings, plan=plan, batch_size=batch_size, ip_adapter=ip_adapter, clip=clip)

    monkeypatch.setattr(batch_module, "render_plan", fake_render_plan)
    prompts = write(tmp_path, "prompts.txt", "a fox\na hare --seed 3\n")
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "batch", "p", f"@{prompts}", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert [request.prompt for request in seen["plan"].requests] == ["a fox", "a hare"]
    assert seen["batch_size"] == 2 and seen["settings"].home == tmp_path.resolve()
    assert seen["ip_adapter"] == "ip-adapter-sdxl" and seen["clip"] is None


def test_bible_with_a_prompt_list_is_a_usage_error(tmp_path):
    from echo_os.cli import cli

    prompts = write(tmp_path, "prompts.txt", "a fox\n")
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "batch", "p", f"@{prompts}", "--bible", "x.md"])
    assert result.exit_code != 0
    assert "--bible is for a story CSV" in str(result.exception)


def test_local_clip_tokenizer_gives_exact_counts(tmp_path, tiny_sdxl_dir):
    from echo_os.cli import cli
    from echo_os.story import load_clip_tokenizer

    tokenizer_dir = tmp_path / "tiny-model" / "tokenizer"
    tokenizer_dir.mkdir(parents=True)
    vocab = ["l", "o", "w", "e", "r", "s", "t", "i", "d", "n", "lo", "l</w>", "w</w>", "r</w>", "t</w>", "low</w>",
             "er</w>", "lowest</w>", "newer</w>", "wider", "<unk>", "<|startoftext|>", "<|endoftext|>"]
    (tokenizer_dir / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(vocab)}))
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\nl o\nlo w</w>\ne r</w>\n")
    assert load_clip_tokenizer(str(tmp_path / "nowhere")) is None
    tokenizer = load_clip_tokenizer(str(tmp_path / "tiny-model"))
    count = clip_token_count("low lower", tokenizer)
    assert not count.approximate
    assert count.count == 4  # low</w> lo w er</w>: the tokenizer's own split (an estimate says 2)

    # A dry run checks the model as the real run would, so the CLI is given a registered model (a models.toml
    # name, resolved to its folder for the tokenizer: issue 11), here the tiny SDXL.
    (tmp_path / "models.toml").write_text(f'[models.tiny]\ntype = "sdxl"\npath = "{tiny_sdxl_dir.as_posix()}"\n')
    count = clip_token_count("low lower", load_clip_tokenizer(str(tiny_sdxl_dir)))
    assert not count.approximate
    prompts = write(tmp_path, "prompts.txt", "low lower\n")
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "batch", "p", f"@{prompts}", "--dry-run",
                                      "--model", "tiny"])
    assert result.exit_code == 0, result.output
    assert f"tokens:    prompt {count.count}/75, negative 0/75\n" in result.output
