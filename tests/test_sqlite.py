"""echo_os.sqlite: one connect and named migrations for catalog.db and jobs.db, upgrading files made by
the numbered migrations (PRAGMA user_version) that came before."""

from __future__ import annotations

import json
import sqlite3

import pytest

from echo_os.sqlite import Migrations, applied_migrations, connect


def _numbered(path, functions) -> sqlite3.Connection:
    """A file as the numbered scheme left it: each migration run in order, user_version = their count."""
    db = sqlite3.connect(path, isolation_level=None)
    for number, function in enumerate(functions, start=1):
        function(db)
        db.execute(f"PRAGMA user_version = {number}")
    return db


def test_a_catalog_from_the_numbered_migrations_upgrades_and_keeps_its_rows(tmp_path):
    from echo_os.artifacts import catalog as catalog_module

    path = tmp_path / "catalog.db"
    db = _numbered(path, catalog_module.MIGRATIONS[:1])
    meta = {"id": "ab" * 32, "request_key": "cd" * 32, "project": "p"}
    db.execute("INSERT INTO artifacts (num, id, created, project, engine, prompt, seed, width, height, path, meta) "
               "VALUES (1, ?, '2026-01-01', 'p', 'draft', 'x', 1, 8, 8, 'a/p/001-x', ?)", (meta["id"], json.dumps(meta)))
    db.close()
    with catalog_module.Catalog(path) as catalog:
        assert applied_migrations(catalog.db) == catalog_module.MIGRATIONS.names  # m002 on: run now
        assert applied_migrations(catalog.db)[:2] == ["m001_artifacts", "m002_request_key"]
        assert catalog.db.execute("PRAGMA user_version").fetchone()[0] == len(catalog_module.MIGRATIONS)
        assert catalog.by_request_keys("p", ["cd" * 32])["cd" * 32].id == "ab" * 32
    with catalog_module.Catalog(path) as catalog:  # opening again applies nothing
        assert applied_migrations(catalog.db) == catalog_module.MIGRATIONS.names


def test_fully_migrated_numbered_files_run_nothing_again(tmp_path):
    """user_version 2 (catalog) and 1 (jobs): their tables exist; running a migration again would fail."""
    from echo_os.api import jobs as jobs_module
    from echo_os.artifacts import catalog as catalog_module

    _numbered(tmp_path / "catalog.db", list(catalog_module.MIGRATIONS)).close()
    with catalog_module.Catalog(tmp_path / "catalog.db") as catalog:
        assert applied_migrations(catalog.db) == catalog_module.MIGRATIONS.names
    db = _numbered(tmp_path / "jobs.db", list(jobs_module.MIGRATIONS))
    db.execute("INSERT INTO jobs (id, kind, status, request, images_total, created) "
               "VALUES (?, 'render', 'queued', ?, 1, '2026-01-01T00:00:00+00:00')",
               ("a" * 32, json.dumps({"items": [{"prompt": "old job"}]})))
    db.close()
    store = jobs_module.JobStore(tmp_path / "jobs.db")
    try:
        assert applied_migrations(store._db) == jobs_module.MIGRATIONS.names
        assert applied_migrations(store._db)[0] == "m001_jobs"
        job = store.claim_next()
        assert job is not None and job.spec.items[0].prompt == "old job"
    finally:
        store.close()


def test_new_migrations_run_once_in_order_and_a_failure_applies_nothing(tmp_path):
    migrations = Migrations()
    calls = []

    @migrations
    def m001_things(db):
        calls.append("things")
        db.execute("CREATE TABLE things (x)")

    db = connect(tmp_path / "x.db")
    assert migrations.migrate(db) == ["m001_things"]

    @migrations
    def m002_more(db):
        db.execute("ALTER TABLE things ADD COLUMN y")

    @migrations
    def m003_broken(db):
        raise RuntimeError("half done")

    with pytest.raises(RuntimeError):
        migrations.migrate(db)
    assert applied_migrations(db) == ["m001_things"]  # m002 rolled back with m003
    assert [row[1] for row in db.execute("PRAGMA table_info(things)")] == ["x"]
    assert calls == ["things"]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(ValueError):
        migrations(m001_things)


def test_before_builds_the_older_schema_and_refuses_an_unknown_name(tmp_path):
    migrations = Migrations()

    @migrations
    def m001_a(db):
        db.execute("CREATE TABLE a (x)")

    @migrations
    def m002_b(db):
        db.execute("CREATE TABLE b (x)")

    db = connect(tmp_path / "old.db")
    assert migrations.before("m002_b").migrate(db) == ["m001_a"]
    assert migrations.migrate(db) == ["m002_b"]  # the newer one upgrades it in place
    with pytest.raises(ValueError, match="no migration named m009"):
        migrations.before("m009")
