"""The artifact store: atomic folders, a catalog that is only a cache."""

from __future__ import annotations

import os

import pytest

from echo_os.artifacts.catalog import Catalog
from echo_os.artifacts.store import ArtifactStore
from echo_os.render.requests import StoryFields
from tests.helpers import save_draft


def test_failure_mid_write_leaves_no_listed_artifact(workspace, monkeypatch):
    store = ArtifactStore(workspace)
    calls = {"n": 0}
    real_fsync = os.fsync

    def failing_fsync(fd):
        calls["n"] += 1
        if calls["n"] == 2:  # image.png written, meta.json half way
            raise OSError("disk full (injected)")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="injected"):
        save_draft(store)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert store.catalog.count() == 0
    assert not list(workspace.artifacts_dir.glob("*/*/*/image.png"))
    assert not any((workspace.artifacts_dir / ".tmp").iterdir())
    # and after a reindex, still nothing listed
    assert store.reindex() == 0
    store.close()


def test_reindex_rebuilds_an_identical_catalog(workspace):
    store = ArtifactStore(workspace)
    save_draft(store, "one", count=2)
    save_draft(store, "two", story=StoryFields(scene=4, slug="storm", characters=("keeper",)))
    before = list(store.catalog.dump())
    store.close()
    workspace.catalog_path.unlink()
    for suffix in ("-wal", "-shm"):
        (workspace.catalog_path.parent / (workspace.catalog_path.name + suffix)).unlink(missing_ok=True)
    store = ArtifactStore(workspace)
    assert store.reindex() == 3
    assert list(store.catalog.dump()) == before
    store.close()


def test_story_scene_sets_the_folder_number(workspace):
    store = ArtifactStore(workspace)
    [artifact] = save_draft(store, "the storm", story=StoryFields(scene=3, slug="storm-approach"))
    assert artifact.path.name.startswith("003-storm-approach_")
    assert artifact.meta.story.scene == 3
    store.close()


def test_catalog_migrations_are_numbered_and_idempotent(workspace):
    with Catalog(workspace.catalog_path) as catalog:
        version = catalog.db.execute("PRAGMA user_version").fetchone()[0]
        mode = catalog.db.execute("PRAGMA journal_mode").fetchone()[0]
    with Catalog(workspace.catalog_path) as catalog:
        assert catalog.db.execute("PRAGMA user_version").fetchone()[0] == version >= 1
    assert mode == "wal"


def test_a_failing_after_save_hook_does_not_lose_the_image(workspace):
    store = ArtifactStore(workspace)

    def broken(_artifact):
        raise RuntimeError("memory index unavailable")

    store.listeners.append(broken)
    [artifact] = save_draft(store)
    assert artifact.image_path.exists() and store.catalog.count() == 1
    store.close()
