"""Workspace paths and settings.

Parsed once in the entry point (CLI or API factory) and passed down; nothing reads the environment
at import time.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_NAME = "echo-os.toml"


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
    # From the workspace's echo-os.toml `[engines]` table: the order `auto` asks engines in (None: the
    # default order, echo_os.engines.DEFAULT_ORDER) and whether engines that open network connections
    # may be used at all.
    engine_order: tuple[str, ...] | None = None
    allow_network: bool = False
    # Each engine's own sub-table of [engines] (`[engines.openai]`, `[engines.comfyui]`, ...): raw TOML
    # values, validated by the engine that reads them (its settings model), not here.
    engine_tables: dict[str, dict] = field(default_factory=dict, hash=False, compare=False)
    # Hosted engines keep a response cache; `--no-cache` turns it off for one command.
    response_cache: bool = True
    # The model cache's memory budget in GB (echo-os.toml `[model_cache] max_gb`); None: the default share of
    # the device's memory (echo_os/render/cache.py). ECHO_OS_MODEL_CACHE_GB overrides it.
    model_cache_gb: float | None = None

    def engine_table(self, name: str) -> dict:
        """The `[engines.NAME]` table of echo-os.toml ({} when absent)."""
        return self.engine_tables.get(name, {})

    def network_allowed(self, name: str) -> bool:
        """Whether engine `name` may open network connections: `[engines] allow_network = true` (every
        network engine) or `[engines.NAME] allow = true` (that one)."""
        return self.allow_network or self.engine_table(name).get("allow") is True

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
    def config_toml(self) -> Path:
        return self.home / CONFIG_NAME

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
    home_path = Path(chosen).expanduser().resolve()
    engines = read_engines_table(home_path / CONFIG_NAME)
    cache_gb = read_model_cache_table(home_path / CONFIG_NAME)
    return Settings(home=home_path, debug=debug, cpu_size=cpu_size, model_cache_gb=cache_gb, **engines)


def read_model_cache_table(path: Path) -> float | None:
    """`max_gb` of the `[model_cache]` table of a workspace's echo-os.toml (the model cache's budget):

        [model_cache]
        max_gb = 12
    """
    from echo_os.errors import UsageError

    if not path.is_file():
        return None
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("model_cache", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"{path} cannot be read as TOML ({error}); fix or remove it.") from None
    if not isinstance(table, dict) or set(table) - {"max_gb"}:
        raise UsageError(f"{path}: [model_cache] takes one key, max_gb (the model cache's budget in GB).")
    value = table.get("max_gb")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise UsageError(f"{path}: [model_cache] max_gb must be a number of GB, at least 0 (for example 12).")
    return float(value)


def read_engines_table(path: Path) -> dict:
    """engine_order / allow_network from the `[engines]` table of a workspace's echo-os.toml:

        [engines]
        order = ["draft"]          # what `auto` asks, in order (default: sdxl, comfyui, openai, cpu, draft)
        allow_network = false      # engines that open network connections need true

        [engines.openai]           # one engine's own settings (read and checked by that engine)
        allow = true
    """
    from echo_os.errors import UsageError

    if not path.is_file():
        return {}
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("engines", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"{path} cannot be read as TOML ({error}); fix or remove it.") from None
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [engines] must be a table.")
    engine_tables = {key: value for key, value in table.items() if isinstance(value, dict)}
    unknown = set(table) - {"order", "allow_network"} - set(engine_tables)
    if unknown:
        raise UsageError(f"{path}: [engines] has unknown key(s) {', '.join(sorted(unknown))}; "
                         "it takes order, allow_network and one [engines.NAME] table per engine.")
    out: dict = {"engine_tables": engine_tables} if engine_tables else {}
    if "order" in table:
        order = table["order"]
        if not (isinstance(order, list) and order and all(isinstance(n, str) and n for n in order)):
            raise UsageError(f'{path}: [engines] order must be a non-empty list of engine names, e.g. ["sdxl", "draft"].')
        out["engine_order"] = tuple(order)
    if "allow_network" in table:
        if not isinstance(table["allow_network"], bool):
            raise UsageError(f"{path}: [engines] allow_network must be true or false.")
        out["allow_network"] = table["allow_network"]
    return out
