"""Hostile files: bible references that are not images, PNG bombs in `memory import`, broken weights."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from PIL import Image

from tests.api_helpers import api_client
from tests.test_story import BIBLE, HEADER, story

ROWS = "1,a,keeper,,,,,,,,,,,,\n"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _bible_with_reference(reference: str) -> str:
    return BIBLE.replace("    seed: 1234\n", f"    seed: 1234\n    reference: {reference}\n")


def _hostile_reference(tmp_path: Path, kind: str) -> str:
    if kind == "passwd":
        return "/etc/passwd"
    if kind == "dev-zero":
        return "/dev/zero"
    if kind == "symlink":
        os.symlink("/etc/passwd", tmp_path / "keeper.png")
        return "keeper.png"
    if kind == "fifo":
        os.mkfifo(tmp_path / "keeper.png")
        return "keeper.png"
    if kind == "text":
        (tmp_path / "keeper.png").write_text("root:x:0:0:root:/root:/bin/bash\n", encoding="utf-8")
        return "keeper.png"
    if kind == "truncated":  # a valid header, the pixels cut short: only a full decode finds it
        Image.new("RGB", (64, 64), (9, 80, 200)).save(tmp_path / "keeper.png")
        data = (tmp_path / "keeper.png").read_bytes()
        (tmp_path / "keeper.png").write_bytes(data[:len(data) // 2])
        return "keeper.png"
    raise AssertionError(kind)


KINDS = ["passwd", "symlink", "fifo", "dev-zero", "text", "truncated"]
NEEDLES = {"passwd": "outside", "symlink": "outside", "dev-zero": "outside", "fifo": "not a regular file",
           "text": "not an image", "truncated": "truncated"}


def _run_with_deadline(target, seconds: float = 60):
    """Run target() in a thread; fail (instead of hanging the suite) if it blocks, as on a FIFO."""
    box: dict = {}

    def run():
        try:
            box["value"] = target()
        except BaseException as error:  # noqa: BLE001 - handed to the test thread, which re-raises it
            box["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "planning blocked on the reference file"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.mark.parametrize("kind", KINDS)
def test_cli_refuses_a_reference_that_is_not_a_readable_image(run_cli, tiny_workspace, tmp_path, kind, monkeypatch):
    story_dir = tmp_path / "story"
    story_dir.mkdir()
    reference = _hostile_reference(story_dir, kind)
    csv_path = story(story_dir, ROWS, bible=_bible_with_reference(reference))
    rendered = []
    import echo_os.story.render as story_render

    # Refused while planning: nothing reaches the renderer (where the model would load).
    monkeypatch.setattr(story_render, "render_plan", lambda *args, **kwargs: rendered.append(1))
    code, out, err = _run_with_deadline(lambda: run_cli("--home", str(tiny_workspace.home), "batch", "p",
                                                        str(csv_path), "--model", "tiny"))
    assert code == 2, err
    assert "reference image" in err and NEEDLES[kind] in err and "Traceback" not in err
    assert not rendered
    assert not list(tiny_workspace.artifacts_dir.glob("*/*/*/image.png"))


def test_a_truncated_reference_is_refused_by_the_dry_run(run_cli, tiny_workspace, tmp_path):
    """Red-team finding: a truncated PNG passed `--dry-run` (its header reads fine) and failed in the engine
    with "image file is truncated", naming no file. The check decodes the whole image."""
    story_dir = tmp_path / "story"
    story_dir.mkdir()
    csv_path = story(story_dir, ROWS, bible=_bible_with_reference(_hostile_reference(story_dir, "truncated")))
    code, out, err = run_cli("--home", str(tiny_workspace.home), "batch", "p", str(csv_path), "--model", "tiny",
                             "--dry-run")
    assert code == 2 and "keeper.png" in err and "truncated" in err and "Traceback" not in err, err


def test_refine_decodes_the_whole_parent_image(run_cli, workspace):
    """Refine checks the parent's PNG by decoding it whole: a cut file is one line before any engine runs."""
    import json

    code, out, err = run_cli("--home", str(workspace.home), "render", "a boat", "--engine", "draft", "--size",
                             "64x64", "--json")
    assert code == 0, err
    [parent] = json.loads(out)
    image = Path(parent["image"])
    image.write_bytes(image.read_bytes()[:-200])
    code, out, err = run_cli("--home", str(workspace.home), "refine", parent["id"], "--engine", "draft",
                             "--strength", "0.5")
    assert code == 2 and "truncated" in err and len(err.strip().splitlines()) == 1, err


def test_references_next_to_the_bible_or_in_the_workspace_are_accepted(tmp_path, workspace):
    from echo_os.story import plan_story

    story_dir = tmp_path / "elsewhere"
    story_dir.mkdir()
    Image.new("RGB", (16, 16)).save(story_dir / "keeper.png")
    Image.new("RGB", (16, 16)).save(workspace.home / "girl.png")
    bible = _bible_with_reference("keeper.png").replace(
        "    seed: 99\n", f"    seed: 99\n    reference: {workspace.home / 'girl.png'}\n")
    csv_path = story(story_dir, "1,a,keeper;girl,,,,,,,,,,,,\n", bible=bible)
    plan = plan_story("p", csv_path, workspace=workspace.home)
    assert [len(member.references) for member in plan.scenes[0].cast] == [1, 1]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["passwd", "dev-zero", "text", "truncated"])
async def test_api_refuses_the_same_references_with_a_422_on_bible(workspace, kind, tmp_path):
    reference = _hostile_reference(workspace.home, kind)
    if kind in ("text", "truncated"):
        reference = str(workspace.home / reference)
    body = {"project": "p", "storyboard": HEADER + "\n" + ROWS, "bible": _bible_with_reference(reference),
            "engine": "draft"}
    async with api_client(workspace, start_worker=False) as (client, _):
        response = await client.post("/api/batch", json=body)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert any("bible" in error["loc"] for error in detail), detail
        # refused as a reference image (decoded whole), not later for the engine's sake
        assert any("reference image is missing, unreadable" in error["msg"] for error in detail), detail
        assert (await client.get("/api/jobs")).json()["items"] == []


# ---- item 9: hostile PNGs in `memory import` -----------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny file whose header claims width x height pixels (a decompression bomb's header)."""
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _chunk(b"IEND", b""))


def _small_png(path: Path, prompt: str, **text) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", f"{prompt}\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 16x16")
    for key, value in text.items():
        info.add_text(key, value, zip=True)
    Image.new("RGB", (16, 16), "teal").save(path, pnginfo=info)


def test_memory_import_skips_and_reports_hostile_pngs_and_imports_the_rest(workspace, tmp_path):
    from echo_os.memory.importer import import_folder

    folder = tmp_path / "incoming"
    folder.mkdir()
    _small_png(folder / "a-good.png", "a quiet harbour")
    (folder / "b-bomb.png").write_bytes(_bomb_png())
    _small_png(folder / "c-ztxt.png", "huge comment", comment="x" * (20 * 1024 * 1024))
    (folder / "d-not-a-png.png").write_bytes(b"GIF89a nothing here")
    _small_png(folder / "e-good.png", "a red kite")
    report = import_folder(workspace, folder, embed=False)
    assert report.imported == 2 and report.unreadable == 3
    assert [Path(path).name for path, _ in report.problems] == ["b-bomb.png", "c-ztxt.png", "d-not-a-png.png"]
    reasons = dict((Path(path).name, reason) for path, reason in report.problems)
    assert "30000x30000" in reasons["b-bomb.png"] or "DecompressionBomb" in reasons["b-bomb.png"]
    assert "too large" in reasons["c-ztxt.png"].lower()
    from echo_os.artifacts.store import open_catalog

    with open_catalog(workspace) as catalog:
        assert sorted(row.prompt for row in catalog.query()) == ["a quiet harbour", "a red kite"]


def _png_with_parameters(path: Path, parameters: str) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)  # tEXt, uncompressed: Pillow's 1 MB zTXt limit does not apply
    Image.new("RGB", (16, 16), "navy").save(path, pnginfo=info)


def test_outside_metadata_is_parsed_within_bounds(run_cli, workspace, tmp_path):
    """Red-team finding: a 3 MB `parameters` chunk hung `memory import` (a quadratic regex: nothing after
    it was imported), and `Seed: 99999999999999999999999999` aborted the import with OverflowError and
    left a folder without a catalog row, after which `artifacts reindex` failed every time. Each file is
    read within bounds; the import goes on; reindex lists everything."""
    import json

    folder = tmp_path / "incoming"
    folder.mkdir()
    _png_with_parameters(folder / "a-huge.png", "a lighthouse " * 240_000)  # 3.1 MB, one line, no colon
    _png_with_parameters(folder / "b-seed.png", "a harbour\nSteps: 20, Sampler: Euler, CFG scale: 7, "
                                                 "Seed: 99999999999999999999999999, Size: 16x16")
    _png_with_parameters(folder / "c-size.png", "a kite\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 3, "
                                                 "Size: 99999999999999999999999x16")
    _small_png(folder / "d-good.png", "a red kite")
    # In a process of its own with a deadline: a regex holds the GIL, so a thread could not be given up on.
    report = json.loads(_python_with_deadline(
        "import json, sys; from echo_os.settings import Settings; from echo_os.memory.importer import import_folder; "
        "from pathlib import Path; "
        "r = import_folder(Settings(home=Path(sys.argv[1])), Path(sys.argv[2]), embed=False); "
        "print(json.dumps(r.as_dict()))", str(workspace.home), str(folder)))
    assert report["imported"] == 4 and report["unreadable"] == 0, report
    code, out, err = run_cli("--home", str(workspace.home), "artifacts", "reindex")
    assert code == 0, err
    code, out, err = run_cli("--home", str(workspace.home), "artifacts", "list", "--json")
    rows = json.loads(out)
    assert len(rows) == 4, rows
    by_prompt = {row["prompt"][:12]: row for row in rows}
    assert by_prompt["a harbour"]["seed"] == -1  # out of range: unknown, not an abort
    assert by_prompt["a red kite"]["seed"] == 5


def _python_with_deadline(code: str, *args: str, seconds: float = 120) -> str:
    """stdout of `python -c code args`, failing (the process killed) when it runs past `seconds`."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    try:
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=seconds,
                              env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {seconds} s (a parse that does not scale)")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_a1111_parameter_pattern_is_linear():
    """The pattern alone, on a long line with no colon: bounded keys keep it linear (it took hours)."""
    out = _python_with_deadline("from echo_os.memory.pngmeta import _PARAM_RE; "
                                "print(len(_PARAM_RE.findall('word ' * 40_000)))", seconds=30)
    assert out.strip().isdigit()


def test_a_meta_json_no_catalog_row_can_hold_is_left_out_of_a_rebuild(run_cli, workspace, caplog):
    """A folder whose meta.json holds a seed beyond 64 bits (an older import, a hand edit) is named in a
    warning and left out; the rebuild keeps every other artifact."""
    import json

    for prompt in ("one", "two"):
        code, out, err = run_cli("--home", str(workspace.home), "render", prompt, "--engine", "draft", "--size",
                                 "64x64", "--json")
        assert code == 0, err
    [bad] = [p for p in workspace.artifacts_dir.glob("*/*/*/meta.json") if '"prompt": "one"' in p.read_text()]
    meta = json.loads(bad.read_text(encoding="utf-8"))
    meta["seed"] = 10**30
    bad.write_text(json.dumps(meta), encoding="utf-8")
    code, out, err = run_cli("--home", str(workspace.home), "artifacts", "reindex")
    assert code == 0, err
    code, out, err = run_cli("--home", str(workspace.home), "artifacts", "list", "--json")
    assert [row["prompt"] for row in json.loads(out)] == ["two"]
    assert any("left out" in record.getMessage() and bad.parent.name in record.getMessage()
               for record in caplog.records)


# ---- item 11: broken single-file checkpoints and a binary models.toml --------------------------------------

def _single_file_entry(workspace, checkpoint: Path) -> None:
    workspace.models_toml.write_text(f'[models.broken]\nfile = "{checkpoint.as_posix()}"\n', encoding="utf-8")


def _checkpoint(tmp_path: Path, kind: str) -> Path:
    from tests.test_models import LFS_POINTER, save_pickle, save_safetensors

    if kind == "corrupt":
        path = tmp_path / "model.safetensors"
        path.write_bytes(b"\x13\x37" * 500)
    elif kind == "truncated":
        path = save_safetensors(tmp_path / "model.safetensors",
                                {"conditioner.embedders.1.model.ln_final.weight": (64, 64)})
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "pickle":
        path = save_pickle(tmp_path / "model.ckpt")
    elif kind == "lfs-pointer":
        path = tmp_path / "model.safetensors"
        path.write_text(LFS_POINTER, encoding="utf-8")
    elif kind == "not-sdxl":
        path = save_safetensors(tmp_path / "model.safetensors", {"cond_stage_model.transformer.weight": (4, 4)})
    else:
        raise AssertionError(kind)
    return path


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "pickle", "lfs-pointer"])
def test_broken_single_file_without_config_is_the_error_not_a_draft_card(run_cli, workspace, tmp_path, kind):
    checkpoint = _checkpoint(tmp_path, kind)
    _single_file_entry(workspace, checkpoint)
    code, out, err = run_cli("--home", str(workspace.home), "render", "a harbour", "--model", "broken",
                             "--size", "64x64")
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and str(checkpoint) in err, err
    assert not list(workspace.artifacts_dir.glob("*/*/*/image.png"))


@pytest.mark.parametrize("with_config", [True, False])
def test_a_valid_safetensors_that_is_not_sdxl_is_one_line(run_cli, workspace, tmp_path, tiny_sdxl_dir, with_config):
    """With its configs present (a diffusers SDXL folder), the key check stops it before diffusers' many-line
    error; without, it is still the checkpoint that is named."""
    checkpoint = _checkpoint(tmp_path, "not-sdxl")
    config = f'config = "{tiny_sdxl_dir.as_posix()}"\n' if with_config else ""
    workspace.models_toml.write_text(f'[models.broken]\nfile = "{checkpoint.as_posix()}"\n{config}',
                                     encoding="utf-8")
    engine = ["--engine", "cpu"] if with_config else []  # without configs: `auto`, which used to draw a card
    code, out, err = run_cli("--home", str(workspace.home), "render", "a harbour", "--model", "broken",
                             "--size", "64x64", *engine)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "not SDXL" in err and str(checkpoint) in err


def test_models_toml_of_binary_garbage_is_one_line(run_cli, workspace):
    workspace.models_toml.write_bytes(bytes(range(256)) * 4)
    code, out, err = run_cli("--home", str(workspace.home), "render", "a harbour", "--size", "64x64")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "models.toml" in err and "UTF-8" in err
    assert "Traceback" not in err and "UnicodeDecodeError" not in err
