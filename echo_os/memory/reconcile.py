"""Bringing a memory index in line with the catalog: drop the ids it no longer has, embed the new ones.

`reconcile` works on an open VectorIndex through its public methods; `index.open_reconciled` opens (or
rebuilds) the index under the memory lock and calls it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from echo_os.memory.knn import as_ids

# fetch_missing(ids) -> (ids it could embed, their vectors). Ids it cannot embed (image gone) are left out.
FetchMissing = Callable[[Sequence[int]], tuple[np.ndarray, np.ndarray]]


class ReconciledIndex(Protocol):
    """What reconcile uses of a VectorIndex (index.py imports this module, so it is not imported back)."""

    embedder: str
    repaired: str | None

    @property
    def ids(self) -> np.ndarray: ...

    def add(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: Iterable[int] | np.ndarray) -> int: ...


@dataclass
class ReconcileReport:
    embedder: str
    removed: list[int] = field(default_factory=list)
    added: list[int] = field(default_factory=list)
    unembeddable: list[int] = field(default_factory=list)
    rebuilt: bool = False
    reason: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.removed or self.added or self.rebuilt)


def reconcile(index: ReconciledIndex, catalog_ids: Iterable[int], fetch_missing: FetchMissing, *,
              batch_size: int = 64, progress: Callable[[int, int], None] | None = None) -> ReconcileReport:
    """Make the index hold exactly the catalog's ids: drop the extra, embed and add the missing.

    Call inside `with index.writing():` so the result is saved under the lock.
    """
    report = ReconcileReport(embedder=index.embedder, rebuilt=bool(index.repaired), reason=index.repaired)
    wanted = np.unique(as_ids(catalog_ids))
    held = np.unique(index.ids)
    stale = np.setdiff1d(held, wanted, assume_unique=True)
    missing = np.setdiff1d(wanted, held, assume_unique=True)
    if len(stale):
        index.remove(stale)
        report.removed = [int(i) for i in stale]
    done = 0
    for start in range(0, len(missing), batch_size):
        chunk = [int(i) for i in missing[start:start + batch_size]]
        got_ids, vectors = fetch_missing(chunk)
        got_ids = as_ids(got_ids)
        if len(got_ids):
            index.add(got_ids, vectors)
        report.added += [int(i) for i in got_ids]
        report.unembeddable += sorted(set(chunk) - {int(i) for i in got_ids})
        done += len(chunk)
        if progress is not None:
            progress(done, len(missing))
    return report
