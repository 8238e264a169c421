"""echo-os compare: the cells of every combination, a labelled grid artifact listing them, resume, guards."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def _compare(run_cli, home, *extra):
    return run_cli("--home", home, "compare", "a lighthouse", "--engines", "draft", "--size", "64x64",
                   "--no-memory", "--json", *extra)


def test_grid_cells_labels_and_a_rerun_renders_nothing(run_cli, workspace):
    home = str(workspace.home)
    code, out, err = _compare(run_cli, home, "--cfg", "5,7", "--seeds", "1,2,3", "--steps", "2")
    assert code == 0, err
    result = json.loads(out)
    assert result["rendered"] == 6 and result["resumed"] == 0
    assert [c["label"] for c in result["cells"]] == [
        "cfg 5, seed 1", "cfg 7, seed 1", "cfg 5, seed 2", "cfg 7, seed 2", "cfg 5, seed 3", "cfg 7, seed 3"]
    for cell in result["cells"]:
        meta = json.loads((Path(cell["image"]).parent / "meta.json").read_text())
        label = f"cfg {meta['cfg']:g}, seed {meta['seed']}"
        assert label == cell["label"] and meta["steps"] == 2 and meta["engine"]["name"] == "draft"
    grid_meta = json.loads((Path(result["grid"]["path"]) / "meta.json").read_text())
    assert grid_meta["engine"]["name"] == "compare"
    assert [a["option"] for a in grid_meta["grid"]["axes"]] == ["cfg", "seeds"]
    assert [(c["id"], c["values"]) for c in grid_meta["grid"]["cells"]] == [
        (c["id"], {"cfg": c["label"].split(",")[0].split()[1], "seed": c["label"].split()[-1]})
        for c in result["cells"]]
    with Image.open(result["grid"]["image"]) as sheet:
        # columns: cfg (2), rows: seed (3), each cell 64x64 with 4px gaps, a label column and a title row
        assert sheet.width > 2 * 64 and sheet.height > 3 * 64
        sheet = sheet.convert("RGB")

        def places(cell):  # every place a cell's pixels are in the sheet
            pixels = Image.open(cell["image"]).convert("RGB").tobytes()
            return [(x, y) for y in range(sheet.height - 63) for x in range(sheet.width - 63)
                    if sheet.crop((x, y, x + 64, y + 64)).tobytes() == pixels]

        # Draft cards ignore cfg, so cfg 5 and cfg 7 of one seed look alike: each seed's card is twice in its
        # row (cfg across), and the seeds go down one row each (seed down).
        rows = [places(result["cells"][i]) for i in (0, 2, 4)]
        assert [len(spots) for spots in rows] == [2, 2, 2]
        assert all(spots[0][1] == spots[1][1] and spots[1][0] - spots[0][0] == 64 + 4 for spots in rows)
        assert rows[0][0][0] == rows[1][0][0] == rows[2][0][0]
        assert rows[1][0][1] - rows[0][0][1] == 64 + 4 and rows[2][0][1] - rows[1][0][1] == 64 + 4

    count_before = len(list(Path(home, "artifacts").glob("*/*/*/meta.json")))
    code, out, err = _compare(run_cli, home, "--cfg", "5,7", "--seeds", "1,2,3", "--steps", "2")
    assert code == 0, err
    again = json.loads(out)
    assert again["rendered"] == 0 and again["resumed"] == 6 and again["grid"]["id"] == result["grid"]["id"]
    assert len(list(Path(home, "artifacts").glob("*/*/*/meta.json"))) == count_before


def test_compare_guards_exit_2_naming_the_option(run_cli, workspace):
    home = str(workspace.home)
    code, out, err = _compare(run_cli, home, "--cfg", "1,2,3,4,5,6,7,8,9", "--seeds", "1,2,3,4,5,6,7,8")
    assert code == 2 and "72 cells is more than --max-cells 64" in err
    code, out, err = _compare(run_cli, home, "--cfg", "1,2", "--seeds", "1,2", "--steps", "2,3",
                              "--schedulers", "euler,ddim")
    assert code == 2 and "at most 3 axes" in err
    code, out, err = _compare(run_cli, home, "--cfg", "5,x")
    assert code == 2 and "--cfg" in err
    code, out, err = _compare(run_cli, home, "--steps", "2,999")
    assert code == 2 and "--steps" in err
    code, out, err = _compare(run_cli, home, "--styles", "noir,nosuch")
    assert code == 2 and "unknown style 'nosuch'" in err
    for line in (err,):
        assert len(line.strip().splitlines()) == 1
    assert not list(Path(home, "artifacts").glob("*/*/*/meta.json"))


def test_models_axis_renders_one_model_at_a_time(run_cli, tiny_workspace, tiny_sdxl_dir):
    """Two models (the same tiny weights under two names): each model's cells are rendered, then its
    pipeline is dropped before the next model loads."""
    from echo_os.engines import sdxl
    from tests.conftest import register_model

    register_model(tiny_workspace, "tiny-b", tiny_sdxl_dir)
    sdxl.clear_pipeline_cache()
    loads = []
    real = sdxl.load_sdxl_pipeline

    def counting(*args, **kwargs):
        assert not sdxl.loaded_pipelines(), "a second pipeline loaded while the first was still kept"
        loads.append(args[0])
        return real(*args, **kwargs)

    sdxl.load_sdxl_pipeline = counting
    try:
        code, out, err = run_cli("--home", str(tiny_workspace.home), "compare", "a lighthouse", "--models", "tiny,tiny-b",
                                 "--steps", "2", "--size", "64x64", "--seeds", "1", "--no-memory", "--json")
    finally:
        sdxl.load_sdxl_pipeline = real
    assert code == 0, err
    result = json.loads(out)
    assert [c["label"] for c in result["cells"]] == ["model tiny", "model tiny-b"]
    assert len(loads) == 2 and not sdxl.loaded_pipelines()
