"""ComfyUI workflow templates for the `comfyui` engine (engines/comfyui.py): reading, checking and binding them.

A template is NAME.json (a workflow as ComfyUI's "Export (API)" writes it: node id -> {class_type, inputs})
and NAME.toml (its description and bindings: which node input receives each request value,
"NODE_ID.INPUT_NAME", or {input = "...", modulo = N} for an input with a smaller range). The package ships
some in `echo_os/pipelines/comfyui/`; a workspace's own `pipelines/comfyui/` is read too and wins by name.
A template binds only what it has (a weightless one has no prompt to set); `Workflow.digest` changes when
either file does, and is recorded with each image.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from echo_os.errors import OptionError, UsageError
from echo_os.package_data import pipelines_folder

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

if TYPE_CHECKING:
    from echo_os.settings import Settings

TEMPLATES_DIR = Path("pipelines") / "comfyui"
BINDABLE = ("prompt", "negative", "seed", "steps", "cfg", "width", "height", "checkpoint", "batch_size",
            "init_image", "strength", "sampler", "scheduler")

# An API-format graph: node id -> {"class_type": ..., "inputs": {name: value or [node id, output index]}}.
# Node inputs are whatever each node class takes (text, numbers, links), so a node stays a JSON object.
Graph: TypeAlias = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Binding:
    node: str
    input: str
    modulo: int | None = None


@dataclass(frozen=True)
class Workflow:
    """An API-format graph and which node input receives each request value."""

    name: str
    graph: Graph
    bindings: dict[str, tuple[Binding, ...]]
    description: str = ""
    path: Path | None = None

    @property
    def digest(self) -> str:
        """sha256 of the graph and its bindings: it changes when the template (NAME.json or NAME.toml) does."""
        import hashlib

        bindings = {key: [[b.node, b.input, b.modulo] for b in value] for key, value in sorted(self.bindings.items())}
        text = json.dumps({"graph": self.graph, "bindings": bindings}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def bind(self, values: dict[str, Any]) -> Graph:
        """A copy of the graph with `values` (keys of BINDABLE) written into their inputs; values the
        template does not bind are left out (a weightless template has no prompt to set)."""
        graph: Graph = json.loads(json.dumps(self.graph))
        for key, value in values.items():
            for binding in self.bindings.get(key, ()):
                graph[binding.node]["inputs"][binding.input] = (
                    value % binding.modulo if binding.modulo and isinstance(value, int) else value)
        return graph


def _parse_binding(path: Path, key: str, spec: object, graph: Graph) -> Binding:
    if isinstance(spec, dict):
        target, modulo = spec.get("input"), spec.get("modulo")
        if not isinstance(modulo, (int, type(None))) or set(spec) - {"input", "modulo"}:
            raise UsageError(f"{path}: binding {key} takes input = \"NODE.INPUT\" and an optional integer modulo.")
    else:
        target, modulo = spec, None
    if not isinstance(target, str) or "." not in target:
        raise UsageError(f'{path}: binding {key} must name a node input as "NODE_ID.INPUT_NAME", got {target!r}.')
    node, name = target.split(".", 1)
    if node not in graph or name not in graph[node].get("inputs", {}):
        raise UsageError(f"{path}: binding {key} names {target}, which is not an input of the workflow "
                         f"(nodes: {', '.join(sorted(graph))}).")
    return Binding(node, name, modulo)


def read_workflow(graph_path: Path) -> Workflow:
    """NAME.json and its NAME.toml, checked: an API-format graph, bindings naming existing inputs."""
    bindings_path = graph_path.with_suffix(".toml")
    try:
        graph = json.loads(graph_path.read_text(encoding="utf-8"))
        spec = tomllib.loads(bindings_path.read_text(encoding="utf-8")) if bindings_path.is_file() else {}
    except (OSError, ValueError) as error:
        raise UsageError(f"{graph_path}: cannot read the workflow ({error}).") from None
    if not isinstance(graph, dict) or not all(isinstance(n, dict) and "class_type" in n for n in graph.values()):
        raise UsageError(f"{graph_path} is not an API-format workflow (export it with File > Export (API) in "
                         "ComfyUI: every node has class_type and inputs).")
    unknown = set(spec.get("bindings", {})) - set(BINDABLE)
    if unknown:
        raise UsageError(f"{bindings_path}: unknown binding(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(BINDABLE)}.")
    bindings: dict[str, tuple[Binding, ...]] = {}
    for key, value in spec.get("bindings", {}).items():
        specs = value if isinstance(value, list) else [value]
        bindings[key] = tuple(_parse_binding(bindings_path, key, one, graph) for one in specs)
    return Workflow(graph_path.stem, graph, bindings, str(spec.get("description", "")), graph_path)


def workflow_paths(settings: "Settings") -> dict[str, Path]:
    """name -> NAME.json: the templates shipped in the package, then the workspace's (which win by name)."""
    found: dict[str, Path] = {}
    for folder in (pipelines_folder("comfyui"), settings.home / TEMPLATES_DIR):
        if folder.is_dir():
            found.update({path.stem: path for path in sorted(folder.glob("*.json"))})
    return found


def get_workflow(settings: "Settings", name: str) -> Workflow:
    paths = workflow_paths(settings)
    if name not in paths:
        raise OptionError(f"no ComfyUI workflow {name!r}; known: {', '.join(paths) or 'none'} "
                          f"(add NAME.json and NAME.toml under {TEMPLATES_DIR}/)", "options.workflow")
    return read_workflow(paths[name])
