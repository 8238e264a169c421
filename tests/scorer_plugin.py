"""A deterministic scorer plugin for the evolve and resonance tests: it registers through the real hook
(`register_scorers`) and scores an image by its id, so every figure the loop records can be recomputed."""

from __future__ import annotations

import contextlib
import hashlib
import types
from collections.abc import Iterator

from echo_os.engines.hookspecs import hookimpl
from echo_os.resonance.scores import ArtifactScores


def fixed_alignment(artifact_id: str) -> float:
    """The test scorer's score: a number from the id's bytes (any image always gets the same one)."""
    return float(int(hashlib.sha256(artifact_id.encode()).hexdigest()[:4], 16) % 1000) / 10.0


class FixedScorer:
    name = "fixed"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def score(self, settings, artifacts):
        self.calls.append([a.id for a in artifacts])
        return {a.id: ArtifactScores(alignment=fixed_alignment(a.id)) for a in artifacts}


@contextlib.contextmanager
def registered_fixed_scorer() -> Iterator[FixedScorer]:
    """A FixedScorer registered as a plugin for the duration (the plugin manager is rebuilt after)."""
    from echo_os.engines import reset_plugins
    from echo_os.engines.plugins import plugin_manager

    scorer = FixedScorer()
    plugin = types.ModuleType("echo_os_fixed_scorer")
    plugin.register_scorers = hookimpl(lambda register: register(scorer))
    reset_plugins()
    plugin_manager().register(plugin)
    try:
        yield scorer
    finally:
        reset_plugins()
