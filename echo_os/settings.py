"""Workspace paths and settings.

Parsed once in the entry point (CLI or API factory) and passed down; nothing reads the environment
at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    """Where a workspace keeps its files.

    A workspace is a folder holding models.toml, styles.toml, prompts/ and artifacts/ (image folders,
    catalog.db, memory/). Nothing is written outside it except the Hugging Face cache on `models pull`.
    """

    home: Path
    debug: bool = False
    # The default size when SDXL runs on the CPU and no --size is given (ECHO_OS_CPU_SIZE).
    cpu_size: str = "512x512"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def catalog_path(self) -> Path:
        return self.artifacts_dir / "catalog.db"

    @property
    def memory_dir(self) -> Path:
        return self.artifacts_dir / "memory"

    @property
    def cache_dir(self) -> Path:
        """Small derived files (weights hashes, IP-Adapter embeddings, thumbnails)."""
        return self.artifacts_dir / ".cache"

    @property
    def models_toml(self) -> Path:
        return self.home / "models.toml"

    @property
    def styles_toml(self) -> Path:
        return self.home / "styles.toml"

    @property
    def log_path(self) -> Path:
        return self.artifacts_dir / "echo-os.log"


def load_settings(home: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Settings:
    """Settings from an explicit --home, else ECHO_OS_HOME, else the current directory; ECHO_OS_DEBUG,
    ECHO_OS_CPU_SIZE."""
    env = dict(os.environ) if env is None else env
    chosen = home or env.get("ECHO_OS_HOME") or os.getcwd()
    debug = env.get("ECHO_OS_DEBUG", "") not in ("", "0", "false", "no")
    cpu_size = env.get("ECHO_OS_CPU_SIZE") or Settings.cpu_size
    return Settings(home=Path(chosen).expanduser().resolve(), debug=debug, cpu_size=cpu_size)
