"""`echo-os bundle` and `echo-os models import`: an air-gapped install.

The fast test bundles echo-os (--no-deps) and the tiny SDXL, installs the wheel into a fresh venv with the
network blocked (a new network namespace where `unshare -n` works; pip with no index either way) whose
dependencies are this test venv's (a .pth file: the target "already has them"), imports the models there
and renders. The slow test does the same with the full wheelhouse (every pinned dependency and torch) and
a venv that has nothing but the bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def network_blocked_prefix() -> list[str]:
    """`unshare -n` (no network interfaces at all) where this process may create namespaces."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-n"]
    return []


def offline_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "ECHO_OS_HOME")}
    # Without a namespace these at least make every pip or HTTP request fail at once.
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS="", PIP_CONFIG_FILE=os.devnull, HTTPS_PROXY="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    return env


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done


def make_target_venv(path: Path, with_test_deps: bool) -> Path:
    venv.EnvBuilder(with_pip=False).create(path)
    site = Path(run([str(path / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                .stdout.strip())
    if with_test_deps:
        (site / "test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return path / "bin" / "python"


def install_and_render(bundle: Path, python: Path, tmp_path: Path, *, deps: bool) -> dict:
    blocked = network_blocked_prefix()
    env = offline_env()
    install = [*blocked, sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-index",
               "--find-links", str(bundle / "wheels")]
    install += ["echo-os"] if deps else ["--no-deps", "--ignore-installed", "echo-os"]
    run(install, env=env)
    echo_os = str(python.with_name("echo-os"))
    target_home = tmp_path / "target-home"
    target_home.mkdir()
    where = run([str(python), "-c", "import echo_os; print(echo_os.__file__)"], env=env, cwd=target_home).stdout
    assert str(python.parent.parent) in where  # the bundle's copy, not this checkout
    run([*blocked, echo_os, "--home", str(target_home), "models", "import", str(bundle / "models")], env=env)
    done = run([*blocked, echo_os, "--home", str(target_home), "render", "a lighthouse", "--model", "tiny",
                "--engine", "cpu", "--size", "64x64", "--steps", "2", "--json"], env=env)
    return json.loads(done.stdout)[0]


def test_bundle_installs_and_renders_with_the_network_blocked(tiny_workspace, run_cli, tmp_path):
    bundle = tmp_path / "bundle"
    code, out, err = run_cli("--home", str(tiny_workspace.home), "bundle", str(bundle), "--model", "tiny", "--no-deps")
    assert code == 0, err
    assert sorted(p.name for p in bundle.iterdir()) == ["INSTALL.md", "models", "requirements.txt", "wheels"]
    assert [p.name.split("-")[0] for p in (bundle / "wheels").iterdir()] == ["echo_os"]
    manifest = json.loads((bundle / "models" / "manifest.json").read_text(encoding="utf-8"))
    files = manifest["models"][0]["files"]
    assert manifest["models"][0]["name"] == "tiny" and any(f["path"].endswith(".safetensors") for f in files)
    assert "pip install --no-index --find-links wheels echo-os" in (bundle / "INSTALL.md").read_text(encoding="utf-8")

    python = make_target_venv(tmp_path / "target-venv", with_test_deps=True)
    made = install_and_render(bundle, python, tmp_path, deps=False)
    assert made["engine"] == "cpu" and Path(made["image"]).is_file()


def test_models_import_refuses_a_changed_file_and_registers_nothing(tiny_workspace, run_cli, tmp_path, workspace):
    from echo_os.bundle import write_models

    models_dir = tmp_path / "bundle"
    write_models(tiny_workspace, ["tiny"], models_dir)
    manifest = json.loads((models_dir / "models" / "manifest.json").read_text(encoding="utf-8"))
    victim = models_dir / "models" / next(f["path"] for f in manifest["models"][0]["files"]
                                          if f["path"].endswith(".safetensors"))
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte changed
    victim.write_bytes(bytes(data))
    target = tmp_path / "target"
    target.mkdir()
    code, out, err = run_cli("--home", str(target), "models", "import", str(models_dir / "models"))
    assert code == 2 and "does not match its sha256" in err and victim.name in err
    assert not (target / "models.toml").exists()

    victim.unlink()
    code, out, err = run_cli("--home", str(target), "models", "import", str(models_dir / "models"))
    assert code == 2 and "is missing" in err and not (target / "models.toml").exists()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_full_bundle_installs_into_an_empty_venv_offline(tiny_workspace, run_cli, tmp_path):
    bundle = tmp_path / "bundle"
    # torch from pip's own configuration (where this venv's torch came from), not download.pytorch.org
    code, out, err = run_cli("--home", str(tiny_workspace.home), "bundle", str(bundle), "--model", "tiny",
                             "--torch-index", "none")
    assert code == 0, err
    assert any(p.name.startswith("torch-") for p in (bundle / "wheels").iterdir())
    python = make_target_venv(tmp_path / "target-venv", with_test_deps=False)
    made = install_and_render(bundle, python, tmp_path, deps=True)
    assert made["engine"] == "cpu" and Path(made["image"]).is_file()


def test_bundle_of_an_unknown_model_writes_nothing(workspace, run_cli, tmp_path):
    code, out, err = run_cli("--home", str(workspace.home), "bundle", str(tmp_path / "b"), "--model", "nosuch",
                             "--no-deps")
    assert code == 2 and "no model named 'nosuch'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()
