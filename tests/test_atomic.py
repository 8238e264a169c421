"""echo_os.atomic: the one atomic-write helper."""

from __future__ import annotations

import pytest

from echo_os.atomic import atomic_path, write_atomically


def test_write_replaces_whole_and_keeps_permissions(tmp_path):
    target = tmp_path / "sub" / "story.json"
    write_atomically(target, "first")
    target.chmod(0o640)
    write_atomically(target, b"second")
    assert target.read_text() == "second"
    assert target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in target.parent.iterdir()] == ["story.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "page.html"
    write_atomically(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("the writer failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]
