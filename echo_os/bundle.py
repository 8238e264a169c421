"""Air-gapped install: `echo-os bundle DIR` writes what a machine without network needs, and
`echo-os models import DIR/models` checks and registers the models it carries.

A bundle folder holds:
- wheels/: a wheelhouse for this platform and Python: echo-os itself (built from the source tree it runs
  from, or downloaded as the installed version), and, unless --no-deps, every dependency pinned to the
  version installed here (the requirement closure of echo-os read from the installed metadata, fetched
  with `pip download --no-deps`, so pip's cache serves what it already has), and torch as asked: the CPU
  or a CUDA build from the PyTorch index (`--torch cpu|cu128|...`) with its own dependencies.
  requirements.txt lists the pins.
- models/: each `--model NAME` copied from where it resolves here (a folder, a checkpoint, the Hugging
  Face cache), and models/manifest.json: per model its models.toml fields and the sha256 and size of
  every file. `models import` refuses the whole set, registering nothing, when any file is missing or
  its hash differs.
- INSTALL.md: the commands to run on the target.

Nothing here opens a network connection except the pip subprocesses that fill wheels/.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from echo_os import __version__
from echo_os.errors import UsageError
from echo_os.settings import REPO_ROOT

if TYPE_CHECKING:
    from echo_os.models.resolve import ResolvedModel
    from echo_os.settings import Settings

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
# The PyTorch wheel index of each build name `--torch` takes (CUDA builds: cuXYZ, as PyTorch names them).
TORCH_INDEX = "https://download.pytorch.org/whl/{build}"
# models.toml fields a bundled entry keeps; where the weights are (path/file/hf, revision, subfolder)
# is rewritten to the copy in the bundle.
KEPT_FIELDS = ("type", "variant", "weight_name", "description", "allow_pickle")
DEFAULT_FIELDS = ("steps", "cfg", "scheduler", "size", "lora")
_CHUNK = 1 << 20


@dataclass
class BundledFile:
    path: str  # relative to the models/ folder, POSIX separators
    sha256: str
    size: int


@dataclass
class BundledModel:
    name: str
    fields: dict[str, str | bool | int | float]  # models.toml fields; "path"/"file"/"config" relative to models/
    files: list[BundledFile] = field(default_factory=list)


# -- the wheelhouse -------------------------------------------------------------------------------------


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_closure(root: str = "echo-os") -> dict[str, str]:
    """canonical name -> installed version of every distribution `root` needs here (its requirements whose
    markers hold in this environment, transitively; extras not asked for are left out)."""
    from packaging.requirements import Requirement

    pins: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (_canonical(name), extras) in seen:
            continue
        seen.add((_canonical(name), extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise UsageError(f"{name} is required by echo-os but not installed here; install it, then bundle.") \
                from None
        pins[_canonical(name)] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if requirement.marker is None or any(requirement.marker.evaluate(env) for env in environments):
                todo.append((requirement.name, frozenset(requirement.extras)))
    pins.pop(_canonical(root), None)
    return pins


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args]
    done = subprocess.run(command, text=True, capture_output=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise UsageError(f"`pip {' '.join(args[:2])} ...` failed:\n{tail}")


def build_echo_os_wheel(wheels: Path) -> None:
    """echo-os's own wheel: built from the source tree this code runs from, else (an installed wheel)
    downloaded as the version installed here."""
    if (REPO_ROOT / "pyproject.toml").exists():
        _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(REPO_ROOT))
    else:
        _pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", str(wheels),
             f"echo-os=={__version__}")


def write_wheelhouse(target: Path, *, deps: bool, torch: str | None, torch_index: str | None = None) -> list[str]:
    """Fill target/wheels and write target/requirements.txt; returns the pins."""
    wheels = target / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    build_echo_os_wheel(wheels)
    pins = pinned_closure() if deps else {}
    torch_version = pins.pop("torch", None)
    lines = [f"{name}=={version}" for name, version in sorted(pins.items())]
    (target / "requirements.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if lines:
        _pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", str(wheels),
             "--requirement", str(target / "requirements.txt"))
    if deps and torch:
        version = (torch_version or "").split("+")[0]
        spec = f"torch=={version}" if version else "torch"
        # torch's own dependencies differ between builds (CUDA wheels need the nvidia-* packages): let pip
        # resolve them from the PyTorch index of that build.
        index = TORCH_INDEX.format(build=torch) if torch_index is None else torch_index
        extra = ["--extra-index-url", index] if index != "none" else []
        _pip("download", "--quiet", "--only-binary=:all:", "--dest", str(wheels), *extra, spec)
    return lines


# -- models ---------------------------------------------------------------------------------------------


def file_sha256(path: Path, progress: object | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress.update(len(chunk))  # type: ignore[attr-defined]
    return digest.hexdigest()


def _copy_tree(source: Path, destination: Path) -> None:
    # HF cache snapshots are symlinks into blobs/: copy what they point at.
    shutil.copytree(source, destination, symlinks=False, ignore=shutil.ignore_patterns(".cache", ".git*"))


def bundle_model(resolved: ResolvedModel, models_dir: Path) -> BundledModel:
    """Copy one resolved model into models_dir/NAME and describe it (files hashed after the copy)."""
    entry = resolved.entry
    if resolved.image_encoder is not None:
        raise UsageError(f"model '{entry.name}' uses an image encoder; bundle it as its own model (--model) and "
                         "register the ip-adapter on the target with `echo-os models add`.")
    destination = models_dir / entry.name
    if destination.exists():
        shutil.rmtree(destination)
    fields: dict[str, str | bool | int | float] = {key: value for key in KEPT_FIELDS
                                                   if (value := getattr(entry, key)) not in (None, False)}
    if entry.type == "sdxl":
        fields.pop("type", None)
    if resolved.local_path.is_dir():
        _copy_tree(resolved.local_path, destination)
        fields["path"] = entry.name
    else:
        destination.mkdir(parents=True)
        shutil.copy2(resolved.local_path, destination / resolved.local_path.name)
        fields["file"] = f"{entry.name}/{resolved.local_path.name}"
        fields.pop("weight_name", None)
    if resolved.config_path is not None:
        _copy_tree(resolved.config_path, destination / "config")
        fields["config"] = f"{entry.name}/config"
    if entry.defaults is not None:
        defaults = asdict(entry.defaults)
        fields.update({key: value for key in DEFAULT_FIELDS if (value := defaults.get(key)) is not None})
    files = [BundledFile(path.relative_to(models_dir).as_posix(), file_sha256(path), path.stat().st_size)
             for path in sorted(destination.rglob("*")) if path.is_file()]
    return BundledModel(entry.name, fields, files)


def resolve_models(settings: Settings, names: Iterable[str]) -> list[ResolvedModel]:
    """Every named model resolved here (weights present), before anything is written."""
    from echo_os.models.registry import load_registry

    registry = load_registry(settings)
    return [registry.resolve(name) for name in names]


def write_models(settings: Settings, names: Iterable[str], target: Path,
                 resolved: list[ResolvedModel] | None = None) -> list[BundledModel]:
    resolved = resolve_models(settings, names) if resolved is None else resolved
    models_dir = target / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    bundled = [bundle_model(model, models_dir) for model in resolved]
    manifest = {"format": MANIFEST_FORMAT, "echo_os": __version__, "models": [asdict(model) for model in bundled]}
    (models_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return bundled


def install_text(deps: bool, torch: str | None, models: list[BundledModel]) -> str:
    names = ", ".join(model.name for model in models) or "none"
    deps_note = ("echo-os and every dependency, pinned to the versions of the machine that wrote it"
                 + (f", with the `{torch}` build of PyTorch" if torch else ", without PyTorch (install it first)")
                 if deps else "echo-os only: the target must already have its dependencies")
    return f"""# Installing echo-os {__version__} without network

Made by `echo-os bundle` for Python {sys.version_info.major}.{sys.version_info.minor} on this platform.
wheels/ holds {deps_note}; models/ holds: {names}.

```bash
python3 -m venv ~/echo-os-venv && . ~/echo-os-venv/bin/activate
pip install --no-index --find-links wheels echo-os
mkdir -p ~/story && cd ~/story
echo-os models import /path/to/this/folder/models    # checks every sha256, then adds each model to models.toml
echo-os models list
echo-os render "warm fractal"
```

`models import` registers the models where they are (this folder's models/): keep the folder, or copy
models/ where it should live first and import from there. A file that is missing or whose sha256 differs
from models/manifest.json stops the import before anything is registered.
"""


def write_bundle(settings: Settings, target: Path, *, models: list[str], deps: bool, torch: str | None,
                 torch_index: str | None = None) -> None:
    resolved = resolve_models(settings, models)  # an unknown name or missing weights: nothing written
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    try:
        bundled = write_models(settings, models, target, resolved)
        write_wheelhouse(target, deps=deps, torch=torch, torch_index=torch_index)
        (target / "INSTALL.md").write_text(install_text(deps, torch, bundled), encoding="utf-8")
    except BaseException:
        # A half-written bundle would look complete to whoever copies it: remove what was written.
        if created:
            shutil.rmtree(target)
        else:  # it was empty (the command checks): empty it again
            for path in list(target.iterdir()):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        raise


# -- on the target --------------------------------------------------------------------------------------


def read_manifest(models_dir: Path) -> list[BundledModel]:
    path = models_dir / MANIFEST_NAME
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("format") != MANIFEST_FORMAT:
            raise UsageError(f"{path}: manifest format {document.get('format')!r}; this echo-os reads "
                             f"{MANIFEST_FORMAT}.")
        return [BundledModel(m["name"], dict(m["fields"]), [BundledFile(**f) for f in m["files"]])
                for m in document["models"]]
    except FileNotFoundError:
        raise UsageError(f"{models_dir} has no {MANIFEST_NAME}; point at the models/ folder of an "
                         "`echo-os bundle`.") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsageError(f"{path} cannot be read ({error}).") from None


def verify_models(models_dir: Path, models: list[BundledModel]) -> None:
    """Every file of every model exists with its size and sha256; raises naming the first that does not."""
    from tqdm import tqdm

    files = [file for model in models for file in model.files]
    with tqdm(total=sum(f.size for f in files), unit="B", unit_scale=True, desc="checking sha256",
              leave=False, disable=None) as progress:
        for file in files:
            path = models_dir / file.path
            if not path.is_file():
                raise UsageError(f"{path} is missing; the bundle is incomplete, copy it again.")
            if path.stat().st_size != file.size or file_sha256(path, progress) != file.sha256:
                raise UsageError(f"{path} does not match its sha256 in {MANIFEST_NAME}; the copy is damaged "
                                 "or was changed, copy it again.")


def import_models(settings: Settings, models_dir: Path, *, force: bool) -> list[str]:
    """Verify every file, then add each model to the workspace's models.toml (absolute paths into
    models_dir). Returns the names added."""
    from echo_os.models.registry import load_registry, parse_models_document, write_model_entry

    models_dir = models_dir.resolve()
    models = read_manifest(models_dir)
    verify_models(models_dir, models)
    toml_path = settings.models_toml
    registry = load_registry(settings)
    existing = {e.name for e in registry.entries() if e.origin == toml_path} if toml_path.exists() else set()
    clash = sorted(existing & {model.name for model in models})
    if clash and not force:
        raise UsageError(f"{toml_path} already has {', '.join(clash)}; use --force to replace.")
    entries = {}
    for model in models:
        fields = dict(model.fields)
        for key in ("path", "file", "config"):
            if key in fields:
                fields[key] = (models_dir / str(fields[key])).as_posix()
        entries[model.name] = fields
    parse_models_document({"models": entries}, toml_path)  # every entry valid before any is written
    for name, fields in entries.items():
        write_model_entry(toml_path, name, fields, replace=force or name in existing)  # type: ignore[arg-type]
    return list(entries)
