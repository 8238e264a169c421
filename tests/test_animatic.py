"""`echo-os animatic`: a rendered story (draft cards) -> MP4 decoded back with PyAV and checked frame by frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import run_cli

PROJECT = "Harbour Night"
FPS = 12
SIZE = (128, 96)
# scene, description, camera, duration, motion
SCENES = [(1, "the keeper climbs the stairs", "static tripod shot", "1", ""),
          (2, "storm over the sea", "slow dolly in", "0.5", ""),
          (3, "a ship in the fog", "wide shot", "1.5", "pan-left"),
          (4, "dawn over the calm water", "", "", "static")]


def write_csv(folder: Path, scenes=SCENES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["scene,description,camera,duration,motion"]
    lines += [f'{n},"{text}",{camera},{duration},{motion}' for n, text, camera, duration, motion in scenes]
    path = folder / "story.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A four-scene story rendered with the draft engine at 128x96 (no weights needed)."""
    home = tmp_path_factory.mktemp("animatic") / "ws"
    home.mkdir()
    csv_path = write_csv(home / "story")
    code, _, err = run_cli("--home", str(home), "batch", PROJECT, str(csv_path), "--engine", "draft",
                           "--size", f"{SIZE[0]}x{SIZE[1]}", "--clip", "none")
    assert code == 0, err
    story_json = next((home / "artifacts").glob("*/*/story.json"))
    story = json.loads(story_json.read_text(encoding="utf-8"))
    images = {s["scene"]: home / "artifacts" / s["paths"][0] / "image.png" for s in story["scenes"]}
    return home, csv_path, images


@pytest.fixture(scope="module")
def animatic(rendered):
    home, _, _ = rendered
    out = home / "exports" / "night.mp4"
    code, stdout, err = run_cli("--home", str(home), "animatic", PROJECT, "--fps", str(FPS), "--fade", "0.5",
                                "--captions", "--out", str(out), "--json")
    assert code == 0, err
    meta = json.loads(stdout)
    folder = next((home / "artifacts").glob("*/*/animatic_*"))
    return home, meta, folder, out


def _frames(path: Path) -> list[np.ndarray]:
    from echo_os.artifacts.encode import read_frames

    return read_frames(path)


def _still(image: Path, size=SIZE) -> np.ndarray:
    from PIL import Image

    with Image.open(image) as picture:
        return np.asarray(picture.convert("RGB").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def test_mp4_is_h264_yuv420p_with_one_frame_per_scene_second(animatic):
    from echo_os.artifacts.encode import probe

    _, meta, folder, _ = animatic
    info = probe(folder / "animatic.mp4")
    assert (info["codec"], info["pix_fmt"]) == ("h264", "yuv420p")
    assert (info["width"], info["height"]) == SIZE and info["fps"] == FPS
    expected = (1 + 0.5 + 1.5 + 3) * FPS  # scene 4 has no duration: the default, 3 s
    crossfades = len(SCENES) - 1
    assert abs(info["frames"] - expected) <= crossfades
    assert meta["frames"] == info["frames"]


def test_scene_time_map_sources_and_settings_in_meta(animatic, rendered):
    home, meta, folder, _ = animatic
    story = json.loads(next((home / "artifacts").glob("*/*/story.json")).read_text(encoding="utf-8"))
    scene_ids = [s["artifacts"][0] for s in story["scenes"]]
    assert meta["kind"] == "video" and meta["video_kind"] == "animatic"
    assert [s["source"] for s in meta["scenes"]] == scene_ids and meta["sources"] == scene_ids
    assert [s["motion"] for s in meta["scenes"]] == ["static", "push-in", "pan-left", "static"]
    assert [(s["start_frame"], s["frames"]) for s in meta["scenes"]] == [(0, 12), (12, 6), (18, 18), (36, 36)]
    assert [s["start_s"] for s in meta["scenes"]] == [0.0, 1.0, 1.5, 3.0]
    assert meta["settings"]["fps"] == FPS and meta["settings"]["fade"] == 0.5 and meta["settings"]["captions"]
    import hashlib

    assert meta["id"] == hashlib.sha256((folder / "animatic.mp4").read_bytes()).hexdigest()
    on_disk = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    assert on_disk == meta


def test_middle_of_a_static_scene_is_its_image(rendered, tmp_path):
    """Without captions the middle frame of a static scene is the scene's image, scaled (H.264 aside)."""
    home, _, images = rendered
    code, stdout, err = run_cli("--home", str(home), "animatic", PROJECT, "--fps", str(FPS), "--json")
    assert code == 0, err
    meta = json.loads(stdout)
    frames = _frames(next(p for p in (home / "artifacts").glob("*/*/animatic_*/animatic.mp4")
                          if json.loads((p.parent / "meta.json").read_text())["id"] == meta["id"]))
    for entry in meta["scenes"]:
        if entry["motion"] != "static":
            continue
        middle = frames[entry["start_frame"] + entry["frames"] // 2].astype(np.float32)
        own = np.abs(middle - _still(images[entry["scene"]])).mean()
        others = [np.abs(middle - _still(images[n])).mean() for n in images if n != entry["scene"]]
        assert own < 6.0, (entry["scene"], own)
        assert min(others) > 2 * own  # the check can tell scenes apart


def test_a_push_in_zooms(rendered, animatic):
    """The push-in scene's last frame shows a smaller, centred part of the image than its first."""
    from echo_os.motion.moves import ZOOM, move_box

    first, last = move_box("push-in", 0.0, (128, 96), SIZE), move_box("push-in", 1.0, (128, 96), SIZE)
    assert first == (0.0, 0.0, 128.0, 96.0)
    assert last[2] - last[0] == pytest.approx(128 / ZOOM)
    pan = [move_box("pan-left", p, (128, 96), SIZE)[0] for p in (0.0, 0.5, 1.0)]
    assert pan[0] > pan[1] > pan[2] == 0.0  # pan-left: the view slides to the left edge


def test_captions_srt_beside_and_out_copy(animatic):
    home, meta, folder, out = animatic
    srt = (folder / "animatic.srt").read_text(encoding="utf-8")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:01,000\nthe keeper climbs the stairs\n")
    assert "4\n00:00:03,000 --> 00:00:06,000\ndawn over the calm water\n" in srt
    assert out.read_bytes() == (folder / "animatic.mp4").read_bytes()
    assert out.with_suffix(".srt").read_text(encoding="utf-8") == srt
    assert meta["captions"] == "animatic.srt"


def test_animatic_is_catalogued_and_survives_reindex(animatic):
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.settings import Settings

    home, meta, folder, _ = animatic
    store = ArtifactStore(Settings(home=home))
    try:
        assert store.open(meta["id"][:12]).path == folder
        count = store.catalog.count()
        assert store.reindex() == count  # the video's meta.json is read back, not skipped
        row = store.catalog.resolve_id(meta["id"])
        assert row.engine == "animatic" and row.width == SIZE[0] and row.project == PROJECT
    finally:
        store.close()


def test_default_motion_from_camera_words():
    from echo_os.motion.moves import default_motion

    assert default_motion("slow dolly in on his face") == "push-in"
    assert default_motion("camera pulls back") == "pull-out"
    assert default_motion("Pan left across the bay") == "pan-left"
    assert default_motion("tilt down to the rocks") == "tilt-down"
    assert default_motion("locked-off wide shot") == "static"
    assert default_motion("low angle") == "push-in" and default_motion(None) == "push-in"


# ---- bad input: exit 2, one message naming it, nothing written ---------------------------------------

def _videos(home: Path) -> list[Path]:
    return sorted((home / "artifacts").glob("*/*/animatic_*"))


def test_unknown_motion_and_bad_durations_are_all_reported(rendered, tmp_path):
    home, _, _ = rendered
    before = _videos(home)
    bad = write_csv(tmp_path / "bad", [(1, "a", "", "0", ""), (2, "b", "", "-1", "zoom-blur"),
                                       (3, "c", "", "soon", ""), (4, "d", "", "", "")])
    code, out, err = run_cli("--home", str(home), "animatic", PROJECT, "--story", str(bad))
    assert code == 2 and out == ""
    assert "Traceback" not in err
    assert "row 2" in err and "duration must be more than 0" in err
    assert "unknown motion 'zoom-blur'" in err and "push-in, pull-out" in err
    assert "row 4" in err and "'soon'" in err
    assert _videos(home) == before


def test_batch_reports_a_bad_motion_before_rendering(tmp_path):
    home = tmp_path / "ws"
    home.mkdir()
    bad = write_csv(tmp_path / "bad", [(1, "a", "", "3", "spin")])
    code, _, err = run_cli("--home", str(home), "batch", "x", str(bad), "--engine", "draft")
    assert code == 2 and "motion" in err and "'spin'" in err
    assert not list(home.glob("artifacts/*/*/*/image.png"))  # nothing rendered


def test_project_without_scenes_exits_2(tmp_path):
    home = tmp_path / "ws"
    home.mkdir()
    code, out, err = run_cli("--home", str(home), "animatic", "Nothing Here")
    assert code == 2 and out == ""
    assert err.startswith("Error: project 'Nothing Here' has no rendered scenes") and err.count("\n") == 1
    assert "echo-os batch" in err


@pytest.mark.parametrize("args, named", [(["--fps", "0"], "--fps"), (["--fade", "-1"], "--fade"),
                                         (["--fade", "2"], "--fade 2 is longer than scene 2"),
                                         (["--size", "101x96"], "--size 101x96")])
def test_bad_options_exit_2_naming_them(rendered, args, named):
    home, _, _ = rendered
    before = _videos(home)
    code, out, err = run_cli("--home", str(home), "animatic", PROJECT, *args)
    assert code == 2 and out == "" and named in err and err.count("\n") == 1, err
    assert _videos(home) == before


def test_show_and_replay_of_a_video_artifact(animatic):
    home, meta, folder, _ = animatic
    code, out, err = run_cli("--home", str(home), "artifacts", "show", meta["id"][:12])
    assert code == 0 and json.loads(out)["video_kind"] == "animatic" and json.loads(out)["path"] == str(folder)
    code, out, err = run_cli("--home", str(home), "replay", meta["id"][:12])
    assert code == 2 and out == "" and "is a video (animatic)" in err and err.count("\n") == 1
