"""Issue 24's friction list: what a new user should not have to ask (help texts, short engine line, read-only
commands that write nothing, clear listings, ratings that can be cleared, ...)."""

from __future__ import annotations

import click

from echo_os.cli import COMMANDS, cli


def _walk(command: click.Command, path: str, ctx: click.Context):
    yield path, command
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            yield from _walk(command.get_command(ctx, name), f"{path} {name}", ctx)


def test_every_option_of_every_command_has_help_text() -> None:
    ctx = click.Context(cli)
    seen = list(_walk(cli, "echo-os", ctx))
    assert len([p for p, _ in seen if p.count(" ") == 1]) == len(COMMANDS)
    missing = [f"{path} {'/'.join(param.opts)}" for path, command in seen for param in command.params
               if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()]
    assert missing == []


# ---- the engine line: short, the full reason with -v and in meta.json, never on a bar's line ---------------

FULL_REASON = ("auto: first available in the order sdxl, comfyui, openai, cpu, draft; skipped sdxl: no CUDA GPU; "
               "comfyui: it sends requests over the network; set allow = true under [engines.comfyui] (or "
               "allow_network = true under [engines]) in echo-os.toml; openai: it sends requests over the network; "
               "set allow = true under [engines.openai] (or allow_network = true under [engines]) in echo-os.toml")


def test_brief_reason_groups_what_the_engines_before_lacked() -> None:
    from echo_os.cli.feedback import brief_reason, engine_line

    assert engine_line("cpu", FULL_REASON, verbose=False) == "engine: cpu (no CUDA GPU; network engines off)"
    assert engine_line("cpu", FULL_REASON, verbose=True) == f"engine: cpu ({FULL_REASON})"
    assert brief_reason("chosen with --engine draft") == "chosen with --engine draft"
    assert brief_reason("auto: first available in the order toy, draft") == "auto: first available"


def test_render_prints_the_short_engine_line_and_keeps_the_full_reason(run_cli, workspace) -> None:
    import json
    from pathlib import Path

    code, out, err = run_cli("--home", str(workspace.home), "render", "a kite", "--size", "64x64", "--json")
    assert code == 0, err
    assert err.splitlines()[0] == ("engine: draft (no weights for 'sdxl', see `echo-os models list`; "
                                   "network engines off)")
    meta = json.loads((Path(json.loads(out)[0]["path"]) / "meta.json").read_text())
    assert meta["engine"]["reason"].startswith("auto: first available in the order sdxl, comfyui, openai, cpu")
    assert "set allow = true under [engines.openai]" in meta["engine"]["reason"]
    code, out, err = run_cli("--home", str(workspace.home), "-v", "render", "a kite", "--size", "64x64")
    assert code == 0 and f"engine: draft ({meta['engine']['reason']})" in err


def test_a_line_printed_during_a_live_bar_does_not_share_its_line(capsys) -> None:
    """tqdm draws a bar as `\\r...`; a line written while it is live goes after a cleared bar, not onto it."""
    import sys

    from tqdm import tqdm

    from echo_os.cli.feedback import echo_beside_bars

    bar = tqdm(total=10, desc="images 1-1 of 1", file=sys.stderr, disable=False, leave=False)
    bar.update(3)
    echo_beside_bars("engine: cpu (no CUDA GPU)")
    bar.close()
    err = capsys.readouterr().err
    line = next(part for part in err.replace("\r", "\n").split("\n") if "engine:" in part)
    assert line == "engine: cpu (no CUDA GPU)"


def test_the_step_bar_says_what_is_loading_before_the_first_step() -> None:
    import io

    from echo_os.cli.render import StepBar
    from echo_os.render.results import ProgressEvent

    stream = io.StringIO()
    bar = StepBar(1, file=stream, enabled=True)
    assert stream.getvalue() == ""  # no empty `0step [00:00, ?step/s]` bar before anything happens
    bar.loading("loading model 'sdxl' (cpu)")
    assert "loading model 'sdxl' (cpu) (00:00)" in stream.getvalue()
    bar(ProgressEvent(step=1, total_steps=2, images=1))
    bar.close()
    assert "images 1-1 of 1" in stream.getvalue()


def interrupt_the_second_save(monkeypatch) -> list[int]:
    """ArtifactStore.save raises KeyboardInterrupt (a Ctrl-C) on its second call and saves on the others.
    Returns the list of calls so far: clear it to interrupt the second save of the next command."""
    from echo_os.artifacts.store import ArtifactStore

    real_save = ArtifactStore.save
    calls: list[int] = []

    def save_then_interrupt(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(ArtifactStore, "save", save_then_interrupt)
    return calls


def test_ctrl_c_says_how_many_were_saved_and_the_same_command_finishes(run_cli, workspace, monkeypatch) -> None:
    """Ctrl-C during the second image of three: one line with the count (not only `Aborted.`), exit 130;
    the same command then renders only the two left."""
    from echo_os.artifacts.store import ArtifactStore

    real_save = ArtifactStore.save
    interrupt_the_second_save(monkeypatch)
    args = ("--home", str(workspace.home), "render", "a kite", "--size", "64x64", "--count", "3", "--seed", "7",
            "--batch-size", "1")
    code, out, err = run_cli(*args)
    assert code == 130
    assert err.strip().splitlines()[-1] == ("interrupted: 1 image saved; run the same command again to render the "
                                            "rest (saved images are not rendered again)")
    monkeypatch.setattr(ArtifactStore, "save", real_save)
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert "1 of 3 already rendered" in err and len(out.splitlines()) == 3


# ---- a folder that is not a workspace: read-only commands write nothing ----------------------------------

def test_read_only_commands_write_nothing_in_a_folder_without_a_workspace(run_cli, tmp_path) -> None:
    import json

    home = tmp_path / "not-a-workspace"
    home.mkdir()
    for args in (["artifacts", "list"], ["memory", "search", "kite"], ["memory", "stats"], ["memory", "dupes"],
                 ["gallery"]):
        code, out, err = run_cli("--home", str(home), *args)
        assert code == 0, (args, err)
        assert "no artifacts in" in err and "--home DIR" in err, (args, err)
        assert list(home.iterdir()) == [], args
    code, out, err = run_cli("--home", str(home), "artifacts", "list", "--json")
    assert code == 0 and json.loads(out) == []
    code, out, err = run_cli("--home", str(home), "memory", "similar", "abcdef123456")
    assert code == 2 and "no artifacts/ folder" in err
    assert list(home.iterdir()) == []


# ---- one token counter, and no library warning for counting a long prompt -------------------------------

LONG_PROMPT = "a lighthouse keeper with a grey beard walks along the stormy cliff at dawn " * 6


def test_counting_a_long_prompt_prints_no_transformers_warning(tiny_sdxl_dir, capfd, caplog) -> None:
    from echo_os.story.tokens import clip_token_count, load_clip_tokenizer

    count = clip_token_count(LONG_PROMPT, load_clip_tokenizer(str(tiny_sdxl_dir)))
    assert count.count > 77 and not count.approximate
    captured = capfd.readouterr()
    assert "Token indices sequence length" not in captured.err + captured.out + caplog.text


def test_api_batch_warns_with_the_cli_dry_runs_exact_counts(tiny_workspace, run_cli) -> None:
    """The same story, the same counts: `/api/batch` counts with the model's tokenizer, as `batch --dry-run`."""
    import asyncio

    from tests.api_helpers import api_client

    prompts = tiny_workspace.home / "prompts.txt"
    prompts.write_text(LONG_PROMPT + "\n", encoding="utf-8")
    code, out, err = run_cli("--home", str(tiny_workspace.home), "batch", "Long", f"@{prompts}", "--model", "tiny",
                             "--dry-run")
    assert code == 0, err
    import re

    cli_count = int(re.search(r"tokens: +prompt (\d+)/75", out).group(1))  # exact: no `~`

    async def post() -> dict:
        async with api_client(tiny_workspace, start_worker=False) as (client, _):
            response = await client.post("/api/batch", json={"project": "Long", "model": "tiny", "size": "64x64",
                                                             "prompts": [LONG_PROMPT.strip()]})
            assert response.status_code == 202, response.text
            return response.json()

    body = asyncio.run(post())
    assert f"scene 1: the prompt is {cli_count} CLIP tokens; SDXL reads 75" in " ".join(body["warnings"]), body


# ---- serve: the port checked first, the gallery named, a worker's start is not a warning -----------------

def test_serve_on_a_port_in_use_says_so_in_one_line_before_any_worker_starts(tmp_path) -> None:
    import os
    import socket
    import subprocess
    import sys

    from tests.helpers import REPO

    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "echo_os", "--home", str(tmp_path), "serve", "--port",
                                 str(port), "--workers", "1"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use (another server has the port?); "
        "stop it or choose another with --port"]
    assert not (tmp_path / "artifacts" / "jobs.db").exists()  # no queue opened, no worker started


def test_serve_names_the_gallery_without_a_token_and_logs_a_worker_start_at_info(tmp_path) -> None:
    import time

    from tests.test_api_server import start_server

    server = start_server(tmp_path, "--workers", "1", "--log-level", "info")
    try:
        deadline = time.monotonic() + 60
        while "worker 0 started" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = server.log()
    finally:
        server.stop()
    assert f"gallery in a browser: http://127.0.0.1:{server.port}/api/gallery\n" in log
    assert "INFO echo_os.api.processes: worker 0 started on cpu" in log, log
    assert "WARNING echo_os.api.processes: worker 0 started" not in log


def test_loading_clip_shows_no_loading_weights_bar(tmp_path_factory) -> None:
    """A fresh interpreter (transformers' bar switch is per process): CLIP loads without its bars."""
    import os
    import subprocess
    import sys

    from tests.helpers import REPO
    from tests.tiny_models import save_tiny_clip

    clip = save_tiny_clip(tmp_path_factory.mktemp("clip-noise") / "clip")
    script = ("from PIL import Image\nfrom echo_os.memory.embedders import ClipEmbedder\n"
              f"print(ClipEmbedder({str(clip)!r}, 'cpu').embed_images([Image.new('RGB', (32, 32))]).shape)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    result = subprocess.run([sys.executable, "-c", script], env=dict(env, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Loading weights" not in result.stderr and "[transformers]" not in result.stderr, result.stderr


def test_memory_import_names_a_skipped_file_once(run_cli, workspace, caplog) -> None:
    import logging

    source = workspace.home / "elsewhere"
    source.mkdir()
    (source / "notes.png").write_text("not an image")
    code, out, err = run_cli("--home", str(workspace.home), "memory", "import", str(source))
    assert code == 0, err
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert (err + "\n".join(warned)).count("notes.png") == 1, (err, warned)
    assert "imported 0 images" in out and "1 unreadable" in out


# ---- artifacts list -------------------------------------------------------------------------------------

def test_artifacts_list_has_a_header_full_project_names_scenes_and_says_when_cut(run_cli, workspace) -> None:
    from tests.helpers import REPO

    project = "Lighthouse Keeper of the Northern Isles"
    story = REPO / "prompts" / "lighthouse-keeper" / "story.csv"
    code, out, err = run_cli("--home", str(workspace.home), "batch", project, str(story), "--engine", "draft",
                             "--size", "64x64")
    assert code == 0, err
    code, out, err = run_cli("--home", str(workspace.home), "artifacts", "list", "--limit", "3")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "CREATED", "PROJECT", "ENGINE", "SIZE", "SEED", "SCENE", "PROMPT", "/",
                              "DESCRIPTION"]
    assert len(rows) == 3 and all(project in row for row in rows)
    newest = rows[0]
    assert "  4  " in newest and "documentary realism" not in newest  # the scene, not the style-prefixed prompt
    assert "the newest 3 shown; more match: --limit 12 shows more" in err
    code, out, err = run_cli("--home", str(workspace.home), "artifacts", "list")
    assert len(out.splitlines()) == 5 and "more match" not in err


# ---- memory search: the scores explained, --character by name, story hits as scenes -----------------------

def test_memory_search_explains_scores_takes_a_character_name_and_shows_scenes(run_cli, workspace) -> None:
    import json

    from tests.helpers import REPO

    story = REPO / "prompts" / "lighthouse-keeper" / "story.csv"
    home = str(workspace.home)
    code, out, err = run_cli("--home", home, "batch", "Lighthouse", str(story), "--engine", "draft", "--size", "64x64")
    assert code == 0, err
    code, by_id, err = run_cli("--home", home, "memory", "search", "great lens", "--character", "keeper", "--json")
    assert code == 0, err
    code, by_name, err = run_cli("--home", home, "memory", "search", "great lens", "--character", "elias marr",
                                 "--json")
    assert code == 0, err
    assert [h["id"] for h in json.loads(by_name)] == [h["id"] for h in json.loads(by_id)] != []
    code, out, err = run_cli("--home", home, "memory", "search", "great lens", "-k", "1")
    assert code == 0, err
    assert "cosine similarity to the query" in err and "minilm" in err
    first = out.splitlines()[0]
    assert "scene 1: he polishes the great lens" in first and "documentary realism" not in first
    assert f"minilm {json.loads(by_id)[0]['scores']['minilm']:6.3f}" in first

    import asyncio

    from tests.api_helpers import api_client

    async def over_http() -> list:
        async with api_client(workspace, start_worker=False) as (client, _):
            response = await client.get("/api/memory/search", params={"q": "great lens", "character": "Elias Marr"})
            assert response.status_code == 200, response.text
            return response.json()

    assert [h["id"] for h in asyncio.run(over_http())] == [h["id"] for h in json.loads(by_id)]


# ---- texture-check, styles show, animatic --clips --------------------------------------------------------

def test_seam_verdicts_and_texture_check_prints_one(run_cli, workspace) -> None:
    import json

    import numpy as np
    from PIL import Image

    from echo_os.engines.tiling import seam_score

    ramp = np.tile(np.arange(0, 64, dtype=np.uint8) * 4, (64, 1))  # the wrap edge jumps 252, neighbours 4
    assert seam_score(Image.fromarray(np.stack([ramp] * 3, axis=-1)), "x").verdict == "visible seam"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # every pair alike
    assert seam_score(Image.fromarray(noise), "xy").verdict == "seamless"
    code, out, err = run_cli("--home", str(workspace.home), "render", "a wall", "--engine", "draft", "--size",
                             "64x64", "--json")
    artifact = json.loads(out)[0]["id"]
    code, out, err = run_cli("--home", str(workspace.home), "texture-check", artifact)
    assert code == 0, err
    verdict = next(line for line in out.splitlines() if line.startswith("verdict: "))
    assert verdict.split(": ")[1] in ("seamless", "faint seam", "visible seam")
    code, out, err = run_cli("--home", str(workspace.home), "texture-check", artifact, "--json")
    assert json.loads(out)["verdict"] == verdict.split(": ")[1]


# ---- compare: the singular spellings, repeatable or comma-separated ---------------------------------------

def test_compare_takes_model_scheduler_seed_singular_repeated_or_comma_separated(run_cli, workspace) -> None:
    import json

    home = str(workspace.home)
    code, out, err = run_cli("--home", home, "compare", "a lighthouse", "--engine", "draft", "--size", "64x64",
                             "--seed", "1", "--seed", "2", "--scheduler", "euler,ddim", "--json")
    assert code == 0, err
    first = json.loads(out)
    cells = first["cells"]
    assert len(cells) == 4
    assert {c["label"] for c in cells} == {"scheduler euler, seed 1", "scheduler ddim, seed 1",
                                           "scheduler euler, seed 2", "scheduler ddim, seed 2"}, cells
    code, out, err = run_cli("--home", home, "compare", "a lighthouse", "--engines", "draft", "--size", "64x64",
                             "--seeds", "1,2", "--schedulers", "euler", "--scheduler", "ddim", "--json")
    assert code == 0, err
    assert sorted(c["id"] for c in json.loads(out)["cells"]) == sorted(c["id"] for c in cells)  # the same grid
    code, out, err = run_cli("--home", home, "compare", "a lighthouse", "--engine", "draft", "--seed", "1",
                             "--seeds", "1")
    assert code == 2 and "lists a value twice" in err


def test_preset_fast_without_turbo_weights_says_which_pull_makes_it_real(run_cli, workspace) -> None:
    code, out, err = run_cli("--home", str(workspace.home), "render", "a fox", "--preset", "fast")
    assert code == 0, err
    assert ("note: these are draft cards, not renders of 'sdxl-turbo': `echo-os models pull sdxl-turbo` downloads "
            "its weights, then the same command renders it for real") in err


# ---- the API says when it answers draft cards ---------------------------------------------------------------

def test_api_says_when_it_answers_draft_cards(workspace, caplog) -> None:
    import asyncio
    import logging

    from tests.api_helpers import api_client, wait_job

    async def go() -> tuple:
        async with api_client(workspace) as (client, _):
            response = await client.post("/v1/images/generations", json={"prompt": "a kite", "size": "256x256"})
            assert response.status_code == 200, response.text
            job_id = response.headers["x-echo-job-id"]
            job = (await client.get(f"/api/jobs/{job_id}")).json()
            queued = await client.post("/api/render", json={"prompt": "a kite", "size": "64x64", "seed": 3})
            rendered = await wait_job(client, queued.json()["job_id"])
            return response.headers["x-echo-engine"], job, rendered

    with caplog.at_level(logging.WARNING, logger="echo_os"):
        header, job, rendered = asyncio.run(go())
    assert header == "draft" and job["engines"] == ["draft"]
    assert rendered["status"] == "succeeded"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("answered with draft cards, not renders (auto: first available" in w for w in warnings), warnings


def test_ctrl_c_without_a_seed_names_the_seed_to_finish_with(run_cli, workspace, monkeypatch) -> None:
    from echo_os.artifacts.store import ArtifactStore

    def interrupt(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ArtifactStore, "save", interrupt)
    code, out, err = run_cli("--home", str(workspace.home), "render", "a kite", "--size", "64x64", "--count", "2")
    assert code == 130
    line = err.strip().splitlines()[-1]
    assert line.startswith("interrupted: 0 images saved; run the same command with --seed ") and "again" in line



def test_ctrl_c_in_compare_and_refine_says_what_was_saved(run_cli, tiny_workspace, monkeypatch) -> None:
    """compare resumes (the same command renders the missing cells); refine does not (each run is a new
    variation): both say how many were saved instead of `Aborted.`, exit 130."""
    import json

    home = str(tiny_workspace.home)
    code, out, err = run_cli("--home", home, "render", "a kite", "--model", "tiny", "--steps", "2", "--size",
                             "64x64", "--seed", "1", "--no-memory", "--json")
    assert code == 0, err
    parent = json.loads(out)[0]["id"]
    calls = interrupt_the_second_save(monkeypatch)
    code, out, err = run_cli("--home", home, "compare", "a kite", "--engine", "draft", "--size", "64x64",
                             "--seed", "1,2,3")
    assert code == 130, err
    assert err.strip().splitlines()[-1] == ("interrupted: 1 image saved; run the same command again to render the "
                                            "rest (saved images are not rendered again)")
    calls.clear()
    code, out, err = run_cli("--home", home, "refine", parent, "in fog", "--strength", "1", "--steps", "2",
                             "--count", "3", "--no-memory")
    assert code == 130, err
    assert err.strip().splitlines()[-1] == ("interrupted: 1 image saved; the saved ones are kept; the others were "
                                            "not rendered")
