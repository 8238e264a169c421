"""Crash recovery: staging folders owned by their writer, a corrupt catalog or jobs.db, a lost meta.json."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import textwrap

import pytest

from echo_os.artifacts import store as store_module
from echo_os.artifacts.store import ArtifactStore
from echo_os.engines.draft import DraftEngine
from echo_os.requests import RenderRequest


def _render(store, prompt="a lighthouse", count=1, **fields):
    request = RenderRequest(prompt=prompt, width=64, height=64, count=count, seed=3, engine="draft", **fields)
    [result] = DraftEngine().render([request])
    return store.save_result(result)


# ---- item 4: reindex during a render ---------------------------------------------------------------

def test_reindex_during_a_render_keeps_its_staging_folder(workspace, monkeypatch):
    """A render in another thread is half way through writing its staging folder when reindex runs."""
    store = ArtifactStore(workspace)
    _render(store, "already here")
    writing, reindexed = threading.Event(), threading.Event()
    real_write = store_module._write_durably

    def slow_write(path, data):
        if path.name == "image.png" and not writing.is_set():
            writing.set()
            assert reindexed.wait(30)
        return real_write(path, data)

    monkeypatch.setattr(store_module, "_write_durably", slow_write)
    outcome: dict = {}

    def render_in_background():
        try:
            outcome["saved"] = _render(ArtifactStore(workspace), "in progress", count=2)
        except BaseException as error:  # noqa: BLE001 - reported to the test below
            outcome["error"] = error

    thread = threading.Thread(target=render_in_background)
    thread.start()
    assert writing.wait(30)
    other = ArtifactStore(workspace)  # a second store (as `echo-os artifacts reindex` makes) cleans on start too
    assert other.reindex() == 1
    reindexed.set()
    thread.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert len(outcome["saved"]) == 2
    assert other.reindex() == 3
    assert [p.name for p in (workspace.artifacts_dir / ".tmp").iterdir()] == []
    other.close()
    store.close()


_HOLD_STAGING = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from echo_os.artifacts.store import staging_folder
    with staging_folder(Path(sys.argv[1])) as folder:
        (folder / "image.png").write_bytes(b"half")
        print(folder, flush=True)
        time.sleep(600)
""")


def test_staging_of_a_live_process_survives_and_of_a_killed_one_is_cleaned_on_start(workspace):
    staging = workspace.artifacts_dir / ".tmp"
    process = subprocess.Popen([sys.executable, "-c", _HOLD_STAGING, str(staging)], stdout=subprocess.PIPE,
                               text=True)
    try:
        folder = type(staging)(process.stdout.readline().strip())
        assert folder.is_dir() and folder.name.startswith(f"{process.pid}-")
        store = ArtifactStore(workspace)  # start: cleans orphans only
        assert store.reindex() == 0
        assert folder.is_dir(), "reindex removed the staging folder of a live writer"
        store.close()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    ArtifactStore(workspace).close()  # a fresh start after the kill -9
    assert not folder.exists()
    assert list(staging.iterdir()) == []
