"""`echo-os memory` on draft artifacts with the real all-MiniLM-L6-v2 (and a tiny random CLIP for images)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ("a lighthouse in a storm", "a cat sleeping on a sofa", "a red sports car")


@pytest.fixture(scope="session")
def tiny_clip_folder(tmp_path_factory) -> Path:
    from tests.tiny_models import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip-cli") / "clip")


def render(run_cli, home: Path, prompt: str, *extra: str) -> list[dict]:
    code, out, err = run_cli("--home", str(home), "render", prompt, "--engine", "draft", "--size", "256x256",
                             "--seed", "1", "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def memory_cli(run_cli, home: Path, *args: str) -> tuple[int, str, str]:
    return run_cli("--home", str(home), "memory", *args)


def index_ids(home: Path) -> dict[str, set[int]]:
    """What the saved indexes hold, read without reconciling."""
    from echo_os.memory.artifacts import open_memory
    from echo_os.settings import Settings

    with open_memory(Settings(home=home), reconcile=False) as memory:
        return {e.name: {int(i) for i in memory.memory.index(e).ids} for e in memory.memory.embedders}


def catalog_nums(home: Path) -> set[int]:
    from echo_os.artifacts.catalog import Catalog
    from echo_os.settings import Settings

    with Catalog(Settings(home=home).catalog_path) as catalog:
        return catalog.nums()


@pytest.fixture
def story_home(workspace, run_cli) -> Path:
    """Three draft artifacts in project default, one in project Harbor."""
    for prompt in PROMPTS:
        render(run_cli, workspace.home, prompt)
    render(run_cli, workspace.home, "a lighthouse keeper at the harbor", "--project", "Harbor")
    return workspace.home


@pytest.fixture
def indexed_home(story_home, run_cli) -> Path:
    """story_home after one memory command has embedded the draft cards."""
    code, _, err = memory_cli(run_cli, story_home, "stats")
    assert code == 0, err
    return story_home


def test_saved_artifacts_are_embedded_and_the_lighthouse_ranks_first(story_home, run_cli) -> None:
    # Draft cards are instant, so their embedding waits for the next memory command, which adds them.
    assert index_ids(story_home)["minilm"] == set()
    code, out, err = memory_cli(run_cli, story_home, "search", "stormy sea beacon", "-k", "3", "--project", "default",
                                "--json")
    assert code == 0, err
    hits = json.loads(out)
    assert [h["prompt"] for h in hits][0] == "a lighthouse in a storm"
    assert len(hits) == 3 and all(h["project"] == "default" for h in hits)
    assert {"id", "score", "path", "prompt"} <= set(hits[0]) and Path(hits[0]["path"]).is_file()

    code, out, _ = memory_cli(run_cli, story_home, "search", "stormy sea beacon", "--project", "Harbor")
    assert code == 0 and "a lighthouse keeper at the harbor" in out and "sofa" not in out
    assert index_ids(story_home)["minilm"] == catalog_nums(story_home)

    code, out, _ = memory_cli(run_cli, story_home, "similar", hits[0]["id"][:12], "-k", "1", "--json")
    assert code == 0 and json.loads(out)[0]["prompt"] == "a lighthouse keeper at the harbor"

    code, out, _ = memory_cli(run_cli, story_home, "stats", "--json")
    stats = json.loads(out)
    assert stats["catalog"] == 4 and stats["indexes"][0] == {**stats["indexes"][0], "embedder": "minilm", "count": 4}
    assert "clip" in stats["skipped"]


def test_bad_input_is_one_line_and_exit_2(story_home, run_cli, tmp_path) -> None:
    for args in (("similar", "ffffffffffffffff"), ("search", "--image", str(tmp_path / "none.png")),
                 ("search",), ("search", "--image", str(REPO / "README.md")), ("search", "x", "--since", "soon")):
        code, out, err = memory_cli(run_cli, story_home, *args)
        assert code == 2, (args, err)
        assert err.count("\n") == 1 and err.startswith("Error:"), err


def test_drift_is_repaired_on_open_and_reindex_rebuilds(indexed_home, run_cli) -> None:
    story_home = indexed_home
    from echo_os.artifacts.catalog import artifact_num

    artifacts = sorted(p.parent for p in (story_home / "artifacts").glob("*/*/*/meta.json"))
    gone = json.loads((artifacts[0] / "meta.json").read_text())["id"]
    shutil.rmtree(artifacts[0])
    assert run_cli("--home", str(story_home), "artifacts", "reindex")[0] == 0
    code, out, err = memory_cli(run_cli, story_home, "stats", "--json")
    assert code == 0 and "dropped 1 stale" in err
    assert json.loads(out)["indexes"][0]["count"] == 3
    assert artifact_num(gone) not in index_ids(story_home)["minilm"]

    code, out, err = memory_cli(run_cli, story_home, "reindex")
    assert code == 0 and "minilm 3" in out
    assert index_ids(story_home)["minilm"] == catalog_nums(story_home)


def test_corrupt_or_truncated_index_is_rebuilt_on_open(indexed_home, run_cli) -> None:
    story_home = indexed_home
    folder = story_home / "artifacts" / "memory" / "minilm"
    for path in list(folder.glob("index-*.faiss")) + list(folder.glob("vectors-*.npy")):
        path.write_bytes(path.read_bytes()[:40])  # truncated: neither can be repaired from the other
    code, out, err = memory_cli(run_cli, story_home, "search", "stormy sea beacon", "-k", "1", "--json")
    assert code == 0, err
    assert "rebuilt" in err and json.loads(out)[0]["prompt"].startswith("a lighthouse")
    assert index_ids(story_home)["minilm"] == catalog_nums(story_home)

    (folder / "manifest.json").write_text("{not json")
    code, out, err = memory_cli(run_cli, story_home, "stats", "--json")
    assert code == 0 and "rebuilt" in err and json.loads(out)["indexes"][0]["count"] == 4


def test_clip_entry_enables_image_search_and_dupes(workspace, run_cli, tiny_clip_folder) -> None:
    home = workspace.home
    workspace.models_toml.write_text(f'[models.clip]\ntype = "clip"\npath = "{tiny_clip_folder.as_posix()}"\n')
    first = render(run_cli, home, "a lighthouse in a storm")[0]
    second = render(run_cli, home, "a lighthouse in a storm", "--again")[0]  # same prompt and seed: same pixels
    render(run_cli, home, "a red sports car")
    assert first["id"] != second["id"]  # the PNGs differ (meta chunk with the time), the pixels do not
    assert set(index_ids(home)) == {"minilm", "clip"}

    code, out, err = memory_cli(run_cli, home, "dupes", "--json")
    assert code == 0, err
    pairs = {frozenset((p["a"], p["b"])): p["score"] for p in json.loads(out)}
    assert pairs[frozenset((first["id"], second["id"]))] >= 0.999

    code, out, err = memory_cli(run_cli, home, "search", "--image", first["image"], "-k", "2", "--json")
    assert code == 0, err
    assert {h["id"] for h in json.loads(out)} == {first["id"], second["id"]}
    code, out, _ = memory_cli(run_cli, home, "similar", first["id"], "-k", "1", "--json")
    assert json.loads(out)[0]["id"] == second["id"]


def _png(path: Path, colour: tuple[int, int, int], chunks: dict[str, str]) -> Path:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), colour).save(path, pnginfo=info)
    return path


def test_import_reads_a1111_comfyui_and_invokeai_chunks(workspace, run_cli, tmp_path) -> None:
    source = tmp_path / "old-images"
    _png(source / "a1111.png", (10, 20, 30), {"parameters": (
        "a lighthouse in a storm, dramatic\nNegative prompt: blurry\n"
        "Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234, Size: 64x48, Model: juggernaut")})
    comfy = {"3": {"class_type": "KSampler", "inputs": {"seed": 77, "steps": 20, "cfg": 7.0, "sampler_name": "euler",
                                                        "scheduler": "normal", "positive": ["6", 0],
                                                        "negative": ["7", 0], "model": ["4", 0]}},
             "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl_base.safetensors"}},
             "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red sports car on a coast road",
                                                               "clip": ["4", 1]}},
             "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "lowres", "clip": ["4", 1]}}}
    _png(source / "comfy" / "ComfyUI_0001.png", (200, 30, 30), {"prompt": json.dumps(comfy)})
    invoke = {"positive_prompt": "a cat sleeping on a sofa", "negative_prompt": "", "seed": 9, "steps": 30,
              "cfg_scale": 5.0, "width": 64, "height": 48, "scheduler": "euler", "model": {"name": "sdxl-base"}}
    _png(source / "invoke" / "x.png", (240, 240, 200), {"invokeai_metadata": json.dumps(invoke)})
    _png(source / "plain.png", (0, 0, 0), {})
    (source / "notes.png").write_text("not an image")

    code, out, err = memory_cli(run_cli, workspace.home, "import", str(source), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["by_tool"] == {"a1111": 1, "comfyui": 1, "invokeai": 1, "unknown": 1}
    assert report["imported"] == 4 and report["unreadable"] == 1
    sha = hashlib.sha256((source / "a1111.png").read_bytes()).hexdigest()
    assert sha in report["ids"]

    code, out, _ = run_cli("--home", str(workspace.home), "artifacts", "show", sha[:16])
    meta = json.loads(out)
    assert (meta["engine"]["name"], meta["seed"], meta["steps"], meta["cfg"]) == ("import:a1111", 1234, 25, 6.5)
    assert meta["model"]["name"] == "juggernaut" and meta["imported"]["source_path"].endswith("a1111.png")
    assert (Path(meta["path"]) / "image.png").read_bytes() == (source / "a1111.png").read_bytes()

    code, out, _ = memory_cli(run_cli, workspace.home, "search", "automobile on the coast", "-k", "1", "--json")
    assert json.loads(out)[0]["prompt"] == "a red sports car on a coast road"
    code, out, _ = memory_cli(run_cli, workspace.home, "search", "kitten napping", "-k", "1", "--project",
                              "imported", "--json")
    assert json.loads(out)[0]["engine"] == "import:invokeai"

    code, out, _ = memory_cli(run_cli, workspace.home, "import", str(source))
    assert code == 0 and "imported 0 images" in out and "4 already imported" in out


@pytest.mark.slow
def test_two_processes_rendering_at_once_lose_nothing(tiny_workspace, run_cli) -> None:
    workspace = tiny_workspace
    env = dict(os.environ, PYTHONPATH=str(REPO))
    commands = [[sys.executable, "-m", "echo_os", "--home", str(workspace.home), "render", prompt, "--model",
                 "tiny", "--size", "64x64", "--steps", "2", "--count", "3", "--seed", "5"]
                for prompt in ("a lighthouse in a storm", "a red sports car")]
    processes = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for c in commands]
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    nums = catalog_nums(workspace.home)
    assert len(nums) == 6
    code, _, err = run_cli("--home", str(workspace.home), "memory", "stats")
    assert code == 0, err
    assert index_ids(workspace.home)["minilm"] == nums  # the next memory command embedded both processes' images


def test_diffusion_renders_are_embedded_by_the_next_memory_command(tiny_workspace, run_cli) -> None:
    """Not on the render path (issue 11): the render saves, `memory stats` embeds, nothing reported as repaired."""
    code, _, err = run_cli("--home", str(tiny_workspace.home), "render", "a lighthouse in a storm", "--model", "tiny",
                           "--size", "64x64", "--steps", "2", "--count", "2")
    assert code == 0, err
    assert not (tiny_workspace.memory_dir / "minilm").exists()
    code, _, err = run_cli("--home", str(tiny_workspace.home), "memory", "stats")
    assert code == 0 and "repaired" not in err, err
    nums = catalog_nums(tiny_workspace.home)
    assert len(nums) == 2 and index_ids(tiny_workspace.home)["minilm"] == nums


def test_import_reports_progress_and_the_bars_draw(workspace, tmp_path) -> None:
    import io

    from echo_os.cli.progress import StageBars
    from echo_os.memory.importer import import_folder

    source = tmp_path / "pngs"
    for i in range(3):
        _png(source / f"{i}.png", (i * 60, 10, 10), {"parameters": f"image {i}\nSteps: 20, Seed: {i}, Size: 64x48"})
    calls = []
    report = import_folder(workspace, source, progress=lambda *call: calls.append(call))
    assert report.imported == 3
    assert calls[0] == ("copy", 0, 3) and ("copy", 3, 3) in calls and calls[-1] == ("minilm", 3, 3)

    screen = io.StringIO()
    with StageBars(unit="image", labels={"copy": "importing"}, file=screen, enabled=True) as bars:
        for call in calls:
            bars(*call)
        assert [(bar.n, bar.total) for bar in bars.bars.values()] == [(3, 3), (3, 3)]
    assert "importing:" in screen.getvalue() and "minilm:" in screen.getvalue()
