"""Which engines made a job's artifacts, for the responses that say so: the `x-echo-engine` header of
/v1/images/generations and the `engines` of GET /api/jobs/{id}. A fresh machine (no weights) answers with
draft cards (storyboard cards, not renders); the client sees it here, and the server log says it too
(echo_os.api.worker)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from echo_os.errors import EchoError

if TYPE_CHECKING:
    from echo_os.api.deps import ApiState


def engines_of(api: "ApiState", artifact_ids: list[str]) -> list[str]:
    """The engine names of the artifacts (from their catalog rows), first use first, each once."""
    names: list[str] = []
    for artifact_id in artifact_ids:
        try:
            row = api.catalog.resolve(artifact_id)
        except EchoError:  # removed since: it names no engine
            continue
        if row.engine not in names:
            names.append(row.engine)
    return names
