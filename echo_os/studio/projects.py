"""Which storyboard files the studio may read: the workspace's, and those in registered project folders.

A story rendered with `echo-os batch PROJECT ~/stories/keeper/story.csv` records that path in its
story.json. The studio shows its durations and edits one scene of it (POST /api/studio/story/{project}/
scenes/{n}) only when the file lies inside the workspace or inside a folder the workspace registers in
its echo-os.toml:

    [studio]
    projects = ["~/stories", "../shared-boards"]   # folders; relative ones are relative to the workspace

Nothing else on the server is reachable: a path is resolved (symlinks and `..` followed) before it is
compared with the allowed folders, it must be a regular file, and only story.json's own `source` and
`bible` entries are ever looked up (the page never names a path). An edited scene is written back to that
story.csv (write_storyboard: atomically, the previous text kept as story.csv.bak beside it, one level), so
the next `echo-os batch` of the file renders what the studio shows; the edited storyboard also goes to
/api/batch, which keeps its own copy in the workspace. The bible is only read.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import tomllib

from echo_os.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Callable

    from echo_os.settings import Settings

STUDIO_TABLE = "studio"
BACKUP_SUFFIX = ".bak"  # story.csv -> story.csv.bak: the text before the last edit
_WRITING = threading.Lock()  # one edit at a time: read, edit and write are one step


def registered_folders(settings: "Settings") -> list[Path]:
    """The project folders of echo-os.toml's [studio] table, resolved (those that do not exist are left
    out). UsageError for a table that is not `projects = [folder, ...]`."""
    path = settings.config_toml
    if not path.is_file():
        return []
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"{path}: cannot read it ({error}).") from None
    table = document.get(STUDIO_TABLE)
    if table is None:
        return []
    if not isinstance(table, dict) or set(table) - {"projects"}:
        raise UsageError(f"{path}: [studio] takes one key, projects (a list of folders whose storyboards the studio "
                         "may read).")
    projects = table.get("projects", [])
    if not isinstance(projects, list) or not all(isinstance(p, str) and p.strip() for p in projects):
        raise UsageError(f'{path}: [studio] projects must be a list of folders, e.g. ["~/stories"].')
    folders = []
    for text in projects:
        folder = Path(text).expanduser()
        folder = (folder if folder.is_absolute() else settings.home / folder).resolve()
        if folder.is_dir():
            folders.append(folder)
    return folders


def readable_story_file(settings: "Settings", path_text: object) -> Path | None:
    """`path_text` (a story.json `source` or bible path) as a resolved file path when it is a file inside
    the workspace or a registered project folder, else None."""
    if not isinstance(path_text, str) or not path_text:
        return None
    path = Path(path_text).resolve()
    if not path.is_file():
        return None
    allowed = [settings.home.resolve(), *registered_folders(settings)]
    return path if any(path.is_relative_to(folder) for folder in allowed) else None


def backup_path(path: Path) -> Path:
    return path.with_name(path.name + BACKUP_SUFFIX)


def write_storyboard(path: Path, edit: "Callable[[str], str]") -> tuple[str, Path]:
    """Apply `edit` to the storyboard at `path` (a path readable_story_file returned) and write the result
    back atomically, the text it replaces first saved as `path`.bak (atomically too; the previous backup is
    replaced). Returns (the new text, the backup's path). `edit`'s UsageError leaves both files as they were."""
    from echo_os.atomic import write_atomically

    with _WRITING:
        before = path.read_bytes()
        edited = edit(before.decode("utf-8"))
        backup = backup_path(path)
        write_atomically(backup, before)
        write_atomically(path, edited)
    return edited, backup
