"""Smoke test of an installed (not editable) echo-os: run with the python of a fresh venv that holds the
wheel, from an empty folder. It checks that everything echo-os reads at run time came with the wheel
(presets, ComfyUI templates, the default models, the gallery) and that the CLI works from there.

    python .ci/smoke_wheel.py        # exits non-zero, naming the step, on the first failure
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

EXPECTED_PRESETS = ("draft", "fast", "quality", "quick", "turbo")
EXPECTED_TEMPLATES = ("sdxl-img2img", "sdxl-txt2img", "solid-colour", "upload-scale")


def echo_os(workspace: Path, *args: str) -> str:
    command = [str(Path(sys.executable).with_name("echo-os")), "--home", str(workspace), *args]
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "ECHO_OS_HOME")}
    done = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        sys.exit(f"smoke: `{' '.join(command[1:])}` exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    print(f"ok: echo-os {' '.join(args)}")
    return done.stdout


def check_installed_copy() -> None:
    import echo_os

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    where = Path(echo_os.__file__).resolve()
    if site not in where.parents:
        sys.exit(f"smoke: echo_os was imported from {where}, not from this venv's site-packages {site}")
    print(f"ok: echo_os from {where.parent}")


def check_templates(workspace: Path) -> None:
    from echo_os.engines.comfyui_workflows import read_workflow, workflow_paths
    from echo_os.settings import Settings

    paths = workflow_paths(Settings(home=workspace))
    missing = sorted(set(EXPECTED_TEMPLATES) - set(paths))
    if missing:
        sys.exit(f"smoke: ComfyUI templates missing from the wheel: {', '.join(missing)} (found {sorted(paths)})")
    for name in sorted(paths):
        read_workflow(paths[name])  # parses NAME.json and its NAME.toml bindings
    print(f"ok: ComfyUI templates {', '.join(sorted(paths))}")


def main() -> None:
    check_installed_copy()
    workspace = Path(tempfile.mkdtemp(prefix="echo-os-smoke-"))
    version = echo_os(workspace, "--version")
    if "echo-os" not in version:
        sys.exit(f"smoke: unexpected --version output {version!r}")
    (workspace / "prompts.txt").write_text("a lighthouse at dusk\na storm over the harbour\n", encoding="utf-8")
    for preset in EXPECTED_PRESETS:  # every preset is found and lays out a plan (nothing rendered)
        echo_os(workspace, "batch", "smoke", "@prompts.txt", "--preset", preset, "--dry-run")
    rendered = json.loads(echo_os(workspace, "render", "warm fractal", "--preset", "draft", "--json"))
    if not Path(rendered[0]["image"]).is_file():
        sys.exit(f"smoke: the draft render wrote no image: {rendered}")
    echo_os(workspace, "models", "list")
    check_templates(workspace)
    echo_os(workspace, "gallery")
    if not (workspace / "artifacts" / "gallery" / "index.html").is_file():
        sys.exit("smoke: `echo-os gallery` wrote no artifacts/gallery/index.html")
    print("wheel smoke test passed")


if __name__ == "__main__":
    main()
