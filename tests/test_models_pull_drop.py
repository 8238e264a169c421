"""`echo-os models pull` against a fake Hugging Face Hub (tests/fake_hub.py) whose connection drops halfway
through a file (issue 25, "an HTTP drop mid-download"): a drop once is resumed (huggingface_hub asks again
with a Range) and the file is whole; a drop on every try is one line in words, with no blob or snapshot
half-saved in the cache, and the same command later fetches the file."""

from __future__ import annotations

import hashlib

import pytest

from tests.fake_hub import COMMIT, fake_hub
from tests.helpers import run_cli
from tests.test_models import save_safetensors

NAME = "lora.safetensors"


@pytest.fixture
def hub_home(tmp_path, monkeypatch):
    from huggingface_hub import constants

    lora = save_safetensors(tmp_path / NAME).read_bytes()
    home = tmp_path / "ws"
    home.mkdir()
    (home / "models.toml").write_text(f'[models.fake-lora]\ntype = "lora"\nhf = "fake/lora"\nweight_name = "{NAME}"\n',
                                      encoding="utf-8")
    with fake_hub({"fake/lora": {NAME: lora, "README.md": b"# a fake LoRA\n"}}) as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)  # read when huggingface_hub was imported
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
        yield home, hub, lora, tmp_path / "hub" / "models--fake--lora"


def test_a_download_dropped_once_is_resumed_whole(hub_home):
    home, hub, lora, cached = hub_home
    hub.truncate[NAME] = 1
    code, out, err = run_cli("--home", str(home), "models", "pull", "fake-lora")
    assert code == 0 and "is ready" in out, err
    assert hub.gets[NAME] == 2  # the cut answer, then the rest of it (Range)
    saved = cached / "snapshots" / COMMIT / NAME
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == hashlib.sha256(lora).hexdigest()


def test_a_download_that_keeps_dropping_is_one_line_and_saves_nothing_half(hub_home):
    home, hub, lora, cached = hub_home
    hub.truncate[NAME] = 1000
    code, out, err = run_cli("--home", str(home), "models", "pull", "fake-lora")
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "Fetching" not in line]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("Error: model 'fake-lora'"), err
    assert "closed halfway through the answer" in lines[0], lines
    for name in ("RemoteProtocolError", "httpx", "Traceback", "Trying to resume"):
        assert name not in err, err
    assert not list(cached.glob("blobs/*")) and not list(cached.glob("snapshots/*/*"))  # nothing half-saved
    hub.truncate[NAME] = 0  # the network is back: the same command fetches it
    code, out, err = run_cli("--home", str(home), "models", "pull", "fake-lora")
    assert code == 0, err
    assert (cached / "snapshots" / COMMIT / NAME).read_bytes() == lora
