"""Shared fixtures: a socket guard, a temporary workspace, and a tiny SDXL saved to disk once per session."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class NetworkAccessError(AssertionError):
    pass


def _guarded_connect(self, address):
    if not _is_local(address):
        raise NetworkAccessError(f"test tried to open a network connection to {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_local(address):
        raise NetworkAccessError(f"test tried to open a network connection to {address!r}")
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True)
def socket_guard(monkeypatch):
    """Any connection outside the loopback range fails the test."""
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)
    yield


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path_factory):
    """No test reads the developer's workspace or Hugging Face cache."""
    monkeypatch.delenv("ECHO_OS_HOME", raising=False)
    monkeypatch.delenv("ECHO_OS_DEBUG", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.getbasetemp() / "hf-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home"))
    yield


@pytest.fixture
def workspace(tmp_path):
    """Settings for an empty workspace folder."""
    from echo_os.settings import Settings

    home = tmp_path / "ws"
    home.mkdir()
    return Settings(home=home)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    """A tiny random-weight SDXL pipeline saved with save_pretrained (built once per test session)."""
    from tests.tiny_models import save_tiny_sdxl

    return save_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "tiny-sdxl")


def register_model(settings, name: str, path: Path) -> None:
    with open(settings.models_toml, "a", encoding="utf-8") as handle:
        handle.write(f'\n[models.{name}]\ntype = "sdxl"\npath = "{path.as_posix()}"\n')


@pytest.fixture
def tiny_workspace(workspace, tiny_sdxl_dir):
    """A workspace whose models.toml names the tiny pipeline as `tiny`."""
    register_model(workspace, "tiny", tiny_sdxl_dir)
    return workspace


@pytest.fixture
def run_cli():
    """Run `echo-os` in-process through main() (the real error boundary); returns (exit code, stdout, stderr)."""
    from tests.helpers import run_cli

    return run_cli
