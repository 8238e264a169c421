"""Interactive commands answer fast: `--help`, `memory search/similar`, `artifacts list/show`, `styles list`
and `rate` import no torch, transformers, sentence-transformers or diffusers (each is seconds on 2 cores),
and the text embedder they use (the numpy run of all-MiniLM-L6-v2) gives sentence-transformers' vectors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "sentence_transformers", "diffusers", "sklearn")

# Runs the real `echo-os` entry point in a fresh interpreter, then names the heavy modules it imported.
PROBE = """
import runpy, sys
heavy = sys.argv[1].split(",")
sys.argv = ["echo-os", *sys.argv[2:]]
try:
    runpy.run_module("echo_os", run_name="__main__")
except SystemExit as stop:
    code = stop.code
else:
    code = 0
print("HEAVY=" + ",".join(m for m in heavy if m in sys.modules), file=sys.stderr)
sys.exit(code)
"""


def heavy_imports(home: Path, *args: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PROBE, ",".join(HEAVY), "--home", str(home), *args],
                          capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr
    line = [line for line in done.stderr.splitlines() if line.startswith("HEAVY=")][-1]
    return [name for name in line.removeprefix("HEAVY=").split(",") if name]


@pytest.fixture(scope="module")
def searchable_home(tmp_path_factory) -> tuple[Path, str]:
    """Two draft artifacts, their memory index already built (by the numpy embedder)."""
    home = tmp_path_factory.mktemp("fast-commands")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    ids = []
    for prompt in ("a lighthouse in a storm", "a cat asleep on a sofa"):
        done = subprocess.run([sys.executable, "-m", "echo_os", "--home", str(home), "render", prompt, "--engine",
                               "draft", "--size", "128x128", "--json"], capture_output=True, text=True, env=env,
                              timeout=240)
        assert done.returncode == 0, done.stderr
        ids.append(json.loads(done.stdout)[0]["id"])
    return home, ids[0]


@pytest.mark.parametrize("args", [
    ("--help",),
    ("memory", "search", "stormy lighthouse", "-k", "1"),
    ("memory", "similar", "{id}", "-k", "1"),
    ("artifacts", "list"),
    ("artifacts", "show", "{id}"),
    ("styles", "list"),
    ("rate", "{id}", "4"),
], ids=lambda args: " ".join(args[:2]))
def test_interactive_command_imports_no_ml_library(searchable_home, args):
    home, artifact = searchable_home
    assert heavy_imports(home, *(arg.format(id=artifact) for arg in args)) == []


def test_memory_search_ranks_by_meaning_with_the_numpy_embedder(searchable_home):
    home, artifact = searchable_home
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "echo_os", "--home", str(home), "memory", "search",
                           "a lighthouse in bad weather", "-k", "2", "--json"],
                          capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    assert hits[0]["id"] == artifact


def test_numpy_minilm_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from echo_os.memory.embedders import minilm_model_path
    from echo_os.memory.minilm_numpy import NumpyMiniLM

    folder = minilm_model_path()
    texts = ["a lighthouse at night", "Ölbild: café crème, naïve brushwork", "x", "",
             "the keeper climbs the stairs " * 80]  # the last one is truncated at max_seq_length (256)
    ours = NumpyMiniLM(folder).encode(texts)
    theirs = SentenceTransformer(str(folder), device="cpu", local_files_only=True).encode(
        texts, normalize_embeddings=True, convert_to_numpy=True)
    cosine = (ours * theirs).sum(axis=1) / np.linalg.norm(theirs, axis=1)
    assert ours.dtype == np.float32 and ours.shape == (len(texts), 384)
    assert np.all(np.abs(cosine - 1.0) < 1e-5), cosine
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_numpy_minilm_refuses_another_model_shape(tmp_path):
    from echo_os.memory.minilm_numpy import MiniLMUnsupported, NumpyMiniLM

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta"}), encoding="utf-8")
    with pytest.raises(MiniLMUnsupported):
        NumpyMiniLM(tmp_path)
