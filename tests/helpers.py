"""Small helpers several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run `echo-os ...` in-process through main() (the real error boundary): (exit code, stdout, stderr)."""
    from echo_os.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def save_draft(store, prompt: str = "a lighthouse", count: int = 1, **fields):
    """Render `count` 64x64 draft cards of `prompt` (seed 3) and save them in `store`: the saved artifacts."""
    from echo_os.engines.draft import DraftEngine
    from echo_os.render.requests import RenderRequest

    request = RenderRequest(prompt=prompt, width=64, height=64, count=count, seed=3, engine="draft", **fields)
    [result] = DraftEngine().render([request])
    return store.save_result(result)


def load_gpu_harness() -> ModuleType:
    """benchmarks/gpu_throughput.py as a module (benchmarks/ is not a package)."""
    if "gpu_throughput" in sys.modules:
        return sys.modules["gpu_throughput"]
    spec = importlib.util.spec_from_file_location("gpu_throughput", REPO / "benchmarks" / "gpu_throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_throughput"] = module
    spec.loader.exec_module(module)
    return module
