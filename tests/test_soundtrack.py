"""`echo-os soundtrack` and `echo-os animatic --sound` on a draft story (draft cards, draft-audio cues):
one cue per scene at its duration, the `sound` column or words, and an MP4 whose AAC stream is the
animatic's length; a change of pacing in story.csv re-times the sound."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import run_cli

PROJECT = "Storm Coast"
FPS = 12


def write_csv(path: Path, durations=("1", "0.5", "1.5")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ["scene,description,location,lighting,duration,sound",
            f'1,"the keeper climbs the stairs",,candle light,{durations[0]},"footsteps on stone stairs"',
            f'2,"storm over the sea",,,{durations[1]},',
            f'3,"a room with nothing in it",,,{durations[2]},']
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def story(tmp_path):
    home = tmp_path / "ws"
    home.mkdir()
    csv_path = write_csv(home / "story" / "story.csv")
    code, _, err = run_cli("--home", str(home), "batch", PROJECT, str(csv_path), "--engine", "draft",
                           "--size", "64x48", "--clip", "none")
    assert code == 0, err
    return home, csv_path


def test_soundtrack_one_cue_per_scene_from_the_column_or_the_words(story) -> None:
    import soundfile

    home, _ = story
    code, out, err = run_cli("--home", str(home), "soundtrack", PROJECT, "--json")
    assert code == 0, err
    cues = json.loads(out)
    assert [c["scene"] for c in cues] == [1, 2, 3] and [c["seconds"] for c in cues] == [1.0, 0.5, 1.5]
    assert cues[0]["cue"] == "footsteps on stone stairs" and cues[0]["derived"] is False
    assert "thunder" in cues[1]["cue"] and "waves" in cues[1]["cue"] and cues[1]["derived"] is True
    assert cues[2]["cue"] == "quiet room tone"
    for cue in cues:
        info = soundfile.info(cue["path"])
        assert abs(info.frames / info.samplerate - cue["seconds"]) < 1e-3 and cue["engine"] == "draft-audio"
    code, again, err = run_cli("--home", str(home), "soundtrack", PROJECT, "--json")  # resumed, not rendered anew
    assert [c["id"] for c in json.loads(again)] == [c["id"] for c in cues]


def test_animatic_sound_has_an_aac_stream_of_its_length_and_follows_the_pacing(story) -> None:
    import av

    from echo_os.artifacts.encode import audio_duration, probe

    home, csv_path = story
    for durations in (("1", "0.5", "1.5"), ("2", "1", "0.5")):
        write_csv(csv_path, durations)
        code, out, err = run_cli("--home", str(home), "animatic", PROJECT, "--fps", str(FPS), "--fade", "0.5",
                                 "--sound", "--json")
        assert code == 0, err
        meta = json.loads(out)
        video = next(p for p in (home / "artifacts").glob("*/*/animatic_*/animatic.mp4")
                     if json.loads((p.parent / "meta.json").read_text())["id"] == meta["id"])
        with av.open(str(video)) as container:
            assert container.streams.audio[0].codec_context.name == "aac"
        seconds, rate = audio_duration(video)
        length = probe(video)["frames"] / FPS
        assert length == pytest.approx(sum(map(float, durations)), abs=1 / FPS)
        assert abs(seconds - length) <= 1 / FPS, (seconds, length)  # within one frame
        assert meta["settings"]["sound"] is True and len(meta["settings"]["sound_cues"]) == 3


def test_mix_crossfades_at_the_cut_points() -> None:
    from echo_os.motion.animatic import SceneSource, TimedScene
    from echo_os.motion.soundtrack import mix_track

    def timed(start, frames):
        source = SceneSource(scene=1, slug="", description="", artifact_id="", image=Path("x"), duration=1,
                             motion="static")
        return TimedScene(source=source, start=start, frames=frames)

    rate, fps = 1000, 10
    track = mix_track([timed(0, 10), timed(10, 10)], [np.full(1000, 0.5, np.float32), np.full(1000, -0.5, np.float32)],
                      fps, fade=0.4, rate=rate)
    assert len(track) == 2000
    assert track[500] == pytest.approx(0.5) and track[1500] == pytest.approx(-0.5)  # each cue in its scene
    assert abs(track[1000]) < 0.01  # at the cut the two are half each: they cancel here
    assert track[790] == pytest.approx(0.5, abs=0.01) and 0 < track[950] < 0.5  # the fade starts 0.2 s before
