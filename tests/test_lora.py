"""LoRAs: models.toml `lora` entries and files, on the real pipeline (tiny SDXL, a tiny random LoRA)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from echo_os.engines.sdxl import SDXLEngine
from echo_os.render.requests import RenderRequest

TINY = dict(model="tiny", width=64, height=64, steps=2, cfg=5.0, device="cpu", seed=11)


@pytest.fixture(scope="module")
def tiny_lora(tiny_sdxl_dir, tmp_path_factory) -> Path:
    from tests.tiny_models import save_tiny_lora

    return save_tiny_lora(tiny_sdxl_dir / "unet", tmp_path_factory.mktemp("loras") / "keeper_style.safetensors")


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


def test_lora_changes_the_image_and_off_means_untouched(tiny_workspace, tiny_lora):
    from echo_os.engines.lora import resolve_lora

    engine = SDXLEngine(tiny_workspace, name="cpu", force_device="cpu")
    plain = RenderRequest(prompt="a keeper on a cliff", **TINY)
    lora = resolve_lora(tiny_workspace, str(tiny_lora), scale=1.0)
    [before] = engine.render([plain])
    [styled] = engine.render([plain.model_copy(update={"loras": (lora,)})])
    [zero] = engine.render([plain.model_copy(update={"loras": (lora.model_copy(update={"scale": 0.0}),)})])
    [after] = engine.render([plain])  # the LoRA stays loaded, but is off for requests without it
    assert np.abs(_pixels(before) - _pixels(styled)).max() > 10
    assert np.abs(_pixels(before) - _pixels(zero)).max() == 0
    assert np.abs(_pixels(before) - _pixels(after)).max() == 0
    assert plain.batch_key() != plain.model_copy(update={"loras": (lora,)}).batch_key()


def test_render_cli_with_a_lora_entry_records_and_replays(run_cli, tiny_workspace, tiny_lora):
    with open(tiny_workspace.models_toml, "a", encoding="utf-8") as handle:
        handle.write(f'\n[models.keeper-style]\ntype = "lora"\nfile = "{tiny_lora.as_posix()}"\n')
    home = str(tiny_workspace.home)
    code, out, err = run_cli("--home", home, "models", "verify", "keeper-style")
    assert code == 0 and "LoRA weights" in out, err + out
    code, out, err = run_cli("--home", home, "render", "a keeper on a cliff", "--model", "tiny", "--steps", "2",
                             "--size", "64x64", "--seed", "3", "--lora", "keeper-style:0.7", "--no-memory", "--json")
    assert code == 0, err
    [artifact] = json.loads(out)
    meta = json.loads((Path(artifact["path"]) / "meta.json").read_text())
    [lora] = meta["request"]["loras"]
    assert (lora["name"], lora["scale"], lora["path"]) == ("keeper-style", 0.7, str(tiny_lora))
    with Image.open(Path(artifact["path"]) / "image.png") as image:
        assert "LoRAs: \"keeper-style: 0.7 (sha256 " + lora["sha256"][:12] in image.text["parameters"]
    code, out, err = run_cli("--home", home, "replay", artifact["id"])
    assert code == 0 and "max pixel difference 0" in out, err


@pytest.mark.parametrize("spec,needle", [
    ("nowhere", "LoRA 'nowhere' is neither a models.toml entry nor a file"),
    ("tiny", "model 'tiny' (path"),
    ("{lora}:5", "the scale must be between 0 and 2, got 5"),
])
def test_bad_loras_are_one_line_and_exit_2(run_cli, tiny_workspace, tiny_lora, spec, needle):
    code, out, err = run_cli("--home", str(tiny_workspace.home), "render", "x", "--model", "tiny", "--size", "64x64",
                             "--lora", spec.format(lora=tiny_lora))
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not tiny_workspace.artifacts_dir.exists() or not list(tiny_workspace.artifacts_dir.rglob("image.png"))


def test_story_characters_get_their_lora(tiny_workspace, tiny_lora, tmp_path):
    """A bible `lora` (a path beside the bible) reaches the scenes with that character, and only them."""
    import shutil

    from echo_os.story.plan import PlanOptions, plan_story
    from echo_os.story.render import render_plan

    story = tmp_path / "story"
    story.mkdir()
    shutil.copy(tiny_lora, story / "keeper.safetensors")
    (story / "STORY_BIBLE.md").write_text(
        "---\ntitle: Keeper\nmodel: tiny\ndefaults: {steps: 2, cfg: 5, size: 64x64}\ncharacters:\n"
        "  keeper:\n    name: Elin\n    description: an old lighthouse keeper\n    seed: 7\n"
        "    lora: {name: keeper.safetensors, scale: 0.8}\n"
        "  boy:\n    name: Tam\n    description: a boy in a yellow coat\n    seed: 8\n---\nProse.\n",
        encoding="utf-8")
    (story / "story.csv").write_text("scene,description,characters\n1,Elin climbs the stairs,keeper\n"
                                     "2,Tam waits on the pier,boy\n", encoding="utf-8")
    plan = plan_story("Keeper", story / "story.csv", options=PlanOptions())
    result = render_plan(tiny_workspace, plan, ip_adapter=None, clip="none")
    first, second = (scene.artifacts[0].meta.request for scene in result.scenes)
    assert [(lora["name"], lora["scale"]) for lora in first["loras"]] == [("keeper.safetensors", 0.8)]
    assert Path(first["loras"][0]["path"]) == story / "keeper.safetensors"
    assert second["loras"] == []
    assert result.notes == []  # LoRAs are applied, so nothing is reported as left out


def test_a_lora_file_changed_since_the_request_is_refused(tiny_workspace, tiny_lora):
    from echo_os.engines.lora import resolve_lora
    from echo_os.errors import UsageError

    engine = SDXLEngine(tiny_workspace, name="cpu", force_device="cpu")
    recorded = resolve_lora(tiny_workspace, str(tiny_lora)).model_copy(update={"sha256": "0" * 64})
    request = RenderRequest(prompt="a keeper", **TINY).model_copy(update={"loras": (recorded,)})
    with pytest.raises(UsageError, match="changed since the request was made"):
        engine.render([request])
    gone = recorded.model_copy(update={"path": str(tiny_lora.with_name("moved.safetensors"))})
    with pytest.raises(UsageError, match="is not there any more"):
        engine.render([request.model_copy(update={"loras": (gone,)})])
