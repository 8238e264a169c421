"""`echo-os memory learn-from` (issue 28): a style learned from an artifact on the tiny model; the reference
image is applied to renders with --style NAME, and the learned words leave out the subject."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import run_cli as run
from tests.scorer_plugin import registered_fixed_scorer

PROMPT = "a red fox sitting in fresh snow, golden hour light, 35mm lens, watercolor painting, serene mood"


@pytest.fixture
def fixed_scorer():
    with registered_fixed_scorer() as scorer:
        yield scorer


@pytest.fixture(scope="module")
def learn_ws(tmp_path_factory, tiny_sdxl_dir):
    from echo_os.settings import Settings
    from tests.tiny_models import TINY_IP_ADAPTER_FILE, save_tiny_ip_adapter

    home = tmp_path_factory.mktemp("learn-ws")
    save_tiny_ip_adapter(home / "tiny-ip", tiny_sdxl_dir / "unet")
    (home / "models.toml").write_text(
        f'[models.tiny]\ntype = "sdxl"\npath = "{tiny_sdxl_dir.as_posix()}"\n\n'
        f'[models.tiny-ip]\ntype = "ip-adapter"\npath = "tiny-ip"\nweight_name = "{TINY_IP_ADAPTER_FILE}"\n',
        encoding="utf-8")
    return Settings(home=home)


def _render(home: str, *args: str, engine: str = "cpu") -> dict:
    code, out, err = run("--home", home, "render", *args, "--model", "tiny", "--engine", engine, "--size", "64x64",
                         "--steps", "2", "--seed", "5", "--project", "Learn", "--json")
    assert code == 0, err
    return json.loads(out)[0]


def _pixels(row: dict) -> np.ndarray:
    from PIL import Image

    with Image.open(Path(row["path"]) / "image.png") as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_learn_a_style_and_render_with_its_reference(learn_ws):
    home = str(learn_ws.home)
    source = _render(home, PROMPT, "--negative", "text, watermark", engine="draft")  # any image can be learned

    code, out, err = run("--home", home, "memory", "learn-from", source["id"], "--name", "snowlight", "--json")
    assert code == 0, err
    learned = json.loads(out)
    assert learned["phrases"] == ["golden hour light", "35mm lens", "watercolor painting", "serene mood"]
    assert learned["excluded"] == ["a red fox sitting in fresh snow"]
    assert "fox" not in learned["prompt"] and "snow" not in learned["prompt"]
    assert learned["prompt"].startswith("{prompt}, golden hour light, 35mm lens, watercolor painting, serene mood, "
                                        "palette of ")
    assert learned["negative"] == "text, watermark"
    assert learned["learned"]["sources"] == [source["id"]] and learned["learned"]["palette"]
    assert learned["reference"]["adapter"] == "tiny-ip" and learned["reference"]["scale"] == 0.5

    code, out, err = run("--home", home, "styles", "show", "snowlight", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["source"].startswith(f"learned from {source['id'][:12]} on ")
    assert "reference image" in shown["source"]

    # the same words without the image, to see what the reference does
    code, out, err = run("--home", home, "memory", "--learn-from", source["id"], "--name", "snowwords", "--no-reference")
    assert code == 2 and "go without" not in err  # --no-reference belongs to the subcommand
    code, out, err = run("--home", home, "memory", "learn-from", source["id"], "--name", "snowwords", "--no-reference")
    assert code == 0, err

    with_reference = _render(home, "a lighthouse on a cliff", "--style", "snowlight")
    words_only = _render(home, "a lighthouse on a cliff", "--style", "snowwords")
    meta = json.loads((Path(with_reference["path"]) / "meta.json").read_text())
    adapter = meta["request"]["ip_adapter"]
    assert adapter["model"] == "tiny-ip"
    assert adapter["references"][0]["name"] == "style:snowlight" and adapter["references"][0]["scale"] == 0.5
    assert adapter["references"][0]["images"][0]["sha256"] == learned["reference"]["sha256"]
    assert meta["request"]["style_name"] == "snowlight"
    assert np.abs(_pixels(with_reference) - _pixels(words_only)).max() > 10, "the reference image had no effect"
    # and the words are the same in both
    other = json.loads((Path(words_only["path"]) / "meta.json").read_text())
    assert other["request"]["style"] == meta["request"]["style"] and other["request"]["ip_adapter"] is None


def test_design_spellings_and_bad_input(learn_ws):
    home = str(learn_ws.home)
    source = _render(home, "a blue boat on a lake, moonlight, ink drawing", engine="draft")
    code, out, err = run("--home", home, "memory", "--learn-from", source["id"], "--name", "moonink")
    assert code == 0, err
    assert "style 'moonink' saved" in out and "left out (subject): a blue boat on a lake" in out
    before = learn_ws.styles_toml.read_bytes()
    for args, expected in ((("memory", "learn-from", "zz"), "not hexadecimal"),
                           (("memory", "learn-from", "0123456789abcdef"), "no artifact with id"),
                           (("memory", "learn-from", source["id"], "--name", "moonink"), "already in styles.toml"),
                           (("memory", "learn-from", source["id"], "--scale", "3"), "--scale must be from 0 to 2"),
                           (("memory", "learn-from", source["id"], "--ip-adapter", "nope"), "nope"),
                           (("memory", "--analyze", "--learn-from", source["id"]), "not both"),
                           (("memory", "--name", "x"), "--name names a style learned with --learn-from"),
                           (("style", "create", "bad\"name", "x"), "a style name is")):
        code, out, err = run("--home", home, *args)
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and expected in err, (args, err)
    assert learn_ws.styles_toml.read_bytes() == before

    code, out, err = run("--home", home, "style", "create", "harbour", "{prompt}, harbour at dawn, oil painting")
    assert code == 0, err
    code, out, err = run("--home", home, "styles", "show", "harbour", "--json")
    assert json.loads(out)["prompt"] == "{prompt}, harbour at dawn, oil painting"
    assert json.loads(out)["source"] == "styles.toml"


def test_palette_names_the_main_colours():
    from PIL import Image

    from echo_os.reflect.learn import image_palette

    image = Image.new("RGB", (40, 40), (20, 30, 80))  # navy
    image.paste((240, 175, 40), (0, 0, 40, 12))  # an amber band, 30%
    names = image_palette(image)
    assert [n for n, _ in names] == ["navy", "amber"]
    assert abs(names[0][1] - 0.7) < 0.01 and abs(names[1][1] - 0.3) < 0.01


@pytest.mark.slow  # ~1 min on 2 loaded cores; the draft-card tests in test_evolve.py check the loop's arithmetic
def test_evolve_on_the_tiny_model_uses_every_operator(learn_ws, fixed_scorer):
    """One round of four on the tiny model: a new seed, a prompt phrase, a refine and a learned style."""
    home = str(learn_ws.home)
    source = _render(home, "a harbour wall, moonlight, ink drawing", "--negative", "text")
    code, out, err = run("--home", home, "memory", "learn-from", source["id"], "--name", "wallink", "--replace")
    assert code == 0, err
    code, out, err = run("--home", home, "evolve", source["id"], "--rounds", "1", "--per-round", "4",
                         "--scorer", "fixed", "--strengths", "0.5", "--json")
    assert code == 0, err
    round_ = json.loads(out)["rounds"][0]
    assert [c["operator"] for c in round_["candidates"]] == ["seed", "prompt", "refine", "style"]
    metas = [json.loads((learn_ws.artifacts_dir / _row_path(learn_ws, c["id"]) / "meta.json").read_text())
             for c in round_["candidates"]]
    refine = metas[2]["request"]
    assert refine["init_image"]["artifact_id"] == source["id"] and refine["init_image"]["strength"] == 0.5
    styled = metas[3]["request"]
    assert styled["style_name"] in {"wallink", "snowlight", "snowwords", "moonink"}
    assert all(m["parent_id"] == source["id"] for m in metas)
    from tests.scorer_plugin import fixed_alignment

    assert [c["score"] for c in round_["candidates"]] == [round(fixed_alignment(c["id"]) / 100, 6)
                                                          for c in round_["candidates"]]


def _row_path(settings, artifact_id: str) -> str:
    from echo_os.artifacts.store import open_catalog

    with open_catalog(settings) as catalog:
        return catalog.get(artifact_id).path


def test_a_story_styled_with_a_learned_style_gets_its_reference(learn_ws, tmp_path):
    """`batch --style NAME` (and a bible's `style: NAME`): each scene's request carries the style's image."""
    from echo_os.engines.sdxl import SDXLEngine
    from echo_os.render.styles import resolve_style, style_table
    from echo_os.story import plan_prompt_list
    from echo_os.story.plan import PlanOptions
    from echo_os.story.render import scene_requests

    home = str(learn_ws.home)
    code, out, err = run("--home", home, "render", "a quay at night, moonlight, ink drawing", "--engine", "draft",
                         "--size", "64x64", "--seed", "3", "--project", "Learn", "--json")
    assert code == 0, err
    source = json.loads(out)[0]["id"]
    assert run("--home", home, "memory", "learn-from", source, "--name", "quayink", "--replace")[0] == 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a gull\na boat\n", encoding="utf-8")
    chosen = resolve_style(learn_ws, "quayink")
    plan = plan_prompt_list("Quay", prompts, options=PlanOptions(model="tiny", style=chosen.text, style_name=chosen.name,
                                                                  style_negative=chosen.negative,
                                                                  styles=style_table(learn_ws)))
    engine = SDXLEngine(learn_ws, name="cpu", force_device="cpu")
    requests = scene_requests(learn_ws, plan, "tiny-ip", engine)
    for request in requests:
        [reference] = request.ip_adapter.references
        assert reference.name == "style:quayink" and request.ip_adapter.model == "tiny-ip"
    assert all(r.ip_adapter is None for r in scene_requests(learn_ws, plan, None, engine))  # --ip-adapter none
